/* test_matmul.c: the CPU matmul's rule (src/backend_cpu_matmul.c): every output element is computed by
 * one fixed sequence of fp32 operations that depends only on k, whatever the rows around it. The
 * sequence is written here again in scalar C (ref_dot: eight lanes of fmaf, the lanes summed as
 * ((0+4)+(1+5))+((2+6)+(3+7)), the k % 8 tail by fmaf, then the bias, then the rounding to y's dtype), and
 * op_matmul must give its bits exactly:
 *  - weights F32, F16, BF16, Q8, Q4 (quantized: the sequence on their F16 dequantization, backend.h),
 *    activations F32 and F16, outputs F32 or F16, with and without a bias;
 *  - k below 8, not a multiple of 8, long (few rows of x per tile); o of 1, 7, 50, 97 (not multiples of
 *    the kernels' widths 3 and 4 or of the 48-row panel);
 *  - all 40 rows in one call (tiles of several sizes, a partial last one), every row alone, and row
 *    views at other offsets and lengths 2, 3, 5, 9, 33;
 *  - 1 and 3 OpenMP threads.
 * The inputs are order-sensitive: a plain left-to-right fmaf sum differs from the rule on most
 * elements (checked), so a kernel that summed in another order would fail here. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "quant.h"
#include "t.h"
#include "tensor.h"

#define N 40

static uint64_t rng = 0x243f6a8885a308d3ULL;
static float rndf(void) /* [-1, 1) */
{
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(rng >> 32) / 4294967296.0 * 2 - 1);
}
/* values of mixed magnitudes (2^-4 .. 2^3), so that the summation order shows in the last bits */
static float rnd_mixed(void)
{
    const float m = rndf();
    return m * ldexpf(1.0f, (int)((rndf() + 1) * 3.5f) - 4);
}

/* the rule, in scalar C */
static float ref_dot(const float *x, const float *w, int64_t k)
{
    float lane[8] = {0};
    const int64_t k8 = k / 8 * 8;
    for (int64_t j = 0; j < k8; j += 8)
        for (int l = 0; l < 8; l++) lane[l] = fmaf(x[j + l], w[j + l], lane[l]);
    float s = ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]));
    for (int64_t j = k8; j < k; j++) s = fmaf(x[j], w[j], s);
    return s;
}

/* a weight [o, k] of dtype wdt from random values: the tensor, and the f32 values it stands for */
static struct tensor make_weight(enum dtype wdt, int64_t o, int64_t k, float *wv)
{
    float *src = malloc((size_t)(o * k) * sizeof(float));
    CHECK(src);
    for (int64_t i = 0; i < o * k; i++) src[i] = rnd_mixed() * 0.25f;
    struct tensor w = tensor_make(wdt, device_cpu(), NULL, 2, o, k);
    CHECK((w.data = malloc(tensor_nbytes(&w))));
    if (dtype_is_quant(wdt)) {
        struct err e = {{0}};
        CHECKF(quant_quantize_rows(w.data, wdt, src, o, k, "w", &e) == 0, "%s", e.msg);
        quant_dequant_rows(wv, w.data, wdt, o, k);
    } else {
        convert_from_f32(w.data, wdt, src, o * k);
        convert_to_f32(wv, w.data, wdt, o * k);
    }
    free(src);
    return w;
}

/* op_matmul of rows [r0, r0 + n) of x against the reference rows; returns the count of differing
 * elements (printing the first) */
static int64_t check_rows(const struct tensor *x, const struct tensor *w, const struct tensor *bias, enum dtype ydt,
                          int64_t r0, int64_t n, const float *ref, const char *what)
{
    const int64_t o = w->shape[0];
    struct tensor xv = tensor_rows_view(x, r0, n);
    struct tensor y = tensor_make(ydt, device_cpu(), NULL, 2, n, o);
    CHECK((y.data = malloc(tensor_nbytes(&y))));
    op_matmul(&y, &xv, w, bias);
    float *yf = malloc((size_t)(n * o) * sizeof(float));
    CHECK(yf);
    convert_to_f32(yf, y.data, ydt, n * o);
    int64_t bad = 0;
    for (int64_t i = 0; i < n * o; i++)
        if (memcmp(&yf[i], &ref[r0 * o + i], sizeof(float))) {
            if (!bad)
                fprintf(stderr, "  %s: rows %lld..%lld, y[%lld][%lld] = %.9g, the rule gives %.9g\n", what,
                        (long long)r0, (long long)(r0 + n - 1), (long long)(r0 + i / o), (long long)(i % o), yf[i],
                        ref[r0 * o + i]);
            bad++;
        }
    free(yf);
    free(y.data);
    return bad;
}

static void check_case(enum dtype wdt, enum dtype adt, enum dtype ydt, int64_t k, int64_t o, int with_bias)
{
    char what[128];
    snprintf(what, sizeof what, "w %s, x %s, y %s, k %lld, o %lld%s", dtype_name(wdt), dtype_name(adt),
             dtype_name(ydt), (long long)k, (long long)o, with_bias ? ", bias" : "");
    float *wv = malloc((size_t)(o * k) * sizeof(float)), *xv = malloc((size_t)(N * k) * sizeof(float));
    float *ref = malloc((size_t)(N * o) * sizeof(float)), *bv = malloc((size_t)o * sizeof(float));
    CHECK(wv && xv && ref && bv);
    struct tensor w = make_weight(wdt, o, k, wv);
    struct tensor x = tensor_make(adt, device_cpu(), NULL, 2, (int64_t)N, k);
    CHECK((x.data = malloc(tensor_nbytes(&x))));
    for (int64_t i = 0; i < N * k; i++) xv[i] = rnd_mixed();
    convert_from_f32(x.data, adt, xv, N * k);
    convert_to_f32(xv, x.data, adt, N * k); /* the values x holds */
    struct tensor b = tensor_make(adt, device_cpu(), NULL, 1, o);
    CHECK((b.data = malloc(tensor_nbytes(&b))));
    for (int64_t i = 0; i < o; i++) bv[i] = rndf();
    convert_from_f32(b.data, adt, bv, o);
    convert_to_f32(bv, b.data, adt, o);
    for (int64_t t = 0; t < N; t++)
        for (int64_t r = 0; r < o; r++) {
            float v = ref_dot(xv + t * k, wv + r * k, k) + (with_bias ? bv[r] : 0.0f);
            ref[t * o + r] = ydt == DTYPE_F16 ? f16_to_f32(f32_to_f16(v)) : v; /* rounded to y's dtype */
        }
    const struct tensor *bias = with_bias ? &b : NULL;
    int64_t bad = check_rows(&x, &w, bias, ydt, 0, N, ref, what);
    for (int64_t t = 0; t < N && !bad; t++) bad += check_rows(&x, &w, bias, ydt, t, 1, ref, what);
    static const int64_t views[][2] = {{1, 2}, {5, 3}, {30, 9}, {7, 33}, {35, 5}};
    for (int v = 0; v < 5 && !bad; v++) bad += check_rows(&x, &w, bias, ydt, views[v][0], views[v][1], ref, what);
    T_ASSERTF(bad == 0, "%s: %lld elements differ from the rule", what, (long long)bad);
    free(wv), free(xv), free(ref), free(bv);
    free(w.data), free(x.data), free(b.data);
}

static void run_cases(void)
{
    static const int64_t ks_float[] = {3, 8, 13, 200, 1003, 4100}, ks_quant[] = {16, 208, 4112};
    static const int64_t os[] = {1, 7, 50, 97};
    static const enum dtype wdts[] = {DTYPE_F32, DTYPE_F16, DTYPE_BF16, DTYPE_Q8, DTYPE_Q4};
    int ci = 0;
    for (int wi = 0; wi < 5; wi++) {
        const int quant = dtype_is_quant(wdts[wi]);
        const int64_t *ks = quant ? ks_quant : ks_float;
        const int nk = quant ? 3 : 6;
        for (int ki = 0; ki < nk; ki++)
            for (int ai = 0; ai < 2; ai++, ci++) {
                const enum dtype adt = ai ? DTYPE_F16 : DTYPE_F32;
                const enum dtype ydt = ai && ci % 4 == 1 ? DTYPE_F32 : adt; /* F16 x into an F32 y sometimes */
                const int64_t o = ks[ki] > 1000 ? os[2 + ci % 2] : os[ci % 4];
                check_case(wdts[wi], adt, ydt, ks[ki], o, ci % 3 != 0);
            }
    }
}

static void test_rule_1_thread(void)
{
    backend_set_threads(1);
    run_cases();
}

static void test_rule_3_threads(void)
{
    backend_set_threads(3);
    run_cases();
}

/* The inputs tell summation orders apart: a left-to-right sum differs from the rule's on most
 * elements (else the checks above could not see a kernel that summed in another order). */
static void test_inputs_order_sensitive(void)
{
    const int64_t k = 200, m = 400;
    float *x = malloc((size_t)(m * k) * sizeof(float)), *w = malloc((size_t)(m * k) * sizeof(float));
    CHECK(x && w);
    for (int64_t i = 0; i < m * k; i++) x[i] = rnd_mixed(), w[i] = rnd_mixed() * 0.25f;
    int differ = 0;
    for (int64_t i = 0; i < m; i++) {
        float s = 0;
        for (int64_t j = 0; j < k; j++) s = fmaf(x[i * k + j], w[i * k + j], s);
        differ += s != ref_dot(x + i * k, w + i * k, k);
    }
    printf("  left-to-right vs the rule: %d of %lld dot products differ\n", differ, (long long)m);
    T_ASSERT(differ > m / 2);
    free(x);
    free(w);
}

int main(void)
{
    T_RUN(test_inputs_order_sensitive);
    T_RUN(test_rule_1_thread);
    T_RUN(test_rule_3_threads);
    return t_main_end("test_matmul");
}
