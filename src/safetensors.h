/* safetensors.h: reading and writing .safetensors checkpoints (spec §2).
 * Owns: opening a model folder (model.safetensors.index.json + shards, or one model.safetensors)
 * or a single file, mmap'ing every file read-only, validating every header, lookup by name,
 * and a streaming writer (header first, then tensor bytes in order, in chunks) plus the index writer.
 * Does not own: which tensors a model needs or their shapes (model.h), dtype conversion (tensor.h).
 * Invariants after a successful open: every tensor's bytes lie inside its file's data area,
 * nbytes == numel * dtype_size, spans within one file tile the data area exactly (no gaps, no
 * overlaps, as the reference safetensors library requires), names are unique across all shards,
 * and every name the index lists is in the shard it names. Sizes never come from the index's
 * metadata.total_size (it is wrong by 2x in the published checkpoint). Tensor data is read-only, and
 * 8-byte aligned only when the header is padded (always for files this writer or the reference library
 * wrote; an unpadded header is legal, so read F32/I32 through unaligned-safe loads). */
#ifndef MINICPMV_SAFETENSORS_H
#define MINICPMV_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "tensor.h"

#define SAFETENSORS_MAX_HEADER ((uint64_t)100000000) /* same limit as the reference library */
#define SAFETENSORS_MAX_INDEX ((size_t)100000000)    /* bytes of model.safetensors.index.json */
#define SAFETENSORS_MAX_SHARDS 4096

struct safetensors_tensor {
    const char *name;
    enum dtype dtype;
    int ndim;
    int64_t shape[TENSOR_MAX_DIM];
    const void *data;          /* into the read-only mmap of its shard */
    size_t nbytes;
    int shard;                 /* index into the opened files, see safetensors_shard_path() */
};

struct safetensors;            /* opaque: files, maps, tensors, name hash */

/* Opens DIR/model.safetensors.index.json and its shards, or else DIR/model.safetensors. */
int safetensors_open_dir(struct safetensors **out, const char *dir, struct err *e);
/* Opens one .safetensors file. */
int safetensors_open_file(struct safetensors **out, const char *path, struct err *e);
/* Unmaps everything; accepts NULL. Tensor pointers die with it. */
void safetensors_close(struct safetensors *st);

int safetensors_count(const struct safetensors *st);
/* The i-th tensor (0 <= i < count), in shard order, then file order. */
const struct safetensors_tensor *safetensors_at(const struct safetensors *st, int i);
/* Lookup by name; NULL when absent. */
const struct safetensors_tensor *safetensors_find(const struct safetensors *st, const char *name);
/* Lookup that fills a CPU tensor view (read-only memory) or returns an error naming the tensor. */
int safetensors_get(const struct safetensors *st, const char *name, struct tensor *out, struct err *e);
/* A CPU struct tensor over the mapped bytes. Do not write through data: the map is read-only. */
struct tensor safetensors_tensor_view(const struct safetensors_tensor *t);
/* Hands the map's pages that lie wholly inside tensor t back to the kernel (madvise DONTNEED), for a
 * tensor that was copied elsewhere and is not read from the map again: they leave this process's
 * memory. Reading t later still works (the pages come back from the file). */
void safetensors_release(const struct safetensors *st, const struct safetensors_tensor *t);

int safetensors_shard_count(const struct safetensors *st);
const char *safetensors_shard_path(const struct safetensors *st, int shard);
/* A "__metadata__" string value, searched in every opened file; NULL when absent. */
const char *safetensors_metadata(const struct safetensors *st, const char *key);

/* ---- writing ---- */

struct safetensors_spec {
    const char *name;
    enum dtype dtype;
    int ndim;
    int64_t shape[TENSOR_MAX_DIM];
};

struct safetensors_writer;

/* Writes the header for n tensors laid out back to back in the given order, then expects exactly
 * their bytes through safetensors_writer_write (any chunking). meta is NULL or a NULL-terminated
 * list of key, value strings; {"format": "pt"} is always included (transformers requires it).
 * The file is written as PATH.tmp and renamed to PATH by a successful close. */
int safetensors_writer_begin(struct safetensors_writer **out, const char *path, const struct safetensors_spec *specs,
                             int n, const char *const *meta, struct err *e);
int safetensors_writer_write(struct safetensors_writer *w, const void *data, size_t n, struct err *e);
/* Checks every byte arrived, flushes, renames; frees w in every case. */
int safetensors_writer_close(struct safetensors_writer *w, struct err *e);
/* Drops a half-written file; accepts NULL. */
void safetensors_writer_abort(struct safetensors_writer *w);

/* Writes n host tensors (named by tensor.name) into one file. */
int safetensors_write_file(const char *path, const struct tensor *ts, int n, struct err *e);
/* Writes DIR/model.safetensors.index.json: weight_map name -> shard file name (sorted by name, as
 * transformers writes it) and metadata.total_size as given (the caller decides what to claim). */
int safetensors_write_index(const char *dir, const char *const *names, const char *const *files, int n,
                            int64_t total_size, struct err *e);

#endif
