/* test_common.c: error idiom, size parsing, and exact fp16/bf16 conversions. */
#include "common.h"
#include "t.h"
#include "tensor.h"

static void test_err_set(void)
{
    struct err e = {{0}};
    T_EQ_INT(err_set(&e, "bad %s %d", "field", 3), -1);
    T_EQ_STR(e.msg, "bad field 3");
    err_prefix(&e, "config.json");
    T_EQ_STR(e.msg, "config.json: bad field 3");
}

static void test_parse_size(void)
{
    int64_t v;
    T_EQ_INT(parse_size("10GiB", &v), 0); T_EQ_INT(v, 10737418240LL);
    T_EQ_INT(parse_size("16GB", &v), 0); T_EQ_INT(v, 16000000000LL);
    T_EQ_INT(parse_size("512MiB", &v), 0); T_EQ_INT(v, 536870912LL);
    T_EQ_INT(parse_size("1.5GiB", &v), 0); T_EQ_INT(v, 1610612736LL);
    T_EQ_INT(parse_size("123", &v), 0); T_EQ_INT(v, 123);
    T_EQ_INT(parse_size("ten", &v), -1);
    T_EQ_INT(parse_size("10XB", &v), -1);
    T_EQ_INT(parse_size("-1GiB", &v), -1);
}

/* Every half value converts to float and back to itself, and agrees with the compiler's
 * _Float16 (hardware F16C rounding) in both directions. */
static void test_f16_exhaustive(void)
{
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = f16_to_f32((uint16_t)h);
        _Float16 hw;
        uint16_t hb = (uint16_t)h;
        memcpy(&hw, &hb, 2);
        float fr = (float)hw;
        if (memcmp(&f, &fr, 4) != 0 && !(f != f && fr != fr)) bad++;
        if (f == f && f32_to_f16(f) != h) bad++;
    }
    T_EQ_INT(bad, 0);
}

static uint32_t rng_u32(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(*s >> 32);
}

static void test_f32_to_f16_random(void)
{
    uint64_t s = 42;
    int bad = 0;
    for (int i = 0; i < 2000000; i++) {
        uint32_t bits = rng_u32(&s);
        /* concentrate on the half range, subnormals and the overflow edge */
        if (i & 1) bits = (bits & 0x80ffffffu) | ((uint32_t)(100 + (rng_u32(&s) % 45)) << 23);
        float f;
        memcpy(&f, &bits, 4);
        if (f != f) continue;
        _Float16 hw = (_Float16)f;
        uint16_t hb;
        memcpy(&hb, &hw, 2);
        if (f32_to_f16(f) != hb) bad++;
    }
    T_EQ_INT(bad, 0);
}

static void test_bf16(void)
{
    T_EQ_INT(f32_to_bf16(1.0f), 0x3f80);
    /* 1 + 2^-8 is a tie between 1 and 1+2^-7: rounds to even (1.0) */
    T_EQ_INT(f32_to_bf16(1.00390625f), 0x3f80);
    T_EQ_INT(f32_to_bf16(1.01171875f), 0x3f82); /* tie, rounds up to even */
    T_NEAR(bf16_to_f32(0x4049), 3.140625, 0);
}

/* strbuf at every boundary: each prefix length against each append length, checked byte for byte
 * (ASan in CI sees a write one past the allocation, the bug class of the SSE event buffer). */
static void test_strbuf(void)
{
    char pat[300];
    for (int i = 0; i < 300; i++) pat[i] = (char)('a' + i % 26);
    int bad = 0;
    for (int pre = 0; pre < 140; pre += 3)
        for (int n = 0; n < 300; n += 7) {
            struct strbuf b = {0};
            if (strbuf_append(&b, pat, (size_t)pre)) bad++;
            if (strbuf_printf(&b, "%.*s", n, pat)) bad++;
            if (b.len != (size_t)(pre + n) || b.cap <= b.len || b.p[b.len] != 0 || memcmp(b.p, pat, (size_t)pre) ||
                memcmp(b.p + pre, pat, (size_t)n))
                bad++;
            strbuf_free(&b);
        }
    T_EQ_INT(bad, 0);
    struct strbuf b = {0};
    T_EQ_INT(strbuf_printf(&b, "data: %s\n\n", "{}"), 0);
    T_EQ_STR(b.p, "data: {}\n\n");
    T_EQ_INT(strbuf_append(&b, "\0x", 2), 0); /* raw bytes may hold NULs */
    T_EQ_INT(b.len, 12);
    T_ASSERT(b.p[10] == 0 && b.p[11] == 'x' && b.p[12] == 0);
    strbuf_free(&b);
    T_ASSERT(b.p == NULL && b.len == 0);
}

static void test_views(void)
{
    float buf[24];
    struct tensor t = tensor_make(DTYPE_F32, device_cpu(), buf, 3, (int64_t)4, (int64_t)3, (int64_t)2);
    T_EQ_INT(tensor_numel(&t), 24);
    struct tensor v = tensor_rows_view(&t, 1, 2);
    T_EQ_INT(v.shape[0], 2);
    T_ASSERT(v.data == buf + 6);
    struct tensor r = tensor_reshape(&t, 2, (int64_t)12, (int64_t)2);
    T_EQ_INT(r.shape[0], 12);
}

int main(void)
{
    T_RUN(test_err_set);
    T_RUN(test_parse_size);
    T_RUN(test_f16_exhaustive);
    T_RUN(test_f32_to_f16_random);
    T_RUN(test_bf16);
    T_RUN(test_views);
    T_RUN(test_strbuf);
    return t_main_end("test_common");
}
