/* progress.c: the CLI's progress line (progress.h). */
#include "progress.h"

#include <string.h>
#include <unistd.h>

void progress_format(char *buf, size_t n, unsigned long long done, unsigned long long total, double secs)
{
    const double gb = 1e9, rate = secs > 0 ? (double)done / secs : 0;
    const int prec = total < 10 * gb ? 2 : 1;
    int k = snprintf(buf, n, "%.*f / %.*f GB", prec, done / gb, prec, total / gb);
    if (k < 0 || (size_t)k >= n) return;
    if (secs >= 0.5 && done > 0) {
        int k2 = snprintf(buf + k, n - (size_t)k, "  %.2f GB/s", rate / gb);
        if (k2 < 0 || (size_t)(k += k2) >= n) return;
        if (done < total && done * 100 >= total) {
            const double eta = (double)(total - done) / rate;
            snprintf(buf + k, n - (size_t)k, eta >= 100 ? "  ETA %.0f min" : "  ETA %.0f s", eta >= 100 ? eta / 60 : eta);
        }
    }
}

static void progress_term_cb(void *ctx, const char *what, uint64_t done, uint64_t total)
{
    struct progress_term *p = ctx;
    if (!p->f) return;
    const double now = time_now();
    if (p->drawn && done < total && now - p->last < 0.2) return;
    p->last = now;
    char line[128];
    progress_format(line, sizeof line, (unsigned long long)done, (unsigned long long)total, now - p->t0);
    fprintf(p->f, "\r%s  %s\033[K", what, line);
    fflush(p->f);
    p->drawn = 1;
}

struct progress progress_term_init_file(struct progress_term *p, FILE *f)
{
    memset(p, 0, sizeof *p);
    p->f = f;
    p->t0 = p->last = time_now();
    return (struct progress){progress_term_cb, p};
}

struct progress progress_term_init(struct progress_term *p, int quiet)
{
    return progress_term_init_file(p, !quiet && isatty(STDERR_FILENO) ? stderr : NULL);
}

void progress_term_end(struct progress_term *p)
{
    if (!p->f || !p->drawn) return;
    fprintf(p->f, "  (%.1f s)\n", time_now() - p->t0);
    fflush(p->f);
    p->drawn = 0;
}
