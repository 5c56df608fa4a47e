/* cuda_readsum.cu: op_read_sum, the read-and-reduce kernel that measures a GPU's read bandwidth
 * (membw.c times it over 8 GiB). It is built to be bound by DRAM alone: 16-byte loads, coalesced
 * (consecutive threads read consecutive 16-byte words), four independent loads in flight per
 * thread, a full-occupancy grid (threads per SM / block size blocks per SM), integer adds that cost
 * nothing next to the loads, a warp-shuffle and shared-memory reduction per block, then one 64-bit
 * atomic add per block into a zeroed scratch word. Loads are streaming (__ldcs: evict first), since
 * every byte is read once. The result goes back to the host, so the call returns when the pass is
 * done and the caller's wall clock covers exactly one read of the tensor (plus a launch, an 8-byte
 * memset and an 8-byte copy). */
#include "cuda/cuda_common.cuh"

#define READ_SUM_THREADS 256
#define READ_SUM_UNROLL 4

/* the two little-endian 64-bit words of a 16-byte load */
__device__ __forceinline__ unsigned long long u4_sum(uint4 u)
{
    return (((unsigned long long)u.y << 32) | u.x) + (((unsigned long long)u.w << 32) | u.z);
}

/* n16 16-byte words at p, then (tail != NULL) one more 8-byte word */
__global__ void __launch_bounds__(READ_SUM_THREADS)
read_sum_kernel(const uint4 *__restrict__ p, int64_t n16, const unsigned long long *__restrict__ tail,
                unsigned long long *out)
{
    unsigned long long s = 0;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    for (; i + (READ_SUM_UNROLL - 1) * stride < n16; i += READ_SUM_UNROLL * stride) {
        uint4 v[READ_SUM_UNROLL];
#pragma unroll
        for (int u = 0; u < READ_SUM_UNROLL; u++) v[u] = __ldcs(p + i + u * stride);
#pragma unroll
        for (int u = 0; u < READ_SUM_UNROLL; u++) s += u4_sum(v[u]);
    }
    for (; i < n16; i += stride) s += u4_sum(__ldcs(p + i));
    if (tail && blockIdx.x == 0 && threadIdx.x == 0) s += *tail;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    __shared__ unsigned long long ws[READ_SUM_THREADS / 32];
    if ((threadIdx.x & 31) == 0) ws[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
        s = threadIdx.x < READ_SUM_THREADS / 32 ? ws[threadIdx.x] : 0ull;
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
        if (threadIdx.x == 0) atomicAdd(out, s);
    }
}

extern "C" uint64_t cuda_read_sum(const struct tensor *x)
{
    struct cuda_ctx *c = cuda_ctx_get(x->dev.ordinal);
    cuda_check_not_capturing(c, "op_read_sum (it returns to the host)");
    const size_t nb = tensor_nbytes(x);
    if (nb == 0) return 0;
    const int64_t n16 = (int64_t)(nb / 16);
    const unsigned long long *tail = nb % 16 ? (const unsigned long long *)((const char *)x->data + nb - 8) : NULL;
    int per_sm = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, read_sum_kernel, READ_SUM_THREADS, 0));
    int64_t blocks = (n16 + READ_SUM_THREADS - 1) / READ_SUM_THREADS, cap = (int64_t)c->n_sm * (per_sm > 0 ? per_sm : 1);
    if (blocks > cap) blocks = cap;
    if (blocks < 1) blocks = 1;
    unsigned long long *d = (unsigned long long *)cuda_scratch(c, SCRATCH_SUM, sizeof *d);
    CUDA_CHECK(cudaMemsetAsync(d, 0, sizeof *d, c->stream));
    read_sum_kernel<<<(unsigned)blocks, READ_SUM_THREADS, 0, c->stream>>>((const uint4 *)x->data, n16, tail, d);
    KERNEL_CHECK();
    unsigned long long s = 0;
    CUDA_CHECK(cudaMemcpyAsync(&s, d, sizeof s, cudaMemcpyDeviceToHost, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    return (uint64_t)s;
}
