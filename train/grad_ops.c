/* Backward passes of the ViT ops (see grad_ops.h). */
#include "grad_ops.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "cpu/pos_embed.h"
#include "mm.h"

#define COL_CHUNK 64

void linear_backward(float *dx, float *dW, float *db, const float *dy, const float *x,
                     const float *W, size_t rows, int K, int N, int dx_accumulate)
{
    if (rows == 0) return;
    if (dx)
        mm_sgemm(false, false, (int)rows, K, N, 1.0f, dy, N, W,
                    K, dx_accumulate ? 1.0f : 0.0f, dx, K);
    if (dW)
        mm_sgemm(true, false, N, K, (int)rows, 1.0f, dy, N, x, K,
                    1.0f, dW, K);
    if (db) {
        const int chunks = (N + COL_CHUNK - 1) / COL_CHUNK;
#pragma omp parallel for schedule(static)
        for (int c = 0; c < chunks; c++) {
            const int j0 = c * COL_CHUNK, j1 = j0 + COL_CHUNK < N ? j0 + COL_CHUNK : N;
            double acc[COL_CHUNK] = {0};
            for (size_t r = 0; r < rows; r++) {
                const float *d = dy + r * N;
                for (int j = j0; j < j1; j++) acc[j - j0] += d[j];
            }
            for (int j = j0; j < j1; j++) db[j] += (float)acc[j - j0];
        }
    }
}

void layernorm_forward_train(float *out, float *mean, float *rstd, const float *in,
                             const float *w, const float *b, size_t rows, int D, float eps)
{
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *x = in + r * D;
        float *y = out + r * D;
        double sum = 0.0;
        for (int i = 0; i < D; i++) sum += x[i];
        const double mu = sum / D;
        double var = 0.0;
        for (int i = 0; i < D; i++) {
            const double d = (double)x[i] - mu;
            var += d * d;
        }
        const float m = (float)mu, rs = (float)(1.0 / sqrt(var / D + eps));
        mean[r] = m;
        rstd[r] = rs;
        for (int i = 0; i < D; i++) y[i] = (x[i] - m) * rs * w[i] + b[i];
    }
}

void layernorm_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *mean, const float *rstd, const float *w, size_t rows, int D)
{
    if (dx) {
#pragma omp parallel for schedule(static)
        for (size_t r = 0; r < rows; r++) {
            const float *xr = x + r * D, *g = dy + r * D;
            float *o = dx + r * D;
            const float m = mean[r], rs = rstd[r];
            double s1 = 0.0, s2 = 0.0;
            for (int i = 0; i < D; i++) {
                const float gw = g[i] * w[i];
                s1 += gw;
                s2 += (double)gw * ((xr[i] - m) * rs);
            }
            const float m1 = (float)(s1 / D), m2 = (float)(s2 / D);
            for (int i = 0; i < D; i++) {
                const float xh = (xr[i] - m) * rs;
                o[i] += rs * (g[i] * w[i] - m1 - xh * m2);
            }
        }
    }
    const int chunks = (D + COL_CHUNK - 1) / COL_CHUNK;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < chunks; c++) {
        const int j0 = c * COL_CHUNK, j1 = j0 + COL_CHUNK < D ? j0 + COL_CHUNK : D;
        double aw[COL_CHUNK] = {0}, ab[COL_CHUNK] = {0};
        for (size_t r = 0; r < rows; r++) {
            const float *xr = x + r * D, *g = dy + r * D;
            const float m = mean[r], rs = rstd[r];
            for (int j = j0; j < j1; j++) {
                aw[j - j0] += g[j] * ((xr[j] - m) * rs);
                ab[j - j0] += g[j];
            }
        }
        for (int j = j0; j < j1; j++) {
            if (dw) dw[j] += (float)aw[j - j0];
            if (db) db[j] += (float)ab[j - j0];
        }
    }
}

void gelu_forward_copy(float *out, const float *x, size_t n)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = 0.5f * x[i] * (1.0f + erff(x[i] * (float)M_SQRT1_2));
}

void gelu_backward(float *dx, const float *dy, const float *x, size_t n)
{
    const float inv_sqrt_2pi = 0.3989422804014327f;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        const float v = x[i];
        const float cdf = 0.5f * (1.0f + erff(v * (float)M_SQRT1_2));
        const float pdf = inv_sqrt_2pi * expf(-0.5f * v * v);
        dx[i] = dy[i] * (cdf + v * pdf);
    }
}

void swiglu_forward_train(float *out, const float *h, size_t rows, int Hs)
{
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *a = h + r * 2 * (size_t)Hs, *g = a + Hs;
        float *o = out + r * Hs;
        for (int j = 0; j < Hs; j++) o[j] = a[j] / (1.0f + expf(-a[j])) * g[j];
    }
}

void swiglu_backward(float *dh, const float *dy, const float *h, size_t rows, int Hs)
{
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *a = h + r * 2 * (size_t)Hs, *g = a + Hs, *d = dy + r * Hs;
        float *da = dh + r * 2 * (size_t)Hs, *dg = da + Hs;
        for (int j = 0; j < Hs; j++) {
            const float s = 1.0f / (1.0f + expf(-a[j]));
            dg[j] = d[j] * a[j] * s;
            da[j] = d[j] * g[j] * s * (1.0f + a[j] * (1.0f - s));
        }
    }
}

void attention_forward_train(float *out, float *P, const float *qkv, int B, int T, int D,
                             int heads)
{
    const int hd = D / heads, ld = 3 * D;
    const float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < heads; h++) {
            float *S = P + ((size_t)b * heads + h) * T * T;
            const float *q = qkv + (size_t)b * T * ld + (size_t)h * hd;
            mm_sgemm(false, true, T, T, hd, scale, q, ld, q + D,
                        ld, 0.0f, S, T);
            for (int i = 0; i < T; i++) {
                float *s = S + (size_t)i * T;
                float mx = s[0];
                for (int j = 1; j < T; j++) mx = s[j] > mx ? s[j] : mx;
                double sum = 0.0;
                for (int j = 0; j < T; j++) {
                    s[j] = expf(s[j] - mx);
                    sum += s[j];
                }
                const float inv = (float)(1.0 / sum);
                for (int j = 0; j < T; j++) s[j] *= inv;
            }
            mm_sgemm(false, false, T, hd, T, 1.0f, S, T,
                        q + 2 * D, ld, 0.0f, out + (size_t)b * T * D + (size_t)h * hd, D);
        }
}

size_t attention_backward_scratch_floats(int T) { return (size_t)T * T; }

void attention_backward(float *dqkv, const float *dout, const float *qkv, const float *P,
                        float *scratch, int B, int T, int D, int heads)
{
    const int hd = D / heads, ld = 3 * D;
    const float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < heads; h++) {
            float *dS = scratch + (size_t)omp_get_thread_num() * attention_backward_scratch_floats(T);
            const float *Pb = P + ((size_t)b * heads + h) * T * T;
            const size_t off = (size_t)b * T * ld + (size_t)h * hd;
            const float *q = qkv + off, *k = q + D, *v = q + 2 * D;
            float *dq = dqkv + off, *dk = dq + D, *dv = dq + 2 * D;
            const float *dO = dout + (size_t)b * T * D + (size_t)h * hd;
            /* dV = P^T dO; dP = dO V^T */
            mm_sgemm(true, false, T, hd, T, 1.0f, Pb, T, dO, D,
                        0.0f, dv, ld);
            mm_sgemm(false, true, T, T, hd, 1.0f, dO, D, v, ld,
                        0.0f, dS, T);
            /* dS = P * (dP - rowsum(P * dP)) */
            for (int i = 0; i < T; i++) {
                const float *p = Pb + (size_t)i * T;
                float *s = dS + (size_t)i * T;
                double dot = 0.0;
                for (int j = 0; j < T; j++) dot += (double)p[j] * s[j];
                const float c = (float)dot;
                for (int j = 0; j < T; j++) s[j] = p[j] * (s[j] - c);
            }
            /* dQ = scale dS K; dK = scale dS^T Q */
            mm_sgemm(false, false, T, hd, T, scale, dS, T, k, ld,
                        0.0f, dq, ld);
            mm_sgemm(true, false, T, hd, T, scale, dS, T, q, ld,
                        0.0f, dk, ld);
        }
}

void pos_embed_backward(float *dtable, const float *dout, int M, int D, int gh, int gw)
{
    if (gh == M && gw == M) {
        const size_t n = (1 + (size_t)M * M) * D;
        for (size_t i = 0; i < n; i++) dtable[i] += dout[i];
        return;
    }
    for (int d = 0; d < D; d++) dtable[d] += dout[d];
    float *grid = dtable + D;
    /* The forward's stencil transposed: each output position scatters its
     * gradient back to the 4x4 taps it read, with the same weights. Serial over
     * positions (taps of different outputs overlap), vectorised over D. */
    for (int oy = 0; oy < gh; oy++) {
        const struct cubic_taps ty = pos_embed_taps(oy, M, gh);
        for (int ox = 0; ox < gw; ox++) {
            const struct cubic_taps tx = pos_embed_taps(ox, M, gw);
            const float *g = dout + D + ((size_t)oy * gw + ox) * D;
            for (int a = 0; a < 4; a++)
                for (int k = 0; k < 4; k++) {
                    const float wgt = ty.w[a] * tx.w[k];
                    float *dst = grid + ((size_t)ty.idx[a] * M + tx.idx[k]) * D;
                    for (int d = 0; d < D; d++) dst[d] += wgt * g[d];
                }
        }
    }
}
