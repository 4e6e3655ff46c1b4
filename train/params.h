/* The trainable tensors of a run, as one flat list that the optimizer, the EMA
 * update, gradient clipping and the training-state checkpoint all walk.
 *
 * Each entry points into memory owned by the model (backbone arenas, head
 * arenas); the list owns only its own array. Names are the official ones with
 * a module prefix: "backbone.blocks.0.attn.qkv.weight",
 * "dino_head.mlps.2.0.weight", "ibot_head.last_layers.4.weight_v", ... */
#ifndef FRANCA_TRAIN_PARAMS_H
#define FRANCA_TRAIN_PARAMS_H

#include <stdbool.h>
#include <stddef.h>

enum param_module { MOD_BACKBONE = 0, MOD_DINO_HEAD = 1, MOD_IBOT_HEAD = 2, MOD_COUNT = 3 };

struct param {
    char name[112];
    float *w;          /* student weights [n] */
    float *g;          /* gradient of the loss w.r.t. w [n] (accumulated with +=) */
    float *t;          /* EMA teacher copy [n], NULL when the teacher has none */
    size_t n;
    int module;        /* enum param_module: unit of gradient clipping */
    float wd_mult;     /* 0 for biases, norms, LayerScale gamma; 1 otherwise (docs/model.md §13) */
    float lr_mult;     /* 0.2 for patch_embed, 1 otherwise */
    bool last_layer;   /* prototype layer: lr 0 while the last layer is frozen */
};

struct param_list {
    struct param *p;
    int n, cap;
};

/* Appends an entry; returns 0, or -1 when out of memory or the name is too long. */
int param_list_add(struct param_list *l, const char *name, float *w, float *g, float *t,
                   size_t n, int module, float wd_mult, float lr_mult, bool last_layer);
const struct param *param_list_find(const struct param_list *l, const char *name);
size_t param_list_count(const struct param_list *l); /* total floats */
void param_list_free(struct param_list *l);

/* The docs/model.md §13 rules from a name: weight decay 0 for biases, names containing
 * "norm", LayerScale gammas (".ls1."/".ls2."); patch-embed lr 0.2; names with
 * "last_layer" are prototype layers. */
float param_default_wd_mult(const char *name);
float param_default_lr_mult(const char *name, float patch_embed_lr_mult);
bool param_is_last_layer(const char *name);

#endif
