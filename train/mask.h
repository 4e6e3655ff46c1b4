/* iBOT masks (docs/model.md §10): CyclicMask (Franca's InverseBlockMasking with roll) and
 * DINOv2's block masking (ablation), plus the collate rule that decides which
 * global-crop images get a mask and how many patches.
 *
 * Masks are uint8 [gh * gw] row-major, 1 = masked patch. Every random choice
 * draws from the given struct rng. */
#ifndef FRANCA_TRAIN_MASK_H
#define FRANCA_TRAIN_MASK_H

#include <stdint.h>

#include "rng.h"

enum mask_kind { MASK_CYCLIC = 0, MASK_BLOCK = 1 };

#define MASK_MIN_ASPECT 0.3

/* CyclicMask for m requested masked patches: a visible block of c = N - m cells
 * (one rectangle of random aspect, truncated to its first c cells in row-major
 * order), rolled cyclically by a random shift on both axes, then inverted.
 * Exactly min(max(m, 0), N) patches are masked. Returns that count. */
int cyclic_mask(struct rng *r, int gh, int gw, int m, uint8_t *mask);

/* DINOv2 MaskingGenerator: union of random rectangles (area U(4, min(left,
 * max_patches)), aspect in [0.3, 1/0.3], at most 10 attempts per rectangle)
 * until m patches are masked or no progress; may mask fewer than m. Returns the
 * number masked. max_patches <= 0 means N / 2. */
int block_mask(struct rng *r, int gh, int gw, int m, int max_patches, uint8_t *mask);

struct mask_params {
    enum mask_kind kind;
    double ratio_min, ratio_max;   /* 0.1, 0.65 (Franca) */
    double sample_prob;            /* fraction of images with a mask: 0.5 */
};

void mask_params_default(struct mask_params *p);

/* The collate rule: of n images, the first int(n * sample_prob) get
 * m_i = int(N * U(probs[i], probs[i+1])) with probs = linspace(ratio_min,
 * ratio_max, n_masked + 1), the others none; the masks are then shuffled over the
 * n images. masks: [n, gh*gw]. *upperbound (optional) = sum int(N * probs[i+1]).
 * Returns the total number of masked patches, or -1 on bad arguments. */
int collate_masks(struct rng *r, const struct mask_params *p, int n, int gh, int gw,
                  uint8_t *masks, int *upperbound);

#endif
