# tools/exp/chain.sh: session 15's device run of the fused chain (op_fused_chain: o + residual, norm + gate|up +
# SwiGLU, down + residual and the next layer's norm + q|k|v in one persistent kernel with grid barriers). The
# GPU suites while the model is written, then `test_cuda_ops bench engine` (every decode variant, same tokens
# where required) and `bench --fuse on|off --chain N` at contexts 512 / 4096. TESTS: the suites (default four).
set -u
[ -d .cache/tokenizer-llama3 ] || tar xJf .devpack/tok.tar.xz
tar xJf .devpack/dev.tar.xz
export LD_LIBRARY_PATH=$PWD/build-dev/lib MINICPMV_TOKENIZER=$PWD/.cache/tokenizer-llama3/tokenizer.json
B=build-dev/minicpmv
M=/tmp/full
cat build-dev/COMMIT > $OUT/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv > $OUT/gpu.txt 2>&1
[ -f $M/config.json ] || ($B mkmodel --out $M --size full --seed 1 > $OUT/mk.log 2>&1; echo done > $OUT/mk.done) &
for t in ${TESTS:-test_cuda_ops test_llm test_cuda_batch test_cuda_quant}; do
  timeout 300 build-dev/tests/$t > $OUT/$t.log 2>&1; echo "$t rc $?" >> $OUT/tests.txt
  tail -1 $OUT/$t.log >> $OUT/tests.txt
done
wait
BN_LINES="^(decode|prefill)|fraction|^memory"
bn() { local tag=$1; shift; echo "== $tag: $*" >> $OUT/final.txt; timeout 240 "$@" 2>&1 | grep -E "$BN_LINES" | cut -c1-330 >> $OUT/final.txt; }
[ "${ENGINE:-1}" = 1 ] && timeout 300 build-dev/tests/test_cuda_ops bench engine $M > $OUT/engine.log 2>&1
for r in $(seq 1 ${ROUNDS:-1}); do
  for v in ${VARIANTS:-"off 1" "on 0" "on 1" "on 4"}; do
    set -- $v
    bn "fuse $1 chain $2" $B bench --model $M --device cuda --fuse $1 --chain $2 --peak-gbs auto --only decode512,decode4096 --reps 3
  done
done
[ "${NCU:-1}" = 1 ] && timeout 300 ncu --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_read.sum.per_second -k regex:chain_kernel --launch-skip 64 --launch-count 4 $B bench --model $M --device cuda --fuse on --only decode512 --reps 1 > $OUT/ncu.log 2>&1
