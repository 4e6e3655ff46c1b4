#include "matryoshka.h"

#include <math.h>
#include <string.h>

void matryoshka_cut(const float *in, int rows, int D, int W, bool normalize, float *out)
{
    for (int r = 0; r < rows; r++) {
        const float *x = in + (size_t)r * D;
        float *y = out + (size_t)r * W;
        memcpy(y, x, sizeof(float) * W);
        if (!normalize) continue;
        double ss = 0.0;
        for (int i = 0; i < W; i++) ss += (double)x[i] * x[i];
        /* Same guard as torch.nn.functional.normalize (eps 1e-12). */
        const double n = sqrt(ss);
        const float inv = (float)(1.0 / (n > 1e-12 ? n : 1e-12));
        for (int i = 0; i < W; i++) y[i] *= inv;
    }
}
