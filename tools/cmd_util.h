/* cmd_util.h: flag parsing shared by the subcommands (engine flags: --model, --device, --dtype,
 * --ctx, --threads, --max-batch, the device flags of the planner, and sampling flags). */
#ifndef MINICPMV_CMD_UTIL_H
#define MINICPMV_CMD_UTIL_H

#include "devmap.h"
#include "engine.h"

/* The engine's options and the planner's device flags, as the subcommands parse them. */
struct cmdu_engine_opts {
    struct engine_options o;     /* o.devmap points at dm */
    struct devmap_opts dm;
};
/* Defaults for both (engine_options_default, devmap_opts_init). Not to be copied (o.devmap). */
void cmdu_engine_opts_init(struct cmdu_engine_opts *x);
/* Tries to consume argv[*i] (and its value) as an engine flag or a device flag (devmap.h);
 * sets o->devmap = dm. Returns 1 when consumed, 0 when not
 * an engine flag, -1 on a bad value (message in e). */
int cmdu_engine_flag(struct engine_options *o, struct devmap_opts *dm, int argc, char **argv, int *i, struct err *e);
/* Same for sampling flags: --greedy, --seed, --temperature, --top-k, --top-p, --repetition-penalty. */
int cmdu_sampler_flag(struct sampler_params *p, int argc, char **argv, int *i, struct err *e);
/* The value after argv[*i] or an error naming the flag. */
const char *cmdu_value(int argc, char **argv, int *i, struct err *e);
int cmdu_int(const char *flag, const char *s, long long lo, long long hi, long long *out, struct err *e);
/* The device flags (--gpus, --max-memory, --logical-devices, --ctx, --kv-seqs, --max-batch,
 * --max-pieces, --max-patches, --device-map) into the planner's options (devmap.h). Looks at
 * argv[*i]. Returns 1 when it was a device flag (consumed, with its value; *i is left on the last
 * consumed word), 0 when it is not one of ours, -1 on a bad value. Accepts "--flag value" and
 * "--flag=value". */
int devmap_opts_parse(struct devmap_opts *o, int argc, char **argv, int *i, struct err *e);
/* Help lines for the device flags (static text). */
const char *devmap_opts_help(void);
/* Help text for the engine and sampling flags. */
extern const char cmdu_engine_help[];
extern const char cmdu_sampler_help[];

#endif
