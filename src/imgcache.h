/* imgcache.h: image encodings kept by content, so that a conversation about the same images encodes
 * them once.
 *
 * The key is the ordered list of a turn's images: the images of one prompt are encoded in one vision
 * batch (padding takes part in attention, spec §3.2), so an image's rows depend on its companions.
 * Each image contributes its encoded bytes when the caller has them (the server: a few KB where the
 * decoded pixels may be 100 MB), else its decoded pixels (the REPL), each preceded by its length and
 * pixel size so that no two lists share a key. An entry holds the key, the grids and the encoding;
 * key + encoding bytes count against a byte budget; least recently used entries go first.
 * Not thread-safe: one owner (the thread that runs the turns). */
#ifndef MINICPMV_IMGCACHE_H
#define MINICPMV_IMGCACHE_H

#include "chat.h"
#include "image.h"
#include "tensor.h"

#define IMGCACHE_BYTES ((size_t)256 << 20)

struct imgcache;
/* capacity image lists; their bytes stay within IMGCACHE_BYTES unless imgcache_set_max_bytes says
 * otherwise. capacity 0: a cache that stores nothing. */
int imgcache_init(struct imgcache **out, int capacity, struct err *e);
void imgcache_set_max_bytes(struct imgcache *c, size_t max_bytes);
void imgcache_free(struct imgcache *c); /* accepts NULL */
size_t imgcache_bytes(const struct imgcache *c); /* bytes held now (0 for NULL) */
int imgcache_hits(const struct imgcache *c);

struct imgcache_key {
    uint8_t *bytes;
    size_t len;
    uint64_t hash;
};
/* The key of an image list; enc/enc_len (may be NULL) give each image's encoded bytes. keep 0: the hash and
 * length only (no copy of the bytes: such a key finds nothing and is not stored, e.g. without a cache).
 * -1: out of memory. */
int imgcache_key_init(struct imgcache_key *k, const struct image *images, int n_images, const uint8_t *const *enc,
                      const size_t *enc_len, int keep);
void imgcache_key_free(struct imgcache_key *k);
/* A hit (1): *tokens is the cache's own tensor (valid until the next imgcache_put or imgcache_free),
 * grids[0..n_images) and *n_pieces are filled. 0: not held. c may be NULL (always 0). */
int imgcache_get(struct imgcache *c, const struct imgcache_key *k, int n_images, struct chat_grid *grids,
                 struct tensor *tokens, int *n_pieces);
/* Stores an encoding: on success (0) the cache owns tokens and the key's bytes (k is emptied). An entry
 * larger than the whole budget, or a cache of capacity 0, stores nothing (-1; the caller keeps both). */
int imgcache_put(struct imgcache *c, struct imgcache_key *k, int n_images, const struct chat_grid *grids,
                 struct tensor tokens, int n_pieces);

#endif
