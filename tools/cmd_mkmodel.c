/* cmd_mkmodel.c: `minicpmv mkmodel --out DIR --size tiny|full [--seed N] [--tokenizer PATH] [--stats realistic]
 * [--massive K] [--quant nf4]` writes a complete
 * HF-layout model folder with random weights: config.json, generation_config.json, preprocessor_config.json,
 * the tokenizer files, fp16 shards model-0000K-of-0000N.safetensors and model.safetensors.index.json.
 * Owns: the shard plan and the value generator. Does not own: tensor names/shapes (model_manifest), file
 * formats (safetensors.c, config.c), the tokenizer files (tokenizer_write_minicpmv_files).
 * Determinism: element j of manifest tensor i is a pure function of (seed, i, j) (splitmix64 counter hash,
 * then integer and exactly-rounded float/double arithmetic, no libm), so the bytes are the same on any
 * machine and with any thread count. Memory: one chunk buffer; the 17 GB full model is streamed. */
#include <errno.h>
#include <math.h> /* sqrt only: correctly rounded, so still the same bits everywhere */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <dirent.h>
#include <limits.h>

#include <cJSON.h>

#include "cmd.h"
#include "progress.h"
#include "common.h"
#include "config.h"
#include "model.h"
#include "quant.h"
#include "safetensors.h"
#include "tensor.h"
#include "tokenizer.h"

/* Weak, so this command links (and can write weights-only folders) while the tokenizer is absent. */
#pragma weak tokenizer_write_minicpmv_files

#define MK_CHUNK ((int64_t)1 << 22) /* elements generated per parallel step (8 MiB of fp16) */
#define MK_BLOCK 4096               /* elements per OpenMP work item */
#define MK_DEFAULT_TOKENIZER ".cache/tokenizer-llama3/tokenizer.json" /* where tools/fetch_tokenizer.sh puts it */
#define MK_TOKENIZER_ENV "MINICPMV_TOKENIZER"

struct mk_opts {
    const char *out;
    bool full;
    uint64_t seed;
    const char *tokenizer;
    bool no_tokenizer;  /* configs + weights only */
    bool plan_only;     /* configs + index only: no shards, no tokenizer (for checking the plan cheaply) */
    int shards;         /* 0 = the size's default (tiny 2, full 7 as published) */
    bool force;         /* write into a folder that already has files */
    bool quiet;         /* no progress line */
    char tok_buf[PATH_MAX];
    bool realistic;     /* --stats realistic: per-tensor scales of a trained Llama-3 / SigLIP (docs/TESTING.md) */
    int massive;        /* --massive K: K hidden channels of the embedding set to MK_MASSIVE_VALUE */
    bool nf4;           /* --quant nf4: the fp16 folder, then quantize_folder() into the official int4 layout */
};

/* ---------------------------------------------------------------- finding the tokenizer */

/* Without --tokenizer: $MINICPMV_TOKENIZER, then .cache/tokenizer-llama3/tokenizer.json under the
 * current folder, then under the folders above the binary (build/minicpmv and build/tests/test_x
 * both find the repository's .cache), so mkmodel works from any folder. */
static int find_tokenizer(struct mk_opts *o, struct err *e)
{
    if (o->tokenizer) return 0;
    const char *env = getenv(MK_TOKENIZER_ENV);
    if (env && *env) {
        if (access(env, R_OK) != 0)
            return err_set(e, "%s=%s: %s", MK_TOKENIZER_ENV, env, strerror(errno));
        o->tokenizer = env;
        return 0;
    }
    if (access(MK_DEFAULT_TOKENIZER, R_OK) == 0) {
        o->tokenizer = MK_DEFAULT_TOKENIZER;
        return 0;
    }
    char exe[PATH_MAX], tried[3 * PATH_MAX];
    int k = snprintf(tried, sizeof tried, "./%s", MK_DEFAULT_TOKENIZER);
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        for (int up = 0; up < 3; up++) {
            char *slash = strrchr(exe, '/');
            if (!slash) break;
            *slash = 0; /* exe is now the folder (the binary's, then its parents) */
            snprintf(o->tok_buf, sizeof o->tok_buf, "%s/%s", exe, MK_DEFAULT_TOKENIZER);
            if (access(o->tok_buf, R_OK) == 0) {
                o->tokenizer = o->tok_buf;
                return 0;
            }
            if (k > 0 && (size_t)k < sizeof tried) k += snprintf(tried + k, sizeof tried - (size_t)k, ", %s", o->tok_buf);
        }
    }
    return err_set(e, "Meta's Llama-3 tokenizer.json not found (%s unset; looked for %s). Fix: run "
                   "tools/fetch_tokenizer.sh in the minicpmv repository, then pass --tokenizer "
                   "REPO/%s or set %s to it (or --no-tokenizer for weights only)",
                   MK_TOKENIZER_ENV, tried, MK_DEFAULT_TOKENIZER, MK_TOKENIZER_ENV);
}

/* 1 when dir exists and holds anything, 0 when it is missing or empty; -1 (message in e) when it
 * is not a folder or cannot be read */
static int dir_has_files(const char *dir, struct err *e)
{
    struct stat sb;
    if (stat(dir, &sb) != 0) return errno == ENOENT ? 0 : err_set(e, "%s: %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode)) return err_set(e, "%s exists and is not a folder", dir);
    DIR *d = opendir(dir);
    if (!d) return err_set(e, "%s: %s", dir, strerror(errno));
    int any = 0;
    for (struct dirent *de; !any && (de = readdir(d));) any = strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
    closedir(d);
    return any;
}


/* ---------------------------------------------------------------- realistic statistics
 * The default generator (model_manifest's init_mean/init_std) keeps activations near 1, which is what
 * the committed fixtures were made with. --stats realistic rescales every tensor like the published
 * model family (figures and sources in docs/TESTING.md, "Realistic statistics"):
 *   linear weights std 0.02 (Llama-3 and SigLIP configs: initializer_range 0.02), the projections into
 *   the residual stream (o_proj, down_proj, out_proj, fc2) 0.02/sqrt(2 L) (GPT-2's scaled residual init);
 *   norm weights 1 + noise of std 0.02; biases std 0.002; the LLM embedding std 0.01 per element (hidden
 *   states of RMS ~1e-2 after the lookup: mean(x^2) = 1e-4, ten times rms_norm_eps, and fp16 values in
 *   the range where their spacing is 2^-17..2^-14); the resampler query std 0.02 (resampler.py:
 *   trunc_normal_(std=.02)). --massive K adds K "massive activation" channels (Sun et al. 2024): those
 *   embedding columns are MK_MASSIVE_VALUE, ~100x the element std and ~1000x the median |x|. */
#define MK_MASSIVE_VALUE 1.0f

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

static void realistic_stats(struct manifest_entry *man, int n, const struct model_config *c)
{
    const float resid = (float)(0.02 / sqrt(2.0 * c->num_hidden_layers));
    const float vresid = (float)(0.02 / sqrt(2.0 * c->vision_config.num_hidden_layers));
    for (int i = 0; i < n; i++) {
        const char *nm = man[i].name;
        float mean = 0, std = 0.02f;
        if (strstr(nm, "norm") && ends_with(nm, ".weight")) mean = 1, std = 0.02f; /* RMSNorm / LayerNorm gains */
        else if (ends_with(nm, "bias")) std = 0.002f;
        else if (!strcmp(nm, "llm.model.embed_tokens.weight")) std = 0.01f;
        else if (strstr(nm, "o_proj") || strstr(nm, "down_proj")) std = resid;
        else if (strstr(nm, "vpm.") && (strstr(nm, "out_proj") || strstr(nm, "fc2"))) std = vresid;
        man[i].init_mean = mean;
        man[i].init_std = std;
    }
}

/* The K massive channels: spread over the hidden size, a pure function of (K, d). */
static int massive_channel(int k, int d) { return (int)(((int64_t)k * 2654435761u + 17) % (uint64_t)d); }

/* ---------------------------------------------------------------- values */

static inline uint64_t mix64(uint64_t z) /* splitmix64's finalizer */
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static inline uint64_t tensor_key(uint64_t seed, int index)
{
    return mix64(seed ^ mix64((uint64_t)index + 0x9E3779B97F4A7C15ULL));
}

/* mean + a*u with u uniform on a symmetric 2^24-point lattice in (-1, 1), a = std*sqrt(3) (so the noise has
 * standard deviation std). a has 24 significant bits and u 25, so a*u is exact in double and the only
 * rounding is the final add: an FMA or a plain multiply-add give the same bits, on every machine. */
static inline float gen_value(uint64_t key, int64_t j, double mean, double a)
{
    uint64_t k = mix64(key + (uint64_t)j * 0x9E3779B97F4A7C15ULL) >> 40;
    double u = ((double)k - 8388607.5) * (1.0 / 8388608.0);
    return (float)(mean + a * u);
}

/* Elements [off, off+m) of one tensor as fp16. convert_from_f32 is tensor.h's bulk f32_to_f16 (F16C when
 * present, bit-identical to the scalar routine; test_common checks that exhaustively), 20x faster here. */
static void gen_block(uint16_t *dst, uint64_t key, int64_t off, int64_t m, double mean, double a)
{
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < m; b += MK_BLOCK) {
        float tmp[MK_BLOCK];
        const int64_t n = m - b < MK_BLOCK ? m - b : MK_BLOCK;
        for (int64_t j = 0; j < n; j++) tmp[j] = gen_value(key, off + b + j, mean, a);
        convert_from_f32(dst + b, DTYPE_F16, tmp, n);
    }
}

static double noise_amplitude(float std)
{
    return (double)(float)((double)std * 1.7320508075688772); /* rounded to float: 24 significant bits */
}

/* ---------------------------------------------------------------- small file helpers */

static int mkdir_p(const char *dir, struct err *e)
{
    char p[4096];
    if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p) return err_set(e, "path too long: %s", dir);
    for (char *s = p + 1; ; s++) {
        if (*s != '/' && *s) continue;
        char c = *s;
        *s = 0;
        if (mkdir(p, 0777) != 0 && errno != EEXIST)
            return err_set(e, "%s: cannot create directory: %s", p, strerror(errno));
        *s = c;
        if (!c) break;
    }
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) return err_set(e, "%s: not a directory", dir);
    return 0;
}

static int write_text(const char *dir, const char *name, const char *text, struct err *e)
{
    char path[4096];
    if (!text) return err_set(e, "out of memory writing %s", name);
    if (path_join(path, sizeof path, dir, name, e)) return -1;
    FILE *f = fopen(path, "wb");
    if (!f) return err_set(e, "%s: cannot create: %s", path, strerror(errno));
    size_t n = strlen(text);
    int bad = fwrite(text, 1, n, f) != n || fputc('\n', f) == EOF;
    if (fclose(f) != 0 || bad) return err_set(e, "%s: write failed", path);
    return 0;
}

static int write_json(const char *dir, const char *name, cJSON *j, struct err *e)
{
    char *s = j ? cJSON_Print(j) : NULL;
    int rc = write_text(dir, name, s, e);
    free(s);
    cJSON_Delete(j);
    return rc;
}

static cJSON *generation_config_json(const struct model_config *c) /* spec §1.2 */
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "bos_token_id", c->bos_token_id);
    cJSON_AddNumberToObject(j, "eos_token_id", c->eos_token_id);
    cJSON_AddStringToObject(j, "transformers_version", "4.40.0");
    return j;
}

static cJSON *preprocessor_config_json(const struct model_config *c) /* spec §1.3 */
{
    static const float half[3] = {0.5f, 0.5f, 0.5f};
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "image_processor_type", "MiniCPMVImageProcessor");
    cJSON_AddNumberToObject(j, "max_slice_nums", c->slice_config.max_slice_nums);
    cJSON_AddNumberToObject(j, "scale_resolution", c->slice_config.scale_resolution);
    cJSON_AddNumberToObject(j, "patch_size", c->slice_config.patch_size);
    cJSON_AddNumberToObject(j, "image_feature_size", c->query_num);
    cJSON_AddStringToObject(j, "im_start", "<image>");
    cJSON_AddStringToObject(j, "im_end", "</image>");
    cJSON_AddStringToObject(j, "slice_start", "<slice>");
    cJSON_AddStringToObject(j, "slice_end", "</slice>");
    cJSON_AddStringToObject(j, "unk", "<unk>");
    cJSON_AddItemToObject(j, "norm_mean", cJSON_CreateFloatArray(half, 3));
    cJSON_AddItemToObject(j, "norm_std", cJSON_CreateFloatArray(half, 3));
    cJSON_AddRawToObject(j, "version", "2.5");
    return j;
}

/* ---------------------------------------------------------------- weights */

static void shard_name(char *buf, size_t n, int k, int of)
{
    snprintf(buf, n, "model-%05d-of-%05d.safetensors", k + 1, of);
}

/* Tensor i goes to the shard where its first byte falls when the total is cut into ns equal parts, as
 * transformers' size-capped sharding roughly does; empty shards are squeezed out. Returns the count. */
static int plan_shards(const struct manifest_entry *man, int n, int ns, int *shard_of, uint64_t *total_bytes)
{
    uint64_t total = 0, at = 0;
    for (int i = 0; i < n; i++) {
        uint64_t numel = 1;
        for (int d = 0; d < man[i].ndim; d++) numel *= (uint64_t)man[i].shape[d];
        total += 2 * numel;
    }
    int last = -1, k = -1;
    for (int i = 0; i < n; i++) {
        uint64_t numel = 1;
        for (int d = 0; d < man[i].ndim; d++) numel *= (uint64_t)man[i].shape[d];
        int s = (int)((unsigned __int128)at * (unsigned)ns / (total ? total : 1));
        if (s > ns - 1) s = ns - 1;
        if (s != last) { k++; last = s; }
        shard_of[i] = k;
        at += 2 * numel;
    }
    *total_bytes = total;
    return k + 1;
}

static int write_shard(const struct mk_opts *o, const struct manifest_entry *man, int n, const int *shard_of,
                       int k, int ns, uint16_t *buf, uint64_t *done, uint64_t total, const struct progress *pr,
                       struct err *e)
{
    char name[64], path[4096];
    shard_name(name, sizeof name, k, ns);
    if (path_join(path, sizeof path, o->out, name, e)) return -1;
    struct safetensors_spec *specs = calloc((size_t)n, sizeof *specs);
    if (!specs) return err_set(e, "out of memory");
    int cnt = 0;
    for (int i = 0; i < n; i++) {
        if (shard_of[i] != k) continue;
        specs[cnt] = (struct safetensors_spec){.name = man[i].name, .dtype = DTYPE_F16, .ndim = man[i].ndim};
        memcpy(specs[cnt].shape, man[i].shape, sizeof specs[cnt].shape);
        cnt++;
    }
    struct safetensors_writer *w;
    int rc = safetensors_writer_begin(&w, path, specs, cnt, NULL, e);
    free(specs);
    if (rc) return -1;
    for (int i = 0; i < n; i++) {
        if (shard_of[i] != k) continue;
        int64_t numel = 1;
        for (int d = 0; d < man[i].ndim; d++) numel *= man[i].shape[d];
        const uint64_t key = tensor_key(o->seed, i);
        const double mean = (double)man[i].init_mean, a = noise_amplitude(man[i].init_std);
        for (int64_t off = 0; off < numel; off += MK_CHUNK) {
            const int64_t m = numel - off < MK_CHUNK ? numel - off : MK_CHUNK;
            gen_block(buf, key, off, m, mean, a);
            if (o->massive && !strcmp(man[i].name, "llm.model.embed_tokens.weight")) {
                const int64_t d = man[i].shape[1];
                const uint16_t big = f32_to_f16(MK_MASSIVE_VALUE);
                for (int q = 0; q < o->massive; q++) {
                    const int64_t ch = massive_channel(q, (int)d);
                    for (int64_t r = (off + d - 1 - ch) / d; r * d + ch < off + m; r++)
                        if (r * d + ch >= off) buf[r * d + ch - off] = big;
                }
            }
            if (safetensors_writer_write(w, buf, (size_t)m * 2, e)) {
                safetensors_writer_abort(w);
                return -1;
            }
            *done += (uint64_t)m * 2;
            if (pr->fn) pr->fn(pr->ctx, "mkmodel: writing", *done, total);
        }
    }
    return safetensors_writer_close(w, e);
}

static int mk_run(const struct mk_opts *o, struct err *e)
{
    double t0 = time_now();
    struct model_config c;
    if (o->full) config_default_full(&c);
    else config_default_tiny(&c);
    struct manifest_entry *man = NULL;
    int *shard_of = NULL;
    uint16_t *buf = NULL;
    const char **names = NULL, **files = NULL;
    char (*fnames)[64] = NULL;
    int rc = -1;
    int n = model_manifest(&c, &man, e);
    if (n < 0) return -1;
    int has = dir_has_files(o->out, e);
    if (has < 0) goto out;
    if (has && !o->force) {
        err_set(e, "%s already has files; pass --force to write over them, or choose another --out", o->out);
        goto out;
    }
    if (o->realistic) realistic_stats(man, n, &c);
    if (o->massive > c.hidden_size) {
        err_set(e, "--massive %d: more channels than hidden_size %d", o->massive, c.hidden_size);
        goto out;
    }
    if (!o->no_tokenizer && !o->plan_only && access(o->tokenizer, R_OK) != 0) {
        err_set(e, "%s: Meta's Llama-3 tokenizer.json is missing (%s); run tools/fetch_tokenizer.sh or pass "
                "--tokenizer PATH", o->tokenizer, strerror(errno));
        goto out;
    }
    if (mkdir_p(o->out, e)) goto out;
    char *cj = config_to_json(&c);
    int wr = write_text(o->out, "config.json", cj, e);
    free(cj);
    if (wr || write_json(o->out, "generation_config.json", generation_config_json(&c), e) ||
        write_json(o->out, "preprocessor_config.json", preprocessor_config_json(&c), e))
        goto out;
    if (!o->no_tokenizer && !o->plan_only) {
        if (!tokenizer_write_minicpmv_files) {
            err_set(e, "this build has no tokenizer_write_minicpmv_files (src/tokenizer.c); use --no-tokenizer");
            goto out;
        }
        if (tokenizer_write_minicpmv_files(o->tokenizer, o->out, e)) goto out;
    }
    shard_of = calloc((size_t)n, sizeof *shard_of);
    names = calloc((size_t)n, sizeof *names);
    files = calloc((size_t)n, sizeof *files);
    int want = o->shards ? o->shards : (o->full ? 7 : 2);
    fnames = calloc((size_t)want, sizeof *fnames);
    buf = malloc((size_t)MK_CHUNK * sizeof *buf);
    if (!shard_of || !names || !files || !fnames || !buf) {
        err_set(e, "out of memory");
        goto out;
    }
    uint64_t total = 0, done = 0;
    int ns = plan_shards(man, n, want, shard_of, &total);
    for (int k = 0; k < ns; k++) shard_name(fnames[k], sizeof fnames[k], k, ns);
    for (int i = 0; i < n; i++) {
        names[i] = man[i].name;
        files[i] = fnames[shard_of[i]];
    }
    if (!o->plan_only) {
        struct progress_term pt;
        struct progress pr = progress_term_init(&pt, o->quiet || log_level < 1);
        for (int k = 0; k < ns; k++)
            if (write_shard(o, man, n, shard_of, k, ns, buf, &done, total, &pr, e)) {
                progress_term_end(&pt);
                goto out;
            }
        progress_term_end(&pt);
    }
    /* The published index claims 4 bytes per parameter although the shards are fp16 (spec §2): the
     * generated index reproduces that trap so the loader is tested against it. */
    if (safetensors_write_index(o->out, names, files, n, (int64_t)(total / 2 * 4), e)) goto out;
    if (log_level >= 1)
        fprintf(stderr, "minicpmv mkmodel: %s: %d tensors, %llu parameters, %d shard%s%s, %.2f s\n", o->out, n,
                (unsigned long long)(total / 2), ns, ns == 1 ? "" : "s", o->plan_only ? " (plan only)" : "",
                time_now() - t0);
    rc = 0;
out:
    free(man);
    free(shard_of);
    free(names);
    free(files);
    free(fnames);
    free(buf);
    return rc;
}

static void mk_usage(void)
{
    fprintf(stderr,
            "usage: minicpmv mkmodel --out DIR [--size tiny|full] [--seed N] [--tokenizer PATH]\n"
            "  --out DIR          folder to write (created if missing)\n"
            "  --size tiny|full   tiny: CI-sized (~130 MB, 2 shards); full: the published shapes (17 GB, 7 shards)\n"
            "  --seed N           weight seed (default 0); same seed, same bytes on any machine\n"
            "  --tokenizer PATH   Meta's Llama-3 tokenizer.json; default: $" MK_TOKENIZER_ENV ", else\n"
            "                     " MK_DEFAULT_TOKENIZER " under the current folder or above\n"
            "                     the binary (tools/fetch_tokenizer.sh puts it there)\n"
            "  --no-tokenizer     skip the tokenizer files\n"
            "  --force            write into a folder that already has files (overwrites them)\n"
            "  --quiet            no progress line (it shows only on a terminal)\n"
            "  --shards N         override the shard count\n"
            "  --plan-only        write the configs and the index only (no weights)\n"
            "  --stats default|realistic  weight statistics: default (activations near 1; the committed fixtures)\n"
            "                     or realistic (trained Llama-3 / SigLIP scales, docs/TESTING.md)\n"
            "  --massive K        K embedding channels set to 1.0 (massive activations; 0..hidden_size)\n"
            "  --quant nf4        write the official int4 folder's layout (bitsandbytes NF4, double quant;\n"
            "                     docs/QUANT.md): the same weights, quantized\n");
}

int cmd_mkmodel(int argc, char **argv)
{
    struct mk_opts o = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes = !strcmp(a, "--out") || !strcmp(a, "--size") || !strcmp(a, "--seed") ||
                     !strcmp(a, "--tokenizer") || !strcmp(a, "--shards") || !strcmp(a, "--stats") ||
                     !strcmp(a, "--massive") || !strcmp(a, "--quant");
        if (takes && !v) {
            fprintf(stderr, "minicpmv mkmodel: %s needs a value\n", a);
            return 2;
        }
        char *end = NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            mk_usage();
            return 0;
        } else if (!strcmp(a, "--out")) {
            o.out = v;
        } else if (!strcmp(a, "--size")) {
            if (strcmp(v, "tiny") && strcmp(v, "full")) {
                fprintf(stderr, "minicpmv mkmodel: --size must be tiny or full, not '%s'\n", v);
                return 2;
            }
            o.full = !strcmp(v, "full");
        } else if (!strcmp(a, "--seed")) {
            errno = 0;
            o.seed = strtoull(v, &end, 0);
            if (!*v || *end || errno || *v == '-') {
                fprintf(stderr, "minicpmv mkmodel: --seed '%s' is not a non-negative integer\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--tokenizer")) {
            o.tokenizer = v;
        } else if (!strcmp(a, "--shards")) {
            long s = strtol(v, &end, 10);
            if (!*v || *end || s < 1 || s > 999) {
                fprintf(stderr, "minicpmv mkmodel: --shards '%s' must be 1..999\n", v);
                return 2;
            }
            o.shards = (int)s;
        } else if (!strcmp(a, "--stats")) {
            if (strcmp(v, "default") && strcmp(v, "realistic")) {
                fprintf(stderr, "mkmodel: --stats must be default or realistic, not '%s'\n", v);
                return 2;
            }
            o.realistic = !strcmp(v, "realistic");
        } else if (!strcmp(a, "--massive")) {
            long k = strtol(v, &end, 10);
            if (!*v || *end || k < 0 || k > 65536) {
                fprintf(stderr, "mkmodel: --massive '%s' must be a channel count 0..65536\n", v);
                return 2;
            }
            o.massive = (int)k;
        } else if (!strcmp(a, "--quant")) {
            if (strcmp(v, "nf4")) {
                fprintf(stderr, "minicpmv mkmodel: --quant must be nf4, not '%s' (q8/q4: minicpmv quantize or --quant "
                                "at load)\n", v);
                return 2;
            }
            o.nf4 = true;
        } else if (!strcmp(a, "--no-tokenizer")) {
            o.no_tokenizer = true;
            continue;
        } else if (!strcmp(a, "--plan-only")) {
            o.plan_only = true;
            continue;
        } else if (!strcmp(a, "--force")) {
            o.force = true;
            continue;
        } else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
            o.quiet = true;
            continue;
        } else {
            fprintf(stderr, "minicpmv mkmodel: unknown flag '%s' (see minicpmv mkmodel --help)\n", a);
            mk_usage();
            return 2;
        }
        i++;
    }
    if (!o.out) {
        fprintf(stderr, "minicpmv mkmodel: --out DIR is required\n");
        mk_usage();
        return 2;
    }
    struct err e = {{0}};
    if (!o.no_tokenizer && !o.plan_only && find_tokenizer(&o, &e)) {
        fprintf(stderr, "minicpmv mkmodel: %s\n", e.msg);
        return 1;
    }
    if (!o.nf4) {
        if (mk_run(&o, &e)) {
            fprintf(stderr, "minicpmv mkmodel: %s\n", e.msg);
            return 1;
        }
        return 0;
    }
    /* --quant nf4: the fp16 folder in OUT/.fp16, quantized into OUT, then removed */
    if (o.plan_only || !quantize_folder) {
        fprintf(stderr, "minicpmv mkmodel: --quant nf4 %s\n", o.plan_only ? "writes weights (not with --plan-only)"
                                                                        : "needs tools/cmd_quantize.c in this build");
        return 2;
    }
    int has = dir_has_files(o.out, &e);
    if (has < 0 || (has && !o.force)) {
        fprintf(stderr, "minicpmv mkmodel: %s\n", has < 0 ? e.msg : "--out already has files; pass --force");
        return 1;
    }
    char tmp[PATH_MAX];
    if (path_join(tmp, sizeof tmp, o.out, ".fp16", &e) || mkdir_p(o.out, &e)) {
        fprintf(stderr, "minicpmv mkmodel: %s\n", e.msg);
        return 1;
    }
    struct mk_opts of = o;
    of.out = tmp;
    of.force = true;
    int rc = mk_run(&of, &e);
    if (!rc) {
        const double t0 = time_now();
        rc = quantize_folder(tmp, o.out, DTYPE_NF4, &e);
        if (!rc && log_level >= 1)
            fprintf(stderr, "minicpmv mkmodel: quantized to nf4 in %.2f s (%d threads)\n", time_now() - t0, quant_threads());
    }
    DIR *d = opendir(tmp); /* the temporary fp16 folder holds only files mk_run wrote */
    for (struct dirent *de; d && (de = readdir(d));) {
        char p[PATH_MAX + 256];
        if (de->d_name[0] == '.') continue;
        snprintf(p, sizeof p, "%s/%s", tmp, de->d_name);
        unlink(p);
    }
    if (d) closedir(d);
    rmdir(tmp);
    if (rc) {
        fprintf(stderr, "minicpmv mkmodel: %s\n", e.msg);
        return 1;
    }
    return 0;
}
