/* kvpool.h: the host side of the paged KV cache: which block of the pool holds which tokens of which
 * sequence, and which full blocks are kept by content for prefix reuse.
 *
 * The pool has n_blocks blocks of bs tokens (one block id names the same rows in every layer's K and
 * V, on whatever device the layer sits). Each sequence (an engine slot) has a block table: token p of
 * sequence s is in row table[s][p / bs] * bs + p % bs of every layer's cache (backend.h: KV_BLOCK).
 * Blocks are handed out as a sequence grows (kvpool_reserve) and given back when it shrinks.
 *
 * Prefix reuse: a full block can be published under a chained content hash (kvpool_hash: the hash of
 * the previous block and this block's tokens; the caller decides what a token's content is, e.g. its id
 * or the image row it holds). A new sequence whose first blocks have cached hashes maps them
 * (kvpool_match) instead of computing them. Blocks are reference-counted: a block is
 *   used    (ref > 0: in at least one table),
 *   cached  (ref 0, published: kept for reuse, least recently released first out),
 *   free    (ref 0, not published).
 * A sequence needing a block takes a free one, else evicts the least recently released cached one.
 * Published blocks are full and never written again: a sequence appends only into blocks it alone
 * holds; kvpool_truncate keeps that true (it unpublishes or copies on write a partial shared block).
 *
 * Owns: the tables (host copies), reference counts, the hash index, the LRU. Does not own: the
 * device memory (llm.c), the device mirrors of the tables (llm.c uploads a table marked dirty).
 * Invariant: sum over sequences of their table lengths <= n_blocks implies kvpool_reserve never fails
 * (the engine's default pool: n_seqs * max_blocks blocks). A smaller pool (--kv-tokens) can run out: the
 * caller asks first (kvpool_missing <= kvpool_available) and frees blocks (the scheduler preempts a
 * turn). Not thread-safe. */
#ifndef MINICPMV_KVPOOL_H
#define MINICPMV_KVPOOL_H

#include <stdint.h>

#include "common.h"

struct kvpool;

struct kvpool_stats {
    int total, used, cached, free; /* blocks; used + cached + free = total */
    int bs;                        /* tokens per block */
    int64_t hit_blocks;            /* blocks mapped by kvpool_match since init */
    int64_t evicted;               /* cached blocks taken back for new tokens since init */
};

/* n_blocks blocks of bs tokens (bs a power of 2), n_seqs tables of at most max_blocks entries. */
int kvpool_init(struct kvpool **out, int n_blocks, int bs, int n_seqs, int max_blocks, struct err *e);
void kvpool_free(struct kvpool *p); /* accepts NULL */

/* Makes seq's table cover n_tokens (new blocks on demand). -1 with e set when n_tokens exceeds the
 * table (max_blocks * bs) or no block is free or cached ("KV pool exhausted"); the table is then
 * unchanged. */
int kvpool_reserve(struct kvpool *p, int seq, int64_t n_tokens, struct err *e);
/* Blocks kvpool_reserve(p, seq, n_tokens) would take (0 when seq's table covers them), and blocks it may
 * take: free + cached. */
int kvpool_missing(const struct kvpool *p, int seq, int64_t n_tokens);
int kvpool_available(const struct kvpool *p);
/* Keeps the blocks holding the first n tokens of seq, releases the rest. When the kept last block is
 * partial and published: unpublished if seq alone holds it; if it is shared, seq gets a fresh block in
 * its place and the call returns 1 with *cow_from (the shared block) and *cow_to (the new one): the
 * caller copies the block's rows. Otherwise 0. -1 (e set) when no block is left for the copy. */
int kvpool_truncate(struct kvpool *p, int seq, int64_t n, int32_t *cow_from, int32_t *cow_to, struct err *e);
/* seq's table: *n entries (the blocks it holds). */
const int32_t *kvpool_table(const struct kvpool *p, int seq, int *n);
/* The cache row of token pos of seq (its block must be in the table). */
int64_t kvpool_row(const struct kvpool *p, int seq, int64_t pos);
/* Whether seq's table changed since kvpool_clean(seq) (the caller mirrors it on its devices). */
int kvpool_dirty(const struct kvpool *p, int seq);
void kvpool_clean(struct kvpool *p, int seq);

/* ---- prefix reuse ---- */
/* The chained key of a block: prev is the key of the block before it (0 for the first), tok[0..n) the
 * contents of its tokens. A 64-bit mix (splitmix64 finalizer per word): distinct prefixes collide with
 * probability about 2^-64 per pair. */
uint64_t kvpool_hash(uint64_t prev, const uint64_t *tok, int n);
/* seq must hold no block. Maps the longest run of keys[0..n) that are all published, in order, into
 * seq's table (each block's ref + 1). Returns the count of blocks mapped. */
int kvpool_match(struct kvpool *p, int seq, const uint64_t *keys, int n);
/* Publishes seq's blocks 0..n-1 (each must be full: the caller's promise) under keys[0..n). A block
 * already published keeps its key; a key already held by another block leaves this block unpublished
 * (the first copy stays the one found). */
void kvpool_publish(struct kvpool *p, int seq, const uint64_t *keys, int n);
void kvpool_get_stats(const struct kvpool *p, struct kvpool_stats *st);
/* Unpublishes every block: nothing is found by kvpool_match until published again; cached blocks
 * become free (benchmarks that time a cold prefill of a repeated prompt). */
void kvpool_forget(struct kvpool *p);

#endif
