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

static uint64_t key_hash(const uint8_t *k, size_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ k[i]) * 1099511628211ULL;
    return h;
}

int imgcache_key_init(struct imgcache_key *k, const struct image *images, int n_images, const uint8_t *const *enc,
                      const size_t *enc_len)
{
    memset(k, 0, sizeof *k);
    size_t n = 0;
    for (int i = 0; i < n_images; i++)
        n += 3 * sizeof(uint64_t) + (enc ? enc_len[i] : (size_t)images[i].w * images[i].h * 3);
    uint8_t *p = malloc(n ? n : 1);
    if (!p) return -1;
    k->bytes = p;
    for (int i = 0; i < n_images; i++) {
        const uint8_t *src = enc ? enc[i] : images[i].rgb;
        uint64_t hdr[3] = {enc ? enc_len[i] : (size_t)images[i].w * images[i].h * 3, (uint64_t)images[i].w,
                           (uint64_t)images[i].h};
        memcpy(p, hdr, sizeof hdr);
        p += sizeof hdr;
        memcpy(p, src, (size_t)hdr[0]);
        p += hdr[0];
    }
    k->len = n;
    k->hash = key_hash(k->bytes, n);
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
