/* cuda_pgemv.cuh: the persistent F16 decode GEMV (cuda_pgemv.cu) as cuda_gemv.cu calls it. Each
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

#endif
