# tools/exp/scale17.sh: session 17, the last run. The quantized GEMV's scales by plain loads instead of __ldg (new
# build) against the build before it (OLD=1: old/), alternating: bench q4 (two rounds), q8, nf4 decode512 /
# decode4096; test_cuda_quant bench quant (Q4 lines); then the GPU suites of the new build. To $OUT.
OLD=1 . tools/exp/common.sh
BN_LINES="^(decode)"
[ -f /tmp/nf4/config.json ] || timeout 150 $B mkmodel --out /tmp/nf4 --size full --seed 1 --quant nf4 > $OUT/mknf4.log 2>&1
for r in 1 2; do
  for b in new old; do
    bin=$B; [ $b = old ] && bin=old/build-dev/minicpmv
    bn "q4 $b r$r" $bin bench --model $M --device cuda --quant q4 --only decode512,decode4096 --reps 3
  done
done
for b in new old; do
  bin=$B; [ $b = old ] && bin=old/build-dev/minicpmv
  bn "q8 $b" $bin bench --model $M --device cuda --quant q8 --only decode512,decode4096 --reps 3
  bn "nf4 $b" $bin bench --model /tmp/nf4 --device cuda --only decode512,decode4096 --reps 3
done
for t in ${TESTS:-test_cuda_quant test_llm test_cuda_batch}; do
  timeout 200 build-dev/tests/$t > $OUT/$t.log 2>&1; echo "$t rc $?: $(tail -1 $OUT/$t.log)" >> $OUT/tests.txt
done
timeout 150 build-dev/tests/test_cuda_quant bench quant > $OUT/qbench.log 2>&1
grep -E "(Q4|NF4|Q8) .*n1  auto   pdl 0|step .* auto   n1" $OUT/qbench.log >> $OUT/final.txt
