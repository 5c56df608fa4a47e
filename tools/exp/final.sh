# tools/exp/final.sh: session 14's run 4 (docs/PERF.md); its background nf4 mkmodel overlapped the fp16 and q4 phases: do not reuse as is
set -u
[ -d .cache/tokenizer-llama3 ] || tar xJf .devpack/tok.tar.xz; mkdir -p old && tar xJf .devpack/old.tar.xz -C old && tar xJf .devpack/dev.tar.xz
export LD_LIBRARY_PATH=$PWD/build-dev/lib MINICPMV_TOKENIZER=$PWD/.cache/tokenizer-llama3/tokenizer.json
M=/tmp/full; build-dev/minicpmv mkmodel --out $M --size full --seed 1 > $OUT/mk.log 2>&1
( timeout 240 build-dev/minicpmv mkmodel --out $M-nf4 --size full --seed 1 --quant nf4 > $OUT/mk4.log 2>&1 ) &
mk=$!
B=build-dev/minicpmv
bn() { local tag=$1; shift; echo "== $tag: $*" >> $OUT/final.txt; timeout 200 "$@" 2>&1 | grep -E "^(decode|prefill|vision|ttft|seedcase|conc)|fraction|^memory|^cuda:" | cut -c1-330 >> $OUT/final.txt; }
bn fp16 $B bench --model $M --device cuda --peak-gbs auto --only decode512,decode4096,prefill3000,vision10,ttft,ttftsync,seedcase --reps 3
bn q4 $B bench --model $M --device cuda --quant q4 --peak-gbs auto --only decode512,decode4096,prefill3000,seedcase --reps 3
bn q8 $B bench --model $M --device cuda --quant q8 --peak-gbs auto --only decode512,decode4096 --reps 3
wait $mk; bn nf4 $B bench --model $M-nf4 --device cuda --peak-gbs auto --only decode512,decode4096 --reps 3
for b in old/build-dev build-dev; do bn "conc $b" $b/minicpmv bench --model $M --device cuda --parallel 64 --ctx 1024 --concurrency 16,64 --reps 1; done
for b in old/build-dev build-dev; do bn "conc $b (2)" $b/minicpmv bench --model $M --device cuda --parallel 64 --ctx 1024 --concurrency 16,64 --reps 1; done
