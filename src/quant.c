/* quant.c: the numerics of the quantized formats (layouts: quant.h, docs/QUANT.md). Dequantization
 * has an AVX2/F16C path and a scalar twin (quant_dequant_rows_scalar, compared in test_quant); both give
 * the same F16 values. Quantization follows bitsandbytes' pure-PyTorch path (backends/default/ops.py)
 * operation by operation in f32 for NF4, and llama.cpp's Q4_0 rule for Q4. */
#include "quant.h"

#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#define QUANT_AVX2 1
#endif

/* bitsandbytes' NF4 table: functional.py get_4bit_type("nf4") (create_normal_map(offset=0.9677083)). */
const float QUANT_NF4[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
    -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
    0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

static inline float to_f16_value(float v) { return f16_to_f32(f32_to_f16(v)); }

/* byte and nibble of element j (0..K-1) of a Q4 record: see quant.h */
static inline void q4_pos(int64_t j, int64_t *byte, int *shift)
{
    const int64_t i = j >> 3;
    const int t = (int)((j & 7) >> 1), h = (int)(j & 1);
    *byte = 4 * i + 2 * h + (t >> 1);
    *shift = 4 * (t & 1);
}

/* ---------------------------------------------------------------- dequantization */

static void dequant_row_scalar(float *d, const uint8_t *r, enum dtype dt, int64_t k)
{
    const int64_t g = quant_group(dt, k);
    switch (dt) {
    case DTYPE_Q8: {
        uint16_t sh;
        memcpy(&sh, r + k, 2);
        const float s = f16_to_f32(sh);
        for (int64_t j = 0; j < k; j++) d[j] = to_f16_value((float)(int8_t)r[j] * s);
        return;
    }
    case DTYPE_Q4: {
        const uint8_t *sc = r + k / 2;
        for (int64_t j = 0; j < k; j++) {
            int64_t b;
            int sh;
            q4_pos(j, &b, &sh);
            uint16_t s16;
            memcpy(&s16, sc + 2 * (j / g), 2);
            d[j] = to_f16_value((float)(((r[b] >> sh) & 15) - 8) * f16_to_f32(s16));
        }
        return;
    }
    case DTYPE_NF4: {
        const uint8_t *am = r + k / 2;
        for (int64_t j = 0; j < k; j++) {
            const int c = j & 1 ? r[j / 2] & 15 : r[j / 2] >> 4;
            float a;
            memcpy(&a, am + 4 * (j / g), 4);
            d[j] = to_f16_value(QUANT_NF4[c] * a);
        }
        return;
    }
    default: CHECKF(0, "dequantize: %s is not a quantized dtype", dtype_name(dt));
    }
}

#ifdef QUANT_AVX2
static inline __m256 round_f16(__m256 v) { return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT)); }

/* 16 elements 16m..16m+15 of a Q4 record from its 8 code bytes: two interleaved words */
static void dequant_row_avx2(float *d, const uint8_t *r, enum dtype dt, int64_t k)
{
    const int64_t g = quant_group(dt, k);
    if (dt == DTYPE_Q8) {
        uint16_t sh;
        memcpy(&sh, r + k, 2);
        const __m256 s = _mm256_set1_ps(f16_to_f32(sh));
        for (int64_t j = 0; j < k; j += 8) {
            __m128i b8 = _mm_loadl_epi64((const __m128i *)(r + j));
            __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b8));
            _mm256_storeu_ps(d + j, round_f16(_mm256_mul_ps(v, s)));
        }
        return;
    }
    if (dt == DTYPE_Q4) {
        /* word u holds elements 8i..8i+7: element 8i+2t+h at bit 16h+4t; shifting u right by
         * 0,16,4,20,8,24,12,28 lists them in order */
        const __m256i shifts = _mm256_setr_epi32(0, 16, 4, 20, 8, 24, 12, 28);
        const __m256i m4 = _mm256_set1_epi32(15), eight = _mm256_set1_epi32(8);
        const uint8_t *sc = r + k / 2;
        for (int64_t j = 0; j < k; j += 8) {
            uint32_t u;
            memcpy(&u, r + j / 2, 4);
            uint16_t s16;
            memcpy(&s16, sc + 2 * (j / g), 2);
            __m256i c = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)u), shifts), m4);
            __m256 v = _mm256_cvtepi32_ps(_mm256_sub_epi32(c, eight));
            _mm256_storeu_ps(d + j, round_f16(_mm256_mul_ps(v, _mm256_set1_ps(f16_to_f32(s16)))));
        }
        return;
    }
    if (dt == DTYPE_NF4) {
        /* elements 2b (high nibble) and 2b+1 (low) of bytes b..b+3: a table lookup in two halves */
        const __m256 lo = _mm256_loadu_ps(QUANT_NF4), hi = _mm256_loadu_ps(QUANT_NF4 + 8);
        const __m256i shifts = _mm256_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24);
        const __m256i m4 = _mm256_set1_epi32(15), seven = _mm256_set1_epi32(7);
        const uint8_t *am = r + k / 2;
        for (int64_t j = 0; j < k; j += 8) {
            uint32_t u;
            memcpy(&u, r + j / 2, 4);
            float a;
            memcpy(&a, am + 4 * (j / g), 4);
            __m256i c = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)u), shifts), m4);
            __m256 vlo = _mm256_permutevar8x32_ps(lo, c), vhi = _mm256_permutevar8x32_ps(hi, c);
            __m256 v = _mm256_blendv_ps(vlo, vhi, _mm256_castsi256_ps(_mm256_cmpgt_epi32(c, seven)));
            _mm256_storeu_ps(d + j, round_f16(_mm256_mul_ps(v, _mm256_set1_ps(a))));
        }
        return;
    }
    dequant_row_scalar(d, r, dt, k);
}
#endif

/* exported for test_quant: the scalar twin of the AVX2 path */
void quant_dequant_rows_scalar(float *dst, const void *src, enum dtype dt, int64_t n, int64_t k);
void quant_dequant_rows_scalar(float *dst, const void *src, enum dtype dt, int64_t n, int64_t k)
{
    const size_t rb = dtype_row_bytes(dt, k);
    CHECKF(rb > 0 && dtype_is_quant(dt), "dequantize %s rows of %lld values", dtype_name(dt), (long long)k);
    for (int64_t i = 0; i < n; i++) dequant_row_scalar(dst + i * k, (const uint8_t *)src + (size_t)i * rb, dt, k);
}

void quant_dequant_rows(float *dst, const void *src, enum dtype dt, int64_t n, int64_t k)
{
#ifdef QUANT_AVX2
    const size_t rb = dtype_row_bytes(dt, k);
    CHECKF(rb > 0 && dtype_is_quant(dt), "dequantize %s rows of %lld values", dtype_name(dt), (long long)k);
    /* k % 16 == 0, and every group (16, 32 or 64 values, or the row) is a whole number of 8-value steps */
    for (int64_t i = 0; i < n; i++) dequant_row_avx2(dst + i * k, (const uint8_t *)src + (size_t)i * rb, dt, k);
#else
    quant_dequant_rows_scalar(dst, src, dt, n, k);
#endif
}

void quant_dequant_rows_f16(uint16_t *dst, const void *src, enum dtype dt, int64_t n, int64_t k)
{
    float *row = malloc((size_t)k * sizeof *row);
    CHECK(row);
    const size_t rb = dtype_row_bytes(dt, k);
    for (int64_t i = 0; i < n; i++) {
        quant_dequant_rows(row, (const uint8_t *)src + (size_t)i * rb, dt, 1, k);
        for (int64_t j = 0; j < k; j++) dst[i * k + j] = f32_to_f16(row[j]);
    }
    free(row);
}

/* ---------------------------------------------------------------- threads */

int quant_threads(void)
{
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > QUANT_MAX_THREADS ? QUANT_MAX_THREADS : (int)n;
}

/* Items [0, n) cut into n_threads contiguous ranges, one thread each (the caller runs the first). Every
 * item's bytes depend on that item alone, so the output does not depend on the cut. */
struct par_range {
    void (*fn)(void *ctx, int64_t i0, int64_t i1);
    void *ctx;
    int64_t i0, i1;
};

static void *par_main(void *p)
{
    struct par_range *r = p;
    r->fn(r->ctx, r->i0, r->i1);
    return NULL;
}

static void par_for(int64_t n, int n_threads, void (*fn)(void *ctx, int64_t i0, int64_t i1), void *ctx)
{
    int nt = n_threads > 0 ? n_threads : quant_threads();
    if (nt > QUANT_MAX_THREADS) nt = QUANT_MAX_THREADS;
    if (nt > n) nt = n > 0 ? (int)n : 1;
    struct par_range r[QUANT_MAX_THREADS];
    pthread_t th[QUANT_MAX_THREADS];
    int started[QUANT_MAX_THREADS] = {0};
    for (int t = 0; t < nt; t++) r[t] = (struct par_range){fn, ctx, n * t / nt, n * (t + 1) / nt};
    for (int t = 1; t < nt; t++) started[t] = pthread_create(&th[t], NULL, par_main, &r[t]) == 0;
    par_main(&r[0]);
    for (int t = 1; t < nt; t++) {
        if (started[t]) pthread_join(th[t], NULL);
        else par_main(&r[t]); /* no thread: the caller does that range too */
    }
}

/* Values [i0, i0+m) of src (dtype sdt) as f32: a view of F32 data, else converted into buf. */
static const float *as_f32(float *buf, const void *src, enum dtype sdt, int64_t i0, int64_t m)
{
    if (sdt == DTYPE_F32) return (const float *)src + i0;
    convert_to_f32(buf, (const char *)src + (size_t)i0 * dtype_size(sdt), sdt, m);
    return buf;
}

/* ---------------------------------------------------------------- quantization (q8, q4) */

/* One row of k f32 values into its record (rb bytes): -1 on a non-finite value. The scalar twin is the
 * definition; the AVX2 row gives the same bytes (test_quant compares them). */
static int quantize_row_scalar(uint8_t *r, enum dtype dt, const float *x, int64_t k, size_t rb)
{
    const int64_t g = quant_group(dt, k);
    memset(r, 0, rb);
    for (int64_t j = 0; j < k; j++)
        if (!isfinite(x[j])) return -1;
    for (int64_t j0 = 0; j0 < k; j0 += g) {
        float m = 0, am = 0; /* the value of largest magnitude (first one) */
        for (int64_t j = j0; j < j0 + g; j++)
            if (fabsf(x[j]) > am) { am = fabsf(x[j]); m = x[j]; }
        const uint16_t s16 = f32_to_f16(dt == DTYPE_Q8 ? am / 127.0f : m / -8.0f);
        const float s = f16_to_f32(s16);
        for (int64_t j = j0; j < j0 + g; j++) {
            float q = s != 0 ? nearbyintf(x[j] / s) : 0;
            if (dt == DTYPE_Q8) {
                q = q > 127 ? 127 : q < -127 ? -127 : q;
                r[j] = (uint8_t)(int8_t)q;
            } else {
                q = q > 7 ? 7 : q < -8 ? -8 : q;
                int64_t b;
                int sh;
                q4_pos(j, &b, &sh);
                r[b] |= (uint8_t)(((int)q + 8) << sh);
            }
        }
        memcpy(r + (dt == DTYPE_Q8 ? k : k / 2 + 2 * (j0 / g)), &s16, 2);
    }
    return 0;
}

#ifdef QUANT_AVX2
static inline float hmax8(__m256 v) /* no NaN in v */
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

static inline __m256 abs8(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

/* The scalar row, 8 values a step: the same divisions (x / s, correctly rounded), the same round to
 * nearest even, the same clamps; the group's extreme found by a max (order does not matter for a max of
 * finite values) and then the first value of that magnitude (the scalar loop keeps the first). */
static int quantize_row_avx2(uint8_t *r, enum dtype dt, const float *x, int64_t k, size_t rb)
{
    const int64_t g = quant_group(dt, k);
    memset(r, 0, rb);
    __m256i bad = _mm256_setzero_si256();
    const __m256i finite_max = _mm256_set1_epi32(0x7f7fffff), nosign = _mm256_set1_epi32(0x7fffffff);
    for (int64_t j = 0; j < k; j += 8)
        bad = _mm256_or_si256(bad, _mm256_cmpgt_epi32(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + j)), nosign),
                                                      finite_max));
    if (!_mm256_testz_si256(bad, bad)) return -1;
    const bool q8 = dt == DTYPE_Q8;
    const __m256 hi = _mm256_set1_ps(q8 ? 127.0f : 7.0f), lo = _mm256_set1_ps(q8 ? -127.0f : -8.0f);
    const __m256i shifts = _mm256_setr_epi32(0, 16, 4, 20, 8, 24, 12, 28), eight = _mm256_set1_epi32(8);
    for (int64_t j0 = 0; j0 < k; j0 += g) {
        __m256 am8 = _mm256_setzero_ps();
        for (int64_t j = j0; j < j0 + g; j += 8) am8 = _mm256_max_ps(abs8(_mm256_loadu_ps(x + j)), am8);
        const float am = hmax8(am8);
        float m = 0;
        if (!q8 && am > 0)
            for (int64_t j = j0; j < j0 + g; j++)
                if (fabsf(x[j]) == am) { m = x[j]; break; }
        const uint16_t s16 = f32_to_f16(q8 ? am / 127.0f : m / -8.0f);
        const float s = f16_to_f32(s16);
        const __m256 sv = _mm256_set1_ps(s);
        for (int64_t j = j0; j < j0 + g; j += 8) {
            __m256 q = _mm256_setzero_ps();
            if (s != 0) q = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + j), sv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            const __m256i c = _mm256_cvtps_epi32(_mm256_max_ps(_mm256_min_ps(q, hi), lo));
            if (q8) {
                __m128i p = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
                _mm_storel_epi64((__m128i *)(r + j), _mm_packs_epi16(p, p));
            } else { /* element 8i+l at bit shifts[l] of word i: OR the 8 shifted codes together */
                const __m256i w = _mm256_sllv_epi32(_mm256_add_epi32(c, eight), shifts);
                __m128i o = _mm_or_si128(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
                o = _mm_or_si128(o, _mm_shuffle_epi32(o, 0x4e));
                o = _mm_or_si128(o, _mm_shuffle_epi32(o, 0xb1));
                const uint32_t u = (uint32_t)_mm_cvtsi128_si32(o);
                memcpy(r + j / 2, &u, 4);
            }
        }
        memcpy(r + (q8 ? k : k / 2 + 2 * (j0 / g)), &s16, 2);
    }
    return 0;
}
#define quantize_row quantize_row_avx2
#else
#define quantize_row quantize_row_scalar
#endif

struct quantize_job {
    void *dst;
    enum dtype dt, sdt;
    const void *src;
    int64_t k;
    size_t rb;
    int64_t bad_row; /* the first row holding a non-finite value, or -1 */
};

static void quantize_range(void *ctx, int64_t i0, int64_t i1)
{
    struct quantize_job *j = ctx;
    float *buf = j->sdt == DTYPE_F32 ? NULL : malloc((size_t)j->k * sizeof *buf);
    CHECK(j->sdt == DTYPE_F32 || buf);
    int64_t bad = -1;
    for (int64_t i = i0; i < i1 && bad < 0; i++)
        if (quantize_row((uint8_t *)j->dst + (size_t)i * j->rb, j->dt, as_f32(buf, j->src, j->sdt, i * j->k, j->k), j->k, j->rb))
            bad = i;
    free(buf);
    if (bad >= 0) {
        /* ranges are disjoint, so the smallest bad row over all ranges is the first one */
        for (int64_t prev = __atomic_load_n(&j->bad_row, __ATOMIC_RELAXED);
             (prev < 0 || bad < prev) &&
             !__atomic_compare_exchange_n(&j->bad_row, &prev, bad, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);)
            ;
    }
}

int quant_quantize_tensor(void *dst, enum dtype dt, const void *src, enum dtype sdt, int64_t n, int64_t k, int n_threads,
                          const char *what, struct err *e)
{
    const size_t rb = dtype_row_bytes(dt, k);
    if (dt != DTYPE_Q8 && dt != DTYPE_Q4) return err_set(e, "%s: cannot quantize to %s", what, dtype_name(dt));
    if (sdt != DTYPE_F32 && sdt != DTYPE_F16 && sdt != DTYPE_BF16)
        return err_set(e, "%s: cannot quantize %s values", what, dtype_name(sdt));
    if (!rb) return err_set(e, "%s: rows of %lld values cannot be %s (the row length must be a multiple of 16)", what,
                            (long long)k, dtype_name(dt));
    struct quantize_job j = {.dst = dst, .dt = dt, .sdt = sdt, .src = src, .k = k, .rb = rb, .bad_row = -1};
    par_for(n, n_threads, quantize_range, &j);
    if (j.bad_row >= 0) return err_set(e, "%s: row %lld holds a non-finite value", what, (long long)j.bad_row);
    return 0;
}

int quant_quantize_rows(void *dst, enum dtype dt, const float *src, int64_t n, int64_t k, const char *what, struct err *e)
{
    return quant_quantize_tensor(dst, dt, src, DTYPE_F32, n, k, 0, what, e);
}

/* exported for test_quant: the scalar twin, one thread */
int quant_quantize_rows_scalar(void *dst, enum dtype dt, const float *src, int64_t n, int64_t k);
int quant_quantize_rows_scalar(void *dst, enum dtype dt, const float *src, int64_t n, int64_t k)
{
    const size_t rb = dtype_row_bytes(dt, k);
    CHECK(rb > 0 && (dt == DTYPE_Q8 || dt == DTYPE_Q4));
    for (int64_t i = 0; i < n; i++)
        if (quantize_row_scalar((uint8_t *)dst + (size_t)i * rb, dt, src + i * k, k, rb)) return -1;
    return 0;
}

/* ---------------------------------------------------------------- bitsandbytes NF4 */

/* functional.py create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): for i = 0..6,
 * the means of neighbouring points of torch.linspace(0.1, 1, 2^i + 1) (f32) scaled by 10^(i-6), both
 * signs, then 0 and 1, sorted. linspace as torch's CPU kernel computes it (start + step*idx below the
 * halfway point, end - step*(steps-1-idx) from it, in f32). */
/* bitsandbytes' create_dynamic_map(signed=True) as float32 bit patterns, exactly as bitsandbytes computes
 * it (written by its own function into tests/fixtures/nf4_ref.safetensors by tools/ref_nf4.py on the GPU
 * machine, session 4). A formula is not used: torch.linspace's float32 rounding (its vectorised CPU
 * kernel) gives 42 of the 256 values one unit in the last place away from a plain float32 evaluation of
 * the same formula. test_quant test_bnb_fixture checks the table against the fixture. */
static const uint32_t BNB_DYNAMIC_MAP[256] = {
    0xbf7e3333u, 0xbf7a999au, 0xbf770000u, 0xbf736666u, 0xbf6fcccdu, 0xbf6c3333u,
    0xbf68999au, 0xbf650000u, 0xbf616666u, 0xbf5dcccdu, 0xbf5a3333u, 0xbf56999au,
    0xbf530000u, 0xbf4f6666u, 0xbf4bcccdu, 0xbf483333u, 0xbf44999au, 0xbf410000u,
    0xbf3d6666u, 0xbf39cccdu, 0xbf363334u, 0xbf32999au, 0xbf2f0000u, 0xbf2b6666u,
    0xbf27cccdu, 0xbf243334u, 0xbf20999au, 0xbf1d0000u, 0xbf196666u, 0xbf15cccdu,
    0xbf123334u, 0xbf0e999au, 0xbf0b0000u, 0xbf076666u, 0xbf03ccccu, 0xbf003333u,
    0xbef93332u, 0xbef20000u, 0xbeeaccccu, 0xbee3999au, 0xbedc6666u, 0xbed53333u,
    0xbece0000u, 0xbec6ccccu, 0xbebf999au, 0xbeb86666u, 0xbeb13333u, 0xbeaa0000u,
    0xbea2ccccu, 0xbe9b999au, 0xbe946666u, 0xbe8d3334u, 0xbe860000u, 0xbe7d9999u,
    0xbe6f3333u, 0xbe60cccdu, 0xbe526666u, 0xbe440000u, 0xbe35999au, 0xbe273333u,
    0xbe18cccdu, 0xbe0a6666u, 0xbdf80000u, 0xbddb3334u, 0xbdc9eb85u, 0xbdc428f7u,
    0xbdbe6667u, 0xbdb8a3d7u, 0xbdb2e148u, 0xbdad1eb8u, 0xbda75c2au, 0xbda1999au,
    0xbd9bd70au, 0xbd96147bu, 0xbd9051ebu, 0xbd8a8f5du, 0xbd84cccdu, 0xbd7e147bu,
    0xbd728f5du, 0xbd670a3du, 0xbd5b851fu, 0xbd500000u, 0xbd447ae1u, 0xbd38f5c3u,
    0xbd2d70a3u, 0xbd21eb85u, 0xbd166667u, 0xbd0ae148u, 0xbcfeb852u, 0xbce7ae15u,
    0xbcd0a3d7u, 0xbcb9999au, 0xbca28f5du, 0xbc8b851fu, 0xbc68f5c3u, 0xbc3ae148u,
    0xbc1f3b64u, 0xbc160418u, 0xbc0ccccdu, 0xbc039581u, 0xbbf4bc6au, 0xbbe24dd3u,
    0xbbcfdf3bu, 0xbbbd70a4u, 0xbbab020du, 0xbb989374u, 0xbb8624ddu, 0xbb676c8au,
    0xbb428f5cu, 0xbb1db22du, 0xbaf1a9fcu, 0xbaa7ef9du, 0xba7765ffu, 0xba59e83eu,
    0xba3c6a80u, 0xba1eecc1u, 0xba016f01u, 0xb9c7e283u, 0xb98ce705u, 0xb923d70bu,
    0xb8ba1f4bu, 0xb88aefb3u, 0xb8378034u, 0xb7b24206u, 0xb70205ffu, 0xb65a1a94u,
    0xb513a3b7u, 0x00000000u, 0x3513a3b7u, 0x365a1a94u, 0x370205ffu, 0x37b24206u,
    0x38378034u, 0x388aefb3u, 0x38ba1f4bu, 0x3923d70bu, 0x398ce705u, 0x39c7e283u,
    0x3a016f01u, 0x3a1eecc1u, 0x3a3c6a80u, 0x3a59e83eu, 0x3a7765ffu, 0x3aa7ef9du,
    0x3af1a9fcu, 0x3b1db22du, 0x3b428f5cu, 0x3b676c8au, 0x3b8624ddu, 0x3b989374u,
    0x3bab020du, 0x3bbd70a4u, 0x3bcfdf3bu, 0x3be24dd3u, 0x3bf4bc6au, 0x3c039581u,
    0x3c0ccccdu, 0x3c160418u, 0x3c1f3b64u, 0x3c3ae148u, 0x3c68f5c3u, 0x3c8b851fu,
    0x3ca28f5du, 0x3cb9999au, 0x3cd0a3d7u, 0x3ce7ae15u, 0x3cfeb852u, 0x3d0ae148u,
    0x3d166667u, 0x3d21eb85u, 0x3d2d70a3u, 0x3d38f5c3u, 0x3d447ae1u, 0x3d500000u,
    0x3d5b851fu, 0x3d670a3du, 0x3d728f5du, 0x3d7e147bu, 0x3d84cccdu, 0x3d8a8f5du,
    0x3d9051ebu, 0x3d96147bu, 0x3d9bd70au, 0x3da1999au, 0x3da75c2au, 0x3dad1eb8u,
    0x3db2e148u, 0x3db8a3d7u, 0x3dbe6667u, 0x3dc428f7u, 0x3dc9eb85u, 0x3ddb3334u,
    0x3df80000u, 0x3e0a6666u, 0x3e18cccdu, 0x3e273333u, 0x3e35999au, 0x3e440000u,
    0x3e526666u, 0x3e60cccdu, 0x3e6f3333u, 0x3e7d9999u, 0x3e860000u, 0x3e8d3334u,
    0x3e946666u, 0x3e9b999au, 0x3ea2ccccu, 0x3eaa0000u, 0x3eb13333u, 0x3eb86666u,
    0x3ebf999au, 0x3ec6ccccu, 0x3ece0000u, 0x3ed53333u, 0x3edc6666u, 0x3ee3999au,
    0x3eeaccccu, 0x3ef20000u, 0x3ef93332u, 0x3f003333u, 0x3f03ccccu, 0x3f076666u,
    0x3f0b0000u, 0x3f0e999au, 0x3f123334u, 0x3f15cccdu, 0x3f196666u, 0x3f1d0000u,
    0x3f20999au, 0x3f243334u, 0x3f27cccdu, 0x3f2b6666u, 0x3f2f0000u, 0x3f32999au,
    0x3f363334u, 0x3f39cccdu, 0x3f3d6666u, 0x3f410000u, 0x3f44999au, 0x3f483333u,
    0x3f4bcccdu, 0x3f4f6666u, 0x3f530000u, 0x3f56999au, 0x3f5a3333u, 0x3f5dcccdu,
    0x3f616666u, 0x3f650000u, 0x3f68999au, 0x3f6c3333u, 0x3f6fcccdu, 0x3f736666u,
    0x3f770000u, 0x3f7a999au, 0x3f7e3333u, 0x3f800000u,
};

void quant_bnb_dynamic_map(float map[256])
{
    for (int i = 0; i < 256; i++) memcpy(&map[i], &BNB_DYNAMIC_MAP[i], sizeof map[i]);
}

float quant_bnb_absmax(const struct quant_bnb_nf4 *q, int64_t b)
{
    if (!q->absmax) return q->nested_absmax[b]; /* no double quantization: the f32 absmax itself */
    float a = q->nested_map[q->absmax[b]] * q->nested_absmax[b / QUANT_BNB_NESTED_BLOCK]; /* f32 product */
    a = a + q->offset;                                                                      /* f32 add */
    return a;
}

struct to_rows_job {
    void *dst;
    const struct quant_bnb_nf4 *q;
};

static void to_rows_range(void *ctx, int64_t r0, int64_t r1)
{
    const struct to_rows_job *j = ctx;
    const struct quant_bnb_nf4 *q = j->q;
    const int64_t k = q->k, g = quant_group(DTYPE_NF4, k);
    const size_t rb = dtype_row_bytes(DTYPE_NF4, k);
    for (int64_t r = r0; r < r1; r++) {
        uint8_t *rec = (uint8_t *)j->dst + (size_t)r * rb;
        memset(rec, 0, rb);
        memcpy(rec, q->codes + r * (k / 2), (size_t)(k / 2));
        for (int64_t c = 0; c < k; c += g) {
            const float a = quant_bnb_absmax(q, (r * k + c) / QUANT_BNB_BLOCK);
            memcpy(rec + k / 2 + 4 * (c / g), &a, 4);
        }
    }
}

void quant_bnb_to_rows(void *dst, const struct quant_bnb_nf4 *q)
{
    CHECK(dtype_row_bytes(DTYPE_NF4, q->k) > 0);
    struct to_rows_job j = {dst, q};
    par_for(q->o, 0, to_rows_range, &j);
}

/* torch.bucketize(v, bounds) (right=False): the number of bounds strictly below v */
static int bucketize(float v, const float *bounds, int nb)
{
    int lo = 0, hi = nb;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (bounds[mid] < v) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* backends/default/ops.py quantize_blockwise / quantize_4bit: per block of `bs` values, absmax in
 * f32; full blocks are scaled by the f32 reciprocal of max(absmax, 1e-38), the last partial block is
 * divided by it; clamp to [-1, 1]; bucketize against the f32 midpoints of the sorted code. Blocks
 * [b0, b1) of x (n values in all); q gets one code per value (x's indexing). The scalar definition. */
static void blockwise(const float *x, int64_t n, int64_t bs, const float *code, int ncode, uint8_t *q, float *absmax,
                      int64_t b0, int64_t b1)
{
    float bounds[255];
    for (int i = 0; i + 1 < ncode; i++) bounds[i] = (code[i] + code[i + 1]) / 2.0f;
    for (int64_t blk = b0; blk < b1; blk++) {
        const int64_t o = blk * bs, m = n - o < bs ? n - o : bs;
        float am = 0;
        for (int64_t j = 0; j < m; j++) am = fabsf(x[o + j]) > am ? fabsf(x[o + j]) : am;
        absmax[blk] = am;
        const float cl = am < 1e-38f ? 1e-38f : am, inv = 1.0f / cl;
        for (int64_t j = 0; j < m; j++) {
            float s = m == bs ? x[o + j] * inv : x[o + j] / cl;
            s = s > 1 ? 1 : s < -1 ? -1 : s;
            q[o + j] = (uint8_t)bucketize(s, bounds, ncode - 1);
        }
    }
}

/* exported for test_quant: bitsandbytes' NF4 quantization as the scalar definition, one thread */
void quant_bnb_quantize_scalar(const float *w, int64_t numel, const float nested_map[256], uint8_t *codes,
                               uint8_t *absmax_u8, float *nested_absmax, float *offset, float *absmax_f32);
void quant_bnb_quantize_scalar(const float *w, int64_t numel, const float nested_map[256], uint8_t *codes,
                               uint8_t *absmax_u8, float *nested_absmax, float *offset, float *absmax_f32)
{
    const int64_t nblocks = (numel + QUANT_BNB_BLOCK - 1) / QUANT_BNB_BLOCK;
    CHECK(numel % 2 == 0);
    uint8_t *q = malloc((size_t)numel);
    CHECK(q);
    blockwise(w, numel, QUANT_BNB_BLOCK, QUANT_NF4, 16, q, absmax_f32, 0, nblocks);
    for (int64_t i = 0; i < numel / 2; i++) codes[i] = (uint8_t)(q[2 * i] << 4 | q[2 * i + 1]); /* even: high */
    free(q);
    double sum = 0;
    for (int64_t b = 0; b < nblocks; b++) sum += absmax_f32[b];
    *offset = (float)(sum / (double)nblocks);
    for (int64_t b = 0; b < nblocks; b++) absmax_f32[b] = absmax_f32[b] - *offset;
    blockwise(absmax_f32, nblocks, QUANT_BNB_NESTED_BLOCK, nested_map, 256, absmax_u8, nested_absmax, 0,
              (nblocks + QUANT_BNB_NESTED_BLOCK - 1) / QUANT_BNB_NESTED_BLOCK);
}

#ifdef QUANT_AVX2
/* One full NF4 block of 64 values: blockwise's arithmetic 8 values a step (the max is order-free; x * inv,
 * the clamp with blockwise's NaN behaviour, and the code = the number of midpoints strictly below s,
 * which is what the bucketize binary search returns), packed two codes a byte. */
static float absmax_avx2(const float *x) /* blockwise's absmax of one full block */
{
    __m256 am8 = _mm256_setzero_ps(); /* max(a, b) = a > b ? a : b: a NaN |x| is skipped, as in blockwise */
    for (int j = 0; j < QUANT_BNB_BLOCK; j += 8) am8 = _mm256_max_ps(abs8(_mm256_loadu_ps(x + j)), am8);
    return hmax8(am8);
}

static void nf4_block_avx2(const float *x, uint8_t *codes, float *absmax, const float bounds[15])
{
    const float am = absmax_avx2(x), cl = am < 1e-38f ? 1e-38f : am, inv = 1.0f / cl;
    *absmax = am;
    const __m256 iv = _mm256_set1_ps(inv), one = _mm256_set1_ps(1.0f), mone = _mm256_set1_ps(-1.0f);
    for (int j = 0; j < QUANT_BNB_BLOCK; j += 8) {
        __m256 s = _mm256_mul_ps(_mm256_loadu_ps(x + j), iv);
        s = _mm256_max_ps(mone, _mm256_min_ps(one, s)); /* min(a,b) = a < b ? a : b: a NaN s passes through */
        __m256i c = _mm256_setzero_si256();
        for (int i = 0; i < 15; i++) c = _mm256_sub_epi32(c, _mm256_castps_si256(_mm256_cmp_ps(_mm256_set1_ps(bounds[i]), s, _CMP_LT_OQ)));
        /* lanes (c0..c7) -> bytes c0<<4|c1, c2<<4|c3, ... */
        const __m256i pr = _mm256_or_si256(_mm256_slli_epi32(c, 4), _mm256_srli_epi64(c, 32));
        const __m256i b = _mm256_shuffle_epi8(pr, _mm256_setr_epi8(0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                                                   0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1));
        const uint16_t b0 = (uint16_t)_mm_extract_epi16(_mm256_castsi256_si128(b), 0),
                       b1 = (uint16_t)_mm_extract_epi16(_mm256_extracti128_si256(b, 1), 0);
        const uint32_t u = (uint32_t)b0 | (uint32_t)b1 << 16;
        memcpy(codes + j / 2, &u, 4);
    }
}
#endif

struct nf4_job {
    const void *w;
    enum dtype sdt;
    int64_t numel;
    uint8_t *codes; /* NULL: absmax only */
    float *absmax;
    float bounds[15];
};

/* NF4 blocks [b0, b1): absmax (and codes), QUANT_BNB_BLOCK values each, converted a chunk at a time */
static void nf4_range(void *ctx, int64_t b0, int64_t b1)
{
    const struct nf4_job *j = ctx;
    enum { CHUNK = 256 }; /* blocks */
    float *buf = j->sdt == DTYPE_F32 ? NULL : malloc(CHUNK * QUANT_BNB_BLOCK * sizeof *buf);
    CHECK(j->sdt == DTYPE_F32 || buf);
    for (int64_t c0 = b0; c0 < b1; c0 += CHUNK) {
        const int64_t c1 = b1 - c0 < CHUNK ? b1 : c0 + CHUNK, v0 = c0 * QUANT_BNB_BLOCK;
        const int64_t v1 = c1 * QUANT_BNB_BLOCK < j->numel ? c1 * QUANT_BNB_BLOCK : j->numel;
        const float *x = as_f32(buf, j->w, j->sdt, v0, v1 - v0) - v0; /* indexed by the flat position */
        for (int64_t b = c0; b < c1; b++) {
            const int64_t o = b * QUANT_BNB_BLOCK;
            const int64_t m = j->numel - o < QUANT_BNB_BLOCK ? j->numel - o : QUANT_BNB_BLOCK;
#ifdef QUANT_AVX2
            if (m == QUANT_BNB_BLOCK) {
                if (j->codes) nf4_block_avx2(x + o, j->codes + o / 2, j->absmax + b, j->bounds);
                else j->absmax[b] = absmax_avx2(x + o);
                continue;
            }
#endif
            uint8_t q[QUANT_BNB_BLOCK]; /* blockwise() itself: the last partial block, or no AVX2 */
            blockwise(x + o, m, QUANT_BNB_BLOCK, QUANT_NF4, 16, q, j->absmax + b, 0, 1);
            if (j->codes)
                for (int64_t i = 0; i < m / 2; i++) j->codes[o / 2 + i] = (uint8_t)(q[2 * i] << 4 | q[2 * i + 1]);
        }
    }
    free(buf);
}

struct nested_job {
    const float *x;
    int64_t n;
    const float *map;
    uint8_t *q;
    float *absmax;
};

static void nested_range(void *ctx, int64_t b0, int64_t b1)
{
    const struct nested_job *j = ctx;
    blockwise(j->x, j->n, QUANT_BNB_NESTED_BLOCK, j->map, 256, j->q, j->absmax, b0, b1);
}

/* The f32 absmax of every block (and the codes when codes is not NULL); returns the offset, the mean of
 * the absmax summed in order in double (as before; not torch's f32 mean: test_bnb_fixture) */
static float nf4_blocks(const void *w, enum dtype sdt, int64_t numel, uint8_t *codes, float *absmax_f32, int n_threads)
{
    const int64_t nblocks = (numel + QUANT_BNB_BLOCK - 1) / QUANT_BNB_BLOCK;
    CHECK(numel % 2 == 0); /* callers quantize matrices with K % 16 == 0 */
    CHECK(sdt == DTYPE_F32 || sdt == DTYPE_F16 || sdt == DTYPE_BF16);
    struct nf4_job j = {.w = w, .sdt = sdt, .numel = numel, .codes = codes, .absmax = absmax_f32};
    for (int i = 0; i < 15; i++) j.bounds[i] = (QUANT_NF4[i] + QUANT_NF4[i + 1]) / 2.0f;
    par_for(nblocks, n_threads, nf4_range, &j);
    double sum = 0;
    for (int64_t b = 0; b < nblocks; b++) sum += absmax_f32[b];
    return (float)(sum / (double)nblocks);
}

float quant_bnb_offset(const void *w, enum dtype sdt, int64_t numel, float *absmax_f32, int n_threads)
{
    return nf4_blocks(w, sdt, numel, NULL, absmax_f32, n_threads);
}

void quant_bnb_quantize(const void *w, enum dtype sdt, int64_t numel, const float nested_map[256], uint8_t *codes,
                        uint8_t *absmax_u8, float *nested_absmax, float *offset, float *absmax_f32, int n_threads)
{
    const int64_t nblocks = (numel + QUANT_BNB_BLOCK - 1) / QUANT_BNB_BLOCK;
    *offset = nf4_blocks(w, sdt, numel, codes, absmax_f32, n_threads);
    /* compress_statistics: quantize_blockwise(absmax - offset, blocksize 256) */
    for (int64_t b = 0; b < nblocks; b++) absmax_f32[b] = absmax_f32[b] - *offset;
    struct nested_job nj = {absmax_f32, nblocks, nested_map, absmax_u8, nested_absmax};
    par_for((nblocks + QUANT_BNB_NESTED_BLOCK - 1) / QUANT_BNB_NESTED_BLOCK, n_threads, nested_range, &nj);
}

/* ---- tiles (quant.h) ---- */

bool quant_tiles_ok(enum dtype dt, int64_t rows, int64_t k)
{
    const int64_t step = dt == DTYPE_Q8 ? 64 : 128; /* values of 64 code bytes */
    return dtype_is_quant(dt) && rows > 0 && rows % 16 == 0 && k > 0 && k % step == 0;
}

void quant_tiles_convert(void *dst, const void *src, enum dtype dt, int64_t rows, int64_t k, bool to_tiles)
{
    CHECKF(quant_tiles_ok(dt, rows, k), "%s [%lld, %lld] cannot take 16-row tiles", dtype_name(dt), (long long)rows,
           (long long)k);
    const int64_t rb = (int64_t)dtype_row_bytes(dt, k), cb = dt == DTYPE_Q8 ? k : k / 2;
    const int sb = dt == DTYPE_NF4 ? 4 : 2;
    const int64_t ng = dt == DTYPE_Q8 ? 1 : k / 64;
    const bool q8 = dt == DTYPE_Q8;
    uint8_t *d = dst;
    const uint8_t *s = src;
    if (to_tiles) /* the padding of each tile */
        for (int64_t t = 0; t < rows / 16; t++) memset(d + t * 16 * rb + 16 * (cb + ng * sb), 0, (size_t)(16 * (rb - cb - ng * sb)));
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t p = 0; p < cb; p += 64) {
            const int64_t rec = r * rb + p, til = quant_tile_code(r, p, rb);
            if (to_tiles) memcpy(d + til, s + rec, 64);
            else memcpy(d + rec, s + til, 64);
        }
        for (int64_t gi = 0; gi < ng; gi++) {
            const int64_t rec = r * rb + cb + gi * sb, til = quant_tile_scale(r, gi, rb, cb, sb, q8);
            if (to_tiles) memcpy(d + til, s + rec, (size_t)sb);
            else memcpy(d + rec, s + til, (size_t)sb);
        }
        if (!to_tiles) memset(d + r * rb + cb + ng * sb, 0, (size_t)(rb - cb - ng * sb));
    }
}
