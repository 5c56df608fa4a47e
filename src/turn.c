/* turn.c: one chat turn (turn.h): prepare (grids, prompt ids, context check) and run (images ->
 * cache or vision -> merge -> generation -> the answer text pipeline). */
#include "turn.h"

#include <ctype.h>
#include <string.h>

#include "backend.h"
#include "beam.h"
#include "llm.h"
#include "tokenizer.h"

struct turn {
    struct turn_request rq;         /* the caller's request (its pointers stay the caller's) */
    struct chat_grid *grids;        /* [n_images]: planned from the image sizes */
    int32_t *ids;                   /* the prompt */
    int n_ids;
    int max_new;
    struct turn_run *run;           /* while it runs (turn_run, or turn_start .. turn_finish) */
};

/* ---- the answer text pipeline ---- */
struct pipe {
    const struct turn_request *t;
    const struct turn_io *io;
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
    int raw;                     /* constrained or a raw prompt: every id's bytes as decoded (no id-0 / BOS drop,
                                    no clean-up) */
    int verbatim;                /* a raw prompt: no strip either (leading and trailing spaces are the answer's) */
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
 * spaces (they are emitted when something follows them). Python's strip() is ASCII here (spec §8). */
static void pipe_emit(struct pipe *p, int final)
{
    size_t a = 0;
    while (!p->verbatim && a < p->len && isspace((unsigned char)p->acc[a])) a++;
    if (a == p->len) return;
    size_t z = final ? p->len : p->len - holdback(p);
    while (!p->verbatim && z > a && isspace((unsigned char)p->acc[z - 1])) z--;
    size_t from = p->emitted > a ? p->emitted : a;
    if (z > from && p->io->cb) p->io->cb(p->io->cb_ctx, p->acc + from, z - from);
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
    if (!p->replay && p->io->cancel && atomic_load(p->io->cancel)) return 1;
    if (!p->replay && p->io->deadline > 0 && time_now() > p->io->deadline) {
        p->timed_out = 1;
        return 1;
    }
    if (engine_is_stop(p->g, tok) || (tok == 0 && !p->raw)) return 0;
    if (!p->seen_tok++ && tok == engine_config(p->g)->bos_token_id && !p->raw) return 0;
    const char *chunk;
    size_t len;
    struct err e;
    if (tokenizer_stream_push(p->ts, tok, &chunk, &len, &e)) return 0;
    pipe_add(p, chunk, len);
    return p->stopped || p->oom;
}

static int beam_cancel(void *ctx)
{
    const struct turn_io *io = ctx;
    return (io->cancel && atomic_load(io->cancel)) || (io->deadline > 0 && time_now() > io->deadline);
}

/* ---- the turn ---- */
static void run_free(struct turn *t);

static int turn_is_raw(const struct turn_request *rq) { return rq->raw_text || rq->raw_ids; }

/* A raw prompt's ids: the text tokenized (with the post-processor, as HF's tokenizer(text)) or the ids as given. */
static int raw_ids(struct turn *t, const struct engine *g, struct err *e)
{
    const struct turn_request *rq = &t->rq;
    if (rq->n_msgs || rq->n_images) return err_set(e, "a raw prompt takes no messages or images");
    const struct tokenizer *tok = engine_tokenizer(g);
    if (rq->raw_text) {
        if (tokenizer_encode(tok, rq->raw_text, strlen(rq->raw_text), TOKENIZER_ADD_SPECIAL, &t->ids, &t->n_ids, e))
            return -1;
    } else {
        if (rq->n_raw_ids < 1) return err_set(e, "the prompt holds no tokens");
        if (engine_check_ids(g, rq->raw_ids, rq->n_raw_ids, e)) return -1;
        if (!(t->ids = malloc((size_t)rq->n_raw_ids * sizeof *t->ids))) return err_set(e, "out of memory");
        memcpy(t->ids, rq->raw_ids, (size_t)rq->n_raw_ids * sizeof *t->ids);
        t->n_ids = rq->n_raw_ids;
    }
    if (t->n_ids < 1) return err_set(e, "the prompt holds no tokens");
    /* image placeholders would wait for image rows that a raw prompt never has */
    struct chat_bound *b = NULL;
    int nb = 0;
    if (chat_image_bounds(tok, t->ids, t->n_ids, &b, &nb, e)) return -1;
    free(b);
    if (nb) return err_set(e, "the prompt holds %d image placeholder(s) (<image>...</image>), but a raw prompt takes no images", nb);
    return 0;
}

int turn_prepare(struct turn **out, const struct engine *g, const struct turn_request *rq, struct err *e)
{
    *out = NULL;
    const struct tokenizer *tok = engine_tokenizer(g);
    const struct preprocessor_config *pp = engine_preprocessor(g);
    if (!tok) return err_set(e, "the model folder has no tokenizer.json");
    if (rq->max_new < 0) return err_set(e, "the answer length must be at least 1 token");
    if (rq->n_stop < 0 || rq->n_stop > TURN_MAX_STOP) return err_set(e, "at most %d stop strings", TURN_MAX_STOP);
    for (int i = 0; i < rq->n_stop; i++)
        if (!rq->stop[i] || !rq->stop[i][0] || strlen(rq->stop[i]) > TURN_MAX_STOP_LEN)
            return err_set(e, "each stop string must be non-empty and at most %d bytes", TURN_MAX_STOP_LEN);
    if (rq->num_beams > 1 && rq->ignore_eos) return err_set(e, "beam search cannot ignore the stop ids");
    if (rq->grammar && !rq->vocab) return err_set(e, "a grammar needs the vocabulary tries (turn_vocab_init)");
    if (rq->grammar && (rq->num_beams > 1 || rq->ignore_eos))
        return err_set(e, "constrained decoding (response_format) works with sampling or greedy, not with %s",
                       rq->num_beams > 1 ? "beam search" : "ignore_eos");
    if (rq->logprobs && rq->num_beams > 1) return err_set(e, "logprobs are not available with beam search");
    if (rq->top_logprobs < 0 || rq->top_logprobs > SAMPLER_MAX_TOP_LOGPROBS || (rq->top_logprobs && !rq->logprobs))
        return err_set(e, "top_logprobs must be 0..%d, and needs logprobs", SAMPLER_MAX_TOP_LOGPROBS);
    struct turn *t = calloc(1, sizeof *t);
    if (!t || !(t->grids = calloc((size_t)rq->n_images + 1, sizeof *t->grids))) {
        free(t);
        return err_set(e, "out of memory");
    }
    t->rq = *rq;
    for (int i = 0; i < rq->n_images; i++) {
        struct image_slice_plan pl;
        if (image_slice_plan(&pl, rq->images[i].w, rq->images[i].h, pp->scale_resolution, pp->patch_size,
                             pp->max_slice_nums, e)) {
            err_prefix(e, "image %d", i + 1);
            goto fail;
        }
        t->grids[i].cols = pl.cols;
        t->grids[i].rows = pl.rows;
    }
    if (turn_is_raw(rq)) {
        if (raw_ids(t, g, e)) goto fail;
    } else if (chat_build_ids(tok, rq->system, rq->msgs, rq->n_msgs, t->grids, rq->n_images,
                              engine_config(g)->query_num, 0, &t->ids, &t->n_ids, e)) {
        goto fail;
    }
    const int64_t ctx = engine_ctx(g), room = ctx - t->n_ids;
    if (rq->max_new > 0) {
        if (llm_check_fit(ctx, t->n_ids, rq->max_new, e)) goto fail;
        t->max_new = rq->max_new;
    } else {
        if (llm_check_fit(ctx, t->n_ids, 1, e)) goto fail; /* no room for one token */
        const int want = rq->max_new_default > 0 ? rq->max_new_default : TURN_DEFAULT_MAX_NEW;
        t->max_new = room < want ? (int)room : want;
    }
    *out = t;
    return 0;
fail:
    turn_free(t);
    return -1;
}

int turn_prompt_tokens(const struct turn *t) { return t->n_ids; }
int turn_host_sampled(const struct turn *t) { return t->rq.grammar || t->rq.logprobs; }

int turn_vocab_init(struct grammar_vocab **out, const struct engine *g, struct err *e)
{
    *out = NULL;
    const struct tokenizer *tok = engine_tokenizer(g);
    if (!tok) return err_set(e, "the model folder has no tokenizer.json");
    const int V = engine_config(g)->vocab_size;
    int32_t stop[16];
    int n = 0;
    for (int32_t i = 0; i < V && n < 16; i++)
        if (engine_is_stop(g, i)) stop[n++] = i;
    return grammar_vocab_init(out, tok, stop, n, NULL, 0, e);
}
int turn_max_new(const struct turn *t) { return t->max_new; }

void turn_free(struct turn *t)
{
    if (!t) return;
    run_free(t);
    free(t->grids);
    free(t->ids);
    free(t);
}

/* The turn's image rows: from the cache, or encoded (and offered to the cache). *own: the caller frees
 * img. The grids the encoder computed must be the ones the prompt was built with. */
static int turn_images(struct turn *t, struct engine *g, struct imgcache *cache, struct tensor *img, int *own,
                       int *n_pieces, int *cached, uint64_t *hash, struct err *e)
{
    const struct turn_request *rq = &t->rq;
    struct chat_grid *grids = calloc((size_t)rq->n_images, sizeof *grids);
    struct imgcache_key key = {0};
    int rc = -1;
    if (!grids) return err_set(e, "out of memory");
    /* without their encoded bytes the images are keyed by their pixels: an image still decoding
     * (image_decode_async) is waited for then; with the bytes the tower starts on its first rows */
    for (int i = 0; !rq->img_keys && i < rq->n_images; i++)
        if (image_wait_rows(&rq->images[i], rq->images[i].h, e)) {
            err_prefix(e, "image %d", i + 1);
            goto out;
        }
    /* the key also names the images' rows in the KV blocks' keys (run_keys), so it is made with or without a cache */
    if (imgcache_key_init(&key, rq->images, rq->n_images, rq->img_keys, rq->img_key_len, cache != NULL)) {
        err_set(e, "out of memory");
        goto out;
    }
    *hash = key.hash;
    if (imgcache_get(cache, &key, rq->n_images, grids, img, n_pieces)) {
        *cached = 1;
    } else {
        if (engine_encode_images(g, rq->images, rq->n_images, grids, img, n_pieces, e)) goto out;
        *own = imgcache_put(cache, &key, rq->n_images, grids, *img, *n_pieces) != 0;
    }
    for (int i = 0; i < rq->n_images; i++)
        if (grids[i].cols != t->grids[i].cols || grids[i].rows != t->grids[i].rows) {
            err_set(e, "image %d: encoded as a %dx%d grid, but the prompt was built for %dx%d", i + 1, grids[i].cols,
                    grids[i].rows, t->grids[i].cols, t->grids[i].rows);
            goto out;
        }
    rc = 0;
out:
    imgcache_key_free(&key);
    free(grids);
    return rc;
}

/* What a running turn holds. */
struct turn_run {
    struct engine *g;
    struct turn_io io;
    int slot;
    struct tensor img, emb;         /* the image rows, the prompt embedding */
    int own_img, n_pieces, image_cached;
    struct pipe p;
    int32_t *out;                   /* [max_new] generated ids */
    int n_out;
    struct sampler smp;             /* staged runs: the host sampler */
    int smp_ready;
    float *logits;                  /* staged runs: [V] for the prefill's last row */
    struct grammar_state gs;        /* constrained: the automaton after the ids so far */
    struct grammar_scratch *gsc;
    uint32_t *allow;                /* constrained: the step's mask */
    struct turn_logprob *lp;        /* with logprobs: [max_new] */
    int n_lp;
    int64_t fed;                    /* staged runs: tokens in the slot (the prompt's rows, then generated ids fed
                                       again after a preemption) */
    int64_t need;                   /* staged runs: tokens the slot must hold before the next decode step: the
                                       prompt, or after a preemption the prompt and out[0..n_out-1) */
    int n_preempted;                /* times turn_preempt emptied the slot of a turn still generating */
    uint64_t img_hash;              /* the image list's content key (imgcache.h), for the KV blocks' keys */
    int matched, staged;            /* the prefix lookup is done; turn_start ran (the slot is let go at the end) */
    int64_t reused;                 /* prompt tokens whose KV came from cached blocks (engine_slot_match) */
    int n_emit;                     /* staged runs: ids of out[] the text pipe has seen */
    int ended;                      /* staged runs: no token follows (a stop id, max_new, an empty mask) */
    int finished;
    double t0, t_vision, t_prefill0, t_decode0, t_prefill, t_decode, t_first;
};

static void run_free(struct turn *t)
{
    struct turn_run *u = t->run;
    if (!u) return;
    tokenizer_stream_free(u->p.ts);
    free(u->p.acc);
    if (u->own_img && u->img.data) dev_free(u->img.dev, u->img.data);
    if (u->emb.data) dev_free(u->emb.dev, u->emb.data);
    if (u->smp_ready) sampler_free(&u->smp);
    free(u->logits);
    grammar_scratch_free(u->gsc);
    free(u->allow);
    free(u->lp);
    free(u->out);
    free(u);
    t->run = NULL;
}

/* Images (cache or vision), the prompt embedding, the text pipe. *input_error: whose fault a failure is. */
static int run_begin(struct turn *t, struct engine *g, const struct turn_io *io, int slot, int *input_error,
                     struct err *e)
{
    static const struct turn_io no_io;
    const struct turn_request *rq = &t->rq;
    run_free(t);
    struct turn_run *u = calloc(1, sizeof *u);
    if (!u) return err_set(e, "out of memory");
    t->run = u;
    u->g = g;
    u->io = io ? *io : no_io;
    u->slot = slot;
    u->p = (struct pipe){.t = rq, .io = &u->io, .g = g, .raw = rq->grammar || turn_is_raw(rq), .verbatim = turn_is_raw(rq)};
    u->t0 = time_now();
    *input_error = 1;
    if (rq->n_images &&
        turn_images(t, g, u->io.cache, &u->img, &u->own_img, &u->n_pieces, &u->image_cached, &u->img_hash, e))
        return -1;
    u->t_vision = time_now() - u->t0;
    *input_error = 0;
    if (engine_merge_embeddings(g, t->ids, t->n_ids, rq->n_images ? &u->img : NULL, u->n_pieces, &u->emb, e)) return -1;
    if (!(u->out = malloc((size_t)t->max_new * sizeof *u->out))) return err_set(e, "out of memory");
    if (tokenizer_stream_init(&u->p.ts, engine_tokenizer(g), u->p.raw ? 0 : TOKENIZER_CLEANUP_DEFAULT, e)) return -1;
    if (rq->logprobs && !(u->lp = calloc((size_t)t->max_new, sizeof *u->lp))) return err_set(e, "out of memory");
    if (rq->grammar) {
        grammar_state_init(&u->gs, rq->grammar);
        if (grammar_scratch_init(&u->gsc, rq->vocab, e)) return -1;
        if (!(u->allow = malloc(grammar_mask_words(grammar_vocab_size(rq->vocab)) * sizeof *u->allow)))
            return err_set(e, "out of memory");
    }
    return 0;
}

/* ---- prefix reuse: the keys of the KV blocks ----
 * Token i of the slot holds the prompt's id i, then the generated ids fed back. Its content for the key
 * is the id, or, for an image row (a placeholder position: chat_image_bounds), the image list's key and
 * the row's index, tagged by the top bit: placeholders are the same ids for any image, so two images
 * never share a block, and the same images (the same list: a piece's rows depend on its batch) do. */
static int run_keys(const struct turn *t, int64_t n, uint64_t **keys, int *n_keys, struct err *e)
{
    const struct turn_run *u = t->run;
    const int nb = (int)(n / KV_BLOCK);
    *keys = NULL;
    *n_keys = 0;
    if (nb < 1) return 0;
    uint64_t *c = malloc((size_t)n * sizeof *c), *k = malloc((size_t)nb * sizeof *k);
    struct chat_bound *b = NULL;
    int n_b = 0, rc = -1;
    if (!c || !k) {
        err_set(e, "out of memory");
        goto out;
    }
    for (int64_t i = 0; i < n; i++) c[i] = (uint64_t)(uint32_t)(i < t->n_ids ? t->ids[i] : u->out[i - t->n_ids]);
    if (t->rq.n_images) {
        if (chat_image_bounds(engine_tokenizer(u->g), t->ids, t->n_ids, &b, &n_b, e)) goto out;
        int64_t row = 0;
        for (int j = 0; j < n_b; j++)
            for (int p = b[j].start; p < b[j].end && p < n; p++, row++) { /* only the n tokens keyed */
                const uint64_t r = (uint64_t)row;
                c[p] = 1ull << 63 | kvpool_hash(u->img_hash, &r, 1) >> 1;
            }
    }
    uint64_t prev = 0;
    for (int j = 0; j < nb; j++) k[j] = prev = kvpool_hash(prev, c + (size_t)j * KV_BLOCK, KV_BLOCK);
    *keys = k;
    *n_keys = nb;
    k = NULL;
    rc = 0;
out:
    free(b);
    free(c);
    free(k);
    return rc;
}

/* Maps the cached blocks the slot's first `limit` tokens start with into the turn's slot (emptied first):
 * for a new turn limit is the prompt less its last token (whose logits pick the first token), for one
 * resumed after a preemption every token it held. *reused: tokens mapped. */
static int run_match(struct turn *t, int64_t limit, int64_t *reused, struct err *e)
{
    struct turn_run *u = t->run;
    uint64_t *keys;
    int nk;
    *reused = 0;
    u->matched = 1;
    if (run_keys(t, limit / KV_BLOCK * KV_BLOCK, &keys, &nk, e)) return -1;
    *reused = engine_slot_match(u->g, u->slot, keys, nk); /* also empties the slot when nk is 0 */
    free(keys);
    return 0;
}

/* Offers the full blocks of what the slot holds (the prompt or its first part, then the generated ids fed
 * back) for reuse. Best effort: without memory for the keys nothing is offered. */
static void run_publish(struct turn *t)
{
    struct turn_run *u = t->run;
    const int64_t n = engine_slot_len(u->g, u->slot);
    uint64_t *keys;
    int nk;
    struct err e = {{0}};
    if (n < KV_BLOCK || n > t->n_ids + u->n_out || run_keys(t, n, &keys, &nk, &e)) return;
    engine_slot_publish(u->g, u->slot, keys, nk);
    free(keys);
}

/* The text pipe's end and the result. */
static int run_end(struct turn *t, struct turn_result *r, struct err *e)
{
    struct turn_run *u = t->run;
    const struct turn_request *rq = &t->rq;
    struct pipe *p = &u->p;
    const char *chunk;
    size_t len;
    tokenizer_stream_finish(p->ts, &chunk, &len);
    pipe_add(p, chunk, len);
    if (p->oom) return err_set(e, "out of memory");
    pipe_emit(p, 1);
    /* the answer: strip(cut(decoded)) */
    size_t a = 0, z = p->len;
    while (!p->verbatim && a < z && isspace((unsigned char)p->acc[a])) a++;
    while (!p->verbatim && z > a && isspace((unsigned char)p->acc[z - 1])) z--;
    if (!(r->text = malloc(z - a + 1))) return err_set(e, "out of memory");
    memcpy(r->text, p->acc ? p->acc + a : "", z - a);
    r->text[z - a] = 0;
    const int n_out = u->n_out;
    r->ids = u->out;
    u->out = NULL;
    r->n_prompt = t->n_ids;
    r->n_gen = n_out;
    r->n_pieces = u->n_pieces;
    r->n_prompt_cached = (int)u->reused;
    r->n_preempted = u->n_preempted;
    r->image_cached = u->image_cached;
    r->cancelled = u->io.cancel && atomic_load(u->io.cancel);
    r->timed_out = p->timed_out ||
                   (rq->num_beams > 1 && u->io.deadline > 0 && time_now() > u->io.deadline && !r->cancelled);
    r->finish = r->timed_out ? "length"
                : p->stopped || (n_out > 0 && engine_is_stop(u->g, r->ids[n_out - 1])) || n_out < t->max_new ? "stop"
                                                                                                           : "length";
    r->t_vision = u->t_vision;
    r->t_prefill = u->t_prefill;
    r->t_decode = u->t_decode;
    r->t_first = u->t_first;
    r->lp = u->lp;
    r->n_lp = u->n_lp;
    u->lp = NULL;
    return 0;
}

/* turn_run for a host-sampled turn: the staged calls on slot 0, one decode step at a time. */
static int run_staged_alone(struct turn *t, struct engine *g, const struct turn_io *io, struct turn_result *r,
                            struct err *e)
{
    int input_error = 0, rc;
    if (turn_start(t, g, io, 0, &input_error, e)) {
        r->input_error = input_error;
        return -1;
    }
    while ((rc = turn_prefill(t, engine_max_batch(g), e)) == 0) {}
    if (rc < 0) goto fail;
    while (!turn_done(t)) {
        const int slot = 0;
        const int32_t tok = turn_pending(t);
        if (engine_decode_batch(g, &slot, &tok, 1, t->run->logits, e) || turn_step(t, t->run->logits, e) < 0) goto fail;
        turn_emit(t);
    }
    if (turn_finish(t, r, e)) goto fail;
    return 0;
fail:
    turn_abort(t);
    return -1;
}

int turn_run(struct turn *t, struct engine *g, const struct turn_io *io, struct turn_result *r, struct err *e)
{
    const struct turn_request *rq = &t->rq;
    memset(r, 0, sizeof *r);
    if (turn_host_sampled(t) && rq->num_beams <= 1) return run_staged_alone(t, g, io, r, e);
    int rc = -1;
    if (run_begin(t, g, io, 0, &r->input_error, e)) goto out;
    struct turn_run *u = t->run;
    if (rq->num_beams > 1) engine_truncate(g, 0);
    else if (run_match(t, t->n_ids - 1, &u->reused, e)) goto out; /* slot 0: the prompt's cached blocks, the rest fed below */
    const double t_gen = time_now();
    struct engine_gen_stats st = {0};
    if (rq->num_beams > 1) {
        struct beam_params bp = {.num_beams = rq->num_beams, .length_penalty = rq->length_penalty,
                                 .repetition_penalty = rq->sp.repetition_penalty, .max_new = t->max_new};
        if (beam_generate(g, NULL, &u->emb, t->n_ids, &bp, beam_cancel, &u->io, u->out, &u->n_out, &st, e)) goto out;
        u->p.replay = 1;
        for (int i = 0; i < u->n_out && !pipe_token(&u->p, u->out[i]); i++) {}
        u->p.n_gen = u->n_out;
    } else {
        struct tensor rest = tensor_rows_view(&u->emb, u->reused, t->n_ids - u->reused);
        struct engine_gen q = {.embeds = &rest, .n = t->n_ids - u->reused, .max_new = t->max_new, .sp = &rq->sp,
                               .ignore_eos = rq->ignore_eos, .cb = pipe_token, .cb_ctx = &u->p};
        if (engine_generate(g, &q, u->out, &u->n_out, &st, e)) goto out;
        run_publish(t);
    }
    u->t_prefill = st.t_prefill;
    u->t_decode = st.t_decode;
    u->t_first = t_gen - u->t0 + st.t_prefill;
    rc = run_end(t, r, e);
out:
    if (rc) {
        free(r->text);
        r->text = NULL;
    }
    run_free(t);
    return rc;
}

/* ---- staged running (the scheduler) ---- */
int turn_start(struct turn *t, struct engine *g, const struct turn_io *io, int slot, int *input_error, struct err *e)
{
    *input_error = 0;
    if (t->rq.num_beams > 1) return err_set(e, "beam search runs alone (turn_run), not staged");
    if (run_begin(t, g, io, slot, input_error, e)) goto fail;
    struct turn_run *u = t->run;
    const int V = engine_config(g)->vocab_size;
    if (sampler_init(&u->smp, &t->rq.sp, V) || !(u->logits = malloc((size_t)V * sizeof *u->logits))) {
        err_set(e, "out of memory");
        goto fail;
    }
    u->smp_ready = 1;
    u->staged = 1;
    u->need = t->n_ids;
    engine_slot_truncate(g, slot, 0); /* the prefix lookup waits for the first prefill chunk (turn_prefill) */
    return 0;
fail:
    run_free(t);
    return -1;
}

int turn_slot(const struct turn *t) { return t->run ? t->run->slot : -1; }

int32_t turn_pending(const struct turn *t)
{
    const struct turn_run *u = t->run;
    return u && !u->finished && !u->ended && u->fed == u->need && u->n_out > 0 ? u->out[u->n_out - 1] : -1;
}

/* Takes a picked token; returns whether generation ends with it (a stop id, max_new). The text
 * pipe sees it at the next run_emit. */
static int run_take(struct turn *t, int32_t tok)
{
    struct turn_run *u = t->run;
    u->out[u->n_out++] = tok;
    if ((!t->rq.ignore_eos && engine_is_stop(u->g, tok)) || u->n_out == t->max_new) u->ended = 1;
    return u->ended;
}

/* The text pipe over the ids taken since the last call (streaming, stop strings, cancel, the
 * deadline). The turn finishes when the pipe stops it (ids taken after the one that stopped it are
 * dropped) or when generation ended. Returns finished. */
static int run_emit(struct turn *t)
{
    struct turn_run *u = t->run;
    while (!u->finished && u->n_emit < u->n_out)
        if (pipe_token(&u->p, u->out[u->n_emit++])) {
            u->finished = 1;
            u->n_out = u->n_emit;
            if (u->n_lp > u->n_out) u->n_lp = u->n_out;
        }
    if (u->ended) u->finished = 1;
    return u->finished;
}

/* The one sampling step of the host path (staged turns, and turn_run's host-sampled turns): the grammar's
 * mask with the remaining budget, the sampler (penalty, mask, pick), the automaton, the logprobs of the
 * row picked from. Returns 1 when the turn ends here, 0 to go on, -1 on an error. An empty mask (nothing
 * can continue the value within the budget) ends the turn without a token. */
static int run_pick(struct turn *t, float *logits, struct err *e)
{
    struct turn_run *u = t->run;
    const struct turn_request *rq = &t->rq;
    int32_t tok;
    if (rq->grammar) {
        const int n = grammar_mask(&u->gs, rq->vocab, u->gsc, t->max_new - u->n_out, u->allow);
        tok = n > 0 ? sampler_sample_masked(&u->smp, logits, u->allow) : -1;
        if (tok < 0) {
            u->ended = 1;
            return 1;
        }
        if (grammar_advance(&u->gs, rq->vocab, tok, e)) return -1;
    } else {
        tok = sampler_sample(&u->smp, logits);
    }
    if (rq->logprobs) {
        struct turn_logprob *l = &u->lp[u->n_out];
        l->id = tok;
        const int k = sampler_logprobs(logits, u->smp.vocab, tok, rq->top_logprobs, &l->lp, l->top, l->top_lp);
        if (k < 0) return err_set(e, "logprobs: the step's logits are all -inf");
        l->n_top = k;
        u->n_lp = u->n_out + 1;
    }
    return run_take(t, tok);
}

const struct turn_logprob *turn_logprobs_so_far(const struct turn *t, int *n)
{
    *n = t->run ? t->run->n_lp : 0;
    return t->run ? t->run->lp : NULL;
}

int64_t turn_prefill_next(struct turn *t, int64_t max_tokens, struct err *e)
{
    struct turn_run *u = t->run;
    if (!u || !u->staged || (u->matched && u->fed >= u->need)) return err_set(e, "turn_prefill: the prompt is already in");
    /* the cached blocks, looked up at the first chunk rather than at turn_start: a request admitted while
     * another with the same start is still reading its prompt finds that prompt's blocks. A turn resumed
     * after its first token looks up everything it held (turn_preempt published it) and needs no logits
     * at its end; one preempted before it is fed as a new one. */
    if (!u->matched) {
        int64_t got;
        if (run_match(t, u->n_out > 0 ? u->need : t->n_ids - 1, &got, e)) return -1;
        if (!u->n_preempted) u->reused = got; /* the result's n_prompt_cached: the first lookup's */
        u->fed = got;
    }
    /* a chunk ends at the prompt's end: its rows are embeddings, the generated ids' are ids */
    const int64_t end = u->fed < t->n_ids ? t->n_ids : u->need, n = end - u->fed;
    return max_tokens > 0 && n > max_tokens ? max_tokens : n;
}

int turn_prefill(struct turn *t, int64_t max_tokens, struct err *e)
{
    struct turn_run *u = t->run;
    if (!u || !u->staged || (u->matched && u->fed >= u->need)) return err_set(e, "turn_prefill: the prompt is already in");
    if (u->t_prefill0 == 0) u->t_prefill0 = time_now(); /* the first chunk (turn_prefill_next may have matched a prefix) */
    if (u->io.cancel && atomic_load(u->io.cancel)) { /* cancelled while it waited: nothing more generated */
        run_emit(t); /* what a preempted turn had taken (the cancel ends the text there) */
        u->fed = u->need;
        u->finished = 1;
        if (!u->n_out) u->t_decode0 = time_now();
        return 1;
    }
    const int64_t n = turn_prefill_next(t, max_tokens, e);
    if (n < 0) return -1;
    const int resumed = u->n_out > 0; /* preempted after its first token */
    const int last = u->fed + n == u->need;
    if (n > 0 && u->fed < t->n_ids) {
        struct tensor rows = tensor_rows_view(&u->emb, u->fed, n);
        if (engine_slot_prefill(u->g, u->slot, NULL, &rows, n, last && !resumed ? u->logits : NULL, e)) return -1;
    } else if (n > 0) { /* a resumed turn's generated ids, fed again */
        if (engine_slot_prefill(u->g, u->slot, u->out + (u->fed - t->n_ids), NULL, n, NULL, e)) return -1;
    }
    u->fed += n;
    if (!last) return 0;
    if (resumed) return 1; /* its next token is taken already: the next decode step feeds it */
    run_publish(t); /* the prompt's blocks, for requests that start the same way */
    if (engine_check_logits(u->g, u->logits, "for the prompt", e)) return -1;
    if (run_pick(t, u->logits, e) < 0) return -1;
    run_emit(t);
    /* the slot's device sampler continues from here (turn_take): the request's parameters and the
     * host sampler's draw counter after the first token; a host-sampled turn gets the cheapest
     * (greedy) state, whose picks it never takes */
    struct sampler_params greedy;
    sampler_defaults(&greedy);
    greedy.greedy = true;
    engine_slot_sample_begin(u->g, u->slot, turn_dev_pick(t) ? &t->rq.sp : &greedy, u->smp.draws);
    u->t_decode0 = time_now();
    u->t_prefill = u->t_decode0 - u->t_prefill0;
    u->t_first = u->t_decode0 - u->t0;
    return 1;
}

int turn_step(struct turn *t, float *logits, struct err *e)
{
    struct turn_run *u = t->run;
    if (turn_pending(t) < 0) return err_set(e, "turn_step: the turn has no token to feed");
    if (engine_check_logits(u->g, logits, "at a decode step", e)) return -1;
    return run_pick(t, logits, e);
}

int turn_dev_pick(const struct turn *t) { return !turn_host_sampled(t) && sampler_device_ok(&t->rq.sp); }

int turn_take(struct turn *t, int32_t tok, struct err *e)
{
    struct turn_run *u = t->run;
    if (turn_pending(t) < 0) return err_set(e, "turn_take: the turn has no token to feed");
    if (!turn_dev_pick(t)) return err_set(e, "turn_take: this turn picks its tokens on the host");
    if (tok < 0 || tok >= u->smp.vocab) return err_set(e, "turn_take: token %d outside the vocabulary", tok);
    /* the host sampler follows the device's: the token generated, its draw consumed */
    sampler_record(&u->smp, tok);
    if (!t->rq.sp.greedy) u->smp.draws++;
    return run_take(t, tok);
}

int turn_emit(struct turn *t) { return t->run ? run_emit(t) : 1; }

int turn_done(const struct turn *t) { return t->run && t->run->finished; }

int turn_preempt(struct turn *t)
{
    struct turn_run *u = t->run;
    if (!u || !u->staged) return 0;
    run_publish(t); /* its full blocks stay cached: found again at the resume unless evicted meanwhile */
    const int again = !u->finished && !u->ended;
    if (!again) {
        engine_slot_truncate(u->g, u->slot, 0);
        return 0;
    }
    engine_slot_preempt(u->g, u->slot);
    u->need = u->n_out > 0 ? t->n_ids + u->n_out - 1 : t->n_ids; /* the pending token is fed by a decode step */
    u->fed = 0;
    u->matched = 0;
    u->n_preempted++;
    return 1;
}

int turn_finish(struct turn *t, struct turn_result *r, struct err *e)
{
    memset(r, 0, sizeof *r);
    if (!t->run || !t->run->finished) return err_set(e, "turn_finish: the turn has not finished");
    t->run->t_decode = time_now() - t->run->t_decode0;
    run_publish(t); /* with the generated tokens: a follow-up turn's prompt repeats them */
    engine_slot_truncate(t->run->g, t->run->slot, 0); /* the blocks go back (published ones stay cached) */
    int rc = run_end(t, r, e);
    if (rc) {
        free(r->text);
        r->text = NULL;
    }
    run_free(t);
    return rc;
}

void turn_abort(struct turn *t)
{
    if (t->run && t->run->staged) engine_slot_truncate(t->run->g, t->run->slot, 0);
    run_free(t);
}

void turn_result_free(struct turn_result *r)
{
    free(r->lp);
    free(r->text);
    free(r->ids);
    memset(r, 0, sizeof *r);
}
