/* The ViT forward: one small API shared by the CPU and CUDA engines.
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
    /* Intermediate layers (DINOv2's get_intermediate_layers): the residual
     * stream after each listed block, from the same forward. Registers are
     * left out of the patch tokens; RASA never applies to them. */
    int n_layers;       /* 0: none; at most VIT_MAX_LAYERS */
    const int *layers;  /* [n_layers] block indices, 0..depth-1 */
    bool layer_norm;    /* apply the final LayerNorm to them (the reference's norm=True) */
    float *layer_cls;   /* [n_layers, B, D]: CLS after each listed block, or NULL */
    float *layer_patch; /* [n_layers, B, N, D]: patch tokens after each listed block, or NULL */
};

#define VIT_MAX_LAYERS 64

/* x: [B, 3, H, W] normalised float32. Buffers in out are caller-owned. The
 * workspace pointer is (re)allocated when (B, H, W) grows beyond what it holds. */
int vit_forward(struct vit_model *m, struct vit_workspace **ws, const float *x,
                int B, int H, int W, const struct vit_outputs *out,
                char *err, size_t errlen);
void vit_workspace_free(struct vit_workspace *ws);

/* Devices. A model starts on the CPU in fp32; vit_model_use_device sets the
 * CPU precision (weights laid out again once) or moves its forward to
 * CUDA (weights uploaded once: bf16 GEMM weights in bf16 mode, fp32 otherwise),
 * after which vit_forward runs there with the same contract (a workspace then
 * holds the device activations, three streams and double-buffered staging; a large
 * batch runs in chunks whose copies overlap compute). Call it before
 * the model is shared between threads. RASA runs on the host on the
 * downloaded patch tokens; the Matryoshka cut stays with the caller. */
enum vit_device { VIT_DEVICE_CPU = 0, VIT_DEVICE_CUDA = 1 };
/* Precision of the products on either device: bf16 inputs with float32
 * accumulation (LayerNorm, softmax and the residual stream stay float32), or
 * fp32 throughout. On the CPU, bf16 needs AVX-512; it runs in hardware with
 * AVX512-BF16 or AMX (common/mm.h). */
enum vit_precision { VIT_PRECISION_FP32 = 0, VIT_PRECISION_BF16 = 1 };
/* What "auto" means on d: bf16 on CUDA and on CPUs with bf16 hardware, else fp32. */
enum vit_precision vit_precision_auto(enum vit_device d);
/* "fp32", "bf16" or "auto" (or NULL: auto) for device d -> *out; fails with a
 * one-line reason for an unknown name or for bf16 on a CPU without AVX-512. */
int vit_precision_parse(const char *name, enum vit_device d, enum vit_precision *out, char *err,
                        size_t errlen);
const char *vit_precision_name(enum vit_precision p);
/* CUDA attention: AUTO = fused (flash-style) kernel where supported (bf16, head
 * dim 32/64/128), else batched GEMMs + softmax; the others force one path. */
enum vit_attention { VIT_ATTENTION_AUTO = 0, VIT_ATTENTION_UNFUSED = 1, VIT_ATTENTION_FUSED = 2 };

/* 1 when a CUDA device is usable, 0 otherwise with the reason in err (no
 * device, no driver, or a build without CUDA). */
int vit_cuda_available(char *err, size_t errlen);
/* "cpu", "cuda" or "auto" (cuda when available, else cpu) -> *out. Fails with
 * a one-line reason for an unknown name or for "cuda" without a usable device. */
int vit_device_select(const char *name, enum vit_device *out, char *err, size_t errlen);
const char *vit_device_name(enum vit_device d);
int vit_model_use_device(struct vit_model *m, enum vit_device d, enum vit_precision p,
                         char *err, size_t errlen);
enum vit_device vit_model_device(const struct vit_model *m);
enum vit_precision vit_model_precision(const struct vit_model *m);
/* Only for a CUDA model; fails for FUSED where the fused kernel does not apply. */
int vit_model_set_attention(struct vit_model *m, enum vit_attention a, char *err, size_t errlen);

/* Forward FLOPs for one image at H x W (GEMMs and attention), for benchmarks. */
double vit_flops_per_image(const struct model_config *cfg, int H, int W);

#endif
