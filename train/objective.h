/* Franca's training objective for one batch: student and EMA-teacher backbones,
 * the Matryoshka multi-head clustering heads (DINO on CLS, iBOT on masked
 * patches), Sinkhorn-Knopp targets, the DINO, iBOT and KoLeo losses, and the
 * backward pass into every student parameter (docs/model.md §2, §11, §12).
 *
 * The objective owns the parameters (student, teacher copy, gradients) and the
 * activation buffers; the trainer around it (optimizer, EMA, schedules, data,
 * checkpoints) sees them only through objective_params(). */
#ifndef FRANCA_TRAIN_OBJECTIVE_H
#define FRANCA_TRAIN_OBJECTIVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "checkpoint.h"
#include "mm.h"
#include "model_config.h"
#include "params.h"
#include "rng.h"

#define HEAD_MAX_LEVELS 8

struct head_config {
    bool nested;          /* true: one head per Matryoshka level (prefix slices);
                             false: one full-width head (ablation) */
    int n_levels;         /* nested: levels; widths ascending, last == D */
    int widths[HEAD_MAX_LEVELS];
    int prototypes;       /* K at full width; level j has K * widths[j] / D */
    int hidden;           /* MLP hidden width (2048 in the paper) */
    int bottleneck;       /* 384 in the paper */
    bool init_fan_in;     /* Linear init std 1/sqrt(fan_in) instead of docs/model.md §11.1's 0.02
                             (small heads: 0.02 makes the logits ~1e-4, flat softmax) */
    float level_weights[HEAD_MAX_LEVELS]; /* each level's DINO and iBOT losses are scaled
                             by its weight (the reference's relative_importance); all zero
                             means every level weighs 1, as docs/model.md §11.2 trains */
};

struct objective_config {
    struct model_config backbone;  /* engine config; training supports R == 0 */
    struct head_config head;       /* same shape for the DINO and iBOT heads */
    float student_temp;            /* 0.1 */
    float koleo_weight;            /* 0.1 */
    bool koleo_levels;             /* KoLeo also on every smaller Matryoshka prefix of the
                                      CLS (not in the paper: spreads the prefixes that k-NN
                                      at reduced width searches) */
    float drop_path;               /* uniform rate over blocks; 0 disables */
    float layerscale_init;         /* LayerScale gamma init; <= 0: docs/model.md §2.6's 1e-5 */
    enum mm_type precision;        /* MM_F32, or MM_BF16: the matrix products of the
                                      backbones and heads (forward and backward) take bf16
                                      operands with float32 accumulation; weights, gradients,
                                      LayerNorm, softmax, losses and Sinkhorn-Knopp stay
                                      float32 */
};

/* One batch of crops, collated crop-major as docs/model.md §9: global[c*B + b] is crop c
 * of sample b. All images normalised float32 NCHW. */
struct crop_batch {
    int B;                 /* samples */
    int global_size;       /* side of global crops (multiple of the patch size) */
    int n_local;           /* local crops per sample (may be 0) */
    int local_size;        /* side of local crops */
    const float *global;   /* [2B, 3, G, G] */
    const float *local;    /* [n_local*B, 3, Lc, Lc] */
    const uint8_t *masks;  /* [2B, (G/P)^2], 1 = masked patch (iBOT); all zero = no iBOT term */
};

/* Each term as it enters total (already divided by the DINO n_terms = 2 n_local + 2,
 * summed over the Matryoshka levels; koleo already times koleo_weight, over global
 * crops 0 and 1); total = dino_local + dino_global + ibot + koleo. */
struct loss_terms {
    double total, dino_local, dino_global, ibot, koleo;
};

struct objective;

/* Whether this CPU can train in cfg->precision (bf16 needs AVX-512 or better):
 * 0, or -1 with a message for the user. */
int objective_precision_check(const struct objective_config *cfg, char *err, size_t errlen);

/* Builds student and teacher with the initialisation of docs/model.md §2.6 (backbone)
 * and §11.1 (heads), drawn from seed; the teacher starts equal to the student. */
int objective_create(const struct objective_config *cfg, uint64_t seed,
                     struct objective **out, char *err, size_t errlen);
void objective_free(struct objective *o);
const struct objective_config *objective_get_config(const struct objective *o);

/* Every trainable tensor: w (student), g (gradient), t (teacher copy). */
struct param_list *objective_params(struct objective *o);

/* Forward and backward for one batch. Gradients are ADDED to each param's g
 * (the caller zeroes them, which makes gradient accumulation free). Teacher
 * runs without drop path and without masks; the student gets masks on its
 * global crops and drop path drawn from rng. In bf16 precision the student and
 * teacher weights are rounded to bf16 copies once at the start of the call
 * (the weights only change between calls), which every product reuses. */
int objective_step(struct objective *o, const struct crop_batch *batch, float teacher_temp,
                   struct rng *rng, struct loss_terms *loss, char *err, size_t errlen);

/* The teacher backbone as engine weights (for export and k-NN evaluation). */
const struct vit_weights *objective_teacher_backbone(const struct objective *o);

/* Drop-path subset chooser (tests): called for every residual branch of every
 * student block when drop_path > 0, with pass 0 for the global crops and 1 for
 * the local crops, layer 0..L-1, branch 0 (attention) or 1 (FFN), b samples in
 * the pass and k = max(int(b (1 - drop_path)), 1); it writes the k kept sample
 * indices (distinct, in 0..b-1) to idx. With no hook (the default) the subset
 * is drawn from the rng given to objective_step. */
/* Data parallel (comm.h): with a communicator of size > 1, each rank's batch is its
 * shard of the global batch, and the Sinkhorn-Knopp targets (DINO and iBOT) are
 * computed over the rows of all ranks, as the reference's distributed
 * Sinkhorn-Knopp; KoLeo and drop path stay per rank, as in the reference. The
 * caller averages the gradients over the ranks. NULL (the default): one process. */
struct comm;
void objective_set_comm(struct objective *o, struct comm *comm);

/* Gradient readiness (data parallel: all-reduce overlapped with backward). When
 * set, objective_step calls fn(ctx, k) each time the gradients of params k ..
 * n-1 (objective_params order) receive nothing more from the call: the heads'
 * before the backbone's backward pass, then, during the last backbone pass, the
 * final LayerNorm's, each block's from the last to the first, and at the end
 * the embeddings' (k = 0). Backward runs in reverse parameter order, so the
 * final part is always a suffix of the list. NULL: no calls. */
typedef void (*objective_ready_fn)(void *ctx, int first);
void objective_set_grad_ready(struct objective *o, objective_ready_fn fn, void *ctx);
typedef void (*objective_subset_fn)(void *ctx, int pass, int layer, int branch, int b, int k,
                                    int *idx);
void objective_set_drop_path_hook(struct objective *o, objective_subset_fn fn, void *ctx);

#endif
