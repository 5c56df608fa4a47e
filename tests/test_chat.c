/* test_chat.c: spec §6 prompts as exact id sequences. Special ids come from spec §7, the header/role ids
 * from spec §6.1, the 640x480 case verbatim from spec §13 (HF's model.chat), and plain-text pieces from the
 * JS oracle (tests/js). Uses MiniCPM's tokenizer files generated from .cache (tools/fetch_tokenizer.sh). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chat.h"
#include "t.h"
#include "tokenizer.h"

#define META_JSON ".cache/tokenizer-llama3/tokenizer.json"

static struct tokenizer *tok;
static char tmpdir[64] = "/tmp/test_chat_XXXXXX";

/* A growing expected-id list. */
struct ids {
    int32_t v[8192];
    int n;
};
static void add(struct ids *x, int32_t id) { if (x->n < 8192) x->v[x->n++] = id; }
static void addv(struct ids *x, const int32_t *v, int n) { for (int i = 0; i < n; i++) add(x, v[i]); }
#define ADD(x, ...)                                                   \
    do {                                                              \
        const int32_t a_[] = {__VA_ARGS__};                           \
        addv(x, a_, (int)(sizeof a_ / sizeof a_[0]));                 \
    } while (0)

enum { BOT = 128000, SH = 128006, EH = 128007, EOT = 128009, IM = 128010, IM_END = 128011, UNK = 128002,
       SL = 128020, SL_END = 128021, USER = 882, ASSISTANT = 78191, SYSTEM = 9125, NL = 198, NLNL = 271 };

static void add_image(struct ids *x) /* "<image>" + "<unk>"*96 + "</image>" */
{
    add(x, IM);
    for (int i = 0; i < 96; i++) add(x, UNK);
    add(x, IM_END);
}
static void add_header(struct ids *x, int32_t role) { ADD(x, SH, role, EH, NLNL); }

static void check(const char *what, const char *system, const struct chat_msg *m, int nm, const struct chat_grid *g, int ng,
                  const struct ids *want)
{
    struct err e = {{0}};
    int32_t *ids = NULL;
    int n = 0;
    int rc = chat_build_ids(tok, system, m, nm, g, ng, 96, 0, &ids, &n, &e);
    T_ASSERTF(rc == 0, "%s: %s", what, e.msg);
    if (rc) return;
    int same = n == want->n && !memcmp(ids, want->v, (size_t)n * sizeof *ids);
    T_ASSERTF(same, "%s: %d ids, want %d", what, n, want->n);
    if (!same)
        for (int i = 0; i < n || i < want->n; i++)
            if (i >= n || i >= want->n || ids[i] != want->v[i]) {
                fprintf(stderr, "    first difference at %d: got %d, want %d\n", i, i < n ? ids[i] : -1, i < want->n ? want->v[i] : -1);
                break;
            }
    free(ids);
}

static void test_setup(void)
{
    struct stat st;
    if (stat(META_JSON, &st)) {
        fprintf(stderr, "  .cache missing: running tools/fetch_tokenizer.sh\n");
        T_ASSERTF(system("bash tools/fetch_tokenizer.sh >&2") == 0, "tools/fetch_tokenizer.sh failed (needs npm)");
    }
    struct err e = {{0}};
    T_ASSERT(mkdtemp(tmpdir) != NULL);
    T_ASSERTF(tokenizer_write_minicpmv_files(META_JSON, tmpdir, &e) == 0, "%s", e.msg);
    T_ASSERTF(tokenizer_load(&tok, tmpdir, &e) == 0, "%s", e.msg);
}

static void test_text_only(void)
{
    struct chat_msg m[] = {{"user", "  Hi \n\n"}}; /* content is strip()'d */
    struct ids w = {0};
    add(&w, BOT);
    add_header(&w, USER);
    ADD(&w, 13347, EOT);
    add_header(&w, ASSISTANT);
    check("text only", NULL, m, 1, NULL, 0, &w);
    /* a 3-turn text chat; inner whitespace is kept */
    struct chat_msg m3[] = {{"user", "Line one\n\nLine two"}, {"assistant", "A cat."}, {"user", "\tAnd this?\u3000"}};
    struct ids w3 = {0};
    add(&w3, BOT);
    add_header(&w3, USER);
    ADD(&w3, 2519, 832, 271, 2519, 1403, EOT);
    add_header(&w3, ASSISTANT);
    ADD(&w3, 32, 8415, 13, EOT);
    add_header(&w3, USER);
    ADD(&w3, 3112, 420, 30, EOT);
    add_header(&w3, ASSISTANT);
    check("three turns", "", m3, 3, NULL, 0, &w3);
}

static void test_one_image_unsliced(void)
{
    struct chat_msg m[] = {{"user", CHAT_IMAGE_MARKER "\nWhat is in the image?"}};
    struct chat_grid g[] = {{0, 0}};
    struct ids w = {0};
    add(&w, BOT);
    add_header(&w, USER);
    add_image(&w);
    ADD(&w, NL, 3923, 374, 304, 279, 2217, 30, EOT);
    add_header(&w, ASSISTANT);
    check("one image", NULL, m, 1, g, 1, &w);
}

static void test_spec13_640x480(void)
{
    /* spec §13, verbatim: 128000, 128006, 882, 128007, 271, 128010, 128002x96, 128011, 128020, 128010,
     * 128002x96, 128011, 128010, 128002x96, 128011, 128021, 198, 3923, 374, 304, 279, 2217, 30, 128009, 128006,
     * 78191, 128007, 271 */
    struct ids w = {0};
    ADD(&w, 128000, 128006, 882, 128007, 271, 128010);
    for (int i = 0; i < 96; i++) add(&w, 128002);
    ADD(&w, 128011, 128020, 128010);
    for (int i = 0; i < 96; i++) add(&w, 128002);
    ADD(&w, 128011, 128010);
    for (int i = 0; i < 96; i++) add(&w, 128002);
    ADD(&w, 128011, 128021, 198, 3923, 374, 304, 279, 2217, 30, 128009, 128006, 78191, 128007, 271);
    struct chat_msg m[] = {{"user", CHAT_IMAGE_MARKER "\nWhat is in the image?"}};
    struct chat_grid g[] = {{2, 1}};
    check("spec 13 640x480", "", m, 1, g, 1, &w);
    T_EQ_INT(w.n, 5 + (1 + 2) * 98 + 2 + 12); /* spec §6.2: (1 + cols*rows)*98 + 2 + (rows-1) for the image */

    struct err e = {{0}};
    int32_t *ids;
    int n;
    T_ASSERT(chat_build_ids(tok, NULL, m, 1, g, 1, 96, 0, &ids, &n, &e) == 0);
    struct chat_bound *b;
    int nb;
    T_ASSERTF(chat_image_bounds(tok, ids, n, &b, &nb, &e) == 0, "%s", e.msg);
    T_EQ_INT(nb, 3);
    if (nb == 3) { /* <image> at 5, 104 (after </image> at 102 and <slice> at 103) and 202 */
        T_EQ_INT(b[0].start, 6);
        T_EQ_INT(b[0].end, 102);
        T_EQ_INT(b[1].start, 105);
        T_EQ_INT(b[1].end, 201);
        T_EQ_INT(b[2].start, 203);
        T_EQ_INT(b[2].end, 299);
    }
    free(b);
    free(ids);
}

static void test_grid_2x2(void)
{
    struct chat_msg m[] = {{"user", CHAT_IMAGE_MARKER "\nWhat is this?"}};
    struct chat_grid g[] = {{2, 2}};
    struct ids w = {0};
    add(&w, BOT);
    add_header(&w, USER);
    add_image(&w);
    add(&w, SL);
    add_image(&w);
    add_image(&w);
    add(&w, NL); /* between rows only */
    add_image(&w);
    add_image(&w);
    add(&w, SL_END);
    ADD(&w, NL, 3923, 374, 420, 30, EOT);
    add_header(&w, ASSISTANT);
    check("2x2 grid", NULL, m, 1, g, 1, &w);

    char *p;
    size_t len;
    struct err e = {{0}};
    T_ASSERTF(chat_build_prompt(NULL, m, 1, g, 1, 2, &p, &len, &e) == 0, "%s", e.msg);
    if (!p) return;
    const char *want = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
                       "<image><unk><unk></image><slice><image><unk><unk></image><image><unk><unk></image>\n"
                       "<image><unk><unk></image><image><unk><unk></image></slice>\nWhat is this?<|eot_id|>"
                       "<|start_header_id|>assistant<|end_header_id|>\n\n";
    T_EQ_STR(p, want);
    T_EQ_INT(len, strlen(want));
    free(p);
}

static void test_two_images_two_turns_system(void)
{
    struct chat_msg m[] = {{"user", CHAT_IMAGE_MARKER "\nWhat is this?"},
                           {"assistant", "A cat."},
                           {"user", CHAT_IMAGE_MARKER "\nAnd this?"}};
    struct chat_grid g[] = {{0, 0}, {1, 2}};
    struct ids w = {0};
    add(&w, BOT);
    add_header(&w, SYSTEM);
    ADD(&w, 2675, 527, 11190, 13, EOT); /* "You are helpful." */
    add_header(&w, USER);
    add_image(&w);
    ADD(&w, NL, 3923, 374, 420, 30, EOT);
    add_header(&w, ASSISTANT);
    ADD(&w, 32, 8415, 13, EOT);
    add_header(&w, USER);
    add_image(&w);
    add(&w, SL);
    add_image(&w);
    add(&w, NL);
    add_image(&w);
    ADD(&w, SL_END, NL, 3112, 420, 30, EOT);
    add_header(&w, ASSISTANT);
    check("two images, two turns, system", "You are helpful.\n", m, 3, g, 2, &w);
    /* a system message inside msgs is the same as the system prompt */
    struct chat_msg ms[] = {{"system", "You are helpful."}, m[0], m[1], m[2]};
    check("system message", NULL, ms, 4, g, 2, &w);
}

static void test_errors(void)
{
    struct err e = {{0}};
    int32_t *ids = NULL;
    int n;
    struct chat_msg bad_role[] = {{"tool", "x"}};
    T_ASSERT(chat_build_ids(tok, NULL, bad_role, 1, NULL, 0, 96, 0, &ids, &n, &e) != 0);
    T_CONTAINS(e.msg, "role \"tool\"");
    struct chat_msg first_asst[] = {{"system", "s"}, {"assistant", "x"}, {"user", "y"}};
    T_ASSERT(chat_build_ids(tok, NULL, first_asst, 3, NULL, 0, 96, 0, &ids, &n, &e) != 0);
    T_CONTAINS(e.msg, "first non-system message must be from the user");
    struct chat_msg one[] = {{"user", CHAT_IMAGE_MARKER "\nhi"}};
    struct chat_grid g[] = {{0, 0}, {0, 0}};
    T_ASSERT(chat_build_ids(tok, NULL, one, 1, g, 2, 96, 0, &ids, &n, &e) != 0);
    T_CONTAINS(e.msg, "1 image marker");
    T_ASSERT(chat_build_ids(tok, NULL, one, 1, NULL, 0, 96, 0, &ids, &n, &e) != 0);
    struct chat_msg typed[] = {{"user", "what is <image>x/</image>?"}}; /* HF's regex counts this as an image */
    T_ASSERT(chat_build_ids(tok, NULL, typed, 1, NULL, 0, 96, 0, &ids, &n, &e) != 0);
    T_CONTAINS(e.msg, "hold 0 image markers \"" CHAT_IMAGE_MARKER "\" (1 <image>?/</image> tags)");
    struct chat_grid badg[] = {{2, 0}};
    T_ASSERT(chat_build_ids(tok, NULL, one, 1, badg, 1, 96, 0, &ids, &n, &e) != 0);
    T_CONTAINS(e.msg, "bad slice grid 2x0");
    struct chat_msg badu[] = {{"user", "caf\xc3"}};
    T_ASSERT(chat_build_ids(tok, NULL, badu, 1, NULL, 0, 96, 0, &ids, &n, &e) != 0);
    T_CONTAINS(e.msg, "invalid UTF-8");
    /* the limit: the one-image prompt is 110 tokens; it is never cut, an error says by how much */
    struct chat_grid g1[] = {{0, 0}};
    T_ASSERT(chat_build_ids(tok, NULL, one, 1, g1, 1, 96, 114, &ids, &n, &e) == 0);
    T_EQ_INT(n, 1 + 4 + 98 + 2 + 1 + 4); /* BOS, header, image, "\n", "hi", <|eot_id|>, assistant header */
    free(ids);
    T_ASSERT(chat_build_ids(tok, NULL, one, 1, g1, 1, 96, 100, &ids, &n, &e) != 0);
    T_CONTAINS(e.msg, "110 tokens, 10 over the context limit of 100");
    T_ASSERT(ids == NULL);
    /* unbalanced image tags in ids */
    struct chat_bound *b;
    int nb;
    const int32_t open2[] = {IM, UNK, IM, UNK, IM_END};
    T_ASSERT(chat_image_bounds(tok, open2, 5, &b, &nb, &e) != 0);
    T_CONTAINS(e.msg, "nested <image>");
    const int32_t close1[] = {UNK, IM_END};
    T_ASSERT(chat_image_bounds(tok, close1, 2, &b, &nb, &e) != 0);
    const int32_t none[] = {1, 2, 3};
    T_ASSERT(chat_image_bounds(tok, none, 3, &b, &nb, &e) == 0);
    T_EQ_INT(nb, 0);
}

int main(void)
{
    T_RUN(test_setup);
    if (tok) {
        T_RUN(test_text_only);
        T_RUN(test_one_image_unsliced);
        T_RUN(test_spec13_640x480);
        T_RUN(test_grid_2x2);
        T_RUN(test_two_images_two_turns_system);
        T_RUN(test_errors);
    }
    tokenizer_free(tok);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd)) fprintf(stderr, "cannot remove %s\n", tmpdir);
    return t_main_end("test_chat");
}
