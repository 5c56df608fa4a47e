#!/usr/bin/env bash
# tools/demo.sh BIN [MODEL_DIR]: the README's main job. With no model folder, generates the tiny
# demo model (random weights, real tokenizer) under models/demo-tiny and asks it about a test
# image: the pipeline (decode, slice, vision tower, resampler, LLM) runs for real, the answer is
# noise. With a model folder, the same question goes to that model.
set -euo pipefail
bin=$1; model=${2:-}
img=${DEMO_IMAGE:-tests/fixtures/image/gen640x480_q90.jpg}
if [ -z "$model" ]; then
  model=models/demo-tiny
  if [ ! -f "$model/config.json" ]; then
    echo "No model folder given (make demo MODEL=/path/to/MiniCPM-Llama3-V-2_5): generating a tiny random" >&2
    echo "demo model in $model. Its answers are noise; the whole pipeline runs." >&2
    "$bin" mkmodel --out "$model" --size tiny --seed 1
  fi
fi
echo "minicpmv chat --model $model --image $img -p \"What is in the image?\"" >&2
exec "$bin" chat --model "$model" --image "$img" -p "What is in the image?" --max-new-tokens 32 --timings
