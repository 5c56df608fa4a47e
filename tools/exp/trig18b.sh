# tools/exp/trig18b.sh: session 18, run 8. With x staged in shared memory (e4d8b8f), the quantized GEMV launched
# as a dependent again triggers its successors after its main loop (so that the chain of dependents runs at most
# one GEMV ahead): q4 decode512 / decode4096 with the default launches, small+early+quant and all, two rounds; q8
# once; fp16 default against small+all. Lines to $OUT/final.txt.
. tools/exp/common.sh
BN_LINES="^(decode|seedcase)|fraction|^memory"
for r in 1 2; do
  for ov in small+early small+early+quant small+quant all; do
    bn "q4 $ov r$r" $B bench --model $M --device cuda --quant q4 --overlap $ov --only decode512,decode4096 --reps 3
  done
done
for ov in small+early small+early+quant; do
  bn "q8 $ov" $B bench --model $M --device cuda --quant q8 --overlap $ov --only decode512,decode4096 --reps 3
done
for ov in small+early small+all; do
  bn "fp16 $ov" $B bench --model $M --device cuda --overlap $ov --only decode512,decode4096 --reps 3
done
