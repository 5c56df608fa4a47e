/* server_worker.c: the server's worker thread (server_impl.h): it owns the engine and runs the jobs
 * the HTTP side queues, one turn at a time (one slot, and beam search) or up to engine_slots turns
 * through the scheduler. A job of n choices runs n turns: one after another with one slot, or each on
 * its own slot as slots free up (a job's waiting choices start before the next job in the queue). It
 * writes each job's answer (JSON or the SSE events: each choice's chunks as they come, then the usage
 * and [DONE]), keeps the stats and the /metrics histograms, and renders /metrics. */
#include "server_impl.h"

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double ttft_le[METRIC_BUCKETS] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
static const double tpot_le[METRIC_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1};
static const double dur_le[METRIC_BUCKETS] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};

static const struct tokenizer *srv_tok(struct server *s) { return engine_tokenizer(s->g); }

/* Streamed text of one choice (turn_io.cb): a chunk with the text and the logprob entries since the last. */
static int on_text(void *ctx, const char *text, size_t len)
{
    struct choice *c = ctx;
    struct job *j = c->j;
    if (!j->rq.stream) return 0;
    int n_lp = 0;
    const struct turn_logprob *lp = j->rq.req.logprobs ? turn_logprobs_so_far(j->rq.turns[c->index], &n_lp) : NULL;
    pthread_mutex_lock(&j->mu);
    srv_job_event(j, server_chunk_json(j->rq.api, j->id, j->created, j->srv->model_name, c->index, text, len,
                                       !c->sent_first, NULL, lp ? lp + c->lp_sent : NULL, n_lp - c->lp_sent,
                                       &c->text_off, srv_tok(j->srv)));
    c->lp_sent = n_lp;
    c->sent_first = 1;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    return 0;
}

static struct turn_io choice_io(struct server *s, struct choice *c)
{
    const struct turn_io io = {.cache = s->cache, .cb = on_text, .cb_ctx = c, .cancel = &c->j->cancel,
                               .deadline = s->o.lim.max_time > 0 ? c->j->t0 + s->o.lim.max_time : 0};
    return io;
}

static void hist_add(struct hist *h, const double *le, double v)
{
    h->sum += v;
    h->count++;
    for (int i = 0; i < METRIC_BUCKETS; i++) h->b[i] += v <= le[i];
}

/* The end of a job whose choices all ended: the stats, the answer (JSON, or the usage chunk, an error
 * event and [DONE]), the log line. */
static void job_finish(struct server *s, struct job *j)
{
    server_request_drop_images(&j->rq); /* what a queued request holds is bounded by the image budget */
    const int n = j->rq.n;
    const struct choice *bad = NULL;
    int n_gen = 0, n_prompt = j->ch[0].r.n_prompt, timed_out = 0;
    double first = -1;
    for (int i = 0; i < n; i++) {
        const struct choice *c = &j->ch[i];
        if (c->rc && !bad) bad = c;
        n_gen += c->r.n_gen;
        timed_out |= c->rc == 0 && c->r.timed_out;
        const double t = c->t_start - j->t_arrive + c->r.t_first;
        if (c->rc == 0 && (first < 0 || t < first)) first = t;
    }
    /* counted before the answer is released, so a client sees its own request in the stats */
    int cancelled = atomic_load(&j->cancel);
    pthread_mutex_lock(&s->mu);
    if (cancelled) s->st.cancelled++;
    else if (!bad) s->st.ok++;
    else if (bad->input_error) s->st.client_errors++;
    else s->st.failed++;
    if (!bad && timed_out) s->st.timed_out++;
    s->st.cache_hits = imgcache_hits(s->cache);
    s->cache_bytes = (long long)imgcache_bytes(s->cache);
    s->prompt_tokens += n_prompt;
    s->gen_tokens += n_gen;
    if (!bad && !cancelled) {
        hist_add(&s->ttft, ttft_le, first);
        for (int i = 0; i < n; i++)
            if (j->ch[i].r.n_gen > 1) hist_add(&s->tpot, tpot_le, j->ch[i].r.t_decode / (j->ch[i].r.n_gen - 1));
        hist_add(&s->dur, dur_le, time_now() - j->t_arrive);
    }
    if (s->g) s->n_mem = engine_device_memory(s->g, s->mem, METRIC_DEVICES);
    if (s->g) engine_kv_use(s->g, &s->kv);
    const int cut = cancelled && s->stopping; /* cancelled by the drain timeout, not by its client */
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&j->mu);
    char *ej = NULL;
    if (cut) {
        /* a cut answer is not passed off as a whole one */
        j->status = 503;
        ej = server_error_json("the server is shutting down; the request was cancelled", "server_error", NULL, "shutting_down");
    } else if (bad) {
        int client = bad->input_error && bad->e.msg[0];
        j->status = cancelled && !bad->e.msg[0] ? 499 : client ? 400 : 500;
        ej = server_error_json(bad->e.msg[0] ? bad->e.msg : "request cancelled", client ? "invalid_request_error" : "server_error",
                               NULL, NULL);
    } else if (j->rq.stream) {
        if (j->rq.include_usage)
            srv_job_event(j, server_usage_chunk_json(j->rq.api, j->id, j->created, s->model_name, n_prompt, n_gen));
    } else {
        struct turn_result r[SERVER_MAX_N];
        for (int i = 0; i < n; i++) r[i] = j->ch[i].r;
        j->status = 200;
        j->body = server_answer_json(j->rq.api, j->id, j->created, s->model_name, r, n, srv_tok(s));
    }
    if (ej && j->rq.stream) srv_job_event(j, ej);
    else if (ej) j->body = ej;
    if (j->rq.stream) strbuf_printf(&j->ev, "data: [DONE]\n\n");
    j->done = 1;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    if (s->o.log_requests) {
        const struct turn_result *r = &j->ch[0].r;
        fprintf(stderr, "%s: %s %s, n %d, %d prompt + %d generated tokens, %.1f ms (choice 0: vision %.1f, prefill %.1f, decode %.1f)%s\n",
                j->id, bad ? "error" : "ok", j->rq.stream ? "stream" : "json", n, n_prompt, n_gen,
                1e3 * (time_now() - j->t0), 1e3 * r->t_vision, 1e3 * r->t_prefill, 1e3 * r->t_decode,
                cancelled ? " (client gone)" : r->image_cached ? " (images cached)" : "");
    }
    for (int i = 0; i < n; i++) turn_result_free(&j->ch[i].r);
}

/* A choice ended (rc 0 with *r, or rc -1 with e): its result is kept (r is taken over), a streamed
 * choice gets its closing chunk; the last one finishes the job. Returns 1 when the job finished. */
static int choice_done(struct server *s, struct choice *c, int rc, struct turn_result *r, int input_error,
                       const struct err *e)
{
    struct job *j = c->j;
    c->rc = rc;
    c->input_error = input_error;
    if (e) c->e = *e;
    c->r = *r;
    memset(r, 0, sizeof *r);
    if (c->slot_held) {
        pthread_mutex_lock(&s->mu);
        s->slots_used--;
        c->slot_held = 0;
        pthread_mutex_unlock(&s->mu);
    }
    if (rc == 0 && j->rq.stream && !atomic_load(&j->cancel)) {
        pthread_mutex_lock(&j->mu);
        const int left = c->r.n_lp - c->lp_sent;
        srv_job_event(j, server_chunk_json(j->rq.api, j->id, j->created, s->model_name, c->index, NULL, 0, !c->sent_first,
                                           c->r.finish, c->r.lp ? c->r.lp + c->lp_sent : NULL, left > 0 ? left : 0,
                                           &c->text_off, srv_tok(s)));
        pthread_cond_broadcast(&j->cv);
        pthread_mutex_unlock(&j->mu);
    }
    if (++j->n_done < j->rq.n) return 0;
    job_finish(s, j);
    return 1;
}

/* The worker takes j: j joins the running set (s->mu held). */
static void running_add(struct server *s, struct job *j)
{
    s->running[s->n_running++] = j;
}

/* The finished job leaves the running set. Every TRIM_EVERY jobs, and whenever nothing runs any more, the
 * free memory of every malloc arena goes back to the system (malloc_trim): each turn allocates a few
 * vocabulary-sized buffers (the sampler's, the logits: ~1.6 MB with a 128k vocabulary), and with many
 * turns in flight glibc keeps the holes they leave in the arenas resident, so RSS crept up under load
 * (40 MiB over 400 requests at concurrency 64 in tests/server/load.mjs) though nothing leaked. */
#define TRIM_EVERY 32
static void running_del(struct server *s, struct job *j)
{
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->n_running; i++)
        if (s->running[i] == j) {
            s->running[i] = s->running[--s->n_running];
            break;
        }
    const int trim = ++s->jobs_finished % TRIM_EVERY == 0 || (!s->n_running && !s->qn);
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    srv_job_release(j);
    if (trim) malloc_trim(0);
}

/* A job alone on the engine (one slot, or beam search): its choices one after another. */
static void run_job(struct server *s, struct job *j)
{
    for (int i = 0; i < j->rq.n; i++) {
        struct choice *c = &j->ch[i];
        struct turn_result r;
        struct err e = {{0}};
        int rc = -1;
        const struct turn_io io = choice_io(s, c);
        memset(&r, 0, sizeof r);
        c->t_start = time_now();
        if (!atomic_load(&j->cancel)) rc = turn_run(j->rq.turns[i], srv_engine(s), &io, &r, &e);
        choice_done(s, c, rc, &r, r.input_error, &e);
    }
    j->n_started = j->rq.n;
}

static void sched_done(void *ctx, int rc, struct turn_result *r, int input_error, const struct err *e)
{
    struct choice *c = ctx;
    struct job *j = c->j;
    if (choice_done(j->srv, c, rc, r, input_error, e)) running_del(j->srv, j);
}

/* Starts a choice on the scheduler (its slot is counted already); a cancelled job's choice ends at once. */
static void start_choice(struct server *s, struct choice *c)
{
    struct job *j = c->j;
    c->t_start = time_now();
    if (atomic_load(&j->cancel)) {
        struct turn_result r = {0};
        struct err e = {{0}};
        if (choice_done(s, c, -1, &r, 0, &e)) running_del(s, j);
        return;
    }
    const struct turn_io io = choice_io(s, c);
    sched_add(s->sched, j->rq.turns[c->index], &io, sched_done, c); /* a failure is answered through sched_done */
}

/* Whether an image of the job is still decoding (image_decode_async, from the request's parse). */
static int job_decoding(const struct job *j)
{
    for (int i = 0; i < j->rq.req.n_images; i++)
        if (image_rows_ready(&j->rq.images[i]) < j->rq.images[i].h) return 1;
    return 0;
}

/* The next job when it may start now: FIFO; a beam-search job runs alone, so it waits (and the jobs
 * behind it wait) until nothing runs. A job whose images are still decoding waits while other turns are
 * in the scheduler: its encode would block the worker on the rows (image_wait_rows) and stall their
 * steps; with nothing else running it starts at once, and its tower overlaps the decode. s->mu held. */
static struct job *queue_take(struct server *s)
{
    if (!s->qn || (s->sched ? s->slots_used >= s->n_slots : s->n_running >= 1)) return NULL;
    struct job *j = s->q[s->qhead];
    if (j->rq.req.num_beams > 1 && s->n_running) return NULL;
    if (s->slots_used > 0 && job_decoding(j)) return NULL;
    s->qhead = (s->qhead + 1) % s->o.queue;
    s->qn--;
    j->t0 = time_now();
    for (int i = 0; i < j->rq.n; i++) j->ch[i] = (struct choice){.j = j, .index = i};
    running_add(s, j);
    return j;
}

/* The scheduler's next choice to start while a slot is free: a running job's waiting choice first,
 * then the first choice of the next job (*alone: a job to run alone instead). s->mu held. */
static struct choice *next_choice(struct server *s, struct job **alone)
{
    *alone = NULL;
    if (s->slots_used >= s->n_slots) return NULL;
    struct job *j = NULL;
    for (int i = 0; i < s->n_running && !j; i++)
        if (s->running[i]->n_started < s->running[i]->rq.n) j = s->running[i];
    if (!j && (j = queue_take(s)) && j->rq.req.num_beams > 1) {
        *alone = j;
        return NULL;
    }
    if (!j) return NULL;
    struct choice *c = &j->ch[j->n_started++];
    c->slot_held = 1;
    s->slots_used++;
    return c;
}

/* With the engine's first job: its slots decide one-at-a-time or the scheduler. s->mu held. */
static void worker_setup(struct server *s)
{
    if (s->sched || !s->g || s->n_slots > 1) return;
    engine_thread_init(s->g); /* --threads: OpenMP's count is per thread, and this thread runs the engine */
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
        if (!s->sched) {
            struct job *j = queue_take(s);
            pthread_mutex_unlock(&s->mu);
            if (j) {
                run_job(s, j);
                running_del(s, j);
            }
            continue;
        }
        struct choice *c;
        struct job *alone;
        while ((c = next_choice(s, &alone)) || alone) {
            pthread_mutex_unlock(&s->mu);
            if (alone) {
                run_job(s, alone);
                running_del(s, alone);
            } else {
                start_choice(s, c);
            }
            pthread_mutex_lock(&s->mu);
        }
        pthread_mutex_unlock(&s->mu);
        if (sched_active(s->sched)) sched_step(s->sched);
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
                "Requests to /v1/chat/completions and /v1/completions by outcome (ok, client_error: 4xx, busy: 503 queue full / loading / "
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
                "Mean seconds per generated token after the first, one observation per choice of an ok request.", &s->tpot,
                tpot_le);
    metric_hist(&b, "minicpmv_request_duration_seconds", "Seconds from queueing to the last token (ok requests).", &s->dur,
                dur_le);
    metric_head(&b, "minicpmv_queue_depth", "gauge", "Requests waiting for a slot.");
    strbuf_printf(&b, "minicpmv_queue_depth %d\n", s->qn);
    metric_head(&b, "minicpmv_requests_running", "gauge", "Requests the worker is running now.");
    strbuf_printf(&b, "minicpmv_requests_running %d\n", s->n_running);
    metric_head(&b, "minicpmv_sequences_active", "gauge",
                "Sequences generating now (one per choice in flight; with --parallel 1 at most 1).");
    strbuf_printf(&b, "minicpmv_sequences_active %d\n", s->sched ? s->slots_used : s->n_running);
    metric_head(&b, "minicpmv_slots", "gauge", "Turns the engine runs at once (--parallel; 0 while the model loads).");
    strbuf_printf(&b, "minicpmv_slots %d\n", s->g ? engine_slots(s->g) : 0);
    metric_head(&b, "minicpmv_image_cache_bytes", "gauge", "Bytes the image cache holds (as of the last finished request).");
    strbuf_printf(&b, "minicpmv_image_cache_bytes %lld\n", s->cache_bytes);
    metric_head(&b, "minicpmv_image_cache_capacity_bytes", "gauge", "The image cache's byte budget (--image-cache-bytes).");
    strbuf_printf(&b, "minicpmv_image_cache_capacity_bytes %zu\n", s->o.image_cache_bytes ? s->o.image_cache_bytes : (size_t)IMGCACHE_BYTES);
    metric_head(&b, "minicpmv_image_cache_hits_total", "counter", "Image sets found in the image cache (not encoded again).");
    strbuf_printf(&b, "minicpmv_image_cache_hits_total %ld\n", st.cache_hits);
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
    metric_head(&b, "minicpmv_kv_preemptions_total", "counter",
                "Running turns whose KV blocks went to older turns (a pool smaller than --parallel x --ctx, "
                "--kv-tokens, ran out); each was resumed by prefilling its tokens again.");
    strbuf_printf(&b, "minicpmv_kv_preemptions_total %lld\n", (long long)kv->preempted);
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

