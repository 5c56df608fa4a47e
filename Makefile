# One Makefile. `make` builds build/minicpmv (CPU backend); `make CUDA=1` builds build-cuda/minicpmv
# with the CUDA backend as well. `make test` builds and runs every tests/test_*.c; `make demo` runs
# the CLI on a generated tiny model.
# Every configuration has its own folder (build, build-cuda, build-asan, build-cuda-compute_75, ...),
# and a flags stamp in it rebuilds everything when the flags change, so objects of one configuration
# never link into another. Header dependencies come from the compilers (-MMD -MP, *.d files).
# CUDA_ARCH: SASS targets (sm_NN) plus compute_NN entries for PTX. Default: SASS for sm_75, 80, 86,
# 89, 90 and PTX for compute_90 (newer cards JIT it). `CUDA_ARCH=compute_75` builds PTX for that one
# target only: the driver JIT-compiles it, so the sm_75 code paths run on any newer card.
CC      ?= gcc
NVCC    ?= /usr/local/cuda/bin/nvcc
PKGS    := libcjson libpcre2-8 libturbojpeg libjpeg libpng libwebp libmicrohttpd
OPENBLAS_INC := $(firstword $(wildcard /usr/include/x86_64-linux-gnu/openblas-openmp /usr/include/x86_64-linux-gnu/openblas-pthread /usr/include/openblas))
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -Wno-format-truncation -fopenmp -mavx2 -mfma -mf16c -Wa,-mbranches-within-32B-boundaries \
           -Isrc $(shell pkg-config --cflags $(PKGS)) $(if $(OPENBLAS_INC),-I$(OPENBLAS_INC))
LDLIBS  := $(shell pkg-config --libs $(PKGS)) -lopenblas -lm -lpthread -fopenmp
CUDA_ARCH ?= 75 80 86 89 90
ifeq ($(WERROR),1)
CFLAGS  += -Werror
endif
ifeq ($(SANITIZE),1)
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer
LDLIBS  += -fsanitize=address,undefined
endif

# the build folder of this configuration (BUILD=... on the command line overrides it)
empty   :=
space   := $(empty) $(empty)
CUDA_ARCH_TAG := $(subst $(space),-,$(strip $(CUDA_ARCH)))
BUILD_DEF := build$(if $(filter 1,$(SANITIZE)),-asan)$(if $(filter 1,$(CUDA)),-cuda$(if $(filter-out 75-80-86-89-90,$(CUDA_ARCH_TAG)),-$(CUDA_ARCH_TAG)))
ifneq ($(origin BUILD),command line) # not from the environment: tests/run.sh exports BUILD
BUILD   := $(BUILD_DEF)
endif

SRC     := $(wildcard src/*.c)
CMDS    := $(wildcard tools/cmd_*.c) tools/progress.c tools/minicpmv.c
TESTSRC := $(wildcard tests/test_*.c)
OBJ     := $(SRC:%.c=$(BUILD)/%.o)
CMDOBJ  := $(CMDS:%.c=$(BUILD)/%.o)
TESTBIN := $(TESTSRC:tests/%.c=$(BUILD)/tests/%)
UIOBJ   := $(BUILD)/gen/ui_page.o

ifeq ($(CUDA),1)
# SASS for each numeric entry; PTX for each compute_NN entry, or for the newest SASS target if none
CUDA_SASS := $(filter-out compute_%,$(CUDA_ARCH))
CUDA_PTX  := $(patsubst compute_%,%,$(filter compute_%,$(CUDA_ARCH)))
ifeq ($(strip $(CUDA_PTX)),)
CUDA_PTX  := $(lastword $(CUDA_SASS))
endif
CUDA_TARGETS := $(strip $(foreach a,$(CUDA_SASS),sm_$(a)) $(foreach a,$(CUDA_PTX),compute_$(a)))
CUDA_GENCODE := $(foreach a,$(CUDA_SASS),-gencode arch=compute_$(a),code=sm_$(a)) \
                $(foreach a,$(CUDA_PTX),-gencode arch=compute_$(a),code=compute_$(a))
CUSRC   := $(wildcard src/cuda/*.cu)
CUOBJ   := $(CUSRC:%.cu=$(BUILD)/%.o)
CFLAGS  += -DMINICPMV_CUDA -I/usr/local/cuda/include
NVFLAGS := -O3 -std=c++17 -Isrc -DMINICPMV_CUDA $(CUDA_GENCODE) -Xcompiler -fPIC,-Wall --expt-relaxed-constexpr
LDLIBS  += -L/usr/local/cuda/lib64 -lcudart -lcublas -lcublasLt -lstdc++
OBJ     += $(CUOBJ)
endif

# Rewritten only when their content changes: the flags of the C objects in $(BUILD) (flags.stamp;
# -Werror changes no object, so WERROR=1 and a plain make share them),
# of the CUDA objects (nvflags.stamp; a new CUDA_ARCH recompiles only src/cuda), and what
# `minicpmv --version` reports (version.h: version, commit, CUDA targets). Not during make -n.
VERSION := 0.3.0
COMMIT  := $(shell git describe --always --dirty --abbrev=12 2>/dev/null || echo unknown)
define stamp # file, content lines
printf '%s\n' $(2) > $(1).new && (cmp -s $(1).new $(1) || mv $(1).new $(1)); rm -f $(1).new
endef
ifeq ($(findstring n,$(firstword -$(MAKEFLAGS))),)
$(shell mkdir -p $(BUILD) && $(call stamp,$(BUILD)/flags.stamp,'$(CC) $(filter-out -Werror,$(CFLAGS))') && \
        $(call stamp,$(BUILD)/nvflags.stamp,'$(NVCC) $(NVFLAGS)') && \
        $(call stamp,$(BUILD)/version.h,'#define MINICPMV_VERSION "$(VERSION)"' '#define MINICPMV_COMMIT "$(COMMIT)"' \
        '#define MINICPMV_CUDA_TARGETS "$(CUDA_TARGETS)"'))
endif
.DEFAULT_GOAL := all
$(BUILD)/flags.stamp $(BUILD)/nvflags.stamp $(BUILD)/version.h: ;

.PHONY: all test demo clean cuda fuzz
all: $(BUILD)/minicpmv

$(BUILD)/%.o: %.c $(BUILD)/flags.stamp
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/tools/minicpmv.o: CFLAGS += -I$(BUILD)

$(BUILD)/%.o: %.cu $(BUILD)/nvflags.stamp
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -MMD -MP -c $< -o $@

# the chat page `serve` answers at / (src/ui/index.html), as C data with its Content-Security-Policy
$(BUILD)/gen/ui_page.c: src/ui/index.html tools/embed_ui.sh
	@mkdir -p $(dir $@)
	bash tools/embed_ui.sh $< $@

$(UIOBJ): $(BUILD)/gen/ui_page.c $(BUILD)/flags.stamp
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/minicpmv: $(OBJ) $(CMDOBJ) $(UIOBJ)
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(BUILD)/flags.stamp $(OBJ) $(filter-out $(BUILD)/tools/minicpmv.o,$(CMDOBJ)) $(UIOBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -Itools $< $(OBJ) $(filter-out $(BUILD)/tools/minicpmv.o,$(CMDOBJ)) $(UIOBJ) -o $@ $(LDLIBS)

test: $(BUILD)/minicpmv $(TESTBIN)
	@BUILD=$(BUILD) bash tests/run.sh $(TESTBIN) tests/server_clients.sh tests/deploy.sh tests/ui.sh tests/repl.sh tests/build.sh tests/cli.sh tests/docs.sh

# libFuzzer targets (clang), each run FUZZ_SECONDS (tools/fuzz.sh; FUZZ_TARGETS picks some)
FUZZ_SECONDS ?= 30
fuzz:
	@bash tools/fuzz.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

demo: $(BUILD)/minicpmv
	@bash tools/demo.sh $(BUILD)/minicpmv $(MODEL)

clean:
	rm -rf build build-asan build-cuda build-asan-cuda build-cuda-* build-asan-cuda-*

-include $(OBJ:.o=.d) $(CMDOBJ:.o=.d) $(TESTBIN:=.d)

# `make mutate`: the mutation campaign of tests/mutants/ (slow, not in CI): each mutant applied to a
# scratch copy of the tree under /tmp, its tests run, the kill rate and the survivors printed.
# MUTANTS=name,name runs a subset; MUTATE_ARGS="--jobs 2 --report F" passes options; `python3
# tests/mutants/run.py --list` lists them.
.PHONY: mutate
mutate:
	python3 tests/mutants/run.py $(if $(MUTANTS),--only $(MUTANTS)) $(MUTATE_ARGS)
