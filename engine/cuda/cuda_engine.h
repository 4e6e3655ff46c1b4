/* The CUDA backend behind vit.h (internal to the engine; callers use vit.h).
 *
 * engine.cu implements it when the build has CUDA; stub.c otherwise, where
 * every function fails with "built without CUDA". Every function returns 0 on
 * success and -1 with a one-line message in err; none aborts.
 *
 * A cuda_model holds the weights on the device (bf16 GEMM weights and biases in
 * bf16 mode, everything fp32 in fp32 mode; LayerNorm, LayerScale, tokens and
 * positional tables always fp32) and a per-grid cache of positional tables. It
 * is read-only during forwards, so threads may share it, each with its own
 * cuda_ws (compute, upload and download streams with their events, cuBLASLt
 * handle, GEMM plan cache, activation arena, double-buffered pinned staging).
 * A forward splits a large batch into chunks whose uploads and downloads
 * overlap the compute of their neighbours (engine.cu, "Overlap of copies and
 * compute"); it still returns only when the outputs are in the caller's
 * buffers. FRANCA_CUDA_CHUNK_ROWS (token rows per chunk; 0 = one chunk) tunes
 * it for benchmarks. */
#ifndef FRANCA_CUDA_ENGINE_H
#define FRANCA_CUDA_ENGINE_H

#include <stdbool.h>
#include <stddef.h>

#include "checkpoint.h"

#ifdef __cplusplus
extern "C" {
#endif

struct cuda_model;
struct cuda_ws;

enum cuda_attention { CUDA_ATTN_AUTO = 0, CUDA_ATTN_UNFUSED = 1, CUDA_ATTN_FUSED = 2 };

/* 1 when a CUDA device is usable, 0 when not (err says why: no device, no
 * driver, or a build without CUDA). */
int cuda_device_available(char *err, size_t errlen);

/* Uploads the weights of cfg/w. bf16 selects bf16 GEMMs (fp32 accumulation). */
int cuda_model_create(const struct model_config *cfg, const struct vit_weights *w, bool bf16,
                      struct cuda_model **out, char *err, size_t errlen);
void cuda_model_free(struct cuda_model *cm);
/* Fails when fused attention is requested for a head dim or precision it does not support. */
int cuda_model_set_attention(struct cuda_model *cm, enum cuda_attention a, char *err,
                             size_t errlen);

/* x: [B,3,H,W] host float32. pos: the host positional table for the grid
 * (gh = H/P, gw = W/P), [1+gh*gw, D], uploaded once per grid and cached.
 * Outputs are host float32 and may be NULL: cls [B,D], patch [B,N,D]. */
int cuda_forward(struct cuda_model *cm, struct cuda_ws **ws, const float *pos, const float *x,
                 int B, int H, int W, float *cls, float *patch, char *err, size_t errlen);
void cuda_ws_free(struct cuda_ws *ws);

#ifdef __cplusplus
}
#endif

#endif
