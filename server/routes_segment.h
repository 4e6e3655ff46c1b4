/* In-context segmentation in the routes (routes_segment.c): the label masks
 * of patch items ("labels" of an insert) and the segment route. */
#ifndef FRANCA_ROUTES_SEGMENT_H
#define FRANCA_ROUTES_SEGMENT_H

#include <jansson.h>
#include <stdint.h>

#include "routes_index.h"

/* An item's label mask, one byte per pixel of its image. */
struct route_mask {
    uint8_t *pix;
    int width, height;
};

/* Decodes an item's "labels" (a PNG as base64 or a data URI: 8-bit grey or
 * palette, engine/image_labels.h). 0, or the status to answer (400, 413) with
 * why. */
int route_mask_parse(struct app *app, const json_t *labels, struct route_mask *m, char *why,
                     size_t len);
/* Image k of im must have m's size: 0, or the status (400; 422 for an image
 * that does not decode) with why giving both sizes. */
int route_mask_check(struct app *app, const struct route_images *im, int k,
                     const struct route_mask *m, char *why, size_t len);
/* Once im is embedded: m's per-patch labels (seg_map.h), malloc'ed
 * [im->grid_h * im->grid_w], or NULL (memory). */
uint8_t *route_mask_patches(const struct route_images *im, const struct route_mask *m);
void route_mask_free(struct route_mask *m);

#endif
