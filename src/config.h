/* config.h: config.json and preprocessor_config.json as structs with HF's field names.
 * Owns parsing and validation (every invariant checked once, errors name the field);
 * does not own tensors (model.h) or planning (devmap.h). */
#ifndef MINICPMV_CONFIG_H
#define MINICPMV_CONFIG_H

#include <stdbool.h>

#include "common.h"

struct vision_config {        /* config.json "vision_config" (Idefics2VisionConfig) */
    int hidden_size;          /* 1152 */
    int image_size;           /* 980: position table is (image_size/patch_size)^2 rows */
    int intermediate_size;    /* 4304 */
    int num_attention_heads;  /* 16 */
    int num_hidden_layers;    /* 27 */
    int patch_size;           /* 14 */
    int num_channels;         /* 3 (default) */
    float layer_norm_eps;     /* 1e-6 (default) */
    char hidden_act[32];      /* "gelu_pytorch_tanh" (default) */
    char model_type[32];      /* "idefics2" */
};

struct slice_config {         /* config.json "slice_config" */
    int max_slice_nums;       /* 9 */
    int patch_size;           /* 14 */
    int scale_resolution;     /* 448 (class default; absent from the published JSON) */
};

/* config.json "quantization_config": what quantized weights the folder holds (docs/QUANT.md). */
enum quant_method {
    QUANT_METHOD_NONE = 0,   /* absent: every weight is F16/BF16/F32 */
    QUANT_METHOD_BNB,        /* "bitsandbytes" 4-bit NF4 (the official int4 folder, mkmodel --quant nf4) */
    QUANT_METHOD_MINICPMV,   /* "minicpmv": our Q8/Q4 row records (minicpmv quantize) */
};
#define QUANT_MAX_SKIP 16
struct quant_config {
    enum quant_method quant_method;
    /* bitsandbytes: bnb_4bit_quant_type must be "nf4"; load_in_4bit true */
    bool bnb_4bit_use_double_quant;
    char bnb_4bit_compute_dtype[16];
    int n_skip;                              /* llm_int8_skip_modules (default ["lm_head"]) */
    char llm_int8_skip_modules[QUANT_MAX_SKIP][32];
    /* minicpmv: "format" of the decoder Linears and of "lm_head" ("q8", "q4"; lm_head also "f16") */
    char format[8];
    char lm_head[8];
};

struct model_config {
    char model_type[32];          /* "minicpmv" */
    char version[16];             /* "2.5" (optional) */
    int hidden_size;              /* 4096 */
    int num_hidden_layers;        /* 32 */
    int num_attention_heads;      /* 32 */
    int num_key_value_heads;      /* 8 (default: num_attention_heads) */
    int intermediate_size;        /* 14336 */
    int vocab_size;               /* 128256 */
    int max_position_embeddings;  /* 8192 */
    double rope_theta;            /* 500000 */
    float rms_norm_eps;           /* 1e-5 */
    bool attention_bias;          /* false (only false is supported) */
    bool tie_word_embeddings;     /* false */
    int bos_token_id;             /* 128000 */
    int eos_token_id;             /* 128001 */
    char hidden_act[16];          /* "silu" */
    char torch_dtype[16];         /* "float16" */
    int query_num;                /* 96 (class default 64) */
    int image_size;               /* 448 */
    int patch_size;               /* 14 */
    bool drop_vision_last_layer;  /* false in the checkpoint (class default true) */
    bool batch_vision_input;      /* true */
    struct slice_config slice_config;
    struct vision_config vision_config;
    struct quant_config quantization_config;
    /* derived */
    int head_dim;                 /* hidden_size / num_attention_heads */
    int vision_layers_used;       /* num_hidden_layers - drop_vision_last_layer */
};

struct preprocessor_config {  /* preprocessor_config.json; defaults when the file is absent */
    int max_slice_nums;        /* 9 */
    int scale_resolution;      /* 448 */
    int patch_size;            /* 14 */
    int image_feature_size;    /* 96 */
    float norm_mean[3];        /* 0.5 */
    float norm_std[3];         /* 0.5 */
};

/* Parses config.json text; path is used in messages only. */
int config_parse(struct model_config *c, const char *json, const char *path, struct err *e);
/* Reads DIR/config.json. */
int config_load(struct model_config *c, const char *dir, struct err *e);
/* Reads DIR/preprocessor_config.json if present, else fills the defaults of the model config. */
int preprocessor_config_load(struct preprocessor_config *p, const struct model_config *c, const char *dir,
                             struct err *e);
/* The published MiniCPM-Llama3-V-2_5 values (used by the generator and tests). */
void config_default_full(struct model_config *c);
/* A tiny config with the same structure (few layers, narrow widths) for CI. */
void config_default_tiny(struct model_config *c);
/* Writes c as config.json text (HF field names), heap-allocated. */
char *config_to_json(const struct model_config *c);

#endif
