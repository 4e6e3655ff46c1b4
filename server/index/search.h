/* k-nearest-neighbour search over an index mirror, behind one small interface.
 *
 * struct search_backend is the interface: a backend supplies exact and funnel
 * search with the signatures below. search_exact and search_funnel check the
 * arguments, then call the active backend: the CPU/BLAS one, or another chosen
 * with search_use_backend (franca-server picks the cuBLAS one when --device
 * resolves to cuda). When a backend other than the CPU one fails with
 * STORE_ERR (e.g. a CUDA error or a full device), the call is answered by the
 * CPU backend instead and the first such failure is logged to stderr.
 *
 * Scores, best first:
 *   cosine: the cosine similarity at width w (rows and queries cut to their
 *           first w components, then renormalised); larger is better.
 *   dot:    the dot product of the first w components; larger is better.
 *   l2:     the Euclidean distance (the square root of |x|^2 - 2 x.q + |q|^2,
 *           clamped at 0) over the first w components; smaller is better.
 * Equal scores are ordered by lower row index, so results are deterministic
 * for a given mirror state.
 *
 * Locking: the caller holds mirror_read_lock for the whole call and for as
 * long as it reads the hits' row and external_id (see mirror.h).
 *
 * Return: 0, STORE_INVALID (bad argument: k outside 1..SEARCH_K_MAX, q < 1,
 * w outside 1..width, shortlist < 1, NaN/Inf in a query) or STORE_ERR (out of
 * memory), with a message in err. */
#ifndef FRANCA_INDEX_SEARCH_H
#define FRANCA_INDEX_SEARCH_H

#include <stddef.h>
#include <stdint.h>

#include "index/mirror.h"

#define SEARCH_K_MAX 10000

struct search_hit {
    int64_t row_id;          /* store row id */
    const char *external_id; /* owned by the mirror; valid under the read lock */
    uint32_t row;            /* mirror row; valid under the read lock */
    float score;             /* see above */
};

/* queries: [q, w] row-major, the first w components of each query (for cosine
 * they need not be normalised). row_mask: NULL, or mirror_count bytes, nonzero =
 * eligible (filters). out: [q, k]; the first *n_out = min(k, eligible rows)
 * entries of each query's k are filled, the rest untouched. */
typedef int (*search_exact_fn)(const struct index_mirror *m, const float *queries, int q,
                               int w, int k, const uint8_t *row_mask,
                               struct search_hit *out, int *n_out, char *err,
                               size_t errlen);
/* Funnel: scores every eligible row at the funnel width fw (on the kept prefix
 * matrix when fw is its width, else on the first fw columns of the full
 * matrix), keeps the best max(shortlist, k) per query, then re-ranks those
 * exactly at width w. When w <= fw the funnel has nothing to gain and runs
 * exact search. */
typedef int (*search_funnel_fn)(const struct index_mirror *m, const float *queries, int q,
                                int w, int k, int fw, int shortlist, const uint8_t *row_mask,
                                struct search_hit *out, int *n_out, char *err,
                                size_t errlen);

struct search_backend {
    const char *name;
    search_exact_fn exact;
    search_funnel_fn funnel;
};

/* The CPU backend: mm_sgemm (common/mm.h) over blocks of rows, binary-heap top-k. */
extern const struct search_backend search_backend_cpu;
/* The cuBLAS backend (search_cuda.c): the same contract and results (scores
 * equal up to float rounding). Keeps per mirror a device copy of the matrices
 * it scans, uploaded again when mirror_version changes, scores blocks of rows
 * with cublasSgemm (fp32) and ranks them on the host with the CPU backend's
 * heaps (search_exact_scored). Without a usable device (or in a build without
 * CUDA) every call fails with STORE_ERR and the reason. */
extern const struct search_backend search_backend_cuda;

/* The backend search_exact and search_funnel call (default: the CPU one).
 * Set it once at start, before searches run. */
void search_use_backend(const struct search_backend *b);
const struct search_backend *search_current_backend(void);

/* For backends that compute dot products elsewhere: the CPU backend's driver
 * (query preparation, row norms, top-k heaps, funnel re-rank) with each block
 * of dot products from a scorer. The driver calls begin, then launch/wait per
 * block of rows (launching the next block into the other slot before waiting
 * for the current one), then end (always, even after a failure of begin).
 * Each returns 0, or -1 with a message in err (the search then answers
 * STORE_ERR with it). */
enum search_matrix { SEARCH_MATRIX_FULL = 0, SEARCH_MATRIX_PREFIX = 1 };
struct search_scorer {
    void *ctx;
    /* A pass over the mirror's full or prefix matrix: prepared queries Q [q, w]
     * (cut to w components, unit for cosine), blocks of at most max_rows rows;
     * want_sq: blocks also bring each row's squared norm over its first w
     * components. */
    int (*begin)(void *ctx, enum search_matrix matrix, const float *Q, int q, int w,
                 size_t max_rows, int want_sq, char *err, size_t errlen);
    /* Queues rows r0..r0+b-1 into slot 0 or 1. */
    int (*launch)(void *ctx, int slot, size_t r0, size_t b, char *err, size_t errlen);
    /* The slot's block: S [q, b] row-major dot products; sq [b] (want_sq). */
    int (*wait)(void *ctx, int slot, const float **S, const float **sq, char *err,
                size_t errlen);
    void (*end)(void *ctx);
};
/* search_exact_fn / search_funnel_fn with a scorer (arguments already checked). */
int search_exact_scored(const struct search_scorer *sc, const struct index_mirror *m,
                        const float *queries, int q, int w, int k, const uint8_t *row_mask,
                        struct search_hit *out, int *n_out, char *err, size_t errlen);
int search_funnel_scored(const struct search_scorer *sc, const struct index_mirror *m,
                         const float *queries, int q, int w, int k, int fw, int shortlist,
                         const uint8_t *row_mask, struct search_hit *out, int *n_out,
                         char *err, size_t errlen);

int search_exact(const struct index_mirror *m, const float *queries, int q, int w, int k,
                 const uint8_t *row_mask, struct search_hit *out, int *n_out, char *err,
                 size_t errlen);
/* funnel_width 0 means the mirror's prefix width; otherwise 1..w. */
int search_funnel(const struct index_mirror *m, const float *queries, int q, int w, int k,
                  int funnel_width, int shortlist, const uint8_t *row_mask,
                  struct search_hit *out, int *n_out, char *err, size_t errlen);

#endif
