/* devmap.c: logical devices, the cost model and the planner (see devmap.h; the map JSON and the
 * printouts are in devmap_io.c, the device flags in tools/cmd_util.c).
 *
 * Balancing rule (auto placement). Embedding, layer 0, lm_head, vpm and resampler are pinned to
 * the first device (as the seed pins them) and counted there. Decoder layers are then cut into
 * contiguous ranges over the GPUs in --gpus order so that the largest fill fraction
 * need/budget over the GPUs is as small as possible: bisection on a fill level u, and for each u a
 * greedy pass giving every device, in order, as many layers as fit under u*budget (for contiguous
 * ranges with monotone costs the greedy pass is feasible whenever any split is). The final norm
 * goes to the device of the last layer. When the GPUs cannot hold every layer and a CPU budget
 * was given, the fewest trailing layers move to the CPU (balanced the same way over CPU parts).
 * Without GPUs the CPU devices take everything under the same rule. */
#include "devmap.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>

#include "backend.h"
#include "llm.h"
#include "model.h"
#include "resampler.h"
#include "vision.h"

_Static_assert(DEVMAP_MAX_DEVICES == MODEL_MAX_DEVICES, "devmap and model device limits differ");

#define MIB ((int64_t)1 << 20)
#define GIB ((int64_t)1 << 30)

/* ---------------------------------------------------------------- parameters */

void devmap_params_default(struct devmap_params *p)
{
    memset(p, 0, sizeof *p); /* every field a caller does not set (kv_tokens, ...) starts at 0 */
    p->ctx = 0; /* min(4096, max_position_embeddings), as the engine defaults */
    p->kv_seqs = 1;
    p->max_batch_tokens = 2048; /* H200: 29.3k tok/s at 512, 32.9k at 1024, 34.3k at 3000 (docs/PERF.md) */
    p->max_pieces = 10;
    p->max_patches = 1100;
    p->weight_bytes = 2;
    p->act_bytes = 2;
    p->gpu_lib_margin = 64 * MIB;
}

void devmap_params_resolve(struct devmap_params *p, const struct model_config *c)
{
    if (p->ctx <= 0) p->ctx = c->max_position_embeddings > 0 && c->max_position_embeddings < 4096 ? c->max_position_embeddings : 4096;
}

void devmap_opts_init(struct devmap_opts *o)
{
    memset(o, 0, sizeof *o);
    o->n_gpus = -1;
    devmap_params_default(&o->params);
}


int devmap_parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int devmap_parse_dev_key(const char *s, int *ordinal, int *part)
{
    char head[16];
    const char *dot = strchr(s, '.');
    size_t n = dot ? (size_t)(dot - s) : strlen(s);
    if (n == 0 || n >= sizeof head) return -1;
    memcpy(head, s, n);
    head[n] = 0;
    long v;
    if (!strcmp(head, "cpu")) *ordinal = -1;
    else if (!strncmp(head, "cuda:", 5) && !dot && !devmap_parse_long(head + 5, 0, 1023, &v)) *ordinal = (int)v;
    else if (!devmap_parse_long(head, 0, 1023, &v)) *ordinal = (int)v;
    else return -1;
    *part = -1;
    if (dot) {
        if (devmap_parse_long(dot + 1, 0, DEVMAP_MAX_DEVICES - 1, &v)) return -1;
        *part = (int)v;
    }
    return 0;
}


/* ---------------------------------------------------------------- logical devices */

int64_t devmap_default_budget(int64_t free_bytes)
{
    int64_t b = free_bytes - free_bytes / 16 - 256 * MIB;
    return b > 0 ? b : 0;
}

int devmap_devices(const struct devmap_opts *o, int n_visible, devmap_mem_fn mem, void *ctx,
                   struct devmap_device *dev, int *n_dev, struct err *e)
{
    int phys[DEVMAP_MAX_DEVICES + 1], np = 0, want_cpu = 0; /* physical devices, GPUs then cpu (-1) */
    *n_dev = 0;
    if (o->n_gpus >= 0) {
        for (int i = 0; i < o->n_gpus; i++) phys[np++] = o->gpus[i];
    } else {
        for (int pass = 0; pass < 2; pass++) { /* GPUs named by --max-memory, then --logical-devices */
            int n = pass ? o->n_split : o->n_mem;
            for (int i = 0; i < n; i++) {
                int ord, part, dup = 0;
                devmap_parse_dev_key(pass ? o->split_key[i] : o->mem_key[i], &ord, &part);
                for (int j = 0; j < np; j++) dup |= phys[j] == ord;
                if (ord >= 0 && !dup && np < DEVMAP_MAX_DEVICES) phys[np++] = ord;
            }
        }
        if (np == 0)
            for (int i = 0; i < n_visible && np < DEVMAP_MAX_DEVICES; i++) phys[np++] = i;
    }
    for (int i = 0; i < np; i++)
        if (n_visible >= 0 && phys[i] >= n_visible)
            return err_set(e, "GPU %d is not visible (this machine has %d GPU%s)", phys[i], n_visible, n_visible == 1 ? "" : "s");
    /* every key must name a device in the list */
    for (int pass = 0; pass < 2; pass++) {
        int n = pass ? o->n_split : o->n_mem;
        for (int i = 0; i < n; i++) {
            const char *key = pass ? o->split_key[i] : o->mem_key[i];
            int ord, part, found = ord = 0;
            devmap_parse_dev_key(key, &ord, &part);
            if (ord < 0) { want_cpu = 1; continue; }
            for (int j = 0; j < np; j++) found |= phys[j] == ord;
            if (!found) return err_set(e, "%s names GPU %d, which is not in --gpus", pass ? "--logical-devices" : "--max-memory", ord);
        }
    }
    if (np == 0) want_cpu = 1;
    if (want_cpu) phys[np++] = -1;

    for (int i = 0; i < np; i++) {
        int ord = phys[i], nparts = 1;
        for (int j = 0; j < o->n_split; j++) {
            int so, sp;
            devmap_parse_dev_key(o->split_key[j], &so, &sp);
            if (so == ord) nparts = o->split_parts[j];
        }
        int64_t whole = -1, part_b[DEVMAP_MAX_DEVICES];
        for (int p = 0; p < nparts; p++) part_b[p] = -1;
        for (int j = 0; j < o->n_mem; j++) {
            int mo, mp;
            devmap_parse_dev_key(o->mem_key[j], &mo, &mp);
            if (mo != ord) continue;
            if (mp < 0) whole = o->mem_bytes[j];
            else if (mp >= nparts) {
                if (nparts == 1) return err_set(e, "--max-memory names %s, but that device is not split (--logical-devices)", o->mem_key[j]);
                return err_set(e, "--max-memory names %s, but that device is split into %d parts", o->mem_key[j], nparts);
            }
            else part_b[mp] = o->mem_bytes[j];
        }
        int need_whole = 0;
        for (int p = 0; p < nparts; p++) need_whole |= part_b[p] < 0;
        if (need_whole && whole < 0) {
            int64_t fr = 0;
            struct err me = {{0}};
            if (!mem || mem(ord < 0 ? DEVICE_CPU : DEVICE_CUDA, ord < 0 ? 0 : ord, &fr, ctx, &me)) {
                char key[16];
                snprintf(key, sizeof key, ord < 0 ? "cpu" : "%d", ord);
                return err_set(e, "no memory budget for %s%s: pass --max-memory %s=SIZE%s%s%s", ord < 0 ? "" : "gpu ", key, key,
                               mem ? " (" : "", mem ? me.msg : "", mem ? ")" : "");
            }
            whole = devmap_default_budget(fr);
        }
        for (int p = 0; p < nparts; p++) {
            if (*n_dev == DEVMAP_MAX_DEVICES) return err_set(e, "more than %d logical devices", DEVMAP_MAX_DEVICES);
            struct devmap_device *d = &dev[(*n_dev)++];
            d->kind = ord < 0 ? DEVICE_CPU : DEVICE_CUDA;
            d->ordinal = ord < 0 ? 0 : ord;
            d->part = p;
            d->nparts = nparts;
            d->budget = part_b[p] >= 0 ? part_b[p] : whole / nparts;
            if (ord < 0) snprintf(d->label, sizeof d->label, nparts > 1 ? "cpu.%d" : "cpu", p);
            else if (nparts > 1) snprintf(d->label, sizeof d->label, "%d.%d", ord, p);
            else snprintf(d->label, sizeof d->label, "%d", ord);
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- costs */

/* The workspace parts are the modules' own layouts, sized by the counting pass of the code that
 * carves them (llm.c, vision.c, resampler.c), plus the image path's blocks mm.c keeps around them;
 * DEVMAP_ALIGN_SLACK covers the 256-byte alignment of the views of one part. */
static enum dtype act_dtype(int ab) { return ab >= 4 ? DTYPE_F32 : DTYPE_F16; }

int64_t devmap_llm_workspace(const struct model_config *c, int64_t n, int ab)
{
    return (int64_t)llm_views_bytes(c, act_dtype(ab), n, 0) + DEVMAP_ALIGN_SLACK;
}

/* The lm_head device's logits rows of one sequence. */
static int64_t logits_bytes(const struct model_config *c, int ab)
{
    return (int64_t)(llm_views_bytes(c, act_dtype(ab), 1, 1) - llm_views_bytes(c, act_dtype(ab), 1, 0));
}

int64_t devmap_vision_workspace(const struct model_config *c, int64_t B, int64_t N, int ab)
{
    const int64_t feats = B * N * c->vision_config.hidden_size * ab; /* the tower's output (mm.c) */
    return feats + (int64_t)vision_views_bytes(c, (int)B, N, act_dtype(ab)) + DEVMAP_ALIGN_SLACK;
}

int64_t devmap_resampler_workspace(const struct model_config *c, int64_t B, int64_t N, int ab)
{
    const int64_t in = B * N * c->vision_config.hidden_size * ab;   /* its input, copied to its device (mm.c) */
    const int64_t out = B * c->query_num * (int64_t)c->hidden_size * ab; /* its output */
    return in + (int64_t)resampler_views_bound(c, (int)B, N, act_dtype(ab)) + out + DEVMAP_ALIGN_SLACK;
}

int64_t devmap_kv_layer_bytes(const struct model_config *c, const struct devmap_params *p)
{
    return llm_kv_layer_bytes(c, act_dtype(p->act_bytes), llm_kv_pool_blocks(p->ctx, p->kv_seqs, p->kv_tokens));
}

int64_t devmap_kv_device_bytes(const struct model_config *c, const struct devmap_params *p)
{
    return (int64_t)llm_kv_views_bytes(c, act_dtype(p->act_bytes), p->ctx, p->kv_seqs) + DEVMAP_ALIGN_SLACK;
}

enum { PIN_EMBED = 1, PIN_NORM = 2, PIN_LM_HEAD = 4, PIN_VPM = 8, PIN_RESAMPLER = 16 };

struct costs {
    int n_layers;
    int64_t embed, norm, lm_head, vpm, resampler, layer[DEVMAP_MAX_LAYERS];
    unsigned qpins;                      /* PIN_* of units holding a quantized tensor */
    unsigned char qlayer[DEVMAP_MAX_LAYERS];
    int64_t kv_layer, kv_dev, ws_llm, ws_logits, ws_vision, ws_resampler, ws_lib;
    int64_t ws_quant; /* the CUDA dequantization buffers (devmap_quant_workspace), 0 without quantized weights */
};

/* The ctx-dependent parts (recomputed when the advice searches a smaller --ctx). */
static void costs_set_params(struct costs *k, const struct model_config *c, const struct devmap_params *p)
{
    int64_t n = p->max_batch_tokens < p->ctx ? p->max_batch_tokens : p->ctx;
    k->kv_layer = devmap_kv_layer_bytes(c, p);
    k->kv_dev = devmap_kv_device_bytes(c, p);
    k->ws_llm = devmap_llm_workspace(c, n, p->act_bytes);
    k->ws_logits = (int64_t)p->kv_seqs * logits_bytes(c, p->act_bytes);
    k->ws_vision = devmap_vision_workspace(c, p->max_pieces, p->max_patches, p->act_bytes);
    k->ws_resampler = devmap_resampler_workspace(c, p->max_pieces, p->max_patches, p->act_bytes);
    k->ws_lib = p->gpu_lib_margin;
}

/* The buffers a GPU holding quantized weights keeps for prefill GEMMs (src/cuda/cuda_quant.cu): the
 * weight dequantized to F16, at most QUANT_DEQ_TILE_BYTES per tile (SCRATCH_QW), and, when a matrix is
 * larger than one tile, a tile's output columns (SCRATCH_QY, also at most the tile). B, the most one
 * GEMM dequantizes, is bounded from the manifest: a decoder layer's quantized matrices of one input
 * width together (q|k|v and gate|up are joined by the loader; o_proj is counted in too, an upper
 * bound), a vision matrix three times (the tower's stacked q|k|v), any other one once. cuda_scratch grows a buffer
 * to max(request, 1.5 x its old size) rounded up to 4 KiB, so each buffer stays below 1.5 x its
 * largest request + 4 KiB. */
static int64_t quant_workspace(const struct model_config *c, const struct devmap_params *p,
                               const struct manifest_entry *m, int n)
{
    const int64_t tile = (int64_t)QUANT_DEQ_TILE_BYTES;
    int64_t big = 0, lay[DEVMAP_MAX_LAYERS][2];
    memset(lay, 0, sizeof lay);
    for (int i = 0; i < n; i++) {
        if (model_quant_dtype(c, p->quant, m[i].name, m[i].ndim) < 0) continue;
        const int64_t b = m[i].shape[0] * m[i].shape[1] * 2;
        if (m[i].unit == UNIT_LAYER && m[i].layer >= 0 && m[i].layer < DEVMAP_MAX_LAYERS) {
            int64_t *t = &lay[m[i].layer][m[i].shape[1] == c->hidden_size ? 0 : 1];
            *t += b;
            if (*t > big) big = *t;
        } else {
            const int64_t bb = m[i].unit == UNIT_VPM ? 3 * b : b;
            if (bb > big) big = bb;
        }
    }
    if (!big) return 0;
    const int64_t qw = big < tile ? big : tile;
    return qw + qw / 2 + 4096 + (big > tile ? tile + tile / 2 + 4096 : 0);
}

static int costs_build(struct costs *k, const struct model_config *c, const struct devmap_params *p, struct err *e)
{
    memset(k, 0, sizeof *k);
    if (c->num_hidden_layers < 1 || c->num_hidden_layers > DEVMAP_MAX_LAYERS)
        return err_set(e, "num_hidden_layers %d: the planner handles 1..%d", c->num_hidden_layers, DEVMAP_MAX_LAYERS);
    if (p->kv_tokens > 0 && p->kv_tokens < p->ctx)
        return err_set(e, "--kv-tokens %lld: the KV pool must hold at least one --ctx %lld sequence", (long long)p->kv_tokens,
                       (long long)p->ctx);
    if (p->kv_tokens < 0 && p->kv_tokens != DEVMAP_KV_AUTO) return err_set(e, "device plan: kv_tokens %lld", (long long)p->kv_tokens);
    if (p->weight_bytes < 1 || p->act_bytes < 1 || p->ctx < 1 || p->kv_seqs < 1 || p->max_batch_tokens < 1 ||
        p->max_pieces < 1 || p->max_patches < 1)
        return err_set(e, "device plan: every size parameter must be >= 1");
    k->n_layers = c->num_hidden_layers;
    if (model_quant_check(c, p->quant, e)) return -1;
    struct manifest_entry *m = NULL;
    int n = model_manifest(c, &m, e);
    if (n < 0) return -1;
    for (int i = 0; i < n; i++) {
        int64_t b = p->weight_bytes;
        for (int j = 0; j < m[i].ndim; j++) b *= m[i].shape[j];
        const int qd = model_quant_dtype(c, p->quant, m[i].name, m[i].ndim);
        if (qd >= 0) { /* the loader's records, byte for byte */
            struct tensor t = tensor_make((enum dtype)qd, device_cpu(), NULL, 2, m[i].shape[0], m[i].shape[1]);
            if (!dtype_row_bytes(t.dtype, m[i].shape[1])) {
                free(m);
                return err_set(e, "%s: rows of %lld values cannot be %s (need a multiple of 16)", m[i].name,
                               (long long)m[i].shape[1], dtype_name(t.dtype));
            }
            b = (int64_t)tensor_nbytes(&t);
            switch (m[i].unit) {
            case UNIT_EMBED: k->qpins |= PIN_EMBED; break;
            case UNIT_LAYER: if (m[i].layer >= 0 && m[i].layer < k->n_layers) k->qlayer[m[i].layer] = 1; break;
            case UNIT_NORM: k->qpins |= PIN_NORM; break;
            case UNIT_LM_HEAD: k->qpins |= PIN_LM_HEAD; break;
            case UNIT_VPM: k->qpins |= PIN_VPM; break;
            case UNIT_RESAMPLER: k->qpins |= PIN_RESAMPLER; break;
            }
        }
        switch (m[i].unit) {
        case UNIT_EMBED: k->embed += b; break;
        case UNIT_LAYER: if (m[i].layer >= 0 && m[i].layer < k->n_layers) k->layer[m[i].layer] += b; break;
        case UNIT_NORM: k->norm += b; break;
        case UNIT_LM_HEAD: k->lm_head += b; break;
        case UNIT_VPM: k->vpm += b; break;
        case UNIT_RESAMPLER: k->resampler += b; break;
        }
    }
    k->ws_quant = quant_workspace(c, p, m, n);
    free(m);
    costs_set_params(k, c, p);
    return 0;
}

/* ---------------------------------------------------------------- usage */


/* The one formula for what a device needs, from what it holds. */
static void need_of(const struct costs *k, int is_gpu, unsigned pins, int n_layers, int64_t layer_w,
                    struct devmap_usage *u)
{
    memset(u, 0, sizeof *u);
    u->n_layers = n_layers;
    u->weights = layer_w + (pins & PIN_EMBED ? k->embed : 0) + (pins & PIN_NORM ? k->norm : 0) +
                 (pins & PIN_LM_HEAD ? k->lm_head : 0) + (pins & PIN_VPM ? k->vpm : 0) +
                 (pins & PIN_RESAMPLER ? k->resampler : 0);
    u->kv = n_layers * k->kv_layer + (n_layers > 0 ? k->kv_dev : 0);
    int llm = n_layers > 0 || (pins & (PIN_EMBED | PIN_NORM | PIN_LM_HEAD));
    u->ws_llm = llm ? k->ws_llm : 0;
    u->ws_logits = pins & PIN_LM_HEAD ? k->ws_logits : 0;
    u->ws_vision = pins & PIN_VPM ? k->ws_vision : 0;
    u->ws_resampler = pins & PIN_RESAMPLER ? k->ws_resampler : 0;
    u->ws_lib = is_gpu && (llm || pins) ? k->ws_lib : 0;
    u->ws_quant = is_gpu && (llm || pins) ? k->ws_quant : 0;
    u->workspace = u->ws_llm + u->ws_logits + u->ws_vision + u->ws_resampler + u->ws_lib + u->ws_quant;
    u->total = u->weights + u->kv + u->workspace;
}

static void usage_compute(const struct costs *k, const struct devmap_assign *m, const struct devmap_device *dev,
                          int n_dev, struct devmap_usage *use)
{
    for (int i = 0; i < n_dev; i++) {
        unsigned pins = (m->embed == i ? PIN_EMBED : 0) | (m->norm == i ? PIN_NORM : 0) |
                        (m->lm_head == i ? PIN_LM_HEAD : 0) | (m->vpm == i ? PIN_VPM : 0) |
                        (m->resampler == i ? PIN_RESAMPLER : 0);
        int nl = 0;
        int64_t lw = 0;
        for (int l = 0; l < m->n_layers; l++)
            if (m->layer[l] == i) nl++, lw += k->layer[l];
        need_of(k, dev[i].kind == DEVICE_CUDA, pins, nl, lw, &use[i]);
    }
}

/* ---------------------------------------------------------------- auto placement */

/* Greedy pass at fill level u over devices idx[0..nd) for layers [a0, a1): each device takes as
 * many layers as fit under u*budget. pins0 go to idx[0], which must then take >= 1 layer when
 * first_layer is set (layer 0 is pinned with the embedding); the device of layer a1-1 takes the
 * norm when norm_last is set. Writes m->layer[] and returns 1 when every layer found a place. */
static int greedy(const struct costs *k, const struct devmap_device *dev, const int *idx, int nd, int a0, int a1,
                  unsigned pins0, int first_layer, int norm_last, double u, struct devmap_assign *m)
{
    int a = a0;
    struct devmap_usage use;
    for (int j = 0; j < nd; j++) {
        int i = idx[j], gpu = dev[i].kind == DEVICE_CUDA;
        double cap = u * (double)dev[i].budget;
        unsigned pins = j == 0 ? pins0 : 0;
        need_of(k, gpu, pins, 0, 0, &use);
        if ((double)use.total > cap) {
            if (j == 0 && (pins0 || first_layer)) return 0;
            continue;
        }
        int b = a;
        int64_t lw = 0;
        while (b < a1) {
            unsigned p = pins | (norm_last && b + 1 == a1 ? PIN_NORM : 0);
            need_of(k, gpu, p, b + 1 - a, lw + k->layer[b], &use);
            if ((double)use.total > cap) break;
            lw += k->layer[b++];
        }
        if (j == 0 && first_layer && b == a && a < a1) return 0;
        for (int l = a; l < b; l++) m->layer[l] = i;
        if (b == a1 && b > a && norm_last) m->norm = i;
        a = b;
    }
    return a == a1;
}

/* Smallest fill level (to ~1e-9) at which the greedy pass succeeds, searching up to umax; leaves
 * the assignment of that level in m. Returns 0 when none up to umax. */
static int balance(const struct costs *k, const struct devmap_device *dev, const int *idx, int nd, int a0, int a1,
                   unsigned pins0, int first_layer, int norm_last, double umax, struct devmap_assign *m)
{
    if (nd == 0 || !greedy(k, dev, idx, nd, a0, a1, pins0, first_layer, norm_last, umax, m)) return 0;
    double lo = 0, hi = umax;
    for (int it = 0; it < 64 && hi - lo > 1e-9 * hi; it++) {
        double mid = 0.5 * (lo + hi);
        if (greedy(k, dev, idx, nd, a0, a1, pins0, first_layer, norm_last, mid, m)) hi = mid;
        else lo = mid;
    }
    return greedy(k, dev, idx, nd, a0, a1, pins0, first_layer, norm_last, hi, m);
}

/* Places everything within budgets (balance = 1 also balances; 0 only checks feasibility). */
static int place(const struct costs *k, const struct devmap_device *dev, int n_dev, int do_balance,
                 struct devmap_assign *m)
{
    int gpu[DEVMAP_MAX_DEVICES], cpu[DEVMAP_MAX_DEVICES], ng = 0, nc = 0, L = k->n_layers;
    for (int i = 0; i < n_dev; i++) {
        if (dev[i].kind == DEVICE_CUDA) gpu[ng++] = i;
        else cpu[nc++] = i;
    }
    const int *prim = ng ? gpu : cpu, *sec = ng ? cpu : NULL;
    int np = ng ? ng : nc, ns = ng ? nc : 0;
    if (np == 0) return 0;
    m->n_layers = L;
    m->lm_head = m->vpm = m->resampler = prim[0];
    /* In order, the first that fits: everything on the GPUs; then, with a CPU in the list, the embedding
     * table on the CPU (one row per token is gathered on the host and uploaded: it frees its 1 GiB of GPU
     * memory at no cost a decode step notices) with t = 0, 1, ... trailing layers after it; then the
     * embedding on the first GPU with t >= 1 trailing layers on the CPU (a CPU budget too small for the
     * table but large enough for layers). */
    for (int stage = 0; stage < 3; stage++) {
        const int host = stage == 1;
        if (stage > 0 && ns == 0) break;
        const unsigned pins = PIN_LM_HEAD | PIN_VPM | PIN_RESAMPLER | (host ? 0 : PIN_EMBED), spins = host ? PIN_EMBED : 0;
        m->embed = host ? sec[0] : prim[0];
        for (int t = stage == 2; t < (stage == 0 ? 1 : L); t++) { /* t trailing layers go to the CPU group */
            if (!greedy(k, dev, prim, np, 0, L - t, pins, !host, t == 0, 1.0, m)) continue;
            if ((t > 0 || host) && !greedy(k, dev, sec, ns, L - t, L, spins, 0, t > 0, 1.0, m)) continue;
            if (do_balance) {
                balance(k, dev, prim, np, 0, L - t, pins, !host, t == 0, 1.0, m);
                if (t > 0 || host) balance(k, dev, sec, ns, L - t, L, spins, 0, t > 0, 1.0, m);
            }
            return 1;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- the planner */

static int fits_all(const struct devmap_usage *use, const struct devmap_device *dev, int n_dev)
{
    for (int i = 0; i < n_dev; i++)
        if (use[i].total > dev[i].budget) return 0;
    return 1;
}

/* Does it fit with these costs and devices (auto placement, or the fixed map m)? */
static int fits_with(const struct costs *k, const struct devmap_device *dev, int n_dev, const struct devmap_assign *m)
{
    struct devmap_usage use[DEVMAP_MAX_DEVICES];
    if (m) {
        usage_compute(k, m, dev, n_dev, use);
        return fits_all(use, dev, n_dev);
    }
    struct devmap_assign a;
    return place(k, dev, n_dev, 0, &a);
}

/* Advice sizes are rounded UP (to 0.01 GiB, or 1 MiB below 1 GiB), so the number printed is itself enough. */
static const char *fmt_up(int64_t b, char *buf, size_t n)
{
    if (b < GIB) {
        snprintf(buf, n, "%lld MiB", (long long)((b + MIB - 1) / MIB));
        return buf;
    }
    int64_t cents = (b + GIB / 100 - 1) / (GIB / 100);
    snprintf(buf, n, "%lld.%02lld GiB", (long long)(cents / 100), (long long)(cents % 100));
    return buf;
}

/* Appends one alternative to the advice: the first one after `lead`, the others after "; ". */
static void advice_add(struct devmap_plan *plan, const char *lead, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void advice_add(struct devmap_plan *plan, const char *lead, const char *fmt, ...)
{
    char *s = plan->advice;
    size_t n = sizeof plan->advice, len = strlen(s);
    snprintf(s + len, n - len, "%s", len ? "; " : lead);
    len = strlen(s);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s + len, n - len, fmt, ap);
    va_end(ap);
}

const char *devmap_dev_name(const struct devmap_device *d, char *buf, size_t n)
{
    snprintf(buf, n, d->kind == DEVICE_CPU ? "%s" : "gpu %s", d->label);
    return buf;
}

/* Smallest x in [0, hi] (to 1 MiB) with ok(x), given ok(hi); ok is monotone. */
#define BISECT_BYTES(hi, x, ok_expr)                                                     \
    do {                                                                                 \
        int64_t lo_ = 0, hi_ = (hi);                                                     \
        while (hi_ - lo_ > MIB) {                                                        \
            int64_t x = lo_ + (hi_ - lo_) / 2;                                           \
            if (ok_expr) hi_ = x;                                                        \
            else lo_ = x;                                                                \
        }                                                                                \
        (hi) = hi_;                                                                      \
    } while (0)

/* Adds "add cpu=SIZE to --max-memory (what the CPU would take)": dev[n_dev] is the CPU to add. */
static void advise_cpu(struct devmap_plan *plan, const struct costs *k, struct devmap_device *dev, int n_dev, int64_t b)
{
    struct devmap_assign at;
    char a[32];
    dev[n_dev].budget = b;
    place(k, dev, n_dev + 1, 0, &at);
    int nl = 0;
    for (int l = 0; l < at.n_layers; l++) nl += at.layer[l] == n_dev;
    fmt_up(b, a, sizeof a);
    char *sp = strchr(a, ' ');
    memmove(sp, sp + 1, strlen(sp)); /* "3.12GiB": the --max-memory spelling */
    advice_add(plan, "to fit, any one of: ", "add cpu=%s to --max-memory (%s)", a,
               at.embed != n_dev ? "trailing layers run on the CPU"
               : nl ? "the embedding table and trailing layers go to the CPU"
                    : "the embedding table goes to the host: one row per token is uploaded");
}

/* Units (the embedding table, decoder layers) an assignment puts on CPU devices. */
static int cpu_units(const struct devmap_assign *a, const struct devmap_device *dev)
{
    int n = dev[a->embed].kind == DEVICE_CPU;
    for (int l = 0; l < a->n_layers; l++) n += dev[a->layer[l]].kind == DEVICE_CPU;
    return n;
}

/* Whether a pool of `blocks` fits (the map m, or the automatic placement with at most max_cpu units on the
 * CPU: a larger pool never buys a layer moved off the GPUs). Leaves the costs at that pool. */
static int kv_fits(const struct model_config *c, struct devmap_params *q, struct costs *k, int64_t blocks,
                   const struct devmap_device *dev, int n_dev, const struct devmap_assign *m, int max_cpu)
{
    q->kv_tokens = blocks * KV_BLOCK;
    costs_set_params(k, c, q);
    if (m) return fits_with(k, dev, n_dev, m);
    struct devmap_assign a;
    return place(k, dev, n_dev, 0, &a) && cpu_units(&a, dev) <= max_cpu;
}

/* --kv-tokens auto: the largest pool, in whole blocks, between one ctx sequence and kv_seqs of them that fits
 * the budgets with the placement the smallest pool gets (the map m, or the automatic placement with no more
 * on the CPU); the smallest when none fits (the plan then says it does not fit). Sets q->kv_tokens and the
 * costs. */
static void kv_auto(const struct model_config *c, struct devmap_params *q, struct costs *k,
                    const struct devmap_device *dev, int n_dev, const struct devmap_assign *m)
{
    int64_t lo = llm_kv_blocks(q->ctx, 1), hi = llm_kv_blocks(q->ctx, q->kv_seqs);
    q->kv_tokens = lo * KV_BLOCK;
    costs_set_params(k, c, q);
    struct devmap_assign a;
    const int max_cpu = place(k, dev, n_dev, 0, &a) ? cpu_units(&a, dev) : 0;
    if (kv_fits(c, q, k, hi, dev, n_dev, m, max_cpu)) return;
    if (kv_fits(c, q, k, lo, dev, n_dev, m, max_cpu))
        while (hi - lo > 1) { /* lo fits, hi does not */
            const int64_t mid = lo + (hi - lo) / 2;
            if (kv_fits(c, q, k, mid, dev, n_dev, m, max_cpu)) lo = mid;
            else hi = mid;
        }
    kv_fits(c, q, k, lo, dev, n_dev, m, max_cpu);
}

/* Fills plan->advice with the smallest single changes that would make the plan fit. */
static void advise(const struct model_config *c, const struct devmap_params *p, struct costs *k,
                   struct devmap_plan *plan, const struct devmap_assign *fixed)
{
    struct devmap_device dev[DEVMAP_MAX_DEVICES + 1];
    int n_dev = plan->n_dev;
    char a[32], b[32], nm[32];
    memcpy(dev, plan->dev, sizeof plan->dev);
    int64_t all = GIB; /* an upper bound for any one raise: everything plus room */
    for (int i = 0; i < n_dev; i++) all += plan->use[i].total + k->ws_llm + k->ws_lib;
    all += k->embed + k->lm_head + k->vpm + k->resampler + k->ws_vision + k->ws_resampler + k->ws_logits;

    if (fixed) { /* a fixed map: every device over budget needs its own raise */
        int first = 1;
        for (int i = 0; i < n_dev; i++) {
            int64_t over = plan->use[i].total - plan->dev[i].budget;
            if (over <= 0) continue;
            size_t len = strlen(plan->advice);
            snprintf(plan->advice + len, sizeof plan->advice - len, "%sraise the budget of %s by %s (to %s)",
                     first ? "to fit: " : " and ", devmap_dev_name(&dev[i], nm, sizeof nm),
                     fmt_up(over, a, sizeof a), fmt_up(plan->use[i].total, b, sizeof b));
            first = 0;
        }
    } else { /* the one device whose raise is smallest */
        int best = -1;
        int64_t best_d = 0;
        for (int i = 0; i < n_dev; i++) {
            int64_t save = dev[i].budget, d = all;
            dev[i].budget = save + d;
            if (fits_with(k, dev, n_dev, NULL)) {
                BISECT_BYTES(d, x, (dev[i].budget = save + x, fits_with(k, dev, n_dev, NULL)));
                if (best < 0 || d < best_d) best = i, best_d = d;
            }
            dev[i].budget = save;
        }
        if (best >= 0)
            advice_add(plan, "to fit, any one of: ", "raise the budget of %s by %s (to %s)",
                       devmap_dev_name(&dev[best], nm, sizeof nm), fmt_up(best_d, a, sizeof a),
                       fmt_up(dev[best].budget + best_d, b, sizeof b));
        int has_cpu = 0;
        for (int i = 0; i < n_dev; i++) has_cpu |= dev[i].kind == DEVICE_CPU;
        struct devmap_device *cd = &dev[n_dev];
        memset(cd, 0, sizeof *cd);
        cd->kind = DEVICE_CPU;
        cd->nparts = 1;
        snprintf(cd->label, sizeof cd->label, "cpu");
        cd->budget = all;
        if (!has_cpu && n_dev < DEVMAP_MAX_DEVICES && fits_with(k, dev, n_dev + 1, NULL)) {
            int64_t d = all;
            BISECT_BYTES(d, x, (cd->budget = x, fits_with(k, dev, n_dev + 1, NULL)));
            advise_cpu(plan, k, dev, n_dev, d);
            /* the smallest budget may buy trailing layers on the CPU where the embedding table alone (its
             * bytes and the LLM views, exactly) would do: offer that too */
            struct devmap_usage u;
            need_of(k, 0, PIN_EMBED, 0, 0, &u);
            struct devmap_assign at;
            cd->budget = u.total;
            if (u.total > d && place(k, dev, n_dev + 1, 0, &at) && at.embed == n_dev) advise_cpu(plan, k, dev, n_dev, u.total);
        }
    }
    /* several sequences: a smaller pool they share (the most that fits; preemption when it runs out) */
    if (p->kv_seqs > 1 && p->kv_tokens == 0) {
        struct devmap_params q = *p;
        kv_auto(c, &q, k, plan->dev, n_dev, fixed);
        if (q.kv_tokens < llm_kv_blocks(p->ctx, p->kv_seqs) * KV_BLOCK && fits_with(k, plan->dev, n_dev, fixed))
            advice_add(plan, "to fit, any one of: ", "--kv-tokens %lld (or auto: the %d sequences share a smaller KV pool; "
                       "a turn that finds no free block is preempted)", (long long)q.kv_tokens, p->kv_seqs);
        costs_set_params(k, c, p);
    }
    /* the largest --ctx that fits (ctx changes only the KV cache and the prefill chunk) */
    struct devmap_params q = *p;
    int64_t lo = 0, hi = p->ctx;
    while (hi - lo > 1) {
        q.ctx = lo + (hi - lo) / 2;
        if (plan->kv_auto) q.kv_tokens = q.ctx; /* the least pool auto may choose at that ctx */
        costs_set_params(k, c, &q);
        if (fits_with(k, plan->dev, n_dev, fixed)) lo = q.ctx;
        else hi = q.ctx;
    }
    costs_set_params(k, c, p);
    if (lo >= 1) {
        if (lo >= 256) lo -= lo % 256;
        if (fixed && plan->advice[0]) {
            size_t len = strlen(plan->advice);
            snprintf(plan->advice + len, sizeof plan->advice - len, "; or lower --ctx to %lld", (long long)lo);
        } else {
            advice_add(plan, "to fit, any one of: ", "lower --ctx to %lld", (long long)lo);
        }
    }
    if (!plan->advice[0]) snprintf(plan->advice, sizeof plan->advice, "no single change fits it: add devices or budget");
}

int devmap_plan(const struct model_config *c, const struct devmap_params *p, const struct devmap_device *dev,
                int n_dev, const struct devmap_assign *m, struct devmap_plan *plan, struct err *e)
{
    memset(plan, 0, sizeof *plan);
    plan->params = *p;
    devmap_params_resolve(&plan->params, c);
    p = &plan->params;
    if (n_dev < 1 || n_dev > DEVMAP_MAX_DEVICES) return err_set(e, "device plan: %d devices (need 1..%d)", n_dev, DEVMAP_MAX_DEVICES);
    struct costs *k = malloc(sizeof *k);
    if (!k) return err_set(e, "out of memory");
    if (costs_build(k, c, p, e)) { /* plan->n_dev stays 0: nothing was planned */
        free(k);
        return -1;
    }
    plan->n_dev = n_dev;
    memcpy(plan->dev, dev, (size_t)n_dev * sizeof *dev);
    if (p->kv_tokens == DEVMAP_KV_AUTO) {
        if (m && m->n_layers != k->n_layers) plan->params.kv_tokens = llm_kv_blocks(p->ctx, 1) * KV_BLOCK; /* refused below */
        else kv_auto(c, &plan->params, k, dev, n_dev, m);
        plan->kv_auto = 1;
    }
    plan->kv_blocks = llm_kv_pool_blocks(p->ctx, p->kv_seqs, p->kv_tokens);
    plan->kv_layer = k->kv_layer;
    if (m) {
        if (m->n_layers != k->n_layers) {
            int L = k->n_layers;
            free(k);
            return err_set(e, "device map has %d layers, the model %d", m->n_layers, L);
        }
        plan->map = *m;
        plan->explicit_map = 1;
        int changes = 0, distinct = 0, seen[DEVMAP_MAX_DEVICES] = {0};
        for (int l = 0; l < m->n_layers; l++) {
            if (l > 0 && m->layer[l] != m->layer[l - 1]) changes++;
            if (!seen[m->layer[l]]++) distinct++;
        }
        if (changes > distinct - 1)
            snprintf(plan->notes, sizeof plan->notes,
                     "decoder layers are not in contiguous ranges: activations cross devices %d times per forward "
                     "(allowed, but slower than %d)", changes, distinct - 1);
        plan->fits = 1;
    } else {
        plan->fits = place(k, dev, n_dev, 1, &plan->map);
        if (!plan->fits) { /* a display assignment: the same balance with budgets scaled up */
            struct devmap_device big[DEVMAP_MAX_DEVICES];
            int idx[DEVMAP_MAX_DEVICES];
            for (int i = 0; i < n_dev; i++) {
                big[i] = dev[i];
                if (big[i].budget < MIB) big[i].budget = MIB;
                idx[i] = i;
            }
            struct devmap_assign *a = &plan->map;
            a->n_layers = k->n_layers;
            a->embed = a->lm_head = a->vpm = a->resampler = 0;
            unsigned pins = PIN_EMBED | PIN_LM_HEAD | PIN_VPM | PIN_RESAMPLER;
            if (!balance(k, big, idx, n_dev, 0, k->n_layers, pins, 1, 1, 1e9, a)) {
                for (int l = 0; l < k->n_layers; l++) a->layer[l] = 0;
                a->norm = 0;
            }
        }
    }
    if (p->ctx > c->max_position_embeddings) {
        size_t len = strlen(plan->notes);
        snprintf(plan->notes + len, sizeof plan->notes - len, "%sctx %lld is beyond max_position_embeddings %d",
                 len ? "; " : "", (long long)p->ctx, c->max_position_embeddings);
    }
    usage_compute(k, &plan->map, plan->dev, n_dev, plan->use);
    if (plan->fits) plan->fits = fits_all(plan->use, plan->dev, n_dev);
    if (plan->fits) {
        free(k);
        return 0;
    }
    advise(c, p, k, plan, m ? &plan->map : NULL);
    free(k);
    if (e) {
        char a[32], b[32], nm[32];
        size_t len = (size_t)snprintf(e->msg, sizeof e->msg, "the model does not fit the device budgets:");
        for (int i = 0; i < n_dev && len < sizeof e->msg; i++)
            if (plan->use[i].total > plan->dev[i].budget)
                len += (size_t)snprintf(e->msg + len, sizeof e->msg - len, " %s needs %s of %s;",
                                        devmap_dev_name(&dev[i], nm, sizeof nm),
                                        devmap_fmt_bytes(plan->use[i].total, a, sizeof a),
                                        devmap_fmt_bytes(dev[i].budget, b, sizeof b));
        if (len < sizeof e->msg) snprintf(e->msg + len, sizeof e->msg - len, " %s", plan->advice);
    }
    return -1;
}

void devmap_placement(const struct devmap_plan *plan, struct model_placement *pl, int *layer)
{
    memset(pl, 0, sizeof *pl);
    pl->n_devices = plan->n_dev;
    for (int i = 0; i < plan->n_dev && i < MODEL_MAX_DEVICES; i++)
        pl->devs[i] = plan->dev[i].kind == DEVICE_CPU ? device_cpu() : device_cuda(plan->dev[i].ordinal);
    pl->embed = plan->map.embed;
    pl->norm = plan->map.norm;
    pl->lm_head = plan->map.lm_head;
    pl->vpm = plan->map.vpm;
    pl->resampler = plan->map.resampler;
    pl->quant = plan->params.quant;
    memcpy(layer, plan->map.layer, (size_t)plan->map.n_layers * sizeof *layer);
    pl->layer = layer;
}
