/* Image decoding: JPEG (libjpeg-turbo) and PNG (libpng) to 8-bit RGB.
 *
 * - PNG: gray, gray+alpha, palette (with tRNS), RGB, RGBA, 16-bit (the high
 *   byte is kept, as Pillow 9.4 does for 16-bit RGB/RGBA/LA; for 16-bit gray
 *   Pillow clips to 255 instead, which we do not copy), interlaced. Alpha
 *   (and tRNS) is dropped by default, as PIL's convert("RGB") does, or
 *   composited on black/white: see IMAGE_ALPHA_* below.
 * - JPEG: gray, YCbCr, CMYK/Adobe inverted CMYK; EXIF orientation applied.
 * - The declared width*height is checked against max_pixels before any pixel
 *   buffer is allocated (decompression bombs). Corrupt or truncated data gives
 *   an error, never a crash (libjpeg error manager with longjmp, libpng setjmp). */
#ifndef FRANCA_IMAGE_H
#define FRANCA_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#define IMAGE_DEFAULT_MAX_PIXELS (64u * 1024u * 1024u)

enum image_alpha {
    IMAGE_ALPHA_DROP = 0,   /* ignore alpha: what PIL's Image.convert("RGB") does (default) */
    IMAGE_ALPHA_BLACK = 1,  /* composite on black */
    IMAGE_ALPHA_WHITE = 2,  /* composite on white */
};

struct image_rgb8 {
    int width, height;
    uint8_t *data;          /* height * width * 3, row-major, malloc'd */
};

struct image_decode_opts {
    size_t max_pixels;      /* 0 = IMAGE_DEFAULT_MAX_PIXELS */
    enum image_alpha alpha;
    int apply_exif_orientation;   /* default 1 */
};

void image_decode_opts_default(struct image_decode_opts *o);

/* Detects the format from the magic bytes. */
int image_decode(const uint8_t *buf, size_t len, const struct image_decode_opts *o,
                 struct image_rgb8 *img, char *err, size_t errlen);
int image_decode_file(const char *path, const struct image_decode_opts *o,
                      struct image_rgb8 *img, char *err, size_t errlen);
void image_free(struct image_rgb8 *img);

/* Applies EXIF orientation o (1..8; 1 and out-of-range values are no-ops) in
 * place, as PIL's ImageOps.exif_transpose does (6 = rotate 90 clockwise,
 * 8 = rotate 90 counter-clockwise, 5/7 transpose/transverse). */
int image_apply_orientation(struct image_rgb8 *img, int orientation, char *err,
                            size_t errlen);

#endif
