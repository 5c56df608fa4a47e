# tools/exp/final16.sh: session 16's final tree on the card (SwiGLU in the one-token gate|up GEMV's epilogue by
# default): the GPU suites, then `bench --peak-gbs auto` decode and the seed case, fp16 and q4. Lines to
# $OUT/final.txt.
. tools/exp/common.sh
for t in ${TESTS:-test_cuda_ops test_llm test_cuda_batch test_cuda_quant test_vision}; do
  timeout 200 build-dev/tests/$t > $OUT/$t.log 2>&1; echo "$t rc $?: $(tail -1 $OUT/$t.log)" >> $OUT/tests.txt
done
BN_LINES="^(decode|seedcase)|fraction|^memory"
bn fp16 $B bench --model $M --device cuda --peak-gbs auto --only decode512,decode4096,seedcase --reps 3
bn q4 $B bench --model $M --device cuda --quant q4 --only decode512,decode4096,seedcase --reps 3
