/* vision.h: the SigLIP / Idefics2 vision tower ("vpm", spec §3) over a batch of pieces.
 * Owns: the batching rule (every piece zero-padded to N_max patches, NO attention mask), the
 * 1-D position-id rule of §3.2, the encoder layers and the post-LayerNorm.
 * Does not own: pixels and patch packing (image.h), the weights (model.h binds them), the
 * resampler (resampler.h), device placement (the caller copies the output where the resampler is).
 * Invariants: model code here only calls op_* on tensors of the weights' device; the only host
 * data it builds are the padded patch matrix and the position-id index tensor, copied over with
 * op_copy. The output row order is the input piece order. */
#ifndef MINICPMV_VISION_H
#define MINICPMV_VISION_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "config.h"
#include "tensor.h"

struct vpm_weights; /* model.h */

/* One piece (overview or slice) of an image, as image.h packs it. */
struct vision_piece {
    const float *patches; /* host f32 [h*w, num_channels*patch^2], row n = patch (n / w, n % w),
                             values in (c, ky, kx) order */
    int h, w;             /* tgt_size in patches, height first */
};

/* Bounds on untrusted sizes (an image is sliced into at most max_slice_nums + 1 pieces of about
 * 1024 patches each; these limits only stop absurd allocations). */
#define VISION_MAX_PIECES 256
#define VISION_MAX_PATCHES 65536

/* Which torch CPU arange to emulate for the position ids (see vision_position_ids and
 * docs/VISION.md): 0 = the scalar rule written in spec §3.2; 8 or 16 = torch's 8-lane (AVX2,
 * and the generic DEFAULT build) / 16-lane (AVX-512) vectorised arange kernel.
 * 8, settled by tests/fixtures/vision/vision_posids.safetensors (torch 2.11 on an AVX-512 host,
 * N = 1..4900, checked by tests/test_vision_ref.c): 8 matches torch for every N, 0 differs for
 * 964 N values, 16 for 845. torch registers arange_stub with REGISTER_DISPATCH, which leaves the
 * AVX-512 slot empty (DispatchStub.h), so an AVX-512 CPU runs the AVX2 kernel. 4.40 computes
 * these ids on the CPU even when the model is on a GPU (arange without a device). */
#define VISION_ARANGE_VEC 8

/* Position ids of §3.2 for a batch padded to n_max patches: ids[k] for k < n_max, all in
 * [0, per_side). per_side = image_size / patch_size (70 for the real model).
 *   boundaries = f32(arange(1/per_side, 1.0, 1/per_side))     (computed in double, rounded to f32)
 *   step       = 1.0f / (float)n_max
 *   frac[k]    = f32((double)step * k)
 *   ids[k]     = #{ j : boundaries[j] <= frac[k] }            (bucketize, right=True)
 * arange_vec != 0 reproduces torch's vectorised CPU arange instead, where within each block of
 * arange_vec elements value j is f32((double)f32(start + step*m) + j*step). */
void vision_position_ids(int32_t *ids, int64_t n_max, int per_side, int arange_vec);

/* max(h*w) over the pieces. */
int64_t vision_n_max(const struct vision_piece *pieces, int n_pieces);

/* Checks piece sizes against the config and the bounds above; fills e on failure. */
int vision_check_pieces(const struct model_config *c, const struct vision_piece *pieces, int n_pieces,
                        struct err *e);

/* Bytes of device scratch vision_forward needs for n_pieces padded to n_max, in dtype act. */
size_t vision_scratch_bytes(const struct model_config *c, int n_pieces, int64_t n_max, enum dtype act);
/* The same views without the alignment padding (the device planner's cost model, devmap.c). */
size_t vision_views_bytes(const struct model_config *c, int n_pieces, int64_t n_max, enum dtype act);

/* The vision tower: out[B, N_max, vd] = post_layernorm(layers(patch_embed + pos_embed)), B = n_pieces.
 * out lives on the weights' device (w->patch_w.dev) and its dtype is the activation dtype (F32 or
 * F16; BF16 accepted). scratch: at least vision_scratch_bytes() on that device, or NULL to have it
 * allocated (dev_alloc) and freed inside this call. Rows k >= h_i*w_i of piece i are the padding
 * rows; they are computed (the ViT attends to them, §3.2) but carry no meaning downstream. */
int vision_forward(struct tensor *out, const struct vpm_weights *w, const struct model_config *c,
                   const struct vision_piece *pieces, int n_pieces, void *scratch, size_t scratch_bytes,
                   struct err *e);
/* The same with every piece padded to n_pad patches (0 = the longest piece's h*w; else at least
 * that): out is [B, n_pad, vd]. Piece i's rows depend only on its patches and on n_pad, so the
 * pieces of one request may be encoded in several batches padded to the request's longest piece
 * with the same result as one batch (the engine does this to bound its workspace, mm.c). */
int vision_forward_padded(struct tensor *out, const struct vpm_weights *w, const struct model_config *c,
                          const struct vision_piece *pieces, int n_pieces, int64_t n_pad, void *scratch,
                          size_t scratch_bytes, struct err *e);

#endif
