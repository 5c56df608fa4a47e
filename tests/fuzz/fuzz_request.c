/* fuzz_request.c: libFuzzer target for server_request_parse (src/server_json.c): arbitrary bytes as a
 * /v1/chat/completions body. The prompt-length check needs the tokenizer, which this target replaces
 * with a stub counting 5 tokens per message (the parser, the field checks, base64 and the image
 * decoders behind data: URLs are the real ones). Every accepted request must satisfy the invariants the
 * worker relies on; every refusal must be a JSON error object with a 4xx/5xx status.
 * Built and run by tools/fuzz.sh (make fuzz). */
#include <cJSON.h>
#include <string.h>

#include "server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int server_prompt_tokens(const struct engine *g, const struct server_turn *t, int *n, struct err *e)
{
    (void)g;
    (void)e;
    *n = 5 * t->n_msgs + 64 * t->n_images;
    return 0;
}

static struct engine G; /* only llm.ctx is read */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    G.llm.ctx = 2048;
    static atomic_llong image_bytes;
    struct server_limits lim = {.max_body = 1 << 20, .max_images = 3, .max_messages = 16, .max_pixels = 1 << 16,
                                .max_beam_tokens = 4096, .max_image_bytes = 1 << 22, .image_bytes = &image_bytes};
    struct server_request rq;
    char *ej = NULL;
    int st = server_request_parse(&rq, (const char *)data, size, &G, &lim, &ej);
    if (st) {
        CHECK(st >= 400 && st < 600 && ej);
        cJSON *o = cJSON_Parse(ej);
        CHECK(o && cJSON_IsString(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "error"), "message")));
        cJSON_Delete(o);
        free(ej);
    } else {
        CHECK(!ej);
        const struct server_turn *t = &rq.turn;
        CHECK(t->n_msgs >= 1 && t->n_msgs <= lim.max_messages && t->msgs && !strcmp(t->msgs[0].role, "user"));
        CHECK(t->n_images >= 0 && t->n_images <= lim.max_images);
        CHECK(t->max_new >= 1 && t->max_new <= G.llm.ctx);
        CHECK(t->n_stop >= 0 && t->n_stop <= SERVER_MAX_STOP);
        CHECK(t->num_beams <= 1 || (int64_t)t->num_beams * t->max_new <= lim.max_beam_tokens);
        for (int i = 0; i < t->n_images; i++)
            CHECK(t->images[i].w >= 1 && t->images[i].h >= 1 && (int64_t)t->images[i].w * t->images[i].h <= lim.max_pixels);
        for (int i = 0; i < t->n_msgs; i++) CHECK(t->msgs[i].content != NULL);
        server_request_free(&rq);
    }
    CHECK(atomic_load(&image_bytes) == 0); /* every reservation returned */
    return 0;
}
