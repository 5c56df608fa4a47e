/* server_answer.c: the answers' JSON (server.h): the chat API's chat.completion / chat.completion.chunk
 * objects and the legacy completions API's text_completion objects, n choices each, with their logprobs
 * in each API's shape (chat: content[] entries with token / logprob / bytes / top_logprobs; legacy:
 * tokens, token_logprobs, top_logprobs as {token: logprob} maps, text_offset). */
#include "server.h"

#include "tokenizer.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The length of the valid UTF-8 sequence at p (1..4), or 0 when the bytes there are not one. */
static size_t utf8_char(const unsigned char *p, size_t n)
{
    size_t k = p[0] < 0x80 ? 1 : (p[0] & 0xe0) == 0xc0 && p[0] >= 0xc2 ? 2 : (p[0] & 0xf0) == 0xe0 ? 3
                                                                   : (p[0] & 0xf8) == 0xf0 && p[0] <= 0xf4 ? 4 : 0;
    if (!k || k > n) return 0;
    for (size_t i = 1; i < k; i++)
        if ((p[i] & 0xc0) != 0x80) return 0;
    if (k == 3 && ((p[0] == 0xe0 && p[1] < 0xa0) || (p[0] == 0xed && p[1] >= 0xa0))) return 0;
    if (k == 4 && ((p[0] == 0xf0 && p[1] < 0x90) || (p[0] == 0xf4 && p[1] >= 0x90))) return 0;
    return k;
}

/* A token's text: its bytes, with each byte that is not part of a whole UTF-8 character written as the
 * 4 characters \xNN (malloc'd; NULL when out of memory). *n_chars: the code points of its bytes (each
 * byte that does not continue a character counts one: the legacy text_offset). bytes (may be NULL)
 * receives the raw bytes as numbers. */
static char *token_text(const struct tokenizer *tok, int32_t id, cJSON *bytes, long *n_chars)
{
    const char *b = NULL;
    size_t n = 0;
    if (tok) tokenizer_token_bytes(tok, id, &b, &n);
    char *txt = malloc(4 * n + 1);
    size_t k = 0;
    long chars = 0;
    for (size_t i = 0; i < n;) {
        size_t c = utf8_char((const unsigned char *)b + i, n - i);
        if (c && txt) {
            memcpy(txt + k, b + i, c);
            k += c;
        } else if (txt) {
            k += (size_t)snprintf(txt + k, 5, "\\x%02x", (unsigned char)b[i]);
        }
        for (size_t j = 0; j < (c ? c : 1); j++) {
            if (bytes) cJSON_AddItemToArray(bytes, cJSON_CreateNumber((unsigned char)b[i + j]));
            chars += ((unsigned char)b[i + j] & 0xc0) != 0x80;
        }
        i += c ? c : 1;
    }
    if (txt) txt[k] = 0;
    if (n_chars) *n_chars = chars;
    return txt;
}

/* One chat entry's fields: "token" (its text) and "bytes" (its raw bytes). */
static void add_token(cJSON *o, const struct tokenizer *tok, int32_t id)
{
    cJSON *arr = cJSON_CreateArray();
    char *txt = token_text(tok, id, arr, NULL);
    cJSON_AddStringToObject(o, "token", txt ? txt : "");
    cJSON_AddItemToObject(o, "bytes", arr);
    free(txt);
}

/* chat: {"content":[{token, logprob, bytes, top_logprobs:[{token, logprob, bytes}]}], "refusal": null} */
static cJSON *chat_logprobs_json(const struct turn_logprob *lp, int n, const struct tokenizer *tok)
{
    cJSON *o = cJSON_CreateObject(), *content = cJSON_AddArrayToObject(o, "content");
    for (int i = 0; i < n; i++) {
        cJSON *x = cJSON_CreateObject();
        cJSON_AddItemToArray(content, x);
        add_token(x, tok, lp[i].id);
        cJSON_AddNumberToObject(x, "logprob", lp[i].lp);
        cJSON *top = cJSON_AddArrayToObject(x, "top_logprobs");
        for (int k = 0; k < lp[i].n_top; k++) {
            cJSON *y = cJSON_CreateObject();
            cJSON_AddItemToArray(top, y);
            add_token(y, tok, lp[i].top[k]);
            cJSON_AddNumberToObject(y, "logprob", lp[i].top_lp[k]);
        }
    }
    cJSON_AddNullToObject(o, "refusal");
    return o;
}

/* legacy: {"tokens":[...], "token_logprobs":[...], "top_logprobs":[{token: logprob}], "text_offset":[...]}.
 * Each top_logprobs map holds the n_top most likely tokens and the chosen one (so up to n_top + 1 keys,
 * as OpenAI's API); a token whose text repeats one already in the map is left out (a map cannot hold
 * it twice). text_offset: where each token's text starts, in code points from the start of the
 * completion (*off at the first entry; advanced past the last). */
static cJSON *legacy_logprobs_json(const struct turn_logprob *lp, int n, long *off, const struct tokenizer *tok)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *toks = cJSON_AddArrayToObject(o, "tokens"), *tlp = cJSON_AddArrayToObject(o, "token_logprobs");
    cJSON *tops = cJSON_AddArrayToObject(o, "top_logprobs"), *offs = cJSON_AddArrayToObject(o, "text_offset");
    for (int i = 0; i < n; i++) {
        long chars = 0;
        char *txt = token_text(tok, lp[i].id, NULL, &chars);
        cJSON_AddItemToArray(toks, cJSON_CreateString(txt ? txt : ""));
        cJSON_AddItemToArray(tlp, cJSON_CreateNumber(lp[i].lp));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)*off));
        *off += chars;
        cJSON *m = cJSON_CreateObject();
        cJSON_AddItemToArray(tops, m);
        for (int k = 0; k <= lp[i].n_top; k++) {
            const int32_t id = k < lp[i].n_top ? lp[i].top[k] : lp[i].id;
            const double v = k < lp[i].n_top ? lp[i].top_lp[k] : lp[i].lp;
            char *t = k < lp[i].n_top ? token_text(tok, id, NULL, NULL) : (txt ? strdup(txt) : NULL);
            if (t && !cJSON_GetObjectItemCaseSensitive(m, t)) cJSON_AddNumberToObject(m, t, v);
            free(t);
        }
        free(txt);
    }
    return o;
}

static cJSON *logprobs_json(enum server_api api, const struct turn_logprob *lp, int n, long *off,
                            const struct tokenizer *tok)
{
    return api == SERVER_API_CHAT ? chat_logprobs_json(lp, n, tok) : legacy_logprobs_json(lp, n, off, tok);
}

static cJSON *answer_base(enum server_api api, const char *id, long created, const char *model, int chunk)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "object", api == SERVER_API_COMPLETIONS ? "text_completion"
                                         : chunk                      ? "chat.completion.chunk"
                                                                      : "chat.completion");
    cJSON_AddNumberToObject(o, "created", (double)created);
    cJSON_AddStringToObject(o, "model", model);
    return o;
}

static void add_usage(cJSON *o, int n_prompt, int n_gen)
{
    cJSON *u = cJSON_AddObjectToObject(o, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", n_prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", n_gen);
    cJSON_AddNumberToObject(u, "total_tokens", n_prompt + n_gen);
}

static char *print_free(cJSON *o)
{
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

char *server_answer_json(enum server_api api, const char *id, long created, const char *model,
                         const struct turn_result *r, int n, const struct tokenizer *tok)
{
    cJSON *o = answer_base(api, id, created, model, 0);
    cJSON *ch = cJSON_AddArrayToObject(o, "choices");
    int n_gen = 0;
    for (int i = 0; i < n; i++) {
        cJSON *c = cJSON_CreateObject();
        cJSON_AddItemToArray(ch, c);
        cJSON_AddNumberToObject(c, "index", i);
        if (api == SERVER_API_CHAT) {
            cJSON *m = cJSON_AddObjectToObject(c, "message");
            cJSON_AddStringToObject(m, "role", "assistant");
            cJSON_AddStringToObject(m, "content", r[i].text ? r[i].text : "");
        } else {
            cJSON_AddStringToObject(c, "text", r[i].text ? r[i].text : "");
        }
        long off = 0;
        if (r[i].lp) cJSON_AddItemToObject(c, "logprobs", logprobs_json(api, r[i].lp, r[i].n_lp, &off, tok));
        else cJSON_AddNullToObject(c, "logprobs");
        cJSON_AddStringToObject(c, "finish_reason", r[i].finish ? r[i].finish : "stop");
        n_gen += r[i].n_gen;
    }
    add_usage(o, n ? r[0].n_prompt : 0, n_gen);
    return print_free(o);
}

char *server_chunk_json(enum server_api api, const char *id, long created, const char *model, int index,
                        const char *text, size_t len, int first, const char *finish, const struct turn_logprob *lp,
                        int n_lp, long *text_off, const struct tokenizer *tok)
{
    char *tmp = malloc(len + 1);
    if (!tmp) return NULL;
    if (text) memcpy(tmp, text, len);
    tmp[text ? len : 0] = 0;
    cJSON *o = answer_base(api, id, created, model, 1);
    cJSON *ch = cJSON_AddArrayToObject(o, "choices"), *c = cJSON_CreateObject();
    cJSON_AddItemToArray(ch, c);
    cJSON_AddNumberToObject(c, "index", index);
    if (api == SERVER_API_CHAT) {
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        if (first) cJSON_AddStringToObject(d, "role", "assistant");
        if (text) cJSON_AddStringToObject(d, "content", tmp);
    } else {
        cJSON_AddStringToObject(c, "text", tmp); /* the legacy chunk always has its text ("" when none) */
    }
    if (lp) cJSON_AddItemToObject(c, "logprobs", logprobs_json(api, lp, n_lp, text_off, tok));
    else cJSON_AddNullToObject(c, "logprobs");
    if (finish) cJSON_AddStringToObject(c, "finish_reason", finish);
    else cJSON_AddNullToObject(c, "finish_reason");
    free(tmp);
    return print_free(o);
}

char *server_usage_chunk_json(enum server_api api, const char *id, long created, const char *model, int n_prompt,
                              int n_gen)
{
    cJSON *o = answer_base(api, id, created, model, 1);
    cJSON_AddArrayToObject(o, "choices");
    add_usage(o, n_prompt, n_gen);
    return print_free(o);
}
