# tools/exp/common.sh: the set-up session 14's device scripts (tools/exp/*.sh) share, sourced from the repo
# root on the GPU machine with the carry .devpack (dev.tar.xz, tok.tar.xz; old.tar.xz when OLD=1): unpacks the
# binaries (the old pack into old/), the tokenizer, sets LD_LIBRARY_PATH / MINICPMV_TOKENIZER, B (the new
# minicpmv), M (the full-size random model, written unless there) and bn TAG CMD..: CMD's output lines
# matching $BN_LINES appended to $OUT/final.txt under "== TAG: CMD".
set -u
[ -d .cache/tokenizer-llama3 ] || tar xJf .devpack/tok.tar.xz
[ "${OLD:-0}" = 1 ] && mkdir -p old && tar xJf .devpack/old.tar.xz -C old
tar xJf .devpack/dev.tar.xz
export LD_LIBRARY_PATH=$PWD/build-dev/lib MINICPMV_TOKENIZER=$PWD/.cache/tokenizer-llama3/tokenizer.json
B=build-dev/minicpmv
M=/tmp/full
[ -f $M/config.json ] || $B mkmodel --out $M --size full --seed 1 > $OUT/mk.log 2>&1
BN_LINES=${BN_LINES:-"^(decode|prefill|vision|ttft|seedcase|conc)|fraction|^memory|^cuda:"}
bn() { local tag=$1; shift; echo "== $tag: $*" >> $OUT/final.txt; timeout 200 "$@" 2>&1 | grep -E "$BN_LINES" | cut -c1-330 >> $OUT/final.txt; }
