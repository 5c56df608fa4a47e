/* test_batch.c: several sequences (slots) in one engine and the batched decode step (issue 14).
 * The reference of every check is a sequence run alone: an engine with one slot (today's session
 * path: llm_forward on slot 0) prefilled with the prompt and fed its greedy tokens one at a time.
 * On the CPU each row of engine_decode_batch must equal that solo run bit for bit, whatever the batch
 * size (the CPU computes every row the same way whatever rows share its call), on the tiny model in
 * fp32 and fp16:
 *  - engines of 1, 3 and 16 slots (fp16: 2 and 16) with different prompt lengths, rows in an order
 *    that changes every step, all slots or B = 1, 2, .., N of them per step, 16 greedy steps:
 *    logits and tokens equal the solo runs;
 *  - isolation: emptying one slot and refilling it with another prompt mid-run changes no other
 *    slot's numbers; a partial truncate then re-feeding the same tokens gives the same logits; a short
 *    sequence beside a longer slot 0 reads and writes its own blocks (a mix-up gives other numbers
 *    there, not an out-of-table read);
 *  - a split over --logical-devices cpu:2 gives the same numbers;
 *  - errors (nothing run, no slot changed): a slot out of range, the same slot twice in one step, a
 *    full slot (llm_check_fit's wording), a bad batch size, an id outside the vocabulary;
 *  - --parallel: the planner counts the KV of N slots and says so when it does not fit.
 *  - device picks (engine_decode_batch_pick, the CPU twin of the device sampler): slots with their
 *    own sampler parameters joining and leaving, every pick equal to a host sampler's on the same
 *    logits, declined rows picked on the host with the same draw (tpick.h);
 *  - the graph warm-up's eager steps (llm_warm_batch_graphs) mid-run leave every pick and logit as an
 *    engine that did not warm computes them (the KV row, table entry and sampler rows it borrows are
 *    given back); the batched step's host-time counters;
 * `test_batch bench` prints tok/s of batched steps of B = 1, 4, 8 on the tiny model. */
#include <stdlib.h>
#include <string.h>

#include "cmd_util.h"
#include "common.h"
#include "devmap.h"
#include "engine.h"
#include "engine_impl.h"
#include "llm.h"
#include "t.h"
#include "tpick.h"
#include "tutil.h"

#define NSEQ 16
#define STEPS 16
#define CTX 128

static struct engine *open_eng(enum dtype dt, int parallel, int split, int64_t ctx, struct err *e)
{
    struct engine_options o;
    engine_options_default(&o);
    o.model_dir = t_tiny_model(1);
    o.device = "cpu";
    o.dtype = dt;
    o.ctx = ctx;
    o.parallel = parallel;
    o.quiet = 1;
    struct devmap_opts dm;
    devmap_opts_init(&dm);
    dm.n_gpus = 0;
    if (split > 1) {
        dm.n_split = 1;
        snprintf(dm.split_key[0], sizeof dm.split_key[0], "cpu");
        dm.split_parts[0] = split;
    }
    o.devmap = &dm;
    struct engine *g = NULL;
    if (!o.model_dir || engine_open(&g, &o, e)) return NULL;
    return g;
}

static int argmax(const float *x, int V)
{
    int b = 0;
    for (int j = 1; j < V; j++)
        if (x[j] > x[b]) b = j;
    return b;
}

/* Prompt of sequence s: 3 + 7 s ids from a fixed generator (tag varies the content). */
static int prompt(int s, int tag, int V, int32_t *ids)
{
    const int n = 3 + 7 * s;
    uint64_t r = 0x9e3779b97f4a7c15ULL * (uint64_t)(s + 1) + (uint64_t)tag * 1000003u;
    for (int i = 0; i < n; i++) {
        r = r * 6364136223846793005ULL + 1442695040888963407ULL;
        ids[i] = (int32_t)((r >> 33) % (uint64_t)V);
    }
    return n;
}

/* The solo run of one prompt: logits after the prompt and after each of STEPS greedy tokens fed
 * one at a time, in an engine with one slot. ref [(STEPS + 1) * V]. */
static int solo(struct engine *r, const int32_t *ids, int n, float *ref, struct err *e)
{
    const int V = engine_config(r)->vocab_size;
    engine_slot_truncate(r, 0, 0);
    if (engine_slot_prefill(r, 0, ids, NULL, n, ref, e)) return -1;
    for (int t = 0; t < STEPS; t++) {
        int32_t tok = argmax(ref + (size_t)t * V, V);
        if (engine_slot_prefill(r, 0, &tok, NULL, 1, ref + (size_t)(t + 1) * V, e)) return -1;
    }
    return 0;
}

static int same_floats(const float *a, const float *b, int V) { return memcmp(a, b, (size_t)V * sizeof *a) == 0; }

/* Runs the first nseq prompts in the slots of g (g has >= nseq slots) with the batched step: at
 * step k every unfinished slot (sizes 0) or 1 + k % nseq of them (sizes 1), in an order that
 * changes every step, until each slot has taken STEPS steps; every row is compared with ref[s].
 * When disturb >= 0, that slot is emptied after half its steps and refilled with another prompt
 * (its rows are then not checked; every other slot's must still match). Returns the number of
 * mismatching rows. */
static int run_batched(struct engine *g, int nseq, float *const *ref, int sizes, int disturb, struct err *e)
{
    const int V = engine_config(g)->vocab_size;
    int32_t ids[3 + 7 * NSEQ];
    float *lg = malloc((size_t)NSEQ * V * sizeof *lg);
    int step[NSEQ] = {0}, bad = 0, disturbed = 0;
    int32_t next[NSEQ];
    CHECK(lg);
    for (int s = 0; s < nseq; s++) {
        engine_slot_truncate(g, s, 0);
        int n = prompt(s, 0, V, ids);
        if (engine_slot_prefill(g, s, ids, NULL, n, lg, e)) { bad = -1; goto out; }
        if (!same_floats(lg, ref[s], V)) {
            fprintf(stderr, "  slot %d: prefill logits differ from the solo run\n", s);
            bad++;
        }
        next[s] = argmax(lg, V);
    }
    for (int k = 0;; k++) {
        /* the unfinished slots, reversed on odd steps; `sizes`: a window of 1 + k % nseq of them
         * starting at k (so the first nseq steps have B = 1, 2, .., nseq) */
        int open[NSEQ], n_open = 0, slots[NSEQ], B = 0;
        for (int j = 0; j < nseq; j++) {
            int s = k % 2 ? nseq - 1 - j : j;
            if (step[s] < STEPS) open[n_open++] = s;
        }
        if (n_open == 0) break;
        const int want = sizes ? 1 + k % nseq : n_open;
        for (int j = 0; j < n_open && B < want; j++) slots[B++] = open[(j + k) % n_open];
        int32_t toks[NSEQ];
        for (int i = 0; i < B; i++) toks[i] = next[slots[i]];
        if (engine_decode_batch(g, slots, toks, B, lg, e)) { bad = -1; goto out; }
        for (int i = 0; i < B; i++) {
            const int s = slots[i];
            const float *row = lg + (size_t)i * V;
            step[s]++;
            next[s] = argmax(row, V);
            if (s == disturb && disturbed) continue; /* another prompt now */
            if (!same_floats(row, ref[s] + (size_t)step[s] * V, V)) {
                fprintf(stderr, "  slot %d step %d (row %d of %d): logits differ from the solo run\n", s, step[s], i, B);
                bad++;
            }
            if (engine_slot_len(g, s) != 3 + 7 * s + step[s]) {
                fprintf(stderr, "  slot %d holds %lld tokens, expected %d\n", s, (long long)engine_slot_len(g, s),
                        3 + 7 * s + step[s]);
                bad++;
            }
        }
        if (disturb >= 0 && !disturbed && step[disturb] == STEPS / 2) {
            /* empty it and start another prompt there: the others must not notice */
            engine_slot_truncate(g, disturb, 0);
            int n = prompt(disturb, 1, V, ids);
            if (engine_slot_prefill(g, disturb, ids, NULL, n, lg, e)) { bad = -1; goto out; }
            next[disturb] = argmax(lg, V);
            step[disturb]++; /* keeps the slot's step count and length in step (not checked) */
            disturbed = 1;
        }
    }
out:
    free(lg);
    return bad;
}

struct refs {
    float *r[NSEQ];
};

/* the solo references per dtype (f32, f16), computed once for all tests; freed at exit */
static struct refs kept[2];
static int have[2];

static int make_refs(enum dtype dt, struct refs *rf, struct err *e)
{
    memset(rf, 0, sizeof *rf);
    const int k = dt == DTYPE_F32 ? 0 : 1;
    if (have[k]) {
        *rf = kept[k];
        return 0;
    }
    struct engine *r = open_eng(dt, 1, 1, CTX, e);
    if (!r) return -1;
    const int V = engine_config(r)->vocab_size;
    int32_t ids[3 + 7 * NSEQ];
    int rc = 0;
    for (int s = 0; s < NSEQ && !rc; s++) {
        rf->r[s] = malloc((size_t)(STEPS + 1) * V * sizeof(float));
        CHECK(rf->r[s]);
        int n = prompt(s, 0, V, ids);
        rc = solo(r, ids, n, rf->r[s], e);
    }
    engine_close(r);
    kept[k] = *rf; /* freed at exit, used again only when complete */
    have[k] = !rc;
    return rc;
}

/* The references stay for the next test (freed at exit). */
static void free_refs(struct refs *rf) { (void)rf; }

static void check_batched(enum dtype dt, const int *counts, int n_counts)
{
    struct err e = {{0}};
    struct refs rf;
    T_ASSERTF(make_refs(dt, &rf, &e) == 0, "%s", e.msg);
    for (int ci = 0; ci < n_counts; ci++) {
        const int nseq = counts[ci];
        struct engine *g = open_eng(dt, nseq, 1, CTX, &e);
        T_ASSERTF(g != NULL, "%s", e.msg);
        if (!g) break;
        T_EQ_INT(engine_slots(g), nseq);
        T_EQ_INT(engine_slot_ctx(g), CTX);
        /* every slot each step; then subsets in changing order (B = 1..nseq) with one slot emptied
         * and refilled half way */
        T_EQ_INT(run_batched(g, nseq, rf.r, 0, -1, &e), 0);
        T_EQ_INT(run_batched(g, nseq, rf.r, 1, nseq > 1 ? nseq / 2 : -1, &e), 0);
        engine_close(g);
    }
    free_refs(&rf);
}

/* Engines of 1, 3 and 16 slots (fp32) and 2 and 16 (fp16); the subsets of run_batched make every
 * batch size from 1 to the slot count. */
static void test_batch_f32(void)
{
    const int counts[] = {1, 3, NSEQ};
    check_batched(DTYPE_F32, counts, 3);
}
static void test_batch_f16(void)
{
    const int counts[] = {2, NSEQ};
    check_batched(DTYPE_F16, counts, 2);
}

/* The references differ between sequences (else equal rows could hide a row mix-up). */
static void test_refs_distinct(void)
{
    struct err e = {{0}};
    struct refs rf;
    T_ASSERTF(make_refs(DTYPE_F32, &rf, &e) == 0, "%s", e.msg);
    const struct model_config *c = NULL;
    struct engine *g = open_eng(DTYPE_F32, 1, 1, CTX, &e);
    T_ASSERTF(g != NULL, "%s", e.msg);
    if (g) c = engine_config(g);
    if (c)
        for (int s = 1; s < NSEQ; s++)
            T_ASSERTF(!same_floats(rf.r[s] + (size_t)STEPS * c->vocab_size, rf.r[0] + (size_t)STEPS * c->vocab_size,
                                   c->vocab_size),
                      "sequence %d's last logits equal sequence 0's", s);
    engine_close(g);
    free_refs(&rf);
}

/* Each row reads and writes through its own slot's block table: slot 0 holds the longest prompt
 * (prompt 5, 38 ids), slot 1 a short one (prompt 1, 10 ids), so a row of slot 1 sent to slot 0's
 * table or rows would still find blocks there and give other numbers (not an out-of-table read that
 * the CPU twin's bounds check refuses). Rows in the order slot 1, slot 0; both equal their solo runs. */
static void test_rows_own_tables(void)
{
    struct err e = {{0}};
    struct refs rf;
    T_ASSERTF(make_refs(DTYPE_F32, &rf, &e) == 0, "%s", e.msg);
    struct engine *g = open_eng(DTYPE_F32, 2, 1, CTX, &e);
    T_ASSERTF(g != NULL, "%s", e.msg);
    if (!g) return;
    const int V = engine_config(g)->vocab_size, which[2] = {5, 1}; /* slot i holds prompt which[i] */
    int32_t ids[3 + 7 * NSEQ], next[2];
    float *lg = malloc((size_t)2 * V * sizeof *lg);
    CHECK(lg);
    int bad = 0;
    for (int sl = 0; sl < 2; sl++) {
        const int n = prompt(which[sl], 0, V, ids);
        T_EQ_INT(engine_slot_prefill(g, sl, ids, NULL, n, lg, &e), 0);
        bad += !same_floats(lg, rf.r[which[sl]], V);
        next[sl] = argmax(lg, V);
    }
    T_ASSERT(engine_slot_len(g, 0) > engine_slot_len(g, 1) + STEPS);
    for (int t = 0; t < STEPS && bad >= 0; t++) {
        const int slots[2] = {1, 0};
        const int32_t toks[2] = {next[1], next[0]};
        if (engine_decode_batch(g, slots, toks, 2, lg, &e)) {
            T_ASSERTF(0, "step %d: %s", t, e.msg);
            break;
        }
        for (int i = 0; i < 2; i++) {
            const int sl = slots[i];
            const float *row = lg + (size_t)i * V;
            if (!same_floats(row, rf.r[which[sl]] + (size_t)(t + 1) * V, V)) {
                fprintf(stderr, "  slot %d step %d: logits differ from the solo run\n", sl, t + 1);
                bad++;
            }
            next[sl] = argmax(row, V);
        }
    }
    T_EQ_INT(bad, 0);
    free(lg);
    engine_close(g);
    free_refs(&rf);
}

/* Layers over two logical CPU devices: the same numbers. */
static void test_batch_split(void)
{
    struct err e = {{0}};
    struct refs rf;
    T_ASSERTF(make_refs(DTYPE_F32, &rf, &e) == 0, "%s", e.msg);
    struct engine *g = open_eng(DTYPE_F32, 4, 2, CTX, &e);
    T_ASSERTF(g != NULL, "%s", e.msg);
    if (g) {
        T_EQ_INT(run_batched(g, 4, rf.r, 1, 1, &e), 0);
    }
    engine_close(g);
    free_refs(&rf);
}

/* engine_slot_truncate keeps the first n tokens: re-feeding the dropped ones gives the same logits. */
static void test_truncate_refeed(void)
{
    struct err e = {{0}};
    struct engine *g = open_eng(DTYPE_F32, 3, 1, CTX, &e);
    T_ASSERTF(g != NULL, "%s", e.msg);
    if (!g) return;
    const int V = engine_config(g)->vocab_size;
    int32_t ids[3 + 7 * NSEQ];
    float *a = malloc((size_t)V * sizeof *a), *b = malloc((size_t)V * sizeof *b);
    CHECK(a && b);
    /* fed whole, then as the kept 10 + the rest: the same numbers (a row's bits do not depend on
     * the rows computed with it, test_llm's chunked-prefill check) */
    int n = prompt(5, 0, V, ids);
    T_EQ_INT(engine_slot_prefill(g, 2, ids, NULL, n, a, &e), 0);
    T_EQ_INT(engine_slot_len(g, 2), n);
    engine_slot_truncate(g, 2, 10);
    T_EQ_INT(engine_slot_len(g, 2), 10);
    engine_slot_truncate(g, 2, 20); /* longer than it holds: nothing changes */
    T_EQ_INT(engine_slot_len(g, 2), 10);
    T_EQ_INT(engine_slot_prefill(g, 2, ids + 10, NULL, n - 10, b, &e), 0);
    T_ASSERT(same_floats(a, b, V));
    /* the other slots were never touched */
    T_EQ_INT(engine_slot_len(g, 0), 0);
    T_EQ_INT(engine_slot_len(g, 1), 0);
    T_EQ_INT(engine_slot_len(g, 3), -1);
    free(a);
    free(b);
    engine_close(g);
}

/* The batched step with the next tokens picked on the device (tpick.h): 5 slots, batch sizes changing
 * every step (slots join and leave), greedy, penalised, sampled and declined rows; on one device and
 * split over two logical ones (the sampler on the lm_head part, the ids fed on the embedding part). */
static void test_pick_rows(void)
{
    for (int split = 1; split <= 2; split++) {
        struct err e = {{0}};
        struct engine *g = open_eng(DTYPE_F32, 5, split, CTX, &e);
        T_ASSERTF(g != NULL, "%s", e.msg);
        if (!g) return;
        static const int sizes[] = {1, 3, 5, 2, 5, 4, 1, 3, 5, 5, 2, 4};
        struct tpick_res r;
        T_ASSERTF(tpick_run(g, NULL, sizes, (int)(sizeof sizes / sizeof sizes[0]), &r, NULL, &e) == 0, "%s", e.msg);
        printf("  split %d: %d steps, %d rows: %d device picks (%d checked against the host sampler, %d differ), "
               "%d declined\n", split, r.steps, r.rows, r.dev_picks, r.checked, r.pick_diff, r.declined);
        T_EQ_INT(r.pick_diff, 0);
        T_ASSERT(r.checked > 10 && r.declined > 0 && r.dev_picks > r.checked);
        engine_close(g);
    }
}

/* The warm-up of the batched graphs (llm_warm_batch_graphs; on the CPU its eager steps and the save and
 * restore around them, llm.warm_test) in the middle of a run: every later pick and logit equal, bit for bit,
 * to an engine that never warmed. Slot 1 holds block 0 (the warm-up writes its row 0) and slot 0's first
 * block is not block 0 (the warm-up points slot 0's table there); slots 2 and 3 sample (the warm-up draws
 * on every sampler row). Also the batched step's host-time counters (llm_batch_stats). */
static int warm_before(struct engine *g, int k, struct err *e)
{
    return k == 3 || k == 8 ? llm_warm_batch_graphs(&g->llm, 1, e) : 0;
}

static void test_warm_keeps_state(void)
{
    struct err e = {{0}};
    struct engine *g = open_eng(DTYPE_F32, 5, 1, CTX, &e), *r = open_eng(DTYPE_F32, 5, 1, CTX, &e);
    T_ASSERTF(g && r, "%s", e.msg);
    if (!g || !r) {
        engine_close(g);
        engine_close(r);
        return;
    }
    g->llm.warm_test = 1;
    for (int k = 0; k < 2; k++) /* slot 1 takes block 0 first; tpick_run gives it back to slot 1 */
        T_EQ_INT(engine_slot_reserve(k ? r : g, 1, 1, &e), 0);
    static const int sizes[] = {5, 3, 5, 5, 2, 5, 4, 1, 5, 5, 3, 5};
    const int n = (int)(sizeof sizes / sizeof sizes[0]);
    struct tpick_res res;
    T_ASSERTF(tpick_run(g, r, sizes, n, &res, warm_before, &e) == 0, "%s", e.msg);
    T_EQ_INT(kvpool_row(g->llm.pool, 1, 0), 0);
    T_ASSERT(kvpool_row(g->llm.pool, 0, 0) != 0);
    printf("  %d steps, %d rows: %d picks differ from the engine that did not warm, worst |logit diff| %g; "
           "%d device picks, %d declined\n", res.steps, res.rows, res.ref_pick_diff, res.ref_worst, res.dev_picks,
           res.declined);
    T_EQ_INT(res.ref_rows, res.rows);
    T_EQ_INT(res.ref_pick_diff, 0);
    T_ASSERTF(res.ref_worst == 0, "logits after the warm-up differ by %g", res.ref_worst);
    T_EQ_INT(res.pick_diff, 0);
    const struct llm_batch_stats *bs = engine_batch_stats(g);
    T_EQ_INT(bs->warm_eager, 2 * 5);  /* B = 5..1, twice */
    T_EQ_INT(bs->warm_captures, 0);   /* no graphs on the CPU */
    T_EQ_INT(bs->launches, n);
    T_EQ_INT(bs->eager, n);           /* every CPU step runs eagerly */
    T_EQ_INT(bs->captures, 0);
    T_ASSERT(bs->t_launch > 0 && bs->t_eager > 0 && bs->t_upload > 0 && bs->t_warm > 0);
    T_ASSERT(bs->t_eager + bs->t_upload <= bs->t_launch);
    T_EQ_INT(engine_warm_batch_graphs(g, &e), 0); /* the engine's call: nothing to capture on the CPU */
    T_EQ_INT(bs->warm_eager, 2 * 5);
    engine_close(g);
    engine_close(r);
}

static void test_errors(void)
{
    struct err e = {{0}};
    struct engine *g = open_eng(DTYPE_F32, 3, 1, 32, &e);
    T_ASSERTF(g != NULL, "%s", e.msg);
    if (!g) return;
    const int V = engine_config(g)->vocab_size;
    float *lg = malloc((size_t)3 * V * sizeof *lg);
    int32_t ids[32];
    CHECK(lg);
    for (int i = 0; i < 32; i++) ids[i] = (int32_t)((i * 7 + 1) % V);
    T_EQ_INT(engine_slot_prefill(g, 0, ids, NULL, 5, lg, &e), 0);
    T_EQ_INT(engine_slot_prefill(g, 1, ids, NULL, 31, lg, &e), 0);
    int32_t toks[4] = {1, 2, 3, 4};

    int s_out[2] = {0, 3};
    T_EQ_INT(engine_decode_batch(g, s_out, toks, 2, lg, &e), -1);
    T_CONTAINS(e.msg, "sequence 3 (row 1 of the step) outside 0..2 (--parallel 3)");
    int s_neg[1] = {-1};
    T_EQ_INT(engine_decode_batch(g, s_neg, toks, 1, lg, &e), -1);
    T_CONTAINS(e.msg, "sequence -1 (row 0 of the step) outside 0..2");
    T_EQ_INT(engine_slot_prefill(g, 3, ids, NULL, 1, lg, &e), -1);
    T_CONTAINS(e.msg, "sequence 3 outside 0..2 (--parallel 3)");
    int s_twice[3] = {0, 2, 0};
    T_EQ_INT(engine_decode_batch(g, s_twice, toks, 3, lg, &e), -1);
    T_CONTAINS(e.msg, "sequence 0 is twice in one decode step (rows 0 and 2)");
    int s_four[4] = {0, 1, 2, 0};
    T_EQ_INT(engine_decode_batch(g, s_four, toks, 4, lg, &e), -1);
    T_CONTAINS(e.msg, "a decode step of 4 sequences: expected 1..3");
    T_EQ_INT(engine_decode_batch(g, s_four, toks, 0, lg, &e), -1);
    T_CONTAINS(e.msg, "a decode step of 0 sequences");
    int32_t badtok[2] = {1, (int32_t)V};
    int s_ok[2] = {0, 2};
    T_EQ_INT(engine_decode_batch(g, s_ok, badtok, 2, lg, &e), -1);
    T_CONTAINS(e.msg, "outside the vocabulary");
    /* slot 1 holds 31 of 32: one more step fits, the next does not */
    int s_full[2] = {2, 1};
    T_EQ_INT(engine_decode_batch(g, s_full, toks, 2, lg, &e), 0);
    T_EQ_INT(engine_slot_len(g, 1), 32);
    T_EQ_INT(engine_decode_batch(g, s_full, toks, 2, lg, &e), -1);
    T_CONTAINS(e.msg, "sequence 1: this model's maximum context length is 32 tokens (--ctx): 32 tokens + 1 new do not fit");
    /* nothing ran: no slot moved */
    T_EQ_INT(engine_slot_len(g, 0), 5);
    T_EQ_INT(engine_slot_len(g, 1), 32);
    T_EQ_INT(engine_slot_len(g, 2), 1);
    T_EQ_INT(engine_slot_prefill(g, 1, ids, NULL, 1, lg, &e), -1);
    T_CONTAINS(e.msg, "maximum context length is 32 tokens");
    free(lg);
    engine_close(g);
}

/* --parallel is the planner's kv_seqs: KV for N slots, and a clear refusal when it does not fit. */
static void test_parallel_plan(void)
{
    struct devmap_opts o;
    devmap_opts_init(&o);
    char *argv[] = {"x", "--parallel", "6", "--kv-seqs=2", "--parallel=0", NULL};
    int i = 1;
    struct err e = {{0}};
    T_EQ_INT(devmap_opts_parse(&o, 5, argv, &i, &e), 1);
    T_EQ_INT(o.params.kv_seqs, 6);
    i = 3;
    T_EQ_INT(devmap_opts_parse(&o, 5, argv, &i, &e), 1);
    T_EQ_INT(o.params.kv_seqs, 2);
    i = 4;
    T_EQ_INT(devmap_opts_parse(&o, 5, argv, &i, &e), -1);
    T_CONTAINS(e.msg, "--parallel: '0' is not an integer in 1..256");

    /* the engine's KV bytes are N times one slot's */
    struct engine *a = open_eng(DTYPE_F32, 1, 1, CTX, &e), *b = open_eng(DTYPE_F32, 5, 1, CTX, &e);
    T_ASSERTF(a && b, "%s", e.msg);
    if (a && b) {
        struct engine_device_mem ma, mb;
        T_EQ_INT(engine_device_memory(a, &ma, 1), 1);
        T_EQ_INT(engine_device_memory(b, &mb, 1), 1);
        const struct model_config *c = engine_config(a);
        const int64_t one = 2LL * c->num_hidden_layers * CTX * c->num_key_value_heads * c->head_dim * 4;
        T_EQ_INT(ma.kv, one);
        T_EQ_INT(mb.kv, 5 * one);
        T_EQ_INT(engine_plan(b)->params.kv_seqs, 5);
    }
    engine_close(a);
    engine_close(b);

    /* a CPU budget that holds one slot's KV but not 256 slots' */
    struct engine_options eo;
    engine_options_default(&eo);
    eo.model_dir = t_tiny_model(1);
    eo.device = "cpu";
    eo.dtype = DTYPE_F32;
    eo.ctx = 4096;
    eo.parallel = 256;
    eo.quiet = 1;
    struct devmap_opts dm;
    devmap_opts_init(&dm);
    dm.n_gpus = 0;
    char *mem[] = {"x", "--max-memory", "cpu=64MiB", NULL};
    i = 1;
    T_EQ_INT(devmap_opts_parse(&dm, 3, mem, &i, &e), 1);
    eo.devmap = &dm;
    struct engine *g = NULL;
    fprintf(stderr, "  (a plan table that does not fit is expected next)\n");
    T_EQ_INT(engine_open(&g, &eo, &e), -1);
    T_CONTAINS(e.msg, "the model does not fit");
    engine_close(g);
}

/* tok/s of batched steps (not a check: the numbers go to the report). */
static void bench(void)
{
    struct err e = {{0}};
    const int Bs[3] = {1, 4, 8};
    for (int k = 0; k < 3; k++) {
        const int B = Bs[k];
        struct engine *g = open_eng(DTYPE_F32, B, 1, 512, &e);
        if (!g) {
            fprintf(stderr, "bench: %s\n", e.msg);
            return;
        }
        const int V = engine_config(g)->vocab_size;
        float *lg = malloc((size_t)B * V * sizeof *lg);
        int slots[8];
        int32_t toks[8];
        CHECK(lg);
        for (int i = 0; i < B; i++) {
            int32_t p[4] = {1, 2, 3, (int32_t)i};
            slots[i] = i;
            toks[i] = 5;
            if (engine_slot_prefill(g, i, p, NULL, 4, NULL, &e)) fprintf(stderr, "bench: %s\n", e.msg);
        }
        const int steps = 100;
        double t0 = time_now();
        for (int s = 0; s < steps; s++)
            if (engine_decode_batch(g, slots, toks, B, lg, &e)) {
                fprintf(stderr, "bench: %s\n", e.msg);
                break;
            }
        double dt = time_now() - t0;
        printf("batched decode, tiny model, fp32, CPU: B = %d: %d steps in %.3f s: %.0f steps/s, %.0f tok/s\n", B,
               steps, dt, steps / dt, steps * B / dt);
        free(lg);
        engine_close(g);
    }
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "bench")) {
        bench();
        return 0;
    }
    T_RUN(test_refs_distinct);
    T_RUN(test_batch_f32);
    T_RUN(test_batch_f16);
    T_RUN(test_rows_own_tables);
    T_RUN(test_batch_split);
    T_RUN(test_truncate_refeed);
    T_RUN(test_pick_rows);
    T_RUN(test_warm_keeps_state);
    T_RUN(test_errors);
    T_RUN(test_parallel_plan);
    for (int k = 0; k < 2; k++)
        for (int s = 0; s < NSEQ; s++) free(kept[k].r[s]);
    return t_main_end("test_batch");
}
