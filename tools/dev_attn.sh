#!/usr/bin/env bash
# tools/dev_attn.sh: the decode attention kernels on the GPU machine (branch attn, docs/CUDA.md "Attention,
# decode kernels"). Builds nothing: run it from the repo root with build-dev/ unpacked (tools/devpack.sh,
# the default fat build, so an H200 runs the sm_90 cluster kernel). Every log goes to $OUT, the lines
# worth reading first to $OUT/summary.txt. About 1.5-2 minutes:
#   1. test_cuda_ops: every op against its CPU twin; test_attention_decode runs the split-K kernel and
#      the cluster kernel at 1, 2, 4, 8, 16 splits per cluster, and the automatic choice (which must be
#      the cluster kernel on an H200), on 14 shapes; test_graph replays a captured decode step over it;
#   2. test_cuda_batch: op_attention_rows (B = 1 .. 64, paged) automatic and forced per kernel, and the
#      batched engine steps and graphs on the tiny model;
#   3. test_llm: the LLM fixtures on the GPU (greedy tokens);
#   4. test_cuda_ops bench attention: n = 1 decode at T = 512 .. 32768 before (general, split-K) and
#      after (automatic), in the q_pos0 and device-position forms, the cluster kernel at C = 4, 8, 16;
#      op_attention_rows at B = 1, 4, 16, 64 rows of 512 / 4096 keys, split-K vs automatic.
# Optional (STEP=1): 5. test_cuda_ops bench step, the synthetic 32-layer decode step (about 1 more minute).
set -uo pipefail
OUT=${OUT:-/tmp/dev_attn}
. tools/dev_common.sh

stamp "test_cuda_ops"
timeout 180 $B/tests/test_cuda_ops > "$OUT/test_cuda_ops.log" 2>&1
echo "test_cuda_ops rc=$?" >> "$OUT/summary.txt"
grep -E "cluster kernel on this device|FAIL|not run|passed|failed|assert" "$OUT/test_cuda_ops.log" | tail -30 >> "$OUT/summary.txt"
for op in attention attn_pos attn_dec graph; do
  echo "$op: $(grep -c "^  $op .* ok$" "$OUT/test_cuda_ops.log") cases ok, $(grep -c "^  $op .*FAIL$" "$OUT/test_cuda_ops.log") failed" >> "$OUT/summary.txt"
done

stamp "test_cuda_batch"
timeout 150 $B/tests/test_cuda_batch > "$OUT/test_cuda_batch.log" 2>&1
echo "test_cuda_batch rc=$?" >> "$OUT/summary.txt"
grep -E "FAIL|passed|failed|assert" "$OUT/test_cuda_batch.log" | tail -12 >> "$OUT/summary.txt"
echo "attn_rows: $(grep -c "^  attn_rows .* ok$" "$OUT/test_cuda_batch.log") cases ok, $(grep -c "^  attn_rows .*FAIL$" "$OUT/test_cuda_batch.log") failed" >> "$OUT/summary.txt"

stamp "test_llm"
timeout 150 $B/tests/test_llm > "$OUT/test_llm.log" 2>&1
echo "test_llm rc=$?" >> "$OUT/summary.txt"
grep -E "^(FAIL|SKIP) |passed|failed|assert" "$OUT/test_llm.log" | tail -15 >> "$OUT/summary.txt"

stamp "test_cuda_ops bench attention"
timeout 150 $B/tests/test_cuda_ops bench attention > "$OUT/bench_attention.log" 2>&1
echo "bench attention rc=$?" >> "$OUT/summary.txt"
cat "$OUT/bench_attention.log" >> "$OUT/summary.txt"

if [ "${STEP:-0}" = 1 ]; then
  stamp "test_cuda_ops bench step"
  timeout 150 $B/tests/test_cuda_ops bench step > "$OUT/bench_step.log" 2>&1
  echo "bench step rc=$?" >> "$OUT/summary.txt"
  cat "$OUT/bench_step.log" >> "$OUT/summary.txt"
fi
stamp "done"
