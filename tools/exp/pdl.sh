# tools/exp/pdl.sh: session 15's device run of the small decode kernels as programmatic dependents
# (dev_set_overlap DEV_OVERLAP_SMALL): the GPU suites while the model is written, `test_cuda_ops bench engine`
# (the variants, same tokens required), then `bench --overlap off|small|all+small` (fp16) and
# `--quant q4 --overlap off|small|quant+small`, decode at 512 and 4,096, ROUNDS rounds. Lines to $OUT/final.txt.
. tools/exp/common.sh
for t in ${TESTS:-test_cuda_ops test_llm test_cuda_batch test_cuda_quant}; do
  timeout 300 build-dev/tests/$t > $OUT/$t.log 2>&1; echo "$t rc $?: $(tail -1 $OUT/$t.log)" >> $OUT/tests.txt
done
[ "${ENGINE:-1}" = 1 ] && timeout 300 build-dev/tests/test_cuda_ops bench engine $M > $OUT/engine.log 2>&1
BN_LINES="^(decode|prefill|seedcase)|fraction"
for r in $(seq 1 ${ROUNDS:-1}); do
  for v in off small all+small; do
    bn "fp16 overlap $v" $B bench --model $M --device cuda --overlap $v --peak-gbs auto --only ${PH:-decode512,decode4096} --reps 3
  done
  for v in off small quant+small; do
    bn "q4 overlap $v" $B bench --model $M --device cuda --quant q4 --overlap $v --only ${PH:-decode512,decode4096} --reps 3
  done
done
