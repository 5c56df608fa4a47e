/* engine_impl.h: the engine's own struct, for the engine's files (engine.c, beam.c) and the tests that
 * look inside it. Front ends (tools/, src/server_*.c, src/turn.c) use engine.h only. */
#ifndef MINICPMV_ENGINE_IMPL_H
#define MINICPMV_ENGINE_IMPL_H

#include "engine.h"
#include "llm.h"
#include "mm.h"
#include "model.h"

#define ENGINE_MAX_STOP 8

struct engine {
    struct model_config cfg;
    struct preprocessor_config pp;
    struct safetensors *st;
    struct model model;
    struct model_placement pl;
    int *layer_dev;              /* storage for pl.layer */
    struct llm llm;
    int no_prefix_reuse;         /* engine_options.no_prefix_reuse */
    int64_t preempted;           /* engine_slot_preempt calls since load (engine_kv_use) */
    struct mm mm;                /* the image path and its kept scratch */
    struct tokenizer *tok;       /* NULL when the folder has no tokenizer.json */
    double load_seconds;
    struct devmap_plan *plan;    /* the plan the model was loaded with */
    int32_t stop[ENGINE_MAX_STOP]; /* ids that end generation (engine_is_stop): config.json's eos_token_id,
                                      generation_config.json's, and the tokenizer's <|eot_id|> */
    int n_stop;
    int threads;                 /* --threads (0 = all cores): engine_thread_init applies it to a thread */
};

#endif
