/* cuda_common.cuh: what every CUDA file of the backend shares: the error-check macros, the
 * per-device context (one non-default stream, the cuBLAS handle and workspace, grow-only scratch
 * buffers), and the device-side dtype load/store/round helpers.
 * Owns no kernels. Invariants:
 *  - every op first calls cuda_ctx_get(ordinal), which makes that ordinal the current device;
 *  - every kernel, copy and cuBLAS call of an op goes to ctx->stream, so a whole decode step can be
 *    captured into a CUDA graph later (after one warm-up step has sized the scratch buffers);
 *  - CUDA/cuBLAS failures other than allocation are programmer errors: print file:line, abort.
 * Glossary for kernels: n = tokens (rows), k = input width, o = output width, H/Hkv = query/kv
 * heads, hd = head dim, T = keys, G = H/Hkv (GQA group), dt = a runtime enum dtype. */
#ifndef MINICPMV_CUDA_COMMON_CUH
#define MINICPMV_CUDA_COMMON_CUH

/* system headers first, outside the extern "C" block below (C++ overloads inside them) */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

extern "C" {
#include "common.h"
#include "tensor.h"
#include "backend.h"
#include "backend_impl.h"
}

#define CUDA_MAX_DEVICES 16
#define CUDA_RC_SLOTS 8                          /* request-sized buffers kept per device */
#define CUDA_RC_MAX_BLOCK ((size_t)64 << 20)     /* ... each at most */
#define CUDA_RC_MAX_KEPT ((size_t)128 << 20)     /* ... all together at most */
#define CUDA_BLAS_WS_BYTES ((size_t)32 << 20) /* cuBLAS / cuBLASLt workspace per device: cuBLAS's advice for Hopper */

#define CUDA_CHECK(call)                                                                                   \
    do {                                                                                                   \
        cudaError_t e_ = (call);                                                                           \
        if (e_ != cudaSuccess) {                                                                           \
            fprintf(stderr, "%s:%d: CUDA error %s (%s) in %s\n", __FILE__, __LINE__, cudaGetErrorName(e_), \
                    cudaGetErrorString(e_), #call);                                                        \
            abort();                                                                                       \
        }                                                                                                  \
    } while (0)

#define CUBLAS_CHECK(call)                                                                                 \
    do {                                                                                                   \
        cublasStatus_t s_ = (call);                                                                        \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                 \
            fprintf(stderr, "%s:%d: cuBLAS error %d (%s) in %s\n", __FILE__, __LINE__, (int)s_,            \
                    cublasGetStatusString(s_), #call);                                                     \
            abort();                                                                                       \
        }                                                                                                  \
    } while (0)

/* The cache row of token p of a paged sequence (block table tab of mb entries, backend.h) in a pool of
 * T rows, or p itself without a table; -1 when it falls outside. */
__device__ __forceinline__ int64_t kv_page_row(const int32_t *tab, int64_t mb, int64_t p, int64_t T)
{
    if (!tab) return p >= 0 && p < T ? p : -1;
    if (p < 0 || p / KV_BLOCK >= mb) return -1;
    const int64_t r = (int64_t)tab[p / KV_BLOCK] * KV_BLOCK + p % KV_BLOCK;
    return r >= 0 && r < T ? r : -1;
}

/* after every kernel launch: catches bad launch configurations at once (not asynchronous faults) */
#define KERNEL_CHECK() CUDA_CHECK(cudaGetLastError())

/* scratch slots: an op may hold several at once, so each use has its own slot */
enum cuda_scratch_slot {
    SCRATCH_MM_X = 0,  /* matmul: x converted to the weight dtype */
    SCRATCH_MM_Y,      /* matmul: fp32 GEMM output before bias + rounding */
    SCRATCH_ATTN,      /* attention: split-K partials */
    SCRATCH_ATTN_KV,   /* attention: k/v converted to f32 when their dtypes differ */
    SCRATCH_ARGMAX,    /* argmax: device-side int32 results */
    SCRATCH_ATTN_CNT,  /* decode attention: per-block-group arrival counters (zeroed, self-resetting) */
    SCRATCH_MM_T,      /* linear without a fused epilogue: the product before the activation / residual */
    SCRATCH_QW,        /* a quantized weight (or a row tile of it) dequantized to F16 for the GEMM (cuda_quant.cu) */
    SCRATCH_QY,        /* the output columns of one such tile, before they go into y */
    SCRATCH_SUM,       /* op_read_sum: the 64-bit total (cuda_readsum.cu) */
    SCRATCH_FUSE_XN,   /* op_rmsnorm_matmul / _swiglu run as plain ops: the normalized input (cuda_pgemv.cu) */
    SCRATCH_FUSE_GU,   /* op_rmsnorm_swiglu run as plain ops: the gate and up outputs */
    SCRATCH_N
};

struct lt_plan; /* cuda_gemv.cu */

/* The persistent GEMV's default launch shape (cuda_pgemv.cu; `test_cuda_ops bench gemv` sweeps it):
 * blocks per SM, and 16-byte weight loads per lane in each of its two in-flight chunks */
#define PGEMV_DEFAULT_BPS 4
#define PGEMV_DEFAULT_U 4
#define PGEMV_DEFAULT_MIN_K 8192

struct cuda_ctx {
    int ordinal;
    int n_sm;                   /* multiprocessors: grids are sized from this */
    int cc;                     /* compute capability, major * 10 + minor (75, 80, 86, 89, 90) */
    int code_arch;              /* the virtual architecture the running code was compiled for (the
                                 * __CUDA_ARCH__ / 10 of its kernels: 75 for a compute_75 PTX build
                                 * JIT-compiled on an H200, 90 for the fat build there) */
    int smem_optin;             /* cudaDevAttrMaxSharedMemoryPerBlockOptin: the dynamic shared memory
                                 * a kernel may opt in to (sm_75 64 KiB, sm_86/89 99, sm_80 163, sm_90 227) */
    cudaStream_t stream;        /* the one stream every op of this device runs on */
    cudaEvent_t ev;             /* cross-device ordering in cuda_memcpy */
    cublasHandle_t blas;        /* created on first GEMM */
    void *blas_ws;              /* cuBLAS workspace (fixed, so graph capture never allocates) */
    cublasLtHandle_t lt;        /* cuBLASLt, for GEMMs with a bias epilogue (created on first use) */
    struct lt_plan *lt_plans;   /* cuBLASLt descriptors + algorithm per GEMM shape (cuda_gemv.cu) */
    int n_lt_plans, cap_lt_plans;
    void *scratch[SCRATCH_N];
    size_t scratch_bytes[SCRATCH_N];
    unsigned scratch_gen;       /* bumped whenever a scratch buffer moves: graphs captured before are stale */
    void *pinned;               /* staging buffer: the upload ring, and copies between GPUs without peer access */
    size_t pinned_bytes;
    /* uploads in flight through `pinned`, oldest first (cuda_mem.cu): each a region of the ring and
     * the event recorded after its copy, so the region is reused only once the copy has read it */
    struct { size_t off, len; cudaEvent_t ev; } up[32];
    int up_first, up_n;
    size_t up_head;
    /* request-sized device buffers kept for reuse (cuda_mem.cu: cuda_alloc / cuda_free) */
    struct { void *p; size_t bytes; int live; } rc[CUDA_RC_SLOTS];
    int rc_n;
    signed char peer[CUDA_MAX_DEVICES]; /* 0 not yet asked, 1 peer access on, -1 not possible */
    int pdl;                    /* launch 16-bit decode GEMVs with programmatic dependent launch (cuda_set_pdl) */
    int pdl_q;                  /* the same for the quantized decode GEMVs */
    int pdl_small;              /* the decode step's small kernels (norms, RoPE + KV append, SwiGLU, the decode
                                   attention, argmax, embedding, position add) launched as programmatic dependents
                                   of the kernel before them (cuda_launch_dep; cuda_set_pdl) */
    int attn_splits;            /* > 0: the tensor-core decode attention's split count (dev_set_attn_splits) */
    int64_t attn_keys;          /* > 0: a bound on the keys of decode attention calls with device positions (dev_set_attn_keys) */
    int attn_warps;             /* 1, 2, 4: the tensor-core decode attention's warps per block; 0 its rule */
    int attn_kernel;            /* an enum dev_attn: 0 the rule, else that decode attention kernel where it can run */
    int attn_early;             /* with pdl_small and no GEMV launched as a dependent: the decode attention reads
                                   what earlier steps wrote before its pdl_wait (attn_dec_args.early) */
    int qmma;                   /* quantized GEMVs on tensor cores where they apply (cuda_set_qmma; default on) */
    int fuse;                   /* DEV_FUSE_*: whether one-token steps prefer the fused decode ops (cuda_set_fuse) */
    int gemv16_max;             /* 16-bit weights: the GEMV kernel takes n <= this many tokens, cuBLAS the rest
                                   (cuda_set_gemv16_max; default 1) */
    int f16mma;                 /* F16 weights at 2..16 tokens on the A-operand tensor-core kernel instead of
                                   cuBLAS (cuda_qgemv.cu, cuda_set_f16mma; values in cuda_quant.cuh; default 0) */
    uint64_t f16mma_launches;   /* launches of that kernel so far: the tests check that it ran */
    uint64_t qfused_launches;   /* launches of the quantized GEMV's fused forms (cuda_qgemv_rmsnorm_matmul ..) */
    int pgemv;                  /* F16 decode GEMVs on the persistent kernel, fused ops in one kernel
                                   (cuda_pgemv.cu, cuda_set_pgemv; default 0) */
    int pgemv_bps, pgemv_u;     /* its grid (blocks per SM) and 16-byte loads per lane per chunk (4 or 8) */
    int64_t pgemv_min_k;        /* with pgemv off, one-token F16 GEMVs of rows this long or longer still take the
                                   persistent kernel (down_proj, k = 14336: 30.0 us against the one-pass kernel's
                                   32.4 on the H200); 0: never (cuda_set_pgemv_min_k) */
    int pgemv_trig_early;       /* 1: it lets a PDL-launched successor start at once, 0: after its last loads */
    int small_vec;              /* the decode step's small ops (norms, rope_qk, silu_mul, kv_store) on their
                                   vector kernels where the tensors allow: 1 (the default) with the norms'
                                   generic summation tree, 2 with their own, 0 off (cuda_ops.cu,
                                   cuda_set_small_vec) */
};

/* Returns the context of a device (created on first use) and makes it the current device. */
struct cuda_ctx *cuda_ctx_get(int ordinal);
/* The cuBLAS handle of a context, bound to its stream and workspace. */
cublasHandle_t cuda_ctx_blas(struct cuda_ctx *c);
/* A device buffer of at least `bytes` for one slot. Grows (after a stream sync) when too small:
 * not inside a graph capture, so run one warm-up step at the largest shapes first. */
void *cuda_scratch(struct cuda_ctx *c, int slot, size_t bytes);
/* cuda_scratch whose new memory is zeroed (on the stream) whenever it grows: for counters that the
 * kernels using them return to zero before they exit. */
void *cuda_scratch_zeroed(struct cuda_ctx *c, int slot, size_t bytes);
/* Aborts with a message naming `what` when the device's stream is being captured into a graph. */
void cuda_check_not_capturing(struct cuda_ctx *c, const char *what);

/* A grid of 256-thread blocks for n elements, grid-stride beyond 32 blocks per SM. */
static inline unsigned cuda_grid_1d(const struct cuda_ctx *c, int64_t n)
{
    int64_t b = (n + 255) / 256, cap = (int64_t)c->n_sm * 32;
    if (b < 1) b = 1;
    return (unsigned)(b < cap ? b : cap);
}

/* ---- programmatic dependent launch (Hopper) ----
 * A kernel launched with cuda_launch_pdl may start while the previous kernel of the stream is still
 * running; it must call pdl_wait() before it reads anything an earlier kernel wrote or writes
 * anything an earlier kernel reads (only constant data, the weights, may be touched before; and, under
 * c->attn_early, what was written before the last full launch: the decode attention's positions, block
 * tables and cache rows of earlier steps). Every
 * kernel calls pdl_trigger() early so that such a successor can be scheduled as soon as all of its
 * own blocks have started. Both are no-ops without a PDL launch and before sm_90. */
__device__ __forceinline__ void pdl_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* Launches kern on the context's stream with smem bytes of dynamic shared memory; when dep, as a programmatic
 * dependent of the kernel before it (programmatic stream serialisation: its blocks may be scheduled once that
 * kernel's blocks have all started or triggered, and it must pdl_wait() before touching memory). */
template <typename... KArgs, typename... Args>
static inline void cuda_launch_ps(const struct cuda_ctx *c, bool dep, void (*kern)(KArgs...), dim3 grid, dim3 block,
                                  size_t smem, Args... args)
{
    if (!dep) {
        kern<<<grid, block, smem, c->stream>>>(args...);
        CUDA_CHECK(cudaGetLastError());
        return;
    }
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = c->stream;
    cudaLaunchAttribute at[1] = {};
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at;
    cfg.numAttrs = 1;
    CUDA_CHECK(cudaLaunchKernelEx(&cfg, kern, args...));
}

/* A decode GEMV: a programmatic dependent when c->pdl (cuda_set_pdl). */
template <typename... KArgs, typename... Args>
static inline void cuda_launch_pdl(const struct cuda_ctx *c, void (*kern)(KArgs...), dim3 grid, dim3 block,
                                   Args... args)
{
    cuda_launch_ps(c, c->pdl != 0, kern, grid, block, 0, args...);
}

/* A small decode-step kernel: a programmatic dependent when c->pdl_small, so its launch's latency is spent while
 * the previous kernel finishes (it calls pdl_wait() before it touches memory). */
template <typename... KArgs, typename... Args>
static inline void cuda_launch_dep(const struct cuda_ctx *c, void (*kern)(KArgs...), dim3 grid, dim3 block, size_t smem,
                                   Args... args)
{
    cuda_launch_ps(c, c->pdl_small != 0, kern, grid, block, smem, args...);
}

/* ---- device-side dtype helpers (dt is an enum dtype value) ---- */

__device__ __forceinline__ float ldf(const void *p, int dt, int64_t i)
{
    if (dt == DTYPE_F16) return __half2float(((const __half *)p)[i]);
    if (dt == DTYPE_BF16) return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    if (dt == DTYPE_I32) return (float)((const int32_t *)p)[i];
    return ((const float *)p)[i];
}

/* stores with round-to-nearest-even, the same rounding as f32_to_f16 / f32_to_bf16 on the host */
__device__ __forceinline__ void stf(void *p, int dt, int64_t i, float v)
{
    if (dt == DTYPE_F16) ((__half *)p)[i] = __float2half_rn(v);
    else if (dt == DTYPE_BF16) ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
    else if (dt == DTYPE_I32) ((int32_t *)p)[i] = (int32_t)v;
    else ((float *)p)[i] = v;
}

/* rnd() of backend_cpu.c: what storing an intermediate in dtype dt does */
__device__ __forceinline__ float rndf(float v, int dt)
{
    if (dt == DTYPE_F16) return __half2float(__float2half_rn(v));
    if (dt == DTYPE_BF16) return __bfloat162float(__float2bfloat16_rn(v));
    return v;
}

/* op_silu_mul's element: silu(g) rounded to dt first (as torch does), times u; the caller rounds the product to
 * dt when it stores it. silu_mul's kernels and every GEMV with SwiGLU in its epilogue take it, so they agree
 * bit for bit. */
__device__ __forceinline__ float silu_mul_f(float g, float u, int dt)
{
    return __fmul_rn(rndf(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), dt), u);
}

/* the enum dtype of a storage type */
template <typename T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr int value = DTYPE_F32; };
template <> struct dtype_of<__half> { static constexpr int value = DTYPE_F16; };
template <> struct dtype_of<__nv_bfloat16> { static constexpr int value = DTYPE_BF16; };

/* 32-bit words holding packed elements of T -> floats (used after 16/8-byte vector loads) */
template <typename T> struct words;
template <> struct words<float> {
    static constexpr int per_word = 1;
    __device__ __forceinline__ static void to_f(uint32_t w, float *o) { o[0] = __uint_as_float(w); }
};
template <> struct words<__half> {
    static constexpr int per_word = 2;
    __device__ __forceinline__ static void to_f(uint32_t w, float *o)
    {
        __half2 h = *reinterpret_cast<__half2 *>(&w);
        float2 f = __half22float2(h);
        o[0] = f.x;
        o[1] = f.y;
    }
};
template <> struct words<__nv_bfloat16> {
    static constexpr int per_word = 2;
    __device__ __forceinline__ static void to_f(uint32_t w, float *o)
    {
        /* bf16 -> f32 is a shift: exact */
        o[0] = __uint_as_float(w << 16);
        o[1] = __uint_as_float(w & 0xffff0000u);
    }
};

/* Loads N elements of T starting at p (aligned to min(16, N*sizeof(T)) bytes) as floats, with
 * 16-byte (or 8-byte) loads through the read-only path, or with CG through L2 only (ld.global.cg:
 * for data a still-running predecessor kernel wrote, under programmatic dependent launch). */
template <typename T, int N, bool CG = false> __device__ __forceinline__ void load_vec(const T *p, float *o)
{
    constexpr int B = N * (int)sizeof(T);
    static_assert(B % 8 == 0, "vector loads are 8 or 16 bytes");
    constexpr int PW = words<T>::per_word;
    if constexpr (B % 16 == 0) {
#pragma unroll
        for (int q = 0; q < B / 16; q++) {
            uint4 u = CG ? __ldcg(reinterpret_cast<const uint4 *>(p) + q) : __ldg(reinterpret_cast<const uint4 *>(p) + q);
            words<T>::to_f(u.x, o + (4 * q + 0) * PW);
            words<T>::to_f(u.y, o + (4 * q + 1) * PW);
            words<T>::to_f(u.z, o + (4 * q + 2) * PW);
            words<T>::to_f(u.w, o + (4 * q + 3) * PW);
        }
    } else {
        uint2 u = CG ? __ldcg(reinterpret_cast<const uint2 *>(p)) : __ldg(reinterpret_cast<const uint2 *>(p));
        words<T>::to_f(u.x, o);
        words<T>::to_f(u.y, o + PW);
    }
}

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

/* Block-wide double sum; every thread gets the result. red must hold blockDim.x / 32 doubles. The
 * norms (cuda_ops.cu) and the fused GEMV's norm prologue (cuda_pgemv.cu) share it, so with the same
 * block size and element-to-thread mapping their sums have the same bits. */
__device__ __forceinline__ double block_sum_d(double v, double *red)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_d(v);
    __syncthreads(); /* red may still be read by a previous call */
    if (lane == 0) red[warp] = v;
    __syncthreads();
    double s = 0;
    for (int w = 0; w < nw; w++) s += red[w];
    return s;
}

#endif
