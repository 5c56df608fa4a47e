/* membw.h: a device's read bandwidth, measured the way the decode figures are judged against it:
 * op_read_sum over a buffer much larger than any cache (a GPU: 8 GiB), every byte read once per
 * pass, the best of several timed passes after an untimed one, GB/s = bytes / seconds / 1e9 (the
 * definition of a torch .sum() over 8 GiB of fp16 read once). The buffer holds a known pattern and
 * every pass's sum is checked against its closed form, so a pass that read too little (or a kernel
 * the compiler dropped) is an error, never a fast figure. Used by `minicpmv bench --peak-gbs auto`
 * (docs/BENCH.md). Owns no kernel: backend.h's ops only. */
#ifndef MINICPMV_MEMBW_H
#define MINICPMV_MEMBW_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "tensor.h"

/* The pattern: 64-bit word i of the buffer (i from 0) holds MEMBW_K * (i + 1), modulo 2^64. */
#define MEMBW_K 0x9E3779B97F4A7C15ull

struct membw {
    struct device dev;
    size_t bytes;      /* read per pass */
    int passes;        /* timed passes (one untimed pass ran first) */
    double best_s;     /* the fastest pass, wall clock around op_read_sum */
    double median_s;
    double gbs;        /* bytes / best_s / 1e9: the figure to compare decode with */
    double gbs_median;
    double fill_s;     /* writing the pattern (not part of the figure) */
};

/* The buffer membw_measure reads on d when not told: a GPU 8 GiB, or what fits in its free memory
 * less 1 GiB, rounded down to 64 MiB (an error under 1 GiB); the CPU 1 GiB, or a quarter of the
 * available memory if that is less (at least 64 MiB). */
int membw_default_bytes(struct device d, size_t *bytes, struct err *e);
/* Allocates `bytes` (a multiple of 16) on d, writes the pattern, runs one untimed and `passes` timed
 * op_read_sum passes (each checked), frees the buffer. */
int membw_measure(struct membw *m, struct device d, size_t bytes, int passes, struct err *e);
/* sum over i < n of MEMBW_K * (i + 1), modulo 2^64 (closed form: K * n(n+1)/2) */
uint64_t membw_pattern_sum(uint64_t n);
/* w[j] = the pattern word first + j, for j < n */
void membw_pattern_fill(uint64_t *w, uint64_t first, uint64_t n);

#endif
