/* devmap.h: the device map. Which logical device holds each unit of the model that is never
 * split (embedding, one decoder layer, final norm, lm_head, vision tower, resampler), and how
 * many bytes each device needs for it: weights, KV cache at --ctx, and the activation arena.
 *
 * Owns: the options of the shared device flags (struct devmap_opts: --gpus, --max-memory, --ctx,
 * --device-map, --logical-devices, ...; parsed from argv by tools/cmd_util.c), the list of logical
 * devices with their budgets, the cost model and the planner (a pure function of config + parameters
 * + devices + optional explicit map): devmap.c; explicit-map JSON parsing and the printouts (human
 * table and JSON): devmap_io.c. Does not own: allocation (the engine allocates exactly what a plan
 * says), querying devices (the caller passes a callback), reading weights.
 *
 * Invariants of a plan that fits: every unit has a device in [0, n_dev); for every device
 * use[i].total <= dev[i].budget; the engine allocating use[i].ws_* per device never exceeds it.
 *
 * Module names are those of the seed's accelerate device_map: "llm.model.embed_tokens",
 * "llm.model.layers.N", "llm.model.norm", "llm.lm_head", "vpm", "resampler".
 *
 * Device spelling (flags, maps, printouts): a whole GPU is its CUDA ordinal ("0", JSON 0), the
 * whole CPU is "cpu". With --logical-devices a physical device becomes several logical devices, each with
 * its own budget and arena, spelled "<dev>.<part>": "0.0", "0.1", "cpu.0", "cpu.1". Logical
 * device index = position in the list: GPUs in --gpus order (parts in order), then the CPU.
 *
 * Cost model (all sizes in bytes; wb = weight dtype size, ab = activation dtype size, both 2 for
 * fp16; d hidden, H heads, Hkv kv heads, hd head dim, ff intermediate, V vocab, vd/vff vision
 * widths, P patch size, Q query_num):
 *   weights(unit)  = sum over model_manifest() tensors of the unit of numel * wb, or, for a tensor
 *                    kept quantized (model_quant_dtype: config.json's quantization_config or --quant),
 *                    its tensor_nbytes (rows * dtype_row_bytes: codes, scales, absmax, padding; what
 *                    the loader allocates). The vision tower counts every stored layer (27), used or not.
 *                    Quantized units may be on a GPU (their dequantization buffers: ws_quant below).
 *   kv(layer)      = 2 * blocks * KV_BLOCK * Hkv * hd * ab             (K and V of one layer's block pool)
 *                    blocks = kv_seqs * ceil(ctx / KV_BLOCK) (KV_BLOCK 16 tokens, backend.h: every
 *                    sequence can hold ctx tokens at once; llm_kv_blocks), or ceil(kv_tokens / KV_BLOCK)
 *                    with --kv-tokens (llm_kv_pool_blocks; auto: the largest that fits, bisected)
 *   kv(device)     = kv_seqs * ceil(ctx / KV_BLOCK) * 4 [block tables] + 2 * ctx * Hkv * hd * ab [a
 *                    slot's K and V gathered for the prefill's attention] + SLACK, on every device
 *                    holding layers (llm_kv_views_bytes); a device's kv = its layers' kv(layer) + kv(device)
 * The workspace parts are not written here twice: each module sizes its own views with the
 * counting pass of the code that carves them (llm_views_bytes, vision_views_bytes,
 * resampler_views_bound; tensor_carve), and the planner adds mm.c's blocks around them and SLACK
 * for their alignment. What those passes come to:
 *   LLM workspace, on every device holding embed, a layer, norm or lm_head, for a prefill chunk of
 *   n = min(max_batch_tokens, ctx) tokens (prompts longer than the chunk are prefilled in chunks;
 *   attention is flash-style over the cache, so no [n, ctx] score matrix is reserved):
 *     devmap_llm_workspace = n*ab*(3d [h, xn, o] + 2*H*hd [q, att] + 2*Hkv*hd [k, v]
 *                                  + 2*ff [gate, up]) + 7*n*4 [ids, positions, the batched
 *                                  step's cache rows, slot bases, key counts, slots, picks] + SLACK
 *   logits, on the lm_head device: kv_seqs * V * (4 [f32 logits] + ab [lm_head output])
 *   vision tower, on the vpm device, for B = max_pieces pieces of N = max_patches patches each
 *   (flash-style attention, no [N, N] scores):
 *     devmap_vision_workspace = B*N*ab*(6*vd [x, normed, q, k, v, attn out] + vff [fc1]
 *                                       + 3*P*P [patch pixels]) + N*(ab*vd + 4) [position-embedding
 *                                       rows and ids, one piece's, shared by the batch] + SLACK
 *   resampler, on the resampler device (its input is copied there, so it is counted here):
 *     devmap_resampler_workspace = B*N*ab*vd [input] + 5*N*d*ab [kv, two key-side temporaries, K, V
 *                                  of one piece, reused per piece] + 2*N*d*ab [sin-cos table rows:
 *                                  max_w + max_h <= 2N] + B*N*2*4 [column and row ids]
 *                                  + B*Q*ab*3*d [attn, out_proj, output] + 2*Q*d*ab [ln_q(query), Q] + SLACK
 *   SLACK = DEVMAP_ALIGN_SLACK (4 KiB): up to 16 views each aligned to 256 bytes in one arena.
 *   library workspace: gpu_lib_margin (64 MiB) on every GPU logical device holding anything.
 *   quantized weights: on every GPU logical device holding anything, the prefill dequantization
 *   buffers, with B = the most F16 bytes one GEMM dequantizes (a layer's matrices of one width
 *   together, a vision matrix x3, any other x1) and T = QUANT_DEQ_TILE_BYTES (64 MiB):
 *     ws_quant = 1.5*min(B, T) + 4 KiB [weight tile] + (B > T ? 1.5*T + 4 KiB [output tile] : 0)
 *   A device's workspace is the sum of the parts it holds (disjoint views of one arena).
 * Defaults (the engine's): ctx min(4096, max_position_embeddings), kv_seqs 1, max_batch_tokens 2048,
 * max_pieces 10 (overview + 9 slices of one
 * image), max_patches 1100 (the largest piece the slicer makes for aspect ratios up to 16:1 is
 * 1080 patches; the engine refuses a longer piece). B bounds one vision batch, not a request: a
 * request with more pieces (the server takes 8 images, up to 80 pieces) runs in batches of at most
 * max_pieces, each padded to the request's longest piece, with the numbers of one batch (mm.c). */
#ifndef MINICPMV_DEVMAP_H
#define MINICPMV_DEVMAP_H

#include <stdio.h>

#include "common.h"
#include "config.h"
#include "tensor.h"

#define DEVMAP_MAX_DEVICES 16
#define DEVMAP_MAX_LAYERS 256
#define DEVMAP_ALIGN_SLACK 4096
#define DEVMAP_KV_AUTO (-1)

struct devmap_device {
    enum device_kind kind;    /* DEVICE_CPU or DEVICE_CUDA */
    int ordinal;              /* CUDA ordinal; 0 for the CPU */
    int part, nparts;         /* logical part `part` of `nparts` (1 = the whole device) */
    int64_t budget;           /* bytes this logical device may use */
    char label[16];           /* "0", "cpu", "0.1", "cpu.0" */
};

struct devmap_params {
    int64_t ctx;              /* tokens of KV cache reserved per sequence (--ctx); 0 = default */
    int kv_seqs;              /* sequences with their own KV cache: beams, server slots (--kv-seqs) */
    int64_t kv_tokens;        /* tokens of the KV block pool (--kv-tokens): 0 = kv_seqs x ctx (no sequence
                                 ever waits for a block); > 0 that many, at least ctx (the sequences share
                                 it: the scheduler preempts turns when it runs out); DEVMAP_KV_AUTO = the
                                 most the budgets hold, between ctx and kv_seqs x ctx (the plan then holds
                                 the size chosen) */
    int max_batch_tokens;     /* prefill chunk (--max-batch) */
    int max_pieces;           /* image pieces in one vision batch (--max-pieces) */
    int max_patches;          /* patches per piece (--max-patches) */
    int weight_bytes;         /* stored weight dtype size (2: f16/bf16) */
    int quant;                /* --quant: 0, DTYPE_Q8 or DTYPE_Q4 (quantize an fp16 folder at load) */
    int act_bytes;            /* activation / KV dtype size (2: f16) */
    int64_t gpu_lib_margin;   /* cuBLAS etc. per GPU logical device */
};

/* The shared command-line options of chat, generate, serve, bench and plan. */
struct devmap_opts {
    int n_gpus;                          /* -1 when --gpus was not given */
    int gpus[DEVMAP_MAX_DEVICES];
    int n_mem;                           /* --max-memory entries, as given */
    char mem_key[DEVMAP_MAX_DEVICES][16];
    int64_t mem_bytes[DEVMAP_MAX_DEVICES];
    int n_split;                         /* --logical-devices entries */
    char split_key[DEVMAP_MAX_DEVICES][8];
    int split_parts[DEVMAP_MAX_DEVICES];
    char device_map[1024];               /* --device-map path; "" for none */
    struct devmap_params params;
};

/* Which device holds each unit (logical device indices). */
struct devmap_assign {
    int n_layers;
    int embed, norm, lm_head, vpm, resampler;
    int layer[DEVMAP_MAX_LAYERS];
};

struct devmap_usage {
    int64_t weights, kv;
    int64_t ws_llm, ws_logits, ws_vision, ws_resampler, ws_lib;
    int64_t ws_quant;         /* quantized weights: the CUDA dequantization buffers (devmap.c quant_workspace) */
    int64_t workspace;        /* sum of the ws_* parts */
    int64_t total;            /* weights + kv + workspace */
    int n_layers;             /* decoder layers held */
};

struct devmap_plan {
    int fits;                 /* 1: every device within budget */
    int explicit_map;         /* 1: the assignment came from --device-map */
    struct devmap_params params;
    int n_dev;
    struct devmap_device dev[DEVMAP_MAX_DEVICES];
    struct devmap_assign map;
    struct devmap_usage use[DEVMAP_MAX_DEVICES];
    int64_t kv_blocks;        /* the KV block pool of each layer: blocks of KV_BLOCK tokens */
    int kv_auto;              /* --kv-tokens auto: params.kv_tokens is the size the planner chose */
    int64_t kv_layer;         /* one layer's pool in bytes (K and V) */
    char advice[768];         /* when it does not fit: changes that would each make it fit */
    char notes[512];          /* warnings that do not stop the plan (e.g. non-contiguous layers) */
};

/* ---- parameters and flags ---- */
void devmap_params_default(struct devmap_params *p);
/* Fills what depends on the model (ctx 0 -> min(4096, max_position_embeddings)). */
void devmap_params_resolve(struct devmap_params *p, const struct model_config *c);
void devmap_opts_init(struct devmap_opts *o);
/* The device flags are parsed by the CLI flag code (tools/cmd_util.h: devmap_opts_parse). These
 * read the device spellings for it and for the map parser: */
/* A decimal integer in [lo, hi]; 0, or -1 when s is not one. */
int devmap_parse_long(const char *s, long lo, long hi, long *out);
/* "cpu", "N", "cuda:N", "cpu.P", "N.P" -> ordinal (-1 for cpu) and part (-1 when absent); 0 or -1. */
int devmap_parse_dev_key(const char *s, int *ordinal, int *part);
/* "cpu.1" / "gpu 0.1" into buf (messages and the table). */
const char *devmap_dev_name(const struct devmap_device *d, char *buf, size_t n);

/* Free memory of a physical device, for budgets not given by --max-memory. Returns 0 or -1. */
typedef int (*devmap_mem_fn)(enum device_kind kind, int ordinal, int64_t *free_bytes, void *ctx, struct err *e);
/* Safety margin kept free on a device whose budget comes from its free memory:
 * free/16 + 256 MiB (fragmentation, CUDA context growth, other processes, the OS). */
int64_t devmap_default_budget(int64_t free_bytes);
/* Builds the logical devices from the options. GPUs: --gpus, else the GPUs named in --max-memory,
 * else 0..n_visible-1. The CPU is a device when --max-memory or --logical-devices names it, or when there is
 * no GPU at all. A budget not given comes from mem() (NULL: an error naming the flag to add).
 * n_visible < 0 means unknown (no range check on GPU ordinals). */
int devmap_devices(const struct devmap_opts *o, int n_visible, devmap_mem_fn mem, void *ctx,
                   struct devmap_device *dev, int *n_dev, struct err *e);

/* ---- costs ---- */
int64_t devmap_llm_workspace(const struct model_config *c, int64_t max_batch_tokens, int act_bytes);
int64_t devmap_vision_workspace(const struct model_config *c, int64_t max_pieces, int64_t max_patches, int act_bytes);
int64_t devmap_resampler_workspace(const struct model_config *c, int64_t max_pieces, int64_t max_patches,
                                   int act_bytes);
int64_t devmap_kv_layer_bytes(const struct model_config *c, const struct devmap_params *p);
int64_t devmap_kv_device_bytes(const struct model_config *c, const struct devmap_params *p);

/* ---- explicit maps ---- */
/* Parses a JSON device map: either {"module": device, ...} or an object with a "device_map" member
 * (so `plan --json` output can be edited and fed back). Devices are GPU ordinals (number or
 * string), "cuda:N", "cpu", or a logical label such as "0.1". Every unit must appear exactly once;
 * errors name the module and the value. path is for messages. */
int devmap_map_parse(struct devmap_assign *m, const char *json, const char *path, const struct model_config *c,
                     const struct devmap_device *dev, int n_dev, struct err *e);
int devmap_map_load(struct devmap_assign *m, const char *path, const struct model_config *c,
                    const struct devmap_device *dev, int n_dev, struct err *e);

/* ---- the planner ---- */
/* Places every unit (or checks the explicit map when m is not NULL) and fills plan, also when the
 * model does not fit: then it returns -1, plan->fits = 0, e says which device is short, and
 * plan->use / plan->advice hold the table and the smallest changes that would fit. Pure: no I/O,
 * no allocation beyond the manifest. */
int devmap_plan(const struct model_config *c, const struct devmap_params *p, const struct devmap_device *dev,
                int n_dev, const struct devmap_assign *m, struct devmap_plan *plan, struct err *e);

/* The plan as the loader's placement (model.h): devs from the logical devices, unit indices copied;
 * layer is caller storage of n_layers ints that pl->layer will point to. */
struct model_placement;
void devmap_placement(const struct devmap_plan *plan, struct model_placement *pl, int *layer);

/* ---- output ---- */
/* The map (module -> device, one line each, in the seed's order) and the per-device table. */
void devmap_print(FILE *f, const struct devmap_plan *plan);
/* {"fits":..., "device_map": {...}, "devices": [...], ...}; heap string (free()), NULL on OOM. */
char *devmap_to_json(const struct devmap_plan *plan, const char *error);
/* "12.34 GiB" into buf. */
const char *devmap_fmt_bytes(int64_t b, char *buf, size_t n);

#endif
