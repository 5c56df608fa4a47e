# tools/exp/trig18.sh: session 18, run 5. The quantized decode GEMV launched as a programmatic dependent now
# triggers its successors after its main loop instead of at its start: q4 decode512 / decode4096 with the default
# launches, --overlap small+early+quant and all, two rounds; q8 the same once. Lines to $OUT/final.txt.
. tools/exp/common.sh
BN_LINES="^(decode|seedcase)|fraction|^memory"
for r in 1 2; do
  for ov in small+early small+early+quant all; do
    bn "q4 $ov r$r" $B bench --model $M --device cuda --quant q4 --overlap $ov --only decode512,decode4096 --reps 3
  done
done
for ov in small+early small+early+quant; do
  bn "q8 $ov" $B bench --model $M --device cuda --quant q8 --overlap $ov --only decode512,decode4096 --reps 3
done
