/* vision.c: the SigLIP / Idefics2 vision tower (spec §3) through the ops of backend.h.
 * The forward follows HF MiniCPM-Llama3-V 2.5 with transformers 4.40 exactly, bug included:
 * all pieces are padded with zero pixels to N_max patches, there is NO attention mask (the
 * upstream patch_attn_mask is all true, §3.2), and every piece takes the 1-D position ids of N_max.
 * Rounding points follow torch's fp16 path: patch conv rounded, + conv bias rounded (cuDNN adds the
 * bias in a separate op), + position embedding rounded; each Linear rounds once (bias in the
 * epilogue), then its GELU / residual add round again on the CPU, while the GPU fuses them into the
 * GEMM's epilogue with one rounding (op_linear); eager attention rounds q·k, then ·scale, then the
 * softmax output (ATTN_EAGER_F16).
 * With an F32 activation dtype every rounding is the identity. */
#include "vision.h"

#include <math.h>
#include <string.h>

#include "backend.h"
#include "model.h"

/* ---- scratch carving ---- */

/* Scratch is carved with tensor_carve (tensor.h): a counting pass sizes it, the same code lays it out. */

struct vision_bufs {
    struct tensor patches; /* [R, pdim] act: the padded patch matrix */
    struct tensor ids;     /* [N_max, 1] I32: position ids */
    struct tensor pos;     /* [N_max, vd]: pos_embed rows gathered */
    struct tensor h;       /* [R, vd]: normed input / projection output */
    struct tensor qkv;     /* [3R, vd]: q, k, v as three consecutive [R, vd] blocks */
    struct tensor q, k, v; /* [R, vd] row views of qkv */
    struct tensor a;       /* [R, vd]: attention output */
    struct tensor mlp;     /* [R, vff] */
};

static void vision_carve(struct vision_bufs *b, struct tensor_carver *c, const struct model_config *cfg, int n_pieces,
                         int64_t n_max, enum dtype act)
{
    const struct vision_config *vc = &cfg->vision_config;
    const int64_t R = (int64_t)n_pieces * n_max, vd = vc->hidden_size;
    const int64_t pdim = (int64_t)vc->num_channels * vc->patch_size * vc->patch_size;
    b->patches = tensor_carve(c, act, R, pdim);
    b->ids = tensor_carve(c, DTYPE_I32, n_max, 1);
    b->ids = tensor_reshape(&b->ids, 1, n_max);
    b->pos = tensor_carve(c, act, n_max, vd);
    b->h = tensor_carve(c, act, R, vd);
    b->qkv = tensor_carve(c, act, 3 * R, vd);
    b->q = tensor_rows_view(&b->qkv, 0, R);
    b->k = tensor_rows_view(&b->qkv, R, R);
    b->v = tensor_rows_view(&b->qkv, 2 * R, R);
    b->a = tensor_carve(c, act, R, vd);
    b->mlp = tensor_carve(c, act, R, vc->intermediate_size);
}

size_t vision_views_bytes(const struct model_config *c, int n_pieces, int64_t n_max, enum dtype act)
{
    struct tensor_carver cv = {.base = NULL, .dev = device_cpu()};
    struct vision_bufs b;
    vision_carve(&b, &cv, c, n_pieces, n_max, act);
    return cv.raw;
}

size_t vision_scratch_bytes(const struct model_config *c, int n_pieces, int64_t n_max, enum dtype act)
{
    struct tensor_carver cv = {.base = NULL, .dev = device_cpu()};
    struct vision_bufs b;
    vision_carve(&b, &cv, c, n_pieces, n_max, act);
    return cv.off;
}

/* ---- position ids (§3.2) ---- */

/* Element k of torch.arange(start, end, step) as float32 on the CPU, n = its length. torch computes
 * start + step*k in double (acc type of float) and rounds; its vectorised kernel (Loops.h
 * vectorized_loop: blocks of 2*vec, the tail scalar) instead rounds the block base m first and then
 * adds (k - m)*step in double (Vectorized<float>::arange). */
static float torch_arange_f32(double start, double step, int64_t k, int64_t n, int vec)
{
    if (vec > 0) {
        int64_t nv = n / (2 * (int64_t)vec) * (2 * (int64_t)vec);
        if (k < nv) {
            int64_t m = k / vec * vec;
            float base = (float)(start + step * (double)m);
            return (float)((double)base + (double)(k - m) * step);
        }
    }
    return (float)(start + step * (double)k);
}

void vision_position_ids(int32_t *ids, int64_t n_max, int per_side, int arange_vec)
{
    CHECK(n_max >= 1 && per_side >= 1 && per_side <= 4096);
    /* boundaries = torch.arange(1/per_side, 1.0, 1/per_side): python doubles, f32 result */
    const double s = 1.0 / (double)per_side;
    const int64_t nb = (int64_t)ceil((1.0 - s) / s);
    float bnd[4097];
    CHECK(nb >= 0 && nb <= 4096);
    for (int64_t j = 0; j < nb; j++) bnd[j] = torch_arange_f32(s, s, j, nb, arange_vec);
    /* step = 1 / tensor(n_max): a float32 true division; arange(0, 1 - 1e-6, step) takes it as a double */
    const float step = 1.0f / (float)n_max;
    const int64_t nf = (int64_t)ceil((1.0 - 1e-6) / (double)step);
    CHECKF(nf == n_max, "arange length %lld for n_max %lld", (long long)nf, (long long)n_max);
    for (int64_t k = 0; k < n_max; k++) {
        float frac = torch_arange_f32(0.0, (double)step, k, nf, arange_vec);
        int32_t id = 0; /* bucketize(right=True): boundaries[id-1] <= frac < boundaries[id] */
        while (id < nb && bnd[id] <= frac) id++;
        ids[k] = id;
    }
}

/* ---- forward ---- */

int64_t vision_n_max(const struct vision_piece *pieces, int n_pieces)
{
    int64_t m = 0;
    for (int i = 0; i < n_pieces; i++) {
        int64_t n = (int64_t)pieces[i].h * pieces[i].w;
        if (n > m) m = n;
    }
    return m;
}

int vision_check_pieces(const struct model_config *c, const struct vision_piece *pieces, int n_pieces,
                        struct err *e)
{
    const struct vision_config *vc = &c->vision_config;
    if (n_pieces < 1 || n_pieces > VISION_MAX_PIECES)
        return err_set(e, "vision: %d pieces (allowed 1..%d)", n_pieces, VISION_MAX_PIECES);
    if (vc->patch_size < 1 || vc->image_size < vc->patch_size || vc->num_channels < 1)
        return err_set(e, "vision_config: image_size %d / patch_size %d / num_channels %d unusable", vc->image_size,
                       vc->patch_size, vc->num_channels);
    if (vc->hidden_size % vc->num_attention_heads != 0)
        return err_set(e, "vision_config: hidden_size %d not divisible by num_attention_heads %d", vc->hidden_size,
                       vc->num_attention_heads);
    if (strcmp(vc->hidden_act, "gelu_pytorch_tanh") != 0)
        return err_set(e, "vision_config.hidden_act \"%s\" unsupported (only gelu_pytorch_tanh)", vc->hidden_act);
    for (int i = 0; i < n_pieces; i++) {
        const struct vision_piece *p = &pieces[i];
        if (p->h < 1 || p->w < 1 || (int64_t)p->h * p->w > VISION_MAX_PATCHES)
            return err_set(e, "vision: piece %d has tgt size (%d, %d) (need h, w >= 1 and h*w <= %d)", i, p->h, p->w,
                           VISION_MAX_PATCHES);
        if (!p->patches) return err_set(e, "vision: piece %d has no patch data", i);
    }
    return 0;
}

int vision_forward(struct tensor *out, const struct vpm_weights *w, const struct model_config *c,
                   const struct vision_piece *pieces, int n_pieces, void *scratch, size_t scratch_bytes,
                   struct err *e)
{
    return vision_forward_padded(out, w, c, pieces, n_pieces, 0, scratch, scratch_bytes, e);
}

int vision_forward_padded(struct tensor *out, const struct vpm_weights *w, const struct model_config *c,
                          const struct vision_piece *pieces, int n_pieces, int64_t n_pad, void *scratch,
                          size_t scratch_bytes, struct err *e)
{
    const struct vision_config *vc = &c->vision_config;
    if (vision_check_pieces(c, pieces, n_pieces, e)) return -1;
    const int64_t longest = vision_n_max(pieces, n_pieces);
    if (n_pad != 0 && (n_pad < longest || n_pad > VISION_MAX_PATCHES))
        return err_set(e, "vision: padded length %lld, but the longest piece has %lld patches (limit %d)",
                       (long long)n_pad, (long long)longest, VISION_MAX_PATCHES);
    /* a piece's rows depend on its own patches and on n_max (the padding it attends to, its
     * position ids), never on the other pieces: a request may run in several batches padded alike */
    const int64_t n_max = n_pad ? n_pad : longest, B = n_pieces, R = B * n_max;
    const int64_t vd = vc->hidden_size, H = vc->num_attention_heads, hd = vd / H;
    const int64_t pdim = (int64_t)vc->num_channels * vc->patch_size * vc->patch_size;
    const int per_side = vc->image_size / vc->patch_size;
    const enum dtype act = out->dtype;
    const struct device dev = w->patch_w.dev;
    CHECKF(out->ndim == 3 && out->shape[0] == B && out->shape[1] == n_max && out->shape[2] == vd,
           "vision out must be [%lld, %lld, %lld]", (long long)B, (long long)n_max, (long long)vd);
    CHECK(device_eq(out->dev, dev));
    CHECK(act == DTYPE_F32 || act == DTYPE_F16 || act == DTYPE_BF16);
    CHECKF(w->patch_w.ndim == 2 && w->patch_w.shape[1] == pdim, "patch_w must be [vd, %lld]", (long long)pdim);
    CHECKF(w->pos_embed.shape[0] >= (int64_t)per_side * per_side, "pos_embed needs %d rows", per_side * per_side);

    int ret = -1;
    void *owned = NULL, *host_patches = NULL;
    int32_t *host_ids = NULL;
    const size_t need = vision_scratch_bytes(c, n_pieces, n_max, act);
    if (scratch) {
        if (scratch_bytes < need) {
            err_set(e, "vision: scratch of %zu bytes, need %zu", scratch_bytes, need);
            goto done;
        }
    } else {
        /* one allocation per call (tests); the engine passes its kept arena (mm.c). dev_free
         * waits for the device, so the queued ops are done with it before it is released. */
        owned = scratch = dev_alloc(dev, need, e);
        if (!owned) goto done;
    }
    struct tensor_carver cv = {.base = scratch, .dev = dev};
    struct vision_bufs b;
    vision_carve(&b, &cv, c, n_pieces, n_max, act);

    /* Host side: the zero-padded patch matrix in the activation dtype (torch casts pixel_values to
     * the model dtype before the conv) and the position ids. */
    const size_t es = dtype_size(act);
    host_patches = malloc((size_t)R * (size_t)pdim * es);
    host_ids = malloc((size_t)n_max * sizeof *host_ids);
    if (!host_patches || !host_ids) {
        err_set(e, "vision: out of host memory for %lld x %lld patches", (long long)R, (long long)pdim);
        goto done;
    }
    /* Piece by piece: convert to the act dtype on the host (so the upload moves half the bytes of
     * f32 for f16), queue the upload (it returns at once, op_copy) and the patch projection of that
     * piece, so the device works on piece i while the host converts piece i + 1. */
    vision_position_ids(host_ids, n_max, per_side, VISION_ARANGE_VEC);
    struct tensor hi = tensor_make(DTYPE_I32, device_cpu(), host_ids, 1, n_max);
    op_copy(&b.ids, &hi);
    op_embed(&b.pos, &w->pos_embed, &b.ids);
    struct tensor x = tensor_reshape(out, 2, R, vd);
    for (int64_t i = 0; i < B; i++) {
        const int64_t n = (int64_t)pieces[i].h * pieces[i].w;
        char *dst = (char *)host_patches + (size_t)(i * n_max * pdim) * es;
        const int64_t chunk = 4096;
#pragma omp parallel for schedule(static) if (n * pdim > 2 * chunk)
        for (int64_t c0 = 0; c0 < n * pdim; c0 += chunk)
            convert_from_f32(dst + (size_t)c0 * es, act, pieces[i].patches + c0, n * pdim - c0 < chunk ? n * pdim - c0 : chunk);
        memset(dst + (size_t)(n * pdim) * es, 0, (size_t)((n_max - n) * pdim) * es); /* zero pixels */
        struct tensor hp = tensor_make(act, device_cpu(), dst, 2, n_max, pdim);
        struct tensor dp = tensor_rows_view(&b.patches, i * n_max, n_max);
        op_copy(&dp, &hp);
        /* Embeddings (§3.3): x = round(round(patches · W^T) + b) + pos_embed[pos_id] */
        struct tensor xi = tensor_rows_view(&x, i * n_max, n_max);
        op_matmul(&xi, &dp, &w->patch_w, NULL);
        op_add(&xi, &xi, &w->patch_b);
        op_add(&xi, &xi, &b.pos); /* the same ids for every piece */
    }

    /* Encoder layers (§3.4), pre-norm, no mask across all n_max rows of each piece */
    const float eps = vc->layer_norm_eps;
    const float scale = (float)pow((double)hd, -0.5); /* python: head_dim**-0.5 */
    for (int l = 0; l < c->vision_layers_used; l++) {
        const struct vpm_layer *L = &w->layers[l];
        op_layernorm(&b.h, &x, &L->layer_norm1_w, &L->layer_norm1_b, eps);
        struct tensor qkv3 = tensor_reshape(&b.qkv, 3, (int64_t)3, R, vd); /* q, k, v: three Linears, one call */
        op_matmul_stacked(&qkv3, &b.h, &L->qkv_w, &L->qkv_b);
        /* every piece attends only to its own n_max rows: one batched call for all B pieces */
        struct tensor q3 = tensor_reshape(&b.q, 3, R, H, hd), k3 = tensor_reshape(&b.k, 3, R, H, hd);
        struct tensor v3 = tensor_reshape(&b.v, 3, R, H, hd), a3 = tensor_reshape(&b.a, 3, R, H, hd);
        op_attention_batch(&a3, &q3, &k3, &v3, B, scale, ATTN_EAGER_F16);
        /* x += out_proj(a); mlp = gelu(fc1(ln2(x))); x += fc2(mlp): the activation and the residual
         * adds ride in the GEMM epilogues on the GPU (op_linear) */
        op_linear(&x, &b.a, &L->out_w, &L->out_b, LINEAR_NONE, &x);
        op_layernorm(&b.h, &x, &L->layer_norm2_w, &L->layer_norm2_b, eps);
        op_linear(&b.mlp, &b.h, &L->fc1_w, &L->fc1_b, LINEAR_GELU_TANH, NULL);
        op_linear(&x, &b.mlp, &L->fc2_w, &L->fc2_b, LINEAR_NONE, &x);
    }
    op_layernorm(&x, &x, &w->post_ln_w, &w->post_ln_b, eps); /* §3.5 */
    /* No dev_sync: op_copy from the host returns only once the host buffers may be reused, so they
     * can be freed now, and the caller's next ops on out are ordered after these on the device's
     * stream; the host can meanwhile prepare the resampler's inputs. */
    ret = 0;
done:
    free(host_patches);
    free(host_ids);
    dev_free(dev, owned);
    return ret;
}
