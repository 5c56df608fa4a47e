/* tokenizer_encode.c: text -> ids, as HF tokenizers does it for Llama-3:
 *   1. added tokens are cut out of the raw text first (leftmost, then longest match: HF's Aho-Corasick
 *      LeftmostLongest), each becoming its id;
 *   2. every piece of text between them is split by the pre-tokenizer regex (Split, Isolated: the text
 *      between matches would be a piece too); PCRE2, with a hand-written path for ASCII text when the pattern
 *      is Llama-3's (ascii_match);
 *   3. each pre-token is looked up whole in the vocab (ignore_merges), else byte-level BPE: repeatedly merge
 *      the adjacent pair of lowest rank, leftmost first (HF's Word::merge_all order).
 * Byte-level mapping is done once at load (vocab keys are stored as raw bytes), so encoding works on bytes. */
#include <limits.h>
#include <string.h>

#include "tokenizer_impl.h"

#define TOK_MAX_TEXT_BYTES ((size_t)1 << 30)
#define BPE_SMALL 48 /* pre-tokens up to this many bytes use the O(n^2) scan; longer ones a heap */

struct ids_buf {
    int32_t *v;
    size_t n, cap;
};

static int ids_push(struct ids_buf *b, int32_t id)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        int32_t *v = realloc(b->v, cap * sizeof *v);
        if (!v) return -1;
        b->v = v;
        b->cap = cap;
    }
    b->v[b->n++] = id;
    return 0;
}

/* Returns the offset of the first invalid byte, or len when s is valid UTF-8. */
static size_t utf8_check(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        if (i + 8 <= len) {
            uint64_t v;
            memcpy(&v, s + i, 8);
            if (!(v & 0x8080808080808080ull)) {
                i += 8;
                continue;
            }
        }
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int l = tok_utf8_len(s + i, len - i);
        if (!l) return i;
        i += (size_t)l;
    }
    return len;
}

/* --- BPE ----------------------------------------------------------------------------------------------- */

static int bpe_small(const struct tokenizer *t, const unsigned char *p, int n, struct ids_buf *out)
{
    int32_t sym[BPE_SMALL], rank[BPE_SMALL], merged[BPE_SMALL];
    for (int i = 0; i < n; i++) sym[i] = t->byte_id[p[i]];
    /* the first lookups are independent: prefetch their slots so the cache misses overlap */
    for (int i = 0; i + 1 < n; i++) {
        uint64_t key = (((uint64_t)(uint32_t)sym[i] << 32) | (uint32_t)sym[i + 1]) + 1;
        __builtin_prefetch(&t->mmap[tok_merge_hash(key) & t->mmap_mask]);
    }
    for (int i = 0; i + 1 < n; i++) rank[i] = tok_merge_find(t, sym[i], sym[i + 1], &merged[i]);
    while (n > 1) {
        int best = -1;
        for (int i = 0; i + 1 < n; i++)
            if (rank[i] >= 0 && (best < 0 || rank[i] < rank[best])) best = i;
        if (best < 0) break;
        sym[best] = merged[best];
        memmove(sym + best + 1, sym + best + 2, (size_t)(n - best - 2) * sizeof *sym);
        memmove(rank + best + 1, rank + best + 2, (size_t)(n - best - 3 > 0 ? n - best - 3 : 0) * sizeof *rank);
        memmove(merged + best + 1, merged + best + 2, (size_t)(n - best - 3 > 0 ? n - best - 3 : 0) * sizeof *merged);
        n--;
        if (best > 0) rank[best - 1] = tok_merge_find(t, sym[best - 1], sym[best], &merged[best - 1]);
        if (best + 1 < n) rank[best] = tok_merge_find(t, sym[best], sym[best + 1], &merged[best]);
    }
    for (int i = 0; i < n; i++)
        if (ids_push(out, sym[i])) return -1;
    return 0;
}

struct heap_ent {
    int32_t rank, pos, merged;
};

static int heap_less(const struct heap_ent *a, const struct heap_ent *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(struct heap_ent *h, int *n, struct heap_ent x)
{
    int i = (*n)++;
    while (i > 0) {
        int par = (i - 1) / 2;
        if (!heap_less(&x, &h[par])) break;
        h[i] = h[par];
        i = par;
    }
    h[i] = x;
}

static struct heap_ent heap_pop(struct heap_ent *h, int *n)
{
    struct heap_ent top = h[0], x = h[--(*n)];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && heap_less(&h[c + 1], &h[c])) c++;
        if (!heap_less(&h[c], &x)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0) h[i] = x;
    return top;
}

/* HF's Word::merge_all: a priority queue of (rank, position); stale entries are skipped when the pair at
 * the position no longer yields the same merge. O(n log n) for pathological pre-tokens (long letter runs). */
static int bpe_large(const struct tokenizer *t, const unsigned char *p, int n, struct ids_buf *out)
{
    int32_t *id = malloc((size_t)n * sizeof *id), *next = malloc((size_t)n * sizeof *next);
    int32_t *prev = malloc((size_t)n * sizeof *prev);
    struct heap_ent *h = malloc((size_t)2 * n * sizeof *h); /* at most n-1 initial + 2 per merge */
    int nh = 0, rc = -1;
    if (!id || !next || !prev || !h) goto out;
    for (int i = 0; i < n; i++) id[i] = t->byte_id[p[i]], prev[i] = i - 1, next[i] = i + 1 < n ? i + 1 : -1;
    for (int i = 0; i + 1 < n; i++) {
        int32_t m = -1, r = tok_merge_find(t, id[i], id[i + 1], &m);
        if (r >= 0) heap_push(h, &nh, (struct heap_ent){r, i, m});
    }
    while (nh > 0) {
        struct heap_ent top = heap_pop(h, &nh);
        int i = top.pos, j = next[i];
        if (id[i] < 0 || j < 0) continue;
        int32_t m = -1, r = tok_merge_find(t, id[i], id[j], &m);
        if (r != top.rank || m != top.merged) continue;
        id[i] = m;
        id[j] = -1;
        next[i] = next[j];
        if (next[i] >= 0) prev[next[i]] = i;
        if (prev[i] >= 0 && (r = tok_merge_find(t, id[prev[i]], id[i], &m)) >= 0)
            heap_push(h, &nh, (struct heap_ent){r, prev[i], m});
        if (next[i] >= 0 && (r = tok_merge_find(t, id[i], id[next[i]], &m)) >= 0)
            heap_push(h, &nh, (struct heap_ent){r, i, m});
    }
    for (int i = 0; i >= 0; i = next[i])
        if (ids_push(out, id[i])) goto out;
    rc = 0;
out:
    free(id);
    free(next);
    free(prev);
    free(h);
    return rc;
}

static int encode_pretoken(const struct tokenizer *t, const unsigned char *p, size_t n, uint64_t h, struct ids_buf *out)
{
    if (n == 1) return ids_push(out, t->byte_id[p[0]]);
    if (t->ignore_merges) {
        int32_t id = tok_vocab_find_h(t, (const char *)p, n, h);
        if (id >= 0) return ids_push(out, id);
    }
    if (n > INT_MAX / 2) return -1;
    return n <= BPE_SMALL ? bpe_small(t, p, (int)n, out) : bpe_large(t, p, (int)n, out);
}

/* --- pre-tokenizer -------------------------------------------------------------------------------------- */

/* Pre-tokens are encoded in batches: hashing them all and prefetching their vocab slots first overlaps the
 * cache misses of the whole-token lookups (the largest cost on long texts). */
#define PIECE_BATCH 32
struct pieces {
    size_t off[PIECE_BATCH], len[PIECE_BATCH];
    uint64_t h[PIECE_BATCH];
    int n;
};

static int flush_pieces(const struct tokenizer *t, const unsigned char *s, struct pieces *pc, struct ids_buf *out)
{
    for (int i = 0; i < pc->n; i++) {
        if (pc->len[i] < 2) continue;
        pc->h[i] = tok_hash(s + pc->off[i], pc->len[i]);
        __builtin_prefetch(&t->vmap[pc->h[i] & t->vmap_mask]);
    }
    for (int i = 0; i < pc->n; i++)
        if (encode_pretoken(t, s + pc->off[i], pc->len[i], pc->h[i], out)) return -1;
    pc->n = 0;
    return 0;
}

static int add_piece(const struct tokenizer *t, const unsigned char *s, struct pieces *pc, size_t a, size_t b,
                     struct ids_buf *out)
{
    pc->off[pc->n] = a;
    pc->len[pc->n] = b - a;
    pc->h[pc->n] = 0;
    return ++pc->n == PIECE_BATCH ? flush_pieces(t, s, pc, out) : 0;
}

/* ASCII fast path of Llama-3's pre-tokenizer regex (used only when tokenizer.json has exactly that pattern):
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d) | [^\r\n\p{L}\p{N}]?\p{L}+ | \p{N}{1,3} | ?[^\s\p{L}\p{N}]+[\r\n]* |
 *   \s*[\r\n]+ | \s+(?!\S) | \s+
 * Returns the end of the match at pos (the regex always matches at pos: every character is covered by an
 * alternative), or 0 when deciding it would need a non-ASCII character, which PCRE2 then handles. The
 * alternatives are tried in order with the regex's backtracking worked out by hand; the JS parity corpus
 * checks this against the oracle character class by class. */
enum { A_LET = 1, A_DIG = 2, A_WS = 4, A_NL = 8, A_OTHER = 16, A_HIGH = 32 };
static unsigned char ascii_class(unsigned char c)
{
    if (c >= 0x80) return A_HIGH;
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return A_LET;
    if (c >= '0' && c <= '9') return A_DIG;
    if (c == '\r' || c == '\n') return A_WS | A_NL;
    if (c == ' ' || c == '\t' || c == 0x0B || c == '\f') return A_WS;
    return A_OTHER;
}

static size_t ascii_match(const unsigned char *s, size_t pos, size_t len)
{
#define CL(i) ((i) < len ? ascii_class(s[i]) : 0) /* 0 = end of text */
    unsigned c = CL(pos), c1 = CL(pos + 1);
    if (c1 & A_HIGH) return 0;
    if (s[pos] == '\'') { /* contractions, case-insensitive; a non-ASCII next char could be U+017F */
        if (pos + 2 < len && (s[pos + 2] & 0x80)) return 0;
        int a = pos + 1 < len ? (s[pos + 1] | 0x20) : 0, b = pos + 2 < len ? (s[pos + 2] | 0x20) : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return pos + 2;
        if ((a == 'r' || a == 'v') && b == 'e') return pos + 3;
        if (a == 'l' && b == 'l') return pos + 3;
    }
    size_t i;
    if ((c & A_LET) || (!(c & (A_DIG | A_NL)) && (c1 & A_LET))) { /* [^\r\n\p{L}\p{N}]?\p{L}+ */
        for (i = (c & A_LET) ? pos + 1 : pos + 2; CL(i) & A_LET; i++) {}
        return (CL(i) & A_HIGH) ? 0 : i;
    }
    if (c & A_DIG) { /* \p{N}{1,3} */
        for (i = pos + 1; i < pos + 3 && (CL(i) & A_DIG); i++) {}
        return (i < pos + 3 && (CL(i) & A_HIGH)) ? 0 : i;
    }
    if ((c & A_OTHER) || (s[pos] == ' ' && (c1 & A_OTHER))) { /*  ?[^\s\p{L}\p{N}]+[\r\n]* */
        for (i = (c & A_OTHER) ? pos + 1 : pos + 2; CL(i) & A_OTHER; i++) {}
        if (CL(i) & A_HIGH) return 0;
        while (CL(i) & A_NL) i++;
        return i;
    }
    /* whitespace: the maximal run, then \s*[\r\n]+ (up to the last newline of the run), \s+(?!\S) (the run,
     * less its last character unless the text ends), \s+ */
    size_t last_nl = 0;
    int has_nl = 0;
    for (i = pos; CL(i) & A_WS; i++)
        if (CL(i) & A_NL) last_nl = i, has_nl = 1;
    if (CL(i) & A_HIGH) return 0;
    if (has_nl) return last_nl + 1;
    if (i == len || i - pos == 1) return i;
    return i - 1;
#undef CL
}

static int encode_segment(const struct tokenizer *t, pcre2_match_data *md, const unsigned char *s, size_t len,
                          struct ids_buf *out)
{
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    struct pieces pc;
    pc.n = 0;
    size_t pos = 0;
    while (pos < len) {
        if (t->re_llama3 && s[pos] < 0x80) {
            size_t end = ascii_match(s, pos, len);
            if (end) {
                if (add_piece(t, s, &pc, pos, end, out)) return -1;
                pos = end;
                continue;
            }
        }
        int rc = t->re_jit ? pcre2_jit_match(t->re, s, len, pos, PCRE2_NO_UTF_CHECK, md, NULL)
                           : pcre2_match(t->re, s, len, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) return -2;
        size_t a = ov[0], b = ov[1];
        if (a > pos && add_piece(t, s, &pc, pos, a, out)) return -1; /* unmatched gap: its own piece */
        if (b == a) { /* an empty match (not possible with Llama-3's pattern): step over one character */
            int l = tok_utf8_len(s + a, len - a);
            b = a + (size_t)(l ? l : 1);
        }
        if (add_piece(t, s, &pc, a, b, out)) return -1;
        pos = b;
    }
    if (pos < len && add_piece(t, s, &pc, pos, len, out)) return -1;
    return flush_pieces(t, s, &pc, out);
}

/* Longest added token starting at s[0], or -1; *mlen gets its length. */
static int32_t match_added(const struct tokenizer *t, const unsigned char *s, size_t len, size_t *mlen)
{
    int node = 0;
    int32_t best = -1;
    for (size_t i = 0; i < len; i++) {
        int c = t->trie[node].child;
        while (c >= 0 && t->trie[c].byte != s[i]) c = t->trie[c].sibling;
        if (c < 0) break;
        node = c;
        if (t->trie[node].id >= 0) best = t->trie[node].id, *mlen = i + 1;
    }
    return best;
}

int tokenizer_encode(const struct tokenizer *t, const char *text, size_t len, int flags, int32_t **ids, int *n,
                     struct err *e)
{
    *ids = NULL;
    *n = 0;
    if (len > TOK_MAX_TEXT_BYTES) return err_set(e, "tokenize: input is %zu bytes, over the limit of %zu", len, TOK_MAX_TEXT_BYTES);
    const unsigned char *s = (const unsigned char *)text;
    size_t bad = utf8_check(s, len);
    if (bad < len) return err_set(e, "tokenize: invalid UTF-8 at byte offset %zu (byte 0x%02x)", bad, s[bad]);
    struct ids_buf out = {0};
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(t->re, NULL);
    if (!md) return err_set(e, "tokenize: out of memory");
    int rc = 0;
    if (flags & TOKENIZER_ADD_SPECIAL)
        for (int i = 0; i < t->n_post_pre && !rc; i++) rc = ids_push(&out, t->post_pre[i]);
    size_t seg = 0;
    for (size_t i = 0; i < len && !rc;) {
        size_t ml = 0;
        int32_t id = t->added_first[s[i]] ? match_added(t, s + i, len - i, &ml) : -1;
        if (id < 0) {
            i++;
            continue;
        }
        if (i > seg) rc = encode_segment(t, md, s + seg, i - seg, &out);
        if (!rc) rc = ids_push(&out, id);
        i += ml;
        seg = i;
    }
    if (!rc && seg < len) rc = encode_segment(t, md, s + seg, len - seg, &out);
    if (flags & TOKENIZER_ADD_SPECIAL)
        for (int i = 0; i < t->n_post_suf && !rc; i++) rc = ids_push(&out, t->post_suf[i]);
    pcre2_match_data_free(md);
    if (!rc && out.n > INT_MAX) rc = -1;
    if (rc) {
        free(out.v);
        return err_set(e, rc == -2 ? "tokenize: regex match failed" : "tokenize: out of memory");
    }
    if (!out.v) out.v = malloc(sizeof *out.v);
    *ids = out.v;
    *n = (int)out.n;
    return 0;
}
