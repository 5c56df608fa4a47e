/* tref.h: an independent greedy reference for the server tests (test_server_api.c, test_server_choices.c):
 * the engine's logits step by step (engine_prefill, one token at a time), the repetition penalty applied
 * here (in float, as spec §8: s < 0 ? s * p : s / p over the ids generated so far), the argmax and
 * log_softmax here, in double. Nothing of the turn, the sampler or the server is used. */
#ifndef MINICPMV_TREF_H
#define MINICPMV_TREF_H

#include <math.h>
#include <stdlib.h>

#include "engine.h"

/* Greedy from the prompt ids for at most n tokens (stopping after a stop id). Fills out[k] (the chosen
 * ids), lp[k] (their log-probabilities) and top[k][0..5) (the 5 largest, lower id first on ties).
 * Returns the number of tokens, or -1. out, lp, top may be NULL. */
static int ref_greedy(struct engine *g, const int32_t *ids, int n_ids, int n, float pen, int32_t *out, double *lp,
                      double (*top)[5])
{
    struct err e = {{0}};
    const int V = engine_config(g)->vocab_size;
    float *x = malloc((size_t)V * sizeof *x);
    uint8_t *seen = calloc((size_t)V, 1);
    engine_truncate(g, 0);
    int rc = engine_prefill(g, ids, NULL, n_ids, x, &e);
    int k = 0;
    for (; !rc && k < n; k++) {
        for (int i = 0; i < V; i++)
            if (seen[i]) x[i] = x[i] < 0 ? x[i] * pen : x[i] / pen;
        int best = 0;
        double mx = x[0];
        for (int i = 1; i < V; i++)
            if (x[i] > mx) mx = x[i], best = i;
        double sum = 0;
        for (int i = 0; i < V; i++) sum += exp((double)x[i] - mx);
        const double lse = mx + log(sum);
        if (out) out[k] = best;
        if (lp) lp[k] = x[best] - lse;
        int picked[5];
        for (int j = 0; top && j < 5; j++) {
            int bi = -1;
            for (int i = 0; i < V; i++) {
                int taken = 0;
                for (int u = 0; u < j; u++) taken |= picked[u] == i;
                if (!taken && (bi < 0 || x[i] > x[bi])) bi = i;
            }
            picked[j] = bi;
            top[k][j] = x[bi] - lse;
        }
        seen[best] = 1;
        if (engine_is_stop(g, best)) { k++; break; }
        int32_t t1 = best;
        rc = engine_prefill(g, &t1, NULL, 1, x, &e);
    }
    free(x), free(seen);
    if (rc) fprintf(stderr, "ref_greedy: %s\n", e.msg);
    return rc ? -1 : k;
}

#endif
