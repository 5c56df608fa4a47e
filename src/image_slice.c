/* image_slice.c: the slicing plan of spec §5.2, cutting the pieces, and normalization + patch
 * packing of §5.4/§3.1.
 * Owns: Python-exact arithmetic for the plan (doubles, round half to even, int() truncation,
 * candidate grids in order, strict < so the first of equal errors wins), piece order (overview,
 * then slices row-major), and the [N, 588] (c, ky, kx) patch layout.
 * Does not own: resizing (image_resize.c) or the placeholder text (chat). */
#include "image.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Python's round(x) for a float: the nearest integer, ties to even. nearbyint() in the default
 * rounding mode (to nearest, ties to even) is exactly that; C's round() would send 500.5 to 501. */
double image_py_round(double x)
{
    return nearbyint(x);
}

int image_ensure_divide(double len, int p)
{
    double r = image_py_round(len / p) * p;
    return r < p ? p : (int)r;
}

void image_find_best_resize(double w, double h, int scale_resolution, int patch_size, int allow_upscale,
                            int *out_w, int *out_h)
{
    double S = scale_resolution;
    if (w * h > S * S || allow_upscale) {
        double r = w / h;
        /* int() truncates toward zero; the operands are positive, so (double)(long long) is it. */
        h = (double)(long long)(S / sqrt(r));
        w = (double)(long long)(h * r);
    }
    *out_w = image_ensure_divide(w, patch_size);
    *out_h = image_ensure_divide(h, patch_size);
}

int image_slice_plan(struct image_slice_plan *p, int w, int h, int S, int P, int max_slices, struct err *e)
{
    memset(p, 0, sizeof *p);
    if (w < 1 || h < 1) return err_set(e, "image slicing: invalid image size %dx%d", w, h);
    if (S < 1 || P < 1 || max_slices < 0 || max_slices > 64)
        return err_set(e, "image slicing: invalid parameters scale_resolution=%d patch_size=%d max_slice_nums=%d", S, P,
                       max_slices);
    double log_ratio = log((double)w / (double)h);
    double ratio = (double)((int64_t)w * h) / (double)((int64_t)S * S);
    double mc = ceil(ratio);
    int multiple = mc > max_slices ? max_slices : (int)mc;
    if (multiple <= 1) {
        image_find_best_resize(w, h, S, P, 1, &p->overview_w, &p->overview_h);
        return 0;
    }
    image_find_best_resize(w, h, S, P, 0, &p->overview_w, &p->overview_h);
    int best_c = 1, best_r = 1;
    double best_err = INFINITY;
    for (int n = multiple - 1; n <= multiple + 1; n++) {
        if (n == 1 || n > max_slices || n < 1) continue;
        for (int m = 1; m <= n; m++) {
            if (n % m) continue;
            double err = fabs(log_ratio - log((double)m / (double)(n / m)));
            if (err < best_err) { best_c = m; best_r = n / m; best_err = err; }
        }
    }
    p->cols = best_c;
    p->rows = best_r;
    /* get_refine_size: the grid cell is a float (refine_width / grid_x), passed on as such. */
    int rw = image_ensure_divide(w, best_c), rh = image_ensure_divide(h, best_r);
    image_find_best_resize((double)rw / best_c, (double)rh / best_r, S, P, 1, &p->slice_w, &p->slice_h);
    return 0;
}

static int check_cfg(const struct preprocessor_config *cfg, struct err *e)
{
    if (cfg->patch_size < 1 || cfg->patch_size > 64 || cfg->scale_resolution < 1 || cfg->max_slice_nums < 0 ||
        cfg->max_slice_nums > 64)
        return err_set(e, "preprocessor config: invalid patch_size=%d scale_resolution=%d max_slice_nums=%d",
                       cfg->patch_size, cfg->scale_resolution, cfg->max_slice_nums);
    for (int c = 0; c < 3; c++)
        if (!(cfg->norm_std[c] != 0.0f) || !isfinite(cfg->norm_std[c]) || !isfinite(cfg->norm_mean[c]))
            return err_set(e, "preprocessor config: invalid norm_mean/norm_std for channel %d", c);
    return 0;
}

int image_slice_pixels(struct image *pieces, int *n_pieces, struct image_slice_plan *plan, const struct image *img,
                       const struct preprocessor_config *cfg, int n_threads, struct err *e)
{
    *n_pieces = 0;
    if (check_cfg(cfg, e)) return -1;
    if (image_slice_plan(plan, img->w, img->h, cfg->scale_resolution, cfg->patch_size, cfg->max_slice_nums, e))
        return -1;
    int n = 0;
    struct image refine = {0};
    /* Both the overview and the refine image are resized from the ORIGINAL image. */
    if (image_resize_bicubic(&pieces[n], img, plan->overview_w, plan->overview_h, n_threads, e)) goto fail;
    n++;
    if (plan->cols) {
        if (image_resize_bicubic(&refine, img, plan->slice_w * plan->cols, plan->slice_h * plan->rows, n_threads, e))
            goto fail;
        for (int i = 0; i < plan->rows; i++)
            for (int j = 0; j < plan->cols; j++) {
                if (image_crop(&pieces[n], &refine, j * plan->slice_w, i * plan->slice_h, (j + 1) * plan->slice_w,
                               (i + 1) * plan->slice_h, e))
                    goto fail;
                n++;
            }
        image_free(&refine);
    }
    *n_pieces = n;
    return 0;
fail:
    image_free(&refine);
    for (int i = 0; i < n; i++) image_free(&pieces[i]);
    return -1;
}

/* Packs the w x h region at (x0, y0) of im; see image_pack_patches. Packing straight from the
 * refine image saves the crop copies (a crop is a plain copy, so the values are the same). */
static int pack_region(struct image_piece *out, const struct image *im, int x0, int y0, int w, int h, int P,
                       const float mean[3], const float std[3], int n_threads, struct err *e)
{
    memset(out, 0, sizeof *out);
    if (P < 1 || w % P || h % P || x0 < 0 || y0 < 0 || x0 + w > im->w || y0 + h > im->h)
        return err_set(e, "image packing: %dx%d is not a multiple of the patch size %d", w, h, P);
    int th = h / P, tw = w / P;
    int64_t n = (int64_t)th * tw, dim = 3 * (int64_t)P * P;
    out->patches = malloc(sizeof(float) * (size_t)(n * dim));
    if (!out->patches) return err_set(e, "image packing: out of memory for %lld patches", (long long)n);
    out->tgt_h = th;
    out->tgt_w = tw;
    out->n_patches = n;
    /* numpy: x = u8.astype(float32) / 255 (float32 division), then (x - mean) / std with mean and
     * std cast to float32 (transformers' normalize). Each step rounds to float32; with
     * FLT_EVAL_METHOD 0 and no contraction C float arithmetic rounds identically. Only 256 inputs
     * exist per channel, so a table holds the exact values. */
    float lut[3][256];
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++) {
            volatile float x = (float)v / 255.0f; /* volatile: keep each float32 rounding step */
            volatile float y = x - mean[c];
            lut[c][v] = y / std[c];
        }
    int64_t W = im->w;
#ifdef _OPENMP
    if (n_threads <= 0) n_threads = omp_get_max_threads();
#else
    n_threads = 1;
#endif
    /* One task per patch row: patches i*tw .. i*tw+tw-1 read image rows y0+14i .. y0+14i+13. */
#pragma omp parallel for schedule(static) num_threads(n_threads) if (n > 64)
    for (int i = 0; i < th; i++) {
        for (int ky = 0; ky < P; ky++) {
            const uint8_t *row = im->rgb + ((int64_t)(y0 + i * P + ky) * W + x0) * 3;
            for (int j = 0; j < tw; j++) {
                float *dst = out->patches + ((int64_t)i * tw + j) * dim + ky * P;
                const uint8_t *s = row + (int64_t)j * P * 3;
                for (int kx = 0; kx < P; kx++) {
                    dst[kx] = lut[0][s[3 * kx]];
                    dst[P * P + kx] = lut[1][s[3 * kx + 1]];
                    dst[2 * P * P + kx] = lut[2][s[3 * kx + 2]];
                }
            }
        }
    }
    return 0;
}

int image_pack_patches(struct image_piece *out, const struct image *im, int P, const float mean[3],
                       const float std[3], int n_threads, struct err *e)
{
    return pack_region(out, im, 0, 0, im->w, im->h, P, mean, std, n_threads, e);
}

void image_pieces_free(struct image_pieces *p)
{
    if (!p) return;
    if (p->p)
        for (int i = 0; i < p->n; i++) free(p->p[i].patches);
    free(p->p);
    memset(p, 0, sizeof *p);
}

/* ---- one image's pieces, one at a time (image.h: image_prep) ----
 * Overview and refine image are both resized from the ORIGINAL image; a resize to the same size is a
 * copy in Pillow, so the original's rows are packed directly then. */
void image_prep_free(struct image_prep *p)
{
    image_resizer_free(p->ov);
    image_resizer_free(p->rf);
    image_free(&p->ov_img);
    image_free(&p->rf_img);
    memset(p, 0, sizeof *p);
}

int image_prep_init(struct image_prep *p, int w, int h, const struct preprocessor_config *cfg, struct err *e)
{
    memset(p, 0, sizeof *p);
    if (check_cfg(cfg, e)) return -1;
    struct image_slice_plan *pl = &p->plan;
    if (image_slice_plan(pl, w, h, cfg->scale_resolution, cfg->patch_size, cfg->max_slice_nums, e)) return -1;
    p->w = w, p->h = h, p->P = cfg->patch_size;
    memcpy(p->mean, cfg->norm_mean, sizeof p->mean);
    memcpy(p->std, cfg->norm_std, sizeof p->std);
    p->n = 1 + pl->cols * pl->rows;
    const int rw = pl->slice_w * pl->cols, rh = pl->slice_h * pl->rows;
    if ((pl->overview_w != w || pl->overview_h != h) &&
        (!(p->ov = image_resizer_new(w, h, pl->overview_w, pl->overview_h, e)) ||
         image_alloc(&p->ov_img, pl->overview_w, pl->overview_h, e)))
        goto fail;
    if (pl->cols && (rw != w || rh != h) &&
        (!(p->rf = image_resizer_new(w, h, rw, rh, e)) || image_alloc(&p->rf_img, rw, rh, e)))
        goto fail;
    return 0;
fail:
    image_prep_free(p);
    return -1;
}

/* piece k >= 1: its slice's grid row and column */
static int prep_slice_rows(const struct image_prep *p, int k) { return ((k - 1) / p->plan.cols + 1) * p->plan.slice_h; }

int image_prep_rows(const struct image_prep *p, int k)
{
    if (k == 0) return p->ov ? image_resizer_src_rows(p->ov, p->plan.overview_h) : p->h;
    const int rows = prep_slice_rows(p, k);
    return p->rf ? image_resizer_src_rows(p->rf, rows) : rows;
}

int image_prep_piece(struct image_prep *p, struct image_piece *out, const struct image *src, int k, int n_threads,
                     struct err *e)
{
    memset(out, 0, sizeof *out);
    if (k < 0 || k >= p->n) return err_set(e, "image preprocessing: piece %d of %d", k, p->n);
    if (src->w != p->w || src->h != p->h)
        return err_set(e, "image preprocessing: a %dx%d image for a plan of %dx%d", src->w, src->h, p->w, p->h);
    const struct image_slice_plan *pl = &p->plan;
    if (k == 0) {
        const struct image *im = src;
        if (p->ov) {
            image_resizer_run(p->ov, &p->ov_img, src, pl->overview_h, n_threads);
            im = &p->ov_img;
        }
        return pack_region(out, im, 0, 0, im->w, im->h, p->P, p->mean, p->std, n_threads, e);
    }
    const struct image *im = src;
    if (p->rf) {
        image_resizer_run(p->rf, &p->rf_img, src, prep_slice_rows(p, k), n_threads);
        im = &p->rf_img;
    }
    const int i = (k - 1) / pl->cols, j = (k - 1) % pl->cols; /* row-major: top row left to right */
    return pack_region(out, im, j * pl->slice_w, i * pl->slice_h, pl->slice_w, pl->slice_h, p->P, p->mean, p->std,
                       n_threads, e);
}

void image_prep_advance(struct image_prep *p, const struct image *src, int src_rows, int n_threads)
{
    if (p->ov) image_resizer_run(p->ov, &p->ov_img, src, image_resizer_rows_from(p->ov, src_rows), n_threads);
    if (p->rf) image_resizer_run(p->rf, &p->rf_img, src, image_resizer_rows_from(p->rf, src_rows), n_threads);
}

int image_preprocess(struct image_pieces *out, const struct image *img, const struct preprocessor_config *cfg,
                     int n_threads, struct err *e)
{
    memset(out, 0, sizeof *out);
    struct image_prep pp;
    if (image_prep_init(&pp, img->w, img->h, cfg, e)) return -1;
    out->p = calloc((size_t)pp.n, sizeof *out->p);
    if (!out->p) {
        image_prep_free(&pp);
        return err_set(e, "image preprocessing: out of memory");
    }
    out->cols = pp.plan.cols;
    out->rows = pp.plan.rows;
    out->patch_dim = 3 * pp.P * pp.P;
    for (; out->n < pp.n; out->n++)
        if (image_prep_piece(&pp, &out->p[out->n], img, out->n, n_threads, e)) {
            image_prep_free(&pp);
            image_pieces_free(out);
            return -1;
        }
    image_prep_free(&pp);
    return 0;
}
