#include "plan.h"

#include <string.h>

/* a * b, or SIZE_MAX on overflow (which every later check turns into failure). */
static size_t mul(size_t a, size_t b)
{
    if (a && b > SIZE_MAX / a) return SIZE_MAX;
    return a * b;
}

/* Appends a buffer of n bytes at the aligned end of *end; returns its offset. */
static size_t carve(size_t *end, size_t n, int *overflow)
{
    if (n == SIZE_MAX || *end > SIZE_MAX - CUDA_PLAN_ALIGN - n) {
        *overflow = 1;
        return 0;
    }
    if (!n) return 0;
    const size_t off = (*end + CUDA_PLAN_ALIGN - 1) / CUDA_PLAN_ALIGN * CUDA_PLAN_ALIGN;
    *end = off + n;
    return off;
}

int cuda_plan_scores_ld(int T)
{
    if (T <= 0 || T > 0x7ffffff0) return 0;
    return (T + 7) / 8 * 8;
}

int cuda_plan_chunk_count(int B, int T, long long min_rows)
{
    if (B <= 0 || T <= 0) return 0;
    if (min_rows <= 0) return 1;
    const long long per = (min_rows + T - 1) / T;
    const long long floor_b = ((long long)B + CUDA_PLAN_MAX_CHUNKS - 1) / CUDA_PLAN_MAX_CHUNKS;
    const long long want = per > floor_b ? per : floor_b;
    if (want >= B) return 1;
    return (int)((B + want - 1) / want);
}

void cuda_plan_chunk_range(int B, int n, int j, int *first, int *count)
{
    if (B <= 0 || n <= 0 || j < 0 || j >= n) {
        *first = *count = 0;
        return;
    }
    const long long a = (long long)j * B / n, b = (long long)(j + 1) * B / n;
    *first = (int)a;
    *count = (int)(b - a);
}

int cuda_plan_chunk_max(int B, int n)
{
    if (B <= 0 || n <= 0) return 0;
    return (int)(((long long)B + n - 1) / n);
}

int cuda_plan_attention_chunk(int pairs, int T, int act_bytes, size_t budget)
{
    if (pairs <= 0 || T <= 0) return 0;
    const size_t per = mul(mul((size_t)T, (size_t)cuda_plan_scores_ld(T)), 4 + (size_t)act_bytes);
    size_t n = per ? budget / per : (size_t)pairs;
    if (n < 1) n = 1;
    if (n > (size_t)pairs) n = (size_t)pairs;
    return (int)n;
}

int cuda_plan_activations(const struct cuda_shape *s, struct cuda_plan *p)
{
    memset(p, 0, sizeof(*p));
    if (s->B <= 0 || s->T <= 0 || s->N <= 0 || s->N >= s->T || s->D <= 0 || s->Hs <= 0 ||
        s->heads <= 0 || s->D % s->heads || !cuda_plan_patch_k(s->P) ||
        (s->act_bytes != 2 && s->act_bytes != 4) || s->slots < 0 || s->slots > CUDA_PLAN_SLOTS ||
        !cuda_plan_scores_ld(s->T))
        return -1;
    const int slots = s->slots ? s->slots : 1;
    const size_t e = (size_t)s->act_bytes, D = (size_t)s->D, Hs = (size_t)s->Hs;
    const size_t rows = mul((size_t)s->B, (size_t)s->T);
    const size_t prows = mul((size_t)s->B, (size_t)s->N);
    const size_t K = (size_t)3 * s->P * s->P, Kp = (size_t)cuda_plan_patch_k(s->P);
    int of = 0;
    size_t end = 0;
    p->slots = slots;
    p->input_bytes = mul(mul(prows, K), 4);
    for (int i = 0; i < slots; i++) p->input[i] = carve(&end, p->input_bytes, &of);
    p->patches = carve(&end, mul(mul(prows, Kp), e), &of);
    p->x = carve(&end, mul(mul(rows, D), 4), &of);
    p->xn = carve(&end, mul(mul(rows, D), e), &of);
    p->qkv = carve(&end, mul(mul(rows, 3 * D), e), &of);
    p->attn = carve(&end, mul(mul(rows, D), e), &of);
    p->branch = carve(&end, mul(mul(rows, D), e), &of);
    p->hidden = carve(&end, mul(mul(rows, s->swiglu ? 2 * Hs : Hs), e), &of);
    p->gated = s->swiglu ? carve(&end, mul(mul(rows, Hs), e), &of) : 0;
    for (int i = 0; i < slots; i++) p->out[i] = carve(&end, mul(mul(rows, D), 4), &of);
    if (s->unfused) {
        const long long pairs_ll = (long long)s->B * s->heads;
        if (pairs_ll > 0x7fffffffLL) return -1;
        const int pairs = (int)pairs_ll;
        const size_t budget = s->scores_budget ? s->scores_budget : CUDA_PLAN_SCORES_BUDGET;
        p->attn_chunk = cuda_plan_attention_chunk(pairs, s->T, s->act_bytes, budget);
        const size_t tt = mul((size_t)s->T, (size_t)cuda_plan_scores_ld(s->T));
        p->heads = carve(&end, mul(mul(rows, 3 * D), e), &of);
        p->oh = carve(&end, mul(mul(rows, D), e), &of);
        p->scores = carve(&end, mul(mul(tt, (size_t)p->attn_chunk), 4), &of);
        p->probs = carve(&end, mul(mul(tt, (size_t)p->attn_chunk), e), &of);
    }
    p->gemm_ws = carve(&end, CUDA_PLAN_GEMM_WORKSPACE, &of);
    if (of) return -1;
    p->total = (end + CUDA_PLAN_ALIGN - 1) / CUDA_PLAN_ALIGN * CUDA_PLAN_ALIGN;
    return 0;
}

int cuda_plan_patch_k(int P)
{
    if (P <= 0 || P > 16384) return 0;
    return (3 * P * P + 7) / 8 * 8;
}

void cuda_plan_stage_rows(void *dst, const float *src, size_t rows, size_t cols, size_t ld,
                          int elem_bytes)
{
    for (size_t r = 0; r < rows; r++) {
        const float *s = src + r * cols;
        if (elem_bytes == 2) {
            uint16_t *d = (uint16_t *)dst + r * ld;
            for (size_t i = 0; i < cols; i++) d[i] = cuda_f32_to_bf16(s[i]);
            for (size_t i = cols; i < ld; i++) d[i] = 0;
        } else {
            float *d = (float *)dst + r * ld;
            memcpy(d, s, sizeof(float) * cols);
            for (size_t i = cols; i < ld; i++) d[i] = 0.0f;
        }
    }
}

bool cuda_plan_fused_supported(int head_dim, int act_bytes)
{
    return act_bytes == 2 && (head_dim == 32 || head_dim == 64 || head_dim == 128);
}

uint16_t cuda_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float cuda_bf16_to_f32(uint16_t h)
{
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

uint32_t cuda_plan_alignment(const void *ptr, const size_t *strides_bytes, int n)
{
    uintptr_t bits = (uintptr_t)ptr;
    for (int i = 0; i < n; i++) bits |= (uintptr_t)strides_bytes[i];
    uint32_t a = 1;
    while (a < 256 && !(bits & a)) a <<= 1;
    return a;
}
