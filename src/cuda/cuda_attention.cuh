/* cuda_attention.cuh: what the two attention files share. cuda_attention.cu owns the general kernel
 * and the dispatch of op_attention / op_attention_pos; cuda_attention_decode.cu owns the decode kernels
 * (few query rows, K/V streamed once, the keys in splits merged in a cluster on sm_90 or by the last
 * block before it) and op_attention_rows (those kernels in their rows mode).
 * Paged caches (backend.h): key j of a sequence is in cache row attn_row(tab, j). */
#ifndef MINICPMV_CUDA_ATTENTION_CUH
#define MINICPMV_CUDA_ATTENTION_CUH

#include "cuda/cuda_common.cuh"

#define ATT_MAX_HD 128

/* The cache row of key j: j itself, or through a paged sequence's block table (backend.h). */
__device__ __forceinline__ int64_t attn_row(const int32_t *tab, int64_t j)
{
    return tab ? (int64_t)tab[j / KV_BLOCK] * KV_BLOCK + j % KV_BLOCK : j;
}

/* A paged cache as the host passes it: one block table (tab, mb entries), or, for op_attention_rows,
 * the tables of several sequences ([S, mb]) with each query row's sequence and key count. */
struct attn_pages {
    const int32_t *tab;
    int64_t mb;
    const int32_t *seq, *nkeys; /* [n] (rows mode) or NULL */
    int64_t S;                  /* rows mode: tables in tab */
};

static inline void attn_check(const struct tensor *q, const struct tensor *k)
{
    const int64_t n = q->shape[0], H = q->shape[1], hd = q->shape[2], T = k->shape[0];
    CHECKF(hd <= ATT_MAX_HD, "cuda_attention: head dim %lld > %d", (long long)hd, ATT_MAX_HD);
    CHECKF(T <= INT32_MAX && n <= INT32_MAX && H <= 65535, "cuda_attention: n %lld, H %lld, T %lld too large",
           (long long)n, (long long)H, (long long)T);
}

/* Runs a decode kernel (the cluster kernel where the device and the code are sm_90+, else split-K)
 * when the call fits it (f16/bf16 K and V of one dtype, hd 64 or 128, 16-byte aligned, not eager; at
 * most 8 query rows, or any number in rows mode: pg->nkeys); 0 otherwise (nothing done). pos: device
 * positions or NULL; pg: a paged cache or NULL. */
int attn_decode(struct cuda_ctx *c, struct tensor *out, const struct tensor *q, const struct tensor *k,
                const struct tensor *v, const int32_t *pos, const attn_pages *pg, int64_t q_pos0, float scale,
                int flags);

#endif
