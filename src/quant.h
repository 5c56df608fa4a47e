/* quant.h: the quantized weight formats (DTYPE_Q8, DTYPE_Q4, DTYPE_NF4) on the host: the row record
 * layouts, dequantization of rows to the F16 values they stand for, quantization of rows (q8, q4, and
 * bitsandbytes' NF4 with double quantization, as bitsandbytes' pure-PyTorch path computes it), and the
 * conversion of a bitsandbytes Params4bit (packed codes + nested absmax) into NF4 row records.
 * Owns: the numerics of every format. Does not own: which modules are quantized (model.c), reading
 * files (safetensors.c), the matmul kernels (backend_cpu.c, src/cuda).
 *
 * Layouts (docs/QUANT.md has the diagrams). A weight [O, K] (K % 16 == 0) is O records of
 * dtype_row_bytes(dt, K) bytes each, record r holding row r; within a record, codes first, then the
 * scales, then zero padding to a multiple of 16 bytes. g = quant_group(dt, K).
 *   Q8:  K int8 codes q (-127..127), then one f16 scale s.            w[j] = f16(q[j] * s)
 *   Q4:  K/2 bytes of 4-bit codes c (0..15), then K/g f16 scales s.   w[j] = f16((c[j] - 8) * s[j / g])
 *        Nibble order (for a fast GPU dequant): the 32-bit little-endian word u of bytes 4i..4i+3
 *        holds elements 8i..8i+7 with element 8i+2t at bits 4t..4t+3 and element 8i+2t+1 at bits
 *        16+4t..16+4t+3 (t = 0..3): (u >> 4t) & 0x000f000f puts the pair (2t, 2t+1) in the two
 *        16-bit halves, so OR 0x64006400 and one half2 subtract of 1032 give both values as half2.
 *   NF4: K/2 bytes of 4-bit codes c in bitsandbytes' order (byte b holds element 2b in its high
 *        nibble, 2b+1 in its low nibble), then K/g f32 absmax a (bitsandbytes' double-quantized absmax
 *        resolved at load: a = f32(f32(nested_code[absmax_u8] * nested_absmax[block / 256]) + offset)).
 *        w[j] = f16(f32(QUANT_NF4[c[j]] * a[j / g])), bitsandbytes' dequantize_4bit to fp16.
 * In every format the weight the ops use is that F16 value: f16() rounds an f32 product to nearest
 * even. (For Q8 and Q4 the product is exact in f32; a GPU multiply of two halves gives the same.) */
#ifndef MINICPMV_QUANT_H
#define MINICPMV_QUANT_H

#include <stdbool.h>
#include <stdint.h>

#include "common.h"
#include "tensor.h"

/* bitsandbytes' NF4 code table (quant_map), f32. */
extern const float QUANT_NF4[16];

/* Dequantizes row records: n rows of k values of dtype dt (quantized) at src (row stride
 * dtype_row_bytes) to f32 dst[n*k] holding exactly the F16 values the rows stand for. */
void quant_dequant_rows(float *dst, const void *src, enum dtype dt, int64_t n, int64_t k);
/* The same values as F16 bits. */
void quant_dequant_rows_f16(uint16_t *dst, const void *src, enum dtype dt, int64_t n, int64_t k);

/* Quantization runs on n_threads threads (0: quant_threads(), the online CPUs); the bytes it writes do
 * not depend on the thread count (each row, or each 64-value block, is a pure function of its values). */
#define QUANT_MAX_THREADS 256
int quant_threads(void);

/* Quantizes n rows of k values (src of dtype sdt: F32, F16 or BF16) into records of dtype dt (Q8 or Q4).
 * Fails (naming `what` and the first bad row) on a non-finite value or k not a multiple of 16. */
int quant_quantize_tensor(void *dst, enum dtype dt, const void *src, enum dtype sdt, int64_t n, int64_t k, int n_threads,
                          const char *what, struct err *e);
/* The same for f32 rows, on quant_threads() threads. */
int quant_quantize_rows(void *dst, enum dtype dt, const float *src, int64_t n, int64_t k, const char *what,
                        struct err *e);

/* ---- Tiles: the GPU layout of a quantized weight (docs/QUANT.md "Tiles") ----
 * A weight [rows, k] with rows % 16 == 0 and 64-byte steps of codes per row (Q4 and NF4: k % 128 == 0, Q8:
 * k % 64 == 0) is stored on a GPU in tiles of 16 rows (struct tensor's `tiled`; op_copy converts). A tile
 * takes the 16 rb bytes its 16 records would (rb = dtype_row_bytes, cb the code bytes of a row, sb the bytes
 * of a scale: 2, NF4 4), in this order:
 *   codes:  step s = 0 .. cb / 64 - 1 at 1024 s: row r (0..15) of the tile's 64 code bytes p = 64 s .. 64 s + 63
 *           at 1024 s + 64 r (the bytes as in the record)
 *   scales: at 16 cb; Q4 / NF4 group gi of row r at 16 cb + (32 (gi / 2) + 2 r + gi % 2) sb (a step's two
 *           groups of the 16 rows together), Q8 row r's scale at 16 cb + 2 r
 *   zeros to 16 rb.
 * A warp of the decode GEMV reads a step of its tile as one 1 KiB run and the step's scales as 32 sb bytes
 * (docs/CUDA.md). The offsets below, in bytes from the weight's start, serve the conversion and every GPU
 * reader that addresses single bytes. */
#ifdef __CUDACC__
#define QUANT_HD __host__ __device__
#else
#define QUANT_HD
#endif
/* Whether a quantized [rows, k] weight of dtype dt can take tiles. */
bool quant_tiles_ok(enum dtype dt, int64_t rows, int64_t k);
/* Code byte p (0 .. cb - 1) of row r; rb: record bytes. */
QUANT_HD static inline int64_t quant_tile_code(int64_t r, int64_t p, int64_t rb)
{
    return (r >> 4) * 16 * rb + (p >> 6) * 1024 + (r & 15) * 64 + (p & 63);
}
/* Scale gi of row r (Q8: gi = 0, its one scale); cb: code bytes of a row, sb: bytes of a scale. */
QUANT_HD static inline int64_t quant_tile_scale(int64_t r, int64_t gi, int64_t rb, int64_t cb, int sb, bool q8)
{
    const int64_t base = (r >> 4) * 16 * rb + 16 * cb;
    return q8 ? base + 2 * (r & 15) : base + (32 * (gi >> 1) + 2 * (r & 15) + (gi & 1)) * sb;
}
/* rows (a multiple of 16) row records at src to tiles at dst, or (to_tiles false) back; dst and src do not
 * overlap. */
void quant_tiles_convert(void *dst, const void *src, enum dtype dt, int64_t rows, int64_t k, bool to_tiles);

/* ---- bitsandbytes NF4 (Params4bit with compress_statistics, blocksize 64, nested blocksize 256) ---- */
#define QUANT_BNB_BLOCK 64
#define QUANT_BNB_NESTED_BLOCK 256

/* bitsandbytes' create_dynamic_map(signed=True): 256 sorted f32 values (the nested quant_map). */
void quant_bnb_dynamic_map(float map[256]);

/* The parts of one bitsandbytes NF4 weight [o, k], as stored in a checkpoint (host memory). */
struct quant_bnb_nf4 {
    int64_t o, k;
    const uint8_t *codes;        /* o*k/2 bytes, flat order */
    const uint8_t *absmax;       /* nblocks = ceil(o*k / 64); NULL without double quantization: */
    const float *nested_absmax;  /* ceil(nblocks / 256); or, when absmax is NULL, the f32 absmax [nblocks] */
    const float *nested_map;     /* 256 */
    float offset;                /* nested_offset */
};
/* The resolved f32 absmax of block b (as bitsandbytes' dequantize_blockwise + offset computes it). */
float quant_bnb_absmax(const struct quant_bnb_nf4 *q, int64_t b);
/* Writes the o NF4 row records of q into dst (tensor_nbytes of an NF4 [o, k] tensor). */
void quant_bnb_to_rows(void *dst, const struct quant_bnb_nf4 *q);

/* Quantizes w[numel] (flat; dtype sdt: F32, F16 or BF16) the way bitsandbytes' quantize_4bit(nf4,
 * blocksize 64, compress_statistics) does on its pure-PyTorch path: codes[numel/2], absmax_u8[nblocks],
 * nested_absmax[ceil(nblocks/256)], *offset (mean of the f32 absmax), using nested_map (from
 * quant_bnb_dynamic_map). absmax_f32 is caller scratch of nblocks floats. */
void quant_bnb_quantize(const void *w, enum dtype sdt, int64_t numel, const float nested_map[256], uint8_t *codes,
                        uint8_t *absmax_u8, float *nested_absmax, float *offset, float *absmax_f32, int n_threads);
/* quant_bnb_quantize's *offset alone (one read of w; absmax_f32: scratch of nblocks floats): what the JSON
 * quant state needs before the bytes are written. */
float quant_bnb_offset(const void *w, enum dtype sdt, int64_t numel, float *absmax_f32, int n_threads);

#endif
