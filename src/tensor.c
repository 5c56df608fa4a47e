/* tensor.c: shape bookkeeping, views, and bulk dtype conversion. */
#include "tensor.h"

#include <stdarg.h>
#include <stdio.h>

#include "common.h"

#if defined(__F16C__) && defined(__AVX2__)
#include <immintrin.h>
#define HAVE_F16C 1
#endif

size_t dtype_size(enum dtype t)
{
    switch (t) {
    case DTYPE_F32: return 4;
    case DTYPE_F16: return 2;
    case DTYPE_BF16: return 2;
    case DTYPE_I32: return 4;
    case DTYPE_U8: return 1;
    case DTYPE_Q8: case DTYPE_Q4: case DTYPE_NF4: break;
    }
    CHECKF(0, "dtype_size of %s: quantized dtypes have no element size (use tensor_nbytes)", dtype_name(t));
    return 0;
}

int64_t quant_group(enum dtype t, int64_t k)
{
    if (t == DTYPE_Q8) return k;
    int64_t g = 64;
    while (g > 1 && k % g) g /= 2;
    return g;
}

/* The record layouts of docs/QUANT.md: codes, then scales, padded to 16 bytes. */
size_t dtype_row_bytes(enum dtype t, int64_t k)
{
    if (!dtype_is_quant(t)) return (size_t)k * dtype_size(t);
    if (k <= 0 || k % 16) return 0;
    size_t b = 0;
    switch (t) {
    case DTYPE_Q8: b = (size_t)k + 2; break;                                     /* int8 codes, f16 scale */
    case DTYPE_Q4: b = (size_t)k / 2 + 2 * (size_t)(k / quant_group(t, k)); break; /* nibbles, f16 scales */
    case DTYPE_NF4: b = (size_t)k / 2 + 4 * (size_t)(k / quant_group(t, k)); break; /* nibbles, f32 absmax */
    default: break;
    }
    return (b + 15) & ~(size_t)15;
}

const char *dtype_name(enum dtype t)
{
    switch (t) {
    case DTYPE_F32: return "F32";
    case DTYPE_F16: return "F16";
    case DTYPE_BF16: return "BF16";
    case DTYPE_I32: return "I32";
    case DTYPE_U8: return "U8";
    case DTYPE_Q8: return "Q8";
    case DTYPE_Q4: return "Q4";
    case DTYPE_NF4: return "NF4";
    }
    return "?";
}

int64_t tensor_numel(const struct tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t tensor_nbytes(const struct tensor *t)
{
    if (!dtype_is_quant(t->dtype)) return (size_t)tensor_numel(t) * dtype_size(t->dtype);
    CHECK(t->ndim >= 1);
    const int64_t k = t->shape[t->ndim - 1];
    const size_t rb = dtype_row_bytes(t->dtype, k);
    CHECKF(rb > 0, "%s tensor %s: row length %lld is not a multiple of 16", dtype_name(t->dtype), t->name ? t->name : "",
           (long long)k);
    return (size_t)(tensor_numel(t) / k) * rb;
}

int64_t tensor_row_numel(const struct tensor *t)
{
    int64_t n = 1;
    for (int i = 1; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

struct tensor tensor_make(enum dtype dt, struct device dev, void *data, int ndim, ...)
{
    CHECK(ndim >= 0 && ndim <= TENSOR_MAX_DIM);
    struct tensor t = {.dtype = dt, .ndim = ndim, .data = data, .dev = dev, .name = NULL};
    va_list ap;
    va_start(ap, ndim);
    for (int i = 0; i < ndim; i++) t.shape[i] = va_arg(ap, int64_t);
    va_end(ap);
    return t;
}

struct tensor tensor_rows_view(const struct tensor *t, int64_t start, int64_t count)
{
    CHECK(t->ndim >= 1);
    CHECKF(start >= 0 && count >= 0 && start + count <= t->shape[0], "rows [%lld,+%lld) of %lld",
           (long long)start, (long long)count, (long long)t->shape[0]);
    CHECKF(!t->tiled || (start % 16 == 0 && count % 16 == 0), "rows [%lld,+%lld) of tiled %s: not whole 16-row tiles",
           (long long)start, (long long)count, t->name ? t->name : "weight");
    struct tensor v = *t;
    v.shape[0] = count;
    struct tensor row = *t;
    row.shape[0] = 1;
    v.data = (char *)t->data + (size_t)start * tensor_nbytes(&row);
    return v;
}

struct tensor tensor_reshape(const struct tensor *t, int ndim, ...)
{
    CHECK(ndim >= 1 && ndim <= TENSOR_MAX_DIM);
    struct tensor v = *t;
    v.ndim = ndim;
    va_list ap;
    va_start(ap, ndim);
    for (int i = 0; i < ndim; i++) v.shape[i] = va_arg(ap, int64_t);
    va_end(ap);
    CHECK(tensor_numel(&v) == tensor_numel(t));
    CHECKF(!dtype_is_quant(t->dtype) || v.shape[ndim - 1] == t->shape[t->ndim - 1],
           "reshape of a %s tensor must keep its row length", dtype_name(t->dtype));
    return v;
}

struct tensor tensor_carve(struct tensor_carver *c, enum dtype dt, int64_t d0, int64_t d1)
{
    struct tensor t = tensor_make(dt, c->dev, c->base ? c->base + c->off : NULL, 2, d0, d1);
    c->off += (tensor_nbytes(&t) + 255) & ~(size_t)255;
    c->raw += tensor_nbytes(&t);
    return t;
}

bool tensor_same_shape(const struct tensor *a, const struct tensor *b)
{
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

const char *tensor_shape_str(const struct tensor *t, char *buf, size_t n)
{
    size_t k = 0;
    k += (size_t)snprintf(buf + k, n - k, "[");
    for (int i = 0; i < t->ndim && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
    return buf;
}

void convert_to_f32(float *dst, const void *src, enum dtype st, int64_t n)
{
    int64_t i = 0;
    switch (st) {
    case DTYPE_F32: memcpy(dst, src, (size_t)n * 4); return;
    case DTYPE_F16: {
        const uint16_t *s = src;
#ifdef HAVE_F16C
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
#endif
        for (; i < n; i++) dst[i] = f16_to_f32(s[i]);
        return;
    }
    case DTYPE_BF16: {
        const uint16_t *s = src;
        for (; i < n; i++) dst[i] = bf16_to_f32(s[i]);
        return;
    }
    case DTYPE_I32: {
        const int32_t *s = src;
        for (; i < n; i++) dst[i] = (float)s[i];
        return;
    }
    case DTYPE_U8: {
        const uint8_t *s = src;
        for (; i < n; i++) dst[i] = (float)s[i];
        return;
    }
    case DTYPE_Q8: case DTYPE_Q4: case DTYPE_NF4: break;
    }
    CHECKF(0, "convert_to_f32 from %s: dequantize whole rows (quant.h)", dtype_name(st));
}

void convert_from_f32(void *dst, enum dtype dt, const float *src, int64_t n)
{
    int64_t i = 0;
    switch (dt) {
    case DTYPE_F32: memcpy(dst, src, (size_t)n * 4); return;
    case DTYPE_F16: {
        uint16_t *d = dst;
#ifdef HAVE_F16C
        for (; i + 8 <= n; i += 8)
            _mm_storeu_si128((__m128i *)(d + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
        for (; i < n; i++) d[i] = f32_to_f16(src[i]);
        return;
    }
    case DTYPE_BF16: {
        uint16_t *d = dst;
        for (; i < n; i++) d[i] = f32_to_bf16(src[i]);
        return;
    }
    case DTYPE_I32: {
        int32_t *d = dst;
        for (; i < n; i++) d[i] = (int32_t)src[i];
        return;
    }
    case DTYPE_U8: {
        uint8_t *d = dst;
        for (; i < n; i++) d[i] = (uint8_t)src[i];
        return;
    }
    case DTYPE_Q8: case DTYPE_Q4: case DTYPE_NF4: break;
    }
    CHECKF(0, "convert_from_f32 to %s: quantize whole rows (quant.h)", dtype_name(dt));
}
