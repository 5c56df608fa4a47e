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
/* An entry's key is the concatenation of its images' keys: the encoded bytes when the turn gives them
 * (the server: a few KB where the decoded pixels may be 100 MB), else the decoded pixels (the REPL),
 * each preceded by its length (and the pixel size) so that no two lists share a key. The entry holds
 * the key, the grids and the encoding; key + encoding bytes count against the byte budget. */
struct cache_entry {
    int n_images;
    uint8_t *key;
    size_t key_len;
    uint64_t hash;
    struct chat_grid *grids;
    struct tensor tokens;        /* [n_pieces*query_num, d] on the embed device */
    size_t bytes;                /* key + tokens */
    int n_pieces;
    uint64_t used;               /* LRU tick */
};

struct server_cache {
    int cap, n, hits;
    uint64_t tick;
    size_t bytes, max_bytes;
    struct cache_entry *e;
};

int server_cache_init(struct server_cache **out, int capacity, struct err *e)
{
    *out = NULL;
    struct server_cache *c = calloc(1, sizeof *c);
    if (!c) return err_set(e, "out of memory");
    c->cap = capacity < 0 ? 0 : capacity;
    c->max_bytes = SERVER_CACHE_BYTES;
    if (c->cap && !(c->e = calloc((size_t)c->cap, sizeof *c->e))) {
        free(c);
        return err_set(e, "out of memory");
    }
    *out = c;
    return 0;
}

void server_cache_set_max_bytes(struct server_cache *c, size_t max_bytes) { c->max_bytes = max_bytes; }
size_t server_cache_bytes(const struct server_cache *c) { return c ? c->bytes : 0; }

static void entry_free(struct server_cache *c, struct cache_entry *x)
{
    c->bytes -= x->bytes;
    free(x->key);
    free(x->grids);
    if (x->tokens.data) dev_free(x->tokens.dev, x->tokens.data);
    memset(x, 0, sizeof *x);
}

void server_cache_free(struct server_cache *c)
{
    if (!c) return;
    for (int i = 0; i < c->n; i++) entry_free(c, &c->e[i]);
    free(c->e);
    free(c);
}

int server_cache_hits(const struct server_cache *c) { return c ? c->hits : 0; }

/* The key of a turn's image list (malloc'd); NULL when memory runs out. */
static uint8_t *images_key(const struct server_turn *t, size_t *len)
{
    size_t n = 0;
    for (int i = 0; i < t->n_images; i++)
        n += 3 * sizeof(uint64_t) + (t->img_keys ? t->img_key_len[i] : (size_t)t->images[i].w * t->images[i].h * 3);
    uint8_t *k = malloc(n ? n : 1), *p = k;
    if (!k) return NULL;
    for (int i = 0; i < t->n_images; i++) {
        const uint8_t *src = t->img_keys ? t->img_keys[i] : t->images[i].rgb;
        uint64_t hdr[3] = {t->img_keys ? t->img_key_len[i] : (size_t)t->images[i].w * t->images[i].h * 3,
                           (uint64_t)t->images[i].w, (uint64_t)t->images[i].h};
        memcpy(p, hdr, sizeof hdr);
        p += sizeof hdr;
        memcpy(p, src, (size_t)hdr[0]);
        p += hdr[0];
    }
    *len = n;
    return k;
}

static uint64_t key_hash(const uint8_t *k, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ k[i]) * 1099511628211ULL;
    return h;
}

static struct cache_entry *cache_find(struct server_cache *c, const uint8_t *key, size_t len, uint64_t h)
{
    for (int i = 0; i < c->n; i++) {
        struct cache_entry *x = &c->e[i];
        if (x->hash == h && x->key_len == len && !memcmp(x->key, key, len)) return x;
    }
    return NULL;
}

/* Stores an encoding, taking ownership of key, grids and tokens on success (returns 0); entries are
 * evicted least recently used first until it fits the count and the byte budget. An entry larger than
 * the whole budget is not stored (-1, the caller keeps what it passed). */
static int cache_put(struct server_cache *c, int n_images, uint8_t *key, size_t key_len, uint64_t h,
                     struct chat_grid *grids, struct tensor tokens, int n_pieces)
{
    const size_t bytes = key_len + (size_t)tensor_nbytes(&tokens);
    if (!c->cap || bytes > c->max_bytes) return -1;
    while (c->n && (c->n == c->cap || c->bytes + bytes > c->max_bytes)) {
        int lru = 0;
        for (int i = 1; i < c->n; i++)
            if (c->e[i].used < c->e[lru].used) lru = i;
        entry_free(c, &c->e[lru]);
        c->e[lru] = c->e[--c->n];
        memset(&c->e[c->n], 0, sizeof c->e[c->n]);
    }
    struct cache_entry *x = &c->e[c->n++];
    x->key = key;
    x->key_len = key_len;
    x->n_images = n_images;
    x->grids = grids;
    x->tokens = tokens;
    x->n_pieces = n_pieces;
    x->hash = h;
    x->bytes = bytes;
    x->used = ++c->tick;
    c->bytes += bytes;
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
    int timed_out;               /* the turn's deadline passed */
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
    if (!p->replay && p->t->deadline > 0 && time_now() > p->t->deadline) {
        p->timed_out = 1;
        return 1;
    }
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
    return (t->cancel && atomic_load(t->cancel)) || (t->deadline > 0 && time_now() > t->deadline);
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
        size_t klen = 0;
        uint8_t *key = c && c->cap ? images_key(t, &klen) : NULL;
        uint64_t h = key ? key_hash(key, klen) : 0;
        struct cache_entry *x = key ? cache_find(c, key, klen, h) : NULL;
        if (x) {
            free(key);
            x->used = ++c->tick;
            c->hits++;
            r->image_cached = 1;
            img = x->tokens;
            n_pieces = x->n_pieces;
            if (!(grids = malloc((size_t)t->n_images * sizeof *grids))) { err_set(e, "out of memory"); goto out; }
            memcpy(grids, x->grids, (size_t)t->n_images * sizeof *grids);
        } else {
            if (!(grids = calloc((size_t)t->n_images, sizeof *grids))) { free(key); err_set(e, "out of memory"); goto out; }
            if (engine_encode_images(g, t->images, t->n_images, grids, &img, &n_pieces, e)) { free(key); goto out; }
            own_img = 1;
            struct chat_grid *gc = key ? malloc((size_t)t->n_images * sizeof *gc) : NULL;
            if (gc) memcpy(gc, grids, (size_t)t->n_images * sizeof *gc);
            if (gc && cache_put(c, t->n_images, key, klen, h, gc, img, n_pieces) == 0) {
                own_img = 0;
            } else {
                free(gc);
                free(key);
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
    r->timed_out = p.timed_out || (t->num_beams > 1 && t->deadline > 0 && time_now() > t->deadline && !r->cancelled);
    r->finish = r->timed_out ? "length" : p.stopped || (n_out > 0 && engine_is_stop(g, out[n_out - 1])) || n_out < t->max_new ? "stop" : "length";
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
