/* config.c: config.json / preprocessor_config.json -> structs (spec §1), validation, defaults, and
 * the writer used by the model generator.
 * Which fields are required: LlamaConfig has a default for everything, but its defaults are
 * Llama-2-7B values (rope_theta 10000, vocab 32000, bos 1, eos 2, rms_norm_eps 1e-6). Taking them
 * silently for a Llama-3 model would give a different model, so every field that sets a shape, the
 * positional encoding, the norm epsilon or the special ids is required here. Fields whose HF default
 * is right for this architecture or derived (num_key_value_heads, attention_bias, hidden_act,
 * tie_word_embeddings, rope_scaling) keep the HF default, as do every MiniCPMVConfig field (class
 * defaults: query_num 64, drop_vision_last_layer true, slice_config absent -> max_slice_nums 1) and
 * every vision field (vision_config absent -> MiniCPMVConfig.default_vision_config, i.e. SigLIP-so400m;
 * a field missing inside it -> Idefics2VisionConfig's default). */
#include "config.h"

#include <cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define CONFIG_MAX_BYTES ((size_t)1 << 20)
#define CONFIG_MAX_INT (1 << 24) /* bounds every size so products stay far inside int64 */

/* ---------------------------------------------------------------- typed field readers */

static const char *jtype(const cJSON *v)
{
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "an array";
    return "an object";
}

struct jctx {
    const char *path;
    const char *prefix; /* "" or "vision_config." */
    struct err *e;
};

/* Returns the item, NULL when absent (a JSON null counts as absent, as in HF's kwargs). */
static const cJSON *jget(const cJSON *o, const char *k)
{
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL;
    return cJSON_IsNull(v) ? NULL : v;
}

static int jmissing(const struct jctx *x, const char *k)
{
    return err_set(x->e, "%s: required field \"%s%s\" is missing", x->path, x->prefix, k);
}

static int jint(const struct jctx *x, const cJSON *o, const char *k, bool req, int def, int *out)
{
    const cJSON *v = jget(o, k);
    if (!v) {
        if (req) return jmissing(x, k);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v))
        return err_set(x->e, "%s: field \"%s%s\" must be an integer, not %s", x->path, x->prefix, k, jtype(v));
    double d = v->valuedouble;
    if (!(d >= -CONFIG_MAX_INT && d <= CONFIG_MAX_INT))
        return err_set(x->e, "%s: field \"%s%s\" = %g is out of range (|value| <= %d)", x->path, x->prefix, k, d,
                       CONFIG_MAX_INT);
    if (d != (double)(int)d)
        return err_set(x->e, "%s: field \"%s%s\" = %g must be an integer", x->path, x->prefix, k, d);
    *out = (int)d;
    return 0;
}

static int jnum(const struct jctx *x, const cJSON *o, const char *k, bool req, double def, double *out)
{
    const cJSON *v = jget(o, k);
    if (!v) {
        if (req) return jmissing(x, k);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v))
        return err_set(x->e, "%s: field \"%s%s\" must be a number, not %s", x->path, x->prefix, k, jtype(v));
    *out = v->valuedouble;
    return 0;
}

static int jflt(const struct jctx *x, const cJSON *o, const char *k, bool req, double def, float *out)
{
    double d = 0;
    if (jnum(x, o, k, req, def, &d)) return -1;
    *out = (float)d;
    return 0;
}

static int jbool(const struct jctx *x, const cJSON *o, const char *k, bool def, bool *out)
{
    const cJSON *v = jget(o, k);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v))
        return err_set(x->e, "%s: field \"%s%s\" must be true or false, not %s", x->path, x->prefix, k, jtype(v));
    *out = cJSON_IsTrue(v);
    return 0;
}

static int jstr(const struct jctx *x, const cJSON *o, const char *k, bool req, const char *def, char *out, size_t n)
{
    const cJSON *v = jget(o, k);
    const char *s = def;
    if (!v) {
        if (req) return jmissing(x, k);
    } else if (!cJSON_IsString(v)) {
        return err_set(x->e, "%s: field \"%s%s\" must be a string, not %s", x->path, x->prefix, k, jtype(v));
    } else {
        s = v->valuestring;
    }
    if (strlen(s) >= n)
        return err_set(x->e, "%s: field \"%s%s\" is longer than %zu characters", x->path, x->prefix, k, n - 1);
    memcpy(out, s, strlen(s) + 1);
    return 0;
}

/* ---------------------------------------------------------------- validation */

#define POS(val, field)                                                                             \
    do {                                                                                            \
        if ((val) <= 0) return err_set(e, "%s: field \"%s\" = %d must be positive", path, field, (int)(val)); \
    } while (0)

static int config_validate(struct model_config *c, const char *path, struct err *e)
{
    const struct vision_config *v = &c->vision_config;
    POS(c->hidden_size, "hidden_size");
    POS(c->num_hidden_layers, "num_hidden_layers");
    POS(c->num_attention_heads, "num_attention_heads");
    POS(c->num_key_value_heads, "num_key_value_heads");
    POS(c->intermediate_size, "intermediate_size");
    POS(c->vocab_size, "vocab_size");
    POS(c->max_position_embeddings, "max_position_embeddings");
    POS(c->query_num, "query_num");
    POS(c->image_size, "image_size");
    POS(c->patch_size, "patch_size");
    POS(c->slice_config.max_slice_nums, "slice_config.max_slice_nums");
    POS(c->slice_config.patch_size, "slice_config.patch_size");
    POS(c->slice_config.scale_resolution, "slice_config.scale_resolution");
    POS(v->hidden_size, "vision_config.hidden_size");
    POS(v->image_size, "vision_config.image_size");
    POS(v->intermediate_size, "vision_config.intermediate_size");
    POS(v->num_attention_heads, "vision_config.num_attention_heads");
    POS(v->num_hidden_layers, "vision_config.num_hidden_layers");
    POS(v->patch_size, "vision_config.patch_size");
    if (strcmp(c->model_type, "minicpmv"))
        return err_set(e, "%s: field \"model_type\" = \"%s\" is not \"minicpmv\"", path, c->model_type);
    if (c->hidden_size % c->num_attention_heads)
        return err_set(e, "%s: field \"hidden_size\" = %d is not divisible by num_attention_heads = %d", path,
                       c->hidden_size, c->num_attention_heads);
    if (c->num_attention_heads % c->num_key_value_heads)
        return err_set(e, "%s: field \"num_attention_heads\" = %d is not divisible by num_key_value_heads = %d", path,
                       c->num_attention_heads, c->num_key_value_heads);
    c->head_dim = c->hidden_size / c->num_attention_heads;
    if (c->head_dim % 2)
        return err_set(e, "%s: field \"hidden_size\": head_dim %d must be even for RoPE", path, c->head_dim);
    /* The resampler uses hidden_size // 128 heads (spec §1.4); nn.MultiheadAttention needs them to divide it. */
    if (c->hidden_size < 128 || c->hidden_size % (c->hidden_size / 128))
        return err_set(e, "%s: field \"hidden_size\" = %d: the resampler needs hidden_size >= 128 and divisible by "
                       "hidden_size/128", path, c->hidden_size);
    if (!(c->rope_theta > 0) || c->rope_theta > 1e30)
        return err_set(e, "%s: field \"rope_theta\" = %g must be a positive number", path, c->rope_theta);
    if (!(c->rms_norm_eps > 0) || c->rms_norm_eps > 1)
        return err_set(e, "%s: field \"rms_norm_eps\" = %g must be in (0, 1]", path, (double)c->rms_norm_eps);
    if (c->attention_bias) return err_set(e, "%s: field \"attention_bias\" = true is not supported", path);
    if (strcmp(c->hidden_act, "silu"))
        return err_set(e, "%s: field \"hidden_act\" = \"%s\" is not supported (only \"silu\")", path, c->hidden_act);
    if (c->bos_token_id < 0 || c->bos_token_id >= c->vocab_size)
        return err_set(e, "%s: field \"bos_token_id\" = %d is outside the vocabulary [0, %d)", path, c->bos_token_id,
                       c->vocab_size);
    if (c->eos_token_id < 0 || c->eos_token_id >= c->vocab_size)
        return err_set(e, "%s: field \"eos_token_id\" = %d is outside the vocabulary [0, %d)", path, c->eos_token_id,
                       c->vocab_size);
    if (strcmp(c->torch_dtype, "float16") && strcmp(c->torch_dtype, "bfloat16") && strcmp(c->torch_dtype, "float32"))
        return err_set(e, "%s: field \"torch_dtype\" = \"%s\" is not float16, bfloat16 or float32", path,
                       c->torch_dtype);
    if (strcmp(v->hidden_act, "gelu_pytorch_tanh"))
        return err_set(e, "%s: field \"vision_config.hidden_act\" = \"%s\" is not supported "
                       "(only \"gelu_pytorch_tanh\")", path, v->hidden_act);
    if (v->image_size % v->patch_size)
        return err_set(e, "%s: field \"vision_config.image_size\" = %d is not divisible by patch_size = %d", path,
                       v->image_size, v->patch_size);
    if (v->hidden_size % v->num_attention_heads)
        return err_set(e, "%s: field \"vision_config.hidden_size\" = %d is not divisible by num_attention_heads = %d",
                       path, v->hidden_size, v->num_attention_heads);
    if (v->num_channels != 3)
        return err_set(e, "%s: field \"vision_config.num_channels\" = %d is not supported (only 3)", path,
                       v->num_channels);
    if (!(v->layer_norm_eps > 0) || v->layer_norm_eps > 1)
        return err_set(e, "%s: field \"vision_config.layer_norm_eps\" = %g must be in (0, 1]", path,
                       (double)v->layer_norm_eps);
    /* Pixels are cut into slice_config.patch_size squares and fed to a conv of vision patch_size. */
    if (c->slice_config.patch_size != v->patch_size)
        return err_set(e, "%s: field \"slice_config.patch_size\" = %d differs from vision_config.patch_size = %d", path,
                       c->slice_config.patch_size, v->patch_size);
    if (c->patch_size != v->patch_size)
        return err_set(e, "%s: field \"patch_size\" = %d differs from vision_config.patch_size = %d", path,
                       c->patch_size, v->patch_size);
    c->vision_layers_used = v->num_hidden_layers - (c->drop_vision_last_layer ? 1 : 0);
    if (c->vision_layers_used < 1)
        return err_set(e, "%s: field \"drop_vision_last_layer\" = true leaves no vision layer "
                       "(vision_config.num_hidden_layers = %d)", path, v->num_hidden_layers);
    return 0;
}

/* ---------------------------------------------------------------- parsing */

static int parse_vision(struct vision_config *v, const cJSON *vo, const char *path, struct err *e)
{
    struct jctx x = {path, "vision_config.", e};
    if (vo && !cJSON_IsObject(vo))
        return err_set(e, "%s: field \"vision_config\" must be an object, not %s", path, jtype(vo));
    if (!vo) { /* MiniCPMVConfig.default_vision_config (SigLIP-so400m-14-980) */
        *v = (struct vision_config){1152, 980, 4304, 16, 27, 14, 3, 1e-6f, "gelu_pytorch_tanh", "idefics2"};
        return 0;
    }
    /* Idefics2VisionConfig.__init__ defaults for fields the object leaves out */
    if (jint(&x, vo, "hidden_size", false, 768, &v->hidden_size) ||
        jint(&x, vo, "image_size", false, 224, &v->image_size) ||
        jint(&x, vo, "intermediate_size", false, 3072, &v->intermediate_size) ||
        jint(&x, vo, "num_attention_heads", false, 12, &v->num_attention_heads) ||
        jint(&x, vo, "num_hidden_layers", false, 12, &v->num_hidden_layers) ||
        jint(&x, vo, "patch_size", false, 32, &v->patch_size) ||
        jint(&x, vo, "num_channels", false, 3, &v->num_channels) ||
        jflt(&x, vo, "layer_norm_eps", false, 1e-6, &v->layer_norm_eps) ||
        jstr(&x, vo, "hidden_act", false, "gelu_pytorch_tanh", v->hidden_act, sizeof v->hidden_act) ||
        jstr(&x, vo, "model_type", false, "idefics2", v->model_type, sizeof v->model_type))
        return -1;
    return 0;
}

/* quantization_config: transformers' BitsAndBytesConfig fields for the official int4 folder, or ours */
static int parse_quant(struct quant_config *q, const cJSON *o, const char *path, struct err *e)
{
    struct jctx x = {path, "quantization_config.", e};
    memset(q, 0, sizeof *q);
    if (!o) return 0;
    if (!cJSON_IsObject(o))
        return err_set(e, "%s: field \"quantization_config\" must be an object, not %s", path, jtype(o));
    char method[32];
    if (jstr(&x, o, "quant_method", true, "", method, sizeof method)) return -1;
    if (!strcmp(method, "bitsandbytes")) {
        bool in4 = false, in8 = false;
        char qt[16];
        if (jbool(&x, o, "load_in_4bit", false, &in4) || jbool(&x, o, "load_in_8bit", false, &in8) ||
            jstr(&x, o, "bnb_4bit_quant_type", false, "fp4", qt, sizeof qt) ||
            jbool(&x, o, "bnb_4bit_use_double_quant", false, &q->bnb_4bit_use_double_quant) ||
            jstr(&x, o, "bnb_4bit_compute_dtype", false, "float32", q->bnb_4bit_compute_dtype,
                 sizeof q->bnb_4bit_compute_dtype))
            return -1;
        if (in8 || !in4)
            return err_set(e, "%s: quantization_config: only bitsandbytes 4-bit (load_in_4bit) is supported%s", path,
                           in8 ? ", not 8-bit (load_in_8bit)" : "");
        if (strcmp(qt, "nf4"))
            return err_set(e, "%s: field \"quantization_config.bnb_4bit_quant_type\" = \"%s\" is not supported (only "
                              "\"nf4\")", path, qt);
        const cJSON *sk = jget(o, "llm_int8_skip_modules");
        if (!sk) {
            q->n_skip = 1; /* transformers' default keeps the output head */
            snprintf(q->llm_int8_skip_modules[0], sizeof q->llm_int8_skip_modules[0], "lm_head");
        } else {
            if (!cJSON_IsArray(sk))
                return err_set(e, "%s: field \"quantization_config.llm_int8_skip_modules\" must be a list of names", path);
            for (const cJSON *it = sk->child; it; it = it->next) {
                if (!cJSON_IsString(it) || !it->valuestring[0] ||
                    strlen(it->valuestring) >= sizeof q->llm_int8_skip_modules[0])
                    return err_set(e, "%s: field \"quantization_config.llm_int8_skip_modules\" holds a non-string, empty "
                                      "or over-long entry", path);
                if (q->n_skip == QUANT_MAX_SKIP)
                    return err_set(e, "%s: field \"quantization_config.llm_int8_skip_modules\" has more than %d entries",
                                   path, QUANT_MAX_SKIP);
                snprintf(q->llm_int8_skip_modules[q->n_skip++], sizeof q->llm_int8_skip_modules[0], "%s",
                         it->valuestring);
            }
        }
        q->quant_method = QUANT_METHOD_BNB;
        return 0;
    }
    if (!strcmp(method, "minicpmv")) {
        int gs = 0;
        if (jstr(&x, o, "format", true, "", q->format, sizeof q->format) ||
            jstr(&x, o, "lm_head", false, "f16", q->lm_head, sizeof q->lm_head) ||
            jint(&x, o, "group_size", false, 64, &gs))
            return -1;
        if (strcmp(q->format, "q8") && strcmp(q->format, "q4"))
            return err_set(e, "%s: field \"quantization_config.format\" = \"%s\" is not q8 or q4", path, q->format);
        if (strcmp(q->lm_head, "q8") && strcmp(q->lm_head, "q4") && strcmp(q->lm_head, "f16"))
            return err_set(e, "%s: field \"quantization_config.lm_head\" = \"%s\" is not q8, q4 or f16", path,
                           q->lm_head);
        if (gs != 64)
            return err_set(e, "%s: field \"quantization_config.group_size\" = %d is not supported (q4 groups are 64 "
                              "values, 16 or 32 where a row is not a multiple of 64)", path, gs);
        q->quant_method = QUANT_METHOD_MINICPMV;
        return 0;
    }
    return err_set(e, "%s: field \"quantization_config.quant_method\" = \"%s\" is not supported (bitsandbytes nf4, "
                      "or minicpmv q8/q4)", path, method);
}

static int parse_root(struct model_config *c, const cJSON *r, const char *path, struct err *e)
{
    struct jctx x = {path, "", e};
    const cJSON *ver = jget(r, "version");
    if (cJSON_IsNumber(ver)) snprintf(c->version, sizeof c->version, "%g", ver->valuedouble);
    else if (jstr(&x, r, "version", false, "", c->version, sizeof c->version)) return -1;
    /* eos_token_id may be a list in newer Llama configs; the first id is the config's EOS. */
    const cJSON *eos = jget(r, "eos_token_id");
    cJSON *eos_first = NULL;
    if (cJSON_IsArray(eos)) {
        if (!cJSON_GetArraySize(eos)) return err_set(e, "%s: field \"eos_token_id\" is an empty list", path);
        eos_first = cJSON_CreateObject();
        if (!eos_first) return err_set(e, "out of memory");
        cJSON_AddItemReferenceToObject(eos_first, "eos_token_id", eos->child);
    }
    int rc = jstr(&x, r, "model_type", true, "", c->model_type, sizeof c->model_type) ||
             jint(&x, r, "hidden_size", true, 0, &c->hidden_size) ||
             jint(&x, r, "num_hidden_layers", true, 0, &c->num_hidden_layers) ||
             jint(&x, r, "num_attention_heads", true, 0, &c->num_attention_heads) ||
             jint(&x, r, "intermediate_size", true, 0, &c->intermediate_size) ||
             jint(&x, r, "vocab_size", true, 0, &c->vocab_size) ||
             jint(&x, r, "max_position_embeddings", true, 0, &c->max_position_embeddings) ||
             jnum(&x, r, "rope_theta", true, 0, &c->rope_theta) ||
             jflt(&x, r, "rms_norm_eps", true, 0, &c->rms_norm_eps) ||
             jint(&x, r, "bos_token_id", true, 0, &c->bos_token_id) ||
             jint(&x, eos_first ? eos_first : r, "eos_token_id", true, 0, &c->eos_token_id);
    cJSON_Delete(eos_first);
    if (rc) return -1;
    if (jint(&x, r, "num_key_value_heads", false, c->num_attention_heads, &c->num_key_value_heads) ||
        jbool(&x, r, "attention_bias", false, &c->attention_bias) ||
        jbool(&x, r, "tie_word_embeddings", false, &c->tie_word_embeddings) ||
        jstr(&x, r, "hidden_act", false, "silu", c->hidden_act, sizeof c->hidden_act) ||
        jstr(&x, r, "torch_dtype", false, "float16", c->torch_dtype, sizeof c->torch_dtype) ||
        jint(&x, r, "query_num", false, 64, &c->query_num) ||
        jint(&x, r, "image_size", false, 448, &c->image_size) ||
        jint(&x, r, "patch_size", false, 14, &c->patch_size) ||
        jbool(&x, r, "drop_vision_last_layer", true, &c->drop_vision_last_layer) ||
        jbool(&x, r, "batch_vision_input", true, &c->batch_vision_input))
        return -1;
    if (jget(r, "rope_scaling"))
        return err_set(e, "%s: field \"rope_scaling\" is set; RoPE scaling is not supported (want null)", path);
    const cJSON *so = jget(r, "slice_config");
    if (so && !cJSON_IsObject(so))
        return err_set(e, "%s: field \"slice_config\" must be an object, not %s", path, jtype(so));
    /* MiniCPMVSliceConfig defaults; an absent slice_config means MiniCPMVSliceConfig(max_slice_nums=1) */
    struct jctx xs = {path, "slice_config.", e};
    if (jint(&xs, so, "max_slice_nums", false, so ? 9 : 1, &c->slice_config.max_slice_nums) ||
        jint(&xs, so, "patch_size", false, 14, &c->slice_config.patch_size) ||
        jint(&xs, so, "scale_resolution", false, 448, &c->slice_config.scale_resolution))
        return -1;
    if (parse_vision(&c->vision_config, jget(r, "vision_config"), path, e)) return -1;
    return parse_quant(&c->quantization_config, jget(r, "quantization_config"), path, e);
}

int config_parse(struct model_config *c, const char *json, const char *path, struct err *e)
{
    memset(c, 0, sizeof *c);
    const char *end = NULL;
    cJSON *r = cJSON_ParseWithOpts(json, &end, 0);
    if (!r) return err_set(e, "%s: not valid JSON (error near byte %ld)", path, end ? (long)(end - json) : -1L);
    int rc;
    if (!cJSON_IsObject(r)) rc = err_set(e, "%s: top level is %s, not an object", path, jtype(r));
    else rc = parse_root(c, r, path, e) || config_validate(c, path, e) ? -1 : 0;
    cJSON_Delete(r);
    return rc;
}

int config_load(struct model_config *c, const char *dir, struct err *e)
{
    char path[4096], *text = NULL;
    if (path_join(path, sizeof path, dir, "config.json", e) || read_file(path, CONFIG_MAX_BYTES, &text, NULL, e))
        return -1;
    int rc = config_parse(c, text, path, e);
    free(text);
    return rc;
}

int preprocessor_config_load(struct preprocessor_config *p, const struct model_config *c, const char *dir,
                             struct err *e)
{
    /* Defaults: what the model config implies (the processor would otherwise use its own class
     * defaults, e.g. image_feature_size 64, which do not match a 96-query resampler). */
    p->max_slice_nums = c->slice_config.max_slice_nums;
    p->scale_resolution = c->slice_config.scale_resolution;
    p->patch_size = c->slice_config.patch_size;
    p->image_feature_size = c->query_num;
    for (int i = 0; i < 3; i++) p->norm_mean[i] = p->norm_std[i] = 0.5f;
    char path[4096], *text = NULL;
    if (path_join(path, sizeof path, dir, "preprocessor_config.json", e)) return -1;
    if (access(path, F_OK) != 0) return 0;
    if (read_file(path, CONFIG_MAX_BYTES, &text, NULL, e)) return -1;
    cJSON *r = cJSON_Parse(text);
    free(text);
    struct jctx x = {path, "", e};
    int rc = -1;
    if (!cJSON_IsObject(r)) {
        err_set(e, "%s: not a valid JSON object", path);
        goto out;
    }
    if (jint(&x, r, "max_slice_nums", false, p->max_slice_nums, &p->max_slice_nums) ||
        jint(&x, r, "scale_resolution", false, p->scale_resolution, &p->scale_resolution) ||
        jint(&x, r, "patch_size", false, p->patch_size, &p->patch_size) ||
        jint(&x, r, "image_feature_size", false, p->image_feature_size, &p->image_feature_size))
        goto out;
    static const char *arr[2] = {"norm_mean", "norm_std"};
    for (int k = 0; k < 2; k++) {
        const cJSON *a = jget(r, arr[k]);
        float *dst = k ? p->norm_std : p->norm_mean;
        if (!a) continue;
        if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != 3) {
            err_set(e, "%s: field \"%s\" must be an array of 3 numbers", path, arr[k]);
            goto out;
        }
        int i = 0;
        for (const cJSON *v = a->child; v; v = v->next, i++) {
            if (!cJSON_IsNumber(v) || (k == 1 && !(v->valuedouble > 0))) {
                err_set(e, "%s: field \"%s\"[%d] must be a %snumber", path, arr[k], i, k ? "positive " : "");
                goto out;
            }
            dst[i] = (float)v->valuedouble;
        }
    }
    if (p->max_slice_nums <= 0 || p->scale_resolution <= 0 || p->patch_size <= 0) {
        err_set(e, "%s: fields \"max_slice_nums\", \"scale_resolution\", \"patch_size\" must be positive", path);
        goto out;
    }
    if (p->patch_size != c->vision_config.patch_size) {
        err_set(e, "%s: field \"patch_size\" = %d differs from the vision tower's %d", path, p->patch_size,
                c->vision_config.patch_size);
        goto out;
    }
    /* Each image piece is written as image_feature_size placeholders that the resampler's query_num
     * outputs overwrite; they must agree. */
    if (p->image_feature_size != c->query_num) {
        err_set(e, "%s: field \"image_feature_size\" = %d differs from config query_num = %d", path,
                p->image_feature_size, c->query_num);
        goto out;
    }
    rc = 0;
out:
    cJSON_Delete(r);
    return rc;
}

/* ---------------------------------------------------------------- defaults */

static void common_defaults(struct model_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->model_type, sizeof c->model_type, "minicpmv");
    snprintf(c->version, sizeof c->version, "2.5");
    snprintf(c->hidden_act, sizeof c->hidden_act, "silu");
    snprintf(c->torch_dtype, sizeof c->torch_dtype, "float16");
    c->vocab_size = 128256;
    c->max_position_embeddings = 8192;
    c->rope_theta = 500000.0;
    c->rms_norm_eps = 1e-5f;
    c->bos_token_id = 128000;
    c->eos_token_id = 128001;
    c->query_num = 96;
    c->image_size = 448;
    c->patch_size = 14;
    c->drop_vision_last_layer = false;
    c->batch_vision_input = true;
    c->slice_config = (struct slice_config){9, 14, 448};
    c->vision_config = (struct vision_config){1152, 980, 4304, 16, 27, 14, 3, 1e-6f, "gelu_pytorch_tanh", "idefics2"};
}

static void derive(struct model_config *c)
{
    struct err e;
    CHECKF(config_validate(c, "built-in config", &e) == 0, "%s", e.msg);
}

void config_default_full(struct model_config *c)
{
    common_defaults(c);
    c->hidden_size = 4096;
    c->num_hidden_layers = 32;
    c->num_attention_heads = 32;
    c->num_key_value_heads = 8;
    c->intermediate_size = 14336;
    derive(c);
}

void config_default_tiny(struct model_config *c)
{
    common_defaults(c);
    c->hidden_size = 256;
    c->num_hidden_layers = 3;
    c->num_attention_heads = 8;
    c->num_key_value_heads = 2;
    c->intermediate_size = 512;
    c->vision_config.hidden_size = 64;
    c->vision_config.num_attention_heads = 4;
    c->vision_config.intermediate_size = 128;
    c->vision_config.num_hidden_layers = 3;
    derive(c);
}

/* ---------------------------------------------------------------- writing */

/* Shortest decimal that reads back to the same value, formatted the way Python's repr() does, so
 * the written file looks like HF's: fixed notation with a ".0" in [1e-4, 1e16) ("500000.0", "0.02"),
 * else exponent notation ("1e-05"). as_float: round-trip through float instead of double. */
static void fmt_repr(char *b, size_t n, double d, bool as_float)
{
    double a = d < 0 ? -d : d;
    if (a == 0 || (a >= 1e-4 && a < 1e16)) {
        for (int p = 1; p <= 40; p++) {
            snprintf(b, n, "%.*f", p, d);
            if (as_float ? strtof(b, NULL) == (float)d : strtod(b, NULL) == d) break;
        }
        /* drop trailing zeros but keep one decimal */
        size_t l = strlen(b);
        while (l > 2 && b[l - 1] == '0' && b[l - 2] != '.') b[--l] = 0;
        return;
    }
    for (int p = 1; p <= 17; p++) {
        snprintf(b, n, "%.*e", p - 1, d);
        if (as_float ? strtof(b, NULL) == (float)d : strtod(b, NULL) == d) break;
    }
}

static void add_float(cJSON *o, const char *k, float f)
{
    char b[64];
    fmt_repr(b, sizeof b, (double)f, true);
    cJSON_AddRawToObject(o, k, b);
}

static void add_double(cJSON *o, const char *k, double d)
{
    char b[64];
    fmt_repr(b, sizeof b, d, false);
    cJSON_AddRawToObject(o, k, b);
}

char *config_to_json(const struct model_config *c)
{
    const struct vision_config *v = &c->vision_config;
    cJSON *r = cJSON_CreateObject();
    if (!r) return NULL;
    cJSON_AddStringToObject(r, "_name_or_path", "openbmb/MiniCPM-Llama3-V-2_5");
    if (c->version[0]) cJSON_AddStringToObject(r, "version", c->version);
    cJSON *arch = cJSON_AddArrayToObject(r, "architectures");
    if (arch) cJSON_AddItemToArray(arch, cJSON_CreateString("MiniCPMV"));
    cJSON *am = cJSON_AddObjectToObject(r, "auto_map");
    if (am) {
        cJSON_AddStringToObject(am, "AutoConfig", "configuration_minicpm.MiniCPMVConfig");
        cJSON_AddStringToObject(am, "AutoModel", "modeling_minicpmv.MiniCPMV");
        cJSON_AddStringToObject(am, "AutoModelForCausalLM", "modeling_minicpmv.MiniCPMV");
    }
    cJSON_AddStringToObject(r, "model_type", c->model_type);
    cJSON_AddBoolToObject(r, "attention_bias", c->attention_bias);
    add_float(r, "attention_dropout", 0.0f);
    cJSON_AddBoolToObject(r, "batch_vision_input", c->batch_vision_input);
    cJSON_AddNumberToObject(r, "bos_token_id", c->bos_token_id);
    cJSON_AddBoolToObject(r, "drop_vision_last_layer", c->drop_vision_last_layer);
    cJSON_AddNumberToObject(r, "eos_token_id", c->eos_token_id);
    cJSON_AddStringToObject(r, "hidden_act", c->hidden_act);
    cJSON_AddNumberToObject(r, "hidden_size", c->hidden_size);
    cJSON_AddNumberToObject(r, "image_size", c->image_size);
    add_float(r, "initializer_range", 0.02f);
    cJSON_AddNumberToObject(r, "intermediate_size", c->intermediate_size);
    cJSON_AddNumberToObject(r, "max_position_embeddings", c->max_position_embeddings);
    cJSON_AddBoolToObject(r, "mm_use_im_start_end", 1);
    cJSON_AddNumberToObject(r, "num_attention_heads", c->num_attention_heads);
    cJSON_AddNumberToObject(r, "num_hidden_layers", c->num_hidden_layers);
    cJSON_AddNumberToObject(r, "num_key_value_heads", c->num_key_value_heads);
    cJSON_AddNumberToObject(r, "patch_size", c->patch_size);
    cJSON_AddNumberToObject(r, "pretraining_tp", 1);
    cJSON_AddNumberToObject(r, "query_num", c->query_num);
    add_float(r, "rms_norm_eps", c->rms_norm_eps);
    cJSON_AddNullToObject(r, "rope_scaling");
    add_double(r, "rope_theta", c->rope_theta);
    cJSON *sc = cJSON_AddObjectToObject(r, "slice_config");
    if (sc) {
        cJSON_AddNumberToObject(sc, "max_slice_nums", c->slice_config.max_slice_nums);
        cJSON_AddStringToObject(sc, "model_type", "minicpmv");
        cJSON_AddNumberToObject(sc, "patch_size", c->slice_config.patch_size);
        cJSON_AddNumberToObject(sc, "scale_resolution", c->slice_config.scale_resolution);
    }
    cJSON_AddBoolToObject(r, "slice_mode", 1);
    cJSON_AddBoolToObject(r, "tie_word_embeddings", c->tie_word_embeddings);
    cJSON_AddStringToObject(r, "torch_dtype", c->torch_dtype);
    cJSON_AddStringToObject(r, "transformers_version", "4.40.0");
    cJSON_AddBoolToObject(r, "use_cache", 0);
    cJSON *vc = cJSON_AddObjectToObject(r, "vision_config");
    if (vc) {
        cJSON_AddStringToObject(vc, "hidden_act", v->hidden_act);
        cJSON_AddNumberToObject(vc, "hidden_size", v->hidden_size);
        cJSON_AddNumberToObject(vc, "image_size", v->image_size);
        cJSON_AddNumberToObject(vc, "intermediate_size", v->intermediate_size);
        add_float(vc, "layer_norm_eps", v->layer_norm_eps);
        cJSON_AddStringToObject(vc, "model_type", v->model_type);
        cJSON_AddNumberToObject(vc, "num_attention_heads", v->num_attention_heads);
        cJSON_AddNumberToObject(vc, "num_channels", v->num_channels);
        cJSON_AddNumberToObject(vc, "num_hidden_layers", v->num_hidden_layers);
        cJSON_AddNumberToObject(vc, "patch_size", v->patch_size);
    }
    cJSON_AddNumberToObject(r, "vocab_size", c->vocab_size);
    const struct quant_config *q = &c->quantization_config;
    if (q->quant_method != QUANT_METHOD_NONE) {
        cJSON *qc = cJSON_AddObjectToObject(r, "quantization_config");
        if (qc && q->quant_method == QUANT_METHOD_BNB) { /* as transformers' BitsAndBytesConfig.to_dict writes it */
            cJSON_AddStringToObject(qc, "bnb_4bit_compute_dtype", q->bnb_4bit_compute_dtype);
            cJSON_AddStringToObject(qc, "bnb_4bit_quant_type", "nf4");
            cJSON_AddBoolToObject(qc, "bnb_4bit_use_double_quant", q->bnb_4bit_use_double_quant);
            cJSON_AddBoolToObject(qc, "llm_int8_enable_fp32_cpu_offload", 0);
            cJSON_AddBoolToObject(qc, "llm_int8_has_fp16_weight", 0);
            cJSON *sk = cJSON_AddArrayToObject(qc, "llm_int8_skip_modules");
            for (int i = 0; sk && i < q->n_skip; i++)
                cJSON_AddItemToArray(sk, cJSON_CreateString(q->llm_int8_skip_modules[i]));
            add_float(qc, "llm_int8_threshold", 6.0f);
            cJSON_AddBoolToObject(qc, "load_in_4bit", 1);
            cJSON_AddBoolToObject(qc, "load_in_8bit", 0);
            cJSON_AddStringToObject(qc, "quant_method", "bitsandbytes");
        } else if (qc) {
            cJSON_AddStringToObject(qc, "quant_method", "minicpmv");
            cJSON_AddStringToObject(qc, "format", q->format);
            cJSON_AddNumberToObject(qc, "group_size", 64);
            cJSON_AddStringToObject(qc, "lm_head", q->lm_head);
        }
    }
    char *s = cJSON_Print(r);
    cJSON_Delete(r);
    return s;
}
