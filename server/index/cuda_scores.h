/* Dot-product scores on a CUDA device for the index's search backend
 * (server/index/search_cuda.c): cublasSgemm (fp32, no TF32) between a block of
 * rows of a device-resident matrix and a set of queries, copied back into
 * pinned host memory, where the caller ranks them.
 *
 * server/index/cuda/scores.cu implements it when the build has CUDA;
 * server/index/cuda/stub.c otherwise, where every function fails with "built
 * without CUDA". Every function returns 0 on success or -1 with a one-line message in err; none
 * aborts, and a failed call leaves no error behind in the CUDA runtime's
 * per-thread "last error".
 *
 * A cuda_scores_matrix is a device copy of a row-major float matrix [n, ld].
 * A cuda_scores_ws belongs to one thread at a time: its stream, cuBLAS handle,
 * device query and score buffers and two pinned host score buffers (slots 0
 * and 1, so that the host ranks one block while the device computes and
 * copies the next). A matrix may be read by several workspaces at once; it
 * must not be uploaded while any of them uses it. */
#ifndef FRANCA_CUDA_SCORES_H
#define FRANCA_CUDA_SCORES_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

struct cuda_scores_matrix;
struct cuda_scores_ws;

/* A workspace on the current device; fails (with the reason) when no CUDA
 * device is usable or the build has no CUDA. */
int cuda_scores_ws_create(struct cuda_scores_ws **out, char *err, size_t errlen);
void cuda_scores_ws_free(struct cuda_scores_ws *ws);

/* Copies the host matrix x [n, ld] into *mat (created when NULL; its device
 * allocation is reused when large enough), through ws's stream; returns when
 * the copy is complete. keep_rows: the rows *mat holds are still the first
 * rows of x (only rows were appended since), so only the rows after them are
 * copied (ignored, and everything copied, when the allocation must grow or ld
 * changed). On failure *mat holds no rows. */
int cuda_scores_upload(struct cuda_scores_ws *ws, struct cuda_scores_matrix **mat, const float *x,
                       size_t n, int ld, int keep_rows, char *err, size_t errlen);
void cuda_scores_matrix_free(struct cuda_scores_matrix *mat);

/* Starts a pass over x: uploads the queries Q [q, w] (row-major, w <= ld) and
 * sizes the buffers for blocks of at most max_rows rows. want_sq: each block
 * also brings the squared L2 norm of its rows over their first w components. */
int cuda_scores_begin(struct cuda_scores_ws *ws, const struct cuda_scores_matrix *x,
                      const float *Q, int q, int w, size_t max_rows, int want_sq, char *err,
                      size_t errlen);
/* Queues the block of rows r0..r0+b-1 into slot 0 or 1 (which must not hold a
 * queued block): S[i, j] = Q[i, :w] . x[r0 + j, :w]. */
int cuda_scores_launch(struct cuda_scores_ws *ws, int slot, size_t r0, size_t b, char *err,
                       size_t errlen);
/* Waits for the slot's block: *S = [q, b] row-major scores, *sq = [b] squared
 * norms (NULL without want_sq), both valid until the slot is launched again or
 * the pass ends. */
int cuda_scores_wait(struct cuda_scores_ws *ws, int slot, const float **S, const float **sq,
                     char *err, size_t errlen);
/* Ends the pass: waits for anything still queued. Always safe to call. */
void cuda_scores_end(struct cuda_scores_ws *ws);

#ifdef __cplusplus
}
#endif

#endif
