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
    embed_kernel<<<(unsigned)n, 256, 0, c->stream>>>(y->data, y->dtype, table->data, table->dtype,
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

template <int PT>
__global__ void __launch_bounds__(NORM_THREADS)
rmsnorm_kernel(void *y, int ydt, const void *x, int xdt, const void *w, int wdt, int64_t d, float eps)
{
    pdl_trigger(); /* a PDL-launched successor (GEMV) may start loading its weights */
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
    if (d <= NORM_PT_MAX * NORM_THREADS)
        rmsnorm_kernel<NORM_PT_MAX><<<(unsigned)rows, NORM_THREADS, 0, c->stream>>>(y->data, y->dtype, x->data, x->dtype,
                                                                                   w->data, w->dtype, d, eps);
    else
        rmsnorm_kernel<0><<<(unsigned)rows, NORM_THREADS, 0, c->stream>>>(y->data, y->dtype, x->data, x->dtype, w->data,
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
    if (d <= NORM_PT_MAX * NORM_THREADS)
        add_rmsnorm_kernel<NORM_PT_MAX><<<(unsigned)rows, NORM_THREADS, 0, c->stream>>>(
            h->data, h->dtype, o->data, o->dtype, xn->data, xn->dtype, w->data, w->dtype, d, eps);
    else
        add_rmsnorm_kernel<0><<<(unsigned)rows, NORM_THREADS, 0, c->stream>>>(h->data, h->dtype, o->data, o->dtype,
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

static bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

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
struct rope_freqs {
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
    rope_qk_kernel<<<cuda_grid_1d(c, n * (H + Hkv) * half), 256, 0, c->stream>>>(
        q->data, k->data, q->dtype, (const int32_t *)pos->data, n, H, Hkv, hd, inv, v ? v->data : NULL,
        kc ? kc->data : NULL, vc ? vc->data : NULL, kc ? kc->shape[0] : 0,
        tab ? (const int32_t *)tab->data : NULL, tab ? tab->shape[0] : 0);
    KERNEL_CHECK();
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

extern "C" void cuda_kv_store(struct tensor *cache, const struct tensor *x, const struct tensor *rows)
{
    struct cuda_ctx *c = cuda_ctx_get(cache->dev.ordinal);
    const int64_t n = x->shape[0], rb = tensor_row_numel(x) * (int64_t)dtype_size(x->dtype);
    if (n == 0 || rb == 0) return;
    kv_store_kernel<<<cuda_grid_1d(c, n * rb), 256, 0, c->stream>>>((char *)cache->data, (const char *)x->data,
                                                                     (const int32_t *)rows->data, n, rb,
                                                                     cache->shape[0]);
    KERNEL_CHECK();
}

/* x[i] <-> the cache row of token p0 + i through tab, byte by byte (rows of rb bytes) */
__global__ void kv_pages_kernel(char *cache, char *x, const int32_t *tab, int64_t mb, int64_t p0, int64_t n,
                                int64_t rb, int64_t T, int to_cache)
{
    const int64_t total = n * rb;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = e / rb, b = e - i * rb, r = kv_page_row(tab, mb, p0 + i, T);
        if (r < 0) {
            printf("kv_pages: token %lld outside the cache of %lld rows\n", (long long)(p0 + i), (long long)T);
            __trap();
        }
        if (to_cache) cache[r * rb + b] = x[e];
        else x[e] = cache[r * rb + b];
    }
}

extern "C" void cuda_kv_pages(struct tensor *cache, struct tensor *x, const struct tensor *tab, int64_t p0, int to_cache)
{
    struct cuda_ctx *c = cuda_ctx_get(cache->dev.ordinal);
    const int64_t n = x->shape[0], rb = tensor_row_numel(x) * (int64_t)dtype_size(x->dtype);
    if (n == 0 || rb == 0) return;
    kv_pages_kernel<<<cuda_grid_1d(c, n * rb), 256, 0, c->stream>>>((char *)cache->data, (char *)x->data,
                                                                     (const int32_t *)tab->data, tab->shape[0], p0, n,
                                                                     rb, cache->shape[0], to_cache);
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
    GRID_STRIDE(i, n)
    {
        const float gv = ldf(g, gdt, i), uv = ldf(u, udt, i);
        const float s = rndf(__fdiv_rn(gv, __fadd_rn(1.0f, expf(-gv))), ydt); /* torch rounds silu first */
        stf(y, ydt, i, __fmul_rn(s, uv));
    }
}

extern "C" void cuda_silu_mul(struct tensor *y, const struct tensor *gate, const struct tensor *up)
{
    struct cuda_ctx *c = cuda_ctx_get(y->dev.ordinal);
    const int64_t n = tensor_numel(y);
    if (n == 0) return;
    silu_mul_kernel<<<cuda_grid_1d(c, n), 256, 0, c->stream>>>(y->data, y->dtype, gate->data, gate->dtype, up->data,
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
    argmax_kernel<<<(unsigned)n, ARGMAX_THREADS, 0, c->stream>>>((const float *)x->data, V, d);
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
    argmax_kernel<<<(unsigned)n, ARGMAX_THREADS, 0, c->stream>>>((const float *)x->data, V, (int32_t *)ids->data);
    KERNEL_CHECK();
}

__global__ void add_i32_kernel(int32_t *x, int32_t d, int64_t n)
{
    GRID_STRIDE(i, n) x[i] += d;
}

extern "C" void cuda_add_i32(struct tensor *x, int32_t d)
{
    struct cuda_ctx *c = cuda_ctx_get(x->dev.ordinal);
    const int64_t n = tensor_numel(x);
    if (n == 0) return;
    add_i32_kernel<<<cuda_grid_1d(c, n), 256, 0, c->stream>>>((int32_t *)x->data, d, n);
    KERNEL_CHECK();
}
