# tools/exp/tiles18.sh: session 18, run 1. Quantized GPU weights in 16-row tiles (quant.h "Tiles"): test_cuda_quant
# (every kernel on tiles and on records, the copy both ways), then bench q4 (two rounds), q8 and nf4 decode512 /
# decode4096 against the build before (OLD=1: old/build-old/minicpmv), alternating. Lines to $OUT/final.txt.
. tools/exp/common.sh
timeout 240 build-dev/tests/test_cuda_quant > $OUT/test_cuda_quant.log 2>&1
echo "test_cuda_quant rc $?: $(tail -1 $OUT/test_cuda_quant.log)" >> $OUT/tests.txt
grep -E "FAIL|assert" $OUT/test_cuda_quant.log | head -30 >> $OUT/tests.txt
BN_LINES="^(decode|seedcase)|fraction|^memory"
O=old/build-old/minicpmv
for r in 1 2; do
  for b in $B $O; do bn "q4 $b r$r" $b bench --model $M --device cuda --quant q4 --only decode512,decode4096 --reps 3; done
done
for b in $B $O; do bn "q8 $b" $b bench --model $M --device cuda --quant q8 --only decode512,decode4096 --reps 3; done
timeout 150 $B mkmodel --out /tmp/nf4 --size full --seed 1 --quant nf4 > $OUT/mknf4.log 2>&1
for b in $B $O; do bn "nf4 $b" $b bench --model /tmp/nf4 --device cuda --only decode512,decode4096 --reps 3; done
