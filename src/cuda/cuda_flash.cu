/* cuda_flash.cu: tensor-core flash attention (FlashAttention-2 style) for many query rows: LLM
 * prefill (causal, GQA), the vision tower (bidirectional, hd 72; all pieces in one launch through
 * op_attention_batch: the piece is blockIdx.z) and the resampler (96 queries).
 * cuda_flash_attention returns 1 when it handled the call and 0 to let the general CUDA-core
 * kernel of cuda_attention.cu run: q, k, v, out not all F16, n < 16 (decode), hd not a multiple of
 * 8 or its padded size not one of 16, 32, 64, 80, 128, T < 1, or a pointer not 16-byte aligned.
 *
 * Layout of one CTA (NW warps, BM = 16 * NW "rows", BN = 64 keys per tile):
 *  - a row is a (query, head) pair. GP heads of one GQA group are packed per CTA (GP = the largest
 *    power of two <= 16 dividing H/Hkv): row r is query i0 + r / GP, head h0 + r % GP, so one K/V
 *    tile in shared memory serves GP heads and BM / GP queries (vision, resampler: GP = 1);
 *  - warp w owns rows 16w .. 16w + 15: Q (16 x hd) lives in registers as mma A fragments for the
 *    whole kernel; S = Q K^T (16 x 64, fp32) and O (16 x hd, fp32) are register accumulators;
 *  - mma.sync m16n8k16 (fp16 in, fp32 accumulate); fragments with ldmatrix (.trans for V);
 *  - K/V tiles: cp.async (16-byte, zero-filling rows >= T and the padding columns hd..HDP-1),
 *    two stages (ST = 2): the load of tile t+1 is in flight while tile t is computed; one stage
 *    (ST = 1, hd 128 only) where the device's shared memory opt-in limit is too small for two
 *    (sm_75: 64 KiB per block), chosen at run time from cudaDevAttrMaxSharedMemoryPerBlockOptin;
 *  - online softmax in fp32 in the log2 domain: x = s * scale * log2(e), m = running max,
 *    p = 2^(x - m), alpha = 2^(m_old - m_new); P is rounded to fp16 for the P V mma; the row sums
 *    l stay per-thread partials (all rescaled by the same alpha) and are reduced once at the end;
 *  - causal: a CTA stops at the last key its last query sees; a warp skips the tiles that are
 *    fully masked for its rows and applies the mask only on tiles that cross its diagonal (or T);
 *  - the result (o / l, rounded to fp16) is staged through the warp's own rows of the Q buffer
 *    and written with 16-byte stores.
 * Shared memory rows are HDP + 8 halves long (HDP = hd rounded up to 16): an odd number of 16-byte
 * chunks per row, so the 8 row addresses of each ldmatrix phase hit 8 different bank groups.
 * Numerics: P in fp16 (FlashAttention's choice) and a different summation order than the CPU:
 * ~1e-4 relative. ATTN_EAGER_F16 (Idefics2 eager rounding of scores and probabilities) cannot be
 * reproduced by a streaming softmax; here it runs in fp32 like the other calls, a rounding-level
 * departure from cpu_attention (docs/CUDA_FLASH.md). */
#include <mutex>

#include "cuda/cuda_common.cuh"

#define FA_BN 64 /* keys per tile */

struct fa_args {
    const __half *q, *k, *v;
    __half *out;
    int n, T, H, Hkv, hd, G;
    int gp_log2;     /* heads packed per CTA = 1 << gp_log2 */
    int q_pos0;      /* causal only: absolute position of query row 0 */
    int causal;
    float scale_log2; /* scale * log2(e) */
    int64_t q_ss, kv_ss; /* batch: elements between sequences (blockIdx.z) in q/out and in k/v */
};

/* ---- PTX wrappers ----
 * Every instruction here exists on sm_80 and newer; sm_75 (Turing: T4, RTX 20xx) has ldmatrix and
 * mma.sync m16n8k8 but neither cp.async nor m16n8k16, so for it (and for the compute_75 PTX that the
 * driver JIT-compiles) the copies are plain 16-byte loads and stores that complete at once (the two
 * stages then simply do not overlap; the __syncthreads of the pipeline still order them) and a k16
 * step is two k8 steps. Same result up to the fp32 accumulation order of the two halves. */

__device__ __forceinline__ uint32_t fa_smem_addr(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* 16 bytes global -> shared, asynchronous; ok == false writes 16 zero bytes and reads nothing */
__device__ __forceinline__ void fa_cp16(void *dst, const void *src, bool ok)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(fa_smem_addr(dst)), "l"(src),
                 "r"(ok ? 16 : 0)
                 : "memory");
#else
    *reinterpret_cast<uint4 *>(dst) = ok ? *reinterpret_cast<const uint4 *>(src) : make_uint4(0, 0, 0, 0);
#endif
}

__device__ __forceinline__ void fa_cp_commit()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

/* waits until at most N of this thread's committed groups are still in flight (sm_75: nothing is) */
template <int N> __device__ __forceinline__ void fa_cp_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

__device__ __forceinline__ void fa_ldsm_x4(uint32_t r[4], const __half *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(fa_smem_addr(p)));
}

__device__ __forceinline__ void fa_ldsm_x4_t(uint32_t r[4], const __half *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(fa_smem_addr(p)));
}

/* c[16x8] += a[16x8] b[8x8] (sm_75+): the half-width k step for a head dim that ends mid k16 chunk
 * (hd 72), and the sm_75 form of fa_mma */
__device__ __forceinline__ void fa_mma_k8(float c[4], uint32_t a0, uint32_t a1, uint32_t b0)
{
    asm("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(b0));
}

/* c[16x8] += a[16x16] b[16x8], fp16 inputs, fp32 accumulators. On sm_75: k 0..7 then k 8..15, since
 * the k16 A fragment is (a0, a1) = rows g, g+8 at k 2t.. and (a2, a3) the same rows at k 2t+8.., and
 * b0 / b1 are k 2t.. / 2t+8..: exactly two k8 fragments each. */
__device__ __forceinline__ void fa_mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    fa_mma_k8(c, a[0], a[1], b0);
    fa_mma_k8(c, a[2], a[3], b1);
#endif
}

__device__ __forceinline__ uint32_t fa_pack(float lo, float hi)
{
    __half2 h = __floats2half2_rn(lo, hi); /* .x (low 16 bits) = lo: the smaller column index */
    return *reinterpret_cast<uint32_t *>(&h);
}

/* ---- the kernel ----
 * Fragment layouts of m16n8k16 (g = lane / 4, t = lane % 4):
 *   A 16x16: a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)
 *   B 16x8:  b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g)
 *   C 16x8:  c0 c1 (g, 2t..2t+1), c2 c3 (g+8, 2t..2t+1)
 * so the C fragments of S for keys 16kk..16kk+15 (n-tiles 2kk, 2kk+1) are, packed to fp16, exactly
 * the A fragment of P for k-chunk kk. */
/* CTAs per SM the register cap aims at: 4-warp CTAs with hd <= 80 fit three per SM by shared memory
 * (56 KiB each at hd 80), so cap registers at 170 for that (one vision piece, 272 CTAs, then runs in
 * one wave on 132 SMs); hd 128 needs ~230 registers (two 4-warp CTAs); 8-warp CTAs: one. */
#define FA_MINB(HDP, NW) ((NW) == 4 ? ((HDP) <= 80 ? 3 : 2) : 1)

/* HDT: the head dim rounded up to 8 only (72 for the vision tower; = HDP otherwise). Q K^T then runs
 * HDT/16 k16 steps plus one k8 step when HDT % 16 == 8, and P V only HDT/8 output n-tiles: no mma
 * work on the zero padding columns HDT..HDP-1 (10 % of the vision tower's attention). MINB: CTAs per
 * SM the register cap aims at. */
template <int HDP, int NW, int HDT, int MINB, int ST>
__global__ void __launch_bounds__(NW * 32, MINB) fa_kernel(const fa_args a)
{
    constexpr int BM = 16 * NW, BN = FA_BN, NT = NW * 32;
    constexpr int LD = HDP + 8;  /* shared row stride in halves: HDP/8 + 1 (odd) 16-byte chunks */
    constexpr int CH = HDP / 8;  /* 16-byte chunks per row */
    constexpr int KC = HDP / 16; /* k16 chunks of Q held in registers */
    constexpr int KF = HDT / 16; /* full k16 steps of Q K^T */
    constexpr bool KT = HDT % 16 != 0; /* plus a k8 step */
    constexpr int ON = HDT / 8;  /* n-tiles of O */
    static_assert(HDP % 16 == 0 && HDP <= 128 && HDT % 8 == 0 && HDT <= HDP && HDT > HDP - 16, "padded head dim");

    extern __shared__ __align__(16) unsigned char fa_smem[];
    __half *sq = reinterpret_cast<__half *>(fa_smem); /* [BM][LD]: Q, then the output staging */
    __half *sk = sq + BM * LD;                        /* [ST][BN][LD] */
    __half *sv = sk + ST * BN * LD;                   /* [ST][BN][LD] */

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    const int gpl = a.gp_log2, GP = 1 << gpl, QR = BM >> gpl;
    const int qt = gridDim.y - 1 - blockIdx.y; /* the longest causal tiles are dispatched first */
    const int i0 = qt * QR, h0 = blockIdx.x * GP, kh = h0 / a.G;
    const int hd = a.hd, n = a.n, T = a.T, H = a.H;
    /* op_attention_batch: sequence blockIdx.z (0 for a single one) */
    const __half *gq = a.q + (int64_t)blockIdx.z * a.q_ss, *gk = a.k + (int64_t)blockIdx.z * a.kv_ss,
                 *gv = a.v + (int64_t)blockIdx.z * a.kv_ss;
    __half *go = a.out + (int64_t)blockIdx.z * a.q_ss;

    /* keys this CTA needs: [0, kend) */
    const int i_last = min(i0 + QR, n) - 1;
    const int kend = a.causal ? min(T, a.q_pos0 + i_last + 1) : T;
    const int ntiles = (kend + BN - 1) / BN;

    /* ---- prologue: Q and K/V tile 0 (group 0), K/V tile 1 (group 1) ---- */
#pragma unroll
    for (int it = 0; it < BM * CH / NT; it++) {
        const int idx = tid + it * NT, r = idx / CH, c = idx % CH;
        const int qi = i0 + (r >> gpl), h = h0 + (r & (GP - 1));
        const bool ok = qi < n && c * 8 < hd;
        const __half *src = ok ? gq + ((int64_t)qi * H + h) * hd + c * 8 : gq;
        fa_cp16(sq + r * LD + c * 8, src, ok);
    }
    auto load_kv = [&](int tile, int st) {
        const int j0 = tile * BN;
        __half *dk = sk + st * BN * LD, *dv = sv + st * BN * LD;
#pragma unroll
        for (int it = 0; it < (BN * CH + NT - 1) / NT; it++) {
            const int idx = tid + it * NT;
            if (BN * CH % NT == 0 || idx < BN * CH) {
                const int r = idx / CH, c = idx % CH, j = j0 + r;
                const bool ok = j < T && c * 8 < hd;
                const int64_t off = ok ? ((int64_t)j * a.Hkv + kh) * hd + c * 8 : 0;
                fa_cp16(dk + r * LD + c * 8, gk + off, ok);
                fa_cp16(dv + r * LD + c * 8, gv + off, ok);
            }
        }
    };
    load_kv(0, 0);
    fa_cp_commit();
    if (ST == 2 && ntiles > 1) load_kv(1, 1);
    fa_cp_commit(); /* always commit, so the group count is the same in every thread and iteration */
    fa_cp_wait<ST - 1>(); /* group 0 (Q, tile 0) has landed for this thread */
    __syncthreads(); /* ... and for every thread */

    /* Q fragments of this warp's 16 rows: lane l addresses row l % 16, column half l / 16 */
    uint32_t qf[KC][4];
#pragma unroll
    for (int kc = 0; kc < KC; kc++) fa_ldsm_x4(qf[kc], sq + (warp * 16 + (lane & 15)) * LD + kc * 16 + (lane >> 4) * 8);

    /* this thread's two rows (g and g + 8 of the warp) and their exclusive key bounds */
    const int rA = warp * 16 + g, rB = rA + 8;
    const int qiA = i0 + (rA >> gpl), qiB = i0 + (rB >> gpl);
    const int eA = a.causal ? min(a.q_pos0 + qiA + 1, T) : T;
    const int eB = a.causal ? min(a.q_pos0 + qiB + 1, T) : T;
    /* warp-wide: tiles starting at or after w_end are fully masked for every row of the warp (or
     * the warp has no valid row); tiles ending after w_min need the mask */
    const int qi_first = i0 + ((warp * 16) >> gpl), qi_lastw = i0 + ((warp * 16 + 15) >> gpl);
    const int w_min = a.causal ? min(a.q_pos0 + qi_first + 1, T) : T;
    const int w_end = qi_first >= n ? 0 : a.causal ? min(a.q_pos0 + qi_lastw + 1, T) : T;

    float o[ON][4];
#pragma unroll
    for (int nt = 0; nt < ON; nt++) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;
    float mA = -INFINITY, mB = -INFINITY, lA = 0.0f, lB = 0.0f; /* l: this thread's partial sums */
    const float sl2 = a.scale_log2;

    for (int tile = 0; tile < ntiles; tile++) {
        const int st = ST == 2 ? tile & 1 : 0, j0 = tile * BN;
        const __half *kt = sk + st * BN * LD, *vt = sv + st * BN * LD;
        if (j0 < w_end) {
            /* ---- S = Q K^T (16 x 64) ---- */
            float s[BN / 8][4];
#pragma unroll
            for (int nt = 0; nt < BN / 8; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
            for (int kc = 0; kc < KF; kc++) {
#pragma unroll
                for (int np = 0; np < BN / 16; np++) {
                    /* matrices: keys 16np + 0..7 / 8..15 (lane bit 4) x columns 16kc + 0..7 / 8..15 (bit 3) */
                    uint32_t b[4];
                    fa_ldsm_x4(b, kt + (np * 16 + (lane & 7) + (lane >> 4) * 8) * LD + kc * 16 + ((lane >> 3) & 1) * 8);
                    fa_mma(s[2 * np], qf[kc], b[0], b[1]);
                    fa_mma(s[2 * np + 1], qf[kc], b[2], b[3]);
                }
            }
            if (KT) {
                /* columns 16KF .. 16KF + 7: a0, a1 of Q's chunk are its k 0..7; b[0] / b[2] are those
                 * columns of keys 0..7 / 8..15 */
#pragma unroll
                for (int np = 0; np < BN / 16; np++) {
                    uint32_t b[4];
                    fa_ldsm_x4(b, kt + (np * 16 + (lane & 7) + (lane >> 4) * 8) * LD + KF * 16 + ((lane >> 3) & 1) * 8);
                    fa_mma_k8(s[2 * np], qf[KF < KC ? KF : 0][0], qf[KF < KC ? KF : 0][1], b[0]);
                    fa_mma_k8(s[2 * np + 1], qf[KF < KC ? KF : 0][0], qf[KF < KC ? KF : 0][1], b[2]);
                }
            }
            /* ---- scale (fp32, log2 domain) and mask ---- */
            if (j0 + BN > w_min) {
#pragma unroll
                for (int nt = 0; nt < BN / 8; nt++) {
                    const int j = j0 + nt * 8 + 2 * t4;
                    s[nt][0] = j < eA ? s[nt][0] * sl2 : -INFINITY;
                    s[nt][1] = j + 1 < eA ? s[nt][1] * sl2 : -INFINITY;
                    s[nt][2] = j < eB ? s[nt][2] * sl2 : -INFINITY;
                    s[nt][3] = j + 1 < eB ? s[nt][3] * sl2 : -INFINITY;
                }
            } else {
#pragma unroll
                for (int nt = 0; nt < BN / 8; nt++) {
                    s[nt][0] *= sl2;
                    s[nt][1] *= sl2;
                    s[nt][2] *= sl2;
                    s[nt][3] *= sl2;
                }
            }
            /* ---- online softmax: rows are spread over the 4 lanes of a quad ---- */
            float tA = -INFINITY, tB = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < BN / 8; nt++) {
                tA = fmaxf(tA, fmaxf(s[nt][0], s[nt][1]));
                tB = fmaxf(tB, fmaxf(s[nt][2], s[nt][3]));
            }
            tA = fmaxf(tA, __shfl_xor_sync(0xffffffffu, tA, 1));
            tA = fmaxf(tA, __shfl_xor_sync(0xffffffffu, tA, 2));
            tB = fmaxf(tB, __shfl_xor_sync(0xffffffffu, tB, 1));
            tB = fmaxf(tB, __shfl_xor_sync(0xffffffffu, tB, 2));
            const float nA = fmaxf(mA, tA), nB = fmaxf(mB, tB);
            /* a row with no unmasked key yet keeps m = -inf: subtract 0 so 2^(-inf - 0) = 0, never NaN */
            const float bA = nA == -INFINITY ? 0.0f : nA, bB = nB == -INFINITY ? 0.0f : nB;
            const float alA = exp2f(mA - bA), alB = exp2f(mB - bB);
            mA = nA;
            mB = nB;
            float sA = 0.0f, sB = 0.0f;
#pragma unroll
            for (int nt = 0; nt < BN / 8; nt++) {
                s[nt][0] = exp2f(s[nt][0] - bA);
                s[nt][1] = exp2f(s[nt][1] - bA);
                s[nt][2] = exp2f(s[nt][2] - bB);
                s[nt][3] = exp2f(s[nt][3] - bB);
                sA += s[nt][0] + s[nt][1];
                sB += s[nt][2] + s[nt][3];
            }
            lA = lA * alA + sA;
            lB = lB * alB + sB;
#pragma unroll
            for (int nt = 0; nt < ON; nt++) {
                o[nt][0] *= alA;
                o[nt][1] *= alA;
                o[nt][2] *= alB;
                o[nt][3] *= alB;
            }
            /* ---- O += P V: P from the S registers, V fragments transposed by ldmatrix ---- */
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++) {
                uint32_t pa[4];
                pa[0] = fa_pack(s[2 * kk][0], s[2 * kk][1]);
                pa[1] = fa_pack(s[2 * kk][2], s[2 * kk][3]);
                pa[2] = fa_pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
                pa[3] = fa_pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
                for (int dp = 0; dp < (ON + 1) / 2; dp++) {
                    /* matrices: keys 16kk + 0..7 / 8..15 (lane bit 3) x columns 16dp + 0..7 / 8..15 (bit 4) */
                    uint32_t b[4];
                    fa_ldsm_x4_t(b, vt + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dp * 16 + (lane >> 4) * 8);
                    fa_mma(o[2 * dp], pa, b[0], b[1]);
                    if (2 * dp + 1 < ON) fa_mma(o[(2 * dp + 1) % ON], pa, b[2], b[3]);
                }
            }
        }
        __syncthreads(); /* every warp is done with stage st ... */
        if (tile + ST < ntiles) load_kv(tile + ST, st); /* ... so tile + ST may overwrite it */
        fa_cp_commit();
        fa_cp_wait<ST - 1>(); /* tile + 1 has landed (only tile + 2 may still be in flight) */
        __syncthreads();
    }

    /* ---- epilogue: o / l in fp16, staged in this warp's rows of sq (only this warp read them) ---- */
    lA += __shfl_xor_sync(0xffffffffu, lA, 1);
    lA += __shfl_xor_sync(0xffffffffu, lA, 2);
    lB += __shfl_xor_sync(0xffffffffu, lB, 1);
    lB += __shfl_xor_sync(0xffffffffu, lB, 2);
    const float iA = lA > 0.0f ? 1.0f / lA : 0.0f, iB = lB > 0.0f ? 1.0f / lB : 0.0f;
#pragma unroll
    for (int nt = 0; nt < ON; nt++) {
        const int c = nt * 8 + 2 * t4;
        *reinterpret_cast<__half2 *>(sq + rA * LD + c) = __floats2half2_rn(o[nt][0] * iA, o[nt][1] * iA);
        *reinterpret_cast<__half2 *>(sq + rB * LD + c) = __floats2half2_rn(o[nt][2] * iB, o[nt][3] * iB);
    }
    __syncwarp();
#pragma unroll
    for (int it = 0; it < 16 * CH / 32; it++) {
        const int idx = lane + it * 32, r = warp * 16 + idx / CH, c = idx % CH;
        const int qi = i0 + (r >> gpl), h = h0 + (r & (GP - 1));
        if (qi < n && c * 8 < hd)
            *reinterpret_cast<uint4 *>(go + ((int64_t)qi * H + h) * hd + c * 8) =
                *reinterpret_cast<const uint4 *>(sq + r * LD + c * 8);
    }
}

/* ---- host side ---- */

typedef void (*fa_kernel_fn)(const fa_args);

/* Kernel variants for A/B runs on the card (test_cuda_flash bench): 0 = the default, 1 = the padded
 * head dim everywhere (no k8 step, all HDP/8 output tiles), 2 = the default with a register cap for
 * four 4-warp CTAs per SM at hd <= 80. */
static int g_fa_variant = 0;
extern "C" void cuda_flash_set_variant(int v) { g_fa_variant = v; }

/* Tests: a shared memory limit below the device's (0 = the device's own), so the configurations of
 * smaller cards (sm_75: 64 KiB, sm_86 / sm_89: 99 KiB) run and are checked on a large one. */
static size_t g_fa_smem_cap = 0;
extern "C" void cuda_flash_set_smem_cap(size_t bytes) { g_fa_smem_cap = bytes; }

static fa_kernel_fn fa_pick(int hdp, int nw, int hd, int st)
{
    if (st == 1) /* the single-stage kernel, for hd 128 on cards with 64 KiB of shared memory per block */
        return hdp == 128 && nw == 4 ? fa_kernel<128, 4, 128, FA_MINB(128, 4), 1> : NULL;
    const bool exact72 = hdp == 80 && hd == 72 && g_fa_variant != 1;
    if (hdp == 80 && nw == 4 && g_fa_variant == 2)
        return exact72 ? fa_kernel<80, 4, 72, 4, 2> : fa_kernel<80, 4, 80, 4, 2>;
    if (exact72)
        return nw == 8 ? fa_kernel<80, 8, 72, FA_MINB(80, 8), 2> : fa_kernel<80, 4, 72, FA_MINB(80, 4), 2>;
#define FA_CASE(D)                                                                                         \
    case D: return nw == 8 ? fa_kernel<D, 8, D, FA_MINB(D, 8), 2> : fa_kernel<D, 4, D, FA_MINB(D, 4), 2>;
    switch (hdp) {
        FA_CASE(16)
        FA_CASE(32)
        FA_CASE(64)
        FA_CASE(80)
        FA_CASE(128)
    default: return NULL;
    }
#undef FA_CASE
}

static size_t fa_smem_bytes(int hdp, int nw, int st)
{
    return (size_t)(16 * nw + 2 * st * FA_BN) * (size_t)(hdp + 8) * sizeof(__half);
}

/* The largest configuration that fits the device's per-block shared memory opt-in limit, starting
 * from nw warps and two stages: 8 warps -> 4 warps -> one stage (hd 128). sm_75 (64 KiB) runs hd 128
 * with one stage; sm_86 / sm_89 (99 KiB) run bm 128 at hd 128 with 4 warps; sm_80 / sm_90 run all.
 * Returns the kernel (and sets *nw, *st) or NULL when none fits: the caller falls back. */
static fa_kernel_fn fa_config(const struct cuda_ctx *c, int hdp, int hd, int *nw, int *st)
{
    *st = 2;
    for (;;) {
        fa_kernel_fn fn = fa_pick(hdp, *nw, hd, *st);
        if (!fn) return NULL;
        const size_t lim = g_fa_smem_cap && g_fa_smem_cap < (size_t)c->smem_optin ? g_fa_smem_cap : (size_t)c->smem_optin;
        if (fa_smem_bytes(hdp, *nw, *st) <= lim) return fn;
        if (*nw == 8) *nw = 4;
        else if (*st == 2) *st = 1;
        else return NULL;
    }
}

static int fa_aligned(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* The dynamic shared memory opt-in, once per kernel and device (a driver call per launch costs
 * microseconds of host time, hundreds of launches per image) */
static void fa_opt_in(struct cuda_ctx *c, fa_kernel_fn fn, size_t smem)
{
    static std::mutex mu;
    static struct { fa_kernel_fn fn; int ordinal; } done[64];
    static int n_done;
    std::lock_guard<std::mutex> lock(mu);
    for (int i = 0; i < n_done; i++)
        if (done[i].fn == fn && done[i].ordinal == c->ordinal) return;
    CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    if (n_done < 64) done[n_done++] = {fn, c->ordinal};
}

/* Padded head dim the kernel runs with for hd, or 0 when the flash path does not serve hd. */
static int fa_hdp(int64_t hd)
{
    if (hd < 8 || hd > 128 || hd % 8 != 0) return 0;
    const int hdp = (int)((hd + 15) / 16 * 16);
    return fa_pick(hdp, 4, (int)hd, 2) ? hdp : 0;
}

/* The launch behind every entry point: n_seq sequences stacked along dim 0 of q/out (N rows each)
 * and of k/v (T rows each), one grid slice (blockIdx.z) per sequence; n_seq 1 is a plain call.
 * bm: query-tile rows per CTA, 64 (4 warps) or 128 (8 warps); 0 picks 64: on the H200, 64 was as fast
 * or faster in every benchmarked shape (causal 3000: 0.284 vs 0.285 ms; 10 vision pieces batched:
 * 0.275 vs 0.318 ms; resampler 10 x 96 x 1036: 0.258 vs 0.355 ms; docs/PERF.md). Returns 0 (nothing launched) when the flash path does not serve it. */
static int fa_run(struct tensor *out, const struct tensor *q, const struct tensor *k, const struct tensor *v,
                  int64_t n_seq, int64_t q_pos0, float scale, int flags, int bm)
{
    if (q->dtype != DTYPE_F16 || k->dtype != DTYPE_F16 || v->dtype != DTYPE_F16 || out->dtype != DTYPE_F16) return 0;
    if (n_seq < 1 || n_seq > 65535 || q->shape[0] % n_seq != 0 || k->shape[0] % n_seq != 0) return 0;
    const int64_t n = q->shape[0] / n_seq, H = q->shape[1], hd = q->shape[2], T = k->shape[0] / n_seq;
    const int64_t Hkv = k->shape[1];
    const int causal = (flags & ATTN_CAUSAL) != 0;
    if (n < 16 || T < 1 || H < 1 || Hkv < 1 || H % Hkv != 0) return 0;
    if (causal && n_seq != 1) return 0;
    const int hdp = fa_hdp(hd);
    if (!hdp) return 0;
    /* hd % 8 == 0 (fa_hdp), so every row, and every sequence, starts 16-byte aligned as well */
    if (!fa_aligned(q->data) || !fa_aligned(k->data) || !fa_aligned(v->data) || !fa_aligned(out->data)) return 0;
    if (T > INT32_MAX / 2 || n > INT32_MAX / 2 || (causal && (q_pos0 < 0 || q_pos0 + n > T))) return 0;

    const int64_t G = H / Hkv;
    int gpl = 0;
    while (gpl < 4 && G % (2 << gpl) == 0) gpl++;
    const int64_t hblocks = H >> gpl;

    struct cuda_ctx *c = cuda_ctx_get(out->dev.ordinal);
    int nw = bm == 128 ? 8 : 4, st;
    fa_kernel_fn fn = fa_config(c, hdp, (int)hd, &nw, &st);
    if (!fn) return 0;
    const int64_t qr = (16 * nw) >> gpl, qtiles = (n + qr - 1) / qr;
    if (qtiles > 65535 || hblocks > INT32_MAX) return 0;

    fa_args a;
    a.q = (const __half *)q->data;
    a.k = (const __half *)k->data;
    a.v = (const __half *)v->data;
    a.out = (__half *)out->data;
    a.n = (int)n;
    a.T = (int)T;
    a.H = (int)H;
    a.Hkv = (int)Hkv;
    a.hd = (int)hd;
    a.G = (int)G;
    a.gp_log2 = gpl;
    a.q_pos0 = causal ? (int)q_pos0 : 0;
    a.causal = causal;
    a.scale_log2 = scale * 1.4426950408889634f;
    a.q_ss = n * H * hd;
    a.kv_ss = T * Hkv * hd;

    const size_t smem = fa_smem_bytes(hdp, nw, st); /* 32-102 KiB: above the default 48 KiB needs opting in */
    fa_opt_in(c, fn, smem);
    fn<<<dim3((unsigned)hblocks, (unsigned)qtiles, (unsigned)n_seq), 32 * nw, smem, c->stream>>>(a);
    KERNEL_CHECK();
    return 1;
}

extern "C" int cuda_flash_attention_bm(struct tensor *out, const struct tensor *q, const struct tensor *k,
                                       const struct tensor *v, int64_t q_pos0, float scale, int flags, int bm)
{
    return fa_run(out, q, k, v, 1, q_pos0, scale, flags, bm);
}

extern "C" int cuda_flash_attention(struct tensor *out, const struct tensor *q, const struct tensor *k,
                                    const struct tensor *v, int64_t q_pos0, float scale, int flags)
{
    return fa_run(out, q, k, v, 1, q_pos0, scale, flags, 0);
}

/* The batched flash path alone (tests, bench): 1 when it ran, 0 when it declined. */
extern "C" int cuda_flash_attention_batch_bm(struct tensor *out, const struct tensor *q, const struct tensor *k,
                                             const struct tensor *v, int64_t n_seq, float scale, int flags, int bm)
{
    return fa_run(out, q, k, v, n_seq, 0, scale, flags, bm);
}

/* op_attention_batch: one flash launch for all sequences, or (f32/bf16, n < 16, an hd the flash
 * kernel does not serve) one cuda_attention per sequence. */
extern "C" void cuda_attention_batch(struct tensor *out, const struct tensor *q, const struct tensor *k,
                                     const struct tensor *v, int64_t n_seq, float scale, int flags)
{
    if (q->shape[0] == 0 || q->shape[1] == 0 || q->shape[2] == 0) return;
    if (fa_run(out, q, k, v, n_seq, 0, scale, flags, 0)) return;
    const int64_t N = q->shape[0] / n_seq, T = k->shape[0] / n_seq;
    for (int64_t s = 0; s < n_seq; s++) {
        struct tensor os = tensor_rows_view(out, s * N, N), qs = tensor_rows_view(q, s * N, N);
        struct tensor ks = tensor_rows_view(k, s * T, T), vs = tensor_rows_view(v, s * T, T);
        cuda_attention(&os, &qs, &ks, &vs, 0, scale, flags);
    }
}

/* CTAs of the (hd, bm) kernel that fit on one SM of device `ordinal` (0 when not served): for the
 * benchmark's report. */
extern "C" int cuda_flash_occupancy(int ordinal, int hd, int bm)
{
    const int hdp = fa_hdp(hd);
    int nw = bm == 128 ? 8 : 4, st;
    if (!hdp) return 0;
    fa_kernel_fn fn = fa_config(cuda_ctx_get(ordinal), hdp, hd, &nw, &st);
    if (!fn) return 0;
    const size_t smem = fa_smem_bytes(hdp, nw, st);
    CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    int nb = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&nb, fn, 32 * nw, smem));
    return nb;
}

/* The configuration fa_run would use on device `ordinal` for head dim hd and bm (64 or 128): warps
 * and stages, and the shared memory bytes as the return value (0: the flash path does not serve it). */
extern "C" size_t cuda_flash_config(int ordinal, int hd, int bm, int *nw, int *st)
{
    const int hdp = fa_hdp(hd);
    *nw = bm == 128 ? 8 : 4;
    *st = 0;
    if (!hdp || !fa_config(cuda_ctx_get(ordinal), hdp, hd, nw, st)) return 0;
    return fa_smem_bytes(hdp, *nw, *st);
}
