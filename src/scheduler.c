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
    uint64_t order;              /* admission order: the oldest goes first (prefill, KV blocks) */
    int ready;                   /* this step: the block of its next decode token is reserved */
    int resuming;                /* preempted: what it prefills now is recomputed */
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
    int64_t n_preempted;         /* turns preempted (their KV given to older turns), resumed later */
    int64_t n_recomputed;        /* tokens the resumed turns prefilled again */
    int *rows;                   /* [n] scratch: the entries of the step's decode rows */
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
    s->rows = calloc((size_t)s->n, sizeof *s->rows);
    s->logits = malloc((size_t)s->n * V * sizeof *s->logits);
    if (!s->e || !s->slots || !s->toks || !s->who || !s->gen || !s->need || !s->picks || !s->rows || !s->logits) {
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
    free(s->rows);
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

void sched_preempt_counts(const struct scheduler *s, int64_t *preempted, int64_t *recomputed)
{
    *preempted = s->n_preempted;
    *recomputed = s->n_recomputed;
}

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

/* ---- the KV pool (a pool smaller than slots x ctx: --kv-tokens): blocks are reserved before they are
 * written, oldest turn first; when the pool runs out, the most recently admitted turns give theirs back
 * (preempted: turn_preempt publishes their full blocks, empties the slot and keeps everything else) and
 * read their tokens again later (recompute), ahead of every turn admitted after them. The oldest turn can
 * always go on: the pool holds one full ctx sequence, and every other turn is younger. ---- */

/* The entry in `state` admitted next after `after` (admission order), or -1. */
static int next_in_order(const struct scheduler *s, int state, uint64_t after)
{
    int p = -1;
    for (int i = 0; i < s->n; i++)
        if (s->e[i].state == state && s->e[i].order > after && (p < 0 || s->e[i].order < s->e[p].order)) p = i;
    return p;
}

static int holds_blocks(const struct scheduler *s, int i)
{
    return s->e[i].state != SLOT_FREE && engine_slot_len(s->g, i) > 0;
}

/* Entry v gives its blocks back: a turn still generating is preempted (back to reading its tokens, its
 * admission order kept); one that ended at this step's collect just lets them go (it finishes as it would
 * have, its blocks published). */
static void take_blocks(struct scheduler *s, int v)
{
    struct entry *x = &s->e[v];
    x->ready = 0;
    if (turn_preempt(x->t)) {
        x->state = SLOT_PREFILL;
        x->resuming = 1;
        s->n_preempted++;
    }
}

/* Whose blocks entry i may take: a turn that has ended (nothing is lost), else the most recently admitted
 * turn holding blocks when it was admitted after i. -1: none. */
static int victim(const struct scheduler *s, int i)
{
    int v = -1;
    for (int j = 0; j < s->n; j++) {
        if (j == i || !holds_blocks(s, j)) continue;
        if (s->e[j].state == SLOT_DECODE && turn_pending(s->e[j].t) < 0) return j;
        if (s->e[j].order > s->e[i].order && (v < 0 || s->e[j].order > s->e[v].order)) v = j;
    }
    return v;
}

/* Blocks for the first n tokens of entry i's slot, from younger turns when the pool has too few: 0; 1
 * when even that is not enough (only older turns hold blocks: i waits); -1 on an error (e set). */
static int reserve(struct scheduler *s, int i, int64_t n, struct err *e)
{
    for (;;) {
        const int r = engine_slot_reserve(s->g, i, n, e);
        if (r <= 0) return r;
        const int v = victim(s, i);
        if (v < 0) return 1;
        take_blocks(s, v);
        if (holds_blocks(s, v)) return 1; /* cannot happen: a staged turn lets its blocks go */
    }
}

/* The block of every decode row's next token, oldest turn first. A turn that cannot get it waits this step
 * (it keeps its blocks until an older turn takes them). */
static void reserve_rows(struct scheduler *s)
{
    for (int i = next_in_order(s, SLOT_DECODE, 0); i >= 0; i = next_in_order(s, SLOT_DECODE, s->e[i].order)) {
        struct entry *x = &s->e[i];
        if (x->ready || turn_pending(x->t) < 0) continue;
        struct err e = {{0}};
        const int r = reserve(s, i, engine_slot_len(s->g, i) + 1, &e);
        if (r < 0) finish(s, i, 1, 0, &e);
        else x->ready = r == 0;
    }
}

/* The step's prefill: turns still reading their tokens (a new turn its prompt; a preempted one its prompt
 * and generated ids again), oldest first, each fed in chunks of at most max_batch tokens (the chunks it has
 * alone: turn_prefill cuts them from where its cached prefix ends, so its rows are computed as they are
 * alone), as many chunks as the step's budget holds: several turns' prompts in one step, or several chunks
 * of one. A chunk larger than what is left waits for the next step (a younger turn's smaller chunk may
 * still fit), except the step's first chunk, which always runs: with the default budget of one chunk a
 * long prompt delays the decode rows by one chunk per step. A turn whose chunk finds no blocks (older
 * turns hold the pool) stops the prefill of this step: younger turns do not take blocks before it. */
static void prefill(struct scheduler *s)
{
    const int64_t mb = engine_max_batch(s->g);
    int64_t left = s->budget > 0 ? s->budget : mb;
    int ran = 0;
    for (int p = next_in_order(s, SLOT_PREFILL, 0); p >= 0 && left > 0;) {
        const uint64_t order = s->e[p].order;
        struct turn *t = s->e[p].t;
        while (left > 0) {
            struct err e = {{0}};
            const int64_t n = turn_prefill_next(t, mb, &e);
            if (n < 0) {
                finish(s, p, 1, 0, &e);
                break;
            }
            if (ran && n > left) break;
            const int rr = reserve(s, p, engine_slot_len(s->g, p) + n, &e);
            if (rr < 0) {
                finish(s, p, 1, 0, &e);
                break;
            }
            if (rr == 1) return;
            const int r = turn_prefill(t, mb, &e);
            ran = 1;
            left -= n;
            if (s->e[p].resuming) s->n_recomputed += n;
            if (r < 0) finish(s, p, 1, 0, &e);
            else if (r == 1 && turn_done(t)) finish(s, p, 0, 0, NULL);
            else if (r == 1) s->e[p].state = SLOT_DECODE, s->e[p].resuming = 0;
            if (r != 0) break;
        }
        p = next_in_order(s, SLOT_PREFILL, order);
    }
}

int sched_step(struct scheduler *s)
{
    struct err e = {{0}};
    /* 1. the step in flight: its tokens to their turns */
    s->tm.steps++;
    if (s->inflight) collect(s);
    double t0 = time_now();
    /* 2. the KV blocks of the decode rows' next tokens, then the prefill chunks within the step's budget
     * (before the launch: a prompt's last chunk picks the turn's first token, which the launch feeds),
     * then the blocks of the rows those chunks made */
    for (int i = 0; i < s->n; i++) s->e[i].ready = 0;
    reserve_rows(s);
    prefill(s);
    reserve_rows(s);
    double t1 = time_now();
    s->tm.prefill += t1 - t0;
    /* 3. launch one batched decode step over every turn with a token to feed and its block (at most the
     * engine's rows, the oldest turns first). The device picks every row; at the collect only the rows
     * whose turns pick on the host (a grammar, logprobs, parameters the device declines) or where the
     * device declined bring their logits. */
    const int cap = (int)(engine_max_batch(s->g) < s->n ? engine_max_batch(s->g) : s->n);
    int B = 0;
    for (int i = next_in_order(s, SLOT_DECODE, 0); i >= 0 && B < cap; i = next_in_order(s, SLOT_DECODE, s->e[i].order))
        if (s->e[i].ready && turn_pending(s->e[i].t) >= 0) s->rows[B++] = i;
    for (int b = 0; b < B; b++) {
        const int i = s->rows[b];
        s->slots[b] = i;
        s->toks[b] = turn_pending(s->e[i].t);
        s->need[b] = s->host_picks || !turn_dev_pick(s->e[i].t);
        s->gen[b] = s->e[i].order;
        s->who[b] = i;
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
     * callbacks) and end the turns that finished (a preempted turn streams what it had taken too). A turn
     * that a stop string or a cancel ends here had its next token launched already: its row is dropped at
     * the collect. */
    for (int i = 0; i < s->n; i++)
        if (s->e[i].state != SLOT_FREE && turn_emit(s->e[i].t)) finish(s, i, 0, 0, NULL);
    s->tm.emit += time_now() - t0;
    return sched_active(s);
}
