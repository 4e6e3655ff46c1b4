/* Queries on a patch-level collection, without HTTP (the patch counterpart of
 * query.h). Every score is the dot product of L2-normalised patch vectors as
 * stored (patch_codec.h): cosine similarity up to the f16/int8 rounding.
 *
 *   PATCH: one query patch (row, col) -> the k best-matching patches of all
 *          items, {id, (row, col), score}.
 *   BOX:   the mean of the query patches in rows r0..r1-1, columns c0..c1-1
 *          (half-open, as a numpy slice), L2-normalised -> as PATCH.
 *   IMAGE: all query patches -> the k items with the best late-interaction
 *          score (ColBERT): the sum over query patches of the best cosine of
 *          that patch with any of the item's patches. Each hit's (row, col) is
 *          the item's patch in the single best (query patch, item patch) pair.
 *
 * The query's patches are a stored item's (id) or given (an embedded image).
 * Ties order by the item's position in the mirror (insertion order until a
 * delete moves the last item into the hole), then by patch index, so that
 * results are deterministic and a brute-force reference can reproduce them. */
#ifndef FRANCA_INDEX_PATCH_QUERY_H
#define FRANCA_INDEX_PATCH_QUERY_H

#include <stddef.h>

#include "index/collections.h"

enum patch_query_mode { PATCH_QUERY_PATCH, PATCH_QUERY_BOX, PATCH_QUERY_IMAGE };

struct patch_query {
    enum patch_query_mode mode;
    int k;                     /* 1..SEARCH_K_MAX */
    const char *id;            /* the query's patches are this stored item's, or NULL */
    const float *patches;      /* else [grid_h * grid_w, width], L2-normalised */
    int grid_h, grid_w;        /* of patches (ignored with id: the item's grid) */
    int box[4];                /* PATCH: row, col; BOX: r0, c0, r1, c1 */
};

struct patch_hit {
    char id[STORE_ID_MAX];
    float score;
    int row, col;
};

struct patch_result {
    int n;                     /* min(k, candidates) hits, best first */
    struct patch_hit *hits;
};

/* Runs q on c. 0 with *out filled (free with patch_result_free), or
 * STORE_NOT_FOUND (unknown id), STORE_INVALID (not a patch collection, k,
 * coordinates outside the query's grid, an empty box) or STORE_ERR, with a
 * message in err. */
int patch_query_run(struct coll *c, const struct patch_query *q, struct patch_result *out,
                    char *err, size_t errlen);
void patch_result_free(struct patch_result *r);

/* The similarity of q's query vector (mode PATCH or BOX) with each patch of
 * stored item item_id: *sims is malloc'ed [*grid_h, *grid_w] row-major. */
int patch_query_heatmap(struct coll *c, const struct patch_query *q, const char *item_id,
                        float **sims, int *grid_h, int *grid_w, char *err, size_t errlen);

#endif
