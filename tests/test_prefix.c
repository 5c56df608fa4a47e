/* test_prefix.c: prefix reuse of the paged KV cache (issue 14 item 3) on the tiny model, on the CPU.
 * The reference of every check is a cold run: the same turn on a freshly opened engine (nothing cached).
 *  - a short question about an image, twice (its image rows reach past the blocks the lookup keys);
 *  - a follow-up turn about the same image (turn_run, slot 0): the second prompt's first blocks come
 *    from the cache (n_prompt_cached counts them: at least the first turn's whole prompt in full
 *    blocks), and its greedy tokens equal the cold run's;
 *  - two different images behind the same system prompt and text do not share: the second reuses the
 *    system prompt's blocks and none holding image rows; the same image again reuses every full block
 *    but the last token's, and answers as the first time;
 *  - two requests with the same long system prompt through the scheduler (--parallel 2): the second
 *    maps the first's blocks (the lookup runs at its first prefill chunk, after the first's prompt is
 *    in), both answers equal their cold runs;
 *  - eviction: --ctx 128 (8 blocks, one slot): a second, unrelated prompt takes cached blocks back (the
 *    pool counts them); the first prompt then reuses only the blocks that survived (the start of its
 *    chain: the LRU gives back a sequence's last blocks first) and still answers as cold;
 *  - bit for bit, fp32 and fp16 (engine_slot_match / publish directly): 2 or 3 cached blocks and a tail
 *    of 1, 2, 16 or 17 tokens give the logits, and the next greedy steps, of the cold one-call prefill. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cmd_util.h"
#include "imgcache.h"
#include "scheduler.h"
#include "t.h"
#include "tengine.h"
#include "tutil.h"

#define IMG_PATH "tests/fixtures/image/gen200x150_q90_444.jpg"

static struct engine *open_tiny_dt(const char *parallel, int64_t ctx, enum dtype dt)
{
    struct cmdu_engine_opts eo;
    cmdu_engine_opts_init(&eo);
    char *argv[] = {"x", "--parallel", (char *)parallel, NULL};
    struct err e = {{0}};
    int i = 1;
    if (cmdu_engine_flag(&eo.o, &eo.dm, 3, argv, &i, &e) != 1) return NULL;
    eo.o.model_dir = t_tiny_model(1);
    eo.o.device = "cpu";
    eo.o.dtype = dt;
    eo.o.ctx = ctx;
    eo.o.quiet = 1;
    struct engine *x = NULL;
    if (!eo.o.model_dir || engine_open(&x, &eo.o, &e)) fprintf(stderr, "engine_open: %s\n", e.msg);
    return x;
}

static struct engine *open_tiny(const char *parallel, int64_t ctx) { return open_tiny_dt(parallel, ctx, DTYPE_F32); }

static void greedy_request(struct turn_request *rq, const char *system, const struct chat_msg *m, int n,
                           const struct image *im, int n_im, int max_new)
{
    memset(rq, 0, sizeof *rq);
    rq->system = system;
    rq->msgs = m;
    rq->n_msgs = n;
    rq->images = im;
    rq->n_images = n_im;
    rq->max_new = max_new;
    sampler_defaults(&rq->sp);
    rq->sp.greedy = true;
    rq->ignore_eos = 1; /* the tiny model stops early otherwise: the same count of tokens every run */
}

/* turn_run on g; res owned by the caller */
static int run(struct engine *g, const struct turn_request *rq, struct turn_result *res)
{
    struct err e = {{0}};
    int rc = t_chat(g, rq, NULL, NULL, res, &e);
    T_ASSERTF(rc == 0, "turn: %s", e.msg);
    return rc;
}

static int same_tokens(const struct turn_result *a, const struct turn_result *b)
{
    return a->n_gen == b->n_gen && a->n_gen > 0 && !memcmp(a->ids, b->ids, (size_t)a->n_gen * sizeof *a->ids);
}

/* a second image: the fixture with its left half inverted */
static int other_image(const struct image *a, struct image *b)
{
    *b = *a;
    const size_t n = (size_t)a->w * (size_t)a->h * 3;
    if (!(b->rgb = malloc(n))) return -1;
    memcpy(b->rgb, a->rgb, n);
    for (int y = 0; y < a->h; y++)
        for (int x = 0; x < a->w / 2; x++)
            for (int c = 0; c < 3; c++) b->rgb[((size_t)y * a->w + x) * 3 + c] ^= 0xff;
    return 0;
}

static const char *SYSTEM = "You are a careful assistant. Answer in short sentences, name what you see, say when "
                            "you are unsure, and never invent details that the picture or the text does not show.";

static void test_follow_up_and_images(void)
{
    struct image im = {0}, im2 = {0};
    struct err e = {{0}};
    T_ASSERTF(image_load(&im, IMG_PATH, NULL, &e) == 0, "%s", e.msg);
    if (!im.rgb || other_image(&im, &im2)) return;
    struct engine *g = open_tiny("1", 1024), *cold = open_tiny("1", 1024);
    T_ASSERT(g && cold);
    if (!g || !cold) goto out;
    struct turn_result r1, r2, c2, r3, c3, r4, r5;
    struct chat_msg m1[] = {{"user", CHAT_IMAGE_MARKER "\nWhat is in this picture? Describe it."}};
    struct turn_request rq;
    greedy_request(&rq, NULL, m1, 1, &im, 1, 12);
    if (run(g, &rq, &r1)) goto out;
    T_EQ_INT(r1.n_prompt_cached, 0); /* a fresh engine */
    /* a short question: the image rows run past the last full block the lookup keys (ASan: keyed rows
     * stay inside the keyed span); asked twice, the second reuses all but the last partial block */
    {
        struct chat_msg ms[] = {{"user", CHAT_IMAGE_MARKER "\nHi"}};
        struct turn_result s1, s2;
        greedy_request(&rq, NULL, ms, 1, &im, 1, 4);
        if (run(g, &rq, &s1) || run(g, &rq, &s2)) goto out;
        T_ASSERT(s1.n_prompt > 96 && s1.n_prompt < 128); /* 96 image rows end in the last, partial block */
        T_EQ_INT(s2.n_prompt_cached, (s2.n_prompt - 1) / KV_BLOCK * KV_BLOCK);
        T_ASSERT(same_tokens(&s1, &s2));
        turn_result_free(&s1), turn_result_free(&s2);
    }
    /* the follow-up repeats the first turn and its answer */
    struct chat_msg m2[] = {m1[0], {"assistant", r1.text}, {"user", "And what colour is it?"}};
    greedy_request(&rq, NULL, m2, 3, &im, 1, 12);
    if (run(g, &rq, &r2) || run(cold, &rq, &c2)) goto out;
    printf("  follow-up: %d of %d prompt tokens reused (first turn's prompt: %d)\n", r2.n_prompt_cached,
           r2.n_prompt, r1.n_prompt);
    T_EQ_INT(c2.n_prompt_cached, 0);
    T_ASSERT(r2.n_prompt_cached >= r1.n_prompt / KV_BLOCK * KV_BLOCK);
    T_ASSERT(r2.n_prompt_cached % KV_BLOCK == 0 && r2.n_prompt_cached < r2.n_prompt);
    T_ASSERT(same_tokens(&r2, &c2));
    T_EQ_STR(r2.text, c2.text);
    /* with a system prompt before the image: first image (cached), then another image, then the first again */
    greedy_request(&rq, SYSTEM, m1, 1, &im, 1, 12);
    if (run(g, &rq, &r4)) goto out;
    /* another image, the same text: the system prompt's blocks are shared, no block holding image rows is */
    greedy_request(&rq, SYSTEM, m1, 1, &im2, 1, 12);
    if (run(g, &rq, &r3) || run(cold, &rq, &c3)) goto out;
    T_ASSERT(same_tokens(&r3, &c3));
    T_ASSERT(!same_tokens(&r3, &r4) || strcmp(r3.text, r4.text)); /* the images do make a difference */
    /* the first image again: every full block of its prompt but the last token's */
    greedy_request(&rq, SYSTEM, m1, 1, &im, 1, 12);
    if (run(g, &rq, &r5)) goto out;
    T_EQ_INT(r5.n_prompt_cached, (r5.n_prompt - 1) / KV_BLOCK * KV_BLOCK);
    T_ASSERT(same_tokens(&r5, &r4));
    /* the second image's turn shared the system prompt (over 32 tokens) but none of the query_num image
     * rows' blocks (query_num / 16 - 1 full blocks at least): were the images confused, it would have
     * shared as much as r5 */
    const int qn = engine_config(g)->query_num;
    printf("  images: same image %d of %d reused, other image %d (query_num %d)\n", r5.n_prompt_cached, r5.n_prompt,
           r3.n_prompt_cached, qn);
    T_ASSERT(r3.n_prompt_cached >= 32);
    T_ASSERT(r3.n_prompt_cached <= r5.n_prompt_cached - (qn / KV_BLOCK - 1) * KV_BLOCK);
    struct engine_kv_use u;
    engine_kv_use(g, &u);
    T_ASSERT(u.hit_blocks > 0 && u.block_tokens == KV_BLOCK && u.used + u.cached <= u.blocks);
    turn_result_free(&r1), turn_result_free(&r2), turn_result_free(&c2);
    turn_result_free(&r3), turn_result_free(&c3), turn_result_free(&r4), turn_result_free(&r5);
out:
    engine_close(g);
    engine_close(cold);
    image_free(&im);
    image_free(&im2);
}

struct done {
    int n, rc;
    struct turn_result r;
};

static void on_done(void *ctx, int rc, struct turn_result *r, int input_error, const struct err *e)
{
    struct done *d = ctx;
    d->n++;
    d->rc = rc;
    d->r = *r;
    memset(r, 0, sizeof *r);
    if (rc) fprintf(stderr, "turn failed: %s\n", e ? e->msg : "");
}

static void test_shared_system_prompt(void)
{
    struct engine *g = open_tiny("2", 512), *cold = open_tiny("1", 512);
    T_ASSERT(g && cold);
    if (!g || !cold) goto out;
    struct chat_msg ma[] = {{"user", "Hello, who are you?"}}, mb[] = {{"user", "Count to five."}};
    struct turn_request ra, rb;
    greedy_request(&ra, SYSTEM, ma, 1, NULL, 0, 10);
    greedy_request(&rb, SYSTEM, mb, 1, NULL, 0, 10);
    struct turn *ta = NULL, *tb = NULL;
    struct err e = {{0}};
    T_ASSERT(turn_prepare(&ta, g, &ra, &e) == 0 && turn_prepare(&tb, g, &rb, &e) == 0);
    struct scheduler *s = NULL;
    T_ASSERT(sched_init(&s, g, &e) == 0);
    if (!ta || !tb || !s) goto done;
    struct done da = {0}, db = {0};
    /* both admitted before any step: b looks its prefix up at its first chunk, after a's prompt is in */
    T_EQ_INT(sched_add(s, ta, NULL, on_done, &da), 0);
    T_EQ_INT(sched_add(s, tb, NULL, on_done, &db), 0);
    for (int k = 0; k < 1000 && sched_step(s) > 0; k++) {}
    T_ASSERT(da.n == 1 && db.n == 1 && da.rc == 0 && db.rc == 0);
    printf("  shared system prompt: a %d/%d, b %d/%d prompt tokens reused\n", da.r.n_prompt_cached, da.r.n_prompt,
           db.r.n_prompt_cached, db.r.n_prompt);
    T_EQ_INT(da.r.n_prompt_cached, 0);
    T_ASSERT(db.r.n_prompt_cached >= 32); /* the system prompt alone is over 32 tokens */
    struct turn_result ca, cb;
    if (!run(cold, &ra, &ca) && !run(cold, &rb, &cb)) {
        T_ASSERT(same_tokens(&da.r, &ca));
        T_ASSERT(same_tokens(&db.r, &cb));
        turn_result_free(&ca), turn_result_free(&cb);
    }
    struct engine_kv_use u;
    engine_kv_use(g, &u);
    T_EQ_INT(u.used, 0); /* finished turns let their slots' blocks go; the published ones stay cached */
    T_ASSERT(u.cached > 0);
    turn_result_free(&da.r), turn_result_free(&db.r);
done:
    sched_free(s);
    turn_free(ta);
    turn_free(tb);
out:
    engine_close(g);
    engine_close(cold);
}

static void test_eviction(void)
{
    struct engine *g = open_tiny("1", 128), *cold = open_tiny("1", 128);
    T_ASSERT(g && cold);
    if (!g || !cold) goto out;
    /* p1: about 90 tokens; p2: unrelated, about 55 */
    struct chat_msg m1[] = {{"user", "Tell me about the sea, the ships on it, the sailors who steer them, the storms "
                                     "that come in autumn, the harbour lights, the gulls over the piers, the smell of "
                                     "salt and tar and fish at dawn, and the songs they sing at night. Tell me also about the "
                                     "lighthouse keeper and his old dog, the fog horn in winter, and the boats."}};
    struct chat_msg m2[] = {{"user", "List seven colours of the rainbow in order, then name three fruits, four "
                                     "animals that live in the forest, two rivers in Europe, one mountain in Asia, "
                                     "the days of the week and the months of the year."}};
    struct turn_request r1q, r2q;
    greedy_request(&r1q, NULL, m1, 1, NULL, 0, 8);
    greedy_request(&r2q, NULL, m2, 1, NULL, 0, 8);
    struct turn_result a, b, a2, ca;
    if (run(g, &r1q, &a)) goto out;
    struct engine_kv_use u0, u1;
    engine_kv_use(g, &u0);
    T_EQ_INT(u0.blocks, 8);
    if (run(g, &r2q, &b)) goto out;
    engine_kv_use(g, &u1);
    const int64_t held1 = a.n_prompt + a.n_gen - 1, full1 = held1 / KV_BLOCK;  /* blocks a published */
    const int64_t need2 = (b.n_prompt + b.n_gen - 1 + KV_BLOCK - 1) / KV_BLOCK; /* blocks b took */
    const int64_t free_before = 8 - full1;                                     /* a's partial block included */
    const int64_t evicted = need2 > free_before ? need2 - free_before : 0;
    printf("  eviction: a held %lld tokens (%lld full blocks), b took %lld blocks: %lld evicted (pool says %lld)\n",
           (long long)held1, (long long)full1, (long long)need2, (long long)evicted, (long long)u1.evicted);
    T_ASSERT(evicted > 0); /* the prompts are long enough that b needs some of a's blocks */
    T_EQ_INT(u1.evicted - u0.evicted, evicted);
    if (run(g, &r1q, &a2) || run(cold, &r1q, &ca)) goto out;
    int64_t expect = full1 - evicted, cap = (a2.n_prompt - 1) / KV_BLOCK;
    if (expect > cap) expect = cap;
    if (expect < 0) expect = 0;
    T_EQ_INT(a2.n_prompt_cached, expect * KV_BLOCK);
    T_ASSERT(same_tokens(&a2, &ca) && same_tokens(&a2, &a));
    turn_result_free(&a), turn_result_free(&b), turn_result_free(&a2), turn_result_free(&ca);
out:
    engine_close(g);
    engine_close(cold);
}

/* Prefix reuse at the slot level, bit for bit: a prompt of c full blocks + t more tokens (t = 1, 2 and 17:
 * not block-aligned; 16: block-aligned) whose c blocks come from the cache gives the logits of the
 * same prompt prefilled cold in one call, bit for bit, and so do the next greedy steps, in fp32 and fp16.
 * The cached blocks come either from that cold run itself (published after it) or from an earlier
 * request that prefilled only the prefix (published, then let go). On the CPU every row is computed the
 * same way whatever rows share its call, so the tail alone rounds like the whole prompt. */
#define REUSE_STEPS 3
static void test_reuse_bitwise(void)
{
    static const int tails[4] = {1, 2, 16, 17};
    for (int dti = 0; dti < 2; dti++) {
        const enum dtype dt = dti ? DTYPE_F16 : DTYPE_F32;
        struct engine *g = open_tiny_dt("2", 256, dt);
        T_ASSERT(g != NULL);
        if (!g) return;
        const int V = engine_config(g)->vocab_size;
        float *cold = malloc((size_t)(REUSE_STEPS + 1) * V * sizeof(float)), *reu = malloc((size_t)V * sizeof(float));
        CHECK(cold && reu);
        struct err e = {{0}};
        int cases = 0;
        for (int ci = 0; ci < 8; ci++) {
            const int c = 2 + ci % 2, t = tails[ci / 2], L = c * KV_BLOCK + t, from_prefix = ci % 2;
            int32_t ids[4 * KV_BLOCK + 17 + REUSE_STEPS];
            uint64_t keys[4], r = 0x9e3779b97f4a7c15ULL * (uint64_t)(ci + 1 + 100 * dti);
            for (int i = 0; i < L; i++) {
                r = r * 6364136223846793005ULL + 1442695040888963407ULL;
                ids[i] = (int32_t)((r >> 33) % (uint64_t)V);
            }
            for (int b = 0; b < c; b++) keys[b] = r ^ (0x100000001b3ULL * (uint64_t)(b + 1)); /* this prompt's */
            engine_slot_truncate(g, 0, 0);
            if (from_prefix) { /* an earlier request of just the prefix publishes it and lets it go */
                T_ASSERTF(engine_slot_prefill(g, 0, ids, NULL, (int64_t)c * KV_BLOCK, NULL, &e) == 0, "%s", e.msg);
                engine_slot_publish(g, 0, keys, c);
                engine_slot_truncate(g, 0, 0);
            }
            /* cold: the whole prompt in one call, then greedy steps */
            T_ASSERTF(engine_slot_prefill(g, 0, ids, NULL, L, cold, &e) == 0, "%s", e.msg);
            for (int s = 0; s < REUSE_STEPS; s++) {
                const float *lg = cold + (size_t)s * V;
                int32_t best = 0;
                for (int j = 1; j < V; j++)
                    if (lg[j] > lg[best]) best = j;
                ids[L + s] = best;
                T_ASSERTF(engine_slot_prefill(g, 0, &best, NULL, 1, cold + (size_t)(s + 1) * V, &e) == 0, "%s", e.msg);
            }
            if (!from_prefix) engine_slot_publish(g, 0, keys, c);
            /* reused: slot 1 maps the c blocks and prefills only the t last tokens */
            T_EQ_INT(engine_slot_match(g, 1, keys, c), (int64_t)c * KV_BLOCK);
            T_ASSERTF(engine_slot_prefill(g, 1, ids + c * KV_BLOCK, NULL, t, reu, &e) == 0, "%s", e.msg);
            int same = !memcmp(reu, cold, (size_t)V * sizeof(float));
            for (int s = 0; s < REUSE_STEPS && same; s++) {
                T_ASSERTF(engine_slot_prefill(g, 1, &ids[L + s], NULL, 1, reu, &e) == 0, "%s", e.msg);
                same = !memcmp(reu, cold + (size_t)(s + 1) * V, (size_t)V * sizeof(float));
            }
            T_ASSERTF(same, "%s: %d cached blocks + %d tokens (%s): logits differ from the cold prefill", dtype_name(dt),
                      c, t, from_prefix ? "prefix published by an earlier request" : "published by the cold run");
            cases += same;
            engine_slot_truncate(g, 1, 0);
        }
        printf("  %s: %d of 8 reused prefills equal their cold run bit for bit (%d steps each)\n", dtype_name(dt), cases,
               REUSE_STEPS);
        free(cold);
        free(reu);
        engine_close(g);
    }
}

/* The image list's key (imgcache_key_init), whose hash names image rows in the KV blocks' keys: the same
 * content gives the same hash with or without a kept copy; one byte changed anywhere (the lanes' word and
 * block edges, the tail, the headers' pixel size) gives another; the order of the list and the cut
 * between images count; the kept copy is the headers and pixels in order. */
static void test_image_key_hash(void)
{
    enum { W = 37, H = 29, N = W * H * 3 };
    uint8_t *pa = malloc(N), *pb = malloc(N);
    T_ASSERT(pa && pb);
    for (int i = 0; i < N; i++) pa[i] = (uint8_t)(i * 7 + 3), pb[i] = (uint8_t)(i * 13 + 1);
    struct image im[2] = {{.w = W, .h = H, .rgb = pa}, {.w = W, .h = H, .rgb = pb}};
    struct imgcache_key k0, k1;
    T_EQ_INT(imgcache_key_init(&k0, im, 2, NULL, NULL, 1), 0);
    T_EQ_INT(imgcache_key_init(&k1, im, 2, NULL, NULL, 0), 0);
    T_ASSERT(k0.hash == k1.hash && k0.len == k1.len && k1.bytes == NULL && k0.len == 2 * (24 + (size_t)N));
    T_ASSERT(!memcmp(k0.bytes + 24, pa, N) && !memcmp(k0.bytes + 48 + N, pb, N));
    imgcache_key_free(&k1);
    /* one byte of either image: 0, the first lane's word edge, the 32-byte block edges, the middle, the end */
    const int at[] = {0, 7, 8, 31, 32, 33, N / 2, N - 33, N - 2, N - 1};
    uint64_t seen[2 * sizeof at / sizeof at[0] + 4];
    int ns = 0;
    for (int img = 0; img < 2; img++)
        for (size_t j = 0; j < sizeof at / sizeof at[0]; j++) {
            uint8_t *p = img ? pb : pa;
            p[at[j]] ^= 0x10;
            T_EQ_INT(imgcache_key_init(&k1, im, 2, NULL, NULL, 0), 0);
            p[at[j]] ^= 0x10;
            T_ASSERTF(k1.hash != k0.hash, "image %d byte %d changed, same hash", img, at[j]);
            seen[ns++] = k1.hash;
        }
    struct image sw[2] = {im[1], im[0]}; /* the order of the list */
    T_EQ_INT(imgcache_key_init(&k1, sw, 2, NULL, NULL, 0), 0);
    seen[ns++] = k1.hash;
    struct image tall = {.w = H, .h = W, .rgb = pa}; /* another pixel size over the same bytes */
    T_EQ_INT(imgcache_key_init(&k1, &tall, 1, NULL, NULL, 0), 0);
    seen[ns++] = k1.hash;
    struct image one = {.w = W, .h = H, .rgb = pa};
    struct imgcache_key k2;
    T_EQ_INT(imgcache_key_init(&k2, &one, 1, NULL, NULL, 0), 0);
    seen[ns++] = k2.hash;
    im[0].h = H - 1; /* the cut between the images: the first one shorter */
    T_EQ_INT(imgcache_key_init(&k2, im, 2, NULL, NULL, 0), 0);
    im[0].h = H;
    seen[ns++] = k2.hash;
    for (int i = 0; i < ns; i++) {
        T_ASSERTF(seen[i] != k0.hash, "key %d equals the original's", i);
        for (int j = 0; j < i; j++) T_ASSERTF(seen[i] != seen[j], "keys %d and %d share a hash", i, j);
    }
    /* encoded bytes instead of pixels: the key holds those (after the headers), not the pixels */
    const uint8_t *enc[2] = {pa, pb};
    const size_t len[2] = {100, 1000};
    T_EQ_INT(imgcache_key_init(&k1, im, 2, enc, len, 1), 0);
    T_ASSERT(k1.len == 2 * 24 + 1100 && k1.hash != k0.hash && !memcmp(k1.bytes + 24, pa, 100));
    imgcache_key_free(&k1);
    imgcache_key_free(&k0);
    free(pa);
    free(pb);
}

int main(void)
{
    T_RUN(test_image_key_hash);
    T_RUN(test_follow_up_and_images);
    T_RUN(test_shared_system_prompt);
    T_RUN(test_eviction);
    T_RUN(test_reuse_bitwise);
    return t_main_end("test_prefix");
}
