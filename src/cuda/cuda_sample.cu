/* cuda_sample.cu: op_sample_dev, the sampler inside the replayed decode graphs. One block of 1024
 * threads per row reads the row's logits (in L2: the lm_head wrote them just before) and writes the
 * picked token into ids[row]; parameters, draw counter and generated-token flags come from the
 * row's state (layout: sampler.h; the state row from sel[row], read on the device), so the launch
 * has no per-request argument. Rows are independent (one block each, distinct state rows).
 * The specification is sampler_pick (sampler.c) through cpu_sample_dev; the result is the same
 * token (docs/CUDA.md, "Sampling on the device"):
 *  - x_j = logit_j, penalised for flagged ids with the same single float op (__fmul_rn/__fdiv_rn);
 *    w_j = x_j / t with __fdiv_rn; a temperature that is not > 0, or so small that max_j x_j / t
 *    overflows (to +-inf), is the t -> 0 limit: the argmax, one draw consumed (as sampler_pick);
 *  - order-preserving uint32 keys (-0.0 mapped to +0.0 first, so key order == float order);
 *  - the exact k-th largest w, every w >= it kept, sorted by (w desc, index asc): the host's set and
 *    order, whatever way the k-th value is found;
 *  - e_i = exp((double)w_i - max) in parallel, then thread 0 runs the host's sequential double
 *    loops (sum, top-p cut from the tail, sum again, u = uniform * sum, the scan), op for op.
 * Finding the k-th largest. Fast path (two reads of the logits): each thread keeps the top 2 keys
 * of x among its strided elements; those 2048 keys are distinct elements, so their k-th largest L
 * is <= the k-th largest x (k <= 2048). w = x/t is non-decreasing in x, so every token with
 * w >= the k-th largest w has x >= x*, the smallest float with x* / t >= L / t (a few nextafter steps
 * down from L). The survivors x >= x* (typically ~k of them) are compacted into shared memory,
 * their w computed and sorted; the k-th entry is the k-th largest w, and the candidates are the
 * sorted prefix >= it. Slow path (more than 2048 survivors, top-k > 2048 or off, extreme
 * temperatures): a 4-pass radix select (8-bit digits) of the k-th largest w key over the whole
 * vocabulary, then the candidates are gathered; more than SAMPLE_DEV_MAX_CAND declines. */
#include <limits.h>

#include "cuda/cuda_common.cuh"

extern "C" {
#include "sampler.h"
}

#define SAMPLE_THREADS 1024
#define NCAND SAMPLE_DEV_MAX_CAND /* = 2 * SAMPLE_THREADS: the top-2 slots fill the sort buffer */
#define FULL_MASK 0xffffffffu

static_assert(NCAND == 2 * SAMPLE_THREADS, "the top-2 slots of the fast path fill the candidate buffer");

/* order-preserving key: a < b (floats, -0.0 == +0.0) <=> key(a) < key(b) (unsigned). 0 is no
 * float's key except a NaN with every bit set: the kernel uses it as "empty". */
__device__ __forceinline__ uint32_t fkey(float x)
{
    uint32_t b = __float_as_uint(x);
    if (b == 0x80000000u) b = 0;
    return b ^ ((uint32_t)((int32_t)b >> 31) | 0x80000000u);
}

__device__ __forceinline__ float key_float(uint32_t k)
{
    return __uint_as_float(k & 0x80000000u ? k ^ 0x80000000u : ~k);
}

/* x_j after the repetition penalty (sampler_apply_penalty's float op). flags is written by this
 * kernel (the fed token), so it is read with plain loads, not through the read-only path. */
__device__ __forceinline__ float pen_x(float v, const uint32_t *flags, int j, float rp, bool pen)
{
    if (pen && (flags[j >> 5] >> (j & 31) & 1u)) v = v < 0.0f ? __fmul_rn(v, rp) : __fdiv_rn(v, rp);
    return v;
}

/* (key desc, index asc) over n (a power of two) entries of k/ix in shared memory; the caller has
 * synchronised after writing them; returns synchronised. */
__device__ void bitonic_sort(uint32_t *k, int32_t *ix, int n)
{
    for (int size = 2; size <= n; size <<= 1)
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = threadIdx.x; i < n; i += blockDim.x) {
                const int p = i ^ stride;
                if (p <= i) continue;
                const uint32_t ki = k[i], kp = k[p];
                const int32_t ii = ix[i], ip = ix[p];
                const bool p_first = kp > ki || (kp == ki && ip < ii);
                if ((i & size) == 0 ? p_first : !p_first) {
                    k[i] = kp, k[p] = ki;
                    ix[i] = ip, ix[p] = ii;
                }
            }
            __syncthreads();
        }
}

static __device__ __forceinline__ int next_pow2(int n)
{
    int p = 1;
    while (p < n) p <<= 1;
    return p;
}

/* Whether the largest penalised logit (key mk) over t overflows to +-inf: the t -> 0 limit, where
 * sampling is the argmax (sampler_pick's test, the same division). */
__device__ __forceinline__ bool overflows(uint32_t mk, float t) { return isinf(__fdiv_rn(key_float(mk), t)); }

/* ids[0] = argmax of the penalised logits, first index of the maximum (sampler.c argmax); every
 * thread of the block calls it. draw: also advance the draw counter (a sampled request at the
 * t -> 0 limit consumes its draw, as the host does). */
__device__ void pick_argmax(const float *__restrict__ x, const uint32_t *flags, int V, float rp, bool pen, int32_t *ids,
                            int32_t *st, bool draw, float *red_v, int *red_i)
{
    const int tid = threadIdx.x, lane = tid & 31;
    float bv = -INFINITY;
    int bi = INT_MAX;
    for (int j = tid; j < V; j += SAMPLE_THREADS) {
        const float v = pen_x(x[j], flags, j, rp, pen);
        if (v > bv || (v == bv && j < bi)) bv = v, bi = j;
    }
    for (int off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(FULL_MASK, bv, off);
        const int oi = __shfl_xor_sync(FULL_MASK, bi, off);
        if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
    }
    if (lane == 0) red_v[tid >> 5] = bv, red_i[tid >> 5] = bi;
    __syncthreads();
    if (tid == 0) {
        for (int w = 1; w < SAMPLE_THREADS / 32; w++)
            if (red_v[w] > bv || (red_v[w] == bv && red_i[w] < bi)) bv = red_v[w], bi = red_i[w];
        ids[0] = bi < V ? bi : 0; /* all NaN: 0, like the host */
        st[SAMPLE_ST_STATUS] = 0;
        if (draw) {
            const uint64_t d = ((uint64_t)(uint32_t)st[SAMPLE_ST_DRAWS_HI] << 32 | (uint32_t)st[SAMPLE_ST_DRAWS_LO]) + 1;
            st[SAMPLE_ST_DRAWS_LO] = (int32_t)(uint32_t)d;
            st[SAMPLE_ST_DRAWS_HI] = (int32_t)(uint32_t)(d >> 32);
        }
    }
}

__global__ void __launch_bounds__(SAMPLE_THREADS) sample_kernel(const float *__restrict__ x, int32_t *ids, int32_t *st,
                                                               const int32_t *sel, int V, int S, int words)
{
    __shared__ uint32_t sk[NCAND];  /* keys: top-2 slots, then survivors / candidates */
    __shared__ int32_t si[NCAND];   /* their token ids */
    __shared__ double se[NCAND];    /* exp((double)w_i - max) of the sorted candidates */
    __shared__ unsigned hist[256];
    __shared__ float red_v[SAMPLE_THREADS / 32];
    __shared__ int red_i[SAMPLE_THREADS / 32];
    __shared__ int s_cnt, s_n;
    __shared__ uint32_t s_key, s_max;
    __shared__ double s_sum;

    pdl_trigger();
    /* this block's row: its logits, its id, its state row */
    const int row = blockIdx.x, srow = sel ? sel[row] : row;
    if (srow < 0 || srow >= S) { /* a bad selection (the host checks it on the CPU twin): no pick */
        if (threadIdx.x == 0) ids[row] = -1;
        return;
    }
    x += (size_t)row * V;
    ids += row;
    st += (size_t)srow * words;
    const int tid = threadIdx.x, lane = tid & 31;
    uint32_t *flags = (uint32_t *)(st + SAMPLE_ST_HEADER);
    const bool greedy = st[SAMPLE_ST_GREEDY] != 0;
    const float temp = __int_as_float(st[SAMPLE_ST_TEMPERATURE]);
    const float t = temp;
    const int top_k = st[SAMPLE_ST_TOP_K];
    const float top_p = __int_as_float(st[SAMPLE_ST_TOP_P]);
    const float rp = __int_as_float(st[SAMPLE_ST_PENALTY]);
    const bool pen = rp != 1.0f;
    if (tid == 0) {
        const int32_t fed = ids[0];
        if (fed >= 0 && fed < V) flags[fed >> 5] |= 1u << (fed & 31);
        s_cnt = 0;
        s_max = 0;
    }
    __syncthreads();

    /* greedy; or the t -> 0 limit of sampling (sampler_pick): a temperature that is not > 0 */
    if (greedy || !(temp > 0.0f)) {
        pick_argmax(x, flags, V, rp, pen, ids, st, !greedy, red_v, red_i);
        return;
    }

    const int k_eff = top_k > 0 && top_k < V ? top_k : V;
    int fast = k_eff <= NCAND;
    if (fast) {
        /* pass 1: per thread the top 2 keys of x (0 = empty); four loads in flight per thread */
        uint32_t t1 = 0, t2 = 0;
        for (int base = 0; base < V; base += 4 * SAMPLE_THREADS) {
            float v[4];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const int j = base + u * SAMPLE_THREADS + tid;
                v[u] = j < V ? x[j] : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const int j = base + u * SAMPLE_THREADS + tid;
                if (j < V) {
                    const uint32_t k = fkey(pen_x(v[u], flags, j, rp, pen));
                    t2 = max(t2, min(t1, k));
                    t1 = max(t1, k);
                }
            }
        }
        /* the largest penalised x (its key), for the overflow test below */
        uint32_t m = t1;
        for (int off = 16; off > 0; off >>= 1) m = max(m, __shfl_xor_sync(FULL_MASK, m, off));
        if (lane == 0) atomicMax(&s_max, m);
        /* L = the k-th largest of the 2048 slot keys, bit by bit from the top: the largest L with
         * k slots >= L (block-wide counts, no shared memory; every thread gets the same L) */
        uint32_t L = 0;
        for (int bit = 31; bit >= 0; bit--) {
            const uint32_t c = L | 1u << bit;
            if (__syncthreads_count(t1 >= c) + __syncthreads_count(t2 >= c) >= k_eff) L = c;
        }
        /* (the __syncthreads_count above ordered the atomicMax before this read) */
        if (overflows(s_max, t)) {
            pick_argmax(x, flags, V, rp, pen, ids, st, true, red_v, red_i);
            return;
        }
        if (tid == 0) {
            /* L <= the k-th largest x; survivors: x >= x* (smallest x with x/t >= L/t) */
            uint32_t thr = L;
            const float lx = key_float(L);
            if (L != 0 && t != 1.0f && isfinite(lx)) {
                const float wl = __fdiv_rn(lx, t);
                float xs = lx;
                int s = 0;
                for (; s < 64; s++) {
                    const float y = nextafterf(xs, -INFINITY);
                    if (!(__fdiv_rn(y, t) >= wl)) break;
                    xs = y;
                }
                thr = s < 64 ? fkey(xs) : 0; /* a huge temperature: no bound, every token survives */
            }
            s_key = thr;
        }
        __syncthreads();
        const uint32_t thr = s_key;
        /* pass 2: compact the survivors' ids (warp ballot, one shared atomic per warp) */
        for (int base = 0; base < V; base += 4 * SAMPLE_THREADS) {
            float v[4];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const int j = base + u * SAMPLE_THREADS + tid;
                v[u] = j < V ? x[j] : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const int j = base + u * SAMPLE_THREADS + tid;
                const bool keep = j < V && fkey(pen_x(v[u], flags, j, rp, pen)) >= thr;
                const unsigned b = __ballot_sync(FULL_MASK, keep);
                if (b) {
                    int pos = 0;
                    if (lane == 0) pos = atomicAdd(&s_cnt, __popc(b));
                    pos = __shfl_sync(FULL_MASK, pos, 0) + __popc(b & ((1u << lane) - 1u));
                    if (keep && pos < NCAND) si[pos] = j;
                }
            }
        }
        __syncthreads();
        fast = s_cnt <= NCAND;
    }

    int cnt;
    uint32_t kth = 0;
    if (fast) {
        cnt = s_cnt; /* >= k_eff: every token with w >= the k-th largest w survived */
        const int np = next_pow2(cnt);
        for (int i = tid; i < np; i += SAMPLE_THREADS) {
            if (i < cnt) {
                const int j = si[i];
                sk[i] = fkey(__fdiv_rn(pen_x(x[j], flags, j, rp, pen), t));
            } else {
                sk[i] = 0, si[i] = INT_MAX;
            }
        }
        __syncthreads();
        bitonic_sort(sk, si, np);
        kth = sk[k_eff - 1];
    } else {
        if (k_eff > NCAND) { /* no pass 1 ran: the largest penalised x for the overflow test */
            uint32_t m = 0;
            for (int j = tid; j < V; j += SAMPLE_THREADS) m = max(m, fkey(pen_x(x[j], flags, j, rp, pen)));
            for (int off = 16; off > 0; off >>= 1) m = max(m, __shfl_xor_sync(FULL_MASK, m, off));
            if (lane == 0) atomicMax(&s_max, m);
            __syncthreads();
            if (overflows(s_max, t)) {
                pick_argmax(x, flags, V, rp, pen, ids, st, true, red_v, red_i);
                return;
            }
        }
        /* radix select of the k-th largest w key over the whole vocabulary, 8 bits per pass */
        uint32_t prefix = 0, pmask = 0;
        int krem = k_eff;
        for (int shift = 24; shift >= 0; shift -= 8) {
            for (int i = tid; i < 256; i += SAMPLE_THREADS) hist[i] = 0;
            __syncthreads();
            for (int base = 0; base < V; base += SAMPLE_THREADS) {
                const int j = base + tid;
                uint32_t k = 0;
                if (j < V) k = fkey(__fdiv_rn(pen_x(x[j], flags, j, rp, pen), t));
                const bool m = j < V && (k & pmask) == prefix;
                const unsigned bin = m ? (k >> shift) & 255u : 256u;
                /* lanes with the same digit add once (the top digits of logits are few: without
                 * this, same-address shared atomics serialise) */
                const unsigned peers = __match_any_sync(FULL_MASK, bin);
                if (m && lane == __ffs(peers) - 1) atomicAdd(&hist[bin], (unsigned)__popc(peers));
            }
            __syncthreads();
            if (tid == 0) {
                int b = 255;
                unsigned above = 0;
                for (; b > 0; b--) {
                    if (above + hist[b] >= (unsigned)krem) break;
                    above += hist[b];
                }
                s_key = prefix | (uint32_t)b << shift;
                s_n = krem - (int)above;
            }
            __syncthreads();
            prefix = s_key;
            krem = s_n;
            pmask |= 255u << shift;
            __syncthreads(); /* s_key / s_n are rewritten by the next pass */
        }
        kth = prefix;
        /* gather the candidates w >= kth */
        if (tid == 0) s_cnt = 0;
        __syncthreads();
        for (int base = 0; base < V; base += SAMPLE_THREADS) {
            const int j = base + tid;
            uint32_t k = 0;
            if (j < V) k = fkey(__fdiv_rn(pen_x(x[j], flags, j, rp, pen), t));
            const bool keep = j < V && k >= kth;
            const unsigned b = __ballot_sync(FULL_MASK, keep);
            if (b) {
                int pos = 0;
                if (lane == 0) pos = atomicAdd(&s_cnt, __popc(b));
                pos = __shfl_sync(FULL_MASK, pos, 0) + __popc(b & ((1u << lane) - 1u));
                if (keep && pos < NCAND) sk[pos] = k, si[pos] = j;
            }
        }
        __syncthreads();
        cnt = s_cnt;
        if (cnt > NCAND) { /* declined: the host picks with this draw */
            if (tid == 0) {
                ids[0] = -1;
                st[SAMPLE_ST_STATUS] = 1;
                const uint64_t d = ((uint64_t)(uint32_t)st[SAMPLE_ST_DRAWS_HI] << 32 | (uint32_t)st[SAMPLE_ST_DRAWS_LO]) + 1;
                st[SAMPLE_ST_DRAWS_LO] = (int32_t)(uint32_t)d;
                st[SAMPLE_ST_DRAWS_HI] = (int32_t)(uint32_t)(d >> 32);
            }
            return;
        }
        const int np = next_pow2(cnt);
        for (int i = cnt + tid; i < np; i += SAMPLE_THREADS) sk[i] = 0, si[i] = INT_MAX;
        __syncthreads();
        bitonic_sort(sk, si, np);
    }

    /* n = the candidates: the sorted prefix with key >= kth (sk[0] >= kth always) */
    for (int i = tid; i < cnt; i += SAMPLE_THREADS)
        if (sk[i] >= kth && (i + 1 == cnt || sk[i + 1] < kth)) s_n = i + 1;
    __syncthreads();
    const int n0 = s_n;
    const double mx = (double)key_float(sk[0]);
    for (int i = tid; i < n0; i += SAMPLE_THREADS) se[i] = exp(__dsub_rn((double)key_float(sk[i]), mx));
    __syncthreads();
    /* sampler_pick's loops, in its order, sequential in thread 0 (explicit _rn operations: no FMA
     * contraction); only the divisions of the top-p loop, which do not depend on each other, are
     * done in parallel first (the same correctly rounded quotients) */
    if (tid == 0) {
        double sum = 0;
        for (int i = 0; i < n0; i++) sum = __dadd_rn(sum, se[i]);
        s_sum = sum;
        s_n = n0;
    }
    __syncthreads();
    if (top_p < 1.0f) {
        const double sum = s_sum;
        for (int i = tid; i < n0; i += SAMPLE_THREADS) se[i] = __ddiv_rn(se[i], sum);
        __syncthreads();
        if (tid == 0) {
            const double lim = __dsub_rn(1.0, (double)top_p);
            double cum = 0;
            int keep_from = n0 - 1;
            for (int i = n0 - 1; i >= 1; i--) {
                cum = __dadd_rn(cum, se[i]);
                if (cum <= lim) keep_from = i - 1;
                else break;
            }
            s_n = keep_from + 1;
        }
        __syncthreads();
        /* the exponentials again (the same values) for the kept prefix */
        for (int i = tid; i < s_n; i += SAMPLE_THREADS) se[i] = exp(__dsub_rn((double)key_float(sk[i]), mx));
        __syncthreads();
    }
    if (tid == 0) {
        const int n = s_n;
        double sum = s_sum;
        if (top_p < 1.0f) {
            sum = 0;
            for (int i = 0; i < n; i++) sum = __dadd_rn(sum, se[i]);
        }
        const uint64_t draw = (uint64_t)(uint32_t)st[SAMPLE_ST_DRAWS_HI] << 32 | (uint32_t)st[SAMPLE_ST_DRAWS_LO];
        const uint64_t seed = (uint64_t)(uint32_t)st[SAMPLE_ST_SEED_HI] << 32 | (uint32_t)st[SAMPLE_ST_SEED_LO];
        const double u = __dmul_rn(sampler_uniform_at(seed, draw), sum);
        double acc = 0;
        int32_t tok = si[n - 1];
        for (int i = 0; i < n; i++) {
            acc = __dadd_rn(acc, se[i]);
            if (u < acc) { tok = si[i]; break; }
        }
        ids[0] = tok;
        st[SAMPLE_ST_STATUS] = 0;
        st[SAMPLE_ST_DRAWS_LO] = (int32_t)(uint32_t)(draw + 1);
        st[SAMPLE_ST_DRAWS_HI] = (int32_t)(uint32_t)((draw + 1) >> 32);
    }
}

extern "C" void cuda_sample_dev(const struct tensor *x, struct tensor *ids, struct tensor *state, const struct tensor *sel)
{
    struct cuda_ctx *c = cuda_ctx_get(x->dev.ordinal);
    const int64_t n = x->shape[0], V = x->shape[1], words = sample_state_words(V);
    const int64_t S = tensor_numel(state) / words;
    CHECKF(V > 0 && V <= INT32_MAX - 4 * SAMPLE_THREADS, "op_sample_dev: vocabulary of %lld", (long long)V);
    CHECKF(n >= 1 && n <= INT32_MAX && S <= INT32_MAX && (int64_t)S * words <= INT32_MAX,
           "op_sample_dev: %lld rows, %lld state rows", (long long)n, (long long)S);
    sample_kernel<<<(unsigned)n, SAMPLE_THREADS, 0, c->stream>>>((const float *)x->data, (int32_t *)ids->data,
                                                                (int32_t *)state->data,
                                                                sel ? (const int32_t *)sel->data : NULL, (int)V,
                                                                (int)S, (int)words);
    KERNEL_CHECK();
}
