/* Device kernels of the CUDA forward. Convention (as cpu/ops.h): outputs first,
 * then inputs, then dimensions; row-major, a row is one token. T is the
 * activation type (float in fp32 mode, __nv_bfloat16 in bf16 mode); the residual
 * stream, LayerNorm/LayerScale parameters and positional tables are float.
 * Every launcher returns cudaGetLastError() after its launch. */
#ifndef FRANCA_CUDA_KERNELS_CUH
#define FRANCA_CUDA_KERNELS_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stddef.h>

/* out[b*N + gy*gw + gx, c*P*P + py*P + px] = x[b, c, gy*P + py, gx*P + px] (3 channels),
 * rows of cuda_plan_patch_k(P) elements whose columns past 3*P*P are zero
 * (cuda_plan_im2col_src). */
template <typename T>
cudaError_t launch_im2col(T *out, const float *x, int B, int H, int W, int P, cudaStream_t s);

/* x[b, 0] = cls + pos[0]; x[b, 1..R] = registers; x[b, 1+R+n] = tok[b*N + n] + pos[1+n]. */
template <typename T>
cudaError_t launch_embed(float *x, const T *tok, const float *cls, const float *reg,
                         const float *pos, int B, int Tk, int N, int R, int D, cudaStream_t s);

/* Per row: if branch: x += (gamma ? gamma * branch : branch) (x updated in place);
 * then out = LayerNorm(x) * w + b (biased variance, eps). */
template <typename T, typename O>
cudaError_t launch_residual_ln(float *x, const T *branch, const float *gamma, const float *w,
                               const float *b, O *out, size_t rows, int D, float eps,
                               cudaStream_t s);

/* out[r, j] = SiLU(h[r, j]) * h[r, Hs + j]; h is [rows, 2Hs]. */
template <typename T>
cudaError_t launch_swiglu(T *out, const T *h, size_t rows, int Hs, cudaStream_t s);

/* In place, exact (erf) GELU. */
template <typename T>
cudaError_t launch_gelu(T *x, size_t n, cudaStream_t s);

/* qkv [B*Tk, 3D] -> dst [3][B*heads][Tk][hd] (head-major Q, K, V). */
template <typename T>
cudaError_t launch_split_heads(T *dst, const T *qkv, int B, int Tk, int D, int heads,
                               cudaStream_t s);

/* oh [B*heads][Tk][hd] -> attn [B*Tk, D] (head h in columns h*hd..). */
template <typename T>
cudaError_t launch_merge_heads(T *attn, const T *oh, int B, int Tk, int D, int heads,
                               cudaStream_t s);

/* probs[r, :n] = softmax(scores[r, :n]), rows rows of ld elements each (ld >= n;
 * columns n..ld-1 are neither read nor written). */
template <typename T>
cudaError_t launch_softmax(T *probs, const float *scores, size_t rows, int n, int ld,
                           cudaStream_t s);

/* Fused (flash-style) attention, bf16 tensor cores, fp32 softmax statistics:
 * qkv [B*Tk, 3D] -> out [B*Tk, D]. head_dim = D/heads must be 32, 64 or 128. */
cudaError_t launch_flash_attention(__nv_bfloat16 *out, const __nv_bfloat16 *qkv, int B, int Tk,
                                   int D, int heads, cudaStream_t s);

#endif
