#!/usr/bin/env python3
"""tools/qa_f16_mapping.py: checks, without a GPU, the fragment mapping of the A kernel's F16 path
(src/cuda/cuda_qgemv.cu, qa_step<QA_F16>; docs/CUDA.md "The quantized decode GEMV").

Emulates the kernel lane by lane in plain Python: the tiles of 16 rows, the warps' split of the steps (warp w
takes steps w, w + W, ...), each lane's 16-byte chunk of row g, row g + 8 and x[token g] (8 halves at
step * 32 + 8 t), the registers the kernel hands to mma.sync.m16n8k16 (mma m: A = words 2m, 2m + 1 of both rows
as a0 = row g word 2m, a1 = row g + 8 word 2m, a2 = row g word 2m + 1, a3 = row g + 8 word 2m + 1; B = x's words
2m, 2m + 1), the mma under the PTX ISA's fragment layout (a0: row g, k 2t, 2t + 1; a1: row g + 8; a2: row g,
k 2t + 8, 2t + 9; a3: row g + 8; b0: k 2t, 2t + 1, column g; b1: k 2t + 8, 2t + 9; c0, c1: row g, columns 2t,
2t + 1; c2, c3: row g + 8; the lower-index element in a register's low half, as a little-endian load puts
it), the rows and tokens past o and n standing in, and the store of C; compares y with x w^T. Then the same
with a1 and a2 swapped, which must fail (the check can fail). This checks the mapping argument, not the
compiled kernel: test_cuda_quant test_f16mma_exact does that on a GPU. A few seconds."""
import random
import sys


def mma(acc, a, b):
    """acc[lane] += the lane's C fragment of A B for the 32 lanes' A registers a and B registers b"""
    A = [[0.0] * 16 for _ in range(16)]
    B = [[0.0] * 8 for _ in range(16)]
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        a0, a1, a2, a3 = a[lane]
        b0, b1 = b[lane]
        for j in range(2):
            A[g][2 * t + j], A[g + 8][2 * t + j] = a0[j], a1[j]
            A[g][2 * t + 8 + j], A[g + 8][2 * t + 8 + j] = a2[j], a3[j]
            B[2 * t + j][g], B[2 * t + 8 + j][g] = b0[j], b1[j]
    D = [[sum(A[r][q] * B[q][c] for q in range(16)) for c in range(8)] for r in range(16)]
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for i, v in enumerate((D[g][2 * t], D[g][2 * t + 1], D[g + 8][2 * t], D[g + 8][2 * t + 1])):
            acc[lane][i] += v


def word(v, q):
    return v[2 * q:2 * q + 2]


def kernel(w, x, o, k, n, W, swap):
    KS, NT = 32, 2 if n > 8 else 1
    y = [[None] * o for _ in range(n)]
    nsteps = k // KS
    for row0 in range(0, o, 16):
        acc = [[[0.0] * 4 for _ in range(32)] for _ in range(NT)]  # the warps' partials, summed
        for warp in range(W):
            ns = (nsteps - warp + W - 1) // W if warp < nsteps else 0
            for j in range(ns):
                base0 = (warp + j * W) * KS
                for nt in range(NT):
                    ch = []
                    for lane in range(32):
                        g, t = lane >> 2, lane & 3
                        ra, rb = min(row0 + g, o - 1), min(row0 + g + 8, o - 1)
                        tok, base = min(8 * nt + g, n - 1), base0 + 8 * t
                        ch.append((w[ra][base:base + 8], w[rb][base:base + 8], x[tok][base:base + 8]))
                    for m in range(2):
                        a, b = [], []
                        for wa, wb, xx in ch:
                            r = (word(wa, 2 * m), word(wb, 2 * m), word(wa, 2 * m + 1), word(wb, 2 * m + 1))
                            a.append((r[0], r[2], r[1], r[3]) if swap else r)
                            b.append((word(xx, 2 * m), word(xx, 2 * m + 1)))
                        mma(acc[nt], a, b)
        for nt in range(NT):
            for lane in range(32):
                g, t = lane >> 2, lane & 3
                for i in range(4):
                    tok, row = 8 * nt + 2 * t + (i & 1), row0 + g + (8 if i >= 2 else 0)
                    if tok < n and row < o:
                        y[tok][row] = acc[nt][lane][i]
    return y


def err(o, k, n, W, swap):
    rnd = random.Random(o * 1000003 + k * 101 + n * 7 + W)
    w = [[rnd.gauss(0, 1) for _ in range(k)] for _ in range(o)]
    x = [[rnd.gauss(0, 1) for _ in range(k)] for _ in range(n)]
    y = kernel(w, x, o, k, n, W, swap)
    return max(abs(y[t][r] - sum(x[t][q] * w[r][q] for q in range(k))) for t in range(n) for r in range(o))


CASES = [(40, 96, 3, 8), (16, 32, 16, 16), (21, 128, 9, 4), (17, 160, 1, 8), (8, 64, 5, 8)]
ok = True
for o, k, n, W in CASES:
    e, bad = err(o, k, n, W, False), err(o, k, n, W, True)
    good = e < 1e-9 and bad > 1e-3
    ok &= good
    print('o %2d k %3d n %2d W %2d: max error %.2g (a1 / a2 swapped: %.3g) %s' % (o, k, n, W, e, bad, 'ok' if good else 'FAIL'))
sys.exit(0 if ok else 1)
