/* cmd_generate.c: `minicpmv generate --model DIR --ids 128000,791,4062 --max-new-tokens 16 --greedy`
 * prints the new ids on one line (stops at 128001 or 128009, the stop id included). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd_util.h"
#include "devmap.h"
#include "progress.h"

static int parse_ids(const char *s, int32_t **out, int *n, struct err *e)
{
    int cap = 16, k = 0;
    int32_t *v = malloc((size_t)cap * sizeof *v);
    if (!v) return err_set(e, "out of memory");
    const char *p = s;
    while (*p) {
        char *end;
        long x = strtol(p, &end, 10);
        if (end == p || x < 0 || x > 0x7fffffff) {
            free(v);
            return err_set(e, "--ids: '%s' is not a comma-separated list of token ids", s);
        }
        if (k == cap) {
            cap *= 2;
            int32_t *nv = realloc(v, (size_t)cap * sizeof *nv);
            if (!nv) { free(v); return err_set(e, "out of memory"); }
            v = nv;
        }
        v[k++] = (int32_t)x;
        p = end;
        if (*p == ',') p++;
        else if (*p) { free(v); return err_set(e, "--ids: unexpected '%c' in '%s'", *p, s); }
    }
    if (!k) { free(v); return err_set(e, "--ids: empty list"); }
    *out = v;
    *n = k;
    return 0;
}

int cmd_generate(int argc, char **argv)
{
    struct err e = {{0}};
    struct cmdu_engine_opts eo;
    cmdu_engine_opts_init(&eo);
    struct sampler_params sp;
    sampler_defaults(&sp);
    const char *ids_s = NULL;
    long long max_new = 16;
    int stats = 0;
    for (int i = 1; i < argc; i++) {
        int r = cmdu_engine_flag(&eo.o, &eo.dm, argc, argv, &i, &e);
        if (r == 0) r = cmdu_sampler_flag(&sp, argc, argv, &i, &e);
        if (r < 0) goto fail;
        if (r > 0) continue;
        if (!strcmp(argv[i], "--ids")) {
            if (!(ids_s = cmdu_value(argc, argv, &i, &e))) goto fail;
        } else if (!strcmp(argv[i], "--max-new-tokens")) {
            const char *v = cmdu_value(argc, argv, &i, &e);
            if (!v || cmdu_int("--max-new-tokens", v, 0, 1 << 20, &max_new, &e)) goto fail;
        } else if (!strcmp(argv[i], "--timings") || !strcmp(argv[i], "--stats")) {
            stats = 1;
        } else if (!strcmp(argv[i], "--help")) {
            printf("usage: minicpmv generate --model DIR --ids 128000,791,4062 [--max-new-tokens N] [flags]\n"
                   "Prints the generated token ids, comma-separated.\n%s%s"
                   "  --ids A,B,C          prompt token ids (required)\n"
                   "  --max-new-tokens N   tokens to generate (default 16; 0 = prefill only)\n"
                   "  --timings            print load/prefill/decode times and speed on stderr\n"
                   "                       (--stats: the same, an older name)\n",
                   cmdu_engine_help, cmdu_sampler_help);
            printf("%s", devmap_opts_help());
            return 0;
        } else {
            err_set(&e, "unknown flag '%s' (see minicpmv generate --help)", argv[i]);
            goto fail;
        }
    }
    if (!ids_s) { err_set(&e, "--ids is required"); goto fail; }
    int32_t *ids = NULL;
    int n = 0;
    if (parse_ids(ids_s, &ids, &n, &e)) goto fail;
    struct engine *g = NULL;
    struct progress_term pt;
    eo.o.progress = progress_term_init(&pt, eo.o.quiet);
    int orc = engine_open(&g, &eo.o, &e);
    progress_term_end(&pt);
    if (orc) { free(ids); goto fail; }
    if (engine_check_ids(g, ids, n, &e)) {
        err_prefix(&e, "--ids");
        free(ids);
        engine_close(g);
        goto fail;
    }
    int32_t *out = malloc((size_t)(max_new ? max_new : 1) * sizeof *out);
    int n_out = 0;
    struct engine_gen_stats st = {0};
    const struct engine_gen q = {.ids = ids, .n = n, .max_new = (int)max_new, .sp = &sp};
    int rc = engine_generate(g, &q, out, &n_out, &st, &e);
    if (rc == 0) {
        for (int i = 0; i < n_out; i++) printf(i ? ",%d" : "%d", out[i]);
        printf("\n");
        if (stats)
            fprintf(stderr, "load %.2f s; prefill %lld tok in %.3f s (%.1f tok/s); decode %lld tok in %.3f s (%.2f tok/s)\n",
                    engine_load_seconds(g), (long long)st.n_prompt, st.t_prefill, st.n_prompt / (st.t_prefill > 0 ? st.t_prefill : 1e-9),
                    (long long)(st.n_gen > 0 ? st.n_gen - 1 : 0), st.t_decode,
                    (st.n_gen > 1 ? st.n_gen - 1 : 0) / (st.t_decode > 0 ? st.t_decode : 1e-9));
    }
    free(out);
    free(ids);
    engine_close(g);
    if (rc) goto fail;
    return 0;
fail:
    fprintf(stderr, "minicpmv generate: %s\n", e.msg);
    return 1;
}
