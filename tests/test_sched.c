/* test_sched.c: several chat turns in flight (scheduler.h) on the tiny model, on the CPU. Every turn's
 * tokens, text and streamed text under the scheduler must equal the same turn run alone (turn_run): the
 * batched decode step and the staged turn must change nothing a turn sees. Also: a turn cancelled
 * mid-way, a stop string, a turn whose prompt does not fit, more turns than slots (they queue), and
 * fp16; a stop string that ends a turn while its next row is in flight, its slot taken at once by a
 * waiting turn (the stale row dropped at the collect). The solo answers come from turn_run, an
 * independent path (engine_generate on slot 0), and test_penalty checks turn_run itself against a
 * reference loop written in that test. Then admission (the per-step prefill budget: a request arriving
 * under load gets its first token in the next step, a long prompt is fed one chunk per step while the
 * others decode) and preemption (16 turns on a KV pool of one ctx: turns preempted and resumed, every
 * answer its solo one; pools and requests refused). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd_util.h"
#include "scheduler.h"
#include "t.h"
#include "tengine.h"
#include "tutil.h"

#define N_TURNS 10
#define SLOTS "4"

/* The tiny model on the CPU with --parallel `parallel` and the engine flags in `more` (NULL-terminated). */
static struct engine *open_tiny_flags(enum dtype dt, const char *parallel, char **more)
{
    struct cmdu_engine_opts eo;
    cmdu_engine_opts_init(&eo);
    char *argv[16] = {"x", "--parallel", (char *)parallel};
    int argc = 3;
    for (int k = 0; more && more[k] && argc < 15; k++) argv[argc++] = more[k];
    struct err e = {{0}};
    for (int i = 1; i < argc; i++)
        if (cmdu_engine_flag(&eo.o, &eo.dm, argc, argv, &i, &e) != 1) {
            fprintf(stderr, "%s: %s\n", argv[i], e.msg[0] ? e.msg : "not an engine flag");
            return NULL;
        }
    eo.o.model_dir = t_tiny_model(1);
    eo.o.device = "cpu";
    eo.o.dtype = dt;
    if (eo.dm.params.ctx <= 0) eo.o.ctx = 256;
    eo.o.quiet = 1;
    struct engine *x = NULL;
    if (!eo.o.model_dir || engine_open(&x, &eo.o, &e)) fprintf(stderr, "engine_open: %s\n", e.msg);
    return x;
}

static struct engine *open_tiny(enum dtype dt, const char *parallel) { return open_tiny_flags(dt, parallel, NULL); }

struct out {
    struct strbuf streamed;
    int done, rc, input_error;
    struct turn_result r;
    char err[256];
};

static int on_text(void *ctx, const char *text, size_t len)
{
    struct out *o = ctx;
    strbuf_printf(&o->streamed, "%.*s", (int)len, text);
    return 0;
}

static void on_done(void *ctx, int rc, struct turn_result *r, int input_error, const struct err *e)
{
    struct out *o = ctx;
    o->done++;
    o->rc = rc;
    o->input_error = input_error;
    o->r = *r;
    memset(r, 0, sizeof *r);
    snprintf(o->err, sizeof o->err, "%s", e ? e->msg : "");
}

/* Turn k's request: prompts of different lengths, greedy and sampled, a stop string, different max_new. */
static void request(int k, struct chat_msg *m, char *text, size_t tn, struct turn_request *rq)
{
    static const char *words[] = {"Hello there", "What is in the image?", "Tell me a story about a cat",
                                  "One two three four five six seven eight nine ten", "Why?"};
    size_t n = 0;
    for (int r = 0; r <= k % 3; r++) n += (size_t)snprintf(text + n, tn - n, "%s%s", r ? " " : "", words[(k + r) % 5]);
    m->role = "user";
    m->content = text;
    memset(rq, 0, sizeof *rq);
    rq->msgs = m;
    rq->n_msgs = 1;
    rq->max_new = 6 + 3 * (k % 4);
    sampler_defaults(&rq->sp);
    rq->sp.seed = (uint64_t)(100 + k);
    if (k % 2) {
        rq->sp.greedy = true; /* the penalty (1.05) stays */
    } else {
        rq->sp.temperature = 0.9f;
    }
    if (k == 3) { rq->stop[0] = "e"; rq->n_stop = 1; }
    if (k == 4) rq->sp.top_k = 0; /* every token a candidate: the device sampler cannot serve it, the host picks */
}

/* Runs the turns through s (more turns than slots, so some wait for a free one; turn 7 cancelled after
 * three steps) and checks each against its solo answer. picks: 0 device, 1 host, 2 alternating
 * step by step (the host sampler must follow the device's draws and penalty flags, and back). */
static void run_all(struct scheduler *s, struct turn **t, struct out *conc, const struct out *solo, int picks)
{
    int next = 0, steps = 0;
    atomic_int cancel_7;
    atomic_init(&cancel_7, 0);
    while (next < N_TURNS || sched_active(s)) {
        while (next < N_TURNS && sched_slots_free(s) > 0) {
            struct turn_io io = {.cb = on_text, .cb_ctx = &conc[next]};
            if (next == 7) io.cancel = &cancel_7;
            sched_add(s, t[next], &io, on_done, &conc[next]);
            next++;
        }
        sched_set_host_picks(s, picks == 2 ? steps % 2 : picks);
        sched_step(s);
        if (++steps == 3) atomic_store(&cancel_7, 1); /* turn 7 was admitted in the first round */
        if (steps > 10000) break;
    }
    T_ASSERTF(steps > 1 && steps < 10000, "%d steps", steps);
    for (int k = 0; k < N_TURNS; k++) {
        T_EQ_INT(conc[k].done, 1);
        T_ASSERTF(conc[k].rc == 0, "turn %d: %s", k, conc[k].err);
        if (conc[k].rc || !solo[k].r.text) continue;
        if (k == 7) { /* cancelled after a few steps: fewer tokens, a prefix of its solo answer's ids */
            T_ASSERT(conc[k].r.cancelled);
            T_ASSERTF(conc[k].r.n_gen < solo[k].r.n_gen, "turn 7: %d tokens, solo %d", conc[k].r.n_gen, solo[k].r.n_gen);
            for (int i = 0; i < conc[k].r.n_gen && i < solo[k].r.n_gen; i++) T_EQ_INT(conc[k].r.ids[i], solo[k].r.ids[i]);
            continue;
        }
        T_ASSERTF(conc[k].r.n_gen == solo[k].r.n_gen, "turn %d: %d tokens, solo %d", k, conc[k].r.n_gen, solo[k].r.n_gen);
        for (int i = 0; i < conc[k].r.n_gen && i < solo[k].r.n_gen; i++)
            T_ASSERTF(conc[k].r.ids[i] == solo[k].r.ids[i], "turn %d token %d: %d, solo %d", k, i, conc[k].r.ids[i],
                      solo[k].r.ids[i]);
        T_EQ_STR(conc[k].r.text, solo[k].r.text);
        T_EQ_STR(conc[k].r.finish, solo[k].r.finish);
        T_EQ_STR(conc[k].streamed.p ? conc[k].streamed.p : "", conc[k].r.text);
        T_EQ_STR(solo[k].streamed.p ? solo[k].streamed.p : "", solo[k].r.text);
    }
}

static void check_engine(enum dtype dt)
{
    struct engine *g = open_tiny(dt, SLOTS);
    T_ASSERTF(g != NULL, "cannot open the tiny model with --parallel %s", SLOTS);
    if (!g) return;
    T_EQ_INT(engine_slots(g), atoi(SLOTS));
    char texts[N_TURNS][160];
    struct chat_msg msgs[N_TURNS];
    struct turn_request rq[N_TURNS];
    struct turn *t[N_TURNS] = {0};
    struct out solo[N_TURNS], conc[N_TURNS];
    memset(solo, 0, sizeof solo);
    memset(conc, 0, sizeof conc);
    struct err e = {{0}};
    for (int k = 0; k < N_TURNS; k++) {
        request(k, &msgs[k], texts[k], sizeof texts[k], &rq[k]);
        T_ASSERTF(turn_prepare(&t[k], g, &rq[k], &e) == 0, "turn %d: %s", k, e.msg);
        if (!t[k]) goto out;
        const struct turn_io io = {.cb = on_text, .cb_ctx = &solo[k]};
        T_ASSERTF(turn_run(t[k], g, &io, &solo[k].r, &e) == 0, "solo %d: %s", k, e.msg);
    }
    /* all of them through the scheduler, the next tokens picked on the device (the CPU twin of the
     * device sampler) where a turn allows it, then with every row picked on the host, then the two
     * alternating step by step */
    static const char *mode[] = {"device", "host", "alternating"};
    struct scheduler *s = NULL;
    for (int host = 0; host <= 2; host++) {
        sched_free(s);
        s = NULL;
        memset(conc, 0, sizeof conc);
        T_EQ_INT(sched_init(&s, g, &e), 0);
        if (!s) goto out;
        run_all(s, t, conc, solo, host);
        int64_t nd, nh;
        sched_pick_counts(s, &nd, &nh);
        printf("  %s, %s picks: %lld tokens picked on the device, %lld on the host\n", dtype_name(dt), mode[host],
               (long long)nd, (long long)nh);
        if (host == 1) T_ASSERT(nd == 0 && nh > 0);
        else if (host == 0)
            T_ASSERTF(nd > 5 * nh && nh > 0, "device %lld, host %lld: turn 4 alone picks on the host", (long long)nd,
                      (long long)nh);
        else T_ASSERTF(nd > 10 && nh > nd, "device %lld, host %lld: both, alternating", (long long)nd, (long long)nh);
        if (host < 2)
            for (int k = 0; k < N_TURNS; k++) {
                turn_result_free(&conc[k].r);
                strbuf_free(&conc[k].streamed);
            }
    }
    T_EQ_INT(sched_active(s), 0);
    /* a slot that finished is reused: one more turn after all of them gives its solo answer again */
    struct out again = {0};
    const struct turn_io io = {.cb = on_text, .cb_ctx = &again};
    T_EQ_INT(sched_add(s, t[0], &io, on_done, &again), 0);
    while (sched_step(s)) {}
    T_ASSERT(again.done == 1 && again.rc == 0 && solo[0].r.text && again.r.text && !strcmp(again.r.text, solo[0].r.text));
    turn_result_free(&again.r);
    strbuf_free(&again.streamed);
    sched_free(s);
out:
    for (int k = 0; k < N_TURNS; k++) {
        turn_result_free(&solo[k].r);
        turn_result_free(&conc[k].r);
        strbuf_free(&solo[k].streamed);
        strbuf_free(&conc[k].streamed);
        turn_free(t[k]);
    }
    engine_close(g);
}

static void test_concurrent_equals_solo_f32(void) { check_engine(DTYPE_F32); }
static void test_concurrent_equals_solo_f16(void) { check_engine(DTYPE_F16); }

/* A stop string that ends a turn in the middle of its decode: the scheduler launched the turn's next
 * row before its text showed the stop, so that row is still in flight when the turn finishes. A turn
 * waiting for a slot takes the freed slot before that row is collected, and another turn keeps the step
 * alive. The stopped row must be dropped: the waiting turn, the other turn and the stopped one all
 * answer as they do alone. The stop is chosen from turn A's own solo answer: the first ASCII pair that
 * starts past the bytes of A's first two tokens (the first comes from the prefill, the second from the
 * first decode step), so it completes at a decode step; A's answer is then its solo text cut before
 * that pair (and stripped). */
static void test_stop_in_flight(void)
{
    struct engine *g = open_tiny(DTYPE_F32, "2");
    T_ASSERT(g != NULL);
    if (!g) return;
    struct err e = {{0}};
    struct chat_msg ma = {"user", "Tell me a story about a cat"}, mb = {"user", "One two three four five"},
                    mc = {"user", "Why?"};
    struct turn_request ra, rb, rc;
    memset(&ra, 0, sizeof ra);
    ra.msgs = &ma;
    ra.n_msgs = 1;
    ra.max_new = 16;
    ra.ignore_eos = 1;
    sampler_defaults(&ra.sp);
    ra.sp.greedy = true;
    rb = ra;
    rb.msgs = &mb;
    rb.max_new = 40; /* still decoding when A stops: the collect that meets A's row has a live row */
    rc = ra;
    rc.msgs = &mc;
    rc.max_new = 8;
    rc.ignore_eos = 0;
    rc.sp.greedy = false;
    rc.sp.temperature = 0.9f;
    rc.sp.seed = 7;
    struct turn *t[4] = {0};
    struct out solo[4], conc[3];
    memset(solo, 0, sizeof solo);
    memset(conc, 0, sizeof conc);
    /* A without a stop: its text, to choose the stop from */
    T_ASSERT(turn_prepare(&t[3], g, &ra, &e) == 0 && turn_run(t[3], g, NULL, &solo[3].r, &e) == 0);
    const char *full = solo[3].r.text ? solo[3].r.text : "";
    size_t lim = 0;
    for (int i = 0; i < 2 && i < solo[3].r.n_gen; i++) {
        const char *b;
        size_t n = 0;
        tokenizer_token_bytes(engine_tokenizer(g), solo[3].r.ids[i], &b, &n);
        lim += n;
    }
    char stop[3] = {0};
    size_t at = 0;
    for (size_t p = lim; p + 2 <= strlen(full) && !stop[0]; p++) {
        const unsigned char c0 = (unsigned char)full[p], c1 = (unsigned char)full[p + 1];
        if (c0 <= ' ' || c0 >= 127 || c1 <= ' ' || c1 >= 127) continue;
        char pair[3] = {full[p], full[p + 1], 0};
        if (strstr(full, pair) != full + p) continue; /* its first occurrence */
        memcpy(stop, pair, 3);
        at = p;
    }
    T_ASSERTF(stop[0], "no ASCII pair past byte %zu of A's answer \"%s\": the test cannot place its stop", lim, full);
    if (!stop[0]) goto out;
    ra.stop[0] = stop;
    ra.n_stop = 1;
    /* the expected answer: A's text before the stop, stripped */
    char want[256];
    size_t wl = at < sizeof want - 1 ? at : sizeof want - 1;
    memcpy(want, full, wl);
    while (wl && (want[wl - 1] == ' ' || want[wl - 1] == '\n' || want[wl - 1] == '\t')) wl--;
    want[wl] = 0;
    struct turn_request *rqs[3] = {&ra, &rb, &rc};
    for (int k = 0; k < 3; k++) {
        T_ASSERTF(turn_prepare(&t[k], g, rqs[k], &e) == 0, "turn %d: %s", k, e.msg);
        if (!t[k]) goto out;
        T_ASSERTF(turn_run(t[k], g, NULL, &solo[k].r, &e) == 0, "solo %d: %s", k, e.msg);
    }
    T_EQ_STR(solo[0].r.text ? solo[0].r.text : "", want);
    printf("  stop \"%s\" at byte %zu of \"%s\": A stops after %d of %d tokens\n", stop, at, full, solo[0].r.n_gen,
           solo[3].r.n_gen);
    T_ASSERTF(solo[0].r.n_gen >= 3 && solo[0].r.n_gen < solo[3].r.n_gen, "A: %d tokens", solo[0].r.n_gen);
    struct scheduler *s = NULL;
    T_EQ_INT(sched_init(&s, g, &e), 0);
    if (!s) goto out;
    T_EQ_INT(sched_add(s, t[0], NULL, on_done, &conc[0]), 0);
    T_EQ_INT(sched_add(s, t[1], NULL, on_done, &conc[1]), 0);
    int added = 0, steps = 0, c_at = -1;
    while (sched_active(s) || !added) {
        if (!added && sched_slots_free(s) > 0) { /* A's slot, right after A finished */
            T_EQ_INT(conc[0].done, 1);
            T_EQ_INT(sched_add(s, t[2], NULL, on_done, &conc[2]), 0);
            added = 1;
            c_at = steps;
        }
        sched_step(s);
        if (++steps > 1000) break;
    }
    T_ASSERTF(c_at > 0 && conc[1].done == 1 && !conc[1].rc, "C admitted at step %d", c_at);
    for (int k = 0; k < 3; k++) {
        T_EQ_INT(conc[k].done, 1);
        T_ASSERTF(conc[k].rc == 0, "turn %c: %s", 'A' + k, conc[k].err);
        if (conc[k].rc || !solo[k].r.text || !conc[k].r.text) continue;
        T_ASSERTF(conc[k].r.n_gen == solo[k].r.n_gen, "turn %c: %d tokens, solo %d", 'A' + k, conc[k].r.n_gen,
                  solo[k].r.n_gen);
        for (int i = 0; i < conc[k].r.n_gen && i < solo[k].r.n_gen; i++) T_EQ_INT(conc[k].r.ids[i], solo[k].r.ids[i]);
        T_EQ_STR(conc[k].r.text, solo[k].r.text);
        T_EQ_STR(conc[k].r.finish, solo[k].r.finish);
    }
    T_EQ_STR(conc[0].r.finish, "stop");
    sched_free(s);
out:
    for (int k = 0; k < 4; k++) {
        turn_result_free(&solo[k].r);
        strbuf_free(&solo[k].streamed);
        turn_free(t[k]);
    }
    for (int k = 0; k < 3; k++) {
        turn_result_free(&conc[k].r);
        strbuf_free(&conc[k].streamed);
    }
    engine_close(g);
}

/* A turn that fails to start (its image cannot be encoded) is answered through its callback as the
 * request's fault; the others are not disturbed. */
static void test_failures(void)
{
    struct engine *g = open_tiny(DTYPE_F32, "2");
    T_ASSERT(g != NULL);
    if (!g) return;
    struct err e = {{0}};
    /* a prompt that leaves no room: turn_prepare refuses it with the context wording */
    struct strbuf big = {0};
    for (int i = 0; i < 300; i++) strbuf_printf(&big, "word%d ", i);
    struct chat_msg m = {"user", big.p};
    struct turn_request rq = {.msgs = &m, .n_msgs = 1, .max_new = 4};
    sampler_defaults(&rq.sp);
    struct turn *t = NULL;
    T_EQ_INT(turn_prepare(&t, g, &rq, &e), -1);
    T_CONTAINS(e.msg, "maximum context length");
    T_ASSERT(t == NULL);
    strbuf_free(&big);
    /* a beam request is not staged */
    struct chat_msg m2 = {"user", "Hello there"};
    struct turn_request rb = {.msgs = &m2, .n_msgs = 1, .max_new = 4, .num_beams = 2, .length_penalty = 1.0f};
    sampler_defaults(&rb.sp);
    T_EQ_INT(turn_prepare(&t, g, &rb, &e), 0);
    struct scheduler *s = NULL;
    T_EQ_INT(sched_init(&s, g, &e), 0);
    struct out o = {0};
    if (s && t) {
        T_EQ_INT(sched_add(s, t, NULL, on_done, &o), -1);
        T_EQ_INT(o.done, 1);
        T_EQ_INT(o.rc, -1);
        T_CONTAINS(o.err, "beam");
        T_EQ_INT(sched_active(s), 0);
    }
    sched_free(s);
    turn_free(t);
    engine_close(g);
}

/* A request of `words` filler words (word k of turn `tag`), greedy or sampled, max_new tokens through the stop ids. */
static void filler_request(struct turn_request *rq, struct chat_msg *m, char *text, size_t tn, int tag, int words,
                           int max_new, int sampled)
{
    size_t n = 0;
    text[0] = 0;
    for (int k = 0; k < words && n + 16 < tn; k++) n += (size_t)snprintf(text + n, tn - n, "%sw%dx%d", k ? " " : "", tag, k);
    *m = (struct chat_msg){"user", text};
    memset(rq, 0, sizeof *rq);
    rq->msgs = m;
    rq->n_msgs = 1;
    rq->max_new = max_new;
    rq->ignore_eos = 1;
    sampler_defaults(&rq->sp);
    rq->sp.seed = (uint64_t)(7 + tag);
    if (sampled) rq->sp.temperature = 0.8f;
    else rq->sp.greedy = true;
}

/* Admission under load (sched_set_prefill_budget), with 16-token chunks (--max-batch 16) and 5 slots:
 *  - two short prompts admitted together take two steps with the default budget (one chunk: the second
 *    prompt's chunk does not fit what the first left);
 *  - a prompt of 5 chunks admitted while those two decode is fed one chunk per step (its slot grows by 16)
 *    while each decoding turn gains exactly one token every step: decode never waits for the whole prompt;
 *  - with a budget of 32, two short prompts admitted together while three turns decode both have their first
 *    token after one step;
 *  - every answer equals the same request alone on a second engine (the chunks a turn gets are those it
 *    has alone, and a decode row of the batched step is its solo step, bit for bit on the CPU). */
static void test_admission(void)
{
    char *more[] = {"--max-batch", "16", NULL};
    struct engine *g = open_tiny_flags(DTYPE_F32, "5", more), *alone = open_tiny_flags(DTYPE_F32, "1", more);
    T_ASSERT(g && alone);
    enum { A, B, C, D, E, NT };
    static const int words[NT] = {1, 1, 15, 1, 1}, max_new[NT] = {20, 20, 3, 3, 3}, sampled[NT] = {0, 1, 0, 1, 0};
    char text[NT][512];
    struct chat_msg m[NT];
    struct turn_request rq[NT];
    struct turn *t[NT] = {0};
    struct out solo[NT], conc[NT];
    memset(solo, 0, sizeof solo);
    memset(conc, 0, sizeof conc);
    struct scheduler *s = NULL;
    struct err e = {{0}};
    if (!g || !alone) goto out;
    for (int k = 0; k < NT; k++) {
        filler_request(&rq[k], &m[k], text[k], sizeof text[k], k, words[k], max_new[k], sampled[k]);
        T_ASSERTF(turn_prepare(&t[k], g, &rq[k], &e) == 0, "turn %d: %s", k, e.msg);
        if (!t[k]) goto out;
        T_ASSERTF(turn_run(t[k], alone, NULL, &solo[k].r, &e) == 0, "solo %d: %s", k, e.msg);
    }
    const int nc = turn_prompt_tokens(t[C]);
    T_ASSERTF(nc > 64 && nc <= 80, "turn C: %d prompt tokens (5 chunks wanted)", nc);
    for (int k = 0; k < NT; k++)
        if (k != C) T_ASSERTF(turn_prompt_tokens(t[k]) <= 16, "turn %d: %d prompt tokens", k, turn_prompt_tokens(t[k]));
    T_EQ_INT(sched_init(&s, g, &e), 0);
    if (!s) goto out;
    /* A and B at once: the default budget (one chunk) feeds A's prompt, then B's in the next step */
    sched_add(s, t[A], NULL, on_done, &conc[A]);
    sched_add(s, t[B], NULL, on_done, &conc[B]);
    sched_step(s);
    T_EQ_INT(sched_prefilling(s), 1);
    sched_step(s);
    T_EQ_INT(sched_prefilling(s), 0);
    /* C's 5 chunks, one per step; A and B decode on */
    sched_add(s, t[C], NULL, on_done, &conc[C]);
    int steps = 0;
    while (sched_prefilling(s) > 0 && steps < 20) {
        const int64_t a0 = engine_slot_len(g, turn_slot(t[A])), b0 = engine_slot_len(g, turn_slot(t[B]));
        const int64_t c0 = engine_slot_len(g, turn_slot(t[C]));
        sched_step(s);
        steps++;
        const int64_t c1 = engine_slot_len(g, turn_slot(t[C]));
        T_EQ_INT(engine_slot_len(g, turn_slot(t[A])), a0 + 1);
        T_EQ_INT(engine_slot_len(g, turn_slot(t[B])), b0 + 1);
        if (sched_prefilling(s)) T_EQ_INT(c1 - c0, 16); /* the last chunk is the rest; C then decodes too */
    }
    T_EQ_INT(steps, (nc + 15) / 16);
    /* D and E at once, budget 32: both first tokens in the next step */
    sched_set_prefill_budget(s, 32);
    sched_add(s, t[D], NULL, on_done, &conc[D]);
    sched_add(s, t[E], NULL, on_done, &conc[E]);
    T_EQ_INT(sched_prefilling(s), 2);
    T_EQ_INT(sched_active(s), 5);
    sched_step(s);
    T_EQ_INT(sched_prefilling(s), 0);
    while (sched_step(s)) {}
    for (int k = 0; k < NT; k++) {
        T_ASSERTF(conc[k].done == 1 && conc[k].rc == 0, "turn %d: %s", k, conc[k].err);
        T_ASSERTF(conc[k].r.n_gen == max_new[k] && solo[k].r.n_gen == max_new[k], "turn %d: %d and %d tokens", k,
                  conc[k].r.n_gen, solo[k].r.n_gen);
        for (int i = 0; i < conc[k].r.n_gen && i < solo[k].r.n_gen; i++)
            T_ASSERTF(conc[k].r.ids[i] == solo[k].r.ids[i], "turn %d token %d: %d, alone %d", k, i, conc[k].r.ids[i],
                      solo[k].r.ids[i]);
    }
out:
    sched_free(s);
    for (int k = 0; k < NT; k++) {
        turn_result_free(&solo[k].r);
        turn_result_free(&conc[k].r);
        turn_free(t[k]);
    }
    engine_close(g);
    engine_close(alone);
}

/* Preemption (a KV pool far smaller than slots x ctx: --kv-tokens 256 = one --ctx 256 sequence, 16 blocks,
 * for 16 slots): 16 turns at once, prompts of 2 blocks (17..32 tokens) and 14..20 new tokens through the
 * stop ids, greedy and seeded sampling (penalty 1.05) alternating. The pool holds 8 such prompts: the first
 * turns' growth takes the younger turns' blocks (preempted: published, emptied, resumed later by prefilling
 * their tokens again), so preemptions happen, the scheduler and the engine count the same number, every
 * turn finishes, and each answer equals the same request alone on an engine with the default pool. A
 * resumed turn's tokens are fed again in a prefill chunk; on the CPU its rows equal the one-row steps that
 * first computed them bit for bit (every row of any batch is computed alike: ARCHITECTURE.md, Numerics), so
 * the recomputed KV is the first one and the answers are equal by construction, not by luck of rounding. */
static void check_preemption(enum dtype dt)
{
    char *small[] = {"--ctx", "256", "--kv-tokens", "256", NULL};
    struct engine *g = open_tiny_flags(dt, "16", small), *alone = open_tiny_flags(dt, "1", NULL);
    T_ASSERT(g && alone);
    enum { NT = 16 };
    char text[NT][256];
    struct chat_msg m[NT];
    struct turn_request rq[NT];
    struct turn *t[NT] = {0};
    struct out solo[NT], conc[NT];
    memset(solo, 0, sizeof solo);
    memset(conc, 0, sizeof conc);
    struct scheduler *s = NULL;
    struct err e = {{0}};
    if (!g || !alone) goto out;
    struct engine_kv_use kv;
    engine_kv_use(g, &kv);
    T_EQ_INT(kv.blocks, 16);
    T_EQ_INT(kv.slot_blocks, 16);
    for (int k = 0; k < NT; k++) {
        filler_request(&rq[k], &m[k], text[k], sizeof text[k], 100 + k, 2 + k % 3, 14 + k % 7, k % 2);
        T_ASSERTF(turn_prepare(&t[k], g, &rq[k], &e) == 0, "turn %d: %s", k, e.msg);
        if (!t[k]) goto out;
        const int np = turn_prompt_tokens(t[k]);
        T_ASSERTF(np > 16 && np <= 32, "turn %d: %d prompt tokens (2 blocks wanted)", k, np);
        const struct turn_io io = {.cb = on_text, .cb_ctx = &solo[k]};
        T_ASSERTF(turn_run(t[k], alone, &io, &solo[k].r, &e) == 0, "solo %d: %s", k, e.msg);
    }
    T_EQ_INT(sched_init(&s, g, &e), 0);
    if (!s) goto out;
    for (int k = 0; k < NT; k++) {
        const struct turn_io io = {.cb = on_text, .cb_ctx = &conc[k]};
        T_EQ_INT(sched_add(s, t[k], &io, on_done, &conc[k]), 0);
    }
    int steps = 0, most = 0;
    while (sched_step(s) && ++steps < 5000) {
        engine_kv_use(g, &kv);
        T_ASSERT(kv.used <= kv.blocks);
        int holding = 0;
        for (int k = 0; k < NT; k++) holding += engine_slot_len(g, k) > 0;
        if (holding > most) most = holding;
    }
    T_ASSERTF(steps < 5000, "%d steps", steps);
    engine_kv_use(g, &kv);
    int resumed = 0;
    for (int k = 0; k < NT; k++) {
        T_ASSERTF(conc[k].done == 1 && conc[k].rc == 0, "turn %d: %s", k, conc[k].err);
        resumed += conc[k].r.n_preempted;
        T_ASSERTF(conc[k].r.n_gen == solo[k].r.n_gen, "turn %d: %d tokens, alone %d", k, conc[k].r.n_gen, solo[k].r.n_gen);
        for (int i = 0; i < conc[k].r.n_gen && i < solo[k].r.n_gen; i++)
            T_ASSERTF(conc[k].r.ids[i] == solo[k].r.ids[i], "turn %d (preempted %d times) token %d: %d, alone %d", k,
                      conc[k].r.n_preempted, i, conc[k].r.ids[i], solo[k].r.ids[i]);
        if (conc[k].r.text && solo[k].r.text) T_EQ_STR(conc[k].r.text, solo[k].r.text);
        T_EQ_STR(conc[k].streamed.p ? conc[k].streamed.p : "", conc[k].r.text ? conc[k].r.text : "");
    }
    int64_t pre, rec;
    sched_preempt_counts(s, &pre, &rec);
    printf("  %s: %d steps, %lld preemptions (%lld tokens prefilled again), at most %d turns holding blocks, %lld "
           "blocks evicted\n", dtype_name(dt), steps, (long long)pre, (long long)rec, most, (long long)kv.evicted);
    T_ASSERT(pre > 0 && rec > 0);
    T_EQ_INT(kv.preempted, pre);
    T_EQ_INT(resumed, pre);
    T_ASSERTF(most <= 8, "%d turns held blocks at once", most);
    T_EQ_INT(kv.used, 0);
out:
    sched_free(s);
    for (int k = 0; k < NT; k++) {
        turn_result_free(&solo[k].r);
        turn_result_free(&conc[k].r);
        strbuf_free(&solo[k].streamed);
        strbuf_free(&conc[k].streamed);
        turn_free(t[k]);
    }
    engine_close(g);
    engine_close(alone);
}

static void test_preemption_f32(void) { check_preemption(DTYPE_F32); }
static void test_preemption_f16(void) { check_preemption(DTYPE_F16); }

/* A pool that cannot hold one --ctx sequence is refused when the engine opens (so every request the
 * context check admits fits the pool alone), and a request over the context is refused at admission
 * (turn_prepare: the server's parse step) with the context wording, also with a small pool. */
static void test_pool_refusals(void)
{
    char *tiny_pool[] = {"--ctx", "256", "--kv-tokens", "100", NULL};
    struct cmdu_engine_opts eo;
    cmdu_engine_opts_init(&eo);
    struct err e = {{0}};
    for (int i = 0; tiny_pool[i]; i++) T_EQ_INT(cmdu_engine_flag(&eo.o, &eo.dm, 4, tiny_pool, &i, &e), 1);
    eo.o.model_dir = t_tiny_model(1);
    eo.o.device = "cpu";
    eo.o.quiet = 1;
    struct engine *x = NULL;
    T_EQ_INT(engine_open(&x, &eo.o, &e), -1);
    T_ASSERT(x == NULL);
    T_CONTAINS(e.msg, "--kv-tokens 100: the KV pool must hold at least one --ctx 256 sequence");
    char *bad[] = {"--kv-tokens", "lots", NULL};
    int i = 0;
    T_EQ_INT(cmdu_engine_flag(&eo.o, &eo.dm, 2, bad, &i, &e), -1);
    T_CONTAINS(e.msg, "--kv-tokens: 'lots' is neither auto nor an integer");

    char *small[] = {"--ctx", "64", "--kv-tokens", "64", NULL};
    struct engine *g = open_tiny_flags(DTYPE_F32, "4", small);
    T_ASSERT(g != NULL);
    if (!g) return;
    char text[512];
    struct chat_msg m;
    struct turn_request rq;
    filler_request(&rq, &m, text, sizeof text, 1, 14, 8, 0); /* ~60 prompt tokens + 8 > 64 */
    struct turn *t = NULL;
    T_EQ_INT(turn_prepare(&t, g, &rq, &e), -1);
    T_CONTAINS(e.msg, "maximum context length is 64 tokens");
    T_ASSERT(t == NULL);
    engine_close(g);
}

int main(void)
{
    T_RUN(test_concurrent_equals_solo_f32);
    T_RUN(test_concurrent_equals_solo_f16);
    T_RUN(test_stop_in_flight);
    T_RUN(test_failures);
    T_RUN(test_admission);
    T_RUN(test_preemption_f32);
    T_RUN(test_preemption_f16);
    T_RUN(test_pool_refusals);
    return t_main_end("test_sched");
}
