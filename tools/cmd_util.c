/* cmd_util.c: see cmd_util.h. */
#include "cmd_util.h"

#include "devmap.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

const char cmdu_engine_help[] =
    "  --model DIR          the model folder (config.json, *.safetensors, tokenizer.json)\n"
    "  --device auto|cpu|cuda  where to run (auto: the GPU when one is present)\n"
    "  --dtype f16|f32      weights and activations (f16 = the reference dtype)\n"
    "  --threads N          CPU threads (default: all cores)\n"
    "  --quiet              do not print the device plan\n";

const char cmdu_sampler_help[] =
    "  --greedy             argmax decoding, no repetition penalty unless given (default: the model's\n"
    "                       sampling defaults: temperature 0.7, top-k 100, top-p 0.8, penalty 1.05)\n"
    "  --seed N             sampling seed (default 0)\n"
    "  --temperature T      (0.7)   --top-k K (100)   --top-p P (0.8)   --repetition-penalty R (1.05)\n";

const char *cmdu_value(int argc, char **argv, int *i, struct err *e)
{
    if (*i + 1 >= argc) {
        err_set(e, "%s needs a value", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

int cmdu_int(const char *flag, const char *s, long long lo, long long hi, long long *out, struct err *e)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno) return err_set(e, "%s: '%s' is not an integer", flag, s);
    if (v < lo || v > hi) return err_set(e, "%s: %lld is outside %lld..%lld", flag, v, lo, hi);
    *out = v;
    return 0;
}

static int cmdu_float(const char *flag, const char *s, double lo, double hi, double *out, struct err *e)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || v != v) return err_set(e, "%s: '%s' is not a number", flag, s);
    if (v < lo || v > hi) return err_set(e, "%s: %g is outside %g..%g", flag, v, lo, hi);
    *out = v;
    return 0;
}

int cmdu_engine_flag(struct engine_options *o, struct devmap_opts *dm, int argc, char **argv, int *i, struct err *e)
{
    o->devmap = dm;
    const char *f = argv[*i], *v;
    long long n;
    if (!strcmp(f, "--model")) {
        if (!(v = cmdu_value(argc, argv, i, e))) return -1;
        o->model_dir = v;
    } else if (!strcmp(f, "--device")) {
        if (!(v = cmdu_value(argc, argv, i, e))) return -1;
        o->device = v;
    } else if (!strcmp(f, "--dtype")) {
        if (!(v = cmdu_value(argc, argv, i, e))) return -1;
        if (!strcmp(v, "f16") || !strcmp(v, "float16")) o->dtype = DTYPE_F16;
        else if (!strcmp(v, "f32") || !strcmp(v, "float32")) o->dtype = DTYPE_F32;
        else return err_set(e, "--dtype: expected f16 or f32, got '%s'", v);
    } else if (!strcmp(f, "--threads")) {
        if (!(v = cmdu_value(argc, argv, i, e)) || cmdu_int(f, v, 0, 4096, &n, e)) return -1;
        o->threads = (int)n;
    } else if (!strcmp(f, "--quiet") || !strcmp(f, "-q")) {
        o->quiet = 1;
    } else {
        return devmap_opts_parse(dm, argc, argv, i, e);
    }
    return 1;
}

int cmdu_sampler_flag(struct sampler_params *p, int argc, char **argv, int *i, struct err *e)
{
    const char *f = argv[*i], *v;
    long long n;
    double x;
    if (!strcmp(f, "--greedy")) {
        /* pure argmax, as chat(sampling=True, do_sample=False, repetition_penalty=1.0); an explicit
         * --repetition-penalty (before or after) still applies */
        p->greedy = true;
        if (!p->penalty_explicit) p->repetition_penalty = 1.0f;
    } else if (!strcmp(f, "--seed")) {
        if (!(v = cmdu_value(argc, argv, i, e)) || cmdu_int(f, v, 0, (long long)9e18, &n, e)) return -1;
        p->seed = (uint64_t)n;
    } else if (!strcmp(f, "--temperature")) {
        if (!(v = cmdu_value(argc, argv, i, e)) || cmdu_float(f, v, 1e-6, 100, &x, e)) return -1;
        p->temperature = (float)x;
    } else if (!strcmp(f, "--top-k")) {
        if (!(v = cmdu_value(argc, argv, i, e)) || cmdu_int(f, v, 0, 1 << 30, &n, e)) return -1;
        p->top_k = (int)n;
    } else if (!strcmp(f, "--top-p")) {
        if (!(v = cmdu_value(argc, argv, i, e)) || cmdu_float(f, v, 1e-6, 1, &x, e)) return -1;
        p->top_p = (float)x;
    } else if (!strcmp(f, "--repetition-penalty")) {
        if (!(v = cmdu_value(argc, argv, i, e)) || cmdu_float(f, v, 1e-3, 100, &x, e)) return -1;
        p->repetition_penalty = (float)x;
        p->penalty_explicit = true;
    } else {
        return 0;
    }
    return 1;
}
