/* cuda_qgemv.cu: the decode GEMV (n = 1..16 tokens, F16 x) for Q4, Q8 and NF4 weights on tensor cores, with the
 * weights as the A operand of mma.sync m16n8k16 and x as B (docs/CUDA.md "The quantized decode GEMV"); the
 * same kernel on F16 weights for the batched decode step's 2..16 tokens (cuda_qgemv_f16, when cuda_set_f16mma
 * asks for it).
 * Owns: that kernel and its launch. Does not own: the record and tile layouts (quant.h), the other quantized paths
 * (cuda_quant.cu: the CUDA-core GEMV, the older kernel with the weights as B, prefill).
 *
 * Shape of the work. A warp owns a tile of 16 output rows; a step of the warp covers KS = 128 (Q4, NF4), 64
 * (Q8) or 32 (F16) values of k of those rows. Lane (g = lane / 4, t = lane % 4) loads 16 bytes of row g and 16
 * bytes of row g + 8, the t-th 16-byte chunk of the step in both (so the 4 lanes of a row read 64 contiguous
 * bytes; quantized weights lie in 16-row tiles, quant.h, where a warp step is one contiguous KiB and its
 * scales one run of 32 SB bytes; F16 rows are records), and turns them into the A fragments of 8 (Q4), 4
 * (Q8) or 2 (F16: the halves as they are) mmas:
 * the mma's logical k is mapped onto the lane's own chunk (a dot product does not care in which order k is
 * summed, only that A and B agree), so the B fragment of the same mma is x[token g] at the same positions: 4
 * consecutive halves per mma, which are exactly the words of the lane's 16-byte loads of x. No shuffles and
 * no shared memory in the loop.
 * The warps of a block split the steps of the tile (warp w takes w, w + W, ...) and meet in shared memory.
 *
 * Dequantization (the CPU twin's F16 values, bit for bit; test_cuda_quant test_gemv_exact):
 *   Q4 word u (elements 8i..8i+7, quant.h's nibble order): lop3 (u & 0x000f000f) | 0x64006400 = the half2
 *   (1024 + c0, 1024 + c1), minus 1032 = c - 8 exactly; lop3 (u & 0x00f000f0) | 0x64006400 = (1024 + 16 c2,
 *   1024 + 16 c3), times 1/16 minus 72 (one hfma2, exact) = c - 8; then u >> 8 and the same for elements
 *   4..7. One hmul2 by the group's scale rounds the exact product (c - 8) * s once: f16((c - 8) * s).
 *   Per 8 weights: 4 lop3 + 1 shift + 4 hsub2/hfma2 + 4 hmul2; an mma takes 8 weights of each lane.
 *   Q8 word (4 int8 codes): xor 0x80 makes the biased byte b = q + 128; prmt places it under 0x64 (the half
 *   1024 + b), minus 1152 = q exactly; hmul2 by the row's scale.
 *   NF4 (bitsandbytes' order: byte b holds element 2b in its high nibble, 2b + 1 in its low one): per step
 *   and row the lane's chunk lies in one group of 64, so it builds that group's 16 values T[c] =
 *   f16(f32(NF4[c] * a)) (bitsandbytes' value; 16 fmul + 8 cvt) and splits them into byte planes (8 prmt):
 *   4 registers of low bytes, 4 of high bytes. A word (8 codes) then takes 21 integer instructions: the
 *   selectors c & 7 and i + 4 (c >> 3) (5), and per 4 codes and plane one prmt into T[0..7], one into
 *   T[8..15] and one that keeps either by bit 3 of c, then 2 prmts that interleave the planes into half2
 *   (16 prmt). The table's 32 instructions per row spread over the chunk's 32 codes: ~25 per 8 weights
 *   against Q4's 13 (static SASS per step, 8 warps, sm_90: Q4 140, NF4 266, the older NF4 path 255, but
 *   that one issued 32 shared-memory loads and 32 cvt of its 255). The chunk holds 32 consecutive elements
 *   as in Q4, so the mma and x mapping is Q4's. The older path (QA_NF4T: a shared-memory table of the
 *   256 pairs (NF4[hi], NF4[lo]), 2 fmul and 1 cvt per byte) stays selectable for the bench.
 * Loads: codes with ld.global.cs (streamed once), U steps in flight per lane in a register ring (a slot
 * is refilled with the step U ahead as soon as its step is used); the scales of the step ride along; x
 * through L1 (ld.global.nc), or under PDL, where the previous kernel writes x while this one already runs,
 * copied once per block into shared memory through L2 (one token, k <= QA_XS_KMAX; otherwise ld.global.cg
 * at every step); base pointers advance once per round of U steps, the loads of a round
 * taking compile-time offsets. Under PDL the first U steps of weights are loaded before
 * griddepcontrol.wait (weights are constant). fp32 accumulation in the mma; the bias is added in fp32
 * before the one rounding to y's dtype. No scratch, no host sync: graph-capturable. */
#include "cuda/cuda_pgemv.cuh"
#include "cuda/cuda_quant.cuh"

#include "quant.h"

/* QA_NF4: NF4 dequantized in registers; QA_NF4T: the older NF4 path through a shared-memory table; QA_F16:
 * F16 weights (no scales, no dequantization; cuda_qgemv_f16) */
enum { QA_Q4 = 0, QA_Q8 = 1, QA_NF4 = 2, QA_NF4T = 3, QA_F16 = 4 };

__host__ __device__ constexpr bool qa_is_nf4(int f) { return f == QA_NF4 || f == QA_NF4T; }

/* k per warp step: 4 lanes x 16 bytes of codes per row */
__host__ __device__ constexpr int qa_ks(int f) { return f == QA_F16 ? 32 : f == QA_Q8 ? 64 : 128; }
/* bytes of a row's codes (the scales, if any, follow them in the record) */
__host__ __device__ constexpr int64_t qa_code_bytes(int f, int64_t k) { return f == QA_F16 ? 2 * k : f == QA_Q8 ? k : k / 2; }
/* bytes of one group's scale (Q4: f16, NF4: the f32 absmax); Q8 has one f16 scale per row */
__host__ __device__ constexpr int qa_sb(int f) { return qa_is_nf4(f) ? 4 : 2; }

/* the NF4 code table, by value (bitsandbytes' quant_map, QUANT_NF4) */
struct qa_nf4 {
    float v[16];
};

/* The shapes the bench compares (cuda_set_qmma QMMA_A0 + index): warps per block x steps in flight per
 * lane; qa_launch_s and cuda_qmma_name list them. QMMA_AUTO takes QA_AUTO: a8x2o4, the fastest for Q4
 * and Q8 at 1, 8 and 16 tokens on the H200 (session 7, test_cuda_quant bench: decoder GEMVs per token
 * Q4 1787 us vs a8x4 1954, Q8 2281 vs 2383). */
#define QA_AUTO 4
/* NF4 (the register dequantization) takes a4x4: H200 session 9, the same bench, NF4 step at 1 / 8 / 16
 * tokens 2,577 / 2,638 / 3,327 us against the older kernel's 3,704 / 4,144 / 4,958 (b8x2x2, the NF4 default
 * before) and a8x2p's 2,607 / 2,693 / 3,767; the shapes with 3-4 steps in flight spill for NF4. */
#define QA_AUTO_NF4 3
/* ... except one token at k >= 8192 (down_proj): a16x2 (session 9, same bench: Q4 13.05 us vs a8x2o4's 16.00,
 * Q8 18.28 vs 19.59; it loses at every k = 4096 matrix) */
#define QA_AUTO_LONG_K 5

__device__ __forceinline__ __half2 qa_h2(uint32_t u)
{
    __half2 h;
    memcpy(&h, &u, 4);
    return h;
}

__device__ __forceinline__ uint32_t qa_u(__half2 h)
{
    uint32_t u;
    memcpy(&u, &h, 4);
    return u;
}

/* (a & b) | c in one instruction */
__device__ __forceinline__ uint32_t lop3_and_or(uint32_t a, uint32_t b, uint32_t c)
{
    uint32_t d;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

/* Q4: the pair at bits (0..3, 16..19) of u, times s: f16((c - 8) * s) for both */
__device__ __forceinline__ uint32_t q4_pair_lo(uint32_t u, __half2 s)
{
    const __half2 v = qa_h2(lop3_and_or(u, 0x000f000fu, 0x64006400u)); /* 1024 + c */
    return qa_u(__hmul2_rn(__hsub2_rn(v, qa_h2(0x64086408u)), s));    /* (1024 + c - 1032) * s */
}

/* Q4: the pair at bits (4..7, 20..23) of u, times s */
__device__ __forceinline__ uint32_t q4_pair_hi(uint32_t u, __half2 s)
{
    const __half2 v = qa_h2(lop3_and_or(u, 0x00f000f0u, 0x64006400u));                   /* 1024 + 16 c */
    return qa_u(__hmul2_rn(__hfma2(v, qa_h2(0x2c002c00u), qa_h2(0xd480d480u)), s)); /* (v / 16 - 72) * s */
}

/* Q8: the pair of biased bytes selected by sel (0x4140: bytes 0, 1; 0x4342: bytes 2, 3) of b, times s */
__device__ __forceinline__ uint32_t q8_pair(uint32_t b, uint32_t sel, __half2 s)
{
    const __half2 v = qa_h2(__byte_perm(b, 0x64646464u, sel)); /* 1024 + q + 128 */
    return qa_u(__hmul2_rn(__hsub2_rn(v, qa_h2(0x64806480u)), s));
}

/* 16-byte x vectors per lane per step: the lane's KS / 4 halves */
template <int F> struct qa_x {
    static constexpr int V = qa_ks(F) / 32;
};

/* prmt.b32 in its default mode: byte i of the result is byte (s >> 4i) & 7 of the 8 bytes {b:a} (a the low
 * four) for i = 0..3; bits 16..31 of s are not read. Bit 3 of a selector nibble would replicate the selected
 * byte's sign bit instead (PTX ISA, prmt), so every selector below has it clear. */
__device__ __forceinline__ uint32_t qa_prmt(uint32_t a, uint32_t b, uint32_t s)
{
    uint32_t d;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(s));
    return d;
}

/* NF4 in registers. The 16 values of one group (absmax a), T[c] = f16(f32(NF4[c] * a)) (bitsandbytes' value),
 * as byte planes: t[0..3] the low bytes of T[0..3], T[4..7], T[8..11], T[12..15], t[4..7] their high bytes.
 * 16 fmul, 8 cvt (each rounds two products once to half2), 8 prmt. */
__device__ __forceinline__ void nf4_table(uint32_t (&t)[8], float a, const struct qa_nf4 &nf4)
{
    uint32_t h[8]; /* h[j] = (T[2j], T[2j + 1]) */
#pragma unroll
    for (int j = 0; j < 8; j++) h[j] = qa_u(__floats2half2_rn(__fmul_rn(nf4.v[2 * j], a), __fmul_rn(nf4.v[2 * j + 1], a)));
#pragma unroll
    for (int j = 0; j < 4; j++) {
        t[j] = qa_prmt(h[2 * j], h[2 * j + 1], 0x6420u);
        t[4 + j] = qa_prmt(h[2 * j], h[2 * j + 1], 0x7531u);
    }
}

/* NF4: the 4 elements of the 2 bytes at bits 0..15 of the word, looked up in t. m: the word's nibbles c & 7
 * (bits 0..15 used), s: per nibble i, i + 4 (c >> 3) (bits 0..15 used). Each plane: one prmt looks the 4
 * nibbles up in T[0..7] and one in T[8..15], a third keeps, per nibble, the first or the second by bit 3 of
 * c; the last two prmts interleave the planes into the half2 pairs of bitsandbytes' order (byte b: element
 * 2b in its high nibble, 2b + 1 in its low one): e01 = (T[elem 0], T[elem 1]), e23 = the second byte's. */
__device__ __forceinline__ void nf4_quad(const uint32_t (&t)[8], uint32_t m, uint32_t s, uint32_t &e01, uint32_t &e23)
{
    const uint32_t lo = qa_prmt(qa_prmt(t[0], t[1], m), qa_prmt(t[2], t[3], m), s);
    const uint32_t hi = qa_prmt(qa_prmt(t[4], t[5], m), qa_prmt(t[6], t[7], m), s);
    e01 = qa_prmt(lo, hi, 0x4051u); /* nibble 1 (element 0) then nibble 0 (element 1), low byte then high */
    e23 = qa_prmt(lo, hi, 0x6273u);
}

/* NF4: the 8 elements of word u (bytes 0..3: elements 0..7) as the half2 pairs e[b] = (T[elem 2b], T[elem 2b+1]).
 * 5 integer instructions make the selectors of both halves, then 2 x 8 prmt: 21 per 8 weights. */
__device__ __forceinline__ void nf4_word(const uint32_t (&t)[8], uint32_t u, uint32_t (&e)[4])
{
    const uint32_t m = u & 0x77777777u;
    const uint32_t s = lop3_and_or(u >> 1, 0x44444444u, 0x32103210u);
    nf4_quad(t, m, s, e[0], e[1]);
    nf4_quad(t, m >> 16, s >> 16, e[2], e[3]);
}

/* The older NF4 path (QA_NF4T, cuda_set_qmma QMMA_A_NF4T; kept for the bench's comparison): the pair of
 * elements in byte b times the absmax a, each rounded once from the f32 product: f16(f32(NF4[c] * a)). tab:
 * the 256 pairs (NF4[b >> 4], NF4[b & 15]) in shared memory. */
__device__ __forceinline__ uint32_t nf4_pair(const float2 *tab, uint32_t b, float a)
{
    const float2 v = tab[b];
    return qa_u(__floats2half2_rn(__fmul_rn(v.x, a), __fmul_rn(v.y, a)));
}

/* One step of one lane: codes ca (row g) and cb (row g + 8), their scale words sa, sb (Q4 / Q8: f16 bits,
 * NF4: f32 bits), x of the N tiles; nf4: the code values (QA_NF4), tab: their pair table (QA_NF4T). */
template <int F, int NT>
__device__ __forceinline__ void qa_step(float (&acc)[NT][4], uint4 ca, uint4 cb, uint32_t sa, uint32_t sb,
                                        const uint4 (&xv)[NT][qa_x<F>::V], const struct qa_nf4 &nf4,
                                        const float2 *tab)
{
    const uint32_t wa[4] = {ca.x, ca.y, ca.z, ca.w}, wb[4] = {cb.x, cb.y, cb.z, cb.w};
    if constexpr (F == QA_F16) {
        /* the chunk is 8 consecutive halves of each row: halves 4m .. 4m + 3 (words 2m, 2m + 1) are mma m's
         * k. In the m16n8k16 A fragment a0 is (row g, k 2t, 2t + 1), a1 (row g + 8, same k), a2 (row g, k
         * 2t + 8, 2t + 9), a3 (row g + 8, same k); B's b0 is (k 2t, 2t + 1, column g), b1 (k 2t + 8, 2t + 9).
         * So the mma's k 2t, 2t + 1 are halves 4m, 4m + 1 of lane t's chunk, k 2t + 8, 2t + 9 its halves 4m + 2,
         * 4m + 3: the words as they are, and x[token g]'s words 2m, 2m + 1 at the same positions as B (the
         * mapping depends only on the k index, as the Q8 branch's does: a word of 4 elements there too). */
#pragma unroll
        for (int m = 0; m < 2; m++)
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const uint4 xq = xv[nt][0];
                mma_m16n8k16(acc[nt], wa[2 * m], wb[2 * m], wa[2 * m + 1], wb[2 * m + 1], m ? xq.z : xq.x,
                             m ? xq.w : xq.y);
            }
    } else if constexpr (F == QA_Q4) {
        const __half2 s2a = __half2half2(__ushort_as_half((unsigned short)sa));
        const __half2 s2b = __half2half2(__ushort_as_half((unsigned short)sb));
#pragma unroll
        for (int q = 0; q < 4; q++) { /* word q: elements 8q .. 8q + 7 of the chunk */
            uint32_t ua = wa[q], ub = wb[q];
#pragma unroll
            for (int h = 0; h < 2; h++) { /* elements 8q + 4h .. 8q + 4h + 3: one mma */
                const uint32_t a0 = q4_pair_lo(ua, s2a), a1 = q4_pair_lo(ub, s2b);
                const uint32_t a2 = q4_pair_hi(ua, s2a), a3 = q4_pair_hi(ub, s2b);
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    const uint4 xq = xv[nt][q];
                    mma_m16n8k16(acc[nt], a0, a1, a2, a3, h ? xq.z : xq.x, h ? xq.w : xq.y);
                }
                ua >>= 8;
                ub >>= 8;
            }
        }
    } else if constexpr (F == QA_NF4) {
        uint32_t ta[8], tb[8]; /* the byte planes of the two rows' groups */
        nf4_table(ta, __uint_as_float(sa), nf4);
        nf4_table(tb, __uint_as_float(sb), nf4);
#pragma unroll
        for (int q = 0; q < 4; q++) { /* word q: bytes 4q .. 4q + 3 = elements 8q .. 8q + 7 of the chunk */
            uint32_t ea[4], eb[4];
            nf4_word(ta, wa[q], ea);
            nf4_word(tb, wb[q], eb);
#pragma unroll
            for (int h = 0; h < 2; h++) /* bytes 2h, 2h + 1 of the word: elements 8q + 4h .. + 3, one mma */
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    const uint4 xq = xv[nt][q];
                    mma_m16n8k16(acc[nt], ea[2 * h], eb[2 * h], ea[2 * h + 1], eb[2 * h + 1], h ? xq.z : xq.x,
                                 h ? xq.w : xq.y);
                }
        }
    } else if constexpr (F == QA_NF4T) {
        const float fa = __uint_as_float(sa), fb = __uint_as_float(sb);
#pragma unroll
        for (int q = 0; q < 4; q++) { /* word q: bytes 4q .. 4q + 3 = elements 8q .. 8q + 7 of the chunk */
#pragma unroll
            for (int h = 0; h < 2; h++) { /* bytes 4q + 2h, 4q + 2h + 1: elements 8q + 4h .. + 3, one mma */
                const uint32_t a0 = nf4_pair(tab, (wa[q] >> (16 * h)) & 0xffu, fa);
                const uint32_t a1 = nf4_pair(tab, (wb[q] >> (16 * h)) & 0xffu, fb);
                const uint32_t a2 = nf4_pair(tab, (wa[q] >> (16 * h + 8)) & 0xffu, fa);
                const uint32_t a3 = nf4_pair(tab, (wb[q] >> (16 * h + 8)) & 0xffu, fb);
#pragma unroll
                for (int nt = 0; nt < NT; nt++) {
                    const uint4 xq = xv[nt][q];
                    mma_m16n8k16(acc[nt], a0, a1, a2, a3, h ? xq.z : xq.x, h ? xq.w : xq.y);
                }
            }
        }
    } else {
        const __half2 s2a = __half2half2(__ushort_as_half((unsigned short)sa));
        const __half2 s2b = __half2half2(__ushort_as_half((unsigned short)sb));
#pragma unroll
        for (int q = 0; q < 4; q++) { /* word q: elements 4q .. 4q + 3 of the chunk: one mma */
            const uint32_t ba = wa[q] ^ 0x80808080u, bb = wb[q] ^ 0x80808080u;
            const uint32_t a0 = q8_pair(ba, 0x4140u, s2a), a1 = q8_pair(bb, 0x4140u, s2b);
            const uint32_t a2 = q8_pair(ba, 0x4342u, s2a), a3 = q8_pair(bb, 0x4342u, s2b);
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const uint4 xq = xv[nt][q >> 1];
                mma_m16n8k16(acc[nt], a0, a1, a2, a3, q & 1 ? xq.z : xq.x, q & 1 ? xq.w : xq.y);
            }
        }
    }
}

/* a scale word: Q4 / Q8 the f16 bits, NF4 the f32 bits */
template <int F> __device__ __forceinline__ uint32_t qa_ld_scale(const uint8_t *p)
{
    if constexpr (qa_is_nf4(F)) return __ldg(reinterpret_cast<const unsigned int *>(p));
    else return __ldg(reinterpret_cast<const unsigned short *>(p));
}

/* The fused decode ops on this kernel (one token; cuda_qgemv_rmsnorm_matmul, _rmsnorm_swiglu, _linear_res, which
 * llm.c reaches only when told to: bench --fuse on, llm_set_unfused 0): QF_PARTS op_rmsnorm_matmul (the output
 * rows split into parts), QF_RES op_linear adding into the residual (y = res + round(x w^T)), QF_SWIGLU
 * op_rmsnorm_swiglu (a block owns gate tile b and up tile b: its first W / 2 warps the gate rows, the others
 * the up rows, and warp 0 writes round(round(silu(g)) * u)). NORM: x is h, and every block computes the
 * RMSNorm of h into shared memory first (norm_row_256: rmsnorm_kernel's sum and rounding, so the same bits
 * as the plain op), after its first weights are in flight. Measured on the H200 (session 12) the fused
 * sequence is the slower one: q4 decode 360 tok/s against 415 (docs/PERF.md). */
enum { QF_NONE = 0, QF_PARTS = 1, QF_RES = 2, QF_SWIGLU = 3 };
#define QA_NORM_KMAX 8192 /* the width a block stages (halves); wider inputs take the plain ops */
/* Launched as a programmatic dependent (PDL) for one token, a block copies x (up to QA_XS_KMAX halves) into
 * shared memory once after griddepcontrol.wait, through L2, and its warps read it there: x is the previous
 * kernel's output, so it may not come through the non-coherent L1 path, and an L2 load at every step (shapes
 * without x one step ahead) put an L2 latency into every step. */
#define QA_XS_KMAX 16384

struct qa_fuse {
    __half *y[RMSNORM_MATMUL_MAX_PARTS];       /* QF_PARTS: part i [1, off[i + 1] - off[i]]; else y[0] */
    int64_t off[RMSNORM_MATMUL_MAX_PARTS + 1]; /* QF_PARTS: the first row of each part, off[np] = o */
    const __half *res;                         /* QF_RES: [1, o] (may be y[0]) */
    const void *nw;                            /* NORM: the norm's weight [k] */
    int64_t f;                                 /* QF_SWIGLU: gate rows 0 .. f - 1, up rows f .. 2f - 1 */
    int np, nwdt;
    float eps;
};

/* y[n, o] = x[n, k] w^T (+ bias), n <= 8 * NT (MODE QF_NONE; the fused forms write their own outputs, fz).
 * Block: W warps on the 16-row tile blockIdx.x (QF_SWIGLU: W / 2 on gate tile blockIdx.x, W / 2 on the up
 * tile). rb: record bytes. */
template <int F, int NT, bool PDL, int W, int U, bool XP, int MINB, int MODE, bool NORM>
__global__ void __launch_bounds__(W * 32, MINB)
qa_kernel(void *y, int ydt, const __half *x, const uint8_t *w, int64_t rb, const void *bias, int bdt, int n,
          int64_t k, int64_t o, struct qa_nf4 nf4, const struct qa_fuse fz)
{
    constexpr int KS = qa_ks(F), XV = qa_x<F>::V, SB = qa_sb(F);
    /* QF_SWIGLU: W / 2 warps per tile (WE), the block's second half on the up rows */
    constexpr bool SW = MODE == QF_SWIGLU;
    constexpr int WE = SW ? W / 2 : W;
    static_assert(!SW || W % 2 == 0, "SwiGLU splits the warps in two");
    static_assert(!NORM || W * 32 == 256, "norm_row_256 sums with 256 threads");
    static_assert(!NORM || NT == 1, "the fused ops take one token");
    /* x staged in shared memory under PDL (QA_XS_KMAX): XSM where the kernel may, xsm where k allows */
    constexpr bool XSM = PDL && NT == 1 && !NORM;
    const bool xsm = XSM && n == 1 && k <= QA_XS_KMAX;
    /* a scale per group of 64 (the lane's chunk lies in one), one per row (Q8), or none (F16) */
    constexpr bool GROUPS = F == QA_Q4 || qa_is_nf4(F), ROWSCALE = F == QA_Q8;
    /* quantized weights come in 16-row tiles (quant.h; cuda_qgemv_a checks w->tiled), F16 as rows */
    constexpr bool TL = F != QA_F16;
    __shared__ float red[W > 1 ? W - 1 : 1][NT * 4][32];
    __shared__ float2 tab[F == QA_NF4T ? 256 : 1]; /* QA_NF4T's pairs (NF4[b >> 4], NF4[b & 15]) */
    __shared__ __align__(16) __half xs[NORM ? QA_NORM_KMAX : XSM ? QA_XS_KMAX : 8]; /* NORM: the staged RMSNorm of h; XSM: x */
    __shared__ double nred[NORM ? W : 1];
    pdl_trigger(); /* a PDL-launched successor may start loading its weights once all blocks run */
    if (F == QA_NF4T)
        for (int i = threadIdx.x; i < 256; i += W * 32) tab[i] = make_float2(nf4.v[i >> 4], nf4.v[i & 15]);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gi = lane >> 2, tig = lane & 3;
    /* hf: which tile of a SwiGLU block (0 gate, 1 up), wl: the warp's index on its tile */
    const int hf = SW ? warp / WE : 0, wl = SW ? warp - hf * WE : warp;
    const int64_t row0 = (int64_t)blockIdx.x * 16, orows = SW ? fz.f : o, rbase = hf ? fz.f : 0;
    const int64_t cbytes = qa_code_bytes(F, k);
    const int nsteps = (int)(k / KS);
    const int ns = wl < nsteps ? (nsteps - wl + WE - 1) / WE : 0; /* this warp's steps: wl + j WE */

    /* The warp's step j is at these pointers + j * (its stride); they advance once per round of U steps, so
     * every load of a round has a compile-time offset (the load's immediate) and no address arithmetic.
     * (QF_SWIGLU: WE warps per tile, wl the warp's index on it, in place of W and warp.)
     * Tiles (TL): step s of the tile is 1 KiB at 1024 s, rows 0..15 64 bytes each, so lane l reads 16 bytes at
     * 16 l (row g, chunk t) and 512 + 16 l (row g + 8): + 64 W uint4 per step. Scales (Q4, NF4): the step's
     * 16 rows x 2 groups at 16 cb + 32 SB s, row r's at 2 r SB; the lane's chunk lies in group 2s + t / 2
     * (+ 32 W SB bytes per step); Q8: row r's one scale at 16 cb + 2 r. (Every row of a tile exists: tiled
     * weights have rows % 16 == 0.)
     * Rows (F16): codes the lane's t-th 16 bytes of the step's 64 in the row's record (+ 4 W uint4 per step);
     * rows past orows stand in with the last row (their sums are not stored). */
    constexpr int CST = TL ? 64 * WE : 4 * WE;      /* uint4 of codes per warp step */
    constexpr int SST = TL ? 32 * WE * SB : 2 * WE * SB; /* bytes of group scales per warp step */
    const uint4 *pa, *pb;
    const uint8_t *qa = NULL, *qb = NULL;
    if constexpr (TL) {
        const uint8_t *tile = w + (rbase + row0) * rb;
        pa = reinterpret_cast<const uint4 *>(tile) + lane + 64 * wl;
        pb = pa + 32;
        if (GROUPS) {
            qa = tile + 16 * cbytes + SB * (2 * gi + (tig >> 1) + 32 * wl);
            qb = qa + 16 * SB;
        } else {
            qa = tile + 16 * cbytes + 2 * gi;
            qb = qa + 16;
        }
    } else {
        const int64_t ra = rbase + (row0 + gi < orows ? row0 + gi : orows - 1);
        const int64_t rbw = rbase + (row0 + gi + 8 < orows ? row0 + gi + 8 : orows - 1);
        pa = reinterpret_cast<const uint4 *>(w + ra * rb) + tig + 4 * wl;
        pb = reinterpret_cast<const uint4 *>(w + rbw * rb) + tig + 4 * wl;
    }
    uint4 ca[U], cb[U];
    uint32_t sa_[U], sb_[U]; /* the step's scale words of rows g and g + 8 */
    /* step `off` steps of the warp ahead of the round's first into slot u */
    auto load = [&](int u, int off) {
        ca[u] = __ldcs(pa + CST * off);
        cb[u] = __ldcs(pb + CST * off);
        if (GROUPS) {
            sa_[u] = qa_ld_scale<F>(qa + SST * off);
            sb_[u] = qa_ld_scale<F>(qb + SST * off);
        }
    };
#pragma unroll
    for (int u = 0; u < U; u++) {
        ca[u] = cb[u] = make_uint4(0, 0, 0, 0);
        sa_[u] = sb_[u] = 0;
        if (u < ns) load(u, u);
    }
    const uint32_t s8a = ROWSCALE ? qa_ld_scale<F>(qa) : 0, s8b = ROWSCALE ? qa_ld_scale<F>(qb) : 0;
    if (F == QA_NF4T) __syncthreads(); /* tab */
    if (PDL) pdl_wait(); /* x is the previous kernel's output; the weights are not */
    if constexpr (NORM) { /* x = h: its RMSNorm, once per block, into xs */
        norm_row_256(xs, reinterpret_cast<const unsigned short *>(x), (int)k, fz.nw, fz.nwdt, fz.eps, nred);
        __syncthreads();
    }
    if (xsm) { /* x once per block, through L2 */
        for (int64_t i = threadIdx.x; i < k / 8; i += W * 32)
            reinterpret_cast<uint4 *>(xs)[i] = __ldcg(reinterpret_cast<const uint4 *>(x) + i);
        __syncthreads();
    }

    /* x of tokens g (N tile 0) and g + 8 (tile 1); tokens past n stand in with the last one. Step j of the
     * warp: xq[nt] + j * WE * KS halves. */
    const uint4 *xq[NT];
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
        const int tok = 8 * nt + gi < n ? 8 * nt + gi : n - 1;
        xq[nt] = NORM || xsm ? reinterpret_cast<const uint4 *>(xs + tig * (KS / 4) + wl * KS)
                             : reinterpret_cast<const uint4 *>(x + (int64_t)tok * k + tig * (KS / 4) + (int64_t)wl * KS);
    }
    /* x from shared memory (NORM, xsm), else through L2 under PDL (ld.global.cg: an earlier kernel wrote it) or
     * through L1 */
    auto ldx = [&](const uint4 *p) -> uint4 {
        if constexpr (NORM) return *p;
        else if (xsm) return *p;
        else return PDL ? __ldcg(p) : __ldg(p);
    };
    constexpr int XS = WE * KS / 8; /* uint4 per step */
    /* x of a step: loaded one step ahead (XP) or at the step */
    uint4 xn[NT][XV];
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int v = 0; v < XV; v++) {
            xn[nt][v] = make_uint4(0, 0, 0, 0);
            if (XP && ns > 0) xn[nt][v] = ldx(xq[nt] + v);
        }
    float acc[NT][4], accu[NT][4]; /* accu: QF_SWIGLU's up sums (warp 0, below) */
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[nt][i] = accu[nt][i] = 0.0f;

    for (int j0 = 0; j0 < ns; j0 += U) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int j = j0 + u;
            if (j >= ns) break;
            uint4 xc[NT][XV];
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int v = 0; v < XV; v++) {
                    if (XP) {
                        xc[nt][v] = xn[nt][v];
                        if (j + 1 < ns) xn[nt][v] = ldx(xq[nt] + XS * (u + 1) + v);
                    } else {
                        xc[nt][v] = ldx(xq[nt] + XS * u + v);
                    }
                }
            qa_step<F, NT>(acc, ca[u], cb[u], GROUPS ? sa_[u] : s8a, GROUPS ? sb_[u] : s8b, xc, nf4, tab);
            /* refill the slot with the step U ahead, into the registers just used (no copies): U - 1 steps
             * are in flight while a step is computed, U in between */
            if (j + U < ns) load(u, u + U);
        }
        pa += CST * U;
        pb += CST * U;
        if (GROUPS) {
            qa += SST * U;
            qb += SST * U;
        }
#pragma unroll
        for (int nt = 0; nt < NT; nt++) xq[nt] += XS * U;
    }
    /* acc[nt]: rows g and g + 8 of the tile, tokens 8 nt + 2t and 8 nt + 2t + 1. SwiGLU: warp 0 sums the gate
     * tile's warps 0 .. WE - 1 into acc and the up tile's WE .. W - 1 into accu */
    if (W > 1) {
        if (warp > 0)
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int i = 0; i < 4; i++) red[warp - 1][nt * 4 + i][lane] = acc[nt][i];
        __syncthreads();
        if (warp != 0) return;
#pragma unroll 1
        for (int q = 0; q < W - 1; q++)
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    if (SW && q + 1 >= WE) accu[nt][i] += red[q][nt * 4 + i][lane];
                    else acc[nt][i] += red[q][nt * 4 + i][lane];
                }
    }
#pragma unroll
    for (int nt = 0; nt < NT; nt++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int t = 8 * nt + 2 * tig + (i & 1);
            const int64_t row = row0 + gi + (i >= 2 ? 8 : 0);
            if (t >= n || row >= orows) continue;
            const float v = acc[nt][i] + (bias ? ldf(bias, bdt, row) : 0.0f);
            if constexpr (MODE == QF_NONE) {
                stf(y, ydt, (int64_t)t * o + row, v);
            } else if constexpr (MODE == QF_RES) { /* cuda_add(y, res, round(v)) */
                const int64_t e = (int64_t)t * o + row;
                const float r = __half2float(__ushort_as_half(__ldcg(reinterpret_cast<const unsigned short *>(fz.res) + e)));
                fz.y[0][e] = __float2half_rn(__fadd_rn(r, rndf(v, DTYPE_F16)));
            } else if constexpr (MODE == QF_SWIGLU) {
                /* op_matmul's g and u (round(acc + 0)), then silu_mul_kernel's expression */
                const float g = rndf(acc[nt][i] + 0.0f, DTYPE_F16), up = rndf(accu[nt][i] + 0.0f, DTYPE_F16);
                fz.y[0][(int64_t)t * fz.f + row] = __float2half_rn(silu_mul_f(g, up, DTYPE_F16));
            } else { /* QF_PARTS */
                int p = 0;
#pragma unroll
                for (int q = 1; q < RMSNORM_MATMUL_MAX_PARTS; q++)
                    if (q < fz.np && row >= fz.off[q]) p = q;
                const int64_t w0 = fz.off[p], pw = fz.off[p + 1] - w0;
                fz.y[p][(int64_t)t * pw + row - w0] = __float2half_rn(v);
            }
        }
}

template <int F, int NT, bool PDL, int W, int U, bool XP, int MINB, int MODE = QF_NONE, bool NORM = false>
static void qa_launch_t(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *w,
                        const struct tensor *bias, const struct qa_fuse *fzp = NULL)
{
    const int n = (int)x->shape[0];
    const int64_t k = x->shape[1], o = w->shape[0];
    const int64_t rb = (int64_t)dtype_row_bytes(w->dtype, k);
    struct qa_fuse fz;
    if (fzp) fz = *fzp;
    else memset(&fz, 0, sizeof fz);
    const int64_t tiles = ((MODE == QF_SWIGLU ? fz.f : o) + 15) / 16;
    const dim3 grid((unsigned)tiles), blk(W * 32);
    const void *bp = bias ? bias->data : NULL;
    const int bdt = bias ? (int)bias->dtype : 0;
    const __half *xp = (const __half *)x->data;
    const uint8_t *wp = (const uint8_t *)w->data;
    struct qa_nf4 nt;
    memcpy(nt.v, QUANT_NF4, sizeof nt.v);
    void *yp = y ? y->data : NULL;
    const int ydt = y ? (int)y->dtype : 0;
    constexpr auto kern = qa_kernel<F, NT, PDL, W, U, XP, MINB, MODE, NORM>;
    if (PDL) cuda_launch_pdl(c, kern, grid, blk, yp, ydt, xp, wp, rb, bp, bdt, n, k, o, nt, fz);
    else kern<<<grid, blk, 0, c->stream>>>(yp, ydt, xp, wp, rb, bp, bdt, n, k, o, nt, fz);
    KERNEL_CHECK();
}

template <int F, int NT, bool PDL>
static void qa_launch_s(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *w,
                        const struct tensor *bias, int shape)
{
    static_assert(QMMA_A_SHAPES == 6, "this switch and cuda_qmma_name list the same shapes");
    /* warps per block, steps in flight, x one step ahead, blocks per SM the registers must allow (2 of 8
     * warps: up to 128 registers; 3: 80; 4: 64). ptxas -v (CUDA 13, sm_90): no spills for Q4 / Q8; NF4 in
     * registers (16 registers of tables) spills in the capped shapes: 148-292 bytes in a8x3o3, 160 (n <= 8)
     * and 268 (n > 8) in a8x2o4 and a16x2, 20 in a8x2p at n > 8, none in a8x4 and a4x4. Shape 5 doubles the warps on a tile (16 x 2 steps, 64 registers, 2 blocks per SM):
     * the 4096-row matrices have 256 tiles, so 8-warp blocks leave half of an SM's warp slots empty. */
    switch (shape) {
    case 0: qa_launch_t<F, NT, PDL, 8, 2, true, 2>(c, y, x, w, bias); break;
    case 2: qa_launch_t<F, NT, PDL, 8, 3, false, 3>(c, y, x, w, bias); break;
    case 3: qa_launch_t<F, NT, PDL, 4, 4, false, 4>(c, y, x, w, bias); break;
    case 4: qa_launch_t<F, NT, PDL, 8, 2, false, 4>(c, y, x, w, bias); break;
    case 5: qa_launch_t<F, NT, PDL, 16, 2, false, 2>(c, y, x, w, bias); break;
    default: qa_launch_t<F, NT, PDL, 8, 4, false, 2>(c, y, x, w, bias); break;
    }
}

template <int F>
static void qa_launch(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *w,
                      const struct tensor *bias, int shape)
{
    const bool two = x->shape[0] > 8;
    if (c->pdl_q) {
        if (two) qa_launch_s<F, 2, true>(c, y, x, w, bias, shape);
        else qa_launch_s<F, 1, true>(c, y, x, w, bias, shape);
    } else {
        if (two) qa_launch_s<F, 2, false>(c, y, x, w, bias, shape);
        else qa_launch_s<F, 1, false>(c, y, x, w, bias, shape);
    }
}

/* QMMA_A_NF4T: NF4 through the older shared-table path, shape a8x2o4; not for Q4 / Q8 */
static bool qa_nf4t(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *w,
                    const struct tensor *bias)
{
    const int64_t n = x->shape[0], k = x->shape[1];
    if (c->code_arch < 80 || x->dtype != DTYPE_F16 || ((uintptr_t)x->data & 15) || n < 1 || n > 16 ||
        w->dtype != DTYPE_NF4 || !w->tiled)
        return false;
    const bool two = n > 8; /* shape 4 of qa_launch_s */
    if (c->pdl) {
        if (two) qa_launch_t<QA_NF4T, 2, true, 8, 2, false, 4>(c, y, x, w, bias);
        else qa_launch_t<QA_NF4T, 1, true, 8, 2, false, 4>(c, y, x, w, bias);
    } else {
        if (two) qa_launch_t<QA_NF4T, 2, false, 8, 2, false, 4>(c, y, x, w, bias);
        else qa_launch_t<QA_NF4T, 1, false, 8, 2, false, 4>(c, y, x, w, bias);
    }
    return true;
}

/* ---- the fused decode ops (one token) ----
 * Shapes: with the norm prologue 8 warps (norm_row_256's 256 threads): a8x2o4 for Q4 and Q8, a8x2p for NF4
 * (its a4x4 has 4 warps; H200 session 9: a8x2p 2,607 us a token against a4x4's 2,577); without it the
 * plain path's automatic shapes (a16x2 for Q4 / Q8 at k >= 8192, a8x2o4, NF4 a4x4). */
template <int F, int MODE, bool NORM, bool PDL>
static void qa_fused_f(struct cuda_ctx *c, const struct tensor *x, const struct tensor *w, const struct tensor *bias,
                       const struct qa_fuse *fz)
{
    if constexpr (NORM) {
        if constexpr (qa_is_nf4(F)) qa_launch_t<F, 1, PDL, 8, 2, true, 2, MODE, true>(c, NULL, x, w, bias, fz);
        else qa_launch_t<F, 1, PDL, 8, 2, false, 4, MODE, true>(c, NULL, x, w, bias, fz);
    } else if constexpr (qa_is_nf4(F)) {
        qa_launch_t<F, 1, PDL, 4, 4, false, 4, MODE, false>(c, NULL, x, w, bias, fz);
    } else {
        if (x->shape[1] >= 8192) qa_launch_t<F, 1, PDL, 16, 2, false, 2, MODE, false>(c, NULL, x, w, bias, fz);
        else qa_launch_t<F, 1, PDL, 8, 2, false, 4, MODE, false>(c, NULL, x, w, bias, fz);
    }
}

template <int MODE, bool NORM, bool PDL>
static void qa_fused_fmt(struct cuda_ctx *c, const struct tensor *x, const struct tensor *w, const struct tensor *bias,
                         const struct qa_fuse *fz)
{
    switch (w->dtype) {
    case DTYPE_Q4: qa_fused_f<QA_Q4, MODE, NORM, PDL>(c, x, w, bias, fz); break;
    case DTYPE_Q8: qa_fused_f<QA_Q8, MODE, NORM, PDL>(c, x, w, bias, fz); break;
    default: qa_fused_f<QA_NF4, MODE, NORM, PDL>(c, x, w, bias, fz); break;
    }
}

template <int MODE, bool NORM>
static void qa_fused_p(struct cuda_ctx *c, const struct tensor *x, const struct tensor *w, const struct tensor *bias,
                       const struct qa_fuse *fz)
{
    if (c->pdl_q) qa_fused_fmt<MODE, NORM, true>(c, x, w, bias, fz);
    else qa_fused_fmt<MODE, NORM, false>(c, x, w, bias, fz);
}

/* launches fused form MODE, with the norm when nw (the residual form has none), and counts it */
template <int MODE>
static void qa_fused_launch(struct cuda_ctx *c, const struct tensor *x, const struct tensor *w, const struct tensor *bias,
                            const struct tensor *nw, float eps, struct qa_fuse *fz)
{
    c->qfused_launches++;
    if constexpr (MODE != QF_RES) {
        if (nw) {
            fz->nw = nw->data;
            fz->nwdt = (int)nw->dtype;
            fz->eps = eps;
            qa_fused_p<MODE, true>(c, x, w, bias, fz);
            return;
        }
    }
    qa_fused_p<MODE, false>(c, x, w, bias, fz);
}

/* whether the fused forms take x (one F16 token, 16-byte aligned) and w (Q4 / NF4 with k % 128 == 0, Q8 with
 * k % 64 == 0), with the automatic kernel choice (a forced variant keeps the plain ops: the tests and the
 * bench compare kernels through them), and, with a norm, k <= QA_NORM_KMAX (backend.c has checked the
 * shapes and that the norm weight is a float tensor) */
static bool qa_fused_ok(const struct cuda_ctx *c, const struct tensor *x, const struct tensor *w, const struct tensor *nw)
{
    const int64_t k = x->shape[1];
    /* tiles: Q4 / NF4 with k % 128 == 0, Q8 with k % 64 == 0, rows % 16 == 0 (quant_tiles_ok) */
    return c->qmma == QMMA_AUTO && c->code_arch >= 80 && w->tiled && (!nw || k <= QA_NORM_KMAX) && x->dtype == DTYPE_F16 &&
           x->shape[0] == 1 && !((uintptr_t)x->data & 15);
}

/* With the norm, every block computes it before its first step: more than QA_NORM_WAVES waves of resident
 * blocks (4 an SM) pay it wave after wave, and the plain ops (one norm kernel, then the GEMV) are faster:
 * the lm_head's 8,016 tiles (H200 session 12: 218 us fused, where the plain q8 GEMV took 126 in session 10) */
#define QA_NORM_WAVES 2

bool cuda_qgemv_rmsnorm_matmul(struct cuda_ctx *c, struct tensor *const *ys, int np, const struct tensor *x,
                               const struct tensor *nw, float eps, const struct tensor *w)
{
    if (!qa_fused_ok(c, x, w, nw) || np > RMSNORM_MATMUL_MAX_PARTS) return false;
    if (nw && (w->shape[0] + 15) / 16 > (int64_t)QA_NORM_WAVES * 4 * c->n_sm) return false;
    struct qa_fuse fz;
    memset(&fz, 0, sizeof fz);
    for (int i = 0; i < np; i++) {
        if (ys[i]->dtype != DTYPE_F16) return false;
        fz.y[i] = (__half *)ys[i]->data;
        fz.off[i + 1] = fz.off[i] + ys[i]->shape[1];
    }
    fz.np = np;
    qa_fused_launch<QF_PARTS>(c, x, w, NULL, nw, eps, &fz);
    return true;
}

bool cuda_qgemv_rmsnorm_swiglu(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *nw,
                               float eps, const struct tensor *w)
{
    /* the up rows start at tile f / 16 */
    if (!qa_fused_ok(c, x, w, nw) || y->dtype != DTYPE_F16 || y->shape[1] % 16) return false;
    struct qa_fuse fz;
    memset(&fz, 0, sizeof fz);
    fz.y[0] = (__half *)y->data;
    fz.f = y->shape[1];
    qa_fused_launch<QF_SWIGLU>(c, x, w, NULL, nw, eps, &fz);
    return true;
}

bool cuda_qgemv_linear_res(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *w,
                           const struct tensor *bias, const struct tensor *res)
{
    if (!qa_fused_ok(c, x, w, NULL) || y->dtype != DTYPE_F16 || res->dtype != DTYPE_F16 ||
        (bias && bias->dtype != DTYPE_F16 && bias->dtype != DTYPE_BF16 && bias->dtype != DTYPE_F32))
        return false;
    struct qa_fuse fz;
    memset(&fz, 0, sizeof fz);
    fz.y[0] = (__half *)y->data;
    fz.res = (const __half *)res->data;
    qa_fused_launch<QF_RES>(c, x, w, bias, NULL, 0.0f, &fz);
    return true;
}

/* ---- F16 weights (cuda_qgemv_f16) ----
 * A lane's step is 16 bytes of row g and of row g + 8 (8 halves each), so F16 moves 16 weights per lane-step
 * where Q4 moves 64: four times the bytes per k, and a step has no dequantization to hide latency behind (2
 * mmas per N tile). So the F16 shapes keep more steps in flight, and every one loads x one step ahead (x of
 * 16 tokens at k = 14336 is 458 KB: it comes from L2, and a load at the step would put an L2 latency into
 * every step). The shapes (warps per block, steps in flight per lane, blocks per SM the registers allow) and
 * the bytes of weights in flight per SM when the SM holds that many blocks (32 B per lane-step):
 *   f8x4p   8 warps, 4 steps, 2 blocks (128 registers):  64 KB
 *   f8x8p   8 warps, 8 steps, 2 blocks (128 registers): 128 KB
 *   f16x3p 16 warps, 3 steps, 2 blocks (64 registers):   96 KB; a 4096-row matrix (256 tiles) still fills
 *           32 warps of each SM, where 8-warp blocks fill 16 (4 steps spill at n > 8: ptxas, CUDA 13, sm_90)
 *   f4x8p   4 warps, 8 steps, 4 blocks (128 registers): 128 KB, and 4 blocks per SM even out the last wave
 *           of the 6144- and 28672-row matrices (384 and 1792 tiles), but 256 tiles leave it 64 KB
 * (The single-token GEMV, which reaches 2.7-4.2 TB/s, keeps about 128 KB per SM in flight.) A step costs 31
 * static SASS instructions (tools/sass_count.sh: 1.9 per weight, far below the issue budget of a 4.8 TB/s F16
 * stream), about 8 of them IMADs that are most likely register moves: the mma's A quad pairs row g with row
 * g + 8, words that no single 16-byte load puts in consecutive registers. */
static const char *const QA_F16_NAMES[F16MMA_SHAPES] = {"f8x4p", "f8x8p", "f16x3p", "f4x8p"};
/* The default shape (F16MMA_AUTO). Not yet measured on a GPU: f8x8p has the most bytes in flight per SM
 * (128 KB at 16 warps) with no register cap below 128; the bench prints every shape beside cuBLAS. */
#define QA_F16_AUTO 1

template <int NT, bool PDL>
static void qa_launch_f16_s(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *w,
                            const struct tensor *bias, int shape)
{
    static_assert(F16MMA_SHAPES == 4, "this switch and QA_F16_NAMES list the same shapes");
    /* warps per block, steps in flight, x one step ahead, blocks per SM the registers must allow */
    switch (shape) {
    case 0: qa_launch_t<QA_F16, NT, PDL, 8, 4, true, 2>(c, y, x, w, bias); break;  /* 64 KB in flight per SM */
    case 2: qa_launch_t<QA_F16, NT, PDL, 16, 3, true, 2>(c, y, x, w, bias); break; /* 64 registers: 32 warps, 96 KB */
    case 3: qa_launch_t<QA_F16, NT, PDL, 4, 8, true, 4>(c, y, x, w, bias); break;  /* 4 small blocks per SM, 128 KB */
    default: qa_launch_t<QA_F16, NT, PDL, 8, 8, true, 2>(c, y, x, w, bias); break; /* 128 KB */
    }
}

bool cuda_qgemv_f16(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *w,
                    const struct tensor *bias)
{
    const int v = c->f16mma;
    if (v != F16MMA_AUTO && (v < F16MMA_S0 || v >= F16MMA_S0 + F16MMA_SHAPES)) return false;
    const int64_t n = x->shape[0], k = x->shape[1];
    /* one token stays on the GEMV (cuda_gemv.cu, 2.7-4.2 TB/s on the H200) unless a shape is forced */
    if (c->code_arch < 80 || w->dtype != DTYPE_F16 || x->dtype != DTYPE_F16 || w->ndim != 2 || k % qa_ks(QA_F16) ||
        ((uintptr_t)x->data & 15) || ((uintptr_t)w->data & 15) || n < (v == F16MMA_AUTO ? 2 : 1) || n > 16)
        return false;
    const int shape = v == F16MMA_AUTO ? QA_F16_AUTO : v - F16MMA_S0;
    const bool two = n > 8;
    if (c->pdl) {
        if (two) qa_launch_f16_s<2, true>(c, y, x, w, bias, shape);
        else qa_launch_f16_s<1, true>(c, y, x, w, bias, shape);
    } else {
        if (two) qa_launch_f16_s<2, false>(c, y, x, w, bias, shape);
        else qa_launch_f16_s<1, false>(c, y, x, w, bias, shape);
    }
    c->f16mma_launches++;
    return true;
}

bool cuda_qgemv_a(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *w,
                               const struct tensor *bias)
{
    const int v = c->qmma;
    if (v == QMMA_A_NF4T) return qa_nf4t(c, y, x, w, bias);
    if (v != QMMA_AUTO && (v < QMMA_A0 || v >= QMMA_A0 + QMMA_A_SHAPES)) return false;
    const int64_t n = x->shape[0], k = x->shape[1];
    if (c->code_arch < 80 || x->dtype != DTYPE_F16 || ((uintptr_t)x->data & 15) || n < 1 || n > 16) return false;
    const int shape = v != QMMA_AUTO ? v - QMMA_A0 : n == 1 && k >= 8192 ? QA_AUTO_LONG_K : QA_AUTO;
    /* the kernel reads 16-row tiles (quant.h): Q4 / NF4 with k % 128 == 0 (so the group is 64), Q8 with k % 64
     * == 0, rows % 16 == 0; row records take the kernels of cuda_quant.cu */
    if (!w->tiled) return false;
    if (w->dtype == DTYPE_Q4) {
        qa_launch<QA_Q4>(c, y, x, w, bias, shape);
        return true;
    }
    if (w->dtype == DTYPE_Q8) {
        qa_launch<QA_Q8>(c, y, x, w, bias, shape);
        return true;
    }
    if (w->dtype == DTYPE_NF4) {
        qa_launch<QA_NF4>(c, y, x, w, bias, v == QMMA_AUTO ? QA_AUTO_NF4 : shape);
        return true;
    }
    return false;
}

/* A name for a cuda_set_qmma value, for the bench's lines. */
extern "C" const char *cuda_qmma_name(int v)
{
    static const char *const a[QMMA_A_SHAPES] = {"a8x2p", "a8x4", "a8x3o3", "a4x4", "a8x2o4", "a16x2"};
    static const char *const b[5] = {"simt", "auto", "b8x2x2", "b8x1x4", "b4x2x2"};
    if (v >= QMMA_A0 && v < QMMA_A0 + QMMA_A_SHAPES) return a[v - QMMA_A0];
    if (v == QMMA_A_NF4T) return "a8x2o4t";
    return v >= 0 && v < 5 ? b[v] : "?";
}

/* A name for a cuda_set_f16mma value: "blas", "auto" or the shape's; "?" for others. */
extern "C" const char *cuda_f16mma_name(int v)
{
    if (v == F16MMA_OFF) return "blas";
    if (v == F16MMA_AUTO) return "auto";
    return v >= F16MMA_S0 && v < F16MMA_S0 + F16MMA_SHAPES ? QA_F16_NAMES[v - F16MMA_S0] : "?";
}

/* The shape F16MMA_AUTO runs, as a cuda_set_f16mma value (the bench marks it). */
extern "C" int cuda_f16mma_default(void) { return F16MMA_S0 + QA_F16_AUTO; }
