/* grammar_vocab.c: the token mask of grammar.h: the vocabulary's byte strings in two tries, walked
 * together with copies of the automaton (grammar.c), dead branches pruned; "plain" string tokens taken as
 * a block inside strings. */
#include "grammar.h"
#include "grammar_impl.h"

#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

/* ------------------------------------------------------------------ vocabulary trie and mask */

/* Children of a node are contiguous: nodes[first .. first + n). */
struct tnode {
    int32_t first;
    int32_t id;     /* the token ending here, or -1 */
    uint16_t n;
    uint8_t byte;
};

struct trie {
    struct tnode *nodes;
    int32_t n_nodes;
};

struct grammar_vocab {
    int V;
    /* "plain" tokens: every byte >= 0x20 and none '"' or '\\', whole UTF-8 characters only. Inside a
     * string with no character or escape half done, each of them leaves the automaton where it was,
     * so the mask takes them as a block (plain_mask) and walks only the trie of the others. */
    struct trie plain, other;
    uint32_t *plain_mask;   /* [words] */
    uint8_t *in_vocab;      /* [V] 1: in a trie */
    const char **bytes;     /* [V] the token's bytes (into the tokenizer) */
    uint32_t *len;          /* [V] */
    int32_t stop[16];
    int n_stop;
    int max_len;
};

struct grammar_scratch {
    struct grammar_state *st; /* [max_len + 1] */
    int n;
};

struct tok_ref {
    const unsigned char *s;
    uint32_t len;
    int32_t id;
};

static int cmp_ref(const void *a, const void *b)
{
    const struct tok_ref *x = a, *y = b;
    return bytes_cmp(x->s, x->len, y->s, y->len);
}

/* Lays out the children of node nd for the sorted refs [lo, hi), which share a prefix of d bytes. */
static void trie_build(struct trie *t, int32_t nd, const struct tok_ref *r, int lo, int hi, uint32_t d)
{
    t->nodes[nd].id = -1;
    if (lo < hi && r[lo].len == d) t->nodes[nd].id = r[lo++].id;
    int k = 0;
    for (int i = lo; i < hi; i++)
        if (i == lo || r[i].s[d] != r[i - 1].s[d]) k++;
    t->nodes[nd].first = t->n_nodes;
    t->nodes[nd].n = (uint16_t)k;
    int32_t first = t->n_nodes;
    t->n_nodes += k;
    int j = 0;
    for (int i = lo; i < hi;) {
        int z = i + 1;
        while (z < hi && r[z].s[d] == r[i].s[d]) z++;
        t->nodes[first + j].byte = r[i].s[d];
        trie_build(t, first + j, r, i, z, d + 1);
        j++;
        i = z;
    }
}

static int trie_init(struct trie *t, struct tok_ref *r, int n, struct err *e)
{
    size_t total = 1;
    for (int i = 0; i < n; i++) total += r[i].len;
    if (total > INT32_MAX) return err_set(e, "grammar: vocabulary too large for the trie");
    t->nodes = malloc(total * sizeof *t->nodes);
    if (!t->nodes) return err_set(e, "grammar: out of memory for the vocabulary trie (%zu nodes)", total);
    qsort(r, (size_t)n, sizeof *r, cmp_ref);
    t->n_nodes = 1;
    t->nodes[0].byte = 0;
    trie_build(t, 0, r, 0, n, 0);
    return 0;
}

void grammar_vocab_free(struct grammar_vocab *v)
{
    if (!v) return;
    free(v->plain.nodes);
    free(v->other.nodes);
    free(v->plain_mask);
    free(v->in_vocab);
    free(v->bytes);
    free(v->len);
    free(v);
}

int grammar_vocab_init(struct grammar_vocab **out, const struct tokenizer *tok, const int32_t *stop_ids, int n_stop,
                       const int32_t *exclude, int n_exclude, struct err *e)
{
    *out = NULL;
    const int V = tokenizer_vocab_size(tok);
    if (n_stop < 0 || n_stop > 16) return err_set(e, "grammar: %d stop ids (at most 16)", n_stop);
    struct grammar_vocab *v = calloc(1, sizeof *v);
    struct tok_ref *pr = NULL, *orr = NULL;
    if (!v) return err_set(e, "grammar: out of memory");
    v->V = V;
    v->plain_mask = calloc(grammar_mask_words(V), sizeof *v->plain_mask);
    v->in_vocab = calloc((size_t)V, 1);
    v->bytes = calloc((size_t)V, sizeof *v->bytes);
    v->len = calloc((size_t)V, sizeof *v->len);
    pr = malloc((size_t)V * sizeof *pr);
    orr = malloc((size_t)V * sizeof *orr);
    if (!v->plain_mask || !v->in_vocab || !v->bytes || !v->len || !pr || !orr) {
        err_set(e, "grammar: out of memory");
        goto fail;
    }
    for (int i = 0; i < n_stop; i++) {
        if (stop_ids[i] < 0 || stop_ids[i] >= V) {
            err_set(e, "grammar: stop id %d is outside the vocabulary of %d", stop_ids[i], V);
            goto fail;
        }
        v->stop[v->n_stop++] = stop_ids[i];
    }
    int np = 0, no = 0;
    for (int32_t id = 0; id < V; id++) {
        const char *b;
        size_t n;
        if (tokenizer_token_bytes(tok, id, &b, &n) != TOKENIZER_KIND_VOCAB || n == 0) continue;
        int skip = 0;
        for (int i = 0; i < n_exclude && !skip; i++) skip = exclude[i] == id;
        for (int i = 0; i < v->n_stop && !skip; i++) skip = v->stop[i] == id;
        if (skip) continue;
        v->in_vocab[id] = 1;
        v->bytes[id] = b;
        v->len[id] = (uint32_t)n;
        if ((int)n > v->max_len) v->max_len = (int)n;
        struct tok_ref r = {(const unsigned char *)b, (uint32_t)n, id};
        if (grammar_bytes_plain(r.s, r.len)) {
            pr[np++] = r;
            v->plain_mask[id >> 5] |= 1u << (id & 31);
        } else {
            orr[no++] = r;
        }
    }
    if (trie_init(&v->plain, pr, np, e) || trie_init(&v->other, orr, no, e)) goto fail;
    free(pr);
    free(orr);
    *out = v;
    return 0;
fail:
    free(pr);
    free(orr);
    grammar_vocab_free(v);
    return -1;
}

int grammar_vocab_size(const struct grammar_vocab *v) { return v->V; }

bool grammar_vocab_is_stop(const struct grammar_vocab *v, int32_t id)
{
    for (int i = 0; i < v->n_stop; i++)
        if (v->stop[i] == id) return true;
    return false;
}

int grammar_scratch_init(struct grammar_scratch **out, const struct grammar_vocab *v, struct err *e)
{
    *out = NULL;
    struct grammar_scratch *sc = calloc(1, sizeof *sc);
    if (!sc) return err_set(e, "grammar: out of memory");
    sc->n = v->max_len + 2;
    sc->st = malloc((size_t)sc->n * sizeof *sc->st);
    if (!sc->st) {
        free(sc);
        return err_set(e, "grammar: out of memory for the mask scratch");
    }
    *out = sc;
    return 0;
}

void grammar_scratch_free(struct grammar_scratch *sc)
{
    if (!sc) return;
    free(sc->st);
    free(sc);
}

/* Depth-first over the children of trie node nd, the automaton in st[d] having read the prefix. */
static void walk(const struct trie *t, int32_t nd, struct grammar_state *st, int d, uint32_t *allow, int budget)
{
    const struct tnode *c = &t->nodes[t->nodes[nd].first];
    for (int j = 0; j < t->nodes[nd].n; j++) {
        struct grammar_state *s = &st[d + 1];
        grammar_state_copy(s, &st[d]);
        if (grammar_feed_byte(s, c[j].byte)) continue;
        if (c[j].id >= 0 && (budget <= 0 || grammar_min_bytes(s) <= (uint32_t)budget - 1))
            allow[c[j].id >> 5] |= 1u << (c[j].id & 31);
        if (c[j].n) walk(t, (int32_t)(c - t->nodes) + j, st, d + 1, allow, budget);
    }
}

int grammar_mask(const struct grammar_state *s, const struct grammar_vocab *v, struct grammar_scratch *sc, int budget,
                 uint32_t *allow)
{
    const size_t W = grammar_mask_words(v->V);
    memset(allow, 0, W * sizeof *allow);
    if (s->dead) return 0;
    grammar_state_copy(&sc->st[0], s);
    if (grammar_in_string_body(s)) {
        /* a plain token leaves the state as it is: allowed when the string can still close in time */
        if (budget <= 0 || grammar_min_bytes(s) <= (uint32_t)budget - 1)
            memcpy(allow, v->plain_mask, W * sizeof *allow);
    } else if (!grammar_finished(s)) {
        walk(&v->plain, 0, sc->st, 0, allow, budget);
    }
    if (!grammar_finished(s)) walk(&v->other, 0, sc->st, 0, allow, budget);
    if (grammar_accepting(s))
        for (int i = 0; i < v->n_stop; i++) allow[v->stop[i] >> 5] |= 1u << (v->stop[i] & 31);
    int n = 0;
    for (size_t i = 0; i < W; i++) n += __builtin_popcount(allow[i]);
    return n;
}

int grammar_advance(struct grammar_state *s, const struct grammar_vocab *v, int32_t id, struct err *e)
{
    if (grammar_vocab_is_stop(v, id)) {
        if (!grammar_accepting(s)) return err_set(e, "grammar: stop token %d before the JSON value is complete", id);
        return 0;
    }
    if (id < 0 || id >= v->V || !v->in_vocab[id])
        return err_set(e, "grammar: token %d is not text the grammar can take (special, excluded or out of range)", id);
    if (grammar_feed(s, v->bytes[id], v->len[id]))
        return err_set(e, "grammar: token %d (\"%.*s\") does not continue the JSON value", id, (int)v->len[id],
                       v->bytes[id]);
    return 0;
}
