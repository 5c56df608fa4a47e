/* tokenizer_impl.h: the private layout of struct tokenizer, shared by tokenizer.c (loading),
 * tokenizer_encode.c and tokenizer_decode.c. Not part of the API; nothing outside src/tokenizer*.c includes it. */
#ifndef MINICPMV_TOKENIZER_IMPL_H
#define MINICPMV_TOKENIZER_IMPL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <string.h>

#include "tokenizer.h"

#define TOK_MAX_IDS (1 << 22)     /* bound on the id space read from a file */
#define TOK_MAX_TOKEN_BYTES 4096  /* bound on one token's length */

/* Open-addressing map from a byte string (the raw bytes of a vocab token, in the arena) to its id. */
struct tok_vmap_slot {
    uint32_t id1;  /* id + 1; 0 = empty */
    uint32_t hash; /* high 32 bits of the hash, checked before memcmp */
    uint32_t off, len;
};
/* Open-addressing map from an id pair to the merge's rank and result. */
struct tok_mmap_slot {
    uint64_t key;  /* ((uint64_t)left << 32 | right) + 1; 0 = empty */
    int32_t rank;
    int32_t merged;
};

/* Added tokens are matched with a byte trie (first-child/next-sibling), longest match at each position. */
struct tok_trie_node {
    int32_t child, sibling; /* -1 = none */
    int32_t id;             /* token id ending here, or -1 */
    uint8_t byte;
};

struct tokenizer {
    int n_ids;              /* max id + 1 */
    int cap_ids;            /* allocated length of the per-id arrays (room for added specials) */
    /* bytes of every id as decode emits them: vocab tokens are raw bytes; added tokens follow HF's
     * ByteLevel decoder (byte-level chars mapped back, else the content's own bytes) */
    char *arena;
    size_t arena_len, arena_cap;
    uint32_t *tok_off, *tok_len; /* [n_ids] into arena */
    uint8_t *tok_kind;           /* [n_ids] TOK_KIND_* */
    /* model vocabulary: raw bytes -> id */
    struct tok_vmap_slot *vmap;
    uint64_t vmap_mask;
    /* merges */
    struct tok_mmap_slot *mmap;
    uint64_t mmap_mask;
    int32_t byte_id[256];   /* id of each single byte */
    int ignore_merges;
    /* added tokens (content is matched in the raw text before pre-tokenization) */
    struct tok_trie_node *trie;
    int n_trie, cap_trie;
    uint8_t added_first[256]; /* 1 when some added token starts with this byte */
    char **added_content;     /* [n_ids] content of added token id, NULL otherwise */
    /* pre-tokenizer */
    pcre2_code *re;
    int re_jit;    /* pcre2_jit_compile succeeded: call pcre2_jit_match directly */
    int re_llama3; /* the pattern is exactly Llama-3's: ASCII text may take the hand-written fast path */
    /* post-processor (TOKENIZER_ADD_SPECIAL): ids added before and after the sequence */
    int32_t post_pre[8], post_suf[8];
    int n_post_pre, n_post_suf;
    int clean_up;
    struct tokenizer_specials sp;
};

enum { TOK_KIND_NONE = 0, TOK_KIND_VOCAB = 1, TOK_KIND_ADDED = 2 };

uint64_t tok_hash(const void *p, size_t n);
/* Vocabulary lookup of raw bytes whose tok_hash is h; -1 when absent. */
static inline int32_t tok_vocab_find_h(const struct tokenizer *t, const char *s, size_t n, uint64_t h)
{
    for (uint64_t i = h & t->vmap_mask;; i = (i + 1) & t->vmap_mask) {
        const struct tok_vmap_slot *sl = &t->vmap[i];
        if (!sl->id1) return -1;
        if (sl->hash == (uint32_t)(h >> 32) && sl->len == n && memcmp(t->arena + sl->off, s, n) == 0)
            return (int32_t)(sl->id1 - 1);
    }
}
static inline uint64_t tok_merge_hash(uint64_t key)
{
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 29);
}
static inline int32_t tok_vocab_find(const struct tokenizer *t, const char *s, size_t n)
{
    return tok_vocab_find_h(t, s, n, tok_hash(s, n));
}
/* Merge lookup; returns the rank (or -1) and sets *merged. */
static inline int32_t tok_merge_find(const struct tokenizer *t, int32_t a, int32_t b, int32_t *merged)
{
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    uint64_t h = tok_merge_hash(key);
    for (uint64_t i = h & t->mmap_mask;; i = (i + 1) & t->mmap_mask) {
        const struct tok_mmap_slot *sl = &t->mmap[i];
        if (!sl->key) return -1;
        if (sl->key == key) {
            *merged = sl->merged;
            return sl->rank;
        }
    }
}

/* Length of the valid UTF-8 sequence at s[0..n) (1..4), or 0 when invalid/truncated. */
int tok_utf8_len(const unsigned char *s, size_t n);

#endif
