/* safetensors.c: mmap'ed, validated safetensors reading; streaming writing; the shard index.
 * Format (huggingface/safetensors): u64 little-endian header length N, N bytes of JSON
 * {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, padded
 * with spaces, then the data area; offsets are relative to the data area.
 * The reader is as strict as the reference Rust library (spans must tile the data area), so a file
 * this code accepts also loads in PyTorch, and a file this code writes passes both. */
#include "safetensors.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_EXACT_INT 9007199254740992.0 /* 2^53: JSON numbers above this are not exact doubles */

struct st_file {
    char *path;
    void *map;
    size_t size;
    uint64_t data_start;       /* 8 + header length */
    cJSON *meta;               /* the "__metadata__" object, detached from the parsed header; may be NULL */
};

struct safetensors {
    struct st_file *files;
    int n_files;
    struct safetensors_tensor *tensors;
    int n_tensors, cap_tensors;
    int *slots;                /* open addressing over tensors; -1 = empty */
    size_t n_slots;            /* power of two, >= 2 * n_tensors */
};

/* ---------------------------------------------------------------- helpers */

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static bool dtype_parse(const char *s, enum dtype *out)
{
    static const struct { const char *name; enum dtype dt; } tab[] = {
        {"F16", DTYPE_F16}, {"BF16", DTYPE_BF16}, {"F32", DTYPE_F32}, {"I32", DTYPE_I32}, {"U8", DTYPE_U8}};
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (!strcmp(s, tab[i].name)) { *out = tab[i].dt; return true; }
    return false;
}

/* A JSON number that is a non-negative integer exactly representable as a double. */
static bool json_u64(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= MAX_EXACT_INT) || d != (double)(uint64_t)d) return false;
    *out = (uint64_t)d;
    return true;
}

static int tensors_push(struct safetensors *st, struct err *e)
{
    if (st->n_tensors < st->cap_tensors) return 0;
    int cap = st->cap_tensors ? st->cap_tensors * 2 : 64;
    struct safetensors_tensor *v = realloc(st->tensors, (size_t)cap * sizeof *v);
    if (!v) return err_set(e, "out of memory for %d tensors", cap);
    st->tensors = v;
    st->cap_tensors = cap;
    return 0;
}

struct span {
    uint64_t begin, end;
    int tensor;
};

static int span_cmp(const void *a, const void *b)
{
    const struct span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* ---------------------------------------------------------------- one file */

/* Parses one tensor entry of a header into st->tensors; offsets go to *sp. */
static int parse_entry(struct safetensors *st, struct st_file *f, int shard, const cJSON *item, uint64_t data_size,
                       struct span *sp, struct err *e)
{
    const char *name = item->string, *path = f->path;
    if (!cJSON_IsObject(item)) return err_set(e, "%s: tensor \"%s\": entry is not a JSON object", path, name);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!cJSON_IsString(jd)) return err_set(e, "%s: tensor \"%s\": missing or non-string \"dtype\"", path, name);
    if (!cJSON_IsArray(js)) return err_set(e, "%s: tensor \"%s\": missing or non-array \"shape\"", path, name);
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2)
        return err_set(e, "%s: tensor \"%s\": \"data_offsets\" is not an array of 2 numbers", path, name);
    enum dtype dt;
    if (!dtype_parse(jd->valuestring, &dt))
        return err_set(e, "%s: tensor \"%s\": dtype \"%.32s\" is not supported (want F16, BF16, F32, I32 or U8)", path,
                       name, jd->valuestring);
    int ndim = cJSON_GetArraySize(js);
    if (ndim > TENSOR_MAX_DIM)
        return err_set(e, "%s: tensor \"%s\": %d dimensions, at most %d supported", path, name, ndim, TENSOR_MAX_DIM);
    if (tensors_push(st, e)) return -1;
    struct safetensors_tensor *t = &st->tensors[st->n_tensors];
    memset(t, 0, sizeof *t);
    uint64_t numel = 1;
    bool overflow = false;
    int k = 0;
    for (const cJSON *d = js->child; d; d = d->next, k++) {
        uint64_t v;
        if (!json_u64(d, &v))
            return err_set(e, "%s: tensor \"%s\": shape[%d] is not a non-negative integer", path, name, k);
        t->shape[k] = (int64_t)v;
        overflow |= __builtin_mul_overflow(numel, v, &numel);
    }
    uint64_t b, en, want;
    if (!json_u64(jo->child, &b) || !json_u64(jo->child->next, &en))
        return err_set(e, "%s: tensor \"%s\": data_offsets are not non-negative integers", path, name);
    if (b > en) return err_set(e, "%s: tensor \"%s\": data_offsets [%llu, %llu] begin after end", path, name,
                               (unsigned long long)b, (unsigned long long)en);
    if (en > data_size)
        return err_set(e, "%s: tensor \"%s\": data_offsets [%llu, %llu] run past the %llu-byte data area "
                       "(truncated file?)", path, name,
                       (unsigned long long)b, (unsigned long long)en, (unsigned long long)data_size);
    overflow |= __builtin_mul_overflow(numel, (uint64_t)dtype_size(dt), &want);
    if (overflow) return err_set(e, "%s: tensor \"%s\": shape is too large (byte count overflows)", path, name);
    if (en - b != want) {
        char sh[128];
        struct tensor tmp = {.ndim = ndim};
        memcpy(tmp.shape, t->shape, sizeof tmp.shape);
        return err_set(e, "%s: tensor \"%s\": data_offsets [%llu, %llu] span %llu bytes but shape %s x %s needs %llu",
                       path, name, (unsigned long long)b, (unsigned long long)en, (unsigned long long)(en - b),
                       tensor_shape_str(&tmp, sh, sizeof sh), dtype_name(dt), (unsigned long long)want);
    }
    t->name = strdup(name);
    if (!t->name) return err_set(e, "out of memory");
    t->dtype = dt;
    t->ndim = ndim;
    t->data = (const char *)f->map + f->data_start + b;
    t->nbytes = (size_t)want;
    t->shard = shard;
    sp->begin = b;
    sp->end = en;
    sp->tensor = st->n_tensors;
    st->n_tensors++;
    return 0;
}

static int parse_header(struct safetensors *st, struct st_file *f, int shard, struct err *e)
{
    const char *path = f->path;
    const unsigned char *p = f->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
    if (hlen > SAFETENSORS_MAX_HEADER)
        return err_set(e, "%s: header size %llu exceeds the limit of %llu bytes (corrupt or not safetensors)", path,
                       (unsigned long long)hlen, (unsigned long long)SAFETENSORS_MAX_HEADER);
    if (hlen > f->size - 8)
        return err_set(e, "%s: header size %llu runs past the end of the %zu-byte file (truncated?)", path,
                       (unsigned long long)hlen, f->size);
    if (hlen < 2) return err_set(e, "%s: header size %llu is too small for a JSON object", path,
                                 (unsigned long long)hlen);
    f->data_start = 8 + hlen;
    uint64_t data_size = f->size - f->data_start;
    const char *h = (const char *)p + 8, *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(h, (size_t)hlen, &end, 0);
    if (!root) {
        long at = end ? (long)(end - h) : -1;
        return err_set(e, "%s: header is not valid JSON (error near byte %ld of %llu)", path, at,
                       (unsigned long long)hlen);
    }
    int rc = -1, n_spans = 0;
    struct span *spans = NULL;
    for (const char *q = end; q < h + hlen; q++)
        if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r') {
            err_set(e, "%s: header has bytes after its JSON object (at byte %ld of %llu)", path, (long)(q - h),
                    (unsigned long long)hlen);
            goto out;
        }
    if (!cJSON_IsObject(root)) {
        err_set(e, "%s: header is not a JSON object", path);
        goto out;
    }
    spans = calloc((size_t)cJSON_GetArraySize(root) + 1, sizeof *spans);
    if (!spans) {
        err_set(e, "%s: out of memory", path);
        goto out;
    }
    for (cJSON *it = root->child; it; it = it->next) {
        if (!strcmp(it->string, "__metadata__")) {
            if (!cJSON_IsObject(it) && !cJSON_IsNull(it)) {
                err_set(e, "%s: \"__metadata__\" is not a JSON object", path);
                goto out;
            }
            for (const cJSON *m = it->child; m; m = m->next)
                if (!cJSON_IsString(m)) {
                    err_set(e, "%s: \"__metadata__\" value \"%s\" is not a string", path, m->string);
                    goto out;
                }
            continue;
        }
        if (parse_entry(st, f, shard, it, data_size, &spans[n_spans], e)) goto out;
        n_spans++;
    }
    /* The reference reader requires spans to tile the data area: sort by begin and walk. */
    qsort(spans, (size_t)n_spans, sizeof *spans, span_cmp);
    uint64_t at = 0;
    for (int i = 0; i < n_spans; i++) {
        const char *nm = st->tensors[spans[i].tensor].name;
        if (spans[i].begin < at) {
            err_set(e, "%s: tensor \"%s\": data_offsets [%llu, %llu] overlap tensor \"%s\" (which ends at %llu)", path,
                    nm, (unsigned long long)spans[i].begin, (unsigned long long)spans[i].end,
                    st->tensors[spans[i - 1].tensor].name, (unsigned long long)at);
            goto out;
        }
        if (spans[i].begin > at) {
            err_set(e, "%s: tensor \"%s\": data_offsets [%llu, %llu] leave a gap after byte %llu", path, nm,
                    (unsigned long long)spans[i].begin, (unsigned long long)spans[i].end, (unsigned long long)at);
            goto out;
        }
        at = spans[i].end;
    }
    if (at != data_size) {
        err_set(e, "%s: tensors cover %llu bytes but the data area has %llu (truncated or trailing bytes)", path,
                (unsigned long long)at, (unsigned long long)data_size);
        goto out;
    }
    f->meta = cJSON_DetachItemFromObjectCaseSensitive(root, "__metadata__");
    rc = 0;
out:
    free(spans);
    cJSON_Delete(root);
    return rc;
}

/* Opens, maps and parses path as shard number st->n_files. */
static int add_file(struct safetensors *st, const char *path, struct err *e)
{
    struct st_file *v = realloc(st->files, (size_t)(st->n_files + 1) * sizeof *v);
    if (!v) return err_set(e, "out of memory");
    st->files = v;
    struct st_file *f = &st->files[st->n_files];
    memset(f, 0, sizeof *f);
    f->path = strdup(path);
    if (!f->path) return err_set(e, "out of memory");
    int shard = st->n_files++; /* counted now so close() frees it on any error below */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return err_set(e, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int er = errno;
        close(fd);
        return err_set(e, "%s: cannot stat: %s", path, strerror(er));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return err_set(e, "%s: not a regular file", path);
    }
    if (sb.st_size < 8) {
        close(fd);
        return err_set(e, "%s: file is %lld bytes, too short for a safetensors header", path, (long long)sb.st_size);
    }
    void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int er = errno;
    close(fd);
    if (m == MAP_FAILED)
        return err_set(e, "%s: mmap of %lld bytes failed: %s", path, (long long)sb.st_size, strerror(er));
    f->map = m;
    f->size = (size_t)sb.st_size;
    return parse_header(st, f, shard, e);
}

/* Builds the name hash; a repeated name is an error naming both files. */
static int build_index(struct safetensors *st, struct err *e)
{
    size_t n = 16;
    while (n < 2 * (size_t)st->n_tensors) n <<= 1;
    st->slots = malloc(n * sizeof *st->slots);
    if (!st->slots) return err_set(e, "out of memory");
    st->n_slots = n;
    memset(st->slots, 0xff, n * sizeof *st->slots);
    for (int i = 0; i < st->n_tensors; i++) {
        const struct safetensors_tensor *t = &st->tensors[i];
        size_t s = hash_str(t->name) & (n - 1);
        for (; st->slots[s] >= 0; s = (s + 1) & (n - 1)) {
            const struct safetensors_tensor *o = &st->tensors[st->slots[s]];
            if (!strcmp(o->name, t->name))
                return err_set(e, "%s: tensor \"%s\" appears twice (also in %s)", st->files[t->shard].path, t->name,
                               st->files[o->shard].path);
        }
        st->slots[s] = i;
    }
    return 0;
}

/* ---------------------------------------------------------------- opening */

int safetensors_open_file(struct safetensors **out, const char *path, struct err *e)
{
    *out = NULL;
    struct safetensors *st = calloc(1, sizeof *st);
    if (!st) return err_set(e, "out of memory");
    if (add_file(st, path, e) || build_index(st, e)) {
        safetensors_close(st);
        return -1;
    }
    *out = st;
    return 0;
}

static int str_cmp(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* A shard name from the index must be a plain file name in the model folder. */
static bool shard_name_ok(const char *s)
{
    return *s && strlen(s) < 256 && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, "..");
}

static int open_index(struct safetensors *st, const char *dir, const char *ipath, struct err *e)
{
    char *text = NULL;
    size_t len = 0;
    const char **shards = NULL;
    char *listed = NULL;
    int n_shards = 0, rc = -1;
    if (read_file(ipath, SAFETENSORS_MAX_INDEX, &text, &len, e)) return -1;
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (!root) {
        err_set(e, "%s: not valid JSON", ipath);
        goto out;
    }
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        err_set(e, "%s: no \"weight_map\" object", ipath);
        goto out;
    }
    int n_entries = cJSON_GetArraySize(wm);
    if (n_entries == 0) {
        err_set(e, "%s: \"weight_map\" is empty", ipath);
        goto out;
    }
    shards = calloc((size_t)n_entries, sizeof *shards);
    if (!shards) {
        err_set(e, "out of memory");
        goto out;
    }
    /* Distinct shard names, checked and sorted so tensors come in model-00001.. order. */
    for (const cJSON *it = wm->child; it; it = it->next) {
        if (!cJSON_IsString(it) || !shard_name_ok(it->valuestring)) {
            err_set(e, "%s: weight_map[\"%s\"] is not a plain shard file name", ipath, it->string);
            goto out;
        }
        int k = 0;
        while (k < n_shards && strcmp(shards[k], it->valuestring)) k++;
        if (k == n_shards) {
            if (n_shards == SAFETENSORS_MAX_SHARDS) {
                err_set(e, "%s: more than %d shard files", ipath, SAFETENSORS_MAX_SHARDS);
                goto out;
            }
            shards[n_shards++] = it->valuestring;
        }
    }
    qsort(shards, (size_t)n_shards, sizeof *shards, str_cmp);
    for (int k = 0; k < n_shards; k++) {
        char p[4096];
        if (path_join(p, sizeof p, dir, shards[k], e)) goto out;
        if (access(p, F_OK) != 0) {
            err_set(e, "%s: names shard \"%s\", which is missing (%s: %s)", ipath, shards[k], p, strerror(errno));
            goto out;
        }
        if (add_file(st, p, e)) goto out;
    }
    if (build_index(st, e)) goto out;
    /* Every mapped name must be in the shard the index says, and every shard tensor must be mapped. */
    listed = calloc((size_t)st->n_tensors + 1, 1);
    if (!listed) {
        err_set(e, "out of memory");
        goto out;
    }
    for (const cJSON *it = wm->child; it; it = it->next) {
        const struct safetensors_tensor *t = safetensors_find(st, it->string);
        if (!t) {
            err_set(e, "%s: tensor \"%s\" is mapped to %s, which does not contain it", ipath, it->string,
                    it->valuestring);
            goto out;
        }
        const char *base = strrchr(st->files[t->shard].path, '/');
        base = base ? base + 1 : st->files[t->shard].path;
        if (strcmp(base, it->valuestring)) {
            err_set(e, "%s: tensor \"%s\" is mapped to %s but is in %s", ipath, it->string, it->valuestring, base);
            goto out;
        }
        int i = (int)(t - st->tensors);
        if (listed[i]) {
            err_set(e, "%s: tensor \"%s\" is listed twice in weight_map", ipath, it->string);
            goto out;
        }
        listed[i] = 1;
    }
    for (int i = 0; i < st->n_tensors; i++)
        if (!listed[i]) {
            err_set(e, "%s: tensor \"%s\" is not listed in %s", st->files[st->tensors[i].shard].path,
                    st->tensors[i].name, ipath);
            goto out;
        }
    /* metadata.total_size is deliberately ignored: the published index claims fp32 sizes (spec §2). */
    rc = 0;
out:
    free(listed);
    free(shards);
    cJSON_Delete(root);
    free(text);
    return rc;
}

int safetensors_open_dir(struct safetensors **out, const char *dir, struct err *e)
{
    *out = NULL;
    char ipath[4096], spath[4096];
    if (path_join(ipath, sizeof ipath, dir, "model.safetensors.index.json", e) ||
        path_join(spath, sizeof spath, dir, "model.safetensors", e))
        return -1;
    if (access(ipath, F_OK) != 0) {
        if (access(spath, F_OK) != 0)
            return err_set(e, "%s: neither model.safetensors.index.json nor model.safetensors is there", dir);
        return safetensors_open_file(out, spath, e);
    }
    struct safetensors *st = calloc(1, sizeof *st);
    if (!st) return err_set(e, "out of memory");
    if (open_index(st, dir, ipath, e)) {
        safetensors_close(st);
        return -1;
    }
    *out = st;
    return 0;
}

void safetensors_close(struct safetensors *st)
{
    if (!st) return;
    for (int i = 0; i < st->n_tensors; i++) free((char *)st->tensors[i].name);
    for (int i = 0; i < st->n_files; i++) {
        if (st->files[i].map) munmap(st->files[i].map, st->files[i].size);
        cJSON_Delete(st->files[i].meta);
        free(st->files[i].path);
    }
    free(st->files);
    free(st->tensors);
    free(st->slots);
    free(st);
}

/* ---------------------------------------------------------------- lookup */

int safetensors_count(const struct safetensors *st) { return st->n_tensors; }

const struct safetensors_tensor *safetensors_at(const struct safetensors *st, int i)
{
    CHECK(i >= 0 && i < st->n_tensors);
    return &st->tensors[i];
}

const struct safetensors_tensor *safetensors_find(const struct safetensors *st, const char *name)
{
    if (!st->n_slots) return NULL;
    for (size_t s = hash_str(name) & (st->n_slots - 1); st->slots[s] >= 0; s = (s + 1) & (st->n_slots - 1))
        if (!strcmp(st->tensors[st->slots[s]].name, name)) return &st->tensors[st->slots[s]];
    return NULL;
}

struct tensor safetensors_tensor_view(const struct safetensors_tensor *t)
{
    struct tensor v = {.dtype = t->dtype, .ndim = t->ndim, .data = (void *)t->data, .dev = device_cpu(),
                       .name = t->name};
    memcpy(v.shape, t->shape, sizeof v.shape);
    return v;
}

void safetensors_release(const struct safetensors *st, const struct safetensors_tensor *t)
{
    const struct st_file *f = &st->files[t->shard];
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), lo = (uintptr_t)t->data, hi = lo + t->nbytes;
    CHECK(lo >= (uintptr_t)f->map && hi <= (uintptr_t)f->map + f->size);
    const uintptr_t a = (lo + page - 1) / page * page, b = hi / page * page; /* the pages t alone uses */
    if (a < b) madvise((void *)a, b - a, MADV_DONTNEED); /* advice: nothing to do when it fails */
}

int safetensors_get(const struct safetensors *st, const char *name, struct tensor *out, struct err *e)
{
    const struct safetensors_tensor *t = safetensors_find(st, name);
    if (!t)
        return err_set(e, "%s%s: no tensor \"%s\"", st->n_files ? st->files[0].path : "(no file)",
                       st->n_files > 1 ? " and the other shards" : "", name);
    *out = safetensors_tensor_view(t);
    return 0;
}

int safetensors_shard_count(const struct safetensors *st) { return st->n_files; }

const char *safetensors_shard_path(const struct safetensors *st, int shard)
{
    CHECK(shard >= 0 && shard < st->n_files);
    return st->files[shard].path;
}

const char *safetensors_metadata(const struct safetensors *st, const char *key)
{
    for (int i = 0; i < st->n_files; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(st->files[i].meta, key);
        if (cJSON_IsString(v)) return v->valuestring;
    }
    return NULL;
}

/* ---------------------------------------------------------------- writing */

struct safetensors_writer {
    FILE *f;
    char *path, *tmp;
    uint64_t total, written;
};

static cJSON *raw_u64(uint64_t v)
{
    char b[32];
    snprintf(b, sizeof b, "%llu", (unsigned long long)v);
    return cJSON_CreateRaw(b);
}

/* Builds the header JSON text for specs laid back to back; returns NULL with e set. */
static char *header_json(const char *path, const struct safetensors_spec *specs, int n, const char *const *meta,
                         uint64_t *total, struct err *e)
{
    cJSON *root = cJSON_CreateObject(), *md = cJSON_CreateObject();
    char *out = NULL;
    if (!root || !md) goto oom;
    cJSON_AddItemToObject(root, "__metadata__", md);
    bool has_format = false;
    for (int i = 0; meta && meta[i] && meta[i + 1]; i += 2) {
        has_format |= !strcmp(meta[i], "format");
        if (!cJSON_AddStringToObject(md, meta[i], meta[i + 1])) goto oom;
    }
    if (!has_format && !cJSON_AddStringToObject(md, "format", "pt")) goto oom;
    uint64_t at = 0;
    for (int i = 0; i < n; i++) {
        const struct safetensors_spec *s = &specs[i];
        uint64_t numel = 1;
        if (!s->name || s->ndim < 0 || s->ndim > TENSOR_MAX_DIM || dtype_size(s->dtype) == 0) {
            err_set(e, "%s: tensor %d (\"%s\"): bad name, rank or dtype", path, i, s->name ? s->name : "");
            goto fail;
        }
        if (!strcmp(s->name, "__metadata__") || cJSON_GetObjectItemCaseSensitive(root, s->name)) {
            err_set(e, "%s: tensor name \"%s\" is reserved or repeated", path, s->name);
            goto fail;
        }
        cJSON *t = cJSON_CreateObject(), *sh = cJSON_CreateArray(), *off = cJSON_CreateArray();
        if (!t || !sh || !off) {
            cJSON_Delete(t); cJSON_Delete(sh); cJSON_Delete(off);
            goto oom;
        }
        cJSON_AddItemToObject(root, s->name, t);
        cJSON_AddStringToObject(t, "dtype", dtype_name(s->dtype));
        cJSON_AddItemToObject(t, "shape", sh);
        cJSON_AddItemToObject(t, "data_offsets", off);
        for (int d = 0; d < s->ndim; d++) {
            if (s->shape[d] < 0) {
                err_set(e, "%s: tensor \"%s\": negative dimension", path, s->name);
                goto fail;
            }
            numel *= (uint64_t)s->shape[d];
            cJSON_AddItemToArray(sh, raw_u64((uint64_t)s->shape[d]));
        }
        uint64_t nb = numel * dtype_size(s->dtype);
        cJSON_AddItemToArray(off, raw_u64(at));
        cJSON_AddItemToArray(off, raw_u64(at + nb));
        at += nb;
    }
    out = cJSON_PrintUnformatted(root);
    if (!out) goto oom;
    *total = at;
    cJSON_Delete(root);
    return out;
oom:
    err_set(e, "%s: out of memory building the header", path);
fail:
    cJSON_Delete(root);
    if (!root) cJSON_Delete(md);
    return NULL;
}

int safetensors_writer_begin(struct safetensors_writer **out, const char *path, const struct safetensors_spec *specs,
                             int n, const char *const *meta, struct err *e)
{
    *out = NULL;
    struct safetensors_writer *w = calloc(1, sizeof *w);
    size_t pl = strlen(path);
    if (!w || !(w->path = strdup(path)) || !(w->tmp = malloc(pl + 5))) {
        safetensors_writer_abort(w);
        return err_set(e, "out of memory");
    }
    memcpy(w->tmp, path, pl);
    memcpy(w->tmp + pl, ".tmp", 5);
    char *h = header_json(path, specs, n, meta, &w->total, e);
    if (!h) {
        safetensors_writer_abort(w);
        return -1;
    }
    size_t hl = strlen(h), padded = (hl + 7) / 8 * 8; /* keeps the data area 8-byte aligned */
    w->f = fopen(w->tmp, "wb");
    if (!w->f) {
        err_set(e, "%s: cannot create: %s", w->tmp, strerror(errno));
        free(h);
        safetensors_writer_abort(w);
        return -1;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int bad = fwrite(len8, 1, 8, w->f) != 8 || fwrite(h, 1, hl, w->f) != hl;
    for (size_t i = hl; i < padded && !bad; i++) bad = fputc(' ', w->f) == EOF;
    free(h);
    if (bad) {
        err_set(e, "%s: write failed: %s", w->tmp, strerror(errno));
        safetensors_writer_abort(w);
        return -1;
    }
    *out = w;
    return 0;
}

int safetensors_writer_write(struct safetensors_writer *w, const void *data, size_t n, struct err *e)
{
    if (n > w->total - w->written)
        return err_set(e, "%s: %zu more bytes would pass the %llu bytes the header declares", w->path, n,
                       (unsigned long long)w->total);
    if (n && fwrite(data, 1, n, w->f) != n) return err_set(e, "%s: write failed: %s", w->tmp, strerror(errno));
    w->written += n;
    return 0;
}

int safetensors_writer_close(struct safetensors_writer *w, struct err *e)
{
    if (w->written != w->total) {
        err_set(e, "%s: closed after %llu of %llu data bytes", w->path, (unsigned long long)w->written,
                (unsigned long long)w->total);
        safetensors_writer_abort(w);
        return -1;
    }
    FILE *f = w->f;
    w->f = NULL;
    if (fclose(f) != 0) {
        err_set(e, "%s: write failed: %s", w->tmp, strerror(errno));
        safetensors_writer_abort(w);
        return -1;
    }
    if (rename(w->tmp, w->path) != 0) {
        err_set(e, "%s: cannot rename from %s: %s", w->path, w->tmp, strerror(errno));
        safetensors_writer_abort(w);
        return -1;
    }
    free(w->path);
    free(w->tmp);
    free(w);
    return 0;
}

void safetensors_writer_abort(struct safetensors_writer *w)
{
    if (!w) return;
    if (w->f) fclose(w->f);
    if (w->tmp) unlink(w->tmp);
    free(w->path);
    free(w->tmp);
    free(w);
}

int safetensors_write_file(const char *path, const struct tensor *ts, int n, struct err *e)
{
    struct safetensors_spec *specs = calloc((size_t)n + 1, sizeof *specs);
    if (!specs) return err_set(e, "out of memory");
    for (int i = 0; i < n; i++) {
        CHECK(tensor_on_host(&ts[i]));
        specs[i].name = ts[i].name;
        specs[i].dtype = ts[i].dtype;
        specs[i].ndim = ts[i].ndim;
        memcpy(specs[i].shape, ts[i].shape, sizeof specs[i].shape);
    }
    struct safetensors_writer *w;
    int rc = safetensors_writer_begin(&w, path, specs, n, NULL, e);
    free(specs);
    if (rc) return -1;
    for (int i = 0; i < n; i++)
        if (safetensors_writer_write(w, ts[i].data, tensor_nbytes(&ts[i]), e)) {
            safetensors_writer_abort(w);
            return -1;
        }
    return safetensors_writer_close(w, e);
}

struct name_file {
    const char *name, *file;
};

static int name_file_cmp(const void *a, const void *b)
{
    return strcmp(((const struct name_file *)a)->name, ((const struct name_file *)b)->name);
}

int safetensors_write_index(const char *dir, const char *const *names, const char *const *files, int n,
                            int64_t total_size, struct err *e)
{
    char path[4096];
    if (path_join(path, sizeof path, dir, "model.safetensors.index.json", e)) return -1;
    struct name_file *v = calloc((size_t)n + 1, sizeof *v);
    cJSON *root = cJSON_CreateObject(), *md = cJSON_CreateObject(), *wm = cJSON_CreateObject();
    char *text = NULL;
    int rc = -1;
    if (!v || !root || !md || !wm) {
        cJSON_Delete(md);
        cJSON_Delete(wm);
        err_set(e, "out of memory");
        goto out;
    }
    cJSON_AddItemToObject(root, "metadata", md);
    cJSON_AddItemToObject(root, "weight_map", wm);
    cJSON_AddItemToObject(md, "total_size", raw_u64((uint64_t)total_size));
    for (int i = 0; i < n; i++) v[i] = (struct name_file){names[i], files[i]};
    qsort(v, (size_t)n, sizeof *v, name_file_cmp);
    for (int i = 0; i < n; i++) cJSON_AddStringToObject(wm, v[i].name, v[i].file);
    text = cJSON_Print(root);
    if (!text) {
        err_set(e, "out of memory");
        goto out;
    }
    FILE *f = fopen(path, "wb");
    if (!f) {
        err_set(e, "%s: cannot create: %s", path, strerror(errno));
        goto out;
    }
    size_t tl = strlen(text);
    int bad = fwrite(text, 1, tl, f) != tl || fputc('\n', f) == EOF;
    bad |= fclose(f) != 0;
    if (bad) {
        err_set(e, "%s: write failed", path);
        goto out;
    }
    rc = 0;
out:
    free(text);
    cJSON_Delete(root);
    free(v);
    return rc;
}
