/* progress.h: the CLI's progress line for long steps (loading weights, writing a checkpoint):
 * "loading weights  3.2 / 17.0 GB  1.5 GB/s  ETA 9 s", redrawn in place at most 5 times a second
 * on stderr when stderr is a terminal, and nothing otherwise or with --quiet. The library reports
 * through struct progress (common.h); only this front-end file prints. */
#ifndef MINICPMV_PROGRESS_H
#define MINICPMV_PROGRESS_H

#include <stdio.h>

#include "common.h"

struct progress_term {
    FILE *f;         /* stderr, or NULL: silent */
    double t0, last; /* start of the step, last redraw */
    int drawn;       /* a line is on the screen (progress_term_end closes it) */
};

/* Silent when quiet or when stderr is not a terminal. Returns the callback to hand to the library. */
struct progress progress_term_init(struct progress_term *p, int quiet);
/* As above on any stream f (tests): always draws. */
struct progress progress_term_init_file(struct progress_term *p, FILE *f);
/* Ends the line (with the total time) if one was drawn. */
void progress_term_end(struct progress_term *p);
/* "3.2 / 17.0 GB  1.5 GB/s  ETA 9 s" (two decimals below 10 GB) for done of total bytes after secs seconds (no ETA before the
 * first 1% or 0.5 s). */
void progress_format(char *buf, size_t n, unsigned long long done, unsigned long long total, double secs);

#endif
