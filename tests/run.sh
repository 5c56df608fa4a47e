#!/usr/bin/env bash
# Runs every test binary given, adds up their "X: N passed, N failed[, N skipped]" lines, and closes
# with the totals "N passed, N failed, N skipped". Exit status is non-zero when any test failed, any
# binary crashed, or a binary ran no check and skipped none (a test that tests nothing is a defect).
# Skips are listed with their reasons (the "SKIP name: why" lines of the binary's log).
set -u
cd "$(dirname "$0")/.." || exit 2
pass=0; fail=0; skip=0; crashed=0
re='^[^ ]+: ([0-9]+) passed, ([0-9]+) failed(, ([0-9]+) skipped)?'
for t in "$@"; do
  out=$("$t" 2>"${t}.log"); rc=$?
  line=$(printf '%s\n' "$out" | grep -E "$re" | tail -n 1)
  if [ -z "$line" ]; then
    echo "CRASH $t (exit $rc); its log:"; tail -n 30 "${t}.log"; crashed=$((crashed+1)); fail=$((fail+1)); continue
  fi
  p=$(echo "$line" | sed -E "s/$re.*/\\1/")
  f=$(echo "$line" | sed -E "s/$re.*/\\2/")
  s=$(echo "$line" | sed -E "s/$re.*/\\4/"); s=${s:-0}
  pass=$((pass+p)); fail=$((fail+f)); skip=$((skip+s))
  echo "$line"
  [ "$s" = 0 ] || grep -E '^SKIP ' "${t}.log" | sed 's/^/  /'
  if [ "$p" = 0 ] && [ "$f" = 0 ] && [ "$s" = 0 ]; then
    echo "EMPTY $t: ran no check and skipped none"; fail=$((fail+1)); continue
  fi
  if [ "$f" != 0 ] || [ "$rc" != 0 ]; then grep -E 'FAIL|assertion|CHECK' "${t}.log" | head -n 40; [ "$f" != 0 ] || fail=$((fail+1)); fi
done
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" = 0 ]
