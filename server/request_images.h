/* Request images: decode the bytes a client sent and preprocess them for a
 * model, as the checkpoint's eval preprocessing (resize + centre crop) or an
 * R x R resize. Every route that embeds request images prepares them here, so
 * the decode-time metric covers them all. (engine/image.h is the decoder this
 * builds on.) */
#ifndef FRANCA_REQUEST_IMAGES_H
#define FRANCA_REQUEST_IMAGES_H

#include <stddef.h>
#include <stdint.h>

#include "metrics.h"
#include "model_config.h"

/* The input side for a request: resolution 0 means the eval crop size. */
int request_image_side(const struct model_config *cfg, int resolution);

/* Decodes bytes and preprocesses them into out: [3, S, S] with
 * S = request_image_side(cfg, resolution). The time it took goes into m's
 * decode histogram when m is not NULL. Returns 0, or -1 with a message for an
 * undecodable or oversized image (a 422). */
int request_image_prepare(const uint8_t *bytes, size_t len, const struct model_config *cfg,
                          int resolution, size_t max_pixels, struct metrics *m, float *out,
                          char *err, size_t errlen);

#endif
