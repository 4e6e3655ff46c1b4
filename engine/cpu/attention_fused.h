/* Fused bf16 attention (scores, softmax and the product with V per tile, on
 * AVX512-BF16): the fast path of attention_forward in bf16 (cpu/ops.h). */
#ifndef FRANCA_CPU_ATTENTION_FUSED_H
#define FRANCA_CPU_ATTENTION_FUSED_H

#include <stdbool.h>
#include <stddef.h>

#include "mm.h"

/* True where this CPU runs it (mm_bf16_native) and the head dimension
 * D / heads is a multiple of 16, at most 256. */
bool attention_fused_applies(int D, int heads);
/* Scratch for attention_fused_bf16 run on up to threads OpenMP threads. */
size_t attention_fused_scratch_bytes(int B, int T, int D, int heads, int threads);
/* As attention_forward (cpu/ops.h) in bf16, on at most the threads the
 * scratch was sized for (the current omp_get_max_threads at sizing). */
void attention_fused_bf16(mm_bf16 *out, const mm_bf16 *qkv, void *scratch, int B, int T, int D,
                          int heads);

#endif
