/* cmd_serve.c: `minicpmv serve --model DIR [--host 127.0.0.1] [--port 8080] [flags]` runs the
 * OpenAI-compatible server (src/server.h, docs/SERVER.md) until SIGTERM or SIGINT, then lets queued and
 * running requests finish and exits 0. The port is bound before the model loads (a clash is reported at
 * once; meanwhile /health answers 503 "loading"): stderr says "bound to http://ADDR; loading the model",
 * and once the model is loaded stdout says "listening on http://ADDR" (tests read it; --port 0 picks a
 * free port, named there; IPv6 in brackets). MINICPMV_TEST_LOAD_DELAY=SECONDS (tests only) waits that
 * long before loading, so that the loading state can be observed with the tiny model. A second signal during the drain exits at once;
 * --drain-timeout bounds the drain. The API key is read here (flag, file or MINICPMV_API_KEY), not in
 * the library. The chat page at / (src/ui/index.html, built into gen/ui_page.c by tools/embed_ui.sh) is on
 * unless --no-ui. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "beam.h"
#include "cmd_util.h"
#include "devmap.h"
#include "llm.h"
#include "server.h"

/* gen/ui_page.c (tools/embed_ui.sh): the page and its Content-Security-Policy */
extern const unsigned char minicpmv_ui_page[];
extern const size_t minicpmv_ui_page_len;
extern const char minicpmv_ui_csp[];

/* During the drain: a second SIGTERM/SIGINT exits at once (queued and running requests are dropped). */
static void *second_signal(void *p)
{
    (void)p;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    int sig = 0;
    sigwait(&set, &sig);
    fprintf(stderr, "minicpmv serve: second %s: exiting now\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    _exit(130);
}

int cmd_serve(int argc, char **argv)
{
    struct err e = {{0}};
    struct cmdu_engine_opts eo;
    cmdu_engine_opts_init(&eo);
    struct server_options so;
    server_options_default(&so);
    struct engine *g = NULL;
    struct server *srv = NULL;
    int rc = 1;
    long long v;
    double drain_timeout = 60;
    const char *api_key_arg = NULL, *api_key_file = NULL;
    char *api_key_buf = NULL;
    int graph_warm = 1;
    so.ui_page = (const char *)minicpmv_ui_page;
    so.ui_page_len = minicpmv_ui_page_len;
    so.ui_csp = minicpmv_ui_csp;
    for (int i = 1; i < argc; i++) {
        int r = cmdu_engine_flag(&eo.o, &eo.dm, argc, argv, &i, &e);
        if (r < 0) goto out;
        if (r > 0) continue;
        const char *f = argv[i], *x;
        if (!strcmp(f, "--host")) {
            if (!(so.host = cmdu_value(argc, argv, &i, &e))) goto out;
        } else if (!strcmp(f, "--port")) {
            if (!(x = cmdu_value(argc, argv, &i, &e)) || cmdu_int(f, x, 0, 65535, &v, &e)) goto out;
            so.port = (int)v;
        } else if (!strcmp(f, "--model-name")) {
            if (!(so.model_name = cmdu_value(argc, argv, &i, &e))) goto out;
        } else if (!strcmp(f, "--queue")) {
            if (!(x = cmdu_value(argc, argv, &i, &e)) || cmdu_int(f, x, 1, 4096, &v, &e)) goto out;
            so.queue = (int)v;
        } else if (!strcmp(f, "--image-cache")) {
            if (!(x = cmdu_value(argc, argv, &i, &e)) || cmdu_int(f, x, 0, 1024, &v, &e)) goto out;
            so.image_cache = (int)v;
        } else if (!strcmp(f, "--max-connections")) {
            if (!(x = cmdu_value(argc, argv, &i, &e)) || cmdu_int(f, x, 1, 4096, &v, &e)) goto out;
            so.max_connections = (int)v;
        } else if (!strcmp(f, "--max-body")) {
            int64_t b;
            if (!(x = cmdu_value(argc, argv, &i, &e))) goto out;
            if (parse_size(x, &b) || b < 1024) { err_set(&e, "--max-body: '%s' is not a size of at least 1KiB", x); goto out; }
            so.lim.max_body = (size_t)b;
        } else if (!strcmp(f, "--max-images")) {
            if (!(x = cmdu_value(argc, argv, &i, &e)) || cmdu_int(f, x, 0, 64, &v, &e)) goto out;
            so.lim.max_images = (int)v;
        } else if (!strcmp(f, "--max-image-pixels")) {
            if (!(x = cmdu_value(argc, argv, &i, &e)) || cmdu_int(f, x, 1, (long long)1e10, &v, &e)) goto out;
            so.lim.max_pixels = v;
        } else if (!strcmp(f, "--allow-files")) {
            if (!(so.lim.allow_dir = cmdu_value(argc, argv, &i, &e))) goto out;
        } else if (!strcmp(f, "--beams")) {
            if (!(x = cmdu_value(argc, argv, &i, &e)) || cmdu_int(f, x, 1, BEAM_MAX, &v, &e)) goto out;
            so.lim.default_beams = (int)v;
        } else if (!strcmp(f, "--max-beam-tokens")) {
            if (!(x = cmdu_value(argc, argv, &i, &e)) || cmdu_int(f, x, 0, 1LL << 40, &v, &e)) goto out;
            so.lim.max_beam_tokens = v;
        } else if (!strcmp(f, "--max-time") || !strcmp(f, "--read-timeout") || !strcmp(f, "--drain-timeout")) {
            if (!(x = cmdu_value(argc, argv, &i, &e))) goto out;
            char *end;
            double d = strtod(x, &end);
            if (end == x || *end || !(d >= 0 && d <= 86400)) {
                err_set(&e, "%s: '%s' is not a number of seconds in 0..86400", f, x);
                goto out;
            }
            if (!strcmp(f, "--max-time")) so.lim.max_time = d;
            else if (!strcmp(f, "--read-timeout")) so.read_timeout = d;
            else drain_timeout = d;
        } else if (!strcmp(f, "--max-image-memory") || !strcmp(f, "--image-cache-bytes")) {
            int64_t b;
            if (!(x = cmdu_value(argc, argv, &i, &e))) goto out;
            if (parse_size(x, &b) || b < 0) { err_set(&e, "%s: '%s' is not a size", f, x); goto out; }
            if (!strcmp(f, "--max-image-memory")) so.lim.max_image_bytes = b;
            else so.image_cache_bytes = (size_t)b;
        } else if (!strcmp(f, "--max-connections-per-ip")) {
            if (!(x = cmdu_value(argc, argv, &i, &e)) || cmdu_int(f, x, 0, 4096, &v, &e)) goto out;
            so.max_per_ip = (int)v;
        } else if (!strcmp(f, "--api-key")) {
            if (!(api_key_arg = cmdu_value(argc, argv, &i, &e))) goto out;
        } else if (!strcmp(f, "--api-key-file")) {
            if (!(api_key_file = cmdu_value(argc, argv, &i, &e))) goto out;
        } else if (!strcmp(f, "--cors-origin")) {
            if (!(so.cors_origin = cmdu_value(argc, argv, &i, &e))) goto out;
            if (!so.cors_origin[0] || strpbrk(so.cors_origin, "\r\n ,")) {
                err_set(&e, "--cors-origin '%s': expected one origin such as https://app.example.com, or *", so.cors_origin);
                goto out;
            }
        } else if (!strcmp(f, "--no-graph-warm")) {
            graph_warm = 0;
        } else if (!strcmp(f, "--no-ui")) {
            so.ui_page = NULL;
        } else if (!strcmp(f, "--log-requests")) {
            so.log_requests = 1;
        } else if (!strcmp(f, "--help")) {
            printf("usage: minicpmv serve --model DIR [--host 127.0.0.1] [--port 8080] [flags]\n%s"
                   "  --host ADDR          address or name to listen on: 127.0.0.1 (default), ::1, localhost,\n"
                   "                       0.0.0.0 (every IPv4 address), :: (every address, IPv4 too), a hostname\n"
                   "  --port N             TCP port (default 8080; 0 = any free port, printed on stdout)\n"
                   "  --model-name NAME    the id /v1/models lists (default minicpm-llama3-v-2_5)\n"
                   "  --queue N            requests that may wait while one runs (default 16; 503 above)\n"
                   "  --image-cache N      image sets whose encodings are kept (default 8)\n"
                   "  --max-connections N  open connections (default 64)\n"
                   "  --max-body SIZE      request body limit (default 32MiB; 413 above)\n"
                   "  --max-images N       images per request (default 8)\n"
                   "  --max-image-pixels N decoded pixels per image (default 40000000)\n"
                   "  --allow-files DIR    allow image_url file paths under DIR (default: none)\n"
                   "  --beams N            default to beam search with N beams (chat(sampling=False) is 3)\n"
                   "  --max-beam-tokens N  num_beams x max_tokens per request (default 8192; 0 = no cap)\n"
                   "  --max-time SECONDS   generation time per request; then finish_reason \"length\" (default 0 = none)\n"
                   "  --read-timeout SECONDS  time to send a whole request, headers and body (default 30; 0 = none)\n"
                   "  --drain-timeout SECONDS on SIGTERM, cancel what still runs after this (default 60; 0 = wait)\n"
                   "  --max-image-memory SIZE decoded image bytes held by all requests (default 1GiB; 503 above)\n"
                   "  --image-cache-bytes SIZE  byte budget of the image cache (default 256MiB)\n"
                   "  --max-connections-per-ip N  open connections per client address (default 0 = no limit)\n"
                   "  --api-key KEY        require Authorization: Bearer KEY on /v1/* (/health, the page stay open)\n"
                   "  --api-key-file FILE  the same, the key read from FILE (first line); or env MINICPMV_API_KEY\n"
                   "  --cors-origin ORIGIN allow browser requests from ORIGIN (or *); default: no CORS\n"
                   "  --no-ui              no chat page at / (404 there; the API only)\n"
                   "  --no-graph-warm      with --parallel N > 1 on one GPU: do not capture the batched decode\n"
                   "                       step's CUDA graphs of every batch size before listening (each size\n"
                   "                       is then captured at its first steps, a few ms each, while streams wait)\n"
                   "  --log-requests       one line per request on stderr\n",
                   cmdu_engine_help);
            printf("%s", devmap_opts_help());
            return 0;
        } else {
            err_set(&e, "unknown flag '%s' (see minicpmv serve --help)", f);
            goto out;
        }
    }
    /* the API key: the flag, a file, or the environment (the last two keep it out of `ps`) */
    if (api_key_arg && api_key_file) { err_set(&e, "--api-key and --api-key-file: give one"); goto out; }
    if (api_key_file) {
        size_t n;
        if (read_file(api_key_file, 4096, &api_key_buf, &n, &e)) { err_prefix(&e, "--api-key-file"); goto out; }
        api_key_buf[strcspn(api_key_buf, "\r\n")] = 0;
        so.api_key = api_key_buf;
    } else if (api_key_arg) {
        so.api_key = api_key_arg;
    } else if (getenv("MINICPMV_API_KEY") && getenv("MINICPMV_API_KEY")[0]) {
        so.api_key = getenv("MINICPMV_API_KEY");
    }
    if (so.api_key && (strlen(so.api_key) < 8 || strpbrk(so.api_key, " \t"))) {
        err_set(&e, "the API key must be at least 8 characters without spaces");
        goto out;
    }
    /* SIGTERM/SIGINT are taken synchronously by this thread; every thread started later inherits the mask */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (!so.model_name) so.model_name = "minicpm-llama3-v-2_5";
    /* bind first: a port clash shows at once, and /health tells "loading" from "down" while the model loads */
    if (server_start(&srv, NULL, &so, &e)) goto out;
    fprintf(stderr, "minicpmv serve: bound to http://%s; loading the model\n", server_address(srv));
    const char *delay = getenv("MINICPMV_TEST_LOAD_DELAY");
    if (delay && atof(delay) > 0) usleep((useconds_t)(atof(delay) * 1e6));
    if (engine_open(&g, &eo.o, &e)) goto out;
    if (graph_warm && engine_slots(g) > 1) { /* the scheduler's batch sizes, captured once before serving */
        const double t0 = time_now();
        if (engine_warm_batch_graphs(g, &e)) goto out;
        const int64_t n = engine_batch_stats(g)->warm_captures;
        if (n) fprintf(stderr, "minicpmv serve: %lld batched decode graphs captured in %.0f ms (--no-graph-warm: at first use)\n",
                       (long long)n, 1e3 * (time_now() - t0));
    }
    server_set_engine(srv, g);
    printf("listening on http://%s\n", server_address(srv));
    fflush(stdout);
    int sig = 0;
    sigwait(&set, &sig);
    fprintf(stderr, "minicpmv serve: %s: finishing queued requests (at most %g s; a second signal exits at once)\n",
            sig == SIGTERM ? "SIGTERM" : "SIGINT", drain_timeout);
    pthread_t second;
    if (!pthread_create(&second, NULL, second_signal, NULL)) pthread_detach(second);
    int n_cut = server_drain(srv, drain_timeout);
    if (n_cut) fprintf(stderr, "minicpmv serve: drain timeout: %d requests cancelled\n", n_cut);
    struct server_stats st;
    server_get_stats(srv, &st); /* after the drain: every request is counted */
    server_stop(srv);
    srv = NULL;
    fprintf(stderr, "minicpmv serve: %ld requests: %ld ok, %ld refused, %ld busy, %ld cancelled, %ld failed; %ld image cache hits; "
                    "%ld cut by --max-time, %ld connections closed by the read timeout, %ld unauthorized\n",
            st.requests, st.ok, st.client_errors, st.busy, st.cancelled, st.failed, st.cache_hits, st.timed_out, st.reaped,
            st.unauthorized);
    rc = 0;
out:
    if (rc) fprintf(stderr, "minicpmv serve: %s\n", e.msg);
    server_stop(srv);
    engine_close(g);
    free(api_key_buf);
    return rc;
}
