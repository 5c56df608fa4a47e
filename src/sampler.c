/* sampler.c: see sampler.h. top-k/top-p follow transformers 4.40's TopKLogitsWarper and
 * TopPLogitsWarper: top-k keeps scores >= the k-th largest (ties at the boundary survive);
 * top-p sorts ascending, removes tokens whose cumulative probability is <= 1 - top_p, and
 * always keeps the most likely one. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void sampler_defaults(struct sampler_params *p)
{
    p->greedy = false;
    p->temperature = 0.7f;
    p->top_k = 100;
    p->top_p = 0.8f;
    p->repetition_penalty = 1.05f;
    p->seed = 0;
    p->penalty_explicit = false;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

int sampler_init(struct sampler *s, const struct sampler_params *p, int vocab)
{
    memset(s, 0, sizeof *s);
    s->p = *p;
    s->vocab = vocab;
    s->work = malloc((size_t)vocab * sizeof *s->work);
    s->idx = malloc((size_t)vocab * sizeof *s->idx);
    s->seen = calloc((size_t)vocab, 1);
    if (!s->work || !s->idx || !s->seen) {
        sampler_free(s);
        return -1;
    }
    uint64_t x = p->seed;
    s->rng[0] = splitmix64(&x);
    s->rng[1] = splitmix64(&x);
    return 0;
}

void sampler_free(struct sampler *s)
{
    free(s->work);
    free(s->idx);
    free(s->seen);
    s->work = NULL;
    s->idx = NULL;
    s->seen = NULL;
}

void sampler_reset(struct sampler *s) { memset(s->seen, 0, (size_t)s->vocab); }

double sampler_uniform(struct sampler *s)
{
    /* xorshift128+ */
    uint64_t a = s->rng[0], b = s->rng[1];
    s->rng[0] = b;
    a ^= a << 23;
    s->rng[1] = a ^ b ^ (a >> 17) ^ (b >> 26);
    return (double)((s->rng[1] + b) >> 11) * (1.0 / 9007199254740992.0);
}

void sampler_apply_penalty(const struct sampler *s, float *logits)
{
    const float p = s->p.repetition_penalty;
    if (p == 1.0f) return;
    for (int i = 0; i < s->vocab; i++)
        if (s->seen[i]) logits[i] = logits[i] < 0 ? logits[i] * p : logits[i] / p;
}

static int32_t argmax(const float *x, int n)
{
    int32_t b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static int cmp_desc(const void *a, const void *b, void *keys)
{
    const float *k = keys;
    float x = k[*(const int32_t *)a], y = k[*(const int32_t *)b];
    if (x > y) return -1;
    if (x < y) return 1;
    return *(const int32_t *)a - *(const int32_t *)b;
}

int32_t sampler_sample(struct sampler *s, float *logits)
{
    const int V = s->vocab;
    sampler_apply_penalty(s, logits);
    int32_t tok;
    if (s->p.greedy) {
        tok = argmax(logits, V);
    } else {
        float *w = s->work;
        const float t = s->p.temperature > 0 ? s->p.temperature : 1.0f;
        for (int i = 0; i < V; i++) w[i] = logits[i] / t;
        /* candidates sorted descending; only the top k matter for top-k, but top-p needs an order */
        int n = V;
        for (int i = 0; i < V; i++) s->idx[i] = i;
        if (s->p.top_k > 0 && s->p.top_k < V) {
            /* partial selection: keep every score >= the k-th largest */
            float *tmp = malloc((size_t)V * sizeof *tmp);
            memcpy(tmp, w, (size_t)V * sizeof *tmp);
            /* nth_element by quickselect */
            int lo = 0, hi = V - 1, k = s->p.top_k - 1;
            while (lo < hi) {
                float piv = tmp[(lo + hi) / 2];
                int i = lo, j = hi;
                while (i <= j) {
                    while (tmp[i] > piv) i++;
                    while (tmp[j] < piv) j--;
                    if (i <= j) { float x = tmp[i]; tmp[i] = tmp[j]; tmp[j] = x; i++; j--; }
                }
                if (k <= j) hi = j;
                else if (k >= i) lo = i;
                else break;
            }
            float kth = tmp[k];
            free(tmp);
            n = 0;
            for (int i = 0; i < V; i++)
                if (w[i] >= kth) s->idx[n++] = i;
        }
        qsort_r(s->idx, (size_t)n, sizeof *s->idx, cmp_desc, w);
        /* softmax over the candidates (all others are -inf) */
        double mx = w[s->idx[0]], sum = 0;
        for (int i = 0; i < n; i++) sum += exp((double)w[s->idx[i]] - mx);
        if (s->p.top_p < 1.0f) {
            /* ascending cumulative: drop tokens with cumsum <= 1 - top_p; the top token always stays */
            double cum = 0;
            int keep_from = n - 1; /* in descending order, index of the last kept */
            for (int i = n - 1; i >= 1; i--) {
                cum += exp((double)w[s->idx[i]] - mx) / sum;
                if (cum <= 1.0 - (double)s->p.top_p) keep_from = i - 1;
                else break;
            }
            n = keep_from + 1;
            sum = 0;
            for (int i = 0; i < n; i++) sum += exp((double)w[s->idx[i]] - mx);
        }
        double u = sampler_uniform(s) * sum, acc = 0;
        tok = s->idx[n - 1];
        for (int i = 0; i < n; i++) {
            acc += exp((double)w[s->idx[i]] - mx);
            if (u < acc) { tok = s->idx[i]; break; }
        }
    }
    if (tok >= 0 && tok < V) s->seen[tok] = 1;
    return tok;
}
