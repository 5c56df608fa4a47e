/* test_config.c: config.json parsing against the published file (spec §1.1), HF defaults, every
 * required field missing / mistyped / invalid giving an error that names it, the writer's round trip,
 * and preprocessor_config.json (spec §1.3). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cJSON.h>

#include "config.h"
#include "t.h"

/* The published config.json of openbmb/MiniCPM-Llama3-V-2_5 (spec §1.1), typed in by hand. */
static const char *published =
    "{\"_name_or_path\": \"openbmb/MiniCPM-Llama3-V-2_5\", \"architectures\": [\"MiniCPMV\"],"
    " \"attention_bias\": false, \"attention_dropout\": 0.0,"
    " \"auto_map\": {\"AutoConfig\": \"configuration_minicpm.MiniCPMVConfig\","
    "  \"AutoModel\": \"modeling_minicpmv.MiniCPMV\", \"AutoModelForCausalLM\": \"modeling_minicpmv.MiniCPMV\"},"
    " \"batch_vision_input\": true, \"bos_token_id\": 128000, \"drop_vision_last_layer\": false,"
    " \"eos_token_id\": 128001, \"hidden_act\": \"silu\", \"hidden_size\": 4096, \"image_size\": 448,"
    " \"initializer_range\": 0.02, \"intermediate_size\": 14336, \"max_position_embeddings\": 8192,"
    " \"mm_use_im_start_end\": true, \"model_type\": \"minicpmv\", \"num_attention_heads\": 32,"
    " \"num_hidden_layers\": 32, \"num_key_value_heads\": 8, \"patch_size\": 14, \"pretraining_tp\": 1,"
    " \"query_num\": 96, \"rms_norm_eps\": 1e-05, \"rope_scaling\": null, \"rope_theta\": 500000.0,"
    " \"slice_config\": {\"max_slice_nums\": 9, \"model_type\": \"minicpmv\", \"patch_size\": 14},"
    " \"slice_mode\": true, \"tie_word_embeddings\": false, \"torch_dtype\": \"float16\","
    " \"transformers_version\": \"4.40.0\", \"use_cache\": false,"
    " \"vision_config\": {\"hidden_size\": 1152, \"image_size\": 980, \"intermediate_size\": 4304,"
    "  \"model_type\": \"idefics2\", \"num_attention_heads\": 16, \"num_hidden_layers\": 27, \"patch_size\": 14},"
    " \"vocab_size\": 128256, \"version\": \"2.5\"}";

static void check_published_values(const struct model_config *c)
{
    T_EQ_STR(c->model_type, "minicpmv");
    T_EQ_STR(c->version, "2.5");
    T_EQ_INT(c->hidden_size, 4096);
    T_EQ_INT(c->num_hidden_layers, 32);
    T_EQ_INT(c->num_attention_heads, 32);
    T_EQ_INT(c->num_key_value_heads, 8);
    T_EQ_INT(c->intermediate_size, 14336);
    T_EQ_INT(c->vocab_size, 128256);
    T_EQ_INT(c->max_position_embeddings, 8192);
    T_NEAR(c->rope_theta, 500000.0, 0);
    T_NEAR(c->rms_norm_eps, 1e-5, 1e-12);
    T_ASSERT(!c->attention_bias && !c->tie_word_embeddings);
    T_EQ_INT(c->bos_token_id, 128000);
    T_EQ_INT(c->eos_token_id, 128001);
    T_EQ_STR(c->hidden_act, "silu");
    T_EQ_STR(c->torch_dtype, "float16");
    T_EQ_INT(c->query_num, 96);
    T_EQ_INT(c->image_size, 448);
    T_EQ_INT(c->patch_size, 14);
    T_ASSERT(!c->drop_vision_last_layer && c->batch_vision_input);
    T_EQ_INT(c->slice_config.max_slice_nums, 9);
    T_EQ_INT(c->slice_config.patch_size, 14);
    T_EQ_INT(c->slice_config.scale_resolution, 448); /* absent: class default */
    const struct vision_config *v = &c->vision_config;
    T_EQ_INT(v->hidden_size, 1152);
    T_EQ_INT(v->image_size, 980);
    T_EQ_INT(v->intermediate_size, 4304);
    T_EQ_INT(v->num_attention_heads, 16);
    T_EQ_INT(v->num_hidden_layers, 27);
    T_EQ_INT(v->patch_size, 14);
    T_EQ_INT(v->num_channels, 3);                  /* Idefics2VisionConfig defaults */
    T_NEAR(v->layer_norm_eps, 1e-6, 1e-13);
    T_EQ_STR(v->hidden_act, "gelu_pytorch_tanh");
    T_EQ_STR(v->model_type, "idefics2");
    T_EQ_INT(c->head_dim, 128);
    T_EQ_INT(c->vision_layers_used, 27);
}

static void test_published(void)
{
    struct model_config c;
    struct err e = {{0}};
    T_EQ_INT(config_parse(&c, published, "config.json", &e), 0);
    if (e.msg[0]) fprintf(stderr, "  %s\n", e.msg);
    check_published_values(&c);
}

static void test_default_full_and_round_trip(void)
{
    struct model_config c, r;
    config_default_full(&c);
    check_published_values(&c);
    char *j = config_to_json(&c);
    T_ASSERT(j != NULL);
    if (!j) return;
    /* field names as HF writes them */
    static const char *keys[] = {"\"architectures\"", "\"MiniCPMV\"", "\"auto_map\"", "\"AutoModelForCausalLM\"",
                                 "\"model_type\"", "\"version\"", "\"slice_config\"", "\"vision_config\"",
                                 "\"rope_theta\":\t500000.0", "\"rms_norm_eps\":\t1e-05", "\"rope_scaling\":\tnull",
                                 "\"layer_norm_eps\":\t1e-06", "\"transformers_version\""};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) T_CONTAINS(j, keys[i]);
    struct err e = {{0}};
    T_EQ_INT(config_parse(&r, j, "written", &e), 0);
    check_published_values(&r);
    T_ASSERT(memcmp(&c, &r, sizeof c) == 0);
    free(j);
}

static void test_tiny(void)
{
    struct model_config c, r;
    config_default_tiny(&c);
    T_EQ_INT(c.hidden_size, 256);
    T_EQ_INT(c.num_hidden_layers, 3);
    T_EQ_INT(c.num_attention_heads, 8);
    T_EQ_INT(c.num_key_value_heads, 2);
    T_EQ_INT(c.intermediate_size, 512);
    T_EQ_INT(c.vocab_size, 128256);
    T_EQ_INT(c.head_dim, 32);
    T_EQ_INT(c.query_num, 96);
    T_EQ_INT(c.vision_config.hidden_size, 64);
    T_EQ_INT(c.vision_config.num_attention_heads, 4);
    T_EQ_INT(c.vision_config.intermediate_size, 128);
    T_EQ_INT(c.vision_config.num_hidden_layers, 3);
    T_EQ_INT(c.vision_config.image_size, 980);
    T_EQ_INT(c.vision_layers_used, 3);
    char *j = config_to_json(&c);
    struct err e = {{0}};
    T_EQ_INT(config_parse(&r, j, "tiny", &e), 0);
    T_ASSERT(memcmp(&c, &r, sizeof c) == 0);
    free(j);
}

/* Parses the published text with one change; set == NULL deletes the field (path "a.b" reaches into
 * an object), otherwise set is raw JSON for its new value. Returns config_parse's result. */
static int parse_with(const char *field, const char *set, struct model_config *c, struct err *e)
{
    cJSON *r = cJSON_Parse(published);
    cJSON *obj = r;
    char key[64];
    snprintf(key, sizeof key, "%s", field);
    char *dot = strchr(key, '.');
    if (dot) {
        *dot = 0;
        obj = cJSON_GetObjectItemCaseSensitive(r, key);
        memmove(key, dot + 1, strlen(dot + 1) + 1);
    }
    cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
    if (set) cJSON_AddItemToObject(obj, key, cJSON_Parse(set));
    char *text = cJSON_PrintUnformatted(r);
    cJSON_Delete(r);
    int rc = config_parse(c, text, "cfg/config.json", e);
    free(text);
    return rc;
}

static void expect_error(const char *field, const char *set, const char *want1, const char *want2)
{
    struct model_config c;
    struct err e = {{0}};
    T_ASSERTF(parse_with(field, set, &c, &e) == -1, "%s=%s accepted", field, set ? set : "(deleted)");
    T_CONTAINS(e.msg, "cfg/config.json");
    T_CONTAINS(e.msg, want1);
    if (want2) T_CONTAINS(e.msg, want2);
    T_ASSERT(strchr(e.msg, '\n') == NULL);
}

static void test_missing_required(void)
{
    static const char *req[] = {"model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                "intermediate_size", "vocab_size", "max_position_embeddings", "rope_theta",
                                "rms_norm_eps", "bos_token_id", "eos_token_id"};
    for (size_t i = 0; i < sizeof req / sizeof req[0]; i++) {
        char want[96];
        snprintf(want, sizeof want, "\"%s\" is missing", req[i]);
        expect_error(req[i], NULL, want, NULL);
        expect_error(req[i], "null", want, NULL); /* null is absent, as in HF kwargs */
    }
}

static void test_wrong_types(void)
{
    expect_error("hidden_size", "\"4096\"", "\"hidden_size\"", "integer");
    expect_error("hidden_size", "4096.5", "\"hidden_size\"", "integer");
    expect_error("num_hidden_layers", "true", "\"num_hidden_layers\"", "integer");
    expect_error("vocab_size", "1e12", "\"vocab_size\"", "out of range");
    expect_error("rope_theta", "\"500000\"", "\"rope_theta\"", "number");
    expect_error("attention_bias", "0", "\"attention_bias\"", "true or false");
    expect_error("hidden_act", "7", "\"hidden_act\"", "string");
    expect_error("model_type", "\"a-very-long-model-type-string-that-overflows\"", "\"model_type\"", "longer");
    expect_error("vision_config", "[1]", "\"vision_config\"", "object");
    expect_error("slice_config", "3", "\"slice_config\"", "object");
    expect_error("vision_config.hidden_size", "\"x\"", "\"vision_config.hidden_size\"", "integer");
    expect_error("slice_config.max_slice_nums", "[]", "\"slice_config.max_slice_nums\"", "integer");
    expect_error("eos_token_id", "[]", "\"eos_token_id\"", "empty");
}

static void test_invalid_values(void)
{
    expect_error("hidden_size", "4100", "\"hidden_size\"", "num_attention_heads");
    expect_error("num_key_value_heads", "5", "num_key_value_heads", "divisible");
    expect_error("num_key_value_heads", "0", "\"num_key_value_heads\"", "positive");
    expect_error("vocab_size", "-5", "\"vocab_size\"", "positive");
    expect_error("intermediate_size", "0", "\"intermediate_size\"", "positive");
    expect_error("rope_theta", "0", "\"rope_theta\"", "positive");
    expect_error("rope_theta", "-1.5", "\"rope_theta\"", "positive");
    expect_error("rms_norm_eps", "0", "\"rms_norm_eps\"", NULL);
    expect_error("attention_bias", "true", "\"attention_bias\"", "not supported");
    expect_error("hidden_act", "\"gelu\"", "\"hidden_act\"", "silu");
    expect_error("model_type", "\"llama\"", "\"model_type\"", "minicpmv");
    expect_error("rope_scaling", "{\"type\":\"linear\",\"factor\":2}", "\"rope_scaling\"", "not supported");
    expect_error("bos_token_id", "200000", "\"bos_token_id\"", "vocabulary");
    /* the first id past the table (vocab_size 128256): the boundary itself */
    expect_error("bos_token_id", "128256", "\"bos_token_id\"", "vocabulary");
    expect_error("eos_token_id", "128256", "\"eos_token_id\"", "vocabulary");
    expect_error("eos_token_id", "-1", "\"eos_token_id\"", NULL);
    expect_error("torch_dtype", "\"int8\"", "\"torch_dtype\"", NULL);
    expect_error("query_num", "0", "\"query_num\"", "positive");
    expect_error("vision_config.hidden_act", "\"gelu\"", "\"vision_config.hidden_act\"", "gelu_pytorch_tanh");
    expect_error("vision_config.image_size", "981", "\"vision_config.image_size\"", "patch_size");
    expect_error("vision_config.hidden_size", "1000", "\"vision_config.hidden_size\"", "num_attention_heads");
    expect_error("vision_config.num_channels", "1", "\"vision_config.num_channels\"", NULL);
    expect_error("vision_config.patch_size", "0", "\"vision_config.patch_size\"", "positive");
    expect_error("slice_config.patch_size", "16", "\"slice_config.patch_size\"", "vision_config.patch_size");
    expect_error("slice_config.scale_resolution", "-448", "\"slice_config.scale_resolution\"", "positive");
    /* 1 vision layer and drop_vision_last_layer true: nothing left */
    struct model_config c;
    struct err e = {{0}};
    cJSON *r = cJSON_Parse(published);
    cJSON_ReplaceItemInObjectCaseSensitive(r, "drop_vision_last_layer", cJSON_CreateTrue());
    cJSON_ReplaceItemInObjectCaseSensitive(cJSON_GetObjectItemCaseSensitive(r, "vision_config"), "num_hidden_layers",
                                           cJSON_CreateNumber(1));
    char *t = cJSON_PrintUnformatted(r);
    T_EQ_INT(config_parse(&c, t, "x", &e), -1);
    T_CONTAINS(e.msg, "drop_vision_last_layer");
    free(t);
    cJSON_Delete(r);
    T_EQ_INT(config_parse(&c, "{\"hidden_size\": ", "broken.json", &e), -1);
    T_CONTAINS(e.msg, "broken.json");
    T_CONTAINS(e.msg, "not valid JSON");
    T_EQ_INT(config_parse(&c, "[1, 2]", "arr.json", &e), -1);
    T_CONTAINS(e.msg, "not an object");
}

static void test_defaults(void)
{
    struct model_config c;
    struct err e = {{0}};
    T_EQ_INT(parse_with("num_key_value_heads", NULL, &c, &e), 0);
    T_EQ_INT(c.num_key_value_heads, 32);
    T_EQ_INT(parse_with("query_num", NULL, &c, &e), 0);
    T_EQ_INT(c.query_num, 64); /* class default; the file says 96 */
    T_EQ_INT(parse_with("drop_vision_last_layer", NULL, &c, &e), 0);
    T_ASSERT(c.drop_vision_last_layer);
    T_EQ_INT(c.vision_layers_used, 26);
    T_EQ_INT(parse_with("slice_config", NULL, &c, &e), 0);
    T_EQ_INT(c.slice_config.max_slice_nums, 1); /* MiniCPMVSliceConfig(max_slice_nums=1) */
    T_EQ_INT(c.slice_config.scale_resolution, 448);
    T_EQ_INT(parse_with("vision_config", NULL, &c, &e), 0); /* default_vision_config: SigLIP-so400m */
    T_EQ_INT(c.vision_config.hidden_size, 1152);
    T_EQ_INT(c.vision_config.num_hidden_layers, 27);
    T_EQ_INT(c.vision_config.image_size, 980);
    /* a vision_config object without a field takes Idefics2VisionConfig's default */
    T_EQ_INT(parse_with("vision_config.intermediate_size", NULL, &c, &e), 0);
    T_EQ_INT(c.vision_config.intermediate_size, 3072);
    T_EQ_INT(parse_with("vision_config.num_hidden_layers", NULL, &c, &e), 0);
    T_EQ_INT(c.vision_config.num_hidden_layers, 12);
    T_EQ_INT(parse_with("eos_token_id", "[128001, 128009]", &c, &e), 0);
    T_EQ_INT(c.eos_token_id, 128001);
    T_EQ_INT(parse_with("version", NULL, &c, &e), 0);
    T_EQ_STR(c.version, "");
    T_EQ_INT(parse_with("version", "2.5", &c, &e), 0);
    T_EQ_STR(c.version, "2.5");
    T_EQ_INT(parse_with("slice_config.scale_resolution", "336", &c, &e), 0);
    T_EQ_INT(c.slice_config.scale_resolution, 336);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); abort(); }
    fputs(text, f);
    fclose(f);
}

static void test_load_and_preprocessor(void)
{
    char dir[] = "/tmp/test_config.XXXXXX", p[256];
    if (!mkdtemp(dir)) { T_ASSERT(0); return; }
    struct model_config c;
    struct preprocessor_config pp;
    struct err e = {{0}};
    T_EQ_INT(config_load(&c, dir, &e), -1);
    T_CONTAINS(e.msg, "config.json");
    snprintf(p, sizeof p, "%s/config.json", dir);
    write_file(p, published);
    T_EQ_INT(config_load(&c, dir, &e), 0);
    check_published_values(&c);
    /* no preprocessor_config.json: derived from the model config */
    T_EQ_INT(preprocessor_config_load(&pp, &c, dir, &e), 0);
    T_EQ_INT(pp.image_feature_size, 96);
    T_EQ_INT(pp.max_slice_nums, 9);
    T_EQ_INT(pp.scale_resolution, 448);
    T_EQ_INT(pp.patch_size, 14);
    T_NEAR(pp.norm_mean[2], 0.5, 0);
    T_NEAR(pp.norm_std[0], 0.5, 0);
    snprintf(p, sizeof p, "%s/preprocessor_config.json", dir);
    write_file(p, "{\"image_processor_type\": \"MiniCPMVImageProcessor\", \"max_slice_nums\": 4,"
                  " \"scale_resolution\": 448, \"patch_size\": 14, \"image_feature_size\": 96,"
                  " \"im_start\": \"<image>\", \"im_end\": \"</image>\", \"slice_start\": \"<slice>\","
                  " \"slice_end\": \"</slice>\", \"unk\": \"<unk>\", \"norm_mean\": [0.25, 0.5, 0.75],"
                  " \"norm_std\": [0.5, 0.125, 0.5], \"version\": 2.5}");
    T_EQ_INT(preprocessor_config_load(&pp, &c, dir, &e), 0);
    T_EQ_INT(pp.max_slice_nums, 4);
    T_NEAR(pp.norm_mean[0], 0.25, 0);
    T_NEAR(pp.norm_mean[2], 0.75, 0);
    T_NEAR(pp.norm_std[1], 0.125, 0);
    write_file(p, "{\"image_feature_size\": 64}");
    T_EQ_INT(preprocessor_config_load(&pp, &c, dir, &e), -1);
    T_CONTAINS(e.msg, "\"image_feature_size\"");
    T_CONTAINS(e.msg, "preprocessor_config.json");
    write_file(p, "{\"norm_std\": [0.5, 0.5]}");
    T_EQ_INT(preprocessor_config_load(&pp, &c, dir, &e), -1);
    T_CONTAINS(e.msg, "\"norm_std\"");
    write_file(p, "{\"norm_std\": [0.5, 0, 0.5]}");
    T_EQ_INT(preprocessor_config_load(&pp, &c, dir, &e), -1);
    T_CONTAINS(e.msg, "\"norm_std\"[1]");
    write_file(p, "{\"max_slice_nums\": \"nine\"}");
    T_EQ_INT(preprocessor_config_load(&pp, &c, dir, &e), -1);
    T_CONTAINS(e.msg, "\"max_slice_nums\"");
    write_file(p, "{not json");
    T_EQ_INT(preprocessor_config_load(&pp, &c, dir, &e), -1);
    T_CONTAINS(e.msg, "preprocessor_config.json");
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    T_ASSERT(system(cmd) == 0);
}

int main(void)
{
    T_RUN(test_published);
    T_RUN(test_default_full_and_round_trip);
    T_RUN(test_tiny);
    T_RUN(test_missing_required);
    T_RUN(test_wrong_types);
    T_RUN(test_invalid_values);
    T_RUN(test_defaults);
    T_RUN(test_load_and_preprocessor);
    return t_main_end("test_config");
}
