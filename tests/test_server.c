/* test_server.c: beam search (brute force on a synthetic model, beams=1 == greedy, KV save/restore ==
 * recompute on the tiny model) and the HTTP server in-process on the tiny model, driven over loopback
 * by a small raw-socket client: answers equal the chat turn's (turn.h, as `chat -p` runs it), streamed deltas concatenate to the JSON
 * answer, stop strings, every error status, queue-full 503, disconnects, and a bounded load test
 * (MINICPMV_LOAD_N requests, default 60; 16 concurrent). tests/server/run.sh drives the same server
 * binary with curl and the official `openai` npm client. */
#include <arpa/inet.h>
#include <cJSON.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "backend.h"
#include "beam.h"
#include "engine_impl.h"
#include "server.h"
#include "t.h"
#include "thttp.h"
#include "tengine.h"
#include "tutil.h"

/* ---- beam search on a synthetic model ---- */
#define SV 4      /* vocab; token 3 is the stop id */
#define SD 3      /* depth */

static uint64_t salt;

static float synth_logit(const int32_t *seq, int n, int v)
{
    uint64_t h = 0x9e3779b97f4a7c15ULL + salt;
    for (int i = 0; i < n; i++) h = (h ^ (uint64_t)(seq[i] + 1)) * 0x100000001b3ULL;
    h = (h ^ (uint64_t)(v + 77)) * 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 29;
    return (float)((h >> 11) % 100000) / 100000.0f * 6.0f - 3.0f;
}

struct synth {
    int32_t seq[2][BEAM_MAX][SD + 1];
};

static int synth_step(void *ctx, int side, int slot, int parent, int t, int32_t tok, float *logits, struct err *e)
{
    (void)e;
    struct synth *s = ctx;
    if (t > 0) memcpy(s->seq[side][slot], s->seq[side ^ 1][parent], (size_t)t * sizeof(int32_t));
    s->seq[side][slot][t] = tok;
    for (int v = 0; v < SV; v++) logits[v] = synth_logit(s->seq[side][slot], t + 1, v);
    return 0;
}
static int synth_stop(void *ctx, int32_t tok) { (void)ctx; return tok == SV - 1; }

static double logprob(const int32_t *seq, int n, int v)
{
    double mx = -1e30, sum = 0;
    for (int i = 0; i < SV; i++) mx = fmax(mx, synth_logit(seq, n, i));
    for (int i = 0; i < SV; i++) sum += exp(synth_logit(seq, n, i) - mx);
    return synth_logit(seq, n, v) - mx - log(sum);
}

/* Exhaustive: the best of every finished sequence and every unfinished one of full depth (score = sum
 * of log-probs: length_penalty 0 makes HF's is_done exact, so beam search with enough beams must agree). */
static void brute(int32_t *seq, int n, double sum, double *best, int32_t *best_seq, int *best_n)
{
    if (n == SD) {
        if (sum > *best) { *best = sum; memcpy(best_seq, seq, (size_t)n * 4); *best_n = n; }
        return;
    }
    for (int v = 0; v < SV; v++) {
        double s = sum + logprob(seq, n, v);
        seq[n] = v;
        if (v == SV - 1) {
            if (s > *best) { *best = s; memcpy(best_seq, seq, (size_t)(n + 1) * 4); *best_n = n + 1; }
        } else {
            brute(seq, n + 1, s, best, best_seq, best_n);
        }
    }
}

static int bruteforce_one(void)
{
    static struct synth s;
    struct beam_model m = {.ctx = &s, .vocab = SV, .step = synth_step, .is_stop = synth_stop};
    struct beam_params p = {.num_beams = 16, .length_penalty = 0.0f, .repetition_penalty = 1.0f, .max_new = SD};
    float first[SV];
    int32_t empty[1] = {0};
    for (int v = 0; v < SV; v++) first[v] = synth_logit(empty, 0, v);
    int32_t out[SD + 1], ref[SD + 1], seq[SD + 1];
    int n = 0, rn = 0;
    struct err e = {{0}};
    T_EQ_INT(beam_search(&m, &p, first, out, &n, &e), 0);
    double best = -1e30;
    brute(seq, 0, 0.0, &best, ref, &rn);
    T_EQ_INT(n, rn);
    for (int i = 0; i < n && i < rn; i++) T_EQ_INT(out[i], ref[i]);
    /* and it is not trivially the greedy path for this model (so the check has teeth) */
    int32_t g[SD];
    int gn = 0;
    for (; gn < SD; gn++) {
        int b = 0;
        for (int v = 1; v < SV; v++)
            if (synth_logit(g, gn, v) > synth_logit(g, gn, b)) b = v;
        g[gn] = b;
        if (b == SV - 1) { gn++; break; }
    }
    int same = gn == rn;
    for (int i = 0; same && i < gn; i++) same = g[i] == ref[i];
    return !same;
}

/* 40 synthetic models; beam search must find the exhaustive optimum in each, and for some of them the
 * optimum must differ from the greedy path (else the check would have no teeth). */
static void test_beam_bruteforce(void)
{
    int differ = 0;
    for (salt = 0; salt < 40; salt++) differ += bruteforce_one();
    T_ASSERTF(differ > 0, "the optimum was the greedy path for all 40 models");
    fprintf(stderr, "  %d of 40 synthetic models have an optimum that greedy decoding misses\n", differ);
}

/* ---- beam search on the tiny model ---- */
static struct engine *G;

struct recompute {
    struct engine *g;
    int64_t P;
    int32_t seq[2][BEAM_MAX][64];
};

static int rec_step(void *ctx, int side, int slot, int parent, int t, int32_t tok, float *logits, struct err *e)
{
    struct recompute *r = ctx;
    if (t > 0) memcpy(r->seq[side][slot], r->seq[side ^ 1][parent], (size_t)t * sizeof(int32_t));
    r->seq[side][slot][t] = tok;
    llm_truncate(&r->g->llm, r->P);
    for (int i = 0; i <= t; i++)
        if (llm_forward(&r->g->llm, &r->seq[side][slot][i], NULL, 1, logits, e)) return -1;
    return 0;
}
static int rec_stop(void *ctx, int32_t tok) { return engine_is_stop(((struct recompute *)ctx)->g, tok); }

static void test_beam_engine(void)
{
    if (!G) { T_ASSERT(0); return; }
    const int32_t prompt[] = {128000, 128006, 882, 128007, 271, 9906, 1917, 128009, 128006, 78191, 128007, 271};
    const int np = (int)(sizeof prompt / sizeof *prompt), T = 6;
    struct err e = {{0}};
    int32_t a[64], b[64];
    int na = 0, nb = 0;
    /* beams = 1 without penalty is greedy decoding */
    struct sampler_params sp;
    sampler_defaults(&sp);
    sp.greedy = true;
    sp.repetition_penalty = 1.0f;
    llm_truncate(&G->llm, 0);
    T_EQ_INT(t_generate(G, prompt, NULL, np, T, &sp, NULL, NULL, a, &na, NULL, &e), 0);
    struct beam_params p = {.num_beams = 1, .length_penalty = 1.0f, .repetition_penalty = 1.0f, .max_new = T};
    llm_truncate(&G->llm, 0);
    T_EQ_INT(beam_generate(G, prompt, NULL, np, &p, NULL, NULL, b, &nb, NULL, &e), 0);
    T_EQ_INT(na, nb);
    for (int i = 0; i < na && i < nb; i++) T_EQ_INT(a[i], b[i]);
    /* 3 beams, penalty 1.2: KV save/restore equals recomputing every beam from the prompt */
    p.num_beams = 3;
    p.repetition_penalty = 1.2f;
    llm_truncate(&G->llm, 0);
    T_EQ_INT(beam_generate(G, prompt, NULL, np, &p, NULL, NULL, a, &na, NULL, &e), 0);
    static struct recompute r;
    r.g = G;
    float *first = malloc((size_t)G->cfg.vocab_size * sizeof *first);
    llm_truncate(&G->llm, 0);
    T_EQ_INT(llm_forward(&G->llm, prompt, NULL, np, first, &e), 0);
    r.P = G->llm.n_past;
    struct beam_model m = {.ctx = &r, .vocab = G->cfg.vocab_size, .step = rec_step, .is_stop = rec_stop};
    T_EQ_INT(beam_search(&m, &p, first, b, &nb, &e), 0);
    free(first);
    T_ASSERT(na > 0);
    T_EQ_INT(na, nb);
    for (int i = 0; i < na && i < nb; i++) T_EQ_INT(a[i], b[i]);
    /* and beam search differs from greedy here (else the comparison above would prove little) */
    llm_truncate(&G->llm, 0);
    int32_t gr[64];
    int ng = 0;
    sp.repetition_penalty = 1.2f;
    T_EQ_INT(t_generate(G, prompt, NULL, np, T, &sp, NULL, NULL, gr, &ng, NULL, &e), 0);
    int same = ng == na;
    for (int i = 0; same && i < ng; i++) same = gr[i] == a[i];
    if (same) fprintf(stderr, "  note: 3-beam search equals greedy on this prompt\n");
}

/* ---- a raw HTTP/1.1 client: thttp.h ---- */

static char *chat_body(const char *text, const char *image_url, int max_tokens, int stream, const char *extra)
{
    size_t n = strlen(text) + (image_url ? strlen(image_url) : 0) + (extra ? strlen(extra) : 0) + 512;
    char *b = malloc(n);
    if (image_url)
        snprintf(b, n, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":"
                       "{\"url\":\"%s\"}},{\"type\":\"text\",\"text\":\"%s\"}]}],\"temperature\":0,\"max_tokens\":%d,\"stream\":%s%s}",
                 image_url, text, max_tokens, stream ? "true" : "false", extra ? extra : "");
    else
        snprintf(b, n, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}],\"temperature\":0,"
                       "\"max_tokens\":%d,\"stream\":%s%s}",
                 text, max_tokens, stream ? "true" : "false", extra ? extra : "");
    return b;
}

static char *data_url(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *d = malloc((size_t)n);
    if (fread(d, 1, (size_t)n, f) != (size_t)n) n = 0;
    fclose(f);
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *s = malloc((size_t)n * 4 / 3 + 64), *o = s + sprintf(s, "data:image/jpeg;base64,");
    for (long i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)d[i] << 16 | (i + 1 < n ? (uint32_t)d[i + 1] << 8 : 0) | (i + 2 < n ? d[i + 2] : 0);
        *o++ = al[v >> 18 & 63];
        *o++ = al[v >> 12 & 63];
        *o++ = i + 1 < n ? al[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? al[v & 63] : '=';
    }
    *o = 0;
    free(d);
    return s;
}

#define IMG_PATH "tests/fixtures/image/gen200x150_q90_444.jpg"

static struct server *S;
static int PORT;
static char *EXP_TEXT, *EXP_IMG, *IMG_URL;

/* The answers the chat turn gives without the server (t_chat: no HTTP, no cache), to compare the server with. */
static char *engine_answer(const char *q, int with_image, int max_new)
{
    struct image im = {0};
    struct err e = {{0}};
    if (with_image && image_load(&im, IMG_PATH, NULL, &e)) return NULL;
    char content[256];
    snprintf(content, sizeof content, "%s%s", with_image ? CHAT_IMAGE_MARKER "\n" : "", q);
    struct chat_msg m = {"user", content};
    struct turn_request rq = {.msgs = &m, .n_msgs = 1, .images = &im, .n_images = with_image,
                                     .max_new = max_new};
    sampler_defaults(&rq.sp);
    rq.sp.greedy = true;
    struct turn_result res;
    char *out = NULL;
    if (!t_chat(G, &rq, NULL, NULL, &res, &e)) {
        out = strdup(res.text);
        turn_result_free(&res);
    } else {
        fprintf(stderr, "t_chat: %s\n", e.msg);
    }
    image_free(&im);
    return out;
}

static void test_http_basic(void)
{
    struct resp r = http(PORT, "GET", "/health", NULL);
    T_EQ_INT(r.status, 200);
    T_ASSERT(r.body && strstr(r.body, "\"ok\""));
    free(r.body);
    r = http(PORT, "GET", "/v1/models", NULL);
    T_EQ_INT(r.status, 200);
    T_ASSERT(r.body && strstr(r.body, "\"object\":\"list\""));
    free(r.body);
    /* plain chat = the turn, greedy; usage counts */
    char *b = chat_body("Hello there", NULL, 16, 0, NULL);
    r = http(PORT, "POST", "/v1/chat/completions", b);
    T_EQ_INT(r.status, 200);
    char *c = r.body ? json_content(r.body) : NULL;
    T_ASSERT(c && EXP_TEXT && strlen(EXP_TEXT) > 0);
    if (c && EXP_TEXT) T_EQ_STR(c, EXP_TEXT);
    T_ASSERT(r.body && strstr(r.body, "\"completion_tokens\":16") && strstr(r.body, "\"prompt_tokens\":12"));
    free(r.body);
    free(b);
    /* streamed deltas concatenate to the same text and end with [DONE] */
    b = chat_body("Hello there", NULL, 16, 1, ",\"stream_options\":{\"include_usage\":true}");
    r = http(PORT, "POST", "/v1/chat/completions", b);
    T_EQ_INT(r.status, 200);
    int done = 0;
    char *s = r.body ? sse_text(r.body, &done) : NULL;
    T_ASSERT(done);
    if (s && c) T_EQ_STR(s, c);
    T_ASSERT(r.body && strstr(r.body, "\"usage\":{\"prompt_tokens\":12"));
    free(s);
    free(r.body);
    free(b);
    /* a stop string: the answer is cut before it (and stripped) */
    if (c && strlen(c) > 8) {
        char stop[8], extra[64];
        memcpy(stop, c + 5, 3);
        stop[3] = 0;
        snprintf(extra, sizeof extra, ",\"stop\":[\"%s\"]", stop);
        const char *cut = strstr(c, stop);
        size_t k = (size_t)(cut - c);
        while (k && c[k - 1] == ' ') k--;
        b = chat_body("Hello there", NULL, 16, 0, extra);
        r = http(PORT, "POST", "/v1/chat/completions", b);
        char *sc = r.body ? json_content(r.body) : NULL;
        T_ASSERT(sc && strlen(sc) == k && !strncmp(sc, c, k));
        T_ASSERT(r.body && strstr(r.body, "\"finish_reason\":\"stop\""));
        free(sc);
        free(r.body);
        free(b);
        b = chat_body("Hello there", NULL, 16, 1, extra);
        r = http(PORT, "POST", "/v1/chat/completions", b);
        s = r.body ? sse_text(r.body, &done) : NULL;
        T_ASSERT(s && strlen(s) == k && !strncmp(s, c, k));
        free(s);
        free(r.body);
        free(b);
    }
    free(c);
    /* image chat = the turn with the image; the second time comes from the cache */
    for (int rep = 0; rep < 2; rep++) {
        b = chat_body("What", IMG_URL, 8, 0, NULL);
        r = http(PORT, "POST", "/v1/chat/completions", b);
        T_EQ_INT(r.status, 200);
        c = r.body ? json_content(r.body) : NULL;
        T_ASSERT(c && EXP_IMG);
        if (c && EXP_IMG) T_EQ_STR(c, EXP_IMG);
        free(c);
        free(r.body);
        free(b);
    }
    struct server_stats st;
    server_get_stats(S, &st);
    T_ASSERT(st.cache_hits >= 1);
    /* multi-turn: the assistant's answer goes back in; it must differ from the first turn's prompt */
    b = malloc(4096);
    snprintf(b, 4096, "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"Hello there\"},"
                      "{\"role\":\"assistant\",\"content\":\"%s\"},{\"role\":\"user\",\"content\":\"And?\"}],"
                      "\"temperature\":0,\"max_tokens\":4}", "Hi");
    r = http(PORT, "POST", "/v1/chat/completions", b);
    T_EQ_INT(r.status, 200);
    const char *pt = r.body ? strstr(r.body, "\"prompt_tokens\":") : NULL;
    T_ASSERT(pt && atoi(pt + 16) > 20); /* system + three messages */
    free(r.body);
    free(b);
}

/* Sampled streams of every length: each SSE event must land in its buffer whatever its size (the
 * event buffer once reserved no room for the NUL that formatting writes: a one-byte heap overflow on
 * ordinary streamed requests, caught here under ASan). Every stream ends with [DONE] and equals the
 * non-streamed answer for the same seed. */
static void test_http_stream_sampled(void)
{
    int bad = 0;
    for (int seed = 1; seed <= 32; seed++) {
        char *b = malloc(512);
        snprintf(b, 512, "{\"messages\":[{\"role\":\"user\",\"content\":\"tell me a story\"}],"
                         "\"temperature\":1.0,\"seed\":%d,\"max_tokens\":60,\"stream\":true}", seed);
        struct resp r = http(PORT, "POST", "/v1/chat/completions", b);
        int done = 0;
        char *st = r.body ? sse_text(r.body, &done) : NULL;
        if (r.status != 200 || !done || !st) bad++;
        if (seed % 4 == 0 && st) {
            snprintf(b, 512, "{\"messages\":[{\"role\":\"user\",\"content\":\"tell me a story\"}],"
                             "\"temperature\":1.0,\"seed\":%d,\"max_tokens\":60}", seed);
            struct resp r2 = http(PORT, "POST", "/v1/chat/completions", b);
            char *c = r2.body ? json_content(r2.body) : NULL;
            T_ASSERT(c);
            if (c) T_EQ_STR(st, c);
            free(c);
            free(r2.body);
        }
        free(st);
        free(r.body);
        free(b);
    }
    T_EQ_INT(bad, 0);
}

static void expect_error(const char *body, int status, const char *needle)
{
    struct resp r = http(PORT, "POST", "/v1/chat/completions", body);
    T_ASSERTF(r.status == status, "status %d, expected %d, for %.80s: %s", r.status, status, body, r.body ? r.body : "");
    T_ASSERTF(r.body && strstr(r.body, "\"error\"") && strstr(r.body, needle), "%s lacks %s", r.body ? r.body : "", needle);
    free(r.body);
}

static void test_http_errors(void)
{
    expect_error("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}", 400, "not valid JSON");
    expect_error("[1,2]", 400, "JSON object");
    expect_error("{\"messages\":\"hi\"}", 400, "must be an array");
    expect_error("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":\"ten\"}", 400, "max_tokens");
    expect_error("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"temperature\":true}", 400, "temperature");
    expect_error("{\"messages\":[{\"role\":\"user\",\"content\":42}]}", 400, "content");
    expect_error("{\"messages\":[{\"role\":\"tool\",\"content\":\"hi\"}]}", 400, "role 'tool'");
    expect_error("{\"messages\":[{\"role\":\"assistant\",\"content\":\"hi\"}]}", 400, "first non-system");
    char *b = chat_body("x", "data:image/png;base64,@@@notbase64", 4, 0, NULL);
    expect_error(b, 400, "base64");
    free(b);
    b = chat_body("x", "data:image/png;base64,aGVsbG8gd29ybGQ=", 4, 0, NULL); /* "hello world" */
    expect_error(b, 400, "invalid_image");
    free(b);
    b = chat_body("x", "https://example.com/cat.png", 4, 0, NULL);
    expect_error(b, 400, "remote");
    free(b);
    b = chat_body("x", "http://example.com/cat.png", 4, 0, NULL); /* plain http too (mutant json-remote-url) */
    expect_error(b, 400, "remote");
    free(b);
    b = chat_body("x", "/etc/passwd", 4, 0, NULL);
    expect_error(b, 400, "local files");
    free(b);
    expect_error("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":100000}", 400, "context_length_exceeded");
    /* a body over the limit (256 KiB in this test) */
    size_t n = 300 * 1024;
    char *big = malloc(n + 64);
    if (!big) { T_ASSERT(big); return; }
    int k = sprintf(big, "{\"messages\":[{\"role\":\"user\",\"content\":\"");
    memset(big + k, 'a', n);
    strcpy(big + k + n, "\"}]}");
    expect_error(big, 413, "request_too_large");
    free(big);
    struct resp r = http(PORT, "GET", "/nope", NULL);
    T_EQ_INT(r.status, 404);
    free(r.body);
    r = http(PORT, "GET", "/v1/chat/completions", NULL);
    T_EQ_INT(r.status, 405);
    free(r.body);
    /* still alive */
    r = http(PORT, "GET", "/health", NULL);
    T_EQ_INT(r.status, 200);
    free(r.body);
}

/* A JPEG whose header is sound and whose data ends early: the header passes the request's checks and the
 * rows decode while the request runs (image_decode_async), so the turn fails: 400 naming the image and the
 * truncation, or in a stream its error event; the server goes on. */
static void test_http_truncated_jpeg(void)
{
    FILE *f = fopen(IMG_PATH, "rb");
    T_ASSERT(f != NULL);
    if (!f) return;
    unsigned char buf[1 << 16];
    const size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    char path[] = "/tmp/minicpmv_trunc_XXXXXX";
    const int fd = mkstemp(path);
    T_ASSERT(fd >= 0 && n > 600);
    if (fd < 0) return;
    T_EQ_INT((long)write(fd, buf, n * 2 / 3), (long)(n * 2 / 3));
    close(fd);
    char *url = data_url(path);
    unlink(path);
    char *b = chat_body("What", url, 4, 0, NULL);
    expect_error(b, 400, "truncated");
    free(b);
    b = chat_body("What", url, 4, 1, NULL);
    struct resp r = http(PORT, "POST", "/v1/chat/completions", b);
    T_EQ_INT(r.status, 200);
    T_ASSERTF(r.body && strstr(r.body, "\"error\"") && strstr(r.body, "image 1") && strstr(r.body, "truncated") &&
                  strstr(r.body, "[DONE]"),
              "stream: %s", r.body ? r.body : "");
    free(r.body);
    free(b);
    free(url);
    r = http(PORT, "GET", "/health", NULL);
    T_EQ_INT(r.status, 200);
    free(r.body);
}

static void test_http_pixel_limit(void)
{
    struct server *s2 = NULL;
    struct server_options o;
    server_options_default(&o);
    o.port = 0;
    o.lim.max_pixels = 20000;
    struct err e = {{0}};
    T_EQ_INT(server_start(&s2, G, &o, &e), 0);
    if (!s2) return;
    int keep = PORT;
    PORT = server_port(s2);
    char *b = chat_body("x", IMG_URL, 4, 0, NULL);
    expect_error(b, 400, "invalid_image");
    free(b);
    PORT = keep;
    server_stop(s2);
}

/* Started without an engine (the model still loading): /health 503 "loading", /v1/... 503 model_loading
 * with Retry-After; after server_set_engine, 200. server_address names the bound port. */
static void test_http_loading(void)
{
    struct server *s2 = NULL;
    struct server_options o;
    server_options_default(&o);
    o.port = 0;
    struct err e = {{0}};
    T_EQ_INT(server_start(&s2, NULL, &o, &e), 0);
    if (!s2) return;
    const int port = server_port(s2);
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%d", port);
    T_EQ_STR(server_address(s2), want);
    struct resp r = http(port, "GET", "/health", NULL);
    T_EQ_INT(r.status, 503);
    T_ASSERT(r.retry_after && r.body && strstr(r.body, "\"status\":\"loading\""));
    free(r.body);
    char *b = chat_body("Hello there", NULL, 4, 0, NULL);
    r = http(port, "POST", "/v1/chat/completions", b);
    T_EQ_INT(r.status, 503);
    T_ASSERT(r.retry_after && r.body && strstr(r.body, "the model is still loading") && strstr(r.body, "\"code\":\"model_loading\""));
    free(r.body);
    r = http(port, "GET", "/v1/models", NULL);
    T_EQ_INT(r.status, 503);
    free(r.body);
    server_set_engine(s2, G);
    r = http(port, "GET", "/health", NULL);
    T_EQ_INT(r.status, 200);
    T_ASSERT(r.body && strstr(r.body, "\"status\":\"ok\""));
    free(r.body);
    r = http(port, "POST", "/v1/chat/completions", b);
    T_EQ_INT(r.status, 200);
    free(r.body);
    free(b);
    server_stop(s2);
}

/* --host: an unresolvable name is refused, naming it; "::1" (where the machine has it) binds in brackets. */
static void test_http_host(void)
{
    struct server *s2 = NULL;
    struct server_options o;
    server_options_default(&o);
    o.port = 0;
    o.host = "no.such.host.invalid";
    struct err e = {{0}};
    T_EQ_INT(server_start(&s2, G, &o, &e), -1);
    T_ASSERT(strstr(e.msg, "'no.such.host.invalid'") && strstr(e.msg, "cannot resolve"));
    o.host = "localhost";
    T_EQ_INT(server_start(&s2, G, &o, &e), 0);
    if (s2) {
        T_ASSERT(!strncmp(server_address(s2), "127.0.0.1:", 10) || !strncmp(server_address(s2), "[::1]:", 6));
        server_stop(s2);
        s2 = NULL;
    }
    /* ::1 where the machine has an IPv6 loopback (its first line in /proc/net/if_inet6 is all zeros and a 1) */
    char line[256] = "";
    FILE *f = fopen("/proc/net/if_inet6", "r");
    int have6 = 0;
    while (f && fgets(line, sizeof line, f)) have6 |= !strncmp(line, "00000000000000000000000000000001 ", 33);
    if (f) fclose(f);
    if (!have6) { T_SKIP(test_http_host, "no IPv6 loopback (/proc/net/if_inet6): --host ::1 not tried"); return; }
    o.host = "::1";
    T_EQ_INT(server_start(&s2, G, &o, &e), 0);
    if (!s2) return;
    T_ASSERT(!strncmp(server_address(s2), "[::1]:", 6));
    server_stop(s2);
}

/* A client that goes away mid-stream cancels its generation; the server carries on. */
static void test_http_disconnect(void)
{
    struct server_stats a, z;
    server_get_stats(S, &a);
    char *b = chat_body("Hello there", NULL, 900, 1, NULL);
    int fd = connect_port(PORT);
    T_ASSERT(fd >= 0 && !send_request(fd, "POST", "/v1/chat/completions", b, strlen(b)));
    char buf[512];
    T_ASSERT(recv(fd, buf, sizeof buf, 0) > 0); /* the headers and a first event */
    close(fd);
    free(b);
    double t0 = time_now();
    do {
        usleep(20000);
        server_get_stats(S, &z);
    } while (z.cancelled == a.cancelled && time_now() - t0 < 20);
    T_EQ_INT(z.cancelled, a.cancelled + 1);
    T_ASSERTF(time_now() - t0 < 5, "cancel took %.1f s", time_now() - t0);
    struct resp r = http(PORT, "GET", "/health", NULL);
    T_EQ_INT(r.status, 200);
    free(r.body);
}

/* ---- concurrency ---- */
struct load {
    int port, i, ok, kind;
    char why[160];
};

static void *load_one(void *p)
{
    struct load *L = p;
    char *b = NULL;
    switch (L->kind) {
    case 0: { /* plain */
        b = chat_body("Hello there", NULL, 16, 0, NULL);
        struct resp r = http(L->port, "POST", "/v1/chat/completions", b);
        char *c = r.status == 200 ? json_content(r.body) : NULL;
        L->ok = c && !strcmp(c, EXP_TEXT);
        if (!L->ok) snprintf(L->why, sizeof L->why, "plain: status %d", r.status);
        free(c);
        free(r.body);
        break;
    }
    case 1: { /* streamed */
        b = chat_body("Hello there", NULL, 16, 1, NULL);
        struct resp r = http(L->port, "POST", "/v1/chat/completions", b);
        int done = 0;
        char *s = r.status == 200 ? sse_text(r.body, &done) : NULL;
        L->ok = s && done && !strcmp(s, EXP_TEXT);
        if (!L->ok) snprintf(L->why, sizeof L->why, "stream: status %d", r.status);
        free(s);
        free(r.body);
        break;
    }
    case 2: { /* malformed */
        struct resp r = http(L->port, "POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\"");
        L->ok = r.status == 400;
        if (!L->ok) snprintf(L->why, sizeof L->why, "malformed: status %d", r.status);
        free(r.body);
        break;
    }
    case 3: { /* disconnects early */
        b = chat_body("Hello there", NULL, 400, L->i % 2, NULL);
        int fd = connect_port(L->port);
        L->ok = fd >= 0 && !send_request(fd, "POST", "/v1/chat/completions", b, strlen(b));
        usleep(1000 * (L->i % 7));
        if (fd >= 0) close(fd);
        break;
    }
    default: { /* image */
        b = chat_body("What", IMG_URL, 8, L->i % 2, NULL);
        struct resp r = http(L->port, "POST", "/v1/chat/completions", b);
        int done = 1;
        char *c = r.status != 200 ? NULL : L->i % 2 ? sse_text(r.body, &done) : json_content(r.body);
        L->ok = c && done && !strcmp(c, EXP_IMG);
        if (!L->ok) snprintf(L->why, sizeof L->why, "image: status %d", r.status);
        free(c);
        free(r.body);
    }
    }
    free(b);
    return NULL;
}

static void test_http_load(void)
{
    const char *env = getenv("MINICPMV_LOAD_N");
    int N = env ? atoi(env) : 60, C = 16;
    if (N < 1 || N > 100000) N = 60;
    struct load *L = calloc((size_t)N, sizeof *L);
    pthread_t th[16];
    double t0 = time_now();
    int bad = 0, counts[5] = {0};
    for (int i = 0; i < N; i += C) {
        int m = N - i < C ? N - i : C;
        for (int k = 0; k < m; k++) {
            L[i + k] = (struct load){.port = PORT, .i = i + k, .kind = (i + k) % 5};
            pthread_create(&th[k], NULL, load_one, &L[i + k]);
        }
        for (int k = 0; k < m; k++) pthread_join(th[k], NULL);
    }
    for (int i = 0; i < N; i++) {
        counts[L[i].kind]++;
        if (!L[i].ok) { bad++; fprintf(stderr, "  request %d: %s\n", i, L[i].why); }
    }
    struct server_stats st;
    server_get_stats(S, &st);
    fprintf(stderr, "  load: %d requests (%d plain, %d streamed, %d malformed, %d disconnecting, %d image) in %.1f s, "
                    "16 concurrent; server: %ld ok, %ld refused, %ld cancelled, %ld failed, %ld busy\n",
            N, counts[0], counts[1], counts[2], counts[3], counts[4], time_now() - t0, st.ok, st.client_errors,
            st.cancelled, st.failed, st.busy);
    T_EQ_INT(bad, 0);
    T_EQ_INT(st.failed, 0);
    struct resp r = http(PORT, "GET", "/health", NULL);
    T_EQ_INT(r.status, 200);
    free(r.body);
    free(L);
}

/* With room for one waiting request, a burst gets 503 + Retry-After for the rest; none fails otherwise. */
struct qarg {
    int port;
    struct resp r;
};

static void *queue_one(void *p)
{
    struct qarg *a = p;
    char *b = chat_body("Hello there", NULL, 150, 0, NULL);
    a->r = http(a->port, "POST", "/v1/chat/completions", b);
    free(b);
    return NULL;
}

static void test_http_queue_full(void)
{
    struct server *s2 = NULL;
    struct server_options o;
    server_options_default(&o);
    o.port = 0;
    o.queue = 1;
    struct err e = {{0}};
    T_EQ_INT(server_start(&s2, G, &o, &e), 0);
    if (!s2) return;
    enum { NB = 6 };
    struct qarg args[NB];
    pthread_t th[NB];
    for (int i = 0; i < NB; i++) {
        args[i] = (struct qarg){.port = server_port(s2)};
        pthread_create(&th[i], NULL, queue_one, &args[i]);
    }
    int n200 = 0, n503 = 0, retry = 1;
    for (int i = 0; i < NB; i++) {
        pthread_join(th[i], NULL);
        if (args[i].r.status == 200) n200++;
        if (args[i].r.status == 503) { n503++; retry &= args[i].r.retry_after && strstr(args[i].r.body, "queue_full"); }
        free(args[i].r.body);
    }
    T_ASSERTF(n200 >= 1 && n503 >= 1 && n200 + n503 == NB, "%d ok, %d busy of %d", n200, n503, NB);
    T_ASSERT(retry);
    server_stop(s2);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    T_RUN(test_beam_bruteforce);
    const char *dir = t_tiny_model(1);
    struct engine_options o;
    engine_options_default(&o);
    o.model_dir = dir;
    o.device = "cpu";
    o.quiet = 1;
    o.ctx = 1024;
    struct err e = {{0}};
    if (!dir || engine_open(&G, &o, &e)) {
        fprintf(stderr, "cannot open the tiny model: %s\n", e.msg);
        T_RUN(test_beam_engine); /* fails */
        return t_main_end("test_server");
    }
    T_RUN(test_beam_engine);
    EXP_TEXT = engine_answer("Hello there", 0, 16);
    EXP_IMG = engine_answer("What", 1, 8);
    IMG_URL = data_url(IMG_PATH);
    struct server_options so;
    server_options_default(&so);
    so.port = 0;
    so.queue = 32;
    so.lim.max_body = 256 * 1024;
    if (server_start(&S, G, &so, &e)) fprintf(stderr, "server_start: %s\n", e.msg);
    if (S) {
        PORT = server_port(S);
        T_RUN(test_http_basic);
        T_RUN(test_http_stream_sampled);
        T_RUN(test_http_errors);
        T_RUN(test_http_truncated_jpeg);
    T_RUN(test_http_pixel_limit);
        T_RUN(test_http_loading);
        T_RUN(test_http_host);
        T_RUN(test_http_disconnect);
        T_RUN(test_http_load);
        T_RUN(test_http_queue_full);
        server_stop(S);
    } else {
        T_ASSERT(0);
    }
    free(EXP_TEXT);
    free(EXP_IMG);
    free(IMG_URL);
    engine_close(G);
    return t_main_end("test_server");
}
