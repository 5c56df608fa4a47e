# tools/exp/w8_19.sh: session 19, run 4. Eight warps a block for the tensor-core decode attention (TC_WARPS_MAX 8):
# test_cuda_ops (every decode kernel, now with W = 8 cases), then fp16 and q4 decode512 / decode4096 and the seed
# cases with the rule (4 warps) against --attn-warps 8, alternating; fp16 with --peak-gbs auto (the read bandwidth
# measured in the same run). Lines to $OUT/final.txt, suites to $OUT/tests.txt.
. tools/exp/common.sh
timeout 200 build-dev/tests/test_cuda_ops > $OUT/test_cuda_ops.log 2>&1; echo "test_cuda_ops rc $?: $(tail -1 $OUT/test_cuda_ops.log)" >> $OUT/tests.txt
grep -E "FAIL|assert" $OUT/test_cuda_ops.log | head -20 >> $OUT/tests.txt
BN_LINES="^(decode|seedcase)|fraction|peak"
for r in 1 2; do
  for w in 0 8; do
    bn "r$r fp16 W$w" $B bench --model $M --device cuda --only decode512,decode4096 --reps 3 --attn-warps $w --peak-gbs auto
    bn "r$r q4 W$w" $B bench --model $M --device cuda --quant q4 --only decode512,decode4096 --reps 3 --attn-warps $w
  done
done
for w in 0 8; do
  bn "fp16 seed W$w" $B bench --model $M --device cuda --only seedcase --reps 2 --attn-warps $w
done
