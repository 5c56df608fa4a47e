#!/usr/bin/env bash
# The chat page in a headless browser: tests/ui/run.sh on the build's binary and the tiny model the C
# tests generated; screenshots in build/ui/. Run by `make test` after the server tests.
cd "$(dirname "$0")/.." || exit 2
exec bash tests/ui/run.sh "${BUILD:-build}/minicpmv" build/test-models/tiny-s1 build/ui
