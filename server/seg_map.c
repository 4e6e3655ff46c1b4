/* Pixel <-> patch mapping; see seg_map.h. */
#include "seg_map.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "preprocess.h"

/* Patch index along one axis of n pixels resized to rn, cropped at off. */
static void axis(int *of, int n, int rn, int off, int patch)
{
    for (int i = 0; i < n; i++)
        of[i] = (int)floor(((i + 0.5) * rn / n - off) / patch);
}

int seg_map_init(struct seg_map *m, int width, int height, int resize_size, int crop_size,
                 int patch_size, char *err, size_t errlen)
{
    *m = (struct seg_map){.width = width, .height = height};
    int rw, rh;
    if (width < 1 || height < 1 || patch_size < 1 ||
        preprocess_resized_size(width, height, resize_size, &rw, &rh) < 0)
        return set_err(err, errlen, "a %dx%d image cannot be mapped onto patches", width,
                       height);
    m->grid_h = m->grid_w = crop_size / patch_size;
    m->row_of = malloc((size_t)height * sizeof *m->row_of);
    m->col_of = malloc((size_t)width * sizeof *m->col_of);
    if (!m->row_of || !m->col_of) {
        seg_map_free(m);
        return set_err(err, errlen, "out of memory");
    }
    axis(m->col_of, width, rw, preprocess_crop_offset(rw, crop_size), patch_size);
    axis(m->row_of, height, rh, preprocess_crop_offset(rh, crop_size), patch_size);
    return 0;
}

void seg_map_free(struct seg_map *m)
{
    free(m->row_of);
    free(m->col_of);
    m->row_of = m->col_of = NULL;
}

int seg_map_down(const struct seg_map *m, const uint8_t *mask, uint8_t *out)
{
    const size_t cells = (size_t)m->grid_h * m->grid_w;
    uint32_t *count = calloc(cells * 256, sizeof *count);
    if (!count) return -1;
    for (int y = 0; y < m->height; y++) {
        const int r = m->row_of[y];
        if (r < 0 || r >= m->grid_h) continue;
        for (int x = 0; x < m->width; x++) {
            const int c = m->col_of[x];
            if (c >= 0 && c < m->grid_w)
                count[((size_t)r * m->grid_w + c) * 256 + mask[(size_t)y * m->width + x]]++;
        }
    }
    for (size_t p = 0; p < cells; p++) {
        const uint32_t *h = count + p * 256;
        int best = 255;
        for (int l = 0; l < 256; l++)
            if (h[l] > h[best] || (h[l] == h[best] && h[l] && l < best)) best = l;
        out[p] = (uint8_t)best;
    }
    free(count);
    return 0;
}

static int clamp(int v, int n) { return v < 0 ? 0 : v >= n ? n - 1 : v; }

void seg_map_up(const struct seg_map *m, const uint8_t *grid, uint8_t *out)
{
    for (int y = 0; y < m->height; y++) {
        const uint8_t *row = grid + (size_t)clamp(m->row_of[y], m->grid_h) * m->grid_w;
        uint8_t *o = out + (size_t)y * m->width;
        for (int x = 0; x < m->width; x++) o[x] = row[clamp(m->col_of[x], m->grid_w)];
    }
}
