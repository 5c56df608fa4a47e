/* model.h: the checkpoint's tensor manifest (every name and shape of spec §2, from the config
 * alone) and the binding of checkpoint tensors to named struct fields.
 * The manifest is the single source of truth: the generator writes it, the loader checks it,
 * the planner sizes device units from it. */
#ifndef MINICPMV_MODEL_H
#define MINICPMV_MODEL_H

#include "config.h"
#include "tensor.h"
#include <string.h>
#include <stdlib.h>

/* Units that the device map places whole (names as in the seed's accelerate device_map). */
enum unit_kind { UNIT_EMBED = 0, UNIT_LAYER, UNIT_NORM, UNIT_LM_HEAD, UNIT_VPM, UNIT_RESAMPLER };

struct manifest_entry {
    char name[96];            /* checkpoint tensor name, e.g. "llm.model.layers.3.mlp.up_proj.weight" */
    int ndim;
    int64_t shape[4];
    enum unit_kind unit;
    int layer;                /* for UNIT_LAYER, else -1 */
    float init_mean;          /* generator: values are init_mean + uniform noise of std init_std */
    float init_std;
};

/* ---- quantized weights (docs/QUANT.md) ----
 * The one rule for which tensors are quantized, used by the loader, the checkpoint check, the planner,
 * `quantize` and `mkmodel --quant nf4`. quant is what --quant asks for: 0 (nothing), DTYPE_Q8 or
 * DTYPE_Q4 (an fp16 folder quantized at load: decoder Linears in that format, lm_head Q8). */
/* The quantized dtype checkpoint tensor `name` (of rank ndim) is kept in, or -1 when it stays a float
 * tensor: only Linear weights (op_matmul's w) are ever quantized. */
int model_quant_dtype(const struct model_config *cfg, int quant, const char *name, int ndim);
/* Checks quant (0, DTYPE_Q8, DTYPE_Q4) against what the folder holds: --quant needs a float folder. */
int model_quant_check(const struct model_config *cfg, int quant, struct err *e);

/* Builds the list of every tensor the checkpoint must hold, in checkpoint order.
 * Returns the count; *out is heap-allocated (free()). */
int model_manifest(const struct model_config *c, struct manifest_entry **out, struct err *e);
/* "llm.model.layers.3" for a unit (layer ignored unless UNIT_LAYER). */
const char *unit_name(enum unit_kind k, int layer, char *buf, size_t n);


/* ---- bound weights ---- (shapes for the full model; tiny models scale them down) */
struct llm_layer {
    int device;                   /* logical device index (devmap) */
    struct tensor input_layernorm;          /* [d] */
    /* q|k|v and gate|up are each stored as one matrix joined along rows (on every device), so a token
     * reads each with one GEMV; q_proj..v_proj and gate_proj, up_proj are row views of them. */
    struct tensor qkv;                      /* [(n_head + 2*n_kv_head)*hd, d]: q_proj | k_proj | v_proj */
    struct tensor q_proj;                   /* [n_head*hd, d] */
    struct tensor k_proj;                   /* [n_kv_head*hd, d] */
    struct tensor v_proj;                   /* [n_kv_head*hd, d] */
    struct tensor o_proj;                   /* [d, n_head*hd] */
    struct tensor post_attention_layernorm; /* [d] */
    struct tensor gate_up;                  /* [2*ff, d]: gate_proj | up_proj */
    struct tensor gate_proj;                /* [ff, d] */
    struct tensor up_proj;                  /* [ff, d] */
    struct tensor down_proj;                /* [d, ff] */
};

struct vpm_layer {
    struct tensor layer_norm1_w, layer_norm1_b;       /* [vd] */
    struct tensor qkv_w, qkv_b;                       /* [3*vd, vd], [3*vd]: q_proj | k_proj | v_proj, joined */
    struct tensor out_w, out_b;                       /* [vd, vd], [vd] */
    struct tensor layer_norm2_w, layer_norm2_b;       /* [vd] */
    struct tensor fc1_w, fc1_b;                       /* [vff, vd], [vff] */
    struct tensor fc2_w, fc2_b;                       /* [vd, vff], [vd] */
};

struct vpm_weights {
    int device;
    struct tensor patch_w;        /* [vd, 3*14*14] (conv weight viewed as a matrix, (c,ky,kx) order) */
    struct tensor patch_b;        /* [vd] */
    struct tensor pos_embed;      /* [(image_size/patch)^2, vd] */
    struct vpm_layer *layers;     /* [vision_layers_used] */
    struct tensor post_ln_w, post_ln_b; /* [vd] */
};

struct resampler_weights {
    int device;
    struct tensor query;          /* [q, d] */
    struct tensor kv_proj;        /* [d, vd] (no bias) */
    struct tensor ln_q_w, ln_q_b, ln_kv_w, ln_kv_b; /* [d] */
    struct tensor wq, wk, wv;     /* views of in_proj_weight rows: [d, d] each */
    struct tensor bq, bk, bv;     /* views of in_proj_bias: [d] each */
    struct tensor out_w, out_b;   /* [d, d], [d] */
    struct tensor ln_post_w, ln_post_b; /* [d] */
    struct tensor proj_t;         /* proj transposed at load to [out, in], so y = x · proj_t^T */
};

struct llm_weights {
    int embed_device, norm_device, lm_head_device;
    struct tensor embed_tokens;   /* [V, d] */
    struct llm_layer *layers;     /* [num_hidden_layers] */
    struct tensor norm;           /* [d] */
    struct tensor lm_head;        /* [V, d] */
};

/* ---- loading ---- */
#define MODEL_MAX_DEVICES 16

/* Where each unit goes: an index into devs[] (logical devices; several may share one
 * physical device, e.g. the CPU split in two for tests). */
struct model_placement {
    int n_devices;
    struct device devs[MODEL_MAX_DEVICES];
    int embed, norm, lm_head, vpm, resampler;
    int *layer;                  /* [num_hidden_layers] */
    int quant;                   /* --quant: 0, DTYPE_Q8 or DTYPE_Q4 (model_quant_dtype) */
};

struct model_alloc {             /* an owned buffer, freed by model_free */
    struct device dev;
    void *p;
};

struct model {
    struct model_config cfg;
    struct llm_weights llm;
    struct vpm_weights vpm;
    struct resampler_weights rs;
    enum dtype wdtype;           /* dtype float weights are kept in (quantized ones: model_quant_dtype) */
    int quant;                   /* the placement's --quant */
    struct manifest_entry *man;  /* during model_load: the manifest sorted by name (shapes of quantized tensors) */
    int n_man;
    struct model_alloc *allocs;
    int n_allocs, cap_allocs;
    size_t bytes_per_device[MODEL_MAX_DEVICES];
    struct progress progress;    /* model_load: checkpoint bytes placed so far, of the checkpoint's total */
    uint64_t progress_done, progress_total;
    double quant_seconds;        /* model_load: time spent quantizing (--quant) or resolving NF4 records */
    int n_quantized;             /* model_load: weights bound quantized */
};

struct safetensors;
/* Checks the checkpoint against the manifest (every tensor present, shape as expected, a float
 * dtype) and binds each tensor to its field on its unit's device in dtype wdtype. CPU tensors whose
 * dtype already matches stay zero-copy views of the mmap; others are converted/copied. q|k|v and
 * gate|up (LLM) and q|k|v weights and biases (vision) are joined along rows on every device (a copy,
 * whose source pages of the map are then released, unless the parts already lie back to back).
 * Quantized tensors (model_quant_dtype with pl->quant) are bound as Q8/Q4/NF4 row records: read from
 * the folder's bitsandbytes parts or our U8 records, or quantized here from the float weight, on the
 * CPU or copied byte for byte to a GPU (src/cuda/cuda_quant.cu runs them there). */
int model_load(struct model *m, const struct model_config *cfg, const struct safetensors *st,
               const struct model_placement *pl, enum dtype wdtype, const struct progress *progress, struct err *e);
void model_free(struct model *m);
/* Checks only (no binding): used by loaders and by `plan` when headers are present. Every manifest
 * tensor must be present with its shape and a float dtype, and the checkpoint must hold nothing
 * else: the first other tensor is named (a layer index at or past config.json's count says so).
 * Tensors the folder holds quantized (config.json quantization_config) are checked in their stored
 * form: bitsandbytes' six parts (packed codes, absmax, nested absmax and map, quant_map, the JSON quant
 * state) or our U8 records [O, dtype_row_bytes]. */
int model_check_checkpoint(const struct model_config *cfg, const struct safetensors *st, struct err *e);

#endif
