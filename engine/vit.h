/* The ViT forward: one small API shared by the CPU and (later) CUDA engines.
 *
 * A vit_model owns a loaded checkpoint and the caches derived from it
 * (interpolated positional tables per grid, RASA unit vectors). A vit_workspace
 * holds every activation buffer for one (batch, height, width) and is reused
 * across calls; nothing is allocated inside the layer loop.
 *
 * Threading: a model may be shared by threads that each use their own
 * workspace; the positional-table cache is guarded internally. */
#ifndef FRANCA_VIT_H
#define FRANCA_VIT_H

#include <stdbool.h>
#include <stddef.h>

#include "checkpoint.h"

/* Largest accepted input side in pixels, and largest token count per image.
 * 1792 px at patch 14 is a 128x128 grid (16384 tokens). */
#define VIT_MAX_SIDE 1792
#define VIT_MAX_TOKENS 16385

struct vit_model;
struct vit_workspace;

int vit_model_load(const char *path, struct vit_model **out, char *err, size_t errlen);
/* Takes ownership of ck's contents (ck is zeroed). */
int vit_model_from_checkpoint(struct checkpoint *ck, struct vit_model **out, char *err, size_t errlen);
void vit_model_free(struct vit_model *m);
const struct model_config *vit_model_config(const struct vit_model *m);
const char *vit_model_fingerprint(const struct vit_model *m);

/* Checks H and W (multiples of the patch size, within VIT_MAX_SIDE). */
int vit_check_resolution(const struct vit_model *m, int H, int W, char *err, size_t errlen);

struct vit_outputs {
    float *cls;         /* [B, D]: final-LayerNorm CLS, or NULL */
    float *patch;       /* [B, N, D]: final-LayerNorm patch tokens, or NULL */
    float *patch_rasa;  /* [B, N, D]: RASA-cleaned patch tokens, or NULL (needs RASA tensors) */
};

/* x: [B, 3, H, W] normalised float32. Buffers in out are caller-owned. The
 * workspace pointer is (re)allocated when (B, H, W) grows beyond what it holds. */
int vit_forward(struct vit_model *m, struct vit_workspace **ws, const float *x,
                int B, int H, int W, const struct vit_outputs *out,
                char *err, size_t errlen);
void vit_workspace_free(struct vit_workspace *ws);

/* Forward FLOPs for one image at H x W (GEMMs and attention), for benchmarks. */
double vit_flops_per_image(const struct model_config *cfg, int H, int W);

#endif
