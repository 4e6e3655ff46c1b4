/* The pictures of POST /v1/pca: patch projections on the first three
 * principal components as colours, laid out with one column per Matryoshka
 * width (captioned "d=W" in a built-in 5x7 bitmap font) and one row per
 * image, encoded as PNG. No HTTP here. */
#ifndef FRANCA_PCA_PICTURE_H
#define FRANCA_PCA_PICTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* rgb[M, 3] from proj[M, 3]: each component min-max scaled to 0..255 over the
 * foreground patches (fg[i] != 0; fg NULL: every patch), as the DINOv2 PCA
 * script scales; background patches black. A component with no spread is 0. */
void pca_picture_colours(const float *proj, const uint8_t *fg, size_t M, uint8_t *rgb);

/* The picture: tiles[w] is width w's colours [n_images, grid, grid, 3]; each
 * tile is upsampled to side x side (nearest: each patch a P x P block;
 * bilinear: half-pixel centres, edges clamped, as torch's align_corners=False).
 * Above the tiles, a caption row "d=<width>" per column (just the width
 * where a tile is too narrow for it). Returns 0 with a
 * malloc'd PNG in *png, or -1 with a message. */
int pca_picture_png(const uint8_t *const *tiles, const int *widths, int n_widths, int n_images,
                    int grid, int side, bool bilinear, uint8_t **png, size_t *len, char *err,
                    size_t errlen);

#endif
