#!/usr/bin/env bash
# setup.sh: installs the official `openai` npm package and puppeteer-core (both pinned in
# tests/server/package.json) into .cache/server-js for tests/server/run.sh and tests/ui/run.sh.
# puppeteer-core downloads no browser: the UI test drives Debian's chromium. Idempotent. Called by
# .ci/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
JS=.cache/server-js
command -v npm >/dev/null || { echo "setup.sh: npm not found" >&2; exit 1; }
if ! cmp -s tests/server/package.json "$JS/package.json" 2>/dev/null || [ ! -f "$JS/node_modules/openai/package.json" ] \
   || [ ! -f "$JS/node_modules/puppeteer-core/package.json" ]; then
  mkdir -p "$JS"
  cp tests/server/package.json "$JS/"
  (cd "$JS" && npm install --silent --no-audit --no-fund --ignore-scripts) || { echo "setup.sh: npm install failed" >&2; exit 1; }
fi
echo "tests/server/setup.sh: ok ($JS/node_modules: openai $(node -p "require('./$JS/node_modules/openai/package.json').version"), puppeteer-core $(node -p "require('./$JS/node_modules/puppeteer-core/package.json').version"))"
