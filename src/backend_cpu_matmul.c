/* backend_cpu_matmul.c: cpu_matmul, the CPU twin of op_matmul (and so of op_linear, op_matmul_stacked).
 *
 * The rule: every output y[t][r] = x[t] . w[r] (+ bias[r]) is computed by one fixed sequence of fp32
 * operations that depends only on k, never on how many rows x has, which rows share the call, a row's
 * place among them, the weight rows computed alongside, or the thread count:
 *   acc (8 lanes) = 0; for j = 0, 8, 16, .. while j + 8 <= k: acc = fma(x[t][j..j+7], w[r][j..j+7], acc)
 *   s = ((acc0 + acc4) + (acc1 + acc5)) + ((acc2 + acc6) + (acc3 + acc7))     (hsum8x4)
 *   for the k % 8 last j, in order: s = fmaf(x[t][j], w[r][j], s)
 *   y[t][r] = s + bias[r], rounded to y's dtype
 * So a prompt prefilled in one call, in chunks, or after a cached prefix (only its tail), and a decode
 * row alone or batched with any others, get the same bits (test_prefix, test_batch, test_llm).
 * x is converted to f32 first (exact for F16/BF16 activations). Weights: F32 and F16 rows are read in
 * place (F16 widened by F16C, exact); BF16 and quantized rows are first converted to the f32 values
 * they stand for (quantized: their F16 dequantization, backend.h), a panel at a time, so a quantized
 * weight gives bit for bit the results of its F16 dequantization.
 *
 * Speed: the sequence above, register-blocked. A micro-kernel computes a block of outputs at once, each
 * in its own accumulator: 4 rows of x by 3 weight rows (12 accumulators, each x load used 3 times and
 * each weight load 4 times) when at least 2 rows remain, 1 row by 4 weight rows for a single row (the
 * decode GEMV: each weight read once per call). A block at an edge repeats its last valid row or weight
 * row and drops the extra results. Threads take panels of MM_PANEL weight rows (OpenMP, dynamic); a
 * panel walks x in tiles of MM_TILE rows, each weight row triple staying in L1 across a tile. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "backend_impl.h"
#include "quant.h"

#define MM_PANEL 48 /* weight rows per task: a multiple of both kernels' widths (3, 4) */
#define MM_TILE 32  /* rows of x per tile, at most */
#define MM_TILE_BYTES (512 << 10) /* and at most this many bytes of x (fewer rows for a long k) */
#define MM_PREFETCH 8192 /* the one-row kernel prefetches the weight bytes this far ahead (whole groups) */

/* The lane sum of the rule, four accumulators side by side: lane i of the result is
 * ((v0 + v4) + (v1 + v5)) + ((v2 + v6) + (v3 + v7)) of the i-th argument. Every kernel ends here. */
static inline __m128 hsum8x4(__m256 a, __m256 b, __m256 c, __m256 d)
{
#define MM_HALVES(v) _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1))
    return _mm_hadd_ps(_mm_hadd_ps(MM_HALVES(a), MM_HALVES(b)), _mm_hadd_ps(MM_HALVES(c), MM_HALVES(d)));
#undef MM_HALVES
}

#define MM_LOAD_F32(p) _mm256_loadu_ps(p)
#define MM_LOAD_F16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
static inline float mm_elem_f32(const float *w, int64_t j) { return w[j]; }
static inline float mm_elem_f16(const uint16_t *w, int64_t j) { return _cvtsh_ss(w[j]); }

/* ASan does not instrument the micro-kernels (as it did not instrument OpenBLAS's sgemm before them):
 * instrumented, each vector load costs a shadow check, and the sanitizer build's load test ran 6x slower
 * at 16 rows. Their reads stay inside the rows mm_tile hands them (k values of each; op_matmul checked the
 * shapes); the prefetches are hints, not reads. */
#define MM_NO_ASAN __attribute__((no_sanitize_address))

/* out[r * CB + c] = x_r . w_c by the rule (no bias) for RB rows xs[] and CB weight rows ws[] */
#define MM_KERNEL(NAME, WT, LOAD, ELEM, RB, CB, PF)                                                            \
    MM_NO_ASAN static void NAME(float *out, const float *const *xs, const WT *const *ws, int64_t k, const char *pf)  \
    {                                                                                                      \
        const int64_t k8 = k & ~(int64_t)7;                                                                \
        const float *x[RB];                                                                                \
        const WT *w[CB];                                                                                   \
        __m256 acc[RB][CB];                                                                                \
        _Pragma("GCC unroll 8") for (int r = 0; r < RB; r++) x[r] = xs[r];                                 \
        _Pragma("GCC unroll 8") for (int c = 0; c < CB; c++) w[c] = ws[c];                                 \
        _Pragma("GCC unroll 8") for (int r = 0; r < RB; r++)                                               \
            _Pragma("GCC unroll 8") for (int c = 0; c < CB; c++) acc[r][c] = _mm256_setzero_ps();          \
        for (int64_t j = 0; j < k8; j += 8) {                                                              \
            __m256 wv[CB];                                                                                 \
            if (PF)                                                                                        \
                _Pragma("GCC unroll 2") for (int q = 0; q < (int)sizeof(WT) * CB * 8 / 64; q++)             \
                    _mm_prefetch(pf + j * (int64_t)sizeof(WT) * CB + 64 * q, _MM_HINT_T0);                 \
            _Pragma("GCC unroll 8") for (int c = 0; c < CB; c++) wv[c] = LOAD(w[c] + j);                   \
            _Pragma("GCC unroll 8") for (int r = 0; r < RB; r++)                                           \
            {                                                                                              \
                const __m256 xv = _mm256_loadu_ps(x[r] + j);                                               \
                _Pragma("GCC unroll 8") for (int c = 0; c < CB; c++) acc[r][c] =                           \
                    _mm256_fmadd_ps(xv, wv[c], acc[r][c]);                                                 \
            }                                                                                              \
        }                                                                                                  \
        _Pragma("GCC unroll 4") for (int i = 0; i < RB * CB; i += 4)                                       \
            _mm_storeu_ps(out + i, hsum8x4(acc[i / CB][i % CB], acc[(i + 1) / CB][(i + 1) % CB],             \
                                           acc[(i + 2) / CB][(i + 2) % CB], acc[(i + 3) / CB][(i + 3) % CB])); \
        if (k8 < k)                                                                                        \
            for (int i = 0; i < RB * CB; i++)                                                              \
                for (int64_t j = k8; j < k; j++) out[i] = fmaf(x[i / CB][j], ELEM(w[i % CB], j), out[i]);  \
    }

MM_KERNEL(mm_4x3_f32, float, MM_LOAD_F32, mm_elem_f32, 4, 3, 0)
MM_KERNEL(mm_1x4_f32, float, MM_LOAD_F32, mm_elem_f32, 1, 4, 1)
MM_KERNEL(mm_4x3_f16, uint16_t, MM_LOAD_F16, mm_elem_f16, 4, 3, 0)
MM_KERNEL(mm_1x4_f16, uint16_t, MM_LOAD_F16, mm_elem_f16, 1, 4, 1)

/* yb[t * m + c] = x[t0 + t] . wp_c for t < nt, c < m: the m weight rows wp (row stride ws bytes; f16:
 * F16, else F32) against nt rows of xf [*, k] from row t0 */
static void mm_tile(float *yb, const float *xf, int64_t t0, int64_t nt, int64_t k, const char *wp, size_t ws, int f16,
                    int64_t m)
{
    float out[12];
    if (nt == 1) {
        const size_t grp = 4 * ws, pfd = (MM_PREFETCH + grp - 1) / grp * grp; /* whole groups, >= MM_PREFETCH */
        const float *xs[1] = {xf + t0 * k};
        for (int64_t c = 0; c < m; c += 4) {
            const void *wr[4];
            for (int i = 0; i < 4; i++) wr[i] = wp + (size_t)(c + i < m ? c + i : m - 1) * ws;
            const char *pf = (const char *)wr[0] + pfd;
            if (f16) mm_1x4_f16(out, xs, (const uint16_t *const *)wr, k, pf);
            else mm_1x4_f32(out, xs, (const float *const *)wr, k, pf);
            for (int i = 0; i < 4 && c + i < m; i++) yb[c + i] = out[i];
        }
        return;
    }
    for (int64_t c = 0; c < m; c += 3) { /* a weight row triple stays in L1 across the tile */
        const void *wr[3];
        for (int i = 0; i < 3; i++) wr[i] = wp + (size_t)(c + i < m ? c + i : m - 1) * ws;
        for (int64_t t = 0; t < nt; t += 4) {
            const float *xs[4];
            for (int i = 0; i < 4; i++) xs[i] = xf + (t0 + (t + i < nt ? t + i : nt - 1)) * k;
            if (f16) mm_4x3_f16(out, xs, (const uint16_t *const *)wr, k, NULL);
            else mm_4x3_f32(out, xs, (const float *const *)wr, k, NULL);
            if (t + 4 <= nt && c + 3 <= m)
                for (int i = 0; i < 4; i++) memcpy(yb + (t + i) * m + c, out + i * 3, 3 * sizeof(float));
            else
                for (int i = 0; i < 4 && t + i < nt; i++)
                    for (int jc = 0; jc < 3 && c + jc < m; jc++) yb[(t + i) * m + c + jc] = out[i * 3 + jc];
        }
    }
}

void cpu_matmul(struct tensor *y, const struct tensor *x, const struct tensor *w, const struct tensor *bias)
{
    const int64_t n = x->shape[0], k = x->shape[1], o = w->shape[0];
    const size_t wrow = dtype_row_bytes(w->dtype, k); /* records for a quantized w */
    const int in_place = w->dtype == DTYPE_F32 || w->dtype == DTYPE_F16;
    float *xf = aligned_alloc(64, ((size_t)n * (size_t)k * sizeof(float) + 64) & ~(size_t)63);
    CHECK(xf);
    convert_to_f32(xf, x->data, x->dtype, n * k);
    const int64_t npanel = (o + MM_PANEL - 1) / MM_PANEL;
    /* a tile of x within MM_TILE_BYTES (L2), a multiple of 4 rows */
    int64_t tile = MM_TILE_BYTES / ((int64_t)sizeof(float) * k) / 4 * 4;
    tile = tile < 4 ? 4 : tile > MM_TILE ? MM_TILE : tile;
#pragma omp parallel
    {
        float *wb = in_place ? NULL : malloc((size_t)MM_PANEL * (size_t)k * sizeof(float));
        float *yb = malloc((size_t)MM_TILE * MM_PANEL * sizeof(float)), bb[MM_PANEL];
        CHECK(yb && (in_place || wb));
#pragma omp for schedule(dynamic, 1)
        for (int64_t pi = 0; pi < npanel; pi++) {
            const int64_t r0 = pi * MM_PANEL, m = o - r0 < MM_PANEL ? o - r0 : MM_PANEL;
            const char *wp = (const char *)w->data + (size_t)r0 * wrow;
            size_t ws = wrow;
            if (!in_place) { /* the f32 values the rows stand for */
                if (dtype_is_quant(w->dtype)) quant_dequant_rows(wb, wp, w->dtype, m, k);
                else convert_to_f32(wb, wp, w->dtype, m * k);
                wp = (const char *)wb;
                ws = (size_t)k * sizeof(float);
            }
            if (bias) convert_to_f32(bb, (const char *)bias->data + (size_t)r0 * dtype_size(bias->dtype), bias->dtype, m);
            for (int64_t t0 = 0; t0 < n; t0 += tile) {
                const int64_t nt = n - t0 < tile ? n - t0 : tile;
                mm_tile(yb, xf, t0, nt, k, wp, ws, in_place && w->dtype == DTYPE_F16, m);
                for (int64_t t = 0; t < nt; t++) {
                    float *yr = yb + t * m;
                    if (bias)
                        for (int64_t c = 0; c < m; c++) yr[c] += bb[c];
                    convert_from_f32((char *)y->data + (size_t)((t0 + t) * o + r0) * dtype_size(y->dtype), y->dtype,
                                     yr, m);
                }
            }
        }
        free(wb);
        free(yb);
    }
    free(xf);
}
