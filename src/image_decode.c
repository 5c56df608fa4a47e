/* image_decode.c: JPEG (libjpeg-turbo's scanline API), PNG (libpng, low-level API) and WebP (libwebp) decoding
 * from memory into interleaved RGB, matching Pillow's Image.open(...).convert("RGB").
 * Owns: format detection by magic bytes, the size/pixel limits, the colour conversions Pillow applies.
 * Does not own: resizing, slicing (image_resize.c, image_slice.c).
 * Invariant: the header is parsed and w, h checked against the limits before pixels are allocated;
 * every failure is one line naming the format and the value that was refused. */
#include "image.h"

#include <limits.h>
#include <png.h>
#include <setjmp.h>
#include <string.h>
#include <stdio.h> /* before jpeglib.h, which uses FILE */
#include <jpeglib.h>
#include <jerror.h>
#include <pthread.h>
#include <webp/decode.h>

void image_opts_default(struct image_opts *o)
{
    o->max_file_bytes = (size_t)64 << 20;
    o->max_pixels = 100000000;
    o->n_threads = 0;
}

static void rows_stop(struct image_rows *r);

void image_free(struct image *im)
{
    if (!im) return;
    if (im->rows) rows_stop(im->rows); /* the decode thread writes rgb until it is joined */
    im->rows = NULL;
    free(im->rgb);
    im->rgb = NULL;
    im->w = im->h = 0;
}

enum image_format image_detect(const uint8_t *d, size_t n)
{
    if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) return IMAGE_FORMAT_JPEG;
    if (n >= 8 && memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0) return IMAGE_FORMAT_PNG;
    if (n >= 12 && memcmp(d, "RIFF", 4) == 0 && memcmp(d + 8, "WEBP", 4) == 0) return IMAGE_FORMAT_WEBP;
    if (n >= 6 && (memcmp(d, "GIF87a", 6) == 0 || memcmp(d, "GIF89a", 6) == 0)) return IMAGE_FORMAT_GIF;
    if (n >= 2 && d[0] == 'B' && d[1] == 'M') return IMAGE_FORMAT_BMP;
    if (n >= 4 && (memcmp(d, "II*\0", 4) == 0 || memcmp(d, "MM\0*", 4) == 0)) return IMAGE_FORMAT_TIFF;
    return IMAGE_FORMAT_UNKNOWN;
}

const char *image_format_name(enum image_format f)
{
    switch (f) {
    case IMAGE_FORMAT_JPEG: return "JPEG";
    case IMAGE_FORMAT_PNG: return "PNG";
    case IMAGE_FORMAT_WEBP: return "WebP";
    case IMAGE_FORMAT_GIF: return "GIF";
    case IMAGE_FORMAT_BMP: return "BMP";
    case IMAGE_FORMAT_TIFF: return "TIFF";
    default: return "unknown";
    }
}

/* The one place where header dimensions meet the limits. Runs before any pixel allocation. */
static int check_dims(const char *fmt, int64_t w, int64_t h, const struct image_opts *o, struct err *e)
{
    if (w <= 0 || h <= 0) return err_set(e, "%s: invalid image size %lldx%lld", fmt, (long long)w, (long long)h);
    /* the sides first: their product is computed only once it cannot overflow (fuzz_request found a PNG
     * header of 4226793211x4022270959, whose product overflowed in the message) */
    if (w > (1 << 24) || h > (1 << 24))
        return err_set(e, "%s: image %lldx%lld is over the limit of %d pixels a side", fmt, (long long)w, (long long)h,
                       1 << 24);
    if (w * h > o->max_pixels)
        return err_set(e, "%s: image %lldx%lld has %lld pixels, over the limit of %lld", fmt, (long long)w,
                       (long long)h, (long long)(w * h), (long long)o->max_pixels);
    return 0;
}

/* ---------------------------------------------------------------- JPEG */

/* Pillow decodes JPEG with libjpeg(-turbo) defaults: JDCT_ISLOW, fancy upsampling, block smoothing,
 * output RGB for 3 components, L for 1 (replicated by convert("RGB")), and CMYK for 4 components,
 * which it always treats as Adobe-inverted ("CMYK;I", no marker test) and converts with
 * cmyk2rgb: nk = 255 - k; out = clip(nk - muldiv255(c, nk)). TurboJPEG's defaults are the same
 * libjpeg defaults; islow is stated explicitly below. */
static inline int muldiv255(int a, int b)
{
    int t = a * b + 128;
    return ((t >> 8) + t) >> 8;
}

/* libjpeg's scanline API (the library TurboJPEG wraps, with the same defaults: islow IDCT, fancy
 * upsampling, block smoothing), so rows come out as they are decoded: image_decode_async publishes
 * them while the rest of the file decodes. TurboJPEG's guards are kept: at most 500 scans of a
 * progressive file (TJFLAG_LIMITSCANS); warnings other than the end of the data are ignored, as
 * Pillow does, and a truncated file is an error ("image file is truncated" in Pillow). */
struct jpeg_dec {
    struct jpeg_decompress_struct ci;
    struct jpeg_error_mgr jerr;
    struct jpeg_progress_mgr prog;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
    int truncated, cmyk, created;
};

static void jpeg_on_error(j_common_ptr c)
{
    struct jpeg_dec *d = (struct jpeg_dec *)c->client_data;
    c->err->format_message(c, d->msg);
    longjmp(d->jb, 1);
}

static void jpeg_on_message(j_common_ptr c, int level)
{
    struct jpeg_dec *d = (struct jpeg_dec *)c->client_data;
    if (level < 0 && c->err->msg_code == JWRN_JPEG_EOF) d->truncated = 1;
}

static void jpeg_on_progress(j_common_ptr c)
{
    struct jpeg_dec *d = (struct jpeg_dec *)c->client_data;
    if (d->ci.progressive_mode && d->ci.input_scan_number > 500) {
        snprintf(d->msg, sizeof d->msg, "progressive JPEG image has more than 500 scans");
        longjmp(d->jb, 1);
    }
}

/* Reads and checks the header: d->ci.image_width x image_height, ready for jpeg_decode_rows. */
static int jpeg_open(struct jpeg_dec *d, const uint8_t *data, size_t n, const struct image_opts *o, struct err *e)
{
    memset(d, 0, sizeof *d);
    if (n > ULONG_MAX) return err_set(e, "JPEG: file too large");
    d->ci.err = jpeg_std_error(&d->jerr);
    d->jerr.error_exit = jpeg_on_error;
    d->jerr.emit_message = jpeg_on_message;
    d->ci.client_data = d;
    if (setjmp(d->jb)) return err_set(e, "JPEG: bad header: %s", d->msg);
    jpeg_create_decompress(&d->ci);
    d->created = 1;
    d->prog.progress_monitor = jpeg_on_progress;
    d->ci.progress = &d->prog;
    jpeg_mem_src(&d->ci, data, (unsigned long)n);
    jpeg_read_header(&d->ci, TRUE);
    if (check_dims("JPEG", d->ci.image_width, d->ci.image_height, o, e)) return -1;
    d->cmyk = d->ci.jpeg_color_space == JCS_CMYK || d->ci.jpeg_color_space == JCS_YCCK;
    d->ci.out_color_space = d->cmyk ? JCS_CMYK : JCS_EXT_RGB;
    d->ci.dct_method = JDCT_ISLOW;
    return 0;
}

static void jpeg_close(struct jpeg_dec *d)
{
    if (d->created) jpeg_destroy_decompress(&d->ci);
    d->created = 0;
}

/* Decodes every row into rgb (w*h*3, the caller's), calling rows_done(ctx, r) after each batch of rows
 * [0, r) is final; a non-zero return stops the decode (-1, "stopped"). */
static int jpeg_decode_rows(struct jpeg_dec *d, uint8_t *rgb, int (*rows_done)(void *ctx, int rows), void *ctx,
                            struct err *e)
{
    const size_t w = d->ci.image_width;
    uint8_t *volatile cmyk = NULL;
    if (setjmp(d->jb)) {
        free(cmyk);
        return err_set(e, "JPEG: corrupt data: %s", d->msg);
    }
    jpeg_start_decompress(&d->ci);
    enum { BATCH = 16 };
    if (d->cmyk && !(cmyk = malloc(w * 4 * BATCH))) return err_set(e, "JPEG: out of memory for CMYK rows");
    while (d->ci.output_scanline < d->ci.output_height) {
        const JDIMENSION y0 = d->ci.output_scanline;
        JSAMPROW rows[BATCH];
        for (int i = 0; i < BATCH; i++) rows[i] = cmyk ? cmyk + (size_t)i * w * 4 : rgb + (size_t)(y0 + i) * w * 3;
        const JDIMENSION left = d->ci.output_height - y0, want = left < BATCH ? left : BATCH;
        JDIMENSION got = 0;
        while (got < want) {
            const JDIMENSION r = jpeg_read_scanlines(&d->ci, rows + got, want - got);
            if (!r) { /* a memory source never suspends: no rows is a broken stream, not a wait */
                free(cmyk);
                return err_set(e, "JPEG: corrupt data: no rows after row %u", (unsigned)(y0 + got));
            }
            got += r;
        }
        if (cmyk) /* Pillow's Adobe-inverted CMYK ("CMYK;I") through cmyk2rgb */
            for (size_t i = 0; i < (size_t)got * w; i++) {
                const uint8_t *px = cmyk + 4 * i;
                uint8_t *out = rgb + ((size_t)y0 * w + i) * 3;
                int nk = px[3]; /* inverted K: 255 - (255 - k) */
                for (int c = 0; c < 3; c++) {
                    int v = nk - muldiv255(255 - px[c], nk);
                    out[c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
                }
            }
        if (d->truncated) break;
        if (rows_done && rows_done(ctx, (int)d->ci.output_scanline)) {
            free(cmyk);
            return err_set(e, "JPEG: decode stopped");
        }
    }
    if (!d->truncated) jpeg_finish_decompress(&d->ci);
    free(cmyk);
    if (d->truncated) return err_set(e, "JPEG: file is truncated (Premature end of JPEG file)");
    return 0;
}

static int decode_jpeg(struct image *out, const uint8_t *data, size_t n, const struct image_opts *o, struct err *e)
{
    struct jpeg_dec *d = malloc(sizeof *d);
    if (!d) return err_set(e, "JPEG: out of memory");
    int rc = -1;
    if (jpeg_open(d, data, n, o, e)) goto done;
    const int w = (int)d->ci.image_width, h = (int)d->ci.image_height;
    if (!(out->rgb = malloc((size_t)w * (size_t)h * 3))) {
        err_set(e, "JPEG: out of memory for %dx%d", w, h);
        goto done;
    }
    if (jpeg_decode_rows(d, out->rgb, NULL, NULL, e)) goto done;
    out->w = w;
    out->h = h;
    rc = 0;
done:
    jpeg_close(d);
    free(d);
    if (rc) { free(out->rgb); out->rgb = NULL; }
    return rc;
}

/* ---------------------------------------------------------------- PNG */

/* Pillow's PNG modes and their convert("RGB"):
 *   grey 1/2/4/8 bit  -> "1"/"L" scaled to 0..255 (x*255/(2^d-1)), replicated;
 *   grey 16 bit       -> "I" (0..65535); I->RGB CLIPS: min(v, 255). Not a rescale!
 *   grey+alpha 8/16   -> LA / RGBA via "LA;16B": the high byte of L; alpha dropped;
 *   RGB 16, RGBA 16   -> "RGB;16B"/"RGBA;16B": the high byte of each sample;
 *   palette 1..8 bit  -> palette RGB (entries past the palette are black, like libpng's);
 *   RGBA              -> alpha dropped, no compositing.
 * No gamma, sBIT or colour-profile handling (Pillow applies none), so the low-level libpng API is
 * used with only expansion transforms. tRNS is never expanded to alpha. */
struct png_src {
    const uint8_t *data;
    size_t n, pos;
};

struct png_errctx {
    jmp_buf jb;
    char msg[200];
};

static void png_read_mem(png_structp png, png_bytep out, png_size_t len)
{
    struct png_src *s = png_get_io_ptr(png);
    if (len > s->n - s->pos) png_error(png, "file is truncated");
    memcpy(out, s->data + s->pos, len);
    s->pos += len;
}

static void png_on_error(png_structp png, png_const_charp msg)
{
    struct png_errctx *ctx = png_get_error_ptr(png);
    snprintf(ctx->msg, sizeof ctx->msg, "%s", msg);
    longjmp(ctx->jb, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg; /* Pillow does not report libpng-style warnings either */
}

static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

/* Walks the chunk list before libpng sees it: every chunk must fit in what is left of the file.
 * libpng allocates a chunk's declared length before reading it (tEXt/zTXt/iTXt), so a 44-byte file
 * declaring a 2 GB chunk cost 2 GB of zeroed memory before "file is truncated"; the whole file is in
 * memory here, so a length beyond its end is refused by name instead. */
static int png_check_chunks(const uint8_t *data, size_t n, struct err *e)
{
    size_t pos = 8;
    while (n - pos >= 8) {
        uint32_t len = be32(data + pos);
        char type[5];
        for (int i = 0; i < 4; i++) type[i] = (data[pos + 4 + i] >= 0x21 && data[pos + 4 + i] < 0x7f) ? (char)data[pos + 4 + i] : '?';
        type[4] = 0;
        if (len > 0x7fffffffu || (size_t)len + 12 > n - pos)
            return err_set(e, "PNG: chunk '%s' declares %u bytes, but only %zu follow its header (truncated or corrupt file)",
                           type, len, n - pos - 8);
        pos += (size_t)len + 12;
        if (!memcmp(type, "IEND", 4)) break;
    }
    return 0;
}

static int decode_png(struct image *out, const uint8_t *data, size_t n, const struct image_opts *o, struct err *e)
{
    /* IHDR must be the first chunk (signature, length 13, "IHDR", width, height): check the size
     * from it before libpng reads on, so a huge or empty header is refused by name even when the
     * rest of the file is missing. */
    if (n < 24 || memcmp(data + 12, "IHDR", 4) != 0) return err_set(e, "PNG: file is truncated or has no IHDR chunk");
    uint32_t hw = be32(data + 16), hh = be32(data + 20);
    if (check_dims("PNG", hw, hh, o, e)) return -1;
    if (png_check_chunks(data, n, e)) return -1;
    struct png_src src = {data, n, 0};
    struct png_errctx ctx;
    ctx.msg[0] = 0;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &ctx, png_on_error, png_on_warning);
    if (!png) return err_set(e, "PNG: cannot create a libpng reader");
    png_infop info = png_create_info_struct(png);
    /* Written between setjmp and longjmp, so volatile: the buffers to free on error. */
    uint8_t *volatile rowbuf = NULL;
    png_bytep *volatile rows = NULL;
    volatile int ok = 0;
    if (!info) { err_set(e, "PNG: cannot create a libpng info struct"); goto done; }
    if (setjmp(ctx.jb)) {
        err_set(e, "PNG: %s", ctx.msg[0] ? ctx.msg : "decoding failed");
        goto done;
    }
    png_set_read_fn(png, &src, png_read_mem);
    /* libpng checks these in IHDR, before any row is allocated. */
    png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
    png_set_chunk_malloc_max(png, o->max_file_bytes ? o->max_file_bytes : 1);
    /* Text, profile and metadata chunks do not change the pixels (Pillow applies none of them):
     * skip them unread instead of buffering and inflating them; unknown chunks likewise. */
    static const png_byte skip[] = "tEXt\0zTXt\0iTXt\0iCCP\0eXIf\0sPLT\0";
    png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, NULL, 0);
    png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, skip, (int)(sizeof skip / 5));
    png_read_info(png, info);
    png_uint_32 w = 0, h = 0;
    int depth = 0, ctype = 0, interlace = 0;
    png_get_IHDR(png, info, &w, &h, &depth, &ctype, &interlace, NULL, NULL);
    if (check_dims("PNG", w, h, o, e)) goto done;

    if (ctype == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (ctype == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    int grey16 = ctype == PNG_COLOR_TYPE_GRAY && depth == 16;
    if (depth == 16 && !grey16) png_set_strip_16(png); /* keeps the high byte, like "RGB;16B" */
    if (interlace != PNG_INTERLACE_NONE) png_set_interlace_handling(png);
    png_read_update_info(png, info);
    int ch = png_get_channels(png, info);
    int bd = png_get_bit_depth(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    if (ch < 1 || ch > 4 || (bd != 8 && bd != 16) || rowbytes != (size_t)w * ch * (bd / 8)) {
        err_set(e, "PNG: unexpected layout after expansion (%d channels, %d bits)", ch, bd);
        goto done;
    }
    size_t npix = (size_t)w * h;
    out->rgb = malloc(npix * 3);
    rowbuf = malloc(rowbytes * h);
    rows = malloc(sizeof(png_bytep) * h);
    if (!out->rgb || !rowbuf || !rows) { err_set(e, "PNG: out of memory for %ux%u", w, h); goto done; }
    for (png_uint_32 y = 0; y < h; y++) rows[y] = rowbuf + rowbytes * y;
    png_read_image(png, rows);
    png_read_end(png, NULL);

    for (png_uint_32 y = 0; y < h; y++) {
        const uint8_t *s = rows[y];
        uint8_t *d = out->rgb + (size_t)y * w * 3;
        for (png_uint_32 x = 0; x < w; x++, d += 3) {
            if (grey16) { /* big-endian sample; Pillow's I->RGB clips at 255 */
                const uint8_t *p = s + (size_t)x * ch * 2;
                unsigned v = ((unsigned)p[0] << 8) | p[1];
                d[0] = d[1] = d[2] = (uint8_t)(v > 255 ? 255 : v);
            } else if (ch <= 2) {
                d[0] = d[1] = d[2] = s[(size_t)x * ch];
            } else {
                const uint8_t *p = s + (size_t)x * ch;
                d[0] = p[0]; d[1] = p[1]; d[2] = p[2];
            }
        }
    }
    out->w = (int)w;
    out->h = (int)h;
    ok = 1;
done:
    png_destroy_read_struct(&png, info ? &info : NULL, NULL);
    free(rowbuf);
    free(rows);
    if (!ok) { free(out->rgb); out->rgb = NULL; }
    return ok ? 0 : -1;
}

/* ---------------------------------------------------------------- WebP */

/* Pillow decodes WebP through libwebp (WebPAnimDecoder, RGBA, not premultiplied, for still
 * images the key frame is decoded straight into the canvas) and convert("RGB") drops alpha.
 * WebPDecodeRGBInto gives the same RGB samples. Animated files need libwebpdemux: refused. */
static int decode_webp(struct image *out, const uint8_t *data, size_t n, const struct image_opts *o, struct err *e)
{
    WebPBitstreamFeatures f;
    VP8StatusCode st = WebPGetFeatures(data, n, &f);
    if (st != VP8_STATUS_OK) return err_set(e, "WebP: bad header (libwebp status %d)", (int)st);
    if (f.has_animation) return err_set(e, "WebP: animated WebP is not supported");
    if (check_dims("WebP", f.width, f.height, o, e)) return -1;
    size_t stride = (size_t)f.width * 3, size = stride * (size_t)f.height;
    out->rgb = malloc(size);
    if (!out->rgb) return err_set(e, "WebP: out of memory for %dx%d", f.width, f.height);
    if (!WebPDecodeRGBInto(data, n, out->rgb, size, (int)stride)) {
        free(out->rgb);
        out->rgb = NULL;
        return err_set(e, "WebP: corrupt or truncated data");
    }
    out->w = f.width;
    out->h = f.height;
    return 0;
}

/* ---------------------------------------------------------------- entry points */

int image_decode(struct image *out, const uint8_t *data, size_t n, const struct image_opts *o, struct err *e)
{
    struct image_opts def;
    if (!o) { image_opts_default(&def); o = &def; }
    out->w = out->h = 0;
    out->rgb = NULL;
    if (!data || n == 0) return err_set(e, "image: empty input");
    if (n > o->max_file_bytes)
        return err_set(e, "image: %zu bytes, over the limit of %zu", n, o->max_file_bytes);
    enum image_format f = image_detect(data, n);
    switch (f) {
    case IMAGE_FORMAT_JPEG: return decode_jpeg(out, data, n, o, e);
    case IMAGE_FORMAT_PNG: return decode_png(out, data, n, o, e);
    case IMAGE_FORMAT_WEBP: return decode_webp(out, data, n, o, e);
    case IMAGE_FORMAT_UNKNOWN:
        return err_set(e, "image: not a JPEG, PNG or WebP file (first bytes %02x %02x %02x %02x)", data[0],
                       n > 1 ? data[1] : 0, n > 2 ? data[2] : 0, n > 3 ? data[3] : 0);
    default: return err_set(e, "image: %s is not supported (use JPEG, PNG or WebP)", image_format_name(f));
    }
}

/* ---------------------------------------------------------------- decoding on a thread */

/* The state of a decode running on its own thread (image.h: image_decode_async). ready only grows; the
 * thread is joined by image_free (rows_stop), which also asks it to stop early. */
struct image_rows {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int ready, done, stop; /* done with ready < h: the decode failed (err says why) */
    struct err err;
    struct jpeg_dec dec;
    uint8_t *rgb;
};

static int rows_publish(void *ctx, int rows)
{
    struct image_rows *r = ctx;
    pthread_mutex_lock(&r->mu);
    r->ready = rows;
    const int stop = r->stop;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return stop;
}

static void *rows_thread(void *arg)
{
    struct image_rows *r = arg;
    struct err e = {0};
    const int rc = jpeg_decode_rows(&r->dec, r->rgb, rows_publish, r, &e);
    jpeg_close(&r->dec);
    pthread_mutex_lock(&r->mu);
    r->done = 1;
    if (rc) r->err = e;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

static void rows_stop(struct image_rows *r)
{
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->th, NULL);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}

int image_decode_async(struct image *out, const uint8_t *data, size_t n, const struct image_opts *o, struct err *e)
{
    struct image_opts def;
    if (!o) { image_opts_default(&def); o = &def; }
    memset(out, 0, sizeof *out);
    if (!data || n == 0 || n > o->max_file_bytes || image_detect(data, n) != IMAGE_FORMAT_JPEG)
        return image_decode(out, data, n, o, e); /* its checks and messages; whole before it returns */
    struct image_rows *r = calloc(1, sizeof *r);
    if (!r) return err_set(e, "JPEG: out of memory");
    if (jpeg_open(&r->dec, data, n, o, e)) {
        jpeg_close(&r->dec);
        free(r);
        return -1;
    }
    const int w = (int)r->dec.ci.image_width, h = (int)r->dec.ci.image_height;
    if (!(r->rgb = malloc((size_t)w * (size_t)h * 3))) {
        jpeg_close(&r->dec);
        free(r);
        return err_set(e, "JPEG: out of memory for %dx%d", w, h);
    }
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    if (pthread_create(&r->th, NULL, rows_thread, r)) { /* no thread: the whole decode here */
        pthread_mutex_destroy(&r->mu);
        pthread_cond_destroy(&r->cv);
        jpeg_close(&r->dec);
        free(r->rgb);
        free(r);
        return image_decode(out, data, n, o, e);
    }
    *out = (struct image){.w = w, .h = h, .rgb = r->rgb, .rows = r};
    return 0;
}

int image_wait_rows(const struct image *im, int rows, struct err *e)
{
    struct image_rows *r = im->rows;
    if (!r) return 0;
    if (rows > im->h) rows = im->h;
    pthread_mutex_lock(&r->mu);
    while (r->ready < rows && !r->done) pthread_cond_wait(&r->cv, &r->mu);
    const int bad = r->ready < rows; /* done short of them: the decode failed */
    if (bad) *e = r->err;
    pthread_mutex_unlock(&r->mu);
    return bad ? -1 : 0;
}

int image_rows_ready(const struct image *im)
{
    struct image_rows *r = im->rows;
    if (!r) return im->h;
    pthread_mutex_lock(&r->mu);
    const int n = r->ready;
    pthread_mutex_unlock(&r->mu);
    return n;
}

int image_load(struct image *out, const char *path, const struct image_opts *o, struct err *e)
{
    struct image_opts def;
    if (!o) { image_opts_default(&def); o = &def; }
    char *buf = NULL;
    size_t n = 0;
    out->w = out->h = 0;
    out->rgb = NULL;
    if (read_file(path, o->max_file_bytes, &buf, &n, e)) return -1; /* its message names the path */
    int rc = image_decode(out, (const uint8_t *)buf, n, o, e);
    free(buf);
    if (rc) err_prefix(e, "%s", path);
    return rc;
}
