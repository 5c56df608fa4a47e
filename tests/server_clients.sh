#!/usr/bin/env bash
# The server driven by real clients (curl, the openai npm package): tests/server/run.sh on the
# build's binary and the tiny model the C tests generated. Run by `make test` after the C tests.
cd "$(dirname "$0")/.." || exit 2
exec bash tests/server/run.sh "${BUILD:-build}/minicpmv" build/test-models/tiny-s1
