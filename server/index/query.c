/* Query execution; see query.h. */
#include "index/query.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "index/rerank.h"
#include "index/hnsw.h"

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

int query_ann_shortlist(int k) { return k * 10 > 100 ? k * 10 : 100; }

struct ann_accept {
    const struct index_mirror *m;
    const uint8_t *mask;
};

static bool ann_accept(int64_t label, void *ctx)
{
    const struct ann_accept *a = ctx;
    const long row = mirror_find_row_id(a->m, label);
    return row >= 0 && a->mask[row];
}

struct ranked {
    float key;   /* larger is better */
    float score;
    uint32_t row;
};

static int cmp_ranked(const void *x, const void *y)
{
    const struct ranked *a = x, *b = y;
    if (a->key != b->key) return a->key > b->key ? -1 : 1;
    return a->row < b->row ? -1 : a->row > b->row;
}

/* Under the read lock: rows[n] scored exactly against query x (w floats,
 * squared norm qq) into rk, best first; scores as search.h says. */
static void rank_rows(const struct index_mirror *m, const float *x, int w, float qq,
                      const uint32_t *rows, size_t n, struct ranked *rk, float *row)
{
    const enum store_metric metric = mirror_metric(m);
    for (size_t j = 0; j < n; j++) {
        mirror_row_copy(m, rows[j], w, row);
        float dot = 0, rr = 0;
#pragma omp simd reduction(+ : dot, rr)
        for (int t = 0; t < w; t++) {
            dot += row[t] * x[t];
            rr += row[t] * row[t];
        }
        float score, key;
        if (metric == STORE_METRIC_COSINE) {
            score = rr > 0 && qq > 0 ? dot / sqrtf(rr * qq) : 0.0f;
            key = score;
        } else if (metric == STORE_METRIC_L2) {
            const float d2 = rr - 2 * dot + qq;
            score = sqrtf(d2 > 0 ? d2 : 0);
            key = -score;
        } else {
            score = key = dot;
        }
        rk[j] = (struct ranked){key, score, rows[j]};
    }
    qsort(rk, n, sizeof *rk, cmp_ranked);
}

static float sqnorm_of(const float *x, int w)
{
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (int t = 0; t < w; t++) s += x[t] * x[t];
    return s;
}

static void put_hits(const struct index_mirror *m, const struct ranked *rk, int n, int k,
                     struct search_hit *out)
{
    for (int j = 0; j < k && j < n; j++) {
        out[j].row = rk[j].row;
        out[j].row_id = mirror_row_id(m, rk[j].row);
        out[j].external_id = mirror_external_id(m, rk[j].row);
        out[j].score = rk[j].score;
    }
}

/* Under the read lock: each query's shortlist from the graph, re-ranked
 * exactly at width w from the mirror's rows. */
static int ann_search(struct hnsw *g, const struct coll_ann_desc *d, const struct index_mirror *m,
                      const struct index_query *q, const float *qv, const uint8_t *mask,
                      struct search_hit *hits, int *n_out, char *err, size_t errlen)
{
    const int k = q->k, w = q->w;
    int S = q->shortlist > 0 ? q->shortlist : query_ann_shortlist(k);
    if (S < k) S = k;
    int ef = q->ef > 0 ? q->ef : d->ef;
    if (ef < S) ef = S;
    if (ef > HNSW_EF_MAX) ef = HNSW_EF_MAX;
    if (S > ef) S = ef;
    int64_t *lab = malloc((size_t)S * sizeof *lab);
    uint32_t *rows = malloc((size_t)S * sizeof *rows);
    struct ranked *rk = malloc((size_t)S * sizeof *rk);
    float *row = malloc((size_t)w * sizeof *row);
    int rc = lab && rows && rk && row && !mirror_rowid_sync(m)
             ? 0 : set_err_code(err, errlen, STORE_ERR, "out of memory");
    struct ann_accept acc = {m, mask};
    int n_min = k;
    for (int i = 0; i < q->nq && !rc; i++) {
        const float *x = qv + (size_t)i * w;
        const int got = hnsw_search(g, x, S, ef, mask ? ann_accept : NULL, &acc, lab, NULL);
        if (got < 0) {
            rc = set_err_code(err, errlen, STORE_ERR, "out of memory");
            break;
        }
        size_t n = 0;
        for (int j = 0; j < got; j++) {
            const long r = mirror_find_row_id(m, lab[j]);
            if (r >= 0 && (!mask || mask[r])) rows[n++] = (uint32_t)r;
        }
        rank_rows(m, x, w, sqnorm_of(x, w), rows, n, rk, row);
        if ((int)n < n_min) n_min = (int)n;
        put_hits(m, rk, (int)n, k, hits + (size_t)i * k);
    }
    *n_out = n_min;
    free(lab);
    free(rows);
    free(rk);
    free(row);
    return rc;
}

/* Under the read lock: exact search over the few rows a selective filter
 * keeps (kept of them), scoring only those rows instead of scanning the
 * matrix: the answer of search_exact, at the cost of kept rows. */
static int gathered_exact(const struct index_mirror *m, const struct index_query *q,
                          const float *qv, const uint8_t *mask, size_t kept,
                          struct search_hit *hits, int *n_out, char *err, size_t errlen)
{
    const size_t rows_n = mirror_count(m);
    uint32_t *rows = malloc((kept ? kept : 1) * sizeof *rows);
    struct ranked *rk = malloc((kept ? kept : 1) * sizeof *rk);
    float *row = malloc((size_t)q->w * sizeof *row);
    if (!rows || !rk || !row) {
        free(rows);
        free(rk);
        free(row);
        return set_err_code(err, errlen, STORE_ERR, "out of memory");
    }
    size_t n = 0;
    for (size_t r = 0; r < rows_n && n < kept; r++)
        if (mask[r]) rows[n++] = (uint32_t)r;
    for (int i = 0; i < q->nq; i++) {
        const float *x = qv + (size_t)i * q->w;
        rank_rows(m, x, q->w, sqnorm_of(x, q->w), rows, n, rk, row);
        put_hits(m, rk, (int)n, q->k, hits + (size_t)i * q->k);
    }
    *n_out = (int)n < q->k ? (int)n : q->k;
    free(rows);
    free(rk);
    free(row);
    return 0;
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
        /* The graph's shortlist stays the size the user's k asks for: sized
         * from the wider k it would walk 640 nodes deep for k = 10. */
        if (wide.shortlist <= 0) wide.shortlist = query_ann_shortlist(user_q->k);
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
    struct coll_ann_desc ad;
    struct hnsw *g = !rc && !q->exact && !q->candidates && rows ? coll_ann_graph(c, &ad) : NULL;
    if (g && q->w < ad.width) g = NULL; /* a query narrower than the graph's prefix */
    bool gather = false;
    size_t kept = 0;
    if (g && mask) { /* a selective filter: exact over the few rows it keeps */
        for (size_t r = 0; r < rows; r++) kept += mask[r] != 0;
        if (kept < (size_t)QUERY_ANN_FILTER_MIN || kept < rows / 50) {
            g = NULL;
            gather = true;
        }
    }
    out->search = g ? "hnsw" : q->candidates ? "funnel" : "exact";
    if (!rc && g)
        rc = ann_search(g, &ad, m, q, qv, mask, hits, &n_out, err, errlen);
    else if (!rc && gather)
        rc = gathered_exact(m, q, qv, mask, kept, hits, &n_out, err, errlen);
    else if (!rc)
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
