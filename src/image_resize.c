/* image_resize.c: Pillow's BICUBIC resize (src/libImaging/Resample.c) reproduced bit for bit for
 * 8-bit RGB, plus crop and allocation.
 * Owns: the coefficient tables and the two passes. Does not own: choosing sizes (image_slice.c).
 * The arithmetic (spec §5.3), written from the description of Pillow's algorithm:
 *   per axis, scale = in/out; filterscale = max(scale, 1); support = 2*filterscale;
 *   center = (xx + 0.5)*scale; xmin = max((int)(center - support + 0.5), 0);
 *   xmax = min((int)(center + support + 0.5), in); w[x] = cubic((x + xmin - center + 0.5)/filterscale)
 *   normalised by their double sum (skipped when the sum is 0), then quantised to 22-bit fixed point
 *   with round-half-away-from-zero; out = clip8((2^21 + sum k*p) >> 22) with int32 sums.
 * The horizontal pass runs first, over only the source rows the vertical pass reads, into a uint8
 * intermediate (the rounding to uint8 between the passes is part of the result). A pass whose size
 * does not change is skipped; with both unchanged Pillow returns a copy. The resize runs in steps of
 * output rows (image_resizer) as the source rows they read arrive; a whole resize is one step. */
#include "image.h"

#include <math.h>
#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#define PRECISION_BITS 22

int image_alloc(struct image *out, int w, int h, struct err *e)
{
    out->w = out->h = 0;
    out->rgb = NULL;
    if (w < 1 || h < 1 || (int64_t)w * h > ((int64_t)1 << 31))
        return err_set(e, "image: cannot allocate a %dx%d image", w, h);
    out->rgb = malloc((size_t)w * h * 3);
    if (!out->rgb) return err_set(e, "image: out of memory for %dx%d", w, h);
    out->w = w;
    out->h = h;
    return 0;
}

/* Keys cubic with a = -0.5, evaluated exactly as Pillow's bicubic_filter (same operation order,
 * so the same doubles). */
static double cubic(double x)
{
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

struct coeffs {
    int ksize;
    int *bounds; /* [out][2]: xmin, count */
    int32_t *k;  /* [out][ksize] fixed point */
};

static void coeffs_free(struct coeffs *c)
{
    free(c->bounds);
    free(c->k);
    c->bounds = NULL;
    c->k = NULL;
}

static int coeffs_init(struct coeffs *c, int in_size, int out_size, struct err *e)
{
    double scale = (double)in_size / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * filterscale;
    c->ksize = ((int)ceil(support) * 2 + 1 + 7) / 8 * 8; /* zero taps up to a multiple of 8 (the AVX2 pass) */
    c->bounds = malloc(sizeof(int) * 2 * (size_t)out_size);
    c->k = calloc((size_t)out_size * c->ksize, sizeof(int32_t));
    double *w = malloc(sizeof(double) * c->ksize);
    if (!c->bounds || !c->k || !w) {
        free(w);
        coeffs_free(c);
        return err_set(e, "image resize: out of memory for %d->%d coefficients", in_size, out_size);
    }
    double ss = 1.0 / filterscale;
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double sum = 0.0;
        for (int x = 0; x < xmax; x++) {
            w[x] = cubic((x + xmin - center + 0.5) * ss);
            sum += w[x];
        }
        int32_t *k = c->k + (size_t)xx * c->ksize;
        for (int x = 0; x < xmax; x++) {
            double v = sum != 0.0 ? w[x] / sum : w[x];
            k[x] = v < 0 ? (int32_t)(-0.5 + v * (1 << PRECISION_BITS)) : (int32_t)(0.5 + v * (1 << PRECISION_BITS));
        }
        c->bounds[2 * xx] = xmin;
        c->bounds[2 * xx + 1] = xmax;
    }
    free(w);
    return 0;
}

static inline uint8_t clip8(int32_t ss)
{
    int32_t v = ss >> PRECISION_BITS; /* arithmetic shift, as in Pillow */
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

#if defined(__AVX2__)
static inline int32_t hsum8(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* One output pixel from 8 taps at a time: 8 RGB pixels (24 bytes) split into their channels with byte
 * shuffles, widened to int32 and multiplied by the 8 coefficients. The taps past cnt have zero
 * coefficients (coeffs_init pads ksize to a multiple of 8), so only pixels whose ksize taps lie inside
 * the row come here. Integer sums: the same values as the scalar loop in any order. */
static inline void hpix_avx2(uint8_t *dst, const uint8_t *p, const int32_t *k, int ksize)
{
    const __m128i rl = _mm_setr_epi8(0, 3, 6, 9, 12, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i rh = _mm_setr_epi8(-1, -1, -1, -1, -1, -1, 2, 5, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i gl = _mm_setr_epi8(1, 4, 7, 10, 13, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i gh = _mm_setr_epi8(-1, -1, -1, -1, -1, 0, 3, 6, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i bl = _mm_setr_epi8(2, 5, 8, 11, 14, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m128i bh = _mm_setr_epi8(-1, -1, -1, -1, -1, 1, 4, 7, -1, -1, -1, -1, -1, -1, -1, -1);
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0;
    for (int x = 0; x < ksize; x += 8) {
        const __m128i lo = _mm_loadu_si128((const __m128i *)(p + 3 * x));
        const __m128i hi = _mm_loadl_epi64((const __m128i *)(p + 3 * x + 16));
        const __m256i kv = _mm256_loadu_si256((const __m256i *)(k + x));
        const __m128i r = _mm_or_si128(_mm_shuffle_epi8(lo, rl), _mm_shuffle_epi8(hi, rh));
        const __m128i g = _mm_or_si128(_mm_shuffle_epi8(lo, gl), _mm_shuffle_epi8(hi, gh));
        const __m128i b = _mm_or_si128(_mm_shuffle_epi8(lo, bl), _mm_shuffle_epi8(hi, bh));
        a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(r), kv));
        a1 = _mm256_add_epi32(a1, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(g), kv));
        a2 = _mm256_add_epi32(a2, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(b), kv));
    }
    const int32_t half = 1 << (PRECISION_BITS - 1);
    dst[0] = clip8(half + hsum8(a0));
    dst[1] = clip8(half + hsum8(a1));
    dst[2] = clip8(half + hsum8(a2));
}
#endif

#if defined(__AVX2__)
/* One output row of the vertical pass, 16 bytes at a time with the sums in registers over the taps:
 * returns how many leading bytes it wrote (a multiple of 16; the caller does the rest). clip8 as
 * an arithmetic shift and two saturating packs (to int16, then to uint8). */
static size_t vrow_avx2(uint8_t *dst, const uint8_t *src0, size_t rowlen, const int32_t *k, int cnt)
{
    const __m256i half = _mm256_set1_epi32(1 << (PRECISION_BITS - 1));
    size_t i = 0;
    for (; i + 16 <= rowlen; i += 16) {
        __m256i a0 = half, a1 = half;
        for (int y = 0; y < cnt; y++) {
            const __m128i v = _mm_loadu_si128((const __m128i *)(src0 + (size_t)y * rowlen + i));
            const __m256i ky = _mm256_set1_epi32(k[y]);
            a0 = _mm256_add_epi32(a0, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(v), ky));
            a1 = _mm256_add_epi32(a1, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(v, 8)), ky));
        }
        __m256i w = _mm256_packs_epi32(_mm256_srai_epi32(a0, PRECISION_BITS), _mm256_srai_epi32(a1, PRECISION_BITS));
        w = _mm256_permute4x64_epi64(w, 0xD8); /* a0's 8 values, then a1's */
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1)));
    }
    return i;
}
#endif

/* out rows [0, nrows) = horizontal resample of in rows [row0, row0 + nrows). */
static void pass_horizontal(uint8_t *out, int out_w, const uint8_t *in, int in_w, int row0, int nrows,
                            const struct coeffs *c, int n_threads)
{
#pragma omp parallel for schedule(static) num_threads(n_threads) if (nrows * out_w > 16384)
    for (int y = 0; y < nrows; y++) {
        const uint8_t *src = in + (size_t)(row0 + y) * in_w * 3;
        uint8_t *dst = out + (size_t)y * out_w * 3;
        for (int xx = 0; xx < out_w; xx++) {
            const int32_t *k = c->k + (size_t)xx * c->ksize;
            int xmin = c->bounds[2 * xx], cnt = c->bounds[2 * xx + 1];
            const uint8_t *p = src + (size_t)xmin * 3;
#if defined(__AVX2__)
            if (xmin + c->ksize <= in_w) { /* every padded tap inside the row */
                hpix_avx2(dst + 3 * xx, p, k, c->ksize);
                continue;
            }
#endif
            int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
            for (int x = 0; x < cnt; x++) {
                s0 += p[3 * x + 0] * k[x];
                s1 += p[3 * x + 1] * k[x];
                s2 += p[3 * x + 2] * k[x];
            }
            dst[3 * xx + 0] = clip8(s0);
            dst[3 * xx + 1] = clip8(s1);
            dst[3 * xx + 2] = clip8(s2);
        }
    }
}

/* out rows [y0, y1): out row yy = sum over taps of in rows bounds[yy].xmin - row0 + y. Each row is a flat
 * array of w*3 bytes, so the inner loop is a plain multiply-add over contiguous memory. */
static void pass_vertical(uint8_t *out, int y0, int y1, const uint8_t *in, int w, int row0, const struct coeffs *c,
                          int n_threads)
{
    size_t rowlen = (size_t)w * 3;
#pragma omp parallel num_threads(n_threads) if ((y1 - y0) * w > 16384)
    {
        int32_t *acc = malloc(sizeof(int32_t) * rowlen);
#pragma omp for schedule(static)
        for (int yy = y0; yy < y1; yy++) {
            const int32_t *k = c->k + (size_t)yy * c->ksize;
            int ymin = c->bounds[2 * yy] - row0, cnt = c->bounds[2 * yy + 1];
            uint8_t *dst = out + (size_t)yy * rowlen;
            if (!acc) { /* out of memory in a worker: fall back to the scalar form */
                for (size_t i = 0; i < rowlen; i++) {
                    int32_t s = 1 << (PRECISION_BITS - 1);
                    for (int y = 0; y < cnt; y++) s += in[(size_t)(ymin + y) * rowlen + i] * k[y];
                    dst[i] = clip8(s);
                }
                continue;
            }
            size_t i0 = 0;
#if defined(__AVX2__)
            i0 = vrow_avx2(dst, in + (size_t)ymin * rowlen, rowlen, k, cnt);
#endif
            for (size_t i = i0; i < rowlen; i++) acc[i] = 1 << (PRECISION_BITS - 1);
            for (int y = 0; y < cnt; y++) {
                const uint8_t *src = in + (size_t)(ymin + y) * rowlen;
                int32_t ky = k[y];
                for (size_t i = i0; i < rowlen; i++) acc[i] += src[i] * ky;
            }
            for (size_t i = i0; i < rowlen; i++) dst[i] = clip8(acc[i]);
        }
        free(acc);
    }
}

/* ---- the resize in steps (image.h: image_resizer) ----
 * Output row yy reads source rows [bounds[yy].xmin, xmin + count) through the horizontal pass, and
 * that window only moves down as yy grows, so output rows [0, rows) need source rows [0, end(rows)).
 * Each step resamples horizontally the source rows it newly needs (into tmp, which covers the rows
 * [first, last) of the whole resize, as Pillow's intermediate does) and then the new output rows.
 * Every value is computed by the same arithmetic as in one step, so the result is the same. */
struct image_resizer {
    int in_w, in_h, out_w, out_h;
    int need_h, need_v;
    struct coeffs ch, cv;
    int first, last;  /* source rows of the intermediate (need_h and need_v) */
    struct image tmp; /* horizontal pass of source rows [first, first + h_done) */
    int h_done, v_done;
};

void image_resizer_free(struct image_resizer *r)
{
    if (!r) return;
    coeffs_free(&r->ch);
    coeffs_free(&r->cv);
    image_free(&r->tmp);
    free(r);
}

struct image_resizer *image_resizer_new(int in_w, int in_h, int out_w, int out_h, struct err *e)
{
    if (in_w < 1 || in_h < 1) {
        err_set(e, "image resize: empty input image");
        return NULL;
    }
    if (out_w < 1 || out_h < 1) {
        err_set(e, "image resize: invalid target size %dx%d", out_w, out_h);
        return NULL;
    }
    struct image_resizer *r = calloc(1, sizeof *r);
    if (!r) {
        err_set(e, "image resize: out of memory");
        return NULL;
    }
    r->in_w = in_w, r->in_h = in_h, r->out_w = out_w, r->out_h = out_h;
    r->need_h = out_w != in_w;
    r->need_v = out_h != in_h;
    if ((r->need_v && coeffs_init(&r->cv, in_h, out_h, e)) || (r->need_h && coeffs_init(&r->ch, in_w, out_w, e))) {
        image_resizer_free(r);
        return NULL;
    }
    if (r->need_h && r->need_v) {
        /* only the rows the vertical pass will read */
        r->first = r->cv.bounds[0];
        r->last = r->cv.bounds[2 * (out_h - 1)] + r->cv.bounds[2 * (out_h - 1) + 1];
        if (image_alloc(&r->tmp, out_w, r->last - r->first, e)) {
            image_resizer_free(r);
            return NULL;
        }
    }
    return r;
}

int image_threads_beside(const struct image *images, int n, int all)
{
    if (all < 1) all = 1;
    int decoding = 0;
    for (int i = 0; i < n; i++)
        if (images[i].rows && image_rows_ready(&images[i]) < images[i].h) decoding++;
    if (!decoding) return all;
    /* a quarter of the threads while rows still arrive: libgomp's idle workers spin after every region
     * (OMP_WAIT_POLICY unset), and a full team of spinners beside the decode threads made the H200 host's
     * first token 60 to 116 ms, run to run */
    int t = all / 4;
    if (t > all - decoding) t = all - decoding;
    return t < 1 ? 1 : t;
}

int image_resizer_src_rows(const struct image_resizer *r, int rows)
{
    if (rows <= 0) return 0;
    if (rows > r->out_h) rows = r->out_h;
    if (!r->need_v) return rows;
    return r->cv.bounds[2 * (rows - 1)] + r->cv.bounds[2 * (rows - 1) + 1];
}

int image_resizer_rows_from(const struct image_resizer *r, int src_rows)
{
    if (!r->need_v) return src_rows < r->out_h ? (src_rows > 0 ? src_rows : 0) : r->out_h;
    int lo = 0, hi = r->out_h; /* the largest rows with src_rows(rows) <= src_rows: src_rows() grows with rows */
    while (lo < hi) {
        const int mid = lo + (hi - lo + 1) / 2;
        if (image_resizer_src_rows(r, mid) <= src_rows) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

void image_resizer_run(struct image_resizer *r, struct image *out, const struct image *in, int rows, int n_threads)
{
    if (rows > r->out_h) rows = r->out_h;
    if (rows <= r->v_done) return;
#ifdef _OPENMP
    if (n_threads <= 0) n_threads = omp_get_max_threads();
#else
    n_threads = 1;
#endif
    const size_t orow = (size_t)r->out_w * 3;
    const int y0 = r->v_done;
    if (!r->need_h && !r->need_v) { /* Pillow returns a copy */
        memcpy(out->rgb + (size_t)y0 * orow, in->rgb + (size_t)y0 * orow, (size_t)(rows - y0) * orow);
    } else if (!r->need_v) { /* horizontal only: the intermediate is the result */
        pass_horizontal(out->rgb + (size_t)y0 * orow, r->out_w, in->rgb, r->in_w, y0, rows - y0, &r->ch, n_threads);
    } else if (!r->need_h) {
        pass_vertical(out->rgb, y0, rows, in->rgb, r->out_w, 0, &r->cv, n_threads);
    } else {
        const int end = image_resizer_src_rows(r, rows), h0 = r->first + r->h_done;
        if (end > h0) {
            pass_horizontal(r->tmp.rgb + (size_t)r->h_done * orow, r->out_w, in->rgb, r->in_w, h0, end - h0, &r->ch,
                            n_threads);
            r->h_done = end - r->first;
        }
        pass_vertical(out->rgb, y0, rows, r->tmp.rgb, r->out_w, r->first, &r->cv, n_threads);
    }
    r->v_done = rows;
    if (rows == r->out_h) image_free(&r->tmp); /* done: the intermediate is not needed any more */
}

int image_resize_bicubic(struct image *out, const struct image *in, int w, int h, int n_threads, struct err *e)
{
    if (!in->rgb) return err_set(e, "image resize: empty input image");
    struct image_resizer *r = image_resizer_new(in->w, in->h, w, h, e);
    if (!r) return -1;
    if (image_alloc(out, w, h, e)) {
        image_resizer_free(r);
        return -1;
    }
    image_resizer_run(r, out, in, h, n_threads);
    image_resizer_free(r);
    return 0;
}

int image_crop(struct image *out, const struct image *in, int x0, int y0, int x1, int y1, struct err *e)
{
    if (x0 < 0 || y0 < 0 || x1 > in->w || y1 > in->h || x1 <= x0 || y1 <= y0)
        return err_set(e, "image crop: box (%d,%d,%d,%d) is not inside a %dx%d image", x0, y0, x1, y1, in->w, in->h);
    if (image_alloc(out, x1 - x0, y1 - y0, e)) return -1;
    size_t rowlen = (size_t)(x1 - x0) * 3;
    for (int y = y0; y < y1; y++)
        memcpy(out->rgb + (size_t)(y - y0) * rowlen, in->rgb + ((size_t)y * in->w + x0) * 3, rowlen);
    return 0;
}

/* ---- the synthetic test pattern (image.h) ---- */

uint8_t image_pattern_px(int64_t x, int64_t y, int c, int64_t W, int64_t H, uint32_t seed)
{
    uint32_t h = ((uint32_t)x * 73856093u) ^ ((uint32_t)y * 19349663u) ^ ((uint32_t)c * 83492791u) ^ (seed * 2654435761u);
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    int64_t base;
    if (c == 0) base = W > 1 ? x * 255 / (W - 1) : 128;
    else if (c == 1) base = H > 1 ? y * 255 / (H - 1) : 128;
    else base = W + H > 2 ? (x + y) * 255 / (W + H - 2) : 128;
    int64_t v = base + (int64_t)(h >> 24) % 25 - 12;
    if (4 * x >= W && 2 * x < W && 4 * y >= H && 2 * y < H) v = 255 - v;
    if (4 * x >= 3 * W && 4 * y >= 3 * H) v = (((x >> 3) + (y >> 3)) & 1) ? 235 : 20;
    int64_t d = x * H - y * W;
    if (d < 0) d = -d;
    if (d < (W > H ? W : H)) v = c == 1 ? 255 : 0;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

int image_pattern(struct image *out, int w, int h, uint32_t seed, struct err *e)
{
    if (image_alloc(out, w, h, e)) return -1;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) out->rgb[((size_t)y * w + x) * 3 + c] = image_pattern_px(x, y, c, w, h, seed);
    return 0;
}
