#!/usr/bin/env bash
# tools/dev_sched.sh: issue 14's admission, follow-up and preemption figures on the GPU machine (branch
# sched). Builds nothing: run it from the repo root with build-dev/ unpacked (tools/devpack.sh); every log
# goes to $OUT, the lines worth reading first to $OUT/summary.txt. About 2 minutes (three model loads):
#   1. test_cuda_batch: the batched step on the GPU (the scheduler now reserves a step's KV blocks before
#      it runs, and truncating a slot also gives back blocks reserved ahead);
#   2. bench --parallel 64 --ctx 1024 --concurrency 1,16,64 --reps 1: aggregate and per-stream tok/s, the
#      burst TTFT, and the probe (probe_ms_p50 / _p99 of a request arriving under 16 / 63 streams of steady
#      decode, probe_idle_ms, probe_x_idle: issue 14 asks <= 3 at 16);
#   3. bench --only turn2 --reps 3: a follow-up turn about the same 1344x1344 image (value: its TTFT from
#      the JPEG bytes; reused / prefilled prompt tokens; goal_ms = 20 + new_alone_ms);
#   4. bench --parallel 64 --ctx 1024 --kv-tokens 16384 --concurrency 64 --reps 1: 64 streams of ~742
#      tokens on a pool of 16,384 tokens (a third of what they hold at once): preempted / recomputed, and
#      what the smaller pool costs in tok/s against step 2's conc64.
set -uo pipefail
OUT=${OUT:-/tmp/dev_sched}
. tools/dev_common.sh

full_model_start

stamp "test_cuda_batch"
timeout 120 $B/tests/test_cuda_batch > "$OUT/test_cuda_batch.log" 2>&1
echo "test_cuda_batch rc=$?" >> "$OUT/summary.txt"
grep -E "FAIL|passed|failed" "$OUT/test_cuda_batch.log" | tail -10 >> "$OUT/summary.txt"

full_model_wait
[ -f $M/config.json ] || { stamp "mkmodel failed"; tail -5 "$OUT/mkmodel.log" >> "$OUT/summary.txt"; exit 1; }

stamp "bench concurrency 1,16,64 with the probe"
timeout 240 $B/minicpmv bench --model $M --device cuda --quiet --parallel 64 --ctx 1024 --concurrency 1,16,64 --reps 1 \
  --json "$OUT/bench_conc.json" > "$OUT/bench_conc.txt" 2> "$OUT/bench_conc.err"
echo "bench conc rc=$?" >> "$OUT/summary.txt"
grep -E "^conc|^minicpmv bench" "$OUT/bench_conc.txt" >> "$OUT/summary.txt"

stamp "bench turn2"
timeout 120 $B/minicpmv bench --model $M --device cuda --quiet --only turn2 --reps 3 \
  --json "$OUT/bench_turn2.json" > "$OUT/bench_turn2.txt" 2> "$OUT/bench_turn2.err"
echo "bench turn2 rc=$?" >> "$OUT/summary.txt"
grep -E "^turn2" "$OUT/bench_turn2.txt" >> "$OUT/summary.txt"

stamp "bench conc64 on a 16384-token pool (preemption)"
timeout 180 $B/minicpmv bench --model $M --device cuda --parallel 64 --ctx 1024 --kv-tokens 16384 --concurrency 64 \
  --reps 1 --json "$OUT/bench_pool.json" > "$OUT/bench_pool.txt" 2> "$OUT/bench_pool.err"
echo "bench pool rc=$?" >> "$OUT/summary.txt"
grep -E "^conc|^kv pool" "$OUT/bench_pool.txt" "$OUT/bench_pool.err" >> "$OUT/summary.txt"
stamp "done"
