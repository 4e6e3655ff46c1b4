/* The CPU matmul layer: every matrix product of the engine, franca-train and
 * the vector index goes through here, on oneDNN's kernels for the ISA the CPU
 * offers, chosen at run time (never from OpenBLAS's own detection, which
 * names a Sapphire Rapids a "Prescott"):
 *
 *   ISA            linear layers (weights laid out once)   other products
 *   AMX            fp32 AVX-512, bf16 AMX tiles            oneDNN sgemm / matmul
 *   AVX512-BF16    fp32 AVX-512, bf16 vdpbf16ps            oneDNN sgemm / matmul
 *   AVX-512        fp32 AVX-512, bf16 emulated (slow)      oneDNN sgemm / matmul
 *   AVX2           fp32 AVX2, bf16 refused                 oneDNN sgemm / matmul
 *
 * An own AVX-512 fp32 kernel was measured against oneDNN's matmul with
 * weights laid out the same way and lost on 2 threads (ViT-S 13.3 against
 * 15.2 images/s, ViT-B 3.7 against 4.2 at batch 1), so there is none.
 * oneDNN's ONEDNN_MAX_CPU_ISA (or mm_set_max_isa) caps every path, so that
 * tests can run the lower levels on a bigger CPU.
 *
 * Threading: calls made outside an OpenMP parallel region use all OpenMP
 * threads; calls made inside one run on the calling thread. Every function is
 * safe to call from several threads at once. Matrices are row-major. */
#ifndef FRANCA_COMMON_MM_H
#define FRANCA_COMMON_MM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint16_t mm_bf16; /* the upper half of an IEEE float32 */

enum mm_isa { MM_ISA_GENERIC = 0, MM_ISA_AVX2, MM_ISA_AVX512, MM_ISA_AVX512_BF16, MM_ISA_AMX };

/* The ISA this process computes with: the CPU's, capped by ONEDNN_MAX_CPU_ISA
 * or by mm_set_max_isa. Fixed at the first call of anything in this layer. */
enum mm_isa mm_isa(void);
const char *mm_isa_name(enum mm_isa isa); /* "amx", "avx512_bf16", "avx512", "avx2", "generic" */
/* Caps the ISA; only before the first use of this layer. 0 or -1 (too late). */
int mm_set_max_isa(enum mm_isa isa);
/* True where bf16 products run in hardware (AMX or AVX512-BF16). */
bool mm_bf16_native(void);
/* True where bf16 products are available at all (AVX-512 or better). */
bool mm_bf16_supported(void);

enum mm_type { MM_F32 = 0, MM_BF16 = 1 };

/* float32 -> bf16 rounding to nearest even (NaN stays NaN), and back. */
void mm_to_bf16(mm_bf16 *dst, const float *src, size_t n);
void mm_from_bf16(float *dst, const mm_bf16 *src, size_t n);
static inline mm_bf16 mm_bf16_round(float f)
{
    union { float f; uint32_t u; } v = {f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (mm_bf16)((v.u >> 16) | 0x40u);
    return (mm_bf16)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}
static inline float mm_bf16_value(mm_bf16 h)
{
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}

/* C[M,N] = alpha * op(A) . op(B) + beta * C, op = transpose where asked
 * (as cblas_sgemm row-major). Aborts on arguments no caller may pass. */
void mm_sgemm(bool trans_a, bool trans_b, size_t M, size_t N, size_t K, float alpha,
              const float *A, size_t lda, const float *B, size_t ldb, float beta, float *C,
              size_t ldc);

/* Weights of a linear layer, W [N, K] (PyTorch layout), laid out once for the
 * kernel that will multiply them; type is the type of the products' inputs. */
struct mm_weights;
int mm_weights_create(struct mm_weights **out, const float *W, int K, int N, enum mm_type type,
                      char *err, size_t errlen);
/* Writes the weights back as W [N, K] float32: exactly the W they were made
 * from when its values are bf16 numbers, or the type is fp32. */
int mm_weights_unpack(const struct mm_weights *w, float *W, char *err, size_t errlen);
void mm_weights_free(struct mm_weights *w);
enum mm_type mm_weights_type(const struct mm_weights *w);
/* The kernel that runs it, e.g. "onednn brg:avx512_core_bf16". */
const char *mm_weights_kernel(const struct mm_weights *w);

/* GELU: the exact (erf) form; SiLU: x * sigmoid(x). */
enum mm_post { MM_POST_NONE = 0, MM_POST_GELU = 1, MM_POST_SILU = 2 };

/* out[rows, N] = post(in[rows, K] . W^T + bias), bias [N] or NULL. in has the
 * weights' type; out is float or bf16 as out_type says (bf16 outputs need
 * bf16 weights). out must not overlap in. */
int mm_linear(const struct mm_weights *w, void *out, enum mm_type out_type, const void *in,
              const float *bias, size_t rows, enum mm_post post, char *err, size_t errlen);
/* out[rows, N] = (in[rows, K] . W^T + bias) * mul[rows, N], mul of out_type and
 * not overlapping out: the gate of SwiGLU in the product's epilogue. */
int mm_linear_mul(const struct mm_weights *w, void *out, enum mm_type out_type, const void *in,
                  const float *bias, size_t rows, const void *mul, char *err, size_t errlen);

/* C[M,N] = op(A) . op(B) + beta * C for A and B of type t (beta 0 or 1;
 * C float), as mm_sgemm; for bf16 training products whose operands change
 * every step. Returns 0, or -1 with err. */
int mm_gemm(enum mm_type t, bool trans_a, bool trans_b, size_t M, size_t N, size_t K,
            const void *A, size_t lda, const void *B, size_t ldb, float beta, float *C,
            size_t ldc, char *err, size_t errlen);

/* A 4-d strided view: two batch dimensions, then rows and columns. */
struct mm_view {
    void *data;
    enum mm_type type;
    int64_t dims[4];
    int64_t strides[4]; /* in elements */
};
/* c[i, j] = a[i, j] . b[i, j] for every batch index (i, j): a [d0, d1, M, K],
 * b [d0, d1, K, N], c [d0, d1, M, N]; a and b share a type, c is float or
 * (with bf16 inputs) bf16. Used for attention: strides select heads inside
 * the qkv rows without copying. */
int mm_batched(const struct mm_view *c, const struct mm_view *a, const struct mm_view *b,
               char *err, size_t errlen);

#endif
