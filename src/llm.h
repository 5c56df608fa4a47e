/* llm.h: the Llama-3 decoder (spec §9). Prefill and decode are the same call (n_tok >= 1).
 * Owns the per-device activation buffers and the paged KV cache (each layer's K/V block pool on its
 * layer's device, the block tables mirrored there; kvpool.h keeps the host side). The hidden state
 * hops between devices at layer boundaries. */
#ifndef MINICPMV_LLM_H
#define MINICPMV_LLM_H

#include "kvpool.h"
#include "model.h"
#include "sampler.h"

struct llm_devbuf {              /* activation views on one logical device, max_batch rows */
    struct device dev;
    void *mem;                   /* one allocation carved into the views below */
    size_t bytes;
    struct tensor h, xn, q, k, v, att, o, gate, up; /* [max_batch, ...] */
    struct tensor pos;           /* I32 [max_batch] */
    struct tensor ids;           /* I32 [max_batch] */
    /* the batched step of several slots (llm_decode_batch): its per-step values, I32
     * [LLM_BSTEP_FIELDS * max_batch], written by one host -> device copy a step (llm.c bstep_view) */
    struct tensor bstep;
    /* devices holding layers: every slot's block table, I32 [n_slots, max_blocks] (at a stable address:
     * the decode graphs read it; rewritten outside graphs when the host's table changes), and the
     * prefill's contiguous copy of a slot's K and V, [ctx, Hkv, hd] each (the flash kernel reads it) */
    struct tensor kv_tab, kg, vg;
    struct tensor logits;        /* F32 [1, V] (only on the lm_head device): the first row of logits_all */
    struct tensor logits_act;    /* [1, V] in the act dtype: HF computes lm_head in fp16, then .float() */
    struct tensor logits_all, logits_act_all; /* [n_slots, V]: the batched step's rows */
};

/* The fields of a device's bstep region. The step of B rows reads field f at f * B .. f * B + B - 1, so
 * the B rows of every field are one contiguous run of LLM_BSTEP_FIELDS * B values the host fills and
 * uploads at once (each B has its own graph, whose pointers are fixed: the layout may depend on B).
 *   IDS      the fed token of each row (the embedding's input)
 *   POS      its position
 *   KV_ROWS  the cache row its k, v go to
 *   KV_SEQ   its slot (the row of kv_tab its attention reads)
 *   KV_LEN   its key count (position + 1)
 *   SLOT     its slot again, as the sampler's state row
 *   PICKS    the fed ids, then the device's picks (only the batched step writes this region, so a prefill
 *            or an image merge queued behind the step cannot overwrite the picks before the collect) */
enum { BSTEP_IDS, BSTEP_POS, BSTEP_KV_ROWS, BSTEP_KV_SEQ, BSTEP_KV_LEN, BSTEP_SLOT, BSTEP_PICKS, LLM_BSTEP_FIELDS };

/* Where the batched step's host time goes (llm_decode_batch_launch; since load): the bench prints it
 * per step, so a GPU run tells the graph captures from the rest. Clock reads only. */
struct llm_batch_stats {
    int64_t launches;            /* batched steps launched */
    int64_t eager;               /* of them run eagerly: the first step of a B (it sizes the scratch buffers
                                    its graph needs) or every step without graphs */
    int64_t captures;            /* graphs captured and instantiated in launches (stale ones again included) */
    int64_t stale;               /* of the captures, graphs captured again after a scratch buffer moved */
    double t_launch;             /* host seconds in llm_decode_batch_launch */
    double t_upload;             /* of it, the row checks, block reservations and the per-step upload */
    double t_eager, t_capture;   /* of it, the eager first steps of graphed B values (enqueueing, not the
                                    device's time), and the captures with their instantiation */
    int64_t warm_eager, warm_captures; /* llm_warm_batch_graphs' steps and captures (not in the above) */
    double t_warm;               /* host seconds in llm_warm_batch_graphs (its waits for the device included) */
};

struct llm_layer_cache {
    struct tensor k, v;          /* the block pool, [n_blocks * KV_BLOCK, n_kv_heads, head_dim] in the act
                                    dtype; block b is rows b * KV_BLOCK .. (backend.h, kvpool.h) */
};

/* A decode step replayed as a CUDA graph: run eagerly once (warm: every scratch buffer sized), then
 * captured and replayed (llm.c graph_run). */
struct llm_graph {
    struct dev_graph *g;
    int warm;
};

struct llm {
    const struct model *m;
    const struct model_placement *pl;
    enum dtype act;              /* activation and KV dtype */
    int64_t ctx;                 /* KV capacity of each slot in tokens */
    int64_t max_batch;           /* largest chunk of tokens per forward call */
    int64_t n_past;              /* tokens already in slot 0's cache (the session of llm_forward / llm_decode) */
    int n_slots;                 /* sequences with their own KV rows (--parallel); slot 0 is the session */
    int64_t *slot_past;          /* [n_slots]: tokens in slot s's cache for s >= 1 (slot 0: n_past) */
    int64_t max_blocks;          /* a slot's table: ceil(ctx / KV_BLOCK) blocks */
    struct kvpool *pool;         /* the blocks of every slot (n_slots * max_blocks by default: each slot can fill
                                    ctx; fewer with --kv-tokens, at least max_blocks) */
    struct llm_devbuf dev[MODEL_MAX_DEVICES];
    struct llm_layer_cache *cache; /* [num_hidden_layers] */
    void **cache_mem;            /* per layer allocation */
    /* optional hook for stage tests: called with each layer's output (n rows) */
    void (*on_layer)(void *ctx, int layer, const struct tensor *h);
    void *on_layer_ctx;
    /* decode-step graphs, captured after one eager step and replayed per token: [0] ends with the
     * argmax on the device, [1] with the logits, [2] with the sampler on the device (llm_decode's
     * modes); [3 + mode] the same for steps past DEV_ATTN_SHORT_KEYS keys (the attention's shape differs) */
    struct llm_graph graph[6];
    /* the batched step of B slots (llm_decode_batch_pick), one graph per B and ending:
     * bgraph[B] with the logits, bgraph[bmax + 1 + B] with the sampler; [2 * (bmax + 1)],
     * bmax = min(n_slots, max_batch) */
    struct llm_graph *bgraph;
    int bgraph_max;
    int32_t *bstage;             /* [LLM_BSTEP_FIELDS * bgraph_max] host: a step's bstep values before the upload */
    struct llm_batch_stats bstats;
    int batch_eager;             /* 1: the batched step runs eagerly, never as a graph (tests compare) */
    int warm_test;               /* 1: llm_warm_batch_graphs runs its eager steps (and the save and restore
                                    around them) where there are no graphs, e.g. on the CPU (tests) */
    int unfused;                 /* 1: one-token steps use the plain ops (op_rmsnorm, op_matmul,
                                    op_add_rmsnorm, op_silu_mul) as longer steps do; 0: the fused decode
                                    ops. Default: 0 where the devices prefer the fused ops for the
                                    weights (op_fused_preferred: none does unless told, dev_set_fuse),
                                    else 1; llm_set_unfused (tests and benches compare) */
    int swiglu;                  /* 1: one-token steps of the plain sequence run gate|up and SwiGLU as one op
                                    (op_rmsnorm_swiglu without a norm: the same bits); default 1 where the
                                    devices prefer it for the weights (op_swiglu_preferred), else 0;
                                    llm_set_swiglu (tests and benches compare) */
    int inflight_B, inflight_pick; /* the batched step launched and not yet collected (0: none) */
    int prof_rows, prof_nth;     /* llm_set_profile_step: the batched step of prof_rows rows to profile, its nth */
    int64_t prof_seen;           /* batched steps of prof_rows rows launched so far */
    /* the device sampler's state (op_sample_begin / op_sample_dev) on the lm_head device, one row
     * per slot: I32 [n_slots, sample_state_words(V)]; sample_state is slot 0's row (1-D) */
    struct tensor sample_rows, sample_state;
    void *sample_mem;
    int host_sampling;           /* 1: engine_generate samples on the host even where the device could
                                    (tests compare the two paths; the tokens must be the same) */
    int64_t dev_pos[MODEL_MAX_DEVICES]; /* the position in each device's pos[0] (n == 1), -1 unknown */
    int32_t dev_tok;             /* the token id in the graph step token device's ids[0] (llm.c token_dev), -1 unknown */
};

int llm_init(struct llm *s, const struct model *m, const struct model_placement *pl, enum dtype act, int64_t ctx,
             int64_t max_batch, struct err *e);
/* llm_init with n_slots sequences (slots), each with up to ctx tokens of KV: the block pool holds
 * llm_kv_pool_blocks(ctx, n_slots, kv_tokens) blocks per layer (kv_tokens 0: n_slots x ctx, so no slot
 * ever waits for a block; else kv_tokens, at least one ctx sequence), the lm_head device n_slots logits
 * rows. llm_init is n_slots = 1, kv_tokens 0. */
int llm_init_slots(struct llm *s, const struct model *m, const struct model_placement *pl, enum dtype act,
                   int64_t ctx, int64_t max_batch, int n_slots, int64_t kv_tokens, struct err *e);
void llm_free(struct llm *s);
/* The nth batched step of `rows` rows launched from now on (1 = the next) runs between dev_profile(1) and
 * dev_profile(0) on every device of the placement, so that `ncu --profile-from-start off` sees that one
 * step's kernels only (bench --prof-step). rows 0: off. */
void llm_set_profile_step(struct llm *s, int rows, int nth);
/* Sets llm.unfused and drops the captured decode graphs (they hold the other op sequence). */
void llm_set_unfused(struct llm *s, int on);
/* Sets llm.swiglu and drops the captured decode graphs. */
void llm_set_swiglu(struct llm *s, int on);
/* Frees the captured decode graphs; the next step of each kind runs eagerly and captures again (after a
 * device setting that changes the kernels a step launches: benches and tests switch those). */
void llm_drop_graphs(struct llm *s);
/* Bytes of activations + KV the state allocated on logical device i. */
size_t llm_device_bytes(const struct llm *s, int i);
/* The bytes of one device's activation views for a prefill chunk of max_batch tokens (with_logits:
 * the lm_head device's logits rows too), from the same counting pass that lays them out, without
 * the 256-byte alignment padding (the device planner's cost model, devmap.c). */
size_t llm_views_bytes(const struct model_config *c, enum dtype act, int64_t max_batch, int with_logits);
/* The paged KV cache's sizes (the planner's cost model): blocks for n_slots sequences of ctx tokens
 * (n_slots * ceil(ctx / KV_BLOCK): every slot can hold ctx tokens at once, so a sequence never waits for a
 * block); blocks of the pool (kv_tokens > 0: ceil(kv_tokens / KV_BLOCK), a pool the slots share, whose
 * turns are preempted when it runs out (scheduler.h); 0: llm_kv_blocks(ctx, n_slots)); bytes of one layer's
 * pool of `blocks` blocks (K and V); bytes a device holding layers adds for the block tables and the
 * prefill's gathered K and V (the counting pass that lays them out, without alignment padding). */
int64_t llm_kv_blocks(int64_t ctx, int n_slots);
int64_t llm_kv_pool_blocks(int64_t ctx, int n_slots, int64_t kv_tokens);
int64_t llm_kv_layer_bytes(const struct model_config *c, enum dtype act, int64_t blocks);
size_t llm_kv_views_bytes(const struct model_config *c, enum dtype act, int64_t ctx, int n_slots);

/* The one context-fit check (every place that asks calls it, one wording): n_held tokens (in the
 * cache, or a prompt about to be) plus n_new more must fit a context of ctx tokens. 0, or -1 with
 * "this model's maximum context length is C tokens (--ctx): H tokens + N new do not fit (over by K);
 * raise --ctx or ask for fewer new tokens" (OpenAI's opening words, which clients look for; the server
 * answers it as context_length_exceeded). */
int llm_check_fit(int64_t ctx, int64_t n_held, int64_t n_new, struct err *e);

/* Runs n tokens at positions n_past.. through the model and appends them to the cache.
 * Input is either token ids (host array) or embeddings (a [n, d] tensor on any device, act dtype).
 * When logits_out is not NULL, writes the f32 logits of the LAST token to it (host, [V]).
 * Prompts longer than max_batch are processed in chunks. Returns -1 when the cache is full. */
int llm_forward(struct llm *s, const int32_t *ids, const struct tensor *embeds, int64_t n, float *logits_out,
                struct err *e);
/* The one decode step (the context check and the eager fallback live here once): feeds tok at
 * position n_past and ends as mode says. With the whole LLM on one GPU the step is a CUDA graph
 * (after one eager step, one graph per mode); otherwise llm_forward through the host.
 *   LLM_DECODE_ARGMAX: *next = the argmax of the next logits; on the graph only 4 bytes come back.
 *     Same tokens as llm_forward + argmax of its logits (first index of the maximum).
 *   LLM_DECODE_LOGITS: the f32 logits of the next token into logits_out (host, [V]); same values as
 *     llm_forward(s, &tok, NULL, 1, logits_out).
 *   LLM_DECODE_SAMPLE: *next = the token op_sample_dev picks (the parameters of llm_sample_begin);
 *     on the graph 4 bytes come back. *next = -1 means the host must pick: logits_out (host, [V])
 *     then holds the step's logits, and the device has consumed one draw (non-greedy) exactly as
 *     the host's sampler_sample will. That happens when the device declines (more than
 *     SAMPLE_DEV_MAX_CAND candidates) and always when the LLM cannot run as one graph. */
enum llm_decode_mode { LLM_DECODE_ARGMAX = 0, LLM_DECODE_LOGITS = 1, LLM_DECODE_SAMPLE = 2 };
int llm_decode(struct llm *s, int32_t tok, enum llm_decode_mode mode, int32_t *next, float *logits_out, struct err *e);
static inline int llm_decode_greedy(struct llm *s, int32_t tok, int32_t *next, struct err *e)
{
    return llm_decode(s, tok, LLM_DECODE_ARGMAX, next, NULL, e);
}
static inline int llm_decode_logits(struct llm *s, int32_t tok, float *logits_out, struct err *e)
{
    return llm_decode(s, tok, LLM_DECODE_LOGITS, NULL, logits_out, e);
}
static inline int llm_decode_sample(struct llm *s, int32_t tok, int32_t *next, float *logits_out, struct err *e)
{
    return llm_decode(s, tok, LLM_DECODE_SAMPLE, next, logits_out, e);
}
/* Starts a request on the device sampler: parameters p, next draw index `draws` (the host
 * sampler's s->draws), no token generated yet. Outside graphs (a host -> device copy).
 * llm_sample_begin is slot 0's (llm_decode_sample); llm_slot_sample_begin slot s's row of the
 * batched step's sampler (llm_decode_batch_pick). Slot 0 shares one row between the two. */
void llm_sample_begin(struct llm *s, const struct sampler_params *p, uint64_t draws);
void llm_slot_sample_begin(struct llm *s, int slot, const struct sampler_params *p, uint64_t draws);
/* One decoder layer on h (rows [n], on the layer's device, positions pos0..), in place. For stage tests. */
void llm_layer_forward(struct llm *s, int layer, struct tensor *h, int64_t pos0);
/* Embedding lookup of host ids into a [n, d] tensor on the embedding device's buffer (n <= max_batch). */
struct tensor llm_embed(struct llm *s, const int32_t *ids, int64_t n);
/* Forgets the cache (new conversation). Truncates to n tokens when n < n_past (for re-using a prefix). */
void llm_truncate(struct llm *s, int64_t n);

/* ---- several sequences (slots) ----
 * Slot s's tokens live in the blocks of its table (kvpool.h; blocks are taken as it grows and given back
 * when it is truncated). Slot 0 is the session above (n_past, llm_forward, llm_decode and its CUDA
 * graph). */
/* Tokens slot s holds (slot 0: n_past). */
int64_t llm_slot_len(const struct llm *s, int slot);
/* Keeps the first n tokens of slot s (0: empty) and gives back every other block (blocks reserved
 * ahead of n too); n > what it holds changes nothing. */
void llm_slot_truncate(struct llm *s, int slot, int64_t n);
/* Blocks for the first n tokens of slot s, taken now (the next prefill or decode step of the slot then
 * takes none): 0; 1 when the pool has too few free or cached blocks (nothing taken: the scheduler frees
 * some by preempting a turn); -1 with e set when n exceeds the slot's context (llm_check_fit's wording). */
int llm_slot_reserve(struct llm *s, int slot, int64_t n, struct err *e);
/* Copies the tokens p0 .. p0 + n - 1 of slot s in layer l between the cache and k, v [n, Hkv, hd] on
 * the layer's device (to_cache 1: into the cache, taking blocks as needed; 0: out of it). Beam search
 * keeps each beam's rows this way. */
int llm_slot_kv_copy(struct llm *s, int slot, int layer, int64_t p0, struct tensor *k, struct tensor *v, int to_cache,
                     struct err *e);
/* Prefix reuse (kvpool.h): slot s, emptied, maps the longest run of published blocks keys[0..n) and
 * then holds their tokens (returned: n_blocks_mapped * KV_BLOCK); llm_slot_publish offers slot s's
 * first n full blocks under keys[0..n). */
int64_t llm_slot_match(struct llm *s, int slot, const uint64_t *keys, int n);
void llm_slot_publish(struct llm *s, int slot, const uint64_t *keys, int n);
/* llm_forward on slot s: n tokens after what the slot holds, in chunks of max_batch. */
int llm_slot_forward(struct llm *s, int slot, const int32_t *ids, const struct tensor *embeds, int64_t n,
                     float *logits_out, struct err *e);
/* One decode step of B distinct slots together: toks[i] goes into slots[i] at its next position;
 * logits_out [B, V] (host, f32). The GEMMs take M = B rows, each row's attention reads only its slot
 * (op_attention_rows). Each row equals llm_slot_forward(slots[i], &toks[i], 1): bit for bit on the
 * CPU for any B (the CPU computes every row the same way whatever the batch), within the op
 * tolerances on CUDA. Errors (nothing run): B outside
 * 1..min(n_slots, max_batch), a slot outside 0..n_slots-1, a slot twice, a full slot (llm_check_fit). */
int llm_decode_batch(struct llm *s, const int *slots, const int32_t *toks, int B, float *logits_out,
                     struct err *e);
/* llm_decode_batch with the next token of every row picked on the device (op_sample_dev, each row
 * with its slot's state: llm_slot_sample_begin): picks[i] = row i's pick, or -1 where the device
 * declined (its draw consumed, as the host's sampler_sample will). Only picks (4 bytes a row) come
 * to the host, and the logits of the rows that need them: row i's [V] f32 into logits_out + i * V
 * when need[i] (need may be NULL: none) or picks[i] < 0; other rows of logits_out are not written.
 * With the whole LLM on one GPU the step is a CUDA graph per B (captured after one eager step of
 * that B, captured again when stale), its per-step values read from device buffers the host fills
 * before the launch (ids, positions, cache rows, slots). Same errors as llm_decode_batch. */
int llm_decode_batch_pick(struct llm *s, const int *slots, const int32_t *toks, int B, const uint8_t *need,
                          int32_t *picks, float *logits_out, struct err *e);
/* The two halves of the batched step, so the host can work while the device runs it:
 * llm_decode_batch_launch checks the rows (its errors: nothing run), uploads the per-step values,
 * enqueues the step (with pick: ending with the sampler) and advances the slots; it does not wait
 * (on a GPU). llm_decode_batch_collect then waits and copies what llm_decode_batch_pick (picks not
 * NULL; the launch with pick) or llm_decode_batch (picks NULL) would. Between the two, other calls
 * may be queued on the device (they run after the step); only another batched launch, or a call
 * that writes the logits rows (a prefill's last chunk, llm_decode, engine_generate), must wait for
 * the collect. */
int llm_decode_batch_launch(struct llm *s, const int *slots, const int32_t *toks, int B, int pick, struct err *e);
int llm_decode_batch_collect(struct llm *s, const uint8_t *need, int32_t *picks, float *logits_out, struct err *e);
/* Captures now the batched step's graph of every B = 1..min(n_slots, max_batch) that has none (or a
 * stale one), pick as in llm_decode_batch_launch, so that no later launch pays a capture (several ms
 * each) while sequences wait: first one eager step of each such B, largest first (it sizes the scratch
 * buffers; the captures cannot), then the captures, recorded and not run. The eager steps feed token 0
 * at position 0 and write cache row 0, slot 0's first table entry and the sampler state rows; those are
 * saved first and written back after (in stream order), so every sequence's KV, table, length and
 * sampler state are what they were. Needs no batched step in flight (error otherwise). Counted in
 * bstats.warm_*. Nothing to do (0) where the step does not run as graphs (CPU, several devices,
 * batch_eager; warm_test runs the eager steps there). A prefill or image encode at shapes larger than any seen before may still move a scratch
 * buffer later: the graphs are then captured again at their next launch (bstats.stale). */
int llm_warm_batch_graphs(struct llm *s, int pick, struct err *e);
/* 1 when the batched step runs as CUDA graphs (the whole LLM on one GPU, not batch_eager). */
int llm_batch_graphs(const struct llm *s);

#endif
