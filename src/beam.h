/* beam.h: beam search as transformers 4.40's BeamSearchScorer runs it for MiniCPM-Llama3-V 2.5's
 * chat(sampling=False): num_beams 3, repetition_penalty 1.2, length_penalty 1.0, early_stopping False,
 * stop ids 128001/128009, one batch, one returned sequence (spec §8).
 *
 * Owns: the search itself (beam_search, pure over a callback "model"), and the engine driver
 * (beam_generate), which gives every beam its own KV rows by saving and restoring the cache rows of
 * the generated tokens around each single-token forward (the prompt rows are shared and never copied).
 * Does not own: the prompt, the chat clean-up (turn.c), sampling (sampler.c).
 *
 * Semantics (our reading of 4.40 `_beam_search` + `BeamSearchScorer.process/finalize` + `BeamHypotheses`):
 *  - step scores = log_softmax(logits) in fp32, THEN the repetition penalty (s<0 ? s*p : s/p for every
 *    distinct id the beam has generated; prompt ids never count, generation starts from inputs_embeds),
 *    then + the beam's running score. Initial beam scores are 0 for beam 0 and -1e9 for the others.
 *  - candidates: the top max(2, 1 + n_stop) * num_beams of [num_beams * V] (ties: lower flat index first).
 *    In rank order, a stop-id candidate of rank < num_beams becomes a finished hypothesis, other stop
 *    candidates are skipped; the first num_beams non-stop candidates become the next beams.
 *  - lengths: with inputs_embeds the ids HF keeps hold only generated tokens (decoder_prompt_len = 0), and
 *    process() uses cur_len = generated + 1, so a finished hypothesis's score is
 *    sum_logprobs / (tokens generated INCLUDING its stop token) ^ length_penalty; at the end (max length)
 *    the open beams are added with length = tokens generated.
 *  - BeamHypotheses keeps the num_beams best; is_done (early_stopping False) once it is full and
 *    worst_score >= best candidate score / cur_len ^ length_penalty. The search ends when done or when
 *    max_new tokens have been generated; the result is the best hypothesis (ties: the later-added one,
 *    as Python's sorted(...).pop() picks).
 *  - the returned ids are the hypothesis's tokens plus the stop id that finished it (HF appends
 *    eos_token_id[0] instead; chat()'s clean-up drops either). */
#ifndef MINICPMV_BEAM_H
#define MINICPMV_BEAM_H

#include <stdint.h>

#include "common.h"

#define BEAM_MAX 16

struct beam_params {
    int num_beams;            /* 3 */
    float length_penalty;     /* 1.0 */
    float repetition_penalty; /* 1.2 */
    int max_new;              /* generated-token limit (1024) */
};

/* chat(sampling=False): 3 beams, penalty 1.2, length penalty 1.0, 1024 tokens. */
void beam_params_default(struct beam_params *p);

/* The model as the search sees it. Beams live in two generations ("sides") of num_beams slots each. */
struct beam_model {
    void *ctx;
    int vocab;
    /* Beam `slot` of side `side` is the beam `parent` of side `side ^ 1` with `tok` appended as its
     * t-th generated token (t counts from 0; on t == 0 there is no parent). Writes the next-token
     * logits [vocab] (f32) of the new beam. */
    int (*step)(void *ctx, int side, int slot, int parent, int t, int32_t tok, float *logits, struct err *e);
    int (*is_stop)(void *ctx, int32_t tok);
    /* Polled once per step; non-zero ends the search early (the best hypothesis so far is returned). */
    int (*cancel)(void *ctx);
};

/* Runs the search from first_logits (the prompt's last logits, [vocab], not modified). out (capacity
 * max_new) receives the best sequence's ids. */
int beam_search(const struct beam_model *m, const struct beam_params *p, const float *first_logits, int32_t *out,
                int *n_out, struct err *e);

struct engine;
struct tensor;
struct engine_gen_stats;
/* Feeds the prompt (ids, or embeddings when ids is NULL; n tokens) after what g's session holds, then
 * beam-searches. The KV rows after the prompt are left unspecified (n_past = the prompt's end).
 * cancel may be NULL. Needs prompt + max_new <= ctx. */
int beam_generate(struct engine *g, const int32_t *ids, const struct tensor *embeds, int64_t n,
                  const struct beam_params *p, int (*cancel)(void *), void *cancel_ctx, int32_t *out, int *n_out,
                  struct engine_gen_stats *stats, struct err *e);

#endif
