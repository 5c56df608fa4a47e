/* server_worker.c: the server's worker thread (server_impl.h): it owns the engine and runs the jobs
 * the HTTP side queues, one turn at a time (one slot, and beam search) or up to engine_slots turns
 * through the scheduler; it writes each job's answer (JSON or the SSE events), keeps the stats and the
 * /metrics histograms, and renders /metrics. */
#include "server_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double ttft_le[METRIC_BUCKETS] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
static const double tpot_le[METRIC_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1};
static const double dur_le[METRIC_BUCKETS] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};

static int on_text(void *ctx, const char *text, size_t len)
{
    struct job *j = ctx;
    if (!j->rq.stream) return 0;
    const char *model = j->srv->model_name;
    int n_lp = 0;
    const struct turn_logprob *lp = j->rq.req.logprobs ? turn_logprobs_so_far(j->rq.turn, &n_lp) : NULL;
    pthread_mutex_lock(&j->mu);
    srv_job_event(j, server_chunk_json(j->id, j->created, model, text, len, !j->sent_first, NULL, lp ? lp + j->lp_sent : NULL,
                                   n_lp - j->lp_sent, engine_tokenizer(j->srv->g)));
    j->lp_sent = n_lp;
    j->sent_first = 1;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    return 0;
}

static struct turn_io job_io(struct server *s, struct job *j)
{
    const struct turn_io io = {.cache = s->cache, .cb = on_text, .cb_ctx = j, .cancel = &j->cancel,
                               .deadline = s->o.lim.max_time > 0 ? j->t0 + s->o.lim.max_time : 0};
    return io;
}

static void hist_add(struct hist *h, const double *le, double v)
{
    h->sum += v;
    h->count++;
    for (int i = 0; i < METRIC_BUCKETS; i++) h->b[i] += v <= le[i];
}

/* The answer of a job whose turn ended (rc 0 with r, or rc -1 with e), the stats, the log line. */
static void job_complete(struct server *s, struct job *j, int rc, struct turn_result *r, int input_error,
                         const struct err *e)
{
    server_request_drop_images(&j->rq); /* what a queued request holds is bounded by the image budget */
    /* counted before the answer is released, so a client sees its own request in the stats */
    int cancelled = atomic_load(&j->cancel);
    pthread_mutex_lock(&s->mu);
    if (cancelled) s->st.cancelled++;
    else if (rc == 0) s->st.ok++;
    else if (input_error) s->st.client_errors++;
    else s->st.failed++;
    if (rc == 0 && r->timed_out) s->st.timed_out++;
    s->st.cache_hits = imgcache_hits(s->cache);
    s->cache_bytes = (long long)imgcache_bytes(s->cache);
    s->prompt_tokens += r->n_prompt;
    s->gen_tokens += r->n_gen;
    if (rc == 0 && !cancelled) {
        const double now = time_now();
        hist_add(&s->ttft, ttft_le, j->t0 - j->t_arrive + r->t_first);
        if (r->n_gen > 1) hist_add(&s->tpot, tpot_le, r->t_decode / (r->n_gen - 1));
        hist_add(&s->dur, dur_le, now - j->t_arrive);
    }
    if (s->g) s->n_mem = engine_device_memory(s->g, s->mem, METRIC_DEVICES);
    if (s->g) engine_kv_use(s->g, &s->kv);
    const int cut = cancelled && s->stopping; /* cancelled by the drain timeout, not by its client */
    pthread_mutex_unlock(&s->mu);
    const char *model = s->model_name;
    pthread_mutex_lock(&j->mu);
    if (cut) {
        /* a cut answer is not passed off as a whole one */
        j->status = 503;
        char *ej = server_error_json("the server is shutting down; the request was cancelled", "server_error", NULL,
                                     "shutting_down");
        if (j->rq.stream) srv_job_event(j, ej);
        else j->body = ej;
    } else if (rc == 0) {
        if (j->rq.stream) {
            const int left = r->n_lp - j->lp_sent;
            srv_job_event(j, server_chunk_json(j->id, j->created, model, NULL, 0, !j->sent_first, r->finish,
                                           r->lp ? r->lp + j->lp_sent : NULL, left > 0 ? left : 0, engine_tokenizer(s->g)));
            if (j->rq.include_usage) srv_job_event(j, server_usage_chunk_json(j->id, j->created, model, r->n_prompt, r->n_gen));
        } else {
            j->status = 200;
            j->body = server_completion_json(j->id, j->created, model, r, engine_tokenizer(s->g));
        }
    } else {
        int client = input_error && e->msg[0];
        j->status = atomic_load(&j->cancel) && !e->msg[0] ? 499 : client ? 400 : 500;
        char *ej = server_error_json(e->msg[0] ? e->msg : "request cancelled", client ? "invalid_request_error" : "server_error",
                                     NULL, NULL);
        if (j->rq.stream) srv_job_event(j, ej);
        else j->body = ej;
    }
    if (j->rq.stream) strbuf_printf(&j->ev, "data: [DONE]\n\n");
    j->done = 1;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    if (s->o.log_requests)
        fprintf(stderr, "%s: %s %s, %d prompt + %d generated tokens, %.1f ms (vision %.1f, prefill %.1f, decode %.1f)%s\n",
                j->id, rc ? "error" : "ok", j->rq.stream ? "stream" : "json", r->n_prompt, r->n_gen,
                1e3 * (time_now() - j->t0), 1e3 * r->t_vision, 1e3 * r->t_prefill, 1e3 * r->t_decode,
                cancelled ? " (client gone)" : r->image_cached ? " (images cached)" : "");
    turn_result_free(r);
}

/* One job alone on the engine (one slot, or beam search). */
static void run_job(struct server *s, struct job *j)
{
    struct turn_result r;
    struct err e = {{0}};
    int rc = -1;
    const struct turn_io io = job_io(s, j);
    memset(&r, 0, sizeof r);
    if (!atomic_load(&j->cancel)) rc = turn_run(j->rq.turn, srv_engine(s), &io, &r, &e);
    job_complete(s, j, rc, &r, r.input_error, &e);
}

/* The worker takes j: j joins the running set (s->mu held). */
static void running_add(struct server *s, struct job *j)
{
    s->running[s->n_running++] = j;
}

static void running_del(struct server *s, struct job *j)
{
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->n_running; i++)
        if (s->running[i] == j) {
            s->running[i] = s->running[--s->n_running];
            break;
        }
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    srv_job_release(j);
}

static void sched_done(void *ctx, int rc, struct turn_result *r, int input_error, const struct err *e)
{
    struct job *j = ctx;
    job_complete(j->srv, j, rc, r, input_error, e);
    running_del(j->srv, j);
}

/* The next job when it may start now: FIFO; a beam-search job runs alone, so it waits (and the jobs
 * behind it wait) until nothing runs. s->mu held. */
static struct job *queue_take(struct server *s)
{
    if (!s->qn || s->n_running >= s->n_slots) return NULL;
    struct job *j = s->q[s->qhead];
    if (j->rq.req.num_beams > 1 && s->n_running) return NULL;
    s->qhead = (s->qhead + 1) % s->o.queue;
    s->qn--;
    j->t0 = time_now();
    running_add(s, j);
    return j;
}

/* With the engine's first job: its slots decide one-at-a-time or the scheduler. s->mu held. */
static void worker_setup(struct server *s)
{
    if (s->sched || !s->g || s->n_slots > 1) return;
    int n = engine_slots(s->g);
    if (n > SERVER_MAX_SLOTS) n = SERVER_MAX_SLOTS;
    struct err e = {{0}};
    if (n > 1 && sched_init(&s->sched, s->g, &e) == 0) s->n_slots = n;
    else if (n > 1) fprintf(stderr, "minicpmv serve: %s; serving one request at a time\n", e.msg);
}

void *srv_worker_main(void *p)
{
    struct server *s = p;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->qn && !s->n_running && !s->stopping) pthread_cond_wait(&s->cv, &s->mu);
        if (!s->qn && !s->n_running) {
            pthread_mutex_unlock(&s->mu);
            break;
        }
        worker_setup(s);
        struct job *j;
        while ((j = queue_take(s))) {
            pthread_mutex_unlock(&s->mu);
            if (j->rq.req.num_beams > 1 || !s->sched) {
                run_job(s, j); /* alone */
                running_del(s, j);
            } else if (atomic_load(&j->cancel)) {
                struct turn_result r = {0};
                struct err e = {{0}};
                job_complete(s, j, -1, &r, 0, &e);
                running_del(s, j);
            } else {
                const struct turn_io io = job_io(s, j);
                sched_add(s->sched, j->rq.turn, &io, sched_done, j); /* a failure is answered through sched_done */
            }
            pthread_mutex_lock(&s->mu);
        }
        pthread_mutex_unlock(&s->mu);
        if (s->sched && sched_active(s->sched)) sched_step(s->sched);
    }
    return NULL;
}

/* lim.vocab: the vocabulary tries, built at the first call (any HTTP thread; vocab_mu), then shared. */
const struct grammar_vocab *srv_vocab(void *ctx, struct err *e)
{
    struct server *s = ctx;
    struct engine *g = srv_engine(s);
    pthread_mutex_lock(&s->vocab_mu);
    if (!s->vocab && g && turn_vocab_init(&s->vocab, g, e)) s->vocab = NULL;
    else if (!g) err_set(e, "the model is still loading");
    const struct grammar_vocab *v = s->vocab;
    pthread_mutex_unlock(&s->vocab_mu);
    return v;
}

static void metric_head(struct strbuf *b, const char *name, const char *type, const char *help)
{
    strbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void metric_hist(struct strbuf *b, const char *name, const char *help, const struct hist *h, const double *le)
{
    metric_head(b, name, "histogram", help);
    for (int i = 0; i < METRIC_BUCKETS; i++) strbuf_printf(b, "%s_bucket{le=\"%g\"} %ld\n", name, le[i], h->b[i]);
    strbuf_printf(b, "%s_bucket{le=\"+Inf\"} %ld\n%s_sum %.9g\n%s_count %ld\n", name, h->count, name, h->sum, name,
                  h->count);
}

/* GET /metrics: Prometheus' text exposition format 0.0.4 (docs/SERVER.md lists the series). */
char *srv_metrics_text(struct server *s)
{
    struct strbuf b = {0};
    pthread_mutex_lock(&s->mu);
    const struct server_stats st = s->st;
    metric_head(&b, "minicpmv_requests_total", "counter",
                "Chat completion requests by outcome (ok, client_error: 4xx, busy: 503 queue full / loading / "
                "shutting down, cancelled: client gone or drain timeout, failed: 5xx).");
    const struct { const char *k; long v; } by[] = {{"ok", st.ok}, {"client_error", st.client_errors}, {"busy", st.busy},
                                                    {"cancelled", st.cancelled}, {"failed", st.failed}};
    for (size_t i = 0; i < sizeof by / sizeof *by; i++)
        strbuf_printf(&b, "minicpmv_requests_total{status=\"%s\"} %ld\n", by[i].k, by[i].v);
    metric_head(&b, "minicpmv_prompt_tokens_total", "counter", "Prompt tokens of the requests the worker ran.");
    strbuf_printf(&b, "minicpmv_prompt_tokens_total %ld\n", s->prompt_tokens);
    metric_head(&b, "minicpmv_generation_tokens_total", "counter", "Generated tokens (stop tokens included).");
    strbuf_printf(&b, "minicpmv_generation_tokens_total %ld\n", s->gen_tokens);
    metric_hist(&b, "minicpmv_time_to_first_token_seconds", "Seconds from queueing to the first generated token (ok requests).",
                &s->ttft, ttft_le);
    metric_hist(&b, "minicpmv_time_per_output_token_seconds",
                "Mean seconds per generated token after the first, one observation per ok request.", &s->tpot, tpot_le);
    metric_hist(&b, "minicpmv_request_duration_seconds", "Seconds from queueing to the last token (ok requests).", &s->dur,
                dur_le);
    metric_head(&b, "minicpmv_queue_depth", "gauge", "Requests waiting for a slot.");
    strbuf_printf(&b, "minicpmv_queue_depth %d\n", s->qn);
    metric_head(&b, "minicpmv_requests_running", "gauge", "Requests the worker is running now.");
    strbuf_printf(&b, "minicpmv_requests_running %d\n", s->n_running);
    metric_head(&b, "minicpmv_slots", "gauge", "Turns the engine runs at once (--parallel; 0 while the model loads).");
    strbuf_printf(&b, "minicpmv_slots %d\n", s->g ? engine_slots(s->g) : 0);
    metric_head(&b, "minicpmv_image_cache_bytes", "gauge", "Bytes the image cache holds (as of the last finished request).");
    strbuf_printf(&b, "minicpmv_image_cache_bytes %lld\n", s->cache_bytes);
    metric_head(&b, "minicpmv_kv_blocks", "gauge",
                "KV pool blocks per layer by state: held by running turns, cached for prefix reuse, free (as of the "
                "last finished request).");
    const struct engine_kv_use *kv = &s->kv;
    strbuf_printf(&b, "minicpmv_kv_blocks{state=\"used\"} %d\nminicpmv_kv_blocks{state=\"cached\"} %d\n"
                      "minicpmv_kv_blocks{state=\"free\"} %d\n", kv->used, kv->cached, kv->blocks - kv->used - kv->cached);
    metric_head(&b, "minicpmv_kv_block_tokens", "gauge", "Tokens per KV block.");
    strbuf_printf(&b, "minicpmv_kv_block_tokens %d\n", kv->block_tokens);
    metric_head(&b, "minicpmv_kv_prefix_hit_blocks_total", "counter", "KV blocks a prompt reused instead of computing.");
    strbuf_printf(&b, "minicpmv_kv_prefix_hit_blocks_total %lld\n", (long long)kv->hit_blocks);
    metric_head(&b, "minicpmv_kv_evicted_blocks_total", "counter", "Cached KV blocks taken back for new tokens.");
    strbuf_printf(&b, "minicpmv_kv_evicted_blocks_total %lld\n", (long long)kv->evicted);
    metric_head(&b, "minicpmv_device_memory_bytes", "gauge",
                "Bytes held per device by kind (weights, kv, buffers), as of the last finished request.");
    for (int i = 0; i < s->n_mem; i++) {
        char dev[32];
        snprintf(dev, sizeof dev, "%s:%d", s->mem[i].dev.kind == DEVICE_CUDA ? "cuda" : "cpu", s->mem[i].dev.ordinal);
        strbuf_printf(&b, "minicpmv_device_memory_bytes{device=\"%s\",kind=\"weights\"} %lld\n", dev,
                      (long long)s->mem[i].weights);
        strbuf_printf(&b, "minicpmv_device_memory_bytes{device=\"%s\",kind=\"kv\"} %lld\n", dev, (long long)s->mem[i].kv);
        strbuf_printf(&b, "minicpmv_device_memory_bytes{device=\"%s\",kind=\"buffers\"} %lld\n", dev,
                      (long long)s->mem[i].buffers);
    }
    pthread_mutex_unlock(&s->mu);
    return b.p;
}

