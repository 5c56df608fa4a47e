/* mm.c: the image path (mm.h): image pieces -> vision tower -> resampler -> rows of the prompt
 * embedding (spec §3-§5), in batches through kept device scratch. */
#include "mm.h"

#include <string.h>

#include "backend.h"
#include "resampler.h"
#include "vision.h"

/* ---- the image path's kept device memory ----
 * Vision scratch for 10 pieces of the full model is ~230 MB: allocating and freeing it per request
 * (cudaFree waits for the device) cost milliseconds, so it lives in m->ws across requests.
 * Layout (each part 256-byte aligned):
 *   mm_ws[0], vpm device:  [feats B*N_max*vd][vision scratch]
 *                          when the resampler shares the device, the vision scratch region is
 *                          reused for [resampler scratch][resampler output]: its ops come after
 *                          the tower's on the device's one stream (or run synchronously on the CPU)
 *   mm_ws[1], resampler device otherwise: [copy of feats][resampler scratch][resampler output]
 * The resampler output part is only there when the embed device differs; otherwise the resampler
 * writes straight into the caller's `out`.
 * The blocks are sized for one vision batch of at most the plan's max_pieces; a request with more
 * pieces runs batch after batch through the same blocks (ordered on the devices' streams). */

static size_t al256(size_t b) { return (b + 255) & ~(size_t)255; }

struct mm_layout {
    size_t feats, vis, rs, rs_out; /* bytes of each part, aligned */
    int shared;                    /* resampler on the vpm device */
    size_t need[2];                /* bytes of mm_ws[0], mm_ws[1] */
};

static void mm_layout_need(struct mm_layout *L);

/* The parts for one vision batch of B pieces padded to n_max (tgt: their sizes). */
static void mm_layout(struct mm_layout *L, const struct mm *m, int B, int64_t n_max, const int32_t *tgt)
{
    const struct model_config *c = m->cfg;
    const enum dtype act = m->act;
    const struct device vdev = m->vdev, rdev = m->rdev, edev = m->edev;
    memset(L, 0, sizeof *L);
    L->feats = al256((size_t)B * (size_t)n_max * (size_t)c->vision_config.hidden_size * dtype_size(act));
    L->vis = al256(vision_scratch_bytes(c, B, n_max, act));
    L->rs = al256(resampler_scratch_bytes(c, tgt, B, act));
    if (!device_eq(rdev, edev))
        L->rs_out = al256((size_t)B * (size_t)c->query_num * (size_t)c->hidden_size * dtype_size(act));
    L->shared = device_eq(vdev, rdev);
    mm_layout_need(L);
}

/* The bytes of each kept block from the parts' sizes. */
static void mm_layout_need(struct mm_layout *L)
{
    if (L->shared) {
        const size_t r = L->rs + L->rs_out;
        L->need[0] = L->feats + (L->vis > r ? L->vis : r);
    } else {
        L->need[0] = L->feats + L->vis;
        L->need[1] = L->feats + L->rs + L->rs_out;
    }
}

/* Makes a hold at least `bytes` on d (replacing a smaller block; the old one is freed first). */
static int arena_get(struct mm_arena *a, struct device d, size_t bytes, struct err *e)
{
    if (a->p && a->bytes >= bytes && device_eq(a->dev, d)) return 0;
    dev_free(a->dev, a->p);
    a->p = NULL;
    a->bytes = 0;
    a->dev = d;
    if (!(a->p = dev_alloc(d, bytes, e))) return err_prefix(e, "image path scratch");
    a->bytes = bytes;
    return 0;
}

static int mm_arenas(struct mm *m, const struct mm_layout *L, struct err *e)
{
    if (arena_get(&m->ws[0], m->vdev, L->need[0], e)) return -1;
    if (!L->shared && arena_get(&m->ws[1], m->rdev, L->need[1], e)) return -1;
    return 0;
}

int mm_reserve(struct mm *m, int n_pieces, int64_t max_patches, struct err *e)
{
    if (n_pieces < 1 || max_patches < 1) return 0;
    if (n_pieces > VISION_MAX_PIECES || max_patches > VISION_MAX_PATCHES)
        return err_set(e, "image path: %d pieces of %lld patches exceed the limits %d x %d", n_pieces,
                       (long long)max_patches, VISION_MAX_PIECES, VISION_MAX_PATCHES);
    /* the largest resampler scratch: N keys in a piece, and max_w + max_h = 2N (pieces 1 x N and
     * N x 1; one piece: N + 1) */
    int32_t *tgt = malloc((size_t)n_pieces * 2 * sizeof *tgt);
    if (!tgt) return err_set(e, "out of memory");
    for (int i = 0; i < n_pieces; i++) {
        tgt[2 * i] = i % 2 ? (int32_t)max_patches : 1;
        tgt[2 * i + 1] = i % 2 ? 1 : (int32_t)max_patches;
    }
    struct mm_layout L;
    mm_layout(&L, m, n_pieces, max_patches, tgt);
    free(tgt);
    return mm_arenas(m, &L, e);
}

/* ---- mm_encode: pieces in batches as their source rows arrive ----
 * An image may still be decoding (image_decode_async): its pieces are prepared (image_prep) and encoded
 * batch by batch as the rows each batch reads arrive, so the tower works on the top slices while the
 * bottom of the file decodes. The batches follow from the slicing plans alone, never from timing, so a
 * request gives the same numbers whether its images are decoded or still decoding, on every run (on
 * the GPU a GEMM of another row count may round differently, docs/VISION.md): per image, one batch per
 * row of the slice grid, the last row joined by the overview (which reads every row), each cut to at
 * most max_pieces; an image that is not sliced is one batch. The tower's result for a piece depends
 * on its patches and the request's padded length (vision.h), the resampler's only on the piece; each
 * batch's resampler runs over its runs of consecutive pieces, which write their rows of out in place. */
struct mm_piece {
    int img, k;    /* image, piece within it (0 = overview) */
    int rows;      /* source rows it reads */
};

/* The batches: order[] lists the pieces batch after batch, size[] the batch sizes, each batch in piece
 * order. Returns the number of batches. */
static int mm_batches(const struct image_prep *prep, int n_images, int cap, int whole, int *order, int *size)
{
    int nb = 0, n = 0;
    if (cap < 1) cap = 1;
    for (int i = 0, g0 = 0; i < n_images; g0 += prep[i].n, i++) {
        /* groups of the image: [first, last] slice rows each (whole: one group of every piece) */
        const int cols = prep[i].plan.cols, groups = whole || !prep[i].plan.rows ? 1 : prep[i].plan.rows;
        for (int r = 0; r < groups; r++) {
            int grp[65], m = 0; /* at most 1 + 64 pieces (max_slice_nums <= 64) */
            if (r == groups - 1) grp[m++] = g0; /* the overview joins the last group */
            const int k0 = groups == 1 ? 1 : 1 + r * cols, k1 = groups == 1 ? prep[i].n : k0 + cols;
            for (int k = k0; k < k1; k++) grp[m++] = g0 + k;
            for (int a = 0; a < m; a += cap) {
                size[nb] = m - a < cap ? m - a : cap;
                for (int b = 0; b < size[nb]; b++) order[n++] = grp[a + b];
                nb++;
            }
        }
    }
    return nb;
}

/* Rows waited for at a time: between them the resizes run ahead on the rows already in (image_prep_advance),
 * so a piece's resizing is mostly done when its last row arrives. */
#define MM_ROWS_STEP 64

/* Waits until the rows the batch's pieces read are final (one image per batch). 0, or -1 with e set. */
static int mm_wait_batch(const struct mm_piece *pc, const int *batch, int nb, const struct image *images,
                         int n_images, int threads, struct image_prep *prep, double *t_wait, struct err *e)
{
    int need = 0;
    for (int j = 0; j < nb; j++)
        if (pc[batch[j]].rows > need) need = pc[batch[j]].rows;
    const int img = pc[batch[0]].img;
    const struct image *im = &images[img];
    for (int have = image_rows_ready(im); have < need; have = image_rows_ready(im)) {
        backend_set_threads(image_threads_beside(images, n_images, threads));
        image_prep_advance(&prep[img], im, have, 0);
        const double t0 = time_now();
        if (image_wait_rows(im, have + MM_ROWS_STEP < need ? have + MM_ROWS_STEP : need, e))
            return err_prefix(e, "image %d", img + 1);
        *t_wait += time_now() - t0;
    }
    return 0;
}

int mm_encode(struct mm *m, const struct image *images, int n_images, struct chat_grid *grids, struct tensor *out,
              int *n_pieces, struct err *e)
{
    const struct model_config *c = m->cfg;
    const enum dtype act = m->act;
    struct image_prep *prep = calloc((size_t)(n_images ? n_images : 1), sizeof *prep);
    struct image_piece *packed = NULL;
    struct mm_piece *pc = NULL;
    int32_t *tgt = NULL, *bt = NULL;
    int *order = NULL, *bsize = NULL;
    int rc = -1, B = 0;
    const int threads = backend_threads(); /* the caller's count, restored at the end (mm_wait_batch lowers it) */
    memset(out, 0, sizeof *out);
    memset(&m->times, 0, sizeof m->times);
    if (!prep) return err_set(e, "out of memory");
    for (int i = 0; i < n_images; i++) {
        if (image_prep_init(&prep[i], images[i].w, images[i].h, m->pp, e)) {
            err_prefix(e, "image %d", i + 1);
            goto done;
        }
        grids[i].cols = prep[i].plan.cols;
        grids[i].rows = prep[i].plan.rows;
        B += prep[i].n;
    }
    packed = calloc((size_t)B, sizeof *packed);
    pc = calloc((size_t)B, sizeof *pc);
    tgt = calloc((size_t)B * 2, sizeof *tgt);
    bt = calloc((size_t)B * 2, sizeof *bt);
    order = calloc((size_t)B, sizeof *order);
    bsize = calloc((size_t)B, sizeof *bsize);
    if (!packed || !pc || !tgt || !bt || !order || !bsize) { err_set(e, "out of memory"); goto done; }
    /* every piece's size (tgt: h, w in patches) from the plans; the padded length is the longest piece's */
    int64_t n_max = 0;
    for (int i = 0, g = 0; i < n_images; i++)
        for (int k = 0; k < prep[i].n; k++, g++) {
            const struct image_slice_plan *pl = &prep[i].plan;
            const int P = prep[i].P;
            pc[g] = (struct mm_piece){.img = i, .k = k, .rows = image_prep_rows(&prep[i], k)};
            tgt[2 * g] = (k ? pl->slice_h : pl->overview_h) / P;
            tgt[2 * g + 1] = (k ? pl->slice_w : pl->overview_w) / P;
            if ((int64_t)tgt[2 * g] * tgt[2 * g + 1] > n_max) n_max = (int64_t)tgt[2 * g] * tgt[2 * g + 1];
        }
    if (B > VISION_MAX_PIECES) { /* the pieces' own checks run with each batch (vision_forward_padded) */
        err_set(e, "vision: %d pieces (allowed 1..%d)", B, VISION_MAX_PIECES);
        goto done;
    }
    const int64_t vd = c->vision_config.hidden_size, d = c->hidden_size;
    /* The device plan reserved workspace for one batch of max_pieces x max_patches: a longer piece is
     * refused, more pieces run in several batches. */
    if (n_max > m->max_patches) {
        err_set(e, "the images make a piece of %lld patches, more than the %lld the device plan reserved (--max-patches)",
                (long long)n_max, (long long)m->max_patches);
        goto done;
    }
    const int per = m->max_pieces < B ? m->max_pieces : B;
    const struct device vdev = m->vdev, rdev = m->rdev, edev = m->edev;
    *out = tensor_make(act, edev, NULL, 2, (int64_t)B * c->query_num, d); /* the caller's */
    if (!(out->data = dev_alloc(edev, tensor_nbytes(out), e))) goto done;

    double t_pre = 0, t_vis = 0, t_rs = 0, t_wait = 0;
    const int n_batches = mm_batches(prep, n_images, per, m->whole_batches, order, bsize);
    for (int bi = 0, o = 0; bi < n_batches; o += bsize[bi], bi++) {
        const int *batch = order + o, nb = bsize[bi];
        if (mm_wait_batch(pc, batch, nb, images, n_images, threads, prep, &t_wait, e)) goto done;
        double ta = time_now();
        /* this batch's host work (packing; with the tower on a GPU also its patch conversion and the
         * resampler's tables) on fewer threads while an image still decodes (image_threads_beside) */
        backend_set_threads(image_threads_beside(images, n_images, threads));
        struct vision_piece bvp[VISION_MAX_PIECES];
        for (int j = 0; j < nb; j++) {
            const int g = batch[j];
            if (image_prep_piece(&prep[pc[g].img], &packed[g], &images[pc[g].img], pc[g].k, 0, e)) {
                err_prefix(e, "image %d", pc[g].img + 1);
                goto done;
            }
            bt[2 * j] = tgt[2 * g];
            bt[2 * j + 1] = tgt[2 * g + 1];
            bvp[j] = (struct vision_piece){.patches = packed[g].patches, .h = bt[2 * j], .w = bt[2 * j + 1]};
        }
        /* a tower or resampler on the CPU computes with every thread: its work is the bulk of the time there */
        if (vdev.kind == DEVICE_CPU || rdev.kind == DEVICE_CPU) backend_set_threads(threads);
        struct mm_layout L;
        mm_layout(&L, m, nb, n_max, bt);
        if (mm_arenas(m, &L, e)) goto done;
        char *w0 = m->ws[0].p;
        char *rbase = L.shared ? w0 + L.feats : (char *)m->ws[1].p + L.feats; /* resampler scratch, output */
        double tb = time_now();
        t_pre += tb - ta;
        struct tensor feats = tensor_make(act, vdev, w0, 3, (int64_t)nb, n_max, vd);
        if (vision_forward_padded(&feats, m->vpm, c, bvp, nb, n_max, w0 + L.feats, L.vis, e)) goto done;
        for (int j = 0; j < nb; j++) { /* uploaded: op_copy returns once the host buffer may be reused */
            free(packed[batch[j]].patches);
            packed[batch[j]].patches = NULL;
        }
        double tc = time_now();
        struct tensor rs_in = feats;
        if (!L.shared) {
            rs_in.dev = rdev;
            rs_in.data = m->ws[1].p;
            op_copy(&rs_in, &feats);
        }
        for (int j0 = 0, j1; j0 < nb; j0 = j1) { /* runs of consecutive pieces */
            for (j1 = j0 + 1; j1 < nb && batch[j1] == batch[j1 - 1] + 1; j1++) {}
            const int64_t len = j1 - j0;
            struct tensor x = tensor_make(act, rdev, (char *)rs_in.data + (size_t)(j0 * n_max * vd) * dtype_size(act), 3,
                                          len, n_max, vd);
            struct tensor mine = tensor_rows_view(out, (int64_t)batch[j0] * c->query_num, len * c->query_num);
            struct tensor rs_out = tensor_make(act, rdev, rbase + L.rs, 3, len, (int64_t)c->query_num, d);
            if (!L.rs_out) rs_out = tensor_reshape(&mine, 3, len, (int64_t)c->query_num, d); /* rdev == edev */
            if (resampler_forward(&rs_out, m->rs, c, &x, bt + 2 * j0, (int)len, rbase, L.rs, e)) goto done;
            if (L.rs_out) {
                struct tensor flat = tensor_reshape(&rs_out, 2, len * c->query_num, d);
                op_copy(&mine, &flat);
            }
        }
        m->times.batches++;
        t_vis += tc - tb;
        t_rs += time_now() - tc;
    }
    const double t3 = time_now();
    dev_sync(edev); /* the tokens are complete when this returns (callers time it) */
    m->times.pre = t_pre;
    m->times.rows_wait = t_wait;
    m->times.vision_queued = t_vis;
    m->times.rs_queued = t_rs;
    m->times.wait = time_now() - t3;
    *n_pieces = B;
    rc = 0;
done:
    backend_set_threads(threads);
    if (rc && out->data) {
        dev_free(out->dev, out->data); /* waits for the device: no queued op still writes it */
        out->data = NULL;
    }
    for (int i = 0; i < n_images; i++) image_prep_free(&prep[i]);
    for (int g = 0; packed && g < B; g++) free(packed[g].patches);
    free(prep);
    free(packed);
    free(pc);
    free(tgt);
    free(bt);
    free(order);
    free(bsize);
    return rc;
}

int mm_init(struct mm *m, const struct model_config *c, const struct preprocessor_config *pp, const struct model *w,
            const struct model_placement *pl, enum dtype act, int max_pieces, int64_t max_patches, struct err *e)
{
    memset(m, 0, sizeof *m);
    m->cfg = c;
    m->pp = pp;
    m->vpm = &w->vpm;
    m->rs = &w->rs;
    m->vdev = pl->devs[pl->vpm];
    m->rdev = pl->devs[pl->resampler];
    m->edev = pl->devs[pl->embed];
    m->act = act;
    m->max_pieces = max_pieces;
    m->max_patches = max_patches;
    return mm_reserve(m, max_pieces, max_patches, e);
}

void mm_free(struct mm *m)
{
    for (int i = 0; i < 2; i++) dev_free(m->ws[i].dev, m->ws[i].p);
    memset(m->ws, 0, sizeof m->ws);
}
