/* tokenizer.h: the byte-level BPE tokenizer of MiniCPM-Llama3-V 2.5 (Llama-3 vocabulary, spec §7):
 * loading tokenizer.json (+ special_tokens_map.json / tokenizer_config.json when present), encode, decode,
 * a streaming decoder, and the generator of the model's three tokenizer files from Meta's tokenizer.json.
 * Owns no chat formatting (chat.h) and no generation post-processing (spec §8: dropping id 0 etc.).
 * Invariants: a loaded tokenizer is immutable, so one may be shared by threads; encode follows HF
 * `tokenizers` + transformers' PreTrainedTokenizerFast exactly (see docs/TOKENIZER.md), including the rule
 * that special tokens of special_tokens_map.json missing from added_tokens (the pad "!") become added
 * special tokens, so every "!" encodes to id 0. */
#ifndef MINICPMV_TOKENIZER_H
#define MINICPMV_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

struct tokenizer;

/* Loads model_dir/tokenizer.json and, when present, model_dir/special_tokens_map.json and
 * model_dir/tokenizer_config.json (special tokens, clean_up_tokenization_spaces). */
int tokenizer_load(struct tokenizer **out, const char *model_dir, struct err *e);
/* Loads a tokenizer.json alone (no companion files: no pad "!" rule, clean-up off, as HF
 * tokenizers.Tokenizer.from_file). */
int tokenizer_load_file(struct tokenizer **out, const char *tokenizer_json_path, struct err *e);
void tokenizer_free(struct tokenizer *tok); /* accepts NULL */

/* Encodes len bytes of UTF-8 text (NULs allowed) into *ids (malloc'd, caller frees; *n may be 0).
 * flags: TOKENIZER_ADD_SPECIAL applies tokenizer.json's post_processor like HF's add_special_tokens=True
 * (ByteLevel: adds nothing; TemplateProcessing: e.g. a leading BOS). Invalid UTF-8 is an error. */
enum { TOKENIZER_ADD_SPECIAL = 1 };
int tokenizer_encode(const struct tokenizer *tok, const char *text, size_t len, int flags, int32_t **ids,
                     int *n, struct err *e);

/* Decodes ids into a malloc'd NUL-terminated UTF-8 string (invalid byte sequences become U+FFFD, like HF).
 * Special tokens are kept. clean_up: 1/0, or TOKENIZER_CLEANUP_DEFAULT to use tokenizer_config.json's
 * clean_up_tokenization_spaces (transformers' rewrites " ." -> "." etc., spec §7). */
enum { TOKENIZER_CLEANUP_DEFAULT = -1 };
int tokenizer_decode(const struct tokenizer *tok, const int32_t *ids, int n, int clean_up, char **text,
                     size_t *len, struct err *e);

/* Streaming decoder: concatenating every chunk it emits (including tokenizer_stream_finish's) gives exactly
 * tokenizer_decode of all the ids pushed; a chunk never ends inside a UTF-8 character. */
struct tokenizer_stream;
int tokenizer_stream_init(struct tokenizer_stream **out, const struct tokenizer *tok, int clean_up, struct err *e);
/* Pushes one id; *chunk points into the stream's buffer (valid until the next call), *chunk_len may be 0. */
int tokenizer_stream_push(struct tokenizer_stream *st, int32_t id, const char **chunk, size_t *chunk_len,
                          struct err *e);
/* Emits what was held back (an incomplete trailing UTF-8 sequence becomes U+FFFD) and resets the stream. */
void tokenizer_stream_finish(struct tokenizer_stream *st, const char **chunk, size_t *chunk_len);
void tokenizer_stream_free(struct tokenizer_stream *st); /* accepts NULL */

/* The id of an added token ("<image>", "<|eot_id|>") or of a vocabulary token given as raw bytes;
 * -1 when there is none. */
int32_t tokenizer_token_id(const struct tokenizer *tok, const char *token);
/* The raw bytes decode emits for one id (no clean-up, no U+FFFD replacement: a token may hold part
 * of a UTF-8 character); *bytes points into the tokenizer (valid while it lives). Returns
 * TOKENIZER_KIND_VOCAB for a vocabulary token, TOKENIZER_KIND_ADDED for an added/special token, or
 * TOKENIZER_KIND_NONE (*bytes = NULL, *len = 0) for an unused or out-of-range id. */
enum { TOKENIZER_KIND_NONE = 0, TOKENIZER_KIND_VOCAB = 1, TOKENIZER_KIND_ADDED = 2 };
int tokenizer_token_bytes(const struct tokenizer *tok, int32_t id, const char **bytes, size_t *len);
/* Number of ids (max id + 1): 128256 for Llama-3. */
int tokenizer_vocab_size(const struct tokenizer *tok);
/* Checks that every id the tokenizer can produce (vocabulary, added and special tokens, those of
 * the post-processor included) is below vocab_size, the model's embedding rows; the error names the
 * first token outside with its id. engine_open calls it, so a tokenizer.json that does not fit the
 * checkpoint is refused at load instead of reaching the embedding lookup with a bad id. */
int tokenizer_check_ids(const struct tokenizer *tok, int vocab_size, struct err *e);
/* The special tokens named by special_tokens_map.json / tokenizer_config.json; -1 when unset. */
struct tokenizer_specials {
    int32_t bos, eos, unk, pad;
};
struct tokenizer_specials tokenizer_specials(const struct tokenizer *tok);

/* Writes MiniCPM-Llama3-V-2_5's tokenizer.json, tokenizer_config.json and special_tokens_map.json into out_dir,
 * built from Meta's Llama-3 tokenizer.json at llama3_json_path with the special-token table of spec §7. */
int tokenizer_write_minicpmv_files(const char *llama3_json_path, const char *out_dir, struct err *e);

#endif
