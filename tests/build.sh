#!/usr/bin/env bash
# The build's configurations never mix (the README's `make && make CUDA=1` once linked CPU-only
# objects into a "CUDA" binary): each has its own folder, the CUDA targets are the ones documented
# (SASS sm_75 80 86 89 90 + PTX compute_90; CUDA_ARCH=compute_75 alone: PTX only, for the JIT), and
# header dependencies come from the compiler. Dry runs (make -n) only: nothing is compiled here.
cd "$(dirname "$0")/.." || exit 2
BUILD=${BUILD:-build}
pass=0; fail=0
# a plain make's view, whatever make (and its flags: SANITIZE=1, -j) runs this script
mk() { env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u BUILD -u SANITIZE -u CUDA -u CUDA_ARCH -u CFLAGS make "$@"; }
check() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL $1" >&2; fi; }
cpu=$(mk -n -B build/minicpmv 2>&1)
cuda=$(mk -n -B CUDA=1 2>&1)
ptx=$(mk -n -B CUDA=1 CUDA_ARCH=compute_75 2>&1)
check "make builds into build/" 'echo "$cpu" | grep -q -- "-o build/src/backend.o" && echo "$cpu" | grep -q -- "-o build/minicpmv"'
check "make CUDA=1 builds every object into build-cuda/" 'echo "$cuda" | grep -q -- "-DMINICPMV_CUDA.* -c src/backend.c -o build-cuda/src/backend.o" && echo "$cuda" | grep -q -- "-o build-cuda/minicpmv"'
check "make CUDA=1 uses no object of build/" '! echo "$cuda" | grep -qE "(^| )build/(src|tools)/"'
for a in 75 80 86 89 90; do
  check "fat build: SASS sm_$a" 'echo "$cuda" | grep -q "arch=compute_$a,code=sm_$a"'
done
check "fat build: PTX compute_90" 'echo "$cuda" | grep -q "arch=compute_90,code=compute_90"'
check "CUDA_ARCH=compute_75: PTX for compute_75 only" 'echo "$ptx" | grep -q "arch=compute_75,code=compute_75" && ! echo "$ptx" | grep -q "code=sm_"'
check "CUDA_ARCH=compute_75: its own folder" 'echo "$ptx" | grep -q -- "-o build-cuda-compute_75/src/cuda/cuda_flash.o"'
check "objects write dependency files (-MMD -MP)" 'echo "$cpu" | grep -q -- "-MMD -MP -c src/tensor.c"'
if [ -f $BUILD/src/tensor.d ]; then
  check "tensor.o depends on the headers it includes" 'grep -q "src/tensor.h" $BUILD/src/tensor.d'
fi
echo "build: $pass passed, $fail failed"
[ $fail = 0 ]
