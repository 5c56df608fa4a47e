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
    void P##_argmax(const struct tensor *x, int32_t *out);                                                 \
    void P##_add_rmsnorm(struct tensor *h, struct tensor *xn, const struct tensor *o, const struct tensor *w,  \
                         float eps);                                                                       \
    void P##_rope_qk(struct tensor *q, struct tensor *k, const struct tensor *pos, double theta,            \
                     const struct tensor *v, struct tensor *kc, struct tensor *vc, const struct tensor *tab); \
    void P##_rope_qk_rows(struct tensor *q, struct tensor *k, const struct tensor *pos, double theta,       \
                          const struct tensor *v, struct tensor *kc, struct tensor *vc, const struct tensor *rows); \
    void P##_rope_qkv_rows(struct tensor *q, const struct tensor *qkv, const struct tensor *pos, double theta, \
                           struct tensor *kc, struct tensor *vc, const struct tensor *rows);                \
    void P##_kv_store(struct tensor *cache, const struct tensor *x, const struct tensor *rows);             \
    void P##_kv_pages(struct tensor *cache, struct tensor *x, const struct tensor *tab, int64_t p0, int to_cache); \
    void P##_attention_pos(struct tensor *out, const struct tensor *q, const struct tensor *k,             \
                           const struct tensor *v, const struct tensor *pos, const struct tensor *tab,     \
                           float scale, int flags);                                                        \
    void P##_attention_rows(struct tensor *out, const struct tensor *q, const struct tensor *k,            \
                            const struct tensor *v, const struct tensor *tab, const struct tensor *seq,     \
                            const struct tensor *n_keys, float scale);                                     \
    void P##_argmax_dev(const struct tensor *x, struct tensor *ids);                                       \
    void P##_add_i32(struct tensor *x, int32_t d);                                                          \
    void P##_rmsnorm_matmul(struct tensor *const *ys, int np, const struct tensor *x, const struct tensor *nw, \
                            float eps, const struct tensor *w);                                            \
    void P##_rmsnorm_swiglu(struct tensor *y, const struct tensor *x, const struct tensor *nw, float eps,   \
                            const struct tensor *w);

BACKEND_TWINS(cpu)
/* op_linear (outside BACKEND_TWINS, same signature on both backends) */
void cpu_linear(struct tensor *y, const struct tensor *x, const struct tensor *w, const struct tensor *bias, int act,
                const struct tensor *res);
/* op_attention_batch (declared outside BACKEND_TWINS, same signature on both backends) */
void cpu_attention_batch(struct tensor *out, const struct tensor *q, const struct tensor *k, const struct tensor *v,
                         int64_t n_seq, float scale, int flags);

#ifdef MINICPMV_CUDA
#ifdef __cplusplus
extern "C" {
#endif
BACKEND_TWINS(cuda)
/* quantized weights (cuda/cuda_quant.cu): cuda_matmul's path for a Q8/Q4/NF4 w (the decode GEMV,
 * or a dequantization to F16 then the fp16 path); the whole of w as an F16 tensor in the workspace
 * (false, nothing done, when it exceeds QUANT_DEQ_TILE_BYTES); w dequantized into dst (tests). */
void cuda_quant_matmul(struct tensor *y, const struct tensor *x, const struct tensor *w, const struct tensor *bias);
bool cuda_quant_as_f16(struct tensor *w16, const struct tensor *w);
void cuda_quant_dequant(struct tensor *dst, const struct tensor *w);
/* op_linear (cuda/cuda_gemv.cu: fused cuBLASLt epilogues) */
void cuda_linear(struct tensor *y, const struct tensor *x, const struct tensor *w, const struct tensor *bias, int act,
                 const struct tensor *res);
/* op_matmul_stacked as one strided-batched cuBLASLt GEMM: 1 when it ran, 0 (nothing done) when the
 * shapes or dtypes do not allow it; op_matmul_stacked then loops op_matmul over the blocks */
int cuda_matmul_stacked(struct tensor *y, const struct tensor *x, const struct tensor *w, const struct tensor *bias);
/* op_attention_batch (cuda/cuda_flash.cu: the flash kernel with the sequence in the grid, else a
 * loop of cuda_attention) */
void cuda_attention_batch(struct tensor *out, const struct tensor *q, const struct tensor *k, const struct tensor *v,
                          int64_t n_seq, float scale, int flags);
/* device management (cuda/cuda_mem.cu) */
int cuda_device_count(void);
void *cuda_alloc(int ordinal, size_t bytes, struct err *e);
void cuda_free(int ordinal, void *p);
int cuda_mem_info(int ordinal, size_t *free_b, size_t *total_b, struct err *e);
void cuda_sync(int ordinal);
/* copies between host and device or device and device (peer, or staged through the host) */
void cuda_memcpy(struct device dst_dev, void *dst, struct device src_dev, const void *src, size_t bytes);
/* programmatic dependent launch of decode GEMVs (f16, quant; default off) and of the small decode kernels
 * (default on for sm_90 code on sm_90) on/off (cuda/cuda_mem.cu) */
void cuda_set_pdl(int ordinal, int f16, int quant, int small, int early);
/* the profiler's collection on GPU ordinal on / off (cuda/cuda_mem.cu: cudaProfilerStart / Stop) */
void cuda_profile(int ordinal, int on);
/* the quantized decode GEMV's kernel (cuda/cuda_mem.cu; values in cuda/cuda_quant.cuh: 0 the CUDA-core kernel,
 * 1 the default, 2..4 the older tensor-core kernel's tilings, 8..12 the A-operand kernel's shapes) */
void cuda_set_qmma(int ordinal, int on);
/* dev_set_fuse and op_fused_preferred for a GPU (cuda/cuda_mem.cu) */
void cuda_set_fuse(int ordinal, int mode);
int cuda_fused_preferred(const struct tensor *w);
int cuda_swiglu_preferred(const struct tensor *w);
/* a short name for a cuda_set_qmma value (cuda/cuda_qgemv.cu), "?" for others */
const char *cuda_qmma_name(int v);
/* 16-bit weights: the GEMV kernel for n <= max tokens (1..8), cuBLAS above (cuda/cuda_mem.cu; default 1) */
void cuda_set_gemv16_max(int ordinal, int max);
/* F16 matmuls of 2..16 tokens on the A-operand tensor-core kernel (cuda/cuda_mem.cu; values in
 * cuda/cuda_quant.cuh: 0 cuBLAS, the default; 1 the kernel's default shape; 2..5 a forced shape, from one token) */
void cuda_set_f16mma(int ordinal, int v);
/* dev_set_attn_splits on a GPU (cuda/cuda_mem.cu) */
void cuda_set_attn_splits(int ordinal, int s);
/* dev_set_attn_kernel on a GPU (cuda/cuda_mem.cu; k an enum dev_attn) */
void cuda_set_attn_kernel(int ordinal, int k);
/* dev_set_attn_keys on a GPU (cuda/cuda_mem.cu) */
void cuda_set_attn_keys(int ordinal, int64_t keys);
/* dev_set_attn_warps on a GPU (cuda/cuda_mem.cu) */
void cuda_set_attn_warps(int ordinal, int w);
/* a short name for a cuda_set_f16mma value (cuda/cuda_qgemv.cu), "?" for others; cuda_f16mma_default: the
 * value of the shape that 1 runs */
const char *cuda_f16mma_name(int v);
int cuda_f16mma_default(void);
/* how many times that kernel was launched on the device (tests: a case that fell back to cuBLAS) */
uint64_t cuda_f16mma_launches(int ordinal);
/* launches of the quantized decode GEMV's fused forms on GPU ordinal so far (tests: that they ran) */
uint64_t cuda_qfused_launches(int ordinal);
/* 16-bit decode GEMVs on the persistent kernel (cuda/cuda_pgemv.cu: plain, and the fused ops' one-kernel
 * path) or on the older one-pass kernel with the fused ops run as their plain ops (cuda/cuda_mem.cu;
 * default on; tests and the bench compare the two) */
void cuda_set_pgemv(int ordinal, int on);
/* with it off, one-token F16 GEMVs of k >= min_k still on the persistent kernel (default 8192: down_proj; 0 never) */
void cuda_set_pgemv_min_k(int ordinal, int64_t min_k);
/* the small decode ops (rmsnorm, add_rmsnorm, rope_qk, silu_mul, kv_store) on their vector kernels where the
 * tensors allow: 1 (the default) the same bits as the generic kernels, 2 the norms' double sums in another
 * tree (the fp32 statistic may differ in its last bit); or on the generic kernels (0) (cuda/cuda_mem.cu) */
void cuda_set_small_vec(int ordinal, int mode);
/* graphs (cuda/cuda_mem.cu): capture the ops issued on one device's stream, replay them */
int cuda_graph_begin(int ordinal, struct err *e);
void *cuda_graph_end(int ordinal, struct err *e); /* NULL with e set on failure */
int cuda_graph_launch(void *graph, struct err *e);
int cuda_graph_stale(const void *graph);
void cuda_graph_free(void *graph);
#ifdef __cplusplus
}
#endif
#endif

/* op_read_sum (outside BACKEND_TWINS: it returns a value; cuda/cuda_readsum.cu) */
uint64_t cpu_read_sum(const struct tensor *x);
#ifdef MINICPMV_CUDA
#ifdef __cplusplus
extern "C" {
#endif
uint64_t cuda_read_sum(const struct tensor *x);
#ifdef __cplusplus
}
#endif
#endif

/* op_sample_dev (outside BACKEND_TWINS: the CPU twin is in sampler.c, on top of sampler_pick;
 * the CUDA one in cuda/cuda_sample.cu) */
void cpu_sample_dev(const struct tensor *x, struct tensor *ids, struct tensor *state, const struct tensor *sel);
#ifdef MINICPMV_CUDA
#ifdef __cplusplus
extern "C" {
#endif
void cuda_sample_dev(const struct tensor *x, struct tensor *ids, struct tensor *state, const struct tensor *sel);
#ifdef __cplusplus
}
#endif
#endif

#endif
