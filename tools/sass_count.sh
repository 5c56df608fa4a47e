#!/usr/bin/env bash
# tools/sass_count.sh: SASS instructions per weight of the quantized decode GEMV kernels (and of the A kernel's
# F16 path), without a GPU and without nvdisasm (docs/CUDA.md "The quantized decode GEMV"). Compiles copies of
# src/cuda/cuda_qgemv.cu (the A-operand kernel) and src/cuda/cuda_quant.cu (the older B-operand kernel) for
# sm_90 with extra template instances that unroll 2, 3, 4 and 6 steps (U), takes each kernel's static opcode
# histogram (tools/sass_hist.py), and prints the difference per added step: the instructions one step of a
# lane costs, and per weight. Two minutes on the 2-core build machine.
set -euo pipefail
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
flags=(-cubin -O3 -std=c++17 -I"$PWD/src" -DMINICPMV_CUDA -arch=sm_90 --expt-relaxed-constexpr)
python3 - "$T" <<'EOF'
import sys
t = sys.argv[1]
# the round loop kept rolled, so that each U's instance runs rounds of exactly U steps: the F16 body is small
# enough that nvcc otherwise unrolls that loop by itself, by a factor that depends on U (the quantized
# kernels' counts are the same either way)
s = open('src/cuda/cuda_qgemv.cu').read().replace('    for (int j0 = 0; j0 < ns; j0 += U) {',
                                                  '#pragma unroll 1\n    for (int j0 = 0; j0 < ns; j0 += U) {')
assert '#pragma unroll 1\n    for (int j0' in s
for f in ('QA_Q4', 'QA_Q8', 'QA_NF4', 'QA_F16'):
    for u in (2, 3, 4, 6):
        s += ('template __global__ void qa_kernel<%s, 1, false, 8, %d, false, 2>(void *, int, const __half *, '
              'const uint8_t *, int64_t, const void *, int, int, int64_t, int64_t, struct qa_nf4);\n' % (f, u))
open(t + '/a.cu', 'w').write(s)
s = open('src/cuda/cuda_quant.cu').read()
for f in (0, 1, 2):
    for u in (2, 3, 4, 6):
        s += ('template __global__ void qmma_kernel<%d, false, false, 8, %d, 1>(void *, int, const __half *, '
              'const uint8_t *, int64_t, int64_t, const void *, int, int, int64_t, int64_t, struct nf4_tab);\n' % (f, u))
open(t + '/b.cu', 'w').write(s)
EOF
"$NVCC" "${flags[@]}" "$T/a.cu" -o "$T/a.cubin" &
"$NVCC" "${flags[@]}" "$T/b.cu" -o "$T/b.cubin"
wait
python3 - "$T" <<'EOF'
import sys, os
sys.path.insert(0, 'tools')
from sass_hist import sections, hist
t = sys.argv[1]
def per_step(cubin, key, weights, label):
    ks = {}
    for name, code in sections(cubin):
        for u in (2, 3, 4, 6):
            if key % u in name:
                ks[u] = hist(code)
    tot = {u: sum(v for k, v in h.items() if k != 'NOP') for u, h in ks.items()}
    d = (tot[6] - tot[2]) / 4
    ops = {k: (ks[6][k] - ks[2][k]) / 4 for k in set(ks[6]) | set(ks[2]) if k != 'NOP'}
    top = ' '.join('%s %.1f' % kv for kv in sorted(ops.items(), key=lambda kv: -kv[1]) if abs(kv[1]) >= 1)
    print('%-28s %3d weights/lane-step: %6.1f SASS per step = %.2f per weight (U 2->3 %d, 3->4 %d, 4->6 %.1f)\n    %s' %
          (label, weights, d, d / weights, tot[3] - tot[2], tot[4] - tot[3], (tot[6] - tot[4]) / 2, top))
per_step(t + '/a.cubin', 'qa_kernelILi0ELi1ELb0ELi8ELi%dELb0ELi2E', 64, 'A kernel Q4 (8 warps)')
per_step(t + '/a.cubin', 'qa_kernelILi1ELi1ELb0ELi8ELi%dELb0ELi2E', 32, 'A kernel Q8 (8 warps)')
per_step(t + '/a.cubin', 'qa_kernelILi2ELi1ELb0ELi8ELi%dELb0ELi2E', 64, 'A kernel NF4 (8 warps)')
per_step(t + '/a.cubin', 'qa_kernelILi4ELi1ELb0ELi8ELi%dELb0ELi2E', 16, 'A kernel F16 (8 warps)')
per_step(t + '/b.cubin', 'qmma_kernelILi1ELb0ELb0ELi8ELi%dELi1E', 32, 'session-5 kernel Q4 (8 warps)')
per_step(t + '/b.cubin', 'qmma_kernelILi0ELb0ELb0ELi8ELi%dELi1E', 16, 'session-5 kernel Q8 (8 warps)')
per_step(t + '/b.cubin', 'qmma_kernelILi2ELb0ELb0ELi8ELi%dELi1E', 32, 'session-5 kernel NF4 (8 warps)')
EOF
