/* The Matryoshka multi-head clustering projector (docs/model.md §11.1, prefix-slice
 * variant). Level j reads the prefix x[:, :d_j] of a [n, D] feature matrix:
 *   z = x[:, :d_j] Wp^T + bp                       matryoshka_projections.{j}
 *   h1 = GELU(z Wa^T + ba)                         mlps.{j}.0
 *   h2 = GELU(h1 Wb^T + bb)                        mlps.{j}.2
 *   h3 = GELU(h2 Wc^T + bc)                        mlps.{j}.4  (bottleneck)
 *   logits = h3 W^T, W[k] = g_k v_k / |v_k|        last_layers.{j}.weight_g / weight_v
 * with exact-erf GELU and K_j = prototypes * d_j / D prototypes. Without
 * nesting (ablation) there is one level at d = D with K prototypes.
 *
 * Weights, gradients and the teacher copy are three struct head_weights carved
 * from arenas of the same layout. */
#ifndef FRANCA_TRAIN_HEAD_H
#define FRANCA_TRAIN_HEAD_H

#include <stddef.h>

#include "mm.h"
#include "objective.h"
#include "params.h"
#include "rng.h"

struct head_level {
    int d, K;
    float *proj_w, *proj_b;   /* [d, d], [d] */
    float *w1, *b1;           /* [hidden, d], [hidden] */
    float *w2, *b2;           /* [hidden, hidden], [hidden] */
    float *w3, *b3;           /* [bottleneck, hidden], [bottleneck] */
    float *wg;                /* [K, 1] */
    float *wv;                /* [K, bottleneck] */
};

struct head_weights {
    int n_levels, D, hidden, bottleneck;
    struct head_level lv[HEAD_MAX_LEVELS];
    float *arena;
    size_t n_floats;
};

/* Checks hc against the backbone width D (levels, widths, sizes). */
int head_config_check(const struct head_config *hc, int D, char *err, size_t errlen);
/* Allocates a zeroed arena for hc and carves it. */
int head_alloc(const struct head_config *hc, int D, struct head_weights *h, char *err,
               size_t errlen);
void head_free(struct head_weights *h);
/* docs/model.md §11.1 init: Linear weights trunc-normal 0.02 (cut at +-2 std), biases 0,
 * weight_g 1, weight_v U(-1/sqrt(bottleneck), 1/sqrt(bottleneck)). */
/* fan_in: Linear weights trunc-normal with std 1/sqrt(fan_in) instead (keeps the
 * activations O(1) through a narrow head, where 0.02 shrinks them ~10x a layer). */
void head_init_random(struct head_weights *h, struct rng *r, bool fan_in);
/* Appends every tensor as prefix + "." + official name (module for clipping). */
int head_add_params(struct param_list *l, const char *prefix, int module, struct head_weights *w,
                    struct head_weights *g, struct head_weights *t);

/* Activations of a head for up to cap rows (grow-only). prod: the type of the
 * products' operands (MM_BF16: bf16 operands, float32 accumulation; GELU,
 * weight norm and everything else stay float32). */
struct head_act;
int head_act_ensure(struct head_act **a, const struct head_weights *h, int rows,
                    enum mm_type prod, char *err, size_t errlen);
void head_act_free(struct head_act *a);
/* Logits [n, K_j] of level j after head_forward; dlogits [n, K_j] of level j, to
 * be filled by the loss before head_backward. */
float *head_logits(struct head_act *a, int j);
float *head_dlogits(struct head_act *a, int j);

/* x: [n, ldx] rows whose first D columns are the features. h16: h's arena
 * rounded to bf16 (same layout) for a bf16 act, NULL for a float32 one. */
void head_forward(const struct head_weights *h, const mm_bf16 *h16, struct head_act *a,
                  const float *x, int ldx, int n);
/* From head_dlogits: adds the parameter gradients to g and the input gradient
 * to dx [n, lddx] (first D columns). h16 as for head_forward. */
void head_backward(const struct head_weights *h, const mm_bf16 *h16, struct head_weights *g,
                   struct head_act *a, float *dx, int lddx);

#endif
