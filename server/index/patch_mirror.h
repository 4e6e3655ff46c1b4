/* The in-memory mirror of a patch-level collection: per item its store row id,
 * external id, patch grid and encoded patch matrix (patch_codec.h), the same
 * bytes as SQLite holds. Kept encoded (f16: half of f32, int8: about a quarter)
 * and decoded one item at a time while scoring (patch_query.c): the patch
 * matrices of a collection dominate its memory, and decoding one item costs
 * about what scoring it costs. Measured (one core, 10k x 256 patches at width
 * 64, one query patch, data in cache): f32 rows 148 ms, f16 decoded through a
 * table then scored 252 ms, int8 154 ms; an f32 mirror would take 655 MB where
 * f16 takes 328 MB and int8 174 MB, and for late interaction (a GEMM of 256
 * query patches per item) the decoding is a small part.
 *
 * Items are found by external id with a linear scan (an id query or a heat
 * map does one lookup; searches never look up). Removal is swap-with-last.
 *
 * Thread safety as mirror.h: writers (add, remove) take the rwlock
 * exclusively; readers bracket a whole read in patch_mirror_read_lock/unlock.
 * Errors use the store's codes; a failed call changes nothing. */
#ifndef FRANCA_INDEX_PATCH_MIRROR_H
#define FRANCA_INDEX_PATCH_MIRROR_H

#include <stddef.h>
#include <stdint.h>

#include "index/patch_codec.h"

struct patch_mirror;

struct patch_mirror *patch_mirror_create(int width, enum patch_type type, char *err,
                                         size_t errlen);
void patch_mirror_free(struct patch_mirror *m);

/* Appends count items, copying their ids, patch matrices (grid_h[i] x
 * grid_w[i] encoded vectors each) and labels (labels NULL, or labels[i] NULL
 * for an unlabelled item, else grid_h[i] * grid_w[i] bytes). STORE_CONFLICT
 * for an id already present. */
int patch_mirror_add(struct patch_mirror *m, size_t count, const int64_t *row_ids,
                     const char *const *external_ids, const int *grid_h, const int *grid_w,
                     const void *const *patches, const uint8_t *const *labels, char *err,
                     size_t errlen);
/* Removes the item with this id; 1 when one was removed, else 0. */
int patch_mirror_remove(struct patch_mirror *m, const char *external_id);

void patch_mirror_read_lock(struct patch_mirror *m);
void patch_mirror_read_unlock(struct patch_mirror *m);

/* Readers: the caller holds the read lock. */
int patch_mirror_width(const struct patch_mirror *m);
enum patch_type patch_mirror_type(const struct patch_mirror *m);
size_t patch_mirror_count(const struct patch_mirror *m);
/* Patches of all items together, and the bytes their matrices take. */
size_t patch_mirror_patches(const struct patch_mirror *m);
size_t patch_mirror_bytes(const struct patch_mirror *m);
long patch_mirror_find(const struct patch_mirror *m, const char *external_id);
const char *patch_mirror_id(const struct patch_mirror *m, size_t item);
void patch_mirror_grid(const struct patch_mirror *m, size_t item, int *grid_h, int *grid_w);
/* The item's encoded matrix, grid_h x grid_w vectors. */
const void *patch_mirror_data(const struct patch_mirror *m, size_t item);
/* The item's per-patch labels (grid_h x grid_w bytes), or NULL. */
const uint8_t *patch_mirror_labels(const struct patch_mirror *m, size_t item);

#endif
