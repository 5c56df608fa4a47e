/* grammar.c: see grammar.h. The automaton: a stack of frames, one per open value, fed one byte at a time,
 * over the table of nodes the schema compiler (grammar_schema.c) builds.
 * The schema compiler lives in grammar_schema.c, the token mask in grammar_vocab.c. The automaton is deterministic: every alternative (anyOf, a list of types, "any value") is chosen
 * by the first byte of the value, which is why anyOf alternatives must start with different bytes.
 * A frame ends in one of two ways: its last byte is its own ('}' ']' '"', the last byte of the only
 * literal left), or a byte it cannot take arrives while it could end (numbers, literals that are a
 * prefix of others); that byte then goes to the frame below. */
#include "grammar.h"
#include "grammar_impl.h"

#include <cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

/* ------------------------------------------------------------------ the automaton */

enum {
    /* objects */
    O_START = 0, O_FIRST, O_KEY, O_AFTER_KEY, O_AFTER_COLON, O_AFTER_VALUE, O_AFTER_COMMA,
    /* arrays */
    A_START = 0, A_FIRST, A_AFTER_VALUE, A_AFTER_COMMA,
    /* strings */
    S_START = 0, S_BODY, S_ESC, S_HEX, S_UTF8,
    /* numbers */
    NUM_START = 0, NUM_MINUS, NUM_ZERO, NUM_INT, NUM_DOT, NUM_FRAC, NUM_E, NUM_ESIGN, NUM_EXP,
};

enum step { ST_EAT, ST_REJECT, ST_PUSH, ST_POP_EAT, ST_POP_PASS };

static int is_ws(unsigned b) { return b == ' ' || b == '\t' || b == '\n' || b == '\r'; }

static int ws_eat(struct grammar_frame *f, unsigned b)
{
    if (!is_ws(b)) {
        f->ws = 0;
        return 0;
    }
    return ++f->ws <= GRAMMAR_WS_MAX ? 1 : -1;
}

static void frame_init(struct grammar_frame *f, int node)
{
    memset(f, 0, sizeof *f);
    f->node = (uint16_t)node;
}

static int number_can_end(const struct grammar_frame *f)
{
    return f->phase == NUM_ZERO || f->phase == NUM_INT || f->phase == NUM_FRAC || f->phase == NUM_EXP;
}

static int literal_can_end(const struct grammar *g, const struct gnode *nd, const struct grammar_frame *f)
{
    return f->pos > 0 && g->lits[nd->first + f->count].len == f->pos;
}

/* Whether a schema object has a required property at index >= from. */
static int required_left(const struct grammar *g, const struct gnode *nd, uint32_t from)
{
    for (int i = (int)from; i < nd->n; i++)
        if (g->props[nd->first + i].required) return 1;
    return 0;
}

/* One byte into the top frame. *child: the node to push for ST_PUSH (the byte goes to it). */
static enum step frame_step(const struct grammar *g, struct grammar_frame *f, unsigned b, int *child)
{
    const struct gnode *nd = &g->nodes[f->node];
    int w;
    switch (nd->kind) {
    case N_UNION:
        for (int i = 0; i < nd->n; i++) {
            int a = g->alts[nd->first + i];
            if (fb_has(g->nodes[a].first_bytes, b)) {
                frame_init(f, a); /* become the alternative, then it takes the byte */
                return frame_step(g, f, b, child);
            }
        }
        return ST_REJECT;
    case N_OBJECT_ANY:
    case N_OBJECT: {
        const int schema = nd->kind == N_OBJECT;
        switch (f->phase) {
        case O_START:
            if (b != '{') return ST_REJECT;
            f->phase = O_FIRST;
            return ST_EAT;
        case O_FIRST:
        case O_AFTER_COMMA:
            if ((w = ws_eat(f, b))) return w > 0 ? ST_EAT : ST_REJECT;
            if (b == '}' && f->phase == O_FIRST) return schema && required_left(g, nd, 0) ? ST_REJECT : ST_POP_EAT;
            if (b != '"') return ST_REJECT;
            if (!schema) {
                f->phase = O_AFTER_KEY;
                *child = NODE_STRING;
                return ST_PUSH;
            }
            /* candidates: the next properties up to the first required one */
            f->mask = 0;
            for (int i = (int)f->count; i < nd->n; i++) {
                f->mask |= 1ull << i;
                if (g->props[nd->first + i].required) break;
            }
            if (!f->mask) return ST_REJECT;
            f->phase = O_KEY;
            f->pos = 1;
            return ST_EAT;
        case O_KEY: {
            uint64_t m = 0;
            int done = -1;
            for (int i = (int)f->count; i < nd->n; i++) {
                if (!(f->mask >> i & 1)) continue;
                const struct gprop *p = &g->props[nd->first + i];
                if (p->len > f->pos && (unsigned char)p->key[f->pos] == b) {
                    m |= 1ull << i;
                    if (p->len == (size_t)f->pos + 1) done = i;
                }
            }
            if (!m) return ST_REJECT;
            f->mask = m;
            f->pos++;
            if (done >= 0) { /* the closing quote: keys are unique, so this is the one */
                f->count = (uint32_t)done + 1;
                f->phase = O_AFTER_KEY;
            }
            return ST_EAT;
        }
        case O_AFTER_KEY:
            if ((w = ws_eat(f, b))) return w > 0 ? ST_EAT : ST_REJECT;
            if (b != ':') return ST_REJECT;
            f->phase = O_AFTER_COLON;
            return ST_EAT;
        case O_AFTER_COLON:
            if ((w = ws_eat(f, b))) return w > 0 ? ST_EAT : ST_REJECT;
            f->phase = O_AFTER_VALUE;
            *child = schema ? g->props[nd->first + f->count - 1].node : NODE_ANY;
            return ST_PUSH;
        case O_AFTER_VALUE:
            if ((w = ws_eat(f, b))) return w > 0 ? ST_EAT : ST_REJECT;
            if (b == ',') {
                if (schema && (int)f->count >= nd->n) return ST_REJECT;
                f->phase = O_AFTER_COMMA;
                return ST_EAT;
            }
            if (b == '}') return schema && required_left(g, nd, f->count) ? ST_REJECT : ST_POP_EAT;
            return ST_REJECT;
        }
        return ST_REJECT;
    }
    case N_ARRAY:
        switch (f->phase) {
        case A_START:
            if (b != '[') return ST_REJECT;
            f->phase = A_FIRST;
            return ST_EAT;
        case A_FIRST:
        case A_AFTER_COMMA:
            if ((w = ws_eat(f, b))) return w > 0 ? ST_EAT : ST_REJECT;
            if (b == ']' && f->phase == A_FIRST) return nd->min_items > 0 ? ST_REJECT : ST_POP_EAT;
            if (nd->max_items >= 0 && (int)f->count >= nd->max_items) return ST_REJECT;
            f->phase = A_AFTER_VALUE;
            f->count++;
            *child = nd->items;
            return ST_PUSH;
        case A_AFTER_VALUE:
            if ((w = ws_eat(f, b))) return w > 0 ? ST_EAT : ST_REJECT;
            if (b == ',') {
                if (nd->max_items >= 0 && (int)f->count >= nd->max_items) return ST_REJECT;
                f->phase = A_AFTER_COMMA;
                return ST_EAT;
            }
            if (b == ']') return (int)f->count >= nd->min_items ? ST_POP_EAT : ST_REJECT;
            return ST_REJECT;
        }
        return ST_REJECT;
    case N_STRING:
        switch (f->phase) {
        case S_START:
            if (b != '"') return ST_REJECT;
            f->phase = S_BODY;
            return ST_EAT;
        case S_BODY:
            if (b == '"') return ST_POP_EAT;
            if (b == '\\') { f->phase = S_ESC; return ST_EAT; }
            if (b < 0x20) return ST_REJECT;
            if (b < 0x80) return ST_EAT;
            /* UTF-8 (RFC 3629): the lead byte fixes the count and the range of the next byte */
            f->phase = S_UTF8;
            if (b >= 0xC2 && b <= 0xDF) { f->aux = 1; f->pos = 0x80 | 0xBF << 8; }
            else if (b == 0xE0) { f->aux = 2; f->pos = 0xA0 | 0xBF << 8; }
            else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) { f->aux = 2; f->pos = 0x80 | 0xBF << 8; }
            else if (b == 0xED) { f->aux = 2; f->pos = 0x80 | 0x9F << 8; }
            else if (b == 0xF0) { f->aux = 3; f->pos = 0x90 | 0xBF << 8; }
            else if (b >= 0xF1 && b <= 0xF3) { f->aux = 3; f->pos = 0x80 | 0xBF << 8; }
            else if (b == 0xF4) { f->aux = 3; f->pos = 0x80 | 0x8F << 8; }
            else return ST_REJECT;
            return ST_EAT;
        case S_UTF8:
            if (b < (f->pos & 0xFF) || b > (unsigned)(f->pos >> 8)) return ST_REJECT;
            f->pos = 0x80 | 0xBF << 8;
            if (--f->aux == 0) f->phase = S_BODY;
            return ST_EAT;
        case S_ESC:
            if (b == 'u') { f->phase = S_HEX; f->aux = 4; return ST_EAT; }
            if (!strchr("\"\\/bfnrt", (int)b) || b == 0) return ST_REJECT;
            f->phase = S_BODY;
            return ST_EAT;
        case S_HEX:
            if (!((b >= '0' && b <= '9') || (b >= 'a' && b <= 'f') || (b >= 'A' && b <= 'F'))) return ST_REJECT;
            if (--f->aux == 0) f->phase = S_BODY;
            return ST_EAT;
        }
        return ST_REJECT;
    case N_NUMBER:
    case N_INTEGER: {
        const int real = nd->kind == N_NUMBER;
        const int digit = b >= '0' && b <= '9';
        int next = -1;
        switch (f->phase) {
        case NUM_START: next = b == '-' ? NUM_MINUS : b == '0' ? NUM_ZERO : digit ? NUM_INT : -1; break;
        case NUM_MINUS: next = b == '0' ? NUM_ZERO : digit ? NUM_INT : -1; break;
        case NUM_ZERO: next = real && b == '.' ? NUM_DOT : real && (b == 'e' || b == 'E') ? NUM_E : -1; break;
        case NUM_INT: next = digit ? NUM_INT : real && b == '.' ? NUM_DOT : real && (b == 'e' || b == 'E') ? NUM_E : -1; break;
        case NUM_DOT: next = digit ? NUM_FRAC : -1; break;
        case NUM_FRAC: next = digit ? NUM_FRAC : b == 'e' || b == 'E' ? NUM_E : -1; break;
        case NUM_E: next = b == '+' || b == '-' ? NUM_ESIGN : digit ? NUM_EXP : -1; break;
        case NUM_ESIGN: next = digit ? NUM_EXP : -1; break;
        case NUM_EXP: next = digit ? NUM_EXP : -1; break;
        }
        /* a byte that leads to a phase which needs one more byte (after '-', '.', 'e', the sign)
         * only where that byte still fits: no number is cut off inside */
        const int need = next == NUM_MINUS || next == NUM_DOT || next == NUM_E || next == NUM_ESIGN;
        if (next >= 0 && f->pos + 1 + need <= GRAMMAR_NUM_MAX) {
            f->phase = (uint8_t)next;
            f->pos++;
            return ST_EAT;
        }
        return number_can_end(f) ? ST_POP_PASS : ST_REJECT;
    }
    case N_LITERAL: {
        /* candidates lits[first + count .. first + aux), sorted: those that go on with b form a range */
        if (f->pos == 0) f->aux = (uint16_t)nd->n;
        int lo = -1, hi = -1;
        for (int i = (int)f->count; i < f->aux; i++) {
            const struct glit *l = &g->lits[nd->first + i];
            if (l->len > f->pos && (unsigned char)l->s[f->pos] == b) {
                if (lo < 0) lo = i;
                hi = i + 1;
            } else if (lo >= 0) break;
        }
        if (lo < 0) return literal_can_end(g, nd, f) ? ST_POP_PASS : ST_REJECT;
        f->count = (uint32_t)lo;
        f->aux = (uint16_t)hi;
        f->pos++;
        if (hi - lo == 1 && g->lits[nd->first + lo].len == f->pos) return ST_POP_EAT;
        return ST_EAT;
    }
    }
    return ST_REJECT;
}

void grammar_state_init(struct grammar_state *s, const struct grammar *g)
{
    s->g = g;
    s->depth = 1;
    s->started = 0;
    s->dead = 0;
    frame_init(&s->f[0], g->root);
}

void grammar_state_copy(struct grammar_state *dst, const struct grammar_state *src)
{
    dst->g = src->g;
    dst->depth = src->depth;
    dst->started = src->started;
    dst->dead = src->dead;
    memcpy(dst->f, src->f, (size_t)src->depth * sizeof *src->f);
}

static int feed_byte(struct grammar_state *s, unsigned b)
{
    if (s->dead) return -1;
    s->started = 1;
    for (;;) {
        if (s->depth == 0) goto reject;
        int child = -1;
        switch (frame_step(s->g, &s->f[s->depth - 1], b, &child)) {
        case ST_EAT: return 0;
        case ST_REJECT: goto reject;
        case ST_POP_EAT: s->depth--; return 0;
        case ST_POP_PASS: s->depth--; continue;
        case ST_PUSH:
            if (s->depth >= GRAMMAR_MAX_DEPTH) goto reject;
            frame_init(&s->f[s->depth++], child);
            continue;
        }
    }
reject:
    s->dead = 1;
    return -1;
}

int grammar_feed(struct grammar_state *s, const void *bytes, size_t n)
{
    const unsigned char *p = bytes;
    for (size_t i = 0; i < n; i++)
        if (feed_byte(s, p[i])) return -1;
    return 0;
}

bool grammar_accepting(const struct grammar_state *s)
{
    if (s->dead || !s->started) return false;
    if (s->depth == 0) return true;
    if (s->depth != 1) return false;
    const struct grammar_frame *f = &s->f[0];
    const struct gnode *nd = &s->g->nodes[f->node];
    if (nd->kind == N_NUMBER || nd->kind == N_INTEGER) return number_can_end(f);
    if (nd->kind == N_LITERAL) return literal_can_end(s->g, nd, f);
    return false;
}

bool grammar_finished(const struct grammar_state *s) { return s->dead || (s->started && s->depth == 0); }

/* Bytes still needed to close frame f (its open child, if any, counted by the child's own frame). */
static uint32_t frame_min_bytes(const struct grammar *g, const struct grammar_frame *f)
{
    const struct gnode *nd = &g->nodes[f->node];
    switch (nd->kind) {
    case N_UNION: return nd->minlen;
    case N_OBJECT_ANY:
        switch (f->phase) {
        case O_START: return 2;
        case O_FIRST: case O_AFTER_VALUE: return 1;
        case O_AFTER_KEY: return 3;     /* :0} */
        case O_AFTER_COLON: return 2;   /* 0} */
        case O_AFTER_COMMA: return 5;   /* "":0} */
        }
        return 0;
    case N_OBJECT: {
        const struct gprop *p = g->props + nd->first;
        const uint32_t rest = (int)f->count < nd->n ? p[f->count].req_rest : 0;
        switch (f->phase) {
        case O_START: return nd->minlen;
        case O_AFTER_VALUE: return sat_add(rest, 1);
        case O_FIRST: return rest ? rest : 1; /* the first property has no comma; rest counts one */
        case O_AFTER_KEY: case O_AFTER_COLON: {
            const struct gprop *c = &p[f->count - 1];
            const uint32_t after = (int)f->count < nd->n ? p[f->count].req_rest : 0;
            return sat_add(sat_add(g->nodes[c->node].minlen, f->phase == O_AFTER_KEY), sat_add(after, 1));
        }
        case O_AFTER_COMMA: case O_KEY: {
            /* the cheapest candidate key, finished, then its value and the required ones after it */
            uint32_t best = LEN_INF;
            for (int i = (int)f->count; i < nd->n; i++) {
                if (f->phase == O_KEY && !(f->mask >> i & 1)) continue;
                const uint32_t after = i + 1 < nd->n ? p[i + 1].req_rest : 0;
                const uint32_t key = f->phase == O_KEY ? (uint32_t)p[i].len - f->pos : (uint32_t)p[i].len;
                const uint32_t c = sat_add(sat_add(key + 1, g->nodes[p[i].node].minlen), sat_add(after, 1));
                if (c < best) best = c;
                if (p[i].required) break;
            }
            return best;
        }
        }
        return 0;
    }
    case N_ARRAY: {
        const uint32_t item = sat_add(g->nodes[nd->items].minlen, 1); /* ",item" */
        const uint32_t left = (int)f->count < nd->min_items ? (uint32_t)(nd->min_items - (int)f->count) : 0;
        switch (f->phase) {
        case A_START: return nd->minlen;
        case A_FIRST: return nd->min_items > 0 ? sat_add(sat_mul(item, left), 0) : 1;
        case A_AFTER_VALUE: return sat_add(sat_mul(item, left), 1);
        case A_AFTER_COMMA: return sat_add(sat_mul(item, left ? left : 1), 0);
        }
        return 0;
    }
    case N_STRING:
        switch (f->phase) {
        case S_START: return 2;
        case S_BODY: return 1;
        case S_ESC: return 2;
        case S_HEX: case S_UTF8: return (uint32_t)f->aux + 1;
        }
        return 0;
    case N_NUMBER: case N_INTEGER:
        return f->phase == NUM_START || f->phase == NUM_MINUS || f->phase == NUM_DOT || f->phase == NUM_E ||
               f->phase == NUM_ESIGN;
    case N_LITERAL: {
        if (f->pos == 0) return nd->minlen;
        uint32_t best = LEN_INF;
        for (int i = (int)f->count; i < f->aux; i++) {
            const uint32_t c = (uint32_t)g->lits[nd->first + i].len - f->pos;
            if (c < best) best = c;
        }
        return best;
    }
    }
    return 0;
}

uint32_t grammar_min_bytes(const struct grammar_state *s)
{
    if (s->dead) return LEN_INF;
    uint32_t n = 0;
    for (int i = 0; i < s->depth; i++) n = sat_add(n, frame_min_bytes(s->g, &s->f[i]));
    return n;
}

/* ---- for the token mask (grammar_impl.h) ---- */
int grammar_feed_byte(struct grammar_state *s, unsigned b) { return feed_byte(s, b); }

int grammar_in_string_body(const struct grammar_state *s)
{
    const struct grammar_frame *top = s->depth ? &s->f[s->depth - 1] : NULL;
    return top && s->g->nodes[top->node].kind == N_STRING && top->phase == S_BODY;
}

/* Whether the bytes are plain string content (see struct grammar_vocab in grammar_vocab.c). */
int grammar_bytes_plain(const unsigned char *s, uint32_t n)
{
    for (uint32_t i = 0; i < n;) {
        unsigned b = s[i];
        if (b < 0x20 || b == '"' || b == '\\') return 0;
        if (b < 0x80) { i++; continue; }
        /* a whole character, checked by the string automaton's own rules */
        struct grammar_frame f;
        memset(&f, 0, sizeof f);
        f.phase = S_BODY;
        static const struct gnode str = {.kind = N_STRING};
        struct grammar g1 = {.nodes = (struct gnode *)&str};
        int child;
        uint32_t j = i;
        do {
            if (j >= n || frame_step(&g1, &f, s[j], &child) != ST_EAT) return 0;
            j++;
        } while (f.phase != S_BODY);
        i = j;
    }
    return 1;
}
