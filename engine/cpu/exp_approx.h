/* A vectorisable exp, and the softmax row built on it, for the CPU forward
 * (cpu/ops.c, cpu/attention_fused.c). */
#ifndef FRANCA_CPU_EXP_APPROX_H
#define FRANCA_CPU_EXP_APPROX_H

#include <math.h>
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

/* s[j] = exp((s[j] - max of s) * scale) for the T entries of a score row (the
 * unnormalised softmax); returns their sum. */
static inline float softmax_exp_row(float *s, int T, float scale)
{
    float mx = s[0];
#pragma omp simd reduction(max : mx)
    for (int j = 1; j < T; j++) mx = s[j] > mx ? s[j] : mx;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < T; j++) {
        s[j] = exp_approx((s[j] - mx) * scale);
        sum += s[j];
    }
    return sum;
}

#endif
