#!/usr/bin/env bash
# tools/dev_l2.sh: op_prefetch (weights into the L2 while the small kernels of a decode step run) and the
# quantized GEMV's launch shapes, on the GPU machine. Builds nothing: run it from the repo root with
# build-dev/ unpacked (tools/devpack.sh); logs go to $OUT, the lines worth reading first to
# $OUT/summary.txt. About 6 minutes:
#   1. the parity tests: test_cuda_ops (test_prefetch: values unchanged, eager and captured), test_llm,
#      test_cuda_batch, test_cuda_quant (every shape, exact);
#   2. test_cuda_ops bench engine: the engine's greedy decode without and with the prefetch at several
#      budgets, same tokens required;
#   3. minicpmv bench decode512,decode4096 --peak-gbs auto, --l2-prefetch 0 vs 24 (MiB), fp16 q4 q8;
#   4. test_cuda_quant bench: every quantized GEMV shape at the four decoder matrices;
#   5. bench --parallel 64 --concurrency 16,64 (128 new tokens a stream), --l2-prefetch 0 vs 24 (MiB).
set -uo pipefail
OUT=${OUT:-/tmp/dev_l2}
. tools/dev_common.sh

( [ -f $M/config.json ] || timeout 150 $B/minicpmv mkmodel --out $M --size full --seed 1 > "$OUT/mkmodel.log" 2>&1 ) &
mk=$!
for t in test_cuda_ops test_llm test_cuda_batch test_cuda_quant; do run_test $t; done
grep -c "prefetch.*ok" "$OUT/test_cuda_ops.log" | sed 's/^/prefetch cases ok: /' >> "$OUT/summary.txt"

wait $mk
stamp "bench engine"
timeout 150 $B/tests/test_cuda_ops bench engine $M > "$OUT/bench_engine.log" 2>&1
echo "bench engine rc=$?" >> "$OUT/summary.txt"
grep -E "context|FAIL" "$OUT/bench_engine.log" >> "$OUT/summary.txt"

for f in f16 q4 q8; do
  qa=""; [ $f = f16 ] || qa="--quant $f"
  for pf in 0 24; do
    pa="--l2-prefetch $pf"
    stamp "minicpmv bench $f prefetch $pf"
    timeout 90 $B/minicpmv bench --model $M --device cuda $qa $pa --peak-gbs auto --only decode512,decode4096 --reps 3 \
      > "$OUT/bench_${f}_pf$pf.log" 2>&1
    echo "rc=$?" >> "$OUT/summary.txt"
    grep -E "^  decode|^  cuda" "$OUT/bench_${f}_pf$pf.log" >> "$OUT/summary.txt"
  done
done

[ "${QUANT_BENCH:-1}" = 1 ] && stamp "test_cuda_quant bench" && timeout 200 $B/tests/test_cuda_quant bench > "$OUT/quant_bench.log" 2>&1
echo "quant bench rc=$?" >> "$OUT/summary.txt"
grep -E "pdl 0" "$OUT/quant_bench.log" | grep -E " n1 " >> "$OUT/summary.txt"
for pf in 0 24; do
  pa="--l2-prefetch $pf"
  stamp "bench conc16,64 prefetch $pf"
  timeout 150 $B/minicpmv bench --model $M --device cuda --quiet --parallel 64 --ctx 1024 --concurrency 16,64 \
    --conc-new 128 --reps 1 $pa > "$OUT/bench_conc_pf$pf.log" 2>&1
  echo "rc=$?" >> "$OUT/summary.txt"
  grep -E "^conc" "$OUT/bench_conc_pf$pf.log" | cut -c1-200 >> "$OUT/summary.txt"
done
stamp "done"
