/* test_safetensors.c: the writer's exact byte format, reading hand-made files, round trips, sharded
 * folders, and every corrupt input giving a one-line error that names the file and the problem. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "safetensors.h"
#include "t.h"
#include "tensor.h"

static char tmpdir[256];

static const char *tpath(const char *name)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

/* Writes a safetensors file by hand: header text (padded to 8 when pad), then data; hlen overrides the
 * declared header length when >= 0. Independent of the writer under test. */
static void put_file(const char *path, const char *header, const void *data, size_t n, int64_t hlen, int pad)
{
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); abort(); }
    size_t hl = strlen(header), padded = pad ? (hl + 7) / 8 * 8 : hl;
    uint64_t L = hlen >= 0 ? (uint64_t)hlen : padded;
    for (int i = 0; i < 8; i++) fputc((int)((L >> (8 * i)) & 0xff), f);
    fwrite(header, 1, hl, f);
    for (size_t i = hl; i < padded; i++) fputc(' ', f);
    if (n) fwrite(data, 1, n, f);
    fclose(f);
}

static void put_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); abort(); }
    fputs(text, f);
    fclose(f);
}

static unsigned char *slurp(const char *path, size_t *n)
{
    char *b = NULL;
    struct err e;
    if (read_file(path, 1 << 30, &b, n, &e)) return NULL;
    return (unsigned char *)b;
}

/* Opens path expecting failure; the message must name the file, contain want, and be one line. */
static void expect_file_error(const char *path, const char *want)
{
    struct safetensors *st = (struct safetensors *)0x1;
    struct err e = {{0}};
    T_EQ_INT(safetensors_open_file(&st, path, &e), -1);
    T_ASSERT(st == NULL);
    T_CONTAINS(e.msg, path);
    T_CONTAINS(e.msg, want);
    T_ASSERTF(strchr(e.msg, '\n') == NULL, "multi-line: %s", e.msg);
}

static uint8_t data64[64];

static void test_writer_exact_bytes(void)
{
    uint16_t a[6];
    for (int i = 0; i < 6; i++) a[i] = f32_to_f16((float)i - 2.5f);
    float b[2] = {3.25f, -1e-3f};
    struct tensor ts[2] = {tensor_make(DTYPE_F16, device_cpu(), a, 2, (int64_t)2, (int64_t)3),
                           tensor_make(DTYPE_F32, device_cpu(), b, 1, (int64_t)2)};
    ts[0].name = "w.a";
    ts[1].name = "bias \"q\"";
    struct err e = {{0}};
    T_EQ_INT(safetensors_write_file(tpath("exact.safetensors"), ts, 2, &e), 0);
    size_t n = 0;
    unsigned char *f = slurp(tpath("exact.safetensors"), &n);
    T_ASSERT(f != NULL);
    if (!f) return;
    const char *want = "{\"__metadata__\":{\"format\":\"pt\"},\"w.a\":{\"dtype\":\"F16\",\"shape\":[2,3],"
                       "\"data_offsets\":[0,12]},\"bias \\\"q\\\"\":{\"dtype\":\"F32\",\"shape\":[2],"
                       "\"data_offsets\":[12,20]}}";
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | f[i];
    T_EQ_INT(hl % 8, 0);
    T_EQ_INT(hl, (strlen(want) + 7) / 8 * 8);
    T_EQ_INT(n, 8 + hl + 20);
    T_ASSERT(hl >= strlen(want) && memcmp(f + 8, want, strlen(want)) == 0);
    for (size_t i = strlen(want); i < hl; i++) T_ASSERT(f[8 + i] == ' ');
    T_ASSERT(memcmp(f + 8 + hl, a, 12) == 0 && memcmp(f + 8 + hl + 12, b, 8) == 0);
    T_ASSERT(access(tpath("exact.safetensors.tmp"), F_OK) != 0);
    free(f);
}

static void test_read_handmade(void)
{
    /* key order differs from data order, no padding, a 0-d tensor, and an empty tensor */
    float v[5] = {1.5f, -2.0f, 7.0f, 0.25f, 42.0f};
    put_file(tpath("hand.safetensors"),
             "{\"b\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[16,20]},"
             "\"e\":{\"dtype\":\"BF16\",\"shape\":[0,4],\"data_offsets\":[16,16]},"
             "\"__metadata__\":{\"k\":\"v\"},"
             "\"a\":{\"dtype\":\"I32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}",
             v, sizeof v, -1, 0);
    struct safetensors *st = NULL;
    struct err e = {{0}};
    T_EQ_INT(safetensors_open_file(&st, tpath("hand.safetensors"), &e), 0);
    if (!st) { fprintf(stderr, "  %s\n", e.msg); T_ASSERT(0); return; }
    T_EQ_INT(safetensors_count(st), 3);
    T_EQ_INT(safetensors_shard_count(st), 1);
    const struct safetensors_tensor *a = safetensors_find(st, "a"), *b = safetensors_find(st, "b"),
                                    *z = safetensors_find(st, "e");
    T_ASSERT(a && b && z);
    if (a && b && z) {
        T_EQ_INT(a->dtype, DTYPE_I32);
        T_EQ_INT(a->ndim, 2);
        T_EQ_INT(a->shape[0], 2);
        T_EQ_INT(a->nbytes, 16);
        T_ASSERT(memcmp(a->data, v, 16) == 0);
        T_EQ_INT(b->ndim, 0);
        float bv;
        memcpy(&bv, b->data, 4); /* this header is unpadded, so the data may be unaligned */
        T_NEAR(bv, 42.0, 0);
        T_EQ_INT(z->dtype, DTYPE_BF16);
        T_EQ_INT(z->nbytes, 0);
        struct tensor t = safetensors_tensor_view(a);
        T_ASSERT(tensor_on_host(&t));
        T_EQ_INT(tensor_numel(&t), 4);
        T_EQ_STR(t.name, "a");
    }
    T_ASSERT(safetensors_find(st, "c") == NULL);
    T_ASSERT(safetensors_metadata(st, "k") && !strcmp(safetensors_metadata(st, "k"), "v"));
    struct tensor t;
    T_EQ_INT(safetensors_get(st, "missing.weight", &t, &e), -1);
    T_CONTAINS(e.msg, "missing.weight");
    T_CONTAINS(e.msg, "hand.safetensors");
    safetensors_close(st);
}

static void test_round_trip_many(void)
{
    enum { N = 300 };
    static uint16_t bufs[N][7];
    struct tensor ts[N];
    char names[N][32];
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < 7; j++) bufs[i][j] = (uint16_t)(i * 7 + j + 1);
        snprintf(names[i], sizeof names[i], "layer.%d.w", i);
        ts[i] = tensor_make(i % 2 ? DTYPE_BF16 : DTYPE_F16, device_cpu(), bufs[i], 2, (int64_t)1, (int64_t)(1 + i % 7));
        ts[i].name = names[i];
    }
    struct err e = {{0}};
    T_EQ_INT(safetensors_write_file(tpath("many.safetensors"), ts, N, &e), 0);
    struct safetensors *st = NULL;
    T_EQ_INT(safetensors_open_file(&st, tpath("many.safetensors"), &e), 0);
    if (!st) return;
    T_EQ_INT(safetensors_count(st), N);
    int bad = 0;
    for (int i = 0; i < N; i++) {
        struct tensor t;
        if (safetensors_get(st, names[i], &t, &e)) { bad++; continue; }
        bad += t.dtype != ts[i].dtype || t.shape[1] != ts[i].shape[1] ||
               memcmp(t.data, bufs[i], tensor_nbytes(&ts[i])) != 0;
    }
    T_EQ_INT(bad, 0);
    T_ASSERT(!strcmp(safetensors_metadata(st, "format"), "pt"));
    safetensors_close(st);
}

static void test_corrupt_files(void)
{
    const char *p = tpath("bad.safetensors");
    const char *ok1 = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";
    /* truncated: valid header, 16 data bytes declared, 10 present */
    put_file(p, ok1, data64, 10, -1, 1);
    expect_file_error(p, "truncated");
    put_file(p, "", NULL, 0, 0, 0);
    expect_file_error(p, "too small");
    FILE *f = fopen(p, "wb"); fputs("abc", f); fclose(f);
    expect_file_error(p, "too short");
    put_file(p, ok1, data64, 16, 4096, 1);
    expect_file_error(p, "runs past the end");
    put_file(p, ok1, data64, 16, (int64_t)1 << 40, 1);
    expect_file_error(p, "exceeds the limit");
    put_file(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", data64, 12, -1, 1);
    expect_file_error(p, "run past the 12-byte data area");
    put_file(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", data64, 12, -1, 1);
    expect_file_error(p, "overlap");
    /* the smallest overlap: one byte (b starts on a's last byte) */
    put_file(p, "{\"a\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,8]},"
                "\"b\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[7,15]}}", data64, 15, -1, 1);
    expect_file_error(p, "overlap");
    put_file(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}", data64, 20, -1, 1);
    expect_file_error(p, "gap");
    put_file(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", data64, 8, -1, 1);
    expect_file_error(p, "needs 12");
    put_file(p, "{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,8]}}", data64, 8, -1, 1);
    expect_file_error(p, "shape [2] x F16 needs 4");
    put_file(p, "{\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", data64, 8, -1, 1);
    expect_file_error(p, "dtype \"F64\" is not supported");
    put_file(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", data64, 4, -1, 1);
    expect_file_error(p, "not valid JSON");
    put_file(p, "[1,2,3]", data64, 0, -1, 1);
    expect_file_error(p, "not a JSON object");
    put_file(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", data64, 4, -1, 1);
    expect_file_error(p, "begin after end");
    put_file(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", data64, 4, -1, 1);
    expect_file_error(p, "shape[0]");
    put_file(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", data64, 4, -1, 1);
    expect_file_error(p, "shape[0]");
    put_file(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}", data64, 4, -1, 1);
    expect_file_error(p, "5 dimensions");
    put_file(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", data64, 4, -1, 1);
    expect_file_error(p, "data_offsets");
    put_file(p, "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", data64, 4, -1, 1);
    expect_file_error(p, "dtype");
    put_file(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", data64, 8, -1, 1);
    expect_file_error(p, "appears twice");
    put_file(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} xx", data64, 4, -1, 1);
    expect_file_error(p, "bytes after");
    put_file(p, "{\"__metadata__\":{\"n\":3},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
             data64, 4, -1, 1);
    expect_file_error(p, "not a string");
    put_file(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[4503599627370496,4503599627370496],\"data_offsets\":[0,4]}}", data64, 4,
             -1, 1);
    expect_file_error(p, "shape");
    expect_file_error(tpath("no-such-file.safetensors"), "cannot open");
}

/* Random header corruption must give 0 or -1, never a crash (meaningful under ASan). */
static void test_fuzz_header(void)
{
    const char *hdr = "{\"__metadata__\":{\"format\":\"pt\"},\"w\":{\"dtype\":\"F16\",\"shape\":[2,3],"
                      "\"data_offsets\":[0,12]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}";
    char h[256];
    uint64_t s = 12345;
    int opened = 0, failed = 0;
    for (int it = 0; it < 3000; it++) {
        strcpy(h, hdr);
        int flips = 1 + it % 3;
        for (int k = 0; k < flips; k++) {
            s = s * 6364136223846793005ULL + 1442695040888963407ULL;
            size_t pos = (s >> 33) % strlen(hdr);
            static const char pool[] = "{}[]\",:0123456789-.eE aFB";
            h[pos] = pool[(s >> 17) % (sizeof pool - 1)];
        }
        put_file(tpath("fuzz.safetensors"), h, data64, 20 + (it % 5 == 0 ? 3 : 0), it % 97 == 0 ? 9999 : -1, 1);
        struct safetensors *st = NULL;
        struct err e = {{0}};
        if (safetensors_open_file(&st, tpath("fuzz.safetensors"), &e) == 0) {
            opened++;
            for (int i = 0; i < safetensors_count(st); i++) {
                const struct safetensors_tensor *t = safetensors_at(st, i);
                volatile uint8_t x = 0;
                for (size_t j = 0; j < t->nbytes; j++) x ^= ((const uint8_t *)t->data)[j];
                (void)x;
            }
            safetensors_close(st);
        } else {
            failed++;
            T_ASSERT(strstr(e.msg, "fuzz.safetensors") != NULL && !strchr(e.msg, '\n'));
        }
    }
    T_ASSERT(opened > 0 && failed > 0);
}

static void test_writer_misuse(void)
{
    struct safetensors_spec sp[2] = {{"x", DTYPE_F16, 1, {4}}, {"y", DTYPE_F32, 1, {1}}};
    struct safetensors_writer *w = NULL;
    struct err e = {{0}};
    const char *p = tpath("w.safetensors");
    T_EQ_INT(safetensors_writer_begin(&w, p, sp, 2, NULL, &e), 0);
    T_EQ_INT(safetensors_writer_write(w, data64, 8, &e), 0);
    T_EQ_INT(safetensors_writer_write(w, data64, 5, &e), -1); /* 4 bytes left */
    T_CONTAINS(e.msg, "w.safetensors");
    T_EQ_INT(safetensors_writer_close(w, &e), -1); /* 8 of 12 bytes */
    T_CONTAINS(e.msg, "8 of 12");
    T_ASSERT(access(p, F_OK) != 0 && access(tpath("w.safetensors.tmp"), F_OK) != 0);
    struct safetensors_spec dup[2] = {{"x", DTYPE_F16, 1, {4}}, {"x", DTYPE_F32, 1, {1}}};
    T_EQ_INT(safetensors_writer_begin(&w, p, dup, 2, NULL, &e), -1);
    T_CONTAINS(e.msg, "\"x\"");
    const char *meta[] = {"who", "test", NULL};
    T_EQ_INT(safetensors_writer_begin(&w, p, sp, 2, meta, &e), 0);
    T_EQ_INT(safetensors_writer_write(w, data64, 3, &e), 0); /* chunking at odd boundaries */
    T_EQ_INT(safetensors_writer_write(w, data64 + 3, 9, &e), 0);
    T_EQ_INT(safetensors_writer_close(w, &e), 0);
    struct safetensors *st = NULL;
    T_EQ_INT(safetensors_open_file(&st, p, &e), 0);
    if (st) {
        T_ASSERT(safetensors_metadata(st, "who") && !strcmp(safetensors_metadata(st, "who"), "test"));
        T_ASSERT(!strcmp(safetensors_metadata(st, "format"), "pt"));
        T_ASSERT(memcmp(safetensors_find(st, "y")->data, data64 + 8, 4) == 0);
    }
    safetensors_close(st);
}

/* A folder: shard A holds a, b; shard B holds c. */
static void make_dir(const char *sub, const char *index)
{
    char d[512], cmd[700];
    snprintf(d, sizeof d, "%s/%s", tmpdir, sub);
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", d);
    T_ASSERT(system(cmd) == 0);
    char p[600];
    snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", d);
    put_file(p, "{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]},"
                "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", data64, 8, -1, 1);
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", d);
    put_file(p, "{\"c\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,6]}}", data64 + 8, 6, -1, 1);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", d);
    put_text(p, index);
}

static void expect_dir_error(const char *sub, const char *want1, const char *want2)
{
    struct safetensors *st = NULL;
    struct err e = {{0}};
    T_EQ_INT(safetensors_open_dir(&st, tpath(sub), &e), -1);
    T_ASSERT(st == NULL);
    T_CONTAINS(e.msg, want1);
    T_CONTAINS(e.msg, want2);
    T_ASSERTF(strchr(e.msg, '\n') == NULL, "multi-line: %s", e.msg);
    safetensors_close(st);
}

static void test_sharded_dir(void)
{
    for (int i = 0; i < 64; i++) data64[i] = (uint8_t)(i * 37 + 11);
    /* total_size deliberately wrong: it must be ignored */
    make_dir("d_ok", "{\"metadata\":{\"total_size\":1},\"weight_map\":{"
                     "\"c\":\"model-00002-of-00002.safetensors\",\"a\":\"model-00001-of-00002.safetensors\","
                     "\"b\":\"model-00001-of-00002.safetensors\"}}");
    struct safetensors *st = NULL;
    struct err e = {{0}};
    T_EQ_INT(safetensors_open_dir(&st, tpath("d_ok"), &e), 0);
    if (!st) { fprintf(stderr, "  %s\n", e.msg); return; }
    T_EQ_INT(safetensors_count(st), 3);
    T_EQ_INT(safetensors_shard_count(st), 2);
    const struct safetensors_tensor *c = safetensors_find(st, "c"), *b = safetensors_find(st, "b");
    T_ASSERT(c && b);
    if (c && b) {
        T_CONTAINS(safetensors_shard_path(st, c->shard), "model-00002-of-00002.safetensors");
        T_CONTAINS(safetensors_shard_path(st, b->shard), "model-00001-of-00002.safetensors");
        T_ASSERT(memcmp(c->data, data64 + 8, 6) == 0 && memcmp(b->data, data64 + 4, 4) == 0);
    }
    safetensors_close(st);

    make_dir("d_missing", "{\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\","
                          "\"b\":\"model-00001-of-00002.safetensors\",\"c\":\"model-00003-of-00003.safetensors\"}}");
    expect_dir_error("d_missing", "model.safetensors.index.json", "\"model-00003-of-00003.safetensors\", which is missing");
    make_dir("d_absent", "{\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\",\"b\":\"model-00001-of-00002"
                         ".safetensors\",\"c\":\"model-00002-of-00002.safetensors\",\"zz\":\"model-00002-of-00002."
                         "safetensors\"}}");
    expect_dir_error("d_absent", "\"zz\"", "does not contain it");
    make_dir("d_wrong", "{\"weight_map\":{\"a\":\"model-00002-of-00002.safetensors\",\"b\":\"model-00001-of-00002"
                        ".safetensors\",\"c\":\"model-00002-of-00002.safetensors\"}}");
    expect_dir_error("d_wrong", "\"a\"", "is in model-00001-of-00002.safetensors");
    make_dir("d_unlisted", "{\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\",\"c\":\"model-00002-of-00002"
                           ".safetensors\"}}");
    expect_dir_error("d_unlisted", "\"b\"", "not listed");
    make_dir("d_evil", "{\"weight_map\":{\"a\":\"../model-00001-of-00002.safetensors\"}}");
    expect_dir_error("d_evil", "\"a\"", "plain shard file name");
    make_dir("d_json", "{\"weight_map\":{\"a\":");
    expect_dir_error("d_json", "model.safetensors.index.json", "not valid JSON");
    make_dir("d_nomap", "{\"metadata\":{}}");
    expect_dir_error("d_nomap", "model.safetensors.index.json", "weight_map");
    /* the same name in two shards */
    make_dir("d_dup", "{\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\",\"b\":\"model-00001-of-00002"
                      ".safetensors\",\"c\":\"model-00002-of-00002.safetensors\"}}");
    put_file(tpath("d_dup/model-00002-of-00002.safetensors"),
             "{\"c\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,2]},"
             "\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[2,6]}}", data64, 6, -1, 1);
    expect_dir_error("d_dup", "\"a\"", "appears twice");
    /* a corrupt shard: the error names the shard file */
    make_dir("d_trunc", "{\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\",\"b\":\"model-00001-of-00002"
                        ".safetensors\",\"c\":\"model-00002-of-00002.safetensors\"}}");
    T_ASSERT(truncate(tpath("d_trunc/model-00002-of-00002.safetensors"), 60) == 0);
    expect_dir_error("d_trunc", "model-00002-of-00002.safetensors", "truncated");
    T_ASSERT(system("true") == 0);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s/d_empty'", tmpdir);
    T_ASSERT(system(cmd) == 0);
    expect_dir_error("d_empty", "d_empty", "neither");
}

static void test_single_file_dir_and_index_writer(void)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s/d_single' '%s/d_idx'", tmpdir, tmpdir);
    T_ASSERT(system(cmd) == 0);
    put_file(tpath("d_single/model.safetensors"), "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
             data64, 8, -1, 1);
    struct safetensors *st = NULL;
    struct err e = {{0}};
    T_EQ_INT(safetensors_open_dir(&st, tpath("d_single"), &e), 0);
    T_ASSERT(st && safetensors_find(st, "x"));
    safetensors_close(st);

    /* index writer: keys sorted, total_size written as given, and the folder opens */
    uint16_t v[4] = {1, 2, 3, 4};
    struct tensor t1[2] = {tensor_make(DTYPE_F16, device_cpu(), v, 1, (int64_t)2),
                           tensor_make(DTYPE_F16, device_cpu(), v + 2, 1, (int64_t)2)};
    t1[0].name = "zeta";
    t1[1].name = "alpha";
    T_EQ_INT(safetensors_write_file(tpath("d_idx/s1.safetensors"), t1, 2, &e), 0);
    struct tensor t2 = tensor_make(DTYPE_F16, device_cpu(), v, 1, (int64_t)4);
    t2.name = "mid";
    T_EQ_INT(safetensors_write_file(tpath("d_idx/s2.safetensors"), &t2, 1, &e), 0);
    const char *names[3] = {"zeta", "mid", "alpha"}, *files[3] = {"s1.safetensors", "s2.safetensors", "s1.safetensors"};
    T_EQ_INT(safetensors_write_index(tpath("d_idx"), names, files, 3, 34148369344LL, &e), 0);
    size_t n;
    char *text = (char *)slurp(tpath("d_idx/model.safetensors.index.json"), &n);
    T_ASSERT(text != NULL);
    if (text) {
        T_CONTAINS(text, "34148369344");
        char *pa = strstr(text, "\"alpha\""), *pm = strstr(text, "\"mid\""), *pz = strstr(text, "\"zeta\"");
        T_ASSERT(pa && pm && pz && pa < pm && pm < pz);
        free(text);
    }
    T_EQ_INT(safetensors_open_dir(&st, tpath("d_idx"), &e), 0);
    if (st) {
        T_EQ_INT(safetensors_count(st), 3);
        T_ASSERT(memcmp(safetensors_find(st, "alpha")->data, v + 2, 4) == 0);
    }
    safetensors_close(st);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_safetensors.XXXXXX");
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 2; }
    for (int i = 0; i < 64; i++) data64[i] = (uint8_t)(i * 37 + 11);
    T_RUN(test_writer_exact_bytes);
    T_RUN(test_read_handmade);
    T_RUN(test_round_trip_many);
    T_RUN(test_corrupt_files);
    T_RUN(test_fuzz_header);
    T_RUN(test_writer_misuse);
    T_RUN(test_sharded_dir);
    T_RUN(test_single_file_dir_and_index_writer);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return t_main_end("test_safetensors");
}
