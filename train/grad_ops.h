/* Training-time forward variants and backward passes of the ViT ops.
 *
 * Conventions follow engine/cpu/ops.h: outputs first, then inputs, then sizes;
 * row-major float32; a "row" is one token. Parameter gradients are always
 * ACCUMULATED (+=), so a caller can sum several passes into one gradient arena.
 * Input gradients are accumulated too (dx +=) unless the comment says otherwise,
 * because the residual stream collects contributions from several branches.
 * GEMMs go to mm_sgemm (common/mm.h); loops over rows (or heads) use OpenMP. */
#ifndef FRANCA_TRAIN_GRAD_OPS_H
#define FRANCA_TRAIN_GRAD_OPS_H

#include <stddef.h>

#include "mm.h"

/* Backward of out = in . W^T + bias (in [rows, K], W [N, K]):
 * dx (+)= dy . W   (written when dx_accumulate is 0, added otherwise; may be NULL),
 * dW += dy^T . x   (may be NULL), db += column sums of dy (may be NULL). */
void linear_backward(float *dx, float *dW, float *db, const float *dy, const float *x,
                     const float *W, size_t rows, int K, int N, int dx_accumulate);

/* LayerNorm forward that also keeps the per-row mean and 1/std for backward. */
void layernorm_forward_train(float *out, float *mean, float *rstd, const float *in,
                             const float *w, const float *b, size_t rows, int D, float eps);
/* dx += dLN/dx . dy; dw += sum_r dy * xhat; db += sum_r dy. x is the LN input. */
void layernorm_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *mean, const float *rstd, const float *w, size_t rows, int D);

/* Exact-erf GELU backward: dx = dy * (Phi(x) + x phi(x)) (written; dx may alias dy). */
void gelu_backward(float *dx, const float *dy, const float *x, size_t n);
/* Exact GELU out of place: out = GELU(x). */
void gelu_forward_copy(float *out, const float *x, size_t n);

/* SwiGLU: out[r, j] = SiLU(h[r, j]) * h[r, Hs + j] (accurate expf, for training). */
void swiglu_forward_train(float *out, const float *h, size_t rows, int Hs);
/* dh [rows, 2Hs] written from dy [rows, Hs] and the pre-activations h. */
void swiglu_backward(float *dh, const float *dy, const float *h, size_t rows, int Hs);

/* Attention as engine attention_forward, keeping the softmax probabilities
 * P [B, heads, T, T] for backward. */
void attention_forward_train(float *out, float *P, const float *qkv, int B, int T, int D,
                             int heads);
/* dqkv [B*T, 3D] is written (Q | K | V columns) from dout [B*T, D], qkv and P.
 * scratch: at least attention_backward_scratch_floats(T) floats per OpenMP thread. */
void attention_backward(float *dqkv, const float *dout, const float *qkv, const float *P,
                        float *scratch, int B, int T, int D, int heads);
size_t attention_backward_scratch_floats(int T);

/* Transpose of engine pos_embed_interpolate (a fixed linear map for a grid):
 * dtable [1 + M*M, D] += J^T . dout, dout [1 + gh*gw, D]. */
void pos_embed_backward(float *dtable, const float *dout, int M, int D, int gh, int gw);

/* bf16 variants (training precision bf16): every operand is rounded to bf16 as
 * it enters a product (weights come pre-rounded, once per step), products
 * accumulate in float32, everything around them stays float32. Scratch
 * buffers are bf16 and hold the rounded operands; the sizes are given per
 * function. A product that oneDNN refuses aborts with a message (as
 * mm_sgemm does): start-up checks mm_bf16_supported(), so it cannot happen. */

/* out = round(in) . W16^T + bias; in16: rows * K. */
void linear_forward_bf16(float *out, const float *in, const mm_bf16 *W16, const float *bias,
                         size_t rows, int K, int N, mm_bf16 *in16);
/* As linear_backward with W16 = round(W); dy16: rows * N, x16: rows * K. */
void linear_backward_bf16(float *dx, float *dW, float *db, const float *dy, const float *x,
                          const mm_bf16 *W16, size_t rows, int K, int N, int dx_accumulate,
                          mm_bf16 *dy16, mm_bf16 *x16);
/* As attention_forward_train with bf16 QK^T and PV. qkv16: B*T*3D;
 * P16: B*heads*T*T. */
void attention_forward_train_bf16(float *out, float *P, const float *qkv, int B, int T, int D,
                                  int heads, mm_bf16 *qkv16, mm_bf16 *P16);
/* As attention_backward with bf16 products: qkv16: B*T*3D; dout16: B*T*D;
 * P16: B*heads*T*T (bf16); dP: B*heads*T*T floats. */
void attention_backward_bf16(float *dqkv, const float *dout, const float *qkv, const float *P,
                             int B, int T, int D, int heads, mm_bf16 *qkv16, mm_bf16 *dout16,
                             mm_bf16 *P16, float *dP);

/* Parallel rounding of n floats to bf16. */
void round_bf16(mm_bf16 *dst, const float *src, size_t n);

/* The linear products of a pass whose operands have type prod: fp32 reads W,
 * bf16 reads W16 (NULL there aborts: a pass without its weight copy) and
 * rounds through the scratch in16 / dy16, x16 (as the _bf16 variants). */
void linear_forward_prod(enum mm_type prod, float *out, const float *in, const float *W,
                         const mm_bf16 *W16, const float *bias, size_t rows, int K, int N,
                         mm_bf16 *in16);
void linear_backward_prod(enum mm_type prod, float *dx, float *dW, float *db, const float *dy,
                          const float *x, const float *W, const mm_bf16 *W16, size_t rows, int K,
                          int N, mm_bf16 *dy16, mm_bf16 *x16);

/* The bf16 copy of tensor p of a float arena, in a bf16 arena that mirrors it
 * (NULL when there is no copy). */
static inline const mm_bf16 *arena_copy16(const mm_bf16 *arena16, const float *arena,
                                          const float *p)
{
    return arena16 ? arena16 + (p - arena) : NULL;
}

#endif
