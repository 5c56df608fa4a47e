/* grammar_impl.h: the compiled schema shared by the compiler (grammar_schema.c) and the automaton
 * (grammar.c), and what the token mask (grammar_vocab.c) needs from the automaton. */
#ifndef MINICPMV_GRAMMAR_IMPL_H
#define MINICPMV_GRAMMAR_IMPL_H

#include <stdint.h>
#include <stddef.h>

#include "grammar.h"

/* ---- the compiled schema ---- */
enum node_kind { N_UNION, N_OBJECT_ANY, N_OBJECT, N_ARRAY, N_STRING, N_NUMBER, N_INTEGER, N_LITERAL };

struct gnode {
    uint8_t kind;
    int items;               /* N_ARRAY: the item node */
    int min_items, max_items; /* N_ARRAY: max -1 = unbounded */
    int first, n;            /* N_OBJECT: props[first..+n); N_LITERAL: lits; N_UNION: alts */
    uint32_t first_bytes[8]; /* bytes a value of this node can start with */
    uint32_t minlen;         /* bytes of the shortest value (saturates at LEN_INF) */
};

struct gprop {
    char *key;               /* the key as JSON text, quotes included */
    size_t len;
    int node;
    int required;
    uint32_t req_rest;       /* bytes of ",key:value" (shortest values) for every required property from here on */
};

struct glit {
    char *s;                 /* one literal's JSON text (compact) */
    size_t len;
};

struct grammar {
    struct gnode *nodes;
    int n_nodes, cap_nodes;
    struct gprop *props;
    int n_props, cap_props;
    struct glit *lits;
    int n_lits, cap_lits;
    int *alts;
    int n_alts, cap_alts;
    int root;
};

/* the nodes every grammar starts with ("any value" and its parts) */
enum { NODE_ANY = 0, NODE_OBJECT_ANY, NODE_ARRAY_ANY, NODE_STRING, NODE_NUMBER, NODE_WORDS };

/* sets of first bytes */
static inline void fb_set(uint32_t *fb, unsigned b) { fb[b >> 5] |= 1u << (b & 31); }
static inline int fb_has(const uint32_t *fb, unsigned b) { return fb[b >> 5] >> (b & 31) & 1; }

#define LEN_INF (1u << 30)
static inline uint32_t sat_add(uint32_t a, uint32_t b) { return a + b >= LEN_INF ? LEN_INF : a + b; }
static inline uint32_t sat_mul(uint32_t a, uint32_t b) { return b && a >= LEN_INF / b ? LEN_INF : a * b; }


/* Feeds one byte; non-zero when the automaton refuses it (s is then dead). */
int grammar_feed_byte(struct grammar_state *s, unsigned b);
/* 1 inside a string's body with no character or escape half done: a "plain" token leaves s unchanged. */
int grammar_in_string_body(const struct grammar_state *s);

/* 1 when the bytes are plain string content: every byte >= 0x20, none '"' or '\\', whole UTF-8
 * characters only (checked by the string automaton's own rules). */
int grammar_bytes_plain(const unsigned char *s, uint32_t n);

#endif
