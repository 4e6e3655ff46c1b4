/* packed_linear_forward against a naive double-precision reference: every
 * combination of awkward M, N and K (tails of the row strips, the 32-column
 * panels and the K blocks), with and without bias, 1 and 2 threads, on the
 * AVX-512 kernel (where the CPU has it) and on the forced cblas fallback. */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cpu/gemm_packed.h"

#define GUARD 37 /* floats past the end of out that must stay untouched */
static const float SENTINEL = 12345.0f;

static const int Ms[] = {1, 2, 7, 13, 257, 300};
static const int Ns[] = {1, 15, 16, 17, 31, 33, 384, 1152};
static const int Ks[] = {1, 3, 17, 147, 384, 1536};
#define COUNT(a) (int)(sizeof(a) / sizeof((a)[0]))

/* ref[M, N] = in . W^T in double (no bias). */
static void reference(double *ref, const float *in, const float *W, int M, int K, int N)
{
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            const float *a = in + (size_t)m * K, *w = W + (size_t)n * K;
            double s = 0.0;
            for (int k = 0; k < K; k++) s += (double)a[k] * w[k];
            ref[(size_t)m * N + n] = s;
        }
}

/* Relative error of out against ref (+ bias), as a fraction of max|ref|. */
static double rel_error(const float *out, const double *ref, const float *bias, int M, int N)
{
    double worst = 0.0, scale = 0.0;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            const double r = ref[(size_t)m * N + n] + (bias ? bias[n] : 0.0);
            const double d = fabs(out[(size_t)m * N + n] - r);
            if (!(d <= worst)) worst = d; /* NaN propagates as a failure */
            if (fabs(r) > scale) scale = fabs(r);
        }
    return scale > 0 ? worst / scale : worst;
}

static void test_shapes(bool have_avx512)
{
    int runs = 0, failures = 0;
    for (int ki = 0; ki < COUNT(Ks); ki++)
        for (int ni = 0; ni < COUNT(Ns); ni++) {
            const int K = Ks[ki], N = Ns[ni];
            float *W = rand_vec((size_t)N * K), *bias = rand_vec(N);
            struct packed_weights pw;
            CHECK(packed_weights_pack(&pw, W, K, N) == 0, "pack K=%d N=%d", K, N);
            CHECK((pw.panels != NULL) == have_avx512, "packed copy iff AVX-512");
            CHECK(packed_weights_bytes(&pw) ==
                      (have_avx512 ? ((size_t)N + 31) / 32 * 32 * K * sizeof(float) : 0),
                  "packed size K=%d N=%d", K, N);
            for (int mi = 0; mi < COUNT(Ms); mi++) {
                const int M = Ms[mi];
                float *in = rand_vec((size_t)M * K);
                float *out = malloc(sizeof(float) * ((size_t)M * N + GUARD));
                double *ref = malloc(sizeof(double) * M * N);
                reference(ref, in, W, M, K, N);
                for (int fallback = 0; fallback < 2; fallback++)
                    for (int threads = 1; threads <= 2; threads++)
                        for (int with_bias = 0; with_bias < 2; with_bias++) {
                            packed_linear_force_fallback(fallback);
                            omp_set_num_threads(threads);
                            for (size_t i = 0; i < (size_t)M * N + GUARD; i++)
                                out[i] = SENTINEL;
                            const float *b = with_bias ? bias : NULL;
                            packed_linear_forward(out, in, &pw, b, M);
                            const double e = rel_error(out, ref, b, M, N);
                            int guard_ok = 1;
                            for (int i = 0; i < GUARD; i++)
                                guard_ok &= out[(size_t)M * N + i] == SENTINEL;
                            runs++;
                            if (!(e <= 1e-5) || !guard_ok) {
                                failures++;
                                CHECK(e <= 1e-5 && guard_ok,
                                      "M=%d K=%d N=%d bias=%d threads=%d %s: rel error %g, "
                                      "guard %s", M, K, N, with_bias, threads,
                                      packed_linear_kernel(&pw), e, guard_ok ? "ok" : "written");
                            }
                        }
                free(in);
                free(out);
                free(ref);
            }
            packed_linear_force_fallback(false);
            packed_weights_free(&pw);
            CHECK(pw.panels == NULL && pw.W == NULL, "free clears");
            free(W);
            free(bias);
        }
    CHECK(failures == 0, "%d of %d runs out of tolerance", failures, runs);
    printf("%d shape runs, %d failed\n", runs, failures);
}

/* The packed layout itself: panel p, row k, lane j is W[p*32 + j, k], zero past N. */
static void test_layout(bool have_avx512)
{
    if (!have_avx512) return;
    const int K = 5, N = 40;
    float *W = rand_vec((size_t)N * K);
    struct packed_weights pw;
    CHECK(packed_weights_pack(&pw, W, K, N) == 0, "pack");
    CHECK(((uintptr_t)pw.panels & 63) == 0, "panels 64-byte aligned");
    int bad = 0;
    for (int p = 0; p < 2; p++)
        for (int k = 0; k < K; k++)
            for (int j = 0; j < 32; j++) {
                const int col = p * 32 + j;
                const float want = col < N ? W[(size_t)col * K + k] : 0.0f;
                bad += pw.panels[((size_t)p * K + k) * 32 + j] != want;
            }
    CHECK(bad == 0, "%d packed values misplaced", bad);
    packed_weights_free(&pw);
    free(W);
}

/* rows == 0 writes nothing; a call inside a parallel region runs on one thread. */
static void test_edges(void)
{
    const int K = 19, N = 45, M = 9;
    float *W = rand_vec((size_t)N * K), *in = rand_vec((size_t)M * K), *bias = rand_vec(N);
    float out[1] = {SENTINEL};
    struct packed_weights pw;
    CHECK(packed_weights_pack(&pw, W, K, N) == 0, "pack");
    packed_linear_forward(out, in, &pw, bias, 0);
    CHECK(out[0] == SENTINEL, "rows == 0 writes nothing");

    double *ref = malloc(sizeof(double) * M * N);
    reference(ref, in, W, M, K, N);
    float *outs = malloc(sizeof(float) * 2 * M * N);
    omp_set_num_threads(2);
#pragma omp parallel num_threads(2)
    packed_linear_forward(outs + (size_t)omp_get_thread_num() * M * N, in, &pw, bias, M);
    CHECK(rel_error(outs, ref, bias, M, N) <= 1e-5 &&
              rel_error(outs + (size_t)M * N, ref, bias, M, N) <= 1e-5,
          "calls from inside a parallel region");
    packed_weights_free(&pw);
    free(W); free(in); free(bias); free(ref); free(outs);
}

int main(void)
{
#if defined(__x86_64__) || defined(__i386__)
    const bool have_avx512 = __builtin_cpu_supports("avx512f");
#else
    const bool have_avx512 = false;
#endif
    printf("AVX-512: %s\n", have_avx512 ? "yes (packed kernel and fallback tested)"
                                        : "no (fallback only)");
    test_layout(have_avx512);
    test_edges();
    test_shapes(have_avx512);
    return check_summary();
}
