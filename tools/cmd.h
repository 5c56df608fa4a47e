/* cmd.h: the CLI's subcommands. Each lives in tools/cmd_<name>.c and returns an exit code.
 * Declared weak so the CLI links while a subcommand is being written; main() says so. */
#ifndef MINICPMV_CMD_H
#define MINICPMV_CMD_H

#include <stdint.h>

#define CMD_DECL(name) int cmd_##name(int argc, char **argv) __attribute__((weak))
CMD_DECL(mkmodel);
CMD_DECL(generate);
CMD_DECL(tokenize);
CMD_DECL(chat);
CMD_DECL(plan);
CMD_DECL(serve);
CMD_DECL(bench);
CMD_DECL(quantize);
CMD_DECL(compare);
/* tools/cmd_quantize.c: writes a quantized copy (DTYPE_Q8, DTYPE_Q4 or DTYPE_NF4) of the float folder in. */
struct err;
int quantize_folder(const char *in, const char *out, int format, struct err *e) __attribute__((weak));
/* tools/cmd_compare.c: the logits of DIR with each of quants[0..n_quants) (0, DTYPE_Q8, DTYPE_Q4) against
 * the reference (ref_model with ref_quant) over `positions` pseudo-random ids of `seed`, fed one at a time. */
struct compare_result {
    long long positions, top1;   /* positions compared; those whose argmax equals the reference's */
    double kl_mean, kl_max;      /* KL(ref || quant) of the softmax, nats: mean and max over the positions */
    long long kl_max_at;         /* the position of the max */
};
struct cmdu_engine_opts;
int compare_run(struct cmdu_engine_opts *eo, const char *ref_model, int ref_quant, const char *model, const int *quants,
                int n_quants, int64_t positions, uint64_t seed, struct compare_result *res, struct err *e)
    __attribute__((weak));
/* KL(softmax(ref) || softmax(cand)) over v logits in double; *agree = the argmaxes are equal. */
double compare_kl(const float *ref, const float *cand, int64_t v, int *agree) __attribute__((weak));

#endif
