/* server_guard.c: what stands between the network and the server's handlers (see server.h): the API-key
 * check, the content-type rule for JSON endpoints, a printable copy of a client's URL for messages, and
 * the read deadline: every connection is tracked from its first byte, and one that has not delivered a
 * whole request within the deadline is shut down (slowloris: a client sending a byte a second would
 * otherwise hold a connection slot and its thread for as long as it likes; libmicrohttpd's own timeout
 * only counts idle time). Does not own: routing, the queue, JSON bodies. */
#include "server.h"

#include <ctype.h>
#include <pthread.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int guard_bearer_ok(const char *key, const char *authorization)
{
    if (!key) return 1;
    if (!authorization || strncasecmp(authorization, "Bearer ", 7)) return 0;
    const char *got = authorization + 7;
    while (*got == ' ') got++;
    /* constant time in the key's content: every byte of the longer string is compared */
    size_t kl = strlen(key), gl = strlen(got), n = kl > gl ? kl : gl;
    unsigned char diff = (unsigned char)(kl != gl);
    for (size_t i = 0; i < n; i++) {
        unsigned char a = i < kl ? (unsigned char)key[i] : 0, b = i < gl ? (unsigned char)got[i] : 0;
        diff |= (unsigned char)(a ^ b);
    }
    return diff == 0;
}

int guard_json_content_type(const char *ct)
{
    if (!ct) return 1; /* a raw client that sends none; browsers always send one with a body */
    while (*ct == ' ') ct++;
    if (strncasecmp(ct, "application/json", 16)) return 0;
    const char *rest = ct + 16;
    while (*rest == ' ') rest++;
    return *rest == 0 || *rest == ';';
}

void guard_printable(char *out, size_t n, const char *s, size_t max_chars)
{
    size_t k = 0;
    for (size_t i = 0; s && s[i] && k + 1 < n && i < max_chars; i++) {
        unsigned char c = (unsigned char)s[i];
        out[k++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    if (n) out[k] = 0;
}

/* ---- the read deadline ---- */
struct guard_conn {
    struct guard_conn *prev, *next;
    int fd;
    double start;                /* when the current request began (or the previous one ended) */
    int received;                /* the current request is in: the deadline no longer applies */
};

struct guard {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t th;
    int started, stop;
    double timeout;
    long reaped;
    int n_conns;
    struct guard_conn head;      /* sentinel of a circular list */
};

static void *guard_main(void *p)
{
    struct guard *g = p;
    pthread_mutex_lock(&g->mu);
    while (!g->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
        pthread_cond_timedwait(&g->cv, &g->mu, &ts);
        const double now = time_now();
        for (struct guard_conn *c = g->head.next; c != &g->head; c = c->next)
            if (!c->received && c->fd >= 0 && now - c->start > g->timeout) {
                /* the socket stays open (libmicrohttpd owns it and closes it, calling guard_conn_close
                 * under this mutex, so the descriptor cannot be reused meanwhile); its reads now fail */
                shutdown(c->fd, SHUT_RDWR);
                c->fd = -1;
                g->reaped++;
            }
    }
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

int guard_start(struct guard **out, double read_timeout, struct err *e)
{
    *out = NULL;
    struct guard *g = calloc(1, sizeof *g);
    if (!g) return err_set(e, "out of memory");
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->head.next = g->head.prev = &g->head;
    g->timeout = read_timeout;
    if (read_timeout > 0) {
        if (pthread_create(&g->th, NULL, guard_main, g)) {
            guard_stop(g);
            return err_set(e, "cannot start the read-deadline thread");
        }
        g->started = 1;
    }
    *out = g;
    return 0;
}

void guard_stop(struct guard *g)
{
    if (!g) return;
    pthread_mutex_lock(&g->mu);
    g->stop = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    if (g->started) pthread_join(g->th, NULL);
    for (struct guard_conn *c = g->head.next, *nx; c != &g->head; c = nx) {
        nx = c->next;
        free(c);
    }
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
    free(g);
}

struct guard_conn *guard_conn_open(struct guard *g, int fd)
{
    struct guard_conn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->fd = fd;
    c->start = time_now();
    pthread_mutex_lock(&g->mu);
    c->next = g->head.next;
    c->prev = &g->head;
    g->head.next->prev = c;
    g->head.next = c;
    g->n_conns++;
    pthread_mutex_unlock(&g->mu);
    return c;
}

void guard_conn_received(struct guard *g, struct guard_conn *c, int received)
{
    if (!c) return;
    pthread_mutex_lock(&g->mu);
    c->received = received;
    if (!received) c->start = time_now();
    pthread_mutex_unlock(&g->mu);
}

void guard_conn_close(struct guard *g, struct guard_conn *c)
{
    if (!c) return;
    pthread_mutex_lock(&g->mu);
    c->prev->next = c->next;
    c->next->prev = c->prev;
    g->n_conns--;
    pthread_mutex_unlock(&g->mu);
    free(c);
}

long guard_reaped(struct guard *g)
{
    pthread_mutex_lock(&g->mu);
    long n = g->reaped;
    pthread_mutex_unlock(&g->mu);
    return n;
}
