/* cmd_serve.c: `minicpmv serve --model DIR [--host 127.0.0.1] [--port 8080] [flags]` runs the
 * OpenAI-compatible server (src/server.h, docs/SERVER.md) until SIGTERM or SIGINT, then lets queued and
 * running requests finish and exits 0. --port 0 picks a free port; the chosen one is printed on stdout
 * as "listening on http://HOST:PORT" (tests read it). */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "beam.h"
#include "cmd_util.h"
#include "devmap.h"
#include "server.h"

int cmd_serve(int argc, char **argv)
{
    struct err e = {{0}};
    struct engine_options o;
    engine_options_default(&o);
    struct devmap_opts dmo;
    devmap_opts_init(&dmo);
    struct server_options so;
    server_options_default(&so);
    struct engine *g = NULL;
    struct server *srv = NULL;
    int rc = 1;
    long long v;
    for (int i = 1; i < argc; i++) {
        int r = cmdu_engine_flag(&o, &dmo, argc, argv, &i, &e);
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
        } else if (!strcmp(f, "--log-requests")) {
            so.log_requests = 1;
        } else if (!strcmp(f, "--help")) {
            printf("usage: minicpmv serve --model DIR [--host 127.0.0.1] [--port 8080] [flags]\n%s"
                   "  --host ADDR          IPv4 address to listen on (default 127.0.0.1)\n"
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
                   "  --log-requests       one line per request on stderr\n",
                   cmdu_engine_help);
            printf("%s", devmap_opts_help());
            return 0;
        } else {
            err_set(&e, "unknown flag '%s' (see minicpmv serve --help)", f);
            goto out;
        }
    }
    /* SIGTERM/SIGINT are taken synchronously by this thread; every thread started later inherits the mask */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (engine_open(&g, &o, &e)) goto out;
    if (!so.model_name) so.model_name = "minicpm-llama3-v-2_5";
    if (server_start(&srv, g, &so, &e)) goto out;
    printf("listening on http://%s:%d\n", so.host, server_port(srv));
    fflush(stdout);
    int sig = 0;
    sigwait(&set, &sig);
    fprintf(stderr, "minicpmv serve: %s: finishing queued requests\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    struct server_stats st;
    server_get_stats(srv, &st);
    server_stop(srv);
    srv = NULL;
    fprintf(stderr, "minicpmv serve: %ld requests: %ld ok, %ld refused, %ld busy, %ld cancelled, %ld failed; %ld image cache hits\n",
            st.requests, st.ok, st.client_errors, st.busy, st.cancelled, st.failed, st.cache_hits);
    rc = 0;
out:
    if (rc) fprintf(stderr, "minicpmv serve: %s\n", e.msg);
    server_stop(srv);
    engine_close(g);
    return rc;
}
