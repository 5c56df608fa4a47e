/* turn.h: one chat turn, the one path every front end takes (chat -p, the REPL, the server, bench).
 *
 *   turn_prepare  (thread-safe: tokenizer and configs only)
 *       each image's slice grid -> the prompt ids (chat.h) -> the context check -> the answer length
 *   turn_run      (the thread that owns the engine)
 *       images -> image cache or vision (engine_encode_images) -> merge into the prompt embedding
 *       -> greedy / sampled (engine_generate) or beam (beam.h) generation -> the answer text pipeline
 *
 * A raw-prompt turn (turn_request.raw_text / raw_ids: the completions API) skips the template and the
 * images and keeps the answer verbatim.
 * The prompt ids and grids are built once, at prepare, and carried to the run (the server prepares
 * while parsing a request, so a prompt that does not fit never queues). The answer text pipeline is
 * spec §8's chat() clean-up (ids 0, a leading BOS and the stop id dropped, clean-up spaces, strip),
 * then a cut before the first stop string; streamed text (io->cb) concatenates to exactly the answer.
 * Owns: per-turn state (struct turn: nothing engine-global, so several turns can be prepared at once).
 * Does not own: the prompt template (chat.h), sampling (sampler.h), beam search (beam.h), the image
 * cache's policy (imgcache.h). */
#ifndef MINICPMV_TURN_H
#define MINICPMV_TURN_H

#include <stdatomic.h>

#include "chat.h"
#include "engine.h"
#include "image.h"
#include "grammar.h"
#include "imgcache.h"
#include "sampler.h"

#define TURN_MAX_STOP 4
#define TURN_MAX_STOP_LEN 256
#define TURN_DEFAULT_MAX_NEW 1024 /* the model's chat() default */

/* What the turn computes. The pointers must stay valid until turn_free. */
struct turn_request {
    const char *system;             /* may be NULL */
    const struct chat_msg *msgs;    /* contents hold CHAT_IMAGE_MARKER per image, in order */
    int n_msgs;
    const struct image *images;
    int n_images;
    /* optional, per image: the encoded bytes it was decoded from (the image cache's key) */
    const uint8_t *const *img_keys;
    const size_t *img_key_len;
    int max_new;                    /* > 0: at most this many tokens, and prompt + max_new must fit the
                                       context; 0: max_new_default, cut to what the context leaves */
    int max_new_default;            /* with max_new 0; 0 = TURN_DEFAULT_MAX_NEW */
    struct sampler_params sp;
    int num_beams;                  /* > 1: beam search (sp.repetition_penalty applies per beam) */
    float length_penalty;
    int ignore_eos;                 /* generate through stop ids (benchmarks); not with beams */
    const char *stop[TURN_MAX_STOP];
    int n_stop;
    /* constrained decoding (grammar.h, docs/GRAMMAR.md): NULL = none. Both stay the caller's and are
     * shared read-only; vocab from turn_vocab_init. Not with beams. */
    const struct grammar *grammar;
    const struct grammar_vocab *vocab;
    /* a raw prompt (the completions API) instead of the chat template: set raw_text (tokenized as HF's
     * tokenizer(text) does, with tokenizer.json's post-processor: MiniCPM-Llama3-V 2.5's adds no BOS, so
     * a prompt that wants one writes <|begin_of_text|>) or raw_ids[n_raw_ids] (the
     * prompt as given, each id checked against the vocabulary); system, msgs and images are unused then
     * (n_msgs and n_images must be 0). The answer is verbatim: every generated id's bytes but the stop
     * ids (id 0 and a BOS kept), no clean-up of spaces, no strip; still cut before a stop string. */
    const char *raw_text;
    const int32_t *raw_ids;
    int n_raw_ids;
    int logprobs;                   /* 1: record each generated token's logprob (turn_result.lp) */
    int top_logprobs;               /* 0..SAMPLER_MAX_TOP_LOGPROBS alternatives per token (with logprobs) */
};

/* One generated token's log-probabilities (sampler_logprobs: the row the sampler picked from, after
 * the repetition penalty and the grammar mask, before temperature / top-k / top-p). */
struct turn_logprob {
    int32_t id;
    double lp;
    int n_top;
    int32_t top[SAMPLER_MAX_TOP_LOGPROBS];
    double top_lp[SAMPLER_MAX_TOP_LOGPROBS];
};

/* Called with each piece of answer text as it becomes final (never half a UTF-8 character). */
typedef int (*turn_text_cb)(void *ctx, const char *text, size_t len);

/* How it runs. */
struct turn_io {
    struct imgcache *cache;         /* may be NULL */
    turn_text_cb cb;                /* may be NULL */
    void *cb_ctx;
    const atomic_int *cancel;       /* may be NULL; non-zero stops generation */
    double deadline;                /* time_now() past which generation stops (finish "length"); 0 = none */
};

struct turn_result {
    char *text;                     /* the answer (malloc'd) */
    int32_t *ids;                   /* the generated ids, before clean-up (malloc'd) */
    int n_prompt, n_gen;            /* tokens; n_gen counts every generated id, the stop id included */
    int n_pieces;                   /* image pieces encoded (or cached) */
    int n_prompt_cached;            /* prompt tokens whose KV came from cached blocks (prefix reuse): only
                                       n_prompt - n_prompt_cached were prefilled */
    int n_preempted;                /* times the scheduler preempted the turn (its KV given to older turns)
                                       and resumed it by prefilling its tokens again */
    const char *finish;             /* "stop" or "length" */
    int cancelled;
    int timed_out;                  /* the deadline stopped generation */
    int image_cached;               /* 1: the images came from the cache */
    int input_error;                /* on failure: the input's fault (an image, the prompt), not the engine's */
    double t_vision, t_prefill, t_decode; /* seconds: encode (or cache), prefill + first token, the rest */
    double t_first;                 /* seconds from the run's start (turn_run / turn_start) to the first token */
    struct turn_logprob *lp;        /* with rq.logprobs: [n_lp] (malloc'd), one per generated id (ids[i]) */
    int n_lp;
};

struct turn;
/* Checks the request (stop strings, beams), plans each image's grid, builds the prompt ids and checks
 * that they fit the context with room for the answer (llm_check_fit's wording). */
int turn_prepare(struct turn **out, const struct engine *g, const struct turn_request *rq, struct err *e);
int turn_prompt_tokens(const struct turn *t);
int turn_max_new(const struct turn *t); /* the answer length it will allow */
/* Whether the turn needs the host sampler every step (a grammar, or logprobs): turn_run then runs the
 * staged loop on slot 0 (engine_decode_batch, B = 1) instead of engine_generate's device sampling. */
int turn_host_sampled(const struct turn *t);
/* The vocabulary tries for g's tokenizer (stop ids: engine_is_stop), for turn_request.vocab. */
int turn_vocab_init(struct grammar_vocab **out, const struct engine *g, struct err *e);
/* While a turn runs: the logprob entries of the ids generated so far (valid until the next step). */
const struct turn_logprob *turn_logprobs_so_far(const struct turn *t, int *n);
/* Runs the turn on g (a new conversation: the KV cache is reset). On failure r->input_error says whose. */
int turn_run(struct turn *t, struct engine *g, const struct turn_io *io, struct turn_result *r, struct err *e);
void turn_free(struct turn *t); /* accepts NULL */

/* ---- staged running: several turns in flight, one engine slot each (the scheduler, scheduler.h) ----
 * turn_start (images, merge; the slot emptied) -> turn_prefill (chunks; the last one picks the first
 * token on the host sampler, streams it and starts the slot's device sampler) -> while !turn_done:
 * one batched decode step feeds turn_pending() into turn_slot() and hands that row's logits to
 * turn_step, or its device-picked token to turn_take (turn_dev_pick); turn_emit then streams it
 * (the scheduler launches the next step first, so the text work overlaps the device's) -> turn_finish (the result; the run's memory
 * freed). The tokens are those turn_run gives with host sampling. Beam search is not staged. Any
 * failure: turn_abort. */
int turn_start(struct turn *t, struct engine *g, const struct turn_io *io, int slot, int *input_error, struct err *e);
int turn_prefill(struct turn *t, int64_t max_tokens, struct err *e); /* 1: the prompt is in, 0: more to feed */
/* The tokens the next turn_prefill(t, max_tokens) feeds (at most max_tokens when > 0); the first call looks
 * the prompt's cached blocks up (prefix reuse), so what they hold is not counted. -1 (e set): the prompt is in. */
int64_t turn_prefill_next(struct turn *t, int64_t max_tokens, struct err *e);
int32_t turn_pending(const struct turn *t); /* the token the next decode step feeds; -1: none (not prefilled, or done) */
int turn_slot(const struct turn *t);
/* Picks the next token on the host from logits [V] (modified): grammar mask, sampler, logprobs. The
 * token is taken (turn_pending returns it) but not yet streamed (turn_emit). Returns 1 when
 * generation ends with it (a stop id, max_new, nothing the grammar allows), 0 to go on, -1 on error. */
int turn_step(struct turn *t, float *logits, struct err *e);
/* Whether the turn's next tokens may be picked on the device (engine_decode_batch_pick with the slot's
 * sampler, which turn_prefill starts with the request's parameters): no grammar, no logprobs, and
 * parameters the device sampler serves (sampler_device_ok). */
int turn_dev_pick(const struct turn *t);
/* Takes the token the device picked for this turn's row (instead of turn_step): the host sampler
 * advances exactly as if it had sampled it (the token recorded for the penalty, one draw unless
 * greedy), so a later step the device declines is picked on the host with the right draw. Same
 * return as turn_step. */
int turn_take(struct turn *t, int32_t tok, struct err *e);
/* Streams the tokens taken since the last call (the text callback, stop strings, cancel, the
 * deadline). Returns 1 when the turn has finished (turn_done): generation ended, or the pipe stopped
 * it (then no token taken after the one that stopped it counts). */
int turn_emit(struct turn *t);
int turn_done(const struct turn *t);
/* Gives the turn's KV blocks back (a KV pool shared by the slots ran out: the scheduler's preemption). Its
 * full blocks are published first (prefix reuse: the resume finds those not evicted meanwhile), the slot
 * is emptied; everything else is kept (the prompt embedding, the tokens generated so far, the sampler's
 * draws and penalty, the grammar, the text pipe and its stop strings; the slot's device sampler, which
 * only this turn's steps touch). Returns 1 when the turn still generates: it must then be prefilled again
 * (turn_prefill: the prompt and the generated ids but the pending one, no token picked at the end; the
 * next decode step feeds the pending token) before its next step; 0 when it had ended (nothing to
 * resume: it finishes as it would have). The tokens are those it gets without the preemption, to the
 * rounding of a prefill chunk against the one-row steps that first computed those rows (bit for bit on
 * the CPU where a chunk's rows equal one-row steps). */
int turn_preempt(struct turn *t);
int turn_finish(struct turn *t, struct turn_result *r, struct err *e);
void turn_abort(struct turn *t);
void turn_result_free(struct turn_result *r);

#endif
