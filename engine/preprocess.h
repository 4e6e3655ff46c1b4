/* Image preprocessing into the model's input layout: float32 [3, H, W] planes,
 * normalised with per-channel mean/std on [0,1] pixels.
 *
 * Eval mode (docs/model.md §4): resize so the shorter side is resize_size with PIL's
 * bicubic filter (a = -0.5, antialiased support when downscaling, uint8
 * intermediate rounding as PIL does), centre crop crop_size (torchvision's
 * rounding of the offsets), ToTensor, Normalize.
 * Square mode: resize the whole image to R x R (same filter), then normalise;
 * used for dense features at a chosen resolution. */
#ifndef FRANCA_PREPROCESS_H
#define FRANCA_PREPROCESS_H

#include "image.h"
#include "model_config.h"

/* out: [3, crop, crop] floats. */
int preprocess_eval(const struct image_rgb8 *img, const struct preprocess_config *pc,
                    float *out, char *err, size_t errlen);
/* out: [3, R, R] floats. */
int preprocess_square(const struct image_rgb8 *img, int R, const float mean[3],
                      const float std[3], float *out, char *err, size_t errlen);

/* PIL-compatible bicubic resize of an RGB8 image (exposed for tests). */
int resize_bicubic_rgb8(const struct image_rgb8 *src, int out_w, int out_h,
                        struct image_rgb8 *dst, char *err, size_t errlen);

/* The antialiased bicubic weights of that resize (a = -0.5, support widened by
 * the scale when shrinking, taps cut at the borders and renormalised), also
 * torch's F.interpolate(mode="bicubic", antialias=True, align_corners=False)
 * with a size. Output sample xx of a 1-D resize in_size -> out_size reads
 * inputs *lo .. *lo + n - 1 with weights w[0 .. n-1]; returns n. w holds
 * ksize = bicubic_aa_ksize(in_size, out_size) doubles. */
int bicubic_aa_ksize(int in_size, int out_size);
int bicubic_aa_weights(int in_size, int out_size, int xx, int ksize, double *w, int *lo);

/* torchvision Resize(size) on a w x h image: the shorter side becomes size,
 * the longer int(size * long / short). Returns -1 if the result is absurd. */
int preprocess_resized_size(int w, int h, int size, int *out_w, int *out_h);

/* torchvision CenterCrop offset (top or left) for one axis: round-half-even of
 * (size - crop) / 2; negative (minus the zero padding) when crop > size. */
int preprocess_crop_offset(int size, int crop);

#endif
