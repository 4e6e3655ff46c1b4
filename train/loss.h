/* Franca's loss pieces (docs/model.md §12.1-§12.4): Sinkhorn-Knopp teacher targets,
 * the student cross-entropy against them, and KoLeo. Forward values are
 * accumulated in double; gradients are returned w.r.t. the student logits
 * (or features, for KoLeo). */
#ifndef FRANCA_TRAIN_LOSS_H
#define FRANCA_TRAIN_LOSS_H

#include <stddef.h>

/* docs/model.md §12.1: Q = exp((logits - per-prototype max) / temp)^T [K, n]; iters times:
 * normalise each prototype row over the samples (then / K), each sample column
 * over the prototypes (then / n); finally * n. Writes targets [n, K] (every row
 * sums to 1). work: n*K + K doubles. */
void sinkhorn_knopp(float *targets, const float *logits, int n, int K, float temp, int iters,
                    double *work);

struct comm;
/* The same over the rows of every rank together, as the reference's distributed
 * Sinkhorn-Knopp: the per-prototype max and sums are all-reduced (max, sum) and n
 * is the total row count of all ranks, so each rank gets its rows of the targets
 * of the concatenated logits. A rank may hold n = 0 rows (it still takes part).
 * comm NULL or of size 1: exactly sinkhorn_knopp. */
void sinkhorn_knopp_comm(float *targets, const float *logits, int n, int K, float temp,
                         int iters, double *work, struct comm *comm);

/* One student row against a target t1 (+ t2 when not NULL, as the sum of two
 * cross-entropies): returns w * sum_k -(t1 + t2)_k log softmax(s / tau)_k and
 * writes ds = d(that)/ds. */
double ce_row(float *ds, const float *s, const float *t1, const float *t2, int K, double w,
              double tau);

/* KoLeo (docs/model.md §12.4) on n rows of x (row stride ldx, D features): returns
 * weight * -mean_i log(|y_i - y_nn(i) + 1e-8| + 1e-8) with y = x / max(|x|, 1e-8)
 * and adds its gradient to dx (row stride lddx). */
double koleo_loss(float *dx, int lddx, const float *x, int ldx, int n, int D, double weight);

#endif
