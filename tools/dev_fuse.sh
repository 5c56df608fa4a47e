#!/usr/bin/env bash
# tools/dev_fuse.sh: the fused decode GEMVs on the GPU machine (branch fuse, docs/CUDA.md "Fused decode
# GEMVs"). Builds nothing: run it from the repo root with build-dev/ unpacked (tools/devpack.sh); every
# log goes to $OUT, the lines worth reading first to $OUT/summary.txt. About 2.5 minutes:
#   1. test_cuda_ops: every op against its CPU twin, and the new cases: the persistent GEMV bit for bit
#      against the one-pass GEMV and across launch shapes, op_rmsnorm_matmul / op_rmsnorm_swiglu /
#      op_linear's residual epilogue against the CPU twins and bit for bit against the plain ops on the
#      GPU, a fused layer chain under PDL (eager, graph, both trigger points) bit for bit;
#   2. test_llm (the GPU fixtures, and fused == plain logits bit for bit on the tiny model) and
#      test_cuda_batch (the batched step; its one-row steps and the solo steps it is compared with are fused);
#   3. test_cuda_ops bench gemv / small / step: the GEMVs at the decode shapes (one-pass vs persistent,
#      launch-shape sweeps, PDL), the synthetic 32-layer step (plain vs fused, graph, PDL);
#   4. test_cuda_ops bench engine /tmp/full: the engine's decode at contexts 512 and 3500 with the plain
#      ops on the one-pass GEMV (session 5), on the persistent GEMV, fused, fused + PDL; same tokens;
#   5. minicpmv bench --only decode512,decode4096 --reps 3 --peak-gbs auto (the default: fused, no PDL).
set -uo pipefail
OUT=${OUT:-/tmp/dev_fuse}
. tools/dev_common.sh

# the full-size random model, written while the correctness tests run
full_model_start

stamp "test_cuda_ops"
timeout 120 $B/tests/test_cuda_ops > "$OUT/test_cuda_ops.log" 2>&1
echo "test_cuda_ops rc=$?" >> "$OUT/summary.txt"
grep -E "FAIL|passed|failed" "$OUT/test_cuda_ops.log" | tail -20 >> "$OUT/summary.txt"
for op in pgemv norm_mm norm_swiglu linear_res fused_pdl; do
  echo "$op: $(grep -c "^  $op .* ok$" "$OUT/test_cuda_ops.log") cases ok, $(grep -c "^  $op .*FAIL$" "$OUT/test_cuda_ops.log") failed" >> "$OUT/summary.txt"
done

stamp "test_llm"
timeout 150 $B/tests/test_llm > "$OUT/test_llm.log" 2>&1
echo "test_llm rc=$?" >> "$OUT/summary.txt"
grep -E "^(ok|FAIL|SKIP) |passed|fused logits|assertion" "$OUT/test_llm.log" | tail -25 >> "$OUT/summary.txt"

stamp "test_cuda_batch"
timeout 90 $B/tests/test_cuda_batch > "$OUT/test_cuda_batch.log" 2>&1
echo "test_cuda_batch rc=$?" >> "$OUT/summary.txt"
grep -E "^(ok|FAIL) |passed|assertion" "$OUT/test_cuda_batch.log" | tail -12 >> "$OUT/summary.txt"

for what in gemv small step; do
  stamp "test_cuda_ops bench $what"
  timeout 120 $B/tests/test_cuda_ops bench $what > "$OUT/bench_$what.log" 2>&1
  echo "bench $what rc=$?" >> "$OUT/summary.txt"
  cat "$OUT/bench_$what.log" >> "$OUT/summary.txt"
done

full_model_wait
stamp "test_cuda_ops bench engine $M"
timeout 150 $B/tests/test_cuda_ops bench engine $M > "$OUT/bench_engine.log" 2>&1
echo "bench engine rc=$?" >> "$OUT/summary.txt"
cat "$OUT/bench_engine.log" >> "$OUT/summary.txt"

stamp "minicpmv bench decode512,decode4096"
timeout 150 $B/minicpmv bench --model $M --device cuda --peak-gbs auto --only decode512,decode4096 --reps 3 \
  > "$OUT/bench_minicpmv.log" 2>&1
echo "minicpmv bench rc=$?" >> "$OUT/summary.txt"
grep -iE "decode|peak|GB/s|tok/s" "$OUT/bench_minicpmv.log" | tail -12 >> "$OUT/summary.txt"
stamp "done"
