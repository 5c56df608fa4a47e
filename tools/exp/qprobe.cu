// tools/exp/qprobe.cu (nvcc -O3 -arch=sm_90 -o qprobe tools/exp/qprobe.cu): the read rate of the quantized decode
// GEMV's (cuda_qgemv.cu, shape a8x2o4) access pattern on a gate|up-sized Q4 matrix (28,672 records of 2,048 code
// bytes + 128 scale bytes), loads only (an xor of the words, no dequantization), against other layouts of the
// same bytes. One block of 8 warps per 16-row tile, warp w takes steps w, w + 8, .. of the 32, two in flight:
//   mode 0  the kernel's pattern: lane (g, t) loads 16 bytes at 64 s + 16 t of rows g and g + 8
//   mode 1  mode 0 + the kernel's two 2-byte scale loads per step (rows g, g + 8)
//   mode 2  mode 1 + the kernel's x loads (4 x 16 bytes per lane per step, through L1, an 8 KiB vector)
//   mode 3  tile-major codes: a step's 16 rows x 64 bytes contiguous (1 KiB), lane reads 16 bytes at 16 lane
//           and 512 + 16 lane (same bytes per step as mode 0)
//   mode 4  mode 3 + its scales as a 64-byte run per step (lane < 16: 4 bytes) + mode 2's x loads
#include <cstdio>
#include <cuda_runtime.h>
#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e_)); return 1; } } while (0)

constexpr long R = 28672, K = 4096, CB = K / 2, SBY = K / 64 * 2, RB = CB + SBY;

template <int MODE>
__global__ void __launch_bounds__(256, 4) probe(const unsigned char *__restrict__ w, const uint4 *__restrict__ x, unsigned *sink) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const long tile = blockIdx.x;
    unsigned acc = 0;
    for (int s0 = warp; s0 < 32; s0 += 16) {
        uint4 a[2], b[2];
        unsigned short sa[2] = {0, 0}, sb[2] = {0, 0};
        uint4 xv[2][4];
#pragma unroll
        for (int u = 0; u < 2; u++) {
            const int s = s0 + 8 * u;
            if (MODE <= 2) {
                const unsigned char *ra = w + (tile * 16 + g) * RB, *rb = w + (tile * 16 + g + 8) * RB;
                a[u] = __ldcs(reinterpret_cast<const uint4 *>(ra + 64 * s + 16 * t));
                b[u] = __ldcs(reinterpret_cast<const uint4 *>(rb + 64 * s + 16 * t));
                if (MODE >= 1) {
                    sa[u] = *reinterpret_cast<const unsigned short *>(ra + CB + 2 * (2 * s + (t >> 1)));
                    sb[u] = *reinterpret_cast<const unsigned short *>(rb + CB + 2 * (2 * s + (t >> 1)));
                }
            } else {
                const unsigned char *tb = w + tile * 16 * RB; // the tile's 16 records as one run
                a[u] = __ldcs(reinterpret_cast<const uint4 *>(tb + 1024 * s + 16 * lane));
                b[u] = __ldcs(reinterpret_cast<const uint4 *>(tb + 1024 * s + 512 + 16 * lane));
                if (MODE == 4 && lane < 16) sa[u] = *reinterpret_cast<const unsigned short *>(tb + 16 * CB + 64 * s + 4 * lane);
            }
            if (MODE == 2 || MODE == 4)
#pragma unroll
                for (int v = 0; v < 4; v++) xv[u][v] = __ldg(x + (64 * s + 16 * t) / 2 / 8 * 2 + v);
        }
#pragma unroll
        for (int u = 0; u < 2; u++) {
            acc ^= a[u].x ^ a[u].w ^ b[u].y ^ b[u].z ^ sa[u] ^ sb[u];
            if (MODE == 2 || MODE == 4)
#pragma unroll
                for (int v = 0; v < 4; v++) acc += xv[u][v].x;
        }
    }
    if (acc == 0x12345678u) sink[0] = acc;
}

int main() {
    const int NB = 9;
    unsigned char *w; uint4 *x; unsigned *sink;
    CK(cudaMalloc(&w, (size_t)NB * R * RB));
    CK(cudaMalloc(&x, 8192));
    CK(cudaMalloc(&sink, 4));
    CK(cudaMemset(w, 1, (size_t)NB * R * RB));
    CK(cudaMemset(x, 1, 8192));
    cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
    void (*ks[5])(const unsigned char *, const uint4 *, unsigned *) = {probe<0>, probe<1>, probe<2>, probe<3>, probe<4>};
    for (int mode = 0; mode < 5; mode++) {
        for (int i = 0; i < 9; i++) ks[mode]<<<R / 16, 256>>>(w + (size_t)(i % NB) * R * RB, x, sink);
        CK(cudaEventRecord(e0));
        const int reps = 180;
        for (int i = 0; i < reps; i++) ks[mode]<<<R / 16, 256>>>(w + (size_t)(i % NB) * R * RB, x, sink);
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms; cudaEventElapsedTime(&ms, e0, e1);
        printf("qprobe mode %d: %.2f us per %.1f MB, %.0f GB/s\n", mode, ms * 1e3 / reps, R * RB * 1e-6,
               (double)R * RB / (ms / reps * 1e-3) / 1e9);
    }
    return 0;
}
