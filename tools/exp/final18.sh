# tools/exp/final18.sh: session 18, run 7: the final tree on the card. The four GPU suites (test_cuda_quant's
# one-hot sweep now also at one token under PDL, where the A kernel stages x in shared memory), then q4 decode
# with the default launches and with the quantized GEMVs as programmatic dependents, q8 the same. To $OUT.
. tools/exp/common.sh
for t in ${TESTS:-test_cuda_quant test_llm test_cuda_batch test_cuda_ops}; do
  timeout 230 build-dev/tests/$t > $OUT/$t.log 2>&1; echo "$t rc $?: $(tail -1 $OUT/$t.log)" >> $OUT/tests.txt
done
grep -E "FAIL|assert|auto pdl" $OUT/test_*.log | head -20 >> $OUT/tests.txt
BN_LINES="^(decode|seedcase)|fraction|^memory"
for ov in small+early small+early+quant all; do
  bn "q4 $ov" $B bench --model $M --device cuda --quant q4 --overlap $ov --only decode512,decode4096 --reps 3
  bn "q8 $ov" $B bench --model $M --device cuda --quant q8 --overlap $ov --only decode512,decode4096 --reps 3
done
bn "fp16 default" $B bench --model $M --device cuda --peak-gbs auto --only decode512,decode4096 --reps 3
