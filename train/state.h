/* The full training state of a run directory, as one safetensors file
 * DIR/state.safetensors written atomically (temporary file, fsync, rename,
 * fsync of the directory):
 *   tensors  "student/<param>", "teacher/<param>" (params with a teacher copy),
 *            "adam_m/<param>", "adam_v/<param>", all float32 [n];
 *   metadata "franca_train_state": {"format": 1, "step": completed steps,
 *            "optimizer_step": AdamW steps, "seed": ..., "config": {...}}.
 * Every random choice of a step is derived from (seed, step), so the step count
 * is the whole random state; resuming restores the tensors bit for bit. */
#ifndef FRANCA_TRAIN_STATE_H
#define FRANCA_TRAIN_STATE_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "optim.h"
#include "params.h"

#define STATE_FILE "state.safetensors"
#define STATE_META_KEY "franca_train_state"

int state_save(const char *dir, const struct train_config *cfg, int64_t step,
               const struct param_list *pl, struct optimizer *opt, char *err, size_t errlen);

/* Reads only the config and the step of DIR's state. */
int state_read_header(const char *dir, struct train_config *cfg, int64_t *step, char *err,
                      size_t errlen);

/* Restores params (student, teacher) and the optimizer from DIR's state; every
 * param of pl must be present with its size, and no tensor may be left over. */
int state_load(const char *dir, struct param_list *pl, struct optimizer *opt, char *err,
               size_t errlen);

/* Writes path atomically through a temporary file in the same directory:
 * write, fsync, rename, fsync of the directory. */
int write_file_atomic(const char *path, const void *data, size_t len, char *err, size_t errlen);
/* fsync of the directory holding path. */
int fsync_parent_dir(const char *path);

#endif
