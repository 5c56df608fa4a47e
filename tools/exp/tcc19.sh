# tools/exp/tcc19.sh: session 19, run 2. The cluster-merged tensor-core decode attention's shape, end to end: q4
# decode512 / decode4096 for splits 4, 8, 16 x warps 2, 4 (and 16 x 1), fp16 for two of them; then the quantized
# GEMVs alone per matrix and launch shape (test_cuda_quant bench quant) to $OUT/gemv.txt. Lines to $OUT/final.txt.
. tools/exp/common.sh
BN_LINES="^(decode)"
for s in 4 8 16; do
  for w in 2 4; do
    bn "q4 tcc S$s W$w" $B bench --model $M --device cuda --quant q4 --only decode512,decode4096 --reps 3 --attn-kernel tcc --attn-splits $s --attn-warps $w
  done
done
bn "q4 tcc S16 W1" $B bench --model $M --device cuda --quant q4 --only decode512,decode4096 --reps 3 --attn-kernel tcc --attn-splits 16 --attn-warps 1
bn "q4 auto" $B bench --model $M --device cuda --quant q4 --only decode512,decode4096 --reps 3
for sw in "8 4" "16 2" "16 4"; do
  set -- $sw
  bn "fp16 tcc S$1 W$2" $B bench --model $M --device cuda --only decode512,decode4096 --reps 3 --attn-kernel tcc --attn-splits $1 --attn-warps $2
done
timeout 250 build-dev/tests/test_cuda_quant bench quant > $OUT/gemv.txt 2>&1
