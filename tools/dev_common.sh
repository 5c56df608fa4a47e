# tools/dev_common.sh: the set-up every GPU-machine script (tools/dev_*.sh) shares, sourced after it sets
# OUT: the log folder, the unpacked binaries' libraries (tools/devpack.sh) and the tokenizer, B (the
# binaries) and M (the full-size random model), stamp (a timed line to the summary), the card and the
# commit at the top of $OUT/summary.txt, and run_test NAME [PATTERN]: a test binary of $B/tests with its
# log in $OUT, its exit status and the lines matching PATTERN in the summary.
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/build-dev/lib:${LD_LIBRARY_PATH:-}
export MINICPMV_TOKENIZER=${MINICPMV_TOKENIZER:-$PWD/.cache/tokenizer-llama3/tokenizer.json}
B=build-dev
M=/tmp/full
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$OUT/summary.txt"; }
run_test() {
  stamp "$1"
  timeout 150 $B/tests/$1 > "$OUT/$1.log" 2>&1
  echo "$1 rc=$?" >> "$OUT/summary.txt"
  grep -E "${2:-FAIL|passed|failed|assert}" "$OUT/$1.log" | tail -8 >> "$OUT/summary.txt"
}

# the full-size random model at $M: full_model_start writes it in the background unless it is there (the
# tests meanwhile use the cores too), full_model_wait before its first use
mk=
full_model_start() {
  [ -f $M/config.json ] && return 0
  ( timeout 120 $B/minicpmv mkmodel --out $M --size full --seed 1 > "$OUT/mkmodel.log" 2>&1; echo "rc=$?" >> "$OUT/mkmodel.log" ) &
  mk=$!
}
full_model_wait() { [ -n "$mk" ] && wait $mk; mk=; }

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1
cat build-dev/COMMIT > "$OUT/commit.txt" 2>/dev/null || echo "(no build-dev/COMMIT: packed before tools/devpack.sh wrote it)" > "$OUT/commit.txt"
cat "$OUT/gpu.txt" "$OUT/commit.txt" >> "$OUT/summary.txt"
