/* cuda_ops.cu: the CUDA twins of the row-wise and elementwise ops: embed, rmsnorm, layernorm,
 * rope, silu_mul, gelu_tanh, add, scale, convert, argmax, and the fused decode-step ops
 * add_rmsnorm, rope_qk (RoPE of q and k + KV append), kv_store, argmax_dev, add_i32. matmul is in
 * cuda_gemv.cu, attention in cuda_attention.cu.
 * Numerics follow backend_cpu.c operation by operation: products and sums that the CPU rounds to
 * fp32 one at a time are written with __fmul_rn/__fadd_rn so nvcc cannot contract them into an FMA
 * (the CPU is built with -std=c11, where gcc does not contract either), and rndf() rounds to the
 * activation dtype exactly where cpu's rnd() does. Norm statistics are summed in double, as on
 * the CPU, so the fp32 statistics agree to the last bit in practice.
 * No op here synchronises except cuda_argmax, which returns host ints. Every op of a decode step
 * reads positions and token ids from device tensors, so the step can be captured into a graph. */
#include "cuda/cuda_common.cuh"

/* ---- convert, embed ---- */

__global__ void convert_kernel(void *dst, int ddt, const void *src, int sdt, int64_t n)
{
    pdl_trigger(); /* a PDL-launched successor (GEMV) may start loading its weights */
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        stf(dst, ddt, i, ldf(src, sdt, i));
}

extern "C" void cuda_convert(struct tensor *dst, const struct tensor *src)
{
    struct cuda_ctx *c = cuda_ctx_get(dst->dev.ordinal);
    int64_t n = tensor_numel(src);
    if (n == 0) return;
    if (dst->dtype == src->dtype) {
        CUDA_CHECK(cudaMemcpyAsync(dst->data, src->data, tensor_nbytes(src), cudaMemcpyDeviceToDevice, c->stream));
        return;
    }
    convert_kernel<<<cuda_grid_1d(c, n), 256, 0, c->stream>>>(dst->data, dst->dtype, src->data, src->dtype, n);
    KERNEL_CHECK();
}

/* one block per token; an id outside the table is a programmer error (the CPU CHECKs it): trap */
__global__ void embed_kernel(void *y, int ydt, const void *table, int tdt, const int32_t *ids, int64_t vocab,
                             int64_t d, int64_t nw)
{
    pdl_trigger(); /* a PDL-launched successor (GEMV) may start loading its weights */
    pdl_wait();    /* launched as a dependent (cuda_launch_dep): the previous kernel's output is ready */
    const int64_t i = blockIdx.x;
    const int32_t id = ids[i];
    if (id < 0 || id >= vocab) {
        if (threadIdx.x == 0) printf("cuda_embed: token id %d outside the vocabulary of %lld\n", id, (long long)vocab);
        __trap();
    }
    if (nw > 0) {
        /* the same dtype: a copy of the row in nw 16-byte words, four loads of a thread issued before its
         * stores (a scalar loop serialised each element's load behind the previous store: 9 us a token on
         * the H200 for d = 4096 in fp16) */
        const uint4 *src = reinterpret_cast<const uint4 *>((const char *)table + (int64_t)id * nw * 16);
        uint4 *dst = reinterpret_cast<uint4 *>((char *)y + i * nw * 16);
        for (int64_t c = threadIdx.x; c < nw; c += 4 * (int64_t)blockDim.x) {
            uint4 v[4];
#pragma unroll
            for (int u = 0; u < 4; u++)
                if (c + u * blockDim.x < nw) v[u] = src[c + u * blockDim.x];
#pragma unroll
            for (int u = 0; u < 4; u++)
                if (c + u * blockDim.x < nw) dst[c + u * blockDim.x] = v[u];
        }
        return;
    }
    for (int64_t c = threadIdx.x; c < d; c += blockDim.x) stf(y, ydt, i * d + c, ldf(table, tdt, (int64_t)id * d + c));
}

extern "C" void cuda_embed(struct tensor *y, const struct tensor *table, const struct tensor *ids)
{
    struct cuda_ctx *c = cuda_ctx_get(y->dev.ordinal);
    const int64_t n = y->shape[0], d = y->shape[1];
    if (n == 0) return;
    const int64_t rb = d * (int64_t)dtype_size(y->dtype);
    const int64_t nw = y->dtype == table->dtype && rb % 16 == 0 && ((uintptr_t)y->data & 15) == 0 &&
                               ((uintptr_t)table->data & 15) == 0
                           ? rb / 16
                           : 0;
    cuda_launch_dep(c, embed_kernel, dim3((unsigned)n), dim3(256), 0, y->data, y->dtype, table->data, table->dtype,
                                                     (const int32_t *)ids->data, table->shape[0], d, nw);
    KERNEL_CHECK();
}

/* ---- norms: one block per row ---- */

#define NORM_THREADS 256

/* The LLM's rows (d <= NORM_PT_MAX * NORM_THREADS, 4096 for Llama-3-8B) keep their values in
 * registers: every load of a row is issued before the first store, so a row costs two or three
 * memory latencies. Looping over global memory instead (the generic PT = 0 form, for wider rows)
 * serialised each element's load behind the previous element's store (h, o, y, xn may alias as far as
 * the compiler knows): 16 round trips, 9-13 us per call at d = 4096 (ncu, session 6), 15 % of a
 * decode step. Both forms sum the same elements per thread in the same order, so their results are
 * identical. */
#define NORM_PT_MAX 16

/* The vector form of both norms, for rows whose tensors all have one dtype T (the decode step's fp16
 * rows), whose width is a multiple of a 16-byte vector (8 halves, 4 floats) and whose pointers are
 * 16-byte aligned: one block per row, thread t holding the vectors t, t + blockDim.x, ... (VPT of
 * them) of x, o and w. At d = 4096 fp16 that is 512 threads with one 16-byte load per array each,
 * all issued before any arithmetic; the dtype is a template parameter, not a per-element switch.
 * Every rounding point is the generic form's. ADD: add_rmsnorm (hout = round(x + o), then the norm of
 * hout); else rmsnorm (o, hout unused; y may alias x: each thread reads its vectors before it writes
 * them). The double sum of squares, two ways (cuda_set_small_vec):
 *  - TREE (1, the default): the generic form's summation tree exactly, so the results are the same
 *    bits as rmsnorm_kernel / add_rmsnorm_kernel and the fused GEMV's norm prologue (cuda_pgemv.cu):
 *    the row's values go through shared memory (d floats, exact) and the first NORM_THREADS threads
 *    sum j = t, t + NORM_THREADS, ... in order, then block_sum_d's butterfly and warp order. One
 *    more barrier and a shared-memory round trip than the other way; d <= NORMV_TREE_MAX.
 *  - otherwise (2): each thread sums its own vectors, a warp butterfly, one shared-memory exchange and a
 *    butterfly over the warps' partials. The double sums may then differ from the generic form's in
 *    their last bits; the fp32 statistic rounded from them (all that is used) differs only when they
 *    straddle an fp32 rounding boundary (~2^-23 per row). */
#define NORMV_THREADS 512
#define NORMV_VPT_MAX 4
#define NORMV_TREE_MAX 8192 /* TREE: d floats of dynamic shared memory, at most 32 KiB */

template <typename T> __device__ __forceinline__ T f2t(float v);
template <> __device__ __forceinline__ __half f2t<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 f2t<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ float f2t<float>(float v) { return v; }

/* the 16 bytes of E = 16 / sizeof(T) elements as floats, and back (round to nearest even) */
template <typename T> __device__ __forceinline__ void vec_to_f(const uint4 &u, float *f)
{
    constexpr int PW = words<T>::per_word;
    words<T>::to_f(u.x, f), words<T>::to_f(u.y, f + PW), words<T>::to_f(u.z, f + 2 * PW), words<T>::to_f(u.w, f + 3 * PW);
}
template <typename T> __device__ __forceinline__ uint4 f_to_vec(const float *f)
{
    uint4 u;
    T *t = reinterpret_cast<T *>(&u);
#pragma unroll
    for (int e = 0; e < 16 / (int)sizeof(T); e++) t[e] = f2t<T>(f[e]);
    return u;
}

template <typename T, int VPT, bool ADD, bool TREE>
__global__ void __launch_bounds__(NORMV_THREADS)
rmsnorm_vec_kernel(const T *x, const T *o, T *hout, T *y, const T *w, int64_t d, float eps)
{
    pdl_trigger(); /* a PDL-launched successor (GEMV) may start loading its weights */
    pdl_wait();    /* launched as a dependent (cuda_launch_dep): the previous kernel's output is ready */
    constexpr int E = 16 / (int)sizeof(T), dt = dtype_of<T>::value;
    __shared__ double red[NORMV_THREADS / 32];
    extern __shared__ float4 row_sh[]; /* TREE: the row's d values */
    const int64_t base = blockIdx.x * d, nv = d / E;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    uint4 xv[VPT], ov[VPT], wv[VPT];
#pragma unroll
    for (int i = 0; i < VPT; i++) {
        const int64_t c = threadIdx.x + (int64_t)i * blockDim.x;
        if (c < nv) {
            xv[i] = *reinterpret_cast<const uint4 *>(x + base + c * E);
            if (ADD) ov[i] = __ldg(reinterpret_cast<const uint4 *>(o + base + c * E));
            wv[i] = __ldg(reinterpret_cast<const uint4 *>(w + c * E));
        }
    }
    float v[VPT][E];
    double ss = 0;
#pragma unroll
    for (int i = 0; i < VPT; i++) {
        const int64_t c = threadIdx.x + (int64_t)i * blockDim.x;
        if (c >= nv) continue;
        vec_to_f<T>(xv[i], v[i]);
        if (ADD) {
            float of[E];
            vec_to_f<T>(ov[i], of);
#pragma unroll
            for (int e = 0; e < E; e++) v[i][e] = rndf(__fadd_rn(v[i][e], of[e]), dt); /* cpu_add */
            *reinterpret_cast<uint4 *>(hout + base + c * E) = f_to_vec<T>(v[i]);
        }
        if (TREE) {
#pragma unroll
            for (int q = 0; q < E / 4; q++)
                row_sh[c * (E / 4) + q] = make_float4(v[i][4 * q], v[i][4 * q + 1], v[i][4 * q + 2], v[i][4 * q + 3]);
        } else {
#pragma unroll
            for (int e = 0; e < E; e++) ss += (double)v[i][e] * v[i][e];
        }
    }
    if (TREE) {
        /* block_sum_d over NORM_THREADS threads holding j = t, t + NORM_THREADS, ...: rmsnorm_kernel's sums */
        const float *sv = reinterpret_cast<const float *>(row_sh);
        __syncthreads();
        if (threadIdx.x < NORM_THREADS)
            for (int64_t j = threadIdx.x; j < d; j += NORM_THREADS) ss += (double)sv[j] * sv[j];
        ss = warp_sum_d(ss);
        if (lane == 0 && warp < NORM_THREADS / 32) red[warp] = ss;
        __syncthreads();
        ss = 0;
        for (int q = 0; q < NORM_THREADS / 32; q++) ss += red[q];
    } else {
        ss = warp_sum_d(ss);
        if (lane == 0) red[warp] = ss;
        __syncthreads();
        ss = lane < (int)(blockDim.x >> 5) ? red[lane] : 0.0;
        ss = warp_sum_d(ss); /* every warp sums the partials in the same order: one value for the block */
    }
    const float inv = 1.0f / sqrtf((float)(ss / (double)d) + eps);
#pragma unroll
    for (int i = 0; i < VPT; i++) {
        const int64_t c = threadIdx.x + (int64_t)i * blockDim.x;
        if (c >= nv) continue;
        float wf[E], r[E];
        vec_to_f<T>(wv[i], wf);
#pragma unroll
        for (int e = 0; e < E; e++) r[e] = __fmul_rn(wf[e], rndf(__fmul_rn(v[i][e], inv), dt)); /* torch rounds before the weight */
        *reinterpret_cast<uint4 *>(y + base + c * E) = f_to_vec<T>(r);
    }
}

static bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* Launches the vector form when the row allows it (d a multiple of the vector, at most NORMV_VPT_MAX
 * vectors per thread; TREE: d <= NORMV_TREE_MAX); false otherwise. Pointers: checked by norm_vec. */
template <typename T, bool ADD, bool TREE>
static bool norm_vec_launch(struct cuda_ctx *c, int64_t rows, int64_t d, const void *x, const void *o, void *hout,
                            void *y, const void *w, float eps)
{
    constexpr int E = 16 / (int)sizeof(T);
    if (d % E || (TREE && d > NORMV_TREE_MAX)) return false;
    const int64_t nv = d / E;
    int threads = nv >= NORMV_THREADS ? NORMV_THREADS : (int)((nv + 31) / 32 * 32);
    if (TREE && threads < NORM_THREADS) threads = NORM_THREADS; /* the tree's NORM_THREADS partial sums */
    const int64_t vpt = (nv + threads - 1) / threads;
    const size_t sh = TREE ? (size_t)d * sizeof(float) : 0;
    const T *xp = (const T *)x, *op = (const T *)o, *wp = (const T *)w;
    T *hp = (T *)hout, *yp = (T *)y;
    switch (vpt) {
    case 1: cuda_launch_dep(c, rmsnorm_vec_kernel<T, 1, ADD, TREE>, dim3((unsigned)rows), dim3(threads), sh, xp, op, hp, yp, wp, d, eps); break;
    case 2: cuda_launch_dep(c, rmsnorm_vec_kernel<T, 2, ADD, TREE>, dim3((unsigned)rows), dim3(threads), sh, xp, op, hp, yp, wp, d, eps); break;
    case 3: cuda_launch_dep(c, rmsnorm_vec_kernel<T, 3, ADD, TREE>, dim3((unsigned)rows), dim3(threads), sh, xp, op, hp, yp, wp, d, eps); break;
    case 4: cuda_launch_dep(c, rmsnorm_vec_kernel<T, 4, ADD, TREE>, dim3((unsigned)rows), dim3(threads), sh, xp, op, hp, yp, wp, d, eps); break;
    default: return false;
    }
    KERNEL_CHECK();
    return true;
}

template <typename T>
static bool norm_vec_t(struct cuda_ctx *c, int64_t rows, int64_t d, const void *x, const void *o, void *hout, void *y,
                       const void *w, float eps)
{
    const bool tree = c->small_vec == 1;
    if (o) return tree ? norm_vec_launch<T, true, true>(c, rows, d, x, o, hout, y, w, eps)
                       : norm_vec_launch<T, true, false>(c, rows, d, x, o, hout, y, w, eps);
    return tree ? norm_vec_launch<T, false, true>(c, rows, d, x, o, hout, y, w, eps)
                : norm_vec_launch<T, false, false>(c, rows, d, x, o, hout, y, w, eps);
}

/* The vector form of rmsnorm (o, hout NULL) or add_rmsnorm when the context has it on and every
 * tensor has one dtype and a 16-byte aligned start; false: the caller runs the generic form. */
static bool norm_vec(struct cuda_ctx *c, int64_t rows, int64_t d, const struct tensor *x, const struct tensor *o,
                     struct tensor *hout, struct tensor *y, const struct tensor *w, float eps)
{
    const enum dtype dt = x->dtype;
    if (!c->small_vec || y->dtype != dt || w->dtype != dt || (o && o->dtype != dt)) return false;
    if (!aligned16(x->data) || !aligned16(y->data) || !aligned16(w->data) || (o && !aligned16(o->data))) return false;
    const void *op = o ? o->data : NULL;
    void *hp = hout ? hout->data : NULL;
    switch (dt) {
    case DTYPE_F16: return norm_vec_t<__half>(c, rows, d, x->data, op, hp, y->data, w->data, eps);
    case DTYPE_BF16: return norm_vec_t<__nv_bfloat16>(c, rows, d, x->data, op, hp, y->data, w->data, eps);
    case DTYPE_F32: return norm_vec_t<float>(c, rows, d, x->data, op, hp, y->data, w->data, eps);
    default: return false;
    }
}

template <int PT>
__global__ void __launch_bounds__(NORM_THREADS)
rmsnorm_kernel(void *y, int ydt, const void *x, int xdt, const void *w, int wdt, int64_t d, float eps)
{
    pdl_trigger(); /* a PDL-launched successor (GEMV) may start loading its weights */
    pdl_wait();    /* launched as a dependent (cuda_launch_dep): the previous kernel's output is ready */
    __shared__ double red[NORM_THREADS / 32];
    const int64_t base = blockIdx.x * d;
    double ss = 0;
    if (PT > 0) {
        float xv[PT > 0 ? PT : 1], wv[PT > 0 ? PT : 1];
#pragma unroll
        for (int i = 0; i < PT; i++) {
            const int64_t j = threadIdx.x + (int64_t)i * NORM_THREADS;
            xv[i] = j < d ? ldf(x, xdt, base + j) : 0.0f;
            wv[i] = j < d ? ldf(w, wdt, j) : 0.0f;
        }
#pragma unroll
        for (int i = 0; i < PT; i++) ss += (double)xv[i] * xv[i];
        ss = block_sum_d(ss, red);
        const float inv = 1.0f / sqrtf((float)(ss / (double)d) + eps);
#pragma unroll
        for (int i = 0; i < PT; i++) {
            const int64_t j = threadIdx.x + (int64_t)i * NORM_THREADS;
            if (j < d) stf(y, ydt, base + j, __fmul_rn(wv[i], rndf(__fmul_rn(xv[i], inv), xdt)));
        }
        return;
    }
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
        double v = ldf(x, xdt, base + j);
        ss += v * v;
    }
    ss = block_sum_d(ss, red);
    const float inv = 1.0f / sqrtf((float)(ss / (double)d) + eps);
    /* y may alias x: each element is read and written by the same thread */
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
        float xn = rndf(__fmul_rn(ldf(x, xdt, base + j), inv), xdt); /* torch rounds before the weight */
        stf(y, ydt, base + j, __fmul_rn(ldf(w, wdt, j), xn));
    }
}

extern "C" void cuda_rmsnorm(struct tensor *y, const struct tensor *x, const struct tensor *w, float eps)
{
    struct cuda_ctx *c = cuda_ctx_get(y->dev.ordinal);
    const int64_t d = x->shape[x->ndim - 1], rows = tensor_numel(x) / d;
    if (rows == 0) return;
    if (norm_vec(c, rows, d, x, NULL, NULL, y, w, eps)) return;
    if (d <= NORM_PT_MAX * NORM_THREADS)
        cuda_launch_dep(c, rmsnorm_kernel<NORM_PT_MAX>, dim3((unsigned)rows), dim3(NORM_THREADS), 0, y->data, y->dtype, x->data, x->dtype,
                                                                                   w->data, w->dtype, d, eps);
    else
        cuda_launch_dep(c, rmsnorm_kernel<0>, dim3((unsigned)rows), dim3(NORM_THREADS), 0, y->data, y->dtype, x->data, x->dtype, w->data,
                                                                          w->dtype, d, eps);
    KERNEL_CHECK();
}

/* h = round(h + o); xn = rmsnorm(h) * w. One block per row; each thread re-reads only the h
 * elements it wrote itself, so no barrier is needed between the add and the statistics. */
template <int PT>
__global__ void __launch_bounds__(NORM_THREADS)
add_rmsnorm_kernel(void *h, int hdt, const void *o, int odt, void *xn, int xdt, const void *w, int wdt, int64_t d,
                   float eps)
{
    pdl_trigger(); /* a PDL-launched successor (GEMV) may start loading its weights */
    pdl_wait();    /* launched as a dependent (cuda_launch_dep): the previous kernel's output is ready */
    __shared__ double red[NORM_THREADS / 32];
    const int64_t base = blockIdx.x * d;
    double ss = 0;
    if (PT > 0) {
        float hv[PT > 0 ? PT : 1], ov[PT > 0 ? PT : 1], wv[PT > 0 ? PT : 1];
#pragma unroll
        for (int i = 0; i < PT; i++) {
            const int64_t j = threadIdx.x + (int64_t)i * NORM_THREADS;
            hv[i] = j < d ? ldf(h, hdt, base + j) : 0.0f;
            ov[i] = j < d ? ldf(o, odt, base + j) : 0.0f;
            wv[i] = j < d ? ldf(w, wdt, j) : 0.0f;
        }
#pragma unroll
        for (int i = 0; i < PT; i++) {
            const int64_t j = threadIdx.x + (int64_t)i * NORM_THREADS;
            hv[i] = rndf(__fadd_rn(hv[i], ov[i]), hdt); /* cpu_add */
            if (j < d) stf(h, hdt, base + j, hv[i]);
            ss += (double)hv[i] * hv[i];
        }
        ss = block_sum_d(ss, red);
        const float inv = 1.0f / sqrtf((float)(ss / (double)d) + eps);
#pragma unroll
        for (int i = 0; i < PT; i++) {
            const int64_t j = threadIdx.x + (int64_t)i * NORM_THREADS;
            if (j < d) stf(xn, xdt, base + j, __fmul_rn(wv[i], rndf(__fmul_rn(hv[i], inv), hdt)));
        }
        return;
    }
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
        const float v = rndf(__fadd_rn(ldf(h, hdt, base + j), ldf(o, odt, base + j)), hdt); /* cpu_add */
        stf(h, hdt, base + j, v);
        ss += (double)v * v;
    }
    ss = block_sum_d(ss, red);
    const float inv = 1.0f / sqrtf((float)(ss / (double)d) + eps);
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
        const float xr = rndf(__fmul_rn(ldf(h, hdt, base + j), inv), hdt);
        stf(xn, xdt, base + j, __fmul_rn(ldf(w, wdt, j), xr));
    }
}

extern "C" void cuda_add_rmsnorm(struct tensor *h, struct tensor *xn, const struct tensor *o, const struct tensor *w,
                                 float eps)
{
    struct cuda_ctx *c = cuda_ctx_get(h->dev.ordinal);
    const int64_t d = h->shape[h->ndim - 1], rows = tensor_numel(h) / d;
    if (rows == 0) return;
    if (norm_vec(c, rows, d, h, o, h, xn, w, eps)) return;
    if (d <= NORM_PT_MAX * NORM_THREADS)
        cuda_launch_dep(c, add_rmsnorm_kernel<NORM_PT_MAX>, dim3((unsigned)rows), dim3(NORM_THREADS), 0, 
            h->data, h->dtype, o->data, o->dtype, xn->data, xn->dtype, w->data, w->dtype, d, eps);
    else
        cuda_launch_dep(c, add_rmsnorm_kernel<0>, dim3((unsigned)rows), dim3(NORM_THREADS), 0, h->data, h->dtype, o->data, o->dtype,
                                                                              xn->data, xn->dtype, w->data, w->dtype, d, eps);
    KERNEL_CHECK();
}

__global__ void __launch_bounds__(NORM_THREADS)
layernorm_kernel(void *y, int ydt, const void *x, int xdt, const void *w, int wdt, const void *b, int bdt, int64_t d,
                 float eps)
{
    __shared__ double red[NORM_THREADS / 32];
    const int64_t base = blockIdx.x * d;
    double s = 0;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) s += (double)ldf(x, xdt, base + j);
    const double mean = block_sum_d(s, red) / (double)d;
    double ss = 0;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
        double t = (double)ldf(x, xdt, base + j) - mean;
        ss += t * t;
    }
    ss = block_sum_d(ss, red);
    const float rstd = 1.0f / sqrtf((float)(ss / (double)d) + eps), m = (float)mean;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
        /* (x - m) * rstd * w + b, each step rounded to fp32 like the CPU */
        float v = __fmul_rn(__fmul_rn(__fsub_rn(ldf(x, xdt, base + j), m), rstd), ldf(w, wdt, j));
        stf(y, ydt, base + j, __fadd_rn(v, ldf(b, bdt, j)));
    }
}

/* LayerNorm of fp16 rows (fp16 weight and bias) whose width is a multiple of 8, at most 2048: one
 * warp per row, 8 rows per block, each lane holding up to VPL 16-byte vectors of its row in
 * registers (vector j of the row goes to lane j % 32), so x is read from memory once and the two
 * reductions are warp shuffles with no block barrier. The arithmetic is layernorm_kernel's: double
 * sums (the sum of fp16 values is exact in double in any order, so the mean is the same bits) and
 * the same fp32 steps per element. */
#define LN_ROWS_PER_BLOCK 8
template <int VPL>
__global__ void __launch_bounds__(32 * LN_ROWS_PER_BLOCK)
layernorm_h8_kernel(__half *y, const __half *x, const __half *w, const __half *b, int64_t rows, int d, float eps)
{
    const int lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * LN_ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (row >= rows) return; /* a whole warp: no shuffle partner is missing */
    const int nv = d / 8;
    const __half *xr = x + row * d;
    float v[VPL][8];
    double s = 0;
#pragma unroll
    for (int j = 0; j < VPL; j++) {
        const int c = lane + 32 * j;
        uint4 raw = make_uint4(0, 0, 0, 0);
        if (c < nv) raw = *reinterpret_cast<const uint4 *>(xr + (int64_t)c * 8);
        const __half *h = reinterpret_cast<const __half *>(&raw);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            v[j][i] = __half2float(h[i]);
            s += (double)v[j][i];
        }
    }
    const double mean = warp_sum_d(s) / (double)d;
    double ss = 0;
#pragma unroll
    for (int j = 0; j < VPL; j++)
        if (lane + 32 * j < nv)
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const double t = (double)v[j][i] - mean;
                ss += t * t;
            }
    ss = warp_sum_d(ss);
    const float rstd = 1.0f / sqrtf((float)(ss / (double)d) + eps), m = (float)mean;
    __half *yr = y + row * d;
#pragma unroll
    for (int j = 0; j < VPL; j++) {
        const int c = lane + 32 * j;
        if (c >= nv) continue;
        const uint4 rw = *reinterpret_cast<const uint4 *>(w + c * 8), rb = *reinterpret_cast<const uint4 *>(b + c * 8);
        const __half *hw = reinterpret_cast<const __half *>(&rw), *hb = reinterpret_cast<const __half *>(&rb);
        uint4 out;
        __half *ho = reinterpret_cast<__half *>(&out);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const float t = __fmul_rn(__fmul_rn(__fsub_rn(v[j][i], m), rstd), __half2float(hw[i]));
            ho[i] = __float2half_rn(__fadd_rn(t, __half2float(hb[i])));
        }
        *reinterpret_cast<uint4 *>(yr + (int64_t)c * 8) = out; /* y may alias x: this lane read it already */
    }
}

#define LN8_MAX_D 2048 /* VPL <= 8 */

extern "C" void cuda_layernorm(struct tensor *y, const struct tensor *x, const struct tensor *w,
                               const struct tensor *b, float eps)
{
    struct cuda_ctx *c = cuda_ctx_get(y->dev.ordinal);
    const int64_t d = x->shape[x->ndim - 1], rows = tensor_numel(x) / d;
    if (rows == 0) return;
    if (x->dtype == DTYPE_F16 && y->dtype == DTYPE_F16 && w->dtype == DTYPE_F16 && b->dtype == DTYPE_F16 &&
        d % 8 == 0 && d <= LN8_MAX_D && rows <= (int64_t)INT32_MAX * LN_ROWS_PER_BLOCK && aligned16(x->data) &&
        aligned16(y->data) && aligned16(w->data) && aligned16(b->data)) {
        const unsigned grid = (unsigned)((rows + LN_ROWS_PER_BLOCK - 1) / LN_ROWS_PER_BLOCK);
        const int vpl = (int)((d / 8 + 31) / 32);
        __half *yp = (__half *)y->data;
        const __half *xp = (const __half *)x->data, *wp = (const __half *)w->data, *bp = (const __half *)b->data;
#define LN8_CASE(V)                                                                                        \
    case V: layernorm_h8_kernel<V><<<grid, 32 * LN_ROWS_PER_BLOCK, 0, c->stream>>>(yp, xp, wp, bp, rows, (int)d, eps); break;
        switch (vpl) {
            LN8_CASE(1) LN8_CASE(2) LN8_CASE(3) LN8_CASE(4) LN8_CASE(5) LN8_CASE(6) LN8_CASE(7) LN8_CASE(8)
        }
#undef LN8_CASE
        KERNEL_CHECK();
        return;
    }
    layernorm_kernel<<<(unsigned)rows, NORM_THREADS, 0, c->stream>>>(y->data, y->dtype, x->data, x->dtype, w->data,
                                                                      w->dtype, b->data, b->dtype, d, eps);
    KERNEL_CHECK();
}

/* ---- rope ---- */

#define ROPE_MAX_HALF 512
/* inv_freq travels by value as a kernel parameter (2 KiB < the 4 KiB limit): computed on the host
 * with the same powf as cpu_rope (a device powf may differ by an ulp, and at position 8000 one ulp
 * of inv_freq moves the angle by ~1e-3 rad), and nothing to upload, so it is graph-capturable. */
struct __align__(16) rope_freqs { /* aligned: the vector kernel reads two frequencies as one float2 */
    float f[ROPE_MAX_HALF];
};

/* rotates the pair (j, j + half) of row base (in place) and returns the results in o1, o2 */
__device__ __forceinline__ void rope_pair(void *x, int dt, int64_t base, int64_t j, int64_t half, float a, float &o1,
                                          float &o2)
{
    /* cosf/sinf (not __cosf): accurate for the large angles of late positions */
    const float c = rndf(cosf(a), dt), s = rndf(sinf(a), dt);
    const float x1 = ldf(x, dt, base + j), x2 = ldf(x, dt, base + j + half);
    o1 = rndf(__fadd_rn(rndf(__fmul_rn(x1, c), dt), rndf(__fmul_rn(-x2, s), dt)), dt);
    o2 = rndf(__fadd_rn(rndf(__fmul_rn(x2, c), dt), rndf(__fmul_rn(x1, s), dt)), dt);
    stf(x, dt, base + j, o1); /* in place: this thread owns the pair (j, j + half) */
    stf(x, dt, base + j + half, o2);
}

__global__ void rope_kernel(void *x, int dt, const int32_t *pos, int64_t n, int64_t nh, int64_t hd,
                            const __grid_constant__ rope_freqs inv)
{
    const int64_t half = hd / 2, total = n * nh * half;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t j = e % half, ih = e / half, i = ih / nh;
        float o1, o2;
        rope_pair(x, dt, ih * hd, j, half, __fmul_rn((float)pos[i], inv.f[j]), o1, o2);
    }
}

/* q heads and k heads of every row in one grid; a k pair is also written to the cache row of
 * position pos[i] (through the block table tab when not NULL), and the thread of k pair (j, j + half)
 * copies the v pair at the same offsets */
__global__ void rope_qk_kernel(void *q, void *k, int dt, const int32_t *pos, int64_t n, int64_t H, int64_t Hkv,
                               int64_t hd, const __grid_constant__ rope_freqs inv, const void *v, void *kc, void *vc,
                               int64_t T, const int32_t *tab, int64_t mb)
{
    pdl_trigger(); /* a PDL-launched successor (GEMV) may start loading its weights */
    pdl_wait();    /* launched as a dependent (cuda_launch_dep): the previous kernel's output is ready */
    const int64_t half = hd / 2, nh = H + Hkv, total = n * nh * half;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t j = e % half, ih = e / half, i = ih / nh, h = ih - i * nh;
        const int32_t p = pos[i];
        const float a = __fmul_rn((float)p, inv.f[j]);
        float o1, o2;
        if (h < H) {
            rope_pair(q, dt, (i * H + h) * hd, j, half, a, o1, o2);
        } else {
            const int64_t base = (i * Hkv + (h - H)) * hd;
            rope_pair(k, dt, base, j, half, a, o1, o2);
            if (kc) {
                const int64_t r = kv_page_row(tab, mb, p, T);
                if (r < 0) {
                    printf("rope_qk: position %d outside the cache of %lld rows (table of %lld blocks)\n", p,
                           (long long)T, (long long)mb);
                    __trap();
                }
                const int64_t cb = (r * Hkv + (h - H)) * hd;
                stf(kc, dt, cb + j, o1);
                stf(kc, dt, cb + j + half, o2);
                stf(vc, dt, cb + j, ldf(v, dt, base + j)); /* a copy: exact in any dtype */
                stf(vc, dt, cb + j + half, ldf(v, dt, base + j + half));
            }
        }
    }
}

static void rope_freqs_init(rope_freqs *inv, double theta, int64_t hd)
{
    memset(inv, 0, sizeof *inv);
    /* HF: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), all fp32 -- the cpu_rope expression */
    for (int64_t i = 0; i < hd / 2; i++) inv->f[i] = 1.0f / powf((float)theta, (float)(2 * i) / (float)hd);
}

/* The fast form of rope_qk for one dtype S (q, k, v and the caches) and heads of hd <= 128 with an even
 * half: one warp per (token, head) row of q or k, lane l rotating the pairs (j, j + half) of
 * j = 2l, 2l + 1 with two-element loads and stores (hd = 128: the 64 pairs of a head, one warp). Its
 * loads of x and v are issued before the position's cache row is looked up and before the first
 * store (the generic kernel loaded v only after its k stores, another memory latency); the dtype is a
 * template parameter. The arithmetic is rope_pair's, expression for expression (cosf/sinf of the same
 * fp32 angle, the same roundings), so the results are the same bits. */
#define ROPEV_WARPS 4
#define ROPEV_MAX_HALF 64

__device__ __forceinline__ float s2f(__half v) { return __half2float(v); }
__device__ __forceinline__ float s2f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float s2f(float v) { return v; }

/* two consecutive elements of S as one load or store (4 bytes for 16-bit types, 8 for f32) */
template <typename S> struct pair_bits { using type = uint32_t; };
template <> struct pair_bits<float> { using type = uint2; };

template <typename S> __device__ __forceinline__ typename pair_bits<S>::type ld_pair(const S *p)
{
    return *reinterpret_cast<const typename pair_bits<S>::type *>(p);
}
template <typename S> __device__ __forceinline__ void pair_to_f(typename pair_bits<S>::type u, float &a, float &b)
{
    const S *s = reinterpret_cast<const S *>(&u);
    a = s2f(s[0]), b = s2f(s[1]);
}
template <typename S> __device__ __forceinline__ void st_pair(S *p, float a, float b)
{
    typename pair_bits<S>::type u;
    S *s = reinterpret_cast<S *>(&u);
    s[0] = f2t<S>(a), s[1] = f2t<S>(b);
    *reinterpret_cast<typename pair_bits<S>::type *>(p) = u;
}

/* rope_pair's arithmetic on x1 = x[j], x2 = x[j + half] at angle a: o1, o2 */
template <int dt> __device__ __forceinline__ void rope_rot(float x1, float x2, float a, float &o1, float &o2)
{
    const float c = rndf(cosf(a), dt), s = rndf(sinf(a), dt);
    o1 = rndf(__fadd_rn(rndf(__fmul_rn(x1, c), dt), rndf(__fmul_rn(-x2, s), dt)), dt);
    o2 = rndf(__fadd_rn(rndf(__fmul_rn(x2, c), dt), rndf(__fmul_rn(x1, s), dt)), dt);
}

template <typename S>
__global__ void __launch_bounds__(ROPEV_WARPS * 32)
rope_qk_vec_kernel(S *q, S *k, const int32_t *pos, int64_t n, int H, int Hkv, int hd,
                   const __grid_constant__ rope_freqs inv, const S *v, S *kc, S *vc, int64_t T, const int32_t *tab,
                   int64_t mb, const int32_t *rows, const S *src, int64_t srs)
{
    pdl_trigger(); /* a PDL-launched successor (GEMV) may start loading its weights */
    pdl_wait();    /* launched as a dependent (cuda_launch_dep): the previous kernel's output is ready */
    constexpr int dt = dtype_of<S>::value;
    using P = typename pair_bits<S>::type;
    const int nh = H + Hkv, half = hd / 2, j = 2 * (threadIdx.x & 31);
    const int64_t row = (int64_t)blockIdx.x * ROPEV_WARPS + (threadIdx.x >> 5);
    if (row >= n * nh || j >= half) return;
    const int64_t i = row / nh;
    const int h = (int)(row - i * nh), hk = h - H;
    const bool store = hk >= 0 && kc;
    /* in place, or (src: op_rope_qkv_rows) read from the joined row q | k | v of src and q written to q
     * (k only to the cache) */
    S *x = hk < 0 ? q + (i * H + h) * hd : src ? NULL : k + (i * Hkv + hk) * hd;
    const S *xin = src ? src + i * srs + (int64_t)(hk < 0 ? h : H + hk) * hd : x;
    /* every load first: the position, this lane's two pairs of x and (k rows with a cache) of v */
    const int32_t p = pos[i];
    const P xa = ld_pair(xin + j), xb = ld_pair(xin + j + half);
    P va = {}, vb = {};
    if (store) {
        const S *vx = src ? src + i * srs + (int64_t)(H + Hkv + hk) * hd : v + (i * Hkv + hk) * hd;
        va = ld_pair(vx + j), vb = ld_pair(vx + j + half);
    }
    /* the cache row (a block-table load after the position's) before any store: the compiler may not
     * move a load of tab above a store to x that it cannot prove apart */
    const int64_t r = !store ? 0 : rows ? (rows[i] >= 0 && rows[i] < T ? rows[i] : -1) : kv_page_row(tab, mb, p, T);
    const float2 f = reinterpret_cast<const float2 *>(inv.f)[j / 2]; /* inv_freq[j], inv_freq[j + 1] */
    float x1a, x1b, x2a, x2b, o1a, o1b, o2a, o2b;
    pair_to_f<S>(xa, x1a, x1b);
    pair_to_f<S>(xb, x2a, x2b);
    rope_rot<dt>(x1a, x2a, __fmul_rn((float)p, f.x), o1a, o2a);
    rope_rot<dt>(x1b, x2b, __fmul_rn((float)p, f.y), o1b, o2b);
    if (x) {
        st_pair(x + j, o1a, o1b); /* in place: this lane owns its pairs */
        st_pair(x + j + half, o2a, o2b);
    }
    if (!store) return;
    if (r < 0) {
        if (rows) printf("rope_qk: cache row %d outside the cache of %lld rows\n", rows[i], (long long)T);
        else printf("rope_qk: position %d outside the cache of %lld rows (table of %lld blocks)\n", p, (long long)T,
                    (long long)mb);
        __trap();
    }
    const int64_t cb = (r * Hkv + hk) * hd;
    st_pair(kc + cb + j, o1a, o1b);
    st_pair(kc + cb + j + half, o2a, o2b);
    *reinterpret_cast<P *>(vc + cb + j) = va; /* a copy: exact in any dtype */
    *reinterpret_cast<P *>(vc + cb + j + half) = vb;
}

template <typename S>
static void rope_qk_vec_launch(struct cuda_ctx *c, struct tensor *q, struct tensor *k, const struct tensor *pos,
                               const rope_freqs &inv, const struct tensor *v, struct tensor *kc, struct tensor *vc,
                               const struct tensor *tab, const struct tensor *crow, const struct tensor *src)
{
    const int64_t n = q->shape[0], H = q->shape[1], Hkv = kc ? kc->shape[1] : k->shape[1], rows = n * (H + Hkv);
    cuda_launch_dep(c, rope_qk_vec_kernel<S>, dim3((unsigned)((rows + ROPEV_WARPS - 1) / ROPEV_WARPS)), dim3(ROPEV_WARPS * 32), 0, 
        (S *)q->data, k ? (S *)k->data : NULL, (const int32_t *)pos->data, n, (int)H, (int)Hkv, (int)q->shape[2], inv,
        kc && v ? (const S *)v->data : NULL, kc ? (S *)kc->data : NULL, kc ? (S *)vc->data : NULL, kc ? kc->shape[0] : 0,
        tab ? (const int32_t *)tab->data : NULL, tab ? tab->shape[0] : 0, crow ? (const int32_t *)crow->data : NULL,
        src ? (const S *)src->data : NULL, src ? src->shape[1] : 0);
    KERNEL_CHECK();
}

/* the vector form when the context has it on and the shapes, dtypes and alignment allow: true when launched */
static bool rope_qk_vec(struct cuda_ctx *c, struct tensor *q, struct tensor *k, const struct tensor *pos,
                        const rope_freqs &inv, const struct tensor *v, struct tensor *kc, struct tensor *vc,
                        const struct tensor *tab, const struct tensor *crow = NULL, const struct tensor *src = NULL)
{
    const int64_t hd = q->shape[2], half = hd / 2;
    const enum dtype dt = q->dtype;
    const size_t al = 2 * dtype_size(dt) - 1; /* two-element accesses (src: its rows and heads are even) */
    if (!c->small_vec || half % 2 || half > ROPEV_MAX_HALF || ((uintptr_t)q->data & al) || (k && ((uintptr_t)k->data & al)))
        return false;
    if (src && ((uintptr_t)src->data & al)) return false;
    if (kc && ((v && ((uintptr_t)v->data & al)) || ((uintptr_t)kc->data & al) || ((uintptr_t)vc->data & al))) return false;
    if (q->shape[0] * (q->shape[1] + (kc ? kc->shape[1] : k->shape[1])) > (int64_t)UINT32_MAX * ROPEV_WARPS / 2) return false;
    switch (dt) {
    case DTYPE_F16: rope_qk_vec_launch<__half>(c, q, k, pos, inv, v, kc, vc, tab, crow, src); return true;
    case DTYPE_BF16: rope_qk_vec_launch<__nv_bfloat16>(c, q, k, pos, inv, v, kc, vc, tab, crow, src); return true;
    case DTYPE_F32: rope_qk_vec_launch<float>(c, q, k, pos, inv, v, kc, vc, tab, crow, src); return true;
    default: return false;
    }
}

extern "C" void cuda_rope_qk(struct tensor *q, struct tensor *k, const struct tensor *pos, double theta,
                             const struct tensor *v, struct tensor *kc, struct tensor *vc, const struct tensor *tab)
{
    struct cuda_ctx *c = cuda_ctx_get(q->dev.ordinal);
    const int64_t n = q->shape[0], H = q->shape[1], Hkv = k->shape[1], hd = q->shape[2], half = hd / 2;
    CHECKF(half <= ROPE_MAX_HALF, "rope head dim %lld too large", (long long)hd);
    CHECK(q->dtype == k->dtype);
    if (n == 0 || half == 0 || H + Hkv == 0) return;
    rope_freqs inv;
    rope_freqs_init(&inv, theta, hd);
    if (rope_qk_vec(c, q, k, pos, inv, v, kc, vc, tab)) return;
    cuda_launch_dep(c, rope_qk_kernel, dim3(cuda_grid_1d(c, n * (H + Hkv) * half)), dim3(256), 0, 
        q->data, k->data, q->dtype, (const int32_t *)pos->data, n, H, Hkv, hd, inv, v ? v->data : NULL,
        kc ? kc->data : NULL, vc ? vc->data : NULL, kc ? kc->shape[0] : 0,
        tab ? (const int32_t *)tab->data : NULL, tab ? tab->shape[0] : 0);
    KERNEL_CHECK();
}

/* RoPE and the KV store of the batched step's rows in one launch (the vector kernel with the cache row read
 * from rows); elsewhere the generic RoPE and two stores, the same values */
extern "C" void cuda_rope_qk_rows(struct tensor *q, struct tensor *k, const struct tensor *pos, double theta,
                                  const struct tensor *v, struct tensor *kc, struct tensor *vc, const struct tensor *rows)
{
    struct cuda_ctx *c = cuda_ctx_get(q->dev.ordinal);
    const int64_t n = q->shape[0], H = q->shape[1], Hkv = k->shape[1], hd = q->shape[2], half = hd / 2;
    CHECKF(half <= ROPE_MAX_HALF, "rope head dim %lld too large", (long long)hd);
    if (n == 0 || half == 0 || H + Hkv == 0) return;
    rope_freqs inv;
    rope_freqs_init(&inv, theta, hd);
    if (rope_qk_vec(c, q, k, pos, inv, v, kc, vc, NULL, rows)) return;
    cuda_rope_qk(q, k, pos, theta, NULL, NULL, NULL, NULL);
    cuda_kv_store(kc, k, rows);
    cuda_kv_store(vc, v, rows);
}

/* op_rope_qkv_rows: the vector kernel reading the joined rows; elsewhere (odd pair counts, alignment) the
 * joined rows split into q and k, v scratch by strided copies, then cuda_rope_qk_rows: the same values */
extern "C" void cuda_rope_qkv_rows(struct tensor *q, const struct tensor *qkv, const struct tensor *pos, double theta,
                                   struct tensor *kc, struct tensor *vc, const struct tensor *rows)
{
    struct cuda_ctx *c = cuda_ctx_get(q->dev.ordinal);
    const int64_t n = q->shape[0], H = q->shape[1], hd = q->shape[2], Hkv = kc->shape[1], half = hd / 2;
    CHECKF(half <= ROPE_MAX_HALF, "rope head dim %lld too large", (long long)hd);
    if (n == 0 || half == 0) return;
    rope_freqs inv;
    rope_freqs_init(&inv, theta, hd);
    if (rope_qk_vec(c, q, NULL, pos, inv, NULL, kc, vc, NULL, rows, qkv)) return;
    const size_t es = dtype_size(q->dtype), rb = (size_t)qkv->shape[1] * es;
    char *kv = (char *)cuda_scratch(c, SCRATCH_MM_X, (size_t)(2 * n * Hkv * hd) * es);
    struct tensor k = tensor_make(q->dtype, q->dev, kv, 3, n, Hkv, hd);
    struct tensor v = tensor_make(q->dtype, q->dev, kv + (size_t)(n * Hkv * hd) * es, 3, n, Hkv, hd);
    const char *s = (const char *)qkv->data;
    CUDA_CHECK(cudaMemcpy2DAsync(q->data, (size_t)(H * hd) * es, s, rb, (size_t)(H * hd) * es, (size_t)n,
                                 cudaMemcpyDeviceToDevice, c->stream));
    CUDA_CHECK(cudaMemcpy2DAsync(k.data, (size_t)(Hkv * hd) * es, s + (size_t)(H * hd) * es, rb, (size_t)(Hkv * hd) * es,
                                 (size_t)n, cudaMemcpyDeviceToDevice, c->stream));
    CUDA_CHECK(cudaMemcpy2DAsync(v.data, (size_t)(Hkv * hd) * es, s + (size_t)((H + Hkv) * hd) * es, rb,
                                 (size_t)(Hkv * hd) * es, (size_t)n, cudaMemcpyDeviceToDevice, c->stream));
    cuda_rope_qk_rows(q, &k, pos, theta, &v, kc, vc, rows);
}

/* cache[rows[i]] = x[i], 16-bit words or bytes as the row size allows */
__global__ void kv_store_kernel(char *cache, const char *x, const int32_t *rows, int64_t n, int64_t rb, int64_t T)
{
    const int64_t total = n * rb;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = e / rb, b = e - i * rb;
        const int32_t r = rows[i];
        if (r < 0 || r >= T) {
            printf("kv_store: row %d outside the cache of %lld\n", r, (long long)T);
            __trap();
        }
        cache[(int64_t)r * rb + b] = x[e];
    }
}

/* kv_store_kernel in 16-byte words (rows of rb16 words): the batched decode step's K and V rows (2 KiB each
 * for Llama-3-8B fp16) in 128 threads per row instead of a thread per byte */
__global__ void kv_store_vec_kernel(uint4 *cache, const uint4 *x, const int32_t *rows, int64_t n, int64_t rb16, int64_t T)
{
    pdl_trigger(); /* a PDL-launched successor (GEMV) may start loading its weights */
    const int64_t total = n * rb16;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = e / rb16, b = e - i * rb16;
        const uint4 val = x[e];
        const int32_t r = rows[i];
        if (r < 0 || r >= T) {
            printf("kv_store: row %d outside the cache of %lld\n", r, (long long)T);
            __trap();
        }
        cache[(int64_t)r * rb16 + b] = val;
    }
}

extern "C" void cuda_kv_store(struct tensor *cache, const struct tensor *x, const struct tensor *rows)
{
    struct cuda_ctx *c = cuda_ctx_get(cache->dev.ordinal);
    const int64_t n = x->shape[0], rb = tensor_row_numel(x) * (int64_t)dtype_size(x->dtype);
    if (n == 0 || rb == 0) return;
    if (c->small_vec && rb % 16 == 0 && aligned16(cache->data) && aligned16(x->data)) {
        kv_store_vec_kernel<<<cuda_grid_1d(c, n * (rb / 16)), 256, 0, c->stream>>>(
            (uint4 *)cache->data, (const uint4 *)x->data, (const int32_t *)rows->data, n, rb / 16, cache->shape[0]);
        KERNEL_CHECK();
        return;
    }
    kv_store_kernel<<<cuda_grid_1d(c, n * rb), 256, 0, c->stream>>>((char *)cache->data, (const char *)x->data,
                                                                     (const int32_t *)rows->data, n, rb,
                                                                     cache->shape[0]);
    KERNEL_CHECK();
}

/* x[i] <-> the cache row of token p0 + i through tab, in units of E (rows of `per` units): bytes (char)
 * for any row, 16-byte words (uint4) where the rows and pointers allow, which make one table lookup and
 * one division per word instead of per byte. The prefill's gather of a slot's keys and values (llm.c)
 * took 6.8 us per 1 MiB tensor byte by byte (H200 ncu, session 11): 2 a layer. */
template <typename E>
__global__ void kv_pages_kernel(E *cache, E *x, const int32_t *tab, int64_t mb, int64_t p0, int64_t n, int64_t per,
                                int64_t T, int to_cache)
{
    const int64_t total = n * per;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = e / per, b = e - i * per, r = kv_page_row(tab, mb, p0 + i, T);
        if (r < 0) {
            printf("kv_pages: token %lld outside the cache of %lld rows\n", (long long)(p0 + i), (long long)T);
            __trap();
        }
        if (to_cache) cache[r * per + b] = x[e];
        else x[e] = cache[r * per + b];
    }
}

extern "C" void cuda_kv_pages(struct tensor *cache, struct tensor *x, const struct tensor *tab, int64_t p0, int to_cache)
{
    struct cuda_ctx *c = cuda_ctx_get(cache->dev.ordinal);
    const int64_t n = x->shape[0], rb = tensor_row_numel(x) * (int64_t)dtype_size(x->dtype);
    if (n == 0 || rb == 0) return;
    const int32_t *tp = (const int32_t *)tab->data;
    const int64_t mb = tab->shape[0], T = cache->shape[0];
    if (c->small_vec && rb % 16 == 0 && aligned16(cache->data) && aligned16(x->data))
        kv_pages_kernel<uint4><<<cuda_grid_1d(c, n * (rb / 16)), 256, 0, c->stream>>>(
            (uint4 *)cache->data, (uint4 *)x->data, tp, mb, p0, n, rb / 16, T, to_cache);
    else
        kv_pages_kernel<char><<<cuda_grid_1d(c, n * rb), 256, 0, c->stream>>>((char *)cache->data, (char *)x->data, tp,
                                                                             mb, p0, n, rb, T, to_cache);
    KERNEL_CHECK();
}

extern "C" void cuda_rope(struct tensor *x, const struct tensor *pos, double theta)
{
    struct cuda_ctx *c = cuda_ctx_get(x->dev.ordinal);
    const int64_t n = x->shape[0], nh = x->shape[1], hd = x->shape[2], half = hd / 2;
    CHECKF(half <= ROPE_MAX_HALF, "rope head dim %lld too large", (long long)hd);
    if (n == 0 || nh == 0 || half == 0) return;
    rope_freqs inv;
    rope_freqs_init(&inv, theta, hd);
    rope_kernel<<<cuda_grid_1d(c, n * nh * half), 256, 0, c->stream>>>(x->data, x->dtype, (const int32_t *)pos->data,
                                                                       n, nh, hd, inv);
    KERNEL_CHECK();
}

/* ---- elementwise ---- */

#define GRID_STRIDE(i, n) \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

__global__ void silu_mul_kernel(void *y, int ydt, const void *g, int gdt, const void *u, int udt, int64_t n)
{
    pdl_trigger(); /* a PDL-launched successor (GEMV) may start loading its weights */
    pdl_wait();    /* launched as a dependent (cuda_launch_dep): the previous kernel's output is ready */
    GRID_STRIDE(i, n)
    {
        stf(y, ydt, i, silu_mul_f(ldf(g, gdt, i), ldf(u, udt, i), ydt));
    }
}

/* silu_mul_kernel for one dtype S with 16-byte vectors (8 halves per thread: the decode step's 14336 gate
 * values in 14 blocks of 128 threads, one load per operand each); the same expression per element.
 * y may alias g or u: each thread reads its vectors before it writes them (plain loads, not __ldg). */
#define SILUV_THREADS 128
template <typename S> __global__ void __launch_bounds__(SILUV_THREADS) silu_mul_vec_kernel(uint4 *y, const uint4 *g, const uint4 *u, int64_t nv)
{
    pdl_trigger(); /* a PDL-launched successor (GEMV) may start loading its weights */
    pdl_wait();    /* launched as a dependent (cuda_launch_dep): the previous kernel's output is ready */
    constexpr int E = 16 / (int)sizeof(S), dt = dtype_of<S>::value;
    GRID_STRIDE(i, nv)
    {
        const uint4 gr = g[i], ur = u[i];
        float gv[E], uv[E], r[E];
        vec_to_f<S>(gr, gv);
        vec_to_f<S>(ur, uv);
#pragma unroll
        for (int e = 0; e < E; e++) r[e] = silu_mul_f(gv[e], uv[e], dt);
        y[i] = f_to_vec<S>(r);
    }
}

extern "C" void cuda_silu_mul(struct tensor *y, const struct tensor *gate, const struct tensor *up)
{
    struct cuda_ctx *c = cuda_ctx_get(y->dev.ordinal);
    const int64_t n = tensor_numel(y);
    if (n == 0) return;
    const enum dtype dt = y->dtype;
    const int64_t E = dt == DTYPE_F32 ? 4 : 8; /* elements per 16-byte vector (float dtypes) */
    if (c->small_vec && (dt == DTYPE_F16 || dt == DTYPE_BF16 || dt == DTYPE_F32) && gate->dtype == dt &&
        up->dtype == dt && n % E == 0 && aligned16(y->data) && aligned16(gate->data) && aligned16(up->data)) {
        const int64_t nv = n / E, blocks = (nv + SILUV_THREADS - 1) / SILUV_THREADS, cap = (int64_t)c->n_sm * 16;
        const unsigned grid = (unsigned)(blocks < cap ? blocks : cap);
        uint4 *yp = (uint4 *)y->data;
        const uint4 *gp = (const uint4 *)gate->data, *upp = (const uint4 *)up->data;
        if (dt == DTYPE_F16) cuda_launch_dep(c, silu_mul_vec_kernel<__half>, dim3(grid), dim3(SILUV_THREADS), 0, yp, gp, upp, nv);
        else if (dt == DTYPE_BF16) cuda_launch_dep(c, silu_mul_vec_kernel<__nv_bfloat16>, dim3(grid), dim3(SILUV_THREADS), 0, yp, gp, upp, nv);
        else cuda_launch_dep(c, silu_mul_vec_kernel<float>, dim3(grid), dim3(SILUV_THREADS), 0, yp, gp, upp, nv);
        KERNEL_CHECK();
        return;
    }
    cuda_launch_dep(c, silu_mul_kernel, dim3(cuda_grid_1d(c, n)), dim3(256), 0, y->data, y->dtype, gate->data, gate->dtype, up->data,
                                                               up->dtype, n);
    KERNEL_CHECK();
}

__global__ void gelu_tanh_kernel(void *y, int ydt, const void *x, int xdt, int64_t n)
{
    const float k0 = 0.7978845608028654f; /* sqrt(2/pi) */
    GRID_STRIDE(i, n)
    {
        const float a = ldf(x, xdt, i);
        /* 0.5f * a * (1.0f + tanhf(k0 * (a + 0.044715f * a * a * a))) in the CPU's evaluation order */
        const float cube = __fmul_rn(__fmul_rn(__fmul_rn(0.044715f, a), a), a);
        const float t = tanhf(__fmul_rn(k0, __fadd_rn(a, cube)));
        stf(y, ydt, i, __fmul_rn(__fmul_rn(0.5f, a), __fadd_rn(1.0f, t)));
    }
}

extern "C" void cuda_gelu_tanh(struct tensor *y, const struct tensor *x)
{
    struct cuda_ctx *c = cuda_ctx_get(y->dev.ordinal);
    const int64_t n = tensor_numel(y);
    if (n == 0) return;
    gelu_tanh_kernel<<<cuda_grid_1d(c, n), 256, 0, c->stream>>>(y->data, y->dtype, x->data, x->dtype, n);
    KERNEL_CHECK();
}

__global__ void add_kernel(void *y, int ydt, const void *a, int adt, const void *b, int bdt, int64_t n, int64_t nb)
{
    pdl_trigger(); /* a PDL-launched successor (GEMV) may start loading its weights */
    GRID_STRIDE(i, n) stf(y, ydt, i, __fadd_rn(ldf(a, adt, i), ldf(b, bdt, nb == n ? i : i % nb)));
}

extern "C" void cuda_add(struct tensor *y, const struct tensor *a, const struct tensor *b)
{
    struct cuda_ctx *c = cuda_ctx_get(y->dev.ordinal);
    const int64_t n = tensor_numel(y), nb = tensor_numel(b);
    if (n == 0) return;
    add_kernel<<<cuda_grid_1d(c, n), 256, 0, c->stream>>>(y->data, y->dtype, a->data, a->dtype, b->data, b->dtype, n,
                                                          nb);
    KERNEL_CHECK();
}

__global__ void scale_kernel(void *y, int ydt, const void *x, int xdt, float s, int64_t n)
{
    GRID_STRIDE(i, n) stf(y, ydt, i, __fmul_rn(ldf(x, xdt, i), s));
}

extern "C" void cuda_scale(struct tensor *y, const struct tensor *x, float s)
{
    struct cuda_ctx *c = cuda_ctx_get(y->dev.ordinal);
    const int64_t n = tensor_numel(y);
    if (n == 0) return;
    scale_kernel<<<cuda_grid_1d(c, n), 256, 0, c->stream>>>(y->data, y->dtype, x->data, x->dtype, s, n);
    KERNEL_CHECK();
}

/* ---- argmax: one block per row, first index of the maximum (NaNs are skipped) ---- */

#define ARGMAX_THREADS 1024

__device__ __forceinline__ void argmax_merge(float &bv, int64_t &bi, float v, int64_t i)
{
    if (v > bv || (v == bv && i < bi)) {
        bv = v;
        bi = i;
    }
}

__global__ void __launch_bounds__(ARGMAX_THREADS) argmax_kernel(const float *x, int64_t V, int32_t *out)
{
    pdl_wait();    /* launched as a dependent (cuda_launch_dep): the previous kernel's output is ready */
    __shared__ float sv[ARGMAX_THREADS / 32];
    __shared__ int64_t si[ARGMAX_THREADS / 32];
    const float *r = x + blockIdx.x * V;
    float bv = -INFINITY;
    int64_t bi = INT64_MAX;
    /* 16-byte loads, four in flight per thread (a 128k-entry row in ~8 rounds instead of 125
     * dependent scalar ones); the scalar tail, or the whole row when it is not 16-byte aligned */
    const int64_t V4 = ((uintptr_t)r & 15) == 0 ? V / 4 : 0;
    const float4 *r4 = reinterpret_cast<const float4 *>(r);
#pragma unroll 4
    for (int64_t j = threadIdx.x; j < V4; j += blockDim.x) {
        const float4 q = r4[j];
        argmax_merge(bv, bi, q.x, 4 * j);
        argmax_merge(bv, bi, q.y, 4 * j + 1);
        argmax_merge(bv, bi, q.z, 4 * j + 2);
        argmax_merge(bv, bi, q.w, 4 * j + 3);
    }
    for (int64_t j = 4 * V4 + threadIdx.x; j < V; j += blockDim.x) argmax_merge(bv, bi, r[j], j);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, off);
        int64_t oi = __shfl_xor_sync(0xffffffffu, bi, off);
        argmax_merge(bv, bi, ov, oi);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        sv[warp] = bv;
        si[warp] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++) argmax_merge(bv, bi, sv[w], si[w]);
        out[blockIdx.x] = bi < V ? (int32_t)bi : 0; /* all NaN: index 0, like the CPU */
    }
}

extern "C" void cuda_argmax(const struct tensor *x, int32_t *out)
{
    struct cuda_ctx *c = cuda_ctx_get(x->dev.ordinal);
    const int64_t n = x->shape[0], V = x->shape[1];
    if (n == 0) return;
    CHECK(V > 0);
    int32_t *d = (int32_t *)cuda_scratch(c, SCRATCH_ARGMAX, (size_t)n * sizeof(int32_t));
    cuda_launch_dep(c, argmax_kernel, dim3((unsigned)n), dim3(ARGMAX_THREADS), 0, (const float *)x->data, V, d);
    KERNEL_CHECK();
    CUDA_CHECK(cudaMemcpyAsync(out, d, (size_t)n * sizeof(int32_t), cudaMemcpyDeviceToHost, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
}

extern "C" void cuda_argmax_dev(const struct tensor *x, struct tensor *ids)
{
    struct cuda_ctx *c = cuda_ctx_get(x->dev.ordinal);
    const int64_t n = x->shape[0], V = x->shape[1];
    if (n == 0) return;
    CHECK(V > 0);
    cuda_launch_dep(c, argmax_kernel, dim3((unsigned)n), dim3(ARGMAX_THREADS), 0, (const float *)x->data, V, (int32_t *)ids->data);
    KERNEL_CHECK();
}

__global__ void add_i32_kernel(int32_t *x, int32_t d, int64_t n)
{
    pdl_wait();    /* launched as a dependent (cuda_launch_dep): the previous kernel's output is ready */
    GRID_STRIDE(i, n) x[i] += d;
}

extern "C" void cuda_add_i32(struct tensor *x, int32_t d)
{
    struct cuda_ctx *c = cuda_ctx_get(x->dev.ordinal);
    const int64_t n = tensor_numel(x);
    if (n == 0) return;
    cuda_launch_dep(c, add_i32_kernel, dim3(cuda_grid_1d(c, n)), dim3(256), 0, (int32_t *)x->data, d, n);
    KERNEL_CHECK();
}
