/* backend_cpu.c: the CPU twins of the ops, the executable specification of backend.h.
 * Every op computes in fp32 and rounds to the output dtype; where PyTorch's fp16 path rounds an
 * intermediate, rnd() rounds to the activation dtype at the same point (identity for F32).
 * Every op computes each row (token) by the same sequence of operations whatever the other rows of
 * the call, so batching, chunking or a cached prefix never changes a row's bits (matmul: the rule in
 * backend_cpu_matmul.c; attention: one attention_f32 per query row). OpenMP over rows. */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "backend_impl.h"

void backend_set_threads(int n)
{
    if (n > 0) omp_set_num_threads(n);
}

int backend_threads(void) { return omp_get_max_threads(); }

/* Rounds v to dtype t and back (what storing an intermediate in that dtype does). */
static inline float rnd(float v, enum dtype t)
{
    if (t == DTYPE_F16) return _cvtsh_ss(_cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT)); /* F16C: = f32_to_f16 (test_common) */
    if (t == DTYPE_BF16) return bf16_to_f32(f32_to_bf16(v));
    return v;
}

static inline float load1(const void *p, enum dtype t, int64_t i)
{
    switch (t) {
    case DTYPE_F32: return ((const float *)p)[i];
    case DTYPE_F16: return f16_to_f32(((const uint16_t *)p)[i]);
    case DTYPE_BF16: return bf16_to_f32(((const uint16_t *)p)[i]);
    case DTYPE_I32: return (float)((const int32_t *)p)[i];
    case DTYPE_U8: return (float)((const uint8_t *)p)[i];
    case DTYPE_Q8: case DTYPE_Q4: case DTYPE_NF4: break; /* whole rows only: quant_dequant_rows */
    }
    CHECKF(0, "element load from a %s tensor", dtype_name(t));
    return 0;
}

void cpu_convert(struct tensor *dst, const struct tensor *src)
{
    int64_t n = tensor_numel(src);
    if (dst->dtype == src->dtype) {
        memmove(dst->data, src->data, tensor_nbytes(src));
        return;
    }
    const int64_t blk = 4096;
#pragma omp parallel for if (n > 65536)
    for (int64_t b = 0; b < n; b += blk) {
        float tmp[4096];
        int64_t m = n - b < blk ? n - b : blk;
        convert_to_f32(tmp, (const char *)src->data + (size_t)b * dtype_size(src->dtype), src->dtype, m);
        convert_from_f32((char *)dst->data + (size_t)b * dtype_size(dst->dtype), dst->dtype, tmp, m);
    }
}

void cpu_embed(struct tensor *y, const struct tensor *table, const struct tensor *ids)
{
    int64_t n = y->shape[0], d = y->shape[1];
    const int32_t *id = ids->data;
    for (int64_t i = 0; i < n; i++) {
        CHECKF(id[i] >= 0 && id[i] < table->shape[0], "token id %d outside the vocabulary", id[i]);
        struct tensor src = tensor_rows_view(table, id[i], 1), dst = tensor_rows_view(y, i, 1);
        src.ndim = dst.ndim = 2;
        (void)d;
        cpu_convert(&dst, &src);
    }
}

/* ---- matmul: backend_cpu_matmul.c ---- */

/* ---- norms ---- */

void cpu_rmsnorm(struct tensor *y, const struct tensor *x, const struct tensor *w, float eps)
{
    const int64_t d = x->shape[x->ndim - 1], rows = tensor_numel(x) / d;
#pragma omp parallel for if (rows > 4)
    for (int64_t r = 0; r < rows; r++) {
        float *buf = malloc((size_t)d * sizeof(float));
        CHECK(buf);
        convert_to_f32(buf, (const char *)x->data + (size_t)(r * d) * dtype_size(x->dtype), x->dtype, d);
        double ss = 0; /* fp32 in torch; a double sum only removes summation-order noise */
        for (int64_t j = 0; j < d; j++) ss += (double)buf[j] * buf[j];
        float inv = 1.0f / sqrtf((float)(ss / (double)d) + eps);
        for (int64_t j = 0; j < d; j++) buf[j] = rnd(load1(w->data, w->dtype, j) * rnd(buf[j] * inv, x->dtype), y->dtype);
        convert_from_f32((char *)y->data + (size_t)(r * d) * dtype_size(y->dtype), y->dtype, buf, d);
        free(buf);
    }
}

void cpu_layernorm(struct tensor *y, const struct tensor *x, const struct tensor *w, const struct tensor *b, float eps)
{
    const int64_t d = x->shape[x->ndim - 1], rows = tensor_numel(x) / d;
#pragma omp parallel for if (rows > 4)
    for (int64_t r = 0; r < rows; r++) {
        float *buf = malloc((size_t)d * sizeof(float));
        CHECK(buf);
        convert_to_f32(buf, (const char *)x->data + (size_t)(r * d) * dtype_size(x->dtype), x->dtype, d);
        double s = 0, ss = 0;
        for (int64_t j = 0; j < d; j++) s += buf[j];
        double mean = s / (double)d;
        for (int64_t j = 0; j < d; j++) ss += ((double)buf[j] - mean) * ((double)buf[j] - mean);
        float rstd = 1.0f / sqrtf((float)(ss / (double)d) + eps), m = (float)mean;
        for (int64_t j = 0; j < d; j++)
            buf[j] = (buf[j] - m) * rstd * load1(w->data, w->dtype, j) + load1(b->data, b->dtype, j);
        convert_from_f32((char *)y->data + (size_t)(r * d) * dtype_size(y->dtype), y->dtype, buf, d);
        free(buf);
    }
}

/* ---- rope ---- */

void cpu_rope(struct tensor *x, const struct tensor *pos, double theta)
{
    const int64_t n = x->shape[0], nh = x->shape[1], hd = x->shape[2], half = hd / 2;
    const enum dtype t = x->dtype;
    float inv_freq[512];
    CHECK(half <= 512);
    /* HF: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), all fp32 */
    for (int64_t i = 0; i < half; i++) inv_freq[i] = 1.0f / powf((float)theta, (float)(2 * i) / (float)hd);
    const int32_t *p = pos->data;
#pragma omp parallel for if (n > 1)
    for (int64_t i = 0; i < n; i++) {
        float c[512], s[512];
        for (int64_t j = 0; j < half; j++) {
            float a = (float)p[i] * inv_freq[j];
            c[j] = rnd(cosf(a), t); /* cos/sin are cast to the activation dtype */
            s[j] = rnd(sinf(a), t);
        }
        for (int64_t h = 0; h < nh; h++) {
            size_t base = (size_t)((i * nh + h) * hd);
            for (int64_t j = 0; j < half; j++) {
                float x1 = load1(x->data, t, (int64_t)base + j), x2 = load1(x->data, t, (int64_t)base + j + half);
                float o1 = rnd(rnd(x1 * c[j], t) + rnd(-x2 * s[j], t), t);
                float o2 = rnd(rnd(x2 * c[j], t) + rnd(x1 * s[j], t), t);
                convert_from_f32((char *)x->data + (base + (size_t)j) * dtype_size(t), t, &o1, 1);
                convert_from_f32((char *)x->data + (base + (size_t)(j + half)) * dtype_size(t), t, &o2, 1);
            }
        }
    }
}

/* ---- attention ---- */

/* y += a * x over n floats, 8 lanes at a time (element-wise: same results as the scalar loop) */
static inline void axpy_f32(float *restrict y, float a, const float *restrict x, int64_t n)
{
    int64_t j = 0;
    const __m256 va = _mm256_set1_ps(a);
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(y + j, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + j), _mm256_loadu_ps(y + j)));
    for (; j < n; j++) y[j] = fmaf(a, x[j], y[j]);
}

/* a·b over n floats, 8 lanes at a time (the attention's q·k; the order of the partial sums differs
 * from a scalar loop only by fp32 rounding) */
static inline float dot_f32(const float *a, const float *b, int64_t n)
{
    int64_t j = 0;
    __m256 acc = _mm256_setzero_ps();
    for (; j + 8 <= n; j += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), acc);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s4 = _mm_hadd_ps(s4, s4);
    s4 = _mm_hadd_ps(s4, s4);
    float r = _mm_cvtss_f32(s4);
    for (; j < n; j++) r += a[j] * b[j];
    return r;
}

/* The attention itself over keys and values already in f32: kf, vf [T, Hkv, hd] (T, Hkv: k's rows
 * and heads as the callers gathered them). Each (query row, head) is computed alone, from its q, its
 * limit and the keys: the one routine of op_attention (a prefill chunk), op_attention_pos (decode) and
 * op_attention_rows (the batched step), so a row's result does not depend on the path or the chunk. */
static void attention_f32(struct tensor *out, const struct tensor *q, const float *kf, const float *vf, int64_t T,
                          int64_t Hkv, int64_t q_pos0, float scale, int flags)
{
    const int64_t n = q->shape[0], H = q->shape[1], hd = q->shape[2];
    const int64_t group = H / Hkv;
    const enum dtype at = q->dtype;
    const int eager = (flags & ATTN_EAGER_F16) != 0;
#pragma omp parallel
    {
        float *sc = malloc((size_t)T * sizeof(float)), *qf = malloc((size_t)hd * sizeof(float));
        float *acc = malloc((size_t)hd * sizeof(float));
        CHECK(sc && qf && acc);
#pragma omp for schedule(dynamic, 4)
        for (int64_t ih = 0; ih < n * H; ih++) {
            int64_t i = ih / H, h = ih % H, kh = h / group;
            int64_t limit = (flags & ATTN_CAUSAL) ? q_pos0 + i + 1 : T;
            convert_to_f32(qf, (const char *)q->data + (size_t)(ih * hd) * dtype_size(q->dtype), q->dtype, hd);
            float mx = -INFINITY;
            for (int64_t j = 0; j < limit; j++) {
                const float *kr = kf + (j * Hkv + kh) * hd;
                float d = dot_f32(qf, kr, hd);
                d = eager ? rnd(rnd(d, at) * scale, at) : d * scale;
                sc[j] = d;
                if (d > mx) mx = d;
            }
            double sum = 0;
            for (int64_t j = 0; j < limit; j++) {
                sc[j] = expf(sc[j] - mx);
                sum += sc[j];
            }
            float inv = (float)(1.0 / sum);
            memset(acc, 0, (size_t)hd * sizeof(float));
            for (int64_t j = 0; j < limit; j++) {
                float p = sc[j] * inv;
                if (eager) p = rnd(p, at); /* eager softmax output is cast back to the act dtype */
                axpy_f32(acc, p, vf + (j * Hkv + kh) * hd, hd);
            }
            convert_from_f32((char *)out->data + (size_t)(ih * hd) * dtype_size(out->dtype), out->dtype, acc, hd);
        }
        free(sc);
        free(qf);
        free(acc);
    }
}

void cpu_attention(struct tensor *out, const struct tensor *q, const struct tensor *k, const struct tensor *v,
                   int64_t q_pos0, float scale, int flags)
{
    const int64_t T = k->shape[0], Hkv = k->shape[1], hd = k->shape[2];
    /* keys/values converted to f32 once: [T, Hkv, hd] */
    float *kf = malloc((size_t)(T * Hkv * hd) * sizeof(float)), *vf = malloc((size_t)(T * Hkv * hd) * sizeof(float));
    CHECK(kf && vf);
    convert_to_f32(kf, k->data, k->dtype, T * Hkv * hd);
    convert_to_f32(vf, v->data, v->dtype, T * Hkv * hd);
    attention_f32(out, q, kf, vf, T, Hkv, q_pos0, scale, flags);
    free(kf);
    free(vf);
}

/* The cache row of token p of a paged sequence (block table tab, I32 [MB]); checks the entry. */
static int64_t page_row(const struct tensor *cache, const struct tensor *tab, int64_t p)
{
    const int32_t *t = tab->data;
    const int64_t nb = cache->shape[0] / KV_BLOCK;
    CHECKF(p >= 0 && p / KV_BLOCK < tab->shape[tab->ndim - 1], "paged KV: token %lld beyond a table of %lld blocks",
           (long long)p, (long long)tab->shape[tab->ndim - 1]);
    const int32_t b = t[p / KV_BLOCK];
    CHECKF(b >= 0 && b < nb, "paged KV: block %d of token %lld outside the pool of %lld blocks", b, (long long)p,
           (long long)nb);
    return (int64_t)b * KV_BLOCK + p % KV_BLOCK;
}

/* cpu_attention over the first nk tokens of a paged sequence: its rows gathered (converted to f32) in
 * order, then the same attention as on a contiguous cache, so the numbers are those of cpu_attention
 * on the gathered rows bit for bit. */
static void attention_paged(struct tensor *out, const struct tensor *q, const struct tensor *k, const struct tensor *v,
                            const struct tensor *tab, int64_t nk, int64_t q_pos0, float scale, int flags)
{
    const int64_t Hkv = k->shape[1], rn = Hkv * k->shape[2];
    const size_t rb = (size_t)rn * dtype_size(k->dtype);
    float *kf = malloc((size_t)(nk * rn) * sizeof(float)), *vf = malloc((size_t)(nk * rn) * sizeof(float));
    CHECK(kf && vf);
    for (int64_t j = 0; j < nk; j++) {
        const int64_t r = page_row(k, tab, j);
        convert_to_f32(kf + j * rn, (const char *)k->data + (size_t)r * rb, k->dtype, rn);
        convert_to_f32(vf + j * rn, (const char *)v->data + (size_t)r * rb, v->dtype, rn);
    }
    attention_f32(out, q, kf, vf, nk, Hkv, q_pos0, scale, flags);
    free(kf);
    free(vf);
}

/* ---- elementwise ---- */

#define ELEMENTWISE(y, n, expr)                                                                           \
    do {                                                                                                  \
        const int64_t n_ = (n);                                                                           \
        _Pragma("omp parallel for if (n_ > 65536)") for (int64_t i = 0; i < n_; i++)                    \
        {                                                                                                 \
            float v_ = (expr);                                                                            \
            if ((y)->dtype == DTYPE_F32) ((float *)(y)->data)[i] = v_;                                    \
            else convert_from_f32((char *)(y)->data + (size_t)i * dtype_size((y)->dtype), (y)->dtype, &v_, 1); \
        }                                                                                                 \
    } while (0)

void cpu_silu_mul(struct tensor *y, const struct tensor *gate, const struct tensor *up)
{
    const enum dtype t = y->dtype;
    ELEMENTWISE(y, tensor_numel(y), ({
                    float g = load1(gate->data, gate->dtype, i);
                    rnd(g / (1.0f + expf(-g)), t) * load1(up->data, up->dtype, i);
                }));
}

void cpu_linear(struct tensor *y, const struct tensor *x, const struct tensor *w, const struct tensor *bias, int act,
                const struct tensor *res)
{
    /* the Linear's output rounded to y's dtype first (torch's rounding point); a temporary when it
     * cannot go to y yet because y is the residual being added to */
    struct tensor t = *y;
    void *tmp = NULL;
    if (res && res->data == y->data) {
        tmp = malloc(tensor_nbytes(y));
        CHECK(tmp);
        t.data = tmp;
    }
    cpu_matmul(&t, x, w, bias);
    if (act == LINEAR_GELU_TANH) cpu_gelu_tanh(&t, &t);
    if (res) cpu_add(y, res, &t);
    free(tmp);
}

void cpu_gelu_tanh(struct tensor *y, const struct tensor *x)
{
    const float k0 = 0.7978845608028654f; /* sqrt(2/pi) */
    ELEMENTWISE(y, tensor_numel(y), ({
                    float a = load1(x->data, x->dtype, i);
                    0.5f * a * (1.0f + tanhf(k0 * (a + 0.044715f * a * a * a)));
                }));
}

void cpu_add(struct tensor *y, const struct tensor *a, const struct tensor *b)
{
    const int64_t nb = tensor_numel(b);
    ELEMENTWISE(y, tensor_numel(y), load1(a->data, a->dtype, i) + load1(b->data, b->dtype, i % nb));
}

void cpu_scale(struct tensor *y, const struct tensor *x, float s)
{
    ELEMENTWISE(y, tensor_numel(y), load1(x->data, x->dtype, i) * s);
}

void cpu_argmax(const struct tensor *x, int32_t *out)
{
    const int64_t n = x->shape[0], V = x->shape[1];
    for (int64_t i = 0; i < n; i++) {
        const float *r = (const float *)x->data + i * V;
        int64_t best = 0;
        for (int64_t j = 1; j < V; j++)
            if (r[j] > r[best]) best = j;
        out[i] = (int32_t)best;
    }
}

/* ---- decode-step ops: each is defined as the sequence of plain ops it fuses ---- */

void cpu_add_rmsnorm(struct tensor *h, struct tensor *xn, const struct tensor *o, const struct tensor *w, float eps)
{
    cpu_add(h, h, o);
    cpu_rmsnorm(xn, h, w, eps);
}

/* xn = rmsnorm(x) * nw in x's dtype (a new buffer, freed by the caller), or x itself when nw is NULL */
static struct tensor norm_input(const struct tensor *x, const struct tensor *nw, float eps)
{
    if (!nw) return *x;
    struct tensor xn = *x;
    xn.data = malloc(tensor_nbytes(x));
    CHECK(xn.data);
    cpu_rmsnorm(&xn, x, nw, eps);
    return xn;
}

void cpu_rmsnorm_matmul(struct tensor *const *ys, int np, const struct tensor *x, const struct tensor *nw, float eps,
                        const struct tensor *w)
{
    struct tensor xn = norm_input(x, nw, eps);
    int64_t off = 0;
    for (int i = 0; i < np; i++) {
        struct tensor wi = tensor_rows_view(w, off, ys[i]->shape[1]);
        cpu_matmul(ys[i], &xn, &wi, NULL);
        off += ys[i]->shape[1];
    }
    if (nw) free(xn.data);
}

void cpu_rmsnorm_swiglu(struct tensor *y, const struct tensor *x, const struct tensor *nw, float eps,
                        const struct tensor *w)
{
    struct tensor xn = norm_input(x, nw, eps);
    const int64_t f = y->shape[1];
    struct tensor g = *y, u = *y;
    g.data = malloc(tensor_nbytes(y));
    u.data = malloc(tensor_nbytes(y));
    CHECK(g.data && u.data);
    struct tensor wg = tensor_rows_view(w, 0, f), wu = tensor_rows_view(w, f, f);
    cpu_matmul(&g, &xn, &wg, NULL);
    cpu_matmul(&u, &xn, &wu, NULL);
    cpu_silu_mul(y, &g, &u);
    free(g.data);
    free(u.data);
    if (nw) free(xn.data);
}

/* rows of a [T, ...] cache at the positions in rows (host I32), or, with tab, at the rows of those
 * positions through the block table */
static void store_rows(struct tensor *cache, const struct tensor *x, const int32_t *rows, const struct tensor *tab)
{
    const size_t rb = (size_t)tensor_row_numel(x) * dtype_size(x->dtype);
    for (int64_t i = 0; i < x->shape[0]; i++) {
        const int64_t r = tab ? page_row(cache, tab, rows[i]) : rows[i];
        CHECKF(r >= 0 && r < cache->shape[0], "kv store: row %lld outside the cache of %lld", (long long)r,
               (long long)cache->shape[0]);
        memcpy((char *)cache->data + (size_t)r * rb, (const char *)x->data + (size_t)i * rb, rb);
    }
}

void cpu_rope_qk(struct tensor *q, struct tensor *k, const struct tensor *pos, double theta, const struct tensor *v,
                 struct tensor *kc, struct tensor *vc, const struct tensor *tab)
{
    cpu_rope(q, pos, theta);
    cpu_rope(k, pos, theta);
    if (kc) {
        store_rows(kc, k, pos->data, tab);
        store_rows(vc, v, pos->data, tab);
    }
}

void cpu_rope_qk_rows(struct tensor *q, struct tensor *k, const struct tensor *pos, double theta, const struct tensor *v,
                      struct tensor *kc, struct tensor *vc, const struct tensor *rows)
{
    cpu_rope(q, pos, theta);
    cpu_rope(k, pos, theta);
    store_rows(kc, k, rows->data, NULL);
    store_rows(vc, v, rows->data, NULL);
}

void cpu_rope_qkv_rows(struct tensor *q, const struct tensor *qkv, const struct tensor *pos, double theta,
                       struct tensor *kc, struct tensor *vc, const struct tensor *rows)
{
    const int64_t n = q->shape[0], H = q->shape[1], hd = q->shape[2], Hkv = kc->shape[1];
    const size_t es = dtype_size(q->dtype), qb = (size_t)(H * hd) * es, kb = (size_t)(Hkv * hd) * es;
    char *kv = malloc(2 * (size_t)n * kb + 1);
    CHECKF(kv, "rope_qkv_rows: out of memory");
    struct tensor k = tensor_make(q->dtype, q->dev, kv, 3, n, Hkv, hd);
    struct tensor v = tensor_make(q->dtype, q->dev, kv + (size_t)n * kb, 3, n, Hkv, hd);
    for (int64_t i = 0; i < n; i++) { /* the split */
        const char *r = (const char *)qkv->data + (size_t)i * (qb + 2 * kb);
        memcpy((char *)q->data + (size_t)i * qb, r, qb);
        memcpy(kv + (size_t)i * kb, r + qb, kb);
        memcpy(kv + (size_t)(n + i) * kb, r + qb + kb, kb);
    }
    cpu_rope_qk_rows(q, &k, pos, theta, &v, kc, vc, rows);
    free(kv);
}

void cpu_kv_store(struct tensor *cache, const struct tensor *x, const struct tensor *rows)
{
    store_rows(cache, x, rows->data, NULL);
}

void cpu_kv_pages(struct tensor *cache, struct tensor *x, const struct tensor *tab, int64_t p0, int to_cache)
{
    const size_t rb = (size_t)tensor_row_numel(x) * dtype_size(x->dtype);
    for (int64_t i = 0; i < x->shape[0]; i++) {
        char *c = (char *)cache->data + (size_t)page_row(cache, tab, p0 + i) * rb, *r = (char *)x->data + (size_t)i * rb;
        if (to_cache) memcpy(c, r, rb);
        else memcpy(r, c, rb);
    }
}

void cpu_attention_pos(struct tensor *out, const struct tensor *q, const struct tensor *k, const struct tensor *v,
                       const struct tensor *pos, const struct tensor *tab, float scale, int flags)
{
    const int32_t *p = pos->data;
    const int64_t n = q->shape[0], nk = (int64_t)p[n - 1] + 1;
    if (tab) {
        CHECKF(p[0] >= 0, "attention: position %d", p[0]);
        attention_paged(out, q, k, v, tab, nk, p[0], scale, flags);
        return;
    }
    CHECKF(p[0] >= 0 && nk <= k->shape[0], "attention: positions %d..%d outside the cache of %lld", p[0], p[n - 1],
           (long long)k->shape[0]);
    struct tensor kv = tensor_rows_view(k, 0, nk), vv = tensor_rows_view(v, 0, nk);
    cpu_attention(out, q, &kv, &vv, p[0], scale, flags);
}

/* A loop over the rows: each is exactly the one-token attention of its sequence alone. */
void cpu_attention_rows(struct tensor *out, const struct tensor *q, const struct tensor *k, const struct tensor *v,
                        const struct tensor *tab, const struct tensor *seq, const struct tensor *n_keys, float scale)
{
    const int32_t *sq = seq->data, *nk = n_keys->data;
    const int64_t S = tab->shape[0], MB = tab->shape[1];
    for (int64_t i = 0; i < q->shape[0]; i++) {
        CHECKF(sq[i] >= 0 && sq[i] < S && nk[i] >= 1 && nk[i] <= MB * KV_BLOCK,
               "attention: row %lld reads %d keys of sequence %d (tables: %lld of %lld blocks)", (long long)i, nk[i],
               sq[i], (long long)S, (long long)MB);
        struct tensor oi = tensor_rows_view(out, i, 1), qi = tensor_rows_view(q, i, 1);
        struct tensor ti = tensor_rows_view(tab, sq[i], 1);
        ti = tensor_reshape(&ti, 1, MB);
        attention_paged(&oi, &qi, k, v, &ti, nk[i], nk[i] - 1, scale, ATTN_CAUSAL);
    }
}

void cpu_argmax_dev(const struct tensor *x, struct tensor *ids)
{
    cpu_argmax(x, ids->data);
}

void cpu_add_i32(struct tensor *x, int32_t d)
{
    int32_t *p = x->data;
    for (int64_t i = 0; i < tensor_numel(x); i++) p[i] += d;
}


/* A loop over the sequences: each is exactly one cpu_attention call (parallel inside). */
void cpu_attention_batch(struct tensor *out, const struct tensor *q, const struct tensor *k, const struct tensor *v,
                         int64_t n_seq, float scale, int flags)
{
    const int64_t N = q->shape[0] / n_seq, T = k->shape[0] / n_seq;
    for (int64_t s = 0; s < n_seq; s++) {
        struct tensor os = tensor_rows_view(out, s * N, N), qs = tensor_rows_view(q, s * N, N);
        struct tensor ks = tensor_rows_view(k, s * T, T), vs = tensor_rows_view(v, s * T, T);
        cpu_attention(&os, &qs, &ks, &vs, 0, scale, flags);
    }
}

/* op_read_sum: each thread sums a contiguous range, four words per step as a small tree (a shorter
 * dependency chain than one add per word); the per-thread sums are added by the OpenMP reduction
 * (integers: the order does not matter). */
uint64_t cpu_read_sum(const struct tensor *x)
{
    const uint64_t *w = x->data;
    const int64_t n = (int64_t)(tensor_nbytes(x) / 8), n4 = n / 4 * 4;
    uint64_t s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n4; i += 4) s += (w[i] + w[i + 1]) + (w[i + 2] + w[i + 3]);
    for (int64_t i = n4; i < n; i++) s += w[i];
    return s;
}
