/* Heat-map pictures: a grid of scores (a query patch's similarity over an
 * item's patch grid) as an RGB PNG. */
#ifndef FRANCA_HEATMAP_H
#define FRANCA_HEATMAP_H

#include <stddef.h>
#include <stdint.h>

/* v [gh, gw] row-major, scaled from its own min (dark purple) to its max
 * (yellow) on a viridis-like ramp (one colour when all are equal), bilinearly
 * upsampled between patch centres to out_w x out_h. *lo, *hi receive that
 * min and max. 0 with *png (malloc'ed, *len bytes), or -1 with a message. */
int heatmap_png(const float *v, int gh, int gw, int out_w, int out_h, float *lo, float *hi,
                uint8_t **png, size_t *len, char *err, size_t errlen);

#endif
