/* In-context segmentation without HTTP (index/segment.h): label transfer equal
 * to a brute force computed here from the decoded stored patches, ignore
 * labels and unlabelled items, the refusals, labels surviving a reopen, and
 * the v2 -> v3 migration keeping patch items. */
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "errors.h"
#include "index/collections.h"
#include "index/patch_codec.h"
#include "index/segment.h"
#include "rm_rf.h"

#define W 16
#define ITEMS 6
#define GH 4
#define GW 5
#define NP (GH * GW)
#define LABELS 4
#define NQ 30

static char err[ERR_LEN];
static float dec[ITEMS][NP * W];      /* stored patches, decoded */
static uint8_t lab[ITEMS][NP];
static unsigned char blob[ITEMS][NP * W * 2];
static float centre[LABELS][W];

static float next_float(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static void normalise(float *v)
{
    double ss = 0;
    for (int k = 0; k < W; k++) ss += (double)v[k] * v[k];
    for (int k = 0; k < W; k++) v[k] = (float)(v[k] / sqrt(ss));
}

/* A patch near label l's centre. */
static void sample(unsigned *s, int l, float *v)
{
    for (int k = 0; k < W; k++) v[k] = centre[l][k] + 0.8f * next_float(s);
    normalise(v);
}

/* Items 0..ITEMS-2 labelled (item 1's first row "ignore"), the last unlabelled. */
static struct coll *make(struct index *ix, const char *name, bool labelled)
{
    struct collection_info in = {.width = W, .metric = STORE_METRIC_COSINE,
                                 .level = STORE_LEVEL_PATCH, .patch_type = PATCH_F16};
    snprintf(in.name, sizeof in.name, "%s", name);
    struct coll *c = NULL;
    CHECK(index_create(ix, &in, &c, err, sizeof err) == 0, "create %s: %s", name, err);
    if (!c) return NULL;
    unsigned s = 11;
    struct item_in items[ITEMS];
    char ids[ITEMS][16], out_ids[ITEMS][STORE_ID_MAX];
    static float raw[NP * W], mean[W] = {1};
    for (int i = 0; i < ITEMS; i++) {
        for (int p = 0; p < NP; p++) {
            lab[i][p] = (uint8_t)((p / 3 + i) % LABELS);
            sample(&s, lab[i][p], raw + p * W);
        }
        if (i == 1) memset(lab[i], SEGMENT_IGNORE, GW);
        patch_encode(raw, NP, W, PATCH_F16, blob[i]);
        patch_decode(blob[i], NP, W, PATCH_F16, dec[i]);
        snprintf(ids[i], sizeof ids[i], "img-%d", i);
        items[i] = (struct item_in){.external_id = ids[i], .vector = mean, .dim = W,
                                    .patches = blob[i], .patches_len = sizeof blob[i],
                                    .grid_h = GH, .grid_w = GW,
                                    .labels = labelled && i < ITEMS - 1 ? lab[i] : NULL};
    }
    CHECK(coll_insert(c, items, NULL, ITEMS, out_ids, err, sizeof err) == 0, "insert: %s", err);
    return c;
}

struct ref { double s; int label; };

static int ref_cmp(const void *pa, const void *pb)
{
    const struct ref *a = pa, *b = pb;
    return a->s < b->s ? 1 : a->s > b->s ? -1 : 0;
}

/* The brute-force label of query q; *clear is false when a float rounding could
 * change it (a near tie at the k-th neighbour or between the two best votes). */
static int brute(const float *q, int k, double t, bool *clear)
{
    struct ref all[ITEMS * NP];
    int n = 0;
    for (int i = 0; i < ITEMS - 1; i++)
        for (int p = 0; p < NP; p++) {
            if (lab[i][p] == SEGMENT_IGNORE) continue;
            double d = 0;
            for (int j = 0; j < W; j++) d += (double)q[j] * dec[i][p * W + j];
            all[n++] = (struct ref){d, lab[i][p]};
        }
    qsort(all, (size_t)n, sizeof *all, ref_cmp);
    double v[LABELS] = {0};
    for (int j = 0; j < k && j < n; j++) v[all[j].label] += exp((all[j].s - all[0].s) / t);
    int best = 0, second = -1;
    for (int l = 1; l < LABELS; l++)
        if (v[l] > v[best]) best = l;
    for (int l = 0; l < LABELS; l++)
        if (l != best && (second < 0 || v[l] > v[second])) second = l;
    *clear = v[best] - v[second] > 1e-4 * v[best] && (k >= n || all[k - 1].s - all[k].s > 1e-5);
    return best;
}

static void test_transfer(struct coll *c)
{
    unsigned s = 99;
    static float q[NQ * W];
    for (int i = 0; i < NQ; i++) sample(&s, i % LABELS, q + i * W);
    const int ks[] = {1, 5, 10, 200};
    const float ts[] = {0.1f, 0.02f, 1.0f, 0.07f};
    for (int r = 0; r < 4; r++) {
        uint8_t out[NQ];
        float share[NQ];
        CHECK(segment_run(c, q, NQ, ks[r], ts[r], out, share, err, sizeof err) == 0,
              "segment: %s", err);
        int compared = 0, agree = 0, correct = 0;
        for (int i = 0; i < NQ; i++) {
            bool clear;
            const int want = brute(q + i * W, ks[r], ts[r], &clear);
            CHECK(share[i] > 0 && share[i] <= 1.0f + 1e-6f, "share %g", (double)share[i]);
            CHECK(out[i] != SEGMENT_IGNORE, "never the ignore label");
            correct += out[i] == i % LABELS;
            if (!clear) continue;
            compared++;
            agree += out[i] == want;
            CHECK(out[i] == want, "k %d patch %d: %d, brute force %d", ks[r], i, out[i], want);
        }
        CHECK(compared >= NQ * 3 / 4, "k %d: %d of %d compared", ks[r], compared, NQ);
        CHECK(correct >= NQ / 2, "k %d: %d of %d near their centre's label", ks[r], correct, NQ);
        printf("k %d t %g: %d/%d equal to brute force, %d/%d correct\n", ks[r], (double)ts[r],
               agree, compared, correct, NQ);
    }
}

static void test_refusals(struct index *ix, struct coll *c)
{
    float q[W] = {1};
    uint8_t out[1];
    CHECK(segment_run(c, q, 1, 0, 0.1f, out, NULL, err, sizeof err) == STORE_INVALID, "k 0");
    CHECK(segment_run(c, q, 1, 10001, 0.1f, out, NULL, err, sizeof err) == STORE_INVALID,
          "k too large");
    CHECK(segment_run(c, q, 1, 5, 0.0f, out, NULL, err, sizeof err) == STORE_INVALID, "t 0");
    CHECK(segment_run(c, q, 1, 5, NAN, out, NULL, err, sizeof err) == STORE_INVALID, "t NaN");
    struct coll *u = make(ix, "unlabelled", false);
    CHECK(u && segment_run(u, q, 1, 5, 0.1f, out, NULL, err, sizeof err) == STORE_CONFLICT,
          "no labelled patches: conflict");
    coll_release(u);
    struct collection_info in = {.width = W, .metric = STORE_METRIC_COSINE};
    snprintf(in.name, sizeof in.name, "cls");
    struct coll *k = NULL;
    CHECK(index_create(ix, &in, &k, err, sizeof err) == 0, "create cls: %s", err);
    CHECK(k && segment_run(k, q, 1, 5, 0.1f, out, NULL, err, sizeof err) == STORE_INVALID,
          "CLS-level: invalid");
    const float v[W] = {1};
    const uint8_t l1[1] = {0};
    struct item_in bad = {.external_id = "x", .vector = v, .dim = W, .labels = l1};
    char ids[1][STORE_ID_MAX];
    CHECK(k && coll_insert(k, &bad, NULL, 1, ids, err, sizeof err) == STORE_INVALID,
          "labels on a CLS item refused");
    coll_release(k);
}

/* A v2 database (no labels column, nor v4's columns and jobs table) opens as
 * the current version with its patch items. */
static void test_migration(const char *dir)
{
    char path[256];
    snprintf(path, sizeof path, "%s/index.sqlite3", dir);
    sqlite3 *db = NULL;
    sqlite3_open(path, &db);
    CHECK(sqlite3_exec(db,
                       "ALTER TABLE items DROP COLUMN labels;"
                       "ALTER TABLE collections DROP COLUMN mirror;"
                       "ALTER TABLE collections DROP COLUMN ann;"
                       "ALTER TABLE collections DROP COLUMN generation;"
                       "DROP TABLE jobs; PRAGMA user_version = 2;",
                       NULL, NULL, NULL) == SQLITE_OK, "back to v2: %s", sqlite3_errmsg(db));
    sqlite3_close(db);
    struct index *ix = NULL;
    CHECK(index_open(&ix, dir, err, sizeof err) == 0, "open v2: %s", err);
    if (!ix) return;
    struct coll *c = index_acquire(ix, "seg");
    struct patch_mirror *pm = c ? coll_patches_begin(c) : NULL;
    CHECK(pm && patch_mirror_count(pm) == ITEMS, "v2 patch items kept");
    if (pm) {
        CHECK(patch_mirror_labels(pm, 0) == NULL, "v2 items unlabelled");
        coll_patches_end(c);
    }
    float q[W] = {1};
    uint8_t out[1];
    CHECK(c && segment_run(c, q, 1, 5, 0.1f, out, NULL, err, sizeof err) == STORE_CONFLICT,
          "no labels after the migration");
    coll_release(c);
    index_close(ix);
    sqlite3_stmt *st = NULL;
    sqlite3_open(path, &db);
    sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL);
    CHECK(sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) == STORE_SCHEMA_VERSION,
          "now the current version");
    sqlite3_finalize(st);
    sqlite3_close(db);
}

int main(void)
{
    unsigned s = 3;
    for (int l = 0; l < LABELS; l++) {
        for (int k = 0; k < W; k++) centre[l][k] = next_float(&s);
        normalise(centre[l]);
    }
    char tmpl[] = "/tmp/test_segment_query.XXXXXX";
    char *dir = mkdtemp(tmpl);
    struct index *ix = NULL;
    CHECK(dir && index_open(&ix, dir, err, sizeof err) == 0, "open: %s", err);
    if (!ix) return check_summary();
    struct coll *c = make(ix, "seg", true);
    if (c) test_transfer(c);
    test_refusals(ix, c);
    coll_release(c);
    index_close(ix);
    CHECK(index_open(&ix, dir, err, sizeof err) == 0, "reopen: %s", err);
    c = ix ? index_acquire(ix, "seg") : NULL;
    struct patch_mirror *pm = c ? coll_patches_begin(c) : NULL;
    if (pm) {
        bool same = true;
        for (size_t i = 0; i < patch_mirror_count(pm); i++) {
            const long at = patch_mirror_find(pm, patch_mirror_id(pm, i));
            const int item = atoi(patch_mirror_id(pm, (size_t)at) + 4);
            const uint8_t *l = patch_mirror_labels(pm, i);
            same &= item == ITEMS - 1 ? l == NULL : l && !memcmp(l, lab[item], NP);
        }
        CHECK(same, "labels survive a reopen");
        coll_patches_end(c);
    }
    if (c) test_transfer(c);
    coll_release(c);
    index_close(ix);
    if (dir) test_migration(dir);
    if (dir) rm_rf(dir);
    return check_summary();
}
