/* fuzz_safetensors.c: libFuzzer target for the safetensors header parser and bounds checks
 * (src/safetensors.c): arbitrary bytes as a .safetensors file (an in-memory file, opened through
 * /proc/self/fd like any path). An accepted file must describe tensors whose every byte lies inside the
 * file; the target reads each of them. Built and run by tools/fuzz.sh (make fuzz). */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int fd = -1;
    if (fd < 0) fd = memfd_create("fuzz.safetensors", 0);
    CHECK(fd >= 0);
    CHECK(ftruncate(fd, 0) == 0);
    CHECK(pwrite(fd, data, size, 0) == (ssize_t)size);
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    struct safetensors *st = NULL;
    struct err e;
    if (safetensors_open_file(&st, path, &e) == 0) {
        int n = safetensors_count(st);
        CHECK(n >= 0);
        volatile uint8_t sum = 0;
        for (int i = 0; i < n; i++) {
            const struct safetensors_tensor *t = safetensors_at(st, i);
            CHECK(t && t->name && t->ndim >= 0 && t->ndim <= TENSOR_MAX_DIM);
            uint64_t count = 1;
            for (int d = 0; d < t->ndim; d++) {
                CHECK(t->shape[d] >= 0);
                count *= (uint64_t)t->shape[d];
            }
            CHECK(count * dtype_size(t->dtype) == t->nbytes); /* shape x dtype size == byte span */
            const uint8_t *p = t->data;
            CHECK(t->nbytes == 0 || p != NULL);
            for (size_t k = 0; k < t->nbytes; k++) sum += p[k]; /* ASan/SEGV: inside the mapping */
            CHECK(safetensors_find(st, t->name) != NULL);
        }
        safetensors_close(st);
    }
    return 0;
}
