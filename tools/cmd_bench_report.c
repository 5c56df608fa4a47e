/* cmd_bench_report.c: the output of `minicpmv bench` (tools/cmd_bench.c runs the phases): the table, the
 * read bandwidth with every decode figure as a fraction of it, the memory per device, and --json. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <cJSON.h>

#include "backend.h"
#include "cmd_bench.h"

struct memrow {
    struct device dev;
    int64_t weights, kv, buffers, peak, total;
};

static int mem_rows(const struct bench *b, struct memrow *rows)
{
    const struct engine *g = b->g;
    struct engine_device_mem dm[DEVMAP_MAX_DEVICES];
    const int n = engine_device_memory(g, dm, DEVMAP_MAX_DEVICES);
    for (int k = 0; k < n; k++) {
        memset(&rows[k], 0, sizeof rows[k]);
        rows[k].dev = dm[k].dev;
        rows[k].weights = dm[k].weights;
        rows[k].kv = dm[k].kv;
        rows[k].buffers = dm[k].buffers;
    }
    for (int k = 0; k < n; k++) {
        if (rows[k].dev.kind == DEVICE_CPU) {
            struct rusage ru;
            getrusage(RUSAGE_SELF, &ru);
            rows[k].peak = (int64_t)ru.ru_maxrss * 1024; /* peak RSS, mapped weight pages included */
            continue;
        }
        for (int j = 0; j < b->n_gpu; j++)
            if (b->gpu[j] == rows[k].dev.ordinal) {
                rows[k].peak = (int64_t)b->free0[j] - (int64_t)b->min_free[j];
                rows[k].total = (int64_t)b->total[j];
            }
    }
    return n;
}

static void dev_label(struct device d, char *buf, size_t n)
{
    if (d.kind == DEVICE_CPU) snprintf(buf, n, "cpu");
    else snprintf(buf, n, "cuda:%d", d.ordinal);
}

/* x value k of p, or NAN */
static double x_get(const struct phase *p, const char *k)
{
    for (int i = 0; i < p->n_x; i++)
        if (!strcmp(p->xk[i], k)) return p->xv[i];
    return NAN;
}

/* The read bandwidth (measured here or given), then each decode figure as a fraction of it. */
static void print_bandwidth(const struct bench *b, const struct phase *ph, int n_ph)
{
    if (!(b->peak_gbs > 0)) return;
    printf("\nread bandwidth ");
    if (!b->peak_auto) printf("%.4g GB/s (given with --peak-gbs)\n", b->peak_gbs);
    else {
        printf("(measured in this run before the model loaded: read-and-reduce, best pass)\n");
        for (int i = 0; i < b->n_bw; i++) {
            const struct membw *m = &b->bw[i];
            char lab[16];
            dev_label(m->dev, lab, sizeof lab);
            printf("  %-9s %7.4g GB/s  (%.2f GiB per pass, %d passes, median %.4g GB/s; pattern written in %.1f s)\n", lab,
                   m->gbs, (double)m->bytes / GIB, m->passes, m->gbs_median, m->fill_s);
        }
    }
    printf("decode as a fraction of %.4g GB/s:\n", b->peak_gbs);
    for (int i = 0; i < n_ph; i++) {
        const struct phase *p = &ph[i];
        if (!p->ran) continue;
        if (p->kind == PK_DECODE)
            printf("  %-12s %8.1f tok/s  %7.4g GB/s effective (%.4g GB per token)  %5.1f %%\n", p->name, p->value,
                   x_get(p, "gb_s"), x_get(p, "bytes_per_tok") / 1e9, x_get(p, "pct_of_peak_bw"));
        else if (p->kind == PK_SEED)
            printf("  %-12s %8.1f tok/s  %7.4g GB/s effective (the seed case's decode)  %5.1f %%\n", p->name,
                   x_get(p, "decode_tok_s"), x_get(p, "decode_gb_s"), x_get(p, "decode_pct_of_peak_bw"));
    }
}

void bench_report_print(const struct bench *b, const struct phase *ph, int n_ph)
{
    const struct engine *g = b->g;
    printf("\nminicpmv bench: %d layers, d=%d, %s, ctx %lld, prefill chunk %lld, reps %d (median)\n",
           engine_config(g)->num_hidden_layers, engine_config(g)->hidden_size, dtype_name(engine_dtype(g)),
           (long long)engine_ctx(g), (long long)engine_max_batch(g), b->reps);
    printf("%-12s %14s  %s\n", "phase", "result", "details");
    for (int i = 0; i < n_ph; i++) {
        const struct phase *p = &ph[i];
        if (!p->ran) {
            printf("%-12s %14s  %s\n", p->name, "-", p->err);
            continue;
        }
        char v[32];
        snprintf(v, sizeof v, "%.*f %s", p->value >= 100 ? 0 : 2, p->value, p->unit);
        printf("%-12s %14s ", p->name, v);
        for (int k = 0; k < p->n_x; k++) {
            const double x = p->xv[k];
            if (strstr(p->xk[k], "bytes")) printf(" %s=%.3gGB", p->xk[k], x / 1e9);
            else if (x == floor(x) && fabs(x) < 1e9) printf(" %s=%.0f", p->xk[k], x);
            else printf(" %s=%.4g", p->xk[k], x);
        }
        printf("\n");
    }
    struct memrow rows[DEVMAP_MAX_DEVICES];
    int n = mem_rows(b, rows);
    print_bandwidth(b, ph, n_ph);
    printf("\nmemory      %10s %10s %10s %12s %14s\n", "weights", "KV", "buffers", "peak used",
           "beyond W+KV");
    for (int k = 0; k < n; k++) {
        char lab[16];
        dev_label(rows[k].dev, lab, sizeof lab);
        printf("%-11s %7.2f GiB %6.2f GiB %6.2f GiB %8.2f GiB %10.2f GiB%s\n", lab, rows[k].weights / GIB,
               rows[k].kv / GIB, rows[k].buffers / GIB, rows[k].peak / GIB,
               (rows[k].peak - rows[k].weights - rows[k].kv) / GIB,
               rows[k].dev.kind == DEVICE_CPU ? "  (peak RSS of the process)" : "");
    }
    if (b->n_gpu)
        printf("(GPU peak = free memory before loading - the least free memory seen%s)\n",
               b->poll_ms ? "; polled by a thread" : " after each phase; --mem-poll 1 also sees transient peaks");
}

int bench_report_json(const struct bench *b, const struct phase *ph, int n_ph, const char *model, const char *path,
                      struct err *e)
{
    const struct engine *g = b->g;
    cJSON *root = cJSON_CreateObject(), *phs = cJSON_CreateObject(), *mem = cJSON_CreateObject(),
          *devs = cJSON_CreateArray();
    if (!root || !phs || !mem || !devs) {
        cJSON_Delete(root); cJSON_Delete(phs); cJSON_Delete(mem); cJSON_Delete(devs);
        return err_set(e, "out of memory");
    }
    cJSON_AddStringToObject(root, "tool", "minicpmv bench");
    cJSON_AddStringToObject(root, "model", model);
    cJSON_AddStringToObject(root, "dtype", dtype_name(engine_dtype(g)));
    cJSON_AddNumberToObject(root, "ctx", (double)engine_ctx(g));
    cJSON_AddNumberToObject(root, "max_batch", (double)engine_max_batch(g));
    cJSON_AddNumberToObject(root, "reps", b->reps);
    cJSON_AddNumberToObject(root, "load_s", engine_load_seconds(g));
    cJSON_AddNumberToObject(root, "decode_weight_bytes", (double)b->decode_weight_bytes);
    if (b->peak_gbs > 0) {
        cJSON_AddNumberToObject(root, "peak_gbs", b->peak_gbs);
        cJSON_AddStringToObject(root, "peak_gbs_source", b->peak_auto ? "measured" : "given");
    }
    cJSON *bws = b->n_bw ? cJSON_AddArrayToObject(root, "read_bandwidth") : NULL;
    for (int i = 0; bws && i < b->n_bw; i++) {
        const struct membw *m = &b->bw[i];
        cJSON *o = cJSON_CreateObject();
        if (!o) continue;
        char dl[16];
        dev_label(m->dev, dl, sizeof dl);
        cJSON_AddStringToObject(o, "device", dl);
        cJSON_AddNumberToObject(o, "bytes", (double)m->bytes);
        cJSON_AddNumberToObject(o, "passes", m->passes);
        cJSON_AddNumberToObject(o, "best_s", m->best_s);
        cJSON_AddNumberToObject(o, "gb_s", m->gbs);
        cJSON_AddNumberToObject(o, "gb_s_median", m->gbs_median);
        cJSON_AddNumberToObject(o, "fill_s", m->fill_s);
        cJSON_AddStringToObject(o, "method", "op_read_sum (membw.h): one read of the buffer per pass, best pass");
        cJSON_AddItemToArray(bws, o);
    }
    char lab[16];
    dev_label(engine_embed_device(g), lab, sizeof lab);
    cJSON_AddStringToObject(root, "device", lab);
    for (int i = 0; i < n_ph; i++) {
        const struct phase *p = &ph[i];
        cJSON *o = cJSON_AddObjectToObject(phs, p->name);
        if (!o) continue;
        if (!p->ran) {
            cJSON_AddStringToObject(o, "error", p->err);
            continue;
        }
        cJSON_AddNumberToObject(o, "value", p->value);
        cJSON_AddStringToObject(o, "unit", p->unit);
        cJSON_AddBoolToObject(o, "higher_better", p->higher_better);
        cJSON_AddNumberToObject(o, "median_s", p->med);
        cJSON *ts = cJSON_AddArrayToObject(o, "times_s");
        for (int r = 0; ts && r < p->reps; r++) cJSON_AddItemToArray(ts, cJSON_CreateNumber(p->t[r]));
        for (int k = 0; k < p->n_x; k++) cJSON_AddNumberToObject(o, p->xk[k], p->xv[k]);
        if (b->n_gpu) {
            cJSON *pk = cJSON_AddArrayToObject(o, "peak_used_bytes");
            for (int j = 0; pk && j < b->n_gpu; j++) cJSON_AddItemToArray(pk, cJSON_CreateNumber((double)p->peak_used[j]));
        }
    }
    cJSON_AddItemToObject(root, "phases", phs);
    struct memrow rows[DEVMAP_MAX_DEVICES];
    int n = mem_rows(b, rows);
    for (int k = 0; k < n; k++) {
        cJSON *d = cJSON_CreateObject();
        if (!d) continue;
        dev_label(rows[k].dev, lab, sizeof lab);
        cJSON_AddStringToObject(d, "device", lab);
        cJSON_AddNumberToObject(d, "weights_bytes", (double)rows[k].weights);
        cJSON_AddNumberToObject(d, "kv_bytes", (double)rows[k].kv);
        cJSON_AddNumberToObject(d, "buffers_bytes", (double)rows[k].buffers);
        cJSON_AddNumberToObject(d, "peak_used_bytes", (double)rows[k].peak);
        cJSON_AddNumberToObject(d, "beyond_weights_kv_bytes", (double)(rows[k].peak - rows[k].weights - rows[k].kv));
        cJSON_AddNumberToObject(d, "total_bytes", (double)rows[k].total);
        cJSON_AddStringToObject(d, "method", rows[k].dev.kind == DEVICE_CPU ? "peak RSS" :
                                b->poll_ms ? "free memory before load - min free (polled)" :
                                "free memory before load - min free (after each phase)");
        cJSON_AddItemToArray(devs, d);
    }
    cJSON_AddItemToObject(mem, "devices", devs);
    cJSON_AddNumberToObject(mem, "poll_ms", b->poll_ms);
    cJSON_AddItemToObject(root, "memory", mem);
    char *s = cJSON_Print(root);
    cJSON_Delete(root);
    if (!s) return err_set(e, "out of memory");
    FILE *f = fopen(path, "w");
    int rc = 0;
    if (!f || fputs(s, f) < 0 || fputc('\n', f) < 0) rc = err_set(e, "--json %s: cannot write", path);
    if (f && fclose(f)) rc = err_set(e, "--json %s: cannot write", path);
    free(s);
    return rc;
}
