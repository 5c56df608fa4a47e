# tools/exp/l2pre19.sh: session 19, run 6. The tensor-core decode attention's later steps prefetched into the L2
# before its wait (under attn_early): test_cuda_ops (the early loads bit for bit per kernel, every decode case),
# then fp16 and q4 decode512 / decode4096 and the fp16 seed case, the new build against the committed one (OLD=1:
# old/build-dev/minicpmv), alternating. Lines to $OUT/final.txt.
OLD=1 . tools/exp/common.sh
timeout 200 build-dev/tests/test_cuda_ops > $OUT/test_cuda_ops.log 2>&1; echo "test_cuda_ops rc $?: $(tail -1 $OUT/test_cuda_ops.log)" >> $OUT/tests.txt
grep -E "FAIL|assert|attention_early" $OUT/test_cuda_ops.log | head -20 >> $OUT/tests.txt
BN_LINES="^(decode|seedcase)"
O=old/build-dev/minicpmv
for r in 1 2; do
  for b in $B $O; do
    bn "r$r fp16 $b" $b bench --model $M --device cuda --only decode512,decode4096 --reps 3
    bn "r$r q4 $b" $b bench --model $M --device cuda --quant q4 --only decode512,decode4096 --reps 3
  done
done
for b in $B $O; do bn "fp16 seed $b" $b bench --model $M --device cuda --only seedcase --reps 3; done
