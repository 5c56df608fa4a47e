/* test_cuda_sample.c: op_sample_dev on the GPU (cuda/cuda_sample.cu) against its CPU twin
 * (sampler.c: cpu_sample_dev, i.e. sampler_pick), exactly: the same token, the same state words
 * (draw counter, status, flags) and untouched logits, over ~200 random cases: vocabularies up to
 * 128256, realistic, tied, all-negative and peaked logits, penalties above and below 1, greedy +
 * penalty, top-k from 1 to 2048 (the kernel's fast path and its radix-select path) and off, top-p
 * on and off, and the decline path (more than 2048 tied candidates); several rows in one call, each
 * with its own state row (the batched step's form). Then the op captured once in
 * a graph and replayed with other parameters (they live in device memory), and an end-to-end run:
 * the engine on the tiny model generates the same 64 tokens with the sampler on the device as with
 * the host sampler (llm.host_sampling), for several parameter sets.
 * The only legitimate difference would be CUDA's double exp against glibc's by one ulp exactly at a
 * draw boundary (probability ~1e-16 per token); none is expected here.
 * Without a GPU every case is reported as skipped. `test_cuda_sample bench` times the op. */
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "engine_impl.h"
#include "sampler.h"
#include "t.h"
#include "tengine.h"
#include "tutil.h"

#ifdef MINICPMV_CUDA

#include <cuda_runtime_api.h>

#include "tcuda.h"

void *cuda_stream_handle(int ordinal); /* src/cuda/cuda_mem.cu: for event timing */

static float gauss(void)
{
    float u = 0.5f * (frand() + 1.0f), v = 0.5f * (frand() + 1.0f);
    if (u < 1e-7f) u = 1e-7f;
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

enum logit_kind { LK_LLM, LK_SPREAD, LK_TIES, LK_NEGATIVE, LK_PEAKED, LK_DECLINE, LK_N };
static const char *kind_name[] = {"llm", "spread", "ties", "negative", "peaked", "decline"};

/* LK_LLM: normal with sd 2.5 and a few large values (a language model's shape); LK_TIES: 24
 * levels; LK_NEGATIVE: all < 0; LK_PEAKED: noise and 1 in 50 far above; LK_DECLINE: 3000 equal top
 * values (k-th value tied over more than 2048 tokens). -0.0 and +0.0 both present. */
static void make_logits(float *l, int V, int kind)
{
    for (int i = 0; i < V; i++) {
        const float u = 0.5f * (frand() + 1.0f);
        switch (kind) {
        case LK_LLM: l[i] = 2.5f * gauss() + (i % 997 == 5 ? 12.0f * u : 0.0f); break;
        case LK_TIES: l[i] = (float)((int)(u * 24.0f)) * 0.5f - 6.0f; break;
        case LK_NEGATIVE: l[i] = -0.05f - 12.0f * u; break;
        case LK_PEAKED: l[i] = 4.0f * u - 2.0f + (i % 50 == 7 ? 9.0f + 4.0f * u : 0.0f); break;
        case LK_DECLINE: l[i] = 3.0f * u - 4.0f; break;
        default: l[i] = 16.0f * u - 8.0f; break;
        }
    }
    if (kind == LK_DECLINE)
        for (int i = 0; i < 3000 && i * 7 < V; i++) l[i * 7] = 5.5f;
    if (V > 10) l[3] = -0.0f, l[5] = 0.0f;
}

struct case_stats {
    int n, greedy, declined, bad;
};

/* One case: the same logits, state and fed token on the host and the GPU; everything must agree. */
static void run_case(int V, int kind, const struct sampler_params *p, uint64_t draws, int n_flags, int32_t fed,
                     struct case_stats *cs)
{
    struct tensor hl = h_new(DTYPE_F32, 2, 1, V, 0);
    make_logits(hl.data, V, kind);
    const int64_t words = sample_state_words(V);
    struct tensor hs = h_new(DTYPE_I32, 1, words, 0, 0), hi = h_new(DTYPE_I32, 1, 1, 0, 0);
    op_sample_begin(&hs, p, draws);
    int32_t *st = hs.data;
    for (int f = 0; f < n_flags; f++) {
        /* flag mostly tokens near the top, where the penalty changes the pick */
        int j = (int)((0.5f * (frand() + 1.0f)) * (float)V) % V;
        if (f % 2 == 0) {
            const float *l = hl.data;
            int best = j;
            for (int r = 0; r < 64; r++) {
                int c = (int)((0.5f * (frand() + 1.0f)) * (float)V) % V;
                if (l[c] > l[best]) best = c;
            }
            j = best;
        }
        st[SAMPLE_ST_HEADER + j / 32] |= (int32_t)(1u << (j % 32));
    }
    *(int32_t *)hi.data = fed;
    struct tensor dl = d_from(&hl), ds = d_from(&hs), di = d_from(&hi);
    op_sample_dev(&hl, &hi, &hs, NULL);
    op_sample_dev(&dl, &di, &ds, NULL);
    struct tensor gl = h_new(DTYPE_F32, 2, 1, V, 0), gs = h_new(DTYPE_I32, 1, words, 0, 0);
    int32_t gid = -2;
    struct tensor gi = tensor_make(DTYPE_I32, device_cpu(), &gid, 1, (int64_t)1);
    op_copy(&gl, &dl);
    op_copy(&gs, &ds);
    op_copy(&gi, &di);
    const int32_t want = *(int32_t *)hi.data;
    const int same_tok = gid == want;
    const int same_state = memcmp(gs.data, hs.data, (size_t)words * 4) == 0;
    const int same_logits = memcmp(gl.data, hl.data, (size_t)V * 4) == 0;
    T_ASSERTF(same_tok && same_state && same_logits,
              "V %d %s greedy %d k %d t %g p %g pen %g seed %llu draw %llu: gpu %d cpu %d, state %s, logits %s", V,
              kind_name[kind], p->greedy, p->top_k, p->temperature, p->top_p, p->repetition_penalty,
              (unsigned long long)p->seed, (unsigned long long)draws, gid, want, same_state ? "same" : "DIFFERS",
              same_logits ? "intact" : "MODIFIED");
    cs->n++, cs->greedy += p->greedy, cs->declined += want < 0, cs->bad += !(same_tok && same_state && same_logits);
    t_free(&hl), t_free(&hs), t_free(&hi), t_free(&dl), t_free(&ds), t_free(&di), t_free(&gl), t_free(&gs);
}

static void test_matches_twin(void)
{
    static const int vocab[] = {128256, 1000, 4999, 40000, 128256, 32000};
    static const int topk[] = {100, 1, 5, 40, 100, 500, 2000, 2048, 0, 128256};
    static const float temp[] = {0.7f, 1.0f, 0.3f, 1.7f, 0.0f, 50.0f, 1e-38f, 1e-45f}; /* the last two: the t -> 0 limit */
    static const float topp[] = {0.8f, 1.0f, 0.5f, 0.95f, 0.99f};
    static const float pen[] = {1.05f, 1.0f, 1.3f, 0.9f};
    struct case_stats cs = {0};
    uint64_t r = 12345;
    for (int c = 0; c < 200; c++) {
        r = r * 6364136223846793005ULL + 1442695040888963407ULL;
        const unsigned x = (unsigned)(r >> 33);
        struct sampler_params p;
        sampler_defaults(&p);
        int V = vocab[c % 6];
        int kind = (int)(x % LK_N);
        p.greedy = c % 10 == 9;
        p.top_k = topk[(x >> 3) % 10];
        p.temperature = temp[(x >> 7) % 8];
        p.top_p = topp[(x >> 11) % 5];
        p.repetition_penalty = pen[(x >> 14) % 4];
        p.seed = r ^ 0xabcdef;
        if (c % 25 == 0) { /* 8 declines at least: the penalty (> 1) only lowers some of the ties */
            V = 128256, kind = LK_DECLINE, p.top_k = 100, p.greedy = false, p.repetition_penalty = 1.05f;
        }
        const uint64_t draws = c % 7 == 3 ? 0xffffffffULL : (uint64_t)(x % 1000); /* counter carries into word 1 */
        const int32_t fed = c % 5 == 4 ? -1 : (int32_t)((x >> 5) % (unsigned)V);
        run_case(V, kind, &p, draws, (int)((x >> 17) % 300), fed, &cs);
    }
    printf("  %d cases (%d greedy, %d declined by both): %d differ\n", cs.n, cs.greedy, cs.declined, cs.bad);
    T_ASSERT(cs.declined >= 8);
}

/* Rows: one op_sample_dev over R rows, row i with the state row sel[i] of S (the batched decode step),
 * on the GPU and on the CPU twin: the same tokens, the same state table (unselected rows untouched),
 * the logits intact; rows of different parameters, kinds and fed tokens, declines among them. */
static void test_rows(void)
{
    enum { R = 9, S = 12 };
    static const int32_t selv[R] = {11, 0, 6, 3, 7, 1, 10, 4, 8}; /* row 2 (ties): a sampled state */
    const int V = 128256;
    const int64_t words = sample_state_words(V);
    struct tensor hl = h_new(DTYPE_F32, 2, R, V, 0), hs = h_new(DTYPE_I32, 2, S, words, 0);
    struct tensor hi = h_new(DTYPE_I32, 1, R, 0, 0), hsel = h_new(DTYPE_I32, 1, R, 0, 0);
    for (int r = 0; r < S; r++) { /* every state row started: the selected ones with their parameters */
        struct sampler_params p;
        sampler_defaults(&p);
        p.seed = 77u + (unsigned)r;
        p.greedy = r % 4 == 1;
        p.repetition_penalty = r % 3 == 0 ? 1.3f : 1.05f;
        p.top_k = r == 3 ? 2048 : r == 7 ? 5 : 100;
        p.top_p = r == 3 ? 1.0f : 0.8f;
        struct tensor row = tensor_rows_view(&hs, r, 1);
        op_sample_begin(&row, &p, (uint64_t)(r * 13));
        int32_t *st = row.data;
        for (int f = 0; f < 40; f++) st[SAMPLE_ST_HEADER + (r * 97 + f * 1231) % (V / 32)] |= 1 << (f % 32);
    }
    for (int i = 0; i < R; i++) {
        make_logits((float *)hl.data + (size_t)i * V, V, i == 2 ? LK_DECLINE : i % LK_N == LK_DECLINE ? LK_LLM : i % LK_N);
        ((int32_t *)hi.data)[i] = i == 6 ? -1 : (int32_t)((i * 40009) % V);
        ((int32_t *)hsel.data)[i] = selv[i];
    }
    struct tensor dl = d_from(&hl), ds = d_from(&hs), di = d_from(&hi), dsel = d_from(&hsel);
    op_sample_dev(&hl, &hi, &hs, &hsel);
    op_sample_dev(&dl, &di, &ds, &dsel);
    struct tensor gl = h_new(DTYPE_F32, 2, R, V, 0), gs = h_new(DTYPE_I32, 2, S, words, 0), gi = h_new(DTYPE_I32, 1, R, 0, 0);
    op_copy(&gl, &dl);
    op_copy(&gs, &ds);
    op_copy(&gi, &di);
    int same = 0, declined = 0;
    for (int i = 0; i < R; i++) {
        const int32_t want = ((int32_t *)hi.data)[i], got = ((int32_t *)gi.data)[i];
        same += want == got;
        declined += want < 0;
        T_ASSERTF(want == got, "row %d (state row %d): gpu %d, cpu %d", i, selv[i], got, want);
    }
    T_ASSERT(memcmp(gs.data, hs.data, (size_t)(S * words) * 4) == 0);
    T_ASSERT(memcmp(gl.data, hl.data, (size_t)R * V * 4) == 0);
    printf("  %d rows over %d state rows: %d tokens equal the CPU twin's (%d declined), state table %s\n", R, S, same,
           declined, memcmp(gs.data, hs.data, (size_t)(S * words) * 4) ? "DIFFERS" : "equal");
    T_ASSERT(declined >= 1 && declined < R);
    t_free(&hl), t_free(&hs), t_free(&hi), t_free(&hsel), t_free(&dl), t_free(&ds), t_free(&di), t_free(&dsel);
    t_free(&gl), t_free(&gs), t_free(&gi);
}

/* op_sample_dev captured once; each replay reads new parameters, logits and counter from memory. */
static void test_graph(void)
{
    const int V = 128256;
    const int64_t words = sample_state_words(V);
    struct tensor dl = d_new(DTYPE_F32, 2, 1, V, 0), ds = d_new(DTYPE_I32, 1, words, 0, 0);
    struct tensor di = d_new(DTYPE_I32, 1, 1, 0, 0);
    struct tensor hl = h_new(DTYPE_F32, 2, 1, V, 0), hs = h_new(DTYPE_I32, 1, words, 0, 0);
    struct tensor hi = h_new(DTYPE_I32, 1, 1, 0, 0);
    struct err e = {{0}};
    int32_t zero = 0;
    struct tensor z = tensor_make(DTYPE_I32, device_cpu(), &zero, 1, (int64_t)1);
    op_copy(&di, &z);
    struct sampler_params p0;
    sampler_defaults(&p0);
    op_sample_begin(&ds, &p0, 0);
    T_ASSERTF(dev_graph_begin(device_cuda(0), &e) == 0, "%s", e.msg);
    op_sample_dev(&dl, &di, &ds, NULL);
    struct dev_graph *g = dev_graph_end(device_cuda(0), &e);
    T_ASSERTF(g != NULL, "%s", e.msg);
    if (!g) goto out;
    int bad = 0;
    for (int rep = 0; rep < 12; rep++) {
        struct sampler_params p;
        sampler_defaults(&p);
        p.greedy = rep % 4 == 3;
        p.top_k = rep % 3 == 0 ? 100 : rep % 3 == 1 ? 7 : 2000;
        p.temperature = rep % 2 ? 0.7f : 1.3f;
        p.top_p = rep % 5 == 0 ? 1.0f : 0.8f;
        p.repetition_penalty = rep % 2 ? 1.05f : 1.25f;
        p.seed = 1000u + (unsigned)rep;
        make_logits(hl.data, V, rep % 2 ? LK_LLM : LK_PEAKED);
        op_sample_begin(&hs, &p, (uint64_t)rep * 3);
        op_sample_begin(&ds, &p, (uint64_t)rep * 3);
        *(int32_t *)hi.data = rep * 1111 % V;
        op_copy(&dl, &hl);
        op_copy(&di, &hi);
        T_ASSERTF(dev_graph_launch(g, &e) == 0, "%s", e.msg);
        op_sample_dev(&hl, &hi, &hs, NULL);
        int32_t gid = -2;
        struct tensor gi = tensor_make(DTYPE_I32, device_cpu(), &gid, 1, (int64_t)1);
        op_copy(&gi, &di);
        bad += gid != *(int32_t *)hi.data;
        T_ASSERTF(gid == *(int32_t *)hi.data, "replay %d: gpu %d cpu %d", rep, gid, *(int32_t *)hi.data);
    }
    printf("  12 replays of one captured op_sample_dev with different parameters: %d differ\n", bad);
    dev_graph_free(g);
out:
    t_free(&dl), t_free(&ds), t_free(&di), t_free(&hl), t_free(&hs), t_free(&hi);
}

/* The engine on the tiny model: device sampling and host sampling give the same tokens. */
static void test_engine(void)
{
    struct engine_options o;
    engine_options_default(&o);
    o.model_dir = t_tiny_model(1);
    o.device = "cuda";
    o.dtype = DTYPE_F16;
    o.ctx = 256;
    o.quiet = 1;
    struct err e = {{0}};
    struct engine *g = NULL;
    T_ASSERTF(o.model_dir && engine_open(&g, &o, &e) == 0, "engine_open: %s", e.msg);
    if (!g) return;
    const int32_t prompt[] = {128000, 128006, 882, 128007, 271, 9906, 1917, 0, 358, 2846, 220, 4513, 128009};
    const int n = (int)(sizeof prompt / sizeof prompt[0]);
    struct sampler_params ps[5];
    for (int i = 0; i < 5; i++) sampler_defaults(&ps[i]);
    ps[0].seed = 7;                                                          /* the chat() defaults */
    ps[1].seed = 11, ps[1].temperature = 1.0f, ps[1].top_k = 40, ps[1].top_p = 0.95f, ps[1].repetition_penalty = 1.3f;
    ps[2].greedy = true, ps[2].repetition_penalty = 1.3f;                    /* greedy + penalty */
    ps[3].seed = 3, ps[3].top_k = 2048, ps[3].top_p = 1.0f;                  /* the kernel's radix path */
    ps[4].seed = 5, ps[4].top_k = 0;                                         /* top-k off: host path */
    for (int k = 0; k < 5; k++) {
        int32_t out[2][64];
        int n_out[2] = {0, 0};
        for (int host = 0; host < 2; host++) {
            llm_truncate(&g->llm, 0);
            g->llm.host_sampling = host;
            T_ASSERTF(t_generate(g, prompt, NULL, n, 64, &ps[k], NULL, NULL, out[host], &n_out[host], NULL, &e) == 0,
                      "%s", e.msg);
            if (!host && sampler_device_ok(&ps[k]) && !ps[k].greedy) {
                /* the device sampler ran: its counter is the host's (one draw per token) */
                int32_t hdr[SAMPLE_ST_HEADER];
                struct tensor h = tensor_make(DTYPE_I32, device_cpu(), hdr, 1, (int64_t)SAMPLE_ST_HEADER);
                struct tensor d = tensor_rows_view(&g->llm.sample_state, 0, SAMPLE_ST_HEADER);
                op_copy(&h, &d);
                T_EQ_INT(hdr[SAMPLE_ST_DRAWS_LO], n_out[0]);
            }
        }
        g->llm.host_sampling = 0;
        const int same = n_out[0] == n_out[1] && memcmp(out[0], out[1], (size_t)n_out[0] * sizeof(int32_t)) == 0;
        int distinct = 0;
        for (int i = 0; i < n_out[0]; i++) {
            int seen = 0;
            for (int j = 0; j < i; j++) seen |= out[0][j] == out[0][i];
            distinct += !seen;
        }
        printf("  params %d: %d tokens (%d distinct) device %s host\n", k, n_out[0], distinct, same ? "==" : "!=");
        T_ASSERTF(same, "params %d: device sampling differs from host sampling", k);
    }
    engine_close(g);
}

struct bench_ctx {
    struct tensor dl, ds, di;
};

static double time_graph(struct bench_ctx *b, const struct sampler_params *p, int reps)
{
    struct err e = {{0}};
    op_sample_begin(&b->ds, p, 0);
    CHECKF(dev_graph_begin(device_cuda(0), &e) == 0, "%s", e.msg);
    for (int i = 0; i < 100; i++) op_sample_dev(&b->dl, &b->di, &b->ds, NULL);
    struct dev_graph *g = dev_graph_end(device_cuda(0), &e);
    CHECKF(g, "%s", e.msg);
    cudaStream_t s = (cudaStream_t)cuda_stream_handle(0);
    cudaEvent_t e0, e1;
    CHECK(cudaEventCreate(&e0) == cudaSuccess && cudaEventCreate(&e1) == cudaSuccess);
    CHECK(dev_graph_launch(g, &e) == 0); /* warm-up */
    CHECK(cudaEventRecord(e0, s) == cudaSuccess);
    for (int r = 0; r < reps; r++) CHECK(dev_graph_launch(g, &e) == 0);
    CHECK(cudaEventRecord(e1, s) == cudaSuccess);
    CHECK(cudaEventSynchronize(e1) == cudaSuccess);
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, e0, e1) == cudaSuccess);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    dev_graph_free(g);
    return (double)ms * 1e3 / (reps * 100.0);
}

static void bench(void)
{
    const int V = 128256;
    struct bench_ctx b;
    struct tensor hl = h_new(DTYPE_F32, 2, 1, V, 0);
    make_logits(hl.data, V, LK_LLM);
    b.dl = d_from(&hl);
    b.ds = d_new(DTYPE_I32, 1, sample_state_words(V), 0, 0);
    b.di = d_new(DTYPE_I32, 1, 1, 0, 0);
    int32_t zero = 0;
    struct tensor z = tensor_make(DTYPE_I32, device_cpu(), &zero, 1, (int64_t)1);
    op_copy(&b.di, &z);
    struct sampler_params p;
    printf("op_sample_dev, V = %d, llm-like logits, us per call (100 calls per graph replay):\n", V);
    sampler_defaults(&p);
    printf("  %-52s %7.2f us\n", "top_k 100, top_p 0.8, t 0.7, penalty 1.05", time_graph(&b, &p, 20));
    p.top_p = 1.0f;
    printf("  %-52s %7.2f us\n", "top_k 100, top_p 1", time_graph(&b, &p, 20));
    sampler_defaults(&p);
    p.top_k = 2000;
    printf("  %-52s %7.2f us\n", "top_k 2000 (survivors > 2048: radix-select path)", time_graph(&b, &p, 5));
    sampler_defaults(&p);
    p.greedy = true;
    p.repetition_penalty = 1.3f;
    printf("  %-52s %7.2f us\n", "greedy + penalty 1.3", time_graph(&b, &p, 20));
    t_free(&hl), t_free(&b.dl), t_free(&b.ds), t_free(&b.di);
}

int main(int argc, char **argv)
{
    struct backend_info bi;
    backend_query(&bi);
    if (bi.n_gpus == 0) {
        const char *why = "no CUDA device";
        (void)t_cur_fail;
        T_SKIP(test_matches_twin, why);
        T_SKIP(test_rows, why);
        T_SKIP(test_graph, why);
        T_SKIP(test_engine, why);
        return t_main_end("test_cuda_sample");
    }
    if (argc > 1 && strcmp(argv[1], "bench") == 0) {
        bench();
        return 0;
    }
    T_RUN(test_matches_twin);
    T_RUN(test_rows);
    T_RUN(test_graph);
    T_RUN(test_engine);
    return t_main_end("test_cuda_sample");
}

#else /* built without CUDA */

int main(void)
{
    (void)t_cur_fail;
    T_SKIP(test_cuda_sample, "built without CUDA (make CUDA=1)");
    return t_main_end("test_cuda_sample");
}

#endif
