/* backend.h: the ops contract. Model code (llm.c, vision.c, resampler.c) calls only these.
 * backend.c checks shapes, dtypes and devices, then routes to cpu_* (backend_cpu.c) or
 * cuda_* (src/cuda) by the tensors' device tag. All tensors of one op live on one device,
 * except op_copy.
 *
 * Numerics (the same on every backend):
 *  - accumulation is fp32; softmax and norm statistics are fp32;
 *  - outputs are rounded to the output tensor's dtype; where PyTorch's fp16 path rounds an
 *    intermediate to fp16 (RMSNorm before the weight multiply, silu before the up multiply,
 *    each RoPE product), the op rounds to the activation dtype at the same point, so an F16
 *    activation run follows torch's fp16 rounding and an F32 run is plain fp32.
 *  - activations are F32 or F16 (BF16 accepted); weights F32, F16 or BF16, and for the weight w of
 *    op_matmul, op_linear and op_matmul_stacked also a quantized dtype (Q8, Q4, NF4; quant.h,
 *    docs/QUANT.md). Quantized weights: see below.
 * Aliasing: y may alias an input only where the op says so.
 *
 * Quantized weights (the contract the CPU and CUDA twins implement):
 *  - w is [o, k] of DTYPE_Q8, DTYPE_Q4 or DTYPE_NF4 (k % 16 == 0; a row view of a joined matrix is a
 *    valid w: records are self-contained); bias, x, y and res keep their float dtypes.
 *  - Semantics: the op is exactly the same op with w replaced by its F16 dequantization
 *    W16 = quant_dequant_rows_f16(w) (every format defines each weight as one F16 value). The CPU
 *    computes it bit for bit like that (the same fp32 matmul code as an F16 weight, on the
 *    dequantized rows); a CUDA kernel must produce the F16 values W16 (Q8/Q4: code times scale as a half
 *    multiply is exact to that; NF4: the f32 product QUANT_NF4[c] * absmax, then rounded to half) and
 *    accumulate in fp32: its results then match the CPU's within the tolerance of an F16 weight.
 *  - op_matmul_stacked with a quantized w splits w into S row views, as for F16.
 *  - CUDA (src/cuda/cuda_quant.cu): n <= 8 runs a GEMV that dequantizes in registers; n > 8
 *    dequantizes w to F16 into a device workspace, in row tiles of at most QUANT_DEQ_TILE_BYTES, and
 *    runs the fp16 GEMM (a tile's output columns also pass through a buffer of at most that size).
 *    The planner counts these buffers (devmap.c, docs/DEVMAP.md). */
#define QUANT_DEQ_TILE_BYTES ((size_t)64 << 20)
#ifndef MINICPMV_BACKEND_H
#define MINICPMV_BACKEND_H

#include "common.h"
#include "tensor.h"

/* ---- devices and memory ---- */
struct backend_info {
    int n_gpus;          /* CUDA devices visible (0 when built without CUDA or without a driver) */
    int cuda_built;      /* 1 when compiled with CUDA */
};
void backend_query(struct backend_info *bi);
/* Sets the number of CPU threads the CPU backend uses (0 = all cores). */
void backend_set_threads(int n);
/* The CPU threads a parallel region of the calling thread gets now (backend_set_threads). */
int backend_threads(void);

void *dev_alloc(struct device d, size_t bytes, struct err *e);
void dev_free(struct device d, void *p);
/* Free and total memory of a device (CPU: from /proc/meminfo). */
int dev_mem_info(struct device d, size_t *free_b, size_t *total_b, struct err *e);
void dev_sync(struct device d);

/* ---- ops ---- */
/* y[n, d] = table[ids[i], :]. ids: I32 [n] on y's device. */
void op_embed(struct tensor *y, const struct tensor *table, const struct tensor *ids);
/* y[n, o] = x[n, i] · w[o, i]^T (+ bias[o]). y must not alias x. */
void op_matmul(struct tensor *y, const struct tensor *x, const struct tensor *w, const struct tensor *bias);
/* Activations fused into op_linear. */
enum linear_act { LINEAR_NONE = 0, LINEAR_GELU_TANH = 1 };
/* y[n, o] = act(x · w^T + bias) (+ res[n, o]): a Linear with its activation, or a Linear whose output
 * is added to the residual stream. y must not alias x; y may alias res (in place: y += ...).
 * Numerics: the CPU rounds the Linear's output to y's dtype and then applies act / the add, each
 * rounded (torch's op-by-op points, bit for bit op_matmul followed by op_gelu_tanh / op_add). The
 * CUDA prefill path (16-bit, with a bias) does it in one cuBLASLt call whose epilogue works on the
 * fp32 accumulator and rounds once: one rounding fewer, so results may differ from the CPU by one
 * unit in the last place of the intermediate (docs/CUDA.md). */
void op_linear(struct tensor *y, const struct tensor *x, const struct tensor *w, const struct tensor *bias, int act,
               const struct tensor *res);
/* y[s] = x · w[s*o .. s*o+o-1]^T + bias[s*o .. s*o+o-1] for s < S: S Linears sharing their input,
 * whose weights (and biases) are stacked row blocks of w (bias), written as the S blocks of y[S, n, o]
 * (the vision tower's q, k, v from one [3*vd, vd] matrix). Equal, bit for bit, to S op_matmul calls on
 * those views; CUDA runs them as one strided-batched GEMM. bias may be NULL. y must not alias x. */
void op_matmul_stacked(struct tensor *y, const struct tensor *x, const struct tensor *w, const struct tensor *bias);
/* Llama RMSNorm over the last dim: y = w * round(x * rsqrt(mean(x^2) + eps)). y may alias x. */
void op_rmsnorm(struct tensor *y, const struct tensor *x, const struct tensor *w, float eps);
/* LayerNorm over the last dim with fp32 statistics: y = (x - mean) * rsqrt(var + eps) * w + b. y may alias x. */
void op_layernorm(struct tensor *y, const struct tensor *x, const struct tensor *w, const struct tensor *b, float eps);
/* HF (half-split) RoPE in place on x[n, heads, hd] at positions pos (I32 [n]); inv_freq in fp32. */
void op_rope(struct tensor *x, const struct tensor *pos, double theta);

enum attn_flags {
    ATTN_CAUSAL = 1,      /* query row i (absolute position q_pos0 + i) sees keys 0..q_pos0+i */
    ATTN_EAGER_F16 = 2,   /* Idefics2 eager rounding: round(q·k) then round(·scale) in the act dtype */
};
/* out[n, H, hd] = softmax(q k^T * scale) v with GQA (query head h uses kv head h / (H/Hkv)).
 * q[n, H, hd]; k, v [T, Hkv, hd]. out must not alias q, k or v. */
void op_attention(struct tensor *out, const struct tensor *q, const struct tensor *k, const struct tensor *v,
                  int64_t q_pos0, float scale, int flags);
/* n_seq independent attentions in one call (the vision tower's pieces): q, out [n_seq*N, H, hd],
 * k, v [n_seq*T, Hkv, hd]; sequence s uses q/out rows s*N .. s*N+N-1 and k/v rows s*T .. s*T+T-1
 * (block-diagonal, no causal mask). Equal to n_seq op_attention calls on those row views with
 * q_pos0 0 (the CPU twin is exactly that loop). flags: ATTN_EAGER_F16 or 0. out must not alias q, k
 * or v. */
void op_attention_batch(struct tensor *out, const struct tensor *q, const struct tensor *k, const struct tensor *v,
                        int64_t n_seq, float scale, int flags);
/* y = round(silu(gate)) * up, elementwise. y may alias gate or up. */
void op_silu_mul(struct tensor *y, const struct tensor *gate, const struct tensor *up);
/* y = gelu_tanh(x) (PyTorch gelu approximate='tanh'). y may alias x. */
void op_gelu_tanh(struct tensor *y, const struct tensor *x);
/* y = a + b; b has a's shape or is 1-D of a's last dim (broadcast over rows). y may alias a or b. */
void op_add(struct tensor *y, const struct tensor *a, const struct tensor *b);
/* y = x * s. y may alias x. */
void op_scale(struct tensor *y, const struct tensor *x, float s);
/* dst = src, same numel; converts dtype when both are on one device; copies across devices
 * (host <-> GPU, GPU <-> GPU) when dtypes are equal. Host -> GPU returns without waiting for the
 * device (the bytes are staged in pinned memory first, so src may be reused at once; the copy runs
 * in stream order, after the ops queued before it); GPU -> host returns when dst holds the data. */
void op_copy(struct tensor *dst, const struct tensor *src);
/* Whether a quantized weight [rows, k] of dtype dt takes 16-row tiles on dev (quant.h "Tiles"): on a CUDA
 * device when quant_tiles_ok; never on the CPU. The code that places weights sets `tiled` from it; op_copy
 * converts between records and tiles when dst->tiled != src->tiled (whole 2-D weights, any devices). */
bool op_weight_tiled(struct device dev, enum dtype dt, int64_t rows, int64_t k);
/* Index of the largest value in each row of x[n, V] (F32), written to host array out[n]. */
void op_argmax(const struct tensor *x, int32_t *out);

/* ---- decode-step ops (fused, and device-side positions so a step can be a replayed graph) ---- */
/* h = h + o (rounded to h's dtype), then xn = rmsnorm(h) * w: op_add(h, h, o) followed by
 * op_rmsnorm(xn, h, w, eps), bit for bit, in one launch. h [rows, d], o like h, xn like h,
 * w [d]. xn must not alias h or o. */
void op_add_rmsnorm(struct tensor *h, struct tensor *xn, const struct tensor *o, const struct tensor *w, float eps);

/* The decode GEMVs with the work around them folded in (docs/CUDA.md "Fused decode GEMVs"; llm.c uses
 * them for one-token steps, the batched step's rows and the quantized formats can later). Each is
 * defined by the plain ops it replaces, which its CPU twin runs literally (so the CPU results are those
 * ops' bits); the residual add after o_proj and down_proj is op_linear with res = y (above).
 * RMSNORM_MATMUL_MAX_PARTS outputs at most. */
#define RMSNORM_MATMUL_MAX_PARTS 4
/* xn = op_rmsnorm(x; nw, eps) into a tensor of x's dtype and shape (nw NULL: xn = x), then the Linear
 * of w [o, k] (no bias) on xn, its o output columns split into np consecutive parts: ys[i] [n, o_i]
 * = xn · w[off_i .. off_i + o_i - 1]^T, off_0 = 0, off_{i+1} = off_i + o_i, sum of o_i = o (one
 * op_matmul per part on the row views of w). The input norm and q|k|v of a layer from the joined
 * weight, the final norm and lm_head. x [n, k]; ys must not alias x or each other. CUDA: a one-token
 * step of 16-bit rows runs one kernel that computes the norm per block and streams w once (x's dtype
 * F16, every tensor F16, k % 8 == 0); other shapes run the plain ops. */
void op_rmsnorm_matmul(struct tensor *const *ys, int np, const struct tensor *x, const struct tensor *nw, float eps,
                       const struct tensor *w);
/* y [n, f] = op_silu_mul(g, u) where g = xn · w[0 .. f-1]^T and u = xn · w[f .. 2f-1]^T are op_matmul
 * outputs in y's dtype and xn = op_rmsnorm(x; nw, eps) in x's dtype (nw NULL: xn = x): the
 * post-attention norm, gate|up from the joined weight w [2f, k] and SwiGLU in one op. y must not
 * alias x. CUDA: one kernel as for op_rmsnorm_matmul, each warp computing row i of the gate and
 * row i of the up projection and writing their product; other shapes run the plain ops. */
void op_rmsnorm_swiglu(struct tensor *y, const struct tensor *x, const struct tensor *nw, float eps,
                       const struct tensor *w);
/* ---- the paged KV cache (kvpool.h) ----
 * A paged cache is [n_blocks * KV_BLOCK, Hkv, hd]: block b holds the rows b*KV_BLOCK .. +KV_BLOCK-1. A
 * sequence's block table tab (I32 on the cache's device) lists its blocks in order: its token p is in
 * row tab[p / KV_BLOCK] * KV_BLOCK + p % KV_BLOCK. Every table entry an op reads must name a block of
 * the cache (the CPU twins check it; the CUDA kernels trust it: the host allocator wrote it).
 * KV_BLOCK: 16 tokens. Smaller blocks waste less of a sequence's last block (at most 15 rows) and
 * let prefix reuse match at a finer grain; 16 rows of one kv head are 4 KiB of f16 K, enough for the
 * kernels' 16-byte loads to stay whole, and a 4096-token table is 256 entries (1 KiB). */
#define KV_BLOCK 16

/* op_rope on q [n, H, hd] and k [n, Hkv, hd] at positions pos (I32 [n]) in one launch; when kc is
 * not NULL also stores the rotated k and v [n, Hkv, hd] into the caches kc, vc [T, Hkv, hd]: at rows
 * pos[i] when tab is NULL, else at the rows of positions pos[i] through the block table tab (I32 [MB],
 * MB * KV_BLOCK > pos[i]) (the KV append of a decode step, its row read on the device). Same dtypes
 * for k, v, kc, vc. */
void op_rope_qk(struct tensor *q, struct tensor *k, const struct tensor *pos, double theta, const struct tensor *v,
                struct tensor *kc, struct tensor *vc, const struct tensor *tab);
/* op_rope_qk for the batched decode step's rows: RoPE of q and k at positions pos, then the rotated k and
 * v [n, Hkv, hd] stored at cache rows rows[i] (I32 [n] on the device, each in [0, T)) of kc, vc: exactly
 * op_rope_qk(q, k, pos, theta, NULL, ..) followed by op_kv_store(kc, k, rows) and op_kv_store(vc, v, rows),
 * in one launch on the GPU. */
void op_rope_qk_rows(struct tensor *q, struct tensor *k, const struct tensor *pos, double theta, const struct tensor *v,
                     struct tensor *kc, struct tensor *vc, const struct tensor *rows);
/* op_rope_qk_rows on the joined output of q|k|v: qkv [n, (H + 2 Hkv) * hd] holds each row's q, k and v
 * side by side (one matmul over the joined weight); q [n, H, hd] = RoPE of the q part, the RoPE of the k part
 * and the v part go to cache rows rows[i] of kc, vc [T, Hkv, hd]. qkv is not written. Exactly the split
 * followed by op_rope_qk_rows. */
void op_rope_qkv_rows(struct tensor *q, const struct tensor *qkv, const struct tensor *pos, double theta,
                      struct tensor *kc, struct tensor *vc, const struct tensor *rows);
/* cache[rows[i]] = x[i] for x [n, ...], cache [T, ...] (same inner shape and dtype), rows I32 [n]
 * on the device; every rows[i] must be in [0, T). */
void op_kv_store(struct tensor *cache, const struct tensor *x, const struct tensor *rows);
/* Moves the tokens p0 .. p0 + n - 1 of one paged sequence (block table tab, I32 [MB] on the device,
 * MB * KV_BLOCK >= p0 + n) between the cache [T, Hkv, hd] and the contiguous x [n, Hkv, hd] (same
 * dtype): to_cache 0 gathers (x = the sequence's rows), 1 scatters (the rows = x). p0 is a host value
 * (prefill and beam search, outside graphs). Exact copies. */
void op_kv_pages(struct tensor *cache, struct tensor *x, const struct tensor *tab, int64_t p0, int to_cache);
/* op_attention with ATTN_CAUSAL-style positions read on the device: query row i is at absolute
 * position pos[i] (I32 [n], consecutive), keys 0..pos[n-1] of k, v [T, Hkv, hd] are used: rows
 * 0..pos[n-1] (tab NULL; pos[n-1] < T) or those positions through the block table tab (I32 [MB],
 * pos[n-1] < MB * KV_BLOCK). With ATTN_CAUSAL, row i sees keys 0..pos[i]; without it, all of
 * 0..pos[n-1]. The same launch serves every position, so it can sit in a replayed graph. */
void op_attention_pos(struct tensor *out, const struct tensor *q, const struct tensor *k, const struct tensor *v,
                      const struct tensor *pos, const struct tensor *tab, float scale, int flags);
/* One query row per sequence (the batched decode step of several slots): row i of q [B, H, hd] attends
 * causally to its own sequence only, the n_keys[i] first tokens of the paged sequence whose block table
 * is row seq[i] of tab (I32 [S, MB]; its last key is the row's own position) in k, v [T, Hkv, hd].
 * seq, n_keys: I32 [B] on the device (read there, so the launch does not depend on them). Equal to
 * op_attention(out[i], q[i], K_i, V_i, n_keys[i] - 1, scale, ATTN_CAUSAL) for each row, K_i and V_i
 * the sequence's rows gathered in order (the CPU twin is exactly that loop, so a row equals a one-token
 * step of its sequence alone bit for bit); CUDA: one launch (split-K over the keys, the heads of a
 * GQA group sharing each K/V load), within the attention tolerances. Every row needs
 * 1 <= n_keys[i] <= MB * KV_BLOCK and 0 <= seq[i] < S. out must not alias q, k or v. */
void op_attention_rows(struct tensor *out, const struct tensor *q, const struct tensor *k, const struct tensor *v,
                       const struct tensor *tab, const struct tensor *seq, const struct tensor *n_keys, float scale);
/* ids[i] = argmax of row i of x[n, V] (F32); ids I32 [n] on x's device (no host copy, no sync:
 * the next step's op_embed reads it). Same tie and NaN rules as op_argmax. */
void op_argmax_dev(const struct tensor *x, struct tensor *ids);
/* x[i] += d for an I32 tensor (advances positions inside a replayed decode step). */
void op_add_i32(struct tensor *x, int32_t d);


/* Lets kernels of the decode step on GPU d start while the previous kernel finishes (Hopper programmatic
 * dependent launch), a set of flags: DEV_OVERLAP_ALL every decode GEMV (they load their first weights early,
 * then wait for their input), DEV_OVERLAP_QUANT those of quantized weights only, DEV_OVERLAP_SMALL the small
 * kernels (norms, RoPE + KV append, SwiGLU, the decode attention, argmax, embedding, position add: their blocks
 * wait, resident, for the previous kernel's end), DEV_OVERLAP_EARLY with SMALL and without the GEMV flags: the
 * decode attention reads its positions and block table and loads its first keys of earlier steps before it
 * waits (the GEMV before it is then a full launch, so all of those were written before it started); 0 none.
 * The default is DEV_OVERLAP_SMALL | DEV_OVERLAP_EARLY (the GEMVs as dependents lost on the H200:
 * docs/PERF.md). Results are bit-identical either way. No effect on CPU devices or before sm_90. */
enum {
    DEV_OVERLAP_ALL = 1,
    DEV_OVERLAP_QUANT = 2,
    DEV_OVERLAP_SMALL = 4,
    DEV_OVERLAP_EARLY = 8,
    DEV_OVERLAP_DEFAULT = DEV_OVERLAP_SMALL | DEV_OVERLAP_EARLY
};
void dev_set_overlap(struct device d, int mode);

/* Whether one-token decode steps should run the fused decode ops (op_rmsnorm_matmul, op_rmsnorm_swiglu,
 * op_linear adding into the residual) rather than the plain sequence, for a weight like w on its device:
 * 1 yes, 0 no, -1 either (the CPU, whose fused ops are the plain ops). Results are the plain ops' either way
 * (up to the fp32 summation order of a different GEMV launch shape). A GPU answers by its mode: DEV_FUSE_AUTO
 * (the default) and DEV_FUSE_OFF say 0 (on the H200 the fused kernels, F16 and quantized, lost to the plain
 * sequence: docs/PERF.md), DEV_FUSE_ON says 1 (benches compare: `bench --fuse on`). */
enum { DEV_FUSE_AUTO = 0, DEV_FUSE_ON = 1, DEV_FUSE_OFF = 2, DEV_FUSE_SWIGLU = 3 };
void dev_set_fuse(struct device d, int mode);
int op_fused_preferred(const struct tensor *w);
/* Whether one-token steps of the plain sequence should run gate|up and SwiGLU as one op (op_rmsnorm_swiglu
 * with no norm: SwiGLU in the GEMV's epilogue, the same bits as op_matmul then op_silu_mul) for the joined
 * weight w on its device: 1 yes, 0 no. A GPU says 1 in modes DEV_FUSE_SWIGLU and DEV_FUSE_AUTO (H200 session
 * 16: docs/PERF.md), 0 in DEV_FUSE_OFF (and DEV_FUSE_ON, whose fused ops hold SwiGLU anyway); the CPU 0 (its
 * fused op is the two plain ops). */
int op_swiglu_preferred(const struct tensor *w);

/* Picks the kernel of GPU d's quantized decode GEMV (a developer's knob for benchmarks: 1 = the default;
 * the values are listed in src/cuda/cuda_quant.cuh and docs/CUDA.md, "The quantized decode GEMV"). Every
 * kernel computes the same op (backend.h's contract), so results differ only by fp32 summation order.
 * -1 when v is not a kernel (nothing changed), 0 otherwise; no effect on CPU devices. */
int dev_set_qgemv(struct device d, int v);

/* Starts (on = 1) or stops (0) the profiler's collection on GPU d (cudaProfilerStart / Stop: `ncu
 * --profile-from-start off` then profiles only the kernels launched in between, graph nodes included). A
 * developer's tool (bench --prof-step); no effect on CPU devices. */
void dev_profile(struct device d, int on);

/* Picks the kernel of GPU d's F16 matmuls of 2..16 tokens (the batched decode step; a developer's knob for
 * benchmarks): 0 cuBLAS (the default), 1 the tensor-core kernel of the quantized decode GEMV on F16 weights
 * (docs/CUDA.md, "The quantized decode GEMV"; where it applies: sm_80+ code, F16 x and w, k % 32 == 0; cuBLAS
 * elsewhere), 2.. that kernel in a forced launch shape, from one token on. Same op, so results differ only by
 * fp32 summation order. -1 when v is not a kernel (nothing changed), 0 otherwise; no effect on CPU devices. */
int dev_set_f16mma(struct device d, int v);

/* The key splits of GPU d's tensor-core decode attention (a developer's knob for benchmarks): s > 0 that many
 * (capped at the kernel's 99) wherever the automatic choice takes that kernel, 0 its rule (cuda_attention_decode.cu,
 * tc_splits). Same op: results differ only by fp32 summation order. No effect on CPU devices. */
void dev_set_attn_splits(struct device d, int s);

/* Which decode attention kernel GPU d runs (a developer's knob for benchmarks and tests): DEV_ATTN_AUTO the rule
 * (cuda_attention_decode.cu, dec_rules), the others that kernel wherever it can run the call (elsewhere the rule).
 * Same op: results differ only by fp32 summation order. No effect on CPU devices. */
enum dev_attn { DEV_ATTN_AUTO = 0, DEV_ATTN_SPLITK, DEV_ATTN_CLUSTER, DEV_ATTN_TC, DEV_ATTN_TCC };
void dev_set_attn_kernel(struct device d, enum dev_attn k);
/* A bound on the keys of the decode attention calls with device positions issued on GPU d from now on (0: none,
 * the cache capacity): what the kernel's shape is chosen for (a graph captured under it keeps that shape), not a
 * limit on what it reads (the kernels take the key count from the device). llm.c sets it around the decode
 * step's graph, one graph per bucket of context lengths. No effect on CPU devices. */
void dev_set_attn_keys(struct device d, int64_t keys);
/* The bound llm.c uses for its short-context decode graph, and the key count up to which the cluster-merged
 * tensor-core attention takes its short-context split count (cuda_attention_decode.cu, tcc_splits) */
#define DEV_ATTN_SHORT_KEYS 1024
/* The warps per block of GPU d's tensor-core decode attention (either merge): 1, 2, 4 or 8, 0 its rule (4 for the global merge, 8 for
 * the cluster merge). */
void dev_set_attn_warps(struct device d, int w);

/* ---- graphs: record the ops issued on one device, replay them ---- */
/* Between dev_graph_begin and dev_graph_end the ops issued on GPU d are recorded, not run. The
 * captured ops must not copy to or from the host, sync, or grow scratch buffers (run the same step
 * once eagerly first): each of those aborts. Kernel arguments are frozen at capture, so anything
 * that changes per step (positions, token ids, key counts) must be read from device tensors
 * (op_attention_pos, op_rope_qk, op_embed on device ids). CPU devices have no graphs: begin fails. */
struct dev_graph;
int dev_graph_begin(struct device d, struct err *e);
struct dev_graph *dev_graph_end(struct device d, struct err *e);
/* Enqueues one replay on the device's stream; returns without waiting. Fails (-1, nothing run)
 * when a scratch buffer the graph uses was reallocated since the capture (an eager op at larger
 * shapes ran in between): free it and capture again (no warm-up needed then). */
int dev_graph_launch(struct dev_graph *g, struct err *e);
/* 1 when dev_graph_launch would fail for that reason (a scratch buffer moved since the capture): capture
 * it again; 0 otherwise. */
int dev_graph_stale(const struct dev_graph *g);
void dev_graph_free(struct dev_graph *g);

/* ---- sampling on the device (sampler.h's selection inside the decode graph) ----
 * The state is an I32 tensor of sample_state_words(V) words (layout: sampler.h, SAMPLE_ST_*): the
 * parameters, the draw counter and the generated-token flags of one request live in device memory,
 * so the op's kernel arguments never change and one captured graph serves every request. */
struct sampler_params;
int64_t sample_state_words(int64_t vocab);
/* Starts a request: writes the state header (p, next draw index `draws`) and clears the flags.
 * A host -> device copy: outside graphs. */
void op_sample_begin(struct tensor *state, const struct sampler_params *p, uint64_t draws);
/* ids[i] = the next token of row i of logits x[n, V] (F32, not modified), graph-capturable (no host
 * copy). Row i uses the state row r = sel[i] (sel: I32 [n] on x's device, read there, distinct rows
 * in 0..S-1) of state [S, sample_state_words(V)]; sel NULL: r = i (then S == n). Per row, exactly
 * as one request alone: marks the token in ids[i] (the one fed into this step) as generated in
 * state r, then picks exactly as sampler_pick does on penalised logits (penalty only on flagged ids,
 * float ops as sampler_apply_penalty): greedy argmax (first index), or temperature, top-k (ties at
 * the k-th value kept), top-p and the multinomial draw sampler_uniform_at(seed, draw counter), with
 * the softmax sums in double in the host's order. More than SAMPLE_DEV_MAX_CAND top-k candidates:
 * ids[i] = -1 and status 1 (declined; the host picks from the same logits with the same draw).
 * Non-greedy rows advance their draw counter by one, declined or not. ids I32 [n] and state on x's
 * device. Bit-for-bit the CPU twin's token, except where CUDA's and glibc's double exp differ by an
 * ulp right at a draw boundary. */
void op_sample_dev(const struct tensor *x, struct tensor *ids, struct tensor *state, const struct tensor *sel);

/* ---- measurement ---- */
/* The sum, modulo 2^64, of x's bytes read as little-endian unsigned 64-bit words, returned to the
 * host (so it waits for the device). x: any plain dtype, contiguous, data 16-byte aligned (dev_alloc
 * gives that), tensor_nbytes(x) % 8 == 0. Every byte is read exactly once in one pass (CUDA: one
 * kernel of 16-byte loads over the whole tensor, a block reduction, one atomic add per block; CPU:
 * OpenMP threads over contiguous ranges). Integer addition is associative, so the twins agree
 * exactly whatever their order; membw.h times it to measure a device's read bandwidth and checks
 * the sum against a closed form, so a pass that read too little cannot pass for a fast one. */
uint64_t op_read_sum(const struct tensor *x);

#endif
