/* sampler.h: token selection from f32 logits, in the order transformers 4.40 applies its
 * processors (spec §8): repetition penalty (over generated tokens only) -> temperature ->
 * top-k -> top-p -> softmax -> multinomial. Greedy is argmax after the repetition penalty.
 * The RNG is counter-based: draw number i of a request is sampler_uniform_at(seed, i), a pure
 * function of two integers, so the CUDA sampler (cuda/cuda_sample.cu, op_sample_dev) draws the
 * very same numbers as the host and the two can hand a request back and forth mid-stream.
 * The selection from penalised logits (sampler_pick) is one function shared by the host sampler
 * and the CPU twin of op_sample_dev (cpu_sample_dev, below). No hidden state. */
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
    uint64_t draws;            /* uniforms drawn so far = the index of the next draw */
    int vocab;
    float *work;               /* [vocab] */
    int32_t *idx;              /* [vocab] */
    uint8_t *seen;             /* [vocab] generated-token flags for the repetition penalty */
};

int sampler_init(struct sampler *s, const struct sampler_params *p, int vocab);
void sampler_free(struct sampler *s);
/* Forget generated tokens (new answer). The draw counter keeps running. */
void sampler_reset(struct sampler *s);
/* Picks the next token from logits[vocab] (modified in place by the penalty) and records it.
 * Draws one uniform (draw index s->draws, then s->draws + 1) unless greedy. */
int32_t sampler_sample(struct sampler *s, float *logits);
/* sampler_sample with a token mask (constrained decoding, grammar.h): after the penalty, every id
 * whose bit is clear in allow[(vocab + 31) / 32] (bit id % 32 of word id / 32) gets -inf in logits,
 * then the same pick. allow NULL: exactly sampler_sample (same bits, same draws). The pick is an
 * allowed id whenever any is: where the multinomial scan's rounding fallback lands on a masked id
 * (u * sum rounded up to sum), the largest allowed logit is taken instead. With no id allowed the
 * result is -1 and nothing is recorded (one draw is still consumed when not greedy). On return,
 * logits holds the row the pick was made from (penalised and masked): sampler_logprobs' input. */
int32_t sampler_sample_masked(struct sampler *s, float *logits, const uint32_t *allow);
/* Marks tok as generated (a token picked elsewhere, e.g. on the device), for the penalty. */
void sampler_record(struct sampler *s, int32_t tok);
/* Applies the repetition penalty in place (s = s<0 ? s*p : s/p for every generated id). */
void sampler_apply_penalty(const struct sampler *s, float *logits);
/* Uniform double in [0,1): sampler_uniform_at(seed, s->draws++). */
double sampler_uniform(struct sampler *s);

/* The selection after the penalty: from penalised logits x[V] (not modified), greedy argmax
 * (first index of the maximum), also when temperature is not > 0 (0, or NaN) or so small that
 * max(x) / t overflows to +-inf (the t -> 0 limit), else w = x / t, keep
 * w >= the k-th largest w (ties at the boundary kept; all V when top_k <= 0 or >= V), sort by
 * (w desc, index asc), softmax in double from the largest, top-p cut from the tail, then the
 * multinomial scan with u = sampler_uniform_at(p->seed, draw) * sum. work and idx hold V entries.
 * Returns -1 (nothing picked) when max_cand > 0 and more than max_cand tokens survive top-k
 * (the device sampler's limit); the caller decides what a declined draw means. */
int32_t sampler_pick(const struct sampler_params *p, const float *x, int V, float *work, int32_t *idx,
                     uint64_t draw, int max_cand);

/* Log-probabilities for OpenAI's logprobs / top_logprobs (issue 17): log_softmax of the row x[V]
 * the sampler picked from (after the repetition penalty and any mask, before temperature, top-k
 * and top-p), computed in double: lse = max + log(sum exp(x_i - max)), logprob_i = x_i - lse.
 * *chosen_lp receives the logprob of id chosen (-inf for a masked id). top[0..k) / top_lp[0..k)
 * receive the k largest (logprob descending, id ascending on ties; ids with x = -inf never listed,
 * so fewer may come back); returns how many were written, or -1 when k is outside 0..20 or V < 1
 * or every x is -inf. NaN logits count as -inf. */
#define SAMPLER_MAX_TOP_LOGPROBS 20
int sampler_logprobs(const float *x, int V, int32_t chosen, int k, double *chosen_lp, int32_t *top,
                     double *top_lp);

/* Host and device share this function: integer ops only, so nvcc and gcc give the same bits.
 * splitmix64's finaliser of seed + (draw + 1) * golden-ratio; the top 53 bits scaled by 2^-53. */
#ifdef __CUDACC__
#define SAMPLER_HD __host__ __device__
#else
#define SAMPLER_HD
#endif
static inline SAMPLER_HD double sampler_uniform_at(uint64_t seed, uint64_t draw)
{
    uint64_t z = seed + (draw + 1) * 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- the device sampler's state (op_sample_begin / op_sample_dev in backend.h) ----
 * An I32 tensor of sample_state_words(V) words on the logits' device: a header of
 * SAMPLE_ST_HEADER words (below), then ceil(V/32) words of "generated" flags (bit j%32 of word
 * j/32 for token j). The parameters live in this memory, not in kernel arguments, so one captured
 * decode graph serves every request. */
enum sample_state_word {
    SAMPLE_ST_DRAWS_LO = 0,    /* the draw counter (u64): index of the next uniform */
    SAMPLE_ST_DRAWS_HI,
    SAMPLE_ST_STATUS,          /* 0: ids[0] is the pick; 1: declined (ids[0] = -1, draw consumed) */
    SAMPLE_ST_GREEDY,
    SAMPLE_ST_TEMPERATURE,     /* f32 bits */
    SAMPLE_ST_TOP_K,
    SAMPLE_ST_TOP_P,           /* f32 bits */
    SAMPLE_ST_PENALTY,         /* repetition_penalty, f32 bits */
    SAMPLE_ST_SEED_LO,
    SAMPLE_ST_SEED_HI,
    SAMPLE_ST_HEADER = 16      /* words before the flags (the rest is reserved, zero) */
};
/* The most top-k candidates the device sorts; more (ties at the k-th value, or top-k off) declines. */
#define SAMPLE_DEV_MAX_CAND 2048

/* Writes the header words (SAMPLE_ST_HEADER of them) for a request: params p, next draw index. */
void sampler_state_header(int32_t *h, const struct sampler_params *p, uint64_t draws);
/* Whether op_sample_dev can serve these parameters (greedy with any penalty, or
 * 0 < top_k <= SAMPLE_DEV_MAX_CAND); otherwise it would decline every token. */
bool sampler_device_ok(const struct sampler_params *p);

#endif
