/* thttp.h: a raw HTTP/1.1 client over loopback for the server tests (test_server.c, test_server_api.c,
 * test_server_attack.c): one request per connection (Connection: close), the answer de-chunked (head kept
 * by read_resp and http_req), a read deadline, SSE and JSON helpers. */
#ifndef MINICPMV_THTTP_H
#define MINICPMV_THTTP_H

#include <arpa/inet.h>
#include <cJSON.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct resp {
    int status;
    char *head;      /* the status line and headers (read_resp and http_req; http() drops it) */
    char *body;      /* de-chunked */
    size_t len;
    char retry_after; /* a Retry-After header was sent */
};

static inline void resp_free(struct resp *r)
{
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof *r);
}

static inline int connect_port(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a)) {
        if (fd >= 0) close(fd);
        return -1;
    }
    return fd;
}

static inline int send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t k = send(fd, c, n, MSG_NOSIGNAL);
        if (k <= 0) return -1;
        c += k;
        n -= (size_t)k;
    }
    return 0;
}

static inline int send_request(int fd, const char *method, const char *path, const char *body, size_t blen)
{
    char h[512];
    int n = snprintf(h, sizeof h, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                                  "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n", method, path, blen);
    return send_all(fd, h, (size_t)n) || (blen && send_all(fd, body, blen));
}

static inline double thttp_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Reads until the peer closes (or timeout seconds pass) and parses the first response. */
static inline struct resp read_resp(int fd, double timeout)
{
    struct resp r = {0};
    size_t cap = 1 << 16, len = 0;
    char *raw = malloc(cap);
    double t_end = thttp_now() + timeout;
    for (;;) {
        if (len + 4096 > cap) raw = realloc(raw, cap *= 2);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int ms = (int)((t_end - thttp_now()) * 1e3);
        if (ms <= 0 || poll(&p, 1, ms) <= 0) break;
        ssize_t k = recv(fd, raw + len, cap - len - 1, 0);
        if (k <= 0) break;
        len += (size_t)k;
    }
    raw[len] = 0;
    char *hdr_end = strstr(raw, "\r\n\r\n");
    if (!hdr_end || sscanf(raw, "HTTP/1.%*d %d", &r.status) != 1) {
        free(raw);
        r.status = 0;
        return r;
    }
    r.head = strndup(raw, (size_t)(hdr_end - raw));
    r.retry_after = strcasestr(r.head, "\r\nRetry-After:") != NULL;
    int chunked = strcasestr(r.head, "Transfer-Encoding: chunked") != NULL;
    char *p = hdr_end + 4, *end = raw + len;
    r.body = malloc((size_t)(end - p) + 1);
    if (chunked) {
        while (p < end) {
            unsigned long n = strtoul(p, &p, 16);
            p = strstr(p, "\r\n");
            if (!p || !n) break;
            p += 2;
            if (p + n > end) n = (unsigned long)(end - p);
            memcpy(r.body + r.len, p, n);
            r.len += n;
            p += n + 2;
        }
    } else {
        r.len = (size_t)(end - p);
        memcpy(r.body, p, r.len);
    }
    r.body[r.len] = 0;
    free(raw);
    return r;
}

/* Sends a JSON request (Content-Length always, 0 without a body) and reads the whole answer (Connection:
 * close; up to THTTP_WAIT seconds). Only status, body and retry_after are kept: free body. */
#define THTTP_WAIT 600.0
static inline struct resp http(int port, const char *method, const char *path, const char *body)
{
    struct resp r = {0};
    int fd = connect_port(port);
    if (fd < 0) return r;
    size_t blen = body ? strlen(body) : 0;
    if (send_request(fd, method, path, body, blen)) { close(fd); return r; }
    r = read_resp(fd, THTTP_WAIT);
    close(fd);
    free(r.head);
    r.head = NULL;
    return r;
}

/* http_req: one request: method, path, extra header lines (each ending in \r\n, may be NULL), a body sent with
 * Content-Length (NULL = none, and no Content-Length). The whole answer, head included (resp_free). */
static inline struct resp http_req(int port, const char *method, const char *path, const char *headers, const char *body)
{
    struct resp r = {0};
    int fd = connect_port(port);
    if (fd < 0) return r;
    size_t bl = body ? strlen(body) : 0;
    char h[2048];
    int n = snprintf(h, sizeof h, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s", method, path,
                     headers ? headers : "");
    if (body) n += snprintf(h + n, sizeof h - (size_t)n, "Content-Length: %zu\r\n", bl);
    n += snprintf(h + n, sizeof h - (size_t)n, "\r\n");
    if (!send_all(fd, h, (size_t)n) && (!bl || !send_all(fd, body, bl))) r = read_resp(fd, 60);
    close(fd);
    return r;
}

/* Concatenated delta contents of an SSE body; 1 when it ended with [DONE]. */
static inline char *sse_text(const char *body, int *done)
{
    size_t cap = strlen(body) + 1, len = 0;
    char *out = calloc(cap, 1);
    *done = 0;
    for (const char *p = body; (p = strstr(p, "data: ")); ) {
        p += 6;
        const char *e = strstr(p, "\n\n");
        if (!e) break;
        if (!strncmp(p, "[DONE]", 6)) { *done = 1; break; }
        cJSON *o = cJSON_ParseWithLength(p, (size_t)(e - p));
        cJSON *c = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0), "delta");
        cJSON *t = cJSON_GetObjectItem(c, "content");
        if (cJSON_IsString(t)) {
            size_t n = strlen(t->valuestring);
            memcpy(out + len, t->valuestring, n);
            len += n;
        }
        cJSON_Delete(o);
        p = e;
    }
    return out;
}

static inline char *json_content(const char *body)
{
    cJSON *o = cJSON_Parse(body);
    cJSON *m = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0), "message");
    cJSON *c = cJSON_GetObjectItem(m, "content");
    char *s = cJSON_IsString(c) ? strdup(c->valuestring) : NULL;
    cJSON_Delete(o);
    return s;
}

/* The value of one sample of a Prometheus text exposition (`series` is the name with its labels, as
 * printed), or NAN when the text has no such line. */
static inline double metric(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; (p = strstr(p, series)); p += n)
        if ((p == text || p[-1] == '\n') && p[n] == ' ') return strtod(p + n + 1, NULL);
    return NAN;
}

/* minicpmv_requests_total summed over every status the server counts. */
static inline double metric_requests_total(const char *text)
{
    static const char *const st[] = {"ok", "client_error", "busy", "cancelled", "failed"};
    double total = 0;
    for (int i = 0; i < 5; i++) {
        char s[96];
        snprintf(s, sizeof s, "minicpmv_requests_total{status=\"%s\"}", st[i]);
        total += metric(text, s);
    }
    return total;
}

#endif
