#!/usr/bin/env bash
# tools/prof_decode.sh: where a decode step's time goes, on the GPU machine (device tool; carry
# .devpack and .cache/tokenizer-llama3; binaries from tools/devpack.sh). Writes to $OUT:
#   bench.txt        fp16 decode at context 512 with the read bandwidth measured in the same run
#   nsys_*.csv       per-kernel time of a 512-token prompt + 64 greedy tokens (fp16, q4), and of the
#                    16-stream batched step (bench --concurrency 16), kernels inside graphs as nodes
#   ncu_*.txt        ncu's full sections (warp stalls, memory) of the fp16 GEMV and the q4 GEMV
# Stages can be picked: tools/prof_decode.sh bench nsys ncu (default: all).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
[ -x build-dev/minicpmv ] || tar xJf .devpack/dev.tar.xz
export LD_LIBRARY_PATH=$PWD/build-dev/lib:${LD_LIBRARY_PATH:-}
export MINICPMV_TOKENIZER=$PWD/.cache/tokenizer-llama3/tokenizer.json
B=build-dev/minicpmv M=/tmp/full
[ -f $M/config.json ] || $B mkmodel --out $M --size full --seed 1 >/dev/null
IDS=$(seq -s, 1000 1511)
GEN="generate --model $M --device cuda --ids $IDS --max-new-tokens 64 --greedy"
NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems*/bin/nsys 2>/dev/null | head -1)
stages=${*:-bench nsys ncu}
for st in $stages; do
  echo "=== $st $(date +%T)"
  case $st in
  bench)
    $B bench --model $M --device cuda --peak-gbs auto --only decode512 --reps 3 2>&1 | tee "$OUT/bench.txt" | tail -8 ;;
  nsys)
    if [ -z "$NSYS" ]; then echo "no nsys"; continue; fi
    for q in fp16 q4; do
      qa=""; [ $q = fp16 ] || qa="--quant $q"
      timeout 150 $NSYS profile -o /tmp/p_$q -f true -t cuda --cuda-graph-trace=node $B $GEN $qa > /tmp/p_$q.log 2>&1
      $NSYS stats -q -f csv -r cuda_gpu_kern_sum /tmp/p_$q.nsys-rep > "$OUT/nsys_sum_$q.csv" 2>/dev/null
      $NSYS stats -q -f csv -r cuda_gpu_trace /tmp/p_$q.nsys-rep 2>/dev/null | tail -n 1500 | xz -9 > "$OUT/nsys_trace_$q.csv.xz"
      head -25 "$OUT/nsys_sum_$q.csv"
    done
    timeout 150 $NSYS profile -o /tmp/p_b16 -f true -t cuda --cuda-graph-trace=node $B bench --model $M --device cuda \
      --parallel 16 --ctx 1024 --concurrency 16 --reps 1 > /tmp/p_b16.log 2>&1
    tail -5 /tmp/p_b16.log
    $NSYS stats -q -f csv -r cuda_gpu_kern_sum /tmp/p_b16.nsys-rep > "$OUT/nsys_sum_b16.csv" 2>/dev/null
    head -25 "$OUT/nsys_sum_b16.csv" ;;
  ncu)
    G8="generate --model $M --device cuda --ids $IDS --max-new-tokens 3 --greedy"
    timeout 150 ncu --set full --cache-control none --clock-control none -k regex:gemv_vec --launch-skip 400 --launch-count 2 \
      $B $G8 > "$OUT/ncu_gemv_fp16.txt" 2>&1; tail -3 "$OUT/ncu_gemv_fp16.txt"
    timeout 150 ncu --set full --cache-control none --clock-control none -k regex:qmma --launch-skip 200 --launch-count 2 \
      $B $G8 --quant q4 > "$OUT/ncu_qmma_q4.txt" 2>&1; tail -3 "$OUT/ncu_qmma_q4.txt" ;;
  esac
done
