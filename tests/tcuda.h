/* tcuda.h: helpers of the CUDA parity tests (test_cuda_*.c): seeded random host tensors, device
 * copies, and check_close, which compares a device result with its CPU-twin reference, prints
 * max-abs / relative error / NMSE and fails above a tolerance (the tolerances are explained in
 * test_cuda_ops.c). Include only under MINICPMV_CUDA, after t.h. */
#ifndef MINICPMV_TCUDA_H
#define MINICPMV_TCUDA_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "tensor.h"

#define TOL_EXACT 0.0
#define TOL_F32 1e-5
#define TOL_F16 4e-3
#define TOL_BF16 3e-2
#define TOL_TC 1e-4 /* fp16 tensor cores: fp32 accumulation, but not rounded to nearest at every add */

static uint64_t g_rng = 0x9e3779b97f4a7c15ULL;

static inline float frand(void) /* uniform in [-1, 1) */
{
    g_rng = g_rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(g_rng >> 40) / (double)(1ULL << 23) - 1.0);
}

static inline double tol_for(enum dtype t) { return t == DTYPE_F32 ? TOL_F32 : t == DTYPE_F16 ? TOL_F16 : TOL_BF16; }

static inline struct tensor h_new(enum dtype dt, int ndim, int64_t d0, int64_t d1, int64_t d2)
{
    struct tensor t = ndim == 1 ? tensor_make(dt, device_cpu(), NULL, 1, d0)
                      : ndim == 2 ? tensor_make(dt, device_cpu(), NULL, 2, d0, d1)
                                  : tensor_make(dt, device_cpu(), NULL, 3, d0, d1, d2);
    struct err e;
    t.data = dev_alloc(t.dev, tensor_nbytes(&t), &e);
    CHECK(t.data);
    return t;
}

/* random values amp * U[-1, 1) + off, rounded to the tensor's dtype */
static inline void h_fill(struct tensor *t, float amp, float off)
{
    int64_t n = tensor_numel(t);
    float *f = malloc((size_t)n * sizeof(float));
    CHECK(f);
    for (int64_t i = 0; i < n; i++) f[i] = amp * frand() + off;
    convert_from_f32(t->data, t->dtype, f, n);
    free(f);
}

static inline struct tensor h_rand(enum dtype dt, int ndim, int64_t d0, int64_t d1, int64_t d2, float amp)
{
    struct tensor t = h_new(dt, ndim, d0, d1, d2);
    h_fill(&t, amp, 0.0f);
    return t;
}

static inline struct tensor d_from(const struct tensor *h)
{
    struct tensor d = *h;
    struct err e;
    d.dev = device_cuda(0);
    d.data = dev_alloc(d.dev, tensor_nbytes(h), &e);
    CHECKF(d.data, "%s", e.msg);
    op_copy(&d, h);
    return d;
}

static inline struct tensor d_new(enum dtype dt, int ndim, int64_t d0, int64_t d1, int64_t d2)
{
    struct tensor t = h_new(dt, ndim, d0, d1, d2);
    h_fill(&t, 1.0f, 0.0f); /* garbage that is not zero: an op that writes nothing fails */
    struct tensor d = d_from(&t);
    dev_free(t.dev, t.data);
    return d;
}

/* a host copy of a device tensor (the reference of a GPU-vs-GPU comparison) */
static inline struct tensor h_copy(const struct tensor *d)
{
    struct tensor h = h_new(d->dtype, d->ndim, d->shape[0], d->ndim > 1 ? d->shape[1] : 0, d->ndim > 2 ? d->shape[2] : 0);
    op_copy(&h, d);
    return h;
}

static inline void t_free(struct tensor *t)
{
    dev_free(t->dev, t->data);
    t->data = NULL;
}

/* Block tables of a paged cache (backend.h): I32 [n_tabs, mb] (1-D [mb] when n_tabs is 0) holding
 * distinct blocks of a pool of n_blocks >= n_tabs * mb, in a shuffled order (a kernel that reads the
 * rows in place of the table, or indexes it wrongly, reads other rows and fails the comparison). */
static inline struct tensor h_table(int64_t n_tabs, int64_t mb, int64_t n_blocks)
{
    const int64_t n = (n_tabs ? n_tabs : 1) * mb;
    CHECK(n <= n_blocks);
    int32_t *perm = malloc((size_t)n_blocks * sizeof *perm);
    CHECK(perm);
    for (int64_t i = 0; i < n_blocks; i++) perm[i] = (int32_t)i;
    for (int64_t i = n_blocks - 1; i > 0; i--) { /* Fisher-Yates on the seeded generator */
        g_rng = g_rng * 6364136223846793005ULL + 1442695040888963407ULL;
        const int64_t j = (int64_t)((g_rng >> 33) % (uint64_t)(i + 1));
        const int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    struct tensor t = n_tabs ? h_new(DTYPE_I32, 2, n_tabs, mb, 0) : h_new(DTYPE_I32, 1, mb, 0, 0);
    memcpy(t.data, perm, (size_t)n * sizeof *perm);
    free(perm);
    return t;
}

/* Compares a device result with a host reference; prints the metrics; fails above tol. */
static inline void check_close(const char *op, const char *cas, const struct tensor *got, const struct tensor *ref, double tol)
{
    int64_t n = tensor_numel(ref);
    T_ASSERT(tensor_numel(got) == n);
    struct tensor h = *got;
    h.dev = device_cpu();
    struct err e;
    h.data = dev_alloc(h.dev, tensor_nbytes(got), &e);
    CHECK(h.data);
    op_copy(&h, got);
    float *g = malloc((size_t)n * sizeof(float)), *r = malloc((size_t)n * sizeof(float));
    CHECK(g && r);
    convert_to_f32(g, h.data, h.dtype, n);
    convert_to_f32(r, ref->data, ref->dtype, n);
    double mx = 0, mref = 0, d2 = 0, r2 = 0;
    int bad = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)g[i] - (double)r[i];
        if (!isfinite(g[i]) != !isfinite(r[i])) bad = 1;
        if (fabs(d) > mx) mx = fabs(d);
        if (fabs(r[i]) > mref) mref = fabs(r[i]);
        d2 += d * d;
        r2 += (double)r[i] * r[i];
    }
    double rel = mref > 0 ? mx / mref : mx, nmse = r2 > 0 ? d2 / r2 : d2;
    printf("  %-10s %-52s max_abs %-10.3g rel %-10.3g nmse %-10.3g tol %.0e %s\n", op, cas, mx, rel, nmse, tol,
           !bad && rel <= tol ? "ok" : "FAIL");
    T_ASSERTF(!bad && rel <= tol, "%s %s: rel %g > tol %g", op, cas, rel, tol);
    T_ASSERTF(mref > 0, "%s %s: reference is all zeros", op, cas);
    free(g);
    free(r);
    dev_free(h.dev, h.data);
}

#endif
