/* test_sched.c: several chat turns in flight (scheduler.h) on the tiny model, on the CPU. Every turn's
 * tokens, text and streamed text under the scheduler must equal the same turn run alone (turn_run): the
 * batched decode step and the staged turn must change nothing a turn sees. Also: a turn cancelled
 * mid-way, a stop string, a turn whose prompt does not fit, more turns than slots (they queue), and
 * fp16; a stop string that ends a turn while its next row is in flight, its slot taken at once by a
 * waiting turn (the stale row dropped at the collect). The solo answers come from turn_run, an
 * independent path (engine_generate on slot 0), and test_penalty checks turn_run itself against a
 * reference loop written in that test. */
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

static struct engine *open_tiny(enum dtype dt, const char *parallel)
{
    struct cmdu_engine_opts eo;
    cmdu_engine_opts_init(&eo);
    char *argv[] = {"x", "--parallel", (char *)parallel, NULL};
    struct err e = {{0}};
    int i = 1;
    if (cmdu_engine_flag(&eo.o, &eo.dm, 3, argv, &i, &e) != 1) {
        fprintf(stderr, "--parallel %s: %s\n", parallel, e.msg[0] ? e.msg : "not an engine flag");
        return NULL;
    }
    eo.o.model_dir = t_tiny_model(1);
    eo.o.device = "cpu";
    eo.o.dtype = dt;
    eo.o.ctx = 256;
    eo.o.quiet = 1;
    struct engine *x = NULL;
    if (!eo.o.model_dir || engine_open(&x, &eo.o, &e)) fprintf(stderr, "engine_open: %s\n", e.msg);
    return x;
}

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

int main(void)
{
    T_RUN(test_concurrent_equals_solo_f32);
    T_RUN(test_concurrent_equals_solo_f16);
    T_RUN(test_stop_in_flight);
    T_RUN(test_failures);
    return t_main_end("test_sched");
}
