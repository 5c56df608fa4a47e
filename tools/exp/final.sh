# tools/exp/final.sh: session 14's run 4 (docs/PERF.md); its background nf4 mkmodel overlapped the fp16 and q4 phases: do not reuse as is
OLD=1
. tools/exp/common.sh
( timeout 240 $B mkmodel --out $M-nf4 --size full --seed 1 --quant nf4 > $OUT/mk4.log 2>&1 ) &
mk=$!
bn fp16 $B bench --model $M --device cuda --peak-gbs auto --only decode512,decode4096,prefill3000,vision10,ttft,ttftsync,seedcase --reps 3
bn q4 $B bench --model $M --device cuda --quant q4 --peak-gbs auto --only decode512,decode4096,prefill3000,seedcase --reps 3
bn q8 $B bench --model $M --device cuda --quant q8 --peak-gbs auto --only decode512,decode4096 --reps 3
wait $mk; bn nf4 $B bench --model $M-nf4 --device cuda --peak-gbs auto --only decode512,decode4096 --reps 3
for b in old/build-dev build-dev; do bn "conc $b" $b/minicpmv bench --model $M --device cuda --parallel 64 --ctx 1024 --concurrency 16,64 --reps 1; done
for b in old/build-dev build-dev; do bn "conc $b (2)" $b/minicpmv bench --model $M --device cuda --parallel 64 --ctx 1024 --concurrency 16,64 --reps 1; done
