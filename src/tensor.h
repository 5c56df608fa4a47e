/* tensor.h: dtype, shape (PyTorch order, outermost first, contiguous), device tag, views
 * along dim 0, and the exact fp16/bf16 <-> fp32 conversions.
 * Invariant: every tensor carries a device tag; code that dereferences data on the host must
 * first CHECK(tensor_on_host(t)), so a device pointer is never read as a host pointer. */
#ifndef MINICPMV_TENSOR_H
#define MINICPMV_TENSOR_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* Plain dtypes have a fixed size per element. DTYPE_U8 is raw bytes (bitsandbytes' packed codes and
 * absmax, its JSON quant state, our quantized rows as stored in a file).
 * Quantized dtypes (DTYPE_Q8, DTYPE_Q4, DTYPE_NF4; layouts: docs/QUANT.md and quant.h) describe a
 * weight matrix [rows..., K] whose logical shape is the fp16 one; each row of K values is stored as one
 * self-contained record of dtype_row_bytes(dt, K) bytes (codes, then its scales, zero-padded to a
 * multiple of 16 bytes), so row views, joins of several matrices with equal K (q|k|v, gate|up) and byte
 * counts work from the shape alone. dtype_size() is undefined for them (CHECK); use tensor_nbytes. */
enum dtype { DTYPE_F32 = 0, DTYPE_F16, DTYPE_BF16, DTYPE_I32, DTYPE_U8, DTYPE_Q8, DTYPE_Q4, DTYPE_NF4 };

enum device_kind { DEVICE_CPU = 0, DEVICE_CUDA };

struct device {
    enum device_kind kind;
    int ordinal; /* CUDA device index; 0 for the CPU */
};

#define TENSOR_MAX_DIM 4

struct tensor {
    enum dtype dtype;
    int ndim;
    int64_t shape[TENSOR_MAX_DIM];
    void *data;
    struct device dev;
    const char *name; /* for messages; may be NULL */
    /* A quantized weight on a GPU in 16-row tiles (quant.h "Tiles"; op_weight_tiled decides, op_copy converts
     * to and from row records): the same bytes per 16 rows as 16 records, so byte counts and views whose rows
     * start and end on tile boundaries (checked) work as for records. false everywhere else. */
    bool tiled;
};

static inline struct device device_cpu(void) { struct device d = {DEVICE_CPU, 0}; return d; }
static inline struct device device_cuda(int i) { struct device d = {DEVICE_CUDA, i}; return d; }
static inline bool device_eq(struct device a, struct device b) { return a.kind == b.kind && a.ordinal == b.ordinal; }
static inline bool tensor_on_host(const struct tensor *t) { return t->dev.kind == DEVICE_CPU; }

/* Bytes per element of a plain dtype; aborts (CHECK) for a quantized one. */
size_t dtype_size(enum dtype t);
const char *dtype_name(enum dtype t);
static inline bool dtype_is_quant(enum dtype t) { return t == DTYPE_Q8 || t == DTYPE_Q4 || t == DTYPE_NF4; }
/* Bytes of one row of k values: k * dtype_size for plain dtypes; the record size for quantized ones
 * (0 when k is not a valid row length for the format: k must be a positive multiple of 16). */
size_t dtype_row_bytes(enum dtype t, int64_t k);
/* Values per scale of a quantized row of k values: Q8 k (one scale per row); Q4 and NF4 gcd(k, 64),
 * i.e. 64 when k % 64 == 0, else 32 or 16. */
int64_t quant_group(enum dtype t, int64_t k);
int64_t tensor_numel(const struct tensor *t);
size_t tensor_nbytes(const struct tensor *t);
/* Number of rows along dim 0, and the element count of one such row. */
static inline int64_t tensor_rows(const struct tensor *t) { return t->ndim ? t->shape[0] : 1; }
int64_t tensor_row_numel(const struct tensor *t);

/* A tensor over existing memory. ndim values follow. */
struct tensor tensor_make(enum dtype dt, struct device dev, void *data, int ndim, ...);
/* Rows [start, start+count) along dim 0; same dtype, device, inner shape (for a quantized tensor the
 * view starts at a record boundary: row records are self-contained; a tiled one needs start and count
 * multiples of 16). */
struct tensor tensor_rows_view(const struct tensor *t, int64_t start, int64_t count);
/* Same memory viewed with another shape of equal numel (a quantized tensor keeps its last dim). */
struct tensor tensor_reshape(const struct tensor *t, int ndim, ...);
bool tensor_same_shape(const struct tensor *a, const struct tensor *b);
/* "[2, 3, 4]" into buf. */
const char *tensor_shape_str(const struct tensor *t, char *buf, size_t n);

/* A bump allocator carving 2-D tensors out of one block, each start 256-byte aligned. With
 * base == NULL it only counts, so one carving function both sizes a block and lays it out. */
struct tensor_carver {
    char *base;
    size_t off;          /* bytes used so far */
    struct device dev;
    size_t raw;          /* bytes of the views themselves, without the alignment padding */
};
struct tensor tensor_carve(struct tensor_carver *c, enum dtype dt, int64_t d0, int64_t d1);

/* Exact IEEE conversions (round to nearest even), same results as torch's .half()/.float(). */
static inline float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            man &= 0x3ff;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) bits = sign | 0x7f800000u | (man << 13);
    else bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0)); /* inf/nan */
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds to >= 65520: inf */
    if (ax < 0x38800000u) { /* below the smallest normal half: subnormal or zero */
        if (ax < 0x33000000u) return (uint16_t)sign; /* < 2^-25: rounds to 0 */
        uint32_t e = ax >> 23, m = (ax & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e; /* 14 + (113 - e) + ... so that result = m >> (shift) */
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ((ax - 0x38000000u) >> 13), rem = ax & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
    return (uint16_t)(sign | r);
}

static inline float bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

/* Converts n elements of src (dtype st) to float. */
void convert_to_f32(float *dst, const void *src, enum dtype st, int64_t n);
/* Converts n floats to dtype dt (rounding to nearest even for 16-bit types). */
void convert_from_f32(void *dst, enum dtype dt, const float *src, int64_t n);

#endif
