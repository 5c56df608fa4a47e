/* cuda_mem.cu: device management for the CUDA backend: device count, allocation, memory info,
 * synchronisation, host<->device and device<->device copies, and the per-device contexts.
 * Owns the context registry (one struct cuda_ctx per ordinal, created lazily under a mutex and
 * kept for the life of the process: the API has no context argument, so this registry is the one
 * piece of process-wide state of the backend). Does not own any op.
 * Copies to or from the host synchronise (the caller reads or reuses the host buffer next);
 * device<->device copies are ordered with events and do not block the host when peer access works.
 * Also owns CUDA graphs: cuda_graph_begin/end capture the ops issued on one device's stream, and
 * cuda_graph_launch replays them on that stream. A capture must not contain host<->device copies,
 * syncs or scratch growth: each of those aborts with a message saying so (programmer error). */
#include <atomic>
#include <mutex>

#include <cuda_profiler_api.h>

#include "cuda/cuda_common.cuh"

static std::atomic<struct cuda_ctx *> g_ctx[CUDA_MAX_DEVICES];
static std::mutex g_ctx_mu;

#define CUDA_PINNED_BYTES ((size_t)64 << 20)

extern "C" int cuda_device_count(void)
{
    int n = 0; /* stays 0 when there is no driver (cudaErrorInsufficientDriver, 35) or no device */
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError(); /* clear the sticky-free error so later calls start clean */
        return 0;
    }
    return n;
}

/* An empty kernel: its attributes say which target of this build the device runs (cuda_ctx.code_arch). */
__global__ void cuda_arch_probe_kernel() {}

struct cuda_ctx *cuda_ctx_get(int ordinal)
{
    CHECKF(ordinal >= 0 && ordinal < CUDA_MAX_DEVICES, "CUDA ordinal %d out of range", ordinal);
    CUDA_CHECK(cudaSetDevice(ordinal));
    struct cuda_ctx *c = g_ctx[ordinal].load(std::memory_order_acquire);
    if (c) return c;
    std::lock_guard<std::mutex> lock(g_ctx_mu);
    c = g_ctx[ordinal].load(std::memory_order_relaxed);
    if (c) return c;
    c = (struct cuda_ctx *)calloc(1, sizeof *c);
    CHECK(c);
    c->ordinal = ordinal;
    CUDA_CHECK(cudaDeviceGetAttribute(&c->n_sm, cudaDevAttrMultiProcessorCount, ordinal));
    int major = 0, minor = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, ordinal));
    CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, ordinal));
    c->cc = major * 10 + minor;
    CUDA_CHECK(cudaDeviceGetAttribute(&c->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, ordinal));
    cudaFuncAttributes fa;
    CUDA_CHECK(cudaFuncGetAttributes(&fa, cuda_arch_probe_kernel));
    c->code_arch = fa.ptxVersion;
    c->qmma = 1;
    c->gemv16_max = 1;
    c->f16mma = 0; /* cuBLAS at 2..16 tokens until the A kernel's F16 path is measured on a GPU */
    c->pgemv = 0; /* the one-pass GEMV: faster at every decode shape but 4096x14336 on the H200 (session 7) */
    c->pgemv_bps = PGEMV_DEFAULT_BPS;
    c->pgemv_u = PGEMV_DEFAULT_U;
    c->pgemv_min_k = PGEMV_DEFAULT_MIN_K;
    /* the small decode kernels as programmatic dependents where PDL exists (sm_90 code on sm_90): +0.4-1 % decode
     * on the H200 (docs/PERF.md session 15), the same bits; dev_set_overlap(d, 0) turns it off */
    c->pdl_small = c->cc >= 90 && c->code_arch >= 90;
    c->attn_early = c->pdl_small;
    c->small_vec = 1;
    /* non-blocking: never serialised against the legacy default stream, capturable into a graph */
    CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&c->ev, cudaEventDisableTiming));
    for (int i = 0; i < 32; i++) CUDA_CHECK(cudaEventCreateWithFlags(&c->up[i].ev, cudaEventDisableTiming));
    g_ctx[ordinal].store(c, std::memory_order_release);
    return c;
}

cublasHandle_t cuda_ctx_blas(struct cuda_ctx *c)
{
    if (c->blas) return c->blas;
    CUBLAS_CHECK(cublasCreate(&c->blas));
    CUBLAS_CHECK(cublasSetStream(c->blas, c->stream));
    /* fp32 GEMMs stay IEEE fp32: no TF32 (the parity tests compare against the CPU's fp32) */
    CUBLAS_CHECK(cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH));
    CUDA_CHECK(cudaMalloc(&c->blas_ws, CUDA_BLAS_WS_BYTES));
    CUBLAS_CHECK(cublasSetWorkspace(c->blas, c->blas_ws, CUDA_BLAS_WS_BYTES));
    return c->blas;
}

void *cuda_scratch(struct cuda_ctx *c, int slot, size_t bytes)
{
    CHECK(slot >= 0 && slot < SCRATCH_N);
    if (bytes <= c->scratch_bytes[slot]) return c->scratch[slot];
    cuda_check_not_capturing(c, "scratch growth (run one eager step at the same shapes before capturing)");
    size_t grow = c->scratch_bytes[slot] + c->scratch_bytes[slot] / 2;
    size_t want = bytes > grow ? bytes : grow;
    want = (want + 4095) & ~(size_t)4095;
    /* queued kernels may still use the old buffer */
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    if (c->scratch[slot]) CUDA_CHECK(cudaFree(c->scratch[slot]));
    c->scratch[slot] = NULL;
    c->scratch_bytes[slot] = 0;
    cudaError_t r = cudaMalloc(&c->scratch[slot], want);
    if (r != cudaSuccess) {
        fprintf(stderr, "%s:%d: GPU %d: cannot allocate %zu bytes of scratch: %s\n", __FILE__, __LINE__,
                c->ordinal, want, cudaGetErrorString(r));
        abort();
    }
    c->scratch_bytes[slot] = want;
    c->scratch_gen++;
    return c->scratch[slot];
}

void *cuda_scratch_zeroed(struct cuda_ctx *c, int slot, size_t bytes)
{
    const size_t before = c->scratch_bytes[slot];
    void *p = cuda_scratch(c, slot, bytes);
    if (c->scratch_bytes[slot] != before) CUDA_CHECK(cudaMemsetAsync(p, 0, c->scratch_bytes[slot], c->stream));
    return p;
}

void cuda_check_not_capturing(struct cuda_ctx *c, const char *what)
{
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    CUDA_CHECK(cudaStreamIsCapturing(c->stream, &st));
    CHECKF(st == cudaStreamCaptureStatusNone, "GPU %d: %s inside a CUDA graph capture", c->ordinal, what);
}

/* Programmatic dependent launch is a Hopper feature, and the kernels' griddepcontrol waits are compiled
 * for sm_90 only (cuda_common.cuh): on older cards, and for code built for an older target (a
 * compute_75 / compute_80 PTX build JIT-compiled on an H200 has no waits), the request is ignored and
 * launches stay in stream order. */
extern "C" void cuda_set_pdl(int ordinal, int f16, int quant, int small, int early)
{
    struct cuda_ctx *c = cuda_ctx_get(ordinal);
    const bool able = c->cc >= 90 && c->code_arch >= 90;
    c->pdl = f16 && able;
    c->pdl_q = quant && able;
    c->pdl_small = small && able;
    c->attn_early = early && c->pdl_small && !c->pdl && !c->pdl_q;
}

extern "C" void cuda_set_attn_splits(int ordinal, int s) { cuda_ctx_get(ordinal)->attn_splits = s > 0 ? s : 0; }

extern "C" void cuda_set_attn_kernel(int ordinal, int k) { cuda_ctx_get(ordinal)->attn_kernel = k > DEV_ATTN_AUTO && k <= DEV_ATTN_TCC ? k : DEV_ATTN_AUTO; }

extern "C" void cuda_set_attn_keys(int ordinal, int64_t keys) { cuda_ctx_get(ordinal)->attn_keys = keys > 0 ? keys : 0; }

extern "C" void cuda_set_attn_warps(int ordinal, int w) { cuda_ctx_get(ordinal)->attn_warps = w == 1 || w == 2 || w == 4 || w == 8 ? w : 0; }

extern "C" void cuda_profile(int ordinal, int on)
{
    struct cuda_ctx *c = cuda_ctx_get(ordinal);
    CUDA_CHECK(cudaSetDevice(c->ordinal));
    CUDA_CHECK(on ? cudaProfilerStart() : cudaProfilerStop());
}

/* The quantized decode GEMV's kernel (cuda_quant.cuh lists the values): 0 the CUDA-core kernel, 1 the
 * default, others the bench's alternatives; the tests and the bench compare them. The tensor-core kernels
 * need code built for sm_80 or newer (mma.sync m16n8k16). */
extern "C" void cuda_set_qmma(int ordinal, int on)
{
    struct cuda_ctx *c = cuda_ctx_get(ordinal);
    c->qmma = on < 0 ? 0 : on;
}

extern "C" void cuda_set_fuse(int ordinal, int mode)
{
    struct cuda_ctx *c = cuda_ctx_get(ordinal);
    c->fuse = mode;
}

/* DEV_FUSE_AUTO: the plain ops for every format. On the H200 the fused kernels lost to the plain sequence for
 * 16-bit weights (cuda_pgemv.cu, session 7) and for quantized ones (cuda_qgemv.cu's fused forms, session 12:
 * q4 decode 360 tok/s against 415, q8 289 against 337; docs/PERF.md) */
extern "C" int cuda_fused_preferred(const struct tensor *w)
{
    return cuda_ctx_get(w->dev.ordinal)->fuse == DEV_FUSE_ON;
}

/* SwiGLU in the one-token gate|up GEMV's epilogue (op_swiglu_preferred): DEV_FUSE_SWIGLU, and DEV_FUSE_AUTO when
 * SWIGLU_AUTO says so. H200 session 16 (docs/PERF.md): engine decode at context 512 227.4 tok/s against 226.3 with
 * silu_mul a kernel of its own, 213.9 / 213.3 at 3,500, the same tokens; bench fp16 decode512 227 / 228 against
 * 226 / 227, q4 435 against 431 */
#define SWIGLU_AUTO 1
extern "C" int cuda_swiglu_preferred(const struct tensor *w)
{
    const int m = cuda_ctx_get(w->dev.ordinal)->fuse;
    return m == DEV_FUSE_SWIGLU || (m == DEV_FUSE_AUTO && SWIGLU_AUTO);
}

/* F16 matmuls of 2..16 tokens (the batched decode step) on the A-operand tensor-core kernel of cuda_qgemv.cu
 * (values in cuda_quant.cuh): 0 (the default) cuBLAS, 1 that kernel in its default shape, 2.. a forced shape
 * (from one token on; the tests and the bench). Needs code built for sm_80 or newer; cuBLAS otherwise. */
extern "C" void cuda_set_f16mma(int ordinal, int v)
{
    struct cuda_ctx *c = cuda_ctx_get(ordinal);
    c->f16mma = v < 0 ? 0 : v;
}

extern "C" uint64_t cuda_f16mma_launches(int ordinal) { return cuda_ctx_get(ordinal)->f16mma_launches; }
extern "C" uint64_t cuda_qfused_launches(int ordinal) { return cuda_ctx_get(ordinal)->qfused_launches; }

/* The persistent GEMV for F16 decode matmuls and the fused ops' one-kernel path (cuda_pgemv.cu): 1 on,
 * 0 (the default) the one-pass GEMV of cuda_gemv.cu with the fused ops run as their plain ops, except one-token
 * rows of pgemv_min_k or more (cuda_set_pgemv_min_k). */
extern "C" void cuda_set_pgemv(int ordinal, int on)
{
    struct cuda_ctx *c = cuda_ctx_get(ordinal);
    c->pgemv = on != 0;
}

/* One-token F16 GEMVs with k >= min_k on the persistent kernel even with cuda_set_pgemv off (0: never). */
extern "C" void cuda_set_pgemv_min_k(int ordinal, int64_t min_k)
{
    struct cuda_ctx *c = cuda_ctx_get(ordinal);
    c->pgemv_min_k = min_k > 0 ? min_k : 0;
}

/* The vector kernels of the small decode ops (cuda_ops.cu) where the tensors allow: 1 (the default) the
 * same bits as the generic kernels they replace, 2 the norms' double sums in their own tree (the fp32
 * statistic can differ in its last bit), 0 the generic kernels (the tests and `test_cuda_ops bench small`
 * compare them). */
extern "C" void cuda_set_small_vec(int ordinal, int mode)
{
    struct cuda_ctx *c = cuda_ctx_get(ordinal);
    c->small_vec = mode < 0 ? 0 : mode > 2 ? 2 : mode;
}

/* The largest token count the GEMV kernel takes for 16-bit weights (cuda_gemv.cu): 1..8. */
extern "C" void cuda_set_gemv16_max(int ordinal, int n)
{
    struct cuda_ctx *c = cuda_ctx_get(ordinal);
    c->gemv16_max = n < 1 ? 1 : n > 8 ? 8 : n;
}

/* ---- CUDA graphs ---- */

struct cuda_graph {
    int ordinal;
    unsigned scratch_gen; /* the context's scratch generation at capture: the kernels hold those pointers */
    cudaGraphExec_t exec;
};

extern "C" int cuda_graph_begin(int ordinal, struct err *e)
{
    if (ordinal < 0 || ordinal >= cuda_device_count())
        return err_set(e, "graph capture on GPU %d: no such device", ordinal);
    struct cuda_ctx *c = cuda_ctx_get(ordinal);
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    CUDA_CHECK(cudaStreamIsCapturing(c->stream, &st));
    if (st != cudaStreamCaptureStatusNone) return err_set(e, "GPU %d: a graph capture is already open", ordinal);
    /* thread-local: an unsafe call (cudaMalloc, a sync) from this thread fails instead of racing */
    cudaError_t r = cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal);
    if (r != cudaSuccess) {
        (void)cudaGetLastError();
        return err_set(e, "GPU %d: cudaStreamBeginCapture: %s", ordinal, cudaGetErrorString(r));
    }
    return 0;
}

extern "C" void *cuda_graph_end(int ordinal, struct err *e)
{
    struct cuda_ctx *c = cuda_ctx_get(ordinal);
    cudaGraph_t g = NULL;
    cudaError_t r = cudaStreamEndCapture(c->stream, &g);
    if (r != cudaSuccess || !g) {
        (void)cudaGetLastError();
        if (g) cudaGraphDestroy(g);
        err_set(e, "GPU %d: cudaStreamEndCapture: %s", ordinal, cudaGetErrorString(r));
        return NULL;
    }
    struct cuda_graph *cg = (struct cuda_graph *)calloc(1, sizeof *cg);
    if (!cg) {
        cudaGraphDestroy(g);
        err_set(e, "out of memory");
        return NULL;
    }
    cg->ordinal = ordinal;
    cg->scratch_gen = c->scratch_gen;
    r = cudaGraphInstantiate(&cg->exec, g, 0);
    cudaGraphDestroy(g); /* the executable graph keeps what it needs */
    if (r != cudaSuccess) {
        (void)cudaGetLastError();
        free(cg);
        err_set(e, "GPU %d: cudaGraphInstantiate: %s", ordinal, cudaGetErrorString(r));
        return NULL;
    }
    return cg;
}

extern "C" int cuda_graph_launch(void *graph, struct err *e)
{
    struct cuda_graph *cg = (struct cuda_graph *)graph;
    struct cuda_ctx *c = cuda_ctx_get(cg->ordinal);
    /* an eager op grew a scratch buffer after the capture (a longer prefill, the vision tower): the
     * captured kernels would use freed memory */
    if (c->scratch_gen != cg->scratch_gen)
        return err_set(e, "GPU %d: graph is stale (scratch buffers were reallocated since its capture): capture it again",
                       cg->ordinal);
    cudaError_t r = cudaGraphLaunch(cg->exec, c->stream);
    if (r != cudaSuccess) {
        (void)cudaGetLastError();
        return err_set(e, "GPU %d: cudaGraphLaunch: %s", cg->ordinal, cudaGetErrorString(r));
    }
    return 0;
}

extern "C" int cuda_graph_stale(const void *graph)
{
    const struct cuda_graph *cg = (const struct cuda_graph *)graph;
    return cuda_ctx_get(cg->ordinal)->scratch_gen != cg->scratch_gen;
}

extern "C" void cuda_graph_free(void *graph)
{
    struct cuda_graph *cg = (struct cuda_graph *)graph;
    if (!cg) return;
    cuda_ctx_get(cg->ordinal);
    if (cg->exec) CUDA_CHECK(cudaGraphExecDestroy(cg->exec));
    free(cg);
}

/* Request-sized buffers (1-64 MiB: an image's tokens, a prompt's embeddings) are allocated and freed
 * once per request; in this workplace's sandboxed driver a cudaMalloc + cudaFree pair of 8 MiB cost
 * ~4 ms (bench vision1, in_pre_ms). Such blocks, rounded up to 1 MiB, are kept per device when freed
 * (up to CUDA_RC_SLOTS blocks, CUDA_RC_MAX_KEPT bytes in all) and handed out again for the same
 * rounded size. Their memory stays counted as used; the plan's workspace headroom covers it. */
static std::mutex g_rc_mu;

static size_t rc_round(size_t bytes)
{
    const size_t mib = (size_t)1 << 20;
    if (bytes < mib || bytes > CUDA_RC_MAX_BLOCK) return 0;
    return (bytes + mib - 1) / mib * mib;
}

extern "C" void *cuda_alloc(int ordinal, size_t bytes, struct err *e)
{
    int n = cuda_device_count();
    if (ordinal < 0 || ordinal >= n || ordinal >= CUDA_MAX_DEVICES) {
        err_set(e, "cannot allocate %zu bytes on GPU %d: %d CUDA device(s) visible", bytes, ordinal, n);
        return NULL;
    }
    struct cuda_ctx *c = cuda_ctx_get(ordinal);
    const size_t rb = rc_round(bytes);
    if (rb) { /* a request-sized buffer: reuse a kept one of the same size */
        std::lock_guard<std::mutex> lock(g_rc_mu);
        for (int i = 0; i < c->rc_n; i++)
            if (c->rc[i].bytes == rb && !c->rc[i].live) {
                c->rc[i].live = 1;
                return c->rc[i].p;
            }
    }
    void *p = NULL;
    cudaError_t r = cudaMalloc(&p, rb ? rb : bytes ? bytes : 256);
    if (r != cudaSuccess) {
        (void)cudaGetLastError();
        size_t fr = 0, tot = 0;
        if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) (void)cudaGetLastError();
        err_set(e, "GPU %d: cannot allocate %zu bytes (%.1f MiB; %.1f of %.1f MiB free): %s", ordinal, bytes,
                (double)bytes / 1048576.0, (double)fr / 1048576.0, (double)tot / 1048576.0, cudaGetErrorString(r));
        return NULL;
    }
    if (rb) {
        std::lock_guard<std::mutex> lock(g_rc_mu);
        size_t kept = 0;
        for (int i = 0; i < c->rc_n; i++) kept += c->rc[i].bytes;
        if (c->rc_n < CUDA_RC_SLOTS && kept + rb <= CUDA_RC_MAX_KEPT) c->rc[c->rc_n++] = {p, rb, 1};
    }
    return p;
}

extern "C" void cuda_free(int ordinal, void *p)
{
    if (!p) return;
    struct cuda_ctx *c = cuda_ctx_get(ordinal);
    {
        std::lock_guard<std::mutex> lock(g_rc_mu);
        for (int i = 0; i < c->rc_n; i++)
            if (c->rc[i].p == p) {
                CHECK(c->rc[i].live);
                /* kept for the next request; wait as cudaFree would, so no queued op still uses it */
                CUDA_CHECK(cudaStreamSynchronize(c->stream));
                c->rc[i].live = 0;
                return;
            }
    }
    CUDA_CHECK(cudaFree(p)); /* implicitly waits for the device: no queued op still uses p */
}

extern "C" int cuda_mem_info(int ordinal, size_t *free_b, size_t *total_b, struct err *e)
{
    int n = cuda_device_count();
    if (ordinal < 0 || ordinal >= n || ordinal >= CUDA_MAX_DEVICES)
        return err_set(e, "no GPU %d: %d CUDA device(s) visible", ordinal, n);
    cuda_ctx_get(ordinal);
    cudaError_t r = cudaMemGetInfo(free_b, total_b);
    if (r != cudaSuccess) {
        (void)cudaGetLastError();
        return err_set(e, "GPU %d: cudaMemGetInfo: %s", ordinal, cudaGetErrorString(r));
    }
    return 0;
}

extern "C" void cuda_sync(int ordinal)
{
    cuda_check_not_capturing(cuda_ctx_get(ordinal), "a device sync");
    CUDA_CHECK(cudaDeviceSynchronize());
}

/* The stream of a device as an opaque pointer, for timing with events (tests/test_cuda_ops.c bench). */
extern "C" void *cuda_stream_handle(int ordinal) { return (void *)cuda_ctx_get(ordinal)->stream; }

/* Turns on peer access from device a to device b once; returns 1 when a can read/write b's memory. */
static int peer_enable(struct cuda_ctx *ca, int b)
{
    if (ca->peer[b]) return ca->peer[b] > 0;
    int can = 0;
    CUDA_CHECK(cudaDeviceCanAccessPeer(&can, ca->ordinal, b));
    if (can) {
        CUDA_CHECK(cudaSetDevice(ca->ordinal));
        cudaError_t r = cudaDeviceEnablePeerAccess(b, 0);
        if (r == cudaErrorPeerAccessAlreadyEnabled) (void)cudaGetLastError();
        else CUDA_CHECK(r);
    }
    ca->peer[b] = can ? 1 : -1;
    return can;
}

static void *pinned_get(struct cuda_ctx *c)
{
    if (!c->pinned) {
        CUDA_CHECK(cudaMallocHost(&c->pinned, CUDA_PINNED_BYTES));
        c->pinned_bytes = CUDA_PINNED_BYTES;
    }
    return c->pinned;
}

#define UP_SLOTS 32
#define UP_CHUNK ((size_t)16 << 20) /* one upload takes at most a quarter of the ring */

/* Waits for the uploads in flight up to and including ring slot q (stream order: older ones are done
 * when a younger one is) and drops them from the queue. */
static void up_retire(struct cuda_ctx *c, int q)
{
    int n = (q - c->up_first + UP_SLOTS) % UP_SLOTS + 1;
    CUDA_CHECK(cudaEventSynchronize(c->up[q].ev));
    c->up_first = (c->up_first + n) % UP_SLOTS;
    c->up_n -= n;
}

/* Every upload through the ring has been read: the pinned buffer may be used otherwise. */
static void up_drain(struct cuda_ctx *c)
{
    if (c->up_n) up_retire(c, (c->up_first + c->up_n - 1) % UP_SLOTS);
    c->up_head = 0;
}

/* Host-to-device copy that does not wait for the device: src is copied into a free region of the
 * pinned ring and a DMA from there is queued on the stream (after the ops already queued, before
 * the ones queued later). The caller may reuse src at once. A region is written again only after
 * the event recorded behind its DMA has passed, so nothing in flight is overwritten. */
static void upload(struct cuda_ctx *c, void *dst, const void *src, size_t bytes)
{
    char *ring = (char *)pinned_get(c);
    const size_t cap = c->pinned_bytes;
    for (size_t off = 0; off < bytes; off += UP_CHUNK) {
        const size_t len = bytes - off < UP_CHUNK ? bytes - off : UP_CHUNK;
        size_t start = c->up_head;
        if (start + len > cap) start = 0;
        /* the youngest in-flight region that overlaps [start, start + len), if any */
        int hit = -1;
        for (int i = 0; i < c->up_n; i++) {
            const int q = (c->up_first + i) % UP_SLOTS;
            if (c->up[q].off < start + len && start < c->up[q].off + c->up[q].len) hit = q;
        }
        if (hit >= 0) up_retire(c, hit);
        if (c->up_n == UP_SLOTS) up_retire(c, c->up_first);
        memcpy(ring + start, (const char *)src + off, len);
        CUDA_CHECK(cudaMemcpyAsync((char *)dst + off, ring + start, len, cudaMemcpyHostToDevice, c->stream));
        const int q = (c->up_first + c->up_n) % UP_SLOTS;
        c->up[q].off = start;
        c->up[q].len = len;
        CUDA_CHECK(cudaEventRecord(c->up[q].ev, c->stream));
        c->up_n++;
        c->up_head = start + len;
    }
}

extern "C" void cuda_memcpy(struct device dst_dev, void *dst, struct device src_dev, const void *src, size_t bytes)
{
    if (bytes == 0) return;
    if (dst_dev.kind == DEVICE_CUDA && src_dev.kind == DEVICE_CPU) {
        struct cuda_ctx *c = cuda_ctx_get(dst_dev.ordinal);
        cuda_check_not_capturing(c, "a host-to-device copy");
        /* through the pinned ring, without waiting for the device: weights at load time (the host's
         * read of the next chunk, page faults of the mmap included, overlaps the DMA of the previous
         * ones), image patches, token ids and positions (the host goes on queueing work) */
        upload(c, dst, src, bytes);
        return;
    }
    if (dst_dev.kind == DEVICE_CPU && src_dev.kind == DEVICE_CUDA) {
        struct cuda_ctx *c = cuda_ctx_get(src_dev.ordinal);
        cuda_check_not_capturing(c, "a device-to-host copy");
        CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
        CUDA_CHECK(cudaStreamSynchronize(c->stream));
        return;
    }
    CHECKF(dst_dev.kind == DEVICE_CUDA && src_dev.kind == DEVICE_CUDA, "cuda_memcpy between two host buffers");
    if (dst_dev.ordinal == src_dev.ordinal) {
        struct cuda_ctx *c = cuda_ctx_get(dst_dev.ordinal);
        CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream));
        return;
    }
    struct cuda_ctx *cs = cuda_ctx_get(src_dev.ordinal), *cd = cuda_ctx_get(dst_dev.ordinal);
    if (peer_enable(cs, dst_dev.ordinal)) {
        peer_enable(cd, src_dev.ordinal); /* symmetric where possible; the copy runs on the source */
        /* dst's queued readers finish before the copy; dst's later ops wait for the copy */
        CUDA_CHECK(cudaSetDevice(dst_dev.ordinal));
        CUDA_CHECK(cudaEventRecord(cd->ev, cd->stream));
        CUDA_CHECK(cudaSetDevice(src_dev.ordinal));
        CUDA_CHECK(cudaStreamWaitEvent(cs->stream, cd->ev, 0));
        CUDA_CHECK(cudaMemcpyPeerAsync(dst, dst_dev.ordinal, src, src_dev.ordinal, bytes, cs->stream));
        CUDA_CHECK(cudaEventRecord(cs->ev, cs->stream));
        CUDA_CHECK(cudaSetDevice(dst_dev.ordinal));
        CUDA_CHECK(cudaStreamWaitEvent(cd->stream, cs->ev, 0));
        return;
    }
    /* no peer access: staged through the source context's pinned buffer, chunk by chunk */
    char *stage = (char *)pinned_get(cs);
    up_drain(cs); /* no upload of the ring still reads it */
    for (size_t off = 0; off < bytes; off += cs->pinned_bytes) {
        size_t m = bytes - off < cs->pinned_bytes ? bytes - off : cs->pinned_bytes;
        CUDA_CHECK(cudaSetDevice(src_dev.ordinal));
        CUDA_CHECK(cudaMemcpyAsync(stage, (const char *)src + off, m, cudaMemcpyDeviceToHost, cs->stream));
        CUDA_CHECK(cudaStreamSynchronize(cs->stream));
        CUDA_CHECK(cudaSetDevice(dst_dev.ordinal));
        CUDA_CHECK(cudaMemcpyAsync((char *)dst + off, stage, m, cudaMemcpyHostToDevice, cd->stream));
        CUDA_CHECK(cudaStreamSynchronize(cd->stream)); /* the stage buffer is reused next round */
    }
}
