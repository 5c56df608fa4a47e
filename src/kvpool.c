/* kvpool.c: the paged KV cache's block allocator and prefix index (kvpool.h).
 * Free blocks are a stack; cached blocks a doubly linked LRU list (released at the tail, evicted from
 * the head); published keys an open-addressing table (linear probing, backward-shift deletion) of
 * twice the pool's size or more, so it never fills. */
#include "kvpool.h"

#include <stdlib.h>
#include <string.h>

struct kvpool {
    int n_blocks, bs, n_seqs, max_blocks;
    int32_t *ref;          /* [n_blocks] tables holding the block */
    uint64_t *key;         /* [n_blocks] its key when published */
    uint8_t *published;    /* [n_blocks] */
    int32_t *prev, *next;  /* [n_blocks] LRU links of cached blocks (-1 ends) */
    int32_t lru_head, lru_tail;
    int32_t *free_stack;   /* [n_blocks] */
    int n_free, n_cached;
    int32_t *tab;          /* [n_seqs * max_blocks] */
    int *len;              /* [n_seqs] blocks in each table */
    uint8_t *dirty;        /* [n_seqs] */
    int32_t *slot;         /* [cap] hash index: block id or -1 */
    uint32_t cap;          /* power of 2 */
    int64_t hit_blocks, evicted;
};

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

uint64_t kvpool_hash(uint64_t prev, const uint64_t *tok, int n)
{
    uint64_t h = mix64(prev ^ 0x6b76706f6f6c0001ull);
    for (int i = 0; i < n; i++) h = mix64(h ^ mix64(tok[i]));
    return h;
}

void kvpool_free(struct kvpool *p)
{
    if (!p) return;
    free(p->ref);
    free(p->key);
    free(p->published);
    free(p->prev);
    free(p->next);
    free(p->free_stack);
    free(p->tab);
    free(p->len);
    free(p->dirty);
    free(p->slot);
    free(p);
}

int kvpool_init(struct kvpool **out, int n_blocks, int bs, int n_seqs, int max_blocks, struct err *e)
{
    *out = NULL;
    if (n_blocks < 1 || n_seqs < 1 || max_blocks < 1 || bs < 1 || (bs & (bs - 1)) || n_blocks > (1 << 28))
        return err_set(e, "KV pool of %d blocks of %d tokens for %d sequences of %d blocks: bad sizes", n_blocks, bs,
                       n_seqs, max_blocks);
    struct kvpool *p = calloc(1, sizeof *p);
    if (!p) return err_set(e, "out of memory");
    p->n_blocks = n_blocks;
    p->bs = bs;
    p->n_seqs = n_seqs;
    p->max_blocks = max_blocks;
    p->cap = 16;
    while (p->cap < 2u * (uint32_t)n_blocks) p->cap *= 2;
    const size_t nb = (size_t)n_blocks;
    p->ref = calloc(nb, sizeof *p->ref);
    p->key = calloc(nb, sizeof *p->key);
    p->published = calloc(nb, 1);
    p->prev = malloc(nb * sizeof *p->prev);
    p->next = malloc(nb * sizeof *p->next);
    p->free_stack = malloc(nb * sizeof *p->free_stack);
    p->tab = calloc((size_t)n_seqs * (size_t)max_blocks, sizeof *p->tab);
    p->len = calloc((size_t)n_seqs, sizeof *p->len);
    p->dirty = calloc((size_t)n_seqs, 1);
    p->slot = malloc((size_t)p->cap * sizeof *p->slot);
    if (!p->ref || !p->key || !p->published || !p->prev || !p->next || !p->free_stack || !p->tab || !p->len ||
        !p->dirty || !p->slot) {
        kvpool_free(p);
        return err_set(e, "out of memory (a KV pool of %d blocks)", n_blocks);
    }
    for (uint32_t i = 0; i < p->cap; i++) p->slot[i] = -1;
    /* block 0 on top of the stack: a fresh pool hands out 0, 1, 2, ... */
    for (int i = 0; i < n_blocks; i++) p->free_stack[i] = n_blocks - 1 - i;
    p->n_free = n_blocks;
    p->lru_head = p->lru_tail = -1;
    *out = p;
    return 0;
}

/* ---- the hash index ---- */

static uint32_t home(const struct kvpool *p, uint64_t key) { return (uint32_t)mix64(key) & (p->cap - 1); }

static int32_t index_find(const struct kvpool *p, uint64_t key)
{
    for (uint32_t i = home(p, key);; i = (i + 1) & (p->cap - 1)) {
        const int32_t b = p->slot[i];
        if (b < 0) return -1;
        if (p->key[b] == key) return b;
    }
}

static void index_add(struct kvpool *p, int32_t b)
{
    uint32_t i = home(p, p->key[b]);
    while (p->slot[i] >= 0) i = (i + 1) & (p->cap - 1);
    p->slot[i] = b;
}

static void index_del(struct kvpool *p, int32_t b)
{
    uint32_t i = home(p, p->key[b]);
    while (p->slot[i] != b) i = (i + 1) & (p->cap - 1);
    /* backward shift: move later entries of the probe run into the hole when their home allows it */
    for (uint32_t j = (i + 1) & (p->cap - 1);; j = (j + 1) & (p->cap - 1)) {
        const int32_t c = p->slot[j];
        if (c < 0) break;
        const uint32_t h = home(p, p->key[c]);
        /* c may fill the hole at i unless its home lies cyclically in (i, j] */
        const int stays = i <= j ? (h > i && h <= j) : (h > i || h <= j);
        if (!stays) {
            p->slot[i] = c;
            i = j;
        }
    }
    p->slot[i] = -1;
}

static void unpublish(struct kvpool *p, int32_t b)
{
    if (!p->published[b]) return;
    index_del(p, b);
    p->published[b] = 0;
}

/* ---- the LRU of cached blocks ---- */

static void lru_remove(struct kvpool *p, int32_t b)
{
    if (p->prev[b] >= 0) p->next[p->prev[b]] = p->next[b];
    else p->lru_head = p->next[b];
    if (p->next[b] >= 0) p->prev[p->next[b]] = p->prev[b];
    else p->lru_tail = p->prev[b];
    p->n_cached--;
}

static void lru_push(struct kvpool *p, int32_t b)
{
    p->prev[b] = p->lru_tail;
    p->next[b] = -1;
    if (p->lru_tail >= 0) p->next[p->lru_tail] = b;
    else p->lru_head = b;
    p->lru_tail = b;
    p->n_cached++;
}

/* ---- blocks ---- */

/* A block for new tokens: a free one, else the least recently released cached one. -1: none. */
static int32_t take(struct kvpool *p)
{
    int32_t b;
    if (p->n_free) {
        b = p->free_stack[--p->n_free];
    } else if (p->lru_head >= 0) {
        b = p->lru_head;
        lru_remove(p, b);
        unpublish(p, b);
        p->evicted++;
    } else {
        return -1;
    }
    p->ref[b] = 1;
    return b;
}

static void release(struct kvpool *p, int32_t b)
{
    if (--p->ref[b] > 0) return;
    if (p->published[b]) lru_push(p, b);
    else p->free_stack[p->n_free++] = b;
}

static void check_seq(const struct kvpool *p, int seq) { CHECK(seq >= 0 && seq < p->n_seqs); }

int kvpool_reserve(struct kvpool *p, int seq, int64_t n_tokens, struct err *e)
{
    check_seq(p, seq);
    const int64_t need = (n_tokens + p->bs - 1) / p->bs;
    if (need > p->max_blocks)
        return err_set(e, "KV cache: %lld tokens exceed a sequence's %lld", (long long)n_tokens,
                       (long long)p->max_blocks * p->bs);
    int32_t *t = p->tab + (size_t)seq * p->max_blocks;
    const int had = p->len[seq];
    while (p->len[seq] < need) {
        const int32_t b = take(p);
        if (b < 0) {
            while (p->len[seq] > had) release(p, t[--p->len[seq]]);
            return err_set(e, "KV pool exhausted: %d blocks of %d tokens all in use (sequence %d needs %lld more)",
                           p->n_blocks, p->bs, seq, (long long)(need - had));
        }
        t[p->len[seq]++] = b;
        p->dirty[seq] = 1;
    }
    return 0;
}

int kvpool_missing(const struct kvpool *p, int seq, int64_t n_tokens)
{
    check_seq(p, seq);
    const int64_t need = (n_tokens + p->bs - 1) / p->bs - p->len[seq];
    return need > 0 ? (int)(need < INT32_MAX ? need : INT32_MAX) : 0;
}

int kvpool_available(const struct kvpool *p) { return p->n_free + p->n_cached; }

int kvpool_truncate(struct kvpool *p, int seq, int64_t n, int32_t *cow_from, int32_t *cow_to, struct err *e)
{
    check_seq(p, seq);
    if (n < 0) n = 0;
    int32_t *t = p->tab + (size_t)seq * p->max_blocks;
    const int64_t keep = (n + p->bs - 1) / p->bs;
    while (p->len[seq] > keep) {
        release(p, t[--p->len[seq]]);
        p->dirty[seq] = 1;
    }
    if (n % p->bs == 0 || p->len[seq] < keep) return 0;
    /* the kept last block is partial: seq will write its rows again */
    const int32_t b = t[keep - 1];
    if (!p->published[b]) return 0; /* a private block (an unpublished block is never shared) */
    if (p->ref[b] == 1) {
        unpublish(p, b);
        return 0;
    }
    const int32_t c = take(p);
    if (c < 0) return err_set(e, "KV pool exhausted: no block left to copy a shared block into");
    release(p, b);
    t[keep - 1] = c;
    p->dirty[seq] = 1;
    *cow_from = b;
    *cow_to = c;
    return 1;
}

const int32_t *kvpool_table(const struct kvpool *p, int seq, int *n)
{
    check_seq(p, seq);
    *n = p->len[seq];
    return p->tab + (size_t)seq * p->max_blocks;
}

int64_t kvpool_row(const struct kvpool *p, int seq, int64_t pos)
{
    check_seq(p, seq);
    const int64_t i = pos / p->bs;
    CHECKF(pos >= 0 && i < p->len[seq], "kvpool_row: token %lld of sequence %d is not in its %d blocks", (long long)pos,
           seq, p->len[seq]);
    return (int64_t)p->tab[(size_t)seq * p->max_blocks + (size_t)i] * p->bs + pos % p->bs;
}

int kvpool_dirty(const struct kvpool *p, int seq)
{
    check_seq(p, seq);
    return p->dirty[seq];
}

void kvpool_clean(struct kvpool *p, int seq)
{
    check_seq(p, seq);
    p->dirty[seq] = 0;
}

/* ---- prefix reuse ---- */

int kvpool_match(struct kvpool *p, int seq, const uint64_t *keys, int n)
{
    check_seq(p, seq);
    CHECKF(p->len[seq] == 0, "kvpool_match: sequence %d already holds %d blocks", seq, p->len[seq]);
    int32_t *t = p->tab + (size_t)seq * p->max_blocks;
    int k = 0;
    while (k < n && k < p->max_blocks) {
        const int32_t b = index_find(p, keys[k]);
        if (b < 0) break;
        if (p->ref[b]++ == 0) lru_remove(p, b);
        t[k++] = b;
    }
    p->len[seq] = k;
    if (k) p->dirty[seq] = 1;
    p->hit_blocks += k;
    return k;
}

void kvpool_publish(struct kvpool *p, int seq, const uint64_t *keys, int n)
{
    check_seq(p, seq);
    const int32_t *t = p->tab + (size_t)seq * p->max_blocks;
    if (n > p->len[seq]) n = p->len[seq];
    for (int i = 0; i < n; i++) {
        const int32_t b = t[i];
        if (p->published[b] || index_find(p, keys[i]) >= 0) continue;
        p->key[b] = keys[i];
        p->published[b] = 1;
        index_add(p, b);
    }
}

void kvpool_forget(struct kvpool *p)
{
    while (p->lru_head >= 0) {
        const int32_t b = p->lru_head;
        lru_remove(p, b);
        p->free_stack[p->n_free++] = b;
    }
    for (int32_t b = 0; b < p->n_blocks; b++) unpublish(p, b);
}

void kvpool_get_stats(const struct kvpool *p, struct kvpool_stats *st)
{
    memset(st, 0, sizeof *st);
    if (!p) return;
    st->total = p->n_blocks;
    st->free = p->n_free;
    st->cached = p->n_cached;
    st->used = p->n_blocks - p->n_free - p->n_cached;
    st->bs = p->bs;
    st->hit_blocks = p->hit_blocks;
    st->evicted = p->evicted;
}
