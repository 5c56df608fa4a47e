/* cmd_chat.c: `minicpmv chat --model DIR [--image FILE ...] [-p "question"] [--system S] [flags]`.
 * With -p: one turn, the answer printed (streamed with --stream, timings with --timings). Without -p:
 * an interactive multi-turn chat that streams the answer as it is generated, with /image PATH (attach
 * an image to the next message), /reset, /exit, and a line of timings after each answer. --beams N:
 * beam search (chat(sampling=False) is --beams 3). Every turn is one chat turn (turn.h) and re-runs
 * the whole conversation as chat() does; the images' encodings come from an image cache (imgcache.h),
 * so only a new image costs a vision pass. The images come first in the user turn, as chat(image=...)
 * puts them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "beam.h"
#include "cmd_util.h"
#include "devmap.h"
#include "progress.h"
#include "imgcache.h"
#include "turn.h"

#define REPL_MAX_IMAGES 16
#define REPL_MAX_TURNS 512
#define REPL_MAX_LINE (1 << 20)

static int print_text(void *ctx, const char *text, size_t len)
{
    (void)ctx;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

struct repl {
    struct chat_msg msgs[REPL_MAX_TURNS];
    char *owned[REPL_MAX_TURNS];
    int n_msgs;
    struct image imgs[REPL_MAX_IMAGES];
    int n_imgs, n_pending;
};

static void repl_reset(struct repl *r)
{
    for (int i = 0; i < r->n_msgs; i++) free(r->owned[i]);
    for (int i = 0; i < r->n_imgs; i++) image_free(&r->imgs[i]);
    memset(r, 0, sizeof *r);
}

static int repl_add(struct repl *r, const char *role, const char *text, size_t len)
{
    if (r->n_msgs == REPL_MAX_TURNS) return -1;
    char *s = malloc(len + 1);
    if (!s) return -1;
    memcpy(s, text, len);
    s[len] = 0;
    r->owned[r->n_msgs] = s;
    r->msgs[r->n_msgs].role = role;
    r->msgs[r->n_msgs].content = s;
    r->n_msgs++;
    return 0;
}

/* One user turn: content = a marker per pending image, then the text (chat()'s order). */
static int repl_turn(struct engine *g, struct imgcache *cache, struct repl *r, const char *system, const char *text,
                     int max_new, const struct sampler_params *sp, int beams, int stream, int timings, struct err *e)
{
    size_t ml = strlen(CHAT_IMAGE_MARKER) + 1, tl = strlen(text);
    char *content = malloc((size_t)r->n_pending * ml + tl + 1);
    if (!content) return err_set(e, "out of memory");
    size_t k = 0;
    for (int i = 0; i < r->n_pending; i++) {
        memcpy(content + k, CHAT_IMAGE_MARKER "\n", ml);
        k += ml;
    }
    memcpy(content + k, text, tl + 1);
    int rc = repl_add(r, "user", content, k + tl);
    free(content);
    if (rc) return err_set(e, "the conversation is too long (%d messages); /reset", REPL_MAX_TURNS);
    /* the answer may take max_new tokens, or what the context leaves */
    struct turn_request rq = {.system = system, .msgs = r->msgs, .n_msgs = r->n_msgs, .images = r->imgs,
                              .n_images = r->n_imgs, .max_new_default = max_new, .sp = *sp, .num_beams = beams,
                              .length_penalty = 1.0f};
    const struct turn_io io = {.cache = cache, .cb = stream ? print_text : NULL};
    struct turn *t = NULL;
    struct turn_result res;
    if (turn_prepare(&t, g, &rq, e)) {
        if (strstr(e->msg, "maximum context length")) err_prefix(e, "the conversation is full (/reset starts over)");
        goto fail;
    }
    rc = turn_run(t, g, &io, &res, e);
    turn_free(t);
    if (rc) goto fail;
    printf("%s\n", stream ? "" : res.text);
    fflush(stdout); /* the timings line (stderr) comes after the answer */
    r->n_pending = 0;
    if (repl_add(r, "assistant", res.text, strlen(res.text))) {
        turn_result_free(&res);
        return err_set(e, "the conversation is too long; /reset");
    }
    if (timings)
        fprintf(stderr, "[%d image%s: vision %.1f ms%s | prompt %d tok: prefill %.1f ms | %d tok: decode %.1f ms, %.2f tok/s%s]\n",
                r->n_imgs, r->n_imgs == 1 ? "" : "s", 1e3 * res.t_vision, res.image_cached ? " (cached)" : "",
                res.n_prompt, 1e3 * res.t_prefill, res.n_gen, 1e3 * res.t_decode,
                res.n_gen > 1 && res.t_decode > 0 ? (res.n_gen - 1) / res.t_decode : 0.0, beams > 1 ? ", beam search" : "");
    turn_result_free(&res);
    return 0;
fail:
    /* forget the failed user message (and its images stay pending) */
    r->n_msgs--;
    free(r->owned[r->n_msgs]);
    return -1;
}

int cmd_chat(int argc, char **argv)
{
    struct err e = {{0}};
    struct cmdu_engine_opts eo;
    cmdu_engine_opts_init(&eo);
    struct sampler_params sp;
    sampler_defaults(&sp);
    const char *prompt = NULL, *system = NULL, *paths[REPL_MAX_IMAGES];
    int n_paths = 0, beams = 0, stream = 0, timings = 0;
    long long max_new = TURN_DEFAULT_MAX_NEW, v;
    struct engine *g = NULL;
    struct imgcache *cache = NULL;
    static struct repl r; /* large; one per process */
    char *line = NULL;
    int rc = 1;
    for (int i = 1; i < argc; i++) {
        int x = cmdu_engine_flag(&eo.o, &eo.dm, argc, argv, &i, &e);
        if (x == 0) x = cmdu_sampler_flag(&sp, argc, argv, &i, &e);
        if (x < 0) goto out;
        if (x > 0) continue;
        const char *f = argv[i], *val;
        if (!strcmp(f, "--image")) {
            if (n_paths == REPL_MAX_IMAGES) { err_set(&e, "at most %d images", REPL_MAX_IMAGES); goto out; }
            if (!(paths[n_paths++] = cmdu_value(argc, argv, &i, &e))) goto out;
        } else if (!strcmp(f, "-p") || !strcmp(f, "--prompt")) {
            if (!(prompt = cmdu_value(argc, argv, &i, &e))) goto out;
        } else if (!strcmp(f, "--system")) {
            if (!(system = cmdu_value(argc, argv, &i, &e))) goto out;
        } else if (!strcmp(f, "--max-new-tokens")) {
            if (!(val = cmdu_value(argc, argv, &i, &e)) || cmdu_int(f, val, 1, 1 << 20, &max_new, &e)) goto out;
        } else if (!strcmp(f, "--beams")) {
            if (!(val = cmdu_value(argc, argv, &i, &e)) || cmdu_int(f, val, 1, BEAM_MAX, &v, &e)) goto out;
            beams = (int)v;
        } else if (!strcmp(f, "--stream")) {
            stream = 1;
        } else if (!strcmp(f, "--timings") || !strcmp(f, "--stats")) {
            timings = 1;
        } else if (!strcmp(f, "--help")) {
            printf("usage: minicpmv chat --model DIR [--image FILE]... -p \"question\" [--system S] [flags]\n%s%s"
                   "  -p, --prompt TEXT    the question (without it: an interactive chat)\n"
                   "  --image FILE         an image (JPEG, PNG, WebP, ...) before the question; repeatable\n"
                   "  --system TEXT        a system message\n"
                   "  --max-new-tokens N   answer length limit (default: 1024, or what the context leaves)\n"
                   "  --stream             print the answer as it is generated\n"
                   "  --timings            print vision/prefill/decode times on stderr (--stats: the same)\n"
                   "  --beams N            beam search with N beams (chat(sampling=False) is 3, penalty 1.2)\n"
                   "  (without -p: an interactive chat; /help lists its commands)\n",
                   cmdu_engine_help, cmdu_sampler_help);
            printf("%s", devmap_opts_help());
            return 0;
        } else {
            err_set(&e, "unknown flag '%s' (see minicpmv chat --help)", f);
            goto out;
        }
    }
    /* --beams N alone means chat(sampling=False): penalty 1.2 unless given */
    if (beams > 1) {
        int rp = 0;
        for (int i = 1; i < argc; i++) rp |= !strcmp(argv[i], "--repetition-penalty");
        if (!rp) sp.repetition_penalty = 1.2f;
        sp.greedy = true;
    }
    struct image_opts io;
    image_opts_default(&io);
    for (int i = 0; i < n_paths; i++) {
        if (image_load(&r.imgs[r.n_imgs], paths[i], &io, &e)) goto out;
        r.n_imgs++;
        r.n_pending++;
    }
    struct progress_term pt;
    eo.o.progress = progress_term_init(&pt, eo.o.quiet);
    int orc = engine_open(&g, &eo.o, &e);
    progress_term_end(&pt);
    if (orc) goto out;
    if (imgcache_init(&cache, 4, &e)) goto out;
    if (prompt) {
        if (repl_turn(g, cache, &r, system, prompt, (int)max_new, &sp, beams, stream, timings, &e)) goto out;
        rc = 0;
        goto out;
    }
    fprintf(stderr, "minicpmv chat: type a message; /help lists the commands\n");
    size_t cap = 0;
    for (;;) {
        fprintf(stderr, "> ");
        fflush(stderr);
        ssize_t n = getline(&line, &cap, stdin);
        if (n < 0) break;
        if (n > REPL_MAX_LINE) { fprintf(stderr, "line too long (over %d bytes)\n", REPL_MAX_LINE); continue; }
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        if (!n) continue;
        if (!strcmp(line, "/exit") || !strcmp(line, "/quit")) break;
        if (!strcmp(line, "/help") || !strcmp(line, "/?")) {
            fprintf(stderr, "/image PATH   attach an image (JPEG, PNG, WebP, ...) to your next message\n"
                            "/reset        start a new conversation (forgets messages and images)\n"
                            "/exit, /quit  leave (so does end of input, Ctrl-D)\n"
                            "/help, /?     this list\n"
                            "//text        send a message that starts with '/' (as \"/text\")\n");
            continue;
        }
        if (!strcmp(line, "/reset")) {
            repl_reset(&r);
            fprintf(stderr, "(new conversation)\n");
            continue;
        }
        if (!strncmp(line, "/image", 6) && (line[6] == ' ' || !line[6])) {
            const char *path = line + 6;
            while (*path == ' ') path++;
            if (!*path) { fprintf(stderr, "usage: /image PATH\n"); continue; }
            if (r.n_imgs == REPL_MAX_IMAGES) { fprintf(stderr, "at most %d images; /reset\n", REPL_MAX_IMAGES); continue; }
            struct err ie = {{0}};
            if (image_load(&r.imgs[r.n_imgs], path, &io, &ie)) { fprintf(stderr, "%s\n", ie.msg); continue; }
            fprintf(stderr, "(image %d: %dx%d, attached to your next message)\n", r.n_imgs + 1, r.imgs[r.n_imgs].w,
                    r.imgs[r.n_imgs].h);
            r.n_imgs++;
            r.n_pending++;
            continue;
        }
        if (line[0] == '/' && line[1] != '/') { fprintf(stderr, "unknown command %s (/help lists them)\n", line); continue; }
        struct err te = {{0}};
        if (repl_turn(g, cache, &r, system, line[0] == '/' ? line + 1 : line, (int)max_new, &sp, beams, 1, 1, &te))
            fprintf(stderr, "\nerror: %s\n", te.msg);
        sp.seed++; /* a new draw each turn, reproducible from --seed */
    }
    rc = 0;
out:
    if (rc) fprintf(stderr, "minicpmv chat: %s\n", e.msg);
    free(line);
    repl_reset(&r);
    imgcache_free(cache);
    engine_close(g);
    return rc;
}
