/* Sinkhorn-Knopp, cross-entropy and KoLeo (loss.h). */
#include "loss.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"

void sinkhorn_knopp(float *targets, const float *logits, int n, int K, float temp, int iters,
                    double *work)
{
    sinkhorn_knopp_comm(targets, logits, n, K, temp, iters, work, NULL);
}

void sinkhorn_knopp_comm(float *targets, const float *logits, int n, int K, float temp,
                         int iters, double *work, struct comm *comm)
{
    /* work is [n, K] (sample-major) followed by K doubles of per-prototype
     * scratch; "prototype rows" of Q are the columns of work, which are
     * reduced row by row so that every pass reads memory contiguously. */
    const double inv_t = 1.0 / (double)temp;
    double *col = work + (size_t)n * K;
    const int dist = comm_size(comm) > 1;
    for (int k = 0; k < K; k++) col[k] = n ? logits[k] : -INFINITY;
    for (int i = 1; i < n; i++) {
        const float *l = logits + (size_t)i * K;
        for (int k = 0; k < K; k++) col[k] = l[k] > col[k] ? l[k] : col[k];
    }
    /* One shift per prototype on every rank: the sums below mix the ranks' rows. */
    if (dist) comm_allreduce_max_f64(comm, col, (size_t)K);
    double nd = n;
    if (dist) comm_allreduce_sum_f64(comm, &nd, 1);
    const double ntot = nd;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        const float *l = logits + (size_t)i * K;
        double *q = work + (size_t)i * K;
        for (int k = 0; k < K; k++) q[k] = exp(((double)l[k] - col[k]) * inv_t);
    }
    for (int it = 0; it < iters; it++) {
        /* per prototype: Q[k, :] /= sum_i Q[k, i]; Q /= K */
        for (int k = 0; k < K; k++) col[k] = 0.0;
        for (int i = 0; i < n; i++) {
            const double *q = work + (size_t)i * K;
            for (int k = 0; k < K; k++) col[k] += q[k];
        }
        if (dist) comm_allreduce_sum_f64(comm, col, (size_t)K);
        for (int k = 0; k < K; k++) col[k] = 1.0 / (col[k] * K);
        /* then per sample: Q[:, i] /= sum_k Q[k, i]; Q /= n */
#pragma omp parallel for schedule(static)
        for (int i = 0; i < n; i++) {
            double *q = work + (size_t)i * K, s = 0.0;
            for (int k = 0; k < K; k++) {
                q[k] *= col[k];
                s += q[k];
            }
            const double f = 1.0 / (s * ntot);
            for (int k = 0; k < K; k++) q[k] *= f;
        }
    }
    for (size_t i = 0; i < (size_t)n * K; i++) targets[i] = (float)(work[i] * ntot);
}

double ce_row(float *ds, const float *s, const float *t1, const float *t2, int K, double w,
              double tau)
{
    const double inv = 1.0 / tau;
    double mx = s[0];
    for (int k = 1; k < K; k++) mx = s[k] > mx ? s[k] : mx;
    double z = 0.0;
    for (int k = 0; k < K; k++) z += exp((s[k] - mx) * inv);
    const double lse = mx * inv + log(z);
    double loss = 0.0, tsum = 0.0;
    for (int k = 0; k < K; k++) {
        const double t = (double)t1[k] + (t2 ? (double)t2[k] : 0.0);
        loss -= t * (s[k] * inv - lse);
        tsum += t;
    }
    for (int k = 0; k < K; k++) {
        const double t = (double)t1[k] + (t2 ? (double)t2[k] : 0.0);
        const double p = exp(s[k] * inv - lse);
        ds[k] = (float)(w * inv * (p * tsum - t));
    }
    return w * loss;
}

double koleo_loss(float *dx, int lddx, const float *x, int ldx, int n, int D, double weight)
{
    if (n <= 0) return 0.0;
    const double eps = 1e-8;
    double *y = malloc(sizeof(double) * ((size_t)n * D * 2 + n));
    int *nn = malloc(sizeof(int) * n);
    if (!y || !nn) {
        free(y);
        free(nn);
        return NAN;
    }
    double *dy = y + (size_t)n * D, *norm = dy + (size_t)n * D;
    memset(dy, 0, sizeof(double) * (size_t)n * D);
    for (int i = 0; i < n; i++) {
        double s = 0.0;
        for (int c = 0; c < D; c++) s += (double)x[(size_t)i * ldx + c] * x[(size_t)i * ldx + c];
        norm[i] = sqrt(s);
        const double f = 1.0 / (norm[i] > eps ? norm[i] : eps);
        for (int c = 0; c < D; c++) y[(size_t)i * D + c] = x[(size_t)i * ldx + c] * f;
    }
    for (int i = 0; i < n; i++) {
        double best = -INFINITY;
        nn[i] = i;
        for (int j = 0; j < n; j++) {
            double dot = -1.0;
            if (j != i) {
                dot = 0.0;
                for (int c = 0; c < D; c++) dot += y[(size_t)i * D + c] * y[(size_t)j * D + c];
            }
            if (dot > best) {
                best = dot;
                nn[i] = j;
            }
        }
    }
    double loss = 0.0;
    for (int i = 0; i < n; i++) {
        const double *a = y + (size_t)i * D, *b = y + (size_t)nn[i] * D;
        double s = 0.0;
        for (int c = 0; c < D; c++) {
            const double u = a[c] - b[c] + eps;
            s += u * u;
        }
        const double d = sqrt(s);
        loss -= log(d + eps);
        if (d > 0.0) {
            const double g = -weight / ((double)n * (d + eps) * d);
            for (int c = 0; c < D; c++) {
                const double du = g * (a[c] - b[c] + eps);
                dy[(size_t)i * D + c] += du;
                dy[(size_t)nn[i] * D + c] -= du;
            }
        }
    }
    for (int i = 0; i < n; i++) {
        const double *yi = y + (size_t)i * D, *gi = dy + (size_t)i * D;
        float *o = dx + (size_t)i * lddx;
        if (norm[i] > eps) {
            double dot = 0.0;
            for (int c = 0; c < D; c++) dot += yi[c] * gi[c];
            for (int c = 0; c < D; c++) o[c] += (float)((gi[c] - yi[c] * dot) / norm[i]);
        } else {
            for (int c = 0; c < D; c++) o[c] += (float)(gi[c] / eps);
        }
    }
    free(y);
    free(nn);
    return weight * loss / n;
}
