/* PNG encoding of 8-bit pictures made by the server (PCA pictures, heat maps,
 * label masks): libpng into memory. */
#ifndef FRANCA_IMAGE_ENCODE_H
#define FRANCA_IMAGE_ENCODE_H

#include <stddef.h>
#include <stdint.h>

/* pix: height rows of width * channels bytes (channels 1: gray, 3: RGB).
 * On success *out (malloc'd, *out_len bytes) holds the PNG file and 0 is
 * returned; otherwise -1 with a message (bad size, out of memory). */
int image_png_encode(const uint8_t *pix, int width, int height, int channels, uint8_t **out,
                     size_t *out_len, char *err, size_t errlen);

#endif
