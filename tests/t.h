/* t.h: a tiny test harness. Each tests/test_*.c is one binary; TEST functions are run by
 * T_RUN, failures are counted per check, and t_main_end prints
 * "<file>: N passed, N failed, N skipped". A test that cannot run calls T_SKIP with the reason
 * (in main instead of T_RUN, or inside the test function, which then counts as skipped, not
 * passed, unless a check failed). tests/run.sh adds the per-binary counts into the closing
 * "N passed, N failed, N skipped" line and fails a binary that ran nothing and skipped nothing. */
#ifndef MINICPMV_T_H
#define MINICPMV_T_H

#include <math.h>
#include <stdio.h>
#include <string.h>

static int t_pass, t_fail, t_skip, t_cur_fail, t_cur_skip;

#define T_ASSERT(cond)                                                                  \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "  %s:%d: assertion failed: %s\n", __FILE__, __LINE__, #cond); \
            t_cur_fail++;                                                               \
        }                                                                               \
    } while (0)
#define T_ASSERTF(cond, ...)                                                            \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "  %s:%d: assertion failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                               \
            fputc('\n', stderr);                                                        \
            t_cur_fail++;                                                               \
        }                                                                               \
    } while (0)
#define T_EQ_INT(a, b) T_ASSERTF((long long)(a) == (long long)(b), "%lld != %lld", (long long)(a), (long long)(b))
#define T_EQ_STR(a, b) T_ASSERTF(strcmp((a), (b)) == 0, "\"%s\" != \"%s\"", (a), (b))
#define T_NEAR(a, b, tol) T_ASSERTF(fabs((double)(a) - (double)(b)) <= (tol), "%g vs %g (tol %g)", (double)(a), (double)(b), (double)(tol))
/* Checks that an error message contains a substring. */
#define T_CONTAINS(hay, needle) T_ASSERTF(strstr((hay), (needle)) != NULL, "\"%s\" does not contain \"%s\"", (hay), (needle))

#define T_RUN(fn)                                                                       \
    do {                                                                                \
        t_cur_fail = 0;                                                                 \
        t_cur_skip = 0;                                                                 \
        fn();                                                                           \
        if (t_cur_fail) { t_fail++; fprintf(stderr, "FAIL %s\n", #fn); }               \
        else if (!t_cur_skip) { t_pass++; fprintf(stderr, "ok   %s\n", #fn); }          \
    } while (0)

/* Counts a skip and says why (stderr and the summary line); never a silent return. */
#define T_SKIP(fn, why)                                                                 \
    do {                                                                                \
        fprintf(stderr, "SKIP %s: %s\n", #fn, why);                                     \
        t_skip++;                                                                       \
        t_cur_skip++;                                                                   \
    } while (0)

static inline int t_main_end(const char *name)
{
    printf("%s: %d passed, %d failed, %d skipped\n", name, t_pass, t_fail, t_skip);
    return t_fail ? 1 : 0;
}

#endif
