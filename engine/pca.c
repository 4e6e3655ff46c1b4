#include "pca.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "mm.h"

/* The subspace: block size BLOCK >= k makes convergence go as
 * (lambda_{BLOCK+1} / lambda_k)^iterations instead of lambda_{k+1} / lambda_k. */
#define BLOCK 16
#define MAX_ITER 1000
#define TOL 1e-9       /* residual |C v - theta v| relative to theta_1 */
#define JACOBI_SWEEPS 60

/* Cyclic Jacobi on the small symmetric A [n, n] (destroyed): eigenvalues into
 * d, eigenvectors as the columns of V [n, n], sorted by descending value. */
static void jacobi(double *A, int n, double *d, double *V)
{
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) V[i * n + j] = i == j;
    for (int sweep = 0; sweep < JACOBI_SWEEPS; sweep++) {
        double off = 0, diag = 0;
        for (int i = 0; i < n; i++) {
            diag += A[i * n + i] * A[i * n + i];
            for (int j = i + 1; j < n; j++) off += A[i * n + j] * A[i * n + j];
        }
        if (off <= 1e-32 * diag || off == 0) break;
        for (int p = 0; p < n; p++) {
            for (int q = p + 1; q < n; q++) {
                const double apq = A[p * n + q];
                if (apq == 0) continue;
                const double theta = (A[q * n + q] - A[p * n + p]) / (2 * apq);
                const double t = (theta >= 0 ? 1 : -1) / (fabs(theta) + sqrt(theta * theta + 1));
                const double c = 1 / sqrt(t * t + 1), s = t * c;
                for (int r = 0; r < n; r++) { /* columns p, q */
                    const double arp = A[r * n + p], arq = A[r * n + q];
                    A[r * n + p] = c * arp - s * arq;
                    A[r * n + q] = s * arp + c * arq;
                }
                for (int r = 0; r < n; r++) { /* rows p, q */
                    const double apr = A[p * n + r], aqr = A[q * n + r];
                    A[p * n + r] = c * apr - s * aqr;
                    A[q * n + r] = s * apr + c * aqr;
                }
                for (int r = 0; r < n; r++) {
                    const double vrp = V[r * n + p], vrq = V[r * n + q];
                    V[r * n + p] = c * vrp - s * vrq;
                    V[r * n + q] = s * vrp + c * vrq;
                }
            }
        }
    }
    for (int i = 0; i < n; i++) d[i] = A[i * n + i];
    /* Selection sort, descending, moving the vector columns along. */
    for (int i = 0; i < n; i++) {
        int m = i;
        for (int j = i + 1; j < n; j++)
            if (d[j] > d[m]) m = j;
        if (m == i) continue;
        const double t = d[i];
        d[i] = d[m];
        d[m] = t;
        for (int r = 0; r < n; r++) {
            const double v = V[r * n + i];
            V[r * n + i] = V[r * n + m];
            V[r * n + m] = v;
        }
    }
}

/* Orthonormalises the p columns of Q [n, p] in place (modified Gram-Schmidt,
 * twice: one pass loses orthogonality when columns are nearly dependent). A
 * column that vanishes is replaced by a unit vector orthogonal to the others. */
static void orthonormalise(double *Q, int n, int p)
{
    for (int j = 0; j < p; j++) {
        for (int pass = 0; pass < 2; pass++) {
            for (int i = 0; i < j; i++) {
                double dot = 0;
                for (int r = 0; r < n; r++) dot += Q[r * p + i] * Q[r * p + j];
                for (int r = 0; r < n; r++) Q[r * p + j] -= dot * Q[r * p + i];
            }
        }
        double nn = 0;
        for (int r = 0; r < n; r++) nn += Q[r * p + j] * Q[r * p + j];
        if (nn < 1e-60) {
            /* Try the basis vectors in turn until one has something left. */
            for (int e = 0; e < n && nn < 0.25; e++) {
                for (int r = 0; r < n; r++) Q[r * p + j] = r == e;
                for (int i = 0; i < j; i++) {
                    const double dot = Q[e * p + i];
                    for (int r = 0; r < n; r++) Q[r * p + j] -= dot * Q[r * p + i];
                }
                nn = 0;
                for (int r = 0; r < n; r++) nn += Q[r * p + j] * Q[r * p + j];
            }
        }
        const double inv = 1 / sqrt(nn);
        for (int r = 0; r < n; r++) Q[r * p + j] *= inv;
    }
}

/* The deterministic sign: the largest-magnitude entry positive. */
static void fix_sign(double *v, int n)
{
    int m = 0;
    for (int i = 1; i < n; i++)
        if (fabs(v[i]) > fabs(v[m])) m = i;
    if (v[m] < 0)
        for (int i = 0; i < n; i++) v[i] = -v[i];
}

/* Z [n, BLOCK] = C [n, n] . Q [n, BLOCK], the step that costs (n^2 BLOCK per
 * iteration): four rows of C at a time, so that each row of Q loaded serves
 * four, in four named accumulator rows (an indexed [4][BLOCK] array spills
 * and ran 4x slower); rows over the OpenMP threads for large n. */
static void mul_block(const double *C, int n, const double *Q, double *Z)
{
#pragma omp parallel for schedule(static) if (n >= 512)
    for (int r0 = 0; r0 < n; r0 += 4) {
        const int rows = n - r0 < 4 ? n - r0 : 4;
        /* Short last block: the missing rows repeat row r0 and are dropped. */
        const double *c0 = C + (size_t)r0 * n;
        const double *c1 = rows > 1 ? c0 + n : c0, *c2 = rows > 2 ? c0 + 2 * (size_t)n : c0;
        const double *c3 = rows > 3 ? c0 + 3 * (size_t)n : c0;
        double a0[BLOCK] = {0}, a1[BLOCK] = {0}, a2[BLOCK] = {0}, a3[BLOCK] = {0};
        for (int m = 0; m < n; m++) {
            const double *q = Q + (size_t)m * BLOCK;
            const double x0 = c0[m], x1 = c1[m], x2 = c2[m], x3 = c3[m];
            for (int j = 0; j < BLOCK; j++) {
                a0[j] += x0 * q[j];
                a1[j] += x1 * q[j];
                a2[j] += x2 * q[j];
                a3[j] += x3 * q[j];
            }
        }
        const double *acc[4] = {a0, a1, a2, a3};
        for (int i = 0; i < rows; i++)
            memcpy(Z + (size_t)(r0 + i) * BLOCK, acc[i], sizeof a0);
    }
}

/* Small matrices: Jacobi on the whole of C. */
static int eigen_direct(const double *C, int n, int k, double *vals, double *vecs)
{
    double *A = malloc(sizeof(double) * (size_t)n * n * 2), *d = malloc(sizeof(double) * n);
    if (!A || !d) {
        free(A);
        free(d);
        return -1;
    }
    double *V = A + (size_t)n * n;
    memcpy(A, C, sizeof(double) * (size_t)n * n);
    jacobi(A, n, d, V);
    for (int j = 0; j < k; j++) {
        vals[j] = d[j];
        for (int r = 0; r < n; r++) vecs[(size_t)j * n + r] = V[r * n + j];
        fix_sign(vecs + (size_t)j * n, n);
    }
    free(A);
    free(d);
    return 1;
}

int pca_top_eigen(const double *C, int n, int k, double *vals, double *vecs)
{
    if (n <= 2 * BLOCK) return eigen_direct(C, n, k, vals, vecs);
    const int p = BLOCK;
    double *Q = malloc(sizeof(double) * (size_t)n * p * 3);
    double *H = malloc(sizeof(double) * (size_t)p * p * 2 + sizeof(double) * p);
    if (!Q || !H) {
        free(Q);
        free(H);
        return -1;
    }
    double *Z = Q + (size_t)n * p, *T = Z + (size_t)n * p;
    double *V = H + (size_t)p * p, *theta = V + (size_t)p * p;
    /* A fixed pseudo-random start (xorshift): deterministic answers, and no
     * start vector orthogonal to the components by construction. */
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < (size_t)n * p; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        Q[i] = (double)(s >> 11) / 9007199254740992.0 - 0.5;
    }
    orthonormalise(Q, n, p);
    int it = 0;
    for (;;) {
        it++;
        mul_block(C, n, Q, Z);
        /* Rayleigh-Ritz: H = Q^T Z = V diag(theta) V^T. */
        for (int i = 0; i < p; i++)
            for (int j = i; j < p; j++) {
                double dot = 0;
                for (int r = 0; r < n; r++) dot += Q[(size_t)r * p + i] * Z[(size_t)r * p + j];
                H[i * p + j] = dot;
            }
        for (int i = 0; i < p; i++)
            for (int j = 0; j < i; j++) H[i * p + j] = H[j * p + i];
        jacobi(H, p, theta, V);
        /* Ritz vectors Q V into T, their images Z V into Z (through Q's row). */
        double worst = 0;
        for (int r = 0; r < n; r++) {
            double tq[BLOCK], tz[BLOCK];
            for (int j = 0; j < p; j++) {
                double a = 0, b = 0;
                for (int m = 0; m < p; m++) {
                    a += Q[(size_t)r * p + m] * V[m * p + j];
                    b += Z[(size_t)r * p + m] * V[m * p + j];
                }
                tq[j] = a;
                tz[j] = b;
            }
            memcpy(T + (size_t)r * p, tq, sizeof tq);
            memcpy(Z + (size_t)r * p, tz, sizeof tz);
        }
        for (int j = 0; j < k; j++) {
            double res = 0;
            for (int r = 0; r < n; r++) {
                const double e = Z[(size_t)r * p + j] - theta[j] * T[(size_t)r * p + j];
                res += e * e;
            }
            if (sqrt(res) > worst) worst = sqrt(res);
        }
        if (worst <= TOL * fabs(theta[0]) || theta[0] == 0 || it >= MAX_ITER) break;
        /* The next subspace: C times the Ritz vectors, orthonormalised. */
        memcpy(Q, Z, sizeof(double) * (size_t)n * p);
        orthonormalise(Q, n, p);
    }
    for (int j = 0; j < k; j++) {
        vals[j] = theta[j];
        for (int r = 0; r < n; r++) vecs[(size_t)j * n + r] = T[(size_t)r * p + j];
        fix_sign(vecs + (size_t)j * n, n);
    }
    free(Q);
    free(H);
    return it;
}

void pca_fit_free(struct pca_fit *f)
{
    free(f->mean);
    free(f->components);
    f->mean = f->components = NULL;
}

int pca_fit(const float *X, size_t M, int W, int k, struct pca_fit *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (M < 1 || W < 1 || k < 1 || k > W || k > PCA_MAX_K)
        return set_err(err, errlen, "pca: bad sizes (%zu rows of width %d, %d components)", M, W,
                       k);
    out->W = W;
    out->k = k;
    out->mean = malloc(sizeof(float) * W);
    out->components = malloc(sizeof(float) * (size_t)k * W);
    float *Xc = malloc(sizeof(float) * M * W), *Cf = malloc(sizeof(float) * (size_t)W * W);
    double *acc = calloc((size_t)W, sizeof(double)), *C = malloc(sizeof(double) * (size_t)W * W);
    double *vecs = malloc(sizeof(double) * (size_t)k * W);
    int rc = -1;
    if (!out->mean || !out->components || !Xc || !Cf || !acc || !C || !vecs) {
        set_err(err, errlen, "pca: out of memory for %zu rows of width %d", M, W);
        goto done;
    }
    /* The mean in double: M may be tens of thousands of rows. */
    for (size_t i = 0; i < M; i++)
        for (int j = 0; j < W; j++) acc[j] += X[i * W + j];
    for (int j = 0; j < W; j++) out->mean[j] = (float)(acc[j] / (double)M);
    for (size_t i = 0; i < M; i++)
        for (int j = 0; j < W; j++) Xc[i * W + j] = X[i * W + j] - out->mean[j];
    /* The covariance Xc^T Xc / (M - 1) through the matmul layer, symmetrised
     * in double (the kernel's blocking may differ in the last bits). */
    const float scale = 1.0f / (float)(M > 1 ? M - 1 : 1);
    mm_sgemm(true, false, (size_t)W, (size_t)W, M, scale, Xc, (size_t)W, Xc, (size_t)W, 0.0f, Cf,
             (size_t)W);
    for (int i = 0; i < W; i++) {
        out->total_variance += Cf[(size_t)i * W + i];
        for (int j = 0; j < W; j++)
            C[(size_t)i * W + j] = 0.5 * ((double)Cf[(size_t)i * W + j] + Cf[(size_t)j * W + i]);
    }
    out->iterations = pca_top_eigen(C, W, k, out->variance, vecs);
    if (out->iterations < 0) {
        set_err(err, errlen, "pca: out of memory in the eigensolver (width %d)", W);
        goto done;
    }
    for (size_t i = 0; i < (size_t)k * W; i++) out->components[i] = (float)vecs[i];
    rc = 0;
done:
    free(Xc);
    free(Cf);
    free(acc);
    free(C);
    free(vecs);
    if (rc) pca_fit_free(out);
    return rc;
}

void pca_project(const struct pca_fit *f, const float *X, size_t M, float *out)
{
    const int W = f->W, k = f->k;
    for (size_t i = 0; i < M; i++) {
        for (int c = 0; c < k; c++) {
            double dot = 0;
            for (int j = 0; j < W; j++)
                dot += ((double)X[i * W + j] - f->mean[j]) * f->components[(size_t)c * W + j];
            out[i * k + c] = (float)dot;
        }
    }
}
