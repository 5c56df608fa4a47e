/* grammar_schema.c: grammar_compile of grammar.h: a JSON Schema text (or none: any JSON object) ->
 * the table of nodes (grammar_impl.h) the automaton (grammar.c) walks. Keywords outside the supported
 * subset are refused by name. */
#include "grammar.h"
#include "grammar_impl.h"

#include <cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

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
    return bytes_cmp(x->s, x->len, y->s, y->len);
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

