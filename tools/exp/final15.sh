# tools/exp/final15.sh: session 15's final tree on the card: the GPU suites with the new defaults (down_proj on
# the persistent GEMV, the small decode kernels as PDL dependents), then `bench --peak-gbs auto` fp16 phases and
# q4 decode / seed case. Lines to $OUT/final.txt.
. tools/exp/common.sh
for t in ${TESTS:-test_cuda_ops test_llm test_cuda_batch test_cuda_quant test_vision}; do
  timeout 200 build-dev/tests/$t > $OUT/$t.log 2>&1; echo "$t rc $?: $(tail -1 $OUT/$t.log)" >> $OUT/tests.txt
done
BN_LINES="^(decode|prefill|vision|ttft|seedcase)|fraction|^memory|^cuda:"
bn fp16 $B bench --model $M --device cuda --peak-gbs auto --only decode512,decode4096,prefill3000,vision10,ttft,seedcase --reps 3
bn q4 $B bench --model $M --device cuda --quant q4 --only decode512,decode4096,seedcase --reps 3
