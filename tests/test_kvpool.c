/* test_kvpool.c: the paged KV cache on the CPU (issue 14).
 *  - the allocator (kvpool.h): blocks on demand, tables, rows, release on truncate, an exhausted pool
 *    refused with the table unchanged, reuse of released blocks, dirty flags;
 *  - prefix reuse: chained keys, publish / match of the longest published run, reference counts, a
 *    cached block kept after its sequence ends and evicted (least recently released first) only when
 *    the pool needs it, a shared partial block copied on write by truncate (a private one unpublished),
 *    the hash index through thousands of match / publish / evict rounds;
 *  - the paged ops' CPU twins against the contiguous reference, bit for bit, with shuffled tables:
 *    op_attention_pos, op_attention_rows, op_rope_qk's store, op_kv_pages both ways. */
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "kvpool.h"
#include "t.h"

static struct kvpool *pool(int n_blocks, int bs, int n_seqs, int max_blocks)
{
    struct kvpool *p = NULL;
    struct err e = {{0}};
    T_ASSERTF(kvpool_init(&p, n_blocks, bs, n_seqs, max_blocks, &e) == 0, "%s", e.msg);
    return p;
}

static void test_alloc(void)
{
    struct kvpool *p = pool(8, 4, 3, 4);
    struct err e = {{0}};
    struct kvpool_stats st;
    int n;
    T_ASSERT(kvpool_reserve(p, 0, 5, &e) == 0); /* 2 blocks */
    T_ASSERT(kvpool_dirty(p, 0));
    kvpool_clean(p, 0);
    T_ASSERT(kvpool_reserve(p, 0, 8, &e) == 0 && !kvpool_dirty(p, 0)); /* still 2 blocks: nothing new */
    T_ASSERT(kvpool_reserve(p, 1, 16, &e) == 0);                      /* 4 blocks */
    const int32_t *t0 = kvpool_table(p, 0, &n);
    T_EQ_INT(n, 2);
    T_EQ_INT(t0[0], 0);
    T_EQ_INT(t0[1], 1);
    T_EQ_INT(kvpool_row(p, 0, 5), 1 * 4 + 1);
    const int32_t *t1 = kvpool_table(p, 1, &n);
    T_EQ_INT(n, 4);
    T_EQ_INT(kvpool_row(p, 1, 13), t1[3] * 4 + 1);
    kvpool_get_stats(p, &st);
    T_EQ_INT(st.used, 6);
    T_EQ_INT(st.free, 2);
    /* what a reserve would take, and what there is: seq 2 needs 3 blocks for 12 tokens, 2 are free */
    T_EQ_INT(kvpool_missing(p, 2, 12), 3);
    T_EQ_INT(kvpool_missing(p, 0, 8), 0);
    T_EQ_INT(kvpool_missing(p, 0, 9), 1);
    T_EQ_INT(kvpool_available(p), 2);
    /* over a sequence's table, and an exhausted pool: refused, nothing taken */
    T_ASSERT(kvpool_reserve(p, 2, 17, &e) == -1 && strstr(e.msg, "exceed"));
    T_ASSERT(kvpool_reserve(p, 2, 12, &e) == -1 && strstr(e.msg, "KV pool exhausted"));
    kvpool_table(p, 2, &n);
    T_EQ_INT(n, 0);
    kvpool_get_stats(p, &st);
    T_EQ_INT(st.free, 2);
    /* truncate gives blocks back; the next reserve takes them again */
    int32_t f, to;
    T_EQ_INT(kvpool_truncate(p, 1, 5, &f, &to, &e), 0);
    kvpool_table(p, 1, &n);
    T_EQ_INT(n, 2);
    T_ASSERT(kvpool_dirty(p, 1));
    T_ASSERT(kvpool_reserve(p, 2, 12, &e) == 0);
    kvpool_get_stats(p, &st);
    T_EQ_INT(st.used, 7);
    T_EQ_INT(st.used + st.cached + st.free, st.total);
    T_EQ_INT(kvpool_truncate(p, 2, 0, &f, &to, &e), 0);
    kvpool_table(p, 2, &n);
    T_EQ_INT(n, 0);
    kvpool_free(p);
    struct kvpool *q = NULL;
    T_ASSERT(kvpool_init(&q, 8, 3, 1, 1, &e) == -1); /* block size not a power of 2 */
}

/* keys of n blocks of bs tokens, token i of the prompt having content c[i] */
static void keys_of(const uint64_t *c, int n, int bs, uint64_t *keys)
{
    uint64_t prev = 0;
    for (int b = 0; b < n; b++) keys[b] = prev = kvpool_hash(prev, c + (size_t)b * bs, bs);
}

static void test_prefix(void)
{
    enum { BS = 4 };
    struct kvpool *p = pool(10, BS, 3, 6);
    struct err e = {{0}};
    struct kvpool_stats st;
    uint64_t a[24], b[24], ka[6], kb[6];
    for (int i = 0; i < 24; i++) a[i] = b[i] = 1000 + (uint64_t)i;
    b[9] = 77; /* b shares a's first 2 blocks, then differs */
    keys_of(a, 6, BS, ka);
    keys_of(b, 6, BS, kb);
    T_ASSERT(ka[0] == kb[0] && ka[1] == kb[1] && ka[2] != kb[2]);
    T_ASSERT(ka[3] != kb[3]); /* chained: the rest differs too though those tokens are equal */
    /* sequence 0 computes 14 tokens of a (3 full blocks) and publishes them */
    T_ASSERT(kvpool_reserve(p, 0, 14, &e) == 0);
    kvpool_publish(p, 0, ka, 3);
    int n;
    const int32_t *t0 = kvpool_table(p, 0, &n);
    int32_t a0 = t0[0], a1 = t0[1], a2 = t0[2];
    /* sequence 1 with b: its first 2 blocks are a's, shared */
    T_EQ_INT(kvpool_match(p, 1, kb, 6), 2);
    const int32_t *t1 = kvpool_table(p, 1, &n);
    T_EQ_INT(n, 2);
    T_EQ_INT(t1[0], a0);
    T_EQ_INT(t1[1], a1);
    T_ASSERT(kvpool_dirty(p, 1));
    kvpool_get_stats(p, &st);
    T_EQ_INT(st.used, 4);
    T_EQ_INT(st.hit_blocks, 2);
    /* sequence 0 ends: its published blocks stay cached (a1, a0 still used by sequence 1) */
    int32_t f = -1, to = -1;
    T_EQ_INT(kvpool_truncate(p, 0, 0, &f, &to, &e), 0);
    kvpool_get_stats(p, &st);
    T_EQ_INT(st.used, 2);   /* a0, a1 through sequence 1 */
    T_EQ_INT(st.cached, 1); /* a2 */
    T_EQ_INT(kvpool_available(p), 8); /* 7 free + a2, which a reserve may evict */
    /* sequence 2 with a again: all 3 published blocks come back */
    T_EQ_INT(kvpool_match(p, 2, ka, 6), 3);
    const int32_t *t2 = kvpool_table(p, 2, &n);
    T_ASSERT(n == 3 && t2[0] == a0 && t2[1] == a1 && t2[2] == a2);
    kvpool_get_stats(p, &st);
    T_EQ_INT(st.cached, 0);
    /* a partial truncate into a shared published block: copy on write */
    T_EQ_INT(kvpool_truncate(p, 2, 6, &f, &to, &e), 1);
    T_EQ_INT(f, a1);
    t2 = kvpool_table(p, 2, &n);
    T_ASSERT(n == 2 && t2[0] == a0 && t2[1] == to && to != a1);
    /* ... and into a published block it alone holds: unpublished in place, so a match stops before it */
    T_EQ_INT(kvpool_truncate(p, 1, 0, &f, &to, &e), 0); /* a1 cached, a0 now held by sequence 2 alone */
    f = to = -1;
    T_EQ_INT(kvpool_truncate(p, 2, 2, &f, &to, &e), 0);
    T_ASSERT(f == -1 && to == -1);
    t2 = kvpool_table(p, 2, &n);
    T_ASSERT(n == 1 && t2[0] == a0);
    T_EQ_INT(kvpool_match(p, 1, ka, 6), 0);
    kvpool_free(p);

    /* eviction: a small pool, the least recently released cached block goes first, and only when needed */
    p = pool(4, BS, 2, 4);
    T_ASSERT(kvpool_reserve(p, 0, 16, &e) == 0);
    kvpool_publish(p, 0, ka, 4);
    const int32_t *tt = kvpool_table(p, 0, &n);
    int32_t blk[4];
    memcpy(blk, tt, sizeof blk);
    T_EQ_INT(kvpool_truncate(p, 0, 8, &f, &to, &e), 0); /* releases blk[3], then blk[2] */
    T_EQ_INT(kvpool_truncate(p, 0, 0, &f, &to, &e), 0); /* then blk[1], blk[0] */
    kvpool_get_stats(p, &st);
    T_EQ_INT(st.cached, 4);
    T_EQ_INT(st.free, 0);
    /* a new sequence needing 1 block evicts the first released: blk[3] */
    T_ASSERT(kvpool_reserve(p, 1, 1, &e) == 0);
    const int32_t *t1b = kvpool_table(p, 1, &n);
    T_EQ_INT(t1b[0], blk[3]);
    kvpool_get_stats(p, &st);
    T_EQ_INT(st.evicted, 1);
    T_EQ_INT(st.cached, 3);
    /* the chain is intact up to the evicted block: 3 blocks match */
    T_EQ_INT(kvpool_match(p, 0, ka, 4), 3);
    T_EQ_INT(kvpool_truncate(p, 0, 0, &f, &to, &e), 0);
    /* released again in the order blk[2], blk[1], blk[0]: the next block taken is blk[2] */
    T_ASSERT(kvpool_reserve(p, 1, 8, &e) == 0);
    t1b = kvpool_table(p, 1, &n);
    T_EQ_INT(t1b[1], blk[2]);
    T_EQ_INT(kvpool_match(p, 0, ka, 4), 2);
    /* forget: nothing is found any more, the cached block becomes free */
    T_EQ_INT(kvpool_truncate(p, 0, 0, &f, &to, &e), 0);
    kvpool_get_stats(p, &st);
    T_EQ_INT(st.cached, 2);
    kvpool_forget(p);
    kvpool_get_stats(p, &st);
    T_EQ_INT(st.cached, 0);
    T_EQ_INT(st.free, 2);
    T_EQ_INT(kvpool_match(p, 0, ka, 4), 0);
    kvpool_free(p);
}

/* many rounds of match / publish / release / evict over 4 sequences sharing a pool exactly their size,
 * prompts from 5 families (so prefixes repeat and blocks are evicted): a key just published is always
 * found again, and a match maps the same blocks the publishing sequence had matched; the counts add up */
static void test_index_model(void)
{
    enum { NB = 64, BS = 2, NS = 4, MB = 16 };
    struct kvpool *p = pool(NB, BS, NS, MB);
    struct err e = {{0}};
    uint64_t rng = 12345;
    int bad = 0;
    for (int round = 0; round < 3000 && !bad; round++) {
        rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
        const int s = (int)((rng >> 33) % NS), len = 1 + (int)((rng >> 40) % (MB * BS));
        /* prompts from a small family so that prefixes repeat: token i = (family * 100 + i) */
        const uint64_t fam = (rng >> 50) % 5;
        uint64_t c[MB * BS], keys[MB];
        for (int i = 0; i < MB * BS; i++) c[i] = fam * 100 + (uint64_t)i;
        keys_of(c, MB, BS, keys);
        int32_t f, to;
        T_ASSERT(kvpool_truncate(p, s, 0, &f, &to, &e) == 0);
        const int m = kvpool_match(p, s, keys, len / BS);
        if (kvpool_reserve(p, s, len, &e)) continue; /* the pool is shared by 4 sequences of up to 32 */
        int n;
        const int32_t *t = kvpool_table(p, s, &n);
        kvpool_publish(p, s, keys, len / BS);
        /* a second match on an empty sequence must find at least what s just published, and the same blocks */
        const int s2 = (s + 1) % NS;
        T_ASSERT(kvpool_truncate(p, s2, 0, &f, &to, &e) == 0);
        const int m2 = kvpool_match(p, s2, keys, len / BS);
        int n2;
        const int32_t *t2 = kvpool_table(p, s2, &n2);
        if (m2 < len / BS) bad = 1;
        for (int i = 0; i < m && i < m2; i++)
            if (t2[i] != t[i]) bad = 1;
        struct kvpool_stats st;
        kvpool_get_stats(p, &st);
        if (st.used + st.cached + st.free != st.total || st.used < 0) bad = 1;
    }
    T_ASSERT(!bad);
    kvpool_free(p);
}

/* ---- the paged ops' CPU twins ---- */

static uint64_t g_rng = 0x1234567;
static float frand(void)
{
    g_rng = g_rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(g_rng >> 40) / (double)(1ULL << 23) - 1.0);
}

static struct tensor rnd(enum dtype dt, int64_t a, int64_t b, int64_t c, float amp)
{
    struct tensor t = tensor_make(dt, device_cpu(), NULL, 3, a, b, c);
    t.data = malloc(tensor_nbytes(&t));
    CHECK(t.data);
    float *f = malloc((size_t)tensor_numel(&t) * sizeof *f);
    CHECK(f);
    for (int64_t i = 0; i < tensor_numel(&t); i++) f[i] = amp * frand();
    convert_from_f32(t.data, dt, f, tensor_numel(&t));
    free(f);
    return t;
}

/* a shuffled table of mb distinct blocks out of nb */
static void shuffled(int32_t *tab, int mb, int nb)
{
    int32_t *perm = malloc((size_t)nb * sizeof *perm);
    CHECK(perm);
    for (int i = 0; i < nb; i++) perm[i] = i;
    for (int i = nb - 1; i > 0; i--) {
        g_rng = g_rng * 6364136223846793005ULL + 1442695040888963407ULL;
        int j = (int)((g_rng >> 33) % (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    memcpy(tab, perm, (size_t)mb * sizeof *tab);
    free(perm);
}

/* the contiguous copy of a sequence's first n tokens (the reference layout) */
static struct tensor gather_ref(const struct tensor *pool, const int32_t *tab, int64_t n)
{
    struct tensor t = tensor_make(pool->dtype, device_cpu(), NULL, 3, n, pool->shape[1], pool->shape[2]);
    t.data = malloc(tensor_nbytes(&t));
    CHECK(t.data);
    const size_t rb = tensor_nbytes(&t) / (size_t)n;
    for (int64_t j = 0; j < n; j++)
        memcpy((char *)t.data + (size_t)j * rb,
               (const char *)pool->data + ((size_t)tab[j / KV_BLOCK] * KV_BLOCK + (size_t)(j % KV_BLOCK)) * rb, rb);
    return t;
}

static void test_paged_ops(void)
{
    const int64_t H = 8, Hkv = 2, hd = 32, NB = 40, T = NB * KV_BLOCK;
    const float scale = 1.0f / sqrtf((float)hd);
    for (int dt_i = 0; dt_i < 2; dt_i++) {
        const enum dtype dt = dt_i ? DTYPE_F16 : DTYPE_F32;
        struct tensor k = rnd(dt, T, Hkv, hd, 2.0f), v = rnd(dt, T, Hkv, hd, 1.0f);
        /* op_attention_pos through a table: 3 rows at positions 97..99 */
        int32_t tabd[8];
        shuffled(tabd, 8, (int)NB);
        struct tensor tab = tensor_make(DTYPE_I32, device_cpu(), tabd, 1, (int64_t)8);
        int32_t pd[3] = {97, 98, 99};
        struct tensor pos = tensor_make(DTYPE_I32, device_cpu(), pd, 1, (int64_t)3);
        struct tensor q = rnd(dt, 3, H, hd, 2.0f), o1 = rnd(dt, 3, H, hd, 1.0f), o2 = rnd(dt, 3, H, hd, 1.0f);
        op_attention_pos(&o1, &q, &k, &v, &pos, &tab, scale, ATTN_CAUSAL);
        struct tensor kg = gather_ref(&k, tabd, 100), vg = gather_ref(&v, tabd, 100);
        op_attention(&o2, &q, &kg, &vg, 97, scale, ATTN_CAUSAL);
        T_ASSERT(memcmp(o1.data, o2.data, tensor_nbytes(&o1)) == 0);
        /* the identity table is the contiguous cache */
        int32_t idd[8] = {0, 1, 2, 3, 4, 5, 6, 7};
        struct tensor id = tensor_make(DTYPE_I32, device_cpu(), idd, 1, (int64_t)8);
        op_attention_pos(&o1, &q, &k, &v, &pos, &id, scale, ATTN_CAUSAL);
        op_attention_pos(&o2, &q, &k, &v, &pos, NULL, scale, ATTN_CAUSAL);
        T_ASSERT(memcmp(o1.data, o2.data, tensor_nbytes(&o1)) == 0);
        /* a table naming one other block gives other numbers (the comparison can fail) */
        int32_t was = tabd[2], other = 0;
        for (int again = 1; again;) {
            again = 0;
            for (int i = 0; i < 8; i++) again |= tabd[i] == other;
            other += again;
        }
        tabd[2] = other;
        op_attention_pos(&o1, &q, &k, &v, &pos, &tab, scale, ATTN_CAUSAL);
        op_attention(&o2, &q, &kg, &vg, 97, scale, ATTN_CAUSAL);
        T_ASSERT(memcmp(o1.data, o2.data, tensor_nbytes(&o1)) != 0);
        tabd[2] = was;
        free(kg.data), free(vg.data), free(q.data), free(o1.data), free(o2.data);

        /* op_attention_rows: 4 rows over 3 tables (row order != table order) */
        int32_t tabs[3 * 8], sq[4] = {2, 0, 1, 0}, nk[4] = {1, 128, 33, 16};
        shuffled(tabs, 24, (int)NB);
        struct tensor tt = tensor_make(DTYPE_I32, device_cpu(), tabs, 2, (int64_t)3, (int64_t)8);
        struct tensor ts = tensor_make(DTYPE_I32, device_cpu(), sq, 1, (int64_t)4);
        struct tensor tn = tensor_make(DTYPE_I32, device_cpu(), nk, 1, (int64_t)4);
        struct tensor qr = rnd(dt, 4, H, hd, 2.0f), orr = rnd(dt, 4, H, hd, 1.0f);
        op_attention_rows(&orr, &qr, &k, &v, &tt, &ts, &tn, scale);
        for (int i = 0; i < 4; i++) {
            struct tensor ki = gather_ref(&k, tabs + sq[i] * 8, nk[i]), vi = gather_ref(&v, tabs + sq[i] * 8, nk[i]);
            struct tensor oi = rnd(dt, 1, H, hd, 1.0f), qi = tensor_rows_view(&qr, i, 1), ri = tensor_rows_view(&orr, i, 1);
            op_attention(&oi, &qi, &ki, &vi, nk[i] - 1, scale, ATTN_CAUSAL);
            T_ASSERT(memcmp(oi.data, ri.data, tensor_nbytes(&oi)) == 0);
            free(ki.data), free(vi.data), free(oi.data);
        }
        free(qr.data), free(orr.data);

        /* op_rope_qk's store through the table = the contiguous store then scattered; op_kv_pages */
        struct tensor q2 = rnd(dt, 3, H, hd, 1.0f), k2 = rnd(dt, 3, Hkv, hd, 1.0f), v2 = rnd(dt, 3, Hkv, hd, 1.0f);
        struct tensor k3 = rnd(dt, 3, Hkv, hd, 1.0f);
        memcpy(k3.data, k2.data, tensor_nbytes(&k2));
        op_rope_qk(&q2, &k2, &pos, 500000.0, &v2, &k, &v, &tab);
        struct tensor pos3 = pos;
        op_rope_qk(&q2, &k3, &pos3, 500000.0, NULL, NULL, NULL, NULL); /* k3: the rotated k alone */
        struct tensor back = rnd(dt, 3, Hkv, hd, 1.0f), vb = rnd(dt, 3, Hkv, hd, 1.0f);
        op_kv_pages(&k, &back, &tab, 97, 0);
        op_kv_pages(&v, &vb, &tab, 97, 0);
        T_ASSERT(memcmp(back.data, k3.data, tensor_nbytes(&k3)) == 0);
        T_ASSERT(memcmp(vb.data, v2.data, tensor_nbytes(&v2)) == 0);
        /* the rows landed where the table says: token 98 in block tabd[6], row 2 */
        const size_t rb = (size_t)(Hkv * hd) * dtype_size(dt);
        T_ASSERT(memcmp((char *)k.data + ((size_t)tabd[6] * KV_BLOCK + 2) * rb, (char *)k3.data + rb, rb) == 0);
        /* scatter then gather gives the input back */
        op_kv_pages(&k, &v2, &tab, 40, 1);
        op_kv_pages(&k, &back, &tab, 40, 0);
        T_ASSERT(memcmp(back.data, v2.data, tensor_nbytes(&v2)) == 0);
        free(q2.data), free(k2.data), free(v2.data), free(k3.data), free(back.data), free(vb.data);
        free(k.data), free(v.data);
    }
}

int main(void)
{
    T_RUN(test_alloc);
    T_RUN(test_prefix);
    T_RUN(test_index_model);
    T_RUN(test_paged_ops);
    return t_main_end("test_kvpool");
}
