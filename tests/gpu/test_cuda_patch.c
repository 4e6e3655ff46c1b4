/* The CUDA engine's padded patch embedding and the alignment it promises
 * cuBLASLt, on any machine (host-side halves of engine/cuda/plan.c):
 *   - K = 3*P*P is padded to a multiple of 8 (P = 14: 588 -> 592), so bf16 rows
 *     of the im2col matrix and the weights are 16-byte aligned;
 *   - the im2col index map (shared with the device kernel) covers every pixel
 *     once and leaves the padding columns empty;
 *   - weights staged with zero padding give, through the padded GEMM, exactly
 *     the patch convolution;
 *   - every GEMM operand of planned ViT-S/B/L forwards (P = 14, 224 and 518 px,
 *     bf16 and fp32, fused and unfused attention) gets an alignment promise of
 *     at least 16 bytes counting its leading dimension and batch stride. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/plan.h"
#include "model_config.h"

static int failed, passed;
#define EXPECT(c, ...) do { if (c) passed++; else { failed++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } } while (0)

static float frand(uint32_t *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)(*s >> 8) / (float)(1u << 24) - 0.5f;
}

static void padding_sizes(void)
{
    EXPECT(cuda_plan_patch_k(14) == 592, "P=14: 592, got %d", cuda_plan_patch_k(14));
    EXPECT(cuda_plan_patch_k(16) == 768 && cuda_plan_patch_k(8) == 192, "already multiples of 8");
    EXPECT(cuda_plan_patch_k(1) == 8 && cuda_plan_patch_k(7) == 152, "small P");
    EXPECT(cuda_plan_patch_k(0) == 0 && cuda_plan_patch_k(-2) == 0, "invalid P");
    for (int P = 1; P <= 32; P++) {
        const int k = 3 * P * P, kp = cuda_plan_patch_k(P);
        EXPECT(kp >= k && kp < k + 8 && kp % 8 == 0, "P=%d: Kp %d", P, kp);
    }
    /* What the padding avoids: unpadded bf16 rows of 588 are only 8-byte aligned. */
    const size_t row = 588 * 2, padded = (size_t)cuda_plan_patch_k(14) * 2;
    EXPECT(cuda_plan_alignment((void *)0x100000, &row, 1) == 8, "588 bf16 rows: 8 bytes");
    EXPECT(cuda_plan_alignment((void *)0x100000, &padded, 1) >= 16, "592 bf16 rows: 16+ bytes");
}

/* Two images of 28x42 (grid 2x3) at P = 14, D = 5 outputs. */
static void padded_patch_embedding(void)
{
    enum { B = 2, H = 28, W = 42, P = 14, D = 5, GH = H / P, GW = W / P, N = GH * GW };
    const int K = 3 * P * P, Kp = cuda_plan_patch_k(P);
    const size_t npix = (size_t)B * 3 * H * W, rows = (size_t)B * N;
    float *x = malloc(sizeof(float) * npix), *w = malloc(sizeof(float) * D * K);
    float *cols = malloc(sizeof(float) * rows * Kp), *wp = malloc(sizeof(float) * (D * Kp + 1));
    uint16_t *wh = malloc(sizeof(uint16_t) * (D * Kp + 1));
    int *hits = calloc(npix, sizeof(int));
    uint32_t seed = 7;
    for (size_t i = 0; i < npix; i++) x[i] = frand(&seed);
    for (int i = 0; i < D * K; i++) w[i] = frand(&seed);

    /* im2col as the kernel does it: every pixel exactly once, padding empty. */
    int bad = 0;
    for (size_t r = 0; r < rows; r++)
        for (int c = 0; c < Kp; c++) {
            const long long src = cuda_plan_im2col_src(r, c, H, W, P);
            if ((c >= K) != (src < 0) || src >= (long long)npix) bad++;
            else if (src >= 0) hits[src]++;
            cols[r * Kp + c] = src < 0 ? 0.0f : x[src];
        }
    EXPECT(!bad, "%d columns map wrongly (padding or range)", bad);
    int once = 1;
    for (size_t i = 0; i < npix; i++) once &= hits[i] == 1;
    EXPECT(once, "every pixel lands in exactly one patch column");

    /* Weights staged with zero padding; a sentinel past the end stays. */
    wp[D * Kp] = 42.0f;
    wh[D * Kp] = 0xbeef;
    cuda_plan_stage_rows(wp, w, D, K, Kp, 4);
    cuda_plan_stage_rows(wh, w, D, K, Kp, 2);
    EXPECT(wp[D * Kp] == 42.0f && wh[D * Kp] == 0xbeef, "staging stays inside rows x ld");
    int pad_ok = 1, val_ok = 1;
    for (int d = 0; d < D; d++)
        for (int c = 0; c < Kp; c++) {
            const size_t i = (size_t)d * Kp + c;
            if (c >= K) pad_ok &= wp[i] == 0.0f && wh[i] == 0;
            else val_ok &= wp[i] == w[d * K + c] && wh[i] == cuda_f32_to_bf16(w[d * K + c]);
        }
    EXPECT(pad_ok, "padding columns of the staged weights are zero (f32 and bf16)");
    EXPECT(val_ok, "staged weights keep each row's values (f32 exact, bf16 rounded)");

    /* Padded GEMM (tokens = cols . wp^T) against the convolution it stands for. */
    double worst = 0;
    for (int b = 0; b < B; b++)
        for (int gy = 0; gy < GH; gy++)
            for (int gx = 0; gx < GW; gx++)
                for (int d = 0; d < D; d++) {
                    const size_t r = (size_t)b * N + gy * GW + gx;
                    double gemm = 0, conv = 0;
                    for (int c = 0; c < Kp; c++)
                        gemm += (double)cols[r * Kp + c] * wp[(size_t)d * Kp + c];
                    for (int ch = 0; ch < 3; ch++)
                        for (int py = 0; py < P; py++)
                            for (int px = 0; px < P; px++) {
                                const size_t pix =
                                    (((size_t)b * 3 + ch) * H + gy * P + py) * W + gx * P + px;
                                conv += (double)x[pix] * w[((d * 3 + ch) * P + py) * P + px];
                            }
                    if (fabs(gemm - conv) > worst) worst = fabs(gemm - conv);
                }
    EXPECT(worst < 1e-9, "padded GEMM equals the patch convolution (max diff %.3e)", worst);
    free(x); free(w); free(cols); free(wp); free(wh); free(hits);
}

/* Alignment promised for an operand at offset off of a 256-aligned arena, with
 * leading dimension ld and (batched) stride elements of e bytes. */
static uint32_t promise(size_t off, size_t ld, size_t stride, size_t e)
{
    const size_t st[2] = {ld * e, stride * e};
    return cuda_plan_alignment((const unsigned char *)0x7f0000000000 + off, st, stride ? 2 : 1);
}

static void alignment_promises(void)
{
    const int dims[3][2] = {{384, 6}, {768, 12}, {1024, 16}}, res[2] = {224, 518};
    for (int a = 0; a < 3; a++)
        for (int ri = 0; ri < 2; ri++)
            for (int prec = 0; prec < 2; prec++)
                for (int unf = 0; unf < 2; unf++)
                    for (int B = 1; B <= 3; B += 2) {
                        const int D = dims[a][0], heads = dims[a][1], hd = D / heads;
                        const int g = res[ri] / 14, N = g * g, T = 1 + N, Hs = swiglu_hidden_for(D);
                        const size_t e = prec ? 2 : 4, Kp = (size_t)cuda_plan_patch_k(14);
                        const size_t ld = (size_t)cuda_plan_scores_ld(T);
                        struct cuda_shape s = {B, T, N, D, Hs, heads, 14, true, (int)e, unf, 0, 0};
                        struct cuda_plan p;
                        if (cuda_plan_activations(&s, &p)) {
                            EXPECT(0, "plan D=%d T=%d", D, T);
                            continue;
                        }
                        uint32_t worst = promise(0, Kp, 0, e); /* patch weights (own buffer) */
                        const uint32_t al[] = {
                            promise(p.patches, Kp, 0, e), promise(p.xn, D, 0, e),
                            promise(p.qkv, 3 * (size_t)D, 0, e), promise(p.attn, D, 0, e),
                            promise(p.branch, D, 0, e), promise(p.hidden, 2 * (size_t)Hs, 0, e),
                            promise(p.gated, Hs, 0, e), promise(0, Hs, 0, e) /* fc2 weights */,
                            unf ? promise(p.heads, hd, (size_t)T * hd, e) : 256,
                            unf ? promise(p.oh, hd, (size_t)T * hd, e) : 256,
                            unf ? promise(p.scores, ld, (size_t)T * ld, 4) : 256,
                            unf ? promise(p.probs, ld, (size_t)T * ld, e) : 256,
                        };
                        for (size_t i = 0; i < sizeof al / sizeof al[0]; i++)
                            if (al[i] < worst) worst = al[i];
                        EXPECT(worst >= 16, "D=%d %dpx %s %s B=%d: an operand promises %u bytes",
                               D, res[ri], prec ? "bf16" : "fp32", unf ? "unfused" : "fused", B,
                               worst);
                    }
}

int main(void)
{
    padding_sizes();
    padded_patch_embedding();
    alignment_promises();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
