/* tokenizer_decode.c: ids -> text, as PreTrainedTokenizerFast.decode(ids, skip_special_tokens=False):
 * the bytes of every token are concatenated (added tokens included), converted like Rust's
 * String::from_utf8_lossy (each maximal invalid subpart becomes U+FFFD), then, when clean-up is on,
 * transformers' clean_up_tokenization runs its ten str.replace passes in order.
 * The streaming decoder gives the same text chunk by chunk: it holds back an incomplete UTF-8 tail and the
 * few bytes a later clean-up match could still change. */
#include <string.h>

#include "tokenizer_impl.h"

struct sbuf {
    char *v;
    size_t n, cap;
};

static int sb_put(struct sbuf *b, const void *p, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *v = realloc(b->v, cap);
        if (!v) return -1;
        b->v = v;
        b->cap = cap;
    }
    if (n) memcpy(b->v + b->n, p, n);
    b->n += n;
    b->v[b->n] = 0;
    return 0;
}

/* Length of the longest prefix of s[0..n) that could start a valid UTF-8 sequence (a "maximal subpart"),
 * at least 1: the bytes from_utf8_lossy replaces with a single U+FFFD. */
static int utf8_subpart(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    int need = c >= 0xF0 && c < 0xF5 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 && c < 0xE0 ? 2 : 0;
    if (!need || c >= 0xF5) return 1;
    int k = 1;
    for (; k < need && (size_t)k < n; k++) {
        unsigned lo = 0x80, hi = 0xBF;
        if (k == 1) {
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        }
        if (s[k] < lo || s[k] > hi) break;
    }
    return k;
}

/* Appends the lossy UTF-8 conversion of s[0..n). With hold set, a trailing incomplete-but-valid prefix is not
 * converted; the number of bytes consumed is returned. */
static size_t utf8_lossy(struct sbuf *out, const unsigned char *s, size_t n, int hold, int *oom)
{
    size_t i = 0;
    while (i < n) {
        int l = tok_utf8_len(s + i, n - i);
        if (l) {
            size_t j = i + (size_t)l;
            while (j < n && s[j] < 0x80) j++; /* copy valid runs in bulk */
            if (sb_put(out, s + i, j - i)) *oom = 1;
            i = j;
            continue;
        }
        int k = utf8_subpart(s + i, n - i);
        /* a valid lead byte whose sequence is cut by the end of the buffer: more bytes may complete it */
        if (hold && i + (size_t)k == n && s[i] >= 0xC2 && s[i] < 0xF5) break;
        if (sb_put(out, "\xEF\xBF\xBD", 3)) *oom = 1;
        i += (size_t)k;
    }
    return i;
}

/* transformers' clean_up_tokenization, pass by pass; each pass is a non-overlapping left-to-right
 * str.replace. Works in place; returns the new length. With cut (not NULL), *cut is a position in the input
 * and becomes the position in the output such that every output byte before it is final whatever text is
 * appended later (the stream's "determined prefix"). */
static const struct {
    const char *from, *to;
} cleanups[] = {{" .", "."},   {" ?", "?"},     {" !", "!"},     {" ,", ","},     {" ' ", "'"},
                {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};

static size_t clean_up(char *s, size_t n, size_t *cut)
{
    for (size_t p = 0; p < sizeof cleanups / sizeof cleanups[0]; p++) {
        const char *f = cleanups[p].from, *to = cleanups[p].to;
        size_t fl = strlen(f), tl = strlen(to), w = 0, r = 0, newcut = 0;
        /* a match (or not) at r is final when r + fl <= *cut; earlier output is final too */
        size_t lim = cut ? (*cut + 1 >= fl ? *cut + 1 - fl : 0) : n;
        int cut_done = 0;
        while (r < n) {
            /* undetermined: a match at r would need bytes past *cut, and the bytes before *cut agree with it */
            if (cut && !cut_done && r >= lim && (r >= *cut || !memcmp(s + r, f, *cut - r))) newcut = w, cut_done = 1;
            if (r + fl <= n && s[r] == f[0] && !memcmp(s + r, f, fl)) {
                memmove(s + w, to, tl);
                w += tl;
                r += fl;
            } else {
                s[w++] = s[r++];
            }
        }
        if (cut) *cut = cut_done ? newcut : w;
        n = w;
    }
    return n;
}

static int check_id(const struct tokenizer *t, int32_t id, struct err *e)
{
    if (id < 0 || id >= t->n_ids || t->tok_kind[id] == TOK_KIND_NONE)
        return err_set(e, "decode: token id %d is outside the vocabulary (size %d)", id, t->n_ids);
    return 0;
}

int tokenizer_decode(const struct tokenizer *t, const int32_t *ids, int n, int clean, char **text, size_t *len,
                     struct err *e)
{
    *text = NULL;
    if (len) *len = 0;
    if (clean == TOKENIZER_CLEANUP_DEFAULT) clean = t->clean_up;
    struct sbuf raw = {0}, out = {0};
    int oom = 0;
    for (int i = 0; i < n; i++) {
        if (check_id(t, ids[i], e)) {
            free(raw.v);
            return -1;
        }
        if (sb_put(&raw, t->arena + t->tok_off[ids[i]], t->tok_len[ids[i]])) oom = 1;
    }
    if (sb_put(&out, "", 0)) oom = 1;
    if (raw.n) utf8_lossy(&out, (const unsigned char *)raw.v, raw.n, 0, &oom);
    free(raw.v);
    if (oom) {
        free(out.v);
        return err_set(e, "decode: out of memory");
    }
    if (clean) out.n = clean_up(out.v, out.n, NULL), out.v[out.n] = 0;
    *text = out.v;
    if (len) *len = out.n;
    return 0;
}

/* --- streaming ------------------------------------------------------------------------------------------- */

struct tokenizer_stream {
    const struct tokenizer *t;
    int clean;
    struct sbuf raw;  /* token bytes not yet converted (an incomplete UTF-8 tail) */
    struct sbuf text; /* converted text since the last barrier; its first `sent` cleaned bytes were emitted */
    size_t sent;
    struct sbuf work, chunk;
};

int tokenizer_stream_init(struct tokenizer_stream **out, const struct tokenizer *t, int clean, struct err *e)
{
    *out = calloc(1, sizeof **out);
    if (!*out) return err_set(e, "decode stream: out of memory");
    (*out)->t = t;
    (*out)->clean = clean == TOKENIZER_CLEANUP_DEFAULT ? t->clean_up : clean;
    return 0;
}

void tokenizer_stream_free(struct tokenizer_stream *st)
{
    if (!st) return;
    free(st->raw.v);
    free(st->text.v);
    free(st->work.v);
    free(st->chunk.v);
    free(st);
}

/* A byte that appears in no clean-up pattern is a barrier: no match spans it and it is never removed, so
 * the clean-up of the text before it is final and the text after it can be cleaned on its own. */
static int is_barrier(unsigned char c)
{
    return !strchr(" .?!,'ntmsvre", c) || c == 0;
}

/* Emits the cleaned text that can no longer change; final: everything. */
static int stream_emit(struct tokenizer_stream *st, int final)
{
    st->chunk.n = 0;
    if (sb_put(&st->chunk, "", 0)) return -1;
    if (!st->clean) {
        if (sb_put(&st->chunk, st->text.v, st->text.n)) return -1;
        st->text.n = 0;
        return 0;
    }
    st->work.n = 0;
    if (sb_put(&st->work, st->text.v ? st->text.v : "", st->text.n)) return -1;
    size_t cut = final ? st->work.n + 16 : st->work.n;
    size_t n = clean_up(st->work.v, st->work.n, final ? NULL : &cut);
    if (final) cut = n;
    /* the cut is at a character boundary by construction (pattern bytes are ASCII); keep it so regardless */
    while (cut > st->sent && cut < n && ((unsigned char)st->work.v[cut] & 0xC0) == 0x80) cut--;
    if (cut > st->sent && sb_put(&st->chunk, st->work.v + st->sent, cut - st->sent)) return -1;
    st->sent = cut > st->sent ? cut : st->sent;
    /* drop the text before the last barrier inside the emitted region (clean-up is compositional there) */
    size_t bar = 0;
    for (size_t i = st->text.n; i > 0; i--)
        if (is_barrier((unsigned char)st->text.v[i - 1])) {
            bar = i;
            break;
        }
    if (bar) {
        /* the cleaned form of text[0..bar) is final and fully emitted iff sent covers it */
        size_t pre = bar;
        char *tmp = malloc(pre + 1);
        if (!tmp) return -1;
        memcpy(tmp, st->text.v, pre);
        size_t pn = clean_up(tmp, pre, NULL);
        free(tmp);
        if (st->sent >= pn) {
            memmove(st->text.v, st->text.v + bar, st->text.n - bar);
            st->text.n -= bar;
            st->sent -= pn;
        }
    }
    if (final) st->text.n = 0, st->sent = 0;
    return 0;
}

int tokenizer_stream_push(struct tokenizer_stream *st, int32_t id, const char **chunk, size_t *chunk_len, struct err *e)
{
    *chunk = "";
    *chunk_len = 0;
    if (check_id(st->t, id, e)) return -1;
    int oom = sb_put(&st->raw, st->t->arena + st->t->tok_off[id], st->t->tok_len[id]);
    size_t used = oom ? 0 : utf8_lossy(&st->text, (const unsigned char *)st->raw.v, st->raw.n, 1, &oom);
    if (!oom) {
        memmove(st->raw.v, st->raw.v + used, st->raw.n - used);
        st->raw.n -= used;
    }
    if (oom || stream_emit(st, 0)) return err_set(e, "decode stream: out of memory");
    *chunk = st->chunk.v;
    *chunk_len = st->chunk.n;
    return 0;
}

void tokenizer_stream_finish(struct tokenizer_stream *st, const char **chunk, size_t *chunk_len)
{
    int oom = 0;
    if (st->raw.n) utf8_lossy(&st->text, (const unsigned char *)st->raw.v, st->raw.n, 0, &oom);
    st->raw.n = 0;
    if (oom || stream_emit(st, 1)) {
        *chunk = "";
        *chunk_len = 0;
        return;
    }
    *chunk = st->chunk.v;
    *chunk_len = st->chunk.n;
}
