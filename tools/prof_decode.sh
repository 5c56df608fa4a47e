#!/usr/bin/env bash
# tools/prof_decode.sh: where a decode step's time goes, on the GPU machine (device tool; carry
# .devpack and .cache/tokenizer-llama3; binaries from tools/devpack.sh). Writes to $OUT:
#   bench.txt         fp16 decode at context 512 with the read bandwidth measured in the same run
#   ncu_all_F.csv.xz  every kernel of a 512-token prompt + 3 greedy tokens (F = fp16, q4): ncu's
#                     duration and DRAM bytes read, kernels inside the decode graph as nodes, caches
#                     and clocks left alone; tools/prof_step.py prints one decode step from it
#   ncu_gemv_F.txt    ncu's full sections (warp stalls, memory) of two decode GEMVs per format
# Stages can be picked: tools/prof_decode.sh bench all detail (default: all three).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
[ -x build-dev/minicpmv ] || tar xJf .devpack/dev.tar.xz
export LD_LIBRARY_PATH=$PWD/build-dev/lib:${LD_LIBRARY_PATH:-}
export MINICPMV_TOKENIZER=$PWD/.cache/tokenizer-llama3/tokenizer.json
B=build-dev/minicpmv M=/tmp/full
[ -f $M/config.json ] || $B mkmodel --out $M --size full --seed 1 >/dev/null
GEN="generate --model $M --device cuda --ids $(seq -s, 1000 1511) --max-new-tokens 3 --greedy"
for st in ${*:-bench all detail}; do
  echo "=== $st $(date +%T)"
  case $st in
  bench)
    $B bench --model $M --device cuda --peak-gbs auto --only decode512 --reps 3 2>&1 | tee "$OUT/bench.txt" | tail -8 ;;
  all)
    for q in fp16 q4; do
      qa=""; [ $q = fp16 ] || qa="--quant $q"
      timeout 270 ncu --graph-profiling node --metrics gpu__time_duration.sum,dram__bytes_read.sum,launch__grid_size \
        --csv --cache-control none --clock-control none $B $GEN $qa > "$OUT/ncu_all_$q.csv" 2>/dev/null
      xz -9f "$OUT/ncu_all_$q.csv"
      python3 tools/prof_step.py "$OUT/ncu_all_$q.csv.xz"
    done ;;
  detail)
    for q in fp16 q4; do
      qa=""; k=regex:gemv_vec; [ $q = fp16 ] || { qa="--quant $q"; k=regex:qmma; }
      timeout 150 ncu --graph-profiling node --set full --cache-control none --clock-control none -k $k \
        --launch-skip 200 --launch-count 2 $B $GEN $qa > "$OUT/ncu_gemv_$q.txt" 2>&1
      grep -E "Duration|DRAM Throughput|Warp Cycles Per Issued" "$OUT/ncu_gemv_$q.txt" | head -8
    done ;;
  esac
done
