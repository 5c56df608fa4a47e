/* t.h: a tiny test harness. Each tests/test_*.c is one binary; TEST functions are run by
 * T_RUN, failures are counted per check, and t_main_end prints
 * "<file>: N passed, N failed, N skipped". A test that cannot run calls T_SKIP with the reason
 * (in main instead of T_RUN, or inside the test function, which then counts as skipped, not
 * passed, unless a check failed). tests/run.sh adds the per-binary counts into the closing
 * "N passed, N failed, N skipped" line and fails a binary that ran nothing and skipped nothing.
 * A check that fails in main, outside any T_RUN, counts as one failed test ("FAIL main").
 * T_ONLY=name,name (environment; exact function names) runs only those tests: the selection is printed
 * once, the others are passed over without a trace in the counts (this is a selection, not a skip), and
 * a selected name that no T_RUN or T_SKIP reached fails the binary, so a typo or a main that stopped
 * early cannot pass for a result (tests/mutants/run.py plants one bug and runs the tests that kill it). */
#ifndef MINICPMV_T_H
#define MINICPMV_T_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_pass, t_fail, t_skip, t_cur_fail, t_cur_skip, t_in_test;

#define T_ONLY_MAX 64
static struct {
    int init, n, bad;
    char name[T_ONLY_MAX][96];
    int seen[T_ONLY_MAX];
} t_only;

/* 1 when test `fn` is to run: no T_ONLY, or T_ONLY names it (and it is then marked as reached) */
static inline int t_selected(const char *fn)
{
    if (!t_only.init) {
        t_only.init = 1;
        const char *e = getenv("T_ONLY");
        if (e && *e) {
            fprintf(stderr, "T_ONLY: running only %s\n", e);
            for (const char *p = e; *p;) {
                size_t l = strcspn(p, ", ");
                if (l >= sizeof t_only.name[0] || t_only.n == T_ONLY_MAX) {
                    fprintf(stderr, "T_ONLY: a name over %zu characters or more than %d names\n",
                            sizeof t_only.name[0] - 1, T_ONLY_MAX);
                    t_only.bad = 1;
                    break;
                }
                if (l) memcpy(t_only.name[t_only.n++], p, l);
                p += l;
                p += strspn(p, ", ");
            }
            if (!t_only.n) t_only.bad = 1; /* "T_ONLY=," selects nothing: refused, not an empty pass */
        }
    }
    if (!t_only.n && !t_only.bad) return 1;
    int hit = 0;
    for (int i = 0; i < t_only.n; i++)
        if (!strcmp(t_only.name[i], fn)) t_only.seen[i] = hit = 1;
    return hit;
}

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

/* checks that failed in main since the last test: one failed "test" */
static inline void t_main_checks(void)
{
    if (t_cur_fail && !t_in_test) { t_fail++; fprintf(stderr, "FAIL main (%d checks outside a test)\n", t_cur_fail); }
    t_cur_fail = 0;
}

#define T_RUN(fn)                                                                       \
    do {                                                                                \
        if (!t_selected(#fn)) break;                                                    \
        t_main_checks();                                                                \
        t_cur_skip = 0;                                                                 \
        t_in_test = 1;                                                                  \
        fn();                                                                           \
        t_in_test = 0;                                                                  \
        if (t_cur_fail) { t_fail++; fprintf(stderr, "FAIL %s\n", #fn); }               \
        else if (!t_cur_skip) { t_pass++; fprintf(stderr, "ok   %s\n", #fn); }          \
        t_cur_fail = 0;                                                                 \
    } while (0)

/* Counts a skip and says why (stderr and the summary line); never a silent return. In main, a test
 * that T_ONLY does not select is passed over instead. */
#define T_SKIP(fn, why)                                                                 \
    do {                                                                                \
        if (!t_in_test && !t_selected(#fn)) break;                                      \
        fprintf(stderr, "SKIP %s: %s\n", #fn, why);                                     \
        t_skip++;                                                                       \
        t_cur_skip++;                                                                   \
    } while (0)

static inline int t_main_end(const char *name)
{
    (void)t_selected(""); /* reads T_ONLY if no T_RUN did */
    t_main_checks();
    if (t_only.bad) { fprintf(stderr, "FAIL T_ONLY: unusable selection \"%s\"\n", getenv("T_ONLY")); t_fail++; }
    for (int i = 0; i < t_only.n; i++)
        if (!t_only.seen[i]) {
            fprintf(stderr, "FAIL T_ONLY: %s selected but never run (no such test here, or main stopped before it)\n",
                    t_only.name[i]);
            t_fail++;
        }
    printf("%s: %d passed, %d failed, %d skipped\n", name, t_pass, t_fail, t_skip);
    return t_fail ? 1 : 0;
}

#endif
