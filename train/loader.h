/* Loader threads: produce the batches of consecutive steps ahead of the
 * training loop. The batch of step s is a pure function of (seed, s): sample b
 * uses rng_fork(seed_rng, s*B + b) to pick its image (uniformly, with
 * replacement) and draw its crops; the masks use the stream
 * LOADER_MASK_STREAM + s. Thread timing never changes a batch.
 *
 * Data parallel: a rank loads samples shard_begin .. shard_begin + shard_n - 1 of
 * each global batch of B. Sample b of the global batch still draws from
 * rng_fork(seed_rng, s*B + b) and the masks are drawn for all 2B global crops
 * before the shard's rows are kept, so the global batch, crops and masks are the
 * same whatever the number of ranks (and equal to the single-process ones). */
#ifndef FRANCA_TRAIN_LOADER_H
#define FRANCA_TRAIN_LOADER_H

#include <stdint.h>

#include "augment.h"
#include "dataset.h"
#include "mask.h"
#include "objective.h"
#include "rng.h"

#define LOADER_MASK_STREAM (UINT64_C(1) << 62)

struct loader_config {
    const struct dataset *ds;
    struct augment_config aug;
    struct mask_params mask;
    int patch_size;
    int B;            /* global batch */
    int shard_begin;  /* first sample of this rank's shard */
    int shard_n;      /* samples in the shard; 0: the whole batch */
    uint64_t seed;
    int threads;      /* worker threads (>= 1) */
    int prefetch;     /* batches held ahead (>= 1) */
};

struct loader_batch {
    int64_t step;
    struct crop_batch cb;     /* points into the buffers below */
    float *global, *local;
    uint8_t *masks;
    uint8_t *masks_all;       /* sharded: the masks of all 2B global crops */
    int n_masked, upperbound;
};

struct loader;

/* Starts the workers at first_step. */
int loader_start(const struct loader_config *cfg, int64_t first_step, struct loader **out,
                 char *err, size_t errlen);
/* The next step's batch (in order); valid until the next call or loader_stop.
 * Returns -1 with err when a worker failed (e.g. an undecodable image). */
int loader_next(struct loader *l, const struct loader_batch **batch, char *err, size_t errlen);
void loader_stop(struct loader *l);

/* Builds the batch of one step synchronously (what a worker does). */
int loader_make_batch(const struct loader_config *cfg, int64_t step, struct loader_batch *b,
                      char *err, size_t errlen);
int loader_batch_alloc(const struct loader_config *cfg, struct loader_batch *b);
void loader_batch_free(struct loader_batch *b);

#endif
