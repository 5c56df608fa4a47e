# tools/exp/qncu17.sh: session 17. ncu's full sections of the Q4 GEMV probe's mode 6 (loads, dequantization and
# mmas without the kernel's reduction and ring; tools/exp/qprobe.cu) against the kernel itself (qa_kernel in a
# q4 decode step) on the same card. To $OUT.
. tools/exp/common.sh
timeout 120 ncu --set full -k regex:probe --launch-skip 1150 --launch-count 1 .devpack/qprobe > $OUT/probe6.txt 2>&1
GEN="generate --model $M --device cuda --ids $(seq -s, 1000 1511) --max-new-tokens 3 --greedy --quant q4"
timeout 200 ncu --graph-profiling node --set full --cache-control none --clock-control none -k regex:qa_kernel \
  --launch-skip 200 --launch-count 4 $B $GEN > $OUT/qa.txt 2>&1
for f in probe6 qa; do
  echo "== $f" >> $OUT/final.txt
  grep -E "qa_kernel|probe<|Duration|DRAM Throughput|Registers Per|Achieved Occupancy|Theoretical Occupancy|Issue Slots Busy|Warp Cycles Per Issued|Executed Ipc A|Block Limit|Stall|L1/TEX Hit|L2 Hit|Mem Busy|Max Bandwidth|Executed Instructions  " $OUT/$f.txt | cut -c1-150 >> $OUT/final.txt
done
