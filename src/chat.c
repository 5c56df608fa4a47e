/* chat.c: spec §6 prompt construction. The text is built exactly as HF does it (Jinja template with
 * `| trim`, i.e. Python str.strip(); then the processor's marker replacement), and only then tokenized, so
 * special-token strings typed by a user are special tokens here too, as in HF. */
#include <string.h>

#include "chat.h"

#define CHAT_MAX_PROMPT_BYTES ((size_t)64 << 20)
#define CHAT_MAX_GRID 64

struct buf {
    char *v;
    size_t n, cap;
    int oom;
};

static void put(struct buf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->n + n + 1) cap *= 2;
        char *v = cap <= CHAT_MAX_PROMPT_BYTES * 2 ? realloc(b->v, cap) : NULL;
        if (!v) {
            b->oom = 1;
            return;
        }
        b->v = v;
        b->cap = cap;
    }
    memcpy(b->v + b->n, s, n);
    b->n += n;
    b->v[b->n] = 0;
}
static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

/* Decodes one code point of valid UTF-8 at s (n bytes available); returns its length, 0 when invalid. */
static int utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned c = s[0];
    int l = c < 0x80 ? 1 : c < 0xC2 ? 0 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : c < 0xF5 ? 4 : 0;
    if (!l || (size_t)l > n) return 0;
    uint32_t v = l == 1 ? c : c & (0x7F >> l);
    for (int i = 1; i < l; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (v < min[l] || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return l;
}

/* Python's str.isspace() (what Jinja's trim strips): Unicode White_Space plus U+001C..U+001F
 * (bidi class B/S). Not U+180E, U+200B or U+FEFF. */
static int py_isspace(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Validates UTF-8 and returns the [a, b) range of s without leading/trailing Python whitespace. */
static int strip_range(const char *s, size_t n, size_t *a, size_t *b)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, first = n, last_end = 0;
    while (i < n) {
        uint32_t cp;
        int l = utf8_next(u + i, n - i, &cp);
        if (!l) return -1;
        if (!py_isspace(cp)) {
            if (first == n) first = i;
            last_end = i + (size_t)l;
        }
        i += (size_t)l;
    }
    *a = first == n ? 0 : first;
    *b = first == n ? 0 : last_end;
    return 0;
}

static void put_placeholder(struct buf *b, const struct chat_grid *g, int query_num)
{
    struct buf one = {0};
    puts_(&one, "<image>");
    for (int i = 0; i < query_num; i++) puts_(&one, "<unk>");
    puts_(&one, "</image>");
    put(b, one.v ? one.v : "", one.n);
    if (g->cols > 0) { /* "\n" between rows only; no newline before <slice> or after the last row */
        puts_(b, "<slice>");
        for (int r = 0; r < g->rows; r++) {
            if (r) puts_(b, "\n");
            for (int c = 0; c < g->cols; c++) put(b, one.v ? one.v : "", one.n);
        }
        puts_(b, "</slice>");
    }
    if (one.oom) b->oom = 1;
    free(one.v);
}

/* Python re.findall("(<image>./</image>)", text): "<image>", one code point other than "\n", "/</image>". */
static int count_regex_markers(const char *s, size_t n)
{
    int k = 0;
    for (size_t i = 0; i + 17 <= n;) {
        if (memcmp(s + i, "<image>", 7)) {
            i++;
            continue;
        }
        uint32_t cp;
        int l = utf8_next((const unsigned char *)s + i + 7, n - i - 7, &cp);
        if (l && cp != '\n' && i + 7 + (size_t)l + 9 <= n && !memcmp(s + i + 7 + l, "/</image>", 9)) {
            k++;
            i += 7 + (size_t)l + 9;
        } else {
            i++;
        }
    }
    return k;
}

int chat_build_prompt(const char *system, const struct chat_msg *msgs, int n_msgs, const struct chat_grid *grids,
                      int n_images, int query_num, char **prompt, size_t *len, struct err *e)
{
    *prompt = NULL;
    if (len) *len = 0;
    if (n_msgs < 1) return err_set(e, "chat: no messages");
    if (query_num < 1 || query_num > 4096) return err_set(e, "chat: query_num %d is out of range", query_num);
    if (n_images < 0 || (n_images > 0 && !grids)) return err_set(e, "chat: bad image list");
    for (int i = 0; i < n_images; i++) {
        const struct chat_grid *g = &grids[i];
        int unsliced = g->cols == 0 && g->rows == 0;
        if (!unsliced && (g->cols < 1 || g->rows < 1 || g->cols > CHAT_MAX_GRID || g->rows > CHAT_MAX_GRID))
            return err_set(e, "chat: image %d has a bad slice grid %dx%d (cols x rows)", i, g->cols, g->rows);
    }
    int first_other = -1;
    for (int i = 0; i < n_msgs; i++) {
        const char *r = msgs[i].role;
        if (!r || (strcmp(r, "user") && strcmp(r, "assistant") && strcmp(r, "system")))
            return err_set(e, "chat: message %d has role \"%.32s\"; only user, assistant and system are accepted", i, r ? r : "(null)");
        if (!msgs[i].content) return err_set(e, "chat: message %d has no content", i);
        if (first_other < 0 && strcmp(r, "system")) first_other = i;
    }
    if (first_other < 0 || strcmp(msgs[first_other].role, "user"))
        return err_set(e, "chat: the first non-system message must be from the user");

    /* 1. the template */
    struct buf t = {0};
    puts_(&t, "<|begin_of_text|>");
    for (int i = -1; i < n_msgs; i++) {
        const char *role = i < 0 ? "system" : msgs[i].role, *c = i < 0 ? system : msgs[i].content;
        if (i < 0 && (!system || !*system)) continue;
        size_t a, b, n = strlen(c);
        if (n > CHAT_MAX_PROMPT_BYTES) {
            free(t.v);
            return err_set(e, "chat: message %d is %zu bytes, over the limit of %zu", i, n, CHAT_MAX_PROMPT_BYTES);
        }
        if (strip_range(c, n, &a, &b)) {
            free(t.v);
            return err_set(e, "chat: %s%d has invalid UTF-8", i < 0 ? "system prompt" : "message ", i < 0 ? 0 : i);
        }
        puts_(&t, "<|start_header_id|>");
        puts_(&t, role);
        puts_(&t, "<|end_header_id|>\n\n");
        put(&t, c + a, b - a);
        puts_(&t, "<|eot_id|>");
    }
    puts_(&t, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    if (t.oom) {
        free(t.v);
        return err_set(e, "chat: out of memory building the prompt");
    }

    /* 2. the processor: markers -> placeholders; HF asserts the regex count equals the image count and
     * splits on the literal marker, so both counts must match */
    int literal = 0;
    for (const char *p = t.v; (p = strstr(p, CHAT_IMAGE_MARKER)); p += strlen(CHAT_IMAGE_MARKER)) literal++;
    int rx = count_regex_markers(t.v, t.n);
    if (literal != n_images || rx != n_images) {
        free(t.v);
        return err_set(e, "chat: the messages hold %d image marker%s \"%s\" (%d <image>?/</image> tags) for %d image%s", literal,
                       literal == 1 ? "" : "s", CHAT_IMAGE_MARKER, rx, n_images, n_images == 1 ? "" : "s");
    }
    struct buf o = {0};
    const char *p = t.v;
    for (int k = 0; k < n_images; k++) {
        const char *q = strstr(p, CHAT_IMAGE_MARKER);
        put(&o, p, (size_t)(q - p));
        put_placeholder(&o, &grids[k], query_num);
        p = q + strlen(CHAT_IMAGE_MARKER);
        if (o.n > CHAT_MAX_PROMPT_BYTES) o.oom = 1;
    }
    puts_(&o, p);
    free(t.v);
    if (o.oom) {
        free(o.v);
        return err_set(e, "chat: out of memory building the prompt (or over %zu bytes)", CHAT_MAX_PROMPT_BYTES);
    }
    *prompt = o.v;
    if (len) *len = o.n;
    return 0;
}

int chat_build_ids(const struct tokenizer *tok, const char *system, const struct chat_msg *msgs, int n_msgs,
                   const struct chat_grid *grids, int n_images, int query_num, int max_tokens, int32_t **ids,
                   int *n_ids, struct err *e)
{
    *ids = NULL;
    *n_ids = 0;
    char *prompt;
    size_t len;
    if (chat_build_prompt(system, msgs, n_msgs, grids, n_images, query_num, &prompt, &len, e)) return -1;
    int32_t *v;
    int n;
    int rc = tokenizer_encode(tok, prompt, len, TOKENIZER_ADD_SPECIAL, &v, &n, e);
    free(prompt);
    if (rc) return err_prefix(e, "chat");
    if (max_tokens > 0 && n > max_tokens) {
        free(v);
        return err_set(e, "chat: the prompt is %d tokens, %d over the context limit of %d", n, n - max_tokens, max_tokens);
    }
    *ids = v;
    *n_ids = n;
    return 0;
}

int chat_image_bounds(const struct tokenizer *tok, const int32_t *ids, int n_ids, struct chat_bound **bounds,
                      int *n_bounds, struct err *e)
{
    *bounds = NULL;
    *n_bounds = 0;
    int32_t im_start = tokenizer_token_id(tok, "<image>"), im_end = tokenizer_token_id(tok, "</image>");
    if (im_start < 0 || im_end < 0) return err_set(e, "chat: the tokenizer has no <image>/</image> tokens");
    int cnt = 0;
    for (int i = 0; i < n_ids; i++) cnt += ids[i] == im_start;
    struct chat_bound *b = cnt ? malloc((size_t)cnt * sizeof *b) : NULL;
    if (cnt && !b) return err_set(e, "chat: out of memory");
    int k = 0, open = -1;
    for (int i = 0; i < n_ids; i++) {
        if (ids[i] == im_start) {
            if (open >= 0) {
                free(b);
                return err_set(e, "chat: nested <image> at token %d (the previous one at %d is not closed)", i, open);
            }
            open = i;
        } else if (ids[i] == im_end) {
            if (open < 0) {
                free(b);
                return err_set(e, "chat: </image> at token %d without an opening <image>", i);
            }
            b[k++] = (struct chat_bound){open + 1, i};
            open = -1;
        }
    }
    if (open >= 0) {
        free(b);
        return err_set(e, "chat: <image> at token %d is never closed", open);
    }
    *bounds = b;
    *n_bounds = k;
    return 0;
}
