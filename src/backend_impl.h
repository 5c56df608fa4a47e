/* backend_impl.h: the per-backend twins of the ops in backend.h. backend.c has already checked
 * shapes, dtypes and devices before calling any of these; implementations may assume them.
 * Every cpu_X has a cuda_X with the same signature (compiled only with MINICPMV_CUDA). */
#ifndef MINICPMV_BACKEND_IMPL_H
#define MINICPMV_BACKEND_IMPL_H

#include "backend.h"

#define BACKEND_TWINS(P)                                                                                   \
    void P##_embed(struct tensor *y, const struct tensor *table, const struct tensor *ids);                \
    void P##_matmul(struct tensor *y, const struct tensor *x, const struct tensor *w, const struct tensor *bias); \
    void P##_rmsnorm(struct tensor *y, const struct tensor *x, const struct tensor *w, float eps);          \
    void P##_layernorm(struct tensor *y, const struct tensor *x, const struct tensor *w, const struct tensor *b, \
                       float eps);                                                                         \
    void P##_rope(struct tensor *x, const struct tensor *pos, double theta);                               \
    void P##_attention(struct tensor *out, const struct tensor *q, const struct tensor *k,                 \
                       const struct tensor *v, int64_t q_pos0, float scale, int flags);                    \
    void P##_silu_mul(struct tensor *y, const struct tensor *gate, const struct tensor *up);               \
    void P##_gelu_tanh(struct tensor *y, const struct tensor *x);                                          \
    void P##_add(struct tensor *y, const struct tensor *a, const struct tensor *b);                        \
    void P##_scale(struct tensor *y, const struct tensor *x, float s);                                     \
    void P##_convert(struct tensor *dst, const struct tensor *src); /* same device, any dtypes */          \
    void P##_argmax(const struct tensor *x, int32_t *out);

BACKEND_TWINS(cpu)

#ifdef MINICPMV_CUDA
#ifdef __cplusplus
extern "C" {
#endif
BACKEND_TWINS(cuda)
/* device management (cuda/cuda_mem.cu) */
int cuda_device_count(void);
void *cuda_alloc(int ordinal, size_t bytes, struct err *e);
void cuda_free(int ordinal, void *p);
int cuda_mem_info(int ordinal, size_t *free_b, size_t *total_b, struct err *e);
void cuda_sync(int ordinal);
/* copies between host and device or device and device (peer, or staged through the host) */
void cuda_memcpy(struct device dst_dev, void *dst, struct device src_dev, const void *src, size_t bytes);
#ifdef __cplusplus
}
#endif
#endif

#endif
