#!/usr/bin/env bash
# tools/dev_qprof.sh: where a quantized decode step's time goes (device tool; carry .devpack and
# .cache/tokenizer-llama3; binaries from tools/devpack.sh). Logs to $OUT:
#   ncu_q4.csv.xz   every kernel of `generate --quant $Q` (512-token prompt + 3 greedy tokens; the engine's
#                   defaults, so the fused decode ops for quantized weights): tools/prof_step.py's one step
#                   goes to the summary
#   ncu_qa.txt      ncu's full sections (warp stalls, memory) of the first decode step's A-kernel GEMVs
#   bench_*.log     bench decode512 with --fuse auto/off and --overlap quant/off ($RUNS: fuse:overlap pairs)
set -uo pipefail
OUT=${OUT:-/tmp/dev_qprof}
. tools/dev_common.sh
Q=${Q:-q4}
[ -f $M/config.json ] || timeout 120 $B/minicpmv mkmodel --out $M --size full --seed 1 > "$OUT/mkmodel.log" 2>&1
GEN="generate --model $M --device cuda --ids $(seq -s, 1000 1511) --max-new-tokens 3 --greedy --quant $Q"
for run in ${RUNS:-auto:off off:off auto:quant off:quant}; do
  IFS=: read -r f ov <<< "$run"
  stamp "bench --quant $Q --fuse $f --overlap $ov"
  timeout 60 $B/minicpmv bench --model $M --device cuda --quant $Q --fuse $f --overlap $ov --peak-gbs auto \
    --only decode512 --reps 3 > "$OUT/bench_${f}_$ov.log" 2>&1
  echo "rc=$?" >> "$OUT/summary.txt"
  grep -E "^  decode512" "$OUT/bench_${f}_$ov.log" >> "$OUT/summary.txt"
done
if [ "${NCU:-1}" = 1 ]; then
  stamp "ncu metrics, generate --quant $Q"
  timeout 240 ncu --graph-profiling node --metrics gpu__time_duration.sum,dram__bytes_read.sum,launch__grid_size \
    --csv --cache-control none --clock-control none $B/minicpmv $GEN > "$OUT/ncu_$Q.csv" 2> "$OUT/ncu_$Q.err"
  echo "ncu rc=$?" >> "$OUT/summary.txt"
  python3 tools/prof_step.py "$OUT/ncu_$Q.csv" 2>&1 | head -24 >> "$OUT/summary.txt"
  xz -9f "$OUT/ncu_$Q.csv"
  stamp "ncu full sections of the A-kernel GEMVs"
  timeout 150 ncu --graph-profiling node --set full --cache-control none --clock-control none -k regex:qa_kernel \
    --launch-skip ${SKIP:-0} --launch-count 5 $B/minicpmv $GEN > "$OUT/ncu_qa.txt" 2>&1
  echo "ncu full rc=$?" >> "$OUT/summary.txt"
  grep -E "qa_kernel|Duration|DRAM Throughput|Memory Throughput|Warp Cycles Per Issued|Achieved Occupancy|Issue Slots Busy" \
    "$OUT/ncu_qa.txt" | cut -c1-150 | head -60 >> "$OUT/summary.txt"
fi
stamp done
