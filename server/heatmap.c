/* Heat-map pictures; see heatmap.h. */
#include "heatmap.h"

#include <stdlib.h>

#include "errors.h"
#include "image_encode.h"

/* Nine stops of matplotlib's viridis, evenly spaced over 0..1. */
static const uint8_t ramp[9][3] = {
    {68, 1, 84},    {71, 44, 122},  {59, 81, 139},  {44, 113, 142}, {33, 144, 141},
    {39, 173, 129}, {92, 200, 99},  {170, 220, 50}, {253, 231, 37},
};

static void colour(float t, uint8_t *rgb)
{
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    const float x = t * 8;
    int i = (int)x;
    if (i > 7) i = 7;
    const float f = x - (float)i;
    for (int c = 0; c < 3; c++)
        rgb[c] = (uint8_t)(ramp[i][c] + f * (ramp[i + 1][c] - ramp[i][c]) + 0.5f);
}

/* The grid coordinate of output pixel o of n over g cells, clamped to the
 * centres of the first and last cell. */
static float grid_pos(int o, int n, int g)
{
    const float p = ((float)o + 0.5f) * (float)g / (float)n - 0.5f;
    return p < 0 ? 0 : p > (float)(g - 1) ? (float)(g - 1) : p;
}

int heatmap_png(const float *v, int gh, int gw, int out_w, int out_h, float *lo, float *hi,
                uint8_t **png, size_t *len, char *err, size_t errlen)
{
    if (gh < 1 || gw < 1 || out_w < 1 || out_h < 1 || (size_t)out_w * (size_t)out_h > (1u << 26))
        return set_err(err, errlen, "heat map: bad size %dx%d (grid %dx%d)", out_w, out_h, gw,
                       gh);
    float mn = v[0], mx = v[0];
    for (size_t i = 1; i < (size_t)gh * gw; i++) {
        mn = v[i] < mn ? v[i] : mn;
        mx = v[i] > mx ? v[i] : mx;
    }
    *lo = mn;
    *hi = mx;
    uint8_t *pix = malloc((size_t)out_w * (size_t)out_h * 3);
    if (!pix) return set_err(err, errlen, "heat map: out of memory");
    const float span = mx > mn ? mx - mn : 1.0f;
    for (int y = 0; y < out_h; y++) {
        const float gy = grid_pos(y, out_h, gh);
        const int y0 = (int)gy, y1 = y0 + 1 < gh ? y0 + 1 : y0;
        const float fy = gy - (float)y0;
        for (int x = 0; x < out_w; x++) {
            const float gx = grid_pos(x, out_w, gw);
            const int x0 = (int)gx, x1 = x0 + 1 < gw ? x0 + 1 : x0;
            const float fx = gx - (float)x0;
            const float top = v[y0 * gw + x0] * (1 - fx) + v[y0 * gw + x1] * fx;
            const float bot = v[y1 * gw + x0] * (1 - fx) + v[y1 * gw + x1] * fx;
            const float s = top * (1 - fy) + bot * fy;
            colour(mx > mn ? (s - mn) / span : 0.5f, pix + ((size_t)y * out_w + x) * 3);
        }
    }
    const int rc = image_png_encode(pix, out_w, out_h, 3, png, len, err, errlen);
    free(pix);
    return rc;
}
