/* The index's cuBLAS scores in a build without CUDA (-Dcuda=disabled, or no
 * nvcc): the same functions, each failing with one clear line, so that the
 * cuBLAS search backend falls back to the CPU one. */
#include "index/cuda_scores.h"

#include "errors.h"

#define NO_CUDA "this build has no CUDA (built without CUDA: nvcc was not found or " \
                "-Dcuda=disabled); use --device cpu"

/* The index's cuBLAS search backend (cuda_scores.h). */
int cuda_scores_ws_create(struct cuda_scores_ws **out, char *err, size_t errlen)
{
    *out = NULL;
    return set_err(err, errlen, NO_CUDA);
}

void cuda_scores_ws_free(struct cuda_scores_ws *ws)
{
    (void)ws;
}

int cuda_scores_upload(struct cuda_scores_ws *ws, struct cuda_scores_matrix **mat, const float *x,
                       size_t n, int ld, int keep_rows, char *err, size_t errlen)
{
    (void)ws; (void)mat; (void)x; (void)n; (void)ld; (void)keep_rows;
    return set_err(err, errlen, NO_CUDA);
}

void cuda_scores_matrix_free(struct cuda_scores_matrix *mat)
{
    (void)mat;
}

int cuda_scores_begin(struct cuda_scores_ws *ws, const struct cuda_scores_matrix *x,
                      const float *Q, int q, int w, size_t max_rows, int want_sq, char *err,
                      size_t errlen)
{
    (void)ws; (void)x; (void)Q; (void)q; (void)w; (void)max_rows; (void)want_sq;
    return set_err(err, errlen, NO_CUDA);
}

int cuda_scores_launch(struct cuda_scores_ws *ws, int slot, size_t r0, size_t b, char *err,
                       size_t errlen)
{
    (void)ws; (void)slot; (void)r0; (void)b;
    return set_err(err, errlen, NO_CUDA);
}

int cuda_scores_wait(struct cuda_scores_ws *ws, int slot, const float **S, const float **sq,
                     char *err, size_t errlen)
{
    (void)ws; (void)slot;
    *S = NULL;
    *sq = NULL;
    return set_err(err, errlen, NO_CUDA);
}

void cuda_scores_end(struct cuda_scores_ws *ws)
{
    (void)ws;
}
