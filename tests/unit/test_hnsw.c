/* Unit tests of server/index/hnsw.c: recall@10 at the default ef against a
 * brute force on clustered Matryoshka-like data (the graph over a prefix of
 * the vectors), filters applied during the walk, tombstones and compaction,
 * concurrent inserts, deletes and searches, save/load round trip, and
 * truncated or corrupt files refused; and the mirror's row id lookup used by
 * the re-rank (index/mirror.h: mirror_find_row_id). */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "errors.h"
#include "index/hnsw.h"
#include "index/mirror.h"

#ifndef N
#define N 20000
#endif
#define D 128
#define W 48
#define NQ 200
#define K 10
#define CLUSTERS 64

static uint64_t rs = 0x1234567887654321ULL;
static double unif(void)
{
    return ((double)(splitmix64(&rs) >> 11) + 0.5) / 9007199254740992.0;
}
static float gauss(void) { return (float)(sqrt(-2.0 * log(unif())) * cos(6.283185307179586 * unif())); }

/* Clustered, variance decreasing along the dimensions. */
static float *make_data(size_t n, const float *centers)
{
    float *x = malloc(n * D * sizeof *x);
    for (size_t i = 0; i < n; i++) {
        const float *c = centers + (splitmix64(&rs) % CLUSTERS) * D;
        for (int j = 0; j < D; j++) x[i * D + j] = c[j] + 0.6f * gauss() / sqrtf(1.0f + j / 8.0f);
    }
    return x;
}

static void unit_prefix(const float *v, float *out)
{
    double s = 0;
    for (int j = 0; j < W; j++) s += (double)v[j] * v[j];
    for (int j = 0; j < W; j++) out[j] = (float)(v[j] / sqrt(s));
}

/* The exact top K labels by cosine at W among rows with ok[i]. */
static void brute(const float *x, size_t n, const uint8_t *ok, const float *q, int64_t *top)
{
    float uq[W], ur[W];
    unit_prefix(q, uq);
    float best[K];
    for (int i = 0; i < K; i++) {
        best[i] = -INFINITY;
        top[i] = -1;
    }
    for (size_t r = 0; r < n; r++) {
        if (ok && !ok[r]) continue;
        unit_prefix(x + r * D, ur);
        float s = 0;
        for (int j = 0; j < W; j++) s += uq[j] * ur[j];
        if (s <= best[K - 1]) continue;
        int p = K - 1;
        while (p > 0 && best[p - 1] < s) {
            best[p] = best[p - 1];
            top[p] = top[p - 1];
            p--;
        }
        best[p] = s;
        top[p] = (int64_t)r;
    }
}

static double recall(struct hnsw *h, const float *x, size_t n, const uint8_t *ok,
                     const float *qs, hnsw_accept_fn acc, void *ctx)
{
    int hit = 0, total = 0;
    for (int i = 0; i < NQ; i++) {
        int64_t want[K], got[K];
        brute(x, n, ok, qs + (size_t)i * D, want);
        const int k = hnsw_search(h, qs + (size_t)i * D, K, 0, acc, ctx, got, NULL);
        for (int a = 0; a < K; a++) {
            if (want[a] < 0) continue;
            total++;
            for (int b = 0; b < k; b++)
                if (got[b] == want[a]) {
                    hit++;
                    break;
                }
        }
    }
    return total ? (double)hit / total : 1.0;
}

static bool accept_third(int64_t label, void *ctx)
{
    (void)ctx;
    return label % 3 == 0;
}

/* ---- concurrency ---- */

#define CN 6000
struct conc {
    struct hnsw *h;
    const float *x;
    _Atomic int done;
    _Atomic int bad;
    _Atomic uint8_t deleted[CN];
};

static void *inserter(void *p)
{
    struct conc *c = p;
    const size_t start = 2000; /* rows 2000..CN-1, split by parity */
    static _Atomic int which;
    const int me = atomic_fetch_add(&which, 1);
    for (size_t i = start + (size_t)me; i < CN; i += 2)
        if (hnsw_insert(c->h, (int64_t)i, c->x + i * D)) atomic_fetch_add(&c->bad, 1);
    return NULL;
}

static void *deleter(void *p)
{
    struct conc *c = p;
    for (size_t i = 0; i < 2000; i += 5) {
        if (hnsw_delete(c->h, (int64_t)i)) atomic_fetch_add(&c->bad, 1);
        atomic_store(&c->deleted[i], 1); /* after: a search that begins now must not see it */
    }
    return NULL;
}

static void *searcher(void *p)
{
    struct conc *c = p;
    uint64_t r = 99;
    while (!atomic_load(&c->done)) {
        const size_t i = splitmix64(&r) % CN;
        int64_t got[K];
        uint8_t before[CN / 5 + 1];
        for (size_t j = 0; j < 2000; j += 5) before[j / 5] = atomic_load(&c->deleted[j]);
        const int k = hnsw_search(c->h, c->x + i * D, K, 0, NULL, NULL, got, NULL);
        if (k < 0) atomic_fetch_add(&c->bad, 1);
        /* A row deleted before the search began must not come back. */
        for (int j = 0; j < k; j++)
            if (got[j] < 2000 && got[j] % 5 == 0 && before[got[j] / 5])
                atomic_fetch_add(&c->bad, 1);
    }
    return NULL;
}

/* mirror_find_row_id: store row id -> mirror row through appends and
 * swap-with-last removals. */
static void test_rowid_lookup(void)
{
    char err[ERR_LEN];
    struct index_mirror *m = mirror_create(8, STORE_METRIC_COSINE, 0, err, sizeof err);
    CHECK(m != NULL, "%s", err);
    if (!m) return;
    enum { R = 3000 };
    float v[8];
    char ids[R][16];
    for (int i = 0; i < R; i++) {
        for (int j = 0; j < 8; j++) v[j] = (float)(i + j + 1);
        snprintf(ids[i], sizeof ids[i], "e%d", i);
        const int64_t rid = 1000 + 7 * (int64_t)i;
        const char *id = ids[i];
        if (i == R / 2) { /* a lookup between appends: the second half is indexed incrementally */
            mirror_read_lock(m);
            CHECK(mirror_rowid_sync(m) == 0 && mirror_find_row_id(m, 1000) == 0, "early lookup");
            mirror_read_unlock(m);
        }
        mirror_add(m, 1, &rid, &id, v, err, sizeof err);
    }
    mirror_read_lock(m);
    int ok = mirror_rowid_sync(m) == 0;
    for (int i = 0; i < R; i++) {
        const long r = mirror_find_row_id(m, 1000 + 7 * (int64_t)i);
        ok &= r >= 0 && mirror_row_id(m, (size_t)r) == 1000 + 7 * (int64_t)i;
    }
    ok &= mirror_find_row_id(m, 999) == -1 && mirror_find_row_id(m, 1001) == -1;
    mirror_read_unlock(m);
    CHECK(ok, "row ids found after appends");
    const char *gone[] = {ids[0], ids[10], ids[R - 1]};
    mirror_remove(m, 3, gone, NULL);
    mirror_read_lock(m);
    ok = mirror_rowid_sync(m) == 0;
    for (int i = 0; i < R; i++) {
        const long r = mirror_find_row_id(m, 1000 + 7 * (int64_t)i);
        const bool dead = i == 0 || i == 10 || i == R - 1;
        ok &= dead ? r == -1 : r >= 0 && !strcmp(mirror_external_id(m, (size_t)r), ids[i]);
    }
    mirror_read_unlock(m);
    CHECK(ok, "row ids found after removals (rows moved)");
    mirror_free(m);
}

int main(void)
{
    test_rowid_lookup();
    char err[ERR_LEN] = "";
    printf("kernel: %s\n", hnsw_kernel());
    float *centers = malloc(CLUSTERS * D * sizeof *centers);
    for (int i = 0; i < CLUSTERS * D; i++) centers[i] = gauss() / sqrtf(1.0f + (i % D) / 8.0f);
    float *x = make_data(N, centers);
    float *qs = make_data(NQ, centers);

    CHECK(!hnsw_create(0, 16, 200, 64, err, sizeof err) && err[0], "bad width accepted");
    CHECK(!hnsw_create(W, 1, 200, 64, err, sizeof err), "bad m accepted");

    /* Recall at the default ef, built with two threads. */
    struct hnsw *h = hnsw_create(W, HNSW_M_DEFAULT, HNSW_EFC_DEFAULT, HNSW_EF_DEFAULT, err,
                                 sizeof err);
    CHECK(h != NULL, "%s", err);
    int64_t *labels = malloc(N * sizeof *labels);
    for (size_t i = 0; i < N; i++) labels[i] = (int64_t)i;
    CHECK(hnsw_insert_many(h, labels, x, N, D, 2, NULL, NULL) == 0, "insert_many");
    CHECK(hnsw_nodes(h) == N, "%zu nodes", hnsw_nodes(h));
    const double r0 = recall(h, x, N, NULL, qs, NULL, NULL);
    printf("recall@10 at ef %d: %.4f (%zu bytes)\n", hnsw_ef(h), r0, hnsw_memory(h));
    CHECK(r0 >= 0.95, "recall %.4f", r0);

    /* Every vector finds itself. */
    int self = 0;
    for (size_t i = 0; i < N; i += 97) {
        int64_t got[1];
        self += hnsw_search(h, x + i * D, 1, 0, NULL, NULL, got, NULL) == 1 && got[0] == (int64_t)i;
    }
    CHECK(self >= (N / 97 + 1) * 99 / 100, "self found %d", self);

    /* Filter during the walk: only accepted labels, recall among them. */
    uint8_t *ok = malloc(N);
    for (size_t i = 0; i < N; i++) ok[i] = i % 3 == 0;
    int only = 1;
    for (int i = 0; i < NQ; i++) {
        int64_t got[K];
        const int k = hnsw_search(h, qs + (size_t)i * D, K, 0, accept_third, NULL, got, NULL);
        only &= k == K;
        for (int j = 0; j < k; j++) only &= got[j] % 3 == 0;
    }
    CHECK(only, "a filtered search returned a rejected label or too few");
    const double rf = recall(h, x, N, ok, qs, accept_third, NULL);
    printf("filtered (1/3) recall@10: %.4f\n", rf);
    CHECK(rf >= 0.95, "filtered recall %.4f", rf);

    /* Save / load round trip. */
    char path[256], dir[] = "/tmp/test_hnsw_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(path, sizeof path, "%s/g.hnsw", dir);
    CHECK(hnsw_save(h, path, 4242, err, sizeof err) == 0, "%s", err);
    int64_t gen = 0;
    struct hnsw *g = hnsw_load(path, &gen, err, sizeof err);
    CHECK(g != NULL, "%s", err);
    if (g) {
        CHECK(gen == 4242, "generation %lld", (long long)gen);
        CHECK(hnsw_nodes(g) == N && hnsw_m(g) == HNSW_M_DEFAULT && hnsw_width(g) == W, "params");
        int same = 1;
        for (int i = 0; i < 50; i++) {
            int64_t a[K], b[K];
            const int ka = hnsw_search(h, qs + (size_t)i * D, K, 0, NULL, NULL, a, NULL);
            const int kb = hnsw_search(g, qs + (size_t)i * D, K, 0, NULL, NULL, b, NULL);
            same &= ka == kb && !memcmp(a, b, (size_t)ka * sizeof *a);
        }
        CHECK(same, "loaded graph answers differently");
        hnsw_free(g);
    }

    /* Corrupt files are refused with a message: a byte of the checksum, then
     * one in the middle (the structure checks may see it first). */
    FILE *f = fopen(path, "r+b");
    fseek(f, 0, SEEK_END);
    const long len = ftell(f);
    const long at[2] = {len - 1, len / 2};
    for (int i = 0; i < 2; i++) {
        fseek(f, at[i], SEEK_SET);
        int ch = fgetc(f);
        fseek(f, at[i], SEEK_SET);
        fputc(ch ^ 0x5a, f);
        fflush(f);
        err[0] = '\0';
        g = hnsw_load(path, &gen, err, sizeof err);
        CHECK(!g && (strstr(err, "checksum") || (i && strstr(err, "bad"))),
              "flipped byte at %ld of %ld: %s", at[i], len, err);
        hnsw_free(g);
    }
    fclose(f);
    CHECK(truncate(path, len - 100) == 0, "truncate");
    g = hnsw_load(path, &gen, err, sizeof err);
    CHECK(!g && err[0], "truncated file accepted");
    hnsw_free(g);
    CHECK(truncate(path, 20) == 0, "truncate");
    g = hnsw_load(path, &gen, err, sizeof err);
    CHECK(!g && err[0], "header-only file accepted");
    hnsw_free(g);
    f = fopen(path, "wb");
    fputs("not a graph at all, just text that is long enough for a header ...........", f);
    fclose(f);
    g = hnsw_load(path, &gen, err, sizeof err);
    CHECK(!g && strstr(err, "not an HNSW"), "%s", err);
    hnsw_free(g);
    unlink(path);
    g = hnsw_load(path, &gen, err, sizeof err);
    CHECK(!g && err[0], "missing file");
    rmdir(dir);

    /* Tombstones: deleted labels never come back; compaction keeps the live ones. */
    for (size_t i = 0; i < N; i += 4) CHECK(hnsw_delete(h, (int64_t)i) == 0, "delete %zu", i);
    CHECK(hnsw_delete(h, 0) == -1, "double delete");
    CHECK(hnsw_tombstones(h) == N / 4, "%zu tombstones", hnsw_tombstones(h));
    CHECK(!hnsw_lookup(h, 0, NULL) && hnsw_lookup(h, 1, NULL), "lookup");
    int never = 1;
    for (int i = 0; i < NQ; i++) {
        int64_t got[K];
        const int k = hnsw_search(h, qs + (size_t)i * D, K, 0, NULL, NULL, got, NULL);
        never &= k == K;
        for (int j = 0; j < k; j++) never &= got[j] % 4 != 0;
    }
    CHECK(never, "a deleted label came back");
    for (size_t i = 0; i < N; i++) ok[i] = i % 4 != 0;
    const double rd = recall(h, x, N, ok, qs, NULL, NULL);
    printf("recall@10 with 1/4 tombstones: %.4f\n", rd);
    CHECK(rd >= 0.95, "recall with tombstones %.4f", rd);
    /* Re-inserting a label replaces its node. */
    CHECK(hnsw_insert(h, 1, x + 2 * D) == 0, "reinsert");
    CHECK(hnsw_tombstones(h) == N / 4 + 1, "reinsert tombstones the old node");
    CHECK(hnsw_insert(h, 1, x + 1 * D) == 0, "reinsert back");
    struct hnsw *cpt = hnsw_compact(h, 2);
    CHECK(cpt != NULL, "compact");
    if (cpt) {
        CHECK(hnsw_nodes(cpt) == N - N / 4 && hnsw_tombstones(cpt) == 0, "%zu nodes",
              hnsw_nodes(cpt));
        const double rc = recall(cpt, x, N, ok, qs, NULL, NULL);
        printf("recall@10 after compaction: %.4f\n", rc);
        CHECK(rc >= 0.95, "recall after compaction %.4f", rc);
        hnsw_free(cpt);
    }
    hnsw_free(h);

    /* Concurrent inserts (2 threads), deletes and searches (2 threads). */
    struct conc *c = calloc(1, sizeof *c);
    c->h = hnsw_create(W, 12, 100, 64, err, sizeof err);
    c->x = x;
    for (size_t i = 0; i < 2000; i++) hnsw_insert(c->h, (int64_t)i, x + i * D);
    pthread_t t[5];
    pthread_create(&t[0], NULL, inserter, c);
    pthread_create(&t[1], NULL, inserter, c);
    pthread_create(&t[2], NULL, deleter, c);
    pthread_create(&t[3], NULL, searcher, c);
    pthread_create(&t[4], NULL, searcher, c);
    for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
    atomic_store(&c->done, 1);
    pthread_join(t[3], NULL);
    pthread_join(t[4], NULL);
    CHECK(atomic_load(&c->bad) == 0, "%d concurrency failures", atomic_load(&c->bad));
    CHECK(hnsw_nodes(c->h) == CN && hnsw_tombstones(c->h) == 400, "%zu nodes, %zu tombstones",
          hnsw_nodes(c->h), hnsw_tombstones(c->h));
    int found = 0, want = 0, back = 0;
    for (size_t i = 0; i < CN; i++) {
        int64_t got[K];
        const int k = hnsw_search(c->h, x + i * D, K, 0, NULL, NULL, got, NULL);
        const int del = i < 2000 && i % 5 == 0;
        int in = 0;
        for (int j = 0; j < k; j++) in |= got[j] == (int64_t)i;
        if (del) back += in;
        else {
            want++;
            found += in;
        }
    }
    CHECK(back == 0, "%d deleted rows returned", back);
    CHECK(found == want, "%d of %d inserted rows found by their own vector", found, want);
    hnsw_free(c->h);
    free(c);

    free(ok);
    free(labels);
    free(x);
    free(qs);
    free(centers);
    return check_summary();
}
