/* RASA post-training (docs/model.md §7.3, docs/training.md "RASA post-training"):
 * with the backbone frozen, learn R bias-free [2, D] position predictors, one per
 * round, each on the patch tokens left after removing the planes of the rounds
 * before it; the weights become rasa_w [R, 2, D] of the engine (engine/rasa.h:
 * pre_pos_layers.0..R-2, then pos_pred), written with the input model as a new
 * checkpoint. Named rasa_train.* so that "rasa.h" stays the engine's operator. */
#ifndef FRANCA_TRAIN_RASA_TRAIN_H
#define FRANCA_TRAIN_RASA_TRAIN_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "dataset.h"
#include "vit.h"

struct rasa_train_config {
    int rounds;      /* planes learned, 2..MAX_RASA_LAYERS + 1 (the file's T is rounds - 1) */
    int epochs;      /* passes over the images per round */
    int batch;       /* images per step (all their patches) */
    double lr;       /* AdamW peak rate, cosine to 0 over each round */
    uint64_t seed;   /* predictor init and batch order */
};

struct rasa_round_stats {
    double loss;       /* mean MSE of the round's last epoch */
    double r2[2];      /* R^2 of the sigmoid predictor for row and column, over all tokens, before removal */
};

/* Frozen final-LayerNorm patch tokens of images 0..n-1 of ds at the model's eval
 * preprocessing (crop_size): tokens [n, N, D], N = (crop / patch)^2. */
int rasa_features(struct vit_model *m, const struct dataset *ds, int n, float *tokens,
                  char *err, size_t errlen);

/* Trains c->rounds predictors on tokens [n_img, gh * gw, D] (row-major grid),
 * removing each round's plane from tokens in place before the next, so tokens end
 * as the engine's RASA output. rasa_w: [rounds, 2, D]; stats: [rounds]; log: a
 * progress line per round (or NULL). */
int rasa_train(const struct rasa_train_config *c, float *tokens, int n_img, int gh, int gw,
               int D, float *rasa_w, struct rasa_round_stats *stats, FILE *log, char *err,
               size_t errlen);

/* `franca-train rasa ...` (argv[1] == "rasa"); returns the exit status. */
int rasa_main(int argc, char **argv);

#endif
