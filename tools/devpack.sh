#!/usr/bin/env bash
# tools/devpack.sh: packs the CUDA build of minicpmv and the GPU test binaries for the GPU machine, whose
# image has CUDA but not Debian's libraries, into .devpack/dev.tar.xz (git-ignored; name .devpack in the
# device call's carry, which holds at most 64 MiB: the binaries are stripped of debug sections). The
# shared libraries they need, other than glibc's and CUDA's, go into build-dev/lib; build-dev/COMMIT
# names the commit they were built from (tools/dev_common.sh prints it: the device's copy of the tree
# has no usable git history). Builds for sm_90 (CUDA_ARCH, overridable) unless NOBUILD=1. On the GPU
# machine:
#   tar xJf .devpack/dev.tar.xz && export LD_LIBRARY_PATH=$PWD/build-dev/lib:$LD_LIBRARY_PATH
# Arguments: the test binaries to pack (default: the four GPU suites of tools/dev_decode.sh).
set -euo pipefail
b=build-dev
tests=${*:-test_cuda_ops test_llm test_cuda_batch test_cuda_quant}
bins="minicpmv"
for t in $tests; do bins="$bins tests/$t"; done
[ "${NOBUILD:-0}" = 1 ] || make -j2 WERROR=1 CUDA=1 CUDA_ARCH="${CUDA_ARCH:-90}" BUILD="$b" $(for f in $bins; do echo "$b/$f"; done)
s=$(mktemp -d)
trap 'rm -rf "$s"' EXIT
mkdir -p "$s/$b/tests" "$s/$b/lib" .devpack
for f in $bins; do strip --strip-debug -o "$s/$b/$f" "$b/$f"; done
for f in $bins; do ldd "$s/$b/$f" | awk '/=> \//{print $3}'; done | sort -u \
  | grep -Ev '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*|libcuda|libcudart|libcublas|libcublasLt|libnccl|libstdc\+\+|libgcc_s)\.so' \
  | while read -r lib; do cp -L "$lib" "$s/$b/lib/"; done
git log -1 --format='%h %s' > "$s/$b/COMMIT"
git diff --quiet HEAD || echo "(with uncommitted changes)" >> "$s/$b/COMMIT"
tar cJf .devpack/dev.tar.xz -C "$s" "$b"
ls -la .devpack/dev.tar.xz
