/* engine.c: opening a model folder (config, checkpoint, placement, weights, tokenizer) and the
 * generation loop. Placement always comes from the planner (devmap.h). */
#include "engine_impl.h"

#include <math.h>
#include <string.h>

#include <cJSON.h>

#include "backend.h"
#include "devmap.h"
#include "safetensors.h"
#include "tokenizer.h"

void engine_options_default(struct engine_options *o)
{
    memset(o, 0, sizeof *o);
    o->device = "auto";
    o->dtype = DTYPE_F16;
}

static int mem_free(enum device_kind kind, int ordinal, int64_t *free_bytes, void *ctx, struct err *e)
{
    (void)ctx;
    size_t fr = 0, tot = 0;
    if (dev_mem_info(kind == DEVICE_CPU ? device_cpu() : device_cuda(ordinal), &fr, &tot, e)) return -1;
    *free_bytes = (int64_t)fr;
    return 0;
}

/* The one placement path: plans the placement from the device flags (o->devmap; none given: the
 * planner's defaults on the one device --device picks), prints it (before anything is loaded), and
 * fails with the per-device table when the model does not fit. o->ctx and o->max_batch, when set,
 * override the planner's --ctx and --max-batch; their defaults live in devmap_params_default. */
static int plan_devices(struct engine *g, const struct engine_options *o, struct err *e)
{
    struct backend_info bi;
    backend_query(&bi);
    struct devmap_opts dm;
    if (o->devmap) dm = *o->devmap;
    else devmap_opts_init(&dm);
    const char *dn = o->device ? o->device : "auto";
    if (!strcmp(dn, "cpu")) {
        dm.n_gpus = 0;
    } else if (!strcmp(dn, "cuda") || !strcmp(dn, "gpu")) {
        if (!bi.cuda_built) return err_set(e, "--device cuda: this binary was built without CUDA (make CUDA=1)");
        if (bi.n_gpus < 1) return err_set(e, "--device cuda: no CUDA device is visible");
    } else if (strcmp(dn, "auto")) {
        return err_set(e, "--device: expected auto, cpu or cuda, got '%s'", dn);
    }
    if (!o->devmap && dm.n_gpus < 0) { /* no device flags: the first GPU when there is one, else the CPU */
        dm.n_gpus = bi.n_gpus > 0;
        dm.gpus[0] = 0;
    }
    if (o->ctx > 0) dm.params.ctx = o->ctx;
    if (o->parallel > 0) dm.params.kv_seqs = o->parallel;
    if (o->max_batch > 0) dm.params.max_batch_tokens = (int)(o->max_batch < INT32_MAX ? o->max_batch : INT32_MAX);
    struct devmap_device dev[DEVMAP_MAX_DEVICES];
    int n_dev = 0;
    if (devmap_devices(&dm, bi.n_gpus, mem_free, NULL, dev, &n_dev, e)) return -1;
    for (int i = 0; i < n_dev; i++)
        if (dev[i].kind == DEVICE_CUDA && dev[i].ordinal >= bi.n_gpus)
            return err_set(e, "GPU %d is not visible (%d CUDA device%s)", dev[i].ordinal, bi.n_gpus,
                           bi.n_gpus == 1 ? "" : "s");
    struct devmap_assign map, *mp = NULL;
    if (dm.device_map[0]) {
        if (devmap_map_load(&map, dm.device_map, &g->cfg, dev, n_dev, e)) return -1;
        mp = &map;
    }
    dm.params.act_bytes = dm.params.weight_bytes = (int)dtype_size(o->dtype);
    g->plan = calloc(1, sizeof *g->plan);
    if (!g->plan) return err_set(e, "out of memory");
    if (devmap_plan(&g->cfg, &dm.params, dev, n_dev, mp, g->plan, e)) {
        if (!g->plan->n_dev) return -1; /* a parameter the planner refused: nothing was planned */
        devmap_print(stderr, g->plan);
        return err_prefix(e, "the model does not fit (nothing was loaded)");
    }
    if (!o->quiet) devmap_print(stderr, g->plan);
    devmap_placement(g->plan, &g->pl, g->layer_dev);
    return 0;
}

int engine_is_stop(const struct engine *g, int32_t tok)
{
    for (int i = 0; i < g->n_stop; i++)
        if (g->stop[i] == tok) return 1;
    return 0;
}

static int stop_add(struct engine *g, int32_t id, const char *from, struct err *e)
{
    if (id < 0 || id >= g->cfg.vocab_size)
        return err_set(e, "%s: stop id %d is outside the vocabulary (0..%d)", from, id, g->cfg.vocab_size - 1);
    for (int i = 0; i < g->n_stop; i++)
        if (g->stop[i] == id) return 0;
    if (g->n_stop == ENGINE_MAX_STOP) return err_set(e, "%s: more than %d stop ids", from, ENGINE_MAX_STOP);
    g->stop[g->n_stop++] = id;
    return 0;
}

/* The stop ids, as the seed's chat() gathers them (spec §8): config.json's eos_token_id,
 * generation_config.json's eos_token_id (a number or a list; the file is optional), and the
 * tokenizer's <|eot_id|> when the folder has a tokenizer that knows it. */
static int stop_ids_load(struct engine *g, const char *dir, struct err *e)
{
    if (stop_add(g, g->cfg.eos_token_id, "config.json eos_token_id", e)) return -1;
    char path[4096];
    if (path_join(path, sizeof path, dir, "generation_config.json", e)) return -1;
    FILE *f = fopen(path, "rb");
    if (f) {
        fclose(f);
        char *text = NULL;
        if (read_file(path, 1 << 20, &text, NULL, e)) return -1;
        cJSON *r = cJSON_Parse(text);
        free(text);
        if (!r || !cJSON_IsObject(r)) {
            cJSON_Delete(r);
            return err_set(e, "%s: not a JSON object", path);
        }
        const cJSON *eos = cJSON_GetObjectItemCaseSensitive(r, "eos_token_id");
        int rc = 0;
        if (cJSON_IsNumber(eos)) {
            rc = stop_add(g, (int32_t)eos->valuedouble, path, e);
        } else if (cJSON_IsArray(eos)) {
            for (const cJSON *x = eos->child; x && !rc; x = x->next)
                rc = cJSON_IsNumber(x) ? stop_add(g, (int32_t)x->valuedouble, path, e)
                                       : err_set(e, "%s: eos_token_id holds a non-number", path);
        } else if (eos && !cJSON_IsNull(eos)) {
            rc = err_set(e, "%s: eos_token_id is neither a number nor a list", path);
        }
        cJSON_Delete(r);
        if (rc) return -1;
    }
    int32_t eot = g->tok ? tokenizer_token_id(g->tok, "<|eot_id|>") : -1;
    if (eot >= 0 && stop_add(g, eot, "tokenizer.json <|eot_id|>", e)) return -1;
    return 0;
}

int engine_open(struct engine **out, const struct engine_options *o, struct err *e)
{
    *out = NULL;
    double t0 = time_now();
    struct engine *g = calloc(1, sizeof *g);
    if (!g) return err_set(e, "out of memory");
    if (!o->model_dir) { err_set(e, "no model folder given (--model DIR)"); goto fail; }
    if (config_load(&g->cfg, o->model_dir, e)) goto fail;
    if (preprocessor_config_load(&g->pp, &g->cfg, o->model_dir, e)) goto fail;
    /* the tokenizer first (seconds before the weights): its ids must all have an embedding row */
    char tp[4096];
    if (path_join(tp, sizeof tp, o->model_dir, "tokenizer.json", NULL) == 0) {
        FILE *f = fopen(tp, "rb");
        if (f) {
            fclose(f);
            if (tokenizer_load(&g->tok, o->model_dir, e)) goto fail;
            if (tokenizer_check_ids(g->tok, g->cfg.vocab_size, e)) {
                err_prefix(e, "%s", tp);
                goto fail;
            }
        }
    }
    if (stop_ids_load(g, o->model_dir, e)) goto fail;
    if (safetensors_open_dir(&g->st, o->model_dir, e)) goto fail;
    g->threads = o->threads;
    backend_set_threads(o->threads);

    const int L = g->cfg.num_hidden_layers;
    g->layer_dev = calloc((size_t)L, sizeof *g->layer_dev);
    if (!g->layer_dev) { err_set(e, "out of memory"); goto fail; }
    if (plan_devices(g, o, e)) goto fail;
    g->pl.layer = g->layer_dev;
    if (model_load(&g->model, &g->cfg, g->st, &g->pl, o->dtype, &o->progress, e)) goto fail;
    int64_t ctx = g->plan->params.ctx, mb = g->plan->params.max_batch_tokens;
    if (mb > ctx) mb = ctx; /* as the planner counts it */
    if (llm_init_slots(&g->llm, &g->model, &g->pl, o->dtype, ctx, mb, g->plan->params.kv_seqs,
                       g->plan->params.kv_tokens, e))
        goto fail;
    g->no_prefix_reuse = o->no_prefix_reuse;
    /* the image path and its scratch, as the plan reserved it */
    if (mm_init(&g->mm, &g->cfg, &g->pp, &g->model, &g->pl, o->dtype, g->plan->params.max_pieces,
                g->plan->params.max_patches, e))
        goto fail;
    g->load_seconds = time_now() - t0;
    *out = g;
    return 0;
fail:
    engine_close(g);
    return -1;
}

void engine_close(struct engine *g)
{
    if (!g) return;
    mm_free(&g->mm);
    llm_free(&g->llm);
    model_free(&g->model);
    if (g->tok) tokenizer_free(g->tok);
    safetensors_close(g->st);
    free(g->layer_dev);
    free(g->plan);
    free(g);
}

/* The logits of a step must be finite: NaN or inf means broken weights (or an overflow), and the
 * sampler would pick garbage from them silently. One pass over V floats, next to the sampler's. */
static int check_logits(const float *x, int V, const char *where, struct err *e)
{
    for (int i = 0; i < V; i++)
        if (!isfinite(x[i]))
            return err_set(e, "the model computed a non-finite logit (%g for token %d) %s: the weights are broken "
                              "(NaN or inf) or the activations overflowed; nothing was generated from it",
                           (double)x[i], i, where);
    return 0;
}

void engine_thread_init(const struct engine *g) { backend_set_threads(g->threads); }

int engine_check_ids(const struct engine *g, const int32_t *ids, int64_t n, struct err *e)
{
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= g->cfg.vocab_size)
            return err_set(e, "token id %d at position %lld is outside the vocabulary (0..%d)", ids[i], (long long)i,
                           g->cfg.vocab_size - 1);
    return 0;
}

int engine_generate(struct engine *g, const struct engine_gen *q, int32_t *out, int *n_out,
                    struct engine_gen_stats *stats, struct err *e)
{
    const int V = g->cfg.vocab_size;
    const int32_t *ids = q->ids;
    const int64_t n = q->n;
    const int max_new = q->max_new;
    const struct sampler_params *sp = q->sp;
    *n_out = 0;
    if (max_new < 0) return err_set(e, "max new tokens must be >= 0");
    if (ids && engine_check_ids(g, ids, n, e)) return -1; /* the embedding lookup must never see them */
    if (llm_check_fit(g->llm.ctx, g->llm.n_past + n, max_new, e)) return -1;
    float *logits = malloc((size_t)V * sizeof *logits);
    struct sampler s;
    if (!logits || sampler_init(&s, sp, V)) {
        free(logits);
        return err_set(e, "out of memory");
    }
    int rc = 0;
    double t0 = time_now();
    if (llm_forward(&g->llm, ids, q->embeds, n, logits, e)) { rc = -1; goto done; }
    if (check_logits(logits, V, "for the prompt", e)) { rc = -1; goto done; }
    double t1 = time_now();
    if (stats) { stats->n_prompt = n; stats->t_prefill = t1 - t0; }
    /* Pure greedy (no repetition penalty) keeps the argmax on the device: a CUDA-graph step per
     * token when the LLM is on one GPU (llm_decode_greedy). Greedy with a penalty and top-k
     * sampling (top_k <= SAMPLE_DEV_MAX_CAND) run the sampler on the device (llm_decode_sample):
     * the same tokens as the host sampler, whose state follows along (sampler_record, one draw per
     * sampled token) so that a token the device declines is picked on the host with the same draw.
     * Otherwise logits come to the host. */
    const int device_greedy = sp->greedy && sp->repetition_penalty == 1.0f;
    const int device_sample = !device_greedy && !g->llm.host_sampling && sampler_device_ok(sp);
    int32_t tok = sampler_sample(&s, logits);
    if (device_sample && max_new > 1) llm_sample_begin(&g->llm, sp, s.draws);
    for (int i = 0; i < max_new; i++) {
        out[(*n_out)++] = tok;
        if (q->cb && q->cb(q->cb_ctx, tok)) break;
        if ((!q->ignore_eos && engine_is_stop(g, tok)) || i + 1 == max_new) break;
        if (device_greedy) {
            int32_t next;
            if (llm_decode_greedy(&g->llm, tok, &next, e)) { rc = -1; break; }
            tok = next;
        } else if (device_sample) {
            int32_t next;
            if (llm_decode_sample(&g->llm, tok, &next, logits, e)) { rc = -1; break; }
            if (next >= 0) {
                sampler_record(&s, next);
                if (!sp->greedy) s.draws++;
                tok = next;
            } else {
                /* declined (or no graph): the host, same draw */
                if (check_logits(logits, V, "at a decode step", e)) { rc = -1; break; }
                tok = sampler_sample(&s, logits);
            }
        } else {
            if (llm_decode_logits(&g->llm, tok, logits, e)) { rc = -1; break; }
            if (check_logits(logits, V, "at a decode step", e)) { rc = -1; break; }
            tok = sampler_sample(&s, logits);
        }
    }
    if (stats) { stats->n_gen = *n_out; stats->t_decode = time_now() - t1; }
done:
    sampler_free(&s);
    free(logits);
    return rc;
}

int engine_encode_images(struct engine *g, const struct image *images, int n_images, struct chat_grid *grids,
                         struct tensor *out, int *n_pieces, struct err *e)
{
    return mm_encode(&g->mm, images, n_images, grids, out, n_pieces, e);
}

int engine_merge_embeddings(struct engine *g, const int32_t *ids, int n, const struct tensor *img_tokens,
                            int n_pieces, struct tensor *out, struct err *e)
{
    const struct model_config *c = &g->cfg;
    const struct device edev = g->pl.devs[g->pl.embed];
    if (engine_check_ids(g, ids, n, e)) return -1;
    *out = tensor_make(g->llm.act, edev, NULL, 2, (int64_t)n, (int64_t)c->hidden_size);
    if (!(out->data = dev_alloc(edev, tensor_nbytes(out), e))) return -1;
    for (int64_t off = 0; off < n; off += g->llm.max_batch) {
        int64_t m = n - off < g->llm.max_batch ? n - off : g->llm.max_batch;
        struct tensor h = llm_embed(&g->llm, ids + off, m);
        struct tensor dst = tensor_rows_view(out, off, m);
        op_copy(&dst, &h);
    }
    struct chat_bound *b = NULL;
    int nb = 0;
    if (g->tok && chat_image_bounds(g->tok, ids, n, &b, &nb, e)) goto fail;
    if (nb != n_pieces) {
        err_set(e, "prompt has %d image placeholders but %d image pieces were encoded", nb, n_pieces);
        free(b);
        goto fail;
    }
    for (int k = 0; k < nb; k++) {
        if (b[k].end - b[k].start != c->query_num) {
            err_set(e, "image placeholder %d spans %d tokens, expected query_num = %d", k, b[k].end - b[k].start,
                    c->query_num);
            free(b);
            goto fail;
        }
        struct tensor src = tensor_rows_view(img_tokens, (int64_t)k * c->query_num, c->query_num);
        struct tensor dst = tensor_rows_view(out, b[k].start, c->query_num);
        op_copy(&dst, &src);
    }
    free(b);
    return 0;
fail:
    dev_free(out->dev, out->data);
    out->data = NULL;
    return -1;
}

/* ---- accessors ---- */
const struct model_config *engine_config(const struct engine *g) { return &g->cfg; }
const struct preprocessor_config *engine_preprocessor(const struct engine *g) { return &g->pp; }
const struct tokenizer *engine_tokenizer(const struct engine *g) { return g->tok; }
int64_t engine_ctx(const struct engine *g) { return g->llm.ctx; }
int64_t engine_max_batch(const struct engine *g) { return g->llm.max_batch; }
enum dtype engine_dtype(const struct engine *g) { return g->llm.act; }
double engine_load_seconds(const struct engine *g) { return g->load_seconds; }
struct device engine_embed_device(const struct engine *g) { return g->pl.devs[g->pl.embed]; }
const struct devmap_plan *engine_plan(const struct engine *g) { return g->plan; }
const struct mm_times *engine_encode_times(const struct engine *g) { return &g->mm.times; }
void engine_set_image_batches(struct engine *g, int whole) { g->mm.whole_batches = whole != 0; }

void engine_sync(struct engine *g)
{
    for (int i = 0; i < g->pl.n_devices; i++) dev_sync(g->pl.devs[i]);
}

int engine_device_memory(const struct engine *g, struct engine_device_mem *rows, int max_rows)
{
    int n = 0;
    for (int i = 0; i < g->pl.n_devices; i++) {
        struct device d = g->pl.devs[i];
        int k = 0;
        while (k < n && !device_eq(rows[k].dev, d)) k++;
        if (k == n) {
            if (n == max_rows) continue;
            memset(&rows[n], 0, sizeof rows[n]);
            rows[n++].dev = d;
        }
        int64_t kv = 0;
        for (int l = 0; l < g->cfg.num_hidden_layers; l++)
            if (g->pl.layer[l] == i) kv += 2 * (int64_t)tensor_nbytes(&g->llm.cache[l].k);
        rows[k].weights += (int64_t)g->model.bytes_per_device[i];
        rows[k].kv += kv;
        rows[k].buffers += (int64_t)llm_device_bytes(&g->llm, i) - kv;
    }
    return n;
}

/* From the manifest, so it does not depend on how the loader lays the weights out. */
int engine_decode_weight_bytes(const struct engine *g, int64_t *out, struct err *e)
{
    struct manifest_entry *m = NULL;
    int n = model_manifest(&g->cfg, &m, e);
    if (n < 0) return -1;
    int64_t s = 0;
    for (int i = 0; i < n; i++) {
        if (m[i].unit != UNIT_LAYER && m[i].unit != UNIT_NORM && m[i].unit != UNIT_LM_HEAD) continue;
        int64_t k = 1;
        for (int d = 0; d < m[i].ndim; d++) k *= m[i].shape[d];
        const int qd = model_quant_dtype(&g->cfg, g->model.quant, m[i].name, m[i].ndim); /* docs/QUANT.md */
        struct tensor qt = tensor_make(qd < 0 ? DTYPE_F16 : (enum dtype)qd, device_cpu(), NULL, 2, m[i].shape[0],
                                       m[i].ndim > 1 ? m[i].shape[1] : 1);
        s += qd >= 0 ? (int64_t)tensor_nbytes(&qt) : k * (int64_t)dtype_size(g->model.wdtype);
    }
    free(m);
    *out = s;
    return 0;
}

void engine_truncate(struct engine *g, int64_t n) { llm_truncate(&g->llm, n); }

int engine_prefill(struct engine *g, const int32_t *ids, const struct tensor *embeds, int64_t n, float *logits,
                   struct err *e)
{
    if (ids && engine_check_ids(g, ids, n, e)) return -1;
    return llm_forward(&g->llm, ids, embeds, n, logits, e);
}

int engine_decode_greedy(struct engine *g, int32_t tok, int32_t *next, struct err *e)
{
    if (engine_check_ids(g, &tok, 1, e)) return -1;
    return llm_decode_greedy(&g->llm, tok, next, e);
}

int engine_check_logits(const struct engine *g, const float *logits, const char *where, struct err *e)
{
    return check_logits(logits, g->cfg.vocab_size, where, e);
}

/* ---- slots ---- */
int engine_slots(const struct engine *g) { return g->llm.n_slots; }
int64_t engine_slot_ctx(const struct engine *g) { return g->llm.ctx; }

int64_t engine_slot_len(const struct engine *g, int slot)
{
    return slot >= 0 && slot < g->llm.n_slots ? llm_slot_len(&g->llm, slot) : -1;
}

void engine_slot_truncate(struct engine *g, int slot, int64_t n)
{
    if (slot >= 0 && slot < g->llm.n_slots) llm_slot_truncate(&g->llm, slot, n);
}

int engine_slot_reserve(struct engine *g, int slot, int64_t n, struct err *e)
{
    if (slot < 0 || slot >= g->llm.n_slots)
        return err_set(e, "sequence %d outside 0..%d (--parallel %d)", slot, g->llm.n_slots - 1, g->llm.n_slots);
    return llm_slot_reserve(&g->llm, slot, n, e);
}

void engine_slot_preempt(struct engine *g, int slot)
{
    if (slot < 0 || slot >= g->llm.n_slots) return;
    llm_slot_truncate(&g->llm, slot, 0);
    g->preempted++;
}

int64_t engine_slot_match(struct engine *g, int slot, const uint64_t *keys, int n)
{
    if (slot < 0 || slot >= g->llm.n_slots || n < 0) return 0;
    return llm_slot_match(&g->llm, slot, keys, g->no_prefix_reuse ? 0 : n);
}

void engine_slot_publish(struct engine *g, int slot, const uint64_t *keys, int n)
{
    if (slot >= 0 && slot < g->llm.n_slots && n > 0 && !g->no_prefix_reuse) llm_slot_publish(&g->llm, slot, keys, n);
}

void engine_kv_use(const struct engine *g, struct engine_kv_use *u)
{
    struct kvpool_stats st;
    kvpool_get_stats(g->llm.pool, &st);
    *u = (struct engine_kv_use){.blocks = st.total, .used = st.used, .cached = st.cached, .block_tokens = st.bs,
                                .hit_blocks = st.hit_blocks, .evicted = st.evicted, .preempted = g->preempted,
                                .slot_blocks = (int)g->llm.max_blocks};
}

void engine_kv_forget(struct engine *g) { kvpool_forget(g->llm.pool); }

int engine_slot_prefill(struct engine *g, int slot, const int32_t *ids, const struct tensor *embeds, int64_t n,
                        float *logits, struct err *e)
{
    if (ids && engine_check_ids(g, ids, n, e)) return -1;
    return llm_slot_forward(&g->llm, slot, ids, embeds, n, logits, e);
}

int engine_decode_batch(struct engine *g, const int *slots, const int32_t *toks, int B, float *logits,
                        struct err *e)
{
    /* the ids once B is known to be sane (llm_decode_batch words the error about B) */
    if (B >= 1 && B <= g->llm.n_slots && engine_check_ids(g, toks, B, e)) return -1;
    return llm_decode_batch(&g->llm, slots, toks, B, logits, e);
}

int engine_decode_batch_pick(struct engine *g, const int *slots, const int32_t *toks, int B, const uint8_t *need,
                             int32_t *picks, float *logits, struct err *e)
{
    if (B >= 1 && B <= g->llm.n_slots && engine_check_ids(g, toks, B, e)) return -1;
    return llm_decode_batch_pick(&g->llm, slots, toks, B, need, picks, logits, e);
}

int engine_decode_batch_launch(struct engine *g, const int *slots, const int32_t *toks, int B, struct err *e)
{
    if (B >= 1 && B <= g->llm.n_slots && engine_check_ids(g, toks, B, e)) return -1;
    return llm_decode_batch_launch(&g->llm, slots, toks, B, 1, e);
}

int engine_decode_batch_collect(struct engine *g, const uint8_t *need, int32_t *picks, float *logits, struct err *e)
{
    return llm_decode_batch_collect(&g->llm, need, picks, logits, e);
}

int engine_warm_batch_graphs(struct engine *g, struct err *e)
{
    struct llm *s = &g->llm;
    if (!llm_batch_graphs(s)) return 0;
    if (s->inflight_B) return err_set(e, "warming the batched graphs: a batched step is in flight (collect it first)");
    /* one prefill chunk of the largest size first, through an empty slot emptied again: the scratch
     * buffers it grows (a capture records their addresses) then stay put when the first requests prefill */
    const int64_t n = s->max_batch < s->ctx ? s->max_batch : s->ctx;
    for (int sl = 0; sl < s->n_slots; sl++) {
        if (llm_slot_len(s, sl) != 0) continue;
        struct err pe = {{0}};
        if (llm_slot_reserve(s, sl, n, &pe) != 0) break; /* no blocks to spare: the captures alone */
        int32_t *ids = calloc((size_t)n, sizeof *ids);
        const int rc = ids ? llm_slot_forward(s, sl, ids, NULL, n, NULL, e) : err_set(e, "out of memory");
        free(ids);
        llm_slot_truncate(s, sl, 0);
        if (rc) return -1;
        break;
    }
    return llm_warm_batch_graphs(s, 1, e);
}

const struct llm_batch_stats *engine_batch_stats(const struct engine *g) { return &g->llm.bstats; }

void engine_set_profile_step(struct engine *g, int rows, int nth) { llm_set_profile_step(&g->llm, rows, nth); }

void engine_slot_sample_begin(struct engine *g, int slot, const struct sampler_params *p, uint64_t draws)
{
    if (slot >= 0 && slot < g->llm.n_slots) llm_slot_sample_begin(&g->llm, slot, p, draws);
}
