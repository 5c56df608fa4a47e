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
    "  --quiet              do not print the device plan\n"
    "  --no-prefix-reuse    prefill every prompt whole (no KV blocks shared between requests)\n";

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
    } else if (!strcmp(f, "--no-prefix-reuse")) {
        o->no_prefix_reuse = 1;
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

/* ---- the device flags (struct devmap_opts, devmap.h) ---- */

const char *devmap_opts_help(void)
{
    return "  --gpus 0,1,...          CUDA devices to use, first = the one holding embed/lm_head/vision\n"
           "                          (default: the GPUs named in --max-memory or --logical-devices,\n"
           "                          else all visible; 'none' = CPU only)\n"
           "  --max-memory 0=10GiB,1=10GiB,cpu=48GiB\n"
           "                          budget per device (GiB/GB/MiB/MB; default: free memory minus\n"
           "                          free/16 + 256 MiB); a cpu budget allows offloading layers to the CPU\n"
           "  --logical-devices 0:2,cpu:2\n"
           "                          run a device as several logical devices \"0.0\", \"0.1\", ... each with\n"
           "                          its own budget (0.1=4GiB) and arena (for tests and CI)\n"
           "  --ctx N                 longest context to reserve KV cache for\n"
           "                          (default min(4096, max_position_embeddings))\n"
           "  --parallel N            sequences served together, each with its own KV cache of --ctx\n"
           "                          tokens (default 1); --kv-seqs N is the same flag\n"
           "  --kv-tokens N|auto      a KV pool of N tokens the sequences share (at least --ctx; default\n"
           "                          --parallel x --ctx): a turn that finds no free block is preempted and\n"
           "                          resumed later; auto: the most the budget holds, up to the default\n"
           "  --max-batch N           prefill chunk: prompt tokens per forward step (default 2048)\n"
           "  --max-pieces N          image pieces per vision batch (default 10: one image, 9 slices);\n"
           "                          a request with more pieces runs in several batches\n"
           "  --max-patches N         patches per piece (default 1100)\n"
           "  --device-map FILE.json  explicit map {\"llm.model.layers.0\": 0, ..., \"vpm\": \"cpu\"}\n"
           "  --quant q8|q4           quantize an fp16 folder's decoder Linears at load (lm_head q8;\n"
           "                          docs/QUANT.md)\n";
}

int devmap_opts_parse(struct devmap_opts *o, int argc, char **argv, int *i, struct err *e)
{
    static const char *flags[] = {"--gpus", "--max-memory", "--logical-devices", "--ctx", "--kv-seqs", "--parallel",
                                  "--max-batch", "--max-pieces", "--max-patches", "--device-map", "--quant",
                                  "--kv-tokens"};
    const char *arg = argv[*i], *val = NULL;
    int k, nf = (int)(sizeof flags / sizeof flags[0]);
    for (k = 0; k < nf; k++) {
        size_t n = strlen(flags[k]);
        if (!strncmp(arg, flags[k], n) && (arg[n] == 0 || arg[n] == '=')) {
            val = arg[n] == '=' ? arg + n + 1 : NULL;
            break;
        }
    }
    if (k == nf) return 0;
    if (!val) {
        if (*i + 1 >= argc) return err_set(e, "%s needs a value", flags[k]);
        val = argv[++*i];
    }
    const char *f = flags[k];
    long v;
    char buf[1024];
    if (!strcmp(f, "--quant")) {
        if (!strcmp(val, "q8")) o->params.quant = DTYPE_Q8;
        else if (!strcmp(val, "q4")) o->params.quant = DTYPE_Q4;
        else return err_set(e, "--quant: '%s' is not q8 or q4 (an nf4 folder is read as it is, without --quant)", val);
        return 1;
    }
    if (!strcmp(f, "--kv-tokens")) {
        if (!strcmp(val, "auto")) o->params.kv_tokens = DEVMAP_KV_AUTO;
        else if (devmap_parse_long(val, 1, 1L << 30, &v))
            return err_set(e, "--kv-tokens: '%s' is neither auto nor an integer in 1..%ld", val, 1L << 30);
        else o->params.kv_tokens = v;
        return 1;
    }
    if (!strcmp(f, "--device-map")) {
        if (strlen(val) >= sizeof o->device_map) return err_set(e, "--device-map: path too long");
        snprintf(o->device_map, sizeof o->device_map, "%s", val);
        return 1;
    }
    if (!strcmp(f, "--parallel")) f = "--kv-seqs"; /* one setting, two spellings */
    if (!strcmp(f, "--ctx") || !strcmp(f, "--kv-seqs") || !strcmp(f, "--max-batch") ||
        !strcmp(f, "--max-pieces") || !strcmp(f, "--max-patches")) {
        long hi = !strcmp(f, "--ctx") ? 1L << 22 : !strcmp(f, "--kv-seqs") ? 256 : !strcmp(f, "--max-pieces") ? 1024 : 65536;
        if (devmap_parse_long(val, 1, hi, &v)) return err_set(e, "%s: '%s' is not an integer in 1..%ld", flags[k], val, hi);
        if (!strcmp(f, "--ctx")) o->params.ctx = v;
        else if (!strcmp(f, "--kv-seqs")) o->params.kv_seqs = (int)v;
        else if (!strcmp(f, "--max-batch")) o->params.max_batch_tokens = (int)v;
        else if (!strcmp(f, "--max-pieces")) o->params.max_pieces = (int)v;
        else o->params.max_patches = (int)v;
        return 1;
    }
    if (strlen(val) >= sizeof buf) return err_set(e, "%s: value too long", f);
    snprintf(buf, sizeof buf, "%s", val);
    if (!strcmp(f, "--gpus")) {
        o->n_gpus = 0;
        if (!strcmp(buf, "none") || !buf[0]) return 1;
        for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            if (devmap_parse_long(t, 0, 1023, &v)) return err_set(e, "--gpus: '%s' is not a GPU index", t);
            for (int j = 0; j < o->n_gpus; j++)
                if (o->gpus[j] == v) return err_set(e, "--gpus: GPU %ld is listed twice", v);
            if (o->n_gpus == DEVMAP_MAX_DEVICES) return err_set(e, "--gpus: more than %d GPUs", DEVMAP_MAX_DEVICES);
            o->gpus[o->n_gpus++] = (int)v;
        }
        return 1;
    }
    int is_mem = !strcmp(f, "--max-memory");
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *sep = strchr(t, is_mem ? '=' : ':');
        int ord, part;
        if (!sep)
            return err_set(e, "%s: '%s' is not %s", f, t, is_mem ? "DEVICE=SIZE (0=10GiB, cpu=48GiB)" : "DEVICE:PARTS (0:2, cpu:2)");
        *sep = 0;
        if (strlen(t) >= (is_mem ? sizeof o->mem_key[0] : sizeof o->split_key[0]) || devmap_parse_dev_key(t, &ord, &part) ||
            (!is_mem && part >= 0))
            return err_set(e, "%s: '%s' is not a device (0, 1, ..., cpu%s)", f, t, is_mem ? ", 0.1, cpu.0" : "");
        int *n = is_mem ? &o->n_mem : &o->n_split;
        for (int j = 0; j < *n; j++)
            if (!strcmp(is_mem ? o->mem_key[j] : o->split_key[j], t)) return err_set(e, "%s: '%s' is given twice", f, t);
        if (*n == DEVMAP_MAX_DEVICES) return err_set(e, "%s: more than %d entries", f, DEVMAP_MAX_DEVICES);
        if (is_mem) {
            int64_t b;
            if (parse_size(sep + 1, &b))
                return err_set(e, "--max-memory: '%s' is not a size (a finite number below 8 EiB with a unit: 10GiB, 512MiB, "
                                  "16GB)", sep + 1);
            snprintf(o->mem_key[*n], sizeof o->mem_key[0], "%s", t);
            o->mem_bytes[*n] = b;
        } else {
            if (devmap_parse_long(sep + 1, 1, 8, &v)) return err_set(e, "--logical-devices: '%s' parts: not in 1..8", sep + 1);
            snprintf(o->split_key[*n], sizeof o->split_key[0], "%s", t);
            o->split_parts[*n] = (int)v;
        }
        (*n)++;
    }
    return 1;
}

void cmdu_engine_opts_init(struct cmdu_engine_opts *x)
{
    engine_options_default(&x->o);
    devmap_opts_init(&x->dm);
    x->o.devmap = &x->dm;
}
