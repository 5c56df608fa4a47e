/* test_cuda_quant.c: matmuls with quantized weights (Q8, Q4, NF4 row records; docs/QUANT.md) on the
 * GPU against their CPU twins, which compute the op on the F16 dequantization bit for bit (backend.h):
 *  - the GPU dequantization (the prefill path's kernel, whose per-weight code the GEMV shares) equals
 *    quant_dequant_rows_f16 bit for bit; the first mismatches are printed with their codes;
 *  - every decode GEMV kernel's in-register weights bit for bit (one-hot x: each output is one weight);
 *  - the decode GEMVs (every kernel: the A-operand and B-operand tensor-core ones n = 1..16, CUDA-core
 *    n = 1..8) and the prefill GEMM for n = 17 and 300 at the model's shapes
 *    (4096x4096, 14336x4096, 4096x14336, the 128256x4096 lm_head, whose prefill GEMM goes tile by tile,
 *    and the vision fc2 with K = 4304, scale groups of 16, code rows not a multiple of 16 bytes),
 *    within the fp32-accumulation tolerance (y in f32) and the fp16 one (y in f16, with a bias);
 *  - op_linear (bias + GELU, residual in place) and op_matmul_stacked (vision q|k|v) with NF4;
 *  - F16 weights on the same A-operand kernel (dev_set_f16mma: the batched decode step's 2..16 tokens): every
 *    launch shape bit for bit on one-hot x, and against the CPU twin at n = 1, 2, 3, 8, 9, 16 on the model's
 *    shapes and odd ones (o not a multiple of 16, k = 32), with and without a bias; the cases where it does
 *    not apply (k % 32, n = 17, F32 x, the knob off, one token with the default) take cuBLAS / the GEMV and
 *    must not launch it;
 *  - the fused decode ops (op_rmsnorm_matmul, op_rmsnorm_swiglu, op_linear with a residual) on the quantized
 *    GEMV's fused forms, one token, every format, against the CPU twin and the plain ops on the GPU;
 *  - the tiny model loaded on the GPU in q8, q4 (at load) and nf4 (mkmodel --quant nf4) gives the
 *    CPU's greedy tokens with the fused decode ops (llm_set_unfused 0) and the plain ones (the default),
 *    with a prompt long enough (20 tokens) to take the GEMM path at prefill; the plain ones launch exactly one
 *    of a layer's four fused forms (gate|up with SwiGLU in its epilogue, llm.swiglu).
 * `test_cuda_quant bench` prints every decode GEMV kernel's bandwidth per format at the four matrices of a
 * decoder layer, and their 32-layer sum per token; for F16 at n = 1, 2, 4, 8, 16 the GEMV kernel, cuBLAS and
 * each shape of the A kernel (`test_cuda_quant bench f16`: that part alone; `bench quant`: the quantized
 * formats alone). Without a GPU every case is skipped. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "backend.h"
#include "backend_impl.h"
#include "t.h"
#include "tensor.h"

#ifdef MINICPMV_CUDA

#include "cmd.h"
#include "config.h"
#include "llm.h"
#include "model.h"
#include "quant.h"
#include "safetensors.h"
#include "tcuda.h"
#include "tutil.h"

static const enum dtype FMTS[3] = {DTYPE_Q8, DTYPE_Q4, DTYPE_NF4};

/* Host records of a random [o, k] weight of dtype dt: Q8 / Q4 quantized from values of the
 * model's scale (std ~ 1/sqrt(k)), NF4 random codes with absmax in [0.02, 0.1). */
static struct tensor q_rand(enum dtype dt, int64_t o, int64_t k)
{
    struct tensor w = tensor_make(dt, device_cpu(), NULL, 2, o, k);
    const size_t rb = dtype_row_bytes(dt, k);
    CHECKF(rb > 0, "k %lld", (long long)k);
    w.data = calloc(1, tensor_nbytes(&w));
    CHECK(w.data);
    if (dt == DTYPE_NF4) {
        const int64_t g = quant_group(dt, k);
        for (int64_t r = 0; r < o; r++) {
            uint8_t *rec = (uint8_t *)w.data + (size_t)r * rb;
            for (int64_t b = 0; b < k / 2; b++) rec[b] = (uint8_t)(frand() * 128.0f + 128.0f);
            float *am = (float *)(rec + k / 2);
            for (int64_t j = 0; j < k / g; j++) am[j] = 0.06f + 0.04f * frand();
        }
        return w;
    }
    const float amp = 1.7f / sqrtf((float)k);
    float *f = malloc((size_t)k * 64 * sizeof *f);
    CHECK(f);
    struct err e = {{0}};
    for (int64_t r0 = 0; r0 < o; r0 += 64) {
        const int64_t m = o - r0 < 64 ? o - r0 : 64;
        for (int64_t i = 0; i < m * k; i++) f[i] = amp * frand();
        CHECKF(!quant_quantize_rows((uint8_t *)w.data + (size_t)r0 * rb, dt, f, m, k, "test", &e), "%s", e.msg);
    }
    free(f);
    return w;
}

/* 0: quantized weights go to the GPU in 16-row tiles where op_weight_tiled says so (as the model places them);
 * 1: as row records (the layout the kernels of cuda_quant.cu also read, and the only one for other shapes) */
static int g_records;

static struct tensor d_of(const struct tensor *h) /* device copy of a host tensor of any dtype */
{
    if (!dtype_is_quant(h->dtype) || h->ndim != 2) return d_from(h);
    struct tensor d = *h;
    struct err e;
    d.dev = device_cuda(0);
    d.tiled = !g_records && op_weight_tiled(d.dev, h->dtype, h->shape[0], h->shape[1]);
    d.data = dev_alloc(d.dev, tensor_nbytes(h), &e);
    CHECKF(d.data, "%s", e.msg);
    op_copy(&d, h);
    return d;
}

/* Records -> tiles on the GPU -> records: the same bytes; the device bytes are the tiles of quant.h at the
 * offsets written out here (not through quant_tile_code): row r's code byte p at (r / 16) 16 rb + (p / 64) 1024
 * + (r % 16) 64 + p % 64, Q4 group gi of row r at (r / 16) 16 rb + 16 cb + (32 (gi / 2) + 2 (r % 16) + gi % 2) 2 */
static void test_tiles_copy(void)
{
    static const struct { int64_t o, k; } sh[] = {{48, 256}, {32, 4096}, {16, 14336}};
    for (int f = 0; f < 3; f++)
        for (size_t s = 0; s < sizeof sh / sizeof sh[0]; s++) {
            const enum dtype dt = FMTS[f];
            const int64_t o = sh[s].o, k = sh[s].k, rb = (int64_t)dtype_row_bytes(dt, k);
            const int64_t cb = dt == DTYPE_Q8 ? k : k / 2, sb = dt == DTYPE_NF4 ? 4 : 2;
            struct tensor w = q_rand(dt, o, k), dw = d_of(&w);
            T_ASSERTF(dw.tiled, "%s [%lld, %lld] takes tiles", dtype_name(dt), (long long)o, (long long)k);
            const size_t nb = tensor_nbytes(&w);
            uint8_t *raw = malloc(nb), *back = malloc(nb);
            CHECK(raw && back);
            struct tensor braw = tensor_make(DTYPE_U8, dw.dev, dw.data, 1, (int64_t)nb);
            struct tensor hraw = tensor_make(DTYPE_U8, device_cpu(), raw, 1, (int64_t)nb);
            op_copy(&hraw, &braw); /* the device bytes as they lie */
            struct tensor hb = w;
            hb.data = back;
            op_copy(&hb, &dw); /* tiles -> records */
            int64_t bad = 0;
            const uint8_t *rec = w.data;
            for (int64_t r = 0; r < o; r++) {
                const int64_t tb = (r / 16) * 16 * rb;
                for (int64_t p = 0; p < cb; p++)
                    bad += raw[tb + (p / 64) * 1024 + (r % 16) * 64 + p % 64] != rec[r * rb + p];
                const int64_t ng = dt == DTYPE_Q8 ? 1 : k / 64;
                for (int64_t gi = 0; gi < ng; gi++)
                    for (int64_t b = 0; b < sb; b++) {
                        const int64_t at = dt == DTYPE_Q8 ? tb + 16 * cb + 2 * (r % 16) + b
                                                          : tb + 16 * cb + (32 * (gi / 2) + 2 * (r % 16) + gi % 2) * sb + b;
                        bad += raw[at] != rec[r * rb + cb + gi * sb + b];
                    }
            }
            const int same = !memcmp(back, w.data, nb);
            printf("  tiles %-4s [%5lld, %5lld]: %lld bytes misplaced, round trip %s\n", dtype_name(dt), (long long)o,
                   (long long)k, (long long)bad, same ? "equal" : "DIFFERS");
            T_ASSERTF(bad == 0 && same, "tiles %s [%lld, %lld]", dtype_name(dt), (long long)o, (long long)k);
            free(raw);
            free(back);
            free(w.data);
            t_free(&dw);
        }
}

/* GPU dequantization == quant_dequant_rows_f16, bit for bit */
static void test_dequant(void)
{
    static const struct { int64_t o, k; } sh[] = {{64, 4096}, {48, 4304}, {40, 14336}, {48, 14336}, {8, 16}, {8, 48}};
    for (int f = 0; f < 3; f++)
        for (size_t s = 0; s < 2 * (sizeof sh / sizeof sh[0]); s++) {
            g_records = s & 1; /* each shape in tiles (where it takes them) and as records */
            const int64_t o = sh[s / 2].o, k = sh[s / 2].k;
            if (g_records && !op_weight_tiled(device_cuda(0), FMTS[f], o, k)) continue; /* the same run again */
            struct tensor w = q_rand(FMTS[f], o, k), dw = d_of(&w);
            struct tensor d16 = d_new(DTYPE_F16, 2, o, k, 0);
            cuda_quant_dequant(&d16, &dw);
            uint16_t *ref = malloc((size_t)(o * k) * 2), *got = malloc((size_t)(o * k) * 2);
            CHECK(ref && got);
            quant_dequant_rows_f16(ref, w.data, w.dtype, o, k);
            struct tensor hg = tensor_make(DTYPE_F16, device_cpu(), got, 2, o, k);
            op_copy(&hg, &d16);
            int64_t bad = 0;
            for (int64_t i = 0; i < o * k; i++)
                if (ref[i] != got[i]) {
                    if (bad < 5) {
                        const int64_t r = i / k, j = i % k;
                        const uint8_t *rec = (const uint8_t *)w.data + (size_t)r * dtype_row_bytes(w.dtype, k);
                        printf("    %s [%lld,%lld] row %lld col %lld: gpu 0x%04x cpu 0x%04x (code byte 0x%02x)\n",
                               dtype_name(w.dtype), (long long)o, (long long)k, (long long)r, (long long)j, got[i],
                               ref[i], w.dtype == DTYPE_Q8 ? rec[j] : rec[j / 2]);
                    }
                    bad++;
                }
            printf("  dequant %-4s [%6lld, %5lld] %-7s: %lld of %lld differ %s\n", dtype_name(w.dtype), (long long)o,
                   (long long)k, dw.tiled ? "tiles" : "records", (long long)bad, (long long)(o * k), bad ? "FAIL" : "ok");
            T_ASSERTF(bad == 0, "dequant %s [%lld, %lld]: %lld values differ", dtype_name(w.dtype), (long long)o,
                      (long long)k, (long long)bad);
            free(ref);
            free(got);
            free(w.data);
            t_free(&dw);
            t_free(&d16);
        }
    g_records = 0;
}

/* The decode kernels the GEMV cases compare (cuda_set_qmma values, src/cuda/cuda_quant.cuh): the default,
 * the CUDA-core kernel, the older tensor-core kernel (weights as B), the A-operand kernel's 6 shapes (NF4:
 * dequantized in registers), and for NF4 the A-operand kernel with the older shared-table dequantization
 * (QMMA_A_NF4T = 14). */
static const int VARIANTS[] = {1, 0, 2, 8, 9, 10, 11, 12, 13, 14};
#define N_VARIANTS ((int)(sizeof VARIANTS / sizeof VARIANTS[0]))
static const int V_DEFAULT[] = {1};

/* whether variant v is a kernel of its own for dt (every variant is, for the three formats, but 14: NF4's
 * alone; Q4 / Q8 would run the older kernel's default again) */
static int variant_for(int v, enum dtype dt) { return v >= 0 && dtype_is_quant(dt) && (v != 14 || dt == DTYPE_NF4); }

/* op_matmul with a quantized weight, GPU vs CPU, for the token counts ns, each of the kernels vs */
static void matmul_case(enum dtype dt, int64_t o, int64_t k, const int *ns, int nn, const char *what, const int *vs,
                        int nv)
{
    struct tensor w = q_rand(dt, o, k), dw = d_of(&w);
    struct tensor b = h_rand(DTYPE_F16, 1, o, 0, 0, 0.5f), db = d_of(&b);
    for (int i = 0; i < nn; i++) {
        const int64_t n = ns[i];
        struct tensor x = h_rand(DTYPE_F16, 2, n, k, 0, 1.0f), dx = d_of(&x);
        /* y in f32, no bias: only the accumulation order differs; y in f16 with a bias: the model's case */
        struct tensor ref = h_new(DTYPE_F32, 2, n, o, 0), dy = d_new(DTYPE_F32, 2, n, o, 0);
        struct tensor ref16 = h_new(DTYPE_F16, 2, n, o, 0), dy16 = d_new(DTYPE_F16, 2, n, o, 0);
        op_matmul(&ref, &x, &w, NULL);
        op_matmul(&ref16, &x, &w, &b);
        for (int vi = 0; vi < nv; vi++) {
            if (!variant_for(vs[vi], dt)) continue;
            cuda_set_qmma(0, vs[vi]);
            op_matmul(&dy, &dx, &dw, NULL);
            op_matmul(&dy16, &dx, &dw, &db);
            char cas[128];
            snprintf(cas, sizeof cas, "%s %s %s n%lld [%lld,%lld] f32", dtype_name(dt), what, cuda_qmma_name(vs[vi]),
                     (long long)n, (long long)o, (long long)k);
            /* the GEMM path rounds x to fp16 (it is fp16 already) and runs on tensor cores: TOL_TC */
            check_close("matmul", cas, &dy, &ref, TOL_TC);
            snprintf(cas, sizeof cas, "%s %s %s n%lld [%lld,%lld] f16+bias", dtype_name(dt), what,
                     cuda_qmma_name(vs[vi]), (long long)n, (long long)o, (long long)k);
            check_close("matmul", cas, &dy16, &ref16, TOL_F16);
        }
        cuda_set_qmma(0, 1);
        t_free(&dy);
        free(ref.data);
        t_free(&dy16);
        free(ref16.data);
        free(x.data);
        t_free(&dx);
    }
    free(w.data);
    t_free(&dw);
    free(b.data);
    t_free(&db);
}

static const int NS_GEMV[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 16};
#define N_NS_GEMV ((int)(sizeof NS_GEMV / sizeof NS_GEMV[0]))

/* Every decode shape through every kernel: the tensor-core kernels where they apply (sm_80+ code; the
 * A-operand kernel: Q4 with k % 128 == 0, Q8 with k % 64 == 0; the older one: k a multiple of 64 (Q8) or 128,
 * scale groups of 32+), each falling back to the next where not, and the CUDA-core one (n <= 8; n 9..16
 * then take the dequantize + GEMM path). */
static void test_gemv(void)
{
    static const struct { int64_t o, k; const char *name; } sh[] = {
        {4096, 4096, "o_proj"}, {14336, 4096, "gate"}, {4096, 14336, "down"}, {1152, 4304, "fc2 (g16)"},
        {1003, 4096, "odd rows"}, {200, 48, "small"}, {40, 192, "k 192"}};
    for (int f = 0; f < 3; f++)
        for (size_t i = 0; i < sizeof sh / sizeof sh[0]; i++)
            matmul_case(FMTS[f], sh[i].o, sh[i].k, NS_GEMV, N_NS_GEMV, sh[i].name, VARIANTS, N_VARIANTS);
    static const int ns[] = {1, 8, 16};
    for (int f = 0; f < 3; f++) matmul_case(FMTS[f], 128256, 4096, ns, 3, "lm_head", VARIANTS, N_VARIANTS);
}

/* The one-hot sweep of the exact tests: x (F16, n tokens) has token t = 1 at column j0 + t, else 0, for j0 =
 * 0, n, 2n, .. < k, so every output of op_matmul(y f32, x, dw) is one weight, exact in fp32: it must equal
 * wf[row * k + j0 + t] (the weights as the CPU twin gives them) bit for bit. Outputs of tokens past k (the
 * last j0) are checked to be 0 when pad_zero, else left alone. Adds the mismatches and the checked weights to
 * *bad and *checked (the first 4 mismatches of the test printed under label), the matmuls to *calls (may be
 * NULL). */
static void onehot_sweep(const struct tensor *dw, const float *wf, int64_t o, int64_t k, int64_t n, int pad_zero,
                         const char *label, int64_t *bad, int64_t *checked, int64_t *calls)
{
    struct tensor x = h_new(DTYPE_F16, 2, n, k, 0), y = h_new(DTYPE_F32, 2, n, o, 0);
    struct tensor dy = d_new(DTYPE_F32, 2, n, o, 0), dx = d_new(DTYPE_F16, 2, n, k, 0);
    uint16_t *xh = x.data;
    for (int64_t j0 = 0; j0 < k; j0 += n) {
        memset(xh, 0, (size_t)(n * k) * 2);
        for (int64_t t = 0; t < n && j0 + t < k; t++) xh[t * k + j0 + t] = 0x3c00; /* 1.0 */
        op_copy(&dx, &x);
        op_matmul(&dy, &dx, dw, NULL);
        if (calls) (*calls)++;
        op_copy(&y, &dy);
        const float *yf = y.data;
        for (int64_t t = 0; t < n && (pad_zero || j0 + t < k); t++)
            for (int64_t r = 0; r < o; r++) {
                const float want = j0 + t < k ? wf[r * k + j0 + t] : 0.0f, got = yf[t * o + r];
                *checked += j0 + t < k;
                if (got != want) {
                    if (*bad < 4)
                        printf("    %s [%lld,%lld] n%lld row %lld col %lld: gpu %.9g cpu %.9g\n", label, (long long)o,
                               (long long)k, (long long)n, (long long)r, (long long)(j0 + t), got, want);
                    (*bad)++;
                }
            }
    }
    t_free(&x), t_free(&y), t_free(&dy), t_free(&dx);
}

/* The GEMV's in-register dequantization, bit for bit: with x one-hot (token t is 1 at column j0 + t, else 0)
 * every output is 1 * w[row][j0 + t] summed with zeros, exact in fp32, so y (f32) must equal the CPU twin's
 * F16 value of that weight (quant_dequant_rows) exactly. Sweeping j0 over k checks every weight and the
 * mapping of the mma's k onto the record. n = 16 (two N tiles) and 5 (one, tokens past n standing in). */
static void test_gemv_exact(void)
{
    static const struct { int64_t o, k; } sh[] = {{40, 1024}, {48, 1024}, {24, 256}, {32, 256}, {16, 4352}};
    static const int nsx[] = {16, 5};
    for (int f = 0; f < 3; f++)
        for (size_t si = 0; si < 2 * (sizeof sh / sizeof sh[0]); si++) {
            const enum dtype dt = FMTS[f];
            const int64_t o = sh[si / 2].o, k = sh[si / 2].k;
            g_records = si & 1; /* tiles (where the shape takes them), then records */
            if (g_records && !op_weight_tiled(device_cuda(0), dt, o, k)) continue; /* the same run again */
            struct tensor w = q_rand(dt, o, k), dw = d_of(&w);
            float *wf = malloc((size_t)(o * k) * sizeof *wf);
            CHECK(wf);
            quant_dequant_rows(wf, w.data, dt, o, k);
            /* pass 0: n = 16 and 5; pass 1 (tiles only): one token with the GEMVs of quantized weights launched as programmatic
             * dependents, where the A kernel copies x into shared memory once per block (QA_XS_KMAX); on an sm_90
             * card (elsewhere the request is ignored and this repeats the plain run at n = 1) */
            for (int pdl = 0; pdl < 1 + dw.tiled; pdl++) {
                if (pdl) dev_set_overlap(dw.dev, DEV_OVERLAP_SMALL | DEV_OVERLAP_QUANT);
                for (int vi = 0; vi < N_VARIANTS; vi++) {
                    const int v = VARIANTS[vi];
                    if (!variant_for(v, dt)) continue;
                    cuda_set_qmma(0, v);
                    int64_t bad = 0, checked = 0;
                    char label[64];
                    snprintf(label, sizeof label, "%s %s%s", dtype_name(dt), cuda_qmma_name(v), pdl ? " n1 pdl" : "");
                    if (pdl) onehot_sweep(&dw, wf, o, k, 1, 0, label, &bad, &checked, NULL);
                    else
                        for (size_t ni = 0; ni < sizeof nsx / sizeof nsx[0]; ni++)
                            onehot_sweep(&dw, wf, o, k, nsx[ni], 0, label, &bad, &checked, NULL);
                    printf("  gemv exact %-18s [%4lld, %4lld] %-7s: %lld of %lld weights differ %s\n", label,
                           (long long)o, (long long)k, dw.tiled ? "tiles" : "records", (long long)bad, (long long)checked,
                           bad ? "FAIL" : "ok");
                    T_ASSERTF(bad == 0 && checked == (pdl ? 1 : 2) * o * k, "gemv exact %s [%lld, %lld]: %lld of %lld differ",
                              label, (long long)o, (long long)k, (long long)bad, (long long)checked);
                }
                if (pdl) dev_set_overlap(dw.dev, DEV_OVERLAP_DEFAULT);
            }
            cuda_set_qmma(0, 1);
            free(wf);
            free(w.data);
            t_free(&dw);
        }
    g_records = 0;
}

static void test_gemm(void)
{
    static const int ns[] = {17, 300};
    for (int f = 0; f < 3; f++) {
        matmul_case(FMTS[f], 4096, 4096, ns, 2, "o_proj", V_DEFAULT, 1);
        matmul_case(FMTS[f], 14336, 4096, ns, 2, "gate", V_DEFAULT, 1);
        matmul_case(FMTS[f], 4096, 14336, ns, 2, "down", V_DEFAULT, 1);
        matmul_case(FMTS[f], 1152, 4304, ns, 2, "fc2 (g16)", V_DEFAULT, 1);
    }
    static const int n17[] = {17};
    for (int f = 0; f < 3; f++) matmul_case(FMTS[f], 128256, 4096, n17, 1, "lm_head (tiles)", V_DEFAULT, 1);
}

/* op_linear with bias + GELU (fused path), and residual in place; op_matmul_stacked (q|k|v) */
static void test_linear_stacked(void)
{
    static const int64_t ns[] = {300, 4};
    for (int f = 0; f < 3; f++)
        for (int i = 0; i < 2; i++) {
            const enum dtype dt = FMTS[f];
            const int64_t n = ns[i], k = 1152, o = 4304;
            struct tensor x = h_rand(DTYPE_F16, 2, n, k, 0, 1.0f), dx = d_of(&x);
            struct tensor w = q_rand(dt, o, k), dw = d_of(&w);
            struct tensor b = h_rand(DTYPE_F16, 1, o, 0, 0, 0.5f), db = d_of(&b);
            struct tensor ref = h_new(DTYPE_F16, 2, n, o, 0), dy = d_new(DTYPE_F16, 2, n, o, 0);
            op_linear(&ref, &x, &w, &b, LINEAR_GELU_TANH, NULL);
            op_linear(&dy, &dx, &dw, &db, LINEAR_GELU_TANH, NULL);
            char cas[96];
            snprintf(cas, sizeof cas, "%s fc1+gelu n%lld", dtype_name(dt), (long long)n);
            check_close("linear", cas, &dy, &ref, TOL_F16);
            /* residual in place: y = y + x w^T + b */
            struct tensor r = h_rand(DTYPE_F16, 2, n, o, 0, 2.0f), dr = d_of(&r);
            op_linear(&r, &x, &w, &b, LINEAR_NONE, &r);
            op_linear(&dr, &dx, &dw, &db, LINEAR_NONE, &dr);
            snprintf(cas, sizeof cas, "%s fc1 += in place n%lld", dtype_name(dt), (long long)n);
            check_close("linear", cas, &dr, &r, TOL_F16);
            /* stacked q|k|v [3*1152, 1152] */
            struct tensor w3 = q_rand(dt, 3 * k, k), dw3 = d_of(&w3);
            struct tensor b3 = h_rand(DTYPE_F16, 1, 3 * k, 0, 0, 0.5f), db3 = d_of(&b3);
            struct tensor ref3 = h_new(DTYPE_F16, 3, 3, n, k), dy3 = d_new(DTYPE_F16, 3, 3, n, k);
            op_matmul_stacked(&ref3, &x, &w3, &b3);
            op_matmul_stacked(&dy3, &dx, &dw3, &db3);
            snprintf(cas, sizeof cas, "%s q|k|v stacked n%lld", dtype_name(dt), (long long)n);
            check_close("stacked", cas, &dy3, &ref3, TOL_F16);
            free(x.data), t_free(&dx), free(w.data), t_free(&dw), free(b.data), t_free(&db);
            free(ref.data), t_free(&dy), free(r.data), t_free(&dr);
            free(w3.data), t_free(&dw3), free(b3.data), t_free(&db3), free(ref3.data), t_free(&dy3);
        }
}

/* ---- F16 weights on the A-operand kernel (dev_set_f16mma) ---- */

/* the cuda_set_f16mma values of the kernel's launch shapes (2, 3, ...: the forced shapes, from one token on) */
static int f16_shapes(int *vs, int max)
{
    int n = 0;
    for (int v = 2; n < max && strcmp(cuda_f16mma_name(v), "?"); v++) vs[n++] = v;
    return n;
}

/* One-hot x (token t is 1 at column j0 + t): every output is one weight, exact in fp32, so y (f32) must equal
 * w bit for bit; sweeping j0 over k checks every weight through the mma's k mapping (a lane's 8 halves as the
 * A registers of two mmas, x's words as B). n = 16 (two N tiles), 5 (one, tokens past n standing in) and 2;
 * o not a multiple of 16 (the last tile's rows stand in too). Each shape must launch the kernel every time. */
static void test_f16mma_exact(void)
{
    static const struct { int64_t o, k; } sh[] = {{40, 1024}, {24, 256}, {16, 4352}, {8, 32}};
    static const int nsx[] = {16, 5, 2};
    int vs[8];
    const int nv = f16_shapes(vs, 8);
    T_ASSERTF(nv >= 2, "%d launch shapes", nv);
    for (size_t si = 0; si < sizeof sh / sizeof sh[0]; si++) {
        const int64_t o = sh[si].o, k = sh[si].k;
        struct tensor w = h_rand(DTYPE_F16, 2, o, k, 0, 1.0f), dw = d_of(&w);
        float *wf = malloc((size_t)(o * k) * sizeof *wf);
        CHECK(wf);
        convert_to_f32(wf, w.data, DTYPE_F16, o * k);
        for (int vi = 0; vi < nv; vi++) {
            T_EQ_INT(dev_set_f16mma(device_cuda(0), vs[vi]), 0);
            int64_t bad = 0, checked = 0, calls = 0;
            const uint64_t l0 = cuda_f16mma_launches(0);
            char label[64];
            snprintf(label, sizeof label, "f16 %s", cuda_f16mma_name(vs[vi]));
            for (size_t ni = 0; ni < sizeof nsx / sizeof nsx[0]; ni++)
                onehot_sweep(&dw, wf, o, k, nsx[ni], 1, label, &bad, &checked, &calls);
            const int64_t ran = (int64_t)(cuda_f16mma_launches(0) - l0);
            printf("  f16mma exact %-7s [%4lld, %4lld]: %lld of %lld weights differ, %lld of %lld matmuls on the kernel %s\n",
                   cuda_f16mma_name(vs[vi]), (long long)o, (long long)k, (long long)bad, (long long)checked,
                   (long long)ran, (long long)calls, bad || ran != calls ? "FAIL" : "ok");
            T_ASSERTF(bad == 0 && checked == 3 * o * k, "f16mma exact %s [%lld, %lld]: %lld of %lld differ",
                      cuda_f16mma_name(vs[vi]), (long long)o, (long long)k, (long long)bad, (long long)checked);
            T_ASSERTF(ran == calls, "f16mma exact %s: the kernel ran %lld of %lld times", cuda_f16mma_name(vs[vi]),
                      (long long)ran, (long long)calls);
        }
        dev_set_f16mma(device_cuda(0), 0);
        free(wf);
        t_free(&w), t_free(&dw);
    }
}

/* op_matmul with F16 weights (x of dtype xt), GPU vs CPU twin, at the knob values vs and the token counts ns:
 * y in f32 without a bias (only the summation order differs: TOL_TC, as for cuBLAS's fp16 GEMM) and y in f16
 * with an f16 bias (the rounding of the sum: TOL_F16). The A kernel's launches are counted: it must run
 * exactly where it applies, so a case that fell back to cuBLAS cannot pass for one of the kernel. */
static void f16_case(int64_t o, int64_t k, const int *ns, int nn, const char *what, const int *vs, int nv,
                     enum dtype xt)
{
    struct tensor w = h_rand(DTYPE_F16, 2, o, k, 0, 1.7f / sqrtf((float)k)), dw = d_of(&w);
    struct tensor b = h_rand(DTYPE_F16, 1, o, 0, 0, 0.5f), db = d_of(&b);
    for (int i = 0; i < nn; i++) {
        const int64_t n = ns[i];
        struct tensor x = h_rand(xt, 2, n, k, 0, 1.0f), dx = d_of(&x);
        struct tensor ref = h_new(DTYPE_F32, 2, n, o, 0), dy = d_new(DTYPE_F32, 2, n, o, 0);
        struct tensor ref16 = h_new(DTYPE_F16, 2, n, o, 0), dy16 = d_new(DTYPE_F16, 2, n, o, 0);
        op_matmul(&ref, &x, &w, NULL);
        op_matmul(&ref16, &x, &w, &b);
        for (int vi = 0; vi < nv; vi++) {
            const int v = vs[vi];
            /* where the kernel applies: F16 x, k % 32 == 0, n <= 16, and n >= 2 for the default (1) */
            const int on = v >= 1 && xt == DTYPE_F16 && k % 32 == 0 && n <= 16 && (v >= 2 || n >= 2);
            T_EQ_INT(dev_set_f16mma(device_cuda(0), v), 0);
            const uint64_t l0 = cuda_f16mma_launches(0);
            op_matmul(&dy, &dx, &dw, NULL);
            op_matmul(&dy16, &dx, &dw, &db);
            const int64_t ran = (int64_t)(cuda_f16mma_launches(0) - l0);
            char cas[128];
            snprintf(cas, sizeof cas, "f16 %s %s n%lld [%lld,%lld]%s f32", what, cuda_f16mma_name(v), (long long)n,
                     (long long)o, (long long)k, xt == DTYPE_F16 ? "" : " x f32");
            /* an f32 x is rounded to f16 on the cuBLAS path: then the CPU's f32 x differs by that rounding */
            check_close("matmul", cas, &dy, &ref, xt == DTYPE_F16 ? TOL_TC : TOL_F16);
            snprintf(cas, sizeof cas, "f16 %s %s n%lld [%lld,%lld]%s f16+bias", what, cuda_f16mma_name(v),
                     (long long)n, (long long)o, (long long)k, xt == DTYPE_F16 ? "" : " x f32");
            check_close("matmul", cas, &dy16, &ref16, TOL_F16);
            T_ASSERTF(ran == (on ? 2 : 0), "%s: the A kernel ran %lld times, expected %d", cas, (long long)ran,
                      on ? 2 : 0);
        }
        dev_set_f16mma(device_cuda(0), 0);
        t_free(&dy), t_free(&ref), t_free(&dy16), t_free(&ref16), t_free(&x), t_free(&dx);
    }
    t_free(&w), t_free(&dw), t_free(&b), t_free(&db);
}

/* The model's shapes (o_proj and q, k / v, gate, down) and odd ones (o = 1003 and 40: not multiples of 16;
 * k = 32, one step; k = 192) through every shape, the default (1) and the knob off (0: cuBLAS / the GEMV);
 * then the cases it must leave to cuBLAS: k % 32 != 0, 17 tokens, an F32 x. */
static void test_f16mma(void)
{
    static const int ns[] = {1, 2, 3, 8, 9, 16};
    int vs[10] = {1, 0};
    const int nv = 2 + f16_shapes(vs + 2, 8);
    static const struct { int64_t o, k; const char *name; } sh[] = {
        {4096, 4096, "o_proj"}, {1024, 4096, "k_proj"}, {14336, 4096, "gate"}, {4096, 14336, "down"},
        {1003, 4096, "odd rows"}, {40, 32, "k 32"}, {200, 192, "k 192"}};
    for (size_t i = 0; i < sizeof sh / sizeof sh[0]; i++)
        f16_case(sh[i].o, sh[i].k, ns, 6, sh[i].name, vs, nv, DTYPE_F16);
    static const int n17[] = {4, 17};
    f16_case(300, 48, n17, 2, "k % 32 != 0", vs, nv, DTYPE_F16);
    f16_case(1024, 4096, n17 + 1, 1, "17 tokens", vs, nv, DTYPE_F16);
    f16_case(512, 1024, n17, 2, "x f32", vs, nv, DTYPE_F32);
}

/* ---- the tiny model end to end ---- */

#define ROOT "build/test-models/cuda-quant"
static const int32_t prompt[] = {128000, 791, 4062, 374, 220, 17, 13, 578, 1202, 3, 88, 1500,
                                 42,     9906, 11, 1148, 374, 701, 836, 30};
#define NP ((int64_t)(sizeof prompt / sizeof prompt[0]))
#define NGEN 16

/* The fused decode ops on quantized weights (cuda_qgemv.cu's fused forms of the A-operand kernel: the RMSNorm
 * staged per block, the output split into parts, the residual add in the epilogue, SwiGLU from a block's paired
 * gate and up tiles), one token, every format: against the CPU twin (the plain ops on the dequantized
 * weights), and against the plain ops on the GPU, bit for bit where the fused form runs the plain path's launch
 * shape (norm + parts for Q4 / Q8, the residual add for all three; SwiGLU and NF4's parts split k over other
 * warps: tolerance). Each case must have launched the fused kernel once. */
static void fused_check(const char *op, const char *cas, const struct tensor *got, const struct tensor *cpu,
                        const struct tensor *plain_dev, int exact)
{
    check_close(op, cas, got, cpu, TOL_F16);
    struct tensor plain = h_copy(plain_dev);
    char c2[160];
    snprintf(c2, sizeof c2, "%s = the plain ops on the GPU%s", cas, exact ? "" : " (tolerance)");
    check_close(op, c2, got, &plain, exact ? TOL_EXACT : TOL_F16);
    t_free(&plain);
}

static void fused_launched(uint64_t l0, const char *cas)
{
    const uint64_t ran = cuda_qfused_launches(0) - l0;
    T_ASSERTF(ran == 1, "%s: the fused kernel ran %llu times, expected once", cas, (unsigned long long)ran);
}

static void test_fused(void)
{
    static const struct { int64_t k; int np; int64_t parts[3]; int norm; } pc[] = {
        {4096, 3, {4096, 1024, 1024}, 1}, {256, 3, {64, 48, 16}, 1}, {512, 1, {48}, 0}};
    static const struct { int64_t k, f; int norm; } sc[] = {{4096, 512, 1}, {256, 48, 1}, {256, 32, 0}};
    static const struct { int64_t k, o; int bias, inplace; } rc[] = {{14336, 64, 0, 1}, {4096, 112, 0, 0}, {256, 48, 1, 1}};
    for (int f = 0; f < 3; f++) {
        const enum dtype dt = FMTS[f];
        const int nf4 = dt == DTYPE_NF4;
        for (size_t c = 0; c < sizeof pc / sizeof pc[0]; c++) {
            const int64_t k = pc[c].k;
            const int np = pc[c].np;
            int64_t o = 0;
            for (int i = 0; i < np; i++) o += pc[c].parts[i];
            struct tensor w = q_rand(dt, o, k), x = h_rand(DTYPE_F16, 2, 1, k, 0, 3.0f), nw = h_new(DTYPE_F16, 1, k, 0, 0);
            h_fill(&nw, 0.5f, 1.0f);
            struct tensor dw = d_of(&w), dx = d_of(&x), dnw = d_of(&nw), dxn = d_new(DTYPE_F16, 2, 1, k, 0);
            struct tensor ref[3], dy[3], py[3], *rp[3], *dp[3];
            for (int i = 0; i < np; i++) {
                ref[i] = h_new(DTYPE_F16, 2, 1, pc[c].parts[i], 0), rp[i] = &ref[i];
                dy[i] = d_new(DTYPE_F16, 2, 1, pc[c].parts[i], 0), dp[i] = &dy[i];
                py[i] = d_new(DTYPE_F16, 2, 1, pc[c].parts[i], 0);
            }
            op_rmsnorm_matmul(rp, np, &x, pc[c].norm ? &nw : NULL, 1e-5f, &w);
            const uint64_t l0 = cuda_qfused_launches(0);
            op_rmsnorm_matmul(dp, np, &dx, pc[c].norm ? &dnw : NULL, 1e-5f, &dw);
            char cas[128];
            snprintf(cas, sizeof cas, "%s parts k%lld o%lld np%d%s", dtype_name(dt), (long long)k, (long long)o, np,
                     pc[c].norm ? " norm" : "");
            fused_launched(l0, cas);
            if (pc[c].norm) op_rmsnorm(&dxn, &dx, &dnw, 1e-5f);
            else op_copy(&dxn, &dx);
            for (int i = 0, off = 0; i < np; off += (int)pc[c].parts[i], i++) {
                struct tensor wi = tensor_rows_view(&dw, off, pc[c].parts[i]);
                op_matmul(&py[i], &dxn, &wi, NULL);
            }
            for (int i = 0; i < np; i++) {
                char pcas[160];
                snprintf(pcas, sizeof pcas, "%s part %d", cas, i);
                fused_check("fused", pcas, &dy[i], &ref[i], &py[i], !nf4);
                free(ref[i].data), t_free(&dy[i]), t_free(&py[i]);
            }
            free(w.data), free(x.data), free(nw.data), t_free(&dw), t_free(&dx), t_free(&dnw), t_free(&dxn);
        }
        for (size_t c = 0; c < sizeof sc / sizeof sc[0]; c++) {
            const int64_t k = sc[c].k, fo = sc[c].f;
            struct tensor w = q_rand(dt, 2 * fo, k), x = h_rand(DTYPE_F16, 2, 1, k, 0, 3.0f), nw = h_new(DTYPE_F16, 1, k, 0, 0);
            h_fill(&nw, 0.5f, 1.0f);
            struct tensor ref = h_new(DTYPE_F16, 2, 1, fo, 0);
            op_rmsnorm_swiglu(&ref, &x, sc[c].norm ? &nw : NULL, 1e-5f, &w);
            struct tensor dw = d_of(&w), dx = d_of(&x), dnw = d_of(&nw), dy = d_new(DTYPE_F16, 2, 1, fo, 0);
            const uint64_t l0 = cuda_qfused_launches(0);
            op_rmsnorm_swiglu(&dy, &dx, sc[c].norm ? &dnw : NULL, 1e-5f, &dw);
            char cas[128];
            snprintf(cas, sizeof cas, "%s swiglu k%lld f%lld%s", dtype_name(dt), (long long)k, (long long)fo,
                     sc[c].norm ? " norm" : "");
            fused_launched(l0, cas);
            struct tensor dxn = d_new(DTYPE_F16, 2, 1, k, 0), dg = d_new(DTYPE_F16, 2, 1, fo, 0), du = d_new(DTYPE_F16, 2, 1, fo, 0);
            if (sc[c].norm) op_rmsnorm(&dxn, &dx, &dnw, 1e-5f);
            else op_copy(&dxn, &dx);
            struct tensor wg = tensor_rows_view(&dw, 0, fo), wu = tensor_rows_view(&dw, fo, fo);
            op_matmul(&dg, &dxn, &wg, NULL);
            op_matmul(&du, &dxn, &wu, NULL);
            op_silu_mul(&dg, &dg, &du);
            fused_check("fused", cas, &dy, &ref, &dg, 0);
            free(w.data), free(x.data), free(nw.data), free(ref.data);
            t_free(&dw), t_free(&dx), t_free(&dnw), t_free(&dy), t_free(&dxn), t_free(&dg), t_free(&du);
        }
        for (size_t c = 0; c < sizeof rc / sizeof rc[0]; c++) {
            const int64_t k = rc[c].k, o = rc[c].o;
            struct tensor w = q_rand(dt, o, k), x = h_rand(DTYPE_F16, 2, 1, k, 0, 1.0f), res = h_rand(DTYPE_F16, 2, 1, o, 0, 2.0f);
            struct tensor b = h_rand(DTYPE_F16, 1, o, 0, 0, 0.5f);
            const struct tensor *bp = rc[c].bias ? &b : NULL;
            struct tensor ref = h_new(DTYPE_F16, 2, 1, o, 0);
            op_linear(&ref, &x, &w, bp, LINEAR_NONE, &res);
            struct tensor dw = d_of(&w), dx = d_of(&x), dres = d_of(&res), db = d_of(&b);
            struct tensor dy = rc[c].inplace ? dres : d_new(DTYPE_F16, 2, 1, o, 0);
            struct tensor dres2 = d_of(&res), dt2 = d_new(DTYPE_F16, 2, 1, o, 0);
            const uint64_t l0 = cuda_qfused_launches(0);
            op_linear(&dy, &dx, &dw, rc[c].bias ? &db : NULL, LINEAR_NONE, &dres);
            char cas[128];
            snprintf(cas, sizeof cas, "%s residual k%lld o%lld%s%s", dtype_name(dt), (long long)k, (long long)o,
                     rc[c].bias ? " bias" : "", rc[c].inplace ? " in place" : "");
            fused_launched(l0, cas);
            op_matmul(&dt2, &dx, &dw, rc[c].bias ? &db : NULL);
            op_add(&dres2, &dres2, &dt2);
            fused_check("fused", cas, &dy, &ref, &dres2, 1);
            if (!rc[c].inplace) t_free(&dy);
            free(w.data), free(x.data), free(res.data), free(b.data), free(ref.data);
            t_free(&dw), t_free(&dx), t_free(&dres), t_free(&db), t_free(&dres2), t_free(&dt2);
        }
    }
}

/* step-0 logits and NGEN greedy tokens of the tiny model at dir, on dev (unfused: llm_set_unfused, -1 the
 * default) */
static int tiny_run(const char *dir, int quant, struct device dev, int unfused, float *logits0, int32_t *toks,
                    struct err *e)
{
    struct model_config cfg;
    struct safetensors *st = NULL;
    struct model m;
    struct llm s;
    int layer[64] = {0};
    struct model_placement pl;
    memset(&pl, 0, sizeof pl);
    memset(&m, 0, sizeof m);
    if (config_load(&cfg, dir, e) || safetensors_open_dir(&st, dir, e)) return -1;
    pl.n_devices = 1;
    pl.devs[0] = dev;
    pl.layer = layer;
    pl.quant = quant;
    if (model_load(&m, &cfg, st, &pl, DTYPE_F16, NULL, e)) { safetensors_close(st); return -1; }
    if (llm_init(&s, &m, &pl, DTYPE_F16, 64, 32, e)) { model_free(&m); safetensors_close(st); return -1; }
    if (unfused >= 0) llm_set_unfused(&s, unfused); /* else the engine's default */
    const int V = cfg.vocab_size;
    float *lg = malloc((size_t)V * sizeof *lg);
    CHECK(lg);
    int rc = llm_forward(&s, prompt, NULL, NP, logits0, e);
    if (!rc) memcpy(lg, logits0, (size_t)V * sizeof *lg);
    for (int i = 0; i < NGEN && !rc; i++) {
        int32_t best = 0;
        for (int j = 1; j < V; j++) best = lg[j] > lg[best] ? j : best;
        toks[i] = best;
        rc = llm_forward(&s, &best, NULL, 1, lg, e);
    }
    free(lg);
    llm_free(&s);
    model_free(&m);
    safetensors_close(st);
    return rc;
}

static void test_tiny_model(void)
{
    mkdir("build", 0755); /* the folders may not exist yet on a GPU machine */
    mkdir("build/test-models", 0755);
    mkdir(ROOT, 0755);
    const char *fp16 = t_tiny_model(7);
    T_ASSERTF(fp16 != NULL, "the tiny model could not be generated");
    if (!fp16) return;
    char nf4[256];
    snprintf(nf4, sizeof nf4, ROOT "/nf4");
    struct stat sb;
    char cfgp[300];
    snprintf(cfgp, sizeof cfgp, "%s/config.json", nf4);
    if (stat(cfgp, &sb) != 0) {
        char *a[] = {"mkmodel", "--out", nf4, "--size", "tiny", "--seed", "7", "--no-tokenizer", "--quiet", "--quant", "nf4", NULL};
        T_ASSERTF(cmd_mkmodel(11, a) == 0, "mkmodel --quant nf4 failed");
    }
    static const struct { int quant; int nf4; const char *name; } cs[] = {
        {DTYPE_Q8, 0, "q8 (at load)"}, {DTYPE_Q4, 0, "q4 (at load)"}, {0, 1, "nf4 (mkmodel --quant nf4)"}};
    struct model_config c;
    config_default_tiny(&c);
    const int V = c.vocab_size;
    float *lc = malloc((size_t)V * sizeof *lc), *lg = malloc((size_t)V * sizeof *lg);
    CHECK(lc && lg);
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) {
        const char *dir = cs[i].nf4 ? nf4 : fp16;
        int32_t tc[NGEN] = {0}, tg[NGEN] = {0};
        struct err e = {{0}};
        int rc = tiny_run(dir, cs[i].quant, device_cpu(), -1, lc, tc, &e);
        T_ASSERTF(rc == 0, "%s on the CPU: %s", cs[i].name, e.msg);
        uint64_t fl_fused = 0;
        for (int unf = 0; unf <= 1; unf++) { /* the fused decode ops, the plain ones (the default) */
            const char *how = unf ? "plain" : "fused";
            const uint64_t l0 = cuda_qfused_launches(0);
            rc = tiny_run(dir, cs[i].quant, device_cuda(0), unf, lg, tg, &e);
            T_ASSERTF(rc == 0, "%s on the GPU (%s): %s", cs[i].name, how, e.msg);
            if (rc) continue;
            const uint64_t fl = cuda_qfused_launches(0) - l0;
            /* fused: a layer's four fused forms (q|k|v + norm, o + residual, gate|up + norm + SwiGLU, down +
             * residual) each one-token step; plain: only gate|up with SwiGLU in its epilogue (llm.swiglu, the GPU
             * default), one of those four */
            if (!unf) fl_fused = fl;
            T_ASSERTF(unf ? 4 * fl == fl_fused && fl > 0 : fl > 0, "%s (%s): %llu fused launches (fused ops: %llu)",
                      cs[i].name, how, (unsigned long long)fl, (unsigned long long)fl_fused);
            double mx = 0, mref = 0;
            for (int j = 0; j < V; j++) {
                const double d = fabs((double)lg[j] - (double)lc[j]);
                if (d > mx) mx = d;
                if (fabs((double)lc[j]) > mref) mref = fabs((double)lc[j]);
            }
            int same = 0;
            while (same < NGEN && tc[same] == tg[same]) same++;
            printf("  tiny %-26s %s: step-0 logits max_abs %.3g (max |logit| %.3g); greedy tokens equal: %d/%d"
                   " (%llu fused launches)\n", cs[i].name, how, mx, mref, same, NGEN, (unsigned long long)fl);
            printf("    cpu:");
            for (int j = 0; j < NGEN; j++) printf(" %d", tc[j]);
            printf("\n    gpu:");
            for (int j = 0; j < NGEN; j++) printf(" %d", tg[j]);
            printf("\n");
            T_ASSERTF(same == NGEN, "%s (%s): GPU greedy tokens differ from the CPU's at step %d", cs[i].name, how, same);
            T_ASSERTF(mx <= 0.02 * (mref > 1 ? mref : 1), "%s (%s): step-0 logits differ by %g", cs[i].name, how, mx);
        }
    }
    free(lc);
    free(lg);
}

/* ---- bench: GB/s of the decode GEMV ---- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The bench's shapes: one decoder layer's matrices (q|k|v, o, gate|up, down); a token reads each 32 times. */
static const struct { int64_t o, k; } BSH[] = {{6144, 4096}, {4096, 4096}, {28672, 4096}, {4096, 14336}};
#define N_BSH ((int)(sizeof BSH / sizeof BSH[0]))
static const int BNS[] = {1, 8, 16};
#define N_BNS ((int)(sizeof BNS / sizeof BNS[0]))

/* The weight hw is replicated into dw until the copies exceed 512 MB (at most 64), and the timed matmuls cycle
 * through them, so that no copy is still in the L2 (50 MB on an H200) when it is read again: the figure is
 * DRAM bandwidth. Returns the number of copies; frees hw. */
static int bench_copies(struct tensor *hw, struct tensor dw[64])
{
    int nc = (int)((512u << 20) / tensor_nbytes(hw)) + 1;
    if (nc > 64) nc = 64;
    for (int i = 0; i < nc; i++) dw[i] = d_of(hw);
    free(hw->data);
    return nc;
}

/* microseconds per op_matmul(dy, dx, copy) after a warm-up, over at least 400 calls */
static double bench_time(struct tensor *dy, const struct tensor *dx, const struct tensor *dw, int nc)
{
    for (int i = 0; i < 2 * nc; i++) op_matmul(dy, dx, &dw[i % nc], NULL);
    dev_sync(device_cuda(0));
    const int reps = 50 * nc > 400 ? 50 * nc : 400;
    const double t0 = now_s();
    for (int i = 0; i < reps; i++) op_matmul(dy, dx, &dw[i % nc], NULL);
    dev_sync(device_cuda(0));
    return (now_s() - t0) / reps * 1e6;
}

/* Every kernel of VARIANTS for the quantized format dt at n = 1 (without and with PDL) and at n = 8, 16
 * (without). t_us[v][ni][pdl] gets the time per GEMV (0 where it did not run). */
static void bench_one(enum dtype dt, int64_t o, int64_t k, double t_us[N_VARIANTS][N_BNS][2])
{
    struct tensor hw = q_rand(dt, o, k), dw[64];
    const size_t wbytes = tensor_nbytes(&hw);
    const int nc = bench_copies(&hw, dw);
    for (int ni = 0; ni < N_BNS; ni++) {
        const int64_t n = BNS[ni];
        struct tensor x = h_rand(DTYPE_F16, 2, n, k, 0, 1.0f), dx = d_of(&x);
        struct tensor dy = d_new(DTYPE_F16, 2, n, o, 0);
        for (int vi = 0; vi < N_VARIANTS; vi++)
            for (int overlap = 0; overlap < 2; overlap++) {
                const int v = VARIANTS[vi];
                t_us[vi][ni][overlap] = 0;
                if (!variant_for(v, dt) || (n > 1 && overlap)) continue;
                cuda_set_qmma(0, v);
                dev_set_overlap(device_cuda(0), overlap);
                const double us = bench_time(&dy, &dx, dw, nc);
                t_us[vi][ni][overlap] = us;
                printf("  gemv %-4s [%6lld, %5lld] n%-2lld %-6s pdl %d: %8.2f us, %7.1f GB/s (weight %.1f MB x %d copies)\n",
                       dtype_name(dt), (long long)o, (long long)k, (long long)n, cuda_qmma_name(v), overlap, us,
                       (double)wbytes / us * 1e-3, (double)wbytes * 1e-6, nc);
            }
        free(x.data);
        t_free(&dx);
        t_free(&dy);
    }
    dev_set_overlap(device_cuda(0), DEV_OVERLAP_DEFAULT);
    cuda_set_qmma(0, 1);
    for (int i = 0; i < nc; i++) t_free(&dw[i]);
}

/* Per format and kernel: the four matrices of a decoder layer, times 32 layers = the GEMV time of one token
 * (lm_head, attention and the small kernels not included), and the weight bytes over that time. */
static void bench_quant(void)
{
    static const enum dtype all[3] = {DTYPE_Q8, DTYPE_Q4, DTYPE_NF4};
    static double t[3][N_BSH][N_VARIANTS][N_BNS][2];
    for (int f = 0; f < 3; f++)
        for (int si = 0; si < N_BSH; si++) bench_one(all[f], BSH[si].o, BSH[si].k, t[f][si]);
    printf("  decoder GEMVs per token (32 layers x q|k|v, o, gate|up, down; no lm_head):\n");
    for (int f = 0; f < 3; f++) {
        double bytes = 0;
        for (int si = 0; si < N_BSH; si++) {
            const struct tensor m = tensor_make(all[f], device_cpu(), NULL, 2, BSH[si].o, BSH[si].k);
            bytes += 32.0 * (double)tensor_nbytes(&m);
        }
        for (int vi = 0; vi < N_VARIANTS; vi++)
            for (int ni = 0; ni < N_BNS; ni++)
                for (int pdl = 0; pdl < 2; pdl++) {
                    double us = 0;
                    int ok = 1;
                    for (int si = 0; si < N_BSH; si++) {
                        ok &= t[f][si][vi][ni][pdl] > 0;
                        us += 32.0 * t[f][si][vi][ni][pdl];
                    }
                    if (!ok) continue;
                    printf("  step %-4s %-6s n%-2d pdl %d: %8.1f us  %7.1f GB/s  (%.0f tok/s if GEMVs were all)\n",
                           dtype_name(all[f]), cuda_qmma_name(VARIANTS[vi]), BNS[ni], pdl, us, bytes / us * 1e-3,
                           1e6 / us);
                }
    }
}

/* ---- bench: F16 weights at 1..16 tokens (the decode step and the batched one) ----
 * The layer's matrices as one token reads them (joined: q|k|v, o, gate|up, down) and as the batched step does
 * from 2 tokens on (parts: llm.c's matmul_joined runs one matmul per part: q and o 4096x4096, k and v
 * 1024x4096, gate and up 14336x4096, down): how many of each a layer reads in either sum. */
static const struct { int64_t o, k; int joined, parts; } FSH[] = {
    {6144, 4096, 1, 0}, {4096, 4096, 1, 2}, {28672, 4096, 1, 0}, {4096, 14336, 1, 1}, {1024, 4096, 0, 2},
    {14336, 4096, 0, 2}};
#define N_FSH ((int)(sizeof FSH / sizeof FSH[0]))
static const int FNS[] = {1, 2, 4, 8, 16};
#define N_FNS ((int)(sizeof FNS / sizeof FNS[0]))
#define F16_MAXK 10 /* the GEMV kernel, cuBLAS, the A kernel's shapes */

/* F16 kernel i of the bench: 0 the GEMV kernel, 1 cuBLAS, 2.. the A kernel in shape cuda_set_f16mma(i) */
static const char *f16_kernel_name(int i) { return i == 0 ? "gemv" : i == 1 ? "blas" : cuda_f16mma_name(i); }

/* Steers op_matmul of n tokens to kernel i; 0 when that kernel does not take n tokens (the GEMV n <= 8;
 * cuBLAS n >= 2, op_matmul's choice from 2 tokens on) */
static int f16_kernel_set(int i, int n)
{
    if ((i == 0 && n > 8) || (i == 1 && n < 2)) return 0;
    cuda_set_gemv16_max(0, i == 0 ? 8 : 1);
    dev_set_f16mma(device_cuda(0), i >= 2 ? i : 0);
    return 1;
}

/* Every F16 kernel at every n of FNS (n = 1 also with PDL) on matrix si; t_us[i][ni][pdl] gets the time per
 * matmul (0 where it did not run). The A kernel's launches are counted: a shape that fell back to cuBLAS
 * (code older than sm_80) is reported, not timed under the shape's name. */
static void bench_f16_one(int si, int nk, double t_us[F16_MAXK][N_FNS][2])
{
    const int64_t o = FSH[si].o, k = FSH[si].k;
    struct tensor hw = h_rand(DTYPE_F16, 2, o, k, 0, 0.02f), dw[64];
    const size_t wbytes = tensor_nbytes(&hw);
    const int nc = bench_copies(&hw, dw);
    for (int ni = 0; ni < N_FNS; ni++) {
        const int n = FNS[ni];
        struct tensor x = h_rand(DTYPE_F16, 2, n, k, 0, 1.0f), dx = d_of(&x);
        struct tensor dy = d_new(DTYPE_F16, 2, n, o, 0);
        for (int i = 0; i < nk; i++)
            for (int pdl = 0; pdl < 2; pdl++) {
                t_us[i][ni][pdl] = 0;
                if ((n > 1 && pdl) || !f16_kernel_set(i, n)) continue;
                dev_set_overlap(device_cuda(0), pdl);
                const uint64_t l0 = cuda_f16mma_launches(0);
                const double us = bench_time(&dy, &dx, dw, nc);
                if (i >= 2 && cuda_f16mma_launches(0) == l0) {
                    printf("  gemv f16  [%6lld, %5lld] n%-2d %-6s: the A kernel did not run (sm_80+ code needed)\n",
                           (long long)o, (long long)k, n, f16_kernel_name(i));
                    continue;
                }
                t_us[i][ni][pdl] = us;
                printf("  gemv f16  [%6lld, %5lld] n%-2d %-6s pdl %d: %8.2f us, %7.1f GB/s (weight %.1f MB x %d copies)%s\n",
                       (long long)o, (long long)k, n, f16_kernel_name(i), pdl, us, (double)wbytes / us * 1e-3,
                       (double)wbytes * 1e-6, nc, i == cuda_f16mma_default() ? " (default shape)" : "");
            }
        free(x.data);
        t_free(&dx);
        t_free(&dy);
    }
    dev_set_overlap(device_cuda(0), DEV_OVERLAP_DEFAULT);
    dev_set_f16mma(device_cuda(0), 0);
    cuda_set_gemv16_max(0, 1);
    for (int i = 0; i < nc; i++) t_free(&dw[i]);
}

/* the 32-layer sum of kernel i at n (FNS[ni]) over the joined (parts 0) or the parts' matrices; 0 when a
 * matrix did not run. With i < 0, each matrix's fastest kernel at that n. */
static double f16_step_us(double t[N_FSH][F16_MAXK][N_FNS][2], int nk, int i, int ni, int pdl, int parts)
{
    double us = 0;
    for (int si = 0; si < N_FSH; si++) {
        const int m = parts ? FSH[si].parts : FSH[si].joined;
        if (!m) continue;
        double best = 0;
        for (int j = i < 0 ? 0 : i; j < (i < 0 ? nk : i + 1); j++)
            if (t[si][j][ni][pdl] > 0 && (best == 0 || t[si][j][ni][pdl] < best)) best = t[si][j][ni][pdl];
        if (best == 0) return 0;
        us += 32.0 * m * best;
    }
    return us;
}

/* The F16 kernels at the layer's matrices, then per step (32 layers) of n tokens: each kernel's sum as one
 * token reads the layer (joined) and as the batched step does (parts), and per n the default shape and the
 * best against cuBLAS. */
static void bench_f16(void)
{
    static double t[N_FSH][F16_MAXK][N_FNS][2];
    int nk = 2;
    while (nk < F16_MAXK && strcmp(cuda_f16mma_name(nk), "?")) nk++;
    for (int si = 0; si < N_FSH; si++) bench_f16_one(si, nk, t[si]);
    for (int parts = 0; parts < 2; parts++) {
        double bytes = 0;
        for (int si = 0; si < N_FSH; si++) bytes += 32.0 * (parts ? FSH[si].parts : FSH[si].joined) * 2.0 * FSH[si].o * FSH[si].k;
        printf("  F16 decoder GEMVs per step of n tokens, %s (32 layers; no lm_head):\n",
               parts ? "parts as the batched step runs them (q, k, v, o, gate, up, down)"
                     : "joined as one token reads them (q|k|v, o, gate|up, down)");
        for (int i = 0; i < nk; i++)
            for (int ni = 0; ni < N_FNS; ni++)
                for (int pdl = 0; pdl < 2; pdl++) {
                    const double us = f16_step_us(t, nk, i, ni, pdl, parts);
                    if (us > 0)
                        printf("  step f16 %-6s %-6s n%-2d pdl %d: %8.1f us  %7.1f GB/s  %7.1f us per token%s\n",
                               parts ? "parts" : "joined", f16_kernel_name(i), FNS[ni], pdl, us, bytes / us * 1e-3,
                               us / FNS[ni], i == cuda_f16mma_default() ? " (default shape)" : "");
                }
        for (int ni = 0; ni < N_FNS; ni++) {
            const double blas = f16_step_us(t, nk, 1, ni, 0, parts), def = f16_step_us(t, nk, cuda_f16mma_default(), ni, 0, parts);
            double best = 0;
            int ib = -1;
            for (int i = 2; i < nk; i++) {
                const double us = f16_step_us(t, nk, i, ni, 0, parts);
                if (us > 0 && (ib < 0 || us < best)) best = us, ib = i;
            }
            if (blas <= 0 || def <= 0 || ib < 0) continue;
            printf("  f16 %-6s n%-2d: blas %8.1f us, %s (default) %8.1f us = %.2fx blas, best shape %s %8.1f us = %.2fx, "
                   "best kernel per matrix %8.1f us\n", parts ? "parts" : "joined", FNS[ni], blas,
                   f16_kernel_name(cuda_f16mma_default()), def, blas / def, f16_kernel_name(ib), best, blas / best,
                   f16_step_us(t, nk, -1, ni, 0, parts));
        }
    }
}

int main(int argc, char **argv)
{
    struct backend_info bi;
    backend_query(&bi);
    if (argc > 1 && !strcmp(argv[1], "bench")) {
        if (!bi.n_gpus) {
            fprintf(stderr, "test_cuda_quant bench: no CUDA device\n");
            return 1;
        }
        setvbuf(stdout, NULL, _IOLBF, 0); /* every line kept if a timeout stops the run */
        const char *only = argc > 2 ? argv[2] : "";
        if (strcmp(only, "quant")) bench_f16();
        if (strcmp(only, "f16")) bench_quant();
        return 0;
    }
    if (bi.n_gpus == 0) {
        (void)t_cur_fail;
        T_SKIP(test_dequant, "no CUDA device");
        T_SKIP(test_gemv_exact, "no CUDA device");
        T_SKIP(test_gemv, "no CUDA device");
        T_SKIP(test_gemm, "no CUDA device");
        T_SKIP(test_linear_stacked, "no CUDA device");
        T_SKIP(test_f16mma_exact, "no CUDA device");
        T_SKIP(test_f16mma, "no CUDA device");
        T_SKIP(test_tiny_model, "no CUDA device");
        return t_main_end("test_cuda_quant");
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    T_RUN(test_tiles_copy);
    T_RUN(test_dequant);
    T_RUN(test_gemv_exact);
    T_RUN(test_gemv);
    T_RUN(test_gemm);
    T_RUN(test_linear_stacked);
    T_RUN(test_f16mma_exact);
    T_RUN(test_f16mma);
    T_RUN(test_fused);
    T_RUN(test_tiny_model);
    return t_main_end("test_cuda_quant");
}

#else /* built without CUDA */

int main(void)
{
    (void)t_cur_fail;
    T_SKIP(test_cuda_quant, "built without CUDA (make CUDA=1)");
    return t_main_end("test_cuda_quant");
}

#endif
