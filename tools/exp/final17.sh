# tools/exp/final17.sh: session 17's final tree on the card: the GPU suites (test_cuda_ops with the new
# test_attention_early), the engine's greedy tokens per variant (test_cuda_ops bench engine: the early loads on and
# off, with and without PDL), then one decode step under ncu per format (tools/prof_decode.sh all). To $OUT.
. tools/exp/common.sh
for t in ${TESTS:-test_cuda_ops test_llm test_cuda_batch test_cuda_quant}; do
  timeout 200 build-dev/tests/$t > $OUT/$t.log 2>&1; echo "$t rc $?: $(tail -1 $OUT/$t.log)" >> $OUT/tests.txt
done
grep -E "attn_early|attention_early|FAIL" $OUT/test_cuda_ops.log | head -12 >> $OUT/tests.txt
timeout 200 build-dev/tests/test_cuda_ops bench engine $M > $OUT/engine.log 2>&1
grep -E "context|assert" $OUT/engine.log >> $OUT/final.txt
OUT=$OUT bash tools/prof_decode.sh all > $OUT/prof.txt 2>&1
