/* Host-side planning of the CUDA engine, in plain C so that it builds and is
 * unit-tested on machines without CUDA: the activation arena layout for one
 * (batch, tokens) shape, the split of a forward's batch into pipelined chunks
 * (uploads overlapping compute), the attention chunking of the unfused path,
 * the fused-attention eligibility, and float -> bfloat16 rounding for the
 * weight upload. Nothing here touches a device. */
#ifndef FRANCA_CUDA_PLAN_H
#define FRANCA_CUDA_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Functions shared with device code (the im2col kernel). */
#ifdef __CUDACC__
#define CUDA_PLAN_HD __host__ __device__
#else
#define CUDA_PLAN_HD
#endif

/* Every buffer of the arenas starts on this boundary (cuBLASLt's preferred alignment). */
#define CUDA_PLAN_ALIGN 256
/* cuBLASLt workspace carved from the activation arena. */
#define CUDA_PLAN_GEMM_WORKSPACE ((size_t)32 << 20)
/* Default cap on the unfused attention's score + probability buffers. */
#define CUDA_PLAN_SCORES_BUDGET ((size_t)2 << 30)
/* Pipelined forwards: a chunk holds about this many token rows (enough to keep
 * the GEMMs efficient), and a batch is split into at most this many chunks. */
#define CUDA_PLAN_CHUNK_ROWS 16384
#define CUDA_PLAN_MAX_CHUNKS 8
/* Staging slots of a pipelined forward (double buffering). */
#define CUDA_PLAN_SLOTS 2

/* The shape an activation arena is planned for. */
struct cuda_shape {
    int B;            /* images */
    int T;            /* tokens per image (1 + registers + N) */
    int N;            /* patches per image */
    int D;            /* embed dim */
    int Hs;           /* FFN hidden (SwiGLU: w12 has 2*Hs rows) */
    int heads;
    int P;            /* patch size */
    bool swiglu;
    int act_bytes;    /* 2 (bf16) or 4 (fp32): GEMM inputs/outputs */
    bool unfused;     /* plan the unfused attention's buffers */
    size_t scores_budget; /* bytes allowed for scores + probabilities; 0: default */
    int slots;        /* input and output buffers: 1, or CUDA_PLAN_SLOTS when pipelined
                       * (0 counts as 1) */
};

/* Byte offsets into one device allocation; 0-sized buffers get offset 0 and must
 * not be used. Shapes in elements, row = token. */
struct cuda_plan {
    size_t input[CUDA_PLAN_SLOTS]; /* [B, 3, H, W] f32 each: the uploaded images (slot 1
                                    * only when slots == 2) */
    size_t patches;   /* [B*N, Kp] act: im2col, Kp = cuda_plan_patch_k(P) (zero-padded) */
    size_t x;         /* [B*T, D] f32: residual stream */
    size_t xn;        /* [B*T, D] act: LayerNorm output (GEMM input) */
    size_t qkv;       /* [B*T, 3D] act */
    size_t attn;      /* [B*T, D] act: attention output (heads concatenated) */
    size_t branch;    /* [B*T, D] act: proj / FFN output; patch-embed tokens [B*N, D] first */
    size_t hidden;    /* [B*T, 2Hs] (SwiGLU) or [B*T, Hs] (MLP) act */
    size_t gated;     /* [B*T, Hs] act (SwiGLU only) */
    size_t out[CUDA_PLAN_SLOTS];   /* [B*T, D] f32 each: final LayerNorm output */
    size_t heads;     /* [3, B*heads, T, hd] act: head-major Q, K, V (unfused only) */
    size_t oh;        /* [B*heads, T, hd] act: head-major attention output (unfused only) */
    size_t scores;    /* [chunk, T, ld] f32 (unfused only; ld = cuda_plan_scores_ld(T)) */
    size_t probs;     /* [chunk, T, ld] act (unfused only) */
    size_t gemm_ws;   /* CUDA_PLAN_GEMM_WORKSPACE bytes */
    size_t total;     /* bytes of the whole arena */
    size_t input_bytes; /* bytes of one input buffer (B*3*H*W*4) */
    int attn_chunk;   /* (image, head) pairs per unfused attention pass; 0 when not planned */
    int slots;        /* input/output slots planned (1 or CUDA_PLAN_SLOTS) */
};

/* Plans the arena; returns 0, or -1 when a size overflows or the shape is invalid. */
int cuda_plan_activations(const struct cuda_shape *s, struct cuda_plan *p);

/* (image, head) pairs whose T x ld scores and probabilities fit in budget bytes
 * (at least 1, at most pairs). */
int cuda_plan_attention_chunk(int pairs, int T, int act_bytes, size_t budget);

/* Leading dimension (elements) of a T x T score / probability matrix: T rounded
 * up to a multiple of 8, so that every row and every batch stride starts on a
 * 16-byte boundary (cuBLASLt's tensor-core kernels want that; 257 or 1370 alone
 * would leave bf16 rows 2-byte aligned). */
int cuda_plan_scores_ld(int T);

/* Chunks of a pipelined forward of B images of T tokens. With
 * want = max(ceil(min_rows / T), ceil(B / CUDA_PLAN_MAX_CHUNKS)) images: 1 (no
 * pipeline) when min_rows <= 0 or B <= want, else ceil(B / want); so at most
 * CUDA_PLAN_MAX_CHUNKS chunks, each of about min_rows token rows or more.
 * 0 for B <= 0 or T <= 0. */
int cuda_plan_chunk_count(int B, int T, long long min_rows);
/* Chunk j of n over B images: the images [*first, *first + *count), balanced
 * (counts differ by at most one, and add up to B). */
void cuda_plan_chunk_range(int B, int n, int j, int *first, int *count);
/* The largest chunk: ceil(B / n) images (0 for invalid B or n). */
int cuda_plan_chunk_max(int B, int n);

/* Columns of the patch-embedding GEMM: 3*P*P rounded up to a multiple of 8, so
 * that bf16 rows of the im2col matrix and of the weights start on 16-byte
 * boundaries (P = 14: 592, not 588, whose 1,176-byte rows are only 8-byte
 * aligned and can leave cuBLASLt without a tensor-core algorithm). The extra
 * columns are zero in both operands, so the product is unchanged. 0 for P <= 0. */
int cuda_plan_patch_k(int P);

/* im2col: where element (row, col) of the [B*N, cuda_plan_patch_k(P)] patch
 * matrix comes from in the [B, 3, H, W] images, or -1 for a padding column.
 * Row b*N + n is patch n (row-major over the (H/P) x (W/P) grid) of image b;
 * column c*P*P + py*P + px is channel c, pixel (py, px) of the patch, which is
 * the flattening of a [D, 3, P, P] convolution weight. */
static inline CUDA_PLAN_HD long long cuda_plan_im2col_src(size_t row, int col, int H, int W, int P)
{
    const int PP = P * P, gw = W / P, N = (H / P) * gw;
    if (col >= 3 * PP) return -1;
    const size_t b = row / N;
    const int n = (int)(row % N), gy = n / gw, gx = n % gw;
    const int c = col / PP, r = col % PP, py = r / P, px = r % P;
    return (long long)(((b * 3 + c) * H + (size_t)gy * P + py) * W + (size_t)gx * P + px);
}

/* Weight staging for the upload: rows x cols floats (row-major) into rows rows
 * of ld elements, as bf16 (elem_bytes 2, cuda_f32_to_bf16) or f32 (4), with
 * columns cols..ld-1 zero. */
void cuda_plan_stage_rows(void *dst, const float *src, size_t rows, size_t cols, size_t ld,
                          int elem_bytes);

/* Head dims the fused attention kernel is compiled for (bf16 only). */
bool cuda_plan_fused_supported(int head_dim, int act_bytes);

/* Round to nearest even, as the device's __float2bfloat16; NaN stays NaN. */
uint16_t cuda_f32_to_bf16(float f);
float cuda_bf16_to_f32(uint16_t h);

/* Largest power of two (at most 256) dividing the address and every stride in
 * bytes: the alignment to promise cuBLASLt for a (batched) matrix, given its
 * leading dimension (and batch stride) in bytes among the strides. */
uint32_t cuda_plan_alignment(const void *ptr, const size_t *strides_bytes, int n);

#endif
