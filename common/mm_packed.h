/* The f32 path of mm.h on AVX-512 CPUs (internal to common/): weights
 * packed once into column panels that an AVX-512 micro-kernel reads directly,
 * out = in . W^T + bias. Only called where mm_isa() >= MM_ISA_AVX512.
 *
 * Packed layout: W [N, K] (PyTorch, row-major) becomes ceil(N / NR) panels of
 * NR output columns; panel p holds, for k = 0..K-1, the NR values
 * W[p*NR + j, k] (j = 0..NR-1) contiguously, zero past column N. Each panel
 * starts on a 64-byte boundary. */
#ifndef FRANCA_COMMON_MM_PACKED_H
#define FRANCA_COMMON_MM_PACKED_H

#include <stdbool.h>
#include <stddef.h>

#define PACKED_NR 32 /* output columns per panel: two 16-float AVX-512 vectors */

struct packed_weights {
    int K, N;
    float *panels;    /* [ceil(N/NR), K, NR], 64-byte aligned */
};

/* Packs W [N, K]. Returns 0, or -1 when out of memory (pw is then zeroed and
 * safe to free). */
int packed_weights_pack(struct packed_weights *pw, const float *W, int K, int N);
void packed_weights_free(struct packed_weights *pw);
/* Bytes of the packed copy. */
size_t packed_weights_bytes(const struct packed_weights *pw);

/* out[rows, N] = in[rows, K] . W^T + bias[N] (bias may be NULL); out must not
 * overlap in. Parallel over OpenMP threads when called outside a parallel
 * region; allocates nothing. */
void packed_linear_forward(float *out, const float *in, const struct packed_weights *pw,
                           const float *bias, size_t rows);

#endif
