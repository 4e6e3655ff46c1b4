/* Exact re-ranking for compressed mirrors (mirror.h): a search over f16 or
 * int8 rows keeps a shortlist larger than k, whose float32 vectors are then
 * read from SQLite in one read transaction and scored exactly, so that the
 * answer's order and scores are those of float32 search over the shortlist.
 * Id queries of such collections take their vector from SQLite as well. */
#ifndef FRANCA_INDEX_RERANK_H
#define FRANCA_INDEX_RERANK_H

#include <stdint.h>

#include "index/query.h"

/* The shortlist kept for k hits: max(RERANK_FACTOR k, RERANK_MIN), at most
 * SEARCH_K_MAX (and at least k). */
#define RERANK_FACTOR 4
#define RERANK_MIN 64
int rerank_shortlist(int k);

/* The float32 vectors of q's id queries (q->ids[i] != NULL) from the store,
 * their first q->w components into qv [nq, w]. STORE_NOT_FOUND for an id not
 * stored. */
int rerank_id_vectors(struct coll *c, const struct index_query *q, float *qv, char *err,
                      size_t errlen);

/* Re-scores out's hits (out->n per query, rows[nq * out->n] their mirror
 * rows, for ties) against the queries qv [nq, w] from the stored vectors, sorts
 * each query's hits best first and keeps k of them. With with_vector the hits
 * take the stored vectors. A hit whose item is gone from the store (deleted
 * since the search) keeps its compressed score. 0, or STORE_ERR (out of
 * memory or the store read failed: out is then unchanged). */
int rerank_hits(struct coll *c, const struct index_query *q, const float *qv,
                const uint32_t *rows, struct query_result *out, char *err, size_t errlen);

#endif
