/* scheduler.c: continuous batching of chat turns over the engine's slots (scheduler.h). */
#include "scheduler.h"

#include <stdlib.h>
#include <string.h>

enum { SLOT_FREE = 0, SLOT_PREFILL, SLOT_DECODE };

struct entry {
    int state;
    struct turn *t;
    struct turn_io io;
    sched_done_cb done;
    void *ctx;
    uint64_t order;              /* admission order: the oldest prefill goes first */
};

struct scheduler {
    struct engine *g;
    int n;                       /* slots */
    struct entry *e;             /* [n]: entry i runs on slot i */
    uint64_t tick;
    int *slots;                  /* [n] the decode batch */
    int32_t *toks;               /* [n] */
    int *who;                    /* [n] entry of each batch row */
    uint64_t *gen;               /* [n] the order of the turn each row was launched for */
    uint8_t *need;               /* [n] rows whose logits the host needs (their turn picks on the host) */
    int32_t *picks;              /* [n] the device's picks */
    float *logits;               /* [n, V] */
    int inflight;                /* rows of the step launched and not yet collected (0: none) */
    int host_picks;              /* sched_set_host_picks */
    int64_t budget;              /* prefill tokens per step (sched_set_prefill_budget; 0: engine_max_batch) */
    int64_t n_dev, n_host;       /* decode-step tokens picked on the device, on the host */
    struct sched_times tm;
};

int sched_init(struct scheduler **out, struct engine *g, struct err *e)
{
    *out = NULL;
    struct scheduler *s = calloc(1, sizeof *s);
    if (!s) return err_set(e, "out of memory");
    s->g = g;
    s->n = engine_slots(g);
    const size_t V = (size_t)engine_config(g)->vocab_size;
    s->e = calloc((size_t)s->n, sizeof *s->e);
    s->slots = calloc((size_t)s->n, sizeof *s->slots);
    s->toks = calloc((size_t)s->n, sizeof *s->toks);
    s->who = calloc((size_t)s->n, sizeof *s->who);
    s->gen = calloc((size_t)s->n, sizeof *s->gen);
    s->need = calloc((size_t)s->n, sizeof *s->need);
    s->picks = calloc((size_t)s->n, sizeof *s->picks);
    s->logits = malloc((size_t)s->n * V * sizeof *s->logits);
    if (!s->e || !s->slots || !s->toks || !s->who || !s->gen || !s->need || !s->picks || !s->logits) {
        sched_free(s);
        return err_set(e, "out of memory (a scheduler for %d slots)", s->n);
    }
    *out = s;
    return 0;
}

void sched_free(struct scheduler *s)
{
    if (!s) return;
    for (int i = 0; s->e && i < s->n; i++)
        if (s->e[i].state != SLOT_FREE) turn_abort(s->e[i].t);
    free(s->e);
    free(s->slots);
    free(s->toks);
    free(s->who);
    free(s->gen);
    free(s->need);
    free(s->picks);
    free(s->logits);
    free(s);
}

int sched_slots_free(const struct scheduler *s)
{
    int k = 0;
    for (int i = 0; i < s->n; i++) k += s->e[i].state == SLOT_FREE;
    return k;
}

int sched_active(const struct scheduler *s) { return s->n - sched_slots_free(s); }

int sched_prefilling(const struct scheduler *s)
{
    int k = 0;
    for (int i = 0; i < s->n; i++) k += s->e[i].state == SLOT_PREFILL;
    return k;
}

void sched_set_host_picks(struct scheduler *s, int on) { s->host_picks = on != 0; }

void sched_set_prefill_budget(struct scheduler *s, int64_t tokens) { s->budget = tokens > 0 ? tokens : 0; }

void sched_get_times(const struct scheduler *s, struct sched_times *t) { *t = s->tm; }

void sched_pick_counts(const struct scheduler *s, int64_t *dev, int64_t *host)
{
    *dev = s->n_dev;
    *host = s->n_host;
}

/* Reports a turn's end and frees its slot. */
static void finish(struct scheduler *s, int i, int failed, int input_error, const struct err *why)
{
    struct entry *x = &s->e[i];
    struct turn_result r;
    struct err e = {{0}};
    int rc = -1;
    if (failed) {
        turn_abort(x->t);
        e = *why;
        memset(&r, 0, sizeof r);
    } else {
        rc = turn_finish(x->t, &r, &e);
    }
    const sched_done_cb done = x->done;
    void *ctx = x->ctx;
    memset(x, 0, sizeof *x);
    done(ctx, rc, &r, input_error, &e);
}

int sched_add(struct scheduler *s, struct turn *t, const struct turn_io *io, sched_done_cb done, void *ctx)
{
    int i = 0;
    while (i < s->n && s->e[i].state != SLOT_FREE) i++;
    struct err e = {{0}};
    if (i == s->n) {
        struct turn_result r = {0};
        err_set(&e, "no free slot (%d in use)", s->n);
        done(ctx, -1, &r, 0, &e);
        return -1;
    }
    struct entry *x = &s->e[i];
    *x = (struct entry){.state = SLOT_PREFILL, .t = t, .done = done, .ctx = ctx, .order = ++s->tick};
    if (io) x->io = *io;
    int input_error = 0;
    if (turn_start(t, s->g, &x->io, i, &input_error, &e)) {
        finish(s, i, 1, input_error, &e);
        return -1;
    }
    return 0;
}

/* The step in flight: wait for it and hand each row's token to its turn (taken, not streamed yet:
 * turn_emit), when that turn still runs; rows of turns that finished since the launch (a stop string
 * or a cancel seen by turn_emit, a slot reused) are dropped. */
static void collect(struct scheduler *s)
{
    const int B = s->inflight;
    s->inflight = 0;
    int alive = 0;
    for (int b = 0; b < B; b++) {
        const struct entry *x = &s->e[s->who[b]];
        const int live = x->state == SLOT_DECODE && x->order == s->gen[b];
        if (!live) s->gen[b] = 0, s->need[b] = 0;
        alive += live;
    }
    if (!alive) return; /* nothing to read back: the device finishes the step on its own */
    struct err e = {{0}};
    const double t0 = time_now();
    const int rc = engine_decode_batch_collect(s->g, s->need, s->picks, s->logits, &e);
    const double t1 = time_now();
    s->tm.collect += t1 - t0;
    if (rc) {
        for (int b = 0; b < B; b++)
            if (s->gen[b]) finish(s, s->who[b], 1, 0, &e);
        return;
    }
    const size_t V = (size_t)engine_config(s->g)->vocab_size;
    for (int b = 0; b < B; b++) {
        if (!s->gen[b]) continue;
        struct err te = {{0}};
        struct turn *t = s->e[s->who[b]].t;
        const int dev = !s->need[b] && s->picks[b] >= 0;
        const int r = dev ? turn_take(t, s->picks[b], &te) : turn_step(t, s->logits + (size_t)b * V, &te);
        s->n_dev += dev;
        s->n_host += !dev;
        if (r < 0) finish(s, s->who[b], 1, 0, &te);
    }
    s->tm.take += time_now() - t1;
}

/* The step's prefill: turns still reading their prompt, oldest first, each fed in chunks of at most
 * max_batch tokens (the chunks it has alone: turn_prefill cuts them from where its cached prefix ends, so
 * its rows are computed as they are alone), as many chunks as the step's budget holds: several turns'
 * prompts in one step, or several chunks of one. A chunk larger than what is left waits for the next
 * step (a younger turn's smaller chunk may still fit), except the step's first chunk, which always runs:
 * with the default budget of one chunk a long prompt delays the decode rows by one chunk per step. */
static void prefill(struct scheduler *s)
{
    const int64_t mb = engine_max_batch(s->g);
    int64_t left = s->budget > 0 ? s->budget : mb;
    int ran = 0;
    uint64_t after = 0; /* the turns are visited in admission order */
    while (left > 0) {
        int p = -1;
        for (int i = 0; i < s->n; i++)
            if (s->e[i].state == SLOT_PREFILL && s->e[i].order > after && (p < 0 || s->e[i].order < s->e[p].order))
                p = i;
        if (p < 0) break;
        after = s->e[p].order;
        struct turn *t = s->e[p].t;
        while (left > 0) {
            struct err e = {{0}};
            const int64_t n = turn_prefill_next(t, mb, &e);
            if (n < 0) {
                finish(s, p, 1, 0, &e);
                break;
            }
            if (ran && n > left) break;
            const int r = turn_prefill(t, mb, &e);
            ran = 1;
            left -= n;
            if (r < 0) finish(s, p, 1, 0, &e);
            else if (r == 1 && turn_done(t)) finish(s, p, 0, 0, NULL);
            else if (r == 1) s->e[p].state = SLOT_DECODE;
            if (r != 0) break;
        }
    }
}

int sched_step(struct scheduler *s)
{
    struct err e = {{0}};
    /* 1. the step in flight: its tokens to their turns */
    s->tm.steps++;
    if (s->inflight) collect(s);
    double t0 = time_now();
    /* 2. prefill chunks within the step's budget (before the launch: a prompt's last chunk picks the
     * turn's first token, which the launch feeds) */
    prefill(s);
    double t1 = time_now();
    s->tm.prefill += t1 - t0;
    /* 3. launch one batched decode step over every turn with a token to feed. The device picks
     * every row; at the collect only the rows whose turns pick on the host (a grammar, logprobs,
     * parameters the device declines) or where the device declined bring their logits. */
    int B = 0;
    for (int i = 0; i < s->n; i++) {
        if (s->e[i].state != SLOT_DECODE || turn_pending(s->e[i].t) < 0) continue;
        s->slots[B] = i;
        s->toks[B] = turn_pending(s->e[i].t);
        s->need[B] = s->host_picks || !turn_dev_pick(s->e[i].t);
        s->gen[B] = s->e[i].order;
        s->who[B++] = i;
    }
    if (B) {
        if (engine_decode_batch_launch(s->g, s->slots, s->toks, B, &e)) {
            for (int b = 0; b < B; b++) finish(s, s->who[b], 1, 0, &e);
        } else {
            s->inflight = B;
            s->tm.launches++;
        }
    }
    t0 = time_now();
    s->tm.launch += t0 - t1;
    /* 4. while the device runs it: stream the tokens step 1 took (detokenizing, stop strings, the
     * callbacks) and end the turns that finished. A turn that a stop string or a cancel ends here
     * had its next token launched already: its row is dropped at the collect. */
    for (int i = 0; i < s->n; i++)
        if (s->e[i].state == SLOT_DECODE && turn_emit(s->e[i].t)) finish(s, i, 0, 0, NULL);
    s->tm.emit += time_now() - t0;
    return sched_active(s);
}
