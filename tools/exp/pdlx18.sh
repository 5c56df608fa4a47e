# tools/exp/pdlx18.sh: session 18, run 11. Programmatic dependent launch for chosen GEMVs of a layer only, the
# q|k|v GEMV a full launch (so the attention keeps its early loads): a build with tools/exp/pdlx18.patch
# (MINICPMV_PDLX: bit 1 the o GEMV, 2 gate|up, 4 down as dependents; 8 every GEMV format, not only quantized).
# q4 and fp16 decode512 / decode4096. Lines to $OUT/final.txt.
. tools/exp/common.sh
BN_LINES="^(decode)"
for r in 1 2; do
  for a in 0 1 2 3 4 7; do
    MINICPMV_PDLX=$a bn "q4 pdlx $a r$r" $B bench --model $M --device cuda --quant q4 --only decode512,decode4096 --reps 3
  done
done
for a in 0 9 10 11 15; do
  MINICPMV_PDLX=$a bn "fp16 pdlx $a" $B bench --model $M --device cuda --only decode512,decode4096 --reps 3
done
