/* test_devmap.c: the device planner, its flags, explicit maps and `minicpmv plan`.
 * Expected numbers come from the spec's shapes and the formulas documented in devmap.h,
 * recomputed here (the IND_* helpers), never from the planner's own functions; the balance
 * rule is checked against a brute force over every split. No GPU is needed: GPUs are
 * described by their budgets, and the CPU is split into logical devices. */
#include <cJSON.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cmd.h"
#include "cmd_util.h"
#include "devmap.h"
#include "resampler.h"
#include "t.h"
#include "vision.h"

#define MiB ((int64_t)1 << 20)
#define GiB ((int64_t)1 << 30)

/* ---- the full model's costs, from spec §1-§2 (fp16) ---- */
static const int64_t LAYER_W = 2 * (4096LL * 4096 * 2 + 1024LL * 4096 * 2 + 14336LL * 4096 * 3) + 2 * 4096 * 2;
static const int64_t EMBED_W = 128256LL * 4096 * 2;   /* = lm_head */
static const int64_t VPM_W = 417792240LL * 2;         /* spec: vision 417,792,240 parameters */
static const int64_t RS_W = 89038848LL * 2;           /* spec: resampler 89,038,848 parameters */
static const int64_t NORM_W = 4096 * 2;
static const int64_t LIB = 64 * MiB;
static int64_t IND_kv(int64_t ctx) { return 2 * ctx * 8 * 128 * 2; } /* ctx a multiple of the 16-token block */
static const int64_t SLACK = 4096; /* 16 views x 256-byte alignment, per workspace part */
/* a device holding layers: the block tables (ctx / 16 entries per sequence, I32) and one sequence's K and V
 * gathered for the prefill's attention */
static int64_t IND_kvdev(int64_t ctx, int seqs) { return seqs * ((ctx + 15) / 16) * 4 + IND_kv(ctx) + SLACK; }
/* the LLM views: h, xn, o; q, att; k, v; gate, up; and nine I32 rows (ids, positions, and the batched
 * step's seven: ids, positions, cache rows, slots, key counts, the sampler's slots and picks) */
static int64_t IND_llm(int64_t n) { return n * 2 * (3 * 4096 + 2 * 4096 + 2 * 1024 + 2 * 14336) + 36 * n + SLACK; }
/* per patch of the batch: the tower's output, normed input, q, k, v, attention output (6 x 1152), fc1 (4304) and
 * the patch pixels (3 x 14 x 14); per patch of one piece: the gathered position-embedding row (1152) and its id
 * (4 bytes), shared by the batch's pieces */
static int64_t IND_vision(int64_t B, int64_t N) { return B * N * 2 * (6 * 1152 + 4304 + 3 * 14 * 14) + N * (2 * 1152 + 4) + SLACK; }
static int64_t IND_rs(int64_t B, int64_t N)
{
    return B * N * 2 * 1152 + 7 * N * 4096 * 2 + B * N * 8 + B * 96 * 2 * 3 * 4096 + 2 * 96 * 4096 * 2 + SLACK;
}
static const int64_t LOGITS = 128256LL * (4 + 2); /* f32 logits + the fp16 lm_head output */

/* What the first GPU (pins + n layers) and any other GPU (n layers) need at ctx 4096, chunk 2048 (the default),
 * 10 pieces x 1100 patches. */
static int64_t IND_first(int n, int norm)
{
    return 2 * EMBED_W + VPM_W + RS_W + n * (LAYER_W + IND_kv(4096)) + (n ? IND_kvdev(4096, 1) : 0) + IND_llm(2048) +
           LOGITS + IND_vision(10, 1100) + IND_rs(10, 1100) + LIB + (norm ? NORM_W : 0);
}
static int64_t IND_other(int n, int norm, int gpu)
{
    return n ? n * (LAYER_W + IND_kv(4096)) + IND_kvdev(4096, 1) + IND_llm(2048) + (gpu ? LIB : 0) + (norm ? NORM_W : 0)
             : 0;
}

static void full_config(struct model_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->model_type, sizeof c->model_type, "minicpmv");
    c->hidden_size = 4096;
    c->num_hidden_layers = 32;
    c->num_attention_heads = 32;
    c->num_key_value_heads = 8;
    c->intermediate_size = 14336;
    c->vocab_size = 128256;
    c->max_position_embeddings = 8192;
    c->query_num = 96;
    c->image_size = 448;
    c->patch_size = 14;
    c->head_dim = 128;
    c->vision_config.hidden_size = 1152;
    c->vision_config.image_size = 980;
    c->vision_config.intermediate_size = 4304;
    c->vision_config.num_attention_heads = 16;
    c->vision_config.num_hidden_layers = 27;
    c->vision_config.patch_size = 14;
    c->vision_config.num_channels = 3;
    c->vision_layers_used = 27;
}

/* Parses a flag line like the CLI does and builds the devices (no free-memory callback). */
static int devices_from(const char *line, struct devmap_opts *o, struct devmap_device *dev, int *n, struct err *e)
{
    char buf[512], *argv[32];
    int argc = 0;
    snprintf(buf, sizeof buf, "%s", line);
    for (char *s = NULL, *t = strtok_r(buf, " ", &s); t && argc < 32; t = strtok_r(NULL, " ", &s)) argv[argc++] = t;
    devmap_opts_init(o);
    for (int i = 0; i < argc; i++) {
        int r = devmap_opts_parse(o, argc, argv, &i, e);
        if (r <= 0) return r < 0 ? -1 : err_set(e, "not a device flag: %s", argv[i]);
    }
    return devmap_devices(o, -1, NULL, NULL, dev, n, e);
}

static struct devmap_plan plan_; /* large: keep it off the stack */

static int plan_from(const char *line, struct err *e)
{
    struct model_config c;
    struct devmap_opts o;
    struct devmap_device dev[DEVMAP_MAX_DEVICES];
    int n = 0;
    full_config(&c);
    memset(&plan_, 0, sizeof plan_);
    if (devices_from(line, &o, dev, &n, e)) return -2;
    return devmap_plan(&c, &o.params, dev, n, NULL, &plan_, e);
}

static int contiguous(const struct devmap_plan *p)
{
    for (int l = 1; l < p->map.n_layers; l++)
        if (p->map.layer[l] < p->map.layer[l - 1]) return 0;
    return 1;
}

static int count_on(const struct devmap_plan *p, int d)
{
    int n = 0;
    for (int l = 0; l < p->map.n_layers; l++) n += p->map.layer[l] == d;
    return n;
}

static double max_util(const struct devmap_plan *p)
{
    double u = 0;
    for (int i = 0; i < p->n_dev; i++) {
        double x = (double)p->use[i].total / (double)p->dev[i].budget;
        if (x > u) u = x;
    }
    return u;
}

/* ---------------------------------------------------------------- costs */

static void test_workspace_formulas(void)
{
    struct model_config c;
    full_config(&c);
    T_EQ_INT(devmap_llm_workspace(&c, 512, 2), IND_llm(512));
    T_EQ_INT(devmap_llm_workspace(&c, 1, 2), IND_llm(1));
    T_EQ_INT(devmap_vision_workspace(&c, 10, 1100, 2), IND_vision(10, 1100));
    T_EQ_INT(devmap_resampler_workspace(&c, 3, 1036, 2), IND_rs(3, 1036));
    struct devmap_params p;
    devmap_params_default(&p);
    p.ctx = 4096;
    T_EQ_INT(devmap_kv_layer_bytes(&c, &p), 16 * MiB);
    p.kv_seqs = 3;
    T_EQ_INT(devmap_kv_layer_bytes(&c, &p), 48 * MiB);
}

/* --kv-tokens: a pool the sequences share, in 16-token blocks (IND_kv of its tokens per layer), at least one
 * --ctx sequence; auto: the most the budget holds, between one ctx and --parallel of them (one block more would
 * not fit), the full pool when it fits; the advice offers it when --parallel full sequences do not fit. */
static void test_kv_pool(void)
{
    struct err e = {{0}};
    T_EQ_INT(plan_from("--max-memory cpu=64GiB --ctx 4096 --parallel 8 --kv-tokens 10000", &e), 0);
    T_EQ_INT(plan_.kv_blocks, 625);
    T_EQ_INT(plan_.kv_layer, IND_kv(10000));
    T_EQ_INT(plan_.use[0].kv, 32 * IND_kv(10000) + IND_kvdev(4096, 8)); /* the tables: 8 sequences of 4096 */
    T_EQ_INT(plan_.params.kv_tokens, 10000);
    T_EQ_INT(plan_from("--max-memory cpu=64GiB --ctx 4096 --parallel 8 --kv-tokens 4000", &e), -1);
    T_CONTAINS(e.msg, "--kv-tokens 4000: the KV pool must hold at least one --ctx 4096 sequence");

    /* 64 sequences of 4096 (32 GiB of KV) on a 40 GiB GPU */
    T_EQ_INT(plan_from("--gpus 0 --max-memory 0=40GiB --ctx 4096 --parallel 64", &e), -1);
    T_CONTAINS(plan_.advice, "--kv-tokens ");
    int rc = plan_from("--gpus 0 --max-memory 0=40GiB --ctx 4096 --parallel 64 --kv-tokens auto", &e);
    T_ASSERTF(rc == 0, "%s", e.msg);
    T_EQ_INT(plan_.kv_auto, 1);
    const int64_t blocks = plan_.kv_blocks, one_block = 32 * IND_kv(16);
    T_ASSERT(blocks > 256 && blocks < 64 * 256);
    T_EQ_INT(plan_.params.kv_tokens, blocks * 16);
    T_EQ_INT(plan_.use[0].kv, 32 * IND_kv(blocks * 16) + IND_kvdev(4096, 64));
    T_ASSERT(plan_.use[0].total <= 40 * GiB && plan_.use[0].total + one_block > 40 * GiB);
    T_EQ_INT(count_on(&plan_, 0), 32);
    /* everything fits: auto is the full pool */
    T_EQ_INT(plan_from("--max-memory cpu=64GiB --ctx 4096 --parallel 2 --kv-tokens auto", &e), 0);
    T_EQ_INT(plan_.kv_blocks, 512);
    /* a CPU budget does not make auto move layers off the GPU for a larger pool */
    T_EQ_INT(plan_from("--gpus 0 --max-memory 0=40GiB,cpu=64GiB --ctx 4096 --parallel 64 --kv-tokens auto", &e), 0);
    T_EQ_INT(count_on(&plan_, 0), 32);
    T_EQ_INT(plan_.map.embed, 0);
    T_EQ_INT(plan_.kv_blocks, blocks);
}

/* The plan's vision and resampler parts cover the blocks the engine allocates for them (mm.c: the
 * tower's output + vision.c's scratch; the resampler's input copy + resampler.c's scratch + its
 * output), every view 256-byte aligned, for the default batch and for odd piece shapes. (The
 * vision part used to leave out the gathered position rows: 2.4 MiB short at 10 x 1100.) */
static void test_covers_engine_scratch(void)
{
    struct model_config c;
    full_config(&c);
    static const int32_t shapes[][2] = {{44, 25}, {143, 7}, {7, 143}, {32, 32}, {1, 1100}};
    for (int s = 0; s < 5; s++) {
        for (int B = 1; B <= 10; B += 9) {
            int32_t tgt[20];
            for (int i = 0; i < B; i++) tgt[2 * i] = shapes[s][0], tgt[2 * i + 1] = shapes[s][1];
            int64_t N = (int64_t)shapes[s][0] * shapes[s][1];
            int64_t feats = (B * N * 1152 * 2 + 255) / 256 * 256, out = (int64_t)B * 96 * 4096 * 2;
            int64_t vis = feats + (int64_t)vision_scratch_bytes(&c, B, N, DTYPE_F16);
            int64_t rs = feats + (int64_t)resampler_scratch_bytes(&c, tgt, B, DTYPE_F16) + out;
            T_ASSERTF(devmap_vision_workspace(&c, B, N, 2) >= vis, "B %d N %lld: %lld < %lld", B, (long long)N,
                      (long long)devmap_vision_workspace(&c, B, N, 2), (long long)vis);
            T_ASSERTF(devmap_resampler_workspace(&c, B, N, 2) >= rs, "B %d N %lld: %lld < %lld", B, (long long)N,
                      (long long)devmap_resampler_workspace(&c, B, N, 2), (long long)rs);
        }
    }
}

/* One CPU device holding everything: every unit's bytes add up to the spec's 17,074,184,672. */
static void test_single_device_totals(void)
{
    struct err e = {{0}};
    T_EQ_INT(plan_from("--max-memory cpu=64GiB --ctx 4096", &e), 0);
    T_EQ_INT(plan_.n_dev, 1);
    T_EQ_STR(plan_.dev[0].label, "cpu");
    T_EQ_INT(plan_.use[0].weights, 17074184672LL);
    T_EQ_INT(plan_.use[0].weights, 2 * EMBED_W + 32 * LAYER_W + NORM_W + VPM_W + RS_W);
    T_EQ_INT(plan_.use[0].kv, 32 * IND_kv(4096) + IND_kvdev(4096, 1));
    T_EQ_INT(plan_.use[0].workspace, IND_llm(2048) + LOGITS + IND_vision(10, 1100) + IND_rs(10, 1100)); /* no LIB on CPU */
    T_EQ_INT(plan_.use[0].total, plan_.use[0].weights + plan_.use[0].kv + plan_.use[0].workspace);
    T_EQ_INT(plan_.params.ctx, 4096);
    /* the default ctx is min(4096, max_position_embeddings) */
    T_EQ_INT(plan_from("--max-memory cpu=64GiB", &e), 0);
    T_EQ_INT(plan_.params.ctx, 4096);
}

/* ---------------------------------------------------------------- auto placement */

/* The seed's case: two 16 GiB GPUs at 10 GiB each, --ctx 4096, one image with 9 slices. */
static void test_seed_two_gpus(void)
{
    struct err e = {{0}};
    int rc = plan_from("--gpus 0,1 --max-memory 0=10GiB,1=10GiB --ctx 4096 --max-pieces 10", &e);
    T_ASSERTF(rc == 0, "%s", e.msg);
    T_EQ_INT(plan_.fits, 1);
    T_EQ_INT(plan_.n_dev, 2);
    T_EQ_INT(plan_.dev[0].budget, 10 * GiB);
    /* the seed's pins, and the norm with the last layer */
    T_EQ_INT(plan_.map.embed, 0);
    T_EQ_INT(plan_.map.layer[0], 0);
    T_EQ_INT(plan_.map.lm_head, 0);
    T_EQ_INT(plan_.map.vpm, 0);
    T_EQ_INT(plan_.map.resampler, 0);
    T_EQ_INT(plan_.map.norm, plan_.map.layer[31]);
    T_ASSERT(contiguous(&plan_));
    int n0 = count_on(&plan_, 0);
    T_EQ_INT(plan_.use[0].total, IND_first(n0, 0));
    T_EQ_INT(plan_.use[1].total, IND_other(32 - n0, 1, 1));
    T_ASSERT(plan_.use[0].total <= 10 * GiB && plan_.use[1].total <= 10 * GiB);
    /* balanced: no split k has a smaller worst fill fraction */
    double best = 1e9;
    for (int k = 1; k <= 32; k++) {
        double a = (double)IND_first(k, k == 32) / (double)(10 * GiB), b = (double)IND_other(32 - k, 1, 1) / (double)(10 * GiB);
        if ((a > b ? a : b) < best) best = a > b ? a : b;
    }
    T_NEAR(max_util(&plan_), best, 1e-12);
    /* derived by hand: GPU0 fixed ~3.55 GiB + 0.42 GiB/layer vs GPU1 0.11 GiB + 0.42 GiB/layer -> 12 / 20 */
    T_EQ_INT(n0, 12);
}

/* Unequal GPUs; three of them checked against a brute force over every (k0, k1, k2). */
static void test_unequal_gpus(void)
{
    struct err e = {{0}};
    T_EQ_INT(plan_from("--max-memory 0=24GiB,1=6GiB", &e), 0);
    T_ASSERT(contiguous(&plan_));
    T_ASSERT(count_on(&plan_, 0) > count_on(&plan_, 1));
    T_ASSERT(plan_.use[1].total <= 6 * GiB);

    T_EQ_INT(plan_from("--gpus 0,1,2 --max-memory 0=8GiB,1=5GiB,2=9GiB", &e), 0);
    T_EQ_INT(plan_.n_dev, 3);
    T_ASSERT(contiguous(&plan_));
    T_EQ_INT(plan_.map.norm, 2);
    int64_t bud[3] = {8 * GiB, 5 * GiB, 9 * GiB};
    double best = 1e9;
    for (int k0 = 1; k0 <= 32; k0++)
        for (int k1 = 0; k0 + k1 <= 32; k1++) {
            int k2 = 32 - k0 - k1;
            int64_t need[3] = {IND_first(k0, k0 == 32), IND_other(k1, k2 == 0 && k1 > 0, 1), IND_other(k2, k2 > 0, 1)};
            double u = 0;
            for (int i = 0; i < 3; i++)
                if ((double)need[i] / (double)bud[i] > u) u = (double)need[i] / (double)bud[i];
            if (u < best) best = u;
        }
    T_ASSERT(best <= 1.0);
    T_NEAR(max_util(&plan_), best, 1e-12);
    for (int i = 0; i < 3; i++) T_ASSERT(plan_.use[i].total <= bud[i]);
}

/* Advice numbers are "(to X.YZ GiB)" and "--ctx N": each must fit by itself, and be the smallest change. */
static double advice_to(const char *advice, const char *after)
{
    const char *s = strstr(advice, after);
    if (!s) return -1;
    s = strstr(s, "(to ");
    return s ? atof(s + 4) : -1;
}

static void test_does_not_fit(void)
{
    struct err e = {{0}};
    int rc = plan_from("--gpus 0,1 --max-memory 0=9GiB,1=7GiB --ctx 4096", &e);
    T_EQ_INT(rc, -1);
    T_EQ_INT(plan_.fits, 0);
    T_CONTAINS(e.msg, "does not fit");
    T_CONTAINS(e.msg, "gpu 1 needs");
    T_CONTAINS(plan_.advice, "add cpu=");
    /* the table still shows what each device would need */
    T_ASSERT(plan_.use[0].total > 0 && plan_.use[1].total > 7 * GiB);
    T_EQ_INT(plan_.use[0].weights + plan_.use[1].weights, 17074184672LL);
    const char *r = strstr(plan_.advice, "raise the budget of gpu ");
    int g = r ? atoi(r + 24) : -1;
    double to = r ? advice_to(r, "gpu") : -1, by = r && strstr(r, " by ") ? atof(strstr(r, " by ") + 4) : -1;
    T_ASSERTF(g >= 0 && g <= 1 && to > 7 && by > 0, "advice: %s", plan_.advice);
    double base[2] = {9, 7};
    char line[256];
    base[g] = to;
    snprintf(line, sizeof line, "--gpus 0,1 --max-memory 0=%.2fGiB,1=%.2fGiB --ctx 4096", base[0], base[1]);
    T_ASSERTF(plan_from(line, &e) == 0, "%s: %s", line, e.msg);
    base[g] = to - 0.02; /* smaller does not fit */
    snprintf(line, sizeof line, "--gpus 0,1 --max-memory 0=%.2fGiB,1=%.2fGiB --ctx 4096", base[0], base[1]);
    T_EQ_INT(plan_from(line, &e), -1);
    base[0] = 9, base[1] = 7; /* and the other GPU needs more than that */
    base[1 - g] += by - 0.02;
    snprintf(line, sizeof line, "--gpus 0,1 --max-memory 0=%.2fGiB,1=%.2fGiB --ctx 4096", base[0], base[1]);
    T_EQ_INT(plan_from(line, &e), -1);
    /* the cpu suggestion */
    plan_from("--gpus 0,1 --max-memory 0=9GiB,1=7GiB --ctx 4096", &e);
    const char *s = strstr(plan_.advice, "add cpu=");
    char tok[32] = "";
    int64_t cpu = -1;
    if (s) sscanf(s + 8, "%31s", tok);
    T_ASSERTF(tok[0] && parse_size(tok, &cpu) == 0 && cpu > 0, "advice: %s", plan_.advice);
    snprintf(line, sizeof line, "--gpus 0,1 --max-memory 0=9GiB,1=7GiB,cpu=%s --ctx 4096", tok);
    T_ASSERTF(plan_from(line, &e) == 0, "%s: %s", line, e.msg);
    /* printed rounded up by < 10.24 MiB, searched to 1 MiB: 12 MiB less must not fit */
    snprintf(line, sizeof line, "--gpus 0,1 --max-memory 0=9GiB,1=7GiB,cpu=%lld --ctx 4096", (long long)(cpu - 12 * MiB));
    T_EQ_INT(plan_from(line, &e), -1);

    /* a case where only a shorter context helps the KV cache: 2 GPUs x 9 GiB at ctx 32768 */
    rc = plan_from("--gpus 0,1 --max-memory 0=9GiB,1=9GiB --ctx 32768", &e);
    T_EQ_INT(rc, -1);
    s = strstr(plan_.advice, "lower --ctx to ");
    T_ASSERTF(s != NULL, "advice: %s", plan_.advice);
    long ctx = s ? atol(s + 15) : 0;
    T_ASSERT(ctx >= 256 && ctx < 32768 && ctx % 256 == 0);
    snprintf(line, sizeof line, "--gpus 0,1 --max-memory 0=9GiB,1=9GiB --ctx %ld", ctx);
    T_ASSERTF(plan_from(line, &e) == 0, "%s: %s", line, e.msg);
    snprintf(line, sizeof line, "--gpus 0,1 --max-memory 0=9GiB,1=9GiB --ctx %ld", ctx + 256);
    T_EQ_INT(plan_from(line, &e), -1);

    /* pins that cannot fit the first GPU: no cpu advice can help, only raising gpu 0 */
    T_EQ_INT(plan_from("--max-memory 0=2GiB,1=20GiB,cpu=64GiB", &e), -1);
    T_CONTAINS(plan_.advice, "raise the budget of gpu 0");
}

/* CPU offload: a cpu budget takes the embedding table (one row per token; 1 GiB of GPU memory freed) and
 * then the fewest trailing layers the GPUs cannot hold. */
static void test_cpu_offload(void)
{
    struct err e = {{0}};
    T_EQ_INT(plan_from("--gpus 0,1 --max-memory 0=7GiB,1=7GiB", &e), -1);
    int rc = plan_from("--gpus 0,1 --max-memory 0=7GiB,1=7GiB,cpu=32GiB", &e);
    T_ASSERTF(rc == 0, "%s", e.msg);
    T_EQ_INT(plan_.n_dev, 3);
    T_EQ_STR(plan_.dev[2].label, "cpu");
    T_ASSERT(contiguous(&plan_));
    T_EQ_INT(plan_.map.norm, 2);
    T_EQ_INT(plan_.map.vpm, 0);
    int m = count_on(&plan_, 2);
    T_ASSERT(m > 0);
    T_EQ_INT(plan_.map.embed, 2);
    T_EQ_INT(plan_.use[2].total, EMBED_W + IND_other(m, 1, 0));
    /* minimal: the GPUs without the embedding cannot hold 32-m+1 layers in any split */
    int ok = 0;
    for (int k = 0; k <= 32 - m + 1; k++)
        if (IND_first(k, 0) - EMBED_W <= 7 * GiB && IND_other(32 - m + 1 - k, 0, 1) <= 7 * GiB) ok = 1;
    T_EQ_INT(ok, 0);
}

/* Issue 13: the embedding table in host memory only when the GPU budget asks for it. q4 on one GPU at ctx
 * 4096 needs 7.16 GiB with the table: 8 GiB keeps it on the GPU; 6.5 GiB with a cpu budget moves only the
 * table (all 32 layers stay on the GPU, which then needs exactly EMBED_W less; the CPU holds the table
 * and the LLM views of a prefill chunk); 6.5 GiB without one advises the cpu budget that does that. */
static void test_embed_host(void)
{
    struct err e = {{0}};
    T_ASSERTF(plan_from("--quant q4 --max-memory 0=8GiB --ctx 4096", &e) == 0, "%s", e.msg);
    T_EQ_INT(plan_.n_dev, 1);
    T_EQ_INT(plan_.map.embed, 0);
    const int64_t gpu_all = plan_.use[0].total;
    T_ASSERT(gpu_all > (int64_t)(6.5 * GiB) && gpu_all <= 8 * GiB);
    T_ASSERTF(plan_from("--quant q4 --max-memory 0=6.5GiB,cpu=4GiB --ctx 4096", &e) == 0, "%s", e.msg);
    T_EQ_INT(plan_.n_dev, 2);
    T_EQ_INT(plan_.map.embed, 1);
    T_EQ_INT(count_on(&plan_, 0), 32);
    T_EQ_INT(plan_.map.norm, 0);
    T_EQ_INT(plan_.map.lm_head, 0);
    T_EQ_INT(plan_.use[0].total, gpu_all - EMBED_W);
    T_EQ_INT(plan_.use[1].total, EMBED_W + IND_llm(2048));
    T_EQ_INT(plan_.use[1].kv, 0);
    /* with room on the GPU the table stays there even when a CPU is listed */
    T_ASSERTF(plan_from("--quant q4 --max-memory 0=8GiB,cpu=4GiB --ctx 4096", &e) == 0, "%s", e.msg);
    T_EQ_INT(plan_.map.embed, 0);
    T_EQ_INT(plan_.use[1].total, 0);
    /* no cpu budget: the advice names the one that moves the table */
    T_EQ_INT(plan_from("--quant q4 --max-memory 0=6.5GiB --ctx 4096", &e), -1);
    const char *s = strstr(plan_.advice, "the embedding table goes to the host");
    while (s && s > plan_.advice && strncmp(s, "add cpu=", 8)) s--;
    char tok[32] = "", line[160];
    if (s) sscanf(s + 8, "%31s", tok);
    T_ASSERTF(s && tok[0], "advice: %s", plan_.advice);
    snprintf(line, sizeof line, "--quant q4 --max-memory 0=6.5GiB,cpu=%s --ctx 4096", tok);
    T_ASSERTF(plan_from(line, &e) == 0, "%s: %s", line, e.msg);
    T_EQ_INT(plan_.map.embed, 1);
    T_EQ_INT(count_on(&plan_, 1), 0);
}

/* Logical devices: the CPU split in three, and one GPU split in two plus the CPU. */
static void test_logical_devices(void)
{
    struct err e = {{0}};
    int rc = plan_from("--logical-devices cpu:3 --max-memory cpu=30GiB", &e);
    T_ASSERTF(rc == 0, "%s", e.msg);
    T_EQ_INT(plan_.n_dev, 3);
    T_EQ_STR(plan_.dev[0].label, "cpu.0");
    T_EQ_STR(plan_.dev[2].label, "cpu.2");
    T_EQ_INT(plan_.dev[1].budget, 10 * GiB);
    T_ASSERT(contiguous(&plan_));
    for (int i = 0; i < 3; i++) T_ASSERT(count_on(&plan_, i) > 0 && plan_.use[i].total <= 10 * GiB);
    T_EQ_INT(plan_.map.vpm, 0);
    T_EQ_INT(plan_.map.norm, 2);

    /* a part budget overrides the even share */
    rc = plan_from("--logical-devices cpu:3 --max-memory cpu=30GiB,cpu.1=4GiB", &e);
    T_ASSERTF(rc == 0, "%s", e.msg);
    T_EQ_INT(plan_.dev[1].budget, 4 * GiB);
    T_EQ_INT(plan_.dev[2].budget, 10 * GiB);
    T_ASSERT(plan_.use[1].total <= 4 * GiB);

    rc = plan_from("--gpus 0 --logical-devices 0:2 --max-memory 0=14GiB,cpu=16GiB", &e);
    T_ASSERTF(rc == 0, "%s", e.msg);
    T_EQ_INT(plan_.n_dev, 3);
    T_EQ_STR(plan_.dev[0].label, "0.0");
    T_EQ_STR(plan_.dev[1].label, "0.1");
    T_EQ_INT(plan_.dev[1].kind, DEVICE_CUDA);
    T_EQ_INT(plan_.dev[1].ordinal, 0);
    T_EQ_INT(plan_.dev[0].budget, 7 * GiB);
    T_ASSERT(count_on(&plan_, 0) > 0 && count_on(&plan_, 1) > 0 && count_on(&plan_, 2) > 0);
    T_EQ_INT(plan_.use[1].ws_lib, LIB); /* each logical GPU device has its own library workspace */
    T_ASSERT(contiguous(&plan_));
}

/* ---------------------------------------------------------------- flags */

static int mem_cb(enum device_kind kind, int ordinal, int64_t *free_bytes, void *ctx, struct err *e)
{
    (void)ctx;
    if (kind == DEVICE_CUDA && ordinal > 1) return err_set(e, "no GPU %d", ordinal);
    *free_bytes = kind == DEVICE_CPU ? 32 * GiB : 16 * GiB;
    return 0;
}

static void test_flags(void)
{
    struct err e = {{0}};
    struct devmap_opts o;
    struct devmap_device dev[DEVMAP_MAX_DEVICES];
    int n;
    T_EQ_INT(devices_from("--max-memory 0=10XB", &o, dev, &n, &e), -1);
    T_CONTAINS(e.msg, "10XB");
    T_EQ_INT(devices_from("--gpus 0,x", &o, dev, &n, &e), -1);
    T_CONTAINS(e.msg, "'x'");
    T_EQ_INT(devices_from("--gpus 0,0", &o, dev, &n, &e), -1);
    T_EQ_INT(devices_from("--gpus 0,1 --max-memory 0=1GiB,2=1GiB", &o, dev, &n, &e), -1);
    T_CONTAINS(e.msg, "GPU 2");
    T_EQ_INT(devices_from("--gpus 0,1 --max-memory 0=1GiB", &o, dev, &n, &e), -1);
    T_CONTAINS(e.msg, "--max-memory 1=SIZE");
    T_EQ_INT(devices_from("--max-memory 0.1=1GiB", &o, dev, &n, &e), -1);
    T_CONTAINS(e.msg, "not split");
    T_EQ_INT(devices_from("--ctx 0", &o, dev, &n, &e), -1);
    T_EQ_INT(devices_from("--ctx", &o, dev, &n, &e), -1);
    T_EQ_INT(devices_from("--max-memory=cpu=1GiB --ctx=2048 --kv-seqs 3 --max-batch 256", &o, dev, &n, &e), 0);
    T_EQ_INT(o.params.ctx, 2048);
    T_EQ_INT(o.params.kv_seqs, 3);
    T_EQ_INT(o.params.max_batch_tokens, 256);
    T_EQ_INT(n, 1);
    T_EQ_INT(dev[0].budget, GiB);
    /* units: accelerate's spelling */
    T_EQ_INT(devices_from("--max-memory 0=10GB,1=512MiB", &o, dev, &n, &e), 0);
    T_EQ_INT(n, 2);
    T_EQ_INT(dev[0].budget, 10000000000LL);
    T_EQ_INT(dev[1].budget, 512 * MiB);
    /* budgets from free memory: free - free/16 - 256 MiB */
    devmap_opts_init(&o);
    T_EQ_INT(devmap_devices(&o, 2, mem_cb, NULL, dev, &n, &e), 0);
    T_EQ_INT(n, 2);
    T_EQ_INT(dev[1].budget, 16 * GiB - GiB - 256 * MiB);
    T_EQ_INT(devmap_devices(&o, 0, mem_cb, NULL, dev, &n, &e), 0); /* no GPU: the CPU */
    T_EQ_INT(n, 1);
    T_EQ_INT(dev[0].kind, DEVICE_CPU);
    T_EQ_INT(dev[0].budget, 32 * GiB - 2 * GiB - 256 * MiB);
    char *argv[] = {"--gpus", "0,3"};
    int i = 0;
    T_EQ_INT(devmap_opts_parse(&o, 2, argv, &i, &e), 1);
    T_EQ_INT(i, 1);
    T_EQ_INT(devmap_devices(&o, 2, mem_cb, NULL, dev, &n, &e), -1);
    T_CONTAINS(e.msg, "GPU 3 is not visible");
    char *other[] = {"--temperature", "1"};
    i = 0;
    T_EQ_INT(devmap_opts_parse(&o, 2, other, &i, &e), 0);
}

/* ---------------------------------------------------------------- explicit maps */

static int map_with(const char *json, struct devmap_assign *m, struct err *e)
{
    struct model_config c;
    struct devmap_opts o;
    struct devmap_device dev[DEVMAP_MAX_DEVICES];
    int n;
    full_config(&c);
    if (devices_from("--max-memory 0=10GiB,1=10GiB", &o, dev, &n, e)) return -2;
    return devmap_map_parse(m, json, "map.json", &c, dev, n, e);
}

/* A flat map text: layers [0, split) on a, the rest on b; pins on p. extra appended inside. */
static void map_text(char *buf, size_t n, int split, const char *a, const char *b, const char *p, const char *extra, int skip)
{
    size_t len = (size_t)snprintf(buf, n, "{\"llm.model.embed_tokens\": %s, \"llm.lm_head\": %s, \"vpm\": %s, "
                                          "\"resampler\": %s, \"llm.model.norm\": %s%s", p, p, p, p, b, extra);
    for (int l = 0; l < 32; l++)
        if (l != skip) len += (size_t)snprintf(buf + len, n - len, ", \"llm.model.layers.%d\": %s", l, l < split ? a : b);
    snprintf(buf + len, n - len, "}");
}

/* Issue 16, finding 8: budgets that are not finite sizes (nan, inf, 1e30GiB) were cast to int64_t
 * (undefined; INT64_MIN on x86, i.e. "no budget") and the default budget was used silently. Each
 * is refused with the value named; the largest size below 2^63 bytes is still accepted. */
static void test_budget_values(void)
{
    static const char *bad[] = {"nan", "NaN", "inf", "-inf", "infinity", "1e30GiB", "1e400", "8EiB", "8388608TiB",
                                "9223372036854775808", "-1GiB", "-0.5"};
    struct err e = {{0}};
    struct devmap_opts o;
    struct devmap_device dev[DEVMAP_MAX_DEVICES];
    int n;
    char line[128];
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        memset(&e, 0, sizeof e);
        snprintf(line, sizeof line, "--max-memory cpu=%s", bad[k]);
        T_ASSERTF(devices_from(line, &o, dev, &n, &e) == -1, "%s was accepted (budget %lld)", line,
                  n > 0 ? (long long)dev[0].budget : -1LL);
        char want[64];
        snprintf(want, sizeof want, "'%s'", bad[k]);
        T_CONTAINS(e.msg, want);
        int64_t v = 12345;
        T_ASSERTF(parse_size(bad[k], &v) == -1 && v == 12345, "parse_size(%s)", bad[k]);
    }
    /* 2^63 - 2^40 (8 EiB less one TiB), and 0 */
    T_EQ_INT(devices_from("--max-memory cpu=8388607TiB", &o, dev, &n, &e), 0);
    T_EQ_INT(dev[0].budget, 8388607LL << 40);
    int64_t v = -1;
    T_EQ_INT(parse_size("0", &v), 0);
    T_EQ_INT(v, 0);
    /* a device-map value that no int holds: refused by range before any cast (UBSan was the only
     * witness of the old order) */
    struct devmap_assign m;
    char buf[4096];
    map_text(buf, sizeof buf, 16, "0", "1", "1e30", "", -1);
    T_EQ_INT(map_with(buf, &m, &e), -1);
    T_CONTAINS(e.msg, "1e+30 is not a GPU index");
}

static void test_explicit_maps(void)
{
    struct err e = {{0}};
    struct devmap_assign m;
    char buf[4096];
    map_text(buf, sizeof buf, 16, "0", "1", "0", "", -1);
    T_ASSERTF(map_with(buf, &m, &e) == 0, "%s", e.msg);
    T_EQ_INT(m.layer[15], 0);
    T_EQ_INT(m.layer[16], 1);
    T_EQ_INT(m.norm, 1);
    map_text(buf, sizeof buf, 16, "\"cuda:0\"", "\"1\"", "0", "", -1); /* other spellings */
    T_ASSERTF(map_with(buf, &m, &e) == 0, "%s", e.msg);
    T_EQ_INT(m.layer[16], 1);

    map_text(buf, sizeof buf, 16, "0", "1", "0", "", 5);
    T_EQ_INT(map_with(buf, &m, &e), -1);
    T_CONTAINS(e.msg, "no device for llm.model.layers.5");
    map_text(buf, sizeof buf, 16, "0", "1", "0", ", \"llm.model.layers.32\": 1", -1);
    T_EQ_INT(map_with(buf, &m, &e), -1);
    T_CONTAINS(e.msg, "unknown module 'llm.model.layers.32'");
    map_text(buf, sizeof buf, 16, "0", "1", "0", ", \"llm.model.rotary_emb\": 1", -1);
    T_EQ_INT(map_with(buf, &m, &e), -1);
    T_CONTAINS(e.msg, "unknown module 'llm.model.rotary_emb'");
    map_text(buf, sizeof buf, 16, "0", "2", "0", "", -1);
    T_EQ_INT(map_with(buf, &m, &e), -1);
    T_CONTAINS(e.msg, "device 2 is out of range");
    map_text(buf, sizeof buf, 16, "0", "1", "\"cpu\"", "", -1);
    T_EQ_INT(map_with(buf, &m, &e), -1);
    T_CONTAINS(e.msg, "device cpu is out of range");
    map_text(buf, sizeof buf, 16, "0", "1", "\"disk\"", "", -1);
    T_EQ_INT(map_with(buf, &m, &e), -1);
    T_CONTAINS(e.msg, "'disk' is not a device");
    map_text(buf, sizeof buf, 16, "0", "1", "0", ", \"vpm\": 1", -1);
    T_EQ_INT(map_with(buf, &m, &e), -1);
    T_CONTAINS(e.msg, "'vpm' appears twice");
    T_EQ_INT(map_with("{\"vpm\": 0,", &m, &e), -1);
    T_CONTAINS(e.msg, "not valid JSON");
    T_EQ_INT(map_with("[0, 1]", &m, &e), -1);

    /* a split GPU must be named by part */
    struct model_config c;
    struct devmap_opts o;
    struct devmap_device dev[DEVMAP_MAX_DEVICES];
    int n;
    full_config(&c);
    T_EQ_INT(devices_from("--logical-devices 0:2 --max-memory 0=20GiB", &o, dev, &n, &e), 0);
    map_text(buf, sizeof buf, 16, "\"0.0\"", "\"0.1\"", "\"0.0\"", "", -1);
    T_ASSERTF(devmap_map_parse(&m, buf, "m", &c, dev, n, &e) == 0, "%s", e.msg);
    T_EQ_INT(m.layer[20], 1);
    map_text(buf, sizeof buf, 16, "0", "\"0.1\"", "\"0.0\"", "", -1);
    T_EQ_INT(devmap_map_parse(&m, buf, "m", &c, dev, n, &e), -1);
    T_CONTAINS(e.msg, "split into 2 logical devices");

    /* planning a fixed map: non-contiguous is allowed with a note; over budget names the device */
    T_EQ_INT(devices_from("--max-memory 0=10GiB,1=10GiB", &o, dev, &n, &e), 0);
    map_text(buf, sizeof buf, 16, "0", "1", "0", ", \"llm.model.layers.3\": 1", 3);
    T_ASSERTF(devmap_map_parse(&m, buf, "m", &c, dev, n, &e) == 0, "%s", e.msg);
    T_EQ_INT(devmap_plan(&c, &o.params, dev, n, &m, &plan_, &e), 0);
    T_CONTAINS(plan_.notes, "not in contiguous ranges");
    T_EQ_INT(plan_.use[0].total, IND_first(15, 0));
    T_EQ_INT(plan_.use[1].total, IND_other(17, 1, 1));
    map_text(buf, sizeof buf, 24, "0", "1", "0", "", -1); /* 24 layers + pins on a 10 GiB GPU */
    T_ASSERTF(devmap_map_parse(&m, buf, "m", &c, dev, n, &e) == 0, "%s", e.msg);
    T_EQ_INT(devmap_plan(&c, &o.params, dev, n, &m, &plan_, &e), -1);
    T_EQ_INT(plan_.use[0].total, IND_first(24, 0));
    T_CONTAINS(e.msg, "gpu 0 needs");
    T_ASSERT(strstr(e.msg, "gpu 1 needs") == NULL);
    T_CONTAINS(plan_.advice, "raise the budget of gpu 0 by");
    double to = advice_to(plan_.advice, "gpu 0");
    T_ASSERT(to * (double)GiB >= (double)IND_first(24, 0) && to * (double)GiB < (double)IND_first(24, 0) + 0.011 * (double)GiB);
    T_EQ_INT(plan_.map.layer[23], 0); /* the map is kept as given */
}

/* plan --json's "device_map" maps every module to its device; it can be fed back as --device-map. */
static void test_json_round_trip(void)
{
    struct err e = {{0}};
    struct model_config c;
    struct devmap_opts o;
    struct devmap_device dev[DEVMAP_MAX_DEVICES];
    struct devmap_assign m;
    int n;
    full_config(&c);
    T_EQ_INT(devices_from("--max-memory 0=8GiB,1=8GiB,cpu=8GiB", &o, dev, &n, &e), 0);
    T_EQ_INT(devmap_plan(&c, &o.params, dev, n, NULL, &plan_, &e), 0);
    char *js = devmap_to_json(&plan_, NULL);
    T_ASSERT(js != NULL);
    cJSON *root = cJSON_Parse(js);
    T_ASSERT(root != NULL);
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "device_map");
    T_EQ_INT(cJSON_GetArraySize(map), 37);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(map, "llm.model.layers.0");
    T_ASSERT(cJSON_IsNumber(v) && v->valueint == 0);
    v = cJSON_GetObjectItemCaseSensitive(map, "llm.model.norm");
    T_ASSERT(cJSON_IsString(v) && !strcmp(v->valuestring, "cpu"));
    const cJSON *devs = cJSON_GetObjectItemCaseSensitive(root, "devices");
    T_EQ_INT(cJSON_GetArraySize(devs), 3);
    int64_t sum = 0;
    const cJSON *d;
    cJSON_ArrayForEach(d, devs) sum += (int64_t)cJSON_GetObjectItemCaseSensitive(d, "weights")->valuedouble;
    T_EQ_INT(sum, 17074184672LL);
    T_ASSERT(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "fits")));
    struct devmap_plan *first = malloc(sizeof *first);
    memcpy(first, &plan_, sizeof *first);
    T_ASSERTF(devmap_map_parse(&m, js, "plan.json", &c, dev, n, &e) == 0, "%s", e.msg);
    T_EQ_INT(devmap_plan(&c, &o.params, dev, n, &m, &plan_, &e), 0);
    T_ASSERT(!memcmp(&first->map, &plan_.map, sizeof m));
    for (int i = 0; i < n; i++) T_EQ_INT(first->use[i].total, plan_.use[i].total);
    free(first);
    cJSON_Delete(root);
    free(js);
}

/* ---------------------------------------------------------------- minicpmv plan */

static const char *FULL_CONFIG_JSON =
    "{\"architectures\": [\"MiniCPMV\"], \"model_type\": \"minicpmv\", \"version\": \"2.5\", \"hidden_size\": 4096,"
    " \"num_hidden_layers\": 32, \"num_attention_heads\": 32, \"num_key_value_heads\": 8, \"intermediate_size\": 14336,"
    " \"hidden_act\": \"silu\", \"vocab_size\": 128256, \"max_position_embeddings\": 8192, \"rope_theta\": 500000.0,"
    " \"rms_norm_eps\": 1e-05, \"attention_bias\": false, \"tie_word_embeddings\": false, \"bos_token_id\": 128000,"
    " \"eos_token_id\": 128001, \"torch_dtype\": \"float16\", \"query_num\": 96, \"image_size\": 448, \"patch_size\": 14,"
    " \"drop_vision_last_layer\": false, \"batch_vision_input\": true,"
    " \"slice_config\": {\"max_slice_nums\": 9, \"patch_size\": 14, \"model_type\": \"minicpmv\"},"
    " \"vision_config\": {\"hidden_size\": 1152, \"image_size\": 980, \"intermediate_size\": 4304,"
    " \"model_type\": \"idefics2\", \"num_attention_heads\": 16, \"num_hidden_layers\": 27, \"patch_size\": 14}}";

/* Runs cmd_plan with stdout captured into out (heap). */
static int run_plan(const char *dir, const char *flags, char **out)
{
    char buf[1024], path[600], *argv[40];
    int argc = 0;
    snprintf(buf, sizeof buf, "plan --model %s %s", dir, flags);
    for (char *s = NULL, *t = strtok_r(buf, " ", &s); t && argc < 40; t = strtok_r(NULL, " ", &s)) argv[argc++] = t;
    snprintf(path, sizeof path, "%s/stdout.txt", dir);
    fflush(stdout);
    int saved = dup(1), fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(fd, 1);
    close(fd);
    int rc = cmd_plan(argc, argv);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    struct err e;
    if (read_file(path, 1 << 20, out, NULL, &e)) *out = NULL;
    return rc;
}

/* The device printed after "->" on the line of module name in the human output. */
static const char *line_dev(const char *out, const char *name)
{
    static char dev[16];
    char want[80];
    snprintf(want, sizeof want, "  %s ", name);
    const char *s = out ? strstr(out, want) : NULL;
    snprintf(dev, sizeof dev, "?");
    if (s) sscanf(s, " %*s -> %15s", dev);
    return dev;
}

static void test_cmd_plan(void)
{
    if (!cmd_plan) {
        T_ASSERTF(0, "cmd_plan is not linked");
        return;
    }
    char dir[] = "/tmp/test_devmap_XXXXXX", path[600];
    T_ASSERT(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    fputs(FULL_CONFIG_JSON, f);
    fclose(f);
    char *out = NULL;
    /* config.json alone, GPUs this machine does not have, budgets from --max-memory */
    int rc = run_plan(dir, "--gpus 0,1 --max-memory 0=10GiB,1=10GiB --ctx 4096 --json", &out);
    T_EQ_INT(rc, 0);
    cJSON *root = out ? cJSON_Parse(out) : NULL;
    T_ASSERTF(root != NULL, "output: %s", out ? out : "(none)");
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "device_map");
    T_EQ_INT(cJSON_GetArraySize(map), 37);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(map, "llm.model.layers.31");
    T_ASSERT(cJSON_IsNumber(v) && v->valueint == 1);
    v = cJSON_GetObjectItemCaseSensitive(map, "vpm");
    T_ASSERT(cJSON_IsNumber(v) && v->valueint == 0);
    cJSON_Delete(root);
    free(out);

    rc = run_plan(dir, "--gpus 0,1 --max-memory 0=10GiB,1=10GiB", &out);
    T_EQ_INT(rc, 0);
    T_EQ_STR(line_dev(out, "llm.model.layers.11"), "0");
    T_EQ_STR(line_dev(out, "llm.model.layers.12"), "1");
    T_EQ_STR(line_dev(out, "llm.model.norm"), "1");
    T_EQ_STR(line_dev(out, "resampler"), "0");
    T_ASSERT(out && strstr(out, "10.00 GiB"));
    free(out);

    rc = run_plan(dir, "--max-memory 0=6GiB,1=6GiB --json", &out);
    T_EQ_INT(rc, 1);
    root = out ? cJSON_Parse(out) : NULL;
    T_ASSERT(root && cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(root, "fits")));
    T_ASSERT(root && cJSON_IsString(cJSON_GetObjectItemCaseSensitive(root, "advice")));
    cJSON_Delete(root);
    free(out);

    snprintf(path, sizeof path, "%s/map.json", dir);
    f = fopen(path, "w");
    fputs("{\"vpm\": 0}", f);
    fclose(f);
    char flags[700];
    snprintf(flags, sizeof flags, "--max-memory 0=10GiB,1=10GiB --device-map %s", path);
    T_EQ_INT(run_plan(dir, flags, &out), 1);
    free(out);
    T_EQ_INT(run_plan(dir, "--max-memory 0=abc", &out), 2);
    free(out);
    snprintf(path, sizeof path, "%s/map.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/stdout.txt", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    T_RUN(test_workspace_formulas);
    T_RUN(test_covers_engine_scratch);
    T_RUN(test_kv_pool);
    T_RUN(test_single_device_totals);
    T_RUN(test_seed_two_gpus);
    T_RUN(test_unequal_gpus);
    T_RUN(test_does_not_fit);
    T_RUN(test_cpu_offload);
    T_RUN(test_embed_host);
    T_RUN(test_logical_devices);
    T_RUN(test_flags);
    T_RUN(test_budget_values);
    T_RUN(test_explicit_maps);
    T_RUN(test_json_round_trip);
    T_RUN(test_cmd_plan);
    return t_main_end("test_devmap");
}
