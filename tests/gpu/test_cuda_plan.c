/* Host-side planning of the CUDA engine (engine/cuda/plan.c), on any machine:
 * arena layout (alignment, no overlap, sizes, double-buffered input/output
 * slots), the split of a batch into pipelined chunks, attention chunking and
 * the padded score leading dimension, fused-kernel eligibility, bf16 rounding
 * and the alignment promised to cuBLASLt. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cuda/plan.h"

static int failed, passed;
#define EXPECT(c, ...) do { if (c) passed++; else { failed++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } } while (0)

struct buf { const char *name; size_t off, size; };

static void check_layout(const struct cuda_shape *s)
{
    struct cuda_plan p;
    EXPECT(cuda_plan_activations(s, &p) == 0, "plan B=%d T=%d", s->B, s->T);
    const size_t e = s->act_bytes, rows = (size_t)s->B * s->T, D = s->D, Hs = s->Hs;
    const size_t prows = (size_t)s->B * s->N, K = (size_t)3 * s->P * s->P;
    const size_t Kp = (size_t)cuda_plan_patch_k(s->P);
    const int ld = cuda_plan_scores_ld(s->T);
    const size_t tt = (size_t)s->T * ld;
    const int slots = s->slots ? s->slots : 1;
    EXPECT(p.slots == slots, "slots %d", p.slots);
    EXPECT(ld >= s->T && ld < s->T + 8 && ld % 8 == 0, "scores ld %d for T %d", ld, s->T);
    struct buf b[] = {
        {"input0", p.input[0], prows * K * 4},
        {"input1", p.input[1], slots > 1 ? prows * K * 4 : 0},
        {"patches", p.patches, prows * Kp * e},
        {"x", p.x, rows * D * 4}, {"xn", p.xn, rows * D * e}, {"qkv", p.qkv, rows * 3 * D * e},
        {"attn", p.attn, rows * D * e}, {"branch", p.branch, rows * D * e},
        {"hidden", p.hidden, rows * (s->swiglu ? 2 * Hs : Hs) * e},
        {"gated", p.gated, s->swiglu ? rows * Hs * e : 0}, {"out0", p.out[0], rows * D * 4},
        {"out1", p.out[1], slots > 1 ? rows * D * 4 : 0},
        {"heads", p.heads, s->unfused ? rows * 3 * D * e : 0},
        {"oh", p.oh, s->unfused ? rows * D * e : 0},
        {"scores", p.scores, s->unfused ? tt * p.attn_chunk * 4 : 0},
        {"probs", p.probs, s->unfused ? tt * p.attn_chunk * e : 0},
        {"gemm_ws", p.gemm_ws, CUDA_PLAN_GEMM_WORKSPACE},
    };
    const int n = sizeof b / sizeof b[0];
    EXPECT(p.input_bytes == prows * K * 4, "input bytes");
    for (int i = 0; i < n; i++) {
        if (!b[i].size) continue;
        EXPECT(b[i].off % CUDA_PLAN_ALIGN == 0, "%s aligned", b[i].name);
        EXPECT(b[i].off + b[i].size <= p.total, "%s inside the arena", b[i].name);
        for (int j = 0; j < i; j++)
            if (b[j].size)
                EXPECT(b[i].off >= b[j].off + b[j].size || b[j].off >= b[i].off + b[i].size,
                       "%s and %s do not overlap", b[i].name, b[j].name);
    }
    if (s->unfused) {
        EXPECT(p.attn_chunk >= 1 && p.attn_chunk <= s->B * s->heads, "chunk %d in range", p.attn_chunk);
        const size_t budget = s->scores_budget ? s->scores_budget : CUDA_PLAN_SCORES_BUDGET;
        EXPECT(p.attn_chunk == 1 || tt * p.attn_chunk * (4 + e) <= budget, "chunk within budget");
        EXPECT(p.attn_chunk == s->B * s->heads || tt * (p.attn_chunk + 1) * (4 + e) > budget,
               "chunk as large as the budget allows");
    } else {
        EXPECT(p.attn_chunk == 0, "no chunk without the unfused path");
    }
}

int main(void)
{
    /* ViT-S 224 bf16 fused; ViT-L 518 batch 64 unfused (chunked); tiny MLP fp32 with
     * registers; pipelined (two slots) chunks of ViT-B at 224 and ViT-L at 518. */
    const struct cuda_shape shapes[] = {
        {8, 257, 256, 384, 1024, 6, 14, true, 2, false, 0, 0},
        {64, 1370, 1369, 1024, 2736, 16, 14, true, 2, true, 0, 1},
        {3, 21, 16, 128, 512, 4, 14, false, 4, true, 0, 1},
        {2, 1370, 1369, 768, 2048, 12, 14, true, 4, true, (size_t)64 << 20, 1},
        {1, 16385, 16384, 1536, 4096, 24, 14, true, 2, true, 0, 0},
        {64, 257, 256, 768, 2048, 12, 14, true, 2, false, 0, 2},
        {12, 1370, 1369, 1024, 2736, 16, 14, true, 2, true, 0, 2},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) check_layout(&shapes[i]);

    struct cuda_plan p;
    struct cuda_shape bad = shapes[0];
    bad.act_bytes = 3;
    EXPECT(cuda_plan_activations(&bad, &p) == -1, "act_bytes 3 refused");
    bad = shapes[0];
    bad.heads = 5;
    EXPECT(cuda_plan_activations(&bad, &p) == -1, "D %% heads refused");
    bad = shapes[0];
    bad.slots = 3;
    EXPECT(cuda_plan_activations(&bad, &p) == -1, "3 slots refused");
    bad = shapes[0];
    bad.B = 1 << 30;
    bad.heads = 4;
    bad.unfused = true;
    EXPECT(cuda_plan_activations(&bad, &p) == -1, "B * heads overflowing int refused");
    bad = shapes[0];
    bad.B = 1 << 30;
    bad.T = 1 << 30;
    EXPECT(cuda_plan_activations(&bad, &p) == -1, "overflowing sizes refused");

    /* Two slots: a second input and output buffer of the same size, the rest unchanged. */
    struct cuda_plan p1, p2;
    struct cuda_shape two = shapes[5];
    two.slots = 1;
    EXPECT(cuda_plan_activations(&two, &p1) == 0 && cuda_plan_activations(&shapes[5], &p2) == 0,
           "plans");
    EXPECT(p2.total >= p1.total + p1.input_bytes + (size_t)64 * 257 * 768 * 4, "two slots cost "
           "one more input and output buffer (%zu vs %zu)", p2.total, p1.total);
    EXPECT(p1.slots == 1 && p1.input[1] == 0 && p1.out[1] == 0, "one slot leaves slot 1 unused");

    /* Scores leading dimension: T rounded up to 8. */
    EXPECT(cuda_plan_scores_ld(257) == 264 && cuda_plan_scores_ld(1370) == 1376 &&
           cuda_plan_scores_ld(256) == 256 && cuda_plan_scores_ld(1) == 8, "scores ld");
    EXPECT(cuda_plan_scores_ld(0) == 0 && cuda_plan_scores_ld(-3) == 0 &&
           cuda_plan_scores_ld(0x7ffffff8) == 0, "scores ld refuses invalid T");

    /* Pipelined chunks of a forward. */
    EXPECT(cuda_plan_chunk_count(256, 257, 16384) == 4, "ViT-B 224 B=256: 4 chunks (of 64)");
    EXPECT(cuda_plan_chunk_count(8, 257, 16384) == 1, "B=8 at 224: one chunk");
    EXPECT(cuda_plan_chunk_count(64, 257, 16384) == 1, "B=64 at 224: one chunk");
    EXPECT(cuda_plan_chunk_count(65, 257, 16384) == 2, "B=65 at 224: two chunks");
    EXPECT(cuda_plan_chunk_count(256, 1370, 16384) == 8, "B=256 at 518: 8 chunks (of 32)");
    EXPECT(cuda_plan_chunk_count(32, 1370, 16384) == 3, "B=32 at 518: 3 chunks");
    EXPECT(cuda_plan_chunk_count(4096, 257, 16384) == CUDA_PLAN_MAX_CHUNKS, "at most 8 chunks");
    EXPECT(cuda_plan_chunk_count(256, 257, 0) == 1, "min_rows 0: no pipeline");
    EXPECT(cuda_plan_chunk_count(1, 1370, 16384) == 1, "batch 1");
    EXPECT(cuda_plan_chunk_count(0, 257, 16384) == 0 && cuda_plan_chunk_count(4, 0, 16384) == 0,
           "invalid B or T");
    EXPECT(cuda_plan_chunk_max(32, 3) == 11 && cuda_plan_chunk_max(256, 4) == 64 &&
           cuda_plan_chunk_max(5, 1) == 5 && cuda_plan_chunk_max(0, 3) == 0 &&
           cuda_plan_chunk_max(3, 0) == 0, "largest chunk");
    int f0, c0;
    cuda_plan_chunk_range(32, 3, 0, &f0, &c0);
    EXPECT(f0 == 0 && c0 == 10, "32 in 3: first chunk [0, 10), got [%d, +%d)", f0, c0);
    cuda_plan_chunk_range(32, 3, 2, &f0, &c0);
    EXPECT(f0 == 21 && c0 == 11, "32 in 3: last chunk [21, 32), got [%d, +%d)", f0, c0);
    cuda_plan_chunk_range(32, 3, 3, &f0, &c0);
    EXPECT(f0 == 0 && c0 == 0, "chunk index out of range");
    const int Ts[] = {1, 5, 21, 257, 1370, 16385};
    const long long mins[] = {1, 100, 4096, 16384, 1 << 20};
    int sweep_bad = 0;
    for (int B = 1; B <= 300 && !sweep_bad; B++)
        for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0] && !sweep_bad; ti++)
            for (size_t mi = 0; mi < sizeof mins / sizeof mins[0] && !sweep_bad; mi++) {
                const int T = Ts[ti];
                const long long mr = mins[mi];
                const int n = cuda_plan_chunk_count(B, T, mr), mx = cuda_plan_chunk_max(B, n);
                const long long per = (mr + T - 1) / T;
                int next = 0, lo = B, hi = 0;
                for (int j = 0; j < n; j++) {
                    int f, c;
                    cuda_plan_chunk_range(B, n, j, &f, &c);
                    if (f != next || c < 1 || c > mx) sweep_bad = 1;
                    next = f + c;
                    if (c < lo) lo = c;
                    if (c > hi) hi = c;
                }
                if (n < 1 || n > CUDA_PLAN_MAX_CHUNKS || next != B || hi - lo > 1 || hi != mx ||
                    (B <= per) != (n == 1))
                    sweep_bad = 1;
                /* Every chunk keeps about half or more of the images asked for:
                 * want = max(per, ceil(B / 8)), and B / n > want / 2. */
                const long long fl = (B + CUDA_PLAN_MAX_CHUNKS - 1) / CUDA_PLAN_MAX_CHUNKS;
                const long long want = per > fl ? per : fl;
                if (n > 1 && 2LL * lo + 1 < want) sweep_bad = 1;
                if (sweep_bad)
                    EXPECT(0, "chunks B=%d T=%d min_rows=%lld: %d chunks of %d..%d", B, T, mr,
                           n, lo, hi);
            }
    EXPECT(!sweep_bad, "chunk sweep");

    /* Chunking: budget / (T*ld*(4+e)), clamped to [1, pairs]. */
    EXPECT(cuda_plan_attention_chunk(100, 100, 2, 100 * 104 * 6 * 7) == 7, "7 pairs fit");
    EXPECT(cuda_plan_attention_chunk(5, 100, 2, (size_t)1 << 40) == 5, "clamped to pairs");
    EXPECT(cuda_plan_attention_chunk(5, 100, 4, 10) == 1, "at least one pair");

    EXPECT(cuda_plan_fused_supported(64, 2) && cuda_plan_fused_supported(32, 2) &&
           cuda_plan_fused_supported(128, 2), "fused: bf16 head dims 32/64/128");
    EXPECT(!cuda_plan_fused_supported(64, 4) && !cuda_plan_fused_supported(48, 2) &&
           !cuda_plan_fused_supported(80, 2), "no fused kernel for fp32 or other head dims");

    /* bf16: round to nearest even. */
    EXPECT(cuda_f32_to_bf16(1.0f) == 0x3f80, "1.0");
    EXPECT(cuda_f32_to_bf16(-2.0f) == 0xc000, "-2.0");
    EXPECT(cuda_f32_to_bf16(1.0f + 1.0f / 256) == 0x3f80, "tie rounds to even (down)");
    EXPECT(cuda_f32_to_bf16(1.0f + 3.0f / 256) == 0x3f82, "tie rounds to even (up)");
    EXPECT(cuda_f32_to_bf16(1.0f + 1.5f / 256) == 0x3f81, "above the tie rounds up");
    EXPECT(cuda_f32_to_bf16(INFINITY) == 0x7f80, "inf");
    EXPECT(isnan(cuda_bf16_to_f32(cuda_f32_to_bf16(NAN))), "NaN stays NaN");
    EXPECT(cuda_f32_to_bf16(3.4e38f) == 0x7f80, "overflow rounds to inf");
    double worst = 0;
    for (float f = -3.0f; f < 3.0f; f += 0.001f) {
        const float r = cuda_bf16_to_f32(cuda_f32_to_bf16(f));
        const double e = fabs((double)r - f) / (fabs(f) + 1e-30);
        if (e > worst) worst = e;
    }
    EXPECT(worst <= 1.0 / 256, "relative rounding error %.3e <= 2^-8", worst);

    /* Alignment promised to cuBLASLt. */
    size_t st[2] = {256, 512};
    EXPECT(cuda_plan_alignment((void *)0x1000, st, 2) == 256, "256");
    st[0] = 64 * 257 * 2; /* head dim 64, 257 tokens, bf16 */
    EXPECT(cuda_plan_alignment((void *)0x1000, st, 1) == 128, "stride %zu", st[0]);
    st[0] = 6;
    EXPECT(cuda_plan_alignment((void *)0x1000, st, 1) == 2, "stride 6");
    EXPECT(cuda_plan_alignment((void *)0x1008, NULL, 0) == 8, "pointer alignment 8");
    EXPECT(cuda_plan_alignment((void *)0x1002, NULL, 0) == 2, "pointer alignment 2");

    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
