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
 * `test_cuda_ops bench [gemv|attention|small|step]` times the decode GEMVs at the real shapes, decode
 * attention, the small ops and a synthetic decode step instead; `test_cuda_ops bench engine DIR` times
 * the engine's decode step on a checkpoint with the plain and the fused ops. */
#include "backend.h"
#include "backend_impl.h"
#include "engine.h"
#include "engine_impl.h"
#include "t.h"
#include "tensor.h"

#ifdef MINICPMV_CUDA

#include <cuda_runtime_api.h>

void *cuda_stream_handle(int ordinal); /* src/cuda/cuda_mem.cu: for event timing */

#include "tcuda.h"

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
        {1000, 33, 7, DTYPE_F16, DTYPE_F16}, {517, 4096, 1, DTYPE_F16, DTYPE_F32}, {300, 72, 9, DTYPE_F32, DTYPE_BF16},
        /* one dtype, 16-byte rows: the vector copy (one round, a partial round, two rounds of 4 words) */
        {517, 4096, 3, DTYPE_F16, DTYPE_F16}, {300, 2056, 2, DTYPE_F16, DTYPE_F16}, {50, 8200, 2, DTYPE_F32, DTYPE_F32}};
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
        {1036, 1152, 4304, DTYPE_F16, DTYPE_F16, DTYPE_F16, 1, TOL_F16, "gemm f16, bias (cuBLASLt epilogue), vision fc1"},
        {77, 72, 1001, DTYPE_F16, DTYPE_F16, DTYPE_F16, 1, TOL_F16, "gemm f16, bias, odd o (alignment)"},
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
        /* the fp16 register-row LayerNorm (d % 8 == 0): vision rows, a width that is not a warp multiple */
        {1036, 1152, DTYPE_F16, DTYPE_F16, DTYPE_F16, 0, 1, 1e-6f}, {3, 8, DTYPE_F16, DTYPE_F16, DTYPE_F16, 1, 1, 1e-6f},
        {9, 2048, DTYPE_F16, DTYPE_F16, DTYPE_F16, 1, 1, 1e-6f},    {17, 264, DTYPE_F16, DTYPE_F16, DTYPE_F16, 0, 1, 1e-5f},
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
        {1, 1, 32, 8, 128, DTYPE_F16, ATTN_CAUSAL, 0, "decode kernel, one key"},
        {1, 8192, 32, 8, 128, DTYPE_BF16, ATTN_CAUSAL, 8191, "decode kernel bf16 T=8192"},
        {2, 4097, 32, 8, 128, DTYPE_F16, 0, 0, "decode kernel n=2 non-causal (8 slots)"},
        {5, 777, 32, 8, 128, DTYPE_F16, ATTN_CAUSAL, 772, "decode kernel 3 row blocks"},
        {8, 300, 8, 8, 64, DTYPE_BF16, ATTN_CAUSAL, 292, "decode kernel no GQA hd 64"},
        {1, 37, 4, 4, 64, DTYPE_F16, ATTN_CAUSAL, 20, "decode kernel keys past q_pos0 ignored"},
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
    static const int64_t shapes[][2] = {{3, 128256}, {1, 33}, {5, 1000}, {3, 1001}}; /* 1001: rows not 16-byte aligned */
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


/* ---- decode-step ops ---- */

static void test_add_rmsnorm(void)
{
    static const struct { int64_t rows, d; enum dtype ht, wt; } cs[] = {
        {1, 4096, DTYPE_F16, DTYPE_F16}, {3, 1001, DTYPE_F32, DTYPE_F32}, {2, 33, DTYPE_BF16, DTYPE_BF16},
        {5, 4096, DTYPE_F16, DTYPE_F32},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        struct tensor h = h_rand(cs[c].ht, 2, cs[c].rows, cs[c].d, 0, 3.0f), o = h_rand(cs[c].ht, 2, cs[c].rows, cs[c].d, 0, 3.0f);
        struct tensor w = h_new(cs[c].wt, 1, cs[c].d, 0, 0), xn = h_new(cs[c].ht, 2, cs[c].rows, cs[c].d, 0);
        h_fill(&w, 0.5f, 1.0f);
        struct tensor dh = d_from(&h), dox = d_from(&o), dw = d_from(&w), dxn = d_new(cs[c].ht, 2, cs[c].rows, cs[c].d, 0);
        op_add_rmsnorm(&h, &xn, &o, &w, 1e-5f);
        op_add_rmsnorm(&dh, &dxn, &dox, &dw, 1e-5f);
        char cas[96];
        snprintf(cas, sizeof cas, "[%lld,%lld] %s w %s: h", (long long)cs[c].rows, (long long)cs[c].d,
                 dtype_name(cs[c].ht), dtype_name(cs[c].wt));
        check_close("add_rmsnorm", cas, &dh, &h, TOL_EXACT);
        snprintf(cas, sizeof cas, "[%lld,%lld] %s w %s: xn", (long long)cs[c].rows, (long long)cs[c].d,
                 dtype_name(cs[c].ht), dtype_name(cs[c].wt));
        check_close("add_rmsnorm", cas, &dxn, &xn, tol_for(cs[c].ht));
        t_free(&h), t_free(&o), t_free(&w), t_free(&xn), t_free(&dh), t_free(&dox), t_free(&dw), t_free(&dxn);
    }
}

/* paged: the store goes through a shuffled block table over a pool of T rows (T a multiple of KV_BLOCK) */
static void test_rope_qk(void)
{
    static const struct { int64_t n, H, Hkv, hd, T; int32_t p0; enum dtype dt; int store, paged; } cs[] = {
        {1, 32, 8, 128, 8192, 8000, DTYPE_F16, 1, 0}, {3, 12, 2, 72, 50, 47, DTYPE_F32, 1, 0},
        {4, 8, 2, 16, 300, 7, DTYPE_BF16, 1, 0},      {2, 4, 4, 64, 0, 1234, DTYPE_F16, 0, 0},
        {1, 32, 8, 128, 8192, 8000, DTYPE_F16, 1, 1}, {5, 12, 2, 72, 128, 45, DTYPE_F32, 1, 1},
        {8, 32, 8, 128, 1024, 500, DTYPE_BF16, 1, 1},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        const int64_t n = cs[c].n, T = cs[c].T ? cs[c].T : 1;
        struct tensor q = h_rand(cs[c].dt, 3, n, cs[c].H, cs[c].hd, 2.0f), k = h_rand(cs[c].dt, 3, n, cs[c].Hkv, cs[c].hd, 2.0f);
        struct tensor v = h_rand(cs[c].dt, 3, n, cs[c].Hkv, cs[c].hd, 2.0f), pos = h_new(DTYPE_I32, 1, n, 0, 0);
        struct tensor kc = h_rand(cs[c].dt, 3, T, cs[c].Hkv, cs[c].hd, 1.0f), vc = h_rand(cs[c].dt, 3, T, cs[c].Hkv, cs[c].hd, 1.0f);
        for (int64_t i = 0; i < n; i++) ((int32_t *)pos.data)[i] = cs[c].p0 + (int32_t)i;
        struct tensor dq = d_from(&q), dk = d_from(&k), dv = d_from(&v), dp = d_from(&pos), dkc = d_from(&kc), dvc = d_from(&vc);
        const int st = cs[c].store;
        const int64_t mb = (cs[c].p0 + n + KV_BLOCK - 1) / KV_BLOCK;
        struct tensor tab = h_table(0, cs[c].paged ? mb : 1, cs[c].paged ? T / KV_BLOCK : 1), dt = d_from(&tab);
        op_rope_qk(&q, &k, &pos, 500000.0, st ? &v : NULL, st ? &kc : NULL, st ? &vc : NULL, cs[c].paged ? &tab : NULL);
        op_rope_qk(&dq, &dk, &dp, 500000.0, st ? &dv : NULL, st ? &dkc : NULL, st ? &dvc : NULL, cs[c].paged ? &dt : NULL);
        char cas[96];
        snprintf(cas, sizeof cas, "q[%lld,%lld,%lld] k %lld heads %s pos %d%s", (long long)n, (long long)cs[c].H,
                 (long long)cs[c].hd, (long long)cs[c].Hkv, dtype_name(cs[c].dt), cs[c].p0,
                 cs[c].paged ? " + paged store" : st ? " + store" : "");
        check_close("rope_qk q", cas, &dq, &q, tol_for(cs[c].dt));
        check_close("rope_qk k", cas, &dk, &k, tol_for(cs[c].dt));
        check_close("rope_qk kc", cas, &dkc, &kc, tol_for(cs[c].dt));
        check_close("rope_qk vc", cas, &dvc, &vc, TOL_EXACT);
        t_free(&q), t_free(&k), t_free(&v), t_free(&pos), t_free(&kc), t_free(&vc), t_free(&tab), t_free(&dt);
        t_free(&dq), t_free(&dk), t_free(&dv), t_free(&dp), t_free(&dkc), t_free(&dvc);
    }
    /* op_rope_qk_rows (the batched step: each row its own position and cache row, rows shuffled over the
     * pool), against the CPU twin; the vector kernel (f16/bf16/f32, hd <= 128) and the generic fallback (hd
     * 72 with an odd half pair count: 36 pairs is even, so hd 18: 9 pairs) */
    static const struct { int64_t n, H, Hkv, hd, T; enum dtype dt; } rs[] = {
        {16, 32, 8, 128, 1024, DTYPE_F16}, {64, 32, 8, 128, 4096, DTYPE_F16}, {5, 12, 2, 72, 96, DTYPE_F32},
        {3, 8, 2, 64, 48, DTYPE_BF16}, {4, 4, 2, 18, 32, DTYPE_F16},
    };
    for (size_t c = 0; c < sizeof rs / sizeof rs[0]; c++) {
        const int64_t n = rs[c].n, T = rs[c].T;
        struct tensor q = h_rand(rs[c].dt, 3, n, rs[c].H, rs[c].hd, 2.0f), k = h_rand(rs[c].dt, 3, n, rs[c].Hkv, rs[c].hd, 2.0f);
        struct tensor v = h_rand(rs[c].dt, 3, n, rs[c].Hkv, rs[c].hd, 2.0f), pos = h_new(DTYPE_I32, 1, n, 0, 0);
        struct tensor kc = h_rand(rs[c].dt, 3, T, rs[c].Hkv, rs[c].hd, 1.0f), vc = h_rand(rs[c].dt, 3, T, rs[c].Hkv, rs[c].hd, 1.0f);
        struct tensor rw = h_new(DTYPE_I32, 1, n, 0, 0);
        for (int64_t i = 0; i < n; i++) {
            ((int32_t *)pos.data)[i] = (int32_t)((i * 37 + 5) % 3000);
            ((int32_t *)rw.data)[i] = (int32_t)((i * 7919 + 3) % T); /* distinct: T and 7919 coprime, n <= T */
        }
        struct tensor dq = d_from(&q), dk = d_from(&k), dv = d_from(&v), dp = d_from(&pos), dkc = d_from(&kc), dvc = d_from(&vc);
        struct tensor drw = d_from(&rw);
        /* the same rows joined q | k | v (op_rope_qkv_rows), into their own copies of the caches */
        const int64_t qd = rs[c].H * rs[c].hd, kd = rs[c].Hkv * rs[c].hd;
        const size_t es = dtype_size(rs[c].dt);
        struct tensor qkv = h_new(rs[c].dt, 2, n, qd + 2 * kd, 0);
        for (int64_t i = 0; i < n; i++) {
            char *r = (char *)qkv.data + (size_t)(i * (qd + 2 * kd)) * es;
            memcpy(r, (char *)q.data + (size_t)(i * qd) * es, (size_t)qd * es);
            memcpy(r + (size_t)qd * es, (char *)k.data + (size_t)(i * kd) * es, (size_t)kd * es);
            memcpy(r + (size_t)(qd + kd) * es, (char *)v.data + (size_t)(i * kd) * es, (size_t)kd * es);
        }
        struct tensor dqkv = d_from(&qkv), dkc2 = d_from(&kc), dvc2 = d_from(&vc);
        struct tensor dq2 = d_new(rs[c].dt, 3, n, rs[c].H, rs[c].hd);
        op_rope_qkv_rows(&dq2, &dqkv, &dp, 500000.0, &dkc2, &dvc2, &drw);
        op_rope_qk_rows(&q, &k, &pos, 500000.0, &v, &kc, &vc, &rw);
        op_rope_qk_rows(&dq, &dk, &dp, 500000.0, &dv, &dkc, &dvc, &drw);
        char cas[96];
        snprintf(cas, sizeof cas, "rows q[%lld,%lld,%lld] k %lld heads %s pool %lld", (long long)n, (long long)rs[c].H,
                 (long long)rs[c].hd, (long long)rs[c].Hkv, dtype_name(rs[c].dt), (long long)T);
        check_close("rope_qk_rows q", cas, &dq, &q, tol_for(rs[c].dt));
        check_close("rope_qk_rows k", cas, &dk, &k, tol_for(rs[c].dt));
        check_close("rope_qk_rows kc", cas, &dkc, &kc, tol_for(rs[c].dt));
        check_close("rope_qk_rows vc", cas, &dvc, &vc, TOL_EXACT);
        check_close("rope_qkv_rows q", cas, &dq2, &q, tol_for(rs[c].dt));
        check_close("rope_qkv_rows kc", cas, &dkc2, &kc, tol_for(rs[c].dt));
        check_close("rope_qkv_rows vc", cas, &dvc2, &vc, TOL_EXACT);
        t_free(&qkv), t_free(&dqkv), t_free(&dkc2), t_free(&dvc2), t_free(&dq2);
        t_free(&q), t_free(&k), t_free(&v), t_free(&pos), t_free(&kc), t_free(&vc), t_free(&rw);
        t_free(&dq), t_free(&dk), t_free(&dv), t_free(&dp), t_free(&dkc), t_free(&dvc), t_free(&drw);
    }
}

/* The vector kernels of the small decode ops (cuda_set_small_vec 1, the default) against the generic
 * kernels they replace (0): bit for bit on the same inputs, and both against the CPU twin; the norms
 * also in mode 2 (their own summation tree: against the CPU twin only, its fp32 statistic may differ in
 * the last bit). Shapes that take the vector form (the decode step's, batched rows, bf16 and f32, several
 * vectors per thread, partial warps, fewer vectors than threads, hd 72 and 100) and shapes that fall back
 * to the generic kernels (widths not a multiple of the vector, mixed dtypes, too many vectors per thread
 * or a row too wide for mode 1's shared memory, hd > 128, an odd half). */
static void test_small_vec(void)
{
    static const struct { int64_t rows, d; enum dtype dt, wt; const char *what; } ns[] = {
        {1, 4096, DTYPE_F16, DTYPE_F16, "decode"},          {5, 4096, DTYPE_F16, DTYPE_F16, "batched"},
        {3, 4800, DTYPE_F16, DTYPE_F16, "2 vectors/thread"}, {2, 16384, DTYPE_F16, DTYPE_F16, "4 vectors/thread"},
        {4, 4096, DTYPE_BF16, DTYPE_BF16, "bf16"},          {3, 1000, DTYPE_F32, DTYPE_F32, "f32, partial warp"},
        {2, 36, DTYPE_F32, DTYPE_F32, "f32, 9 vectors"},    {3, 8, DTYPE_F16, DTYPE_F16, "one vector"},
        {7, 4100, DTYPE_F16, DTYPE_F16, "generic: d % 8"},  {1, 16392, DTYPE_F16, DTYPE_F16, "generic: 5 vectors/thread"},
        {5, 4096, DTYPE_F16, DTYPE_F32, "generic: w f32"},   {2, 12288, DTYPE_F16, DTYPE_F16, "mode 1 generic: d > 8192"},
    };
    for (size_t c = 0; c < sizeof ns / sizeof ns[0]; c++) {
        const int64_t rows = ns[c].rows, d = ns[c].d;
        const enum dtype dt = ns[c].dt;
        struct tensor x = h_rand(dt, 2, rows, d, 0, 3.0f), o = h_rand(dt, 2, rows, d, 0, 3.0f);
        struct tensor w = h_new(ns[c].wt, 1, d, 0, 0);
        h_fill(&w, 0.5f, 1.0f);
        /* the CPU twins: rmsnorm(x), and add_rmsnorm(h = x, o) */
        struct tensor ry = h_new(dt, 2, rows, d, 0), rh = h_copy(&x), rxn = h_new(dt, 2, rows, d, 0);
        op_rmsnorm(&ry, &x, &w, 1e-5f);
        op_add_rmsnorm(&rh, &rxn, &o, &w, 1e-5f);
        struct tensor got[3][3]; /* [cuda_set_small_vec mode][rmsnorm y, add_rmsnorm h, add_rmsnorm xn] */
        for (int vec = 0; vec < 3; vec++) {
            cuda_set_small_vec(0, vec);
            struct tensor dx = d_from(&x), dox = d_from(&o), dw = d_from(&w), dy = d_new(dt, 2, rows, d, 0);
            struct tensor dxn = d_new(dt, 2, rows, d, 0);
            op_rmsnorm(&dy, &dx, &dw, 1e-5f);
            op_add_rmsnorm(&dx, &dxn, &dox, &dw, 1e-5f);
            got[vec][0] = h_copy(&dy), got[vec][1] = h_copy(&dx), got[vec][2] = h_copy(&dxn);
            char cas[96];
            snprintf(cas, sizeof cas, "[%lld,%lld] %s w %s %s (%s)", (long long)rows, (long long)d, dtype_name(dt),
                     dtype_name(ns[c].wt), vec == 2 ? "vector, own tree" : vec ? "vector" : "generic", ns[c].what);
            check_close("rmsnorm", cas, &dy, &ry, tol_for(dt));
            check_close("add_rms h", cas, &dx, &rh, TOL_EXACT);
            check_close("add_rms xn", cas, &dxn, &rxn, tol_for(dt));
            t_free(&dx), t_free(&dox), t_free(&dw), t_free(&dy), t_free(&dxn);
        }
        char cas[96];
        snprintf(cas, sizeof cas, "[%lld,%lld] %s vector = generic (%s)", (long long)rows, (long long)d, dtype_name(dt),
                 ns[c].what);
        for (int i = 0; i < 3; i++) {
            static const char *nm[] = {"rmsnorm", "add_rms h", "add_rms xn"};
            struct tensor dg = d_from(&got[1][i]);
            check_close(nm[i], cas, &dg, &got[0][i], TOL_EXACT);
            t_free(&dg), t_free(&got[0][i]), t_free(&got[1][i]), t_free(&got[2][i]);
        }
        t_free(&x), t_free(&o), t_free(&w), t_free(&ry), t_free(&rh), t_free(&rxn);
    }

    /* rope_qk: the decode step's shape (paged and not), batched rows, other dtypes and head dims */
    static const struct { int64_t n, H, Hkv, hd, T; int32_t p0; enum dtype dt; int store, paged; const char *what; } rs[] = {
        {1, 32, 8, 128, 8192, 8000, DTYPE_F16, 1, 1, "decode, paged"}, {1, 32, 8, 128, 1024, 700, DTYPE_F16, 1, 0, "decode"},
        {8, 32, 8, 128, 1024, 500, DTYPE_BF16, 1, 1, "batched bf16"},   {3, 12, 2, 72, 128, 45, DTYPE_F32, 1, 1, "hd 72 f32"},
        {2, 4, 4, 64, 0, 1234, DTYPE_F16, 0, 0, "no store"},            {4, 8, 2, 16, 300, 7, DTYPE_BF16, 1, 0, "hd 16"},
        {2, 4, 2, 100, 64, 30, DTYPE_F16, 1, 0, "hd 100"},              {2, 4, 2, 140, 64, 30, DTYPE_F16, 1, 0, "generic: hd 140"},
        {3, 4, 2, 70, 64, 20, DTYPE_F16, 1, 0, "generic: odd half"},
    };
    for (size_t c = 0; c < sizeof rs / sizeof rs[0]; c++) {
        const int64_t n = rs[c].n, T = rs[c].T ? rs[c].T : 1, H = rs[c].H, Hkv = rs[c].Hkv, hd = rs[c].hd;
        const enum dtype dt = rs[c].dt;
        const int st = rs[c].store;
        struct tensor q = h_rand(dt, 3, n, H, hd, 2.0f), k = h_rand(dt, 3, n, Hkv, hd, 2.0f);
        struct tensor v = h_rand(dt, 3, n, Hkv, hd, 2.0f), pos = h_new(DTYPE_I32, 1, n, 0, 0);
        struct tensor kc = h_rand(dt, 3, T, Hkv, hd, 1.0f), vc = h_rand(dt, 3, T, Hkv, hd, 1.0f);
        for (int64_t i = 0; i < n; i++) ((int32_t *)pos.data)[i] = rs[c].p0 + (int32_t)i;
        const int64_t mb = (rs[c].p0 + n + KV_BLOCK - 1) / KV_BLOCK;
        struct tensor tab = h_table(0, rs[c].paged ? mb : 1, rs[c].paged ? T / KV_BLOCK : 1);
        struct tensor ref[4] = {h_copy(&q), h_copy(&k), h_copy(&kc), h_copy(&vc)}, got[2][4];
        op_rope_qk(&ref[0], &ref[1], &pos, 500000.0, st ? &v : NULL, st ? &ref[2] : NULL, st ? &ref[3] : NULL,
                   rs[c].paged ? &tab : NULL);
        for (int vec = 0; vec < 2; vec++) {
            cuda_set_small_vec(0, vec);
            struct tensor dq = d_from(&q), dk = d_from(&k), dv = d_from(&v), dp = d_from(&pos), dkc = d_from(&kc);
            struct tensor dvc = d_from(&vc), dtab = d_from(&tab);
            op_rope_qk(&dq, &dk, &dp, 500000.0, st ? &dv : NULL, st ? &dkc : NULL, st ? &dvc : NULL,
                       rs[c].paged ? &dtab : NULL);
            char cas[96];
            snprintf(cas, sizeof cas, "q[%lld,%lld,%lld] k %lld %s pos %d %s (%s)", (long long)n, (long long)H,
                     (long long)hd, (long long)Hkv, dtype_name(dt), rs[c].p0, vec ? "vector" : "generic", rs[c].what);
            check_close("rope_qk q", cas, &dq, &ref[0], tol_for(dt));
            check_close("rope_qk k", cas, &dk, &ref[1], tol_for(dt));
            check_close("rope_qk kc", cas, &dkc, &ref[2], tol_for(dt));
            check_close("rope_qk vc", cas, &dvc, &ref[3], TOL_EXACT);
            got[vec][0] = h_copy(&dq), got[vec][1] = h_copy(&dk), got[vec][2] = h_copy(&dkc), got[vec][3] = h_copy(&dvc);
            t_free(&dq), t_free(&dk), t_free(&dv), t_free(&dp), t_free(&dkc), t_free(&dvc), t_free(&dtab);
        }
        char cas[96];
        snprintf(cas, sizeof cas, "q[%lld,%lld,%lld] %s vector = generic (%s)", (long long)n, (long long)H,
                 (long long)hd, dtype_name(dt), rs[c].what);
        for (int i = 0; i < 4; i++) {
            static const char *nm[] = {"rope_qk q", "rope_qk k", "rope_qk kc", "rope_qk vc"};
            struct tensor dg = d_from(&got[1][i]);
            check_close(nm[i], cas, &dg, &got[0][i], TOL_EXACT);
            t_free(&dg), t_free(&got[0][i]), t_free(&got[1][i]), t_free(&ref[i]);
        }
        t_free(&q), t_free(&k), t_free(&v), t_free(&pos), t_free(&kc), t_free(&vc), t_free(&tab);
    }

    /* silu_mul in place (g = silu(g) * u, as llm.c calls it) and into a third tensor; kv_store of rows */
    static const struct { int64_t rows, d; enum dtype dt; int alias; const char *what; } ss[] = {
        {1, 14336, DTYPE_F16, 1, "decode"}, {4, 14336, DTYPE_F16, 1, "batched"}, {3, 1000, DTYPE_BF16, 0, "bf16"},
        {2, 1002, DTYPE_F32, 0, "f32"},     {1, 14339, DTYPE_F16, 0, "generic: n % 8"},
    };
    for (size_t c = 0; c < sizeof ss / sizeof ss[0]; c++) {
        const int64_t rows = ss[c].rows, d = ss[c].d;
        const enum dtype dt = ss[c].dt;
        struct tensor g = h_rand(dt, 2, rows, d, 0, 6.0f), u = h_rand(dt, 2, rows, d, 0, 3.0f), ref = h_new(dt, 2, rows, d, 0);
        op_silu_mul(&ref, &g, &u);
        struct tensor got[2];
        for (int vec = 0; vec < 2; vec++) {
            cuda_set_small_vec(0, vec);
            struct tensor dg = d_from(&g), du = d_from(&u), dy = ss[c].alias ? dg : d_new(dt, 2, rows, d, 0);
            op_silu_mul(&dy, &dg, &du);
            char cas[96];
            snprintf(cas, sizeof cas, "[%lld,%lld] %s%s %s (%s)", (long long)rows, (long long)d, dtype_name(dt),
                     ss[c].alias ? " in place" : "", vec ? "vector" : "generic", ss[c].what);
            check_close("silu_mul", cas, &dy, &ref, tol_for(dt));
            got[vec] = h_copy(&dy);
            if (!ss[c].alias) t_free(&dy);
            t_free(&dg), t_free(&du);
        }
        char cas[96];
        snprintf(cas, sizeof cas, "[%lld,%lld] %s vector = generic (%s)", (long long)rows, (long long)d, dtype_name(dt),
                 ss[c].what);
        struct tensor dg1 = d_from(&got[1]);
        check_close("silu_mul", cas, &dg1, &got[0], TOL_EXACT);
        t_free(&dg1), t_free(&got[0]), t_free(&got[1]), t_free(&g), t_free(&u), t_free(&ref);
    }
    static const struct { int64_t n, Hkv, hd; enum dtype dt; } ks[] = {
        {8, 8, 128, DTYPE_F16}, {3, 2, 72, DTYPE_F32}, {2, 3, 5, DTYPE_F16}, /* the last: 30-byte rows, bytes */
    };
    for (size_t c = 0; c < sizeof ks / sizeof ks[0]; c++) {
        const int64_t n = ks[c].n, T = 64;
        struct tensor cache = h_rand(ks[c].dt, 3, T, ks[c].Hkv, ks[c].hd, 1.0f), x = h_rand(ks[c].dt, 3, n, ks[c].Hkv, ks[c].hd, 2.0f);
        struct tensor rows = h_new(DTYPE_I32, 1, n, 0, 0);
        for (int64_t i = 0; i < n; i++) ((int32_t *)rows.data)[i] = (int32_t)((i * 37 + 11) % T);
        struct tensor ref = h_copy(&cache);
        op_kv_store(&ref, &x, &rows);
        for (int vec = 0; vec < 2; vec++) {
            cuda_set_small_vec(0, vec);
            struct tensor dc = d_from(&cache), dx = d_from(&x), dr = d_from(&rows);
            op_kv_store(&dc, &dx, &dr);
            char cas[96];
            snprintf(cas, sizeof cas, "[%lld,%lld,%lld] %s %lld rows %s", (long long)T, (long long)ks[c].Hkv,
                     (long long)ks[c].hd, dtype_name(ks[c].dt), (long long)n, vec ? "vector" : "generic");
            check_close("kv_store", cas, &dc, &ref, TOL_EXACT);
            t_free(&dc), t_free(&dx), t_free(&dr);
        }
        t_free(&cache), t_free(&x), t_free(&rows), t_free(&ref);
    }
    cuda_set_small_vec(0, 1);
}

/* op_kv_pages both ways: tokens p0.. of a shuffled table, gathered out and scattered back in; each case
 * with the vector kernels on (16-byte words where the rows allow: every case but the 60-byte rows) and off
 * (the byte kernel) */
static void test_kv_pages(void)
{
    static const struct { int64_t n, p0, blocks, H, hd; enum dtype dt; int vec; } cs[] = {
        {1000, 0, 80, 8, 128, DTYPE_F16, 1}, {37, 21, 10, 8, 128, DTYPE_F32, 1}, {1, 4095, 300, 8, 128, DTYPE_BF16, 1},
        {300, 40, 30, 3, 10, DTYPE_F16, 1},  {1000, 0, 80, 8, 128, DTYPE_F16, 0}, {37, 21, 10, 8, 128, DTYPE_F32, 0},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        const int64_t n = cs[c].n, T = cs[c].blocks * KV_BLOCK, mb = (cs[c].p0 + n + KV_BLOCK - 1) / KV_BLOCK;
        const int64_t H = cs[c].H, hd = cs[c].hd;
        struct tensor cache = h_rand(cs[c].dt, 3, T, H, hd, 1.0f), x = h_new(cs[c].dt, 3, n, H, hd);
        struct tensor y = h_rand(cs[c].dt, 3, n, H, hd, 2.0f), tab = h_table(0, mb, cs[c].blocks);
        struct tensor dc = d_from(&cache), dx = d_new(cs[c].dt, 3, n, H, hd), dy = d_from(&y), dt = d_from(&tab);
        cuda_set_small_vec(0, cs[c].vec);
        char cas[96];
        snprintf(cas, sizeof cas, "tokens %lld..%lld of %lld blocks [%lld,%lld] %s %s", (long long)cs[c].p0,
                 (long long)(cs[c].p0 + n - 1), (long long)cs[c].blocks, (long long)H, (long long)hd,
                 dtype_name(cs[c].dt), cs[c].vec ? "vec" : "bytes");
        op_kv_pages(&cache, &x, &tab, cs[c].p0, 0);
        op_kv_pages(&dc, &dx, &dt, cs[c].p0, 0);
        check_close("kv gather", cas, &dx, &x, TOL_EXACT);
        op_kv_pages(&cache, &y, &tab, cs[c].p0, 1);
        op_kv_pages(&dc, &dy, &dt, cs[c].p0, 1);
        check_close("kv scatter", cas, &dc, &cache, TOL_EXACT);
        t_free(&cache), t_free(&x), t_free(&y), t_free(&tab), t_free(&dc), t_free(&dx), t_free(&dy), t_free(&dt);
    }
    cuda_set_small_vec(0, 1);
}

static void test_kv_store(void)
{
    struct tensor cache = h_rand(DTYPE_F16, 3, 100, 3, 10, 1.0f), x = h_rand(DTYPE_F16, 3, 4, 3, 10, 2.0f);
    struct tensor rows = h_new(DTYPE_I32, 1, 4, 0, 0);
    const int32_t r[4] = {99, 0, 57, 58};
    memcpy(rows.data, r, sizeof r);
    struct tensor dc = d_from(&cache), dx = d_from(&x), dr = d_from(&rows);
    op_kv_store(&cache, &x, &rows);
    op_kv_store(&dc, &dx, &dr);
    check_close("kv_store", "[100,3,10] f16 rows 99,0,57,58", &dc, &cache, TOL_EXACT);
    t_free(&cache), t_free(&x), t_free(&rows), t_free(&dc), t_free(&dx), t_free(&dr);
}

/* op_attention_pos on a cache of capacity T whose first p0 + n rows are valid; paged: a pool of T rows
 * (2x the table's blocks) read through a shuffled table of (p0 + n) / KV_BLOCK blocks, rounded up */
static void test_attention_pos(void)
{
    static const struct { int64_t n, T, H, Hkv, hd; int32_t p0; enum dtype dt; int flags, paged; const char *what; } cs[] = {
        {1, 8192, 32, 8, 128, 511, DTYPE_F16, ATTN_CAUSAL, 0, "decode kernel, cache 8192, 512 keys"},
        {1, 4096, 32, 8, 128, 0, DTYPE_F16, ATTN_CAUSAL, 0, "decode kernel, first token"},
        {4, 1000, 32, 8, 128, 900, DTYPE_BF16, ATTN_CAUSAL, 0, "decode kernel, 4 rows"},
        {3, 300, 8, 2, 16, 100, DTYPE_F32, ATTN_CAUSAL, 0, "general kernel hd 16"},
        {2, 500, 8, 2, 128, 250, DTYPE_F16, 0, 0, "decode kernel non-causal"},
        {20, 600, 8, 2, 64, 300, DTYPE_F16, ATTN_CAUSAL, 0, "general kernel, 20 rows"},
        {1, 8192, 32, 8, 128, 4000, DTYPE_F16, ATTN_CAUSAL, 1, "paged decode kernel, 4001 keys"},
        {1, 256, 32, 8, 128, 0, DTYPE_F16, ATTN_CAUSAL, 1, "paged decode kernel, first token"},
        {4, 2048, 32, 8, 128, 900, DTYPE_BF16, ATTN_CAUSAL, 1, "paged decode kernel, 4 rows"},
        {3, 256, 8, 2, 16, 100, DTYPE_F32, ATTN_CAUSAL, 1, "paged general kernel hd 16"},
        {20, 1280, 8, 2, 64, 300, DTYPE_F16, ATTN_CAUSAL, 1, "paged general kernel, 20 rows"},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        const int64_t n = cs[c].n, T = cs[c].T, H = cs[c].H, Hkv = cs[c].Hkv, hd = cs[c].hd;
        struct tensor q = h_rand(cs[c].dt, 3, n, H, hd, 2.0f), k = h_rand(cs[c].dt, 3, T, Hkv, hd, 2.0f);
        struct tensor v = h_rand(cs[c].dt, 3, T, Hkv, hd, 1.0f), ref = h_new(cs[c].dt, 3, n, H, hd);
        struct tensor pos = h_new(DTYPE_I32, 1, n, 0, 0);
        for (int64_t i = 0; i < n; i++) ((int32_t *)pos.data)[i] = cs[c].p0 + (int32_t)i;
        const int64_t mb = (cs[c].p0 + n + KV_BLOCK - 1) / KV_BLOCK;
        struct tensor tab = h_table(0, cs[c].paged ? mb : 1, cs[c].paged ? T / KV_BLOCK : 1), dt = d_from(&tab);
        const float scale = 1.0f / sqrtf((float)hd);
        op_attention_pos(&ref, &q, &k, &v, &pos, cs[c].paged ? &tab : NULL, scale, cs[c].flags);
        if (cs[c].paged) { /* the twin equals the attention over the gathered rows, bit for bit */
            struct tensor kg = h_new(cs[c].dt, 3, cs[c].p0 + n, Hkv, hd), vg = h_new(cs[c].dt, 3, cs[c].p0 + n, Hkv, hd);
            struct tensor o2 = h_new(cs[c].dt, 3, n, H, hd);
            op_kv_pages(&k, &kg, &tab, 0, 0);
            op_kv_pages(&v, &vg, &tab, 0, 0);
            op_attention(&o2, &q, &kg, &vg, cs[c].p0, scale, cs[c].flags);
            T_ASSERT(memcmp(o2.data, ref.data, tensor_nbytes(&o2)) == 0);
            t_free(&kg), t_free(&vg), t_free(&o2);
        }
        struct tensor dq = d_from(&q), dk = d_from(&k), dv = d_from(&v), dp = d_from(&pos), dout = d_new(cs[c].dt, 3, n, H, hd);
        op_attention_pos(&dout, &dq, &dk, &dv, &dp, cs[c].paged ? &dt : NULL, scale, cs[c].flags);
        char cas[96];
        snprintf(cas, sizeof cas, "n%lld cap%lld pos %d.. H%lld/%lld hd%lld %s (%s)", (long long)n, (long long)T,
                 cs[c].p0, (long long)H, (long long)Hkv, (long long)hd, dtype_name(cs[c].dt), cs[c].what);
        check_close("attn_pos", cas, &dout, &ref, tol_for(cs[c].dt));
        t_free(&q), t_free(&k), t_free(&v), t_free(&ref), t_free(&pos), t_free(&tab), t_free(&dt);
        t_free(&dq), t_free(&dk), t_free(&dv), t_free(&dp), t_free(&dout);
    }
}

/* hooks into cuda_attention_decode.cu: one decode kernel with the choice forced (variant 0 split-K, C in
 * 1..16 the cluster kernel with C splits, -1 automatic; returns 0 nothing ran, 1 split-K ran, 2 the
 * cluster kernel ran), and the cluster sizes the device holds (-1 everywhere: no cluster kernel here) */
int cuda_attention_decode_variant(struct tensor *out, const struct tensor *q, const struct tensor *k, const struct tensor *v,
                                  const struct tensor *pos, const struct tensor *tab, const struct tensor *seq,
                                  const struct tensor *n_keys, int64_t q_pos0, float scale, int flags, int variant);
void cuda_attention_cluster_caps(int ordinal, int maxcl[5]);
int cuda_attention_tc_able(int ordinal);
/* variant codes (cuda_attention_decode.cu): the cluster kernel with its automatic split count, and the
 * tensor-core kernel with W warps per block (0: automatic) and S splits (0: automatic) */
#define DEC_VAR_CLUSTER 32
#define DEC_VAR_TC(w, s) (1000 + 100 * (w) + (s))
#define DEC_VAR_TCC(w, c) (2000 + 100 * (w) + (c))

/* the (head group, row block) pairs of a decode attention launch of n rows, as cuda_attention_decode.cu counts them:
 * groups of GB heads (the largest divisor <= 8 of H / Hkv) x blocks of 8 / GB rows */
static int64_t dec_groups(int64_t n, int64_t H, int64_t Hkv)
{
    int64_t gb = 1;
    for (int64_t d = 8; d >= 1; d--)
        if ((H / Hkv) % d == 0) {
            gb = d;
            break;
        }
    const int64_t qb = 8 / gb < n ? 8 / gb : n;
    return H / gb * ((n + qb - 1) / qb);
}

/* The decode kernels one by one against the CPU twin: the split-K kernel (sm_75 .. sm_89, and what sm_90
 * ran before) and the cluster kernel (sm_90) at every cluster size, 1 .. 16, then the automatic choice
 * (on a card that runs the cluster kernel it must be the one chosen). Call forms: q_pos0 (op_attention),
 * device positions over a cache of capacity T (the first p0 + n rows valid), the same through a shuffled
 * block table (paged); rows mode is in test_cuda_batch. Key counts at the edges of the split arithmetic:
 * one key, one tile, 16 tiles + 1 and 32 tiles + 1 (a split of one key after full ones), a count that
 * is not a tile multiple, hd 64 (64-key tiles); GQA 4:1 and 1:1, 8 slots (2 rows x 4 heads), 3 row
 * blocks with a causal limit per row, bf16. Split-K runs twice (its arrival counters must be back at
 * zero for the next launch). The tensor-core kernel (sm_80+) with its automatic shape, 1, 2 and 4 warps
 * per block, forced split counts (1: no partials; 3 and 7: splits of uneven step counts; 99: more
 * splits than steps), twice where it merges partials (the same counters); its 16-key steps meet the
 * key counts 1, 17, 31, 545 (pos), 4097 (paged); then rows mode through it (test_cuda_batch test_attention_rows).
 * The tensor-core kernel with its splits one cluster merged in distributed shared memory (sm_90): its automatic
 * split count, and 2, 8, 16 and 16 splits with 4, 2, 1 and 8 warps (blocks without steps still take part in the
 * merge); the plain tensor-core kernel with 8 warps too. */
static void test_attention_decode(void)
{
    static const struct { int64_t n, T, H, Hkv, hd; int32_t p0; enum dtype dt; int flags, mode; const char *what; } cs[] = {
        {1, 1, 32, 8, 128, 0, DTYPE_F16, ATTN_CAUSAL, 0, "one key"},
        {1, 32, 32, 8, 128, 31, DTYPE_F16, ATTN_CAUSAL, 0, "one tile"},
        {1, 513, 32, 8, 128, 512, DTYPE_F16, ATTN_CAUSAL, 0, "16 tiles + 1 key"},
        {1, 1025, 32, 8, 128, 1024, DTYPE_BF16, ATTN_CAUSAL, 0, "32 tiles + 1 key, bf16"},
        {1, 1000, 8, 8, 128, 999, DTYPE_F16, ATTN_CAUSAL, 0, "GQA 1:1, not a tile multiple"},
        {1, 4099, 32, 8, 64, 4098, DTYPE_F16, ATTN_CAUSAL, 0, "hd 64 (64-key tiles)"},
        {2, 4097, 32, 8, 128, 0, DTYPE_F16, 0, 0, "2 rows non-causal (8 slots)"},
        {5, 777, 32, 8, 128, 772, DTYPE_BF16, ATTN_CAUSAL, 0, "3 row blocks, causal per row, bf16"},
        {8, 300, 8, 8, 64, 292, DTYPE_BF16, ATTN_CAUSAL, 0, "GQA 1:1 hd 64, 8 rows, bf16"},
        {1, 20000, 32, 8, 128, 19999, DTYPE_F16, ATTN_CAUSAL, 0, "20000 keys"},
        {1, 8192, 32, 8, 128, 544, DTYPE_F16, ATTN_CAUSAL, 1, "pos: cache 8192, 545 keys"},
        {1, 4096, 32, 8, 128, 0, DTYPE_BF16, ATTN_CAUSAL, 1, "pos: first token, bf16"},
        {3, 2048, 32, 8, 128, 1500, DTYPE_F16, ATTN_CAUSAL, 2, "paged pos, 3 rows"},
        {1, 8192, 8, 8, 128, 4096, DTYPE_F16, ATTN_CAUSAL, 2, "paged pos GQA 1:1, 4097 keys"},
        {1, 17, 32, 8, 128, 16, DTYPE_F16, ATTN_CAUSAL, 0, "17 keys (a step + 1)"},
        {1, 4096, 32, 8, 128, 16, DTYPE_BF16, ATTN_CAUSAL, 2, "paged pos, 17 keys of 4096, bf16"},
        {4, 96, 32, 8, 64, 27, DTYPE_F16, ATTN_CAUSAL, 1, "pos, 4 rows over 28..31 keys, hd 64"},
    };
    static const int variants[] = {0, 1, 2, 4, 8, 16, DEC_VAR_CLUSTER, -1, DEC_VAR_TC(0, 0), DEC_VAR_TC(1, 0),
                                   DEC_VAR_TC(2, 0), DEC_VAR_TC(4, 1), DEC_VAR_TC(2, 3), DEC_VAR_TC(1, 7),
                                   DEC_VAR_TC(4, 99), DEC_VAR_TC(8, 0), DEC_VAR_TCC(0, 0), DEC_VAR_TCC(4, 2),
                                   DEC_VAR_TCC(2, 8), DEC_VAR_TCC(1, 16), DEC_VAR_TCC(8, 16)};
    const int tc = cuda_attention_tc_able(0);
    int maxcl[5];
    cuda_attention_cluster_caps(0, maxcl);
    const int able = maxcl[0] > 0;
    printf("  cluster kernel on this device: %s", able ? "yes" : "no (split-K only)");
    if (able) printf(" (clusters held at once, of 2 / 4 / 8 / 16 blocks: %d / %d / %d / %d)", maxcl[1], maxcl[2], maxcl[3], maxcl[4]);
    printf("\n");
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        const int64_t n = cs[c].n, T = cs[c].T, H = cs[c].H, Hkv = cs[c].Hkv, hd = cs[c].hd;
        const int mode = cs[c].mode;
        struct tensor q = h_rand(cs[c].dt, 3, n, H, hd, 2.0f), k = h_rand(cs[c].dt, 3, T, Hkv, hd, 2.0f);
        struct tensor v = h_rand(cs[c].dt, 3, T, Hkv, hd, 1.0f), ref = h_new(cs[c].dt, 3, n, H, hd);
        struct tensor pos = h_new(DTYPE_I32, 1, n, 0, 0);
        for (int64_t i = 0; i < n; i++) ((int32_t *)pos.data)[i] = cs[c].p0 + (int32_t)i;
        const int64_t mb = (cs[c].p0 + n + KV_BLOCK - 1) / KV_BLOCK;
        struct tensor tab = h_table(0, mode == 2 ? mb : 1, mode == 2 ? T / KV_BLOCK : 1);
        const float scale = 1.0f / sqrtf((float)hd);
        if (mode == 0) op_attention(&ref, &q, &k, &v, cs[c].p0, scale, cs[c].flags);
        else op_attention_pos(&ref, &q, &k, &v, &pos, mode == 2 ? &tab : NULL, scale, cs[c].flags);
        struct tensor dq = d_from(&q), dk = d_from(&k), dv = d_from(&v), dp = d_from(&pos), dt = d_from(&tab);
        for (size_t w = 0; w < sizeof variants / sizeof variants[0]; w++) {
            const int var = variants[w];
            const int is_tcc = var >= DEC_VAR_TCC(0, 0), is_tc = var >= DEC_VAR_TC(0, 0) && !is_tcc;
            const int is_cl = var > 0 && !is_tc && !is_tcc;
            int e = 0;
            while (is_cl && var != DEC_VAR_CLUSTER && (1 << e) < var) e++;
            while (is_tcc && (1 << e) < var % 100) e++;
            for (int rep = 0; rep < (var == 0 || is_tcc || (is_tc && var % 100 != 1) ? 2 : 1); rep++) {
                struct tensor dout = d_new(cs[c].dt, 3, n, H, hd);
                const int ran = cuda_attention_decode_variant(&dout, &dq, &dk, &dv, mode ? &dp : NULL, mode == 2 ? &dt : NULL,
                                                              NULL, NULL, cs[c].p0, scale, cs[c].flags, var);
                char lab[24], cas[128];
                if (is_tcc) snprintf(lab, sizeof lab, "tcc W%d C%d", (var - 2000) / 100, var % 100);
                else if (is_tc) snprintf(lab, sizeof lab, "tc W%d S%d", (var - 1000) / 100, var % 100);
                else if (var == DEC_VAR_CLUSTER) snprintf(lab, sizeof lab, "cluster auto");
                else if (var > 0) snprintf(lab, sizeof lab, "cluster %d", var);
                else snprintf(lab, sizeof lab, "%s", var == 0 ? "split-K" : "auto");
                snprintf(cas, sizeof cas, "n%lld T%lld H%lld/%lld hd%lld %s %s (%s)", (long long)n, (long long)T,
                         (long long)H, (long long)Hkv, (long long)hd, dtype_name(cs[c].dt), lab, cs[c].what);
                if (var == 0) T_EQ_INT(ran, 1);
                else if (var < 0) /* the rule: on sm_90 with tensor cores the cluster-merged kernel for <= 31 groups */
                    T_ASSERTF(tc && able && dec_groups(n, H, Hkv) <= 31 ? ran == 4 : ran == 1 || (able && ran == 2) || (tc && ran == 3),
                              "auto ran %d", ran);
                else if (is_tc) T_EQ_INT(ran, tc ? 3 : 0);
                else if (is_tcc) T_EQ_INT(ran, tc && able && (var % 100 == 0 || maxcl[e] > 0) ? 4 : 0);
                else T_EQ_INT(ran, able && maxcl[e] > 0 ? 2 : 0);
                if (ran) check_close("attn_dec", cas, &dout, &ref, tol_for(cs[c].dt));
                else printf("  %-10s %-52s not run on this device\n", "attn_dec", cas);
                t_free(&dout);
            }
        }
        t_free(&q), t_free(&k), t_free(&v), t_free(&ref), t_free(&pos), t_free(&tab);
        t_free(&dq), t_free(&dk), t_free(&dv), t_free(&dp), t_free(&dt);
    }
}

static void test_argmax_dev(void)
{
    const int64_t n = 3, V = 128256;
    struct tensor x = h_rand(DTYPE_F32, 2, n, V, 0, 5.0f), ids = h_new(DTYPE_I32, 1, n, 0, 0);
    float *f = x.data;
    f[V + 7] = 20.0f, f[V + 70000] = 20.0f; /* a tie in row 1: the first index wins */
    f[2 * V + V - 1] = 30.0f;
    op_argmax_dev(&x, &ids);
    struct tensor dx = d_from(&x), di = d_new(DTYPE_I32, 1, n, 0, 0);
    op_argmax_dev(&dx, &di);
    check_close("argmax_dev", "[3,128256] f32 -> device ids", &di, &ids, TOL_EXACT);
    T_EQ_INT(((int32_t *)ids.data)[1], 7);
    T_EQ_INT(((int32_t *)ids.data)[2], V - 1);
    t_free(&x), t_free(&ids), t_free(&dx), t_free(&di);
}

/* A captured decode-like step (RoPE + KV append at a device position, attention over the cache,
 * argmax into device ids, position advance) replayed at successive positions against the CPU. The
 * cache is paged as the engine's (a shuffled table of 64 blocks over a pool of 128); when the steps
 * reach a new block (position 1008) the host points that table entry at a block the table did not
 * hold, outside the graph, as llm.c does: the replay must read the table from device memory. */
static void test_graph(void)
{
    const int64_t H = 32, Hkv = 8, hd = 128, T = 2048, mb = 64;
    const int steps = 4;
    const int32_t p0 = 1006;
    struct tensor tab = h_table(0, mb, T / KV_BLOCK), dtab = d_from(&tab);
    struct tensor kc = h_rand(DTYPE_F16, 3, T, Hkv, hd, 2.0f), vc = h_rand(DTYPE_F16, 3, T, Hkv, hd, 1.0f);
    struct tensor pos = h_new(DTYPE_I32, 1, 1, 0, 0), out = h_new(DTYPE_F16, 3, 1, H, hd);
    struct tensor q = h_new(DTYPE_F16, 3, 1, H, hd), k = h_new(DTYPE_F16, 3, 1, Hkv, hd), v = h_new(DTYPE_F16, 3, 1, Hkv, hd);
    struct tensor lg = h_new(DTYPE_F32, 2, 1, H * hd, 0), ids = h_new(DTYPE_I32, 1, 1, 0, 0);
    *(int32_t *)pos.data = p0;
    struct tensor dkc = d_from(&kc), dvc = d_from(&vc), dp = d_from(&pos), dout = d_new(DTYPE_F16, 3, 1, H, hd);
    struct tensor dq = d_new(DTYPE_F16, 3, 1, H, hd), dk = d_new(DTYPE_F16, 3, 1, Hkv, hd), dv = d_new(DTYPE_F16, 3, 1, Hkv, hd);
    struct tensor dlg = d_new(DTYPE_F32, 2, 1, H * hd, 0), dids = d_new(DTYPE_I32, 1, 1, 0, 0);
    const float scale = 1.0f / sqrtf((float)hd);
    struct dev_graph *g = NULL;
    struct err e;
    for (int st = 0; st < steps; st++) {
        h_fill(&q, 2.0f, 0.0f), h_fill(&k, 2.0f, 0.0f), h_fill(&v, 1.0f, 0.0f);
        op_copy(&dq, &q), op_copy(&dk, &k), op_copy(&dv, &v); /* outside the graph */
        if (p0 + st == 1008) { /* a new block for positions 1008..: one the table does not hold */
            int32_t *t = tab.data, fresh = 0;
            for (int again = 1; again;) {
                again = 0;
                for (int64_t i = 0; i < mb; i++)
                    if (t[i] == fresh) again = 1;
                fresh += again;
            }
            t[1008 / KV_BLOCK] = fresh;
            op_copy(&dtab, &tab);
        }
        /* CPU: the step */
        op_rope_qk(&q, &k, &pos, 500000.0, &v, &kc, &vc, &tab);
        op_attention_pos(&out, &q, &kc, &vc, &pos, &tab, scale, ATTN_CAUSAL);
        op_copy(&lg, &out);
        op_argmax_dev(&lg, &ids);
        op_add_i32(&pos, 1);
        /* GPU: eager at step 0 (sizes the scratch), captured once, replayed after */
        if (st <= 1) {
            if (st == 1) T_ASSERTF(dev_graph_begin(dq.dev, &e) == 0, "%s", e.msg);
            op_rope_qk(&dq, &dk, &dp, 500000.0, &dv, &dkc, &dvc, &dtab);
            op_attention_pos(&dout, &dq, &dkc, &dvc, &dp, &dtab, scale, ATTN_CAUSAL);
            op_copy(&dlg, &dout);
            op_argmax_dev(&dlg, &dids);
            op_add_i32(&dp, 1);
            if (st == 1) {
                g = dev_graph_end(dq.dev, &e);
                T_ASSERTF(g != NULL, "%s", e.msg);
                if (!g) break;
            }
        }
        if (st >= 1) T_ASSERTF(dev_graph_launch(g, &e) == 0, "%s", e.msg);
        char cas[96];
        snprintf(cas, sizeof cas, "step %d at position %d (%s)", st, p0 + st, st ? "graph replay" : "eager");
        check_close("graph", cas, &dout, &out, TOL_F16);
        int32_t got = -1;
        struct tensor hg = tensor_make(DTYPE_I32, device_cpu(), &got, 1, (int64_t)1);
        op_copy(&hg, &dids); /* the 4-byte token copy */
        T_EQ_INT(got, *(int32_t *)ids.data);
    }
    check_close("graph", "K cache after the steps", &dkc, &kc, TOL_F16);
    check_close("graph", "V cache after the steps", &dvc, &vc, TOL_EXACT);
    check_close("graph", "position after the steps", &dp, &pos, TOL_EXACT);
    T_ASSERT(dev_graph_begin(device_cpu(), &e) == -1);
    /* an eager op that grows a scratch buffer (argmax over 65536 rows) makes the graph stale */
    struct tensor big = h_rand(DTYPE_F32, 2, 65536, 3, 0, 1.0f), dbig = d_from(&big);
    int32_t *am = malloc(65536 * sizeof(int32_t));
    CHECK(am);
    op_argmax(&dbig, am);
    T_ASSERT(!g || dev_graph_launch(g, &e) == -1);
    free(am), t_free(&big), t_free(&dbig);
    dev_graph_free(g);
    t_free(&kc), t_free(&vc), t_free(&pos), t_free(&out), t_free(&q), t_free(&k), t_free(&v), t_free(&lg), t_free(&ids);
    t_free(&dkc), t_free(&dvc), t_free(&dp), t_free(&dout), t_free(&dq), t_free(&dk), t_free(&dv), t_free(&dlg);
    t_free(&dids), t_free(&tab), t_free(&dtab);
}

/* The decode attention's early loads (DEV_OVERLAP_EARLY: positions, block table and the first step's K/V of earlier
 * steps read before its pdl_wait) against the same step without them, bit for bit, as the engine runs it: per step
 * q, k, v from F16 GEMVs (full launches) of an input copied in outside the graph, RoPE + the KV append, the
 * attention over a paged cache of 2,048 rows (the tensor-core kernel), the position advance, captured once and
 * replayed; 40 steps from position 985 (steps of the kernel's 16 keys and cache blocks begin and end among them).
 * The outputs of both modes are kept per step and compared, and each against the CPU twin every 8 steps. Per
 * decode kernel (dev_set_attn_kernel): the rule's, the cluster-merged tensor-core kernel and the cluster kernel
 * (sm_90; elsewhere the rule's again), each of which loads keys of earlier steps before its wait. */
static void attention_early_case(enum dev_attn kern, const char *kname)
{
    const int64_t H = 32, Hkv = 8, hd = 128, T = 2048, d = 256;
    enum { steps = 40 };
    const int32_t p0 = 985;
    struct tensor tab = h_table(0, T / KV_BLOCK, T / KV_BLOCK), dtab = d_from(&tab);
    struct tensor kc0 = h_rand(DTYPE_F16, 3, T, Hkv, hd, 2.0f), vc0 = h_rand(DTYPE_F16, 3, T, Hkv, hd, 1.0f);
    struct tensor wq = h_rand(DTYPE_F16, 2, H * hd, d, 0, 0.2f), wk = h_rand(DTYPE_F16, 2, Hkv * hd, d, 0, 0.2f);
    struct tensor wv = h_rand(DTYPE_F16, 2, Hkv * hd, d, 0, 0.2f), x = h_new(DTYPE_F16, 2, 1, d, 0);
    struct tensor dwq = d_from(&wq), dwk = d_from(&wk), dwv = d_from(&wv), dx = d_new(DTYPE_F16, 2, 1, d, 0);
    struct tensor dq = d_new(DTYPE_F16, 3, 1, H, hd), dk = d_new(DTYPE_F16, 3, 1, Hkv, hd), dv = d_new(DTYPE_F16, 3, 1, Hkv, hd);
    struct tensor dq2 = tensor_reshape(&dq, 2, 1, H * hd), dk2 = tensor_reshape(&dk, 2, 1, Hkv * hd);
    struct tensor dv2 = tensor_reshape(&dv, 2, 1, Hkv * hd), dout = d_new(DTYPE_F16, 3, 1, H, hd);
    const float scale = 1.0f / sqrtf((float)hd);
    struct tensor got[2][steps];
    memset(got, 0, sizeof got);
    for (int mode = 0; mode < 2; mode++) {
        /* the CPU twin's state for this pass (mode 0 checks against it) */
        struct tensor kc = h_new(DTYPE_F16, 3, T, Hkv, hd), vc = h_new(DTYPE_F16, 3, T, Hkv, hd), pos = h_new(DTYPE_I32, 1, 1, 0, 0);
        memcpy(kc.data, kc0.data, tensor_nbytes(&kc)), memcpy(vc.data, vc0.data, tensor_nbytes(&vc));
        *(int32_t *)pos.data = p0;
        struct tensor dkc = d_from(&kc), dvc = d_from(&vc), dp = d_from(&pos);
        dev_set_overlap(dx.dev, mode ? DEV_OVERLAP_SMALL : DEV_OVERLAP_DEFAULT);
        dev_set_attn_kernel(dx.dev, kern);
        g_rng = 77; /* the same inputs in both passes */
        struct dev_graph *g = NULL;
        struct err e;
        for (int st = 0; st < steps; st++) {
            h_fill(&x, 1.0f, 0.0f);
            op_copy(&dx, &x); /* outside the graph */
            if (st <= 1) {
                if (st == 1) T_ASSERTF(dev_graph_begin(dx.dev, &e) == 0, "%s", e.msg);
                op_matmul(&dq2, &dx, &dwq, NULL), op_matmul(&dk2, &dx, &dwk, NULL), op_matmul(&dv2, &dx, &dwv, NULL);
                op_rope_qk(&dq, &dk, &dp, 500000.0, &dv, &dkc, &dvc, &dtab);
                op_attention_pos(&dout, &dq, &dkc, &dvc, &dp, &dtab, scale, ATTN_CAUSAL);
                op_add_i32(&dp, 1);
                if (st == 1) {
                    g = dev_graph_end(dx.dev, &e);
                    T_ASSERTF(g != NULL, "%s", e.msg);
                    if (!g) break;
                }
            }
            if (st >= 1) T_ASSERTF(dev_graph_launch(g, &e) == 0, "%s", e.msg);
            got[mode][st] = h_copy(&dout);
            if (mode == 0 && st % 8 == 7) { /* the CPU twin of the same step */
                struct tensor q = h_new(DTYPE_F16, 3, 1, H, hd), k = h_new(DTYPE_F16, 3, 1, Hkv, hd), v = h_new(DTYPE_F16, 3, 1, Hkv, hd);
                struct tensor out = h_new(DTYPE_F16, 3, 1, H, hd), hk = h_copy(&dkc), hv = h_copy(&dvc);
                struct tensor q2 = tensor_reshape(&q, 2, 1, H * hd), k2 = tensor_reshape(&k, 2, 1, Hkv * hd);
                struct tensor v2 = tensor_reshape(&v, 2, 1, Hkv * hd);
                *(int32_t *)pos.data = p0 + st;
                op_matmul(&q2, &x, &wq, NULL), op_matmul(&k2, &x, &wk, NULL), op_matmul(&v2, &x, &wv, NULL);
                op_rope_qk(&q, &k, &pos, 500000.0, &v, NULL, NULL, NULL);
                op_attention_pos(&out, &q, &hk, &hv, &pos, &tab, scale, ATTN_CAUSAL); /* the device's cache rows */
                char cas[64];
                snprintf(cas, sizeof cas, "%s step %d at position %d (early loads)", kname, st, p0 + st);
                check_close("attn_early", cas, &got[0][st], &out, 2 * TOL_F16);
                t_free(&q), t_free(&k), t_free(&v), t_free(&out), t_free(&hk), t_free(&hv);
            }
        }
        dev_graph_free(g);
        t_free(&kc), t_free(&vc), t_free(&pos), t_free(&dkc), t_free(&dvc), t_free(&dp);
    }
    dev_set_overlap(dx.dev, DEV_OVERLAP_DEFAULT);
    dev_set_attn_kernel(dx.dev, DEV_ATTN_AUTO);
    int same = 1;
    for (int st = 0; st < steps; st++) {
        if (got[0][st].data && got[1][st].data && memcmp(got[0][st].data, got[1][st].data, tensor_nbytes(&got[0][st])))
            same = 0, fprintf(stderr, "  attention_early %s: step %d differs with and without the early loads\n", kname, st);
        t_free(&got[0][st]), t_free(&got[1][st]);
    }
    printf("  attention_early %-8s: %d replayed steps %s with and without the early loads\n", kname, steps,
           same ? "identical" : "DIFFER");
    T_ASSERT(same);
    t_free(&tab), t_free(&dtab), t_free(&kc0), t_free(&vc0), t_free(&wq), t_free(&wk), t_free(&wv), t_free(&x);
    t_free(&dwq), t_free(&dwk), t_free(&dwv), t_free(&dx), t_free(&dq), t_free(&dk), t_free(&dv), t_free(&dout);
}

static void test_attention_early(void)
{
    attention_early_case(DEV_ATTN_AUTO, "auto");
    attention_early_case(DEV_ATTN_TCC, "tcc");
    attention_early_case(DEV_ATTN_CLUSTER, "cluster");
}

/* Decode GEMVs under programmatic dependent launch, each fed by the kernel just before it with no
 * sync in between (where a missing wait would read a stale input), eager and captured. */
static void test_overlap(void)
{
    const int64_t d = 4096, o1 = 6144, o2 = 1000;
    struct tensor x = h_rand(DTYPE_F16, 2, 1, d, 0, 2.0f), lw = h_new(DTYPE_F16, 1, d, 0, 0);
    h_fill(&lw, 0.5f, 1.0f);
    struct tensor w1 = h_rand(DTYPE_F16, 2, o1, d, 0, 0.05f), w2 = h_rand(DTYPE_F16, 2, o2, o1, 0, 0.05f);
    struct tensor xn = h_new(DTYPE_F16, 2, 1, d, 0), y1 = h_new(DTYPE_F16, 2, 1, o1, 0), y2 = h_new(DTYPE_F16, 2, 1, o2, 0);
    op_rmsnorm(&xn, &x, &lw, 1e-5f);
    op_matmul(&y1, &xn, &w1, NULL);
    op_matmul(&y2, &y1, &w2, NULL);
    struct tensor dx = d_from(&x), dlw = d_from(&lw), dw1 = d_from(&w1), dw2 = d_from(&w2);
    struct tensor dxn = d_new(DTYPE_F16, 2, 1, d, 0), dy1 = d_new(DTYPE_F16, 2, 1, o1, 0), dy2 = d_new(DTYPE_F16, 2, 1, o2, 0);
    dev_set_overlap(dx.dev, 1);
    for (int graph = 0; graph < 2; graph++) {
        struct err e;
        struct dev_graph *g = NULL;
        struct tensor poison = h_rand(DTYPE_F16, 2, 1, o2, 0, 1.0f);
        op_copy(&dy2, &poison); /* an output nothing wrote fails */
        t_free(&poison);
        if (graph) T_ASSERTF(dev_graph_begin(dx.dev, &e) == 0, "%s", e.msg);
        for (int rep = 0; rep < 3; rep++) { /* repeated so a race has several chances to show */
            op_rmsnorm(&dxn, &dx, &dlw, 1e-5f);
            op_matmul(&dy1, &dxn, &dw1, NULL);
            op_matmul(&dy2, &dy1, &dw2, NULL);
        }
        if (graph) {
            g = dev_graph_end(dx.dev, &e);
            T_ASSERTF(g && dev_graph_launch(g, &e) == 0, "%s", e.msg);
        }
        check_close("overlap", graph ? "rmsnorm -> gemv 6144x4096 -> gemv 1000x6144, graph" :
                                       "rmsnorm -> gemv 6144x4096 -> gemv 1000x6144, eager", &dy2, &y2, 2 * TOL_F16);
        dev_graph_free(g);
    }
    dev_set_overlap(dx.dev, DEV_OVERLAP_DEFAULT);
    t_free(&x), t_free(&lw), t_free(&w1), t_free(&w2), t_free(&xn), t_free(&y1), t_free(&y2);
    t_free(&dx), t_free(&dlw), t_free(&dw1), t_free(&dw2), t_free(&dxn), t_free(&dy1), t_free(&dy2);
}

/* ---- the persistent GEMV and the fused decode ops (cuda_pgemv.cu) ---- */

int cuda_pgemv_config(struct tensor *y, const struct tensor *x, const struct tensor *w, int bps, int u);
void cuda_pgemv_set_trigger(int ordinal, int early);
void cuda_gemv_config(struct tensor *y, const struct tensor *x, const struct tensor *w, int rpb, int unroll);


/* op_matmul on the persistent GEMV: against the CPU twin, and bit for bit against the one-pass GEMV
 * with one warp per row (rows per block 8: the same per-row summation order) and across launch shapes
 * (1..4 blocks per SM, 4 or 8 loads per lane): partial chunks (k = 1000, 64, 8), n = 1..8, a bias. */
static void test_pgemv(void)
{
    static const struct { int64_t n, k, o; int bias; } cs[] = {
        {1, 4096, 1000, 0}, {3, 1000, 777, 1}, {8, 64, 3000, 0}, {2, 14336, 300, 0}, {5, 8, 50, 1}, {1, 4096, 6144, 0},
    };
    cuda_set_gemv16_max(0, 8);
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        const int64_t n = cs[c].n, k = cs[c].k, o = cs[c].o;
        struct tensor x = h_rand(DTYPE_F16, 2, n, k, 0, 1.0f), w = h_rand(DTYPE_F16, 2, o, k, 0, 1.0f);
        struct tensor b = h_rand(DTYPE_F16, 1, o, 0, 0, 4.0f), ref = h_new(DTYPE_F16, 2, n, o, 0);
        op_matmul(&ref, &x, &w, cs[c].bias ? &b : NULL);
        struct tensor dx = d_from(&x), dw = d_from(&w), db = d_from(&b), dy = d_new(DTYPE_F16, 2, n, o, 0);
        op_matmul(&dy, &dx, &dw, cs[c].bias ? &db : NULL);
        char cas[96];
        snprintf(cas, sizeof cas, "n%lld k%lld o%lld f16%s vs cpu", (long long)n, (long long)k, (long long)o,
                 cs[c].bias ? " +b" : "");
        check_close("pgemv", cas, &dy, &ref, TOL_F16);
        struct tensor got = h_copy(&dy);
        if (!cs[c].bias) { /* the one-pass kernel, one warp per row */
            struct tensor d1 = d_new(DTYPE_F16, 2, n, o, 0);
            cuda_gemv_config(&d1, &dx, &dw, 8, 4);
            snprintf(cas, sizeof cas, "n%lld k%lld o%lld = one-pass GEMV (8 rows/block)", (long long)n, (long long)k,
                     (long long)o);
            check_close("pgemv", cas, &d1, &got, TOL_EXACT);
            t_free(&d1);
        }
        for (int bps = 1; bps <= 4; bps++)
            for (int u = 4; u <= 8; u += 4) {
                struct tensor d2 = d_new(DTYPE_F16, 2, n, o, 0);
                T_ASSERT(cuda_pgemv_config(&d2, &dx, &dw, bps, u) == 1);
                snprintf(cas, sizeof cas, "n%lld k%lld o%lld, %d blocks/SM, %d loads: same bits", (long long)n,
                         (long long)k, (long long)o, bps, u);
                if (!cs[c].bias) check_close("pgemv", cas, &d2, &got, TOL_EXACT);
                t_free(&d2);
            }
        t_free(&got);
        t_free(&x), t_free(&w), t_free(&b), t_free(&ref), t_free(&dx), t_free(&dw), t_free(&db), t_free(&dy);
    }
    cuda_set_gemv16_max(0, 1);
}

/* op_rmsnorm_matmul: against the CPU twin (the plain ops), and bit for bit against the plain ops on the
 * GPU (op_rmsnorm, then op_matmul per part). The one-kernel path: F16, n <= 8 (gemv16_max raised),
 * norm rows in registers (k <= 4096) and looped (k = 5000), 1..4 parts, no norm; the plain-op path:
 * k % 8 != 0, an F32 x, n above gemv16_max. */
static void test_rmsnorm_matmul(void)
{
    static const struct { int64_t n, k; int np; int64_t parts[4]; enum dtype xt, nt; int norm, gmax; const char *what; } cs[] = {
        {1, 4096, 3, {4096, 1024, 1024}, DTYPE_F16, DTYPE_F16, 1, 1, "q|k|v of the 8B, one kernel"},
        {1, 4096, 1, {1000}, DTYPE_F16, DTYPE_F32, 1, 1, "f32 norm weight"},
        {3, 1000, 4, {300, 7, 500, 1}, DTYPE_F16, DTYPE_F16, 1, 8, "4 parts, partial chunks"},
        {8, 4096, 2, {1024, 2048}, DTYPE_F16, DTYPE_F16, 1, 8, "8 rows"},
        {1, 5000, 1, {200}, DTYPE_F16, DTYPE_F16, 1, 1, "norm row > 4096 (looped)"},
        {2, 512, 2, {33, 64}, DTYPE_F16, DTYPE_F16, 0, 8, "no norm"},
        {2, 36, 2, {10, 20}, DTYPE_F16, DTYPE_F16, 1, 8, "k % 8 != 0: plain ops"},
        {1, 256, 1, {100}, DTYPE_F32, DTYPE_F32, 1, 8, "f32: plain ops"},
        {4, 4096, 3, {4096, 1024, 1024}, DTYPE_F16, DTYPE_F16, 1, 1, "4 rows, gemv16_max 1: plain ops (cuBLAS)"},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        const int64_t n = cs[c].n, k = cs[c].k;
        const int np = cs[c].np;
        int64_t o = 0;
        for (int i = 0; i < np; i++) o += cs[c].parts[i];
        cuda_set_gemv16_max(0, cs[c].gmax);
        struct tensor x = h_rand(cs[c].xt, 2, n, k, 0, 3.0f), w = h_rand(cs[c].xt, 2, o, k, 0, 1.0f);
        struct tensor nw = h_new(cs[c].nt, 1, k, 0, 0);
        h_fill(&nw, 0.5f, 1.0f);
        struct tensor ref[4], dys[4], pys[4], *rp[4], *dp[4];
        for (int i = 0; i < np; i++) {
            ref[i] = h_new(cs[c].xt, 2, n, cs[c].parts[i], 0), rp[i] = &ref[i];
            dys[i] = d_new(cs[c].xt, 2, n, cs[c].parts[i], 0), dp[i] = &dys[i];
            pys[i] = d_new(cs[c].xt, 2, n, cs[c].parts[i], 0);
        }
        const struct tensor *nwp = cs[c].norm ? &nw : NULL;
        op_rmsnorm_matmul(rp, np, &x, nwp, 1e-5f, &w);
        struct tensor dx = d_from(&x), dw = d_from(&w), dnw = d_from(&nw);
        op_rmsnorm_matmul(dp, np, &dx, cs[c].norm ? &dnw : NULL, 1e-5f, &dw);
        /* the plain ops on the GPU */
        struct tensor dxn = d_new(cs[c].xt, 2, n, k, 0);
        if (cs[c].norm) op_rmsnorm(&dxn, &dx, &dnw, 1e-5f);
        else op_copy(&dxn, &dx);
        for (int i = 0, off = 0; i < np; off += (int)cs[c].parts[i], i++) {
            struct tensor wi = tensor_rows_view(&dw, off, cs[c].parts[i]);
            op_matmul(&pys[i], &dxn, &wi, NULL);
        }
        for (int i = 0; i < np; i++) {
            char cas[112];
            snprintf(cas, sizeof cas, "n%lld k%lld part %d/%d [%lld] %s (%s)", (long long)n, (long long)k, i, np,
                     (long long)cs[c].parts[i], dtype_name(cs[c].xt), cs[c].what);
            check_close("norm_mm", cas, &dys[i], &ref[i], tol_for(cs[c].xt));
            struct tensor plain = h_copy(&pys[i]);
            snprintf(cas, sizeof cas, "n%lld k%lld part %d = the plain ops on the GPU", (long long)n, (long long)k, i);
            check_close("norm_mm", cas, &dys[i], &plain, TOL_EXACT);
            t_free(&plain), t_free(&ref[i]), t_free(&dys[i]), t_free(&pys[i]);
        }
        t_free(&x), t_free(&w), t_free(&nw), t_free(&dx), t_free(&dw), t_free(&dnw), t_free(&dxn);
    }
    cuda_set_gemv16_max(0, 1);
}

/* op_rmsnorm_swiglu: against the CPU twin and bit for bit against the plain ops on the GPU (op_rmsnorm,
 * op_matmul of the gate and up halves, op_silu_mul), on the one-kernel path and the plain-op path. Without a
 * norm, one token (the plain sequence's SwiGLU epilogue, llm.swiglu: the one-pass GEMV over the joined weight,
 * rows per block 2 or 8, SwiGLU in its epilogue), the plain ops are those of llm.c: one op_matmul over the
 * joined weight, then op_silu_mul of its two halves. */
static void test_rmsnorm_swiglu(void)
{
    static const struct { int64_t n, k, f; enum dtype dt; int norm, gmax; const char *what; } cs[] = {
        {1, 4096, 2048, DTYPE_F16, 1, 1, "one kernel"},  {4, 1000, 333, DTYPE_F16, 1, 8, "4 rows, partial chunks"},
        {1, 4096, 700, DTYPE_F16, 0, 1, "no norm: epilogue, 8 rows a block"},
        {1, 4096, 4500, DTYPE_F16, 0, 1, "no norm: epilogue, 2 rows a block"},
        {1, 264, 37, DTYPE_BF16, 0, 1, "no norm, bf16: epilogue, odd gate rows"},
        {1, 512, 96, DTYPE_F32, 0, 1, "no norm, f32: epilogue"},
        {1, 16384, 64, DTYPE_F16, 0, 1, "no norm, k > 8192: the persistent kernel"},
        {2, 256, 100, DTYPE_F32, 1, 8, "f32: plain ops"},
        {3, 4096, 512, DTYPE_F16, 1, 1, "3 rows, gemv16_max 1: plain ops (cuBLAS)"},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        const int64_t n = cs[c].n, k = cs[c].k, f = cs[c].f;
        cuda_set_gemv16_max(0, cs[c].gmax);
        struct tensor x = h_rand(cs[c].dt, 2, n, k, 0, 3.0f), w = h_rand(cs[c].dt, 2, 2 * f, k, 0, 0.5f);
        struct tensor nw = h_new(cs[c].dt, 1, k, 0, 0), ref = h_new(cs[c].dt, 2, n, f, 0);
        h_fill(&nw, 0.5f, 1.0f);
        op_rmsnorm_swiglu(&ref, &x, cs[c].norm ? &nw : NULL, 1e-5f, &w);
        struct tensor dx = d_from(&x), dw = d_from(&w), dnw = d_from(&nw), dy = d_new(cs[c].dt, 2, n, f, 0);
        op_rmsnorm_swiglu(&dy, &dx, cs[c].norm ? &dnw : NULL, 1e-5f, &dw);
        struct tensor dxn = d_new(cs[c].dt, 2, n, k, 0), dg = d_new(cs[c].dt, 2, n, f, 0), du = d_new(cs[c].dt, 2, n, f, 0);
        if (cs[c].norm) op_rmsnorm(&dxn, &dx, &dnw, 1e-5f);
        else op_copy(&dxn, &dx);
        if (n == 1 && !cs[c].norm) { /* llm.c's plain ops: one GEMV over the joined weight */
            struct tensor dgu = d_new(cs[c].dt, 2, 1, 2 * f, 0), g1 = dgu, u1 = dgu;
            g1.shape[1] = u1.shape[1] = f;
            u1.data = (char *)dgu.data + f * dtype_size(cs[c].dt);
            op_matmul(&dgu, &dxn, &dw, NULL);
            op_silu_mul(&dg, &g1, &u1);
            t_free(&dgu);
        } else {
            struct tensor wg = tensor_rows_view(&dw, 0, f), wu = tensor_rows_view(&dw, f, f);
            op_matmul(&dg, &dxn, &wg, NULL);
            op_matmul(&du, &dxn, &wu, NULL);
            op_silu_mul(&dg, &dg, &du);
        }
        char cas[112];
        snprintf(cas, sizeof cas, "n%lld k%lld f%lld %s (%s)", (long long)n, (long long)k, (long long)f,
                 dtype_name(cs[c].dt), cs[c].what);
        check_close("norm_swiglu", cas, &dy, &ref, tol_for(cs[c].dt));
        struct tensor plain = h_copy(&dg);
        snprintf(cas, sizeof cas, "n%lld k%lld f%lld = the plain ops on the GPU", (long long)n, (long long)k, (long long)f);
        check_close("norm_swiglu", cas, &dy, &plain, TOL_EXACT);
        t_free(&plain);
        t_free(&x), t_free(&w), t_free(&nw), t_free(&ref), t_free(&dx), t_free(&dw), t_free(&dnw), t_free(&dy);
        t_free(&dxn), t_free(&dg), t_free(&du);
    }
    cuda_set_gemv16_max(0, 1);
}

/* op_linear with a residual (the decode GEMV's epilogue): in place (y = res, o_proj / down_proj into h)
 * and into another tensor, with and without a bias; against the CPU twin and bit for bit against
 * op_matmul + op_add on the GPU */
static void test_linear_residual(void)
{
    static const struct { int64_t n, k, o; int bias, inplace, gmax; } cs[] = {
        {1, 14336, 1024, 0, 1, 1}, {1, 4096, 4096, 0, 1, 1}, {3, 1000, 500, 1, 0, 8}, {2, 264, 77, 1, 1, 8},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        const int64_t n = cs[c].n, k = cs[c].k, o = cs[c].o;
        cuda_set_gemv16_max(0, cs[c].gmax);
        struct tensor x = h_rand(DTYPE_F16, 2, n, k, 0, 1.0f), w = h_rand(DTYPE_F16, 2, o, k, 0, 0.05f);
        struct tensor b = h_rand(DTYPE_F16, 1, o, 0, 0, 1.0f), h = h_rand(DTYPE_F16, 2, n, o, 0, 3.0f);
        struct tensor ref = h_new(DTYPE_F16, 2, n, o, 0);
        struct tensor *yr = cs[c].inplace ? &h : &ref;
        struct tensor hin = h_copy(&h); /* h before the op (a host copy of a host tensor) */
        op_linear(yr, &x, &w, cs[c].bias ? &b : NULL, LINEAR_NONE, &h);
        struct tensor dx = d_from(&x), dw = d_from(&w), db = d_from(&b), dh = d_from(&hin);
        struct tensor dout = d_new(DTYPE_F16, 2, n, o, 0), *dy = cs[c].inplace ? &dh : &dout;
        op_linear(dy, &dx, &dw, cs[c].bias ? &db : NULL, LINEAR_NONE, &dh);
        /* the plain ops on the GPU */
        struct tensor dh2 = d_from(&hin), dt = d_new(DTYPE_F16, 2, n, o, 0);
        op_matmul(&dt, &dx, &dw, cs[c].bias ? &db : NULL);
        op_add(&dh2, &dh2, &dt);
        char cas[112];
        snprintf(cas, sizeof cas, "n%lld k%lld o%lld f16%s%s", (long long)n, (long long)k, (long long)o,
                 cs[c].bias ? " +b" : "", cs[c].inplace ? " in place" : "");
        check_close("linear_res", cas, dy, yr, TOL_F16);
        struct tensor plain = h_copy(&dh2);
        snprintf(cas, sizeof cas, "n%lld k%lld o%lld = matmul + add on the GPU", (long long)n, (long long)k, (long long)o);
        check_close("linear_res", cas, dy, &plain, TOL_EXACT);
        t_free(&plain), t_free(&hin);
        t_free(&x), t_free(&w), t_free(&b), t_free(&h), t_free(&ref), t_free(&dx), t_free(&dw), t_free(&db), t_free(&dh);
        t_free(&dout), t_free(&dh2), t_free(&dt);
    }
    cuda_set_gemv16_max(0, 1);
}

/* One fused layer's GEMV chain (norm + q|k|v, o + residual, norm + gate|up + SwiGLU, down + residual,
 * final norm + head), each GEMV fed by the one before with no sync, under programmatic dependent launch
 * (the successor triggered after the last loads, and at once), eager and captured: the same bits as
 * without PDL (a missing wait would read a stale input). */
static void test_fused_chain_pdl(void)
{
    const int64_t d = 4096, f = 1536, qd = 2048, V = 3000;
    struct tensor h0 = h_rand(DTYPE_F16, 2, 1, d, 0, 2.0f), nw = h_new(DTYPE_F16, 1, d, 0, 0);
    h_fill(&nw, 0.5f, 1.0f);
    struct tensor wqkv = h_rand(DTYPE_F16, 2, qd + 1024, d, 0, 0.05f), wo = h_rand(DTYPE_F16, 2, d, qd, 0, 0.05f);
    struct tensor wgu = h_rand(DTYPE_F16, 2, 2 * f, d, 0, 0.05f), wd = h_rand(DTYPE_F16, 2, d, f, 0, 0.05f);
    struct tensor wh = h_rand(DTYPE_F16, 2, V, d, 0, 0.05f);
    struct tensor dh = d_from(&h0), dnw = d_from(&nw), dwqkv = d_from(&wqkv), dwo = d_from(&wo), dwgu = d_from(&wgu);
    struct tensor dwd = d_from(&wd), dwh = d_from(&wh);
    struct tensor dq = d_new(DTYPE_F16, 2, 1, qd, 0), dk = d_new(DTYPE_F16, 2, 1, 1024, 0), dg = d_new(DTYPE_F16, 2, 1, f, 0);
    struct tensor dl = d_new(DTYPE_F16, 2, 1, V, 0);
    struct tensor ref = {0}, href = {0};
    for (int v = 0; v < 5; v++) { /* 0: no PDL (the reference), 1-2: PDL eager, 3-4: PDL captured; odd: early trigger */
        const int pdl = v > 0, graph = v >= 3;
        dev_set_overlap(dh.dev, pdl);
        cuda_pgemv_set_trigger(0, v == 1 || v == 3);
        op_copy(&dh, &h0);
        struct tensor poison = h_rand(DTYPE_F16, 2, 1, V, 0, 1.0f);
        op_copy(&dl, &poison); /* an output nothing wrote fails */
        t_free(&poison);
        struct err e;
        struct dev_graph *g = NULL;
        if (graph) T_ASSERTF(dev_graph_begin(dh.dev, &e) == 0, "%s", e.msg);
        for (int rep = 0; rep < 3; rep++) { /* three layers, so a race has several chances to show */
            struct tensor *qk[2] = {&dq, &dk};
            op_rmsnorm_matmul(qk, 2, &dh, &dnw, 1e-5f, &dwqkv);
            op_linear(&dh, &dq, &dwo, NULL, LINEAR_NONE, &dh);
            op_rmsnorm_swiglu(&dg, &dh, &dnw, 1e-5f, &dwgu);
            op_linear(&dh, &dg, &dwd, NULL, LINEAR_NONE, &dh);
        }
        struct tensor *lo[1] = {&dl};
        op_rmsnorm_matmul(lo, 1, &dh, &dnw, 1e-5f, &dwh);
        if (graph) {
            g = dev_graph_end(dh.dev, &e);
            T_ASSERTF(g && dev_graph_launch(g, &e) == 0, "%s", e.msg);
        }
        if (v == 0) {
            ref = h_copy(&dl), href = h_copy(&dh);
        } else {
            char cas[96];
            snprintf(cas, sizeof cas, "3 fused layers + head, PDL %s, trigger %s: logits", graph ? "graph" : "eager",
                     v == 1 || v == 3 ? "at once" : "after the loads");
            check_close("fused_pdl", cas, &dl, &ref, TOL_EXACT);
            snprintf(cas, sizeof cas, "3 fused layers + head, PDL %s, trigger %s: h", graph ? "graph" : "eager",
                     v == 1 || v == 3 ? "at once" : "after the loads");
            check_close("fused_pdl", cas, &dh, &href, TOL_EXACT);
        }
        dev_graph_free(g);
    }
    dev_set_overlap(dh.dev, DEV_OVERLAP_DEFAULT);
    cuda_pgemv_set_trigger(0, 0);
    t_free(&ref), t_free(&href);
    t_free(&h0), t_free(&nw), t_free(&wqkv), t_free(&wo), t_free(&wgu), t_free(&wd), t_free(&wh);
    t_free(&dh), t_free(&dnw), t_free(&dwqkv), t_free(&dwo), t_free(&dwgu), t_free(&dwd), t_free(&dwh);
    t_free(&dq), t_free(&dk), t_free(&dg), t_free(&dl);
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

/* hooks into the CUDA files for before/after timings (cuda_gemv_config: above) */
void cuda_attention_general(struct tensor *out, const struct tensor *q, const struct tensor *k, const struct tensor *v,
                            int64_t q_pos0, float scale, int flags);

static struct tensor d_alloc(enum dtype dt, int ndim, int64_t d0, int64_t d1, int64_t d2)
{
    struct tensor t = ndim == 1 ? tensor_make(dt, device_cuda(0), NULL, 1, d0)
                      : ndim == 2 ? tensor_make(dt, device_cuda(0), NULL, 2, d0, d1)
                                  : tensor_make(dt, device_cuda(0), NULL, 3, d0, d1, d2);
    struct err e;
    t.data = dev_alloc(t.dev, tensor_nbytes(&t), &e);
    CHECKF(t.data, "%s", e.msg);
    return t;
}

/* fills a device tensor with copies of one random 16 MiB block (uniform +-amp): random data at copy speed */
static void d_fill_rand(struct tensor *t, float amp)
{
    static struct tensor src;
    static float src_amp;
    const int64_t blk = 8 << 20; /* elements of a 16-bit dtype */
    if (!src.data || src_amp != amp || src.dtype != t->dtype) {
        if (src.data) t_free(&src);
        struct tensor h = h_rand(t->dtype, 1, blk, 0, 0, amp);
        src = d_from(&h);
        src_amp = amp;
        t_free(&h);
    }
    const size_t es = dtype_size(t->dtype), total = tensor_nbytes(t), bb = (size_t)blk * es;
    for (size_t off = 0; off < total; off += bb)
        CHECK(cudaMemcpy((char *)t->data + off, src.data, total - off < bb ? total - off : bb, cudaMemcpyDeviceToDevice) ==
              cudaSuccess);
}

struct gemv_bench {
    struct tensor *w, x, y;
    int nbuf, rpb, unroll, persistent; /* persistent: the pgemv kernel with rpb blocks/SM, unroll loads (0: op_matmul) */
};

static void gemv_step(int rep, void *p)
{
    struct gemv_bench *b = p;
    if (!b->persistent) cuda_gemv_config(&b->y, &b->x, &b->w[rep % b->nbuf], b->rpb, b->unroll);
    else if (b->rpb > 0) cuda_pgemv_config(&b->y, &b->x, &b->w[rep % b->nbuf], b->rpb, b->unroll);
    else op_matmul(&b->y, &b->x, &b->w[rep % b->nbuf], NULL);
}

struct attn_bench {
    struct tensor q, out, *k, *v, pos;
    int nbuf, variant, pos_form; /* variant: a decode variant code, ATTN_B_AUTO (op_attention / _pos) */
};
#define ATTN_B_AUTO -1

static void attn_step(int rep, void *p)
{
    struct attn_bench *b = p;
    int i = rep % b->nbuf;
    const float sc = 0.08838834764831845f;
    const int64_t p0 = b->k[i].shape[0] - 1;
    if (b->variant == ATTN_B_AUTO && b->pos_form)
        op_attention_pos(&b->out, &b->q, &b->k[i], &b->v[i], &b->pos, NULL, sc, ATTN_CAUSAL);
    else if (b->variant == ATTN_B_AUTO)
        op_attention(&b->out, &b->q, &b->k[i], &b->v[i], p0, sc, ATTN_CAUSAL);
    else
        cuda_attention_decode_variant(&b->out, &b->q, &b->k[i], &b->v[i], b->pos_form ? &b->pos : NULL, NULL, NULL,
                                      NULL, b->pos_form ? 0 : p0, sc, ATTN_CAUSAL, b->variant);
}

/* buffers are rotated so the working set is >= 256 MB, beyond the H200's 60 MB L2 */
static int rotation(size_t bytes)
{
    size_t want = (size_t)256 << 20;
    int n = (int)((want + bytes - 1) / bytes);
    return n < 2 ? 2 : n > 64 ? 64 : n;
}

static void bench_gemv(void)
{
    static const int64_t shapes[][3] = {{4096, 4096, 1},  {1024, 4096, 1},  {6144, 4096, 1},   {14336, 4096, 1},
                                        {28672, 4096, 1}, {4096, 14336, 1}, {128256, 4096, 1}, {14336, 4096, 8}};
    static const int cfg[][2] = {{1, 4}, {2, 4}, {4, 4}, {8, 4}, {1, 8}, {2, 8}, {4, 8}, {8, 8}};
    printf("GEMV fp16 (y[n,o] = x[n,k] w[o,k]^T), weights rotated beyond L2, us and GB/s of weights:\n");
    printf("  one-pass kernel (cuda_gemv.cu): auto shape, and the best of a sweep (rows/block, unroll);\n");
    printf("  persistent kernel (cuda_pgemv.cu): op_matmul's default launch shape (PGEMV_DEFAULT_*), with PDL, and the\n"
           "  best of a sweep (blocks/SM, loads per lane)\n");
    printf("  %-20s %-18s %-24s %-18s %-18s %s\n", "shape", "one-pass auto", "one-pass best", "persistent",
           "persistent + PDL", "persistent best");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t o = shapes[s][0], k = shapes[s][1], n = shapes[s][2];
        struct gemv_bench b = {0};
        size_t wbytes = (size_t)(o * k) * 2;
        b.nbuf = rotation(wbytes);
        b.w = calloc((size_t)b.nbuf, sizeof *b.w);
        CHECK(b.w);
        for (int i = 0; i < b.nbuf; i++) {
            b.w[i] = d_alloc(DTYPE_F16, 2, o, k, 0);
            d_fill_rand(&b.w[i], 0.02f);
        }
        struct tensor hx = h_rand(DTYPE_F16, 2, n, k, 0, 1.0f);
        b.x = d_from(&hx);
        b.y = d_new(DTYPE_F16, 2, n, o, 0);
        b.rpb = 0, b.unroll = 0;
        const double old_auto = bench_ms(200, gemv_step, &b);
        double old_best = 1e30;
        int obi = 0;
        for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
            b.rpb = cfg[c][0], b.unroll = cfg[c][1];
            double ms = bench_ms(200, gemv_step, &b);
            if (ms < old_best) old_best = ms, obi = (int)c;
        }
        b.persistent = 1;
        b.rpb = 0, b.unroll = 0; /* op_matmul: the context's launch shape */
        cuda_set_gemv16_max(0, 8);
        const double pers = bench_ms(200, gemv_step, &b);
        dev_set_overlap(device_cuda(0), 1);
        const double pdl = bench_ms(200, gemv_step, &b);
        dev_set_overlap(device_cuda(0), DEV_OVERLAP_DEFAULT);
        cuda_set_gemv16_max(0, 1);
        double best = 1e30;
        int bb = 0, bu = 0;
        for (int bps = 1; bps <= 4; bps++)
            for (int u = 4; u <= 8; u += 4) {
                b.rpb = bps, b.unroll = u;
                double ms = bench_ms(200, gemv_step, &b);
                if (ms < best) best = ms, bb = bps, bu = u;
            }
        char shp[32];
        snprintf(shp, sizeof shp, "n=%lld %lldx%lld", (long long)n, (long long)o, (long long)k);
#define GB(ms) ((double)wbytes / ((ms) * 1e-3) / 1e9)
        printf("  %-20s %6.1f us %5.0f GB/s %6.1f us %5.0f GB/s (%d,%d) %6.1f us %5.0f GB/s %6.1f us %5.0f GB/s %6.1f us "
               "%5.0f GB/s (%d,%d)\n", shp, old_auto * 1e3, GB(old_auto), old_best * 1e3, GB(old_best), cfg[obi][0],
               cfg[obi][1], pers * 1e3, GB(pers), pdl * 1e3, GB(pdl), best * 1e3, GB(best), bb, bu);
#undef GB
        for (int i = 0; i < b.nbuf; i++) t_free(&b.w[i]);
        free(b.w);
        t_free(&hx), t_free(&b.x), t_free(&b.y);
    }
}

struct mm_bench {
    struct tensor *w, x, y;
    int nbuf;
};

static void mm_step(int rep, void *p)
{
    struct mm_bench *b = p;
    op_matmul(&b->y, &b->x, &b->w[rep % b->nbuf], NULL);
}

/* the batched decode step's matmuls (op_matmul as llm.c calls it: B rows, fp16) at the layer shapes,
 * weights rotated beyond L2: how close M = B rows get to the read rate */
static void bench_rows(void)
{
    static const int64_t shapes[][2] = {{6144, 4096}, {4096, 4096}, {28672, 4096}, {4096, 14336}};
    static const int64_t ns[] = {1, 2, 8, 16, 32, 64};
    printf("op_matmul fp16 with B rows (the batched step), weights rotated beyond L2, us and GB/s of weights:\n");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t o = shapes[s][0], k = shapes[s][1];
        struct mm_bench b;
        const size_t wbytes = (size_t)(o * k) * 2;
        b.nbuf = rotation(wbytes);
        b.w = calloc((size_t)b.nbuf, sizeof *b.w);
        CHECK(b.w);
        for (int i = 0; i < b.nbuf; i++) {
            b.w[i] = d_alloc(DTYPE_F16, 2, o, k, 0);
            d_fill_rand(&b.w[i], 0.02f);
        }
        printf("  %6lldx%-6lld", (long long)o, (long long)k);
        for (size_t j = 0; j < sizeof ns / sizeof ns[0]; j++) {
            struct tensor hx = h_rand(DTYPE_F16, 2, ns[j], k, 0, 1.0f);
            b.x = d_from(&hx);
            b.y = d_new(DTYPE_F16, 2, ns[j], o, 0);
            const double ms = bench_ms(100, mm_step, &b);
            printf("  B=%-2lld %6.1f us %5.0f GB/s", (long long)ns[j], ms * 1e3, (double)wbytes / (ms * 1e-3) / 1e9);
            t_free(&hx), t_free(&b.x), t_free(&b.y);
        }
        printf("\n");
        for (int i = 0; i < b.nbuf; i++) t_free(&b.w[i]);
        free(b.w);
    }
}

/* Decode attention at n = 1 (Llama-3-8B shapes), KV rotated beyond L2, old kernels against the
 * tensor-core kernel (new) at keys 512 .. 32768, in both call forms: q_pos0 (op_attention) and device
 * positions over a cache of capacity 2T (the decode graph's form: grids sized by the capacity).
 * Columns: split-K, the cluster kernel with its automatic splits, the tensor-core kernel with 1, 2, 4
 * warps per block and its automatic splits, the automatic choice; then, per row, the best old kernel,
 * the best tensor-core one and old/new. Then the tensor-core kernel's (W, S) sweep (q_pos0 form): the
 * data for dec_rules and tc_splits in cuda_attention_decode.cu. */
static void bench_attention(void)
{
    int maxcl[5];
    cuda_attention_cluster_caps(0, maxcl);
    const int tc = cuda_attention_tc_able(0), cl = maxcl[0] > 0;
    printf("attention decode fp16 (n=1, H=32, Hkv=8, hd=128, causal), KV rotated beyond L2, us per call;\n"
           "cluster kernel: %s (clusters of 2 / 4 / 8 / 16 blocks held at once: %d / %d / %d / %d), tensor-core kernel: %s\n",
           cl ? "yes" : "no", maxcl[1], maxcl[2], maxcl[3], maxcl[4], tc ? "yes" : "no");
    static const int64_t Ts[] = {512, 1024, 2048, 4096, 8192, 32768};
    static const int cols[] = {0, DEC_VAR_CLUSTER, DEC_VAR_TC(1, 0), DEC_VAR_TC(2, 0), DEC_VAR_TC(4, 0), ATTN_B_AUTO};
    static const char *const names[] = {"split-K", "cluster", "tc W1", "tc W2", "tc W4", "auto"};
    static const int sw_w[] = {1, 2, 4}, sw_s[] = {4, 8, 16, 33, 66, 99};
    enum { NC = sizeof cols / sizeof cols[0], NW = 3, NSS = 6 };
    double sweep[sizeof Ts / sizeof Ts[0]][NW][NSS];
    for (int form = 0; form < 2; form++) {
        printf("  %s form\n  %-8s", form ? "device-position (capacity 2T)" : "q_pos0", "T");
        for (int c = 0; c < NC; c++) printf(" %9s", names[c]);
        printf("  %9s %9s %7s  GB/s of K+V (best)\n", "best old", "best tc", "old/new");
        for (size_t s = 0; s < sizeof Ts / sizeof Ts[0]; s++) {
            const int64_t T = Ts[s];
            struct attn_bench b;
            size_t kvbytes = (size_t)(T * 8 * 128) * 2;
            b.nbuf = rotation(2 * kvbytes);
            b.k = calloc((size_t)b.nbuf, sizeof *b.k);
            b.v = calloc((size_t)b.nbuf, sizeof *b.v);
            CHECK(b.k && b.v);
            for (int i = 0; i < b.nbuf; i++) {
                b.k[i] = d_alloc(DTYPE_F16, 3, 2 * T, 8, 128); /* capacity 2T: the pos form sizes its grid by it */
                b.v[i] = d_alloc(DTYPE_F16, 3, 2 * T, 8, 128);
                d_fill_rand(&b.k[i], 2.0f);
                d_fill_rand(&b.v[i], 1.0f);
                b.k[i].shape[0] = b.v[i].shape[0] = form ? 2 * T : T;
            }
            struct tensor hq = h_rand(DTYPE_F16, 3, 1, 32, 128, 2.0f), hp = h_new(DTYPE_I32, 1, 1, 0, 0);
            *(int32_t *)hp.data = (int32_t)(T - 1);
            b.q = d_from(&hq);
            b.pos = d_from(&hp);
            b.out = d_new(DTYPE_F16, 3, 1, 32, 128);
            b.pos_form = form;
            double ms[NC], old = 1e30, neu = 1e30;
            printf("  T=%-6lld", (long long)T);
            for (int c = 0; c < NC; c++) {
                const int is_tc = cols[c] >= DEC_VAR_TC(0, 0);
                b.variant = cols[c];
                ms[c] = (is_tc && !tc) || (cols[c] == DEC_VAR_CLUSTER && !cl) ? 0 : bench_ms(200, attn_step, &b);
                if (ms[c] > 0 && cols[c] >= 0 && !is_tc && ms[c] < old) old = ms[c];
                if (ms[c] > 0 && is_tc && ms[c] < neu) neu = ms[c];
                printf(" %9.1f", ms[c] * 1e3);
            }
            const double best = old < neu ? old : neu;
            printf("  %9.1f %9.1f %7.2f  %6.0f\n", old * 1e3, neu < 1e30 ? neu * 1e3 : 0.0, neu < 1e30 ? old / neu : 0.0,
                   (double)(2 * kvbytes) / (best * 1e-3) / 1e9);
            if (!form && tc)
                for (int w = 0; w < NW; w++)
                    for (int ss = 0; ss < NSS; ss++) {
                        b.variant = DEC_VAR_TC(sw_w[w], sw_s[ss]);
                        sweep[s][w][ss] = bench_ms(200, attn_step, &b);
                    }
            for (int i = 0; i < b.nbuf; i++) b.k[i].shape[0] = b.v[i].shape[0] = 2 * T, t_free(&b.k[i]), t_free(&b.v[i]);
            free(b.k);
            free(b.v);
            t_free(&hq), t_free(&hp), t_free(&b.q), t_free(&b.pos), t_free(&b.out);
        }
    }
    if (!tc) return;
    printf("  tensor-core kernel, W warps per block x S splits forced (q_pos0 form), us:\n  %-8s", "T");
    for (int w = 0; w < NW; w++)
        for (int ss = 0; ss < NSS; ss++) printf(" W%dS%-3d", sw_w[w], sw_s[ss]);
    printf("\n");
    for (size_t s = 0; s < sizeof Ts / sizeof Ts[0]; s++) {
        printf("  T=%-6lld", (long long)Ts[s]);
        for (int w = 0; w < NW; w++)
            for (int ss = 0; ss < NSS; ss++) printf(" %6.1f", sweep[s][w][ss] * 1e3);
        printf("\n");
    }
}

/* op_attention_rows as the batched step calls it: B rows of one length each, every row its own paged
 * sequence; old kernels (split-K, the cluster kernel with its automatic splits) against the tensor-core
 * kernel (1, 2, 4 warps per block, automatic splits) and the automatic choice; table sets rotated so
 * that the K/V read is >= 256 MB, beyond L2 */
struct rows_bench {
    struct tensor q, out, k, v, tab, nk, *seq;
    int nrot, variant;
};

static void rows_step(int rep, void *p)
{
    struct rows_bench *b = p;
    cuda_attention_decode_variant(&b->out, &b->q, &b->k, &b->v, NULL, &b->tab, &b->seq[rep % b->nrot], &b->nk, 0,
                                  0.08838834764831845f, ATTN_CAUSAL, b->variant);
}

static void bench_attention_rows(void)
{
    static const int Bs[] = {1, 4, 16, 64}, lens[] = {512, 1024, 4096};
    static const int cols[] = {0, DEC_VAR_CLUSTER, DEC_VAR_TC(1, 0), DEC_VAR_TC(2, 0), DEC_VAR_TC(4, 0), -1};
    static const char *const names[] = {"split-K", "cluster", "tc W1", "tc W2", "tc W4", "auto"};
    enum { NC = sizeof cols / sizeof cols[0] };
    int maxcl[5];
    cuda_attention_cluster_caps(0, maxcl);
    const int tc = cuda_attention_tc_able(0), cl = maxcl[0] > 0;
    printf("op_attention_rows fp16 (H=32, Hkv=8, hd=128, paged), B rows of one length, us per call:\n  %-16s", "rows");
    for (int c = 0; c < NC; c++) printf(" %9s", names[c]);
    printf("  %9s %9s %7s  GB/s of K+V (best)\n", "best old", "best tc", "old/new");
    for (size_t bi = 0; bi < sizeof Bs / sizeof Bs[0]; bi++)
        for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
            const int64_t B = Bs[bi], len = lens[li], mb = len / KV_BLOCK;
            const size_t set_bytes = (size_t)(B * len * 8 * 128) * 2 * 2;
            struct rows_bench b;
            b.nrot = rotation(set_bytes);
            const int64_t S = B * b.nrot, rows = S * len;
            b.k = d_alloc(DTYPE_F16, 3, rows, 8, 128);
            b.v = d_alloc(DTYPE_F16, 3, rows, 8, 128);
            d_fill_rand(&b.k, 2.0f);
            d_fill_rand(&b.v, 1.0f);
            struct tensor ht = h_new(DTYPE_I32, 2, S, mb, 0), hn = h_new(DTYPE_I32, 1, B, 0, 0);
            for (int64_t i = 0; i < S * mb; i++) ((int32_t *)ht.data)[i] = (int32_t)i; /* sequence s: blocks s*mb .. */
            for (int64_t i = 0; i < B; i++) ((int32_t *)hn.data)[i] = (int32_t)len;
            b.tab = d_from(&ht);
            b.nk = d_from(&hn);
            b.seq = calloc((size_t)b.nrot, sizeof *b.seq);
            CHECK(b.seq);
            for (int r = 0; r < b.nrot; r++) {
                struct tensor hs = h_new(DTYPE_I32, 1, B, 0, 0);
                for (int64_t i = 0; i < B; i++) ((int32_t *)hs.data)[i] = (int32_t)(r * B + i);
                b.seq[r] = d_from(&hs);
                t_free(&hs);
            }
            struct tensor hq = h_rand(DTYPE_F16, 3, B, 32, 128, 2.0f);
            b.q = d_from(&hq);
            b.out = d_new(DTYPE_F16, 3, B, 32, 128);
            double old = 1e30, neu = 1e30;
            printf("  B=%-3lld keys %-5lld", (long long)B, (long long)len);
            for (int c = 0; c < NC; c++) {
                const int is_tc = cols[c] >= DEC_VAR_TC(0, 0);
                b.variant = cols[c];
                const double ms = (is_tc && !tc) || (cols[c] == DEC_VAR_CLUSTER && !cl) ? 0 : bench_ms(100, rows_step, &b);
                if (ms > 0 && cols[c] >= 0 && !is_tc && ms < old) old = ms;
                if (ms > 0 && is_tc && ms < neu) neu = ms;
                printf(" %9.1f", ms * 1e3);
            }
            const double best = old < neu ? old : neu;
            printf("  %9.1f %9.1f %7.2f  %6.0f\n", old * 1e3, neu < 1e30 ? neu * 1e3 : 0.0, neu < 1e30 ? old / neu : 0.0,
                   (double)set_bytes / (best * 1e-3) / 1e9);
            /* the tensor-core kernel's W x S grid at the batched step's lengths (its auto S comes from
             * tc_splits, which was tuned on one row) */
            static const int Ws[] = {1, 2, 4}, Ss[] = {1, 2, 3, 4, 6, 8, 12, 16};
            if (tc && B >= 4 && len <= 1024) {
                double bw = 1e30;
                int bwW = 0, bwS = 0;
                printf("    tc sweep B=%lld keys %lld (us):", (long long)B, (long long)len);
                for (size_t wi = 0; wi < sizeof Ws / sizeof Ws[0]; wi++)
                    for (size_t si = 0; si < sizeof Ss / sizeof Ss[0]; si++) {
                        b.variant = DEC_VAR_TC(Ws[wi], Ss[si]);
                        const double ms = bench_ms(100, rows_step, &b);
                        printf(" W%dS%d %.1f", Ws[wi], Ss[si], ms * 1e3);
                        if (ms < bw) bw = ms, bwW = Ws[wi], bwS = Ss[si];
                    }
                printf("\n    tc sweep best B=%lld keys %lld: W%d S%d %.1f us (tc with its auto S: %.1f)\n", (long long)B, (long long)len,
                       bwW, bwS, bw * 1e3, neu * 1e3);
            }
            for (int r = 0; r < b.nrot; r++) t_free(&b.seq[r]);
            free(b.seq);
            t_free(&b.k), t_free(&b.v), t_free(&ht), t_free(&hn), t_free(&b.tab), t_free(&b.nk), t_free(&hq);
            t_free(&b.q), t_free(&b.out);
        }
}

/* ---- a whole decode step: 32 Llama-3-8B layers + lm_head, fp16, n = 1 ---- */

#define STEP_L 32
struct step_bench {
    struct tensor qkv[STEP_L], wo[STEP_L], gu[STEP_L], down[STEP_L], ln1[STEP_L], ln2[STEP_L], kc[STEP_L], vc[STEP_L];
    struct tensor head, fnorm, h, xn, q, att, o, g, logits_act, logits, ids, pos;
    int64_t pos0;
    int variant; /* 0 before: old kernels and op sequence; 1 plain ops (step_after); 2 fused ops (step_fused) */
    struct dev_graph *graph;
};

static void step_before(struct step_bench *b)
{
    const int64_t p = b->pos0;
    struct tensor pos = tensor_rows_view(&b->pos, 0, 1);
    for (int l = 0; l < STEP_L; l++) {
        op_rmsnorm(&b->xn, &b->h, &b->ln1[l], 1e-5f);
        cuda_gemv_config(&b->q, &b->xn, &b->qkv[l], 0, 4);
        struct tensor q3 = tensor_make(DTYPE_F16, b->q.dev, b->q.data, 3, (int64_t)1, (int64_t)32, (int64_t)128);
        struct tensor k3 = tensor_make(DTYPE_F16, b->q.dev, (char *)b->q.data + 4096 * 2, 3, (int64_t)1, (int64_t)8, (int64_t)128);
        struct tensor v3 = tensor_make(DTYPE_F16, b->q.dev, (char *)b->q.data + 5120 * 2, 3, (int64_t)1, (int64_t)8, (int64_t)128);
        op_rope(&q3, &pos, 500000.0);
        op_rope(&k3, &pos, 500000.0);
        struct tensor kr = tensor_rows_view(&b->kc[l], p, 1), vr = tensor_rows_view(&b->vc[l], p, 1);
        op_copy(&kr, &k3);
        op_copy(&vr, &v3);
        struct tensor ka = tensor_rows_view(&b->kc[l], 0, p + 1), va = tensor_rows_view(&b->vc[l], 0, p + 1);
        struct tensor a3 = tensor_reshape(&b->att, 3, (int64_t)1, (int64_t)32, (int64_t)128);
        cuda_attention_general(&a3, &q3, &ka, &va, p, 0.08838834764831845f, ATTN_CAUSAL);
        cuda_gemv_config(&b->o, &b->att, &b->wo[l], 0, 4);
        op_add(&b->h, &b->h, &b->o);
        op_rmsnorm(&b->xn, &b->h, &b->ln2[l], 1e-5f);
        cuda_gemv_config(&b->g, &b->xn, &b->gu[l], 0, 4);
        struct tensor gg = tensor_make(DTYPE_F16, b->g.dev, b->g.data, 2, (int64_t)1, (int64_t)14336);
        struct tensor uu = tensor_make(DTYPE_F16, b->g.dev, (char *)b->g.data + 14336 * 2, 2, (int64_t)1, (int64_t)14336);
        op_silu_mul(&gg, &gg, &uu);
        cuda_gemv_config(&b->o, &gg, &b->down[l], 0, 4);
        op_add(&b->h, &b->h, &b->o);
    }
    op_rmsnorm(&b->xn, &b->h, &b->fnorm, 1e-5f);
    cuda_gemv_config(&b->logits_act, &b->xn, &b->head, 0, 4);
    op_copy(&b->logits, &b->logits_act);
    op_argmax_dev(&b->logits, &b->ids); /* the old path copied to the host here: not timed */
}

/* llm.c's decode step with the plain ops (op_matmul on whichever GEMV cuda_set_pgemv selects):
 * 9 launches per layer */
static void step_after(struct step_bench *b)
{
    op_embed(&b->h, &b->head, &b->ids); /* the token chosen by the previous step, read on the device */
    op_rmsnorm(&b->xn, &b->h, &b->ln1[0], 1e-5f);
    for (int l = 0; l < STEP_L; l++) {
        op_matmul(&b->q, &b->xn, &b->qkv[l], NULL);
        struct tensor q3 = tensor_make(DTYPE_F16, b->q.dev, b->q.data, 3, (int64_t)1, (int64_t)32, (int64_t)128);
        struct tensor k3 = tensor_make(DTYPE_F16, b->q.dev, (char *)b->q.data + 4096 * 2, 3, (int64_t)1, (int64_t)8, (int64_t)128);
        struct tensor v3 = tensor_make(DTYPE_F16, b->q.dev, (char *)b->q.data + 5120 * 2, 3, (int64_t)1, (int64_t)8, (int64_t)128);
        op_rope_qk(&q3, &k3, &b->pos, 500000.0, &v3, &b->kc[l], &b->vc[l], NULL);
        struct tensor a3 = tensor_reshape(&b->att, 3, (int64_t)1, (int64_t)32, (int64_t)128);
        op_attention_pos(&a3, &q3, &b->kc[l], &b->vc[l], &b->pos, NULL, 0.08838834764831845f, ATTN_CAUSAL);
        op_matmul(&b->o, &b->att, &b->wo[l], NULL);
        op_add_rmsnorm(&b->h, &b->xn, &b->o, &b->ln2[l], 1e-5f);
        op_matmul(&b->g, &b->xn, &b->gu[l], NULL);
        struct tensor gg = tensor_make(DTYPE_F16, b->g.dev, b->g.data, 2, (int64_t)1, (int64_t)14336);
        struct tensor uu = tensor_make(DTYPE_F16, b->g.dev, (char *)b->g.data + 14336 * 2, 2, (int64_t)1, (int64_t)14336);
        op_silu_mul(&gg, &gg, &uu);
        op_matmul(&b->o, &gg, &b->down[l], NULL);
        op_add_rmsnorm(&b->h, &b->xn, &b->o, l + 1 < STEP_L ? &b->ln1[l + 1] : &b->fnorm, 1e-5f);
    }
    op_matmul(&b->logits_act, &b->xn, &b->head, NULL);
    op_copy(&b->logits, &b->logits_act);
    op_argmax_dev(&b->logits, &b->ids);
}

/* llm.c's decode step with the fused ops: q|k|v with the input norm, RoPE + KV, attention, o adding into
 * h, gate|up with the norm and SwiGLU, down adding into h; the head with the final norm: 6 launches per
 * layer (attention's own count aside) */
static void step_fused(struct step_bench *b)
{
    op_embed(&b->h, &b->head, &b->ids);
    for (int l = 0; l < STEP_L; l++) {
        struct tensor q = tensor_make(DTYPE_F16, b->q.dev, b->q.data, 2, (int64_t)1, (int64_t)4096);
        struct tensor k = tensor_make(DTYPE_F16, b->q.dev, (char *)b->q.data + 4096 * 2, 2, (int64_t)1, (int64_t)1024);
        struct tensor v = tensor_make(DTYPE_F16, b->q.dev, (char *)b->q.data + 5120 * 2, 2, (int64_t)1, (int64_t)1024);
        struct tensor *qkv[3] = {&q, &k, &v};
        op_rmsnorm_matmul(qkv, 3, &b->h, &b->ln1[l], 1e-5f, &b->qkv[l]);
        struct tensor q3 = tensor_reshape(&q, 3, (int64_t)1, (int64_t)32, (int64_t)128);
        struct tensor k3 = tensor_reshape(&k, 3, (int64_t)1, (int64_t)8, (int64_t)128);
        struct tensor v3 = tensor_reshape(&v, 3, (int64_t)1, (int64_t)8, (int64_t)128);
        op_rope_qk(&q3, &k3, &b->pos, 500000.0, &v3, &b->kc[l], &b->vc[l], NULL);
        struct tensor a3 = tensor_reshape(&b->att, 3, (int64_t)1, (int64_t)32, (int64_t)128);
        op_attention_pos(&a3, &q3, &b->kc[l], &b->vc[l], &b->pos, NULL, 0.08838834764831845f, ATTN_CAUSAL);
        op_linear(&b->h, &b->att, &b->wo[l], NULL, LINEAR_NONE, &b->h);
        struct tensor gg = tensor_make(DTYPE_F16, b->g.dev, b->g.data, 2, (int64_t)1, (int64_t)14336);
        op_rmsnorm_swiglu(&gg, &b->h, &b->ln2[l], 1e-5f, &b->gu[l]);
        op_linear(&b->h, &gg, &b->down[l], NULL, LINEAR_NONE, &b->h);
    }
    struct tensor *lo[1] = {&b->logits_act};
    op_rmsnorm_matmul(lo, 1, &b->h, &b->fnorm, 1e-5f, &b->head);
    op_copy(&b->logits, &b->logits_act);
    op_argmax_dev(&b->logits, &b->ids);
}

static void step_run(int rep, void *p)
{
    struct step_bench *b = p;
    struct err e;
    (void)rep;
    if (b->graph) CHECKF(dev_graph_launch(b->graph, &e) == 0, "%s", e.msg);
    else if (b->variant == 0) step_before(b);
    else if (b->variant == 1) step_after(b);
    else step_fused(b);
}

/* the variants of the step bench, in the order printed */
static const struct {
    const char *name;
    int ops;                      /* step_bench.variant */
    int graph, pgemv, pdl, early; /* early: the persistent GEMV triggers its PDL successor at once */
} step_variants[] = {
    {"before: old ops, eager", 0, 0, 0, 0, 0},
    {"plain ops, one-pass GEMV, graph (main)", 1, 1, 0, 0, 0},
    {"plain ops, persistent GEMV, graph", 1, 1, 1, 0, 0},
    {"fused, eager", 2, 0, 1, 0, 0},
    {"fused, graph", 2, 1, 1, 0, 0},
    {"fused, graph + PDL (trigger after the loads)", 2, 1, 1, 1, 0},
    {"fused, graph + PDL (trigger at once)", 2, 1, 1, 1, 1},
    {"plain ops, one-pass GEMV, graph + PDL", 1, 1, 0, 1, 0},
};
#define STEP_NV ((int)(sizeof step_variants / sizeof step_variants[0]))

static void bench_step(void)
{
    struct step_bench *b = calloc(1, sizeof *b);
    CHECK(b);
    const int64_t ctx = 4096;
    for (int l = 0; l < STEP_L; l++) {
        b->qkv[l] = d_alloc(DTYPE_F16, 2, 6144, 4096, 0), d_fill_rand(&b->qkv[l], 0.02f);
        b->wo[l] = d_alloc(DTYPE_F16, 2, 4096, 4096, 0), d_fill_rand(&b->wo[l], 0.02f);
        b->gu[l] = d_alloc(DTYPE_F16, 2, 28672, 4096, 0), d_fill_rand(&b->gu[l], 0.02f);
        b->down[l] = d_alloc(DTYPE_F16, 2, 4096, 14336, 0), d_fill_rand(&b->down[l], 0.01f);
        struct tensor hw = h_new(DTYPE_F16, 1, 4096, 0, 0);
        h_fill(&hw, 0.2f, 1.0f);
        b->ln1[l] = d_from(&hw), b->ln2[l] = d_from(&hw);
        t_free(&hw);
        b->kc[l] = d_alloc(DTYPE_F16, 3, ctx, 8, 128), d_fill_rand(&b->kc[l], 2.0f);
        b->vc[l] = d_alloc(DTYPE_F16, 3, ctx, 8, 128), d_fill_rand(&b->vc[l], 1.0f);
    }
    b->head = d_alloc(DTYPE_F16, 2, 128256, 4096, 0), d_fill_rand(&b->head, 0.02f);
    b->fnorm = d_new(DTYPE_F16, 1, 4096, 0, 0);
    b->h = d_new(DTYPE_F16, 2, 1, 4096, 0), b->xn = d_new(DTYPE_F16, 2, 1, 4096, 0);
    b->q = d_new(DTYPE_F16, 2, 1, 6144, 0), b->att = d_new(DTYPE_F16, 2, 1, 4096, 0), b->o = d_new(DTYPE_F16, 2, 1, 4096, 0);
    b->g = d_new(DTYPE_F16, 2, 1, 28672, 0);
    b->logits_act = d_new(DTYPE_F16, 2, 1, 128256, 0), b->logits = d_new(DTYPE_F32, 2, 1, 128256, 0);
    struct tensor hi = h_new(DTYPE_I32, 1, 1, 0, 0), hh = h_new(DTYPE_F16, 2, 1, 4096, 0);
    h_fill(&hh, 1.0f, 0.0f);
    *(int32_t *)hi.data = 791;
    b->ids = d_from(&hi);
    b->pos = d_from(&hi); /* overwritten below */
    printf("decode step, 32 layers 4096/14336 + lm_head 128256, fp16, n=1 (weights 15.0 GB), ms per token; the\n"
           "plain-op variants on the persistent GEMV and the fused ones must give the same logits bit for bit:\n");
    static const int64_t P[] = {512, 3000};
    for (size_t s = 0; s < sizeof P / sizeof P[0]; s++) {
        b->pos0 = P[s];
        *(int32_t *)hi.data = (int32_t)P[s];
        op_copy(&b->pos, &hi);
        printf("  context %lld:\n", (long long)P[s]);
        float *ref = NULL;
        for (int v = 0; v < STEP_NV; v++) {
            b->variant = step_variants[v].ops;
            cuda_set_pgemv(0, step_variants[v].pgemv);
            dev_set_overlap(b->h.dev, step_variants[v].pdl);
            cuda_pgemv_set_trigger(0, step_variants[v].early);
            if (step_variants[v].graph) { /* capture after one eager run sized every scratch buffer */
                struct err e;
                step_run(0, b);
                CHECKF(dev_graph_begin(b->h.dev, &e) == 0, "%s", e.msg);
                step_run(0, b);
                b->graph = dev_graph_end(b->h.dev, &e);
                CHECKF(b->graph, "%s", e.msg);
            }
            const double ms = bench_ms(30, step_run, b);
            const char *agree = "";
            if (v > 0) { /* one step from a fixed token and hidden state */
                *(int32_t *)hi.data = 791;
                op_copy(&b->ids, &hi);
                op_copy(&b->h, &hh);
                step_run(0, b);
                float *lg = malloc(128256 * sizeof(float));
                CHECK(lg);
                struct tensor hl = tensor_make(DTYPE_F32, device_cpu(), lg, 2, (int64_t)1, (int64_t)128256);
                op_copy(&hl, &b->logits);
                if (step_variants[v].pgemv) {
                    if (!ref) ref = lg, agree = " (the reference logits)";
                    else {
                        const int same = memcmp(ref, lg, 128256 * sizeof(float)) == 0;
                        T_ASSERTF(same, "decode step variant '%s' differs from the first persistent-GEMV variant",
                                  step_variants[v].name);
                        agree = same ? " (same logits)" : " (LOGITS DIFFER)";
                        free(lg);
                    }
                } else {
                    free(lg);
                }
            }
            printf("    %-46s %6.3f ms %6.1f tok/s %5.0f GB/s of weights%s\n", step_variants[v].name, ms, 1e3 / ms,
                   15.0e9 / (ms * 1e-3) / 1e9, agree);
            if (b->graph) dev_graph_free(b->graph), b->graph = NULL;
        }
        free(ref);
    }
    cuda_set_pgemv(0, 0);
    dev_set_overlap(b->h.dev, DEV_OVERLAP_DEFAULT);
    cuda_pgemv_set_trigger(0, 0);
    for (int l = 0; l < STEP_L; l++) {
        t_free(&b->qkv[l]), t_free(&b->wo[l]), t_free(&b->gu[l]), t_free(&b->down[l]);
        t_free(&b->ln1[l]), t_free(&b->ln2[l]), t_free(&b->kc[l]), t_free(&b->vc[l]);
    }
    t_free(&b->head), t_free(&b->fnorm), t_free(&b->h), t_free(&b->xn), t_free(&b->q), t_free(&b->att), t_free(&b->o);
    t_free(&b->g), t_free(&b->logits_act), t_free(&b->logits), t_free(&b->ids), t_free(&b->pos), t_free(&hi), t_free(&hh);
    free(b);
}

struct small_bench {
    struct tensor h, o, xn, w, q, k, v, kc, vc, pos, logits, ids;
    int which;
};

static void small_step(int rep, void *p)
{
    struct small_bench *b = p;
    int32_t id;
    (void)rep;
    switch (b->which) {
    case 0: op_add(&b->h, &b->h, &b->o); op_rmsnorm(&b->xn, &b->h, &b->w, 1e-5f); break;
    case 1: op_add_rmsnorm(&b->h, &b->xn, &b->o, &b->w, 1e-5f); break;
    case 2: {
        struct tensor kr = tensor_rows_view(&b->kc, 700, 1), vr = tensor_rows_view(&b->vc, 700, 1);
        op_rope(&b->q, &b->pos, 500000.0), op_rope(&b->k, &b->pos, 500000.0), op_copy(&kr, &b->k), op_copy(&vr, &b->v);
        break;
    }
    case 3: op_rope_qk(&b->q, &b->k, &b->pos, 500000.0, &b->v, &b->kc, &b->vc, NULL); break;
    case 4: op_argmax(&b->logits, &id); break;
    default: op_argmax_dev(&b->logits, &b->ids); break;
    }
}

static void bench_small(void)
{
    struct small_bench b;
    b.h = d_new(DTYPE_F16, 2, 1, 4096, 0), b.o = d_new(DTYPE_F16, 2, 1, 4096, 0), b.xn = d_new(DTYPE_F16, 2, 1, 4096, 0);
    b.w = d_new(DTYPE_F16, 1, 4096, 0, 0);
    b.q = d_new(DTYPE_F16, 3, 1, 32, 128), b.k = d_new(DTYPE_F16, 3, 1, 8, 128), b.v = d_new(DTYPE_F16, 3, 1, 8, 128);
    b.kc = d_new(DTYPE_F16, 3, 1024, 8, 128), b.vc = d_new(DTYPE_F16, 3, 1024, 8, 128);
    struct tensor hp = h_new(DTYPE_I32, 1, 1, 0, 0);
    *(int32_t *)hp.data = 700;
    b.pos = d_from(&hp);
    b.logits = d_new(DTYPE_F32, 2, 1, 128256, 0), b.ids = d_new(DTYPE_I32, 1, 1, 0, 0);
    static const char *names[] = {"add + rmsnorm (before)",  "add_rmsnorm (after)",  "rope q + rope k + 2 KV copies (before)",
                                  "rope_qk + KV store (after)", "argmax + host copy (before)", "argmax_dev (after)"};
    printf("small decode ops, us per call (eager launches):\n");
    for (b.which = 0; b.which < 6; b.which++)
        printf("  %-40s %7.2f us\n", names[b.which], bench_ms(b.which == 4 ? 50 : 500, small_step, &b) * 1e3);
    t_free(&b.h), t_free(&b.o), t_free(&b.xn), t_free(&b.w), t_free(&b.q), t_free(&b.k), t_free(&b.v);
    t_free(&b.kc), t_free(&b.vc), t_free(&b.pos), t_free(&hp), t_free(&b.logits), t_free(&b.ids);
}

/* The small decode ops on their generic kernels (cuda_set_small_vec 0) and on their vector kernels (1,
 * the default, and 2), at the decode step's shapes (Llama-3-8B fp16) and the batched step's (8 rows): eager
 * launches (back to back: the host's launch rate can hide a kernel shorter than it), and SV_GRAPH_CALLS
 * calls captured into one graph and replayed, as the decode step runs them (the kernel's own time plus
 * the gap between two kernels of a graph). */
#define SV_GRAPH_CALLS 20
struct sv_bench {
    struct tensor h, o, xn, w, q, k, v, kc, vc, pos, tab, g, u, y, rows;
    int which;
    struct dev_graph *graph;
};

static void sv_op(struct sv_bench *b)
{
    struct tensor h1 = tensor_rows_view(&b->h, 0, 1), o1 = tensor_rows_view(&b->o, 0, 1);
    struct tensor xn1 = tensor_rows_view(&b->xn, 0, 1), g1 = tensor_rows_view(&b->g, 0, 1);
    struct tensor u1 = tensor_rows_view(&b->u, 0, 1), y1 = tensor_rows_view(&b->y, 0, 1), q1 = tensor_rows_view(&b->q, 0, 1);
    struct tensor k1 = tensor_rows_view(&b->k, 0, 1), v1 = tensor_rows_view(&b->v, 0, 1);
    struct tensor p1 = tensor_rows_view(&b->pos, 0, 1);
    switch (b->which) {
    case 0: op_rmsnorm(&xn1, &h1, &b->w, 1e-5f); break;
    case 1: op_add_rmsnorm(&h1, &xn1, &o1, &b->w, 1e-5f); break;
    case 2: op_add_rmsnorm(&b->h, &b->xn, &b->o, &b->w, 1e-5f); break;
    case 3: op_rope_qk(&q1, &k1, &p1, 500000.0, &v1, &b->kc, &b->vc, &b->tab); break;
    case 4: op_rope_qk(&b->q, &b->k, &b->pos, 500000.0, NULL, NULL, NULL, NULL); break;
    case 5: op_kv_store(&b->kc, &b->k, &b->rows), op_kv_store(&b->vc, &b->v, &b->rows); break;
    /* into another tensor (llm.c writes g in place): repeated in place, the values would decay to
     * subnormals, which take __fdiv_rn's slow path */
    case 6: op_silu_mul(&y1, &g1, &u1); break;
    default: op_silu_mul(&b->y, &b->g, &b->u); break;
    }
}

static void sv_eager(int rep, void *p)
{
    (void)rep;
    sv_op(p);
}

static void sv_replay(int rep, void *p)
{
    struct sv_bench *b = p;
    struct err e;
    (void)rep;
    CHECKF(dev_graph_launch(b->graph, &e) == 0, "%s", e.msg);
}

static void bench_small_vec(void)
{
    struct sv_bench b = {0};
    const int64_t B = 8, T = 1024;
    b.h = d_new(DTYPE_F16, 2, B, 4096, 0), b.o = d_new(DTYPE_F16, 2, B, 4096, 0), b.xn = d_new(DTYPE_F16, 2, B, 4096, 0);
    b.w = d_new(DTYPE_F16, 1, 4096, 0, 0);
    b.q = d_new(DTYPE_F16, 3, B, 32, 128), b.k = d_new(DTYPE_F16, 3, B, 8, 128), b.v = d_new(DTYPE_F16, 3, B, 8, 128);
    b.kc = d_new(DTYPE_F16, 3, T, 8, 128), b.vc = d_new(DTYPE_F16, 3, T, 8, 128);
    b.g = d_new(DTYPE_F16, 2, B, 14336, 0), b.u = d_new(DTYPE_F16, 2, B, 14336, 0), b.y = d_new(DTYPE_F16, 2, B, 14336, 0);
    struct tensor hp = h_new(DTYPE_I32, 1, B, 0, 0), hr = h_new(DTYPE_I32, 1, B, 0, 0);
    for (int i = 0; i < B; i++) ((int32_t *)hp.data)[i] = 700 + i, ((int32_t *)hr.data)[i] = 100 * i + 3;
    struct tensor ht = h_table(0, T / KV_BLOCK, T / KV_BLOCK);
    b.pos = d_from(&hp), b.rows = d_from(&hr), b.tab = d_from(&ht);
    static const char *names[] = {"rmsnorm [1,4096]",          "add_rmsnorm [1,4096]",   "add_rmsnorm [8,4096]",
                                  "rope_qk + KV store (paged) [1]", "rope_qk [8] (no store)", "kv_store k + v [8 rows]",
                                  "silu_mul [1,14336]",         "silu_mul [8,14336]"};
    printf("small decode ops, us per call: generic kernels / vector kernels / vector kernels with the norms' own\n"
           "summation tree (cuda_set_small_vec 0 / 1 / 2; 1 and 2 differ only for the norms)\n");
    printf("  %-32s %9s %9s %9s %9s %9s %9s\n", "", "eager gen", "vec", "vec own", "graph gen", "vec", "vec own");
    for (b.which = 0; b.which < 8; b.which++) {
        double t[2][3]; /* [eager, graph][mode] */
        for (int vec = 0; vec < 3; vec++) {
            cuda_set_small_vec(0, vec);
            t[0][vec] = bench_ms(500, sv_eager, &b) * 1e3;
            struct err e;
            CHECKF(dev_graph_begin(b.h.dev, &e) == 0, "%s", e.msg);
            for (int i = 0; i < SV_GRAPH_CALLS; i++) sv_op(&b);
            b.graph = dev_graph_end(b.h.dev, &e);
            CHECKF(b.graph, "%s", e.msg);
            t[1][vec] = bench_ms(50, sv_replay, &b) * 1e3 / SV_GRAPH_CALLS;
            dev_graph_free(b.graph);
            b.graph = NULL;
        }
        printf("  %-32s %9.2f %9.2f %9.2f %9.2f %9.2f %9.2f\n", names[b.which], t[0][0], t[0][1], t[0][2], t[1][0],
               t[1][1], t[1][2]);
    }
    cuda_set_small_vec(0, 1);
    t_free(&b.h), t_free(&b.o), t_free(&b.xn), t_free(&b.w), t_free(&b.q), t_free(&b.k), t_free(&b.v);
    t_free(&b.kc), t_free(&b.vc), t_free(&b.g), t_free(&b.u), t_free(&b.y), t_free(&b.pos), t_free(&b.rows), t_free(&b.tab);
    t_free(&hp), t_free(&hr), t_free(&ht);
}

/* ---- the engine's decode step on a real checkpoint: plain ops vs fused, one GEMV vs the other ---- */

/* The configurations of `bench engine`: the plain ops on the one-pass GEMV (the default since session 7),
 * the plain ops on the persistent GEMV, the fused ops. (Session 7 measured PDL slower on every variant,
 * session 9 the L2 prefetch of each GEMV's weights slower at every budget: neither is repeated.) */
static const struct {
    const char *name;
    int unfused, pgemv, sv, overlap, swiglu; /* sv: cuda_set_small_vec (2: tokens not required to match); overlap: dev_set_overlap;
                                      * swiglu: llm_set_swiglu (SwiGLU in the gate|up GEMV's epilogue);
                                      * pgemv: 1 every GEMV on the persistent kernel, 0 the default (the one-pass kernel,
                                      * rows of 8192 or more on the persistent one), -1 the one-pass kernel everywhere */
} engine_variants[] = {
    {"plain ops (the default)", 1, 0, 1, DEV_OVERLAP_DEFAULT, -1},
    {"plain, SwiGLU a kernel of its own", 1, 0, 1, DEV_OVERLAP_DEFAULT, 0},
    {"plain, no PDL", 1, 0, 1, 0, -1},
    {"plain, attention waits before its first loads", 1, 0, 1, DEV_OVERLAP_SMALL, -1},
    {"plain, one-pass GEMV everywhere", 1, -1, 1, DEV_OVERLAP_DEFAULT, -1},
    {"plain, one-pass, generic small kernels", 1, 0, 0, DEV_OVERLAP_DEFAULT, -1},
    {"plain, one-pass, small kernels' own tree", 1, 0, 2, DEV_OVERLAP_DEFAULT, -1},
    {"plain ops, persistent GEMV", 1, 1, 1, DEV_OVERLAP_DEFAULT, -1},
    {"fused", 0, 1, 1, DEV_OVERLAP_DEFAULT, -1},
};

/* `test_cuda_ops bench engine DIR`: the engine on DIR (fp16, one GPU, ctx 4096): after a prompt of 512
 * (then 3500) random ids, 8 warm-up greedy steps (the graph captured) and 128 timed ones, per variant;
 * the greedy tokens of every persistent-GEMV variant must be the same (fused == plain bit for bit), and so
 * must those of the one-pass variants with the small ops' vector and generic kernels (same values); mode
 * 2's norms may differ in a last bit, so its tokens are only reported. */
static void bench_engine(const char *model)
{
    struct engine_options o;
    engine_options_default(&o);
    o.model_dir = model;
    o.device = "cuda";
    o.dtype = DTYPE_F16;
    o.ctx = 4096;
    o.quiet = 1;
    struct err e = {{0}};
    struct engine *g = NULL;
    if (engine_open(&g, &o, &e)) {
        printf("bench engine: %s\n", e.msg);
        T_ASSERT(0);
        return;
    }
    struct llm *s = &g->llm;
    const int swiglu0 = s->swiglu; /* the default (-1 in the table) */
    const int V = g->cfg.vocab_size, N = 128, W = 8;
    float *lg = malloc((size_t)V * sizeof *lg);
    int32_t *prompt = malloc(3500 * sizeof *prompt), *toks = malloc((size_t)N * sizeof *toks), *refs[3] = {NULL, NULL, NULL};
    CHECK(lg && prompt && toks);
    for (int i = 0; i < 3500; i++) prompt[i] = (int32_t)((i * 7919u + 13u) % 128000u);
    printf("engine decode on %s (fp16, greedy, %d timed steps after %d warm-up, one graph per step):\n", model, N, W);
    static const int P[] = {512, 3500};
    for (size_t pi = 0; pi < sizeof P / sizeof P[0]; pi++) {
        free(refs[0]), free(refs[1]), free(refs[2]);
        refs[0] = refs[1] = refs[2] = NULL;
        for (size_t v = 0; v < sizeof engine_variants / sizeof engine_variants[0]; v++) {
            int32_t **ref = &refs[engine_variants[v].pgemv + 1];
            cuda_set_pgemv(0, engine_variants[v].pgemv > 0);
            cuda_set_pgemv_min_k(0, engine_variants[v].pgemv < 0 ? 0 : 8192); /* 8192: the default (cuda_common.cuh) */
            cuda_set_small_vec(0, engine_variants[v].sv);
            dev_set_overlap(device_cuda(0), engine_variants[v].overlap);
            llm_set_unfused(s, engine_variants[v].unfused);
            llm_set_swiglu(s, engine_variants[v].swiglu < 0 ? swiglu0 : engine_variants[v].swiglu);
            llm_drop_graphs(s);
            llm_truncate(s, 0);
            T_ASSERTF(llm_forward(s, prompt, NULL, P[pi], lg, &e) == 0, "%s", e.msg);
            struct tensor lt = tensor_make(DTYPE_F32, device_cpu(), lg, 2, (int64_t)1, (int64_t)V);
            int32_t tok = 0;
            op_argmax(&lt, &tok);
            for (int i = 0; i < W; i++) T_ASSERTF(llm_decode_greedy(s, tok, &tok, &e) == 0, "%s", e.msg);
            const double t0 = time_now();
            for (int i = 0; i < N; i++) {
                T_ASSERTF(llm_decode_greedy(s, tok, &tok, &e) == 0, "%s", e.msg);
                toks[i] = tok;
            }
            const double dt = time_now() - t0;
            const char *agree = "";
            if (!*ref) {
                *ref = malloc((size_t)N * sizeof **ref);
                CHECK(*ref);
                memcpy(*ref, toks, (size_t)N * sizeof **ref);
                agree = " (reference tokens)";
            } else {
                const int same = !memcmp(*ref, toks, (size_t)N * sizeof **ref);
                T_ASSERTF(same || engine_variants[v].sv == 2, "context %d, %s: greedy tokens differ from the first variant's on the same GEMV",
                          P[pi], engine_variants[v].name);
                agree = same ? " (same tokens)" : " (TOKENS DIFFER)";
            }
            printf("  context %4d  %-40s %7.1f tok/s  %6.3f ms/token%s\n", P[pi], engine_variants[v].name, N / dt,
                   dt / N * 1e3, agree);
        }
    }
    cuda_set_pgemv(0, 0);
    cuda_set_pgemv_min_k(0, 8192);
    cuda_set_small_vec(0, 1);
    dev_set_overlap(device_cuda(0), DEV_OVERLAP_DEFAULT);
    llm_set_swiglu(s, swiglu0);
    free(lg), free(prompt), free(toks), free(refs[0]), free(refs[1]), free(refs[2]);
    engine_close(g);
}

static void bench(int argc, char **argv)
{
    const char *only = argc > 2 ? argv[2] : "";
    if (!strcmp(only, "engine")) {
        if (argc > 3) bench_engine(argv[3]);
        else fprintf(stderr, "usage: test_cuda_ops bench engine MODEL_DIR\n"), t_cur_fail = 1;
        return;
    }
    if (!*only || !strcmp(only, "gemv")) bench_gemv();
    if (!*only || !strcmp(only, "rows")) bench_rows();
    if (!*only || !strcmp(only, "attention")) bench_attention(), bench_attention_rows();
    if (!*only || !strcmp(only, "small")) bench_small(), bench_small_vec();
    if (!*only || !strcmp(only, "step")) bench_step();
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
        T_SKIP(test_add_rmsnorm, why);
        T_SKIP(test_rope_qk, why);
        T_SKIP(test_kv_store, why);
        T_SKIP(test_small_vec, why);
        T_SKIP(test_kv_pages, why);
        T_SKIP(test_attention_pos, why);
        T_SKIP(test_attention_decode, why);
        T_SKIP(test_argmax_dev, why);
        T_SKIP(test_graph, why);
        T_SKIP(test_attention_early, why);
        T_SKIP(test_overlap, why);
        T_SKIP(test_pgemv, why);
        T_SKIP(test_rmsnorm_matmul, why);
        T_SKIP(test_rmsnorm_swiglu, why);
        T_SKIP(test_linear_residual, why);
        T_SKIP(test_fused_chain_pdl, why);
        return t_main_end("test_cuda_ops");
    }
    if (argc > 1 && strcmp(argv[1], "bench") == 0) {
        t_cur_fail = 0;
        bench(argc, argv);
        return t_cur_fail ? 1 : 0; /* the decode-step variants must agree bit for bit */
    }
    T_RUN(test_convert);
    T_RUN(test_embed);
    T_RUN(test_matmul);
    T_RUN(test_norms);
    T_RUN(test_rope);
    T_RUN(test_attention);
    T_RUN(test_elementwise);
    T_RUN(test_argmax);
    T_RUN(test_add_rmsnorm);
    T_RUN(test_rope_qk);
    T_RUN(test_kv_store);
    T_RUN(test_small_vec);
    T_RUN(test_kv_pages);
    T_RUN(test_attention_pos);
    T_RUN(test_attention_decode);
    T_RUN(test_argmax_dev);
    T_RUN(test_graph);
    T_RUN(test_attention_early);
    T_RUN(test_overlap);
    /* the persistent GEMV and the fused ops' one-kernel path: not the default (cuda_mem.cu), tested on */
    cuda_set_pgemv(0, 1);
    T_RUN(test_pgemv);
    T_RUN(test_rmsnorm_matmul);
    T_RUN(test_rmsnorm_swiglu);
    T_RUN(test_linear_residual);
    T_RUN(test_fused_chain_pdl);
    cuda_set_pgemv(0, 0);
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
