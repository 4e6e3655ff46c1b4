/* Collections at run time: SQLite plus per-collection search mirrors; see
 * collections.h for the locking rules. */
#include "index/collections.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "errors.h"
#include "index/hnsw.h"

struct coll {
    struct collection_info info; /* fingerprint changes only under swap (exclusive) */
    struct index_mirror *mirror; /* replaced only under swap (exclusive) */
    struct patch_mirror *patches; /* level PATCH only (a patch collection has no reembed) */
    pthread_mutex_t write_mu;
    pthread_rwlock_t swap;
    char job[COLL_JOB_ID_MAX];   /* id of the reembed job writing it, "" when none (write_mu) */
    atomic_long refs;
    struct index *ix;
    bool dropped;                /* (write_mu) */
    /* ANN (collections.h). The graph is replaced under write_mu and swap
     * (exclusive), so readers use it under swap shared, writers under write_mu. */
    bool ann_on;                 /* (write_mu) a description is set */
    struct coll_ann_desc ann_d;  /* changed like ann */
    struct hnsw *ann;            /* the ready graph, NULL when none */
    uint64_t ann_epoch;          /* (write_mu) a build whose epoch is stale is dropped */
    bool ann_building, ann_pending; /* (write_mu) pending: build again when this one ends */
    pthread_cond_t ann_cv;       /* with write_mu: a build ended */
    size_t ann_changes;          /* (write_mu) since the last save */
    double ann_last_save;        /* (write_mu) */
    int64_t ann_saved_gen;       /* (write_mu) */
    _Atomic int64_t ann_done, ann_total;
    _Atomic int ann_cancel;
    char ann_error[256];         /* (write_mu) */
};

struct index {
    struct index_store *store;
    pthread_mutex_t mu;  /* guards the array below */
    struct coll **colls; /* each holds one reference for the index */
    size_t n, cap;
    char *dir;           /* DATA_DIR/ann */
    pthread_mutex_t bmu; /* guards builders, closing */
    pthread_cond_t bcv;
    int builders;
    bool closing, saver_started;
    pthread_t saver;
};

static void ann_start_build(struct coll *c, bool try_load, coll_ann_progress_fn progress,
                            coll_ann_done_fn done, void *ctx);
static void ann_after_write(struct coll *c, size_t changes);
static void *ann_saver(void *arg);
static int build_threads(void);

static void payload_free(void *p) { json_decref(p); }

/* Builds a mirror of one collection from SQLite. */
struct build_ctx {
    struct index_mirror *m;
    char err[ERR_LEN];
};

static int build_row(int64_t row_id, const char *external_id, const float *vector, size_t dim,
                     const char *metadata, void *user)
{
    (void)dim;
    struct build_ctx *b = user;
    json_t *meta = metadata ? json_loads(metadata, 0, NULL) : NULL;
    void *payload = meta;
    if (mirror_add_payloads(b->m, 1, &row_id, &external_id, vector, &payload, b->err,
                            sizeof b->err)) {
        json_decref(meta);
        return -1;
    }
    return 0;
}

/* int8 mirrors: a first scan sets the ranges from every row. */
static int fit_row(int64_t row_id, const char *external_id, const float *vector, size_t dim,
                   const char *metadata, void *user)
{
    (void)row_id, (void)external_id, (void)dim, (void)metadata;
    struct build_ctx *b = user;
    return mirror_fit(b->m, 1, vector, b->err, sizeof b->err) ? -1 : 0;
}

/* An empty mirror for a collection: in its form, and without the funnel's
 * prefix copy when an ANN graph gives its shortlists (96 bytes a row at 768). */
static struct index_mirror *new_mirror(const struct collection_info *info, char *err,
                                       size_t errlen)
{
    struct index_mirror *m = mirror_create_form((int)info->width, info->metric, 0, info->mirror,
                                                err, errlen);
    if (m && info->ann[0] && mirror_drop_prefix(m, err, errlen)) {
        mirror_free(m);
        return NULL;
    }
    return m;
}

static struct index_mirror *build_mirror(struct index_store *store,
                                         const struct collection_info *info, char *err,
                                         size_t errlen)
{
    struct build_ctx b = {.m = new_mirror(info, err, errlen)};
    if (!b.m) return NULL;
    mirror_set_payload_free(b.m, payload_free);
    if ((info->mirror == STORE_MIRROR_INT8 &&
         store_items_scan(store, info->id, fit_row, &b, err, errlen)) ||
        store_items_scan(store, info->id, build_row, &b, err, errlen)) {
        if (b.err[0]) set_err(err, errlen, "collection '%s': %s", info->name, b.err);
        mirror_free(b.m);
        return NULL;
    }
    return b.m;
}

static int build_patch_row(int64_t row_id, const char *external_id, int grid_h, int grid_w,
                           const void *patches, size_t len, const uint8_t *labels, void *user)
{
    (void)len; /* checked by the scan against the grid */
    struct patch_mirror *pm = user;
    char err[ERR_LEN];
    return patch_mirror_add(pm, 1, &row_id, &external_id, &grid_h, &grid_w, &patches, &labels,
                            err, sizeof err);
}

/* The patch mirror of a patch collection from SQLite, *out NULL for CLS ones. */
static int build_patches(struct index_store *store, const struct collection_info *info,
                         bool scan, struct patch_mirror **out, char *err, size_t errlen)
{
    *out = NULL;
    if (info->level != STORE_LEVEL_PATCH) return 0;
    struct patch_mirror *pm = patch_mirror_create((int)info->width,
                                                  (enum patch_type)info->patch_type, err, errlen);
    if (!pm) return STORE_ERR;
    if (scan && store_patches_scan(store, info->id, build_patch_row, pm, err, errlen)) {
        patch_mirror_free(pm);
        return STORE_ERR;
    }
    *out = pm;
    return 0;
}

static struct coll *coll_new(struct index *ix, const struct collection_info *info,
                             struct index_mirror *m, bool scan, char *err, size_t errlen)
{
    struct patch_mirror *pm;
    if (build_patches(ix->store, info, scan, &pm, err, errlen)) return NULL;
    struct coll *c = calloc(1, sizeof *c);
    if (!c) {
        patch_mirror_free(pm);
        set_err(err, errlen, "index: out of memory");
        return NULL;
    }
    c->info = *info;
    c->mirror = m;
    c->patches = pm;
    c->ix = ix;
    atomic_init(&c->refs, 1);
    pthread_mutex_init(&c->write_mu, NULL);
    pthread_rwlock_init(&c->swap, NULL);
    pthread_cond_init(&c->ann_cv, NULL);
    c->ann_saved_gen = -1;
    if (info->ann[0] && info->level == STORE_LEVEL_CLS) {
        json_t *j = json_loads(info->ann, 0, NULL);
        char why[ERR_LEN];
        if (j && !coll_ann_parse(j, info->width, &c->ann_d, why, sizeof why))
            c->ann_on = true;
        else
            fprintf(stderr, "index: collection '%s': ignoring its ANN description %s\n",
                    info->name, info->ann);
        json_decref(j);
    }
    return c;
}

/* A new reference to c, whose holder already has one. */
static void coll_retain(struct coll *c)
{
    const long prev = atomic_fetch_add(&c->refs, 1);
    assert(prev > 0);
    (void)prev;
}

void coll_release(struct coll *c)
{
    if (!c) return;
    const long prev = atomic_fetch_sub(&c->refs, 1);
    assert(prev > 0); /* a release without a matching acquire */
    if (prev != 1) return;
    mirror_free(c->mirror);
    patch_mirror_free(c->patches);
    hnsw_free(c->ann);
    pthread_cond_destroy(&c->ann_cv);
    pthread_mutex_destroy(&c->write_mu);
    pthread_rwlock_destroy(&c->swap);
    free(c);
}

static int append(struct index *ix, struct coll *c)
{
    if (ix->n == ix->cap) {
        const size_t cap = ix->cap ? 2 * ix->cap : 16;
        struct coll **p = realloc(ix->colls, cap * sizeof *p);
        if (!p) return -1;
        ix->colls = p;
        ix->cap = cap;
    }
    ix->colls[ix->n++] = c;
    return 0;
}

int index_open(struct index **out, const char *data_dir, char *err, size_t errlen)
{
    *out = NULL;
    struct index *ix = calloc(1, sizeof *ix);
    if (!ix) return set_err_code(err, errlen, STORE_ERR, "index: out of memory");
    pthread_mutex_init(&ix->mu, NULL);
    pthread_mutex_init(&ix->bmu, NULL);
    pthread_cond_init(&ix->bcv, NULL);
    int rc = store_open(&ix->store, data_dir, err, errlen);
    if (rc) {
        index_close(ix);
        return rc;
    }
    const size_t dl = strlen(data_dir) + 8;
    if (!(ix->dir = malloc(dl))) {
        index_close(ix);
        return set_err_code(err, errlen, STORE_ERR, "index: out of memory");
    }
    snprintf(ix->dir, dl, "%s/ann", data_dir);
    if (mkdir(ix->dir, 0755) && errno != EEXIST) {
        const int e = errno;
        index_close(ix);
        return set_err_code(err, errlen, STORE_ERR, "index: cannot create %s/ann: %s", data_dir,
                            strerror(e));
    }
    struct collection_info *infos = NULL;
    size_t n = 0;
    if ((rc = store_collection_list(ix->store, &infos, &n, err, errlen))) {
        index_close(ix);
        return rc;
    }
    for (size_t i = 0; i < n; i++) {
        struct index_mirror *m = build_mirror(ix->store, &infos[i], err, errlen);
        struct coll *c = m ? coll_new(ix, &infos[i], m, true, err, errlen) : NULL;
        if (!c || append(ix, c)) {
            if (m && !c) mirror_free(m);
            if (c) set_err(err, errlen, "index: out of memory");
            coll_release(c);
            free(infos);
            index_close(ix);
            return STORE_ERR;
        }
    }
    free(infos);
    for (size_t i = 0; i < ix->n; i++) {
        struct coll *c = ix->colls[i];
        pthread_mutex_lock(&c->write_mu);
        if (c->ann_on) ann_start_build(c, true, NULL, NULL, NULL);
        pthread_mutex_unlock(&c->write_mu);
    }
    ix->saver_started = !pthread_create(&ix->saver, NULL, ann_saver, ix);
    *out = ix;
    return 0;
}

static void ann_save_locked(struct coll *c);

void index_close(struct index *ix)
{
    if (!ix) return;
    pthread_mutex_lock(&ix->bmu);
    ix->closing = true;
    pthread_cond_broadcast(&ix->bcv);
    pthread_mutex_unlock(&ix->bmu);
    if (ix->saver_started) pthread_join(ix->saver, NULL);
    /* Builds stop early (a restart builds again); then every changed graph is saved. */
    for (size_t i = 0; i < ix->n; i++) {
        pthread_mutex_lock(&ix->colls[i]->write_mu);
        ix->colls[i]->ann_pending = false;
        atomic_store(&ix->colls[i]->ann_cancel, 1);
        pthread_mutex_unlock(&ix->colls[i]->write_mu);
    }
    pthread_mutex_lock(&ix->bmu);
    while (ix->builders) pthread_cond_wait(&ix->bcv, &ix->bmu);
    pthread_mutex_unlock(&ix->bmu);
    for (size_t i = 0; i < ix->n; i++) {
        struct coll *c = ix->colls[i];
        pthread_mutex_lock(&c->write_mu);
        if (c->ann && (c->ann_changes || c->ann_saved_gen < 0)) ann_save_locked(c);
        pthread_mutex_unlock(&c->write_mu);
    }
    for (size_t i = 0; i < ix->n; i++) coll_release(ix->colls[i]);
    free(ix->colls);
    store_close(ix->store);
    pthread_mutex_destroy(&ix->mu);
    pthread_mutex_destroy(&ix->bmu);
    pthread_cond_destroy(&ix->bcv);
    free(ix->dir);
    free(ix);
}

struct index_store *index_store(struct index *ix) { return ix->store; }

int index_create(struct index *ix, const struct collection_info *in, struct coll **out,
                 char *err, size_t errlen)
{
    *out = NULL;
    pthread_mutex_lock(&ix->mu); /* so that the store and the array agree on names */
    struct collection_info info = *in;
    int rc = store_collection_create(ix->store, in, &info.id, err, errlen);
    if (!rc) rc = store_collection_get(ix->store, in->name, &info, err, errlen);
    struct index_mirror *m = NULL;
    struct coll *c = NULL;
    if (!rc) {
        m = new_mirror(&info, err, errlen);
        c = m ? coll_new(ix, &info, m, false, err, errlen) : NULL;
        if (m) mirror_set_payload_free(m, payload_free);
        if (!c || append(ix, c)) {
            if (!c) mirror_free(m);
            coll_release(c);
            /* Leave no collection behind that the index does not know. */
            char ignored[ERR_LEN];
            store_collection_delete(ix->store, in->name, ignored, sizeof ignored);
            rc = set_err_code(err, errlen, STORE_ERR, "index: out of memory");
        }
    }
    if (!rc && c->ann_on) { /* an empty graph is ready at once */
        char e2[ERR_LEN];
        struct hnsw *g = hnsw_create(c->ann_d.width, c->ann_d.m, c->ann_d.ef_construction,
                                     c->ann_d.ef, e2, sizeof e2);
        pthread_mutex_lock(&c->write_mu);
        if (g) {
            pthread_rwlock_wrlock(&c->swap);
            c->ann = g;
            pthread_rwlock_unlock(&c->swap);
        } else {
            ann_start_build(c, false, NULL, NULL, NULL);
        }
        pthread_mutex_unlock(&c->write_mu);
    }
    if (!rc) {
        coll_retain(c);
        *out = c;
    }
    pthread_mutex_unlock(&ix->mu);
    return rc;
}

struct coll *index_acquire(struct index *ix, const char *name)
{
    struct coll *found = NULL;
    pthread_mutex_lock(&ix->mu);
    for (size_t i = 0; i < ix->n && !found; i++)
        if (!strcmp(ix->colls[i]->info.name, name)) found = ix->colls[i];
    if (found) coll_retain(found);
    pthread_mutex_unlock(&ix->mu);
    return found;
}

int index_list(struct index *ix, struct coll ***out, size_t *n, char *err, size_t errlen)
{
    pthread_mutex_lock(&ix->mu);
    *n = ix->n;
    *out = malloc((ix->n ? ix->n : 1) * sizeof **out);
    if (*out)
        for (size_t i = 0; i < ix->n; i++) {
            (*out)[i] = ix->colls[i];
            coll_retain(ix->colls[i]);
        }
    pthread_mutex_unlock(&ix->mu);
    if (!*out) return set_err_code(err, errlen, STORE_ERR, "index: out of memory");
    return 0;
}

int index_drop(struct index *ix, const char *name, char *err, size_t errlen)
{
    pthread_mutex_lock(&ix->mu);
    size_t i = 0;
    while (i < ix->n && strcmp(ix->colls[i]->info.name, name)) i++;
    int rc;
    if (i == ix->n) {
        rc = set_err_code(err, errlen, STORE_NOT_FOUND, "no collection named '%s'", name);
    } else {
        struct coll *c = ix->colls[i];
        pthread_mutex_lock(&c->write_mu);
        if (c->job[0]) {
            rc = set_err_code(err, errlen, STORE_CONFLICT,
                              "collection '%s' is being re-embedded by job %s; wait for it",
                              name, c->job);
        } else if (!(rc = store_collection_delete(ix->store, name, err, errlen))) {
            c->dropped = true;
            c->ann_pending = false;
            atomic_store(&c->ann_cancel, 1);
            char path[4096];
            snprintf(path, sizeof path, "%s/%lld.hnsw", ix->dir, (long long)c->info.id);
            unlink(path);
            memmove(ix->colls + i, ix->colls + i + 1, (ix->n - i - 1) * sizeof *ix->colls);
            ix->n--;
        }
        pthread_mutex_unlock(&c->write_mu);
        if (!rc) coll_release(c);
    }
    pthread_mutex_unlock(&ix->mu);
    return rc;
}

/* Under write_mu: refuses writes to a dropped collection or one a job writes. */
static int writable(struct coll *c, char *err, size_t errlen)
{
    if (c->dropped)
        return set_err_code(err, errlen, STORE_NOT_FOUND, "collection '%s' was deleted",
                            c->info.name);
    if (c->job[0])
        return set_err_code(err, errlen, STORE_CONFLICT,
                            "collection '%s' is being re-embedded by job %s; writes resume when "
                            "it finishes", c->info.name, c->job);
    return 0;
}

/* The committed items' patch matrices into the patch mirror. */
static int add_patches(struct patch_mirror *pm, const struct item_in *items, const int64_t *rows,
                       const char **ids, size_t n, char *err, size_t errlen)
{
    int *gh = malloc((n ? n : 1) * sizeof *gh), *gw = malloc((n ? n : 1) * sizeof *gw);
    const void **data = malloc((n ? n : 1) * sizeof *data);
    const uint8_t **labels = malloc((n ? n : 1) * sizeof *labels);
    int rc = !gh || !gw || !data || !labels
             ? set_err_code(err, errlen, STORE_ERR, "out of memory") : 0;
    for (size_t i = 0; !rc && i < n; i++) {
        gh[i] = items[i].grid_h;
        gw[i] = items[i].grid_w;
        data[i] = items[i].patches;
        labels[i] = items[i].labels;
    }
    if (!rc) rc = patch_mirror_add(pm, n, rows, ids, gh, gw, (const void *const *)data,
                                   (const uint8_t *const *)labels, err, errlen);
    free(labels);
    free(gh);
    free(gw);
    free(data);
    return rc;
}

int coll_insert(struct coll *c, const struct item_in *items, json_t *const *metadata, size_t n,
                char (*out_ids)[STORE_ID_MAX], char *err, size_t errlen)
{
    int64_t *rows = malloc((n ? n : 1) * sizeof *rows);
    const char **ids = malloc((n ? n : 1) * sizeof *ids);
    float *vecs = malloc((n ? n : 1) * (size_t)c->info.width * sizeof *vecs);
    if (!rows || !ids || !vecs) {
        free(rows);
        free(ids);
        free(vecs);
        return set_err_code(err, errlen, STORE_ERR, "index: out of memory");
    }
    pthread_mutex_lock(&c->write_mu);
    int rc = writable(c, err, errlen);
    if (!rc) rc = store_items_insert_rows(c->ix->store, c->info.id, items, n, out_ids, rows, err,
                                          errlen);
    if (!rc) {
        for (size_t i = 0; i < n; i++) {
            ids[i] = out_ids[i];
            memcpy(vecs + i * (size_t)c->info.width, items[i].vector,
                   (size_t)c->info.width * sizeof *vecs);
        }
        pthread_rwlock_rdlock(&c->swap);
        /* Committed rows passed the store's checks, so only memory can fail here;
         * the mirror is then behind SQLite until the next start, and says so. */
        rc = mirror_add_payloads(c->mirror, n, rows, ids, vecs, (void *const *)metadata, err,
                                 errlen);
        pthread_rwlock_unlock(&c->swap);
        if (!rc && c->ann) { /* large batches on every core */
            if (hnsw_insert_many(c->ann, rows, vecs, n, (size_t)c->info.width,
                                 n >= 64 ? build_threads() : 1, NULL, NULL))
                rc = set_err_code(err, errlen, STORE_ERR, "out of memory in the ANN graph");
            ann_after_write(c, n);
        }
        if (!rc && c->patches) rc = add_patches(c->patches, items, rows, ids, n, err, errlen);
        if (rc) rc = set_err_code(err, errlen, STORE_ERR,
                                  "items were stored but not indexed (%s); they become "
                                  "searchable after a restart", err);
    }
    pthread_mutex_unlock(&c->write_mu);
    free(rows);
    free(ids);
    free(vecs);
    return rc;
}

int coll_delete(struct coll *c, const char *external_id, char *err, size_t errlen)
{
    pthread_mutex_lock(&c->write_mu);
    size_t deleted = 0;
    int rc = writable(c, err, errlen);
    if (!rc) rc = store_items_delete(c->ix->store, c->info.id, &external_id, 1, &deleted, err,
                                     errlen);
    if (!rc && deleted == 0) {
        char shown[64];
        printable_copy(external_id, strlen(external_id), shown, sizeof shown);
        rc = set_err_code(err, errlen, STORE_NOT_FOUND, "no item '%s' in collection '%s'", shown,
                          c->info.name);
    }
    if (!rc) {
        pthread_rwlock_rdlock(&c->swap);
        if (c->ann) { /* the row id, while the mirror still has it */
            mirror_read_lock(c->mirror);
            const long row = mirror_find(c->mirror, external_id);
            const int64_t rid = row >= 0 ? mirror_row_id(c->mirror, (size_t)row) : -1;
            mirror_read_unlock(c->mirror);
            if (row >= 0) hnsw_delete(c->ann, rid);
        }
        mirror_remove(c->mirror, 1, &external_id, NULL);
        pthread_rwlock_unlock(&c->swap);
        if (c->ann) ann_after_write(c, 1);
        if (c->patches) patch_mirror_remove(c->patches, external_id);
    }
    pthread_mutex_unlock(&c->write_mu);
    return rc;
}

int coll_begin_job(struct coll *c, const char *job_id, char *err, size_t errlen)
{
    pthread_mutex_lock(&c->write_mu);
    int rc = writable(c, err, errlen);
    if (!rc && c->patches) /* a reembed rewrites CLS vectors only */
        rc = set_err_code(err, errlen, STORE_INVALID, "collection '%s' is patch-level: "
                          "re-embedding it is not supported; re-insert its images into a new "
                          "collection", c->info.name);
    if (!rc) snprintf(c->job, sizeof c->job, "%s", job_id);
    pthread_mutex_unlock(&c->write_mu);
    return rc;
}

void coll_end_job(struct coll *c)
{
    pthread_mutex_lock(&c->write_mu);
    assert(c->job[0]); /* only the job that coll_begin_job admitted ends it */
    c->job[0] = '\0';
    pthread_mutex_unlock(&c->write_mu);
}

int coll_replace_vectors(struct coll *c, const char *fingerprint, const int64_t *row_ids,
                         const float *vectors, size_t n, char *err, size_t errlen)
{
    pthread_mutex_lock(&c->write_mu);
    int rc = c->dropped ? set_err_code(err, errlen, STORE_NOT_FOUND,
                                       "collection '%s' was deleted", c->info.name)
                        : store_collection_revector(c->ix->store, c->info.id, fingerprint,
                                                    row_ids, vectors, n, err, errlen);
    struct index_mirror *fresh = NULL;
    if (!rc) {
        struct collection_info info = c->info;
        snprintf(info.fingerprint, sizeof info.fingerprint, "%s", fingerprint);
        fresh = build_mirror(c->ix->store, &info, err, errlen);
        if (!fresh) rc = STORE_ERR;
    }
    if (!rc) {
        pthread_rwlock_wrlock(&c->swap);
        struct index_mirror *old = c->mirror;
        c->mirror = fresh;
        snprintf(c->info.fingerprint, sizeof c->info.fingerprint, "%s", fingerprint);
        struct hnsw *old_ann = c->ann; /* every vector changed: exact until rebuilt */
        c->ann = NULL;
        pthread_rwlock_unlock(&c->swap);
        mirror_free(old);
        hnsw_free(old_ann);
        if (c->ann_on) {
            if (c->ann_building) {
                c->ann_epoch++;
                atomic_store(&c->ann_cancel, 1);
                c->ann_pending = true;
            } else {
                ann_start_build(c, false, NULL, NULL, NULL);
            }
        }
    }
    pthread_mutex_unlock(&c->write_mu);
    return rc;
}

struct index_mirror *coll_read_begin(struct coll *c)
{
    pthread_rwlock_rdlock(&c->swap);
    mirror_read_lock(c->mirror);
    return c->mirror;
}

void coll_read_end(struct coll *c)
{
    mirror_read_unlock(c->mirror);
    pthread_rwlock_unlock(&c->swap);
}

void coll_fingerprint(struct coll *c, char out[STORE_TEXT_MAX])
{
    pthread_rwlock_rdlock(&c->swap);
    memcpy(out, c->info.fingerprint, STORE_TEXT_MAX);
    pthread_rwlock_unlock(&c->swap);
}

struct patch_mirror *coll_patches_begin(struct coll *c)
{
    if (!c->patches) return NULL;
    patch_mirror_read_lock(c->patches);
    return c->patches;
}

void coll_patches_end(struct coll *c) { patch_mirror_read_unlock(c->patches); }

enum store_level coll_level(const struct coll *c) { return c->info.level; }
const char *coll_name(const struct coll *c) { return c->info.name; }
int64_t coll_width(const struct coll *c) { return c->info.width; }
int64_t coll_id(const struct coll *c) { return c->info.id; }
struct index_store *coll_store(const struct coll *c) { return c->ix->store; }

void coll_info(struct coll *c, struct collection_info *out)
{
    pthread_rwlock_rdlock(&c->swap);
    *out = c->info;
    pthread_rwlock_unlock(&c->swap);
}

bool coll_job_id(struct coll *c, char out[COLL_JOB_ID_MAX])
{
    pthread_mutex_lock(&c->write_mu);
    memcpy(out, c->job, COLL_JOB_ID_MAX);
    pthread_mutex_unlock(&c->write_mu);
    return out[0] != '\0';
}

/* ---- ANN ------------------------------------------------------------------ */

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static int int_member(const json_t *j, const char *key, int lo, int hi, int def, int *out,
                      char *why, size_t whylen)
{
    const json_t *v = json_object_get(j, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        set_err(why, whylen, "'ann.%s' must be an integer in %d..%d", key, lo, hi);
        return -1;
    }
    *out = (int)json_integer_value(v);
    return 0;
}

int coll_ann_parse(const json_t *j, int64_t cw, struct coll_ann_desc *out, char *why,
                   size_t whylen)
{
    if (!json_is_object(j)) return set_err(why, whylen, "'ann' must be an object");
    const json_t *kind = json_object_get(j, "kind");
    if (!json_is_string(kind) || strcmp(json_string_value(kind), "hnsw"))
        return set_err(why, whylen, "'ann.kind' must be \"hnsw\"");
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)j, key, v) {
        (void)v;
        if (strcmp(key, "kind") && strcmp(key, "width") && strcmp(key, "m") &&
            strcmp(key, "ef_construction") && strcmp(key, "ef"))
            return set_err(why, whylen, "'ann' has an unknown member '%s'", key);
    }
    const int wmax = cw < HNSW_WIDTH_MAX ? (int)cw : HNSW_WIDTH_MAX;
    if (int_member(j, "width", 1, wmax, wmax < 64 ? wmax : 64, &out->width, why, whylen) ||
        int_member(j, "m", 2, HNSW_M_MAX, HNSW_M_DEFAULT, &out->m, why, whylen) ||
        int_member(j, "ef_construction", out->m, 4096, HNSW_EFC_DEFAULT > out->m
                   ? HNSW_EFC_DEFAULT : out->m, &out->ef_construction, why, whylen) ||
        int_member(j, "ef", 1, HNSW_EF_MAX, HNSW_EF_DEFAULT, &out->ef, why, whylen))
        return -1;
    return 0;
}

void coll_ann_format(const struct coll_ann_desc *d, char out[STORE_ANN_MAX])
{
    snprintf(out, STORE_ANN_MAX,
             "{\"kind\":\"hnsw\",\"width\":%d,\"m\":%d,\"ef_construction\":%d,\"ef\":%d}",
             d->width, d->m, d->ef_construction, d->ef);
}

static void ann_path(const struct coll *c, char *out, size_t len)
{
    snprintf(out, len, "%s/%lld.hnsw", c->ix->dir, (long long)c->info.id);
}

/* Under write_mu: saves the ready graph with the collection's generation
 * (which, under write_mu, counts exactly the writes the graph holds). */
static void ann_save_locked(struct coll *c)
{
    if (!c->ann || c->dropped) return;
    char err[ERR_LEN], path[4096];
    int64_t gen = 0;
    ann_path(c, path, sizeof path);
    if (store_collection_generation(c->ix->store, c->info.id, &gen, err, sizeof err) ||
        hnsw_save(c->ann, path, gen, err, sizeof err)) {
        fprintf(stderr, "index: collection '%s': ANN graph not saved: %s\n", c->info.name, err);
        c->ann_last_save = now_s(); /* try again later, not at once */
        return;
    }
    c->ann_saved_gen = gen;
    c->ann_changes = 0;
    c->ann_last_save = now_s();
}

/* Under write_mu, after changes applied to the graph: counts them and starts
 * an off-line rebuild when tombstones pass a quarter of the nodes. */
static void ann_after_write(struct coll *c, size_t changes)
{
    if (!c->ann_changes) c->ann_last_save = now_s(); /* the clock runs from the first change */
    c->ann_changes += changes;
    const size_t nodes = hnsw_nodes(c->ann), tomb = hnsw_tombstones(c->ann);
    if (!c->ann_building && nodes >= 1000 && tomb > nodes / 4)
        ann_start_build(c, false, NULL, NULL, NULL);
}

static void *ann_saver(void *arg)
{
    struct index *ix = arg;
    pthread_mutex_lock(&ix->bmu);
    while (!ix->closing) {
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        t.tv_sec += 1;
        pthread_cond_timedwait(&ix->bcv, &ix->bmu, &t);
        if (ix->closing) break;
        pthread_mutex_unlock(&ix->bmu);
        struct coll **cs = NULL;
        size_t n = 0;
        char err[ERR_LEN];
        if (!index_list(ix, &cs, &n, err, sizeof err)) {
            for (size_t i = 0; i < n; i++) {
                struct coll *c = cs[i];
                pthread_mutex_lock(&c->write_mu);
                if (c->ann && c->ann_changes &&
                    (c->ann_changes >= COLL_ANN_SAVE_CHANGES ||
                     now_s() - c->ann_last_save >= COLL_ANN_SAVE_SECONDS))
                    ann_save_locked(c);
                pthread_mutex_unlock(&c->write_mu);
                coll_release(c);
            }
            free(cs);
        }
        pthread_mutex_lock(&ix->bmu);
    }
    pthread_mutex_unlock(&ix->bmu);
    return NULL;
}

static void unit(float *v, int w)
{
    double s = 0;
    for (int i = 0; i < w; i++) s += (double)v[i] * v[i];
    const float inv = s > 0 ? (float)(1.0 / sqrt(s)) : 0.0f;
    for (int i = 0; i < w; i++) v[i] *= inv;
}

static int build_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 8 ? 8 : (int)n;
}

/* A node holds its row's unit prefix when their cosine is at least this: the
 * graph keeps halves and an int8 mirror decodes to within about 1e-4 of the
 * stored row, while a row id SQLite gave to another vector lands far below. */
#define ANN_SAME_PREFIX 0.999

/* Brings g in line with the mirror: nodes whose row is gone or whose prefix
 * differs from the row's (SQLite may give a deleted row id to a new row) are
 * tombstoned; rows without a live node are inserted. The mirror is read under
 * its read lock; the inserts run after it is let go. */
static int ann_repair(struct coll *c, struct hnsw *g, size_t *fixed)
{
    const int W = hnsw_width(g);
    int64_t *lab = NULL, *ins = NULL;
    size_t nl = 0, ni = 0;
    float *a = malloc((size_t)W * sizeof *a), *b = malloc((size_t)W * sizeof *b), *iv = NULL;
    int rc = a && b && !hnsw_labels(g, &lab, &nl) ? 0 : -1;
    struct index_mirror *m = coll_read_begin(c);
    if (!rc) rc = mirror_rowid_sync(m);
    for (size_t i = 0; !rc && i < nl; i++) {
        const long row = mirror_find_row_id(m, lab[i]);
        bool stale = row < 0;
        if (!stale && hnsw_lookup(g, lab[i], a)) {
            mirror_row_copy(m, (size_t)row, W, b);
            unit(b, W);
            double dot = 0;
            for (int j = 0; j < W; j++) dot += (double)a[j] * b[j];
            stale = dot < ANN_SAME_PREFIX;
        }
        if (stale) {
            hnsw_delete(g, lab[i]);
            (*fixed)++;
        }
    }
    const size_t n = mirror_count(m);
    for (size_t row = 0; !rc && row < n; row++) {
        const int64_t id = mirror_row_id(m, row);
        if (hnsw_lookup(g, id, NULL)) continue;
        if (ni % 1024 == 0) {
            int64_t *l2 = realloc(ins, (ni + 1024) * sizeof *l2);
            float *v2 = realloc(iv, (ni + 1024) * (size_t)W * sizeof *v2);
            if (l2) ins = l2;
            if (v2) iv = v2;
            if (!l2 || !v2) {
                rc = -1;
                break;
            }
        }
        ins[ni] = id;
        mirror_row_copy(m, row, W, iv + ni * (size_t)W);
        ni++;
    }
    coll_read_end(c);
    if (!rc && ni)
        rc = hnsw_insert_many(g, ins, iv, ni, (size_t)W, ni > 64 ? build_threads() : 1, NULL,
                              &c->ann_cancel);
    *fixed += ni;
    free(a);
    free(b);
    free(lab);
    free(ins);
    free(iv);
    return rc;
}

struct ann_build {
    struct coll *c;
    uint64_t epoch;
    struct coll_ann_desc d;
    bool try_load;
    coll_ann_progress_fn progress;
    coll_ann_done_fn done;
    void *ctx;
};

/* Reports progress while a bulk insert runs (a second thread). */
struct ann_watch {
    struct ann_build *b;
    _Atomic size_t count;
    _Atomic int stop;
};

static void *ann_watcher(void *arg)
{
    struct ann_watch *w = arg;
    while (!atomic_load(&w->stop)) {
        atomic_store(&w->b->c->ann_done, (int64_t)atomic_load(&w->count));
        if (w->b->progress)
            w->b->progress(w->b->ctx, atomic_load(&w->b->c->ann_done),
                           atomic_load(&w->b->c->ann_total));
        usleep(200000);
    }
    return NULL;
}

static void *ann_build_main(void *arg)
{
    struct ann_build *b = arg;
    struct coll *c = b->c;
    const struct coll_ann_desc d = b->d;
    char err[ERR_LEN] = "", path[4096];
    const char *fail = NULL;
    struct hnsw *g = NULL;
    bool as_is = false;
    int64_t gen = -1;
    ann_path(c, path, sizeof path);
    if (b->try_load && access(path, F_OK) == 0) {
        int64_t cur = -2;
        g = hnsw_load(path, &gen, err, sizeof err);
        if (g && (hnsw_width(g) != d.width || hnsw_m(g) != d.m)) {
            hnsw_free(g);
            g = NULL;
            snprintf(err, sizeof err, "its parameters differ from the description");
        }
        if (g) {
            hnsw_set_ef(g, d.ef);
            char e2[ERR_LEN];
            if (!store_collection_generation(c->ix->store, c->info.id, &cur, e2, sizeof e2))
                as_is = gen == cur;
            /* Rows written to SQLite by another program leave the generation as
             * it was; the count still tells. */
            const size_t live = hnsw_nodes(g) - hnsw_tombstones(g);
            const size_t rows = mirror_count(coll_read_begin(c));
            coll_read_end(c);
            const bool counts = live == rows;
            fprintf(stderr, "index: collection '%s': ANN graph loaded (generation %lld, "
                    "collection %lld; %zu live nodes, %zu rows)%s\n", c->info.name,
                    (long long)gen, (long long)cur, live, rows,
                    as_is && counts ? "" : ": repairing");
            as_is = as_is && counts;
            pthread_mutex_lock(&c->write_mu);
            if (as_is) c->ann_saved_gen = gen;
            pthread_mutex_unlock(&c->write_mu);
        } else {
            fprintf(stderr, "index: collection '%s': rebuilding the ANN graph: %s\n",
                    c->info.name, err);
        }
    }
    if (!g) {
        g = hnsw_create(d.width, d.m, d.ef_construction, d.ef, err, sizeof err);
        if (!g) fail = err;
        int64_t *lab = NULL;
        float *v = NULL;
        size_t n = 0;
        if (!fail) { /* a copy of the rows as they are now; the repair below catches up */
            struct index_mirror *m = coll_read_begin(c);
            n = mirror_count(m);
            lab = malloc((n ? n : 1) * sizeof *lab);
            v = malloc((n ? n : 1) * (size_t)d.width * sizeof *v);
            for (size_t r = 0; lab && v && r < n; r++) {
                lab[r] = mirror_row_id(m, r);
                mirror_row_copy(m, r, d.width, v + r * (size_t)d.width);
            }
            coll_read_end(c);
            if (!lab || !v) fail = "out of memory";
        }
        if (!fail) {
            atomic_store(&c->ann_total, (int64_t)n);
            struct ann_watch w = {.b = b};
            atomic_init(&w.count, 0);
            atomic_init(&w.stop, 0);
            pthread_t wt;
            const bool watching = !pthread_create(&wt, NULL, ann_watcher, &w);
            const int rc = hnsw_insert_many(g, lab, v, n, (size_t)d.width, build_threads(),
                                            &w.count, &c->ann_cancel);
            atomic_store(&w.stop, 1);
            if (watching) pthread_join(wt, NULL);
            atomic_store(&c->ann_done, (int64_t)n);
            if (rc) fail = rc == -2 ? "cancelled" : "out of memory";
        }
        free(lab);
        free(v);
    }
    size_t fixed = 0;
    if (!fail && !as_is && ann_repair(c, g, &fixed)) fail = "out of memory (repair)";
    pthread_mutex_lock(&c->write_mu);
    if (!fail && (c->dropped || b->epoch != c->ann_epoch || atomic_load(&c->ann_cancel)))
        fail = "cancelled";
    if (!fail && as_is) { /* writes that came while the file was read */
        int64_t cur = -1;
        char e2[ERR_LEN];
        store_collection_generation(c->ix->store, c->info.id, &cur, e2, sizeof e2);
        as_is = cur == gen;
    }
    if (!fail && !as_is && ann_repair(c, g, &fixed)) fail = "out of memory (repair)";
    if (!fail) {
        pthread_rwlock_wrlock(&c->swap);
        struct hnsw *old = c->ann;
        c->ann = g;
        c->ann_d = d;
        pthread_rwlock_unlock(&c->swap);
        hnsw_free(old);
        g = NULL;
        if (!as_is) {
            c->ann_changes = 1;
            ann_save_locked(c);
        }
        c->ann_error[0] = '\0';
    } else if (b->epoch == c->ann_epoch) {
        snprintf(c->ann_error, sizeof c->ann_error, "%s", fail);
    }
    c->ann_building = false;
    const bool again = c->ann_pending && c->ann_on && !c->dropped;
    c->ann_pending = false;
    if (again) ann_start_build(c, false, NULL, NULL, NULL);
    pthread_cond_broadcast(&c->ann_cv);
    pthread_mutex_unlock(&c->write_mu);
    hnsw_free(g);
    if (b->progress && !fail)
        b->progress(b->ctx, atomic_load(&c->ann_total), atomic_load(&c->ann_total));
    if (b->done) b->done(b->ctx, fail);
    struct index *ix = c->ix;
    coll_release(c);
    free(b);
    pthread_mutex_lock(&ix->bmu);
    ix->builders--;
    pthread_cond_broadcast(&ix->bcv);
    pthread_mutex_unlock(&ix->bmu);
    return NULL;
}

/* Under write_mu, with ann_on and no build running: starts one. On failure
 * to start, done is called with the reason (from this thread). */
static void ann_start_build(struct coll *c, bool try_load, coll_ann_progress_fn progress,
                            coll_ann_done_fn done, void *ctx)
{
    struct ann_build *b = calloc(1, sizeof *b);
    struct index *ix = c->ix;
    pthread_mutex_lock(&ix->bmu);
    const bool closing = ix->closing;
    if (!closing) ix->builders++;
    pthread_mutex_unlock(&ix->bmu);
    if (!b || closing) {
        free(b);
        if (!closing) {
            pthread_mutex_lock(&ix->bmu);
            ix->builders--;
            pthread_mutex_unlock(&ix->bmu);
        }
        if (done) done(ctx, closing ? "the server is shutting down" : "out of memory");
        return;
    }
    coll_retain(c);
    *b = (struct ann_build){.c = c, .epoch = ++c->ann_epoch, .d = c->ann_d,
                            .try_load = try_load, .progress = progress, .done = done,
                            .ctx = ctx};
    c->ann_building = true;
    atomic_store(&c->ann_cancel, 0);
    atomic_store(&c->ann_done, 0);
    atomic_store(&c->ann_total, 0);
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &attr, ann_build_main, b)) {
        c->ann_building = false;
        coll_release(c); /* not the last reference: the caller holds one */
        free(b);
        pthread_mutex_lock(&ix->bmu);
        ix->builders--;
        pthread_cond_broadcast(&ix->bcv);
        pthread_mutex_unlock(&ix->bmu);
        if (done) done(ctx, "cannot start a thread");
    }
    pthread_attr_destroy(&attr);
}

int coll_ann_set(struct coll *c, const struct coll_ann_desc *d, coll_ann_progress_fn progress,
                 coll_ann_done_fn done, void *ctx, char *err, size_t errlen)
{
    if (c->info.level != STORE_LEVEL_CLS)
        return set_err_code(err, errlen, STORE_INVALID, "collection '%s' is patch-level: ANN "
                            "indexes CLS-level collections only", c->info.name);
    if (d->width < 1 || d->width > c->info.width)
        return set_err_code(err, errlen, STORE_INVALID, "'ann.width' %d is outside 1..%lld",
                            d->width, (long long)c->info.width);
    pthread_mutex_lock(&c->write_mu);
    int rc = c->dropped ? set_err_code(err, errlen, STORE_NOT_FOUND,
                                       "collection '%s' was deleted", c->info.name) : 0;
    if (!rc && c->ann_building)
        rc = set_err_code(err, errlen, STORE_CONFLICT, "an ANN build for collection '%s' is "
                          "running; wait for it", c->info.name);
    char text[STORE_ANN_MAX];
    coll_ann_format(d, text);
    if (!rc) rc = store_collection_set_ann(c->ix->store, c->info.id, text, err, errlen);
    if (!rc) {
        pthread_rwlock_wrlock(&c->swap);
        struct hnsw *old = c->ann;
        c->ann = NULL; /* exact until the new graph is ready */
        c->ann_d = *d;
        snprintf(c->info.ann, sizeof c->info.ann, "%s", text);
        pthread_rwlock_unlock(&c->swap);
        hnsw_free(old);
        c->ann_on = true;
        c->ann_saved_gen = -1;
        c->ann_changes = 0;
        ann_start_build(c, false, progress, done, ctx);
    }
    pthread_mutex_unlock(&c->write_mu);
    return rc;
}

int coll_ann_remove(struct coll *c, char *err, size_t errlen)
{
    pthread_mutex_lock(&c->write_mu);
    int rc = !c->ann_on ? set_err_code(err, errlen, STORE_NOT_FOUND,
                                       "collection '%s' has no ANN index", c->info.name) : 0;
    if (!rc) rc = store_collection_set_ann(c->ix->store, c->info.id, "", err, errlen);
    if (!rc) {
        c->ann_on = false;
        c->ann_pending = false;
        c->ann_epoch++;
        atomic_store(&c->ann_cancel, 1);
        pthread_rwlock_wrlock(&c->swap);
        struct hnsw *old = c->ann;
        c->ann = NULL;
        c->info.ann[0] = '\0';
        pthread_rwlock_unlock(&c->swap);
        hnsw_free(old);
        c->ann_saved_gen = -1;
        char path[4096];
        ann_path(c, path, sizeof path);
        unlink(path);
    }
    pthread_mutex_unlock(&c->write_mu);
    return rc;
}

void coll_ann_info(struct coll *c, struct coll_ann_info *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&c->write_mu);
    out->present = c->ann_on;
    out->ready = c->ann != NULL;
    out->building = c->ann_building;
    out->d = c->ann_d;
    if (c->ann) {
        out->nodes = hnsw_nodes(c->ann);
        out->tombstones = hnsw_tombstones(c->ann);
    }
    out->saved_generation = c->ann_saved_gen;
    out->build_done = atomic_load(&c->ann_done);
    out->build_total = atomic_load(&c->ann_total);
    snprintf(out->error, sizeof out->error, "%s", c->ann_error);
    pthread_mutex_unlock(&c->write_mu);
}

struct hnsw *coll_ann_graph(struct coll *c, struct coll_ann_desc *d)
{
    if (c->ann && d) *d = c->ann_d;
    return c->ann;
}

void coll_ann_wait(struct coll *c)
{
    pthread_mutex_lock(&c->write_mu);
    while (c->ann_building) pthread_cond_wait(&c->ann_cv, &c->write_mu);
    pthread_mutex_unlock(&c->write_mu);
}
