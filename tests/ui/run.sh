#!/usr/bin/env bash
# run.sh: the chat page of `minicpmv serve` (src/ui/index.html). With curl: --no-ui answers 404 at / and
# /index.html. Then tests/ui/ui.test.mjs drives the page in Debian's headless chromium through
# puppeteer-core (tests/server/setup.sh installs it; .ci/setup.sh installs chromium), against the tiny
# model: the API key, the 503 while loading, an image and a streamed answer equal to the API's, a
# follow-up, timings, the 413 and 400 errors; screenshots in build/ui/ (CI keeps screenshot.png).
# Skipped with a note when chromium or puppeteer-core is missing.
# Usage: tests/ui/run.sh [BIN] [MODEL_DIR] [OUTDIR]. Prints "ui: N passed, M failed, K skipped".
set -u
cd "$(dirname "$0")/../.."
BIN=${1:-build/minicpmv}; MODEL=${2:-build/test-models/tiny-s1}; OUT=${3:-build/ui}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}; PUP=$PWD/.cache/server-js/node_modules/puppeteer-core
pass=0; fail=0; skip=0
ok() { pass=$((pass+1)); }
bad() { fail=$((fail+1)); echo "FAIL $*" >&2; }
tmp=$(mktemp -d); SPID=; trap '[ -n "$SPID" ] && kill $SPID 2>/dev/null; rm -rf "$tmp"' EXIT

# --no-ui: no page (the routes answer while the model loads: a long load delay, then the server is killed)
MINICPMV_TEST_LOAD_DELAY=60 "$BIN" serve --model "$MODEL" --port 0 --quiet --no-ui >"$tmp/out" 2>"$tmp/err" & SPID=$!
for i in $(seq 300); do grep -q 'bound to' "$tmp/err" 2>/dev/null && break; sleep 0.1; done
PORT=$(sed -n 's/.*bound to http:\/\/127\.0\.0\.1:\([0-9]*\);.*/\1/p' "$tmp/err")
if [ -z "$PORT" ]; then bad "--no-ui: the server did not start: $(cat "$tmp/err")"; else
  U=http://127.0.0.1:$PORT
  for p in / /index.html; do
    st=$(curl -s -o "$tmp/body" -w '%{http_code}' $U$p)
    [ "$st" = 404 ] && grep -q '"code":"not_found"' "$tmp/body" && ok || bad "--no-ui: GET $p answered $st $(head -c 200 "$tmp/body")"
  done
  [ "$(curl -s -o /dev/null -w '%{http_code}' $U/health)" = 503 ] && ok || bad "--no-ui: /health (loading)"
fi
kill -KILL $SPID 2>/dev/null; wait $SPID 2>/dev/null; SPID=

# the page in a browser
if [ ! -x "$CHROMIUM" ]; then
  echo "SKIP ui.test.mjs: no chromium at $CHROMIUM (apt-get install chromium, as .ci/setup.sh does)" >&2; skip=$((skip+1))
elif [ ! -f "$PUP/package.json" ]; then
  echo "SKIP ui.test.mjs: puppeteer-core is not installed (bash tests/server/setup.sh)" >&2; skip=$((skip+1))
else
  rm -f "$OUT/screenshot.png" "$OUT/phone.png"
  out=$(CHROMIUM=$CHROMIUM PUPPETEER_MODULE=$PUP timeout 120 node tests/ui/ui.test.mjs "$BIN" "$MODEL" "$OUT" 2>&1)
  echo "$out" | grep -v '^ui.test.mjs: [0-9]* passed' >&2
  line=$(echo "$out" | grep -E '^ui.test.mjs: [0-9]+ passed, [0-9]+ failed')
  if [ -z "$line" ]; then bad "ui.test.mjs did not finish"; else
    pass=$((pass + $(echo "$line" | sed -E 's/.*: ([0-9]+) passed.*/\1/')))
    fail=$((fail + $(echo "$line" | sed -E 's/.*, ([0-9]+) failed/\1/')))
  fi
  [ -s "$OUT/screenshot.png" ] && ok || bad "no screenshot at $OUT/screenshot.png"
fi
echo "ui: $pass passed, $fail failed, $skip skipped"
[ "$fail" = 0 ]
