#!/usr/bin/env bash
# tools/dev_q4.sh: the quantized decode GEMV on the GPU machine (branch q4, docs/CUDA.md "The quantized
# decode GEMV"). Builds nothing: run it from the repo root with build-dev/ unpacked (tools/devpack.sh);
# every log goes to $OUT. About 3 minutes:
#   1. test_cuda_quant, all cases: the GPU dequantization and every GEMV kernel's in-register weights
#      bit for bit against the CPU twin (one-hot x), every kernel against the CPU within tolerance, the
#      GEMM path, op_linear, the tiny model's greedy tokens (mkmodel of the full-size model runs meanwhile);
#   2. test_cuda_quant bench: every kernel (simt, auto, the older b kernel, the A kernel's shapes) at the
#      four matrices of a decoder layer, GB/s, and the 32-layer sum per token ("step" lines); F16's kernels
#      first (the GEMV, cuBLAS and the A kernel's F16 shapes at 1..16 tokens);
#   3. minicpmv bench decode512 on the full-size random model, the runs of $QRUNS (quant:qgemv:fuse; default
#      q4 with the default kernel and with session 5's, then q8); the read bandwidth measured in each
#      (--peak-gbs auto).
# QBENCH=quant limits step 2 to the quantized formats (F16's kernels are skipped), QBENCH=none skips it.
# The summary ($OUT/summary.txt) keeps the lines worth reading first.
set -uo pipefail
OUT=${OUT:-/tmp/dev_q4}
. tools/dev_common.sh

# the full-size random model, written while the correctness tests run (the CPU twin uses the cores too)
full_model_start

stamp "test_cuda_quant"
timeout ${QTEST_S:-110} $B/tests/test_cuda_quant > "$OUT/test_cuda_quant.log" 2>&1
echo "test_cuda_quant rc=$?" >> "$OUT/summary.txt"
grep -E "gemv exact|FAIL|passed|failed|skipped|tiny " "$OUT/test_cuda_quant.log" | grep -v " ok$" | tail -40 >> "$OUT/summary.txt"
grep -c "gemv exact.* ok$" "$OUT/test_cuda_quant.log" | sed 's/^/gemv exact cases ok: /' >> "$OUT/summary.txt"

full_model_wait
if [ "${QBENCH:-}" != none ]; then
  stamp "test_cuda_quant bench"
  timeout 150 $B/tests/test_cuda_quant bench ${QBENCH:-} > "$OUT/bench_gemv.log" 2>&1
  echo "bench rc=$?" >> "$OUT/summary.txt"
  grep -E "^  step|decoder GEMVs" "$OUT/bench_gemv.log" >> "$OUT/summary.txt"
fi

# the end-to-end runs: $QRUNS lists them as quant:qgemv:fuse (default: q4 with the default kernel and with
# session 5's, then q8: a before/after in one run); fuse is auto, on or off (bench --fuse)
for run in ${QRUNS:-q4:1:auto q4:2:auto q8:1:auto}; do
  IFS=: read -r q k f <<< "$run"
  stamp "minicpmv bench --quant $q --qgemv $k --fuse $f"
  timeout 50 $B/minicpmv bench --model $M --device cuda --quant $q --qgemv $k --fuse $f --peak-gbs auto \
    --only decode512 --reps 3 > "$OUT/bench_${q}_k${k}_$f.log" 2>&1
  echo "bench $q qgemv $k fuse $f rc=$?" >> "$OUT/summary.txt"
  grep -iE "decode512|peak|GB/s|tok/s" "$OUT/bench_${q}_k${k}_$f.log" | tail -6 >> "$OUT/summary.txt"
done
stamp "done"
