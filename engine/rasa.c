#include "rasa.h"

#include <math.h>

#include "errors.h"

static double dot(const float *a, const float *b, int D)
{
    double s = 0.0;
    for (int i = 0; i < D; i++) s += (double)a[i] * b[i];
    return s;
}

int rasa_prepare(const float *rasa_w, int rounds, int D, float *units, char *err, size_t errlen)
{
    for (int t = 0; t < rounds; t++) {
        const float *wr = rasa_w + (size_t)t * 2 * D, *wc = wr + D;
        float *ur = units + (size_t)t * 2 * D, *uc = ur + D;
        const double nr = sqrt(dot(wr, wr, D)), nc = sqrt(dot(wc, wc, D));
        if (!(nr > 1e-12) || !(nc > 1e-12))
            return set_err(err, errlen, "RASA round %d has a zero weight row", t);
        for (int i = 0; i < D; i++) ur[i] = (float)(wr[i] / nr);
        for (int i = 0; i < D; i++) uc[i] = (float)(wc[i] / nc);
        /* Gram-Schmidt: remove the u_r component from v, then renormalise. */
        const double p = dot(uc, ur, D);
        for (int i = 0; i < D; i++) uc[i] = (float)(uc[i] - p * ur[i]);
        const double n2 = sqrt(dot(uc, uc, D));
        if (!(n2 > 1e-6))
            return set_err(err, errlen, "RASA round %d has parallel weight rows", t);
        for (int i = 0; i < D; i++) uc[i] = (float)(uc[i] / n2);
    }
    return 0;
}

void rasa_apply(const float *units, int rounds, int D, float *tokens, size_t rows)
{
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        float *z = tokens + r * D;
        for (int t = 0; t < rounds; t++) {
            const float *ur = units + (size_t)t * 2 * D, *uc = ur + D;
            const float a = (float)dot(z, ur, D), c = (float)dot(z, uc, D);
            for (int i = 0; i < D; i++) z[i] -= a * ur[i] + c * uc[i];
        }
    }
}
