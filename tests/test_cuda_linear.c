/* test_cuda_linear.c: op_linear (a Linear with its GELU or residual add in the GEMM epilogue) and
 * op_matmul_stacked (q|k|v as one batched GEMM) on the GPU against their CPU twins, at the vision
 * tower's shapes and at shapes that take the unfused fallbacks (decode GEMV, f32, odd widths, no
 * bias). The fused path rounds once where the CPU rounds twice, so fp16 results are held to the
 * usual 4-ulp relative tolerance; the GELU case is also checked element by element against the tanh
 * formula with a bound tight enough that the erf GELU would fail it (the test counts how many
 * elements would tell them apart, so it cannot pass vacuously).
 * Without a GPU every case is reported as skipped and the test passes. */
#include "backend.h"
#include "backend_impl.h"
#include "t.h"
#include "tensor.h"

#ifdef MINICPMV_CUDA

#include "tcuda.h"

/* one fp16 unit in the last place at |v| */
static double ulp16(double v)
{
    v = fabs(v);
    if (v < 6.103515625e-05) return 5.960464477539063e-08; /* subnormal spacing 2^-24 */
    return ldexp(1.0, (int)floor(log2(v)) - 10);
}

/* cuBLASLt's GELU epilogue is the tanh GELU, but near zero it is off by up to ~2e-6 absolute (seen
 * on the H200: 3.09e-5 for 3.31e-5 at x = 6.6e-5), 1/500 of an fp16 unit at 1.0 */
#define GELU_EPI_ABS 4e-6

static double gelu_tanh_d(double x) { return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }
static double gelu_erf_d(double x) { return 0.5 * x * (1.0 + erf(x / sqrt(2.0))); }
static double gelu_tanh_grad(double x)
{
    const double k = 0.7978845608028654, u = k * (x + 0.044715 * x * x * x), t = tanh(u);
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x);
}

static void test_linear(void)
{
    static const struct { int64_t n, k, o; enum dtype dt; int act, res, bias; double tol; const char *what; } cs[] = {
        {1036, 1152, 1152, DTYPE_F16, LINEAR_NONE, 2, 1, TOL_F16, "vision out_proj, += in place (fused)"},
        {1036, 1152, 4304, DTYPE_F16, LINEAR_GELU_TANH, 0, 1, TOL_F16, "vision fc1 + gelu (fused)"},
        {1036, 4304, 1152, DTYPE_F16, LINEAR_NONE, 1, 1, TOL_F16, "vision fc2 + separate residual (fused)"},
        {5, 64, 32, DTYPE_F16, LINEAR_GELU_TANH, 0, 1, TOL_F16, "decode GEMV + gelu kernel"},
        {3, 64, 40, DTYPE_F16, LINEAR_NONE, 2, 1, TOL_F16, "decode GEMV, += in place via scratch"},
        {40, 72, 1001, DTYPE_F16, LINEAR_NONE, 2, 1, TOL_F16, "odd o: unfused, += in place"},
        {33, 256, 128, DTYPE_F32, LINEAR_GELU_TANH, 1, 1, TOL_F32, "f32: unfused"},
        {64, 128, 96, DTYPE_F16, LINEAR_GELU_TANH, 0, 0, TOL_F16, "no bias: unfused"},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        const enum dtype dt = cs[c].dt;
        const int64_t n = cs[c].n, k = cs[c].k, o = cs[c].o;
        /* |pre-activation| of a few units: the GELU's curved part and its tails both occur */
        struct tensor x = h_rand(dt, 2, n, k, 0, 1.0f), w = h_rand(dt, 2, o, k, 0, 0.15f * sqrtf(1152.0f / (float)k));
        struct tensor b = h_rand(dt, 1, o, 0, 0, 1.0f), r = h_rand(dt, 2, n, o, 0, 2.0f);
        struct tensor ref = h_new(dt, 2, n, o, 0);
        const struct tensor *hb = cs[c].bias ? &b : NULL;
        if (cs[c].res == 2) { /* in place: ref starts as the residual */
            op_copy(&ref, &r);
            op_linear(&ref, &x, &w, hb, cs[c].act, &ref);
        } else {
            op_linear(&ref, &x, &w, hb, cs[c].act, cs[c].res ? &r : NULL);
        }
        struct tensor dx = d_from(&x), dw = d_from(&w), db = d_from(&b), dr = d_from(&r);
        struct tensor dy = cs[c].res == 2 ? dr : d_new(dt, 2, n, o, 0);
        op_linear(&dy, &dx, &dw, cs[c].bias ? &db : NULL, cs[c].act, cs[c].res == 1 ? &dr : cs[c].res == 2 ? &dy : NULL);
        char cas[120];
        snprintf(cas, sizeof cas, "n%lld k%lld o%lld %s%s%s (%s)", (long long)n, (long long)k, (long long)o,
                 dtype_name(dt), cs[c].act ? " gelu" : "", cs[c].res ? " +res" : "", cs[c].what);
        check_close("linear", cas, &dy, &ref, cs[c].tol);

        if (cs[c].act == LINEAR_GELU_TANH && dt == DTYPE_F16) {
            /* element by element, on the first rows, against gelu_tanh of the exact pre-activation
             * (double sums of the fp16 inputs) */
            const int64_t nr = n < 48 ? n : 48;
            struct tensor gh = h_new(dt, 2, n, o, 0), got = h_new(DTYPE_F32, 2, n, o, 0);
            op_copy(&gh, &dy);
            op_copy(&got, &gh);
            const float *gp = got.data;
            const uint16_t *xh = x.data, *wh = w.data, *bh = b.data;
            int64_t bad = 0, telling = 0;
            double wr = 0, wp = 0, wg = 0;
            for (int64_t i = 0; i < nr; i++)
                for (int64_t j = 0; j < o; j++) {
                    double p = cs[c].bias ? f16_to_f32(bh[j]) : 0.0, sabs = fabs(p);
                    for (int64_t q = 0; q < k; q++) {
                        const double t = (double)f16_to_f32(xh[i * k + q]) * (double)f16_to_f32(wh[j * k + q]);
                        p += t;
                        sabs += fabs(t);
                    }
                    const double want = gelu_tanh_d(p), g = gp[i * o + j];
                    /* the pre-activation: rounded to fp16 (CPU order) or summed in fp32 (tensor cores);
                     * the output: its own rounding; GELU_EPI_ABS: cuBLASLt's GELU epilogue near zero */
                    const double tol = fabs(gelu_tanh_grad(p)) * (0.75 * ulp16(p) + ldexp(sabs, -20)) +
                                       1.5 * ulp16(want) + GELU_EPI_ABS;
                    const double r = fabs(g - want) / tol;
                    if (r > 1) bad++;
                    if (r > wr) { wr = r; wp = p; wg = g; }
                    if (fabs(gelu_erf_d(p) - want) > 3 * tol) telling++;
                }
            printf("  %-10s %-52s %lld of %lld beyond the tanh bound; %lld would expose an erf GELU; worst %.2fx "
                   "the bound at pre %.6g: got %.6g, tanh %.6g\n",
                   "gelu", cas, (long long)bad, (long long)(nr * o), (long long)telling, wr, wp, wg, gelu_tanh_d(wp));
            T_ASSERTF(bad == 0, "%s: %lld elements off the tanh GELU", cas, (long long)bad);
            if (nr * o >= 100000) /* big enough to tell the two GELUs apart */
                T_ASSERTF(telling > 1000, "%s: only %lld elements tell tanh from erf: the check has no power", cas,
                          (long long)telling);
            t_free(&got), t_free(&gh);
        }
        if (cs[c].res != 2) t_free(&dy);
        t_free(&x), t_free(&w), t_free(&b), t_free(&r), t_free(&ref), t_free(&dx), t_free(&dw), t_free(&db), t_free(&dr);
    }
}

static void test_stacked(void)
{
    static const struct { int64_t S, n, k, o; enum dtype dt; int bias; double tol; const char *what; } cs[] = {
        {3, 1036, 1152, 1152, DTYPE_F16, 1, TOL_F16, "vision q|k|v (strided batch)"},
        {3, 20, 72, 40, DTYPE_F16, 1, TOL_F16, "small, strided batch"},
        {2, 12, 64, 36, DTYPE_F16, 1, TOL_F16, "o*2 bytes not 16-aligned: loop"},
        {3, 4, 64, 32, DTYPE_F16, 1, TOL_F16, "decode: GEMV loop"},
        {2, 30, 48, 24, DTYPE_F32, 0, TOL_F32, "f32, no bias: loop"},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        const int64_t S = cs[c].S, n = cs[c].n, k = cs[c].k, o = cs[c].o;
        const enum dtype dt = cs[c].dt;
        struct tensor x = h_rand(dt, 2, n, k, 0, 1.0f), w = h_rand(dt, 2, S * o, k, 0, 1.0f);
        struct tensor b = h_rand(dt, 1, S * o, 0, 0, 4.0f), ref = h_new(dt, 3, S, n, o);
        op_matmul_stacked(&ref, &x, &w, cs[c].bias ? &b : NULL);
        /* the CPU twin is S op_matmul calls on the row blocks: check that first, bit for bit */
        struct tensor one = h_new(dt, 2, n, o, 0);
        struct tensor ref2 = tensor_reshape(&ref, 2, S * n, o);
        for (int64_t s = 0; s < S; s++) {
            struct tensor ws = tensor_rows_view(&w, s * o, o), bs = tensor_rows_view(&b, s * o, o);
            op_matmul(&one, &x, &ws, cs[c].bias ? &bs : NULL);
            struct tensor rs = tensor_rows_view(&ref2, s * n, n);
            T_ASSERT(memcmp(one.data, rs.data, tensor_nbytes(&one)) == 0);
        }
        struct tensor dx = d_from(&x), dw = d_from(&w), db = d_from(&b), dy = d_new(dt, 3, S, n, o);
        op_matmul_stacked(&dy, &dx, &dw, cs[c].bias ? &db : NULL);
        char cas[120];
        snprintf(cas, sizeof cas, "S%lld n%lld k%lld o%lld %s%s (%s)", (long long)S, (long long)n, (long long)k,
                 (long long)o, dtype_name(dt), cs[c].bias ? "+b" : "", cs[c].what);
        check_close("stacked", cas, &dy, &ref, cs[c].tol);
        t_free(&x), t_free(&w), t_free(&b), t_free(&ref), t_free(&one), t_free(&dx), t_free(&dw), t_free(&db),
            t_free(&dy);
    }
}

int cuda_lt_sweep(int ordinal, int64_t n, int64_t k, int64_t o, int batch, int gelu, int res); /* cuda_gemv.cu */

int cuda_gemm_rot_sweep(int ordinal, int64_t n, int64_t k, int64_t o, int batch); /* cuda_gemv.cu */

/* `test_cuda_linear bench rot`: the batched decode step's products (o, q|k|v, gate|up stacked, down,
 * lm_head) at 16..64 rows with the weights rotated beyond the L2: cuBLAS's default against every
 * cuBLASLt candidate */
static void bench_rot(void)
{
    static const struct { int64_t k, o; int batch; } ms[] = {
        {4096, 4096, 1}, {4096, 6144, 1}, {4096, 14336, 2}, {14336, 4096, 1}, {4096, 128256, 1}};
    static const int64_t ns[] = {16, 32, 48, 64};
    for (size_t m = 0; m < sizeof ms / sizeof ms[0]; m++)
        for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
            if (ms[m].o < 100000 || ns[i] == 64) cuda_gemm_rot_sweep(0, ns[i], ms[m].k, ms[m].o, ms[m].batch);
}

/* `test_cuda_linear bench`: every cuBLASLt algorithm at the vision tower's GEMMs (10 pieces of 1024
 * patches) and the LLM prefill's, heuristic choice against the fastest. */
static void bench(void)
{
    static const struct { int64_t n, k, o; int batch, gelu, res; } cs[] = {
        {10240, 1152, 1152, 3, 0, 0}, {10240, 1152, 1152, 1, 0, 1}, {10240, 1152, 4304, 1, 1, 0},
        {10240, 4304, 1152, 1, 0, 1}, {1015, 4096, 6144, 1, 0, 0},  {1015, 4096, 4096, 1, 0, 1},
        {1015, 4096, 28672, 1, 0, 0}, {1015, 14336, 4096, 1, 0, 1}, {3000, 4096, 6144, 1, 0, 0},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++)
        cuda_lt_sweep(0, cs[c].n, cs[c].k, cs[c].o, cs[c].batch, cs[c].gelu, cs[c].res);
}

int main(int argc, char **argv)
{
    struct backend_info bi;
    backend_query(&bi);
    if (argc > 1 && !strcmp(argv[1], "bench")) {
        if (bi.n_gpus) {
            if (argc > 2 && !strcmp(argv[2], "rot")) bench_rot();
            else bench();
        }
        return 0;
    }
    if (bi.n_gpus == 0) {
        (void)t_cur_fail;
        T_SKIP(test_linear, "no CUDA device");
        T_SKIP(test_stacked, "no CUDA device");
        return t_main_end("test_cuda_linear");
    }
    T_RUN(test_linear);
    T_RUN(test_stacked);
    return t_main_end("test_cuda_linear");
}

#else /* built without CUDA */

int main(void)
{
    (void)t_cur_fail;
    T_SKIP(test_cuda_linear, "built without CUDA (make CUDA=1)");
    return t_main_end("test_cuda_linear");
}

#endif
