/* Backward passes of the ViT ops (see grad_ops.h). */
#include "grad_ops.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/ops.h"
#include "cpu/pos_embed.h"
#include "mm.h"

#define COL_CHUNK 64

/* db += column sums of dy [rows, N], in double. */
static void bias_backward(float *db, const float *dy, size_t rows, int N)
{
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
    if (db) bias_backward(db, dy, rows, N);
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

/* In-place softmax of one score row (accurate expf, double sum). */
static void softmax_row(float *s, int T)
{
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
            for (int i = 0; i < T; i++) softmax_row(S + (size_t)i * T, T);
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

/* ------------------------------------------------------------- bf16 -- */

#define ROUND_CHUNK 16384

void round_bf16(mm_bf16 *dst, const float *src, size_t n)
{
    const size_t chunks = (n + ROUND_CHUNK - 1) / ROUND_CHUNK;
#pragma omp parallel for schedule(static) if (chunks > 1)
    for (size_t c = 0; c < chunks; c++) {
        const size_t i = c * ROUND_CHUNK, m = n - i < ROUND_CHUNK ? n - i : ROUND_CHUNK;
        mm_to_bf16(dst + i, src + i, m);
    }
}

static void bf16_failed(const char *what, const char *err)
{
    fprintf(stderr, "franca-train: bf16 %s: %s\n", what, err);
    abort();
}

static void gemm_bf16(bool ta, bool tb, size_t M, size_t N, size_t K, const mm_bf16 *A,
                      size_t lda, const mm_bf16 *B, size_t ldb, float beta, float *C, size_t ldc)
{
    char err[256];
    if (mm_gemm(MM_BF16, ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, err, sizeof err))
        bf16_failed("product", err);
}

static void batched_bf16(const struct mm_view *c, const struct mm_view *a, const struct mm_view *b)
{
    char err[256];
    if (mm_batched(c, a, b, err, sizeof err)) bf16_failed("batched product", err);
}

void linear_forward_bf16(float *out, const float *in, const mm_bf16 *W16, const float *bias,
                         size_t rows, int K, int N, mm_bf16 *in16)
{
    if (rows == 0) return;
    round_bf16(in16, in, rows * K);
    if (bias) {
#pragma omp parallel for schedule(static)
        for (size_t r = 0; r < rows; r++) memcpy(out + r * N, bias, sizeof(float) * N);
    }
    gemm_bf16(false, true, rows, N, K, in16, K, W16, K, bias ? 1.0f : 0.0f, out, N);
}

void linear_backward_bf16(float *dx, float *dW, float *db, const float *dy, const float *x,
                          const mm_bf16 *W16, size_t rows, int K, int N, int dx_accumulate,
                          mm_bf16 *dy16, mm_bf16 *x16)
{
    if (rows == 0) return;
    if (dx || dW) round_bf16(dy16, dy, rows * N);
    if (dx) gemm_bf16(false, false, rows, K, N, dy16, N, W16, K, dx_accumulate ? 1.0f : 0.0f, dx, K);
    if (dW) {
        round_bf16(x16, x, rows * K);
        gemm_bf16(true, false, N, K, rows, dy16, N, x16, K, 1.0f, dW, K);
    }
    if (db) bias_backward(db, dy, rows, N);
}

/* Views of one of Q, K, V (which = 0, 1, 2) inside qkv rows [B*T, 3D], as
 * [B, heads, T, hd], or transposed [B, heads, hd, T]. */
static struct mm_view qkv_view(void *base, enum mm_type t, int which, int B, int T, int D,
                               int heads, bool transposed)
{
    const int64_t hd = D / heads, ld = 3 * (int64_t)D, esz = t == MM_BF16 ? 2 : 4;
    struct mm_view v = {(char *)base + which * (int64_t)D * esz, t, {B, heads, T, hd},
                        {T * ld, hd, ld, 1}};
    if (transposed) {
        v.dims[2] = hd;
        v.dims[3] = T;
        v.strides[2] = 1;
        v.strides[3] = ld;
    }
    return v;
}

/* [B, heads, T, T] score-shaped matrices (or their per-head transposes). */
static struct mm_view score_view(void *base, enum mm_type t, int B, int T, int heads,
                                 bool transposed)
{
    const int64_t TT = (int64_t)T * T;
    struct mm_view v = {base, t, {B, heads, T, T}, {heads * TT, TT, transposed ? 1 : T,
                                                    transposed ? T : 1}};
    return v;
}

/* [B*T, D] rows seen as [B, heads, T, hd]. */
static struct mm_view head_rows_view(void *base, enum mm_type t, int B, int T, int D, int heads)
{
    const int64_t hd = D / heads;
    struct mm_view v = {base, t, {B, heads, T, hd}, {(int64_t)T * D, hd, D, 1}};
    return v;
}

void attention_forward_train_bf16(float *out, float *P, const float *qkv, int B, int T, int D,
                                  int heads, mm_bf16 *qkv16, mm_bf16 *P16)
{
    const size_t rows = (size_t)B * heads * T;
    const float scale = 1.0f / sqrtf((float)(D / heads));
    round_bf16(qkv16, qkv, (size_t)B * T * 3 * D);
    const struct mm_view q = qkv_view(qkv16, MM_BF16, 0, B, T, D, heads, false);
    const struct mm_view kt = qkv_view(qkv16, MM_BF16, 1, B, T, D, heads, true);
    const struct mm_view s = score_view(P, MM_F32, B, T, heads, false);
    batched_bf16(&s, &q, &kt);
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        float *p = P + r * T;
        for (int j = 0; j < T; j++) p[j] *= scale;
        softmax_row(p, T);
        mm_to_bf16(P16 + r * T, p, (size_t)T);
    }
    const struct mm_view p16 = score_view(P16, MM_BF16, B, T, heads, false);
    const struct mm_view v = qkv_view(qkv16, MM_BF16, 2, B, T, D, heads, false);
    const struct mm_view o = head_rows_view(out, MM_F32, B, T, D, heads);
    batched_bf16(&o, &p16, &v);
}

void attention_backward_bf16(float *dqkv, const float *dout, const float *qkv, const float *P,
                             int B, int T, int D, int heads, mm_bf16 *qkv16, mm_bf16 *dout16,
                             mm_bf16 *P16, float *dP)
{
    const size_t rows = (size_t)B * heads * T, tokens = (size_t)B * T;
    const float scale = 1.0f / sqrtf((float)(D / heads));
    round_bf16(qkv16, qkv, tokens * 3 * D);
    round_bf16(dout16, dout, tokens * D);
    round_bf16(P16, P, rows * T);
    const struct mm_view dO = head_rows_view(dout16, MM_BF16, B, T, D, heads);
    /* dV = P^T dO; dP = dO V^T */
    const struct mm_view pt = score_view(P16, MM_BF16, B, T, heads, true);
    const struct mm_view dv = qkv_view(dqkv, MM_F32, 2, B, T, D, heads, false);
    batched_bf16(&dv, &pt, &dO);
    const struct mm_view vt = qkv_view(qkv16, MM_BF16, 2, B, T, D, heads, true);
    const struct mm_view dpv = score_view(dP, MM_F32, B, T, heads, false);
    batched_bf16(&dpv, &dO, &vt);
    /* dS = P * (dP - rowsum(P * dP)), rounded into P16 (P^T is no longer needed) */
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *p = P + r * T, *s = dP + r * T;
        double dot = 0.0;
        for (int j = 0; j < T; j++) dot += (double)p[j] * s[j];
        const float c = (float)dot;
        for (int j = 0; j < T; j++) P16[r * T + j] = mm_bf16_round(p[j] * (s[j] - c));
    }
    /* dQ = scale dS K; dK = scale dS^T Q (scaled below, in float) */
    const struct mm_view ds = score_view(P16, MM_BF16, B, T, heads, false);
    const struct mm_view dst = score_view(P16, MM_BF16, B, T, heads, true);
    const struct mm_view k = qkv_view(qkv16, MM_BF16, 1, B, T, D, heads, false);
    const struct mm_view q = qkv_view(qkv16, MM_BF16, 0, B, T, D, heads, false);
    const struct mm_view dq = qkv_view(dqkv, MM_F32, 0, B, T, D, heads, false);
    const struct mm_view dk = qkv_view(dqkv, MM_F32, 1, B, T, D, heads, false);
    batched_bf16(&dq, &ds, &k);
    batched_bf16(&dk, &dst, &q);
#pragma omp parallel for schedule(static)
    for (size_t t = 0; t < tokens; t++) {
        float *row = dqkv + t * 3 * D;
        for (int c = 0; c < 2 * D; c++) row[c] *= scale;
    }
}

static void need_weights16(enum mm_type prod, const mm_bf16 *W16)
{
    if (prod == MM_BF16 && !W16) {
        fprintf(stderr, "franca-train: a bf16 pass without bf16 weights\n");
        abort();
    }
}

void linear_forward_prod(enum mm_type prod, float *out, const float *in, const float *W,
                         const mm_bf16 *W16, const float *bias, size_t rows, int K, int N,
                         mm_bf16 *in16)
{
    need_weights16(prod, W16);
    if (prod == MM_BF16) linear_forward_bf16(out, in, W16, bias, rows, K, N, in16);
    else linear_forward(out, in, W, bias, rows, K, N);
}

void linear_backward_prod(enum mm_type prod, float *dx, float *dW, float *db, const float *dy,
                          const float *x, const float *W, const mm_bf16 *W16, size_t rows, int K,
                          int N, mm_bf16 *dy16, mm_bf16 *x16)
{
    need_weights16(prod, W16);
    if (prod == MM_BF16)
        linear_backward_bf16(dx, dW, db, dy, x, W16, rows, K, N, 0, dy16, x16);
    else
        linear_backward(dx, dW, db, dy, x, W, rows, K, N, 0);
}
