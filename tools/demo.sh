#!/usr/bin/env bash
# tools/demo.sh BIN [MODEL_DIR]: the README's main job. With no model folder, generates the tiny
# demo model (random weights, real tokenizer) under models/demo-tiny and chats with it.
set -euo pipefail
bin=$1; model=${2:-}
if [ -z "$model" ]; then
  model=models/demo-tiny
  if [ ! -f "$model/config.json" ]; then
    echo "No model folder given: generating a tiny random demo model in $model (its answers are noise)." >&2
    "$bin" mkmodel --out "$model" --size tiny --seed 1
  fi
fi
img=models/demo.png
if "$bin" chat --help >/dev/null 2>&1; then
  exec "$bin" chat --model "$model" -p "What is in the image?" --greedy --max-new-tokens 24 ${DEMO_IMAGE:+--image "$DEMO_IMAGE"}
fi
echo "(chat is not built yet; running token generation instead)" >&2
exec "$bin" generate --model "$model" --ids 128000,128006,882,128007,271,9906,128009,128006,78191,128007,271 --max-new-tokens 16 --greedy --stats
