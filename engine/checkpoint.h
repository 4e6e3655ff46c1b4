/* Checkpoints: a safetensors file whose metadata holds the model config and whose
 * tensors carry the flattened official names (schema/checkpoint-format.md).
 *
 * Loading validates the file (safetensors.h), then the config, then every tensor
 * the config implies: present, right shape, known dtype; no tensor that the
 * config does not explain. Weights are converted to float32 into one arena. */
#ifndef FRANCA_CHECKPOINT_H
#define FRANCA_CHECKPOINT_H

#include <stdint.h>

#include "model_config.h"
#include "safetensors.h"

struct vit_block_weights {
    float *norm1_w, *norm1_b;  /* [D] */
    float *qkv_w, *qkv_b;      /* [3D, D], [3D]  rows: Q, K, V; head h = rows 64h.. */
    float *proj_w, *proj_b;    /* [D, D], [D] */
    float *ls1;                /* [D], NULL without LayerScale */
    float *norm2_w, *norm2_b;  /* [D] */
    float *fc1_w, *fc1_b;      /* SwiGLU mlp.w12: [2Hs, D]; MLP mlp.fc1: [Hs, D] */
    float *fc2_w, *fc2_b;      /* SwiGLU mlp.w3: [D, Hs];   MLP mlp.fc2: [D, Hs] */
    float *ls2;                /* [D], NULL without LayerScale */
};

struct vit_weights {
    float *cls_token;          /* [D]          cls_token [1,1,D] */
    float *pos_embed;          /* [1+M*M, D]   pos_embed [1,1+M*M,D] */
    float *mask_token;         /* [D] or NULL  mask_token [1,D] (training only) */
    float *register_tokens;    /* [R, D] or NULL */
    float *patch_w;            /* [D, 3, P, P] patch_embed.proj.weight */
    float *patch_b;            /* [D] */
    struct vit_block_weights *blocks;  /* [L] */
    float *norm_w, *norm_b;    /* [D] final LayerNorm */
    float *rasa_w;             /* [T+1, 2, D]: pre_pos_layers.0..T-1, then pos_pred; NULL if T == 0 */
    float *arena;              /* the one allocation behind every pointer above */
    size_t arena_floats;
};

struct checkpoint {
    struct model_config cfg;
    struct vit_weights w;
    char fingerprint[65];      /* sha256 of the file, lowercase hex */
};

/* Loads and validates path. On failure ck is left zeroed and err says why. */
int checkpoint_load(const char *path, struct checkpoint *ck, char *err, size_t errlen);
void checkpoint_free(struct checkpoint *ck);

/* Number of floats the weights of cfg take, and carving of an arena into them.
 *
 * Arena layout: the parameters first (each tensor starts on a 64-byte boundary
 * when the arena is 64-byte aligned; padding floats are zero), then the table
 * of per-block pointers (w->blocks). vit_weights_floats() is the size of the
 * whole allocation, table included; w->arena_floats (== vit_weights_param_floats)
 * counts only the parameter region, so flat operations over all parameters
 * (optimizer steps, gradient zeroing) must use w->arena_floats, never
 * vit_weights_floats(). The arena always has room for mask_token (zeroed). */
size_t vit_weights_floats(const struct model_config *cfg);
size_t vit_weights_param_floats(const struct model_config *cfg);
void vit_weights_carve(const struct model_config *cfg, float *arena, struct vit_weights *w);
/* Allocates a zeroed arena for cfg and carves it. */
int vit_weights_alloc(const struct model_config *cfg, struct vit_weights *w, char *err, size_t errlen);
void vit_weights_free(struct vit_weights *w);

/* Random initialisation as docs/model.md §2.6 (trunc-normal 0.02 linears, zero biases,
 * LayerNorm (1,0), LayerScale 1e-5, pos_embed trunc-normal 0.02, cls 1e-6),
 * deterministic for a seed. Used for untrained checkpoints and by the trainer. */
void vit_weights_init_random(const struct model_config *cfg, struct vit_weights *w, uint64_t seed);

/* Writes cfg + w as a checkpoint (atomic). dtype applies to every tensor.
 * extra_json: optional JSON object merged into the "franca" metadata. */
int checkpoint_save(const char *path, const struct model_config *cfg,
                    const struct vit_weights *w, enum st_dtype dtype,
                    const char *extra_json, char *err, size_t errlen);

#endif
