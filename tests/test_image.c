/* test_image.c: image decoding, slicing, Pillow-exact bicubic resize, normalization and packing.
 * Expected values come from the spec's worked-size table, from an independent Python run of the
 * §5.2 algorithm (pasted below), from hand arithmetic, from an independent double-precision
 * re-derivation of the resize, and, when tests/fixtures/image/manifest.txt exists, from Pillow
 * itself (written by tools/ref_image.py on a machine with Pillow). A present fixture that does not
 * match fails the test.
 * `test_image --bench [file.jpg]` times decode + preprocess (median of repeats). */
#include <png.h>
#include <turbojpeg.h>
#include <webp/encode.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "image.h"
#include "t.h"

#define FIXDIR "tests/fixtures/image"

static struct preprocessor_config default_cfg(void)
{
    struct preprocessor_config c = {.max_slice_nums = 9, .scale_resolution = 448, .patch_size = 14,
                                    .image_feature_size = 96, .norm_mean = {0.5f, 0.5f, 0.5f},
                                    .norm_std = {0.5f, 0.5f, 0.5f}};
    return c;
}

/* ------------------------------------------------------------------ SHA-256 (FIPS 180-4) */
struct sha256 {
    uint32_t h[8];
    uint8_t buf[64];
    uint64_t len;
    size_t fill;
};

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
    0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
    0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
    0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
static void sha_block(struct sha256 *s, const uint8_t *p)
{
    uint32_t w[64], a[8];
    for (int i = 0; i < 16; i++) w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    memcpy(a, s->h, sizeof a);
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = a[7] + (ROR(a[4], 6) ^ ROR(a[4], 11) ^ ROR(a[4], 25)) + ((a[4] & a[5]) ^ (~a[4] & a[6])) + sha_k[i] + w[i];
        uint32_t t2 = (ROR(a[0], 2) ^ ROR(a[0], 13) ^ ROR(a[0], 22)) + ((a[0] & a[1]) ^ (a[0] & a[2]) ^ (a[1] & a[2]));
        memmove(a + 1, a, 7 * sizeof(uint32_t));
        a[4] += t1;
        a[0] = t1 + t2;
    }
    for (int i = 0; i < 8; i++) s->h[i] += a[i];
}

static void sha_init(struct sha256 *s)
{
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, h0, sizeof h0);
    s->len = 0;
    s->fill = 0;
}

static void sha_update(struct sha256 *s, const void *data, size_t n)
{
    const uint8_t *p = data;
    s->len += n;
    while (n) {
        size_t take = 64 - s->fill < n ? 64 - s->fill : n;
        memcpy(s->buf + s->fill, p, take);
        s->fill += take; p += take; n -= take;
        if (s->fill == 64) { sha_block(s, s->buf); s->fill = 0; }
    }
}

static void sha_hex(struct sha256 *s, char out[65])
{
    uint64_t bits = s->len * 8;
    uint8_t pad = 0x80, z = 0, lb[8];
    sha_update(s, &pad, 1);
    while (s->fill != 56) sha_update(s, &z, 1);
    for (int i = 0; i < 8; i++) lb[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha_update(s, lb, 8);
    for (int i = 0; i < 8; i++) sprintf(out + 8 * i, "%08x", s->h[i]);
}

static void sha_of(const void *d, size_t n, char out[65])
{
    struct sha256 s;
    sha_init(&s);
    sha_update(&s, d, n);
    sha_hex(&s, out);
}

static void test_sha256(void)
{
    char h[65];
    sha_of("abc", 3, h);
    T_EQ_STR(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    sha_of("", 0, h);
    T_EQ_STR(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

/* ------------------------------------------------------------------ synthetic images
 * image_pattern (image.h): the formula of tools/ref_image.py's gen_image, so resizes see smooth
 * areas, noise and hard edges (bicubic overshoot and clipping). */
static int gen_image(struct image *im, int W, int H, uint32_t seed)
{
    struct err e;
    return image_pattern(im, W, H, seed, &e);
}

/* ------------------------------------------------------------------ slicing */

/* Spec §5.2 worked sizes (an independent source): input, overview, grid, slice, image tokens. */
static void test_slice_spec_table(void)
{
    static const int t[][9] = {
        {448, 448, 448, 448, 0, 0, 0, 0, 96},       {1024, 768, 518, 392, 2, 2, 518, 392, 480},
        {1000, 500, 630, 322, 2, 1, 448, 448, 288}, {640, 480, 518, 392, 2, 1, 364, 546, 288},
        {1920, 1080, 602, 336, 4, 2, 420, 476, 864}, {3000, 4000, 392, 518, 3, 3, 392, 518, 960},
        {500, 1500, 252, 770, 1, 3, 448, 448, 384}, {100, 2000, 98, 2002, 0, 0, 0, 0, 96},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        struct image_slice_plan p;
        struct err e;
        T_EQ_INT(image_slice_plan(&p, t[i][0], t[i][1], 448, 14, 9, &e), 0);
        T_ASSERTF(p.overview_w == t[i][2] && p.overview_h == t[i][3] && p.cols == t[i][4] && p.rows == t[i][5] &&
                      p.slice_w == t[i][6] && p.slice_h == t[i][7],
                  "%dx%d: got overview %dx%d grid %dx%d slice %dx%d", t[i][0], t[i][1], p.overview_w, p.overview_h,
                  p.cols, p.rows, p.slice_w, p.slice_h);
        int tokens = 96 * (1 + p.cols * p.rows);
        T_EQ_INT(tokens, t[i][8]);
        /* tgt sizes are multiples of 14 by construction */
        T_EQ_INT(p.overview_w % 14 + p.overview_h % 14 + p.slice_w % 14 + p.slice_h % 14, 0);
    }
}

/* Computed by a separate plain-Python implementation of the §5.2 pseudo-code (math.log, round(),
 * int()), not by this code: W, H, overview w, h, cols, rows, slice w, h. */
static void test_slice_extra(void)
{
    static const int t[][8] = {
        {4000, 100, 2800, 70, 3, 1, 1624, 126}, {1, 1, 448, 448, 0, 0, 0, 0},
        {1001, 333, 770, 252, 3, 1, 448, 448},  {2000, 101, 1974, 98, 3, 1, 1148, 168},
        {449, 449, 448, 448, 1, 2, 630, 322},   {897, 448, 630, 322, 2, 1, 448, 448},
        {12345, 77, 5614, 28, 6, 1, 2296, 84},  {77, 12345, 28, 5670, 1, 6, 84, 2310},
        {1344, 1344, 448, 448, 3, 3, 448, 448}, {1500, 500, 770, 252, 3, 1, 448, 448},
        {3, 7000, 14, 21644, 0, 0, 0, 0},       {6000, 6000, 448, 448, 3, 3, 448, 448},
        {2093, 2938, 378, 532, 3, 3, 378, 532}, {4343, 238, 1904, 98, 7, 1, 728, 280},
        {3815, 2041, 616, 322, 4, 2, 434, 462}, {425, 1285, 252, 784, 1, 3, 448, 448},
        {928, 3046, 252, 812, 2, 4, 350, 574},  {3843, 2020, 616, 322, 4, 2, 434, 462},
        {3120, 4455, 378, 532, 2, 4, 532, 378}, {836, 4702, 182, 1064, 1, 8, 532, 378},
        {2043, 108, 1946, 98, 3, 1, 1120, 182}, {1776, 3344, 322, 616, 2, 4, 462, 434},
        {2290, 1492, 560, 364, 4, 2, 392, 504}, {3191, 1308, 700, 280, 4, 2, 490, 406},
        {590, 1137, 322, 616, 1, 3, 560, 364},  {3645, 1038, 840, 238, 4, 2, 588, 336},
        {1084, 15, 3752, 56, 0, 0, 0, 0},       {44, 1716, 70, 2800, 0, 0, 0, 0},
        {1766, 1359, 504, 392, 3, 3, 504, 392}, {1364, 2370, 336, 588, 2, 4, 476, 420},
        {2570, 1630, 560, 350, 4, 2, 392, 504}, {4418, 1678, 728, 280, 4, 2, 518, 392},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        struct image_slice_plan p;
        struct err e;
        T_EQ_INT(image_slice_plan(&p, t[i][0], t[i][1], 448, 14, 9, &e), 0);
        T_ASSERTF(p.overview_w == t[i][2] && p.overview_h == t[i][3] && p.cols == t[i][4] && p.rows == t[i][5] &&
                      p.slice_w == t[i][6] && p.slice_h == t[i][7],
                  "%dx%d: got overview %dx%d grid %dx%d slice %dx%d", t[i][0], t[i][1], p.overview_w, p.overview_h,
                  p.cols, p.rows, p.slice_w, p.slice_h);
    }
    struct image_slice_plan p;
    struct err e;
    T_EQ_INT(image_slice_plan(&p, 0, 10, 448, 14, 9, &e), -1);
    T_CONTAINS(e.msg, "0x10");
}

static void test_rounding(void)
{
    /* Python: round(0.5)=0, round(1.5)=2, round(2.5)=2, round(-1.5)=-2, round(500.5)=500 */
    T_EQ_INT((int)image_py_round(0.5), 0);
    T_EQ_INT((int)image_py_round(1.5), 2);
    T_EQ_INT((int)image_py_round(2.5), 2);
    T_EQ_INT((int)image_py_round(-1.5), -2);
    T_EQ_INT((int)image_py_round(500.5), 500);
    T_EQ_INT((int)image_py_round(500.50000001), 501);
    /* ensure_divide(len, p) = max(round(len/p)*p, p) */
    T_EQ_INT(image_ensure_divide(7, 14), 14);    /* round(0.5) = 0 -> max(0, 14) */
    T_EQ_INT(image_ensure_divide(21, 14), 28);   /* round(1.5) = 2 */
    T_EQ_INT(image_ensure_divide(35, 14), 28);   /* round(2.5) = 2; C round() would give 42 */
    T_EQ_INT(image_ensure_divide(1001, 2), 1000); /* the spec's example */
    int w, h;
    /* find_best_resize(640, 480, up): r = 4/3, H = int(448/sqrt(4/3)) = int(387.979) = 387,
     * W = int(387*4/3) = 516; round(516/14 = 36.86) = 37 -> 518; round(387/14 = 27.64) = 28 -> 392 */
    image_find_best_resize(640, 480, 448, 14, 1, &w, &h);
    T_EQ_INT(w, 518);
    T_EQ_INT(h, 392);
    /* no upscale and small: the size only snaps to multiples of 14 */
    image_find_best_resize(100, 50, 448, 14, 0, &w, &h);
    T_EQ_INT(w, 98);
    T_EQ_INT(h, 56);
}

/* ------------------------------------------------------------------ resize */

/* An independent double-precision derivation of §5.3, written as a direct formula per output sample
 * (no shared tables): weights from the cubic, normalised, quantised to 22 bits; H pass then V pass
 * with uint8 rounding in between, exactly as §5.3 states. Slow; used on small images only. */
static double ref_cubic(double t)
{
    t = fabs(t);
    if (t < 1) return 1.5 * t * t * t - 2.5 * t * t + 1;             /* (a+2)t^3 - (a+3)t^2 + 1 */
    if (t < 2) return -0.5 * t * t * t + 2.5 * t * t - 4 * t + 2;    /* a t^3 - 5a t^2 + 8a t - 4a */
    return 0;
}

static void ref_weights(int in, int out, int o, int *lo, int *cnt, long long k[64])
{
    double scale = (double)in / out, fs = scale > 1 ? scale : 1, sup = 2 * fs, c = (o + 0.5) * scale;
    int a = (int)(c - sup + 0.5), b = (int)(c + sup + 0.5);
    if (a < 0) a = 0;
    if (b > in) b = in;
    double w[64], s = 0;
    for (int i = a; i < b; i++) s += (w[i - a] = ref_cubic((i - c + 0.5) / fs));
    for (int i = a; i < b; i++) {
        double v = w[i - a] / s * 4194304.0;
        k[i - a] = (long long)(v < 0 ? v - 0.5 : v + 0.5);
    }
    *lo = a;
    *cnt = b - a;
}

static uint8_t ref_clip(long long s)
{
    long long v = s >> 22;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

static void ref_resize(const struct image *in, int W, int H, uint8_t *out)
{
    uint8_t *mid = malloc((size_t)W * in->h * 3);
    long long k[64];
    int lo, cnt;
    for (int y = 0; y < in->h; y++)
        for (int x = 0; x < W; x++) {
            ref_weights(in->w, W, x, &lo, &cnt, k);
            for (int c = 0; c < 3; c++) {
                long long s = 1 << 21;
                for (int i = 0; i < cnt; i++) s += k[i] * in->rgb[((size_t)y * in->w + lo + i) * 3 + c];
                mid[((size_t)y * W + x) * 3 + c] = W == in->w ? in->rgb[((size_t)y * in->w + x) * 3 + c] : ref_clip(s);
            }
        }
    for (int y = 0; y < H; y++) {
        ref_weights(in->h, H, y, &lo, &cnt, k);
        for (int x = 0; x < W; x++)
            for (int c = 0; c < 3; c++) {
                long long s = 1 << 21;
                for (int i = 0; i < cnt; i++) s += k[i] * mid[((size_t)(lo + i) * W + x) * 3 + c];
                out[((size_t)y * W + x) * 3 + c] = H == in->h ? mid[((size_t)y * W + x) * 3 + c] : ref_clip(s);
            }
    }
    free(mid);
}

static void test_resize_hand(void)
{
    /* 4x1 [0,0,255,255] -> 2x1 by hand: scale 2, support 4; output 0 uses inputs 0..3 at
     * t = -0.25, 0.25, 0.75, 1.25 -> cubic 0.8671875, 0.8671875, 0.2265625, -0.0703125 (sum 1.890625);
     * 255*(0.2265625-0.0703125)/1.890625 = 21.07 -> 21; output 1 mirrors it: 233.93 -> 234. */
    struct image in = {0}, out = {0};
    struct err e;
    T_EQ_INT(image_alloc(&in, 4, 1, &e), 0);
    uint8_t v[4] = {0, 0, 255, 255};
    for (int i = 0; i < 4; i++) in.rgb[3 * i] = in.rgb[3 * i + 1] = in.rgb[3 * i + 2] = v[i];
    T_EQ_INT(image_resize_bicubic(&out, &in, 2, 1, 1, &e), 0);
    T_EQ_INT(out.w, 2);
    T_EQ_INT(out.rgb[0], 21);
    T_EQ_INT(out.rgb[3], 234);
    T_EQ_INT(out.rgb[5], 234);
    image_free(&out);
    image_free(&in);
}

static void test_resize_identity_constant(void)
{
    struct image a = {0}, b = {0};
    struct err e;
    T_EQ_INT(gen_image(&a, 61, 47, 3), 0);
    T_EQ_INT(image_resize_bicubic(&b, &a, 61, 47, 2, &e), 0);
    T_ASSERT(b.rgb != a.rgb && memcmp(a.rgb, b.rgb, 61 * 47 * 3) == 0);
    image_free(&b);
    image_free(&a);
    /* constant images stay constant under any scale (weights sum to 1 in 22-bit fixed point) */
    int sizes[][2] = {{1, 1}, {13, 7}, {448, 300}, {5, 90}, {3, 3}};
    T_EQ_INT(image_alloc(&a, 37, 29, &e), 0);
    for (int v = 0; v < 256; v += 51) {
        memset(a.rgb, v, 37 * 29 * 3);
        a.rgb[0] = (uint8_t)v;
        for (int s = 0; s < 5; s++) {
            T_EQ_INT(image_resize_bicubic(&b, &a, sizes[s][0], sizes[s][1], 2, &e), 0);
            int bad = 0;
            for (size_t i = 0; i < (size_t)b.w * b.h * 3; i++) bad += b.rgb[i] != v;
            T_ASSERTF(bad == 0, "value %d -> %dx%d: %d samples changed", v, sizes[s][0], sizes[s][1], bad);
            image_free(&b);
        }
    }
    image_free(&a);
}

static void test_resize_vs_reference(void)
{
    int cases[][4] = {{64, 48, 32, 24}, {64, 48, 37, 23}, {50, 30, 97, 61}, {100, 200, 13, 77}, {41, 41, 42, 40},
                      {33, 17, 33, 40}, {33, 17, 20, 17}, {7, 5, 1, 1},      {1, 9, 5, 2},      {120, 90, 17, 130}};
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        struct image a = {0}, b = {0};
        struct err e;
        T_EQ_INT(gen_image(&a, cases[t][0], cases[t][1], 11 + (uint32_t)t), 0);
        int W = cases[t][2], H = cases[t][3];
        T_EQ_INT(image_resize_bicubic(&b, &a, W, H, 2, &e), 0);
        uint8_t *r = malloc((size_t)W * H * 3);
        ref_resize(&a, W, H, r);
        int bad = 0, first = -1;
        for (int i = 0; i < W * H * 3; i++)
            if (r[i] != b.rgb[i]) { bad++; if (first < 0) first = i; }
        T_ASSERTF(bad == 0, "%dx%d -> %dx%d: %d samples differ, first at %d (%d vs ref %d)", cases[t][0], cases[t][1],
                  W, H, bad, first, first >= 0 ? b.rgb[first] : 0, first >= 0 ? r[first] : 0);
        free(r);
        image_free(&b);
        image_free(&a);
    }
    /* The result does not depend on the number of threads. */
    struct image a = {0}, b1 = {0}, b2 = {0};
    struct err e;
    T_EQ_INT(gen_image(&a, 700, 500, 5), 0);
    T_EQ_INT(image_resize_bicubic(&b1, &a, 301, 333, 1, &e), 0);
    T_EQ_INT(image_resize_bicubic(&b2, &a, 301, 333, 4, &e), 0);
    T_ASSERT(memcmp(b1.rgb, b2.rgb, 301 * 333 * 3) == 0);
    image_free(&a); image_free(&b1); image_free(&b2);
}

/* A source whose rows arrive: rows [0, *avail) are a's, the rest garbage that changes at every call, so a
 * step that read a row it was not promised would differ from the whole resize. */
static void arrive(struct image *part, const struct image *a, int *avail, int rows, uint32_t *rng)
{
    const size_t rl = (size_t)a->w * 3;
    if (rows > *avail) {
        memcpy(part->rgb + (size_t)*avail * rl, a->rgb + (size_t)*avail * rl, (size_t)(rows - *avail) * rl);
        *avail = rows;
    }
    for (size_t i = (size_t)*avail * rl; i < (size_t)a->h * rl; i++) {
        *rng = *rng * 1664525u + 1013904223u;
        part->rgb[i] = (uint8_t)(*rng >> 24);
    }
}

/* image_resizer: output rows in uneven steps, each with only the source rows it promised to read, equal the
 * independent reference (ref_resize) bit for bit: both passes, either alone, neither, up and down. */
static void test_resize_steps(void)
{
    int cases[][4] = {{64, 48, 32, 24}, {50, 30, 97, 61}, {100, 200, 13, 77}, {33, 17, 33, 40},
                      {33, 17, 20, 17}, {41, 41, 41, 41}, {7, 5, 1, 1},     {300, 420, 112, 150}};
    uint32_t rng = 7;
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        struct image a = {0}, part = {0}, out = {0};
        struct err e;
        const int W = cases[t][2], H = cases[t][3];
        T_EQ_INT(gen_image(&a, cases[t][0], cases[t][1], 21 + (uint32_t)t), 0);
        T_EQ_INT(image_alloc(&part, a.w, a.h, &e), 0);
        T_EQ_INT(image_alloc(&out, W, H, &e), 0);
        struct image_resizer *r = image_resizer_new(a.w, a.h, W, H, &e);
        T_ASSERT(r != NULL);
        int avail = 0, done = 0, steps = 0;
        while (done < H) {
            const int rows = done + 1 + (int)((unsigned)(t + steps) * 7u % 5u); /* 1 .. 5 rows a step */
            const int need = image_resizer_src_rows(r, rows);
            T_ASSERTF(need >= avail && need <= a.h, "case %zu: step to %d rows needs %d source rows", t, rows, need);
            /* the inverse: the most output rows those source rows make, and not one more */
            const int most = image_resizer_rows_from(r, need);
            T_ASSERTF(most >= (rows < H ? rows : H) && image_resizer_src_rows(r, most) <= need &&
                          (most == H || image_resizer_src_rows(r, most + 1) > need),
                      "case %zu: rows_from(%d) = %d", t, need, most);
            arrive(&part, &a, &avail, need, &rng);
            image_resizer_run(r, &out, &part, rows, t % 2 ? 1 : 2);
            done = rows < H ? rows : H;
            steps++;
        }
        T_EQ_INT(image_resizer_src_rows(r, H) <= a.h, 1);
        uint8_t *ref = malloc((size_t)W * H * 3);
        ref_resize(&a, W, H, ref);
        int bad = 0;
        for (int i = 0; i < W * H * 3; i++) bad += ref[i] != out.rgb[i];
        T_ASSERTF(bad == 0, "%dx%d -> %dx%d in %d steps: %d samples differ", a.w, a.h, W, H, steps, bad);
        free(ref);
        image_resizer_free(r);
        image_free(&a);
        image_free(&part);
        image_free(&out);
    }
}

/* image_prep: each piece made as soon as the rows it names have arrived (slices by grid row, the overview
 * last, as a decode delivers them; image_prep_advance run on the rows in halfway) equals image_preprocess's piece: sliced with a resized refine image,
 * sliced with the refine image the source itself (1344x1344), and not sliced. */
static void test_prep_pieces(void)
{
    const int sizes[][2] = {{1000, 700}, {1344, 1344}, {300, 200}, {640, 1500}};
    struct preprocessor_config cfg = default_cfg();
    uint32_t rng = 3;
    for (int t = 0; t < 4; t++) {
        struct image a = {0}, part = {0};
        struct image_pieces ps;
        struct image_prep pp;
        struct err e;
        T_EQ_INT(gen_image(&a, sizes[t][0], sizes[t][1], 40 + (uint32_t)t), 0);
        T_EQ_INT(image_alloc(&part, a.w, a.h, &e), 0);
        T_EQ_INT(image_preprocess(&ps, &a, &cfg, 0, &e), 0);
        T_EQ_INT(image_prep_init(&pp, a.w, a.h, &cfg, &e), 0);
        T_EQ_INT(pp.n, ps.n);
        /* the order of arrival: by the rows each piece needs, the overview (which needs them all) last */
        int order[65], n = 0, avail = 0;
        for (int k = 1; k < pp.n; k++) order[n++] = k;
        order[n++] = 0;
        for (int i = 0; i < n; i++) {
            const int k = order[i], need = image_prep_rows(&pp, k);
            T_ASSERTF(need >= 1 && need <= a.h, "%dx%d piece %d needs %d rows", a.w, a.h, k, need);
            if (k > 0 && pp.plan.rows > 1 && (k - 1) / pp.plan.cols == 0) /* the top row needs less than all */
                T_ASSERTF(need < a.h, "%dx%d: the top slices need %d of %d rows", a.w, a.h, need, a.h);
            /* half of the rows still missing arrive first, and the resizes run ahead on them */
            arrive(&part, &a, &avail, need > avail ? (avail + need) / 2 : avail, &rng);
            image_prep_advance(&pp, &part, avail, 2);
            arrive(&part, &a, &avail, need > avail ? need : avail, &rng);
            struct image_piece pc;
            T_EQ_INT(image_prep_piece(&pp, &pc, &part, k, 2, &e), 0);
            T_EQ_INT(pc.n_patches, ps.p[k].n_patches);
            T_EQ_INT(pc.tgt_w, ps.p[k].tgt_w);
            T_ASSERTF(memcmp(pc.patches, ps.p[k].patches, (size_t)pc.n_patches * 588 * sizeof(float)) == 0,
                      "%dx%d piece %d differs from image_preprocess's", a.w, a.h, k);
            free(pc.patches);
        }
        struct image_piece pc;
        T_EQ_INT(image_prep_piece(&pp, &pc, &part, pp.n, 1, &e), -1); /* no such piece */
        image_prep_free(&pp);
        image_pieces_free(&ps);
        image_free(&a);
        image_free(&part);
    }
}

static void test_crop(void)
{
    struct image a = {0}, c = {0};
    struct err e;
    T_EQ_INT(gen_image(&a, 20, 10, 1), 0);
    T_EQ_INT(image_crop(&c, &a, 5, 2, 12, 9, &e), 0);
    T_EQ_INT(c.w, 7);
    T_EQ_INT(c.h, 7);
    T_EQ_INT(c.rgb[0], image_pattern_px(5, 2, 0, 20, 10, 1));
    T_EQ_INT(c.rgb[(6 * 7 + 6) * 3 + 2], image_pattern_px(11, 8, 2, 20, 10, 1));
    image_free(&c);
    T_EQ_INT(image_crop(&c, &a, 5, 2, 21, 9, &e), -1);
    T_CONTAINS(e.msg, "not inside");
    image_free(&a);
}

/* ------------------------------------------------------------------ normalization and packing */

static float ref_norm(int v)
{
    /* each float32 operation rounded once; double holds the exact result of a float op */
    float x = (float)((double)v / 255.0);
    float y = (float)((double)x - 0.5);
    return (float)((double)y / 0.5);
}

static void test_pack(void)
{
    struct image im = {0};
    struct err e;
    T_EQ_INT(gen_image(&im, 42, 28, 9), 0); /* tgt (2, 3) */
    struct image_piece pc;
    struct preprocessor_config cfg = default_cfg();
    T_EQ_INT(image_pack_patches(&pc, &im, 14, cfg.norm_mean, cfg.norm_std, 2, &e), 0);
    T_EQ_INT(pc.tgt_h, 2);
    T_EQ_INT(pc.tgt_w, 3);
    T_EQ_INT(pc.n_patches, 6);
    int bad = 0;
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++)
            for (int c = 0; c < 3; c++)
                for (int ky = 0; ky < 14; ky++)
                    for (int kx = 0; kx < 14; kx++) {
                        float want = ref_norm(image_pattern_px(14 * j + kx, 14 * i + ky, c, 42, 28, 9));
                        float got = pc.patches[(size_t)(i * 3 + j) * 588 + c * 196 + ky * 14 + kx];
                        bad += memcmp(&want, &got, 4) != 0;
                    }
    T_EQ_INT(bad, 0);
    /* endpoints are exact: 0 -> -1, 255 -> 1 */
    T_ASSERT(ref_norm(0) == -1.0f && ref_norm(255) == 1.0f);
    free(pc.patches);
    T_EQ_INT(image_pack_patches(&pc, &im, 5, cfg.norm_mean, cfg.norm_std, 1, &e), -1);
    T_CONTAINS(e.msg, "multiple");
    image_free(&im);
}

static void test_preprocess_640x480(void)
{
    struct image im = {0};
    struct image_pieces ps;
    struct err e;
    struct preprocessor_config cfg = default_cfg();
    T_EQ_INT(gen_image(&im, 640, 480, 1), 0);
    T_EQ_INT(image_preprocess(&ps, &im, &cfg, 0, &e), 0);
    T_EQ_INT(ps.n, 3);
    T_EQ_INT(ps.cols, 2);
    T_EQ_INT(ps.rows, 1);
    T_EQ_INT(ps.patch_dim, 588);
    T_EQ_INT(ps.p[0].tgt_h, 28);  /* spec: overview 518x392 (28x37) */
    T_EQ_INT(ps.p[0].tgt_w, 37);
    T_EQ_INT(ps.p[1].tgt_h, 39);  /* slices 364x546 (39x26) */
    T_EQ_INT(ps.p[1].tgt_w, 26);
    T_EQ_INT(ps.p[2].n_patches, 39 * 26);
    /* slice 2 is the right half of the refine image: compare with resize + crop done here */
    struct image ref = {0}, half = {0};
    T_EQ_INT(image_resize_bicubic(&ref, &im, 728, 546, 1, &e), 0);
    T_EQ_INT(image_crop(&half, &ref, 364, 0, 728, 546, &e), 0);
    int bad = 0;
    for (int n = 0; n < 39 * 26; n++) {
        int i = n / 26, j = n % 26;
        for (int c = 0; c < 3; c++)
            for (int ky = 0; ky < 14; ky++)
                for (int kx = 0; kx < 14; kx++) {
                    float want = ref_norm(half.rgb[(((size_t)(14 * i + ky)) * 364 + 14 * j + kx) * 3 + c]);
                    bad += want != ps.p[2].patches[(size_t)n * 588 + c * 196 + ky * 14 + kx];
                }
    }
    T_EQ_INT(bad, 0);
    image_free(&ref);
    image_free(&half);
    image_pieces_free(&ps);
    image_pieces_free(&ps); /* idempotent */
    image_free(&im);
}

/* ------------------------------------------------------------------ decoding */

struct membuf {
    uint8_t *p;
    size_t n, cap;
};

static void mb_write(png_structp png, png_bytep d, png_size_t n)
{
    struct membuf *m = png_get_io_ptr(png);
    if (m->n + n > m->cap) {
        m->cap = (m->n + n) * 2;
        m->p = realloc(m->p, m->cap);
    }
    memcpy(m->p + m->n, d, n);
    m->n += n;
}
static void mb_flush(png_structp png) { (void)png; }

/* Writes a PNG with libpng: rows of w samples of `ch` channels at `depth` bits (big-endian 16-bit). */
static struct membuf write_png(int w, int h, int ctype, int depth, const uint8_t *rows, size_t rowbytes,
                               const png_color *pal, int npal, int interlace)
{
    struct membuf m = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) { png_destroy_write_struct(&png, &info); free(m.p); m.p = NULL; return m; }
    png_set_write_fn(png, &m, mb_write, mb_flush);
    png_set_IHDR(png, info, w, h, depth, ctype, interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (pal) png_set_PLTE(png, info, pal, npal);
    png_write_info(png, info);
    png_bytep *rp = malloc(sizeof(png_bytep) * h);
    for (int y = 0; y < h; y++) rp[y] = (png_bytep)rows + rowbytes * y;
    png_write_image(png, rp);
    png_write_end(png, NULL);
    free(rp);
    png_destroy_write_struct(&png, &info);
    return m;
}

static int decode_mem(struct image *im, struct membuf m, struct err *e)
{
    int rc = image_decode(im, m.p, m.n, NULL, e);
    free(m.p);
    return rc;
}

static void test_png_modes(void)
{
    struct err e;
    struct image im = {0};
    enum { W = 9, H = 5 };
    uint8_t rows[H * W * 8];
    /* RGBA 8: alpha dropped without compositing, even where alpha is 0 */
    for (int i = 0; i < W * H; i++) {
        rows[4 * i] = (uint8_t)(i * 5); rows[4 * i + 1] = (uint8_t)(200 - i); rows[4 * i + 2] = (uint8_t)(i * 3 + 7);
        rows[4 * i + 3] = (uint8_t)(i % 3 == 0 ? 0 : 128);
    }
    T_EQ_INT(decode_mem(&im, write_png(W, H, PNG_COLOR_TYPE_RGBA, 8, rows, W * 4, NULL, 0, 0), &e), 0);
    T_ASSERT(im.w == W && im.h == H);
    int bad = 0;
    for (int i = 0; i < W * H; i++)
        for (int c = 0; c < 3; c++) bad += im.rgb[3 * i + c] != rows[4 * i + c];
    T_EQ_INT(bad, 0);
    image_free(&im);
    /* grey 16: Pillow opens it as mode I and I->RGB clips: min(v, 255) (NOT v >> 8) */
    uint16_t g16[W * H];
    for (int i = 0; i < W * H; i++) {
        g16[i] = (uint16_t)(i * 1499 % 65536);
        rows[2 * i] = (uint8_t)(g16[i] >> 8); rows[2 * i + 1] = (uint8_t)g16[i];
    }
    T_EQ_INT(decode_mem(&im, write_png(W, H, PNG_COLOR_TYPE_GRAY, 16, rows, W * 2, NULL, 0, 0), &e), 0);
    bad = 0;
    for (int i = 0; i < W * H; i++) {
        int want = g16[i] > 255 ? 255 : g16[i];
        bad += im.rgb[3 * i] != want || im.rgb[3 * i + 1] != want || im.rgb[3 * i + 2] != want;
    }
    T_EQ_INT(bad, 0);
    T_EQ_INT(im.rgb[0], 0);   /* g16[0] = 0 */
    T_EQ_INT(im.rgb[3], 255); /* g16[1] = 1499 -> 255 */
    image_free(&im);
    /* RGB 16 and grey+alpha 16: the high byte (Pillow's "RGB;16B" / "LA;16B") */
    for (int i = 0; i < W * H * 3; i++) { rows[2 * i] = (uint8_t)(i * 7); rows[2 * i + 1] = (uint8_t)(i * 13 + 200); }
    T_EQ_INT(decode_mem(&im, write_png(W, H, PNG_COLOR_TYPE_RGB, 16, rows, W * 6, NULL, 0, 0), &e), 0);
    bad = 0;
    for (int i = 0; i < W * H * 3; i++) bad += im.rgb[i] != rows[2 * i];
    T_EQ_INT(bad, 0);
    image_free(&im);
    T_EQ_INT(decode_mem(&im, write_png(W, H, PNG_COLOR_TYPE_GRAY_ALPHA, 16, rows, W * 4, NULL, 0, 0), &e), 0);
    bad = 0;
    for (int i = 0; i < W * H; i++) bad += im.rgb[3 * i] != rows[4 * i] || im.rgb[3 * i + 2] != rows[4 * i];
    T_EQ_INT(bad, 0);
    image_free(&im);
    /* grey 2-bit: values 0..3 scale to 0, 85, 170, 255 ("L;2") */
    memset(rows, 0, sizeof rows);
    size_t rb2 = (W * 2 + 7) / 8;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) rows[y * rb2 + x / 4] |= (uint8_t)(((x + y) & 3) << (6 - 2 * (x % 4)));
    T_EQ_INT(decode_mem(&im, write_png(W, H, PNG_COLOR_TYPE_GRAY, 2, rows, rb2, NULL, 0, 0), &e), 0);
    bad = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) bad += im.rgb[(y * W + x) * 3 + 1] != ((x + y) & 3) * 85;
    T_EQ_INT(bad, 0);
    image_free(&im);
    /* palette 4-bit through a 5-entry palette */
    png_color pal[5] = {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {10, 20, 30}, {250, 240, 230}};
    size_t rb4 = (W * 4 + 7) / 8;
    memset(rows, 0, sizeof rows);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) rows[y * rb4 + x / 2] |= (uint8_t)(((x * 3 + y) % 5) << (4 - 4 * (x % 2)));
    T_EQ_INT(decode_mem(&im, write_png(W, H, PNG_COLOR_TYPE_PALETTE, 4, rows, rb4, pal, 5, 0), &e), 0);
    bad = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            const png_color *p = &pal[(x * 3 + y) % 5];
            const uint8_t *d = im.rgb + (y * W + x) * 3;
            bad += d[0] != p->red || d[1] != p->green || d[2] != p->blue;
        }
    T_EQ_INT(bad, 0);
    image_free(&im);
    /* interlaced RGB 8 */
    for (int i = 0; i < W * H * 3; i++) rows[i] = (uint8_t)(i * 31 + 5);
    T_EQ_INT(decode_mem(&im, write_png(W, H, PNG_COLOR_TYPE_RGB, 8, rows, W * 3, NULL, 0, 1), &e), 0);
    T_ASSERT(im.rgb && memcmp(im.rgb, rows, W * H * 3) == 0);
    image_free(&im);
}

/* The JPEG decoder (libjpeg's scanline API) against TurboJPEG's tjDecompress2, the call it replaced (the same
 * library's defaults behind another API): 4:2:0, 4:2:2, 4:4:4, grayscale, progressive and a restart
 * interval, odd sizes; bit for bit, synchronously and through image_decode_async with the rows waited
 * for in uneven steps. A truncated file fails in image_wait_rows with the decode's message, and an
 * image freed while its decode runs stops it (ASan sees no leak). */
static void test_jpeg_rows(void)
{
    struct { int w, h, samp, flags, gray; } cs[] = {
        {333, 251, TJSAMP_420, 0, 0}, {640, 480, TJSAMP_422, 0, 0}, {97, 1203, TJSAMP_444, 0, 0},
        {301, 177, TJSAMP_GRAY, 0, 1}, {517, 389, TJSAMP_420, TJFLAG_PROGRESSIVE, 0}, {1344, 1344, TJSAMP_420, 0, 0}};
    tjhandle td = tjInitDecompress();
    for (size_t t = 0; t < sizeof cs / sizeof cs[0]; t++) {
        tjhandle tc = tjInitCompress(); /* a fresh one: TurboJPEG 2.1.5 carries a progressive setting over */
        struct image src = {0}, a = {0}, b = {0};
        struct err e;
        T_EQ_INT(gen_image(&src, cs[t].w, cs[t].h, 60 + (uint32_t)t), 0);
        unsigned char *jpg = NULL;
        unsigned long jn = 0;
        T_EQ_INT(tjCompress2(tc, src.rgb, cs[t].w, 0, cs[t].h, TJPF_RGB, &jpg, &jn, cs[t].samp, 87, cs[t].flags), 0);
        const size_t bytes = (size_t)cs[t].w * cs[t].h * 3;
        uint8_t *ref = malloc(bytes);
        T_ASSERTF(tjDecompress2(td, jpg, jn, ref, cs[t].w, 0, cs[t].h, TJPF_RGB, TJFLAG_ACCURATEDCT) == 0, "case %zu: %s", t,
                  tjGetErrorStr2(td));
        T_EQ_INT(image_decode(&a, jpg, jn, NULL, &e), 0);
        T_ASSERTF(a.w == cs[t].w && a.h == cs[t].h && memcmp(a.rgb, ref, bytes) == 0,
                  "case %zu (%dx%d): image_decode differs from tjDecompress2", t, cs[t].w, cs[t].h);
        T_EQ_INT(image_decode_async(&b, jpg, jn, NULL, &e), 0);
        T_ASSERT(b.w == cs[t].w && b.h == cs[t].h && b.rows != NULL);
        int bad = 0;
        for (int rows = 1; rows < b.h + 40; rows += 1 + (rows * 7) % 53) {
            const int r = rows < b.h ? rows : b.h;
            T_EQ_INT(image_wait_rows(&b, r, &e), 0);
            bad += memcmp(b.rgb, ref, (size_t)r * cs[t].w * 3) != 0; /* the promised rows are final */
        }
        T_EQ_INT(image_wait_rows(&b, b.h, &e), 0);
        T_ASSERTF(bad == 0 && memcmp(b.rgb, ref, bytes) == 0, "case %zu: image_decode_async differs", t);
        T_EQ_INT(image_threads_beside(&b, 1, 7), 7); /* its decode is over */
        image_free(&b);
        T_ASSERT(b.rows == NULL && b.rgb == NULL);
        if (t == 5) { /* freed at once, while its decode runs */
            T_EQ_INT(image_decode_async(&b, jpg, jn, NULL, &e), 0);
            image_free(&b);
            /* truncated: the header passes, the rows fail */
            T_EQ_INT(image_decode_async(&b, jpg, jn / 2, NULL, &e), 0);
            T_EQ_INT(image_wait_rows(&b, 1, &e), 0);
            e.msg[0] = 0;
            T_EQ_INT(image_wait_rows(&b, b.h, &e), -1);
            T_CONTAINS(e.msg, "truncated");
            /* work beside it: a quarter while rows are still to come, at most one fewer per such image, at least 1 */
            struct image two[2] = {a, b}, bb[2] = {b, b};
            T_EQ_INT(image_threads_beside(&a, 1, 16), 16); /* decoded whole */
            T_EQ_INT(image_threads_beside(&b, 1, 16), 4);  /* a quarter beside a decode */
            T_EQ_INT(image_threads_beside(two, 2, 16), 4);
            T_EQ_INT(image_threads_beside(&b, 1, 4), 1);
            T_EQ_INT(image_threads_beside(bb, 2, 6), 1);
            T_EQ_INT(image_threads_beside(&b, 1, 1), 1);
            T_EQ_INT(image_threads_beside(&b, 1, 0), 1);
            image_free(&b);
        }
        free(ref);
        tjFree(jpg);
        tjDestroy(tc);
        image_free(&a);
        image_free(&src);
    }
    /* not a JPEG: decoded whole before image_decode_async returns */
    struct image src = {0}, b = {0};
    struct err e;
    T_EQ_INT(gen_image(&src, 31, 17, 9), 0);
    T_EQ_INT(image_decode_async(&b, (const uint8_t *)"GIF89a....", 10, NULL, &e), -1);
    T_CONTAINS(e.msg, "GIF");
    T_ASSERT(b.rgb == NULL && b.rows == NULL);
    image_free(&src);
    tjDestroy(td);
}

static void test_jpeg_webp_roundtrip(void)
{
    struct image src = {0}, im = {0};
    struct err e;
    T_EQ_INT(gen_image(&src, 80, 56, 2), 0);
    /* JPEG quality 100, 4:4:4: lossy, so only close */
    tjhandle tj = tjInitCompress();
    unsigned char *jpg = NULL;
    unsigned long jn = 0;
    T_EQ_INT(tjCompress2(tj, src.rgb, 80, 0, 56, TJPF_RGB, &jpg, &jn, TJSAMP_444, 100, 0), 0);
    T_EQ_INT(image_detect(jpg, jn), IMAGE_FORMAT_JPEG);
    T_EQ_INT(image_decode(&im, jpg, jn, NULL, &e), 0);
    T_ASSERT(im.w == 80 && im.h == 56);
    double err = 0;
    for (int i = 0; i < 80 * 56 * 3; i++) err += fabs((double)im.rgb[i] - src.rgb[i]);
    T_ASSERTF(err / (80 * 56 * 3) < 3.0, "mean abs error %g", err / (80 * 56 * 3));
    image_free(&im);
    /* truncated JPEG: a clear error, as Pillow's "image file is truncated" */
    T_EQ_INT(image_decode(&im, jpg, jn / 2, NULL, &e), -1);
    T_CONTAINS(e.msg, "JPEG");
    T_ASSERT(im.rgb == NULL);
    /* a 30000x30000 header: patch SOF0's height and width, refused before any allocation */
    unsigned char *big = malloc(jn);
    memcpy(big, jpg, jn);
    for (unsigned long i = 2; i + 9 < jn; i++)
        if (big[i] == 0xFF && (big[i + 1] == 0xC0 || big[i + 1] == 0xC1)) {
            big[i + 5] = 30000 >> 8; big[i + 6] = 30000 & 255; big[i + 7] = 30000 >> 8; big[i + 8] = 30000 & 255;
            break;
        }
    T_EQ_INT(image_decode(&im, big, jn, NULL, &e), -1);
    T_CONTAINS(e.msg, "30000x30000");
    T_CONTAINS(e.msg, "limit");
    /* corrupt entropy data: no crash; either a decoded image or one error line */
    memcpy(big, jpg, jn);
    for (unsigned long i = jn / 2; i < jn / 2 + 40 && i < jn - 2; i++) big[i] ^= 0x5A;
    if (image_decode(&im, big, jn, NULL, &e) == 0) { T_ASSERT(im.w == 80); image_free(&im); }
    else T_ASSERT(strchr(e.msg, '\n') == NULL);
    free(big);
    tjFree(jpg);
    tjDestroy(tj);
    /* lossless WebP: exact */
    uint8_t *wp = NULL;
    size_t wn = WebPEncodeLosslessRGB(src.rgb, 80, 56, 80 * 3, &wp);
    T_ASSERT(wn > 0);
    T_EQ_INT(image_detect(wp, wn), IMAGE_FORMAT_WEBP);
    T_EQ_INT(image_decode(&im, wp, wn, NULL, &e), 0);
    T_ASSERT(im.rgb && memcmp(im.rgb, src.rgb, 80 * 56 * 3) == 0);
    image_free(&im);
    T_EQ_INT(image_decode(&im, wp, wn - 7, NULL, &e), -1);
    T_CONTAINS(e.msg, "WebP");
    WebPFree(wp);
    image_free(&src);
}

static uint32_t crc32_png(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
    }
    return ~c;
}

/* A PNG signature and an IHDR chunk with a valid CRC, then nothing (or a tiny IDAT). */
static size_t png_header_only(uint8_t *out, uint32_t w, uint32_t h)
{
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    memcpy(out, sig, 8);
    uint8_t *c = out + 8;
    c[0] = 0; c[1] = 0; c[2] = 0; c[3] = 13;
    memcpy(c + 4, "IHDR", 4);
    for (int i = 0; i < 4; i++) { c[8 + i] = (uint8_t)(w >> (24 - 8 * i)); c[12 + i] = (uint8_t)(h >> (24 - 8 * i)); }
    c[16] = 8; c[17] = 2; c[18] = 0; c[19] = 0; c[20] = 0;
    uint32_t crc = crc32_png(c + 4, 17);
    for (int i = 0; i < 4; i++) c[21 + i] = (uint8_t)(crc >> (24 - 8 * i));
    return 8 + 25;
}

static void test_bad_inputs(void)
{
    struct image im = {0};
    struct err e;
    uint8_t buf[64];
    T_EQ_INT(image_decode(&im, NULL, 0, NULL, &e), -1);
    T_CONTAINS(e.msg, "empty");
    T_EQ_INT(image_decode(&im, (const uint8_t *)"x", 0, NULL, &e), -1);
    T_EQ_INT(image_decode(&im, (const uint8_t *)"\xFF", 1, NULL, &e), -1);
    T_CONTAINS(e.msg, "not a JPEG");
    T_EQ_INT(image_decode(&im, (const uint8_t *)"hello, world, not an image", 26, NULL, &e), -1);
    T_CONTAINS(e.msg, "not a JPEG, PNG or WebP");
    T_EQ_INT(image_decode(&im, (const uint8_t *)"GIF89a\1\0\1\0\0\0\0", 13, NULL, &e), -1);
    T_CONTAINS(e.msg, "GIF is not supported");
    T_EQ_INT(image_decode(&im, (const uint8_t *)"BM\0\0\0\0", 6, NULL, &e), -1);
    T_CONTAINS(e.msg, "BMP");
    T_EQ_INT(image_decode(&im, (const uint8_t *)"\xFF\xD8\xFF", 3, NULL, &e), -1);
    T_CONTAINS(e.msg, "JPEG");
    T_EQ_INT(image_decode(&im, (const uint8_t *)"RIFF\0\0\0\0WEBP", 12, NULL, &e), -1);
    T_CONTAINS(e.msg, "WebP");
    /* PNG: zero-sized, huge, and header-only (truncated) */
    size_t n = png_header_only(buf, 0, 10);
    T_EQ_INT(image_decode(&im, buf, n, NULL, &e), -1);
    T_CONTAINS(e.msg, "PNG");
    n = png_header_only(buf, 30000, 30000);
    T_EQ_INT(image_decode(&im, buf, n, NULL, &e), -1);
    T_CONTAINS(e.msg, "30000x30000");
    n = png_header_only(buf, 16, 16);
    T_EQ_INT(image_decode(&im, buf, n, NULL, &e), -1);
    T_CONTAINS(e.msg, "truncated");
    T_EQ_INT(image_decode(&im, buf, 5, NULL, &e), -1); /* shorter than the signature */
    /* a valid PNG cut short, and one with a corrupted IDAT */
    uint8_t rows[16 * 16 * 3];
    for (int i = 0; i < 16 * 16 * 3; i++) rows[i] = (uint8_t)(i * 37);
    struct membuf m = write_png(16, 16, PNG_COLOR_TYPE_RGB, 8, rows, 48, NULL, 0, 0);
    T_EQ_INT(image_decode(&im, m.p, m.n - 20, NULL, &e), -1);
    T_CONTAINS(e.msg, "PNG");
    m.p[m.n / 2] ^= 0xFF;
    T_EQ_INT(image_decode(&im, m.p, m.n, NULL, &e), -1);
    T_ASSERT(strchr(e.msg, '\n') == NULL);
    m.p[m.n / 2] ^= 0xFF;
    /* limits from the options struct */
    struct image_opts o;
    image_opts_default(&o);
    o.max_file_bytes = 64;
    T_EQ_INT(image_decode(&im, m.p, m.n, &o, &e), -1);
    T_CONTAINS(e.msg, "over the limit");
    image_opts_default(&o);
    o.max_pixels = 255;
    T_EQ_INT(image_decode(&im, m.p, m.n, &o, &e), -1);
    T_CONTAINS(e.msg, "256 pixels");
    o.max_pixels = 256;
    T_EQ_INT(image_decode(&im, m.p, m.n, &o, &e), 0);
    image_free(&im);
    free(m.p);
    /* missing file */
    T_EQ_INT(image_load(&im, "/nonexistent/x.png", NULL, &e), -1);
    T_CONTAINS(e.msg, "/nonexistent/x.png");
    /* the path once ("/x.png: /x.png: cannot open" was the old message) */
    const char *first = strstr(e.msg, "/nonexistent/x.png");
    T_ASSERTF(first && !strstr(first + 1, "/nonexistent/x.png"), "path named twice: %s", e.msg);
    image_free(&im);
}

/* Peak resident memory of a child that decodes `png` (KiB), or -1; the child exits 0 when the decode
 * failed with a message naming `needle`. */
static long decode_in_child(const uint8_t *png, size_t n, const char *needle, int *named)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        struct image im = {0};
        struct err e = {{0}};
        int rc = image_decode(&im, png, n, NULL, &e);
        image_free(&im);
        _exit(rc == -1 && strstr(e.msg, needle) ? 0 : 1);
    }
    int st = 0;
    struct rusage ru;
    if (pid < 0 || wait4(pid, &st, 0, &ru) != pid) return -1;
    *named = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    return ru.ru_maxrss;
}

static long self_rss_kib(void)
{
    long kb = -1;
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = atol(line + 6);
    if (f) fclose(f);
    return kb;
}

/* A 44-byte PNG whose chunk declares 0x7ffffff0 bytes once made libpng allocate and zero 2 GB (text
 * chunks) before the decode failed. Now each is refused by name, in bounded memory. Also a real zTXt
 * chunk that inflates to 32 MB rides along a valid image: the pixels decode, the text is skipped. */
static void test_png_chunk_bombs(void)
{
    static const char *types[] = {"tEXt", "zTXt", "iTXt", "iCCP", "eXIf", "IDAT", "abCd"};
    for (size_t t = 0; t < sizeof types / sizeof *types; t++) {
        uint8_t b[64];
        size_t n = png_header_only(b, 16, 16);
        b[n] = 0x7f; b[n + 1] = 0xff; b[n + 2] = 0xff; b[n + 3] = 0xf0;
        memcpy(b + n + 4, types[t], 4);
        memcpy(b + n + 8, "abc", 3);
        n += 11;
        T_EQ_INT(n, 44);
        int named = 0;
        long base = self_rss_kib(), peak = decode_in_child(b, n, types[t], &named);
        T_ASSERTF(named, "chunk %s: not refused by name", types[t]);
        T_ASSERTF(peak >= 0 && peak - base < 200 * 1024, "chunk %s: child peak %ld KiB, parent %ld KiB", types[t], peak, base);
    }
    /* a zTXt bomb inside an otherwise valid file */
    enum { W = 16, H = 16 };
    uint8_t rows[W * H * 3];
    for (int i = 0; i < W * H * 3; i++) rows[i] = (uint8_t)(i * 29 + 3);
    struct membuf m = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    size_t tn = (size_t)32 << 20;
    char *text = malloc(tn + 1);
    T_ASSERT(png && info && text);
    if (!png || !info || !text || setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(text);
        free(m.p);
        return;
    }
    memset(text, 'a', tn);
    text[tn] = 0;
    png_set_write_fn(png, &m, mb_write, mb_flush);
    png_set_IHDR(png, info, W, H, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_text tx = {.compression = PNG_TEXT_COMPRESSION_zTXt, .key = "Comment", .text = text, .text_length = tn};
    png_set_text(png, info, &tx, 1);
    png_write_info(png, info);
    for (int y = 0; y < H; y++) png_write_row(png, rows + y * W * 3);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(text);
    T_ASSERTF(m.n < 200000, "zTXt PNG of %zu bytes", m.n);
    struct image im = {0};
    struct err e = {{0}};
    double t0 = time_now();
    T_EQ_INT(image_decode(&im, m.p, m.n, NULL, &e), 0);
    T_ASSERTF(time_now() - t0 < 0.5, "%.2f s for a 16x16 PNG with a zTXt bomb", time_now() - t0);
    T_ASSERT(im.rgb && im.w == W && im.h == H && !memcmp(im.rgb, rows, sizeof rows));
    image_free(&im);
    free(m.p);
}

/* ------------------------------------------------------------------ Pillow fixture */

static int load_source(struct image *im, const char *src, struct err *e)
{
    int W, H;
    unsigned seed;
    if (sscanf(src, "gen:%d:%d:%u", &W, &H, &seed) == 3) return gen_image(im, W, H, seed) ? err_set(e, "gen") : 0;
    if (strncmp(src, "file:", 5) == 0) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", FIXDIR, src + 5);
        return image_load(im, path, NULL, e);
    }
    return err_set(e, "bad source %s", src);
}

static void sha_img(const struct image *im, char out[65]) { sha_of(im->rgb, (size_t)im->w * im->h * 3, out); }

static void compare_raw(const char *raw, const struct image *im, const char *what)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", FIXDIR, raw);
    char *buf = NULL;
    size_t n = 0;
    struct err e;
    if (read_file(path, 64 << 20, &buf, &n, &e)) { T_ASSERTF(0, "%s", e.msg); return; }
    size_t want = (size_t)im->w * im->h * 3;
    T_ASSERTF(n == want, "%s: raw has %zu bytes, want %zu", what, n, want);
    if (n == want) {
        int maxd = 0, bad = 0, first = -1;
        for (size_t i = 0; i < n; i++) {
            int d = abs((int)(uint8_t)buf[i] - im->rgb[i]);
            if (d) { bad++; if (first < 0) first = (int)i; }
            if (d > maxd) maxd = d;
        }
        T_ASSERTF(bad == 0, "%s: %d samples differ from Pillow (max %d, first at pixel %d)", what, bad, maxd,
                  first / 3);
    }
    free(buf);
}

static void test_pillow_fixture(void)
{
    FILE *f = fopen(FIXDIR "/manifest.txt", "r");
    /* committed: a missing manifest is a failure, not a skip */
    T_ASSERTF(f != NULL, "no %s/manifest.txt (tools/ref_image.py writes it where Pillow is)", FIXDIR);
    if (!f) return;
    char line[1024], cur_src[256] = "";
    struct image src = {0}, pieces[10] = {{0}};
    struct image_pieces packed = {0};
    int n_pieces = 0, checked = 0;
    struct preprocessor_config cfg = default_cfg();
    struct err e;
    while (fgets(line, sizeof line, f)) {
        char a[256], b[256], c[256], d[256];
        int x, y, z, w;
        if (line[0] == '#' || line[0] == '\n') continue;
        if (sscanf(line, "decode %255s %d %d %64s %255s", a, &x, &y, b, c) >= 4) {
            struct image im = {0};
            char s[65];
            int rc = load_source(&im, a, &e);
            T_ASSERTF(rc == 0, "%s: %s", a, e.msg);
            if (rc) continue;
            sha_img(&im, s);
            T_ASSERTF(im.w == x && im.h == y && strcmp(s, b) == 0, "decode %s: %dx%d %s, Pillow %dx%d %s", a, im.w, im.h,
                      s, x, y, b);
            if (sscanf(line, "decode %*s %*d %*d %*s raw %255s", c) == 1 && im.w == x && im.h == y) compare_raw(c, &im, a);
            image_free(&im);
            checked++;
        } else if (sscanf(line, "pipeline %255s %d %d %d", a, &x, &y, &z) == 4) {
            for (int i = 0; i < n_pieces; i++) image_free(&pieces[i]);
            image_pieces_free(&packed);
            n_pieces = 0;
            image_free(&src);
            snprintf(cur_src, sizeof cur_src, "%s", a);
            if (load_source(&src, a, &e)) { T_ASSERTF(0, "%s: %s", a, e.msg); cur_src[0] = 0; continue; }
            struct image_slice_plan plan;
            T_EQ_INT(image_slice_pixels(pieces, &n_pieces, &plan, &src, &cfg, 0, &e), 0);
            T_ASSERTF(plan.cols == x && plan.rows == y && n_pieces == z, "%s: grid %dx%d %d pieces, Pillow %dx%d %d",
                      a, plan.cols, plan.rows, n_pieces, x, y, z);
            T_EQ_INT(image_preprocess(&packed, &src, &cfg, 0, &e), 0);
            checked++;
        } else if (sscanf(line, "piece %d %d %d %64s %64s", &x, &y, &z, a, b) == 5) {
            if (!cur_src[0] || x >= n_pieces || x >= packed.n) { T_ASSERTF(0, "%s: no piece %d", cur_src, x); continue; }
            char s[65], s2[65];
            sha_img(&pieces[x], s);
            T_ASSERTF(pieces[x].w == y && pieces[x].h == z && strcmp(s, a) == 0, "%s piece %d: %dx%d %s, Pillow %dx%d %s",
                      cur_src, x, pieces[x].w, pieces[x].h, s, y, z, a);
            sha_of(packed.p[x].patches, sizeof(float) * (size_t)packed.p[x].n_patches * packed.patch_dim, s2);
            T_ASSERTF(strcmp(s2, b) == 0, "%s piece %d: packed float32 patches differ from numpy", cur_src, x);
            if (sscanf(line, "piece %*d %*d %*d %*s %*s raw %255s", c) == 1) compare_raw(c, &pieces[x], cur_src);
            checked++;
        } else if (sscanf(line, "resize %255s %d %d %64s", a, &x, &y, b) == 4) {
            struct image im = {0}, out = {0};
            char s[65];
            if (load_source(&im, a, &e)) { T_ASSERTF(0, "%s: %s", a, e.msg); continue; }
            T_EQ_INT(image_resize_bicubic(&out, &im, x, y, 0, &e), 0);
            sha_img(&out, s);
            T_ASSERTF(strcmp(s, b) == 0, "resize %s -> %dx%d differs from Pillow", a, x, y);
            if (sscanf(line, "resize %*s %*d %*d %*s raw %255s", c) == 1) compare_raw(c, &out, a);
            image_free(&im);
            image_free(&out);
            checked++;
        } else if (sscanf(line, "gen %d %d %d %64s", &x, &y, &w, a) == 4) {
            struct image im = {0};
            char s[65];
            gen_image(&im, x, y, (uint32_t)w);
            sha_img(&im, s);
            T_ASSERTF(strcmp(s, a) == 0, "generator %dx%d seed %d differs from tools/ref_image.py", x, y, w);
            image_free(&im);
            checked++;
        } else if (sscanf(line, "pillow %255s", d) == 1) {
            fprintf(stderr, "  fixture written with Pillow %s\n", d);
        } else if (sscanf(line, "bench_pillow_ms %255s", d) == 1) {
            fprintf(stderr, "  Pillow preprocessing of a 1344x1344 JPEG on the fixture machine: %s ms\n", d);
        }
    }
    fclose(f);
    for (int i = 0; i < n_pieces; i++) image_free(&pieces[i]);
    image_pieces_free(&packed);
    image_free(&src);
    fprintf(stderr, "  %d fixture entries checked\n", checked);
    T_ASSERT(checked > 0);
}

/* ------------------------------------------------------------------ timing */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median wall time of decode + preprocess of an encoded image, in ms. */
static double bench_bytes(const uint8_t *data, size_t n, int reps)
{
    double t[32];
    struct preprocessor_config cfg = default_cfg();
    if (reps > 32) reps = 32;
    for (int r = 0; r < reps; r++) {
        struct image im = {0};
        struct image_pieces ps;
        struct err e;
        double t0 = time_now();
        if (image_decode(&im, data, n, NULL, &e) || image_preprocess(&ps, &im, &cfg, 0, &e)) {
            fprintf(stderr, "bench: %s\n", e.msg);
            image_free(&im);
            return -1;
        }
        t[r] = (time_now() - t0) * 1e3;
        image_pieces_free(&ps);
        image_free(&im);
    }
    qsort(t, (size_t)reps, sizeof t[0], cmp_double);
    return t[reps / 2];
}

static double bench_1344(int reps)
{
    struct image src = {0};
    if (gen_image(&src, 1344, 1344, 7)) return -1;
    tjhandle tj = tjInitCompress();
    unsigned char *jpg = NULL;
    unsigned long jn = 0;
    double ms = -1;
    if (tjCompress2(tj, src.rgb, 1344, 0, 1344, TJPF_RGB, &jpg, &jn, TJSAMP_420, 90, 0) == 0)
        ms = bench_bytes(jpg, jn, reps);
    tjFree(jpg);
    tjDestroy(tj);
    image_free(&src);
    return ms;
}

static void test_bench_smoke(void)
{
    double ms = bench_1344(3);
    T_ASSERT(ms > 0);
    fprintf(stderr, "  decode+slice+resize+normalize of a 1344x1344 q90 JPEG: %.1f ms (median of 3)\n", ms);
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "--bench") == 0) {
        if (argc >= 3) {
            char *buf = NULL;
            size_t n = 0;
            struct err e;
            if (read_file(argv[2], 64 << 20, &buf, &n, &e)) { fprintf(stderr, "%s\n", e.msg); return 1; }
            printf("%s: %.2f ms (median of 15)\n", argv[2], bench_bytes((uint8_t *)buf, n, 15));
            free(buf);
        } else {
            printf("1344x1344 q90 JPEG: %.2f ms (median of 15)\n", bench_1344(15));
        }
        return 0;
    }
    T_RUN(test_sha256);
    T_RUN(test_rounding);
    T_RUN(test_slice_spec_table);
    T_RUN(test_slice_extra);
    T_RUN(test_resize_hand);
    T_RUN(test_resize_identity_constant);
    T_RUN(test_resize_vs_reference);
    T_RUN(test_resize_steps);
    T_RUN(test_crop);
    T_RUN(test_pack);
    T_RUN(test_preprocess_640x480);
    T_RUN(test_prep_pieces);
    T_RUN(test_png_modes);
    T_RUN(test_jpeg_webp_roundtrip);
    T_RUN(test_jpeg_rows);
    T_RUN(test_bad_inputs);
    T_RUN(test_png_chunk_bombs);
    T_RUN(test_pillow_fixture);
    T_RUN(test_bench_smoke);
    return t_main_end("test_image");
}
