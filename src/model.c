/* model.c: the tensor manifest of spec §2, derived from the config alone. Order follows the
 * published checkpoint: llm.*, then vpm.*, then resampler.*. */
#include "model.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* ---------------------------------------------------------------- loading */
#include "backend.h"
#include "safetensors.h"

static int cmp_name(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* A tensor of the checkpoint that the manifest does not list: named, and when it is a layer past
 * config.json's count, said so (a checkpoint with more layers than its config, whose extra layers
 * would be silently dropped). */
static int unexpected_tensor(const struct model_config *cfg, const struct safetensors *st,
                             const struct safetensors_tensor *t, struct err *e)
{
    static const struct {
        const char *prefix, *field;
    } stacks[] = {{"llm.model.layers.", "num_hidden_layers"}, {"vpm.encoder.layers.", "vision_config.num_hidden_layers"}};
    for (int k = 0; k < 2; k++) {
        const size_t n = strlen(stacks[k].prefix);
        if (strncmp(t->name, stacks[k].prefix, n) || !isdigit((unsigned char)t->name[n])) continue;
        const long layer = strtol(t->name + n, NULL, 10);
        const int have = k == 0 ? cfg->num_hidden_layers : cfg->vision_config.num_hidden_layers;
        if (layer >= have)
            return err_set(e, "%s: tensor %s belongs to layer %ld, but config.json has %s = %d: the checkpoint does not "
                              "match its config", safetensors_shard_path(st, t->shard), t->name, layer, stacks[k].field, have);
    }
    return err_set(e, "%s: tensor %s is not part of the model config.json describes (spec §2 lists every tensor)",
                   safetensors_shard_path(st, t->shard), t->name);
}

int model_check_checkpoint(const struct model_config *cfg, const struct safetensors *st, struct err *e)
{
    struct manifest_entry *man = NULL;
    int n = model_manifest(cfg, &man, e);
    if (n < 0) return -1;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        const struct safetensors_tensor *t = safetensors_find(st, man[i].name);
        if (!t) {
            rc = err_set(e, "checkpoint has no tensor %s (required by config.json)", man[i].name);
            break;
        }
        bool ok = t->ndim == man[i].ndim;
        for (int j = 0; ok && j < t->ndim; j++) ok = t->shape[j] == man[i].shape[j];
        if (!ok) {
            struct tensor a = {.ndim = t->ndim}, b = {.ndim = man[i].ndim};
            memcpy(a.shape, t->shape, sizeof a.shape);
            memcpy(b.shape, man[i].shape, sizeof b.shape);
            char sa[96], sb[96];
            rc = err_set(e, "%s: tensor %s has shape %s, config.json implies %s", safetensors_shard_path(st, t->shard),
                         man[i].name, tensor_shape_str(&a, sa, sizeof sa), tensor_shape_str(&b, sb, sizeof sb));
        } else if (t->dtype != DTYPE_F16 && t->dtype != DTYPE_BF16 && t->dtype != DTYPE_F32) {
            rc = err_set(e, "%s: tensor %s has dtype %s; weights must be F16, BF16 or F32",
                         safetensors_shard_path(st, t->shard), man[i].name, dtype_name(t->dtype));
        }
    }
    /* and nothing else: every tensor of the checkpoint is one the manifest lists */
    const char **names = rc ? NULL : malloc((size_t)n * sizeof *names);
    if (!rc && !names) rc = err_set(e, "out of memory");
    if (!rc) {
        for (int i = 0; i < n; i++) names[i] = man[i].name;
        qsort(names, (size_t)n, sizeof *names, cmp_name);
        const int nt = safetensors_count(st);
        for (int i = 0; i < nt && !rc; i++) {
            const struct safetensors_tensor *t = safetensors_at(st, i);
            if (!bsearch(&t->name, names, (size_t)n, sizeof *names, cmp_name)) rc = unexpected_tensor(cfg, st, t, e);
        }
    }
    free(names);
    free(man);
    return rc;
}

static int track(struct model *m, struct device d, void *p, struct err *e)
{
    if (m->n_allocs == m->cap_allocs) {
        int cap = m->cap_allocs ? 2 * m->cap_allocs : 256;
        struct model_alloc *a = realloc(m->allocs, (size_t)cap * sizeof *a);
        if (!a) return err_set(e, "out of memory");
        m->allocs = a;
        m->cap_allocs = cap;
    }
    m->allocs[m->n_allocs].dev = d;
    m->allocs[m->n_allocs].p = p;
    m->n_allocs++;
    return 0;
}

static void progress_add(struct model *m, const struct tensor *src)
{
    m->progress_done += tensor_nbytes(src);
    if (m->progress.fn) m->progress.fn(m->progress.ctx, "loading weights", m->progress_done, m->progress_total);
}

/* Places checkpoint tensor `name` on logical device li in dtype m->wdtype (transpose: store [in,out] as [out,in]). */
static int place(struct model *m, const struct safetensors *st, const struct model_placement *pl, int li,
                 struct tensor *out, int transpose, struct err *e, const char *name)
{
    struct tensor src;
    if (safetensors_get(st, name, &src, e)) return -1;
    src.name = NULL;
    const struct device dev = pl->devs[li];
    const enum dtype dt = m->wdtype;
    if (!transpose && dev.kind == DEVICE_CPU && src.dtype == dt) {
        *out = src; /* zero-copy view of the read-only map */
        out->name = name;
        m->bytes_per_device[li] += tensor_nbytes(&src);
        progress_add(m, &src);
        return 0;
    }
    struct tensor host = src;
    void *tmp = NULL;
    if (src.dtype != dt || transpose) {
        host.dtype = dt;
        tmp = malloc(tensor_nbytes(&host));
        if (!tmp) return err_set(e, "out of memory converting %s", name);
        host.data = tmp;
        if (transpose) {
            CHECK(src.ndim == 2);
            const int64_t r = src.shape[0], c = src.shape[1];
            host.shape[0] = c;
            host.shape[1] = r;
            float *row = malloc((size_t)r * sizeof(float));
            if (!row) { free(tmp); return err_set(e, "out of memory"); }
            for (int64_t j = 0; j < c; j++) {
                for (int64_t i = 0; i < r; i++) {
                    const char *p = (const char *)src.data + (size_t)(i * c + j) * dtype_size(src.dtype);
                    convert_to_f32(&row[i], p, src.dtype, 1);
                }
                convert_from_f32((char *)tmp + (size_t)(j * r) * dtype_size(dt), dt, row, r);
            }
            free(row);
        } else {
            op_copy(&host, &src);
        }
    }
    if (dev.kind == DEVICE_CPU) {
        if (track(m, dev, tmp, e)) { free(tmp); return -1; }
        *out = host;
    } else {
        void *d = dev_alloc(dev, tensor_nbytes(&host), e);
        if (!d) { free(tmp); return err_prefix(e, "loading %s", name); }
        if (track(m, dev, d, e)) { dev_free(dev, d); free(tmp); return -1; }
        struct tensor dt_ = host;
        dt_.data = d;
        dt_.dev = dev;
        op_copy(&dt_, &host);
        free(tmp);
        *out = dt_;
    }
    out->name = name;
    m->bytes_per_device[li] += tensor_nbytes(out);
    progress_add(m, &src);
    return 0;
}

/* Places the checkpoint tensors names[0..n) (matrices with equal columns, or vectors) on logical
 * device li as ONE tensor joined along rows, [sum of rows, cols] (or [sum of rows]), and sets
 * *parts[i] (when parts is not NULL) to its row views: q|k|v and gate|up on every device, so a token
 * reads each with one GEMV and the model code has one layout. Nothing is stored twice: on the CPU,
 * parts that already lie back to back in one shard in the weight dtype are viewed in place (gate|up of
 * a checkpoint written in name order); otherwise the joined tensor is a new buffer and each part's
 * pages of the map are handed back once copied (safetensors_release), so the process does not hold
 * both. The join works from the per-part tensors alone, row block after row block, so weights
 * quantized per row (issue 13: codes and scales of each part) join the same way. */
static int place_joined(struct model *m, const struct safetensors *st, const struct model_placement *pl, int li,
                        struct tensor *joined, struct tensor *const *parts, const char *const *names, int n,
                        struct err *e)
{
    enum { MAX_PARTS = 4 };
    CHECK(n >= 1 && n <= MAX_PARTS);
    const struct safetensors_tensor *ts[MAX_PARTS];
    struct tensor src[MAX_PARTS];
    int64_t rows = 0;
    int adjacent = 1;
    for (int i = 0; i < n; i++) {
        if (safetensors_get(st, names[i], &src[i], e)) return -1;
        ts[i] = safetensors_find(st, names[i]);
        /* model_check_checkpoint checked every shape against the config, which makes them joinable */
        CHECK((src[i].ndim == 2 && src[0].ndim == 2 && src[i].shape[1] == src[0].shape[1]) ||
              (src[i].ndim == 1 && src[0].ndim == 1));
        adjacent &= src[i].dtype == m->wdtype &&
                    (i == 0 || (ts[i]->shard == ts[i - 1]->shard &&
                                (const char *)ts[i]->data == (const char *)ts[i - 1]->data + ts[i - 1]->nbytes));
        rows += src[i].shape[0];
    }
    const struct device dev = pl->devs[li];
    *joined = src[0].ndim == 2 ? tensor_make(m->wdtype, dev, NULL, 2, rows, src[0].shape[1])
                               : tensor_make(m->wdtype, dev, NULL, 1, rows);
    const int in_place = adjacent && dev.kind == DEVICE_CPU;
    if (in_place) {
        joined->data = src[0].data; /* a zero-copy view of the read-only map, like place() */
    } else {
        if (!(joined->data = dev_alloc(dev, tensor_nbytes(joined), e))) return err_prefix(e, "loading %s", names[0]);
        if (track(m, dev, joined->data, e)) { dev_free(dev, joined->data); return -1; }
    }
    joined->name = names[0];
    m->bytes_per_device[li] += tensor_nbytes(joined);
    void *tmp = NULL;
    int64_t r0 = 0;
    for (int i = 0; i < n; r0 += src[i].shape[0], i++) {
        struct tensor part = tensor_rows_view(joined, r0, src[i].shape[0]);
        part.name = names[i];
        if (!in_place) {
            struct tensor host = src[i];
            if (host.dtype != m->wdtype && dev.kind != DEVICE_CPU) { /* a copy to a GPU keeps the dtype */
                host.dtype = m->wdtype;
                free(tmp);
                if (!(tmp = malloc(tensor_nbytes(&host)))) return err_set(e, "out of memory converting %s", names[i]);
                host.data = tmp;
                op_copy(&host, &src[i]);
            }
            op_copy(&part, &host); /* on the CPU: a copy, converting the dtype when it differs */
            safetensors_release(st, ts[i]);
        }
        if (parts) *parts[i] = part;
        progress_add(m, &src[i]);
    }
    free(tmp);
    return 0;
}

/* Names must outlive the tensors (they are kept for messages): the manifest's storage holds them. */
int model_load(struct model *m, const struct model_config *cfg, const struct safetensors *st,
               const struct model_placement *pl, enum dtype wdtype, const struct progress *progress, struct err *e)
{
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    m->wdtype = wdtype;
    if (progress) m->progress = *progress;
    for (int i = 0; i < safetensors_count(st); i++) {
        struct tensor t = safetensors_tensor_view(safetensors_at(st, i));
        m->progress_total += tensor_nbytes(&t);
    }
    if (model_check_checkpoint(cfg, st, e)) return -1;
    const int L = cfg->num_hidden_layers, VL = cfg->vision_layers_used;
    m->llm.layers = calloc((size_t)L, sizeof *m->llm.layers);
    m->vpm.layers = calloc((size_t)VL, sizeof *m->vpm.layers);
    if (!m->llm.layers || !m->vpm.layers) return err_set(e, "out of memory");
    /* names are looked up in the safetensors table, whose strings live as long as st */
#define NAME(...) (snprintf(nb, sizeof nb, __VA_ARGS__), safetensors_find(st, nb)->name)
    char nb[160];
    int rc = 0;
    struct llm_weights *w = &m->llm;
    w->embed_device = pl->embed;
    w->norm_device = pl->norm;
    w->lm_head_device = pl->lm_head;
    rc |= place(m, st, pl, pl->embed, &w->embed_tokens, 0, e, NAME("llm.model.embed_tokens.weight"));
    for (int i = 0; i < L && !rc; i++) {
        struct llm_layer *l = &w->layers[i];
        int d = pl->layer[i];
        l->device = d;
        const char *p = "llm.model.layers";
        rc |= place(m, st, pl, d, &l->input_layernorm, 0, e, NAME("%s.%d.input_layernorm.weight", p, i));
        if (!rc) {
            const char *qkv[3] = {NAME("%s.%d.self_attn.q_proj.weight", p, i), NAME("%s.%d.self_attn.k_proj.weight", p, i),
                                  NAME("%s.%d.self_attn.v_proj.weight", p, i)};
            struct tensor *parts[3] = {&l->q_proj, &l->k_proj, &l->v_proj};
            rc = place_joined(m, st, pl, d, &l->qkv, parts, qkv, 3, e);
        }
        rc |= rc ? -1 : place(m, st, pl, d, &l->o_proj, 0, e, NAME("%s.%d.self_attn.o_proj.weight", p, i));
        rc |= rc ? -1 : place(m, st, pl, d, &l->post_attention_layernorm, 0, e, NAME("%s.%d.post_attention_layernorm.weight", p, i));
        if (!rc) {
            const char *gu[2] = {NAME("%s.%d.mlp.gate_proj.weight", p, i), NAME("%s.%d.mlp.up_proj.weight", p, i)};
            struct tensor *parts[2] = {&l->gate_proj, &l->up_proj};
            rc = place_joined(m, st, pl, d, &l->gate_up, parts, gu, 2, e);
        }
        rc |= rc ? -1 : place(m, st, pl, d, &l->down_proj, 0, e, NAME("%s.%d.mlp.down_proj.weight", p, i));
    }
    if (!rc) rc = place(m, st, pl, pl->norm, &w->norm, 0, e, NAME("llm.model.norm.weight"));
    if (!rc) rc = place(m, st, pl, pl->lm_head, &w->lm_head, 0, e, NAME("llm.lm_head.weight"));

    /* vision tower */
    struct vpm_weights *v = &m->vpm;
    const int vd = cfg->vision_config.hidden_size, ps = cfg->vision_config.patch_size;
    v->device = pl->vpm;
    const int vi = pl->vpm;
    if (!rc) rc = place(m, st, pl, vi, &v->patch_w, 0, e, NAME("vpm.embeddings.patch_embedding.weight"));
    if (!rc) v->patch_w = tensor_reshape(&v->patch_w, 2, (int64_t)vd, (int64_t)(3 * ps * ps));
    if (!rc) rc = place(m, st, pl, vi, &v->patch_b, 0, e, NAME("vpm.embeddings.patch_embedding.bias"));
    if (!rc) rc = place(m, st, pl, vi, &v->pos_embed, 0, e, NAME("vpm.embeddings.position_embedding.weight"));
    for (int j = 0; j < VL && !rc; j++) {
        struct vpm_layer *l = &v->layers[j];
        const char *p = "vpm.encoder.layers";
        struct { struct tensor *t; const char *suffix; } f[] = {
            {&l->layer_norm1_w, "layer_norm1.weight"}, {&l->layer_norm1_b, "layer_norm1.bias"},
            {&l->out_w, "self_attn.out_proj.weight"}, {&l->out_b, "self_attn.out_proj.bias"},
            {&l->layer_norm2_w, "layer_norm2.weight"}, {&l->layer_norm2_b, "layer_norm2.bias"},
            {&l->fc1_w, "mlp.fc1.weight"}, {&l->fc1_b, "mlp.fc1.bias"},
            {&l->fc2_w, "mlp.fc2.weight"}, {&l->fc2_b, "mlp.fc2.bias"},
        };
        for (size_t k = 0; k < sizeof f / sizeof f[0] && !rc; k++)
            rc = place(m, st, pl, vi, f[k].t, 0, e, NAME("%s.%d.%s", p, j, f[k].suffix));
        /* q|k|v weights and biases joined: the three Linears in one batched GEMM (vision.c) */
        static const char *const qkv[2][3] = {
            {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"},
            {"self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"}};
        struct tensor *joined[2] = {&l->qkv_w, &l->qkv_b};
        for (int wb = 0; wb < 2 && !rc; wb++) {
            const char *names[3];
            for (int k = 0; k < 3; k++) names[k] = NAME("%s.%d.%s", p, j, qkv[wb][k]);
            rc = place_joined(m, st, pl, vi, joined[wb], NULL, names, 3, e);
        }
    }
    if (!rc) rc = place(m, st, pl, vi, &v->post_ln_w, 0, e, NAME("vpm.post_layernorm.weight"));
    if (!rc) rc = place(m, st, pl, vi, &v->post_ln_b, 0, e, NAME("vpm.post_layernorm.bias"));

    /* resampler */
    struct resampler_weights *r = &m->rs;
    const int ri = pl->resampler;
    const int64_t d = cfg->hidden_size;
    r->device = ri;
    struct tensor in_w, in_b;
    if (!rc) rc = place(m, st, pl, ri, &r->query, 0, e, NAME("resampler.query"));
    if (!rc) rc = place(m, st, pl, ri, &r->kv_proj, 0, e, NAME("resampler.kv_proj.weight"));
    if (!rc) rc = place(m, st, pl, ri, &r->ln_q_w, 0, e, NAME("resampler.ln_q.weight"));
    if (!rc) rc = place(m, st, pl, ri, &r->ln_q_b, 0, e, NAME("resampler.ln_q.bias"));
    if (!rc) rc = place(m, st, pl, ri, &r->ln_kv_w, 0, e, NAME("resampler.ln_kv.weight"));
    if (!rc) rc = place(m, st, pl, ri, &r->ln_kv_b, 0, e, NAME("resampler.ln_kv.bias"));
    if (!rc) rc = place(m, st, pl, ri, &in_w, 0, e, NAME("resampler.attn.in_proj_weight"));
    if (!rc) rc = place(m, st, pl, ri, &in_b, 0, e, NAME("resampler.attn.in_proj_bias"));
    if (!rc) {
        r->wq = tensor_rows_view(&in_w, 0, d);
        r->wk = tensor_rows_view(&in_w, d, d);
        r->wv = tensor_rows_view(&in_w, 2 * d, d);
        r->bq = tensor_rows_view(&in_b, 0, d);
        r->bk = tensor_rows_view(&in_b, d, d);
        r->bv = tensor_rows_view(&in_b, 2 * d, d);
    }
    if (!rc) rc = place(m, st, pl, ri, &r->out_w, 0, e, NAME("resampler.attn.out_proj.weight"));
    if (!rc) rc = place(m, st, pl, ri, &r->out_b, 0, e, NAME("resampler.attn.out_proj.bias"));
    if (!rc) rc = place(m, st, pl, ri, &r->ln_post_w, 0, e, NAME("resampler.ln_post.weight"));
    if (!rc) rc = place(m, st, pl, ri, &r->ln_post_b, 0, e, NAME("resampler.ln_post.bias"));
    if (!rc) rc = place(m, st, pl, ri, &r->proj_t, 1, e, NAME("resampler.proj"));
#undef NAME
    if (rc) {
        model_free(m);
        return -1;
    }
    return 0;
}

void model_free(struct model *m)
{
    if (!m) return;
    for (int i = 0; i < m->n_allocs; i++) dev_free(m->allocs[i].dev, m->allocs[i].p);
    free(m->allocs);
    free(m->llm.layers);
    free(m->vpm.layers);
    m->allocs = NULL;
    m->llm.layers = NULL;
    m->vpm.layers = NULL;
    m->n_allocs = m->cap_allocs = 0;
}
