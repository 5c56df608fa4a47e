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

int mm_encode(struct mm *m, const struct image *images, int n_images, struct chat_grid *grids, struct tensor *out,
              int *n_pieces, struct err *e)
{
    const struct model_config *c = m->cfg;
    const enum dtype act = m->act;
    struct image_pieces *ip = calloc((size_t)(n_images ? n_images : 1), sizeof *ip);
    struct vision_piece *vp = NULL;
    int32_t *tgt = NULL;
    int rc = -1, B = 0;
    memset(out, 0, sizeof *out);
    if (!ip) return err_set(e, "out of memory");
    double tc[5] = {0};
    tc[0] = time_now();
    for (int i = 0; i < n_images; i++) {
        if (image_preprocess(&ip[i], &images[i], m->pp, 0, e)) {
            err_prefix(e, "image %d", i + 1);
            goto done;
        }
        grids[i].cols = ip[i].cols;
        grids[i].rows = ip[i].rows;
        B += ip[i].n;
    }
    vp = calloc((size_t)B, sizeof *vp);
    tgt = calloc((size_t)B * 2, sizeof *tgt);
    if (!vp || !tgt) { err_set(e, "out of memory"); goto done; }
    for (int i = 0, k = 0; i < n_images; i++)
        for (int j = 0; j < ip[i].n; j++, k++) {
            vp[k].patches = ip[i].p[j].patches;
            vp[k].h = ip[i].p[j].tgt_h;
            vp[k].w = ip[i].p[j].tgt_w;
            tgt[2 * k] = vp[k].h;
            tgt[2 * k + 1] = vp[k].w;
        }
    if (vision_check_pieces(c, vp, B, e)) goto done;
    const int64_t n_max = vision_n_max(vp, B), vd = c->vision_config.hidden_size, d = c->hidden_size;
    /* The device plan reserved workspace for one batch of max_pieces x max_patches. A piece longer
     * than max_patches is refused; more pieces run in batches of at most max_pieces, each padded to
     * the request's longest piece: a piece's result depends only on its own patches and on that
     * padded length (vision.h), so this gives the numbers of one batch of all B pieces. */
    if (n_max > m->max_patches) {
        err_set(e, "the images make a piece of %lld patches, more than the %lld the device plan reserved (--max-patches)",
                (long long)n_max, (long long)m->max_patches);
        goto done;
    }
    const int per = m->max_pieces < B ? m->max_pieces : B;
    const struct device vdev = m->vdev, rdev = m->rdev, edev = m->edev;
    /* one layout for every batch: the largest parts any batch needs */
    struct mm_layout L;
    memset(&L, 0, sizeof L);
    for (int b0 = 0; b0 < B; b0 += per) {
        struct mm_layout Lb;
        mm_layout(&Lb, m, B - b0 < per ? B - b0 : per, n_max, tgt + 2 * b0);
        if (Lb.feats > L.feats) L.feats = Lb.feats;
        if (Lb.vis > L.vis) L.vis = Lb.vis;
        if (Lb.rs > L.rs) L.rs = Lb.rs;
        if (Lb.rs_out > L.rs_out) L.rs_out = Lb.rs_out;
        L.shared = Lb.shared;
    }
    mm_layout_need(&L);
    if (mm_arenas(m, &L, e)) goto done;
    *out = tensor_make(act, edev, NULL, 2, (int64_t)B * c->query_num, d); /* the caller's */
    if (!(out->data = dev_alloc(edev, tensor_nbytes(out), e))) goto done;

    char *w0 = m->ws[0].p;
    char *rbase = L.shared ? w0 + L.feats : (char *)m->ws[1].p + L.feats; /* resampler scratch, output */
    double t_vis = 0, t_rs = 0;
    tc[1] = time_now();
    for (int b0 = 0; b0 < B; b0 += per) {
        const int nb = B - b0 < per ? B - b0 : per;
        double ta = time_now();
        struct tensor feats = tensor_make(act, vdev, w0, 3, (int64_t)nb, n_max, vd);
        if (vision_forward_padded(&feats, m->vpm, c, vp + b0, nb, n_max, w0 + L.feats, L.vis, e)) goto done;
        double tb = time_now();
        struct tensor rs_in = feats;
        if (!L.shared) {
            rs_in.dev = rdev;
            rs_in.data = m->ws[1].p;
            op_copy(&rs_in, &feats);
        }
        struct tensor mine = tensor_rows_view(out, (int64_t)b0 * c->query_num, (int64_t)nb * c->query_num);
        struct tensor rs_out = tensor_make(act, rdev, rbase + L.rs, 3, (int64_t)nb, (int64_t)c->query_num, d);
        if (!L.rs_out) rs_out = tensor_reshape(&mine, 3, (int64_t)nb, (int64_t)c->query_num, d); /* rdev == edev */
        if (resampler_forward(&rs_out, m->rs, c, &rs_in, tgt + 2 * b0, nb, rbase, L.rs, e)) goto done;
        if (L.rs_out) {
            struct tensor flat = tensor_reshape(&rs_out, 2, (int64_t)nb * c->query_num, d);
            op_copy(&mine, &flat);
        }
        t_vis += tb - ta;
        t_rs += time_now() - tb;
    }
    tc[3] = time_now();
    dev_sync(edev); /* the tokens are complete when this returns (callers time it) */
    tc[4] = time_now();
    m->times.pre = tc[1] - tc[0];
    m->times.vision_queued = t_vis;
    m->times.rs_queued = t_rs;
    m->times.wait = tc[4] - tc[3];
    *n_pieces = B;
    rc = 0;
done:
    if (rc && out->data) {
        dev_free(out->dev, out->data); /* waits for the device: no queued op still writes it */
        out->data = NULL;
    }
    for (int i = 0; i < n_images; i++) image_pieces_free(&ip[i]);
    free(ip);
    free(vp);
    free(tgt);
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
