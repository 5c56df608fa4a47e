/* cmd_bench.c: `minicpmv bench --model DIR [--only LIST] [--reps N] [--json FILE] [engine/device flags]`
 * measures the engine on synthetic inputs and prints one table (docs/BENCH.md says what each number means):
 *   prefillN   prefill of N random token ids (one llm_forward call, chunked by --max-batch), tok/s
 *   decodeC    greedy decode steps (llm_forward with one token) at context C, tok/s and effective GB/s
 *   vision1    engine_encode_images on a 448x448 image (1 piece), ms; vision10: 1344x1344 (10 pieces)
 *   ttft       JPEG bytes in memory -> decode -> a chat turn (max_new 1): time to first token, ms
 *   seedcase   1344x1344 JPEG + text, ~3000 prompt tokens, 1000 generated (stop ids ignored), end to end, s
 *   concN      N streams at once through the scheduler (~512-token prompts, 256 greedy tokens each):
 *              aggregate tok/s, per-stream tok/s, TTFT p50/p99 (--concurrency 1,4,16 = conc1,conc4,conc16)
 * plus the memory per device (model accounting and the peak seen), with --peak-gbs auto the device's read
 * bandwidth measured before the model loads (membw.h) and every decode figure as a fraction of it, and, with
 * --json, the same numbers for tools/bench_compare.py (the output: tools/cmd_bench_report.c; memory and bandwidth:
 * tools/cmd_bench_dev.c). Owns no model code: only engine.h, llm.h, chat.h, image.h and backend.h calls.
 * Inputs are deterministic: ids from splitmix64(--seed), images from image_pattern (image.h;
 * tools/ref_vision.py gen_image computes the same pixels), the seed-case text from the
 * word list below (tools/bench_hf.py builds the same one). Timing: warm-up first, dev_sync on every device
 * around each timed region, median of --reps. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <turbojpeg.h>

#include "backend.h"
#include "chat.h"
#include "cmd_bench.h"
#include "cmd_util.h"
#include "devmap.h"
#include "image.h"
#include "mm.h"
#include "tokenizer.h"
#include "scheduler.h"
#include "turn.h"

/* 20 tokens with the Llama-3 tokenizer. Shared with tools/bench_hf.py. */
static const char BENCH_QUESTION[] =
    "Describe this image in detail: which objects and shapes do you see, and where are they placed?";
/* Seed-case filler words (shared with tools/bench_hf.py; keep both lists identical). */
static const char *const BENCH_WORDS[32] = {
    "the", "image", "shows", "a", "large", "red", "square", "next", "to", "small", "blue", "circle",
    "with", "green", "lines", "across", "bright", "background", "and", "dark", "corner", "pattern", "of",
    "stripes", "near", "top", "left", "edge", "while", "text", "appears", "below"};

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}


static void x_add(struct phase *p, const char *k, double v)
{
    if (p->n_x < BENCH_MAX_X) {
        p->xk[p->n_x] = k;
        p->xv[p->n_x++] = v;
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(const double *v, int n)
{
    double s[BENCH_MAX_REPS];
    if (n <= 0) return NAN;
    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    return n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

/* ------------------------------------------------------------------ inputs */

static int32_t *rand_ids(struct bench *b, int64_t n)
{
    int32_t *ids = malloc((size_t)(n > 0 ? n : 1) * sizeof *ids);
    if (!ids) return NULL;
    uint64_t s = b->seed;
    const int V = engine_config(b->g)->vocab_size, hi = V < 128000 ? V : 128000; /* ids >= 128000 are special */
    for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)(256 + splitmix64(&s) % (uint64_t)(hi - 256));
    return ids;
}

/* JPEG (quality 90, 4:2:0, as Pillow's default subsampling) of the synthetic image; *out from tjAlloc. */
static int gen_jpeg(int W, int H, uint32_t seed, unsigned char **out, unsigned long *n, struct err *e)
{
    struct image im = {0};
    if (image_pattern(&im, W, H, seed, e)) return -1;
    tjhandle tj = tjInitCompress();
    int rc = -1;
    *out = NULL;
    *n = 0;
    if (!tj) err_set(e, "tjInitCompress: %s", tjGetErrorStr());
    else if (tjCompress2(tj, im.rgb, W, 0, H, TJPF_RGB, out, n, TJSAMP_420, 90, 0))
        err_set(e, "tjCompress2 %dx%d: %s", W, H, tjGetErrorStr2(tj));
    else rc = 0;
    if (tj) tjDestroy(tj);
    image_free(&im);
    return rc;
}

/* n_words filler words (a '.' after every 12th) from word stream `seed`, after "(<image>./</image>)\n"
 * when image. Heap string. */
static char *filler_content(int n_words, uint64_t seed, int image)
{
    size_t cap = strlen(CHAT_IMAGE_MARKER) + 2 + (size_t)n_words * 16, len = 0;
    char *s = malloc(cap);
    if (!s) return NULL;
    s[0] = 0;
    if (image) len = (size_t)sprintf(s, "%s\n", CHAT_IMAGE_MARKER);
    uint64_t st = seed;
    for (int k = 0; k < n_words; k++) {
        const char *w = BENCH_WORDS[splitmix64(&st) % 32];
        len += (size_t)sprintf(s + len, "%s%s%s", k ? " " : "", w, k % 12 == 11 ? "." : "");
    }
    return s;
}

static char *seed_content(int n_words) { return filler_content(n_words, 1234, 1); }

static int prompt_len(struct bench *b, const char *content, const struct chat_grid *grid, int *n, struct err *e)
{
    struct chat_msg m = {"user", content};
    int32_t *ids = NULL;
    if (chat_build_ids(engine_tokenizer(b->g), NULL, &m, 1, grid, 1, engine_config(b->g)->query_num, 0, &ids, n, e)) return -1;
    free(ids);
    return 0;
}

/* The most filler words whose prompt (with the 1344x1344 image) stays within target tokens. */
static int seed_words(struct bench *b, const struct chat_grid *grid, int target, int *words, int *n_prompt,
                      struct err *e)
{
    int lo = 0, hi = target, n = 0;
    char *s = seed_content(0);
    if (!s) return err_set(e, "out of memory");
    int rc = prompt_len(b, s, grid, &n, e);
    free(s);
    if (rc) return -1;
    if (n > target) return err_set(e, "--seed-prompt %d: the image alone takes %d prompt tokens", target, n);
    *n_prompt = n;
    while (lo < hi) { /* invariant: lo words fit */
        int mid = lo + (hi - lo + 1) / 2;
        if (!(s = seed_content(mid))) return err_set(e, "out of memory");
        rc = prompt_len(b, s, grid, &n, e);
        free(s);
        if (rc) return -1;
        if (n <= target) { lo = mid; *n_prompt = n; }
        else hi = mid - 1;
    }
    *words = lo;
    return 0;
}

/* ------------------------------------------------------------------ phases */

static int run_prefill(struct bench *b, struct phase *p, struct err *e)
{
    struct engine *g = b->g;
    int32_t *ids = rand_ids(b, p->n);
    if (!ids) return err_set(e, "out of memory");
    int rc = -1;
    for (int r = -1; r < b->reps; r++) { /* r = -1: warm-up */
        engine_truncate(g, 0);
        engine_sync(g);
        double t0 = time_now();
        if (engine_prefill(g, ids, NULL, p->n, b->logits, e)) goto out;
        engine_sync(g);
        if (r >= 0) p->t[p->reps++] = time_now() - t0;
    }
    p->med = median(p->t, p->reps);
    p->value = (double)p->n / p->med;
    p->unit = "tok/s";
    p->higher_better = 1;
    x_add(p, "tokens", (double)p->n);
    x_add(p, "ms", 1e3 * p->med);
    x_add(p, "chunk", (double)engine_max_batch(g));
    rc = 0;
out:
    free(ids);
    return rc;
}

/* KV bytes a decode step reads at context T (attends over T keys): all layers, K and V. */
static double kv_read_bytes(const struct engine *g, double T)
{
    const struct model_config *c = engine_config(g);
    return T * c->num_hidden_layers * 2.0 * c->num_key_value_heads * c->head_dim * (double)dtype_size(engine_dtype(g));
}

static int run_decode(struct bench *b, struct phase *p, struct err *e)
{
    struct engine *g = b->g;
    const int steps = b->decode_steps;
    int32_t *ids = rand_ids(b, p->n);
    struct sampler s;
    struct sampler_params sp;
    sampler_defaults(&sp);
    sp.greedy = true;
    sp.repetition_penalty = 1.0f; /* plain argmax, as HF generate(do_sample=False) */
    if (!ids || sampler_init(&s, &sp, engine_config(g)->vocab_size)) { free(ids); return err_set(e, "out of memory"); }
    int rc = -1;
    engine_truncate(g, 0);
    if (engine_prefill(g, ids, NULL, p->n, b->logits, e)) goto out; /* the context, untimed */
    const int32_t first = sampler_sample(&s, b->logits);
    for (int r = -1; r < b->reps; r++) {
        const int n_steps = r < 0 ? (steps < 16 ? steps : 16) : steps;
        engine_truncate(g, p->n); /* back to context C: the next steps overwrite the same cache rows */
        int32_t tok = first;
        engine_sync(g);
        double t0 = time_now();
        for (int i = 0; i < n_steps; i++) /* the engine's greedy step: a CUDA graph on one GPU */
            if (engine_decode_greedy(g, tok, &tok, e)) goto out;
        engine_sync(g);
        if (r >= 0) p->t[p->reps++] = time_now() - t0;
    }
    p->med = median(p->t, p->reps);
    const double per_tok = p->med / steps;
    /* step i attends over C + i + 1 keys; the mean over the timed steps */
    const double kv = kv_read_bytes(g, (double)p->n + (steps + 1) / 2.0);
    const double bytes = (double)b->decode_weight_bytes + kv;
    p->value = 1.0 / per_tok;
    p->unit = "tok/s";
    p->higher_better = 1;
    x_add(p, "context", (double)p->n);
    x_add(p, "steps", steps);
    x_add(p, "ms_per_tok", 1e3 * per_tok);
    x_add(p, "bytes_per_tok", bytes);
    x_add(p, "weight_bytes_per_tok", (double)b->decode_weight_bytes);
    x_add(p, "kv_bytes_per_tok", kv);
    x_add(p, "gb_s", bytes / per_tok / 1e9);
    if (b->peak_gbs > 0) x_add(p, "pct_of_peak_bw", 100.0 * bytes / per_tok / 1e9 / b->peak_gbs);
    rc = 0;
out:
    sampler_free(&s);
    free(ids);
    return rc;
}

static int run_vision(struct bench *b, struct phase *p, struct err *e)
{
    struct engine *g = b->g;
    const int side = p->n == 1 ? 448 : 1344;
    struct image im = {0};
    if (image_pattern(&im, side, side, 7, e)) return -1;
    double tpre[BENCH_MAX_REPS], tq[4][BENCH_MAX_REPS];
    int rc = -1, n_pre = 0, pieces = 0;
    for (int r = -1; r < b->reps; r++) {
        struct image_pieces ip = {0};
        double t0 = time_now();
        int prc = image_preprocess(&ip, &im, engine_preprocessor(g), 0, e);
        double t1 = time_now();
        image_pieces_free(&ip);
        if (prc) goto out;
        if (r >= 0) tpre[n_pre++] = t1 - t0;
    }
    for (int r = -1; r < b->reps; r++) {
        struct chat_grid grid;
        struct tensor out = {0};
        engine_sync(g);
        double t0 = time_now();
        if (engine_encode_images(g, &im, 1, &grid, &out, &pieces, e)) goto out;
        engine_sync(g);
        double t1 = time_now();
        dev_free(out.dev, out.data);
        if (r >= 0) {
            const struct mm_times *et = engine_encode_times(g);
            tq[0][p->reps] = et->pre, tq[1][p->reps] = et->vision_queued, tq[2][p->reps] = et->rs_queued;
            tq[3][p->reps] = et->wait;
            p->t[p->reps++] = t1 - t0;
        }
    }
    if (pieces != p->n) { err_set(e, "%dx%d gave %d pieces, expected %lld", side, side, pieces, (long long)p->n); goto out; }
    p->med = median(p->t, p->reps);
    const double pre = median(tpre, n_pre);
    p->value = 1e3 * p->med;
    p->unit = "ms";
    x_add(p, "pieces", pieces);
    x_add(p, "image_side", side);
    x_add(p, "preprocess_ms", 1e3 * pre);
    x_add(p, "device_ms", 1e3 * (p->med - pre > 0 ? p->med - pre : 0));
    /* where the host spent the encode: preprocessing inside it, queueing the vision tower (host
     * conversion + uploads + launches), queueing the resampler, then waiting for the device */
    x_add(p, "in_pre_ms", 1e3 * median(tq[0], p->reps));
    x_add(p, "queue_vision_ms", 1e3 * median(tq[1], p->reps));
    x_add(p, "queue_resampler_ms", 1e3 * median(tq[2], p->reps));
    x_add(p, "wait_ms", 1e3 * median(tq[3], p->reps));
    rc = 0;
out:
    image_free(&im);
    return rc;
}

static int run_ttft(struct bench *b, struct phase *p, struct err *e)
{
    struct engine *g = b->g;
    if (!engine_tokenizer(g)) return err_set(e, "needs tokenizer.json in the model folder");
    unsigned char *jpg = NULL;
    unsigned long n_jpg = 0;
    if (gen_jpeg(1344, 1344, 7, &jpg, &n_jpg, e)) return -1;
    char content[sizeof BENCH_QUESTION + 64];
    snprintf(content, sizeof content, "%s\n%s", CHAT_IMAGE_MARKER, BENCH_QUESTION);
    struct chat_msg m = {"user", content};
    double tdec[BENCH_MAX_REPS], tvis[BENCH_MAX_REPS], tpre[BENCH_MAX_REPS];
    int rc = -1, n_prompt = 0, pieces = 0, first = -1;
    for (int r = -1; r < b->reps; r++) {
        struct image im = {0};
        struct turn *t = NULL;
        struct turn_result res = {0};
        struct turn_request rq = {.msgs = &m, .n_msgs = 1, .images = &im, .n_images = 1, .max_new = 1};
        sampler_defaults(&rq.sp);
        rq.sp.greedy = true;
        rq.sp.repetition_penalty = 1.0f;
        engine_sync(g);
        double t0 = time_now();
        if (image_decode(&im, jpg, n_jpg, NULL, e)) goto out;
        engine_kv_forget(g); /* a cold prefill every time (no prefix reuse of the previous rep's prompt) */
        double t1 = time_now();
        int crc = turn_prepare(&t, g, &rq, e) || turn_run(t, g, NULL, &res, e);
        engine_sync(g);
        double t2 = time_now();
        turn_free(t);
        image_free(&im);
        if (crc) { turn_result_free(&res); goto out; }
        if (r >= 0) {
            tdec[p->reps] = t1 - t0;
            tvis[p->reps] = res.t_vision;
            tpre[p->reps] = res.t_prefill;
            p->t[p->reps++] = t2 - t0;
        }
        n_prompt = res.n_prompt;
        pieces = res.n_pieces;
        first = res.n_gen > 0 ? res.ids[0] : -1;
        turn_result_free(&res);
    }
    p->med = median(p->t, p->reps);
    p->value = 1e3 * p->med;
    p->unit = "ms";
    int32_t *qids = NULL;
    int n_q = -1;
    if (!tokenizer_encode(engine_tokenizer(g), BENCH_QUESTION, strlen(BENCH_QUESTION), 0, &qids, &n_q, e)) free(qids);
    x_add(p, "n_prompt", n_prompt);
    x_add(p, "question_tokens", n_q);
    x_add(p, "pieces", pieces);
    x_add(p, "jpeg_kib", n_jpg / 1024.0);
    x_add(p, "jpeg_decode_ms", 1e3 * median(tdec, p->reps));
    x_add(p, "vision_ms", 1e3 * median(tvis, p->reps));
    x_add(p, "prefill_ms", 1e3 * median(tpre, p->reps));
    x_add(p, "first_token", first);
    rc = 0;
out:
    tjFree(jpg);
    return rc;
}

/* One end-to-end run through the chat turn: JPEG decode -> vision -> prompt -> merge -> prefill -> n_new
 * greedy tokens, stop ids ignored (random weights may emit one early; the seed's measurement generated all
 * 1000). */
static int seed_once(struct bench *b, const unsigned char *jpg, unsigned long n_jpg, const char *content, int n_new,
                     double tm[5], int *n_prompt, int *first_stop, struct err *e)
{
    struct engine *g = b->g;
    struct image im = {0};
    struct turn *t = NULL;
    struct turn_result res = {0};
    struct chat_msg m = {"user", content};
    struct turn_request rq = {.msgs = &m, .n_msgs = 1, .images = &im, .n_images = 1, .max_new = n_new,
                              .ignore_eos = 1};
    sampler_defaults(&rq.sp);
    rq.sp.greedy = true;
    rq.sp.repetition_penalty = 1.0f;
    int rc = -1;
    engine_sync(g);
    double t0 = time_now();
    if (image_decode(&im, jpg, n_jpg, NULL, e)) goto out;
    double t1 = time_now();
    if (turn_prepare(&t, g, &rq, e) || turn_run(t, g, NULL, &res, e)) goto out;
    engine_sync(g);
    double t3 = time_now();
    tm[0] = t3 - t0;                     /* end to end */
    tm[1] = t1 - t0 + res.t_vision;      /* jpeg decode + vision */
    tm[3] = res.t_decode;                /* the other n_new - 1 tokens */
    tm[2] = tm[0] - tm[1] - tm[3];       /* prompt, merge, prefill, first token */
    tm[4] = tm[1] + tm[2];               /* time to first token */
    *n_prompt = res.n_prompt;
    *first_stop = -1;
    for (int i = 0; i < res.n_gen && *first_stop < 0; i++)
        if (engine_is_stop(g, res.ids[i])) *first_stop = i;
    rc = 0;
out:
    turn_free(t);
    turn_result_free(&res);
    image_free(&im);
    return rc;
}

static int run_seed(struct bench *b, struct phase *p, struct err *e)
{
    struct engine *g = b->g;
    if (!engine_tokenizer(g)) return err_set(e, "needs tokenizer.json in the model folder");
    struct image_slice_plan plan;
    if (image_slice_plan(&plan, 1344, 1344, engine_preprocessor(g)->scale_resolution, engine_preprocessor(g)->patch_size,
                         engine_preprocessor(g)->max_slice_nums, e))
        return -1;
    struct chat_grid grid = {plan.cols, plan.rows};
    int words = 0, n_target = 0, n_prompt = 0, first_stop = -1;
    if (seed_words(b, &grid, b->seed_prompt, &words, &n_target, e)) return -1;
    char *content = seed_content(words);
    unsigned char *jpg = NULL;
    unsigned long n_jpg = 0;
    if (!content) return err_set(e, "out of memory");
    if (gen_jpeg(1344, 1344, 7, &jpg, &n_jpg, e)) { free(content); return -1; }
    double tm[5], acc[5][BENCH_MAX_REPS];
    int rc = -1, reps = b->seed_reps;
    /* warm-up: the same shapes with 8 new tokens */
    if (seed_once(b, jpg, n_jpg, content, 8, tm, &n_prompt, &first_stop, e)) goto out;
    for (int r = 0; r < reps; r++) {
        if (seed_once(b, jpg, n_jpg, content, b->seed_new, tm, &n_prompt, &first_stop, e)) goto out;
        for (int k = 0; k < 5; k++) acc[k][r] = tm[k];
        p->t[p->reps++] = tm[0];
    }
    if (n_prompt != n_target) { err_set(e, "prompt has %d tokens, planned %d", n_prompt, n_target); goto out; }
    p->med = median(p->t, p->reps);
    p->value = p->med;
    p->unit = "s";
    x_add(p, "n_prompt", n_prompt);
    x_add(p, "n_new", b->seed_new);
    x_add(p, "filler_words", words);
    x_add(p, "vision_ms", 1e3 * median(acc[1], reps));
    x_add(p, "prefill_ms", 1e3 * median(acc[2], reps));
    x_add(p, "ttft_ms", 1e3 * median(acc[4], reps));
    x_add(p, "decode_s", median(acc[3], reps));
    x_add(p, "decode_tok_s", (b->seed_new - 1) / median(acc[3], reps));
    /* the decode part's effective bandwidth: token i of n_new attends over n_prompt + i keys */
    const double seed_bytes = (double)b->decode_weight_bytes + kv_read_bytes(g, n_prompt + b->seed_new / 2.0);
    x_add(p, "decode_gb_s", seed_bytes * (b->seed_new - 1) / median(acc[3], reps) / 1e9);
    if (b->peak_gbs > 0)
        x_add(p, "decode_pct_of_peak_bw", 100.0 * seed_bytes * (b->seed_new - 1) / median(acc[3], reps) / 1e9 / b->peak_gbs);
    x_add(p, "first_stop_at", first_stop); /* -1: no stop id among the generated tokens */
    rc = 0;
out:
    free(content);
    tjFree(jpg);
    return rc;
}

/* concN: N streams at once through the scheduler (continuous batching), each a ~512-token text prompt
 * (its own filler words) and 256 greedy tokens, stop ids ignored. Aggregate tok/s = all generated tokens
 * over the wall time from the first admission to the last answer; per stream: decode tok/s and the time
 * to its first token from its admission (queueing behind the others' prefill chunks included). */
struct conc_out {
    int done, rc;
    struct turn_result r;
};

static void conc_done(void *ctx, int rc, struct turn_result *r, int input_error, const struct err *e)
{
    (void)input_error;
    struct conc_out *o = ctx;
    o->done = 1;
    o->rc = rc;
    o->r = *r;
    memset(r, 0, sizeof *r);
    if (rc) fprintf(stderr, "bench: conc stream failed: %s\n", e->msg);
}

static int run_conc(struct bench *b, struct phase *p, struct err *e)
{
    struct engine *g = b->g;
    const int N = (int)p->n;
    if (!engine_tokenizer(g)) return err_set(e, "needs tokenizer.json in the model folder");
    if (engine_slots(g) < N)
        return err_set(e, "%s needs %d slots; the engine has %d (--parallel %d)", p->name, N, engine_slots(g), N);
    struct turn **t = calloc((size_t)N, sizeof *t);
    struct conc_out *o = calloc((size_t)N, sizeof *o);
    char **content = calloc((size_t)N, sizeof *content);
    struct chat_msg *m = calloc((size_t)N, sizeof *m);
    double *ttft = calloc((size_t)N, sizeof *ttft), *per = calloc((size_t)N, sizeof *per);
    struct scheduler *s = NULL;
    int rc = -1, n_prompt = 0;
    if (!t || !o || !content || !m || !ttft || !per) { err_set(e, "out of memory"); goto out; }
    if (sched_init(&s, g, e)) goto out;
    for (int i = 0; i < N; i++) {
        if (!(content[i] = filler_content(BENCH_CONC_WORDS, 1000 + (uint64_t)i, 0))) { err_set(e, "out of memory"); goto out; }
        m[i] = (struct chat_msg){"user", content[i]};
        struct turn_request rq = {.msgs = &m[i], .n_msgs = 1, .max_new = BENCH_CONC_NEW, .ignore_eos = 1};
        sampler_defaults(&rq.sp);
        rq.sp.greedy = true;
        rq.sp.repetition_penalty = 1.0f;
        if (turn_prepare(&t[i], g, &rq, e)) goto out;
        n_prompt += turn_prompt_tokens(t[i]);
    }
    for (int r = -1; r < b->reps; r++) { /* r = -1: warm-up */
        engine_kv_forget(g); /* each rep prefills its prompts cold (no prefix reuse of the previous rep's) */
        engine_sync(g);
        double t0 = time_now();
        for (int i = 0; i < N; i++) {
            memset(&o[i], 0, sizeof o[i]);
            sched_add(s, t[i], NULL, conc_done, &o[i]);
        }
        while (sched_step(s)) {}
        engine_sync(g);
        double wall = time_now() - t0;
        int64_t gen = 0;
        for (int i = 0; i < N; i++) {
            if (!o[i].done || o[i].rc) { err_set(e, "stream %d failed", i); goto out; }
            gen += o[i].r.n_gen;
            ttft[i] = o[i].r.t_first;
            per[i] = o[i].r.n_gen > 1 && o[i].r.t_decode > 0 ? (o[i].r.n_gen - 1) / o[i].r.t_decode : 0;
            turn_result_free(&o[i].r);
        }
        if (r >= 0) {
            p->t[p->reps++] = wall;
            if (r == b->reps - 1) { /* the last repetition's per-stream figures */
                qsort(ttft, (size_t)N, sizeof *ttft, cmp_double);
                qsort(per, (size_t)N, sizeof *per, cmp_double);
                x_add(p, "streams", N);
                x_add(p, "prompt_tokens_mean", (double)n_prompt / N);
                x_add(p, "new_tokens", BENCH_CONC_NEW);
                x_add(p, "tokens", (double)gen);
                x_add(p, "stream_tok_s_p50", per[N / 2]);
                x_add(p, "stream_tok_s_min", per[0]);
                x_add(p, "ttft_ms_p50", 1e3 * ttft[N / 2]);
                x_add(p, "ttft_ms_p99", 1e3 * ttft[(N * 99) / 100 < N ? (N * 99) / 100 : N - 1]);
                /* the scheduler's host time per decode step (all repetitions): the emit part runs
                 * while the device computes the next step */
                struct sched_times st;
                sched_get_times(s, &st);
                const double per_step = st.launches > 0 ? 1e6 / (double)st.launches : 0;
                x_add(p, "step_us_collect", st.collect * per_step);
                x_add(p, "step_us_take", st.take * per_step);
                x_add(p, "step_us_launch", st.launch * per_step);
                x_add(p, "step_us_emit", st.emit * per_step);
            }
        }
        p->value = (double)gen; /* tokens per repetition, divided below */
    }
    p->med = median(p->t, p->reps);
    p->value = p->value / p->med;
    p->unit = "tok/s";
    p->higher_better = 1;
    rc = 0;
out:
    sched_free(s);
    for (int i = 0; t && i < N; i++) turn_free(t[i]);
    for (int i = 0; content && i < N; i++) free(content[i]);
    for (int i = 0; o && i < N; i++) turn_result_free(&o[i].r);
    free(t);
    free(o);
    free(content);
    free(m);
    free(ttft);
    free(per);
    return rc;
}

/* ------------------------------------------------------------------ setup, report */

static const char *const DEFAULT_PHASES = "prefill512,prefill3000,decode512,decode4096,vision1,vision10,ttft,seedcase";

static int parse_phases(const char *list, struct phase *ph, int *n, struct err *e)
{
    char buf[512];
    if (!strcmp(list, "all")) list = DEFAULT_PHASES;
    if (strlen(list) >= sizeof buf) return err_set(e, "--only: list too long");
    strcpy(buf, list);
    *n = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (*n == BENCH_MAX_PHASES) return err_set(e, "--only: at most %d phases", BENCH_MAX_PHASES);
        struct phase *p = &ph[*n];
        memset(p, 0, sizeof *p);
        long long v = 0;
        struct err ie;
        if (!strncmp(t, "prefill", 7) && !cmdu_int("--only prefillN", t + 7, 1, 1 << 20, &v, &ie)) p->kind = PK_PREFILL;
        else if (!strncmp(t, "decode", 6) && !cmdu_int("--only decodeN", t + 6, 1, 1 << 20, &v, &ie)) p->kind = PK_DECODE;
        else if (!strcmp(t, "vision1") || !strcmp(t, "vision10")) { p->kind = PK_VISION; v = atoi(t + 6); }
        else if (!strcmp(t, "ttft")) p->kind = PK_TTFT;
        else if (!strcmp(t, "seedcase")) p->kind = PK_SEED;
        else if (!strncmp(t, "conc", 4) && !cmdu_int("--only concN", t + 4, 1, 4096, &v, &ie)) p->kind = PK_CONC;
        else
            return err_set(e, "--only: unknown phase '%s' (prefillN, decodeN, vision1, vision10, ttft, seedcase, concN, all)",
                           t);
        p->n = v;
        snprintf(p->name, sizeof p->name, "%s", t);
        (*n)++;
    }
    if (!*n) return err_set(e, "--only: empty list");
    return 0;
}


static const char BENCH_HELP[] =
    "usage: minicpmv bench --model DIR [--only LIST] [--reps N] [--json FILE] [flags]\n"
    "  --only LIST          comma list of prefillN, decodeN (N = tokens / context), vision1, vision10, ttft,\n"
    "                       seedcase, concN (N streams through the scheduler; needs --parallel N), or all\n"
    "                       (default: %s)\n"
    "  --concurrency LIST   e.g. 1,4,16,64: the phases conc1,conc4,... (after --only's, if given)\n"
    "  --reps N             timed repetitions per phase after one warm-up; the median is reported (default 5)\n"
    "  --decode-steps N     decode steps timed per repetition (default 128)\n"
    "  --seed-prompt N      seed case: prompt tokens, image included (default 3000)\n"
    "  --seed-new N         seed case: generated tokens, stop ids ignored (default 1000)\n"
    "  --seed-reps N        seed case repetitions (default 1)\n"
    "  --rng-seed N         seed of the random token ids (default 1)\n"
    "  --mem-poll MS        also sample GPU free memory every MS ms from a thread (default 0: only after\n"
    "                       each phase, which misses allocations freed inside a phase)\n"
    "  --peak-gbs X|auto    the device's read bandwidth in GB/s, or auto: measured in this run before the\n"
    "                       model loads (read-and-reduce of 8 GiB on a GPU, 1 GiB on the CPU, best of a few\n"
    "                       passes); every decode figure is also printed as a fraction of it\n"
    "  --json FILE          write the results for tools/bench_compare.py\n"
    "  --qgemv V            (developers) the quantized decode GEMV's kernel: 1 the default, 0 the CUDA-core\n"
    "                       one, 2..4 session 5's tensor-core one, 8..12 the A-operand kernel's shapes\n"
    "                       (docs/CUDA.md, \"The quantized decode GEMV\")\n"
    "Without --ctx the KV cache is sized for the longest phase (decode4096 needs 4096 + decode steps).\n";

int cmd_bench(int argc, char **argv)
{
    struct err e = {{0}};
    struct cmdu_engine_opts eo;
    cmdu_engine_opts_init(&eo);
    struct bench b;
    memset(&b, 0, sizeof b);
    b.reps = 5;
    b.decode_steps = 128;
    b.seed_prompt = 3000;
    b.seed_new = 1000;
    b.seed_reps = 1;
    b.seed = 1;
    pthread_mutex_init(&b.mu, NULL);
    struct phase ph[BENCH_MAX_PHASES];
    int n_ph = 0, rc = 1;
    const char *only = DEFAULT_PHASES, *json = NULL, *conc_list = NULL;
    int only_given = 0, qgemv = -1;
    for (int i = 1; i < argc; i++) {
        int r = cmdu_engine_flag(&eo.o, &eo.dm, argc, argv, &i, &e);
        if (r < 0) goto out;
        if (r > 0) continue;
        const char *f = argv[i], *v;
        long long n;
        if (!strcmp(f, "--only")) {
            if (!(only = cmdu_value(argc, argv, &i, &e))) goto out;
            only_given = 1;
        } else if (!strcmp(f, "--concurrency")) {
            const char *v = cmdu_value(argc, argv, &i, &e);
            if (!v) goto out;
            conc_list = v;
        } else if (!strcmp(f, "--json")) {
            if (!(json = cmdu_value(argc, argv, &i, &e))) goto out;
        } else if (!strcmp(f, "--reps") || !strcmp(f, "--decode-steps") || !strcmp(f, "--seed-prompt") ||
                   !strcmp(f, "--seed-new") || !strcmp(f, "--seed-reps") || !strcmp(f, "--rng-seed") ||
                   !strcmp(f, "--mem-poll")) {
            const long long hi = !strcmp(f, "--reps") || !strcmp(f, "--seed-reps") ? BENCH_MAX_REPS : 1 << 20;
            const long long lo = !strcmp(f, "--rng-seed") || !strcmp(f, "--mem-poll") ? 0 : 1;
            if (!(v = cmdu_value(argc, argv, &i, &e)) || cmdu_int(f, v, lo, hi, &n, &e)) goto out;
            if (!strcmp(f, "--reps")) b.reps = (int)n;
            else if (!strcmp(f, "--decode-steps")) b.decode_steps = (int)n;
            else if (!strcmp(f, "--seed-prompt")) b.seed_prompt = (int)n;
            else if (!strcmp(f, "--seed-new")) b.seed_new = (int)n;
            else if (!strcmp(f, "--seed-reps")) b.seed_reps = (int)n;
            else if (!strcmp(f, "--rng-seed")) b.seed = (uint64_t)n;
            else b.poll_ms = (int)n;
        } else if (!strcmp(f, "--qgemv")) {
            if (!(v = cmdu_value(argc, argv, &i, &e)) || cmdu_int(f, v, 0, 255, &n, &e)) goto out;
            if (dev_set_qgemv(device_cpu(), (int)n)) {
                err_set(&e, "--qgemv: %lld is not a kernel (docs/CUDA.md, \"The quantized decode GEMV\")", n);
                goto out;
            }
            qgemv = (int)n;
        } else if (!strcmp(f, "--peak-gbs")) {
            if (!(v = cmdu_value(argc, argv, &i, &e))) goto out;
            char *end;
            b.peak_auto = !strcmp(v, "auto");
            b.peak_gbs = b.peak_auto ? 0 : strtod(v, &end);
            if (!b.peak_auto && (*end || !(b.peak_gbs > 0))) {
                err_set(&e, "--peak-gbs: '%s' is neither auto nor a positive number", v);
                goto out;
            }
        } else if (!strcmp(f, "--help")) {
            printf(BENCH_HELP, DEFAULT_PHASES);
            printf("%s%s", cmdu_engine_help, devmap_opts_help());
            rc = 0;
            goto out;
        } else {
            err_set(&e, "unknown flag '%s' (see minicpmv bench --help)", f);
            goto out;
        }
    }
    char only_buf[512];
    if (conc_list) { /* conc1,conc4,... after --only's phases */
        size_t k = (size_t)snprintf(only_buf, sizeof only_buf, "%s", only_given ? only : "");
        char tmp[256];
        snprintf(tmp, sizeof tmp, "%s", conc_list);
        for (char *save = NULL, *t = strtok_r(tmp, ",", &save); t && k < sizeof only_buf; t = strtok_r(NULL, ",", &save))
            k += (size_t)snprintf(only_buf + k, sizeof only_buf - k, "%sconc%s", k ? "," : "", t);
        if (k >= sizeof only_buf) { err_set(&e, "--concurrency: list too long"); goto out; }
        only = only_buf;
    }
    if (parse_phases(only, ph, &n_ph, &e)) goto out;

    /* KV capacity: the longest phase, unless --ctx says otherwise */
    int64_t need = 0;
    const char *need_by = "";
    for (int i = 0; i < n_ph; i++) {
        int64_t k = ph[i].kind == PK_PREFILL ? ph[i].n : ph[i].kind == PK_DECODE ? ph[i].n + b.decode_steps
                    : ph[i].kind == PK_SEED ? (int64_t)b.seed_prompt + b.seed_new
                    : ph[i].kind == PK_CONC ? BENCH_CONC_PROMPT + BENCH_CONC_NEW + 64 : 0;
        if (k > need) { need = k; need_by = ph[i].name; }
    }
    if (eo.dm.params.ctx > 0 && eo.dm.params.ctx < need) {
        err_set(&e, "--ctx %lld is too small for %s (needs %lld tokens)", (long long)eo.dm.params.ctx, need_by,
                (long long)need);
        goto out;
    }
    if (eo.dm.params.ctx <= 0 && need > 4096) eo.dm.params.ctx = (need + 255) / 256 * 256;

    /* GPU memory baseline before anything is loaded (after the CUDA context exists) */
    struct backend_info bi;
    backend_query(&bi);
    for (int i = 0; qgemv >= 0 && i < bi.n_gpus; i++) dev_set_qgemv(device_cuda(i), qgemv);
    if (!(eo.o.device && !strcmp(eo.o.device, "cpu")) && eo.dm.n_gpus != 0) {
        int n = eo.dm.n_gpus > 0 ? eo.dm.n_gpus : bi.n_gpus;
        for (int i = 0; i < n && b.n_gpu < DEVMAP_MAX_DEVICES; i++) {
            int ord = eo.dm.n_gpus > 0 ? eo.dm.gpus[i] : i;
            size_t fr, tot;
            struct err me;
            if (ord >= bi.n_gpus) continue;
            if (b.peak_auto && bench_measure_peak(&b, device_cuda(ord), &e)) goto out; /* before the baseline: freed */
            if (dev_mem_info(device_cuda(ord), &fr, &tot, &me)) continue;
            b.gpu[b.n_gpu] = ord;
            b.free0[b.n_gpu] = b.min_free[b.n_gpu] = fr;
            b.total[b.n_gpu++] = tot;
        }
    }
    if (b.peak_auto && b.n_bw == 0 && bench_measure_peak(&b, device_cpu(), &e)) goto out; /* no GPU in the run */
    if (b.poll_ms > 0 && b.n_gpu > 0) {
        if (pthread_create(&b.th, NULL, bench_mem_poller, &b)) { err_set(&e, "--mem-poll: cannot start a thread"); goto out; }
        b.th_running = 1;
    }
    if (engine_open(&b.g, &eo.o, &e)) goto out;
    fprintf(stderr, "bench: model loaded in %.1f s\n", engine_load_seconds(b.g));
    if (engine_decode_weight_bytes(b.g, &b.decode_weight_bytes, &e)) goto out;
    if (!(b.logits = malloc((size_t)engine_config(b.g)->vocab_size * sizeof *b.logits))) { err_set(&e, "out of memory"); goto out; }
    bench_mem_sample(&b);

    for (int i = 0; i < n_ph; i++) {
        struct phase *p = &ph[i];
        struct err pe = {{0}};
        bench_phase_mem_begin(&b);
        double t0 = time_now();
        int prc = p->kind == PK_PREFILL ? run_prefill(&b, p, &pe) : p->kind == PK_DECODE ? run_decode(&b, p, &pe)
                  : p->kind == PK_VISION ? run_vision(&b, p, &pe) : p->kind == PK_TTFT ? run_ttft(&b, p, &pe)
                  : p->kind == PK_SEED ? run_seed(&b, p, &pe) : run_conc(&b, p, &pe);
        bench_phase_mem_end(&b, p);
        engine_truncate(b.g, 0);
        if (prc) snprintf(p->err, sizeof p->err, "failed: %s", pe.msg);
        else if (!(p->value > 0) || !isfinite(p->value)) snprintf(p->err, sizeof p->err, "failed: no valid timing");
        else p->ran = 1;
        fprintf(stderr, "bench: %-12s %s (%.1f s)\n", p->name, p->ran ? "done" : p->err, time_now() - t0);
    }
    bench_report_print(&b, ph, n_ph);
    if (json && bench_report_json(&b, ph, n_ph, eo.o.model_dir, json, &e)) goto out;
    rc = 0;
    for (int i = 0; i < n_ph; i++)
        if (!ph[i].ran) rc = 1;
    if (rc) err_set(&e, "some phases failed (see the table)");
out:
    if (b.th_running) {
        atomic_store(&b.stop, 1);
        pthread_join(b.th, NULL);
    }
    if (rc && e.msg[0]) fprintf(stderr, "minicpmv bench: %s\n", e.msg);
    free(b.logits);
    engine_close(b.g);
    pthread_mutex_destroy(&b.mu);
    return rc;
}
