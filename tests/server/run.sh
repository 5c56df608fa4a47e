#!/usr/bin/env bash
# run.sh: starts `minicpmv serve` on the tiny model (a free loopback port) and drives it with curl and the
# official `openai` npm client (tests/server/setup.sh installs it; skipped with a note when absent).
# Then checks that SIGTERM lets an in-flight request finish and the server exits 0; api.mjs (issue 17's
# API shapes) runs against a one-at-a-time server and a --parallel 8 one; load.mjs (issue 14's load test)
# against a --parallel 64 one.
# Usage: tests/server/run.sh [BIN] [MODEL_DIR]. Prints "server-clients: N passed, M failed, K skipped".
set -u
cd "$(dirname "$0")/../.."
BIN=${1:-build/minicpmv}; MODEL=${2:-build/test-models/tiny-s1}
IMG=tests/fixtures/image/gen200x150_q90_444.jpg
pass=0; fail=0; skip=0
ok() { pass=$((pass+1)); }
bad() { fail=$((fail+1)); echo "FAIL $*" >&2; }
tmp=$(mktemp -d); trap 'kill $SPID 2>/dev/null; rm -rf "$tmp"' EXIT
"$BIN" serve --model "$MODEL" --port 0 --quiet --ctx 1024 --drain-timeout 0 >"$tmp/out" 2>"$tmp/err" & SPID=$!
for i in $(seq 100); do grep -q listening "$tmp/out" 2>/dev/null && break; sleep 0.1; done
PORT=$(sed -n 's/.*127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/out")
[ -n "$PORT" ] || { echo "server did not start:"; cat "$tmp/err"; echo "server-clients: 0 passed, 1 failed"; exit 1; }
# temperature 0 in the API is argmax with the model's other defaults (repetition penalty 1.05); the CLI's
# --greedy drops the penalty unless given, so the expectations name it.
U=http://127.0.0.1:$PORT
exp=$("$BIN" chat --model "$MODEL" --ctx 1024 -p "Hello there" --greedy --repetition-penalty 1.05 --max-new-tokens 16 --quiet)
expimg=$("$BIN" chat --model "$MODEL" --ctx 1024 --image $IMG -p "What" --greedy --repetition-penalty 1.05 --max-new-tokens 8 --quiet)
jq_content() { node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>process.stdout.write(JSON.parse(s).choices[0].message.content))'; }
sse_concat() { node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{let t="";for(const l of s.split("\n")){if(!l.startsWith("data: ")||l==="data: [DONE]")continue;const c=JSON.parse(l.slice(6)).choices[0];if(c&&c.delta&&c.delta.content)t+=c.delta.content}process.stdout.write(t+(s.trimEnd().endsWith("data: [DONE]")?"":"<no DONE>"))})'; }

# curl: plain, streamed, image, errors
got=$(curl -s $U/v1/chat/completions -H 'Content-Type: application/json' \
  -d '{"model":"m","messages":[{"role":"user","content":"Hello there"}],"temperature":0,"max_tokens":16}' | jq_content)
[ "$got" = "$exp" ] && ok || bad "curl plain: '$got' != '$exp'"
got=$(curl -sN $U/v1/chat/completions -H 'Content-Type: application/json' -d '{"messages":[{"role":"user","content":"Hello there"}],"temperature":0,"max_tokens":16,"stream":true}' | sse_concat)
[ "$got" = "$exp" ] && ok || bad "curl stream: '$got'"
printf '{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/jpeg;base64,%s"}},{"type":"text","text":"What"}]}],"temperature":0,"max_tokens":8}' \
  "$(base64 -w0 $IMG)" >"$tmp/img.json"
got=$(curl -s $U/v1/chat/completions -H 'Content-Type: application/json' -d @"$tmp/img.json" | jq_content)
[ "$got" = "$expimg" ] && ok || bad "curl image: '$got' != '$expimg'"
code() { curl -s -o "$tmp/body" -w '%{http_code}' -H 'Content-Type: application/json' "$@"; }
[ "$(code $U/v1/chat/completions -d '{"messages":')" = 400 ] && grep -q '"error"' "$tmp/body" && ok || bad "curl malformed"
[ "$(code $U/v1/chat/completions -d '{"messages":[{"role":"x","content":"a"}]}')" = 400 ] && ok || bad "curl role"
head -c 40000000 /dev/zero | tr '\0' a >"$tmp/big"
[ "$(code $U/v1/chat/completions --data-binary @"$tmp/big")" = 413 ] && ok || bad "curl too large"
[ "$(code $U/health)" = 200 ] && ok || bad "curl health"
# curl -d without -H sends a form content type, as a web page's cross-origin POST would: refused
[ "$(curl -s -o /dev/null -w '%{http_code}' $U/v1/chat/completions -d '{"messages":[{"role":"user","content":"a"}]}')" = 415 ] \
  && ok || bad "curl form content type not refused"

# the official openai npm client
if [ -f .cache/server-js/node_modules/openai/package.json ]; then
  out=$(OPENAI_MODULE=$PWD/.cache/server-js/node_modules/openai node tests/server/client.mjs "$U" $IMG "$exp" "$expimg" 2>&1)
  echo "$out" | grep -v '^client.mjs:' >&2
  line=$(echo "$out" | grep '^client.mjs:')
  p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\1/'); f=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\2/')
  [ -n "$line" ] || { f=1; p=0; echo "client.mjs crashed: $out" >&2; }
  pass=$((pass+p)); fail=$((fail+f))
else
  echo "SKIP client.mjs: the openai npm package is not installed (bash tests/server/setup.sh)" >&2; skip=$((skip+1))
fi

# SIGTERM while a request is in flight: it is answered, then the server exits 0
curl -s -o "$tmp/last" -w '%{http_code}' $U/v1/chat/completions -H 'Content-Type: application/json' \
  -d '{"messages":[{"role":"user","content":"Hello there"}],"temperature":0,"max_tokens":200}' >"$tmp/last_code" & CP=$!
for i in $(seq 600); do curl -s $U/health | grep -q '"running":1' && break; sleep 0.05; done
kill -TERM $SPID; wait $SPID; src=$?; wait $CP
[ "$src" = 0 ] && [ "$(cat "$tmp/last_code")" = 200 ] && grep -q '"completion_tokens":' "$tmp/last" && ok \
  || bad "SIGTERM: server exit $src, in-flight request $(cat "$tmp/last_code")"
# the closing summary is read after the drain: the in-flight request counts as ok
grep -q 'requests: [0-9]* ok' "$tmp/err" && [ "$(sed -n 's/.*requests: \([0-9]*\) ok.*/\1/p' "$tmp/err")" -ge 1 ] \
  && grep -q ' 0 failed' "$tmp/err" && ok || bad "SIGTERM summary: $(grep 'requests:' "$tmp/err")"

# the API key from the environment (kept off the command line); a second SIGTERM exits at once
MINICPMV_API_KEY=test-key-123 "$BIN" serve --model "$MODEL" --port 0 --quiet --ctx 1024 --drain-timeout 600 >"$tmp/out2" 2>"$tmp/err2" & SPID=$!
for i in $(seq 600); do grep -q listening "$tmp/out2" 2>/dev/null && break; sleep 0.1; done
U=http://127.0.0.1:$(sed -n 's/.*127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/out2")
[ "$(code $U/v1/models)" = 401 ] && grep -q invalid_api_key "$tmp/body" && ok || bad "api key: no 401"
[ "$(code -H 'Authorization: Bearer test-key-123' $U/v1/models)" = 200 ] && ok || bad "api key: right key refused"
[ "$(code $U/health)" = 200 ] && ok || bad "api key: /health not open"
curl -s -o /dev/null -H 'Content-Type: application/json' -H 'Authorization: Bearer test-key-123' $U/v1/chat/completions \
  -d '{"messages":[{"role":"user","content":"Hello there"}],"max_tokens":900}' & CP=$!
for i in $(seq 600); do curl -s $U/health | grep -q '"running":1' && break; sleep 0.05; done
# the second signal once the first was taken (two signals pending at once are one signal)
kill -TERM $SPID
for i in $(seq 600); do grep -q 'finishing queued' "$tmp/err2" && break; sleep 0.05; done
t0=$(date +%s.%N); kill -TERM $SPID; wait $SPID; src=$?; wait $CP
t1=$(date +%s.%N)
[ "$src" = 130 ] && grep -q 'second SIGTERM' "$tmp/err2" && awk "BEGIN{exit !($t1 - $t0 < 5)}" && ok \
  || bad "second SIGTERM: exit $src after $(awk "BEGIN{print $t1 - $t0}") s"

# the port is bound before the model loads: /health answers 503 "loading" (the test-only delay makes the
# load long enough to see), /v1/... 503 with Retry-After, and a second server on the same port fails at
# once, naming the address, without loading (its own 30 s delay would show if it loaded first)
MINICPMV_TEST_LOAD_DELAY=4 "$BIN" serve --model "$MODEL" --port 0 --quiet --ctx 1024 >"$tmp/out3" 2>"$tmp/err3" & SPID=$!
for i in $(seq 100); do grep -q 'bound to' "$tmp/err3" && break; sleep 0.1; done
P3=$(sed -n 's/.*bound to http:\/\/127\.0\.0\.1:\([0-9]*\);.*/\1/p' "$tmp/err3")
U=http://127.0.0.1:$P3
if [ -z "$P3" ]; then bad "bind first: no 'bound to' line on stderr: $(cat "$tmp/err3")"; else
  [ "$(code $U/health)" = 503 ] && grep -q '"status":"loading"' "$tmp/body" && ! grep -q listening "$tmp/out3" && ok \
    || bad "loading: /health did not say loading before the model was loaded: $(cat "$tmp/body")"
  st=$(code -D "$tmp/hdr" $U/v1/chat/completions -d '{"messages":[{"role":"user","content":"a"}]}')
  [ "$st" = 503 ] && grep -qi '^retry-after: ' "$tmp/hdr" && grep -q '"message":"the model is still loading' "$tmp/body" \
    && grep -q '"type":"server_error"' "$tmp/body" && ok || bad "loading: chat answered $st $(cat "$tmp/body")"
  [ "$(code $U/v1/models)" = 503 ] && grep -q '"code":"model_loading"' "$tmp/body" && ok || bad "loading: /v1/models $(cat "$tmp/body")"
  t0=$(date +%s.%N)
  MINICPMV_TEST_LOAD_DELAY=30 timeout 25 "$BIN" serve --model "$MODEL" --port "$P3" --quiet >"$tmp/out4" 2>"$tmp/err4"; src=$?
  t1=$(date +%s.%N)
  [ "$src" = 1 ] && grep -q "cannot listen on 127\.0\.0\.1:$P3" "$tmp/err4" && ! grep -q 'bound to' "$tmp/err4" \
    && awk "BEGIN{exit !($t1 - $t0 < 10)}" && ok \
    || bad "port clash: exit $src after $(awk "BEGIN{print $t1 - $t0}") s: $(cat "$tmp/err4")"
  for i in $(seq 600); do grep -q listening "$tmp/out3" && break; sleep 0.1; done
  [ "$(code $U/health)" = 200 ] && grep -q '"status":"ok"' "$tmp/body" && grep -q "listening on $U\$" "$tmp/out3" && ok \
    || bad "after loading: /health $(cat "$tmp/body"), stdout $(cat "$tmp/out3")"
fi
kill -TERM $SPID; wait $SPID

# --host takes names and IPv6; the "listening on" line names the bound address (IPv6 in brackets)
host_health() { # HOST URL-HOST: starts serve on HOST, checks the listening line and /health over curl
  "$BIN" serve --model "$MODEL" --host "$1" --port 0 --quiet --ctx 1024 >"$tmp/out5" 2>"$tmp/err5" & SPID=$!
  for i in $(seq 600); do grep -q listening "$tmp/out5" && break; sleep 0.1; done
  local url; url=$(sed -n 's/^listening on \(http:\/\/.*:[0-9]*\)$/\1/p' "$tmp/out5")
  if echo "$url" | grep -q "^http://$2:[0-9][0-9]*\$"; then
    [ "$(code -g "$url/health")" = 200 ] && ok || bad "--host $1: /health at $url: $(cat "$tmp/body")"
  else bad "--host $1: listening line '$(cat "$tmp/out5")', expected http://$2:PORT; $(cat "$tmp/err5")"; fi
  kill -TERM $SPID; wait $SPID
}
if grep -q '^00000000000000000000000000000001 .* lo$' /proc/net/if_inet6 2>/dev/null; then host_health ::1 '\[::1\]'
else echo "SKIP --host ::1: this machine has no IPv6 loopback (/proc/net/if_inet6)" >&2; skip=$((skip+1)); fi
host_health localhost '\(127\.0\.0\.1\|\[::1\]\)'
"$BIN" serve --model "$MODEL" --host no.such.host.invalid --port 0 --quiet >"$tmp/out6" 2>"$tmp/err6"; src=$?
[ "$src" = 1 ] && grep -q "'no\.such\.host\.invalid': cannot resolve" "$tmp/err6" && ! grep -q 'bound to' "$tmp/err6" && ok \
  || bad "--host no.such.host.invalid: exit $src: $(cat "$tmp/err6")"

# --parallel: many requests in flight, their decode steps batched; each answer equals the same request's
# answer from a server that runs one request at a time. Then SIGTERM with requests in flight drains them.
if [ -f .cache/server-js/node_modules/openai/package.json ]; then
  # --threads 1: on a shared machine OpenMP threads spinning at barriers made 8 x 120 tokens take over the
  # 60 s drain (seen at a load average of 15-19: 0 of 8 answered before the drain timeout; 18 s with it)
  "$BIN" serve --model "$MODEL" --port 0 --quiet --ctx 512 --threads 1 >"$tmp/outA" 2>"$tmp/errA" & APID=$!
  "$BIN" serve --model "$MODEL" --port 0 --quiet --ctx 512 --threads 1 --parallel 8 --queue 64 >"$tmp/outB" 2>"$tmp/errB" & BPID=$!
  for i in $(seq 600); do grep -q listening "$tmp/outA" && grep -q listening "$tmp/outB" && break; sleep 0.1; done
  UA=http://127.0.0.1:$(sed -n 's/.*127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/outA")
  UB=http://127.0.0.1:$(sed -n 's/.*127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/outB")
  out=$(OPENAI_MODULE=$PWD/.cache/server-js/node_modules/openai node tests/server/concurrent.mjs "$UA" "$UB" \
        "${MINICPMV_CONC_N:-32}" "${MINICPMV_CONC_C:-16}" 2>&1)
  echo "$out" | grep -v '^concurrent.mjs: [0-9]* passed' >&2
  line=$(echo "$out" | grep '^concurrent.mjs: [0-9]* passed')
  p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\1/'); f=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\2/')
  [ -n "$line" ] || { f=1; p=0; echo "concurrent.mjs crashed: $out" >&2; }
  pass=$((pass+p)); fail=$((fail+f))
  grep -q '"running":0' <(curl -s $UB/health) && ok || bad "--parallel: /health after the load: $(curl -s $UB/health)"
  # issue 17's API shapes (response_format, logprobs, refusals, /metrics) on both: one at a time and --parallel 8
  for UX in "$UA" "$UB"; do
    out=$(OPENAI_MODULE=$PWD/.cache/server-js/node_modules/openai node tests/server/api.mjs "$UX" 2>&1)
    echo "$out" | grep -v '^api.mjs: [0-9]* passed' >&2
    line=$(echo "$out" | grep '^api.mjs: [0-9]* passed')
    p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\1/'); f=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\2/')
    [ -n "$line" ] || { f=1; p=0; echo "api.mjs crashed: $out" >&2; }
    pass=$((pass+p)); fail=$((fail+f))
  done
  # SIGTERM with 8 requests in flight: all answered 200, exit 0
  CPIDS=""
  for k in 1 2 3 4 5 6 7 8; do
    curl -s -o "$tmp/d$k" -w '%{http_code}' $UB/v1/chat/completions -H 'Content-Type: application/json' \
      -d '{"messages":[{"role":"user","content":"Hello there"}],"temperature":0,"max_tokens":120}' >"$tmp/dc$k" &
    CPIDS="$CPIDS $!"
  done
  # all 8 received (queued or running) before the signal: a request still connecting when the listener
  # closes is refused, which is not what this checks (it flaked 6 of 8 at a load average of ~2 on 2 cores)
  for i in $(seq 600); do
    h=$(curl -s $UB/health)
    q=$(echo "$h" | sed -n 's/.*"queued":\([0-9]*\).*/\1/p'); r=$(echo "$h" | sed -n 's/.*"running":\([0-9]*\).*/\1/p')
    [ $(( ${q:-0} + ${r:-0} )) -ge 8 ] && break; sleep 0.05
  done
  # wait for the curls only: a bare `wait` would also wait for server A, which is still running (a hang)
  kill -TERM $BPID; wait $BPID; src=$?; wait $CPIDS
  n200=$(cat "$tmp"/dc? | grep -o 200 | wc -l)
  [ "$src" = 0 ] && [ "$n200" = 8 ] && ok || bad "--parallel SIGTERM: exit $src, $n200 of 8 answered 200"
  kill -TERM $APID; wait $APID

  # issue 14's load test (load.mjs): 512 requests at concurrency 64 against --parallel 64, each equal to
  # its solo answer bit for bit (the CPU computes every row the same way whatever the batch, and a prompt
  # whose start is cached the same way as a cold one: docs/ARCHITECTURE.md; prefix reuse is on and must
  # hit), RSS flat over the last 400, then SIGTERM with requests in flight: they complete, new connections
  # are refused, and the server exits 0. Under ASan the RSS bound is not checked (its allocator
  # quarantines freed memory by design: +22 MiB seen); the plain build checks it. One CPU thread: the tiny
  # model's steps are small, and OpenMP threads spinning at barriers cost more than they compute on a
  # shared machine.
  case "$BIN" in *asan*) export LOAD_RSS_CHECK=0 ;; *) export LOAD_RSS_CHECK=1 ;; esac
  "$BIN" serve --model "$MODEL" --port 0 --quiet --ctx 256 --threads 1 --parallel 64 --queue 64 --drain-timeout 60 \
    >"$tmp/outL" 2>"$tmp/errL" & LPID=$!
  for i in $(seq 600); do grep -q listening "$tmp/outL" && break; sleep 0.1; done
  UL=http://127.0.0.1:$(sed -n 's/.*127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/outL")
  out=$(OPENAI_MODULE=$PWD/.cache/server-js/node_modules/openai node tests/server/load.mjs "$UL" $LPID \
        "${MINICPMV_JSLOAD_N:-512}" "${MINICPMV_JSLOAD_C:-64}" "${MINICPMV_JSLOAD_P:-32}" 2>&1)
  echo "$out" | grep -v '^load.mjs: [0-9]* passed' >&2
  line=$(echo "$out" | grep '^load.mjs: [0-9]* passed')
  p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\1/'); f=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\2/')
  [ -n "$line" ] || { f=1; p=0; echo "load.mjs crashed: $out" >&2; kill -TERM $LPID 2>/dev/null; }
  pass=$((pass+p)); fail=$((fail+f))
  wait $LPID; src=$?
  [ "$src" = 0 ] && grep -q ' 0 failed' "$tmp/errL" && ok || bad "load: server exit $src after SIGTERM: $(tail -2 "$tmp/errL")"
else
  echo "SKIP --parallel: the openai npm package is not installed (bash tests/server/setup.sh)" >&2; skip=$((skip+1))
fi
echo "server-clients: $pass passed, $fail failed, $skip skipped"
[ "$fail" = 0 ]
