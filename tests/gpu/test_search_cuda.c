/* The cuBLAS search backend against the CPU one (server/index/search_cuda.c).
 *
 * With a GPU: exact and funnel search on random data for cosine, dot and l2,
 * at full width, at prefixes (the kept prefix width and others), 1..600
 * queries (several pipelined blocks), k from 1 to 1000, with and without row
 * masks (half the rows, only the last rows, a few rows, none): same number of
 * hits, scores equal up to float rounding, rows equal except between near-equal
 * scores; exact ties (integer data) in the same order; the device copy follows
 * removals, additions and clear; concurrent searches while a writer changes the
 * mirror; search_exact through search_use_backend.
 *
 * Without a GPU: the backend fails with STORE_ERR and a message (no crash),
 * search_exact with it selected still answers (the CPU fallback), then a line
 * "SKIP: ..." and exit 0. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/check.h"
#include "errors.h"
#include "index/mirror.h"
#include "index/search.h"
#include "vit.h"

#define N 9000
#define W 192
#define KMAX 1000
#define QMAX 600

static uint64_t rng_state = 0x243f6a8885a308d3ULL;

static uint64_t rng_next(void) { return splitmix64(&rng_state); }

static float gaussian(void)
{
    double u1 = ((double)(rng_next() >> 11) + 1.0) / 9007199254740993.0;
    double u2 = (double)(rng_next() >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static char ids[2 * N][16];
static const char *id_ptrs[2 * N];
static int64_t row_ids[2 * N];

static struct search_hit *hits_a, *hits_b;

static const char *metric_name(enum store_metric m)
{
    return m == STORE_METRIC_COSINE ? "cosine" : m == STORE_METRIC_L2 ? "l2" : "dot";
}

/* Fills vecs [n, W]: gaussian, with a per-row scale (so l2 and dot see varied
 * norms), a few zero rows and a few duplicated rows (ties). */
static void random_rows(float *vecs, int n)
{
    for (int i = 0; i < n; i++) {
        const float scale = 0.5f + (float)(rng_next() % 1000) / 1000.0f;
        for (int j = 0; j < W; j++) vecs[(size_t)i * W + j] = gaussian() * scale;
    }
    for (int i = 0; i < n; i += 997) memset(vecs + (size_t)i * W, 0, W * sizeof(float));
    for (int i = 50; i + 1 < n; i += 1501)
        memcpy(vecs + (size_t)(i + 1) * W, vecs + (size_t)i * W, W * sizeof(float));
}

static int better_or_equal(enum store_metric metric, float a, float b)
{
    return metric == STORE_METRIC_L2 ? a <= b : a >= b;
}

/* a (cuda) against b (cpu): q queries of k slots each. exact_rows: rows must
 * be identical (integer data). funnel: rows outside near-ties are counted in
 * *loose instead of failing (a different shortlist boundary). */
static void compare(const char *what, const struct index_mirror *m, const struct search_hit *a,
                    int na, const struct search_hit *b, int nb, int q, int k,
                    const uint8_t *mask, int exact_rows, int funnel, int *loose)
{
    const enum store_metric metric = mirror_metric(m);
    CHECK(na == nb, "%s: %d hits on cuda, %d on cpu", what, na, nb);
    if (na != nb) return;
    int bad = 0;
    for (int qi = 0; qi < q && bad < 5; qi++) {
        for (int i = 0; i < na; i++) {
            const struct search_hit *x = a + (size_t)qi * k + i, *y = b + (size_t)qi * k + i;
            const float tol = 1e-4f * (1.0f + fabsf(y->score));
            const int row_ok = x->row < mirror_count(m) && (!mask || mask[x->row]) &&
                               x->row_id == mirror_row_id(m, x->row) &&
                               x->external_id == mirror_external_id(m, x->row);
            if (!row_ok) {
                CHECK(row_ok, "%s: query %d hit %d: row %u is not a valid eligible row", what,
                      qi, i, x->row);
                bad++;
                continue;
            }
            if (i > 0 && !better_or_equal(metric, (x - 1)->score, x->score)) {
                CHECK(0, "%s: query %d: hits %d and %d out of order (%g, %g)", what, qi, i - 1, i,
                      (x - 1)->score, x->score);
                bad++;
            }
            if (exact_rows) {
                if (x->row != y->row || x->score != y->score) {
                    CHECK(0, "%s: query %d hit %d: cuda row %u score %.9g, cpu row %u score %.9g",
                          what, qi, i, x->row, x->score, y->row, y->score);
                    bad++;
                }
                continue;
            }
            if (fabsf(x->score - y->score) > tol) {
                if (funnel) {
                    (*loose)++;
                    continue;
                }
                CHECK(0, "%s: query %d hit %d: cuda score %.9g (row %u), cpu %.9g (row %u)", what,
                      qi, i, x->score, x->row, y->score, y->row);
                bad++;
            }
        }
        /* The same rows as a set, but for near-ties at the boundary. */
        for (int i = 0; i < na && !exact_rows; i++) {
            const struct search_hit *x = a + (size_t)qi * k + i;
            int found = 0;
            for (int j = 0; j < nb && !found; j++) found = b[(size_t)qi * k + j].row == x->row;
            const float last = b[(size_t)qi * k + nb - 1].score;
            if (!found && fabsf(x->score - last) > 1e-4f * (1.0f + fabsf(last))) {
                if (funnel) {
                    (*loose)++;
                    continue;
                }
                CHECK(0, "%s: query %d: cuda row %u (score %.9g) is not among the cpu's hits", what,
                      qi, x->row, x->score);
                bad++;
            }
        }
    }
    if (!bad) check_passed++;
}

static int run_exact(const struct search_backend *be, const struct index_mirror *m,
                     const float *Q, int q, int w, int k, const uint8_t *mask,
                     struct search_hit *out, int *n_out)
{
    char err[256] = "";
    const int rc = be->exact(m, Q, q, w, k, mask, out, n_out, err, sizeof err);
    CHECK(rc == 0, "%s exact (q %d, w %d, k %d): rc %d: %s", be->name, q, w, k, rc, err);
    return rc;
}

static int run_funnel(const struct search_backend *be, const struct index_mirror *m,
                      const float *Q, int q, int w, int k, int fw, int sl, const uint8_t *mask,
                      struct search_hit *out, int *n_out)
{
    char err[256] = "";
    const int rc = be->funnel(m, Q, q, w, k, fw, sl, mask, out, n_out, err, sizeof err);
    CHECK(rc == 0, "%s funnel (q %d, w %d, fw %d, k %d): rc %d: %s", be->name, q, w, fw, k, rc,
          err);
    return rc;
}

static void masks(uint8_t *mk[5], size_t n)
{
    for (int v = 0; v < 5; v++) mk[v] = calloc(n, 1);
    for (size_t i = 0; i < n; i++) {
        mk[1][i] = rng_next() & 1;
        mk[2][i] = i + 100 >= n;
        mk[3][i] = i == 7 || i == n / 2 || i == n - 1;
        /* mk[4]: nothing eligible */
    }
    free(mk[0]);
    mk[0] = NULL;
}

/* Exact and funnel on one mirror in all configurations. */
static void sweep(struct index_mirror *m, const float *queries, const char *tag)
{
    const int width = mirror_width(m), pw = mirror_prefix_width(m);
    const size_t n = mirror_count(m);
    uint8_t *mk[5];
    masks(mk, n);
    const int widths[] = {width, 100, pw, 1};
    const struct { int q, k; } qk[] = {{1, 1}, {1, 10}, {5, 10}, {3, KMAX}, {QMAX, 10}};
    int loose = 0, funnel_total = 0;
    char what[160];
    mirror_read_lock(m);
    for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; wi++)
        for (size_t c = 0; c < sizeof qk / sizeof qk[0]; c++)
            for (int v = 0; v < 5; v++) {
                const int w = widths[wi], q = qk[c].q, k = qk[c].k;
                if (q == QMAX && v != 0 && v != 2) continue;
                int na = -1, nb = -2;
                snprintf(what, sizeof what, "%s %s exact w %d q %d k %d mask %d", tag,
                         metric_name(mirror_metric(m)), w, q, k, v);
                if (run_exact(&search_backend_cuda, m, queries, q, w, k, mk[v], hits_a, &na) ||
                    run_exact(&search_backend_cpu, m, queries, q, w, k, mk[v], hits_b, &nb))
                    continue;
                compare(what, m, hits_a, na, hits_b, nb, q, k, mk[v], 0, 0, NULL);
            }
    const int fws[] = {0, 24, 8};
    const int sls[] = {10, 200};
    for (size_t fi = 0; fi < sizeof fws / sizeof fws[0]; fi++)
        for (size_t si = 0; si < 2; si++)
            for (int v = 0; v < 5; v++)
                for (int wi = 0; wi < 2; wi++) {
                    const int w = wi ? 100 : width, q = v == 0 ? QMAX : 7, k = 10;
                    const int fw = fws[fi] == 0 ? pw : fws[fi];
                    int na = -1, nb = -2;
                    snprintf(what, sizeof what, "%s %s funnel w %d fw %d sl %d q %d mask %d", tag,
                             metric_name(mirror_metric(m)), w, fw, sls[si], q, v);
                    if (run_funnel(&search_backend_cuda, m, queries, q, w, k, fw, sls[si], mk[v],
                                   hits_a, &na) ||
                        run_funnel(&search_backend_cpu, m, queries, q, w, k, fw, sls[si], mk[v],
                                   hits_b, &nb))
                        continue;
                    compare(what, m, hits_a, na, hits_b, nb, q, k, mk[v], 0, 1, &loose);
                    funnel_total += q * na;
                }
    /* The funnel's shortlist may cut between near-equal prefix scores differently. */
    CHECK(loose <= funnel_total / 200, "%s: %d of %d funnel hits differ beyond near-ties", tag,
          loose, funnel_total);
    mirror_read_unlock(m);
    for (int v = 0; v < 5; v++) free(mk[v]);
}

/* Integer data: every dot product is exact in float, so ties must come out in
 * the same order (lower row first) and scores bit-identical. */
static void ties(enum store_metric metric)
{
    enum { TN = 3000, TW = 16, TQ = 4, TK = 50 };
    char err[256];
    struct index_mirror *m = mirror_create(TW, metric, 4, err, sizeof err);
    CHECK(m != NULL, "mirror_create: %s", err);
    if (!m) return;
    float *v = malloc(sizeof(float) * TN * TW), q[TQ * TW];
    for (int i = 0; i < TN * TW; i++) v[i] = (float)((int)(rng_next() % 3) - 1);
    for (int i = 0; i < TQ * TW; i++) q[i] = (float)((int)(rng_next() % 3) - 1);
    CHECK(mirror_add(m, TN, row_ids, id_ptrs, v, err, sizeof err) == 0, "add: %s", err);
    mirror_read_lock(m);
    int na = -1, nb = -2;
    char what[64];
    snprintf(what, sizeof what, "ties %s exact", metric_name(metric));
    if (!run_exact(&search_backend_cuda, m, q, TQ, TW, TK, NULL, hits_a, &na) &&
        !run_exact(&search_backend_cpu, m, q, TQ, TW, TK, NULL, hits_b, &nb))
        compare(what, m, hits_a, na, hits_b, nb, TQ, TK, NULL, 1, 0, NULL);
    snprintf(what, sizeof what, "ties %s funnel", metric_name(metric));
    if (!run_funnel(&search_backend_cuda, m, q, TQ, TW, TK, 4, 300, NULL, hits_a, &na) &&
        !run_funnel(&search_backend_cpu, m, q, TQ, TW, TK, 4, 300, NULL, hits_b, &nb))
        compare(what, m, hits_a, na, hits_b, nb, TQ, TK, NULL, 1, 0, NULL);
    mirror_read_unlock(m);
    mirror_free(m);
    free(v);
}

/* Concurrency: readers compare cuda with cpu inside one read lock while a
 * writer removes and adds rows (each change a new version to upload). */
struct conc {
    struct index_mirror *m;
    const float *queries, *vecs;
    int stop, failures, searches;
    pthread_mutex_t lock;
};

static void *reader(void *arg)
{
    struct conc *c = arg;
    struct search_hit *a = malloc(sizeof *a * 8 * 10), *b = malloc(sizeof *b * 8 * 10);
    for (int it = 0; it < 40; it++) {
        char err[256];
        int na = -1, nb = -2;
        mirror_read_lock(c->m);
        const int ra = search_backend_cuda.exact(c->m, c->queries + it % 50 * W, 8, W, 10, NULL,
                                                 a, &na, err, sizeof err);
        const int rb = search_backend_cpu.exact(c->m, c->queries + it % 50 * W, 8, W, 10, NULL,
                                                b, &nb, err, sizeof err);
        int bad = ra || rb || na != nb;
        for (int i = 0; !bad && i < 8 * na; i++)
            bad = fabsf(a[i].score - b[i].score) > 1e-4f * (1.0f + fabsf(b[i].score));
        mirror_read_unlock(c->m);
        pthread_mutex_lock(&c->lock);
        c->failures += bad;
        c->searches++;
        pthread_mutex_unlock(&c->lock);
    }
    free(a);
    free(b);
    return NULL;
}

static void *writer(void *arg)
{
    struct conc *c = arg;
    for (int it = 0; !__atomic_load_n(&c->stop, __ATOMIC_ACQUIRE) && it < 200; it++) {
        char err[256];
        const int base = N + (it % 20) * 200;
        if (it % 2 == 0) {
            mirror_add(c->m, 200, row_ids + base, id_ptrs + base, c->vecs + (size_t)base * W,
                       err, sizeof err);
        } else {
            mirror_remove(c->m, 200, id_ptrs + N + ((it - 1) % 20) * 200, NULL);
        }
    }
    return NULL;
}

static void concurrency(struct index_mirror *m, const float *queries, const float *vecs)
{
    struct conc c = {.m = m, .queries = queries, .vecs = vecs};
    pthread_mutex_init(&c.lock, NULL);
    pthread_t r[4], wr;
    pthread_create(&wr, NULL, writer, &c);
    for (int i = 0; i < 4; i++) pthread_create(&r[i], NULL, reader, &c);
    for (int i = 0; i < 4; i++) pthread_join(r[i], NULL);
    __atomic_store_n(&c.stop, 1, __ATOMIC_RELEASE);
    pthread_join(wr, NULL);
    CHECK(c.failures == 0 && c.searches == 160, "concurrency: %d of %d searches differ or failed",
          c.failures, c.searches);
    pthread_mutex_destroy(&c.lock);
}

int main(void)
{
    for (int i = 0; i < 2 * N; i++) {
        snprintf(ids[i], sizeof ids[i], "item-%d", i);
        id_ptrs[i] = ids[i];
        row_ids[i] = 100 + i;
    }
    float *vecs = malloc(sizeof(float) * 2 * N * W);
    float *queries = malloc(sizeof(float) * QMAX * W);
    hits_a = malloc(sizeof *hits_a * QMAX * KMAX);
    hits_b = malloc(sizeof *hits_b * QMAX * KMAX);
    random_rows(vecs, 2 * N);
    for (int i = 0; i < QMAX * W; i++) queries[i] = gaussian();
    memcpy(queries + W, vecs + 123 * W, W * sizeof(float)); /* a query equal to a row */

    char err[512] = "";
    if (!vit_cuda_available(err, sizeof err)) {
        /* No GPU: a clear failure, and the dispatch falls back to the CPU. */
        char why[512];
        snprintf(why, sizeof why, "%s", err);
        struct index_mirror *m = mirror_create(W, STORE_METRIC_COSINE, 0, err, sizeof err);
        CHECK(m && mirror_add(m, 100, row_ids, id_ptrs, vecs, err, sizeof err) == 0, "setup: %s",
              err);
        if (m) {
            char e2[256] = "";
            int na = -1, nb = -2;
            mirror_read_lock(m);
            int rc = search_backend_cuda.exact(m, queries, 2, W, 5, NULL, hits_a, &na, e2,
                                               sizeof e2);
            CHECK(rc == STORE_ERR && e2[0], "cuda backend without a GPU: rc %d, message '%s'", rc,
                  e2);
            char e3[256] = "";
            rc = search_backend_cuda.funnel(m, queries, 2, W, 5, 12, 20, NULL, hits_a, &na, e3,
                                            sizeof e3);
            CHECK(rc == STORE_ERR && e3[0], "cuda funnel without a GPU: rc %d", rc);
            search_use_backend(&search_backend_cuda);
            CHECK(search_current_backend() == &search_backend_cuda, "backend not selected");
            rc = search_exact(m, queries, 2, W, 5, NULL, hits_a, &na, err, sizeof err);
            CHECK(rc == 0 && na == 5, "search_exact with the cuda backend selected: rc %d", rc);
            search_use_backend(NULL);
            rc = search_exact(m, queries, 2, W, 5, NULL, hits_b, &nb, err, sizeof err);
            CHECK(rc == 0 && nb == 5 && hits_a[0].row == hits_b[0].row &&
                      hits_a[5].row == hits_b[5].row,
                  "fallback result differs from the cpu backend");
            mirror_read_unlock(m);
            mirror_free(m);
            printf("SKIP: no usable CUDA device (%s); the cuda search backend says: %s\n", why,
                   e2);
        }
        free(vecs);
        free(queries);
        free(hits_a);
        free(hits_b);
        return check_summary();
    }

    const enum store_metric metrics[] = {STORE_METRIC_COSINE, STORE_METRIC_DOT, STORE_METRIC_L2};
    for (int mi = 0; mi < 3; mi++) {
        struct index_mirror *m = mirror_create(W, metrics[mi], 0, err, sizeof err);
        CHECK(m != NULL, "mirror_create: %s", err);
        if (!m) continue;
        CHECK(mirror_add(m, N, row_ids, id_ptrs, vecs, err, sizeof err) == 0, "add: %s", err);
        sweep(m, queries, "initial");
        /* Changes: the device copy must follow. */
        CHECK(mirror_remove(m, 700, id_ptrs + 1000, NULL) == 0, "remove");
        CHECK(mirror_add(m, 400, row_ids + N, id_ptrs + N, vecs + (size_t)N * W, err,
                         sizeof err) == 0, "add: %s", err);
        sweep(m, queries, "changed");
        /* Appends only: the backend copies just the new rows (within the allocation's headroom). */
        CHECK(mirror_add(m, 300, row_ids + N + 400, id_ptrs + N + 400, vecs + (size_t)(N + 400) * W,
                         err, sizeof err) == 0, "append: %s", err);
        sweep(m, queries, "appended");
        if (metrics[mi] == STORE_METRIC_L2) concurrency(m, queries, vecs);
        mirror_clear(m);
        int na = -1;
        mirror_read_lock(m);
        CHECK(search_backend_cuda.exact(m, queries, 2, W, 5, NULL, hits_a, &na, err,
                                        sizeof err) == 0 && na == 0,
              "search on a cleared mirror: %d hits (%s)", na, err);
        mirror_read_unlock(m);
        CHECK(mirror_add(m, 3000, row_ids + 5000, id_ptrs + 5000, vecs + (size_t)5000 * W, err,
                         sizeof err) == 0, "add: %s", err);
        /* Through the dispatch. */
        search_use_backend(&search_backend_cuda);
        int nb = -2;
        mirror_read_lock(m);
        CHECK(search_exact(m, queries, 5, W, 20, NULL, hits_a, &na, err, sizeof err) == 0,
              "search_exact: %s", err);
        search_use_backend(&search_backend_cpu);
        CHECK(search_exact(m, queries, 5, W, 20, NULL, hits_b, &nb, err, sizeof err) == 0,
              "search_exact: %s", err);
        compare("dispatch", m, hits_a, na, hits_b, nb, 5, 20, NULL, 0, 0, NULL);
        mirror_read_unlock(m);
        sweep(m, queries, "refilled");
        mirror_free(m); /* drops the device copy through the free hook */
    }
    /* A prefix width that is not the default, and exact ties. */
    struct index_mirror *m = mirror_create(W, STORE_METRIC_COSINE, 24, err, sizeof err);
    CHECK(m && mirror_add(m, N, row_ids, id_ptrs, vecs, err, sizeof err) == 0, "add: %s", err);
    if (m) sweep(m, queries, "prefix24");
    mirror_free(m);
    ties(STORE_METRIC_DOT);
    ties(STORE_METRIC_L2);

    free(vecs);
    free(queries);
    free(hits_a);
    free(hits_b);
    return check_summary();
}
