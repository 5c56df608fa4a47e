#!/usr/bin/env bash
# tools/dev_step.sh: where a batched decode step's time goes, and the time to first token's parts, on the
# GPU machine (device tool; carry .devpack and .cache/tokenizer-llama3; binaries from tools/devpack.sh).
# Logs to $OUT, the lines worth reading first to $OUT/summary.txt. Stages (default: all four):
#   tests   test_cuda_ops and test_cuda_batch (the decode kernels' and the batched step's parity), or $TESTS
#   f16     test_cuda_quant bench f16: the F16 tensor-core kernel's shapes against cuBLAS at 1..16 tokens
#   conc    bench --parallel 64 --ctx 1024 --concurrency 16,64 once per --f16mma value in $F16MMA (default 0 1)
#   base    bench decode512,prefill3000 --peak-gbs auto (what the batch-1 and prefill paths do now)
#   prof    one steady-state batched step of ROWS rows (default "16 64") under ncu: the bench's concN phase
#           with --prof-step ROWS:40 and ncu --profile-from-start off (that step's kernels only, graph nodes
#           included); tools/prof_step.py sums them per kernel
#   ttft    bench vision10,ttft --reps 5 (ttft: JPEG, the vision share with its parts, prefill)
#   attn    test_cuda_ops bench attention (one row and rows mode, with the rows-mode W x S grid)
set -uo pipefail
OUT=${OUT:-/tmp/dev_step}
. tools/dev_common.sh
[ -f $M/config.json ] || timeout 120 $B/minicpmv mkmodel --out $M --size full --seed 1 > "$OUT/mkmodel.log" 2>&1
for st in ${STAGES:-tests prof ttft attn}; do
  case $st in
  tests)
    for t in ${TESTS:-test_cuda_ops test_cuda_batch}; do run_test $t "FAIL|passed|failed|assert|greedy tokens"; done ;;
  f16)
    stamp "test_cuda_quant bench f16"
    timeout 150 $B/tests/test_cuda_quant bench f16 > "$OUT/quant_bench_f16.log" 2>&1
    echo "quant bench f16 rc=$?" >> "$OUT/summary.txt"
    grep -iE "step|total|best|default" "$OUT/quant_bench_f16.log" | head -40 >> "$OUT/summary.txt" ;;
  conc)
    for v in ${F16MMA:-0 1}; do
      stamp "bench conc16,64 --f16mma $v"
      timeout 150 $B/minicpmv bench --model $M --device cuda --quiet --parallel 64 --ctx 1024 --concurrency 16,64 \
        --reps 1 --f16mma $v > "$OUT/bench_conc_f$v.log" 2>&1
      echo "bench conc rc=$?" >> "$OUT/summary.txt"
      grep -E "^conc" "$OUT/bench_conc_f$v.log" | cut -c1-330 >> "$OUT/summary.txt"
    done ;;
  base)
    stamp "bench decode512,prefill3000"
    timeout 120 $B/minicpmv bench --model $M --device cuda --peak-gbs auto --only decode512,prefill3000 --reps 3 \
      > "$OUT/bench_base.log" 2>&1
    echo "bench rc=$?" >> "$OUT/summary.txt"
    grep -E "^decode|^prefill" "$OUT/bench_base.log" | cut -c1-250 >> "$OUT/summary.txt" ;;
  prof)
    for r in ${ROWS:-16 64}; do
      stamp "ncu batched step of $r rows"
      timeout 240 ncu --profile-from-start off --graph-profiling node \
        --metrics gpu__time_duration.sum,dram__bytes_read.sum,launch__grid_size --csv --cache-control none \
        --clock-control none $B/minicpmv bench --model $M --device cuda --quiet --parallel $r --ctx 1024 \
        --concurrency $r --conc-new 64 --reps 1 --prof-step $r:40 > "$OUT/ncu_b$r.csv" 2> "$OUT/ncu_b$r.err"
      echo "ncu rc=$?" >> "$OUT/summary.txt"
      python3 tools/prof_step.py "$OUT/ncu_b$r.csv" > "$OUT/prof_b$r.txt" 2>&1
      head -30 "$OUT/prof_b$r.txt" >> "$OUT/summary.txt"
      xz -9f "$OUT/ncu_b$r.csv"
    done ;;
  ttft)
    stamp "bench vision10,ttft"
    timeout 120 $B/minicpmv bench --model $M --device cuda --only vision10,ttft --reps 5 > "$OUT/bench_ttft.log" 2>&1
    echo "bench rc=$?" >> "$OUT/summary.txt"
    grep -E "^vision|^ttft" "$OUT/bench_ttft.log" | cut -c1-400 >> "$OUT/summary.txt" ;;
  attn)
    stamp "test_cuda_ops bench attention"
    timeout 200 $B/tests/test_cuda_ops bench attention > "$OUT/ops_bench_attention.log" 2>&1
    echo "ops bench attention rc=$?" >> "$OUT/summary.txt"
    grep -E "B=|sweep best" "$OUT/ops_bench_attention.log" | grep -v "tc sweep B=" >> "$OUT/summary.txt" ;;
  esac
done
stamp done
