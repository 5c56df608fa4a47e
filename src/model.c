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

/* ---------------------------------------------------------------- quantized weights */
#include <cJSON.h>

#include "backend.h"
#include "quant.h"
#include "safetensors.h"

static bool ends_with(const char *s, const char *t)
{
    size_t a = strlen(s), b = strlen(t);
    return a >= b && !strcmp(s + a - b, t);
}

int model_quant_dtype(const struct model_config *cfg, int quant, const char *name, int ndim)
{
    /* Linear weights: "<module>.weight" matrices, but not the embedding tables */
    if (ndim != 2 || !ends_with(name, ".weight") || strstr(name, "embed_tokens") || strstr(name, "position_embedding"))
        return -1;
    const struct quant_config *q = &cfg->quantization_config;
    if (q->quant_method == QUANT_METHOD_BNB) {
        /* transformers keeps a Linear whose own name is in llm_int8_skip_modules */
        char mod[96];
        snprintf(mod, sizeof mod, "%.*s", (int)(strlen(name) - strlen(".weight")), name);
        const char *dot = strrchr(mod, '.'), *own = dot ? dot + 1 : mod;
        for (int i = 0; i < q->n_skip; i++)
            if (!strcmp(own, q->llm_int8_skip_modules[i])) return -1;
        return DTYPE_NF4;
    }
    int fmt, head;
    if (q->quant_method == QUANT_METHOD_MINICPMV) {
        fmt = !strcmp(q->format, "q8") ? DTYPE_Q8 : DTYPE_Q4;
        head = !strcmp(q->lm_head, "q8") ? DTYPE_Q8 : !strcmp(q->lm_head, "q4") ? DTYPE_Q4 : -1;
    } else if (quant == DTYPE_Q8 || quant == DTYPE_Q4) {
        fmt = quant;
        head = DTYPE_Q8; /* docs/QUANT.md: the output head at 8 bits in both formats */
    } else {
        return -1;
    }
    if (!strcmp(name, "llm.lm_head.weight")) return head;
    if (!strncmp(name, "llm.model.layers.", 17)) return fmt;
    return -1; /* vision tower, resampler: F16 (docs/QUANT.md) */
}

int model_quant_check(const struct model_config *cfg, int quant, struct err *e)
{
    if (quant != 0 && quant != DTYPE_Q8 && quant != DTYPE_Q4) return err_set(e, "--quant: expected q8 or q4");
    if (quant && cfg->quantization_config.quant_method != QUANT_METHOD_NONE)
        return err_set(e, "--quant %s: the folder already holds quantized weights (config.json quantization_config: %s); "
                          "--quant quantizes an fp16 folder", quant == DTYPE_Q8 ? "q8" : "q4",
                       cfg->quantization_config.quant_method == QUANT_METHOD_BNB ? "bitsandbytes nf4"
                                                                                : cfg->quantization_config.format);
    return 0;
}

/* The parts of a bitsandbytes NF4 weight `name` ([o, k]), checked; the f32 arrays are copied to aligned
 * memory (safetensors data after a U8 tensor of odd length is not 4-byte aligned): free *owned. */
#define BNB_JSON_MAX 4096
static int bnb_read(const struct safetensors *st, const char *name, int64_t o, int64_t k, struct quant_bnb_nf4 *q,
                    float **owned, struct err *e)
{
    *owned = NULL;
    memset(q, 0, sizeof *q);
    q->o = o;
    q->k = k;
    const char *path = safetensors_shard_path(st, 0);
    char nb[192];
    const int64_t numel = o * k, nblocks = (numel + QUANT_BNB_BLOCK - 1) / QUANT_BNB_BLOCK;
    if (k % 16) return err_set(e, "%s: NF4 rows of %lld values are not supported (need a multiple of 16)", name, (long long)k);
    /* the quant state (JSON) first: it says what the other parts must be */
    snprintf(nb, sizeof nb, "%s.quant_state.bitsandbytes__nf4", name);
    const struct safetensors_tensor *js = safetensors_find(st, nb);
    if (!js) {
        snprintf(nb, sizeof nb, "%s.quant_state.bitsandbytes__fp4", name);
        if (safetensors_find(st, nb)) return err_set(e, "%s: quant_type fp4 is not supported (only nf4)", name);
        return err_set(e, "%s: the bitsandbytes quant state %s.quant_state.bitsandbytes__nf4 is missing", name, name);
    }
    if (js->dtype != DTYPE_U8 || js->ndim != 1 || js->nbytes == 0 || js->nbytes > BNB_JSON_MAX)
        return err_set(e, "%s.quant_state.bitsandbytes__nf4: expected U8 [1..%d] JSON bytes, got %s with %zu bytes", name,
                       BNB_JSON_MAX, dtype_name(js->dtype), js->nbytes);
    char text[BNB_JSON_MAX + 1];
    memcpy(text, js->data, js->nbytes);
    text[js->nbytes] = 0;
    cJSON *j = cJSON_Parse(text);
    int rc = 0;
    bool nested = false;
    if (!cJSON_IsObject(j)) {
        rc = err_set(e, "%s.quant_state.bitsandbytes__nf4: corrupt quant state (not a JSON object)", name);
    } else {
        const cJSON *qt = cJSON_GetObjectItemCaseSensitive(j, "quant_type"), *bs = cJSON_GetObjectItemCaseSensitive(j, "blocksize"),
                    *dt = cJSON_GetObjectItemCaseSensitive(j, "dtype"), *sh = cJSON_GetObjectItemCaseSensitive(j, "shape"),
                    *nbs = cJSON_GetObjectItemCaseSensitive(j, "nested_blocksize"),
                    *ndt = cJSON_GetObjectItemCaseSensitive(j, "nested_dtype"),
                    *off = cJSON_GetObjectItemCaseSensitive(j, "nested_offset");
        nested = nbs || ndt || off;
        if (!cJSON_IsString(qt) || strcmp(qt->valuestring, "nf4"))
            rc = err_set(e, "%s: quant state: quant_type %s%s%s is not supported (only \"nf4\")", name,
                         cJSON_IsString(qt) ? "\"" : "", cJSON_IsString(qt) ? qt->valuestring : "missing",
                         cJSON_IsString(qt) ? "\"" : "");
        else if (!cJSON_IsNumber(bs) || bs->valuedouble != QUANT_BNB_BLOCK)
            rc = err_set(e, "%s: quant state: blocksize must be %d", name, QUANT_BNB_BLOCK);
        else if (!cJSON_IsString(dt) || strcmp(dt->valuestring, "float16"))
            rc = err_set(e, "%s: quant state: dtype must be \"float16\" (the weights' fp16 values)", name);
        else if (!cJSON_IsArray(sh) || cJSON_GetArraySize(sh) != 2 || !cJSON_IsNumber(cJSON_GetArrayItem(sh, 0)) ||
                 !cJSON_IsNumber(cJSON_GetArrayItem(sh, 1)) || cJSON_GetArrayItem(sh, 0)->valuedouble != (double)o ||
                 cJSON_GetArrayItem(sh, 1)->valuedouble != (double)k)
            rc = err_set(e, "%s: quant state: shape is not [%lld, %lld] (config.json's)", name, (long long)o, (long long)k);
        else if (nested && (!cJSON_IsNumber(nbs) || nbs->valuedouble != QUANT_BNB_NESTED_BLOCK || !cJSON_IsString(ndt) ||
                            strcmp(ndt->valuestring, "float32") || !cJSON_IsNumber(off) || !isfinite(off->valuedouble)))
            rc = err_set(e, "%s: quant state: nested_blocksize must be %d, nested_dtype \"float32\" and nested_offset a "
                            "finite number", name, QUANT_BNB_NESTED_BLOCK);
        else if (nested)
            q->offset = (float)off->valuedouble;
    }
    cJSON_Delete(j);
    if (rc) return -1;
    /* the parts, by name, dtype and size */
    const int64_t nnested = (nblocks + QUANT_BNB_NESTED_BLOCK - 1) / QUANT_BNB_NESTED_BLOCK;
    struct { const char *suffix; enum dtype dt; int64_t n; const struct safetensors_tensor *t; } part[5] = {
        {"", DTYPE_U8, numel / 2, NULL},
        {".absmax", nested ? DTYPE_U8 : DTYPE_F32, nblocks, NULL},
        {".quant_map", DTYPE_F32, 16, NULL},
        {".nested_absmax", DTYPE_F32, nnested, NULL},
        {".nested_quant_map", DTYPE_F32, 256, NULL},
    };
    const int nparts = nested ? 5 : 3;
    for (int i = 0; i < nparts; i++) {
        snprintf(nb, sizeof nb, "%s%s", name, part[i].suffix);
        const struct safetensors_tensor *t = safetensors_find(st, nb);
        if (!t) return err_set(e, "%s: bitsandbytes part %s is missing", name, nb);
        int64_t n = 1;
        for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
        /* the packed codes are [numel/2, 1] (Params4bit's storage shape); the others 1-D */
        bool shape_ok = i == 0 ? t->ndim == 2 && t->shape[1] == 1 : t->ndim == 1;
        if (t->dtype != part[i].dt || n != part[i].n || !shape_ok)
            return err_set(e, "%s: %s has dtype %s and %lld values; a bitsandbytes NF4 [%lld, %lld] needs %s %s of %lld",
                           name, nb, dtype_name(t->dtype), (long long)n, (long long)o, (long long)k, dtype_name(part[i].dt),
                           i == 0 ? "[n/2, 1]" : "[n]", (long long)part[i].n);
        part[i].t = t;
    }
    (void)path;
    float *buf = malloc((size_t)(16 + 256 + nnested + (nested ? 0 : nblocks)) * sizeof(float));
    if (!buf) return err_set(e, "out of memory reading %s", name);
    *owned = buf;
    memcpy(buf, part[2].t->data, 16 * sizeof(float));
    for (int i = 0; i < 16; i++)
        if (memcmp(&buf[i], &QUANT_NF4[i], sizeof(float)))
            return err_set(e, "%s.quant_map: entry %d is %.9g, not bitsandbytes' NF4 code %.9g", name, i, (double)buf[i],
                           (double)QUANT_NF4[i]);
    q->codes = part[0].t->data;
    if (nested) {
        memcpy(buf + 16, part[4].t->data, 256 * sizeof(float));
        memcpy(buf + 272, part[3].t->data, (size_t)nnested * sizeof(float));
        q->absmax = part[1].t->data;
        q->nested_map = buf + 16;
        q->nested_absmax = buf + 272;
    } else { /* plain f32 absmax: the identity "nested" form (map[i] = i would need 256 blocks); expand here */
        memcpy(buf + 272, part[1].t->data, (size_t)nblocks * sizeof(float));
        q->absmax = NULL;
        q->nested_absmax = buf + 272;
    }
    return 0;
}

/* ---------------------------------------------------------------- loading */

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

/* bitsandbytes' companions of a quantized "<name>" (after the packed codes under the name itself) */
static const char *const bnb_suffix[] = {".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map",
                                         ".quant_state.bitsandbytes__nf4"};

/* A checkpoint tensor that is a bitsandbytes companion of a manifest tensor the folder holds as NF4. */
static bool is_bnb_part(const struct model_config *cfg, const char *name, const char **names, int n)
{
    if (cfg->quantization_config.quant_method != QUANT_METHOD_BNB) return false;
    for (size_t k = 0; k < sizeof bnb_suffix / sizeof bnb_suffix[0]; k++) {
        if (!ends_with(name, bnb_suffix[k])) continue;
        char base[160];
        snprintf(base, sizeof base, "%.*s", (int)(strlen(name) - strlen(bnb_suffix[k])), name);
        const char *b = base;
        if (bsearch(&b, names, (size_t)n, sizeof *names, cmp_name) && model_quant_dtype(cfg, 0, base, 2) == DTYPE_NF4)
            return true;
    }
    return false;
}

static int check_entry(const struct model_config *cfg, const struct safetensors *st, const struct manifest_entry *me,
                       struct err *e)
{
    const struct safetensors_tensor *t = safetensors_find(st, me->name);
    if (!t) return err_set(e, "checkpoint has no tensor %s (required by config.json)", me->name);
    const int qd = model_quant_dtype(cfg, 0, me->name, me->ndim);
    if (qd == DTYPE_NF4) {
        struct quant_bnb_nf4 q;
        float *owned = NULL;
        int rc = bnb_read(st, me->name, me->shape[0], me->shape[1], &q, &owned, e);
        free(owned);
        return rc ? err_prefix(e, "%s", safetensors_shard_path(st, t->shard)) : 0;
    }
    if (qd == DTYPE_Q8 || qd == DTYPE_Q4) {
        const size_t rb = dtype_row_bytes((enum dtype)qd, me->shape[1]);
        if (t->dtype != DTYPE_U8 || t->ndim != 2 || t->shape[0] != me->shape[0] || (size_t)t->shape[1] != rb)
            return err_set(e, "%s: tensor %s: config.json's quantization_config makes it %s [%lld, %lld], stored as U8 "
                              "[%lld, %zu]; the checkpoint has %s of another shape", safetensors_shard_path(st, t->shard),
                           me->name, dtype_name((enum dtype)qd), (long long)me->shape[0], (long long)me->shape[1],
                           (long long)me->shape[0], rb, dtype_name(t->dtype));
        return 0;
    }
    bool ok = t->ndim == me->ndim;
    for (int j = 0; ok && j < t->ndim; j++) ok = t->shape[j] == me->shape[j];
    if (!ok) {
        struct tensor a = {.ndim = t->ndim}, b = {.ndim = me->ndim};
        memcpy(a.shape, t->shape, sizeof a.shape);
        memcpy(b.shape, me->shape, sizeof b.shape);
        char sa[96], sb[96];
        return err_set(e, "%s: tensor %s has shape %s, config.json implies %s", safetensors_shard_path(st, t->shard),
                       me->name, tensor_shape_str(&a, sa, sizeof sa), tensor_shape_str(&b, sb, sizeof sb));
    }
    if (t->dtype != DTYPE_F16 && t->dtype != DTYPE_BF16 && t->dtype != DTYPE_F32)
        return err_set(e, "%s: tensor %s has dtype %s; weights must be F16, BF16 or F32%s",
                       safetensors_shard_path(st, t->shard), me->name, dtype_name(t->dtype),
                       t->dtype == DTYPE_U8 ? " (U8: a quantized weight, but config.json's quantization_config does not "
                                              "make this one quantized)" : "");
    return 0;
}

int model_check_checkpoint(const struct model_config *cfg, const struct safetensors *st, struct err *e)
{
    struct manifest_entry *man = NULL;
    int n = model_manifest(cfg, &man, e);
    if (n < 0) return -1;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) rc = check_entry(cfg, st, &man[i], e);
    /* and nothing else: every tensor of the checkpoint is one the manifest lists (or a bitsandbytes part) */
    const char **names = rc ? NULL : malloc((size_t)n * sizeof *names);
    if (!rc && !names) rc = err_set(e, "out of memory");
    if (!rc) {
        for (int i = 0; i < n; i++) names[i] = man[i].name;
        qsort(names, (size_t)n, sizeof *names, cmp_name);
        const int nt = safetensors_count(st);
        for (int i = 0; i < nt && !rc; i++) {
            const struct safetensors_tensor *t = safetensors_at(st, i);
            if (!bsearch(&t->name, names, (size_t)n, sizeof *names, cmp_name) && !is_bnb_part(cfg, t->name, names, n))
                rc = unexpected_tensor(cfg, st, t, e);
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

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const struct manifest_entry *)a)->name, ((const struct manifest_entry *)b)->name);
}

/* Checkpoint tensor `name` as a host tensor in the dtype it is kept in: quantized records (read, resolved
 * or quantized here) or m->wdtype (transpose: store [in,out] as [out,in]). *tmp is the buffer to own (NULL:
 * a view of the read-only map); *src is the stored tensor (for progress). */
static int host_tensor(struct model *m, const struct safetensors *st, const char *name, int transpose,
                       struct tensor *host, void **tmp, struct tensor *srcv, struct err *e)
{
    *tmp = NULL;
    struct tensor src;
    if (safetensors_get(st, name, &src, e)) return -1;
    src.name = NULL;
    *srcv = src;
    struct manifest_entry key, *me;
    snprintf(key.name, sizeof key.name, "%s", name);
    me = bsearch(&key, m->man, (size_t)m->n_man, sizeof key, cmp_entry);
    const int qd = me ? model_quant_dtype(&m->cfg, m->quant, name, me->ndim) : -1;
    if (qd >= 0) {
        CHECK(!transpose);
        m->n_quantized++;
        const int64_t o = me->shape[0], k = me->shape[1];
        *host = tensor_make((enum dtype)qd, device_cpu(), NULL, 2, o, k);
        if (!dtype_row_bytes((enum dtype)qd, k))
            return err_set(e, "%s: rows of %lld values cannot be %s (need a multiple of 16)", name, (long long)k,
                           dtype_name((enum dtype)qd));
        if (m->cfg.quantization_config.quant_method == QUANT_METHOD_MINICPMV) { /* our records, as stored */
            host->data = src.data;
            return 0;
        }
        if (!(*tmp = malloc(tensor_nbytes(host)))) return err_set(e, "out of memory quantizing %s", name);
        host->data = *tmp;
        const double t0 = time_now();
        if (qd == DTYPE_NF4) {
            struct quant_bnb_nf4 q;
            float *owned = NULL;
            if (bnb_read(st, name, o, k, &q, &owned, e)) { free(owned); return -1; }
            quant_bnb_to_rows(*tmp, &q);
            m->quant_seconds += time_now() - t0;
            free(owned);
            for (size_t i = 0; i < sizeof bnb_suffix / sizeof bnb_suffix[0]; i++) { /* the parts, for the progress */
                char pn[192];
                snprintf(pn, sizeof pn, "%s%s", name, bnb_suffix[i]);
                const struct safetensors_tensor *pt = safetensors_find(st, pn);
                if (pt) m->progress_done += pt->nbytes;
            }
            return 0;
        }
        /* --quant: the float weight quantized on every online CPU (quant.h) */
        const int rc = quant_quantize_tensor(*tmp, (enum dtype)qd, src.data, src.dtype, o, k, 0, name, e);
        m->quant_seconds += time_now() - t0;
        return rc;
    }
    const enum dtype dt = m->wdtype;
    *host = src;
    if (src.dtype == dt && !transpose) return 0;
    host->dtype = dt;
    if (!(*tmp = malloc(tensor_nbytes(host)))) return err_set(e, "out of memory converting %s", name);
    host->data = *tmp;
    if (transpose) {
        CHECK(src.ndim == 2);
        const int64_t r = src.shape[0], c = src.shape[1];
        host->shape[0] = c;
        host->shape[1] = r;
        float *row = malloc((size_t)r * sizeof(float));
        if (!row) return err_set(e, "out of memory");
        for (int64_t j = 0; j < c; j++) {
            for (int64_t i = 0; i < r; i++) {
                const char *p = (const char *)src.data + (size_t)(i * c + j) * dtype_size(src.dtype);
                convert_to_f32(&row[i], p, src.dtype, 1);
            }
            convert_from_f32((char *)*tmp + (size_t)(j * r) * dtype_size(dt), dt, row, r);
        }
        free(row);
    } else {
        op_copy(host, &src);
    }
    return 0;
}

/* Places checkpoint tensor `name` on logical device li (quantized, or in m->wdtype; transpose: store
 * [in,out] as [out,in]). */
static int place(struct model *m, const struct safetensors *st, const struct model_placement *pl, int li,
                 struct tensor *out, int transpose, struct err *e, const char *name)
{
    struct tensor host, src;
    void *tmp = NULL;
    if (host_tensor(m, st, name, transpose, &host, &tmp, &src, e)) { free(tmp); return -1; }
    const struct device dev = pl->devs[li];
    if (dev.kind == DEVICE_CPU) {
        if (tmp && track(m, dev, tmp, e)) { free(tmp); return -1; }
        *out = host; /* tmp, or a zero-copy view of the read-only map */
    } else {
        void *d = dev_alloc(dev, tensor_nbytes(&host), e);
        if (!d) { free(tmp); return err_prefix(e, "loading %s", name); }
        if (track(m, dev, d, e)) { dev_free(dev, d); free(tmp); return -1; }
        struct tensor dt_ = host;
        dt_.data = d;
        dt_.dev = dev;
        dt_.tiled = host.ndim == 2 && op_weight_tiled(dev, host.dtype, host.shape[0], host.shape[1]);
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
 * reads each with one GEMV and the model code has one layout. Each part comes as host_tensor gives it
 * (in the weight dtype, or quantized as row records: self-contained rows join as row blocks, so all
 * parts must share one dtype). Nothing is stored twice: on the CPU, parts that already lie back to back
 * in one shard in that dtype are viewed in place (gate|up of a checkpoint written in name order);
 * otherwise the joined tensor is a new buffer and each part's pages of the map are handed back once
 * copied (safetensors_release), so the process does not hold both. */
static int place_joined(struct model *m, const struct safetensors *st, const struct model_placement *pl, int li,
                        struct tensor *joined, struct tensor *const *parts, const char *const *names, int n,
                        struct err *e)
{
    enum { MAX_PARTS = 4 };
    CHECK(n >= 1 && n <= MAX_PARTS);
    const struct safetensors_tensor *ts[MAX_PARTS];
    struct tensor host[MAX_PARTS], src[MAX_PARTS];
    void *tmp[MAX_PARTS] = {0};
    int64_t rows = 0;
    int adjacent = 1, rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        rc = host_tensor(m, st, names[i], 0, &host[i], &tmp[i], &src[i], e);
        if (rc) break;
        ts[i] = safetensors_find(st, names[i]);
        if (host[i].ndim != host[0].ndim || host[i].dtype != host[0].dtype ||
            (host[i].ndim == 2 && host[i].shape[1] != host[0].shape[1]))
            rc = err_set(e, "%s and %s cannot be joined: %s vs %s, or different widths", names[0], names[i],
                         dtype_name(host[0].dtype), dtype_name(host[i].dtype));
        adjacent &= !tmp[i] && (i == 0 || (ts[i]->shard == ts[i - 1]->shard &&
                                           (const char *)ts[i]->data == (const char *)ts[i - 1]->data + ts[i - 1]->nbytes));
        rows += host[i].shape[0];
    }
    const struct device dev = pl->devs[li];
    const int in_place = !rc && adjacent && dev.kind == DEVICE_CPU;
    if (!rc) {
        *joined = host[0].ndim == 2 ? tensor_make(host[0].dtype, dev, NULL, 2, rows, host[0].shape[1])
                                    : tensor_make(host[0].dtype, dev, NULL, 1, rows);
        /* tiles when every part is whole tiles (each part is then converted on its own) */
        joined->tiled = host[0].ndim == 2;
        for (int i = 0; i < n; i++)
            joined->tiled &= op_weight_tiled(dev, host[0].dtype, host[i].shape[0], host[0].shape[1]);
        if (in_place) {
            joined->data = host[0].data; /* a zero-copy view of the read-only map, like place() */
        } else if (!(joined->data = dev_alloc(dev, tensor_nbytes(joined), e))) {
            rc = err_prefix(e, "loading %s", names[0]);
        } else if (track(m, dev, joined->data, e)) {
            dev_free(dev, joined->data);
            rc = -1;
        }
    }
    if (!rc) {
        joined->name = names[0];
        m->bytes_per_device[li] += tensor_nbytes(joined);
        int64_t r0 = 0;
        for (int i = 0; i < n; r0 += host[i].shape[0], i++) {
            struct tensor part = tensor_rows_view(joined, r0, host[i].shape[0]);
            part.name = names[i];
            if (!in_place) {
                op_copy(&part, &host[i]); /* host -> the device, a byte copy */
                free(tmp[i]);
                tmp[i] = NULL;
                safetensors_release(st, ts[i]);
            }
            if (parts) *parts[i] = part;
            progress_add(m, &src[i]);
        }
    }
    for (int i = 0; i < n; i++) free(tmp[i]);
    return rc;
}

/* Names must outlive the tensors (they are kept for messages): the manifest's storage holds them. */
int model_load(struct model *m, const struct model_config *cfg, const struct safetensors *st,
               const struct model_placement *pl, enum dtype wdtype, const struct progress *progress, struct err *e)
{
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    m->wdtype = wdtype;
    m->quant = pl->quant;
    if (progress) m->progress = *progress;
    if (model_quant_check(cfg, pl->quant, e)) return -1;
    for (int i = 0; i < safetensors_count(st); i++) {
        struct tensor t = safetensors_tensor_view(safetensors_at(st, i));
        m->progress_total += tensor_nbytes(&t);
    }
    if (model_check_checkpoint(cfg, st, e)) return -1;
    if ((m->n_man = model_manifest(cfg, &m->man, e)) < 0) return -1;
    qsort(m->man, (size_t)m->n_man, sizeof *m->man, cmp_entry);
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
    if (!rc && m->n_quantized && m->cfg.quantization_config.quant_method != QUANT_METHOD_MINICPMV)
        log_info("model: %d weights %s in %.2f s on %d threads", m->n_quantized,
                 m->quant ? (m->quant == DTYPE_Q8 ? "quantized to q8 (lm_head q8)" : "quantized to q4 (lm_head q8)")
                          : "resolved from bitsandbytes nf4", m->quant_seconds, quant_threads());
    free(m->man);
    m->man = NULL;
    m->n_man = 0;
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
    free(m->man);
    m->man = NULL;
    free(m->llm.layers);
    free(m->vpm.layers);
    m->allocs = NULL;
    m->llm.layers = NULL;
    m->vpm.layers = NULL;
    m->n_allocs = m->cap_allocs = 0;
}
