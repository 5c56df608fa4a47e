#!/usr/bin/env bash
# Runs every test binary given, adds up their "X: N passed, N failed" lines, and closes with
# the totals. Exit status is non-zero when any test failed or any binary crashed.
set -u
cd "$(dirname "$0")/.." || exit 2
pass=0; fail=0; crashed=0
for t in "$@"; do
  out=$("$t" 2>"${t}.log"); rc=$?
  line=$(printf '%s\n' "$out" | grep -E '^[^ ]+: [0-9]+ passed, [0-9]+ failed' | tail -n 1)
  if [ -z "$line" ]; then
    echo "CRASH $t (exit $rc); its log:"; tail -n 30 "${t}.log"; crashed=$((crashed+1)); fail=$((fail+1)); continue
  fi
  p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed.*/\1/')
  f=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed.*/\2/')
  pass=$((pass+p)); fail=$((fail+f))
  echo "$line"
  if [ "$f" != 0 ] || [ "$rc" != 0 ]; then grep -E 'FAIL|assertion|CHECK' "${t}.log" | head -n 40; [ "$f" != 0 ] || fail=$((fail+1)); fi
done
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
