/* cuda_attention.cu: cuda_attention, out[n, H, hd] = softmax(q k^T * scale) v with GQA, causal
 * masking from q_pos0, and the Idefics2 eager rounding (ATTN_EAGER_F16); cuda_attention_pos, the
 * same with positions read on the device (graph replay), over a direct or a paged cache (a block
 * table: backend.h).
 *
 * Order of dispatch: the tensor-core flash kernel (cuda_flash.cu, many rows), then a decode kernel
 * (cuda_attention_decode.cu: n <= 8, f16/bf16 K/V, hd 64 or 128: one launch, K/V read once per GQA
 * group; on sm_90 the splits merge inside a thread-block cluster, before sm_90 through a last-block
 * combine), then the general kernel:
 *
 * The general kernel serves everything else (CUDA cores, fp32 throughout):
 *  - a block owns up to 8 "slots" = (query row, query head) pairs that share one kv head: GB heads
 *    of a GQA group times QB consecutive query rows, so each K/V tile read from memory is used by
 *    all of them (decode: the 4 heads of a group; vision: 8 query rows);
 *  - keys are processed in tiles of 32 (one lane per key in the softmax step): the tile of K and V
 *    is converted to fp32 in shared memory, scores go to shared memory, and an online softmax
 *    (running max m, running sum l, rescale factor alpha) updates fp32 accumulators that live in
 *    registers, each thread owning fixed (slot, column) pairs;
 *  - split-K (flash-decoding): when rows x head-blocks give too few blocks to fill the SMs (decode),
 *    the key range is cut into nsplit chunks; each block writes its partial (m, l, acc) and a
 *    combine kernel merges them, so even n = 1 keeps every SM busy.
 * Eager mode needs the global max and sum before a probability can be rounded, so it runs with one
 * split and two passes over the keys: pass 0 computes (m, l), pass 1 recomputes the rounded scores
 * and accumulates round(exp(s - m) / l) * v, exactly the order of cpu_attention.
 * Limits: hd <= 128 (LLM 128, vision 72, resampler 128), GQA group of any size (split into blocks of
 * at most 8 heads). A tensor-core (mma.sync) tiled prefill kernel is future work (docs/CUDA.md). */
#include "cuda/cuda_attention.cuh"

#define ATT_THREADS 128
#define ATT_WARPS (ATT_THREADS / 32)
#define ATT_KT 32 /* keys per tile: must equal the warp size */
#define ATT_MAX_SLOTS 8
#define ATT_PAIRS (ATT_MAX_SLOTS * ATT_MAX_HD / ATT_THREADS) /* accumulators per thread */
#define ATT_MAX_SPLIT 256

struct attn_args {
    void *out;
    const void *q;
    const void *k;
    const void *v;
    float *part_acc; /* [n, H, nsplit, hd] when nsplit > 1 */
    float *part_ml;  /* [n, H, nsplit, 2]: running max, running sum */
    const int32_t *pos; /* device positions [n] (then q_pos0, T and chunk are derived on the device) or NULL */
    const int32_t *tab; /* a paged cache's block table [T / KV_BLOCK] (key j in row attn_row(tab, j)) or NULL */
    int64_t q_pos0;
    int odt, qdt, at;  /* dtypes: out, q, and the activation dtype eager rounds to */
    int n, H, Hkv, hd, T;
    int G, GB, QB, NS; /* group size, heads per block, query rows per block, slots = GB * QB */
    int nsplit, chunk;
    int causal, eager, vec;
    float scale;
};

/* dynamic shared memory layout, in floats */
struct attn_smem {
    float *q, *k, *v, *s, *m, *l, *alpha, *inv;
    int *lim;
};

__device__ __forceinline__ attn_smem attn_carve(float *base, int NS, int hd)
{
    attn_smem p;
    p.q = base;
    p.k = p.q + NS * hd;
    p.v = p.k + ATT_KT * hd;
    p.s = p.v + ATT_KT * hd;
    p.m = p.s + NS * ATT_KT;
    p.l = p.m + NS;
    p.alpha = p.l + NS;
    p.inv = p.alpha + NS;
    p.lim = reinterpret_cast<int *>(p.inv + NS);
    return p;
}

static size_t attn_smem_bytes(int NS, int hd)
{
    return (size_t)(NS * hd + 2 * ATT_KT * hd + NS * ATT_KT + 4 * NS) * sizeof(float) + (size_t)NS * sizeof(int);
}

/* rows [j0, j0 + kt) of one kv head of k (and v) into shared fp32 tiles [kt][hd] */
template <typename KV>
__device__ __forceinline__ void attn_load_tile(float *dst, const KV *src, const attn_args &a, int kh, int j0, int kt)
{
    const int hd = a.hd;
    if (a.vec) {
        constexpr int VN = 16 / (int)sizeof(KV);
        const int nv = hd / VN;
        for (int idx = threadIdx.x; idx < kt * nv; idx += ATT_THREADS) {
            const int jj = idx / nv, cv = idx - jj * nv;
            const int64_t off = (attn_row(a.tab, j0 + jj) * a.Hkv + kh) * hd + cv * VN;
            load_vec<KV, VN>(src + off, dst + jj * hd + cv * VN);
        }
    } else {
        for (int idx = threadIdx.x; idx < kt * hd; idx += ATT_THREADS) {
            const int jj = idx / hd, c = idx - jj * hd;
            dst[idx] = ldf(src, dtype_of<KV>::value, (attn_row(a.tab, j0 + jj) * a.Hkv + kh) * hd + c);
        }
    }
}

template <typename KV> __global__ void __launch_bounds__(ATT_THREADS) attn_kernel(const attn_args a)
{
    pdl_trigger(); /* a PDL-launched successor (GEMV) may start loading its weights */
    extern __shared__ float smem_raw[];
    const int NS = a.NS, hd = a.hd, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const attn_smem sm = attn_carve(smem_raw, NS, hd);
    const int split = blockIdx.x, h0 = blockIdx.y * a.GB, kh = h0 / a.G, i0 = blockIdx.z * a.QB;
    const KV *kp = (const KV *)a.k, *vp = (const KV *)a.v;
    int64_t q_pos0 = a.q_pos0;
    int T = a.T, chunk = a.chunk;
    if (a.pos) { /* graph replay: positions and key count from the device, the split length from them */
        q_pos0 = a.pos[0];
        const int64_t nk = (int64_t)a.pos[a.n - 1] + 1;
        T = (int)(nk < a.T ? (nk > 0 ? nk : 0) : a.T);
        chunk = (T + a.nsplit - 1) / a.nsplit;
        chunk = (chunk + ATT_KT - 1) / ATT_KT * ATT_KT;
    }

    /* slot sl = qi * GB + g: query row i0 + qi, head h0 + g */
    for (int idx = tid; idx < NS * hd; idx += ATT_THREADS) {
        const int sl = idx / hd, c = idx - sl * hd, i = i0 + sl / a.GB, h = h0 + sl % a.GB;
        sm.q[idx] = i < a.n ? ldf(a.q, a.qdt, ((int64_t)i * a.H + h) * hd + c) : 0.0f;
    }
    if (tid < NS) {
        const int i = i0 + tid / a.GB;
        int64_t lim = 0;
        if (i < a.n) lim = a.causal ? q_pos0 + i + 1 : T;
        sm.lim[tid] = (int)(lim < T ? lim : T);
        sm.m[tid] = -INFINITY;
        sm.l[tid] = 0.0f;
        sm.alpha[tid] = 1.0f;
        sm.inv[tid] = 0.0f;
    }
    /* keys this block looks at: its split's chunk, cut at the largest limit of its slots */
    int64_t blim = T;
    if (a.causal) {
        const int ilast = (i0 + a.QB < a.n ? i0 + a.QB : a.n) - 1;
        blim = q_pos0 + ilast + 1 < T ? q_pos0 + ilast + 1 : T;
    }
    const int k0 = split * chunk;
    const int k1 = (int)((int64_t)k0 + chunk < blim ? (int64_t)k0 + chunk : blim);

    float acc[ATT_PAIRS];
#pragma unroll
    for (int r = 0; r < ATT_PAIRS; r++) acc[r] = 0.0f;

    const int npass = a.eager ? 2 : 1;
    for (int pass = 0; pass < npass; pass++) {
        const bool stats_only = a.eager && pass == 0;
        const bool eager_acc = a.eager && pass == 1;
        for (int j0 = k0; j0 < k1; j0 += ATT_KT) {
            const int kt = k1 - j0 < ATT_KT ? k1 - j0 : ATT_KT;
            __syncthreads(); /* the previous tile's k, v, s are no longer read; also orders the init */
            attn_load_tile<KV>(sm.k, kp, a, kh, j0, kt);
            if (!stats_only) attn_load_tile<KV>(sm.v, vp, a, kh, j0, kt);
            __syncthreads();
            /* scores: one warp per key, lanes across hd, all slots */
            for (int jj = warp; jj < kt; jj += ATT_WARPS) {
                float kr[ATT_MAX_HD / 32];
#pragma unroll
                for (int qd = 0; qd < ATT_MAX_HD / 32; qd++) {
                    const int c = lane + 32 * qd;
                    kr[qd] = c < hd ? sm.k[jj * hd + c] : 0.0f;
                }
                const int j = j0 + jj;
                for (int sl = 0; sl < NS; sl++) {
                    float d = 0.0f;
#pragma unroll
                    for (int qd = 0; qd < ATT_MAX_HD / 32; qd++) {
                        const int c = lane + 32 * qd;
                        if (c < hd) d = fmaf(sm.q[sl * hd + c], kr[qd], d);
                    }
                    d = warp_sum(d);
                    if (lane == 0) {
                        float sc;
                        if (j >= sm.lim[sl]) sc = -INFINITY;
                        else if (a.eager) sc = rndf(__fmul_rn(rndf(d, a.at), a.scale), a.at);
                        else sc = d * a.scale;
                        sm.s[sl * ATT_KT + jj] = sc;
                    }
                }
            }
            __syncthreads();
            /* softmax step: one warp per slot, one lane per key of the tile */
            for (int sl = warp; sl < NS; sl += ATT_WARPS) {
                const float sc = lane < kt ? sm.s[sl * ATT_KT + lane] : -INFINITY;
                float p, alpha = 1.0f;
                if (eager_acc) {
                    /* cpu: p = round(exp(s - max) * (1 / sum)) with the global max and sum of pass 0 */
                    p = sc == -INFINITY ? 0.0f : rndf(__fmul_rn(expf(sc - sm.m[sl]), sm.inv[sl]), a.at);
                } else {
                    const float mold = sm.m[sl];
                    const float mnew = fmaxf(mold, warp_max(sc));
                    p = sc == -INFINITY ? 0.0f : expf(sc - mnew);
                    const float ps = warp_sum(p);
                    alpha = mold == -INFINITY ? 0.0f : expf(mold - mnew);
                    __syncwarp(); /* every lane has read sm.m[sl] before lane 0 writes it */
                    if (lane == 0) {
                        sm.m[sl] = mnew;
                        sm.l[sl] = sm.l[sl] * alpha + ps;
                    }
                }
                sm.s[sl * ATT_KT + lane] = p;
                if (lane == 0) sm.alpha[sl] = alpha;
            }
            __syncthreads();
            if (!stats_only) {
#pragma unroll
                for (int r = 0; r < ATT_PAIRS; r++) {
                    const int pi = tid + r * ATT_THREADS;
                    if (pi < NS * hd) {
                        const int sl = pi / hd, c = pi - sl * hd;
                        const float *ps = sm.s + sl * ATT_KT;
                        float x = acc[r] * sm.alpha[sl];
                        for (int jj = 0; jj < kt; jj++) x = fmaf(ps[jj], sm.v[jj * hd + c], x);
                        acc[r] = x;
                    }
                }
            }
        }
        if (stats_only) {
            __syncthreads();
            if (tid < NS) sm.inv[tid] = sm.l[tid] > 0.0f ? (float)(1.0 / (double)sm.l[tid]) : 0.0f;
            __syncthreads();
        }
    }
    __syncthreads(); /* final m, l visible to every thread */

#pragma unroll
    for (int r = 0; r < ATT_PAIRS; r++) {
        const int pi = tid + r * ATT_THREADS;
        if (pi < NS * hd) {
            const int sl = pi / hd, c = pi - sl * hd, i = i0 + sl / a.GB, h = h0 + sl % a.GB;
            if (i < a.n) {
                const int64_t ih = (int64_t)i * a.H + h;
                if (a.nsplit == 1) {
                    const float l = sm.l[sl];
                    const float val = a.eager ? acc[r] : (l > 0.0f ? acc[r] / l : 0.0f);
                    stf(a.out, a.odt, ih * hd + c, val);
                } else {
                    a.part_acc[(ih * a.nsplit + split) * hd + c] = acc[r];
                }
            }
        }
    }
    if (a.nsplit > 1 && tid < NS) {
        const int i = i0 + tid / a.GB, h = h0 + tid % a.GB;
        if (i < a.n) {
            const int64_t ih = (int64_t)i * a.H + h;
            a.part_ml[(ih * a.nsplit + split) * 2 + 0] = sm.m[tid];
            a.part_ml[(ih * a.nsplit + split) * 2 + 1] = sm.l[tid];
        }
    }
}

/* merges the nsplit partials of one (row, head): out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M) */
__global__ void __launch_bounds__(ATT_THREADS)
attn_combine_kernel(void *out, int odt, const float *part_acc, const float *part_ml, int nsplit, int hd)
{
    __shared__ float w[ATT_MAX_SPLIT];
    const int64_t ih = blockIdx.x;
    const float *ml = part_ml + ih * nsplit * 2;
    float M = -INFINITY;
    for (int s = 0; s < nsplit; s++) M = fmaxf(M, ml[2 * s]);
    for (int s = threadIdx.x; s < nsplit; s += blockDim.x) w[s] = ml[2 * s] == -INFINITY ? 0.0f : expf(ml[2 * s] - M);
    __syncthreads();
    float L = 0.0f;
    for (int s = 0; s < nsplit; s++) L += ml[2 * s + 1] * w[s];
    const float *pa = part_acc + ih * nsplit * hd;
    for (int c = threadIdx.x; c < hd; c += blockDim.x) {
        float x = 0.0f;
        for (int s = 0; s < nsplit; s++) x = fmaf(pa[(int64_t)s * hd + c], w[s], x);
        stf(out, odt, ih * hd + c, L > 0.0f ? x / L : 0.0f);
    }
}

extern "C" int cuda_flash_attention(struct tensor *out, const struct tensor *q, const struct tensor *k,
                                    const struct tensor *v, int64_t q_pos0, float scale, int flags);

/* the general kernel (any n, hd <= 128, eager, mixed K/V dtypes); pos: device positions or NULL;
 * tab: a paged sequence's block table of mb entries or NULL */
static void attn_general(struct cuda_ctx *c, struct tensor *out, const struct tensor *q, const struct tensor *k,
                         const struct tensor *v, const int32_t *pos, const int32_t *tab, int64_t mb, int64_t q_pos0,
                         float scale, int flags)
{
    const int64_t n = q->shape[0], H = q->shape[1], hd = q->shape[2], Hkv = k->shape[1];
    const int64_t T = tab ? mb * KV_BLOCK : k->shape[0];
    const int causal = (flags & ATTN_CAUSAL) != 0, eager = (flags & ATTN_EAGER_F16) != 0;
    /* k and v with different dtypes (never in the model): both to f32, exactly */
    const void *kd = k->data, *vd = v->data;
    enum dtype kvt = k->dtype;
    if (k->dtype != v->dtype) {
        const int64_t m = tensor_numel(k);
        float *buf = (float *)cuda_scratch(c, SCRATCH_ATTN_KV, (size_t)(2 * m) * sizeof(float));
        struct tensor kf = *k, vf = *v;
        kf.dtype = vf.dtype = DTYPE_F32;
        kf.data = buf;
        vf.data = buf + m;
        cuda_convert(&kf, k);
        cuda_convert(&vf, v);
        kd = kf.data;
        vd = vf.data;
        kvt = DTYPE_F32;
    }

    attn_args a;
    memset(&a, 0, sizeof a);
    a.out = out->data;
    a.q = q->data;
    a.k = kd;
    a.v = vd;
    a.q_pos0 = q_pos0;
    a.pos = pos;
    a.tab = tab;
    a.odt = out->dtype;
    a.qdt = q->dtype;
    a.at = q->dtype;
    a.n = (int)n;
    a.H = (int)H;
    a.Hkv = (int)Hkv;
    a.hd = (int)hd;
    a.T = (int)T;
    a.G = (int)(H / Hkv);
    a.GB = 1;
    for (int d = ATT_MAX_SLOTS; d >= 1; d--)
        if (a.G % d == 0) {
            a.GB = d;
            break;
        }
    a.QB = ATT_MAX_SLOTS / a.GB;
    if (a.QB > n) a.QB = (int)n;
    a.NS = a.GB * a.QB;
    a.causal = causal;
    a.eager = eager;
    a.scale = scale;
    const int64_t vn = 16 / (int64_t)dtype_size(kvt);
    a.vec = hd % vn == 0 && ((uintptr_t)kd & 15) == 0 && ((uintptr_t)vd & 15) == 0;

    /* split-K only when the (row, head) blocks alone would leave SMs idle */
    /* with device positions the key count is unknown here: the capacity sizes the grid */
    int64_t t_eff = pos ? T : causal ? (q_pos0 + n < T ? q_pos0 + n : T) : T;
    const int64_t hblocks = H / a.GB, qblocks = (n + a.QB - 1) / a.QB;
    CHECKF(qblocks <= 65535, "cuda_attention: %lld query rows", (long long)n);
    int64_t nsplit = 1;
    if (!eager && t_eff > 0) {
        const int64_t want = (4 * (int64_t)c->n_sm + hblocks * qblocks - 1) / (hblocks * qblocks);
        int64_t cap = (t_eff + 63) / 64;
        if (cap > ATT_MAX_SPLIT) cap = ATT_MAX_SPLIT;
        nsplit = want < cap ? want : cap;
        if (nsplit < 1) nsplit = 1;
    }
    int64_t chunk = t_eff > 0 ? (t_eff + nsplit - 1) / nsplit : ATT_KT;
    chunk = (chunk + ATT_KT - 1) / ATT_KT * ATT_KT;
    nsplit = t_eff > 0 ? (t_eff + chunk - 1) / chunk : 1;
    a.nsplit = (int)nsplit;
    a.chunk = (int)chunk;
    if (nsplit > 1) {
        float *part = (float *)cuda_scratch(c, SCRATCH_ATTN, (size_t)(n * H * nsplit * (hd + 2)) * sizeof(float));
        a.part_acc = part;
        a.part_ml = part + n * H * nsplit * hd;
    }

    const dim3 grid((unsigned)nsplit, (unsigned)hblocks, (unsigned)qblocks);
    const size_t smem = attn_smem_bytes(a.NS, a.hd); /* <= 38 KiB: under the default 48 KiB */
    switch (kvt) {
    case DTYPE_F16: attn_kernel<__half><<<grid, ATT_THREADS, smem, c->stream>>>(a); break;
    case DTYPE_BF16: attn_kernel<__nv_bfloat16><<<grid, ATT_THREADS, smem, c->stream>>>(a); break;
    case DTYPE_F32: attn_kernel<float><<<grid, ATT_THREADS, smem, c->stream>>>(a); break;
    default: CHECKF(0, "cuda_attention: k/v dtype %s", dtype_name(kvt));
    }
    KERNEL_CHECK();
    if (nsplit > 1) {
        attn_combine_kernel<<<(unsigned)(n * H), ATT_THREADS, 0, c->stream>>>(out->data, out->dtype, a.part_acc,
                                                                               a.part_ml, (int)nsplit, (int)hd);
        KERNEL_CHECK();
    }
}

extern "C" void cuda_attention(struct tensor *out, const struct tensor *q, const struct tensor *k,
                               const struct tensor *v, int64_t q_pos0, float scale, int flags)
{
    struct cuda_ctx *c = cuda_ctx_get(out->dev.ordinal);
    const int64_t n = q->shape[0], H = q->shape[1], hd = q->shape[2];
    if (n == 0 || H == 0 || hd == 0) return;
    attn_check(q, k);
    /* tensor-core flash attention for many query rows (prefill, vision, resampler); see cuda_flash.cu */
    if (cuda_flash_attention(out, q, k, v, q_pos0, scale, flags)) return;
    if (attn_decode(c, out, q, k, v, NULL, NULL, q_pos0, scale, flags)) return;
    attn_general(c, out, q, k, v, NULL, NULL, 0, q_pos0, scale, flags);
}

extern "C" void cuda_attention_pos(struct tensor *out, const struct tensor *q, const struct tensor *k,
                                   const struct tensor *v, const struct tensor *pos, const struct tensor *tab,
                                   float scale, int flags)
{
    struct cuda_ctx *c = cuda_ctx_get(out->dev.ordinal);
    const int64_t n = q->shape[0], H = q->shape[1], hd = q->shape[2];
    if (n == 0 || H == 0 || hd == 0) return;
    attn_check(q, k);
    const int32_t *p = (const int32_t *)pos->data;
    attn_pages pg = {tab ? (const int32_t *)tab->data : NULL, tab ? tab->shape[0] : 0, NULL, NULL, 0};
    CHECKF(!tab || pg.mb * KV_BLOCK <= INT32_MAX, "cuda_attention_pos: a table of %lld blocks", (long long)pg.mb);
    if (attn_decode(c, out, q, k, v, p, tab ? &pg : NULL, 0, scale, flags)) return;
    attn_general(c, out, q, k, v, p, pg.tab, pg.mb, 0, scale, flags);
}

/* The general kernel alone (the pre-decode-kernel path), for `test_cuda_ops bench` before/after. */
extern "C" void cuda_attention_general(struct tensor *out, const struct tensor *q, const struct tensor *k,
                                       const struct tensor *v, int64_t q_pos0, float scale, int flags)
{
    struct cuda_ctx *c = cuda_ctx_get(out->dev.ordinal);
    if (q->shape[0] == 0 || q->shape[1] == 0 || q->shape[2] == 0) return;
    attn_check(q, k);
    attn_general(c, out, q, k, v, NULL, NULL, 0, q_pos0, scale, flags);
}
