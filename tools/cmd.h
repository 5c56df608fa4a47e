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

#endif
