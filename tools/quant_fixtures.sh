#!/usr/bin/env bash
# tools/quant_fixtures.sh: the PyTorch fixtures of the tiny checkpoint's quantized forms (issue 13's parity:
# the tiny model in each format against a reference of the same dequantization), on the GPU machine (torch +
# transformers there, not in CI). Writes $OUT/fx_quant/llm_tiny_{q8,q4,nf4}.safetensors (-> tests/fixtures/),
# the scripts' logs and test_llm's run on them (CPU and GPU), packed as $OUT/fixtures_quant.tar.
#
# Here: bash tools/devpack.sh test_llm; then through the device tool (carry .devpack .cache/tokenizer-llama3):
#   bash tools/quant_fixtures.sh
# The folders are the ones tests/test_llm.c's tiny_quant() writes, with the same commands: the seed-1 tiny
# checkpoint, `quantize --quant q8|q4` of it, `mkmodel --quant nf4` of the same seed (each fixture's
# embed_abs_sum metadata proves the C test reads the same bytes). tools/ref_llm.py dequantizes them with
# tools/ref_dequant.py (written from docs/QUANT.md, not from the C code) and runs transformers' Llama.
set -uo pipefail
OUT=${OUT:-/tmp/out}; F=$OUT/fx_quant; mkdir -p "$F"
tar xJf .devpack/dev.tar.xz
export LD_LIBRARY_PATH=$PWD/build-dev/lib:${LD_LIBRARY_PATH:-} PYTHONUNBUFFERED=1
B=build-dev/minicpmv
M=build/test-models/tiny-s1
[ -f $M/config.json ] || $B mkmodel --out $M --size tiny --seed 1 > "$F/mkmodel.log" 2>&1 || exit 1
for q in q8 q4; do
  [ -f $M-$q/config.json ] || $B quantize --model $M --out $M-$q --quant $q > "$F/quantize_$q.log" 2>&1 || exit 1
done
[ -f $M-nf4/config.json ] || $B mkmodel --out $M-nf4 --size tiny --seed 1 --quant nf4 > "$F/mkmodel_nf4.log" 2>&1 || exit 1
for q in q8 q4 nf4; do
  echo "=== $q"
  python3 tools/ref_llm.py --model $M-$q --out $F/llm_tiny_$q.safetensors > "$F/ref_llm_$q.log" 2>&1
  echo "ref_llm rc=$?"; grep -E "dequantized|greedy|f16 vs f32|error|Error" "$F/ref_llm_$q.log" | cut -c1-300 | tail -6
done
mkdir -p tests/fixtures && cp $F/llm_tiny_*.safetensors tests/fixtures/
build-dev/tests/test_llm > "$F/test_llm.log" 2>&1
echo "test_llm rc=$?"
grep -E "^  (q8|q4|nf4)|f32 (layer 2|logits|greedy)|f16 (layer 2|logits|greedy)|FAIL|passed" "$F/test_llm.log" | head -60
(cd "$OUT" && tar cf fixtures_quant.tar fx_quant && ls -la fixtures_quant.tar)
