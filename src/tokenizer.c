/* tokenizer.c: loading a HF tokenizer.json (byte-level BPE of the Llama-3 kind) and its companion files
 * into the immutable struct tokenizer; id lookups. Encoding is in tokenizer_encode.c, decoding in
 * tokenizer_decode.c, the MiniCPM file generator in tokenizer_files.c.
 * Only the shapes HF uses for Llama-3 are accepted (normalizer null, Split-regex + ByteLevel pre-tokenizer,
 * BPE without byte fallback, ByteLevel decoder); anything else fails with a message naming the field, so a
 * different tokenizer can never be mis-encoded silently. */
#include <cJSON.h>
#include <stdbool.h>
#include <string.h>

#include "tokenizer_impl.h"

#define TOK_MAX_JSON_BYTES ((size_t)256 << 20)
#define TOK_MAX_SIDE_JSON_BYTES ((size_t)16 << 20)

uint64_t tok_hash(const void *p, size_t n)
{
    /* 8 bytes at a time with a multiply-xorshift mix; tokens are short, so this beats byte-wise FNV */
    const unsigned char *s = p;
    uint64_t h = 0x243F6A8885A308D3ull ^ (n * 0x9E3779B97F4A7C15ull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        h = (h ^ v) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 32;
        s += 8;
        n -= 8;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) v |= (uint64_t)s[i] << (8 * i);
    h = (h ^ v) * 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 29;
    h *= 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 32);
}

int tok_utf8_len(const unsigned char *s, size_t n)
{
    if (n == 0) return 0;
    unsigned c = s[0];
    if (c < 0x80) return 1;
    if (c < 0xC2) return 0;
    if (c < 0xE0) return (n >= 2 && (s[1] & 0xC0) == 0x80) ? 2 : 0;
    if (c < 0xF0) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && s[1] < 0xA0) return 0; /* overlong */
        if (c == 0xED && s[1] >= 0xA0) return 0; /* surrogate */
        return 3;
    }
    if (c < 0xF5) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) return 0;
        if (c == 0xF0 && s[1] < 0x90) return 0;  /* overlong */
        if (c == 0xF4 && s[1] >= 0x90) return 0; /* > U+10FFFF */
        return 4;
    }
    return 0;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the others to U+0100.. in order. */
static void byte_level_tables(uint32_t byte_to_cp[256], int16_t cp_to_byte[324])
{
    int n = 0;
    for (int i = 0; i < 324; i++) cp_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        byte_to_cp[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
        cp_to_byte[byte_to_cp[b]] = (int16_t)b;
    }
}

static uint32_t utf8_decode_one(const unsigned char *s, int len)
{
    if (len == 1) return s[0];
    if (len == 2) return ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
    if (len == 3) return ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    return ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) | ((uint32_t)(s[2] & 0x3F) << 6) |
           (s[3] & 0x3F);
}

/* Maps a byte-level string (each char stands for one byte) to raw bytes in out (capacity >= strlen(s)).
 * Returns the byte count, or -1 when some char is not a byte-level char. */
static int byte_level_to_raw(const int16_t cp_to_byte[324], const char *s, size_t n, char *out)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    int k = 0;
    while (i < n) {
        int l = tok_utf8_len(u + i, n - i);
        if (!l) return -1;
        uint32_t cp = utf8_decode_one(u + i, l);
        if (cp >= 324 || cp_to_byte[cp] < 0) return -1;
        out[k++] = (char)cp_to_byte[cp];
        i += (size_t)l;
    }
    return k;
}

static int arena_add(struct tokenizer *t, const char *s, size_t n, uint32_t *off, struct err *e)
{
    if (t->arena_len + n > UINT32_MAX) return err_set(e, "tokenizer: token bytes exceed 4 GiB");
    if (t->arena_len + n > t->arena_cap) {
        size_t cap = t->arena_cap ? t->arena_cap : 1 << 20;
        while (cap < t->arena_len + n) cap *= 2;
        char *a = realloc(t->arena, cap);
        if (!a) return err_set(e, "tokenizer: out of memory (arena %zu bytes)", cap);
        t->arena = a;
        t->arena_cap = cap;
    }
    memcpy(t->arena + t->arena_len, s, n);
    *off = (uint32_t)t->arena_len;
    t->arena_len += n;
    return 0;
}

static int trie_new_node(struct tokenizer *t, uint8_t byte, struct err *e)
{
    if (t->n_trie == t->cap_trie) {
        int cap = t->cap_trie ? 2 * t->cap_trie : 1024;
        struct tok_trie_node *nt = realloc(t->trie, (size_t)cap * sizeof *nt);
        if (!nt) return err_set(e, "tokenizer: out of memory (trie)");
        t->trie = nt;
        t->cap_trie = cap;
    }
    t->trie[t->n_trie] = (struct tok_trie_node){.child = -1, .sibling = -1, .id = -1, .byte = byte};
    return t->n_trie++;
}

static int trie_insert(struct tokenizer *t, const char *s, size_t n, int32_t id, struct err *e)
{
    int node = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = (uint8_t)s[i];
        int c = t->trie[node].child;
        while (c >= 0 && t->trie[c].byte != b) c = t->trie[c].sibling;
        if (c < 0) {
            c = trie_new_node(t, b, e);
            if (c < 0) return -1;
            t->trie[c].sibling = t->trie[node].child;
            t->trie[node].child = c;
        }
        node = c;
    }
    t->trie[node].id = id;
    t->added_first[(uint8_t)s[0]] = 1;
    return 0;
}

/* The same id may be listed twice; the later entry wins, as in HF's maps. */
static int add_added_token(struct tokenizer *t, int32_t id, const char *content, struct err *e)
{
    size_t n = strlen(content);
    if (n == 0 || n > TOK_MAX_TOKEN_BYTES) return err_set(e, "added token %d: bad length %zu", id, n);
    free(t->added_content[id]);
    t->added_content[id] = strdup(content);
    if (!t->added_content[id]) return err_set(e, "tokenizer: out of memory");
    if (trie_insert(t, content, n, id, e)) return -1;
    /* decode bytes: HF's ByteLevel decoder maps each char back to its byte when all chars are byte-level
     * chars, else keeps the content's UTF-8 */
    char *raw = malloc(n + 1);
    if (!raw) return err_set(e, "tokenizer: out of memory");
    uint32_t cp_dummy[256];
    int16_t c2b[324];
    byte_level_tables(cp_dummy, c2b);
    int k = byte_level_to_raw(c2b, content, n, raw);
    int rc = k >= 0 ? arena_add(t, raw, (size_t)k, &t->tok_off[id], e) : arena_add(t, content, n, &t->tok_off[id], e);
    t->tok_len[id] = k >= 0 ? (uint32_t)k : (uint32_t)n;
    t->tok_kind[id] = TOK_KIND_ADDED;
    free(raw);
    return rc;
}

static int vmap_insert(struct tokenizer *t, int32_t id, uint32_t off, uint32_t len)
{
    uint64_t h = tok_hash(t->arena + off, len);
    for (uint64_t i = h & t->vmap_mask;; i = (i + 1) & t->vmap_mask) {
        struct tok_vmap_slot *sl = &t->vmap[i];
        if (!sl->id1) {
            *sl = (struct tok_vmap_slot){.id1 = (uint32_t)id + 1, .hash = (uint32_t)(h >> 32), .off = off, .len = len};
            return 0;
        }
        if (sl->hash == (uint32_t)(h >> 32) && sl->len == len && !memcmp(t->arena + sl->off, t->arena + off, len))
            return -1; /* two ids with the same bytes */
    }
}

static void mmap_insert(struct tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t merged)
{
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    for (uint64_t i = tok_merge_hash(key) & t->mmap_mask;; i = (i + 1) & t->mmap_mask) {
        struct tok_mmap_slot *sl = &t->mmap[i];
        if (!sl->key || sl->key == key) { /* a repeated pair: the later rank wins, like HF's HashMap collect */
            *sl = (struct tok_mmap_slot){.key = key, .rank = rank, .merged = merged};
            return;
        }
    }
}

static uint64_t pow2_at_least(uint64_t n)
{
    uint64_t p = 1024;
    while (p < n) p *= 2;
    return p;
}

static bool json_is_null_or_false(const cJSON *j) { return !j || cJSON_IsNull(j) || cJSON_IsFalse(j); }

/* Rewrites the pre-tokenizer regex for PCRE2 so that \s and \S mean exactly Oniguruma's White_Space set:
 * PCRE2's \s (UCP) also matches U+180E MONGOLIAN VOWEL SEPARATOR, the one code point where the two engines
 * differ (DEPS.md §4). */
static int rewrite_regex(const char *in, char **out, struct err *e)
{
    static const char ws[] = "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
                             "\\x{202F}\\x{205F}\\x{3000}";
    size_t n = strlen(in), cap = n * (sizeof ws + 4) + 1;
    char *o = malloc(cap);
    if (!o) return err_set(e, "tokenizer: out of memory");
    size_t k = 0;
    int in_class = 0;
    for (size_t i = 0; i < n; i++) {
        char c = in[i];
        if (c == '\\' && i + 1 < n) {
            char d = in[i + 1];
            if (d == 's' || d == 'S') {
                if (in_class && d == 'S') {
                    free(o);
                    return err_set(e, "pre_tokenizer regex: \\S inside a character class is not supported");
                }
                k += (size_t)snprintf(o + k, cap - k, "%s%s%s", in_class ? "" : (d == 'S' ? "[^" : "["), ws, in_class ? "" : "]");
            } else {
                o[k++] = c;
                o[k++] = d;
            }
            i++;
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = 1;
            o[k++] = c;
            if (i + 1 < n && in[i + 1] == '^') o[k++] = in[++i];
            if (i + 1 < n && in[i + 1] == ']') o[k++] = in[++i]; /* a leading ']' is literal */
            continue;
        }
        if (c == ']' && in_class) in_class = 0;
        o[k++] = c;
    }
    o[k] = 0;
    *out = o;
    return 0;
}

static int load_pre_tokenizer(struct tokenizer *t, const cJSON *pt, struct err *e)
{
    /* Accepted: Sequence[Split{Regex, Isolated, invert false}, ByteLevel{add_prefix_space false, use_regex false}] */
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(pt, "type");
    const cJSON *seq = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "Sequence") || cJSON_GetArraySize(seq) != 2)
        return err_set(e, "pre_tokenizer: expected a Sequence of [Split, ByteLevel] (Llama-3 form)");
    const cJSON *split = cJSON_GetArrayItem(seq, 0), *bl = cJSON_GetArrayItem(seq, 1);
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(split, "type");
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(split, "pattern"), "Regex");
    const cJSON *beh = cJSON_GetObjectItemCaseSensitive(split, "behavior");
    if (!cJSON_IsString(st) || strcmp(st->valuestring, "Split") || !cJSON_IsString(pat) || !cJSON_IsString(beh) ||
        strcmp(beh->valuestring, "Isolated") || !json_is_null_or_false(cJSON_GetObjectItemCaseSensitive(split, "invert")))
        return err_set(e, "pre_tokenizer[0]: expected Split with a Regex pattern, behavior Isolated, invert false");
    const cJSON *blt = cJSON_GetObjectItemCaseSensitive(bl, "type");
    if (!cJSON_IsString(blt) || strcmp(blt->valuestring, "ByteLevel") ||
        !json_is_null_or_false(cJSON_GetObjectItemCaseSensitive(bl, "add_prefix_space")) ||
        !json_is_null_or_false(cJSON_GetObjectItemCaseSensitive(bl, "use_regex")))
        return err_set(e, "pre_tokenizer[1]: expected ByteLevel with add_prefix_space false, use_regex false");
    static const char llama3[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
                                 "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    t->re_llama3 = !strcmp(pat->valuestring, llama3);
    char *re_src;
    if (rewrite_regex(pat->valuestring, &re_src, e)) return -1;
    int ec;
    PCRE2_SIZE eo;
    t->re = pcre2_compile((PCRE2_SPTR)re_src, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &ec, &eo,
                          NULL);
    free(re_src);
    if (!t->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return err_set(e, "pre_tokenizer regex: %s at offset %zu", (char *)msg, (size_t)eo);
    }
    /* JIT is a speed-up only; the interpreter gives the same matches */
    t->re_jit = pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE) == 0;
    return 0;
}

/* post_processor: ByteLevel (adds nothing), TemplateProcessing, or a Sequence of them. Only the "single"
 * template matters here: special tokens before and after $A. */
static int load_post_processor(struct tokenizer *t, const cJSON *pp, struct err *e)
{
    if (!pp || cJSON_IsNull(pp)) return 0;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(pp, "type");
    if (!cJSON_IsString(type)) return err_set(e, "post_processor: missing type");
    if (!strcmp(type->valuestring, "ByteLevel")) return 0;
    if (!strcmp(type->valuestring, "Sequence")) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(pp, "processors")) if (load_post_processor(t, it, e)) return -1;
        return 0;
    }
    if (strcmp(type->valuestring, "TemplateProcessing"))
        return err_set(e, "post_processor: type %s is not supported", type->valuestring);
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(pp, "single"), *sp = cJSON_GetObjectItemCaseSensitive(pp, "special_tokens");
    const cJSON *it;
    int seen_a = 0;
    t->n_post_pre = t->n_post_suf = 0;
    cJSON_ArrayForEach(it, single) {
        const cJSON *tok = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
        if (cJSON_GetObjectItemCaseSensitive(it, "Sequence")) {
            seen_a = 1;
            continue;
        }
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(tok, "id");
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(sp, cJSON_IsString(name) ? name->valuestring : ""), "ids");
        if (!cJSON_IsString(name) || cJSON_GetArraySize(ids) < 1)
            return err_set(e, "post_processor: malformed TemplateProcessing.single entry");
        const cJSON *idj;
        cJSON_ArrayForEach(idj, ids) {
            int *cnt = seen_a ? &t->n_post_suf : &t->n_post_pre;
            int32_t *arr = seen_a ? t->post_suf : t->post_pre;
            if (!cJSON_IsNumber(idj) || *cnt >= 8 || idj->valuedouble < 0 || idj->valuedouble >= t->n_ids ||
                t->tok_kind[(int)idj->valuedouble] == TOK_KIND_NONE)
                return err_set(e, "post_processor: special token %s has a bad id", name->valuestring);
            arr[(*cnt)++] = (int32_t)idj->valuedouble;
        }
    }
    return 0;
}

static int load_model(struct tokenizer *t, const cJSON *root, struct err *e)
{
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(model, "type");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsObject(model) || (mt && (!cJSON_IsString(mt) || strcmp(mt->valuestring, "BPE"))))
        return err_set(e, "model: expected type BPE");
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges)) return err_set(e, "model: missing vocab object or merges array");
    if (!json_is_null_or_false(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback")))
        return err_set(e, "model.byte_fallback: true is not supported");
    const char *affix[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(model, affix[i]);
        if (a && !cJSON_IsNull(a) && !(cJSON_IsString(a) && !a->valuestring[0]))
            return err_set(e, "model.%s: only null is supported", affix[i]);
    }
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (dropout && !cJSON_IsNull(dropout)) return err_set(e, "model.dropout: only null is supported");
    t->ignore_merges = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "ignore_merges"));

    /* id space: vocab ids and added token ids */
    int max_id = -1;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble >= TOK_MAX_IDS || it->valuedouble != (int)it->valuedouble)
            return err_set(e, "model.vocab[\"%.40s\"]: bad id", it->string);
        if ((int)it->valuedouble > max_id) max_id = (int)it->valuedouble;
    }
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(root, "added_tokens")) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= TOK_MAX_IDS ||
            id->valuedouble != (int)id->valuedouble)
            return err_set(e, "added_tokens: entry with a missing or bad id (an integer in 0..%d)", TOK_MAX_IDS - 1);
        if ((int)id->valuedouble > max_id) max_id = (int)id->valuedouble;
    }
    if (max_id < 255) return err_set(e, "model.vocab: too small (%d ids)", max_id + 1);
    /* +64 ids of room for special tokens that transformers adds (tokenizer_load's companion files) */
    int cap_ids = max_id + 1 + 64;
    t->n_ids = max_id + 1;
    t->cap_ids = cap_ids;
    t->tok_off = calloc((size_t)cap_ids, sizeof *t->tok_off);
    t->tok_len = calloc((size_t)cap_ids, sizeof *t->tok_len);
    t->tok_kind = calloc((size_t)cap_ids, 1);
    t->added_content = calloc((size_t)cap_ids, sizeof *t->added_content);
    int nv = cJSON_GetArraySize(vocab);
    t->vmap_mask = pow2_at_least((uint64_t)nv * 2) - 1;
    t->vmap = calloc(t->vmap_mask + 1, sizeof *t->vmap);
    if (!t->tok_off || !t->tok_len || !t->tok_kind || !t->added_content || !t->vmap)
        return err_set(e, "tokenizer: out of memory");

    uint32_t b2c[256];
    int16_t c2b[324];
    byte_level_tables(b2c, c2b);
    char raw[TOK_MAX_TOKEN_BYTES];
    cJSON_ArrayForEach(it, vocab) {
        int id = (int)it->valuedouble;
        size_t n = strlen(it->string);
        if (n > TOK_MAX_TOKEN_BYTES) return err_set(e, "model.vocab: token of id %d is %zu bytes long", id, n);
        int k = byte_level_to_raw(c2b, it->string, n, raw);
        if (k <= 0) return err_set(e, "model.vocab[\"%.40s\"]: not a byte-level token", it->string);
        if (t->tok_kind[id]) return err_set(e, "model.vocab: id %d appears twice", id);
        if (arena_add(t, raw, (size_t)k, &t->tok_off[id], e)) return -1;
        t->tok_len[id] = (uint32_t)k;
        t->tok_kind[id] = TOK_KIND_VOCAB;
        if (vmap_insert(t, id, t->tok_off[id], (uint32_t)k)) return err_set(e, "model.vocab: token \"%.40s\" appears twice", it->string);
    }
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        t->byte_id[b] = tok_vocab_find(t, &c, 1);
        if (t->byte_id[b] < 0) return err_set(e, "model.vocab: byte 0x%02x has no token", b);
    }

    int nm = cJSON_GetArraySize(merges);
    t->mmap_mask = pow2_at_least((uint64_t)nm + (uint64_t)nm / 2 + 1) - 1; /* load <= 2/3: 8 MiB for Llama-3 */
    t->mmap = calloc(t->mmap_mask + 1, sizeof *t->mmap);
    if (!t->mmap) return err_set(e, "tokenizer: out of memory (merges)");
    char both[2 * TOK_MAX_TOKEN_BYTES];
    int rank = 0;
    cJSON_ArrayForEach(it, merges) {
        const char *l, *r;
        size_t ln, rn;
        if (cJSON_IsString(it)) { /* "left right" */
            const char *sp = strchr(it->valuestring, ' ');
            if (!sp || strchr(sp + 1, ' ')) return err_set(e, "model.merges[%d]: \"%.40s\" is not \"a b\"", rank, it->valuestring);
            l = it->valuestring, ln = (size_t)(sp - l), r = sp + 1, rn = strlen(r);
        } else if (cJSON_GetArraySize(it) == 2 && cJSON_IsString(cJSON_GetArrayItem(it, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(it, 1))) { /* ["left", "right"], tokenizers >= 0.20 */
            l = cJSON_GetArrayItem(it, 0)->valuestring, r = cJSON_GetArrayItem(it, 1)->valuestring;
            ln = strlen(l), rn = strlen(r);
        } else {
            return err_set(e, "model.merges[%d]: neither \"a b\" nor [\"a\", \"b\"]", rank);
        }
        if (ln > TOK_MAX_TOKEN_BYTES || rn > TOK_MAX_TOKEN_BYTES) return err_set(e, "model.merges[%d]: token too long", rank);
        int kl = byte_level_to_raw(c2b, l, ln, both), kr = kl > 0 ? byte_level_to_raw(c2b, r, rn, both + kl) : -1;
        int32_t a = kl > 0 ? tok_vocab_find(t, both, (size_t)kl) : -1;
        int32_t b = kr > 0 ? tok_vocab_find(t, both + kl, (size_t)kr) : -1;
        int32_t m = (a >= 0 && b >= 0) ? tok_vocab_find(t, both, (size_t)(kl + kr)) : -1;
        if (m < 0)
            return err_set(e, "model.merges[%d]: \"%.*s\" / \"%.*s\" or their concatenation is not in the vocab", rank,
                           (int)(ln < 40 ? ln : 40), l, (int)(rn < 40 ? rn : 40), r);
        mmap_insert(t, a, b, rank, m);
        rank++;
    }
    return 0;
}

static int load_added_tokens(struct tokenizer *t, const cJSON *root, struct err *e)
{
    if (trie_new_node(t, 0, e) < 0) return -1; /* root */
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(root, "added_tokens")) {
        int id = (int)cJSON_GetObjectItemCaseSensitive(it, "id")->valuedouble;
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        if (!cJSON_IsString(content)) return err_set(e, "added_tokens: id %d has no content string", id);
        const char *flags[] = {"lstrip", "rstrip", "single_word"};
        for (int i = 0; i < 3; i++)
            if (!json_is_null_or_false(cJSON_GetObjectItemCaseSensitive(it, flags[i])))
                return err_set(e, "added_tokens: \"%.40s\" has %s true, which is not supported", content->valuestring, flags[i]);
        /* normalized true would only matter with a normalizer, and this tokenizer has none */
        if (add_added_token(t, id, content->valuestring, e)) return -1;
    }
    return 0;
}

/* The string of a special-token entry: "x" or {"content": "x", ...}. */
static const char *special_str(const cJSON *j)
{
    if (cJSON_IsString(j)) return j->valuestring;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "content");
    return cJSON_IsString(c) ? c->valuestring : NULL;
}

static int read_json(const char *path, size_t max, cJSON **out, int optional, struct err *e)
{
    char *buf;
    size_t n;
    *out = NULL;
    if (optional) {
        FILE *f = fopen(path, "rb");
        if (!f) return 0;
        fclose(f);
    }
    if (read_file(path, max, &buf, &n, e)) return -1;
    *out = cJSON_ParseWithLength(buf, n);
    free(buf);
    if (!*out) return err_set(e, "%s: malformed JSON", path);
    return 0;
}

/* transformers' PreTrainedTokenizerFast: special tokens named in tokenizer_config.json / special_tokens_map.json
 * (the latter wins) that are not added tokens yet are added as special tokens: an id in the vocab keeps its id
 * (the pad "!" -> 0), a new string gets the next free id. */
static int load_companions(struct tokenizer *t, const char *dir, struct err *e)
{
    char path[4096];
    cJSON *cfg = NULL, *map = NULL;
    int rc = -1;
    if (path_join(path, sizeof path, dir, "tokenizer_config.json", e) || read_json(path, TOK_MAX_SIDE_JSON_BYTES, &cfg, 1, e))
        goto out;
    if (path_join(path, sizeof path, dir, "special_tokens_map.json", e) || read_json(path, TOK_MAX_SIDE_JSON_BYTES, &map, 1, e))
        goto out;
    if (cfg) {
        const cJSON *cu = cJSON_GetObjectItemCaseSensitive(cfg, "clean_up_tokenization_spaces");
        t->clean_up = cJSON_IsTrue(cu);
    }
    static const char *keys[] = {"bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"};
    int32_t *slot[] = {&t->sp.bos, &t->sp.eos, &t->sp.unk, &t->sp.pad, NULL, NULL, NULL};
    for (int pass = 0; pass < 2; pass++) {
        const cJSON *src = pass == 0 ? cfg : map;
        if (!src) continue;
        for (int k = 0; k < 8; k++) {
            const cJSON *list = k < 7 ? NULL : cJSON_GetObjectItemCaseSensitive(src, "additional_special_tokens");
            const cJSON *one = k < 7 ? cJSON_GetObjectItemCaseSensitive(src, keys[k]) : NULL;
            int cnt = k < 7 ? 1 : cJSON_GetArraySize(list);
            for (int j = 0; j < cnt; j++) {
                const cJSON *v = k < 7 ? one : cJSON_GetArrayItem(list, j);
                const char *s = special_str(v);
                if (!s || !*s) continue;
                int32_t id = tokenizer_token_id(t, s);
                if (id < 0 || t->tok_kind[id] != TOK_KIND_ADDED) {
                    if (id < 0) {
                        if (t->n_ids >= t->cap_ids) {
                            err_set(e, "%s: too many new special tokens", path);
                            goto out;
                        }
                        id = t->n_ids++;
                    }
                    if (strlen(s) > TOK_MAX_TOKEN_BYTES) {
                        err_set(e, "%s: special token too long", path);
                        goto out;
                    }
                    /* keep the vocab bytes for decoding when the id is a vocab token */
                    uint8_t kind = t->tok_kind[id];
                    uint32_t off = t->tok_off[id], len = t->tok_len[id];
                    if (add_added_token(t, id, s, e)) goto out;
                    if (kind == TOK_KIND_VOCAB) t->tok_off[id] = off, t->tok_len[id] = len;
                }
                if (k < 4) *slot[k] = id;
            }
        }
    }
    rc = 0;
out:
    cJSON_Delete(cfg);
    cJSON_Delete(map);
    return rc;
}

static int load_json(struct tokenizer **out, const char *json_path, const char *dir, struct err *e)
{
    *out = NULL;
    struct tokenizer *t = calloc(1, sizeof *t);
    cJSON *root = NULL;
    if (!t) return err_set(e, "tokenizer: out of memory");
    t->sp = (struct tokenizer_specials){-1, -1, -1, -1};
    if (read_json(json_path, TOK_MAX_JSON_BYTES, &root, 0, e)) goto fail;
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    const cJSON *dect = cJSON_GetObjectItemCaseSensitive(dec, "type");
    if (!cJSON_IsObject(root)) {
        err_set(e, "not a JSON object");
    } else if (norm && !cJSON_IsNull(norm)) {
        err_set(e, "normalizer: only null is supported");
    } else if (!cJSON_IsString(dect) || strcmp(dect->valuestring, "ByteLevel")) {
        err_set(e, "decoder: expected ByteLevel");
    } else if (!load_model(t, root, e) && !load_added_tokens(t, root, e) &&
               !load_pre_tokenizer(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), e) &&
               !load_post_processor(t, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), e) &&
               (!dir || !load_companions(t, dir, e))) {
        cJSON_Delete(root);
        *out = t;
        return 0;
    }
    err_prefix(e, "%s", json_path);
fail:
    cJSON_Delete(root);
    tokenizer_free(t);
    return -1;
}

int tokenizer_load_file(struct tokenizer **out, const char *path, struct err *e) { return load_json(out, path, NULL, e); }

int tokenizer_load(struct tokenizer **out, const char *model_dir, struct err *e)
{
    char path[4096];
    if (path_join(path, sizeof path, model_dir, "tokenizer.json", e)) return -1;
    return load_json(out, path, model_dir, e);
}

void tokenizer_free(struct tokenizer *t)
{
    if (!t) return;
    if (t->added_content)
        for (int i = 0; i < t->cap_ids; i++) free(t->added_content[i]);
    free(t->added_content);
    free(t->arena);
    free(t->tok_off);
    free(t->tok_len);
    free(t->tok_kind);
    free(t->vmap);
    free(t->mmap);
    free(t->trie);
    if (t->re) pcre2_code_free(t->re);
    free(t);
}

int32_t tokenizer_token_id(const struct tokenizer *t, const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || !t->trie) return -1;
    int node = 0;
    for (size_t i = 0; i < n && node >= 0; i++) {
        int c = t->trie[node].child;
        while (c >= 0 && t->trie[c].byte != (uint8_t)s[i]) c = t->trie[c].sibling;
        node = c;
    }
    if (node > 0 && t->trie[node].id >= 0) return t->trie[node].id;
    return t->vmap ? tok_vocab_find(t, s, n) : -1;
}

int tokenizer_vocab_size(const struct tokenizer *t) { return t->n_ids; }

int tokenizer_token_bytes(const struct tokenizer *t, int32_t id, const char **bytes, size_t *len)
{
    _Static_assert((int)TOKENIZER_KIND_VOCAB == (int)TOK_KIND_VOCAB && (int)TOKENIZER_KIND_ADDED == (int)TOK_KIND_ADDED, "kinds");
    *bytes = NULL;
    *len = 0;
    if (id < 0 || id >= t->n_ids || t->tok_kind[id] == TOK_KIND_NONE) return TOKENIZER_KIND_NONE;
    *bytes = t->arena + t->tok_off[id];
    *len = t->tok_len[id];
    return t->tok_kind[id];
}

int tokenizer_check_ids(const struct tokenizer *t, int vocab_size, struct err *e)
{
    /* the lowest id in use at or above vocab_size is the one reported */
    for (int id = vocab_size > 0 ? vocab_size : 0; id < t->n_ids; id++) {
        if (t->tok_kind[id] == TOK_KIND_NONE) continue;
        char shown[4 * 40 + 1];
        size_t k = 0;
        const char *src = t->added_content[id] ? t->added_content[id] : t->arena + t->tok_off[id];
        const size_t n = t->added_content[id] ? strlen(src) : t->tok_len[id];
        for (size_t i = 0; i < n && i < 40; i++) {
            const unsigned char ch = (unsigned char)src[i];
            if (ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\') shown[k++] = (char)ch;
            else k += (size_t)snprintf(shown + k, sizeof shown - k, "\\x%02x", ch);
        }
        shown[k] = 0;
        const char *what = t->tok_kind[id] == TOK_KIND_ADDED ? "added token" : "token";
        return err_set(e, "tokenizer: %s \"%s%s\" has id %d, outside the model's vocabulary of %d rows "
                          "(config.json vocab_size): the embedding has no row for it", what, shown,
                       n > 40 ? "..." : "", id, vocab_size);
    }
    return 0;
}

struct tokenizer_specials tokenizer_specials(const struct tokenizer *t) { return t->sp; }
