#!/usr/bin/env bash
# tools/dev_exact.sh: the session-6 CPU matmul (branch exact) on the GPU machine's 16-core host CPU; the
# GPU itself is not used. Optional (about 2 minutes): the CPU backend is the CI path and was measured on
# the 2-core development machine; this adds another microarchitecture and 16 threads. Builds nothing: run
# it from the repo root with build-dev/ unpacked (tools/devpack.sh); logs go to $OUT, the lines worth
# reading first to $OUT/summary.txt.
#   1. test_matmul (every element of op_matmul bit-identical to the rule written in scalar C, 1 and 3
#      threads) and test_prefix test_reuse_bitwise (a reused prefix's logits equal the cold prefill's):
#      expected "3 passed, 0 failed" and "1 passed, 0 failed";
#   2. bench --device cpu --only prefill512,decode64 --decode-steps 4 --reps 1 on the full-size random
#      model (all 16 threads): prefill and decode tok/s of the CPU backend, to set beside docs/PERF.md's
#      2026-11-26 row of the same machine (19.2 tok/s prefill of 512, 4.07 tok/s decode, with the
#      previous GEMV + OpenBLAS sgemm; a different commit, so indicative, not a same-run comparison).
set -uo pipefail
OUT=${OUT:-/tmp/dev_exact}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/build-dev/lib:${LD_LIBRARY_PATH:-}
B=build-dev
M=/tmp/full
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$OUT/summary.txt"; }

lscpu | grep -E 'Model name|^CPU\(s\)' > "$OUT/cpu.txt" 2>&1
git log -1 --oneline > "$OUT/commit.txt" 2>/dev/null
cat "$OUT/cpu.txt" "$OUT/commit.txt" >> "$OUT/summary.txt"

full_model_start

timeout 120 $B/tests/test_matmul > "$OUT/test_matmul.log" 2>&1
stamp "test_matmul rc=$? $(tail -1 "$OUT/test_matmul.log")"
T_ONLY=test_reuse_bitwise timeout 120 $B/tests/test_prefix > "$OUT/test_prefix.log" 2>&1
stamp "test_prefix test_reuse_bitwise rc=$? $(tail -1 "$OUT/test_prefix.log")"

full_model_wait
stamp "model: $(tail -1 "$OUT/mkmodel.log" 2>/dev/null || echo present)"
timeout 240 $B/minicpmv bench --model $M --device cpu --only prefill512,decode64 --decode-steps 4 --reps 1 \
  > "$OUT/bench_cpu.log" 2>&1
stamp "bench cpu rc=$?"
grep -E '^(prefill|decode)' "$OUT/bench_cpu.log" | tee -a "$OUT/summary.txt"
stamp "done"
