/* engine/pca: the eigensolver against matrices of known spectrum, the fit
 * against planted components, the sign convention, projections, bad sizes;
 * prints the fit's time at the widths of the released models. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "pca.h"

static uint64_t rng = 88172645463325252ull;
static double urand(void) /* uniform in [-0.5, 0.5) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0 - 0.5;
}

/* n orthonormal vectors of length n (rows of U), by Gram-Schmidt of random rows. */
static void random_orthonormal(double *U, int n, int rows)
{
    for (int i = 0; i < rows; i++) {
        double *u = U + (size_t)i * n;
        for (int r = 0; r < n; r++) u[r] = urand();
        for (int pass = 0; pass < 2; pass++)
            for (int j = 0; j < i; j++) {
                double d = 0;
                for (int r = 0; r < n; r++) d += u[r] * U[(size_t)j * n + r];
                for (int r = 0; r < n; r++) u[r] -= d * U[(size_t)j * n + r];
            }
        double nn = 0;
        for (int r = 0; r < n; r++) nn += u[r] * u[r];
        for (int r = 0; r < n; r++) u[r] /= sqrt(nn);
    }
}

static double dot(const double *a, const double *b, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static bool sign_ok(const double *v, int n)
{
    int m = 0;
    for (int i = 1; i < n; i++)
        if (fabs(v[i]) > fabs(v[m])) m = i;
    return v[m] > 0;
}

/* C = U^T diag(lam) U with a spectrum of near-degenerate 2nd/3rd values and a
 * slow tail; the top 3 must come back to double precision. */
static void known_spectrum(int n)
{
    double *U = malloc(sizeof(double) * (size_t)n * n), *C = calloc((size_t)n * n, sizeof(double));
    double *lam = malloc(sizeof(double) * n), vals[3], *vecs = malloc(sizeof(double) * 3 * n);
    random_orthonormal(U, n, n);
    for (int i = 0; i < n; i++) lam[i] = i == 0 ? 100 : i == 1 ? 50 : i == 2 ? 49.5 : 40.0 / (i + 1);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int e = 0; e < n; e++) s += U[(size_t)e * n + i] * lam[e] * U[(size_t)e * n + j];
            C[(size_t)i * n + j] = s;
        }
    const int it = pca_top_eigen(C, n, 3, vals, vecs);
    CHECK(it > 0, "n=%d: eigensolver ran", n);
    for (int c = 0; c < 3; c++) {
        CHECK(fabs(vals[c] - lam[c]) < 1e-9 * lam[0], "n=%d: value %d is %.12g, want %g", n, c,
              vals[c], lam[c]);
        const double cs = fabs(dot(vecs + (size_t)c * n, U + (size_t)c * n, n));
        CHECK(cs > 1 - 1e-9, "n=%d: vector %d |cos| %.12f", n, c, cs);
        CHECK(sign_ok(vecs + (size_t)c * n, n), "n=%d: vector %d signed", n, c);
    }
    printf("known spectrum n=%d: %d iterations\n", n, it);
    free(U);
    free(C);
    free(lam);
    free(vecs);
}

/* M tokens = planted components with scales 8, 4, 2 plus noise of 0.05 per
 * feature; times the fit. */
static void planted(size_t M, int W, bool report)
{
    double *U = malloc(sizeof(double) * 3 * W);
    float *X = malloc(sizeof(float) * M * W), *P = malloc(sizeof(float) * M * 3);
    random_orthonormal(U, W, 3);
    const double scale[3] = {8, 4, 2};
    for (size_t i = 0; i < M; i++) {
        double a[3];
        for (int c = 0; c < 3; c++) a[c] = scale[c] * urand() * 3.4641; /* unit-variance uniform */
        for (int j = 0; j < W; j++) {
            double x = 1.5 + 0.05 * urand() * 3.4641;
            for (int c = 0; c < 3; c++) x += a[c] * U[(size_t)c * W + j];
            X[i * W + j] = (float)x;
        }
    }
    struct pca_fit f;
    char err[256];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    const int rc = pca_fit(X, M, W, 3, &f, err, sizeof err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHECK(rc == 0, "W=%d: fit: %s", W, err);
    if (rc) goto out;
    const double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
    if (report)
        printf("pca_fit M=%zu W=%d: %.1f ms, %d subspace iterations\n", M, W, ms, f.iterations);
    for (int c = 0; c < 3; c++) {
        double v[1024], cs = 0;
        for (int j = 0; j < W; j++) v[j] = f.components[(size_t)c * W + j];
        cs = fabs(dot(v, U + (size_t)c * W, W));
        CHECK(cs > 0.999, "W=%d: component %d |cos| %.6f with the planted one", W, c, cs);
        CHECK(sign_ok(v, W), "W=%d: component %d signed", W, c);
        CHECK(fabs(f.variance[c] / (scale[c] * scale[c]) - 1) < 0.1, "W=%d: variance %d is %g", W,
              c, f.variance[c]);
    }
    CHECK(f.total_variance >= f.variance[0] + f.variance[1] + f.variance[2],
          "W=%d: total variance covers the top 3", W);
    CHECK(fabs(f.mean[0] - 1.5) < 0.5, "W=%d: mean %g", W, f.mean[0]);
    pca_project(&f, X, M, P);
    double worst = 0;
    for (size_t i = 0; i < M; i += 97)
        for (int c = 0; c < 3; c++) {
            double s = 0;
            for (int j = 0; j < W; j++)
                s += ((double)X[i * W + j] - f.mean[j]) * f.components[(size_t)c * W + j];
            if (fabs(s - P[i * 3 + c]) > worst) worst = fabs(s - P[i * 3 + c]);
        }
    CHECK(worst < 1e-4, "W=%d: projections (max diff %g)", W, worst);
    pca_fit_free(&f);
out:
    free(U);
    free(X);
    free(P);
}

/* A slowly decaying spectrum (variances (j + 1)^-0.5 along the axes), as
 * ViT patch tokens have: the slow case of subspace iteration; times it. */
static void slow_spectrum(size_t M, int W)
{
    float *X = malloc(sizeof(float) * M * W);
    for (size_t i = 0; i < M; i++)
        for (int j = 0; j < W; j++) X[i * W + j] = (float)(urand() * 3.4641 * pow(j + 1, -0.25));
    struct pca_fit f;
    char err[256];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    const int rc = pca_fit(X, M, W, 3, &f, err, sizeof err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHECK(rc == 0, "slow W=%d: %s", W, err);
    if (!rc) {
        printf("pca_fit M=%zu W=%d, slow spectrum: %.1f ms, %d subspace iterations\n", M, W,
               (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6, f.iterations);
        CHECK(f.variance[0] >= f.variance[1] && f.variance[1] >= f.variance[2],
              "slow W=%d: variances descending", W);
        pca_fit_free(&f);
    }
    free(X);
}

/* The eigensolver alone on C = H diag(lam) H, H = I - 2 v v^T a Householder
 * reflection (eigenvectors e_i - 2 v v_i, built in O(n^2)), lam_j =
 * (j + 1)^-0.5: checked, and timed. */
static void timed_eigen(int n)
{
    double *C = malloc(sizeof(double) * (size_t)n * n), *v = malloc(sizeof(double) * n);
    double *vecs = malloc(sizeof(double) * 3 * n), vals[3], nn = 0;
    for (int i = 0; i < n; i++) {
        v[i] = urand();
        nn += v[i] * v[i];
    }
    for (int i = 0; i < n; i++) v[i] /= sqrt(nn);
    /* (H D H)_ij = D_i d_ij - 2 v_i v_j (D_i + D_j) + 4 v_i v_j (v^T D v). */
    double vdv = 0;
    for (int i = 0; i < n; i++) vdv += v[i] * v[i] * pow(i + 1, -0.5);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            C[(size_t)i * n + j] = (i == j ? pow(i + 1, -0.5) : 0) -
                                   2 * v[i] * v[j] * (pow(i + 1, -0.5) + pow(j + 1, -0.5)) +
                                   4 * v[i] * v[j] * vdv;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    const int it = pca_top_eigen(C, n, 3, vals, vecs);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    for (int c = 0; c < 3; c++) {
        CHECK(fabs(vals[c] - pow(c + 1, -0.5)) < 1e-8, "eigen n=%d: value %d %.12g", n, c, vals[c]);
        double cs = 0;
        for (int r = 0; r < n; r++) cs += vecs[(size_t)c * n + r] * ((r == c) - 2 * v[r] * v[c]);
        CHECK(fabs(cs) > 1 - 1e-8, "eigen n=%d: vector %d |cos| %.12f", n, c, fabs(cs));
    }
    printf("pca_top_eigen n=%d, spectrum (j+1)^-0.5: %.1f ms, %d iterations\n", n,
           (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6, it);
    free(C);
    free(v);
    free(vecs);
}

int main(void)
{
    known_spectrum(12);  /* Jacobi on the whole matrix */
    known_spectrum(100); /* subspace iteration */
    known_spectrum(400);
    planted(500, 16, false);
    planted(500, 96, false);
    planted(2000, 384, true);
    planted(2000, 768, true);
    timed_eigen(384);
    timed_eigen(768);
    timed_eigen(1024);
    slow_spectrum(2000, 384);
    slow_spectrum(2000, 768);
    slow_spectrum(2000, 1024);

    /* Degenerate input: identical rows have no variance; still unit vectors. */
    float same[4 * 40];
    for (int i = 0; i < 4 * 40; i++) same[i] = (float)(i % 40);
    struct pca_fit f;
    char err[256];
    CHECK(pca_fit(same, 4, 40, 3, &f, err, sizeof err) == 0, "constant rows: %s", err);
    double n0 = 0;
    for (int j = 0; j < 40; j++) n0 += (double)f.components[j] * f.components[j];
    CHECK(fabs(n0 - 1) < 1e-5 && f.variance[0] == 0, "constant rows: unit component, variance 0");
    pca_fit_free(&f);
    CHECK(pca_fit(same, 4, 2, 3, &f, err, sizeof err) == -1 && strstr(err, "bad sizes"),
          "more components than the width refused");
    return check_summary();
}
