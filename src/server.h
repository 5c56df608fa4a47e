/* server.h: the OpenAI-compatible HTTP server (docs/SERVER.md) on top of the chat turn (turn.h).
 *
 * Owns: (server_json.c) parsing and validating /v1/chat/completions and /v1/completions bodies into
 * n prepared turns (unimplemented fields refused, images counted against a decoded-bytes budget);
 * (server_answer.c) the response, chunk and usage JSON of both APIs; (server_http.c) libmicrohttpd, the bounded queue,
 * streaming, disconnects, the drain; (server_worker.c) the worker thread that owns the engine, the
 * answers, /metrics (server_impl.h: the structs both share); (server_guard.c) the API
 * key, content types, and the read deadline that closes connections too slow to deliver a request.
 * Does not own: the model, the turn (turn.h: prompt, images, generation, answer clean-up), sampling.
 * Invariants: one worker thread owns the engine: with one slot it runs one request at a time, with
 * --parallel N it runs up to N turns through the scheduler (scheduler.h), batching their decode steps;
 * beam-search requests run alone. HTTP threads only read the
 * tokenizer and configs; every buffer grown from a request is bounded (body size, images, stop strings,
 * messages). */
#ifndef MINICPMV_SERVER_H
#define MINICPMV_SERVER_H

#include <stdatomic.h>

#include "chat.h"
#include "engine.h"
#include "image.h"
#include "imgcache.h"
#include "turn.h"

/* ---- requests (server_json.c) ---- */
struct server_limits {
    size_t max_body;                /* request body bytes (413 above) */
    int max_images;                 /* per request */
    int max_messages;
    int64_t max_pixels;             /* per image (decoded w*h) */
    const char *allow_dir;          /* local image files allowed under this directory; NULL = none */
    int default_beams;              /* --beams: 0/1 = the sampling defaults */
    int64_t max_beam_tokens;        /* num_beams x max_new tokens per request (400 above); 0 = no cap */
    double max_time;                /* generation seconds per request (finish "length" after); 0 = none */
    int64_t max_image_bytes;        /* decoded image bytes held by all requests in flight; 0 = no cap */
    atomic_llong *image_bytes;      /* the server's running count for max_image_bytes (NULL = none) */
    /* response_format: the vocabulary tries (built once, shared read-only); NULL = response_format refused */
    const struct grammar_vocab *(*vocab)(void *ctx, struct err *e);
    void *vocab_ctx;
};

#define SERVER_MAX_STOP TURN_MAX_STOP
#define SERVER_MAX_STOP_LEN TURN_MAX_STOP_LEN
#define SERVER_MAX_N 16                 /* choices per request ('n'); above: 400 naming n */
#define SERVER_MAX_PROMPT_IDS (1 << 20) /* /v1/completions: token ids in a prompt given as ids */

enum server_api {
    SERVER_API_CHAT = 0,            /* POST /v1/chat/completions: messages through the chat template */
    SERVER_API_COMPLETIONS,         /* POST /v1/completions: a raw prompt (turn_request.raw_text / raw_ids) */
};

/* A parsed request: the turn's request, and the n turns prepared from it (prompt ids built, context
 * checked) before it queues. The n turns are the same request (identical prompt ids, so a prefix cache
 * keyed by content shares their KV) but for the seed: choice i samples with seed + i. */
struct server_request {
    enum server_api api;
    struct turn_request req;
    struct turn *turns[SERVER_MAX_N];
    int n;                          /* choices: 1..SERVER_MAX_N */
    char *prompt;                   /* completions: the prompt text (req.raw_text) */
    int32_t *prompt_ids;            /* completions: the prompt as token ids (req.raw_ids) */
    struct chat_msg *msgs;
    char **texts;                   /* owned message contents */
    char *system;
    struct image *images;
    uint8_t **enc;                  /* per image: its encoded bytes (the cache key) */
    size_t *enc_len;
    atomic_llong *image_acct;       /* where image_reserved is counted (server_request_free returns it) */
    int64_t image_reserved;
    char *stop_buf[SERVER_MAX_STOP];
    int stream, include_usage;
    int max_tokens;                 /* -1 = not given */
    struct grammar *grammar;        /* response_format json_object / json_schema (req.grammar); NULL = text */
};

/* Parses and validates body as api's request. On failure returns the HTTP status (400/413, 503 when the
 * decoded-image budget is spent) with an OpenAI error JSON in *err_json (malloc'd); on success 0. Fields
 * the server does not implement are refused by name (400, param = the field). */
int server_request_parse(struct server_request *rq, enum server_api api, const char *body, size_t len,
                         const struct engine *g, const struct server_limits *lim, char **err_json);
void server_request_free(struct server_request *rq);
/* Frees the decoded images and their encoded bytes and returns their share of the image budget (the
 * worker calls it once the turn ran: the encodings are in the cache or gone). */
void server_request_drop_images(struct server_request *rq);
/* {"error":{"message":...,"type":...,"param":...,"code":...}} (malloc'd); param/code may be NULL. */
char *server_error_json(const char *message, const char *type, const char *param, const char *code);

/* ---- answers (server_answer.c) ---- */
/* The whole answer: chat.completion or text_completion with one choice per result r[0..n) (index i),
 * usage = the prompt once + every choice's tokens. tok renders the logprob entries (r[i].lp; "logprobs":
 * null without them): chat's content[] shape, or the legacy tokens / token_logprobs / top_logprobs /
 * text_offset shape. */
char *server_answer_json(enum server_api api, const char *id, long created, const char *model,
                         const struct turn_result *r, int n, const struct tokenizer *tok);
/* One streamed chunk of choice index: text[0..len) (NULL: none; chat's first chunk carries the role) and
 * finish (NULL: not the last). lp[0..n_lp): the logprob entries of the tokens it carries (lp NULL:
 * "logprobs": null); *text_off: the legacy text_offset of the first of them (code points), advanced. */
char *server_chunk_json(enum server_api api, const char *id, long created, const char *model, int index,
                        const char *text, size_t len, int first, const char *finish, const struct turn_logprob *lp,
                        int n_lp, long *text_off, const struct tokenizer *tok);
/* The last chunk of stream_options.include_usage: no choices, the usage. */
char *server_usage_chunk_json(enum server_api api, const char *id, long created, const char *model, int n_prompt,
                              int n_gen);

/* ---- the HTTP server (server_http.c) ---- */
struct server_options {
    const char *host;               /* "127.0.0.1"; a name, IPv4 or IPv6 ("::" = every address, IPv4 too) */
    int port;                       /* 0 = pick a free one (server_port tells which) */
    const char *model_name;         /* what /v1/models lists */
    int queue;                      /* waiting requests beyond the one running (503 above) */
    int image_cache;                /* cached image sets */
    int max_connections;
    int log_requests;               /* one line per request on stderr */
    int max_per_ip;                 /* connections per client address; 0 = no limit */
    double read_timeout;            /* seconds to receive a whole request (headers and body); 408 after */
    size_t image_cache_bytes;       /* byte budget of the image cache (0 = IMGCACHE_BYTES) */
    const char *api_key;            /* NULL = open; else "Authorization: Bearer KEY" on /v1/... */
    const char *cors_origin;        /* NULL = no CORS headers; "*" or one origin */
    const char *ui_page;            /* the chat page at GET / and /index.html (no API key needed for it);
                                       NULL = none (404, serve --no-ui) */
    size_t ui_page_len;
    const char *ui_csp;             /* its Content-Security-Policy header (NULL = none) */
    struct server_limits lim;
};
void server_options_default(struct server_options *o);
/* Turns in flight at once: the engine's slots (--parallel), at most this many. */
#define SERVER_MAX_SLOTS 256

struct server;
/* Binds o->host:o->port and starts serving. g may be NULL: the port is bound while the model loads
 * (/health answers 503 {"status":"loading"}, /v1/... 503 with Retry-After) until server_set_engine. */
int server_start(struct server **out, struct engine *g, const struct server_options *o, struct err *e);
/* Hands the loaded engine to a server started without one (thread-safe; a second call is ignored). */
void server_set_engine(struct server *s, struct engine *g);
int server_port(const struct server *s);
/* The bound address, "127.0.0.1:8080" or "[::1]:8080" (the real port when o->port was 0). */
const char *server_address(const struct server *s);
/* Stops accepting (the listening socket is closed: new connections are refused) and lets queued and
 * running requests finish; after timeout seconds (<= 0: none) the
 * rest is cancelled. Returns the number of requests cancelled that way. Stats read after it are final. */
int server_drain(struct server *s, double timeout);
/* server_drain without a timeout (if not drained yet), then joins the connections and frees. */
void server_stop(struct server *s);

struct server_stats {
    long requests, ok, client_errors, busy, cancelled, failed, cache_hits;
    long timed_out;                 /* answers cut by --max-time */
    long reaped;                    /* connections closed for not sending their request in time */
    long unauthorized;              /* 401s */
};
void server_get_stats(struct server *s, struct server_stats *st);

/* ---- the guard in front of the handlers (server_guard.c; used by server_http.c) ---- */
/* 1 when key is NULL or authorization is "Bearer <key>" (compared in time independent of the content). */
int guard_bearer_ok(const char *key, const char *authorization);
/* 1 for a JSON content type (application/json, parameters allowed) or none at all. */
int guard_json_content_type(const char *ct);
/* Copies at most max_chars of s into out (size n) with every byte outside printable ASCII as '?'. */
void guard_printable(char *out, size_t n, const char *s, size_t max_chars);
/* The read deadline: connections that have not delivered a whole request read_timeout seconds after
 * it began (or after the previous request ended) are shut down. read_timeout <= 0: none. */
struct guard;
struct guard_conn;
int guard_start(struct guard **out, double read_timeout, struct err *e);
void guard_stop(struct guard *g); /* accepts NULL */
struct guard_conn *guard_conn_open(struct guard *g, int fd); /* NULL when out of memory (not tracked) */
void guard_conn_received(struct guard *g, struct guard_conn *c, int received); /* 0: a new request begins */
void guard_conn_close(struct guard *g, struct guard_conn *c);
long guard_reaped(struct guard *g);

#endif
