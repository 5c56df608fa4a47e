#!/usr/bin/env bash
# tools/devpack.sh [BUILD]: builds the CPU+CUDA binary and the test binaries for the GPU machine
# (whose image has CUDA but not Debian's libraries) into BUILD (default build-dev), and copies the
# shared libraries they need that are not part of glibc or CUDA into BUILD/lib.
# On the GPU machine: export LD_LIBRARY_PATH=$PWD/BUILD/lib:$LD_LIBRARY_PATH
set -euo pipefail
b=${1:-build-dev}
make -j2 CUDA=1 PORTABLE=1 BUILD="$b" "$b/minicpmv" $(ls tests/test_*.c | sed "s#tests/\(.*\)\.c#$b/tests/\1#")
mkdir -p "$b/lib"
for f in "$b/minicpmv" "$b"/tests/test_*; do
  [ -x "$f" ] || continue
  ldd "$f" | awk '/=> \//{print $3}'
done | sort -u | grep -Ev '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*|libcuda|libcudart|libcublas|libcublasLt|libnccl|libstdc\+\+|libgcc_s)\.so' \
  | while read -r lib; do cp -L "$lib" "$b/lib/"; done
du -sh "$b" "$b/lib"
