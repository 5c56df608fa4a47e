/* t.h: a tiny test harness. Each tests/test_*.c is one binary; TEST functions are run by
 * T_RUN, failures are counted per check, and t_main prints "<file>: N passed, N failed".
 * tests/run.sh adds the per-binary counts into the closing "N passed, N failed" line. */
#ifndef MINICPMV_T_H
#define MINICPMV_T_H

#include <math.h>
#include <stdio.h>
#include <string.h>

static int t_pass, t_fail, t_cur_fail;

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
        fn();                                                                           \
        if (t_cur_fail) { t_fail++; fprintf(stderr, "FAIL %s\n", #fn); }               \
        else { t_pass++; fprintf(stderr, "ok   %s\n", #fn); }                            \
    } while (0)

#define T_SKIP(fn, why) fprintf(stderr, "skip %s: %s\n", #fn, why)

static inline int t_main_end(const char *name)
{
    printf("%s: %d passed, %d failed\n", name, t_pass, t_fail);
    return t_fail ? 1 : 0;
}

#endif
