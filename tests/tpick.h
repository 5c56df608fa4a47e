/* tpick.h: drives the batched decode step with device picks (engine_decode_batch_pick) through a
 * schedule of batch sizes and slot sets (slots join and leave between steps), each slot with its own
 * sampler parameters, against a host sampler that follows each slot (the scheduler's turn_take /
 * turn_step logic written out here, independently). Used by test_batch (CPU: the CPU twin of the
 * device sampler) and test_cuda_batch (GPU: graph-replayed steps, and an eager engine beside).
 * Every even step asks for every row's logits: there the host sampler picks from them and must pick
 * what the device picked; odd steps ask for none (only declined rows bring theirs), and the host
 * sampler follows the device (the token recorded, one draw). */
#ifndef MINICPMV_TPICK_H
#define MINICPMV_TPICK_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "sampler.h"

struct tpick_res {
    int steps, rows;
    int dev_picks;      /* rows the device picked */
    int checked;        /* of those, rows whose logits came too: the host sampler picked from them */
    int pick_diff;      /* checked rows where the host sampler picked another token */
    int declined;       /* rows the device declined (the host picked from their logits) */
    int ref_rows;       /* rows compared with the second engine */
    int ref_pick_diff;  /* rows whose pick differs from the second engine's */
    double ref_worst;   /* the largest |logit difference| against the second engine */
};

/* Slot s's sampler parameters: greedy, greedy + penalty, the chat() defaults, the kernel's radix path
 * (top_k 2048), top-k off (the device declines every row). */
static inline void tpick_params(int s, struct sampler_params *p)
{
    sampler_defaults(p);
    p->seed = 1000u + (unsigned)s;
    switch (s % 5) {
    case 0: p->greedy = true, p->repetition_penalty = 1.0f; break;
    case 1: p->greedy = true, p->repetition_penalty = 1.3f; break;
    case 2: break;
    case 3: p->top_k = 2048, p->top_p = 1.0f, p->temperature = 1.1f; break;
    default: p->top_k = 0; break;
    }
}

/* Prefills every slot of g (and of r, when not NULL: an engine with as many slots) with its own prompt,
 * picks the first token on the host, starts the slots' device samplers, then runs n_sizes steps of
 * sizes[k] rows (slots (off + i) % N with off moving each step, rows in reversed order on odd steps).
 * before (may be NULL) is called with g and k before step k (test_batch warms the graphs there).
 * 0, or -1 with e set when an engine call (or before) fails. */
static inline int tpick_run(struct engine *g, struct engine *r, const int *sizes, int n_sizes, struct tpick_res *res,
                            int (*before)(struct engine *g, int k, struct err *e), struct err *e)
{
    const int N = engine_slots(g), V = engine_config(g)->vocab_size;
    memset(res, 0, sizeof *res);
    struct sampler *hs = calloc((size_t)N, sizeof *hs);
    int32_t *last = calloc((size_t)N, sizeof *last), *toks = calloc((size_t)N, sizeof *toks);
    int32_t *pk = calloc((size_t)N, sizeof *pk), *pkr = calloc((size_t)N, sizeof *pkr);
    int *slots = calloc((size_t)N, sizeof *slots);
    uint8_t *all = malloc((size_t)N);
    float *lg = malloc((size_t)N * V * sizeof *lg), *lgr = malloc((size_t)N * V * sizeof *lgr);
    float *x = malloc((size_t)V * sizeof *x);
    int rc = -1, n_hs = 0;
    if (!hs || !last || !toks || !pk || !pkr || !slots || !all || !lg || !lgr || !x) {
        err_set(e, "out of memory");
        goto out;
    }
    memset(all, 1, (size_t)N);
    for (int s = 0; s < N; s++, n_hs++) {
        struct sampler_params p;
        tpick_params(s, &p);
        if (sampler_init(&hs[s], &p, V)) {
            err_set(e, "out of memory");
            goto out;
        }
        int32_t ids[16];
        const int n = 3 + s % 7;
        for (int i = 0; i < n; i++) ids[i] = (int32_t)((7 + 131 * i + 977 * s) % V);
        engine_slot_truncate(g, s, 0);
        if (engine_slot_prefill(g, s, ids, NULL, n, x, e)) goto out;
        if (r) {
            engine_slot_truncate(r, s, 0);
            if (engine_slot_prefill(r, s, ids, NULL, n, lgr, e)) goto out;
        }
        last[s] = sampler_sample(&hs[s], x);
        engine_slot_sample_begin(g, s, &p, hs[s].draws);
        if (r) engine_slot_sample_begin(r, s, &p, hs[s].draws);
    }
    for (int k = 0; k < n_sizes; k++) {
        const int B = sizes[k], off = (k * 5) % N;
        const uint8_t *need = k % 2 == 0 ? all : NULL;
        if (before && before(g, k, e)) goto out;
        for (int i = 0; i < B; i++) {
            slots[i] = (off + (k % 2 ? B - 1 - i : i)) % N;
            toks[i] = last[slots[i]];
        }
        if (engine_decode_batch_pick(g, slots, toks, B, need, pk, lg, e)) goto out;
        if (r) {
            if (engine_decode_batch_pick(r, slots, toks, B, need, pkr, lgr, e)) goto out;
            for (int i = 0; i < B; i++) {
                res->ref_rows++;
                res->ref_pick_diff += pk[i] != pkr[i];
                if (!need && pk[i] >= 0) continue; /* no logits came */
                for (int j = 0; j < V; j++) {
                    const double d = fabs((double)lg[(size_t)i * V + j] - lgr[(size_t)i * V + j]);
                    if (!(d <= res->ref_worst)) res->ref_worst = d; /* NaN counts */
                }
            }
        }
        for (int i = 0; i < B; i++) {
            struct sampler *h = &hs[slots[i]];
            res->rows++;
            if (pk[i] < 0 || need) { /* the logits came: the host picks */
                memcpy(x, lg + (size_t)i * V, (size_t)V * sizeof *x);
                const int32_t t = sampler_sample(h, x);
                if (pk[i] < 0) {
                    res->declined++;
                } else {
                    res->dev_picks++;
                    res->checked++;
                    res->pick_diff += t != pk[i];
                }
                last[slots[i]] = t;
            } else { /* follow the device */
                res->dev_picks++;
                sampler_record(h, pk[i]);
                if (!h->p.greedy) h->draws++;
                last[slots[i]] = pk[i];
            }
        }
        res->steps++;
    }
    rc = 0;
out:
    for (int s = 0; s < n_hs; s++) sampler_free(&hs[s]);
    free(hs), free(last), free(toks), free(pk), free(pkr), free(slots), free(all), free(lg), free(lgr), free(x);
    return rc;
}

#endif
