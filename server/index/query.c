/* Query execution; see query.h. */
#include "index/query.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "index/rerank.h"

void query_funnel_defaults(struct coll *c, int k, int w, int *funnel_width, int *candidates)
{
    struct index_mirror *m = coll_read_begin(c);
    const int pw = mirror_prefix_width(m);
    const size_t n = mirror_count(m);
    coll_read_end(c);
    /* Large collections: the prefix ranks more rows close to the true neighbours. */
    long long cand = 10LL * k;
    if ((long long)(n / 2000) > cand) cand = (long long)(n / 2000);
    if (cand > QUERY_FUNNEL_MAX_CANDIDATES) cand = QUERY_FUNNEL_MAX_CANDIDATES;
    *funnel_width = pw < w ? pw : w;
    *candidates = (int)cand;
}

void query_result_free(struct query_result *r)
{
    if (!r) return;
    for (size_t i = 0; r->hits && i < (size_t)r->nq * (size_t)r->n; i++) {
        json_decref(r->hits[i].metadata);
        free(r->hits[i].vector);
    }
    free(r->hits);
    memset(r, 0, sizeof *r);
}

/* Under the read lock: the rows of id queries into qv. */
static int id_vectors(struct coll *c, const struct index_mirror *m, const struct index_query *q,
                      float *qv, char *err, size_t errlen)
{
    if (mirror_form(m) != STORE_MIRROR_F32) return 0; /* read from SQLite (rerank.h) */
    for (int i = 0; q->ids && i < q->nq; i++) {
        if (!q->ids[i]) continue;
        const long row = mirror_find(m, q->ids[i]);
        if (row < 0) {
            char shown[64];
            printable_copy(q->ids[i], strlen(q->ids[i]), shown, sizeof shown);
            return set_err_code(err, errlen, STORE_NOT_FOUND, "no item '%s' in collection '%s'",
                                shown, coll_name(c));
        }
        mirror_row_copy(m, (size_t)row, q->w, qv + (size_t)i * q->w);
    }
    return 0;
}

/* Under the read lock: copies what the hits need once the lock is gone. */
static int copy_hits(const struct index_mirror *m, const struct index_query *q,
                     const struct search_hit *hits, struct query_result *out, char *err,
                     size_t errlen)
{
    const size_t width = (size_t)mirror_width(m);
    for (int i = 0; i < q->nq; i++)
        for (int j = 0; j < out->n; j++) {
            const struct search_hit *h = hits + (size_t)i * q->k + j;
            struct query_hit *o = out->hits + (size_t)i * out->n + j;
            snprintf(o->id, sizeof o->id, "%s", h->external_id);
            o->score = h->score;
            if (q->with_metadata) o->metadata = json_incref(mirror_payload(m, h->row));
            if (q->with_vector) {
                if (!(o->vector = malloc(width * sizeof *o->vector)))
                    return set_err_code(err, errlen, STORE_ERR, "out of memory");
                mirror_row_copy(m, h->row, (int)width, o->vector);
                o->dim = width;
            }
        }
    return 0;
}

/* The vectors as stored (unit length only if given so), in one store read.
 * The hits are already answered, so this only improves them: a hit deleted
 * meanwhile, or all of them when the read fails, keep the indexed copy. */
static void stored_vectors(struct coll *c, struct query_result *out)
{
    const size_t n = (size_t)out->nq * (size_t)out->n;
    if (!n) return;
    const char **ids = malloc(n * sizeof *ids);
    struct item_out *items = calloc(n, sizeof *items);
    char err[ERR_LEN];
    int rc = ids && items ? 0 : -1;
    for (size_t i = 0; !rc && i < n; i++) ids[i] = out->hits[i].id;
    if (!rc) rc = store_items_get_many(coll_store(c), coll_id(c), ids, n, items, err, sizeof err);
    for (size_t i = 0; !rc && i < n; i++) {
        if (!items[i].vector) continue;
        free(out->hits[i].vector);
        out->hits[i].vector = items[i].vector;
        out->hits[i].dim = items[i].dim;
        items[i].vector = NULL;
    }
    for (size_t i = 0; items && i < n; i++) store_item_free(&items[i]);
    free(items);
    free(ids);
}

int query_run(struct coll *c, const struct index_query *user_q, struct query_result *out,
              char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    const struct index_query *q = user_q;
    if (q->nq < 1 || q->k < 1 || q->k > SEARCH_K_MAX || q->w < 1 || q->w > coll_width(c))
        return set_err_code(err, errlen, STORE_INVALID, "query: bad nq, k or width");
    /* Compressed mirrors: a larger shortlist, re-ranked exactly once the lock is gone. */
    struct collection_info info;
    coll_info(c, &info);
    const bool compressed = info.mirror != STORE_MIRROR_F32;
    const bool rerank = compressed && !user_q->no_rerank;
    struct index_query wide = *user_q;
    if (rerank) {
        wide.k = rerank_shortlist(user_q->k);
        q = &wide;
    }
    const size_t nqk = (size_t)q->nq * (size_t)q->k;
    struct search_hit *hits = malloc(nqk * sizeof *hits);
    float *qv = malloc((size_t)q->nq * (size_t)q->w * sizeof *qv);
    uint8_t *mask = NULL;
    int rc = hits && qv ? 0 : set_err_code(err, errlen, STORE_ERR, "out of memory");
    if (!rc && q->vectors) memcpy(qv, q->vectors, (size_t)q->nq * (size_t)q->w * sizeof *qv);
    if (!rc && compressed) rc = rerank_id_vectors(c, q, qv, err, errlen);
    uint32_t *hit_rows = NULL; /* the hits' mirror rows, for the re-rank's ties */
    struct index_mirror *m = coll_read_begin(c);
    const size_t rows = mirror_count(m);
    if (!rc) rc = id_vectors(c, m, q, qv, err, errlen);
    if (!rc && q->filter && rows) {
        if (!(mask = malloc(rows))) rc = set_err_code(err, errlen, STORE_ERR, "out of memory");
        for (size_t r = 0; mask && r < rows; r++)
            mask[r] = filter_match(q->filter, mirror_payload(m, r));
    }
    int n_out = 0;
    if (!rc)
        rc = q->candidates ? search_funnel(m, qv, q->nq, q->w, q->k, q->funnel_width,
                                           q->candidates, mask, hits, &n_out, err, errlen)
                           : search_exact(m, qv, q->nq, q->w, q->k, mask, hits, &n_out, err,
                                          errlen);
    if (!rc) {
        out->nq = q->nq;
        out->n = n_out;
        out->hits = calloc((size_t)q->nq * (size_t)(n_out ? n_out : 1), sizeof *out->hits);
        rc = out->hits ? copy_hits(m, q, hits, out, err, errlen)
                       : set_err_code(err, errlen, STORE_ERR, "out of memory");
    }
    if (!rc && rerank) {
        if (!(hit_rows = malloc((size_t)q->nq * (size_t)(n_out ? n_out : 1) * sizeof *hit_rows)))
            rc = set_err_code(err, errlen, STORE_ERR, "out of memory");
        for (int i = 0; hit_rows && i < q->nq; i++)
            for (int j = 0; j < n_out; j++)
                hit_rows[(size_t)i * n_out + j] = hits[(size_t)i * q->k + j].row;
    }
    coll_read_end(c);
    if (!rc && rerank) rc = rerank_hits(c, user_q, qv, hit_rows, out, err, errlen);
    else if (!rc && q->with_vector) stored_vectors(c, out);
    if (rc) query_result_free(out);
    free(hits);
    free(qv);
    free(mask);
    free(hit_rows);
    return rc;
}
