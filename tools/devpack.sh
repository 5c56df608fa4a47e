#!/usr/bin/env bash
# tools/devpack.sh: packs the CPU+CUDA binary and the test binaries for the GPU machine, whose
# image has CUDA but not Debian's libraries, into .devpack/dev.tar.xz (git-ignored; name .devpack
# in the device call's carry). The shared libraries they need, other than glibc and CUDA's, go
# into build-dev/lib. On the GPU machine:
#   tar xJf .devpack/dev.tar.xz && export LD_LIBRARY_PATH=$PWD/build-dev/lib:$LD_LIBRARY_PATH
set -euo pipefail
b=build-dev
make -j2 CUDA=1 BUILD="$b" "$b/minicpmv" $(ls tests/test_*.c | sed "s#tests/\(.*\)\.c#$b/tests/\1#")
rm -rf "$b/lib"; mkdir -p "$b/lib" .devpack
for f in "$b/minicpmv" "$b"/tests/test_*; do
  [ -x "$f" ] && [ ! -d "$f" ] || continue
  ldd "$f" | awk '/=> \//{print $3}'
done | sort -u | grep -Ev '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*|libcuda|libcudart|libcublas|libcublasLt|libnccl|libstdc\+\+|libgcc_s)\.so' \
  | while read -r lib; do cp -L "$lib" "$b/lib/"; done
tar cJf .devpack/dev.tar.xz "$b/minicpmv" $(ls "$b"/tests/test_* | grep -v '\.log$') "$b/lib"
ls -la .devpack/dev.tar.xz
