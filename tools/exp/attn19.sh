# tools/exp/attn19.sh: session 19, run 1. The decode attention's latency chain: test_cuda_ops (every decode kernel
# against the CPU twin, the early loads bit for bit per kernel), then fp16 and q4 decode512 / decode4096 with the
# attention kernel forced (bench --attn-kernel): auto (the rule: tc at these capacities), tcc (the tensor-core
# kernel with its splits one cluster merged in shared memory, its automatic split count and 16), cluster (the
# cluster kernel, now a programmatic dependent with early loads). Lines to $OUT/final.txt, suites to $OUT/tests.txt.
. tools/exp/common.sh
for t in ${TESTS:-test_cuda_ops}; do
  timeout 200 build-dev/tests/$t > $OUT/$t.log 2>&1; echo "$t rc $?: $(tail -1 $OUT/$t.log)" >> $OUT/tests.txt
done
grep -E "FAIL|assert|attention_early|tcc" $OUT/test_*.log | head -60 >> $OUT/tests.txt
BN_LINES="^(decode)|fraction"
for r in ${ROUNDS:-1}; do
  for q in "" "--quant q4"; do
    for k in auto tcc "tcc --attn-splits 16" cluster; do
      bn "r$r ${q:-fp16} $k" $B bench --model $M --device cuda $q --only decode512,decode4096 --reps 3 --attn-kernel $k
    done
  done
done
