/* Principal components of token sets (the PCA pictures of POST /v1/pca, as
 * the DINOv2/Franca PCA scripts draw them): the covariance of the centred rows
 * through the matmul layer, then its top eigenvectors by subspace iteration
 * with Rayleigh-Ritz, in double precision.
 *
 * Sign convention: every component is flipped so that its largest-magnitude
 * loading (the first such index on a tie) is positive, so the same tokens
 * always give the same colours. */
#ifndef FRANCA_PCA_H
#define FRANCA_PCA_H

#include <stddef.h>

#define PCA_MAX_K 8

struct pca_fit {
    int W, k;
    float *mean;           /* [W] */
    float *components;     /* [k, W], unit rows, descending variance */
    double variance[PCA_MAX_K]; /* the components' variances (divisor M - 1, as numpy's) */
    double total_variance; /* the trace of the covariance */
    int iterations;        /* subspace iterations the eigensolver took */
};

/* Fits the top k (1..min(PCA_MAX_K, W)) components of X [M, W] (M >= 1).
 * Returns 0, or -1 with a message (bad sizes, out of memory). */
int pca_fit(const float *X, size_t M, int W, int k, struct pca_fit *out, char *err, size_t errlen);

/* out[M, k] = (X - mean) . components^T. */
void pca_project(const struct pca_fit *f, const float *X, size_t M, float *out);

void pca_fit_free(struct pca_fit *f);

/* The top k eigenpairs of the symmetric matrix C [n, n] (only read): values
 * descending into vals, unit vectors as the rows of vecs [k, n] (signed as
 * above). Returns the iterations taken, or -1 when out of memory. */
int pca_top_eigen(const double *C, int n, int k, double *vals, double *vecs);

#endif
