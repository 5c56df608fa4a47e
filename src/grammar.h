/* grammar.h: constrained decoding for response_format (issue 17 item 2). A byte-level automaton for
 * "one JSON object" ({"type":"json_object"}) or for a JSON Schema subset ({"type":"json_schema"}),
 * and the token mask it induces over the tokenizer's vocabulary.
 * Owns: the schema compiler (refusals name the keyword), the automaton (struct grammar_state, one
 * per request, a plain value: copy it with grammar_state_copy), the vocabulary trie (struct
 * grammar_vocab, one per tokenizer, shared read-only by every request) and the mask.
 * Does not own: the sampler (sampler_sample_masked applies the mask), the server's request parsing,
 * what a turn does at max_tokens (docs/GRAMMAR.md: the answer is then a prefix, finish_reason
 * "length").
 * Invariants: a compiled struct grammar and a struct grammar_vocab are immutable after creation (any
 * number of requests may share them); the automaton accepts exactly the documented language
 * (docs/GRAMMAR.md): no whitespace before the root value nor after it, at most GRAMMAR_WS_MAX
 * whitespace bytes in a row between tokens, nesting at most GRAMMAR_MAX_DEPTH, numbers at most
 * GRAMMAR_NUM_MAX bytes, strings valid UTF-8 without raw control bytes. */
#ifndef MINICPMV_GRAMMAR_H
#define MINICPMV_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

#define GRAMMAR_MAX_DEPTH 32    /* open containers + the value inside them (frames of the stack) */
#define GRAMMAR_WS_MAX 16       /* whitespace bytes in one run (between two JSON tokens) */
#define GRAMMAR_NUM_MAX 32      /* bytes of one number */
#define GRAMMAR_MAX_PROPS 64    /* properties of one schema object */
#define GRAMMAR_MAX_NODES 4096  /* compiled schema nodes */

struct grammar;     /* a compiled schema (immutable) */
struct tokenizer;

/* Compiles a response format. schema_json NULL: "json_object" (the answer is one JSON object of
 * any content). Otherwise the text of a JSON Schema (the value of json_schema.schema), compiled
 * into the automaton; a keyword outside the supported subset, or a schema that allows no value,
 * is an error that names the keyword and where it stands (e.g. "schema.properties.age: keyword
 * 'pattern' is not supported"). */
int grammar_compile(struct grammar **out, const char *schema_json, struct err *e);
void grammar_free(struct grammar *g); /* accepts NULL */

/* One frame of the automaton's stack (the layout is private to grammar.c; the struct is public so a
 * state is a plain value without allocation). */
struct grammar_frame {
    uint16_t node;      /* compiled node */
    uint8_t phase;      /* where inside the node */
    uint8_t ws;         /* whitespace bytes in the current run */
    uint16_t pos;       /* bytes matched of a literal / key; digits of a number */
    uint16_t aux;       /* UTF-8 continuation bytes still due; \u hex digits due; literal range end */
    uint32_t count;     /* items so far (arrays); next property index (objects); literal range start */
    uint64_t mask;      /* candidate keys still matching (schema objects) */
};

/* The automaton's state for one request. Copy with grammar_state_copy (copies only the used frames). */
struct grammar_state {
    const struct grammar *g;
    int depth;          /* frames in use; 0 after the root value is complete */
    int started;        /* 1 once the root value has begun */
    int dead;           /* 1 after a rejected byte (grammar_advance_* failed); the state is then unusable */
    struct grammar_frame f[GRAMMAR_MAX_DEPTH];
};

void grammar_state_init(struct grammar_state *s, const struct grammar *g);
void grammar_state_copy(struct grammar_state *dst, const struct grammar_state *src);
/* Feeds bytes; 0 when the automaton accepts them all, -1 at the first byte it rejects (the state is
 * then dead). */
int grammar_feed(struct grammar_state *s, const void *bytes, size_t n);
/* Whether the bytes fed so far are one complete value of the language (the answer may end here). */
bool grammar_accepting(const struct grammar_state *s);
/* Whether the automaton can take no byte at all (the root value is complete and cannot go on). */
bool grammar_finished(const struct grammar_state *s);

/* ---- the token mask ---- */

/* The vocabulary as a byte trie: every vocabulary token of tok (added/special tokens excluded: they
 * are markup, not text) under its raw bytes, plus the stop ids (allowed only in an accepting state).
 * Ids in exclude[] (may be NULL) are left out as well. */
struct grammar_vocab;
int grammar_vocab_init(struct grammar_vocab **out, const struct tokenizer *tok, const int32_t *stop_ids,
                       int n_stop, const int32_t *exclude, int n_exclude, struct err *e);
void grammar_vocab_free(struct grammar_vocab *v); /* accepts NULL */
int grammar_vocab_size(const struct grammar_vocab *v); /* ids covered: the tokenizer's vocab size */

/* Words of the bitmask for vocab_size ids: bit (id % 32) of word id / 32. */
static inline size_t grammar_mask_words(int vocab_size) { return ((size_t)vocab_size + 31) / 32; }

/* Per-request scratch of the mask walk (one per request: the mask of two requests may run at once). */
struct grammar_scratch;
int grammar_scratch_init(struct grammar_scratch **out, const struct grammar_vocab *v, struct err *e);
void grammar_scratch_free(struct grammar_scratch *sc); /* accepts NULL */

/* Writes allow[grammar_mask_words(V)]: bit set for every id whose bytes the automaton accepts from s
 * (all of them, as one piece), and for the stop ids when s is accepting. budget > 0: the tokens left
 * for the answer, this one included (max_tokens - generated); a token is then allowed only when the
 * value can still be closed in the budget-1 tokens after it (grammar_min_bytes of the state after it
 * <= budget - 1, one byte per token at worst), so an answer given at least grammar_min_bytes of the
 * initial state in tokens always ends complete. budget <= 0: no such limit. Returns the number of ids
 * allowed (0: no token can continue; the caller ends the answer). */
int grammar_mask(const struct grammar_state *s, const struct grammar_vocab *v, struct grammar_scratch *sc, int budget,
                 uint32_t *allow);
/* The fewest bytes that complete the value from s (0 when s is accepting); a large number (2^30) for a
 * dead state or a schema whose values are that long. */
uint32_t grammar_min_bytes(const struct grammar_state *s);
/* Advances s by token id (its bytes; a stop id only checks that s is accepting). 0, or -1 with an
 * error naming the token when the automaton rejects it (a token the mask did not allow). */
int grammar_advance(struct grammar_state *s, const struct grammar_vocab *v, int32_t id, struct err *e);
/* Whether id is one of the vocabulary's stop ids. */
bool grammar_vocab_is_stop(const struct grammar_vocab *v, int32_t id);

#endif
