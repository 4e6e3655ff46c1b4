/* Collections at run time: SQLite plus per-collection search mirrors; see
 * collections.h for the locking rules. */
#include "index/collections.h"

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"

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
};

struct index {
    struct index_store *store;
    pthread_mutex_t mu;  /* guards the array below */
    struct coll **colls; /* each holds one reference for the index */
    size_t n, cap;
};

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

static struct index_mirror *build_mirror(struct index_store *store,
                                         const struct collection_info *info, char *err,
                                         size_t errlen)
{
    struct build_ctx b = {.m = mirror_create_form((int)info->width, info->metric, 0,
                                                  info->mirror, err, errlen)};
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
    int rc = store_open(&ix->store, data_dir, err, errlen);
    if (rc) {
        index_close(ix);
        return rc;
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
    *out = ix;
    return 0;
}

void index_close(struct index *ix)
{
    if (!ix) return;
    for (size_t i = 0; i < ix->n; i++) coll_release(ix->colls[i]);
    free(ix->colls);
    store_close(ix->store);
    pthread_mutex_destroy(&ix->mu);
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
        m = mirror_create_form((int)info.width, info.metric, 0, info.mirror, err, errlen);
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
        mirror_remove(c->mirror, 1, &external_id, NULL);
        pthread_rwlock_unlock(&c->swap);
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
        pthread_rwlock_unlock(&c->swap);
        mirror_free(old);
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
