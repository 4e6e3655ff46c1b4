/* The in-memory search mirror of one collection.
 *
 * A mirror holds, for n rows, a contiguous row-major float32 matrix [n, width]
 * (leading dimension = width), a second contiguous matrix [n, prefix_width]
 * holding the Matryoshka funnel prefix, the squared L2 norm of every row at
 * width and at prefix_width, and parallel arrays of store row ids (int64) and
 * external ids (strings). An open-addressing table maps external ids to rows,
 * so add, remove and find are O(1) per row (expected).
 *
 * Stored form by metric:
 *   l2, dot: the full matrix holds the vectors as given; the prefix matrix
 *            holds their first prefix_width components as given.
 *   cosine:  the full matrix holds each vector L2-normalised at full width; the
 *            prefix matrix holds its first prefix_width components renormalised
 *            to unit length. An all-zero vector stays zero (similarity 0).
 *
 * Compressed forms (store_mirror, chosen per collection): the full matrix is
 * kept as f16 or int8 codes (mirror_codec.h) of the stored form above instead
 * of float32, and the prefix matrix as f16 (a shortlist needs no more). Then
 * mirror_matrix, mirror_prefix_matrix and mirror_row_vector are NULL:
 * mirror_row_copy, mirror_decode_rows and mirror_decode_prefix_rows read rows
 * as float32, and the norms are those of the decoded rows. int8 ranges follow
 * the data: an add whose values fall outside widens them and re-encodes the
 * rows held (never clamps); mirror_fit sets them from all rows before a build.
 *
 * Removal is swap-with-last: the last row moves into the hole, so row indices
 * change on every removal; row ids and external ids are the stable names.
 *
 * Thread safety: every mirror carries a pthread rwlock. mirror_add,
 * mirror_remove and mirror_clear take it exclusively themselves. Every reader
 * (mirror_find, the row accessors, search_exact, search_funnel) does NOT lock:
 * the caller brackets a whole read (building a row mask, searching, reading
 * the hits' external ids) in mirror_read_lock / mirror_read_unlock, so that
 * row indices stay valid throughout. Any number of readers share the lock;
 * writers wait for them. The lock prefers writers (glibc's
 * PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP), so a stream of searches cannot
 * starve inserts and deletes; in exchange a thread must never take the read
 * lock twice, nor call a writer while holding it (either would deadlock).
 *
 * Errors follow engine/errors.h with the store's codes (index/store.h):
 * STORE_INVALID for bad arguments, STORE_CONFLICT for duplicate external ids,
 * STORE_ERR for out of memory; a message goes into err. A failed call changes
 * nothing. */
#ifndef FRANCA_INDEX_MIRROR_H
#define FRANCA_INDEX_MIRROR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "index/store.h"

#define MIRROR_MAX_ROWS (1 << 30)

struct index_mirror;

/* A new, empty mirror. width 1..STORE_WIDTH_MAX; prefix_width 1..width, or 0
 * for the default max(1, width / 16). NULL on failure (message in err). */
struct index_mirror *mirror_create(int width, enum store_metric metric, int prefix_width,
                                   char *err, size_t errlen);
void mirror_free(struct index_mirror *m);
/* mirror_create with the full matrix kept in the given form. */
struct index_mirror *mirror_create_form(int width, enum store_metric metric, int prefix_width,
                                        enum store_mirror form, char *err, size_t errlen);
/* int8 mirrors, before the first add: sets the ranges to cover these rows
 * (count vectors [count, width], as given to mirror_add), so that a build
 * from the store needs no re-encoding; a no-op for other forms.
 * STORE_INVALID once rows were added. Takes the write lock. */
int mirror_fit(struct index_mirror *m, size_t count, const float *vectors, char *err,
               size_t errlen);

/* Appends count rows: vectors [count, width] (finite floats, as stored in
 * SQLite), row_ids[count], external_ids[count] (1..STORE_ID_MAX-1 bytes, copied).
 * All or nothing: an id already present or repeated within the batch gives
 * STORE_CONFLICT; NaN/Inf or a bad id gives STORE_INVALID. Takes the write lock. */
int mirror_add(struct index_mirror *m, size_t count, const int64_t *row_ids,
               const char *const *external_ids, const float *vectors, char *err,
               size_t errlen);

/* mirror_add with one opaque payload per row (e.g. parsed metadata), owned by
 * the mirror from a successful call on (freed with the function given to
 * mirror_set_payload_free when the row goes); on failure the caller keeps
 * them. payloads may be NULL. */
int mirror_add_payloads(struct index_mirror *m, size_t count, const int64_t *row_ids,
                        const char *const *external_ids, const float *vectors,
                        void *const *payloads, char *err, size_t errlen);
/* How payloads are freed (default: they are not). Set before the first add. */
void mirror_set_payload_free(struct index_mirror *m, void (*fn)(void *));

/* Removes the rows with these external ids (unknown ids are skipped); the
 * number removed goes to *n_removed if not NULL. Takes the write lock. */
int mirror_remove(struct index_mirror *m, size_t count, const char *const *external_ids,
                  size_t *n_removed);

/* Removes every row. Takes the write lock. */
void mirror_clear(struct index_mirror *m);

void mirror_read_lock(struct index_mirror *m);
void mirror_read_unlock(struct index_mirror *m);

/* Before the first add: the prefix matrix is not kept (a collection whose
 * ANN graph gives its shortlists, where the copy would only cost memory).
 * mirror_prefix_width still names the funnel's default width, a funnel then
 * reads the full matrix's first columns, and mirror_prefix_matrix is NULL.
 * STORE_INVALID once rows were added. Takes the write lock. */
int mirror_drop_prefix(struct index_mirror *m, char *err, size_t errlen);

/* Readers: the caller holds the read lock (see above). */
int mirror_width(const struct index_mirror *m);
int mirror_prefix_width(const struct index_mirror *m);
/* Whether the prefix matrix is kept (see mirror_drop_prefix). */
bool mirror_has_prefix(const struct index_mirror *m);
enum store_metric mirror_metric(const struct index_mirror *m);
size_t mirror_count(const struct index_mirror *m);
/* The row of an external id, or -1. */
long mirror_find(const struct index_mirror *m, const char *external_id);
int64_t mirror_row_id(const struct index_mirror *m, size_t row);
const char *mirror_external_id(const struct index_mirror *m, size_t row);
/* The payload of a row (NULL when none was given). */
void *mirror_payload(const struct index_mirror *m, size_t row);
enum store_mirror mirror_form(const struct index_mirror *m);
/* Bytes per row of the full matrix (4, 2 or 1 per component). */
size_t mirror_vector_bytes(const struct index_mirror *m);
/* About what the mirror holds in memory: matrices, norms, ids and the id
 * table, at its capacity (payloads not counted). */
size_t mirror_bytes(const struct index_mirror *m);
/* The stored (for cosine: normalised) vector of a row, width floats; NULL
 * for a compressed mirror. */
const float *mirror_row_vector(const struct index_mirror *m, size_t row);
/* The first w (1..width) components of a row's stored vector as float32, into
 * out[w]: whatever form the mirror keeps its rows in, this is the one way to
 * read a row for re-ranking. */
void mirror_row_copy(const struct index_mirror *m, size_t row, int w, float *out);
/* The first w components of rows r0..r0+b-1 as float32 into out [b, w]. */
void mirror_decode_rows(const struct index_mirror *m, size_t r0, size_t b, int w, float *out);
/* Rows r0..r0+b-1 of the prefix matrix as float32 into out [b, prefix_width]. */
void mirror_decode_prefix_rows(const struct index_mirror *m, size_t r0, size_t b, float *out);
/* The matrices and norms, for search backends (both matrices are NULL for a
 * compressed mirror): [n, width], [n, prefix_width],
 * squared norms of the stored rows at width and of the prefix rows. */
const float *mirror_matrix(const struct index_mirror *m);
const float *mirror_prefix_matrix(const struct index_mirror *m);
const float *mirror_sqnorms(const struct index_mirror *m);
const float *mirror_prefix_sqnorms(const struct index_mirror *m);

/* A number that changes whenever the mirror's rows do (add, remove, clear;
 * set under the write lock), never 0 and never repeated by any mirror of the
 * process: a backend that keeps a copy of the matrices compares it, under the
 * read lock, with the version it copied. */
uint64_t mirror_version(const struct index_mirror *m);

/* The version of the last change that moved or dropped rows (create, remove,
 * clear); adds keep it. While it stays the same, rows only ever get appended,
 * so a copy of the first k rows taken at that rewrite version is still
 * current and a backend need only copy the rows after it. */
uint64_t mirror_rewrite_version(const struct index_mirror *m);

/* Store row id -> mirror row, for re-ranking a shortlist of row ids (ANN).
 * Under the read lock: mirror_rowid_sync brings the lookup up to date with
 * the rows (0, or -1 when out of memory); then, until the read lock is let
 * go, mirror_find_row_id gives the row of a row id, or -1 when none holds it. */
int mirror_rowid_sync(const struct index_mirror *m);
long mirror_find_row_id(const struct index_mirror *m, int64_t row_id);

/* One process-wide function called by mirror_free(m) before m is freed (no
 * lock held), e.g. to drop a backend's device copy of m. NULL: none. */
void mirror_set_free_hook(void (*hook)(const struct index_mirror *m));

#endif
