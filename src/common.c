/* common.c: error formatting, logging, clock, small file helpers. */
#define _POSIX_C_SOURCE 200809L
#include "common.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

int log_level = 1;

int err_set(struct err *e, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int err_prefix(struct err *e, const char *fmt, ...)
{
    if (e) {
        char pre[512], old[sizeof e->msg];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(pre, sizeof pre, fmt, ap);
        va_end(ap);
        memcpy(old, e->msg, sizeof old);
        snprintf(e->msg, sizeof e->msg, "%s: %s", pre, old);
    }
    return -1;
}

double time_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void log_info(const char *fmt, ...)
{
    if (log_level < 1) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void log_debug(const char *fmt, ...)
{
    if (log_level < 2) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int read_file(const char *path, size_t max_bytes, char **out, size_t *out_len, struct err *e)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return err_set(e, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        fclose(f);
        return err_set(e, "%s: cannot stat: %s", path, strerror(errno));
    }
    if ((uint64_t)st.st_size > max_bytes) {
        fclose(f);
        return err_set(e, "%s: file is %lld bytes, over the limit of %zu", path, (long long)st.st_size, max_bytes);
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        fclose(f);
        return err_set(e, "%s: out of memory reading %zu bytes", path, n);
    }
    if (n && fread(buf, 1, n, f) != n) {
        free(buf);
        fclose(f);
        return err_set(e, "%s: short read", path);
    }
    fclose(f);
    buf[n] = 0;
    *out = buf;
    if (out_len) *out_len = n;
    return 0;
}

int path_join(char *out, size_t n, const char *dir, const char *name, struct err *e)
{
    int k = snprintf(out, n, "%s/%s", dir, name);
    if (k < 0 || (size_t)k >= n) return err_set(e, "path too long: %s/%s", dir, name);
    return 0;
}

int parse_size(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    /* !(v >= 0) also refuses NaN ("nan" parses); inf and huge values are refused below */
    if (end == s || errno || !(v >= 0)) return -1;
    while (isspace((unsigned char)*end)) end++;
    double mul = 1;
    if (!*end || !strcmp(end, "B")) mul = 1;
    else if (!strcasecmp(end, "KiB")) mul = 1024.0;
    else if (!strcasecmp(end, "MiB")) mul = 1024.0 * 1024;
    else if (!strcasecmp(end, "GiB")) mul = 1024.0 * 1024 * 1024;
    else if (!strcasecmp(end, "TiB")) mul = 1024.0 * 1024 * 1024 * 1024;
    else if (!strcasecmp(end, "KB")) mul = 1e3;
    else if (!strcasecmp(end, "MB")) mul = 1e6;
    else if (!strcasecmp(end, "GB")) mul = 1e9;
    else if (!strcasecmp(end, "TB")) mul = 1e12;
    else return -1;
    /* the product must fit int64_t before the cast (a cast of an out-of-range double is undefined):
     * 2^63 bytes (8 EiB) and above, inf included, are refused */
    const double b = v * mul;
    if (!(b < 9223372036854775808.0)) return -1;
    *out = (int64_t)b;
    return 0;
}

/* Makes room for extra bytes plus the NUL, growing geometrically. */
static int strbuf_reserve(struct strbuf *b, size_t extra)
{
    if (extra > SIZE_MAX / 2 - b->len - 1) return -1;
    size_t need = b->len + extra + 1;
    if (need <= b->cap) return 0;
    size_t nc = b->cap ? b->cap : 64;
    while (nc < need) nc *= 2;
    char *x = realloc(b->p, nc);
    if (!x) return -1;
    b->p = x;
    b->cap = nc;
    return 0;
}

int strbuf_printf(struct strbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || strbuf_reserve(b, (size_t)n)) return -1;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

int strbuf_append(struct strbuf *b, const void *data, size_t n)
{
    if (strbuf_reserve(b, n)) return -1;
    if (n) memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

void strbuf_free(struct strbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}
