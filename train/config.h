/* The training configuration: one flat JSON object whose keys are listed (with
 * their defaults and meaning) in config.c's table and by `franca-train --help`.
 * Unknown keys are rejected; `--key value` command-line flags (key spelled with
 * '_' or '-') override keys of the file. */
#ifndef FRANCA_TRAIN_CONFIG_H
#define FRANCA_TRAIN_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "model_config.h"
#include "objective.h"

#define CFG_PATH 1024

struct train_config {
    /* architecture */
    int embed_dim, depth, num_heads, ffn_hidden; /* ffn_hidden 0: the default for ffn */
    char ffn[16];                                /* "swiglu" | "mlp" */
    int patch_size;
    bool layerscale;
    double layerscale_init;
    char head_init[16];
    int global_size, local_size, n_local;
    double global_scale_min, global_scale_max, local_scale_min, local_scale_max;
    int head_hidden, head_bottleneck, head_prototypes;
    bool head_nested;
    int n_levels;                                /* Matryoshka levels: D/2^(n-1) .. D */
    struct {
        int n;                                   /* 0: every level weighs 1 */
        double v[HEAD_MAX_LEVELS];
    } level_weights;                             /* loss weight per level, smallest first */
    double student_temp, koleo_weight, drop_path;
    bool koleo_levels;
    char masking[16];                            /* "cyclic" | "block" */
    double mask_ratio_min, mask_ratio_max, mask_sample_prob;
    /* data */
    char train_idx[CFG_PATH];                    /* IDX images (gzip or raw), or "" */
    char train_folder[CFG_PATH];                 /* image folder, or "" */
    char init_from[CFG_PATH];                    /* fine-tune from a run dir or model, or "" */
    char knn_train_images[CFG_PATH], knn_train_labels[CFG_PATH];
    char knn_test_images[CFG_PATH], knn_test_labels[CFG_PATH];
    int knn_train_max, knn_test_max;             /* 0: all images */
    int resize_size, crop_size;                  /* exported preprocessing; 0: global_size */
    /* optimisation */
    int batch_size;
    int64_t steps, warmup_steps;
    double lr, min_lr;
    bool lr_scale_sqrt;                          /* lr * sqrt(batch * accum / 1024) */
    double wd_start, wd_end, momentum_start, momentum_end;
    double teacher_temp_start, teacher_temp_end;
    int64_t teacher_temp_warmup_steps, freeze_last_layer_steps;
    double patch_embed_lr_mult, clip_grad, beta1, beta2, adam_eps;
    int grad_accum;
    char precision[16];                         /* "fp32" | "bf16": operands of the products */
    /* run */
    int64_t seed;
    int threads, prefetch;
    int64_t eval_every, checkpoint_every, log_every;
    int64_t stop_at;        /* end this invocation after this step (0: steps); not kept on resume */
    char name[128];
};

void train_config_defaults(struct train_config *c);

/* Applies the keys of a JSON object text; unknown keys, wrong types and values
 * out of range give an error naming the key. */
int train_config_apply_json(struct train_config *c, const char *json, size_t len,
                            const char *label, char *err, size_t errlen);
int train_config_load(struct train_config *c, const char *path, char *err, size_t errlen);
/* One --key value override (key without the dashes). */
int train_config_set(struct train_config *c, const char *key, const char *value, char *err,
                     size_t errlen);
/* Whether key names a config key. */
bool train_config_has_key(const char *key);
/* Cross-field checks (divisibility, ranges, a data source). */
int train_config_validate(const struct train_config *c, char *err, size_t errlen);
/* Every key as a JSON object (malloc'd). */
char *train_config_to_json(const struct train_config *c);
/* Help text: one line per key with its default. */
void train_config_print_help(FILE *f);

/* The objective and model configs the train config implies. */
int train_config_objective(const struct train_config *c, struct objective_config *oc, char *err,
                           size_t errlen);

#endif
