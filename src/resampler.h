/* resampler.h: the perceiver resampler (spec §4): [B, N_max, vd] vision features of B pieces ->
 * [B, query_num, d] LLM-width tokens, with the 2-D sin-cos position code on the keys.
 * Owns: the sin-cos position code (analytic, any (h, w): no 70x70 cache limit), the key-padding
 * rule (piece i uses only its first h_i*w_i keys), the MultiheadAttention arithmetic order.
 * Does not own: the weights (model.h), the vision tower (vision.h), the copy of its input onto the
 * resampler's device (the caller does it; the resampler may live on another device than the vpm).
 * Fixed by HF's resampler.py, not by config.json: head_dim 128 (heads = d / 128) and LayerNorm
 * eps 1e-6 (RESAMPLER_HEAD_DIM, RESAMPLER_LN_EPS). */
#ifndef MINICPMV_RESAMPLER_H
#define MINICPMV_RESAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "config.h"
#include "tensor.h"

struct resampler_weights; /* model.h */

#define RESAMPLER_HEAD_DIM 128
#define RESAMPLER_LN_EPS 1e-6f

/* One row of the 2-D sin-cos cache (§4.2) for row r (h index), column c (w index), float32 as numpy
 * computes it: out[0:d/4] = sin(c*w), out[d/4:d/2] = cos(c*w), out[d/2:3d/4] = sin(r*w),
 * out[3d/4:d] = cos(r*w), with w_i = 1 / 10000^(i / (d/4)) in float32. d % 4 == 0. */
void resampler_sincos(float *out, int d, int r, int c);

/* Checks tgt sizes (tgt_hw: B pairs (h, w)) against n_max = x's padded length. */
int resampler_check_tgt(const int32_t *tgt_hw, int n_pieces, int64_t n_max, struct err *e);

/* Bytes of device scratch resampler_forward needs. */
size_t resampler_scratch_bytes(const struct model_config *c, const int32_t *tgt_hw, int n_pieces, enum dtype act);
/* An upper bound of those views (without the alignment padding) for any n_pieces pieces of at most
 * max_patches patches each (the device planner's cost model, devmap.c). */
size_t resampler_views_bound(const struct model_config *c, int n_pieces, int64_t max_patches, enum dtype act);

/* out[B, query_num, d] = resampler(x[B, N_max, vd], tgt_hw). x, out on the resampler's device
 * (w->query.dev), both in the activation dtype. Keys n >= h_i*w_i of piece i are ignored (the
 * key_padding_mask of §4.1); rows of x past that may hold anything. scratch: at least
 * resampler_scratch_bytes() on that device, or NULL to have it allocated and freed here. */
int resampler_forward(struct tensor *out, const struct resampler_weights *w, const struct model_config *c,
                      const struct tensor *x, const int32_t *tgt_hw, int n_pieces, void *scratch,
                      size_t scratch_bytes, struct err *e);

#endif
