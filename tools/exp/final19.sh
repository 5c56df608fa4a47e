# tools/exp/final19.sh: session 19, run 3. The cluster-merged tensor-core attention as the rule (one graph per
# bucket of context lengths, llm.c's bound, now DEV_ATTN_SHORT_KEYS): the four GPU suites, then decode512 / decode4096 for fp16, q4,
# q8 and nf4 with the rule against --attn-kernel tc (the rule before), alternating; the q4 and fp16 seed cases and
# q4 concurrency. Lines to $OUT/final.txt, suites to $OUT/tests.txt.
. tools/exp/common.sh
for t in ${TESTS:-test_cuda_ops test_cuda_batch test_llm test_cuda_quant}; do
  timeout 230 build-dev/tests/$t > $OUT/$t.log 2>&1; echo "$t rc $?: $(tail -1 $OUT/$t.log)" >> $OUT/tests.txt
done
grep -E "FAIL|assert" $OUT/test_*.log | head -20 >> $OUT/tests.txt
BN_LINES="^(decode|seedcase|conc)|fraction"
timeout 150 $B mkmodel --out /tmp/nf4 --size full --seed 1 --quant nf4 > $OUT/mknf4.log 2>&1
for r in 1 2; do
  for q in "" "--quant q4" "--quant q8"; do
    for k in auto tc; do
      bn "r$r ${q:-fp16} $k" $B bench --model $M --device cuda $q --only decode512,decode4096 --reps 3 --attn-kernel $k
    done
  done
done
for k in auto tc; do bn "nf4 $k" $B bench --model /tmp/nf4 --device cuda --only decode512,decode4096 --reps 3 --attn-kernel $k; done
bn "q4 seed" $B bench --model $M --device cuda --quant q4 --only seedcase --reps 2
bn "fp16 seed" $B bench --model $M --device cuda --only seedcase --reps 2
bn "q4 conc" $B bench --model $M --device cuda --quant q4 --parallel 64 --ctx 1024 --only conc1,conc16,conc64 --reps 1
