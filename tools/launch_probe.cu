// tools/launch_probe.cu (compile on the GPU machine: nvcc -O3 -arch=sm_90 -o /tmp/lp tools/launch_probe.cu): what a small kernel costs inside a CUDA graph on this card, by what it carries
// (static shared memory, printf, trap, the cross-block merge), alone and after a kernel without
// shared memory (a shared-memory carveout change between the two).
#include <cstdio>
#include <cuda_runtime.h>
#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e_)); return 1; } } while (0)

__global__ void k_big(const float4 *__restrict__ a, float *y, int n) { // a GEMV-like pass, no shared memory
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float4 v = i < n ? __ldcs(a + i) : make_float4(0, 0, 0, 0);
    float s = v.x + v.y + v.z + v.w;
    if (s == 12345.f) y[0] = s;
}
template <int MODE>
__global__ void __launch_bounds__(128) k_small(const float *q, float *out, int *cnt, int flag) {
    __shared__ float sm[MODE & 1 ? 4160 : 1];
    const int tid = threadIdx.x;
    float v = q[blockIdx.x * 128 + tid];
    if (MODE & 2) { if (flag < 0) printf("bad %d\n", flag); }
    if (MODE & 4) { if (flag < -1) __trap(); }
    if (MODE & 1) { sm[tid * 32 % 4160] = v; __syncthreads(); v += sm[(tid * 33 + 7) % 4160]; }
    out[blockIdx.x * 128 + tid] = v;
    if (MODE & 8) {
        __shared__ int last;
        __threadfence();
        __syncthreads();
        if (tid == 0) { int p = atomicAdd(cnt + blockIdx.x / 11, 1); last = p == 10; if (last) cnt[blockIdx.x / 11] = 0; }
        __syncthreads();
        if (last) { __threadfence(); float s = 0; for (int b = 0; b < 11; b++) s += __ldcg(out + (blockIdx.x / 11 * 11 + b) * 128 + tid); out[tid] = s; }
    }
}

template <int MODE> static int run(const char *name, float *q, float *out, int *cnt, float4 *big, float *y, int nbig, cudaStream_t st) {
    for (int withbig = 0; withbig < 2; withbig++) {
        cudaGraph_t g; cudaGraphExec_t ge;
        CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        for (int i = 0; i < 64; i++) {
            if (withbig) k_big<<<(nbig + 255) / 256, 256, 0, st>>>(big, y, nbig);
            k_small<MODE><<<88, 128, 0, st>>>(q, out, cnt, 1);
        }
        CK(cudaStreamEndCapture(st, &g));
        CK(cudaGraphInstantiate(&ge, g, 0));
        cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
        float best = 1e9;
        for (int r = 0; r < 20; r++) {
            cudaEventRecord(e0, st); cudaGraphLaunch(ge, st); cudaEventRecord(e1, st); CK(cudaEventSynchronize(e1));
            float ms; cudaEventElapsedTime(&ms, e0, e1); if (ms < best) best = ms;
        }
        printf("%-28s %s: %.2f us per pair\n", name, withbig ? "after k_big" : "alone      ", best * 1e3f / 64);
        cudaGraphExecDestroy(ge); cudaGraphDestroy(g);
    }
    return 0;
}
int main() {
    cudaStream_t st; cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
    float *q, *out, *y; int *cnt; float4 *big; const int nbig = 1 << 16; // 1 MiB pass
    CK(cudaMalloc(&q, 88 * 128 * 4)); CK(cudaMalloc(&out, 88 * 128 * 4)); CK(cudaMalloc(&cnt, 64 * 4)); CK(cudaMemset(cnt, 0, 256));
    CK(cudaMalloc(&big, nbig * 16)); CK(cudaMalloc(&y, 4)); cudaMemset(q, 0, 88 * 128 * 4); cudaMemset(big, 0, nbig * 16);
    run<0>("plain", q, out, cnt, big, y, nbig, st);
    run<1>("16.6 KB static smem", q, out, cnt, big, y, nbig, st);
    run<2>("printf (not taken)", q, out, cnt, big, y, nbig, st);
    run<4>("trap (not taken)", q, out, cnt, big, y, nbig, st);
    run<8>("fence + atomic + merge", q, out, cnt, big, y, nbig, st);
    run<15>("all of them", q, out, cnt, big, y, nbig, st);
    // k_big alone
    {
        cudaGraph_t g; cudaGraphExec_t ge;
        CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        for (int i = 0; i < 64; i++) k_big<<<(nbig + 255) / 256, 256, 0, st>>>(big, y, nbig);
        CK(cudaStreamEndCapture(st, &g)); CK(cudaGraphInstantiate(&ge, g, 0));
        cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1); float best = 1e9;
        for (int r = 0; r < 20; r++) { cudaEventRecord(e0, st); cudaGraphLaunch(ge, st); cudaEventRecord(e1, st); cudaEventSynchronize(e1); float ms; cudaEventElapsedTime(&ms, e0, e1); if (ms < best) best = ms; }
        printf("%-28s: %.2f us each\n", "k_big alone (1 MiB read)", best * 1e3f / 64);
    }
    return 0;
}
