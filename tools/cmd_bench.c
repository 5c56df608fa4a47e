/* cmd_bench.c: `minicpmv bench --model DIR [--only LIST] [--reps N] [--json FILE] [engine/device flags]`
 * measures the engine on synthetic inputs and prints one table (docs/BENCH.md says what each number means):
 *   prefillN   prefill of N random token ids (one llm_forward call, chunked by --max-batch), tok/s
 *   decodeC    greedy decode steps (llm_forward with one token) at context C, tok/s and effective GB/s
 *   vision1    engine_encode_images on a 448x448 image (1 piece), ms; vision10: 1344x1344 (10 pieces)
 *   ttft       JPEG bytes in memory -> a chat turn (max_new 1) while the JPEG decodes on its own thread
 *              (image_decode_async, keyed by its bytes: the chat and serve path): time to first token, ms;
 *              ttftsync: the JPEG decoded whole first (image_decode), then the turn
 *   seedcase   1344x1344 JPEG + text, ~3000 prompt tokens, 1000 generated (stop ids ignored), end to end, s
 *   concN      N streams at once through the scheduler (~512-token prompts, 256 greedy tokens each):
 *              aggregate tok/s, per-stream tok/s, TTFT p50/p99 (--concurrency 1,4,16 = conc1,conc4,conc16),
 *              and a probe: the TTFT of a request arriving under that load next to its idle TTFT
 *   turn2      a follow-up turn about the same 1344x1344 image: its TTFT, prompt tokens reused vs prefilled,
 *              and the prefill of its new tokens alone
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
#include "llm.h"
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

/* Where the host spent an image encode (engine_encode_times), one row per timed repetition: preprocessing
 * inside it, queueing the vision tower (host conversion + uploads + launches), queueing the resampler, then
 * waiting for the device. vision10 and ttft report it alike. */
struct enc_parts {
    double t[6][BENCH_MAX_REPS];
};

static void enc_parts_note(struct enc_parts *q, int rep, const struct mm_times *et)
{
    q->t[0][rep] = et->pre, q->t[1][rep] = et->vision_queued, q->t[2][rep] = et->rs_queued, q->t[3][rep] = et->wait;
    q->t[4][rep] = et->rows_wait, q->t[5][rep] = et->batches;
}

static void enc_parts_add(struct phase *p, const struct enc_parts *q)
{
    x_add(p, "in_pre_ms", 1e3 * median(q->t[0], p->reps));
    x_add(p, "queue_vision_ms", 1e3 * median(q->t[1], p->reps));
    x_add(p, "queue_resampler_ms", 1e3 * median(q->t[2], p->reps));
    x_add(p, "wait_ms", 1e3 * median(q->t[3], p->reps));
    x_add(p, "rows_wait_ms", 1e3 * median(q->t[4], p->reps));
    x_add(p, "batches", median(q->t[5], p->reps));
}

static int run_vision(struct bench *b, struct phase *p, struct err *e)
{
    struct engine *g = b->g;
    const int side = p->n == 1 ? 448 : 1344;
    struct image im = {0};
    if (image_pattern(&im, side, side, 7, e)) return -1;
    double tpre[BENCH_MAX_REPS];
    struct enc_parts tq;
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
            enc_parts_note(&tq, p->reps, engine_encode_times(g));
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
    enc_parts_add(p, &tq);
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
    struct enc_parts tq;
    int rc = -1, n_prompt = 0, pieces = 0, first = -1;
    for (int r = -1; r < b->reps; r++) {
        struct image im = {0};
        struct turn *t = NULL;
        struct turn_result res = {0};
        struct turn_request rq = {.msgs = &m, .n_msgs = 1, .images = &im, .n_images = 1, .max_new = 1};
        sampler_defaults(&rq.sp);
        rq.sp.greedy = true;
        rq.sp.repetition_penalty = 1.0f;
        /* ttft: the JPEG decodes on its own thread and the turn starts at once, keyed by the JPEG's bytes (what
         * chat and serve do); ttftsync: decoded whole first, the turn keyed by the pixels (before 2026-12-03) */
        const uint8_t *key = jpg;
        const size_t key_len = n_jpg;
        if (!p->n) rq.img_keys = &key, rq.img_key_len = &key_len;
        engine_kv_forget(g); /* a cold prefill every time (no prefix reuse of the previous rep's prompt) */
        engine_sync(g);
        double t0 = time_now();
        if ((p->n ? image_decode : image_decode_async)(&im, jpg, n_jpg, NULL, e)) goto out;
        double t1 = time_now();
        int crc = turn_prepare(&t, g, &rq, e) || turn_run(t, g, NULL, &res, e);
        engine_sync(g);
        double t2 = time_now();
        turn_free(t);
        image_free(&im);
        if (crc) { turn_result_free(&res); goto out; }
        if (r >= 0) {
            enc_parts_note(&tq, p->reps, engine_encode_times(g));
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
    x_add(p, p->n ? "jpeg_decode_ms" : "jpeg_header_ms", 1e3 * median(tdec, p->reps));
    x_add(p, "vision_ms", 1e3 * median(tvis, p->reps));
    enc_parts_add(p, &tq); /* of vision_ms; the rest is the turn's own: the image list's key, the cache lookup */
    x_add(p, "prefill_ms", 1e3 * median(tpre, p->reps));
    x_add(p, "first_token", first);
    rc = 0;
out:
    tjFree(jpg);
    return rc;
}

/* One turn of run_turn2 on slot 0 through the image cache: the JPEG's decode started on its own thread (its
 * header timed apart), the turn prepared and run. *ms_total: from the JPEG bytes to the turn's end (its first token when max_new is 1). */
static int turn2_once(struct bench *b, struct imgcache *cache, const unsigned char *jpg, unsigned long n_jpg,
                      const struct chat_msg *m, int n_msgs, int max_new, struct turn_result *res, double *ms_decode,
                      double *ms_total, struct err *e)
{
    struct engine *g = b->g;
    struct image im = {0};
    struct turn *t = NULL;
    const uint8_t *key = jpg;
    const size_t key_len = n_jpg;
    struct turn_request rq = {.msgs = m, .n_msgs = n_msgs, .images = &im, .n_images = 1, .img_keys = &key,
                              .img_key_len = &key_len, .max_new = max_new};
    sampler_defaults(&rq.sp);
    rq.sp.greedy = true;
    rq.sp.repetition_penalty = 1.0f;
    const struct turn_io io = {.cache = cache};
    memset(res, 0, sizeof *res);
    engine_sync(g);
    const double t0 = time_now();
    int rc = image_decode_async(&im, jpg, n_jpg, NULL, e); /* a hit in the image cache does not wait for the rows */
    const double t1 = time_now();
    if (!rc) rc = turn_prepare(&t, g, &rq, e) || turn_run(t, g, &io, res, e);
    engine_sync(g);
    *ms_decode = 1e3 * (t1 - t0);
    *ms_total = 1e3 * (time_now() - t0);
    turn_free(t);
    image_free(&im);
    return rc ? -1 : 0;
}

/* turn2: a follow-up turn about the same image (issue 14: "a second turn about the same 1344² image reaches
 * its first token in <= 20 ms + its new tokens"). Each repetition starts cold (no cached KV block, an empty
 * image cache): turn 1 is the 1344x1344 JPEG + BENCH_QUESTION with BENCH_TURN2_FIRST_NEW greedy tokens; turn 2
 * sends the same JPEG bytes again with the history as a client sends it back (turn 1's question, its answer's
 * text) and a short new question, one token. The value is turn 2's time from its JPEG bytes to its first token
 * (the JPEG decode, the image cache's hit, the prompt, the merge, the prefix lookup, the prefill of what is not
 * cached, the first token). For comparison, the prefill of as many new tokens alone: random ids after an
 * untimed context of the reused length (engine_prefill on slot 0, no lookup). */
static int run_turn2(struct bench *b, struct phase *p, struct err *e)
{
    static const char Q2[] = "And which colour covers the largest part of it?";
    struct engine *g = b->g;
    if (!engine_tokenizer(g)) return err_set(e, "needs tokenizer.json in the model folder");
    unsigned char *jpg = NULL;
    unsigned long n_jpg = 0;
    if (gen_jpeg(1344, 1344, 7, &jpg, &n_jpg, e)) return -1;
    char q1[sizeof BENCH_QUESTION + 64];
    snprintf(q1, sizeof q1, "%s\n%s", CHAT_IMAGE_MARKER, BENCH_QUESTION);
    double tdec[BENCH_MAX_REPS], tturn[BENCH_MAX_REPS], tpre[BENCH_MAX_REPS], tnew[BENCH_MAX_REPS],
        t1st[BENCH_MAX_REPS];
    int rc = -1, n1 = 0, n2 = 0, reused = 0, cached_img = 0;
    int32_t *ids = NULL;
    struct imgcache *cache = NULL;
    for (int r = -1; r < b->reps; r++) { /* r = -1: warm-up */
        struct turn_result r1 = {0}, r2 = {0};
        double dec1, all1, dec2, all2;
        imgcache_free(cache);
        cache = NULL;
        if (imgcache_init(&cache, 4, e)) goto out;
        engine_kv_forget(g);
        const struct chat_msg m1[] = {{"user", q1}};
        if (turn2_once(b, cache, jpg, n_jpg, m1, 1, BENCH_TURN2_FIRST_NEW, &r1, &dec1, &all1, e)) {
            turn_result_free(&r1);
            goto out;
        }
        const struct chat_msg m2[] = {{"user", q1}, {"assistant", r1.text}, {"user", Q2}};
        const int trc = turn2_once(b, cache, jpg, n_jpg, m2, 3, 1, &r2, &dec2, &all2, e);
        n1 = r1.n_prompt;
        turn_result_free(&r1);
        if (trc) {
            turn_result_free(&r2);
            goto out;
        }
        n2 = r2.n_prompt;
        reused = r2.n_prompt_cached;
        cached_img = r2.image_cached;
        const double turn_ms = 1e3 * r2.t_first, pre_ms = 1e3 * r2.t_prefill;
        turn_result_free(&r2);
        /* the new tokens alone: reused random ids untimed, then n2 - reused timed */
        free(ids);
        if (!(ids = rand_ids(b, n2))) { err_set(e, "out of memory"); goto out; }
        engine_kv_forget(g);
        engine_truncate(g, 0);
        if (reused > 0 && engine_prefill(g, ids, NULL, reused, b->logits, e)) goto out;
        engine_sync(g);
        const double t0 = time_now();
        if (engine_prefill(g, ids + reused, NULL, n2 - reused, b->logits, e)) goto out;
        engine_sync(g);
        const double new_ms = 1e3 * (time_now() - t0);
        engine_truncate(g, 0);
        if (r >= 0) {
            p->t[p->reps] = all2 / 1e3;
            tdec[p->reps] = dec2;
            tturn[p->reps] = turn_ms;
            tpre[p->reps] = pre_ms;
            tnew[p->reps] = new_ms;
            t1st[p->reps++] = all1;
        }
    }
    p->med = median(p->t, p->reps);
    p->value = 1e3 * p->med;
    p->unit = "ms";
    const double new_ms = median(tnew, p->reps);
    x_add(p, "turn1_prompt", n1);
    x_add(p, "n_prompt", n2);
    x_add(p, "reused", reused);
    x_add(p, "prefilled", n2 - reused);
    x_add(p, "image_cached", cached_img);
    x_add(p, "jpeg_header_ms", median(tdec, p->reps));
    x_add(p, "turn_ttft_ms", median(tturn, p->reps));
    x_add(p, "prefill_ms", median(tpre, p->reps));
    x_add(p, "new_alone_ms", new_ms);
    x_add(p, "goal_ms", 20 + new_ms);
    x_add(p, "turn1_ms", median(t1st, p->reps));
    rc = 0;
out:
    imgcache_free(cache);
    free(ids);
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

/* The probe of a concN phase, in one more repetition after the timed ones (so the aggregate figures do not
 * carry its prefills): the time to first token of a request that arrives while L = min(N, slots - 1) streams
 * decode, next to the same kind of request's with the engine idle. First BENCH_PROBES_IDLE probes alone (the
 * idle TTFT: their median), then the L streams; once every stream has its first token, BENCH_PROBES probes
 * one at a time, each admitted when the previous one has its first token and only while all L streams still
 * run. A probe is a prompt of the streams' length (its own filler words: no prefix in common) and one new
 * token; its TTFT is from its admission (sched_add between two steps, the previous step still on the device)
 * to its first token (turn_result.t_first). Adds probe_load (L), probes (how many ran under the load),
 * probe_idle_ms, probe_ms_p50, probe_ms_p99 and probe_x_idle (p50 / idle). Not with a KV pool smaller than
 * slots x ctx (--kv-tokens), where streams wait for blocks rather than decode. */
static int conc_probe(struct bench *b, struct phase *p, struct scheduler *s, struct turn **streams, int N,
                      struct err *e)
{
    enum { NP = BENCH_PROBES_IDLE + BENCH_PROBES };
    struct engine *g = b->g;
    const int L = N < engine_slots(g) ? N : engine_slots(g) - 1;
    struct engine_kv_use kv;
    engine_kv_use(g, &kv);
    if (L < 1) return 0; /* no slot beside the streams */
    if (kv.blocks < engine_slots(g) * kv.slot_blocks) return 0; /* a shared pool (--kv-tokens): streams wait for KV */
    char *content[NP] = {0};
    struct chat_msg m[NP];
    struct turn *pt[NP] = {0};
    struct conc_out po[NP];
    struct conc_out *so = calloc((size_t)L, sizeof *so);
    double idle[BENCH_PROBES_IDLE], load[BENCH_PROBES];
    int rc = -1, k = 0, cur = -1;
    memset(po, 0, sizeof po);
    if (!so) return err_set(e, "out of memory");
    for (int j = 0; j < NP; j++) {
        if (!(content[j] = filler_content(BENCH_CONC_WORDS, 5000 + (uint64_t)j, 0))) { err_set(e, "out of memory"); goto out; }
        m[j] = (struct chat_msg){"user", content[j]};
        struct turn_request rq = {.msgs = &m[j], .n_msgs = 1, .max_new = 1, .ignore_eos = 1};
        sampler_defaults(&rq.sp);
        rq.sp.greedy = true;
        rq.sp.repetition_penalty = 1.0f;
        if (turn_prepare(&pt[j], g, &rq, e)) goto out;
    }
    engine_kv_forget(g);
    for (int j = 0; j < BENCH_PROBES_IDLE; j++) {
        sched_add(s, pt[j], NULL, conc_done, &po[j]);
        while (sched_step(s)) {}
        if (!po[j].done || po[j].rc) { err_set(e, "idle probe %d failed", j); goto out; }
        idle[j] = po[j].r.t_first;
    }
    for (int i = 0; i < L; i++) sched_add(s, streams[i], NULL, conc_done, &so[i]);
    while (sched_prefilling(s) > 0) sched_step(s); /* every stream has its first token: steady decode */
    for (;;) {
        int live = 0;
        for (int i = 0; i < L; i++) live += !so[i].done;
        if (cur < 0 && k < BENCH_PROBES && live == L) {
            cur = BENCH_PROBES_IDLE + k;
            sched_add(s, pt[cur], NULL, conc_done, &po[cur]);
        }
        const int active = sched_step(s);
        if (cur >= 0 && po[cur].done) {
            if (po[cur].rc) { err_set(e, "probe %d failed", k); goto out; }
            load[k++] = po[cur].r.t_first;
            cur = -1;
        }
        if (!active) break;
    }
    for (int i = 0; i < L; i++)
        if (!so[i].done || so[i].rc) { err_set(e, "stream %d failed in the probe's repetition", i); goto out; }
    const double idle_ms = 1e3 * median(idle, BENCH_PROBES_IDLE);
    x_add(p, "probe_load", L);
    x_add(p, "probes", k);
    x_add(p, "probe_idle_ms", idle_ms);
    if (k > 0) {
        qsort(load, (size_t)k, sizeof *load, cmp_double);
        x_add(p, "probe_ms_p50", 1e3 * load[k / 2]);
        x_add(p, "probe_ms_p99", 1e3 * load[(k * 99) / 100 < k ? (k * 99) / 100 : k - 1]);
        x_add(p, "probe_x_idle", 1e3 * load[k / 2] / idle_ms);
    }
    rc = 0;
out:
    if (rc) /* what still runs ends before the turns it uses are freed */
        while (sched_active(s) && sched_step(s)) {}
    for (int j = 0; j < NP; j++) {
        turn_free(pt[j]);
        free(content[j]);
        turn_result_free(&po[j].r);
    }
    for (int i = 0; i < L; i++) turn_result_free(&so[i].r);
    free(so);
    return rc;
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
        struct turn_request rq = {.msgs = &m[i], .n_msgs = 1, .max_new = b->conc_new, .ignore_eos = 1};
        sampler_defaults(&rq.sp);
        rq.sp.greedy = true;
        rq.sp.repetition_penalty = 1.0f;
        if (turn_prepare(&t[i], g, &rq, e)) goto out;
        n_prompt += turn_prompt_tokens(t[i]);
    }
    /* the host time figures below count the timed repetitions only (from these snapshots, taken after the
     * warm-up repetition and the graph warm-up) */
    struct sched_times st0 = {0};
    struct llm_batch_stats bs0 = *engine_batch_stats(g);
    double warm_s = 0;
    int64_t warmed = 0;
    for (int r = -1; r < b->reps; r++) { /* r = -1: warm-up */
        if (r == 0) {
            /* every batch size's graph captured now (the warm-up repetition sized the scratch buffers with
             * its prefill chunks), as serve does at start: the timed repetitions pay no capture */
            const struct llm_batch_stats *bw = engine_batch_stats(g);
            const int64_t c0 = bw->warm_captures;
            const double w0 = bw->t_warm;
            if (!b->no_graph_warm && engine_warm_batch_graphs(g, e)) goto out;
            warmed = bw->warm_captures - c0;
            warm_s = bw->t_warm - w0;
            sched_get_times(s, &st0);
            bs0 = *engine_batch_stats(g);
        }
        engine_kv_forget(g); /* each rep prefills its prompts cold (no prefix reuse of the previous rep's) */
        int64_t pre0, rec0;
        sched_preempt_counts(s, &pre0, &rec0);
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
                x_add(p, "new_tokens", b->conc_new);
                x_add(p, "tokens", (double)gen);
                x_add(p, "stream_tok_s_p50", per[N / 2]);
                x_add(p, "stream_tok_s_min", per[0]);
                x_add(p, "ttft_ms_p50", 1e3 * ttft[N / 2]);
                x_add(p, "ttft_ms_p99", 1e3 * ttft[(N * 99) / 100 < N ? (N * 99) / 100 : N - 1]);
                /* the scheduler's host time per decode step (the timed repetitions): the emit part runs
                 * while the device computes the next step; collect is mostly the wait for the device */
                struct sched_times st;
                sched_get_times(s, &st);
                const int64_t launches = st.launches - st0.launches;
                const double per_step = launches > 0 ? 1e6 / (double)launches : 0;
                x_add(p, "step_us_collect", (st.collect - st0.collect) * per_step);
                x_add(p, "step_us_take", (st.take - st0.take) * per_step);
                /* (the KV blocks of the rows and the prefill chunks: like take and launch, between the
                 * collect and the launch, where the device waits) */
                x_add(p, "step_us_prefill", (st.prefill - st0.prefill) * per_step);
                x_add(p, "step_us_launch", (st.launch - st0.launch) * per_step);
                x_add(p, "step_us_emit", (st.emit - st0.emit) * per_step);
                /* where the launch goes (llm.h llm_batch_stats): the row checks and the one upload, the eager
                 * first steps of a batch size and the graph captures (each per step of the timed
                 * repetitions, with their counts), and the rest (the graph launch); graphs_warmed: the sizes
                 * engine_warm_batch_graphs captured before them, in warm_ms */
                const struct llm_batch_stats *bs = engine_batch_stats(g);
                const double cap = bs->t_capture - bs0.t_capture, eag = bs->t_eager - bs0.t_eager;
                const double upl = bs->t_upload - bs0.t_upload, lau = bs->t_launch - bs0.t_launch;
                x_add(p, "graphs_warmed", (double)warmed);
                x_add(p, "warm_ms", 1e3 * warm_s);
                x_add(p, "graph_captures", (double)(bs->captures - bs0.captures));
                x_add(p, "graph_stale", (double)(bs->stale - bs0.stale));
                x_add(p, "eager_steps", (double)(bs->eager - bs0.eager));
                x_add(p, "step_us_upload", upl * per_step);
                x_add(p, "step_us_eager", eag * per_step);
                x_add(p, "step_us_capture", cap * per_step);
                x_add(p, "step_us_graph", (lau - upl - eag - cap) * per_step);
                /* a KV pool smaller than the streams' tokens (--kv-tokens): the turns preempted in this
                 * repetition and the tokens they prefilled again */
                int64_t pre1, rec1;
                sched_preempt_counts(s, &pre1, &rec1);
                struct engine_kv_use kv;
                engine_kv_use(g, &kv);
                x_add(p, "kv_pool_tokens", (double)kv.blocks * kv.block_tokens);
                x_add(p, "preempted", (double)(pre1 - pre0));
                x_add(p, "recomputed", (double)(rec1 - rec0));
            }
        }
        p->value = (double)gen; /* tokens per repetition, divided below */
    }
    if (conc_probe(b, p, s, t, N, e)) goto out;
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
        else if (!strcmp(t, "ttft") || !strcmp(t, "ttftsync")) { p->kind = PK_TTFT; v = t[4] != 0; }
        else if (!strcmp(t, "seedcase")) p->kind = PK_SEED;
        else if (!strcmp(t, "turn2")) p->kind = PK_TURN2;
        else if (!strncmp(t, "conc", 4) && !cmdu_int("--only concN", t + 4, 1, 4096, &v, &ie)) p->kind = PK_CONC;
        else
            return err_set(e, "--only: unknown phase '%s' (prefillN, decodeN, vision1, vision10, ttft, ttftsync, seedcase, concN, turn2, all)",
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
    "                       ttftsync (ttft with the JPEG decoded whole before the turn starts), seedcase, concN\n"
    "                       (N streams through the scheduler; needs --parallel N), turn2 (a follow-up turn\n"
    "                       about the same 1344x1344 image), or all (default: %s)\n"
    "  --concurrency LIST   e.g. 1,4,16,64: the phases conc1,conc4,... (after --only's, if given)\n"
    "  --conc-new N         concN: tokens each stream generates (default 256)\n"
    "  --no-graph-warm      concN: do not capture the batched step's graphs of every batch size after the\n"
    "                       warm-up repetition (engine_warm_batch_graphs; serve does it at start): the timed\n"
    "                       repetitions then capture the sizes the warm-up did not see, as a cold server does\n"
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
    "                       one, 2..4 session 5's tensor-core one, 8..13 the A-operand kernel's shapes\n"
    "                       (docs/CUDA.md, \"The quantized decode GEMV\")\n"
    "  --prof-step ROWS:N   (developers) the Nth batched decode step of ROWS rows runs between\n"
    "                       cudaProfilerStart and Stop: `ncu --profile-from-start off` sees that step only\n"
    "  --attn-splits S      (developers) the tensor-core decode attention's key splits: S (1..99) where the\n"
    "                       automatic choice takes that kernel, 0 its rule (the default)\n"
    "  --attn-warps W       (developers) the tensor-core decode attention's warps per block: 1, 2, 4 or 8; 0 its\n"
    "                       rule (the default: 4, or 8 where its splits merge in a cluster)\n"
    "  --attn-kernel K      (developers) the decode attention's kernel: auto (the rule, the default), splitk,\n"
    "                       cluster, tc (tensor cores, splits merged through global memory) or tcc (tensor\n"
    "                       cores, the splits one cluster merged in its shared memory), where it can run\n"
    "  --f16mma V           (developers) F16 matmuls of 2..16 tokens (the batched step): 0 cuBLAS (the\n"
    "                       default), 1 the quantized GEMV's tensor-core kernel on F16 weights, 2..5 its\n"
    "                       launch shapes (docs/CUDA.md, \"The quantized decode GEMV\")\n"
    "  --image-batches rows|whole  (developers) an image's vision batches: one per slice row as its rows\n"
    "                       arrive (the default), or all its pieces in one after its last row (as before)\n"
    "  --fuse auto|on|off|swiglu  (developers) one-token decode steps on the fused ops (the RMSNorm inside the\n"
    "                       GEMV that reads it, the residual add and SwiGLU inside the GEMVs that produce them):\n"
    "                       auto (the default: on a GPU the plain ops with SwiGLU in the gate|up GEMV's\n"
    "                       epilogue), on, off (the plain ops, SwiGLU a kernel of its own), swiglu (as auto)\n"
    "  --overlap LIST|off   (developers) decode kernels launched to overlap the previous kernel's tail\n"
    "                       (programmatic dependent launch, sm_90), LIST '+'-joined: all (every decode GEMV),\n"
    "                       quant (the quantized ones), small (the small kernels between the GEMVs: norms,\n"
    "                       RoPE, SwiGLU, attention, argmax), early (with small alone: the decode attention\n"
    "                       loads its first keys of earlier steps before it waits); the default small+early\n"
    "Without --ctx the KV cache is sized for the longest phase (decode4096 needs 4096 + decode steps).\n";

/* --overlap's value: "off" or a '+'-joined list of all, quant, small, early (DEV_OVERLAP_*); -1 when not */
static int overlap_parse(const char *v)
{
    static const struct { const char *name; int flag; } names[] = {
        {"all", DEV_OVERLAP_ALL}, {"quant", DEV_OVERLAP_QUANT}, {"small", DEV_OVERLAP_SMALL}, {"early", DEV_OVERLAP_EARLY}};
    if (!strcmp(v, "off")) return 0;
    int mode = 0;
    for (const char *p = v;;) {
        const char *end = strchr(p, '+');
        const size_t len = end ? (size_t)(end - p) : strlen(p);
        int f = 0;
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            if (strlen(names[i].name) == len && !strncmp(p, names[i].name, len)) f = names[i].flag;
        if (!f || (mode & f)) return -1;
        mode |= f;
        if (!end) return mode;
        p = end + 1;
    }
}

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
    b.conc_new = BENCH_CONC_NEW;
    pthread_mutex_init(&b.mu, NULL);
    struct phase ph[BENCH_MAX_PHASES];
    int n_ph = 0, rc = 1;
    const char *only = DEFAULT_PHASES, *json = NULL, *conc_list = NULL;
    int only_given = 0, qgemv = -1, f16mma = -1, overlap = -1, fuse = -1, whole_batches = 0, attn_splits = -1, attn_kernel = -1, attn_warps = -1;
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
        } else if (!strcmp(f, "--no-graph-warm")) {
            b.no_graph_warm = 1;
        } else if (!strcmp(f, "--prof-step")) {
            if (!(v = cmdu_value(argc, argv, &i, &e))) goto out;
            char *end;
            const long r = strtol(v, &end, 10), nth = *end == ':' ? strtol(end + 1, &end, 10) : -1;
            if (*end || r < 1 || r > 4096 || nth < 1 || nth > 1 << 20) {
                err_set(&e, "--prof-step: expected ROWS:N (1..4096 : 1..1048576), got \"%s\"", v);
                goto out;
            }
            b.prof_rows = (int)r;
            b.prof_nth = (int)nth;
        } else if (!strcmp(f, "--json")) {
            if (!(json = cmdu_value(argc, argv, &i, &e))) goto out;
        } else if (!strcmp(f, "--reps") || !strcmp(f, "--decode-steps") || !strcmp(f, "--seed-prompt") ||
                   !strcmp(f, "--seed-new") || !strcmp(f, "--seed-reps") || !strcmp(f, "--rng-seed") ||
                   !strcmp(f, "--mem-poll") || !strcmp(f, "--conc-new")) {
            const long long hi = !strcmp(f, "--reps") || !strcmp(f, "--seed-reps") ? BENCH_MAX_REPS : 1 << 20;
            const long long lo = !strcmp(f, "--rng-seed") || !strcmp(f, "--mem-poll") ? 0 : 1;
            if (!(v = cmdu_value(argc, argv, &i, &e)) || cmdu_int(f, v, lo, hi, &n, &e)) goto out;
            if (!strcmp(f, "--reps")) b.reps = (int)n;
            else if (!strcmp(f, "--decode-steps")) b.decode_steps = (int)n;
            else if (!strcmp(f, "--seed-prompt")) b.seed_prompt = (int)n;
            else if (!strcmp(f, "--seed-new")) b.seed_new = (int)n;
            else if (!strcmp(f, "--seed-reps")) b.seed_reps = (int)n;
            else if (!strcmp(f, "--rng-seed")) b.seed = (uint64_t)n;
            else if (!strcmp(f, "--conc-new")) b.conc_new = (int)n;
            else b.poll_ms = (int)n;
        } else if (!strcmp(f, "--image-batches")) {
            if (!(v = cmdu_value(argc, argv, &i, &e))) goto out;
            if (!strcmp(v, "rows") || !strcmp(v, "whole")) whole_batches = v[0] == 'w';
            else {
                err_set(&e, "--image-batches: expected rows or whole, got \"%s\"", v);
                goto out;
            }
        } else if (!strcmp(f, "--fuse")) {
            if (!(v = cmdu_value(argc, argv, &i, &e))) goto out;
            if (!strcmp(v, "auto")) fuse = DEV_FUSE_AUTO;
            else if (!strcmp(v, "on")) fuse = DEV_FUSE_ON;
            else if (!strcmp(v, "off")) fuse = DEV_FUSE_OFF;
            else if (!strcmp(v, "swiglu")) fuse = DEV_FUSE_SWIGLU;
            else {
                err_set(&e, "--fuse: expected auto, on, off or swiglu, got \"%s\"", v);
                goto out;
            }
        } else if (!strcmp(f, "--overlap")) {
            if (!(v = cmdu_value(argc, argv, &i, &e))) goto out;
            if ((overlap = overlap_parse(v)) < 0) {
                err_set(&e, "--overlap: expected off or a '+'-joined list of all, quant, small, early, got \"%s\"", v);
                goto out;
            }
        } else if (!strcmp(f, "--qgemv")) {
            if (!(v = cmdu_value(argc, argv, &i, &e)) || cmdu_int(f, v, 0, 255, &n, &e)) goto out;
            if (dev_set_qgemv(device_cpu(), (int)n)) {
                err_set(&e, "--qgemv: %lld is not a kernel (docs/CUDA.md, \"The quantized decode GEMV\")", n);
                goto out;
            }
            qgemv = (int)n;
        } else if (!strcmp(f, "--f16mma")) {
            if (!(v = cmdu_value(argc, argv, &i, &e)) || cmdu_int(f, v, 0, 255, &n, &e)) goto out;
            if (dev_set_f16mma(device_cpu(), (int)n)) {
                err_set(&e, "--f16mma: %lld is not a kernel (docs/CUDA.md, \"The quantized decode GEMV\")", n);
                goto out;
            }
            f16mma = (int)n;
        } else if (!strcmp(f, "--attn-kernel")) {
            static const char *const names[] = {"auto", "splitk", "cluster", "tc", "tcc"};
            if (!(v = cmdu_value(argc, argv, &i, &e))) goto out;
            attn_kernel = -1;
            for (int j = 0; j < 5; j++)
                if (!strcmp(v, names[j])) attn_kernel = j;
            if (attn_kernel < 0) {
                err_set(&e, "--attn-kernel: expected auto, splitk, cluster, tc or tcc, got \"%s\"", v);
                goto out;
            }
        } else if (!strcmp(f, "--attn-warps")) {
            if (!(v = cmdu_value(argc, argv, &i, &e)) || cmdu_int(f, v, 0, 8, &n, &e)) goto out;
            if (n != 0 && n != 1 && n != 2 && n != 4 && n != 8) {
                err_set(&e, "--attn-warps: expected 0, 1, 2, 4 or 8, got %lld", n);
                goto out;
            }
            attn_warps = (int)n;
        } else if (!strcmp(f, "--attn-splits")) {
            if (!(v = cmdu_value(argc, argv, &i, &e)) || cmdu_int(f, v, 0, 99, &n, &e)) goto out;
            attn_splits = (int)n;
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
                    : ph[i].kind == PK_CONC ? BENCH_CONC_PROMPT + b.conc_new + 64
                    : ph[i].kind == PK_TURN2 ? 1536 : 0;
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
    for (int i = 0; f16mma >= 0 && i < bi.n_gpus; i++) dev_set_f16mma(device_cuda(i), f16mma);
    for (int i = 0; overlap >= 0 && i < bi.n_gpus; i++) dev_set_overlap(device_cuda(i), overlap);
    for (int i = 0; fuse >= 0 && i < bi.n_gpus; i++) dev_set_fuse(device_cuda(i), fuse);
    for (int i = 0; attn_splits >= 0 && i < bi.n_gpus; i++) dev_set_attn_splits(device_cuda(i), attn_splits);
    for (int i = 0; attn_warps >= 0 && i < bi.n_gpus; i++) dev_set_attn_warps(device_cuda(i), attn_warps);
    for (int i = 0; attn_kernel >= 0 && i < bi.n_gpus; i++) dev_set_attn_kernel(device_cuda(i), (enum dev_attn)attn_kernel);
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
    engine_set_image_batches(b.g, whole_batches);
    fprintf(stderr, "bench: model loaded in %.1f s\n", engine_load_seconds(b.g));
    if (b.prof_rows) engine_set_profile_step(b.g, b.prof_rows, b.prof_nth);
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
                  : p->kind == PK_SEED ? run_seed(&b, p, &pe) : p->kind == PK_TURN2 ? run_turn2(&b, p, &pe)
                  : run_conc(&b, p, &pe);
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
