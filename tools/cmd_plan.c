/* cmd_plan.c: `minicpmv plan`, the device map as a dry run. Reads DIR/config.json (enough on its
 * own, so a plan can be made before downloading the weights), checks the safetensors headers
 * against the config when the folder has them, builds the logical devices from the shared device
 * flags (devmap.h), runs the planner and prints the map and the per-device table, or one JSON
 * object with --json. Loads no weights and needs no GPU: every budget can come from --max-memory.
 * Exit status: 0 fits, 1 does not fit or bad input files, 2 bad flags. */
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "cmd.h"
#include "cmd_util.h"
#include "devmap.h"
#include "model.h"
#include "safetensors.h"

/* Budgets not given by --max-memory: free memory as the backend sees it (CPU: MemAvailable). */
static int mem_free(enum device_kind kind, int ordinal, int64_t *free_bytes, void *ctx, struct err *e)
{
    (void)ctx;
    size_t fr = 0, tot = 0;
    if (dev_mem_info(kind == DEVICE_CPU ? device_cpu() : device_cuda(ordinal), &fr, &tot, e)) return -1;
    *free_bytes = (int64_t)fr;
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: minicpmv plan --model DIR [device flags] [--dtype f16|f32] [--json]\n"
               "Prints which device each module would go to and what each device would need (weights, KV\n"
               "cache, workspace) against its budget, without loading anything. config.json is enough.\n\n"
               "  --model DIR             folder with config.json (safetensors headers are checked if present)\n"
               "  --dtype f16|f32         weight and activation dtype the engine will use (default f16), as in chat\n"
               "  --json                  one JSON object: {\"fits\", \"device_map\", \"devices\", ...}\n"
               "%s\n"
               "example: minicpmv plan --model DIR --gpus 0,1 --max-memory 0=10GiB,1=10GiB --ctx 4096\n",
            devmap_opts_help());
}

/* The CPU machine CI runs on has no GPU: when the flags name GPUs, trust them (no visibility check). */
static int named_gpus(const struct devmap_opts *o)
{
    if (o->n_gpus > 0) return 1;
    for (int i = 0; i < o->n_mem; i++)
        if (strncmp(o->mem_key[i], "cpu", 3)) return 1;
    for (int i = 0; i < o->n_split; i++)
        if (strncmp(o->split_key[i], "cpu", 3)) return 1;
    return 0;
}

static int check_headers(const struct model_config *cfg, const char *dir, int *checked, struct err *e)
{
    char p1[1200], p2[1200];
    *checked = 0;
    if (path_join(p1, sizeof p1, dir, "model.safetensors.index.json", e) ||
        path_join(p2, sizeof p2, dir, "model.safetensors", e))
        return -1;
    if (access(p1, R_OK) && access(p2, R_OK)) return 0; /* config only: plan from the config */
    struct safetensors *st = NULL;
    if (safetensors_open_dir(&st, dir, e)) return -1;
    int rc = model_check_checkpoint(cfg, st, e);
    if (!rc) *checked = safetensors_count(st);
    safetensors_close(st);
    return rc;
}

int cmd_plan(int argc, char **argv)
{
    struct devmap_opts o;
    struct err e = {{0}};
    const char *dir = NULL;
    int json = 0;
    devmap_opts_init(&o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else if (!strcmp(a, "--model") || !strcmp(a, "--dtype")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "minicpmv plan: %s needs a value\n", a);
                return 2;
            }
            const char *v = argv[++i];
            if (a[2] == 'm') {
                dir = v;
            } else if (!strcmp(v, "f16") || !strcmp(v, "float16")) {
                o.params.weight_bytes = o.params.act_bytes = 2;
            } else if (!strcmp(v, "f32") || !strcmp(v, "float32")) {
                o.params.weight_bytes = o.params.act_bytes = 4;
            } else {
                fprintf(stderr, "minicpmv plan: --dtype: expected f16 or f32, got '%s'\n", v);
                return 2;
            }
        } else {
            int r = devmap_opts_parse(&o, argc, argv, &i, &e);
            if (r < 0) {
                fprintf(stderr, "minicpmv plan: %s\n", e.msg);
                return 2;
            }
            if (r == 0) {
                fprintf(stderr, "minicpmv plan: unknown flag '%s' (see minicpmv plan --help)\n", a);
                usage(stderr);
                return 2;
            }
        }
    }
    if (!dir) {
        fprintf(stderr, "minicpmv plan: --model DIR is required\n");
        usage(stderr);
        return 2;
    }

    struct model_config cfg;
    int checked = 0;
    if (config_load(&cfg, dir, &e) || check_headers(&cfg, dir, &checked, &e)) {
        fprintf(stderr, "minicpmv plan: %s\n", e.msg);
        return 1;
    }
    if (checked) log_info("plan: %d checkpoint tensors match config.json", checked);
    /* the engine refuses a context beyond the model's positions (llm.c): so does its dry run */
    if (o.params.ctx > cfg.max_position_embeddings) {
        fprintf(stderr, "minicpmv plan: --ctx %lld is beyond the model's max_position_embeddings (%d): use --ctx %d or less\n",
                (long long)o.params.ctx, cfg.max_position_embeddings, cfg.max_position_embeddings);
        return 2;
    }

    struct backend_info bi;
    backend_query(&bi);
    struct devmap_device dev[DEVMAP_MAX_DEVICES];
    int n_dev = 0;
    if (devmap_devices(&o, named_gpus(&o) ? -1 : bi.n_gpus, mem_free, NULL, dev, &n_dev, &e)) {
        fprintf(stderr, "minicpmv plan: %s\n", e.msg);
        return 2;
    }
    struct devmap_assign *m = NULL;
    struct devmap_plan *plan = calloc(1, sizeof *plan + sizeof *m);
    if (!plan) {
        fprintf(stderr, "minicpmv plan: out of memory\n");
        return 1;
    }
    if (o.device_map[0]) {
        m = (struct devmap_assign *)(plan + 1);
        if (devmap_map_load(m, o.device_map, &cfg, dev, n_dev, &e)) {
            fprintf(stderr, "minicpmv plan: %s\n", e.msg);
            free(plan);
            return 1;
        }
    }
    int rc = devmap_plan(&cfg, &o.params, dev, n_dev, m, plan, &e);
    if (rc && plan->n_dev == 0) { /* failed before placing anything (bad parameters) */
        fprintf(stderr, "minicpmv plan: %s\n", e.msg);
        free(plan);
        return 1;
    }
    if (json) {
        char *s = devmap_to_json(plan, rc ? e.msg : NULL);
        if (s) printf("%s\n", s);
        free(s);
    } else {
        devmap_print(stdout, plan);
    }
    if (rc) fprintf(stderr, "minicpmv plan: %s\n", e.msg);
    free(plan);
    return rc ? 1 : 0;
}
