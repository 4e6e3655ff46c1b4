/* The vector index as the server sees it: the SQLite store plus, per
 * collection, a runtime object holding its search mirror and parsed metadata.
 *
 * Every change goes to SQLite first (one transaction) and then to the mirror,
 * under the collection's write mutex, so that the mirror applies committed
 * changes in commit order and always equals SQLite once a write returns.
 *
 * struct coll is opaque (collections.c); routes read it through the accessors.
 * Lock order (never taken the other way): write_mu -> swap (rwlock) -> the
 * mirror's own lock. Readers take swap shared and the mirror's read lock
 * (coll_read_begin); a reembed replaces the mirror and the fingerprint under
 * swap held exclusively, so a reader sees the old or the new collection,
 * never a mix.
 *
 * Collections are reference counted: a request holds its collection with
 * index_acquire / coll_release, and a dropped collection is freed when its
 * last holder lets go. Errors use the store's codes (index/store.h). */
#ifndef FRANCA_INDEX_COLLECTIONS_H
#define FRANCA_INDEX_COLLECTIONS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "index/mirror.h"
#include "index/patch_mirror.h"
#include "index/store.h"

#define COLL_JOB_ID_MAX 32

struct coll;
struct index;

/* Opens DATA_DIR/index.sqlite3 and rebuilds every collection's mirror. */
int index_open(struct index **out, const char *data_dir, char *err, size_t errlen);
void index_close(struct index *ix);
struct index_store *index_store(struct index *ix);

/* Creates a collection (STORE_EXISTS for a taken name) and returns it acquired. */
int index_create(struct index *ix, const struct collection_info *in, struct coll **out,
                 char *err, size_t errlen);
/* The named collection, acquired; NULL when there is none. */
struct coll *index_acquire(struct index *ix, const char *name);
void coll_release(struct coll *c);
/* Every collection, acquired, in creation order; release each, free the array. */
int index_list(struct index *ix, struct coll ***out, size_t *n, char *err, size_t errlen);
/* Deletes a collection and its items. STORE_CONFLICT while a job writes it. */
int index_drop(struct index *ix, const char *name, char *err, size_t errlen);

/* Inserts n items (all or nothing) and mirrors them. metadata[i] is item i's
 * parsed metadata object or NULL; on success the index owns those references,
 * on failure the caller keeps them. STORE_CONFLICT also while a job writes the
 * collection. */
int coll_insert(struct coll *c, const struct item_in *items, json_t *const *metadata, size_t n,
                char (*out_ids)[STORE_ID_MAX], char *err, size_t errlen);
int coll_delete(struct coll *c, const char *external_id, char *err, size_t errlen);

/* Marks a job as the collection's only writer (STORE_CONFLICT when another
 * runs; STORE_INVALID for a patch collection, which has no re-embedding);
 * coll_end_job clears it. */
int coll_begin_job(struct coll *c, const char *job_id, char *err, size_t errlen);
void coll_end_job(struct coll *c);
/* Commits new vectors for rows (all of the collection's items) and the new
 * fingerprint, builds a new mirror from SQLite and switches to it at once. */
int coll_replace_vectors(struct coll *c, const char *fingerprint, const int64_t *row_ids,
                         const float *vectors, size_t n, char *err, size_t errlen);

/* Accessors: a collection is opaque outside collections.c. */
/* The name, width, metric and row id never change after creation. */
const char *coll_name(const struct coll *c);
int64_t coll_width(const struct coll *c);
int64_t coll_id(const struct coll *c);
struct index_store *coll_store(const struct coll *c);
/* A copy of the whole description, fingerprint included (under the swap lock). */
void coll_info(struct coll *c, struct collection_info *out);
/* Copies the id of the reembed job writing the collection into out and returns
 * true, or returns false (out = "") when none does. */
bool coll_job_id(struct coll *c, char out[COLL_JOB_ID_MAX]);

/* Patch collections: the patch mirror, read-locked until coll_patches_end
 * (NULL, nothing locked, for a CLS collection). Never held together with
 * coll_read_begin. */
struct patch_mirror *coll_patches_begin(struct coll *c);
void coll_patches_end(struct coll *c);
/* Fixed at creation. */
enum store_level coll_level(const struct coll *c);

/* A consistent read: the mirror is valid and unchanging until coll_read_end. */
struct index_mirror *coll_read_begin(struct coll *c);
void coll_read_end(struct coll *c);
/* The collection's fingerprint, copied under the swap lock. */
void coll_fingerprint(struct coll *c, char out[STORE_TEXT_MAX]);

/* ---- ANN: an HNSW graph (index/hnsw.h) over the normalised prefix ----
 *
 * A collection may keep one, described by collections.ann (JSON text) and
 * saved as DATA_DIR/ann/<collection id>.hnsw with the collection's generation.
 * Inserts and deletes update a ready graph under write_mu after SQLite
 * commits. A graph is built, loaded or repaired by a background thread: at
 * open (a file of the collection's generation is taken as is, a stale one is
 * repaired against the mirror, a missing or corrupt one rebuilt), when one is
 * added (coll_ann_set), after a re-embed, and off-line when tombstones pass a
 * quarter of the nodes (the old graph serves until the new one is swapped
 * in). Until a graph is ready, searches run exact. The graph is saved at the
 * end of every build, every COLL_ANN_SAVE_CHANGES changes or
 * COLL_ANN_SAVE_SECONDS seconds after a change, and at index_close. */
#define COLL_ANN_SAVE_CHANGES 20000
#define COLL_ANN_SAVE_SECONDS 30

struct coll_ann_desc {
    int width, m, ef_construction, ef;
};

/* Parses {"kind": "hnsw", "width": W, "m": M, "ef_construction": E, "ef": F}
 * (all but kind optional: width min(64, collection width), m 16,
 * ef_construction 200, ef 128) for a collection of width cw. 0, or -1 with the
 * reason in why. */
int coll_ann_parse(const json_t *j, int64_t cw, struct coll_ann_desc *out, char *why,
                   size_t whylen);
/* The description as JSON text (at most STORE_ANN_MAX bytes). */
void coll_ann_format(const struct coll_ann_desc *d, char out[STORE_ANN_MAX]);

/* Called by a build from its thread: progress (done of total nodes) and once
 * at the end (error NULL: the graph is ready). */
typedef void (*coll_ann_progress_fn)(void *ctx, int64_t done, int64_t total);
typedef void (*coll_ann_done_fn)(void *ctx, const char *error);

/* Gives the collection an ANN (replacing any) and builds it in the background:
 * the description is committed first, so a restart builds it again.
 * STORE_INVALID for a patch collection, STORE_CONFLICT while a build runs. On
 * success done will be called exactly once. */
int coll_ann_set(struct coll *c, const struct coll_ann_desc *d, coll_ann_progress_fn progress,
                 coll_ann_done_fn done, void *ctx, char *err, size_t errlen);
/* Removes the ANN (its file too); STORE_NOT_FOUND when there is none. */
int coll_ann_remove(struct coll *c, char *err, size_t errlen);

struct coll_ann_info {
    bool present, ready, building;
    struct coll_ann_desc d;
    size_t nodes, tombstones;
    int64_t saved_generation; /* -1: no file written by this process yet */
    int64_t build_done, build_total;
    char error[256];          /* the last build's failure, "" when none */
};
void coll_ann_info(struct coll *c, struct coll_ann_info *out);

struct hnsw;
/* Under coll_read_begin: the ready graph (NULL when none) and its description. */
struct hnsw *coll_ann_graph(struct coll *c, struct coll_ann_desc *d);

/* Waits until no ANN build runs on c (tests, shutdown). */
void coll_ann_wait(struct coll *c);

#endif
