/* server_impl.h: the server's own structs and the calls its two halves share: server_http.c (the
 * HTTP side: connections, parsing, the queue, streaming) and server_worker.c (the worker thread that
 * owns the engine: one turn at a time or the scheduler, the answers, /metrics). */
#ifndef MINICPMV_SERVER_IMPL_H
#define MINICPMV_SERVER_IMPL_H

#include <microhttpd.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>

#include "grammar.h"
#include "scheduler.h"
#include "server.h"

/* One choice of a job: its own turn (rq.turns[index]), run and answered on its own; the worker's. */
struct choice {
    struct job *j;
    int index;
    int slot_held;               /* it holds a scheduler slot (s->slots_used) until it finishes */
    double t_start;              /* when its turn started */
    int lp_sent;                 /* logprob entries streamed so far */
    long text_off;               /* completions' logprobs: text_offset of the next entry */
    int sent_first;
    int rc, input_error;         /* how it ended */
    struct err e;
    struct turn_result r;
};

struct job {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;
    struct server *srv;
    struct server_request rq;
    atomic_int cancel;
    int done;
    int fd;                      /* the client's socket, for hang-up checks */
    char id[64];
    long created;
    double t0;                   /* when the worker took it */
    double t_arrive;             /* when it was queued */
    struct choice ch[SERVER_MAX_N]; /* rq.n of them (the worker's) */
    int n_started, n_done;       /* choices started, finished (the worker's) */
    /* non-streamed result */
    int status;
    char *body;
    /* streamed events */
    struct strbuf ev;            /* SSE bytes produced so far */
    size_t off;                  /* how many of them the client was sent */
};


#define METRIC_BUCKETS 12
#define METRIC_DEVICES 16

struct server {
    struct engine *g;            /* NULL while the model loads (s->mu; fixed once set) */
    struct server_options o;
    char model_name[256];
    struct MHD_Daemon *d;
    int port;
    pthread_t worker;
    int worker_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct job **q;
    int qhead, qn;
    int stopping;
    long next_id;
    struct imgcache *cache;
    struct server_stats st;
    struct guard *guard;
    struct job **running;        /* the jobs the worker runs now ([slots], s->mu) */
    int n_running;
    int n_slots;                 /* engine_slots: turns in flight at once */
    int slots_used;              /* the scheduler's slots held by running choices (s->mu) */
    long jobs_finished;          /* (s->mu) */
    struct scheduler *sched;         /* n_slots > 1: continuous batching (the worker's) */
    int live_jobs;               /* jobs not yet released by every holder (s->mu): server_stop waits for
                                    their connections to send the answers before stopping the daemon */
    int drained, quiesced;
    MHD_socket listen_fd;
    char addr[INET6_ADDRSTRLEN + 16]; /* "127.0.0.1:8080" or "[::1]:8080", the bound address */
    atomic_llong image_bytes;    /* decoded image bytes held by requests (lim.max_image_bytes) */
    /* response_format's vocabulary tries: built at the first constrained request, shared read-only */
    pthread_mutex_t vocab_mu;
    struct grammar_vocab *vocab;
    /* /metrics (s->mu) */
    long prompt_tokens, gen_tokens;
    struct hist { double sum; long count; long b[METRIC_BUCKETS]; } ttft, tpot, dur;
    long long cache_bytes;
    struct engine_device_mem mem[METRIC_DEVICES];
    int n_mem;
    struct engine_kv_use kv;    /* the KV block pool, as of the last finished request */
};

/* server_http.c */
void srv_wait_50ms(pthread_cond_t *cv, pthread_mutex_t *mu); /* at most 50 ms on cv */
void srv_job_release(struct job *j);                         /* drops a holder; the last frees */
struct engine *srv_engine(struct server *s);                 /* NULL while the model loads */
void srv_stat_add(struct server *s, long *field);            /* ++*field under s->mu */
void srv_job_event(struct job *j, char *json);               /* one SSE event (json freed); j->mu held */

/* server_worker.c */
void *srv_worker_main(void *server);                         /* the worker thread */
char *srv_metrics_text(struct server *s);                    /* GET /metrics (malloc'd) */
const struct grammar_vocab *srv_vocab(void *server, struct err *e); /* response_format's tries, built once */

#endif
