/* RASA (docs/model.md §7.2): removes T+1 learned 2-D planes from patch tokens, in order. */
#ifndef FRANCA_RASA_H
#define FRANCA_RASA_H

#include <stddef.h>

/* From rasa_w [T+1, 2, D], computes orthonormal pairs (u_r, u_c) per round into
 * units [T+1, 2, D]. Fails if a weight row is zero or the two rows are parallel. */
int rasa_prepare(const float *rasa_w, int rounds, int D, float *units, char *err, size_t errlen);

/* Applies the rounds to rows tokens of width D in place: z -= (z.u_r)u_r + (z.u_c)u_c. */
void rasa_apply(const float *units, int rounds, int D, float *tokens, size_t rows);

#endif
