# tools/exp/final2.sh: session 14's run 5 (docs/PERF.md): fp16 and q4 phases of bench on the new pack alone
set -u
[ -d .cache/tokenizer-llama3 ] || tar xJf .devpack/tok.tar.xz; tar xJf .devpack/dev.tar.xz
export LD_LIBRARY_PATH=$PWD/build-dev/lib MINICPMV_TOKENIZER=$PWD/.cache/tokenizer-llama3/tokenizer.json
M=/tmp/full; [ -f $M/config.json ] || build-dev/minicpmv mkmodel --out $M --size full --seed 1 > $OUT/mk.log 2>&1
B=build-dev/minicpmv
bn() { local tag=$1; shift; echo "== $tag: $*" >> $OUT/final.txt; timeout 200 "$@" 2>&1 | grep -E "^(decode|prefill|vision|ttft|seedcase|conc)|fraction|^memory|^cuda:" | cut -c1-330 >> $OUT/final.txt; }
bn fp16 $B bench --model $M --device cuda --peak-gbs auto --only decode512,decode4096,prefill3000,vision10,ttft,ttftsync,seedcase --reps 3
bn q4 $B bench --model $M --device cuda --quant q4 --peak-gbs auto --only prefill3000,seedcase --reps 3
bn fp16-ttft $B bench --model $M --device cuda --only vision10,ttft,ttftsync --reps 7
