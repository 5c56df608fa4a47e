/* thttp.h: a raw HTTP/1.1 client over loopback for the server tests (test_server.c, test_server_api.c):
 * one request per connection (Connection: close), the answer de-chunked, SSE helpers. */
#ifndef MINICPMV_THTTP_H
#define MINICPMV_THTTP_H

#include <arpa/inet.h>
#include <cJSON.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

struct resp {
    int status;
    char *body;      /* de-chunked */
    size_t len;
    char retry_after;
};

static int connect_port(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) { close(fd); return -1; }
    return fd;
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k <= 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static int send_request(int fd, const char *method, const char *path, const char *body, size_t blen)
{
    char h[512];
    int n = snprintf(h, sizeof h, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                                  "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n", method, path, blen);
    return send_all(fd, h, (size_t)n) || (blen && send_all(fd, body, blen));
}

/* Sends a request and reads the whole answer (Connection: close). */
static struct resp http(int port, const char *method, const char *path, const char *body)
{
    struct resp r = {0};
    int fd = connect_port(port);
    if (fd < 0) return r;
    size_t blen = body ? strlen(body) : 0;
    if (send_request(fd, method, path, body, blen)) { close(fd); return r; }
    size_t cap = 1 << 16, len = 0;
    char *raw = malloc(cap);
    for (;;) {
        if (len + 4096 > cap) raw = realloc(raw, cap *= 2);
        ssize_t k = recv(fd, raw + len, cap - len - 1, 0);
        if (k <= 0) break;
        len += (size_t)k;
    }
    close(fd);
    raw[len] = 0;
    char *hdr_end = strstr(raw, "\r\n\r\n");
    if (!hdr_end || sscanf(raw, "HTTP/1.%*d %d", &r.status) != 1) { free(raw); r.status = 0; return r; }
    *hdr_end = 0;
    r.retry_after = strcasestr(raw, "\r\nRetry-After:") != NULL;
    int chunked = strcasestr(raw, "Transfer-Encoding: chunked") != NULL;
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

#endif
