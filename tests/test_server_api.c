/* test_server_api.c: issue 17's API surface on the tiny model, in-process over loopback (thttp.h), with
 * --parallel 1 (turn_run: the staged loop on slot 0 for constrained / logprobs turns) and --parallel 4
 * (the scheduler): response_format json_object / json_schema answers parse and validate for several
 * seeds, streamed and not (the random weights' unconstrained output is noise); logprobs equal an
 * independent computation (the engine's prompt logits, the penalty applied here, log_softmax here);
 * the refusals (tools, n over 16, max_tokens conflicts, unsupported schema keywords, a budget below the
 * schema's shortest answer, /v1/embeddings); /metrics parses line by line and its counters add up to
 * the requests sent. Prints tokens/s with and without a schema (docs/PERF.md's CPU figure). */
#include <math.h>
#include <pthread.h>
#include <signal.h>

#include "engine.h"
#include "server.h"
#include "t.h"
#include "thttp.h"
#include "tref.h"
#include "tokenizer.h"
#include "tutil.h"

struct srv {
    struct engine *g;
    struct server *s;
    int port;
    long sent, ok, client_err, gen_tokens, prompt_tokens; /* what this test sent and got back */
};

static struct srv S1, S4;

/* Sends a chat request and counts it (status, usage). Streams must ask for include_usage. */
static struct resp chat(struct srv *v, const char *body)
{
    struct resp r = http(v->port, "POST", "/v1/chat/completions", body);
    v->sent++;
    if (r.status == 200) v->ok++;
    else if (r.status >= 400 && r.status < 500) v->client_err++;
    if (r.status == 200 && r.body) {
        const char *u = strstr(r.body, "\"usage\":");
        int pt = 0, ct = 0;
        if (u && sscanf(u, "\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d", &pt, &ct) == 2) {
            v->prompt_tokens += pt;
            v->gen_tokens += ct;
        }
    }
    return r;
}

static char *req(const char *extra, int stream, long seed, int max_tokens, double temperature)
{
    char *b = malloc(4096 + (extra ? strlen(extra) : 0));
    sprintf(b,
            "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"Answer in JSON: who are you?\"}],"
            "\"temperature\":%g,\"seed\":%ld,\"max_tokens\":%d,\"stream\":%s%s%s}",
            temperature, seed, max_tokens, stream ? "true" : "false",
            stream ? ",\"stream_options\":{\"include_usage\":true}" : "", extra ? extra : "");
    return b;
}

/* The answer text and finish_reason of a JSON or SSE body (malloc'd). */
static char *answer(const struct resp *r, int stream, char *finish, size_t fn)
{
    finish[0] = 0;
    if (!r->body) return NULL;
    if (stream) {
        int done = 0;
        char *t = sse_text(r->body, &done);
        const char *f = strstr(r->body, "\"finish_reason\":\"");
        if (f) sscanf(f + 17, "%15[a-z]", finish);
        if (!done) { free(t); return NULL; }
        return t;
    }
    cJSON *o = cJSON_Parse(r->body);
    cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
    cJSON *f = cJSON_GetObjectItem(c, "finish_reason");
    if (cJSON_IsString(f)) snprintf(finish, fn, "%s", f->valuestring);
    cJSON_Delete(o);
    return json_content(r->body);
}

/* ---- response_format ---- */
#define PERSON                                                                                                 \
    "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},\"age\":{\"type\":\"integer\"},"      \
    "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"},\"maxItems\":3},"                            \
    "\"kind\":{\"enum\":[\"cat\",\"dog\",null]}},\"required\":[\"name\",\"age\"],\"additionalProperties\":false}"

/* The schema above, checked by hand (not by the code under test). */
static int valid_person(const cJSON *o)
{
    if (!cJSON_IsObject(o)) return 0;
    int name = 0, age = 0;
    for (const cJSON *x = o->child; x; x = x->next) {
        if (!strcmp(x->string, "name")) {
            name++;
            if (!cJSON_IsString(x)) return 0;
        } else if (!strcmp(x->string, "age")) {
            age++;
            if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble)) return 0;
        } else if (!strcmp(x->string, "tags")) {
            if (!cJSON_IsArray(x) || cJSON_GetArraySize(x) > 3) return 0;
            for (const cJSON *y = x->child; y; y = y->next)
                if (!cJSON_IsString(y)) return 0;
        } else if (!strcmp(x->string, "kind")) {
            if (!cJSON_IsNull(x) && !(cJSON_IsString(x) && (!strcmp(x->valuestring, "cat") || !strcmp(x->valuestring, "dog"))))
                return 0;
        } else {
            return 0;
        }
    }
    return name == 1 && age == 1;
}

static void formats(struct srv *v)
{
    int runs = 0, good_obj = 0, good_schema = 0, noise = 0;
    for (long seed = 1; seed <= 4; seed++)
        for (int stream = 0; stream < 2; stream++) {
            char fin[16];
            /* the control: without a format the sampled answer is not JSON */
            char *b = req(NULL, stream, seed, 24, 1.0);
            struct resp r = chat(v, b);
            char *t = answer(&r, stream, fin, sizeof fin);
            cJSON *o = t ? cJSON_Parse(t) : NULL;
            noise += !cJSON_IsObject(o);
            cJSON_Delete(o);
            free(t), free(b), free(r.body);

            b = req(",\"response_format\":{\"type\":\"json_object\"}", stream, seed, 40, 1.0);
            r = chat(v, b);
            T_EQ_INT(r.status, 200);
            t = answer(&r, stream, fin, sizeof fin);
            o = t ? cJSON_Parse(t) : NULL;
            T_ASSERTF(cJSON_IsObject(o), "seed %ld stream %d: json_object answer %s", seed, stream, t ? t : "(none)");
            good_obj += cJSON_IsObject(o);
            T_ASSERT(!strcmp(fin, "stop") || !strcmp(fin, "length"));
            cJSON_Delete(o);
            free(t), free(b), free(r.body);

            b = req(",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"person\",\"strict\":true,"
                    "\"schema\":" PERSON "}}",
                    stream, seed, 48, 1.0);
            r = chat(v, b);
            T_EQ_INT(r.status, 200);
            t = answer(&r, stream, fin, sizeof fin);
            o = t ? cJSON_Parse(t) : NULL;
            T_ASSERTF(valid_person(o), "seed %ld stream %d: json_schema answer %s", seed, stream, t ? t : "(none)");
            good_schema += valid_person(o);
            cJSON_Delete(o);
            free(t), free(b), free(r.body);
            runs++;
        }
    fprintf(stderr, "  %d runs: %d json_object and %d json_schema answers valid; %d of %d unconstrained answers not JSON\n",
            runs, good_obj, good_schema, noise, runs);
    T_ASSERT(noise >= runs / 2); /* the format, not the weights, makes the answers JSON */
}

static void test_formats_p1(void) { formats(&S1); }
static void test_formats_p4(void) { formats(&S4); }

/* Several constrained requests at once through the scheduler (4 slots). */
struct conc { struct srv *v; long seed; int valid; };
static void *conc_one(void *p)
{
    struct conc *c = p;
    char *b = req(",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"p\",\"schema\":" PERSON "}}",
                  (int)(c->seed & 1), c->seed, 48, 1.0);
    struct resp r = http(c->v->port, "POST", "/v1/chat/completions", b);
    char fin[16];
    char *t = answer(&r, (int)(c->seed & 1), fin, sizeof fin);
    cJSON *o = t ? cJSON_Parse(t) : NULL;
    c->valid = r.status == 200 && valid_person(o);
    cJSON_Delete(o);
    free(t), free(b), free(r.body);
    return NULL;
}

static void test_formats_concurrent(void)
{
    pthread_t th[6];
    struct conc c[6];
    for (int i = 0; i < 6; i++) {
        c[i] = (struct conc){.v = &S4, .seed = 100 + i};
        pthread_create(&th[i], NULL, conc_one, &c[i]);
    }
    for (int i = 0; i < 6; i++) {
        pthread_join(th[i], NULL);
        T_ASSERTF(c[i].valid, "concurrent request %d", i);
    }
    S4.sent += 6, S4.ok += 6; /* counted for the metrics check (each asserted 200 above) */
}

/* ---- logprobs ---- */
/* The server's logprob entries of a JSON or SSE body, in order: ids by their "token" text are not needed;
 * logprob, top ids' logprobs and the count. */
struct lpe { double lp; int n_top; double top[20]; char tok[64], top0[64]; };

static int entries(const char *body, int stream, struct lpe *out, int max)
{
    int n = 0;
    const char *p = body;
    for (;;) {
        cJSON *o;
        if (stream) {
            if (!(p = strstr(p, "data: ")) || !strncmp(p + 6, "[DONE]", 6)) break;
            p += 6;
            const char *e = strstr(p, "\n\n");
            o = cJSON_ParseWithLength(p, (size_t)(e - p));
            p = e;
        } else {
            o = cJSON_Parse(body);
        }
        cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
        cJSON *lc = cJSON_GetObjectItem(cJSON_GetObjectItem(c, "logprobs"), "content");
        for (cJSON *x = lc ? lc->child : NULL; x && n < max; x = x->next, n++) {
            struct lpe *q = &out[n];
            q->lp = cJSON_GetObjectItem(x, "logprob")->valuedouble;
            snprintf(q->tok, sizeof q->tok, "%s", cJSON_GetObjectItem(x, "token")->valuestring);
            cJSON *tl = cJSON_GetObjectItem(x, "top_logprobs");
            q->n_top = 0;
            for (cJSON *y = tl->child; y && q->n_top < 20; y = y->next) {
                q->top[q->n_top] = cJSON_GetObjectItem(y, "logprob")->valuedouble;
                if (!q->n_top) snprintf(q->top0, sizeof q->top0, "%s", cJSON_GetObjectItem(y, "token")->valuestring);
                q->n_top++;
            }
            /* bytes: the token's text when it is whole UTF-8 */
            cJSON *bytes = cJSON_GetObjectItem(x, "bytes");
            T_ASSERT(cJSON_IsArray(bytes));
        }
        cJSON_Delete(o);
        if (!stream) break;
    }
    return n;
}

/* The reference: greedy on the chat prompt (tref.h), the penalty pen. */
static int reference(struct engine *g, const char *q, int n, float pen, double *lp, double top[][5])
{
    struct err e = {{0}};
    struct chat_msg m = {"user", q};
    int32_t *ids = NULL;
    int n_ids = 0;
    if (chat_build_ids(engine_tokenizer(g), NULL, &m, 1, NULL, 0, engine_config(g)->query_num, 0, &ids, &n_ids, &e))
        return -1;
    int k = ref_greedy(g, ids, n_ids, n, pen, NULL, lp, top);
    free(ids);
    return k;
}

/* minicpmv_kv_prefix_hit_blocks_total of v's server */
static double prefix_hits(struct srv *v)
{
    struct resp r = http(v->port, "GET", "/metrics", NULL);
    const double x = r.status == 200 && r.body ? metric(r.body, "minicpmv_kv_prefix_hit_blocks_total") : -1;
    free(r.body);
    return x;
}

static void logprobs(struct srv *v, struct engine *ref)
{
    struct lpe a[64], b[64];
    /* a strong penalty (3) makes "after the penalty" visible: the tiny model's logits are small */
    char *body = req(",\"logprobs\":true,\"top_logprobs\":5,\"repetition_penalty\":3", 0, 7, 12, 0);
    struct resp r = chat(v, body);
    T_EQ_INT(r.status, 200);
    int na = r.body ? entries(r.body, 0, a, 64) : 0;
    int ct = -1;
    const char *u = r.body ? strstr(r.body, "\"completion_tokens\":") : NULL;
    if (u) sscanf(u, "\"completion_tokens\":%d", &ct);
    T_EQ_INT(na, ct); /* one entry per generated token */
    free(body), free(r.body);
    /* the same prompt again, streamed: its first block(s) come from the cache (prefix reuse is on), and it
     * must still give the same logprobs bit for bit (the CPU computes the reused prompt's tail like the
     * whole prompt) */
    const double hits0 = prefix_hits(v);
    body = req(",\"logprobs\":true,\"top_logprobs\":5,\"repetition_penalty\":3", 1, 7, 12, 0);
    r = chat(v, body);
    T_ASSERTF(prefix_hits(v) > hits0, "the repeated prompt reused no cached block (hits %g, before %g)", prefix_hits(v),
              hits0);
    T_EQ_INT(r.status, 200);
    int nb = r.body ? entries(r.body, 1, b, 64) : 0;
    T_EQ_INT(nb, na); /* the streamed chunks carry the same entries */
    for (int i = 0; i < na && i < nb; i++) T_NEAR(a[i].lp, b[i].lp, 0);
    free(body), free(r.body);
    for (int i = 0; i < na; i++) {
        T_EQ_INT(a[i].n_top, 5);
        T_NEAR(a[i].lp, a[i].top[0], 0); /* greedy picks the top-1 */
        T_EQ_STR(a[i].tok, a[i].top0);
        double sum = 0;
        for (int k = 0; k < a[i].n_top; k++) {
            sum += exp(a[i].top[k]);
            if (k) T_ASSERT(a[i].top[k] <= a[i].top[k - 1]);
        }
        T_ASSERT(sum <= 1 + 1e-9);
    }
    double lp[64], top[64][5];
    int nr = reference(ref, "Answer in JSON: who are you?", na, 3.0f, lp, top);
    T_EQ_INT(nr, na);
    double dmax = 0;
    for (int i = 0; i < na && i < nr; i++) {
        T_NEAR(a[i].lp, lp[i], 1e-6);
        for (int k = 0; k < 5; k++) T_NEAR(a[i].top[k], top[i][k], 1e-6);
        if (fabs(a[i].lp - lp[i]) > dmax) dmax = fabs(a[i].lp - lp[i]);
    }
    /* the same reference without the penalty must differ (else the test could not see where it is applied) */
    double lp0[64], top0[64][5], dpen = 0;
    int n0 = reference(ref, "Answer in JSON: who are you?", na, 1.0f, lp0, top0);
    for (int i = 0; i < na && i < n0; i++)
        for (int k = 0; k < 5; k++) dpen = fmax(dpen, fabs(top0[i][k] - top[i][k]));
    T_ASSERTF(dpen > 1e-5, "the penalty changes the reference by only %g", dpen);
    fprintf(stderr, "  max |server - reference| %.2g; the penalty moves the reference by %.3g\n", dmax, dpen);
    fprintf(stderr, "  %d tokens: logprobs equal the reference (first %.5f)\n", na, na ? a[0].lp : 0.0);
    /* logprobs under a schema: the masked distribution, never -inf, sums <= 1 */
    body = req(",\"logprobs\":true,\"top_logprobs\":3,\"response_format\":{\"type\":\"json_object\"}", 0, 3, 16, 1.0);
    r = chat(v, body);
    T_EQ_INT(r.status, 200);
    na = r.body ? entries(r.body, 0, a, 64) : 0;
    T_ASSERT(na > 0);
    T_ASSERTF(na && a[0].tok[0] == '{', "first token %s", na ? a[0].tok : ""); /* a JSON object starts with { */
    for (int i = 0; i < na; i++) T_ASSERT(isfinite(a[i].lp) && a[i].lp <= 0);
    free(body), free(r.body);
}

static struct engine *REF;
static void test_logprobs_p1(void) { logprobs(&S1, REF); }
static void test_logprobs_p4(void) { logprobs(&S4, REF); }

/* ---- refusals ---- */
static void refused(struct srv *v, const char *extra, int status, const char *needle)
{
    char *b = req(extra, 0, 1, 16, 0);
    struct resp r = chat(v, b);
    T_ASSERTF(r.status == status, "%s: status %d, want %d", extra, r.status, status);
    T_ASSERTF(r.body && strstr(r.body, needle), "%s: %s lacks '%s'", extra, r.body ? r.body : "(none)", needle);
    free(b), free(r.body);
}

static void test_refusals(void)
{
    struct srv *v = &S1;
    refused(v, ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]", 400, "not trained for tool");
    refused(v, ",\"tool_choice\":\"auto\"", 400, "function calling is not supported");
    refused(v, ",\"functions\":[{\"name\":\"f\"}]", 400, "function calling is not supported");
    refused(v, ",\"n\":17", 400, "'n' = 17 is outside 1..16");
    refused(v, ",\"max_completion_tokens\":17", 400, "differ");
    refused(v, ",\"logprobs\":true,\"top_logprobs\":21", 400, "top_logprobs");
    refused(v, ",\"top_logprobs\":2", 400, "needs");
    refused(v, ",\"logprobs\":\"yes\"", 400, "boolean");
    refused(v, ",\"logprobs\":true,\"num_beams\":2", 400, "beam search");
    refused(v, ",\"response_format\":{\"type\":\"json_object\"},\"num_beams\":2", 400, "beam search");
    refused(v, ",\"response_format\":{\"type\":\"yaml\"}", 400, "not supported");
    refused(v, ",\"response_format\":{\"type\":\"json_schema\"}", 400, "json_schema");
    refused(v,
            ",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"x\",\"schema\":{\"type\":\"object\","
            "\"properties\":{\"d\":{\"type\":\"string\",\"pattern\":\"a+\"}}}}}",
            400, "keyword 'pattern' is not supported");
    /* the shortest answer {"a_rather_long_key_name":0} is 28 bytes > 16 tokens */
    refused(v,
            ",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"x\",\"schema\":{\"type\":\"object\","
            "\"properties\":{\"a_rather_long_key_name\":{\"type\":\"integer\"}},\"required\":[\"a_rather_long_key_name\"]}}}",
            400, "max_tokens");
    /* the alias alone and equal to max_tokens are fine */
    char *b = req(",\"max_completion_tokens\":16", 0, 1, 16, 0);
    struct resp r = chat(v, b);
    T_EQ_INT(r.status, 200);
    free(b), free(r.body);
    r = http(v->port, "POST", "/v1/embeddings", "{\"input\":\"x\"}");
    T_EQ_INT(r.status, 404);
    T_ASSERT(r.body && strstr(r.body, "not implemented"));
    free(r.body);
}

/* ---- /metrics ---- */
static void metrics(struct srv *v)
{
    struct resp r = http(v->port, "GET", "/metrics", NULL);
    T_EQ_INT(r.status, 200);
    if (!r.body) return;
    /* every line: # HELP name text, # TYPE name kind, or a sample of a declared name */
    char declared[64][96];
    int nd = 0, lines = 0, bad = 0;
    for (char *line = r.body, *nl; *line; line = nl + 1) {
        if (!(nl = strchr(line, '\n'))) { bad++; break; }
        *nl = 0;
        lines++;
        char name[96], kind[32];
        if (!strncmp(line, "# HELP ", 7)) {
            if (sscanf(line + 7, "%95s", name) != 1 || nd >= 64) bad++;
            else snprintf(declared[nd++], 96, "%s", name);
        } else if (!strncmp(line, "# TYPE ", 7)) {
            if (sscanf(line + 7, "%95s %31s", name, kind) != 2 || !nd || strcmp(name, declared[nd - 1]) ||
                (strcmp(kind, "counter") && strcmp(kind, "gauge") && strcmp(kind, "histogram")))
                bad++;
        } else {
            size_t k = strcspn(line, "{ ");
            snprintf(name, sizeof name, "%.*s", (int)k, line);
            const char *val = strrchr(line, ' ');
            char *end;
            double x = val ? strtod(val + 1, &end) : NAN;
            int ok = nd && val && *end == 0 && !isnan(x);
            const char *base = declared[nd - 1];
            size_t bl = strlen(base);
            ok = ok && !strncmp(name, base, bl) &&
                 (!name[bl] || !strcmp(name + bl, "_bucket") || !strcmp(name + bl, "_sum") || !strcmp(name + bl, "_count"));
            if (!ok) { bad++; fprintf(stderr, "  bad metrics line: %s\n", line); }
        }
        *nl = '\n';
    }
    T_EQ_INT(bad, 0);
    T_ASSERT(lines > 30);
    T_NEAR(metric_requests_total(r.body), v->sent, 0);
    T_NEAR(metric(r.body, "minicpmv_requests_total{status=\"ok\"}"), v->ok, 0);
    T_NEAR(metric(r.body, "minicpmv_requests_total{status=\"client_error\"}"), v->client_err, 0);
    T_NEAR(metric(r.body, "minicpmv_request_duration_seconds_count"), v->ok, 0);
    T_NEAR(metric(r.body, "minicpmv_request_duration_seconds_bucket{le=\"+Inf\"}"), v->ok, 0);
    T_NEAR(metric(r.body, "minicpmv_time_to_first_token_seconds_count"), v->ok, 0);
    T_NEAR(metric(r.body, "minicpmv_slots"), engine_slots(v->g), 0);
    T_NEAR(metric(r.body, "minicpmv_queue_depth"), 0, 0);
    T_ASSERT(metric(r.body, "minicpmv_device_memory_bytes{device=\"cpu:0\",kind=\"weights\"}") > 0);
    /* the KV pool: every block in one state */
    T_NEAR(metric(r.body, "minicpmv_kv_blocks{state=\"used\"}") + metric(r.body, "minicpmv_kv_blocks{state=\"cached\"}") +
               metric(r.body, "minicpmv_kv_blocks{state=\"free\"}"),
           (double)engine_slots(v->g) * ((double)engine_slot_ctx(v->g) / 16), 0);
    T_NEAR(metric(r.body, "minicpmv_kv_block_tokens"), 16, 0);
    T_ASSERT(metric(r.body, "minicpmv_kv_prefix_hit_blocks_total") >= 0); /* > 0 after test_logprobs */
    T_NEAR(metric(r.body, "minicpmv_kv_preemptions_total"), 0, 0);       /* the default pool: slots x ctx */
    fprintf(stderr, "  %d lines; %ld requests sent, %ld ok; tokens %g / %g\n", lines, v->sent, v->ok,
            metric(r.body, "minicpmv_prompt_tokens_total"), metric(r.body, "minicpmv_generation_tokens_total"));
    free(r.body);
}

static void test_metrics_p1(void) { metrics(&S1); }
static void test_metrics_p4(void) { metrics(&S4); }

/* ---- the cost of a schema, CPU (docs/PERF.md) ---- */
static void test_schema_cost(void)
{
    static const char *const what[] = {"none", "logprobs only (host sampling)", "json_object", "json_schema"};
    static const char *const extra[] = {NULL, ",\"logprobs\":true",
                                        ",\"response_format\":{\"type\":\"json_object\"}",
                                        ",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"p\","
                                        "\"schema\":" PERSON "}}"};
    for (int w = 0; w < 4; w++) {
        long toks = 0;
        double t = 0;
        for (long seed = 1; seed <= 4; seed++) {
            char *b = req(extra[w], 0, seed, 48, 1.0);
            const double t0 = time_now();
            struct resp r = chat(&S1, b);
            t += time_now() - t0;
            int ct = 0;
            const char *u = r.body ? strstr(r.body, "\"completion_tokens\":") : NULL;
            if (u) sscanf(u, "\"completion_tokens\":%d", &ct);
            toks += ct;
            T_EQ_INT(r.status, 200);
            free(b), free(r.body);
        }
        fprintf(stderr, "  response_format %-30s %4ld tokens in %6.3f s: %7.1f tok/s (request wall time)\n", what[w], toks,
                t, toks / t);
    }
}

static struct engine *open_tiny(int parallel)
{
    struct engine_options o;
    engine_options_default(&o);
    o.model_dir = t_tiny_model(1);
    o.device = "cpu";
    o.quiet = 1;
    o.ctx = 512;
    o.parallel = parallel;
    struct engine *g = NULL;
    struct err e = {{0}};
    if (!o.model_dir || engine_open(&g, &o, &e)) fprintf(stderr, "cannot open the tiny model: %s\n", e.msg);
    return g;
}

static int start(struct srv *v, int parallel)
{
    struct server_options so;
    server_options_default(&so);
    so.port = 0;
    so.queue = 32;
    struct err e = {{0}};
    if (!(v->g = open_tiny(parallel)) || server_start(&v->s, v->g, &so, &e)) {
        fprintf(stderr, "server (--parallel %d): %s\n", parallel, e.msg);
        return -1;
    }
    v->port = server_port(v->s);
    return 0;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (start(&S1, 1) || start(&S4, 4) || !(REF = open_tiny(1))) {
        T_ASSERTF(0, "cannot start the servers");
        return t_main_end("test_server_api");
    }
    T_EQ_INT(engine_slots(S4.g), 4);
    T_RUN(test_formats_p1);
    T_RUN(test_formats_p4);
    T_RUN(test_formats_concurrent);
    T_RUN(test_logprobs_p1);
    T_RUN(test_logprobs_p4);
    T_RUN(test_refusals);
    T_RUN(test_schema_cost);
    T_RUN(test_metrics_p1);
    T_RUN(test_metrics_p4);
    server_stop(S1.s);
    server_stop(S4.s);
    engine_close(S1.g);
    engine_close(S4.g);
    engine_close(REF);
    return t_main_end("test_server_api");
}
