/* cmd_chat.c: `minicpmv chat --model DIR [--image FILE ...] -p "question" [--system S] [flags]`
 * prints the answer. The images come first in the user turn, as chat(image=...) puts them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "cmd_util.h"
#include "devmap.h"
#include "image.h"
#include "progress.h"

#define MAX_IMAGES 16

static int print_chunk(void *ctx, const char *text, size_t len)
{
    (void)ctx;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

int cmd_repl_wants(int argc, char **argv); /* tools/cmd_repl.c */
int cmd_repl(int argc, char **argv);

int cmd_chat(int argc, char **argv)
{
    /* no -p: the interactive REPL; --beams: beam search (both in tools/cmd_repl.c) */
    if (cmd_repl_wants(argc, argv)) return cmd_repl(argc, argv);
    struct err e = {{0}};
    struct engine_options o;
    engine_options_default(&o);
    struct devmap_opts dmo;
    devmap_opts_init(&dmo);
    struct sampler_params sp;
    sampler_defaults(&sp);
    const char *paths[MAX_IMAGES], *prompt = NULL, *system = NULL;
    int n_img = 0, stream = 0, timings = 0;
    long long max_new = 1024;
    struct image imgs[MAX_IMAGES];
    memset(imgs, 0, sizeof imgs);
    struct engine *g = NULL;
    char *content = NULL;
    int rc = 1;
    for (int i = 1; i < argc; i++) {
        int r = cmdu_engine_flag(&o, &dmo, argc, argv, &i, &e);
        if (r == 0) r = cmdu_sampler_flag(&sp, argc, argv, &i, &e);
        if (r < 0) goto out;
        if (r > 0) continue;
        const char *f = argv[i];
        if (!strcmp(f, "--image")) {
            if (n_img == MAX_IMAGES) { err_set(&e, "at most %d images", MAX_IMAGES); goto out; }
            if (!(paths[n_img++] = cmdu_value(argc, argv, &i, &e))) goto out;
        } else if (!strcmp(f, "-p") || !strcmp(f, "--prompt")) {
            if (!(prompt = cmdu_value(argc, argv, &i, &e))) goto out;
        } else if (!strcmp(f, "--system")) {
            if (!(system = cmdu_value(argc, argv, &i, &e))) goto out;
        } else if (!strcmp(f, "--max-new-tokens")) {
            const char *v = cmdu_value(argc, argv, &i, &e);
            if (!v || cmdu_int(f, v, 1, 1 << 20, &max_new, &e)) goto out;
        } else if (!strcmp(f, "--stream")) {
            stream = 1;
        } else if (!strcmp(f, "--timings") || !strcmp(f, "--stats")) {
            timings = 1;
        } else if (!strcmp(f, "--help")) {
            printf("usage: minicpmv chat --model DIR [--image FILE]... -p \"question\" [--system S] [flags]\n%s%s"
                   "  -p, --prompt TEXT    the question (without it: an interactive chat)\n"
                   "  --image FILE         an image (JPEG, PNG, WebP, ...) before the question; repeatable\n"
                   "  --system TEXT        a system message\n"
                   "  --max-new-tokens N   answer length limit (default 1024)\n"
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
    if (!prompt) { err_set(&e, "-p \"question\" is required"); goto out; }
    struct image_opts io;
    image_opts_default(&io);
    for (int i = 0; i < n_img; i++)
        if (image_load(&imgs[i], paths[i], &io, &e)) goto out;
    /* content = one marker per image, then the question, joined by "\n" (spec §6.1 step 2-3) */
    size_t cl = strlen(prompt) + 1 + (size_t)n_img * (strlen(CHAT_IMAGE_MARKER) + 1);
    content = malloc(cl);
    if (!content) { err_set(&e, "out of memory"); goto out; }
    content[0] = 0;
    for (int i = 0; i < n_img; i++) {
        strcat(content, CHAT_IMAGE_MARKER);
        strcat(content, "\n");
    }
    strcat(content, prompt);
    struct progress_term pt;
    o.progress = progress_term_init(&pt, o.quiet);
    int orc = engine_open(&g, &o, &e);
    progress_term_end(&pt);
    if (orc) goto out;
    struct chat_msg msg = {"user", content};
    struct engine_chat_request rq = {.system = system, .msgs = &msg, .n_msgs = 1, .images = imgs,
                                     .n_images = n_img, .max_new_tokens = (int)max_new, .sampling = sp};
    struct engine_chat_result res;
    if (engine_chat(g, &rq, stream ? print_chunk : NULL, NULL, &res, &e)) goto out;
    if (stream) printf("\n");
    else printf("%s\n", res.text);
    if (timings)
        fprintf(stderr, "%d image pieces: vision %.1f ms; prompt %d tok: prefill %.1f ms; %d tok: decode %.1f ms (%.2f tok/s)\n",
                res.n_pieces, 1e3 * res.t_vision, res.n_prompt, 1e3 * res.t_prefill, res.n_ids, 1e3 * res.t_decode,
                res.n_ids > 1 ? (res.n_ids - 1) / res.t_decode : 0.0);
    engine_chat_result_free(&res);
    rc = 0;
out:
    if (rc) fprintf(stderr, "minicpmv chat: %s\n", e.msg);
    for (int i = 0; i < n_img; i++) image_free(&imgs[i]);
    free(content);
    engine_close(g);
    return rc;
}
