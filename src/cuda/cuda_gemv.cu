/* cuda_gemv.cu: cuda_matmul, y[n, o] = x[n, k] · w[o, k]^T (+ bias[o]).
 * n <= 8 (decode): a bandwidth-bound GEMV. Each weight row is streamed once with 16-byte loads and
 * used for all n tokens (x is small and stays in L1/L2); fp32 accumulation; warp-shuffle reduction;
 * bias added in fp32 before the single rounding to y's dtype (as the CPU does). A block of 8 warps
 * owns 8, 4, 2 or 1 rows (1, 2, 4 or 8 warps per row, splitting k) so that even o = 1024 gives
 * enough blocks for every SM; each lane keeps 8 (or 4, for short rows) 16-byte loads in flight.
 * With cuda_set_pdl on, the GEMV is launched with programmatic dependent launch: its first batch of
 * weights is loaded before griddepcontrol.wait, overlapping the previous kernel's tail, and x is
 * read through L2 (ld.global.cg) after the wait. Rows whose width or pointers do not allow 16-byte
 * loads take a scalar kernel with the same structure.
 * n > 8 (prefill): cublasGemmEx with fp32 compute (CUBLAS_COMPUTE_32F, default math: no TF32).
 * F16 weights with F16 x at 2..16 tokens can instead take the quantized decode GEMV's tensor-core kernel
 * (cuda_qgemv.cu, cuda_set_f16mma; off by default): a bandwidth-bound kernel where cuBLAS is not.
 * Both operands must have one dtype: x is converted to w's dtype first when they differ (exact when
 * w is f32; rounds x to fp16/bf16 otherwise: documented in docs/CUDA.md). With a bias, a 16-bit
 * GEMM with 16-byte rows is one cuBLASLt call whose epilogue adds it before the single rounding
 * (op_linear also fuses GELU or the residual add there; op_matmul_stacked batches stacked weights);
 * otherwise (or an output dtype cuBLAS cannot write for that input) the GEMM writes fp32 and a small
 * kernel adds the bias and rounds once, keeping the CPU's rounding point. */
#include <type_traits>

#include "cuda/cuda_common.cuh"
#include "cuda/cuda_pgemv.cuh"
#include "cuda/cuda_quant.cuh"

#define GEMV_MAX_TOKENS 8
#define GEMV_WARPS 8
/* 16-byte weight loads in flight per lane: 8 when a lane has at least 8 to do (rows of 4096 fp16
 * split over 2 warps: all of a lane's loads in one batch, one memory latency instead of two), else 4 */
#define GEMV_UNROLL_MAX 8

/* lane 0 of a row's first warp writes round(acc + bias) for every token */
template <int NT>
__device__ __forceinline__ void gemv_store(void *y, int ydt, const void *bias, int bdt, const float *acc, int n,
                                           int64_t row, int64_t o)
{
    const float b = bias ? ldf(bias, bdt, row) : 0.0f;
#pragma unroll
    for (int t = 0; t < NT; t++)
        if (t < n) stf(y, ydt, (int64_t)t * o + row, acc[t] + b);
}

/* sums acc over the warp, then over the wpr warps of the row through shared memory */
template <int NT>
__device__ __forceinline__ void gemv_reduce(float *acc, float (*red)[NT], int warp, int lane, int wpr, int wr)
{
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = warp_sum(acc[t]);
    if (wpr > 1) { /* wpr is the same for the whole block: the barrier is uniform */
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
}

/* W, X: storage types of the weight and of x; NT: tokens the registers are sized for (n <= NT).
 * Requires k % VEC == 0 and 16-byte aligned w and x.
 * sf > 0: SwiGLU (op_rmsnorm_swiglu without a norm, cuda_gemv_swiglu): w is the joined gate|up [2 sf, k], y
 * [n, sf]; the block's first rpb / 2 rows are gate rows b rpb / 2 + i, the others the up rows sf + b rpb / 2 + i,
 * each summed exactly as the plain GEMV over w sums it (the same rpb, so the same warps per row); the up row's
 * sums meet the gate row's in shared memory, and the gate row writes silu_mul_kernel's round(silu(g)) * u of
 * the rounded g = round(acc_g) and u = round(acc_u): the plain ops' bits, one kernel fewer. */
template <typename W, typename X, int NT, int GEMV_UNROLL, bool PDL>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
gemv_vec_kernel(void *y, int ydt, const X *x, const W *w, const void *bias, int bdt, int n, int64_t k, int64_t o,
                int rpb, int64_t sf)
{
    constexpr int VEC = 16 / (int)sizeof(W);
    __shared__ float red[GEMV_WARPS][NT];
    __shared__ float sw_u[GEMV_WARPS][NT]; /* sf > 0: the up rows' sums */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wpr = GEMV_WARPS / rpb, rloc = warp / wpr, wr = warp % wpr;
    const int half = rpb >> 1, up = sf > 0 && rloc >= half;
    const int64_t srow = sf > 0 ? (int64_t)blockIdx.x * half + (up ? rloc - half : rloc) : 0; /* the gate row */
    const int64_t row = sf > 0 ? (srow < sf ? srow + (up ? sf : 0) : o) : (int64_t)blockIdx.x * rpb + rloc;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    pdl_trigger();
    /* the first batch of weights is loaded before waiting for the previous kernel (PDL launch): the
     * weights are constant, and their memory latency overlaps that kernel's tail */
    const uint4 *wrow = reinterpret_cast<const uint4 *>(w + (row < o ? row : 0) * k);
    const int64_t nv = k / VEC, stride = 32 * (int64_t)wpr;
    int64_t v = (int64_t)wr * 32 + lane;
    uint4 wv[GEMV_UNROLL];
    bool have = row < o && v + (GEMV_UNROLL - 1) * stride < nv;
    if (have)
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) wv[u] = __ldcs(wrow + v + u * stride); /* streamed, not kept */
    pdl_wait();
    if (row < o) {
        for (; v + (GEMV_UNROLL - 1) * stride < nv; v += GEMV_UNROLL * stride) {
            if (!have)
#pragma unroll
                for (int u = 0; u < GEMV_UNROLL; u++) wv[u] = __ldcs(wrow + v + u * stride);
            have = false;
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++) {
                float wf[VEC];
                words<W>::to_f(wv[u].x, wf);
                words<W>::to_f(wv[u].y, wf + words<W>::per_word);
                words<W>::to_f(wv[u].z, wf + 2 * words<W>::per_word);
                words<W>::to_f(wv[u].w, wf + 3 * words<W>::per_word);
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    if (t < n) {
                        float xf[VEC];
                        load_vec<X, VEC, PDL>(x + t * k + (v + u * stride) * VEC, xf);
#pragma unroll
                        for (int e = 0; e < VEC; e++) acc[t] = fmaf(wf[e], xf[e], acc[t]);
                    }
                }
            }
        }
        for (; v < nv; v += stride) {
            uint4 wv = __ldcs(wrow + v);
            float wf[VEC];
            words<W>::to_f(wv.x, wf);
            words<W>::to_f(wv.y, wf + words<W>::per_word);
            words<W>::to_f(wv.z, wf + 2 * words<W>::per_word);
            words<W>::to_f(wv.w, wf + 3 * words<W>::per_word);
#pragma unroll
            for (int t = 0; t < NT; t++) {
                if (t < n) {
                    float xf[VEC];
                    load_vec<X, VEC, PDL>(x + t * k + v * VEC, xf);
#pragma unroll
                    for (int e = 0; e < VEC; e++) acc[t] = fmaf(wf[e], xf[e], acc[t]);
                }
            }
        }
    }
    gemv_reduce<NT>(acc, red, warp, lane, wpr, wr);
    if (sf > 0) { /* rpb and so sf > 0 are the same for the whole block: the barrier is uniform */
        if (up && wr == 0 && lane == 0)
#pragma unroll
            for (int t = 0; t < NT; t++) sw_u[rloc - half][t] = acc[t];
        __syncthreads();
        if (!up && srow < sf && wr == 0 && lane == 0)
#pragma unroll
            for (int t = 0; t < NT; t++) {
                if (t >= n) continue;
                const float g = rndf(acc[t] + 0.0f, ydt), u = rndf(sw_u[rloc][t] + 0.0f, ydt); /* gemv_store's values */
                stf(y, ydt, (int64_t)t * sf + srow, silu_mul_f(g, u, ydt));
            }
        return;
    }
    if (row < o && wr == 0 && lane == 0) gemv_store<NT>(y, ydt, bias, bdt, acc, n, row, o);
}

/* any widths, any alignment, any dtypes: scalar loads, same block layout */
__global__ void __launch_bounds__(GEMV_WARPS * 32)
gemv_scalar_kernel(void *y, int ydt, const void *x, int xdt, const void *w, int wdt, const void *bias, int bdt, int n,
                   int64_t k, int64_t o, int rpb)
{
    __shared__ float red[GEMV_WARPS][GEMV_MAX_TOKENS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wpr = GEMV_WARPS / rpb, rloc = warp / wpr, wr = warp % wpr;
    const int64_t row = (int64_t)blockIdx.x * rpb + rloc;
    float acc[GEMV_MAX_TOKENS];
#pragma unroll
    for (int t = 0; t < GEMV_MAX_TOKENS; t++) acc[t] = 0.0f;
    if (row < o) {
        for (int64_t j = (int64_t)wr * 32 + lane; j < k; j += 32 * (int64_t)wpr) {
            const float wv = ldf(w, wdt, row * k + j);
#pragma unroll
            for (int t = 0; t < GEMV_MAX_TOKENS; t++)
                if (t < n) acc[t] = fmaf(wv, ldf(x, xdt, (int64_t)t * k + j), acc[t]);
        }
    }
    gemv_reduce<GEMV_MAX_TOKENS>(acc, red, warp, lane, wpr, wr);
    if (row < o && wr == 0 && lane == 0) gemv_store<GEMV_MAX_TOKENS>(y, ydt, bias, bdt, acc, n, row, o);
}

/* Rows per block, from the launch-shape sweep of `test_cuda_ops bench` on the H200 (docs/PERF.md):
 * the best (rows/block, unroll) was (8,4) for 4096x4096 and 6144x4096, (2,4) for 1024x4096,
 * 14336x4096, 28672x4096 and 128256x4096, (1,4) for 4096x14336; unroll 8 never won. */
static int gemv_rows_per_block(const struct cuda_ctx *c, int64_t o, int64_t k)
{
    (void)c;
    if (k > 8192) return 1;
    if (o <= 1024) return 2;
    if (o <= 8192) return 8;
    return 2;
}

template <typename W, typename X, int U>
static void gemv_vec_launch(struct cuda_ctx *c, unsigned grid, int rpb, struct tensor *y, const struct tensor *x,
                            const struct tensor *w, const struct tensor *bias, int n, int64_t k, int64_t o, int64_t sf)
{
    const void *bp = bias ? bias->data : NULL;
    const int bdt = bias ? (int)bias->dtype : 0;
    const X *xp = (const X *)x->data;
    const W *wp = (const W *)w->data;
    void *yp = y->data;
    const int ydt = y->dtype;
    const dim3 blk(GEMV_WARPS * 32);
    /* PDL only where x and w share a dtype (the model's case): fewer kernel instances to build */
    if constexpr (std::is_same<W, X>::value) {
        if (c->pdl) {
            if (n == 1) cuda_launch_pdl(c, gemv_vec_kernel<W, X, 1, U, true>, dim3(grid), blk, yp, ydt, xp, wp, bp, bdt, n, k, o, rpb, sf);
            else if (n == 2) cuda_launch_pdl(c, gemv_vec_kernel<W, X, 2, U, true>, dim3(grid), blk, yp, ydt, xp, wp, bp, bdt, n, k, o, rpb, sf);
            else if (n <= 4) cuda_launch_pdl(c, gemv_vec_kernel<W, X, 4, U, true>, dim3(grid), blk, yp, ydt, xp, wp, bp, bdt, n, k, o, rpb, sf);
            else cuda_launch_pdl(c, gemv_vec_kernel<W, X, 8, U, true>, dim3(grid), blk, yp, ydt, xp, wp, bp, bdt, n, k, o, rpb, sf);
            return;
        }
    }
    if (n == 1) gemv_vec_kernel<W, X, 1, U, false><<<grid, blk, 0, c->stream>>>(yp, ydt, xp, wp, bp, bdt, n, k, o, rpb, sf);
    else if (n == 2) gemv_vec_kernel<W, X, 2, U, false><<<grid, blk, 0, c->stream>>>(yp, ydt, xp, wp, bp, bdt, n, k, o, rpb, sf);
    else if (n <= 4) gemv_vec_kernel<W, X, 4, U, false><<<grid, blk, 0, c->stream>>>(yp, ydt, xp, wp, bp, bdt, n, k, o, rpb, sf);
    else gemv_vec_kernel<W, X, 8, U, false><<<grid, blk, 0, c->stream>>>(yp, ydt, xp, wp, bp, bdt, n, k, o, rpb, sf);
    KERNEL_CHECK();
}

template <typename W>
static void gemv_vec_dispatch_x(struct cuda_ctx *c, unsigned grid, int rpb, int unroll, struct tensor *y,
                                const struct tensor *x, const struct tensor *w, const struct tensor *bias, int n,
                                int64_t k, int64_t o, int64_t sf)
{
    if (unroll >= 8) {
        switch (x->dtype) {
        case DTYPE_F16: gemv_vec_launch<W, __half, 8>(c, grid, rpb, y, x, w, bias, n, k, o, sf); break;
        case DTYPE_BF16: gemv_vec_launch<W, __nv_bfloat16, 8>(c, grid, rpb, y, x, w, bias, n, k, o, sf); break;
        default: gemv_vec_launch<W, float, 8>(c, grid, rpb, y, x, w, bias, n, k, o, sf); break;
        }
        return;
    }
    switch (x->dtype) {
    case DTYPE_F16: gemv_vec_launch<W, __half, 4>(c, grid, rpb, y, x, w, bias, n, k, o, sf); break;
    case DTYPE_BF16: gemv_vec_launch<W, __nv_bfloat16, 4>(c, grid, rpb, y, x, w, bias, n, k, o, sf); break;
    default: gemv_vec_launch<W, float, 4>(c, grid, rpb, y, x, w, bias, n, k, o, sf); break;
    }
}

/* The vector kernel when w's dtype, k and the pointers allow its 16-byte loads (false: nothing launched); sf as
 * in gemv_vec_kernel (0: y = x · w^T, else SwiGLU over the joined gate|up w, grid over the gate rows). */
static bool gemv_vec(struct cuda_ctx *c, int rpb, int unroll, struct tensor *y, const struct tensor *x,
                     const struct tensor *w, const struct tensor *bias, int64_t sf)
{
    const int n = (int)x->shape[0];
    const int64_t k = x->shape[1], o = w->shape[0];
    if (w->dtype != DTYPE_F16 && w->dtype != DTYPE_BF16 && w->dtype != DTYPE_F32) return false;
    const int64_t vec = 16 / (int64_t)dtype_size(w->dtype);
    if (k % vec != 0 || ((uintptr_t)w->data & 15) || ((uintptr_t)x->data & 15)) return false;
    const int64_t per = sf > 0 ? rpb / 2 : rpb; /* output rows (gate rows for SwiGLU) a block writes */
    const unsigned grid = (unsigned)(((sf > 0 ? sf : o) + per - 1) / per);
    switch (w->dtype) {
    case DTYPE_F16: gemv_vec_dispatch_x<__half>(c, grid, rpb, unroll, y, x, w, bias, n, k, o, sf); break;
    case DTYPE_BF16: gemv_vec_dispatch_x<__nv_bfloat16>(c, grid, rpb, unroll, y, x, w, bias, n, k, o, sf); break;
    default: gemv_vec_dispatch_x<float>(c, grid, rpb, unroll, y, x, w, bias, n, k, o, sf); break;
    }
    return true;
}

/* rpb (rows per block: 1, 2, 4, 8) and unroll (4 or 8) of 0 are chosen from the shape */
static void cuda_gemv(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *w,
                      const struct tensor *bias, int rpb, int unroll)
{
    const int n = (int)x->shape[0];
    const int64_t k = x->shape[1], o = w->shape[0];
    if (rpb <= 0) rpb = gemv_rows_per_block(c, o, k);
    if (unroll <= 0) unroll = 4;
    if (gemv_vec(c, rpb, unroll, y, x, w, bias, 0)) return;
    const unsigned grid = (unsigned)((o + rpb - 1) / rpb);
    gemv_scalar_kernel<<<grid, GEMV_WARPS * 32, 0, c->stream>>>(y->data, y->dtype, x->data, x->dtype, w->data,
                                                                 w->dtype, bias ? bias->data : NULL,
                                                                 bias ? (int)bias->dtype : 0, n, k, o, rpb);
    KERNEL_CHECK();
}

/* The most tokens the GEMV takes for w and x (cuda_matmul: cuBLAS above). For 16-bit weights and x of the same
 * type cuBLAS is faster from 2 tokens on (test_cuda_quant bench: 4096 x 14336 fp16 at n = 4 / 8, the GEMV 2.3 /
 * 1.1 TB/s on an H200, cuBLAS 3.6 TB/s at n = 16); an f32 x stays on the GEMV, which does not round it to the
 * weight's type. */
static int64_t gemv_max_tokens(const struct cuda_ctx *c, const struct tensor *x, const struct tensor *w)
{
    return w->dtype == DTYPE_F32 || x->dtype != w->dtype ? GEMV_MAX_TOKENS : c->gemv16_max;
}

/* (cuda_pgemv.cuh) Where cuda_matmul over the joined w would run the one-pass GEMV for one token: not the
 * persistent kernel (the caller has tried it), not a forced shape of the tensor-core kernel, the GEMV's token
 * rule, the vector kernel with its rows per block from (o, k), which SwiGLU needs even. */
bool cuda_gemv_swiglu(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *w)
{
    const int64_t n = x->shape[0], k = x->shape[1], o = w->shape[0], sf = y->shape[1];
    if (n != 1 || o != 2 * sf || sf == 0 || dtype_is_quant(w->dtype) || n > gemv_max_tokens(c, x, w)) return false;
    if (c->f16mma >= F16MMA_S0) return false; /* cuda_qgemv_f16 takes one token in a forced shape */
    const int rpb = gemv_rows_per_block(c, o, k);
    return rpb >= 2 && gemv_vec(c, rpb, 4, y, x, w, NULL, sf);
}

/* ---- prefill: cuBLAS ---- */

__global__ void bias_round_kernel(void *y, int ydt, const float *yf, const void *bias, int bdt, int64_t n, int64_t o)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n * o; i += (int64_t)gridDim.x * blockDim.x)
        stf(y, ydt, i, bias ? yf[i] + ldf(bias, bdt, i % o) : yf[i]);
}

static cudaDataType_t cuda_dtype(enum dtype t)
{
    switch (t) {
    case DTYPE_F16: return CUDA_R_16F;
    case DTYPE_BF16: return CUDA_R_16BF;
    case DTYPE_F32: return CUDA_R_32F;
    default: CHECKF(0, "matmul: dtype %s has no GEMM", dtype_name(t));
    }
    return CUDA_R_32F;
}

/* ---- cuBLASLt GEMMs with fused epilogues ----
 * y[n,o] = act(x[n,k] w[o,k]^T + bias) (+ res) in one cuBLASLt call: the epilogue adds the bias (and
 * the residual, as C with beta = 1) to the fp32 accumulator and applies GELU before the single
 * rounding to y's type. `batch` > 1 runs stacked products in the same call: w, bias and y advance by
 * one [o, k], [o], [n, o] block per product and x is shared (the vision tower's q|k|v). Descriptors
 * and the heuristic's algorithm are kept per shape (lt_plan), so a repeated GEMM costs one
 * attribute update and the launch. Returns false (nothing done) when cuBLASLt offers no algorithm or
 * rejects the launch, so the caller falls back. */
#define LT_WS_BYTES CUDA_BLAS_WS_BYTES /* the context's cuBLAS workspace (cuda_mem.cu) */

struct lt_key {
    int t, gelu, res, batch;
    int64_t n, k, o;
    uint32_t align[4]; /* largest power of two (<= 256) dividing w, x, y, res */
};

struct lt_plan {
    struct lt_key key;
    bool ok; /* false: cuBLASLt has no algorithm for this key (cached too, so the fallback is cheap) */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
};

struct lt_args {
    cudaDataType_t t;
    const void *w, *x, *bias, *res; /* res: NULL or the C matrix (may equal y: in place) */
    void *y;
    int64_t n, k, o;
    int batch, gelu;
};

static uint32_t lt_align(const void *p)
{
    uint32_t a = 256;
    while (a > 1 && ((uintptr_t)p & (a - 1))) a >>= 1;
    return a;
}

static void lt_layout(cublasLtMatrixLayout_t *l, cudaDataType_t t, int64_t rows, int64_t cols, int batch,
                      int64_t stride)
{
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(l, t, (uint64_t)rows, (uint64_t)cols, rows));
    if (batch > 1) {
        CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof batch));
        CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                      sizeof stride));
    }
}

/* Up to max algorithms for the plan's descriptors, best first by cuBLASLt's heuristic, told the
 * workspace and the pointers' alignments (it assumes 256-byte aligned pointers unless told: our row
 * views may be less aligned). Returns how many it offers. */
static int lt_heuristics(struct cuda_ctx *c, const struct lt_plan *p, cublasLtMatmulHeuristicResult_t *hr, int max)
{
    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const size_t ws = LT_WS_BYTES;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    const cublasLtMatmulPreferenceAttributes_t attr[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    const uint32_t al[4] = {p->key.align[0], p->key.align[1], p->key.res ? p->key.align[3] : p->key.align[2],
                            p->key.align[2]};
    for (int i = 0; i < 4; i++) CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr[i], &al[i], sizeof al[i]));
    int nres = 0;
    if (cublasLtMatmulAlgoGetHeuristic(c->lt, p->op, p->la, p->lb, p->lc, p->lc, pref, max, hr, &nres) !=
        CUBLAS_STATUS_SUCCESS)
        nres = 0;
    cublasLtMatmulPreferenceDestroy(pref);
    return nres;
}

static void lt_plan_make(struct cuda_ctx *c, struct lt_plan *p, const struct lt_args *g)
{
    p->ok = false;
    cudaDataType_t t = g->t;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    const cublasLtEpilogue_t epi = g->gelu ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g->bias, sizeof g->bias));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &t, sizeof t));
    if (g->batch > 1) {
        const int64_t bs = g->o;
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, &bs, sizeof bs));
    }
    /* column-major: A = w as k x o (op T -> o x k), B = x as k x n (shared: stride 0), C = D = y^T as o x n */
    lt_layout(&p->la, t, g->k, g->o, g->batch, g->o * g->k);
    lt_layout(&p->lb, t, g->k, g->n, g->batch, 0);
    lt_layout(&p->lc, t, g->o, g->n, g->batch, g->n * g->o);
    cublasLtMatmulHeuristicResult_t res;
    p->ok = lt_heuristics(c, p, &res, 1) > 0;
    if (p->ok) p->algo = res.algo;
}

static bool lt_gemm(struct cuda_ctx *c, const struct lt_args *g)
{
    cuda_ctx_blas(c); /* allocates the workspace the cuBLASLt call is given */
    if (!c->lt) CUBLAS_CHECK(cublasLtCreate(&c->lt));
    struct lt_key key;
    memset(&key, 0, sizeof key); /* compared with memcmp: no stray padding bytes */
    key.t = (int)g->t;
    key.gelu = g->gelu;
    key.res = g->res != NULL;
    key.batch = g->batch;
    key.n = g->n;
    key.k = g->k;
    key.o = g->o;
    key.align[0] = lt_align(g->w);
    key.align[1] = lt_align(g->x);
    key.align[2] = lt_align(g->y);
    key.align[3] = g->res ? lt_align(g->res) : 0;
    struct lt_plan *p = NULL;
    for (int i = 0; i < c->n_lt_plans && !p; i++)
        if (!memcmp(&c->lt_plans[i].key, &key, sizeof key)) p = &c->lt_plans[i];
    if (!p) {
        if (c->n_lt_plans == c->cap_lt_plans) {
            const int cap = c->cap_lt_plans ? 2 * c->cap_lt_plans : 64;
            struct lt_plan *np = (struct lt_plan *)realloc(c->lt_plans, (size_t)cap * sizeof *np);
            CHECK(np);
            c->lt_plans = np;
            c->cap_lt_plans = cap;
        }
        p = &c->lt_plans[c->n_lt_plans++];
        p->key = key;
        lt_plan_make(c, p, g);
    }
    if (!p->ok) return false;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g->bias, sizeof g->bias));
    /* a rejected launch (seen on the H200 for o = 1001 with 2-byte-aligned rows) falls back */
    const float alpha = 1.0f, beta = g->res ? 1.0f : 0.0f;
    return cublasLtMatmul(c->lt, p->op, &alpha, g->w, p->la, g->x, p->lb, &beta, g->res ? g->res : g->y, p->lc, g->y,
                          p->lc, &p->algo, c->blas_ws, LT_WS_BYTES, c->stream) == CUBLAS_STATUS_SUCCESS;
}

/* For `test_cuda_linear bench`: times every algorithm cuBLASLt's heuristic offers (up to 16) for
 * y = act(x w^T + b) (+ res) at n x k x o (batch stacked products), fp16, on scratch data, and prints
 * the heuristic's first choice against the fastest. Returns the number of algorithms timed. */
extern "C" int cuda_lt_sweep(int ordinal, int64_t n, int64_t k, int64_t o, int batch, int gelu, int res)
{
    struct cuda_ctx *c = cuda_ctx_get(ordinal);
    cuda_ctx_blas(c); /* the workspace */
    if (!c->lt) CUBLAS_CHECK(cublasLtCreate(&c->lt));
    void *w, *x, *y, *b, *r;
    CUDA_CHECK(cudaMalloc(&w, (size_t)(batch * o * k) * 2));
    CUDA_CHECK(cudaMalloc(&x, (size_t)(n * k) * 2));
    CUDA_CHECK(cudaMalloc(&y, (size_t)(batch * n * o) * 2));
    CUDA_CHECK(cudaMalloc(&r, (size_t)(batch * n * o) * 2));
    CUDA_CHECK(cudaMalloc(&b, (size_t)(batch * o) * 2));
    CUDA_CHECK(cudaMemsetAsync(w, 0, (size_t)(batch * o * k) * 2, c->stream));
    CUDA_CHECK(cudaMemsetAsync(x, 0, (size_t)(n * k) * 2, c->stream));
    CUDA_CHECK(cudaMemsetAsync(b, 0, (size_t)(batch * o) * 2, c->stream));
    CUDA_CHECK(cudaMemsetAsync(r, 0, (size_t)(batch * n * o) * 2, c->stream));
    struct lt_args g = {CUDA_R_16F, w, x, b, res ? r : NULL, y, n, k, o, batch, gelu};
    struct lt_plan p;
    memset(&p, 0, sizeof p);
    p.key.align[0] = p.key.align[1] = p.key.align[2] = p.key.align[3] = 256;
    p.key.res = res;
    lt_plan_make(c, &p, &g); /* the descriptors; the algorithms are asked for again below */
    cublasLtMatmulHeuristicResult_t hr[16];
    const int nres = lt_heuristics(c, &p, hr, 16);
    const size_t ws = LT_WS_BYTES;
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    const double flop = 2.0 * (double)n * (double)k * (double)o * batch;
    float first = 0, best = 1e30f;
    int ibest = -1;
    for (int i = 0; i < nres; i++) {
        const float alpha = 1.0f, beta = res ? 1.0f : 0.0f;
        bool ok = true;
        for (int it = 0; it < 3 && ok; it++) /* warm-up */
            ok = cublasLtMatmul(c->lt, p.op, &alpha, w, p.la, x, p.lb, &beta, res ? r : y, p.lc, y, p.lc, &hr[i].algo,
                                c->blas_ws, ws, c->stream) == CUBLAS_STATUS_SUCCESS;
        if (!ok) continue;
        const int reps = 20;
        CUDA_CHECK(cudaEventRecord(e0, c->stream));
        for (int it = 0; it < reps; it++)
            cublasLtMatmul(c->lt, p.op, &alpha, w, p.la, x, p.lb, &beta, res ? r : y, p.lc, y, p.lc, &hr[i].algo,
                           c->blas_ws, ws, c->stream);
        CUDA_CHECK(cudaEventRecord(e1, c->stream));
        CUDA_CHECK(cudaEventSynchronize(e1));
        float ms = 0;
        CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        ms /= reps;
        if (i == 0) first = ms;
        if (ms < best) { best = ms; ibest = i; }
    }
    printf("  lt n%-6lld k%-5lld o%-5lld batch %d%s%s: %2d algos, heuristic #0 %.4f ms (%.0f TFLOP/s), best #%d %.4f ms "
           "(%.0f TFLOP/s)\n",
           (long long)n, (long long)k, (long long)o, batch, gelu ? " gelu" : "", res ? " +res" : "", nres, first,
           first > 0 ? flop / first * 1e-9 : 0.0, ibest, best, best < 1e29f ? flop / best * 1e-9 : 0.0);
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
    cublasLtMatmulDescDestroy(p.op);
    cublasLtMatrixLayoutDestroy(p.la);
    cublasLtMatrixLayoutDestroy(p.lb);
    cublasLtMatrixLayoutDestroy(p.lc);
    CUDA_CHECK(cudaFree(w));
    CUDA_CHECK(cudaFree(x));
    CUDA_CHECK(cudaFree(y));
    CUDA_CHECK(cudaFree(r));
    CUDA_CHECK(cudaFree(b));
    return nres;
}

/* ---- `test_cuda_linear bench rot`: the small-n GEMMs of the batched decode step, weights rotated ----
 * A decode-sized product (n = 16..64 rows) reads its weight once and is bandwidth-bound, so a sweep that
 * reuses one weight measures the L2, not HBM. This one keeps R copies of the weight (R x size >= 768 MiB)
 * and cycles through them, times cublasGemmEx / cublasGemmStridedBatchedEx with CUBLAS_GEMM_DEFAULT (what
 * the engine calls) and then every cuBLASLt algorithm the heuristic offers plus split-K variants of the
 * first ones, and prints the default, the heuristic's first and the fastest six with their configs. */
__global__ void sweep_fill_kernel(__half *p, size_t count, uint32_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
        p[i] = __float2half(((float)(h & 0xffff) / 65535.0f - 0.5f) * 0.06f);
    }
}

struct sweep_cand {
    cublasLtMatmulAlgo_t algo;
    int cfg[8]; /* id, tile, split-K, reduction, swizzle, stages, cluster, custom */
    float us;
};

static void sweep_cfg(const cublasLtMatmulAlgo_t *a, int *cfg)
{
    const cublasLtMatmulAlgoConfigAttributes_t at[8] = {
        CUBLASLT_ALGO_CONFIG_ID,           CUBLASLT_ALGO_CONFIG_TILE_ID,      CUBLASLT_ALGO_CONFIG_SPLITK_NUM,
        CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, CUBLASLT_ALGO_CONFIG_STAGES_ID,
        CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION};
    for (int i = 0; i < 8; i++) {
        uint32_t v = 0;
        size_t wr = 0;
        cfg[i] = cublasLtMatmulAlgoConfigGetAttribute(a, at[i], &v, sizeof v, &wr) == CUBLAS_STATUS_SUCCESS ? (int)v : -1;
    }
}

extern "C" int cuda_gemm_rot_sweep(int ordinal, int64_t n, int64_t k, int64_t o, int batch)
{
    struct cuda_ctx *c = cuda_ctx_get(ordinal);
    cublasHandle_t h = cuda_ctx_blas(c);
    if (!c->lt) CUBLAS_CHECK(cublasLtCreate(&c->lt));
    const size_t per = (size_t)batch * (size_t)(o * k) * 2;
    const int R = (int)(((size_t)768 << 20) / per) + 2;
    __half *W, *X, *Y;
    CUDA_CHECK(cudaMalloc(&W, per * R));
    CUDA_CHECK(cudaMalloc(&X, (size_t)(n * k) * 2));
    CUDA_CHECK(cudaMalloc(&Y, (size_t)batch * (size_t)(n * o) * 2));
    sweep_fill_kernel<<<1024, 256, 0, c->stream>>>(W, per * R / 2, 1u);
    sweep_fill_kernel<<<64, 256, 0, c->stream>>>(X, (size_t)(n * k), 7u);
    KERNEL_CHECK();
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    const int passes = R >= 40 ? 3 : (120 + R - 1) / R;
    const float alpha = 1.0f, beta = 0.0f;
    auto wcopy = [&](int r) { return (const void *)((const char *)W + per * (size_t)r); };
    /* mean us per product over `passes` rotations after one untimed rotation; false when a launch fails */
    auto timed = [&](auto &&launch, float *us) {
        for (int r = 0; r < R; r++)
            if (!launch(r)) return false;
        CUDA_CHECK(cudaEventRecord(e0, c->stream));
        for (int p = 0; p < passes; p++)
            for (int r = 0; r < R; r++) launch(r);
        CUDA_CHECK(cudaEventRecord(e1, c->stream));
        CUDA_CHECK(cudaEventSynchronize(e1));
        float ms = 0;
        CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        *us = ms * 1000.0f / (float)(passes * R);
        return true;
    };
    float us_def = 0;
    timed([&](int r) {
        if (batch > 1)
            return cublasGemmStridedBatchedEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)o, (int)n, (int)k, &alpha, wcopy(r),
                                              CUDA_R_16F, (int)k, (long long)(o * k), X, CUDA_R_16F, (int)k, 0LL, &beta,
                                              Y, CUDA_R_16F, (int)o, (long long)(n * o), batch, CUBLAS_COMPUTE_32F,
                                              CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS;
        return cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)o, (int)n, (int)k, &alpha, wcopy(r), CUDA_R_16F, (int)k,
                            X, CUDA_R_16F, (int)k, &beta, Y, CUDA_R_16F, (int)o, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS;
    }, &us_def);
    /* cuBLASLt: no epilogue, the same layouts as lt_plan_make */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    lt_layout(&la, CUDA_R_16F, k, o, batch, o * k);
    lt_layout(&lb, CUDA_R_16F, k, n, batch, 0);
    lt_layout(&lc, CUDA_R_16F, o, n, batch, n * o);
    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const size_t ws = LT_WS_BYTES;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    enum { MAXH = 48, MAXC = 256 };
    cublasLtMatmulHeuristicResult_t hr[MAXH];
    int nres = 0;
    if (cublasLtMatmulAlgoGetHeuristic(c->lt, op, la, lb, lc, lc, pref, MAXH, hr, &nres) != CUBLAS_STATUS_SUCCESS) nres = 0;
    cublasLtMatmulPreferenceDestroy(pref);
    static struct sweep_cand cand[MAXC];
    int nc = 0;
    auto add = [&](const cublasLtMatmulAlgo_t *a) {
        if (nc == MAXC) return;
        struct sweep_cand s;
        s.algo = *a;
        sweep_cfg(a, s.cfg);
        for (int i = 0; i < nc; i++)
            if (!memcmp(cand[i].cfg, s.cfg, sizeof s.cfg)) return;
        cublasLtMatmulHeuristicResult_t chk;
        if (cublasLtMatmulAlgoCheck(c->lt, op, la, lb, lc, lc, a, &chk) != CUBLAS_STATUS_SUCCESS ||
            chk.workspaceSize > ws)
            return;
        s.us = -1;
        cand[nc++] = s;
    };
    for (int i = 0; i < nres; i++) add(&hr[i].algo);
    const int nh = nc;
    static const int splits[] = {1, 2, 3, 4, 5, 6, 8, 12, 16};
    for (int i = 0; i < nh && i < 12; i++)
        for (size_t sk = 0; sk < sizeof splits / sizeof splits[0]; sk++)
            for (int red = 1; red <= 4; red *= 2) { /* CUBLASLT_REDUCTION_SCHEME_INPLACE, COMPUTE_TYPE, OUTPUT_TYPE */
                cublasLtMatmulAlgo_t a = cand[i].algo;
                const int32_t s = splits[sk];
                const uint32_t r = s > 1 ? (uint32_t)red : 0u;
                if (s == 1 && red > 1) continue;
                if (cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &s, sizeof s) !=
                        CUBLAS_STATUS_SUCCESS ||
                    cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &r, sizeof r) !=
                        CUBLAS_STATUS_SUCCESS)
                    continue;
                add(&a);
            }
    for (int i = 0; i < nc; i++) {
        float us = 0;
        if (timed([&](int r) {
                return cublasLtMatmul(c->lt, op, &alpha, wcopy(r), la, X, lb, &beta, Y, lc, Y, lc, &cand[i].algo,
                                      c->blas_ws, ws, c->stream) == CUBLAS_STATUS_SUCCESS;
            }, &us))
            cand[i].us = us;
    }
    const float gb = (float)per * 1e-3f; /* bytes / us = MB/s; per * 1e-3 / us = GB/s */
    printf("rot n%-3lld k%-5lld o%-6lld batch %d (R %d): cublasGemmEx default %.2f us (%.0f GB/s); %d heuristic, %d "
           "candidates; heuristic #0 %.2f us\n",
           (long long)n, (long long)k, (long long)o, batch, R, us_def, gb / us_def, nh, nc, nc ? cand[0].us : 0.0f);
    for (int shown = 0; shown < 6; shown++) {
        int b = -1;
        for (int i = 0; i < nc; i++)
            if (cand[i].us > 0 && (b < 0 || cand[i].us < cand[b].us)) b = i;
        if (b < 0) break;
        printf("  %.2f us (%.0f GB/s) id %d tile %d splitk %d red %d swz %d stages %d cluster %d custom %d%s\n",
               cand[b].us, gb / cand[b].us, cand[b].cfg[0], cand[b].cfg[1], cand[b].cfg[2], cand[b].cfg[3],
               cand[b].cfg[4], cand[b].cfg[5], cand[b].cfg[6], cand[b].cfg[7], b < nh ? " (heuristic)" : "");
        cand[b].us = -cand[b].us - 1e6f; /* shown */
    }
    cublasLtMatmulDescDestroy(op);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(lc);
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
    CUDA_CHECK(cudaFree(W));
    CUDA_CHECK(cudaFree(X));
    CUDA_CHECK(cudaFree(Y));
    return nc;
}

/* x in the GEMM's input dtype gt (converted into scratch when it differs) */
static const void *gemm_input(struct cuda_ctx *c, const struct tensor *x, enum dtype gt)
{
    if (x->dtype == gt) return x->data;
    const int64_t n = x->shape[0], k = x->shape[1];
    void *xc = cuda_scratch(c, SCRATCH_MM_X, (size_t)(n * k) * dtype_size(gt));
    struct tensor xt = *x;
    xt.dtype = gt;
    xt.data = xc;
    cuda_convert(&xt, x);
    return xc;
}

/* The fused cuBLASLt path applies: 16-bit GEMM with y, bias (and res) of the weight's type, 16-byte
 * rows (the layouts every cuBLASLt kernel takes) and a 16-byte aligned bias. */
static bool lt_eligible(const struct tensor *y, const struct tensor *w, const struct tensor *bias,
                        const struct tensor *res)
{
    const enum dtype gt = w->dtype;
    const int64_t k = w->shape[1], o = w->shape[0];
    return bias && gt != DTYPE_F32 && y->dtype == gt && bias->dtype == gt && (!res || res->dtype == gt) &&
           ((uintptr_t)bias->data & 15) == 0 && k % 8 == 0 && o % 8 == 0;
}

extern "C" void cuda_matmul(struct tensor *y, const struct tensor *x, const struct tensor *w, const struct tensor *bias)
{
    if (dtype_is_quant(w->dtype)) { /* cuda_quant.cu: its GEMV, or dequantize + this function */
        cuda_quant_matmul(y, x, w, bias);
        return;
    }
    struct cuda_ctx *c = cuda_ctx_get(y->dev.ordinal);
    const int64_t n = x->shape[0], k = x->shape[1], o = w->shape[0];
    if (n == 0 || o == 0) return;
    /* F16 weights and x at 2..16 tokens (the batched decode step): the quantized GEMV's tensor-core kernel on
     * the F16 rows when c->f16mma asks for it and the shapes allow (cuda_qgemv.cu); cuBLAS below otherwise */
    if (cuda_qgemv_f16(c, y, x, w, bias)) return;
    /* the GEMV streams each weight row once for all n tokens, but its fp32 FMAs per weight grow with n */
    if (n <= gemv_max_tokens(c, x, w)) {
        if (!cuda_pgemv_matmul(c, y, x, w, bias)) cuda_gemv(c, y, x, w, bias, 0, 0); /* F16: cuda_pgemv.cu */
        return;
    }
    CHECKF(n <= INT32_MAX && k <= INT32_MAX && o <= INT32_MAX, "matmul too large for cuBLAS: %lld x %lld x %lld",
           (long long)n, (long long)k, (long long)o);
    const enum dtype gt = w->dtype; /* the GEMM's input dtype */
    const void *xp = gemm_input(c, x, gt);
    if (lt_eligible(y, w, bias, NULL)) {
        const struct lt_args g = {cuda_dtype(gt), w->data, xp, bias->data, NULL, y->data, n, k, o, 1, 0};
        if (lt_gemm(c, &g)) return;
    }
    /* cuBLAS writes 16F/16BF inputs to the same 16-bit type or to 32F; 32F inputs to 32F */
    const bool direct = !bias && (y->dtype == DTYPE_F32 || (y->dtype == gt && gt != DTYPE_F32));
    void *yp = direct ? y->data : cuda_scratch(c, SCRATCH_MM_Y, (size_t)(n * o) * sizeof(float));
    const enum dtype yt = direct ? y->dtype : DTYPE_F32;
    const float alpha = 1.0f, beta = 0.0f;
    /* row-major y[n,o] = x[n,k] w[o,k]^T is column-major y^T[o,n] = (w^T)^T[o,k] x^T[k,n] */
    CUBLAS_CHECK(cublasGemmEx(cuda_ctx_blas(c), CUBLAS_OP_T, CUBLAS_OP_N, (int)o, (int)n, (int)k, &alpha, w->data,
                              cuda_dtype(gt), (int)k, xp, cuda_dtype(gt), (int)k, &beta, yp, cuda_dtype(yt), (int)o,
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (!direct) {
        bias_round_kernel<<<cuda_grid_1d(c, n * o), 256, 0, c->stream>>>(
            y->data, y->dtype, (const float *)yp, bias ? bias->data : NULL, bias ? (int)bias->dtype : 0, n, o);
        KERNEL_CHECK();
    }
}

/* op_linear: y = act(x w^T + bias) (+ res). Prefill shapes with a bias take one fused cuBLASLt call;
 * otherwise (decode GEMV, f32, odd widths, no algorithm) the product goes to y (or, when res aliases
 * y, to scratch) and the activation / residual follow as separate kernels, rounding where the CPU
 * twin does. */
extern "C" void cuda_linear(struct tensor *y, const struct tensor *x, const struct tensor *w, const struct tensor *bias,
                            int act, const struct tensor *res)
{
    struct cuda_ctx *c = cuda_ctx_get(y->dev.ordinal);
    const int64_t n = x->shape[0], k = x->shape[1], o = w->shape[0];
    if (n == 0 || o == 0) return;
    if (dtype_is_quant(w->dtype)) {
        /* prefill: the F16 dequantization in the workspace, then this function's fused path; a matrix
         * larger than one tile (or a decode GEMV) goes through cuda_matmul below, act/res after it */
        struct tensor w16;
        if (n > GEMV_MAX_TOKENS && cuda_quant_as_f16(&w16, w)) {
            cuda_linear(y, x, &w16, bias, act, res);
            return;
        }
    } else if (n > GEMV_MAX_TOKENS && n <= INT32_MAX && k <= INT32_MAX && o <= INT32_MAX && lt_eligible(y, w, bias, res)) {
        const void *xp = gemm_input(c, x, w->dtype);
        const struct lt_args g = {cuda_dtype(w->dtype), w->data, xp, bias->data, res ? res->data : NULL, y->data,
                                  n, k, o, 1, act == LINEAR_GELU_TANH};
        if (lt_gemm(c, &g)) return;
    }
    /* a decode GEMV adding into the residual: the add in the persistent GEMV's epilogue (cuda_pgemv.cu) */
    if (res && act == LINEAR_NONE && cuda_pgemv_linear_res(c, y, x, w, bias, res)) return;
    /* ... or in the quantized decode GEMV's (one token of Q4 / Q8 / NF4 weights) */
    if (res && act == LINEAR_NONE && cuda_qgemv_linear_res(c, y, x, w, bias, res)) return;
    struct tensor t = *y;
    if (res && res->data == y->data) t.data = cuda_scratch(c, SCRATCH_MM_T, tensor_nbytes(y));
    cuda_matmul(&t, x, w, bias);
    if (act == LINEAR_GELU_TANH) cuda_gelu_tanh(&t, &t);
    if (res) cuda_add(y, res, &t);
}

/* op_matmul_stacked's fast path: y[s] = x w[s]^T + bias[s] for the S row blocks of w as one
 * strided-batched cuBLASLt call. Returns 0 (nothing done) when it does not apply; backend.c then
 * loops op_matmul over the blocks. */
extern "C" int cuda_matmul_stacked(struct tensor *y, const struct tensor *x, const struct tensor *w,
                                   const struct tensor *bias)
{
    struct cuda_ctx *c = cuda_ctx_get(y->dev.ordinal);
    const int64_t S = y->shape[0], n = y->shape[1], o = y->shape[2], k = x->shape[1];
    if (S == 0 || n == 0 || o == 0) return 1;
    if (dtype_is_quant(w->dtype)) {
        /* prefill: all S blocks dequantized at once, then the batched GEMM; otherwise (decode, or
         * larger than a tile) backend.c's loop of op_matmul on the quantized row views */
        struct tensor w16;
        if (n <= GEMV_MAX_TOKENS || !cuda_quant_as_f16(&w16, w)) return 0;
        return cuda_matmul_stacked(y, x, &w16, bias);
    }
    struct tensor y0 = tensor_reshape(y, 2, S * n, o);
    y0 = tensor_rows_view(&y0, 0, n);
    struct tensor w0 = tensor_rows_view(w, 0, o);
    /* no bias, 16-bit x, w and y of one type, more tokens than the GEMV takes (the batched decode step's
     * gate|up and k|v): one strided-batched cublasGemmEx, so the S products share a launch (and their
     * split-K reduction). With the F16 tensor-core kernel asked for at 2..16 tokens, its per-block calls. */
    const bool b16 = w->dtype == DTYPE_F16 || w->dtype == DTYPE_BF16;
    if (!bias && b16 && x->dtype == w->dtype && y->dtype == w->dtype && n > c->gemv16_max &&
        !(c->f16mma && n <= 16) && S <= INT32_MAX && n <= INT32_MAX && k <= INT32_MAX && o <= INT32_MAX) {
        const float alpha = 1.0f, beta = 0.0f;
        const cudaDataType_t t = cuda_dtype(w->dtype);
        CUBLAS_CHECK(cublasGemmStridedBatchedEx(cuda_ctx_blas(c), CUBLAS_OP_T, CUBLAS_OP_N, (int)o, (int)n, (int)k, &alpha,
                                                w->data, t, (int)k, (long long)(o * k), x->data, t, (int)k, 0LL, &beta,
                                                y->data, t, (int)o, (long long)(n * o), (int)S, CUBLAS_COMPUTE_32F,
                                                CUBLAS_GEMM_DEFAULT));
        return 1;
    }
    if (n <= GEMV_MAX_TOKENS || !bias || S > INT32_MAX || n > INT32_MAX || k > INT32_MAX || o > INT32_MAX ||
        !lt_eligible(&y0, &w0, bias, NULL) || (o * dtype_size(w->dtype)) % 16 != 0)
        return 0;
    const void *xp = gemm_input(c, x, w->dtype);
    const struct lt_args g = {cuda_dtype(w->dtype), w->data, xp, bias->data, NULL, y->data, n, k, o, (int)S, 0};
    return lt_gemm(c, &g) ? 1 : 0;
}

/* The decode GEMV with a forced launch shape (rpb rows per block, unroll loads in flight per lane;
 * 0 = automatic), n <= 8. For `test_cuda_ops bench`, which times the shapes side by side. */
extern "C" void cuda_gemv_config(struct tensor *y, const struct tensor *x, const struct tensor *w, int rpb, int unroll)
{
    struct cuda_ctx *c = cuda_ctx_get(y->dev.ordinal);
    CHECK(x->shape[0] <= GEMV_MAX_TOKENS && (rpb == 0 || rpb == 1 || rpb == 2 || rpb == 4 || rpb == 8));
    cuda_gemv(c, y, x, w, NULL, rpb, unroll);
}
