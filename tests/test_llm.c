/* test_llm.c: the Llama-3 decoder on the CPU.
 *  - against the PyTorch fixture tests/fixtures/llm_tiny.safetensors (tools/ref_llm.py run on the
 *    generated tiny checkpoint, seed 1): embedding, every layer teacher-forced from the reference
 *    input of that layer, final logits, and 32 greedy tokens, in fp32 and fp16; the same for the q8, q4
 *    and nf4 forms of that checkpoint against fixtures of their PyTorch dequantization
 *    (tests/fixtures/llm_tiny_{q8,q4,nf4}.safetensors);
 *  - a split run (layers over 3 logical CPU devices) gives exactly the single-device logits and tokens;
 *  - chunked prefill equals one-shot prefill within fp32 rounding;
 *  - q|k|v and gate|up are joined at load on the CPU too: row views, the checkpoint's bytes, one GEMV;
 *  - the fused decode ops (one-token steps) give the plain ops' logits bit for bit (also on the GPU);
 *  - broken checkpoint folders (issue 16): a tokenizer.json with an id past the embedding, a
 *    checkpoint with more layers than config.json, NaN weights, an out-of-range id: each refused
 *    with a message that names the problem, never an abort or silent output. */
#include <cJSON.h>
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h"
#include "backend_impl.h"
#include "cmd_util.h"
#include "devmap.h"
#include "engine_impl.h"
#include "safetensors.h"
#include "t.h"
#include "tengine.h"
#include "tutil.h"

#define FIXTURE "tests/fixtures/llm_tiny.safetensors"
/* The same reference on the realistic-statistics checkpoint (`mkmodel --size tiny --seed 1 --stats
 * realistic --massive 4`, tools/gpu_fixtures.sh writes it on the GPU machine). Until it is committed
 * the test says SKIP with the reason; the commit that adds the file sets REALISTIC_COMMITTED to 1,
 * from then on a missing file is a failure. */
#define FIXTURE_REAL "tests/fixtures/llm_tiny_realistic.safetensors"
#define REALISTIC_COMMITTED 1

static const char *g_device = "cpu"; /* the device the fixture tests run on */
static const char *g_model;          /* NULL: t_tiny_model(1) */

/* The realistic-statistics tiny checkpoint (generated once per build tree, like t_tiny_model). */
static const char *tiny_realistic(void)
{
    static const char *dir = "build/test-models/tiny-s1-realistic-m4";
    struct stat sb;
    if (stat("build/test-models/tiny-s1-realistic-m4/config.json", &sb) == 0) return dir;
    char *argv[] = {"mkmodel", "--out", (char *)dir, "--size", "tiny", "--seed", "1", "--stats", "realistic",
                    "--massive", "4", NULL};
    return cmd_mkmodel && cmd_mkmodel(11, argv) == 0 ? dir : NULL;
}

static struct engine *open_tiny(enum dtype dt, int split, int64_t max_batch)
{
    struct engine_options o;
    engine_options_default(&o);
    o.model_dir = g_model ? g_model : t_tiny_model(1);
    o.device = g_device;
    o.dtype = dt;
    o.ctx = 128;
    o.max_batch = max_batch;
    o.quiet = 1;
    struct devmap_opts dm; /* split > 1: the planner spreads the layers over `split` logical parts of the device */
    devmap_opts_init(&dm);
    if (split > 1) {
        dm.n_split = 1;
        snprintf(dm.split_key[0], sizeof dm.split_key[0], "%s", strcmp(g_device, "cpu") ? "0" : "cpu");
        dm.split_parts[0] = split;
        o.devmap = &dm;
    }
    struct err e = {{0}};
    struct engine *g = NULL;
    if (!o.model_dir || engine_open(&g, &o, &e)) {
        fprintf(stderr, "engine_open: %s\n", e.msg);
        return NULL;
    }
    return g;
}

static int fget(const struct safetensors *st, const char *name, struct tensor *t)
{
    struct err e = {{0}};
    if (safetensors_get(st, name, t, &e)) {
        fprintf(stderr, "fixture: %s\n", e.msg);
        return -1;
    }
    return 0;
}

/* tolerances (docs/TESTING.md): per stage relative L2 error, logits, and greedy margin */
struct tol {
    double stage_rel, logits_rel, margin;
};

static void check_precision(const struct safetensors *fx, const char *p, enum dtype dt, struct tol tol)
{
    struct engine *g = open_tiny(dt, 1, 0);
    T_ASSERT(g != NULL);
    if (!g) return;
    const struct model_config *c = &g->cfg;
    struct tensor ids_t, t;
    char name[64];
    if (fget(fx, "input_ids", &ids_t)) { T_ASSERT(0); engine_close(g); return; }
    const int64_t n = ids_t.shape[0], d = c->hidden_size;
    const int32_t *ids = ids_t.data;

    /* the fixture was made from the same generated weights */
    const char *sum_s = safetensors_metadata(fx, "embed_abs_sum");
    T_ASSERT(sum_s != NULL);
    if (sum_s) {
        struct tensor emb;
        struct err e;
        T_ASSERT(safetensors_get(g->st, "llm.model.embed_tokens.weight", &emb, &e) == 0);
        double s = 0;
        for (int64_t i = 0; i < tensor_numel(&emb); i++) s += fabs(f16_to_f32(((const uint16_t *)emb.data)[i]));
        T_ASSERTF(fabs(s - atof(sum_s)) <= 1e-6 * s, "checkpoint differs from the fixture's: %.6f vs %s", s, sum_s);
    }

    /* embedding */
    struct tensor h = llm_embed(&g->llm, ids, n);
    float *hf = t_fetch_f32(&h);
    snprintf(name, sizeof name, "%s.embed", p);
    if (fget(fx, name, &t)) T_ASSERTF(0, "fixture tensor %s missing", name); /* a missing tensor fails */
    else {
        struct t_cmp m = t_compare(hf, t.data, n * d);
        fprintf(stderr, "  %s embed: max_abs %.3g rel %.3g\n", p, m.max_abs, m.rel);
        T_ASSERT(m.rel <= tol.stage_rel);
    }
    free(hf);

    /* each layer, teacher-forced with the reference input of that layer */
    for (int l = 0; l < c->num_hidden_layers; l++) {
        if (l == 0) snprintf(name, sizeof name, "%s.embed", p);
        else snprintf(name, sizeof name, "%s.layer_out.%d", p, l - 1);
        struct tensor in;
        if (fget(fx, name, &in)) { T_ASSERT(0); break; }
        struct tensor hb = tensor_rows_view(&g->llm.dev[g->pl.layer[l]].h, 0, n);
        t_upload(&hb, &in);
        llm_layer_forward(&g->llm, l, &hb, 0);
        snprintf(name, sizeof name, "%s.layer_out.%d", p, l);
        if (fget(fx, name, &t)) { T_ASSERT(0); break; }
        float *o = t_fetch_f32(&hb);
        struct t_cmp m = t_compare(o, t.data, n * d);
        fprintf(stderr, "  %s layer %d: max_abs %.3g rel %.3g cos %.9f\n", p, l, m.max_abs, m.rel, m.cos);
        T_ASSERTF(m.rel <= tol.stage_rel, "layer %d rel %.3g > %.3g", l, m.rel, tol.stage_rel);
        free(o);
    }

    /* whole forward: logits of the last prompt position */
    llm_truncate(&g->llm, 0);
    const int V = c->vocab_size;
    float *logits = malloc((size_t)V * sizeof *logits);
    struct err e = {{0}};
    T_ASSERT(llm_forward(&g->llm, ids, NULL, n, logits, &e) == 0);
    snprintf(name, sizeof name, "%s.logits_last", p);
    if (fget(fx, name, &t)) T_ASSERTF(0, "fixture tensor %s missing", name);
    else {
        struct t_cmp m = t_compare(logits, t.data, V);
        fprintf(stderr, "  %s logits: max_abs %.3g rel %.3g cos %.9f\n", p, m.max_abs, m.rel, m.cos);
        T_ASSERTF(m.rel <= tol.logits_rel, "logits rel %.3g > %.3g", m.rel, tol.logits_rel);
    }

    /* 32 greedy steps, no stop tokens (the reference forced 32) */
    struct tensor gr, mg;
    snprintf(name, sizeof name, "%s.greedy", p);
    int ok = !fget(fx, name, &gr);
    snprintf(name, sizeof name, "%s.greedy_margin", p);
    ok = ok && !fget(fx, name, &mg);
    T_ASSERT(ok);
    if (ok) {
        const int32_t *ref = gr.data;
        const float *margin = mg.data;
        int same = 0;
        for (int i = 0; i < gr.shape[0]; i++) {
            int32_t tok = 0;
            struct tensor lt = tensor_make(DTYPE_F32, device_cpu(), logits, 2, (int64_t)1, (int64_t)V);
            op_argmax(&lt, &tok);
            if (tok != ref[i]) {
                /* a flip is acceptable only where the reference itself had a near tie */
                T_ASSERTF(margin[i] < tol.margin, "%s greedy step %d: %d vs reference %d (margin %.4g)", p, i, tok,
                          ref[i], margin[i]);
                fprintf(stderr, "  %s greedy: diverged at step %d on a near tie (margin %.3g)\n", p, i, margin[i]);
                break;
            }
            same++;
            if (llm_forward(&g->llm, &tok, NULL, 1, logits, &e)) { T_ASSERT(0); break; }
        }
        fprintf(stderr, "  %s greedy: %d/%lld tokens identical\n", p, same, (long long)gr.shape[0]);
    }
    free(logits);
    engine_close(g);
}

static void test_fixture_f32(void)
{
    struct safetensors *fx = NULL;
    struct err e = {{0}};
    T_ASSERTF(safetensors_open_file(&fx, FIXTURE, &e) == 0, "%s", e.msg);
    if (!fx) return;
    /* measured (2026-12-02, CPU): layers rel <= 3.9e-7, logits rel 6.9e-7 (H200: logits 4.2e-7);
     * limits about 5x and 4.4x that (docs/TESTING.md §13) */
    struct tol tol = {2e-6, 3e-6, 0};
    check_precision(fx, "f32", DTYPE_F32, tol);
    safetensors_close(fx);
}

static void test_fixture_f16(void)
{
    struct safetensors *fx = NULL;
    struct err e = {{0}};
    T_ASSERTF(safetensors_open_file(&fx, FIXTURE, &e) == 0, "%s", e.msg);
    if (!fx) return;
    /* measured: layers rel <= 4.3e-4 (about one fp16 rounding, 4.9e-4), logits rel 1.2e-3 (H200: 9.9e-4;
     * the fp16 reference itself is 1.0e-3 from the fp32 one); limits 2.8x and 2.5x */
    struct tol tol = {1.2e-3, 3e-3, 0};
    check_precision(fx, "f16", DTYPE_F16, tol);
    safetensors_close(fx);
}

/* The realistic-statistics fixture: the same stages. Measured on the CPU (fixture from the H200,
 * 2026-12-02): f32 layers rel <= 1.3e-7, logits 2.6e-7; f16 layers rel <= 1.8e-4, logits 4.1e-4.
 * Limits about 4x (f32) and 3x (f16) those (docs/TESTING.md); a flip accepted only at a reference near
 * tie (margin below 1e-4 f32, 2e-3 f16: the logits of this checkpoint are small). */
static void test_fixture_realistic(void)
{
    struct stat sb;
    if (stat(FIXTURE_REAL, &sb) != 0) {
        if (REALISTIC_COMMITTED) T_ASSERTF(0, "%s is missing", FIXTURE_REAL);
        else T_SKIP(test_fixture_realistic, FIXTURE_REAL " not generated yet (tools/gpu_fixtures.sh on the GPU machine)");
        return;
    }
    struct safetensors *fx = NULL;
    struct err e = {{0}};
    T_ASSERTF(safetensors_open_file(&fx, FIXTURE_REAL, &e) == 0, "%s", e.msg);
    g_model = tiny_realistic();
    T_ASSERTF(g_model != NULL, "cannot generate the realistic tiny model");
    if (fx && g_model) {
        struct tol t32 = {6e-7, 1e-6, 1e-4}, t16 = {6e-4, 1.2e-3, 2e-3};
        check_precision(fx, "f32", DTYPE_F32, t32);
        check_precision(fx, "f16", DTYPE_F16, t16);
    }
    g_model = NULL;
    safetensors_close(fx);
}

/* The quantized forms of the tiny checkpoint (seed 1) against PyTorch fixtures of their dequantization
 * (tools/quant_fixtures.sh on the GPU machine: tools/ref_llm.py reads the same folders, tools/ref_dequant.py
 * turns their q8 / q4 / nf4 records back into fp16 from docs/QUANT.md's layouts, written apart from the C
 * code): the folders as `minicpmv quantize --quant q8|q4` and `mkmodel --quant nf4` write them, every stage,
 * the logits and 32 greedy tokens, in fp32 and fp16 activations. Our quantized matmuls compute on exactly
 * those fp16 weights (backend.h), so the limits are the fp16 checkpoint's, except two documented points:
 * on a GPU a quantized matmul rounds an f32 x to fp16 (docs/CUDA.md), so fp32 activations get the fp16
 * limits there; and a greedy flip is accepted where the reference's own top two logits are within 1e-2
 * (about one fp16 step at |logit| ~ 10): the nf4 fp16 reference has an exact tie at step 21 (margin 0),
 * where its own fp32 run goes another way too.
 * Measured (H200 machine, fixtures of session 12), logits rel fp32 / fp16: CPU q8 4.2e-7 / 1.07e-3, q4
 * 4.4e-7 / 1.04e-3, nf4 4.3e-7 / 1.1e-3 (32/32 greedy but nf4 fp16: 21/32, the tie); GPU q8 4.1e-4 / 1.02e-3,
 * q4 3.6e-4 / 9.9e-4, nf4 4.0e-4 / 1.0e-3, 32/32 greedy everywhere. */
#define QUANT_FIXTURES_COMMITTED 1

static const char *tiny_quant(const char *q)
{
    static char dir[3][64];
    const int i = !strcmp(q, "q8") ? 0 : !strcmp(q, "q4") ? 1 : 2;
    snprintf(dir[i], sizeof dir[i], "build/test-models/tiny-s1-%s", q);
    char cfg[96];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir[i]);
    struct stat sb;
    if (stat(cfg, &sb) == 0) return dir[i];
    const char *fp16 = t_tiny_model(1);
    if (!fp16) return NULL;
    if (i < 2) {
        char *a[] = {"quantize", "--model", (char *)fp16, "--out", dir[i], "--quant", (char *)q, NULL};
        return cmd_quantize(7, a) == 0 ? dir[i] : NULL;
    }
    char *a[] = {"mkmodel", "--out", dir[i], "--size", "tiny", "--seed", "1", "--quant", "nf4", NULL};
    return cmd_mkmodel(9, a) == 0 ? dir[i] : NULL;
}

static void test_fixture_quant(void)
{
    static const char *const qs[] = {"q8", "q4", "nf4"};
    for (size_t i = 0; i < sizeof qs / sizeof qs[0]; i++) {
        char path[96];
        snprintf(path, sizeof path, "tests/fixtures/llm_tiny_%s.safetensors", qs[i]);
        struct stat sb;
        if (stat(path, &sb) != 0) {
            if (QUANT_FIXTURES_COMMITTED) T_ASSERTF(0, "%s is missing", path);
            else fprintf(stderr, "  SKIP %s: not generated yet (tools/quant_fixtures.sh on the GPU machine)\n", path);
            continue;
        }
        struct safetensors *fx = NULL;
        struct err e = {{0}};
        T_ASSERTF(safetensors_open_file(&fx, path, &e) == 0, "%s", e.msg);
        g_model = tiny_quant(qs[i]);
        T_ASSERTF(g_model != NULL, "the %s folder could not be written", qs[i]);
        if (fx && g_model) {
            fprintf(stderr, "  %s (%s):\n", qs[i], g_model);
            /* the fp16 checkpoint's limits (test_fixture_f32 / _f16); f32 on a GPU: x rounded to fp16 */
            const int gpu = !strcmp(g_device, "cuda");
            struct tol t32 = {gpu ? 1.2e-3 : 2e-6, gpu ? 3e-3 : 3e-6, 1e-2}, t16 = {1.2e-3, 3e-3, 1e-2};
            check_precision(fx, "f32", DTYPE_F32, t32);
            check_precision(fx, "f16", DTYPE_F16, t16);
        }
        g_model = NULL;
        safetensors_close(fx);
    }
}

/* runs ids through an engine, returns last logits and 12 greedy tokens */
static void run_greedy(struct engine *g, const int32_t *ids, int n, float *logits, int32_t *toks)
{
    struct err e = {{0}};
    T_ASSERT(llm_forward(&g->llm, ids, NULL, n, logits, &e) == 0);
    float *lg = malloc((size_t)g->cfg.vocab_size * sizeof *lg);
    memcpy(lg, logits, (size_t)g->cfg.vocab_size * sizeof *lg);
    for (int i = 0; i < 12; i++) {
        struct tensor lt = tensor_make(DTYPE_F32, device_cpu(), lg, 2, (int64_t)1, (int64_t)g->cfg.vocab_size);
        op_argmax(&lt, &toks[i]);
        T_ASSERT(llm_forward(&g->llm, &toks[i], NULL, 1, lg, &e) == 0);
    }
    free(lg);
}

/* the same 12 tokens through llm_decode_greedy (on one GPU: a CUDA graph per step, argmax on the device) */
static void run_greedy_dev(struct engine *g, const int32_t *ids, int n, int32_t *toks)
{
    struct err e = {{0}};
    float *lg = malloc((size_t)g->cfg.vocab_size * sizeof *lg);
    llm_truncate(&g->llm, 0);
    T_ASSERT(llm_forward(&g->llm, ids, NULL, n, lg, &e) == 0);
    struct tensor lt = tensor_make(DTYPE_F32, device_cpu(), lg, 2, (int64_t)1, (int64_t)g->cfg.vocab_size);
    op_argmax(&lt, &toks[0]);
    for (int i = 1; i < 12; i++) T_ASSERTF(llm_decode_greedy(&g->llm, toks[i - 1], &toks[i], &e) == 0, "%s", e.msg);
    free(lg);
}

static void test_split_equals_single(void)
{
    const int32_t ids[] = {128000, 128006, 882, 128007, 271, 9906, 1917, 0, 358, 2846, 220, 4513, 128009};
    const int n = (int)(sizeof ids / sizeof ids[0]);
    for (int k = 0; k < 2; k++) {
        enum dtype dt = k ? DTYPE_F16 : DTYPE_F32;
        struct engine *a = open_tiny(dt, 1, 0), *b = open_tiny(dt, 3, 0);
        T_ASSERT(a && b);
        if (!a || !b) { engine_close(a); engine_close(b); return; }
        T_EQ_INT(b->pl.n_devices, 3);
        T_ASSERT(b->pl.layer[0] != b->pl.layer[b->cfg.num_hidden_layers - 1]);
        const int V = a->cfg.vocab_size;
        float *la = malloc((size_t)V * 4), *lb = malloc((size_t)V * 4);
        int32_t ta[12], tb[12];
        run_greedy(a, ids, n, la, ta);
        run_greedy(b, ids, n, lb, tb);
        T_ASSERTF(memcmp(la, lb, (size_t)V * 4) == 0, "%s split logits differ", dtype_name(dt));
        T_ASSERT(memcmp(ta, tb, sizeof ta) == 0);
        int32_t da[12], db[12];
        run_greedy_dev(a, ids, n, da);
        run_greedy_dev(b, ids, n, db);
        T_ASSERTF(memcmp(ta, da, sizeof ta) == 0, "%s: llm_decode_greedy differs from forward+argmax", dtype_name(dt));
        T_ASSERTF(memcmp(tb, db, sizeof tb) == 0, "%s: split llm_decode_greedy differs", dtype_name(dt));
        /* llm_decode_logits (the sampling path; a graph on one GPU) == llm_forward's logits, bit for bit */
        struct err e = {{0}};
        llm_truncate(&a->llm, 0);
        llm_truncate(&b->llm, 0);
        T_ASSERT(llm_forward(&a->llm, ids, NULL, n, la, &e) == 0);
        T_ASSERT(llm_forward(&b->llm, ids, NULL, n, lb, &e) == 0);
        for (int i = 0; i < 6; i++) {
            T_ASSERT(llm_forward(&a->llm, &ta[i], NULL, 1, la, &e) == 0);
            T_ASSERTF(llm_decode_logits(&b->llm, ta[i], lb, &e) == 0, "%s", e.msg);
            T_ASSERTF(memcmp(la, lb, (size_t)V * 4) == 0, "%s step %d: llm_decode_logits differs", dtype_name(dt), i);
        }
        free(la);
        free(lb);
        engine_close(a);
        engine_close(b);
    }
}

/* The planner's split: the CPU as three logical devices with their own budgets (the path a
 * multi-GPU split takes: own buffers and KV per device, hops between them). */
static void test_devmap_split(void)
{
    const int32_t ids[] = {128000, 128006, 882, 128007, 271, 9906, 1917, 0, 358, 2846, 220, 4513, 128009};
    const int n = (int)(sizeof ids / sizeof ids[0]);
    struct devmap_opts dm;
    devmap_opts_init(&dm);
    char *argv[] = {"x", "--logical-devices", "cpu:3", "--max-memory", "cpu.0=400MiB,cpu.1=40MiB,cpu.2=40MiB",
                    "--ctx", "128"};
    struct err e = {{0}};
    for (int i = 1; i < 7; i++) T_ASSERTF(devmap_opts_parse(&dm, 7, argv, &i, &e) == 1, "%s", e.msg);
    struct engine_options o;
    engine_options_default(&o);
    o.model_dir = t_tiny_model(1);
    o.device = "cpu";
    o.dtype = DTYPE_F32;
    o.devmap = &dm;
    o.quiet = 1;
    struct engine *b = NULL, *a = open_tiny(DTYPE_F32, 1, 0);
    T_ASSERTF(engine_open(&b, &o, &e) == 0, "%s", e.msg);
    if (!a || !b) { engine_close(a); engine_close(b); return; }
    T_EQ_INT(b->pl.n_devices, 3);
    int used[3] = {0};
    for (int l = 0; l < b->cfg.num_hidden_layers; l++) used[b->pl.layer[l]] = 1;
    T_ASSERTF(used[0] + used[1] + used[2] >= 2, "the plan put every layer on one logical device");
    const int V = a->cfg.vocab_size;
    float *la = malloc((size_t)V * 4), *lb = malloc((size_t)V * 4);
    int32_t ta[12], tb[12];
    run_greedy(a, ids, n, la, ta);
    run_greedy(b, ids, n, lb, tb);
    T_ASSERT(memcmp(la, lb, (size_t)V * 4) == 0);
    T_ASSERT(memcmp(ta, tb, sizeof ta) == 0);
    free(la);
    free(lb);
    engine_close(a);
    engine_close(b);
}

/* The loader joins q|k|v and gate|up (and the vision tower's q|k|v weights and biases) along rows on
 * the CPU too (model.c place_joined): q_proj..up_proj are row views of the joined tensor holding the
 * checkpoint's bytes (read back from the map after the loader released its pages), weights are counted
 * once, and one token's GEMV over the joined matrix gives the bits of the per-part calls (llm.c
 * matmul_joined relies on it). mkmodel writes the manifest's order, so in f16 the LLM's q|k|v and gate|up
 * lie back to back and are viewed in place, while the vision tower's (weight and bias interleaved) are
 * copied; in f32 every join is a converted copy. */
static void check_joined(const struct engine *g, const struct tensor *joined, const struct tensor *const *parts,
                         const char *const *names, int n, int in_place)
{
    struct err e = {{0}};
    T_ASSERTF(joined->data && joined->ndim >= 1, "%s: not joined at load", names[0]);
    if (!joined->data || joined->ndim < 1) return;
    int64_t r0 = 0;
    for (int i = 0; i < n; i++) {
        struct tensor src;
        T_ASSERTF(safetensors_get(g->st, names[i], &src, &e) == 0, "%s", e.msg);
        const struct tensor want = tensor_rows_view(joined, r0, src.shape[0]);
        if (parts) T_ASSERTF(parts[i]->data == want.data && tensor_same_shape(parts[i], &want), "%s is not its row view", names[i]);
        T_ASSERTF((joined->data == src.data) == (in_place && i == 0), "%s: in place %d", names[i], in_place);
        float *a = t_to_f32(&want), *b = t_to_f32(&src);
        struct tensor bw = src; /* the checkpoint part rounded to the weight dtype, as the loader stores it */
        bw.dtype = joined->dtype;
        bw.data = malloc(tensor_nbytes(&bw));
        op_copy(&bw, &src);
        free(b);
        b = t_to_f32(&bw);
        T_ASSERTF(!memcmp(a, b, (size_t)tensor_numel(&src) * sizeof(float)), "%s: joined rows differ from the checkpoint", names[i]);
        free(a), free(b), free(bw.data);
        r0 += src.shape[0];
    }
    T_EQ_INT(r0, joined->shape[0]);
}

static void test_joined_weights(void)
{
    for (int dti = 0; dti < 2; dti++) {
        const enum dtype dt = dti ? DTYPE_F32 : DTYPE_F16;
        struct engine *g = open_tiny(dt, 1, 0);
        T_ASSERT(g != NULL);
        if (!g) return;
        const struct model_config *c = &g->cfg;
        int64_t ckpt = 0; /* the checkpoint's weight bytes in dtype dt (the vision tower's unused layers aside) */
        for (int i = 0; i < safetensors_count(g->st); i++) {
            struct tensor t = safetensors_tensor_view(safetensors_at(g->st, i));
            char pre[64];
            snprintf(pre, sizeof pre, "vpm.encoder.layers.%d.", c->vision_layers_used);
            if (!strncmp(t.name, pre, strlen(pre))) continue;
            ckpt += tensor_numel(&t) * (int64_t)dtype_size(dt);
        }
        T_EQ_INT(g->model.bytes_per_device[0], ckpt);
        char nm[5][96];
        for (int l = 0; l < c->num_hidden_layers; l++) {
            const struct llm_layer *L = &g->model.llm.layers[l];
            static const char *const qkv_s[3] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"};
            static const char *const gu_s[2] = {"mlp.gate_proj", "mlp.up_proj"};
            const char *names[3];
            for (int k = 0; k < 3; k++) snprintf(nm[k], sizeof nm[k], "llm.model.layers.%d.%s.weight", l, qkv_s[k]), names[k] = nm[k];
            const struct tensor *qkv_p[3] = {&L->q_proj, &L->k_proj, &L->v_proj};
            check_joined(g, &L->qkv, qkv_p, names, 3, dt == DTYPE_F16);
            for (int k = 0; k < 2; k++) snprintf(nm[k], sizeof nm[k], "llm.model.layers.%d.%s.weight", l, gu_s[k]), names[k] = nm[k];
            const struct tensor *gu_p[2] = {&L->gate_proj, &L->up_proj};
            check_joined(g, &L->gate_up, gu_p, names, 2, dt == DTYPE_F16);
            if (!L->qkv.data) continue;
            /* one token: the joined GEMV equals the per-part calls bit for bit */
            const int64_t d = c->hidden_size, rows = L->qkv.shape[0];
            float xs[4096];
            T_ASSERT(d <= 4096);
            for (int64_t j = 0; j < d; j++) xs[j] = sinf(0.37f * (float)j + (float)l);
            struct tensor xf = tensor_make(DTYPE_F32, device_cpu(), xs, 2, (int64_t)1, d), x = xf;
            x.dtype = dt;
            x.data = malloc(tensor_nbytes(&x));
            op_copy(&x, &xf);
            void *yj = calloc((size_t)rows, 4), *yp = calloc((size_t)rows, 4);
            struct tensor tj = tensor_make(dt, device_cpu(), yj, 2, (int64_t)1, rows);
            op_matmul(&tj, &x, &L->qkv, NULL);
            for (int k = 0, o = 0; k < 3; o += (int)qkv_p[k]->shape[0], k++) {
                struct tensor tp = tensor_make(dt, device_cpu(), (char *)yp + (size_t)o * dtype_size(dt), 2, (int64_t)1,
                                               qkv_p[k]->shape[0]);
                op_matmul(&tp, &x, qkv_p[k], NULL);
            }
            T_ASSERTF(!memcmp(yj, yp, (size_t)rows * dtype_size(dt)), "layer %d: joined q|k|v GEMV differs from q, k, v", l);
            free(yj), free(yp), free(x.data);
        }
        for (int l = 0; l < c->vision_layers_used; l++) {
            const struct vpm_layer *L = &g->model.vpm.layers[l];
            static const char *const p[3] = {"q_proj", "k_proj", "v_proj"};
            const char *names[3];
            for (int k = 0; k < 3; k++) snprintf(nm[k], sizeof nm[k], "vpm.encoder.layers.%d.self_attn.%s.weight", l, p[k]), names[k] = nm[k];
            check_joined(g, &L->qkv_w, NULL, names, 3, 0);
            for (int k = 0; k < 3; k++) snprintf(nm[k], sizeof nm[k], "vpm.encoder.layers.%d.self_attn.%s.bias", l, p[k]), names[k] = nm[k];
            check_joined(g, &L->qkv_b, NULL, names, 3, 0);
        }
        engine_close(g);
    }
}

/* The fused decode ops (llm.c: one-token steps) give the plain ops' logits bit for bit: a 5-token
 * prompt, 8 one-token steps through llm_forward and 4 through llm_decode_logits (on one GPU a replayed
 * graph), with llm.unfused 0 and 1, in fp32 and fp16. On the CPU the twins run the plain ops; on the
 * GPU the fused kernels must reproduce the plain kernels' sums (docs/CUDA.md). */
static void test_fused_equals_plain(void)
{
    const int32_t ids[] = {128000, 128006, 882, 128007, 271};
    enum { STEPS = 13 };
    for (int k = 0; k < 2; k++) {
        const enum dtype dt = k ? DTYPE_F16 : DTYPE_F32;
        struct engine *g = open_tiny(dt, 1, 0);
        T_ASSERT(g != NULL);
        if (!g) return;
        const int64_t V = g->cfg.vocab_size;
        float *lg[2];
        lg[0] = malloc((size_t)(STEPS * V) * sizeof(float));
        lg[1] = malloc((size_t)(STEPS * V) * sizeof(float));
        T_ASSERT(lg[0] && lg[1]);
        for (int unf = 0; unf < 2; unf++) {
            struct err e = {{0}};
            llm_set_unfused(&g->llm, unf);
            T_EQ_INT(g->llm.unfused, unf);
            llm_truncate(&g->llm, 0);
            float *row = lg[unf];
            T_ASSERTF(llm_forward(&g->llm, ids, NULL, 5, row, &e) == 0, "%s", e.msg);
            for (int i = 1; i < STEPS; i++) {
                struct tensor lt = tensor_make(DTYPE_F32, device_cpu(), row, 2, (int64_t)1, V);
                int32_t tok = 0;
                op_argmax(&lt, &tok);
                row += V;
                if (i <= 8) T_ASSERTF(llm_forward(&g->llm, &tok, NULL, 1, row, &e) == 0, "%s", e.msg);
                else T_ASSERTF(llm_decode_logits(&g->llm, tok, row, &e) == 0, "%s", e.msg);
            }
        }
        for (int i = 0; i < STEPS; i++) {
            struct t_cmp m = t_compare(lg[0] + i * V, lg[1] + i * V, V);
            T_ASSERTF(!memcmp(lg[0] + i * V, lg[1] + i * V, (size_t)V * sizeof(float)),
                      "%s on %s, step %d: fused logits differ from the plain ops' (max_abs %.3g, rel %.3g)",
                      dtype_name(dt), g_device, i, m.max_abs, m.rel);
        }
        free(lg[0]);
        free(lg[1]);
        engine_close(g);
    }
}

/* A prompt prefilled in one chunk, in chunks of 16 or of 7 tokens: the same logits bit for bit, in fp32
 * and fp16 (on the CPU every row is computed the same way whatever rows share its call: the matmul's
 * rule in backend_cpu_matmul.c, one attention per query row). */
static void test_chunked_prefill(void)
{
    int32_t ids[40];
    for (int i = 0; i < 40; i++) ids[i] = (int32_t)((i * 7919 + 13) % 128000);
    for (int dti = 0; dti < 2; dti++) {
        const enum dtype dt = dti ? DTYPE_F16 : DTYPE_F32;
        static const int64_t chunks[3] = {0, 16, 7}; /* 0: the planner's, more than 40 */
        struct engine *g[3] = {NULL};
        float *lg[3] = {NULL};
        struct err e = {{0}};
        for (int c = 0; c < 3; c++) {
            g[c] = open_tiny(dt, 1, chunks[c]);
            T_ASSERT(g[c] != NULL);
            if (!g[c]) goto next;
            lg[c] = malloc((size_t)g[c]->cfg.vocab_size * 4);
            T_ASSERTF(llm_forward(&g[c]->llm, ids, NULL, 40, lg[c], &e) == 0, "%s", e.msg);
        }
        T_ASSERT(g[0]->llm.max_batch >= 40 && g[1]->llm.max_batch == 16 && g[2]->llm.max_batch == 7);
        const int V = g[0]->cfg.vocab_size;
        for (int c = 1; c < 3; c++) {
            struct t_cmp m = t_compare(lg[c], lg[0], V);
            T_ASSERTF(!memcmp(lg[c], lg[0], (size_t)V * 4), "%s: chunks of %lld vs one chunk: logits rel %.3g max_abs %.3g",
                      dtype_name(dt), (long long)chunks[c], m.rel, m.max_abs);
        }
        /* the cache is full after ctx tokens: a clear error, not a crash */
        int32_t more[100] = {0};
        T_ASSERT(llm_forward(&g[0]->llm, more, NULL, 100, lg[0], &e) == -1);
        T_CONTAINS(e.msg, "over by 12");
    next:
        for (int c = 0; c < 3; c++) {
            free(lg[c]);
            engine_close(g[c]);
        }
    }
}

/* The decode step with its kernels launched as programmatic dependents (dev_set_overlap: the small kernels, with
 * and without the decode attention's early loads (the default on sm_90), and the small kernels with the GEMVs), and with SwiGLU in the gate|up GEMV's epilogue
 * (llm_set_swiglu), gives the logits and greedy tokens of plain launches of the plain ops (dev_set_overlap 0,
 * swiglu 0) bit for bit: a 5-token prompt, then 24 greedy steps as replayed graphs and 4 steps through
 * llm_decode_logits, fp16 and fp32 (a kernel reading its input before the previous kernel has written it, or
 * an epilogue rounding elsewhere than the plain ops, would differ). */
static void test_overlap_same(void)
{
    const int32_t ids[] = {128000, 128006, 882, 128007, 271};
    enum { GREEDY = 24, LOGITS = 4, NM = 7 };
    static const struct { int overlap, swiglu; } modes[NM] = {
        {0, 0}, {DEV_OVERLAP_SMALL, 0}, {DEV_OVERLAP_ALL | DEV_OVERLAP_SMALL, 0}, {0, 1}, {DEV_OVERLAP_SMALL, 1},
        {DEV_OVERLAP_SMALL | DEV_OVERLAP_EARLY, 0}, {DEV_OVERLAP_SMALL | DEV_OVERLAP_EARLY, 1}};
    for (int k = 0; k < 2; k++) {
        const enum dtype dt = k ? DTYPE_F16 : DTYPE_F32;
        struct engine *g = open_tiny(dt, 1, 0);
        T_ASSERT(g != NULL);
        if (!g) return;
        const int64_t V = g->cfg.vocab_size;
        const int swiglu0 = g->llm.swiglu;
        float *lg[NM];
        int32_t toks[NM][GREEDY];
        for (int m = 0; m < NM; m++) {
            lg[m] = malloc((size_t)(LOGITS * V) * sizeof(float));
            T_ASSERT(lg[m] != NULL);
            if (!lg[m]) return;
        }
        for (int m = 0; m < NM; m++) {
            struct err e = {{0}};
            dev_set_overlap(device_cuda(0), modes[m].overlap);
            llm_set_swiglu(&g->llm, modes[m].swiglu);
            llm_drop_graphs(&g->llm);
            llm_truncate(&g->llm, 0);
            T_ASSERTF(llm_forward(&g->llm, ids, NULL, 5, lg[m], &e) == 0, "%s", e.msg);
            struct tensor lt = tensor_make(DTYPE_F32, device_cpu(), lg[m], 2, (int64_t)1, V);
            int32_t tok = 0;
            op_argmax(&lt, &tok);
            for (int i = 0; i < GREEDY; i++) {
                T_ASSERTF(llm_decode_greedy(&g->llm, tok, &tok, &e) == 0, "%s", e.msg);
                toks[m][i] = tok;
            }
            for (int i = 0; i < LOGITS; i++) {
                float *row = lg[m] + (size_t)i * V;
                T_ASSERTF(llm_decode_logits(&g->llm, tok, row, &e) == 0, "%s", e.msg);
                struct tensor rt = tensor_make(DTYPE_F32, device_cpu(), row, 2, (int64_t)1, V);
                op_argmax(&rt, &tok);
            }
        }
        dev_set_overlap(device_cuda(0), DEV_OVERLAP_DEFAULT);
        llm_set_swiglu(&g->llm, swiglu0);
        for (int m = 1; m < NM; m++) {
            T_ASSERTF(!memcmp(toks[m], toks[0], sizeof toks[0]), "%s, overlap %d, swiglu %d: greedy tokens differ",
                      dtype_name(dt), modes[m].overlap, modes[m].swiglu);
            T_ASSERTF(!memcmp(lg[m], lg[0], (size_t)(LOGITS * V) * sizeof(float)), "%s, overlap %d, swiglu %d: logits differ",
                      dtype_name(dt), modes[m].overlap, modes[m].swiglu);
        }
        for (int m = 0; m < NM; m++) free(lg[m]);
        engine_close(g);
    }
}

/* the same fixtures on the GPU: fp32 within 1e-4 on the logits (cuBLAS fp32 without TF32), fp16
 * within the tolerance of the CPU fp16 path */
static void test_fixture_cuda(void)
{
    g_device = "cuda";
    test_fixture_f32();
    test_fixture_f16();
    test_fixture_quant(); /* the quantized GEMVs (decode) and the dequantize + GEMM path (prefill) */
    /* the split path on one GPU: three logical devices, identical results */
    test_split_equals_single();
    /* the fused ops on their one-kernel path (the persistent GEMV, off by default: cuda_mem.cu), so
     * that fused == plain compares two kernel sequences */
#ifdef MINICPMV_CUDA
    cuda_set_pgemv(0, 1);
#endif
    test_fused_equals_plain();
#ifdef MINICPMV_CUDA
    cuda_set_pgemv(0, 0);
#endif
    g_device = "cpu";
}

/* ---- broken checkpoint folders ---- */

/* build/test-models/tiny-s1-<suffix>: the tiny checkpoint's files as symbolic links, except `own`
 * (NULL: none), which the caller writes; returns the folder, or NULL. */
static const char *tiny_variant(const char *suffix, const char *own)
{
    static char dir[300];
    const char *src = t_tiny_model(1);
    if (!src) return NULL;
    snprintf(dir, sizeof dir, "%s-%s", src, suffix);
    mkdir(dir, 0755);
    DIR *d = opendir(src);
    if (!d) return NULL;
    struct dirent *de;
    char a[700], b[700];
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        snprintf(b, sizeof b, "%s/%s", dir, de->d_name);
        unlink(b);
        if (own && !strcmp(de->d_name, own)) continue;
        snprintf(a, sizeof a, "../%s/%s", strrchr(src, '/') + 1, de->d_name);
        if (symlink(a, b)) { closedir(d); return NULL; }
    }
    closedir(d);
    return dir;
}

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)len + 1);
    if (p && fread(p, 1, (size_t)len, f) != (size_t)len) { free(p); p = NULL; }
    fclose(f);
    if (p) p[len] = 0;
    if (n) *n = (size_t)len;
    return p;
}

static int spill(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int rc = fwrite(p, 1, n, f) == n ? 0 : -1;
    return fclose(f) || rc ? -1 : 0;
}

static struct engine *open_dir(const char *dir, struct err *e)
{
    struct engine_options o;
    engine_options_default(&o);
    o.model_dir = dir;
    o.device = "cpu";
    o.dtype = DTYPE_F32;
    o.ctx = 64;
    o.quiet = 1;
    struct engine *g = NULL;
    return engine_open(&g, &o, e) ? NULL : g;
}

/* Finding 3: an added token moved past the embedding (vocab_size 128256) loaded, and the first
 * chat aborted in the CPU embedding lookup. Now the folder is refused at open, token named. */
static void test_tokenizer_outside_vocab(void)
{
    const char *dir = tiny_variant("badtok", "tokenizer.json");
    T_ASSERT(dir != NULL);
    if (!dir) return;
    char src[400], dst[400];
    snprintf(src, sizeof src, "%s/tokenizer.json", t_tiny_model(1));
    snprintf(dst, sizeof dst, "%s/tokenizer.json", dir);
    char *text = slurp(src, NULL);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    free(text);
    T_ASSERT(root != NULL);
    if (!root) return;
    int moved = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(root, "added_tokens")) {
        cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        if (cJSON_IsString(content) && !strcmp(content->valuestring, "<image>")) {
            cJSON_SetNumberValue(cJSON_GetObjectItemCaseSensitive(it, "id"), 130000);
            moved++;
        }
    }
    T_EQ_INT(moved, 1);
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    T_ASSERT(out && spill(dst, out, strlen(out)) == 0);
    free(out);
    struct err e = {{0}};
    struct engine *g = open_dir(dir, &e);
    T_ASSERT(g == NULL);
    T_CONTAINS(e.msg, "<image>");
    T_CONTAINS(e.msg, "130000");
    T_CONTAINS(e.msg, "vocab_size");
    fprintf(stderr, "  refused: %s\n", e.msg);
    engine_close(g);
}

/* The embedding lookup is never reached with an id from outside 0..V-1 (the library refuses). */
static void test_ids_outside_vocab(void)
{
    struct err e = {{0}};
    struct engine *g = open_dir(t_tiny_model(1), &e);
    T_ASSERTF(g != NULL, "%s", e.msg);
    if (!g) return;
    struct sampler_params sp;
    sampler_defaults(&sp);
    sp.greedy = true;
    int32_t out[4];
    int n_out = 0;
    const int32_t bad[][3] = {{128000, 128256, 13}, {128000, -1, 13}, {128000, 2000000000, 13}};
    for (int k = 0; k < 3; k++) {
        memset(&e, 0, sizeof e);
        T_EQ_INT(t_generate(g, bad[k], NULL, 3, 2, &sp, NULL, NULL, out, &n_out, NULL, &e), -1);
        char want[64];
        snprintf(want, sizeof want, "token id %d at position 1", bad[k][1]);
        T_CONTAINS(e.msg, want);
    }
    struct tensor emb = {0};
    T_EQ_INT(engine_merge_embeddings(g, bad[0], 3, NULL, 0, &emb, &e), -1);
    T_CONTAINS(e.msg, "128256");
    /* the engine still works */
    const int32_t good[] = {128000, 791, 4062};
    T_ASSERTF(t_generate(g, good, NULL, 3, 2, &sp, NULL, NULL, out, &n_out, NULL, &e) == 0, "%s", e.msg);
    T_EQ_INT(n_out, 2);
    engine_close(g);
}

/* Finding 8: a checkpoint with more layers than config.json loaded silently (the extra layer was
 * just not used). Here config.json says 2 of the 3 stored layers. */
static void test_extra_layer_refused(void)
{
    const char *dir = tiny_variant("extralayer", "config.json");
    T_ASSERT(dir != NULL);
    if (!dir) return;
    char src[400], dst[400];
    snprintf(src, sizeof src, "%s/config.json", t_tiny_model(1));
    snprintf(dst, sizeof dst, "%s/config.json", dir);
    char *text = slurp(src, NULL);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    free(text);
    T_ASSERT(root != NULL);
    if (!root) return;
    cJSON *nl = cJSON_GetObjectItemCaseSensitive(root, "num_hidden_layers");
    T_EQ_INT(nl ? nl->valueint : -1, 3);
    cJSON_SetNumberValue(nl, 2);
    char *out = cJSON_Print(root);
    cJSON_Delete(root);
    T_ASSERT(out && spill(dst, out, strlen(out)) == 0);
    free(out);
    struct err e = {{0}};
    struct engine *g = open_dir(dir, &e);
    T_ASSERT(g == NULL);
    T_CONTAINS(e.msg, "llm.model.layers.2.");
    T_CONTAINS(e.msg, "num_hidden_layers = 2");
    fprintf(stderr, "  refused: %s\n", e.msg);
    engine_close(g);
}

/* Finding 8: NaN weights gave silent output. The final norm's weights set to NaN: every logit is
 * NaN, and the request fails naming it. */
static void test_nan_weights_fail(void)
{
    struct err e = {{0}};
    struct safetensors *st = NULL;
    T_ASSERTF(safetensors_open_dir(&st, t_tiny_model(1), &e) == 0, "%s", e.msg);
    if (!st) return;
    const struct safetensors_tensor *t = safetensors_find(st, "llm.model.norm.weight");
    T_ASSERT(t && t->dtype == DTYPE_F16);
    char shard[400];
    snprintf(shard, sizeof shard, "%s", t ? safetensors_shard_path(st, t->shard) : "");
    safetensors_close(st);
    const char *base = strrchr(shard, '/') ? strrchr(shard, '/') + 1 : shard;
    const char *dir = tiny_variant("nan", base);
    T_ASSERT(dir != NULL);
    if (!dir || !t) return;
    size_t n = 0;
    char *bytes = slurp(shard, &n);
    T_ASSERT(bytes && n > 8);
    if (!bytes) return;
    /* the header (little-endian u64 length, JSON) gives the tensor's byte range */
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | (uint8_t)bytes[i];
    char save = bytes[8 + hl];
    bytes[8 + hl] = 0;
    cJSON *h = cJSON_Parse(bytes + 8);
    bytes[8 + hl] = save;
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(h, "llm.model.norm.weight"), "data_offsets");
    T_EQ_INT(cJSON_GetArraySize(offs), 2);
    const size_t a = 8 + (size_t)hl + (size_t)cJSON_GetArrayItem(offs, 0)->valuedouble;
    const size_t b = 8 + (size_t)hl + (size_t)cJSON_GetArrayItem(offs, 1)->valuedouble;
    cJSON_Delete(h);
    T_ASSERT(b > a && b <= n);
    for (size_t i = a; i + 1 < b; i += 2) bytes[i] = 0x00, bytes[i + 1] = 0x7e; /* f16 NaN 0x7e00 */
    char dst[700];
    snprintf(dst, sizeof dst, "%s/%s", dir, base);
    T_ASSERT(spill(dst, bytes, n) == 0);
    free(bytes);
    struct engine *g = open_dir(dir, &e);
    T_ASSERTF(g != NULL, "%s", e.msg); /* loading does not read every weight */
    if (!g) return;
    struct sampler_params sp;
    sampler_defaults(&sp);
    const int32_t ids[] = {128000, 791, 4062};
    int32_t out[4];
    int n_out = 0;
    for (int greedy = 0; greedy < 2; greedy++) {
        sp.greedy = greedy;
        memset(&e, 0, sizeof e);
        T_EQ_INT(t_generate(g, ids, NULL, 3, 3, &sp, NULL, NULL, out, &n_out, NULL, &e), -1);
        T_CONTAINS(e.msg, "non-finite logit");
        T_EQ_INT(n_out, 0);
        llm_truncate(&g->llm, 0);
    }
    fprintf(stderr, "  refused: %s\n", e.msg);
    engine_close(g);
    unlink(dst); /* 68 MB */
}

/* The stop ids come from the folder (spec §8: config eos + the tokenizer's <|eot_id|>, and
 * generation_config.json's eos_token_id), no longer a hard-coded 128009: an id listed only in
 * generation_config.json stops generation, and one outside the vocabulary is refused by file. */
static void test_stop_ids(void)
{
    struct err e = {{0}};
    struct engine *g = open_dir(t_tiny_model(1), &e);
    T_ASSERTF(g != NULL, "%s", e.msg);
    if (!g) return;
    T_ASSERT(engine_is_stop(g, 128001)); /* config.json eos_token_id (spec §1.1) */
    T_ASSERT(engine_is_stop(g, 128009)); /* <|eot_id|> (spec §8) */
    T_ASSERT(!engine_is_stop(g, 1234) && !engine_is_stop(g, 0) && !engine_is_stop(g, 128000));
    engine_close(g);
    const char *dir = tiny_variant("stopids", "generation_config.json");
    T_ASSERT(dir != NULL);
    if (!dir) return;
    char path[400];
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    const char *gc = "{\"bos_token_id\": 128000, \"eos_token_id\": [128001, 1234]}";
    T_ASSERT(spill(path, gc, strlen(gc)) == 0);
    g = open_dir(dir, &e);
    T_ASSERTF(g != NULL, "%s", e.msg);
    if (g) {
        T_ASSERT(engine_is_stop(g, 1234) && engine_is_stop(g, 128001) && engine_is_stop(g, 128009));
        engine_close(g);
    }
    gc = "{\"eos_token_id\": 999999}";
    T_ASSERT(spill(path, gc, strlen(gc)) == 0);
    T_ASSERT(open_dir(dir, &e) == NULL);
    T_CONTAINS(e.msg, "generation_config.json");
    T_CONTAINS(e.msg, "999999");
}

int main(void)
{
    T_RUN(test_fixture_f32);
    T_RUN(test_fixture_f16);
    T_RUN(test_fixture_realistic);
    T_RUN(test_fixture_quant);
    struct backend_info bi;
    backend_query(&bi);
    if (bi.n_gpus > 0) T_RUN(test_fixture_cuda);
    else T_SKIP(test_fixture_cuda, "no CUDA device");
    if (bi.n_gpus > 0) {
        g_device = "cuda";
        T_RUN(test_overlap_same);
        g_device = "cpu";
    } else {
        T_SKIP(test_overlap_same, "no CUDA device");
    }
    T_RUN(test_split_equals_single);
    T_RUN(test_devmap_split);
    T_RUN(test_joined_weights);
    T_RUN(test_chunked_prefill);
    T_RUN(test_fused_equals_plain);
    T_RUN(test_tokenizer_outside_vocab);
    T_RUN(test_ids_outside_vocab);
    T_RUN(test_extra_layer_refused);
    T_RUN(test_nan_weights_fail);
    T_RUN(test_stop_ids);
    return t_main_end("test_llm");
}
