/* sampler.h: token selection from f32 logits, in the order transformers 4.40 applies its
 * processors (spec §8): repetition penalty (over generated tokens only) -> temperature ->
 * top-k -> top-p -> softmax -> multinomial. Greedy is argmax after the repetition penalty.
 * The RNG is seeded and owned by the sampler (no hidden state). */
#ifndef MINICPMV_SAMPLER_H
#define MINICPMV_SAMPLER_H

#include <stdbool.h>
#include <stdint.h>

struct sampler_params {
    bool greedy;
    float temperature;         /* 0.7 */
    int top_k;                 /* 100; 0 = off */
    float top_p;               /* 0.8; 1 = off */
    float repetition_penalty;  /* 1.05; 1 = off */
    uint64_t seed;
    bool penalty_explicit;     /* front ends: the user set repetition_penalty (--greedy then keeps it) */
};

/* The model's chat() defaults with sampling=True. */
void sampler_defaults(struct sampler_params *p);

struct sampler {
    struct sampler_params p;
    uint64_t rng[2];
    int vocab;
    float *work;               /* [vocab] */
    int32_t *idx;              /* [vocab] */
    uint8_t *seen;             /* [vocab] generated-token flags for the repetition penalty */
};

int sampler_init(struct sampler *s, const struct sampler_params *p, int vocab);
void sampler_free(struct sampler *s);
/* Forget generated tokens (new answer). */
void sampler_reset(struct sampler *s);
/* Picks the next token from logits[vocab] (modified in place by the penalty) and records it. */
int32_t sampler_sample(struct sampler *s, float *logits);
/* Applies the repetition penalty in place (s = s<0 ? s*p : s/p for every generated id). */
void sampler_apply_penalty(const struct sampler *s, float *logits);
/* Uniform double in [0,1) from the sampler's RNG (xoshiro128+-style, seeded by splitmix64). */
double sampler_uniform(struct sampler *s);

#endif
