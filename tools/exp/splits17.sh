# tools/exp/splits17.sh: session 17, run 4. The tensor-core decode attention's split count end to end (bench
# --attn-splits S; 0 = the rule, 11 at the bench's capacity of ~4.2k keys), fp16 and q4 decode512 / decode4096;
# then the other goals of issues 13 and 15 on this tree: prefill3000, ttft, vision10, the seed case (fp16, q4),
# nf4 decode (the official layout, written by mkmodel --quant nf4). Lines to $OUT/final.txt.
. tools/exp/common.sh
BN_LINES="^(decode|seedcase|prefill|vision|ttft)|fraction|^memory|^  [a-z]"
for s in 0 8 16 22 33; do
  bn "fp16 splits $s" $B bench --model $M --device cuda --attn-splits $s --peak-gbs auto --only decode512,decode4096 --reps 3
done
for s in 0 16 22; do
  bn "q4 splits $s" $B bench --model $M --device cuda --quant q4 --attn-splits $s --only decode512,decode4096 --reps 3
done
bn "fp16 first token" $B bench --model $M --device cuda --only prefill3000,ttft,vision10 --reps 3
bn "fp16 seed" $B bench --model $M --device cuda --only seedcase --reps 2
bn "q4 seed" $B bench --model $M --device cuda --quant q4 --only seedcase --reps 2
timeout 150 $B mkmodel --out /tmp/nf4 --size full --seed 1 --quant nf4 > $OUT/mknf4.log 2>&1
bn "nf4" $B bench --model /tmp/nf4 --device cuda --peak-gbs auto --only decode512,decode4096 --reps 3
bn "q8" $B bench --model $M --device cuda --quant q8 --peak-gbs auto --only decode512,decode4096 --reps 3
