/* Compressed search mirrors (index/mirror_codec.h, mirror.h, rerank.h): the
 * f16 and int8 codecs and their error bounds, int8 ranges that grow (rows
 * re-encoded, never clamped), and search through the query layer over f16 and
 * int8 collections against a float64 brute force on clustered
 * Matryoshka-like data (variance falling along the dimensions): recall@10,
 * re-ranked scores equal to the exact ones, inserts beyond the first range,
 * deletes, a restart, the stored vectors of with_vector.
 *
 * FRANCA_MIRROR_BENCH_N / _W (default 10000 x 192) size the data; the test
 * prints recall, bytes per vector and latency per form (docs/benchmarks.md). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <omp.h>

#include "check.h"
#include "errors.h"
#include "index/collections.h"
#include "index/mirror_codec.h"
#include "index/query.h"
#include "index/rerank.h"
#include "rm_rf.h"

#define NQ 100
#define K 10
#define CLUSTERS 64
#define SPIKES 20

static char err[ERR_LEN];
static int N = 10000, W = 192;
static float *vecs;  /* [N + SPIKES, W]: the data, then the out-of-range inserts */
static float *qs;    /* [NQ, W] */
static uint8_t *gone; /* [N + SPIKES]: deleted */

static uint64_t rng = 88172645463325252ULL;
static double uniform(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return ((rng >> 11) + 0.5) / 9007199254740992.0;
}
static float gauss(void) { return (float)(sqrt(-2.0 * log(uniform())) * cos(6.283185307179586 * uniform())); }

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Clusters whose spread falls along the dimensions, as Matryoshka features'
 * does; a common offset in some dimensions (off-centre ranges for int8). */
static void make_data(void)
{
    float *centre = malloc((size_t)CLUSTERS * W * sizeof *centre);
    for (int c = 0; c < CLUSTERS; c++)
        for (int j = 0; j < W; j++) centre[c * W + j] = gauss() / sqrtf(1.0f + j / 8.0f);
    for (int i = 0; i < N; i++) {
        const int c = (int)(uniform() * CLUSTERS) % CLUSTERS;
        for (int j = 0; j < W; j++)
            vecs[(size_t)i * W + j] = centre[c * W + j] + 0.35f * gauss() / sqrtf(1.0f + j / 8.0f) +
                                      (j % 16 == 3 ? 0.5f : 0.0f);
    }
    for (int s = 0; s < SPIKES; s++) /* far outside every range in one dimension */
        for (int j = 0; j < W; j++)
            vecs[(size_t)(N + s) * W + j] = (j == (s * 7) % W ? 40.0f : 0.0f) + 0.01f * gauss();
    for (int q = 0; q < NQ; q++) {
        const int i = (int)(uniform() * N) % N;
        for (int j = 0; j < W; j++)
            qs[(size_t)q * W + j] = vecs[(size_t)i * W + j] + 0.2f * gauss() / sqrtf(1.0f + j / 8.0f);
    }
    free(centre);
}

static double score64(enum store_metric metric, const float *x, const float *q)
{
    double dot = 0, xx = 0, qq = 0, d2 = 0;
    for (int j = 0; j < W; j++) {
        dot += (double)x[j] * q[j], xx += (double)x[j] * x[j], qq += (double)q[j] * q[j];
        d2 += ((double)x[j] - q[j]) * ((double)x[j] - q[j]);
    }
    if (metric == STORE_METRIC_COSINE) return dot / sqrt(xx * qq);
    if (metric == STORE_METRIC_DOT) return dot;
    return sqrt(d2);
}

/* The true top K of query q among the rows present (index < n). */
static void truth(enum store_metric metric, const float *q, int n, int *top)
{
    double best[K];
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (gone[i]) continue;
        const double s = score64(metric, vecs + (size_t)i * W, q);
        int j = m < K ? m++ : K;
        while (j > 0 && (metric == STORE_METRIC_L2 ? s < best[j - 1] : s > best[j - 1])) {
            if (j < K) top[j] = top[j - 1], best[j] = best[j - 1];
            j--;
        }
        if (j < K) top[j] = i, best[j] = s;
    }
}

static int item_index(const char *id) { return atoi(id + 1); }

/* ---- codecs ----------------------------------------------------------------- */

static void test_codecs(void)
{
    enum { CW = 64, CN = 500 };
    float x[CW], y[CW];
    uint16_t h[CW];
    float worst = 0;
    for (int t = 0; t < CN; t++) {
        for (int j = 0; j < CW; j++) x[j] = gauss() * powf(10.0f, (float)(j % 7) - 3.0f);
        codec_f16_encode(x, CW, h);
        codec_f16_decode(h, CW, y);
        for (int j = 0; j < CW; j++) {
            const float e = fabsf(x[j] - y[j]) / (fabsf(x[j]) + 6.2e-5f);
            if (e > worst) worst = e;
        }
    }
    CHECK(worst <= 1.0f / 2048 + 1e-7f, "f16 relative error %g", worst);

    struct codec_int8 q;
    CHECK(codec_int8_init(&q, CW) == 0, "int8 init");
    float *rows = malloc((size_t)CN * CW * sizeof *rows);
    int8_t *codes = malloc((size_t)CN * CW);
    for (size_t i = 0; i < (size_t)CN * CW; i++) rows[i] = gauss() + (i % CW == 5 ? 3.0f : 0.0f);
    CHECK(codec_int8_widen(&q, rows, CN, 1.0f, NULL, NULL, NULL) == CW, "every range set");
    float err_max = 0, tol = 0;
    for (int i = 0; i < CN; i++) {
        codec_int8_encode(&q, rows + (size_t)i * CW, codes + (size_t)i * CW);
        codec_int8_decode(&q, codes + (size_t)i * CW, CW, y);
        for (int j = 0; j < CW; j++) {
            const float e = fabsf(y[j] - rows[(size_t)i * CW + j]) - q.step[j] * 0.5f * 1.0001f;
            if (e > err_max) err_max = e;
        }
    }
    CHECK(err_max <= 1e-6f, "int8 error beyond half a step by %g", err_max);
    /* A value 10x outside dimension 9's range: the range grows, old codes are
     * re-encoded, the error stays within half an old step plus half a new one. */
    float old_step[CW], old_off[CW], big[CW];
    uint8_t changed[CW];
    memcpy(big, rows, sizeof big);
    const float step9 = q.step[9];
    big[9] = 10.0f * q.hi[9];
    CHECK(codec_int8_widen(&q, big, 1, 1.25f, changed, old_off, old_step) == 1 && changed[9],
          "one dimension widened");
    CHECK(q.hi[9] >= big[9], "range covers the new value");
    codec_int8_recode(&q, codes, CN, CW, changed, old_off, old_step);
    for (int i = 0; i < CN; i++) {
        codec_int8_decode(&q, codes + (size_t)i * CW, CW, y);
        tol = 0.5001f * (step9 + q.step[9]);
        CHECK(fabsf(y[9] - rows[(size_t)i * CW + 9]) <= tol, "recoded row %d: %g vs %g", i, y[9],
              rows[(size_t)i * CW + 9]);
        if (fabsf(y[9] - rows[(size_t)i * CW + 9]) > tol) break;
    }
    codec_int8_encode(&q, big, codes);
    codec_int8_decode(&q, codes, CW, y);
    CHECK(fabsf(y[9] - big[9]) <= q.step[9] * 0.5001f, "the new value is not clamped: %g vs %g",
          y[9], big[9]);
    free(rows);
    free(codes);
    codec_int8_free(&q);
}

/* The mirror itself: growing int8 ranges across single adds, removal, fit. */
static void test_mirror(void)
{
    enum { MW = 16 };
    struct index_mirror *m = mirror_create_form(MW, STORE_METRIC_L2, 4, STORE_MIRROR_INT8, err,
                                                sizeof err);
    CHECK(m != NULL, "create: %s", err);
    if (!m) return;
    float v[40][MW], y[MW];
    char ids[40][16];
    for (int i = 0; i < 40; i++) {
        for (int j = 0; j < MW; j++) v[i][j] = gauss() * (1.0f + i * 0.5f); /* growing */
        snprintf(ids[i], sizeof ids[i], "r%d", i);
        const char *id = ids[i];
        const int64_t row = i;
        CHECK(mirror_add(m, 1, &row, &id, v[i], err, sizeof err) == 0, "add %d: %s", i, err);
    }
    const char *first = ids[0];
    size_t removed = 0;
    CHECK(mirror_remove(m, 1, &first, &removed) == 0 && removed == 1, "remove");
    CHECK(mirror_fit(m, 1, v[0], err, sizeof err) == STORE_INVALID, "fit after adds");
    mirror_read_lock(m);
    CHECK(mirror_matrix(m) == NULL && mirror_row_vector(m, 0) == NULL, "no float32 matrix");
    CHECK(mirror_vector_bytes(m) == MW, "int8: one byte per component");
    double worst = 0, scale = 0;
    for (int i = 1; i < 40; i++) {
        const long r = mirror_find(m, ids[i]);
        CHECK(r >= 0, "find %s", ids[i]);
        if (r < 0) continue;
        mirror_row_copy(m, (size_t)r, MW, y);
        for (int j = 0; j < MW; j++) {
            worst = fmax(worst, fabs(y[j] - v[i][j]));
            scale = fmax(scale, fabs(v[i][j]));
        }
    }
    mirror_read_unlock(m);
    /* Several widenings: a few steps of 2 scale / 254 at most. */
    CHECK(worst <= 4.0 * 2.0 * scale / 254.0, "decoded rows off by %g (scale %g)", worst, scale);
    mirror_free(m);
}

/* A compressed mirror large enough that its scan splits across threads
 * answers exactly what one thread does (same rows, same scores, same order). */
static void test_parallel_scan(void)
{
    enum { PN = 40000, PW = 32, PQ = 3, PK = 20 };
    struct index_mirror *m = mirror_create_form(PW, STORE_METRIC_COSINE, 0, STORE_MIRROR_INT8,
                                                err, sizeof err);
    float *v = malloc((size_t)PN * PW * sizeof *v);
    int64_t *rows = malloc(PN * sizeof *rows);
    const char **ids = malloc(PN * sizeof *ids);
    char (*text)[16] = malloc((size_t)PN * sizeof *text);
    for (size_t i = 0; i < (size_t)PN * PW; i++) v[i] = gauss();
    for (int i = 0; i < PN; i++) {
        rows[i] = i;
        snprintf(text[i], sizeof text[i], "p%d", i);
        ids[i] = text[i];
    }
    for (int i = 100; i < 110; i++) memcpy(v + (size_t)i * PW, v, PW * sizeof *v); /* ties */
    CHECK(m && mirror_add(m, PN, rows, ids, v, err, sizeof err) == 0, "add: %s", err);
    struct search_hit a[PQ * PK], b[PQ * PK];
    int na = 0, nb = 0;
    const int threads = omp_get_max_threads();
    if (m) {
        mirror_read_lock(m);
        CHECK(search_exact(m, v, PQ, PW, PK, NULL, a, &na, err, sizeof err) == 0, "%s", err);
        omp_set_num_threads(1);
        CHECK(search_exact(m, v, PQ, PW, PK, NULL, b, &nb, err, sizeof err) == 0, "%s", err);
        omp_set_num_threads(threads);
        mirror_read_unlock(m);
    }
    int same = na == PK && nb == PK;
    for (int i = 0; same && i < PQ * PK; i++) same = a[i].row == b[i].row && a[i].score == b[i].score;
    CHECK(same, "%d threads and 1 thread agree", threads);
    mirror_free(m);
    free(v);
    free(rows);
    free(ids);
    free(text);
}

/* ---- search through the query layer ----------------------------------------- */

static struct coll *make(struct index *ix, const char *name, enum store_metric metric,
                         enum store_mirror form)
{
    struct collection_info in = {.width = W, .metric = metric, .mirror = form};
    snprintf(in.name, sizeof in.name, "%s", name);
    struct coll *c = NULL;
    CHECK(index_create(ix, &in, &c, err, sizeof err) == 0, "create %s: %s", name, err);
    return c;
}

static void insert(struct coll *c, int from, int to)
{
    const int n = to - from;
    struct item_in *items = calloc((size_t)n, sizeof *items);
    json_t **meta = calloc((size_t)n, sizeof *meta);
    char (*ids)[STORE_ID_MAX] = malloc((size_t)n * sizeof *ids);
    char (*out)[STORE_ID_MAX] = malloc((size_t)n * sizeof *out);
    for (int i = 0; i < n; i++) {
        snprintf(ids[i], sizeof ids[i], "i%d", from + i);
        items[i] = (struct item_in){.external_id = ids[i], .vector = vecs + (size_t)(from + i) * W,
                                    .dim = (size_t)W};
    }
    CHECK(coll_insert(c, items, meta, (size_t)n, out, err, sizeof err) == 0, "insert: %s", err);
    free(items);
    free(meta);
    free(ids);
    free(out);
}

struct figures {
    double recall, recall_raw, ms, ms_raw;
};

/* recall@K of NQ single queries (re-ranked, and with the compressed scores),
 * every re-ranked score checked against float64; rows < n are present. */
static struct figures measure(struct coll *c, enum store_metric metric, int n, double min_recall,
                              const char *what)
{
    struct figures f = {0};
    int hit = 0, hit_raw = 0, bad_scores = 0;
    double worst = 0, t = 0, t_raw = 0;
    for (int qi = 0; qi < NQ; qi++) {
        int top[K];
        truth(metric, qs + (size_t)qi * W, n, top);
        for (int raw = 0; raw < 2; raw++) {
            struct index_query q = {.nq = 1, .k = K, .w = W, .vectors = qs + (size_t)qi * W,
                                    .no_rerank = raw};
            struct query_result r;
            const double t0 = now();
            const int rc = query_run(c, &q, &r, err, sizeof err);
            if (!raw) t += now() - t0;
            else t_raw += now() - t0;
            CHECK(rc == 0 && r.n == K, "%s query %d: %s", what, qi, err);
            if (rc) continue;
            for (int i = 0; i < r.n; i++) {
                const int idx = item_index(r.hits[i].id);
                for (int j = 0; j < K; j++) *(raw ? &hit_raw : &hit) += top[j] == idx;
                if (raw) continue;
                const double s = score64(metric, vecs + (size_t)idx * W, qs + (size_t)qi * W);
                const double d = fabs(s - r.hits[i].score) / fmax(1.0, fabs(s));
                worst = fmax(worst, d);
                bad_scores += d > 1e-5;
                if (i && (metric == STORE_METRIC_L2 ? r.hits[i].score < r.hits[i - 1].score
                                                    : r.hits[i].score > r.hits[i - 1].score))
                    bad_scores++;
            }
            query_result_free(&r);
        }
    }
    f.recall = (double)hit / (NQ * K);
    f.recall_raw = (double)hit_raw / (NQ * K);
    f.ms = t * 1000 / NQ;
    f.ms_raw = t_raw * 1000 / NQ;
    CHECK(f.recall >= min_recall, "%s: recall@10 %.4f < %.2f", what, f.recall, min_recall);
    CHECK(bad_scores == 0, "%s: %d re-ranked scores off or out of order (worst %g)", what,
          bad_scores, worst);
    printf("%-28s recall@10 %.4f (compressed scores %.4f), %.2f ms/query (%.2f without "
           "the re-rank)\n", what, f.recall, f.recall_raw, f.ms, f.ms_raw);
    return f;
}

/* The funnel over a compressed mirror (its f16 prefix, then the decoded rows,
 * then the float32 re-rank): with every row as a candidate it is exact search;
 * with a short list its scores are still the exact ones. */
static void test_funnel(struct coll *c, enum store_metric metric, int n, double min_recall)
{
    int hit = 0, bad = 0;
    for (int qi = 0; qi < 20; qi++) {
        int top[K];
        truth(metric, qs + (size_t)qi * W, n, top);
        for (int all = 0; all < 2; all++) {
            struct index_query q = {.nq = 1, .k = K, .w = W, .vectors = qs + (size_t)qi * W,
                                    .candidates = all ? n : 200};
            struct query_result r;
            CHECK(query_run(c, &q, &r, err, sizeof err) == 0 && r.n == K, "funnel: %s", err);
            for (int i = 0; i < r.n; i++) {
                const int idx = item_index(r.hits[i].id);
                if (all)
                    for (int j = 0; j < K; j++) hit += top[j] == idx;
                const double s = score64(metric, vecs + (size_t)idx * W, qs + (size_t)qi * W);
                bad += fabs(s - r.hits[i].score) > 1e-5 * fmax(1.0, fabs(s));
            }
            query_result_free(&r);
        }
    }
    CHECK(hit >= min_recall * 20 * K, "funnel over every row: recall@10 %.3f", hit / (20.0 * K));
    CHECK(bad == 0, "funnel: %d scores not exact", bad);
}

/* A batch of queries answers what each alone does (the re-rank compacts each
 * query's shortlist to k in place), metadata kept for the hits that stay. */
static void test_batch(struct coll *c)
{
    enum { BQ = 5, BK = 7 };
    struct index_query bq = {.nq = BQ, .k = BK, .w = W, .vectors = qs, .with_metadata = true};
    struct query_result b;
    CHECK(query_run(c, &bq, &b, err, sizeof err) == 0 && b.nq == BQ && b.n == BK, "batch: %s",
          err);
    for (int i = 0; b.n == BK && i < BQ; i++) {
        struct index_query one = {.nq = 1, .k = BK, .w = W, .vectors = qs + (size_t)i * W};
        struct query_result r;
        CHECK(query_run(c, &one, &r, err, sizeof err) == 0 && r.n == BK, "single: %s", err);
        int same = r.n == BK;
        for (int j = 0; same && j < BK; j++)
            same = !strcmp(r.hits[j].id, b.hits[(size_t)i * BK + j].id) &&
                   r.hits[j].score == b.hits[(size_t)i * BK + j].score;
        CHECK(same, "batch query %d equals the single query: %s %.9g vs %s %.9g", i,
              r.hits[0].id, r.hits[0].score, b.hits[(size_t)i * BK].id, b.hits[(size_t)i * BK].score);
        query_result_free(&r);
    }
    query_result_free(&b);
}

/* with_vector answers the stored float32 vector, not the decoded one; an id
 * query takes its vector from SQLite and finds itself with the exact score. */
static void test_vectors(struct coll *c, enum store_metric metric)
{
    const char *ids[1] = {"i7"};
    struct index_query q = {.nq = 1, .k = 3, .w = W, .ids = ids, .with_vector = true};
    struct query_result r;
    CHECK(query_run(c, &q, &r, err, sizeof err) == 0 && r.n == 3, "id query: %s", err);
    if (r.n < 1) return;
    CHECK(!strcmp(r.hits[0].id, "i7"), "finds itself first: %s", r.hits[0].id);
    const double self = metric == STORE_METRIC_L2 ? 0.0 : score64(metric, vecs + 7 * (size_t)W,
                                                                  vecs + 7 * (size_t)W);
    CHECK(fabs(r.hits[0].score - self) <= 1e-5 * fmax(1, fabs(self)), "self score %g vs %g",
          r.hits[0].score, self);
    for (int i = 0; i < r.n; i++) {
        const int idx = item_index(r.hits[i].id);
        CHECK(r.hits[i].dim == (size_t)W &&
                  !memcmp(r.hits[i].vector, vecs + (size_t)idx * W, (size_t)W * sizeof(float)),
              "hit %s: the stored vector", r.hits[i].id);
    }
    query_result_free(&r);
}

/* Spikes far outside every int8 range: inserted, then found as themselves. */
static void test_spikes(struct coll *c, enum store_metric metric)
{
    insert(c, N, N + SPIKES);
    for (int s = 0; s < SPIKES; s += 5) {
        struct index_query q = {.nq = 1, .k = 1, .w = W, .vectors = vecs + (size_t)(N + s) * W};
        struct query_result r;
        CHECK(query_run(c, &q, &r, err, sizeof err) == 0 && r.n == 1, "spike: %s", err);
        if (r.n == 1)
            CHECK(item_index(r.hits[0].id) == N + s, "spike %d found %s", s, r.hits[0].id);
        query_result_free(&r);
    }
    (void)metric;
}

static void delete_some(struct coll *c)
{
    for (int i = 0; i < N; i += 9) {
        char id[32];
        snprintf(id, sizeof id, "i%d", i);
        CHECK(coll_delete(c, id, err, sizeof err) == 0, "delete %s: %s", id, err);
        gone[i] = 1;
    }
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (getenv("FRANCA_MIRROR_BENCH_N")) N = atoi(getenv("FRANCA_MIRROR_BENCH_N"));
    if (getenv("FRANCA_MIRROR_BENCH_W")) W = atoi(getenv("FRANCA_MIRROR_BENCH_W"));
    vecs = malloc((size_t)(N + SPIKES) * W * sizeof *vecs);
    qs = malloc((size_t)NQ * W * sizeof *qs);
    gone = calloc((size_t)(N + SPIKES), 1);
    make_data();
    test_codecs();
    test_mirror();
    test_parallel_scan();

    char tmpl[] = "/tmp/test_mirror_codec.XXXXXX";
    char *dir = mkdtemp(tmpl);
    CHECK(dir != NULL, "mkdtemp");
    if (!dir) return check_summary();
    struct index *ix = NULL;
    CHECK(index_open(&ix, dir, err, sizeof err) == 0, "open: %s", err);
    if (!ix) return check_summary();
    const struct {
        const char *name;
        enum store_metric metric;
        enum store_mirror form;
        double min_recall;
    } cases[] = {
        {"f32-cos", STORE_METRIC_COSINE, STORE_MIRROR_F32, 0.999},
        {"f16-cos", STORE_METRIC_COSINE, STORE_MIRROR_F16, 0.99},
        {"int8-cos", STORE_METRIC_COSINE, STORE_MIRROR_INT8, 0.95},
        {"f16-l2", STORE_METRIC_L2, STORE_MIRROR_F16, 0.99},
        {"int8-l2", STORE_METRIC_L2, STORE_MIRROR_INT8, 0.95},
        {"int8-dot", STORE_METRIC_DOT, STORE_MIRROR_INT8, 0.95},
    };
    const int ncases = (int)(sizeof cases / sizeof cases[0]);
    size_t bytes[8] = {0};
    for (int i = 0; i < ncases; i++) {
        struct coll *c = make(ix, cases[i].name, cases[i].metric, cases[i].form);
        if (!c) continue;
        memset(gone, 0, (size_t)(N + SPIKES));
        const double t0 = now();
        insert(c, 0, N);
        const double t_ins = now() - t0;
        struct index_mirror *m = coll_read_begin(c);
        const size_t vb = mirror_vector_bytes(m);
        bytes[i] = mirror_bytes(m);
        coll_read_end(c);
        CHECK(vb == (size_t)W * (cases[i].form == STORE_MIRROR_F32   ? 4
                                 : cases[i].form == STORE_MIRROR_F16 ? 2
                                                                     : 1),
              "%s: %zu bytes per vector", cases[i].name, vb);
        printf("%-28s %zu B/vector in the matrix, %.0f B/vector in all; insert %.2f s\n",
               cases[i].name, vb, (double)bytes[i] / N, t_ins);
        char what[64];
        snprintf(what, sizeof what, "%s", cases[i].name);
        measure(c, cases[i].metric, N, cases[i].min_recall, what);
        test_vectors(c, cases[i].metric);
        test_funnel(c, cases[i].metric, N, cases[i].min_recall);
        /* (f32 batches score by sgemm, single queries by other kernels: equal to rounding) */
        if (cases[i].form != STORE_MIRROR_F32) test_batch(c);
        if (cases[i].form != STORE_MIRROR_F32) {
            test_spikes(c, cases[i].metric);
            snprintf(what, sizeof what, "%s +spikes", cases[i].name);
            measure(c, cases[i].metric, N + SPIKES, cases[i].min_recall, what);
            delete_some(c);
            snprintf(what, sizeof what, "%s +spikes -deletes", cases[i].name);
            measure(c, cases[i].metric, N + SPIKES, cases[i].min_recall, what);
        }
        coll_release(c);
    }
    /* The matrix is a quarter; the prefix (f16), norms and ids come on top. */
    CHECK(bytes[2] * 5 < bytes[0] * 2, "int8 mirror %zu B vs f32 %zu B", bytes[2], bytes[0]);

    /* A restart keeps each form and rebuilds (int8: ranges fitted from SQLite). */
    index_close(ix);
    ix = NULL;
    CHECK(index_open(&ix, dir, err, sizeof err) == 0, "reopen: %s", err);
    for (int i = 2; ix && i < 3; i++) {
        struct coll *c = index_acquire(ix, cases[i].name);
        CHECK(c != NULL, "%s after restart", cases[i].name);
        if (!c) continue;
        struct collection_info info;
        coll_info(c, &info);
        CHECK(info.mirror == cases[i].form, "%s: form %d after restart", cases[i].name,
              (int)info.mirror);
        struct index_mirror *m = coll_read_begin(c);
        CHECK(mirror_form(m) == cases[i].form, "mirror form after restart");
        coll_read_end(c);
        char what[64];
        snprintf(what, sizeof what, "%s restarted", cases[i].name);
        measure(c, cases[i].metric, N + SPIKES, cases[i].min_recall, what);
        coll_release(c);
    }
    index_close(ix);
    rm_rf(dir);
    free(vecs);
    free(qs);
    free(gone);
    return check_summary();
}
