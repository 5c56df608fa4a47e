/* cmd_bench_dev.c: what `minicpmv bench` measures of its devices besides the phases: GPU memory in use
 * (free memory sampled after each phase, and every --mem-poll ms from a thread) and, with --peak-gbs auto,
 * the read bandwidth of each device of the run (membw.h) before the model loads. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "cmd_bench.h"

/* ------------------------------------------------------------------ memory */

void bench_mem_sample(struct bench *b)
{
    for (int i = 0; i < b->n_gpu; i++) {
        size_t fr = 0, tot = 0;
        struct err e;
        if (dev_mem_info(device_cuda(b->gpu[i]), &fr, &tot, &e)) continue;
        pthread_mutex_lock(&b->mu);
        if (fr < b->min_free[i]) b->min_free[i] = fr;
        if (fr < b->phase_min[i]) b->phase_min[i] = fr;
        pthread_mutex_unlock(&b->mu);
    }
}

void *bench_mem_poller(void *p)
{
    struct bench *b = p;
    struct timespec ts = {b->poll_ms / 1000, (long)(b->poll_ms % 1000) * 1000000L};
    while (!atomic_load(&b->stop)) {
        bench_mem_sample(b);
        nanosleep(&ts, NULL);
    }
    return NULL;
}

void bench_phase_mem_begin(struct bench *b)
{
    pthread_mutex_lock(&b->mu);
    for (int i = 0; i < b->n_gpu; i++) b->phase_min[i] = (size_t)-1;
    pthread_mutex_unlock(&b->mu);
    bench_mem_sample(b);
}

void bench_phase_mem_end(struct bench *b, struct phase *p)
{
    bench_mem_sample(b);
    pthread_mutex_lock(&b->mu);
    for (int i = 0; i < b->n_gpu; i++)
        p->peak_used[i] = b->phase_min[i] == (size_t)-1 ? 0 : (int64_t)b->free0[i] - (int64_t)b->phase_min[i];
    pthread_mutex_unlock(&b->mu);
}

/* ------------------------------------------------------------------ read bandwidth */

/* The CPU's read bandwidth, measured in a child process: its buffer then never counts in this process's
 * peak RSS (the CPU memory figure). Runs before this process has started any OpenMP or CUDA work. */
static int measure_cpu_apart(struct membw *m, size_t bytes, int passes, struct err *e)
{
    struct { int rc; struct membw m; char msg[sizeof e->msg]; } r;
    int fd[2];
    if (pipe(fd)) return err_set(e, "read bandwidth: pipe: %s", strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(fd[0]), close(fd[1]);
        return err_set(e, "read bandwidth: fork: %s", strerror(errno));
    }
    if (pid == 0) {
        struct err ce = {{0}};
        memset(&r, 0, sizeof r);
        r.rc = membw_measure(&r.m, device_cpu(), bytes, passes, &ce);
        memcpy(r.msg, ce.msg, sizeof r.msg);
        ssize_t k = write(fd[1], &r, sizeof r);
        _exit(k == (ssize_t)sizeof r ? 0 : 1);
    }
    close(fd[1]);
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t k = read(fd[0], (char *)&r + got, sizeof r - got);
        if (k <= 0) break;
        got += (size_t)k;
    }
    close(fd[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    if (got != sizeof r || !WIFEXITED(st) || WEXITSTATUS(st)) return err_set(e, "read bandwidth: the measuring process failed");
    if (r.rc) return err_set(e, "%s", r.msg);
    *m = r.m;
    return 0;
}

/* --peak-gbs auto: d's read bandwidth (membw.h), once per device; the run compares decode with the least
 * of the devices measured (one card: its own figure). */
int bench_measure_peak(struct bench *b, struct device d, struct err *e)
{
    for (int i = 0; i < b->n_bw; i++)
        if (device_eq(b->bw[i].dev, d)) return 0;
    if (b->n_bw == (int)(sizeof b->bw / sizeof b->bw[0])) return 0;
    size_t bytes = 0;
    const int passes = d.kind == DEVICE_CPU ? 3 : 5;
    if (membw_default_bytes(d, &bytes, e)) return -1;
    char lab[24];
    if (d.kind == DEVICE_CPU) snprintf(lab, sizeof lab, "the CPU");
    else snprintf(lab, sizeof lab, "GPU %d", d.ordinal);
    fprintf(stderr, "bench: measuring the read bandwidth of %s: %.2f GiB, best of %d passes\n", lab, (double)bytes / GIB,
            passes);
    struct membw *m = &b->bw[b->n_bw];
    if (d.kind == DEVICE_CPU ? measure_cpu_apart(m, bytes, passes, e) : membw_measure(m, d, bytes, passes, e)) return -1;
    b->n_bw++;
    if (!(b->peak_gbs > 0) || m->gbs < b->peak_gbs) b->peak_gbs = m->gbs;
    return 0;
}
