/* test_server_ready.c: readiness as a load balancer sees it (deploy/README.md). GET /health answers 200
 * only while a request sent now would be run: 503 "loading" before the engine is set (test_server.c
 * covers that state), 503 "stopping" once the drain began. During the drain a connection opened before
 * it still gets answers (/health 503, a new chat request 503 shutting_down: both safe to retry
 * elsewhere, neither was run), a request in flight finishes with 200, and a new connection is refused
 * at once instead of waiting in the listen backlog until the drain ends. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server.h"
#include "t.h"
#include "thttp.h"
#include "tutil.h"

static struct engine *G;

/* One request on a kept-alive connection; reads one answer (Content-Length bodies only). */
static struct resp ka_request(int fd, const char *method, const char *path, const char *body)
{
    struct resp r = {0};
    char h[512];
    size_t blen = body ? strlen(body) : 0;
    int n = snprintf(h, sizeof h, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n"
                                  "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n", method, path, blen);
    if (send_all(fd, h, (size_t)n) || (blen && send_all(fd, body, blen))) return r;
    char raw[8192];
    size_t len = 0;
    char *end = NULL;
    long clen = -1;
    for (;;) {
        if (!end && (end = strstr(raw, "\r\n\r\n"))) {
            const char *cl = strcasestr(raw, "\r\nContent-Length:");
            clen = cl && cl < end ? strtol(cl + 17, NULL, 10) : -1;
        }
        if (end && clen >= 0 && (size_t)(end + 4 - raw) + (size_t)clen <= len) break;
        if (len + 1 >= sizeof raw) return r;
        ssize_t k = recv(fd, raw + len, sizeof raw - len - 1, 0);
        if (k <= 0) return r;
        len += (size_t)k;
        raw[len] = 0;
    }
    if (sscanf(raw, "HTTP/1.%*d %d", &r.status) != 1) return (struct resp){0};
    *end = 0;
    r.retry_after = strcasestr(raw, "\r\nRetry-After:") != NULL;
    r.len = (size_t)clen;
    r.body = strndup(end + 4, r.len);
    return r;
}

struct bg {
    struct server *s;
    int port;
    struct resp r;
    int cut;
};

static void *bg_post(void *p)
{
    struct bg *b = p;
    b->r = http(b->port, "POST", "/v1/chat/completions",
                "{\"messages\":[{\"role\":\"user\",\"content\":\"Hello there\"}],\"temperature\":0,\"max_tokens\":16}");
    return NULL;
}

static void *bg_drain(void *p)
{
    struct bg *b = p;
    b->cut = server_drain(b->s, 0);
    return NULL;
}

static void test_health_drain(void)
{
    struct server *s = NULL;
    struct server_options o;
    server_options_default(&o);
    o.port = 0;
    struct err e = {{0}};
    T_EQ_INT(server_start(&s, G, &o, &e), 0);
    if (!s) return;
    const int port = server_port(s);
    int k = connect_port(port); /* the balancer's kept-alive connection, opened while ready */
    T_ASSERT(k >= 0);
    struct resp r = ka_request(k, "GET", "/health", NULL);
    T_EQ_INT(r.status, 200);
    T_ASSERT(r.body && strstr(r.body, "\"status\":\"ok\"") && !r.retry_after);
    free(r.body);
    /* a request in flight, then the drain */
    struct bg req = {.port = port}, dr = {.s = s};
    pthread_t tr, td;
    pthread_create(&tr, NULL, bg_post, &req);
    int running = 0;
    for (int i = 0; i < 500 && !running; i++) {
        r = ka_request(k, "GET", "/health", NULL);
        running = r.body && strstr(r.body, "\"running\":1");
        free(r.body);
        if (!running) usleep(10000);
    }
    T_ASSERT(running);
    pthread_create(&td, NULL, bg_drain, &dr);
    int st = 0;
    for (int i = 0; i < 500 && st != 503; i++) {
        r = ka_request(k, "GET", "/health", NULL);
        st = r.status;
        if (st == 503) T_ASSERTF(r.retry_after && r.body && strstr(r.body, "\"status\":\"stopping\""), "%s", r.body);
        free(r.body);
        if (st != 503) usleep(10000);
    }
    T_EQ_INT(st, 503);
    /* a new connection is refused at once (not left in the backlog until the drain ends) */
    double t0 = time_now();
    int fd = connect_port(port);
    T_ASSERTF(fd < 0, "a connection opened during the drain was accepted by the kernel");
    T_ASSERTF(time_now() - t0 < 1, "connect took %.1f s", time_now() - t0);
    if (fd >= 0) close(fd);
    /* a new request on the old connection: 503 shutting_down with Retry-After, not run */
    r = ka_request(k, "POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":2}");
    T_EQ_INT(r.status, 503);
    T_ASSERT(r.retry_after && r.body && strstr(r.body, "\"code\":\"shutting_down\""));
    free(r.body);
    pthread_join(td, NULL);
    pthread_join(tr, NULL);
    T_EQ_INT(dr.cut, 0);
    T_EQ_INT(req.r.status, 200); /* the request in flight was finished */
    T_ASSERT(req.r.body && strstr(req.r.body, "\"completion_tokens\":"));
    free(req.r.body);
    struct server_stats ss;
    server_get_stats(s, &ss);
    T_EQ_INT(ss.ok, 1);
    T_EQ_INT(ss.busy, 1);
    close(k);
    server_stop(s);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const char *dir = t_tiny_model(1);
    struct engine_options o;
    engine_options_default(&o);
    o.model_dir = dir;
    o.device = "cpu";
    o.quiet = 1;
    o.ctx = 512;
    struct err e = {{0}};
    if (!dir || engine_open(&G, &o, &e)) {
        fprintf(stderr, "cannot open the tiny model: %s\n", e.msg);
        T_ASSERT(0);
        return t_main_end("test_server_ready");
    }
    T_RUN(test_health_drain);
    engine_close(G);
    return t_main_end("test_server_ready");
}
