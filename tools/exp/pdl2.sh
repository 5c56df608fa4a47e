# tools/exp/pdl2.sh: session 15's last device run: the GPU suites, `test_cuda_ops bench engine` (the default with
# down_proj on the persistent GEMV, the one-pass kernel everywhere, the small kernels as PDL dependents), then
# `bench --overlap off|small` alternating ROUNDS times for fp16 and q4 (decode at 512 and 4,096), and the
# batched step (`--parallel 64 --concurrency 16,64`) with each. Lines to $OUT/final.txt.
. tools/exp/common.sh
for t in ${TESTS:-test_cuda_ops test_llm test_cuda_batch test_cuda_quant}; do
  timeout 300 build-dev/tests/$t > $OUT/$t.log 2>&1; echo "$t rc $?: $(tail -1 $OUT/$t.log)" >> $OUT/tests.txt
done
[ "${ENGINE:-1}" = 1 ] && timeout 300 build-dev/tests/test_cuda_ops bench engine $M > $OUT/engine.log 2>&1
BN_LINES="^(decode|prefill|seedcase|conc)|fraction"
for r in $(seq 1 ${ROUNDS:-2}); do
  for v in off small; do
    bn "fp16 overlap $v" $B bench --model $M --device cuda --overlap $v --peak-gbs auto --only decode512,decode4096 --reps 3
    bn "q4 overlap $v" $B bench --model $M --device cuda --quant q4 --overlap $v --only decode512,decode4096 --reps 3
  done
done
for v in off small; do
  bn "conc overlap $v" $B bench --model $M --device cuda --overlap $v --parallel 64 --ctx 1024 --concurrency 16,64 --reps 1
done
