/* cuda_quant.cu: matmuls whose weight is quantized (DTYPE_Q8, DTYPE_Q4, DTYPE_NF4 row records, or 16-row
 * tiles where w->tiled: every kernel here reads both; layouts in docs/QUANT.md and quant.h, semantics in
 * backend.h: the op on the F16 dequantization).
 * Decode (n <= 16, F16 x): Q4, Q8 and NF4 go to cuda_qgemv.cu (weights as the mma's A operand) where it
 * applies; otherwise (k not a multiple of its step, or another cuda_set_qmma variant) the tensor-core kernel
 * below (weights as the mma's B operand, n <= 16) or, n <= 8, a CUDA-core GEMV that reads each record once
 * with 16-byte streaming loads, dequantizes 8 weights at a time in registers to the exact F16 values the
 * CPU twin uses (Q8 and Q4 as half2 multiplies of code and scale, exact to f16(code * scale); NF4 as the f32
 * product table * absmax rounded to half), and accumulates x * w in fp32 for every token; warp-shuffle
 * reduction, the bias added in fp32 before the one rounding to y's dtype. Launched with PDL when the
 * context asks for it (weights are loaded before griddepcontrol.wait). No scratch, no host sync:
 * graph-capturable.
 * n > 16 (prefill, vision): the weight is dequantized to F16 into a workspace (SCRATCH_QW) in row
 * tiles of at most QUANT_DEQ_TILE_BYTES (backend.h) and the fp16 GEMM path of cuda_gemv.cu runs on it
 * (fused cuBLASLt epilogues included when the whole matrix fits one tile); a matrix larger than a
 * tile (only the q8 lm_head at n > 16) is done tile by tile, each tile's output columns going through
 * SCRATCH_QY (also bounded by the tile size) into y. */
#include "cuda/cuda_quant.cuh"

#include "quant.h"

#define QGEMV_MAX_TOKENS 8
#define QGEMV_WARPS 8
#define QGEMV_UNROLL 4 /* 16-byte weight loads in flight per lane */

enum { QF_Q8 = 0, QF_Q4 = 1, QF_NF4 = 2 };

static int qfmt_of(enum dtype t)
{
    switch (t) {
    case DTYPE_Q8: return QF_Q8;
    case DTYPE_Q4: return QF_Q4;
    case DTYPE_NF4: return QF_NF4;
    default: CHECKF(0, "cuda quant: dtype %s is not quantized", dtype_name(t));
    }
    return 0;
}

/* bytes of codes at the start of a record of k values */
__host__ __device__ __forceinline__ int64_t q_code_bytes(int f, int64_t k) { return f == QF_Q8 ? k : k / 2; }

/* the NF4 table, passed by value to the kernels (copied into shared memory there) */
struct nf4_tab {
    float v[16];
};

__device__ __forceinline__ __half2 u2h2(uint32_t u)
{
    __half2 h;
    memcpy(&h, &u, 4);
    return h;
}

/* ---- 8 weights from their codes: out[p] = the half2 pair (2p, 2p+1) of the octet ---- */

/* Q8: 8 int8 codes (lo: elements 0..3, hi: 4..7). Byte b (q + 128 after the xor) becomes the half
 * 1024 + b by placing 0x64 above it; minus 1152 gives q exactly; one half multiply by s. */
__device__ __forceinline__ void dq_q8(uint32_t lo, uint32_t hi, __half2 s2, __half2 out[4])
{
    const __half2 k1152 = u2h2(0x64806480u);
    lo ^= 0x80808080u;
    hi ^= 0x80808080u;
    out[0] = __hmul2(__hsub2(u2h2(__byte_perm(lo, 0x64646464u, 0x4140)), k1152), s2);
    out[1] = __hmul2(__hsub2(u2h2(__byte_perm(lo, 0x64646464u, 0x4342)), k1152), s2);
    out[2] = __hmul2(__hsub2(u2h2(__byte_perm(hi, 0x64646464u, 0x4140)), k1152), s2);
    out[3] = __hmul2(__hsub2(u2h2(__byte_perm(hi, 0x64646464u, 0x4342)), k1152), s2);
}

/* Q4: one word of the interleaved nibble order (QUANT.md): (u >> 4p) & 0x000f000f holds the pair
 * (2p, 2p+1); | 0x6400 makes each half 1024 + c, minus 1032 gives c - 8, times s. */
__device__ __forceinline__ void dq_q4(uint32_t u, __half2 s2, __half2 out[4])
{
    const __half2 k1032 = u2h2(0x64086408u);
#pragma unroll
    for (int p = 0; p < 4; p++) out[p] = __hmul2(__hsub2(u2h2(((u >> (4 * p)) & 0x000f000fu) | 0x64006400u), k1032), s2);
}

/* NF4: bitsandbytes' order (byte b: element 2b in the high nibble, 2b+1 in the low one);
 * w = half(f32(NF4[c] * absmax)). tab: the table in shared memory. */
__device__ __forceinline__ void dq_nf4(uint32_t u, float a, const float *tab, __half2 out[4])
{
#pragma unroll
    for (int p = 0; p < 4; p++) {
        const uint32_t b = (u >> (8 * p)) & 0xffu;
        out[p] = __halves2half2(__float2half_rn(__fmul_rn(tab[b >> 4], a)), __float2half_rn(__fmul_rn(tab[b & 15], a)));
    }
}

/* The scale of group gi of a record as a half2 (Q8 / Q4), or the f32 absmax (NF4). */
__device__ __forceinline__ __half2 q_scale_h2(const uint8_t *scales, int64_t gi)
{
    const __half s = __ldg(reinterpret_cast<const __half *>(scales) + gi);
    return __halves2half2(s, s);
}
__device__ __forceinline__ float q_absmax(const uint8_t *scales, int64_t gi)
{
    return __ldg(reinterpret_cast<const float *>(scales) + gi);
}

/* Where a row's bytes lie (quant.h): in its record (rb apart), or in its 16-row tile. For row r:
 *   q_row_codes  its first 16 code bytes (records: the record; tiles: the tile + 64 (r % 16)), and
 *   q_cvec       the v-th 16-byte vector of its codes from there (tiles: 64-byte runs 1 KiB apart);
 *   q_row_scales the base its scales are indexed from by q_sidx (tiles: the tile's scales + 2 (r % 16) sb for
 *                groups of 64, whose steps' pairs lie 32 sb apart; Q8's one scale at + 2 (r % 16)). */
__device__ __forceinline__ const uint8_t *q_row_codes(const uint8_t *w, int64_t r, int64_t rb, bool tl)
{
    return w + (tl ? quant_tile_code(r, 0, rb) : r * rb);
}
__device__ __forceinline__ const uint4 *q_cvec(const uint8_t *codes, int64_t v, bool tl)
{
    return reinterpret_cast<const uint4 *>(codes) + (tl ? (v >> 2) * 64 + (v & 3) : v);
}
template <int F>
__device__ __forceinline__ const uint8_t *q_row_scales(const uint8_t *w, int64_t r, int64_t rb, int64_t cb, bool tl)
{
    return w + (tl ? quant_tile_scale(r, 0, rb, cb, F == QF_NF4 ? 4 : 2, F == QF_Q8) : r * rb + cb);
}
__device__ __forceinline__ int64_t q_sidx(int64_t gi, bool tl) { return tl ? 32 * (gi >> 1) + (gi & 1) : gi; }

/* Dequantizes the octet (8 weights starting at element j, j % 8 == 0) whose code bytes are words
 * w0 (and w1 for Q8) into wf[8] floats. g: the record's scale group; scales from q_row_scales. */
template <int F>
__device__ __forceinline__ void dq_octet(uint32_t w0, uint32_t w1, const uint8_t *scales, int64_t j, int64_t g,
                                         bool tl, const float *tab, float wf[8])
{
    __half2 h[4];
    if constexpr (F == QF_Q8) dq_q8(w0, w1, q_scale_h2(scales, 0), h);
    else if constexpr (F == QF_Q4) dq_q4(w0, q_scale_h2(scales, q_sidx(j / g, tl)), h);
    else dq_nf4(w0, q_absmax(scales, q_sidx(j / g, tl)), tab, h);
#pragma unroll
    for (int p = 0; p < 4; p++) {
        const float2 f = __half22float2(h[p]);
        wf[2 * p] = f.x;
        wf[2 * p + 1] = f.y;
    }
}

/* acc[t] += w · x[t, j .. j+7] */
template <typename X, int NT, bool PDL>
__device__ __forceinline__ void q_fma8(float *acc, const float wf[8], const X *x, int n, int64_t k, int64_t j)
{
#pragma unroll
    for (int t = 0; t < NT; t++) {
        if (t < n) {
            float xf[8];
            load_vec<X, 8, PDL>(x + t * k + j, xf);
#pragma unroll
            for (int e = 0; e < 8; e++) acc[t] = fmaf(wf[e], xf[e], acc[t]);
        }
    }
}

/* one 16-byte vector of codes (index v of the record): 2 octets of Q8, 4 of Q4 / NF4 */
template <int F, typename X, int NT, bool PDL>
__device__ __forceinline__ void q_vec(float *acc, uint4 c, int64_t v, const uint8_t *scales, int64_t g, bool tl,
                                      const float *tab, const X *x, int n, int64_t k)
{
    float wf[8];
    if constexpr (F == QF_Q8) {
        const int64_t j = v * 16;
        dq_octet<F>(c.x, c.y, scales, j, g, tl, tab, wf);
        q_fma8<X, NT, PDL>(acc, wf, x, n, k, j);
        dq_octet<F>(c.z, c.w, scales, j + 8, g, tl, tab, wf);
        q_fma8<X, NT, PDL>(acc, wf, x, n, k, j + 8);
    } else {
        const int64_t j = v * 32;
        dq_octet<F>(c.x, 0, scales, j, g, tl, tab, wf);
        q_fma8<X, NT, PDL>(acc, wf, x, n, k, j);
        dq_octet<F>(c.y, 0, scales, j + 8, g, tl, tab, wf);
        q_fma8<X, NT, PDL>(acc, wf, x, n, k, j + 8);
        dq_octet<F>(c.z, 0, scales, j + 16, g, tl, tab, wf);
        q_fma8<X, NT, PDL>(acc, wf, x, n, k, j + 16);
        dq_octet<F>(c.w, 0, scales, j + 24, g, tl, tab, wf);
        q_fma8<X, NT, PDL>(acc, wf, x, n, k, j + 24);
    }
}

/* y[n, o] = x[n, k] · W16^T (+ bias). A block of 8 warps owns rpb rows (wpr = 8 / rpb warps per row,
 * splitting the row's 16-byte code vectors); rb: record bytes, g: scale group. Requires x 16-byte
 * aligned (k % 16 == 0 always holds for quantized rows). */
template <int F, typename X, int NT, bool PDL>
__global__ void __launch_bounds__(QGEMV_WARPS * 32)
qgemv_kernel(void *y, int ydt, const X *x, const uint8_t *w, int64_t rb, int64_t g, bool tl, const void *bias, int bdt,
             int n, int64_t k, int64_t o, int rpb, struct nf4_tab nt)
{
    __shared__ float red[QGEMV_WARPS][NT];
    __shared__ float tab[16];
    if (F == QF_NF4 && threadIdx.x < 16) tab[threadIdx.x] = nt.v[threadIdx.x];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wpr = QGEMV_WARPS / rpb, rloc = warp / wpr, wr = warp % wpr;
    const int64_t row = (int64_t)blockIdx.x * rpb + rloc;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    pdl_trigger();
    const int64_t cb = q_code_bytes(F, k);
    const int64_t rr = row < o ? row : 0;
    const uint8_t *rec = q_row_codes(w, rr, rb, tl);
    const uint8_t *scales = q_row_scales<F>(w, rr, rb, cb, tl);
    const int64_t nv = cb / 16, stride = 32 * (int64_t)wpr;
    int64_t v = (int64_t)wr * 32 + lane;
    uint4 wv[QGEMV_UNROLL];
    /* the first batch of codes is loaded before waiting for the previous kernel (PDL): weights are
     * constant */
    if (row < o)
#pragma unroll
        for (int u = 0; u < QGEMV_UNROLL; u++)
            if (v + u * stride < nv) wv[u] = __ldcs(q_cvec(rec, v + u * stride, tl));
    if (F == QF_NF4) __syncthreads(); /* tab */
    pdl_wait();
    if (row < o) {
        while (v < nv) {
#pragma unroll
            for (int u = 0; u < QGEMV_UNROLL; u++)
                if (v + u * stride < nv) q_vec<F, X, NT, PDL>(acc, wv[u], v + u * stride, scales, g, tl, tab, x, n, k);
            v += QGEMV_UNROLL * stride;
#pragma unroll
            for (int u = 0; u < QGEMV_UNROLL; u++)
                if (v + u * stride < nv) wv[u] = __ldcs(q_cvec(rec, v + u * stride, tl));
        }
        /* Q4 / NF4 rows whose code bytes are not a multiple of 16 (k % 32 == 16; never tiled): the last 8 bytes */
        if (F != QF_Q8 && (cb & 15) && wr == 0 && lane == 0) {
            const uint2 tail = __ldcs(reinterpret_cast<const uint2 *>(rec + nv * 16));
            float wf[8];
            const int64_t j = nv * 32;
            dq_octet<F>(tail.x, 0, scales, j, g, false, tab, wf);
            q_fma8<X, NT, PDL>(acc, wf, x, n, k, j);
            dq_octet<F>(tail.y, 0, scales, j + 8, g, false, tab, wf);
            q_fma8<X, NT, PDL>(acc, wf, x, n, k, j + 8);
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = warp_sum(acc[t]);
    if (wpr > 1) { /* uniform over the block */
        if (lane == 0)
#pragma unroll
            for (int t = 0; t < NT; t++) red[warp][t] = acc[t];
        __syncthreads();
        if (wr == 0 && lane == 0)
#pragma unroll
            for (int t = 0; t < NT; t++) {
                float s = 0;
                for (int q = 0; q < wpr; q++) s += red[warp + q][t];
                acc[t] = s;
            }
    }
    if (row < o && wr == 0 && lane == 0) {
        const float b = bias ? ldf(bias, bdt, row) : 0.0f;
#pragma unroll
        for (int t = 0; t < NT; t++)
            if (t < n) stf(y, ydt, (int64_t)t * o + row, acc[t] + b);
    }
}

/* ---- the tensor-core GEMV: n <= 16 tokens, F16 x ----
 * One mma.sync m16n8k16 (f16 in, f32 accumulate) takes A = x [16 tokens (zero-padded), 16 k] and
 * B = W16^T [16 k, 8 weight rows]. A block of W warps owns R tiles of 8 rows; warp wi takes the K steps
 * wi, wi + W, ... Lane (g = lane / 4, tig = lane % 4) loads 16 bytes of codes of row g of each tile per
 * step: QMMA_KC(F) consecutive k of the row, the step's tig-th chunk. A dot product does not care in
 * which order k is summed, so the mma's logical k is mapped onto the lane's own chunk: mma m of the
 * step takes, for B, the pairs 2m and 2m + 1 of its dequantized chunk (chunk k 4m .. 4m + 3, the pair
 * order dq_q8 / dq_q4 / dq_nf4 produce) and, for A, x[token][chunk k 4m .. 4m + 3] of tokens g and
 * g + 8: one 8-byte load of consecutive halves per token. Every weight is dequantized exactly once, to
 * the F16 value of the CPU twin, and never converted to f32; x is read straight from global memory (L1),
 * once per 8 weight rows instead of once per row. The warps' partial sums meet in shared memory. */
#define QMMA_MAX_TOKENS 16

__host__ __device__ constexpr int qmma_kc(int f) { return f == QF_Q8 ? 16 : 32; } /* k per 16-byte chunk */

__device__ __forceinline__ uint32_t h2u(__half2 h)
{
    uint32_t u;
    memcpy(&u, &h, 4);
    return u;
}

template <int F, bool HI, bool PDL, int W, int U, int R>
__global__ void __launch_bounds__(W * 32)
qmma_kernel(void *y, int ydt, const __half *x, const uint8_t *w, int64_t rb, int64_t g, bool tl, const void *bias,
            int bdt, int n, int64_t k, int64_t o, struct nf4_tab nt)
{
    constexpr int KC = qmma_kc(F);             /* k per lane chunk */
    constexpr int NCU = R >= 4 ? 1 : 4 / R;    /* accumulator chains per tile: NCU * R independent mma chains */
    constexpr int SW = U * W;                  /* steps per round of the block */
    __shared__ float red[W > 1 ? W - 1 : 1][R][32][4];
    __shared__ float tab[16];
    if (F == QF_NF4 && threadIdx.x < 16) tab[threadIdx.x] = nt.v[threadIdx.x];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gi = lane >> 2, tig = lane & 3;
    const int64_t row0 = (int64_t)blockIdx.x * 8 * R, cb = q_code_bytes(F, k), steps = k / (4 * KC);
    const uint4 *codes[R];
    const uint8_t *scales[R];
#pragma unroll
    for (int r = 0; r < R; r++) { /* tile r: rows row0 + 8r + gi (the last row stands in past o) */
        const int64_t row = row0 + 8 * r + gi < o ? row0 + 8 * r + gi : o - 1;
        codes[r] = reinterpret_cast<const uint4 *>(q_row_codes(w, row, rb, tl)) + tig;
        scales[r] = q_row_scales<F>(w, row, rb, cb, tl);
    }
    const int cst = tl ? 64 : 4; /* uint4 between steps: 1 KiB runs of a tile, or the record's next 64 bytes */
    if (F == QF_NF4) __syncthreads(); /* tab */
    const __half *__restrict__ x0 = x + (int64_t)gi * k + tig * KC;
    const __half *__restrict__ x1 = x0 + 8 * k;
    const bool has0 = gi < n, has1 = HI && gi + 8 < n;
    __half2 s8[R];
#pragma unroll
    for (int r = 0; r < R; r++) s8[r] = F == QF_Q8 ? q_scale_h2(scales[r], 0) : __half2();
    /* U steps x R tiles of codes (and their scales) in flight per lane, the next round loaded while this
     * one is used; x is loaded once per step for all R tiles */
    float acc[NCU * R][4];
    uint4 cv[U][R];
    uint32_t sv[U][R]; /* the lane's scale: F16 bits (Q4) or F32 bits (NF4) */
#pragma unroll
    for (int u = 0; u < U; u++)
#pragma unroll
        for (int r = 0; r < R; r++) {
            cv[u][r] = make_uint4(0, 0, 0, 0);
            sv[u][r] = 0;
        }
#pragma unroll
    for (int c = 0; c < NCU * R; c++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[c][i] = 0.0f;
    auto load = [&](int64_t s0, uint4 (*c)[R], uint32_t (*sc)[R]) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t s = s0 + (int64_t)u * W;
            if (s < steps) {
                const int64_t gidx = q_sidx((s * 4 * KC + tig * KC) / g, tl);
#pragma unroll
                for (int r = 0; r < R; r++) {
                    c[u][r] = __ldcs(codes[r] + s * cst);
                    if (F == QF_Q4) sc[u][r] = __ldg(reinterpret_cast<const unsigned short *>(scales[r]) + gidx);
                    else if (F == QF_NF4) sc[u][r] = __float_as_uint(q_absmax(scales[r], gidx));
                }
            }
        }
    };
    load(warp, cv, sv);
    if (PDL) pdl_wait(); /* x is the previous kernel's output; the weights are not */
    for (int64_t s0 = warp; s0 < steps; s0 += SW) {
        uint4 nc[U][R];
        uint32_t ns[U][R];
        load(s0 + SW, nc, ns);
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int64_t s = s0 + (int64_t)u * W;
            if (s >= steps) break;
            const int64_t kl = s * 4 * KC; /* x offset of the lane's chunk (x0, x1 include tig * KC) */
            uint4 xa[KC / 8], xb[KC / 8];
#pragma unroll
            for (int oc = 0; oc < KC / 8; oc++) {
                xa[oc] = has0 ? __ldg(reinterpret_cast<const uint4 *>(x0 + kl + 8 * oc)) : make_uint4(0, 0, 0, 0);
                xb[oc] = has1 ? __ldg(reinterpret_cast<const uint4 *>(x1 + kl + 8 * oc)) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int r = 0; r < R; r++) {
                const uint32_t wd[4] = {cv[u][r].x, cv[u][r].y, cv[u][r].z, cv[u][r].w};
                __half2 sc = s8[r];
                if (F == QF_Q4) {
                    const __half hs = __ushort_as_half((unsigned short)sv[u][r]);
                    sc = __halves2half2(hs, hs);
                }
                float *ac = acc[(u % NCU) * R + r];
#pragma unroll
                for (int oc = 0; oc < KC / 8; oc++) { /* octets of the chunk */
                    __half2 h[4];
                    if constexpr (F == QF_Q8) dq_q8(wd[2 * oc], wd[2 * oc + 1], sc, h);
                    else if constexpr (F == QF_Q4) dq_q4(wd[oc], sc, h);
                    else dq_nf4(wd[oc], __uint_as_float(sv[u][r]), tab, h);
                    mma_m16n8k16(ac, xa[oc].x, xb[oc].x, xa[oc].y, xb[oc].y, h2u(h[0]), h2u(h[1]));
                    mma_m16n8k16(ac, xa[oc].z, xb[oc].z, xa[oc].w, xb[oc].w, h2u(h[2]), h2u(h[3]));
                }
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int r = 0; r < R; r++) {
                cv[u][r] = nc[u][r];
                sv[u][r] = ns[u][r];
            }
    }
    pdl_trigger(); /* the next kernel may start its weight loads during this one's reduction */
#pragma unroll
    for (int c = R; c < NCU * R; c++)
#pragma unroll
        for (int i = 0; i < 4; i++) acc[c % R][i] += acc[c][i];
    /* acc[r]: tile r's [token gi][rows 2 tig, 2 tig + 1] and [token gi + 8][the same rows] */
    if (W > 1) {
        if (warp > 0)
#pragma unroll
            for (int r = 0; r < R; r++)
#pragma unroll
                for (int i = 0; i < 4; i++) red[warp - 1][r][lane][i] = acc[r][i];
        __syncthreads();
        if (warp != 0) return;
#pragma unroll
        for (int q = 0; q < W - 1; q++)
#pragma unroll
            for (int r = 0; r < R; r++)
#pragma unroll
                for (int i = 0; i < 4; i++) acc[r][i] += red[q][r][lane][i];
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int t = gi + (i >= 2 ? 8 : 0);
            const int64_t row = row0 + 8 * r + 2 * tig + (i & 1);
            if (t < n && row < o) stf(y, ydt, (int64_t)t * o + row, acc[r][i] + (bias ? ldf(bias, bdt, row) : 0.0f));
        }
}

/* dst[r, :] = W16 of rows r of w (F16 bits), one thread per octet */
template <int F>
__global__ void qdequant_kernel(__half *dst, const uint8_t *w, int64_t rb, int64_t g, bool tl, int64_t k, int64_t rows,
                                struct nf4_tab nt)
{
    __shared__ float tab[16];
    if (F == QF_NF4) {
        if (threadIdx.x < 16) tab[threadIdx.x] = nt.v[threadIdx.x];
        __syncthreads();
    }
    const int64_t per_row = k / 8, total = rows * per_row, cb = q_code_bytes(F, k);
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / per_row, q = i % per_row, j = q * 8;
        /* the octet's code bytes (8 or 4: never across a 64-byte run of a tile) */
        const int64_t p = F == QF_Q8 ? j : j / 2;
        const uint8_t *cp = w + (tl ? quant_tile_code(r, p, rb) : r * rb + p);
        const uint8_t *scales = q_row_scales<F>(w, r, rb, cb, tl);
        uint32_t w0, w1 = 0;
        if constexpr (F == QF_Q8) {
            const uint2 c = __ldg(reinterpret_cast<const uint2 *>(cp));
            w0 = c.x;
            w1 = c.y;
        } else {
            w0 = __ldg(reinterpret_cast<const uint32_t *>(cp));
        }
        __half2 h[4];
        if constexpr (F == QF_Q8) dq_q8(w0, w1, q_scale_h2(scales, 0), h);
        else if constexpr (F == QF_Q4) dq_q4(w0, q_scale_h2(scales, q_sidx(j / g, tl)), h);
        else dq_nf4(w0, q_absmax(scales, q_sidx(j / g, tl)), tab, h);
        uint4 out;
        memcpy(&out.x, &h[0], 4);
        memcpy(&out.y, &h[1], 4);
        memcpy(&out.z, &h[2], 4);
        memcpy(&out.w, &h[3], 4);
        reinterpret_cast<uint4 *>(dst + r * k)[q] = out;
    }
}

/* ---- host side ---- */

static struct nf4_tab q_tab(void)
{
    struct nf4_tab t;
    memcpy(t.v, QUANT_NF4, sizeof t.v);
    return t;
}

/* Rows per block: wpr warps per row so that a lane has about QGEMV_UNROLL vectors to load. */
static int qgemv_rows_per_block(int64_t nv)
{
    int wpr = 1;
    while (wpr < QGEMV_WARPS && nv > (int64_t)wpr * 32 * QGEMV_UNROLL) wpr *= 2;
    return QGEMV_WARPS / wpr;
}

template <int F, typename X, bool PDL>
static void qgemv_launch_x(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *w,
                           const struct tensor *bias, int rpb)
{
    const int n = (int)x->shape[0];
    const int64_t k = x->shape[1], o = w->shape[0];
    const int64_t rb = (int64_t)dtype_row_bytes(w->dtype, k), g = quant_group(w->dtype, k);
    const unsigned grid = (unsigned)((o + rpb - 1) / rpb);
    const dim3 blk(QGEMV_WARPS * 32);
    void *yp = y->data;
    const int ydt = y->dtype;
    const X *xp = (const X *)x->data;
    const uint8_t *wp = (const uint8_t *)w->data;
    const bool tl = w->tiled;
    const void *bp = bias ? bias->data : NULL;
    const int bdt = bias ? (int)bias->dtype : 0;
    const struct nf4_tab nt = q_tab();
    if (PDL) {
        if (n == 1) cuda_launch_pdl(c, qgemv_kernel<F, X, 1, PDL>, dim3(grid), blk, yp, ydt, xp, wp, rb, g, tl, bp, bdt, n, k, o, rpb, nt);
        else if (n == 2) cuda_launch_pdl(c, qgemv_kernel<F, X, 2, PDL>, dim3(grid), blk, yp, ydt, xp, wp, rb, g, tl, bp, bdt, n, k, o, rpb, nt);
        else if (n <= 4) cuda_launch_pdl(c, qgemv_kernel<F, X, 4, PDL>, dim3(grid), blk, yp, ydt, xp, wp, rb, g, tl, bp, bdt, n, k, o, rpb, nt);
        else cuda_launch_pdl(c, qgemv_kernel<F, X, 8, PDL>, dim3(grid), blk, yp, ydt, xp, wp, rb, g, tl, bp, bdt, n, k, o, rpb, nt);
        return;
    }
    if (n == 1) qgemv_kernel<F, X, 1, PDL><<<grid, blk, 0, c->stream>>>(yp, ydt, xp, wp, rb, g, tl, bp, bdt, n, k, o, rpb, nt);
    else if (n == 2) qgemv_kernel<F, X, 2, PDL><<<grid, blk, 0, c->stream>>>(yp, ydt, xp, wp, rb, g, tl, bp, bdt, n, k, o, rpb, nt);
    else if (n <= 4) qgemv_kernel<F, X, 4, PDL><<<grid, blk, 0, c->stream>>>(yp, ydt, xp, wp, rb, g, tl, bp, bdt, n, k, o, rpb, nt);
    else qgemv_kernel<F, X, 8, PDL><<<grid, blk, 0, c->stream>>>(yp, ydt, xp, wp, rb, g, tl, bp, bdt, n, k, o, rpb, nt);
    KERNEL_CHECK();
}

template <int F>
static void qgemv_launch(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *w,
                         const struct tensor *bias, int rpb)
{
    switch (x->dtype) {
    case DTYPE_F16:
        /* PDL only for F16 activations (the model's case): fewer kernel instances */
        if (c->pdl_q) qgemv_launch_x<F, __half, true>(c, y, x, w, bias, rpb);
        else qgemv_launch_x<F, __half, false>(c, y, x, w, bias, rpb);
        break;
    default: qgemv_launch_x<F, float, false>(c, y, x, w, bias, rpb); break;
    }
}

/* The tensor-core GEMV applies: sm_80+ (mma.sync m16n8k16), F16 x 16-byte aligned, n <= 16, whole
 * 4-lane steps of k and one scale group per lane chunk. */
static bool qmma_ok(const struct cuda_ctx *c, const struct tensor *x, const struct tensor *w)
{
    const int f = qfmt_of(w->dtype);
    const int64_t n = x->shape[0], k = x->shape[1], kc = qmma_kc(f);
    return c->qmma && c->code_arch >= 80 && x->dtype == DTYPE_F16 && ((uintptr_t)x->data & 15) == 0 && n >= 1 &&
           n <= QMMA_MAX_TOKENS && k % (4 * kc) == 0 && (f == QF_Q8 || quant_group(w->dtype, k) % kc == 0);
}

template <int F, bool HI, bool PDL, int W, int U, int R>
static void qmma_launch_t(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *w,
                          const struct tensor *bias)
{
    const int n = (int)x->shape[0];
    const int64_t k = x->shape[1], o = w->shape[0];
    const int64_t rb = (int64_t)dtype_row_bytes(w->dtype, k), g = quant_group(w->dtype, k);
    const dim3 grid((unsigned)((o + 8 * R - 1) / (8 * R))), blk(W * 32);
    const void *bp = bias ? bias->data : NULL;
    const int bdt = bias ? (int)bias->dtype : 0;
    const __half *xp = (const __half *)x->data;
    const uint8_t *wp = (const uint8_t *)w->data;
    if (PDL) cuda_launch_pdl(c, qmma_kernel<F, HI, PDL, W, U, R>, grid, blk, y->data, (int)y->dtype, xp, wp, rb, g, w->tiled, bp, bdt, n, k, o, q_tab());
    else qmma_kernel<F, HI, PDL, W, U, R><<<grid, blk, 0, c->stream>>>(y->data, (int)y->dtype, xp, wp, rb, g, w->tiled, bp, bdt, n, k, o, q_tab());
    KERNEL_CHECK();
}

template <int F, bool HI, bool PDL>
static void qmma_launch_v(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *w,
                          const struct tensor *bias)
{
    /* warps per block x steps in flight per warp x 8-row tiles per block; 1 is the default (for NF4,
     * which QMMA_AUTO sends here, 8x2x2: the fastest NF4 decode step on the H200 in session 7), 2.. the
     * bench's alternatives (cuda_set_qmma) */
    switch (c->qmma == QMMA_AUTO && F == QF_NF4 ? 2 : c->qmma) {
    case 2: qmma_launch_t<F, HI, PDL, 8, 2, 2>(c, y, x, w, bias); break;
    case 3: qmma_launch_t<F, HI, PDL, 8, 1, 4>(c, y, x, w, bias); break;
    case 4: qmma_launch_t<F, HI, PDL, 4, 2, 2>(c, y, x, w, bias); break;
    default: qmma_launch_t<F, HI, PDL, 8, 2, 1>(c, y, x, w, bias); break;
    }
}

template <int F>
static void qmma_launch(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *w,
                        const struct tensor *bias)
{
    const bool hi = x->shape[0] > 8;
    if (c->pdl_q) {
        if (hi) qmma_launch_v<F, true, true>(c, y, x, w, bias);
        else qmma_launch_v<F, false, true>(c, y, x, w, bias);
    } else {
        if (hi) qmma_launch_v<F, true, false>(c, y, x, w, bias);
        else qmma_launch_v<F, false, false>(c, y, x, w, bias);
    }
}

/* Dequantizes rows [r0, r0 + rows) of w into dst (F16 [rows, k]). */
static void qdequant(struct cuda_ctx *c, void *dst, const struct tensor *w, int64_t r0, int64_t rows)
{
    const int64_t k = w->shape[1];
    const int64_t rb = (int64_t)dtype_row_bytes(w->dtype, k), g = quant_group(w->dtype, k);
    CHECK(!w->tiled || r0 % 16 == 0); /* a tile's rows together */
    const uint8_t *src = (const uint8_t *)w->data + r0 * rb;
    const bool tl = w->tiled;
    const unsigned grid = cuda_grid_1d(c, rows * (k / 8));
    switch (qfmt_of(w->dtype)) {
    case QF_Q8: qdequant_kernel<QF_Q8><<<grid, 256, 0, c->stream>>>((__half *)dst, src, rb, g, tl, k, rows, q_tab()); break;
    case QF_Q4: qdequant_kernel<QF_Q4><<<grid, 256, 0, c->stream>>>((__half *)dst, src, rb, g, tl, k, rows, q_tab()); break;
    default: qdequant_kernel<QF_NF4><<<grid, 256, 0, c->stream>>>((__half *)dst, src, rb, g, tl, k, rows, q_tab()); break;
    }
    KERNEL_CHECK();
}

static void q_check(const struct tensor *w)
{
    const int64_t k = w->shape[1];
    CHECKF(w->ndim == 2 && k % 16 == 0 && dtype_row_bytes(w->dtype, k) % 16 == 0 && ((uintptr_t)w->data & 15) == 0,
           "weight %s: %s [%lld, %lld] records must be 16-byte aligned with k %% 16 == 0", w->name ? w->name : "?",
           dtype_name(w->dtype), (long long)w->shape[0], (long long)k);
}

/* The whole of w as an F16 tensor in the workspace, or false when it is larger than one tile. */
extern "C" bool cuda_quant_as_f16(struct tensor *w16, const struct tensor *w)
{
    struct cuda_ctx *c = cuda_ctx_get(w->dev.ordinal);
    q_check(w);
    const int64_t o = w->shape[0], k = w->shape[1];
    const size_t bytes = (size_t)(o * k) * 2;
    if (bytes > QUANT_DEQ_TILE_BYTES) return false;
    *w16 = tensor_make(DTYPE_F16, w->dev, cuda_scratch(c, SCRATCH_QW, bytes), 2, o, k);
    w16->name = w->name;
    qdequant(c, w16->data, w, 0, o);
    return true;
}

/* cuda_matmul for a quantized w (called from cuda_gemv.cu). */
extern "C" void cuda_quant_matmul(struct tensor *y, const struct tensor *x, const struct tensor *w,
                                  const struct tensor *bias)
{
    struct cuda_ctx *c = cuda_ctx_get(y->dev.ordinal);
    q_check(w);
    const int64_t n = x->shape[0], k = x->shape[1], o = w->shape[0];
    if (n == 0 || o == 0) return;
    /* the GEMV takes F16 (the model's activations) or F32 x; BF16 x (no model path) and unaligned x
     * take the dequantize-then-F16 path below, whose scratch keeps them out of captured graphs */
    if (cuda_qgemv_a(c, y, x, w, bias)) return; /* Q4 / Q8 decode: cuda_qgemv.cu */
    if (qmma_ok(c, x, w)) {
        switch (qfmt_of(w->dtype)) {
        case QF_Q8: qmma_launch<QF_Q8>(c, y, x, w, bias); break;
        case QF_Q4: qmma_launch<QF_Q4>(c, y, x, w, bias); break;
        default: qmma_launch<QF_NF4>(c, y, x, w, bias); break;
        }
        return;
    }
    if (n <= QGEMV_MAX_TOKENS && (x->dtype == DTYPE_F16 || x->dtype == DTYPE_F32) && ((uintptr_t)x->data & 15) == 0) {
        const int rpb = qgemv_rows_per_block(q_code_bytes(qfmt_of(w->dtype), k) / 16);
        switch (qfmt_of(w->dtype)) {
        case QF_Q8: qgemv_launch<QF_Q8>(c, y, x, w, bias, rpb); break;
        case QF_Q4: qgemv_launch<QF_Q4>(c, y, x, w, bias, rpb); break;
        default: qgemv_launch<QF_NF4>(c, y, x, w, bias, rpb); break;
        }
        return;
    }
    /* prefill (or an unaligned x): dequantize, then the fp16 path */
    struct tensor w16;
    if (cuda_quant_as_f16(&w16, w)) {
        cuda_matmul(y, x, &w16, bias);
        return;
    }
    /* tiles of oc rows: the weight tile and the tile's output columns each within the bound */
    const size_t ys = dtype_size(y->dtype);
    int64_t oc = (int64_t)(QUANT_DEQ_TILE_BYTES / ((size_t)k * 2));
    const int64_t oc_y = (int64_t)(QUANT_DEQ_TILE_BYTES / ((size_t)n * ys));
    if (oc_y < oc) oc = oc_y;
    oc &= ~(int64_t)15; /* whole 16-row tiles of a tiled w */
    CHECKF(oc >= 16, "matmul %s: %lld tokens x %lld columns exceed the dequantization tile", w->name ? w->name : "?",
           (long long)n, (long long)o);
    void *wt = cuda_scratch(c, SCRATCH_QW, (size_t)(oc * k) * 2);
    void *yt = cuda_scratch(c, SCRATCH_QY, (size_t)(n * oc) * ys);
    for (int64_t o0 = 0; o0 < o; o0 += oc) {
        const int64_t m = o - o0 < oc ? o - o0 : oc;
        qdequant(c, wt, w, o0, m);
        struct tensor w16t = tensor_make(DTYPE_F16, w->dev, wt, 2, m, k);
        struct tensor yc = tensor_make(y->dtype, y->dev, yt, 2, n, m);
        struct tensor bc;
        if (bias) bc = tensor_rows_view(bias, o0, m);
        cuda_matmul(&yc, x, &w16t, bias ? &bc : NULL);
        CUDA_CHECK(cudaMemcpy2DAsync((char *)y->data + (size_t)o0 * ys, (size_t)o * ys, yt, (size_t)m * ys,
                                     (size_t)m * ys, (size_t)n, cudaMemcpyDeviceToDevice, c->stream));
    }
}

/* For tests/test_cuda_quant.c: dequantizes all of w (on a GPU) to F16 dst (on the same GPU, [o, k]). */
extern "C" void cuda_quant_dequant(struct tensor *dst, const struct tensor *w)
{
    struct cuda_ctx *c = cuda_ctx_get(w->dev.ordinal);
    q_check(w);
    CHECK(dst->dtype == DTYPE_F16 && dst->shape[0] == w->shape[0] && dst->shape[1] == w->shape[1]);
    qdequant(c, dst->data, w, 0, w->shape[0]);
}
