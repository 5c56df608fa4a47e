/* test_cuda_batch.c: the batched decode step of several slots on the GPU (issue 14).
 *  - op_attention_rows (cuda_attention_decode.cu: a decode kernel in rows mode, the cluster kernel on
 *    sm_90 and the split-K one before, both also forced one by one; or the simple kernel) against its
 *    CPU twin on a paged pool with shuffled block tables: B = 1, 16, 64 (and 5, 7), rows of 1 .. 4096
 *    keys mixed, f16, bf16 and f32, GQA 4:1 and 1:1, hd 128 and 64;
 *  - engine_decode_batch on the tiny model on the GPU (fp16 and fp32): 6 slots with different
 *    prompts, 12 steps, every row against the same slot stepped alone (engine_slot_prefill with one
 *    token) in a one-slot engine, within the logits tolerance, and the greedy tokens equal wherever
 *    the solo run's top-2 margin is clear of that tolerance; the same with 64 slots (fp16), which
 *    also runs every slot free (its own batched picks) and counts the streams whose greedy tokens equal
 *    their solo answer (issue 14's GPU check); then slot 0's graph path
 *    (engine_generate, greedy) still gives the tokens it gives in a one-slot engine;
 *  - the batched step as CUDA graphs (one per B) with the next tokens picked on the device
 *    (engine_decode_batch_pick, tpick.h): 64 slots, B = 1, 3, 16, 64 and others, slots joining and
 *    leaving between steps; every step against an engine that runs the same steps eagerly
 *    (llm.batch_eager): the same logits (bit for bit: the same kernels) and picks; every pick
 *    against the host sampler (the CPU twin's selection) on the step's logits; the graphs of those
 *    B were captured and replayed;
 *  - engine_warm_batch_graphs in the middle of such a run: every B's graph captured then, none later,
 *    the later steps still equal to the eager engine's;
 *  - the engine and graph checks (fp16) again with the F16 matmuls of 2..16 rows on the quantized GEMV's
 *    tensor-core kernel (dev_set_f16mma 1) instead of cuBLAS; the kernel must have run.
 * Without a GPU every case is reported as skipped. */
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "backend_impl.h"
#include "devmap.h"
#include "engine.h"
#include "engine_impl.h"
#include "t.h"
#include "tengine.h"
#include "tpick.h"
#include "tutil.h"

#ifdef MINICPMV_CUDA

#include "tcuda.h"

/* hooks into cuda_attention_decode.cu (test_cuda_ops.c says more): one decode kernel with the choice
 * forced (0 split-K, C > 0 the cluster kernel with C splits, DEC_VAR_TC(W, S) the tensor-core kernel with
 * W warps and S splits, 0: automatic; returns 0 nothing ran, 1 split-K, 2 cluster, 3 tensor-core), the
 * cluster sizes the device holds (maxcl[0] -1: no cluster kernel on this device) and whether the
 * tensor-core kernel can run */
int cuda_attention_decode_variant(struct tensor *out, const struct tensor *q, const struct tensor *k, const struct tensor *v,
                                  const struct tensor *pos, const struct tensor *tab, const struct tensor *seq,
                                  const struct tensor *n_keys, int64_t q_pos0, float scale, int flags, int variant);
void cuda_attention_cluster_caps(int ordinal, int maxcl[5]);
int cuda_attention_tc_able(int ordinal);
#define DEC_VAR_TC(w, s) (1000 + 100 * (w) + (s))

/* op_attention_rows on a paged pool: B rows of mixed lengths (1 .. 4096), each row's sequence a table
 * row (rows and table rows in different orders, S > B tables), the blocks of all tables one shuffled
 * permutation of the pool plus unused blocks, so a kernel that ignores or misreads the table reads
 * the wrong keys. The CPU twin is first checked against its definition (the row's keys gathered in
 * order, then the one-row attention), bit for bit. B = 1, 16 and 64, f16 and bf16 through the automatic
 * choice, then through each decode kernel forced (split-K, the cluster kernel with 1, 2, 4, 16 splits,
 * the tensor-core kernel at W = 0 (auto), 1, 2, 4 with automatic and forced splits, each twice: the
 * partial counters must be back at zero); f32 and hd 64 GQA 1:1 through the simple kernel, the
 * tensor-core kernel at GQA 1:1 in f16 too. */
static void test_attention_rows(void)
{
    int maxcl[5];
    cuda_attention_cluster_caps(0, maxcl);
    const int tc = cuda_attention_tc_able(0);
    static const struct { int64_t H, Hkv, hd; enum dtype dt; int B, maxlen, off; } cs[] = {
        {32, 8, 128, DTYPE_F16, 1, 4096, 1},  {32, 8, 128, DTYPE_F16, 1, 4096, 0},
        {32, 8, 128, DTYPE_F16, 16, 4096, 0}, {32, 8, 128, DTYPE_F16, 64, 4096, 3},
        {32, 8, 128, DTYPE_BF16, 16, 1000, 5}, {8, 2, 128, DTYPE_F16, 5, 700, 0},
        {8, 8, 64, DTYPE_F32, 5, 700, 2},     {32, 8, 64, DTYPE_F16, 7, 300, 4},
        {16, 4, 64, DTYPE_F16, 6, 2049, 0},   {8, 8, 128, DTYPE_F16, 6, 2049, 0},
    };
    static const int lens[12] = {1, 4096, 17, 129, 700, 16, 2049, 4095, 33, 128, 1000, 3000};
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        const int64_t H = cs[c].H, Hkv = cs[c].Hkv, hd = cs[c].hd, B = cs[c].B, S = B + 3;
        const int64_t mb = (cs[c].maxlen + KV_BLOCK - 1) / KV_BLOCK;
        int32_t *nk = malloc((size_t)B * sizeof *nk);
        int64_t used = 0;
        CHECK(nk);
        for (int64_t i = 0; i < B; i++) {
            nk[i] = lens[(i + cs[c].off) % 12] < cs[c].maxlen ? lens[(i + cs[c].off) % 12] : cs[c].maxlen;
            used += (nk[i] + KV_BLOCK - 1) / KV_BLOCK;
        }
        const int64_t nblocks = used + used / 8 + 2, T = nblocks * KV_BLOCK; /* some blocks nobody holds */
        struct tensor perm = h_table(0, nblocks, nblocks), tab = h_new(DTYPE_I32, 2, S, mb, 0);
        struct tensor seq = h_new(DTYPE_I32, 1, B, 0, 0), cnt = h_new(DTYPE_I32, 1, B, 0, 0);
        int32_t *tb = tab.data, *sq = seq.data;
        for (int64_t i = 0; i < S * mb; i++) tb[i] = -1; /* entries past a row's keys are never read */
        for (int64_t i = 0, next = 0; i < B; i++) {
            sq[i] = (int32_t)((i * 7 + 3) % S);
            ((int32_t *)cnt.data)[i] = nk[i];
            for (int64_t j = 0; j < (nk[i] + KV_BLOCK - 1) / KV_BLOCK; j++) tb[sq[i] * mb + j] = ((int32_t *)perm.data)[next++];
        }
        struct tensor q = h_rand(cs[c].dt, 3, B, H, hd, 2.0f), k = h_rand(cs[c].dt, 3, T, Hkv, hd, 2.0f);
        struct tensor v = h_rand(cs[c].dt, 3, T, Hkv, hd, 1.0f), ref = h_new(cs[c].dt, 3, B, H, hd);
        const float scale = 1.0f / sqrtf((float)hd);
        op_attention_rows(&ref, &q, &k, &v, &tab, &seq, &cnt, scale);
        /* the twin is the one-row attention of each row over its gathered keys (the definition) */
        for (int64_t i = 0; i < B; i++) {
            struct tensor oi = h_new(cs[c].dt, 3, 1, H, hd), qi = tensor_rows_view(&q, i, 1);
            struct tensor ki = h_new(cs[c].dt, 3, nk[i], Hkv, hd), vi = h_new(cs[c].dt, 3, nk[i], Hkv, hd);
            struct tensor ti = tensor_rows_view(&tab, sq[i], 1);
            ti = tensor_reshape(&ti, 1, mb);
            op_kv_pages(&k, &ki, &ti, 0, 0);
            op_kv_pages(&v, &vi, &ti, 0, 0);
            op_attention(&oi, &qi, &ki, &vi, nk[i] - 1, scale, ATTN_CAUSAL);
            struct tensor ri = tensor_rows_view(&ref, i, 1);
            T_ASSERT(memcmp(oi.data, ri.data, tensor_nbytes(&oi)) == 0);
            t_free(&oi), t_free(&ki), t_free(&vi);
        }
        struct tensor dq = d_from(&q), dk = d_from(&k), dv = d_from(&v), dt = d_from(&tab), ds = d_from(&seq);
        struct tensor dc = d_from(&cnt), dout = d_new(cs[c].dt, 3, B, H, hd);
        op_attention_rows(&dout, &dq, &dk, &dv, &dt, &ds, &dc, scale);
        char cas[96];
        snprintf(cas, sizeof cas, "B%lld keys %d..%d of %lld blocks H%lld/%lld hd%lld %s", (long long)B, nk[0],
                 nk[B - 1], (long long)nblocks, (long long)H, (long long)Hkv, (long long)hd, dtype_name(cs[c].dt));
        check_close("attn_rows", cas, &dout, &ref, tol_for(cs[c].dt));
        /* again: the split-K partial counters must be ready for the next launch */
        struct tensor dout2 = d_new(cs[c].dt, 3, B, H, hd);
        op_attention_rows(&dout2, &dq, &dk, &dv, &dt, &ds, &dc, scale);
        check_close("attn_rows", "the same launch again", &dout2, &ref, tol_for(cs[c].dt));
        /* the decode kernels one by one: split-K (sm_75 .. sm_89; twice, for its counters), the cluster
         * kernel (sm_90) with 1, 2, 4 and 16 splits and the tensor-core kernel (sm_80; twice each); f32
         * caches take none */
        static const int variants[] = {0, 0, 1, 2, 4, 16, DEC_VAR_TC(0, 0), DEC_VAR_TC(0, 0), DEC_VAR_TC(1, 0),
                                       DEC_VAR_TC(1, 0), DEC_VAR_TC(2, 5), DEC_VAR_TC(2, 5), DEC_VAR_TC(4, 1),
                                       DEC_VAR_TC(4, 1)};
        for (size_t w = 0; w < sizeof variants / sizeof variants[0]; w++) {
            const int var = variants[w], e = var == 16 ? 4 : var == 4 ? 2 : var == 2 ? 1 : 0;
            const int is_tc = var >= DEC_VAR_TC(0, 0);
            struct tensor d3 = d_new(cs[c].dt, 3, B, H, hd);
            const int ran = cuda_attention_decode_variant(&d3, &dq, &dk, &dv, NULL, &dt, &ds, &dc, 0, scale, 0, var);
            char lab[64];
            if (is_tc) snprintf(lab, sizeof lab, "tensor-core kernel W%d S%d", (var - 1000) / 100, var % 100);
            else snprintf(lab, sizeof lab, "%s %d", var ? "cluster kernel, splits" : "split-K kernel", var ? var : (int)w + 1);
            if (cs[c].dt == DTYPE_F32) T_EQ_INT(ran, 0);
            else if (is_tc) T_EQ_INT(ran, tc ? 3 : 0);
            else if (var == 0) T_EQ_INT(ran, 1);
            else T_EQ_INT(ran, maxcl[0] > 0 && maxcl[e] > 0 ? 2 : 0);
            if (ran) check_close("attn_rows", lab, &d3, &ref, tol_for(cs[c].dt));
            t_free(&d3);
        }
        free(nk);
        t_free(&q), t_free(&k), t_free(&v), t_free(&ref), t_free(&tab), t_free(&seq), t_free(&cnt), t_free(&perm);
        t_free(&dq), t_free(&dk), t_free(&dv), t_free(&dt), t_free(&ds), t_free(&dc), t_free(&dout), t_free(&dout2);
    }
}

static struct engine *open_gpu(enum dtype dt, int parallel, struct err *e)
{
    struct engine_options o;
    engine_options_default(&o);
    o.model_dir = t_tiny_model(1);
    o.device = "cuda";
    o.dtype = dt;
    o.ctx = 256;
    o.parallel = parallel;
    o.quiet = 1;
    struct engine *g = NULL;
    if (!o.model_dir || engine_open(&g, &o, e)) return NULL;
    return g;
}

static int argmax2(const float *x, int V, float *margin)
{
    int b = 0, s = -1;
    for (int j = 1; j < V; j++)
        if (x[j] > x[b]) s = b, b = j;
        else if (s < 0 || x[j] > x[s]) s = j;
    *margin = x[b] - x[s];
    return b;
}

/* NSL slots stepped together for NST steps (teacher-forced with the solo tokens: the logits of every
 * row against the solo step's), then the same prompts again free-running (each slot's batched greedy
 * tokens against its solo greedy tokens: how many of the NSL streams give their solo answer). */
static void check_engine(enum dtype dt, const int NSL, const int NST)
{
    struct err e = {{0}};
    struct engine *r = open_gpu(dt, 1, &e), *g = open_gpu(dt, NSL, &e);
    T_ASSERTF(r && g, "%s", e.msg);
    if (!r || !g) {
        engine_close(r);
        engine_close(g);
        return;
    }
    const int V = engine_config(g)->vocab_size;
    const double tol = dt == DTYPE_F32 ? 1e-4 : 2e-2; /* of max |logit|: the LLM logits tolerances */
    float *ref = malloc((size_t)NSL * (NST + 1) * V * sizeof *ref), *lg = malloc((size_t)NSL * V * sizeof *lg);
    int32_t ids[64], *next = malloc((size_t)NSL * sizeof *next), *slots = malloc((size_t)NSL * sizeof *slots);
    int32_t *toks = malloc((size_t)NSL * sizeof *toks);
    int *same = malloc((size_t)NSL * sizeof *same);
    CHECK(ref && lg && next && slots && toks && same);
    /* the solo runs, and the prompts into the slots of g */
    for (int s = 0; s < NSL; s++) {
        const int n = 2 + (9 * s) % 61;
        for (int i = 0; i < n; i++) ids[i] = (int32_t)((1 + 31 * i + 977 * s) % V);
        float *rs = ref + (size_t)s * (NST + 1) * V;
        engine_slot_truncate(r, 0, 0);
        T_EQ_INT(engine_slot_prefill(r, 0, ids, NULL, n, rs, &e), 0);
        for (int t = 0; t < NST; t++) {
            float m;
            int32_t tok = argmax2(rs + (size_t)t * V, V, &m);
            T_EQ_INT(engine_slot_prefill(r, 0, &tok, NULL, 1, rs + (size_t)(t + 1) * V, &e), 0);
        }
        T_EQ_INT(engine_slot_prefill(g, s, ids, NULL, n, lg, &e), 0);
        float m;
        next[s] = argmax2(lg, V, &m);
    }
    double worst = 0;
    int tok_checked = 0, tok_same = 0;
    for (int t = 0; t < NST; t++) {
        int B = 0;
        for (int s = NSL - 1; s >= 0; s--) slots[B++] = s; /* reversed: rows are not slots */
        for (int i = 0; i < B; i++) {
            float m;
            toks[i] = argmax2(ref + ((size_t)slots[i] * (NST + 1) + t) * V, V, &m); /* teacher-forced: solo's token */
        }
        T_EQ_INT(engine_decode_batch(g, slots, toks, B, lg, &e), 0);
        for (int i = 0; i < B; i++) {
            const float *want = ref + ((size_t)slots[i] * (NST + 1) + t + 1) * V, *got = lg + (size_t)i * V;
            double mx = 0, mref = 0;
            for (int j = 0; j < V; j++) {
                double d = fabs((double)got[j] - want[j]);
                if (d > mx) mx = d;
                if (fabs(want[j]) > mref) mref = fabs(want[j]);
            }
            const double rel = mref > 0 ? mx / mref : mx;
            if (rel > worst) worst = rel;
            T_ASSERTF(rel <= tol, "slot %d step %d: rel %g > %g", slots[i], t + 1, rel, tol);
            float mw, mg;
            int a = argmax2(want, V, &mw), b = argmax2(got, V, &mg);
            if (mw > 2 * tol * mref) {
                tok_checked++;
                tok_same += a == b;
                T_ASSERTF(a == b, "slot %d step %d: token %d, solo %d (margin %g)", slots[i], t + 1, b, a, mw);
            }
        }
    }
    /* free-running: the prompts again, every slot stepping on its own batched picks */
    int n_same = 0;
    for (int s = 0; s < NSL; s++) {
        const int n = 2 + (9 * s) % 61;
        for (int i = 0; i < n; i++) ids[i] = (int32_t)((1 + 31 * i + 977 * s) % V);
        engine_slot_truncate(g, s, 0);
        T_EQ_INT(engine_slot_prefill(g, s, ids, NULL, n, lg, &e), 0);
        float m;
        next[s] = argmax2(lg, V, &m);
        same[s] = next[s] == argmax2(ref + (size_t)s * (NST + 1) * V, V, &m);
    }
    for (int t = 0; t < NST; t++) {
        for (int s = 0; s < NSL; s++) slots[s] = s, toks[s] = next[s];
        T_EQ_INT(engine_decode_batch(g, slots, toks, NSL, lg, &e), 0);
        for (int s = 0; s < NSL; s++) {
            float m;
            next[s] = argmax2(lg + (size_t)s * V, V, &m);
            same[s] &= next[s] == argmax2(ref + ((size_t)s * (NST + 1) + t + 1) * V, V, &m);
        }
    }
    for (int s = 0; s < NSL; s++) n_same += same[s];
    printf("  engine_decode_batch %s, %d slots x %d steps: worst logits rel %.3g (tol %.0e); %d/%d clear tokens equal; "
           "free-running: %d/%d streams give their solo greedy answer\n",
           dtype_name(dt), NSL, NST, worst, tol, tok_same, tok_checked, n_same, NSL);
    T_ASSERT(tok_checked > 0);
    /* slot 0's session path (the graph) is unchanged by the other slots */
    struct sampler_params sp;
    sampler_defaults(&sp);
    sp.greedy = 1;
    int32_t oa[16], ob[16];
    int na = 0, nb = 0;
    engine_slot_truncate(r, 0, 0);
    engine_slot_truncate(g, 0, 0);
    T_EQ_INT(t_generate(r, ids, NULL, 20, 16, &sp, NULL, NULL, oa, &na, NULL, &e), 0);
    T_EQ_INT(t_generate(g, ids, NULL, 20, 16, &sp, NULL, NULL, ob, &nb, NULL, &e), 0);
    T_EQ_INT(na, nb);
    T_ASSERT(na == nb && memcmp(oa, ob, (size_t)na * sizeof *oa) == 0);
    free(ref);
    free(lg);
    free(next);
    free(slots);
    free(toks);
    free(same);
    engine_close(r);
    engine_close(g);
}

/* The graph-replayed batched step with device picks against the eager one and the host sampler. */
static void check_graph_steps(enum dtype dt)
{
    struct err e = {{0}};
    struct engine *g = open_gpu(dt, 64, &e), *r = open_gpu(dt, 64, &e);
    T_ASSERTF(g && r, "%s", e.msg);
    if (!g || !r) {
        engine_close(g);
        engine_close(r);
        return;
    }
    r->llm.batch_eager = 1;
    /* each B three times at least (eager, capture, replay), then slots join and leave at sizes seen */
    static const int sizes[] = {1, 1, 1, 3, 3, 3, 16, 16, 16, 64, 64, 64, 3, 16, 3, 16, 1, 64, 5, 5, 5, 64, 1, 3};
    const int n = (int)(sizeof sizes / sizeof sizes[0]);
    struct tpick_res res;
    T_ASSERTF(tpick_run(g, r, sizes, n, &res, NULL, &e) == 0, "%s", e.msg);
    printf("  %s: %d steps, %d rows: graph vs eager %d rows, %d picks differ, worst |logit diff| %g; %d device picks "
           "(%d checked against the host sampler, %d differ), %d declined\n",
           dtype_name(dt), res.steps, res.rows, res.ref_rows, res.ref_pick_diff, res.ref_worst, res.dev_picks,
           res.checked, res.pick_diff, res.declined);
    T_EQ_INT(res.ref_pick_diff, 0);
    T_ASSERTF(res.ref_worst == 0, "graph vs eager logits differ by %g", res.ref_worst);
    T_EQ_INT(res.pick_diff, 0);
    T_ASSERT(res.checked > 50 && res.declined > 0);
    const int bm = g->llm.bgraph_max;
    T_EQ_INT(bm, 64);
    static const int want[] = {1, 3, 16, 64};
    for (int k = 0; k < 4; k++) {
        T_ASSERTF(g->llm.bgraph[bm + 1 + want[k]].g != NULL, "no graph captured for B = %d", want[k]);
        T_ASSERTF(r->llm.bgraph[bm + 1 + want[k]].g == NULL, "the eager engine captured B = %d", want[k]);
    }
    engine_close(g);
    engine_close(r);
}

/* engine_warm_batch_graphs mid-run (every slot busy, so no prefill chunk before the captures): every B's
 * graph captured at once, none at the later steps, and every later pick and logit equal to the eager
 * engine's (bit for bit: the same kernels) - the warm-up's eager steps borrow cache row 0 (slot 1's, here),
 * slot 0's first table entry and the sampler rows, and give them back. */
static int warm_at_4(struct engine *g, int k, struct err *e) { return k == 4 ? engine_warm_batch_graphs(g, e) : 0; }

static void test_graph_warm_f16(void)
{
    struct err e = {{0}};
    struct engine *g = open_gpu(DTYPE_F16, 64, &e), *r = open_gpu(DTYPE_F16, 64, &e);
    T_ASSERTF(g && r, "%s", e.msg);
    if (!g || !r) {
        engine_close(g);
        engine_close(r);
        return;
    }
    r->llm.batch_eager = 1;
    for (int k = 0; k < 2; k++) /* slot 1 takes block 0 first; tpick_run gives it back to slot 1 */
        T_EQ_INT(engine_slot_reserve(k ? r : g, 1, 1, &e), 0);
    static const int sizes[] = {64, 64, 3, 3, 64, 7, 3, 64, 33, 1, 2, 64, 17, 5, 64, 9};
    const int n = (int)(sizeof sizes / sizeof sizes[0]);
    struct tpick_res res;
    T_ASSERTF(tpick_run(g, r, sizes, n, &res, warm_at_4, &e) == 0, "%s", e.msg);
    const struct llm_batch_stats *bs = engine_batch_stats(g);
    printf("  %d steps, %d rows: warm-up %lld eager steps, %lld captures in %.0f ms; captures at launches %lld (%lld "
           "stale); graph vs eager %d picks differ, worst |logit diff| %g\n", res.steps, res.rows,
           (long long)bs->warm_eager, (long long)bs->warm_captures, 1e3 * bs->t_warm, (long long)bs->captures,
           (long long)bs->stale, res.ref_pick_diff, res.ref_worst);
    T_EQ_INT(kvpool_row(g->llm.pool, 1, 0), 0);
    T_EQ_INT(res.ref_pick_diff, 0);
    T_ASSERTF(res.ref_worst == 0, "graph vs eager logits differ by %g", res.ref_worst);
    T_EQ_INT(res.pick_diff, 0);
    /* B = 64 and 3 were captured by the steps before (again if the warm-up's eager steps moved a scratch) */
    T_ASSERT(bs->warm_captures >= 64 - 2 && bs->warm_captures <= 64);
    T_EQ_INT(bs->captures, 2);            /* those two, at their second step; none after the warm-up */
    T_EQ_INT(bs->stale, 0);
    for (int B = 1; B <= 64; B++) T_ASSERTF(g->llm.bgraph[65 + B].g != NULL, "no graph for B = %d", B);
    engine_close(g);
    engine_close(r);
}

static void test_graph_steps_f16(void) { check_graph_steps(DTYPE_F16); }
static void test_graph_steps_f32(void) { check_graph_steps(DTYPE_F32); }

static void test_engine_f16(void) { check_engine(DTYPE_F16, 6, 12); }
static void test_engine_f32(void) { check_engine(DTYPE_F32, 6, 12); }
/* issue 14's GPU check: 64 streams in one batched step, against their solo runs */
static void test_engine64_f16(void) { check_engine(DTYPE_F16, 64, 8); }

/* The batched step with its F16 matmuls of 2..16 rows on the A-operand kernel (cuda_qgemv.cu) instead of
 * cuBLAS: the rows against the solo runs (one token: the GEMV, as before) within the logits tolerance, and
 * the graphs against the eager steps (the same kernels: bit for bit). */
static void test_engine_f16mma(void)
{
    T_EQ_INT(dev_set_f16mma(device_cuda(0), 1), 0);
    const uint64_t l0 = cuda_f16mma_launches(0);
    check_engine(DTYPE_F16, 6, 12);
    const uint64_t l1 = cuda_f16mma_launches(0);
    check_graph_steps(DTYPE_F16);
    const uint64_t l2 = cuda_f16mma_launches(0);
    printf("  f16mma 1: the A kernel ran %llu times in the engine check, %llu in the graph check\n",
           (unsigned long long)(l1 - l0), (unsigned long long)(l2 - l1));
    T_ASSERTF(l1 > l0 && l2 > l1, "the A kernel did not run (%llu, %llu launches)", (unsigned long long)(l1 - l0),
              (unsigned long long)(l2 - l1));
    dev_set_f16mma(device_cuda(0), 0);
}

int main(void)
{
    struct backend_info bi;
    backend_query(&bi);
    if (bi.n_gpus == 0) {
        (void)t_cur_fail;
        T_SKIP(test_attention_rows, "no CUDA device");
        T_SKIP(test_engine_f16, "no CUDA device");
        T_SKIP(test_engine_f32, "no CUDA device");
        T_SKIP(test_engine64_f16, "no CUDA device");
        T_SKIP(test_graph_steps_f16, "no CUDA device");
        T_SKIP(test_graph_steps_f32, "no CUDA device");
        T_SKIP(test_graph_warm_f16, "no CUDA device");
        T_SKIP(test_engine_f16mma, "no CUDA device");
        return t_main_end("test_cuda_batch");
    }
    T_RUN(test_attention_rows);
    T_RUN(test_engine_f16);
    T_RUN(test_engine_f32);
    T_RUN(test_engine64_f16);
    T_RUN(test_graph_steps_f16);
    T_RUN(test_graph_steps_f32);
    T_RUN(test_graph_warm_f16);
    T_RUN(test_engine_f16mma);
    return t_main_end("test_cuda_batch");
}

#else /* built without CUDA */

int main(void)
{
    (void)t_cur_fail;
    T_SKIP(test_cuda_batch, "built without CUDA (make CUDA=1)");
    return t_main_end("test_cuda_batch");
}

#endif
