/* The CUDA backend of a build without CUDA (meson -Dcuda=disabled, or no nvcc):
 * the same functions, each failing with one clear line. */
#include "cuda_engine.h"

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
