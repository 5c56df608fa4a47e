/* test_membw.c: op_read_sum's CPU twin and the read-bandwidth measurement (membw.h) on the CPU.
 *  - the sum of a buffer's bytes as little-endian 64-bit words against a serial loop written here, on
 *    sizes at the twin's edges (one word, around its 4-word steps, past the OpenMP threshold), at a
 *    16-byte-aligned offset into a buffer, and on random bytes;
 *  - changing any one word (first, middle, last) changes the sum by exactly that word's change: every
 *    word is read, none twice (a pass that read too little cannot give the checked sum);
 *  - the pattern's closed form (membw_pattern_sum) against a serial sum of the pattern words, the
 *    2^64 wrap-around included, and membw_pattern_fill against the formula word by word;
 *  - membw_measure on a 64 MiB CPU buffer: a plausible GB/s (0.05 .. 5000; no CPU reads 5 TB/s), the
 *    best pass no slower than the median, every field filled; and bad arguments refused.
 * The GPU twin is compared with this one in test_cuda_membw.c. */
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "membw.h"
#include "t.h"

static uint64_t rng = 0x243F6A8885A308D3ull;
static uint64_t next_u64(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* the definition, serially: bytes as little-endian 64-bit words, summed modulo 2^64 */
static uint64_t ref_sum(const unsigned char *p, size_t n)
{
    uint64_t s = 0;
    for (size_t i = 0; i < n; i += 8) {
        uint64_t w = 0;
        for (int b = 7; b >= 0; b--) w = w << 8 | p[i + (size_t)b];
        s += w;
    }
    return s;
}

static struct tensor host_bytes(size_t n)
{
    struct err e;
    struct tensor t = tensor_make(DTYPE_U8, device_cpu(), NULL, 1, (int64_t)n);
    t.data = dev_alloc(t.dev, n ? n : 16, &e);
    CHECK(t.data);
    return t;
}

static void test_read_sum_sizes(void)
{
    static const size_t sizes[] = {8, 16, 24, 32, 40, 56, 64, 4096 - 8, 4096, 65536 * 8 - 8, 65536 * 8 + 8,
                                   65536 * 8 + 24, (size_t)3 << 20, ((size_t)3 << 20) + 8};
    for (size_t c = 0; c < sizeof sizes / sizeof sizes[0]; c++) {
        const size_t n = sizes[c];
        struct tensor t = host_bytes(n);
        unsigned char *p = t.data;
        for (size_t i = 0; i < n; i += 8) {
            uint64_t w = next_u64();
            memcpy(p + i, &w, 8);
        }
        const uint64_t want = ref_sum(p, n), got = op_read_sum(&t);
        T_ASSERTF(got == want, "%zu bytes: %llu, want %llu", n, (unsigned long long)got, (unsigned long long)want);
        /* one word changed anywhere changes the sum by exactly its change */
        const size_t at[3] = {0, n / 16 * 8, n - 8};
        for (int k = 0; k < 3; k++) {
            uint64_t w, d = next_u64() | 1;
            memcpy(&w, p + at[k], 8);
            w += d;
            memcpy(p + at[k], &w, 8);
            const uint64_t got2 = op_read_sum(&t);
            T_ASSERTF(got2 == want + d, "%zu bytes, word at byte %zu changed by %llu: sum moved by %llu", n, at[k],
                      (unsigned long long)d, (unsigned long long)(got2 - want));
            w -= d;
            memcpy(p + at[k], &w, 8);
        }
        dev_free(t.dev, t.data);
    }
    /* a view 16 bytes into a buffer (aligned as the op asks) reads its own bytes only */
    struct tensor t = host_bytes(1 << 16);
    for (size_t i = 0; i < (1 << 16); i++) ((unsigned char *)t.data)[i] = (unsigned char)(i * 131 + 7);
    struct tensor v = tensor_rows_view(&t, 16, (1 << 16) - 48);
    T_ASSERT(op_read_sum(&v) == ref_sum((unsigned char *)t.data + 16, (1 << 16) - 48));
    dev_free(t.dev, t.data);
    /* an empty tensor sums to 0 */
    struct tensor z = host_bytes(0);
    T_ASSERT(op_read_sum(&z) == 0);
    dev_free(z.dev, z.data);
}

static void test_pattern(void)
{
    /* closed form vs the serial sum of the words, odd and even n */
    uint64_t s = 0;
    for (uint64_t n = 0; n <= 100000; n++) {
        if (n <= 20 || n % 997 == 0 || n == 100000)
            T_ASSERTF(membw_pattern_sum(n) == s, "n=%llu", (unsigned long long)n);
        s += MEMBW_K * (n + 1);
    }
    /* large n (an 8 GiB buffer is 2^30 words; 2^33 + 1 overflows n(n+1) in 64 bits): the exact 128-bit value */
    static const uint64_t big[] = {(uint64_t)1 << 30, ((uint64_t)1 << 30) + 1, ((uint64_t)1 << 33) + 1,
                                   ((uint64_t)1 << 40) + 12345, 0xFFFFFFFFull};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
        const unsigned __int128 tri = (unsigned __int128)big[i] * (big[i] + 1) / 2;
        T_ASSERTF(membw_pattern_sum(big[i]) == (uint64_t)tri * MEMBW_K, "n=%llu", (unsigned long long)big[i]);
    }
    /* the fill writes word first + j as the formula says */
    uint64_t *w = malloc(300000 * sizeof *w);
    CHECK(w);
    membw_pattern_fill(w, 1000, 300000);
    int bad = 0;
    for (uint64_t j = 0; j < 300000; j++) bad += w[j] != MEMBW_K * (1000 + j + 1);
    T_EQ_INT(bad, 0);
    free(w);
}

static void test_measure_cpu(void)
{
    struct membw m;
    struct err e = {{0}};
    const size_t bytes = (size_t)64 << 20;
    T_EQ_INT(membw_measure(&m, device_cpu(), bytes, 3, &e), 0);
    T_ASSERT(device_eq(m.dev, device_cpu()) && m.bytes == bytes && m.passes == 3);
    T_ASSERTF(m.gbs > 0.05 && m.gbs < 5000, "%g GB/s", m.gbs);
    T_ASSERT(m.best_s > 0 && m.best_s <= m.median_s && m.gbs >= m.gbs_median);
    T_NEAR(m.gbs, (double)bytes / m.best_s / 1e9, 1e-9 * m.gbs);
    T_ASSERT(m.fill_s > 0);
    fprintf(stderr, "  cpu: %.2f GB/s (median %.2f) over 64 MiB, pattern written in %.2f s\n", m.gbs, m.gbs_median,
            m.fill_s);
    size_t def = 0;
    T_EQ_INT(membw_default_bytes(device_cpu(), &def, &e), 0);
    T_ASSERTF(def >= ((size_t)64 << 20) && def <= ((size_t)1 << 30) && def % ((size_t)64 << 20) == 0, "%zu", def);
    /* refused: not a multiple of 16, zero, passes out of range */
    T_EQ_INT(membw_measure(&m, device_cpu(), 1000, 3, &e), -1);
    T_CONTAINS(e.msg, "multiple of 16");
    T_EQ_INT(membw_measure(&m, device_cpu(), 0, 3, &e), -1);
    T_EQ_INT(membw_measure(&m, device_cpu(), 4096, 0, &e), -1);
    T_CONTAINS(e.msg, "passes");
}

int main(void)
{
    T_RUN(test_read_sum_sizes);
    T_RUN(test_pattern);
    T_RUN(test_measure_cpu);
    return t_main_end("test_membw");
}
