/* resampler.c: the perceiver resampler of spec §4 through the ops of backend.h.
 * Arithmetic order follows HF resampler.py (a copy of nn.MultiheadAttention's explicit path, taken
 * because need_weights=True): kv = ln_kv(x·kv_proj^T); Q = ln_q(query)·Wq^T+bq; K = (kv+pos)·Wk^T+bk;
 * V = kv·Wv^T+bv; q_scaled = Q*sqrt(1/128) rounded to the act dtype; scores = q_scaled·K^T rounded
 * (baddbmm); softmax in fp32, rounded; P·V rounded; out_proj; ln_post; ·proj.
 * Key padding: piece i only computes and attends to its first h_i*w_i keys. Dropping a key is what
 * the -inf mask does (exp(-inf) = 0 is left out of the max and the sum), so this is exact, and each
 * piece's output does not depend on the other pieces (up to GEMM blocking of the shared Q rows).
 * Position code: the cache row (r, c) is [sin(c w), cos(c w) | sin(r w), cos(r w)] (§4.2, §11.5).
 * Its column half depends only on c and its row half only on r, so we upload a small table of
 * (max_w + max_h) rows, each zero in the other half, gather both halves with op_embed and add them:
 * x + 0 is exact, so this equals slicing the full cache and casting it to the act dtype. */
#include "resampler.h"

#include <math.h>
#include <string.h>

#include "backend.h"
#include "model.h"

/* Scratch is carved with tensor_carve (tensor.h): a counting pass sizes it, the same code lays it out. */

/* ---- 2-D sin-cos position code (§4.2) ---- */

/* numpy, float32 throughout: omega = arange(d4, f32); omega /= d4; omega = 1. / 10000**omega */
static float sincos_omega(int i, int d4)
{
    float e = (float)i / (float)d4;
    return 1.0f / powf(10000.0f, e);
}

/* out[0:d4] = sin(pos*omega), out[d4:2*d4] = cos(pos*omega): get_1d_sincos_pos_embed_from_grid_new.
 * omega: the d4 values sincos_omega(i, d4), or NULL to compute them here. */
static void sincos_1d_w(float *out, int d4, int pos, const float *omega)
{
    for (int i = 0; i < d4; i++) {
        float a = (float)pos * (omega ? omega[i] : sincos_omega(i, d4)); /* einsum product, float32 */
        out[i] = sinf(a);
        out[d4 + i] = cosf(a);
    }
}

static void sincos_1d(float *out, int d4, int pos) { sincos_1d_w(out, d4, pos, NULL); }

void resampler_sincos(float *out, int d, int r, int c)
{
    CHECK(d % 4 == 0 && r >= 0 && c >= 0);
    /* meshgrid(grid_w, grid_h): grid[0] holds the column index and feeds the first half */
    sincos_1d(out, d / 4, c);
    sincos_1d(out + d / 2, d / 4, r);
}

/* ---- forward ---- */

int resampler_check_tgt(const int32_t *tgt_hw, int n_pieces, int64_t n_max, struct err *e)
{
    if (n_pieces < 1) return err_set(e, "resampler: %d pieces", n_pieces);
    for (int i = 0; i < n_pieces; i++) {
        int64_t h = tgt_hw[2 * i], w = tgt_hw[2 * i + 1];
        if (h < 1 || w < 1 || h * w > n_max)
            return err_set(e, "resampler: piece %d has tgt size (%lld, %lld) but the input holds %lld patches", i,
                           (long long)h, (long long)w, (long long)n_max);
    }
    return 0;
}

struct resampler_dims {
    int64_t B, d, q, n_keys; /* n_keys = max h*w */
    int64_t max_h, max_w;
};

static void resampler_dims(struct resampler_dims *m, const struct model_config *c, const int32_t *tgt_hw,
                           int n_pieces)
{
    memset(m, 0, sizeof *m);
    m->B = n_pieces;
    m->d = c->hidden_size;
    m->q = c->query_num;
    for (int i = 0; i < n_pieces; i++) {
        int64_t h = tgt_hw[2 * i], w = tgt_hw[2 * i + 1];
        if (h * w > m->n_keys) m->n_keys = h * w;
        if (h > m->max_h) m->max_h = h;
        if (w > m->max_w) m->max_w = w;
    }
}

struct resampler_bufs {
    struct tensor q0, qm;             /* [q, d]: ln_q(query), then the scaled projection */
    struct tensor kv, pa, pb, k, v;   /* [n_keys, d] per piece, reused */
    struct tensor att, o;             /* [B*q, d] */
    struct tensor tab;                /* [max_w + max_h, d]: sin-cos halves */
    struct tensor ids;                /* [B*2*n_keys] I32: column ids then row ids per piece */
};

static void resampler_carve(struct resampler_bufs *b, struct tensor_carver *cv, const struct resampler_dims *m,
                            enum dtype act)
{
    b->q0 = tensor_carve(cv, act, m->q, m->d);
    b->qm = tensor_carve(cv, act, m->q, m->d);
    b->kv = tensor_carve(cv, act, m->n_keys, m->d);
    b->pa = tensor_carve(cv, act, m->n_keys, m->d);
    b->pb = tensor_carve(cv, act, m->n_keys, m->d);
    b->k = tensor_carve(cv, act, m->n_keys, m->d);
    b->v = tensor_carve(cv, act, m->n_keys, m->d);
    b->att = tensor_carve(cv, act, m->B * m->q, m->d);
    b->o = tensor_carve(cv, act, m->B * m->q, m->d);
    b->tab = tensor_carve(cv, act, m->max_w + m->max_h, m->d);
    b->ids = tensor_carve(cv, DTYPE_I32, m->B * 2 * m->n_keys, 1);
    b->ids = tensor_reshape(&b->ids, 1, m->B * 2 * m->n_keys);
}

size_t resampler_scratch_bytes(const struct model_config *c, const int32_t *tgt_hw, int n_pieces, enum dtype act)
{
    struct resampler_dims m;
    resampler_dims(&m, c, tgt_hw, n_pieces);
    struct tensor_carver cv = {.base = NULL, .dev = device_cpu()};
    struct resampler_bufs b;
    resampler_carve(&b, &cv, &m, act);
    return cv.off;
}

size_t resampler_views_bound(const struct model_config *c, int n_pieces, int64_t max_patches, enum dtype act)
{
    /* the largest piece shapes of max_patches patches: every piece max_patches keys, and the
     * sin-cos table's max_w + max_h rows at most 2 * max_patches */
    struct resampler_dims m = {.B = n_pieces, .d = c->hidden_size, .q = c->query_num, .n_keys = max_patches,
                               .max_h = max_patches, .max_w = max_patches};
    struct tensor_carver cv = {.base = NULL, .dev = device_cpu()};
    struct resampler_bufs b;
    resampler_carve(&b, &cv, &m, act);
    return cv.raw;
}

int resampler_forward(struct tensor *out, const struct resampler_weights *w, const struct model_config *c,
                      const struct tensor *x, const int32_t *tgt_hw, int n_pieces, void *scratch,
                      size_t scratch_bytes, struct err *e)
{
    const int64_t vd = c->vision_config.hidden_size;
    const enum dtype act = x->dtype;
    const struct device dev = w->query.dev;
    CHECKF(x->ndim == 3 && x->shape[0] == n_pieces && x->shape[2] == vd, "resampler x must be [%d, N, %lld]",
           n_pieces, (long long)vd);
    if (resampler_check_tgt(tgt_hw, n_pieces, x->shape[1], e)) return -1;
    struct resampler_dims m;
    resampler_dims(&m, c, tgt_hw, n_pieces);
    if (m.d % RESAMPLER_HEAD_DIM != 0 || m.d % 4 != 0)
        return err_set(e, "resampler: hidden_size %lld is not a multiple of %d", (long long)m.d, RESAMPLER_HEAD_DIM);
    const int64_t heads = m.d / RESAMPLER_HEAD_DIM, n_x = x->shape[1];
    CHECKF(out->ndim == 3 && out->shape[0] == m.B && out->shape[1] == m.q && out->shape[2] == m.d,
           "resampler out must be [%lld, %lld, %lld]", (long long)m.B, (long long)m.q, (long long)m.d);
    CHECK(out->dtype == act && device_eq(out->dev, dev) && device_eq(x->dev, dev));
    CHECK(w->query.ndim == 2 && w->query.shape[0] == m.q && w->query.shape[1] == m.d);

    int ret = -1;
    void *owned = NULL;
    float *tab_f = NULL, *omega = NULL;
    void *tab_h = NULL;
    int32_t *ids_h = NULL;
    const size_t need = resampler_scratch_bytes(c, tgt_hw, n_pieces, act);
    if (scratch) {
        if (scratch_bytes < need) {
            err_set(e, "resampler: scratch of %zu bytes, need %zu", scratch_bytes, need);
            goto done;
        }
    } else {
        /* one allocation per call (tests); the engine passes its kept arena (mm.c). dev_free
         * waits for the device, so the queued ops are done with it before it is released. */
        owned = scratch = dev_alloc(dev, need, e);
        if (!owned) goto done;
    }
    struct tensor_carver cv = {.base = scratch, .dev = dev};
    struct resampler_bufs b;
    resampler_carve(&b, &cv, &m, act);

    /* Host: the sin-cos half table (f32 as numpy, then cast to the act dtype as .to(dtype) does) and
     * the gather ids; (max_w + max_h) * d values, tiny next to the activations. */
    const int64_t nt = m.max_w + m.max_h, d4 = m.d / 4;
    tab_f = calloc((size_t)(nt * m.d), sizeof *tab_f);
    tab_h = malloc((size_t)(nt * m.d) * dtype_size(act));
    ids_h = malloc((size_t)(m.B * 2 * m.n_keys) * sizeof *ids_h);
    omega = malloc((size_t)d4 * sizeof *omega);
    if (!tab_f || !tab_h || !ids_h || !omega) {
        err_set(e, "resampler: out of host memory for the position table (%lld rows)", (long long)nt);
        goto done;
    }
    /* ~(max_w + max_h) * d/2 sinf/cosf (milliseconds for a 10-piece image): omega once, rows in
     * parallel (each value is computed alone, so the result does not depend on the threads) */
    for (int64_t i = 0; i < d4; i++) omega[i] = sincos_omega((int)i, (int)d4);
#pragma omp parallel for schedule(static) if (nt > 8)
    for (int64_t r = 0; r < nt; r++) {
        if (r < m.max_w) sincos_1d_w(tab_f + r * m.d, (int)d4, (int)r, omega); /* column c = r */
        else sincos_1d_w(tab_f + r * m.d + m.d / 2, (int)d4, (int)(r - m.max_w), omega); /* row r - max_w */
    }
    convert_from_f32(tab_h, act, tab_f, nt * m.d);
    for (int64_t i = 0; i < m.B; i++) {
        int64_t pw = tgt_hw[2 * i + 1], n = tgt_hw[2 * i] * pw;
        int32_t *ic = ids_h + i * 2 * m.n_keys, *ir = ic + m.n_keys;
        for (int64_t k = 0; k < m.n_keys; k++) { /* key k = patch (k / w, k % w), raster order */
            ic[k] = k < n ? (int32_t)(k % pw) : 0;
            ir[k] = k < n ? (int32_t)(m.max_w + k / pw) : 0;
        }
    }
    struct tensor th = tensor_make(act, device_cpu(), tab_h, 2, nt, m.d);
    struct tensor ih = tensor_make(DTYPE_I32, device_cpu(), ids_h, 1, m.B * 2 * m.n_keys);
    op_copy(&b.tab, &th);
    op_copy(&b.ids, &ih);

    /* Queries, shared by all pieces; scaled before the product as MultiheadAttention does */
    op_layernorm(&b.q0, &w->query, &w->ln_q_w, &w->ln_q_b, RESAMPLER_LN_EPS);
    op_matmul(&b.qm, &b.q0, &w->wq, &w->bq);
    op_scale(&b.qm, &b.qm, (float)sqrt(1.0 / (double)RESAMPLER_HEAD_DIM));
    struct tensor q3 = tensor_reshape(&b.qm, 3, m.q, heads, (int64_t)RESAMPLER_HEAD_DIM);

    for (int64_t i = 0; i < m.B; i++) {
        const int64_t n = (int64_t)tgt_hw[2 * i] * tgt_hw[2 * i + 1];
        struct tensor xi = tensor_rows_view(x, i, 1);
        xi = tensor_reshape(&xi, 2, n_x, vd);
        xi = tensor_rows_view(&xi, 0, n); /* only the real patches: the padded keys are masked */
        struct tensor kv = tensor_rows_view(&b.kv, 0, n), pa = tensor_rows_view(&b.pa, 0, n);
        struct tensor pb = tensor_rows_view(&b.pb, 0, n), k = tensor_rows_view(&b.k, 0, n);
        struct tensor v = tensor_rows_view(&b.v, 0, n);
        struct tensor ic = tensor_rows_view(&b.ids, i * 2 * m.n_keys, n);
        struct tensor ir = tensor_rows_view(&b.ids, i * 2 * m.n_keys + m.n_keys, n);
        op_matmul(&kv, &xi, &w->kv_proj, NULL);
        op_layernorm(&kv, &kv, &w->ln_kv_w, &w->ln_kv_b, RESAMPLER_LN_EPS);
        op_embed(&pa, &b.tab, &ic);
        op_embed(&pb, &b.tab, &ir);
        op_add(&pa, &pa, &pb); /* exact: each element has one zero operand */
        op_add(&pb, &kv, &pa); /* key input = kv + pos, rounded once */
        op_matmul(&k, &pb, &w->wk, &w->bk);
        op_matmul(&v, &kv, &w->wv, &w->bv);
        struct tensor k3 = tensor_reshape(&k, 3, n, heads, (int64_t)RESAMPLER_HEAD_DIM);
        struct tensor v3 = tensor_reshape(&v, 3, n, heads, (int64_t)RESAMPLER_HEAD_DIM);
        struct tensor ai = tensor_rows_view(&b.att, i * m.q, m.q);
        ai = tensor_reshape(&ai, 3, m.q, heads, (int64_t)RESAMPLER_HEAD_DIM);
        /* scale 1: q is already scaled; EAGER rounds the scores and the probabilities to the act
         * dtype as baddbmm and softmax(fp16) do (identity for F32) */
        op_attention(&ai, &q3, &k3, &v3, 0, 1.0f, ATTN_EAGER_F16);
    }
    op_matmul(&b.o, &b.att, &w->out_w, &w->out_b);
    op_layernorm(&b.o, &b.o, &w->ln_post_w, &w->ln_post_b, RESAMPLER_LN_EPS);
    struct tensor y = tensor_reshape(out, 2, m.B * m.q, m.d);
    op_matmul(&y, &b.o, &w->proj_t, NULL); /* x @ proj, proj stored transposed */
    /* no dev_sync: the host buffers were copied before op_copy returned (see vision.c); the caller
     * syncs when it needs the result on the host */
    ret = 0;
done:
    free(omega);
    free(tab_f);
    free(tab_h);
    free(ids_h);
    dev_free(dev, owned);
    return ret;
}
