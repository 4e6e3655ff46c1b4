/* Matryoshka widths: the first W features of a D-wide embedding, optionally
 * L2-normalised afterwards (the protocol of docs/model.md §6). */
#ifndef FRANCA_MATRYOSHKA_H
#define FRANCA_MATRYOSHKA_H

#include <stdbool.h>

/* in: [rows, D]; out: [rows, W]; 1 <= W <= D. A zero row stays zero. */
void matryoshka_cut(const float *in, int rows, int D, int W, bool normalize, float *out);

#endif
