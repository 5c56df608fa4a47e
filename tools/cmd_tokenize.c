/* cmd_tokenize.c: `minicpmv tokenize`: text on stdin -> ids on stdout (one line, space-separated), or
 * --decode (ids on stdin -> text, nothing added), or --bench FILE (encode MB/s, one thread).
 * The input is taken byte for byte (no newline stripping); errors are one line on stderr with exit 1. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd.h"
#include "tokenizer.h"

#define STDIN_MAX ((size_t)1 << 30)

static void usage(void)
{
    fprintf(stderr,
            "usage: minicpmv tokenize (--model DIR | --tokenizer-json FILE) [--decode [--no-cleanup]] [--add-special]\n"
            "                         [--bench FILE] [--write-minicpmv LLAMA3_TOKENIZER_JSON]\n"
            "  default      : UTF-8 text on stdin -> ids, space-separated, on one line\n"
            "  --decode     : ids on stdin -> text (special tokens kept; clean-up as tokenizer_config.json says)\n"
            "  --bench FILE : encode FILE repeatedly on one thread and print MB/s\n"
            "  --write-minicpmv F : write MiniCPM-V 2.5's tokenizer files into --model DIR from Meta's tokenizer.json F\n");
}

static int read_stdin(char **out, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    if (!b) return -1;
    for (;;) {
        if (n == cap) {
            if (cap >= STDIN_MAX) {
                free(b);
                errno = EFBIG;
                return -1;
            }
            char *nb = realloc(b, cap * 2);
            if (!nb) {
                free(b);
                return -1;
            }
            b = nb;
            cap *= 2;
        }
        size_t k = fread(b + n, 1, cap - n, stdin);
        n += k;
        if (k == 0) break;
    }
    if (ferror(stdin)) {
        free(b);
        return -1;
    }
    *out = b;
    *len = n;
    return 0;
}

static int bench(const struct tokenizer *tok, const char *path)
{
    struct err e = {{0}};
    char *text;
    size_t len;
    if (read_file(path, (size_t)1 << 30, &text, &len, &e)) {
        fprintf(stderr, "minicpmv tokenize: %s\n", e.msg);
        return 1;
    }
    int32_t *ids = NULL;
    int n = 0;
    double best = 1e30, total = 0;
    int runs = 0;
    /* one warm-up run, then at least 3 runs and 2 s */
    for (int i = 0; i < 1 + 3 || total < 2.0; i++) {
        free(ids);
        double t0 = time_now();
        if (tokenizer_encode(tok, text, len, 0, &ids, &n, &e)) {
            fprintf(stderr, "minicpmv tokenize: %s: %s\n", path, e.msg);
            free(text);
            return 1;
        }
        double dt = time_now() - t0;
        if (i == 0) continue;
        runs++;
        total += dt;
        if (dt < best) best = dt;
        if (i > 100) break;
    }
    printf("encode: %zu bytes -> %d tokens; best %.3f s = %.1f MB/s, mean %.1f MB/s over %d runs (1 thread)\n", len, n, best,
           len / best / 1e6, len * runs / total / 1e6, runs);
    free(ids);
    free(text);
    return 0;
}

int cmd_tokenize(int argc, char **argv)
{
    const char *model = NULL, *json = NULL, *bench_file = NULL, *write_from = NULL;
    int decode = 0, cleanup = TOKENIZER_CLEANUP_DEFAULT, flags = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(a, "--tokenizer-json") && i + 1 < argc) json = argv[++i];
        else if (!strcmp(a, "--bench") && i + 1 < argc) bench_file = argv[++i];
        else if (!strcmp(a, "--write-minicpmv") && i + 1 < argc) write_from = argv[++i];
        else if (!strcmp(a, "--decode")) decode = 1;
        else if (!strcmp(a, "--no-cleanup")) cleanup = 0;
        else if (!strcmp(a, "--add-special")) flags |= TOKENIZER_ADD_SPECIAL;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage();
            return 0;
        } else if (!strcmp(a, "--model") || !strcmp(a, "--tokenizer-json") || !strcmp(a, "--bench") ||
                   !strcmp(a, "--write-minicpmv")) {
            fprintf(stderr, "minicpmv tokenize: %s needs a value\n", a);
            return 2;
        } else {
            fprintf(stderr, "minicpmv tokenize: unknown flag '%s' (see minicpmv tokenize --help)\n", a);
            return 2;
        }
    }
    struct err e = {{0}};
    if (write_from) {
        if (!model) {
            fprintf(stderr, "minicpmv tokenize: --write-minicpmv needs --model DIR (the output directory)\n");
            return 2;
        }
        if (tokenizer_write_minicpmv_files(write_from, model, &e)) {
            fprintf(stderr, "minicpmv tokenize: %s\n", e.msg);
            return 1;
        }
        return 0;
    }
    if (!model == !json) {
        fprintf(stderr, "minicpmv tokenize: give exactly one of --model DIR and --tokenizer-json FILE\n");
        return 2;
    }
    struct tokenizer *tok;
    if (model ? tokenizer_load(&tok, model, &e) : tokenizer_load_file(&tok, json, &e)) {
        fprintf(stderr, "minicpmv tokenize: %s\n", e.msg);
        return 1;
    }
    int rc = 1;
    char *in = NULL, *text = NULL;
    int32_t *ids = NULL;
    size_t len;
    if (bench_file) {
        rc = bench(tok, bench_file);
        goto out;
    }
    if (read_stdin(&in, &len)) {
        fprintf(stderr, "minicpmv tokenize: reading stdin: %s\n", strerror(errno));
        goto out;
    }
    if (decode) {
        size_t cap = 1024;
        int n = 0;
        ids = malloc(cap * sizeof *ids);
        char *p = in, *end = in + len;
        while (ids) {
            while (p < end && strchr(" \t\r\n,", *p)) p++;
            if (p >= end) break;
            char *q;
            errno = 0;
            long v = strtol(p, &q, 10);
            if (q == p || errno || (q < end && !strchr(" \t\r\n,", *q))) {
                int k = 0;
                while (k < 20 && p + k < end && !strchr(" \t\r\n,", p[k])) k++;
                fprintf(stderr, "minicpmv tokenize: --decode: \"%.*s\" is not a token id\n", k, p);
                goto out;
            }
            if (v < INT32_MIN || v > INT32_MAX) v = -1; /* reported as out of range by tokenizer_decode */
            if ((size_t)n == cap) {
                int32_t *ni = realloc(ids, 2 * cap * sizeof *ids);
                if (!ni) break;
                ids = ni;
                cap *= 2;
            }
            ids[n++] = (int32_t)v;
            p = q;
        }
        if (!ids) {
            fprintf(stderr, "minicpmv tokenize: out of memory\n");
            goto out;
        }
        size_t tl;
        if (tokenizer_decode(tok, ids, n, cleanup, &text, &tl, &e)) {
            fprintf(stderr, "minicpmv tokenize: %s\n", e.msg);
            goto out;
        }
        fwrite(text, 1, tl, stdout);
    } else {
        int n;
        if (tokenizer_encode(tok, in, len, flags, &ids, &n, &e)) {
            fprintf(stderr, "minicpmv tokenize: %s\n", e.msg);
            goto out;
        }
        for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
        putchar('\n');
    }
    rc = fflush(stdout) ? 1 : 0;
out:
    free(in);
    free(ids);
    free(text);
    tokenizer_free(tok);
    return rc;
}
