/* The durable vector store: collections and items in one SQLite database.
 *
 * store_open opens (creating if needed) DATA_DIR/index.sqlite3 in WAL mode with
 * synchronous=FULL, foreign keys on and a busy timeout, and brings the schema to
 * the current version (PRAGMA user_version). Every write call is one transaction
 * (BEGIN IMMEDIATE ... COMMIT), never one per row, and reports success only after
 * COMMIT returned: with WAL + synchronous=FULL the WAL is fsync'ed at every
 * commit, so an acknowledged change survives kill -9 and power loss as far as
 * SQLite and the disk guarantee. All SQL is constant text with bound parameters.
 *
 * Thread safety: a store is one SQLite connection guarded by one (non-recursive)
 * mutex held for the whole of each call, so calls from any threads are
 * serialised and a multi-statement transaction is never interleaved with another
 * thread's statements. A store_items_scan callback runs under that mutex and must
 * not call back into the store.
 *
 * Vectors are float32 in host order, stored as little-endian bytes (width * 4).
 * Schema v2 adds patch-level collections: collections.level ('cls' | 'patch')
 * and patch_type ('f16' | 'int8'); items.grid_h, grid_w and patches (the
 * encoded patch matrix; NULL for CLS items). A v1 database is migrated in
 * place at open (ALTER TABLE ADD COLUMN: its collections become 'cls').
 * Schema v3 adds items.labels: a patch item's per-patch segmentation labels
 * (grid_h * grid_w bytes, 0..255, 255 = ignore; NULL for unlabelled items).
 * v1 and v2 databases are migrated the same way, keeping their items.
 *
 * Every function follows engine/errors.h: 0 on success, a negative code and a
 * one-line message in err on failure, never prints, never aborts. */
#ifndef FRANCA_INDEX_STORE_H
#define FRANCA_INDEX_STORE_H

#include <stddef.h>
#include <stdint.h>

/* Return codes. Routes map them to HTTP statuses as noted. */
enum store_status {
    STORE_OK = 0,
    STORE_ERR = -1,       /* SQLite, I/O or out of memory (500) */
    STORE_NOT_FOUND = -2, /* no such collection or item (404) */
    STORE_EXISTS = -3,    /* a collection by that name exists (409) */
    STORE_CONFLICT = -4,  /* duplicate external id, in the batch or stored (409) */
    STORE_INVALID = -5,   /* bad argument: name, width, metric, vector length, NaN/Inf (400) */
};

/* PRAGMA user_version of a database this build writes (older ones migrate). */
#define STORE_SCHEMA_VERSION 4

#define STORE_NAME_MAX 128   /* collection names: 1..127 bytes, NUL-free */
#define STORE_TEXT_MAX 128   /* model name, fingerprint: 0..127 bytes */
#define STORE_ID_MAX 256     /* external ids: 1..255 bytes, NUL-free */
#define STORE_WIDTH_MAX 65536
#define STORE_GEN_ID_LEN 16  /* generated ids: 16 lowercase hex characters */

enum store_metric { STORE_METRIC_COSINE = 0, STORE_METRIC_L2 = 1, STORE_METRIC_DOT = 2 };

/* What a collection indexes: one vector per item (its CLS embedding, or a
 * given vector), or every patch token of each item (patch_codec.h). */
enum store_level { STORE_LEVEL_CLS = 0, STORE_LEVEL_PATCH = 1 };
#define STORE_GRID_MAX 256   /* patch grids: 1..256 rows and columns, */
#define STORE_PATCHES_MAX 4096 /* and at most 4096 patches (64 x 64) per item */

/* The form of a collection's in-memory search mirror (schema v4). SQLite always
 * keeps the float32 vectors; f16 and int8 (per-dimension scale) mirrors trade
 * a little recall for 2x and 4x less memory. */
enum store_mirror { STORE_MIRROR_F32 = 0, STORE_MIRROR_F16 = 1, STORE_MIRROR_INT8 = 2 };
/* "f32", "f16", "int8"; NULL for an unknown value. */
const char *store_mirror_name(enum store_mirror m);
/* 0 and *m set, or -1 for an unknown name. */
int store_mirror_parse(const char *name, enum store_mirror *m);
#define STORE_ANN_MAX 512    /* the ANN description: JSON text, 0..511 bytes ("" = none) */

/* "cosine", "l2", "dot"; NULL for an unknown value. */
const char *store_metric_name(enum store_metric m);
/* 0 and *m set, or -1 for an unknown name. */
int store_metric_parse(const char *name, enum store_metric *m);

struct collection_info {
    int64_t id;                       /* output only (ignored by create) */
    char name[STORE_NAME_MAX];
    char model[STORE_TEXT_MAX];
    char fingerprint[STORE_TEXT_MAX];
    int64_t width;                    /* 1..STORE_WIDTH_MAX */
    enum store_metric metric;
    int store_images;                 /* 0 or 1 */
    enum store_level level;           /* schema v2; CLS for collections made before */
    int patch_type;                   /* enum patch_type, for level PATCH (f16 otherwise) */
    enum store_mirror mirror;         /* schema v4; f32 for collections made before */
    char ann[STORE_ANN_MAX];          /* schema v4: ANN description as JSON, "" = none */
    int64_t generation;               /* output only: write transactions so far */
    char created_at[32];              /* output only: UTC, "YYYY-MM-DDTHH:MM:SS.SSSZ" */
};

struct item_in {
    const char *external_id; /* NULL: a unique id is generated */
    const char *metadata;    /* JSON text (the caller validates it), or NULL */
    const float *vector;     /* dim finite floats; dim must equal the collection width */
    size_t dim;
    const void *image;       /* source image bytes or NULL; kept only if the
                                collection has store_images set */
    size_t image_len;
    /* Patch collections only (and required there): grid_h x grid_w patches
     * encoded as patch_codec.h says, patches_len bytes. */
    const void *patches;
    size_t patches_len;
    int grid_h, grid_w;
    /* Patch collections, optional: grid_h * grid_w labels, one per patch. */
    const uint8_t *labels;
};

struct item_out {
    int64_t row_id;
    char external_id[STORE_ID_MAX];
    char *metadata;   /* NUL-terminated JSON text, or NULL */
    float *vector;    /* dim floats */
    size_t dim;
    void *image;      /* NULL when none was kept */
    size_t image_len;
};

struct index_store;

/* Opens or creates data_dir/index.sqlite3 (data_dir itself is created if missing). */
int store_open(struct index_store **out, const char *data_dir, char *err, size_t errlen);
void store_close(struct index_store *s);

/* Creates a collection; *id receives its row id. STORE_EXISTS for a taken name. */
int store_collection_create(struct index_store *s, const struct collection_info *in,
                            int64_t *id, char *err, size_t errlen);
int store_collection_get(struct index_store *s, const char *name, struct collection_info *out,
                         char *err, size_t errlen);
/* All collections by id; *out is malloc'ed (NULL when *n == 0), caller frees it. */
int store_collection_list(struct index_store *s, struct collection_info **out, size_t *n,
                          char *err, size_t errlen);
/* Sets (text "" or NULL: clears) a collection's ANN description. */
int store_collection_set_ann(struct index_store *s, int64_t collection_id, const char *ann,
                             char *err, size_t errlen);
/* The collection's generation: incremented by every committed insert, delete
 * and revector of its items, in the same transaction. */
int store_collection_generation(struct index_store *s, int64_t collection_id, int64_t *gen,
                                char *err, size_t errlen);
/* Deletes a collection and (by cascade) all its items. */
int store_collection_delete(struct index_store *s, const char *name, char *err, size_t errlen);
int store_collection_count(struct index_store *s, int64_t collection_id, int64_t *n,
                           char *err, size_t errlen);

/* Inserts n items in one transaction, all or nothing. On success out_ids[i] holds
 * item i's external id (given or generated); out_ids is written only after COMMIT
 * succeeded. STORE_CONFLICT names a duplicate id; STORE_INVALID a bad item. */
int store_items_insert(struct index_store *s, int64_t collection_id,
                       const struct item_in *items, size_t n, char (*out_ids)[STORE_ID_MAX],
                       char *err, size_t errlen);
/* The same, also giving each item's store row id (out_row_ids[n], may be NULL). */
int store_items_insert_rows(struct index_store *s, int64_t collection_id,
                            const struct item_in *items, size_t n,
                            char (*out_ids)[STORE_ID_MAX], int64_t *out_row_ids, char *err,
                            size_t errlen);
/* Fills *out (free it with store_item_free). */
int store_item_get(struct index_store *s, int64_t collection_id, const char *external_id,
                   struct item_out *out, char *err, size_t errlen);
void store_item_free(struct item_out *out);
/* Reads n items by external id in one read transaction with one prepared
 * statement (ids may repeat). out[i] is filled (image left out) for each id
 * found; an absent id leaves out[i] zeroed (vector NULL) and is no error. Free
 * each out[i] with store_item_free, also after a failure. */
int store_items_get_many(struct index_store *s, int64_t collection_id,
                         const char *const *external_ids, size_t n, struct item_out *out,
                         char *err, size_t errlen);
/* Deletes the listed items in one transaction; ids not present are skipped and
 * *deleted counts the rows removed. */
int store_items_delete(struct index_store *s, int64_t collection_id,
                       const char *const *external_ids, size_t n, size_t *deleted,
                       char *err, size_t errlen);

/* Called once per item in row-id order; vector has width floats and, like the
 * strings, is valid only during the call. metadata may be NULL. Returning
 * non-zero stops the scan, and store_items_scan returns STORE_ERR. */
typedef int (*store_scan_fn)(int64_t row_id, const char *external_id, const float *vector,
                             size_t dim, const char *metadata, void *user);
/* Reads one consistent snapshot of a collection's items. */
int store_items_scan(struct index_store *s, int64_t collection_id, store_scan_fn fn,
                     void *user, char *err, size_t errlen);

/* Patch collections: called once per item in row-id order with its encoded
 * patch matrix and its labels (grid_h * grid_w bytes, or NULL when it has
 * none; both valid only during the call), as store_items_scan. */
typedef int (*store_patch_scan_fn)(int64_t row_id, const char *external_id, int grid_h,
                                   int grid_w, const void *patches, size_t len,
                                   const uint8_t *labels, void *user);
int store_patches_scan(struct index_store *s, int64_t collection_id, store_patch_scan_fn fn,
                       void *user, char *err, size_t errlen);

/* Re-embedding (POST /v1/collections/{name}/reembed). */
int store_collection_image_counts(struct index_store *s, int64_t collection_id,
                                  int64_t *with_image, int64_t *without_image, char *err,
                                  size_t errlen);
struct store_image_row {
    int64_t row_id;
    void *image;
    size_t image_len;
};
/* Up to limit items with a source image and a row id above after_row_id, in
 * row-id order; *out is malloc'ed (free with store_image_rows_free). */
int store_images_page(struct index_store *s, int64_t collection_id, int64_t after_row_id,
                      size_t limit, struct store_image_row **out, size_t *n, char *err,
                      size_t errlen);
void store_image_rows_free(struct store_image_row *rows, size_t n);
/* Replaces the vectors of the listed rows and the collection's fingerprint in
 * one transaction: all or nothing. */
int store_collection_revector(struct index_store *s, int64_t collection_id,
                              const char *fingerprint, const int64_t *row_ids,
                              const float *vectors, size_t n, char *err, size_t errlen);

/* PRAGMA integrity_check; STORE_ERR with its first message unless it says "ok". */
int store_integrity_check(struct index_store *s, char *err, size_t errlen);

#endif
