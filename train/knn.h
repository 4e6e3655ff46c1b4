/* k-NN evaluation (docs/model.md §14.1): frozen CLS features (final LayerNorm), the first
 * W dimensions L2-normalised, cosine similarity to every train feature, the
 * k = 20 nearest, each voting exp(sim / 0.07) for its class; top-1 accuracy.
 * Images go through the model's own eval preprocessing (engine/preprocess). */
#ifndef FRANCA_TRAIN_KNN_H
#define FRANCA_TRAIN_KNN_H

#include <stddef.h>
#include <stdint.h>

#include "checkpoint.h"
#include "dataset.h"
#include "vit.h"

#define KNN_K 20
#define KNN_T 0.07

/* CLS features [n, D] of the first n images of im (n <= im->n). */
int knn_features(struct vit_model *m, const struct idx_images *im, int n, float *out,
                 char *err, size_t errlen);

/* Top-1 accuracy of k-NN on features [*, D] at prefix width W (1..D). */
double knn_top1(const float *train, const uint8_t *ytr, int ntr, const float *test,
                const uint8_t *yte, int nte, int D, int W, int k, double T);

/* Copies the backbone tensors of cfg (not RASA) from w into d (any layouts). */
void knn_weights_copy(const struct model_config *cfg, struct vit_weights *d,
                      const struct vit_weights *w);

/* Copies weights (any layout) into a fresh model the engine can run. */
int knn_model_from_weights(const struct model_config *cfg, const struct vit_weights *w,
                           struct vit_model **out, char *err, size_t errlen);

/* A labelled evaluation set: train and test IDX images with labels. */
struct knn_data {
    struct idx_images train, test;
    uint8_t *ytr, *yte;
    int ntr, nte;
};
/* max_train / max_test: keep the first N (0: all). */
int knn_data_load(struct knn_data *d, const char *train_images, const char *train_labels,
                  const char *test_images, const char *test_labels, int max_train,
                  int max_test, char *err, size_t errlen);
void knn_data_free(struct knn_data *d);

/* Accuracy at each width of widths[n_widths] into acc. */
int knn_eval(struct vit_model *m, const struct knn_data *d, const int *widths, int n_widths,
             double *acc, char *err, size_t errlen);

#endif
