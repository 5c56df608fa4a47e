/* test_server_choices.c: issue 17 item 3 on the tiny model, in-process over loopback (thttp.h), with
 * --parallel 1 (the n turns one after another) and --parallel 4 (the scheduler; n = 5 is more choices
 * than slots, so some wait for a slot):
 *   n > 1: choice i of a request equals the n = 1 request with seed + i (the documented derivation),
 *     streamed and not, chat and completions; greedy choices are all equal; usage adds the choices up;
 *     the bounds (n 0, 17, 1.5, with beams); the request's seed is the sampler's (a sampled completion
 *     equals turn_run on the reference engine with that seed);
 *   /v1/completions: the greedy answer of a raw prompt equals an independent reference (tref.h: the
 *     engine's logits step by step, no template), byte for byte with no strip; the legacy logprobs
 *     (tokens, token_logprobs, top_logprobs maps, text_offset) equal the reference's, streamed and not; a
 *     prompt of token ids answers as its text does; every refusal names its field, the "off" values pass;
 *   /metrics: the new series (sequences_active, image cache) and the counters over both endpoints. */
#include <math.h>
#include <signal.h>

#include "engine.h"
#include "server.h"
#include "t.h"
#include "thttp.h"
#include "tokenizer.h"
#include "tref.h"
#include "tutil.h"

struct srv {
    struct engine *g;
    struct server *s;
    int port;
    long sent, ok, client_err;
};
static struct srv S1, S4;
static struct engine *REF;

static struct resp post(struct srv *v, const char *path, const char *body)
{
    struct resp r = http(v->port, "POST", path, body);
    v->sent++;
    if (r.status == 200) v->ok++;
    else if (r.status >= 400 && r.status < 500) v->client_err++;
    return r;
}

/* The choices of an answer, by index: text, finish_reason, and the legacy logprobs object (JSON text). */
#define MAXC 16
struct choices {
    int n, usage_prompt, usage_gen, done;
    char *text[MAXC];
    char finish[MAXC][16];
    cJSON *lp[MAXC];              /* completions' logprobs (streamed: the chunks' arrays concatenated) */
};

static void choices_free(struct choices *c)
{
    for (int i = 0; i < MAXC; i++) free(c->text[i]), cJSON_Delete(c->lp[i]);
    memset(c, 0, sizeof *c);
}

static void append(char **dst, const char *s)
{
    size_t a = *dst ? strlen(*dst) : 0, b = strlen(s);
    *dst = realloc(*dst, a + b + 1);
    memcpy(*dst + a, s, b + 1);
}

/* Appends the items of each of src's arrays to dst's (the legacy logprobs of one chunk). */
static void lp_append(cJSON **dst, const cJSON *src)
{
    if (!cJSON_IsObject(src)) return;
    if (!*dst) { *dst = cJSON_Duplicate(src, 1); return; }
    for (const cJSON *a = src->child; a; a = a->next) {
        cJSON *d = cJSON_GetObjectItem(*dst, a->string);
        for (const cJSON *x = a->child; d && x; x = x->next) cJSON_AddItemToArray(d, cJSON_Duplicate(x, 1));
    }
}

static void take_choice(struct choices *c, const cJSON *ch, int chat, int stream)
{
    const int i = cJSON_GetObjectItem(ch, "index")->valueint;
    if (i < 0 || i >= MAXC) return;
    if (i + 1 > c->n) c->n = i + 1;
    const cJSON *t = chat ? cJSON_GetObjectItem(cJSON_GetObjectItem(ch, stream ? "delta" : "message"), "content")
                          : cJSON_GetObjectItem(ch, "text");
    if (!c->text[i]) c->text[i] = strdup("");
    if (cJSON_IsString(t)) append(&c->text[i], t->valuestring);
    const cJSON *f = cJSON_GetObjectItem(ch, "finish_reason");
    if (cJSON_IsString(f)) snprintf(c->finish[i], sizeof c->finish[i], "%s", f->valuestring);
    if (!chat) lp_append(&c->lp[i], cJSON_GetObjectItem(ch, "logprobs"));
}

static void take_usage(struct choices *c, const cJSON *o)
{
    const cJSON *u = cJSON_GetObjectItem(o, "usage");
    if (!cJSON_IsObject(u)) return;
    c->usage_prompt = cJSON_GetObjectItem(u, "prompt_tokens")->valueint;
    c->usage_gen = cJSON_GetObjectItem(u, "completion_tokens")->valueint;
}

static int parse_answer(const struct resp *r, int chat, int stream, struct choices *c)
{
    memset(c, 0, sizeof *c);
    if (r->status != 200 || !r->body) return -1;
    if (!stream) {
        cJSON *o = cJSON_Parse(r->body);
        const cJSON *ch;
        cJSON_ArrayForEach(ch, cJSON_GetObjectItem(o, "choices")) take_choice(c, ch, chat, 0);
        take_usage(c, o);
        cJSON_Delete(o);
        c->done = 1;
        return 0;
    }
    for (const char *p = r->body; (p = strstr(p, "data: "));) {
        p += 6;
        const char *e = strstr(p, "\n\n");
        if (!e) break;
        if (!strncmp(p, "[DONE]", 6)) { c->done = 1; break; }
        cJSON *o = cJSON_ParseWithLength(p, (size_t)(e - p));
        const cJSON *ch;
        cJSON_ArrayForEach(ch, cJSON_GetObjectItem(o, "choices")) take_choice(c, ch, chat, 1);
        take_usage(c, o);
        cJSON_Delete(o);
        p = e;
    }
    return 0;
}

static const char *path_of(int chat) { return chat ? "/v1/chat/completions" : "/v1/completions"; }

static char *body_of(int chat, const char *extra)
{
    char *b = malloc(1024 + strlen(extra));
    CHECK(b);
    sprintf(b, chat ? "{\"messages\":[{\"role\":\"user\",\"content\":\"Tell me a story\"}]%s}" : "{\"prompt\":\"Once upon a time\"%s}",
            extra);
    return b;
}

/* n choices, streamed and not: choice i == the n = 1 request with seed + i; usage adds up. */
static void n_seeds(struct srv *v, int chat, int n)
{
    char extra[256];
    struct choices solo[MAXC];
    int gen = 0, differ = 0;
    for (int i = 0; i < n; i++) {
        snprintf(extra, sizeof extra, ",\"temperature\":0.9,\"seed\":%d,\"max_tokens\":8,\"stream_options\":null", 40 + i);
        char *b = body_of(chat, extra);
        struct resp r = post(v, path_of(chat), b);
        T_ASSERTF(parse_answer(&r, chat, 0, &solo[i]) == 0 && solo[i].n == 1, "solo %d: %d %s", i, r.status, r.body ? r.body : "");
        gen += solo[i].usage_gen;
        if (i && solo[i].text[0] && solo[0].text[0]) differ += strcmp(solo[i].text[0], solo[0].text[0]) != 0;
        free(b), free(r.body);
    }
    T_ASSERTF(differ > 0, "the seeds gave %d equal answers: the test could not see a seed mix-up", n);
    for (int stream = 0; stream < 2; stream++) {
        snprintf(extra, sizeof extra, ",\"temperature\":0.9,\"seed\":40,\"max_tokens\":8,\"n\":%d,\"stream\":%s%s", n,
                 stream ? "true" : "false", stream ? ",\"stream_options\":{\"include_usage\":true}" : "");
        char *b = body_of(chat, extra);
        struct resp r = post(v, path_of(chat), b);
        struct choices c;
        T_ASSERTF(parse_answer(&r, chat, stream, &c) == 0 && c.done, "n=%d stream %d: %d %s", n, stream, r.status,
                  r.body ? r.body : "");
        T_EQ_INT(c.n, n);
        for (int i = 0; i < n && i < c.n; i++) {
            T_ASSERTF(c.text[i] && solo[i].text[0] && !strcmp(c.text[i], solo[i].text[0]), "choice %d (stream %d): '%s' != solo '%s'",
                      i, stream, c.text[i] ? c.text[i] : "(none)", solo[i].text[0] ? solo[i].text[0] : "(none)");
            T_EQ_STR(c.finish[i], solo[i].finish[0]);
        }
        T_EQ_INT(c.usage_gen, gen);
        T_EQ_INT(c.usage_prompt, solo[0].usage_prompt);
        choices_free(&c);
        free(b), free(r.body);
    }
    for (int i = 0; i < n; i++) choices_free(&solo[i]);
}

static void test_n_chat_p1(void) { n_seeds(&S1, 1, 3); }
static void test_n_chat_p4(void) { n_seeds(&S4, 1, 5); }
static void test_n_completions_p1(void) { n_seeds(&S1, 0, 3); }
static void test_n_completions_p4(void) { n_seeds(&S4, 0, 5); }

/* The request's seed is the sampler's seed: a sampled n = 1 completion with seed s equals the same raw
 * prompt run on the reference engine directly (turn_run, no server) with sampler seed s and the
 * server's sampling defaults (sampler_defaults, temperature as sent). n_seeds compares choices with
 * n = 1 requests, which share a seed mix-up of the parser; this pins the seed itself. */
static void test_seed_is_sampler_seed(void)
{
    char *want[2] = {NULL, NULL};
    for (int k = 0; k < 2; k++) {
        const int seed = 40 + k;
        struct turn_request rq;
        memset(&rq, 0, sizeof rq);
        rq.raw_text = "Once upon a time";
        rq.max_new = 8;
        sampler_defaults(&rq.sp);
        rq.sp.temperature = 0.9f;
        rq.sp.seed = (uint64_t)seed;
        struct turn *t = NULL;
        struct turn_result res;
        memset(&res, 0, sizeof res);
        struct err e = {{0}};
        T_ASSERTF(turn_prepare(&t, REF, &rq, &e) == 0 && turn_run(t, REF, NULL, &res, &e) == 0, "%s", e.msg);
        want[k] = res.text ? strdup(res.text) : NULL;
        turn_result_free(&res);
        turn_free(t);
        char extra[128];
        snprintf(extra, sizeof extra, ",\"temperature\":0.9,\"seed\":%d,\"max_tokens\":8", seed);
        char *b = body_of(0, extra);
        struct srv *vs[2] = {&S1, &S4};
        for (int j = 0; j < 2; j++) {
            struct resp r = post(vs[j], "/v1/completions", b);
            struct choices c;
            T_ASSERTF(parse_answer(&r, 0, 0, &c) == 0 && c.n == 1, "seed %d: %d %s", seed, r.status, r.body ? r.body : "");
            T_ASSERTF(c.text[0] && want[k] && !strcmp(c.text[0], want[k]), "seed %d (--parallel %d): '%s' != engine '%s'", seed,
                      j ? 4 : 1, c.text[0] ? c.text[0] : "(none)", want[k] ? want[k] : "(none)");
            choices_free(&c);
            free(r.body);
        }
        free(b);
    }
    T_ASSERTF(want[0] && want[1] && strcmp(want[0], want[1]), "seeds 40 and 41 gave one answer: the test cannot see a shift");
    free(want[0]), free(want[1]);
}

static void test_n_greedy(void)
{
    struct srv *vs[2] = {&S1, &S4};
    for (int k = 0; k < 2; k++) {
        char *b = body_of(1, ",\"temperature\":0,\"max_tokens\":8,\"n\":4"), *b1 = body_of(1, ",\"temperature\":0,\"max_tokens\":8");
        struct resp r = post(vs[k], path_of(1), b), r1 = post(vs[k], path_of(1), b1);
        struct choices c, c1;
        T_ASSERT(parse_answer(&r, 1, 0, &c) == 0 && parse_answer(&r1, 1, 0, &c1) == 0);
        T_EQ_INT(c.n, 4);
        for (int i = 0; i < c.n && c1.text[0]; i++) T_ASSERT(c.text[i] && !strcmp(c.text[i], c1.text[0]));
        choices_free(&c), choices_free(&c1);
        free(b), free(b1), free(r.body), free(r1.body);
    }
}

static void refused(struct srv *v, int chat, const char *extra, const char *param, const char *needle)
{
    char *b = body_of(chat, extra);
    struct resp r = post(v, path_of(chat), b);
    char want[96];
    snprintf(want, sizeof want, "\"param\":\"%s\"", param);
    T_ASSERTF(r.status == 400 && r.body && strstr(r.body, want) && strstr(r.body, needle), "%s %s: %d %s", path_of(chat),
              extra, r.status, r.body ? r.body : "(none)");
    free(b), free(r.body);
}

static void accepted(struct srv *v, int chat, const char *extra)
{
    char *b = body_of(chat, extra);
    struct resp r = post(v, path_of(chat), b);
    T_ASSERTF(r.status == 200, "%s %s: %d %s", path_of(chat), extra, r.status, r.body ? r.body : "(none)");
    free(b), free(r.body);
}

static void test_n_refusals(void)
{
    for (int chat = 0; chat < 2; chat++) {
        refused(&S1, chat, ",\"n\":17", "n", "outside 1..16");
        refused(&S1, chat, ",\"n\":0", "n", "outside 1..16");
        refused(&S1, chat, ",\"n\":1.5", "n", "integer");
        refused(&S1, chat, ",\"n\":\"2\"", "n", "number");
    }
    refused(&S1, 1, ",\"n\":2,\"num_beams\":2", "n", "beam search");
}

/* ---- /v1/completions ---- */
/* The reference answer of a raw prompt: greedy, its ids, the verbatim text (every id's bytes but the
 * stop ids), lp and top. */
struct refans { int n; int32_t ids[64]; double lp[64], top[64][5]; char text[2048]; };

static void ref_answer(const char *prompt, int max_tokens, float pen, struct refans *a)
{
    memset(a, 0, sizeof *a);
    const struct tokenizer *tok = engine_tokenizer(REF);
    struct err e = {{0}};
    int32_t *ids = NULL;
    int n = 0;
    T_ASSERTF(tokenizer_encode(tok, prompt, strlen(prompt), TOKENIZER_ADD_SPECIAL, &ids, &n, &e) == 0, "%s", e.msg);
    a->n = ref_greedy(REF, ids, n, max_tokens, pen, a->ids, a->lp, a->top);
    size_t len = 0;
    for (int i = 0; i < a->n; i++) {
        if (engine_is_stop(REF, a->ids[i])) continue;
        const char *b;
        size_t bl;
        tokenizer_token_bytes(tok, a->ids[i], &b, &bl);
        if (len + bl < sizeof a->text) memcpy(a->text + len, b, bl), len += bl;
    }
    a->text[len] = 0;
    free(ids);
}

/* Code points of the bytes (each byte that does not continue a UTF-8 character). */
static long cps(const char *s, size_t n)
{
    long k = 0;
    for (size_t i = 0; i < n; i++) k += ((unsigned char)s[i] & 0xc0) != 0x80;
    return k;
}

/* One greedy completion (repetition penalty 3: the reference must apply it too), streamed or not,
 * checked against the reference: text, finish, the legacy logprobs. */
static void completion_vs_ref(struct srv *v, const char *prompt_json, const struct refans *a, int stream)
{
    char body[1024];
    snprintf(body, sizeof body,
             "{\"prompt\":%s,\"temperature\":0,\"repetition_penalty\":3,\"max_tokens\":12,\"logprobs\":3,\"stream\":%s}",
             prompt_json, stream ? "true" : "false");
    struct resp r = post(v, "/v1/completions", body);
    struct choices c;
    T_ASSERTF(parse_answer(&r, 0, stream, &c) == 0 && c.n == 1 && c.done, "%s: %d %s", body, r.status, r.body ? r.body : "");
    if (c.n != 1) goto out;
    T_ASSERTF(!strcmp(c.text[0], a->text), "text '%s' != reference '%s'", c.text[0], a->text);
    T_EQ_STR(c.finish[0], a->n == 12 && !engine_is_stop(REF, a->ids[11]) ? "length" : "stop");
    const cJSON *toks = cJSON_GetObjectItem(c.lp[0], "tokens"), *tlp = cJSON_GetObjectItem(c.lp[0], "token_logprobs");
    const cJSON *tops = cJSON_GetObjectItem(c.lp[0], "top_logprobs"), *offs = cJSON_GetObjectItem(c.lp[0], "text_offset");
    T_EQ_INT(cJSON_GetArraySize(toks), a->n);
    T_EQ_INT(cJSON_GetArraySize(tlp), a->n);
    T_EQ_INT(cJSON_GetArraySize(tops), a->n);
    T_EQ_INT(cJSON_GetArraySize(offs), a->n);
    long off = 0;
    for (int i = 0; i < a->n && i < cJSON_GetArraySize(tlp); i++) {
        T_NEAR(cJSON_GetArrayItem(tlp, i)->valuedouble, a->lp[i], 1e-6);
        T_NEAR(cJSON_GetArrayItem(offs, i)->valuedouble, off, 0);
        const char *b;
        size_t bl;
        tokenizer_token_bytes(engine_tokenizer(REF), a->ids[i], &b, &bl);
        off += cps(b, bl);
        /* the map: the 3 most likely (the reference's values, in some key order) and the chosen one */
        const cJSON *m = cJSON_GetArrayItem(tops, i);
        double vals[8];
        int nv = 0;
        for (const cJSON *x = m ? m->child : NULL; x && nv < 8; x = x->next) vals[nv++] = x->valuedouble;
        T_ASSERTF(nv >= 1 && nv <= 4, "token %d: %d keys in top_logprobs", i, nv);
        for (int k = 0; k < 3 && k < nv; k++) {
            int found = 0;
            for (int u = 0; u < nv; u++) found |= fabs(vals[u] - a->top[i][k]) <= 1e-6;
            T_ASSERTF(found || nv < 3, "token %d: the reference's top-%d logprob %g is not in the map", i, k + 1, a->top[i][k]);
        }
        /* greedy: the chosen token is the top-1, so its key is in the map with the top value */
        const cJSON *chosen = cJSON_GetObjectItemCaseSensitive(m, cJSON_GetArrayItem(toks, i)->valuestring);
        T_ASSERT(chosen && fabs(chosen->valuedouble - a->top[i][0]) <= 1e-6);
    }
out:
    choices_free(&c);
    free(r.body);
}

static void completions(struct srv *v)
{
    /* a prompt whose greedy answer has a leading or trailing space: a strip would show */
    static const char *const prompts[] = {"Once upon a time", "The quick brown fox", "Hello there", "1, 2, 3,", "Why"};
    struct refans a;
    int edge = 0;
    for (size_t p = 0; p < sizeof prompts / sizeof *prompts; p++) {
        ref_answer(prompts[p], 12, 3.0f, &a);
        const size_t l = strlen(a.text);
        edge |= l && (a.text[0] == ' ' || a.text[l - 1] == ' ' || a.text[0] == '\n' || a.text[l - 1] == '\n');
        char pj[128];
        snprintf(pj, sizeof pj, "\"%s\"", prompts[p]);
        completion_vs_ref(v, pj, &a, 0);
        completion_vs_ref(v, pj, &a, 1);
        if (p == 0) {
            /* the same prompt as one string in an array, and as its token ids (and an array of them) */
            snprintf(pj, sizeof pj, "[\"%s\"]", prompts[p]);
            completion_vs_ref(v, pj, &a, 0);
            int32_t *ids = NULL;
            int n = 0;
            struct err e = {{0}};
            tokenizer_encode(engine_tokenizer(REF), prompts[p], strlen(prompts[p]), TOKENIZER_ADD_SPECIAL, &ids, &n, &e);
            char list[96];
            size_t k = 0;
            for (int i = 0; i < n; i++) k += (size_t)snprintf(list + k, sizeof list - k, "%s%d", i ? "," : "", ids[i]);
            snprintf(pj, sizeof pj, "[[%s]]", list);
            completion_vs_ref(v, pj, &a, 0);
            snprintf(pj, sizeof pj, "[%s]", list);
            completion_vs_ref(v, pj, &a, 1);
            free(ids);
        }
    }
    T_ASSERTF(edge, "no prompt's answer starts or ends with a space: the test cannot see a strip");
}

static void test_completions_p1(void) { completions(&S1); }
static void test_completions_p4(void) { completions(&S4); }

static void test_completions_refusals(void)
{
    struct srv *v = &S1;
    refused(v, 0, ",\"echo\":true", "echo", "not implemented");
    refused(v, 0, ",\"suffix\":\"end\"", "suffix", "not implemented");
    refused(v, 0, ",\"best_of\":2", "best_of", "not implemented");
    refused(v, 0, ",\"logprobs\":true", "logprobs", "number");
    refused(v, 0, ",\"logprobs\":21", "logprobs", "outside 0..20");
    refused(v, 0, ",\"messages\":[]", "messages", "not a field");
    refused(v, 0, ",\"response_format\":{\"type\":\"json_object\"}", "response_format", "not a field");
    refused(v, 0, ",\"max_completion_tokens\":4", "max_completion_tokens", "not a field");
    refused(v, 0, ",\"num_beams\":2", "num_beams", "not a field");
    accepted(v, 0, ",\"echo\":false,\"suffix\":null,\"best_of\":1,\"max_tokens\":2,\"logprobs\":null");
    static const char *const bad[][2] = {
        {"{\"prompt\":[\"a\",\"b\"]}", "2 prompts"},
        {"{\"prompt\":[]}", "0 prompts"},
        {"{\"prompt\":5}", "must be a string"},
        {"{\"prompt\":[-1]}", "token id"},
        {"{\"prompt\":[1.5]}", "token id"},
        {"{\"prompt\":[[1],[2]]}", "2 prompts"},
        {"{\"prompt\":[999999]}", "outside the vocabulary"},
        {"{\"prompt\":\"a <image><unk></image> b\"}", "image placeholder"},
        {"{\"max_tokens\":3}", "'prompt' is required"},
        {"{\"prompt\":\"x\",\"max_tokens\":100000}", "maximum context length"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        struct resp r = post(v, "/v1/completions", bad[i][0]);
        T_ASSERTF(r.status == 400 && r.body && strstr(r.body, "\"param\":\"prompt\"") && strstr(r.body, bad[i][1]),
                  "%s: %d %s", bad[i][0], r.status, r.body ? r.body : "(none)");
        free(r.body);
    }
    struct resp r = http(v->port, "GET", "/v1/completions", NULL);
    T_EQ_INT(r.status, 405);
    free(r.body);
}

/* ---- /metrics: the new series, and the counters over both endpoints ---- */
static void metrics(struct srv *v)
{
    struct resp r = http(v->port, "GET", "/metrics", NULL);
    T_EQ_INT(r.status, 200);
    if (!r.body) return;
    T_NEAR(metric_requests_total(r.body), v->sent, 0);
    T_NEAR(metric(r.body, "minicpmv_requests_total{status=\"ok\"}"), v->ok, 0);
    T_NEAR(metric(r.body, "minicpmv_requests_total{status=\"client_error\"}"), v->client_err, 0);
    T_NEAR(metric(r.body, "minicpmv_sequences_active"), 0, 0);
    T_NEAR(metric(r.body, "minicpmv_requests_running"), 0, 0);
    T_NEAR(metric(r.body, "minicpmv_image_cache_capacity_bytes"), 256 << 20, 0);
    T_NEAR(metric(r.body, "minicpmv_image_cache_hits_total"), 0, 0);
    T_ASSERT(strstr(r.body, "# TYPE minicpmv_sequences_active gauge\n") && strstr(r.body, "# TYPE minicpmv_image_cache_hits_total counter\n"));
    /* each request's choices: one time_per_output_token observation per choice, one duration per request */
    T_NEAR(metric(r.body, "minicpmv_request_duration_seconds_count"), v->ok, 0);
    T_ASSERT(metric(r.body, "minicpmv_time_per_output_token_seconds_count") > v->ok);
    free(r.body);
}

static void test_metrics_p1(void) { metrics(&S1); }
static void test_metrics_p4(void) { metrics(&S4); }

static int start(struct srv *v, int parallel)
{
    struct engine_options o;
    engine_options_default(&o);
    o.model_dir = t_tiny_model(1);
    o.device = "cpu";
    o.quiet = 1;
    o.ctx = 512;
    o.parallel = parallel;
    struct server_options so;
    server_options_default(&so);
    so.port = 0;
    so.queue = 32;
    struct err e = {{0}};
    if (!o.model_dir || engine_open(&v->g, &o, &e) || server_start(&v->s, v->g, &so, &e)) {
        fprintf(stderr, "server (--parallel %d): %s\n", parallel, e.msg);
        return -1;
    }
    v->port = server_port(v->s);
    return 0;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    struct srv ref = {0};
    if (start(&S1, 1) || start(&S4, 4) || start(&ref, 1)) {
        T_ASSERTF(0, "cannot start the servers");
        return t_main_end("test_server_choices");
    }
    server_stop(ref.s); /* only its engine: the reference runs on it directly */
    REF = ref.g;
    T_RUN(test_n_chat_p1);
    T_RUN(test_n_chat_p4);
    T_RUN(test_n_completions_p1);
    T_RUN(test_n_completions_p4);
    T_RUN(test_seed_is_sampler_seed);
    T_RUN(test_n_greedy);
    T_RUN(test_n_refusals);
    T_RUN(test_completions_p1);
    T_RUN(test_completions_p4);
    T_RUN(test_completions_refusals);
    T_RUN(test_metrics_p1);
    T_RUN(test_metrics_p4);
    server_stop(S1.s);
    server_stop(S4.s);
    engine_close(S1.g);
    engine_close(S4.g);
    engine_close(REF);
    return t_main_end("test_server_choices");
}
