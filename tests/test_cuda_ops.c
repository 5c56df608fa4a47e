/* test_cuda_ops.c: every CUDA op against its CPU twin (backend_cpu.c, the executable spec) on
 * seeded random inputs and awkward shapes (one token, odd widths, hd 72, 4096-key contexts, GQA).
 * Each case prints max-abs error, relative error (max-abs / max |ref|) and NMSE, and must stay
 * under a tolerance for the output dtype:
 *  - exact (0) for pure data movement and single fp32 operations done the same way on both sides
 *    (convert, embed, add, scale, argmax);
 *  - F32 outputs 1e-5 relative: only the summation order (and device expf/tanhf/cosf, <= 2 ulp)
 *    differ from the CPU;
 *  - F16 outputs 4e-3 relative (4 fp16 ulp at the largest value): an fp32 difference of one ulp can
 *    flip a rounding to fp16, and ops that round intermediates (rmsnorm, rope, eager attention) can
 *    carry such a flip through one more rounding;
 *  - BF16 outputs 3e-2 (8-bit mantissa: the same few ulp);
 *  - 1e-4 for an fp16 GEMM written in fp32: cuBLAS runs it on tensor cores, whose fp32
 *    accumulation is not IEEE round-to-nearest at every addition.
 * Without a GPU (CI, the build machine) every case is reported as skipped and the test passes.
 * `test_cuda_ops bench` times the decode GEMV at the real shapes and decode attention instead. */
#include "backend.h"
#include "backend_impl.h"
#include "t.h"
#include "tensor.h"

#ifdef MINICPMV_CUDA

#include <cuda_runtime_api.h>

void *cuda_stream_handle(int ordinal); /* src/cuda/cuda_mem.cu: for event timing */

#define TOL_EXACT 0.0
#define TOL_F32 1e-5
#define TOL_F16 4e-3
#define TOL_BF16 3e-2
#define TOL_TC 1e-4 /* fp16 tensor cores: fp32 accumulation, but not rounded to nearest at every add */

static uint64_t g_rng = 0x9e3779b97f4a7c15ULL;

static float frand(void) /* uniform in [-1, 1) */
{
    g_rng = g_rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(g_rng >> 40) / (double)(1ULL << 23) - 1.0);
}

static double tol_for(enum dtype t) { return t == DTYPE_F32 ? TOL_F32 : t == DTYPE_F16 ? TOL_F16 : TOL_BF16; }

static struct tensor h_new(enum dtype dt, int ndim, int64_t d0, int64_t d1, int64_t d2)
{
    struct tensor t = ndim == 1 ? tensor_make(dt, device_cpu(), NULL, 1, d0)
                      : ndim == 2 ? tensor_make(dt, device_cpu(), NULL, 2, d0, d1)
                                  : tensor_make(dt, device_cpu(), NULL, 3, d0, d1, d2);
    struct err e;
    t.data = dev_alloc(t.dev, tensor_nbytes(&t), &e);
    CHECK(t.data);
    return t;
}

/* random values amp * U[-1, 1) + off, rounded to the tensor's dtype */
static void h_fill(struct tensor *t, float amp, float off)
{
    int64_t n = tensor_numel(t);
    float *f = malloc((size_t)n * sizeof(float));
    CHECK(f);
    for (int64_t i = 0; i < n; i++) f[i] = amp * frand() + off;
    convert_from_f32(t->data, t->dtype, f, n);
    free(f);
}

static struct tensor h_rand(enum dtype dt, int ndim, int64_t d0, int64_t d1, int64_t d2, float amp)
{
    struct tensor t = h_new(dt, ndim, d0, d1, d2);
    h_fill(&t, amp, 0.0f);
    return t;
}

static struct tensor d_from(const struct tensor *h)
{
    struct tensor d = *h;
    struct err e;
    d.dev = device_cuda(0);
    d.data = dev_alloc(d.dev, tensor_nbytes(h), &e);
    CHECKF(d.data, "%s", e.msg);
    op_copy(&d, h);
    return d;
}

static struct tensor d_new(enum dtype dt, int ndim, int64_t d0, int64_t d1, int64_t d2)
{
    struct tensor t = h_new(dt, ndim, d0, d1, d2);
    h_fill(&t, 1.0f, 0.0f); /* garbage that is not zero: an op that writes nothing fails */
    struct tensor d = d_from(&t);
    dev_free(t.dev, t.data);
    return d;
}

static void t_free(struct tensor *t)
{
    dev_free(t->dev, t->data);
    t->data = NULL;
}

/* Compares a device result with a host reference; prints the metrics; fails above tol. */
static void check_close(const char *op, const char *cas, const struct tensor *got, const struct tensor *ref, double tol)
{
    int64_t n = tensor_numel(ref);
    T_ASSERT(tensor_numel(got) == n);
    struct tensor h = *got;
    h.dev = device_cpu();
    struct err e;
    h.data = dev_alloc(h.dev, tensor_nbytes(got), &e);
    CHECK(h.data);
    op_copy(&h, got);
    float *g = malloc((size_t)n * sizeof(float)), *r = malloc((size_t)n * sizeof(float));
    CHECK(g && r);
    convert_to_f32(g, h.data, h.dtype, n);
    convert_to_f32(r, ref->data, ref->dtype, n);
    double mx = 0, mref = 0, d2 = 0, r2 = 0;
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)g[i] - (double)r[i];
        if (!isfinite(g[i]) != !isfinite(r[i])) bad = 1;
        if (fabs(d) > mx) mx = fabs(d);
        if (fabs(r[i]) > mref) mref = fabs(r[i]);
        d2 += d * d;
        r2 += (double)r[i] * r[i];
    }
    double rel = mref > 0 ? mx / mref : mx, nmse = r2 > 0 ? d2 / r2 : d2;
    printf("  %-10s %-52s max_abs %-10.3g rel %-10.3g nmse %-10.3g tol %.0e %s\n", op, cas, mx, rel, nmse, tol,
           !bad && rel <= tol ? "ok" : "FAIL");
    T_ASSERTF(!bad && rel <= tol, "%s %s: rel %g > tol %g", op, cas, rel, tol);
    T_ASSERTF(mref > 0, "%s %s: reference is all zeros", op, cas);
    free(g);
    free(r);
    dev_free(h.dev, h.data);
}

/* ---- ops ---- */

static void test_convert(void)
{
    static const enum dtype pairs[][2] = {{DTYPE_F32, DTYPE_F16}, {DTYPE_F16, DTYPE_F32},   {DTYPE_F32, DTYPE_BF16},
                                          {DTYPE_BF16, DTYPE_F32}, {DTYPE_F16, DTYPE_BF16}, {DTYPE_BF16, DTYPE_F16},
                                          {DTYPE_F16, DTYPE_F16}};
    for (size_t p = 0; p < sizeof pairs / sizeof pairs[0]; p++) {
        const int64_t n = 4099 * 7;
        struct tensor src = h_rand(pairs[p][0], 1, n, 0, 0, 3.0f), ref = h_new(pairs[p][1], 1, n, 0, 0);
        op_copy(&ref, &src);
        struct tensor ds = d_from(&src), dd = d_new(pairs[p][1], 1, n, 0, 0);
        op_copy(&dd, &ds);
        char cas[96];
        snprintf(cas, sizeof cas, "%s->%s n=%lld", dtype_name(pairs[p][0]), dtype_name(pairs[p][1]), (long long)n);
        check_close("convert", cas, &dd, &ref, TOL_EXACT);
        t_free(&src), t_free(&ref), t_free(&ds), t_free(&dd);
    }
}

static void test_embed(void)
{
    static const struct { int64_t vocab, d, n; enum dtype tt, yt; } cs[] = {
        {1000, 33, 7, DTYPE_F16, DTYPE_F16}, {517, 4096, 1, DTYPE_F16, DTYPE_F32}, {300, 72, 9, DTYPE_F32, DTYPE_BF16}};
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        struct tensor table = h_rand(cs[c].tt, 2, cs[c].vocab, cs[c].d, 0, 2.0f);
        struct tensor ids = h_new(DTYPE_I32, 1, cs[c].n, 0, 0), ref = h_new(cs[c].yt, 2, cs[c].n, cs[c].d, 0);
        for (int64_t i = 0; i < cs[c].n; i++) {
            frand();
            ((int32_t *)ids.data)[i] = i == 0 ? (int32_t)(cs[c].vocab - 1) : (int32_t)((g_rng >> 33) % (uint64_t)cs[c].vocab);
        }
        op_embed(&ref, &table, &ids);
        struct tensor dt = d_from(&table), di = d_from(&ids), dy = d_new(cs[c].yt, 2, cs[c].n, cs[c].d, 0);
        op_embed(&dy, &dt, &di);
        char cas[96];
        snprintf(cas, sizeof cas, "table[%lld,%lld] %s n=%lld -> %s", (long long)cs[c].vocab, (long long)cs[c].d,
                 dtype_name(cs[c].tt), (long long)cs[c].n, dtype_name(cs[c].yt));
        check_close("embed", cas, &dy, &ref, TOL_EXACT);
        t_free(&table), t_free(&ids), t_free(&ref), t_free(&dt), t_free(&di), t_free(&dy);
    }
}

static void test_matmul(void)
{
    static const struct { int64_t n, k, o; enum dtype xt, wt, yt; int bias; double tol; const char *what; } cs[] = {
        {1, 4096, 1024, DTYPE_F16, DTYPE_F16, DTYPE_F16, 0, TOL_F16, "gemv vec, decode k_proj"},
        {3, 4096, 4100, DTYPE_F16, DTYPE_F16, DTYPE_F16, 1, TOL_F16, "gemv vec, bias"},
        {8, 1152, 4304, DTYPE_F32, DTYPE_F16, DTYPE_F32, 1, TOL_F32, "gemv vec, x f32 w f16"},
        {5, 4096, 515, DTYPE_F32, DTYPE_F32, DTYPE_F32, 0, TOL_F32, "gemv vec f32"},
        {2, 256, 300, DTYPE_BF16, DTYPE_BF16, DTYPE_BF16, 1, TOL_BF16, "gemv vec bf16"},
        {1, 33, 7, DTYPE_F32, DTYPE_F32, DTYPE_F32, 1, TOL_F32, "gemv scalar, odd widths"},
        {7, 37, 65, DTYPE_F16, DTYPE_F16, DTYPE_F16, 0, TOL_F16, "gemv scalar, k % 8 != 0"},
        {33, 4096, 1024, DTYPE_F16, DTYPE_F16, DTYPE_F16, 1, TOL_F16, "gemm f16, bias"},
        {64, 1152, 4304, DTYPE_F16, DTYPE_F16, DTYPE_F32, 0, TOL_TC, "gemm f16 -> f32 direct"},
        {17, 33, 7, DTYPE_F32, DTYPE_F32, DTYPE_F32, 1, TOL_F32, "sgemm odd, no TF32"},
        {100, 512, 513, DTYPE_F32, DTYPE_F32, DTYPE_F32, 0, TOL_F32, "sgemm, no TF32"},
        {40, 256, 129, DTYPE_F32, DTYPE_F16, DTYPE_F16, 0, TOL_F16, "gemm x f32 -> f16 (x rounded)"},
        {9, 96, 50, DTYPE_BF16, DTYPE_BF16, DTYPE_F16, 1, TOL_F16, "gemm bf16 -> f16 via f32"},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        struct tensor x = h_rand(cs[c].xt, 2, cs[c].n, cs[c].k, 0, 1.0f), w = h_rand(cs[c].wt, 2, cs[c].o, cs[c].k, 0, 1.0f);
        struct tensor b = h_rand(cs[c].yt == DTYPE_F32 ? DTYPE_F32 : DTYPE_F16, 1, cs[c].o, 0, 0, 4.0f);
        struct tensor ref = h_new(cs[c].yt, 2, cs[c].n, cs[c].o, 0);
        op_matmul(&ref, &x, &w, cs[c].bias ? &b : NULL);
        struct tensor dx = d_from(&x), dw = d_from(&w), db = d_from(&b), dy = d_new(cs[c].yt, 2, cs[c].n, cs[c].o, 0);
        op_matmul(&dy, &dx, &dw, cs[c].bias ? &db : NULL);
        char cas[96];
        snprintf(cas, sizeof cas, "n%lld k%lld o%lld %s·%s->%s%s (%s)", (long long)cs[c].n, (long long)cs[c].k,
                 (long long)cs[c].o, dtype_name(cs[c].xt), dtype_name(cs[c].wt), dtype_name(cs[c].yt),
                 cs[c].bias ? "+b" : "", cs[c].what);
        check_close("matmul", cas, &dy, &ref, cs[c].tol);
        t_free(&x), t_free(&w), t_free(&b), t_free(&ref), t_free(&dx), t_free(&dw), t_free(&db), t_free(&dy);
    }
}

static void test_norms(void)
{
    static const struct { int64_t rows, d; enum dtype xt, wt, yt; int alias, layer; float eps; } cs[] = {
        {1, 4096, DTYPE_F16, DTYPE_F16, DTYPE_F16, 0, 0, 1e-5f}, {7, 33, DTYPE_F32, DTYPE_F32, DTYPE_F32, 0, 0, 1e-5f},
        {5, 4096, DTYPE_F16, DTYPE_F16, DTYPE_F16, 1, 0, 1e-5f}, {3, 1152, DTYPE_F32, DTYPE_F16, DTYPE_F16, 0, 0, 1e-6f},
        {7, 1152, DTYPE_F16, DTYPE_F32, DTYPE_F16, 0, 1, 1e-6f}, {1, 33, DTYPE_F32, DTYPE_F32, DTYPE_F32, 0, 1, 1e-6f},
        {4, 4096, DTYPE_F16, DTYPE_F16, DTYPE_F16, 1, 1, 1e-6f}, {2, 1001, DTYPE_BF16, DTYPE_BF16, DTYPE_BF16, 0, 1, 1e-5f},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        struct tensor x = h_new(cs[c].xt, 2, cs[c].rows, cs[c].d, 0);
        h_fill(&x, 2.0f, 0.5f); /* a non-zero mean, so layernorm's centring matters */
        struct tensor w = h_new(cs[c].wt, 1, cs[c].d, 0, 0), b = h_rand(cs[c].wt, 1, cs[c].d, 0, 0, 0.5f);
        h_fill(&w, 0.5f, 1.0f);
        struct tensor ref = h_new(cs[c].yt, 2, cs[c].rows, cs[c].d, 0);
        if (cs[c].layer) op_layernorm(&ref, &x, &w, &b, cs[c].eps);
        else op_rmsnorm(&ref, &x, &w, cs[c].eps);
        struct tensor dx = d_from(&x), dw = d_from(&w), db = d_from(&b);
        struct tensor dy = cs[c].alias ? dx : d_new(cs[c].yt, 2, cs[c].rows, cs[c].d, 0);
        if (cs[c].layer) op_layernorm(&dy, &dx, &dw, &db, cs[c].eps);
        else op_rmsnorm(&dy, &dx, &dw, cs[c].eps);
        char cas[96];
        snprintf(cas, sizeof cas, "[%lld,%lld] x %s w %s -> %s%s", (long long)cs[c].rows, (long long)cs[c].d,
                 dtype_name(cs[c].xt), dtype_name(cs[c].wt), dtype_name(cs[c].yt), cs[c].alias ? " in place" : "");
        check_close(cs[c].layer ? "layernorm" : "rmsnorm", cas, &dy, &ref, tol_for(cs[c].yt));
        if (!cs[c].alias) t_free(&dy);
        t_free(&x), t_free(&w), t_free(&b), t_free(&ref), t_free(&dx), t_free(&dw), t_free(&db);
    }
}

static void test_rope(void)
{
    static const struct { int64_t n, nh, hd; enum dtype dt; double theta; int maxpos; } cs[] = {
        {1, 32, 128, DTYPE_F16, 500000.0, 8192}, {7, 8, 128, DTYPE_F32, 500000.0, 8192},
        {3, 3, 72, DTYPE_F16, 10000.0, 100},     {5, 2, 16, DTYPE_F32, 10000.0, 1000},
        {2, 4, 128, DTYPE_BF16, 500000.0, 4096},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        struct tensor x = h_rand(cs[c].dt, 3, cs[c].n, cs[c].nh, cs[c].hd, 2.0f), pos = h_new(DTYPE_I32, 1, cs[c].n, 0, 0);
        for (int64_t i = 0; i < cs[c].n; i++) {
            frand();
            ((int32_t *)pos.data)[i] = i == 0 ? cs[c].maxpos - 1 : (int32_t)((g_rng >> 33) % (uint64_t)cs[c].maxpos);
        }
        struct tensor dx = d_from(&x), dp = d_from(&pos);
        op_rope(&x, &pos, cs[c].theta);
        op_rope(&dx, &dp, cs[c].theta);
        char cas[96];
        snprintf(cas, sizeof cas, "[%lld,%lld,%lld] %s theta %g pos < %d", (long long)cs[c].n, (long long)cs[c].nh,
                 (long long)cs[c].hd, dtype_name(cs[c].dt), cs[c].theta, cs[c].maxpos);
        check_close("rope", cas, &dx, &x, tol_for(cs[c].dt));
        t_free(&x), t_free(&pos), t_free(&dx), t_free(&dp);
    }
}

static void test_attention(void)
{
    static const struct { int64_t n, T, H, Hkv, hd; enum dtype dt; int flags; int64_t q_pos0; const char *what; } cs[] = {
        {1, 4096, 32, 8, 128, DTYPE_F16, ATTN_CAUSAL, 4095, "decode T=4096 GQA 4 (split-K)"},
        {1, 512, 32, 8, 128, DTYPE_F16, ATTN_CAUSAL, 511, "decode T=512"},
        {2, 4096, 32, 8, 128, DTYPE_F32, 0, 0, "decode f32 non-causal"},
        {7, 1000, 32, 8, 128, DTYPE_F32, ATTN_CAUSAL, 993, "7 tokens at the end of 1000"},
        {33, 33, 4, 4, 72, DTYPE_F16, ATTN_CAUSAL, 0, "prefill hd 72 causal"},
        {64, 64, 16, 16, 72, DTYPE_F16, ATTN_EAGER_F16, 0, "vision eager"},
        {37, 37, 16, 16, 72, DTYPE_F32, ATTN_EAGER_F16, 0, "eager f32 odd"},
        {5, 300, 8, 2, 16, DTYPE_F32, ATTN_CAUSAL, 295, "tiny model hd 16"},
        {40, 100, 8, 2, 32, DTYPE_F16, ATTN_CAUSAL, 60, "prefill GQA 4 after 60"},
        {96, 1000, 32, 32, 128, DTYPE_F16, 0, 0, "resampler 96 queries"},
        {3, 50, 12, 2, 128, DTYPE_F16, ATTN_CAUSAL, 47, "GQA 6"},
        {3, 70, 16, 1, 64, DTYPE_BF16, ATTN_CAUSAL, 67, "GQA 16 (two blocks of 8)"},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        const int64_t n = cs[c].n, T = cs[c].T, H = cs[c].H, Hkv = cs[c].Hkv, hd = cs[c].hd;
        struct tensor q = h_rand(cs[c].dt, 3, n, H, hd, 2.0f), k = h_rand(cs[c].dt, 3, T, Hkv, hd, 2.0f);
        struct tensor v = h_rand(cs[c].dt, 3, T, Hkv, hd, 1.0f), ref = h_new(cs[c].dt, 3, n, H, hd);
        const float scale = 1.0f / sqrtf((float)hd);
        op_attention(&ref, &q, &k, &v, cs[c].q_pos0, scale, cs[c].flags);
        struct tensor dq = d_from(&q), dk = d_from(&k), dv = d_from(&v), dout = d_new(cs[c].dt, 3, n, H, hd);
        op_attention(&dout, &dq, &dk, &dv, cs[c].q_pos0, scale, cs[c].flags);
        char cas[96];
        snprintf(cas, sizeof cas, "n%lld T%lld H%lld/%lld hd%lld %s (%s)", (long long)n, (long long)T, (long long)H,
                 (long long)Hkv, (long long)hd, dtype_name(cs[c].dt), cs[c].what);
        check_close("attention", cas, &dout, &ref, tol_for(cs[c].dt));
        t_free(&q), t_free(&k), t_free(&v), t_free(&ref), t_free(&dq), t_free(&dk), t_free(&dv), t_free(&dout);
    }
}

static void test_elementwise(void)
{
    static const struct { int op; int64_t n; enum dtype at, bt, yt; int alias; } cs[] = {
        {0, 4099 * 3, DTYPE_F16, DTYPE_F16, DTYPE_F16, 1}, {0, 1001, DTYPE_F32, DTYPE_F32, DTYPE_F32, 0},
        {0, 77, DTYPE_BF16, DTYPE_BF16, DTYPE_BF16, 0},    {1, 12345, DTYPE_F16, DTYPE_F16, DTYPE_F16, 1},
        {1, 1001, DTYPE_F32, DTYPE_F32, DTYPE_F32, 0},     {2, 7 * 33, DTYPE_F16, DTYPE_F16, DTYPE_F16, 1},
        {2, 7 * 33, DTYPE_F16, DTYPE_F32, DTYPE_F16, 0},   {3, 7 * 33, DTYPE_F32, DTYPE_F32, DTYPE_F32, 0},
        {3, 5 * 1152, DTYPE_F16, DTYPE_F16, DTYPE_F16, 1}, {4, 5 * 4099, DTYPE_F16, DTYPE_F16, DTYPE_F16, 0},
        {4, 333, DTYPE_F32, DTYPE_F32, DTYPE_F32, 1},
    };
    static const char *names[] = {"silu_mul", "gelu_tanh", "add", "add_row", "scale"};
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        const int op = cs[c].op;
        const int64_t rows = op == 3 ? (cs[c].n % 33 == 0 ? 7 : 5) : 1, d = cs[c].n / rows;
        struct tensor a = h_rand(cs[c].at, 2, rows, d, 0, 4.0f);
        struct tensor b = op == 3 ? h_rand(cs[c].bt, 1, d, 0, 0, 4.0f) : h_rand(cs[c].bt, 2, rows, d, 0, 4.0f);
        struct tensor ref = h_new(cs[c].yt, 2, rows, d, 0);
        struct tensor da = d_from(&a), db = d_from(&b);
        struct tensor dy = cs[c].alias ? da : d_new(cs[c].yt, 2, rows, d, 0);
        double tol = tol_for(cs[c].yt);
        switch (op) {
        case 0: op_silu_mul(&ref, &a, &b); op_silu_mul(&dy, &da, &db); break;
        case 1: op_gelu_tanh(&ref, &a); op_gelu_tanh(&dy, &da); break;
        case 2:
        case 3: op_add(&ref, &a, &b); op_add(&dy, &da, &db); tol = TOL_EXACT; break;
        default: op_scale(&ref, &a, 0.37f); op_scale(&dy, &da, 0.37f); tol = TOL_EXACT; break;
        }
        char cas[96];
        snprintf(cas, sizeof cas, "[%lld,%lld] %s,%s -> %s%s", (long long)rows, (long long)d, dtype_name(cs[c].at),
                 dtype_name(cs[c].bt), dtype_name(cs[c].yt), cs[c].alias ? " in place" : "");
        check_close(names[op], cas, &dy, &ref, tol);
        if (!cs[c].alias) t_free(&dy);
        t_free(&a), t_free(&b), t_free(&ref), t_free(&da), t_free(&db);
    }
}

static void test_argmax(void)
{
    static const int64_t shapes[][2] = {{3, 128256}, {1, 33}, {5, 1000}};
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        const int64_t n = shapes[c][0], V = shapes[c][1];
        struct tensor x = h_rand(DTYPE_F32, 2, n, V, 0, 5.0f);
        float *f = x.data;
        f[V - 1] = 9.0f; /* row 0: the maximum at the last index */
        if (n > 1) {     /* row 1: a tie, the first index must win */
            f[V + 5] = 11.0f;
            f[V + V / 2] = 11.0f;
        }
        int32_t ref[8], got[8];
        op_argmax(&x, ref);
        struct tensor dx = d_from(&x);
        op_argmax(&dx, got);
        int diff = 0;
        for (int64_t i = 0; i < n; i++) diff += ref[i] != got[i];
        printf("  %-10s [%lld,%lld] f32%-40s %d of %lld rows differ %s\n", "argmax", (long long)n, (long long)V, "",
               diff, (long long)n, diff ? "FAIL" : "ok");
        T_EQ_INT(diff, 0);
        T_EQ_INT(got[0], V - 1);
        if (n > 1) T_EQ_INT(got[1], 5);
        t_free(&x), t_free(&dx);
    }
}

/* ---- microbenchmarks ---- */

static double bench_ms(int reps, void (*fn)(int rep, void *ctx), void *ctx)
{
    cudaStream_t s = (cudaStream_t)cuda_stream_handle(0);
    cudaEvent_t e0, e1;
    CHECK(cudaEventCreate(&e0) == cudaSuccess && cudaEventCreate(&e1) == cudaSuccess);
    for (int r = 0; r < 3; r++) fn(r, ctx); /* warm-up: scratch sizing, cuBLAS init, clocks */
    CHECK(cudaEventRecord(e0, s) == cudaSuccess);
    for (int r = 0; r < reps; r++) fn(r, ctx);
    CHECK(cudaEventRecord(e1, s) == cudaSuccess);
    CHECK(cudaEventSynchronize(e1) == cudaSuccess);
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, e0, e1) == cudaSuccess);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return (double)ms / reps;
}

struct gemv_bench {
    struct tensor *w, x, y;
    int nbuf;
};

static void gemv_step(int rep, void *p)
{
    struct gemv_bench *b = p;
    op_matmul(&b->y, &b->x, &b->w[rep % b->nbuf], NULL);
}

struct attn_bench {
    struct tensor q, out, *k, *v;
    int nbuf;
};

static void attn_step(int rep, void *p)
{
    struct attn_bench *b = p;
    int i = rep % b->nbuf;
    op_attention(&b->out, &b->q, &b->k[i], &b->v[i], b->k[i].shape[0] - 1, 0.08838834764831845f, ATTN_CAUSAL);
}

/* buffers are rotated so the working set is >= 256 MB, beyond the H200's 60 MB L2 */
static int rotation(size_t bytes)
{
    size_t want = (size_t)256 << 20;
    int n = (int)((want + bytes - 1) / bytes);
    return n < 2 ? 2 : n > 64 ? 64 : n;
}

static void bench(void)
{
    static const int64_t shapes[][3] = {{4096, 4096, 1}, {1024, 4096, 1},  {14336, 4096, 1},
                                        {4096, 14336, 1}, {128256, 4096, 1}, {14336, 4096, 8}};
    printf("GEMV fp16 (y[n,o] = x[n,k] w[o,k]^T), weights rotated beyond L2:\n");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t o = shapes[s][0], k = shapes[s][1], n = shapes[s][2];
        struct gemv_bench b;
        size_t wbytes = (size_t)(o * k) * 2;
        b.nbuf = rotation(wbytes);
        b.w = calloc((size_t)b.nbuf, sizeof *b.w);
        CHECK(b.w);
        for (int i = 0; i < b.nbuf; i++) {
            struct err e;
            b.w[i] = tensor_make(DTYPE_F16, device_cuda(0), NULL, 2, o, k);
            b.w[i].data = dev_alloc(b.w[i].dev, wbytes, &e);
            CHECKF(b.w[i].data, "%s", e.msg);
            CHECK(cudaMemset(b.w[i].data, 0x2a, wbytes) == cudaSuccess); /* 0x2a2a = 0.048 in fp16 */
        }
        struct tensor hx = h_rand(DTYPE_F16, 2, n, k, 0, 1.0f);
        b.x = d_from(&hx);
        b.y = d_new(DTYPE_F16, 2, n, o, 0);
        double ms = bench_ms(200, gemv_step, &b);
        printf("  n=%lld o=%-6lld k=%-6lld %8.1f us  %7.1f GB/s  (%d buffers)\n", (long long)n, (long long)o,
               (long long)k, ms * 1e3, (double)wbytes / (ms * 1e-3) / 1e9, b.nbuf);
        for (int i = 0; i < b.nbuf; i++) t_free(&b.w[i]);
        free(b.w);
        t_free(&hx), t_free(&b.x), t_free(&b.y);
    }
    printf("attention decode fp16 (n=1, H=32, Hkv=8, hd=128, causal), KV rotated beyond L2:\n");
    static const int64_t Ts[] = {512, 4096, 8192};
    for (size_t s = 0; s < sizeof Ts / sizeof Ts[0]; s++) {
        const int64_t T = Ts[s];
        struct attn_bench b;
        size_t kvbytes = (size_t)(T * 8 * 128) * 2;
        b.nbuf = rotation(2 * kvbytes);
        b.k = calloc((size_t)b.nbuf, sizeof *b.k);
        b.v = calloc((size_t)b.nbuf, sizeof *b.v);
        CHECK(b.k && b.v);
        struct tensor hk = h_rand(DTYPE_F16, 3, T, 8, 128, 2.0f), hq = h_rand(DTYPE_F16, 3, 1, 32, 128, 2.0f);
        for (int i = 0; i < b.nbuf; i++) {
            b.k[i] = d_from(&hk);
            b.v[i] = d_from(&hk);
        }
        b.q = d_from(&hq);
        b.out = d_new(DTYPE_F16, 3, 1, 32, 128);
        double ms = bench_ms(200, attn_step, &b);
        printf("  T=%-5lld %8.1f us  %7.1f GB/s of K+V  (%d buffers)\n", (long long)T, ms * 1e3,
               (double)(2 * kvbytes) / (ms * 1e-3) / 1e9, b.nbuf);
        for (int i = 0; i < b.nbuf; i++) t_free(&b.k[i]), t_free(&b.v[i]);
        free(b.k);
        free(b.v);
        t_free(&hk), t_free(&hq), t_free(&b.q), t_free(&b.out);
    }
}

int main(int argc, char **argv)
{
    struct backend_info bi;
    backend_query(&bi);
    if (bi.n_gpus == 0) {
        const char *why = "no CUDA device";
        (void)t_cur_fail;
        if (argc > 1 && strcmp(argv[1], "bench") == 0) fprintf(stderr, "bench: %s\n", why);
        T_SKIP(test_convert, why);
        T_SKIP(test_embed, why);
        T_SKIP(test_matmul, why);
        T_SKIP(test_norms, why);
        T_SKIP(test_rope, why);
        T_SKIP(test_attention, why);
        T_SKIP(test_elementwise, why);
        T_SKIP(test_argmax, why);
        return t_main_end("test_cuda_ops");
    }
    if (argc > 1 && strcmp(argv[1], "bench") == 0) {
        bench();
        return 0;
    }
    T_RUN(test_convert);
    T_RUN(test_embed);
    T_RUN(test_matmul);
    T_RUN(test_norms);
    T_RUN(test_rope);
    T_RUN(test_attention);
    T_RUN(test_elementwise);
    T_RUN(test_argmax);
    return t_main_end("test_cuda_ops");
}

#else /* built without CUDA */

int main(void)
{
    (void)t_cur_fail;
    T_SKIP(test_cuda_ops, "built without CUDA (make CUDA=1)");
    return t_main_end("test_cuda_ops");
}

#endif
