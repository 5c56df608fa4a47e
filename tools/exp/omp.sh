# tools/exp/omp.sh: session 14's runs 6 (ROUNDS=2, before the quarter-of-the-threads rule) and 7 (ROUNDS=3,
# after it): bench ttft with OpenMP's default wait policy against OMP_WAIT_POLICY=passive, alternating
BN_LINES="^(vision|ttft)"
. tools/exp/common.sh
{ nproc; cat /sys/fs/cgroup/cpu.max 2>/dev/null; lscpu | grep -E "^CPU\(s\)|Thread|Core|Socket|Model name"; } >> $OUT/final.txt
for i in $(seq 1 ${ROUNDS:-3}); do
bn "default" $B bench --model $M --device cuda --only decode512,vision10,ttft,ttftsync --reps 5
OMP_WAIT_POLICY=passive bn "passive" $B bench --model $M --device cuda --only decode512,vision10,ttft,ttftsync --reps 5
done
