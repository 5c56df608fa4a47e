/* imgcache.c: the image-encoding cache (imgcache.h). */
#include "imgcache.h"

#include <stdlib.h>
#include <string.h>

#include "backend.h"

struct cache_entry {
    int n_images;
    struct imgcache_key key;
    struct chat_grid *grids;
    struct tensor tokens;        /* [n_pieces*query_num, d] on the embed device */
    size_t bytes;                /* key + tokens */
    int n_pieces;
    uint64_t used;               /* LRU tick */
};

struct imgcache {
    int cap, n, hits;
    uint64_t tick;
    size_t bytes, max_bytes;
    struct cache_entry *e;
};

int imgcache_init(struct imgcache **out, int capacity, struct err *e)
{
    *out = NULL;
    struct imgcache *c = calloc(1, sizeof *c);
    if (!c) return err_set(e, "out of memory");
    c->cap = capacity < 0 ? 0 : capacity;
    c->max_bytes = IMGCACHE_BYTES;
    if (c->cap && !(c->e = calloc((size_t)c->cap, sizeof *c->e))) {
        free(c);
        return err_set(e, "out of memory");
    }
    *out = c;
    return 0;
}

void imgcache_set_max_bytes(struct imgcache *c, size_t max_bytes) { c->max_bytes = max_bytes; }
size_t imgcache_bytes(const struct imgcache *c) { return c ? c->bytes : 0; }
int imgcache_hits(const struct imgcache *c) { return c ? c->hits : 0; }

static void entry_free(struct imgcache *c, struct cache_entry *x)
{
    c->bytes -= x->bytes;
    imgcache_key_free(&x->key);
    free(x->grids);
    if (x->tokens.data) dev_free(x->tokens.dev, x->tokens.data);
    memset(x, 0, sizeof *x);
}

void imgcache_free(struct imgcache *c)
{
    if (!c) return;
    for (int i = 0; i < c->n; i++) entry_free(c, &c->e[i]);
    free(c->e);
    free(c);
}

/* The key's hash, fed in pieces: the bytes of the key as one string (the same value however it is cut),
 * 32 bytes at a time over four independent 64-bit lanes (multiply, rotate), so that a 5 MB decoded
 * image hashes at memory speed (byte-wise FNV-1a took ~7 ms there, on the time to first token); the
 * lanes, the tail and the length end in a splitmix finalizer. Not a cryptographic hash: the key's owner
 * compares the bytes too (imgcache_get), and the KV blocks' keys built on it name content their turn
 * supplied itself (kvpool.h). */
#define KH_P1 0x9e3779b185ebca87ull
#define KH_P2 0xc2b2ae3d27d4eb4full

struct key_hasher {
    uint64_t v[4];
    uint8_t buf[32];
    size_t nbuf, total;
};

static uint64_t kh_rotl(uint64_t x, int r) { return x << r | x >> (64 - r); }

static uint64_t kh_mix(uint64_t x)
{
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t kh_word(const uint8_t *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

static void kh_block(struct key_hasher *h, const uint8_t *p)
{
    for (int i = 0; i < 4; i++) h->v[i] = kh_rotl(h->v[i] + kh_word(p + 8 * i) * KH_P2, 31) * KH_P1;
}

static void kh_init(struct key_hasher *h)
{
    memset(h, 0, sizeof *h);
    for (int i = 0; i < 4; i++) h->v[i] = KH_P1 * (uint64_t)(i + 1) ^ 0x696d676361636865ull;
}

static void kh_update(struct key_hasher *h, const uint8_t *p, size_t n)
{
    h->total += n;
    if (h->nbuf) {
        const size_t t = n < 32 - h->nbuf ? n : 32 - h->nbuf;
        memcpy(h->buf + h->nbuf, p, t);
        h->nbuf += t, p += t, n -= t;
        if (h->nbuf < 32) return;
        kh_block(h, h->buf);
        h->nbuf = 0;
    }
    for (; n >= 32; p += 32, n -= 32) kh_block(h, p);
    memcpy(h->buf, p, n);
    h->nbuf = n;
}

static uint64_t kh_final(const struct key_hasher *h)
{
    uint64_t r = kh_mix(h->total ^ KH_P2);
    for (int i = 0; i < 4; i++) r = kh_mix(r ^ kh_mix(h->v[i] + (uint64_t)i));
    for (size_t i = 0; i < h->nbuf; i++) r = (r ^ h->buf[i]) * 0x100000001b3ull;
    return kh_mix(r);
}

int imgcache_key_init(struct imgcache_key *k, const struct image *images, int n_images, const uint8_t *const *enc,
                      const size_t *enc_len, int keep)
{
    memset(k, 0, sizeof *k);
    size_t n = 0;
    for (int i = 0; i < n_images; i++)
        n += 3 * sizeof(uint64_t) + (enc ? enc_len[i] : (size_t)images[i].w * images[i].h * 3);
    uint8_t *p = NULL;
    if (keep && !(p = k->bytes = malloc(n ? n : 1))) return -1;
    struct key_hasher h;
    kh_init(&h);
    for (int i = 0; i < n_images; i++) {
        const uint8_t *src = enc ? enc[i] : images[i].rgb;
        uint64_t hdr[3] = {enc ? enc_len[i] : (size_t)images[i].w * images[i].h * 3, (uint64_t)images[i].w,
                           (uint64_t)images[i].h};
        kh_update(&h, (const uint8_t *)hdr, sizeof hdr);
        kh_update(&h, src, (size_t)hdr[0]);
        if (p) {
            memcpy(p, hdr, sizeof hdr);
            p += sizeof hdr;
            memcpy(p, src, (size_t)hdr[0]);
            p += hdr[0];
        }
    }
    k->len = n;
    k->hash = kh_final(&h);
    return 0;
}

void imgcache_key_free(struct imgcache_key *k)
{
    free(k->bytes);
    memset(k, 0, sizeof *k);
}

int imgcache_get(struct imgcache *c, const struct imgcache_key *k, int n_images, struct chat_grid *grids,
                 struct tensor *tokens, int *n_pieces)
{
    if (!c || !k->bytes) return 0;
    for (int i = 0; i < c->n; i++) {
        struct cache_entry *x = &c->e[i];
        if (x->key.hash != k->hash || x->key.len != k->len || x->n_images != n_images ||
            memcmp(x->key.bytes, k->bytes, k->len))
            continue;
        x->used = ++c->tick;
        c->hits++;
        memcpy(grids, x->grids, (size_t)n_images * sizeof *grids);
        *tokens = x->tokens;
        *n_pieces = x->n_pieces;
        return 1;
    }
    return 0;
}

int imgcache_put(struct imgcache *c, struct imgcache_key *k, int n_images, const struct chat_grid *grids,
                 struct tensor tokens, int n_pieces)
{
    if (!c || !k->bytes) return -1;
    const size_t bytes = k->len + (size_t)tensor_nbytes(&tokens);
    if (!c->cap || bytes > c->max_bytes) return -1;
    struct chat_grid *gc = malloc((size_t)(n_images ? n_images : 1) * sizeof *gc);
    if (!gc) return -1;
    memcpy(gc, grids, (size_t)n_images * sizeof *gc);
    while (c->n && (c->n == c->cap || c->bytes + bytes > c->max_bytes)) {
        int lru = 0;
        for (int i = 1; i < c->n; i++)
            if (c->e[i].used < c->e[lru].used) lru = i;
        entry_free(c, &c->e[lru]);
        c->e[lru] = c->e[--c->n];
        memset(&c->e[c->n], 0, sizeof c->e[c->n]);
    }
    struct cache_entry *x = &c->e[c->n++];
    x->key = *k;
    memset(k, 0, sizeof *k);
    x->n_images = n_images;
    x->grids = gc;
    x->tokens = tokens;
    x->n_pieces = n_pieces;
    x->bytes = bytes;
    x->used = ++c->tick;
    c->bytes += bytes;
    return 0;
}
