/* fuzz_http.c: libFuzzer target for the HTTP layer: each input is sent as raw bytes to a live server on
 * loopback (src/server_http.c with libmicrohttpd, the guard, the request parser, the answers' JSON), then
 * the write side is closed and the answer read. The engine is replaced by stubs (a fixed three-word
 * answer per choice, streamed or not, one choice after another; the prompt counted as 5 tokens per
 * message, a raw prompt as 1 token per 4 bytes or its ids), so what is fuzzed is framing, routing, limits,
 * auth, parsing, the queue and the streaming path. The server must answer every input with a
 * well-formed status line or close, and must stay alive (checked with /health every 256 inputs).
 * Built and run by tools/fuzz.sh (make fuzz). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "scheduler.h"
#include "server.h"
#include "tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ---- stubs for the engine side (imgcache.h, turn.h, engine.h): 5 tokens per message, a fixed answer ---- */
struct imgcache {
    int hits;
};
int imgcache_init(struct imgcache **out, int capacity, struct err *e)
{
    (void)capacity;
    (void)e;
    *out = calloc(1, sizeof **out);
    return *out ? 0 : -1;
}
void imgcache_free(struct imgcache *c) { free(c); }
void imgcache_set_max_bytes(struct imgcache *c, size_t max_bytes) { (void)c, (void)max_bytes; }
size_t imgcache_bytes(const struct imgcache *c) { (void)c; return 0; }
int imgcache_hits(const struct imgcache *c) { return c ? c->hits : 0; }

struct turn {
    int n_prompt, max_new;
};
int turn_prepare(struct turn **out, const struct engine *g, const struct turn_request *rq, struct err *e)
{
    (void)g;
    *out = NULL;
    const int n = rq->raw_text ? 1 + (int)(strlen(rq->raw_text) / 4) : rq->raw_ids ? rq->n_raw_ids : 5 * rq->n_msgs + 64 * rq->n_images;
    for (int i = 0; rq->raw_ids && i < rq->n_raw_ids; i++)
        if (rq->raw_ids[i] < 0 || rq->raw_ids[i] >= 128256) return err_set(e, "token id %d is outside the vocabulary", rq->raw_ids[i]);
    if (rq->max_new < 0) return err_set(e, "the answer length must be at least 1 token");
    if (rq->max_new > 0 ? n + rq->max_new > 2048 : n + 1 > 2048)
        return err_set(e, "this model's maximum context length is 2048 tokens (--ctx): %d tokens do not fit", n);
    struct turn *t = calloc(1, sizeof *t);
    if (!t) return err_set(e, "out of memory");
    t->n_prompt = n;
    t->max_new = rq->max_new > 0 ? rq->max_new : 1024;
    *out = t;
    return 0;
}
int turn_prompt_tokens(const struct turn *t) { return t->n_prompt; }
int turn_max_new(const struct turn *t) { return t->max_new; }
void turn_free(struct turn *t) { free(t); }
const struct turn_logprob *turn_logprobs_so_far(const struct turn *t, int *n)
{
    (void)t;
    *n = 0;
    return NULL;
}
int turn_run(struct turn *t, struct engine *g, const struct turn_io *io, struct turn_result *r, struct err *e)
{
    (void)g;
    (void)e;
    memset(r, 0, sizeof *r);
    static const char *words[] = {"fuzzy", " answer", " here"};
    int n = t->max_new < 3 ? t->max_new : 3;
    for (int i = 0; i < n; i++)
        if (io && io->cb) io->cb(io->cb_ctx, words[i], strlen(words[i]));
    r->text = strdup(n >= 3 ? "fuzzy answer here" : n == 2 ? "fuzzy answer" : "fuzzy");
    r->n_prompt = t->n_prompt;
    r->n_gen = n;
    r->finish = n < t->max_new ? "stop" : "length";
    return r->text ? 0 : -1;
}
void turn_result_free(struct turn_result *r)
{
    free(r->text);
    free(r->ids);
    free(r->lp);
    memset(r, 0, sizeof *r);
}
/* response_format's vocabulary: not in this target (a constrained request is answered with the refusal
 * the server gives when the tries cannot be built) */
int turn_vocab_init(struct grammar_vocab **out, const struct engine *g, struct err *e)
{
    (void)g;
    *out = NULL;
    return err_set(e, "no vocabulary in this fuzz target");
}
void grammar_vocab_free(struct grammar_vocab *v) { (void)v; }
/* one slot: the worker never starts the scheduler */
int engine_slots(const struct engine *g) { (void)g; return 1; }
void engine_thread_init(const struct engine *g) { (void)g; }
const struct tokenizer *engine_tokenizer(const struct engine *g) { (void)g; return NULL; }
int engine_device_memory(const struct engine *g, struct engine_device_mem *rows, int max_rows)
{
    (void)g, (void)rows, (void)max_rows;
    return 0;
}
void engine_kv_use(const struct engine *g, struct engine_kv_use *u)
{
    (void)g;
    memset(u, 0, sizeof *u);
}
int sched_init(struct scheduler **out, struct engine *g, struct err *e)
{
    (void)g;
    *out = NULL;
    return err_set(e, "no scheduler in this target");
}
void sched_free(struct scheduler *s) { (void)s; }
int sched_active(const struct scheduler *s) { (void)s; return 0; }
int sched_add(struct scheduler *s, struct turn *t, const struct turn_io *io, sched_done_cb done, void *ctx)
{
    (void)s, (void)t, (void)io, (void)done, (void)ctx;
    return -1;
}
int sched_step(struct scheduler *s) { (void)s; return 0; }
int tokenizer_token_bytes(const struct tokenizer *tok, int32_t id, const char **bytes, size_t *len)
{
    (void)tok, (void)id;
    *bytes = "";
    *len = 0;
    return 0;
}

static struct engine *G = (struct engine *)&G; /* opaque: only the stubs above see it */
static struct server *S;
static int PORT;

static int exchange(const uint8_t *data, size_t size, char *out, size_t cap, size_t *got)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)PORT)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int fd = -1;
    for (int attempt = 0; attempt < 50 && fd < 0; attempt++) {
        fd = socket(AF_INET, SOCK_STREAM, 0);
        /* closed with a reset, so the client side leaves no TIME_WAIT behind: tens of thousands of
         * inputs would otherwise use up the ephemeral ports (connect: EADDRNOTAVAIL) */
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a)) {
            fprintf(stderr, "fuzz_http: connect: %s (attempt %d)\n", strerror(errno), attempt + 1);
            close(fd);
            fd = -1;
            usleep(100 * 1000);
        }
    }
    if (fd < 0) return -1;
    size_t off = 0;
    while (off < size) {
        ssize_t k = send(fd, data + off, size - off, MSG_NOSIGNAL);
        if (k <= 0) break;
        off += (size_t)k;
    }
    shutdown(fd, SHUT_WR);
    *got = 0;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 3000) <= 0) break;
        ssize_t k = recv(fd, out + *got, cap - 1 - *got, 0);
        if (k <= 0) break;
        *got += (size_t)k;
        if (*got + 1 >= cap) *got = 0; /* keep reading (a long stream), keep the tail */
    }
    out[*got] = 0;
    close(fd);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static long n_inputs;
    if (!S) {
        signal(SIGPIPE, SIG_IGN);
        struct server_options o;
        server_options_default(&o);
        o.port = 0;
        o.read_timeout = 2;
        o.lim.max_body = 64 * 1024;
        o.lim.max_pixels = 1 << 16;
        o.lim.max_images = 2;
        o.api_key = getenv("FUZZ_API_KEY"); /* run once with it set to cover the 401 path */
        struct err e;
        CHECKF(server_start(&S, G, &o, &e) == 0, "%s", e.msg);
        PORT = server_port(S);
    }
    static char buf[1 << 16];
    size_t got = 0;
    CHECK(exchange(data, size, buf, sizeof buf, &got) == 0); /* the server still accepts connections */
    if (got >= 12 && !strncmp(buf, "HTTP/1.", 7)) {
        int status = atoi(buf + 9);
        CHECKF(status >= 100 && status < 600, "status line: %.40s", buf);
        CHECKF(status != 500, "a 500 for input of %zu bytes: %.300s", size, buf);
    }
    if (++n_inputs % 256 == 0) {
        static const char h[] = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        CHECK(exchange((const uint8_t *)h, sizeof h - 1, buf, sizeof buf, &got) == 0);
        CHECKF(strstr(buf, "200 OK") && strstr(buf, "\"ok\""), "/health: %.200s", buf);
    }
    return 0;
}
