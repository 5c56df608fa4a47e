#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, -fsanitize=fuzzer,address,undefined) and runs each for N seconds
# (default 30), seeded from committed inputs; `make fuzz FUZZ_SECONDS=N` calls it. Targets:
#   request      server_request_parse (tests/fuzz/fuzz_request.c)
#   http         raw bytes to a live server on loopback (tests/fuzz/fuzz_http.c)
#   safetensors  the safetensors header parser (tests/fuzz/fuzz_safetensors.c)
#   image        the image decoders and preprocessing (tests/fuzz_image.c)
# Usage: tools/fuzz.sh [seconds] [target...]. Exit status non-zero when a target finds a crash; the
# reproducer lands in build/fuzz/<target>/ (crash-*, leak-*, timeout-*).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}; shift || true
targets=${*:-request http safetensors image}
out=build/fuzz
CC=${FUZZ_CC:-clang}
flags="-std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -fno-omit-frame-pointer -Wno-unknown-pragmas -Isrc $(pkg-config --cflags libcjson libpng libmicrohttpd)"
img_src="src/image_decode.c src/image_resize.c src/image_slice.c"
img_libs="$(pkg-config --libs libturbojpeg libjpeg libpng libwebp) -lpthread"
mkdir -p "$out"
build() {
  local t=$1
  case $t in
    request) $CC $flags tests/fuzz/fuzz_request.c src/server_json.c src/common.c src/sampler.c src/tensor.c src/grammar.c src/grammar_schema.c $img_src \
               -o "$out/fuzz_request" $(pkg-config --libs libcjson) $img_libs -lm ;;
    http) $CC $flags tests/fuzz/fuzz_http.c src/server_http.c src/server_worker.c src/server_guard.c src/server_json.c src/server_answer.c src/common.c src/grammar.c src/grammar_schema.c \
               src/sampler.c src/tensor.c $img_src -o "$out/fuzz_http" $(pkg-config --libs libcjson libmicrohttpd) $img_libs -lm -lpthread ;;
    safetensors) $CC $flags tests/fuzz/fuzz_safetensors.c src/safetensors.c src/tensor.c src/common.c \
               -o "$out/fuzz_safetensors" $(pkg-config --libs libcjson) -lm ;;
    image) $CC $flags tests/fuzz_image.c src/common.c $img_src -o "$out/fuzz_image" $img_libs -lm ;;
    *) echo "unknown fuzz target '$t' (request, http, safetensors, image)" >&2; exit 2 ;;
  esac
}
seed() {
  local t=$1 d=$out/$t/corpus
  mkdir -p "$d"
  case $t in
    request|http)
      local body='{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"}}]}],"max_tokens":4,"temperature":0.5,"top_p":0.9,"stop":["x"],"stream":true,"stream_options":{"include_usage":true},"num_beams":2}'
      if [ "$t" = request ]; then printf '%s' "$body" > "$d/full.json"
        printf '{"messages":[{"role":"user","content":"hi"}],"logprobs":false,"tools":[],"n":1}' > "$d/off.json"
        printf '{"prompt":"Once upon","max_tokens":4,"n":3,"logprobs":2,"echo":false,"best_of":1,"stop":["."],"seed":7}' > "$d/completion.json"
        printf '{"prompt":[[1,2,3]],"stream":true,"suffix":null}' > "$d/completion_ids.json"
      else
        cbody='{"prompt":"Once upon","max_tokens":4,"n":3,"logprobs":2,"stream":true,"stream_options":{"include_usage":true}}'
        printf 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' "${#cbody}" "$cbody" > "$d/completion.http"
        printf 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' "${#body}" "$body" > "$d/post.http"
        printf 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n0\r\n\r\n' > "$d/chunked.http"
        printf 'GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n\r\nOPTIONS / HTTP/1.1\r\nOrigin: o\r\n\r\n' > "$d/models.http"
      fi ;;
    safetensors)
      for f in tests/fixtures/*.safetensors; do [ -f "$f" ] && [ "$(stat -c %s "$f")" -lt 200000 ] && cp "$f" "$d/" || true; done
      hdr='{"__metadata__":{"a":"b"},"t":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]},"u":{"dtype":"I32","shape":[],"data_offsets":[12,16]}}'
      { printf "$(printf '\\x%02x' $((${#hdr} & 255)) $((${#hdr} >> 8)) 0 0 0 0 0 0)"; printf '%s' "$hdr"; head -c 16 /dev/zero; } > "$d/small.safetensors" ;;
    image)
      for f in tests/fixtures/image/*.jpg tests/fixtures/image/*.png tests/fixtures/image/*.webp; do
        [ -f "$f" ] && [ "$(stat -c %s "$f")" -lt 65536 ] && cp "$f" "$d/" || true; done
      printf '\x89PNG\r\n\x1a\n' > "$d/sig.png" ;;
  esac
}
rc=0
for t in $targets; do
  build "$t"
  seed "$t"
  touch "$out/$t/.start"
  echo "fuzz $t: ${secs} s"
  ( cd "$out/$t" && "../fuzz_$t" -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 -timeout=20 \
        -print_final_stats=1 corpus > fuzz.log 2>&1 ) || true
  grep -E 'Done|stat::number_of_executed_units' "$out/$t/fuzz.log" || true
  found=$(find "$out/$t" -maxdepth 1 -newer "$out/$t/.start" \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' \) | head -3)
  if [ -n "$found" ]; then
    grep -v '^INFO\|^#' "$out/$t/fuzz.log" | tail -40
    echo "fuzz $t: FOUND: $found (reproduce: $out/fuzz_$t FILE; log: $out/$t/fuzz.log)"; rc=1
  fi
done
exit $rc
