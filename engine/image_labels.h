/* Label masks: a PNG whose pixel values are class labels (Pascal VOC's
 * SegmentationClass files), decoded to one byte per pixel without any colour
 * conversion: an 8-bit grey PNG gives its grey values, a palette PNG (1..8
 * bits) its palette indices. RGB, alpha and 16-bit PNGs are refused: their
 * values are not labels. */
#ifndef FRANCA_IMAGE_LABELS_H
#define FRANCA_IMAGE_LABELS_H

#include <stddef.h>
#include <stdint.h>

/* 0 with *labels (malloc'ed, *width x *height bytes, row-major), or -1 with a
 * message (not a PNG, the wrong colour type, more than max_pixels pixels). */
int image_labels_decode(const uint8_t *buf, size_t len, size_t max_pixels, uint8_t **labels,
                        int *width, int *height, char *err, size_t errlen);

#endif
