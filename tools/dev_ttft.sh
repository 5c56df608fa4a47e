#!/usr/bin/env bash
# tools/dev_ttft.sh: the image path while the JPEG decodes (docs/IMAGE.md, "While the file decodes") on the
# GPU machine. Builds nothing: run it from the repo root with build-dev/ unpacked (tools/devpack.sh
# test_vision test_cuda_ops test_llm); every log goes to $OUT. About 3 minutes:
#   1. test_vision on the card (its encode-while-decoding case: the tokens of JPEGs still decoding equal
#      those of the decoded files, bit for bit) and test_llm (the fixtures' greedy tokens);
#   2. minicpmv bench on the full-size random model, $TREPS repetitions (default 5), the phases
#      vision10, ttft (the JPEG decodes on its own thread and the tower starts on the top slices),
#      ttftsync (decoded whole first) and turn2, with --image-batches rows (one vision batch per slice
#      row, the default) and whole (one batch per image: the order before), twice in alternation (A/B in
#      one run: machines of one kind differ by more than some changes do).
# The summary ($OUT/summary.txt) keeps the lines worth reading first.
set -uo pipefail
OUT=${OUT:-/tmp/dev_ttft}
. tools/dev_common.sh

full_model_start
run_test test_vision "FAIL|passed|failed|while decoding|bit-identical|DIFFERENT"
run_test test_llm
full_model_wait
for i in 1 2; do
  for ib in rows whole; do
    stamp "minicpmv bench --image-batches $ib --only vision10,ttft,ttftsync,turn2 (round $i)"
    timeout 120 $B/minicpmv bench --model $M --device cuda --image-batches $ib --only vision10,ttft,ttftsync,turn2 \
      --reps ${TREPS:-5} > "$OUT/bench_${i}_$ib.log" 2>&1
    echo "bench rc=$?" >> "$OUT/summary.txt"
    grep -E "^(vision10|ttft|ttftsync|turn2) " "$OUT/bench_${i}_$ib.log" | cut -c1-400 >> "$OUT/summary.txt"
  done
done
stamp "done"
