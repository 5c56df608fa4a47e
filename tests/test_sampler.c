/* test_sampler.c: the sampling order of spec §8 against an independent brute-force model of
 * transformers' processors (penalty -> temperature -> top-k -> top-p -> softmax). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sampler.h"
#include "t.h"

#define V 50

/* Brute force: probability of each token after the processors, computed directly from the
 * definitions (sort by score, k-th largest threshold, ascending cumulative cut). */
static void reference_probs(const float *logits_in, const uint8_t *seen, struct sampler_params p, double *prob)
{
    double s[V];
    for (int i = 0; i < V; i++) {
        double x = logits_in[i];
        if (seen[i]) x = x < 0 ? x * p.repetition_penalty : x / p.repetition_penalty;
        s[i] = x / p.temperature;
    }
    /* k-th largest */
    double sorted[V];
    memcpy(sorted, s, sizeof sorted);
    for (int i = 0; i < V; i++)
        for (int j = i + 1; j < V; j++)
            if (sorted[j] > sorted[i]) { double t = sorted[i]; sorted[i] = sorted[j]; sorted[j] = t; }
    double kth = sorted[p.top_k - 1];
    int alive[V];
    for (int i = 0; i < V; i++) alive[i] = s[i] >= kth;
    double mx = sorted[0], z = 0;
    for (int i = 0; i < V; i++) if (alive[i]) z += exp(s[i] - mx);
    /* top-p on ascending order */
    int order[V];
    for (int i = 0; i < V; i++) order[i] = i;
    for (int i = 0; i < V; i++)
        for (int j = i + 1; j < V; j++)
            if (s[order[j]] < s[order[i]]) { int t = order[i]; order[i] = order[j]; order[j] = t; }
    double cum = 0;
    for (int r = 0; r < V - 1; r++) {
        int i = order[r];
        if (!alive[i]) continue;
        cum += exp(s[i] - mx) / z;
        if (cum <= 1.0 - p.top_p) alive[i] = 0;
    }
    z = 0;
    for (int i = 0; i < V; i++) if (alive[i]) z += exp(s[i] - mx);
    for (int i = 0; i < V; i++) prob[i] = alive[i] ? exp(s[i] - mx) / z : 0;
}

static void fill_logits(float *l, unsigned seed)
{
    srand(seed);
    for (int i = 0; i < V; i++) l[i] = (float)(rand() % 2000 - 1000) / 250.0f;
}

static void test_greedy_and_penalty(void)
{
    struct sampler_params p;
    sampler_defaults(&p);
    p.greedy = true;
    p.repetition_penalty = 1.2f;
    struct sampler s;
    T_EQ_INT(sampler_init(&s, &p, V), 0);
    float l[V];
    for (int i = 0; i < V; i++) l[i] = -1.0f;
    l[7] = 3.0f;
    l[9] = 2.9f;
    T_EQ_INT(sampler_sample(&s, l), 7);
    /* 7 is now penalised: 3.0/1.2 = 2.5 < 2.9 */
    for (int i = 0; i < V; i++) l[i] = -1.0f;
    l[7] = 3.0f;
    l[9] = 2.9f;
    T_EQ_INT(sampler_sample(&s, l), 9);
    T_NEAR(l[7], 2.5f, 1e-6);
    /* negative scores are multiplied */
    float m[V];
    for (int i = 0; i < V; i++) m[i] = -2.0f;
    sampler_apply_penalty(&s, m);
    T_NEAR(m[7], -2.4f, 1e-6);
    T_NEAR(m[0], -2.0f, 0);
    sampler_reset(&s);
    for (int i = 0; i < V; i++) m[i] = -2.0f;
    sampler_apply_penalty(&s, m);
    T_NEAR(m[7], -2.0f, 0);
    sampler_free(&s);
}

static void test_distribution(void)
{
    for (unsigned trial = 0; trial < 3; trial++) {
        struct sampler_params p;
        sampler_defaults(&p);
        p.top_k = trial == 0 ? 10 : 30;
        p.top_p = trial == 2 ? 0.5f : 0.8f;
        p.seed = 1234 + trial;
        struct sampler s;
        T_EQ_INT(sampler_init(&s, &p, V), 0);
        float base[V];
        fill_logits(base, 77 + trial);
        uint8_t seen[V] = {0};
        seen[3] = 1; /* one token penalised */
        double prob[V];
        reference_probs(base, seen, p, prob);
        int counts[V] = {0};
        const int N = 20000;
        for (int k = 0; k < N; k++) {
            float l[V];
            memcpy(l, base, sizeof l);
            memset(s.seen, 0, V);
            s.seen[3] = 1;
            int t = sampler_sample(&s, l);
            T_ASSERT(t >= 0 && t < V);
            counts[t]++;
        }
        int bad = 0;
        for (int i = 0; i < V; i++) {
            double f = (double)counts[i] / N, sd = sqrt(prob[i] * (1 - prob[i]) / N);
            if (prob[i] == 0 && counts[i]) bad++;
            if (fabs(f - prob[i]) > 5 * sd + 1e-3) bad++;
        }
        T_ASSERTF(bad == 0, "trial %u: %d tokens off their expected frequency", trial, bad);
        sampler_free(&s);
    }
}

static void test_seed_reproducible(void)
{
    struct sampler_params p;
    sampler_defaults(&p);
    p.seed = 99;
    struct sampler a, b;
    sampler_init(&a, &p, V);
    sampler_init(&b, &p, V);
    int same = 1, varied = 0, first = -1;
    for (int k = 0; k < 200; k++) {
        float l1[V], l2[V];
        fill_logits(l1, 5);
        memcpy(l2, l1, sizeof l1);
        int x = sampler_sample(&a, l1), y = sampler_sample(&b, l2);
        same &= x == y;
        if (first < 0) first = x;
        else if (x != first) varied = 1;
    }
    T_ASSERT(same);
    T_ASSERT(varied);
    sampler_free(&a);
    sampler_free(&b);
}

int main(void)
{
    T_RUN(test_greedy_and_penalty);
    T_RUN(test_distribution);
    T_RUN(test_seed_reproducible);
    return t_main_end("test_sampler");
}
