/* The query layer: one k-NN request (one query or a batch) against a
 * collection, without HTTP. Query vectors are given, or taken from stored
 * items by id; search is exact or through the Matryoshka funnel (search.h);
 * a filter (filter.h) limits the eligible items. Hits carry their metadata and
 * their vectors as stored, read for all hits in one store call after the
 * collection's read lock is released. */
#ifndef FRANCA_INDEX_QUERY_H
#define FRANCA_INDEX_QUERY_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "index/collections.h"
#include "index/filter.h"
#include "index/search.h"

#define QUERY_FUNNEL_MAX_CANDIDATES 100000

struct index_query {
    int nq;                   /* queries, >= 1 */
    int k;                    /* hits per query, 1..SEARCH_K_MAX */
    int w;                    /* search width, 1..the collection's width */
    int candidates;           /* 0: exact search; else the funnel's shortlist */
    int funnel_width;         /* the funnel's width (0: the mirror's prefix width) */
    const struct filter *filter; /* NULL: every item is eligible */
    bool with_metadata, with_vector;
    bool no_rerank;           /* compressed mirrors: answer their own scores instead of
                                 re-ranking a shortlist exactly (rerank.h) */
    const char *const *ids;   /* NULL, or [nq]: query i is the vector of stored item
                                 ids[i] when that is not NULL */
    const float *vectors;     /* [nq, w]: the other queries (rows of id queries unread) */
    /* ANN (collections.h): used when the collection has a ready graph, exact is
     * false, candidates is 0 and w >= the graph's width. */
    bool exact;               /* true: never the graph */
    int ef;                   /* 0: the graph's default */
    int shortlist;            /* 0: query_ann_shortlist(k) */
};

/* Filters keeping fewer rows than max(QUERY_ANN_FILTER_MIN, rows / 50) are
 * searched exactly (the answer then equals exact search); larger ones are
 * applied during the graph walk. */
#define QUERY_ANN_FILTER_MIN 2000
/* The default number of graph nodes re-ranked at full width for k hits. */
int query_ann_shortlist(int k);

struct query_hit {
    char id[STORE_ID_MAX];
    float score;              /* see search.h */
    json_t *metadata;         /* with_metadata: a new reference, NULL when none */
    float *vector;            /* with_vector: width floats, as stored in SQLite (the
                                 indexed copy, decoded for a compressed mirror, when
                                 the item was deleted meanwhile) */
    size_t dim;
};

struct query_result {
    int nq, n;                /* n hits per query: min(k, eligible items) */
    const char *search;       /* the path that ran: "exact", "funnel" or "hnsw" */
    struct query_hit *hits;   /* [nq * n]: query i's hits at i * n, best first */
};

/* The funnel's defaults for k at width w: its width (the mirror's prefix
 * width, at most w) and a shortlist of 10 k, more for large collections. */
void query_funnel_defaults(struct coll *c, int k, int w, int *funnel_width, int *candidates);

/* Runs q on c. 0 with *out filled (free it with query_result_free), or
 * STORE_NOT_FOUND (an unknown id), STORE_INVALID (a bad argument) or STORE_ERR
 * with a message in err. */
int query_run(struct coll *c, const struct index_query *q, struct query_result *out, char *err,
              size_t errlen);
void query_result_free(struct query_result *r);

#endif
