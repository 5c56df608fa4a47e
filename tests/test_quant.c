/* test_quant.c: the quantized formats (docs/QUANT.md). Byte counts from the shape; each format's
 * dequantization against a reference written here from the documented layout (the NF4 table typed from
 * bitsandbytes' source); the AVX2 path against its scalar twin; quantize -> dequantize error bounds;
 * bitsandbytes NF4 quantize/resolve against an independent flat reference; op_matmul / op_linear /
 * op_matmul_stacked with a quantized weight equal to the same op on its F16 dequantization, bit for bit;
 * the bitsandbytes fixture (tools/ref_nf4.py) bit for bit, skipped with the reason until it exists. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "quant.h"
#include "safetensors.h"
#include "t.h"
#include "tensor.h"

/* quant.c's scalar twins (the definitions the AVX2 and threaded paths must equal, byte for byte) */
void quant_dequant_rows_scalar(float *dst, const void *src, enum dtype dt, int64_t n, int64_t k);
int quant_quantize_rows_scalar(void *dst, enum dtype dt, const float *src, int64_t n, int64_t k);
void quant_bnb_quantize_scalar(const float *w, int64_t numel, const float nested_map[256], uint8_t *codes,
                               uint8_t *absmax_u8, float *nested_absmax, float *offset, float *absmax_f32);

/* bitsandbytes/functional.py get_4bit_type("nf4") (also backends/utils.py _NF4_QUANT_TABLE), typed from
 * the source at commit 95f9af309d4d */
static const float NF4_REF[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                                  -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                                  0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f,
                                  0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
                                  0.7229568362236023f, 1.0f};

static uint64_t rng = 88172645463325252ULL;
static uint32_t rnd32(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}
static float rndf(void) { return (float)((double)rnd32() / 4294967296.0 * 2 - 1); } /* [-1, 1) */
static float h(float v) { return f16_to_f32(f32_to_f16(v)); }

static void test_row_bytes(void)
{
    /* hand-computed from docs/QUANT.md: codes + scales, padded to 16 */
    T_EQ_INT(dtype_row_bytes(DTYPE_Q8, 4096), 4112);        /* 4096 + 2 -> 4112 */
    T_EQ_INT(dtype_row_bytes(DTYPE_Q4, 4096), 2176);        /* 2048 + 64*2 */
    T_EQ_INT(dtype_row_bytes(DTYPE_NF4, 4096), 2304);       /* 2048 + 64*4 */
    T_EQ_INT(dtype_row_bytes(DTYPE_NF4, 4304), 3232);       /* 2152 + 269*4 = 3228 -> 3232 (groups of 16) */
    T_EQ_INT(dtype_row_bytes(DTYPE_Q4, 14336), 7616);       /* 7168 + 224*2 */
    T_EQ_INT(dtype_row_bytes(DTYPE_Q4, 48), 32);            /* 24 + 3*2 = 30 -> 32 */
    T_EQ_INT(dtype_row_bytes(DTYPE_Q4, 40), 0);             /* not a multiple of 16 */
    T_EQ_INT(quant_group(DTYPE_NF4, 4304), 16);
    T_EQ_INT(quant_group(DTYPE_Q4, 96), 32);
    T_EQ_INT(quant_group(DTYPE_Q8, 4096), 4096);
    struct tensor t = tensor_make(DTYPE_Q4, device_cpu(), (void *)0x1000, 2, (int64_t)6144, (int64_t)4096);
    T_EQ_INT(tensor_nbytes(&t), 6144 * 2176);
    struct tensor v = tensor_rows_view(&t, 4096, 1024); /* k_proj of a joined q|k|v */
    T_EQ_INT((char *)v.data - (char *)t.data, 4096 * 2176);
    T_EQ_INT(tensor_nbytes(&v), 1024 * 2176);
}

/* the documented element j of a record, written independently of quant.c */
static float ref_elem(const uint8_t *r, enum dtype dt, int64_t k, int64_t j)
{
    if (dt == DTYPE_Q8) {
        uint16_t s;
        memcpy(&s, r + k, 2);
        return h((float)(int8_t)r[j] * f16_to_f32(s));
    }
    const int64_t g = k % 64 == 0 ? 64 : k % 32 == 0 ? 32 : 16;
    if (dt == DTYPE_Q4) {
        const uint32_t u = (uint32_t)r[j / 8 * 4] | (uint32_t)r[j / 8 * 4 + 1] << 8 | (uint32_t)r[j / 8 * 4 + 2] << 16 |
                           (uint32_t)r[j / 8 * 4 + 3] << 24;
        const int p = (int)(j % 8), c = (int)(u >> (16 * (p % 2) + 4 * (p / 2))) & 15;
        uint16_t s;
        memcpy(&s, r + k / 2 + 2 * (j / g), 2);
        return h((float)(c - 8) * f16_to_f32(s));
    }
    const int c = j % 2 ? r[j / 2] & 15 : r[j / 2] >> 4;
    float a;
    memcpy(&a, r + k / 2 + 4 * (j / g), 4);
    return h(NF4_REF[c] * a);
}

/* random valid records: random codes, finite random scales */
static void random_records(uint8_t *buf, enum dtype dt, int64_t n, int64_t k)
{
    const size_t rb = dtype_row_bytes(dt, k);
    const int64_t g = quant_group(dt, k);
    for (int64_t i = 0; i < n; i++) {
        uint8_t *r = buf + i * rb;
        memset(r, 0, rb);
        const int64_t ncode = dt == DTYPE_Q8 ? k : k / 2;
        for (int64_t j = 0; j < ncode; j++) r[j] = (uint8_t)rnd32();
        if (dt == DTYPE_Q8) for (int64_t j = 0; j < k; j++) if (r[j] == 0x80) r[j] = 0x81; /* -128 is not a code */
        for (int64_t s = 0; s < k / g; s++) {
            float v = rndf() * 0.05f;
            if (dt == DTYPE_NF4) memcpy(r + k / 2 + 4 * s, &v, 4);
            else {
                uint16_t hs = f32_to_f16(v);
                memcpy(r + (dt == DTYPE_Q8 ? k : k / 2 + 2 * s), &hs, 2);
            }
        }
    }
}

static void test_dequant_reference(void)
{
    const enum dtype dts[] = {DTYPE_Q8, DTYPE_Q4, DTYPE_NF4};
    const int64_t ks[] = {16, 48, 96, 256, 4304};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 5; b++) {
            const enum dtype dt = dts[a];
            const int64_t k = ks[b], n = 5;
            uint8_t *buf = malloc((size_t)n * dtype_row_bytes(dt, k));
            float *fa = malloc((size_t)(n * k) * 4), *fs = malloc((size_t)(n * k) * 4);
            uint16_t *f16 = malloc((size_t)(n * k) * 2);
            random_records(buf, dt, n, k);
            quant_dequant_rows(fa, buf, dt, n, k);
            quant_dequant_rows_scalar(fs, buf, dt, n, k);
            quant_dequant_rows_f16(f16, buf, dt, n, k);
            int bad = 0, bad_s = 0, bad_h = 0;
            for (int64_t i = 0; i < n; i++)
                for (int64_t j = 0; j < k; j++) {
                    float want = ref_elem(buf + i * dtype_row_bytes(dt, k), dt, k, j);
                    bad += memcmp(&fa[i * k + j], &want, 4) != 0;
                    bad_s += memcmp(&fs[i * k + j], &want, 4) != 0;
                    bad_h += f16[i * k + j] != f32_to_f16(want);
                }
            T_ASSERTF(!bad && !bad_s && !bad_h, "%s k=%lld: %d (avx2) %d (scalar) %d (f16) of %lld differ from the reference",
                      dtype_name(dt), (long long)k, bad, bad_s, bad_h, (long long)(n * k));
            free(buf);
            free(fa);
            free(fs);
            free(f16);
        }
}

static void test_quantize_bounds(void)
{
    struct err e = {{0}};
    const int64_t n = 8, k = 320; /* q4 groups of 64 */
    float *x = malloc((size_t)(n * k) * 4), *w = malloc((size_t)(n * k) * 4);
    for (int64_t i = 0; i < n * k; i++) x[i] = h(rndf() * (i % 97 == 0 ? 4.0f : 0.5f)); /* fp16 values, outliers */
    x[3] = 0;
    for (int f = 0; f < 2; f++) {
        const enum dtype dt = f ? DTYPE_Q4 : DTYPE_Q8;
        uint8_t *q = malloc((size_t)n * dtype_row_bytes(dt, k));
        T_EQ_INT(quant_quantize_rows(q, dt, x, n, k, "x", &e), 0);
        quant_dequant_rows(w, q, dt, n, k);
        const int64_t g = quant_group(dt, k);
        int bad = 0, exact_max = 0;
        double err2 = 0, x2 = 0;
        for (int64_t i = 0; i < n; i++)
            for (int64_t j0 = 0; j0 < k; j0 += g) {
                float am = 0, m = 0;
                for (int64_t j = j0; j < j0 + g; j++)
                    if (fabsf(x[i * k + j]) > am) { am = fabsf(x[i * k + j]); m = x[i * k + j]; }
                /* the step: am/127 (q8) or |m|/8 (q4), an fp16 number; an error of half a step, a whole
                 * step where q4 clamps at +7, plus the fp16 rounding of the product */
                const float step = dt == DTYPE_Q8 ? h(am / 127.0f) : fabsf(h(m / -8.0f));
                for (int64_t j = j0; j < j0 + g; j++) {
                    const float d = fabsf(w[i * k + j] - x[i * k + j]);
                    const float bound = (dt == DTYPE_Q8 ? 0.5f : 1.0f) * step * 1.001f + fabsf(x[i * k + j]) * 1e-3f;
                    bad += !(d <= bound);
                    err2 += (double)d * d;
                    x2 += (double)x[i * k + j] * x[i * k + j];
                    if (x[i * k + j] == m && fabsf(w[i * k + j] - m) <= 1e-3f * am) exact_max++;
                }
            }
        T_ASSERTF(bad == 0, "%s: %d values beyond the error bound", dtype_name(dt), bad);
        T_ASSERTF(exact_max >= (int)(n * k / g), "%s: the extreme of each group is kept (%d of %lld)", dtype_name(dt),
                  exact_max, (long long)(n * k / g));
        T_ASSERT(w[3] == 0);
        fprintf(stderr, "  %s: relative RMS error %.4f (the per-value bound above is the check)\n", dtype_name(dt),
                sqrt(err2 / x2));
        free(q);
    }
    /* refusals */
    uint8_t q[64];
    x[5] = NAN;
    T_EQ_INT(quant_quantize_rows(q, DTYPE_Q8, x, 1, 16, "blk.w", &e), -1);
    T_CONTAINS(e.msg, "blk.w");
    T_EQ_INT(quant_quantize_rows(q, DTYPE_Q4, x + 32, 1, 40, "blk.w", &e), -1);
    T_CONTAINS(e.msg, "multiple of 16");
    free(x);
    free(w);
}

/* Values that exercise every branch of the q8/q4 rule: fp16 values of mixed scale, an all-zero group, a
 * group whose extreme appears with both signs (the first one decides q4's sign), signed zeros, values at
 * exact half steps (ties to even), groups so small the f16 scale is subnormal or zero, and fp16's largest */
static void fill_adversarial(float *x, int64_t n, int64_t g)
{
    for (int64_t i = 0; i < n; i++) x[i] = h(rndf() * (i % 97 == 0 ? 4.0f : 0.5f));
    for (int64_t i = 0; i + g <= n; i += g)
        switch ((i / g) % 8) {
        case 0: for (int64_t j = 0; j < g; j++) x[i + j] = 0; x[i + 1] = -0.0f; break;
        case 1: x[i] = -3.0f; x[i + 5] = 3.0f; break;                              /* -extreme first */
        case 2: x[i + 2] = 3.0f; x[i + 5] = -3.0f; break;                          /* +extreme first */
        case 3: for (int64_t j = 0; j < g; j++) x[i + j] = (float)((int)(j % 17) - 8) * 0.5f; break; /* ties */
        case 4: for (int64_t j = 0; j < g; j++) x[i + j] = h(rndf() * 6e-8f); break; /* scale underflows */
        case 5: for (int64_t j = 0; j < g; j++) x[i + j] = h(rndf() * 3e-5f); break; /* subnormal scale */
        case 6: x[i + 3] = 65504.0f; x[i + 4] = -0.0f; break;
        default: break;
        }
}

/* The threaded AVX2 quantizers write the scalar definitions' bytes (the code before they existed, moved
 * unchanged into the scalar twins), from F32, F16 and BF16 sources, whatever the thread count. */
static void test_quantize_threads(void)
{
    struct err e = {{0}};
    const int64_t n = 37, ks[] = {320, 208, 4304 / 4 + 12}; /* q4 groups of 64, 16 (208), 16 (1088) */
    const int threads[] = {1, 3, 8, 0};
    for (int ki = 0; ki < 3; ki++) {
        const int64_t k = ks[ki];
        float *x = malloc((size_t)(n * k) * 4), *xr = malloc((size_t)(n * k) * 4);
        uint16_t *x16 = malloc((size_t)(n * k) * 2), *xb = malloc((size_t)(n * k) * 2);
        for (int f = 0; f < 2; f++) {
            const enum dtype dt = f ? DTYPE_Q4 : DTYPE_Q8;
            const size_t rb = dtype_row_bytes(dt, k), nb = (size_t)n * rb;
            fill_adversarial(x, n * k, f ? quant_group(dt, k) : 16);
            uint8_t *ref = malloc(nb), *got = malloc(nb);
            for (int src = 0; src < 3; src++) { /* F32, F16, BF16 */
                const void *sp = x;
                enum dtype sdt = DTYPE_F32;
                if (src == 1) { convert_from_f32(x16, DTYPE_F16, x, n * k); sp = x16; sdt = DTYPE_F16; }
                if (src == 2) { convert_from_f32(xb, DTYPE_BF16, x, n * k); sp = xb; sdt = DTYPE_BF16; }
                convert_to_f32(xr, sp, sdt, n * k);
                T_EQ_INT(quant_quantize_rows_scalar(ref, dt, xr, n, k), 0);
                for (int t = 0; t < 4; t++) {
                    memset(got, 0xa5, nb);
                    T_EQ_INT(quant_quantize_tensor(got, dt, sp, sdt, n, k, threads[t], "w", &e), 0);
                    T_ASSERTF(!memcmp(got, ref, nb), "%s k=%lld from %s, %d threads: bytes differ from the scalar rule",
                              dtype_name(dt), (long long)k, dtype_name(sdt), threads[t]);
                }
            }
            /* a non-finite value: the first bad row is named, whichever thread meets it */
            x[9 * k + 3] = INFINITY;
            x[23 * k + 1] = NAN;
            for (int t = 0; t < 4; t++) {
                T_EQ_INT(quant_quantize_tensor(got, dt, x, DTYPE_F32, n, k, threads[t], "blk.w", &e), -1);
                T_CONTAINS(e.msg, "blk.w: row 9 holds a non-finite value");
            }
            free(ref);
            free(got);
        }
        free(x);
        free(xr);
        free(x16);
        free(xb);
    }
    uint8_t q[64];
    T_EQ_INT(quant_quantize_tensor(q, DTYPE_NF4, q, DTYPE_F32, 1, 16, 1, "w", &e), -1);
    T_CONTAINS(e.msg, "cannot quantize to");
    T_EQ_INT(quant_quantize_tensor(q, DTYPE_Q8, q, DTYPE_U8, 1, 16, 1, "w", &e), -1);
    T_CONTAINS(e.msg, "cannot quantize U8");
}

/* NF4: the threaded AVX2 blocks give bitsandbytes' rule as the scalar definition computes it, byte for
 * byte (codes, absmax codes, nested absmax, offset), from F32 and F16, for any thread count; also with a
 * last partial block and with inf/NaN in the input (garbage in, the same garbage out) */
static void test_bnb_threads(void)
{
    float map[256];
    quant_bnb_dynamic_map(map);
    const int64_t sizes[] = {64 * 256 * 3 + 64 * 5, 6 * 48, 64 * 512};
    const int threads[] = {1, 3, 8, 0};
    for (int c = 0; c < 4; c++) {
        const int64_t n = sizes[c % 3], nb = (n + 63) / 64, nn = (nb + 255) / 256;
        float *x = malloc((size_t)n * 4), *xr = malloc((size_t)n * 4), *sc = malloc((size_t)nb * 4);
        uint16_t *x16 = malloc((size_t)n * 2);
        fill_adversarial(x, n, 64);
        for (int64_t i = 0; i < n; i += 64 * 7) x[i] = h(x[i] * 0.5f + 0.01f);
        if (c == 3) { x[70] = INFINITY; x[200] = NAN; }
        for (int i = 0; i < 15; i++) { /* block 1: absmax 1, values on the code's midpoints (f32 source: exact) */
            x[64 + 2 * i] = (QUANT_NF4[i] + QUANT_NF4[i + 1]) / 2.0f;
            x[64 + 2 * i + 1] = -x[64 + 2 * i];
        }
        x[64 + 31] = 1.0f;
        uint8_t *rc = malloc((size_t)n / 2), *ra = malloc((size_t)nb), *gc = malloc((size_t)n / 2), *ga = malloc((size_t)nb);
        float *rn = malloc((size_t)nn * 4), *gn = malloc((size_t)nn * 4), roff, goff;
        for (int src = 0; src < 2; src++) {
            const void *sp = x;
            enum dtype sdt = DTYPE_F32;
            if (src) { convert_from_f32(x16, DTYPE_F16, x, n); sp = x16; sdt = DTYPE_F16; }
            convert_to_f32(xr, sp, sdt, n);
            quant_bnb_quantize_scalar(xr, n, map, rc, ra, rn, &roff, sc);
            for (int t = 0; t < 4; t++) {
                memset(gc, 0xa5, (size_t)n / 2);
                memset(ga, 0xa5, (size_t)nb);
                memset(gn, 0xa5, (size_t)nn * 4);
                quant_bnb_quantize(sp, sdt, n, map, gc, ga, gn, &goff, sc, threads[t]);
                const int same = !memcmp(gc, rc, (size_t)n / 2) && !memcmp(ga, ra, (size_t)nb) &&
                                 !memcmp(gn, rn, (size_t)nn * 4) && !memcmp(&goff, &roff, 4);
                T_ASSERTF(same, "case %d from %s, %d threads: NF4 parts differ from the scalar rule", c, dtype_name(sdt),
                          threads[t]);
                const float o2 = quant_bnb_offset(sp, sdt, n, sc, threads[t]);
                T_ASSERTF(!memcmp(&o2, &roff, 4), "case %d: quant_bnb_offset %.9g vs %.9g", c, (double)o2, (double)roff);
            }
        }
        free(x);
        free(xr);
        free(sc);
        free(x16);
        free(rc);
        free(ra);
        free(gc);
        free(ga);
        free(rn);
        free(gn);
    }
}

/* bitsandbytes' dynamic map, computed in double: the f32 table must be within one f32 rounding */
static void test_dynamic_map(void)
{
    float map[256];
    quant_bnb_dynamic_map(map);
    int sorted = 1, zero = 0;
    for (int i = 1; i < 256; i++) sorted &= map[i - 1] <= map[i];
    for (int i = 0; i < 256; i++) zero += map[i] == 0;
    T_ASSERT(sorted);
    T_EQ_INT(zero, 1);
    T_ASSERT(map[255] == 1.0f);
    /* the most negative: -(mean of the last two points of linspace(0.1, 1, 65)) = -(0.9859375 + 1) / 2 */
    T_NEAR(map[0], -0.99296875, 1e-6);
    /* the smallest positive: 1e-6 * (0.1 + 1) / 2 */
    int ipos = 0;
    while (map[ipos] <= 0) ipos++;
    T_NEAR(map[ipos], 0.55e-6, 1e-12);
    T_EQ_INT(ipos, 128);
}

/* NF4 quantize (bitsandbytes' rule) and the resolved records against a flat reference: bitsandbytes'
 * blocks run over the flattened tensor, rows of k % 64 != 0 straddle them */
static void test_bnb_nf4(void)
{
    const int64_t shapes[3][2] = {{64, 512}, {24, 208}, {6, 48}}; /* 32768 values = 2 nested blocks; straddling */
    float map[256];
    quant_bnb_dynamic_map(map);
    for (int s = 0; s < 3; s++) {
        const int64_t o = shapes[s][0], k = shapes[s][1], n = o * k, nb = (n + 63) / 64, nn = (nb + 255) / 256;
        float *x = malloc((size_t)n * 4), *am = malloc((size_t)nb * 4), *na = malloc((size_t)nn * 4), *w = malloc((size_t)n * 4);
        uint8_t *codes = malloc((size_t)n / 2), *a8 = malloc((size_t)nb);
        for (int64_t i = 0; i < n; i++) x[i] = h(rndf() * (float)(1 + i / 640));
        float off = 0;
        quant_bnb_quantize(x, DTYPE_F32, n, map, codes, a8, na, &off, am, 0);
        /* the true absmax of each flat block, and the error of the double-quantized one */
        int bad_code = 0, bad_rec = 0;
        double worst_am = 0;
        struct quant_bnb_nf4 q = {o, k, codes, a8, na, map, off};
        for (int64_t b = 0; b < nb; b++) {
            float t = 0;
            for (int64_t j = b * 64; j < (b + 1) * 64 && j < n; j++) t = fabsf(x[j]) > t ? fabsf(x[j]) : t;
            const float r = map[a8[b]] * na[b / 256]; /* f32 product */
            const float A = r + off;
            T_ASSERT(quant_bnb_absmax(&q, b) == A);
            /* the nested 8-bit code is within half a gap of the dynamic map near 1 (0.9/64/2) of the
             * nested block's scale, na = max |absmax - offset| over its 256 blocks */
            worst_am = fmax(worst_am, fabs((double)A - t) / (na[b / 256] * (0.9 / 128 + 1e-6) + 1e-6 * t));
            /* each code is the NF4 value nearest to x / true absmax (within rounding at a midpoint) */
            for (int64_t j = b * 64; j < (b + 1) * 64 && j < n; j++) {
                const int c = j % 2 ? codes[j / 2] & 15 : codes[j / 2] >> 4;
                const float v = x[j] / t;
                for (int c2 = 0; c2 < 16; c2++)
                    if (fabsf(NF4_REF[c2] - v) < fabsf(NF4_REF[c] - v) - 1e-6f) { bad_code++; break; }
            }
        }
        T_ASSERTF(bad_code == 0, "[%lld, %lld]: %d codes are not the nearest NF4 value", (long long)o, (long long)k, bad_code);
        T_ASSERTF(worst_am <= 1.0, "double-quantized absmax off by %.3g of its bound", worst_am);
        /* the resolved row records dequantize to the flat reference: f16(NF4[c] * A(flat block)) */
        struct tensor t = tensor_make(DTYPE_NF4, device_cpu(), NULL, 2, o, k);
        void *rec = malloc(tensor_nbytes(&t));
        quant_bnb_to_rows(rec, &q);
        quant_dequant_rows(w, rec, DTYPE_NF4, o, k);
        for (int64_t j = 0; j < n; j++) {
            const int c = j % 2 ? codes[j / 2] & 15 : codes[j / 2] >> 4;
            const float A = (float)(map[a8[j / 64]] * na[j / 64 / 256]) + off;
            bad_rec += w[j] != h(NF4_REF[c] * A);
        }
        T_ASSERTF(bad_rec == 0, "[%lld, %lld]: %d values differ from the flat reference", (long long)o, (long long)k, bad_rec);
        free(rec);
        free(x);
        free(am);
        free(na);
        free(w);
        free(codes);
        free(a8);
    }
}

/* A quantized weight behaves exactly as its F16 dequantization in every op that takes a weight. */
static void test_ops_equal_f16(void)
{
    struct err e = {{0}};
    float map[256];
    quant_bnb_dynamic_map(map);
    const enum dtype dts[] = {DTYPE_Q8, DTYPE_Q4, DTYPE_NF4};
    for (int a = 0; a < 3; a++) {
        const enum dtype dt = dts[a];
        const int64_t o = 48, k = 208, nmax = 40;
        float *wf = malloc((size_t)(o * k) * 4);
        for (int64_t i = 0; i < o * k; i++) wf[i] = h(rndf() * 0.1f);
        struct tensor wq = tensor_make(dt, device_cpu(), NULL, 2, o, k);
        wq.data = malloc(tensor_nbytes(&wq));
        if (dt == DTYPE_NF4) {
            const int64_t nb = (o * k + 63) / 64;
            uint8_t *codes = malloc((size_t)(o * k / 2)), *a8 = malloc((size_t)nb);
            float *na = malloc((size_t)((nb + 255) / 256) * 4), *sc = malloc((size_t)nb * 4), off;
            quant_bnb_quantize(wf, DTYPE_F32, o * k, map, codes, a8, na, &off, sc, 0);
            struct quant_bnb_nf4 q = {o, k, codes, a8, na, map, off};
            quant_bnb_to_rows(wq.data, &q);
            free(codes);
            free(a8);
            free(na);
            free(sc);
        } else {
            T_EQ_INT(quant_quantize_rows(wq.data, dt, wf, o, k, "w", &e), 0);
        }
        struct tensor w16 = tensor_make(DTYPE_F16, device_cpu(), malloc((size_t)(o * k) * 2), 2, o, k);
        quant_dequant_rows_f16(w16.data, wq.data, dt, o, k);
        struct tensor x = tensor_make(DTYPE_F16, device_cpu(), malloc((size_t)(nmax * k) * 2), 2, nmax, k);
        for (int64_t i = 0; i < nmax * k; i++) ((uint16_t *)x.data)[i] = f32_to_f16(rndf());
        struct tensor bias = tensor_make(DTYPE_F16, device_cpu(), malloc((size_t)o * 2), 1, o);
        for (int64_t i = 0; i < o; i++) ((uint16_t *)bias.data)[i] = f32_to_f16(rndf() * 0.1f);
        float *y1 = malloc((size_t)(nmax * o) * 4), *y2 = malloc((size_t)(nmax * o) * 4);
        int64_t ns[3] = {1, 3, nmax}; /* the one-row kernel, a padded 4x3 block, two tiles of x */
        for (int t = 0; t < 3; t++) {
            const int64_t n = ns[t];
            struct tensor xs = tensor_rows_view(&x, 0, n);
            struct tensor ya = tensor_make(DTYPE_F32, device_cpu(), y1, 2, n, o), yb = tensor_make(DTYPE_F32, device_cpu(), y2, 2, n, o);
            op_matmul(&ya, &xs, &wq, &bias);
            op_matmul(&yb, &xs, &w16, &bias);
            T_ASSERTF(!memcmp(y1, y2, (size_t)(n * o) * 4), "%s op_matmul n=%lld differs from the F16 weight's", dtype_name(dt), (long long)n);
            /* a row view (a part of a joined q|k|v): rows 16..39 */
            struct tensor wv = tensor_rows_view(&wq, 16, 24), wv16 = tensor_rows_view(&w16, 16, 24);
            struct tensor yc = tensor_make(DTYPE_F32, device_cpu(), y1, 2, n, (int64_t)24),
                          yd = tensor_make(DTYPE_F32, device_cpu(), y2, 2, n, (int64_t)24);
            op_linear(&yc, &xs, &wv, NULL, LINEAR_GELU_TANH, NULL);
            op_linear(&yd, &xs, &wv16, NULL, LINEAR_GELU_TANH, NULL);
            T_ASSERTF(!memcmp(y1, y2, (size_t)(n * 24) * 4), "%s op_linear on a row view n=%lld differs", dtype_name(dt), (long long)n);
            /* three stacked Linears of 16 rows */
            struct tensor ys = tensor_make(DTYPE_F32, device_cpu(), y1, 3, (int64_t)3, n, (int64_t)16),
                          yt = tensor_make(DTYPE_F32, device_cpu(), y2, 3, (int64_t)3, n, (int64_t)16);
            op_matmul_stacked(&ys, &xs, &wq, &bias);
            op_matmul_stacked(&yt, &xs, &w16, &bias);
            T_ASSERTF(!memcmp(y1, y2, (size_t)(3 * n * 16) * 4), "%s op_matmul_stacked n=%lld differs", dtype_name(dt), (long long)n);
        }
        /* and the F16 dequantization is close to the weights it came from */
        double d2 = 0, w2 = 0;
        for (int64_t i = 0; i < o * k; i++) {
            double d = f16_to_f32(((uint16_t *)w16.data)[i]) - wf[i];
            d2 += d * d;
            w2 += (double)wf[i] * wf[i];
        }
        T_ASSERTF(sqrt(d2 / w2) < (dt == DTYPE_Q8 ? 0.01 : 0.15), "%s relative error %.3f", dtype_name(dt), sqrt(d2 / w2));
        free(wf);
        free(wq.data);
        free(w16.data);
        free(x.data);
        free(bias.data);
        free(y1);
        free(y2);
    }
}

/* tools/ref_nf4.py's fixture: bitsandbytes' own quantize_4bit / dequantize_4bit on fixed tensors */
#define NF4_FIXTURE "tests/fixtures/nf4_ref.safetensors"
static void test_bnb_fixture(void)
{
    struct safetensors *st = NULL;
    struct err e = {{0}};
    if (access(NF4_FIXTURE, R_OK) != 0) {
        T_SKIP(test_bnb_fixture, NF4_FIXTURE " is absent: run tools/ref_nf4.py on a machine with torch and the "
                                 "bitsandbytes source on PYTHONPATH (docs/QUANT.md), then commit the file");
        return;
    }
    T_ASSERTF(safetensors_open_file(&st, NF4_FIXTURE, &e) == 0, "%s", e.msg);
    if (!st) return;
    float map[256];
    quant_bnb_dynamic_map(map);
    struct tensor dm;
    T_EQ_INT(safetensors_get(st, "dynamic_map", &dm, &e), 0);
    int map_diff = 0;
    for (int i = 0; i < 256; i++) {
        float v;
        memcpy(&v, (const char *)dm.data + 4 * i, 4);
        map_diff += v != map[i];
    }
    T_ASSERTF(map_diff == 0, "quant_bnb_dynamic_map differs from bitsandbytes' create_dynamic_map in %d of 256", map_diff);
    static const char *cases[] = {"a", "b"};
    for (int c = 0; c < 2; c++) {
        char nm[64];
        struct tensor x, codes, a8, na, nmap, qmap, deq, off;
        int ok = 1;
#define GET(var, suffix) (snprintf(nm, sizeof nm, "%s.%s", cases[c], suffix), ok &= safetensors_get(st, nm, &var, &e) == 0)
        GET(x, "input");
        GET(codes, "weight");
        GET(a8, "absmax");
        GET(na, "nested_absmax");
        GET(nmap, "nested_quant_map");
        GET(qmap, "quant_map");
        GET(deq, "dequant");
        GET(off, "nested_offset");
#undef GET
        T_ASSERTF(ok, "fixture: %s", e.msg);
        if (!ok) continue;
        const int64_t o = x.shape[0], k = x.shape[1], n = o * k, nb = (n + 63) / 64, nn = (nb + 255) / 256;
        /* our reader: resolve bitsandbytes' parts, dequantize, compare with its dequantize_4bit */
        float *nab = malloc((size_t)nn * 4), *nmb = malloc(256 * 4), offv;
        memcpy(nab, na.data, (size_t)nn * 4);
        memcpy(nmb, nmap.data, 256 * 4);
        memcpy(&offv, off.data, 4);
        int qm = 0;
        for (int i = 0; i < 16; i++) qm += memcmp((const char *)qmap.data + 4 * i, &NF4_REF[i], 4) != 0;
        T_EQ_INT(qm, 0);
        struct quant_bnb_nf4 q = {o, k, codes.data, a8.data, nab, nmb, offv};
        struct tensor t = tensor_make(DTYPE_NF4, device_cpu(), NULL, 2, o, k);
        void *rec = malloc(tensor_nbytes(&t));
        uint16_t *ours = malloc((size_t)n * 2);
        quant_bnb_to_rows(rec, &q);
        quant_dequant_rows_f16(ours, rec, DTYPE_NF4, o, k);
        int64_t bad = 0;
        for (int64_t j = 0; j < n; j++) bad += ours[j] != ((const uint16_t *)deq.data)[j];
        T_ASSERTF(bad == 0, "case %s: %lld of %lld dequantized values differ from bitsandbytes'", cases[c], (long long)bad, (long long)n);
        /* our quantizer: the same codes and, from the same offset, the same absmax codes */
        float *xf = malloc((size_t)n * 4), *sc = malloc((size_t)nb * 4), *na2 = malloc((size_t)nn * 4), off2;
        uint8_t *c2 = malloc((size_t)n / 2), *a82 = malloc((size_t)nb);
        convert_to_f32(xf, x.data, x.dtype, n);
        quant_bnb_quantize(xf, DTYPE_F32, n, nmb, c2, a82, na2, &off2, sc, 0);
        T_ASSERTF(!memcmp(c2, codes.data, (size_t)n / 2), "case %s: NF4 codes differ from bitsandbytes'", cases[c]);
        T_ASSERTF(fabsf(off2 - offv) <= 2e-7f * fabsf(offv), "case %s: offset %.9g vs %.9g", cases[c], (double)off2, (double)offv);
        if (off2 == offv) {
            T_ASSERTF(!memcmp(a82, a8.data, (size_t)nb), "case %s: absmax codes differ", cases[c]);
            T_ASSERTF(!memcmp(na2, nab, (size_t)nn * 4), "case %s: nested absmax differs", cases[c]);
        } else {
            fprintf(stderr, "  case %s: the f32 mean differs in the last place from torch's; absmax codes not compared\n", cases[c]);
        }
        free(nab);
        free(nmb);
        free(rec);
        free(ours);
        free(xf);
        free(sc);
        free(na2);
        free(c2);
        free(a82);
    }
    safetensors_close(st);
}

/* ---- `test_quant bench`: quantization speed (ns per value) at 14336 x 4096 from F16, the scalar
 * definition (what quantization cost before) against the AVX2 path on 1 and on quant_threads() threads */
static void bench(void)
{
    const int64_t o = 14336, k = 4096, n = o * k, nb = n / 64;
    uint16_t *x16 = malloc((size_t)n * 2);
    float *xf = malloc((size_t)n * 4), *sc = malloc((size_t)nb * 4), *na = malloc((size_t)(nb / 256 + 1) * 4), off, map[256];
    uint8_t *dst = malloc((size_t)o * dtype_row_bytes(DTYPE_Q8, k)), *a8 = malloc((size_t)nb);
    struct err e = {{0}};
    quant_bnb_dynamic_map(map);
    for (int64_t i = 0; i < n; i++) x16[i] = f32_to_f16(rndf() * 0.05f);
    memset(xf, 0, (size_t)n * 4); /* touch every page first: page faults are not quantization */
    memset(sc, 0, (size_t)nb * 4);
    memset(dst, 0, (size_t)o * dtype_row_bytes(DTYPE_Q8, k));
    memset(a8, 0, (size_t)nb);
    const int nt = quant_threads();
    printf("quantize %lld x %lld from F16, ns/value, wall (CPU time of all threads): scalar definition (1 thread) | "
           "AVX2 1 thread | AVX2 %d threads\n", (long long)o, (long long)k, nt);
    for (int f = 0; f < 3; f++) {
        const enum dtype dt = f == 0 ? DTYPE_Q8 : f == 1 ? DTYPE_Q4 : DTYPE_NF4;
        double t[3], c[3];
        for (int m = 0; m < 3; m++) {
            /* one run each: enough to show the factor. The CPU time (all threads) is what a loaded host
             * distorts least: the wall time on an idle N-core host is about it / N. */
            struct timespec c0, c1;
            clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
            const double t0 = time_now();
            if (m == 0) { /* the definition takes f32: the conversion is part of what it cost */
                convert_to_f32(xf, x16, DTYPE_F16, n);
                if (dt == DTYPE_NF4) quant_bnb_quantize_scalar(xf, n, map, dst, a8, na, &off, sc);
                else quant_quantize_rows_scalar(dst, dt, xf, o, k);
            } else if (dt == DTYPE_NF4) {
                quant_bnb_quantize(x16, DTYPE_F16, n, map, dst, a8, na, &off, sc, m == 1 ? 1 : nt);
            } else {
                CHECK(!quant_quantize_tensor(dst, dt, x16, DTYPE_F16, o, k, m == 1 ? 1 : nt, "bench", &e));
            }
            t[m] = (time_now() - t0) / (double)n * 1e9;
            clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
            c[m] = ((double)(c1.tv_sec - c0.tv_sec) + 1e-9 * (double)(c1.tv_nsec - c0.tv_nsec)) / (double)n * 1e9;
        }
        printf("  %-4s %6.2f (%6.2f) | %6.2f (%6.2f) | %6.2f (%6.2f)\n", dtype_name(dt), t[0], c[0], t[1], c[1], t[2], c[2]);
    }
    free(x16);
    free(xf);
    free(sc);
    free(na);
    free(dst);
    free(a8);
}

/* The GPU tile layout (quant.h "Tiles"): which shapes take it, the bytes at the offsets quant.h writes out
 * (spelled out here as numbers for one tile position per format, not through quant_tile_code), and records ->
 * tiles -> records giving the records back (padding zero). */
static void test_tiles(void)
{
    T_ASSERT(quant_tiles_ok(DTYPE_Q4, 32, 256) && quant_tiles_ok(DTYPE_NF4, 16, 4096) && quant_tiles_ok(DTYPE_Q8, 48, 64));
    T_ASSERT(!quant_tiles_ok(DTYPE_Q4, 40, 256) && !quant_tiles_ok(DTYPE_Q4, 32, 192) && !quant_tiles_ok(DTYPE_Q8, 16, 48));
    T_ASSERT(!quant_tiles_ok(DTYPE_F16, 16, 256) && !quant_tiles_ok(DTYPE_NF4, 0, 256));
    static const enum dtype fm[3] = {DTYPE_Q8, DTYPE_Q4, DTYPE_NF4};
    for (int f = 0; f < 3; f++) {
        const enum dtype dt = fm[f];
        const int64_t o = 32, k = 256, rb = (int64_t)dtype_row_bytes(dt, k);
        uint8_t *rec = malloc((size_t)(o * rb)), *til = malloc((size_t)(o * rb)), *back = malloc((size_t)(o * rb));
        CHECK(rec && til && back);
        for (int64_t i = 0; i < o * rb; i++) rec[i] = (uint8_t)(i * 2654435761u >> 13);
        const int64_t cb = dt == DTYPE_Q8 ? k : k / 2, sb = dt == DTYPE_NF4 ? 4 : 2, pad = rb - cb - (dt == DTYPE_Q8 ? 1 : k / 64) * sb;
        for (int64_t r = 0; r < o; r++) memset(rec + r * rb + rb - pad, 0, (size_t)pad);
        quant_tiles_convert(til, rec, dt, o, k, true);
        /* row 19 (tile 1, row 3), code byte 69 (step 1, byte 5) */
        T_EQ_INT(til[16 * rb + 1024 + 3 * 64 + 5], rec[19 * rb + 69]);
        if (dt == DTYPE_Q8) { /* row 19's scale at the tile's 16 cb + 2 * 3 */
            T_EQ_INT(til[16 * rb + 16 * cb + 6], rec[19 * rb + cb]);
            T_EQ_INT(til[16 * rb + 16 * cb + 7], rec[19 * rb + cb + 1]);
        } else { /* row 19's group 3 (step 1, the second group): (32 + 6 + 1) scales into the tile's scales */
            for (int64_t b = 0; b < sb; b++) T_EQ_INT(til[16 * rb + 16 * cb + 39 * sb + b], rec[19 * rb + cb + 3 * sb + b]);
        }
        quant_tiles_convert(back, til, dt, o, k, false);
        T_ASSERTF(!memcmp(back, rec, (size_t)(o * rb)), "%s: records -> tiles -> records", dtype_name(dt));
        free(rec), free(til), free(back);
    }
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "bench")) {
        bench();
        return 0;
    }
    T_RUN(test_row_bytes);
    T_RUN(test_tiles);
    T_RUN(test_dequant_reference);
    T_RUN(test_quantize_bounds);
    T_RUN(test_quantize_threads);
    T_RUN(test_bnb_threads);
    T_RUN(test_dynamic_map);
    T_RUN(test_bnb_nf4);
    T_RUN(test_ops_equal_f16);
    T_RUN(test_bnb_fixture);
    return t_main_end("test_quant");
}
