/* cmd.h: the CLI's subcommands. Each lives in tools/cmd_<name>.c and returns an exit code.
 * Declared weak so the CLI links while a subcommand is being written; main() says so. */
#ifndef MINICPMV_CMD_H
#define MINICPMV_CMD_H

#define CMD_DECL(name) int cmd_##name(int argc, char **argv) __attribute__((weak))
CMD_DECL(mkmodel);
CMD_DECL(generate);
CMD_DECL(tokenize);
CMD_DECL(chat);
CMD_DECL(plan);
CMD_DECL(serve);
CMD_DECL(bench);
CMD_DECL(quantize);
/* tools/cmd_quantize.c: writes a quantized copy (DTYPE_Q8, DTYPE_Q4 or DTYPE_NF4) of the float folder in. */
struct err;
int quantize_folder(const char *in, const char *out, int format, struct err *e) __attribute__((weak));

#endif
