/* Exact float32 re-ranking from SQLite; see rerank.h. */
#include "index/rerank.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"

int rerank_shortlist(int k)
{
    long long L = (long long)k * RERANK_FACTOR;
    if (L < RERANK_MIN) L = RERANK_MIN;
    if (L > SEARCH_K_MAX) L = SEARCH_K_MAX;
    return (int)(L < k ? k : L);
}

/* Reads n items by id; items[] to be freed by the caller (also on failure). */
static int read_items(struct coll *c, const char *const *ids, size_t n, struct item_out *items,
                      char *err, size_t errlen)
{
    return store_items_get_many(coll_store(c), coll_id(c), ids, n, items, err, errlen);
}

int rerank_id_vectors(struct coll *c, const struct index_query *q, float *qv, char *err,
                      size_t errlen)
{
    if (!q->ids) return 0;
    struct item_out *items = calloc((size_t)q->nq, sizeof *items);
    if (!items) return set_err_code(err, errlen, STORE_ERR, "out of memory");
    /* Only the id queries, packed. */
    const char **ids = malloc((size_t)q->nq * sizeof *ids);
    int rc = ids ? 0 : set_err_code(err, errlen, STORE_ERR, "out of memory");
    size_t n = 0;
    for (int i = 0; !rc && i < q->nq; i++)
        if (q->ids[i]) ids[n++] = q->ids[i];
    if (!rc && n) rc = read_items(c, ids, n, items, err, errlen);
    for (int i = 0, j = 0; !rc && i < q->nq; i++) {
        if (!q->ids[i]) continue;
        const struct item_out *it = items + j++;
        if (!it->vector) {
            char shown[64];
            printable_copy(q->ids[i], strlen(q->ids[i]), shown, sizeof shown);
            rc = set_err_code(err, errlen, STORE_NOT_FOUND, "no item '%s' in collection '%s'",
                              shown, coll_name(c));
        } else {
            memcpy(qv + (size_t)i * q->w, it->vector, (size_t)q->w * sizeof *qv);
        }
    }
    for (size_t i = 0; i < n; i++) store_item_free(&items[i]);
    free(items);
    free(ids);
    return rc;
}

/* The exact score of x against query y over w components (search.h's scores). */
static float exact_score(enum store_metric metric, const float *y, const float *x, int w)
{
    double dot = 0, xx = 0, yy = 0, d2 = 0;
    for (int j = 0; j < w; j++) {
        dot += (double)x[j] * y[j];
        xx += (double)x[j] * x[j];
        yy += (double)y[j] * y[j];
        const double d = (double)x[j] - y[j];
        d2 += d * d;
    }
    switch (metric) {
    case STORE_METRIC_COSINE: return xx > 0 && yy > 0 ? (float)(dot / sqrt(xx * yy)) : 0.0f;
    case STORE_METRIC_L2: return (float)sqrt(d2);
    default: return (float)dot;
    }
}

struct ranked {
    struct query_hit hit;
    uint32_t row;
    int l2;
};

static int better_first(const void *pa, const void *pb)
{
    const struct ranked *a = pa, *b = pb;
    const float sa = a->l2 ? -a->hit.score : a->hit.score;
    const float sb = b->l2 ? -b->hit.score : b->hit.score;
    if (sa != sb) return sa > sb ? -1 : 1;
    return a->row < b->row ? -1 : a->row > b->row;
}

int rerank_hits(struct coll *c, const struct index_query *q, const float *qv,
                const uint32_t *rows, struct query_result *out, char *err, size_t errlen)
{
    const size_t n = (size_t)out->nq * (size_t)out->n;
    if (!n) return 0;
    struct collection_info info;
    coll_info(c, &info);
    const char **ids = malloc(n * sizeof *ids);
    struct item_out *items = calloc(n, sizeof *items);
    struct ranked *rk = malloc((size_t)out->n * sizeof *rk);
    int rc = ids && items && rk ? 0 : set_err_code(err, errlen, STORE_ERR, "out of memory");
    for (size_t i = 0; !rc && i < n; i++) ids[i] = out->hits[i].id;
    if (!rc) rc = read_items(c, ids, n, items, err, errlen);
    if (rc) goto done;
    const int keep = out->n < q->k ? out->n : q->k;
    for (int qi = 0; qi < out->nq; qi++) {
        struct query_hit *h = out->hits + (size_t)qi * out->n;
        struct item_out *it = items + (size_t)qi * out->n;
        for (int j = 0; j < out->n; j++) {
            rk[j].hit = h[j];
            rk[j].row = rows[(size_t)qi * out->n + j];
            rk[j].l2 = info.metric == STORE_METRIC_L2;
            if (!it[j].vector || it[j].dim < (size_t)q->w) continue; /* gone: compressed score */
            rk[j].hit.score = exact_score(info.metric, qv + (size_t)qi * q->w, it[j].vector, q->w);
            if (q->with_vector) { /* the stored vector, not the decoded one */
                free(rk[j].hit.vector);
                rk[j].hit.vector = it[j].vector;
                rk[j].hit.dim = it[j].dim;
                it[j].vector = NULL;
            }
        }
        qsort(rk, (size_t)out->n, sizeof *rk, better_first);
        for (int j = keep; j < out->n; j++) { /* beyond k: let go */
            json_decref(rk[j].hit.metadata);
            free(rk[j].hit.vector);
        }
        /* Compact in place: query qi's hits start at qi * keep. */
        struct query_hit *dst = out->hits + (size_t)qi * keep;
        for (int j = 0; j < keep; j++) dst[j] = rk[j].hit;
    }
    out->n = keep;
done:
    for (size_t i = 0; items && i < n; i++) store_item_free(&items[i]);
    free(items);
    free(ids);
    free(rk);
    return rc;
}
