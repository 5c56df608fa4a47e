/* engine.h: the public boundary. An engine is a loaded model (config, weights placed on devices,
 * tokenizer when present), its image path, and one LLM session (KV cache). Front ends (CLI, REPL,
 * server, bench) use this header and turn.h (a chat turn on top of it); the struct is opaque to them.
 * Below it: llm.h (the decoder and its session), mm.h (the image path), model.h (weights),
 * devmap.h (placement). */
#ifndef MINICPMV_ENGINE_H
#define MINICPMV_ENGINE_H

#include "chat.h"
#include "common.h"
#include "config.h"
#include "sampler.h"
#include "tensor.h"

struct engine_options {
    const char *model_dir;
    const char *device;          /* "auto" (GPU when present), "cpu", "cuda" */
    enum dtype dtype;            /* weights and activations: DTYPE_F16 (default) or DTYPE_F32 */
    int64_t ctx;                 /* KV capacity; 0 = the planner's (--ctx, else devmap_params_default) */
    int64_t max_batch;           /* prefill chunk; 0 = the planner's (--max-batch, else devmap_params_default) */
    int parallel;                /* sequences (slots) with their own KV cache of ctx tokens each; 0 = the
                                    planner's (--parallel, else 1) */
    int threads;                 /* CPU threads; 0 = all */
    const struct devmap_opts *devmap; /* device flags (--gpus, --max-memory, --logical-devices, --ctx,
                                         --device-map, ...); NULL = the planner's defaults on the one
                                         device `device` picks. engine_open always plans the placement. */
    int quiet;                   /* do not print the plan */
    int no_prefix_reuse;         /* 1: every prompt is prefilled whole (engine_slot_match maps nothing, publish
                                    keeps nothing): for a caller that compares a GPU's logits with a cold run
                                    bit for bit (there reuse changes which GEMM computes a prompt's last rows:
                                    the same tokens, logits equal to rounding; the CPU's are bit-identical) */
    struct progress progress;    /* weights placed so far (zeroed: no reports) */
};
struct devmap_opts;

void engine_options_default(struct engine_options *o);

struct safetensors;
struct tokenizer;

/* Opaque: front ends see the accessors below (engine_impl.h is the engine's own). */
struct engine;
struct devmap_plan;

int engine_open(struct engine **out, const struct engine_options *o, struct err *e);
void engine_close(struct engine *g);

/* Called for each generated token; return non-zero to stop. */
typedef int (*engine_token_cb)(void *ctx, int32_t tok);

struct engine_gen_stats {
    int64_t n_prompt, n_gen;
    double t_prefill, t_decode;  /* seconds */
};

/* One generation on the session: feed the input after what the session already holds, then
 * generate. */
struct engine_gen {
    const int32_t *ids;          /* the input ids, or NULL with embeds */
    const struct tensor *embeds; /* [n, d] on the embedding device, when ids is NULL */
    int64_t n;
    int max_new;                 /* tokens to generate at most (>= 0) */
    const struct sampler_params *sp;
    int ignore_eos;              /* 1: generate max_new tokens through stop ids (benchmarks) */
    engine_token_cb cb;          /* may be NULL; called with each generated token */
    void *cb_ctx;
};

/* Generates up to q->max_new tokens, stopping at a stop id (engine_is_stop) unless q->ignore_eos.
 * out receives the new ids (capacity max_new), the stop token included when hit. */
int engine_generate(struct engine *g, const struct engine_gen *q, int32_t *out, int *n_out,
                    struct engine_gen_stats *stats, struct err *e);
/* Whether tok ends generation (spec §8: eos_token_id = [tokenizer.eos_token_id, <|eot_id|>], i.e.
 * 128001 and 128009 for MiniCPM-Llama3-V 2.5; read from the folder, g->stop). */
int engine_is_stop(const struct engine *g, int32_t tok);
/* Refuses (error naming the id and its position) an id outside 0..vocab_size-1: engine_generate
 * and engine_merge_embeddings check their ids with it before the embedding lookup. */
int engine_check_ids(const struct engine *g, const int32_t *ids, int64_t n, struct err *e);
/* Applies the engine's CPU thread count (engine_options.threads) to the calling thread. OpenMP keeps the
 * count per thread: engine_open sets it for the thread that opens the engine, and a thread that runs
 * the engine afterwards (the server's worker) calls this first, or it would use every core. */
void engine_thread_init(const struct engine *g);


/* ---- the image path and the prompt embedding (turn.h runs them for a chat turn) ---- */
struct image;
/* Lower-level steps, exposed for tests and tools. */
/* Vision + resampler (mm.h) for all pieces of the given images, in batches of at most the plan's max_pieces
 * each padded to the longest piece: out [n_pieces*query_num, d] on the embed
 * device (allocated, caller frees with dev_free(out->dev, out->data)); grids receives each
 * image's (cols, rows). */
int engine_encode_images(struct engine *g, const struct image *images, int n_images, struct chat_grid *grids,
                         struct tensor *out, int *n_pieces, struct err *e);
/* Prompt embeddings with image rows merged: out [n, d] on the embed device (allocated). */
int engine_merge_embeddings(struct engine *g, const int32_t *ids, int n, const struct tensor *img_tokens,
                            int n_pieces, struct tensor *out, struct err *e);

/* ---- what front ends read ---- */
const struct model_config *engine_config(const struct engine *g);
const struct preprocessor_config *engine_preprocessor(const struct engine *g);
const struct tokenizer *engine_tokenizer(const struct engine *g); /* NULL: the folder has no tokenizer.json */
int64_t engine_ctx(const struct engine *g);       /* KV capacity in tokens (--ctx, the plan's) */
int64_t engine_max_batch(const struct engine *g); /* prefill chunk in tokens */
enum dtype engine_dtype(const struct engine *g);  /* activations (and weights) */
double engine_load_seconds(const struct engine *g);
struct device engine_embed_device(const struct engine *g); /* where prompt embeddings live */
const struct devmap_plan *engine_plan(const struct engine *g); /* the placement it was loaded with */
/* Host timings of the last engine_encode_images (bench; mm.h). */
struct mm_times;
const struct mm_times *engine_encode_times(const struct engine *g);
/* (developers, bench --image-batches) 1: each image's vision pieces in one batch, after all its rows; 0 (the
 * default): one batch per slice row as the rows arrive (docs/VISION.md, "Batches"). */
void engine_set_image_batches(struct engine *g, int whole);
/* Waits until every device of the engine is idle. */
void engine_sync(struct engine *g);

/* Bytes held on each physical device (its logical devices added up). */
struct engine_device_mem {
    struct device dev;
    int64_t weights, kv, buffers;  /* buffers: activations, logits, graphs' scratch (KV excluded) */
};
int engine_device_memory(const struct engine *g, struct engine_device_mem *rows, int max_rows);
/* Weight bytes one decode step streams: the decoder layers, the final norm and lm_head (the embedding
 * table is read one row per token). */
int engine_decode_weight_bytes(const struct engine *g, int64_t *out, struct err *e);

/* The logits of a step must be finite: NaN or inf is an error naming the token and `where`. */
int engine_check_logits(const struct engine *g, const float *logits, const char *where, struct err *e);

/* ---- the session step by step (bench) ---- */
/* Keeps the first n positions of the KV cache (0: a new conversation). */
void engine_truncate(struct engine *g, int64_t n);
/* Feeds n ids (or embeddings) after the session; logits of the last position into logits [V]. */
int engine_prefill(struct engine *g, const int32_t *ids, const struct tensor *embeds, int64_t n, float *logits,
                   struct err *e);
/* One greedy decode step: feeds tok, returns the argmax token (a replayed CUDA graph on one GPU). */
int engine_decode_greedy(struct engine *g, int32_t tok, int32_t *next, struct err *e);

/* ---- several sequences (slots) in one engine ----
 * Slot 0 is the session engine_generate, turn.h and the calls above use (its CUDA-graph decode path
 * is unchanged). Each slot holds up to engine_slot_ctx tokens in blocks of a paged pool taken as it
 * grows. By default the pool holds slots x ctx tokens, so none ever waits; with --kv-tokens it is
 * smaller (at least one slot's ctx) and the slots share it: a prefill or decode step of a slot whose
 * blocks the pool cannot give fails ("KV pool exhausted"), so the scheduler reserves them first
 * (engine_slot_reserve) and empties other slots to free some (engine_slot_preempt). The planner counts
 * the pool (--parallel, --ctx, --kv-tokens). Not thread-safe: one caller drives the engine (the
 * scheduler). */
int engine_slots(const struct engine *g);                  /* --parallel N (default 1) */
int64_t engine_slot_ctx(const struct engine *g);           /* KV capacity of each slot, tokens */
int64_t engine_slot_len(const struct engine *g, int slot); /* tokens the slot holds; -1: no such slot */
void engine_slot_truncate(struct engine *g, int slot, int64_t n); /* keep the first n (0: empty) */
/* Takes now the blocks for the slot's first n tokens (its next prefill or decode step then takes none):
 * 0; 1 when the pool has too few free or cached blocks (nothing taken); -1 with e set when n exceeds the
 * slot's context or the slot does not exist. */
int engine_slot_reserve(struct engine *g, int slot, int64_t n, struct err *e);
/* Empties the slot to give its blocks to others (engine_slot_truncate(slot, 0)), counted in
 * engine_kv_use.preempted; the caller publishes what it wants found again first (engine_slot_publish). */
void engine_slot_preempt(struct engine *g, int slot);
/* Feeds n ids (or [n, d] embeddings on the embed device) after what the slot holds, in chunks of
 * max_batch; logits of the last position into logits [V] (host, f32) when not NULL. */
int engine_slot_prefill(struct engine *g, int slot, const int32_t *ids, const struct tensor *embeds, int64_t n,
                        float *logits, struct err *e);
/* Prefix reuse (the paged KV cache keeps full blocks of KV_BLOCK tokens by a chained content key,
 * kvpool.h; turn.c computes the keys: token ids, image rows by their image list's content). Match:
 * slot emptied, then the longest run of cached blocks keys[0..n) mapped into it; returns the tokens it
 * then holds (a multiple of the block size; 0 when nothing matched). Publish: offers the slot's first n
 * full blocks under keys[0..n) (kept, reference-counted, after the slot lets them go, until the pool
 * needs them: least recently released first). */
int64_t engine_slot_match(struct engine *g, int slot, const uint64_t *keys, int n);
/* (with engine_options.no_prefix_reuse: match only empties the slot, publish does nothing) */
void engine_slot_publish(struct engine *g, int slot, const uint64_t *keys, int n);
/* The KV block pool's use (/health, /metrics). */
struct engine_kv_use {
    int blocks, used, cached;    /* blocks per layer: all, held by slots, kept for reuse (the rest free) */
    int block_tokens;
    int slot_blocks;             /* blocks one slot holds at most (ctx); blocks < slots x slot_blocks: a
                                    shared pool (--kv-tokens), whose turns may be preempted */
    int64_t hit_blocks, evicted; /* blocks reused by a match, cached blocks taken back, since load */
    int64_t preempted;           /* slots emptied to free blocks (engine_slot_preempt), since load */
};
void engine_kv_use(const struct engine *g, struct engine_kv_use *u);
/* Forgets every cached prefix (bench: each timed turn prefills cold). */
void engine_kv_forget(struct engine *g);
/* One decode step for B distinct slots together: toks[i] goes into slots[i] at its next position;
 * logits [B, V] (host, f32). Every row equals what that slot alone would compute
 * (engine_slot_prefill with n = 1): bit for bit on the CPU for any B (the CPU computes every row the
 * same way whatever the batch), within the op tolerances on CUDA. Errors (nothing run, no slot
 * changed): B outside 1..min(slots, max_batch), a slot out of range or twice, an id outside the
 * vocabulary, a full slot (llm_check_fit's wording). */
int engine_decode_batch(struct engine *g, const int *slots, const int32_t *toks, int B, float *logits,
                        struct err *e);
/* engine_decode_batch with the next tokens picked on the device, each row by its slot's sampler
 * (engine_slot_sample_begin): picks[i] = row i's token, or -1 where the device declined (more than
 * SAMPLE_DEV_MAX_CAND candidates; the draw is consumed as the host's sampler_sample consumes it).
 * Only 4 bytes a row come back, plus row i's logits into logits + i * V where need[i] (a grammar
 * mask, logprobs: the host picks; need may be NULL) or picks[i] < 0; other rows are not written.
 * Same tokens as the host sampler on the rows' logits (the CPU twin: exactly; CUDA: sampler.h).
 * A CUDA graph per B when the LLM is on one GPU. Errors as engine_decode_batch. */
int engine_decode_batch_pick(struct engine *g, const int *slots, const int32_t *toks, int B, const uint8_t *need,
                             int32_t *picks, float *logits, struct err *e);
/* engine_decode_batch_pick in two halves (llm_decode_batch_launch / _collect), so the host can work
 * while the device runs the step: the launch checks (errors: nothing run, no slot changed), enqueues
 * the step and advances the slots without waiting for the device; the collect waits and copies the
 * picks and the needed logits rows. Between the two, work that runs after the step on the device may
 * be queued (an image encode, a merge); a prefill or another decode must wait for the collect. */
int engine_decode_batch_launch(struct engine *g, const int *slots, const int32_t *toks, int B, struct err *e);
int engine_decode_batch_collect(struct engine *g, const uint8_t *need, int32_t *picks, float *logits, struct err *e);
/* Starts slot's device sampler for a request: parameters p, next draw index `draws` (the host
 * sampler's draws after the tokens it picked itself), no token generated yet. */
void engine_slot_sample_begin(struct engine *g, int slot, const struct sampler_params *p, uint64_t draws);
/* Captures now the batched step's CUDA graph of every batch size 1..min(slots, max_batch) that has none
 * (llm_warm_batch_graphs, in the mode engine_decode_batch_launch uses), so that no step pays a capture
 * (milliseconds each) while streams wait; every slot's KV, length and sampler state are kept. Call it
 * with no batched step in flight. First one prefill chunk of --max-batch tokens runs through an empty
 * slot (emptied again; it may take back cached prefix blocks) so that the scratch buffers the captures
 * record have their prefill size; an image encode or other shapes larger than seen may still move one,
 * and the graphs are then captured again one by one at their next step (llm_batch_stats.stale). 0 and
 * nothing done where the step does not run as graphs (CPU, several GPUs). */
int engine_warm_batch_graphs(struct engine *g, struct err *e);
/* Profiles the nth batched step of `rows` rows from now on (llm_set_profile_step; bench --prof-step). */
void engine_set_profile_step(struct engine *g, int rows, int nth);
/* The batched step's host time and graph counts since load (llm.h). */
struct llm_batch_stats;
const struct llm_batch_stats *engine_batch_stats(const struct engine *g);

#endif
