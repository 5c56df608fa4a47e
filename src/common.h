/* common.h: the error idiom, the always-on CHECK for programmer errors, logging and
 * the one monotonic clock. Owns nothing else.
 * Invariant: library code never exits; it returns -1 and fills a caller-owned struct err.
 * Only main() turns an error into an exit code. */
#ifndef MINICPMV_COMMON_H
#define MINICPMV_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct err {
    char msg[1024];
};

/* Formats the message into e (when e is not NULL) and returns -1, so callers can write
 * `return err_set(e, "...")`. */
int err_set(struct err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prepends "prefix: " to an existing message (used to add a file name at a boundary). */
int err_prefix(struct err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Programmer errors (shape/device mismatches between our own tensors): print file:line and abort. */
#define CHECK(cond)                                                                         \
    do {                                                                                    \
        if (!(cond)) {                                                                      \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);        \
            abort();                                                                        \
        }                                                                                   \
    } while (0)
#define CHECKF(cond, ...)                                                                   \
    do {                                                                                    \
        if (!(cond)) {                                                                      \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);        \
            fprintf(stderr, __VA_ARGS__);                                                   \
            fputc('\n', stderr);                                                            \
            abort();                                                                        \
        }                                                                                   \
    } while (0)

/* Monotonic clock in seconds. */
double time_now(void);

/* Logging to stderr; level 0 = quiet, 1 = info (default), 2 = debug. */
extern int log_level; /* the one process-wide knob, set only by main() */
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Reads a whole file into a NUL-terminated heap buffer, refusing files over max_bytes. */
int read_file(const char *path, size_t max_bytes, char **out, size_t *out_len, struct err *e);
/* Joins dir and name into out (size n); returns -1 with an error when it does not fit. */
int path_join(char *out, size_t n, const char *dir, const char *name, struct err *e);

/* A growable NUL-terminated byte buffer: the one way src/ appends formatted text to a heap string.
 * The size reserved always counts the terminating NUL (vsnprintf writes it), so no caller does
 * that arithmetic again. */
struct strbuf {
    char *p;       /* NUL-terminated once anything was appended; NULL before */
    size_t len;    /* bytes before the NUL */
    size_t cap;    /* bytes allocated */
};
/* Appends formatted text; returns -1 (buffer unchanged) when memory runs out. */
int strbuf_printf(struct strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends n raw bytes (which may hold NULs); the buffer stays NUL-terminated. */
int strbuf_append(struct strbuf *b, const void *data, size_t n);
void strbuf_free(struct strbuf *b);

/* Progress of a long step (placing weights on devices, writing a checkpoint): the library calls
 * fn(ctx, what, done, total) as bytes are done, the front end decides what to show (tools/progress.h).
 * A zeroed struct reports nothing. */
struct progress {
    void (*fn)(void *ctx, const char *what, uint64_t done, uint64_t total);
    void *ctx;
};

/* Parses sizes like "10GiB", "512MiB", "16GB", "1024" (bytes); returns -1 on malformed input, NaN,
 * a negative size or one of 2^63 bytes (8 EiB) or more (inf, 1e30GiB). */
int parse_size(const char *s, int64_t *out);

/* Byte strings in lexicographic order (a proper prefix first): <0, 0, >0. */
static inline int bytes_cmp(const void *a, size_t an, const void *b, size_t bn)
{
    int c = memcmp(a, b, an < bn ? an : bn);
    return c ? c : an < bn ? -1 : an > bn;
}

#endif
