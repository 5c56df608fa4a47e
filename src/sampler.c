/* sampler.c: see sampler.h. top-k/top-p follow transformers 4.40's TopKLogitsWarper and
 * TopPLogitsWarper: top-k keeps scores >= the k-th largest (ties at the boundary survive);
 * top-p sorts ascending, removes tokens whose cumulative probability is <= 1 - top_p, and
 * always keeps the most likely one.
 * Also the CPU twin of op_sample_dev (cpu_sample_dev): the device sampler's state handling around
 * sampler_pick, which is the specification the CUDA kernel (cuda/cuda_sample.cu) must match token
 * for token. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend_impl.h"

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

double sampler_uniform(struct sampler *s) { return sampler_uniform_at(s->p.seed, s->draws++); }

void sampler_record(struct sampler *s, int32_t tok)
{
    if (tok >= 0 && tok < s->vocab) s->seen[tok] = 1;
}

/* x < 0 ? x * p : x / p, one float operation (the device writes __fmul_rn / __fdiv_rn) */
static float penalise(float x, float p) { return x < 0 ? x * p : x / p; }

void sampler_apply_penalty(const struct sampler *s, float *logits)
{
    const float p = s->p.repetition_penalty;
    if (p == 1.0f) return;
    for (int i = 0; i < s->vocab; i++)
        if (s->seen[i]) logits[i] = penalise(logits[i], p);
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

/* The k-th largest of a[0..n-1] (k >= 1), by quickselect; permutes a. */
static float kth_largest(float *a, int n, int k1)
{
    int lo = 0, hi = n - 1, k = k1 - 1;
    while (lo < hi) {
        float piv = a[(lo + hi) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (a[i] > piv) i++;
            while (a[j] < piv) j--;
            if (i <= j) { float x = a[i]; a[i] = a[j]; a[j] = x; i++; j--; }
        }
        if (k <= j) hi = j;
        else if (k >= i) lo = i;
        else break;
    }
    return a[k];
}

int32_t sampler_pick(const struct sampler_params *p, const float *x, int V, float *work, int32_t *idx,
                     uint64_t draw, int max_cand)
{
    if (p->greedy) return argmax(x, V);
    /* The limit t -> 0+ of softmax(x / t) puts all mass on the largest x: a temperature that is 0
     * (1e-300 from a JSON double becomes 0 as a float) or so small that the largest x / t
     * overflows (1e-38 with logits ~10: +inf - +inf; with every logit negative, all w = -inf) picks
     * the argmax, as greedy does (after the penalty, which the caller applied); otherwise the
     * largest w is finite and the softmax below is well defined (w = -inf elsewhere gives 0). One
     * draw is still consumed (the caller counts draws by p->greedy): the device sampler keeps step. */
    const float t = p->temperature;
    if (!(t > 0)) return argmax(x, V);
    const int32_t top = argmax(x, V);
    if (isinf(x[top] / t)) return top;
    float *w = work;
    for (int i = 0; i < V; i++) w[i] = x[i] / t;
    /* candidates sorted descending; only the top k matter for top-k, but top-p needs an order */
    /* ids whose logit is -inf (masked by sampler_sample_masked) are never candidates: they have no
     * weight, and sorting a vocabulary of them would cost more than the rest of the step. The test is
     * on x, not on w: a finite logit whose x / t overflows to -inf (t -> 0) stays a candidate, as in
     * the plain rule and the device sampler (their candidate counts must agree, SAMPLE_DEV_MAX_CAND). */
    int n = 0;
    if (p->top_k > 0 && p->top_k < V) {
        /* keep every score >= the k-th largest; the selection permutes w, so w is computed again
         * (the same divisions, the same values) */
        const float kth = kth_largest(w, V, p->top_k);
        for (int i = 0; i < V; i++) {
            w[i] = x[i] / t;
            if (w[i] >= kth && x[i] > -INFINITY) idx[n++] = i;
        }
    } else {
        for (int i = 0; i < V; i++)
            if (x[i] > -INFINITY) idx[n++] = i;
    }
    if (max_cand > 0 && n > max_cand) return -1;
    qsort_r(idx, (size_t)n, sizeof *idx, cmp_desc, w);
    /* softmax over the candidates (all others are -inf) */
    double mx = w[idx[0]], sum = 0;
    for (int i = 0; i < n; i++) sum += exp((double)w[idx[i]] - mx);
    if (p->top_p < 1.0f) {
        /* ascending cumulative: drop tokens with cumsum <= 1 - top_p; the top token always stays */
        double cum = 0;
        int keep_from = n - 1; /* in descending order, index of the last kept */
        for (int i = n - 1; i >= 1; i--) {
            cum += exp((double)w[idx[i]] - mx) / sum;
            if (cum <= 1.0 - (double)p->top_p) keep_from = i - 1;
            else break;
        }
        n = keep_from + 1;
        sum = 0;
        for (int i = 0; i < n; i++) sum += exp((double)w[idx[i]] - mx);
    }
    double u = sampler_uniform_at(p->seed, draw) * sum, acc = 0;
    int32_t tok = idx[n - 1];
    for (int i = 0; i < n; i++) {
        acc += exp((double)w[idx[i]] - mx);
        if (u < acc) { tok = idx[i]; break; }
    }
    return tok;
}

int32_t sampler_sample(struct sampler *s, float *logits)
{
    sampler_apply_penalty(s, logits);
    int32_t tok = sampler_pick(&s->p, logits, s->vocab, s->work, s->idx, s->draws, 0);
    if (!s->p.greedy) s->draws++;
    sampler_record(s, tok);
    return tok;
}

int32_t sampler_sample_masked(struct sampler *s, float *logits, const uint32_t *allow)
{
    if (!allow) return sampler_sample(s, logits);
    sampler_apply_penalty(s, logits);
    int any = 0;
    for (int i = 0; i < s->vocab; i++) {
        if (allow[i >> 5] >> (i & 31) & 1) any = 1;
        else logits[i] = -INFINITY;
    }
    if (!any) {
        if (!s->p.greedy) s->draws++;
        return -1;
    }
    int32_t tok = sampler_pick(&s->p, logits, s->vocab, s->work, s->idx, s->draws, 0);
    if (!s->p.greedy) s->draws++;
    if (!(allow[tok >> 5] >> (tok & 31) & 1)) tok = argmax(logits, s->vocab); /* the rounding fallback */
    sampler_record(s, tok);
    return tok;
}

int sampler_logprobs(const float *x, int V, int32_t chosen, int k, double *chosen_lp, int32_t *top, double *top_lp)
{
    if (k < 0 || k > SAMPLER_MAX_TOP_LOGPROBS || V < 1) return -1;
    double mx = -INFINITY;
    for (int i = 0; i < V; i++)
        if (x[i] > mx) mx = x[i]; /* NaN never compares greater */
    if (mx == -INFINITY) return -1;
    double sum = 0;
    for (int i = 0; i < V; i++)
        if (x[i] > -INFINITY) sum += exp((double)x[i] - mx);
    const double lse = mx + log(sum);
    *chosen_lp = chosen >= 0 && chosen < V && x[chosen] > -INFINITY ? (double)x[chosen] - lse : -INFINITY;
    /* top k by insertion into a sorted list of at most k: (x desc, id asc) */
    int n = 0;
    for (int i = 0; i < V && k > 0; i++) {
        if (!(x[i] > -INFINITY)) continue;
        if (n == k && !(x[i] > x[top[n - 1]])) continue; /* equal x: the earlier id stays */
        int j = n < k ? n++ : k - 1;
        while (j > 0 && x[i] > x[top[j - 1]]) {
            top[j] = top[j - 1];
            j--;
        }
        top[j] = i;
    }
    for (int j = 0; j < n; j++) top_lp[j] = (double)x[top[j]] - lse;
    return n;
}

/* ---- the device sampler's state, and the CPU twin of op_sample_dev ---- */

static int32_t f32_bits(float f)
{
    int32_t b;
    memcpy(&b, &f, 4);
    return b;
}

static float bits_f32(int32_t b)
{
    float f;
    memcpy(&f, &b, 4);
    return f;
}

/* backend.h's count of the state's words: the header, then one flag bit per token (the layout above) */
int64_t sample_state_words(int64_t vocab) { return SAMPLE_ST_HEADER + (vocab + 31) / 32; }

void sampler_state_header(int32_t *h, const struct sampler_params *p, uint64_t draws)
{
    memset(h, 0, SAMPLE_ST_HEADER * sizeof *h);
    h[SAMPLE_ST_DRAWS_LO] = (int32_t)(uint32_t)draws;
    h[SAMPLE_ST_DRAWS_HI] = (int32_t)(uint32_t)(draws >> 32);
    h[SAMPLE_ST_GREEDY] = p->greedy ? 1 : 0;
    h[SAMPLE_ST_TEMPERATURE] = f32_bits(p->temperature);
    h[SAMPLE_ST_TOP_K] = p->top_k;
    h[SAMPLE_ST_TOP_P] = f32_bits(p->top_p);
    h[SAMPLE_ST_PENALTY] = f32_bits(p->repetition_penalty);
    h[SAMPLE_ST_SEED_LO] = (int32_t)(uint32_t)p->seed;
    h[SAMPLE_ST_SEED_HI] = (int32_t)(uint32_t)(p->seed >> 32);
}

bool sampler_device_ok(const struct sampler_params *p)
{
    return p->greedy || (p->top_k > 0 && p->top_k <= SAMPLE_DEV_MAX_CAND);
}

/* One row of op_sample_dev on the host: mark *id generated in st's flags, penalise a copy of the
 * logits x[V] with the flags, sampler_pick with the state's draw index and the device's candidate
 * limit; the pick into *id. x, work and idx hold V entries each (scratch). */
static void sample_row(const float *logits, int V, int32_t *id, int32_t *st, float *x, float *work, int32_t *idx)
{
    uint32_t *flags = (uint32_t *)(st + SAMPLE_ST_HEADER);
    struct sampler_params p;
    memset(&p, 0, sizeof p);
    p.greedy = st[SAMPLE_ST_GREEDY] != 0;
    p.temperature = bits_f32(st[SAMPLE_ST_TEMPERATURE]);
    p.top_k = st[SAMPLE_ST_TOP_K];
    p.top_p = bits_f32(st[SAMPLE_ST_TOP_P]);
    p.repetition_penalty = bits_f32(st[SAMPLE_ST_PENALTY]);
    p.seed = (uint64_t)(uint32_t)st[SAMPLE_ST_SEED_LO] | (uint64_t)(uint32_t)st[SAMPLE_ST_SEED_HI] << 32;
    uint64_t draw = (uint64_t)(uint32_t)st[SAMPLE_ST_DRAWS_LO] | (uint64_t)(uint32_t)st[SAMPLE_ST_DRAWS_HI] << 32;
    if (*id >= 0 && *id < V) flags[*id >> 5] |= 1u << (*id & 31);
    memcpy(x, logits, (size_t)V * sizeof *x);
    if (p.repetition_penalty != 1.0f)
        for (int i = 0; i < V; i++)
            if (flags[i >> 5] >> (i & 31) & 1) x[i] = penalise(x[i], p.repetition_penalty);
    const int32_t tok = sampler_pick(&p, x, V, work, idx, draw, SAMPLE_DEV_MAX_CAND);
    *id = tok;
    st[SAMPLE_ST_STATUS] = tok < 0;
    if (!p.greedy) {
        draw++;
        st[SAMPLE_ST_DRAWS_LO] = (int32_t)(uint32_t)draw;
        st[SAMPLE_ST_DRAWS_HI] = (int32_t)(uint32_t)(draw >> 32);
    }
}

/* op_sample_dev on host tensors: each row alone (sample_row) with its state row. */
void cpu_sample_dev(const struct tensor *logits, struct tensor *ids, struct tensor *state, const struct tensor *sel)
{
    const int64_t n = logits->shape[0];
    const int V = (int)logits->shape[1];
    const int64_t words = sample_state_words(V), S = tensor_numel(state) / words;
    float *x = malloc((size_t)V * sizeof *x), *work = malloc((size_t)V * sizeof *work);
    int32_t *idx = malloc((size_t)V * sizeof *idx);
    CHECKF(x && work && idx, "cpu_sample_dev: out of memory for a vocabulary of %d", V);
    for (int64_t i = 0; i < n; i++) {
        const int64_t r = sel ? ((const int32_t *)sel->data)[i] : i;
        CHECKF(r >= 0 && r < S, "op_sample_dev: row %lld selects state row %lld of %lld", (long long)i, (long long)r,
               (long long)S);
        sample_row((const float *)logits->data + i * V, V, (int32_t *)ids->data + i, (int32_t *)state->data + r * words,
                   x, work, idx);
    }
    free(x);
    free(work);
    free(idx);
}
