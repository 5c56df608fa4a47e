/* fuzz_request.c: libFuzzer target for server_request_parse (src/server_json.c): arbitrary bytes as a
 * /v1/chat/completions body and as a /v1/completions body (each input is parsed as both). The turn
 * (turn_prepare: prompt ids and the context check) needs the tokenizer, which this target replaces with
 * a stub counting 5 tokens per message, a raw text prompt as 1 token per 4 bytes and a prompt of ids as
 * its ids (checked against a vocabulary of 128256, as engine_check_ids does); the parser, the field
 * checks, base64 and the image decoders behind data: URLs are the real ones. Every accepted request must satisfy the invariants the
 * worker relies on; every refusal must be a JSON error object with a 4xx/5xx status.
 * Built and run by tools/fuzz.sh (make fuzz). */
#include <cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "server.h"
#include "tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ---- stubs for the turn (turn.h): 5 tokens per message and 64 per image, a context of CTX ---- */
#define CTX 2048
struct turn {
    int n_prompt, max_new;
};

int turn_prepare(struct turn **out, const struct engine *g, const struct turn_request *rq, struct err *e)
{
    (void)g;
    *out = NULL;
    const int raw = rq->raw_text || rq->raw_ids;
    if (raw && (rq->n_msgs || rq->n_images)) return err_set(e, "a raw prompt takes no messages or images");
    for (int i = 0; rq->raw_ids && i < rq->n_raw_ids; i++)
        if (rq->raw_ids[i] < 0 || rq->raw_ids[i] >= 128256) return err_set(e, "token id %d is outside the vocabulary", rq->raw_ids[i]);
    const int n = rq->raw_text ? 1 + (int)(strlen(rq->raw_text) / 4) : rq->raw_ids ? rq->n_raw_ids : 5 * rq->n_msgs + 64 * rq->n_images;
    if (rq->max_new < 0) return err_set(e, "the answer length must be at least 1 token");
    if (rq->max_new > 0 ? n + rq->max_new > CTX : n + 1 > CTX)
        return err_set(e, "this model's maximum context length is %d tokens (--ctx): %d tokens do not fit", CTX, n);
    struct turn *t = calloc(1, sizeof *t);
    if (!t) return err_set(e, "out of memory");
    t->n_prompt = n;
    const int want = rq->max_new_default > 0 ? rq->max_new_default : TURN_DEFAULT_MAX_NEW;
    t->max_new = rq->max_new > 0 ? rq->max_new : CTX - n < want ? CTX - n : want;
    *out = t;
    return 0;
}
int turn_prompt_tokens(const struct turn *t) { return t->n_prompt; }
int turn_max_new(const struct turn *t) { return t->max_new; }
void turn_free(struct turn *t) { free(t); }

/* the logprobs JSON of an answer (never built here: no turn runs) */
int tokenizer_token_bytes(const struct tokenizer *tok, int32_t id, const char **bytes, size_t *len)
{
    (void)tok, (void)id;
    *bytes = "";
    *len = 0;
    return 0;
}

static struct engine *G = (struct engine *)&G; /* opaque; only the stubs above see it */

/* One parse of data as api's body: an error is a JSON error object; a request holds what the worker needs. */
static void parse_one(enum server_api api, const uint8_t *data, size_t size)
{
    static atomic_llong image_bytes;
    struct server_limits lim = {.max_body = 1 << 20, .max_images = 3, .max_messages = 16, .max_pixels = 1 << 16,
                                .max_beam_tokens = 4096, .max_image_bytes = 1 << 22, .image_bytes = &image_bytes};
    struct server_request rq;
    char *ej = NULL;
    int st = server_request_parse(&rq, api, (const char *)data, size, G, &lim, &ej);
    if (st) {
        CHECK(st >= 400 && st < 600 && ej);
        cJSON *o = cJSON_Parse(ej);
        CHECK(o && cJSON_IsString(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "error"), "message")));
        cJSON_Delete(o);
        free(ej);
    } else {
        CHECK(!ej);
        const struct turn_request *t = &rq.req;
        CHECK(rq.api == api && rq.n >= 1 && rq.n <= SERVER_MAX_N);
        for (int i = 0; i < SERVER_MAX_N; i++) CHECK((rq.turns[i] != NULL) == (i < rq.n));
        CHECK(rq.n == 1 || t->num_beams <= 1);
        const int max_new = turn_max_new(rq.turns[0]);
        if (api == SERVER_API_CHAT) {
            CHECK(t->n_msgs >= 1 && t->n_msgs <= lim.max_messages && t->msgs && !strcmp(t->msgs[0].role, "user"));
            CHECK(!t->raw_text && !t->raw_ids);
        } else {
            CHECK(t->n_msgs == 0 && t->n_images == 0 && !t->grammar && t->num_beams <= 1);
            CHECK((t->raw_text != NULL) + (t->raw_ids != NULL) == 1 && (!t->raw_ids || t->n_raw_ids >= 1));
        }
        CHECK(t->n_images >= 0 && t->n_images <= lim.max_images);
        CHECK(max_new >= 1 && max_new <= CTX);
        CHECK(t->n_stop >= 0 && t->n_stop <= SERVER_MAX_STOP);
        CHECK(t->num_beams <= 1 || (int64_t)t->num_beams * max_new <= lim.max_beam_tokens);
        for (int i = 0; i < t->n_images; i++)
            CHECK(t->images[i].w >= 1 && t->images[i].h >= 1 && (int64_t)t->images[i].w * t->images[i].h <= lim.max_pixels);
        for (int i = 0; i < t->n_msgs; i++) CHECK(t->msgs[i].content != NULL);
        server_request_free(&rq);
    }
    CHECK(atomic_load(&image_bytes) == 0); /* every reservation returned */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    parse_one(SERVER_API_CHAT, data, size);
    parse_one(SERVER_API_COMPLETIONS, data, size);
    return 0;
}
