#include "ops.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

/* exp(x) to about 2 ulp, written so that loops calling it vectorise (libm's
 * expf does not): x = n ln2 + r, |r| <= ln2/2, e^r by a polynomial (Cephes'
 * expf coefficients), 2^n by building the exponent bits. */
static inline float exp_approx(float x)
{
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float n = floorf(x * 1.44269504088896341f + 0.5f);
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

void layernorm_forward(float *out, const float *in, const float *w, const float *b,
                       size_t rows, int D, float eps)
{
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *x = in + r * D;
        float *y = out + r * D;
        /* Two passes in double: the mean first, then the centred variance,
         * so large offsets do not cost precision. */
        double sum = 0.0;
        for (int i = 0; i < D; i++) sum += x[i];
        const float mean = (float)(sum / D);
        double var = 0.0;
        for (int i = 0; i < D; i++) {
            const double d = (double)x[i] - mean;
            var += d * d;
        }
        const float rstd = (float)(1.0 / sqrt(var / D + eps));
        for (int i = 0; i < D; i++) y[i] = (x[i] - mean) * rstd * w[i] + b[i];
    }
}

void linear_forward(float *out, const float *in, const float *W, const float *bias,
                    size_t rows, int K, int N)
{
    float beta = 0.0f;
    if (bias) {
#pragma omp parallel for schedule(static)
        for (size_t r = 0; r < rows; r++) memcpy(out + r * N, bias, sizeof(float) * N);
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, N, K, 1.0f, in, K,
                W, K, beta, out, N);
}

void residual_scale_add(float *x, const float *y, const float *gamma, size_t rows, int D)
{
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        float *xr = x + r * D;
        const float *yr = y + r * D;
        if (gamma)
            for (int i = 0; i < D; i++) xr[i] += gamma[i] * yr[i];
        else
            for (int i = 0; i < D; i++) xr[i] += yr[i];
    }
}

static void swiglu_row(float *restrict o, const float *restrict a, const float *restrict g,
                       int n)
{
    for (int j = 0; j < n; j++) o[j] = a[j] / (1.0f + exp_approx(-a[j])) * g[j];
}

void swiglu_forward(float *out, const float *h, size_t rows, int Hs)
{
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *a = h + r * 2 * (size_t)Hs;
        swiglu_row(out + r * Hs, a, a + Hs, Hs);
    }
}

void gelu_forward(float *x, size_t n)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * (float)M_SQRT1_2));
}

void patchify(float *out, const float *x, int B, int C, int H, int W, int P)
{
    const int gh = H / P, gw = W / P, K = C * P * P;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int gy = 0; gy < gh; gy++)
            for (int gx = 0; gx < gw; gx++) {
                float *o = out + ((size_t)b * gh * gw + (size_t)gy * gw + gx) * K;
                for (int c = 0; c < C; c++)
                    for (int py = 0; py < P; py++) {
                        const float *src = x + (((size_t)b * C + c) * H + (size_t)gy * P + py) * W
                                           + (size_t)gx * P;
                        memcpy(o + (c * P + py) * P, src, sizeof(float) * P);
                    }
            }
}

/* Queries are processed in blocks so that the score scratch stays small even
 * for long sequences, and a single image still spreads over all threads. */
#define ATTN_QBLOCK 128

size_t attention_scratch_floats(int T)
{
    return (size_t)ATTN_QBLOCK * T;
}

void attention_forward(float *out, const float *qkv, float *scratch,
                       int B, int T, int D, int heads)
{
    const int hd = D / heads, ld = 3 * D;
    const int nqb = (T + ATTN_QBLOCK - 1) / ATTN_QBLOCK;
    const float scale = 1.0f / sqrtf((float)hd);
    /* One (image, head, query block) per task; the GEMMs inside run
     * single-threaded because OpenBLAS (OpenMP build) does not nest inside a
     * parallel region. */
#pragma omp parallel for collapse(3) schedule(dynamic, 1)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < heads; h++)
            for (int qb = 0; qb < nqb; qb++) {
                float *S = scratch + (size_t)omp_get_thread_num() * attention_scratch_floats(T);
                const int q0 = qb * ATTN_QBLOCK;
                const int nq = T - q0 < ATTN_QBLOCK ? T - q0 : ATTN_QBLOCK;
                const float *base = qkv + (size_t)b * T * ld + (size_t)h * hd;
                const float *q = base + (size_t)q0 * ld;
                const float *k = base + D;
                const float *v = base + 2 * D;
                float *o = out + ((size_t)b * T + q0) * D + (size_t)h * hd;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, T, hd, scale, q, ld,
                            k, ld, 0.0f, S, T);
                /* Unnormalised softmax rows; 1/sum scales the nq x hd output
                 * instead of the nq x T probabilities. */
                float inv_sum[ATTN_QBLOCK];
                for (int i = 0; i < nq; i++) {
                    float *s = S + (size_t)i * T;
                    float mx = s[0];
#pragma omp simd reduction(max : mx)
                    for (int j = 1; j < T; j++) mx = s[j] > mx ? s[j] : mx;
                    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
                    for (int j = 0; j < T; j++) {
                        s[j] = exp_approx(s[j] - mx);
                        sum += s[j];
                    }
                    inv_sum[i] = 1.0f / sum;
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, hd, T, 1.0f, S, T,
                            v, ld, 0.0f, o, D);
                for (int i = 0; i < nq; i++)
                    for (int e = 0; e < hd; e++) o[(size_t)i * D + e] *= inv_sum[i];
            }
}
