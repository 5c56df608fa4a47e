/* cuda_quant.cuh: what cuda_quant.cu (the quantized matmul's dispatch, the dequantization for the GEMM path,
 * the older GEMV kernels) and cuda_qgemv.cu (the decode GEMV with the weights as the mma's A operand) share.
 * Owns no state. The variants of the decode GEMV that the bench and the tests pick (cuda_set_qmma):
 *   QMMA_OFF      the CUDA-core GEMV (qgemv_kernel, n <= 8)
 *   QMMA_AUTO     the default: the A-operand kernel where it applies (Q4 and NF4 with k % 128 == 0, Q8
 *                 with k % 64 == 0); the older tensor-core kernel otherwise
 *   2 .. 4        the older tensor-core kernel (qmma_kernel, weights as B) in the tilings of session 5
 *   QMMA_A0 + v   the A-operand kernel in shape v (0 .. QMMA_A_SHAPES - 1, table in cuda_qgemv.cu) */
#ifndef MINICPMV_CUDA_QUANT_CUH
#define MINICPMV_CUDA_QUANT_CUH

#include "cuda/cuda_common.cuh"

enum { QMMA_OFF = 0, QMMA_AUTO = 1, QMMA_A0 = 8, QMMA_A_SHAPES = 5 };

/* The decode GEMV with the weights as the mma's A operand (cuda_qgemv.cu): runs y = x w^T (+ bias) and
 * returns true when it applies (sm_80+ code, F16 x 16-byte aligned, 1 <= n <= 16, Q4 or NF4 with
 * k % 128 == 0, Q8 with k % 64 == 0, c->qmma QMMA_AUTO or an A shape); false (nothing done) otherwise. */
bool cuda_qgemv_a(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *w,
                  const struct tensor *bias);

#endif
