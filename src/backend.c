/* backend.c: op dispatch. Checks shapes, dtypes and devices (programmer errors: CHECK), then
 * routes each op to its CPU or CUDA twin by the device tag of the output tensor. */
#include "backend.h"

#include <string.h>

#include "backend_impl.h"
#include "quant.h"

static bool is_float(enum dtype t) { return t == DTYPE_F32 || t == DTYPE_F16 || t == DTYPE_BF16; }

/* The weight of a matmul: a float dtype, or a quantized one (backend.h; both backends have it). */
static void check_weight(const struct tensor *w)
{
    CHECKF(is_float(w->dtype) || dtype_is_quant(w->dtype), "weight %s: dtype %s", w->name ? w->name : "?",
           dtype_name(w->dtype));
    if (dtype_is_quant(w->dtype))
        CHECKF(w->ndim == 2 && dtype_row_bytes(w->dtype, w->shape[1]) > 0, "weight %s: %s [%lld, %lld]: not row records",
               w->name ? w->name : "?", dtype_name(w->dtype), (long long)w->shape[0],
               (long long)(w->ndim > 1 ? w->shape[1] : 0));
    CHECKF(!w->tiled || (w->dev.kind == DEVICE_CUDA && quant_tiles_ok(w->dtype, w->shape[0], w->shape[1])),
           "weight %s: tiles only for quantized GPU weights of whole tiles", w->name ? w->name : "?");
}

static void check_same_dev(const struct tensor *a, const struct tensor *b)
{
    CHECKF(device_eq(a->dev, b->dev), "tensors on different devices: %s (%d:%d) vs %s (%d:%d)",
           a->name ? a->name : "?", a->dev.kind, a->dev.ordinal, b->name ? b->name : "?", b->dev.kind,
           b->dev.ordinal);
}

#ifdef MINICPMV_CUDA
#define DISPATCH(dev, op, ...)                       \
    do {                                             \
        if ((dev).kind == DEVICE_CUDA) cuda_##op(__VA_ARGS__); \
        else cpu_##op(__VA_ARGS__);                  \
    } while (0)
#else
#define DISPATCH(dev, op, ...)                       \
    do {                                             \
        CHECKF((dev).kind == DEVICE_CPU, "CUDA tensor but this binary was built without CUDA"); \
        cpu_##op(__VA_ARGS__);                       \
    } while (0)
#endif

void backend_query(struct backend_info *bi)
{
    memset(bi, 0, sizeof *bi);
#ifdef MINICPMV_CUDA
    bi->cuda_built = 1;
    bi->n_gpus = cuda_device_count();
#endif
}

void *dev_alloc(struct device d, size_t bytes, struct err *e)
{
    if (d.kind == DEVICE_CPU) {
        size_t n = (bytes + 63) & ~(size_t)63;
        void *p = aligned_alloc(64, n ? n : 64);
        if (!p) err_set(e, "out of host memory allocating %zu bytes", bytes);
        return p;
    }
#ifdef MINICPMV_CUDA
    return cuda_alloc(d.ordinal, bytes, e);
#else
    err_set(e, "cannot allocate on GPU %d: built without CUDA", d.ordinal);
    return NULL;
#endif
}

void dev_free(struct device d, void *p)
{
    if (!p) return;
    if (d.kind == DEVICE_CPU) { free(p); return; }
#ifdef MINICPMV_CUDA
    cuda_free(d.ordinal, p);
#endif
}

int dev_mem_info(struct device d, size_t *free_b, size_t *total_b, struct err *e)
{
    if (d.kind == DEVICE_CPU) {
        FILE *f = fopen("/proc/meminfo", "r");
        if (!f) return err_set(e, "cannot read /proc/meminfo");
        char line[256];
        unsigned long long total = 0, avail = 0;
        while (fgets(line, sizeof line, f)) {
            sscanf(line, "MemTotal: %llu kB", &total);
            sscanf(line, "MemAvailable: %llu kB", &avail);
        }
        fclose(f);
        *free_b = (size_t)avail * 1024;
        *total_b = (size_t)total * 1024;
        return 0;
    }
#ifdef MINICPMV_CUDA
    return cuda_mem_info(d.ordinal, free_b, total_b, e);
#else
    return err_set(e, "no GPU %d: built without CUDA", d.ordinal);
#endif
}

void dev_sync(struct device d)
{
#ifdef MINICPMV_CUDA
    if (d.kind == DEVICE_CUDA) cuda_sync(d.ordinal);
#else
    (void)d;
#endif
}

void op_embed(struct tensor *y, const struct tensor *table, const struct tensor *ids)
{
    CHECK(y->ndim == 2 && table->ndim == 2 && ids->ndim == 1 && ids->dtype == DTYPE_I32);
    CHECK(y->shape[0] == ids->shape[0] && y->shape[1] == table->shape[1]);
    check_same_dev(y, table);
    check_same_dev(y, ids);
    DISPATCH(y->dev, embed, y, table, ids);
}

void op_matmul(struct tensor *y, const struct tensor *x, const struct tensor *w, const struct tensor *bias)
{
    CHECK(x->ndim == 2 && w->ndim == 2 && y->ndim == 2);
    CHECKF(x->shape[1] == w->shape[1] && y->shape[0] == x->shape[0] && y->shape[1] == w->shape[0],
           "matmul %s: y[%lld,%lld] x[%lld,%lld] w[%lld,%lld]", w->name ? w->name : "", (long long)y->shape[0],
           (long long)y->shape[1], (long long)x->shape[0], (long long)x->shape[1], (long long)w->shape[0],
           (long long)w->shape[1]);
    CHECK(is_float(x->dtype) && is_float(y->dtype));
    check_weight(w);
    CHECK(y->data != x->data);
    check_same_dev(y, x);
    check_same_dev(y, w);
    if (bias) {
        CHECK(bias->ndim == 1 && bias->shape[0] == w->shape[0]);
        check_same_dev(y, bias);
    }
    DISPATCH(y->dev, matmul, y, x, w, bias);
}

void op_linear(struct tensor *y, const struct tensor *x, const struct tensor *w, const struct tensor *bias, int act,
               const struct tensor *res)
{
    CHECK(x->ndim == 2 && w->ndim == 2 && y->ndim == 2);
    CHECKF(x->shape[1] == w->shape[1] && y->shape[0] == x->shape[0] && y->shape[1] == w->shape[0],
           "linear %s: y[%lld,%lld] x[%lld,%lld] w[%lld,%lld]", w->name ? w->name : "", (long long)y->shape[0],
           (long long)y->shape[1], (long long)x->shape[0], (long long)x->shape[1], (long long)w->shape[0],
           (long long)w->shape[1]);
    CHECK(is_float(x->dtype) && is_float(y->dtype));
    check_weight(w);
    CHECK(act == LINEAR_NONE || act == LINEAR_GELU_TANH);
    CHECK(y->data != x->data);
    check_same_dev(y, x);
    check_same_dev(y, w);
    if (bias) {
        CHECK(bias->ndim == 1 && bias->shape[0] == w->shape[0]);
        check_same_dev(y, bias);
    }
    if (res) {
        CHECK(tensor_same_shape(res, y) && is_float(res->dtype) && res->data != x->data);
        CHECK(res->data != y->data || res->dtype == y->dtype);
        check_same_dev(y, res);
    }
    DISPATCH(y->dev, linear, y, x, w, bias, act, res);
}

void op_matmul_stacked(struct tensor *y, const struct tensor *x, const struct tensor *w, const struct tensor *bias)
{
    CHECK(x->ndim == 2 && w->ndim == 2 && y->ndim == 3);
    const int64_t S = y->shape[0], n = y->shape[1], o = y->shape[2];
    CHECKF(x->shape[0] == n && x->shape[1] == w->shape[1] && w->shape[0] == S * o,
           "matmul_stacked %s: y[%lld,%lld,%lld] x[%lld,%lld] w[%lld,%lld]", w->name ? w->name : "", (long long)S,
           (long long)n, (long long)o, (long long)x->shape[0], (long long)x->shape[1], (long long)w->shape[0],
           (long long)w->shape[1]);
    CHECK(is_float(x->dtype) && is_float(y->dtype));
    check_weight(w);
    CHECK(y->data != x->data);
    check_same_dev(y, x);
    check_same_dev(y, w);
    if (bias) {
        CHECK(bias->ndim == 1 && bias->shape[0] == S * o);
        check_same_dev(y, bias);
    }
#ifdef MINICPMV_CUDA
    if (y->dev.kind == DEVICE_CUDA && cuda_matmul_stacked(y, x, w, bias)) return; /* one strided-batched GEMM */
#endif
    /* S op_matmul calls on the row blocks (the CPU, and shapes the batched GEMM does not take) */
    struct tensor y2 = tensor_reshape(y, 2, S * n, o);
    for (int64_t s = 0; s < S; s++) {
        struct tensor ys = tensor_rows_view(&y2, s * n, n), ws = tensor_rows_view(w, s * o, o);
        struct tensor bs = bias ? tensor_rows_view(bias, s * o, o) : (struct tensor){0};
        op_matmul(&ys, x, &ws, bias ? &bs : NULL);
    }
}

static void check_rowwise(const struct tensor *y, const struct tensor *x, const struct tensor *w)
{
    CHECK(tensor_same_shape(y, x));
    CHECK(w->ndim == 1 && w->shape[0] == x->shape[x->ndim - 1]);
    check_same_dev(y, x);
    check_same_dev(y, w);
}

void op_rmsnorm(struct tensor *y, const struct tensor *x, const struct tensor *w, float eps)
{
    check_rowwise(y, x, w);
    DISPATCH(y->dev, rmsnorm, y, x, w, eps);
}

void op_layernorm(struct tensor *y, const struct tensor *x, const struct tensor *w, const struct tensor *b, float eps)
{
    check_rowwise(y, x, w);
    CHECK(tensor_same_shape(w, b));
    check_same_dev(y, b);
    DISPATCH(y->dev, layernorm, y, x, w, b, eps);
}

void op_rope(struct tensor *x, const struct tensor *pos, double theta)
{
    CHECK(x->ndim == 3 && pos->ndim == 1 && pos->dtype == DTYPE_I32 && pos->shape[0] == x->shape[0]);
    CHECK(x->shape[2] % 2 == 0);
    check_same_dev(x, pos);
    DISPATCH(x->dev, rope, x, pos, theta);
}

void op_attention(struct tensor *out, const struct tensor *q, const struct tensor *k, const struct tensor *v,
                  int64_t q_pos0, float scale, int flags)
{
    CHECK(q->ndim == 3 && k->ndim == 3 && v->ndim == 3 && out->ndim == 3);
    CHECK(tensor_same_shape(out, q) && tensor_same_shape(k, v));
    CHECK(q->shape[2] == k->shape[2] && q->shape[1] % k->shape[1] == 0);
    CHECK(out->data != q->data && out->data != k->data && out->data != v->data);
    if (flags & ATTN_CAUSAL) CHECK(q_pos0 >= 0 && q_pos0 + q->shape[0] <= k->shape[0]);
    check_same_dev(out, q);
    check_same_dev(out, k);
    check_same_dev(out, v);
    DISPATCH(out->dev, attention, out, q, k, v, q_pos0, scale, flags);
}

void op_attention_batch(struct tensor *out, const struct tensor *q, const struct tensor *k, const struct tensor *v,
                        int64_t n_seq, float scale, int flags)
{
    CHECK(q->ndim == 3 && k->ndim == 3 && v->ndim == 3 && out->ndim == 3);
    CHECK(tensor_same_shape(out, q) && tensor_same_shape(k, v));
    CHECK(q->shape[2] == k->shape[2] && q->shape[1] % k->shape[1] == 0);
    CHECKF(n_seq >= 1 && q->shape[0] % n_seq == 0 && k->shape[0] % n_seq == 0,
           "attention batch: %lld query rows and %lld keys are not %lld sequences", (long long)q->shape[0],
           (long long)k->shape[0], (long long)n_seq);
    CHECKF(!(flags & ATTN_CAUSAL), "op_attention_batch: no causal mask");
    CHECK(out->data != q->data && out->data != k->data && out->data != v->data);
    check_same_dev(out, q);
    check_same_dev(out, k);
    check_same_dev(out, v);
    DISPATCH(out->dev, attention_batch, out, q, k, v, n_seq, scale, flags);
}

void op_silu_mul(struct tensor *y, const struct tensor *gate, const struct tensor *up)
{
    CHECK(tensor_same_shape(y, gate) && tensor_same_shape(y, up));
    check_same_dev(y, gate);
    check_same_dev(y, up);
    DISPATCH(y->dev, silu_mul, y, gate, up);
}

void op_gelu_tanh(struct tensor *y, const struct tensor *x)
{
    CHECK(tensor_numel(y) == tensor_numel(x));
    check_same_dev(y, x);
    DISPATCH(y->dev, gelu_tanh, y, x);
}

void op_add(struct tensor *y, const struct tensor *a, const struct tensor *b)
{
    CHECK(tensor_same_shape(y, a));
    CHECK(tensor_same_shape(a, b) || (b->ndim == 1 && b->shape[0] == a->shape[a->ndim - 1]));
    check_same_dev(y, a);
    check_same_dev(y, b);
    DISPATCH(y->dev, add, y, a, b);
}

void op_scale(struct tensor *y, const struct tensor *x, float s)
{
    CHECK(tensor_same_shape(y, x));
    check_same_dev(y, x);
    DISPATCH(y->dev, scale, y, x, s);
}

bool op_weight_tiled(struct device dev, enum dtype dt, int64_t rows, int64_t k)
{
    return dev.kind == DEVICE_CUDA && quant_tiles_ok(dt, rows, k);
}

/* bytes between any two devices (host to host: memcpy) */
static void copy_bytes(struct device dd, void *d, struct device sd, const void *s, size_t n)
{
    if (dd.kind == DEVICE_CPU && sd.kind == DEVICE_CPU) {
        memcpy(d, s, n);
        return;
    }
#ifdef MINICPMV_CUDA
    cuda_memcpy(dd, d, sd, s, n);
#else
    CHECKF(0, "cross-device copy needs CUDA");
#endif
}

/* op_copy between row records and tiles (quant.h), through host buffers of whole tiles */
static void copy_tiles(struct tensor *dst, const struct tensor *src)
{
    CHECKF(dst->ndim == 2 && src->ndim == 2 && tensor_same_shape(dst, src), "copy %s <-> tiles: 2-D weights of one shape",
           src->name ? src->name : "?");
    CHECKF((!dst->tiled || dst->dev.kind == DEVICE_CUDA) && (!src->tiled || src->dev.kind == DEVICE_CUDA),
           "tiled weights live on GPUs only");
    const enum dtype dt = src->dtype;
    const int64_t rows = src->shape[0], k = src->shape[1], rb = (int64_t)dtype_row_bytes(dt, k);
    CHECK(quant_tiles_ok(dt, rows, k));
    int64_t chunk = ((int64_t)8 << 20) / (16 * rb) * 16; /* rows per round, whole tiles */
    if (chunk < 16) chunk = 16;
    if (chunk > rows) chunk = rows;
    struct err e;
    uint8_t *a = dev_alloc(device_cpu(), (size_t)(chunk * rb), &e), *b = dev_alloc(device_cpu(), (size_t)(chunk * rb), &e);
    CHECKF(a && b, "%s", e.msg);
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        const int64_t m = rows - r0 < chunk ? rows - r0 : chunk;
        const size_t off = (size_t)(r0 * rb), nb = (size_t)(m * rb);
        const uint8_t *rec = a; /* the chunk as records */
        if (src->tiled) {
            copy_bytes(device_cpu(), b, src->dev, (const uint8_t *)src->data + off, nb);
            quant_tiles_convert(a, b, dt, m, k, false);
        } else if (src->dev.kind == DEVICE_CPU) {
            rec = (const uint8_t *)src->data + off;
        } else {
            copy_bytes(device_cpu(), a, src->dev, (const uint8_t *)src->data + off, nb);
        }
        if (dst->tiled) {
            quant_tiles_convert(b, rec, dt, m, k, true);
            copy_bytes(dst->dev, (uint8_t *)dst->data + off, device_cpu(), b, nb);
        } else {
            copy_bytes(dst->dev, (uint8_t *)dst->data + off, device_cpu(), rec, nb);
        }
    }
    dev_free(device_cpu(), a);
    dev_free(device_cpu(), b);
}

void op_copy(struct tensor *dst, const struct tensor *src)
{
    CHECKF(tensor_numel(dst) == tensor_numel(src), "copy of %lld elements into %lld", (long long)tensor_numel(src),
           (long long)tensor_numel(dst));
    CHECKF(dst->dtype == src->dtype || (!dtype_is_quant(dst->dtype) && !dtype_is_quant(src->dtype)),
           "copy %s -> %s: quantized tensors are copied as bytes, never converted", dtype_name(src->dtype),
           dtype_name(dst->dtype));
    if (dst->tiled != src->tiled) {
        copy_tiles(dst, src);
        return;
    }
    if (device_eq(dst->dev, src->dev)) {
        if (dst->data == src->data && dst->dtype == src->dtype) return;
        DISPATCH(dst->dev, convert, dst, src);
        return;
    }
    CHECKF(dst->dtype == src->dtype, "cross-device copy must keep the dtype");
    copy_bytes(dst->dev, dst->data, src->dev, src->data, tensor_nbytes(src));
}

void op_argmax(const struct tensor *x, int32_t *out)
{
    CHECK(x->ndim == 2 && x->dtype == DTYPE_F32);
    DISPATCH(x->dev, argmax, x, out);
}

/* ---- decode-step ops ---- */

void op_add_rmsnorm(struct tensor *h, struct tensor *xn, const struct tensor *o, const struct tensor *w, float eps)
{
    check_rowwise(xn, h, w);
    CHECK(tensor_same_shape(h, o));
    CHECK(xn->data != h->data && xn->data != o->data);
    check_same_dev(h, o);
    DISPATCH(h->dev, add_rmsnorm, h, xn, o, w, eps);
}

/* the Linear of w on x's n rows whose outputs are the 2-D float tensors ys (each [n, o_i], o = sum o_i) */
static void check_fused_linear(struct tensor *const *ys, int np, const struct tensor *x, const struct tensor *nw,
                               const struct tensor *w, int64_t o)
{
    CHECK(x->ndim == 2 && w->ndim == 2 && is_float(x->dtype));
    check_weight(w);
    CHECKF(x->shape[1] == w->shape[1] && o == w->shape[0], "%s: x[%lld,%lld] w[%lld,%lld], %lld outputs",
           w->name ? w->name : "fused linear", (long long)x->shape[0], (long long)x->shape[1],
           (long long)w->shape[0], (long long)w->shape[1], (long long)o);
    check_same_dev(x, w);
    if (nw) {
        CHECK(nw->ndim == 1 && nw->shape[0] == x->shape[1] && is_float(nw->dtype));
        check_same_dev(x, nw);
    }
    for (int i = 0; i < np; i++) {
        const struct tensor *y = ys[i];
        CHECK(y->ndim == 2 && y->shape[0] == x->shape[0] && is_float(y->dtype) && y->data != x->data);
        check_same_dev(x, y);
        for (int j = 0; j < i; j++) CHECK(ys[j]->data != y->data);
    }
}

void op_rmsnorm_matmul(struct tensor *const *ys, int np, const struct tensor *x, const struct tensor *nw, float eps,
                       const struct tensor *w)
{
    CHECKF(np >= 1 && np <= RMSNORM_MATMUL_MAX_PARTS, "op_rmsnorm_matmul: %d parts", np);
    int64_t o = 0;
    for (int i = 0; i < np; i++) o += ys[i]->ndim == 2 ? ys[i]->shape[1] : -1;
    check_fused_linear(ys, np, x, nw, w, o);
    DISPATCH(x->dev, rmsnorm_matmul, ys, np, x, nw, eps, w);
}

void op_rmsnorm_swiglu(struct tensor *y, const struct tensor *x, const struct tensor *nw, float eps,
                       const struct tensor *w)
{
    CHECK(y->ndim == 2);
    check_fused_linear(&y, 1, x, nw, w, 2 * y->shape[1]);
    DISPATCH(x->dev, rmsnorm_swiglu, y, x, nw, eps, w);
}

/* A block table: I32, 1-D (one sequence) or 2-D (one per sequence), on dev. */
static void check_tab(const struct tensor *tab, int ndim, const struct tensor *on)
{
    CHECK(tab->dtype == DTYPE_I32 && tab->ndim == ndim && tab->shape[ndim - 1] >= 1);
    check_same_dev(on, tab);
}

void op_rope_qk(struct tensor *q, struct tensor *k, const struct tensor *pos, double theta, const struct tensor *v,
                struct tensor *kc, struct tensor *vc, const struct tensor *tab)
{
    CHECK(q->ndim == 3 && k->ndim == 3 && pos->ndim == 1 && pos->dtype == DTYPE_I32);
    CHECK(pos->shape[0] == q->shape[0] && k->shape[0] == q->shape[0] && q->shape[2] == k->shape[2]);
    CHECK(q->shape[2] % 2 == 0);
    check_same_dev(q, k);
    check_same_dev(q, pos);
    CHECK(!tab || kc);
    if (kc) {
        CHECK(v && vc && kc->ndim == 3 && tensor_same_shape(kc, vc) && tensor_same_shape(k, v));
        CHECK(kc->shape[1] == k->shape[1] && kc->shape[2] == k->shape[2]);
        CHECK(kc->dtype == k->dtype && vc->dtype == k->dtype && v->dtype == k->dtype);
        check_same_dev(q, v);
        check_same_dev(q, kc);
        check_same_dev(q, vc);
        if (tab) check_tab(tab, 1, q);
    }
    DISPATCH(q->dev, rope_qk, q, k, pos, theta, v, kc, vc, tab);
}

void op_rope_qk_rows(struct tensor *q, struct tensor *k, const struct tensor *pos, double theta, const struct tensor *v,
                     struct tensor *kc, struct tensor *vc, const struct tensor *rows)
{
    CHECK(q->ndim == 3 && k->ndim == 3 && pos->ndim == 1 && pos->dtype == DTYPE_I32);
    CHECK(pos->shape[0] == q->shape[0] && k->shape[0] == q->shape[0] && q->shape[2] == k->shape[2]);
    CHECK(q->shape[2] % 2 == 0);
    CHECK(v && kc && vc && kc->ndim == 3 && tensor_same_shape(kc, vc) && tensor_same_shape(k, v));
    CHECK(kc->shape[1] == k->shape[1] && kc->shape[2] == k->shape[2]);
    CHECK(kc->dtype == k->dtype && vc->dtype == k->dtype && v->dtype == k->dtype);
    CHECK(rows->dtype == DTYPE_I32 && rows->ndim == 1 && rows->shape[0] == q->shape[0]);
    check_same_dev(q, k);
    check_same_dev(q, pos);
    check_same_dev(q, v);
    check_same_dev(q, kc);
    check_same_dev(q, vc);
    check_same_dev(q, rows);
    DISPATCH(q->dev, rope_qk_rows, q, k, pos, theta, v, kc, vc, rows);
}

void op_rope_qkv_rows(struct tensor *q, const struct tensor *qkv, const struct tensor *pos, double theta,
                      struct tensor *kc, struct tensor *vc, const struct tensor *rows)
{
    CHECK(q->ndim == 3 && qkv->ndim == 2 && kc->ndim == 3 && tensor_same_shape(kc, vc));
    const int64_t n = q->shape[0], H = q->shape[1], hd = q->shape[2], Hkv = kc->shape[1];
    CHECKF(qkv->shape[0] == n && qkv->shape[1] == (H + 2 * Hkv) * hd && kc->shape[2] == hd && hd % 2 == 0,
           "rope_qkv_rows: qkv [%lld,%lld] for q [%lld,%lld,%lld] and %lld KV heads", (long long)qkv->shape[0],
           (long long)qkv->shape[1], (long long)n, (long long)H, (long long)hd, (long long)Hkv);
    CHECK(qkv->dtype == q->dtype && kc->dtype == q->dtype && vc->dtype == q->dtype && qkv->data != q->data);
    CHECK(pos->ndim == 1 && pos->dtype == DTYPE_I32 && pos->shape[0] == n);
    CHECK(rows->dtype == DTYPE_I32 && rows->ndim == 1 && rows->shape[0] == n);
    check_same_dev(q, qkv);
    check_same_dev(q, pos);
    check_same_dev(q, kc);
    check_same_dev(q, vc);
    check_same_dev(q, rows);
    DISPATCH(q->dev, rope_qkv_rows, q, qkv, pos, theta, kc, vc, rows);
}

void op_kv_store(struct tensor *cache, const struct tensor *x, const struct tensor *rows)
{
    CHECK(cache->ndim == x->ndim && cache->dtype == x->dtype && rows->dtype == DTYPE_I32 && rows->ndim == 1);
    CHECK(rows->shape[0] == x->shape[0] && tensor_row_numel(cache) == tensor_row_numel(x));
    check_same_dev(cache, x);
    check_same_dev(cache, rows);
    DISPATCH(cache->dev, kv_store, cache, x, rows);
}

void op_kv_pages(struct tensor *cache, struct tensor *x, const struct tensor *tab, int64_t p0, int to_cache)
{
    CHECK(cache->ndim == 3 && x->ndim == 3 && cache->dtype == x->dtype);
    CHECK(cache->shape[1] == x->shape[1] && cache->shape[2] == x->shape[2] && cache->shape[0] % KV_BLOCK == 0);
    check_same_dev(cache, x);
    check_tab(tab, 1, cache);
    CHECKF(p0 >= 0 && p0 + x->shape[0] <= tab->shape[0] * KV_BLOCK,
           "op_kv_pages: tokens %lld..%lld outside a table of %lld blocks", (long long)p0,
           (long long)(p0 + x->shape[0] - 1), (long long)tab->shape[0]);
    if (x->shape[0] == 0) return;
    DISPATCH(cache->dev, kv_pages, cache, x, tab, p0, to_cache);
}

static void check_attn_cache(const struct tensor *out, const struct tensor *q, const struct tensor *k,
                             const struct tensor *v)
{
    CHECK(q->ndim == 3 && k->ndim == 3 && v->ndim == 3 && out->ndim == 3);
    CHECK(tensor_same_shape(out, q) && tensor_same_shape(k, v));
    CHECK(q->shape[2] == k->shape[2] && q->shape[1] % k->shape[1] == 0);
    CHECK(out->data != q->data && out->data != k->data && out->data != v->data);
    check_same_dev(out, q);
    check_same_dev(out, k);
    check_same_dev(out, v);
}

void op_attention_pos(struct tensor *out, const struct tensor *q, const struct tensor *k, const struct tensor *v,
                      const struct tensor *pos, const struct tensor *tab, float scale, int flags)
{
    check_attn_cache(out, q, k, v);
    CHECK(pos->ndim == 1 && pos->dtype == DTYPE_I32 && pos->shape[0] == q->shape[0]);
    CHECKF(!(flags & ATTN_EAGER_F16), "op_attention_pos: eager rounding is for the vision tower only");
    check_same_dev(out, pos);
    if (tab) {
        check_tab(tab, 1, out);
        CHECK(k->shape[0] % KV_BLOCK == 0);
    }
    DISPATCH(out->dev, attention_pos, out, q, k, v, pos, tab, scale, flags);
}

void op_attention_rows(struct tensor *out, const struct tensor *q, const struct tensor *k, const struct tensor *v,
                       const struct tensor *tab, const struct tensor *seq, const struct tensor *n_keys, float scale)
{
    check_attn_cache(out, q, k, v);
    CHECK(k->shape[0] % KV_BLOCK == 0);
    check_tab(tab, 2, out);
    CHECK(seq->ndim == 1 && seq->dtype == DTYPE_I32 && seq->shape[0] == q->shape[0]);
    CHECK(n_keys->ndim == 1 && n_keys->dtype == DTYPE_I32 && n_keys->shape[0] == q->shape[0]);
    check_same_dev(out, seq);
    check_same_dev(out, n_keys);
    DISPATCH(out->dev, attention_rows, out, q, k, v, tab, seq, n_keys, scale);
}

void op_argmax_dev(const struct tensor *x, struct tensor *ids)
{
    CHECK(x->ndim == 2 && x->dtype == DTYPE_F32);
    CHECK(ids->dtype == DTYPE_I32 && tensor_numel(ids) == x->shape[0]);
    check_same_dev(ids, x);
    DISPATCH(x->dev, argmax_dev, x, ids);
}

void op_add_i32(struct tensor *x, int32_t d)
{
    CHECK(x->dtype == DTYPE_I32);
    DISPATCH(x->dev, add_i32, x, d);
}

void dev_set_overlap(struct device d, int mode)
{
#ifdef MINICPMV_CUDA
    if (d.kind == DEVICE_CUDA)
        cuda_set_pdl(d.ordinal, (mode & DEV_OVERLAP_ALL) != 0, (mode & (DEV_OVERLAP_ALL | DEV_OVERLAP_QUANT)) != 0,
                     (mode & DEV_OVERLAP_SMALL) != 0, (mode & DEV_OVERLAP_EARLY) != 0);
#else
    (void)d, (void)mode;
#endif
}

void dev_profile(struct device d, int on)
{
#ifdef MINICPMV_CUDA
    if (d.kind == DEVICE_CUDA) cuda_profile(d.ordinal, on);
#else
    (void)d, (void)on;
#endif
}

void dev_set_fuse(struct device d, int mode)
{
#ifdef MINICPMV_CUDA
    if (d.kind == DEVICE_CUDA) cuda_set_fuse(d.ordinal, mode);
#else
    (void)d, (void)mode;
#endif
}

int op_fused_preferred(const struct tensor *w)
{
#ifdef MINICPMV_CUDA
    if (w->dev.kind == DEVICE_CUDA) return cuda_fused_preferred(w);
#endif
    return -1;
}

int op_swiglu_preferred(const struct tensor *w)
{
#ifdef MINICPMV_CUDA
    if (w->dev.kind == DEVICE_CUDA) return cuda_swiglu_preferred(w);
#endif
    (void)w;
    return 0;
}

int dev_set_qgemv(struct device d, int v)
{
#ifdef MINICPMV_CUDA
    if (!strcmp(cuda_qmma_name(v), "?")) return -1;
    if (d.kind == DEVICE_CUDA) cuda_set_qmma(d.ordinal, v);
#else
    (void)d;
    if (v < 0) return -1;
#endif
    return 0;
}

int dev_set_f16mma(struct device d, int v)
{
#ifdef MINICPMV_CUDA
    if (!strcmp(cuda_f16mma_name(v), "?")) return -1;
    if (d.kind == DEVICE_CUDA) cuda_set_f16mma(d.ordinal, v);
#else
    (void)d;
    if (v < 0) return -1;
#endif
    return 0;
}

void dev_set_attn_kernel(struct device d, enum dev_attn k)
{
#ifdef MINICPMV_CUDA
    if (d.kind == DEVICE_CUDA) cuda_set_attn_kernel(d.ordinal, (int)k);
#else
    (void)d, (void)k;
#endif
}

void dev_set_attn_keys(struct device d, int64_t keys)
{
#ifdef MINICPMV_CUDA
    if (d.kind == DEVICE_CUDA) cuda_set_attn_keys(d.ordinal, keys);
#else
    (void)d, (void)keys;
#endif
}

void dev_set_attn_warps(struct device d, int w)
{
#ifdef MINICPMV_CUDA
    if (d.kind == DEVICE_CUDA) cuda_set_attn_warps(d.ordinal, w);
#else
    (void)d, (void)w;
#endif
}

void dev_set_attn_splits(struct device d, int s)
{
#ifdef MINICPMV_CUDA
    if (d.kind == DEVICE_CUDA) cuda_set_attn_splits(d.ordinal, s);
#else
    (void)d, (void)s;
#endif
}

/* ---- graphs ---- */

struct dev_graph {
    struct device dev;
    void *impl;
};

int dev_graph_begin(struct device d, struct err *e)
{
    if (d.kind != DEVICE_CUDA) return err_set(e, "graph capture needs a CUDA device");
#ifdef MINICPMV_CUDA
    return cuda_graph_begin(d.ordinal, e);
#else
    return err_set(e, "graph capture on GPU %d: built without CUDA", d.ordinal);
#endif
}

struct dev_graph *dev_graph_end(struct device d, struct err *e)
{
    if (d.kind != DEVICE_CUDA) {
        err_set(e, "graph capture needs a CUDA device");
        return NULL;
    }
#ifdef MINICPMV_CUDA
    struct dev_graph *g = calloc(1, sizeof *g);
    void *impl = cuda_graph_end(d.ordinal, e); /* ends the capture even when g could not be allocated */
    if (!impl || !g) {
        if (impl) cuda_graph_free(impl);
        if (!g) err_set(e, "out of memory");
        free(g);
        return NULL;
    }
    g->dev = d;
    g->impl = impl;
    return g;
#else
    err_set(e, "graph capture on GPU %d: built without CUDA", d.ordinal);
    return NULL;
#endif
}

int dev_graph_launch(struct dev_graph *g, struct err *e)
{
#ifdef MINICPMV_CUDA
    return cuda_graph_launch(g->impl, e);
#else
    (void)g;
    return err_set(e, "graph launch: built without CUDA");
#endif
}

int dev_graph_stale(const struct dev_graph *g)
{
#ifdef MINICPMV_CUDA
    return cuda_graph_stale(g->impl);
#else
    (void)g;
    return 0;
#endif
}

void dev_graph_free(struct dev_graph *g)
{
    if (!g) return;
#ifdef MINICPMV_CUDA
    cuda_graph_free(g->impl);
#endif
    free(g);
}

/* ---- sampling on the device ---- */

#include "sampler.h" /* the state layout (SAMPLE_ST_*) and sampler_state_header */

void op_sample_begin(struct tensor *state, const struct sampler_params *p, uint64_t draws)
{
    CHECK(state->dtype == DTYPE_I32 && tensor_numel(state) > SAMPLE_ST_HEADER);
    int32_t *h = calloc((size_t)tensor_numel(state), sizeof *h); /* header, then cleared flags */
    CHECKF(h, "op_sample_begin: out of memory");
    sampler_state_header(h, p, draws);
    struct tensor src = *state;
    src.dev = device_cpu();
    src.data = h;
    op_copy(state, &src);
    free(h);
}

void op_sample_dev(const struct tensor *x, struct tensor *ids, struct tensor *state, const struct tensor *sel)
{
    CHECK(x->ndim == 2 && x->shape[0] >= 1 && x->dtype == DTYPE_F32);
    const int64_t n = x->shape[0], words = sample_state_words(x->shape[1]);
    CHECK(ids->dtype == DTYPE_I32 && tensor_numel(ids) == n);
    CHECKF(state->dtype == DTYPE_I32 && tensor_numel(state) % words == 0 &&
               (sel ? tensor_numel(state) >= words : tensor_numel(state) == n * words),
           "sample state of %lld words for %lld rows of a vocabulary of %lld (%lld words a row)",
           (long long)tensor_numel(state), (long long)n, (long long)x->shape[1], (long long)words);
    check_same_dev(ids, x);
    check_same_dev(state, x);
    if (sel) {
        CHECK(sel->dtype == DTYPE_I32 && tensor_numel(sel) == n);
        check_same_dev(sel, x);
    }
    DISPATCH(x->dev, sample_dev, x, ids, state, sel);
}

/* ---- measurement ---- */

uint64_t op_read_sum(const struct tensor *x)
{
    CHECKF(!dtype_is_quant(x->dtype), "op_read_sum: %s tensor (plain dtypes only)", dtype_name(x->dtype));
    CHECKF(tensor_nbytes(x) % 8 == 0 && (uintptr_t)x->data % 16 == 0,
           "op_read_sum: %zu bytes at %p (needs a multiple of 8 bytes, 16-byte aligned)", tensor_nbytes(x), x->data);
#ifdef MINICPMV_CUDA
    if (x->dev.kind == DEVICE_CUDA) return cuda_read_sum(x);
#else
    CHECKF(x->dev.kind == DEVICE_CPU, "CUDA tensor but this binary was built without CUDA");
#endif
    return cpu_read_sum(x);
}
