// tools/exp/kvprobe.cu (compile on the GPU machine: nvcc -O3 -arch=sm_90 -o /tmp/kvp tools/exp/kvprobe.cu): the read
// rate of the decode attention's K/V access pattern against the same bytes laid out head-major. A cache of R
// rows x 8 kv heads x 128 fp16 (2 KiB a row); grid = 8 heads x S splits of 4 warps; a warp reads 16-row steps
// of its head, dealt in turn, two steps (K and V alike) per iteration:
//   mode 0 (the cache as it is, [row][head][dim]): lane (g = lane / 4, t4) reads rows g, g + 8 of the step,
//          16-byte pieces t4, t4 + 4, t4 + 8, t4 + 12 of its head's 256 bytes (the K fragment pattern);
//   mode 1 (head-major, [head][row][dim]): the step's 4 KiB contiguous, lane reads 16 bytes at lane * 16 + 512 k.
#include <cstdio>
#include <cuda_runtime.h>
#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e_)); return 1; } } while (0)

template <int MODE>
__global__ void __launch_bounds__(128) probe(const uint4 *__restrict__ c, long rows, int S, unsigned *sink) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int split = blockIdx.x, h = blockIdx.y;
    const long nsteps = rows / 16, wstride = (long)S * 4;
    unsigned acc = 0;
    for (long st = split + (long)S * warp; st < nsteps; st += 2 * wstride) {
        uint4 v[2][8];
#pragma unroll
        for (int s2 = 0; s2 < 2; s2++) {
            const long step = st + s2 * wstride;
            const long r0 = (step < nsteps ? step : st) * 16;
#pragma unroll
            for (int k = 0; k < 8; k++) {
                long idx;
                if (MODE == 0) idx = ((r0 + g + 8 * (k >> 2)) * 8 + h) * 16 + t4 + 4 * (k & 3);
                else idx = ((long)h * rows + r0) * 16 + lane + 32 * k;
                v[s2][k] = __ldcs(c + idx);
            }
        }
#pragma unroll
        for (int s2 = 0; s2 < 2; s2++)
#pragma unroll
            for (int k = 0; k < 8; k++) acc ^= v[s2][k].x ^ v[s2][k].w;
    }
    if (acc == 0x12345678u) sink[0] = acc;
}

int main() {
    const long rows = 65536; // 128 MiB a cache
    const int NB = 8;        // caches rotated: 1 GiB, beyond the L2
    uint4 *c; unsigned *sink;
    CK(cudaMalloc(&c, (size_t)NB * rows * 2048));
    CK(cudaMalloc(&sink, 4));
    CK(cudaMemset(c, 1, (size_t)NB * rows * 2048));
    cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
    const int Ss[] = {8, 16, 33, 66};
    for (int mode = 0; mode < 2; mode++)
        for (int si = 0; si < 4; si++) {
            const int S = Ss[si];
            dim3 grid(S, 8);
            for (int w = 0; w < 3; w++) {
                if (mode == 0) probe<0><<<grid, 128>>>(c + (size_t)(w % NB) * rows * 128, rows, S, sink);
                else probe<1><<<grid, 128>>>(c + (size_t)(w % NB) * rows * 128, rows, S, sink);
            }
            CK(cudaEventRecord(e0));
            const int reps = 40;
            for (int i = 0; i < reps; i++) {
                if (mode == 0) probe<0><<<grid, 128>>>(c + (size_t)(i % NB) * rows * 128, rows, S, sink);
                else probe<1><<<grid, 128>>>(c + (size_t)(i % NB) * rows * 128, rows, S, sink);
            }
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            float ms; cudaEventElapsedTime(&ms, e0, e1);
            printf("mode %d (%s) S %2d: %.1f us per 128 MiB, %.0f GB/s\n", mode, mode ? "head-major" : "row-major, K pattern", S,
                   ms * 1e3 / reps, (double)rows * 2048 / (ms / reps * 1e-3) / 1e9);
        }
    return 0;
}
