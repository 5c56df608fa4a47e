# tools/exp/chainprof.sh: session 15's second look at the chain kernel: `test_cuda_ops bench chain` (one stage
# against the one-pass GEMV, the barrier's cost) and ncu's full set over one chain kernel of the engine's
# decode step (warp states, memory throughput).
set -u
[ -d .cache/tokenizer-llama3 ] || tar xJf .devpack/tok.tar.xz
tar xJf .devpack/dev.tar.xz
export LD_LIBRARY_PATH=$PWD/build-dev/lib MINICPMV_TOKENIZER=$PWD/.cache/tokenizer-llama3/tokenizer.json
B=build-dev/minicpmv
M=/tmp/full
cat build-dev/COMMIT > $OUT/commit.txt
[ -f $M/config.json ] || ($B mkmodel --out $M --size full --seed 1 > $OUT/mk.log 2>&1) &
timeout 200 build-dev/tests/test_cuda_ops bench chain > $OUT/bench_chain.log 2>&1
wait
timeout 300 ncu --set full -k regex:chain_kernel --launch-skip 64 --launch-count 1 $B bench --model $M --device cuda --fuse on --only decode512 --reps 1 > $OUT/ncu_full.log 2>&1
