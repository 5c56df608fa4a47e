/* llm.c: the Llama-3 decoder forward (spec §9), written against backend.h only.
 * Order per layer: RMSNorm -> q,k,v -> RoPE(q,k) -> append k,v to the cache -> causal GQA
 * attention over the cache -> o_proj + residual -> RMSNorm -> SwiGLU MLP + residual.
 * A residual add and the RMSNorm after it run as one op (op_add_rmsnorm), also across a layer
 * boundary when the next layer is on the same device. One-token steps on a GPU read their position
 * and key count from the device (op_rope_qk, op_attention_pos), so llm_decode_greedy can capture
 * the whole step (embedding .. argmax) into a CUDA graph once and replay it for every token;
 * llm_decode_sample does the same with the sampler (op_sample_dev) in place of the argmax. */
#include "llm.h"

#include <math.h>
#include <string.h>

#include "backend.h"

/* Lays out the activation views of one device in cv (a counting carver only sizes them). */
static void devbuf_carve(struct llm_devbuf *b, struct tensor_carver *cv, const struct model_config *c, enum dtype act,
                         int64_t B, int64_t logit_rows, int kv_slots, int64_t ctx)
{
    const int64_t d = c->hidden_size, hd = c->head_dim;
    const int64_t qd = (int64_t)c->num_attention_heads * hd, kvd = (int64_t)c->num_key_value_heads * hd;
    b->h = tensor_carve(cv, act, B, d);
    b->xn = tensor_carve(cv, act, B, d);
    b->q = tensor_carve(cv, act, B, qd);
    b->k = tensor_carve(cv, act, B, kvd);
    b->v = tensor_carve(cv, act, B, kvd);
    b->att = tensor_carve(cv, act, B, qd);
    b->o = tensor_carve(cv, act, B, d);
    b->gate = tensor_carve(cv, act, B, c->intermediate_size);
    b->up = tensor_carve(cv, act, B, c->intermediate_size);
    b->pos = tensor_carve(cv, DTYPE_I32, B, 1);
    b->pos.ndim = 1;
    b->ids = tensor_carve(cv, DTYPE_I32, B, 1);
    b->ids.ndim = 1;
    b->bstep = tensor_carve(cv, DTYPE_I32, LLM_BSTEP_FIELDS * B, 1);
    b->bstep.ndim = 1;
    if (kv_slots > 0) { /* a device holding layers */
        const int64_t hkv = c->num_key_value_heads;
        b->kv_tab = tensor_carve(cv, DTYPE_I32, kv_slots, llm_kv_blocks(ctx, 1));
        b->kg = tensor_carve(cv, act, ctx, hkv * c->head_dim);
        b->vg = tensor_carve(cv, act, ctx, hkv * c->head_dim);
        b->kg = tensor_reshape(&b->kg, 3, ctx, hkv, (int64_t)c->head_dim);
        b->vg = tensor_reshape(&b->vg, 3, ctx, hkv, (int64_t)c->head_dim);
    }
    if (logit_rows > 0) {
        b->logits_all = tensor_carve(cv, DTYPE_F32, logit_rows, c->vocab_size);
        b->logits_act_all = tensor_carve(cv, act, logit_rows, c->vocab_size);
        b->logits = tensor_rows_view(&b->logits_all, 0, 1);
        b->logits_act = tensor_rows_view(&b->logits_act_all, 0, 1);
    }
}

size_t llm_views_bytes(const struct model_config *c, enum dtype act, int64_t max_batch, int with_logits)
{
    struct tensor_carver count = {.base = NULL, .dev = device_cpu()};
    struct llm_devbuf b;
    devbuf_carve(&b, &count, c, act, max_batch, with_logits, 0, 0);
    return count.raw;
}

int64_t llm_kv_blocks(int64_t ctx, int n_slots) { return (int64_t)n_slots * ((ctx + KV_BLOCK - 1) / KV_BLOCK); }

int64_t llm_kv_pool_blocks(int64_t ctx, int n_slots, int64_t kv_tokens)
{
    return kv_tokens > 0 ? (kv_tokens + KV_BLOCK - 1) / KV_BLOCK : llm_kv_blocks(ctx, n_slots);
}

int64_t llm_kv_layer_bytes(const struct model_config *c, enum dtype act, int64_t blocks)
{
    return 2 * blocks * KV_BLOCK * c->num_key_value_heads * (int64_t)c->head_dim * (int64_t)dtype_size(act);
}

size_t llm_kv_views_bytes(const struct model_config *c, enum dtype act, int64_t ctx, int n_slots)
{
    struct tensor_carver with = {.base = NULL, .dev = device_cpu()}, without = with;
    struct llm_devbuf b;
    devbuf_carve(&b, &with, c, act, 1, 0, n_slots, ctx);
    devbuf_carve(&b, &without, c, act, 1, 0, 0, 0);
    return with.raw - without.raw;
}

static int devbuf_init(struct llm_devbuf *b, const struct model_config *c, struct device dev, enum dtype act,
                       int64_t B, int64_t logit_rows, int kv_slots, int64_t ctx, struct err *e)
{
    struct tensor_carver count = {.base = NULL, .dev = dev};
    devbuf_carve(b, &count, c, act, B, logit_rows, kv_slots, ctx);
    b->dev = dev;
    b->bytes = count.off;
    b->mem = dev_alloc(dev, b->bytes, e);
    if (!b->mem) return -1;
    struct tensor_carver cv = {.base = b->mem, .dev = dev};
    devbuf_carve(b, &cv, c, act, B, logit_rows, kv_slots, ctx);
    return 0;
}

/* One-token steps run the fused decode ops when some layer's device prefers them for its weights and none
 * prefers the plain ops (op_fused_preferred: a GPU only when told, dev_set_fuse; the CPU takes either). */
static int llm_prefers_fused(const struct model *m)
{
    int yes = 0;
    for (int l = 0; l < m->cfg.num_hidden_layers; l++) {
        const int p = op_fused_preferred(&m->llm.layers[l].qkv);
        if (p == 0) return 0;
        yes |= p > 0;
    }
    return yes;
}

/* One-token steps of the plain sequence run gate|up and SwiGLU as one op when every layer's device prefers it
 * for its weights (op_swiglu_preferred) */
static int llm_prefers_swiglu(const struct model *m)
{
    for (int l = 0; l < m->cfg.num_hidden_layers; l++)
        if (!op_swiglu_preferred(&m->llm.layers[l].gate_up)) return 0;
    return m->cfg.num_hidden_layers > 0;
}

int llm_init(struct llm *s, const struct model *m, const struct model_placement *pl, enum dtype act, int64_t ctx,
             int64_t max_batch, struct err *e)
{
    return llm_init_slots(s, m, pl, act, ctx, max_batch, 1, 0, e);
}

int llm_init_slots(struct llm *s, const struct model *m, const struct model_placement *pl, enum dtype act,
                   int64_t ctx, int64_t max_batch, int n_slots, int64_t kv_tokens, struct err *e)
{
    memset(s, 0, sizeof *s);
    const struct model_config *c = &m->cfg;
    s->unfused = !llm_prefers_fused(m); /* LLM_FUSE_ROWS */
    s->swiglu = llm_prefers_swiglu(m);
    s->m = m;
    s->pl = pl;
    s->act = act;
    s->ctx = ctx;
    s->max_batch = max_batch;
    for (int i = 0; i < MODEL_MAX_DEVICES; i++) s->dev_pos[i] = -1;
    s->dev_tok = -1;
    if (ctx < 1 || ctx > c->max_position_embeddings)
        return err_set(e, "context %lld outside 1..max_position_embeddings (%d)", (long long)ctx,
                       c->max_position_embeddings);
    if (n_slots < 1 || (int64_t)n_slots * ctx > INT32_MAX)
        return err_set(e, "%d sequences of %lld tokens: need 1.. and at most 2^31-1 cache rows in all", n_slots,
                       (long long)ctx);
    const int64_t pool_blocks = llm_kv_pool_blocks(ctx, n_slots, kv_tokens);
    if (pool_blocks < llm_kv_blocks(ctx, 1) || pool_blocks * KV_BLOCK > INT32_MAX)
        return err_set(e, "--kv-tokens %lld: the KV pool must hold one --ctx %lld sequence and at most 2^31-1 rows",
                       (long long)kv_tokens, (long long)ctx);
    s->n_slots = n_slots;
    s->slot_past = calloc((size_t)n_slots, sizeof *s->slot_past);
    if (!s->slot_past) return err_set(e, "out of memory");
    s->max_blocks = llm_kv_blocks(ctx, 1);
    if (kvpool_init(&s->pool, (int)pool_blocks, KV_BLOCK, n_slots, (int)s->max_blocks, e)) goto fail;
    /* which logical devices hold any LLM unit (2: layers, with the block tables) */
    int used[MODEL_MAX_DEVICES] = {0};
    used[pl->embed] = used[pl->norm] = used[pl->lm_head] = 1;
    for (int i = 0; i < c->num_hidden_layers; i++) used[pl->layer[i]] = 2;
    for (int i = 0; i < pl->n_devices; i++) {
        if (!used[i]) continue;
        if (devbuf_init(&s->dev[i], c, pl->devs[i], act, max_batch, i == pl->lm_head ? n_slots : 0,
                        used[i] == 2 ? n_slots : 0, ctx, e))
            goto fail;
    }
    {
        const struct device dl = pl->devs[pl->lm_head];
        const int64_t words = sample_state_words(c->vocab_size);
        s->sample_mem = dev_alloc(dl, (size_t)n_slots * words * sizeof(int32_t), e);
        if (!s->sample_mem) { err_prefix(e, "sampler state"); goto fail; }
        s->sample_rows = tensor_make(DTYPE_I32, dl, s->sample_mem, 2, (int64_t)n_slots, words);
        s->sample_state = tensor_make(DTYPE_I32, dl, s->sample_mem, 1, words);
        struct sampler_params dp; /* defined contents until the first llm_sample_begin */
        sampler_defaults(&dp);
        dp.greedy = true; /* the cheapest pick for a row nobody started */
        for (int i = 0; i < n_slots; i++) llm_slot_sample_begin(s, i, &dp, 0);
        s->bgraph_max = (int)(n_slots < max_batch ? n_slots : max_batch);
        s->bgraph = calloc((size_t)(2 * (s->bgraph_max + 1)), sizeof *s->bgraph);
        s->bstage = malloc((size_t)LLM_BSTEP_FIELDS * (size_t)s->bgraph_max * sizeof *s->bstage);
        if (!s->bgraph || !s->bstage) { err_set(e, "out of memory"); goto fail; }
    }
    const int L = c->num_hidden_layers;
    s->cache = calloc((size_t)L, sizeof *s->cache);
    s->cache_mem = calloc((size_t)L, sizeof *s->cache_mem);
    if (!s->cache || !s->cache_mem) { err_set(e, "out of memory"); goto fail; }
    const int64_t kvd = (int64_t)c->num_key_value_heads * c->head_dim;
    for (int i = 0; i < L; i++) {
        struct device dev = pl->devs[pl->layer[i]];
        const int64_t T = pool_blocks * KV_BLOCK; /* the block pool's rows */
        size_t bytes = (size_t)T * (size_t)kvd * dtype_size(act);
        s->cache_mem[i] = dev_alloc(dev, 2 * bytes, e);
        if (!s->cache_mem[i]) {
            err_prefix(e, "KV cache of layer %d (%lld blocks of %d tokens for %d sequences of %lld tokens)", i,
                       (long long)pool_blocks, KV_BLOCK, n_slots, (long long)ctx);
            goto fail;
        }
        s->cache[i].k = tensor_make(act, dev, s->cache_mem[i], 3, T, (int64_t)c->num_key_value_heads, (int64_t)c->head_dim);
        s->cache[i].v = tensor_make(act, dev, (char *)s->cache_mem[i] + bytes, 3, T,
                                    (int64_t)c->num_key_value_heads, (int64_t)c->head_dim);
    }
    return 0;
fail:
    llm_free(s);
    return -1;
}

void llm_drop_graphs(struct llm *s)
{
    for (int i = 0; i < 6; i++) {
        dev_graph_free(s->graph[i].g);
        s->graph[i] = (struct llm_graph){0};
    }
    for (int i = 0; s->bgraph && i < 2 * (s->bgraph_max + 1); i++) {
        dev_graph_free(s->bgraph[i].g);
        s->bgraph[i] = (struct llm_graph){0};
    }
}

void llm_free(struct llm *s)
{
    if (!s->m) return;
    llm_drop_graphs(s);
    free(s->bgraph);
    free(s->bstage);
    if (s->sample_mem) dev_free(s->pl->devs[s->pl->lm_head], s->sample_mem);
    for (int i = 0; i < MODEL_MAX_DEVICES; i++)
        if (s->dev[i].mem) dev_free(s->dev[i].dev, s->dev[i].mem);
    if (s->cache_mem)
        for (int i = 0; i < s->m->cfg.num_hidden_layers; i++)
            if (s->cache_mem[i]) dev_free(s->pl->devs[s->pl->layer[i]], s->cache_mem[i]);
    free(s->cache);
    free(s->cache_mem);
    free(s->slot_past);
    kvpool_free(s->pool);
    memset(s, 0, sizeof *s);
}

void llm_set_profile_step(struct llm *s, int rows, int nth)
{
    s->prof_rows = rows > 0 ? rows : 0;
    s->prof_nth = nth;
    s->prof_seen = 0;
}

static void profile_all(struct llm *s, int on)
{
    for (int i = 0; i < s->pl->n_devices; i++) dev_profile(s->pl->devs[i], on);
}

void llm_set_unfused(struct llm *s, int on)
{
    if (s->unfused == (on != 0)) return;
    s->unfused = on != 0;
    llm_drop_graphs(s);
}

void llm_set_swiglu(struct llm *s, int on)
{
    if (s->swiglu == (on != 0)) return;
    s->swiglu = on != 0;
    llm_drop_graphs(s);
}

size_t llm_device_bytes(const struct llm *s, int i)
{
    size_t b = s->dev[i].bytes;
    const struct model_config *c = &s->m->cfg;
    for (int l = 0; l < c->num_hidden_layers; l++)
        if (s->pl->layer[l] == i) b += 2 * tensor_nbytes(&s->cache[l].k);
    return b;
}

/* ---- slots and their blocks ---- */

/* The count of tokens slot `slot` holds (slot 0: the session's n_past). */
static int64_t *slot_past(struct llm *s, int slot) { return slot == 0 ? &s->n_past : &s->slot_past[slot]; }

/* Logical devices holding layers, as a bit set. */
static unsigned layer_devices(const struct llm *s)
{
    unsigned m = 0;
    for (int l = 0; l < s->m->cfg.num_hidden_layers; l++) m |= 1u << s->pl->layer[l];
    return m;
}

/* Slot `slot`'s block table on device di, I32 [max_blocks] (a row of kv_tab). */
static struct tensor slot_tab(const struct llm *s, int di, int slot)
{
    struct tensor t = tensor_rows_view(&s->dev[di].kv_tab, slot, 1);
    return tensor_reshape(&t, 1, s->max_blocks);
}

/* Mirrors slot's host table on every device holding layers when it changed (outside any graph). */
static void kv_sync(struct llm *s, int slot)
{
    if (!kvpool_dirty(s->pool, slot)) return;
    int nb;
    const int32_t *t = kvpool_table(s->pool, slot, &nb);
    const unsigned devs = layer_devices(s);
    for (int i = 0; i < s->pl->n_devices && nb > 0; i++)
        if (devs >> i & 1) {
            struct tensor src = tensor_make(DTYPE_I32, device_cpu(), (void *)t, 1, (int64_t)nb);
            struct tensor dst = slot_tab(s, i, slot);
            dst.shape[0] = nb;
            op_copy(&dst, &src);
        }
    kvpool_clean(s->pool, slot);
}

/* Blocks for slot's first n tokens, and its table on the devices. */
static int kv_reserve(struct llm *s, int slot, int64_t n, struct err *e)
{
    if (kvpool_reserve(s->pool, slot, n, e)) return err_prefix(e, "sequence %d", slot);
    kv_sync(s, slot);
    return 0;
}

/* Keeps slot's first n tokens (and their blocks); a shared block it will write again is copied first. */
static void kv_truncate(struct llm *s, int slot, int64_t n)
{
    int32_t from, to;
    struct err e = {{0}};
    const int rc = kvpool_truncate(s->pool, slot, n, &from, &to, &e);
    /* a copy is needed only when a slot keeps part of a block another slot holds too: beam search and
     * bench truncate slot 0 alone (nothing else holds blocks, and the pool holds at least one slot's
     * max_blocks + its cached blocks); the scheduler's turns truncate to 0 */
    CHECKF(rc >= 0, "%s", e.msg);
    if (rc == 1)
        for (int l = 0; l < s->m->cfg.num_hidden_layers; l++) {
            struct llm_layer_cache *lc = &s->cache[l];
            struct tensor dk = tensor_rows_view(&lc->k, (int64_t)to * KV_BLOCK, KV_BLOCK);
            struct tensor sk = tensor_rows_view(&lc->k, (int64_t)from * KV_BLOCK, KV_BLOCK);
            struct tensor dv = tensor_rows_view(&lc->v, (int64_t)to * KV_BLOCK, KV_BLOCK);
            struct tensor sv = tensor_rows_view(&lc->v, (int64_t)from * KV_BLOCK, KV_BLOCK);
            op_copy(&dk, &sk);
            op_copy(&dv, &sv);
        }
    kv_sync(s, slot);
}

void llm_truncate(struct llm *s, int64_t n) { llm_slot_truncate(s, 0, n); }

int64_t llm_slot_len(const struct llm *s, int slot)
{
    CHECK(slot >= 0 && slot < s->n_slots);
    return slot == 0 ? s->n_past : s->slot_past[slot];
}

void llm_slot_truncate(struct llm *s, int slot, int64_t n)
{
    CHECK(slot >= 0 && slot < s->n_slots);
    int64_t *p = slot_past(s, slot);
    if (n > *p) return;
    *p = n < 0 ? 0 : n;
    kv_truncate(s, slot, *p); /* also the blocks reserved ahead (llm_slot_reserve) */
}

int llm_slot_reserve(struct llm *s, int slot, int64_t n, struct err *e)
{
    CHECK(slot >= 0 && slot < s->n_slots);
    const int64_t past = *slot_past(s, slot);
    if (n > past && llm_check_fit(s->ctx, past, n - past, e)) return err_prefix(e, "sequence %d", slot);
    if (kvpool_missing(s->pool, slot, n) > kvpool_available(s->pool)) return 1;
    return kv_reserve(s, slot, n, e);
}

int llm_slot_kv_copy(struct llm *s, int slot, int layer, int64_t p0, struct tensor *k, struct tensor *v, int to_cache,
                     struct err *e)
{
    CHECK(slot >= 0 && slot < s->n_slots && layer >= 0 && layer < s->m->cfg.num_hidden_layers);
    if (llm_check_fit(s->ctx, p0, k->shape[0], e)) return -1;
    if (to_cache && kv_reserve(s, slot, p0 + k->shape[0], e)) return -1;
    struct tensor tab = slot_tab(s, s->pl->layer[layer], slot);
    op_kv_pages(&s->cache[layer].k, k, &tab, p0, to_cache);
    op_kv_pages(&s->cache[layer].v, v, &tab, p0, to_cache);
    return 0;
}

int64_t llm_slot_match(struct llm *s, int slot, const uint64_t *keys, int n)
{
    CHECK(slot >= 0 && slot < s->n_slots);
    llm_slot_truncate(s, slot, 0);
    /* a request's own tokens beyond ctx cannot be in a table: at most max_blocks */
    const int k = kvpool_match(s->pool, slot, keys, n < s->max_blocks ? n : (int)s->max_blocks);
    kv_sync(s, slot);
    *slot_past(s, slot) = (int64_t)k * KV_BLOCK;
    return (int64_t)k * KV_BLOCK;
}

void llm_slot_publish(struct llm *s, int slot, const uint64_t *keys, int n)
{
    CHECK(slot >= 0 && slot < s->n_slots);
    const int64_t full = *slot_past(s, slot) / KV_BLOCK;
    kvpool_publish(s->pool, slot, keys, n < full ? n : (int)full);
}

static struct tensor rows(const struct tensor *t, int64_t n) { return tensor_rows_view(t, 0, n); }

/* Field f of the batched step of n rows in b's bstep region (llm.h: the field at f * n). */
static struct tensor bstep_view(const struct llm_devbuf *b, int f, int64_t n)
{
    return tensor_rows_view(&b->bstep, f * n, n);
}

/* Sets the position buffer of device di to pos0..pos0+n-1. */
static void set_positions(struct llm *s, int di, int64_t pos0, int64_t n)
{
    int32_t buf[1024];
    struct llm_devbuf *b = &s->dev[di];
    for (int64_t off = 0; off < n; off += 1024) {
        int64_t m = n - off < 1024 ? n - off : 1024;
        for (int64_t i = 0; i < m; i++) buf[i] = (int32_t)(pos0 + off + i);
        struct tensor src = tensor_make(DTYPE_I32, device_cpu(), buf, 1, m);
        struct tensor dst = tensor_rows_view(&b->pos, off, m);
        op_copy(&dst, &src);
    }
}

/* ys[i] = x · parts[i]^T for the row blocks parts[0..np) of the joined weight w (q|k|v, gate|up).
 * One token: one GEMV over w, whose output row is the parts' outputs side by side; ys[i] are then
 * re-pointed to consecutive slices starting at ys[0] (the device's q, k, v and gate, up buffers are
 * carved back to back, so they hold that row whatever max_batch is). More tokens: each output stays its
 * own [n, rows_i] matrix; a run of parts of equal rows (gate|up, k|v) is one op_matmul_stacked into
 * [parts, n, rows] from the run's first buffer on (re-pointed the same way; on the GPU one strided-batched
 * GEMM instead of one per part: H200 session 10, ncu of the 16-row step: k and v at 6.7 us each plus a
 * split-K reduction each), the others one op_matmul. The CPU computes each output element on its own
 * (backend_cpu_matmul.c), so one token and the stacked runs get the bits of the per-part calls (test_llm
 * test_joined_weights, test_batch). */
static void matmul_joined(struct tensor *const *ys, const struct tensor *x, const struct tensor *w,
                          const struct tensor *const *parts, int np)
{
    const int64_t n = x->shape[0];
    if (n > 1) {
        int64_t r0 = 0; /* the run's first row in w */
        for (int i = 0, j; i < np; i = j) {
            const int64_t o = parts[i]->shape[0];
            for (j = i + 1; j < np && parts[j]->shape[0] == o; j++) {}
            if (j - i == 1) {
                op_matmul(ys[i], x, parts[i], NULL);
            } else {
                const struct tensor *last = ys[j - 1];
                const char *end = (const char *)last->data + tensor_nbytes(last);
                struct tensor wv = tensor_rows_view(w, r0, (j - i) * o);
                struct tensor y3 = tensor_make(ys[i]->dtype, ys[i]->dev, ys[i]->data, 3, (int64_t)(j - i), n, o);
                CHECK(wv.data == parts[i]->data && (const char *)y3.data + tensor_nbytes(&y3) <= end);
                op_matmul_stacked(&y3, x, &wv, NULL);
                for (int q = i + 1; q < j; q++) ys[q]->data = (char *)ys[q - 1]->data + tensor_nbytes(ys[q - 1]);
            }
            r0 += (j - i) * o;
        }
        return;
    }
    const struct tensor *last = ys[np - 1];
    const char *end = (const char *)last->data + tensor_nbytes(last);
    struct tensor y = tensor_make(ys[0]->dtype, ys[0]->dev, ys[0]->data, 2, (int64_t)1, w->shape[0]);
    CHECK((const char *)y.data + tensor_nbytes(&y) <= end);
    op_matmul(&y, x, w, NULL);
    char *p = ys[0]->data;
    for (int i = 0; i < np; i++) {
        ys[i]->data = p;
        p += tensor_nbytes(ys[i]);
    }
}

/* Steps of at most LLM_FUSE_ROWS tokens (one-token decode, and the batched step of one slot) can use the
 * fused decode ops (where the devices prefer them, op_fused_preferred: none does by default;
 * llm_set_unfused(s, 0 / 1) forces either. On the H200 the engine's decode at context 512 ran 199.4 tok/s
 * fused against 212.4 with the plain ops for F16 weights (session 7, test_cuda_ops bench engine) and q4 360
 * against 415 (session 12, bench --fuse on / off), same tokens): each RMSNorm inside the GEMV that reads it (op_rmsnorm_matmul), each residual add
 * inside the GEMV that produces it (op_linear with res = h), SwiGLU inside gate|up (op_rmsnorm_swiglu):
 * per layer q|k|v, RoPE + KV append, attention, o, gate|up, down. Their definitions are the plain ops,
 * so the results are those of the plain sequence (bit for bit on the CPU and on the GPU: docs/CUDA.md).
 * The ops take up to 8 rows, but on a GPU 2..8 rows run cuBLAS and then the ops' plain-op path, where
 * the plain sequence is one launch shorter per norm (op_add_rmsnorm): steps of more tokens keep it
 * until a fused kernel beats cuBLAS there. llm.unfused forces the plain sequence everywhere. Within the plain
 * sequence a one-token step takes gate|up and SwiGLU as one op (op_rmsnorm_swiglu with no norm: SwiGLU in the
 * GEMV's epilogue, the bits of op_matmul then op_silu_mul for F16 weights) where the devices prefer it
 * (llm.swiglu, op_swiglu_preferred: GPUs by default; H200 session 16 +0.5 % fp16, +0.9 % q4). */
#define LLM_FUSE_ROWS 1
static int fused(const struct llm *s, int64_t n) { return n <= LLM_FUSE_ROWS && !s->unfused; }

/* One decoder layer; the device's position buffer already holds pos0..pos0+n-1. Unfused steps: when
 * xn_ready, the device's xn already holds this layer's input RMSNorm of h (fused into the previous
 * layer's last add), and when next_norm is not NULL the layer ends with xn = next_norm(h) fused into
 * the residual add. Fused steps (fused(s, n)) compute each norm where it is read: neither applies. */
static void layer_forward(struct llm *s, int layer, struct tensor *h, int64_t pos0, int xn_ready,
                          const struct tensor *next_norm, int slot)
{
    const struct model_config *c = &s->m->cfg;
    const struct llm_layer *w = &s->m->llm.layers[layer];
    struct llm_devbuf *b = &s->dev[w->device];
    const int64_t n = h->shape[0], hd = c->head_dim, nh = c->num_attention_heads, nkv = c->num_key_value_heads;
    CHECK(device_eq(h->dev, b->dev) && n <= s->max_batch && (slot < 0 || pos0 + n <= s->ctx));
    struct tensor xn = rows(&b->xn, n), q = rows(&b->q, n), k = rows(&b->k, n), v = rows(&b->v, n);
    struct tensor att = rows(&b->att, n), o = rows(&b->o, n), g = rows(&b->gate, n), u = rows(&b->up, n);
    /* (the batched step's positions are a field of its bstep region) */
    struct tensor pos = slot < 0 ? bstep_view(b, BSTEP_POS, n) : tensor_rows_view(&b->pos, 0, n);

    const int fuse = fused(s, n);
    CHECK(!fuse || (!xn_ready && !next_norm));
    /* the batched step (unfused): q|k|v as one matmul over the joined weight into the gate buffer (free
     * until the MLP), its rows split by op_rope_qkv_rows below (H200 session 10, ncu of the 64-row step: q
     * 13.3 us and k|v 11.2 us a layer as two GEMMs) */
    const int joined = slot < 0 && !fuse;
    struct tensor qkv_j = {0};
    struct tensor *qkv_out[3] = {&q, &k, &v};
    if (fuse) {
        op_rmsnorm_matmul(qkv_out, 3, h, &w->input_layernorm, c->rms_norm_eps, &w->qkv);
    } else {
        if (!xn_ready) op_rmsnorm(&xn, h, &w->input_layernorm, c->rms_norm_eps);
        if (joined) {
            CHECK(n * w->qkv.shape[0] <= b->gate.shape[0] * b->gate.shape[1]);
            qkv_j = tensor_make(b->gate.dtype, b->gate.dev, b->gate.data, 2, n, w->qkv.shape[0]);
            op_matmul(&qkv_j, &xn, &w->qkv, NULL);
        } else {
            const struct tensor *qkv_w[3] = {&w->q_proj, &w->k_proj, &w->v_proj};
            matmul_joined(qkv_out, &xn, &w->qkv, qkv_w, 3);
        }
    }
    struct tensor q3 = tensor_reshape(&q, 3, n, nh, hd), k3 = tensor_reshape(&k, 3, n, nkv, hd);
    struct tensor v3 = tensor_reshape(&v, 3, n, nkv, hd), att3 = tensor_reshape(&att, 3, n, nh, hd);
    struct llm_layer_cache *lc = &s->cache[layer];
    const float scale = 1.0f / sqrtf((float)hd);
    if (slot < 0) {
        /* the batched step (llm_decode_batch): row i is a token of slot kv_seq[i], at position pos[i]; its
         * k, v go to cache row kv_rows[i], its attention reads the kv_len[i] first tokens of its slot */
        struct tensor kr = bstep_view(b, BSTEP_KV_ROWS, n), ks = bstep_view(b, BSTEP_KV_SEQ, n);
        struct tensor kl = bstep_view(b, BSTEP_KV_LEN, n);
        if (joined) op_rope_qkv_rows(&q3, &qkv_j, &pos, c->rope_theta, &lc->k, &lc->v, &kr);
        else op_rope_qk_rows(&q3, &k3, &pos, c->rope_theta, &v3, &lc->k, &lc->v, &kr);
        op_attention_rows(&att3, &q3, &lc->k, &lc->v, &b->kv_tab, &ks, &kl, scale);
    } else {
        /* one slot's tokens at positions pos0..: RoPE of q and k and the KV append (through the slot's
         * block table) in one launch */
        struct tensor tab = slot_tab(s, w->device, slot);
        op_rope_qk(&q3, &k3, &pos, c->rope_theta, &v3, &lc->k, &lc->v, &tab);
        if (n <= 8) { /* decode: positions and key count read on the device (no host value: graph-safe) */
            op_attention_pos(&att3, &q3, &lc->k, &lc->v, &pos, &tab, scale, ATTN_CAUSAL);
        } else if (pos0 == 0) {
            /* prefill from position 0: the chunk's own keys are all of them, and op_rope_qk left k3 rotated
             * in place (the cache rows are copies of k3 and v3): the flash kernel reads them there, no
             * gather (H200 ncu, session 11: the two gathers took 13.6 us a layer at 512 tokens) */
            op_attention(&att3, &q3, &k3, &v3, 0, scale, ATTN_CAUSAL);
        } else {
            /* prefill after a prefix (a later chunk, a reused prefix): the slot's pos0 + n rows gathered in
             * order into kg, vg, then the tensor-core flash kernel over them, unchanged (host q_pos0). The
             * gather reads and writes 2 * (pos0 + n) * Hkv * hd values per layer in 16-byte words: at 4096
             * tokens of the 8B model 32 MiB of traffic, against the 436 MB of f16 weights every chunk's
             * GEMMs read per layer. The flash kernel reading the table itself is the alternative. */
            struct tensor kall = rows(&b->kg, pos0 + n), vall = rows(&b->vg, pos0 + n);
            op_kv_pages(&lc->k, &kall, &tab, 0, 0);
            op_kv_pages(&lc->v, &vall, &tab, 0, 0);
            op_attention(&att3, &q3, &kall, &vall, pos0, scale, ATTN_CAUSAL);
        }
    }
    if (fuse) { /* h += o_proj(att); h += down(swiglu(norm(h))) */
        op_linear(h, &att, &w->o_proj, NULL, LINEAR_NONE, h);
        op_rmsnorm_swiglu(&g, h, &w->post_attention_layernorm, c->rms_norm_eps, &w->gate_up);
        op_linear(h, &g, &w->down_proj, NULL, LINEAR_NONE, h);
        return;
    }
    op_matmul(&o, &att, &w->o_proj, NULL);
    op_add_rmsnorm(h, &xn, &o, &w->post_attention_layernorm, c->rms_norm_eps);
    if (n == 1 && s->swiglu) { /* SwiGLU in the gate|up GEMV's epilogue: the bits of the two ops below */
        op_rmsnorm_swiglu(&g, &xn, NULL, c->rms_norm_eps, &w->gate_up);
    } else {
        struct tensor *gu_out[2] = {&g, &u};
        const struct tensor *gu_w[2] = {&w->gate_proj, &w->up_proj};
        matmul_joined(gu_out, &xn, &w->gate_up, gu_w, 2);
        op_silu_mul(&g, &g, &u);
    }
    op_matmul(&o, &g, &w->down_proj, NULL);
    if (next_norm) op_add_rmsnorm(h, &xn, &o, next_norm, c->rms_norm_eps);
    else op_add(h, h, &o);
}

void llm_layer_forward(struct llm *s, int layer, struct tensor *h, int64_t pos0)
{
    set_positions(s, s->m->llm.layers[layer].device, pos0, h->shape[0]);
    s->dev_pos[s->m->llm.layers[layer].device] = -1; /* positions of a stage test, not of n_past */
    struct err e = {{0}};
    CHECKF(!kv_reserve(s, 0, pos0 + h->shape[0], &e), "%s", e.msg);
    layer_forward(s, layer, h, pos0, 0, NULL, 0);
}

/* The norm that layer l's last add can produce for the next consumer of h on the same device: the
 * next layer's input norm, or (one token, last layer) the final norm. NULL when h hops devices, and
 * for fused steps (each norm is computed by the GEMV that reads it). */
static const struct tensor *next_norm_of(const struct llm *s, int l, int64_t n)
{
    const struct model_placement *pl = s->pl;
    const int L = s->m->cfg.num_hidden_layers;
    if (fused(s, n)) return NULL;
    if (l + 1 < L) return pl->layer[l + 1] == pl->layer[l] ? &s->m->llm.layers[l + 1].input_layernorm : NULL;
    return n == 1 && pl->norm == pl->layer[l] ? &s->m->llm.norm : NULL;
}

struct tensor llm_embed(struct llm *s, const int32_t *ids, int64_t n)
{
    struct llm_devbuf *b = &s->dev[s->pl->embed];
    CHECK(n <= s->max_batch);
    struct tensor src = tensor_make(DTYPE_I32, device_cpu(), (void *)ids, 1, n);
    struct tensor idt = tensor_rows_view(&b->ids, 0, n);
    op_copy(&idt, &src);
    s->dev_tok = -1; /* ids[0] is now the chunk's first id, not a decode token */
    struct tensor h = rows(&b->h, n);
    op_embed(&h, &s->m->llm.embed_tokens, &idt);
    return h;
}

/* Moves h (n rows) into device di's h buffer unless it is already there. */
static struct tensor hop(struct llm *s, const struct tensor *h, int di, int64_t n)
{
    struct tensor dst = rows(&s->dev[di].h, n);
    if (dst.data != h->data) op_copy(&dst, h);
    return dst;
}

/* The final norm and lm_head of the r rows h (the last layer's output): their f32 logits, the lm_head
 * device's logits_all rows [r, V]. When xn_ready the norm device's xn already holds norm(h) (fused
 * into the last add). Device ops only. */
static struct tensor head_dev(struct llm *s, const struct tensor *h, int xn_ready)
{
    const struct model_config *c = &s->m->cfg;
    const struct model_placement *pl = s->pl;
    const int64_t r = h->shape[0];
    struct tensor hn = hop(s, h, pl->norm, r);
    struct tensor lg = rows(&s->dev[pl->lm_head].logits_all, r);
    struct tensor la = s->act == DTYPE_F32 ? lg : rows(&s->dev[pl->lm_head].logits_act_all, r);
    if (fused(s, r) && pl->norm == pl->lm_head) { /* the final norm inside the lm_head GEMV */
        struct tensor *out[1] = {&la};
        op_rmsnorm_matmul(out, 1, &hn, &s->m->llm.norm, c->rms_norm_eps, &s->m->llm.lm_head);
    } else {
        struct tensor xn = rows(&s->dev[pl->norm].xn, r);
        if (!xn_ready) op_rmsnorm(&xn, &hn, &s->m->llm.norm, c->rms_norm_eps); /* else fused into the last add */
        struct tensor xl = rows(&s->dev[pl->lm_head].xn, r);
        if (xl.data != xn.data) op_copy(&xl, &xn);
        op_matmul(&la, &xl, &s->m->llm.lm_head, NULL);
    }
    if (la.data != lg.data) op_copy(&lg, &la);
    return lg;
}

/* head_dev, then the logits to the host: logits_out [r, V]. */
static void head_logits(struct llm *s, const struct tensor *h, int xn_ready, float *logits_out)
{
    struct tensor lg = head_dev(s, h, xn_ready);
    struct tensor host = tensor_make(DTYPE_F32, device_cpu(), logits_out, 2, h->shape[0], lg.shape[1]);
    op_copy(&host, &lg);
}

static int forward_chunk(struct llm *s, int slot, const int32_t *ids, const struct tensor *embeds, int64_t n,
                         float *logits_out, struct err *e)
{
    const struct model_config *c = &s->m->cfg;
    const struct model_placement *pl = s->pl;
    struct tensor h;
    if (ids) h = llm_embed(s, ids, n);
    else h = hop(s, embeds, pl->embed, n);
    int64_t *past = slot_past(s, slot);
    const int64_t pos0 = *past;
    if (kv_reserve(s, slot, pos0 + n, e)) return -1;
    /* positions once per device and chunk (a host->device copy each) */
    int done[MODEL_MAX_DEVICES] = {0};
    for (int l = 0; l < c->num_hidden_layers; l++)
        if (!done[pl->layer[l]]++) {
            set_positions(s, pl->layer[l], pos0, n);
            s->dev_pos[pl->layer[l]] = n == 1 ? pos0 : -1;
        }
    int xn_ready = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const int moved = s->dev[pl->layer[l]].h.data != h.data;
        h = hop(s, &h, pl->layer[l], n);
        /* the hook may look at (or change) h, so no norm is fused across a layer it watches */
        const struct tensor *nn = s->on_layer ? NULL : next_norm_of(s, l, n);
        layer_forward(s, l, &h, pos0, xn_ready && !moved, nn, slot);
        xn_ready = nn != NULL;
        if (s->on_layer) s->on_layer(s->on_layer_ctx, l, &h);
    }
    *past += n;
    if (!logits_out) return 0;
    /* final norm and lm_head on the last row only */
    struct tensor last = tensor_rows_view(&h, n - 1, 1);
    head_logits(s, &last, xn_ready, logits_out);
    return 0;
}

int llm_check_fit(int64_t ctx, int64_t n_held, int64_t n_new, struct err *e)
{
    if (n_held + n_new <= ctx) return 0;
    return err_set(e, "this model's maximum context length is %lld tokens (--ctx): %lld tokens + %lld new do not fit "
                      "(over by %lld); raise --ctx or ask for fewer new tokens",
                   (long long)ctx, (long long)n_held, (long long)n_new, (long long)(n_held + n_new - ctx));
}

int llm_forward(struct llm *s, const int32_t *ids, const struct tensor *embeds, int64_t n, float *logits_out,
                struct err *e)
{
    return llm_slot_forward(s, 0, ids, embeds, n, logits_out, e);
}

int llm_slot_forward(struct llm *s, int slot, const int32_t *ids, const struct tensor *embeds, int64_t n,
                     float *logits_out, struct err *e)
{
    if (slot < 0 || slot >= s->n_slots)
        return err_set(e, "sequence %d outside 0..%d (--parallel %d)", slot, s->n_slots - 1, s->n_slots);
    if (n < 1) return err_set(e, "empty input");
    if (llm_check_fit(s->ctx, *slot_past(s, slot), n, e)) return -1;
    for (int64_t off = 0; off < n; off += s->max_batch) {
        int64_t m = n - off < s->max_batch ? n - off : s->max_batch;
        const int last = off + m == n;
        struct tensor ev;
        if (embeds) ev = tensor_rows_view(embeds, off, m);
        if (forward_chunk(s, slot, ids ? ids + off : NULL, embeds ? &ev : NULL, m, last ? logits_out : NULL, e))
            return -1;
    }
    return 0;
}

/* ---- greedy decode on the device, replayed as a CUDA graph ---- */

/* The embedding table is in host memory (devmap: when the GPU budget asks for it): a decode step's row
 * is gathered on the host and uploaded before the graph runs. */
static int host_embed(const struct llm *s) { return s->pl->devs[s->pl->embed].kind == DEVICE_CPU; }

/* The logical device whose ids[0] holds a graph step's token: the embedding's, or with the table on
 * the host the lm_head's (the argmax or the sampler writes it there). */
static int token_dev(const struct llm *s) { return host_embed(s) ? s->pl->lm_head : s->pl->embed; }

/* A decode step can be one CUDA graph when every LLM unit sits on logical devices of one and the
 * same GPU: the hops between its parts are device-to-device copies on that GPU's one stream. The
 * embedding table may be in host memory instead (its row is uploaded before the launch). */
static int graph_able(const struct llm *s)
{
    const struct model_placement *pl = s->pl;
    const struct device d = pl->devs[pl->lm_head];
    if (d.kind != DEVICE_CUDA || s->on_layer) return 0;
    if (!host_embed(s) && !device_eq(pl->devs[pl->embed], d)) return 0;
    if (!device_eq(pl->devs[pl->norm], d)) return 0;
    for (int l = 0; l < s->m->cfg.num_hidden_layers; l++)
        if (!device_eq(pl->devs[pl->layer[l]], d)) return 0;
    return 1;
}

/* What a graph-replayed decode step ends with (the index of its graph; llm_decode's modes). */
enum decode_mode {
    DECODE_ARGMAX = LLM_DECODE_ARGMAX, /* the argmax into ids[0] */
    DECODE_LOGITS = LLM_DECODE_LOGITS, /* nothing: the logits stay on the lm_head device */
    DECODE_SAMPLE = LLM_DECODE_SAMPLE, /* op_sample_dev into ids[0] */
};

/* One token: embedding of the id in token_dev's ids[0] (with the table on the host: layer 0's h, uploaded
 * before), the layers (hopping between logical devices of the one GPU), final norm, lm_head, the argmax
 * or the sampler back into ids[0], and every layer device's position + 1. No host copy and no
 * host-dependent argument, so it can be captured as a graph. */
static void decode_step_dev(struct llm *s, int n, int mode_)
{
    const enum decode_mode mode = (enum decode_mode)mode_;
    (void)n; /* one token */
    const struct model_config *c = &s->m->cfg;
    const struct model_placement *pl = s->pl;
    struct tensor idt = tensor_rows_view(&s->dev[token_dev(s)].ids, 0, 1);
    struct tensor h = rows(&s->dev[host_embed(s) ? pl->layer[0] : pl->embed].h, 1);
    if (!host_embed(s)) op_embed(&h, &s->m->llm.embed_tokens, &idt);
    int xn_ready = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const int moved = s->dev[pl->layer[l]].h.data != h.data;
        h = hop(s, &h, pl->layer[l], 1);
        const struct tensor *nn = next_norm_of(s, l, 1);
        layer_forward(s, l, &h, s->n_past, xn_ready && !moved, nn, 0);
        xn_ready = nn != NULL;
    }
    struct tensor lg = head_dev(s, &h, xn_ready); /* the lm_head device's logits (row 0 of logits_all) */
    /* same GPU: the lm_head part writes the token device's ids */
    if (mode == DECODE_ARGMAX) op_argmax_dev(&lg, &idt);
    else if (mode == DECODE_SAMPLE) op_sample_dev(&lg, &idt, &s->sample_state, NULL);
    const unsigned devs = layer_devices(s);
    for (int i = 0; i < s->pl->n_devices; i++)
        if (devs >> i & 1) {
            struct tensor pos = tensor_rows_view(&s->dev[i].pos, 0, 1);
            op_add_i32(&pos, 1);
        }
}

/* Captures step(s, n, mode) into gr (which holds none): recorded, not run. */
static int graph_capture(struct llm *s, struct llm_graph *gr, void (*step)(struct llm *, int, int), int n, int mode,
                         struct err *e)
{
    const struct device d = s->pl->devs[s->pl->embed];
    if (dev_graph_begin(d, e)) return -1;
    step(s, n, mode);
    return (gr->g = dev_graph_end(d, e)) ? 0 : -1;
}

/* Runs step(s, n, mode) (device ops only, nothing host-dependent) through the graph gr: eagerly the
 * first time (so every scratch buffer it needs is sized), captured the second time, replayed after.
 * A graph whose scratch moved since its capture (an eager op at larger shapes ran in between) is
 * captured again (the scratch is already large enough) and replayed. Enqueues; does not wait.
 * st (may be NULL): the eager steps and captures counted and timed (clock reads only). */
static int graph_run(struct llm *s, struct llm_graph *gr, void (*step)(struct llm *, int, int), int n, int mode,
                     struct llm_batch_stats *st, struct err *e)
{
    double t0 = time_now();
    if (gr->warm && !gr->g) { /* capture once, after one eager step */
        if (graph_capture(s, gr, step, n, mode, e)) return -1;
        if (st) st->captures++, st->t_capture += time_now() - t0;
    }
    if (!gr->g) {
        step(s, n, mode);
        gr->warm = 1;
        if (st) st->eager++, st->t_eager += time_now() - t0;
        return 0;
    }
    if (!dev_graph_launch(gr->g, e)) return 0;
    dev_graph_free(gr->g); /* stale */
    gr->g = NULL;
    t0 = time_now();
    if (graph_capture(s, gr, step, n, mode, e)) return -1;
    if (st) st->captures++, st->stale++, st->t_capture += time_now() - t0;
    return dev_graph_launch(gr->g, e);
}

/* The graph-replayed decode step; DECODE_ARGMAX leaves the argmax in token_dev's ids[0] (and
 * *next), DECODE_LOGITS leaves the logits on the lm_head device (copied to logits_out),
 * DECODE_SAMPLE the sampled token (*next; when it is -1, declined, the logits go to logits_out). */
static int decode_graph_step(struct llm *s, int32_t tok, enum decode_mode mode, int32_t *next, float *logits_out,
                             struct err *e)
{
    struct llm_devbuf *b = &s->dev[token_dev(s)];
    struct tensor idt = tensor_rows_view(&b->ids, 0, 1);
    /* the block of the new token (its table row rewritten, outside the graph, only when a block is added) */
    if (kv_reserve(s, 0, s->n_past + 1, e)) return -1;
    if (host_embed(s)) { /* the row of tok, gathered on the host, into layer 0's h (before the launch) */
        struct tensor hh = llm_embed(s, &tok, 1), hl = rows(&s->dev[s->pl->layer[0]].h, 1);
        op_copy(&hl, &hh);
    }
    /* the device's position and token buffers carry over from the previous step; upload (outside
     * any graph) only what the host changed: a prefill, a truncation, a token picked on the host */
    const unsigned devs = layer_devices(s);
    for (int i = 0; i < s->pl->n_devices; i++)
        if ((devs >> i & 1) && s->dev_pos[i] != s->n_past) {
            set_positions(s, i, s->n_past, 1);
            s->dev_pos[i] = s->n_past;
        }
    if (!host_embed(s) && s->dev_tok != tok) { /* (with the table on the host the graph does not read it) */
        struct tensor src = tensor_make(DTYPE_I32, device_cpu(), &tok, 1, (int64_t)1);
        op_copy(&idt, &src);
    }
    /* the attention's shape suits the keys a graph meets: one graph for steps of up to DEV_ATTN_SHORT_KEYS keys and
     * one for longer ones (dev_set_attn_keys: only the shape; the keys are read on the device at every replay) */
    const int longer = s->n_past + 1 > DEV_ATTN_SHORT_KEYS;
    const struct device gd = s->pl->devs[s->pl->lm_head]; /* every layer's GPU (graph_able) */
    dev_set_attn_keys(gd, longer ? 0 : DEV_ATTN_SHORT_KEYS);
    const int rc = graph_run(s, &s->graph[mode + 3 * longer], decode_step_dev, 1, mode, NULL, e);
    dev_set_attn_keys(gd, 0);
    if (rc) return -1;
    s->n_past += 1;
    for (int i = 0; i < s->pl->n_devices; i++)
        if (devs >> i & 1) s->dev_pos[i] = s->n_past;
    if (mode != DECODE_LOGITS) {
        int32_t t = -1;
        struct tensor dst = tensor_make(DTYPE_I32, device_cpu(), &t, 1, (int64_t)1);
        op_copy(&dst, &idt); /* 4 bytes, and the one sync of the step */
        s->dev_tok = t;      /* -1 (declined): the host's pick is uploaded at the next step */
        *next = t;
        if (t < 0) { /* the sampler declined; it left the logits untouched */
            struct tensor host = tensor_make(DTYPE_F32, device_cpu(), logits_out, 2, (int64_t)1,
                                             (int64_t)s->m->cfg.vocab_size);
            op_copy(&host, &s->dev[s->pl->lm_head].logits);
        }
    } else {
        struct tensor host = tensor_make(DTYPE_F32, device_cpu(), logits_out, 2, (int64_t)1,
                                         (int64_t)s->m->cfg.vocab_size);
        op_copy(&host, &s->dev[s->pl->lm_head].logits);
        s->dev_tok = tok; /* ids[0] still holds the token fed in */
    }
    return 0;
}

int llm_decode(struct llm *s, int32_t tok, enum llm_decode_mode mode, int32_t *next, float *logits_out, struct err *e)
{
    if (llm_check_fit(s->ctx, s->n_past, 1, e)) return -1;
    if (graph_able(s)) return decode_graph_step(s, tok, (enum decode_mode)mode, next, logits_out, e);
    /* eager: the logits through the host */
    if (mode == LLM_DECODE_SAMPLE) *next = -1; /* the caller samples on the host */
    if (mode != LLM_DECODE_ARGMAX) return llm_forward(s, &tok, NULL, 1, logits_out, e);
    const int V = s->m->cfg.vocab_size;
    float *lg = malloc((size_t)V * sizeof *lg);
    if (!lg) return err_set(e, "out of memory");
    int rc = llm_forward(s, &tok, NULL, 1, lg, e);
    if (!rc) {
        int best = 0;
        for (int j = 1; j < V; j++)
            if (lg[j] > lg[best]) best = j;
        *next = best;
    }
    free(lg);
    return rc;
}

void llm_sample_begin(struct llm *s, const struct sampler_params *p, uint64_t draws)
{
    llm_slot_sample_begin(s, 0, p, draws);
}

void llm_slot_sample_begin(struct llm *s, int slot, const struct sampler_params *p, uint64_t draws)
{
    CHECK(slot >= 0 && slot < s->n_slots);
    struct tensor row = tensor_rows_view(&s->sample_rows, slot, 1);
    op_sample_begin(&row, p, draws);
}


/* ---- several slots in one decode step ---- */

/* The batch's per-step values into s->bstage (llm.h's bstep layout: field f of row i at f * B + i), after
 * checking every row, and the blocks of the new tokens: 0 or -1 with e set. */
static int batch_rows(struct llm *s, const int *slots, const int32_t *toks, int B, struct err *e)
{
    const int64_t bmax = s->n_slots < s->max_batch ? s->n_slots : s->max_batch;
    if (B < 1 || B > bmax)
        return err_set(e, "a decode step of %d sequences: expected 1..%lld (--parallel %d, --max-batch %lld)", B,
                       (long long)bmax, s->n_slots, (long long)s->max_batch);
    for (int i = 0; i < B; i++) {
        const int sl = slots[i];
        if (sl < 0 || sl >= s->n_slots)
            return err_set(e, "sequence %d (row %d of the step) outside 0..%d (--parallel %d)", sl, i, s->n_slots - 1,
                           s->n_slots);
        for (int j = 0; j < i; j++)
            if (slots[j] == sl) return err_set(e, "sequence %d is twice in one decode step (rows %d and %d)", sl, j, i);
        if (llm_check_fit(s->ctx, *slot_past(s, sl), 1, e)) return err_prefix(e, "sequence %d", sl);
    }
    int32_t *t = s->bstage;
    for (int i = 0; i < B; i++) { /* checked: now the blocks of the new tokens */
        const int sl = slots[i];
        const int64_t past = *slot_past(s, sl);
        if (kv_reserve(s, sl, past + 1, e)) return -1;
        t[BSTEP_IDS * B + i] = toks[i];
        t[BSTEP_POS * B + i] = (int32_t)past;
        t[BSTEP_KV_ROWS * B + i] = (int32_t)kvpool_row(s->pool, sl, past);
        t[BSTEP_KV_SEQ * B + i] = sl;
        t[BSTEP_KV_LEN * B + i] = (int32_t)(past + 1);
        t[BSTEP_SLOT * B + i] = sl;
        t[BSTEP_PICKS * B + i] = toks[i]; /* the sampler overwrites them in place */
    }
    return 0;
}

/* Logical devices the batched step reads its bstep region on (the embedding's, the layers', lm_head's),
 * as a bit set. */
static unsigned bstep_devices(const struct llm *s)
{
    return layer_devices(s) | 1u << s->pl->embed | 1u << s->pl->lm_head;
}

/* s->bstage's B-row step into the bstep region of every device that reads it: one host -> device copy a
 * device (backend.h op_copy: through pinned memory, queued on the device's stream behind what is queued
 * already, so ahead of the step launched next; it does not wait). */
static void upload_bstep(struct llm *s, int B)
{
    const unsigned devs = bstep_devices(s);
    struct tensor src = tensor_make(DTYPE_I32, device_cpu(), s->bstage, 1, (int64_t)LLM_BSTEP_FIELDS * B);
    for (int i = 0; i < s->pl->n_devices; i++)
        if (devs >> i & 1) {
            struct tensor d = rows(&s->dev[i].bstep, (int64_t)LLM_BSTEP_FIELDS * B);
            op_copy(&d, &src);
        }
}

/* The batched step of B rows on the device (no host copy, no host-dependent argument: one graph per
 * B holds it): the embedding of the embed device's bstep ids, the layers with the row tables of each
 * device's bstep, the final norm and lm_head into the lm_head device's logits rows; with pick, the
 * sampler over those rows (row i with the state row bstep slot[i] of the lm_head device) into the
 * lm_head device's bstep picks (which held the fed ids). */
static void batch_step_dev(struct llm *s, int B, int pick)
{
    const struct model_config *c = &s->m->cfg;
    const struct model_placement *pl = s->pl;
    struct llm_devbuf *be = &s->dev[pl->embed], *bl = &s->dev[pl->lm_head];
    struct tensor idt = bstep_view(be, BSTEP_IDS, B), h = rows(&be->h, B);
    op_embed(&h, &s->m->llm.embed_tokens, &idt);
    int xn_ready = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const int moved = s->dev[pl->layer[l]].h.data != h.data;
        h = hop(s, &h, pl->layer[l], B);
        const struct tensor *nn = s->on_layer ? NULL : next_norm_of(s, l, B);
        layer_forward(s, l, &h, 0, xn_ready && !moved, nn, -1);
        xn_ready = nn != NULL;
        if (s->on_layer) s->on_layer(s->on_layer_ctx, l, &h);
    }
    struct tensor lg = head_dev(s, &h, xn_ready);
    if (pick) {
        struct tensor ids = bstep_view(bl, BSTEP_PICKS, B), sel = bstep_view(bl, BSTEP_SLOT, B);
        op_sample_dev(&lg, &ids, &s->sample_rows, &sel);
    }
}

int llm_decode_batch(struct llm *s, const int *slots, const int32_t *toks, int B, float *logits_out,
                     struct err *e)
{
    if (llm_decode_batch_launch(s, slots, toks, B, 0, e)) return -1;
    return llm_decode_batch_collect(s, NULL, NULL, logits_out, e);
}

int llm_decode_batch_pick(struct llm *s, const int *slots, const int32_t *toks, int B, const uint8_t *need,
                          int32_t *picks, float *logits_out, struct err *e)
{
    if (llm_decode_batch_launch(s, slots, toks, B, 1, e)) return -1;
    return llm_decode_batch_collect(s, need, picks, logits_out, e);
}

/* The graph of the batched step of B rows (pick: ending with the sampler). */
static struct llm_graph *bgraph_of(struct llm *s, int B, int pick)
{
    return &s->bgraph[(pick != 0) * (s->bgraph_max + 1) + B];
}

int llm_decode_batch_launch(struct llm *s, const int *slots, const int32_t *toks, int B, int pick, struct err *e)
{
    const double t0 = time_now();
    s->inflight_B = 0;
    /* every per-step value into the bstep regions (stable addresses: the graph reads them there). The
     * session's buffers (ids, pos) are not touched: dev_pos and dev_tok stay true. */
    if (batch_rows(s, slots, toks, B, e)) return -1;
    upload_bstep(s, B);
    pick = pick != 0;
    const double t1 = time_now();
    s->bstats.t_upload += t1 - t0;
    const int prof = s->prof_rows == B && ++s->prof_seen == s->prof_nth;
    if (prof) profile_all(s, 1);
    if (graph_able(s) && !s->batch_eager) {
        if (graph_run(s, bgraph_of(s, B, pick), batch_step_dev, B, pick, &s->bstats, e)) return -1;
    } else {
        batch_step_dev(s, B, pick);
        s->bstats.eager++;
        s->bstats.t_eager += time_now() - t1;
    }
    if (prof) profile_all(s, 0);
    for (int i = 0; i < B; i++) *slot_past(s, slots[i]) += 1;
    s->inflight_B = B;
    s->inflight_pick = pick;
    s->bstats.launches++;
    s->bstats.t_launch += time_now() - t0;
    return 0;
}

int llm_decode_batch_collect(struct llm *s, const uint8_t *need, int32_t *picks, float *logits_out, struct err *e)
{
    const int B = s->inflight_B;
    const int64_t V = s->m->cfg.vocab_size;
    if (B < 1) return err_set(e, "no batched decode step to collect");
    if (!s->inflight_pick != !picks) return err_set(e, "the batched step was launched %s picks", picks ? "without" : "with");
    s->inflight_B = 0;
    struct llm_devbuf *bl = &s->dev[s->pl->lm_head];
    struct tensor lg = rows(&bl->logits_all, B);
    if (!picks) {
        if (logits_out) {
            struct tensor host = tensor_make(DTYPE_F32, device_cpu(), logits_out, 2, (int64_t)B, V);
            op_copy(&host, &lg);
        }
        return 0;
    }
    struct tensor pk = tensor_make(DTYPE_I32, device_cpu(), picks, 1, (int64_t)B), dp = bstep_view(bl, BSTEP_PICKS, B);
    op_copy(&pk, &dp); /* 4 bytes a row, and the step's one wait */
    /* the rows the host picks: runs of consecutive rows in one copy each */
    for (int i = 0; i < B;) {
        if (!(need && need[i]) && picks[i] >= 0) {
            i++;
            continue;
        }
        int j = i + 1;
        while (j < B && ((need && need[j]) || picks[j] < 0)) j++;
        struct tensor src = tensor_rows_view(&lg, i, j - i);
        struct tensor host = tensor_make(DTYPE_F32, device_cpu(), logits_out + (size_t)i * V, 2, (int64_t)(j - i), V);
        op_copy(&host, &src);
        i = j;
    }
    return 0;
}

/* ---- warming the batched step's graphs ---- */

int llm_batch_graphs(const struct llm *s) { return graph_able(s) && !s->batch_eager && s->bgraph; }

/* What the warm-up's eager steps overwrite of the caller's state, copied to the host first and written
 * back after: cache row 0 of every layer (block 0's first row: every warm-up row writes its k, v there
 * and attends to it alone), slot 0's block table on every layer device (its entry 0 points at block 0
 * during the warm-up), and the device sampler's state rows (rows 0..B-1 draw). The logits rows and the
 * bstep regions are per-step buffers (no step is in flight), the scratch is scratch. */
struct warm_saved {
    struct tensor *k, *v;                                  /* [L] of [1, Hkv, hd] */
    struct tensor tab[MODEL_MAX_DEVICES];                  /* [1, max_blocks] on each layer device */
    struct tensor sample;                                  /* [n_slots, words] */
};

/* The host copies' views in cv (a counting carver only sizes them): one function sizes and lays out. */
static void warm_carve(struct llm *s, struct warm_saved *w, struct tensor_carver *cv)
{
    const struct model_config *c = &s->m->cfg;
    const int64_t hkv = c->num_key_value_heads, hd = c->head_dim;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        w->k[l] = tensor_carve(cv, s->act, 1, hkv * hd);
        w->v[l] = tensor_carve(cv, s->act, 1, hkv * hd);
        w->k[l] = tensor_reshape(&w->k[l], 3, (int64_t)1, hkv, hd);
        w->v[l] = tensor_reshape(&w->v[l], 3, (int64_t)1, hkv, hd);
    }
    const unsigned devs = layer_devices(s);
    for (int i = 0; i < s->pl->n_devices; i++)
        if (devs >> i & 1) w->tab[i] = tensor_carve(cv, DTYPE_I32, 1, s->max_blocks);
    w->sample = tensor_carve(cv, DTYPE_I32, s->sample_rows.shape[0], s->sample_rows.shape[1]);
}

/* back 0: the device's values into the host copies (waits for the device); 1: written back (queued). */
static void warm_copy(struct llm *s, struct warm_saved *w, int back)
{
    for (int l = 0; l < s->m->cfg.num_hidden_layers; l++) {
        struct tensor k = tensor_rows_view(&s->cache[l].k, 0, 1), v = tensor_rows_view(&s->cache[l].v, 0, 1);
        op_copy(back ? &k : &w->k[l], back ? &w->k[l] : &k);
        op_copy(back ? &v : &w->v[l], back ? &w->v[l] : &v);
    }
    const unsigned devs = layer_devices(s);
    for (int i = 0; i < s->pl->n_devices; i++)
        if (devs >> i & 1) {
            struct tensor t = tensor_rows_view(&s->dev[i].kv_tab, 0, 1);
            op_copy(back ? &t : &w->tab[i], back ? &w->tab[i] : &t);
        }
    op_copy(back ? &s->sample_rows : &w->sample, back ? &w->sample : &s->sample_rows);
}

int llm_warm_batch_graphs(struct llm *s, int pick, struct err *e)
{
    const int graphs = llm_batch_graphs(s);
    if (!graphs && !s->warm_test) return 0;
    if (s->inflight_B) return err_set(e, "warming the batched graphs: a batched step is in flight (collect it first)");
    const double t0 = time_now();
    const int bmax = s->bgraph_max;
    pick = pick != 0;
    const size_t L = (size_t)s->m->cfg.num_hidden_layers;
    struct warm_saved w = {.k = calloc(2 * L, sizeof *w.k)};
    struct tensor_carver count = {.base = NULL, .dev = device_cpu()};
    void *mem = NULL;
    if (w.k) {
        w.v = w.k + L;
        warm_carve(s, &w, &count);
        mem = malloc(count.off);
    }
    if (!mem) {
        free(w.k);
        return err_set(e, "out of memory (%zu bytes to warm the batched graphs)", count.off);
    }
    struct tensor_carver cv = {.base = mem, .dev = device_cpu()};
    warm_carve(s, &w, &cv);
    warm_copy(s, &w, 0);
    const unsigned devs = layer_devices(s);
    const int32_t zero = 0;
    for (int i = 0; i < s->pl->n_devices; i++)
        if (devs >> i & 1) { /* slot 0's first block is block 0 while warming */
            struct tensor src = tensor_make(DTYPE_I32, device_cpu(), (void *)&zero, 1, (int64_t)1);
            struct tensor d = slot_tab(s, i, 0);
            d = tensor_rows_view(&d, 0, 1);
            op_copy(&d, &src);
        }
    /* 1. one eager step of every B whose graph is missing or stale, largest first: the scratch buffers
     * reach the size every B needs before the first capture (a capture cannot grow them) */
    int32_t *t = s->bstage;
    for (int B = bmax; B >= 1; B--) {
        struct llm_graph *gr = bgraph_of(s, B, pick);
        if (graphs && gr->g && !dev_graph_stale(gr->g)) continue;
        for (int i = 0; i < B; i++) {
            t[BSTEP_IDS * B + i] = t[BSTEP_POS * B + i] = t[BSTEP_KV_ROWS * B + i] = t[BSTEP_KV_SEQ * B + i] = 0;
            t[BSTEP_PICKS * B + i] = 0;
            t[BSTEP_KV_LEN * B + i] = 1;
            t[BSTEP_SLOT * B + i] = i; /* distinct state rows (op_sample_dev), saved above */
        }
        upload_bstep(s, B);
        batch_step_dev(s, B, pick);
        gr->warm = 1;
        s->bstats.warm_eager++;
    }
    /* 2. the captures (recorded, not run), after every eager step: none of them is stale */
    int rc = 0;
    for (int B = 1; B <= bmax && graphs && !rc; B++) {
        struct llm_graph *gr = bgraph_of(s, B, pick);
        if (gr->g && dev_graph_stale(gr->g)) {
            dev_graph_free(gr->g);
            gr->g = NULL;
        }
        if (gr->g) continue;
        rc = graph_capture(s, gr, batch_step_dev, B, pick, e);
        s->bstats.warm_captures += !rc;
    }
    warm_copy(s, &w, 1); /* queued behind the eager steps */
    free(mem);
    free(w.k);
    s->bstats.t_warm += time_now() - t0;
    return rc;
}
