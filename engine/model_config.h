/* The model configuration: everything needed to interpret a checkpoint's tensors
 * and to preprocess images for it. Stored as JSON under the safetensors
 * __metadata__ key "franca" (see schema/checkpoint-metadata.schema.json). */
#ifndef FRANCA_MODEL_CONFIG_H
#define FRANCA_MODEL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#define MAX_WIDTHS 16
#define MAX_REGISTERS 16
#define MAX_RASA_LAYERS 64

enum model_family { FAMILY_FRANCA = 0, FAMILY_DINOV2 = 1 };
enum ffn_kind { FFN_SWIGLU = 0, FFN_MLP = 1 };

struct preprocess_config {
    int resize_size;   /* shorter side is resized to this (256 for released models) */
    int crop_size;     /* centre crop (224) */
    float mean[3];     /* per-channel mean on [0,1] pixels */
    float std[3];
};

struct model_config {
    enum model_family family;
    int embed_dim;        /* D */
    int depth;            /* L */
    int num_heads;        /* H; D % H == 0 */
    enum ffn_kind ffn;
    int ffn_hidden;       /* SwiGLU: Hs (w12 has 2*Hs rows); MLP: fc1 rows */
    int patch_size;       /* P */
    int pos_grid;         /* M: pos_embed has 1 + M*M rows */
    bool layerscale;      /* ls1.gamma / ls2.gamma present */
    float norm_eps;       /* LayerNorm eps (1e-6) */
    int register_tokens;  /* R (0 for Franca) */
    int n_widths;         /* trained Matryoshka widths, ascending, last == D */
    int widths[MAX_WIDTHS];
    int rasa_layers;      /* T pre_pos_layers in the file; 0 = no RASA tensors */
    struct preprocess_config preprocess;
    char name[128];
    char version[64];
    bool trained;         /* false for generated, untrained checkpoints */
};

/* Parses the JSON text stored under __metadata__["franca"] into cfg and checks it
 * for internal consistency (positive sizes, D % H == 0, widths ascending in
 * 1..D, sane limits). Unknown keys are ignored. */
int model_config_from_json(const char *json, size_t len, struct model_config *cfg,
                           char *err, size_t errlen);

/* Serialises cfg as compact JSON (malloc'd, caller frees). extra_json, if not
 * NULL, is a JSON object whose keys are merged in (e.g. a training recipe). */
char *model_config_to_json(const struct model_config *cfg, const char *extra_json);

/* Checks internal consistency; used by the parser and by writers. */
int model_config_validate(const struct model_config *cfg, char *err, size_t errlen);

/* Fills the defaults of the released models that a config may omit:
 * Franca family, SwiGLU, patch 14, LayerScale, eps 1e-6, 0 registers,
 * 256/224 ImageNet preprocessing, Matryoshka widths D/16..D. */
void model_config_defaults(struct model_config *cfg, int embed_dim, int depth);

/* SwiGLU hidden width of the released models: ((int(4*D*2/3) + 7) / 8) * 8. */
int swiglu_hidden_for(int embed_dim);

#endif
