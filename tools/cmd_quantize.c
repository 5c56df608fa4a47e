/* cmd_quantize.c: `minicpmv quantize --model IN --out OUT --quant q8|q4|nf4` writes a quantized copy of a
 * float model folder (layouts: docs/QUANT.md), and quantize_folder(), which `mkmodel --quant nf4` uses.
 * q8/q4: each quantized weight is stored under its own name as U8 [O, dtype_row_bytes] (the row records
 * verbatim), config.json gets quantization_config {"quant_method": "minicpmv", "format", "group_size",
 * "lm_head"}: the folder loads without --quant. nf4: bitsandbytes' Params4bit layout as the official
 * MiniCPM-Llama3-V-2_5-int4 folder holds it (packed codes [n/2, 1], absmax, nested_absmax,
 * nested_quant_map, quant_map, the JSON quant state), with transformers' quantization_config.
 * Which tensors: model_quant_dtype (model.c), the loader's rule. Other tensors and files are copied.
 * Shards keep their names and order; memory: one tensor's quantized bytes at a time. Quantization runs on
 * every online CPU (quant.h; the bytes do not depend on the thread count). */
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cmd.h"
#include "common.h"
#include "config.h"
#include "model.h"
#include "quant.h"
#include "safetensors.h"
#include "tensor.h"

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* A float as Python's repr() writes it (shortest round trip), for the JSON quant state. */
static void py_repr(char *b, size_t n, double d)
{
    for (int p = 1; p <= 17; p++) {
        snprintf(b, n, "%.*g", p, d);
        if (strtod(b, NULL) == d) break;
    }
    if (!strpbrk(b, ".en")) snprintf(b + strlen(b), n - strlen(b), ".0");
}

/* The parts of one NF4 weight. */
struct nf4_parts {
    int64_t numel, nblocks, nnested;
    uint8_t *codes, *absmax;
    float *nested_absmax, *scratch, offset;
    char json[256];
};

static void nf4_free(struct nf4_parts *p)
{
    free(p->codes);
    free(p->absmax);
    free(p->nested_absmax);
    free(p->scratch);
    memset(p, 0, sizeof *p);
}

/* The parts of NF4 weight src; with offset_only, only what the spec needs (the offset fixes the JSON's
 * length): codes and absmax codes are left NULL. */
static int nf4_make(struct nf4_parts *p, const struct tensor *src, const float map[256], bool offset_only, struct err *e)
{
    memset(p, 0, sizeof *p);
    p->numel = tensor_numel(src);
    p->nblocks = (p->numel + QUANT_BNB_BLOCK - 1) / QUANT_BNB_BLOCK;
    p->nnested = (p->nblocks + QUANT_BNB_NESTED_BLOCK - 1) / QUANT_BNB_NESTED_BLOCK;
    p->scratch = malloc((size_t)p->nblocks * sizeof(float));
    if (!offset_only) {
        p->codes = malloc((size_t)p->numel / 2);
        p->absmax = malloc((size_t)p->nblocks);
        p->nested_absmax = malloc((size_t)p->nnested * sizeof(float));
    }
    if (!p->scratch || (!offset_only && (!p->codes || !p->absmax || !p->nested_absmax))) {
        nf4_free(p);
        return err_set(e, "out of memory quantizing %s", src->name);
    }
    if (offset_only) p->offset = quant_bnb_offset(src->data, src->dtype, p->numel, p->scratch, 0);
    else quant_bnb_quantize(src->data, src->dtype, p->numel, map, p->codes, p->absmax, p->nested_absmax, &p->offset,
                            p->scratch, 0);
    char off[40];
    py_repr(off, sizeof off, (double)p->offset);
    /* bitsandbytes' QuantState.as_dict(packed=True) non-tensor items, json.dumps'd */
    snprintf(p->json, sizeof p->json,
             "{\"quant_type\": \"nf4\", \"blocksize\": %d, \"dtype\": \"float16\", \"shape\": [%lld, %lld], "
             "\"nested_blocksize\": %d, \"nested_dtype\": \"float32\", \"nested_offset\": %s}",
             QUANT_BNB_BLOCK, (long long)src->shape[0], (long long)src->shape[1], QUANT_BNB_NESTED_BLOCK, off);
    return 0;
}

static int copy_file(const char *from, const char *to, struct err *e)
{
    char *text = NULL;
    size_t n = 0;
    if (read_file(from, (size_t)1 << 30, &text, &n, e)) return -1;
    FILE *f = fopen(to, "wb");
    int rc = !f || fwrite(text, 1, n, f) != n;
    if (f && fclose(f)) rc = 1;
    free(text);
    return rc ? err_set(e, "cannot write %s: %s", to, strerror(errno)) : 0;
}

#define QZ_MAX_OUT 8 /* output tensors per input tensor */

int quantize_folder(const char *in, const char *out, int format, struct err *e)
{
    struct model_config cfg;
    if (config_load(&cfg, in, e)) return -1;
    if (cfg.quantization_config.quant_method != QUANT_METHOD_NONE)
        return err_set(e, "%s already holds quantized weights (config.json quantization_config); quantize a float folder",
                       in);
    struct quant_config *qc = &cfg.quantization_config;
    if (format == DTYPE_NF4) { /* the official folder's BitsAndBytesConfig */
        qc->quant_method = QUANT_METHOD_BNB;
        qc->bnb_4bit_use_double_quant = true;
        snprintf(qc->bnb_4bit_compute_dtype, sizeof qc->bnb_4bit_compute_dtype, "float16");
        static const char *skip[] = {"out_proj", "kv_proj", "lm_head"};
        qc->n_skip = 3;
        for (int i = 0; i < 3; i++) snprintf(qc->llm_int8_skip_modules[i], sizeof qc->llm_int8_skip_modules[i], "%s", skip[i]);
    } else if (format == DTYPE_Q8 || format == DTYPE_Q4) {
        qc->quant_method = QUANT_METHOD_MINICPMV;
        snprintf(qc->format, sizeof qc->format, "%s", format == DTYPE_Q8 ? "q8" : "q4");
        snprintf(qc->lm_head, sizeof qc->lm_head, "q8"); /* docs/QUANT.md */
    } else {
        return err_set(e, "--quant: expected q8, q4 or nf4");
    }
    struct safetensors *st = NULL;
    if (safetensors_open_dir(&st, in, e)) return -1;
    int rc = -1, n = safetensors_count(st), ns = safetensors_shard_count(st), nout = 0;
    struct safetensors_spec *specs = calloc((size_t)n * QZ_MAX_OUT, sizeof *specs);
    char (*onames)[192] = calloc((size_t)n * QZ_MAX_OUT, sizeof *onames);
    const char **names = calloc((size_t)n * QZ_MAX_OUT, sizeof *names), **files = calloc((size_t)n * QZ_MAX_OUT, sizeof *files);
    float map[256];
    quant_bnb_dynamic_map(map);
    int64_t total = 0;
    if (!specs || !onames || !names || !files) { err_set(e, "out of memory"); goto out; }
    if (mkdir(out, 0755) && errno != EEXIST) { err_set(e, "cannot create %s: %s", out, strerror(errno)); goto out; }
    {
        struct model_config plain = cfg;
        plain.quantization_config.quant_method = QUANT_METHOD_NONE;
        if (model_check_checkpoint(&plain, st, e)) goto out;
    }
    for (int s = 0; s < ns; s++) {
        /* The outputs go in three sweeps, 4-byte dtypes, then 2-byte, then bytes, as the reference
         * safetensors library orders them: every F32/F16 tensor then starts 8-byte aligned (the header is
         * padded), so zero-copy views of the map are aligned although NF4 parts have odd byte counts. */
        static const char *suf[] = {"", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
                                    ".quant_state.bitsandbytes__nf4"};
        static const enum dtype nf4_dt[] = {DTYPE_U8, DTYPE_U8, DTYPE_F32, DTYPE_F32, DTYPE_F32, DTYPE_U8};
        /* pass 1: the output specs of this shard (an NF4 quant state's length depends on its offset) */
        int first = nout, cnt = 0;
        for (int cls = 4; cls >= 1; cls /= 2)
            for (int i = 0; i < n; i++) {
                const struct safetensors_tensor *t = safetensors_at(st, i);
                if (t->shard != s) continue;
                const int qd = model_quant_dtype(&cfg, 0, t->name, t->ndim);
                struct safetensors_spec *sp = &specs[nout];
                if (qd == DTYPE_Q8 || qd == DTYPE_Q4) {
                    const size_t rb = dtype_row_bytes((enum dtype)qd, t->shape[1]);
                    if (!rb) { err_set(e, "%s: rows of %lld values cannot be quantized", t->name, (long long)t->shape[1]); goto out; }
                    if (cls != 1) continue;
                    *sp = (struct safetensors_spec){.name = t->name, .dtype = DTYPE_U8, .ndim = 2, .shape = {t->shape[0], (int64_t)rb}};
                    nout++;
                } else if (qd == DTYPE_NF4) {
                    struct nf4_parts p = {0};
                    struct tensor v = safetensors_tensor_view(t);
                    v.name = t->name;
                    if (cls == 2) continue;
                    if (cls == 1 && nf4_make(&p, &v, map, true, e)) goto out;
                    const int64_t numel = tensor_numel(&v), nb = (numel + QUANT_BNB_BLOCK - 1) / QUANT_BNB_BLOCK;
                    const int64_t len[] = {numel / 2, nb, 16, (nb + QUANT_BNB_NESTED_BLOCK - 1) / QUANT_BNB_NESTED_BLOCK, 256,
                                           (int64_t)strlen(p.json)};
                    for (int k = 0; k < 6; k++) {
                        if ((int)dtype_size(nf4_dt[k]) != cls) continue;
                        snprintf(onames[nout], sizeof onames[nout], "%s%s", t->name, suf[k]);
                        specs[nout] = (struct safetensors_spec){.name = onames[nout], .dtype = nf4_dt[k], .ndim = k ? 1 : 2,
                                                                .shape = {len[k], 1}};
                        nout++;
                    }
                    nf4_free(&p);
                } else if ((int)dtype_size(t->dtype) == cls) {
                    *sp = (struct safetensors_spec){.name = t->name, .dtype = t->dtype, .ndim = t->ndim};
                    memcpy(sp->shape, t->shape, sizeof sp->shape);
                    nout++;
                }
            }
        cnt = nout - first;
        for (int i = first; i < nout; i++) { /* the index's total_size: the bytes written */
            int64_t b = (int64_t)dtype_size(specs[i].dtype);
            for (int d = 0; d < specs[i].ndim; d++) b *= specs[i].shape[d];
            total += b;
        }
        char path[4096];
        const char *fname = base_name(safetensors_shard_path(st, s));
        if (path_join(path, sizeof path, out, fname, e)) goto out;
        for (int i = first; i < nout; i++) {
            names[i] = specs[i].name;
            files[i] = fname;
        }
        struct safetensors_writer *w = NULL;
        if (safetensors_writer_begin(&w, path, &specs[first], cnt, NULL, e)) goto out;
        /* pass 2: the bytes, in the same order */
        for (int cls = 4; cls >= 1; cls /= 2)
            for (int i = 0; i < n; i++) {
                const struct safetensors_tensor *t = safetensors_at(st, i);
                if (t->shard != s) continue;
                const int qd = model_quant_dtype(&cfg, 0, t->name, t->ndim);
                struct tensor v = safetensors_tensor_view(t);
                v.name = t->name;
                int wr = 0;
                if ((qd == DTYPE_Q8 || qd == DTYPE_Q4) && cls == 1) {
                    const int64_t o = t->shape[0], k = t->shape[1];
                    const size_t rb = dtype_row_bytes((enum dtype)qd, k);
                    uint8_t *q = malloc((size_t)o * rb);
                    if (!q) wr = err_set(e, "out of memory quantizing %s", t->name);
                    else wr = quant_quantize_tensor(q, (enum dtype)qd, v.data, v.dtype, o, k, 0, t->name, e) ||
                              safetensors_writer_write(w, q, (size_t)o * rb, e);
                    free(q);
                } else if (qd == DTYPE_NF4 && cls != 2) {
                    struct nf4_parts p;
                    if (nf4_make(&p, &v, map, false, e)) { wr = -1; }
                    else {
                        const void *data[] = {p.codes, p.absmax, QUANT_NF4, p.nested_absmax, map, p.json};
                        const size_t nbytes[] = {(size_t)p.numel / 2, (size_t)p.nblocks, 16 * sizeof(float),
                                                 (size_t)p.nnested * sizeof(float), 256 * sizeof(float), strlen(p.json)};
                        for (int k = 0; k < 6 && !wr; k++)
                            if ((int)dtype_size(nf4_dt[k]) == cls) wr = safetensors_writer_write(w, data[k], nbytes[k], e);
                        nf4_free(&p);
                    }
                } else if (qd < 0 && (int)dtype_size(t->dtype) == cls) {
                    wr = safetensors_writer_write(w, t->data, t->nbytes, e);
                }
                if (wr) {
                    safetensors_writer_abort(w);
                    goto out;
                }
            }
        if (safetensors_writer_close(w, e)) goto out;
    }
    if (ns > 1 && safetensors_write_index(out, names, files, nout, total, e)) goto out;
    /* config.json saying what the folder holds, and the other files as they are */
    char *cj = config_to_json(&cfg);
    char path[4096];
    if (!cj || path_join(path, sizeof path, out, "config.json", e)) { free(cj); if (!cj) err_set(e, "out of memory"); goto out; }
    FILE *f = fopen(path, "wb");
    int bad = !f || fputs(cj, f) < 0;
    if (f && fclose(f)) bad = 1;
    free(cj);
    if (bad) { err_set(e, "cannot write %s: %s", path, strerror(errno)); goto out; }
    DIR *d = opendir(in);
    if (!d) { err_set(e, "cannot list %s: %s", in, strerror(errno)); goto out; }
    int crc = 0;
    for (struct dirent *de; !crc && (de = readdir(d));) {
        const char *nm = de->d_name;
        size_t l = strlen(nm);
        if (nm[0] == '.' || !strcmp(nm, "config.json") || !strcmp(nm, "model.safetensors.index.json") ||
            (l > 12 && !strcmp(nm + l - 12, ".safetensors")))
            continue;
        char from[4096], to[4096];
        struct stat sb;
        if (path_join(from, sizeof from, in, nm, e) || path_join(to, sizeof to, out, nm, e)) { crc = -1; break; }
        if (stat(from, &sb) || !S_ISREG(sb.st_mode)) continue;
        crc = copy_file(from, to, e);
    }
    closedir(d);
    if (crc) goto out;
    rc = 0;
out:
    free(specs);
    free(onames);
    free(names);
    free(files);
    safetensors_close(st);
    return rc;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: minicpmv quantize --model IN --out OUT --quant q8|q4|nf4\n"
               "  writes a quantized copy of the float folder IN (docs/QUANT.md): q8/q4 quantize the decoder\n"
               "  Linears (lm_head q8; vision tower, resampler, embeddings stay fp16) and OUT loads without\n"
               "  --quant; nf4 writes the bitsandbytes layout of the official int4 folder\n");
}

int cmd_quantize(int argc, char **argv)
{
    const char *in = NULL, *out = NULL, *q = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (strcmp(a, "--model") && strcmp(a, "--out") && strcmp(a, "--quant")) {
            fprintf(stderr, "minicpmv quantize: unknown flag '%s'\n", a);
            usage(stderr);
            return 2;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "minicpmv quantize: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--model")) in = v;
        else if (!strcmp(a, "--out")) out = v;
        else q = v;
    }
    if (!in || !out || !q) {
        fprintf(stderr, "minicpmv quantize: --model, --out and --quant are required\n");
        usage(stderr);
        return 2;
    }
    const int fmt = !strcmp(q, "q8") ? DTYPE_Q8 : !strcmp(q, "q4") ? DTYPE_Q4 : !strcmp(q, "nf4") ? DTYPE_NF4 : -1;
    if (fmt < 0) {
        fprintf(stderr, "minicpmv quantize: --quant '%s' is not q8, q4 or nf4\n", q);
        return 2;
    }
    struct err e = {{0}};
    double t0 = time_now();
    if (quantize_folder(in, out, fmt, &e)) {
        fprintf(stderr, "minicpmv quantize: %s\n", e.msg);
        return 1;
    }
    log_info("quantize: %s -> %s (%s) in %.2f s (%d threads)", in, out, q, time_now() - t0, quant_threads());
    return 0;
}
