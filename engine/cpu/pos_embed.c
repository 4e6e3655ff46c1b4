#include "pos_embed.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Keys' cubic convolution with A = -0.75, the kernel torch's bicubic uses. */
static float cubic_near(float x, float A)   /* |x| <= 1 */
{
    return ((A + 2.0f) * x - (A + 3.0f)) * x * x + 1.0f;
}

static float cubic_far(float x, float A)    /* 1 < |x| < 2 */
{
    return ((A * x - 5.0f * A) * x + 8.0f * A) * x - 4.0f * A;
}

struct cubic_taps pos_embed_taps(int dst, int in_size, int out_size)
{
    const float A = -0.75f;
    /* torch passes scale_factor = (out + 0.1) / in (a double) and maps
     * coordinates with ratio = 1 / scale_factor, cast to float. */
    const double scale = ((double)out_size + 0.1) / (double)in_size;
    const float ratio = (float)(1.0 / scale);
    const float src = ratio * ((float)dst + 0.5f) - 0.5f;
    int i0 = (int)floorf(src);
    if (i0 > in_size - 1) i0 = in_size - 1;
    float t = src - (float)i0;
    t = t < 0.0f ? 0.0f : (t > 1.0f ? 1.0f : t);

    struct cubic_taps c;
    c.w[0] = cubic_far(t + 1.0f, A);
    c.w[1] = cubic_near(t, A);
    const float u = 1.0f - t;
    c.w[2] = cubic_near(u, A);
    c.w[3] = cubic_far(u + 1.0f, A);
    for (int k = 0; k < 4; k++) {
        int i = i0 - 1 + k;
        c.idx[k] = i < 0 ? 0 : (i > in_size - 1 ? in_size - 1 : i);
    }
    return c;
}

void pos_embed_interpolate(float *out, const float *table, int M, int D, int gh, int gw)
{
    const size_t rowsz = sizeof(float) * D;
    if (gh == M && gw == M) {
        memcpy(out, table, rowsz * (1 + (size_t)M * M));
        return;
    }
    memcpy(out, table, rowsz); /* the CLS entry is never interpolated */
    const float *grid = table + D;

#pragma omp parallel for collapse(2) schedule(static)
    for (int oy = 0; oy < gh; oy++)
        for (int ox = 0; ox < gw; ox++) {
            const struct cubic_taps ty = pos_embed_taps(oy, M, gh);
            const struct cubic_taps tx = pos_embed_taps(ox, M, gw);
            float *o = out + D + ((size_t)oy * gw + ox) * D;
            for (int d = 0; d < D; d++) {
                float acc = 0.0f;
                for (int a = 0; a < 4; a++) {
                    const float *row = grid + (size_t)ty.idx[a] * M * D + d;
                    float r = 0.0f;
                    for (int k = 0; k < 4; k++) r += tx.w[k] * row[(size_t)tx.idx[k] * D];
                    acc += ty.w[a] * r;
                }
                o[d] = acc;
            }
        }
}
