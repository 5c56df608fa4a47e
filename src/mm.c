/* mm.c: the multimodal part of the engine: image pieces -> vision tower -> resampler -> rows of the
 * prompt embedding (spec §3-§6), and the chat() output clean-up of spec §8. */
#include <ctype.h>
#include <string.h>

#include "backend.h"
#include "devmap.h"
#include "chat.h"
#include "engine.h"
#include "image.h"
#include "resampler.h"
#include "tokenizer.h"
#include "vision.h"

/* ---- the image path's kept device memory ----
 * Vision scratch for 10 pieces of the full model is ~230 MB: allocating and freeing it per request
 * (cudaFree waits for the device) cost milliseconds, so it lives in g->mm_ws across requests.
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
static void mm_layout(struct mm_layout *L, const struct engine *g, int B, int64_t n_max, const int32_t *tgt)
{
    const struct model_config *c = &g->cfg;
    const enum dtype act = g->llm.act;
    const struct device vdev = g->pl.devs[g->pl.vpm], rdev = g->pl.devs[g->pl.resampler];
    const struct device edev = g->pl.devs[g->pl.embed];
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
static int arena_get(struct engine_arena *a, struct device d, size_t bytes, struct err *e)
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

static int mm_arenas(struct engine *g, const struct mm_layout *L, struct err *e)
{
    if (arena_get(&g->mm_ws[0], g->pl.devs[g->pl.vpm], L->need[0], e)) return -1;
    if (!L->shared && arena_get(&g->mm_ws[1], g->pl.devs[g->pl.resampler], L->need[1], e)) return -1;
    return 0;
}

int engine_mm_reserve(struct engine *g, int n_pieces, int64_t max_patches, struct err *e)
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
    mm_layout(&L, g, n_pieces, max_patches, tgt);
    free(tgt);
    return mm_arenas(g, &L, e);
}

int engine_encode_images(struct engine *g, const struct image *images, int n_images, struct chat_grid *grids,
                         struct tensor *out, int *n_pieces, struct err *e)
{
    const struct model_config *c = &g->cfg;
    const enum dtype act = g->llm.act;
    struct image_pieces *ip = calloc((size_t)(n_images ? n_images : 1), sizeof *ip);
    struct vision_piece *vp = NULL;
    int32_t *tgt = NULL;
    int rc = -1, B = 0;
    memset(out, 0, sizeof *out);
    if (!ip) return err_set(e, "out of memory");
    double tc[5] = {0};
    tc[0] = time_now();
    for (int i = 0; i < n_images; i++) {
        if (image_preprocess(&ip[i], &images[i], &g->pp, 0, e)) {
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
    if (n_max > g->plan->params.max_patches) {
        err_set(e, "the images make a piece of %lld patches, more than the %lld the device plan reserved (--max-patches)",
                (long long)n_max, (long long)g->plan->params.max_patches);
        goto done;
    }
    const int per = g->plan->params.max_pieces < B ? g->plan->params.max_pieces : B;
    const struct device vdev = g->pl.devs[g->pl.vpm], rdev = g->pl.devs[g->pl.resampler];
    const struct device edev = g->pl.devs[g->pl.embed];
    /* one layout for every batch: the largest parts any batch needs */
    struct mm_layout L;
    memset(&L, 0, sizeof L);
    for (int b0 = 0; b0 < B; b0 += per) {
        struct mm_layout Lb;
        mm_layout(&Lb, g, B - b0 < per ? B - b0 : per, n_max, tgt + 2 * b0);
        if (Lb.feats > L.feats) L.feats = Lb.feats;
        if (Lb.vis > L.vis) L.vis = Lb.vis;
        if (Lb.rs > L.rs) L.rs = Lb.rs;
        if (Lb.rs_out > L.rs_out) L.rs_out = Lb.rs_out;
        L.shared = Lb.shared;
    }
    mm_layout_need(&L);
    if (mm_arenas(g, &L, e)) goto done;
    *out = tensor_make(act, edev, NULL, 2, (int64_t)B * c->query_num, d); /* the caller's */
    if (!(out->data = dev_alloc(edev, tensor_nbytes(out), e))) goto done;

    char *w0 = g->mm_ws[0].p;
    char *rbase = L.shared ? w0 + L.feats : (char *)g->mm_ws[1].p + L.feats; /* resampler scratch, output */
    double t_vis = 0, t_rs = 0;
    tc[1] = time_now();
    for (int b0 = 0; b0 < B; b0 += per) {
        const int nb = B - b0 < per ? B - b0 : per;
        double ta = time_now();
        struct tensor feats = tensor_make(act, vdev, w0, 3, (int64_t)nb, n_max, vd);
        if (vision_forward_padded(&feats, &g->model.vpm, c, vp + b0, nb, n_max, w0 + L.feats, L.vis, e)) goto done;
        double tb = time_now();
        struct tensor rs_in = feats;
        if (!L.shared) {
            rs_in.dev = rdev;
            rs_in.data = g->mm_ws[1].p;
            op_copy(&rs_in, &feats);
        }
        struct tensor mine = tensor_rows_view(out, (int64_t)b0 * c->query_num, (int64_t)nb * c->query_num);
        struct tensor rs_out = tensor_make(act, rdev, rbase + L.rs, 3, (int64_t)nb, (int64_t)c->query_num, d);
        if (!L.rs_out) rs_out = tensor_reshape(&mine, 3, (int64_t)nb, (int64_t)c->query_num, d); /* rdev == edev */
        if (resampler_forward(&rs_out, &g->model.rs, c, &rs_in, tgt + 2 * b0, nb, rbase, L.rs, e)) goto done;
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
    g->enc_times.pre = tc[1] - tc[0];
    g->enc_times.vision_queued = t_vis;
    g->enc_times.rs_queued = t_rs;
    g->enc_times.wait = tc[4] - tc[3];
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

int engine_merge_embeddings(struct engine *g, const int32_t *ids, int n, const struct tensor *img_tokens,
                            int n_pieces, struct tensor *out, struct err *e)
{
    const struct model_config *c = &g->cfg;
    const struct device edev = g->pl.devs[g->pl.embed];
    if (engine_check_ids(g, ids, n, e)) return -1;
    *out = tensor_make(g->llm.act, edev, NULL, 2, (int64_t)n, (int64_t)c->hidden_size);
    if (!(out->data = dev_alloc(edev, tensor_nbytes(out), e))) return -1;
    for (int64_t off = 0; off < n; off += g->llm.max_batch) {
        int64_t m = n - off < g->llm.max_batch ? n - off : g->llm.max_batch;
        struct tensor h = llm_embed(&g->llm, ids + off, m);
        struct tensor dst = tensor_rows_view(out, off, m);
        op_copy(&dst, &h);
    }
    struct chat_bound *b = NULL;
    int nb = 0;
    if (g->tok && chat_image_bounds(g->tok, ids, n, &b, &nb, e)) goto fail;
    if (nb != n_pieces) {
        err_set(e, "prompt has %d image placeholders but %d image pieces were encoded", nb, n_pieces);
        free(b);
        goto fail;
    }
    for (int k = 0; k < nb; k++) {
        if (b[k].end - b[k].start != c->query_num) {
            err_set(e, "image placeholder %d spans %d tokens, expected query_num = %d", k, b[k].end - b[k].start,
                    c->query_num);
            free(b);
            goto fail;
        }
        struct tensor src = tensor_rows_view(img_tokens, (int64_t)k * c->query_num, c->query_num);
        struct tensor dst = tensor_rows_view(out, b[k].start, c->query_num);
        op_copy(&dst, &src);
    }
    free(b);
    return 0;
fail:
    dev_free(out->dev, out->data);
    out->data = NULL;
    return -1;
}

struct stream_ctx {
    struct tokenizer_stream *ts;
    engine_text_cb cb;
    void *cb_ctx;
    const struct engine *g;
    int stop;
};

/* Streams text as chat(stream=True) does: stop-token strings are removed (they are not printed). */
static int on_token(void *p, int32_t tok)
{
    struct stream_ctx *s = p;
    if (engine_is_stop(s->g, tok)) return 0;
    const char *chunk;
    size_t len;
    struct err e;
    if (tokenizer_stream_push(s->ts, tok, &chunk, &len, &e)) return 0;
    if (len && s->cb(s->cb_ctx, chunk, len)) s->stop = 1;
    return s->stop;
}

int engine_chat(struct engine *g, const struct engine_chat_request *rq, engine_text_cb cb, void *cb_ctx,
                struct engine_chat_result *res, struct err *e)
{
    memset(res, 0, sizeof *res);
    if (!g->tok) return err_set(e, "the model folder has no tokenizer.json");
    const struct model_config *c = &g->cfg;
    struct chat_grid *grids = calloc((size_t)(rq->n_images ? rq->n_images : 1), sizeof *grids);
    struct tensor img = {0}, emb = {0};
    int32_t *ids = NULL;
    int n_ids = 0, n_pieces = 0, rc = -1;
    struct stream_ctx sc = {0};
    if (!grids) return err_set(e, "out of memory");
    double t0 = time_now();
    if (rq->n_images && engine_encode_images(g, rq->images, rq->n_images, grids, &img, &n_pieces, e)) goto done;
    double t1 = time_now();
    const int max_new = rq->max_new_tokens > 0 ? rq->max_new_tokens : 1024;
    if (chat_build_ids(g->tok, rq->system, rq->msgs, rq->n_msgs, grids, rq->n_images, c->query_num, 0, &ids, &n_ids,
                       e))
        goto done;
    if (llm_check_fit(g->llm.ctx, n_ids, max_new, e)) goto done;
    if (engine_merge_embeddings(g, ids, n_ids, rq->n_images ? &img : NULL, n_pieces, &emb, e)) goto done;
    llm_truncate(&g->llm, 0);
    res->ids = malloc((size_t)max_new * sizeof *res->ids);
    if (!res->ids) { err_set(e, "out of memory"); goto done; }
    if (cb) {
        if (tokenizer_stream_init(&sc.ts, g->tok, TOKENIZER_CLEANUP_DEFAULT, e)) goto done;
        sc.cb = cb;
        sc.cb_ctx = cb_ctx;
        sc.g = g;
    }
    struct engine_gen_stats st = {0};
    if (engine_generate(g, NULL, &emb, n_ids, max_new, &rq->sampling, cb ? on_token : NULL, &sc, res->ids,
                        &res->n_ids, &st, e))
        goto done;
    if (cb) {
        const char *chunk;
        size_t len;
        tokenizer_stream_finish(sc.ts, &chunk, &len);
        if (len) cb(cb_ctx, chunk, len);
    }
    /* spec §8 non-stream clean-up: drop every id 0, a leading BOS, one trailing stop id */
    int32_t *keep = malloc((size_t)(res->n_ids ? res->n_ids : 1) * sizeof *keep);
    if (!keep) { err_set(e, "out of memory"); goto done; }
    int nk = 0;
    for (int i = 0; i < res->n_ids; i++)
        if (res->ids[i] != 0) keep[nk++] = res->ids[i];
    int s0 = nk > 0 && keep[0] == c->bos_token_id ? 1 : 0;
    if (nk > s0 && engine_is_stop(g, keep[nk - 1])) nk--;
    char *text = NULL;
    size_t tl = 0;
    int drc = tokenizer_decode(g->tok, keep + s0, nk - s0, TOKENIZER_CLEANUP_DEFAULT, &text, &tl, e);
    free(keep);
    if (drc) goto done;
    /* Python str.strip(): leading and trailing whitespace */
    size_t a = 0, z = tl;
    while (a < z && isspace((unsigned char)text[a])) a++;
    while (z > a && isspace((unsigned char)text[z - 1])) z--;
    memmove(text, text + a, z - a);
    text[z - a] = 0;
    res->text = text;
    res->n_prompt = n_ids;
    res->n_pieces = n_pieces;
    res->t_vision = t1 - t0;
    res->t_prefill = st.t_prefill;
    res->t_decode = st.t_decode;
    rc = 0;
done:
    if (rc) engine_chat_result_free(res);
    tokenizer_stream_free(sc.ts);
    if (img.data) dev_free(img.dev, img.data);
    if (emb.data) dev_free(emb.dev, emb.data);
    free(ids);
    free(grids);
    return rc;
}

void engine_chat_result_free(struct engine_chat_result *r)
{
    free(r->text);
    free(r->ids);
    memset(r, 0, sizeof *r);
}
