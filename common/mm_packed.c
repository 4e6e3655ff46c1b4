#include "mm_packed.h"

#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GEMM_X86 1
#else
#define GEMM_X86 0
#endif

#define NR PACKED_NR
/* Rows per micro-kernel call: MR x 2 zmm accumulators (24) plus the two weight
 * vectors and one broadcast stay within the 32 zmm registers. */
#define MR 12
/* Cache blocking (tuned on Zen 5: 48 KiB L1, 1 MiB L2; speed is flat within a
 * few per cent around these values). K is cut into near-equal blocks of at
 * most KC_MAX, so a panel's slice (KC x NR floats, at most 48 KiB) is reused
 * from L1/L2 by every MR-row strip of a task; K = 384 runs in one block. Rows
 * are cut into near-equal blocks of at most MC_MAX, so that a task's input
 * block (MC x KC floats) stays in L2 while its panels pass. */
#define KC_MAX 384
#define MC_MAX 128
/* Panels per task at most: the task's output tile (MC x GROUP_MAX*NR) and
 * weight slice (KC x GROUP_MAX*NR) stay in L2 beside the input block. */
#define GROUP_MAX 2

static size_t panel_count(int N)
{
    return ((size_t)N + NR - 1) / NR;
}

int packed_weights_pack(struct packed_weights *pw, const float *W, int K, int N)
{
    memset(pw, 0, sizeof(*pw));
    if (K <= 0 || N <= 0) return -1;

    const size_t panels = panel_count(N);
    if ((size_t)K > SIZE_MAX / sizeof(float) / NR / panels) return -1;
    const size_t floats = panels * (size_t)K * NR; /* a multiple of 16: whole 64-byte lines */
    float *P = aligned_alloc(64, floats * sizeof(float));
    if (!P) return -1;
#pragma omp parallel for schedule(static)
    for (size_t p = 0; p < panels; p++) {
        float *dst = P + p * (size_t)K * NR;
        for (int j = 0; j < NR; j++) {
            const size_t col = p * NR + j;
            const float *src = col < (size_t)N ? W + col * (size_t)K : NULL;
            for (int k = 0; k < K; k++) dst[(size_t)k * NR + j] = src ? src[k] : 0.0f;
        }
    }
    pw->K = K;
    pw->N = N;
    pw->panels = P;
    return 0;
}

void packed_weights_free(struct packed_weights *pw)
{
    free(pw->panels);
    memset(pw, 0, sizeof(*pw));
}

size_t packed_weights_bytes(const struct packed_weights *pw)
{
    return pw->panels ? panel_count(pw->N) * (size_t)pw->K * NR * sizeof(float) : 0;
}

#if GEMM_X86

#define AVX512 __attribute__((target("avx512f,avx2,fma")))

/* c[mr, NR] (masked to the panel's valid columns) = a[mr, kc] . b[kc, NR]
 * plus either c itself (later K blocks), the bias, or nothing. mr is a
 * constant at every call site, so the row loops unroll and the accumulators
 * live in registers. */
AVX512 static inline __attribute__((always_inline)) void
micro_kernel(const int mr, size_t kc, const float *restrict a, size_t lda,
             const float *restrict b, float *restrict c, size_t ldc,
             const float *restrict bias, bool accumulate, __mmask16 lo, __mmask16 hi)
{
    __m512 c0[MR], c1[MR];
    /* The output lines are only touched after the K loop; asking for them now
     * hides their miss (a large output is not in cache) behind the FMAs. */
    for (int i = 0; i < mr; i++) {
        _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
        if (hi) _mm_prefetch((const char *)(c + i * ldc + 16), _MM_HINT_T0);
    }
    if (accumulate) {
        for (int i = 0; i < mr; i++) {
            c0[i] = _mm512_maskz_loadu_ps(lo, c + i * ldc);
            c1[i] = _mm512_maskz_loadu_ps(hi, c + i * ldc + 16);
        }
    } else {
        const __m512 b0 = bias ? _mm512_maskz_loadu_ps(lo, bias) : _mm512_setzero_ps();
        const __m512 b1 = bias ? _mm512_maskz_loadu_ps(hi, bias + 16) : _mm512_setzero_ps();
        for (int i = 0; i < mr; i++) {
            c0[i] = b0;
            c1[i] = b1;
        }
    }
    for (size_t k = 0; k < kc; k++) {
        const __m512 w0 = _mm512_load_ps(b + k * NR);
        const __m512 w1 = _mm512_load_ps(b + k * NR + 16);
        for (int i = 0; i < mr; i++) {
            const __m512 x = _mm512_set1_ps(a[i * lda + k]);
            c0[i] = _mm512_fmadd_ps(x, w0, c0[i]);
            c1[i] = _mm512_fmadd_ps(x, w1, c1[i]);
        }
    }
    for (int i = 0; i < mr; i++) {
        _mm512_mask_storeu_ps(c + i * ldc, lo, c0[i]);
        _mm512_mask_storeu_ps(c + i * ldc + 16, hi, c1[i]);
    }
}

#define KERNEL_CASE(n)                                                                     \
    case n:                                                                                \
        micro_kernel(n, kc, a, lda, b, c, ldc, bias, accumulate, lo, hi);                  \
        break;

_Static_assert(MR == 12, "micro_kernel_any lists the row tails 1..MR-1");

AVX512 static void micro_kernel_any(int mr, size_t kc, const float *a, size_t lda,
                                    const float *b, float *c, size_t ldc, const float *bias,
                                    bool accumulate, __mmask16 lo, __mmask16 hi)
{
    switch (mr) {
        KERNEL_CASE(1) KERNEL_CASE(2) KERNEL_CASE(3) KERNEL_CASE(4) KERNEL_CASE(5)
        KERNEL_CASE(6) KERNEL_CASE(7) KERNEL_CASE(8) KERNEL_CASE(9) KERNEL_CASE(10)
        KERNEL_CASE(11)
    default:
        break;
    }
}

/* One task: rows [r0, r1) x panels [p0, p1), all of K. */
AVX512 static void task_avx512(float *out, const float *in, const struct packed_weights *pw,
                               const float *bias, size_t r0, size_t r1, size_t p0, size_t p1)
{
    const size_t K = (size_t)pw->K, N = (size_t)pw->N;
    const size_t kblocks = (K + KC_MAX - 1) / KC_MAX, kstep = (K + kblocks - 1) / kblocks;
    for (size_t k0 = 0; k0 < K; k0 += kstep) {
        const size_t kc = K - k0 < kstep ? K - k0 : kstep;
        for (size_t p = p0; p < p1; p++) {
            const size_t col = p * NR, ncols = N - col < NR ? N - col : NR;
            const __mmask16 lo = ncols >= 16 ? 0xFFFF : (__mmask16)((1u << ncols) - 1);
            const __mmask16 hi = ncols >= 32   ? 0xFFFF
                                 : ncols > 16 ? (__mmask16)((1u << (ncols - 16)) - 1)
                                              : 0;
            const float *b = pw->panels + p * K * NR + k0 * NR;
            const float *pb = bias ? bias + col : NULL;
            size_t r = r0;
            for (; r + MR <= r1; r += MR)
                micro_kernel(MR, kc, in + r * K + k0, K, b, out + r * N + col, N, pb, k0 > 0,
                             lo, hi);
            if (r < r1)
                micro_kernel_any((int)(r1 - r), kc, in + r * K + k0, K, b, out + r * N + col, N,
                                 pb, k0 > 0, lo, hi);
        }
    }
}

#endif /* GEMM_X86 */

void packed_linear_forward(float *out, const float *in, const struct packed_weights *pw,
                           const float *bias, size_t rows)
{
    if (!rows || !pw->panels) return;
#if GEMM_X86
    /* Tasks: row blocks x groups of at most GROUP_MAX panels, at least four
     * per thread, handed out dynamically (another process may hold a core).
     * Consecutive tasks share a row block, which stays in L2. */
    const size_t panels = panel_count(pw->N);
    size_t mblocks = (rows + MC_MAX - 1) / MC_MAX;
    size_t mc = (rows + mblocks - 1) / mblocks;
    mc = (mc + MR - 1) / MR * MR;
    mblocks = (rows + mc - 1) / mc;
    const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
    size_t groups = (4 * (size_t)threads + mblocks - 1) / mblocks;
    const size_t min_groups = (panels + GROUP_MAX - 1) / GROUP_MAX;
    if (groups < min_groups) groups = min_groups;
    if (groups > panels) groups = panels;
    const size_t gp = (panels + groups - 1) / groups;
    groups = (panels + gp - 1) / gp;
    const size_t tasks = mblocks * groups;
#pragma omp parallel for schedule(dynamic, 1) if (tasks > 1 && threads > 1)
    for (size_t t = 0; t < tasks; t++) {
        const size_t mb = t / groups, g = t % groups;
        const size_t r0 = mb * mc, r1 = r0 + mc < rows ? r0 + mc : rows;
        const size_t p0 = g * gp, p1 = p0 + gp < panels ? p0 + gp : panels;
        task_avx512(out, in, pw, bias, r0, r1, p0, p1);
    }
#else
    (void)out, (void)in, (void)bias;
#endif
}
