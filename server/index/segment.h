/* In-context segmentation on a patch-level collection, without HTTP: the
 * label transfer of Hummingbird (Balazevic et al., 2023), as the Franca paper
 * evaluates it. Items inserted with labels (store.h, schema v3) carry one
 * label per patch; a query patch takes the labels of its k nearest labelled
 * patches over all items (cosine: dot products of the stored L2-normalised
 * patches, patch_codec.h), each weighted by softmax(score / temperature), and
 * its label is the one with the largest summed weight.
 *
 * Patches labelled SEGMENT_IGNORE (VOC's "void") are never neighbours. Ties:
 * among equal scores the earlier item (mirror order) and then the earlier
 * patch wins a neighbour place; among equal votes the smaller label wins, so
 * a brute-force reference reproduces the result exactly. */
#ifndef FRANCA_INDEX_SEGMENT_H
#define FRANCA_INDEX_SEGMENT_H

#include <stddef.h>
#include <stdint.h>

#include "index/collections.h"

#define SEGMENT_IGNORE 255

/* q: n query patches [n, width], L2-normalised. k in 1..SEARCH_K_MAX,
 * temperature finite and > 0. Fills labels[n] and, when share is not NULL,
 * share[n]: the winning label's fraction of the vote weight (0..1].
 * 0, STORE_INVALID (CLS-level collection, k, temperature) or STORE_CONFLICT
 * (no labelled patch in the collection), with a message in err. */
int segment_run(struct coll *c, const float *q, size_t n, int k, float temperature,
                uint8_t *labels, float *share, char *err, size_t errlen);

#endif
