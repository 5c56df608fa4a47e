# tools/exp/ring16b.sh: session 16's ring kernel with its table entries loaded at once: the suites, the bench
# attention sweeps, the warp samples of one decode launch at 4,096 keys (tools/exp/attnsass.sh) and bench
# decode new vs old (OLD=1), fp16 and q4.
. tools/exp/common.sh
for t in ${TESTS:-test_cuda_ops test_cuda_batch test_llm}; do
  timeout 240 build-dev/tests/$t > $OUT/$t.log 2>&1; echo "$t rc $?: $(tail -1 $OUT/$t.log)" >> $OUT/tests.txt
done
timeout 200 build-dev/tests/test_cuda_ops bench attention > $OUT/bench_attention.log 2>&1
timeout 200 ncu --set full --warp-sampling-interval 0 -k regex:attn_tc --launch-skip 320 --launch-count 1 -o $OUT/attn $B bench --model $M --device cuda --only decode4096 --reps 1 > $OUT/ncu_run.txt 2>&1
ncu -i $OUT/attn.ncu-rep --page source --print-source sass --csv > $OUT/attn_sass.csv 2>&1
ncu -i $OUT/attn.ncu-rep --page details --print-details all > $OUT/attn_details.txt 2>&1
rm -f $OUT/attn.ncu-rep
BN_LINES="^(decode|seedcase)|fraction"
for r in 1 2; do
  bn "new fp16 r$r" $B bench --model $M --device cuda --peak-gbs auto --only decode512,decode4096 --reps 3
  bn "old fp16 r$r" old/build-dev/minicpmv bench --model $M --device cuda --peak-gbs auto --only decode512,decode4096 --reps 3
done
bn "new q4" $B bench --model $M --device cuda --quant q4 --only decode512,decode4096 --reps 3
bn "old q4" old/build-dev/minicpmv bench --model $M --device cuda --quant q4 --only decode512,decode4096 --reps 3
