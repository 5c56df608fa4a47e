/* beam.c: see beam.h. The search (beam_search) never touches a device; the engine driver
 * (beam_generate) keeps, for each beam of each of two generations, a copy of the KV rows of that
 * beam's generated tokens on each layer's device. Before a beam's single-token forward its parent's
 * rows are copied into the cache after the shared prompt; after it the rows (now one longer) are
 * saved into the beam's own slot. This costs O(t) row copies per beam per step but needs no change
 * to llm.c, and the forward itself is the same call as in greedy decoding, so beams=1 reproduces
 * greedy decoding bit for bit (with the repetition penalty off). */
#include "beam.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "engine_impl.h"

void beam_params_default(struct beam_params *p)
{
    p->num_beams = 3;
    p->length_penalty = 1.0f;
    p->repetition_penalty = 1.2f;
    p->max_new = 1024;
}

struct cand {
    float score;
    int beam;
    int32_t tok;
};

struct hyp {
    double score;
    int n;
    int32_t *toks; /* capacity max_new */
};

/* BeamHypotheses.add: keep the num_beams best, list order preserved (Python list semantics). */
static void hyps_add(struct hyp *h, int *nh, double *worst, int B, const int32_t *toks, int n, double sum, int len,
                     float lp)
{
    double score = sum / pow((double)len, (double)lp);
    if (!(*nh < B || score > *worst)) return;
    h[*nh].score = score;
    h[*nh].n = n;
    memcpy(h[*nh].toks, toks, (size_t)n * sizeof *toks);
    (*nh)++;
    if (*nh > B) {
        /* sorted() is stable: the first entry (in list order) with the smallest score goes */
        int lo = 0;
        for (int i = 1; i < *nh; i++)
            if (h[i].score < h[lo].score) lo = i;
        struct hyp gone = h[lo];
        memmove(h + lo, h + lo + 1, (size_t)(*nh - lo - 1) * sizeof *h);
        h[*nh - 1] = gone; /* keep its token buffer for reuse */
        (*nh)--;
        double w = INFINITY;
        for (int i = 0; i < *nh; i++)
            if (h[i].score < w) w = h[i].score;
        *worst = w;
    } else if (score < *worst) {
        *worst = score;
    }
}

/* The top k of [B * V] scores (descending; ties: lower flat index first), by insertion. */
static void topk_insert(struct cand *c, int *n, int k, float s, int beam, int32_t tok)
{
    if (*n == k && !(s > c[k - 1].score)) return;
    int i = *n < k ? (*n)++ : k - 1;
    while (i > 0 && s > c[i - 1].score) {
        c[i] = c[i - 1];
        i--;
    }
    c[i] = (struct cand){s, beam, tok};
}

int beam_search(const struct beam_model *m, const struct beam_params *p, const float *first_logits, int32_t *out,
                int *n_out, struct err *e)
{
    const int B = p->num_beams, V = m->vocab, T = p->max_new;
    *n_out = 0;
    if (B < 1 || B > BEAM_MAX) return err_set(e, "num_beams %d: must be 1..%d", B, BEAM_MAX);
    if (T <= 0) return 0;
    /* 4.40: max(2, 1 + len(eos_token_id)) * num_beams candidates; MiniCPM has two stop ids */
    const int K = 3 * B;
    float *logits = malloc((size_t)B * V * sizeof *logits);
    float *w = malloc((size_t)V * sizeof *w);
    int32_t *toks = malloc((size_t)2 * B * T * sizeof *toks);
    int32_t *seq = malloc((size_t)(T + 1) * sizeof *seq);
    struct hyp *h = calloc((size_t)B + 1, sizeof *h);
    struct cand *c = malloc((size_t)K * sizeof *c), nxt[BEAM_MAX];
    double bscore[BEAM_MAX], worst = 1e9;
    int rc = -1, nh = 0, side = 0, t = 0, done = 0;
    if (!logits || !w || !toks || !seq || !h || !c) { err_set(e, "out of memory"); goto out; }
    for (int i = 0; i <= B; i++)
        if (!(h[i].toks = malloc((size_t)(T + 1) * sizeof *h[i].toks))) { err_set(e, "out of memory"); goto out; }
    for (int b = 0; b < B; b++) {
        memcpy(logits + (size_t)b * V, first_logits, (size_t)V * sizeof *logits);
        bscore[b] = b == 0 ? 0.0 : -1e9;
    }
#define TOKS(sd, b) (toks + ((size_t)(sd) * B + (b)) * T)
    /* invariant at the top of the loop: the B beams of `side` hold t tokens each and logits[b] is
     * the next-token distribution of beam b */
    for (;;) {
        const int cur_len = t + 1;
        if (m->cancel && m->cancel(m->ctx)) break;
        int nc = 0;
        for (int b = 0; b < B; b++) {
            const float *l = logits + (size_t)b * V;
            float mx = -INFINITY;
            for (int i = 0; i < V; i++)
                if (l[i] > mx) mx = l[i];
            double sum = 0;
            for (int i = 0; i < V; i++) sum += exp((double)l[i] - mx);
            const float lse = mx + (float)log(sum);
            for (int i = 0; i < V; i++) w[i] = l[i] - lse;
            if (p->repetition_penalty != 1.0f) {
                const int32_t *q = TOKS(side, b);
                for (int i = 0; i < t; i++) {
                    int32_t id = q[i];
                    int dup = 0;
                    for (int j = 0; j < i && !dup; j++) dup = q[j] == id;
                    if (dup || id < 0 || id >= V) continue;
                    w[id] = w[id] < 0 ? w[id] * p->repetition_penalty : w[id] / p->repetition_penalty;
                }
            }
            const float bs = (float)bscore[b];
            for (int i = 0; i < V; i++) topk_insert(c, &nc, K, w[i] + bs, b, i);
        }
        /* BeamSearchScorer.process */
        int nb = 0;
        for (int r = 0; r < nc && nb < B; r++) {
            if (m->is_stop(m->ctx, c[r].tok)) {
                if (r >= B) continue;
                memcpy(seq, TOKS(side, c[r].beam), (size_t)t * sizeof *seq);
                seq[t] = c[r].tok;
                hyps_add(h, &nh, &worst, B, seq, t + 1, c[r].score, cur_len, p->length_penalty);
            } else {
                nxt[nb++] = c[r];
            }
        }
        done = nh >= B && worst >= c[0].score / pow((double)cur_len, (double)p->length_penalty);
        if (nb < B && !done) { err_set(e, "beam search: only %d continuing candidates for %d beams", nb, B); goto out; }
        const int ns = side ^ 1;
        for (int j = 0; j < nb && j < B; j++) {
            int32_t *q = TOKS(ns, j);
            memcpy(q, TOKS(side, nxt[j].beam), (size_t)t * sizeof *q);
            q[t] = nxt[j].tok;
            bscore[j] = nxt[j].score;
        }
        side = ns;
        t++;
        if (done || t >= T) break; /* no forward for the last tokens */
        for (int j = 0; j < B; j++)
            if (m->step(m->ctx, side, j, nxt[j].beam, t - 1, nxt[j].tok, logits + (size_t)j * V, e)) goto out;
    }
    /* finalize: unless done, every open beam (t tokens, running score) is offered as a hypothesis */
    if (!done && t > 0)
        for (int b = 0; b < B; b++) hyps_add(h, &nh, &worst, B, TOKS(side, b), t, bscore[b], t, p->length_penalty);
    /* sorted(beams, key=score).pop(): the highest score, the later entry on ties */
    int best = -1;
    for (int i = 0; i < nh; i++)
        if (best < 0 || h[i].score >= h[best].score) best = i;
    if (best >= 0) {
        memcpy(out, h[best].toks, (size_t)h[best].n * sizeof *out);
        *n_out = h[best].n;
    }
    rc = 0;
out:
#undef TOKS
    free(logits);
    free(w);
    free(toks);
    free(seq);
    if (h)
        for (int i = 0; i <= B; i++) free(h[i].toks);
    free(h);
    free(c);
    return rc;
}

/* ---- the engine driver ---- */

struct beam_kv {
    struct engine *g;
    int B, L;
    int64_t P;                 /* prompt end: first row of the generated tokens */
    int64_t rows;              /* capacity of each beam's copy */
    void **mem;                /* [2][B][L] allocations of K then V rows */
    struct tensor *k, *v;      /* [2][B][L] views [rows, n_kv, hd] */
    int last_side, last_slot;  /* the beam whose rows [0, last_t] the cache holds after P; -1 none */
    int last_t;
    int (*cancel)(void *);
    void *cancel_ctx;
};

#define KV_AT(kv, sd, b, l) ((((size_t)(sd) * (kv)->B + (b)) * (kv)->L) + (l))

static int kv_is_stop(void *ctx, int32_t tok) { return engine_is_stop(((struct beam_kv *)ctx)->g, tok); }

static int kv_cancel(void *ctx)
{
    struct beam_kv *kv = ctx;
    return kv->cancel ? kv->cancel(kv->cancel_ctx) : 0;
}

/* Copies rows [0, n) between a beam copy and the session's tokens [P, P+n) of every layer. */
static int kv_move(struct beam_kv *kv, int sd, int b, int64_t n, int to_cache, struct err *e)
{
    struct llm *s = &kv->g->llm;
    for (int l = 0; l < kv->L; l++) {
        size_t i = KV_AT(kv, sd, b, l);
        struct tensor bk = tensor_rows_view(&kv->k[i], 0, n), bv = tensor_rows_view(&kv->v[i], 0, n);
        if (llm_slot_kv_copy(s, 0, l, kv->P, &bk, &bv, to_cache, e)) return -1;
    }
    return 0;
}

static int kv_step(void *ctx, int side, int slot, int parent, int t, int32_t tok, float *logits, struct err *e)
{
    struct beam_kv *kv = ctx;
    struct llm *s = &kv->g->llm;
    if (t + 1 > kv->rows) return err_set(e, "beam search: %d tokens exceed the %lld reserved rows", t + 1, (long long)kv->rows);
    /* the parent's rows [0, t) into the cache, unless the previous forward left exactly them there */
    if (t > 0 && !(kv->last_side == (side ^ 1) && kv->last_slot == parent && kv->last_t == t - 1) &&
        kv_move(kv, side ^ 1, parent, t, 1, e))
        return -1;
    llm_truncate(s, kv->P + t);
    if (s->n_past != kv->P + t) return err_set(e, "beam search: cache holds %lld rows, expected %lld",
                                               (long long)s->n_past, (long long)(kv->P + t));
    if (llm_forward(s, &tok, NULL, 1, logits, e) || kv_move(kv, side, slot, t + 1, 0, e)) return -1;
    kv->last_side = side;
    kv->last_slot = slot;
    kv->last_t = t;
    return 0;
}

int beam_generate(struct engine *g, const int32_t *ids, const struct tensor *embeds, int64_t n,
                  const struct beam_params *p, int (*cancel)(void *), void *cancel_ctx, int32_t *out, int *n_out,
                  struct engine_gen_stats *stats, struct err *e)
{
    struct llm *s = &g->llm;
    const int V = g->cfg.vocab_size, L = g->cfg.num_hidden_layers, B = p->num_beams;
    *n_out = 0;
    if (B < 1 || B > BEAM_MAX) return err_set(e, "num_beams %d: must be 1..%d", B, BEAM_MAX);
    if (p->max_new < 0) return err_set(e, "max new tokens must be >= 0");
    if (llm_check_fit(s->ctx, s->n_past + n, p->max_new, e)) return -1;
    struct beam_kv kv = {.g = g, .B = B, .L = L, .rows = p->max_new > 0 ? p->max_new : 1, .last_side = -1,
                         .last_slot = -1, .last_t = -1, .cancel = cancel, .cancel_ctx = cancel_ctx};
    const size_t nkv = (size_t)2 * B * L;
    float *logits = malloc((size_t)V * sizeof *logits);
    kv.mem = calloc(nkv, sizeof *kv.mem);
    kv.k = calloc(nkv, sizeof *kv.k);
    kv.v = calloc(nkv, sizeof *kv.v);
    int rc = -1;
    if (!logits || !kv.mem || !kv.k || !kv.v) { err_set(e, "out of memory"); goto out; }
    for (int sd = 0; sd < 2; sd++)
        for (int b = 0; b < B; b++)
            for (int l = 0; l < L; l++) {
                size_t i = KV_AT(&kv, sd, b, l);
                const struct tensor *ck = &s->cache[l].k;
                struct tensor k = tensor_make(ck->dtype, ck->dev, NULL, 3, kv.rows, ck->shape[1], ck->shape[2]);
                size_t nb = tensor_nbytes(&k);
                if (!(kv.mem[i] = dev_alloc(ck->dev, 2 * nb, e))) {
                    err_prefix(e, "beam search KV copy (beam %d, layer %d)", b, l);
                    goto out;
                }
                kv.k[i] = k;
                kv.k[i].data = kv.mem[i];
                kv.v[i] = k;
                kv.v[i].data = (char *)kv.mem[i] + nb;
            }
    double t0 = time_now();
    if (llm_forward(s, ids, embeds, n, logits, e)) goto out;
    double t1 = time_now();
    kv.P = s->n_past;
    struct beam_model m = {.ctx = &kv, .vocab = V, .step = kv_step, .is_stop = kv_is_stop, .cancel = kv_cancel};
    if (beam_search(&m, p, logits, out, n_out, e)) goto out;
    llm_truncate(s, kv.P);
    if (stats) {
        stats->n_prompt = n;
        stats->t_prefill = t1 - t0;
        stats->n_gen = *n_out;
        stats->t_decode = time_now() - t1;
    }
    rc = 0;
out:
    for (size_t i = 0; kv.mem && i < nkv; i++)
        if (kv.mem[i]) dev_free(kv.k[i].dev, kv.mem[i]);
    free(kv.mem);
    free(kv.k);
    free(kv.v);
    free(logits);
    return rc;
}
