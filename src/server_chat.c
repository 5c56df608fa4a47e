/* server_chat.c: one chat turn for the server and the REPL (see server.h): the image-set cache,
 * the answer text pipeline (clean-up, stop strings, whitespace strip, streaming hold-back) and the
 * turn itself: images -> cache or vision -> prompt ids -> merge -> greedy/sampled or beam generation. */
#include "server.h"

#include <ctype.h>
#include <string.h>

#include "backend.h"
#include "beam.h"
#include "tokenizer.h"

/* ---- the image-set cache ---- */
struct cache_entry {
    int n_images;
    struct image *imgs;          /* copies (the key, compared byte for byte) */
    uint64_t hash;
    struct chat_grid *grids;
    struct tensor tokens;        /* [n_pieces*query_num, d] on the embed device */
    int n_pieces;
    uint64_t used;               /* LRU tick */
};

struct server_cache {
    int cap, n, hits;
    uint64_t tick;
    struct cache_entry *e;
};

int server_cache_init(struct server_cache **out, int capacity, struct err *e)
{
    *out = NULL;
    struct server_cache *c = calloc(1, sizeof *c);
    if (!c) return err_set(e, "out of memory");
    c->cap = capacity < 0 ? 0 : capacity;
    if (c->cap && !(c->e = calloc((size_t)c->cap, sizeof *c->e))) {
        free(c);
        return err_set(e, "out of memory");
    }
    *out = c;
    return 0;
}

static void entry_free(struct cache_entry *x)
{
    for (int i = 0; i < x->n_images; i++) image_free(&x->imgs[i]);
    free(x->imgs);
    free(x->grids);
    if (x->tokens.data) dev_free(x->tokens.dev, x->tokens.data);
    memset(x, 0, sizeof *x);
}

void server_cache_free(struct server_cache *c)
{
    if (!c) return;
    for (int i = 0; i < c->n; i++) entry_free(&c->e[i]);
    free(c->e);
    free(c);
}

int server_cache_hits(const struct server_cache *c) { return c ? c->hits : 0; }

static uint64_t images_hash(const struct image *im, int n)
{
    uint64_t h = 1469598103934665603ULL;
    for (int i = 0; i < n; i++) {
        const uint64_t wh = ((uint64_t)im[i].w << 32) | (uint32_t)im[i].h;
        h = (h ^ wh) * 1099511628211ULL;
        const size_t nb = (size_t)im[i].w * im[i].h * 3;
        for (size_t k = 0; k < nb; k++) h = (h ^ im[i].rgb[k]) * 1099511628211ULL;
    }
    return h;
}

static struct cache_entry *cache_find(struct server_cache *c, const struct image *im, int n, uint64_t h)
{
    for (int i = 0; i < c->n; i++) {
        struct cache_entry *x = &c->e[i];
        if (x->hash != h || x->n_images != n) continue;
        int same = 1;
        for (int k = 0; k < n && same; k++)
            same = x->imgs[k].w == im[k].w && x->imgs[k].h == im[k].h &&
                   !memcmp(x->imgs[k].rgb, im[k].rgb, (size_t)im[k].w * im[k].h * 3);
        if (same) return x;
    }
    return NULL;
}

/* Stores an encoding in the least recently used slot, taking ownership of tokens and grids on success
 * (returns 0); on failure (out of memory) the caller keeps them. */
static int cache_put(struct server_cache *c, const struct image *im, int n, uint64_t h, struct chat_grid *grids,
                     struct tensor tokens, int n_pieces)
{
    struct image *copy = calloc((size_t)n, sizeof *copy);
    int ok = copy != NULL;
    for (int k = 0; ok && k < n; k++) {
        size_t nb = (size_t)im[k].w * im[k].h * 3;
        if (!(copy[k].rgb = malloc(nb))) { ok = 0; break; }
        memcpy(copy[k].rgb, im[k].rgb, nb);
        copy[k].w = im[k].w;
        copy[k].h = im[k].h;
    }
    if (!ok) {
        for (int k = 0; copy && k < n; k++) image_free(&copy[k]);
        free(copy);
        return -1;
    }
    int slot = c->n < c->cap ? c->n++ : 0;
    if (slot == 0 && c->n == c->cap)
        for (int i = 0; i < c->n; i++)
            if (c->e[i].used < c->e[slot].used) slot = i;
    struct cache_entry *x = &c->e[slot];
    entry_free(x);
    x->imgs = copy;
    x->n_images = n;
    x->grids = grids;
    x->tokens = tokens;
    x->n_pieces = n_pieces;
    x->hash = h;
    x->used = ++c->tick;
    return 0;
}

/* ---- the answer text pipeline ---- */
struct pipe {
    const struct server_turn *t;
    const struct engine *g;
    struct tokenizer_stream *ts;
    char *acc;                   /* the decoded answer so far (before strip) */
    size_t len, cap, emitted;
    int stopped;                 /* a stop string matched: acc ends right before it */
    int seen_tok;                /* a non-zero id came already (a leading BOS is dropped only first) */
    int n_gen;
    int replay;                  /* beam search: ids replayed after the search, no cancel checks */
    int oom;
};

/* Longest suffix of acc that is a proper prefix of a stop string (it may still become one). */
static size_t holdback(const struct pipe *p)
{
    size_t hb = 0;
    for (int i = 0; i < p->t->n_stop; i++) {
        size_t sl = strlen(p->t->stop[i]);
        for (size_t k = sl - 1 < p->len ? sl - 1 : p->len; k > hb; k--)
            if (!memcmp(p->acc + p->len - k, p->t->stop[i], k)) {
                hb = k;
                break;
            }
    }
    return hb;
}

/* Emits what is final: from the first non-space byte, up to the held-back tail, without trailing
 * spaces (they are emitted when something follows them). Python's strip() is ASCII here, as in mm.c. */
static void pipe_emit(struct pipe *p, int final)
{
    size_t a = 0;
    while (a < p->len && isspace((unsigned char)p->acc[a])) a++;
    if (a == p->len) return;
    size_t z = final ? p->len : p->len - holdback(p);
    while (z > a && isspace((unsigned char)p->acc[z - 1])) z--;
    size_t from = p->emitted > a ? p->emitted : a;
    if (z > from && p->t->cb) p->t->cb(p->t->cb_ctx, p->acc + from, z - from);
    if (z > from) p->emitted = z;
}

static void pipe_add(struct pipe *p, const char *s, size_t n)
{
    if (p->stopped || !n) return;
    if (p->len + n + 1 > p->cap) {
        size_t nc = (p->len + n + 1) * 2;
        char *x = realloc(p->acc, nc);
        if (!x) { p->oom = 1; return; }
        p->acc = x;
        p->cap = nc;
    }
    const size_t old = p->len;
    memcpy(p->acc + p->len, s, n);
    p->len += n;
    p->acc[p->len] = 0;
    /* a new match must end in the new bytes */
    size_t cut = p->len + 1;
    for (int i = 0; i < p->t->n_stop; i++) {
        size_t sl = strlen(p->t->stop[i]);
        size_t from = old >= sl ? old - sl + 1 : 0;
        char *m = strstr(p->acc + from, p->t->stop[i]);
        if (m && (size_t)(m - p->acc) < cut) cut = (size_t)(m - p->acc);
    }
    if (cut <= p->len) {
        p->len = cut;
        p->acc[cut] = 0;
        p->stopped = 1;
    }
    pipe_emit(p, p->stopped);
}

static int pipe_token(void *ctx, int32_t tok)
{
    struct pipe *p = ctx;
    p->n_gen++;
    if (!p->replay && p->t->cancel && atomic_load(p->t->cancel)) return 1;
    if (engine_is_stop(p->g, tok) || tok == 0) return 0;
    if (!p->seen_tok++ && tok == p->g->cfg.bos_token_id) return 0;
    const char *chunk;
    size_t len;
    struct err e;
    if (tokenizer_stream_push(p->ts, tok, &chunk, &len, &e)) return 0;
    pipe_add(p, chunk, len);
    return p->stopped || p->oom;
}

static int beam_cancel(void *ctx)
{
    const struct server_turn *t = ctx;
    return t->cancel && atomic_load(t->cancel);
}

/* ---- the turn ---- */
static int plan_grids(const struct engine *g, const struct server_turn *t, struct chat_grid *grids, struct err *e)
{
    for (int i = 0; i < t->n_images; i++) {
        struct image_slice_plan pl;
        if (image_slice_plan(&pl, t->images[i].w, t->images[i].h, g->pp.scale_resolution, g->pp.patch_size,
                             g->pp.max_slice_nums, e))
            return err_prefix(e, "image %d", i + 1);
        grids[i].cols = pl.cols;
        grids[i].rows = pl.rows;
    }
    return 0;
}

int server_prompt_tokens(const struct engine *g, const struct server_turn *t, int *n, struct err *e)
{
    if (!g->tok) return err_set(e, "the model folder has no tokenizer.json");
    struct chat_grid *grids = calloc((size_t)t->n_images + 1, sizeof *grids);
    int32_t *ids = NULL;
    if (!grids) return err_set(e, "out of memory");
    int rc = plan_grids(g, t, grids, e);
    if (!rc)
        rc = chat_build_ids(g->tok, t->system, t->msgs, t->n_msgs, grids, t->n_images, g->cfg.query_num, 0, &ids, n, e);
    free(ids);
    free(grids);
    return rc;
}

int server_turn_run(struct engine *g, struct server_cache *c, const struct server_turn *t,
                    struct server_turn_result *r, int *stage, struct err *e)
{
    memset(r, 0, sizeof *r);
    *stage = 0;
    if (!g->tok) return err_set(e, "the model folder has no tokenizer.json");
    const int Q = g->cfg.query_num;
    struct chat_grid *grids = NULL;
    struct tensor img = {0}, emb = {0};
    int n_pieces = 0, n_ids = 0, rc = -1, own_img = 0;
    int32_t *ids = NULL, *out = NULL;
    struct pipe p = {.t = t, .g = g};
    double t0 = time_now();
    if (t->n_images) {
        uint64_t h = images_hash(t->images, t->n_images);
        struct cache_entry *x = c ? cache_find(c, t->images, t->n_images, h) : NULL;
        if (x) {
            x->used = ++c->tick;
            c->hits++;
            r->image_cached = 1;
            img = x->tokens;
            n_pieces = x->n_pieces;
            if (!(grids = malloc((size_t)t->n_images * sizeof *grids))) { err_set(e, "out of memory"); goto out; }
            memcpy(grids, x->grids, (size_t)t->n_images * sizeof *grids);
        } else {
            if (!(grids = calloc((size_t)t->n_images, sizeof *grids))) { err_set(e, "out of memory"); goto out; }
            if (engine_encode_images(g, t->images, t->n_images, grids, &img, &n_pieces, e)) goto out;
            own_img = 1;
            if (c && c->cap) {
                struct chat_grid *gc = malloc((size_t)t->n_images * sizeof *gc);
                if (gc) memcpy(gc, grids, (size_t)t->n_images * sizeof *gc);
                if (gc && cache_put(c, t->images, t->n_images, h, gc, img, n_pieces) == 0) own_img = 0;
                else free(gc);
            }
        }
    }
    r->t_vision = time_now() - t0;
    if (chat_build_ids(g->tok, t->system, t->msgs, t->n_msgs, grids, t->n_images, Q, 0, &ids, &n_ids, e)) goto out;
    if (t->max_new < 1) { err_set(e, "max_tokens must be at least 1"); goto out; }
    if ((int64_t)n_ids + t->max_new > g->llm.ctx) {
        err_set(e, "this model's maximum context length is %lld tokens; the prompt has %d tokens and %d were "
                   "requested for the answer (%lld too many)",
                (long long)g->llm.ctx, n_ids, t->max_new, (long long)n_ids + t->max_new - g->llm.ctx);
        goto out;
    }
    *stage = 1;
    if (engine_merge_embeddings(g, ids, n_ids, t->n_images ? &img : NULL, n_pieces, &emb, e)) goto out;
    llm_truncate(&g->llm, 0);
    if (!(out = malloc((size_t)t->max_new * sizeof *out))) { err_set(e, "out of memory"); goto out; }
    if (tokenizer_stream_init(&p.ts, g->tok, TOKENIZER_CLEANUP_DEFAULT, e)) goto out;
    struct engine_gen_stats st = {0};
    int n_out = 0;
    if (t->num_beams > 1) {
        struct beam_params bp = {.num_beams = t->num_beams, .length_penalty = t->length_penalty,
                                 .repetition_penalty = t->sp.repetition_penalty, .max_new = t->max_new};
        if (beam_generate(g, NULL, &emb, n_ids, &bp, beam_cancel, (void *)t, out, &n_out, &st, e)) goto out;
        p.replay = 1;
        for (int i = 0; i < n_out && !pipe_token(&p, out[i]); i++) {}
        p.n_gen = n_out;
    } else {
        if (engine_generate(g, NULL, &emb, n_ids, t->max_new, &t->sp, pipe_token, &p, out, &n_out, &st, e)) goto out;
    }
    const char *chunk;
    size_t len;
    tokenizer_stream_finish(p.ts, &chunk, &len);
    pipe_add(&p, chunk, len);
    if (p.oom) { err_set(e, "out of memory"); goto out; }
    pipe_emit(&p, 1);
    /* the answer: strip(cut(decoded)) */
    size_t a = 0, z = p.len;
    while (a < z && isspace((unsigned char)p.acc[a])) a++;
    while (z > a && isspace((unsigned char)p.acc[z - 1])) z--;
    if (!(r->text = malloc(z - a + 1))) { err_set(e, "out of memory"); goto out; }
    memcpy(r->text, p.acc ? p.acc + a : "", z - a);
    r->text[z - a] = 0;
    r->n_prompt = n_ids;
    r->n_gen = n_out;
    r->cancelled = t->cancel && atomic_load(t->cancel);
    r->finish = p.stopped || (n_out > 0 && engine_is_stop(g, out[n_out - 1])) || n_out < t->max_new ? "stop" : "length";
    r->t_prefill = st.t_prefill;
    r->t_decode = st.t_decode;
    rc = 0;
out:
    tokenizer_stream_free(p.ts);
    free(p.acc);
    if (own_img && img.data) dev_free(img.dev, img.data);
    if (emb.data) dev_free(emb.dev, emb.data);
    free(ids);
    free(out);
    free(grids);
    return rc;
}

void server_turn_result_free(struct server_turn_result *r)
{
    free(r->text);
    memset(r, 0, sizeof *r);
}
