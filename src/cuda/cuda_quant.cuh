/* cuda_quant.cuh: what cuda_quant.cu (the quantized matmul's dispatch, the dequantization for the GEMM path,
 * the older GEMV kernels) and cuda_qgemv.cu (the decode GEMV with the weights as the mma's A operand) share,
 * and the F16 entry of that kernel, which cuda_gemv.cu's cuda_matmul calls.
 * Owns no state. The variants of the decode GEMV that the bench and the tests pick (cuda_set_qmma):
 *   QMMA_OFF      the CUDA-core GEMV (qgemv_kernel, n <= 8)
 *   QMMA_AUTO     the default: the A-operand kernel where it applies (weights in 16-row tiles, quant.h;
 *                 the H200 figures beside QA_AUTO in cuda_qgemv.cu); the older tensor-core kernel otherwise
 *   2 .. 4        the older tensor-core kernel (qmma_kernel, weights as B) in the tilings of session 5
 *   QMMA_A0 + v   the A-operand kernel in shape v (0 .. QMMA_A_SHAPES - 1, table in cuda_qgemv.cu)
 *   QMMA_A_NF4T   NF4 only: the A-operand kernel in shape a8x2o4 with the older NF4 dequantization (a
 *                 shared-memory table, f32 products), for the bench's comparison; Q4 / Q8 take the default
 *                 of the older kernel there
 * The same A-operand kernel also takes F16 weights (no dequantization: a record is the row of k halves), for
 * the batched decode step's 2..16 tokens, where cuBLAS streams the weights at well under the card's
 * bandwidth. Its knob is separate (cuda_set_f16mma; cuda_matmul in cuda_gemv.cu asks cuda_qgemv_f16):
 *   F16MMA_OFF      cuBLAS from 2 tokens on, as before (the default until a GPU run says otherwise)
 *   F16MMA_AUTO     the A kernel for n = 2..16 in its default shape (QA_F16_AUTO in cuda_qgemv.cu)
 *   F16MMA_S0 + s   the A kernel in shape s (0 .. F16MMA_SHAPES - 1) for n = 1..16: the tests and the bench */
#ifndef MINICPMV_CUDA_QUANT_CUH
#define MINICPMV_CUDA_QUANT_CUH

#include "cuda/cuda_common.cuh"

enum { QMMA_OFF = 0, QMMA_AUTO = 1, QMMA_A0 = 8, QMMA_A_SHAPES = 6, QMMA_A_NF4T = QMMA_A0 + QMMA_A_SHAPES };
enum { F16MMA_OFF = 0, F16MMA_AUTO = 1, F16MMA_S0 = 2, F16MMA_SHAPES = 4 };

/* The decode GEMV with the weights as the mma's A operand (cuda_qgemv.cu): runs y = x w^T (+ bias) and
 * returns true when it applies (sm_80+ code, F16 x 16-byte aligned, 1 <= n <= 16, w in 16-row tiles (w->tiled:
 * Q4 or NF4 with k % 128 == 0, Q8 with k % 64 == 0, rows % 16 == 0), c->qmma QMMA_AUTO or an A shape); false
 * (nothing done) otherwise. */
bool cuda_qgemv_a(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *w,
                  const struct tensor *bias);

/* The same kernel for F16 weights (cuda_qgemv.cu): runs y = x w^T (+ bias) and returns true when c->f16mma
 * picks it and it applies (sm_80+ code, F16 x and w 16-byte aligned, k % 32 == 0, 2 <= n <= 16, or 1 <= n
 * when c->f16mma forces a shape); false (nothing done) otherwise. */
bool cuda_qgemv_f16(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *w,
                    const struct tensor *bias);

/* D += A B on the tensor cores (m16n8k16, f16 in, f32 accumulate): the quantized GEMVs of cuda_quant.cu
 * and cuda_qgemv.cu share it. */
__device__ __forceinline__ void mma_m16n8k16(float c[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                             uint32_t b1)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
    __trap(); /* the host never picks this kernel below sm_80 (qmma_ok, cuda_qgemv_a) */
#endif
}

/* The fused decode ops (backend.h: op_rmsnorm_matmul, op_rmsnorm_swiglu, op_linear with a residual) on the
 * A-operand kernel for one token of Q4 / Q8 / NF4 weights (cuda_qgemv.cu): true when done; false, having done
 * nothing, when they do not apply (then the caller runs the plain ops). F16 outputs and residual. */
bool cuda_qgemv_rmsnorm_matmul(struct cuda_ctx *c, struct tensor *const *ys, int np, const struct tensor *x,
                               const struct tensor *nw, float eps, const struct tensor *w);
bool cuda_qgemv_rmsnorm_swiglu(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *nw,
                               float eps, const struct tensor *w);
bool cuda_qgemv_linear_res(struct cuda_ctx *c, struct tensor *y, const struct tensor *x, const struct tensor *w,
                           const struct tensor *bias, const struct tensor *res);

#endif
