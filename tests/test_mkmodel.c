/* test_mkmodel.c: the generated tiny model opens through the loader with every manifest tensor in F16 at
 * its shape; bytes are deterministic (same seed, any thread count) and seed-dependent; values follow the
 * documented formula and have the intended mean/std; the full-size plan reproduces the published shard
 * count, layout and the fp32 total_size trap (spec §2); the tokenizer files are written. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cJSON.h>

#include "cmd.h"
#include "common.h"
#include "config.h"
#include "model.h"
#include "safetensors.h"
#include "t.h"
#include "tensor.h"

static char root[256];

static const char *sub(const char *name)
{
    static char b[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(b[k], sizeof b[k], "%s/%s", root, name);
    return b[k];
}

static int mk(const char *out, const char *size, const char *seed, const char *extra1, const char *extra2)
{
    char *argv[12];
    int n = 0;
    argv[n++] = "mkmodel";
    argv[n++] = "--out";
    argv[n++] = (char *)out;
    argv[n++] = "--size";
    argv[n++] = (char *)size;
    if (seed) { argv[n++] = "--seed"; argv[n++] = (char *)seed; }
    if (extra1) argv[n++] = (char *)extra1;
    if (extra2) argv[n++] = (char *)extra2;
    argv[n] = NULL;
    return cmd_mkmodel(n, argv);
}

static int same_file(const char *a, const char *b)
{
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    struct err e;
    int same = !read_file(a, (size_t)1 << 30, &x, &nx, &e) && !read_file(b, (size_t)1 << 30, &y, &ny, &e) &&
               nx == ny && memcmp(x, y, nx) == 0;
    free(x);
    free(y);
    return same;
}

static char tiny_a[512];

static void test_tiny_layout(void)
{
    double t0 = time_now();
    T_EQ_INT(mk(tiny_a, "tiny", "7", "--no-tokenizer", NULL), 0);
    double dt = time_now() - t0;
    fprintf(stderr, "  tiny weights written in %.2f s\n", dt);
    T_ASSERTF(dt < 10, "tiny took %.1f s", dt);
    struct model_config c, want;
    struct err e = {{0}};
    T_EQ_INT(config_load(&c, tiny_a, &e), 0);
    config_default_tiny(&want);
    T_ASSERT(memcmp(&c, &want, sizeof c) == 0);
    struct preprocessor_config pp;
    T_EQ_INT(preprocessor_config_load(&pp, &c, tiny_a, &e), 0);
    T_EQ_INT(pp.image_feature_size, 96);
    struct safetensors *st = NULL;
    T_EQ_INT(safetensors_open_dir(&st, tiny_a, &e), 0);
    if (!st) { fprintf(stderr, "  %s\n", e.msg); return; }
    struct manifest_entry *man = NULL;
    int n = model_manifest(&c, &man, &e);
    T_ASSERT(n > 30);
    T_EQ_INT(safetensors_count(st), n);
    T_EQ_INT(safetensors_shard_count(st), 2);
    T_CONTAINS(safetensors_shard_path(st, 1), "model-00002-of-00002.safetensors");
    int bad = 0;
    uint64_t params = 0;
    for (int i = 0; i < n; i++) {
        const struct safetensors_tensor *t = safetensors_find(st, man[i].name);
        if (!t) { fprintf(stderr, "  missing %s\n", man[i].name); bad++; continue; }
        int ok = t->dtype == DTYPE_F16 && t->ndim == man[i].ndim;
        uint64_t numel = 1;
        for (int d = 0; d < man[i].ndim; d++) {
            ok &= t->shape[d] == man[i].shape[d];
            numel *= (uint64_t)man[i].shape[d];
        }
        ok &= t->nbytes == 2 * numel;
        params += numel;
        if (!ok) { fprintf(stderr, "  wrong dtype/shape: %s\n", man[i].name); bad++; }
    }
    T_EQ_INT(bad, 0);
    T_EQ_INT(model_check_checkpoint(&c, st, &e), 0);
    /* index: fp32 accounting, like the published file */
    char *text = NULL;
    T_EQ_INT(read_file(sub("a/model.safetensors.index.json"), 1 << 20, &text, NULL, &e), 0);
    cJSON *j = cJSON_Parse(text);
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "metadata"), "total_size");
    T_ASSERT(cJSON_IsNumber(ts) && ts->valuedouble == 4.0 * (double)params);
    T_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "weight_map")), n);
    cJSON_Delete(j);
    free(text);
    /* generation_config.json per spec §1.2 */
    T_EQ_INT(read_file(sub("a/generation_config.json"), 1 << 20, &text, NULL, &e), 0);
    j = cJSON_Parse(text);
    T_EQ_INT(cJSON_GetObjectItemCaseSensitive(j, "bos_token_id")->valueint, 128000);
    T_EQ_INT(cJSON_GetObjectItemCaseSensitive(j, "eos_token_id")->valueint, 128001);
    cJSON_Delete(j);
    free(text);
    free(man);
    safetensors_close(st);
}

static void test_determinism(void)
{
    const char *b = sub("b"), *c = sub("c"), *d = sub("d");
    T_EQ_INT(mk(b, "tiny", "7", "--no-tokenizer", NULL), 0);
    T_EQ_INT(mk(c, "tiny", "8", "--no-tokenizer", NULL), 0);
    int nt = omp_get_max_threads();
    omp_set_num_threads(nt > 1 ? 1 : 3); /* a different thread count must give the same bytes */
    T_EQ_INT(mk(d, "tiny", "7", "--no-tokenizer", NULL), 0);
    omp_set_num_threads(nt);
    static const char *files[] = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                  "model.safetensors.index.json", "config.json"};
    for (int i = 0; i < 4; i++) {
        char pa[600], pb[600], pd[600];
        snprintf(pa, sizeof pa, "%s/%s", tiny_a, files[i]);
        snprintf(pb, sizeof pb, "%s/%s", b, files[i]);
        snprintf(pd, sizeof pd, "%s/%s", d, files[i]);
        T_ASSERTF(same_file(pa, pb), "%s differs between two runs with seed 7", files[i]);
        T_ASSERTF(same_file(pa, pd), "%s differs with another thread count", files[i]);
    }
    for (int i = 0; i < 2; i++) {
        char pa[600], pc[600];
        snprintf(pa, sizeof pa, "%s/%s", tiny_a, files[i]);
        snprintf(pc, sizeof pc, "%s/%s", c, files[i]);
        T_ASSERTF(!same_file(pa, pc), "%s is the same for seeds 7 and 8", files[i]);
    }
}

/* The documented generator (docs/CHECKPOINT.md), written out again independently. */
static uint64_t ref_mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static uint16_t ref_value(uint64_t seed, int i, int64_t j, float mean, float std)
{
    const uint64_t g = 0x9E3779B97F4A7C15ULL;
    uint64_t key = ref_mix(seed ^ ref_mix((uint64_t)i + g));
    uint64_t k = ref_mix(key + (uint64_t)j * g) >> 40;
    float a = (float)((double)std * 1.7320508075688772);
    double v = (double)mean + (double)a * (((double)k - 8388607.5) / 8388608.0);
    return f32_to_f16((float)v);
}

static void test_values(void)
{
    struct model_config c;
    config_default_tiny(&c);
    struct manifest_entry *man = NULL;
    struct err e = {{0}};
    int n = model_manifest(&c, &man, &e);
    struct safetensors *st = NULL;
    T_EQ_INT(safetensors_open_dir(&st, tiny_a, &e), 0);
    if (!st || n <= 0) { free(man); return; }
    int checked = 0, formula_bad = 0;
    for (int i = 0; i < n; i++) {
        const struct safetensors_tensor *t = safetensors_find(st, man[i].name);
        if (!t) continue;
        const uint16_t *h = t->data;
        const int64_t numel = (int64_t)t->nbytes / 2;
        for (int64_t j = 0; j < numel; j += 1 + numel / 7)
            formula_bad += h[j] != ref_value(7, i, j, man[i].init_mean, man[i].init_std);
        if (numel < 4096) continue;
        double s = 0, s2 = 0, lo = 1e30, hi = -1e30;
        for (int64_t j = 0; j < numel; j++) {
            double x = f16_to_f32(h[j]);
            s += x;
            s2 += x * x;
            lo = x < lo ? x : lo;
            hi = x > hi ? x : hi;
        }
        double mean = s / (double)numel, sd = sqrt(s2 / (double)numel - mean * mean);
        double m = man[i].init_mean, sdw = man[i].init_std, half = sdw * sqrt(3.0);
        double tol_ulp = (fabs(m) + half) * 1e-3; /* fp16 rounding */
        T_ASSERTF(fabs(mean - m) < 5 * sdw / sqrt((double)numel) + tol_ulp, "%s mean %g want %g", man[i].name, mean, m);
        T_ASSERTF(fabs(sd / sdw - 1) < 0.03, "%s std %g want %g", man[i].name, sd, sdw);
        T_ASSERTF(lo >= m - half - tol_ulp && hi <= m + half + tol_ulp, "%s range [%g, %g]", man[i].name, lo, hi);
        T_ASSERTF(lo < m - 0.9 * half && hi > m + 0.9 * half, "%s range [%g, %g] too narrow", man[i].name, lo, hi);
        checked++;
    }
    T_ASSERT(checked >= 10);
    T_EQ_INT(formula_bad, 0);
    free(man);
    safetensors_close(st);
}

static const char *wm_file(const cJSON *wm, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(wm, name);
    return cJSON_IsString(v) ? v->valuestring : "(absent)";
}

static void test_full_plan(void)
{
    const char *f = sub("full");
    T_EQ_INT(mk(f, "full", NULL, "--plan-only", NULL), 0);
    char *text = NULL;
    struct err e = {{0}};
    char p[600];
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", f);
    T_EQ_INT(read_file(p, 1 << 20, &text, NULL, &e), 0);
    cJSON *j = cJSON_Parse(text);
    free(text);
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "metadata"), "total_size");
    /* spec §2: 741 tensors, 8,537,092,336 parameters, index total_size 34,148,369,344 (4 bytes each) */
    T_ASSERT(cJSON_IsNumber(ts) && ts->valuedouble == 34148369344.0);
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(j, "weight_map");
    T_EQ_INT(cJSON_GetArraySize(wm), 741);
    int bad = 0;
    for (const cJSON *it = wm ? wm->child : NULL; it; it = it->next)
        bad += strncmp(it->valuestring, "model-0000", 10) || !strstr(it->valuestring, "-of-00007.safetensors");
    T_EQ_INT(bad, 0);
    /* the published layout: shard 1 = embed + layers 0..3 (3 split), shard 7 = rest of 31, norm, head, vpm, resampler */
    T_EQ_STR(wm_file(wm, "llm.model.embed_tokens.weight"), "model-00001-of-00007.safetensors");
    T_EQ_STR(wm_file(wm, "llm.model.layers.3.input_layernorm.weight"), "model-00001-of-00007.safetensors");
    T_EQ_STR(wm_file(wm, "llm.model.layers.3.mlp.down_proj.weight"), "model-00002-of-00007.safetensors");
    T_EQ_STR(wm_file(wm, "llm.model.layers.31.mlp.down_proj.weight"), "model-00007-of-00007.safetensors");
    T_EQ_STR(wm_file(wm, "llm.model.norm.weight"), "model-00007-of-00007.safetensors");
    T_EQ_STR(wm_file(wm, "llm.lm_head.weight"), "model-00007-of-00007.safetensors");
    T_EQ_STR(wm_file(wm, "vpm.encoder.layers.26.mlp.fc2.bias"), "model-00007-of-00007.safetensors");
    T_EQ_STR(wm_file(wm, "resampler.proj"), "model-00007-of-00007.safetensors");
    cJSON_Delete(j);
    snprintf(p, sizeof p, "%s/model-00001-of-00007.safetensors", f);
    T_ASSERT(access(p, F_OK) != 0); /* plan only: no weights */
    struct model_config c, want;
    T_EQ_INT(config_load(&c, f, &e), 0);
    config_default_full(&want);
    T_ASSERT(memcmp(&c, &want, sizeof c) == 0);
    T_EQ_INT(c.hidden_size, 4096);
    T_EQ_INT(c.vision_layers_used, 27);
}

static void test_tokenizer_files(void)
{
    const char *tok = ".cache/tokenizer-llama3/tokenizer.json";
    if (access(tok, R_OK) != 0 && system("bash tools/fetch_tokenizer.sh >/dev/null 2>&1") != 0) {
        T_SKIP(test_tokenizer_files, "no .cache/tokenizer-llama3/tokenizer.json and tools/fetch_tokenizer.sh failed");
        return;
    }
    const char *t = sub("tok");
    T_EQ_INT(mk(t, "tiny", "1", NULL, NULL), 0);
    static const char *files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json",
                                  "generation_config.json", "preprocessor_config.json",
                                  "model.safetensors.index.json", "model-00001-of-00002.safetensors"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char p[600];
        snprintf(p, sizeof p, "%s/%s", t, files[i]);
        T_ASSERTF(access(p, R_OK) == 0, "%s missing", p);
    }
    /* a missing Meta tokenizer.json fails before anything is written */
    const char *bad = sub("badtok");
    T_EQ_INT(mk(bad, "tiny", "1", "--tokenizer", "/nonexistent/tokenizer.json"), 1);
    T_ASSERT(access(bad, F_OK) != 0);
}

static void test_bad_args(void)
{
    char *a1[] = {"mkmodel", "--size", "tiny", NULL};
    T_EQ_INT(cmd_mkmodel(3, a1), 2);
    T_EQ_INT(mk(sub("x"), "huge", NULL, NULL, NULL), 2);
    T_EQ_INT(mk(sub("x"), "tiny", "-3", NULL, NULL), 2);
    T_EQ_INT(mk(sub("x"), "tiny", "abc", NULL, NULL), 2);
    T_EQ_INT(mk(sub("x"), "tiny", "1", "--bogus", NULL), 2);
    T_ASSERT(access(sub("x"), F_OK) != 0);
}

/* --stats realistic --massive 4: the per-tensor scales of docs/TESTING.md "Realistic statistics"
 * (written here from that table, not read from the generator), measured over whole tensors. */
static int64_t moments_n; /* element count of the last tensor_moments (sampling error: 1/sqrt(n)) */
static void tensor_moments(const struct safetensors *st, const char *name, double *mean, double *std)
{
    struct tensor t;
    struct err e = {{0}};
    *mean = *std = NAN;
    T_ASSERTF(safetensors_get(st, name, &t, &e) == 0, "%s", e.msg);
    if (!t.data) return;
    double s = 0, ss = 0;
    const int64_t n = tensor_numel(&t);
    for (int64_t i = 0; i < n; i++) {
        double x = f16_to_f32(((const uint16_t *)t.data)[i]);
        s += x, ss += x * x;
    }
    *mean = s / n;
    *std = sqrt(fmax(ss / n - *mean * *mean, 0));
    moments_n = n;
}

static void test_realistic_stats(void)
{
    char dir[] = "/tmp/test_mkmodel_real_XXXXXX";
    T_ASSERT(mkdtemp(dir) != NULL);
    char *argv[] = {"mkmodel", "--out", dir, "--size", "tiny", "--seed", "3", "--stats", "realistic", "--massive",
                    "4", "--no-tokenizer", NULL};
    T_EQ_INT(cmd_mkmodel(12, argv), 0);
    struct safetensors *st = NULL;
    struct err e = {{0}};
    T_ASSERTF(safetensors_open_dir(&st, dir, &e) == 0, "%s", e.msg);
    if (!st) return;
    struct model_config c;
    config_default_tiny(&c);
    const double L = c.num_hidden_layers, Lv = c.vision_config.num_hidden_layers;
    static const struct { const char *name; double mean, std; } want[] = {
        {"llm.model.layers.0.self_attn.q_proj.weight", 0, 0.02},
        {"llm.model.layers.1.mlp.up_proj.weight", 0, 0.02},
        {"llm.model.layers.0.input_layernorm.weight", 1, 0.02},
        {"llm.model.norm.weight", 1, 0.02},
        {"llm.lm_head.weight", 0, 0.02},
        {"vpm.encoder.layers.0.self_attn.q_proj.bias", 0, 0.002},
        {"vpm.post_layernorm.weight", 1, 0.02},
        {"resampler.query", 0, 0.02},
    };
    double m, sd;
    for (int i = 0; i < (int)(sizeof want / sizeof want[0]); i++) {
        tensor_moments(st, want[i].name, &m, &sd);
        /* 4 standard errors of the sample mean and std of n uniform values, at least 3 % */
        const double n = (double)moments_n;
        T_ASSERTF(fabs(m - want[i].mean) <= fmax(4 / sqrt(n), 0.03) * want[i].std &&
                      fabs(sd / want[i].std - 1) <= fmax(4 / sqrt(2 * n), 0.03),
                  "%s: mean %.4g std %.4g, want %.4g, %.4g", want[i].name, m, sd, want[i].mean, want[i].std);
    }
    /* residual-stream projections: 0.02 / sqrt(2 L) (GPT-2's scaled init) */
    tensor_moments(st, "llm.model.layers.0.self_attn.o_proj.weight", &m, &sd);
    T_ASSERTF(fabs(sd / (0.02 / sqrt(2 * L)) - 1) <= 0.03, "o_proj std %.4g", sd);
    tensor_moments(st, "vpm.encoder.layers.0.mlp.fc2.weight", &m, &sd);
    T_ASSERTF(fabs(sd / (0.02 / sqrt(2 * Lv)) - 1) <= 0.03, "fc2 std %.4g", sd);
    /* the embedding: std 0.01 apart from exactly 4 columns equal to 1.0 in every row */
    struct tensor emb;
    T_ASSERT(safetensors_get(st, "llm.model.embed_tokens.weight", &emb, &e) == 0);
    if (emb.data) {
        const int64_t V = emb.shape[0], d = emb.shape[1];
        int massive = 0;
        double ss = 0;
        int64_t nn = 0;
        for (int64_t j = 0; j < d; j++) {
            int all = 1;
            for (int64_t r = 0; r < V && all; r += 997) all = f16_to_f32(((const uint16_t *)emb.data)[r * d + j]) == 1.0f;
            all = all && f16_to_f32(((const uint16_t *)emb.data)[(V - 1) * d + j]) == 1.0f;
            massive += all;
            if (!all)
                for (int64_t r = 0; r < V; r += 101, nn++) {
                    double x = f16_to_f32(((const uint16_t *)emb.data)[r * d + j]);
                    ss += x * x;
                }
        }
        T_EQ_INT(massive, 4);
        T_ASSERTF(fabs(sqrt(ss / nn) / 0.01 - 1) <= 0.03, "embedding std %.4g, want 0.01", sqrt(ss / nn));
    }
    safetensors_close(st);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    T_EQ_INT(system(cmd), 0);
    /* bad values are refused by name */
    char *bad[] = {"mkmodel", "--out", dir, "--stats", "trained", NULL};
    T_EQ_INT(cmd_mkmodel(5, bad), 2);
}

int main(void)
{
    log_level = 0;
    snprintf(root, sizeof root, "/tmp/test_mkmodel.XXXXXX");
    if (!mkdtemp(root)) { perror("mkdtemp"); return 2; }
    snprintf(tiny_a, sizeof tiny_a, "%s/a", root);
    if (!cmd_mkmodel) { fprintf(stderr, "cmd_mkmodel is not linked\n"); return 2; }
    T_RUN(test_tiny_layout);
    T_RUN(test_determinism);
    T_RUN(test_values);
    T_RUN(test_full_plan);
    T_RUN(test_tokenizer_files);
    T_RUN(test_bad_args);
    T_RUN(test_realistic_stats);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", root);
    return t_main_end("test_mkmodel");
}
