/* Fused bf16 attention for CPUs with AVX512-BF16 (and AMX ones, which have it
 * too): per (image, head, block of queries) one task computes the scores, the
 * softmax and the product with V while its tile stays in L1/L2, so no score
 * matrix ever goes to memory (the unfused path writes and rereads B x heads x
 * rows x T floats per block).
 *
 * Layouts for vdpbf16ps, which multiplies pairs of bf16 and adds both
 * products into one float lane:
 *   Kp [hd/2][Tk][2]: Kp[e2][j][t] = K[j][2*e2 + t], Tk = T rounded up to 32,
 *                     zero past T; 16 keys x one pair of dims per vector.
 *   Vp [Tv/2][hd][2]: Vp[j2][e][t] = V[2*j2 + t][e], Tv = T rounded up to 2,
 *                     zero past T; 16 dims x one pair of keys per vector.
 * Scores and probabilities are float32; probabilities are rounded to bf16 for
 * the product with V, as the unfused path does. */
#include "attention_fused.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "exp_approx.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define FUSED_X86 1
#else
#define FUSED_X86 0
#endif

#define ROWS 8        /* query rows per score tile: 8 x 32 keys = 16 accumulators */
#define KEYS 32       /* keys per score tile step */
#define PV_ROWS 4     /* rows per output tile: 4 x up to 4 vectors of 16 dims */
#define TASK_ROWS 32  /* query rows per task */

static size_t round_up(size_t x, size_t m)
{
    return (x + m - 1) / m * m;
}

bool attention_fused_applies(int D, int heads)
{
    const int hd = D / heads;
    return FUSED_X86 && mm_bf16_native() && hd % 16 == 0 && hd <= 256;
}

/* Per-thread tile: scores [ROWS][Tk] floats and probabilities [ROWS][Tv] bf16. */
static size_t tile_bytes(int T)
{
    return round_up(ROWS * round_up((size_t)T, KEYS) * sizeof(float) +
                    ROWS * round_up((size_t)T, 2) * sizeof(mm_bf16), 64);
}

static size_t packed_kv_bytes(int T, int hd)
{
    return round_up(((size_t)hd * round_up((size_t)T, KEYS) + round_up((size_t)T, 2) * hd) *
                    sizeof(mm_bf16), 64);
}

size_t attention_fused_scratch_bytes(int B, int T, int D, int heads, int threads)
{
    return (size_t)B * heads * packed_kv_bytes(T, D / heads) + (size_t)threads * tile_bytes(T);
}

#if FUSED_X86

#define BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

/* K and V of one (image, head) into Kp and Vp. A pair of bf16 moves as one
 * 32-bit word, so Kp is a transpose of 32-bit words. */
static void pack_kv(mm_bf16 *restrict Kp, mm_bf16 *restrict Vp, const mm_bf16 *qkv, int T,
                    int D, int hd, int h)
{
    const size_t ld = 3 * (size_t)D;
    const int Tk = (int)round_up((size_t)T, KEYS), Tv = (int)round_up((size_t)T, 2);
    const int pairs = hd / 2;
    uint32_t row[128];
    for (int j = 0; j < Tk; j++) {
        if (j < T) memcpy(row, qkv + (size_t)j * ld + D + (size_t)h * hd, sizeof(mm_bf16) * hd);
        else memset(row, 0, sizeof(uint32_t) * pairs);
        for (int e2 = 0; e2 < pairs; e2++) memcpy(Kp + ((size_t)e2 * Tk + j) * 2, row + e2, 4);
    }
    for (int j = 0; j < Tv; j += 2) {
        const mm_bf16 *v0 = qkv + (size_t)j * ld + 2 * (size_t)D + (size_t)h * hd;
        const mm_bf16 *v1 = j + 1 < T ? v0 + ld : NULL;
        mm_bf16 *restrict dst = Vp + (size_t)(j / 2) * hd * 2;
        if (v1) {
#pragma omp simd
            for (int e = 0; e < hd; e++) {
                dst[2 * e] = v0[e];
                dst[2 * e + 1] = v1[e];
            }
        } else {
            for (int e = 0; e < hd; e++) {
                dst[2 * e] = v0[e];
                dst[2 * e + 1] = 0;
            }
        }
    }
}

static inline BF16 __m512bh pair_broadcast(const mm_bf16 *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return (__m512bh)_mm512_set1_epi32(v);
}

static inline BF16 __m512bh load_bh(const mm_bf16 *p)
{
    return (__m512bh)_mm512_loadu_si512(p);
}

/* S[r][j] = q_r . k_j for ROWS query rows (q[r] points at each row's head
 * slice) and every key of Kp. */
static BF16 void score_tile(float *restrict S, const mm_bf16 *const q[ROWS],
                            const mm_bf16 *restrict Kp, int Tk, int hd)
{
    for (int j0 = 0; j0 < Tk; j0 += KEYS) {
        __m512 acc[ROWS][2];
        for (int r = 0; r < ROWS; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
        for (int e2 = 0; e2 < hd / 2; e2++) {
            const mm_bf16 *k = Kp + ((size_t)e2 * Tk + j0) * 2;
            const __m512bh k0 = load_bh(k), k1 = load_bh(k + 32);
            for (int r = 0; r < ROWS; r++) {
                const __m512bh a = pair_broadcast(q[r] + 2 * e2);
                acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, k0);
                acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, k1);
            }
        }
        for (int r = 0; r < ROWS; r++) {
            _mm512_storeu_ps(S + (size_t)r * Tk + j0, acc[r][0]);
            _mm512_storeu_ps(S + (size_t)r * Tk + j0 + 16, acc[r][1]);
        }
    }
}

/* Softmax of each score row over its T keys into bf16 probabilities (zero
 * past T) and 1/sum into inv; the normalisation is applied to the output. */
static BF16 void softmax_tile(mm_bf16 *restrict P, float *restrict inv, float *restrict S, int T,
                         int Tk, int Tv, float scale)
{
    for (int r = 0; r < ROWS; r++) {
        float *s = S + (size_t)r * Tk;
        const float sum = softmax_exp_row(s, T, scale);
        mm_bf16 *p = P + (size_t)r * Tv;
        int j = 0;
        for (; j + 16 <= T; j += 16)
            _mm256_storeu_si256((__m256i *)(p + j),
                                (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(s + j)));
        for (; j < T; j++) p[j] = mm_bf16_round(s[j]);
        for (; j < Tv; j++) p[j] = 0;
        inv[r] = 1.0f / sum;
    }
}

/* out rows r0.. of PV_ROWS rows (o[r]: each row's head slice), NV vectors of 16
 * dims from dimension e0: o = (P . V) / sum, rounded to bf16. */
#define PV_TILE(NV)                                                                          \
    static BF16 void pv_tile_##NV(mm_bf16 *const o[PV_ROWS], const mm_bf16 *const p[PV_ROWS], \
                                  const float *inv, const mm_bf16 *restrict Vp, int Tv,      \
                                  int hd, int e0)                                            \
    {                                                                                        \
        __m512 acc[PV_ROWS][NV];                                                             \
        for (int r = 0; r < PV_ROWS; r++)                                                    \
            for (int c = 0; c < NV; c++) acc[r][c] = _mm512_setzero_ps();                    \
        for (int j2 = 0; j2 < Tv / 2; j2++) {                                                \
            const mm_bf16 *v = Vp + ((size_t)j2 * hd + e0) * 2;                              \
            __m512bh vv[NV];                                                                 \
            for (int c = 0; c < NV; c++) vv[c] = load_bh(v + 32 * c);                        \
            for (int r = 0; r < PV_ROWS; r++) {                                              \
                const __m512bh a = pair_broadcast(p[r] + 2 * j2);                            \
                for (int c = 0; c < NV; c++) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], a, vv[c]); \
            }                                                                                \
        }                                                                                    \
        for (int r = 0; r < PV_ROWS; r++) {                                                  \
            if (!o[r]) continue;                                                             \
            const __m512 s = _mm512_set1_ps(inv[r]);                                         \
            for (int c = 0; c < NV; c++)                                                     \
                _mm256_storeu_si256((__m256i *)(o[r] + e0 + 16 * c),                         \
                                    (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(acc[r][c], s))); \
        }                                                                                    \
    }
PV_TILE(1)
PV_TILE(2)
PV_TILE(4)

/* One task: query rows [q0, q1) of image b, head h. */
static BF16 void attend_rows(mm_bf16 *out, const mm_bf16 *qkv, const mm_bf16 *Kp,
                             const mm_bf16 *Vp, void *tile, int T, int D, int hd, int b, int h,
                             int q0, int q1, float scale)
{
    const int Tk = (int)round_up((size_t)T, KEYS), Tv = (int)round_up((size_t)T, 2);
    float *S = tile;
    mm_bf16 *P = (mm_bf16 *)(S + (size_t)ROWS * Tk);
    const size_t ld = 3 * (size_t)D;
    const int chunk = hd % 64 == 0 ? 64 : hd % 32 == 0 ? 32 : 16;
    for (int r0 = q0; r0 < q1; r0 += ROWS) {
        /* A short last group repeats its first row; only real rows are stored. */
        const mm_bf16 *q[ROWS];
        for (int r = 0; r < ROWS; r++) {
            const int row = r0 + r < q1 ? r0 + r : r0;
            q[r] = qkv + ((size_t)b * T + row) * ld + (size_t)h * hd;
        }
        float inv[ROWS];
        score_tile(S, q, Kp, Tk, hd);
        softmax_tile(P, inv, S, T, Tk, Tv, scale);
        for (int g = 0; g < ROWS; g += PV_ROWS) {
            mm_bf16 *o[PV_ROWS];
            const mm_bf16 *p[PV_ROWS];
            for (int r = 0; r < PV_ROWS; r++) {
                const int row = r0 + g + r;
                o[r] = row < q1 ? out + ((size_t)b * T + row) * D + (size_t)h * hd : NULL;
                p[r] = P + (size_t)(g + r) * Tv;
            }
            for (int e0 = 0; e0 < hd; e0 += chunk) {
                if (chunk == 64) pv_tile_4(o, p, inv + g, Vp, Tv, hd, e0);
                else if (chunk == 32) pv_tile_2(o, p, inv + g, Vp, Tv, hd, e0);
                else pv_tile_1(o, p, inv + g, Vp, Tv, hd, e0);
            }
        }
    }
}

void attention_fused_bf16(mm_bf16 *out, const mm_bf16 *qkv, void *scratch, int B, int T, int D,
                          int heads)
{
    const int hd = D / heads;
    const size_t kv = packed_kv_bytes(T, hd);
    const size_t Kp_elems = (size_t)hd * round_up((size_t)T, KEYS);
    char *packed = scratch;
    char *tiles = packed + (size_t)B * heads * kv;
    const float scale = 1.0f / sqrtf((float)hd);
    const int blocks = (T + TASK_ROWS - 1) / TASK_ROWS;
    const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * heads; bh++) {
            mm_bf16 *Kp = (mm_bf16 *)(packed + (size_t)bh * kv);
            pack_kv(Kp, Kp + Kp_elems, qkv + (size_t)(bh / heads) * T * 3 * D, T, D, hd,
                    bh % heads);
        }
        void *tile = tiles + (size_t)omp_get_thread_num() * tile_bytes(T);
#pragma omp for schedule(dynamic, 1)
        for (int t = 0; t < B * heads * blocks; t++) {
            const int bh = t / blocks, blk = t % blocks;
            const mm_bf16 *Kp = (const mm_bf16 *)(packed + (size_t)bh * kv);
            const int q0 = blk * TASK_ROWS, q1 = q0 + TASK_ROWS < T ? q0 + TASK_ROWS : T;
            attend_rows(out, qkv, Kp, Kp + Kp_elems, tile, T, D, hd, bh / heads, bh % heads, q0,
                        q1, scale);
        }
    }
}

#else

void attention_fused_bf16(mm_bf16 *out, const mm_bf16 *qkv, void *scratch, int B, int T, int D,
                          int heads)
{
    (void)out, (void)qkv, (void)scratch, (void)B, (void)T, (void)D, (void)heads;
}

#endif
