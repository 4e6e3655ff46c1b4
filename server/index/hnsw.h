/* A hierarchical navigable small-world graph (HNSW) over the L2-normalised
 * Matryoshka prefix of vectors: approximate nearest neighbours by cosine at
 * width W, for a shortlist that the caller re-ranks exactly at full width.
 *
 * Nodes are dense internal ids 0..n-1, each labelled with a caller's int64
 * (the store row id). A node keeps the first W components of the vector it
 * was inserted with, renormalised to unit length (an all-zero prefix stays
 * zero); the distance is 1 - dot.
 *
 * Deletes are tombstones: a deleted node still routes searches and keeps its
 * links, but is never returned, and its label may be inserted again (as a new
 * node). hnsw_tombstones says how many there are; hnsw_compact builds a fresh
 * graph of the live nodes (off-line: the caller swaps it in).
 *
 * Thread safety: hnsw_insert, hnsw_delete and hnsw_search may be called from
 * any number of threads at once (per-node spin locks guard the link lists, a
 * rwlock guards growth of the arrays, a mutex the label table and the entry
 * point). hnsw_save may run beside searches but not beside writers; hnsw_free
 * beside nothing.
 *
 * Files (hnsw_save / hnsw_load): a header (magic "FRHNSW\0\1", format
 * version, width, m, ef_construction, ef, node count, the caller's
 * generation, top level, entry point), the node arrays, and a 64-bit checksum
 * of everything before it. Written to PATH.tmp, fsynced, renamed over PATH
 * and the directory fsynced, so PATH is always a whole file. */
#ifndef FRANCA_INDEX_HNSW_H
#define FRANCA_INDEX_HNSW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HNSW_M_DEFAULT 16
#define HNSW_EFC_DEFAULT 200
#define HNSW_EF_DEFAULT 128
#define HNSW_M_MAX 64
#define HNSW_EF_MAX 10000
#define HNSW_WIDTH_MAX 4096

struct hnsw;

/* A new empty graph: width 1..HNSW_WIDTH_MAX, m 2..HNSW_M_MAX (level 0 keeps
 * 2m links), ef_construction >= m, ef (the default per query) 1..HNSW_EF_MAX.
 * NULL with a message in err on bad arguments or out of memory. */
struct hnsw *hnsw_create(int width, int m, int ef_construction, int ef, char *err,
                         size_t errlen);
void hnsw_free(struct hnsw *h);

/* Makes room for n nodes in all (optional; the graph grows by itself). */
int hnsw_reserve(struct hnsw *h, size_t n);

/* Inserts a node labelled label for vec (at least width floats, finite; only
 * the first width are read). A live node with the same label is tombstoned
 * first. 0, or -1 when out of memory. */
int hnsw_insert(struct hnsw *h, int64_t label, const float *vec);

/* Tombstones the live node labelled label: 0, or -1 when there is none. */
int hnsw_delete(struct hnsw *h, int64_t label);

/* Whether label is live; with prefix non-NULL, its stored unit prefix is
 * copied there (width floats). */
bool hnsw_lookup(struct hnsw *h, int64_t label, float *prefix);

/* Every live label, in node order, into a new array (*n of them): free it. */
int hnsw_labels(struct hnsw *h, int64_t **out, size_t *n);

/* accept: NULL (every live node), or a predicate called on a live node's label
 * during the walk; rejected nodes still route. */
typedef bool (*hnsw_accept_fn)(int64_t label, void *ctx);

/* The k (<= ef) nearest accepted live nodes to query (at least width floats;
 * normalised here) walking with ef (0: the graph's default; raised to k):
 * labels[k] and dists[k] (1 - cosine at width; may be NULL), best first.
 * Returns how many were found (0..k), or -1 when out of memory. */
int hnsw_search(struct hnsw *h, const float *query, int k, int ef, hnsw_accept_fn accept,
                void *ctx, int64_t *labels, float *dists);

/* Nodes in all (tombstones included), tombstones, and the parameters. */
size_t hnsw_nodes(const struct hnsw *h);
size_t hnsw_tombstones(const struct hnsw *h);
int hnsw_width(const struct hnsw *h);
int hnsw_m(const struct hnsw *h);
int hnsw_ef_construction(const struct hnsw *h);
int hnsw_ef(const struct hnsw *h);
void hnsw_set_ef(struct hnsw *h, int ef);
/* Bytes held by the graph (vectors, links, labels, tables). */
size_t hnsw_memory(const struct hnsw *h);
/* The dot-product kernel chosen at run time: "avx512", "avx2" or "generic". */
const char *hnsw_kernel(void);

/* A new graph with the live nodes of h only (same parameters), built with
 * threads threads (>= 1). NULL when out of memory. h may serve searches
 * meanwhile but must not be written. */
struct hnsw *hnsw_compact(struct hnsw *h, int threads);

/* Inserts n nodes (labels[i], vectors row i of [n, ld]) with threads threads.
 * progress, when not NULL, is incremented as nodes go in; cancel, when not
 * NULL and set, stops the work early (-2). 0, -1 (memory) or -2. */
int hnsw_insert_many(struct hnsw *h, const int64_t *labels, const float *vectors, size_t n,
                     size_t ld, int threads, _Atomic size_t *progress, _Atomic int *cancel);

/* Saves h with the caller's generation (see above). 0, or -1 with a message. */
int hnsw_save(struct hnsw *h, const char *path, int64_t generation, char *err, size_t errlen);
/* Loads a saved graph; its generation goes to *generation. NULL with a message
 * when the file is missing, truncated, corrupt or of another version. */
struct hnsw *hnsw_load(const char *path, int64_t *generation, char *err, size_t errlen);

#endif
