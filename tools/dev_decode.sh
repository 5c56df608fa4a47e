#!/usr/bin/env bash
# tools/dev_decode.sh: the decode step in every weight format on the GPU machine. Builds nothing: run it
# from the repo root with build-dev/ unpacked (tools/devpack.sh); logs go to $OUT, the lines worth
# reading first to $OUT/summary.txt. About 6 minutes:
#   1. the parity tests of the decode kernels: test_cuda_ops, test_cuda_batch, test_llm, test_cuda_quant;
#   2. minicpmv bench decode512,decode4096 --peak-gbs auto in fp16, q4 and q8 (at load) and nf4 (a folder
#      written by mkmodel --quant nf4 in the official layout), each as a fraction of the read bandwidth
#      measured in the same run;
#   3. optional, each a few minutes, in this order:
#      OPS_BENCH="attention small ..." test_cuda_ops bench for each word (decode attention, the small ops);
#      ENGINE=1 test_cuda_ops bench engine (the engine's fp16 decode with each op variant, same tokens);
#      QUANT_BENCH=1 test_cuda_quant bench (every quantized GEMV shape at the decoder's matrices);
#      CONC=1 bench --parallel 64 --concurrency 16,64 (256 new tokens a stream, the default);
#      PROF=1 tools/prof_decode.sh all: one fp16 and one q4 decode step under ncu, per kernel.
set -uo pipefail
OUT=${OUT:-/tmp/dev_decode}
. tools/dev_common.sh

# the full-size random checkpoints, written while the tests run
( [ -f $M/config.json ] || timeout 120 $B/minicpmv mkmodel --out $M --size full --seed 1 > "$OUT/mkmodel.log" 2>&1
  timeout 240 $B/minicpmv mkmodel --out $M-nf4 --size full --seed 1 --quant nf4 > "$OUT/mkmodel_nf4.log" 2>&1
  echo "rc=$?" >> "$OUT/mkmodel_nf4.log" ) &
mk=$!

for t in test_cuda_ops test_cuda_batch test_llm test_cuda_quant; do
  run_test $t "FAIL|passed|failed|assert|greedy tokens"
done

wait $mk
for f in f16 q4 q8 nf4; do
  m=$M; qa=""
  case $f in q4|q8) qa="--quant $f" ;; nf4) m=$M-nf4 ;; esac
  [ -f $m/config.json ] || { stamp "no $m"; continue; }
  stamp "minicpmv bench $f"
  timeout 90 $B/minicpmv bench --model $m --device cuda $qa --peak-gbs auto --only decode512,decode4096 --reps 3 \
    > "$OUT/bench_$f.log" 2>&1
  echo "bench $f rc=$?" >> "$OUT/summary.txt"
  grep -E "^decode|^  cuda|^  decode" "$OUT/bench_$f.log" | cut -c1-160 >> "$OUT/summary.txt"
done

for w in ${OPS_BENCH:-}; do
  stamp "test_cuda_ops bench $w"
  timeout 120 $B/tests/test_cuda_ops bench $w > "$OUT/ops_bench_$w.log" 2>&1
  echo "ops bench $w rc=$?" >> "$OUT/summary.txt"
done
if [ "${ENGINE:-0}" = 1 ]; then
  stamp "bench engine"
  timeout 150 $B/tests/test_cuda_ops bench engine $M > "$OUT/bench_engine.log" 2>&1
  echo "bench engine rc=$?" >> "$OUT/summary.txt"
  grep -E "context|FAIL" "$OUT/bench_engine.log" >> "$OUT/summary.txt"
fi
if [ "${QUANT_BENCH:-0}" = 1 ]; then
  stamp "test_cuda_quant bench"
  timeout 200 $B/tests/test_cuda_quant bench > "$OUT/quant_bench.log" 2>&1
  echo "quant bench rc=$?" >> "$OUT/summary.txt"
  grep -E "^  step" "$OUT/quant_bench.log" | grep -E "pdl 0" >> "$OUT/summary.txt"
fi
if [ "${CONC:-0}" = 1 ]; then
  stamp "bench conc16,64"
  timeout 150 $B/minicpmv bench --model $M --device cuda --quiet --parallel 64 --ctx 1024 --concurrency 16,64 \
    --reps 1 > "$OUT/bench_conc.log" 2>&1
  echo "bench conc rc=$?" >> "$OUT/summary.txt"
  grep -E "^conc" "$OUT/bench_conc.log" >> "$OUT/summary.txt"
fi
if [ "${PROF:-0}" = 1 ]; then
  stamp "prof_decode all"
  OUT=$OUT timeout 300 bash tools/prof_decode.sh all > "$OUT/prof.txt" 2>&1
  grep -vE "^\s*$" "$OUT/prof.txt" | head -70 >> "$OUT/summary.txt"
fi
stamp "done"
