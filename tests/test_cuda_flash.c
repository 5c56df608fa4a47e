/* test_cuda_flash.c: the tensor-core flash attention (src/cuda/cuda_flash.cu) against cpu_attention,
 * the executable spec, on seeded random fp16 inputs at the model's shapes: causal GQA prefill
 * (n = T = 17 .. 513, H 32 / Hkv 8, hd 128), chunked prefill (n = 256 after 300 cached), vision
 * pieces (n = T = 1036 and 1001, 16 heads, hd 72), the resampler (96 queries over 1036 or 7 keys,
 * 32 heads, hd 128), the tiny model's dims (hd 32 and 16), GQA groups of 6 and 16, large scores.
 * Every flash case is run with both kernel variants (64-row and 128-row query tiles, called
 * directly so a silent fall-back to the general kernel cannot pass) and once through op_attention.
 * Cases the flash path must refuse (n < 16, f32, bf16, unsupported hd) check the return value 0 and
 * that op_attention still gives the right answer through the general kernel.
 * The reference is cpu_attention with an fp32 output, so the metrics are the kernel's whole error
 * including its fp16 output rounding: max-abs, rel = max-abs / max|ref|, NMSE. Tolerances:
 *  - flash: rel 2e-3, NMSE 1e-5 (P is rounded to fp16 for the P V product, ~2.4e-4 relative per
 *    weight, plus the output's own rounding, 2.4e-4 relative);
 *  - ATTN_EAGER_F16 on the flash path: rel 1e-2, NMSE 1e-4 (the CPU rounds scores and probabilities
 *    to fp16, the flash kernel keeps them in fp32: docs/CUDA_FLASH.md);
 * and always: every output finite, and the row after the output (a guard filled with fp16 NaN)
 * untouched, so writes past the last partial tile are caught.
 * `test_cuda_flash bench` times causal prefill (n = 512, 3000), ten vision pieces and ten resampler
 * calls, each tile size, against the general kernel (fed bf16, which the flash path declines).
 * Without a GPU every case is reported as skipped and the test passes. */
#include "backend.h"
#include "backend_impl.h"
#include "t.h"
#include "tensor.h"

#ifdef MINICPMV_CUDA

#include <cuda_runtime_api.h>

/* src/cuda/cuda_flash.cu and cuda_mem.cu (no header of their own: extern "C" there) */
int cuda_flash_attention(struct tensor *out, const struct tensor *q, const struct tensor *k, const struct tensor *v,
                         int64_t q_pos0, float scale, int flags);
int cuda_flash_attention_bm(struct tensor *out, const struct tensor *q, const struct tensor *k,
                            const struct tensor *v, int64_t q_pos0, float scale, int flags, int bm);
int cuda_flash_occupancy(int ordinal, int hd, int bm);
void cuda_flash_set_variant(int v); /* cuda_flash.cu: kernel variants for A/B runs */
void cuda_flash_set_smem_cap(size_t bytes);
size_t cuda_flash_config(int ordinal, int hd, int bm, int *nw, int *st);
int cuda_flash_attention_batch_bm(struct tensor *out, const struct tensor *q, const struct tensor *k,
                                  const struct tensor *v, int64_t n_seq, float scale, int flags, int bm);
void *cuda_stream_handle(int ordinal);

#define TOL_REL 2e-3
#define TOL_NMSE 1e-5
#define TOL_REL_EAGER 1e-2
#define TOL_NMSE_EAGER 1e-4

static uint64_t g_rng = 0x2545f4914f6cdd1dULL;

static float frand(void) /* uniform in [-1, 1) */
{
    g_rng = g_rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(g_rng >> 40) / (double)(1ULL << 23) - 1.0);
}

static struct tensor h_rand(enum dtype dt, int64_t d0, int64_t d1, int64_t d2, float amp)
{
    struct tensor t = tensor_make(dt, device_cpu(), NULL, 3, d0, d1, d2);
    const int64_t n = tensor_numel(&t);
    float *f = malloc((size_t)n * sizeof(float));
    t.data = malloc(tensor_nbytes(&t));
    CHECK(f && t.data);
    for (int64_t i = 0; i < n; i++) f[i] = amp * frand();
    convert_from_f32(t.data, dt, f, n);
    free(f);
    return t;
}

/* cudaMemset runs on the legacy stream, which does not wait for the backend's non-blocking stream
 * (nor it for cudaMemset): synchronise the device on both sides */
static void fill_nan(void *p, size_t bytes)
{
    dev_sync(device_cuda(0));
    CHECK(cudaMemset(p, 0xff, bytes) == cudaSuccess);
    dev_sync(device_cuda(0));
}

/* a device copy of a host tensor, with `guard` extra elements after it, all bytes 0xff first (an
 * fp16 NaN: an element the kernel should write and does not shows up as non-finite) */
static struct tensor d_copy(const struct tensor *h, int64_t guard)
{
    struct tensor d = *h;
    struct err e;
    const size_t bytes = tensor_nbytes(h) + (size_t)guard * dtype_size(h->dtype);
    d.dev = device_cuda(0);
    d.data = dev_alloc(d.dev, bytes, &e);
    CHECKF(d.data, "%s", e.msg);
    fill_nan(d.data, bytes);
    if (h->data) op_copy(&d, h);
    return d;
}

static struct tensor d_empty(enum dtype dt, int64_t d0, int64_t d1, int64_t d2, int64_t guard)
{
    struct tensor h = tensor_make(dt, device_cpu(), NULL, 3, d0, d1, d2);
    return d_copy(&h, guard);
}

static void t_free(struct tensor *t)
{
    if (t->dev.kind == DEVICE_CPU) free(t->data);
    else dev_free(t->dev, t->data);
    t->data = NULL;
}

/* Compares the device output (plus its guard of `guard` elements) with an f32 host reference. */
static void check_out(const char *cas, const struct tensor *got, int64_t guard, const struct tensor *ref,
                      double tol_rel, double tol_nmse)
{
    const int64_t n = tensor_numel(ref);
    const size_t es = dtype_size(got->dtype), bytes = (size_t)(n + guard) * es;
    unsigned char *raw = malloc(bytes);
    float *g = malloc((size_t)n * sizeof(float));
    CHECK(raw && g);
    dev_sync(device_cuda(0)); /* the kernel ran on the backend's stream, cudaMemcpy on the legacy one */
    CHECK(cudaMemcpy(raw, got->data, bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
    convert_to_f32(g, raw, got->dtype, n);
    const float *r = ref->data;
    double mx = 0, mref = 0, d2 = 0, r2 = 0;
    int64_t nonfinite = 0, guard_hit = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(g[i])) {
            nonfinite++;
            continue;
        }
        double d = (double)g[i] - (double)r[i];
        if (fabs(d) > mx) mx = fabs(d);
        if (fabs(r[i]) > mref) mref = fabs(r[i]);
        d2 += d * d;
        r2 += (double)r[i] * r[i];
    }
    for (size_t b = (size_t)n * es; b < bytes; b++) guard_hit += raw[b] != 0xff;
    const double rel = mref > 0 ? mx / mref : mx, nmse = r2 > 0 ? d2 / r2 : d2;
    const int ok = nonfinite == 0 && guard_hit == 0 && mref > 0 && rel <= tol_rel && nmse <= tol_nmse;
    printf("  %-58s max_abs %-9.3g rel %-9.3g nmse %-9.3g tol %.0e/%.0e %s", cas, mx, rel, nmse, tol_rel, tol_nmse,
           ok ? "ok" : "FAIL");
    if (nonfinite || guard_hit) printf(" (%lld non-finite, %lld guard bytes written)", (long long)nonfinite,
                                       (long long)guard_hit);
    printf("\n");
    T_ASSERTF(nonfinite == 0, "%s: %lld non-finite outputs", cas, (long long)nonfinite);
    T_ASSERTF(guard_hit == 0, "%s: %lld bytes written past the output", cas, (long long)guard_hit);
    T_ASSERTF(mref > 0, "%s: reference is all zeros", cas);
    T_ASSERTF(rel <= tol_rel && nmse <= tol_nmse, "%s: rel %g (tol %g), nmse %g (tol %g)", cas, rel, tol_rel, nmse,
              tol_nmse);
    free(raw);
    free(g);
}

struct acase {
    int64_t n, T, H, Hkv, hd;
    int flags;
    int64_t q_pos0;
    float score_std; /* standard deviation of q·k * scale */
    float scale;     /* 0: 1/sqrt(hd) */
    int flash;       /* 1: the flash path must take it; 0: it must decline */
    const char *what;
};

/* q, k (uniform, amplitudes chosen for the score std), v uniform in [-1, 1); the reference. */
static void make_case(const struct acase *c, enum dtype dt, struct tensor *q, struct tensor *k, struct tensor *v,
                      struct tensor *ref, float *scale)
{
    *scale = c->scale > 0 ? c->scale : 1.0f / sqrtf((float)c->hd);
    /* uniform(-a, a) has variance a^2/3: std(q·k) * scale = aq ak / 3 * sqrt(hd) * scale */
    const float ak = 1.5f, aq = 3.0f * c->score_std / (ak * sqrtf((float)c->hd) * *scale);
    *q = h_rand(dt, c->n, c->H, c->hd, aq);
    *k = h_rand(dt, c->T, c->Hkv, c->hd, ak);
    *v = h_rand(dt, c->T, c->Hkv, c->hd, 1.0f);
    *ref = tensor_make(DTYPE_F32, device_cpu(), NULL, 3, c->n, c->H, c->hd);
    ref->data = malloc(tensor_nbytes(ref));
    CHECK(ref->data);
    cpu_attention(ref, q, k, v, c->q_pos0, *scale, c->flags);
}

static void run_case(const struct acase *c)
{
    struct tensor q, k, v, ref;
    float scale;
    make_case(c, DTYPE_F16, &q, &k, &v, &ref, &scale);
    struct tensor dq = d_copy(&q, 0), dk = d_copy(&k, 0), dv = d_copy(&v, 0);
    const int64_t guard = c->H * c->hd; /* one row */
    const int eager = (c->flags & ATTN_EAGER_F16) != 0;
    const double tr = eager ? TOL_REL_EAGER : TOL_REL, tn = eager ? TOL_NMSE_EAGER : TOL_NMSE;
    char cas[128];
    const int bms[] = {64, 128, 0};
    for (int b = 0; b < 3; b++) {
        if (!c->flash && bms[b]) continue;
        struct tensor dout = d_empty(DTYPE_F16, c->n, c->H, c->hd, guard);
        const char *path;
        if (bms[b]) {
            int took = cuda_flash_attention_bm(&dout, &dq, &dk, &dv, c->q_pos0, scale, c->flags, bms[b]);
            T_ASSERTF(took == 1, "%s: the flash path declined (bm %d)", c->what, bms[b]);
            path = bms[b] == 64 ? "flash64" : "flash128";
        } else {
            int took = cuda_flash_attention(&dout, &dq, &dk, &dv, c->q_pos0, scale, c->flags);
            T_EQ_INT(took, c->flash);
            fill_nan(dout.data, tensor_nbytes(&dout) + (size_t)guard * 2);
            op_attention(&dout, &dq, &dk, &dv, c->q_pos0, scale, c->flags); /* the way the model calls it */
            path = c->flash ? "op/flash" : "op/general";
        }
        snprintf(cas, sizeof cas, "%-10s n%lld T%lld H%lld/%lld hd%lld %s", path, (long long)c->n, (long long)c->T,
                 (long long)c->H, (long long)c->Hkv, (long long)c->hd, c->what);
        check_out(cas, &dout, guard, &ref, tr, tn);
        t_free(&dout);
    }
    t_free(&q), t_free(&k), t_free(&v), t_free(&ref), t_free(&dq), t_free(&dk), t_free(&dv);
}

static void test_llm_prefill(void)
{
    static const struct acase cs[] = {
        {1, 1, 32, 8, 128, ATTN_CAUSAL, 0, 2.0f, 0, 0, "causal n=1: general kernel"},
        {15, 15, 32, 8, 128, ATTN_CAUSAL, 0, 2.0f, 0, 0, "causal n=15: general kernel"},
        {16, 16, 32, 8, 128, ATTN_CAUSAL, 0, 2.0f, 0, 1, "causal n=16"},
        {17, 17, 32, 8, 128, ATTN_CAUSAL, 0, 2.0f, 0, 1, "causal"},
        {64, 64, 32, 8, 128, ATTN_CAUSAL, 0, 2.0f, 0, 1, "causal one tile"},
        {100, 100, 32, 8, 128, ATTN_CAUSAL, 0, 2.0f, 0, 1, "causal partial tile"},
        {513, 513, 32, 8, 128, ATTN_CAUSAL, 0, 2.0f, 0, 1, "causal 513"},
        {256, 556, 32, 8, 128, ATTN_CAUSAL, 300, 2.0f, 0, 1, "chunked: 256 after 300 cached"},
        {17, 1040, 32, 8, 128, ATTN_CAUSAL, 1023, 2.0f, 0, 1, "chunked: 17 after 1023"},
        {300, 300, 32, 8, 128, ATTN_CAUSAL, 0, 8.0f, 0, 1, "large scores (std 8)"},
        {77, 77, 12, 2, 64, ATTN_CAUSAL, 0, 2.0f, 0, 1, "GQA 6 (2 heads per CTA)"},
        {50, 120, 16, 1, 64, ATTN_CAUSAL, 70, 2.0f, 0, 1, "GQA 16 after 70"},
        {40, 40, 8, 2, 32, ATTN_CAUSAL, 0, 2.0f, 0, 1, "tiny LLM hd 32"},
        {20, 65, 8, 2, 32, ATTN_CAUSAL, 45, 2.0f, 0, 1, "tiny LLM hd 32, 20 after 45"},
    };
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) run_case(&cs[i]);
}

static void test_vision_resampler(void)
{
    static const struct acase cs[] = {
        {1036, 1036, 16, 16, 72, 0, 0, 3.0f, 0, 1, "vision piece (eager off)"},
        {1001, 1001, 16, 16, 72, 0, 0, 3.0f, 0, 1, "vision piece, odd n"},
        {200, 200, 16, 16, 72, ATTN_EAGER_F16, 0, 3.0f, 0, 1, "vision, eager flag (fp32 here)"},
        {96, 1036, 32, 32, 128, 0, 0, 1.5f, 1.0f, 1, "resampler, scale 1"},
        {96, 7, 32, 32, 128, ATTN_EAGER_F16, 0, 1.5f, 1.0f, 1, "resampler T=7, eager flag"},
        {100, 100, 4, 4, 16, 0, 0, 2.0f, 0, 1, "tiny vision hd 16"},
        {64, 30, 4, 4, 128, ATTN_EAGER_F16, 0, 1.5f, 1.0f, 1, "tiny resampler hd 128"},
        {33, 33, 4, 4, 40, 0, 0, 2.0f, 0, 0, "hd 40: not served, general kernel"},
    };
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) run_case(&cs[i]);
}

/* The configurations of cards with less shared memory per block than this one, run here under a cap:
 * sm_75 (T4, RTX 20xx: 64 KiB opt-in) runs hd 128 with one K/V stage, sm_86 / sm_89 (99 KiB) run
 * bm 128 at hd 128 with 4 warps; below every configuration the general kernel answers. Expected
 * bytes: (16 * warps + 2 * stages * 64 keys) rows of (hd padded to 16, + 8) halves. */
static void test_smem_caps(void)
{
    struct { size_t cap; int hd, bm, nw, st; size_t bytes; } cfg[] = {
        {64 << 10, 128, 64, 4, 1, (64 + 128) * 136 * 2},  /* sm_75 LLM prefill / resampler */
        {64 << 10, 128, 128, 4, 1, (64 + 128) * 136 * 2},
        {64 << 10, 72, 64, 4, 2, (64 + 256) * 88 * 2},    /* sm_75 vision tower: 55 KiB, two stages */
        {64 << 10, 64, 128, 8, 2, (128 + 256) * 72 * 2},  /* 54 KiB: 8 warps fit */
        {99 << 10, 128, 128, 4, 2, (64 + 256) * 136 * 2}, /* sm_86 / sm_89 */
        {99 << 10, 72, 128, 8, 2, (128 + 256) * 88 * 2},
        {40 << 10, 128, 64, 4, 0, 0},                      /* nothing fits: general kernel */
    };
    for (size_t i = 0; i < sizeof cfg / sizeof cfg[0]; i++) {
        int nw = -1, st = -1;
        cuda_flash_set_smem_cap(cfg[i].cap);
        size_t b = cuda_flash_config(0, cfg[i].hd, cfg[i].bm, &nw, &st);
        T_ASSERTF(b == cfg[i].bytes && (!b || (nw == cfg[i].nw && st == cfg[i].st)),
                  "cap %zu hd %d bm %d: got %zu bytes, %d warps, %d stages; want %zu, %d, %d", cfg[i].cap, cfg[i].hd,
                  cfg[i].bm, b, nw, st, cfg[i].bytes, cfg[i].nw, cfg[i].st);
    }
    static const struct acase cs[] = {
        {16, 16, 32, 8, 128, ATTN_CAUSAL, 0, 2.0f, 0, 1, "cap: causal n=16"},
        {100, 100, 32, 8, 128, ATTN_CAUSAL, 0, 2.0f, 0, 1, "cap: causal partial tile"},
        {513, 513, 32, 8, 128, ATTN_CAUSAL, 0, 2.0f, 0, 1, "cap: causal 513"},
        {17, 1040, 32, 8, 128, ATTN_CAUSAL, 1023, 2.0f, 0, 1, "cap: chunked 17 after 1023"},
        {96, 1036, 32, 32, 128, 0, 0, 1.5f, 1.0f, 1, "cap: resampler, scale 1"},
        {1001, 1001, 16, 16, 72, 0, 0, 3.0f, 0, 1, "cap: vision piece, odd n"},
    };
    const size_t caps[] = {64 << 10, 99 << 10};
    for (int c = 0; c < 2; c++) {
        cuda_flash_set_smem_cap(caps[c]);
        for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) run_case(&cs[i]);
    }
    /* under 40 KiB no hd 128 configuration fits: the flash path declines and op_attention still answers */
    cuda_flash_set_smem_cap(40 << 10);
    static const struct acase none = {100, 100, 32, 8, 128, ATTN_CAUSAL, 0, 2.0f, 0, 0, "cap 40 KiB: general kernel"};
    run_case(&none);
    cuda_flash_set_smem_cap(0);
}

/* f32 and bf16 must go to the general kernel (the fp32 parity tests rely on it) */
static void test_declines_dtypes(void)
{
    static const enum dtype dts[] = {DTYPE_F32, DTYPE_BF16};
    const struct acase c = {64, 64, 8, 2, 128, ATTN_CAUSAL, 0, 2.0f, 0, 0, "dtype"};
    for (size_t i = 0; i < 2; i++) {
        struct tensor q, k, v, ref;
        float scale;
        make_case(&c, dts[i], &q, &k, &v, &ref, &scale);
        struct tensor dq = d_copy(&q, 0), dk = d_copy(&k, 0), dv = d_copy(&v, 0);
        struct tensor dout = d_empty(dts[i], c.n, c.H, c.hd, c.H * c.hd);
        T_EQ_INT(cuda_flash_attention(&dout, &dq, &dk, &dv, 0, scale, c.flags), 0);
        T_EQ_INT(cuda_flash_attention_bm(&dout, &dq, &dk, &dv, 0, scale, c.flags, 128), 0);
        op_attention(&dout, &dq, &dk, &dv, 0, scale, c.flags);
        char cas[96];
        snprintf(cas, sizeof cas, "op/general n64 T64 H8/2 hd128 causal %s", dtype_name(dts[i]));
        check_out(cas, &dout, c.H * c.hd, &ref, dts[i] == DTYPE_F32 ? 1e-5 : 1e-2, dts[i] == DTYPE_F32 ? 1e-9 : 1e-4);
        t_free(&q), t_free(&k), t_free(&v), t_free(&ref), t_free(&dq), t_free(&dk), t_free(&dv), t_free(&dout);
    }
}

/* ---- op_attention_batch: n_seq sequences in one launch (the vision tower's pieces) ---- */

struct bcase {
    int64_t S, N, T, H, Hkv, hd;
    int flags;
    enum dtype dt;
    int flash; /* 1: the batched flash path must take it; 0: it must decline (loop of cuda_attention) */
    int ref;   /* also check against cpu_attention (off for the large shapes: slow on the CPU) */
    const char *what;
};

static int d_equal(const struct tensor *a, const struct tensor *b, size_t bytes)
{
    unsigned char *x = malloc(bytes), *y = malloc(bytes);
    CHECK(x && y);
    dev_sync(device_cuda(0));
    CHECK(cudaMemcpy(x, a->data, bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
    CHECK(cudaMemcpy(y, b->data, bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
    int eq = memcmp(x, y, bytes) == 0;
    free(x);
    free(y);
    return eq;
}

/* The batch (each flash tile size, and op_attention_batch) against the loop of per-sequence calls
 * of the same path: bit-identical, guard row untouched; against cpu_attention within the flash
 * tolerances when c->ref. */
static void run_batch_case(const struct bcase *c)
{
    const int64_t R = c->S * c->N, RK = c->S * c->T, guard = c->H * c->hd;
    struct tensor q = h_rand(c->dt, R, c->H, c->hd, 2.0f), k = h_rand(c->dt, RK, c->Hkv, c->hd, 1.5f);
    struct tensor v = h_rand(c->dt, RK, c->Hkv, c->hd, 1.0f);
    const float scale = 1.0f / sqrtf((float)c->hd);
    struct tensor ref = {0};
    if (c->ref) {
        ref = tensor_make(DTYPE_F32, device_cpu(), NULL, 3, R, c->H, c->hd);
        ref.data = malloc(tensor_nbytes(&ref));
        CHECK(ref.data);
        for (int64_t s = 0; s < c->S; s++) {
            struct tensor os = tensor_rows_view(&ref, s * c->N, c->N), qs = tensor_rows_view(&q, s * c->N, c->N);
            struct tensor ks = tensor_rows_view(&k, s * c->T, c->T), vs = tensor_rows_view(&v, s * c->T, c->T);
            cpu_attention(&os, &qs, &ks, &vs, 0, scale, c->flags);
        }
    }
    struct tensor dq = d_copy(&q, 0), dk = d_copy(&k, 0), dv = d_copy(&v, 0);
    const int eager = (c->flags & ATTN_EAGER_F16) != 0;
    const double tr = c->dt == DTYPE_F32 ? 1e-5 : eager ? TOL_REL_EAGER : TOL_REL;
    const double tn = c->dt == DTYPE_F32 ? 1e-9 : eager ? TOL_NMSE_EAGER : TOL_NMSE;
    const int bms[] = {64, 128, 0};
    for (int b = 0; b < 3; b++) {
        if (!c->flash && bms[b]) continue;
        struct tensor dl = d_empty(c->dt, R, c->H, c->hd, guard), db = d_empty(c->dt, R, c->H, c->hd, guard);
        for (int64_t s = 0; s < c->S; s++) { /* the per-sequence loop */
            struct tensor os = tensor_rows_view(&dl, s * c->N, c->N), qs = tensor_rows_view(&dq, s * c->N, c->N);
            struct tensor ks = tensor_rows_view(&dk, s * c->T, c->T), vs = tensor_rows_view(&dv, s * c->T, c->T);
            if (bms[b]) CHECK(cuda_flash_attention_bm(&os, &qs, &ks, &vs, 0, scale, c->flags, bms[b]) == 1);
            else op_attention(&os, &qs, &ks, &vs, 0, scale, c->flags);
        }
        const char *path;
        if (bms[b]) {
            int took = cuda_flash_attention_batch_bm(&db, &dq, &dk, &dv, c->S, scale, c->flags, bms[b]);
            T_ASSERTF(took == 1, "%s: the batched flash path declined (bm %d)", c->what, bms[b]);
            path = bms[b] == 64 ? "batch64" : "batch128";
        } else {
            T_EQ_INT(cuda_flash_attention_batch_bm(&db, &dq, &dk, &dv, c->S, scale, c->flags, 0), c->flash);
            fill_nan(db.data, tensor_nbytes(&db) + (size_t)guard * dtype_size(c->dt));
            op_attention_batch(&db, &dq, &dk, &dv, c->S, scale, c->flags);
            path = c->flash ? "op_batch/flash" : "op_batch/loop";
        }
        char cas[128];
        snprintf(cas, sizeof cas, "%-14s %lldx n%lld T%lld H%lld/%lld hd%lld %s %s", path, (long long)c->S,
                 (long long)c->N, (long long)c->T, (long long)c->H, (long long)c->Hkv, (long long)c->hd,
                 dtype_name(c->dt), c->what);
        /* the guard row too: fill_nan'd on both sides, neither may write it */
        const int same = d_equal(&db, &dl, tensor_nbytes(&db) + (size_t)guard * dtype_size(c->dt));
        printf("  %-58s %s\n", cas, same ? "bit-identical to the per-sequence loop" : "DIFFERS from the loop");
        T_ASSERTF(same, "%s: batch differs from the per-sequence calls", cas);
        if (c->ref) check_out(cas, &db, guard, &ref, tr, tn);
        t_free(&dl), t_free(&db);
    }
    t_free(&q), t_free(&k), t_free(&v), t_free(&dq), t_free(&dk), t_free(&dv);
    if (c->ref) t_free(&ref);
}

static void test_attention_batch(void)
{
    static const struct bcase cs[] = {
        {10, 1036, 1036, 16, 16, 72, ATTN_EAGER_F16, DTYPE_F16, 1, 0, "vision 1344x1344 (10 pieces)"},
        {3, 1001, 1001, 16, 16, 72, ATTN_EAGER_F16, DTYPE_F16, 1, 1, "vision, odd n"},
        {4, 100, 100, 16, 16, 72, 0, DTYPE_F16, 1, 1, "vision, small pieces"},
        {3, 37, 37, 4, 4, 16, ATTN_EAGER_F16, DTYPE_F16, 1, 1, "tiny vision hd 16"},
        {2, 40, 70, 8, 2, 32, 0, DTYPE_F16, 1, 1, "GQA 4, T != N"},
        {3, 50, 50, 4, 4, 40, 0, DTYPE_F16, 0, 1, "hd 40: per-sequence general kernel"},
        {3, 9, 9, 4, 4, 72, ATTN_EAGER_F16, DTYPE_F16, 0, 1, "n < 16: per-sequence general kernel"},
        {2, 64, 64, 4, 4, 72, ATTN_EAGER_F16, DTYPE_F32, 0, 1, "f32: per-sequence general kernel"},
    };
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) run_batch_case(&cs[i]);
}

/* ---- benchmark ---- */

struct bench_set {
    int npieces;
    struct tensor *q, *k, *v, *out;
    int64_t q_pos0;
    float scale;
    int flags, bm; /* bm -1: op_attention (general kernel when the tensors are bf16) */
    int batch;     /* 1: q[0], k[0], v[0], out[0] hold all npieces sequences: one batched launch */
};

static void bench_call(const struct bench_set *b)
{
    if (b->batch) {
        if (b->bm < 0) op_attention_batch(&b->out[0], &b->q[0], &b->k[0], &b->v[0], b->npieces, b->scale, b->flags);
        else CHECK(cuda_flash_attention_batch_bm(&b->out[0], &b->q[0], &b->k[0], &b->v[0], b->npieces, b->scale,
                                                 b->flags, b->bm) == 1);
        return;
    }
    for (int i = 0; i < b->npieces; i++) {
        if (b->bm < 0) op_attention(&b->out[i], &b->q[i], &b->k[i], &b->v[i], b->q_pos0, b->scale, b->flags);
        else CHECK(cuda_flash_attention_bm(&b->out[i], &b->q[i], &b->k[i], &b->v[i], b->q_pos0, b->scale, b->flags,
                                           b->bm) == 1);
    }
}

static double bench_ms(const struct bench_set *b, int reps)
{
    cudaStream_t s = (cudaStream_t)cuda_stream_handle(0);
    cudaEvent_t e0, e1;
    CHECK(cudaEventCreate(&e0) == cudaSuccess && cudaEventCreate(&e1) == cudaSuccess);
    bench_call(b); /* warm-up */
    CHECK(cudaEventRecord(e0, s) == cudaSuccess);
    for (int r = 0; r < reps; r++) bench_call(b);
    CHECK(cudaEventRecord(e1, s) == cudaSuccess);
    CHECK(cudaEventSynchronize(e1) == cudaSuccess);
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, e0, e1) == cudaSuccess);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return (double)ms / reps;
}

/* one shape: flash auto / 64 / 128 in fp16, then the general kernel on bf16 copies */
static void bench_shape(const char *name, int npieces, int64_t n, int64_t T, int64_t H, int64_t Hkv, int64_t hd,
                        int flags, float scale, double flops)
{
    struct tensor q[16], k[16], v[16], out[16], qb[16], kb[16], vb[16], outb[16];
    CHECK(npieces <= 16);
    for (int i = 0; i < npieces; i++) {
        struct tensor hq = h_rand(DTYPE_F16, n, H, hd, 1.5f), hk = h_rand(DTYPE_F16, T, Hkv, hd, 1.5f);
        struct tensor hv = h_rand(DTYPE_F16, T, Hkv, hd, 1.0f);
        q[i] = d_copy(&hq, 0), k[i] = d_copy(&hk, 0), v[i] = d_copy(&hv, 0);
        out[i] = d_empty(DTYPE_F16, n, H, hd, 0);
        qb[i] = d_empty(DTYPE_BF16, n, H, hd, 0), kb[i] = d_empty(DTYPE_BF16, T, Hkv, hd, 0);
        vb[i] = d_empty(DTYPE_BF16, T, Hkv, hd, 0), outb[i] = d_empty(DTYPE_BF16, n, H, hd, 0);
        op_copy(&qb[i], &q[i]), op_copy(&kb[i], &k[i]), op_copy(&vb[i], &v[i]);
        t_free(&hq), t_free(&hk), t_free(&hv);
    }
    const int64_t q_pos0 = (flags & ATTN_CAUSAL) ? T - n : 0;
    static const int bms[] = {0, 64, 128};
    static const char *bmn[] = {"flash auto", "flash bm=64", "flash bm=128"};
    for (int b = 0; b < 3; b++) {
        struct bench_set s = {npieces, q, k, v, out, q_pos0, scale, flags, bms[b], 0};
        double ms = bench_ms(&s, 20);
        printf("  %-34s %-13s %9.3f ms  %7.1f TFLOP/s\n", name, bmn[b], ms, flops / (ms * 1e-3) / 1e12);
    }
    struct bench_set s = {npieces, qb, kb, vb, outb, q_pos0, scale, flags, -1, 0};
    double ms = bench_ms(&s, n * T > 1000000 ? 2 : 10);
    printf("  %-34s %-13s %9.3f ms  %7.1f TFLOP/s  (bf16 inputs)\n", name, "general", ms, flops / (ms * 1e-3) / 1e12);
    for (int i = 0; i < npieces; i++) {
        t_free(&q[i]), t_free(&k[i]), t_free(&v[i]), t_free(&out[i]);
        t_free(&qb[i]), t_free(&kb[i]), t_free(&vb[i]), t_free(&outb[i]);
    }
}

/* all npieces sequences stacked in one tensor, one op_attention_batch launch (flash auto / 64 / 128) */
static void bench_batch(const char *name, int npieces, int64_t n, int64_t H, int64_t hd, int flags, float scale,
                        double flops)
{
    struct tensor hq = h_rand(DTYPE_F16, npieces * n, H, hd, 1.5f), hk = h_rand(DTYPE_F16, npieces * n, H, hd, 1.5f);
    struct tensor hv = h_rand(DTYPE_F16, npieces * n, H, hd, 1.0f);
    struct tensor q = d_copy(&hq, 0), k = d_copy(&hk, 0), v = d_copy(&hv, 0);
    struct tensor out = d_empty(DTYPE_F16, npieces * n, H, hd, 0);
    static const int bms[] = {0, 64, 128};
    static const char *bmn[] = {"batch auto", "batch bm=64", "batch bm=128"};
    for (int b = 0; b < 3; b++) {
        struct bench_set s = {npieces, &q, &k, &v, &out, 0, scale, flags, bms[b], 1};
        double ms = bench_ms(&s, 20);
        printf("  %-34s %-13s %9.3f ms  %7.1f TFLOP/s\n", name, bmn[b], ms, flops / (ms * 1e-3) / 1e12);
    }
    t_free(&hq), t_free(&hk), t_free(&hv), t_free(&q), t_free(&k), t_free(&v), t_free(&out);
}

static void bench(void)
{
    printf("flash attention: CTAs per SM (hd, bm): (128,64) %d  (128,128) %d  (72,64) %d  (72,128) %d  (32,64) %d\n",
           cuda_flash_occupancy(0, 128, 64), cuda_flash_occupancy(0, 128, 128), cuda_flash_occupancy(0, 72, 64),
           cuda_flash_occupancy(0, 72, 128), cuda_flash_occupancy(0, 32, 64));
    printf("FLOPs: causal 4*n*T*hd*H/2 (n = T), bidirectional 4*n*T*hd*H\n");
    static const int64_t ns[] = {512, 3000};
    for (size_t i = 0; i < 2; i++) {
        const int64_t n = ns[i];
        char name[64];
        snprintf(name, sizeof name, "causal n=T=%lld H32/8 hd128", (long long)n);
        bench_shape(name, 1, n, n, 32, 8, 128, ATTN_CAUSAL, 0.08838834764831845f, 4.0 * n * n * 128 * 32 / 2);
    }
    bench_shape("causal 512 after 2488 H32/8 hd128", 1, 512, 3000, 32, 8, 128, ATTN_CAUSAL, 0.08838834764831845f,
                4.0 * 512 * (2488 + 256) * 128 * 32);
    bench_shape("vision 10 x n=T=1036 H16 hd72", 10, 1036, 1036, 16, 16, 72, ATTN_EAGER_F16, 0.11785113019775792f,
                10 * 4.0 * 1036 * 1036 * 72 * 16);
    bench_batch("vision 10 x n=T=1036 H16 hd72", 10, 1036, 16, 72, ATTN_EAGER_F16, 0.11785113019775792f,
                10 * 4.0 * 1036 * 1036 * 72 * 16);
    static const char *vn[] = {"", "vision 10x1024 hd72, variant 1 (padded hd)", "vision 10x1024 hd72, variant 2 (4 CTAs/SM)"};
    for (int v = 0; v < 3; v++) {
        cuda_flash_set_variant(v);
        bench_batch(v ? vn[v] : "vision 10x1024 hd72, variant 0 (default)", 10, 1024, 16, 72, ATTN_EAGER_F16,
                    0.11785113019775792f, 10 * 4.0 * 1024 * 1024 * 72 * 16);
    }
    cuda_flash_set_variant(0);
    bench_batch("vision 1 x n=T=1036 H16 hd72", 1, 1036, 16, 72, ATTN_EAGER_F16, 0.11785113019775792f,
                4.0 * 1036 * 1036 * 72 * 16);
    bench_shape("resampler 10 x n96 T1036 H32 hd128", 10, 96, 1036, 32, 32, 128, ATTN_EAGER_F16, 1.0f,
                10 * 4.0 * 96 * 1036 * 128 * 32);
}

int main(int argc, char **argv)
{
    struct backend_info bi;
    backend_query(&bi);
    if (bi.n_gpus == 0) {
        const char *why = "no CUDA device";
        (void)t_cur_fail;
        if (argc > 1 && strcmp(argv[1], "bench") == 0) fprintf(stderr, "bench: %s\n", why);
        T_SKIP(test_llm_prefill, why);
        T_SKIP(test_vision_resampler, why);
        T_SKIP(test_declines_dtypes, why);
        T_SKIP(test_attention_batch, why);
        T_SKIP(test_smem_caps, why);
        return t_main_end("test_cuda_flash");
    }
    if (argc > 1 && strcmp(argv[1], "bench") == 0) {
        bench();
        return 0;
    }
    if (argc > 2 && strcmp(argv[1], "variant") == 0) cuda_flash_set_variant(atoi(argv[2])); /* A/B runs */
    T_RUN(test_llm_prefill);
    T_RUN(test_vision_resampler);
    T_RUN(test_declines_dtypes);
    T_RUN(test_attention_batch);
    T_RUN(test_smem_caps);
    return t_main_end("test_cuda_flash");
}

#else /* built without CUDA */

int main(void)
{
    (void)t_cur_fail;
    T_SKIP(test_cuda_flash, "built without CUDA (make CUDA=1)");
    return t_main_end("test_cuda_flash");
}

#endif
