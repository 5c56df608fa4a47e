/* devmap_io.c: the device map's text forms (see devmap.h): explicit JSON maps (--device-map) read and
 * checked against the logical devices, and a plan printed as the module -> device list with the
 * per-device table, or as JSON (`plan --json`). The planner and the cost model are in devmap.c. */
#include "devmap.h"

#include <cJSON.h>
#include <ctype.h>
#include <string.h>

#include "backend.h"
#include "llm.h"
#include "model.h"

#define MIB ((int64_t)1 << 20)
#define GIB ((int64_t)1 << 30)

const char *devmap_fmt_bytes(int64_t b, char *buf, size_t n)
{
    if (b >= GIB || b <= -GIB) snprintf(buf, n, "%.2f GiB", (double)b / (double)GIB);
    else snprintf(buf, n, "%.0f MiB", (double)b / (double)MIB);
    return buf;
}


/* ---------------------------------------------------------------- explicit maps */

/* Resolves a device value of a map to a logical index; -1 with why filled when there is none. */
static int dev_lookup(const cJSON *v, const struct devmap_device *dev, int n_dev, char *why, size_t nwhy)
{
    char s[32];
    if (cJSON_IsNumber(v)) {
        double x = v->valuedouble;
        if (!(x >= 0 && x <= 1023) || x != (double)(int)x) { /* range first: (int) of 1e30 is undefined */
            snprintf(why, nwhy, "%g is not a GPU index", x);
            return -1;
        }
        snprintf(s, sizeof s, "%d", (int)x);
    } else if (cJSON_IsString(v) && strlen(v->valuestring) < sizeof s) {
        snprintf(s, sizeof s, "%s", v->valuestring);
    } else {
        snprintf(why, nwhy, "the value is not a GPU index or \"cpu\"");
        return -1;
    }
    int ord, part;
    if (devmap_parse_dev_key(s, &ord, &part)) {
        snprintf(why, nwhy, "'%s' is not a device (0, 1, ..., \"cpu\", \"0.1\")", s);
        return -1;
    }
    enum device_kind kind = ord < 0 ? DEVICE_CPU : DEVICE_CUDA;
    int n_match = 0;
    for (int i = 0; i < n_dev; i++) {
        if (dev[i].kind != kind || (kind == DEVICE_CUDA && dev[i].ordinal != ord)) continue;
        n_match++;
        if (part < 0 && dev[i].nparts == 1) return i;
        if (part >= 0 && dev[i].part == part && dev[i].nparts > 1) return i;
    }
    size_t len = (size_t)snprintf(why, nwhy, "device %s is out of range", s);
    if (n_match > 1 && part < 0)
        len = (size_t)snprintf(why, nwhy, "device %s is split into %d logical devices; name one of them", s, n_match);
    for (int i = 0; i < n_dev && len < nwhy; i++)
        len += (size_t)snprintf(why + len, nwhy - len, "%s%s", i ? ", " : " (devices: ", dev[i].label);
    if (len < nwhy) snprintf(why + len, nwhy - len, ")");
    return -1;
}

/* Module name -> unit; -1 when unknown. */
static int unit_of(const char *name, int n_layers, enum unit_kind *kind, int *layer)
{
    static const char *fixed[] = {"llm.model.embed_tokens", "llm.model.norm", "llm.lm_head", "vpm", "resampler"};
    static const enum unit_kind kinds[] = {UNIT_EMBED, UNIT_NORM, UNIT_LM_HEAD, UNIT_VPM, UNIT_RESAMPLER};
    for (int i = 0; i < 5; i++)
        if (!strcmp(name, fixed[i])) {
            *kind = kinds[i];
            *layer = -1;
            return 0;
        }
    const char *pre = "llm.model.layers.";
    size_t n = strlen(pre);
    if (strncmp(name, pre, n) || !isdigit((unsigned char)name[n]) || (name[n] == '0' && name[n + 1])) return -1;
    long v;
    if (devmap_parse_long(name + n, 0, n_layers - 1, &v)) return -1;
    *kind = UNIT_LAYER;
    *layer = (int)v;
    return 0;
}

int devmap_map_parse(struct devmap_assign *m, const char *json, const char *path, const struct model_config *c,
                     const struct devmap_device *dev, int n_dev, struct err *e)
{
    int L = c->num_hidden_layers, rc = -1;
    if (L < 1 || L > DEVMAP_MAX_LAYERS) return err_set(e, "%s: the model has %d layers (planner limit %d)", path, L, DEVMAP_MAX_LAYERS);
    memset(m, 0, sizeof *m);
    m->n_layers = L;
    m->embed = m->norm = m->lm_head = m->vpm = m->resampler = -1;
    for (int l = 0; l < L; l++) m->layer[l] = -1;
    cJSON *root = cJSON_Parse(json);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        return err_set(e, "%s: not valid JSON (near byte %ld)", path, at && at >= json ? (long)(at - json) : 0L);
    }
    const cJSON *obj = root, *inner = cJSON_GetObjectItemCaseSensitive(root, "device_map");
    if (cJSON_IsObject(inner)) obj = inner;
    if (!cJSON_IsObject(obj)) {
        err_set(e, "%s: expected a JSON object {\"module\": device, ...}", path);
        goto done;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, obj) {
        enum unit_kind kind;
        int layer;
        char why[256];
        if (unit_of(it->string, L, &kind, &layer)) {
            if (!strncmp(it->string, "llm.model.layers.", 17))
                err_set(e, "%s: unknown module '%s' (the model has llm.model.layers.0 to llm.model.layers.%d)", path, it->string, L - 1);
            else
                err_set(e, "%s: unknown module '%s' (modules: llm.model.embed_tokens, llm.model.layers.N, "
                           "llm.model.norm, llm.lm_head, vpm, resampler)", path, it->string);
            goto done;
        }
        int *slot = kind == UNIT_EMBED ? &m->embed : kind == UNIT_NORM ? &m->norm : kind == UNIT_LM_HEAD ? &m->lm_head :
                    kind == UNIT_VPM ? &m->vpm : kind == UNIT_RESAMPLER ? &m->resampler : &m->layer[layer];
        if (*slot >= 0) {
            err_set(e, "%s: module '%s' appears twice", path, it->string);
            goto done;
        }
        int d = dev_lookup(it, dev, n_dev, why, sizeof why);
        if (d < 0) {
            err_set(e, "%s: %s: %s", path, it->string, why);
            goto done;
        }
        *slot = d;
    }
    char name[64];
    if (m->embed < 0) { err_set(e, "%s: no device for %s (every module must be mapped)", path, "llm.model.embed_tokens"); goto done; }
    for (int l = 0; l < L; l++)
        if (m->layer[l] < 0) {
            err_set(e, "%s: no device for %s (every module must be mapped)", path, unit_name(UNIT_LAYER, l, name, sizeof name));
            goto done;
        }
    static const char *rest[] = {"llm.model.norm", "llm.lm_head", "vpm", "resampler"};
    int vals[] = {m->norm, m->lm_head, m->vpm, m->resampler};
    for (int i = 0; i < 4; i++)
        if (vals[i] < 0) { err_set(e, "%s: no device for %s (every module must be mapped)", path, rest[i]); goto done; }
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}

int devmap_map_load(struct devmap_assign *m, const char *path, const struct model_config *c,
                    const struct devmap_device *dev, int n_dev, struct err *e)
{
    char *json = NULL;
    if (read_file(path, 1 << 20, &json, NULL, e)) return -1;
    int rc = devmap_map_parse(m, json, path, c, dev, n_dev, e);
    free(json);
    return rc;
}


/* ---------------------------------------------------------------- output */

/* The u-th module in the seed's order (embed, layers, norm, lm_head, vpm, resampler): its name and device. */
static int unit_at(const struct devmap_assign *m, int u, char *name, size_t n)
{
    int L = m->n_layers;
    if (u == 0) return unit_name(UNIT_EMBED, 0, name, n), m->embed;
    if (u <= L) return unit_name(UNIT_LAYER, u - 1, name, n), m->layer[u - 1];
    if (u == L + 1) return unit_name(UNIT_NORM, 0, name, n), m->norm;
    if (u == L + 2) return unit_name(UNIT_LM_HEAD, 0, name, n), m->lm_head;
    if (u == L + 3) return unit_name(UNIT_VPM, 0, name, n), m->vpm;
    return unit_name(UNIT_RESAMPLER, 0, name, n), m->resampler;
}

/* "3-17 (15)", "-" or "9 (non-contiguous)". */
static const char *layer_range(const struct devmap_plan *p, int dev, char *buf, size_t n)
{
    int first = -1, last = -1, count = 0;
    for (int l = 0; l < p->map.n_layers; l++)
        if (p->map.layer[l] == dev) {
            if (first < 0) first = l;
            last = l;
            count++;
        }
    if (!count) snprintf(buf, n, "-");
    else if (count == 1) snprintf(buf, n, "%d (1)", first);
    else if (last - first + 1 == count) snprintf(buf, n, "%d-%d (%d)", first, last, count);
    else snprintf(buf, n, "%d (non-contiguous)", count);
    return buf;
}

void devmap_print(FILE *f, const struct devmap_plan *p)
{
    char name[64], a[32], b[32], c2[32], d[32], g[32], h[32], r[32];
    fprintf(f, "device map (module -> device)%s:\n", p->fits ? "" : ", NOT within the budgets");
    for (int u = 0; u < p->map.n_layers + 5; u++) {
        int dv = unit_at(&p->map, u, name, sizeof name);
        fprintf(f, "  %-26s -> %s\n", name, dv >= 0 && dv < p->n_dev ? p->dev[dv].label : "?");
    }
    const struct devmap_params *q = &p->params;
    fprintf(f, "\nper device (ctx %lld x %d sequence%s, prefill chunk %d tokens, vision %d pieces x %d patches, "
               "%d-byte weights%s%s, %d-byte activations):\n",
            (long long)q->ctx, q->kv_seqs, q->kv_seqs == 1 ? "" : "s", q->max_batch_tokens, q->max_pieces,
            q->max_patches, q->weight_bytes, q->quant ? " with --quant " : "", q->quant == DTYPE_Q8 ? "q8" : q->quant ? "q4" : "",
            q->act_bytes);
    fprintf(f, "  %-9s %-18s %11s %11s %11s %11s %11s %11s\n", "device", "layers", "weights", "kv cache", "workspace",
            "total", "budget", "headroom");
    for (int i = 0; i < p->n_dev; i++) {
        const struct devmap_usage *u = &p->use[i];
        fprintf(f, "  %-9s %-18s %11s %11s %11s %11s %11s %11s%s\n", devmap_dev_name(&p->dev[i], name, sizeof name),
                layer_range(p, i, r, sizeof r), devmap_fmt_bytes(u->weights, a, sizeof a),
                devmap_fmt_bytes(u->kv, b, sizeof b), devmap_fmt_bytes(u->workspace, c2, sizeof c2),
                devmap_fmt_bytes(u->total, d, sizeof d), devmap_fmt_bytes(p->dev[i].budget, g, sizeof g),
                devmap_fmt_bytes(p->dev[i].budget - u->total, h, sizeof h),
                u->total > p->dev[i].budget ? "  OVER" : "");
    }
    if (q->kv_tokens <= 0)
        fprintf(f, "kv pool: %lld blocks of %d tokens per layer (%d sequence%s x %lld tokens), %s per layer (K and V)\n",
                (long long)p->kv_blocks, KV_BLOCK, q->kv_seqs, q->kv_seqs == 1 ? "" : "s", (long long)q->ctx,
                devmap_fmt_bytes(p->kv_layer, a, sizeof a));
    else
        fprintf(f, "kv pool: %lld blocks of %d tokens per layer (%lld tokens for %d sequence%s of up to %lld%s%s), "
                   "%s per layer (K and V)\n",
                (long long)p->kv_blocks, KV_BLOCK, (long long)p->kv_blocks * KV_BLOCK, q->kv_seqs,
                q->kv_seqs == 1 ? "" : "s", (long long)q->ctx, p->kv_auto ? "; --kv-tokens auto: the most the budget holds" : "",
                p->kv_blocks < llm_kv_blocks(q->ctx, q->kv_seqs) ? "; a turn that finds no free block is preempted" : "",
                devmap_fmt_bytes(p->kv_layer, a, sizeof a));
    if (p->notes[0]) fprintf(f, "note: %s\n", p->notes);
    if (!p->fits) fprintf(f, "does not fit: %s\n", p->advice);
}

static cJSON *dev_value(const struct devmap_device *d)
{
    if (d->kind == DEVICE_CUDA && d->nparts == 1) return cJSON_CreateNumber(d->ordinal);
    return cJSON_CreateString(d->label);
}

char *devmap_to_json(const struct devmap_plan *p, const char *error)
{
    cJSON *root = cJSON_CreateObject(), *map = cJSON_CreateObject(), *devs = cJSON_CreateArray();
    cJSON *params = cJSON_CreateObject();
    char name[64];
    cJSON_AddBoolToObject(root, "fits", p->fits);
    if (error) cJSON_AddStringToObject(root, "error", error);
    cJSON_AddItemToObject(root, "device_map", map);
    for (int u = 0; u < p->map.n_layers + 5; u++) {
        int dv = unit_at(&p->map, u, name, sizeof name);
        if (dv >= 0 && dv < p->n_dev) cJSON_AddItemToObject(map, name, dev_value(&p->dev[dv]));
    }
    cJSON_AddItemToObject(root, "devices", devs);
    for (int i = 0; i < p->n_dev; i++) {
        const struct devmap_usage *u = &p->use[i];
        cJSON *o = cJSON_CreateObject(), *layers = cJSON_CreateArray(), *ws = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "device", dev_value(&p->dev[i]));
        cJSON_AddStringToObject(o, "kind", p->dev[i].kind == DEVICE_CPU ? "cpu" : "cuda");
        cJSON_AddNumberToObject(o, "ordinal", p->dev[i].ordinal);
        cJSON_AddNumberToObject(o, "part", p->dev[i].part);
        cJSON_AddNumberToObject(o, "parts", p->dev[i].nparts);
        cJSON_AddNumberToObject(o, "budget", (double)p->dev[i].budget);
        cJSON_AddNumberToObject(o, "weights", (double)u->weights);
        cJSON_AddNumberToObject(o, "kv_cache", (double)u->kv);
        cJSON_AddNumberToObject(o, "workspace", (double)u->workspace);
        cJSON_AddNumberToObject(o, "total", (double)u->total);
        cJSON_AddBoolToObject(o, "within_budget", u->total <= p->dev[i].budget);
        for (int l = 0; l < p->map.n_layers; l++)
            if (p->map.layer[l] == i) cJSON_AddItemToArray(layers, cJSON_CreateNumber(l));
        cJSON_AddItemToObject(o, "layers", layers);
        cJSON_AddNumberToObject(ws, "llm", (double)u->ws_llm);
        cJSON_AddNumberToObject(ws, "logits", (double)u->ws_logits);
        cJSON_AddNumberToObject(ws, "vision", (double)u->ws_vision);
        cJSON_AddNumberToObject(ws, "resampler", (double)u->ws_resampler);
        cJSON_AddNumberToObject(ws, "library", (double)u->ws_lib);
        cJSON_AddNumberToObject(ws, "quant_dequant", (double)u->ws_quant);
        cJSON_AddItemToObject(o, "workspace_parts", ws);
        cJSON_AddItemToArray(devs, o);
    }
    const struct devmap_params *q = &p->params;
    cJSON_AddNumberToObject(params, "ctx", (double)q->ctx);
    cJSON_AddNumberToObject(params, "kv_seqs", q->kv_seqs);
    cJSON_AddNumberToObject(params, "kv_tokens", (double)q->kv_tokens);
    cJSON_AddNumberToObject(params, "prefill_chunk", q->max_batch_tokens);
    cJSON_AddNumberToObject(params, "max_pieces", q->max_pieces);
    cJSON_AddNumberToObject(params, "max_patches", q->max_patches);
    cJSON_AddNumberToObject(params, "weight_bytes", q->weight_bytes);
    cJSON_AddNumberToObject(params, "act_bytes", q->act_bytes);
    cJSON_AddStringToObject(params, "quant", q->quant == DTYPE_Q8 ? "q8" : q->quant == DTYPE_Q4 ? "q4" : "none");
    cJSON_AddItemToObject(root, "params", params);
    cJSON *pool = cJSON_CreateObject();
    cJSON_AddNumberToObject(pool, "blocks", (double)p->kv_blocks);
    cJSON_AddNumberToObject(pool, "block_tokens", KV_BLOCK);
    cJSON_AddNumberToObject(pool, "tokens", (double)(p->kv_blocks * KV_BLOCK));
    cJSON_AddBoolToObject(pool, "auto", p->kv_auto);
    cJSON_AddBoolToObject(pool, "preemption", p->kv_blocks < llm_kv_blocks(q->ctx, q->kv_seqs));
    cJSON_AddNumberToObject(pool, "layer_bytes", (double)p->kv_layer);
    cJSON_AddItemToObject(root, "kv_pool", pool);
    cJSON_AddBoolToObject(root, "explicit_map", p->explicit_map);
    if (p->notes[0]) cJSON_AddStringToObject(root, "notes", p->notes);
    if (!p->fits) cJSON_AddStringToObject(root, "advice", p->advice);
    char *s = cJSON_Print(root);
    cJSON_Delete(root);
    return s;
}
