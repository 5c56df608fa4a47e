# tools/exp/swiglu16.sh: session 16's SwiGLU in the one-token gate|up GEMV's epilogue (op_rmsnorm_swiglu without
# a norm in the plain sequence, bench --fuse swiglu): the GPU suites, `test_cuda_ops bench engine` (the variants,
# same tokens), then `bench` decode with --fuse swiglu against --fuse off, fp16 and q4, two alternating rounds.
. tools/exp/common.sh
for t in ${TESTS:-test_cuda_ops test_llm test_cuda_batch test_cuda_quant}; do
  timeout 240 build-dev/tests/$t > $OUT/$t.log 2>&1; echo "$t rc $?: $(tail -1 $OUT/$t.log)" >> $OUT/tests.txt
done
timeout 200 build-dev/tests/test_cuda_ops bench engine $M > $OUT/bench_engine.log 2>&1
BN_LINES="^(decode|seedcase)|fraction"
for r in 1 2; do
  for f in swiglu off; do
    bn "fp16 --fuse $f r$r" $B bench --model $M --device cuda --peak-gbs auto --fuse $f --only decode512,decode4096 --reps 3
  done
done
for f in swiglu off; do bn "q4 --fuse $f" $B bench --model $M --device cuda --quant q4 --fuse $f --only decode512,decode4096 --reps 3; done
