/* High-resolution fine-tuning (docs/training.md, docs/model.md §8.4): a fresh run
 * whose weights come from an earlier one, at a possibly larger crop size.
 *
 * The source is a franca-train run directory (student, teacher and both heads
 * continue; AdamW starts afresh, as the reference's fine-tuning does) or an
 * exported model (its backbone goes into student and teacher, the heads keep
 * their fresh initialisation, as the reference's script loads backbone.* only).
 * A pos_embed of another grid is resized once to the run's grid with
 * pos_embed_resize_aa: the reference's offline conversion, not the engine's
 * per-call interpolation. */
#ifndef FRANCA_TRAIN_FINETUNE_H
#define FRANCA_TRAIN_FINETUNE_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "params.h"

/* Whether src is a run directory (holds state.safetensors) rather than a model. */
bool finetune_src_is_run(const char *src);

/* A run directory's config, the base of `--init-from DIR` without --config. */
int finetune_src_config(const char *src, struct train_config *cfg, char *err, size_t errlen);

/* Overwrites pl's student and teacher weights from src. Tensors must match in
 * size, except "backbone.pos_embed", whose [1 + M0², D] grid is resized to
 * [1 + M², D] (M = pos_grid). */
int finetune_init(struct param_list *pl, int embed_dim, int pos_grid, const char *src,
                  char *err, size_t errlen);

/* The offline high-resolution conversion of a positional table (scripts/
 * modify_ckpt_highres.py): the M0 x M0 grid of table [1 + M0², D] resized to
 * M x M with torch's F.interpolate(size=(M, M), mode="bicubic", antialias=True,
 * align_corners=False) (engine/preprocess.h's weights, the same as PIL's), the
 * CLS entry copied. out: [1 + M², D]. Returns -1 when out of memory. */
int pos_embed_resize_aa(float *out, const float *table, int M0, int D, int M);

#endif
