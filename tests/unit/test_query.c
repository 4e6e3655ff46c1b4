/* The index query layer (index/query.h) without HTTP: exact search against a
 * brute force computed here, the funnel, filters, queries by stored id, the
 * batched stored-vector read, k past the collection's size, an empty
 * collection and the refusals. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "rm_rf.h"
#include "errors.h"
#include "index/collections.h"
#include "index/query.h"

#define W 32  /* collection width */
#define N 300 /* items in the big collections */

static char err[ERR_LEN];
static float vecs[N][W];

static float next_float(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* The score of search.h at width w, computed directly. */
static double brute_score(enum store_metric metric, const float *x, const float *q, int w)
{
    double dot = 0, xx = 0, qq = 0, d2 = 0;
    for (int i = 0; i < w; i++) {
        dot += (double)x[i] * q[i];
        xx += (double)x[i] * x[i];
        qq += (double)q[i] * q[i];
        d2 += ((double)x[i] - q[i]) * ((double)x[i] - q[i]);
    }
    if (metric == STORE_METRIC_COSINE) return dot / sqrt(xx * qq);
    if (metric == STORE_METRIC_DOT) return dot;
    return sqrt(d2);
}

/* The ids of the best k eligible items (every other one when even_only). */
static int brute_top(enum store_metric metric, const float *q, int w, int k, int even_only,
                     int *top, double *scores)
{
    int n = 0;
    for (int i = 0; i < N; i++) {
        if (even_only && i % 2) continue;
        const double s = brute_score(metric, vecs[i], q, w);
        int j = n < k ? n++ : k;
        while (j > 0 && (metric == STORE_METRIC_L2 ? s < scores[j - 1] : s > scores[j - 1])) {
            if (j < k) top[j] = top[j - 1], scores[j] = scores[j - 1];
            j--;
        }
        if (j < k) top[j] = i, scores[j] = s;
    }
    return n;
}

static struct coll *make(struct index *ix, const char *name, enum store_metric metric, int n)
{
    struct collection_info in = {.width = W, .metric = metric};
    snprintf(in.name, sizeof in.name, "%s", name);
    struct coll *c = NULL;
    CHECK(index_create(ix, &in, &c, err, sizeof err) == 0, "create %s: %s", name, err);
    if (!c || !n) return c;
    struct item_in items[N];
    json_t *meta[N];
    char ids[N][STORE_ID_MAX], text[N][64], out_ids[N][STORE_ID_MAX];
    for (int i = 0; i < n; i++) {
        snprintf(ids[i], sizeof ids[i], "item-%d", i);
        snprintf(text[i], sizeof text[i], "{\"i\": %d, \"even\": %s}", i, i % 2 ? "false" : "true");
        meta[i] = json_loads(text[i], 0, NULL);
        items[i] = (struct item_in){.external_id = ids[i], .metadata = text[i],
                                    .vector = vecs[i], .dim = W};
    }
    CHECK(coll_insert(c, items, meta, (size_t)n, out_ids, err, sizeof err) == 0, "insert: %s",
          err);
    return c;
}

static int id_number(const char *id) { return atoi(id + strlen("item-")); }

/* Exact search of nq random queries against the brute force. */
static void test_exact(struct coll *c, enum store_metric metric, int w, int even_only)
{
    enum { NQ = 4, K = 10 };
    unsigned seed = 77u + (unsigned)w;
    float qv[NQ * W];
    for (int i = 0; i < NQ * w; i++) qv[i] = next_float(&seed);
    json_t *spec = json_loads("{\"even\": true}", 0, NULL);
    struct filter *f = NULL;
    if (even_only) CHECK(filter_compile(spec, &f, err, sizeof err) == 0, "filter: %s", err);
    const struct index_query q = {.nq = NQ, .k = K, .w = w, .filter = f, .vectors = qv,
                                  .with_metadata = true};
    struct query_result r;
    CHECK(query_run(c, &q, &r, err, sizeof err) == 0, "exact: %s", err);
    CHECK(r.nq == NQ && r.n == K, "exact: %d x %d hits", r.nq, r.n);
    int mismatched = 0, bad_meta = 0;
    double worst = 0;
    for (int i = 0; i < NQ && r.n == K; i++) {
        int top[K];
        double scores[K];
        brute_top(metric, qv + i * w, w, K, even_only, top, scores);
        for (int j = 0; j < K; j++) {
            const struct query_hit *h = &r.hits[i * K + j];
            if (id_number(h->id) != top[j]) mismatched++;
            const double d = fabs(h->score - scores[j]);
            if (d > worst) worst = d;
            json_t *m = h->metadata;
            if (json_integer_value(json_object_get(m, "i")) != id_number(h->id) ||
                (even_only && !json_is_true(json_object_get(m, "even"))))
                bad_meta++;
        }
    }
    CHECK(mismatched == 0, "metric %d w %d even %d: %d hits differ from brute force", metric, w,
          even_only, mismatched);
    CHECK(worst < 1e-4, "metric %d w %d: scores off by %g", metric, w, worst);
    CHECK(bad_meta == 0, "metadata wrong on %d hits", bad_meta);
    query_result_free(&r);
    filter_free(f);
    json_decref(spec);
}

/* A funnel whose shortlist holds every row re-ranks them all: the exact answer. */
static void test_funnel(struct coll *c)
{
    unsigned seed = 5;
    float qv[2 * W];
    for (int i = 0; i < 2 * W; i++) qv[i] = next_float(&seed);
    struct index_query q = {.nq = 2, .k = 7, .w = W, .vectors = qv};
    struct query_result exact, funnel, narrow;
    CHECK(query_run(c, &q, &exact, err, sizeof err) == 0, "%s", err);
    q.funnel_width = 8;
    q.candidates = N;
    CHECK(query_run(c, &q, &funnel, err, sizeof err) == 0, "funnel: %s", err);
    int same = exact.n == funnel.n && exact.n == 7;
    for (int i = 0; same && i < 2 * 7; i++)
        same = !strcmp(exact.hits[i].id, funnel.hits[i].id) &&
               fabsf(exact.hits[i].score - funnel.hits[i].score) < 1e-5f;
    CHECK(same, "a funnel over every row equals exact search");
    q.candidates = 20;
    CHECK(query_run(c, &q, &narrow, err, sizeof err) == 0, "narrow funnel: %s", err);
    int sorted = narrow.n == 7;
    for (int j = 1; sorted && j < 7; j++) sorted = narrow.hits[j - 1].score >= narrow.hits[j].score;
    CHECK(sorted, "a narrow funnel still answers k hits, best first");
    int fw, cand;
    query_funnel_defaults(c, 10, 16, &fw, &cand);
    CHECK(fw >= 1 && fw <= 16 && cand == 100, "funnel defaults: width %d, shortlist %d", fw, cand);
    query_result_free(&exact);
    query_result_free(&funnel);
    query_result_free(&narrow);
}

/* Queries by stored id, in a batch with a vector query; the stored vectors. */
static void test_ids_and_vectors(struct coll *c)
{
    const char *ids[3] = {"item-7", NULL, "item-42"};
    float qv[3 * W] = {0};
    memcpy(qv + W, vecs[100], sizeof vecs[100]);
    const struct index_query q = {.nq = 3, .k = 3, .w = W, .ids = ids, .vectors = qv,
                                  .with_vector = true};
    struct query_result r;
    CHECK(query_run(c, &q, &r, err, sizeof err) == 0, "by id: %s", err);
    CHECK(r.n == 3 && !strcmp(r.hits[0].id, "item-7") && !strcmp(r.hits[3].id, "item-100") &&
              !strcmp(r.hits[6].id, "item-42"),
          "each query's best hit is its own item");
    CHECK(r.n == 3 && fabsf(r.hits[0].score - 1.0f) < 1e-5f, "cosine of an item with itself: %g",
          r.n ? r.hits[0].score : 0.0f);
    int wrong = 0;
    for (int i = 0; i < 3 * r.n; i++) {
        const struct query_hit *h = &r.hits[i];
        if (h->dim != W || !h->vector ||
            max_abs_diff(h->vector, vecs[id_number(h->id)], W) != 0.0f)
            wrong++;
    }
    CHECK(wrong == 0, "%d hits do not carry their vector as stored (not unit length)", wrong);
    query_result_free(&r);

    /* The batched read itself: found, repeated and absent ids. */
    const char *want[4] = {"item-3", "nope", "item-299", "item-3"};
    struct item_out out[4];
    CHECK(store_items_get_many(coll_store(c), coll_id(c), want, 4, out, err, sizeof err) == 0,
          "get many: %s", err);
    CHECK(out[0].vector && max_abs_diff(out[0].vector, vecs[3], W) == 0.0f && out[0].dim == W &&
              !strcmp(out[0].external_id, "item-3") && out[0].metadata &&
              strstr(out[0].metadata, "\"i\": 3"),
          "item-3 read back as inserted");
    CHECK(!out[1].vector && !out[1].external_id[0], "an absent id leaves its slot empty");
    CHECK(out[2].vector && max_abs_diff(out[2].vector, vecs[299], W) == 0.0f, "item-299");
    CHECK(out[3].vector && out[3].row_id == out[0].row_id, "a repeated id is read twice");
    for (int i = 0; i < 4; i++) store_item_free(&out[i]);
}

static void test_edges(struct index *ix, struct coll *big)
{
    float qv[W] = {1.0f};
    struct coll *small = make(ix, "small", STORE_METRIC_L2, 5);
    struct coll *empty = make(ix, "empty", STORE_METRIC_COSINE, 0);
    struct query_result r;
    const struct index_query q = {.nq = 1, .k = 10, .w = W, .vectors = qv};
    CHECK(small && query_run(small, &q, &r, err, sizeof err) == 0 && r.n == 5,
          "k past the collection's size answers every item: %s", err);
    for (int j = 1; j < r.n; j++)
        CHECK(r.hits[j - 1].score <= r.hits[j].score, "l2: smaller first");
    query_result_free(&r);
    CHECK(empty && query_run(empty, &q, &r, err, sizeof err) == 0 && r.n == 0 && r.nq == 1,
          "an empty collection answers no hits: %s", err);
    query_result_free(&r);

    const char *ids[1] = {"missing-item"};
    const struct index_query by_id = {.nq = 1, .k = 3, .w = W, .ids = ids, .vectors = qv};
    CHECK(query_run(big, &by_id, &r, err, sizeof err) == STORE_NOT_FOUND &&
              strstr(err, "missing-item") && r.hits == NULL,
          "an unknown id: STORE_NOT_FOUND naming it: %s", err);
    CHECK(empty && query_run(empty, &by_id, &r, err, sizeof err) == STORE_NOT_FOUND,
          "an unknown id in an empty collection");
    const struct index_query bad_k = {.nq = 1, .k = SEARCH_K_MAX + 1, .w = W, .vectors = qv};
    CHECK(query_run(big, &bad_k, &r, err, sizeof err) == STORE_INVALID, "k too large refused");
    const struct index_query bad_w = {.nq = 1, .k = 1, .w = W + 1, .vectors = qv};
    CHECK(query_run(big, &bad_w, &r, err, sizeof err) == STORE_INVALID, "width too large refused");
    float nan_q[W] = {NAN};
    const struct index_query bad_v = {.nq = 1, .k = 1, .w = W, .vectors = nan_q};
    CHECK(query_run(big, &bad_v, &r, err, sizeof err) == STORE_INVALID, "NaN query refused");
    coll_release(small);
    coll_release(empty);
}

int main(void)
{
    char tmpl[] = "/tmp/test_query.XXXXXX";
    char *dir = mkdtemp(tmpl);
    CHECK(dir != NULL, "mkdtemp");
    if (!dir) return check_summary();
    unsigned seed = 1;
    for (int i = 0; i < N; i++)
        for (int d = 0; d < W; d++) vecs[i][d] = next_float(&seed);
    struct index *ix = NULL;
    CHECK(index_open(&ix, dir, err, sizeof err) == 0, "open: %s", err);
    if (!ix) return check_summary();
    const enum store_metric metrics[3] = {STORE_METRIC_COSINE, STORE_METRIC_DOT, STORE_METRIC_L2};
    const char *names[3] = {"cos", "dot", "l2"};
    struct coll *cos = NULL;
    for (int m = 0; m < 3; m++) {
        struct coll *c = make(ix, names[m], metrics[m], N);
        if (!c) continue;
        test_exact(c, metrics[m], W, 0);
        test_exact(c, metrics[m], 12, 0);
        test_exact(c, metrics[m], W, 1);
        if (m == 0) cos = c;
        else coll_release(c);
    }
    if (cos) {
        test_funnel(cos);
        test_ids_and_vectors(cos);
        test_edges(ix, cos);
        coll_release(cos);
    }
    index_close(ix);
    rm_rf(dir);
    return check_summary();
}
