/* image.h: image input for MiniCPM-Llama3-V 2.5 (spec §5, §3.1): decode JPEG/PNG/WebP from memory
 * into interleaved RGB exactly as Pillow's Image.open(...).convert("RGB") does, slice the image
 * (LLaVA-UHD, §5.2), resize with a bit-exact copy of Pillow's BICUBIC filter (§5.3), normalize and
 * pack each piece into [N, 588] patch rows (§5.4, §3.1).
 * Owns: pixels (struct image), the slicing plan, the packed patch matrices (struct image_pieces).
 * Does not own: the vision tower, the placeholder text (chat.h), file paths beyond image_load.
 * Invariants: every struct image returned has w, h >= 1 and w*h*3 bytes of rgb; every error is one
 * line in struct err; limits are checked from the header before any pixel buffer is allocated. */
#ifndef MINICPMV_IMAGE_H
#define MINICPMV_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "config.h"

struct image_rows; /* a decode still running (image_decode_async) */
struct image {
    int w, h;
    uint8_t *rgb;            /* [h][w][3], row-major, no padding */
    struct image_rows *rows; /* NULL: every row is final. Else rows arrive from a decode running on its
                                own thread: read a row only after image_wait_rows promised it */
};

enum image_format {
    IMAGE_FORMAT_UNKNOWN = 0,
    IMAGE_FORMAT_JPEG,
    IMAGE_FORMAT_PNG,
    IMAGE_FORMAT_WEBP,
    IMAGE_FORMAT_GIF,  /* recognised only to say "unsupported" clearly */
    IMAGE_FORMAT_BMP,
    IMAGE_FORMAT_TIFF,
};

struct image_opts {
    size_t max_file_bytes; /* refuse encoded inputs larger than this (default 64 MiB) */
    int64_t max_pixels;    /* refuse w*h above this, checked from the header (default 100e6) */
    int n_threads;         /* OpenMP threads for resize/normalize; 0 = OpenMP's default */
};

void image_opts_default(struct image_opts *o);

/* ---- decoding (image_decode.c) ---- */
enum image_format image_detect(const uint8_t *data, size_t n);
const char *image_format_name(enum image_format f);
/* Decodes data[0..n) into out (out->rgb heap-allocated; free with image_free). o may be NULL. */
int image_decode(struct image *out, const uint8_t *data, size_t n, const struct image_opts *o, struct err *e);
/* image_decode that returns once the header is read and checked (out->w, out->h; out->rgb allocated), the
 * rows arriving in order from a thread of its own while the caller goes on (a JPEG; other formats are
 * decoded whole before it returns, out->rows NULL). data must stay valid until the decode is over
 * (image_wait_rows(out, out->h) returned) or image_free(out), which stops and joins the thread. An
 * error in the data shows at image_wait_rows. Pixels are image_decode's, bit for bit. */
int image_decode_async(struct image *out, const uint8_t *data, size_t n, const struct image_opts *o, struct err *e);
/* 0 once rows [0, rows) of im are final (at once when im->rows is NULL); -1 with the decode's error when
 * it failed before them. Any thread may wait. */
int image_wait_rows(const struct image *im, int rows, struct err *e);
/* The rows final now, without waiting (im->h when im->rows is NULL). */
int image_rows_ready(const struct image *im);
/* Threads for work beside the decodes of images[0..n), of all (>= 1) the caller has: all once every image's
 * rows are in; while some still arrive, a quarter, at most all less one per decode (its thread keeps a
 * core), at least 1. Idle OpenMP workers spin between regions, and a parallel region waits for whichever
 * thread the scheduler preempts: a full team beside a decode thread slowed both. */
int image_threads_beside(const struct image *images, int n, int all);
/* Reads a file (bounded by o->max_file_bytes) and decodes it; errors are prefixed with the path. */
int image_load(struct image *out, const char *path, const struct image_opts *o, struct err *e);
void image_free(struct image *im); /* accepts a zeroed or half-built image */

/* ---- geometry (image_resize.c) ---- */
/* Allocates a w x h image (w, h >= 1; w*h bounded by INT32 pixel counts). */
int image_alloc(struct image *out, int w, int h, struct err *e);
/* The synthetic test pattern (gradients, hashed noise, an inverted rectangle, a checkerboard and a
 * diagonal line: smooth areas, noise and hard edges) that tests and `minicpmv bench` use; the same
 * integer formula is gen_image in tools/ref_image.py and tools/ref_vision.py, so both sides see
 * identical pixels. image_pattern_px is one channel value of pixel (x, y) of a w x h image. */
uint8_t image_pattern_px(int64_t x, int64_t y, int c, int64_t w, int64_t h, uint32_t seed);
int image_pattern(struct image *out, int w, int h, uint32_t seed, struct err *e);
/* Pillow Image.resize((w, h), Image.Resampling.BICUBIC) on an RGB image, bit for bit. When the size
 * is unchanged it returns a copy, as Pillow does. */
int image_resize_bicubic(struct image *out, const struct image *in, int w, int h, int n_threads, struct err *e);
/* The same resize in steps, as the source's rows arrive (a decode still running: image_rows below):
 * output rows [0, rows) read source rows [0, image_resizer_src_rows(r, rows)) only, and
 * image_resizer_run computes the output rows not yet computed up to `rows` (clamped to the output
 * height) into out (out_w x out_h, the caller's, the same image at every step). The result is
 * image_resize_bicubic's, bit for bit, however the rows are split into steps. */
struct image_resizer;
struct image_resizer *image_resizer_new(int in_w, int in_h, int out_w, int out_h, struct err *e);
void image_resizer_free(struct image_resizer *r); /* accepts NULL */
int image_resizer_src_rows(const struct image_resizer *r, int rows);
/* The output rows that source rows [0, src_rows) make: the largest r with src_rows(r) <= src_rows. */
int image_resizer_rows_from(const struct image_resizer *r, int src_rows);
void image_resizer_run(struct image_resizer *r, struct image *out, const struct image *in, int rows, int n_threads);
/* Pillow Image.crop((x0, y0, x1, y1)) for a box inside the image. */
int image_crop(struct image *out, const struct image *in, int x0, int y0, int x1, int y1, struct err *e);

/* ---- slicing, normalization, packing (image_slice.c) ---- */
struct image_slice_plan {
    int overview_w, overview_h; /* the overview piece */
    int cols, rows;             /* grid (cols, rows); 0, 0 when the image is not sliced */
    int slice_w, slice_h;       /* each slice; the refine image is (slice_w*cols) x (slice_h*rows) */
};

/* Python's round() on a double: round half to even. */
double image_py_round(double x);
/* ensure_divide(len, p) = max(round(len / p) * p, p), with len a double as in Python. */
int image_ensure_divide(double len, int p);
/* find_best_resize((w, h), S, P, up) of §5.2; w, h are doubles (the refine step passes floats). */
void image_find_best_resize(double w, double h, int scale_resolution, int patch_size, int allow_upscale,
                            int *out_w, int *out_h);
/* The whole §5.2 plan for a W x H image. */
int image_slice_plan(struct image_slice_plan *p, int w, int h, int scale_resolution, int patch_size,
                     int max_slice_nums, struct err *e);

struct image_piece {
    int tgt_h, tgt_w;    /* tgt_size (h, w) = (H/14, W/14), height first as in the model */
    int64_t n_patches;   /* tgt_h * tgt_w */
    float *patches;      /* [n_patches, 3*P*P] float32, each row in (c, ky, kx) order, patch n = i*tgt_w + j */
};

struct image_pieces {
    int n;                    /* 1 + cols*rows */
    int cols, rows;           /* grid; 0, 0 when not sliced */
    int patch_dim;            /* 3*P*P = 588 */
    struct image_piece *p;    /* p[0] = overview, then slices row-major */
};

/* Packs one RGB piece (w, h multiples of P) into normalized patch rows:
 * x = (u8/255f - mean[c]) / std[c] in float32, numpy's order of operations. */
int image_pack_patches(struct image_piece *out, const struct image *im, int patch_size, const float mean[3],
                       const float std[3], int n_threads, struct err *e);
/* Everything the vision tower and the chat template need for one image: slicing, resizing from the
 * original image, normalization and packing. cfg supplies scale_resolution, patch_size,
 * max_slice_nums, norm_mean, norm_std. */
int image_preprocess(struct image_pieces *out, const struct image *img, const struct preprocessor_config *cfg,
                     int n_threads, struct err *e);
/* The same, but returning the uint8 pieces (overview, then slices) instead of packed patches
 * (used by tests and by tools that want to look at the pieces). pieces has room for 1 + max_slice_nums. */
int image_slice_pixels(struct image *pieces, int *n_pieces, struct image_slice_plan *plan, const struct image *img,
                       const struct preprocessor_config *cfg, int n_threads, struct err *e);
void image_pieces_free(struct image_pieces *p);
/* image_preprocess one piece at a time, each as soon as the source rows it reads are final (a decode
 * still running): init from the image's size, then image_prep_piece for k in any order (0 = the
 * overview, then the slices row-major), each after source rows [0, image_prep_rows(p, k)) are final.
 * Piece k equals image_preprocess's p[k], bit for bit, whatever the order. */
struct image_prep {
    struct image_slice_plan plan;
    int w, h, P, n;                /* the source's size, the patch size, the number of pieces */
    float mean[3], std[3];
    struct image_resizer *ov, *rf; /* NULL: the size is unchanged and the source's rows are packed */
    struct image ov_img, rf_img;   /* the overview and the refine image, filled as far as needed */
};
int image_prep_init(struct image_prep *p, int w, int h, const struct preprocessor_config *cfg, struct err *e);
int image_prep_rows(const struct image_prep *p, int k);
int image_prep_piece(struct image_prep *p, struct image_piece *out, const struct image *src, int k, int n_threads,
                     struct err *e);
void image_prep_free(struct image_prep *p); /* accepts a zeroed one */
/* Resizes ahead what source rows [0, src_rows) allow (the overview's and the refine image's rows), so
 * that the resizing is done by the time the rows are: image_prep_piece then packs. The same bits. */
void image_prep_advance(struct image_prep *p, const struct image *src, int src_rows, int n_threads);

#endif
