/* minicpmv.c: the CLI's entry point; dispatches to tools/cmd_<name>.c. The only main().
 * `--version` prints what the Makefile baked into version.h (in the build folder): version, git
 * commit, backends and the CUDA targets compiled in. */
#include <stdio.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "cmd.h"
#include "version.h"

static void version(void)
{
    printf("minicpmv %s (commit %s)\n", MINICPMV_VERSION, MINICPMV_COMMIT);
#ifdef MINICPMV_CUDA
    printf("backends: cpu cuda\ncuda targets: %s\n", MINICPMV_CUDA_TARGETS);
#else
    printf("backends: cpu (built without CUDA: make CUDA=1)\n");
#endif
}

struct subcommand {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
};

static void usage(const struct subcommand *cmds, int n)
{
    fprintf(stderr, "usage: minicpmv <command> [options]   (minicpmv <command> --help for its options)\n"
                    "       minicpmv --version\n\ncommands:\n");
    for (int i = 0; i < n; i++) fprintf(stderr, "  %-9s %s\n", cmds[i].name, cmds[i].help);
}

int main(int argc, char **argv)
{
#ifdef __GLIBC__
    /* Process-wide allocator tuning, decided here by the program and not by the library (the engine
     * leaves the allocator as it finds it). Every image request allocates and frees ~40 MB of host
     * buffers (decoded pixels, f32 patches, fp16 patches). glibc serves blocks above 128 KiB with
     * fresh mmaps by default, so each request page-faults all of it in again (~3.5 ms of a
     * 1344x1344 JPEG's decode + preprocessing on the 2-core dev machine). Blocks up to 32 MiB
     * (glibc's maximum) now come from the heap, which keeps up to 512 MiB of freed memory for the
     * next request. */
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 512 << 20);
#endif
    const struct subcommand cmds[] = {
        {"chat", cmd_chat, "answer a question about images (or a text chat)"},
        {"generate", cmd_generate, "greedy/sampled generation from token ids"},
        {"tokenize", cmd_tokenize, "text on stdin -> token ids (or --decode)"},
        {"plan", cmd_plan, "dry-run device map under per-device memory budgets"},
        {"serve", cmd_serve, "OpenAI-compatible HTTP server"},
        {"bench", cmd_bench, "prefill/decode/vision speed and memory"},
        {"mkmodel", cmd_mkmodel, "write a random checkpoint in the HF layout (tiny or full size)"},
        {"quantize", cmd_quantize, "write a q8/q4 (or bitsandbytes nf4) copy of a float model folder"},
        {"compare", cmd_compare, "a quantized model's logits against a reference (top-1 agreement, KL)"},
    };
    int n = (int)(sizeof cmds / sizeof cmds[0]);
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(cmds, n);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) {
        version();
        return 0;
    }
    for (int i = 0; i < n; i++) {
        if (strcmp(argv[1], cmds[i].name)) continue;
        if (!cmds[i].fn) {
            fprintf(stderr, "minicpmv: '%s' is not built into this binary\n", argv[1]);
            return 2;
        }
        return cmds[i].fn(argc - 1, argv + 1);
    }
    fprintf(stderr, "minicpmv: unknown command '%s'\n", argv[1]);
    usage(cmds, n);
    return 2;
}
