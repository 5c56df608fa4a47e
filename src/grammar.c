/* grammar.c: see grammar.h. Three parts: the schema compiler (JSON Schema text -> a table of nodes),
 * the automaton (a stack of frames, one per open value, fed one byte at a time), and the token mask
 * (the vocabulary's byte trie walked together with copies of the automaton, dead branches pruned).
 * The automaton is deterministic: every alternative (anyOf, a list of types, "any value") is chosen
 * by the first byte of the value, which is why anyOf alternatives must start with different bytes.
 * A frame ends in one of two ways: its last byte is its own ('}' ']' '"', the last byte of the only
 * literal left), or a byte it cannot take arrives while it could end (numbers, literals that are a
 * prefix of others); that byte then goes to the frame below. */
#include "grammar.h"

#include <cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

/* ------------------------------------------------------------------ compiled schema */

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

#define LEN_INF (1u << 30)
static uint32_t sat_add(uint32_t a, uint32_t b) { return a + b >= LEN_INF ? LEN_INF : a + b; }
static uint32_t sat_mul(uint32_t a, uint32_t b) { return b && a >= LEN_INF / b ? LEN_INF : a * b; }

/* the nodes every grammar starts with ("any value" and its parts) */
enum { NODE_ANY = 0, NODE_OBJECT_ANY, NODE_ARRAY_ANY, NODE_STRING, NODE_NUMBER, NODE_WORDS };

static int grow(void **p, int *cap, int need, size_t elem)
{
    if (need <= *cap) return 0;
    int c = *cap ? *cap * 2 : 16;
    while (c < need) c *= 2;
    void *q = realloc(*p, (size_t)c * elem);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

static void fb_set(uint32_t *fb, unsigned b) { fb[b >> 5] |= 1u << (b & 31); }
static int fb_has(const uint32_t *fb, unsigned b) { return fb[b >> 5] >> (b & 31) & 1; }

static int node_new(struct grammar *g, enum node_kind k, struct err *e)
{
    if (g->n_nodes >= GRAMMAR_MAX_NODES)
        return err_set(e, "schema: more than %d nodes (the schema is too large)", GRAMMAR_MAX_NODES);
    if (grow((void **)&g->nodes, &g->cap_nodes, g->n_nodes + 1, sizeof *g->nodes))
        return err_set(e, "schema: out of memory");
    struct gnode *n = &g->nodes[g->n_nodes];
    memset(n, 0, sizeof *n);
    n->kind = (uint8_t)k;
    n->items = NODE_ANY;
    n->max_items = -1;
    n->minlen = k == N_NUMBER || k == N_INTEGER ? 1 : 2;
    switch (k) {
    case N_OBJECT_ANY: case N_OBJECT: fb_set(n->first_bytes, '{'); break;
    case N_ARRAY: fb_set(n->first_bytes, '['); break;
    case N_STRING: fb_set(n->first_bytes, '"'); break;
    case N_NUMBER: case N_INTEGER:
        fb_set(n->first_bytes, '-');
        for (int c = '0'; c <= '9'; c++) fb_set(n->first_bytes, (unsigned)c);
        break;
    default: break;
    }
    return g->n_nodes++;
}

static int cmp_lit(const void *a, const void *b)
{
    const struct glit *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->s, y->s, n);
    if (c) return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

/* A literal node from JSON texts (taken over: freed with the grammar); sorted, duplicates dropped. */
static int literal_node(struct grammar *g, char **texts, int n, const char *where, struct err *e)
{
    int rc = -1, id = -1;
    if (n == 0) {
        err_set(e, "%s: enum is empty (no value is allowed)", where);
        goto out;
    }
    if (grow((void **)&g->lits, &g->cap_lits, g->n_lits + n, sizeof *g->lits)) {
        err_set(e, "schema: out of memory");
        goto out;
    }
    if ((id = node_new(g, N_LITERAL, e)) < 0) goto out;
    struct glit *l = g->lits + g->n_lits;
    for (int i = 0; i < n; i++)
        if (strlen(texts[i]) > 4096) {
            err_set(e, "%s: an enum/const value of %zu bytes (at most 4096 as JSON text)", where, strlen(texts[i]));
            goto out;
        }
    for (int i = 0; i < n; i++) {
        l[i].s = texts[i];
        l[i].len = strlen(texts[i]);
        texts[i] = NULL;
    }
    qsort(l, (size_t)n, sizeof *l, cmp_lit);
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (k > 0 && cmp_lit(&l[k - 1], &l[i]) == 0) {
            free(l[i].s);
            continue;
        }
        l[k++] = l[i];
    }
    struct gnode *nd = &g->nodes[id];
    nd->first = g->n_lits;
    nd->n = k;
    nd->minlen = LEN_INF;
    for (int i = 0; i < k; i++) {
        fb_set(nd->first_bytes, (unsigned char)l[i].s[0]);
        if (l[i].len < nd->minlen) nd->minlen = (uint32_t)l[i].len;
    }
    g->n_lits += k;
    rc = id;
out:
    for (int i = 0; i < n; i++) free(texts[i]);
    return rc;
}

static int words_node(struct grammar *g, const char *const *words, int n, struct err *e)
{
    char *t[3];
    for (int i = 0; i < n; i++)
        if (!(t[i] = strdup(words[i]))) {
            for (int j = 0; j < i; j++) free(t[j]);
            return err_set(e, "schema: out of memory");
        }
    return literal_node(g, t, n, "schema", e);
}

/* A union of alternatives chosen by first byte; they must start with different bytes. */
static int union_node(struct grammar *g, const int *alt, int n, const char *where, const char *what, struct err *e)
{
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            for (unsigned b = 0; b < 256; b++)
                if (fb_has(g->nodes[alt[i]].first_bytes, b) && fb_has(g->nodes[alt[j]].first_bytes, b))
                    return err_set(e, "%s: %s alternatives %d and %d can both start with '%c': the automaton "
                                      "picks an alternative by the first byte of the value, so alternatives "
                                      "must be of different JSON types (or enums that start differently)",
                                   where, what, i, j, (int)b);
    if (grow((void **)&g->alts, &g->cap_alts, g->n_alts + n, sizeof *g->alts)) return err_set(e, "schema: out of memory");
    int id = node_new(g, N_UNION, e);
    if (id < 0) return -1;
    struct gnode *nd = &g->nodes[id];
    nd->first = g->n_alts;
    nd->n = n;
    nd->minlen = LEN_INF;
    for (int i = 0; i < n; i++) {
        if (g->nodes[alt[i]].minlen < nd->minlen) nd->minlen = g->nodes[alt[i]].minlen;
        g->alts[g->n_alts++] = alt[i];
        for (int w = 0; w < 8; w++) nd->first_bytes[w] |= g->nodes[alt[i]].first_bytes[w];
    }
    return id;
}

static int is_annotation(const char *k)
{
    static const char *const ann[] = {"title", "description", "$schema", "$id", "$comment", "examples", "default",
                                      "deprecated", "readOnly", "writeOnly"};
    for (size_t i = 0; i < sizeof ann / sizeof *ann; i++)
        if (!strcmp(k, ann[i])) return 1;
    return 0;
}

static const char *json_type_of(const cJSON *v)
{
    if (cJSON_IsObject(v)) return "object";
    if (cJSON_IsArray(v)) return "array";
    if (cJSON_IsString(v)) return "string";
    if (cJSON_IsBool(v)) return "boolean";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsNumber(v)) return v->valuedouble == floor(v->valuedouble) ? "integer" : "number";
    return "?";
}

static int type_admits(const char *type, const cJSON *v)
{
    const char *t = json_type_of(v);
    return !strcmp(type, t) || (!strcmp(type, "number") && !strcmp(t, "integer"));
}

static int compile_schema(struct grammar *g, const cJSON *s, const char *where, int depth, struct err *e);

/* One type of a schema object, with the keywords that type takes. */
static int compile_type(struct grammar *g, const cJSON *s, const char *type, const char *where, int depth,
                        struct err *e)
{
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties");
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required");
    const cJSON *addl = cJSON_GetObjectItemCaseSensitive(s, "additionalProperties");
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(s, "items");
    const cJSON *mn = cJSON_GetObjectItemCaseSensitive(s, "minItems");
    const cJSON *mx = cJSON_GetObjectItemCaseSensitive(s, "maxItems");
    char sub[512];
    if (!strcmp(type, "string")) return NODE_STRING;
    if (!strcmp(type, "number")) return NODE_NUMBER;
    if (!strcmp(type, "integer")) return node_new(g, N_INTEGER, e);
    if (!strcmp(type, "boolean")) return words_node(g, (const char *const[]){"true", "false"}, 2, e);
    if (!strcmp(type, "null")) return words_node(g, (const char *const[]){"null"}, 1, e);
    if (!strcmp(type, "array")) {
        int it = NODE_ANY;
        if (items) {
            if (!cJSON_IsObject(items))
                return err_set(e, "%s.items: must be one schema object (a list of schemas, tuple form, is not supported)", where);
            snprintf(sub, sizeof sub, "%s.items", where);
            if ((it = compile_schema(g, items, sub, depth + 1, e)) < 0) return -1;
        }
        int lo = 0, hi = -1;
        if (mn) {
            if (!cJSON_IsNumber(mn) || mn->valuedouble < 0 || mn->valuedouble > 1e6 || mn->valuedouble != (int)mn->valuedouble)
                return err_set(e, "%s.minItems: must be an integer from 0 to 1000000", where);
            lo = (int)mn->valuedouble;
        }
        if (mx) {
            if (!cJSON_IsNumber(mx) || mx->valuedouble < 0 || mx->valuedouble > 1e6 || mx->valuedouble != (int)mx->valuedouble)
                return err_set(e, "%s.maxItems: must be an integer from 0 to 1000000", where);
            hi = (int)mx->valuedouble;
        }
        if (hi >= 0 && hi < lo) return err_set(e, "%s: maxItems %d < minItems %d (no array is allowed)", where, hi, lo);
        if (it == NODE_ANY && lo == 0 && hi < 0) return NODE_ARRAY_ANY;
        int id = node_new(g, N_ARRAY, e);
        if (id < 0) return -1;
        g->nodes[id].items = it;
        g->nodes[id].min_items = lo;
        g->nodes[id].max_items = hi;
        /* "[" item ("," item)* "]" */
        if (lo > 0) g->nodes[id].minlen = sat_add(sat_mul(sat_add(g->nodes[it].minlen, 1), (uint32_t)lo), 1);
        return id;
    }
    if (!strcmp(type, "object")) {
        if (addl && !cJSON_IsBool(addl))
            return err_set(e, "%s.additionalProperties: only true or false is supported, not a schema", where);
        if (props && !cJSON_IsObject(props)) return err_set(e, "%s.properties: must be an object", where);
        if (req && !cJSON_IsArray(req)) return err_set(e, "%s.required: must be an array of strings", where);
        int np = props ? cJSON_GetArraySize(props) : 0;
        if (np > GRAMMAR_MAX_PROPS)
            return err_set(e, "%s.properties: %d properties, more than the %d supported", where, np, GRAMMAR_MAX_PROPS);
        const cJSON *r;
        cJSON_ArrayForEach(r, req) {
            if (!cJSON_IsString(r)) return err_set(e, "%s.required: must be an array of strings", where);
            if (!props || !cJSON_GetObjectItemCaseSensitive(props, r->valuestring))
                return err_set(e, "%s.required: '%s' is not in properties (it could not be generated)", where,
                               r->valuestring);
        }
        if (np == 0 && !cJSON_IsFalse(addl)) return NODE_OBJECT_ANY;
        /* children first (they append nodes and props), then this node's props in schema order */
        int child[GRAMMAR_MAX_PROPS];
        int i = 0;
        const cJSON *p;
        cJSON_ArrayForEach(p, props) {
            for (const cJSON *q = props->child; q != p; q = q->next)
                if (!strcmp(q->string, p->string)) return err_set(e, "%s.properties: '%s' appears twice", where, p->string);
            snprintf(sub, sizeof sub, "%s.properties.%s", where, p->string);
            if (strlen(p->string) > 1024) return err_set(e, "%s.properties: a key of %zu bytes (at most 1024)", where, strlen(p->string));
            if (!cJSON_IsObject(p) && !cJSON_IsBool(p)) return err_set(e, "%s: must be a schema object", sub);
            if (cJSON_IsFalse(p)) return err_set(e, "%s: the schema false is not supported", sub);
            if (cJSON_IsTrue(p)) child[i++] = NODE_ANY;
            else if ((child[i++] = compile_schema(g, p, sub, depth + 1, e)) < 0) return -1;
        }
        if (grow((void **)&g->props, &g->cap_props, g->n_props + np, sizeof *g->props)) return err_set(e, "schema: out of memory");
        int id = node_new(g, N_OBJECT, e);
        if (id < 0) return -1;
        g->nodes[id].first = g->n_props;
        g->nodes[id].n = np;
        i = 0;
        cJSON_ArrayForEach(p, props) {
            struct gprop *gp = &g->props[g->n_props++];
            memset(gp, 0, sizeof *gp);
            cJSON *k = cJSON_CreateString(p->string);
            gp->key = k ? cJSON_PrintUnformatted(k) : NULL;
            cJSON_Delete(k);
            if (!gp->key) return err_set(e, "schema: out of memory");
            gp->len = strlen(gp->key);
            gp->node = child[i++];
            cJSON_ArrayForEach(r, req) if (!strcmp(r->valuestring, p->string)) gp->required = 1;
        }
        uint32_t rest = 0;
        for (int j = np - 1; j >= 0; j--) {
            struct gprop *gp = &g->props[g->nodes[id].first + j];
            if (gp->required) rest = sat_add(rest, sat_add((uint32_t)gp->len + 2, g->nodes[gp->node].minlen));
            gp->req_rest = rest;
        }
        /* "{" + the required properties with commas (one comma fewer than properties) + "}" */
        g->nodes[id].minlen = rest ? sat_add(rest, 1) : 2;
        return id;
    }
    return err_set(e, "%s.type: '%s' is not a JSON Schema type (object, array, string, number, integer, boolean, null)",
                   where, type);
}

static int compile_schema(struct grammar *g, const cJSON *s, const char *where, int depth, struct err *e)
{
    if (!cJSON_IsObject(s)) return err_set(e, "%s: a schema must be a JSON object", where);
    if (depth >= GRAMMAR_MAX_DEPTH - 1)
        return err_set(e, "%s: schema nested deeper than %d levels", where, GRAMMAR_MAX_DEPTH - 2);
    static const char *const known[] = {"type", "properties", "required", "additionalProperties", "items",
                                        "minItems", "maxItems", "enum", "const", "anyOf"};
    const cJSON *k;
    cJSON_ArrayForEach(k, s) {
        int ok = is_annotation(k->string);
        for (size_t i = 0; !ok && i < sizeof known / sizeof *known; i++) ok = !strcmp(k->string, known[i]);
        if (!ok) return err_set(e, "%s: keyword '%s' is not supported (docs/GRAMMAR.md lists the supported subset)", where, k->string);
    }
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(s, "type");
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(s, "enum");
    const cJSON *cn = cJSON_GetObjectItemCaseSensitive(s, "const");
    const cJSON *any = cJSON_GetObjectItemCaseSensitive(s, "anyOf");
    if (any) {
        cJSON_ArrayForEach(k, s)
            if (!is_annotation(k->string) && strcmp(k->string, "anyOf"))
                return err_set(e, "%s: keyword '%s' next to 'anyOf' is not supported (move it into each alternative)",
                               where, k->string);
        int n = cJSON_GetArraySize(any);
        if (!cJSON_IsArray(any) || n < 1 || n > 16)
            return err_set(e, "%s.anyOf: must be an array of 1 to 16 schemas", where);
        int alt[16];
        char sub[512];
        for (int i = 0; i < n; i++) {
            snprintf(sub, sizeof sub, "%s.anyOf[%d]", where, i);
            if ((alt[i] = compile_schema(g, cJSON_GetArrayItem(any, i), sub, depth, e)) < 0) return -1;
        }
        return n == 1 ? alt[0] : union_node(g, alt, n, where, "anyOf", e);
    }
    if (en || cn) {
        if (en && cn) return err_set(e, "%s: 'enum' and 'const' together are not supported", where);
        static const char *const other[] = {"properties", "required", "additionalProperties", "items", "minItems", "maxItems"};
        for (size_t i = 0; i < sizeof other / sizeof *other; i++)
            if (cJSON_GetObjectItemCaseSensitive(s, other[i]))
                return err_set(e, "%s: keyword '%s' next to '%s' is not supported", where, other[i], en ? "enum" : "const");
        if (en && !cJSON_IsArray(en)) return err_set(e, "%s.enum: must be an array", where);
        int n = en ? cJSON_GetArraySize(en) : 1;
        if (n > 4096) return err_set(e, "%s.enum: %d values, more than the 4096 supported", where, n);
        char **t = calloc((size_t)(n ? n : 1), sizeof *t);
        if (!t) return err_set(e, "schema: out of memory");
        int i = 0;
        const cJSON *v;
        for (v = en ? en->child : cn; v && i < n; v = en ? v->next : NULL) {
            if (type) {
                int ok = 0;
                if (cJSON_IsString(type)) ok = type_admits(type->valuestring, v);
                const cJSON *ty;
                if (cJSON_IsArray(type)) cJSON_ArrayForEach(ty, type) ok |= cJSON_IsString(ty) && type_admits(ty->valuestring, v);
                if (!ok) {
                    for (int j = 0; j < i; j++) free(t[j]);
                    free(t);
                    return err_set(e, "%s.%s: value %d is of type %s, which 'type' does not allow", where,
                                   en ? "enum" : "const", i, json_type_of(v));
                }
            }
            if (!(t[i] = cJSON_PrintUnformatted(v))) {
                for (int j = 0; j < i; j++) free(t[j]);
                free(t);
                return err_set(e, "schema: out of memory");
            }
            i++;
        }
        int id = literal_node(g, t, i, where, e);
        free(t);
        return id;
    }
    if (!type) {
        if (cJSON_GetObjectItemCaseSensitive(s, "properties") || cJSON_GetObjectItemCaseSensitive(s, "required") ||
            cJSON_GetObjectItemCaseSensitive(s, "additionalProperties"))
            return compile_type(g, s, "object", where, depth, e);
        if (cJSON_GetObjectItemCaseSensitive(s, "items") || cJSON_GetObjectItemCaseSensitive(s, "minItems") ||
            cJSON_GetObjectItemCaseSensitive(s, "maxItems"))
            return compile_type(g, s, "array", where, depth, e);
        return NODE_ANY;
    }
    if (cJSON_IsString(type)) return compile_type(g, s, type->valuestring, where, depth, e);
    int n = cJSON_GetArraySize(type);
    if (!cJSON_IsArray(type) || n < 1 || n > 7) return err_set(e, "%s.type: must be a type name or an array of 1 to 7 of them", where);
    int alt[7], m = 0, has_number = 0;
    const cJSON *ty;
    cJSON_ArrayForEach(ty, type) has_number |= cJSON_IsString(ty) && !strcmp(ty->valuestring, "number");
    cJSON_ArrayForEach(ty, type) {
        if (!cJSON_IsString(ty)) return err_set(e, "%s.type: must be a type name or an array of them", where);
        if (has_number && !strcmp(ty->valuestring, "integer")) continue; /* number covers integer */
        if ((alt[m++] = compile_type(g, s, ty->valuestring, where, depth, e)) < 0) return -1;
    }
    return m == 1 ? alt[0] : union_node(g, alt, m, where, "type", e);
}

void grammar_free(struct grammar *g)
{
    if (!g) return;
    for (int i = 0; i < g->n_props; i++) free(g->props[i].key);
    for (int i = 0; i < g->n_lits; i++) free(g->lits[i].s);
    free(g->nodes);
    free(g->props);
    free(g->lits);
    free(g->alts);
    free(g);
}

int grammar_compile(struct grammar **out, const char *schema_json, struct err *e)
{
    *out = NULL;
    struct grammar *g = calloc(1, sizeof *g);
    if (!g) return err_set(e, "grammar: out of memory");
    cJSON *s = NULL;
    /* the built-in nodes: any value = a union of object, array, string, number, true/false/null */
    int any = node_new(g, N_UNION, e);
    int oa = any < 0 ? -1 : node_new(g, N_OBJECT_ANY, e);
    int aa = oa < 0 ? -1 : node_new(g, N_ARRAY, e);
    int st = aa < 0 ? -1 : node_new(g, N_STRING, e);
    int nu = st < 0 ? -1 : node_new(g, N_NUMBER, e);
    int wd = nu < 0 ? -1 : words_node(g, (const char *const[]){"true", "false", "null"}, 3, e);
    if (wd < 0) goto fail;
    CHECK(any == NODE_ANY && oa == NODE_OBJECT_ANY && aa == NODE_ARRAY_ANY && st == NODE_STRING && nu == NODE_NUMBER &&
          wd == NODE_WORDS);
    const int alts[5] = {NODE_OBJECT_ANY, NODE_ARRAY_ANY, NODE_STRING, NODE_NUMBER, NODE_WORDS};
    if (grow((void **)&g->alts, &g->cap_alts, 5, sizeof *g->alts)) {
        err_set(e, "grammar: out of memory");
        goto fail;
    }
    g->nodes[NODE_ANY].first = 0;
    g->nodes[NODE_ANY].n = 5;
    g->nodes[NODE_ANY].minlen = 1;
    for (int i = 0; i < 5; i++) {
        g->alts[g->n_alts++] = alts[i];
        for (int w = 0; w < 8; w++) g->nodes[NODE_ANY].first_bytes[w] |= g->nodes[alts[i]].first_bytes[w];
    }
    if (!schema_json) {
        g->root = NODE_OBJECT_ANY;
        *out = g;
        return 0;
    }
    s = cJSON_Parse(schema_json);
    if (!s) {
        err_set(e, "schema: not valid JSON");
        goto fail;
    }
    if ((g->root = compile_schema(g, s, "schema", 0, e)) < 0) goto fail;
    cJSON_Delete(s);
    *out = g;
    return 0;
fail:
    cJSON_Delete(s);
    grammar_free(g);
    return -1;
}

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
    uint32_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->s, y->s, n);
    if (c) return c;
    return x->len < y->len ? -1 : x->len > y->len;
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

/* Whether the bytes are plain string content (see struct grammar_vocab). */
static int is_plain(const unsigned char *s, uint32_t n)
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
        if (is_plain(r.s, r.len)) {
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
        if (feed_byte(s, c[j].byte)) continue;
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
    const struct grammar_frame *top = s->depth ? &s->f[s->depth - 1] : NULL;
    if (top && s->g->nodes[top->node].kind == N_STRING && top->phase == S_BODY) {
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
