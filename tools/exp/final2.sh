# tools/exp/final2.sh: session 14's run 5 (docs/PERF.md): fp16 and q4 phases of bench on the new pack alone
. tools/exp/common.sh
bn fp16 $B bench --model $M --device cuda --peak-gbs auto --only decode512,decode4096,prefill3000,vision10,ttft,ttftsync,seedcase --reps 3
bn q4 $B bench --model $M --device cuda --quant q4 --peak-gbs auto --only prefill3000,seedcase --reps 3
bn fp16-ttft $B bench --model $M --device cuda --only vision10,ttft,ttftsync --reps 7
