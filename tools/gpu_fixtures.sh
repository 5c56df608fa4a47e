#!/usr/bin/env bash
# tools/gpu_fixtures.sh: the PyTorch fixtures on the REALISTIC-statistics tiny checkpoint (issue 19),
# run by the lead on the GPU machine (torch + transformers there, not in CI). Writes NEW files beside
# the committed ones (the default-statistics fixtures stay as they are):
#   $OUT/fx_realistic/llm_tiny_realistic.safetensors   -> tests/fixtures/llm_tiny_realistic.safetensors
#   $OUT/fx_realistic/vision_realistic/                 -> tests/fixtures/vision_realistic/ (optional, not
#                                                          read by a C test yet)
#   $OUT/fx_realistic/*.log, test_llm.log               the scripts' output and the C test run on the fixture
# packed as $OUT/fixtures_realistic.tar.
#
# Here (the CPU machine), first:   bash tools/devpack.sh      (builds build-dev/ with CUDA=1, packs it)
# Then through the device tool (carry .devpack .cache/tokenizer-llama3):
#   bash tools/gpu_fixtures.sh
# Back here: tar xf <files_at>/fixtures_realistic.tar; cp fx_realistic/llm_tiny_realistic.safetensors
# tests/fixtures/; set REALISTIC_COMMITTED to 1 in tests/test_llm.c; run build/tests/test_llm and put the
# measured errors it prints into docs/TESTING.md; commit the fixture and the test together.
#
# The checkpoint: `minicpmv mkmodel --size tiny --seed 1 --stats realistic --massive 4` — exactly what
# tests/test_llm.c's tiny_realistic() generates, so the fixture and the C test read the same bytes
# (the fixture's embed_abs_sum metadata proves it).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/fx_realistic"
if [ -f .devpack/dev.tar.xz ]; then
  tar xJf .devpack/dev.tar.xz
  export LD_LIBRARY_PATH=$PWD/build-dev/lib:${LD_LIBRARY_PATH:-}
  B=build-dev
else
  make -j"$(nproc)" CUDA=1 BUILD=build-dev build-dev/minicpmv build-dev/tests/test_llm || exit 1
  B=build-dev
fi
export PYTHONUNBUFFERED=1
M=build/test-models/tiny-s1-realistic-m4
[ -f $M/config.json ] || $B/minicpmv mkmodel --out $M --size tiny --seed 1 --stats realistic --massive 4 || exit 1
F=$OUT/fx_realistic
python3 tools/ref_llm.py --model $M --out $F/llm_tiny_realistic.safetensors 2>&1 | tee $F/ref_llm.log | tail -25
python3 tools/ref_vision.py --model $M --out $F/vision_realistic --posid-sweep 0 2>&1 | tee $F/ref_vision.log | tail -30
# the C side on the new fixture, CPU and GPU (test_llm runs the fixtures on the GPU too when one is present)
mkdir -p tests/fixtures && cp $F/llm_tiny_realistic.safetensors tests/fixtures/
$B/tests/test_llm 2>&1 | tee $F/test_llm.log | grep -E "realistic|layer|logits|greedy|FAIL|SKIP|passed" | tail -60
(cd "$OUT" && tar cf fixtures_realistic.tar fx_realistic && ls -la fixtures_realistic.tar)
