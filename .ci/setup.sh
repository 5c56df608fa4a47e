#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian 12 machine (root).
set -euo pipefail
pkgs="build-essential pkg-config libcjson-dev libpcre2-dev libturbojpeg0-dev libjpeg62-turbo-dev
      libpng-dev libwebp-dev libmicrohttpd-dev libopenblas-openmp-dev curl ca-certificates clang"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
fi
# Meta's Llama-3 tokenizer.json (sha256-checked) and the JS tokenizer used as an oracle in tests.
bash "$(dirname "$0")/../tools/fetch_tokenizer.sh"
# The official openai npm client, used by tests/server/run.sh.
bash "$(dirname "$0")/../tests/server/setup.sh"
