/* CPU forward ops of the ViT. Convention (all files in cpu/): outputs first, then
 * inputs, then dimensions. Row-major float32 throughout; a "row" is one token.
 * Every op parallelises over rows with OpenMP; products go to the matmul layer
 * (common/mm.h). */
#ifndef FRANCA_CPU_OPS_H
#define FRANCA_CPU_OPS_H

#include <stddef.h>

#include "mm.h"

/* out[r] = LayerNorm(in[r]) * w + b over D features (biased variance, eps). */
void layernorm_forward(float *out, const float *in, const float *w, const float *b,
                       size_t rows, int D, float eps);
/* The same, rounded to bf16 for the products that read it. */
void layernorm_forward_bf16(mm_bf16 *out, const float *in, const float *w, const float *b,
                            size_t rows, int D, float eps);

/* out[rows, N] = in[rows, K] . W[N, K]^T + bias[N] (bias may be NULL). */
void linear_forward(float *out, const float *in, const float *W, const float *bias,
                    size_t rows, int K, int N);

/* x[r] += gamma * y[r] (gamma NULL means 1), then out[r] = LayerNorm(x[r]) * w
 * + b in float or bf16 (out_type): one pass for a block's residual and the
 * LayerNorm that follows it. */
void residual_layernorm(float *x, const float *y, const float *gamma, void *out,
                        enum mm_type out_type, const float *w, const float *b, size_t rows, int D,
                        float eps);

/* out[r, j] = SiLU(h[r, j]) * h[r, Hs + j]; h is [rows, 2Hs]. */
void swiglu_forward(float *out, const float *h, size_t rows, int Hs);

/* In place, exact GELU: x * 0.5 * (1 + erf(x / sqrt 2)). */
void gelu_forward(float *x, size_t n);

/* im2col of non-overlapping P x P patches:
 * out[b*N + gy*gw + gx, c*P*P + py*P + px] = x[b, c, gy*P + py, gx*P + px]. */
void patchify(float *out, const float *x, int B, int C, int H, int W, int P);

/* Multi-head softmax attention over each image's T tokens, in float32 or
 * bf16 (type t; softmax in float32 either way).
 * qkv: [B*T, 3D] (Q | K | V, head h in columns h*hd..), out: [B*T, D].
 * bf16 on AVX512-BF16 runs fused (cpu/attention_fused.h); otherwise queries go
 * in blocks through two batched products, so the scores never take more than
 * about ATTN_SCRATCH_TARGET bytes whatever T is. scratch holds at least
 * attention_scratch_bytes(B, T, D, heads, t), which depends on the current
 * omp_get_max_threads(). Returns 0, or -1 with err. */
#define ATTN_SCRATCH_TARGET (16u << 20)
size_t attention_scratch_bytes(int B, int T, int D, int heads, enum mm_type t);
int attention_forward(void *out, const void *qkv, void *scratch, int B, int T, int D, int heads,
                      enum mm_type t, char *err, size_t errlen);

#endif
