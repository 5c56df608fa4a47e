/* cuda_pgemv.cuh: the persistent F16 decode GEMV (cuda_pgemv.cu) as cuda_gemv.cu calls it, and the RMSNorm
 * prologue that it and the quantized decode GEMV's fused forms (cuda_qgemv.cu) share. Each
 * returns false, having done nothing, when the kernel does not take the shapes and dtypes (then the
 * caller runs its own path): F16 x, w and outputs, k % 8 == 0, 16-byte aligned x and w, 1 <= n <=
 * the context's gemv16_max, the n x k input small enough to stage in shared memory, c->pgemv on. */
#ifndef MINICPMV_CUDA_PGEMV_CUH
#define MINICPMV_CUDA_PGEMV_CUH

#include "cuda/cuda_common.cuh"

/* y = x · w^T (+ bias): op_matmul */
bool cuda_pgemv_matmul(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *w,
                       const struct tensor *bias);
/* y = res + round(x · w^T (+ bias)), each sum rounded to y's dtype: op_linear with a residual and no
 * activation (y may alias res) */
bool cuda_pgemv_linear_res(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *w,
                           const struct tensor *bias, const struct tensor *res);
/* cuda_gemv.cu: op_rmsnorm_swiglu without a norm for one token on the one-pass GEMV (SwiGLU in its epilogue),
 * where op_matmul over the joined gate|up w would take that kernel: the plain ops' bits. false (nothing done)
 * elsewhere. */
bool cuda_gemv_swiglu(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *w);

__device__ __forceinline__ float nr_h2f(unsigned short u) { return __half2float(__ushort_as_half(u)); }

/* Norm rows of up to NORM_ROW_VPT x 256 values (the 8B model's 4096) are read once, into registers,
 * with every load in flight at once (the norm weight, read after the sum, is in L2: every block reads
 * it); longer rows loop over memory twice. Either way thread tid sums
 * the squares of j = tid, tid + 256, ... in that order. */
#define NORM_ROW_VPT 16

/* xs[j] = round(nw[j] * round(h[j] * inv)), inv = 1 / sqrt(mean(h^2) + eps): rmsnorm_kernel's and
 * add_rmsnorm_kernel's arithmetic, summation order and rounding points, by a whole block of 256 threads (the
 * fused decode GEMVs' prologue: cuda_pgemv.cu, cuda_qgemv.cu). xs may be shared memory; h is read through L2
 * (an earlier kernel wrote it). */
__device__ __forceinline__ void norm_row_256(__half *xs, const unsigned short *h, int k, const void *nw, int nwdt, float eps,
                                             double *red)
{
    const int tid = threadIdx.x;
    if (k <= NORM_ROW_VPT * 256) {
        uint32_t hp[NORM_ROW_VPT / 2]; /* the row's values of this thread as F16 pairs (fewer registers) */
#pragma unroll
        for (int i = 0; i < NORM_ROW_VPT; i += 2) {
            const int j = tid + i * 256;
            const uint32_t lo = j < k ? __ldcg(h + j) : 0, hi = j + 256 < k ? __ldcg(h + j + 256) : 0;
            hp[i / 2] = lo | hi << 16;
        }
        double ss = 0;
#pragma unroll
        for (int i = 0; i < NORM_ROW_VPT; i++)
            if (tid + i * 256 < k) {
                const double v = nr_h2f((unsigned short)(hp[i / 2] >> (16 * (i & 1))));
                ss += v * v;
            }
        ss = block_sum_d(ss, red);
        const float inv = 1.0f / sqrtf((float)(ss / (double)k) + eps);
#pragma unroll
        for (int i = 0; i < NORM_ROW_VPT; i++) {
            const int j = tid + i * 256;
            const float v = nr_h2f((unsigned short)(hp[i / 2] >> (16 * (i & 1))));
            if (j < k) xs[j] = __float2half_rn(__fmul_rn(ldf(nw, nwdt, j), rndf(__fmul_rn(v, inv), DTYPE_F16)));
        }
        return;
    }
    double ss = 0;
    for (int j = tid; j < k; j += 256) {
        const double v = nr_h2f(__ldcg(h + j));
        ss += v * v;
    }
    ss = block_sum_d(ss, red);
    const float inv = 1.0f / sqrtf((float)(ss / (double)k) + eps);
    for (int j = tid; j < k; j += 256) /* torch rounds before the weight */
        xs[j] = __float2half_rn(__fmul_rn(ldf(nw, nwdt, j), rndf(__fmul_rn(nr_h2f(__ldcg(h + j)), inv), DTYPE_F16)));
}

#endif
