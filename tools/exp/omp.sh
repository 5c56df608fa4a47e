# tools/exp/omp.sh: session 14's run 6: bench ttft with OpenMP's default wait policy against OMP_WAIT_POLICY=passive
set -u
[ -d .cache/tokenizer-llama3 ] || tar xJf .devpack/tok.tar.xz; tar xJf .devpack/dev.tar.xz
export LD_LIBRARY_PATH=$PWD/build-dev/lib MINICPMV_TOKENIZER=$PWD/.cache/tokenizer-llama3/tokenizer.json
M=/tmp/full; [ -f $M/config.json ] || build-dev/minicpmv mkmodel --out $M --size full --seed 1 > $OUT/mk.log 2>&1
B=build-dev/minicpmv
{ nproc; cat /sys/fs/cgroup/cpu.max 2>/dev/null; lscpu | grep -E "^CPU\(s\)|Thread|Core|Socket|Model name"; } > $OUT/final.txt
bn() { local tag=$1; shift; echo "== $tag: $*" >> $OUT/final.txt; timeout 200 "$@" 2>&1 | grep -E "^(vision|ttft)" | cut -c1-300 >> $OUT/final.txt; }
for i in 1 2; do
bn "default" $B bench --model $M --device cuda --only decode512,vision10,ttft,ttftsync --reps 5
OMP_WAIT_POLICY=passive bn "passive" $B bench --model $M --device cuda --only decode512,vision10,ttft,ttftsync --reps 5
done
