/* The ViT backbone for training: forward passes that keep what backward needs,
 * and the backward pass into a gradient arena laid out like the weights
 * (a struct vit_weights carved from its own arena, see engine/checkpoint.h).
 *
 * One struct bb_act holds every activation of one pass shape (batch B, square
 * crops of side S), allocated once and reused while the shape stays the same;
 * nothing is allocated inside the layer loop. A pass made with train == 0 (the
 * teacher) keeps one layer's buffers only and cannot be back-propagated.
 * Registers (R > 0) and RASA are not supported for training. */
#ifndef FRANCA_TRAIN_BACKBONE_H
#define FRANCA_TRAIN_BACKBONE_H

#include <stddef.h>
#include <stdint.h>

#include "checkpoint.h"
#include "mm.h"
#include "model_config.h"
#include "objective.h"
#include "rng.h"

struct bb_act;

/* Drop path as DINOv2's sample-subset residual (docs/model.md §2.7): for each residual
 * branch of each block, keep k = max(int(b (1 - rate)), 1) of the b samples,
 * run the branch on them only and add it back scaled by b / k. The subset is
 * drawn from rng (a partial Fisher-Yates shuffle: for i < k, swap position i
 * with a uniform position in [i, b-1]; the first k entries are the subset), or
 * chosen by fn when it is set (tests). pass is passed through to fn. */
struct bb_drop {
    float rate;
    struct rng *rng;
    objective_subset_fn fn;
    void *ctx;
    int pass;
};

/* (Re)allocates *a for B images of side x side pixels unless it already has
 * that shape. prod is the type of the matrix products' operands: MM_F32, or
 * MM_BF16 (bf16 operands, float32 accumulation; LayerNorm, softmax and the
 * residual stream stay float32). */
int bb_act_ensure(struct bb_act **a, const struct model_config *c, int B, int side, int train,
                  enum mm_type prod, char *err, size_t errlen);
void bb_act_free(struct bb_act *a);

int bb_tokens(const struct bb_act *a);        /* T = 1 + N */
/* Final-LayerNorm output of the last forward, [B*T, D]; row b*T is image b's CLS. */
const float *bb_out(const struct bb_act *a);
/* Gradient w.r.t. bb_out, [B*T, D]; zeroed by bb_forward, filled by the caller. */
float *bb_dout(struct bb_act *a);

/* Forward of img [B, 3, S, S]. mask [B, N] (1 = replace the patch token by
 * mask_token before the positional embedding) may be NULL; drop may be NULL
 * (no drop path; a train == 0 pass ignores it). w16: w's arena rounded to
 * bf16 (same layout) for a bf16 pass, NULL for a float32 one. */
void bb_forward(const struct model_config *c, const struct vit_weights *w, const mm_bf16 *w16,
                struct bb_act *a, const float *img, const uint8_t *mask,
                const struct bb_drop *drop);

/* Backward of the last forward from bb_dout(a); adds parameter gradients to g
 * (same layout as w). w16 as for bb_forward. Clobbers bb_dout. */
void bb_backward(const struct model_config *c, const struct vit_weights *w, const mm_bf16 *w16,
                 struct vit_weights *g, struct bb_act *a);

/* Called by bb_backward of a: with stage 2 depth once the final LayerNorm's
 * gradients are added, 2l + 1 once block l's FFN half's (norm2 .. ls2) are,
 * 2l once the whole block's are, -1 at the end (embeddings). The
 * gradients of that part receive nothing more from this call: the trainer
 * starts their all-reduce while the rest of the backward pass runs. */
typedef void (*bb_backward_hook)(void *ctx, int stage);
void bb_set_backward_hook(struct bb_act *a, bb_backward_hook fn, void *ctx);

/* Appends every backbone tensor as "backbone." + its flattened official name
 * (schema/checkpoint-format.md; mask_token included) with the docs/model.md §13 rules. */
int bb_add_params(struct param_list *l, const struct model_config *c, struct vit_weights *w,
                  struct vit_weights *g, struct vit_weights *t, float patch_embed_lr_mult);

#endif
