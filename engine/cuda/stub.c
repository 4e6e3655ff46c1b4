/* The CUDA backend of a build without CUDA (meson -Dcuda=disabled, or no nvcc):
 * the same functions, each failing with one clear line. */
#include "cuda_engine.h"
#include "cuda_scores.h"

#include "errors.h"

#define NO_CUDA "this build has no CUDA engine (built without CUDA: nvcc was not found or " \
                "-Dcuda=disabled); use --device cpu"

int cuda_device_available(char *err, size_t errlen)
{
    set_err(err, errlen, NO_CUDA);
    return 0;
}

int cuda_model_create(const struct model_config *cfg, const struct vit_weights *w, bool bf16,
                      struct cuda_model **out, char *err, size_t errlen)
{
    (void)cfg;
    (void)w;
    (void)bf16;
    *out = NULL;
    return set_err(err, errlen, NO_CUDA);
}

void cuda_model_free(struct cuda_model *cm)
{
    (void)cm;
}

int cuda_model_set_attention(struct cuda_model *cm, enum cuda_attention a, char *err,
                             size_t errlen)
{
    (void)cm;
    (void)a;
    return set_err(err, errlen, NO_CUDA);
}

int cuda_forward(struct cuda_model *cm, struct cuda_ws **ws, const float *pos, const float *x,
                 int B, int H, int W, float *cls, float *patch, char *err, size_t errlen)
{
    (void)cm; (void)ws; (void)pos; (void)x; (void)B; (void)H; (void)W; (void)cls; (void)patch;
    return set_err(err, errlen, NO_CUDA);
}

void cuda_ws_free(struct cuda_ws *ws)
{
    (void)ws;
}

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
