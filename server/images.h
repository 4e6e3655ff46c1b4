/* Request images: decode bytes and preprocess them for a model, as the
 * checkpoint's eval preprocessing (resize + centre crop) or an R x R resize. */
#ifndef FRANCA_IMAGES_H
#define FRANCA_IMAGES_H

#include <stddef.h>
#include <stdint.h>

#include "model_config.h"

/* The input side for a request: resolution 0 means the eval crop size. */
int image_input_side(const struct model_config *cfg, int resolution);

/* out: [3, S, S] with S = image_input_side(cfg, resolution). Returns 0, or -1
 * with a message for an undecodable or oversized image (a 422). */
int image_prepare(const uint8_t *bytes, size_t len, const struct model_config *cfg,
                  int resolution, size_t max_pixels, float *out, char *err, size_t errlen);

#endif
