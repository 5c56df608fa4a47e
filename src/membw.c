/* membw.c: membw.h. The pattern reaches a GPU buffer through op_copy from a host chunk (no fill
 * kernel: nothing here but backend.h's ops), so writing 8 GiB costs a few seconds of PCIe before
 * the timed passes; it is reported apart (fill_s). */
#include "membw.h"

#include <stdlib.h>
#include <string.h>

#include "backend.h"

#define MEMBW_GPU_BYTES ((size_t)8 << 30)
#define MEMBW_CPU_BYTES ((size_t)1 << 30)
#define MEMBW_CHUNK ((size_t)64 << 20) /* host chunk of the GPU fill */
#define MEMBW_MAX_PASSES 64

uint64_t membw_pattern_sum(uint64_t n)
{
    /* n(n+1)/2 without losing the bit the division would drop: halve the even factor first */
    const uint64_t tri = n % 2 == 0 ? (n / 2) * (n + 1) : n * ((n + 1) / 2);
    return MEMBW_K * tri;
}

void membw_pattern_fill(uint64_t *w, uint64_t first, uint64_t n)
{
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t j = 0; j < (int64_t)n; j++) w[j] = MEMBW_K * (first + (uint64_t)j + 1);
}

int membw_default_bytes(struct device d, size_t *bytes, struct err *e)
{
    size_t fr = 0, tot = 0;
    if (dev_mem_info(d, &fr, &tot, e)) return -1;
    const size_t mib64 = (size_t)64 << 20;
    if (d.kind == DEVICE_CPU) {
        size_t b = fr / 4 < MEMBW_CPU_BYTES ? fr / 4 : MEMBW_CPU_BYTES;
        b = b / mib64 * mib64;
        *bytes = b < mib64 ? mib64 : b;
        return 0;
    }
    size_t b = MEMBW_GPU_BYTES;
    if (fr < b + ((size_t)1 << 30)) b = fr > ((size_t)1 << 30) ? (fr - ((size_t)1 << 30)) / mib64 * mib64 : 0;
    if (b < ((size_t)1 << 30))
        return err_set(e, "GPU %d: %.2f GiB free, too little for a read-bandwidth buffer of at least 1 GiB", d.ordinal,
                       (double)fr / (1 << 30));
    *bytes = b;
    return 0;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* the buffer's pattern: in place on the CPU, chunk by chunk through op_copy on a GPU */
static int fill(struct tensor *buf, struct err *e)
{
    const size_t nb = tensor_nbytes(buf);
    if (buf->dev.kind == DEVICE_CPU) {
        membw_pattern_fill(buf->data, 0, nb / 8);
        return 0;
    }
    const size_t chunk = nb < MEMBW_CHUNK ? nb : MEMBW_CHUNK;
    struct tensor h = tensor_make(DTYPE_U8, device_cpu(), NULL, 1, (int64_t)chunk);
    if (!(h.data = dev_alloc(h.dev, chunk, e))) return -1;
    for (size_t off = 0; off < nb; off += chunk) {
        const size_t k = nb - off < chunk ? nb - off : chunk;
        membw_pattern_fill(h.data, off / 8, k / 8);
        struct tensor src = tensor_make(DTYPE_U8, device_cpu(), h.data, 1, (int64_t)k);
        struct tensor dst = tensor_rows_view(buf, (int64_t)off, (int64_t)k);
        op_copy(&dst, &src); /* staged: h may be rewritten at once */
    }
    dev_sync(buf->dev);
    dev_free(h.dev, h.data);
    return 0;
}

int membw_measure(struct membw *m, struct device d, size_t bytes, int passes, struct err *e)
{
    memset(m, 0, sizeof *m);
    if (bytes == 0 || bytes % 16) return err_set(e, "read bandwidth: %zu bytes is not a positive multiple of 16", bytes);
    if (passes < 1 || passes > MEMBW_MAX_PASSES)
        return err_set(e, "read bandwidth: %d passes (1 .. %d)", passes, MEMBW_MAX_PASSES);
    struct tensor buf = tensor_make(DTYPE_U8, d, NULL, 1, (int64_t)bytes);
    if (!(buf.data = dev_alloc(d, bytes, e))) return -1;
    double t[MEMBW_MAX_PASSES];
    const uint64_t want = membw_pattern_sum(bytes / 8);
    int rc = -1;
    double t0 = time_now();
    if (fill(&buf, e)) goto out;
    m->fill_s = time_now() - t0;
    for (int r = -1; r < passes; r++) { /* r = -1: untimed (clocks up, the kernel loaded) */
        dev_sync(d);
        t0 = time_now();
        const uint64_t got = op_read_sum(&buf);
        const double dt = time_now() - t0;
        if (got != want) {
            err_set(e, "read bandwidth: pass %d over %zu bytes summed to %llu, expected %llu (a short or wrong read)",
                    r + 1, bytes, (unsigned long long)got, (unsigned long long)want);
            goto out;
        }
        if (r >= 0) t[r] = dt;
    }
    qsort(t, (size_t)passes, sizeof *t, cmp_d);
    m->dev = d;
    m->bytes = bytes;
    m->passes = passes;
    m->best_s = t[0];
    m->median_s = passes % 2 ? t[passes / 2] : 0.5 * (t[passes / 2 - 1] + t[passes / 2]);
    m->gbs = (double)bytes / m->best_s / 1e9;
    m->gbs_median = (double)bytes / m->median_s / 1e9;
    rc = 0;
out:
    dev_free(d, buf.data);
    return rc;
}
