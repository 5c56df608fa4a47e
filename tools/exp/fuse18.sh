# tools/exp/fuse18.sh: session 18, run 3. With the quantized weights in tiles, q4 decode512 / decode4096 under the
# launch and fusion choices that lost on the record layout: the default, --fuse on (each RMSNorm inside the GEMV
# that reads it, the residual adds inside the o / down GEMVs), --overlap small+early+quant and all (the GEMVs of
# quantized weights as programmatic dependents), two rounds. Lines to $OUT/final.txt.
. tools/exp/common.sh
BN_LINES="^(decode|seedcase)|fraction|^memory"
for r in 1 2; do
  bn "q4 default r$r" $B bench --model $M --device cuda --quant q4 --only decode512,decode4096 --reps 3
  bn "q4 fuse on r$r" $B bench --model $M --device cuda --quant q4 --fuse on --only decode512,decode4096 --reps 3
  bn "q4 overlap +quant r$r" $B bench --model $M --device cuda --quant q4 --overlap small+early+quant --only decode512,decode4096 --reps 3
  bn "q4 overlap all r$r" $B bench --model $M --device cuda --quant q4 --overlap all --only decode512,decode4096 --reps 3
done
