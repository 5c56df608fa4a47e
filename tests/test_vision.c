/* test_vision.c: the vision tower and the resampler.
 * - the §3.2 position-id rule on the spec's examples (and torch's vectorised-arange variants,
 *   whose expected values come from a separate Python emulation, not from this code);
 * - the sin-cos position code against a double-precision formula, r and c beyond 70;
 * - a tiny random model (vd 32, 4 heads, 2 layers, d 256, 2 resampler heads, 8 queries) run
 *   through the op-based forward and through a naive float64 reimplementation written here with
 *   plain loops, for two pieces of different sizes (padding exercised), F32 and F16;
 * - the masking contract: the resampler ignores padding (alone == batched, order does not matter,
 *   junk in padded rows changes nothing), the ViT does not (alone != batched, as §3.2 says).
 * - batching (issue 16, finding 6): the tiny checkpoint, fp32 on the CPU: a request's pieces run
 *   in batches of --max-pieces, each padded to the request's longest piece, give exactly (bit for
 *   bit) the tokens of one batch of all pieces; two ordinary photos (17 pieces) pass the default
 *   limits, chat included.
 * Stage parity against PyTorch (tools/ref_vision.py fixtures) is tests/test_vision_ref.c. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>

#include "backend.h"
#include "chat.h"
#include "devmap.h"
#include "engine_impl.h"
#include "image.h"
#include "mm.h"
#include "model.h"
#include "resampler.h"
#include "t.h"
#include "tengine.h"
#include "tutil.h"
#include "vision.h"

/* ---- seeded PRNG ---- */
static uint64_t rng = 0x9e3779b97f4a7c15ull;
static double urand(void) /* [0, 1) */
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (double)((rng * 0x2545f4914f6cdd1dull) >> 11) / 9007199254740992.0;
}
static float uni(float a) { return (float)((urand() * 2.0 - 1.0) * a); }

/* ---- tiny model ---- */
#define NL 2
struct tiny {
    struct model_config c;
    enum dtype wdt;
    void *allocs[160];
    int n_allocs;
    /* masters: float values exactly representable in wdt; the reference reads these */
    float *patch_w, *patch_b, *pos_embed, *post_w, *post_b;
    struct {
        float *ln1w, *ln1b, *qw, *qb, *kw, *kb, *vw, *vb, *ow, *ob, *ln2w, *ln2b, *f1w, *f1b, *f2w, *f2b;
    } L[NL];
    float *query, *kvp, *lnqw, *lnqb, *lnkvw, *lnkvb, *inw, *inb, *ow, *ob, *lnpw, *lnpb, *proj; /* proj [in, out] */
    struct vpm_layer layers[NL];
    struct vpm_weights vw;
    struct resampler_weights rw;
};

static void *keep(struct tiny *m, void *p)
{
    CHECK(p && m->n_allocs < 160);
    m->allocs[m->n_allocs++] = p;
    return p;
}

static float *gen(struct tiny *m, int64_t n, float mean, float amp)
{
    float *p = keep(m, malloc((size_t)n * sizeof(float)));
    for (int64_t i = 0; i < n; i++) {
        float v = mean + uni(amp);
        p[i] = m->wdt == DTYPE_F16 ? f16_to_f32(f32_to_f16(v)) : v;
    }
    return p;
}

static struct tensor mk(struct tiny *m, const float *master, int ndim, int64_t d0, int64_t d1)
{
    int64_t n = d0 * (ndim == 2 ? d1 : 1);
    void *buf = keep(m, malloc((size_t)n * dtype_size(m->wdt)));
    convert_from_f32(buf, m->wdt, master, n);
    return ndim == 2 ? tensor_make(m->wdt, device_cpu(), buf, 2, d0, d1) : tensor_make(m->wdt, device_cpu(), buf, 1, d0);
}

static void tiny_config(struct model_config *c)
{
    memset(c, 0, sizeof *c);
    c->hidden_size = 256;
    c->query_num = 8;
    c->vision_layers_used = NL;
    struct vision_config *v = &c->vision_config;
    v->hidden_size = 32;
    v->image_size = 20; /* 10 patches per side: position table of 100 rows */
    v->intermediate_size = 48;
    v->num_attention_heads = 4;
    v->num_hidden_layers = NL;
    v->patch_size = 2;
    v->num_channels = 3;
    v->layer_norm_eps = 1e-6f;
    strcpy(v->hidden_act, "gelu_pytorch_tanh");
}

static void tiny_build(struct tiny *m, enum dtype wdt, uint64_t seed)
{
    memset(m, 0, sizeof *m);
    tiny_config(&m->c);
    m->wdt = wdt;
    rng = seed;
    const struct vision_config *v = &m->c.vision_config;
    const int64_t vd = v->hidden_size, ff = v->intermediate_size, pd = 3 * v->patch_size * v->patch_size;
    const int64_t np = (int64_t)(v->image_size / v->patch_size) * (v->image_size / v->patch_size);
    const int64_t d = m->c.hidden_size, q = m->c.query_num;
    const float sv = 1.0f / sqrtf((float)vd), sd = 1.0f / sqrtf((float)d);
    m->patch_w = gen(m, vd * pd, 0, 1.0f / sqrtf((float)pd));
    m->patch_b = gen(m, vd, 0, 0.1f);
    m->pos_embed = gen(m, np * vd, 0, 0.5f);
    m->vw.patch_w = mk(m, m->patch_w, 2, vd, pd);
    m->vw.patch_b = mk(m, m->patch_b, 1, vd, 0);
    m->vw.pos_embed = mk(m, m->pos_embed, 2, np, vd);
    for (int l = 0; l < NL; l++) {
        struct vpm_layer *L = &m->layers[l];
        m->L[l].ln1w = gen(m, vd, 1, 0.2f), m->L[l].ln1b = gen(m, vd, 0, 0.1f);
        m->L[l].qw = gen(m, vd * vd, 0, 2 * sv), m->L[l].qb = gen(m, vd, 0, 0.1f);
        m->L[l].kw = gen(m, vd * vd, 0, 2 * sv), m->L[l].kb = gen(m, vd, 0, 0.1f);
        m->L[l].vw = gen(m, vd * vd, 0, sv), m->L[l].vb = gen(m, vd, 0, 0.1f);
        m->L[l].ow = gen(m, vd * vd, 0, sv), m->L[l].ob = gen(m, vd, 0, 0.1f);
        m->L[l].ln2w = gen(m, vd, 1, 0.2f), m->L[l].ln2b = gen(m, vd, 0, 0.1f);
        m->L[l].f1w = gen(m, ff * vd, 0, sv), m->L[l].f1b = gen(m, ff, 0, 0.1f);
        m->L[l].f2w = gen(m, vd * ff, 0, 1.0f / sqrtf((float)ff)), m->L[l].f2b = gen(m, vd, 0, 0.1f);
        L->layer_norm1_w = mk(m, m->L[l].ln1w, 1, vd, 0), L->layer_norm1_b = mk(m, m->L[l].ln1b, 1, vd, 0);
        /* q|k|v joined along rows, as the loader stores them (model.c place_joined) */
        float *qkvw = keep(m, malloc((size_t)(3 * vd * vd) * sizeof(float)));
        float *qkvb = keep(m, malloc((size_t)(3 * vd) * sizeof(float)));
        const float *pw[3] = {m->L[l].qw, m->L[l].kw, m->L[l].vw}, *pb[3] = {m->L[l].qb, m->L[l].kb, m->L[l].vb};
        for (int k = 0; k < 3; k++) {
            memcpy(qkvw + k * vd * vd, pw[k], (size_t)(vd * vd) * sizeof(float));
            memcpy(qkvb + k * vd, pb[k], (size_t)vd * sizeof(float));
        }
        L->qkv_w = mk(m, qkvw, 2, 3 * vd, vd), L->qkv_b = mk(m, qkvb, 1, 3 * vd, 0);
        L->out_w = mk(m, m->L[l].ow, 2, vd, vd), L->out_b = mk(m, m->L[l].ob, 1, vd, 0);
        L->layer_norm2_w = mk(m, m->L[l].ln2w, 1, vd, 0), L->layer_norm2_b = mk(m, m->L[l].ln2b, 1, vd, 0);
        L->fc1_w = mk(m, m->L[l].f1w, 2, ff, vd), L->fc1_b = mk(m, m->L[l].f1b, 1, ff, 0);
        L->fc2_w = mk(m, m->L[l].f2w, 2, vd, ff), L->fc2_b = mk(m, m->L[l].f2b, 1, vd, 0);
    }
    m->vw.layers = m->layers;
    m->post_w = gen(m, vd, 1, 0.2f), m->post_b = gen(m, vd, 0, 0.1f);
    m->vw.post_ln_w = mk(m, m->post_w, 1, vd, 0), m->vw.post_ln_b = mk(m, m->post_b, 1, vd, 0);

    struct resampler_weights *r = &m->rw;
    m->query = gen(m, q * d, 0, 1.0f);
    m->kvp = gen(m, d * vd, 0, sv);
    m->lnqw = gen(m, d, 1, 0.2f), m->lnqb = gen(m, d, 0, 0.1f);
    m->lnkvw = gen(m, d, 1, 0.2f), m->lnkvb = gen(m, d, 0, 0.1f);
    m->inw = gen(m, 3 * d * d, 0, 2 * sd), m->inb = gen(m, 3 * d, 0, 0.1f);
    m->ow = gen(m, d * d, 0, sd), m->ob = gen(m, d, 0, 0.1f);
    m->lnpw = gen(m, d, 1, 0.2f), m->lnpb = gen(m, d, 0, 0.1f);
    m->proj = gen(m, d * d, 0, sd);
    float *proj_t = keep(m, malloc((size_t)(d * d) * sizeof(float)));
    for (int64_t i = 0; i < d; i++)
        for (int64_t o = 0; o < d; o++) proj_t[o * d + i] = m->proj[i * d + o];
    r->query = mk(m, m->query, 2, q, d);
    r->kv_proj = mk(m, m->kvp, 2, d, vd);
    r->ln_q_w = mk(m, m->lnqw, 1, d, 0), r->ln_q_b = mk(m, m->lnqb, 1, d, 0);
    r->ln_kv_w = mk(m, m->lnkvw, 1, d, 0), r->ln_kv_b = mk(m, m->lnkvb, 1, d, 0);
    struct tensor inw = mk(m, m->inw, 2, 3 * d, d), inb = mk(m, m->inb, 1, 3 * d, 0);
    r->wq = tensor_rows_view(&inw, 0, d), r->wk = tensor_rows_view(&inw, d, d), r->wv = tensor_rows_view(&inw, 2 * d, d);
    r->bq = tensor_rows_view(&inb, 0, d), r->bk = tensor_rows_view(&inb, d, d), r->bv = tensor_rows_view(&inb, 2 * d, d);
    r->out_w = mk(m, m->ow, 2, d, d), r->out_b = mk(m, m->ob, 1, d, 0);
    r->ln_post_w = mk(m, m->lnpw, 1, d, 0), r->ln_post_b = mk(m, m->lnpb, 1, d, 0);
    r->proj_t = mk(m, proj_t, 2, d, d);
}

static void tiny_free(struct tiny *m)
{
    for (int i = 0; i < m->n_allocs; i++) free(m->allocs[i]);
    m->n_allocs = 0;
}

/* ---- naive float64 reference (loops only, no op_*) ---- */

static void ref_linear(double *y, const double *x, int64_t n, int64_t in, const float *W, const float *b, int64_t out)
{
    for (int64_t t = 0; t < n; t++)
        for (int64_t o = 0; o < out; o++) {
            double s = b ? b[o] : 0.0;
            for (int64_t i = 0; i < in; i++) s += x[t * in + i] * (double)W[o * in + i];
            y[t * out + o] = s;
        }
}

static void ref_ln(double *y, const double *x, int64_t n, int64_t d, const float *w, const float *b, double eps)
{
    for (int64_t t = 0; t < n; t++) {
        double mu = 0, var = 0;
        for (int64_t i = 0; i < d; i++) mu += x[t * d + i];
        mu /= (double)d;
        for (int64_t i = 0; i < d; i++) var += (x[t * d + i] - mu) * (x[t * d + i] - mu);
        var /= (double)d;
        for (int64_t i = 0; i < d; i++) y[t * d + i] = (x[t * d + i] - mu) / sqrt(var + eps) * w[i] + b[i];
    }
}

/* out[nq, H*hd] = softmax(q k^T * scale) v per head over all nk keys (no mask) */
static void ref_attn(double *out, const double *q, const double *k, const double *v, int64_t nq, int64_t nk,
                     int64_t H, int64_t hd, double scale)
{
    double *s = malloc((size_t)nk * sizeof(double));
    for (int64_t h = 0; h < H; h++)
        for (int64_t i = 0; i < nq; i++) {
            double mx = -1e300, sum = 0;
            for (int64_t j = 0; j < nk; j++) {
                double dot = 0;
                for (int64_t c = 0; c < hd; c++) dot += q[i * H * hd + h * hd + c] * k[j * H * hd + h * hd + c];
                s[j] = dot * scale;
                if (s[j] > mx) mx = s[j];
            }
            for (int64_t j = 0; j < nk; j++) sum += (s[j] = exp(s[j] - mx));
            for (int64_t c = 0; c < hd; c++) {
                double a = 0;
                for (int64_t j = 0; j < nk; j++) a += s[j] / sum * v[j * H * hd + h * hd + c];
                out[i * H * hd + h * hd + c] = a;
            }
        }
    free(s);
}

/* The §3.2 rule, scalar form, written independently of vision.c: count the f32 boundaries
 * (1/S)*(j+1) (as start + j*step in double) that are <= f32(step_f32 * k). */
static int ref_pos_id(int64_t k, int64_t n, int S)
{
    double s = 1.0 / S;
    int64_t nb = (int64_t)ceil((1.0 - s) / s);
    float frac = (float)((double)(1.0f / (float)n) * (double)k);
    int id = 0;
    for (int64_t j = 0; j < nb; j++)
        if ((float)(s + (double)j * s) <= frac) id++;
    return id;
}

struct piece_def {
    int h, w;
    float *patches;
};

/* out [B*Nmax*vd] */
static void ref_vision(double *out, const struct tiny *m, const struct piece_def *p, int B)
{
    const struct vision_config *v = &m->c.vision_config;
    const int64_t vd = v->hidden_size, ff = v->intermediate_size, pd = 3 * v->patch_size * v->patch_size;
    const int64_t H = v->num_attention_heads, hd = vd / H;
    const int S = v->image_size / v->patch_size;
    int64_t nmax = 0;
    for (int i = 0; i < B; i++)
        if ((int64_t)p[i].h * p[i].w > nmax) nmax = (int64_t)p[i].h * p[i].w;
    const int64_t R = B * nmax;
    double *pix = calloc((size_t)(R * pd), sizeof(double));
    double *h = malloc((size_t)(R * vd) * sizeof(double)), *q = malloc((size_t)(R * vd) * sizeof(double));
    double *k = malloc((size_t)(R * vd) * sizeof(double)), *vv = malloc((size_t)(R * vd) * sizeof(double));
    double *a = malloc((size_t)(R * vd) * sizeof(double)), *f = malloc((size_t)(R * ff) * sizeof(double));
    for (int i = 0; i < B; i++)
        for (int64_t j = 0; j < (int64_t)p[i].h * p[i].w * pd; j++) pix[i * nmax * pd + j] = p[i].patches[j];
    ref_linear(out, pix, R, pd, m->patch_w, m->patch_b, vd); /* padded patches: the bias alone */
    for (int64_t r = 0; r < R; r++) {
        int id = ref_pos_id(r % nmax, nmax, S);
        for (int64_t c = 0; c < vd; c++) out[r * vd + c] += m->pos_embed[id * vd + c];
    }
    for (int l = 0; l < NL; l++) {
        ref_ln(h, out, R, vd, m->L[l].ln1w, m->L[l].ln1b, 1e-6);
        ref_linear(q, h, R, vd, m->L[l].qw, m->L[l].qb, vd);
        ref_linear(k, h, R, vd, m->L[l].kw, m->L[l].kb, vd);
        ref_linear(vv, h, R, vd, m->L[l].vw, m->L[l].vb, vd);
        for (int i = 0; i < B; i++) /* every row of the piece, padding included: no mask */
            ref_attn(a + i * nmax * vd, q + i * nmax * vd, k + i * nmax * vd, vv + i * nmax * vd, nmax, nmax, H, hd,
                     1.0 / sqrt((double)hd));
        ref_linear(h, a, R, vd, m->L[l].ow, m->L[l].ob, vd);
        for (int64_t j = 0; j < R * vd; j++) out[j] += h[j];
        ref_ln(h, out, R, vd, m->L[l].ln2w, m->L[l].ln2b, 1e-6);
        ref_linear(f, h, R, vd, m->L[l].f1w, m->L[l].f1b, ff);
        for (int64_t j = 0; j < R * ff; j++)
            f[j] = 0.5 * f[j] * (1.0 + tanh(sqrt(2.0 / M_PI) * (f[j] + 0.044715 * f[j] * f[j] * f[j])));
        ref_linear(h, f, R, ff, m->L[l].f2w, m->L[l].f2b, vd);
        for (int64_t j = 0; j < R * vd; j++) out[j] += h[j];
    }
    ref_ln(out, out, R, vd, m->post_w, m->post_b, 1e-6);
    free(pix), free(h), free(q), free(k), free(vv), free(a), free(f);
}

/* the 2-D sin-cos code in double: [sin(c w), cos(c w) | sin(r w), cos(r w)], w_i = 10000^(-i/(d/4)) */
static double ref_sincos(int d, int r, int c, int j, double *arg)
{
    int d4 = d / 4, quarter = j / d4, i = j % d4;
    double om = pow(10000.0, -(double)i / d4), a = (quarter < 2 ? c : r) * om;
    if (arg) *arg = a;
    return (quarter % 2 == 0) ? sin(a) : cos(a);
}

/* out [B*q*d]; x [B*nx*vd]; piece i uses its first h*w rows */
static void ref_resampler(double *out, const struct tiny *m, const double *x, int64_t nx, const int32_t *tgt, int B)
{
    const int64_t vd = m->c.vision_config.hidden_size, d = m->c.hidden_size, Q = m->c.query_num;
    const int64_t H = d / 128;
    double *q0 = malloc((size_t)(Q * d) * sizeof(double)), *qq = malloc((size_t)(Q * d) * sizeof(double));
    double *xq = malloc((size_t)(Q * d) * sizeof(double));
    for (int64_t j = 0; j < Q * d; j++) xq[j] = m->query[j];
    ref_ln(q0, xq, Q, d, m->lnqw, m->lnqb, 1e-6);
    ref_linear(qq, q0, Q, d, m->inw, m->inb, d);
    double *att = malloc((size_t)(B * Q * d) * sizeof(double)), *o = malloc((size_t)(B * Q * d) * sizeof(double));
    for (int i = 0; i < B; i++) {
        int64_t n = (int64_t)tgt[2 * i] * tgt[2 * i + 1];
        double *kv = malloc((size_t)(n * d) * sizeof(double)), *kin = malloc((size_t)(n * d) * sizeof(double));
        double *K = malloc((size_t)(n * d) * sizeof(double)), *V = malloc((size_t)(n * d) * sizeof(double));
        ref_linear(kv, x + i * nx * vd, n, vd, m->kvp, NULL, d);
        ref_ln(kv, kv, n, d, m->lnkvw, m->lnkvb, 1e-6);
        for (int64_t t = 0; t < n; t++)
            for (int64_t j = 0; j < d; j++)
                kin[t * d + j] = kv[t * d + j] + ref_sincos((int)d, (int)(t / tgt[2 * i + 1]), (int)(t % tgt[2 * i + 1]),
                                                            (int)j, NULL);
        ref_linear(K, kin, n, d, m->inw + d * d, m->inb + d, d);
        ref_linear(V, kv, n, d, m->inw + 2 * d * d, m->inb + 2 * d, d);
        ref_attn(att + i * Q * d, qq, K, V, Q, n, H, 128, 1.0 / sqrt(128.0));
        free(kv), free(kin), free(K), free(V);
    }
    ref_linear(o, att, B * Q, d, m->ow, m->ob, d);
    ref_ln(o, o, B * Q, d, m->lnpw, m->lnpb, 1e-6);
    for (int64_t t = 0; t < B * Q; t++) /* y = o @ proj, proj [in, out] */
        for (int64_t c = 0; c < d; c++) {
            double s = 0;
            for (int64_t j = 0; j < d; j++) s += o[t * d + j] * m->proj[j * d + c];
            out[t * d + c] = s;
        }
    free(q0), free(qq), free(xq), free(att), free(o);
}

/* ---- helpers ---- */

static double max_abs_diff_t(const struct tensor *t, const double *ref, int64_t n, double *ref_max)
{
    float *f = malloc((size_t)n * sizeof(float));
    convert_to_f32(f, t->data, t->dtype, n);
    double mx = 0, rm = 0;
    for (int64_t i = 0; i < n; i++) {
        double dd = fabs((double)f[i] - ref[i]);
        if (dd > mx || isnan(dd)) mx = isnan(dd) ? INFINITY : dd;
        if (fabs(ref[i]) > rm) rm = fabs(ref[i]);
    }
    free(f);
    if (ref_max) *ref_max = rm;
    return mx;
}

static double max_abs_diff_ff(const float *a, const float *b, int64_t n)
{
    double mx = 0;
    for (int64_t i = 0; i < n; i++) {
        double dd = fabs((double)a[i] - (double)b[i]);
        if (dd > mx || isnan(dd)) mx = isnan(dd) ? INFINITY : dd;
    }
    return mx;
}

static float *rand_patches(int64_t n, int64_t pd)
{
    float *p = malloc((size_t)(n * pd) * sizeof(float));
    for (int64_t i = 0; i < n * pd; i++) p[i] = uni(1.0f);
    return p;
}

/* runs vision_forward on host tensors; returns a heap f32 copy of the output [B*nmax*vd] */
static float *run_vision(const struct tiny *m, const struct piece_def *p, int B, enum dtype act, int64_t *nmax_out)
{
    struct vision_piece vp[8];
    for (int i = 0; i < B; i++) vp[i] = (struct vision_piece){p[i].patches, p[i].h, p[i].w};
    int64_t nmax = vision_n_max(vp, B), vd = m->c.vision_config.hidden_size, n = B * nmax * vd;
    void *buf = malloc((size_t)n * dtype_size(act));
    struct tensor out = tensor_make(act, device_cpu(), buf, 3, (int64_t)B, nmax, vd);
    struct err e = {{0}};
    int rc = vision_forward(&out, &m->vw, &m->c, vp, B, NULL, 0, &e);
    T_ASSERTF(rc == 0, "%s", e.msg);
    float *f = malloc((size_t)n * sizeof(float));
    convert_to_f32(f, buf, act, n);
    free(buf);
    *nmax_out = nmax;
    return f;
}

static float *run_resampler(const struct tiny *m, const float *x, int64_t nx, const int32_t *tgt, int B, enum dtype act)
{
    const int64_t vd = m->c.vision_config.hidden_size, d = m->c.hidden_size, Q = m->c.query_num;
    void *xb = malloc((size_t)(B * nx * vd) * dtype_size(act)), *ob = malloc((size_t)(B * Q * d) * dtype_size(act));
    convert_from_f32(xb, act, x, B * nx * vd);
    struct tensor xt = tensor_make(act, device_cpu(), xb, 3, (int64_t)B, nx, vd);
    struct tensor ot = tensor_make(act, device_cpu(), ob, 3, (int64_t)B, Q, d);
    struct err e = {{0}};
    int rc = resampler_forward(&ot, &m->rw, &m->c, &xt, tgt, B, NULL, 0, &e);
    T_ASSERTF(rc == 0, "%s", e.msg);
    float *f = malloc((size_t)(B * Q * d) * sizeof(float));
    convert_to_f32(f, ob, act, B * Q * d);
    free(xb), free(ob);
    return f;
}

/* ---- tests ---- */

static void test_position_ids(void)
{
    int32_t ids[1100];
    /* spec §3.2: N=1036 departs from floor(70k/N) exactly at these six k */
    vision_position_ids(ids, 1036, 70, 0);
    const int ek[6] = {74, 148, 296, 370, 592, 740}, ev[6] = {4, 9, 19, 24, 39, 49};
    int nd = 0;
    for (int k = 0; k < 1036; k++) {
        T_ASSERT(ids[k] >= 0 && ids[k] < 70);
        if (k) T_ASSERT(ids[k] >= ids[k - 1]);
        if (ids[k] != 70 * k / 1036) nd++;
    }
    T_EQ_INT(nd, 6);
    for (int i = 0; i < 6; i++) T_EQ_INT(ids[ek[i]], ev[i]);
    T_EQ_INT(ids[1035], 69);
    /* N=1024 and N=1008: equal to the floor everywhere */
    const int64_t ns[2] = {1024, 1008};
    for (int t = 0; t < 2; t++) {
        vision_position_ids(ids, ns[t], 70, 0);
        int bad = 0;
        for (int64_t k = 0; k < ns[t]; k++) bad += ids[k] != (int32_t)(70 * k / ns[t]);
        T_EQ_INT(bad, 0);
    }
    /* N=700 departs at 11 positions (spec) */
    vision_position_ids(ids, 700, 70, 0);
    nd = 0;
    for (int k = 0; k < 700; k++) nd += ids[k] != 70 * k / 700;
    T_EQ_INT(nd, 11);
    /* torch's vectorised CPU arange (AVX2: 8 lanes, AVX-512: 16 lanes); expected departures from a
     * separate Python emulation of RangeFactoriesKernel.cpp + Loops.h vectorized_loop */
    const struct { int vec, n; int k[4], v[4]; } vv[2] = {
        {8, 4, {222, 296, 592, 666}, {14, 19, 39, 44}},
        {16, 3, {74, 444, 592, 0}, {4, 29, 39, 0}},
    };
    for (int t = 0; t < 2; t++) {
        vision_position_ids(ids, 1036, 70, vv[t].vec);
        nd = 0;
        for (int k = 0; k < 1036; k++) nd += ids[k] != 70 * k / 1036;
        T_EQ_INT(nd, vv[t].n);
        for (int i = 0; i < vv[t].n; i++) T_EQ_INT(ids[vv[t].k[i]], vv[t].v[i]);
    }
    /* small n and another per_side (the tiny model's 10) against the test's own scalar rule */
    for (int64_t n = 1; n <= 40; n++) {
        vision_position_ids(ids, n, 10, 0);
        for (int64_t k = 0; k < n; k++) T_EQ_INT(ids[k], ref_pos_id(k, n, 10));
    }
    vision_position_ids(ids, 1, 70, 0);
    T_EQ_INT(ids[0], 0);
}

static void test_sincos(void)
{
    const int cases[][3] = {{4096, 0, 0}, {4096, 3, 0}, {4096, 0, 3}, {4096, 69, 69}, {4096, 143, 7},
                            {4096, 7, 143}, {4096, 200, 350}, {256, 90, 75}, {256, 1, 2}};
    float *row = malloc(4096 * sizeof(float));
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        int d = cases[t][0], r = cases[t][1], c = cases[t][2];
        resampler_sincos(row, d, r, c);
        double worst = 0;
        for (int j = 0; j < d; j++) {
            double arg, ref = ref_sincos(d, r, c, j, &arg);
            /* numpy works in float32: the argument carries up to ~2 ulp of |arg| (omega and the
             * product rounded); sinf/cosf add about 1e-7 */
            double tol = 1e-6 + fabs(arg) * ldexp(1.0, -22), err = fabs((double)row[j] - ref);
            if (err > tol && err - tol > worst) worst = err - tol;
        }
        T_ASSERTF(worst == 0, "d %d (r %d, c %d): error over tolerance by %g", d, r, c, worst);
    }
    /* layout: (r=5, c=0) -> first quarter exactly sin(0)=0, second exactly cos(0)=1 */
    resampler_sincos(row, 256, 5, 0);
    for (int j = 0; j < 64; j++) T_ASSERT(row[j] == 0.0f && row[64 + j] == 1.0f);
    T_NEAR(row[128], sin(5.0), 1e-6); /* row half: omega_0 = 1 */
    T_NEAR(row[192], cos(5.0), 1e-6);
    T_NEAR(row[129], sin(5 * pow(10000.0, -1.0 / 64)), 1e-6);
    /* swapping r and c swaps the halves, bit for bit */
    float *b = malloc(4096 * sizeof(float));
    resampler_sincos(row, 4096, 143, 7);
    resampler_sincos(b, 4096, 7, 143);
    T_ASSERT(memcmp(row, b + 2048, 2048 * sizeof(float)) == 0 && memcmp(row + 2048, b, 2048 * sizeof(float)) == 0);
    T_ASSERT(memcmp(row, b, 2048 * sizeof(float)) != 0);
    free(row), free(b);
}

/* the tiny model in act dtype act (weights in the same 16-bit type for F16), against float64 */
static void tiny_parity(enum dtype act, double tol_v, double tol_r)
{
    struct tiny m;
    tiny_build(&m, act == DTYPE_F32 ? DTYPE_F32 : act, 1234);
    const int64_t pd = 12, vd = 32, d = 256, Q = 8;
    struct piece_def p[2] = {{3, 4, NULL}, {2, 3, NULL}};
    rng = 77;
    p[0].patches = rand_patches(12, pd);
    p[1].patches = rand_patches(6, pd);
    if (act == DTYPE_F16) /* torch rounds pixel_values to fp16; give the reference the same input */
        for (int i = 0; i < 2; i++)
            for (int64_t j = 0; j < (int64_t)p[i].h * p[i].w * pd; j++)
                p[i].patches[j] = f16_to_f32(f32_to_f16(p[i].patches[j]));
    int64_t nmax;
    float *vis = run_vision(&m, p, 2, act, &nmax);
    T_EQ_INT(nmax, 12);
    double *rv = malloc((size_t)(2 * nmax * vd) * sizeof(double));
    ref_vision(rv, &m, p, 2);
    struct tensor vt = tensor_make(DTYPE_F32, device_cpu(), vis, 3, (int64_t)2, nmax, vd);
    double rmax, dv = max_abs_diff_t(&vt, rv, 2 * nmax * vd, &rmax);
    fprintf(stderr, "  %s vision: max |C - ref| = %.3g (max |ref| %.3g)\n", dtype_name(act), dv, rmax);
    T_ASSERTF(dv <= tol_v, "vision %s: %g > %g", dtype_name(act), dv, tol_v);
    T_ASSERT(rmax > 0.5); /* not a test on zeros */

    /* resampler on the C vision output (stage parity), reference fed the same input */
    const int32_t tgt[4] = {3, 4, 2, 3};
    float *rs = run_resampler(&m, vis, nmax, tgt, 2, act);
    double *xin = malloc((size_t)(2 * nmax * vd) * sizeof(double)), *rr = malloc((size_t)(2 * Q * d) * sizeof(double));
    for (int64_t j = 0; j < 2 * nmax * vd; j++) xin[j] = vis[j];
    ref_resampler(rr, &m, xin, nmax, tgt, 2);
    struct tensor rt = tensor_make(DTYPE_F32, device_cpu(), rs, 3, (int64_t)2, Q, d);
    double dr = max_abs_diff_t(&rt, rr, 2 * Q * d, &rmax);
    fprintf(stderr, "  %s resampler: max |C - ref| = %.3g (max |ref| %.3g)\n", dtype_name(act), dr, rmax);
    T_ASSERTF(dr <= tol_r, "resampler %s: %g > %g", dtype_name(act), dr, tol_r);
    T_ASSERT(rmax > 0.5);

    /* an explicit scratch gives the same bits; a short one is refused with a message */
    if (act == DTYPE_F32) {
        struct vision_piece vp[2] = {{p[0].patches, 3, 4}, {p[1].patches, 2, 3}};
        size_t need = vision_scratch_bytes(&m.c, 2, nmax, act);
        void *scr = malloc(need);
        float *o2 = malloc((size_t)(2 * nmax * vd) * sizeof(float));
        struct tensor ot = tensor_make(DTYPE_F32, device_cpu(), o2, 3, (int64_t)2, nmax, vd);
        struct err e = {{0}};
        T_EQ_INT(vision_forward(&ot, &m.vw, &m.c, vp, 2, scr, need, &e), 0);
        T_ASSERT(memcmp(o2, vis, (size_t)(2 * nmax * vd) * sizeof(float)) == 0);
        T_EQ_INT(vision_forward(&ot, &m.vw, &m.c, vp, 2, scr, need - 1, &e), -1);
        T_CONTAINS(e.msg, "scratch");
        free(scr), free(o2);
    }
    free(vis), free(rv), free(rs), free(xin), free(rr);
    free(p[0].patches), free(p[1].patches);
    tiny_free(&m);
}

static void test_tiny_f32(void) { tiny_parity(DTYPE_F32, 2e-5, 2e-5); }
static void test_tiny_f16(void) { tiny_parity(DTYPE_F16, 1e-2, 1e-2); }

static void test_resampler_masking(void)
{
    struct tiny m;
    tiny_build(&m, DTYPE_F32, 99);
    const int64_t vd = 32, d = 256, Q = 8, nx = 12;
    float *x = malloc((size_t)(2 * nx * vd) * sizeof(float));
    rng = 5;
    for (int64_t j = 0; j < 2 * nx * vd; j++) x[j] = uni(2.0f);
    for (int64_t j = 6 * vd; j < nx * vd; j++) x[nx * vd + j] = 100.0f + uni(50.0f); /* junk padding of piece 1 */
    const int32_t tgt[4] = {3, 4, 2, 3};
    float *base = run_resampler(&m, x, nx, tgt, 2, DTYPE_F32);

    /* piece 1 alone, unpadded */
    float *alone = run_resampler(&m, x + nx * vd, 6, tgt + 2, 1, DTYPE_F32);
    double da = max_abs_diff_ff(alone, base + Q * d, Q * d);
    T_ASSERTF(da <= 1e-5, "padded piece vs alone: %g", da);
    /* the long piece alone */
    float *alone0 = run_resampler(&m, x, nx, tgt, 1, DTYPE_F32);
    T_ASSERTF(max_abs_diff_ff(alone0, base, Q * d) <= 1e-5, "long piece vs alone");

    /* swapped order: the short piece first, so the other piece is the padded one */
    float *xs = malloc((size_t)(2 * nx * vd) * sizeof(float));
    memcpy(xs, x + nx * vd, (size_t)(nx * vd) * sizeof(float));
    memcpy(xs + nx * vd, x, (size_t)(nx * vd) * sizeof(float));
    const int32_t tgs[4] = {2, 3, 3, 4};
    float *sw = run_resampler(&m, xs, nx, tgs, 2, DTYPE_F32);
    T_ASSERTF(max_abs_diff_ff(sw + Q * d, base, Q * d) <= 1e-5, "long piece changed with order");
    T_ASSERTF(max_abs_diff_ff(sw, base + Q * d, Q * d) <= 1e-5, "short piece changed with order");

    /* other junk in the padded rows: nothing changes */
    for (int64_t j = 6 * vd; j < nx * vd; j++) x[nx * vd + j] = -3.0f + uni(1.0f);
    float *j2 = run_resampler(&m, x, nx, tgt, 2, DTYPE_F32);
    T_ASSERT(max_abs_diff_ff(j2, base, 2 * Q * d) <= 1e-6);
    /* but a change in a real key does change the output (the test can fail) */
    x[nx * vd + 5 * vd] += 1.0f;
    float *j3 = run_resampler(&m, x, nx, tgt, 2, DTYPE_F32);
    T_ASSERT(max_abs_diff_ff(j3 + Q * d, base + Q * d, Q * d) > 1e-4);

    /* a tgt size larger than the input is an error, not a read past the end */
    const int32_t bad[4] = {3, 4, 4, 4};
    void *ob = malloc((size_t)(2 * Q * d) * sizeof(float));
    struct tensor xt = tensor_make(DTYPE_F32, device_cpu(), x, 3, (int64_t)2, nx, vd);
    struct tensor ot = tensor_make(DTYPE_F32, device_cpu(), ob, 3, (int64_t)2, Q, d);
    struct err e = {{0}};
    T_EQ_INT(resampler_forward(&ot, &m.rw, &m.c, &xt, bad, 2, NULL, 0, &e), -1);
    T_CONTAINS(e.msg, "piece 1");
    free(ob), free(x), free(base), free(alone), free(alone0), free(xs), free(sw), free(j2), free(j3);
    tiny_free(&m);
}

/* §3.2: the ViT does not mask, and the position ids come from N_max, so a short piece batched
 * with a longer one gives other features than the same piece run alone. */
static void test_vit_padding_matters(void)
{
    struct tiny m;
    tiny_build(&m, DTYPE_F32, 4321);
    rng = 11;
    struct piece_def p[2] = {{3, 4, rand_patches(12, 12)}, {2, 3, rand_patches(6, 12)}};
    int64_t nb, na;
    float *bat = run_vision(&m, p, 2, DTYPE_F32, &nb);
    float *alo = run_vision(&m, p + 1, 1, DTYPE_F32, &na);
    T_EQ_INT(nb, 12);
    T_EQ_INT(na, 6);
    double dd = max_abs_diff_ff(bat + 12 * 32, alo, 6 * 32);
    fprintf(stderr, "  short piece batched vs alone: max diff %.3g\n", dd);
    T_ASSERT(dd > 1e-2);
    /* and the alone run matches the reference run alone */
    double *ra = malloc(6 * 32 * sizeof(double));
    ref_vision(ra, &m, p + 1, 1);
    struct tensor t = tensor_make(DTYPE_F32, device_cpu(), alo, 3, (int64_t)1, (int64_t)6, (int64_t)32);
    T_ASSERT(max_abs_diff_t(&t, ra, 6 * 32, NULL) <= 2e-5);
    /* the longest piece sets N_max and has no padding: alone and batched agree (attention is per piece) */
    float *lon = run_vision(&m, p, 1, DTYPE_F32, &na);
    T_ASSERT(max_abs_diff_ff(bat, lon, 12 * 32) <= 1e-5);
    free(bat), free(alo), free(lon), free(ra), free(p[0].patches), free(p[1].patches);
    tiny_free(&m);
}

static void test_errors(void)
{
    struct model_config c;
    tiny_config(&c);
    float dummy[12] = {0};
    struct vision_piece p[2] = {{dummy, 1, 1}, {dummy, 0, 3}};
    struct err e = {{0}};
    T_EQ_INT(vision_check_pieces(&c, p, 2, &e), -1);
    T_CONTAINS(e.msg, "piece 1");
    T_EQ_INT(vision_check_pieces(&c, p, 0, &e), -1);
    p[1].h = 1;
    T_EQ_INT(vision_check_pieces(&c, p, 2, &e), 0);
    strcpy(c.vision_config.hidden_act, "relu");
    T_EQ_INT(vision_check_pieces(&c, p, 2, &e), -1);
    T_CONTAINS(e.msg, "hidden_act");
}

/* op_attention_batch on the CPU: bit-identical to one op_attention per sequence on row views (its
 * contract), for F32 and F16, eager rounding on and off, GQA, T != N; and the sequences really are
 * independent: changing the keys of sequence 1 leaves sequence 0's output unchanged and changes
 * sequence 1's. */
static void test_attention_batch(void)
{
    static const struct { int64_t S, N, T, H, Hkv, hd; int flags; enum dtype dt; } cs[] = {
        {3, 7, 7, 4, 4, 8, ATTN_EAGER_F16, DTYPE_F16}, {3, 7, 7, 4, 4, 8, 0, DTYPE_F32},
        {2, 5, 9, 4, 2, 16, 0, DTYPE_F16},             {4, 1, 3, 2, 1, 8, ATTN_EAGER_F16, DTYPE_F32},
    };
    for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
        const int64_t S = cs[c].S, N = cs[c].N, T = cs[c].T, H = cs[c].H, Hkv = cs[c].Hkv, hd = cs[c].hd;
        const enum dtype dt = cs[c].dt;
        const size_t es = dtype_size(dt);
        struct tensor q = tensor_make(dt, device_cpu(), NULL, 3, S * N, H, hd);
        struct tensor k = tensor_make(dt, device_cpu(), NULL, 3, S * T, Hkv, hd), v = k;
        struct tensor ob = q, ol = q;
        q.data = malloc(tensor_nbytes(&q)), k.data = malloc(tensor_nbytes(&k)), v.data = malloc(tensor_nbytes(&v));
        ob.data = malloc(tensor_nbytes(&q)), ol.data = malloc(tensor_nbytes(&q));
        float *tmp = malloc((size_t)(S * (N > T ? N : T) * H * hd) * sizeof(float));
        T_ASSERT(q.data && k.data && v.data && ob.data && ol.data && tmp);
        struct tensor *in[3] = {&q, &k, &v};
        for (int t = 0; t < 3; t++) {
            const int64_t n = tensor_numel(in[t]);
            for (int64_t i = 0; i < n; i++) tmp[i] = uni(t == 0 ? 2.0f : 1.0f);
            convert_from_f32(in[t]->data, dt, tmp, n);
        }
        const float scale = 1.0f / sqrtf((float)hd);
        op_attention_batch(&ob, &q, &k, &v, S, scale, cs[c].flags);
        for (int64_t s = 0; s < S; s++) {
            struct tensor os = tensor_rows_view(&ol, s * N, N), qs = tensor_rows_view(&q, s * N, N);
            struct tensor ks = tensor_rows_view(&k, s * T, T), vs = tensor_rows_view(&v, s * T, T);
            op_attention(&os, &qs, &ks, &vs, 0, scale, cs[c].flags);
        }
        T_ASSERTF(memcmp(ob.data, ol.data, tensor_nbytes(&q)) == 0, "case %zu: batch != loop", c);
        convert_to_f32(tmp, ob.data, dt, tensor_numel(&q));
        double mx = 0;
        for (int64_t i = 0; i < tensor_numel(&q); i++) mx = fmax(mx, fabs(tmp[i]));
        T_ASSERTF(mx > 0.05, "case %zu: output ~0 (max %g)", c, mx);
        /* perturb the keys of sequence 1: only its rows change */
        const size_t row = (size_t)(N * H * hd) * es, krow = (size_t)(T * Hkv * hd) * es;
        memset((char *)k.data + krow, 0, krow);
        op_attention_batch(&ob, &q, &k, &v, S, scale, cs[c].flags);
        T_ASSERTF(memcmp(ob.data, ol.data, row) == 0, "case %zu: sequence 0 depends on sequence 1's keys", c);
        T_ASSERTF(memcmp((char *)ob.data + row, (char *)ol.data + row, row) != 0 || T == 1,
                  "case %zu: sequence 1 ignores its keys", c);
        if (S > 2)
            T_ASSERTF(memcmp((char *)ob.data + 2 * row, (char *)ol.data + 2 * row, (size_t)(S - 2) * row) == 0,
                      "case %zu: later sequences depend on sequence 1's keys", c);
        free(q.data), free(k.data), free(v.data), free(ob.data), free(ol.data), free(tmp);
    }
}

/* Hook for stage parity against PyTorch: tools/ref_vision.py (another engineer's) will dump, for a
 * request with pieces of different N, pixel patches, tgt_sizes, position_ids, the vpm
 * last_hidden_state and the resampler output into a .safetensors fixture. The test will then feed
 * each stage the reference input (teacher forcing) and compare: position_ids exactly (this also
 * decides VISION_ARANGE_VEC), vpm and resampler outputs within fp16 tolerances. */

/* ---- batches of pieces (engine level, the tiny checkpoint) ---- */

/* A photo-like test image: smooth gradients plus hashed noise (slicing depends only on the size). */
static struct image photo(int w, int h, uint32_t seed)
{
    struct image im = {.w = w, .h = h, .rgb = malloc((size_t)w * h * 3)};
    CHECK(im.rgb != NULL);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int ch = 0; ch < 3; ch++) {
                uint32_t z = (uint32_t)(x * 73856093u) ^ (uint32_t)(y * 19349663u) ^ (uint32_t)(ch * 83492791u) ^ seed;
                z = (z ^ (z >> 13)) * 0x5bd1e995u;
                im.rgb[((size_t)y * w + x) * 3 + ch] = (uint8_t)((x * 255 / w + y * 128 / h + ch * 40 + (int)(z >> 28)) & 255);
            }
    return im;
}

/* A copy of the tiny checkpoint folder (symbolic links) whose preprocessor_config.json slices at
 * scale_resolution 112: pieces of at most ~80 patches instead of ~1000, so a 17-piece request is
 * cheap enough to encode several times. */
static const char *tiny_small_scale(void)
{
    static char dir[300];
    const char *src = t_tiny_model(1);
    if (!src) return NULL;
    snprintf(dir, sizeof dir, "%s-scale112", src);
    static const char *files[] = {"config.json", "generation_config.json", "model-00001-of-00002.safetensors",
                                  "model-00002-of-00002.safetensors", "model.safetensors.index.json",
                                  "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"};
    mkdir(dir, 0755);
    char a[700], b[700];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(a, sizeof a, "../%s/%s", strrchr(src, '/') + 1, files[i]);
        snprintf(b, sizeof b, "%s/%s", dir, files[i]);
        unlink(b);
        if (symlink(a, b)) return NULL;
    }
    snprintf(b, sizeof b, "%s/preprocessor_config.json", dir);
    FILE *f = fopen(b, "w");
    if (!f) return NULL;
    fputs("{\"image_processor_type\": \"MiniCPMVImageProcessor\", \"max_slice_nums\": 9, \"scale_resolution\": 112,\n"
          " \"patch_size\": 14, \"image_feature_size\": 96, \"norm_mean\": [0.5, 0.5, 0.5], \"norm_std\": [0.5, 0.5, 0.5]}\n", f);
    fclose(f);
    return dir;
}

/* A checkpoint folder on a device ("cpu": no GPU in the plan) in dtype dt; max_pieces > 0: planned with
 * --max-pieces; < 0: planned with the default limits; 0: --max-pieces 64 (one batch of every piece of
 * the tests' requests). */
static struct engine *open_tiny(const char *dir, const char *device, enum dtype dt, int max_pieces)
{
    struct engine_options o;
    engine_options_default(&o);
    o.model_dir = dir;
    o.device = device;
    o.dtype = dt;
    o.quiet = 1;
    struct devmap_opts dm;
    devmap_opts_init(&dm);
    if (!strcmp(device, "cpu")) dm.n_gpus = 0;
    if (max_pieces > 0) dm.params.max_pieces = max_pieces;
    else if (max_pieces == 0) {
        dm.params.max_pieces = 64;
        dm.params.ctx = 2048;
    }
    o.devmap = &dm;
    struct err e = {{0}};
    struct engine *g = NULL;
    if (!o.model_dir || engine_open(&g, &o, &e)) {
        fprintf(stderr, "engine_open: %s\n", e.msg);
        return NULL;
    }
    return g;
}

/* The same in fp32 on the CPU. */
static struct engine *open_tiny_cpu(const char *dir, int max_pieces) { return open_tiny(dir, "cpu", DTYPE_F32, max_pieces); }

static void test_batched_pieces(void)
{
    struct image im[2] = {photo(1344, 1008, 1), photo(1200, 1200, 2)};
    const char *small = tiny_small_scale();
    T_ASSERT(small != NULL);
    struct engine *one = open_tiny_cpu(small, 0), *three = open_tiny_cpu(small, 3);
    struct engine *dflt = open_tiny_cpu(t_tiny_model(1), -1);
    T_ASSERT(one && three && dflt);
    if (!one || !three || !dflt) goto out;
    T_EQ_INT(three->plan->params.max_pieces, 3);
    struct chat_grid grids[2];
    struct tensor a = {0}, b = {0};
    int na = 0, nb = 0;
    struct err e = {{0}};
    T_ASSERTF(engine_encode_images(one, im, 2, grids, &a, &na, &e) == 0, "%s", e.msg);
    T_ASSERTF(engine_encode_images(three, im, 2, grids, &b, &nb, &e) == 0, "%s", e.msg);
    T_ASSERT(na > 7 && na % 3 != 0); /* several batches, the last one short */
    printf("  %d pieces (scale 112) in batches of 3 == one batch: %s\n", na, a.data && b.data && na == nb && !memcmp(a.data, b.data, tensor_nbytes(&a)) ? "bit-identical" : "DIFFERENT");
    T_EQ_INT(nb, na);
    if (a.data && b.data && na == nb) {
        T_EQ_INT(tensor_nbytes(&a), tensor_nbytes(&b));
        T_ASSERTF(memcmp(a.data, b.data, tensor_nbytes(&a)) == 0, "batches of 3 differ from one batch of %d", na);
        /* the tokens are not trivially equal: pieces differ from each other */
        const int64_t row = (int64_t)one->cfg.query_num * one->cfg.hidden_size;
        T_ASSERT(memcmp(a.data, (float *)a.data + row, (size_t)row * sizeof(float)) != 0);
    }
    dev_free(a.dev, a.data);
    dev_free(b.dev, b.data);

    /* the default limits and the model's own slicing: the two photos make 17 pieces of ~1000
     * patches, one chat request (was: "17 pieces ... more than the 10 x 1100 the device plan
     * reserved") */
    struct devmap_params dp;
    devmap_params_default(&dp);
    T_EQ_INT(dflt->plan->params.max_pieces, dp.max_pieces);
    struct chat_msg msg = {"user", "(<image>./</image>)\n(<image>./</image>)\nCompare them."};
    struct turn_request rq = {0};
    rq.msgs = &msg;
    rq.n_msgs = 1;
    rq.images = im;
    rq.n_images = 2;
    rq.max_new = 2;
    sampler_defaults(&rq.sp);
    rq.sp.greedy = true;
    struct turn_result res;
    T_ASSERTF(t_chat(dflt, &rq, NULL, NULL, &res, &e) == 0, "chat: %s", e.msg);
    T_EQ_INT(res.n_pieces, 17); /* 1 + 3x3 and 1 + 2x3 */
    turn_result_free(&res);
out:
    engine_close(one);
    engine_close(three);
    engine_close(dflt);
    free(im[0].rgb);
    free(im[1].rgb);
}

/* Images still decoding (image_decode_async) are encoded as their rows arrive, batch by batch (one batch per
 * slice row, the overview with the last): the tokens equal those of the same JPEGs decoded first, bit for
 * bit, in as many batches, for one image and two, on the default engine and on one of 3 pieces a batch; a
 * truncated JPEG fails the encode with the decode's message. */
static void test_encode_while_decoding(void)
{
    struct image src[2] = {photo(1344, 1008, 5), photo(900, 1500, 6)};
    unsigned char *jpg[2] = {NULL, NULL};
    unsigned long jn[2] = {0, 0};
    for (int i = 0; i < 2; i++) {
        tjhandle tc = tjInitCompress();
        T_EQ_INT(tjCompress2(tc, src[i].rgb, src[i].w, 0, src[i].h, TJPF_RGB, &jpg[i], &jn[i], TJSAMP_420, 90, 0), 0);
        tjDestroy(tc);
    }
    const char *small = tiny_small_scale();
    struct engine *engines[3] = {open_tiny_cpu(t_tiny_model(1), -1), small ? open_tiny_cpu(small, 3) : NULL, NULL};
    T_ASSERT(engines[0] && engines[1]);
    struct backend_info bi;
    backend_query(&bi);
    if (bi.n_gpus > 0) { /* the same on the card, fp16: the same batches, so the same GEMMs */
        engines[2] = open_tiny(t_tiny_model(1), "cuda", DTYPE_F16, -1);
        T_ASSERT(engines[2] != NULL);
    } else {
        printf("  (no CUDA device: the CPU engines only)\n");
    }
    struct err e = {{0}};
    const int threads = backend_threads(); /* mm_encode lowers the count while rows arrive, and restores it */
    for (int gi = 0; gi < 3 && engines[0] && engines[1]; gi++)
        for (int n = 1; n <= 2; n++) {
            struct engine *g = engines[gi];
            if (!g) continue;
            struct image dec[2] = {{0}}, asy[2] = {{0}};
            for (int i = 0; i < n; i++) T_EQ_INT(image_decode(&dec[i], jpg[i], jn[i], NULL, &e), 0);
            struct chat_grid ga[2], gb[2];
            struct tensor a = {0}, b = {0};
            int na = 0, nb = 0;
            T_ASSERTF(engine_encode_images(g, dec, n, ga, &a, &na, &e) == 0, "%s", e.msg);
            const int batches_dec = engine_encode_times(g)->batches;
            for (int i = 0; i < n; i++) T_EQ_INT(image_decode_async(&asy[i], jpg[i], jn[i], NULL, &e), 0);
            T_ASSERTF(engine_encode_images(g, asy, n, gb, &b, &nb, &e) == 0, "%s", e.msg);
            const int batches = engine_encode_times(g)->batches;
            T_EQ_INT(backend_threads(), threads);
            /* the batches follow from the plans: one per slice row (the overview with the last), cut to the
             * engine's pieces per batch; decoded or not */
            T_EQ_INT(batches, batches_dec);
            if (gi == 0 && n == 1) T_EQ_INT(batches, ga[0].rows); /* 1344x1008: a 3x2 grid, 2 batches */
            T_EQ_INT(nb, na);
            T_ASSERT(ga[n - 1].cols == gb[n - 1].cols && ga[n - 1].rows == gb[n - 1].rows);
            /* the tokens live on the engine's device (the CUDA engine's in device memory): compare host copies
             * (widened to f32, which keeps every f16 bit pattern apart) */
            float *ha = a.data ? t_fetch_f32(&a) : NULL, *hb = b.data ? t_fetch_f32(&b) : NULL;
            const int same = ha && hb && na == nb && tensor_numel(&a) == tensor_numel(&b) &&
                             !memcmp(ha, hb, (size_t)tensor_numel(&a) * sizeof(float));
            free(ha);
            free(hb);
            printf("  %s, %d image(s): %d pieces while decoding in %d batch(es): %s\n",
                   gi == 2 ? "cuda f16" : gi ? "3 a batch" : "default", n,
                   nb, batches, same ? "bit-identical" : "DIFFERENT");
            T_ASSERT(same);
            dev_free(a.dev, a.data);
            dev_free(b.dev, b.data);
            for (int i = 0; i < n; i++) {
                image_free(&dec[i]);
                image_free(&asy[i]);
            }
        }
    if (engines[0]) { /* a truncated file: the header passes, the encode fails naming the image */
        struct image t = {0};
        struct chat_grid gt;
        struct tensor x = {0};
        int nx = 0;
        T_EQ_INT(image_decode_async(&t, jpg[0], jn[0] * 2 / 3, NULL, &e), 0);
        e.msg[0] = 0;
        T_EQ_INT(engine_encode_images(engines[0], &t, 1, &gt, &x, &nx, &e), -1);
        T_CONTAINS(e.msg, "image 1");
        T_CONTAINS(e.msg, "truncated");
        T_ASSERT(x.data == NULL);
        T_EQ_INT(backend_threads(), threads);
        image_free(&t);
    }
    engine_close(engines[2]);
    for (int i = 0; i < 2; i++) {
        engine_close(engines[i]);
        tjFree(jpg[i]);
        free(src[i].rgb);
    }
}

int main(void)
{
    backend_set_threads(2);
    T_RUN(test_position_ids);
    T_RUN(test_sincos);
    T_RUN(test_tiny_f32);
    T_RUN(test_tiny_f16);
    T_RUN(test_resampler_masking);
    T_RUN(test_vit_padding_matters);
    T_RUN(test_errors);
    T_RUN(test_attention_batch);
    T_RUN(test_batched_pieces);
    T_RUN(test_encode_while_decoding);
    return t_main_end("test_vision");
}
