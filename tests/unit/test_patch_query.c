/* Patch-level collections without HTTP (index/patch_query.h, patch_codec.h,
 * store schema v2): the f16/int8 codecs, patch / box / late-interaction
 * searches and heat-map values equal to a brute force computed here from the
 * decoded stored patches, durability across a reopen, deletes, the refusals,
 * and the migration of a schema v1 database. */
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
#include "index/patch_query.h"
#include "rm_rf.h"

#define W 16       /* collection width */
#define ITEMS 24
#define MAXP 20    /* patches per item at most (grids 4x5 and 3x4) */

static char err[ERR_LEN];
static float raw[ITEMS][MAXP * W];   /* normalised patches as given */
static float dec[ITEMS][MAXP * W];   /* as stored (decoded) */
static int gh[ITEMS], gw[ITEMS];
static unsigned char blob[ITEMS][MAXP * (W + 4) * 2];

static float next_float(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static void normalise(float *v, int w)
{
    double ss = 0;
    for (int k = 0; k < w; k++) ss += (double)v[k] * v[k];
    for (int k = 0; k < w; k++) v[k] = (float)(v[k] / sqrt(ss));
}

static double dot(const float *a, const float *b)
{
    double s = 0;
    for (int k = 0; k < W; k++) s += (double)a[k] * b[k];
    return s;
}

static void test_codec(void)
{
    const float exact[] = {0.0f, 1.0f, -0.5f, 65504.0f, 0.0009765625f, 5.9604645e-8f, -3.0f};
    for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++)
        CHECK(patch_f16_to_f32(patch_f32_to_f16(exact[i])) == exact[i], "f16 %g", exact[i]);
    CHECK(patch_f32_to_f16(1.0f + 2.0f / 4096) == 0x3c00, "ties to even (down)");
    CHECK(patch_f32_to_f16(1.0f + 6.0f / 4096) == 0x3c02, "ties to even (up)");
    CHECK(patch_f32_to_f16(70000.0f) == 0x7c00, "overflow to inf");
    CHECK(patch_vec_bytes(W, PATCH_F16) == 2 * W && patch_vec_bytes(W, PATCH_INT8) == W + 4,
          "sizes");
    unsigned s = 7;
    float v[W], back[W];
    unsigned char b[2 * W + 4];
    for (int k = 0; k < W; k++) v[k] = next_float(&s);
    normalise(v, W);
    patch_encode(v, 1, W, PATCH_INT8, b);
    patch_decode(b, 1, W, PATCH_INT8, back);
    float amax = 0;
    for (int k = 0; k < W; k++) amax = fmaxf(amax, fabsf(v[k]));
    CHECK(max_abs_diff(v, back, W) <= amax / 127 / 2 + 1e-7f, "int8 error %g",
          max_abs_diff(v, back, W));
    patch_encode(v, 1, W, PATCH_F16, b);
    patch_decode(b, 1, W, PATCH_F16, back);
    CHECK(max_abs_diff(v, back, W) <= 1.0f / 2048, "f16 error %g", max_abs_diff(v, back, W));
}

static struct coll *make(struct index *ix, const char *name, enum patch_type t)
{
    struct collection_info in = {.width = W, .metric = STORE_METRIC_COSINE,
                                 .level = STORE_LEVEL_PATCH, .patch_type = (int)t};
    snprintf(in.name, sizeof in.name, "%s", name);
    struct coll *c = NULL;
    CHECK(index_create(ix, &in, &c, err, sizeof err) == 0, "create %s: %s", name, err);
    if (!c) return NULL;
    struct item_in items[ITEMS];
    char ids[ITEMS][16], out_ids[ITEMS][STORE_ID_MAX];
    static float mean[ITEMS][W];
    for (int i = 0; i < ITEMS; i++) {
        const int n = gh[i] * gw[i];
        patch_encode(raw[i], (size_t)n, W, t, blob[i]);
        patch_decode(blob[i], (size_t)n, W, t, dec[i]);
        for (int k = 0; k < W; k++) mean[i][k] = dec[i][k];
        snprintf(ids[i], sizeof ids[i], "img-%d", i);
        items[i] = (struct item_in){.external_id = ids[i], .vector = mean[i], .dim = W,
                                    .patches = blob[i],
                                    .patches_len = (size_t)n * patch_vec_bytes(W, t),
                                    .grid_h = gh[i], .grid_w = gw[i]};
    }
    CHECK(coll_insert(c, items, NULL, ITEMS, out_ids, err, sizeof err) == 0, "insert: %s", err);
    return c;
}

struct ref { double s; int item, patch; };

static int ref_cmp(const void *pa, const void *pb)
{
    const struct ref *a = pa, *b = pb;
    if (a->s != b->s) return a->s < b->s ? 1 : -1;
    if (a->item != b->item) return a->item - b->item;
    return a->patch - b->patch;
}

/* Brute force over items present[]: one query vector (nq 1) or late interaction. */
static int brute(const float *qv, int nq, const int *present, struct ref *out)
{
    int n = 0;
    for (int i = 0; i < ITEMS; i++) {
        if (!present[i]) continue;
        const int np = gh[i] * gw[i];
        if (nq == 1) {
            for (int p = 0; p < np; p++) out[n++] = (struct ref){dot(qv, dec[i] + p * W), i, p};
            continue;
        }
        double sum = 0, best = -2;
        int bp = 0;
        for (int a = 0; a < nq; a++) {
            double m = -2;
            for (int p = 0; p < np; p++) {
                const double d = dot(qv + a * W, dec[i] + p * W);
                if (d > m) m = d;
                if (d > best) best = d, bp = p;
            }
            sum += m;
        }
        out[n++] = (struct ref){sum, i, bp};
    }
    qsort(out, (size_t)n, sizeof *out, ref_cmp);
    return n;
}

static void compare(const char *what, const struct patch_result *r, const struct ref *ref, int n,
                    int k)
{
    const int want = n < k ? n : k;
    CHECK(r->n == want, "%s: %d hits, want %d", what, r->n, want);
    for (int j = 0; j < r->n && j < want; j++) {
        char id[16];
        snprintf(id, sizeof id, "img-%d", ref[j].item);
        const int iw = gw[ref[j].item];
        CHECK(!strcmp(r->hits[j].id, id) && r->hits[j].row == ref[j].patch / iw &&
                  r->hits[j].col == ref[j].patch % iw,
              "%s hit %d: %s (%d,%d), want %s (%d,%d)", what, j, r->hits[j].id, r->hits[j].row,
              r->hits[j].col, id, ref[j].patch / iw, ref[j].patch % iw);
        CHECK(fabs(r->hits[j].score - ref[j].s) < 1e-4, "%s hit %d score %g want %g", what, j,
              r->hits[j].score, ref[j].s);
    }
}

/* Every query form on c against the brute force; present[] marks live items. */
static void test_queries(struct coll *c, const int *present, int qitem)
{
    static struct ref ref[ITEMS * MAXP];
    struct patch_result r;
    float qv[W];
    char qid[16];
    snprintf(qid, sizeof qid, "img-%d", qitem);
    /* PATCH by stored id, patch (1, 2). */
    struct patch_query q = {.mode = PATCH_QUERY_PATCH, .k = 10, .id = qid, .box = {1, 2}};
    memcpy(qv, dec[qitem] + (1 * gw[qitem] + 2) * W, sizeof qv);
    int n = brute(qv, 1, present, ref);
    CHECK(patch_query_run(c, &q, &r, err, sizeof err) == 0, "patch: %s", err);
    compare("patch by id", &r, ref, n, 10);
    CHECK(r.n > 0 && !strcmp(r.hits[0].id, qid) && r.hits[0].row == 1 && r.hits[0].col == 2,
          "a patch finds itself first");
    patch_result_free(&r);
    /* BOX by given patches: rows 0..1, columns 1..2 of raw item 3's patches. */
    q = (struct patch_query){.mode = PATCH_QUERY_BOX, .k = 7, .patches = raw[3],
                             .grid_h = gh[3], .grid_w = gw[3], .box = {0, 1, 2, 3}};
    memset(qv, 0, sizeof qv);
    for (int rr = 0; rr < 2; rr++)
        for (int cc = 1; cc < 3; cc++)
            for (int k = 0; k < W; k++) qv[k] += raw[3][(rr * gw[3] + cc) * W + k];
    normalise(qv, W);
    n = brute(qv, 1, present, ref);
    CHECK(patch_query_run(c, &q, &r, err, sizeof err) == 0, "box: %s", err);
    compare("box", &r, ref, n, 7);
    patch_result_free(&r);
    /* IMAGE by id and by given patches; k past the item count. */
    q = (struct patch_query){.mode = PATCH_QUERY_IMAGE, .k = 5, .id = qid};
    n = brute(dec[qitem], gh[qitem] * gw[qitem], present, ref);
    CHECK(patch_query_run(c, &q, &r, err, sizeof err) == 0, "image: %s", err);
    compare("late interaction by id", &r, ref, n, 5);
    CHECK(r.n > 0 && !strcmp(r.hits[0].id, qid), "an image finds itself first");
    patch_result_free(&r);
    q = (struct patch_query){.mode = PATCH_QUERY_IMAGE, .k = 100, .patches = raw[5],
                             .grid_h = gh[5], .grid_w = gw[5]};
    n = brute(raw[5], gh[5] * gw[5], present, ref);
    CHECK(patch_query_run(c, &q, &r, err, sizeof err) == 0, "image: %s", err);
    compare("late interaction by patches", &r, ref, n, 100);
    patch_result_free(&r);
    /* Heat map of a query patch over item 2. */
    q = (struct patch_query){.mode = PATCH_QUERY_PATCH, .id = qid, .box = {0, 0}};
    float *sims = NULL;
    int hh = 0, ww = 0;
    CHECK(patch_query_heatmap(c, &q, "img-2", &sims, &hh, &ww, err, sizeof err) == 0,
          "heatmap: %s", err);
    CHECK(hh == gh[2] && ww == gw[2], "heatmap grid %dx%d", hh, ww);
    for (int p = 0; sims && p < hh * ww; p++)
        CHECK(fabs(sims[p] - dot(dec[qitem], dec[2] + p * W)) < 1e-5, "heatmap %d", p);
    free(sims);
}

static void test_refusals(struct index *ix, struct coll *c)
{
    struct patch_result r;
    struct patch_query q = {.mode = PATCH_QUERY_PATCH, .k = 3, .id = "img-0", .box = {gh[0], 0}};
    CHECK(patch_query_run(c, &q, &r, err, sizeof err) == STORE_INVALID, "row outside the grid");
    q.box[0] = -1;
    CHECK(patch_query_run(c, &q, &r, err, sizeof err) == STORE_INVALID, "negative row");
    q = (struct patch_query){.mode = PATCH_QUERY_BOX, .k = 3, .id = "img-0", .box = {1, 1, 1, 3}};
    CHECK(patch_query_run(c, &q, &r, err, sizeof err) == STORE_INVALID, "empty box");
    q = (struct patch_query){.mode = PATCH_QUERY_PATCH, .k = 3, .id = "nope"};
    CHECK(patch_query_run(c, &q, &r, err, sizeof err) == STORE_NOT_FOUND, "unknown id");
    q.id = "img-0";
    q.k = 0;
    CHECK(patch_query_run(c, &q, &r, err, sizeof err) == STORE_INVALID, "k 0");
    float *sims;
    int hh, ww;
    q.k = 3;
    CHECK(patch_query_heatmap(c, &q, "nope", &sims, &hh, &ww, err, sizeof err) ==
              STORE_NOT_FOUND, "heatmap of an unknown item");
    CHECK(coll_begin_job(c, "job", err, sizeof err) == STORE_INVALID, "no reembed: %s", err);
    /* A bad patch matrix, and patches for a CLS collection. */
    float v[W] = {1};
    struct item_in bad = {.external_id = "bad", .vector = v, .dim = W, .patches = blob[0],
                          .patches_len = 3, .grid_h = 1, .grid_w = 1};
    char ids[1][STORE_ID_MAX];
    CHECK(coll_insert(c, &bad, NULL, 1, ids, err, sizeof err) == STORE_INVALID, "bad length");
    struct collection_info in = {.name = "plain", .width = W};
    struct coll *plain = NULL;
    CHECK(index_create(ix, &in, &plain, err, sizeof err) == 0, "create plain: %s", err);
    if (!plain) return;
    bad.patches_len = 2 * W;
    CHECK(coll_insert(plain, &bad, NULL, 1, ids, err, sizeof err) == STORE_INVALID,
          "patches in a CLS collection");
    CHECK(patch_query_run(plain, &q, &r, err, sizeof err) == STORE_INVALID, "CLS collection");
    in.level = STORE_LEVEL_PATCH;
    in.metric = STORE_METRIC_L2;
    snprintf(in.name, sizeof in.name, "patch-l2");
    struct coll *l2 = NULL;
    CHECK(index_create(ix, &in, &l2, err, sizeof err) == STORE_INVALID, "patch needs cosine");
    coll_release(l2);
    coll_release(plain);
}

/* Late interaction with more query patches than one score block (256) and
 * with a single query patch; a grid over STORE_PATCHES_MAX is refused. */
static void test_big_grids(struct index *ix)
{
    enum { B = 3, G = 17, NP = G * G };
    static float p[B][NP * W], d[B][NP * W];
    static unsigned char enc[B][NP * W * 2];
    const int grid[B][2] = {{G, G}, {1, 1}, {5, 7}};
    struct collection_info in = {.name = "big", .width = W, .level = STORE_LEVEL_PATCH};
    struct coll *c = NULL;
    CHECK(index_create(ix, &in, &c, err, sizeof err) == 0, "create big: %s", err);
    if (!c) return;
    unsigned s = 5;
    struct item_in items[B];
    char ids[B][8], out[B][STORE_ID_MAX];
    float mean[W] = {1};
    for (int i = 0; i < B; i++) {
        const int n = grid[i][0] * grid[i][1];
        for (int q = 0; q < n; q++) {
            for (int k = 0; k < W; k++) p[i][q * W + k] = next_float(&s);
            normalise(p[i] + q * W, W);
        }
        patch_encode(p[i], (size_t)n, W, PATCH_F16, enc[i]);
        patch_decode(enc[i], (size_t)n, W, PATCH_F16, d[i]);
        snprintf(ids[i], sizeof ids[i], "b%d", i);
        items[i] = (struct item_in){.external_id = ids[i], .vector = mean, .dim = W,
                                    .patches = enc[i], .patches_len = (size_t)n * 2 * W,
                                    .grid_h = grid[i][0], .grid_w = grid[i][1]};
    }
    CHECK(coll_insert(c, items, NULL, B, out, err, sizeof err) == 0, "insert big: %s", err);
    for (int qi = 0; qi < 2; qi++) { /* queries: item 0 (289 patches), item 1 (one) */
        struct patch_query q = {.mode = PATCH_QUERY_IMAGE, .k = B, .id = ids[qi]};
        struct patch_result r;
        CHECK(patch_query_run(c, &q, &r, err, sizeof err) == 0, "big late: %s", err);
        const int nq = grid[qi][0] * grid[qi][1];
        for (int j = 0; j < r.n; j++) {
            const int i = r.hits[j].id[1] - '0', n = grid[i][0] * grid[i][1];
            double sum = 0, best = -2;
            int bp = 0;
            for (int a = 0; a < nq; a++) {
                double m = -2;
                for (int t = 0; t < n; t++) {
                    const double v = dot(d[qi] + a * W, d[i] + t * W);
                    if (v > m) m = v;
                    if (v > best) best = v, bp = t;
                }
                sum += m;
            }
            CHECK(fabs(r.hits[j].score - sum) < 1e-3 && r.hits[j].row == bp / grid[i][1] &&
                      r.hits[j].col == bp % grid[i][1],
                  "big late q%d hit %d (%s): %g (%d,%d) vs %g (%d,%d)", qi, j, r.hits[j].id,
                  r.hits[j].score, r.hits[j].row, r.hits[j].col, sum, bp / grid[i][1],
                  bp % grid[i][1]);
        }
        CHECK(r.n == B && !strcmp(r.hits[0].id, ids[qi]), "big late q%d finds itself", qi);
        patch_result_free(&r);
    }
    items[0].external_id = "huge";
    items[0].grid_h = 65;
    items[0].grid_w = 64;
    items[0].patches_len = 65u * 64 * 2 * W;
    CHECK(coll_insert(c, items, NULL, 1, out, err, sizeof err) == STORE_INVALID,
          "over STORE_PATCHES_MAX");
    coll_release(c);
}

/* A database written by schema v1 opens, keeps its items and gains v2. */
static void test_migration(void)
{
    char tmpl[] = "/tmp/test_patch_v1.XXXXXX";
    char *dir = mkdtemp(tmpl), path[256];
    if (!dir) return;
    snprintf(path, sizeof path, "%s/index.sqlite3", dir);
    sqlite3 *db = NULL;
    const float v[4] = {1, 0, 0, 0};
    sqlite3_open(path, &db);
    CHECK(sqlite3_exec(db,
                       "PRAGMA journal_mode = WAL;"
                       "CREATE TABLE collections (id INTEGER PRIMARY KEY, name TEXT NOT NULL"
                       " UNIQUE, model TEXT NOT NULL, fingerprint TEXT NOT NULL, width INTEGER"
                       " NOT NULL CHECK (width > 0), metric TEXT NOT NULL CHECK (metric IN"
                       " ('cosine', 'l2', 'dot')), store_images INTEGER NOT NULL CHECK"
                       " (store_images IN (0, 1)), created_at TEXT NOT NULL);"
                       "CREATE TABLE items (id INTEGER PRIMARY KEY, collection_id INTEGER NOT"
                       " NULL REFERENCES collections(id) ON DELETE CASCADE, external_id TEXT NOT"
                       " NULL, metadata TEXT, vector BLOB NOT NULL, image BLOB, UNIQUE"
                       " (collection_id, external_id));"
                       "INSERT INTO collections VALUES (1, 'old', '', '', 4, 'cosine', 0, 'x');"
                       "PRAGMA user_version = 1;",
                       NULL, NULL, NULL) == SQLITE_OK, "v1 schema: %s", sqlite3_errmsg(db));
    sqlite3_stmt *st = NULL;
    sqlite3_prepare_v2(db, "INSERT INTO items (collection_id, external_id, vector) VALUES"
                       " (1, 'a', ?1)", -1, &st, NULL);
    sqlite3_bind_blob(st, 1, v, sizeof v, SQLITE_STATIC);
    CHECK(sqlite3_step(st) == SQLITE_DONE, "v1 item");
    sqlite3_finalize(st);
    sqlite3_close(db);
    struct index *ix = NULL;
    CHECK(index_open(&ix, dir, err, sizeof err) == 0, "open v1: %s", err);
    struct coll *c = ix ? index_acquire(ix, "old") : NULL;
    CHECK(c && coll_level(c) == STORE_LEVEL_CLS, "v1 collection is CLS-level");
    if (c) {
        struct index_mirror *m = coll_read_begin(c);
        CHECK(mirror_count(m) == 1 && mirror_find(m, "a") == 0, "v1 item indexed");
        coll_read_end(c);
        coll_release(c);
    }
    index_close(ix);
    sqlite3_open(path, &db);
    sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL);
    CHECK(sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) == STORE_SCHEMA_VERSION,
          "now the current version");
    sqlite3_finalize(st);
    sqlite3_close(db);
    rm_rf(dir);
}

int main(void)
{
    test_codec();
    test_migration();
    unsigned s = 11;
    for (int i = 0; i < ITEMS; i++) {
        gh[i] = i % 3 ? 4 : 3;
        gw[i] = i % 3 ? 5 : 4;
        for (int p = 0; p < gh[i] * gw[i]; p++) {
            for (int k = 0; k < W; k++) raw[i][p * W + k] = next_float(&s);
            normalise(raw[i] + p * W, W);
        }
    }
    char tmpl[] = "/tmp/test_patch_query.XXXXXX";
    char *dir = mkdtemp(tmpl);
    CHECK(dir != NULL, "mkdtemp");
    if (!dir) return check_summary();
    struct index *ix = NULL;
    CHECK(index_open(&ix, dir, err, sizeof err) == 0, "open: %s", err);
    if (!ix) return check_summary();
    int present[ITEMS];
    for (int i = 0; i < ITEMS; i++) present[i] = 1;
    const enum patch_type types[2] = {PATCH_F16, PATCH_INT8};
    const char *names[2] = {"p16", "p8"};
    for (int t = 0; t < 2; t++) {
        struct coll *c = make(ix, names[t], types[t]);
        if (!c) continue;
        test_queries(c, present, 4);
        if (t == 1) test_refusals(ix, c);
        coll_release(c);
    }
    test_big_grids(ix);
    /* Reopen: the int8 collection (decoded values still in dec) answers the same. */
    index_close(ix);
    ix = NULL;
    CHECK(index_open(&ix, dir, err, sizeof err) == 0, "reopen: %s", err);
    struct coll *c = ix ? index_acquire(ix, "p8") : NULL;
    CHECK(c && coll_level(c) == STORE_LEVEL_PATCH, "p8 reopened as a patch collection");
    if (c) {
        test_queries(c, present, 4);
        /* A delete: the last item moves into the hole; ties then rank by mirror order, so
         * delete the last item, which keeps the order of the others. */
        CHECK(coll_delete(c, "img-23", err, sizeof err) == 0, "delete: %s", err);
        present[ITEMS - 1] = 0;
        test_queries(c, present, 4);
        struct patch_mirror *pm = coll_patches_begin(c);
        CHECK(patch_mirror_count(pm) == ITEMS - 1 &&
                  patch_mirror_bytes(pm) == patch_mirror_patches(pm) * (W + 4),
              "patch mirror size");
        coll_patches_end(c);
        coll_release(c);
    }
    index_close(ix);
    rm_rf(dir);
    return check_summary();
}
