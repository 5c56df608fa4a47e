/* test_progress.c: the CLI's progress line (tools/progress.h): the text for given bytes and times,
 * worked out by hand, and that the line is drawn on a stream, redrawn in place and closed. */
#include <string.h>

#include "progress.h"
#include "t.h"

static void test_format(void)
{
    char b[128];
    /* 3.2 of 17 GB in 2 s: 1.6 GB/s, 13.8 GB left -> 8.6 s -> "9 s" */
    progress_format(b, sizeof b, 3200000000ull, 17000000000ull, 2.0);
    T_EQ_STR(b, "3.2 / 17.0 GB  1.60 GB/s  ETA 9 s");
    /* below 10 GB two decimals; before 0.5 s no speed and no ETA */
    progress_format(b, sizeof b, 70000000ull, 140000000ull, 0.2);
    T_EQ_STR(b, "0.07 / 0.14 GB");
    /* done: the speed, no ETA */
    progress_format(b, sizeof b, 140000000ull, 140000000ull, 1.0);
    T_EQ_STR(b, "0.14 / 0.14 GB  0.14 GB/s");
    /* a long wait is said in minutes: 1 of 17 GB at 0.01 GB/s -> 1600 s -> 27 min */
    progress_format(b, sizeof b, 1000000000ull, 17000000000ull, 100.0);
    T_EQ_STR(b, "1.0 / 17.0 GB  0.01 GB/s  ETA 27 min");
    /* a small buffer truncates, never overflows */
    char s[8];
    progress_format(s, sizeof s, 3200000000ull, 17000000000ull, 2.0);
    T_EQ_STR(s, "3.2 / 1");
}

static void test_draw(void)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    T_ASSERT(f != NULL);
    struct progress_term pt;
    struct progress p = progress_term_init_file(&pt, f);
    p.fn(p.ctx, "loading weights", 100, 1000);
    p.fn(p.ctx, "loading weights", 200, 1000); /* within 0.2 s: not redrawn */
    p.fn(p.ctx, "loading weights", 1000, 1000); /* the end is always drawn */
    progress_term_end(&pt);
    fclose(f);
    T_CONTAINS(text, "\rloading weights  0.00 / 0.00 GB");
    T_ASSERTF(strstr(text, "\n") == text + len - 1, "one line, closed once: %s", text);
    int redraws = 0;
    for (const char *q = text; (q = strchr(q, '\r')); q++) redraws++;
    T_EQ_INT(redraws, 2);
    free(text);
    /* silent: nothing drawn, nothing to close */
    struct progress_term q;
    struct progress pq = progress_term_init(&q, 1);
    pq.fn(pq.ctx, "x", 1, 2);
    progress_term_end(&q);
    T_ASSERT(q.f == NULL && !q.drawn);
}

int main(void)
{
    T_RUN(test_format);
    T_RUN(test_draw);
    return t_main_end("test_progress");
}
