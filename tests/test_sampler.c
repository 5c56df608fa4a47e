/* test_sampler.c: the sampling order of spec §8 against an independent brute-force model of
 * transformers' processors (penalty -> temperature -> top-k -> top-p -> softmax); the counter RNG
 * against splitmix64's published outputs; and the CPU twin of op_sample_dev (the device sampler's
 * specification) against the host sampler, token for token, over random logits, parameters and
 * seeds, with ties at the k-th value, penalties on negative logits, greedy + penalty and the
 * decline path (more than SAMPLE_DEV_MAX_CAND candidates). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
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

/* splitmix64 of state 0 (and 1234567) gives, as its first outputs, the published test vector
 * e220a8397b1dcdaf 6e789e6aa1b965f4 06c45d188009454f; draw i is output i+1 of state seed. */
static void test_uniform_at(void)
{
    const uint64_t s0[3] = {0xe220a8397b1dcdafULL, 0x6e789e6aa1b965f4ULL, 0x06c45d188009454fULL};
    const uint64_t s1[3] = {0x599ed017fb08fc85ULL, 0x2c73f08458540fa5ULL, 0x883ebce5a3f27c77ULL};
    for (int i = 0; i < 3; i++) {
        T_ASSERT(sampler_uniform_at(0, (uint64_t)i) == (double)(s0[i] >> 11) / 9007199254740992.0);
        T_ASSERT(sampler_uniform_at(1234567, (uint64_t)i) == (double)(s1[i] >> 11) / 9007199254740992.0);
    }
    /* sampler_uniform walks the counter */
    struct sampler_params p;
    sampler_defaults(&p);
    p.seed = 1234567;
    struct sampler s;
    T_EQ_INT(sampler_init(&s, &p, 8), 0);
    for (int i = 0; i < 3; i++) T_ASSERT(sampler_uniform(&s) == sampler_uniform_at(1234567, (uint64_t)i));
    T_EQ_INT(s.draws, 3);
    sampler_free(&s);
    /* range and a coarse uniformity check (16 bins, 64k draws: each within 5 sigma) */
    int bins[16] = {0};
    for (uint64_t i = 0; i < 65536; i++) {
        double u = sampler_uniform_at(42, i);
        T_ASSERT(u >= 0 && u < 1);
        bins[(int)(u * 16)]++;
    }
    for (int b = 0; b < 16; b++) T_ASSERTF(abs(bins[b] - 4096) < 5 * 64, "bin %d: %d", b, bins[b]);
}

/* ---- the CPU twin of op_sample_dev vs the host sampler ---- */
#undef V /* the brute-force tests' vocabulary; these tests take theirs as a value */

static uint64_t g_state = 88172645463325252ULL;
static uint32_t rnd(void)
{
    g_state ^= g_state << 13, g_state ^= g_state >> 7, g_state ^= g_state << 17;
    return (uint32_t)(g_state >> 16);
}
static float frnd(void) { return (float)(rnd() % 1000000) / 1000000.0f; } /* [0, 1) */

enum logit_kind { LK_SPREAD, LK_TIES, LK_NEGATIVE, LK_PEAKED, LK_N };

/* One step's logits: kind LK_TIES quantises to 24 levels (ties at the k-th value), LK_NEGATIVE is
 * all below zero (the penalty multiplies), LK_PEAKED a few large values over noise, with -0.0 and
 * +0.0 both present. */
static void make_logits(float *l, int V, int kind)
{
    for (int i = 0; i < V; i++) {
        float u = frnd();
        switch (kind) {
        case LK_TIES: l[i] = (float)(rnd() % 24) * 0.5f - 6.0f; break;
        case LK_NEGATIVE: l[i] = -0.05f - 12.0f * u; break;
        case LK_PEAKED: l[i] = 4.0f * u - 2.0f + (rnd() % 50 == 0 ? 9.0f + 4.0f * frnd() : 0.0f); break;
        default: l[i] = 16.0f * u - 8.0f; break;
        }
    }
    if (V > 10) l[3] = -0.0f, l[5] = 0.0f;
}

/* Runs n steps of one request through the twin (engine-style: the fed token is the previous
 * pick; a declined pick is made by a host sampler that follows the twin) and through a reference
 * host sampler; returns the number of steps that differ and counts the twin's declines. */
static int run_request(int V, const struct sampler_params *p, int kind, int steps, int *declines)
{
    struct sampler ref, fol;
    CHECK(sampler_init(&ref, p, V) == 0 && sampler_init(&fol, p, V) == 0);
    float *base = malloc((size_t)V * sizeof *base), *l = malloc((size_t)V * sizeof *l);
    float *lt = malloc((size_t)V * sizeof *lt), *keep = malloc((size_t)V * sizeof *keep);
    const int64_t words = sample_state_words(V);
    int32_t *st = malloc((size_t)words * sizeof *st), id = 0;
    CHECK(base && l && lt && keep && st);
    struct tensor state = tensor_make(DTYPE_I32, device_cpu(), st, 1, words);
    struct tensor ids = tensor_make(DTYPE_I32, device_cpu(), &id, 1, (int64_t)1);
    struct tensor lg = tensor_make(DTYPE_F32, device_cpu(), lt, 2, (int64_t)1, (int64_t)V);
    make_logits(base, V, kind);
    int bad = 0;
    /* the first token: prefill logits on the host (both samplers) */
    memcpy(l, base, (size_t)V * sizeof *l);
    int32_t tok = sampler_sample(&ref, l);
    memcpy(l, base, (size_t)V * sizeof *l);
    int32_t ftok = sampler_sample(&fol, l);
    bad += tok != ftok;
    op_sample_begin(&state, p, fol.draws);
    for (int s = 1; s < steps; s++) {
        /* the next logits: the base plus noise, so repeated tokens meet their penalty */
        for (int i = 0; i < V; i++) lt[i] = base[i] + (kind == LK_TIES ? 0.0f : 0.25f * frnd());
        memcpy(l, lt, (size_t)V * sizeof *l);
        memcpy(keep, lt, (size_t)V * sizeof *keep);
        tok = sampler_sample(&ref, l);
        id = ftok;
        op_sample_dev(&lg, &ids, &state, NULL);
        T_ASSERT(memcmp(keep, lt, (size_t)V * sizeof *lt) == 0); /* the logits are not modified */
        T_EQ_INT(st[SAMPLE_ST_STATUS], id < 0);
        if (id >= 0) {
            sampler_record(&fol, id);
            if (!p->greedy) fol.draws++;
            ftok = id;
        } else {
            (*declines)++;
            memcpy(l, lt, (size_t)V * sizeof *l);
            ftok = sampler_sample(&fol, l);
        }
        uint64_t d = (uint64_t)(uint32_t)st[SAMPLE_ST_DRAWS_LO] | (uint64_t)(uint32_t)st[SAMPLE_ST_DRAWS_HI] << 32;
        T_ASSERTF(d == ref.draws, "draw counter %llu, host %llu", (unsigned long long)d, (unsigned long long)ref.draws);
        bad += tok != ftok;
    }
    /* the twin's flags are the host's generated set (the last pick is marked when it is fed) */
    int flags_ok = 1;
    for (int i = 0; i < V; i++) {
        int f = (st[SAMPLE_ST_HEADER + i / 32] >> (i % 32) & 1) || i == ftok;
        flags_ok &= f == ref.seen[i];
    }
    T_ASSERT(flags_ok);
    free(base), free(l), free(lt), free(keep), free(st);
    sampler_free(&ref);
    sampler_free(&fol);
    return bad;
}

static void test_twin_matches_host(void)
{
    static const int vocab[] = {50, 1000, 5003, 40000};
    static const int topk[] = {1, 2, 7, 40, 100, 2048};
    static const float temp[] = {0.7f, 1.0f, 0.3f, 1.7f, 0.0f};
    static const float topp[] = {0.8f, 1.0f, 0.5f, 0.95f};
    static const float pen[] = {1.05f, 1.0f, 1.3f, 0.9f};
    int cases = 0, bad_cases = 0, declines = 0, greedy_cases = 0;
    for (int c = 0; c < 48; c++) {
        struct sampler_params p;
        sampler_defaults(&p);
        const int V = vocab[c % 4];
        p.greedy = c % 8 == 7;
        p.top_k = topk[rnd() % 6];
        p.temperature = temp[rnd() % 5];
        p.top_p = topp[rnd() % 4];
        p.repetition_penalty = pen[p.greedy ? 2 : rnd() % 4];
        p.seed = ((uint64_t)rnd() << 32) | rnd();
        const int kind = (int)(rnd() % LK_N);
        int dec = 0;
        int bad = run_request(V, &p, kind, V > 10000 ? 6 : 24, &dec);
        T_ASSERTF(bad == 0, "case %d (V %d, kind %d, greedy %d, k %d, t %g, p %g, pen %g): %d steps differ", c, V, kind,
                  p.greedy, p.top_k, p.temperature, p.top_p, p.repetition_penalty, bad);
        cases++, bad_cases += bad != 0, declines += dec, greedy_cases += p.greedy;
    }
    printf("  twin vs host: %d requests (%d greedy + penalty), %d differ, %d declined steps\n", cases, greedy_cases,
           bad_cases, declines);
}

/* More than SAMPLE_DEV_MAX_CAND tokens tie at the top: the twin declines (-1, status 1) and still
 * consumes the draw; the host picks with that draw (checked in run_request). */
/* Finding 7 of issue 16: a temperature so small that logits / t overflows (1e-38 with logits ~10)
 * made inf - inf = NaN probabilities and picked the last candidate; a temperature that is 0 as a
 * float (1e-300 from JSON) was treated as 1.0. Both are the t -> 0 limit: the argmax of the
 * penalised logits (also when every logit is negative and every x / t is -inf). The expectation is
 * computed here in double: the limit applies when |largest penalised logit / t| exceeds FLT_MAX,
 * or t is 0; the argmax is found by a separate scan. */
static void test_tiny_temperature(void)
{
    enum { NV = 50 };
    static const double temps[] = {1e-38, 1e-300, 0.0, 1e-45, 3e-39};
    int checked = 0;
    for (int ti = 0; ti < 5; ti++)
        for (int trial = 0; trial < 40; trial++) {
            struct sampler_params p;
            sampler_defaults(&p);
            p.temperature = (float)temps[ti];
            p.top_k = trial % 3 == 0 ? 0 : 100;
            p.top_p = trial % 2 ? 0.8f : 1.0f;
            p.seed = (uint64_t)trial * 7919u + (uint64_t)ti;
            struct sampler s;
            T_EQ_INT(sampler_init(&s, &p, NV), 0);
            float l[NV];
            fill_logits(l, 1000u + (unsigned)trial);
            for (int i = 0; i < NV; i++) l[i] *= 2.5f;            /* |logit| up to 10 */
            l[trial % NV] = 10.0f, l[(trial + 17) % NV] = 9.75f;   /* a clear top two */
            if (trial % 5 == 4)
                for (int i = 0; i < NV; i++) l[i] -= 30.0f; /* all negative: every x / t is -inf */
            /* the first token generated, then penalised (1.05): the top moves when it is penalised */
            s.seen[trial % NV] = (uint8_t)(trial % 4 == 1);
            double best = -INFINITY;
            int want = -1;
            for (int i = 0; i < NV; i++) {
                double x = l[i];
                if (s.seen[i]) x = x < 0 ? x * (double)p.repetition_penalty : x / (double)p.repetition_penalty;
                if (x > best) best = x, want = i;
            }
            const double t = (double)p.temperature;
            T_ASSERTF(t == 0 || fabs(best / t) > 3.4028234663852886e38, "case is not in the overflow regime (t %g)", t);
            const int32_t got = sampler_sample(&s, l);
            T_ASSERTF(got == want, "t %g trial %d: got %d, the argmax is %d", temps[ti], trial, got, want);
            T_EQ_INT(s.draws, 1); /* a sampled request still counts its draw */
            /* the device sampler's CPU twin agrees, state included */
            const int64_t words = sample_state_words(NV);
            int32_t st[64], id = -1;
            CHECK(words <= 64);
            float lt[NV];
            fill_logits(lt, 1000u + (unsigned)trial);
            for (int i = 0; i < NV; i++) lt[i] *= 2.5f;
            lt[trial % NV] = 10.0f, lt[(trial + 17) % NV] = 9.75f;
            if (trial % 5 == 4)
                for (int i = 0; i < NV; i++) lt[i] -= 30.0f;
            struct tensor state = tensor_make(DTYPE_I32, device_cpu(), st, 1, words);
            struct tensor ids = tensor_make(DTYPE_I32, device_cpu(), &id, 1, (int64_t)1);
            struct tensor lg = tensor_make(DTYPE_F32, device_cpu(), lt, 2, (int64_t)1, (int64_t)NV);
            op_sample_begin(&state, &p, 4);
            if (trial % 4 == 1) id = trial % NV; /* fed: marks it generated */
            op_sample_dev(&lg, &ids, &state, NULL);
            T_ASSERTF(id == want, "twin: t %g trial %d: got %d, the argmax is %d", temps[ti], trial, id, want);
            T_EQ_INT(st[SAMPLE_ST_STATUS], 0);
            T_EQ_INT(st[SAMPLE_ST_DRAWS_LO], 5);
            sampler_free(&s);
            checked++;
        }
    T_EQ_INT(checked, 200);
    /* the limit is only the limit: at t = 1 other tokens are drawn */
    struct sampler_params p;
    sampler_defaults(&p);
    p.temperature = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    int other = 0;
    for (int trial = 0; trial < 64; trial++) {
        struct sampler s;
        p.seed = (uint64_t)trial;
        T_EQ_INT(sampler_init(&s, &p, NV), 0);
        float l[NV];
        for (int i = 0; i < NV; i++) l[i] = 0.0f;
        l[0] = 0.5f;
        other += sampler_sample(&s, l) != 0;
        sampler_free(&s);
    }
    T_ASSERT(other > 32); /* P(token 0) = e^0.5 / (e^0.5 + 49) = 3.3% at t = 1 */
}

/* Several requests as the rows of one op_sample_dev call (the batched decode step): row i uses the
 * state row sel[i] of a table with rows no request uses; each row's picks, draws and declines equal a
 * host sampler running that request alone, and the unused state rows stay untouched. */
static void test_twin_rows(void)
{
    enum { R = 5, S = 7, STEPS = 24 };
    const int V = 3000;
    const int32_t selv[R] = {6, 2, 0, 4, 5};
    struct sampler_params p[R];
    for (int r = 0; r < R; r++) {
        sampler_defaults(&p[r]);
        p[r].seed = 1000u + (unsigned)r;
    }
    p[0].greedy = true;                       /* greedy with the penalty */
    p[1].top_k = 5, p[1].temperature = 1.3f;  /* few candidates */
    p[2].top_p = 1.0f;                        /* top-k only */
    p[3].top_k = 2048, p[3].top_p = 0.95f;    /* the candidate limit */
    p[4].repetition_penalty = 1.0f, p[4].top_k = 0; /* no penalty, top-k off: every pick declines */
    const int64_t words = sample_state_words(V);
    int32_t *st = malloc((size_t)(S * words) * sizeof *st), *st0 = malloc((size_t)(S * words) * sizeof *st0);
    float *base = malloc((size_t)R * V * sizeof *base), *lt = malloc((size_t)R * V * sizeof *lt);
    float *l = malloc((size_t)V * sizeof *l);
    CHECK(st && st0 && base && lt && l);
    for (int64_t i = 0; i < S * words; i++) st[i] = (int32_t)(0x5a5a0000u + (uint32_t)i); /* not zero */
    struct tensor state = tensor_make(DTYPE_I32, device_cpu(), st, 2, (int64_t)S, words);
    int32_t id[R], sel[R], want[R];
    struct sampler ref[R];
    for (int r = 0; r < R; r++) {
        sel[r] = selv[r];
        CHECK(sampler_init(&ref[r], &p[r], V) == 0);
        make_logits(base + (size_t)r * V, V, r == 2 ? LK_TIES : r == 3 ? LK_PEAKED : LK_SPREAD);
        memcpy(l, base + (size_t)r * V, (size_t)V * sizeof *l);
        id[r] = sampler_sample(&ref[r], l); /* the first token, on the host */
        struct tensor row = tensor_rows_view(&state, sel[r], 1);
        op_sample_begin(&row, &p[r], ref[r].draws);
    }
    memcpy(st0, st, (size_t)(S * words) * sizeof *st);
    struct tensor ids = tensor_make(DTYPE_I32, device_cpu(), id, 1, (int64_t)R);
    struct tensor selt = tensor_make(DTYPE_I32, device_cpu(), sel, 1, (int64_t)R);
    struct tensor lg = tensor_make(DTYPE_F32, device_cpu(), lt, 2, (int64_t)R, (int64_t)V);
    int bad = 0, declines = 0, picked = 0;
    for (int step = 1; step < STEPS; step++) {
        for (int r = 0; r < R; r++) {
            float *x = lt + (size_t)r * V;
            for (int i = 0; i < V; i++) x[i] = base[(size_t)r * V + i] + (r == 2 ? 0.0f : 0.25f * frnd());
            memcpy(l, x, (size_t)V * sizeof *l);
            want[r] = sampler_sample(&ref[r], l);
        }
        op_sample_dev(&lg, &ids, &state, &selt);
        for (int r = 0; r < R; r++) {
            const int32_t *sr = st + (size_t)sel[r] * words;
            T_EQ_INT(sr[SAMPLE_ST_STATUS], id[r] < 0);
            uint64_t d = (uint64_t)(uint32_t)sr[SAMPLE_ST_DRAWS_LO] | (uint64_t)(uint32_t)sr[SAMPLE_ST_DRAWS_HI] << 32;
            T_ASSERTF(d == ref[r].draws, "row %d step %d: draw counter %llu, host %llu", r, step,
                      (unsigned long long)d, (unsigned long long)ref[r].draws);
            if (id[r] < 0) { /* declined: the host's pick (same draw) is the next fed token */
                declines++;
                id[r] = want[r];
            } else {
                picked++;
                bad += id[r] != want[r];
            }
        }
    }
    T_EQ_INT(bad, 0);
    T_ASSERTF(picked > 0 && declines > 0, "picked %d, declined %d: both paths should run", picked, declines);
    /* the rows no request selected: untouched */
    for (int r = 1; r <= 3; r += 2)
        T_ASSERT(memcmp(st + (size_t)r * words, st0 + (size_t)r * words, (size_t)words * sizeof *st) == 0);
    printf("  %d requests as rows of one op_sample_dev, %d steps: %d device picks equal the host's, %d declined\n", R,
           STEPS - 1, picked, declines);
    for (int r = 0; r < R; r++) sampler_free(&ref[r]);
    free(st), free(st0), free(base), free(lt), free(l);
}

static void test_twin_declines(void)
{
    const int V = 5000;
    struct sampler_params p;
    sampler_defaults(&p);
    p.top_k = 100;
    p.seed = 5;
    float *l = malloc((size_t)V * sizeof *l);
    const int64_t words = sample_state_words(V);
    int32_t *st = malloc((size_t)words * sizeof *st), id = 17;
    for (int i = 0; i < V; i++) l[i] = i % 5 == 0 ? -3.0f : 2.5f; /* 4000 equal top values */
    struct tensor state = tensor_make(DTYPE_I32, device_cpu(), st, 1, words);
    struct tensor ids = tensor_make(DTYPE_I32, device_cpu(), &id, 1, (int64_t)1);
    struct tensor lg = tensor_make(DTYPE_F32, device_cpu(), l, 2, (int64_t)1, (int64_t)V);
    op_sample_begin(&state, &p, 9);
    op_sample_dev(&lg, &ids, &state, NULL);
    T_EQ_INT(id, -1);
    T_EQ_INT(st[SAMPLE_ST_STATUS], 1);
    T_EQ_INT(st[SAMPLE_ST_DRAWS_LO], 10);
    T_EQ_INT(st[SAMPLE_ST_HEADER] >> 17 & 1, 1); /* the fed token was marked */
    /* top-k off: every token is a candidate */
    p.top_k = 0;
    l[0] = 10.0f;
    op_sample_begin(&state, &p, 0);
    id = 3;
    op_sample_dev(&lg, &ids, &state, NULL);
    T_EQ_INT(id, -1);
    T_EQ_INT(st[SAMPLE_ST_DRAWS_LO], 1);
    /* with the ties gone below the k-th value, the same state picks normally */
    p.top_k = 100;
    for (int i = 0; i < V; i++) l[i] = (float)(i % 977) * 0.01f;
    op_sample_begin(&state, &p, 1);
    id = 3;
    op_sample_dev(&lg, &ids, &state, NULL);
    T_ASSERT(id >= 0 && id < V && l[id] >= 9.0f); /* among the top values 9.00 .. 9.76 */
    T_EQ_INT(st[SAMPLE_ST_STATUS], 0);
    T_EQ_INT(st[SAMPLE_ST_DRAWS_LO], 2);
    free(l);
    free(st);
}

/* top-p on exact ties, by hand (transformers' TopPLogitsWarper: sort ascending, remove the tokens
 * whose cumulative probability is <= 1 - top_p, never the most likely one). Equal logits give
 * probabilities that are exact binary fractions, so the cumulative sums hit 1 - top_p exactly:
 *  - 4 equal tokens, top_p 0.5: cum = 0.25, 0.5 (<= 0.5: both removed), 0.75 -> 2 tokens stay;
 *  - 4 equal tokens, top_p 0.75: cum = 0.25 (<= 0.25, removed), 0.5 -> 3 stay;
 *  - 8 equal tokens, top_p 0.25: cum = 0.125 .. 0.75 removed, 0.875 -> 2 stay;
 *  - 2 equal tokens, top_p 0.5: cum 0.5 <= 0.5 removes one -> 1 stays (the lower id: ties keep the
 *    lower id first, as the descending order used everywhere here does).
 * A `<` instead of `<=` keeps one token more in every case. Which tokens stay: the lowest ids (the
 * candidates are ordered by descending score, then ascending id). Sampled 400 times each, every kept
 * token must appear and no other. */
#define TV 16
static void test_top_p_exact_ties(void)
{
    static const struct { int n; float top_p; int keep; } cs[] = {{4, 0.5f, 2}, {4, 0.75f, 3}, {8, 0.25f, 2}, {2, 0.5f, 1}};
    float x[TV], work[TV];
    int32_t idx[TV];
    for (int c = 0; c < 4; c++) {
        for (int i = 0; i < TV; i++) x[i] = i < cs[c].n ? 0.0f : -INFINITY; /* others: probability 0 exactly */
        struct sampler_params p;
        sampler_defaults(&p);
        p.temperature = 1.0f;
        p.top_k = 0;
        p.top_p = cs[c].top_p;
        p.repetition_penalty = 1.0f;
        int count[TV] = {0};
        for (uint64_t d = 0; d < 400; d++) {
            int32_t t = sampler_pick(&p, x, TV, work, idx, d, 0);
            if (t >= 0 && t < TV) count[t]++;
        }
        int kept = 0;
        for (int i = 0; i < TV; i++) kept += count[i] > 0;
        T_ASSERTF(kept == cs[c].keep, "%d equal tokens, top_p %.2f: %d tokens sampled, expected %d", cs[c].n,
                  (double)cs[c].top_p, kept, cs[c].keep);
        for (int i = 0; i < cs[c].keep; i++) T_ASSERTF(count[i] > 0, "token %d never sampled", i);
        /* and no token beyond the kept ones */
        for (int i = 0; i < TV; i++) T_ASSERT(i < cs[c].keep || count[i] == 0);
    }
}

/* greedy on a tie picks the lowest id (torch.argmax's first maximum, spec §8; the reference fixtures'
 * rule), also after the penalty made two scores equal */
static void test_greedy_tie_lowest_id(void)
{
    float x[TV], work[TV];
    int32_t idx[TV];
    struct sampler_params p;
    sampler_defaults(&p);
    p.greedy = true;
    for (int i = 0; i < TV; i++) x[i] = -1.0f;
    T_EQ_INT(sampler_pick(&p, x, TV, work, idx, 0, 0), 0); /* all equal */
    x[3] = x[7] = x[12] = 2.5f;
    T_EQ_INT(sampler_pick(&p, x, TV, work, idx, 0, 0), 3);
    x[3] = -2.5f; /* 7 and 12 tie now */
    T_EQ_INT(sampler_pick(&p, x, TV, work, idx, 0, 0), 7);
}


#define V 50 /* reference_probs' and fill_logits' vocabulary again */

/* sampler_sample_masked: NULL and an all-ones mask give sampler_sample's tokens and draws exactly */
static void test_masked_unconstrained_identical(void)
{
    uint32_t ones[(V + 31) / 32];
    memset(ones, 0xff, sizeof ones);
    for (unsigned trial = 0; trial < 40; trial++) {
        struct sampler_params p;
        sampler_defaults(&p);
        p.seed = 99 + trial;
        p.greedy = trial % 5 == 0;
        p.top_k = trial % 3 == 0 ? 0 : 10;
        p.top_p = trial % 4 == 0 ? 1.0f : 0.8f;
        struct sampler a, b, c;
        T_EQ_INT(sampler_init(&a, &p, V), 0);
        T_EQ_INT(sampler_init(&b, &p, V), 0);
        T_EQ_INT(sampler_init(&c, &p, V), 0);
        for (int step = 0; step < 30; step++) {
            float la[V], lb[V], lc[V];
            fill_logits(la, 1000 * trial + (unsigned)step);
            memcpy(lb, la, sizeof la);
            memcpy(lc, la, sizeof la);
            int32_t ta = sampler_sample(&a, la), tb = sampler_sample_masked(&b, lb, NULL),
                    tc = sampler_sample_masked(&c, lc, ones);
            T_EQ_INT(ta, tb);
            T_EQ_INT(ta, tc);
            T_ASSERT(memcmp(la, lb, sizeof la) == 0 && memcmp(la, lc, sizeof la) == 0);
        }
        T_EQ_INT(a.draws, b.draws);
        T_EQ_INT(a.draws, c.draws);
        sampler_free(&a);
        sampler_free(&b);
        sampler_free(&c);
    }
}

/* Under a mask: greedy takes the largest allowed logit; sampling follows the distribution of the
 * allowed ids alone (reference_probs on the row with -inf where masked), top-k counting only them;
 * no masked id is ever drawn; an empty mask gives -1 and consumes the draw. */
static void test_masked_distribution(void)
{
    float base[V];
    fill_logits(base, 4242);
    uint32_t allow[(V + 31) / 32] = {0};
    const int allowed[] = {2, 5, 17, 33, 40, 49};
    for (size_t i = 0; i < sizeof allowed / sizeof *allowed; i++) allow[allowed[i] >> 5] |= 1u << (allowed[i] & 31);
    /* greedy: the argmax over the six, found here by hand */
    int best = allowed[0];
    for (size_t i = 1; i < sizeof allowed / sizeof *allowed; i++)
        if (base[allowed[i]] > base[best]) best = allowed[i];
    struct sampler_params p;
    sampler_defaults(&p);
    p.greedy = true;
    p.repetition_penalty = 1.0f;
    struct sampler s;
    T_EQ_INT(sampler_init(&s, &p, V), 0);
    float l[V];
    memcpy(l, base, sizeof l);
    T_EQ_INT(sampler_sample_masked(&s, l, allow), best);
    T_ASSERT(isinf(l[0]) && l[0] < 0 && l[2] == base[2]); /* the row the pick was made from */
    sampler_free(&s);
    for (int trial = 0; trial < 2; trial++) {
        sampler_defaults(&p);
        p.top_k = trial == 0 ? 4 : 100; /* 4 of the 6 allowed; then more than there are */
        p.top_p = trial == 0 ? 1.0f : 0.9f;
        p.repetition_penalty = 1.0f;
        p.temperature = 1.3f;
        p.seed = 555 + (uint64_t)trial;
        T_EQ_INT(sampler_init(&s, &p, V), 0);
        float masked[V];
        for (int i = 0; i < V; i++) masked[i] = allow[i >> 5] >> (i & 31) & 1 ? base[i] : -INFINITY;
        uint8_t seen[V] = {0};
        double prob[V];
        struct sampler_params pr = p;
        if (pr.top_k > V) pr.top_k = V;
        reference_probs(masked, seen, pr, prob);
        int counts[V] = {0};
        const int N = 20000;
        for (int k = 0; k < N; k++) {
            memcpy(l, base, sizeof l);
            int t = sampler_sample_masked(&s, l, allow);
            T_ASSERT(t >= 0 && t < V && (allow[t >> 5] >> (t & 31) & 1));
            if (t >= 0 && t < V) counts[t]++;
        }
        for (int i = 0; i < V; i++) {
            double f = (double)counts[i] / N, sd = sqrt(prob[i] * (1 - prob[i]) / N);
            T_ASSERTF(fabs(f - prob[i]) <= 5 * sd + 1e-9, "trial %d id %d: freq %g vs %g", trial, i, f, prob[i]);
        }
        T_EQ_INT(s.draws, N);
        uint32_t none[(V + 31) / 32] = {0};
        memcpy(l, base, sizeof l);
        T_EQ_INT(sampler_sample_masked(&s, l, none), -1);
        T_EQ_INT(s.draws, N + 1);
        sampler_free(&s);
    }
}

/* sampler_logprobs against an independent computation: long double, the sum taken in ascending
 * order, the top list from a full sort; and two values worked out by hand. */
static int cmp_top(const void *a, const void *b, void *xv)
{
    const float *x = xv;
    int i = *(const int *)a, j = *(const int *)b;
    if (x[i] != x[j]) return x[i] > x[j] ? -1 : 1;
    return i - j;
}
static int cmp_ld(const void *a, const void *b)
{
    long double x = *(const long double *)a, y = *(const long double *)b;
    return x < y ? -1 : x > y;
}

static void test_logprobs(void)
{
    /* by hand: x = {0, ln 3}: p = 1/4, 3/4 */
    float two[2] = {0.0f, (float)log(3.0)};
    double lp, tl[2];
    int32_t ti[2];
    T_EQ_INT(sampler_logprobs(two, 2, 0, 2, &lp, ti, tl), 2);
    T_NEAR(lp, log(0.25) + (log(3.0) - (double)two[1]) * 0.75, 1e-7); /* ln 3 rounded to a float */
    T_EQ_INT(ti[0], 1);
    T_EQ_INT(ti[1], 0);
    T_NEAR(tl[0], -0.2876820724517809, 1e-7);
    T_NEAR(tl[1], -1.3862943611198906, 1e-7);
    /* a uniform row: every logprob is -log(V), ties listed by id */
    float flat[V];
    for (int i = 0; i < V; i++) flat[i] = 123.25f;
    double tlv[20];
    int32_t tiv[20];
    T_EQ_INT(sampler_logprobs(flat, V, 7, 20, &lp, tiv, tlv), 20);
    T_NEAR(lp, -log((double)V), 1e-12);
    for (int j = 0; j < 20; j++) T_EQ_INT(tiv[j], j);
    /* bad arguments */
    T_EQ_INT(sampler_logprobs(flat, V, 0, 21, &lp, tiv, tlv), -1);
    T_EQ_INT(sampler_logprobs(flat, V, 0, -1, &lp, tiv, tlv), -1);
    float inf[3] = {-INFINITY, -INFINITY, -INFINITY};
    T_EQ_INT(sampler_logprobs(inf, 3, 0, 1, &lp, tiv, tlv), -1);
    /* random rows, large offsets, ties, masked entries, k from 0 to 20 */
    for (unsigned trial = 0; trial < 200; trial++) {
        float x[V];
        fill_logits(x, 9000 + trial);
        if (trial % 3 == 0)
            for (int i = 0; i < V; i++) x[i] += 3000.0f;
        if (trial % 4 == 1)
            for (int i = 0; i < V; i += 3) x[i] = -INFINITY;
        if (trial % 5 == 2) x[11] = x[4]; /* a tie */
        const int k = (int)(trial % 21);
        const int32_t chosen = (int32_t)(trial * 7 % V);
        long double mx = -INFINITY, e[V];
        int ne = 0;
        for (int i = 0; i < V; i++) if (x[i] > mx) mx = x[i];
        for (int i = 0; i < V; i++) if (!isinf(x[i])) e[ne++] = expl((long double)x[i] - mx);
        qsort(e, (size_t)ne, sizeof *e, cmp_ld);
        long double z = 0;
        for (int i = 0; i < ne; i++) z += e[i];
        const long double lse = mx + logl(z);
        int order[V], nf = 0;
        for (int i = 0; i < V; i++) if (!isinf(x[i])) order[nf++] = i;
        qsort_r(order, (size_t)nf, sizeof *order, cmp_top, x);
        double got_lp, got_tl[20];
        int32_t got_ti[20];
        int n = sampler_logprobs(x, V, chosen, k, &got_lp, got_ti, got_tl);
        T_EQ_INT(n, k < nf ? k : nf);
        if (isinf(x[chosen])) T_ASSERT(isinf(got_lp) && got_lp < 0);
        else T_NEAR(got_lp, (double)((long double)x[chosen] - lse), 1e-9);
        for (int j = 0; j < n && j < 20; j++) {
            T_EQ_INT(got_ti[j], order[j]);
            T_NEAR(got_tl[j], (double)((long double)x[order[j]] - lse), 1e-9);
        }
    }
}
#undef V

int main(void)
{
    T_RUN(test_greedy_and_penalty);
    T_RUN(test_distribution);
    T_RUN(test_seed_reproducible);
    T_RUN(test_uniform_at);
    T_RUN(test_twin_matches_host);
    T_RUN(test_twin_rows);
    T_RUN(test_twin_declines);
    T_RUN(test_tiny_temperature);
    T_RUN(test_top_p_exact_ties);
    T_RUN(test_greedy_tie_lowest_id);
    T_RUN(test_masked_unconstrained_identical);
    T_RUN(test_masked_distribution);
    T_RUN(test_logprobs);
    return t_main_end("test_sampler");
}
