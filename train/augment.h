/* Multi-crop augmentation (docs/model.md §9, DINOv2/Franca DataAugmentationDINO).
 *
 * Per crop: RandomResizedCrop (torchvision's 10-attempt algorithm with the
 * centre-crop fallback; PIL-compatible bicubic resize from engine/preprocess),
 * horizontal flip p 0.5, ColorJitter(0.4, 0.4, 0.2, 0.1) with p 0.8 in a random
 * order, RandomGrayscale p 0.2, Gaussian blur (kernel 9, sigma U[0.1, 2],
 * reflect padding) with the effective probabilities (global 1: never, global 2:
 * 0.9, local: 0.5), solarize (threshold 128/255) on global 2 with p 0.2, then
 * Normalize(mean, std). The colour operations run on float [0, 1] pixels with
 * torchvision's tensor semantics (clamped after each operation).
 *
 * Output crop-major as struct crop_batch wants: global crop c of sample b at
 * global + (c*B + b) * 3*G*G, local crop l at local + (l*B + b) * 3*Lc*Lc. */
#ifndef FRANCA_TRAIN_AUGMENT_H
#define FRANCA_TRAIN_AUGMENT_H

#include <stddef.h>

#include "image.h"
#include "rng.h"

struct augment_config {
    int global_size, local_size, n_local;
    double global_scale[2];   /* (0.32, 1.0) */
    double local_scale[2];    /* (0.05, 0.32) */
    double ratio[2];          /* (3/4, 4/3) */
    double flip_p;            /* 0.5 */
    double jitter_p;          /* 0.8 */
    double brightness, contrast, saturation, hue;  /* 0.4, 0.4, 0.2, 0.1 */
    double gray_p;            /* 0.2 */
    double blur_p_global1, blur_p_global2, blur_p_local;  /* 0, 0.9, 0.5 (effective) */
    double blur_sigma[2];     /* (0.1, 2.0) */
    int blur_kernel;          /* 9 */
    double solarize_p;        /* 0.2, global crop 2 only */
    float mean[3], std[3];    /* ImageNet by default */
};

/* The values of docs/model.md §9 with the given crop sizes and number of local crops. */
void augment_config_default(struct augment_config *c, int global_size, int local_size,
                            int n_local);

/* torchvision RandomResizedCrop.get_params on a width x height image:
 * (top, left, h, w). */
void rrc_params(struct rng *r, int width, int height, const double scale[2],
                const double ratio[2], int *top, int *left, int *h, int *w);

/* One crop of img at size x size, every step above; out: [3, size, size]. kind: 0
 * global crop 1, 1 global crop 2, 2 local. */
int augment_crop(const struct augment_config *c, const struct image_rgb8 *img, int kind,
                 struct rng *r, float *out, char *err, size_t errlen);

/* Every crop of one sample (2 global, then n_local local), drawn in that order
 * from r, written at sample b of a batch of B. */
int augment_sample(const struct augment_config *c, const struct image_rgb8 *img, struct rng *r,
                   int b, int B, float *global, float *local, char *err, size_t errlen);

/* Colour helpers on float HWC [0,1] RGB pixels (exposed for tests). */
void color_jitter(float *px, size_t npix, const double factors[4], const int order[4]);
void to_grayscale(float *px, size_t npix);
void gaussian_blur(float *px, int w, int h, int ksize, double sigma, float *tmp);

#endif
