/* tutil.h: helpers shared by tests: the generated tiny model (made once per build tree with the
 * real `minicpmv mkmodel` code path) and tensor comparison metrics. */
#ifndef MINICPMV_TUTIL_H
#define MINICPMV_TUTIL_H

#include <math.h>
#include <stdio.h>
#include <sys/stat.h>

#include "cmd.h"
#include "backend.h"
#include "tensor.h"

/* Returns the folder of the tiny model with the given seed, generating it when absent. */
static inline const char *t_tiny_model(int seed)
{
    static char dir[256];
    snprintf(dir, sizeof dir, "build/test-models/tiny-s%d", seed);
    char cfg[300];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    struct stat st;
    if (stat(cfg, &st) != 0) {
        char seed_s[16];
        snprintf(seed_s, sizeof seed_s, "%d", seed);
        char *argv[] = {"mkmodel", "--out", dir, "--size", "tiny", "--seed", seed_s, NULL};
        if (!cmd_mkmodel || cmd_mkmodel(7, argv) != 0) {
            fprintf(stderr, "cannot generate the tiny model in %s\n", dir);
            return NULL;
        }
    }
    return dir;
}

struct t_cmp {
    double max_abs, rel, cos;
};

/* Compares n floats: max |a-b|, ||a-b|| / ||b||, cosine. */
static inline struct t_cmp t_compare(const float *a, const float *b, int64_t n)
{
    double d2 = 0, b2 = 0, a2 = 0, ab = 0, mx = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        if (fabs(d) > mx || d != d) mx = d != d ? INFINITY : fabs(d);
        d2 += d * d;
        b2 += (double)b[i] * b[i];
        a2 += (double)a[i] * a[i];
        ab += (double)a[i] * b[i];
    }
    struct t_cmp c = {mx, sqrt(d2) / (sqrt(b2) > 0 ? sqrt(b2) : 1), ab / (sqrt(a2 * b2) > 0 ? sqrt(a2 * b2) : 1)};
    return c;
}

/* Copies any host tensor to a float array (malloc'd). */
static inline float *t_to_f32(const struct tensor *t)
{
    float *f = malloc((size_t)tensor_numel(t) * sizeof(float));
    convert_to_f32(f, t->data, t->dtype, tensor_numel(t));
    return f;
}

/* Copies any tensor (host or device) to a host float array (malloc'd). */
static inline float *t_fetch_f32(const struct tensor *t)
{
    if (tensor_on_host(t)) return t_to_f32(t);
    struct tensor h = *t;
    h.dev = device_cpu();
    h.data = malloc(tensor_nbytes(t));
    op_copy(&h, t);
    float *f = t_to_f32(&h);
    free(h.data);
    return f;
}

/* dst (any device, any float dtype) = src (host tensor, any float dtype). */
static inline void t_upload(struct tensor *dst, const struct tensor *src)
{
    struct tensor h = *dst;
    h.dev = device_cpu();
    h.data = malloc(tensor_nbytes(dst));
    op_copy(&h, src);
    op_copy(dst, &h);
    free(h.data);
}

#endif
