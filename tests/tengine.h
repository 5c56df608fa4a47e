/* tengine.h: test helpers over the engine's public calls (engine.h, turn.h). */
#ifndef MINICPMV_TENGINE_H
#define MINICPMV_TENGINE_H

#include "engine.h"
#include "turn.h"

/* engine_generate with its fields spelled out as arguments. */
static inline int t_generate(struct engine *g, const int32_t *ids, const struct tensor *embeds, int64_t n, int max_new,
                             const struct sampler_params *sp, engine_token_cb cb, void *cb_ctx, int32_t *out,
                             int *n_out, struct engine_gen_stats *st, struct err *e)
{
    const struct engine_gen q = {.ids = ids, .embeds = embeds, .n = n, .max_new = max_new, .sp = sp, .cb = cb,
                                 .cb_ctx = cb_ctx};
    return engine_generate(g, &q, out, n_out, st, e);
}

/* One chat turn as `minicpmv chat -p` runs it: prepare + run, no image cache. */
static inline int t_chat(struct engine *g, const struct turn_request *rq, turn_text_cb cb, void *cb_ctx,
                         struct turn_result *res, struct err *e)
{
    struct turn *t = NULL;
    const struct turn_io io = {.cb = cb, .cb_ctx = cb_ctx};
    memset(res, 0, sizeof *res);
    int rc = turn_prepare(&t, g, rq, e);
    if (!rc) rc = turn_run(t, g, &io, res, e);
    turn_free(t);
    return rc;
}

#endif
