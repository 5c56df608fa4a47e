/* scheduler.h: several chat turns in flight on one engine (continuous batching).
 *
 * Each turn holds one engine slot (its own KV rows). A step runs prefill chunks of the turns still
 * reading their prompt, oldest first, within a budget of prompt tokens per step (by default one chunk:
 * the engine's max_batch tokens, filled by several short prompts or one chunk of a long one;
 * sched_set_prefill_budget), then ONE batched decode step over every turn that is generating
 * (engine_decode_batch_pick: the GEMMs take M = active turns, attention reads each turn's own rows, and
 * the next tokens are picked on the device, each with its turn's sampler; only rows that need the host
 * sampler bring their logits back). A long prompt therefore delays the others by one chunk per step,
 * never by its whole prefill, and a request arriving while others decode is prefilled in the next step
 * (unless older prompts fill the budget). Turns join and leave between steps; each keeps its own
 * sampling parameters, stop strings, max_new, streaming and cancellation (turn.h's staged calls). Beam
 * search is not batched (the caller runs it alone with turn_run).
 * A step: collect the batched decode step launched by the previous one (its picks become the turns'
 * next tokens), the prefill chunks, launch the next batched step, then, while the device runs it,
 * the host work of the tokens just taken (streaming, stop strings, callbacks, finished turns; and
 * whatever the caller does between steps, such as admitting requests). A turn that a stop string
 * or a cancel ends had one more token computed, which is dropped.
 * Owns: the slot table and the order of work. Does not own: the turns (their owner frees them), the
 * queue in front of it (the server's), the engine.
 * Not thread-safe: one thread (the server's worker) calls everything. */
#ifndef MINICPMV_SCHEDULER_H
#define MINICPMV_SCHEDULER_H

#include "turn.h"

struct scheduler;
/* A finished turn: rc 0 and r filled (r is the callee's to free with turn_result_free), or rc -1 with
 * e set (input_error: the request's fault). Called from sched_step or sched_add. */
typedef void (*sched_done_cb)(void *ctx, int rc, struct turn_result *r, int input_error, const struct err *e);

int sched_init(struct scheduler **out, struct engine *g, struct err *e); /* engine_slots(g) slots */
void sched_free(struct scheduler *s);                                    /* accepts NULL; aborts what runs */
int sched_slots_free(const struct scheduler *s);
int sched_active(const struct scheduler *s);
/* Turns still reading their prompt (admitted, no first token yet). */
int sched_prefilling(const struct scheduler *s);
/* Starts a prepared turn (images, prompt embedding) on a free slot; done is called once, when it
 * finishes or fails (a failure to start is reported through done too, and sched_add returns -1). */
int sched_add(struct scheduler *s, struct turn *t, const struct turn_io *io, sched_done_cb done, void *ctx);
/* 1: every row's logits come to the host and its turn picks there (turn_step), as before device
 * picks; 0 (the default): rows of turns that allow it (turn_dev_pick) take the device's pick. The
 * tokens are the same either way (tests compare the two). */
void sched_set_host_picks(struct scheduler *s, int on);
/* Prompt tokens a step may prefill (default and tokens <= 0: the engine's max_batch, one chunk): turns
 * still reading their prompt are fed oldest first, in chunks of at most max_batch tokens (those a turn has
 * alone), as many as the budget holds; a chunk that does not fit what is left waits for the next step,
 * except a step's first chunk. A larger budget admits a burst of requests in fewer steps; every chunk
 * delays that step's decode rows. */
void sched_set_prefill_budget(struct scheduler *s, int64_t tokens);
/* Turns preempted so far (a KV pool smaller than slots x ctx, --kv-tokens, ran out, and the most recently
 * admitted turns gave their blocks to older ones, to be resumed later), and the tokens the resumed turns
 * prefilled again (those whose blocks were not found in the prefix cache any more). */
void sched_preempt_counts(const struct scheduler *s, int64_t *preempted, int64_t *recomputed);
/* Decode-step tokens picked so far on the device and on the host (the first token of each turn,
 * picked after its prefill, is not counted). */
void sched_pick_counts(const struct scheduler *s, int64_t *dev, int64_t *host);
/* Where the steps' host time went so far (seconds; time_now around each part): waiting for the
 * step in flight and reading its picks back (collect), handing the tokens to their turns (take: host
 * picks included), prefill chunks, uploading and launching the next step (launch), and streaming
 * the taken tokens while the device runs it (emit: the overlapped part). */
struct sched_times {
    int64_t steps, launches;
    double collect, take, prefill, launch, emit;
};
void sched_get_times(const struct scheduler *s, struct sched_times *t);
/* One step (above). Returns the number of turns still active. */
int sched_step(struct scheduler *s);

#endif
