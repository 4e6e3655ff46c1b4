/* Where an image's pixels land on its patch grid under the model's eval
 * preprocessing (engine/preprocess.h: the shorter side resized to
 * resize_size, torchvision's int() for the longer, then a centre crop of
 * crop_size cut into patch x patch patches): pixel (x, y)'s centre maps to
 * ((x + 0.5) * rw / w - left, (y + 0.5) * rh / h - top) in the crop, and that
 * point's patch is floor(. / patch). Pixels mapped outside the crop (cut off
 * by it) belong to no patch.
 *
 * Label masks of inserted items go down to patches by majority (seg_map_down);
 * segmentation results come back up to pixels by nearest patch
 * (seg_map_up), where a cut-off pixel takes the nearest border patch's
 * label, so that every pixel of the answer has a label. */
#ifndef FRANCA_SEG_MAP_H
#define FRANCA_SEG_MAP_H

#include <stddef.h>
#include <stdint.h>

struct seg_map {
    int width, height, grid_h, grid_w;
    int *row_of;  /* [height]: patch row of each pixel row (outside 0..grid_h-1: cut off) */
    int *col_of;  /* [width] */
};

/* 0, or -1 with a message (memory, an image the preprocessing refuses). */
int seg_map_init(struct seg_map *m, int width, int height, int resize_size, int crop_size,
                 int patch_size, char *err, size_t errlen);
void seg_map_free(struct seg_map *m);
/* mask [height, width] labels -> out [grid_h, grid_w]: each patch's most
 * frequent label among its pixels (ties: the smaller label; 255, VOC's
 * "ignore", counts like any label), 255 for a patch no pixel maps to. */
int seg_map_down(const struct seg_map *m, const uint8_t *mask, uint8_t *out);
/* grid [grid_h, grid_w] labels -> out [height, width], nearest patch. */
void seg_map_up(const struct seg_map *m, const uint8_t *grid, uint8_t *out);

#endif
