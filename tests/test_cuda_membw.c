/* test_cuda_membw.c: op_read_sum on the GPU against its CPU twin, and the GPU read-bandwidth
 * measurement (membw.h) that `minicpmv bench --peak-gbs auto` prints.
 *  - test_read_sum: random bytes of awkward sizes (one 8-byte word, a 16-byte word plus the 8-byte
 *    tail, fewer words than one block, more than the grid covers in one step of its unrolled loop, a
 *    96 MiB buffer with a tail), a view 16 bytes into a buffer, and one word changed at the start,
 *    middle and end: the GPU sum must equal the CPU twin's exactly (integers: no tolerance);
 *  - test_measure_gpu: membw_measure on GPU 0 with the buffer bench uses (8 GiB when free), which
 *    checks every pass's sum against the pattern's closed form; prints GB/s and asks for a plausible
 *    figure (100 .. 20,000 GB/s; an H200 reads ~4.3-4.8 TB/s).
 * Without a GPU (CI) both are reported as skipped. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "membw.h"
#include "t.h"
#include "tensor.h"

#ifdef MINICPMV_CUDA

static uint64_t rng = 0x452821E638D01377ull;
static uint64_t next_u64(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static struct tensor bytes_on(struct device d, size_t n)
{
    struct err e = {{0}};
    struct tensor t = tensor_make(DTYPE_U8, d, NULL, 1, (int64_t)n);
    t.data = dev_alloc(d, n ? n : 16, &e);
    CHECKF(t.data, "%s", e.msg);
    return t;
}

static void check_case(const char *what, struct tensor *h, struct tensor *dv)
{
    op_copy(dv, h);
    const uint64_t want = op_read_sum(h), got = op_read_sum(dv);
    printf("  read_sum %-40s %s\n", what, got == want ? "ok" : "FAIL");
    T_ASSERTF(got == want, "%s: GPU %llu, CPU %llu", what, (unsigned long long)got, (unsigned long long)want);
}

static void test_read_sum(void)
{
    static const size_t sizes[] = {8, 16, 24, 4096 + 8, (size_t)1 << 20, ((size_t)96 << 20) + 8};
    for (size_t c = 0; c < sizeof sizes / sizeof sizes[0]; c++) {
        const size_t n = sizes[c];
        struct tensor h = bytes_on(device_cpu(), n), dv = bytes_on(device_cuda(0), n);
        for (size_t i = 0; i < n; i += 8) {
            uint64_t w = next_u64();
            memcpy((char *)h.data + i, &w, 8);
        }
        char what[64];
        snprintf(what, sizeof what, "%zu bytes", n);
        check_case(what, &h, &dv);
        const size_t at[3] = {0, n / 16 * 8, n - 8};
        for (int k = 0; k < 3; k++) {
            uint64_t w;
            memcpy(&w, (char *)h.data + at[k], 8);
            w ^= next_u64() | 1;
            memcpy((char *)h.data + at[k], &w, 8);
            snprintf(what, sizeof what, "%zu bytes, word at %zu changed", n, at[k]);
            check_case(what, &h, &dv);
        }
        /* a view 16 bytes in (both sides read the same bytes) */
        if (n >= 48) {
            struct tensor hv = tensor_rows_view(&h, 16, (int64_t)n - 32), dvv = tensor_rows_view(&dv, 16, (int64_t)n - 32);
            snprintf(what, sizeof what, "%zu bytes, view [16, n-16)", n);
            const uint64_t want = op_read_sum(&hv), got = op_read_sum(&dvv);
            printf("  read_sum %-40s %s\n", what, got == want ? "ok" : "FAIL");
            T_ASSERT(got == want);
        }
        dev_free(h.dev, h.data);
        dev_free(dv.dev, dv.data);
    }
}

static void test_measure_gpu(void)
{
    struct err e = {{0}};
    size_t bytes = 0;
    T_ASSERTF(!membw_default_bytes(device_cuda(0), &bytes, &e), "%s", e.msg);
    if (!bytes) return;
    struct membw m;
    T_ASSERTF(!membw_measure(&m, device_cuda(0), bytes, 5, &e), "%s", e.msg);
    printf("  GPU 0 read bandwidth: %.0f GB/s best, %.0f median, over %.2f GiB (pattern written in %.1f s)\n", m.gbs,
           m.gbs_median, (double)m.bytes / (1 << 30), m.fill_s);
    T_ASSERTF(m.gbs > 100 && m.gbs < 20000, "%g GB/s", m.gbs);
    T_ASSERT(m.best_s <= m.median_s);
}

int main(void)
{
    struct backend_info bi;
    backend_query(&bi);
    if (bi.n_gpus == 0) {
        T_SKIP(test_read_sum, "no CUDA device");
        T_SKIP(test_measure_gpu, "no CUDA device");
        return t_main_end("test_cuda_membw");
    }
    T_RUN(test_read_sum);
    T_RUN(test_measure_gpu);
    return t_main_end("test_cuda_membw");
}

#else /* built without CUDA */

int main(void)
{
    (void)t_cur_fail;
    T_SKIP(test_cuda_membw, "built without CUDA (make CUDA=1)");
    return t_main_end("test_cuda_membw");
}

#endif
