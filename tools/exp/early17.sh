# tools/exp/early17.sh: session 17, run 1. The decode attention's early loads (bench --overlap small+early, the
# new default, against small: the old behaviour) fp16 and q4, alternating; the quantized GEMV's one- and
# two-warp shapes a1x4, a2x4, a1x8 (test_cuda_quant bench quant, Q4 lines; slower, removed after this run); then
# the GPU suites. Lines to $OUT/final.txt.
. tools/exp/common.sh
BN_LINES="^(decode|seedcase)|fraction|^memory"
for r in 1 2; do
  for ov in small+early small; do
    bn "fp16 $ov r$r" $B bench --model $M --device cuda --overlap $ov --peak-gbs auto --only decode512,decode4096 --reps 3
    bn "q4 $ov r$r" $B bench --model $M --device cuda --quant q4 --overlap $ov --only decode512,decode4096 --reps 3
  done
done
timeout 240 build-dev/tests/test_cuda_quant bench quant > $OUT/qbench.log 2>&1
grep -E "Q4 .*(n1 |pdl 0)|step" $OUT/qbench.log | grep -v "pdl 1" >> $OUT/final.txt
for t in ${TESTS:-test_cuda_ops test_llm test_cuda_batch test_cuda_quant}; do
  timeout 200 build-dev/tests/$t > $OUT/$t.log 2>&1; echo "$t rc $?: $(tail -1 $OUT/$t.log)" >> $OUT/tests.txt
done
