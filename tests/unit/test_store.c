/* Unit tests of server/index/store.c: collections, items, all-or-nothing
 * batches, reopen, cascade, hostile strings, and durability under kill -9. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "rm_rf.h"
#include "index/store.h"

#define W 8

static char err[512];

static void fill(float *v, size_t n, float seed)
{
    for (size_t i = 0; i < n; i++) v[i] = seed + 0.25f * (float)i;
}

static struct collection_info coll(const char *name, int64_t width, enum store_metric m)
{
    struct collection_info c;
    memset(&c, 0, sizeof c);
    snprintf(c.name, sizeof c.name, "%s", name);
    snprintf(c.model, sizeof c.model, "vit-s");
    snprintf(c.fingerprint, sizeof c.fingerprint, "sha256:abc");
    c.width = width;
    c.metric = m;
    c.store_images = 1;
    return c;
}

/* --- scan collection ------------------------------------------------------- */

struct seen {
    size_t n;
    char ids[64][STORE_ID_MAX];
    float first[64];
    int meta_null[64];
    size_t dim_bad;
};

static int scan_cb(int64_t row_id, const char *ext, const float *v, size_t dim, const char *meta,
                   void *user)
{
    struct seen *s = user;
    (void)row_id;
    if (s->n >= 64) return 1;
    snprintf(s->ids[s->n], STORE_ID_MAX, "%s", ext);
    s->first[s->n] = v[0];
    s->meta_null[s->n] = meta == NULL;
    if (dim != W) s->dim_bad++;
    s->n++;
    return 0;
}

static int stop_cb(int64_t r, const char *e, const float *v, size_t d, const char *m, void *u)
{
    (void)r, (void)e, (void)v, (void)d, (void)m, (void)u;
    return 1;
}

static void test_collections(struct index_store *s)
{
    struct collection_info a = coll("alpha", W, STORE_METRIC_COSINE), got;
    int64_t ida = 0, idb = 0;
    CHECK(store_collection_create(s, &a, &ida, err, sizeof err) == 0, "%s", err);
    struct collection_info b = coll("beta", 4, STORE_METRIC_L2);
    b.store_images = 0;
    CHECK(store_collection_create(s, &b, &idb, err, sizeof err) == 0, "%s", err);
    CHECK(ida > 0 && idb > 0 && ida != idb, "ids %lld %lld", (long long)ida, (long long)idb);
    CHECK(store_collection_create(s, &a, NULL, err, sizeof err) == STORE_EXISTS, "dup: %s", err);
    CHECK(strstr(err, "alpha") != NULL, "message names it: %s", err);

    CHECK(store_collection_get(s, "alpha", &got, err, sizeof err) == 0, "%s", err);
    CHECK(got.id == ida && got.width == W && got.metric == STORE_METRIC_COSINE &&
              got.store_images == 1 && !strcmp(got.model, "vit-s") &&
              !strcmp(got.fingerprint, "sha256:abc") && strlen(got.created_at) == 24,
          "got %lld %lld %d %s", (long long)got.id, (long long)got.width, got.metric,
          got.created_at);
    CHECK(store_collection_get(s, "nope", &got, err, sizeof err) == STORE_NOT_FOUND, "%s", err);

    struct collection_info bad = coll("bad", 0, STORE_METRIC_DOT);
    CHECK(store_collection_create(s, &bad, NULL, err, sizeof err) == STORE_INVALID, "width 0");
    bad = coll("bad", 4, (enum store_metric)7);
    CHECK(store_collection_create(s, &bad, NULL, err, sizeof err) == STORE_INVALID, "metric");
    bad = coll("", 4, STORE_METRIC_DOT);
    CHECK(store_collection_create(s, &bad, NULL, err, sizeof err) == STORE_INVALID, "empty");

    struct collection_info *list;
    size_t n;
    CHECK(store_collection_list(s, &list, &n, err, sizeof err) == 0, "%s", err);
    CHECK(n == 2 && !strcmp(list[0].name, "alpha") && !strcmp(list[1].name, "beta") &&
              list[1].metric == STORE_METRIC_L2 && list[1].store_images == 0,
          "list n=%zu", n);
    free(list);

    CHECK(store_collection_delete(s, "beta", err, sizeof err) == 0, "%s", err);
    CHECK(store_collection_delete(s, "beta", err, sizeof err) == STORE_NOT_FOUND, "%s", err);
    CHECK(store_collection_get(s, "beta", &got, err, sizeof err) == STORE_NOT_FOUND, "gone");
    int64_t cnt;
    CHECK(store_collection_count(s, idb, &cnt, err, sizeof err) == STORE_NOT_FOUND, "count");
    CHECK(store_collection_count(s, ida, &cnt, err, sizeof err) == 0 && cnt == 0, "count 0");

    enum store_metric m;
    CHECK(store_metric_parse("dot", &m) == 0 && m == STORE_METRIC_DOT, "parse");
    CHECK(store_metric_parse("DOT", &m) == -1, "parse case");
}

/* Schema v4: the mirror form and ANN description round-trip, and every
 * committed write (never a failed one) increments the generation. */
static void test_generation(struct index_store *s)
{
    struct collection_info a = coll("gen", 4, STORE_METRIC_DOT), got;
    a.mirror = STORE_MIRROR_INT8;
    snprintf(a.ann, sizeof a.ann, "{\"kind\":\"hnsw\",\"width\":2}");
    int64_t id = 0, g0 = -1, g = -1;
    CHECK(store_collection_create(s, &a, &id, err, sizeof err) == 0, "%s", err);
    CHECK(store_collection_get(s, "gen", &got, err, sizeof err) == 0 &&
              got.mirror == STORE_MIRROR_INT8 && !strcmp(got.ann, a.ann) && got.generation == 0,
          "v4 fields: mirror %d ann '%s' gen %lld", (int)got.mirror, got.ann,
          (long long)got.generation);
    CHECK(store_collection_generation(s, id, &g0, err, sizeof err) == 0 && g0 == 0, "gen 0");
    const float v[4] = {1, 2, 3, 4};
    struct item_in it = {.external_id = "g1", .vector = v, .dim = 4};
    char ids[1][STORE_ID_MAX];
    CHECK(store_items_insert(s, id, &it, 1, ids, err, sizeof err) == 0, "%s", err);
    CHECK(store_collection_generation(s, id, &g, err, sizeof err) == 0 && g == 1, "gen %lld",
          (long long)g);
    CHECK(store_items_insert(s, id, &it, 1, ids, err, sizeof err) == STORE_CONFLICT, "dup");
    CHECK(store_collection_generation(s, id, &g, err, sizeof err) == 0 && g == 1,
          "a failed write keeps gen: %lld", (long long)g);
    const char *del[1] = {"g1"};
    size_t n = 0;
    CHECK(store_items_delete(s, id, del, 1, &n, err, sizeof err) == 0 && n == 1, "%s", err);
    CHECK(store_collection_generation(s, id, &g, err, sizeof err) == 0 && g == 2, "gen %lld",
          (long long)g);
    CHECK(store_collection_set_ann(s, id, NULL, err, sizeof err) == 0, "%s", err);
    CHECK(store_collection_get(s, "gen", &got, err, sizeof err) == 0 && got.ann[0] == 0 &&
              got.generation == 2,
          "ann cleared '%s'", got.ann);
    CHECK(store_collection_set_ann(s, 987654, "{}", err, sizeof err) == STORE_NOT_FOUND, "404");
    enum store_mirror m;
    CHECK(store_mirror_parse("f16", &m) == 0 && m == STORE_MIRROR_F16 &&
              store_mirror_parse("int4", &m) == -1,
          "mirror names");
    struct collection_info bad = coll("badmirror", 4, STORE_METRIC_DOT);
    bad.mirror = (enum store_mirror)7;
    CHECK(store_collection_create(s, &bad, NULL, err, sizeof err) == STORE_INVALID, "mirror 7");
    CHECK(store_collection_delete(s, "gen", err, sizeof err) == 0, "%s", err);
}

static void test_items(struct index_store *s, int64_t *cid_out)
{
    struct collection_info c;
    CHECK(store_collection_get(s, "alpha", &c, err, sizeof err) == 0, "%s", err);
    const int64_t cid = c.id;
    *cid_out = cid;
    float v[6][W];
    for (int i = 0; i < 6; i++) fill(v[i], W, (float)i);
    const unsigned char img[] = {0x89, 'P', 'N', 'G', 0, 1, 2, 0xff};

    struct item_in in[3] = {
        {.external_id = "a", .metadata = "{\"k\":1}", .vector = v[0], .dim = W,
         .image = img, .image_len = sizeof img},
        {.external_id = NULL, .metadata = NULL, .vector = v[1], .dim = W},
        {.external_id = "c", .metadata = "{}", .vector = v[2], .dim = W},
    };
    char ids[3][STORE_ID_MAX];
    CHECK(store_items_insert(s, cid, in, 3, ids, err, sizeof err) == 0, "%s", err);
    CHECK(!strcmp(ids[0], "a") && !strcmp(ids[2], "c"), "ids %s %s", ids[0], ids[2]);
    CHECK(strlen(ids[1]) == STORE_GEN_ID_LEN && strspn(ids[1], "0123456789abcdef") == 16,
          "generated %s", ids[1]);

    /* A second batch of generated ids: all distinct. */
    struct item_in gen[2] = {{.vector = v[3], .dim = W}, {.vector = v[4], .dim = W}};
    char gids[2][STORE_ID_MAX];
    CHECK(store_items_insert(s, cid, gen, 2, gids, err, sizeof err) == 0, "%s", err);
    CHECK(strcmp(gids[0], gids[1]) && strcmp(gids[0], ids[1]) && strcmp(gids[1], ids[1]),
          "distinct generated ids");

    int64_t cnt = 0;
    CHECK(store_collection_count(s, cid, &cnt, err, sizeof err) == 0 && cnt == 5, "cnt %lld",
          (long long)cnt);

    /* Duplicates within the batch and against stored ids: nothing inserted. */
    char sentinel[2][STORE_ID_MAX] = {"untouched", "untouched"};
    struct item_in dup_batch[2] = {{.external_id = "x", .vector = v[5], .dim = W},
                                   {.external_id = "x", .vector = v[5], .dim = W}};
    CHECK(store_items_insert(s, cid, dup_batch, 2, sentinel, err, sizeof err) == STORE_CONFLICT,
          "in-batch dup: %s", err);
    CHECK(strstr(err, "'x'") && strstr(err, "batch"), "message: %s", err);
    CHECK(!strcmp(sentinel[0], "untouched"), "out_ids untouched on failure");
    struct item_in dup_stored[2] = {{.external_id = "new1", .vector = v[5], .dim = W},
                                    {.external_id = "c", .vector = v[5], .dim = W}};
    CHECK(store_items_insert(s, cid, dup_stored, 2, sentinel, err, sizeof err) ==
              STORE_CONFLICT, "stored dup: %s", err);
    CHECK(strstr(err, "'c'") != NULL, "message: %s", err);
    struct item_out o;
    CHECK(store_item_get(s, cid, "new1", &o, err, sizeof err) == STORE_NOT_FOUND,
          "all or nothing");
    CHECK(store_item_get(s, cid, "x", &o, err, sizeof err) == STORE_NOT_FOUND, "all or nothing");

    /* Wrong length, NaN, unknown collection. */
    struct item_in wrong[2] = {{.external_id = "w1", .vector = v[5], .dim = W},
                               {.external_id = "w2", .vector = v[5], .dim = W - 1}};
    CHECK(store_items_insert(s, cid, wrong, 2, sentinel, err, sizeof err) == STORE_INVALID,
          "wrong length: %s", err);
    CHECK(strstr(err, "item 1") != NULL, "message: %s", err);
    float nanv[W];
    fill(nanv, W, 0);
    nanv[3] = NAN;
    struct item_in nanin = {.external_id = "n", .vector = nanv, .dim = W};
    CHECK(store_items_insert(s, cid, &nanin, 1, sentinel, err, sizeof err) == STORE_INVALID,
          "nan: %s", err);
    CHECK(store_items_insert(s, 999999, in, 1, sentinel, err, sizeof err) == STORE_NOT_FOUND,
          "unknown collection");
    CHECK(store_collection_count(s, cid, &cnt, err, sizeof err) == 0 && cnt == 5, "still 5");

    /* Get. */
    CHECK(store_item_get(s, cid, "a", &o, err, sizeof err) == 0, "%s", err);
    CHECK(o.dim == W && o.vector && !memcmp(o.vector, v[0], sizeof v[0]), "vector");
    CHECK(o.metadata && !strcmp(o.metadata, "{\"k\":1}"), "metadata");
    CHECK(o.image_len == sizeof img && !memcmp(o.image, img, sizeof img), "image");
    CHECK(!strcmp(o.external_id, "a") && o.row_id > 0, "id");
    store_item_free(&o);
    CHECK(store_item_get(s, cid, ids[1], &o, err, sizeof err) == 0, "%s", err);
    CHECK(o.metadata == NULL && o.image == NULL && !memcmp(o.vector, v[1], sizeof v[1]),
          "null metadata");
    store_item_free(&o);

    /* Scan returns exactly what is stored, in insertion order. */
    static struct seen seen;
    memset(&seen, 0, sizeof seen);
    CHECK(store_items_scan(s, cid, scan_cb, &seen, err, sizeof err) == 0, "%s", err);
    CHECK(seen.n == 5 && seen.dim_bad == 0, "scan n=%zu", seen.n);
    const char *want[5] = {"a", ids[1], "c", gids[0], gids[1]};
    for (int i = 0; i < 5 && i < (int)seen.n; i++) {
        CHECK(!strcmp(seen.ids[i], want[i]), "scan id %d: %s", i, seen.ids[i]);
        CHECK(seen.first[i] == (float)i, "scan vector %d", i);
    }
    CHECK(seen.meta_null[1] == 1 && seen.meta_null[0] == 0, "scan metadata");
    CHECK(store_items_scan(s, cid, stop_cb, NULL, err, sizeof err) == STORE_ERR, "stop");

    /* Delete. */
    const char *del[3] = {"a", "missing", gids[0]};
    size_t deleted = 0;
    CHECK(store_items_delete(s, cid, del, 3, &deleted, err, sizeof err) == 0 && deleted == 2,
          "deleted %zu: %s", deleted, err);
    CHECK(store_item_get(s, cid, "a", &o, err, sizeof err) == STORE_NOT_FOUND, "a deleted");
    CHECK(store_collection_count(s, cid, &cnt, err, sizeof err) == 0 && cnt == 3, "cnt 3");
    /* A deleted id can be reused. */
    CHECK(store_items_insert(s, cid, in, 1, sentinel, err, sizeof err) == 0, "%s", err);
    CHECK(store_collection_count(s, cid, &cnt, err, sizeof err) == 0 && cnt == 4, "cnt 4");
    CHECK(store_items_insert(s, cid, in, 0, sentinel, err, sizeof err) == 0, "empty batch");
}

static const char hostile_name[] = "it's \"q\"; DROP TABLE items;-- \xc3\xa9\xe6\x97\xa5\xf0\x9f\x98\x80";
static const char hostile_id[] = "id'\"\\%_*?\x01\x7f\t\n\xe2\x80\xae end";
static const char hostile_meta[] =
    "{\"k\":\"it's \\\"quoted\\\" '); DELETE FROM items;--\",\"u\":\"\xe6\x97\xa5\"}";

static void test_hostile(struct index_store *s, int64_t *hid)
{
    struct collection_info c = coll(hostile_name, W, STORE_METRIC_DOT), got;
    CHECK(store_collection_create(s, &c, hid, err, sizeof err) == 0, "%s", err);
    CHECK(store_collection_get(s, hostile_name, &got, err, sizeof err) == 0 &&
              !strcmp(got.name, hostile_name), "name verbatim");
    float v[W];
    fill(v, W, 42);
    struct item_in in = {.external_id = hostile_id, .metadata = hostile_meta, .vector = v,
                         .dim = W};
    char ids[1][STORE_ID_MAX];
    CHECK(store_items_insert(s, *hid, &in, 1, ids, err, sizeof err) == 0, "%s", err);
    CHECK(!strcmp(ids[0], hostile_id), "id verbatim");
    char sentinel[1][STORE_ID_MAX];
    CHECK(store_items_insert(s, *hid, &in, 1, sentinel, err, sizeof err) == STORE_CONFLICT,
          "dup hostile");
    CHECK(!strchr(err, '\n') && !strchr(err, '\x01'), "message stays one printable line: %s",
          err);
    struct item_out o;
    CHECK(store_item_get(s, *hid, hostile_id, &o, err, sizeof err) == 0, "%s", err);
    CHECK(!strcmp(o.external_id, hostile_id) && o.metadata && !strcmp(o.metadata, hostile_meta),
          "verbatim");
    store_item_free(&o);
    CHECK(store_item_get(s, *hid, "id'", &o, err, sizeof err) == STORE_NOT_FOUND, "no prefix");
}

static void test_reopen_and_cascade(const char *dir, int64_t cid, int64_t hid)
{
    struct index_store *s;
    CHECK(store_open(&s, dir, err, sizeof err) == 0, "reopen: %s", err);
    if (!s) return;
    CHECK(store_integrity_check(s, err, sizeof err) == 0, "%s", err);
    int64_t cnt = 0;
    CHECK(store_collection_count(s, cid, &cnt, err, sizeof err) == 0 && cnt == 4, "cnt %lld",
          (long long)cnt);
    struct item_out o;
    CHECK(store_item_get(s, cid, "c", &o, err, sizeof err) == 0, "%s", err);
    store_item_free(&o);
    CHECK(store_item_get(s, hid, hostile_id, &o, err, sizeof err) == 0 &&
              !strcmp(o.metadata, hostile_meta), "hostile after reopen");
    store_item_free(&o);
    struct collection_info *list;
    size_t n;
    CHECK(store_collection_list(s, &list, &n, err, sizeof err) == 0 && n == 2, "n=%zu", n);
    free(list);

    /* Cascade: deleting alpha removes its items; re-creating it starts empty. */
    CHECK(store_collection_delete(s, "alpha", err, sizeof err) == 0, "%s", err);
    CHECK(store_item_get(s, cid, "c", &o, err, sizeof err) == STORE_NOT_FOUND, "cascade");
    struct collection_info a = coll("alpha", W, STORE_METRIC_COSINE);
    int64_t nid;
    CHECK(store_collection_create(s, &a, &nid, err, sizeof err) == 0, "%s", err);
    CHECK(store_collection_count(s, nid, &cnt, err, sizeof err) == 0 && cnt == 0,
          "no orphan items: %lld", (long long)cnt);
    CHECK(store_collection_count(s, hid, &cnt, err, sizeof err) == 0 && cnt == 1, "other kept");
    CHECK(store_integrity_check(s, err, sizeof err) == 0, "%s", err);
    store_close(s);
}

/* --- durability under kill -9 --------------------------------------------- */

#define BATCH 4

static void child_loop(const char *dir, int64_t cid, int fd, long first)
{
    char e[512];
    struct index_store *s;
    if (store_open(&s, dir, e, sizeof e)) _exit(2);
    float v[W];
    for (long b = first;; b++) {
        char names[BATCH][32];
        struct item_in in[BATCH];
        char ids[BATCH][STORE_ID_MAX];
        for (int j = 0; j < BATCH; j++) {
            snprintf(names[j], sizeof names[j], "b%ld-%d", b, j);
            fill(v, W, (float)b);
            in[j] = (struct item_in){.external_id = names[j], .metadata = "{\"b\":1}",
                                     .vector = v, .dim = W};
        }
        if (store_items_insert(s, cid, in, BATCH, ids, e, sizeof e)) _exit(3);
        char line[256];
        int len = snprintf(line, sizeof line, "%ld", b);
        for (int j = 0; j < BATCH; j++) len += snprintf(line + len, sizeof line - (size_t)len,
                                                        " %s", ids[j]);
        line[len++] = '\n';
        if (write(fd, line, (size_t)len) != len) _exit(4);
    }
}

struct batch_count {
    long first, span;
    unsigned char *count; /* items seen per batch number */
    size_t bad;
};

static int count_cb(int64_t r, const char *ext, const float *v, size_t d, const char *m, void *u)
{
    struct batch_count *bc = u;
    long b;
    int j;
    (void)r, (void)d, (void)m;
    if (sscanf(ext, "b%ld-%d", &b, &j) != 2 || b < bc->first || b >= bc->first + bc->span ||
        v[0] != (float)b) {
        bc->bad++;
        return 0;
    }
    bc->count[b - bc->first]++;
    return 0;
}

static void test_durability(const char *dir)
{
    struct index_store *s;
    CHECK(store_open(&s, dir, err, sizeof err) == 0, "%s", err);
    if (!s) return;
    struct collection_info c = coll("durable", W, STORE_METRIC_COSINE);
    int64_t cid = 0;
    CHECK(store_collection_create(s, &c, &cid, err, sizeof err) == 0, "%s", err);
    store_close(s); /* no SQLite connection may cross fork() */

    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    printf("durability seed %u\n", seed);
    srand(seed);
    const long span = 1000000;
    long total_acked = 0;
    for (int round = 0; round < 6; round++) {
        int p[2];
        if (pipe(p)) {
            CHECK(0, "pipe: %s", strerror(errno));
            return;
        }
        const long first = (long)round * span;
        pid_t pid = fork();
        if (pid == 0) {
            close(p[0]);
            child_loop(dir, cid, p[1], first);
        }
        close(p[1]);
        /* Kill at a random moment: 20..300 ms in (opening, mid-commit, between). */
        struct timespec ts = {0, (long)(20 + rand() % 280) * 1000000L};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int status = 0;
        waitpid(pid, &status, 0);
        CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "child ended otherwise: %d",
              status);

        /* Everything the child wrote to the pipe was acknowledged. */
        size_t cap = 1 << 16, len = 0;
        char *buf = malloc(cap);
        ssize_t k;
        while (buf && (k = read(p[0], buf + len, cap - len - 1)) > 0) {
            len += (size_t)k;
            if (cap - len < 2) {
                char *nb = realloc(buf, cap *= 2);
                if (!nb) break;
                buf = nb;
            }
        }
        close(p[0]);
        if (!buf) return;
        buf[len] = '\0';

        CHECK(store_open(&s, dir, err, sizeof err) == 0, "reopen after kill: %s", err);
        if (!s) {
            free(buf);
            return;
        }
        CHECK(store_integrity_check(s, err, sizeof err) == 0, "round %d: %s", round, err);
        long acked = 0, last = first - 1;
        size_t missing = 0;
        for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
            char *sp = strchr(line, ' ');
            last = strtol(line, NULL, 10);
            acked++;
            for (char *id = sp ? strtok_r(sp + 1, " ", &sp) : NULL; id;
                 id = strtok_r(NULL, " ", &sp)) {
                struct item_out o;
                if (store_item_get(s, cid, id, &o, err, sizeof err) != 0) missing++;
                store_item_free(&o);
            }
        }
        CHECK(missing == 0, "round %d: %zu acknowledged items missing", round, missing);
        CHECK(acked == 0 || last == first + acked - 1, "round %d: acked lines %ld, last %ld",
              round, acked, last - first);

        /* No partial batch: each batch number has 0 or BATCH items; at most one
         * batch past the last acknowledged one committed (its ack was cut off). */
        struct batch_count bc = {.first = first, .span = acked + 2};
        bc.count = calloc((size_t)bc.span, 1);
        CHECK(store_items_scan(s, cid, count_cb, &bc, err, sizeof err) == 0, "%s", err);
        size_t partial = 0, past = 0;
        for (long b = 0; b < bc.span; b++) {
            if (bc.count[b] != 0 && bc.count[b] != BATCH) partial++;
            if (b >= acked && bc.count[b]) past++;
        }
        free(bc.count);
        /* Items of earlier rounds are out of this round's range and counted as bad. */
        int64_t total = 0;
        store_collection_count(s, cid, &total, err, sizeof err);
        CHECK(partial == 0, "round %d: %zu partial batches", round, partial);
        CHECK(past <= 1, "round %d: %zu batches beyond the acknowledged ones", round, past);
        CHECK((int64_t)bc.bad == total - (int64_t)(acked + (long)past) * BATCH,
              "round %d: %zu stray items", round, bc.bad);
        total_acked += acked;
        store_close(s);
        free(buf);
    }
    printf("durability: %ld acknowledged batches over 6 kills\n", total_acked);
    CHECK(total_acked > 0, "the child never acknowledged a batch");
}

/* The database and its -wal/-shm are owner-only whatever the umask, and an
 * index left readable by an older version is tightened on open. */
static void test_permissions(void)
{
    char tmpl[] = "/tmp/test_store_perm.XXXXXX";
    char *dir = mkdtemp(tmpl);
    CHECK(dir != NULL, "mkdtemp");
    if (!dir) return;
    const mode_t old_mask = umask(022);
    char path[PATH_MAX], side[PATH_MAX + 8];
    snprintf(path, sizeof path, "%s/index.sqlite3", dir);
    const int fd = open(path, O_CREAT | O_WRONLY, 0644);
    CHECK(fd >= 0, "pre-create: %s", strerror(errno));
    if (fd >= 0) close(fd);
    struct index_store *s = NULL;
    CHECK(store_open(&s, dir, err, sizeof err) == 0, "open over a 0644 file: %s", err);
    struct collection_info ci = coll("perm", 4, STORE_METRIC_DOT);
    int64_t cid = 0;
    CHECK(s && store_collection_create(s, &ci, &cid, err, sizeof err) == 0, "write: %s", err);
    const char *names[] = {"", "-wal", "-shm"};
    for (int i = 0; i < 3; i++) {
        snprintf(side, sizeof side, "%s%s", path, names[i]);
        struct stat st;
        CHECK(stat(side, &st) == 0, "index.sqlite3%s exists", names[i]);
        CHECK((st.st_mode & 0777) == 0600, "index.sqlite3%s mode %o, want 600", names[i],
              (unsigned)(st.st_mode & 0777));
    }
    store_close(s);
    umask(old_mask);
    rm_rf(dir);
}

int main(void)
{
    char tmpl[] = "/tmp/test_store.XXXXXX";
    char *dir = mkdtemp(tmpl);
    CHECK(dir != NULL, "mkdtemp: %s", strerror(errno));
    if (!dir) return check_summary();

    struct index_store *s = NULL;
    CHECK(store_open(&s, "", err, sizeof err) != 0, "empty dir refused");
    CHECK(store_open(&s, "/proc/nonexistent/x", err, sizeof err) != 0 && s == NULL,
          "bad dir: %s", err);
    CHECK(store_open(&s, dir, err, sizeof err) == 0, "%s", err);
    if (!s) return check_summary();
    int64_t cid = 0, hid = 0;
    test_collections(s);
    test_generation(s);
    test_items(s, &cid);
    test_hostile(s, &hid);
    CHECK(store_integrity_check(s, err, sizeof err) == 0, "%s", err);
    store_close(s);
    test_reopen_and_cascade(dir, cid, hid);
    rm_rf(dir);
    test_permissions();

    char tmpl2[] = "/tmp/test_store_kill.XXXXXX";
    char *dir2 = mkdtemp(tmpl2);
    CHECK(dir2 != NULL, "mkdtemp");
    if (dir2) {
        test_durability(dir2);
        rm_rf(dir2);
    }
    return check_summary();
}
