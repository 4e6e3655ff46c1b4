/* Unit tests of server/index/mirror.c and server/index/search.c: exact search
 * against a double-precision brute force (cosine, l2, dot; full width and a
 * prefix; with and without a row mask), removal, funnel search (equal to exact
 * with a full shortlist; recall@10 measured on random and on Matryoshka-like
 * data), k > n, ties, refused arguments, and a mirror without its prefix copy. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "errors.h"
#include "index/mirror.h"
#include "index/search.h"

#define N 5000
#define W 256
#define NQ 8
#define ROW_BASE 1000
#ifndef TAIL_STD
#define TAIL_STD 0.25f /* tail variance 240 * 0.0625 = 15 vs 16 in the head */
#endif

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rng_next(void) { return splitmix64(&rng_state); }

static float uniform(void) /* [-1, 1) */
{
    return (float)((double)(rng_next() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float gaussian(void)
{
    double u1 = ((double)(rng_next() >> 11) + 1.0) / 9007199254740993.0;
    double u2 = (double)(rng_next() >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static float *data;     /* [N, W] the vectors as given */
static char ids[N][16];
static const char *id_ptrs[N];
static int64_t row_ids[N];
static uint8_t alive[N];

struct ref {
    double score;
    int item;
};

static enum store_metric cmp_metric;

static int ref_cmp(const void *a, const void *b)
{
    const struct ref *x = a, *y = b;
    if (x->score != y->score) {
        const int better = cmp_metric == STORE_METRIC_L2 ? x->score < y->score
                                                           : x->score > y->score;
        return better ? -1 : 1;
    }
    return x->item - y->item;
}

/* Brute force over the alive items eligible under mask_item (indexed by item):
 * refs sorted best first; returns their count. */
static int brute(enum store_metric metric, const float *vecs, const float *query, int w,
                 const uint8_t *mask_item, struct ref *refs)
{
    int nr = 0;
    double qq = 0;
    for (int j = 0; j < w; j++) qq += (double)query[j] * query[j];
    for (int i = 0; i < N; i++) {
        if (!alive[i] || (mask_item && !mask_item[i])) continue;
        const float *x = vecs + (size_t)i * W;
        double dot = 0, xx = 0, d2 = 0;
        for (int j = 0; j < w; j++) {
            dot += (double)x[j] * query[j];
            xx += (double)x[j] * x[j];
            d2 += ((double)x[j] - query[j]) * ((double)x[j] - query[j]);
        }
        double s = dot;
        if (metric == STORE_METRIC_COSINE) s = xx > 0 && qq > 0 ? dot / sqrt(xx * qq) : 0;
        if (metric == STORE_METRIC_L2) s = sqrt(d2);
        refs[nr].score = s;
        refs[nr].item = i;
        nr++;
    }
    cmp_metric = metric;
    qsort(refs, (size_t)nr, sizeof *refs, ref_cmp);
    return nr;
}

static double tol_of(double s) { return 1e-5 * (1.0 + fabs(s)); }

/* Hits against refs: the same count, scores within tolerance at each position,
 * and the same item wherever the reference score is separated from its
 * neighbours (including the first one left out) by more than the tolerance.
 * Returns the number of mismatches. */
static int compare(const struct search_hit *hits, int nh, const struct ref *refs, int nr, int k,
                   const char *what)
{
    const int want = nr < k ? nr : k;
    int bad = 0;
    if (nh != want) {
        fprintf(stderr, "%s: %d hits, want %d\n", what, nh, want);
        return 1;
    }
    for (int i = 0; i < nh; i++) {
        const double s = refs[i].score;
        if (fabs(hits[i].score - s) > 10 * tol_of(s)) {
            if (bad++ < 3) fprintf(stderr, "%s: hit %d score %.7g, want %.7g\n", what, i, hits[i].score, s);
            continue;
        }
        const int sep_prev = i == 0 || fabs(refs[i - 1].score - s) > tol_of(s);
        const int sep_next = i + 1 >= nr || fabs(refs[i + 1].score - s) > tol_of(s);
        const int item = (int)(hits[i].row_id - ROW_BASE);
        if (sep_prev && sep_next && item != refs[i].item) {
            if (bad++ < 3) fprintf(stderr, "%s: hit %d is item %d, want %d\n", what, i, item, refs[i].item);
        }
        if (item < 0 || item >= N || !alive[item] || strcmp(hits[i].external_id, ids[item]) != 0) {
            if (bad++ < 3) fprintf(stderr, "%s: hit %d is not a live item (%d)\n", what, i, item);
        }
    }
    return bad;
}

static const char *metric_names[] = {"cosine", "l2", "dot"};

/* Exact (and funnel with a full shortlist) against brute force for one metric,
 * at widths 256 and 64, with and without a mask (indexed by item). */
static void check_against_brute(struct index_mirror *m, enum store_metric metric,
                                const float *queries, const uint8_t *mask_item, const char *stage)
{
    static struct search_hit hits[NQ * 100];
    static struct ref refs[N];
    char err[ERR_LEN];
    const int k = 100;
    mirror_read_lock(m);
    const size_t n = mirror_count(m);
    uint8_t *row_mask = NULL;
    if (mask_item) {
        row_mask = malloc(n);
        for (size_t r = 0; r < n; r++) row_mask[r] = mask_item[mirror_row_id(m, r) - ROW_BASE];
    }
    const int widths[] = {W, 64};
    for (int wi = 0; wi < 2; wi++) {
        const int w = widths[wi];
        float *qw = malloc((size_t)NQ * w * sizeof *qw);
        for (int qi = 0; qi < NQ; qi++) memcpy(qw + qi * w, queries + qi * W, w * sizeof *qw);
        /* 0 exact; funnels with shortlist n: 1 on the kept prefix, 2 at width 40
         * (the first columns of the full matrix, renormalised on the fly). */
        for (int mode = 0; mode < 3; mode++) {
            int n_out = -1;
            const int rc = mode == 0
                               ? search_exact(m, qw, NQ, w, k, row_mask, hits, &n_out, err, sizeof err)
                               : search_funnel(m, qw, NQ, w, k, mode == 1 ? 0 : 40, (int)n,
                                               row_mask, hits, &n_out, err, sizeof err);
            CHECK(rc == 0, "%s %s w=%d: %s", stage, metric_names[metric], w, err);
            int bad = 0;
            for (int qi = 0; qi < NQ && rc == 0; qi++) {
                const int nr = brute(metric, data, queries + qi * W, w, mask_item, refs);
                char what[128];
                snprintf(what, sizeof what, "%s %s %s w=%d mask=%d q=%d", stage,
                         mode ? "funnel" : "exact", metric_names[metric], w, mask_item != NULL, qi);
                bad += compare(hits + qi * k, n_out, refs, nr, k, what);
            }
            CHECK(bad == 0, "%s %s %s w=%d mask=%d: %d mismatches", stage,
                  mode ? "funnel(shortlist=n)" : "exact", metric_names[metric], w,
                  mask_item != NULL, bad);
        }
        free(qw);
    }
    mirror_read_unlock(m);
    free(row_mask);
}

/* Mean recall@10 of the funnel against exact search over nq queries. */
static double funnel_recall(struct index_mirror *m, const float *queries, int nq, int shortlist)
{
    const int k = 10;
    struct search_hit *ex = malloc((size_t)nq * k * sizeof *ex);
    struct search_hit *fu = malloc((size_t)nq * k * sizeof *fu);
    char err[ERR_LEN];
    int ne = 0, nf = 0;
    mirror_read_lock(m);
    int rc = search_exact(m, queries, nq, W, k, NULL, ex, &ne, err, sizeof err);
    CHECK(rc == 0, "recall exact: %s", err);
    rc = search_funnel(m, queries, nq, W, k, 0, shortlist, NULL, fu, &nf, err, sizeof err);
    CHECK(rc == 0, "recall funnel: %s", err);
    mirror_read_unlock(m);
    CHECK(ne == k && nf == k, "recall: %d and %d hits", ne, nf);
    long found = 0;
    for (int qi = 0; qi < nq; qi++)
        for (int i = 0; i < k; i++)
            for (int j = 0; j < k; j++)
                if (ex[qi * k + i].row == fu[qi * k + j].row) {
                    found++;
                    break;
                }
    free(ex);
    free(fu);
    return (double)found / ((double)nq * k);
}

static struct index_mirror *build(enum store_metric metric, const float *vecs)
{
    char err[ERR_LEN];
    struct index_mirror *m = mirror_create(W, metric, 0, err, sizeof err);
    CHECK(m != NULL, "mirror_create: %s", err);
    if (!m) exit(1);
    for (size_t off = 0; off < N; off += 1000) { /* in batches */
        const int rc = mirror_add(m, 1000, row_ids + off, id_ptrs + off, vecs + off * W, err,
                                  sizeof err);
        CHECK(rc == 0, "mirror_add: %s", err);
    }
    CHECK(mirror_count(m) == N, "count %zu", mirror_count(m));
    return m;
}

static void test_mirror_basics(void)
{
    char err[ERR_LEN];
    struct index_mirror *m = mirror_create(W, STORE_METRIC_COSINE, 0, err, sizeof err);
    CHECK(m && mirror_prefix_width(m) == 16, "default prefix width");
    CHECK(mirror_create(0, STORE_METRIC_L2, 0, err, sizeof err) == NULL && err[0], "width 0");
    CHECK(mirror_create(8, STORE_METRIC_L2, 9, err, sizeof err) == NULL && err[0], "prefix > width");
    struct index_mirror *small = mirror_create(8, STORE_METRIC_L2, 0, err, sizeof err);
    CHECK(small && mirror_prefix_width(small) == 1, "prefix of width 8 is 1");
    mirror_free(small);

    const uint64_t v0 = mirror_version(m), rw0 = mirror_rewrite_version(m);
    CHECK(v0 != 0 && rw0 == v0, "a new mirror starts a rewrite version");
    CHECK(mirror_add(m, 3, row_ids, id_ptrs, data, err, sizeof err) == 0, "add: %s", err);
    const uint64_t v1 = mirror_version(m);
    CHECK(v1 != v0 && mirror_rewrite_version(m) == rw0, "an add changes the version, not the rewrite");
    const char *dup[2] = {"fresh", "id1"};
    int64_t rid[2] = {77, 78};
    CHECK(mirror_add(m, 2, rid, dup, data, err, sizeof err) == STORE_CONFLICT, "dup stored");
    CHECK(strstr(err, "id1") != NULL, "message names the id: %s", err);
    const char *dup2[2] = {"same", "same"};
    CHECK(mirror_add(m, 2, rid, dup2, data, err, sizeof err) == STORE_CONFLICT, "dup in batch");
    float bad[W] = {0};
    bad[5] = NAN;
    const char *one[1] = {"nan"};
    CHECK(mirror_add(m, 1, rid, one, bad, err, sizeof err) == STORE_INVALID, "NaN refused");
    const char *empty[1] = {""};
    CHECK(mirror_add(m, 1, rid, empty, data, err, sizeof err) == STORE_INVALID, "empty id");
    CHECK(mirror_version(m) == v1, "failed adds keep the version");
    mirror_read_lock(m);
    CHECK(mirror_count(m) == 3, "failed adds changed nothing: %zu", mirror_count(m));
    CHECK(mirror_find(m, "fresh") == -1 && mirror_find(m, "same") == -1, "no leftovers");
    CHECK(mirror_find(m, "id2") == 2 && mirror_row_id(m, 2) == ROW_BASE + 2, "find");
    double nn = 0;
    for (int j = 0; j < W; j++) nn += (double)mirror_row_vector(m, 1)[j] * mirror_row_vector(m, 1)[j];
    CHECK(fabs(nn - 1.0) < 1e-5, "cosine rows stored normalised: %g", nn);
    mirror_read_unlock(m);
    size_t removed = 0;
    const char *rm[3] = {"id0", "nope", "id0"};
    mirror_remove(m, 3, rm, &removed);
    CHECK(removed == 1, "removed %zu", removed);
    const uint64_t v2 = mirror_version(m), rw2 = mirror_rewrite_version(m);
    CHECK(v2 != v1 && rw2 == v2 && rw2 != rw0, "a removal is a rewrite");
    const char *none[1] = {"nope"};
    mirror_remove(m, 1, none, &removed);
    CHECK(removed == 0 && mirror_version(m) == v2, "removing nothing changes nothing");
    mirror_read_lock(m);
    CHECK(mirror_count(m) == 2 && mirror_find(m, "id0") == -1, "id0 gone");
    CHECK(mirror_find(m, "id2") == 0 && mirror_row_id(m, 0) == ROW_BASE + 2, "last moved to 0");
    mirror_read_unlock(m);
    CHECK(mirror_add(m, 1, row_ids, id_ptrs, data, err, sizeof err) == 0, "re-add id0: %s", err);
    CHECK(mirror_rewrite_version(m) == rw2, "an add keeps the rewrite version");
    mirror_clear(m);
    CHECK(mirror_count(m) == 0 && mirror_find(m, "id1") == -1, "clear");
    CHECK(mirror_rewrite_version(m) != rw2 && mirror_rewrite_version(m) == mirror_version(m),
          "a clear is a rewrite");
    CHECK(mirror_add(m, 3, row_ids, id_ptrs, data, err, sizeof err) == 0, "add after clear");
    mirror_free(m);
}

static int payloads_freed;
static void count_free(void *p)
{
    payloads_freed++;
    free(p);
}

/* Payloads follow their rows through swap-with-last removal and are freed once. */
static void test_payloads(void)
{
    char err[ERR_LEN];
    struct index_mirror *m = mirror_create(W, STORE_METRIC_L2, 0, err, sizeof err);
    mirror_set_payload_free(m, count_free);
    void *p[3] = {strdup("p0"), strdup("p1"), strdup("p2")};
    CHECK(mirror_add_payloads(m, 3, row_ids, id_ptrs, data, p, err, sizeof err) == 0, "%s", err);
    const char *rm[1] = {"id0"};
    mirror_remove(m, 1, rm, NULL);
    mirror_read_lock(m);
    const long r2 = mirror_find(m, "id2"), r1 = mirror_find(m, "id1");
    CHECK(r2 >= 0 && !strcmp(mirror_payload(m, (size_t)r2), "p2"), "payload moved with its row");
    CHECK(r1 >= 0 && !strcmp(mirror_payload(m, (size_t)r1), "p1"), "payload of id1 kept");
    mirror_read_unlock(m);
    CHECK(payloads_freed == 1, "removed row's payload freed: %d", payloads_freed);
    void *dup[1] = {strdup("dup")};
    const char *dupid[1] = {"id1"};
    CHECK(mirror_add_payloads(m, 1, row_ids, dupid, data, dup, err, sizeof err) == STORE_CONFLICT,
          "duplicate refused");
    free(dup[0]); /* a failed add leaves the payload with the caller */
    mirror_free(m);
    CHECK(payloads_freed == 3, "all payloads freed with the mirror: %d", payloads_freed);
}

static double dot_double(const float *a, const float *b, int w)
{
    double s = 0;
    for (int j = 0; j < w; j++) s += (double)a[j] * b[j];
    return s;
}

/* hits (rows < 32) are exactly the rows in row_bits, each once, every score within
 * tolerance of want, ordered best first with equal scores by lower row. */
static int hits_follow_contract(const struct search_hit *hits, int n, uint32_t row_bits, double want)
{
    uint32_t seen = 0;
    for (int i = 0; i < n; i++) {
        if (hits[i].row >= 32 || (seen >> hits[i].row & 1u)) return 0;
        seen |= 1u << hits[i].row;
        if (fabs(hits[i].score - want) > 10 * tol_of(want)) return 0;
        if (i > 0 && (hits[i].score > hits[i - 1].score ||
                      (hits[i].score == hits[i - 1].score && hits[i].row < hits[i - 1].row)))
            return 0;
    }
    return seen == row_bits;
}

static void test_small_cases(void)
{
    char err[ERR_LEN];
    struct search_hit hits[1000 * 2];
    int n_out = -1;
    /* k larger than n; ties by lower row. */
    struct index_mirror *m = mirror_create(W, STORE_METRIC_DOT, 0, err, sizeof err);
    float *same = malloc(7 * W * sizeof *same);
    for (int i = 0; i < 7; i++) memcpy(same + i * W, data, W * sizeof *same);
    CHECK(mirror_add(m, 7, row_ids, id_ptrs, same, err, sizeof err) == 0, "add 7: %s", err);
    mirror_read_lock(m);
    CHECK(search_exact(m, data + W, 1, W, 10, NULL, hits, &n_out, err, sizeof err) == 0, "%s", err);
    CHECK(n_out == 7, "k > n gives n hits: %d", n_out);
    /* Equal vectors need not get bit-identical scores from a GEMM (rows in other
     * blocks of a kernel are summed in another order), so the contract is checked
     * against the scores the search returned: every row once, all within
     * tolerance of the true score, best first, equal scores by lower row. */
    const double same_dot = dot_double(data, data + W, W);
    CHECK(hits_follow_contract(hits, n_out, 0x7f, same_dot), "k > n: all rows, by score then row");
    CHECK(search_funnel(m, data + W, 1, W, 10, 0, 3, NULL, hits, &n_out, err, sizeof err) == 0, "%s", err);
    CHECK(n_out == 7 && hits_follow_contract(hits, n_out, 0x7f, same_dot),
          "funnel k > n gives n hits: %d", n_out);
    uint8_t mask[7] = {0, 1, 0, 0, 1, 0, 0};
    CHECK(search_exact(m, data + W, 2, W, 1000, mask, hits, &n_out, err, sizeof err) == 0, "%s", err);
    CHECK(n_out == 2 && hits_follow_contract(hits, 2, 0x12, same_dot) &&
              hits_follow_contract(hits + 1000, 2, 0x12, dot_double(data, data + 2 * W, W)),
          "mask: %d hits", n_out);
    uint8_t none[7] = {0};
    CHECK(search_exact(m, data, 1, W, 5, none, hits, &n_out, err, sizeof err) == 0 && n_out == 0,
          "empty mask gives no hits");

    /* Refused arguments. */
    const struct { int q, w, k, shortlist; const char *what; } badargs[] = {
        {1, W, 0, 10, "k 0"},       {1, W, SEARCH_K_MAX + 1, 10, "k > max"}, {1, W + 1, 5, 10, "w > width"},
        {1, 0, 5, 10, "w 0"},       {0, W, 5, 10, "q 0"},       {1, W, 5, 0, "shortlist 0"},
    };
    for (size_t i = 0; i < sizeof badargs / sizeof badargs[0]; i++) {
        err[0] = 0;
        int rc;
        if (badargs[i].shortlist) { /* shortlist only concerns the funnel */
            rc = search_exact(m, data, badargs[i].q, badargs[i].w, badargs[i].k, NULL, hits,
                              &n_out, err, sizeof err);
            CHECK(rc == STORE_INVALID && err[0], "exact %s refused (%d: %s)", badargs[i].what,
                  rc, err);
        }
        err[0] = 0;
        rc = search_funnel(m, data, badargs[i].q, badargs[i].w, badargs[i].k, 0,
                           badargs[i].shortlist, NULL, hits, &n_out, err, sizeof err);
        CHECK(rc == STORE_INVALID && err[0], "funnel %s refused (%d: %s)", badargs[i].what, rc, err);
    }
    CHECK(search_funnel(m, data, 1, 64, 5, 65, 10, NULL, hits, &n_out, err, sizeof err) ==
              STORE_INVALID && strstr(err, "funnel width"),
          "funnel width above the search width refused: %s", err);
    float nanq[W];
    memcpy(nanq, data, sizeof nanq);
    nanq[3] = INFINITY;
    CHECK(search_exact(m, nanq, 1, W, 5, NULL, hits, &n_out, err, sizeof err) == STORE_INVALID,
          "Inf query refused");
    printf("refused: %s\n", err);
    mirror_read_unlock(m);
    mirror_free(m);
    free(same);
}

/* Readers search while a writer adds and removes: no crash, every hit live. */
struct race {
    struct index_mirror *m;
    const float *queries;
    int stop, bad;
};

static void *reader(void *arg)
{
    struct race *r = arg;
    struct search_hit hits[10];
    char err[ERR_LEN];
    int n_out;
    while (!__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE)) {
        mirror_read_lock(r->m);
        if (search_funnel(r->m, r->queries, 1, W, 10, 0, 50, NULL, hits, &n_out, err, sizeof err))
            __atomic_add_fetch(&r->bad, 1, __ATOMIC_RELAXED);
        for (int i = 0; i < n_out; i++)
            if (mirror_find(r->m, hits[i].external_id) != (long)hits[i].row)
                __atomic_add_fetch(&r->bad, 1, __ATOMIC_RELAXED);
        mirror_read_unlock(r->m);
    }
    return NULL;
}

static void test_concurrency(struct index_mirror *m, const float *queries)
{
    struct race r = {m, queries, 0, 0};
    pthread_t th[3];
    for (int i = 0; i < 3; i++) pthread_create(&th[i], NULL, reader, &r);
    char err[ERR_LEN];
    int wrong = 0;
    for (int round = 0; round < 20; round++) {
        size_t removed = 0;
        mirror_remove(m, 100, id_ptrs + round * 100, &removed);
        wrong += removed != 100;
        wrong += mirror_add(m, 100, row_ids + round * 100, id_ptrs + round * 100,
                            data + (size_t)round * 100 * W, err, sizeof err) != 0;
    }
    __atomic_store_n(&r.stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < 3; i++) pthread_join(th[i], NULL);
    CHECK(wrong == 0 && r.bad == 0, "concurrent: %d writer errors, %d reader errors", wrong, r.bad);
    CHECK(mirror_count(m) == N, "count after churn %zu", mirror_count(m));
}

/* k at its largest (more than the collection holds): every row, in the
 * brute force's order, for two queries at once. */
static void test_largest_k(const float *queries)
{
    struct index_mirror *m = build(STORE_METRIC_COSINE, data);
    struct search_hit *hits = malloc(2 * (size_t)SEARCH_K_MAX * sizeof *hits);
    static struct ref refs[N];
    char err[ERR_LEN];
    int n_out = -1;
    mirror_read_lock(m);
    CHECK(search_exact(m, queries, 2, W, SEARCH_K_MAX, NULL, hits, &n_out, err, sizeof err) == 0 &&
              n_out == N,
          "k = %d on %d rows: %d hits (%s)", SEARCH_K_MAX, N, n_out, err);
    for (int qi = 0; qi < 2 && n_out == N; qi++) {
        const int nr = brute(STORE_METRIC_COSINE, data, queries + qi * W, W, NULL, refs);
        CHECK(compare(hits + (size_t)qi * SEARCH_K_MAX, n_out, refs, nr, SEARCH_K_MAX,
                      "largest k") == 0,
              "k = %d equals the brute force, query %d", SEARCH_K_MAX, qi);
    }
    mirror_read_unlock(m);
    free(hits);
    mirror_free(m);
}

/* A mirror without its prefix copy (mirror_drop_prefix) runs the funnel on the
 * full matrix's first columns: the same hits as one that keeps the copy, in
 * fewer bytes; removals keep both in step; dropping after an add is refused. */
static void test_drop_prefix(const float *queries)
{
    char err[ERR_LEN];
    const enum store_mirror forms[2] = {STORE_MIRROR_F32, STORE_MIRROR_INT8};
    for (int f = 0; f < 2; f++) {
        struct index_mirror *kept = mirror_create_form(W, STORE_METRIC_COSINE, 0, forms[f], err,
                                                       sizeof err);
        struct index_mirror *bare = mirror_create_form(W, STORE_METRIC_COSINE, 0, forms[f], err,
                                                       sizeof err);
        CHECK(kept && bare && mirror_drop_prefix(bare, err, sizeof err) == 0, "created: %s", err);
        CHECK(mirror_add(kept, N, row_ids, id_ptrs, data, err, sizeof err) == 0 &&
                  mirror_add(bare, N, row_ids, id_ptrs, data, err, sizeof err) == 0,
              "added: %s", err);
        size_t removed = 0;
        const char *rm[3] = {ids[1], ids[2000], ids[N - 1]};
        mirror_remove(kept, 3, rm, &removed);
        mirror_remove(bare, 3, rm, &removed);
        struct search_hit a[NQ * 10], b[NQ * 10];
        int na = 0, nb = 0, same = 1;
        mirror_read_lock(kept);
        mirror_read_lock(bare);
        CHECK(search_funnel(kept, queries, NQ, W, 10, 0, 200, NULL, a, &na, err, sizeof err) == 0 &&
                  search_funnel(bare, queries, NQ, W, 10, 0, 200, NULL, b, &nb, err, sizeof err) == 0,
              "funnel: %s", err);
        for (int i = 0; i < na * NQ && na == nb; i++)
            same &= a[i].row == b[i].row && fabsf(a[i].score - b[i].score) < 1e-5f;
        CHECK(na == 10 && nb == 10 && same, "%s: the same funnel hits without the prefix copy",
              store_mirror_name(forms[f]));
        const size_t pre = forms[f] == STORE_MIRROR_F32 ? sizeof(float) : sizeof(uint16_t);
        CHECK(!mirror_has_prefix(bare) && !mirror_prefix_matrix(bare) &&
                  mirror_prefix_width(bare) == mirror_prefix_width(kept) &&
                  mirror_bytes(kept) - mirror_bytes(bare) >= (size_t)N * W / 16 * pre,
              "%s: no prefix matrix, %zu bytes fewer", store_mirror_name(forms[f]),
              mirror_bytes(kept) - mirror_bytes(bare));
        mirror_read_unlock(bare);
        mirror_read_unlock(kept);
        CHECK(mirror_drop_prefix(kept, err, sizeof err) == STORE_INVALID, "drop after an add refused");
        mirror_free(kept);
        mirror_free(bare);
    }
}

int main(void)
{
    data = malloc((size_t)N * W * sizeof *data);
    for (size_t i = 0; i < (size_t)N * W; i++) data[i] = uniform();
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof ids[i], "id%d", i);
        id_ptrs[i] = ids[i];
        row_ids[i] = ROW_BASE + i;
        alive[i] = 1;
    }
    float queries[NQ * W];
    for (int i = 0; i < NQ * W; i++) queries[i] = uniform();
    uint8_t *mask_item = malloc(N);
    for (int i = 0; i < N; i++) mask_item[i] = rng_next() % 10 < 3;

    test_mirror_basics();
    test_small_cases();
    test_payloads();
    test_largest_k(queries);
    test_drop_prefix(queries);

    const int nrq = 100;
    float *rq = malloc((size_t)nrq * W * sizeof *rq);
    for (int i = 0; i < nrq * W; i++) rq[i] = uniform();
    for (int metric = 0; metric < 3; metric++) {
        struct index_mirror *m = build((enum store_metric)metric, data);
        check_against_brute(m, (enum store_metric)metric, queries, NULL, "full");
        check_against_brute(m, (enum store_metric)metric, queries, mask_item, "full");
        printf("random data, %s: funnel recall@10 (shortlist 200, prefix 16 of 256) = %.3f\n",
               metric_names[metric], funnel_recall(m, rq, nrq, 200));
        /* Remove every 5th item and 300 more; removed ids never come back. */
        const char *rm[N];
        int nrm = 0;
        for (int i = 0; i < N; i++)
            if (i % 5 == 0 || (i > 2500 && i <= 2800)) rm[nrm++] = ids[i], alive[i] = 0;
        size_t removed = 0;
        mirror_remove(m, (size_t)nrm, rm, &removed);
        CHECK(removed == (size_t)nrm, "removed %zu of %d", removed, nrm);
        mirror_read_lock(m);
        int lookups = 0;
        for (int i = 0; i < N; i++) {
            const long r = mirror_find(m, ids[i]);
            lookups += alive[i] ? (r < 0 || mirror_row_id(m, (size_t)r) != ROW_BASE + i) : r != -1;
        }
        CHECK(lookups == 0 && mirror_count(m) == (size_t)(N - nrm), "%d bad lookups", lookups);
        mirror_read_unlock(m);
        check_against_brute(m, (enum store_metric)metric, queries, NULL, "removed");
        check_against_brute(m, (enum store_metric)metric, queries, mask_item, "removed");
        /* Put them back, then churn under concurrent readers. */
        int64_t rrid[N];
        float *rv = malloc((size_t)nrm * W * sizeof *rv);
        for (int i = 0; i < nrm; i++) {
            const int item = atoi(rm[i] + 2);
            rrid[i] = ROW_BASE + item;
            memcpy(rv + (size_t)i * W, data + (size_t)item * W, W * sizeof *rv);
            alive[item] = 1;
        }
        char err[ERR_LEN];
        CHECK(mirror_add(m, (size_t)nrm, rrid, rm, rv, err, sizeof err) == 0, "re-add: %s", err);
        free(rv);
        if (metric == STORE_METRIC_COSINE) test_concurrency(m, queries);
        check_against_brute(m, (enum store_metric)metric, queries, NULL, "re-added");
        mirror_free(m);
    }

    /* Matryoshka-like data: the first 16 dimensions carry most of the variance. */
    float *mdata = malloc((size_t)N * W * sizeof *mdata);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < W; j++) mdata[(size_t)i * W + j] = gaussian() * (j < 16 ? 1.0f : TAIL_STD);
    for (int i = 0; i < nrq; i++)
        for (int j = 0; j < W; j++) rq[(size_t)i * W + j] = gaussian() * (j < 16 ? 1.0f : TAIL_STD);
    for (int metric = 0; metric < 3; metric++) {
        struct index_mirror *m = build((enum store_metric)metric, mdata);
        const double rec = funnel_recall(m, rq, nrq, 200);
        printf("Matryoshka-like data, %s: funnel recall@10 (shortlist 200) = %.3f\n",
               metric_names[metric], rec);
        CHECK(rec >= 0.9, "%s recall %.3f < 0.9", metric_names[metric], rec);
        printf("Matryoshka-like data, %s: funnel recall@10 (shortlist 50) = %.3f\n",
               metric_names[metric], funnel_recall(m, rq, nrq, 50));
        mirror_free(m);
    }
    free(mdata);
    free(rq);
    free(mask_item);
    free(data);
    return check_summary();
}
