/* engine.h: the public boundary. An engine is a loaded model (config, weights placed on devices,
 * tokenizer when present) plus one LLM session (KV cache). Front ends (CLI, server, bench) use
 * only this header. */
#ifndef MINICPMV_ENGINE_H
#define MINICPMV_ENGINE_H

#include "llm.h"
#include "sampler.h"

struct engine_options {
    const char *model_dir;
    const char *device;          /* "auto" (GPU when present), "cpu", "cuda" */
    enum dtype dtype;            /* weights and activations: DTYPE_F16 (default) or DTYPE_F32 */
    int64_t ctx;                 /* KV capacity; 0 = the planner's (--ctx, else devmap_params_default) */
    int64_t max_batch;           /* prefill chunk; 0 = the planner's (--max-batch, else devmap_params_default) */
    int threads;                 /* CPU threads; 0 = all */
    const struct devmap_opts *devmap; /* device flags (--gpus, --max-memory, --logical-devices, --ctx,
                                         --device-map, ...); NULL = the planner's defaults on the one
                                         device `device` picks. engine_open always plans the placement. */
    int quiet;                   /* do not print the plan */
    struct progress progress;    /* weights placed so far (zeroed: no reports) */
};
struct devmap_opts;

void engine_options_default(struct engine_options *o);

struct safetensors;
struct tokenizer;

#define ENGINE_MAX_STOP 8

/* One device block kept across requests (the image path's scratch, mm.c). */
struct engine_arena {
    struct device dev;
    void *p;                     /* NULL until first needed */
    size_t bytes;
};

struct engine {
    struct model_config cfg;
    struct preprocessor_config pp;
    struct safetensors *st;
    struct model model;
    struct model_placement pl;
    int *layer_dev;              /* storage for pl.layer */
    struct llm llm;
    struct tokenizer *tok;       /* NULL when the folder has no tokenizer.json */
    double load_seconds;
    struct devmap_plan *plan;    /* the plan the model was loaded with */
    int32_t stop[ENGINE_MAX_STOP]; /* ids that end generation (engine_is_stop): config.json's eos_token_id,
                                      generation_config.json's, and the tokenizer's <|eot_id|> */
    int n_stop;
    struct engine_encode_times { /* host clock of the last engine_encode_images, seconds (bench) */
        double pre;              /* image preprocessing */
        double vision_queued;    /* vision_forward: host conversion, uploads, queueing */
        double rs_queued;        /* resampler_forward: its host tables, queueing */
        double wait;             /* the final sync: device work still running after the host is done */
    } enc_times;
    struct engine_arena mm_ws[2]; /* image path: [0] on the vpm device (vision features + scratch, and the
                                     resampler's when it shares that device), [1] on the resampler's
                                     device otherwise; sized at load from the plan's max_pieces x
                                     max_patches, else grown on demand and kept (engine_mm_reserve) */
};

int engine_open(struct engine **out, const struct engine_options *o, struct err *e);
void engine_close(struct engine *g);

/* Called for each generated token; return non-zero to stop. */
typedef int (*engine_token_cb)(void *ctx, int32_t tok);

struct engine_gen_stats {
    int64_t n_prompt, n_gen;
    double t_prefill, t_decode;  /* seconds */
};

/* Feeds ids (or embeddings when ids is NULL) after what the session already holds, then generates
 * up to max_new tokens, stopping at a stop id (engine_is_stop). out receives the new
 * ids (capacity max_new), the stop token included when hit. */
int engine_generate(struct engine *g, const int32_t *ids, const struct tensor *embeds, int64_t n, int max_new,
                    const struct sampler_params *sp, engine_token_cb cb, void *cb_ctx, int32_t *out, int *n_out,
                    struct engine_gen_stats *stats, struct err *e);
/* Whether tok ends generation (spec §8: eos_token_id = [tokenizer.eos_token_id, <|eot_id|>], i.e.
 * 128001 and 128009 for MiniCPM-Llama3-V 2.5; read from the folder, g->stop). */
int engine_is_stop(const struct engine *g, int32_t tok);
/* Refuses (error naming the id and its position) an id outside 0..vocab_size-1: engine_generate
 * and engine_merge_embeddings check their ids with it before the embedding lookup. */
int engine_check_ids(const struct engine *g, const int32_t *ids, int64_t n, struct err *e);


/* ---- chat with images (spec §6, §8) ---- */
struct image;
struct chat_msg;

struct engine_chat_request {
    const char *system;              /* may be NULL/"" */
    const struct chat_msg *msgs;     /* contents may hold "(<image>./</image>)", one per image, in order */
    int n_msgs;
    const struct image *images;      /* decoded RGB images, in marker order */
    int n_images;
    int max_new_tokens;              /* 1024 = the model's default */
    struct sampler_params sampling;
};

struct engine_chat_result {
    char *text;                      /* the answer after spec §8's clean-up (malloc'd) */
    int32_t *ids;                    /* the generated ids, before clean-up (malloc'd) */
    int n_ids;
    int n_prompt;                    /* prompt tokens, image placeholders included */
    int n_pieces;                    /* image pieces encoded */
    double t_vision, t_prefill, t_decode; /* seconds */
};

/* Called with each piece of answer text as it is decoded (never half a UTF-8 character). */
typedef int (*engine_text_cb)(void *ctx, const char *text, size_t len);

/* Builds the prompt, encodes every image (vision batches of at most the plan's max_pieces, all
 * padded to the request's longest piece: the numbers of one batch), merges the resampler
 * output into the <unk> placeholder rows, generates, and cleans the output as chat() does
 * (drop id 0, a leading BOS and a trailing stop id, decode with clean-up spaces, strip). Starts a
 * new conversation: the KV cache is reset. */
int engine_chat(struct engine *g, const struct engine_chat_request *rq, engine_text_cb cb, void *cb_ctx,
                struct engine_chat_result *res, struct err *e);
void engine_chat_result_free(struct engine_chat_result *r);

/* Lower-level steps, exposed for tests and tools. */
/* Vision + resampler for all pieces of the given images, in batches of at most the plan's max_pieces
 * each padded to the longest piece: out [n_pieces*query_num, d] on the embed
 * device (allocated, caller frees with dev_free(out->dev, out->data)); grids receives each
 * image's (cols, rows). */
struct chat_grid;
int engine_encode_images(struct engine *g, const struct image *images, int n_images, struct chat_grid *grids,
                         struct tensor *out, int *n_pieces, struct err *e);
/* Sizes the image path's kept device scratch (g->mm_ws) for n_pieces pieces of up to max_patches
 * patches each (engine_open calls it with the plan's bounds); engine_encode_images grows it when a
 * request needs more. */
int engine_mm_reserve(struct engine *g, int n_pieces, int64_t max_patches, struct err *e);
/* Prompt embeddings with image rows merged: out [n, d] on the embed device (allocated). */
int engine_merge_embeddings(struct engine *g, const int32_t *ids, int n, const struct tensor *img_tokens,
                            int n_pieces, struct tensor *out, struct err *e);

#endif
