/* test_norms.c: op_rmsnorm, op_add_rmsnorm and op_layernorm on the CPU against the float64 formulas
 * written here, on rows where eps matters: Llama-3 hidden states right after the embedding have an
 * RMS of ~1e-3 (embedding rows of std ~1e-3..1e-2, docs/TESTING.md "Realistic statistics"), so
 * mean(x^2) ~ 1e-6 sits below rms_norm_eps = 1e-5; SigLIP's LayerNorm has eps 1e-6. Rows of RMS 1
 * are checked too. A misplaced or dropped eps is a factor 1.4..3 here; the tolerances are a few
 * times the measured rounding error (printed), see docs/TESTING.md. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "t.h"
#include "tensor.h"

#define D 4096 /* Llama-3-8B hidden size */
#define DV 1152 /* SigLIP-400M hidden size */
#define ROWS 6
/* LayerNorm limits: measured rel 3.5e-7, max 1.9e-7 (2026-12-02), about 4x */
#define LN_REL 1.5e-6
#define LN_MAX 8e-7

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static double urand(void) /* (0, 1) */
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return ((double)(rng >> 11) + 0.5) / 9007199254740992.0;
}
static double nrand(void) { return sqrt(-2 * log(urand())) * cos(6.283185307179586 * urand()); }

/* row r: RMS scale[r]; a few "massive activation" channels in the last row */
static const double row_scale[ROWS] = {1e-3, 3e-4, 3e-3, 1e-2, 1.0, 1e-3};

static void fill(float *x, int d, double mean)
{
    for (int r = 0; r < ROWS; r++)
        for (int j = 0; j < d; j++) x[r * d + j] = (float)(mean + row_scale[r] * nrand());
    for (int j = 0; j < 3; j++) x[(ROWS - 1) * d + 7 + 911 * j] = (float)(0.05 * (j + 1)); /* outliers */
}

/* max over rows of ||y - ref||_2 / ||ref||_2 and the max over elements of |y - ref| / max|ref| */
struct err2 {
    double rel, maxabs;
};
static struct err2 compare(const float *y, const double *ref, int d)
{
    struct err2 m = {0, 0};
    for (int r = 0; r < ROWS; r++) {
        double n2 = 0, d2 = 0, mx = 0, ma = 0;
        for (int j = 0; j < d; j++) {
            double e = (double)y[r * d + j] - ref[r * d + j];
            d2 += e * e;
            n2 += ref[r * d + j] * ref[r * d + j];
            mx = fmax(mx, fabs(ref[r * d + j]));
            ma = fmax(ma, fabs(e));
        }
        m.rel = fmax(m.rel, sqrt(d2 / n2));
        m.maxabs = fmax(m.maxabs, ma / mx);
    }
    return m;
}

static void rms_ref(double *ref, const float *x, const float *w, int d, double eps)
{
    for (int r = 0; r < ROWS; r++) {
        double ss = 0;
        for (int j = 0; j < d; j++) ss += (double)x[r * d + j] * x[r * d + j];
        double inv = 1.0 / sqrt(ss / d + eps);
        for (int j = 0; j < d; j++) ref[r * d + j] = (double)w[j] * x[r * d + j] * inv;
    }
}

/* measured on 2026-12-02 (x86-64, gcc 12): f32 rel 9.7e-8 / max 1.5e-7, f16 rel 3.0e-4 / max 7.3e-4;
 * limits: f32 about 4x, f16 2x / 2.7x the measured (one f16 ulp of an output is 4.9e-4..9.8e-4 relative) */
static void test_rmsnorm(void)
{
    float *x = malloc(sizeof(float) * ROWS * D), *w = malloc(sizeof(float) * D), *y = malloc(sizeof(float) * ROWS * D);
    double *ref = malloc(sizeof(double) * ROWS * D);
    fill(x, D, 0.0);
    for (int j = 0; j < D; j++) w[j] = (float)(1.0 + 0.05 * nrand()); /* norm weights near 1 */
    const float eps = 1e-5f;                                           /* Llama-3 rms_norm_eps */
    rms_ref(ref, x, w, D, eps);
    struct tensor tx = tensor_make(DTYPE_F32, device_cpu(), x, 2, (int64_t)ROWS, (int64_t)D);
    struct tensor tw = tensor_make(DTYPE_F32, device_cpu(), w, 1, (int64_t)D);
    struct tensor ty = tensor_make(DTYPE_F32, device_cpu(), y, 2, (int64_t)ROWS, (int64_t)D);
    op_rmsnorm(&ty, &tx, &tw, eps);
    struct err2 m = compare(y, ref, D);
    fprintf(stderr, "  rmsnorm f32: rel %.3g max %.3g\n", m.rel, m.maxabs);
    T_ASSERTF(m.rel <= 4e-7 && m.maxabs <= 6e-7, "rmsnorm f32 rel %.3g max %.3g", m.rel, m.maxabs);

    /* fp16 activations (weights f16 too, as loaded): the reference from the same rounded inputs */
    uint16_t *xh = malloc(2 * ROWS * D), *wh = malloc(2 * D), *yh = malloc(2 * ROWS * D);
    for (int i = 0; i < ROWS * D; i++) { xh[i] = f32_to_f16(x[i]); x[i] = f16_to_f32(xh[i]); }
    for (int j = 0; j < D; j++) { wh[j] = f32_to_f16(w[j]); w[j] = f16_to_f32(wh[j]); }
    rms_ref(ref, x, w, D, eps);
    struct tensor hx = tensor_make(DTYPE_F16, device_cpu(), xh, 2, (int64_t)ROWS, (int64_t)D);
    struct tensor hw = tensor_make(DTYPE_F16, device_cpu(), wh, 1, (int64_t)D);
    struct tensor hy = tensor_make(DTYPE_F16, device_cpu(), yh, 2, (int64_t)ROWS, (int64_t)D);
    op_rmsnorm(&hy, &hx, &hw, eps);
    for (int i = 0; i < ROWS * D; i++) y[i] = f16_to_f32(yh[i]);
    m = compare(y, ref, D);
    fprintf(stderr, "  rmsnorm f16: rel %.3g max %.3g\n", m.rel, m.maxabs);
    T_ASSERTF(m.rel <= 6e-4 && m.maxabs <= 2e-3, "rmsnorm f16 rel %.3g max %.3g", m.rel, m.maxabs);

    /* power: eps outside the square root, or no eps, is far outside these limits on the small rows */
    double *alt = malloc(sizeof(double) * ROWS * D);
    rms_ref(alt, x, w, D, 0.0);
    for (int i = 0; i < ROWS * D; i++) y[i] = (float)alt[i];
    T_ASSERT(compare(y, ref, D).rel > 0.1);
    free(alt);
    free(xh), free(wh), free(yh), free(x), free(w), free(y), free(ref);
}

/* op_add_rmsnorm: h += o, then rmsnorm(h) — the sum is what is normalised */
static void test_add_rmsnorm(void)
{
    float *h = malloc(sizeof(float) * ROWS * D), *o = malloc(sizeof(float) * ROWS * D);
    float *w = malloc(sizeof(float) * D), *xn = malloc(sizeof(float) * ROWS * D);
    double *ref = malloc(sizeof(double) * ROWS * D);
    fill(h, D, 0.0);
    fill(o, D, 0.0);
    for (int j = 0; j < D; j++) w[j] = (float)(1.0 + 0.05 * nrand());
    float *sum = malloc(sizeof(float) * ROWS * D);
    for (int i = 0; i < ROWS * D; i++) sum[i] = h[i] + o[i]; /* f32 add, as the op rounds h */
    rms_ref(ref, sum, w, D, 1e-5);
    struct tensor th = tensor_make(DTYPE_F32, device_cpu(), h, 2, (int64_t)ROWS, (int64_t)D);
    struct tensor to = tensor_make(DTYPE_F32, device_cpu(), o, 2, (int64_t)ROWS, (int64_t)D);
    struct tensor tw = tensor_make(DTYPE_F32, device_cpu(), w, 1, (int64_t)D);
    struct tensor tn = tensor_make(DTYPE_F32, device_cpu(), xn, 2, (int64_t)ROWS, (int64_t)D);
    op_add_rmsnorm(&th, &tn, &to, &tw, 1e-5f);
    T_ASSERT(memcmp(h, sum, sizeof(float) * ROWS * D) == 0);
    struct err2 m = compare(xn, ref, D);
    fprintf(stderr, "  add_rmsnorm f32: rel %.3g max %.3g\n", m.rel, m.maxabs);
    T_ASSERTF(m.rel <= 4e-7 && m.maxabs <= 6e-7, "add_rmsnorm rel %.3g max %.3g", m.rel, m.maxabs);
    free(h), free(o), free(w), free(xn), free(ref), free(sum);
}

static void ln_ref(double *ref, const float *x, const float *w, const float *b, int d, double eps)
{
    for (int r = 0; r < ROWS; r++) {
        double s = 0, ss = 0;
        for (int j = 0; j < d; j++) s += x[r * d + j];
        double mean = s / d;
        for (int j = 0; j < d; j++) ss += (x[r * d + j] - mean) * (x[r * d + j] - mean);
        double rstd = 1.0 / sqrt(ss / d + eps);
        for (int j = 0; j < d; j++) ref[r * d + j] = (x[r * d + j] - mean) * rstd * w[j] + b[j];
    }
}

/* LayerNorm with SigLIP's eps 1e-6 on rows of std 3e-4..1e-2 around a mean of 0.01 */
static void test_layernorm(void)
{
    float *x = malloc(sizeof(float) * ROWS * DV), *w = malloc(sizeof(float) * DV), *b = malloc(sizeof(float) * DV);
    float *y = malloc(sizeof(float) * ROWS * DV);
    double *ref = malloc(sizeof(double) * ROWS * DV);
    fill(x, DV, 0.01);
    for (int j = 0; j < DV; j++) { w[j] = (float)(1.0 + 0.05 * nrand()); b[j] = (float)(0.01 * nrand()); }
    const float eps = 1e-6f;
    ln_ref(ref, x, w, b, DV, eps);
    struct tensor tx = tensor_make(DTYPE_F32, device_cpu(), x, 2, (int64_t)ROWS, (int64_t)DV);
    struct tensor tw = tensor_make(DTYPE_F32, device_cpu(), w, 1, (int64_t)DV);
    struct tensor tb = tensor_make(DTYPE_F32, device_cpu(), b, 1, (int64_t)DV);
    struct tensor ty = tensor_make(DTYPE_F32, device_cpu(), y, 2, (int64_t)ROWS, (int64_t)DV);
    op_layernorm(&ty, &tx, &tw, &tb, eps);
    struct err2 m = compare(y, ref, DV);
    fprintf(stderr, "  layernorm f32: rel %.3g max %.3g\n", m.rel, m.maxabs);
    T_ASSERTF(m.rel <= LN_REL && m.maxabs <= LN_MAX, "layernorm f32 rel %.3g max %.3g", m.rel, m.maxabs);
    double *alt = malloc(sizeof(double) * ROWS * DV);
    ln_ref(alt, x, w, b, DV, 0.0);
    for (int i = 0; i < ROWS * DV; i++) y[i] = (float)alt[i];
    T_ASSERT(compare(y, ref, DV).rel > 0.05); /* power: eps matters on these rows */
    free(alt), free(x), free(w), free(b), free(y), free(ref);
}

int main(void)
{
    T_RUN(test_rmsnorm);
    T_RUN(test_add_rmsnorm);
    T_RUN(test_layernorm);
    return t_main_end("test_norms");
}
