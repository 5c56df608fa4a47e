/* server_json.c: /v1/chat/completions bodies -> a validated server_request, and the response JSON.
 * Every rejection is an OpenAI error object with a 4xx status; nothing here touches the engine's
 * session (the tokenizer and configs are read-only). */
#include "server.h"

#include "beam.h"
#include "grammar.h"
#include "tokenizer.h"

#include <cJSON.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define MAX_TEXT_BYTES (8u << 20) /* one message's text */

char *server_error_json(const char *message, const char *type, const char *param, const char *code)
{
    cJSON *o = cJSON_CreateObject(), *er = cJSON_AddObjectToObject(o, "error");
    cJSON_AddStringToObject(er, "message", message);
    cJSON_AddStringToObject(er, "type", type);
    if (param) cJSON_AddStringToObject(er, "param", param);
    else cJSON_AddNullToObject(er, "param");
    if (code) cJSON_AddStringToObject(er, "code", code);
    else cJSON_AddNullToObject(er, "code");
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* Sets *err_json and returns status. */
static int reject(char **err_json, int status, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int reject(char **err_json, int status, const char *param, const char *code, const char *fmt, ...)
{
    char msg[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    *err_json = server_error_json(msg, "invalid_request_error", param, code);
    return status;
}

/* Strict RFC 4648 base64 (padding optional, no whitespace inside); -1 on a bad character. */
static int b64_decode(const char *s, size_t n, uint8_t **out, size_t *out_n)
{
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    int8_t m[256];
    memset(m, -1, sizeof m);
    for (int i = 0; i < 64; i++) m[(unsigned char)al[i]] = (int8_t)i;
    while (n && s[n - 1] == '=') n--;
    if (n % 4 == 1) return -1;
    uint8_t *o = malloc(n / 4 * 3 + 3);
    if (!o) return -2;
    size_t k = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = m[(unsigned char)s[i]];
        if (v < 0) { free(o); return -1; }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            o[k++] = (uint8_t)(acc >> bits);
        }
    }
    *out = o;
    *out_n = k;
    return 0;
}

/* Reads a local image file for load_image: path is resolved (symlinks too) and must lie inside the
 * allowed folder; a relative path is taken relative to that folder, never to the working directory.
 * Every refusal that concerns a path outside the folder reads the same, so a client cannot probe which
 * files exist elsewhere. Only regular files are opened (O_NONBLOCK: a FIFO cannot block the thread). */
static int read_allowed_file(const char *url, const struct server_limits *lim, int idx, uint8_t **out, size_t *out_n,
                             char **err_json)
{
    const char *path = !strncmp(url, "file://", 7) ? url + 7 : url;
    if (!lim->allow_dir)
        return reject(err_json, 400, "messages", "invalid_image_url",
                      "image %d: local files are not allowed (the server was started without --allow-files); send "
                      "a base64 data: URL",
                      idx);
    char root[PATH_MAX], joined[PATH_MAX], real[PATH_MAX];
    struct err e = {{0}};
    const char *nope = "image %d: not a readable file inside the allowed folder";
    if (!realpath(lim->allow_dir, root)) return reject(err_json, 400, "messages", "invalid_image_url", nope, idx);
    if (path[0] != '/') {
        if (path_join(joined, sizeof joined, root, path, &e))
            return reject(err_json, 400, "messages", "invalid_image_url", nope, idx);
        path = joined;
    }
    if (!realpath(path, real)) return reject(err_json, 400, "messages", "invalid_image_url", nope, idx);
    size_t rl = strlen(root);
    int inside = !strcmp(root, "/") || (!strncmp(real, root, rl) && real[rl] == '/');
    if (!inside) return reject(err_json, 400, "messages", "invalid_image_url", nope, idx);
    int fd = open(real, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
    struct stat stt;
    if (fd < 0 || fstat(fd, &stt) || !S_ISREG(stt.st_mode)) {
        if (fd >= 0) close(fd);
        return reject(err_json, 400, "messages", "invalid_image_url", "image %d: not a regular file inside the allowed folder",
                      idx);
    }
    if ((uint64_t)stt.st_size > lim->max_body) {
        close(fd);
        return reject(err_json, 400, "messages", "invalid_image", "image %d: %lld bytes, over the limit of %zu", idx,
                      (long long)stt.st_size, lim->max_body);
    }
    size_t n = (size_t)stt.st_size, got = 0;
    uint8_t *b = malloc(n ? n : 1);
    if (!b) { close(fd); return reject(err_json, 500, NULL, NULL, "out of memory"); }
    while (got < n) {
        ssize_t k = read(fd, b + got, n - got);
        if (k <= 0) break;
        got += (size_t)k;
    }
    close(fd);
    if (got != n) {
        free(b);
        return reject(err_json, 400, "messages", "invalid_image", "image %d: the file changed while it was read", idx);
    }
    *out = b;
    *out_n = n;
    return 0;
}

/* Takes bytes of the decoded-image budget (lim->max_image_bytes over every request in flight); 0 or 503. */
static int image_reserve(struct server_request *rq, const struct server_limits *lim, int64_t bytes, char **err_json)
{
    if (!lim->image_bytes) return 0;
    rq->image_acct = lim->image_bytes;
    int64_t now = atomic_fetch_add(lim->image_bytes, bytes) + bytes;
    if (lim->max_image_bytes > 0 && bytes > 0 && now > lim->max_image_bytes) {
        atomic_fetch_sub(lim->image_bytes, bytes);
        *err_json = server_error_json("the server is busy decoding images for other requests; retry later", "server_error",
                                      NULL, "image_memory_full");
        return 503;
    }
    rq->image_reserved += bytes;
    return 0;
}

/* Loads the image of one image_url part into rq's slot idx-1 (keeping its encoded bytes, the cache key, which
 * also outlive the image's decode: server_request_drop_images frees the image first).
 * The worst case (max_pixels x 3 bytes) is reserved from the decoded-image budget before decoding and
 * trimmed to the real size after, so concurrent decodes cannot exceed the budget. Returns 0 or a status. */
static int load_image(struct server_request *rq, const char *url, const struct server_limits *lim, int idx, char **err_json)
{
    struct image *im = &rq->images[idx - 1];
    struct image_opts io;
    image_opts_default(&io);
    if (lim->max_pixels > 0) io.max_pixels = lim->max_pixels;
    io.max_file_bytes = lim->max_body;
    struct err e = {{0}};
    uint8_t *bytes = NULL;
    size_t nb = 0;
    if (!strncmp(url, "data:", 5)) {
        const char *comma = strchr(url, ',');
        if (!comma || !strstr(url, ";base64") || strstr(url, ";base64") > comma)
            return reject(err_json, 400, "messages", "invalid_image_url",
                          "image %d: a data: URL must be base64 (data:image/png;base64,...)", idx);
        int r = b64_decode(comma + 1, strlen(comma + 1), &bytes, &nb);
        if (r == -2) return reject(err_json, 500, NULL, NULL, "out of memory");
        if (r) return reject(err_json, 400, "messages", "invalid_base64", "image %d: the data: URL is not valid base64", idx);
    } else if (!strncmp(url, "http://", 7) || !strncmp(url, "https://", 8)) {
        return reject(err_json, 400, "messages", "invalid_image_url",
                      "image %d: remote image URLs are not fetched; send the image as a base64 data: URL", idx);
    } else {
        int st = read_allowed_file(url, lim, idx, &bytes, &nb, err_json);
        if (st) return st;
    }
    rq->enc[idx - 1] = bytes;
    rq->enc_len[idx - 1] = nb;
    const int64_t worst = io.max_pixels * 3;
    int st = image_reserve(rq, lim, worst, err_json);
    if (st) return st;
    /* the header is read and checked here (a bad one is this request's 400); the rows decode on a thread of
     * their own while the request waits in the queue, and the tower starts on the top slices as soon as
     * they are in (mm.c). Bad data past the header fails the turn: 400 (a stream: its error event). */
    int r = image_decode_async(im, bytes, nb, &io, &e);
    const int64_t used = r ? 0 : (int64_t)im->w * im->h * 3;
    if (rq->image_acct) {
        atomic_fetch_sub(rq->image_acct, worst - used);
        rq->image_reserved -= worst - used;
    }
    if (r) return reject(err_json, 400, "messages", "invalid_image", "image %d: %s", idx, e.msg);
    return 0;
}

void server_request_drop_images(struct server_request *rq)
{
    for (int i = 0; rq->images && rq->enc && i <= rq->req.n_images; i++) {
        image_free(&rq->images[i]);
        free(rq->enc[i]);
        rq->enc[i] = NULL;
    }
    rq->req.n_images = 0;
    if (rq->image_acct) atomic_fetch_sub(rq->image_acct, rq->image_reserved);
    rq->image_reserved = 0;
}

void server_request_free(struct server_request *rq)
{
    server_request_drop_images(rq);
    for (int i = 0; i < rq->req.n_msgs; i++) free(rq->texts[i]);
    free(rq->texts);
    free(rq->msgs);
    free(rq->system);
    free(rq->images);
    free(rq->enc);
    free(rq->enc_len);
    for (int i = 0; i < SERVER_MAX_STOP; i++) free(rq->stop_buf[i]);
    for (int i = 0; i < SERVER_MAX_N; i++) turn_free(rq->turns[i]);
    free(rq->prompt);
    free(rq->prompt_ids);
    grammar_free(rq->grammar);
    memset(rq, 0, sizeof *rq);
}

/* Appends s to a growing string (bounded by MAX_TEXT_BYTES). */
static int cat(char **buf, size_t *len, const char *s, size_t n)
{
    if (*len + n + 1 > MAX_TEXT_BYTES) return -1;
    char *x = realloc(*buf, *len + n + 1);
    if (!x) return -1;
    memcpy(x + *len, s, n);
    *len += n;
    x[*len] = 0;
    *buf = x;
    return 0;
}

/* One message's content (a string or a list of text / image_url parts) -> text with image markers. */
static int parse_content(struct server_request *rq, const cJSON *content, int mi, char **text,
                         const struct server_limits *lim, char **err_json)
{
    size_t len = 0;
    *text = NULL;
    if (cJSON_IsString(content)) {
        if (cat(text, &len, content->valuestring, strlen(content->valuestring)))
            return reject(err_json, 400, "messages", NULL, "messages[%d].content is too long", mi);
        return 0;
    }
    if (!cJSON_IsArray(content))
        return reject(err_json, 400, "messages", NULL, "messages[%d].content must be a string or an array of parts", mi);
    int pi = 0;
    for (const cJSON *part = content->child; part; part = part->next, pi++) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        if (!cJSON_IsObject(part) || !cJSON_IsString(type))
            return reject(err_json, 400, "messages", NULL, "messages[%d].content[%d] must be an object with a string \"type\"", mi, pi);
        const char *piece;
        if (!strcmp(type->valuestring, "text")) {
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
            if (!cJSON_IsString(t))
                return reject(err_json, 400, "messages", NULL, "messages[%d].content[%d].text must be a string", mi, pi);
            piece = t->valuestring;
        } else if (!strcmp(type->valuestring, "image_url")) {
            const cJSON *u = cJSON_GetObjectItemCaseSensitive(part, "image_url");
            if (cJSON_IsObject(u)) u = cJSON_GetObjectItemCaseSensitive(u, "url");
            if (!cJSON_IsString(u))
                return reject(err_json, 400, "messages", NULL, "messages[%d].content[%d].image_url.url must be a string", mi, pi);
            if (rq->req.n_images >= lim->max_images)
                return reject(err_json, 400, "messages", NULL, "at most %d images per request", lim->max_images);
            int st = load_image(rq, u->valuestring, lim, rq->req.n_images + 1, err_json);
            if (st) return st;
            rq->req.n_images++;
            piece = CHAT_IMAGE_MARKER;
        } else {
            return reject(err_json, 400, "messages", NULL,
                          "messages[%d].content[%d].type '%.40s' is not supported (text, image_url)", mi, pi, type->valuestring);
        }
        if ((pi && cat(text, &len, "\n", 1)) || cat(text, &len, piece, strlen(piece)))
            return reject(err_json, 400, "messages", NULL, "messages[%d].content is too long", mi);
    }
    if (!*text && cat(text, &len, "", 0)) return reject(err_json, 500, NULL, NULL, "out of memory");
    return 0;
}

/* A number field in [lo, hi]; absent leaves *v. */
static int num_field(const cJSON *root, const char *name, double lo, double hi, int integer, double *v, char **err_json)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!x || cJSON_IsNull(x)) return 0;
    if (!cJSON_IsNumber(x)) return reject(err_json, 400, name, NULL, "'%s' must be a number", name);
    double d = x->valuedouble;
    /* the range first: casting 1e30 to an integer type is undefined behaviour */
    if (!(d >= lo && d <= hi)) return reject(err_json, 400, name, NULL, "'%s' = %g is outside %g..%g", name, d, lo, hi);
    if (integer && d != floor(d)) return reject(err_json, 400, name, NULL, "'%s' must be an integer", name);
    *v = d;
    return 1;
}

/* Every top-level field must be one the server implements. Fields of the OpenAI API that it does not
 * implement are accepted only with the value that means "off" (what clients send by default); anything
 * else is refused by name rather than silently ignored. */
static int check_fields(const cJSON *root, enum server_api api, char **err_json)
{
    static const char *const chat[] = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature",
                                       "top_p", "top_k", "repetition_penalty", "seed", "stop", "stream",
                                       "stream_options", "n", "num_beams", "length_penalty", "user",
                                       "frequency_penalty", "presence_penalty", "logprobs", "top_logprobs",
                                       "response_format", NULL};
    /* the legacy API: echo, suffix and best_of are checked (and refused but for their "off" values) below */
    static const char *const legacy[] = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k",
                                         "repetition_penalty", "seed", "stop", "stream", "stream_options", "n",
                                         "user", "frequency_penalty", "presence_penalty", "logprobs", "echo",
                                         "suffix", "best_of", NULL};
    const char *const *known = api == SERVER_API_CHAT ? chat : legacy;
    int n = 0;
    for (const cJSON *f = root->child; f; f = f->next) {
        const char *k = f->string;
        if (++n > 64) return reject(err_json, 400, NULL, "invalid_json", "more than 64 fields in the request");
        for (const cJSON *g = root->child; g != f; g = g->next)
            if (!strcmp(g->string, k))
                return reject(err_json, 400, k, "invalid_json", "'%.60s' is given twice", k);
        int ok = 0;
        for (size_t i = 0; known[i] && !ok; i++) ok = !strcmp(k, known[i]);
        if (ok) continue;
        /* the "off" values of unimplemented fields */
        int off = cJSON_IsNull(f), tools = 0;
        if (!strcmp(k, "logit_bias")) off |= (cJSON_IsNumber(f) && f->valuedouble == 0) || (cJSON_IsObject(f) && !f->child);
        else if (!strcmp(k, "tools") || !strcmp(k, "functions")) off |= cJSON_IsArray(f) && !f->child, tools = 1;
        else if (!strcmp(k, "tool_choice") || !strcmp(k, "function_call"))
            off |= cJSON_IsString(f) && !strcmp(f->valuestring, "none"), tools = 1;
        else if (!strcmp(k, "parallel_tool_calls") || !strcmp(k, "store")) off |= cJSON_IsBool(f);
        else
            return reject(err_json, 400, k, "unsupported_field", "'%.60s' is not a field this server knows", k);
        if (!off && tools)
            return reject(err_json, 400, k, "unsupported_field",
                          "'%.60s': function calling is not supported: MiniCPM-Llama3-V 2.5 was not trained for tool or "
                          "function calls, so its answers could not be trusted to follow them; leave '%.60s' out (for "
                          "structured answers use response_format json_schema)",
                          k, k);
        if (!off)
            return reject(err_json, 400, k, "unsupported_field", "'%.60s' is not implemented by this server; leave it out",
                          k);
    }
    return 0;
}

/* response_format: text (nothing), json_object, json_schema (compiled here: a refused keyword is a 400). */
static int parse_response_format(struct server_request *rq, const cJSON *f, const struct server_limits *lim,
                                 char **err_json)
{
    struct turn_request *t = &rq->req;
    if (!f || cJSON_IsNull(f)) return 0;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(f, "type");
    if (!cJSON_IsObject(f) || !cJSON_IsString(type))
        return reject(err_json, 400, "response_format", NULL,
                      "'response_format' must be an object with a string \"type\" (text, json_object, json_schema)");
    const char *ty = type->valuestring;
    const cJSON *js = NULL;
    for (const cJSON *x = f->child; x; x = x->next) {
        if (!strcmp(x->string, "type")) continue;
        if (!strcmp(ty, "json_schema") && !strcmp(x->string, "json_schema")) { js = x; continue; }
        return reject(err_json, 400, "response_format", NULL, "response_format: unknown field '%.60s' for type '%.40s'",
                      x->string, ty);
    }
    if (!strcmp(ty, "text")) return 0;
    if (strcmp(ty, "json_object") && strcmp(ty, "json_schema"))
        return reject(err_json, 400, "response_format", NULL,
                      "response_format.type '%.40s' is not supported (text, json_object, json_schema)", ty);
    char *schema = NULL;
    if (!strcmp(ty, "json_schema")) {
        const cJSON *sc = js ? cJSON_GetObjectItemCaseSensitive(js, "schema") : NULL;
        const cJSON *name = js ? cJSON_GetObjectItemCaseSensitive(js, "name") : NULL;
        const cJSON *strict = js ? cJSON_GetObjectItemCaseSensitive(js, "strict") : NULL;
        if (!cJSON_IsObject(js) || !cJSON_IsObject(sc))
            return reject(err_json, 400, "response_format", NULL,
                          "response_format json_schema needs \"json_schema\": {\"name\": ..., \"schema\": {...}}");
        if ((name && !cJSON_IsString(name)) || (strict && !cJSON_IsBool(strict) && !cJSON_IsNull(strict)))
            return reject(err_json, 400, "response_format", NULL,
                          "response_format.json_schema: 'name' must be a string and 'strict' a boolean");
        for (const cJSON *x = js->child; x; x = x->next)
            if (strcmp(x->string, "name") && strcmp(x->string, "schema") && strcmp(x->string, "strict") &&
                strcmp(x->string, "description"))
                return reject(err_json, 400, "response_format", NULL,
                              "response_format.json_schema: unknown field '%.60s'", x->string);
        if (!(schema = cJSON_PrintUnformatted(sc))) return reject(err_json, 500, NULL, NULL, "out of memory");
    }
    struct err e = {{0}};
    if (!lim->vocab) {
        free(schema);
        return reject(err_json, 400, "response_format", NULL, "response_format is not available on this server");
    }
    if (grammar_compile(&rq->grammar, schema, &e)) {
        free(schema);
        return reject(err_json, 400, "response_format", "unsupported_schema", "response_format.json_schema.%s", e.msg);
    }
    free(schema);
    if (t->num_beams > 1) {
        return reject(err_json, 400, "response_format", NULL,
                      "response_format works with sampling or greedy decoding, not with beam search (num_beams > 1)");
    }
    if (!(t->vocab = lim->vocab(lim->vocab_ctx, &e)))
        return reject(err_json, 500, NULL, NULL, "response_format: %s", e.msg);
    t->grammar = rq->grammar;
    return 0;
}

/* chat: the messages -> system prompt, messages with image markers, images (decoded, budgeted). */
static int parse_messages(struct server_request *rq, const cJSON *root, const struct server_limits *lim, char **err_json)
{
    struct turn_request *t = &rq->req;
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (!cJSON_IsArray(msgs)) return reject(err_json, 400, "messages", NULL, "'messages' must be an array");
    int n = cJSON_GetArraySize(msgs);
    if (n < 1 || n > lim->max_messages)
        return reject(err_json, 400, "messages", NULL, "'messages' must hold 1..%d messages, got %d", lim->max_messages, n);
    rq->msgs = calloc((size_t)n, sizeof *rq->msgs);
    rq->texts = calloc((size_t)n, sizeof *rq->texts);
    rq->images = calloc((size_t)lim->max_images + 1, sizeof *rq->images);
    rq->enc = calloc((size_t)lim->max_images + 1, sizeof *rq->enc);
    rq->enc_len = calloc((size_t)lim->max_images + 1, sizeof *rq->enc_len);
    if (!rq->msgs || !rq->texts || !rq->images || !rq->enc || !rq->enc_len) return reject(err_json, 500, NULL, NULL, "out of memory");
    size_t sys_len = 0;
    int mi = 0, st;
    for (const cJSON *m = msgs->child; m; m = m->next, mi++) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!cJSON_IsObject(m) || !cJSON_IsString(role))
            return reject(err_json, 400, "messages", NULL, "messages[%d] must be an object with a string \"role\"", mi);
        const char *r = role->valuestring;
        int is_sys = !strcmp(r, "system") || !strcmp(r, "developer");
        if (!is_sys && strcmp(r, "user") && strcmp(r, "assistant"))
            return reject(err_json, 400, "messages", NULL,
                          "messages[%d].role '%.40s' is not supported (system, developer, user, assistant)", mi, r);
        char *text = NULL;
        if ((st = parse_content(rq, content, mi, &text, lim, err_json))) {
            free(text);
            return st;
        }
        if (is_sys) {
            /* chat() takes one system prompt and puts it first; several are joined */
            int bad = (sys_len && cat(&rq->system, &sys_len, "\n\n", 2)) || cat(&rq->system, &sys_len, text, strlen(text));
            free(text);
            if (bad) return reject(err_json, 400, "messages", NULL, "the system prompt is too long");
            continue;
        }
        if (t->n_msgs == 0 && strcmp(r, "user")) {
            free(text);
            return reject(err_json, 400, "messages", NULL, "the first non-system message must be from the user");
        }
        rq->texts[t->n_msgs] = text;
        rq->msgs[t->n_msgs].role = !strcmp(r, "user") ? "user" : "assistant";
        rq->msgs[t->n_msgs].content = text;
        t->n_msgs++;
    }
    if (!t->n_msgs) return reject(err_json, 400, "messages", NULL, "no user message");
    t->msgs = rq->msgs;
    t->system = rq->system;
    t->images = rq->images;
    t->img_keys = (const uint8_t *const *)rq->enc;
    t->img_key_len = rq->enc_len;
    return 0;
}

/* A JSON array of token ids -> rq->prompt_ids (the vocabulary check is turn_prepare's). */
static int prompt_ids(struct server_request *rq, const cJSON *arr, char **err_json)
{
    const int n = cJSON_GetArraySize(arr);
    if (n < 1 || n > SERVER_MAX_PROMPT_IDS)
        return reject(err_json, 400, "prompt", NULL, "a prompt of token ids must hold 1..%d ids, got %d", SERVER_MAX_PROMPT_IDS, n);
    if (!(rq->prompt_ids = malloc((size_t)n * sizeof *rq->prompt_ids))) return reject(err_json, 500, NULL, NULL, "out of memory");
    int i = 0;
    for (const cJSON *x = arr->child; x; x = x->next, i++) {
        const double d = cJSON_IsNumber(x) ? x->valuedouble : -1;
        if (!(d >= 0 && d <= INT32_MAX && d == floor(d)))
            return reject(err_json, 400, "prompt", NULL, "prompt[%d] must be a token id (an integer >= 0)", i);
        rq->prompt_ids[i] = (int32_t)d;
    }
    rq->req.raw_ids = rq->prompt_ids;
    rq->req.n_raw_ids = n;
    return 0;
}

/* completions: 'prompt' is a string, an array of one string, token ids, or an array of one array of ids.
 * Several prompts in one request are refused (one prompt per request). */
static int parse_prompt(struct server_request *rq, const cJSON *root, char **err_json)
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (!p || cJSON_IsNull(p)) return reject(err_json, 400, "prompt", NULL, "'prompt' is required");
    if (cJSON_IsArray(p) && cJSON_IsNumber(p->child)) return prompt_ids(rq, p, err_json);
    if (cJSON_IsArray(p)) {
        const int n = cJSON_GetArraySize(p);
        if (n != 1)
            return reject(err_json, 400, "prompt", NULL,
                          "'prompt' holds %d prompts; this server takes one prompt per request (send one request per "
                          "prompt; 'n' gives several samples of one prompt)",
                          n);
        if (cJSON_IsArray(p->child)) return prompt_ids(rq, p->child, err_json);
        p = p->child;
    }
    if (!cJSON_IsString(p))
        return reject(err_json, 400, "prompt", NULL, "'prompt' must be a string, an array of one string, or token ids");
    size_t len = 0;
    if (cat(&rq->prompt, &len, p->valuestring, strlen(p->valuestring)))
        return reject(err_json, 400, "prompt", NULL, "'prompt' is too long");
    rq->req.raw_text = rq->prompt;
    return 0;
}

/* completions: echo, suffix and best_of are accepted only with the value that means "off". */
static int legacy_off_fields(const cJSON *root, char **err_json)
{
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(root, "echo");
    if (f && !cJSON_IsNull(f) && !cJSON_IsFalse(f))
        return reject(err_json, 400, "echo", "unsupported_field",
                      "'echo' is not implemented (the answer does not repeat the prompt); leave it out or false");
    f = cJSON_GetObjectItemCaseSensitive(root, "suffix");
    if (f && !cJSON_IsNull(f) && !(cJSON_IsString(f) && !f->valuestring[0]))
        return reject(err_json, 400, "suffix", "unsupported_field",
                      "'suffix' is not implemented (no fill-in-the-middle); leave it out");
    f = cJSON_GetObjectItemCaseSensitive(root, "best_of");
    if (f && !cJSON_IsNull(f) && !(cJSON_IsNumber(f) && f->valuedouble == 1))
        return reject(err_json, 400, "best_of", "unsupported_field",
                      "'best_of' is not implemented (use 'n' for several samples and rank them yourself); leave it out or 1");
    return 0;
}

/* logprobs: chat's boolean + top_logprobs, or the legacy integer (the alternatives per token). */
static int parse_logprobs(struct server_request *rq, const cJSON *root, char **err_json)
{
    struct turn_request *t = &rq->req;
    const cJSON *lpf = cJSON_GetObjectItemCaseSensitive(root, "logprobs");
    double v;
    int r;
    if (rq->api == SERVER_API_COMPLETIONS) {
        if ((r = num_field(root, "logprobs", 0, SAMPLER_MAX_TOP_LOGPROBS, 1, &v, err_json)) > 1) return 400;
        if (r == 1) t->logprobs = 1, t->top_logprobs = (int)v;
    } else {
        if (lpf && !cJSON_IsNull(lpf)) {
            if (!cJSON_IsBool(lpf)) return reject(err_json, 400, "logprobs", NULL, "'logprobs' must be a boolean");
            t->logprobs = cJSON_IsTrue(lpf);
        }
        if ((r = num_field(root, "top_logprobs", 0, SAMPLER_MAX_TOP_LOGPROBS, 1, &v, err_json)) > 1) return 400;
        if (r == 1 && v > 0 && !t->logprobs)
            return reject(err_json, 400, "top_logprobs", NULL, "'top_logprobs' needs \"logprobs\": true");
        if (r == 1) t->top_logprobs = (int)v;
    }
    if (t->logprobs && t->num_beams > 1)
        return reject(err_json, 400, "logprobs", NULL, "'logprobs' is not available with beam search (num_beams > 1)");
    return 0;
}

/* The fields both APIs share: sampling, n, beams, the answer length, logprobs, streaming, stop. */
static int parse_options(struct server_request *rq, const cJSON *root, const struct server_limits *lim, char **err_json)
{
    struct turn_request *t = &rq->req;
    double v;
    int r, st;
    if ((r = num_field(root, "temperature", 0, 2, 0, &v, err_json)) < 0 || r > 1) return 400;
    if (r == 1) {
        if (v == 0) t->sp.greedy = true;
        else { t->sp.temperature = (float)v; t->sp.greedy = false; t->num_beams = 0; }
    }
    if ((r = num_field(root, "top_p", 1e-6, 1, 0, &v, err_json)) > 1) return 400;
    if (r == 1) t->sp.top_p = (float)v;
    if ((r = num_field(root, "top_k", 0, 1 << 30, 1, &v, err_json)) > 1) return 400;
    if (r == 1) t->sp.top_k = (int)v;
    if ((r = num_field(root, "repetition_penalty", 1e-3, 100, 0, &v, err_json)) > 1) return 400;
    if (r == 1) t->sp.repetition_penalty = (float)v;
    /* not implemented: 0 (the API default, which some clients send) only */
    if ((r = num_field(root, "frequency_penalty", 0, 0, 0, &v, err_json)) > 1) return 400;
    if ((r = num_field(root, "presence_penalty", 0, 0, 0, &v, err_json)) > 1) return 400;
    if ((r = num_field(root, "seed", -9.2e18, 9.2e18, 1, &v, err_json)) > 1) return 400;
    if (r == 1) t->sp.seed = (uint64_t)(int64_t)v;
    else t->sp.seed = (uint64_t)(time_now() * 1e9);
    if ((r = num_field(root, "num_beams", 1, BEAM_MAX, 1, &v, err_json)) > 1) return 400;
    if (r == 1) {
        t->num_beams = (int)v;
        if (t->num_beams > 1) t->sp.greedy = true;
    }
    if ((r = num_field(root, "length_penalty", -10, 10, 0, &v, err_json)) > 1) return 400;
    if (r == 1) t->length_penalty = (float)v;
    rq->n = 1;
    if ((r = num_field(root, "n", 1, SERVER_MAX_N, 1, &v, err_json)) > 1) return 400;
    if (r == 1) rq->n = (int)v;
    if (rq->n > 1 && t->num_beams > 1)
        return reject(err_json, 400, "n", NULL,
                      "'n' > 1 needs sampling or greedy decoding, not beam search (num_beams > 1%s)",
                      lim->default_beams > 1 ? ", the server's --beams default: set temperature" : "");
    if ((r = num_field(root, "max_tokens", 1, INT_MAX / 4, 1, &v, err_json)) > 1) return 400;
    if (r == 1) rq->max_tokens = (int)v;
    if ((r = num_field(root, "max_completion_tokens", 1, INT_MAX / 4, 1, &v, err_json)) > 1) return 400;
    if (r == 1 && rq->max_tokens > 0 && rq->max_tokens != (int)v)
        return reject(err_json, 400, "max_completion_tokens", NULL,
                      "'max_tokens' (%d) and 'max_completion_tokens' (%d) differ; they are the same setting, give one",
                      rq->max_tokens, (int)v);
    if (r == 1) rq->max_tokens = (int)v;
    if ((st = parse_logprobs(rq, root, err_json))) return st;
    if ((st = parse_response_format(rq, cJSON_GetObjectItemCaseSensitive(root, "response_format"), lim, err_json)))
        return st;

    const cJSON *stream = cJSON_GetObjectItemCaseSensitive(root, "stream");
    if (stream && !cJSON_IsNull(stream)) {
        if (!cJSON_IsBool(stream)) return reject(err_json, 400, "stream", NULL, "'stream' must be a boolean");
        rq->stream = cJSON_IsTrue(stream);
    }
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        const cJSON *iu = cJSON_GetObjectItemCaseSensitive(so, "include_usage");
        if (!cJSON_IsObject(so) || (iu && !cJSON_IsBool(iu)))
            return reject(err_json, 400, "stream_options", NULL, "'stream_options' must be {\"include_usage\": bool}");
        rq->include_usage = cJSON_IsTrue(iu);
    }
    const cJSON *stop = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (stop && !cJSON_IsNull(stop)) {
        const cJSON *one = cJSON_IsString(stop) ? stop : NULL;
        int ns = one ? 1 : cJSON_IsArray(stop) ? cJSON_GetArraySize(stop) : -1;
        if (ns < 0 || ns > SERVER_MAX_STOP)
            return reject(err_json, 400, "stop", NULL, "'stop' must be a string or an array of up to %d strings", SERVER_MAX_STOP);
        const cJSON *s = one ? one : stop->child;
        for (int i = 0; i < ns; i++, s = s->next) {
            if (!cJSON_IsString(s) || !s->valuestring[0] || strlen(s->valuestring) > SERVER_MAX_STOP_LEN)
                return reject(err_json, 400, "stop", NULL, "each stop sequence must be a non-empty string of at most %d bytes",
                              SERVER_MAX_STOP_LEN);
            if (!(rq->stop_buf[i] = strdup(s->valuestring))) return reject(err_json, 500, NULL, NULL, "out of memory");
            t->stop[t->n_stop++] = rq->stop_buf[i];
        }
    }
    return 0;
}

/* The n turns (prompt ids, the context check with room for the answer, so a too-long prompt never
 * queues; without max_tokens the answer may take the model's 1024 tokens or what is left of the
 * context), then the checks that need the answer length. Choice i samples with seed + i. */
static int prepare_turns(struct server_request *rq, const struct engine *g, const struct server_limits *lim,
                         char **err_json)
{
    struct turn_request *t = &rq->req;
    t->max_new = rq->max_tokens > 0 ? rq->max_tokens : 0;
    const char *what = rq->api == SERVER_API_CHAT ? "messages" : "prompt";
    for (int i = 0; i < rq->n; i++) {
        struct turn_request ti = *t;
        ti.sp.seed = t->sp.seed + (uint64_t)i;
        struct err e = {{0}};
        if (turn_prepare(&rq->turns[i], g, &ti, &e))
            return reject(err_json, 400, what, strstr(e.msg, "maximum context length") ? "context_length_exceeded" : NULL,
                          "%s", e.msg);
    }
    const int max_new = turn_max_new(rq->turns[0]);
    if (rq->grammar) {
        struct grammar_state gs;
        grammar_state_init(&gs, rq->grammar);
        const uint32_t need = grammar_min_bytes(&gs);
        if (need > (uint32_t)max_new)
            return reject(err_json, 400, "max_tokens", NULL,
                          "the response_format's shortest answer takes %u tokens, but the answer may have at most %d "
                          "(max_tokens, or what the context leaves); raise max_tokens",
                          need, max_new);
    }
    if (t->num_beams > 1 && lim->max_beam_tokens > 0 && (int64_t)t->num_beams * max_new > lim->max_beam_tokens)
        return reject(err_json, 400, "num_beams", "beam_limit",
                      "num_beams x max_tokens = %d x %d is over the server's limit of %lld (--max-beam-tokens); "
                      "ask for fewer beams or tokens",
                      t->num_beams, max_new, (long long)lim->max_beam_tokens);
    return 0;
}

int server_request_parse(struct server_request *rq, enum server_api api, const char *body, size_t len,
                         const struct engine *g, const struct server_limits *lim, char **err_json)
{
    memset(rq, 0, sizeof *rq);
    *err_json = NULL;
    rq->api = api;
    rq->max_tokens = -1;
    rq->n = 1;
    struct turn_request *t = &rq->req;
    sampler_defaults(&t->sp);
    t->length_penalty = 1.0f;
    if (lim->default_beams > 1 && api == SERVER_API_CHAT) {
        t->num_beams = lim->default_beams;
        t->sp.greedy = true;
        t->sp.repetition_penalty = 1.2f;
    }
    int st = 0;
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root) return reject(err_json, 400, NULL, "invalid_json", "the body is not valid JSON");
    if (!cJSON_IsObject(root)) { st = reject(err_json, 400, NULL, "invalid_json", "the body must be a JSON object"); goto out; }
    if ((st = check_fields(root, api, err_json))) goto out;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (model && !cJSON_IsString(model)) { st = reject(err_json, 400, "model", NULL, "'model' must be a string"); goto out; }
    if (api == SERVER_API_CHAT) st = parse_messages(rq, root, lim, err_json);
    else if (!(st = legacy_off_fields(root, err_json))) st = parse_prompt(rq, root, err_json);
    if (st || (st = parse_options(rq, root, lim, err_json)) || (st = prepare_turns(rq, g, lim, err_json))) goto out;
out:
    cJSON_Delete(root);
    if (st) server_request_free(rq);
    return st;
}
