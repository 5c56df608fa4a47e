/* cuda_attention_decode.cu: the decode attention kernel (few query rows, K/V streamed once, split-K
 * with a last-block combine, direct or paged caches) and op_attention_rows, the batched decode step's
 * attention, which is that kernel in its rows mode (one query row per sequence, each over its own paged
 * sequence), with a simple fallback kernel for other dtypes and head dims. cuda_attention.cu dispatches
 * op_attention and op_attention_pos here first (cuda_attention.cuh). */
#include "cuda/cuda_attention.cuh"

/* ---- decode: few query rows, K/V streamed once ----
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
    float scale;
};

template <typename KV, int HD, int NS>
__global__ void __launch_bounds__(DEC_THREADS) attn_decode_kernel(const attn_dec_args a)
{
    constexpr int LPK = HD / 8, SEGS = DEC_THREADS / LPK, TK = SEGS * DEC_KPT;
    __shared__ __align__(16) float sq[NS * HD];
    __shared__ float red_m[SEGS * NS], red_l[SEGS * NS];
    __shared__ __align__(16) float red_acc[SEGS * NS * HD]; /* reused for the split weights at the end */
    __shared__ int s_lim[NS], s_last;
    const int tid = threadIdx.x, seg = tid / LPK, ln = tid % LPK;
    const int split = blockIdx.x, h0 = blockIdx.y * a.GB, kh = h0 / a.G, i0 = blockIdx.z * a.QB;

    /* key count and query positions */
    int64_t qp0 = a.q_pos0, nk;
    const int32_t *tab = a.tab;
    if (a.nkeys) { /* rows mode: this block's one query row is the last token of its own sequence */
        nk = a.nkeys[i0];
        if (a.seq[i0] < 0 || a.seq[i0] >= a.S || nk < 1 || nk > a.T) {
            if (tid == 0 && blockIdx.x == 0 && blockIdx.y == 0)
                printf("attention: row %d reads %lld keys of sequence %d (%lld tables of %lld blocks)\n", i0,
                       (long long)nk, a.seq[i0], (long long)a.S, (long long)a.mb);
            __trap();
        }
        qp0 = nk - 1 - i0; /* query row i0 + qi sits at qp0 + i0 + qi below */
        tab = a.tab + (int64_t)a.seq[i0] * a.mb;
    } else if (a.pos) {
        qp0 = a.pos[0];
        nk = (int64_t)a.pos[a.n - 1] + 1;
    } else {
        nk = a.causal ? a.q_pos0 + a.n : a.T;
    }
    if (nk > a.T) nk = a.T;
    if (nk < 0) nk = 0;
    const int nrows = (i0 + a.QB < a.n ? i0 + a.QB : a.n) - i0;
    int64_t blim = nk;
    if (a.causal) {
        const int64_t l = qp0 + i0 + nrows;
        blim = l < nk ? l : nk;
    }
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
    if (k0 < k1) load(k0, kb, vb); /* the first tile is in flight while q is staged */
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

/* (cuda_attention.cuh) */
int attn_decode(struct cuda_ctx *c, struct tensor *out, const struct tensor *q, const struct tensor *k,
                const struct tensor *v, const int32_t *pos, const attn_pages *pg, int64_t q_pos0, float scale,
                int flags)
{
    const int rows = pg && pg->nkeys;
    const int64_t n = q->shape[0], H = q->shape[1], hd = q->shape[2], Hkv = k->shape[1];
    const int64_t T = pg ? pg->mb * KV_BLOCK : k->shape[0];
    if ((n > 8 && !rows) || (flags & ATTN_EAGER_F16) || k->dtype != v->dtype || (hd != 64 && hd != 128)) return 0;
    if (k->dtype != DTYPE_F16 && k->dtype != DTYPE_BF16) return 0;
    if (((uintptr_t)k->data & 15) || ((uintptr_t)v->data & 15) || T > INT32_MAX || H > 65535) return 0;
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
    const int64_t hblocks = H / a.GB, rblocks = (n + a.QB - 1) / a.QB;
    /* splits: about 3 blocks per SM in total (3 fit by registers), but no split shorter than a tile;
     * with device positions the key count is unknown here, so the capacity T sizes the grid and
     * splits beyond the actual keys exit at once */
    const int64_t tk = (int64_t)(DEC_THREADS / (hd / 8)) * DEC_KPT;
    const int64_t keys = pos || rows ? T : ((flags & ATTN_CAUSAL) ? (q_pos0 + n < T ? q_pos0 + n : T) : T);
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
#define DEC_LAUNCH(KV, HD_, NS_) attn_decode_kernel<KV, HD_, NS_><<<grid, DEC_THREADS, 0, c->stream>>>(a)
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

/* ---- op_attention_rows: one query row per sequence, each over its own paged sequence ----
 * The decode kernel above in rows mode does the work (f16/bf16, hd 64 or 128): block (split, head
 * group, row) reads its row's key count and block table on the device, the GB query heads of a GQA
 * group share every K/V load, and the keys are cut into splits (flash-decoding) when B rows x head
 * groups leave SMs idle (B = 1: ~50 splits on an H200, B = 64: 1), the splits merged by the last
 * block to arrive; fp32 accumulation throughout. The grid is sized from the table capacity (the key
 * counts are device values), splits past a row's keys exit at once, so one launch serves any mix of
 * lengths and a graph of the step can hold it.
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
