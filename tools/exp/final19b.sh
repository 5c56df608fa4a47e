# tools/exp/final19b.sh: session 19, run 5. The committed rule (the cluster-merged tensor-core attention, 8 warps a
# block): the four GPU suites; fp16 decode512 / decode4096 with --peak-gbs auto (the read bandwidth in the same
# run) and the other fp16 phases; q4, q8 and nf4 decode; the q4 and fp16 seed cases. Lines to $OUT/final.txt.
. tools/exp/common.sh
for t in ${TESTS:-test_cuda_ops test_cuda_batch test_llm test_cuda_quant}; do
  timeout 230 build-dev/tests/$t > $OUT/$t.log 2>&1; echo "$t rc $?: $(tail -1 $OUT/$t.log)" >> $OUT/tests.txt
done
grep -E "FAIL|assert" $OUT/test_*.log | head -20 >> $OUT/tests.txt
BN_LINES="^(decode|seedcase|prefill|vision|ttft)|fraction|%"
timeout 150 $B mkmodel --out /tmp/nf4 --size full --seed 1 --quant nf4 > $OUT/mknf4.log 2>&1
for r in 1 2; do
  bn "r$r fp16" $B bench --model $M --device cuda --only decode512,decode4096 --reps 3 --peak-gbs auto
  bn "r$r q4" $B bench --model $M --device cuda --quant q4 --only decode512,decode4096 --reps 3
done
bn "q8" $B bench --model $M --device cuda --quant q8 --only decode512,decode4096 --reps 3
bn "nf4" $B bench --model /tmp/nf4 --device cuda --only decode512,decode4096 --reps 3
bn "fp16 phases" $B bench --model $M --device cuda --only vision10,ttft,prefill3000 --reps 3
bn "q4 seed" $B bench --model $M --device cuda --quant q4 --only seedcase --reps 2
bn "fp16 seed" $B bench --model $M --device cuda --only seedcase --reps 3
