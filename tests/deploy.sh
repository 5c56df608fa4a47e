#!/usr/bin/env bash
# deploy/ under test: tests/deploy/run.sh (two replicas behind Debian's nginx with deploy/minicpmv.conf,
# the systemd unit's command line) on the build's binary and the tiny model the C tests generated.
# Run by `make test` after the server tests.
cd "$(dirname "$0")/.." || exit 2
exec bash tests/deploy/run.sh "${BUILD:-build}/minicpmv" build/test-models/tiny-s1
