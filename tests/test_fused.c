/* test_fused.c: the fused decode ops on the CPU (backend.h: op_rmsnorm_matmul, op_rmsnorm_swiglu, and
 * op_linear with a residual, which llm.c uses for one-token steps; they take up to 8 rows).
 *  - each equals, bit for bit, the plain ops it is defined by, called here one by one (op_rmsnorm
 *    into a tensor of x's dtype, op_matmul on row views of the joined weight, op_silu_mul, op_add):
 *    F16 and F32, 1..8 rows, 1..4 parts, no norm, a Q8 weight (its row views are valid weights);
 *  - against float64 formulas written here (not the backend's code), within a few fp16 / fp32
 *    roundings, so that a mistake shared by the twin and the plain ops (a part taken from the wrong
 *    rows, gate and up swapped, the norm of the wrong tensor) fails too.
 * The CUDA kernels are checked against these twins in test_cuda_ops (on the GPU). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "quant.h"
#include "t.h"
#include "tensor.h"

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static float frnd(void) /* uniform in [-1, 1) */
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng >> 40) / (double)(1ull << 23) - 1.0);
}

static struct tensor mk(enum dtype dt, int64_t r, int64_t c)
{
    struct tensor t = c ? tensor_make(dt, device_cpu(), NULL, 2, r, c) : tensor_make(dt, device_cpu(), NULL, 1, r);
    t.data = calloc(1, tensor_nbytes(&t));
    CHECK(t.data);
    return t;
}

/* random values amp * U[-1, 1) + off in t's dtype (F32 / F16) */
static struct tensor rnd(enum dtype dt, int64_t r, int64_t c, float amp, float off)
{
    struct tensor t = mk(dt, r, c);
    const int64_t n = tensor_numel(&t);
    float *f = malloc((size_t)n * sizeof *f);
    CHECK(f);
    for (int64_t i = 0; i < n; i++) f[i] = amp * frnd() + off;
    convert_from_f32(t.data, dt, f, n);
    free(f);
    return t;
}

static double at(const struct tensor *t, int64_t i)
{
    float v;
    convert_to_f32(&v, (const char *)t->data + (size_t)i * dtype_size(t->dtype), t->dtype, 1);
    return v;
}

static int same(const struct tensor *a, const struct tensor *b)
{
    return tensor_nbytes(a) == tensor_nbytes(b) && !memcmp(a->data, b->data, tensor_nbytes(a));
}

/* float64 RMSNorm of row r of x times nw (NULL: 1) into xn[k] */
static void norm_ref(double *xn, const struct tensor *x, int64_t r, const struct tensor *nw, double eps)
{
    const int64_t k = x->shape[1];
    double ss = 0;
    for (int64_t j = 0; j < k; j++) ss += at(x, r * k + j) * at(x, r * k + j);
    const double inv = nw ? 1.0 / sqrt(ss / (double)k + eps) : 1.0;
    for (int64_t j = 0; j < k; j++) xn[j] = at(x, r * k + j) * inv * (nw ? at(nw, j) : 1.0);
}

static double dot_ref(const double *xn, const struct tensor *w, int64_t row, int64_t k)
{
    double s = 0;
    for (int64_t j = 0; j < k; j++) s += xn[j] * at(w, row * k + j);
    return s;
}

/* relative error bound against the float64 formulas: measured (2026-12-02) at most 6.1e-4 (F16: the
 * rounded norm, products and sums) and 1.4e-7 (F32); limits about 3.3x and 4x that */
static double tol(enum dtype dt) { return dt == DTYPE_F16 ? 2e-3 : 6e-7; }

static void test_rmsnorm_matmul(void)
{
    static const struct { int64_t n, k; int np; int64_t parts[4]; enum dtype dt; int norm; } cs[] = {
        {1, 256, 3, {128, 32, 32}, DTYPE_F16, 1}, {5, 96, 4, {40, 1, 17, 64}, DTYPE_F32, 1},
        {8, 64, 1, {100}, DTYPE_F16, 1},          {3, 48, 2, {7, 9}, DTYPE_F16, 0},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        const int64_t n = cs[c].n, k = cs[c].k;
        const int np = cs[c].np;
        int64_t o = 0;
        for (int i = 0; i < np; i++) o += cs[c].parts[i];
        struct tensor x = rnd(cs[c].dt, n, k, 2.0f, 0.3f), w = rnd(cs[c].dt, o, k, 1.0f, 0.0f);
        struct tensor nw = rnd(cs[c].dt, k, 0, 0.5f, 1.0f);
        struct tensor ys[4], ps[4], *yp[4];
        for (int i = 0; i < np; i++) ys[i] = mk(cs[c].dt, n, cs[c].parts[i]), ps[i] = mk(cs[c].dt, n, cs[c].parts[i]), yp[i] = &ys[i];
        op_rmsnorm_matmul(yp, np, &x, cs[c].norm ? &nw : NULL, 1e-5f, &w);
        /* the plain ops */
        struct tensor xn = mk(cs[c].dt, n, k);
        if (cs[c].norm) op_rmsnorm(&xn, &x, &nw, 1e-5f);
        else memcpy(xn.data, x.data, tensor_nbytes(&x));
        double worst = 0;
        double *xr = malloc((size_t)k * sizeof *xr);
        CHECK(xr);
        for (int i = 0, off = 0; i < np; off += (int)cs[c].parts[i], i++) {
            struct tensor wi = tensor_rows_view(&w, off, cs[c].parts[i]);
            op_matmul(&ps[i], &xn, &wi, NULL);
            T_ASSERTF(same(&ys[i], &ps[i]), "case %zu part %d: not the plain ops' bits", c, i);
            double mref = 0, mdiff = 0; /* against float64 */
            for (int64_t r = 0; r < n; r++) {
                norm_ref(xr, &x, r, cs[c].norm ? &nw : NULL, 1e-5);
                for (int64_t j = 0; j < cs[c].parts[i]; j++) {
                    const double ref = dot_ref(xr, &w, off + j, k), got = at(&ys[i], r * cs[c].parts[i] + j);
                    mref = fmax(mref, fabs(ref));
                    mdiff = fmax(mdiff, fabs(got - ref));
                }
            }
            worst = fmax(worst, mdiff / mref);
        }
        printf("  rmsnorm_matmul n%lld k%lld %d parts %s%s: vs float64 rel %.3g\n", (long long)n, (long long)k, np,
               dtype_name(cs[c].dt), cs[c].norm ? "" : " (no norm)", worst);
        T_ASSERTF(worst < tol(cs[c].dt), "case %zu: rel %.3g", c, worst);
        for (int i = 0; i < np; i++) free(ys[i].data), free(ps[i].data);
        free(x.data), free(w.data), free(nw.data), free(xn.data), free(xr);
    }
}

static void test_rmsnorm_swiglu(void)
{
    static const struct { int64_t n, k, f; enum dtype dt; int norm; } cs[] = {
        {1, 256, 100, DTYPE_F16, 1}, {6, 128, 33, DTYPE_F32, 1}, {2, 64, 50, DTYPE_F16, 0},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        const int64_t n = cs[c].n, k = cs[c].k, f = cs[c].f;
        struct tensor x = rnd(cs[c].dt, n, k, 2.0f, -0.2f), w = rnd(cs[c].dt, 2 * f, k, 0.3f, 0.0f);
        struct tensor nw = rnd(cs[c].dt, k, 0, 0.5f, 1.0f), y = mk(cs[c].dt, n, f), py = mk(cs[c].dt, n, f);
        op_rmsnorm_swiglu(&y, &x, cs[c].norm ? &nw : NULL, 1e-6f, &w);
        struct tensor xn = mk(cs[c].dt, n, k), g = mk(cs[c].dt, n, f), u = mk(cs[c].dt, n, f);
        if (cs[c].norm) op_rmsnorm(&xn, &x, &nw, 1e-6f);
        else memcpy(xn.data, x.data, tensor_nbytes(&x));
        struct tensor wg = tensor_rows_view(&w, 0, f), wu = tensor_rows_view(&w, f, f);
        op_matmul(&g, &xn, &wg, NULL);
        op_matmul(&u, &xn, &wu, NULL);
        op_silu_mul(&py, &g, &u);
        T_ASSERTF(same(&y, &py), "case %zu: not the plain ops' bits", c);
        double *xr = malloc((size_t)k * sizeof *xr), mref = 0, mdiff = 0;
        CHECK(xr);
        for (int64_t r = 0; r < n; r++) {
            norm_ref(xr, &x, r, cs[c].norm ? &nw : NULL, 1e-6);
            for (int64_t j = 0; j < f; j++) {
                const double gv = dot_ref(xr, &w, j, k), uv = dot_ref(xr, &w, f + j, k);
                const double ref = gv / (1.0 + exp(-gv)) * uv, got = at(&y, r * f + j);
                mref = fmax(mref, fabs(ref));
                mdiff = fmax(mdiff, fabs(got - ref));
            }
        }
        printf("  rmsnorm_swiglu n%lld k%lld f%lld %s%s: vs float64 rel %.3g\n", (long long)n, (long long)k,
               (long long)f, dtype_name(cs[c].dt), cs[c].norm ? "" : " (no norm)", mdiff / mref);
        T_ASSERTF(mdiff / mref < tol(cs[c].dt), "case %zu: rel %.3g", c, mdiff / mref);
        free(x.data), free(w.data), free(nw.data), free(y.data), free(py.data), free(xn.data), free(g.data);
        free(u.data), free(xr);
    }
}

/* op_linear(h, x, w, NULL, LINEAR_NONE, h), the residual adds of a fused step: op_matmul + op_add */
static void test_linear_residual(void)
{
    for (int dti = 0; dti < 2; dti++) {
        const enum dtype dt = dti ? DTYPE_F32 : DTYPE_F16;
        const int64_t n = 3, k = 200, o = 64;
        struct tensor x = rnd(dt, n, k, 1.0f, 0.0f), w = rnd(dt, o, k, 0.2f, 0.0f), h = rnd(dt, n, o, 4.0f, 0.0f);
        struct tensor h2 = mk(dt, n, o), t = mk(dt, n, o);
        memcpy(h2.data, h.data, tensor_nbytes(&h));
        op_linear(&h, &x, &w, NULL, LINEAR_NONE, &h);
        op_matmul(&t, &x, &w, NULL);
        op_add(&h2, &h2, &t);
        T_ASSERTF(same(&h, &h2), "%s: not op_matmul + op_add", dtype_name(dt));
        free(x.data), free(w.data), free(h.data), free(h2.data), free(t.data);
    }
}

/* A Q8 weight (the quantized formats reuse the ops): the twin runs the plain ops on row views of the
 * records, so q|k|v from a joined Q8 matrix equals op_matmul on each part's own Q8 rows. */
static void test_quantized_weight(void)
{
    const int64_t n = 2, k = 64, parts[3] = {48, 16, 16}, o = 80;
    struct tensor x = rnd(DTYPE_F16, n, k, 2.0f, 0.0f), wf = rnd(DTYPE_F32, o, k, 1.0f, 0.0f);
    struct tensor nw = rnd(DTYPE_F16, k, 0, 0.5f, 1.0f);
    struct tensor w = tensor_make(DTYPE_Q8, device_cpu(), NULL, 2, o, k);
    w.data = malloc(tensor_nbytes(&w));
    CHECK(w.data);
    struct err e = {{0}};
    T_ASSERTF(quant_quantize_rows(w.data, DTYPE_Q8, wf.data, o, k, "test", &e) == 0, "%s", e.msg);
    struct tensor ys[3], ps[3], *yp[3];
    for (int i = 0; i < 3; i++) ys[i] = mk(DTYPE_F16, n, parts[i]), ps[i] = mk(DTYPE_F16, n, parts[i]), yp[i] = &ys[i];
    op_rmsnorm_matmul(yp, 3, &x, &nw, 1e-5f, &w);
    struct tensor xn = mk(DTYPE_F16, n, k);
    op_rmsnorm(&xn, &x, &nw, 1e-5f);
    for (int i = 0, off = 0; i < 3; off += (int)parts[i], i++) {
        struct tensor wi = tensor_make(DTYPE_Q8, device_cpu(), NULL, 2, parts[i], k);
        wi.data = malloc(tensor_nbytes(&wi));
        CHECK(wi.data);
        memcpy(wi.data, (char *)w.data + (size_t)off * dtype_row_bytes(DTYPE_Q8, k), tensor_nbytes(&wi));
        op_matmul(&ps[i], &xn, &wi, NULL);
        T_ASSERTF(same(&ys[i], &ps[i]), "Q8 part %d: not op_matmul on its own rows", i);
        free(wi.data), free(ys[i].data), free(ps[i].data);
    }
    free(x.data), free(wf.data), free(nw.data), free(w.data), free(xn.data);
}

int main(void)
{
    T_RUN(test_rmsnorm_matmul);
    T_RUN(test_rmsnorm_swiglu);
    T_RUN(test_linear_residual);
    T_RUN(test_quantized_weight);
    return t_main_end("test_fused");
}
