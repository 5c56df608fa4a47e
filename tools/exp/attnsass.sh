# tools/exp/attnsass.sh: where the decode attention's warps wait (ncu --set full of one attn_tc_kernel launch in
# the engine's decode graph at 4,096 keys, warp-state samples per SASS instruction) -> $OUT/attn_sass.csv,
# $OUT/attn_details.txt
. tools/exp/common.sh
timeout 300 ncu --set full --warp-sampling-interval 0 -k regex:attn_tc --launch-skip 320 --launch-count 1 -o $OUT/attn $B bench --model $M --device cuda --only decode4096 --reps 1 > $OUT/ncu_run.txt 2>&1
ncu -i $OUT/attn.ncu-rep --page source --print-source sass --csv > $OUT/attn_sass.csv 2>&1
ncu -i $OUT/attn.ncu-rep --page details --print-details all > $OUT/attn_details.txt 2>&1
rm -f $OUT/attn.ncu-rep
