/* engine.c: opening a model folder (config, checkpoint, placement, weights, tokenizer) and the
 * generation loop. Placement always comes from the planner (devmap.h). */
#include "engine.h"

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
    backend_set_threads(o->threads);

    const int L = g->cfg.num_hidden_layers;
    g->layer_dev = calloc((size_t)L, sizeof *g->layer_dev);
    if (!g->layer_dev) { err_set(e, "out of memory"); goto fail; }
    if (plan_devices(g, o, e)) goto fail;
    g->pl.layer = g->layer_dev;
    if (model_load(&g->model, &g->cfg, g->st, &g->pl, o->dtype, &o->progress, e)) goto fail;
    int64_t ctx = g->plan->params.ctx, mb = g->plan->params.max_batch_tokens;
    if (mb > ctx) mb = ctx; /* as the planner counts it */
    if (llm_init(&g->llm, &g->model, &g->pl, o->dtype, ctx, mb, e)) goto fail;
    /* the image path's scratch, as the plan reserved it */
    if (engine_mm_reserve(g, g->plan->params.max_pieces, g->plan->params.max_patches, e)) goto fail;
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
    for (int i = 0; i < 2; i++) dev_free(g->mm_ws[i].dev, g->mm_ws[i].p);
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

int engine_check_ids(const struct engine *g, const int32_t *ids, int64_t n, struct err *e)
{
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= g->cfg.vocab_size)
            return err_set(e, "token id %d at position %lld is outside the vocabulary (0..%d)", ids[i], (long long)i,
                           g->cfg.vocab_size - 1);
    return 0;
}

int engine_generate(struct engine *g, const int32_t *ids, const struct tensor *embeds, int64_t n, int max_new,
                    const struct sampler_params *sp, engine_token_cb cb, void *cb_ctx, int32_t *out, int *n_out,
                    struct engine_gen_stats *stats, struct err *e)
{
    const int V = g->cfg.vocab_size;
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
    if (llm_forward(&g->llm, ids, embeds, n, logits, e)) { rc = -1; goto done; }
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
        if (cb && cb(cb_ctx, tok)) break;
        if (engine_is_stop(g, tok) || i + 1 == max_new) break;
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
