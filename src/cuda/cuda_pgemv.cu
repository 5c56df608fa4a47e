/* cuda_pgemv.cu: the persistent decode GEMV for F16 weights (n <= 8 tokens), and the fused decode-step
 * ops built on it: op_rmsnorm_matmul (the RMSNorm computed in the GEMV's prologue, the output split into
 * parts: q|k|v), op_rmsnorm_swiglu (the norm in the prologue, round(silu(gate)) * up in the epilogue) and
 * op_linear's residual epilogue (y = res + round(x w^T): o_proj and down_proj adding into h).
 * Owns pgemv_kernel, its launch shape, and the fused ops' CUDA twins with their fallback to the plain
 * ops. Not: the one-pass GEMV and the cuBLAS paths (cuda_gemv.cu), quantized weights (cuda_quant.cu).
 *
 * Kernel. A grid of at most bps blocks per SM, 8 warps each; warp gw of the tw warps takes the row
 * units gw, gw + tw, ... (a unit is one row of w; for SwiGLU row i of the gate and row i of the up
 * part). A warp streams its units' rows as one sequence of chunks (32 lanes x U 16-byte loads,
 * `ld.global.cs`), two in flight: the next chunk, possibly of the next row, is loaded before the
 * current one is used, so each warp keeps U..2U loads per lane outstanding across row boundaries.
 * A block first loads its first chunk of weights, then (under programmatic dependent launch, after
 * griddepcontrol.wait: only the constant weights are touched before) stages its input in shared
 * memory: x itself, or xn = rmsnorm(h) * nw computed there from h, once per block instead of once
 * per kernel. Inputs that earlier kernels wrote are read through L2 (`ld.global.cg`), as a PDL
 * launch requires. The successor may launch (griddepcontrol.launch_dependents) once every warp has
 * issued its last loads, or at once (c->pgemv_trig_early).
 *
 * Numerics (why it is bit for bit the plain ops on the GPU):
 *  - a row belongs to one warp: lane l takes the 16-byte vectors l, l + 32, ... in order, one fp32
 *    fmaf per element into one accumulator per token, then a butterfly warp sum; the order depends
 *    neither on the launch shape nor on the variant, so op_matmul (this kernel too) and the fused ops
 *    give the same sums;
 *  - the norm prologue sums h^2 in double with 256 threads over j = tid, tid + 256, ... and
 *    block_sum_d: rmsnorm_kernel's and add_rmsnorm_kernel's mapping and tree, so the same bits; it
 *    rounds where they do;
 *  - the epilogues round where the plain ops do: (acc + bias) to F16, then cuda_add's sum, or
 *    silu_mul_kernel's round(silu(g)) * u on the rounded g and u.
 * Against the CPU twins the results differ by the fp32 summation order (test_cuda_ops: TOL_F16). */
#include "cuda/cuda_pgemv.cuh"
#include "cuda/cuda_quant.cuh"

#define PG_WARPS 8
#define PG_THREADS (PG_WARPS * 32) /* = NORM_THREADS of cuda_ops.cu: the norm's summation order */
static_assert(PG_THREADS == 256, "norm_row_256 (cuda_pgemv.cuh) sums with 256 threads");
/* the staged input (n rows of k halves) of a block at most; larger inputs run the other paths */
#define PG_SMEM_MAX ((size_t)96 << 10)
#define PG_MAX_TOKENS 8 /* the accumulators are templated on n rounded up to 1, 2, 4, 8 */

enum pg_mode { PG_PARTS = 0, PG_RES = 1, PG_SWIGLU = 2 };

struct pg_args {
    const __half *w;   /* [rows, k] */
    const __half *x;   /* [n, k]: the input, or h for the norm variants */
    const void *nw;    /* [k]: the norm weight (norm variants) */
    const void *bias;  /* [o] or NULL (PG_PARTS, PG_RES) */
    const __half *res; /* PG_RES: [n, o] (may be y[0]) */
    __half *y[RMSNORM_MATMUL_MAX_PARTS];       /* PG_PARTS: part i [n, off[i+1] - off[i]]; else y[0] */
    int64_t off[RMSNORM_MATMUL_MAX_PARTS + 1]; /* PG_PARTS: the first row of each part, off[np] = o */
    int64_t k, units;  /* units: rows (PG_PARTS, PG_RES) or f (PG_SWIGLU: gate row i, up row f + i) */
    int nwdt, bdt, np, n, trig_early;
    float eps;
};

/* chunk p of row `row` into b: the vectors p * 32U + lane + 32i that are inside the row (indices
 * within a row are 32-bit: the host checks k; the row's offset is 64-bit) */
template <int U>
__device__ __forceinline__ void pg_load(uint4 (&b)[U], const uint4 *w4, int row, int p, int nv, int lane)
{
    const int v0 = p * 32 * U + lane;
    const uint4 *src = w4 + (int64_t)row * nv + v0;
#pragma unroll
    for (int i = 0; i < U; i++)
        if (v0 + 32 * i < nv) b[i] = __ldcs(src + 32 * i); /* streamed: read once, not kept */
}

/* acc[t] += the chunk's weights times the staged input rows t < n, element by element in order */
template <int NT, int U>
__device__ __forceinline__ void pg_fma(float (&acc)[NT], const uint4 (&b)[U], const __half *xs, int k, int n, int p,
                                       int nv, int lane)
{
    const int v0 = p * 32 * U + lane;
#pragma unroll
    for (int i = 0; i < U; i++) {
        const int v = v0 + 32 * i;
        if (v < nv) {
            float wf[8];
            words<__half>::to_f(b[i].x, wf);
            words<__half>::to_f(b[i].y, wf + 2);
            words<__half>::to_f(b[i].z, wf + 4);
            words<__half>::to_f(b[i].w, wf + 6);
#pragma unroll
            for (int t = 0; t < NT; t++) {
                if (t < n) {
                    const uint4 xv = *reinterpret_cast<const uint4 *>(xs + t * k + v * 8);
                    float xf[8];
                    words<__half>::to_f(xv.x, xf);
                    words<__half>::to_f(xv.y, xf + 2);
                    words<__half>::to_f(xv.z, xf + 4);
                    words<__half>::to_f(xv.w, xf + 6);
#pragma unroll
                    for (int e = 0; e < 8; e++) acc[t] = fmaf(wf[e], xf[e], acc[t]);
                }
            }
        }
    }
}

/* Unit u is complete: its sums over the warp, then lane t < n writes token t's output. */
template <int NT, int MODE>
__device__ __forceinline__ void pg_store(const pg_args &a, int u, float (&acc)[2][NT], int lane)
{
#pragma unroll
    for (int t = 0; t < NT; t++) {
        acc[0][t] = warp_sum(acc[0][t]);
        if (MODE == PG_SWIGLU) acc[1][t] = warp_sum(acc[1][t]);
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        if (t != lane || t >= a.n) continue;
        if (MODE == PG_SWIGLU) {
            /* op_matmul's g and u (round(acc + 0)), then silu_mul_kernel's expression */
            const float g = rndf(acc[0][t] + 0.0f, DTYPE_F16), up = rndf(acc[1][t] + 0.0f, DTYPE_F16);
            a.y[0][(int64_t)t * a.units + u] = __float2half_rn(silu_mul_f(g, up, DTYPE_F16));
        } else {
            const float v = acc[0][t] + (a.bias ? ldf(a.bias, a.bdt, u) : 0.0f); /* the one-pass GEMV's sum */
            if (MODE == PG_RES) { /* cuda_add(y, res, round(v)) */
                const int64_t i = (int64_t)t * a.units + u;
                const float r = __half2float(__ushort_as_half(__ldcg(reinterpret_cast<const unsigned short *>(a.res) + i)));
                a.y[0][i] = __float2half_rn(__fadd_rn(r, rndf(v, DTYPE_F16)));
            } else {
                __half *yp = a.y[0];
                int64_t o0 = 0, o1 = a.off[1];
#pragma unroll
                for (int p = 1; p < RMSNORM_MATMUL_MAX_PARTS; p++)
                    if (p < a.np && u >= a.off[p]) {
                        yp = a.y[p];
                        o0 = a.off[p];
                        o1 = a.off[p + 1];
                    }
                yp[t * (o1 - o0) + (u - o0)] = __float2half_rn(v);
            }
        }
    }
}

/* the cursor over a warp's chunks: unit u (its rows u, and u + units for SwiGLU's up row), row r of
 * the unit, chunk p of the row */
struct pg_cur {
    int u, r, p;
};

template <int RPU>
__device__ __forceinline__ bool pg_next(pg_cur &q, int cpr, int tw) /* true when a unit was completed */
{
    if (++q.p < cpr) return false;
    q.p = 0;
    if (++q.r < RPU) return false;
    q.r = 0;
    q.u += tw;
    return true;
}

/* uses the chunk in b (at cursor q), then moves q on; a completed unit is stored */
template <int NT, int U, int MODE>
__device__ __forceinline__ void pg_use(const pg_args &a, const uint4 (&b)[U], float (&acc)[2][NT], const __half *xs,
                                       pg_cur &q, int cpr, int nv, int tw, int lane)
{
    constexpr int RPU = MODE == PG_SWIGLU ? 2 : 1;
    if (RPU == 1 || q.r == 0) pg_fma<NT, U>(acc[0], b, xs, (int)a.k, a.n, q.p, nv, lane);
    else pg_fma<NT, U>(acc[1], b, xs, (int)a.k, a.n, q.p, nv, lane);
    const int u = q.u;
    if (!pg_next<RPU>(q, cpr, tw)) return;
    pg_store<NT, MODE>(a, u, acc, lane);
#pragma unroll
    for (int t = 0; t < NT; t++) acc[0][t] = acc[1][t] = 0.0f;
}

/* loads the chunk at cursor q into b, then moves q on */
template <int U, int MODE>
__device__ __forceinline__ void pg_fetch(const pg_args &a, uint4 (&b)[U], const uint4 *w4, pg_cur &q, int cpr, int nv,
                                         int tw, int lane)
{
    constexpr int RPU = MODE == PG_SWIGLU ? 2 : 1;
    pg_load<U>(b, w4, q.u + q.r * (int)a.units, q.p, nv, lane);
    pg_next<RPU>(q, cpr, tw);
}

/* dst[0..16) = src[0..16) bytes, asynchronously through L2 (cp.async.cg; sm_75: a plain copy) */
__device__ __forceinline__ void pg_cp16(void *dst, const void *src)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"((uint32_t)__cvta_generic_to_shared(dst)),
                 "l"(src)
                 : "memory");
#else
    *reinterpret_cast<uint4 *>(dst) = __ldcg(reinterpret_cast<const uint4 *>(src));
#endif
}

/* waits for this thread's pg_cp16 copies */
__device__ __forceinline__ void pg_cp_wait_all()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

/* 64 registers (4 blocks of 256 per SM) where the accumulators allow it without spilling */
#define PG_MIN_BLOCKS(NT, U, NORM) ((U) <= 4 && (NT) == 1 ? ((NORM) ? 3 : 4) : 2)

template <int NT, int U, int MODE, bool NORM>
__global__ void __launch_bounds__(PG_THREADS, PG_MIN_BLOCKS(NT, U, NORM)) pgemv_kernel(const pg_args a)
{
    extern __shared__ __align__(16) unsigned char pg_smem[];
    __half *xs = reinterpret_cast<__half *>(pg_smem); /* [n, k]: the staged input */
    __shared__ double red[PG_WARPS];
    constexpr int RPU = MODE == PG_SWIGLU ? 2 : 1;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, n = a.n, k = (int)a.k, units = (int)a.units;
    const int nv = k / 8, cpr = (nv + 32 * U - 1) / (32 * U);
    const int gw = blockIdx.x * PG_WARPS + warp, tw = gridDim.x * PG_WARPS;
    const int nchunks = gw < units ? ((units - 1 - gw) / tw + 1) * RPU * cpr : 0;
    const uint4 *w4 = reinterpret_cast<const uint4 *>(a.w);
    if (a.trig_early) pdl_trigger();

    uint4 b0[U], b1[U];
    pg_cur lq = {gw, 0, 0}, uq = lq; /* the load and use cursors */
    if (nchunks > 0) pg_fetch<U, MODE>(a, b0, w4, lq, cpr, nv, tw, lane); /* before the wait: weights only */
    if (nchunks <= 1) pdl_trigger();
    pdl_wait();

    /* the input, staged */
    if (NORM) {
        for (int t = 0; t < n; t++)
            norm_row_256(xs + t * k, reinterpret_cast<const unsigned short *>(a.x) + (int64_t)t * k, k, a.nw, a.nwdt, a.eps, red);
    } else {
        for (int i = threadIdx.x; i < n * nv; i += PG_THREADS) pg_cp16(xs + i * 8, a.x + (int64_t)i * 8);
        pg_cp_wait_all();
    }
    __syncthreads();

    float acc[2][NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[0][t] = acc[1][t] = 0.0f;
    for (int c = 0; c < nchunks; c += 2) {
        if (c + 1 < nchunks) {
            pg_fetch<U, MODE>(a, b1, w4, lq, cpr, nv, tw, lane);
            if (c + 2 == nchunks) pdl_trigger(); /* the last loads are in flight */
        }
        pg_use<NT, U, MODE>(a, b0, acc, xs, uq, cpr, nv, tw, lane);
        if (c + 2 < nchunks) {
            pg_fetch<U, MODE>(a, b0, w4, lq, cpr, nv, tw, lane);
            if (c + 3 == nchunks) pdl_trigger();
        }
        if (c + 1 < nchunks) pg_use<NT, U, MODE>(a, b1, acc, xs, uq, cpr, nv, tw, lane);
    }
}

static bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* The kernel takes x and w (the outputs are checked by the callers) */
static bool pg_fits(const struct cuda_ctx *c, const struct tensor *x, const struct tensor *w, bool force)
{
    const int64_t n = x->shape[0], k = x->shape[1];
    const size_t smem = (size_t)(n * k) * sizeof(__half);
    const bool on = c->pgemv || (c->pgemv_min_k > 0 && k >= c->pgemv_min_k && n == 1); /* long rows: always */
    return (force || (on && n <= c->gemv16_max)) && n >= 1 && n <= PG_MAX_TOKENS && w->ndim == 2 &&
           x->dtype == DTYPE_F16 && w->dtype == DTYPE_F16 && k >= 8 && k % 8 == 0 && aligned16(x->data) && aligned16(w->data) &&
           smem <= PG_SMEM_MAX && smem <= (size_t)c->smem_optin && w->shape[0] < ((int64_t)1 << 30);
    /* (k fits the staged input, so it is small; the row indices of the kernel are 32-bit) */
}

static bool pg_float(const struct tensor *t)
{
    return t->dtype == DTYPE_F16 || t->dtype == DTYPE_BF16 || t->dtype == DTYPE_F32;
}

template <int NT, int U, int MODE, bool NORM>
static void pg_launch_one(struct cuda_ctx *c, const pg_args &a, int bps)
{
    void (*kern)(const pg_args) = pgemv_kernel<NT, U, MODE, NORM>;
    const size_t smem = (size_t)(a.n * a.k) * sizeof(__half);
    if (smem > ((size_t)48 << 10)) /* above the default limit: opt in (pg_fits kept it under the card's) */
        CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    /* bps blocks per SM, at most what fits at once (the accumulators of n > 2 take more registers) */
    int fit = 1;
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fit, kern, PG_THREADS, smem));
    if (bps < 1) bps = 1;
    if (fit >= 1 && bps > fit) bps = fit;
    const int64_t want = (a.units + PG_WARPS - 1) / PG_WARPS, cap = (int64_t)c->n_sm * bps;
    cuda_launch_ps(c, c->pdl != 0, kern, dim3((unsigned)(want < cap ? want : cap)), dim3(PG_THREADS), smem, a);
}

template <int MODE, bool NORM>
static void pg_launch(struct cuda_ctx *c, pg_args a, int bps, int u)
{
    if (a.units == 0) return;
    a.trig_early = c->pgemv_trig_early;
    const int n = a.n;
    if (u >= 8) {
        if (n == 1) pg_launch_one<1, 8, MODE, NORM>(c, a, bps);
        else if (n == 2) pg_launch_one<2, 8, MODE, NORM>(c, a, bps);
        else if (n <= 4) pg_launch_one<4, 8, MODE, NORM>(c, a, bps);
        else pg_launch_one<8, 8, MODE, NORM>(c, a, bps);
    } else {
        if (n == 1) pg_launch_one<1, 4, MODE, NORM>(c, a, bps);
        else if (n == 2) pg_launch_one<2, 4, MODE, NORM>(c, a, bps);
        else if (n <= 4) pg_launch_one<4, 4, MODE, NORM>(c, a, bps);
        else pg_launch_one<8, 4, MODE, NORM>(c, a, bps);
    }
}

/* the arguments every variant shares */
static pg_args pg_base(const struct tensor *x, const struct tensor *w, const struct tensor *nw, float eps)
{
    pg_args a;
    memset(&a, 0, sizeof a);
    a.w = (const __half *)w->data;
    a.x = (const __half *)x->data;
    a.nw = nw ? nw->data : NULL;
    a.nwdt = nw ? (int)nw->dtype : 0;
    a.n = (int)x->shape[0];
    a.k = x->shape[1];
    a.eps = eps;
    return a;
}

static bool pg_matmul(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *w,
                      const struct tensor *bias, bool force, int bps, int u)
{
    if (!pg_fits(c, x, w, force) || y->dtype != DTYPE_F16 || (bias && !pg_float(bias))) return false;
    pg_args a = pg_base(x, w, NULL, 0.0f);
    a.bias = bias ? bias->data : NULL;
    a.bdt = bias ? (int)bias->dtype : 0;
    a.y[0] = (__half *)y->data;
    a.np = 1;
    a.units = a.off[1] = w->shape[0];
    pg_launch<PG_PARTS, false>(c, a, bps, u);
    return true;
}

bool cuda_pgemv_matmul(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *w,
                       const struct tensor *bias)
{
    return pg_matmul(c, y, x, w, bias, false, c->pgemv_bps, c->pgemv_u);
}

bool cuda_pgemv_linear_res(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *w,
                           const struct tensor *bias, const struct tensor *res)
{
    if (!pg_fits(c, x, w, false) || y->dtype != DTYPE_F16 || res->dtype != DTYPE_F16 || (bias && !pg_float(bias)))
        return false;
    pg_args a = pg_base(x, w, NULL, 0.0f);
    a.bias = bias ? bias->data : NULL;
    a.bdt = bias ? (int)bias->dtype : 0;
    a.y[0] = (__half *)y->data;
    a.res = (const __half *)res->data;
    a.units = w->shape[0];
    pg_launch<PG_RES, false>(c, a, c->pgemv_bps, c->pgemv_u);
    return true;
}

/* For `test_cuda_ops bench`: op_matmul on this kernel with a forced launch shape (bps blocks per SM, u
 * loads per lane per chunk), whatever the context's switches. 0 (nothing done) when it does not apply. */
extern "C" int cuda_pgemv_config(struct tensor *y, const struct tensor *x, const struct tensor *w, int bps, int u)
{
    struct cuda_ctx *c = cuda_ctx_get(y->dev.ordinal);
    return pg_matmul(c, y, x, w, NULL, true, bps, u) ? 1 : 0;
}

/* For the bench: where a PDL-launched successor may start (1: at once, 0: after the last loads) */
extern "C" void cuda_pgemv_set_trigger(int ordinal, int early)
{
    struct cuda_ctx *c = cuda_ctx_get(ordinal);
    c->pgemv_trig_early = early != 0;
}

/* ---- the fused ops ---- */

/* xn for the plain-op fallback: op_rmsnorm into scratch, or x itself without a norm */
static struct tensor pg_norm_input(struct cuda_ctx *c, const struct tensor *x, const struct tensor *nw, float eps)
{
    struct tensor xn = *x;
    if (!nw) return xn;
    xn.data = cuda_scratch(c, SCRATCH_FUSE_XN, tensor_nbytes(x));
    cuda_rmsnorm(&xn, x, nw, eps);
    return xn;
}

extern "C" void cuda_rmsnorm_matmul(struct tensor *const *ys, int np, const struct tensor *x, const struct tensor *nw,
                                    float eps, const struct tensor *w)
{
    struct cuda_ctx *c = cuda_ctx_get(x->dev.ordinal);
    if (x->shape[0] == 0) return;
    bool ok = pg_fits(c, x, w, false) && np <= RMSNORM_MATMUL_MAX_PARTS;
    for (int i = 0; i < np && ok; i++) ok = ys[i]->dtype == DTYPE_F16;
    if (ok) {
        pg_args a = pg_base(x, w, nw, eps);
        a.np = np;
        for (int i = 0; i < np; i++) {
            a.y[i] = (__half *)ys[i]->data;
            a.off[i + 1] = a.off[i] + ys[i]->shape[1];
        }
        a.units = w->shape[0];
        if (nw) pg_launch<PG_PARTS, true>(c, a, c->pgemv_bps, c->pgemv_u);
        else pg_launch<PG_PARTS, false>(c, a, c->pgemv_bps, c->pgemv_u);
        return;
    }
    if (cuda_qgemv_rmsnorm_matmul(c, ys, np, x, nw, eps, w)) return; /* quantized weights, one token */
    /* the plain ops: the norm, then one matmul per part */
    struct tensor xn = pg_norm_input(c, x, nw, eps);
    int64_t off = 0;
    for (int i = 0; i < np; i++) {
        struct tensor wi = tensor_rows_view(w, off, ys[i]->shape[1]);
        cuda_matmul(ys[i], &xn, &wi, NULL);
        off += ys[i]->shape[1];
    }
}

extern "C" void cuda_rmsnorm_swiglu(struct tensor *y, const struct tensor *x, const struct tensor *nw, float eps,
                                    const struct tensor *w)
{
    struct cuda_ctx *c = cuda_ctx_get(x->dev.ordinal);
    const int64_t n = x->shape[0], f = y->shape[1];
    if (n == 0 || f == 0) return;
    if (pg_fits(c, x, w, false) && y->dtype == DTYPE_F16) {
        pg_args a = pg_base(x, w, nw, eps);
        a.y[0] = (__half *)y->data;
        a.units = f;
        if (nw) pg_launch<PG_SWIGLU, true>(c, a, c->pgemv_bps, c->pgemv_u);
        else pg_launch<PG_SWIGLU, false>(c, a, c->pgemv_bps, c->pgemv_u);
        return;
    }
    if (!nw && cuda_gemv_swiglu(c, y, x, w)) return;            /* the one-pass GEMV with SwiGLU, one token */
    if (cuda_qgemv_rmsnorm_swiglu(c, y, x, nw, eps, w)) return; /* quantized weights, one token */
    /* the plain ops: the norm, gate and up into scratch (y's dtype), silu_mul */
    struct tensor xn = pg_norm_input(c, x, nw, eps);
    struct tensor g = *y, u = *y;
    const size_t half = (tensor_nbytes(y) + 255) & ~(size_t)255; /* u 256-byte aligned, as an allocation is */
    g.data = cuda_scratch(c, SCRATCH_FUSE_GU, 2 * half);
    u.data = (char *)g.data + half;
    struct tensor wg = tensor_rows_view(w, 0, f), wu = tensor_rows_view(w, f, f);
    cuda_matmul(&g, &xn, &wg, NULL);
    cuda_matmul(&u, &xn, &wu, NULL);
    cuda_silu_mul(y, &g, &u);
}
