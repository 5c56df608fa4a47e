#!/usr/bin/env bash
# run.sh: deploy/ under test. Two `minicpmv serve` replicas on the tiny model behind Debian's nginx with
# the shipped deploy/minicpmv.conf (ports picked free, everything in a temp dir, no root needed), 300
# requests with the official openai npm client while one replica is SIGKILLed and restarted and the
# other drained by SIGTERM (tests/deploy/lb.mjs says what is checked); the systemd unit's command line
# run as systemd would run it, and the unit checked by `systemd-analyze verify` where systemd is installed.
# nginx missing: a skip with the reason, but a failure in CI (.ci/run sets MINICPMV_CI=1), where
# .ci/setup.sh installs it.
# MINICPMV_DEPLOY_TIMEOUT: seconds lb.mjs may take (default 300).
# Usage: tests/deploy/run.sh [BIN] [MODEL_DIR]. Prints "deploy: N passed, M failed, K skipped".
set -u
cd "$(dirname "$0")/../.."
BIN=${1:-build/minicpmv}; MODEL=${2:-build/test-models/tiny-s1}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
OPENAI=$PWD/.cache/server-js/node_modules/openai
pass=0; fail=0; skip=0
in_ci() { [ "${MINICPMV_CI:-}" = 1 ] || [ "${CI:-}" = true ]; }
missing() { # WHAT: a skip outside CI, a failure in CI
  if in_ci; then echo "FAIL deploy: $1 (CI must run this test: bash .ci/setup.sh test installs it)" >&2; fail=$((fail+1))
  else echo "SKIP deploy: $1" >&2; skip=$((skip+1)); fi
}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
[ "$(id -u)" = 0 ] && chmod 755 "$tmp" # nginx's workers (user root in the test's file) and the master share it

if [ ! -x "$NGINX" ]; then missing "no nginx (apt-get install nginx, as .ci/setup.sh does)"
elif [ ! -f "$OPENAI/package.json" ]; then missing "the openai npm package is not installed (bash tests/server/setup.sh)"
else
  out=$(OPENAI_MODULE=$OPENAI timeout "${MINICPMV_DEPLOY_TIMEOUT:-300}" node tests/deploy/lb.mjs "$PWD/$BIN" "$PWD/$MODEL" "$tmp" "$NGINX" 2>&1)
  echo "$out" | grep -v '^lb.mjs: [0-9]* passed' >&2
  line=$(echo "$out" | grep '^lb.mjs: [0-9]* passed')
  p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\1/'); f=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\2/')
  [ -n "$line" ] || { f=1; p=0; echo "lb.mjs crashed or timed out; nginx's error log:" >&2; tail -20 "$tmp/error.log" >&2 2>/dev/null; }
  pass=$((pass+p)); fail=$((fail+f))
fi

# the systemd unit's command line, run as systemd would: its Environment= values (the model and
# MINICPMV_ARGS the test's), ${X} one word, $X split on spaces, %i a free port; it must become ready and
# exit 0 on SIGTERM
unit_cmd=$(sed -n '/^ExecStart=/,/[^\\]$/p' deploy/minicpmv@.service | sed 's/^ExecStart=//; s/\\$//' | tr '\n' ' ')
uport=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
(
  while IFS= read -r kv; do export "${kv#Environment=}"; done < <(grep '^Environment=' deploy/minicpmv@.service)
  export MINICPMV_MODEL=$MODEL MINICPMV_ARGS="--ctx 512 --threads 1"
  cmd=$(echo "$unit_cmd" | sed -E "s#/usr/local/bin/minicpmv#$BIN#; s#%i#$uport#g; s#\\$\{([A-Z_]+)\}#\"\$\{\1\}\"#g")
  eval "exec $cmd" >"$tmp/unit.out" 2>"$tmp/unit.err"
) & UPID=$!
up=0
for i in $(seq 300); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:$uport/health)" = 200 ] && { up=1; break; }
  kill -0 $UPID 2>/dev/null || break
  sleep 0.1
done
kill -TERM $UPID 2>/dev/null; wait $UPID; urc=$?
if [ $up = 1 ] && [ $urc = 0 ]; then pass=$((pass+1))
else echo "FAIL deploy: the unit's ExecStart ($unit_cmd) ready $up, exit $urc: $(cat "$tmp/unit.err")" >&2; fail=$((fail+1)); fi

# the systemd unit: its syntax, with the binary where the unit expects it replaced by this build's
if command -v systemd-analyze >/dev/null; then
  sed "s#/usr/local/bin/minicpmv#$PWD/$BIN#" deploy/minicpmv@.service >"$tmp/minicpmv@8081.service"
  if msg=$(systemd-analyze verify "$tmp/minicpmv@8081.service" 2>&1) && [ -z "$msg" ]; then pass=$((pass+1))
  else echo "FAIL deploy: systemd-analyze verify minicpmv@.service: $msg" >&2; fail=$((fail+1)); fi
else
  echo "SKIP deploy: systemd-analyze is not installed (the unit's syntax is not checked)" >&2; skip=$((skip+1))
fi
echo "deploy: $pass passed, $fail failed, $skip skipped"
[ "$fail" = 0 ]
