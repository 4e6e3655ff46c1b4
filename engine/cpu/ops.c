#include "ops.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "attention_fused.h"
#include "exp_approx.h"

/* Mean and 1/std of one row: two passes, the mean first, then the centred
 * variance, so large offsets do not cost precision; float sums over D <= a few
 * thousand stay within 1e-6 relative. */
static inline void row_moments(const float *x, int D, float eps, float *mean, float *rstd)
{
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int i = 0; i < D; i++) sum += x[i];
    const float mu = sum / D;
    float var = 0.0f;
#pragma omp simd reduction(+ : var)
    for (int i = 0; i < D; i++) var += (x[i] - mu) * (x[i] - mu);
    *mean = mu;
    *rstd = 1.0f / sqrtf(var / D + eps);
}

void layernorm_forward(float *out, const float *in, const float *w, const float *b,
                       size_t rows, int D, float eps)
{
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *x = in + r * D;
        float *y = out + r * D, mean, rstd;
        row_moments(x, D, eps, &mean, &rstd);
        for (int i = 0; i < D; i++) y[i] = (x[i] - mean) * rstd * w[i] + b[i];
    }
}

void layernorm_forward_bf16(mm_bf16 *out, const float *in, const float *w, const float *b,
                            size_t rows, int D, float eps)
{
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *x = in + r * D;
        mm_bf16 *y = out + r * D;
        float mean, rstd;
        row_moments(x, D, eps, &mean, &rstd);
        for (int i = 0; i < D; i++) y[i] = mm_bf16_round((x[i] - mean) * rstd * w[i] + b[i]);
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
    mm_sgemm(false, true, rows, (size_t)N, (size_t)K, 1.0f, in, (size_t)K, W, (size_t)K, beta,
             out, (size_t)N);
}

void residual_layernorm(float *x, const float *y, const float *gamma, void *out,
                        enum mm_type out_type, const float *w, const float *b, size_t rows, int D,
                        float eps)
{
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        float *xr = x + r * D;
        const float *yr = y + r * D;
        if (gamma)
            for (int i = 0; i < D; i++) xr[i] += gamma[i] * yr[i];
        else
            for (int i = 0; i < D; i++) xr[i] += yr[i];
        float mean, rstd;
        row_moments(xr, D, eps, &mean, &rstd);
        if (out_type == MM_BF16) {
            mm_bf16 *o = (mm_bf16 *)out + r * D;
            for (int i = 0; i < D; i++) o[i] = mm_bf16_round((xr[i] - mean) * rstd * w[i] + b[i]);
        } else {
            float *o = (float *)out + r * D;
            for (int i = 0; i < D; i++) o[i] = (xr[i] - mean) * rstd * w[i] + b[i];
        }
    }
}

static inline float silu(float a)
{
    return a / (1.0f + exp_approx(-a));
}

static void swiglu_row(float *restrict o, const float *restrict a, const float *restrict g,
                       int n)
{
    for (int j = 0; j < n; j++) o[j] = silu(a[j]) * g[j];
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

/* Rows of queries per block: the scores of a block (all images and heads)
 * take at most ATTN_SCRATCH_TARGET bytes, but a block has at least
 * ATTN_MIN_ROWS rows so that each product stays worth a call. */
#define ATTN_MIN_ROWS 16

static int query_block(int B, int T, int heads)
{
    const size_t per_row = (size_t)B * heads * T * sizeof(float);
    size_t q = ATTN_SCRATCH_TARGET / per_row;
    if (q < ATTN_MIN_ROWS) q = ATTN_MIN_ROWS;
    return q < (size_t)T ? (int)q : T;
}

size_t attention_scratch_bytes(int B, int T, int D, int heads, enum mm_type t)
{
    if (t == MM_BF16 && attention_fused_applies(D, heads))
        return attention_fused_scratch_bytes(B, T, D, heads, omp_get_max_threads());
    const size_t cells = (size_t)B * heads * query_block(B, T, heads) * T;
    /* Scores in float32; bf16 probabilities beside them (float32 ones
     * overwrite the scores). */
    return cells * sizeof(float) + (t == MM_BF16 ? cells * sizeof(mm_bf16) : 0);
}

/* Normalised softmax of each score row (scaled by scale), in place or to bf16. */
static void softmax_rows(float *S, mm_bf16 *P16, size_t rows, int T, float scale)
{
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        float *s = S + r * T;
        const float sum = softmax_exp_row(s, T, scale);
        const float inv = 1.0f / sum;
        if (P16) {
            mm_bf16 *p = P16 + r * T;
            for (int j = 0; j < T; j++) p[j] = mm_bf16_round(s[j] * inv);
        } else {
#pragma omp simd
            for (int j = 0; j < T; j++) s[j] *= inv;
        }
    }
}

int attention_forward(void *out, const void *qkv, void *scratch, int B, int T, int D, int heads,
                      enum mm_type t, char *err, size_t errlen)
{
    if (t == MM_BF16 && attention_fused_applies(D, heads)) {
        attention_fused_bf16(out, qkv, scratch, B, T, D, heads);
        return 0;
    }
    const int64_t hd = D / heads, ld = 3 * (int64_t)D, esz = t == MM_BF16 ? 2 : 4;
    const int qb = query_block(B, T, heads);
    float *S = scratch;
    mm_bf16 *P16 = t == MM_BF16 ? (mm_bf16 *)(S + (size_t)B * heads * qb * T) : NULL;
    const char *base = qkv;
    const float scale = 1.0f / sqrtf((float)hd);
    /* Heads are views into the qkv rows: batch dims (image, head). */
    for (int q0 = 0; q0 < T; q0 += qb) {
        const int64_t nq = T - q0 < qb ? T - q0 : qb;
        const struct mm_view q = {(void *)(base + q0 * ld * esz), t, {B, heads, nq, hd},
                                  {T * ld, hd, ld, 1}};
        const struct mm_view k = {(void *)(base + D * esz), t, {B, heads, hd, T},
                                  {T * ld, hd, 1, ld}};
        const struct mm_view s = {S, MM_F32, {B, heads, nq, T}, {heads * nq * T, nq * T, T, 1}};
        if (mm_batched(&s, &q, &k, err, errlen)) return -1;
        softmax_rows(S, P16, (size_t)B * heads * nq, T, scale);
        const struct mm_view p = {P16 ? (void *)P16 : (void *)S, t, {B, heads, nq, T},
                                  {heads * nq * T, nq * T, T, 1}};
        const struct mm_view v = {(void *)(base + 2 * (int64_t)D * esz), t, {B, heads, T, hd},
                                  {T * ld, hd, ld, 1}};
        const struct mm_view o = {(char *)out + q0 * (int64_t)D * esz, t, {B, heads, nq, hd},
                                  {(int64_t)T * D, hd, D, 1}};
        if (mm_batched(&o, &p, &v, err, errlen)) return -1;
    }
    return 0;
}
