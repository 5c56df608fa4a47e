/* cmd_compare.c: `minicpmv compare --model DIR --quant q8|q4|none[,...] [--ref-model RDIR] [--ref-quant ...]
 * [--positions 512]` measures a quantized model's logits against a reference (issue 13's parity item: "on
 * the full-size random model, each format's step-0 logits against fp16 reported (top-1 agreement, KL over
 * 512 positions)"). The same pseudo-random ids (a pure function of --seed, the same on every machine) are fed
 * to the reference engine (RDIR, default DIR, loaded with --ref-quant, default none) one position at a time,
 * and the f32 logits of every position are kept on the host; each candidate (DIR with each --quant in
 * turn; an nf4 folder loads as it is, --quant none) is then fed the same ids, and each position's logits
 * are compared with the reference's: top-1 agreement (the first index of the maximum) and KL(ref || cand)
 * of the softmax distributions, in double. One engine is open at a time, so the reference and a candidate
 * need not fit together. Positions are fed one by one (engine_prefill with one id), which is the decode
 * path (the quantized GEMV), and yields every position's logits without a logits-for-all-rows mode. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "cmd_util.h"
#include "config.h"
#include "devmap.h"

/* KL(p || q) of softmax(ref) and softmax(cand) over v logits, in double; *agree: the argmaxes (first
 * index of the maximum) are equal. */
double compare_kl(const float *ref, const float *cand, int64_t v, int *agree)
{
    int64_t ar = 0, ac = 0;
    for (int64_t i = 1; i < v; i++) {
        if (ref[i] > ref[ar]) ar = i;
        if (cand[i] > cand[ac]) ac = i;
    }
    *agree = ar == ac;
    const double mr = ref[ar], mc = cand[ac];
    double zr = 0, zc = 0;
    for (int64_t i = 0; i < v; i++) {
        zr += exp((double)ref[i] - mr);
        zc += exp((double)cand[i] - mc);
    }
    const double lzr = log(zr) + mr, lzc = log(zc) + mc;
    double kl = 0;
    for (int64_t i = 0; i < v; i++) {
        const double lp = (double)ref[i] - lzr, lq = (double)cand[i] - lzc;
        kl += exp(lp) * (lp - lq);
    }
    return kl > 0 ? kl : 0; /* rounding can leave -1e-17 for equal distributions */
}

/* The ids: splitmix64 of (seed, position) over the first min(vocab, 128000) ids (the ordinary tokens of
 * Llama-3's vocabulary; the special ones above are not what a prompt is made of). */
static void make_ids(int32_t *ids, int64_t n, uint64_t seed, int64_t vocab)
{
    const uint64_t span = (uint64_t)(vocab < 128000 ? vocab : 128000);
    for (int64_t i = 0; i < n; i++) {
        uint64_t z = seed + (uint64_t)(i + 1) * 0x9E3779B97F4A7C15ULL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        ids[i] = (int32_t)((z ^ (z >> 31)) % span);
    }
}

/* Opens DIR with --quant q (0 = none), checks the vocabulary and the context. */
static int open_engine(struct cmdu_engine_opts *eo, const char *dir, int q, int64_t positions, struct engine **g,
                       struct err *e)
{
    eo->o.model_dir = dir;
    eo->dm.params.quant = q;
    if (engine_open(g, &eo->o, e)) return -1; /* its errors name the folder's files */
    if (engine_ctx(*g) < positions) {
        err_set(e, "%s: --positions %lld exceeds the context of %lld tokens (--ctx)", dir, (long long)positions,
                (long long)engine_ctx(*g));
        engine_close(*g);
        *g = NULL;
        return -1;
    }
    return 0;
}

/* The logits of positions [0, n) of ids, row by row; when ref is not NULL, compared with ref's rows
 * instead of stored (out may be NULL then). */
static int run_positions(struct engine *g, const int32_t *ids, int64_t n, int64_t v, float *out, const float *ref,
                         struct compare_result *r, struct err *e)
{
    float *row = malloc((size_t)v * sizeof *row);
    if (!row) return err_set(e, "out of memory");
    engine_truncate(g, 0);
    int rc = 0;
    if (r) *r = (struct compare_result){.positions = n};
    for (int64_t i = 0; i < n && !rc; i++) {
        float *dst = out ? out + i * v : row;
        rc = engine_prefill(g, ids + i, NULL, 1, dst, e) || engine_check_logits(g, dst, "compare", e);
        if (rc || !ref) continue;
        int agree;
        const double kl = compare_kl(ref + i * v, dst, v, &agree);
        r->top1 += agree;
        r->kl_mean += kl / (double)n;
        if (kl > r->kl_max || i == 0) { r->kl_max = kl; r->kl_max_at = i; }
    }
    free(row);
    return rc;
}

int compare_run(struct cmdu_engine_opts *eo, const char *ref_model, int ref_quant, const char *model, const int *quants,
                int n_quants, int64_t positions, uint64_t seed, struct compare_result *res, struct err *e)
{
    struct engine *g = NULL;
    if (open_engine(eo, ref_model, ref_quant, positions, &g, e)) return -1;
    const int64_t v = engine_config(g)->vocab_size;
    int32_t *ids = malloc((size_t)positions * sizeof *ids);
    float *ref = malloc((size_t)(positions * v) * sizeof *ref);
    int rc = -1;
    if (!ids || !ref) { err_set(e, "out of memory (%lld positions of %lld logits)", (long long)positions, (long long)v); goto out; }
    make_ids(ids, positions, seed, v);
    if (run_positions(g, ids, positions, v, ref, NULL, NULL, e)) goto out;
    engine_close(g);
    g = NULL;
    for (int c = 0; c < n_quants; c++) {
        if (open_engine(eo, model, quants[c], positions, &g, e)) goto out;
        if (engine_config(g)->vocab_size != v) {
            err_set(e, "%s: vocab_size %lld, the reference %s has %lld", model, (long long)engine_config(g)->vocab_size,
                    ref_model, (long long)v);
            goto out;
        }
        if (run_positions(g, ids, positions, v, NULL, ref, &res[c], e)) goto out;
        engine_close(g);
        g = NULL;
    }
    rc = 0;
out:
    engine_close(g);
    free(ids);
    free(ref);
    return rc;
}

/* "q8" / "q4" / "none" -> DTYPE_Q8 / DTYPE_Q4 / 0; -1 otherwise */
static int quant_arg(const char *s, size_t n)
{
    if (n == 2 && !strncmp(s, "q8", 2)) return DTYPE_Q8;
    if (n == 2 && !strncmp(s, "q4", 2)) return DTYPE_Q4;
    if (n == 4 && !strncmp(s, "none", 4)) return 0;
    return -1;
}

/* What an engine of DIR with --quant q holds, for the report */
static const char *label(const char *dir, int q, char *buf, size_t n)
{
    struct model_config c;
    struct err e = {{0}};
    if (q) snprintf(buf, n, "%s", q == DTYPE_Q8 ? "q8" : "q4");
    else if (config_load(&c, dir, &e)) snprintf(buf, n, "?");
    else if (c.quantization_config.quant_method == QUANT_METHOD_BNB) snprintf(buf, n, "nf4 folder");
    else if (c.quantization_config.quant_method == QUANT_METHOD_MINICPMV) snprintf(buf, n, "%s folder", c.quantization_config.format);
    else snprintf(buf, n, "fp16");
    return buf;
}

static const char compare_help[] =
    "usage: minicpmv compare --model DIR [--quant q8|q4|none[,...]] [--ref-model RDIR] [--ref-quant none|q8|q4]\n"
    "                        [--positions N] [--seed N] [engine and device flags]\n"
    "Feeds the same N pseudo-random ids to a reference engine (RDIR, default DIR, with --ref-quant, default\n"
    "none) and to DIR with each --quant in turn (default none; an nf4 folder loads as it is), one position at\n"
    "a time, and prints for each: top-1 agreement of the logits over the N positions and KL(ref || quant) of\n"
    "their softmax (mean and max). One engine is loaded at a time (docs/QUANT.md, \"Parity\").\n"
    "  --model DIR          the model to measure\n"
    "  --quant LIST         q8, q4 or none, comma-separated: one line each (default none)\n"
    "  --ref-model RDIR     the reference folder (default DIR; e.g. the fp16 folder of an nf4 DIR)\n"
    "  --ref-quant Q        none (default), q8 or q4\n"
    "  --positions N        positions compared (default 512)\n"
    "  --seed N             the ids' seed (default 0)\n";

int cmd_compare(int argc, char **argv)
{
    struct err e = {{0}};
    struct cmdu_engine_opts eo;
    cmdu_engine_opts_init(&eo);
    const char *ref_model = NULL, *qlist = "none";
    int ref_quant = 0, quants[8], nq = 0;
    long long positions = 512, seed = 0;
    struct compare_result res[8];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("%s%s%s", compare_help, cmdu_engine_help, devmap_opts_help());
            return 0;
        }
        if (!strcmp(a, "--quant") || !strcmp(a, "--ref-quant") || !strcmp(a, "--ref-model") || !strcmp(a, "--positions") ||
            !strcmp(a, "--seed")) {
            const char *v = cmdu_value(argc, argv, &i, &e);
            if (!v) goto fail;
            if (!strcmp(a, "--quant")) qlist = v;
            else if (!strcmp(a, "--ref-model")) ref_model = v;
            else if (!strcmp(a, "--positions")) { if (cmdu_int(a, v, 1, 1 << 20, &positions, &e)) goto fail; }
            else if (!strcmp(a, "--seed")) { if (cmdu_int(a, v, 0, 0x7fffffffffffffffLL, &seed, &e)) goto fail; }
            else if ((ref_quant = quant_arg(v, strlen(v))) < 0) {
                err_set(&e, "--ref-quant: '%s' is not none, q8 or q4", v);
                goto fail;
            }
            continue;
        }
        const int r = cmdu_engine_flag(&eo.o, &eo.dm, argc, argv, &i, &e);
        if (r < 0) goto fail;
        if (r == 0) {
            err_set(&e, "unknown flag '%s' (see minicpmv compare --help)", a);
            goto fail;
        }
    }
    for (const char *p = qlist;;) {
        const size_t n = strcspn(p, ",");
        const int q = quant_arg(p, n);
        if (q < 0 || nq == 8) {
            err_set(&e, "--quant: '%s' is not a list of at most 8 of none, q8, q4", qlist);
            goto fail;
        }
        quants[nq++] = q;
        if (!p[n]) break;
        p += n + 1;
    }
    if (!eo.o.model_dir) { err_set(&e, "--model DIR is required"); goto fail; }
    if (!ref_model) ref_model = eo.o.model_dir;
    if (!eo.dm.params.ctx) eo.dm.params.ctx = positions; /* no more KV cache than the comparison needs */
    const char *model = eo.o.model_dir;
    if (compare_run(&eo, ref_model, ref_quant, model, quants, nq, positions, (uint64_t)seed, res, &e)) goto fail;
    char lr[32], lc[32];
    for (int c = 0; c < nq; c++)
        printf("compare: %s vs %s (%s): %lld positions, top-1 agreement %lld/%lld (%.2f %%), KL(ref||q) mean %.6g max "
               "%.6g (position %lld)\n",
               label(model, quants[c], lc, sizeof lc), label(ref_model, ref_quant, lr, sizeof lr), ref_model,
               res[c].positions, res[c].top1, res[c].positions, 100.0 * (double)res[c].top1 / (double)res[c].positions,
               res[c].kl_mean, res[c].kl_max, res[c].kl_max_at);
    return 0;
fail:
    fprintf(stderr, "minicpmv compare: %s\n", e.msg);
    return 1;
}
