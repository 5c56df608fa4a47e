/* test_penalty.c: the repetition penalty (spec §8, §12: s = s<0 ? s*p : s/p for every id GENERATED so
 * far; prompt ids never count) checked against an independent loop written here: forward logits from
 * llm_forward, the penalty over the generated ids only, argmax (lowest id on a tie). Every path that
 * decodes greedily is compared with it: engine_generate (the `generate --ids` path), `minicpmv
 * generate --greedy --repetition-penalty` itself, the chat turn (turn.h: the CLI chat), the server's turn
 * (temperature 0 = argmax that KEEPS the penalty), and beam search with one beam (its penalty acts
 * on log-probabilities, as transformers' beam search does). Each test also proves it has power: the
 * penalised reference differs from plain greedy and from a loop that counts the prompt ids. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "beam.h"
#include "chat.h"
#include "engine_impl.h"
#include "sampler.h"
#include "server.h"
#include "t.h"
#include "tokenizer.h"
#include "tengine.h"
#include "tutil.h"

#define MAXN 64  /* array capacity */
#define ID_N 16  /* tokens generated on the id paths */
static int chat_n = MAXN; /* on the chat paths: up to the first penalised repeat + 4 (chat_text) */
static struct engine *g;

static struct engine *open_tiny(void)
{
    struct engine_options o;
    engine_options_default(&o);
    o.model_dir = t_tiny_model(1);
    o.device = "cpu";
    o.dtype = DTYPE_F32;
    o.ctx = 256;
    o.quiet = 1;
    struct err e = {{0}};
    struct engine *x = NULL;
    if (!o.model_dir || engine_open(&x, &o, &e)) fprintf(stderr, "engine_open: %s\n", e.msg);
    return x;
}

static int is_stop(int32_t t) { return t == g->cfg.eos_token_id || t == 128009; }

/* The reference. mode 0: penalty on logits, argmax (sampling path); mode 1: log_softmax, penalty, argmax
 * (beam search's order). count_prompt: also penalise the prompt ids (the bug the tests must catch). */
static int ref_loop(const int32_t *ids, int n, float pen, int max_new, int mode, int count_prompt, int32_t *out)
{
    const int V = g->cfg.vocab_size;
    float *x = malloc((size_t)V * sizeof *x);
    unsigned char *seen = calloc((size_t)V, 1);
    struct err e = {{0}};
    int k = 0;
    llm_truncate(&g->llm, 0);
    if (count_prompt)
        for (int i = 0; i < n; i++) seen[ids[i]] = 1;
    if (llm_forward(&g->llm, ids, NULL, n, x, &e)) { T_ASSERTF(0, "%s", e.msg); goto out; }
    while (k < max_new) {
        if (mode == 1) {
            double mx = -INFINITY, s = 0;
            for (int i = 0; i < V; i++) mx = x[i] > mx ? x[i] : mx;
            for (int i = 0; i < V; i++) s += exp((double)x[i] - mx);
            for (int i = 0; i < V; i++) x[i] = (float)((double)x[i] - mx - log(s));
        }
        for (int i = 0; i < V; i++)
            if (seen[i]) x[i] = x[i] < 0 ? x[i] * pen : x[i] / pen;
        int32_t b = 0;
        for (int i = 1; i < V; i++)
            if (x[i] > x[b]) b = i;
        out[k++] = b;
        seen[b] = 1;
        if (is_stop(b) || k == max_new) break;
        if (llm_forward(&g->llm, &b, NULL, 1, x, &e)) { T_ASSERTF(0, "%s", e.msg); break; }
    }
out:
    free(x);
    free(seen);
    return k;
}

static int same(const int32_t *a, int na, const int32_t *b, int nb)
{
    return na == nb && memcmp(a, b, (size_t)na * sizeof *a) == 0;
}

static void print_ids(const char *what, const int32_t *a, int n)
{
    fprintf(stderr, "  %-22s", what);
    for (int i = 0; i < n; i++) fprintf(stderr, " %d", a[i]);
    fputc('\n', stderr);
}

/* A prompt that holds the tokens plain greedy would produce next: counting prompt ids then matters. */
static int make_prompt(int32_t *p)
{
    static const int32_t base[] = {128000, 791, 4062, 14198, 39935, 35308, 927, 279, 16053, 5679, 13};
    int n = (int)(sizeof base / sizeof base[0]);
    memcpy(p, base, sizeof base);
    int32_t gr[6];
    int ng = ref_loop(p, n, 1.0f, 6, 0, 0, gr);
    for (int i = 0; i < ng; i++) p[n++] = gr[i];
    return n;
}

/* the `generate --ids` path: engine_generate with greedy + penalty, and temperature 0 of the API
 * (greedy with the default penalty 1.05 left on) */
static void test_generate_ids(void)
{
    int32_t p[32], ref[MAXN], plain[MAXN], prompt_counted[MAXN], got[MAXN];
    const int n = make_prompt(p);
    const float pens[] = {1.5f, 1.05f};
    for (int k = 0; k < 2; k++) {
        const float pen = pens[k];
        int nr = ref_loop(p, n, pen, ID_N, 0, 0, ref);
        int np = ref_loop(p, n, 1.0f, ID_N, 0, 0, plain);
        int nc = ref_loop(p, n, pen, ID_N, 0, 1, prompt_counted);
        print_ids("reference", ref, nr);
        print_ids("no penalty", plain, np);
        print_ids("prompt counted (bug)", prompt_counted, nc);
        /* power: both bugs would change the tokens */
        if (pen > 1.2f) {
            T_ASSERTF(!same(ref, nr, plain, np), "penalty %.2f changes nothing here: the test has no power", pen);
            T_ASSERTF(!same(ref, nr, prompt_counted, nc), "counting the prompt changes nothing: no power");
        }
        struct sampler_params sp;
        sampler_defaults(&sp);
        sp.greedy = true; /* what --greedy and API temperature 0 set; the penalty stays */
        sp.repetition_penalty = pen;
        struct err e = {{0}};
        int ng = 0;
        llm_truncate(&g->llm, 0);
        T_ASSERTF(t_generate(g, p, NULL, n, ID_N, &sp, NULL, NULL, got, &ng, NULL, &e) == 0, "%s", e.msg);
        print_ids("engine_generate", got, ng);
        T_ASSERTF(same(got, ng, ref, nr), "greedy with penalty %.2f differs from the reference loop", pen);
    }
}

/* `minicpmv generate --ids ... --greedy --repetition-penalty 1.5` (the CLI's flag handling included) */
static void test_cli_generate(void)
{
    int32_t p[32], ref[MAXN];
    const int n = make_prompt(p);
    const int nr = ref_loop(p, n, 1.5f, ID_N, 0, 0, ref);
    char ids[512] = "", *w = ids;
    for (int i = 0; i < n; i++) w += snprintf(w, (size_t)(ids + sizeof ids - w), i ? ",%d" : "%d", p[i]);
    char path[] = "/tmp/test_penalty_XXXXXX";
    int fd = mkstemp(path);
    T_ASSERT(fd >= 0);
    if (fd < 0) return;
    fflush(stdout);
    int saved = dup(1);
    dup2(fd, 1);
    char *argv[] = {"generate", "--model", (char *)t_tiny_model(1), "--device", "cpu", "--dtype", "f32",
                    "--ids", ids, "--greedy", "--repetition-penalty", "1.5", "--max-new-tokens", "16" /* ID_N */, "--quiet", NULL};
    int rc = cmd_generate(15, argv);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    T_EQ_INT(rc, 0);
    char line[1024] = "";
    FILE *f = fdopen(fd, "r");
    rewind(f);
    if (!fgets(line, sizeof line, f)) line[0] = 0;
    fclose(f);
    unlink(path);
    int32_t got[MAXN];
    int ng = 0;
    for (char *s = line; *s && *s != '\n' && ng < MAXN;) {
        got[ng++] = (int32_t)strtol(s, &s, 10);
        if (*s == ',') s++;
    }
    print_ids("minicpmv generate", got, ng);
    T_ASSERTF(same(got, ng, ref, nr), "the CLI's --greedy --repetition-penalty 1.5 differs from the reference");
}

/* A user message whose plain greedy answer repeats a token within MAXN (so the penalty changes the
 * answer): the first of a few fixed candidates that does, on the tiny model of seed 1. */
static const char *chat_text(void)
{
    static const char *picked;
    if (picked) return picked;
    static const char *cand[] = {"Hello there", "What is in the image?", "Compare them!", "Tell me a story.",
                                 "The quick brown fox jumps over the lazy dog.", "1 2 3 4 5 6 7 8"};
    for (int c = 0; c < (int)(sizeof cand / sizeof cand[0]); c++) {
        struct chat_msg m = {"user", cand[c]};
        int32_t *ids = NULL, ref[MAXN], plain[MAXN];
        int n = 0;
        struct err e = {{0}};
        if (chat_build_ids(g->tok, NULL, &m, 1, NULL, 0, g->cfg.query_num, 0, &ids, &n, &e)) continue;
        const int nr = ref_loop(ids, n, 1.5f, MAXN, 0, 0, ref);
        const int np = ref_loop(ids, n, 1.0f, MAXN, 0, 0, plain);
        free(ids);
        int d = 0;
        while (d < nr && d < np && ref[d] == plain[d]) d++;
        if (d < nr || nr != np) {
            chat_n = d + 4 < MAXN ? d + 4 : MAXN;
            fprintf(stderr, "  chat message \"%s\": the penalty first changes token %d; %d tokens\n", cand[c], d, chat_n);
            return picked = cand[c];
        }
    }
    T_ASSERTF(0, "the penalty changes no candidate chat answer: the chat tests would have no power");
    return "Hello there";
}

/* the chat path (the turn as `minicpmv chat -p` runs it): prompt from the template, penalty on generated ids */
static void test_chat(void)
{
    struct chat_msg m = {"user", chat_text()};
    int32_t *ids = NULL, ref[MAXN];
    int n = 0;
    struct err e = {{0}};
    T_ASSERTF(chat_build_ids(g->tok, NULL, &m, 1, NULL, 0, g->cfg.query_num, 0, &ids, &n, &e) == 0, "%s", e.msg);
    if (!ids) return;
    const int nr = ref_loop(ids, n, 1.5f, chat_n, 0, 0, ref);
    struct turn_request rq = {.msgs = &m, .n_msgs = 1, .max_new = chat_n};
    sampler_defaults(&rq.sp);
    rq.sp.greedy = true;
    rq.sp.repetition_penalty = 1.5f;
    struct turn_result res;
    T_ASSERTF(t_chat(g, &rq, NULL, NULL, &res, &e) == 0, "%s", e.msg);
    print_ids("reference", ref, nr);
    print_ids("turn (chat -p)", res.ids, res.n_gen);
    T_ASSERTF(same(res.ids, res.n_gen, ref, nr), "the chat turn greedy + penalty differs from the reference");
    turn_result_free(&res);
    free(ids);
}

/* the server's turn: a request with temperature 0 is argmax and keeps its repetition penalty */
static void test_server_turn(void)
{
    struct server_limits lim = {.max_body = 1 << 20, .max_images = 4, .max_messages = 16, .max_pixels = 1 << 24};
    const char *text = chat_text();
    char body0[512];
    snprintf(body0, sizeof body0,
             "{\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}],\"temperature\":0,\"repetition_penalty\":1.5,"
             "\"max_tokens\":%d}", text, chat_n);
    const char *bodies[] = {body0, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"temperature\":0}"};
    struct server_request rq;
    char *ej = NULL;
    /* the API default penalty (1.05) survives temperature 0 */
    T_EQ_INT(server_request_parse(&rq, SERVER_API_CHAT, bodies[1], strlen(bodies[1]), g, &lim, &ej), 0);
    T_ASSERT(rq.req.sp.greedy);
    T_ASSERTF(rq.req.sp.repetition_penalty == 1.05f, "temperature 0 gives penalty %g, want the default 1.05",
              rq.req.sp.repetition_penalty);
    server_request_free(&rq);
    free(ej);
    ej = NULL;
    T_EQ_INT(server_request_parse(&rq, SERVER_API_CHAT, bodies[0], strlen(bodies[0]), g, &lim, &ej), 0);
    free(ej);
    T_ASSERT(rq.req.sp.greedy && rq.req.sp.repetition_penalty == 1.5f);
    struct chat_msg m = {"user", text};
    int32_t *ids = NULL, ref[MAXN];
    int n = 0;
    struct err e = {{0}};
    T_ASSERTF(chat_build_ids(g->tok, NULL, &m, 1, NULL, 0, g->cfg.query_num, 0, &ids, &n, &e) == 0, "%s", e.msg);
    const int nr = ids ? ref_loop(ids, n, 1.5f, chat_n, 0, 0, ref) : 0;
    /* expected text: the reference ids after spec §8's clean-up (drop 0, a leading BOS, a trailing stop), decoded */
    int32_t keep[MAXN];
    int nk = 0;
    for (int i = 0; i < nr; i++)
        if (ref[i] != 0) keep[nk++] = ref[i];
    int s0 = nk > 0 && keep[0] == g->cfg.bos_token_id;
    if (nk > s0 && is_stop(keep[nk - 1])) nk--;
    char *want = NULL;
    size_t wl = 0;
    T_ASSERT(tokenizer_decode(g->tok, keep + s0, nk - s0, TOKENIZER_CLEANUP_DEFAULT, &want, &wl, &e) == 0);
    struct turn_result r;
    T_ASSERTF(turn_run(rq.turns[0], g, NULL, &r, &e) == 0, "%s", e.msg);
    if (want && r.text) {
        /* str.strip() of the expected text */
        char *a = want, *z = want + strlen(want);
        while (a < z && (*a == ' ' || *a == '\n' || *a == '\t' || *a == '\r')) a++;
        while (z > a && (z[-1] == ' ' || z[-1] == '\n' || z[-1] == '\t' || z[-1] == '\r')) z--;
        *z = 0;
        fprintf(stderr, "  server text \"%s\"\n  reference   \"%s\"\n", r.text, a);
        T_EQ_STR(r.text, a);
    }
    turn_result_free(&r);
    server_request_free(&rq);
    free(want);
    free(ids);
}

/* beam search with one beam: the penalty over the beam's generated ids, on log-probabilities */
static void test_beam_one(void)
{
    int32_t p[32], ref[MAXN], plain[MAXN], got[MAXN];
    const int n = make_prompt(p);
    const int nr = ref_loop(p, n, 1.5f, ID_N, 1, 0, ref);
    const int np = ref_loop(p, n, 1.0f, ID_N, 1, 0, plain);
    T_ASSERTF(!same(ref, nr, plain, np), "penalty changes nothing: no power");
    for (int i = 0; i < nr; i++) T_ASSERTF(!is_stop(ref[i]), "a stop id in the reference: beam ends differ");
    struct beam_params bp;
    beam_params_default(&bp);
    bp.num_beams = 1;
    bp.repetition_penalty = 1.5f;
    bp.max_new = ID_N;
    int ng = 0;
    struct err e = {{0}};
    llm_truncate(&g->llm, 0);
    T_ASSERTF(beam_generate(g, p, NULL, n, &bp, NULL, NULL, got, &ng, NULL, &e) == 0, "%s", e.msg);
    print_ids("reference (log-probs)", ref, nr);
    print_ids("beam_generate", got, ng);
    T_ASSERTF(same(got, ng, ref, nr), "one-beam search with penalty 1.5 differs from the reference loop");
}

int main(void)
{
    g = open_tiny();
    if (!g) {
        T_ASSERTF(0, "cannot open the tiny model");
        return t_main_end("test_penalty");
    }
    T_RUN(test_generate_ids);
    T_RUN(test_cli_generate);
    T_RUN(test_chat);
    T_RUN(test_server_turn);
    T_RUN(test_beam_one);
    engine_close(g);
    return t_main_end("test_penalty");
}
