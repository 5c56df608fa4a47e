/* cmd_bench.h: what tools/cmd_bench.c (options, inputs, phases) and tools/cmd_bench_report.c (the table,
 * the read-bandwidth lines, --json) share: the phase results and the run's state. */
#ifndef MINICPMV_CMD_BENCH_H
#define MINICPMV_CMD_BENCH_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "devmap.h"
#include "engine.h"
#include "membw.h"

#define BENCH_MAX_REPS 100
#define BENCH_MAX_PHASES 16
#define BENCH_MAX_X 40
#define BENCH_CONC_WORDS 440 /* filler words of a concN prompt: ~512 tokens with the template */
#define BENCH_CONC_PROMPT 600
#define BENCH_CONC_NEW 256      /* default of --conc-new */
#define BENCH_PROBES 8          /* concN: probe requests under load, one at a time */
#define BENCH_PROBES_IDLE 3     /* concN: the same probe alone first (the idle TTFT: their median) */
#define BENCH_TURN2_FIRST_NEW 16 /* turn2: tokens of the first turn's answer */
#define GIB (1024.0 * 1024.0 * 1024.0)

enum phase_kind { PK_PREFILL, PK_DECODE, PK_VISION, PK_TTFT, PK_SEED, PK_CONC, PK_TURN2 };

struct phase {
    char name[24];
    enum phase_kind kind;
    int64_t n;                  /* prefill tokens, decode context, vision pieces */
    /* results */
    int ran;
    char err[300];
    int reps;
    double t[BENCH_MAX_REPS];   /* seconds per rep (the primary time) */
    double med;                 /* median of t */
    double value;               /* primary metric */
    const char *unit;
    int higher_better;
    int n_x;
    const char *xk[BENCH_MAX_X];
    double xv[BENCH_MAX_X];
    int64_t peak_used[DEVMAP_MAX_DEVICES]; /* per tracked GPU: bytes in use at this phase's peak */
};

struct bench {
    struct engine *g;
    int reps, decode_steps, seed_prompt, seed_new, seed_reps;
    int conc_new;                 /* concN: tokens each stream generates (--conc-new) */
    int no_graph_warm;            /* concN: --no-graph-warm (the batched graphs are captured as steps need them) */
    int prof_rows, prof_nth;      /* --prof-step ROWS:N (engine_set_profile_step) */
    uint64_t seed;
    double peak_gbs;              /* the read bandwidth decode is compared with (0: none) */
    int peak_auto;                /* --peak-gbs auto: peak_gbs is the least of bw[] */
    int n_bw;
    struct membw bw[DEVMAP_MAX_DEVICES + 1]; /* measured in this run, before the model loads */
    int64_t decode_weight_bytes;  /* LLM weights one decode step streams (embedding table excluded) */
    float *logits;
    /* memory: GPUs tracked by free memory, the CPU by peak RSS */
    int n_gpu, gpu[DEVMAP_MAX_DEVICES];
    size_t free0[DEVMAP_MAX_DEVICES], total[DEVMAP_MAX_DEVICES], min_free[DEVMAP_MAX_DEVICES],
        phase_min[DEVMAP_MAX_DEVICES];
    pthread_mutex_t mu;
    pthread_t th;
    int poll_ms, th_running;
    atomic_int stop;
};

/* tools/cmd_bench_dev.c: GPU free memory sampled into b (min_free, phase_min), the --mem-poll thread's body,
 * a phase's peak; --peak-gbs auto: d's read bandwidth, once per device (b->bw, b->peak_gbs = the least). */
void bench_mem_sample(struct bench *b);
void *bench_mem_poller(void *p);
void bench_phase_mem_begin(struct bench *b);
void bench_phase_mem_end(struct bench *b, struct phase *p);
int bench_measure_peak(struct bench *b, struct device d, struct err *e);

/* The table, the read-bandwidth section and the memory rows, on stdout. */
void bench_report_print(const struct bench *b, const struct phase *ph, int n_ph);
/* The same numbers as JSON for tools/bench_compare.py. */
int bench_report_json(const struct bench *b, const struct phase *ph, int n_ph, const char *model, const char *path,
                      struct err *e);

#endif
