/* server_http.c: the HTTP side of the server (see server.h). libmicrohttpd runs one thread per
 * connection (so handlers may block); they parse and validate, then hand a job to a bounded queue.
 * One worker thread owns the engine and runs the jobs in order. A non-streamed request waits for its
 * job; a streamed one returns a callback response that blocks on the job's buffer of SSE events.
 * Both watch the client's socket (POLLRDHUP) while they wait, so a client that goes away cancels its
 * generation; the request-completed callback cancels too. server_stop drains the queue first.
 * The server may start without an engine (the port is bound while the model loads): until
 * server_set_engine hands it one, /health answers 503 {"status":"loading"} and /v1/... 503 with
 * Retry-After. --host is resolved with getaddrinfo (names, IPv4, IPv6). The chat page (o.ui_page) is
 * answered at / and /index.html, without the API key (the page asks for it), loaded or not. */
#include "server.h"
#include "server_impl.h"

#include <microhttpd.h>
#include <arpa/inet.h>
#include <cJSON.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include <errno.h>
#include <strings.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct conn {
    char *body;
    size_t len, cap;
    int too_big;
    int refused;                 /* a response was queued on the first call (401/413/415/...) */
    struct job *job;
};

void server_options_default(struct server_options *o)
{
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1";
    o->port = 8080;
    o->queue = 16;
    o->image_cache = 8;
    o->max_connections = 256;
    o->read_timeout = 30;
    o->lim.max_body = 32u << 20;
    o->lim.max_beam_tokens = 8192;
    o->lim.max_image_bytes = (int64_t)1 << 30;
    o->lim.max_images = 8;
    o->lim.max_messages = 256;
    o->lim.max_pixels = 40000000;
}

/* Waits on cv for at most 50 ms (the poll interval of every wait here: the waiter rechecks its
 * condition and the client's socket). */
void srv_wait_50ms(pthread_cond_t *cv, pthread_mutex_t *mu)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 50 * 1000000L;
    if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
    pthread_cond_timedwait(cv, mu, &ts);
}

void srv_job_release(struct job *j)
{
    pthread_mutex_lock(&j->mu);
    int left = --j->refs;
    pthread_mutex_unlock(&j->mu);
    if (left) return;
    struct server *s = j->srv;
    server_request_free(&j->rq);
    free(j->body);
    strbuf_free(&j->ev);
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j);
    pthread_mutex_lock(&s->mu);
    s->live_jobs--;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static int fd_gone(int fd)
{
    if (fd < 0) return 0;
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

/* The engine, or NULL while the model loads. */
struct engine *srv_engine(struct server *s)
{
    pthread_mutex_lock(&s->mu);
    struct engine *g = s->g;
    pthread_mutex_unlock(&s->mu);
    return g;
}

void srv_stat_add(struct server *s, long *field)
{
    pthread_mutex_lock(&s->mu);
    (*field)++;
    pthread_mutex_unlock(&s->mu);
}

/* Appends one SSE event "data: <json>\n\n" (json freed); caller holds j->mu. When memory runs out
 * the event is dropped and the stream ends with an error event (or nothing if even that fails). */
void srv_job_event(struct job *j, char *json)
{
    if (!json) return;
    strbuf_printf(&j->ev, "data: %s\n\n", json);
    free(json);
}

static void add_cors(struct server *s, struct MHD_Response *r)
{
    if (!s->o.cors_origin) return;
    MHD_add_response_header(r, "Access-Control-Allow-Origin", s->o.cors_origin);
    if (strcmp(s->o.cors_origin, "*")) MHD_add_response_header(r, "Vary", "Origin");
}

static enum MHD_Result send_json(struct server *s, struct MHD_Connection *c, int status, char *json, int retry_after)
{
    if (!json) json = strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}");
    struct MHD_Response *r = MHD_create_response_from_buffer(json ? strlen(json) : 0, json, MHD_RESPMEM_MUST_FREE);
    if (!r) { free(json); return MHD_NO; }
    MHD_add_response_header(r, "Content-Type", "application/json");
    add_cors(s, r);
    if (status == 401) MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    if (retry_after) MHD_add_response_header(r, "Retry-After", "1");
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result send_error(struct server *s, struct MHD_Connection *c, int status, const char *type, const char *code,
                                  const char *msg)
{
    return send_json(s, c, status, server_error_json(msg, type, NULL, code), status == 503);
}

static int is_page(const struct server *s, const char *url)
{
    return s->o.ui_page && (!strcmp(url, "/") || !strcmp(url, "/index.html"));
}

/* The chat page: static bytes, its own CSP (this server only, the page's inline blocks by hash). */
static enum MHD_Result send_page(struct server *s, struct MHD_Connection *c)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(s->o.ui_page_len, (void *)s->o.ui_page, MHD_RESPMEM_PERSISTENT);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", "text/html; charset=utf-8");
    if (s->o.ui_csp) MHD_add_response_header(r, "Content-Security-Policy", s->o.ui_csp);
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "X-Frame-Options", "DENY");
    MHD_add_response_header(r, "Referrer-Policy", "no-referrer");
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    enum MHD_Result ok = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ok;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    struct job *j = cls;
    pthread_mutex_lock(&j->mu);
    while (j->off == j->ev.len && !j->done) {
        srv_wait_50ms(&j->cv, &j->mu);
        if (j->off == j->ev.len && !j->done && fd_gone(j->fd)) {
            atomic_store(&j->cancel, 1);
            pthread_mutex_unlock(&j->mu);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
    }
    ssize_t n;
    if (j->off == j->ev.len) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        size_t k = j->ev.len - j->off < max ? j->ev.len - j->off : max;
        memcpy(buf, j->ev.p + j->off, k);
        j->off += k;
        n = (ssize_t)k;
    }
    pthread_mutex_unlock(&j->mu);
    return n;
}

static void stream_free(void *cls) { srv_job_release(cls); }

/* POST /v1/chat/completions and /v1/completions: parse, queue, then wait for the answer or stream it. */
static enum MHD_Result completions(struct server *s, struct MHD_Connection *c, struct conn *cs, enum server_api api)
{
    srv_stat_add(s, &s->st.requests);
    if (cs->too_big) {
        srv_stat_add(s, &s->st.client_errors);
        char msg[128];
        snprintf(msg, sizeof msg, "the request body is over the limit of %zu bytes", s->o.lim.max_body);
        return send_error(s, c, 413, "invalid_request_error", "request_too_large", msg);
    }
    struct engine *g = srv_engine(s);
    if (!g) {
        srv_stat_add(s, &s->st.busy);
        return send_error(s, c, 503, "server_error", "model_loading", "the model is still loading; retry later");
    }
    struct job *j = calloc(1, sizeof *j);
    if (!j) return send_error(s, c, 500, "server_error", NULL, "out of memory");
    char *ej = NULL;
    int st = server_request_parse(&j->rq, api, cs->body ? cs->body : "", cs->len, g, &s->o.lim, &ej);
    if (st) {
        free(j);
        srv_stat_add(s, &s->st.client_errors);
        return send_json(s, c, st, ej, st == 503);
    }
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    j->srv = s;
    j->refs = 2; /* the connection and the worker */
    pthread_mutex_lock(&s->mu);
    s->live_jobs++;
    pthread_mutex_unlock(&s->mu);
    j->created = (long)time(NULL);
    j->t_arrive = time_now();
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    j->fd = ci ? ci->connect_fd : -1;
    pthread_mutex_lock(&s->mu);
    int full = s->qn >= s->o.queue, stopping = s->stopping;
    if (!full && !stopping) {
        snprintf(j->id, sizeof j->id, "%s-%ld-%lx", api == SERVER_API_CHAT ? "chatcmpl" : "cmpl", ++s->next_id,
                 (unsigned long)(time_now() * 1e6));
        s->q[(s->qhead + s->qn) % s->o.queue] = j;
        s->qn++;
        pthread_cond_signal(&s->cv);
    } else {
        s->st.busy++;
    }
    pthread_mutex_unlock(&s->mu);
    if (full || stopping) {
        j->refs = 1;
        srv_job_release(j);
        return send_error(s, c, 503, "server_error", stopping ? "shutting_down" : "queue_full",
                          stopping ? "the server is shutting down" : "the server is busy (request queue full); retry later");
    }
    cs->job = j;
    if (j->rq.stream) {
        pthread_mutex_lock(&j->mu);
        j->refs++; /* the response's */
        pthread_mutex_unlock(&j->mu);
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, j, stream_free);
        if (!r) {
            srv_job_release(j);
            atomic_store(&j->cancel, 1);
            return MHD_NO;
        }
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        add_cors(s, r);
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        enum MHD_Result ok = MHD_queue_response(c, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        return ok;
    }
    pthread_mutex_lock(&j->mu);
    while (!j->done) {
        srv_wait_50ms(&j->cv, &j->mu);
        if (!j->done && fd_gone(j->fd)) atomic_store(&j->cancel, 1);
    }
    char *body = j->body;
    j->body = NULL;
    int status = j->status;
    pthread_mutex_unlock(&j->mu);
    return send_json(s, c, status, body, 0);
}

static enum MHD_Result count_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    (void)kind;
    (void)value;
    int *n = cls;
    if (!strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH)) n[0]++;
    if (!strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING)) n[1]++;
    return MHD_YES;
}

/* The checks that need only the headers, made on the first call so that a refused request is answered
 * before its body is read (no "100 Continue" for a body that is refused anyway). Returns 0 to go on, or
 * queues the refusal and returns 1 (*ok = what MHD_queue_response said). */
static int first_call_refusal(struct server *s, struct MHD_Connection *c, const char *url, const char *method,
                              enum MHD_Result *ok)
{
    int n[2] = {0, 0};
    MHD_get_connection_values(c, MHD_HEADER_KIND, count_header, n);
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (n[0] > 1 || (n[0] && n[1])) {
        *ok = send_error(s, c, 400, "invalid_request_error", "bad_request",
                         n[0] > 1 ? "more than one Content-Length header" : "both Content-Length and Transfer-Encoding");
        return 1;
    }
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(cl, &end, 10);
        if (end == cl || *end || errno || cl[0] == '-') {
            *ok = send_error(s, c, 400, "invalid_request_error", "bad_request", "the Content-Length header is not a number");
            return 1;
        }
        if (v > s->o.lim.max_body) {
            srv_stat_add(s, &s->st.requests);
            srv_stat_add(s, &s->st.client_errors);
            char msg[128];
            snprintf(msg, sizeof msg, "the request body is over the limit of %zu bytes", s->o.lim.max_body);
            *ok = send_error(s, c, 413, "invalid_request_error", "request_too_large", msg);
            return 1;
        }
    }
    if (!strcmp(method, "OPTIONS")) {
        /* a CORS preflight: answered only when --cors-origin allows it */
        struct MHD_Response *r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        if (!r) { *ok = MHD_NO; return 1; }
        if (s->o.cors_origin) {
            add_cors(s, r);
            MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
            MHD_add_response_header(r, "Access-Control-Allow-Headers", "Authorization, Content-Type");
            MHD_add_response_header(r, "Access-Control-Max-Age", "600");
        }
        *ok = MHD_queue_response(c, s->o.cors_origin ? MHD_HTTP_NO_CONTENT : MHD_HTTP_FORBIDDEN, r);
        MHD_destroy_response(r);
        return 1;
    }
    if (s->o.api_key && strcmp(url, "/health") && strcmp(url, "/metrics") && !is_page(s, url)) {
        const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
        if (!guard_bearer_ok(s->o.api_key, auth)) {
            srv_stat_add(s, &s->st.unauthorized);
            *ok = send_error(s, c, 401, "invalid_request_error", "invalid_api_key",
                             auth ? "incorrect API key provided" : "an API key is required (Authorization: Bearer KEY)");
            return 1;
        }
    }
    if ((!strcmp(url, "/v1/chat/completions") || !strcmp(url, "/v1/completions")) && !strcmp(method, "POST") &&
        !guard_json_content_type(MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE))) {
        srv_stat_add(s, &s->st.requests);
        srv_stat_add(s, &s->st.client_errors);
        *ok = send_error(s, c, 415, "invalid_request_error", "unsupported_media_type",
                         "the body must be sent as Content-Type: application/json");
        return 1;
    }
    return 0;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                               const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls)
{
    (void)version;
    struct server *s = cls;
    struct conn *cs = *con_cls;
    if (!cs) {
        if (!(cs = calloc(1, sizeof *cs))) return MHD_NO;
        *con_cls = cs;
        enum MHD_Result ok;
        if (first_call_refusal(s, c, url, method, &ok)) {
            cs->refused = 1;
            return ok;
        }
        return MHD_YES;
    }
    if (cs->refused) {
        *upload_data_size = 0; /* the answer is queued; what else comes is dropped */
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (cs->too_big || n > s->o.lim.max_body - cs->len) {
            cs->too_big = 1;
            return MHD_YES; /* keep reading (the read deadline bounds it), then answer 413 */
        }
        if (cs->len + n + 1 > cs->cap) {
            size_t nc = (cs->len + n + 1) * 2;
            if (nc > s->o.lim.max_body + 1) nc = s->o.lim.max_body + 1;
            char *x = realloc(cs->body, nc);
            if (!x) return MHD_NO;
            cs->body = x;
            cs->cap = nc;
        }
        memcpy(cs->body + cs->len, upload_data, n);
        cs->len += n;
        cs->body[cs->len] = 0;
        return MHD_YES;
    }
    const union MHD_ConnectionInfo *sci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    if (sci && sci->socket_context) guard_conn_received(s->guard, sci->socket_context, 1);
    const int get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    if (is_page(s, url)) {
        if (!get && strcmp(method, "HEAD")) return send_error(s, c, 405, "invalid_request_error", NULL, "use GET /");
        return send_page(s, c);
    }
    if (!strcmp(url, "/health")) {
        if (!get) return send_error(s, c, 405, "invalid_request_error", NULL, "use GET /health");
        pthread_mutex_lock(&s->mu);
        /* readiness for a load balancer: 200 only when a request sent now would be run */
        const int loading = !s->g, ready = !loading && !s->stopping;
        char *b = malloc(128);
        if (b) snprintf(b, 128, "{\"status\":\"%s\",\"queued\":%d,\"running\":%d}",
                        s->stopping ? "stopping" : loading ? "loading" : "ok", s->qn, s->n_running);
        pthread_mutex_unlock(&s->mu);
        return send_json(s, c, ready ? 200 : 503, b, !ready);
    }
    if (!strcmp(url, "/metrics")) {
        if (!get) return send_error(s, c, 405, "invalid_request_error", NULL, "use GET /metrics");
        char *b = srv_metrics_text(s);
        if (!b) return send_error(s, c, 500, "server_error", NULL, "out of memory");
        struct MHD_Response *r = MHD_create_response_from_buffer(strlen(b), b, MHD_RESPMEM_MUST_FREE);
        if (!r) { free(b); return MHD_NO; }
        MHD_add_response_header(r, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
        enum MHD_Result ok = MHD_queue_response(c, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        return ok;
    }
    if (!strcmp(url, "/v1/embeddings"))
        return send_error(s, c, 404, "invalid_request_error", "not_found",
                          "/v1/embeddings is not implemented (this server generates text: POST /v1/chat/completions, "
                          "POST /v1/completions)");
    if (!strcmp(url, "/v1/models")) {
        if (!get) return send_error(s, c, 405, "invalid_request_error", NULL, "use GET /v1/models");
        if (!srv_engine(s))
            return send_error(s, c, 503, "server_error", "model_loading", "the model is still loading; retry later");
        cJSON *o = cJSON_CreateObject(), *d = cJSON_AddArrayToObject(o, "data"), *m = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "object", "list");
        cJSON_AddItemToArray(d, m);
        cJSON_AddStringToObject(m, "id", s->model_name);
        cJSON_AddStringToObject(m, "object", "model");
        cJSON_AddNumberToObject(m, "created", 0);
        cJSON_AddStringToObject(m, "owned_by", "minicpmv");
        char *b = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        return send_json(s, c, 200, b, 0);
    }
    if (!strcmp(url, "/v1/chat/completions")) {
        if (!post) return send_error(s, c, 405, "invalid_request_error", NULL, "use POST /v1/chat/completions");
        return completions(s, c, cs, SERVER_API_CHAT);
    }
    if (!strcmp(url, "/v1/completions")) {
        if (!post) return send_error(s, c, 405, "invalid_request_error", NULL, "use POST /v1/completions");
        return completions(s, c, cs, SERVER_API_COMPLETIONS);
    }
    char msg[300], shown[128];
    guard_printable(shown, sizeof shown, url, 100);
    snprintf(msg, sizeof msg,
             "unknown path '%s' (try POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET /metrics)",
             shown);
    return send_error(s, c, 404, "invalid_request_error", "not_found", msg);
}

static void notify_conn(void *cls, struct MHD_Connection *c, void **socket_context, enum MHD_ConnectionNotificationCode code)
{
    struct server *s = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        *socket_context = guard_conn_open(s->guard, ci ? ci->connect_fd : -1);
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        guard_conn_close(s->guard, *socket_context);
        *socket_context = NULL;
    }
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    struct conn *cs = *con_cls;
    const union MHD_ConnectionInfo *sci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    if (sci && sci->socket_context) guard_conn_received(((struct server *)cls)->guard, sci->socket_context, 0);
    if (!cs) return;
    if (cs->job) {
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) atomic_store(&cs->job->cancel, 1);
        srv_job_release(cs->job);
    }
    free(cs->body);
    free(cs);
    *con_cls = NULL;
}

/* --host: a name, an IPv4 or an IPv6 address (the first address getaddrinfo gives). */
static int resolve_host(const char *host, int port, struct sockaddr_storage *out, socklen_t *len, struct err *e)
{
    char shown[128];
    guard_printable(shown, sizeof shown, host, 100);
    char svc[16];
    snprintf(svc, sizeof svc, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV | AI_PASSIVE};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, svc, &hints, &res);
    if (rc) return err_set(e, "--host '%s': cannot resolve it (%s)", shown, gai_strerror(rc));
    const struct addrinfo *a = res;
    while (a && a->ai_family != AF_INET && a->ai_family != AF_INET6) a = a->ai_next;
    if (!a || a->ai_addrlen > sizeof *out) {
        freeaddrinfo(res);
        return err_set(e, "--host '%s': no IPv4 or IPv6 address", shown);
    }
    memset(out, 0, sizeof *out);
    memcpy(out, a->ai_addr, a->ai_addrlen);
    *len = a->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* "127.0.0.1:8080" or "[::1]:8080". */
static void format_addr(const struct sockaddr_storage *a, int port, char *out, size_t n)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (a->ss_family == AF_INET6) {
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)a)->sin6_addr, ip, sizeof ip);
        snprintf(out, n, "[%s]:%d", ip, port);
    } else {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)a)->sin_addr, ip, sizeof ip);
        snprintf(out, n, "%s:%d", ip, port);
    }
}

int server_start(struct server **out, struct engine *g, const struct server_options *o, struct err *e)
{
    *out = NULL;
    if (o->queue < 1) return err_set(e, "--queue %d: must be at least 1", o->queue);
    struct server *s = calloc(1, sizeof *s);
    if (!s) return err_set(e, "out of memory");
    s->g = g;
    s->o = *o;
    snprintf(s->model_name, sizeof s->model_name, "%s", o->model_name ? o->model_name : "minicpm-llama3-v-2_5");
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->vocab_mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->o.lim.vocab = srv_vocab;
    s->o.lim.vocab_ctx = s;
    if (!(s->q = calloc((size_t)o->queue, sizeof *s->q))) { err_set(e, "out of memory"); goto fail; }
    if (!(s->running = calloc(SERVER_MAX_SLOTS, sizeof *s->running))) { err_set(e, "out of memory"); goto fail; }
    s->n_slots = 1; /* until the worker sees the engine (engine_slots) */
    if (imgcache_init(&s->cache, o->image_cache, e)) goto fail;
    if (o->image_cache_bytes) imgcache_set_max_bytes(s->cache, o->image_cache_bytes);
    atomic_init(&s->image_bytes, 0);
    s->o.lim.image_bytes = &s->image_bytes;
    if (guard_start(&s->guard, o->read_timeout, e)) goto fail;
    const char *host = o->host && o->host[0] ? o->host : "127.0.0.1";
    struct sockaddr_storage addr;
    socklen_t addr_len = 0;
    if (resolve_host(host, o->port, &addr, &addr_len, e)) goto fail;
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC;
    if (addr.ss_family == AF_INET6) {
        /* "::" listens on IPv4 too (dual stack); any other IPv6 address on itself only */
        const struct in6_addr *a6 = &((struct sockaddr_in6 *)&addr)->sin6_addr;
        flags |= IN6_IS_ADDR_UNSPECIFIED(a6) ? MHD_USE_DUAL_STACK : MHD_USE_IPv6;
    }
    format_addr(&addr, o->port, s->addr, sizeof s->addr);
    if (pthread_create(&s->worker, NULL, srv_worker_main, s)) { err_set(e, "cannot start the worker thread"); goto fail; }
    s->worker_started = 1;
    s->d = MHD_start_daemon(flags, (uint16_t)o->port, NULL, NULL, handler, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                            MHD_OPTION_NOTIFY_COMPLETED, completed, s, MHD_OPTION_NOTIFY_CONNECTION, notify_conn, s,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)(o->max_connections > 0 ? o->max_connections : 256),
                            MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)(o->max_per_ip > 0 ? o->max_per_ip : 0),
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120, MHD_OPTION_END);
    if (!s->d) {
        err_set(e, "cannot listen on %s (--host '%s'): the port is in use or the address is not this machine's", s->addr,
                host);
        goto fail;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : o->port;
    format_addr(&addr, s->port, s->addr, sizeof s->addr);
    *out = s;
    return 0;
fail:
    server_stop(s);
    return -1;
}

int server_port(const struct server *s) { return s->port; }

const char *server_address(const struct server *s) { return s->addr; }

void server_set_engine(struct server *s, struct engine *g)
{
    pthread_mutex_lock(&s->mu);
    if (!s->g) s->g = g;
    pthread_mutex_unlock(&s->mu);
}

void server_get_stats(struct server *s, struct server_stats *st)
{
    pthread_mutex_lock(&s->mu);
    *st = s->st;
    pthread_mutex_unlock(&s->mu);
    st->reaped = s->guard ? guard_reaped(s->guard) : 0;
}

int server_drain(struct server *s, double timeout)
{
    if (!s || s->drained) return 0;
    if (s->d && !s->quiesced) {
        s->listen_fd = MHD_quiesce_daemon(s->d); /* MHD accepts no new connections */
        /* nor does the kernel: a listening socket shut down refuses new connections and resets those
         * queued but not accepted, so a load balancer retries them on another replica at once instead
         * of waiting in the backlog until the drain ends. The fd stays open until server_stop. */
        if (s->listen_fd != MHD_INVALID_SOCKET) shutdown(s->listen_fd, SHUT_RDWR);
        s->quiesced = 1;
    }
    int cancelled = 0;
    const double t_end = time_now() + timeout;
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_broadcast(&s->cv);
    while (s->worker_started && (s->qn || s->n_running)) {
        if (timeout > 0 && time_now() >= t_end) {
            /* out of time: what is left is cancelled (answered 499 / an error event) */
            for (int i = 0; i < s->qn; i++, cancelled++) atomic_store(&s->q[(s->qhead + i) % s->o.queue]->cancel, 1);
            for (int i = 0; i < s->n_running; i++, cancelled++) atomic_store(&s->running[i]->cancel, 1);
            timeout = 0;
        }
        srv_wait_50ms(&s->cv, &s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    if (s->worker_started) pthread_join(s->worker, NULL);
    s->worker_started = 0;
    s->drained = 1;
    return cancelled;
}

void server_stop(struct server *s)
{
    if (!s) return;
    server_drain(s, 0);
    /* The worker is done, but a connection thread may not have sent its job's answer yet (it notices
     * j->done within 50 ms): stopping the daemon now would cut that answer off (seen under ASan as an
     * in-flight request answered with nothing). Wait for every job's last holder, at most 10 s (a
     * stream whose client stopped reading must not hold the exit forever). */
    pthread_mutex_lock(&s->mu);
    const double t_end = time_now() + 10;
    while (s->live_jobs > 0 && time_now() < t_end) {
        srv_wait_50ms(&s->cv, &s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    if (s->d) MHD_stop_daemon(s->d); /* waits for the connection threads */
    if (s->quiesced && s->listen_fd != MHD_INVALID_SOCKET) close(s->listen_fd);
    guard_stop(s->guard);
    sched_free(s->sched);
    imgcache_free(s->cache);
    free(s->q);
    free(s->running);
    grammar_vocab_free(s->vocab);
    pthread_mutex_destroy(&s->vocab_mu);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}
