#!/usr/bin/env bash
# The interactive chat (minicpmv chat without -p) driven through a pipe: two turns, /reset, an image
# turn, a bad /image path, /exit. Checks the answers equal the one-shot CLI's (greedy), that each
# answer is followed by a timings line, and that errors do not end the session.
cd "$(dirname "$0")/.." || exit 2
BIN=${BUILD:-build}/minicpmv; MODEL=build/test-models/tiny-s1
IMG=tests/fixtures/image/gen200x150_q90_444.jpg
pass=0; fail=0
errf=$(mktemp); trap 'rm -f "$errf"' EXIT
check() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL $1" >&2; fi; }
out=$(printf 'Hello there\n/reset\n/image /nonexistent.png\n/image %s\nWhat\n/exit\n' "$IMG" |
      timeout 120 "$BIN" chat --model "$MODEL" --greedy --max-new-tokens 8 --quiet --ctx 1024 2>"$errf"); rc=$?
check "exit status 0" '[ $rc = 0 ]'
one=$("$BIN" chat --model "$MODEL" --greedy --max-new-tokens 8 --quiet --ctx 1024 -p "Hello there" 2>/dev/null)
img=$("$BIN" chat --model "$MODEL" --greedy --max-new-tokens 8 --quiet --ctx 1024 --image "$IMG" -p "What" 2>/dev/null)
check "first answer equals the one-shot answer" '[ -n "$one" ] && printf "%s" "$out" | grep -qF -- "$one"'
check "image answer equals the one-shot answer" '[ -n "$img" ] && printf "%s" "$out" | grep -qF -- "$img"'
check "a timings line per answer" '[ "$(grep -c "tok: decode" "$errf")" = 2 ]'
check "a bad image path is reported, the session goes on" 'grep -q "nonexistent" "$errf"'
echo "repl: $pass passed, $fail failed"
[ $fail = 0 ]
