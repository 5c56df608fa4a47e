# One Makefile. `make` builds build/minicpmv (CPU backend); `make CUDA=1` adds the CUDA backend.
# `make test` builds and runs every tests/test_*.c; `make demo` runs the CLI on a generated tiny model.
CC      ?= gcc
NVCC    ?= /usr/local/cuda/bin/nvcc
BUILD   ?= build
PKGS    := libcjson libpcre2-8 libturbojpeg libpng libwebp libmicrohttpd
OPENBLAS_INC := $(firstword $(wildcard /usr/include/x86_64-linux-gnu/openblas-openmp /usr/include/x86_64-linux-gnu/openblas-pthread /usr/include/openblas))
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -Wno-format-truncation -fopenmp -mavx2 -mfma -mf16c -Wa,-mbranches-within-32B-boundaries \
           -Isrc $(shell pkg-config --cflags $(PKGS)) $(if $(OPENBLAS_INC),-I$(OPENBLAS_INC))
LDLIBS  := $(shell pkg-config --libs $(PKGS)) -lopenblas -lm -lpthread -fopenmp
ifeq ($(WERROR),1)
CFLAGS  += -Werror
endif
ifeq ($(SANITIZE),1)
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer
LDLIBS  += -fsanitize=address,undefined
BUILD   := build-asan
endif

SRC     := $(wildcard src/*.c)
CMDS    := $(wildcard tools/cmd_*.c) tools/minicpmv.c
TESTSRC := $(wildcard tests/test_*.c)
OBJ     := $(SRC:%.c=$(BUILD)/%.o)
CMDOBJ  := $(CMDS:%.c=$(BUILD)/%.o)
TESTBIN := $(TESTSRC:tests/%.c=$(BUILD)/tests/%)

ifeq ($(CUDA),1)
CUSRC   := $(wildcard src/cuda/*.cu)
CUOBJ   := $(CUSRC:%.cu=$(BUILD)/%.o)
CFLAGS  += -DMINICPMV_CUDA -I/usr/local/cuda/include
NVFLAGS := -O3 -std=c++17 -Isrc -DMINICPMV_CUDA -gencode arch=compute_90,code=sm_90 \
           -gencode arch=compute_80,code=sm_80 -Xcompiler -fPIC,-Wall --expt-relaxed-constexpr
LDLIBS  += -L/usr/local/cuda/lib64 -lcudart -lcublas -lcublasLt -lstdc++
OBJ     += $(CUOBJ)
endif

.PHONY: all test demo clean cuda fuzz
all: $(BUILD)/minicpmv

$(BUILD)/%.o: %.c $(wildcard src/*.h tools/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/%.o: %.cu $(wildcard src/*.h src/cuda/*.h src/cuda/*.cuh)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

$(BUILD)/minicpmv: $(OBJ) $(CMDOBJ)
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/%: tests/%.c tests/t.h $(OBJ) $(filter-out $(BUILD)/tools/minicpmv.o,$(CMDOBJ))
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itools $< $(OBJ) $(filter-out $(BUILD)/tools/minicpmv.o,$(CMDOBJ)) -o $@ $(LDLIBS)

test: $(BUILD)/minicpmv $(TESTBIN)
	@BUILD=$(BUILD) bash tests/run.sh $(TESTBIN) tests/server_clients.sh tests/repl.sh

# libFuzzer targets (clang), each run FUZZ_SECONDS (tools/fuzz.sh; FUZZ_TARGETS picks some)
FUZZ_SECONDS ?= 30
fuzz:
	@bash tools/fuzz.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

demo: $(BUILD)/minicpmv
	@bash tools/demo.sh $(BUILD)/minicpmv $(MODEL)

clean:
	rm -rf build build-asan build-cuda
