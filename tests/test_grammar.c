/* test_grammar.c: constrained decoding (grammar.h).
 * - schema compile errors (each names the keyword / place);
 * - the automaton on hand-written JSON texts, accepted or refused (expected verdicts written by hand);
 *   the bounds (whitespace run, number length, nesting depth) at and past the limit;
 * - grammar_min_bytes against hand-counted shortest completions;
 * - the token mask (trie walk + the plain-string block) against a brute force over every id of the
 *   real Llama-3 vocabulary (each token's bytes fed to a copy of the automaton), budget included;
 * - the property of issue 17: generation under the mask on the random tiny model (and with random
 *   logits) gives, for every seed, a text that a separate strict JSON checker written here parses
 *   and that a separate schema validator (over cJSON's tree) accepts, within max_tokens;
 * - the cost of one mask, microseconds per token, on the tiny model's tokenizer and Meta's. */
#include <cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "engine_impl.h"
#include "grammar.h"
#include "sampler.h"
#include "tokenizer.h"
#include "t.h"
#include "tutil.h"

#define META_JSON ".cache/tokenizer-llama3/tokenizer.json"

static struct tokenizer *meta;      /* Meta's tokenizer.json alone */
static struct engine *tiny;         /* the tiny model (its tokenizer: MiniCPM's files made by mkmodel) */

/* ---------------------------------------------------------------- helpers */

/* CPU seconds of this thread: the mask's cost, not the wait for a core of a shared machine */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static struct grammar *compile_ok(const char *schema)
{
    struct grammar *g = NULL;
    struct err e = {{0}};
    int rc = grammar_compile(&g, schema, &e);
    T_ASSERTF(rc == 0, "%s: %s", schema ? schema : "(json_object)", e.msg);
    return g;
}

/* 1 when the whole text is accepted and the automaton is in an accepting state after it. */
static int accepts(const struct grammar *g, const char *text)
{
    struct grammar_state s;
    grammar_state_init(&s, g);
    return grammar_feed(&s, text, strlen(text)) == 0 && grammar_accepting(&s);
}

#define ACCEPT(g, text) T_ASSERTF(accepts((g), (text)), "should accept: %s", (text))
#define REFUSE(g, text) T_ASSERTF(!accepts((g), (text)), "should refuse: %s", (text))

/* ---------------------------------------------------------------- an independent strict JSON checker
 * RFC 8259 by recursive descent; whitespace is space, tab, CR, LF. Returns the end or NULL. */
static const char *jc_value(const char *p, const char *end, int depth);
static const char *jc_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}
static const char *jc_string(const char *p, const char *end)
{
    if (p >= end || *p != '"') return NULL;
    p++;
    while (p < end) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') return p + 1;
        if (c < 0x20) return NULL;
        if (c == '\\') {
            if (++p >= end) return NULL;
            if (*p == 'u') {
                for (int i = 1; i <= 4; i++)
                    if (p + i >= end || !strchr("0123456789abcdefABCDEF", p[i]) || !p[i]) return NULL;
                p += 5;
            } else if (*p && strchr("\"\\/bfnrt", *p)) {
                p++;
            } else {
                return NULL;
            }
            continue;
        }
        if (c < 0x80) { p++; continue; }
        /* UTF-8 by the table of RFC 3629 section 4 */
        int n;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) n = 1;
        else if (c == 0xE0) { n = 2; lo = 0xA0; }
        else if (c == 0xED) { n = 2; hi = 0x9F; }
        else if (c >= 0xE1 && c <= 0xEF) n = 2;
        else if (c == 0xF0) { n = 3; lo = 0x90; }
        else if (c >= 0xF1 && c <= 0xF3) n = 3;
        else if (c == 0xF4) { n = 3; hi = 0x8F; }
        else return NULL;
        p++;
        for (int i = 0; i < n; i++, p++) {
            if (p >= end) return NULL;
            unsigned d = (unsigned char)*p;
            if (d < (i == 0 ? lo : 0x80) || d > (i == 0 ? hi : 0xBF)) return NULL;
        }
    }
    return NULL;
}
static const char *jc_number(const char *p, const char *end)
{
#define DIG(q) ((q) < end && *(q) >= '0' && *(q) <= '9')
    if (p < end && *p == '-') p++;
    if (p < end && *p == '0') p++;
    else if (DIG(p)) while (DIG(p)) p++;
    else return NULL;
    if (p < end && *p == '.') {
        p++;
        if (!DIG(p)) return NULL;
        while (DIG(p)) p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (!DIG(p)) return NULL;
        while (DIG(p)) p++;
    }
    return p;
#undef DIG
}
static const char *jc_value(const char *p, const char *end, int depth)
{
    if (depth > 100 || p >= end) return NULL;
    if (*p == '{' || *p == '[') {
        const char close = *p == '{' ? '}' : ']';
        const int obj = *p == '{';
        p = jc_ws(p + 1, end);
        if (p < end && *p == close) return p + 1;
        for (;;) {
            if (obj) {
                if (!(p = jc_string(p, end))) return NULL;
                p = jc_ws(p, end);
                if (p >= end || *p != ':') return NULL;
                p = jc_ws(p + 1, end);
            }
            if (!(p = jc_value(p, end, depth + 1))) return NULL;
            p = jc_ws(p, end);
            if (p < end && *p == ',') { p = jc_ws(p + 1, end); continue; }
            if (p < end && *p == close) return p + 1;
            return NULL;
        }
    }
    if (*p == '"') return jc_string(p, end);
    if (end - p >= 4 && !memcmp(p, "true", 4)) return p + 4;
    if (end - p >= 5 && !memcmp(p, "false", 5)) return p + 5;
    if (end - p >= 4 && !memcmp(p, "null", 4)) return p + 4;
    return jc_number(p, end);
}
/* The whole text is exactly one JSON value (surrounding whitespace allowed). */
static int json_strict_ok(const char *s, size_t n)
{
    const char *end = s + n, *p = jc_value(jc_ws(s, end), end, 0);
    return p && jc_ws(p, end) == end;
}

/* ---------------------------------------------------------------- an independent schema validator
 * (the subset of docs/GRAMMAR.md, over cJSON's tree of the answer). */
static int is_type(const cJSON *v, const char *t)
{
    if (!strcmp(t, "object")) return cJSON_IsObject(v);
    if (!strcmp(t, "array")) return cJSON_IsArray(v);
    if (!strcmp(t, "string")) return cJSON_IsString(v);
    if (!strcmp(t, "boolean")) return cJSON_IsBool(v);
    if (!strcmp(t, "null")) return cJSON_IsNull(v);
    if (!strcmp(t, "number")) return cJSON_IsNumber(v);
    if (!strcmp(t, "integer")) return cJSON_IsNumber(v) && isfinite(v->valuedouble) && v->valuedouble == floor(v->valuedouble);
    return 0;
}
static int validate(const cJSON *v, const cJSON *s)
{
    const cJSON *x;
    if ((x = cJSON_GetObjectItemCaseSensitive(s, "anyOf"))) {
        const cJSON *a;
        cJSON_ArrayForEach(a, x) if (validate(v, a)) return 1;
        return 0;
    }
    if ((x = cJSON_GetObjectItemCaseSensitive(s, "const")) && !cJSON_Compare(v, x, 1)) return 0;
    if ((x = cJSON_GetObjectItemCaseSensitive(s, "enum"))) {
        int hit = 0;
        const cJSON *a;
        cJSON_ArrayForEach(a, x) hit |= cJSON_Compare(v, a, 1);
        if (!hit) return 0;
    }
    if ((x = cJSON_GetObjectItemCaseSensitive(s, "type"))) {
        int hit = 0;
        if (cJSON_IsString(x)) hit = is_type(v, x->valuestring);
        const cJSON *a;
        if (cJSON_IsArray(x)) cJSON_ArrayForEach(a, x) hit |= is_type(v, a->valuestring);
        if (!hit) return 0;
    }
    if (cJSON_IsObject(v)) {
        const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties"), *m;
        cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(s, "required"))
            if (!cJSON_GetObjectItemCaseSensitive(v, x->valuestring)) return 0;
        cJSON_ArrayForEach(m, v) {
            for (const cJSON *o = v->child; o != m; o = o->next)
                if (!strcmp(o->string, m->string)) return 0; /* a key twice */
            const cJSON *ps = props ? cJSON_GetObjectItemCaseSensitive(props, m->string) : NULL;
            if (!ps && cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(s, "additionalProperties"))) return 0;
            if (ps && !validate(m, ps)) return 0;
        }
    }
    if (cJSON_IsArray(v)) {
        const int n = cJSON_GetArraySize(v);
        if ((x = cJSON_GetObjectItemCaseSensitive(s, "minItems")) && n < x->valueint) return 0;
        if ((x = cJSON_GetObjectItemCaseSensitive(s, "maxItems")) && n > x->valueint) return 0;
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(s, "items"), *a;
        if (it) cJSON_ArrayForEach(a, v) if (!validate(a, it)) return 0;
    }
    return 1;
}
/* The answer is strict JSON and validates (schema NULL: is one object). */
static int answer_ok(const char *text, size_t n, const char *schema)
{
    if (!json_strict_ok(text, n)) return 0;
    cJSON *v = cJSON_ParseWithLength(text, n), *s = schema ? cJSON_Parse(schema) : NULL;
    int ok = v && (schema ? s && validate(v, s) : cJSON_IsObject(v));
    cJSON_Delete(v);
    cJSON_Delete(s);
    return ok;
}

/* ---------------------------------------------------------------- compile errors */

static void test_compile_errors(void)
{
    static const struct { const char *schema, *want; } c[] = {
        {"{\"type\":\"string\",\"pattern\":\"^a\"}", "schema: keyword 'pattern' is not supported"},
        {"{\"type\":\"object\",\"properties\":{\"d\":{\"type\":\"string\",\"format\":\"date\"}}}",
         "schema.properties.d: keyword 'format' is not supported"},
        {"{\"$ref\":\"#/$defs/x\"}", "keyword '$ref' is not supported"},
        {"{\"oneOf\":[{\"type\":\"string\"}]}", "keyword 'oneOf' is not supported"},
        {"{\"type\":\"integer\",\"minimum\":3}", "keyword 'minimum' is not supported"},
        {"{\"type\":\"strin\"}", "schema.type: 'strin' is not a JSON Schema type"},
        {"{\"type\":\"object\",\"properties\":{\"a\":{}},\"required\":[\"b\"]}", "schema.required: 'b' is not in properties"},
        {"{\"type\":\"array\",\"minItems\":3,\"maxItems\":2}", "maxItems 2 < minItems 3"},
        {"{\"type\":\"array\",\"minItems\":-1}", "schema.minItems: must be an integer"},
        {"{\"enum\":[]}", "schema: enum is empty"},
        {"{\"type\":\"string\",\"enum\":[\"a\",1]}", "schema.enum: value 1 is of type integer"},
        {"{\"anyOf\":[{\"type\":\"object\"},{\"type\":\"object\",\"properties\":{\"a\":{}}}]}",
         "anyOf alternatives 0 and 1 can both start with '{'"},
        {"{\"type\":\"object\",\"additionalProperties\":{\"type\":\"string\"}}", "additionalProperties: only true or false"},
        {"{\"type\":\"array\",\"items\":[{\"type\":\"string\"}]}", "schema.items: must be one schema object"},
        {"[1,2]", "schema: a schema must be a JSON object"},
        {"{\"type\":", "schema: not valid JSON"},
        {"{\"anyOf\":[{\"type\":\"string\"}],\"type\":\"string\"}", "keyword 'type' next to 'anyOf'"},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        struct grammar *g = (struct grammar *)1;
        struct err e = {{0}};
        T_ASSERTF(grammar_compile(&g, c[i].schema, &e) == -1, "compiled: %s", c[i].schema);
        T_ASSERT(g == NULL);
        T_CONTAINS(e.msg, c[i].want);
    }
    /* deeper than the stack */
    char deep[4096] = "";
    for (int i = 0; i < 40; i++) strcat(deep, "{\"type\":\"array\",\"items\":");
    strcat(deep, "{\"type\":\"null\"}");
    for (int i = 0; i < 40; i++) strcat(deep, "}");
    struct grammar *g = NULL;
    struct err e = {{0}};
    T_EQ_INT(grammar_compile(&g, deep, &e), -1);
    T_CONTAINS(e.msg, "nested deeper than");
}

/* ---------------------------------------------------------------- the automaton on hand-written texts */

static void test_json_object(void)
{
    struct grammar *g = compile_ok(NULL);
    if (!g) return;
    ACCEPT(g, "{}");
    ACCEPT(g, "{\"a\":1}");
    ACCEPT(g, "{ \"a\" : [1, -2.5e+3, 0, true, false, null, \"x\"] ,\n\t\"b\":{\"c\":{}}}");
    ACCEPT(g, "{\"esc\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\uD83D\"}");
    ACCEPT(g, "{\"utf8\":\"h\xc3\xa9 \xe4\xbd\xa0 \xf0\x9f\x98\x80\"}");
    ACCEPT(g, "{\"n\":-0.0E-0}");
    ACCEPT(g, "{\"\":\"\"}");
    REFUSE(g, " {}");          /* no whitespace before the root value */
    REFUSE(g, "{} ");          /* nor after it */
    REFUSE(g, "[1]");          /* json_object: the root is an object */
    REFUSE(g, "\"a\"");
    REFUSE(g, "{");            /* incomplete */
    REFUSE(g, "{\"a\"}");
    REFUSE(g, "{\"a\":}");
    REFUSE(g, "{\"a\":1,}");   /* trailing comma */
    REFUSE(g, "{,}");
    REFUSE(g, "{'a':1}");
    REFUSE(g, "{a:1}");
    REFUSE(g, "{\"a\":01}");   /* leading zero */
    REFUSE(g, "{\"a\":1.}");
    REFUSE(g, "{\"a\":.5}");
    REFUSE(g, "{\"a\":+1}");
    REFUSE(g, "{\"a\":1e}");
    REFUSE(g, "{\"a\":tru}");
    REFUSE(g, "{\"a\":True}");
    REFUSE(g, "{\"a\":\"\\x\"}");        /* bad escape */
    REFUSE(g, "{\"a\":\"\\u12G4\"}");
    REFUSE(g, "{\"a\":\"tab\there\"}");  /* raw control byte */
    REFUSE(g, "{\"a\":\"\xc3\"}");       /* truncated UTF-8 */
    REFUSE(g, "{\"a\":\"\xc0\xaf\"}");   /* overlong */
    REFUSE(g, "{\"a\":\"\xed\xa0\x80\"}"); /* a surrogate in UTF-8 */
    REFUSE(g, "{\"a\":\"\xf4\x90\x80\x80\"}"); /* above U+10FFFF */
    REFUSE(g, "{\"a\":1}{}");
    REFUSE(g, "{\"a\":[1 2]}");
    REFUSE(g, "{\"a\":NaN}");
    grammar_free(g);
}

static void test_bounds(void)
{
    struct grammar *g = compile_ok(NULL);
    if (!g) return;
    char buf[512];
    /* whitespace: 16 bytes in a row pass, 17 do not; separate runs each have their own 16 */
    snprintf(buf, sizeof buf, "{%16s\"a\":1}", "");
    ACCEPT(g, buf);
    snprintf(buf, sizeof buf, "{%17s\"a\":1}", "");
    REFUSE(g, buf);
    snprintf(buf, sizeof buf, "{%16s\"a\"%16s:%16s1%16s}", "", "", "", "");
    ACCEPT(g, buf);
    ACCEPT(g, "{\"a\":\n\t\r           1}"); /* 14 bytes of mixed whitespace */
    /* numbers: 32 bytes pass, 33 do not */
    ACCEPT(g, "{\"a\":12345678901234567890123456789012}");
    REFUSE(g, "{\"a\":123456789012345678901234567890123}");
    ACCEPT(g, "{\"a\":-1.23456789012345678901234e+56}"); /* 32 bytes */
    /* a byte that would need one more byte past the limit is refused where it comes: 30 digits,
     * then "e" (31) and "+" (32) would leave no room for the exponent's digit */
    ACCEPT(g, "{\"a\":123456789012345678901234567890e1}");
    REFUSE(g, "{\"a\":123456789012345678901234567890e+1}");
    /* nesting: at most 32 levels, every container and the scalar inside counted: the root object,
     * 30 arrays and a number are 32; 31 arrays and a number are 33; 31 empty-ended arrays are 32 */
    strcpy(buf, "{\"a\":");
    for (int i = 0; i < 30; i++) strcat(buf, "[");
    strcat(buf, "1");
    for (int i = 0; i < 30; i++) strcat(buf, "]");
    strcat(buf, "}");
    ACCEPT(g, buf);
    strcpy(buf, "{\"a\":");
    for (int i = 0; i < 31; i++) strcat(buf, "[");
    strcat(buf, "1");
    for (int i = 0; i < 31; i++) strcat(buf, "]");
    strcat(buf, "}");
    REFUSE(g, buf);
    strcpy(buf, "{\"a\":");
    for (int i = 0; i < 31; i++) strcat(buf, "[");
    for (int i = 0; i < 31; i++) strcat(buf, "]");
    strcat(buf, "}");
    ACCEPT(g, buf);
    grammar_free(g);
}

#define PERSON "{\"type\":\"object\",\"properties\":{" \
    "\"name\":{\"type\":\"string\",\"description\":\"full name\"}," \
    "\"age\":{\"type\":\"integer\"}," \
    "\"email\":{\"type\":[\"string\",\"null\"]}," \
    "\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"a\",\"ab\",\"b\"]},\"minItems\":1,\"maxItems\":3}," \
    "\"kind\":{\"const\":\"person\"}," \
    "\"score\":{\"type\":\"number\"}," \
    "\"ok\":{\"type\":\"boolean\"}}," \
    "\"required\":[\"name\",\"age\",\"tags\",\"kind\"],\"additionalProperties\":false}"

static void test_schema_texts(void)
{
    struct grammar *g = compile_ok(PERSON);
    if (!g) return;
    ACCEPT(g, "{\"name\":\"Ann\",\"age\":30,\"tags\":[\"a\"],\"kind\":\"person\"}");
    ACCEPT(g, "{\"name\":\"Ann\",\"age\":-0,\"email\":null,\"tags\":[\"ab\",\"b\",\"a\"],\"kind\":\"person\",\"score\":1.5,\"ok\":true}");
    ACCEPT(g, "{ \"name\" : \"\" , \"age\" : 1 , \"email\" : \"x@y\" , \"tags\" : [ \"b\" ] , \"kind\" : \"person\" , \"ok\" : false }");
    REFUSE(g, "{\"age\":30,\"name\":\"Ann\",\"tags\":[\"a\"],\"kind\":\"person\"}"); /* schema order */
    REFUSE(g, "{\"name\":\"Ann\",\"tags\":[\"a\"],\"kind\":\"person\"}");           /* age missing */
    REFUSE(g, "{\"name\":\"Ann\",\"age\":30,\"tags\":[\"a\"]}");                    /* kind missing */
    REFUSE(g, "{\"name\":\"Ann\",\"age\":30.5,\"tags\":[\"a\"],\"kind\":\"person\"}"); /* integer */
    REFUSE(g, "{\"name\":\"Ann\",\"age\":3e1,\"tags\":[\"a\"],\"kind\":\"person\"}");
    REFUSE(g, "{\"name\":\"Ann\",\"age\":30,\"tags\":[],\"kind\":\"person\"}");       /* minItems 1 */
    REFUSE(g, "{\"name\":\"Ann\",\"age\":30,\"tags\":[\"a\",\"a\",\"a\",\"a\"],\"kind\":\"person\"}"); /* maxItems 3 */
    REFUSE(g, "{\"name\":\"Ann\",\"age\":30,\"tags\":[\"c\"],\"kind\":\"person\"}");  /* enum */
    REFUSE(g, "{\"name\":\"Ann\",\"age\":30,\"tags\":[\"abc\"],\"kind\":\"person\"}");
    REFUSE(g, "{\"name\":\"Ann\",\"age\":30,\"tags\":[\"a\"],\"kind\":\"persons\"}"); /* const */
    REFUSE(g, "{\"name\":\"Ann\",\"age\":30,\"tags\":[\"a\"],\"kind\":\"person\",\"x\":1}"); /* additional */
    REFUSE(g, "{\"name\":\"Ann\",\"name\":\"Bob\",\"age\":30,\"tags\":[\"a\"],\"kind\":\"person\"}");
    REFUSE(g, "{\"name\":1,\"age\":30,\"tags\":[\"a\"],\"kind\":\"person\"}");
    REFUSE(g, "{\"name\":\"Ann\",\"age\":30,\"email\":3,\"tags\":[\"a\"],\"kind\":\"person\"}");
    REFUSE(g, "{\"name\":\"Ann\",\"age\":30,\"tags\":[\"a\"],\"kind\":\"person\",\"ok\":null}");
    grammar_free(g);

    /* a root that is not an object; numbers and literals that end only when the text ends */
    g = compile_ok("{\"type\":\"integer\"}");
    if (g) {
        ACCEPT(g, "0");
        ACCEPT(g, "-12");
        REFUSE(g, "1.0");
        REFUSE(g, "-");
        REFUSE(g, "");
        grammar_free(g);
    }
    g = compile_ok("{\"enum\":[1,12,\"x\",null,{\"a\":[true]}]}");
    if (g) {
        ACCEPT(g, "1");
        ACCEPT(g, "12");
        ACCEPT(g, "\"x\"");
        ACCEPT(g, "null");
        ACCEPT(g, "{\"a\":[true]}"); /* enum values are matched as compact JSON text */
        REFUSE(g, "{ \"a\":[true]}");
        REFUSE(g, "123");
        REFUSE(g, "2");
        grammar_free(g);
    }
    g = compile_ok("{\"anyOf\":[{\"type\":\"string\"},{\"type\":\"array\",\"items\":{\"type\":\"number\"},\"maxItems\":0},"
                   "{\"type\":\"null\"}]}");
    if (g) {
        ACCEPT(g, "\"s\"");
        ACCEPT(g, "[]");
        ACCEPT(g, "null");
        REFUSE(g, "[1]");
        REFUSE(g, "1");
        grammar_free(g);
    }
    /* {} and {"type":"object"}: anything of that kind; properties without additionalProperties:false:
     * only the listed keys are generated (a subset of what the schema allows) */
    g = compile_ok("{}");
    if (g) {
        ACCEPT(g, "[1,{\"a\":\"b\"}]");
        ACCEPT(g, "\"s\"");
        grammar_free(g);
    }
    g = compile_ok("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"boolean\"}}}");
    if (g) {
        ACCEPT(g, "{}");
        ACCEPT(g, "{\"a\":false}");
        REFUSE(g, "{\"b\":false}");
        grammar_free(g);
    }
}

/* ---------------------------------------------------------------- shortest completions */

static uint32_t min_after(const struct grammar *g, const char *prefix)
{
    struct grammar_state s;
    grammar_state_init(&s, g);
    T_ASSERTF(grammar_feed(&s, prefix, strlen(prefix)) == 0, "prefix refused: %s", prefix);
    return grammar_min_bytes(&s);
}

static void test_min_bytes(void)
{
    struct grammar *g = compile_ok("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\"},\"o\":{\"type\":\"null\"},"
                                   "\"b\":{\"type\":\"integer\"},\"c\":{\"type\":\"array\",\"items\":{\"enum\":[\"xy\",\"z\"]},\"minItems\":2}},"
                                   "\"required\":[\"a\",\"b\",\"c\"]}");
    if (!g) return;
    /* shortest: {"a":"","b":0,"c":["z","z"]} = 28 bytes, counted by hand */
    T_EQ_INT(min_after(g, ""), 28);
    T_EQ_INT(min_after(g, "{"), 27);
    T_EQ_INT(min_after(g, "{\"a\":\"hello"), 22);   /* ","b":0,"c":["z","z"]} */
    T_EQ_INT(min_after(g, "{\"a\":\"\\"), 23);      /* n","b":... */
    T_EQ_INT(min_after(g, "{\"a\":\"\\u0"), 25);    /* 3 hex, then ","b":0,... */
    T_EQ_INT(min_after(g, "{\"a\":\"\xe4"), 24);    /* 2 continuation bytes, then 22 */
    T_EQ_INT(min_after(g, "{\"a\":\"\","), 20);     /* "b":0,"c":["z","z"]} */
    T_EQ_INT(min_after(g, "{\"a\":\"\",\""), 19);   /* b":0,... (the optional "o" first would be longer) */
    T_EQ_INT(min_after(g, "{\"a\":\"\",\"o"), 27);  /* ":null,"b":0,"c":["z","z"]} */
    T_EQ_INT(min_after(g, "{\"a\":\"\",\"b\":-"), 16);
    T_EQ_INT(min_after(g, "{\"a\":\"\",\"b\":12"), 15);   /* ,"c":["z","z"]} */
    T_EQ_INT(min_after(g, "{\"a\":\"\",\"b\":12,\"c\":["), 9);  /* "z","z"]} */
    T_EQ_INT(min_after(g, "{\"a\":\"\",\"b\":12,\"c\":[\"x"), 8); /* y","z"]} */
    T_EQ_INT(min_after(g, "{\"a\":\"\",\"b\":12,\"c\":[\"z\","), 5);
    T_EQ_INT(min_after(g, "{\"a\":\"\",\"b\":12,\"c\":[\"z\",\"z\"]"), 1);
    T_EQ_INT(min_after(g, "{\"a\":\"\",\"b\":12,\"c\":[\"z\",\"z\"]}"), 0);
    grammar_free(g);
    g = compile_ok(NULL);
    if (g) {
        T_EQ_INT(min_after(g, ""), 2);
        T_EQ_INT(min_after(g, "{\"k\""), 3); /* :0} */
        T_EQ_INT(min_after(g, "{\"k\":[{"), 3); /* }]} */
        T_EQ_INT(min_after(g, "{\"k\":1,"), 5); /* "":0} */
        T_EQ_INT(min_after(g, "{\"k\":t"), 4); /* rue} */
        grammar_free(g);
    }
}

/* ---------------------------------------------------------------- the mask against a brute force */

/* Brute force: every id, its bytes fed to a copy of s; stops when accepting; the budget rule. */
static void mask_brute(const struct grammar_state *s, const struct tokenizer *tok, const struct grammar_vocab *v,
                       int budget, uint32_t *allow)
{
    const int V = tokenizer_vocab_size(tok);
    memset(allow, 0, grammar_mask_words(V) * sizeof *allow);
    for (int32_t id = 0; id < V; id++) {
        const char *b;
        size_t n;
        int ok;
        if (grammar_vocab_is_stop(v, id)) {
            ok = grammar_accepting(s);
        } else {
            if (tokenizer_token_bytes(tok, id, &b, &n) != TOKENIZER_KIND_VOCAB || n == 0) continue;
            struct grammar_state c;
            grammar_state_copy(&c, s);
            ok = grammar_feed(&c, b, n) == 0 && (budget <= 0 || grammar_min_bytes(&c) <= (uint32_t)budget - 1);
        }
        if (ok) allow[id >> 5] |= 1u << (id & 31);
    }
}

static void test_mask_brute(void)
{
    if (!meta) { T_SKIP(test_mask_brute, "no tokenizer"); return; }
    struct err e = {{0}};
    struct grammar_vocab *v = NULL;
    const int32_t stops[2] = {128001, 128009};
    T_ASSERTF(grammar_vocab_init(&v, meta, stops, 2, NULL, 0, &e) == 0, "%s", e.msg);
    struct grammar_scratch *sc = NULL;
    if (!v || grammar_scratch_init(&sc, v, &e)) { grammar_vocab_free(v); T_ASSERTF(0, "%s", e.msg); return; }
    const int V = grammar_vocab_size(v);
    T_EQ_INT(V, 128256);
    uint32_t *a = malloc(grammar_mask_words(V) * 4), *b = malloc(grammar_mask_words(V) * 4);
    static const struct { const char *schema, *prefix; int budget; } c[] = {
        {NULL, "", 0}, {NULL, "{", 0}, {NULL, "{\"", 0}, {NULL, "{\"ab", 0}, {NULL, "{\"a\":", 0},
        {NULL, "{\"a\":\"x\\", 0}, {NULL, "{\"a\":\"\xe4\xbd", 0}, {NULL, "{\"a\":12", 0}, {NULL, "{\"a\":1}", 0},
        {NULL, "{\"a\":[1,{}", 0}, {NULL, "{\"a\":\"xx", 4}, {NULL, "{\"a\":[[", 5}, {NULL, "{\"a\":fa", 0},
        {NULL, "{               ", 0},
        {PERSON, "", 0}, {PERSON, "{\"", 0}, {PERSON, "{\"name\":\"A\",\"age\":3", 0},
        {PERSON, "{\"name\":\"A\",\"age\":3,\"", 0}, {PERSON, "{\"name\":\"A\",\"age\":3,\"tags\":[\"a", 0},
        {PERSON, "{\"name\":\"A\",\"age\":3,\"tags\":[\"a\"],\"kind\":\"person\"", 0},
        {PERSON, "{\"name\":\"A", 40}, {PERSON, "{\"name\":\"A", 45},
        {"{\"type\":\"number\"}", "-1.5", 0}, {"{\"enum\":[1,12,\"x\"]}", "1", 0},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        struct grammar *g = compile_ok(c[i].schema);
        if (!g) continue;
        struct grammar_state s;
        grammar_state_init(&s, g);
        T_ASSERTF(grammar_feed(&s, c[i].prefix, strlen(c[i].prefix)) == 0, "prefix %s", c[i].prefix);
        int n = grammar_mask(&s, v, sc, c[i].budget, a);
        mask_brute(&s, meta, v, c[i].budget, b);
        int nb = 0, diff = -1;
        for (int id = 0; id < V; id++) {
            nb += b[id >> 5] >> (id & 31) & 1;
            if (diff < 0 && ((a[id >> 5] ^ b[id >> 5]) >> (id & 31) & 1)) diff = id;
        }
        T_ASSERTF(diff < 0 && n == nb, "case %zu (prefix '%s', budget %d): mask %d ids, brute force %d, first "
                  "difference at id %d", i, c[i].prefix, c[i].budget, n, nb, diff);
        T_ASSERTF(nb > 0, "case %zu: nothing allowed", i);
        grammar_free(g);
    }
    /* hand-checked members: after {"a": a space (220) and "true" (1904) may come; after {"a":1} only
     * the stops; in a string " world" (1917) may come */
    struct grammar *g = compile_ok(NULL);
    struct grammar_state s;
    grammar_state_init(&s, g);
    grammar_feed(&s, "{\"a\":", 5);
    grammar_mask(&s, v, sc, 0, a);
    T_ASSERT(a[220 >> 5] >> (220 & 31) & 1);
    T_ASSERT(a[tokenizer_token_id(meta, "true") >> 5] >> (tokenizer_token_id(meta, "true") & 31) & 1);
    T_ASSERT(!(a[9906 >> 5] >> (9906 & 31) & 1)); /* "Hello" */
    grammar_feed(&s, "1}", 2);
    T_EQ_INT(grammar_mask(&s, v, sc, 0, a), 2);
    T_ASSERT(a[128009 >> 5] >> (128009 & 31) & 1);
    grammar_state_init(&s, g);
    grammar_feed(&s, "{\"a\":\"", 6);
    grammar_mask(&s, v, sc, 0, a);
    T_ASSERT(a[1917 >> 5] >> (1917 & 31) & 1);
    T_ASSERT(!(a[128009 >> 5] >> (128009 & 31) & 1));
    struct err e2 = {{0}};
    T_EQ_INT(grammar_advance(&s, v, 128009, &e2), -1);
    T_CONTAINS(e2.msg, "stop token 128009 before the JSON value is complete");
    T_EQ_INT(grammar_advance(&s, v, 1917, &e2), 0);
    T_EQ_INT(grammar_advance(&s, v, tokenizer_token_id(meta, "\"}"), &e2), 0);
    T_ASSERT(grammar_accepting(&s));
    T_EQ_INT(grammar_advance(&s, v, 1917, &e2), -1);
    T_CONTAINS(e2.msg, "does not continue the JSON value");
    grammar_free(g);
    free(a);
    free(b);
    grammar_scratch_free(sc);
    grammar_vocab_free(v);
}

/* ---------------------------------------------------------------- generation under the mask */

static const char *const schemas[] = {
    NULL,
    PERSON,
    "{\"type\":\"array\",\"items\":{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"integer\"},"
    "\"v\":{\"anyOf\":[{\"type\":\"number\"},{\"type\":\"string\"},{\"type\":\"null\"}]}},\"required\":[\"id\",\"v\"],"
    "\"additionalProperties\":false},\"minItems\":2,\"maxItems\":4}",
    "{\"type\":\"object\",\"properties\":{\"answer\":{\"enum\":[\"yes\",\"no\",\"maybe\"]},\"why\":{}},\"required\":[\"answer\",\"why\"]}",
};
#define N_SCHEMAS (int)(sizeof schemas / sizeof *schemas)

/* The tiny model's forward for one request: prompt, then one token at a time. */
struct gen {
    const struct grammar *g;
    const struct grammar_vocab *v;
    struct grammar_scratch *sc;
    const struct tokenizer *tok;
    double t_mask;
    long n_mask;
};

/* Generates up to max_tokens under the mask (use_mask 0: unconstrained) from logits that next()
 * returns; the bytes of the answer into out. Returns 1 when a stop token ended it. */
typedef int (*next_logits_fn)(void *ctx, int32_t tok, float *logits);

static int generate(struct gen *gn, int use_mask, const struct sampler_params *sp, int max_tokens, float *logits,
                    next_logits_fn next, void *ctx, char *out, size_t cap, size_t *out_len)
{
    const int V = grammar_vocab_size(gn->v);
    struct sampler smp;
    uint32_t *allow = malloc(grammar_mask_words(V) * 4);
    struct grammar_state s;
    grammar_state_init(&s, gn->g);
    *out_len = 0;
    int stopped = 0;
    if (!allow || sampler_init(&smp, sp, V)) {
        free(allow);
        T_ASSERT(0);
        return 0;
    }
    for (int i = 0; i < max_tokens; i++) {
        int32_t tok;
        if (use_mask) {
            double t0 = cpu_now();
            int n = grammar_mask(&s, gn->v, gn->sc, max_tokens - i, allow);
            gn->t_mask += cpu_now() - t0;
            gn->n_mask++;
            T_ASSERTF(n > 0, "empty mask at step %d", i);
            if (n == 0) break;
            tok = sampler_sample_masked(&smp, logits, allow);
            struct err e = {{0}};
            T_ASSERTF(tok >= 0 && grammar_advance(&s, gn->v, tok, &e) == 0, "token %d: %s", tok, e.msg);
        } else {
            tok = sampler_sample(&smp, logits);
        }
        if (grammar_vocab_is_stop(gn->v, tok)) { stopped = 1; break; }
        const char *b;
        size_t n;
        tokenizer_token_bytes(gn->tok, tok, &b, &n);
        if (*out_len + n < cap) { memcpy(out + *out_len, b, n); *out_len += n; }
        if (i + 1 < max_tokens && next(ctx, tok, logits)) break;
    }
    out[*out_len] = 0;
    if (use_mask) T_ASSERTF(grammar_accepting(&s), "not complete after %d tokens: %s", max_tokens, out);
    sampler_free(&smp);
    free(allow);
    return stopped;
}

static int next_model(void *ctx, int32_t tok, float *logits)
{
    struct err e = {{0}};
    int rc = llm_forward(&((struct engine *)ctx)->llm, &tok, NULL, 1, logits, &e);
    T_ASSERTF(rc == 0, "%s", e.msg);
    return rc;
}

struct rnd { uint64_t seed, i; int V; };
static int next_random(void *ctx, int32_t tok, float *logits)
{
    struct rnd *r = ctx;
    for (int j = 0; j < r->V; j++) logits[j] = (float)(sampler_uniform_at(r->seed, r->i++) * 8.0 - 4.0);
    return 0;
}

static void test_generate_tiny_model(void)
{
    if (!tiny) { T_ASSERTF(0, "the tiny model did not open"); return; }
    struct err e = {{0}};
    struct grammar_vocab *v = NULL;
    T_ASSERTF(grammar_vocab_init(&v, tiny->tok, tiny->stop, tiny->n_stop, NULL, 0, &e) == 0, "%s", e.msg);
    if (!v) return;
    struct gen gn = {.v = v, .tok = tiny->tok};
    T_ASSERTF(grammar_scratch_init(&gn.sc, v, &e) == 0, "%s", e.msg);
    const int V = tiny->cfg.vocab_size;
    float *logits = malloc((size_t)V * sizeof *logits);
    char out[8192];
    size_t n;
    int32_t *prompt = NULL, np = 0;
    const char *q = "Answer in JSON: who are you?";
    T_ASSERTF(tokenizer_encode(tiny->tok, q, strlen(q), TOKENIZER_ADD_SPECIAL, &prompt, &np, &e) == 0, "%s", e.msg);
    int runs = 0, good = 0, stopped = 0, free_bad = 0;
    for (int si = 0; si < N_SCHEMAS; si++) {
        struct grammar *g = compile_ok(schemas[si]);
        if (!g) continue;
        gn.g = g;
        for (int seed = 1; seed <= 6; seed++) {
            struct sampler_params sp;
            sampler_defaults(&sp);
            sp.seed = (uint64_t)seed * 7919 + (uint64_t)si;
            sp.temperature = seed % 3 == 0 ? 1.5f : 0.7f;
            sp.greedy = seed == 6;
            const int max_tokens = seed % 2 ? 48 : 96;
            for (int masked = 1; masked >= (seed == 1 ? 0 : 1); masked--) {
                llm_truncate(&tiny->llm, 0);
                T_ASSERTF(llm_forward(&tiny->llm, prompt, NULL, np, logits, &e) == 0, "%s", e.msg);
                int st = generate(&gn, masked, &sp, max_tokens, logits, next_model, tiny, out, sizeof out, &n);
                int ok = answer_ok(out, n, schemas[si]);
                if (!masked) { free_bad += !ok; continue; }
                runs++;
                good += ok;
                stopped += st;
                T_ASSERTF(ok, "schema %d seed %d: not valid: %s", si, seed, out);
                if (seed == 2) {
                    char shown[200];
                    size_t k = 0;
                    for (size_t j = 0; j < n && k < 160; j++) shown[k++] = out[j] == '\n' || out[j] == '\t' || out[j] == '\r' ? ' ' : out[j];
                    shown[k] = 0;
                    fprintf(stderr, "  schema %d seed %d (%zu bytes): %s%s\n", si, seed, n, shown, n > 160 ? "..." : "");
                }
            }
        }
        grammar_free(g);
    }
    /* the test is not vacuous: the same model without the mask writes no valid answer */
    T_EQ_INT(free_bad, N_SCHEMAS);
    T_EQ_INT(good, runs);
    fprintf(stderr, "  tiny model: %d/%d constrained answers valid (%d ended by a stop token, the rest complete at "
            "max_tokens); mask %.1f us (thread CPU time) per token over %ld tokens\n", good, runs, stopped, 1e6 * gn.t_mask / (double)gn.n_mask,
            gn.n_mask);
    free(prompt);
    free(logits);
    grammar_scratch_free(gn.sc);
    grammar_vocab_free(v);
}

/* Many seeds with random logits (no model: fast), small budgets included: every answer is complete
 * and valid within max_tokens. */
static void test_generate_random(void)
{
    if (!meta) { T_SKIP(test_generate_random, "no tokenizer"); return; }
    struct err e = {{0}};
    struct grammar_vocab *v = NULL;
    const int32_t stops[2] = {128001, 128009};
    T_ASSERTF(grammar_vocab_init(&v, meta, stops, 2, NULL, 0, &e) == 0, "%s", e.msg);
    if (!v) return;
    struct gen gn = {.v = v, .tok = meta};
    T_ASSERTF(grammar_scratch_init(&gn.sc, v, &e) == 0, "%s", e.msg);
    const int V = grammar_vocab_size(v);
    float *logits = malloc((size_t)V * sizeof *logits);
    char out[8192];
    size_t n;
    int runs = 0, good = 0;
    for (int si = 0; si < N_SCHEMAS; si++) {
        struct grammar *g = compile_ok(schemas[si]);
        if (!g) continue;
        gn.g = g;
        struct grammar_state s0;
        grammar_state_init(&s0, g);
        const int minb = (int)grammar_min_bytes(&s0);
        for (int seed = 1; seed <= 12; seed++) {
            struct sampler_params sp;
            sampler_defaults(&sp);
            sp.seed = (uint64_t)seed;
            sp.top_k = seed == 4 ? 0 : 100; /* top-k off once: every allowed id a candidate */
            sp.top_p = seed == 4 ? 1.0f : 0.8f;
            /* budgets from the shortest answer exactly up to roomy */
            const int max_tokens = seed <= 3 ? minb + seed - 1 : 24 + 8 * seed;
            struct rnd r = {.seed = (uint64_t)seed * 1000003u + (uint64_t)si, .V = V};
            next_random(&r, 0, logits);
            generate(&gn, 1, &sp, max_tokens, logits, next_random, &r, out, sizeof out, &n);
            int ok = answer_ok(out, n, schemas[si]);
            runs++;
            good += ok;
            T_ASSERTF(ok, "schema %d seed %d budget %d: not valid: %s", si, seed, max_tokens, out);
        }
        grammar_free(g);
    }
    T_EQ_INT(good, runs);
    fprintf(stderr, "  random logits: %d/%d valid; mask %.1f us (thread CPU time) per token over %ld tokens\n", good, runs,
            1e6 * gn.t_mask / (double)gn.n_mask, gn.n_mask);
    free(logits);
    grammar_scratch_free(gn.sc);
    grammar_vocab_free(v);
}

/* ---------------------------------------------------------------- cost of one mask */

static void time_masks(const char *name, const struct tokenizer *tok, const int32_t *stops, int n_stops)
{
    struct err e = {{0}};
    struct grammar_vocab *v = NULL;
    double t0 = time_now();
    T_ASSERTF(grammar_vocab_init(&v, tok, stops, n_stops, NULL, 0, &e) == 0, "%s", e.msg);
    double t_init = time_now() - t0;
    struct grammar_scratch *sc = NULL;
    if (!v || grammar_scratch_init(&sc, v, &e)) { grammar_vocab_free(v); return; }
    uint32_t *a = malloc(grammar_mask_words(grammar_vocab_size(v)) * 4);
    static const struct { const char *schema, *prefix, *what; } c[] = {
        {NULL, "", "start"},
        {NULL, "{\"a\":", "after a colon"},
        {NULL, "{\"a\":\"xx", "inside a string"},
        {NULL, "{\"a\":\"x\xe4", "inside a UTF-8 character"},
        {NULL, "{\"a\":12", "inside a number"},
        {PERSON, "{\"name\":\"A\",\"age\":3,", "schema: before a key"},
        {PERSON, "{\"name\":\"Ann", "schema: inside a string"},
    };
    fprintf(stderr, "  %s: vocabulary trie built in %.0f ms\n", name, 1e3 * t_init);
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        struct grammar *g = compile_ok(c[i].schema);
        if (!g) continue;
        struct grammar_state s;
        grammar_state_init(&s, g);
        grammar_feed(&s, c[i].prefix, strlen(c[i].prefix));
        /* thread CPU time, best and median of 21 */
        double t[21];
        int n = 0;
        for (int r = 0; r < 21; r++) {
            t0 = cpu_now();
            n = grammar_mask(&s, v, sc, 0, a);
            t[r] = 1e6 * (cpu_now() - t0);
        }
        for (int x = 0; x < 21; x++)
            for (int y = x + 1; y < 21; y++)
                if (t[y] < t[x]) { double z = t[x]; t[x] = t[y]; t[y] = z; }
        fprintf(stderr, "    %-28s best %7.1f us, median %7.1f us per mask (%d ids allowed)\n", c[i].what, t[0], t[10], n);
        grammar_free(g);
    }
    free(a);
    grammar_scratch_free(sc);
    grammar_vocab_free(v);
}

static void test_mask_cost(void)
{
    const int32_t stops[2] = {128001, 128009};
    if (tiny) time_masks("tiny model's tokenizer (MiniCPM files)", tiny->tok, tiny->stop, tiny->n_stop);
    if (meta) time_masks("Meta's Llama-3 tokenizer.json (128256 ids)", meta, stops, 2);
    T_ASSERT(tiny && meta);
}

static void test_setup(void)
{
    struct stat st;
    if (stat(META_JSON, &st) != 0) {
        fprintf(stderr, "  .cache missing: running tools/fetch_tokenizer.sh --tokenizer-only\n");
        T_ASSERTF(system("bash tools/fetch_tokenizer.sh --tokenizer-only >&2") == 0, "tools/fetch_tokenizer.sh failed (needs npm)");
    }
    struct err e = {{0}};
    T_ASSERTF(tokenizer_load_file(&meta, META_JSON, &e) == 0, "%s", e.msg);
    struct engine_options o;
    engine_options_default(&o);
    o.model_dir = t_tiny_model(1);
    o.device = "cpu";
    o.dtype = DTYPE_F32;
    o.ctx = 256;
    o.max_batch = 64;
    o.quiet = 1;
    o.threads = 1; /* the tiny model's matmuls are small: OpenMP threads only spin */
    T_ASSERTF(o.model_dir && engine_open(&tiny, &o, &e) == 0, "engine_open: %s", e.msg);
    T_ASSERT(!tiny || tiny->tok);
    if (tiny && !tiny->tok) { engine_close(tiny); tiny = NULL; }
}

int main(void)
{
    T_RUN(test_setup);
    T_RUN(test_compile_errors);
    T_RUN(test_json_object);
    T_RUN(test_bounds);
    T_RUN(test_schema_texts);
    T_RUN(test_min_bytes);
    T_RUN(test_mask_brute);
    T_RUN(test_generate_random);
    T_RUN(test_generate_tiny_model);
    T_RUN(test_mask_cost);
    if (tiny) engine_close(tiny);
    tokenizer_free(meta);
    return t_main_end("test_grammar");
}
