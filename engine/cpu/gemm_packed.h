/* Inference linear layers with weights packed once: out = in . W^T + bias.
 *
 * linear_forward (ops.c) hands every call to cblas_sgemm, which re-packs W on
 * each call and, where the environment pins OpenBLAS to an older kernel, runs
 * below the machine's speed. For a model whose weights do not change, W is
 * repacked here once into column panels and an AVX-512 micro-kernel reads
 * them directly. CPUs without AVX-512 keep the cblas path (no copy is made).
 *
 * Packed layout: W [N, K] (PyTorch, row-major) becomes ceil(N / NR) panels of
 * NR output columns; panel p holds, for k = 0..K-1, the NR values
 * W[p*NR + j, k] (j = 0..NR-1) contiguously, zero past column N. Each panel
 * starts on a 64-byte boundary. The original W is only referenced, never
 * copied or freed. */
#ifndef FRANCA_CPU_GEMM_PACKED_H
#define FRANCA_CPU_GEMM_PACKED_H

#include <stdbool.h>
#include <stddef.h>

#define PACKED_NR 32 /* output columns per panel: two 16-float AVX-512 vectors */

struct packed_weights {
    int K, N;
    const float *W;   /* [N, K], not owned: the cblas fallback reads it */
    float *panels;    /* [ceil(N/NR), K, NR], 64-byte aligned; NULL: use the fallback */
};

/* Packs W [N, K] for the kernel this CPU runs (a no-op copy-wise without
 * AVX-512). W must outlive pw. Returns 0, or -1 when out of memory (pw is then
 * zeroed and safe to free). */
int packed_weights_pack(struct packed_weights *pw, const float *W, int K, int N);
void packed_weights_free(struct packed_weights *pw);
/* Bytes of the packed copy (0 when none was made). */
size_t packed_weights_bytes(const struct packed_weights *pw);

/* out[rows, N] = in[rows, K] . W^T + bias[N] (bias may be NULL); out must not
 * overlap in. Parallel over OpenMP threads when called outside a parallel
 * region; allocates nothing. Same result as linear_forward up to fp32
 * summation order. */
void packed_linear_forward(float *out, const float *in, const struct packed_weights *pw,
                           const float *bias, size_t rows);

/* "avx512" or "cblas": the path packed_linear_forward takes for pw. */
const char *packed_linear_kernel(const struct packed_weights *pw);

/* Test hook: true sends every call to the cblas fallback, packed or not. */
void packed_linear_force_fallback(bool on);

#endif
