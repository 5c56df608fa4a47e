/* chat.h: MiniCPM-Llama3-V 2.5's prompt (spec §6): the Llama-3 chat template, the image placeholders that
 * replace each "(<image>./</image>)" marker, tokenization, and the image bounds used to merge the vision
 * embeddings. Owns no image slicing (the caller passes each image's slice grid) and no generation.
 * Invariant: the ids are never truncated (HF cuts at max_inp_length silently; we return an error instead). */
#ifndef MINICPMV_CHAT_H
#define MINICPMV_CHAT_H

#include <stdint.h>

#include "common.h"
#include "tokenizer.h"

#define CHAT_IMAGE_MARKER "(<image>./</image>)"

struct chat_msg {
    const char *role;    /* "user", "assistant" or "system" */
    const char *content; /* UTF-8; may contain CHAT_IMAGE_MARKER, one per image, in image order */
};

struct chat_grid {
    int cols, rows; /* the image's slice grid (spec §5.2); 0,0 = not sliced */
};

/* The prompt text of spec §6.1/§6.2: "<|begin_of_text|>", then for the system prompt (when non-empty) and each
 * message "<|start_header_id|>ROLE<|end_header_id|>\n\n" + content.strip() + "<|eot_id|>", then the assistant
 * header; the k-th marker is replaced by image k's placeholder ("<image>" + "<unk>"*query_num + "</image>",
 * plus "<slice>" rows "</slice>" for a grid). The number of markers must equal n_images.
 * *prompt is malloc'd and NUL-terminated. */
int chat_build_prompt(const char *system, const struct chat_msg *msgs, int n_msgs, const struct chat_grid *grids,
                      int n_images, int query_num, char **prompt, size_t *len, struct err *e);

/* chat_build_prompt, then tokenize (with the tokenizer's post-processor, as HF's processor calls
 * tokenizer.encode(text)). When max_tokens > 0 and the prompt is longer, fails with a message saying by how
 * many tokens. *ids is malloc'd. */
int chat_build_ids(const struct tokenizer *tok, const char *system, const struct chat_msg *msgs, int n_msgs,
                   const struct chat_grid *grids, int n_images, int query_num, int max_tokens, int32_t **ids,
                   int *n_ids, struct err *e);

/* Spec §6.3: for each "<image>" ... "</image>" pair in ids, in order, the half-open range [start, end) of the
 * positions between them (the query_num <unk> positions that receive vision embeddings). *bounds is malloc'd
 * (NULL when there are none). Unbalanced or nested tags are an error. */
struct chat_bound {
    int start, end;
};
int chat_image_bounds(const struct tokenizer *tok, const int32_t *ids, int n_ids, struct chat_bound **bounds,
                      int *n_bounds, struct err *e);

#endif
