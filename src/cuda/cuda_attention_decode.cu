/* cuda_attention_decode.cu: the decode attention kernels (few query rows, K/V streamed once per GQA
 * group, the keys cut into splits, direct or paged caches) and op_attention_rows, the batched decode
 * step's attention, which is a decode kernel in its rows mode (one query row per sequence, each over its
 * own paged sequence), with a simple fallback kernel for other dtypes and head dims. Three decode
 * kernels: the cluster kernel (sm_90: the splits of a head group merge in distributed shared memory),
 * the split-K kernel (sm_75 .. sm_89, and code built for them: the splits merge through global
 * partials and the last block to arrive) and the tensor-core kernel (sm_80+: mma.sync per 16-key step,
 * its splits merged as split-K's, or on sm_90 as the cluster kernel's: the "tcc" form, attn_tc_kernel<.., true>).
 * attn_decode takes the tcc form for a few rows of one sequence where it can run (session 19), else one from a
 * table of measurements (dec_rules);
 * cuda_attention.cu dispatches op_attention and op_attention_pos here first (cuda_attention.cuh). Not
 * here: prefill (cuda_flash.cu), eager vision attention and other shapes (the general kernel of
 * cuda_attention.cu). */
#include <math.h>
#include <mutex>
#include <type_traits>

#include "cuda/cuda_attention.cuh"

/* ---- decode, split-K (before sm_90): few query rows, K/V streamed once ----
 * A 128-thread block owns one kv head, one key split and NS slots (the GB heads of the GQA group
 * times QB query rows), so each K/V row is read once for all of them. A key row of HD 16-bit values
 * is LPK = HD/8 lanes x 16 bytes; a "segment" of LPK lanes handles one key at a time, SEGS = 128/LPK
 * segments run side by side, each taking KPT keys per tile (tile = SEGS * KPT keys). Every segment
 * keeps its own online-softmax state (m, l, and fp32 acc for its lanes' 8 columns) over the keys it
 * saw, so there is no barrier in the key loop; the next tile's K and V are loaded before the current
 * one is used. At the end the segments are merged through shared memory, and with several splits
 * the block writes a partial (m, l, acc); the last block of a (head block, row block) to arrive
 * (an atomic counter, reset by that block) merges all partials into out: one launch in total.
 * With pos != NULL the query positions and the key count come from device memory (graph replay);
 * the split length is then computed on the device from the actual key count. */
#define DEC_THREADS 128
#define DEC_KPT 4
#define DEC_MAX_SPLIT 256
/* a split holds at least this many tiles of keys: at context 512 (hd 128, 32-key tiles) 8 splits of
 * 64 keys per kv head, not ~16 splits of one tile whose partials the last block then had to merge */
#define DEC_MIN_TILES 2

struct attn_dec_args {
    void *out;
    const void *q;
    const void *k;
    const void *v;
    float *part_acc;   /* [n, H, nsplit, hd] */
    float *part_ml;    /* [n, H, nsplit, 2] */
    int *cnt;          /* [hblocks * rblocks] arrival counters, zero between launches */
    const int32_t *pos; /* device positions [n] or NULL */
    const int32_t *tab; /* block table(s) of a paged cache, or NULL (attn_pages) */
    int64_t mb, S;
    const int32_t *seq, *nkeys; /* rows mode (op_attention_rows): row i = block row i (QB 1) reads the
                                   nkeys[i] first keys of sequence seq[i], causally, or NULL */
    int64_t q_pos0;    /* when pos == NULL */
    int T;             /* keys available (pos == NULL) or cache capacity (pos != NULL; paged: mb * KV_BLOCK) */
    int odt, qdt;
    int n, H, Hkv, G, GB, QB, nsplit, causal;
    /* the launch's predecessors since the last full (non-PDL) launch of the stream wrote no position, no
     * block table and no cache row before the step's first position: the block may read those and load its
     * first keys before pdl_wait() (attn_early) */
    int early;
    float scale;
};

/* What a block row (query rows i0 .. i0 + nrows - 1) reads: its block table, the position of its query row i0
 * + qi (qp0 + i0 + qi), the key count nk (clamped to 0 .. T) and blim, the keys any of its rows sees (nk, or
 * the causal limit of its last row; >= 0). Rows mode (a.nkeys): the block's one query row is the last token
 * of its own sequence; a key count or sequence outside the cache traps (programmer error). */
struct dec_keys {
    const int32_t *tab;
    int64_t qp0, nk, blim;
    int64_t old; /* the keys below this were in the cache before the step (device positions, rows mode; else 0) */
    int nrows;
};

/* the query rows of the block row starting at row i0 (QB, or fewer in the last block row) */
__device__ __forceinline__ int dec_block_rows(const attn_dec_args &a, int i0) { return (i0 + a.QB < a.n ? i0 + a.QB : a.n) - i0; }

__device__ __forceinline__ dec_keys dec_block_keys(const attn_dec_args &a, int i0)
{
    dec_keys r;
    r.qp0 = a.q_pos0;
    r.tab = a.tab;
    int64_t nk;
    if (a.nkeys) {
        nk = a.nkeys[i0];
        if (a.seq[i0] < 0 || a.seq[i0] >= a.S || nk < 1 || nk > a.T) {
            if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0)
                printf("attention: row %d reads %lld keys of sequence %d (%lld tables of %lld blocks)\n", i0,
                       (long long)nk, a.seq[i0], (long long)a.S, (long long)a.mb);
            __trap();
        }
        r.qp0 = nk - 1 - i0;
        r.tab = a.tab + (int64_t)a.seq[i0] * a.mb;
        r.old = nk - 1; /* the row's own token is this step's */
    } else if (a.pos) {
        r.qp0 = a.pos[0];
        nk = (int64_t)a.pos[a.n - 1] + 1;
        r.old = r.qp0; /* the step's tokens are at pos[0] .. */
    } else {
        nk = a.causal ? a.q_pos0 + a.n : a.T;
        r.old = 0; /* keys passed as they are (a prefill's own k): all of them may be the previous kernel's */
    }
    if (r.old < 0) r.old = 0;
    if (nk > a.T) nk = a.T;
    if (nk < 0) nk = 0;
    r.nk = nk;
    r.nrows = dec_block_rows(a, i0);
    r.blim = nk;
    if (a.causal) {
        const int64_t lim = r.qp0 + i0 + r.nrows;
        r.blim = lim < nk ? lim : nk;
    }
    if (r.blim < 0) r.blim = 0;
    return r;
}

template <typename KV, int HD, int NS>
__global__ void __launch_bounds__(DEC_THREADS) attn_decode_kernel(const attn_dec_args a)
{
    if (!a.early) pdl_wait(); /* launched as a dependent (cuda_launch_dep): the previous kernel's output is ready */
    constexpr int LPK = HD / 8, SEGS = DEC_THREADS / LPK, TK = SEGS * DEC_KPT;
    __shared__ __align__(16) float sq[NS * HD];
    __shared__ float red_m[SEGS * NS], red_l[SEGS * NS];
    __shared__ __align__(16) float red_acc[SEGS * NS * HD]; /* reused for the split weights at the end */
    __shared__ int s_lim[NS], s_last;
    const int tid = threadIdx.x, seg = tid / LPK, ln = tid % LPK;
    const int split = blockIdx.x, h0 = blockIdx.y * a.GB, kh = h0 / a.G, i0 = blockIdx.z * a.QB;

    /* key count and query positions */
    const dec_keys bk = dec_block_keys(a, i0);
    const int32_t *tab = bk.tab;
    const int64_t qp0 = bk.qp0, nk = bk.nk, blim = bk.blim;
    const int nrows = bk.nrows;
    int64_t chunk = (nk + a.nsplit - 1) / a.nsplit;
    chunk = (chunk + TK - 1) / TK * TK;
    if (chunk < DEC_MIN_TILES * TK) chunk = DEC_MIN_TILES * TK;
    /* splits that hold keys of this block row: the others leave at once and are not waited for, and
     * the merge reads only these (the grid is sized for the capacity, the keys may be far fewer) */
    const int used = blim > chunk ? (int)((blim + chunk - 1) / chunk) : 1;
    if (split >= used) return;
    const int64_t k0 = (int64_t)split * chunk;
    const int64_t k1 = k0 + chunk < blim ? k0 + chunk : blim;

    float m[NS], l[NS], acc[NS][8];
#pragma unroll
    for (int sl = 0; sl < NS; sl++) {
        m[sl] = -INFINITY;
        l[sl] = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; e++) acc[sl][e] = 0.0f;
    }
    const uint4 *kp = reinterpret_cast<const uint4 *>(a.k), *vp = reinterpret_cast<const uint4 *>(a.v);
    const int64_t rstride = (int64_t)a.Hkv * LPK; /* uint4 per key row of the cache */
    const int64_t hoff = (int64_t)kh * LPK + ln;
    uint4 kb[DEC_KPT], vb[DEC_KPT];
    auto load = [&](int64_t j0, uint4 *kd, uint4 *vd) {
#pragma unroll
        for (int kk = 0; kk < DEC_KPT; kk++) {
            const int64_t j = j0 + kk * SEGS + seg;
            if (j < k1) {
                const int64_t r = attn_row(tab, j);
                kd[kk] = __ldg(kp + r * rstride + hoff);
                vd[kk] = __ldg(vp + r * rstride + hoff);
            } else {
                kd[kk] = make_uint4(0, 0, 0, 0);
                vd[kk] = make_uint4(0, 0, 0, 0);
            }
        }
    };
    /* the first tile is in flight while q is staged; under attn_early also while the previous kernels run,
     * when its keys were all in the cache before this step (as in attn_tc_kernel) */
    const bool pre = a.early && k0 < k1 && (k0 + TK < k1 ? k0 + TK : k1) <= bk.old;
    if (pre) load(k0, kb, vb);
    if (a.early) pdl_wait();
    if (!pre && k0 < k1) load(k0, kb, vb);
    pdl_trigger();

    for (int idx = tid; idx < NS * HD; idx += DEC_THREADS) {
        const int sl = idx / HD, c = idx - sl * HD, qi = sl / a.GB, g = sl - qi * a.GB;
        const bool ok = qi < nrows;
        sq[idx] = ok ? ldf(a.q, a.qdt, ((int64_t)(i0 + qi) * a.H + h0 + g) * HD + c) : 0.0f;
    }
    if (tid < NS) {
        const int qi = tid / a.GB;
        int64_t lim = 0;
        if (qi < nrows) lim = a.causal ? qp0 + i0 + qi + 1 : nk;
        s_lim[tid] = (int)(lim < nk ? lim : nk);
    }
    __syncthreads();

    for (int64_t j0 = k0; j0 < k1; j0 += TK) {
        uint4 kn[DEC_KPT], vn[DEC_KPT];
        if (j0 + TK < k1) load(j0 + TK, kn, vn); /* next tile in flight while this one is used */
        float s[NS][DEC_KPT];
#pragma unroll
        for (int kk = 0; kk < DEC_KPT; kk++) {
            float kf[8];
            words<KV>::to_f(kb[kk].x, kf);
            words<KV>::to_f(kb[kk].y, kf + 2);
            words<KV>::to_f(kb[kk].z, kf + 4);
            words<KV>::to_f(kb[kk].w, kf + 6);
            const int64_t j = j0 + kk * SEGS + seg;
#pragma unroll
            for (int sl = 0; sl < NS; sl++) {
                const float4 qa = *reinterpret_cast<const float4 *>(sq + sl * HD + ln * 8);
                const float4 qb = *reinterpret_cast<const float4 *>(sq + sl * HD + ln * 8 + 4);
                float d = qa.x * kf[0];
                d = fmaf(qa.y, kf[1], d);
                d = fmaf(qa.z, kf[2], d);
                d = fmaf(qa.w, kf[3], d);
                d = fmaf(qb.x, kf[4], d);
                d = fmaf(qb.y, kf[5], d);
                d = fmaf(qb.z, kf[6], d);
                d = fmaf(qb.w, kf[7], d);
#pragma unroll
                for (int off = LPK / 2; off > 0; off >>= 1) d += __shfl_xor_sync(0xffffffffu, d, off);
                s[sl][kk] = j < k1 && j < s_lim[sl] ? d * a.scale : -INFINITY; /* k1: the next split's keys */
            }
        }
        float vf[DEC_KPT][8];
#pragma unroll
        for (int kk = 0; kk < DEC_KPT; kk++) {
            words<KV>::to_f(vb[kk].x, vf[kk]);
            words<KV>::to_f(vb[kk].y, vf[kk] + 2);
            words<KV>::to_f(vb[kk].z, vf[kk] + 4);
            words<KV>::to_f(vb[kk].w, vf[kk] + 6);
        }
#pragma unroll
        for (int sl = 0; sl < NS; sl++) {
            float mt = s[sl][0];
#pragma unroll
            for (int kk = 1; kk < DEC_KPT; kk++) mt = fmaxf(mt, s[sl][kk]);
            const float mnew = fmaxf(m[sl], mt);
            if (mnew == -INFINITY) continue; /* no visible key yet for this slot */
            const float alpha = m[sl] == -INFINITY ? 0.0f : expf(m[sl] - mnew);
            float ps = 0.0f;
#pragma unroll
            for (int e = 0; e < 8; e++) acc[sl][e] *= alpha;
#pragma unroll
            for (int kk = 0; kk < DEC_KPT; kk++) {
                const float p = s[sl][kk] == -INFINITY ? 0.0f : expf(s[sl][kk] - mnew);
                ps += p;
#pragma unroll
                for (int e = 0; e < 8; e++) acc[sl][e] = fmaf(p, vf[kk][e], acc[sl][e]);
            }
            l[sl] = l[sl] * alpha + ps;
            m[sl] = mnew;
        }
#pragma unroll
        for (int kk = 0; kk < DEC_KPT; kk++) {
            kb[kk] = kn[kk];
            vb[kk] = vn[kk];
        }
    }

    /* merge the segments */
#pragma unroll
    for (int sl = 0; sl < NS; sl++) {
        if (ln == 0) {
            red_m[seg * NS + sl] = m[sl];
            red_l[seg * NS + sl] = l[sl];
        }
        float *ra = red_acc + (seg * NS + sl) * HD + ln * 8;
        *reinterpret_cast<float4 *>(ra) = make_float4(acc[sl][0], acc[sl][1], acc[sl][2], acc[sl][3]);
        *reinterpret_cast<float4 *>(ra + 4) = make_float4(acc[sl][4], acc[sl][5], acc[sl][6], acc[sl][7]);
    }
    __syncthreads();
    constexpr int R = (NS * HD + DEC_THREADS - 1) / DEC_THREADS; /* (slot, column) pairs per thread */
    float res[R], resl[R], resm[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int pi = tid + r * DEC_THREADS, sl = pi / HD, c = pi - sl * HD;
        res[r] = resl[r] = 0.0f;
        resm[r] = -INFINITY;
        if (pi >= NS * HD) continue;
        float M = -INFINITY;
#pragma unroll
        for (int sg = 0; sg < SEGS; sg++) M = fmaxf(M, red_m[sg * NS + sl]);
        float L = 0.0f, A = 0.0f;
        if (M != -INFINITY) {
#pragma unroll
            for (int sg = 0; sg < SEGS; sg++) {
                const float ms = red_m[sg * NS + sl];
                const float w = ms == -INFINITY ? 0.0f : expf(ms - M);
                L = fmaf(red_l[sg * NS + sl], w, L);
                A = fmaf(red_acc[(sg * NS + sl) * HD + c], w, A);
            }
        }
        res[r] = A;
        resl[r] = L;
        resm[r] = M;
    }
    if (used == 1) {
#pragma unroll
        for (int r = 0; r < R; r++) {
            const int pi = tid + r * DEC_THREADS, sl = pi / HD, c = pi - sl * HD, qi = sl / a.GB, g = sl - qi * a.GB;
            if (pi < NS * HD && qi < nrows)
                stf(a.out, a.odt, ((int64_t)(i0 + qi) * a.H + h0 + g) * HD + c, resl[r] > 0.0f ? res[r] / resl[r] : 0.0f);
        }
        return;
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int pi = tid + r * DEC_THREADS, sl = pi / HD, c = pi - sl * HD, qi = sl / a.GB, g = sl - qi * a.GB;
        if (pi < NS * HD && qi < nrows) {
            const int64_t ih = (int64_t)(i0 + qi) * a.H + h0 + g;
            a.part_acc[(ih * a.nsplit + split) * HD + c] = res[r];
            if (c == 0) {
                a.part_ml[(ih * a.nsplit + split) * 2 + 0] = resm[r];
                a.part_ml[(ih * a.nsplit + split) * 2 + 1] = resl[r];
            }
        }
    }
    /* the last block of this (head block, row block) to arrive merges the splits */
    __threadfence();
    __syncthreads();
    int *cnt = a.cnt + blockIdx.z * gridDim.y + blockIdx.y;
    if (tid == 0) {
        const int prev = atomicAdd(cnt, 1);
        s_last = prev == used - 1;
        if (s_last) *cnt = 0; /* every block of this launch has arrived: ready for the next launch */
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    float *wsp = red_acc; /* [NS][nsplit] weights e^(m_s - M), then per-slot 1/L in red_l */
    const int warp = tid >> 5, lane = tid & 31;
    for (int sl = warp; sl < NS; sl += DEC_THREADS / 32) {
        const int qi = sl / a.GB, g = sl - qi * a.GB;
        if (!(qi < nrows && true)) continue;
        const int64_t ih = (int64_t)(i0 + qi) * a.H + h0 + g;
        const float *ml = a.part_ml + ih * a.nsplit * 2;
        float M = -INFINITY;
        for (int sp = lane; sp < used; sp += 32) M = fmaxf(M, __ldcg(ml + 2 * sp));
        M = warp_max(M);
        float L = 0.0f;
        for (int sp = lane; sp < used; sp += 32) {
            const float ms = __ldcg(ml + 2 * sp);
            const float w = ms == -INFINITY ? 0.0f : expf(ms - M);
            wsp[sl * a.nsplit + sp] = w;
            L = fmaf(__ldcg(ml + 2 * sp + 1), w, L);
        }
        L = warp_sum(L);
        if (lane == 0) red_l[sl] = L;
    }
    __syncthreads();
    for (int pi = tid; pi < NS * HD; pi += DEC_THREADS) {
        const int sl = pi / HD, c = pi - sl * HD, qi = sl / a.GB, g = sl - qi * a.GB;
        if (!(qi < nrows && true)) continue;
        const int64_t ih = (int64_t)(i0 + qi) * a.H + h0 + g;
        const float *pa = a.part_acc + ih * a.nsplit * HD + c;
        float x = 0.0f;
#pragma unroll 8
        for (int sp = 0; sp < used; sp++) x = fmaf(__ldcg(pa + (int64_t)sp * HD), wsp[sl * a.nsplit + sp], x);
        const float L = red_l[sl];
        stf(a.out, a.odt, ih * HD + c, L > 0.0f ? x / L : 0.0f);
    }
}

/* ---- decode on sm_90: the splits of one (head block, row block) are the blocks of one cluster ----
 * The split-K kernel above pays a chain of latencies at every context: partials written to global
 * memory, a fence, an atomic, then the last block reading every partial back from L2 (14.8 us at
 * context 512 for 2 MB of K/V on the H200). Here the C splits of a (head block, row block) are the C
 * blocks of one thread-block cluster (C = 1, 2, 4, 8 or 16, chosen on the host from the grid shape
 * only, so a replayed graph stays right at any key count): every block streams its share of the keys
 * (ceil(keys / C) rounded up to whole tiles, from the key count read on the device), merges its
 * segments (shuffles) and warps (shared memory), pushes its (m, l, acc) into the shared memory of the
 * block that owns each slice of the output (distributed shared memory), and after one cluster barrier
 * each block merges and writes its slice. No global partials, no atomics, no pass over L2.
 * Loads: 256 threads; a key row is LPK = hd/8 lanes x 16 bytes as above, SEGS = 256/LPK segments take
 * CL_KPT = 2 keys each per tile (a tile: 32 keys at hd 128, 64 at hd 64; 16 KiB of K and V). Tiles go
 * through a ring of CL_STAGES tiles in shared memory filled by cp.async (16 bytes, L2 only, zero-filled
 * past the split's last key): CL_STAGES - 1 tiles (80 KiB) are in flight per block while one is used,
 * without holding registers. A thread reads back only the pieces it copied itself, so the ring needs
 * no barrier, only cp.async.wait_group, and a tile's slot is refilled by the thread that just used it.
 * Scores, softmax and accumulation are the split-K kernel's: fp32, one online softmax per segment. */
#define CL_THREADS 256
#define CL_KPT 2
#define CL_STAGES 6
#define CL_MAX 16                                            /* blocks per cluster (16: non-portable) */
#define CL_TILE_U4 (CL_KPT * 2 * CL_THREADS)                 /* 16-byte pieces per ring slot (K and V) */
#define CL_RING_BYTES ((size_t)CL_STAGES * CL_TILE_U4 * 16)  /* 96 KiB: two blocks fit an sm_90 SM */

/* sm_90 instructions, behind the architecture test so that the fat build's older targets compile */
__device__ __forceinline__ void cl_copy16(void *dst, const void *src, bool ok) /* zero-fills when !ok */
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(ok ? 16 : 0) : "memory");
#endif
}

__device__ __forceinline__ void cl_commit()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

template <int N> __device__ __forceinline__ void cl_wait_copies() /* all but the N newest groups have landed */
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

__device__ __forceinline__ unsigned cl_rank()
{
    unsigned r = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
#endif
    return r;
}

__device__ __forceinline__ unsigned cl_size()
{
    unsigned r = 1;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mov.u32 %0, %%cluster_nctarank;\n" : "=r"(r));
#endif
    return r;
}

/* the cluster barrier in two halves: arrive (relaxed: orders nothing; release: this thread's earlier
 * writes, remote ones included, are visible to whoever waits), then wait (acquire). Not the .aligned
 * forms: those need the warp converged, which a divergent branch before them does not promise. */
__device__ __forceinline__ void cl_arrive_relaxed()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.relaxed;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void cl_arrive()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.release;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void cl_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.wait.acquire;\n" ::: "memory");
#endif
}

/* stores v into the variable `local` names, in the shared memory of block `rank` of the cluster */
__device__ __forceinline__ void cl_store(float *local, unsigned rank, float v)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const unsigned a = (unsigned)__cvta_generic_to_shared(local);
    unsigned r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(a), "r"(rank));
    asm volatile("st.shared::cluster.f32 [%0], %1;\n" ::"r"(r), "f"(v) : "memory");
#endif
}

template <typename KV, int HD, int NS>
__global__ void __launch_bounds__(CL_THREADS, NS <= 4 ? 2 : 1) attn_cluster_kernel(const attn_dec_args a)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    constexpr int LPK = HD / 8, SEGS = CL_THREADS / LPK, TK = SEGS * CL_KPT, WARPS = CL_THREADS / 32;
    constexpr int PAIRS = NS * HD, R = (PAIRS + CL_THREADS - 1) / CL_THREADS; /* (slot, column) pairs */
    extern __shared__ __align__(16) uint4 ring[]; /* [CL_STAGES][CL_KPT][K, V][CL_THREADS]; then red_acc */
    __shared__ __align__(16) float sq[PAIRS];
    __shared__ float red_m[WARPS * NS], red_l[WARPS * NS];
    __shared__ float xm[CL_MAX * NS], xl[CL_MAX * NS]; /* [rank][slot]: pushed by every block of the cluster */
    __shared__ float xacc[PAIRS];                      /* [rank][PAIRS / C]: every block's acc for this block's slice */
    __shared__ int s_lim[NS];
    const int tid = threadIdx.x, seg = tid / LPK, ln = tid % LPK, warp = tid / 32, lane = tid % 32;
    const int C = (int)cl_size(), split = (int)cl_rank(); /* the grid's x is one cluster: split = rank */
    const int h0 = blockIdx.y * a.GB, kh = h0 / a.G, i0 = blockIdx.z * a.QB;
    if (C > 1) cl_arrive_relaxed(); /* waited for before the first remote store: every block has started */
    if (!a.early) pdl_wait(); /* launched as a dependent (cl_run): the previous kernel's output is ready */

    /* key count and query positions */
    const dec_keys bk = dec_block_keys(a, i0);
    const int32_t *tab = bk.tab;
    const int64_t qp0 = bk.qp0, nk = bk.nk, blim = bk.blim;
    const int nrows = bk.nrows;
    int64_t chunk = (blim + C - 1) / C;
    chunk = (chunk + TK - 1) / TK * TK;
    const int64_t k0 = (int64_t)split * chunk < blim ? (int64_t)split * chunk : blim;
    const int64_t k1 = k0 + chunk < blim ? k0 + chunk : blim;
    const int ntiles = (int)((k1 - k0 + TK - 1) / TK);

    const uint4 *kp = reinterpret_cast<const uint4 *>(a.k), *vp = reinterpret_cast<const uint4 *>(a.v);
    const int64_t rstride = (int64_t)a.Hkv * LPK, hoff = (int64_t)kh * LPK + ln;
    /* tile t of the split into ring slot t % CL_STAGES; part: 0 every key (zero-filled past k1), 1 (attn_early,
     * before pdl_wait) only the keys below bk.old and the zero fill, 2 (after it) only the keys from bk.old on */
    auto issue = [&](int t, int part) {
        uint4 *st = ring + (t % CL_STAGES) * CL_TILE_U4 + tid;
        const int64_t j0 = k0 + (int64_t)t * TK + seg;
#pragma unroll
        for (int kk = 0; kk < CL_KPT; kk++) {
            const int64_t j = j0 + kk * SEGS;
            const bool ok = j < k1;
            if (part == 1 && ok && j >= bk.old) continue;
            if (part == 2 && (!ok || j < bk.old)) continue;
            const int64_t r = ok ? attn_row(tab, j) * rstride + hoff : 0;
            cl_copy16(st + (2 * kk) * CL_THREADS, kp + r, ok);
            cl_copy16(st + (2 * kk + 1) * CL_THREADS, vp + r, ok);
        }
    };
    if (a.early) {
        /* the ring's first tiles while the previous kernels run, as far as they hold keys of earlier steps (their
         * rows, the positions and the table were written before the last full launch: attn_early); the step's own
         * keys after the wait. All of it is commit group 0 (the loop below waits for group t before tile t, so
         * tile 0 waits for the whole first ring, which under attn_early is mostly in before the wait ends) */
#pragma unroll
        for (int t = 0; t < CL_STAGES; t++)
            if (t < ntiles) issue(t, 1);
        pdl_wait();
#pragma unroll
        for (int t = 0; t < CL_STAGES; t++) {
            if (t < ntiles) issue(t, 2);
            cl_commit();
        }
    } else {
#pragma unroll
        for (int t = 0; t < CL_STAGES; t++) { /* one commit group per tile, empty ones included */
            if (t < ntiles) issue(t, 0);
            cl_commit();
        }
    }
    pdl_trigger();

    for (int idx = tid; idx < PAIRS; idx += CL_THREADS) {
        const int sl = idx / HD, c = idx - sl * HD, qi = sl / a.GB, g = sl - qi * a.GB;
        sq[idx] = qi < nrows ? ldf(a.q, a.qdt, ((int64_t)(i0 + qi) * a.H + h0 + g) * HD + c) : 0.0f;
    }
    if (tid < NS) {
        const int qi = tid / a.GB;
        int64_t lim = 0;
        if (qi < nrows) lim = a.causal ? qp0 + i0 + qi + 1 : nk;
        s_lim[tid] = (int)(lim < nk ? lim : nk);
    }
    __syncthreads();

    float m[NS], l[NS], acc[NS][8];
#pragma unroll
    for (int sl = 0; sl < NS; sl++) {
        m[sl] = -INFINITY;
        l[sl] = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; e++) acc[sl][e] = 0.0f;
    }
    for (int t = 0; t < ntiles; t++) {
        cl_wait_copies<CL_STAGES - 1>(); /* this thread's pieces of tile t are in the ring */
        const uint4 *st = ring + (t % CL_STAGES) * CL_TILE_U4 + tid;
        const int64_t j0 = k0 + (int64_t)t * TK + seg;
        float s[NS][CL_KPT], vf[CL_KPT][8];
#pragma unroll
        for (int kk = 0; kk < CL_KPT; kk++) {
            const uint4 kb = st[(2 * kk) * CL_THREADS], vb = st[(2 * kk + 1) * CL_THREADS];
            float kf[8];
            words<KV>::to_f(kb.x, kf);
            words<KV>::to_f(kb.y, kf + 2);
            words<KV>::to_f(kb.z, kf + 4);
            words<KV>::to_f(kb.w, kf + 6);
            words<KV>::to_f(vb.x, vf[kk]);
            words<KV>::to_f(vb.y, vf[kk] + 2);
            words<KV>::to_f(vb.z, vf[kk] + 4);
            words<KV>::to_f(vb.w, vf[kk] + 6);
            const int64_t j = j0 + kk * SEGS;
#pragma unroll
            for (int sl = 0; sl < NS; sl++) {
                const float4 qa = *reinterpret_cast<const float4 *>(sq + sl * HD + ln * 8);
                const float4 qb = *reinterpret_cast<const float4 *>(sq + sl * HD + ln * 8 + 4);
                float d = qa.x * kf[0];
                d = fmaf(qa.y, kf[1], d);
                d = fmaf(qa.z, kf[2], d);
                d = fmaf(qa.w, kf[3], d);
                d = fmaf(qb.x, kf[4], d);
                d = fmaf(qb.y, kf[5], d);
                d = fmaf(qb.z, kf[6], d);
                d = fmaf(qb.w, kf[7], d);
#pragma unroll
                for (int off = LPK / 2; off > 0; off >>= 1) d += __shfl_xor_sync(0xffffffffu, d, off);
                s[sl][kk] = j < k1 && j < s_lim[sl] ? d * a.scale : -INFINITY;
            }
        }
#pragma unroll
        for (int sl = 0; sl < NS; sl++) {
            float mt = s[sl][0];
#pragma unroll
            for (int kk = 1; kk < CL_KPT; kk++) mt = fmaxf(mt, s[sl][kk]);
            const float mnew = fmaxf(m[sl], mt);
            if (mnew == -INFINITY) continue; /* no visible key yet for this slot */
            const float alpha = m[sl] == -INFINITY ? 0.0f : expf(m[sl] - mnew);
            float ps = 0.0f;
#pragma unroll
            for (int e = 0; e < 8; e++) acc[sl][e] *= alpha;
#pragma unroll
            for (int kk = 0; kk < CL_KPT; kk++) {
                const float p = s[sl][kk] == -INFINITY ? 0.0f : expf(s[sl][kk] - mnew);
                ps += p;
#pragma unroll
                for (int e = 0; e < 8; e++) acc[sl][e] = fmaf(p, vf[kk][e], acc[sl][e]);
            }
            l[sl] = l[sl] * alpha + ps;
            m[sl] = mnew;
        }
        /* the slot just read (its values are in registers and used above) takes tile t + CL_STAGES */
        if (t + CL_STAGES < ntiles) issue(t + CL_STAGES, 0);
        cl_commit();
    }
    cl_wait_copies<0>();

    /* the segments of a warp: shuffles (lanes ln, ln + LPK, ... hold the same columns) */
#pragma unroll
    for (int off = LPK; off < 32; off <<= 1) {
#pragma unroll
        for (int sl = 0; sl < NS; sl++) {
            const float mo = __shfl_xor_sync(0xffffffffu, m[sl], off), lo = __shfl_xor_sync(0xffffffffu, l[sl], off);
            const float M = fmaxf(m[sl], mo);
            const float wa = m[sl] == -INFINITY ? 0.0f : expf(m[sl] - M), wb = mo == -INFINITY ? 0.0f : expf(mo - M);
            l[sl] = l[sl] * wa + lo * wb;
#pragma unroll
            for (int e = 0; e < 8; e++) {
                const float ao = __shfl_xor_sync(0xffffffffu, acc[sl][e], off);
                acc[sl][e] = acc[sl][e] * wa + ao * wb;
            }
            m[sl] = M;
        }
    }
    /* the warps: through shared memory, over the ring (every thread's copies have landed and been read) */
    __syncthreads();
    float *red_acc = reinterpret_cast<float *>(ring); /* [WARPS][NS][HD] */
    if (lane < LPK) {
#pragma unroll
        for (int sl = 0; sl < NS; sl++) {
            if (lane == 0) {
                red_m[warp * NS + sl] = m[sl];
                red_l[warp * NS + sl] = l[sl];
            }
            float *ra = red_acc + (warp * NS + sl) * HD + lane * 8;
            *reinterpret_cast<float4 *>(ra) = make_float4(acc[sl][0], acc[sl][1], acc[sl][2], acc[sl][3]);
            *reinterpret_cast<float4 *>(ra + 4) = make_float4(acc[sl][4], acc[sl][5], acc[sl][6], acc[sl][7]);
        }
    }
    __syncthreads();
    float res[R], resl[R], resm[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int pi = tid + r * CL_THREADS, sl = pi / HD, c = pi - sl * HD;
        res[r] = resl[r] = 0.0f;
        resm[r] = -INFINITY;
        if (pi >= PAIRS) continue;
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < WARPS; w++) M = fmaxf(M, red_m[w * NS + sl]);
        float L = 0.0f, A = 0.0f;
        if (M != -INFINITY) {
#pragma unroll
            for (int w = 0; w < WARPS; w++) {
                const float ms = red_m[w * NS + sl];
                const float wt = ms == -INFINITY ? 0.0f : expf(ms - M);
                L = fmaf(red_l[w * NS + sl], wt, L);
                A = fmaf(red_acc[(w * NS + sl) * HD + c], wt, A);
            }
        }
        res[r] = A;
        resl[r] = L;
        resm[r] = M;
    }
    if (C == 1) {
#pragma unroll
        for (int r = 0; r < R; r++) {
            const int pi = tid + r * CL_THREADS, sl = pi / HD, c = pi - sl * HD, qi = sl / a.GB, g = sl - qi * a.GB;
            if (pi < PAIRS && qi < nrows)
                stf(a.out, a.odt, ((int64_t)(i0 + qi) * a.H + h0 + g) * HD + c, resl[r] > 0.0f ? res[r] / resl[r] : 0.0f);
        }
        return;
    }

    /* the blocks of the cluster: block o owns pairs [o * per, (o + 1) * per); every block pushes its
     * partial of them there, and (m, l) of every slot to every block */
    const int per = PAIRS / C; /* PAIRS >= 64 is a multiple of 16 >= C */
    cl_wait();
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int pi = tid + r * CL_THREADS, sl = pi / HD, c = pi - sl * HD;
        if (pi >= PAIRS) continue;
        const int o = pi / per;
        cl_store(xacc + split * per + (pi - o * per), (unsigned)o, res[r]);
        if (c == 0)
            for (int b = 0; b < C; b++) {
                cl_store(xm + split * NS + sl, (unsigned)b, resm[r]);
                cl_store(xl + split * NS + sl, (unsigned)b, resl[r]);
            }
    }
    cl_arrive();
    cl_wait(); /* every push has landed; no block touches another's shared memory after this */
    for (int p = tid; p < per; p += CL_THREADS) {
        const int pi = split * per + p, sl = pi / HD, c = pi - sl * HD, qi = sl / a.GB, g = sl - qi * a.GB;
        if (qi >= nrows) continue;
        float M = -INFINITY;
        for (int b = 0; b < C; b++) M = fmaxf(M, xm[b * NS + sl]);
        float L = 0.0f, A = 0.0f;
        if (M != -INFINITY)
            for (int b = 0; b < C; b++) {
                const float ms = xm[b * NS + sl];
                const float wt = ms == -INFINITY ? 0.0f : expf(ms - M);
                L = fmaf(xl[b * NS + sl], wt, L);
                A = fmaf(xacc[b * per + p], wt, A);
            }
        stf(a.out, a.odt, ((int64_t)(i0 + qi) * a.H + h0 + g) * HD + c, L > 0.0f ? A / L : 0.0f);
    }
#else
    __trap(); /* the host launches it only for code built for sm_90 or newer (cl_able) */
#endif
}

/* ---- decode on tensor cores (sm_80+): the per-key work of the two kernels above on mma.sync ----
 * Both CUDA-core kernels spend ~100 warp instructions per key and kv head (16 lanes per key, shuffle
 * reductions of every score, an exp per lane and slot): at 512 keys a block's one tile is a long
 * dependent chain, at 32k keys the SM's issue rate, not HBM, bounds them. Here a warp takes 16 keys
 * at a time ("a step") and does S = Q K^T and O += P V with mma.sync m16n8k16 (f16 or bf16 in, fp32
 * accumulators): ~8 warp instructions per key. Rows of the mma are the NS <= 8 slots (heads of the GQA
 * group x query rows, as above; rows NS..15 are zero), so K and V are read once per group.
 * Fragments come straight from global memory, no shared memory: a dot product does not depend on the
 * order of the head dims, nor P V on the order of the keys of a step, so the dims are permuted so that
 * every thread's pieces are whole 16-byte loads and every load instruction reads whole 32-byte sectors:
 *  - S: thread (g = lane/4, t4 = lane%4) loads keys g and g+8 of the step, its HD/32 16-byte pieces
 *    t4, t4+4, t4+8, .. of each row; k step s uses halves 4(s&1)..+3 of piece s/2 (b0 = 2 halves,
 *    b1 = the next 2). Q's A fragment (row g = slot g) is loaded with the same permutation, once.
 *  - P V: thread (g, t4) loads keys 2t4, 2t4+1, 2t4+8, 2t4+9 of the step, the 16-byte pieces g, g+8, ..
 *    of each row; output column n of n-tile nb is head dim tc_vdim(nb, n), the B fragment's halves
 *    are paired from two key rows with one byte permute. P (the S accumulator, rounded to the KV type)
 *    is the A fragment as in FlashAttention-2.
 * Online softmax in fp32 in the log2 domain per warp; l sums the rounded p (so the output is a
 * weighted mean of V with exactly the weights the mma used). The loads of a warp's next step are in
 * flight while it computes the current one. A block (TC_WARPS_MAX warps at most, its warp count a
 * launch parameter) owns one split of one (head group, row block); the nsteps = ceil(keys / 16) steps
 * are dealt to the splits in turn (split b takes steps b, b + used, ..; used = the splits that get any,
 * computed on the device from the key count, so one grid serves every key count of a graph replay),
 * and within a block to the warps in turn. Warps merge through shared memory; splits through global
 * partials merged by the last block to arrive (one online pass per output element, all partial loads
 * independent), as in the split-K kernel, whose partial buffers and counters it shares. CL (sm_90, the "tcc"
 * form): the splits are the blocks of one cluster, every one of them takes part (used = nsplit, with steps or
 * without) and they merge as the cluster kernel's do, in distributed shared memory after one cluster barrier.
 * Numerics: scores exact products with fp32 sums (tensor-core adds are not round-to-nearest at every
 * step), P rounded to f16/bf16 as in the prefill flash kernel: ~1e-4 relative for f16 outputs. Taken
 * only for f16/bf16 outputs and q of the KV dtype (an f32 q or output stays on the fp32 kernels). */
#define TC_WARPS_MAX 8
#define TC_MAX_SPLIT 99 /* the variant code keeps two decimal digits for it */
static_assert(KV_BLOCK % 16 == 0, "a 16-key step lies in one block of a paged cache");

/* head dim of output column n (0..7) of n-tile nb of P V: the thread with g = n loaded pieces g, g+8 */
__device__ __forceinline__ int tc_vdim(int nb, int n) { return 64 * (nb >> 3) + 8 * n + (nb & 7); }

template <typename KV> __device__ __forceinline__ void tc_mma(float c[4], uint32_t a0, uint32_t a2, uint32_t b0, uint32_t b1)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    /* A rows 8..15 (a1, a3) are zero: slots live in rows 0..7 */
    if constexpr (sizeof(KV) == 2 && std::is_same<KV, __half>::value)
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
    else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
#endif
}

/* two floats rounded to KV, packed (lo in the low 16 bits), and the rounded values back */
template <typename KV> __device__ __forceinline__ uint32_t tc_pack(float &lo, float &hi)
{
    uint32_t w;
    if constexpr (std::is_same<KV, __half>::value) {
        __half2 h = __floats2half2_rn(lo, hi);
        w = *reinterpret_cast<uint32_t *>(&h);
        const float2 f = __half22float2(h);
        lo = f.x, hi = f.y;
    } else {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        w = *reinterpret_cast<uint32_t *>(&h);
        lo = __uint_as_float(w << 16);
        hi = __uint_as_float(w & 0xffff0000u);
    }
    return w;
}

__device__ __forceinline__ void tc_prefetch_l2(const void *p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

__device__ __forceinline__ uint32_t tc_word(const uint4 &u, int i) { return i == 0 ? u.x : i == 1 ? u.y : i == 2 ? u.z : u.w; }

template <typename KV, int HD, bool CL>
__global__ void __launch_bounds__(32 * TC_WARPS_MAX) attn_tc_kernel(const attn_dec_args a)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
    if (CL) __trap(); /* the cluster merge needs sm_90 (the host launches it only there: cl_able) */
#endif
    if (CL) cl_arrive_relaxed(); /* waited for before the first remote store: every block of the cluster has started */
    if (!a.early) pdl_wait(); /* launched as a dependent (cuda_launch_dep): the previous kernel's output is ready */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    constexpr int NU = HD / 32; /* 16-byte pieces per thread per K row */
    constexpr int NV = HD / 64; /* 16-byte pieces per thread per V row */
    constexpr int NB = HD / 8;  /* n-tiles of P V */
    constexpr int KS = HD / 16; /* k steps of Q K^T */
    constexpr float LOG2E = 1.4426950408889634f;
    __shared__ float red_m[TC_WARPS_MAX][8], red_l[TC_WARPS_MAX][8];
    __shared__ __align__(16) float red_o[TC_WARPS_MAX][8][HD];
    __shared__ float red_w[TC_WARPS_MAX][8], red_M[8], red_L[8];
    __shared__ int s_last;
    /* CL: every block's (m, l) per slot and its acc of this block's slice of the (slot, column) pairs */
    __shared__ float xm[CL ? CL_MAX * 8 : 1], xl[CL ? CL_MAX * 8 : 1];
    __shared__ __align__(16) float xacc[CL ? 8 * HD : 4];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
    const int W = blockDim.x >> 5, NS = a.GB * a.QB;
    const int split = blockIdx.x, h0 = blockIdx.y * a.GB, kh = h0 / a.G, i0 = blockIdx.z * a.QB;

    const int qi = g / a.GB, gg = g - qi * a.GB;
    const bool row_ok = g < NS && qi < dec_block_rows(a, i0);

    /* key count and query positions */
    const dec_keys bk = dec_block_keys(a, i0);
    const int32_t *tab = bk.tab;
    const int64_t qp0 = bk.qp0, nk = bk.nk, blim = bk.blim;
    const int nrows = bk.nrows;
    /* the steps: split b takes steps b, b + used, b + 2 used, ..; within it warp w every W-th of those */
    /* in 32 bits (the host keeps the cache's keys <= INT32_MAX): a 64-bit division is a ~70-instruction
     * call, and three of them sat between the key count's load and the first K/V load */
    const int nsteps = (int)((blim + 15) / 16);
    int used = a.nsplit; /* CL: every block of the cluster takes part in the merge, with steps or without */
    if (!CL) {
        int sps = (nsteps + a.nsplit - 1) / a.nsplit; /* steps per split, at most */
        if (sps < W) sps = W; /* every warp of a block gets a step before another split is used */
        used = nsteps > sps ? (nsteps + sps - 1) / sps : 1;
        if (split >= used) return;
    }
    pdl_trigger();

    /* this thread's slot row g: its key limit */
    int64_t lim = 0;
    if (row_ok) lim = a.causal ? qp0 + i0 + qi + 1 : nk;
    if (lim > nk) lim = nk;

    const uint4 *kp = reinterpret_cast<const uint4 *>(a.k), *vp = reinterpret_cast<const uint4 *>(a.v);
    const int64_t rstride = (int64_t)a.Hkv * (HD / 8); /* uint4 per key row of the cache */
    const uint4 *kh_k = kp + (int64_t)kh * (HD / 8), *kh_v = vp + (int64_t)kh * (HD / 8);
    /* warp-local step i is global step split + used * (warp + W * i) */
    const int wstep0 = split + used * warp, wstride = used * W;
    const int nmine = wstep0 < nsteps ? (nsteps - 1 - wstep0) / wstride + 1 : 0;
    /* the cache row of key 0 of warp-local step i (a step's 16 rows are consecutive: KV_BLOCK % 16 == 0);
     * paged, the table entry of step i + 2 is read while step i is computed */
    auto base_of = [&](int i) -> int64_t { return i < nmine ? attn_row(tab, (int64_t)(wstep0 + wstride * i) * 16) : 0; };
    auto load_k = [&](int i, int64_t base, uint4 (&kd)[2][NU]) {
        const int64_t j0 = (int64_t)(wstep0 + wstride * i) * 16;
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const bool ok = j0 + g + 8 * r < blim;
            const uint4 *p = kh_k + (base + g + 8 * r) * rstride + t4;
#pragma unroll
            for (int u = 0; u < NU; u++) kd[r][u] = ok ? __ldg(p + 4 * u) : make_uint4(0, 0, 0, 0);
        }
    };
    auto load_v = [&](int i, int64_t base, uint4 (&vd)[4][NV]) {
        const int64_t j0 = (int64_t)(wstep0 + wstride * i) * 16;
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int jr = 2 * t4 + (r & 1) + 8 * (r >> 1);
            const bool ok = j0 + jr < blim;
            const uint4 *p = kh_v + (base + jr) * rstride + g;
#pragma unroll
            for (int u = 0; u < NV; u++) vd[r][u] = ok ? __ldg(p + 8 * u) : make_uint4(0, 0, 0, 0);
        }
    };
    /* K and V of step i + 1 are loaded while step i is computed: K(i+1) once K(i) has been used,
     * V(i+1) once S(i) is done (three of the four buffers live at a time, not four) */
    uint4 kr[2][NU], vr[4][NV];
    int64_t bcur = base_of(0);
    /* the chain position -> block table -> first K/V is the kernel's latency at short contexts (H200 ncu,
     * session 16: ~40 % of the warp samples at 4,096 keys before the first data); under attn_early it runs
     * while the previous kernels (RoPE and the KV append, the q|k|v GEMV's tail) still do, for a first step
     * whose keys were all in the cache before this step */
    const bool pre = a.early && nmine > 0 && (int64_t)wstep0 * 16 + 16 <= bk.old;
    if (pre) load_k(0, bcur, kr), load_v(0, bcur, vr);
    if (pre && nmine > 1) {
        /* and the warp's later steps of earlier keys into the L2 meanwhile, so that after the wait their loads wait
         * for the L2, not for HBM: lane (r, h) takes the 128-byte line h of key row r of the step, K and V */
        const int r = lane & 15, h = lane >> 4;
        for (int i = 1; i < nmine; i++) {
            if ((int64_t)(wstep0 + wstride * i) * 16 + 16 > bk.old) break;
            const int64_t row = base_of(i) + r;
            if (h * 8 < HD / 8) {
                tc_prefetch_l2(kh_k + row * rstride + h * 8);
                tc_prefetch_l2(kh_v + row * rstride + h * 8);
            }
        }
    }
    int64_t bnext = base_of(1);
    if (a.early) pdl_wait(); /* q and this step's K/V rows are the previous kernel's output */

    /* this thread's slot row g: its Q fragment (dims permuted as K's) */
    uint32_t qa[KS], qb[KS]; /* A fragment registers 0 and 2 of k step s */
    {
        const uint4 *qp = reinterpret_cast<const uint4 *>(a.q) + ((int64_t)(i0 + qi) * a.H + h0 + gg) * (HD / 8);
#pragma unroll
        for (int u = 0; u < NU; u++) {
            const uint4 x = row_ok ? __ldg(qp + 4 * u + t4) : make_uint4(0, 0, 0, 0);
            qa[2 * u] = x.x, qb[2 * u] = x.y, qa[2 * u + 1] = x.z, qb[2 * u + 1] = x.w;
        }
    }
    if (!pre && nmine > 0) load_k(0, bcur, kr), load_v(0, bcur, vr);

    float m = -INFINITY, l = 0.0f, o[NB][4];
#pragma unroll
    for (int nb = 0; nb < NB; nb++) o[nb][0] = o[nb][1] = o[nb][2] = o[nb][3] = 0.0f;
    const float sl2 = a.scale * LOG2E;
    for (int i = 0; i < nmine; i++) {
        const int64_t j0 = (int64_t)(wstep0 + wstride * i) * 16;
        float s[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
        for (int r = 0; r < 2; r++)
#pragma unroll
            for (int ks = 0; ks < KS; ks++) {
                const uint4 &x = kr[r][ks >> 1];
                tc_mma<KV>(s[r], qa[ks], qb[ks], (ks & 1) ? x.z : x.x, (ks & 1) ? x.w : x.y);
            }
        const bool more = i + 1 < nmine;
        if (more) load_k(i + 1, bnext, kr); /* K(i) is used */
        uint4 vn[4][NV];
        if (more) load_v(i + 1, bnext, vn);
        bnext = base_of(i + 2);
        /* s[r][e], e = 0, 1: row g, key j0 + 8r + 2 t4 + e */
        float x[4];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int64_t j = j0 + 8 * (e >> 1) + 2 * t4 + (e & 1);
            x[e] = j < lim ? s[e >> 1][e & 1] * sl2 : -INFINITY;
        }
        float mt = fmaxf(fmaxf(x[0], x[1]), fmaxf(x[2], x[3]));
        mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
        mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 2));
        const float mn = fmaxf(m, mt);
        const float alpha = m == -INFINITY ? 0.0f : exp2f(m - mn); /* mn finite whenever m is */
        float p[4];
#pragma unroll
        for (int e = 0; e < 4; e++) p[e] = x[e] == -INFINITY ? 0.0f : exp2f(x[e] - mn);
        const uint32_t pa0 = tc_pack<KV>(p[0], p[1]), pa2 = tc_pack<KV>(p[2], p[3]);
        l = l * alpha + ((p[0] + p[1]) + (p[2] + p[3]));
        m = mn;
#pragma unroll
        for (int nb = 0; nb < NB; nb++) {
            o[nb][0] *= alpha;
            o[nb][1] *= alpha;
            const int u = nb >> 3, w = (nb & 7) >> 1;
            const unsigned sel = (nb & 1) ? 0x7632u : 0x5410u;
            const uint32_t b0 = __byte_perm(tc_word(vr[0][u], w), tc_word(vr[1][u], w), sel);
            const uint32_t b1 = __byte_perm(tc_word(vr[2][u], w), tc_word(vr[3][u], w), sel);
            tc_mma<KV>(o[nb], pa0, pa2, b0, b1);
        }
        if (more) {
#pragma unroll
            for (int r = 0; r < 4; r++)
#pragma unroll
                for (int u = 0; u < NV; u++) vr[r][u] = vn[r][u];
        }
    }
    /* l over the 4 threads of row g (m is already the same in all four) */
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);

    /* the warps of the block, in the natural log domain from here on (as the partials of split-K) */
    if (t4 == 0) {
        red_m[warp][g] = m == -INFINITY ? -INFINITY : m / LOG2E;
        red_l[warp][g] = l;
    }
#pragma unroll
    for (int nb = 0; nb < NB; nb++) {
        red_o[warp][g][tc_vdim(nb, 2 * t4)] = o[nb][0];
        red_o[warp][g][tc_vdim(nb, 2 * t4 + 1)] = o[nb][1];
    }
    __syncthreads();
    /* the warps' weights per slot, once: e^(m_w - M) and L (one thread per slot), then every output
     * column's weighted sum of the W partial rows, 4 columns per thread (the same operations in the same
     * order as one thread per column and slot, which spent most of the kernel's warp time here: the
     * weights recomputed for every column, runtime divisions, a loop not unrolled) */
    if (tid < NS) {
        const int sl = tid;
        float M = -INFINITY;
        for (int w = 0; w < W; w++) M = fmaxf(M, red_m[w][sl]);
        float L = 0.0f;
        for (int w = 0; w < W; w++) {
            const float ms = red_m[w][sl];
            const float wt = M == -INFINITY || ms == -INFINITY ? 0.0f : expf(ms - M);
            red_w[w][sl] = wt;
            L = fmaf(red_l[w][sl], wt, L);
        }
        red_M[sl] = M;
        red_L[sl] = L;
    }
    __syncthreads();
    const int PAIRS = NS * HD;
    /* CL: block o of the cluster owns pairs [o per, (o + 1) per) (PAIRS >= 64 and C a power of two <= 16: per is
     * a multiple of 4); every block pushes its partial of them there, and (m, l) of every slot to every block */
    const int per = CL ? PAIRS / a.nsplit : 0;
    if (CL) cl_wait();
    for (int qd = tid; qd < PAIRS / 4; qd += blockDim.x) {
        const int sl = qd / (HD / 4), c = 4 * (qd - sl * (HD / 4)), qr = sl / a.GB, hg = sl - qr * a.GB;
        if (qr >= nrows) continue;
        const float M = red_M[sl], L = red_L[sl];
        float4 A = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (M != -INFINITY)
#pragma unroll
            for (int w = 0; w < TC_WARPS_MAX; w++) {
                if (w >= W) break;
                const float wt = red_w[w][sl];
                const float4 x = *reinterpret_cast<const float4 *>(&red_o[w][sl][c]);
                A.x = fmaf(x.x, wt, A.x);
                A.y = fmaf(x.y, wt, A.y);
                A.z = fmaf(x.z, wt, A.z);
                A.w = fmaf(x.w, wt, A.w);
            }
        const int64_t ih = (int64_t)(i0 + qr) * a.H + h0 + hg;
        if constexpr (CL) {
            const int pi = 4 * qd, o = pi / per, off = split * per + pi - o * per;
            cl_store(xacc + off + 0, (unsigned)o, A.x);
            cl_store(xacc + off + 1, (unsigned)o, A.y);
            cl_store(xacc + off + 2, (unsigned)o, A.z);
            cl_store(xacc + off + 3, (unsigned)o, A.w);
            if (c == 0)
                for (int b = 0; b < a.nsplit; b++) {
                    cl_store(xm + split * 8 + sl, (unsigned)b, M);
                    cl_store(xl + split * 8 + sl, (unsigned)b, L);
                }
        } else if (used == 1) {
            stf(a.out, a.odt, ih * HD + c + 0, L > 0.0f ? A.x / L : 0.0f);
            stf(a.out, a.odt, ih * HD + c + 1, L > 0.0f ? A.y / L : 0.0f);
            stf(a.out, a.odt, ih * HD + c + 2, L > 0.0f ? A.z / L : 0.0f);
            stf(a.out, a.odt, ih * HD + c + 3, L > 0.0f ? A.w / L : 0.0f);
        } else {
            *reinterpret_cast<float4 *>(&a.part_acc[(ih * a.nsplit + split) * HD + c]) = A;
            if (c == 0) {
                a.part_ml[(ih * a.nsplit + split) * 2 + 0] = M;
                a.part_ml[(ih * a.nsplit + split) * 2 + 1] = L;
            }
        }
    }
    if (CL) { /* after one cluster barrier, each block merges its slice (as attn_cluster_kernel) */
        cl_arrive();
        cl_wait(); /* every push has landed; no block touches another's shared memory after this */
        for (int p = tid; p < per; p += blockDim.x) {
            const int pi = split * per + p, sl = pi / HD, col = pi - sl * HD, qr = sl / a.GB, hg = sl - qr * a.GB;
            if (qr >= nrows) continue;
            float M = -INFINITY;
            for (int b = 0; b < a.nsplit; b++) M = fmaxf(M, xm[b * 8 + sl]);
            float L = 0.0f, A = 0.0f;
            if (M != -INFINITY)
                for (int b = 0; b < a.nsplit; b++) {
                    const float ms = xm[b * 8 + sl];
                    const float wt = ms == -INFINITY ? 0.0f : expf(ms - M);
                    L = fmaf(xl[b * 8 + sl], wt, L);
                    A = fmaf(xacc[b * per + p], wt, A);
                }
            stf(a.out, a.odt, ((int64_t)(i0 + qr) * a.H + h0 + hg) * HD + col, L > 0.0f ? A / L : 0.0f);
        }
        return;
    }
    if (used == 1) return;
    /* the last block of this (head block, row block) to arrive merges the splits */
    __threadfence();
    __syncthreads();
    int *cnt = a.cnt + blockIdx.z * gridDim.y + blockIdx.y;
    if (tid == 0) {
        const int prev = atomicAdd(cnt, 1);
        s_last = prev == used - 1;
        if (s_last) *cnt = 0; /* every block of this launch has arrived: ready for the next launch */
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    /* one online pass per 4 columns of a slot: every split's (m, l) and 16 bytes of acc, the loads of
     * eight splits in flight at once (the merge is a chain of L2 round trips, keep it short) */
    for (int qd = tid; qd < PAIRS / 4; qd += blockDim.x) {
        const int sl = qd / (HD / 4), c = 4 * (qd - sl * (HD / 4)), qr = sl / a.GB, hg = sl - qr * a.GB;
        if (qr >= nrows) continue;
        const int64_t ih = (int64_t)(i0 + qr) * a.H + h0 + hg;
        const float2 *ml = reinterpret_cast<const float2 *>(a.part_ml) + ih * a.nsplit;
        const float4 *pa = reinterpret_cast<const float4 *>(a.part_acc + ih * a.nsplit * HD + c);
        float M = -INFINITY, L = 0.0f;
        float4 A = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 8
        for (int sp = 0; sp < used; sp++) {
            const float2 e = __ldcg(ml + sp);
            const float4 x = __ldcg(pa + (int64_t)sp * (HD / 4));
            if (e.x == -INFINITY) continue; /* a split that saw no key of this slot */
            const float Mn = fmaxf(M, e.x);
            const float wa = M == -INFINITY ? 0.0f : expf(M - Mn), wb = expf(e.x - Mn);
            L = L * wa + e.y * wb;
            A.x = A.x * wa + x.x * wb;
            A.y = A.y * wa + x.y * wb;
            A.z = A.z * wa + x.z * wb;
            A.w = A.w * wa + x.w * wb;
            M = Mn;
        }
        const float il = L > 0.0f ? 1.0f / L : 0.0f;
        stf(a.out, a.odt, ih * HD + c + 0, A.x * il);
        stf(a.out, a.odt, ih * HD + c + 1, A.y * il);
        stf(a.out, a.odt, ih * HD + c + 2, A.z * il);
        stf(a.out, a.odt, ih * HD + c + 3, A.w * il);
    }
#else
    __trap(); /* the host launches it only for code built for sm_80 or newer (tc_able) */
#endif
}

/* ---- host: which kernel, how many splits ---- */

typedef void (*cl_kernel_fn)(const attn_dec_args);

static cl_kernel_fn cl_kernel(enum dtype kv, int hd, int ns)
{
#define CL_NS(KV, HD_)                                                                                 \
    return ns == 1 ? attn_cluster_kernel<KV, HD_, 1> : ns == 2 ? attn_cluster_kernel<KV, HD_, 2>      \
           : ns == 4 ? attn_cluster_kernel<KV, HD_, 4> : attn_cluster_kernel<KV, HD_, 8>
    if (kv == DTYPE_F16) {
        if (hd == 128) CL_NS(__half, 128);
        CL_NS(__half, 64);
    }
    if (hd == 128) CL_NS(__nv_bfloat16, 128);
    CL_NS(__nv_bfloat16, 64);
#undef CL_NS
}

/* The cluster kernel needs sm_90 code on an sm_90 (or newer) card; older cards and older targets of
 * the fat build (a compute_75 PTX build JIT-compiled on an H200) keep the split-K kernel. */
static int cl_able(const struct cuda_ctx *c) { return c->cc >= 90 && c->code_arch >= 90; }

/* What one cluster kernel can do on one device, asked once per kernel and device (driver calls per
 * launch would cost microseconds of host time, 32 launches per decode step; as fa_opt_in in
 * cuda_flash.cu): its shared memory opt-in, and maxcl[e] = how many clusters of 2^e blocks fit on the
 * device at once (0: none; 16 is a non-portable size, which not every card or partition allows). */
static void cl_caps(struct cuda_ctx *c, cl_kernel_fn fn, int threads, size_t dsmem, int maxcl[5])
{
    static std::mutex mu;
    static struct { cl_kernel_fn fn; int ordinal, threads; int maxcl[5]; } done[64];
    static int n_done;
    std::lock_guard<std::mutex> lock(mu);
    for (int i = 0; i < n_done; i++)
        if (done[i].fn == fn && done[i].ordinal == c->ordinal && done[i].threads == threads) {
            memcpy(maxcl, done[i].maxcl, sizeof done[i].maxcl);
            return;
        }
    if (dsmem) CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)dsmem));
    const int big = cudaFuncSetAttribute(fn, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) == cudaSuccess;
    (void)cudaGetLastError();
    maxcl[0] = 1 << 20; /* one block per cluster: any number, in waves */
    for (int e = 1; e < 5; e++) {
        int nc = 0;
        if ((1 << e) <= 8 || big) {
            cudaLaunchConfig_t cfg = {};
            cfg.gridDim = dim3(1u << e, 1, 1);
            cfg.blockDim = dim3((unsigned)threads, 1, 1);
            cfg.dynamicSmemBytes = dsmem;
            cudaLaunchAttribute at[1] = {};
            at[0].id = cudaLaunchAttributeClusterDimension;
            at[0].val.clusterDim.x = 1u << e;
            at[0].val.clusterDim.y = 1;
            at[0].val.clusterDim.z = 1;
            cfg.attrs = at;
            cfg.numAttrs = 1;
            if (cudaOccupancyMaxActiveClusters(&nc, fn, &cfg) != cudaSuccess) {
                nc = 0;
                (void)cudaGetLastError();
            }
        }
        maxcl[e] = nc;
    }
    if (n_done < 64) {
        done[n_done].fn = fn;
        done[n_done].ordinal = c->ordinal;
        done[n_done].threads = threads;
        memcpy(done[n_done].maxcl, maxcl, sizeof done[n_done].maxcl);
        n_done++;
    }
}

/* Splits per cluster: doubled while the grid stays within the blocks the SMs hold at once (two per SM
 * at <= 4 slots, where the launch bounds let two fit; one at 8 slots) and the clusters fit on the
 * device in one wave; at most 16. n = 1 with 8 kv heads: 8 clusters of 16 (128 blocks on 132 SMs);
 * rows mode at B = 16: 128 clusters of 2; B >= 17: one block per (head group, row), no cluster. */
static int cl_splits(const struct cuda_ctx *c, const int maxcl[5], int64_t clusters, int ns)
{
    const int64_t room = (int64_t)c->n_sm * (ns <= 4 ? 2 : 1);
    int e = 0;
    while (e < 4 && clusters * (2 << e) <= room && clusters <= maxcl[e + 1]) e++;
    return 1 << e;
}

/* Launches fn, a decode kernel whose grid's x is one cluster of C blocks (C = 1: no cluster), over hblocks x rblocks
 * clusters of `threads`-thread blocks with dsmem bytes of dynamic shared memory, with a.nsplit = C, as a programmatic
 * dependent of the kernel before it when the small kernels are (c->pdl_small, as cuda_launch_dep). False, and
 * nothing launched, when the device cannot hold a cluster of C (maxcl from cl_caps). */
static bool cl_run(const struct cuda_ctx *c, cl_kernel_fn fn, const int maxcl[5], int C, int threads, size_t dsmem,
                   int64_t hblocks, int64_t rblocks, attn_dec_args &a)
{
    int e = 0;
    while ((1 << e) < C) e++;
    if (maxcl[e] < 1) return false;
    a.nsplit = C;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)C, (unsigned)hblocks, (unsigned)rblocks);
    cfg.blockDim = dim3((unsigned)threads, 1, 1);
    cfg.dynamicSmemBytes = dsmem;
    cfg.stream = c->stream;
    cudaLaunchAttribute at[2] = {};
    int na = 0;
    if (C > 1) {
        at[na].id = cudaLaunchAttributeClusterDimension;
        at[na].val.clusterDim.x = (unsigned)C;
        at[na].val.clusterDim.y = 1;
        at[na].val.clusterDim.z = 1;
        na++;
    }
    if (c->pdl_small) {
        at[na].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[na].val.programmaticStreamSerializationAllowed = 1;
        na++;
    }
    cfg.attrs = at;
    cfg.numAttrs = (unsigned)na;
    CUDA_CHECK(cudaLaunchKernelEx(&cfg, fn, a));
    return true;
}

/* ---- the automatic choice: a table read top to bottom, from the bench ----
 * groups = (head group, row block) pairs of the launch (one row of Llama-3-8B: 8; rows mode: 8 B);
 * keys = what the host knows of the key count (the cache capacity with device positions or in rows
 * mode, else the causal count). The first row whose bounds hold and whose kernel can run the call
 * (DEC_TC: sm_80 code and card, q of the KV dtype, f16/bf16 output; DEC_CLUSTER: sm_90) wins; the
 * last row always can.
 * The cluster / split-K rows: H200 session 7 (test_cuda_ops bench attention, 32/8 heads): one row,
 * keys <= 4096: cluster 11.9-28.6 us vs split-K 14.9-30.2; 8192: 44.2 vs 39.6; 32768: 136 vs 86.5 (a
 * cluster of at most 16 splits holds fewer blocks than split-K spreads); rows mode, B = 4 at 4096
 * keys: 75.8 vs 70.5; B = 16: 142 vs 207, B = 64: 519 vs 709.
 * The tensor-core kernel (DEC_TC), H200 session 9 (same bench, its split count from tc_splits): one row,
 * 1,024 keys 13.8 us (8 splits forced) vs cluster 14.4, 2,048 16.5 vs 19.6, 4,096 21.1 vs 28.1, 8,192 25.8
 * vs 39.6 (split-K), 32,768 53.4 vs 86.6; 512 keys 11.9-12.3 vs cluster 11.5 (so the cluster kernel keeps
 * one row of a cache of <= 768); rows mode: every B >= 4 measured (512..4,096 keys), e.g. B = 16 at 512
 * keys 27.3 vs 29.5, B = 64 at 512 46.3 vs 85.5, at 4,096 251 vs 519. The old rows stay for what the
 * tensor-core kernel cannot run (before sm_80, f32). */
enum { DEC_SPLITK, DEC_CLUSTER, DEC_TC, DEC_TCC };
static const struct dec_rule {
    int64_t max_groups, max_keys;
    int kernel;
} dec_rules[] = {
    {31, 768, DEC_CLUSTER},
    {INT64_MAX, INT64_MAX, DEC_TC},
    {31, 4096, DEC_CLUSTER},
    {127, INT64_MAX, DEC_SPLITK},
    {INT64_MAX, INT64_MAX, DEC_CLUSTER},
    {INT64_MAX, INT64_MAX, DEC_SPLITK},
};

/* The tensor-core kernel needs mma.sync m16n8k16 with bf16 (sm_80) in the running code. */
static int tc_able(const struct cuda_ctx *c) { return c->cc >= 80 && c->code_arch >= 80; }

/* Splits of the tensor-core kernel (grid shape only: graph-safe): at most 8 warps per SM over the
 * grid (rounded down: H200 session 10, rows mode B = 16 (128 groups, W = 4) at 512 / 1,024 keys, 2 splits
 * 19.6 / 28.2 us against the 3 that rounding up gave, 27.4 / 37.9; one row and B = 4 are unchanged), and at
 * most sqrt(keys / 32) (the W = 4 sweep of session 9 on the H200, one row: the best S was
 * 4 at 512 keys, 8 at 1,024-2,048, 16 at 4,096-8,192, 33 at 32,768; 8 warps per SM alone took 33 at
 * every length, 26.1 us at 4,096 keys against 21.1 with 16), at most one split per W steps of the keys
 * the host knows of, at most TC_MAX_SPLIT. The kernel uses fewer when the actual keys are fewer (at
 * least W steps per split). */
static int tc_splits(const struct cuda_ctx *c, int64_t groups, int W, int64_t keys)
{
    int64_t s = 8 * (int64_t)c->n_sm / (groups * W);
    const int64_t by_len = (int64_t)(sqrt((double)keys / 32.0) + 0.5);
    if (s > by_len) s = by_len;
    const int64_t cap = ((keys + 15) / 16 + W - 1) / W;
    if (s > cap) s = cap;
    if (s > TC_MAX_SPLIT) s = TC_MAX_SPLIT;
    return s < 1 ? 1 : (int)s;
}

/* Variant codes of attn_decode_run (tests, bench): */
#define DEC_VAR_AUTO -1
#define DEC_VAR_SPLITK 0       /* 1, 2, 4, 8, 16: the cluster kernel with that many splits */
#define DEC_VAR_CLUSTER 32     /* the cluster kernel, splits chosen as in the automatic path */
#define DEC_VAR_TC 1000        /* + 100 W + S: the tensor-core kernel, W warps per block (1, 2, 4, 8;
                                  0: dev_set_attn_warps's, else 4), S splits (1 .. 99; 0: dev_set_attn_splits's, else
                                  tc_splits) */
#define DEC_VAR_TCC 2000       /* + 100 W + C: the tensor-core kernel with its C splits (2, 4, 8, 16; 0: tcc_splits)
                                  the blocks of one cluster, merged in distributed shared memory (sm_90); W as above
                                  (0: dev_set_attn_warps's, else TCC_WARPS_AUTO) */
#define TC_WARPS_AUTO 4

/* a warp count of a variant code: 1, 2, 4, 8, or 0 (not given) */
static bool tc_warps_ok(int w) { return w == 0 || w == 1 || w == 2 || w == 4 || w == 8; }

static cl_kernel_fn tcc_kernel(enum dtype kv, int hd)
{
    if (kv == DTYPE_F16) return hd == 128 ? attn_tc_kernel<__half, 128, true> : attn_tc_kernel<__half, 64, true>;
    return hd == 128 ? attn_tc_kernel<__nv_bfloat16, 128, true> : attn_tc_kernel<__nv_bfloat16, 64, true>;
}

/* Splits of the cluster-merged tensor-core kernel: 8 up to DEV_ATTN_SHORT_KEYS keys, else 16 (H200 session 19, bench q4
 * decode512 / decode4096 in one graph shape, 4 warps a block: 8 splits 523 / 442 tok/s, 16 514 / 464, 4 509 / 387;
 * 2 warps a block lost at both lengths); dev_set_attn_splits's count rounded down to a power of two
 * when set; halved while the device cannot hold all the clusters at once. */
/* ... and 8 warps a block at both lengths (same bench, alternating in one call: q4 519-523 / 462 tok/s against
 * 515-516 / 449-453 with 4, fp16 236 / 221-223 against 234 / 221) */
#define TCC_WARPS_AUTO 8
static int tcc_splits(const struct cuda_ctx *c, const int maxcl[5], int64_t groups, int64_t keys)
{
    const int s = c->attn_splits > 0 ? c->attn_splits : keys <= DEV_ATTN_SHORT_KEYS ? 8 : 16;
    int e = 1;
    while (e < 4 && (2 << e) <= s) e++;
    while (e > 1 && maxcl[e] < groups) e--;
    return 1 << e;
}

/* attn_decode, with the choice forced for tests and the bench (variant: the codes above). Returns 0
 * when the call (or, for a forced variant, the device) does not fit (nothing launched), 1 when the
 * split-K kernel ran, 2 the cluster kernel, 3 the tensor-core kernel, 4 the cluster-merged tensor-core
 * kernel. */
static int attn_decode_run(struct cuda_ctx *c, struct tensor *out, const struct tensor *q, const struct tensor *k,
                           const struct tensor *v, const int32_t *pos, const attn_pages *pg, int64_t q_pos0,
                           float scale, int flags, int variant)
{
    const int rows = pg && pg->nkeys;
    const int64_t n = q->shape[0], H = q->shape[1], hd = q->shape[2], Hkv = k->shape[1];
    const int64_t T = pg ? pg->mb * KV_BLOCK : k->shape[0];
    if ((n > 8 && !rows) || (flags & ATTN_EAGER_F16) || k->dtype != v->dtype || (hd != 64 && hd != 128)) return 0;
    if (k->dtype != DTYPE_F16 && k->dtype != DTYPE_BF16) return 0;
    if (((uintptr_t)k->data & 15) || ((uintptr_t)v->data & 15) || T > INT32_MAX || H > 65535) return 0;
    const int tc_fits = tc_able(c) && q->dtype == k->dtype && (out->dtype == DTYPE_F16 || out->dtype == DTYPE_BF16) &&
                        !((uintptr_t)q->data & 15);
    int kernel = DEC_SPLITK, W = 0, S = 0; /* W, S 0: not given by the variant code (the knobs, else the rule) */
    if (variant < 0 && c->attn_kernel > 0) { /* dev_set_attn_kernel: forced where it can run, else the rule */
        const int f = c->attn_kernel - 1;
        if ((f == DEC_TC && tc_fits) || (f == DEC_CLUSTER && cl_able(c)) || (f == DEC_TCC && tc_fits && cl_able(c)) ||
            f == DEC_SPLITK)
            variant = f == DEC_TC ? DEC_VAR_TC : f == DEC_TCC ? DEC_VAR_TCC : f == DEC_CLUSTER ? DEC_VAR_CLUSTER : 0;
    }
    if (variant >= DEC_VAR_TCC) {
        W = (variant - DEC_VAR_TCC) / 100, S = variant % 100;
        if (!tc_fits || !cl_able(c) || !tc_warps_ok(W) || variant >= DEC_VAR_TCC + 900 || S > CL_MAX || (S & (S - 1)) || S == 1)
            return 0;
        kernel = DEC_TCC;
    } else if (variant >= DEC_VAR_TC) {
        W = (variant - DEC_VAR_TC) / 100, S = variant % 100;
        if (!tc_fits || !tc_warps_ok(W) || variant >= DEC_VAR_TC + 900) return 0;
        kernel = DEC_TC;
    } else if (variant > 0) {
        if (!cl_able(c) || (variant != DEC_VAR_CLUSTER && (variant > CL_MAX || (variant & (variant - 1))))) return 0;
        kernel = DEC_CLUSTER;
    } else if (variant < 0) {
        kernel = -1; /* from dec_rules below, once the groups are known */
    }
    attn_dec_args a;
    memset(&a, 0, sizeof a);
    a.out = out->data;
    a.q = q->data;
    a.k = k->data;
    a.v = v->data;
    a.pos = pos;
    if (pg) {
        a.tab = pg->tab;
        a.mb = pg->mb;
        a.seq = pg->seq;
        a.nkeys = pg->nkeys;
        a.S = pg->S;
    }
    a.q_pos0 = q_pos0;
    a.T = (int)T;
    a.odt = out->dtype;
    a.qdt = q->dtype;
    a.n = (int)n;
    a.H = (int)H;
    a.Hkv = (int)Hkv;
    a.G = (int)(H / Hkv);
    a.causal = (flags & ATTN_CAUSAL) != 0 || rows;
    a.early = c->attn_early;
    a.scale = scale;
    /* slots: heads of the group first (each K/V row serves them all), then query rows (rows mode: one,
     * each row has its own sequence) */
    a.GB = 1;
    for (int d = 8; d >= 1; d--)
        if (a.G % d == 0) {
            a.GB = d;
            break;
        }
    a.QB = rows ? 1 : 8 / a.GB;
    if (a.QB > n) a.QB = (int)n;
    const int ns = a.GB * a.QB;
    const int NS = ns <= 1 ? 1 : ns <= 2 ? 2 : ns <= 4 ? 4 : 8;
    const int64_t hblocks = H / a.GB, rblocks = (n + a.QB - 1) / a.QB, groups = hblocks * rblocks;
    /* keys: what the host knows (device positions and rows mode: the capacity) */
    const int64_t keys = pos || rows ? T : ((flags & ATTN_CAUSAL) ? (q_pos0 + n < T ? q_pos0 + n : T) : T);
    /* with dev_set_attn_keys's bound (the cluster-merged kernel's split count; the older rules keep the capacity) */
    const int64_t hkeys = pos && !rows && c->attn_keys > 0 && c->attn_keys < keys ? c->attn_keys : keys;
    /* a few rows of one sequence on sm_90: the tensor-core kernel with its splits merged in the cluster's shared
     * memory (H200 session 19, end to end: q4 decode512 / 4096 499 / 434 tok/s with DEC_TC, 523 / 464 with it;
     * the rows mode of the batched step keeps the rules below) */
    if (kernel < 0 && !rows && groups <= 31 && tc_fits && cl_able(c)) kernel = DEC_TCC;
    for (size_t r = 0; kernel < 0 && r < sizeof dec_rules / sizeof dec_rules[0]; r++) {
        const struct dec_rule *d = &dec_rules[r];
        if (groups > d->max_groups || T > d->max_keys) continue;
        if ((d->kernel == DEC_TC && !tc_fits) || (d->kernel == DEC_CLUSTER && !cl_able(c))) continue;
        kernel = d->kernel;
    }

    /* the tensor-core kernels' warps and splits that the variant code left open: dev_set_attn_warps / _splits, else
     * the rule */
    if (W == 0) W = c->attn_warps > 0 ? c->attn_warps : kernel == DEC_TCC ? TCC_WARPS_AUTO : TC_WARPS_AUTO;
    if (kernel == DEC_TCC) {
        cl_kernel_fn fn = tcc_kernel(k->dtype, (int)hd);
        int maxcl[5];
        cl_caps(c, fn, 32 * W, 0, maxcl);
        if (S == 0) S = tcc_splits(c, maxcl, groups, hkeys);
        return cl_run(c, fn, maxcl, S, 32 * W, 0, hblocks, rblocks, a) ? 4 : 0; /* 0: a forced size the device cannot hold */
    }

    if (kernel == DEC_TC) {
        /* rows mode with many groups (B >= 64 rows of 8 KV heads) over short caches: 2 warps a block (H200
         * session 10, B = 64, one split: 512 keys 42.4 us vs 46.8 with 4 warps, 1,024 keys 72.9 vs 76.7; at
         * 4,096 keys 4 warps stay ahead, 256 vs 268) */
        if (variant < 0 && rows && groups >= 512 && keys <= 2048) W = 2;
        if (S == 0 && c->attn_splits > 0) S = c->attn_splits < TC_MAX_SPLIT ? c->attn_splits : TC_MAX_SPLIT;
        if (S == 0) S = tc_splits(c, groups, W, keys);
        a.nsplit = S;
        if (S > 1) {
            float *part = (float *)cuda_scratch(c, SCRATCH_ATTN, (size_t)(n * H * S * (hd + 2)) * sizeof(float));
            a.part_acc = part;
            a.part_ml = part + n * H * S * hd;
            a.cnt = (int *)cuda_scratch_zeroed(c, SCRATCH_ATTN_CNT, (size_t)groups * sizeof(int));
        }
        const dim3 grid((unsigned)S, (unsigned)hblocks, (unsigned)rblocks);
        const unsigned threads = 32u * (unsigned)W;
        if (k->dtype == DTYPE_F16) {
            if (hd == 128) cuda_launch_dep(c, attn_tc_kernel<__half, 128, false>, grid, dim3(threads), 0, a);
            else cuda_launch_dep(c, attn_tc_kernel<__half, 64, false>, grid, dim3(threads), 0, a);
        } else {
            if (hd == 128) cuda_launch_dep(c, attn_tc_kernel<__nv_bfloat16, 128, false>, grid, dim3(threads), 0, a);
            else cuda_launch_dep(c, attn_tc_kernel<__nv_bfloat16, 64, false>, grid, dim3(threads), 0, a);
        }
        KERNEL_CHECK();
        return 3;
    }

    if (kernel == DEC_CLUSTER) {
        cl_kernel_fn fn = cl_kernel(k->dtype, (int)hd, NS);
        int maxcl[5];
        cl_caps(c, fn, CL_THREADS, CL_RING_BYTES, maxcl);
        const int C = variant > 0 && variant != DEC_VAR_CLUSTER ? variant : cl_splits(c, maxcl, groups, NS);
        return cl_run(c, fn, maxcl, C, CL_THREADS, CL_RING_BYTES, hblocks, rblocks, a) ? 2 : 0; /* 0: as above */
    }

    /* split-K: about 3 blocks per SM in total (3 fit by registers), but no split shorter than a tile;
     * with device positions the key count is unknown here, so the capacity T sizes the grid and
     * splits beyond the actual keys exit at once */
    const int64_t tk = (int64_t)(DEC_THREADS / (hd / 8)) * DEC_KPT;
    int64_t nsplit = (3 * (int64_t)c->n_sm + hblocks * rblocks - 1) / (hblocks * rblocks);
    const int64_t cap = (keys + DEC_MIN_TILES * tk - 1) / (DEC_MIN_TILES * tk);
    if (nsplit > cap) nsplit = cap;
    if (nsplit > DEC_MAX_SPLIT) nsplit = DEC_MAX_SPLIT;
    if (nsplit < 1) nsplit = 1;
    a.nsplit = (int)nsplit;
    if (nsplit > 1) {
        float *part = (float *)cuda_scratch(c, SCRATCH_ATTN, (size_t)(n * H * nsplit * (hd + 2)) * sizeof(float));
        a.part_acc = part;
        a.part_ml = part + n * H * nsplit * hd;
        a.cnt = (int *)cuda_scratch_zeroed(c, SCRATCH_ATTN_CNT, (size_t)(hblocks * rblocks) * sizeof(int));
    }
    const dim3 grid((unsigned)nsplit, (unsigned)hblocks, (unsigned)rblocks);
#define DEC_LAUNCH(KV, HD_, NS_) cuda_launch_dep(c, attn_decode_kernel<KV, HD_, NS_>, grid, dim3(DEC_THREADS), 0, a)
#define DEC_NS(KV, HD_)                         \
    switch (NS) {                               \
    case 1: DEC_LAUNCH(KV, HD_, 1); break;      \
    case 2: DEC_LAUNCH(KV, HD_, 2); break;      \
    case 4: DEC_LAUNCH(KV, HD_, 4); break;      \
    default: DEC_LAUNCH(KV, HD_, 8); break;     \
    }
    if (k->dtype == DTYPE_F16) {
        if (hd == 128) DEC_NS(__half, 128) else DEC_NS(__half, 64)
    } else {
        if (hd == 128) DEC_NS(__nv_bfloat16, 128) else DEC_NS(__nv_bfloat16, 64)
    }
#undef DEC_NS
#undef DEC_LAUNCH
    KERNEL_CHECK();
    return 1;
}

/* (cuda_attention.cuh) */
int attn_decode(struct cuda_ctx *c, struct tensor *out, const struct tensor *q, const struct tensor *k,
                const struct tensor *v, const int32_t *pos, const attn_pages *pg, int64_t q_pos0, float scale,
                int flags)
{
    return attn_decode_run(c, out, q, k, v, pos, pg, q_pos0, scale, flags, -1) != 0;
}

/* Tests and `test_cuda_ops bench`: the decode kernels with the choice forced (variant as in
 * attn_decode_run), on any of the three call forms: pos (device positions, optional table tab [mb]),
 * rows (seq and n_keys given: tab [S, mb], one query row per sequence, causal), or neither (q_pos0).
 * Returns attn_decode_run's answer: 0 nothing launched, 1 split-K ran, 2 the cluster kernel ran, 3 the
 * tensor-core kernel ran. */
extern "C" int cuda_attention_decode_variant(struct tensor *out, const struct tensor *q, const struct tensor *k,
                                             const struct tensor *v, const struct tensor *pos, const struct tensor *tab,
                                             const struct tensor *seq, const struct tensor *n_keys, int64_t q_pos0,
                                             float scale, int flags, int variant)
{
    struct cuda_ctx *c = cuda_ctx_get(out->dev.ordinal);
    if (q->shape[0] == 0 || q->shape[1] == 0 || q->shape[2] == 0) return 0;
    attn_check(q, k);
    attn_pages pg = {NULL, 0, NULL, NULL, 0};
    if (seq) {
        CHECKF(tab && n_keys && tab->ndim == 2, "cuda_attention_decode_variant: rows mode needs tab [S, mb] and n_keys");
        pg = {(const int32_t *)tab->data, tab->shape[1], (const int32_t *)seq->data, (const int32_t *)n_keys->data,
              tab->shape[0]};
        flags |= ATTN_CAUSAL;
    } else if (tab) {
        pg = {(const int32_t *)tab->data, tab->shape[0], NULL, NULL, 0};
    }
    return attn_decode_run(c, out, q, k, v, pos ? (const int32_t *)pos->data : NULL, seq || tab ? &pg : NULL, q_pos0,
                           scale, flags, variant);
}

/* `test_cuda_ops bench`: maxcl[e] of the f16, hd 128, 4-slot cluster kernel (n = 1 decode of Llama-3) on
 * a device (cl_caps), or -1 everywhere when the device does not run it. */
extern "C" void cuda_attention_cluster_caps(int ordinal, int maxcl[5])
{
    struct cuda_ctx *c = cuda_ctx_get(ordinal);
    if (!cl_able(c)) {
        for (int e = 0; e < 5; e++) maxcl[e] = -1;
        return;
    }
    cl_caps(c, cl_kernel(DTYPE_F16, 128, 4), CL_THREADS, CL_RING_BYTES, maxcl);
}

/* tests and `test_cuda_ops bench`: whether the device and the code run the tensor-core kernel */
extern "C" int cuda_attention_tc_able(int ordinal) { return tc_able(cuda_ctx_get(ordinal)); }

/* ---- op_attention_rows: one query row per sequence, each over its own paged sequence ----
 * A decode kernel above in rows mode does the work (f16/bf16, hd 64 or 128): block (split, head
 * group, row) reads its row's key count and block table on the device, the GB query heads of a GQA
 * group share every K/V load, and the keys are cut into splits (flash-decoding) when B rows x head
 * groups leave SMs idle; fp32 accumulation throughout. The cluster kernel (sm_90): C splits per
 * (group, row), B = 1: 16, B = 16: 2, B >= 17: 1, each split's share computed on the device from the
 * row's key count. The split-K kernel: B = 1 up to ~50 splits on an H200, B = 64: 1, the grid sized
 * from the table capacity (the key counts are device values), splits past a row's keys exit at once,
 * the splits merged by the last block to arrive. Either way one launch serves any mix of lengths and a
 * graph of the step can hold it.
 * Other dtypes and head dims (f32 caches in tests) take the simple kernel below: block (h, i) = query
 * head h of row i, keys in tiles of 128 (one per thread), an online softmax, thread t < hd owning
 * output column t; K/V read once per query head, no split. */
#define ROWS_THREADS 128

__device__ __forceinline__ float rows_block_max(float v, float *red)
{
    v = warp_max(v);
    const int w = threadIdx.x / 32, l = threadIdx.x % 32;
    __syncthreads();
    if (l == 0) red[w] = v;
    __syncthreads();
    float r = red[0];
    for (int j = 1; j < ROWS_THREADS / 32; j++) r = fmaxf(r, red[j]);
    return r;
}

__device__ __forceinline__ float rows_block_sum(float v, float *red)
{
    v = warp_sum(v);
    const int w = threadIdx.x / 32, l = threadIdx.x % 32;
    __syncthreads();
    if (l == 0) red[w] = v;
    __syncthreads();
    float r = 0;
    for (int j = 0; j < ROWS_THREADS / 32; j++) r += red[j];
    return r;
}

template <typename KV>
__global__ void __launch_bounds__(ROWS_THREADS)
attn_rows_kernel(void *out, int odt, const void *q, int qdt, const KV *k, const KV *v, const int32_t *tabs,
                 const int32_t *seq, const int32_t *n_keys, int64_t S, int64_t mb, int H, int Hkv, int hd, float scale)
{
    __shared__ float qs[ATT_MAX_HD], ps[ROWS_THREADS], red[ROWS_THREADS / 32];
    const int h = blockIdx.x, i = blockIdx.y, t = threadIdx.x, kh = h / (H / Hkv);
    const int sq = seq[i], nk = n_keys[i];
    if (sq < 0 || sq >= S || nk < 1 || nk > mb * KV_BLOCK) {
        if (t == 0 && h == 0) printf("attention: row %d reads %d keys of sequence %d (%lld tables of %lld blocks)\n", i,
                                     nk, sq, (long long)S, (long long)mb);
        __trap();
    }
    const int32_t *tab = tabs + (int64_t)sq * mb;
    const int64_t qo = ((int64_t)i * H + h) * hd;
    for (int d = t; d < hd; d += ROWS_THREADS) qs[d] = ldf(q, qdt, qo + d);
    float m = -INFINITY, l = 0.0f, acc = 0.0f;
    for (int j0 = 0; j0 < nk; j0 += ROWS_THREADS) {
        const int j = j0 + t;
        float sc = -INFINITY;
        __syncthreads(); /* qs written; ps of the previous tile consumed */
        if (j < nk) {
            const KV *kr = k + (attn_row(tab, j) * Hkv + kh) * hd;
            float dot = 0.0f;
            for (int d = 0; d < hd; d++) dot = fmaf(qs[d], (float)kr[d], dot);
            sc = dot * scale;
        }
        const float mn = fmaxf(m, rows_block_max(sc, red));
        const float p = j < nk ? expf(sc - mn) : 0.0f;
        const float alpha = m == -INFINITY ? 0.0f : expf(m - mn);
        ps[t] = p;
        const float ls = rows_block_sum(p, red); /* its __syncthreads also publishes ps */
        l = l * alpha + ls;
        m = mn;
        if (t < hd) {
            acc *= alpha;
            const int cnt = nk - j0 < ROWS_THREADS ? nk - j0 : ROWS_THREADS;
            for (int jj = 0; jj < cnt; jj++)
                acc = fmaf(ps[jj], (float)v[(attn_row(tab, j0 + jj) * Hkv + kh) * hd + t], acc);
        }
    }
    if (t < hd) stf(out, odt, qo + t, acc / l);
}

extern "C" void cuda_attention_rows(struct tensor *out, const struct tensor *q, const struct tensor *k,
                                    const struct tensor *v, const struct tensor *tab, const struct tensor *seq,
                                    const struct tensor *n_keys, float scale)
{
    struct cuda_ctx *c = cuda_ctx_get(out->dev.ordinal);
    const int64_t B = q->shape[0], H = q->shape[1], hd = q->shape[2], Hkv = k->shape[1];
    const int64_t S = tab->shape[0], mb = tab->shape[1];
    if (B == 0 || H == 0 || hd == 0) return;
    attn_check(q, k);
    CHECKF(k->dtype == v->dtype, "cuda_attention_rows: k %s, v %s", dtype_name(k->dtype), dtype_name(v->dtype));
    CHECKF(B <= 65535 && mb * KV_BLOCK <= INT32_MAX, "cuda_attention_rows: %lld rows, tables of %lld blocks",
           (long long)B, (long long)mb);
    const attn_pages pg = {(const int32_t *)tab->data, mb, (const int32_t *)seq->data, (const int32_t *)n_keys->data, S};
    if (attn_decode(c, out, q, k, v, NULL, &pg, 0, scale, ATTN_CAUSAL)) return;
    const dim3 grid((unsigned)H, (unsigned)B);
#define ROWS_LAUNCH(KV)                                                                                       \
    attn_rows_kernel<KV><<<grid, ROWS_THREADS, 0, c->stream>>>(                                                \
        out->data, out->dtype, q->data, q->dtype, (const KV *)k->data, (const KV *)v->data, pg.tab, pg.seq,     \
        pg.nkeys, S, mb, (int)H, (int)Hkv, (int)hd, scale)
    switch (k->dtype) {
    case DTYPE_F16: ROWS_LAUNCH(__half); break;
    case DTYPE_BF16: ROWS_LAUNCH(__nv_bfloat16); break;
    case DTYPE_F32: ROWS_LAUNCH(float); break;
    default: CHECKF(0, "cuda_attention_rows: k/v dtype %s", dtype_name(k->dtype));
    }
#undef ROWS_LAUNCH
    KERNEL_CHECK();
}
