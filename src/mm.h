/* mm.h: the image path below the engine: decoded images -> pieces (image.h) -> vision tower -> resampler
 * -> query_num rows per piece on the embedding device (spec §3-§5).
 *
 * Owns: the image path's kept device scratch (sized from the plan's max_pieces x max_patches, grown on
 * demand, freed by mm_free), the batching of a request's pieces (batches of at most max_pieces, each
 * padded to the request's longest piece, with the numbers of one batch), and the host timings of the
 * last encode. Does not own: the weights (model.h), the placement (model_placement), the prompt
 * (chat.h) or where the rows go in it (engine_merge_embeddings).
 * Invariant: an encode never changes what another request's encode computes (the scratch is reused
 * only in device stream order). */
#ifndef MINICPMV_MM_H
#define MINICPMV_MM_H

#include "chat.h"
#include "config.h"
#include "image.h"
#include "model.h"

/* One device block kept across requests. */
struct mm_arena {
    struct device dev;
    void *p;                     /* NULL until first needed */
    size_t bytes;
};

/* Host clock of the last mm_encode, seconds (bench). */
struct mm_times {
    double pre;                  /* image preprocessing */
    double rows_wait;            /* waiting for rows of an image still decoding (image_decode_async) */
    int batches;                 /* vision batches the pieces ran in */
    double vision_queued;        /* vision_forward: host conversion, uploads, queueing */
    double rs_queued;            /* resampler_forward: its host tables, queueing */
    double wait;                 /* the final sync: device work still running after the host is done */
};

struct mm {
    const struct model_config *cfg;
    const struct preprocessor_config *pp;
    const struct vpm_weights *vpm;
    const struct resampler_weights *rs;
    struct device vdev, rdev, edev;  /* the vision tower's, the resampler's, the embedding's device */
    enum dtype act;
    int max_pieces;                  /* pieces per vision batch (the plan's) */
    int64_t max_patches;             /* patches per piece (the plan's; longer pieces are refused) */
    struct mm_arena ws[2];           /* [0] on vdev; [1] on rdev when it differs */
    struct mm_times times;
    int whole_batches;               /* (developers) 1: each image's pieces in one batch (up to max_pieces), its
                                        rows all waited for first, as before 2026-12-03; 0: one per slice row */
};

/* Binds the image path to loaded weights and reserves its scratch for max_pieces pieces of
 * max_patches patches (the plan's bounds). */
int mm_init(struct mm *m, const struct model_config *c, const struct preprocessor_config *pp, const struct model *w,
            const struct model_placement *pl, enum dtype act, int max_pieces, int64_t max_patches, struct err *e);
void mm_free(struct mm *m);
/* Sizes the kept scratch for n_pieces pieces of up to max_patches patches each. */
int mm_reserve(struct mm *m, int n_pieces, int64_t max_patches, struct err *e);
/* Vision + resampler for all pieces of the given images: out [n_pieces*query_num, d] on the embed device
 * (allocated; the caller frees with dev_free(out->dev, out->data)); grids receives each image's
 * (cols, rows). Returns when the rows are complete on the device. An image still decoding
 * (image_decode_async) is encoded as its rows arrive, one batch per slice row (mm.c: the batches follow
 * from the slicing plans, so decoded or decoding, the same numbers). */
int mm_encode(struct mm *m, const struct image *images, int n_images, struct chat_grid *grids, struct tensor *out,
              int *n_pieces, struct err *e);

#endif
