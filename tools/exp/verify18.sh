# tools/exp/verify18.sh: session 18, run 4. The tiled tree on the card: the four GPU suites, the q4 seed case,
# q4 / q8 decode at 1, 16 and 64 streams (the batched step's GEMVs read tiles too), load time (bench --json
# load_s) with and without --quant q4. Lines to $OUT/final.txt, suites to $OUT/tests.txt.
. tools/exp/common.sh
for t in ${TESTS:-test_cuda_quant test_llm test_cuda_batch test_cuda_ops}; do
  timeout 230 build-dev/tests/$t > $OUT/$t.log 2>&1; echo "$t rc $?: $(tail -1 $OUT/$t.log)" >> $OUT/tests.txt
done
grep -E "FAIL|assert" $OUT/test_*.log | head -20 >> $OUT/tests.txt
BN_LINES="^(decode|seedcase|conc)|fraction|^memory"
bn "q4 seed" $B bench --model $M --device cuda --quant q4 --only seedcase --reps 2
bn "q4 conc" $B bench --model $M --device cuda --quant q4 --parallel 64 --ctx 1024 --only conc1,conc16,conc64 --reps 1
for q in "" "--quant q4"; do
  timeout 120 $B bench --model $M --device cuda $q --only decode512 --reps 1 --json $OUT/load$RANDOM.json > /dev/null 2>&1
done
grep -ho '"load_s": *[0-9.]*' $OUT/load*.json >> $OUT/final.txt
