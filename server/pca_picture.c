#include "pca_picture.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "image_encode.h"

void pca_picture_colours(const float *proj, const uint8_t *fg, size_t M, uint8_t *rgb)
{
    float lo[3] = {0, 0, 0}, hi[3] = {0, 0, 0};
    bool any = false;
    for (size_t i = 0; i < M; i++) {
        if (fg && !fg[i]) continue;
        for (int c = 0; c < 3; c++) {
            const float v = proj[i * 3 + c];
            if (!any || v < lo[c]) lo[c] = v;
            if (!any || v > hi[c]) hi[c] = v;
        }
        any = true;
    }
    for (size_t i = 0; i < M; i++) {
        for (int c = 0; c < 3; c++) {
            float t = 0;
            if ((!fg || fg[i]) && hi[c] > lo[c]) t = (proj[i * 3 + c] - lo[c]) / (hi[c] - lo[c]);
            rgb[i * 3 + c] = (uint8_t)lrintf(255.0f * (t < 0 ? 0 : t > 1 ? 1 : t));
        }
    }
}

/* 5x7 glyphs, one byte per row, bit 4 the leftmost pixel: the caption's
 * characters only ("d=" and digits). */
static const uint8_t *glyph(char ch)
{
    static const uint8_t digits[10][7] = {
        {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}, {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E},
        {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}, {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E},
        {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}, {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E},
        {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}, {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08},
        {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}, {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C},
    };
    static const uint8_t d[7] = {0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F};
    static const uint8_t eq[7] = {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00};
    if (ch >= '0' && ch <= '9') return digits[ch - '0'];
    if (ch == 'd') return d;
    if (ch == '=') return eq;
    return NULL;
}

#define GLYPH_W 5
#define GLYPH_H 7
#define PAD 3

/* The pixel width of n characters at scale (one blank column between). */
static int caption_width(int n, int scale)
{
    return (n * (GLYPH_W + 1) - 1) * scale;
}

/* Draws text in white, centred in the columns [x0, x0 + w) of the caption
 * rows of pix (stride bytes per row), clipped to those columns. */
static void draw_caption(uint8_t *pix, size_t stride, int x0, int w, int scale, const char *text)
{
    const int n = (int)strlen(text), adv = (GLYPH_W + 1) * scale;
    const int tw = caption_width(n, scale);
    int x = x0 + (w - tw) / 2;
    if (x < x0) x = x0;
    for (int k = 0; k < n; k++, x += adv) {
        const uint8_t *g = glyph(text[k]);
        for (int gy = 0; g && gy < GLYPH_H * scale; gy++)
            for (int gx = 0; gx < GLYPH_W * scale; gx++) {
                const int px = x + gx;
                if (px >= x0 + w || !(g[gy / scale] & (0x10 >> (gx / scale)))) continue;
                memset(pix + (size_t)(PAD + gy) * stride + (size_t)px * 3, 255, 3);
            }
    }
}

/* One image's tile [grid, grid, 3] upsampled into the side x side block at
 * out (stride bytes per row). */
static void upsample(const uint8_t *t, int grid, int side, bool bilinear, uint8_t *out,
                     size_t stride)
{
    const double f = (double)grid / side;
    for (int y = 0; y < side; y++) {
        uint8_t *row = out + (size_t)y * stride;
        if (!bilinear) {
            const int gy = y * grid / side;
            for (int x = 0; x < side; x++)
                memcpy(row + (size_t)x * 3, t + ((size_t)gy * grid + x * grid / side) * 3, 3);
            continue;
        }
        double sy = (y + 0.5) * f - 0.5;
        if (sy < 0) sy = 0;
        const int y0 = (int)sy, y1 = y0 + 1 < grid ? y0 + 1 : y0;
        const double wy = sy - y0;
        for (int x = 0; x < side; x++) {
            double sx = (x + 0.5) * f - 0.5;
            if (sx < 0) sx = 0;
            const int x0 = (int)sx, x1 = x0 + 1 < grid ? x0 + 1 : x0;
            const double wx = sx - x0;
            for (int c = 0; c < 3; c++) {
                const double a = t[((size_t)y0 * grid + x0) * 3 + c] * (1 - wx) +
                                 t[((size_t)y0 * grid + x1) * 3 + c] * wx;
                const double b = t[((size_t)y1 * grid + x0) * 3 + c] * (1 - wx) +
                                 t[((size_t)y1 * grid + x1) * 3 + c] * wx;
                row[(size_t)x * 3 + c] = (uint8_t)lrint(a * (1 - wy) + b * wy);
            }
        }
    }
}

int pca_picture_png(const uint8_t *const *tiles, const int *widths, int n_widths, int n_images,
                    int grid, int side, bool bilinear, uint8_t **png, size_t *len, char *err,
                    size_t errlen)
{
    if (n_widths < 1 || n_images < 1 || grid < 1 || side < grid)
        return set_err(err, errlen, "pca picture: bad sizes");
    /* Twice the font size where every caption fits its tile; a caption too
     * wide even at 1x (small inputs) drops its "d=". */
    int longest = 0;
    for (int w = 0; w < n_widths; w++) {
        char text[24];
        const int n = snprintf(text, sizeof text, "d=%d", widths[w]);
        if (n > longest) longest = n;
    }
    const int scale = caption_width(longest, 2) <= side ? 2 : 1;
    const int cap_h = GLYPH_H * scale + 2 * PAD;
    const size_t W = (size_t)side * n_widths, H = (size_t)cap_h + (size_t)side * n_images;
    const size_t stride = W * 3;
    uint8_t *pix = calloc(H, stride);
    if (!pix) return set_err(err, errlen, "pca picture: out of memory for %zux%zu pixels", W, H);
    for (int w = 0; w < n_widths; w++) {
        char text[24];
        const int n = snprintf(text, sizeof text, "d=%d", widths[w]);
        const bool fits = caption_width(n, scale) <= side;
        draw_caption(pix, stride, w * side, side, scale, fits ? text : text + 2);
        for (int i = 0; i < n_images; i++)
            upsample(tiles[w] + (size_t)i * grid * grid * 3, grid, side, bilinear,
                     pix + ((size_t)cap_h + (size_t)i * side) * stride + (size_t)w * side * 3,
                     stride);
    }
    const int rc = image_png_encode(pix, (int)W, (int)H, 3, png, len, err, errlen);
    free(pix);
    return rc;
}
