/* fuzz_image.c: libFuzzer target for the image decoders and the preprocessing that follows a
 * successful decode. Not built by the Makefile (it globs tests/test_*.c); tools/fuzz_image.sh
 * builds it with clang -fsanitize=fuzzer,address,undefined and runs it for N seconds.
 * Limits are small so the fuzzer spends its time in parsers, not in big allocations. */
#include <string.h>

#include "image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct image_opts o;
    image_opts_default(&o);
    o.max_pixels = 1 << 20;
    o.n_threads = 1;
    struct image im = {0};
    struct err e;
    if (image_decode(&im, data, size, &o, &e) == 0) {
        CHECK(im.w >= 1 && im.h >= 1 && (int64_t)im.w * im.h <= o.max_pixels && im.rgb);
        volatile unsigned sum = 0;
        for (size_t i = 0; i < (size_t)im.w * im.h * 3; i++) sum += im.rgb[i]; /* every byte readable */
        if ((int64_t)im.w * im.h <= 4096) { /* small images: run the whole preprocessing too */
            struct preprocessor_config cfg = {.max_slice_nums = 9, .scale_resolution = 56, .patch_size = 14,
                                              .image_feature_size = 96, .norm_mean = {0.5f, 0.5f, 0.5f},
                                              .norm_std = {0.5f, 0.5f, 0.5f}};
            struct image_pieces ps;
            if (image_preprocess(&ps, &im, &cfg, 1, &e) == 0) image_pieces_free(&ps);
        }
        image_free(&im);
    } else {
        CHECK(im.rgb == NULL && e.msg[0] && !strchr(e.msg, '\n'));
    }
    return 0;
}
