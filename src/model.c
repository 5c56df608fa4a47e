/* model.c: the tensor manifest of spec §2, derived from the config alone. Order follows the
 * published checkpoint: llm.*, then vpm.*, then resampler.*. */
#include "model.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>

struct mbuild {
    struct manifest_entry *v;
    int n, cap;
};

static int madd(struct mbuild *m, enum unit_kind unit, int layer, float mean, float std, int ndim, int64_t d0,
                int64_t d1, int64_t d2, int64_t d3, const char *fmt, ...)
{
    if (m->n == m->cap) {
        int cap = m->cap ? m->cap * 2 : 256;
        struct manifest_entry *v = realloc(m->v, (size_t)cap * sizeof *v);
        if (!v) return -1;
        m->v = v;
        m->cap = cap;
    }
    struct manifest_entry *x = &m->v[m->n++];
    memset(x, 0, sizeof *x);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->name, sizeof x->name, fmt, ap);
    va_end(ap);
    x->ndim = ndim;
    x->shape[0] = d0; x->shape[1] = d1; x->shape[2] = d2; x->shape[3] = d3;
    x->unit = unit;
    x->layer = layer;
    x->init_mean = mean;
    x->init_std = std;
    return 0;
}

#define LIN(in) (1.0f / sqrtf((float)(in)))

int model_manifest(const struct model_config *c, struct manifest_entry **out, struct err *e)
{
    struct mbuild m = {0};
    int r = 0;
    const int64_t d = c->hidden_size, hd = c->head_dim, nh = c->num_attention_heads, nkv = c->num_key_value_heads;
    const int64_t ff = c->intermediate_size, V = c->vocab_size;
    const struct vision_config *vc = &c->vision_config;
    const int64_t vd = vc->hidden_size, vff = vc->intermediate_size, ps = vc->patch_size;
    const int64_t npos = (int64_t)(vc->image_size / vc->patch_size) * (vc->image_size / vc->patch_size);

    r |= madd(&m, UNIT_EMBED, -1, 0, 1.0f, 2, V, d, 0, 0, "llm.model.embed_tokens.weight");
    for (int i = 0; i < c->num_hidden_layers; i++) {
        const char *p = "llm.model.layers";
        r |= madd(&m, UNIT_LAYER, i, 1, 0.1f, 1, d, 0, 0, 0, "%s.%d.input_layernorm.weight", p, i);
        r |= madd(&m, UNIT_LAYER, i, 0, LIN(d), 2, nh * hd, d, 0, 0, "%s.%d.self_attn.q_proj.weight", p, i);
        r |= madd(&m, UNIT_LAYER, i, 0, LIN(d), 2, nkv * hd, d, 0, 0, "%s.%d.self_attn.k_proj.weight", p, i);
        r |= madd(&m, UNIT_LAYER, i, 0, LIN(d), 2, nkv * hd, d, 0, 0, "%s.%d.self_attn.v_proj.weight", p, i);
        r |= madd(&m, UNIT_LAYER, i, 0, LIN(nh * hd), 2, d, nh * hd, 0, 0, "%s.%d.self_attn.o_proj.weight", p, i);
        r |= madd(&m, UNIT_LAYER, i, 1, 0.1f, 1, d, 0, 0, 0, "%s.%d.post_attention_layernorm.weight", p, i);
        r |= madd(&m, UNIT_LAYER, i, 0, LIN(d), 2, ff, d, 0, 0, "%s.%d.mlp.gate_proj.weight", p, i);
        r |= madd(&m, UNIT_LAYER, i, 0, LIN(d), 2, ff, d, 0, 0, "%s.%d.mlp.up_proj.weight", p, i);
        r |= madd(&m, UNIT_LAYER, i, 0, LIN(ff), 2, d, ff, 0, 0, "%s.%d.mlp.down_proj.weight", p, i);
    }
    r |= madd(&m, UNIT_NORM, -1, 1, 0.1f, 1, d, 0, 0, 0, "llm.model.norm.weight");
    r |= madd(&m, UNIT_LM_HEAD, -1, 0, 2 * LIN(d), 2, V, d, 0, 0, "llm.lm_head.weight");

    /* vision tower: all stored layers are in the checkpoint, used or not */
    r |= madd(&m, UNIT_VPM, -1, 0, LIN(3 * ps * ps), 4, vd, 3, ps, ps, "vpm.embeddings.patch_embedding.weight");
    r |= madd(&m, UNIT_VPM, -1, 0, 0.02f, 1, vd, 0, 0, 0, "vpm.embeddings.patch_embedding.bias");
    r |= madd(&m, UNIT_VPM, -1, 0, 0.5f, 2, npos, vd, 0, 0, "vpm.embeddings.position_embedding.weight");
    for (int j = 0; j < vc->num_hidden_layers; j++) {
        const char *p = "vpm.encoder.layers";
        r |= madd(&m, UNIT_VPM, -1, 1, 0.1f, 1, vd, 0, 0, 0, "%s.%d.layer_norm1.weight", p, j);
        r |= madd(&m, UNIT_VPM, -1, 0, 0.1f, 1, vd, 0, 0, 0, "%s.%d.layer_norm1.bias", p, j);
        static const char *proj[] = {"q_proj", "k_proj", "v_proj", "out_proj"};
        for (int k = 0; k < 4; k++) {
            r |= madd(&m, UNIT_VPM, -1, 0, LIN(vd), 2, vd, vd, 0, 0, "%s.%d.self_attn.%s.weight", p, j, proj[k]);
            r |= madd(&m, UNIT_VPM, -1, 0, 0.02f, 1, vd, 0, 0, 0, "%s.%d.self_attn.%s.bias", p, j, proj[k]);
        }
        r |= madd(&m, UNIT_VPM, -1, 1, 0.1f, 1, vd, 0, 0, 0, "%s.%d.layer_norm2.weight", p, j);
        r |= madd(&m, UNIT_VPM, -1, 0, 0.1f, 1, vd, 0, 0, 0, "%s.%d.layer_norm2.bias", p, j);
        r |= madd(&m, UNIT_VPM, -1, 0, LIN(vd), 2, vff, vd, 0, 0, "%s.%d.mlp.fc1.weight", p, j);
        r |= madd(&m, UNIT_VPM, -1, 0, 0.02f, 1, vff, 0, 0, 0, "%s.%d.mlp.fc1.bias", p, j);
        r |= madd(&m, UNIT_VPM, -1, 0, LIN(vff), 2, vd, vff, 0, 0, "%s.%d.mlp.fc2.weight", p, j);
        r |= madd(&m, UNIT_VPM, -1, 0, 0.02f, 1, vd, 0, 0, 0, "%s.%d.mlp.fc2.bias", p, j);
    }
    r |= madd(&m, UNIT_VPM, -1, 1, 0.1f, 1, vd, 0, 0, 0, "vpm.post_layernorm.weight");
    r |= madd(&m, UNIT_VPM, -1, 0, 0.1f, 1, vd, 0, 0, 0, "vpm.post_layernorm.bias");

    /* resampler */
    const int64_t q = c->query_num;
    r |= madd(&m, UNIT_RESAMPLER, -1, 0, 1.0f, 2, q, d, 0, 0, "resampler.query");
    r |= madd(&m, UNIT_RESAMPLER, -1, 0, LIN(vd), 2, d, vd, 0, 0, "resampler.kv_proj.weight");
    r |= madd(&m, UNIT_RESAMPLER, -1, 0, LIN(d), 2, 3 * d, d, 0, 0, "resampler.attn.in_proj_weight");
    r |= madd(&m, UNIT_RESAMPLER, -1, 0, 0.02f, 1, 3 * d, 0, 0, 0, "resampler.attn.in_proj_bias");
    r |= madd(&m, UNIT_RESAMPLER, -1, 0, LIN(d), 2, d, d, 0, 0, "resampler.attn.out_proj.weight");
    r |= madd(&m, UNIT_RESAMPLER, -1, 0, 0.02f, 1, d, 0, 0, 0, "resampler.attn.out_proj.bias");
    r |= madd(&m, UNIT_RESAMPLER, -1, 1, 0.1f, 1, d, 0, 0, 0, "resampler.ln_q.weight");
    r |= madd(&m, UNIT_RESAMPLER, -1, 0, 0.1f, 1, d, 0, 0, 0, "resampler.ln_q.bias");
    r |= madd(&m, UNIT_RESAMPLER, -1, 1, 0.1f, 1, d, 0, 0, 0, "resampler.ln_kv.weight");
    r |= madd(&m, UNIT_RESAMPLER, -1, 0, 0.1f, 1, d, 0, 0, 0, "resampler.ln_kv.bias");
    r |= madd(&m, UNIT_RESAMPLER, -1, 1, 0.1f, 1, d, 0, 0, 0, "resampler.ln_post.weight");
    r |= madd(&m, UNIT_RESAMPLER, -1, 0, 0.1f, 1, d, 0, 0, 0, "resampler.ln_post.bias");
    r |= madd(&m, UNIT_RESAMPLER, -1, 0, LIN(d), 2, d, d, 0, 0, "resampler.proj");
    if (r) {
        free(m.v);
        return err_set(e, "out of memory building the tensor manifest");
    }
    *out = m.v;
    return m.n;
}

const char *unit_name(enum unit_kind k, int layer, char *buf, size_t n)
{
    switch (k) {
    case UNIT_EMBED: snprintf(buf, n, "llm.model.embed_tokens"); break;
    case UNIT_LAYER: snprintf(buf, n, "llm.model.layers.%d", layer); break;
    case UNIT_NORM: snprintf(buf, n, "llm.model.norm"); break;
    case UNIT_LM_HEAD: snprintf(buf, n, "llm.lm_head"); break;
    case UNIT_VPM: snprintf(buf, n, "vpm"); break;
    case UNIT_RESAMPLER: snprintf(buf, n, "resampler"); break;
    }
    return buf;
}
