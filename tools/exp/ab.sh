# tools/exp/ab.sh: session 14's A/B of two packed builds on the GPU machine (carry .devpack: old.tar.xz, dev.tar.xz, tok.tar.xz): the GPU tests of the new one, test_cuda_ops bench attention and bench decode512/4096 of both, twice in alternation
# A/B of two packed builds on the GPU machine: old (.devpack/old.tar.xz) against new (dev.tar.xz)
set -u
[ -d .cache/tokenizer-llama3 ] || tar xJf .devpack/tok.tar.xz; mkdir -p old && tar xJf .devpack/old.tar.xz -C old && tar xJf .devpack/dev.tar.xz
export LD_LIBRARY_PATH=$PWD/build-dev/lib MINICPMV_TOKENIZER=$PWD/.cache/tokenizer-llama3/tokenizer.json
M=/tmp/full
( build-dev/minicpmv mkmodel --out $M --size full --seed 1 > $OUT/mk.log 2>&1 ) &
mk=$!
for t in ${TESTS:-test_cuda_ops test_llm test_cuda_batch}; do timeout 200 build-dev/tests/$t > $OUT/$t.log 2>&1; echo "$t rc=$? $(grep -E 'passed' $OUT/$t.log | tail -1)"; grep -E "FAIL" $OUT/$t.log | head -5; done
for b in old/build-dev build-dev; do echo "== $b bench attention"; timeout 120 $b/tests/test_cuda_ops bench attention 2>&1 | grep -E "^  T=|^  B=|^  rows|form" | head -24; done > $OUT/attn_ab.txt
wait $mk
for r in $(seq 1 ${ROUNDS:-2}); do for b in old/build-dev build-dev; do for q in ${QS:-fp16 q4}; do qa=""; [ $q = fp16 ] || qa="--quant $q"
  echo "== $b $q round $r: $(timeout 150 $b/minicpmv bench --model $M --device cuda $qa --peak-gbs auto --only ${PH:-decode512,decode4096} --reps 3 2>&1 | grep -E '^decode' | cut -c1-160 | tr '\n' ' ')"
done; done; done
