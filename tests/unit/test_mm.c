/* The CPU matmul layer (common/mm.h) at every ISA this CPU offers: each ISA
 * runs in a child process that caps the layer there first (mm_set_max_isa,
 * as ONEDNN_MAX_CPU_ISA would), so the AVX2 and AVX-512 f32 paths are tested
 * on a bigger CPU too. Checked against double-precision references: linear
 * layers (awkward M, N, K; bias; GELU; fp32 and bf16 in and out; 1 and 2
 * threads; inside a parallel region), the strided batched product, sgemm's
 * four transpose cases, and bf16 rounding. */
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "mm.h"

#define GUARD 37 /* values past the end of out that must stay untouched */
static const float SENTINEL = 12345.0f;
static const mm_bf16 SENTINEL16 = 0x7777;
#define COUNT(a) (int)(sizeof(a) / sizeof((a)[0]))

static const int Ms[] = {1, 7, 13, 257};
static const int Ns[] = {1, 17, 33, 384, 1152};
static const int Ks[] = {3, 17, 147, 384, 1536};

static void round_bf16(float *v, size_t n)
{
    for (size_t i = 0; i < n; i++) v[i] = mm_bf16_value(mm_bf16_round(v[i]));
}

/* ref[M, N] = post(in . W^T + bias) * mul in double (mul may be NULL). */
static void reference(double *ref, const float *in, const float *W, const float *bias, int M,
                      int K, int N, enum mm_post post, const float *mul)
{
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            const float *a = in + (size_t)m * K, *w = W + (size_t)n * K;
            double s = bias ? bias[n] : 0.0;
            for (int k = 0; k < K; k++) s += (double)a[k] * w[k];
            if (post == MM_POST_GELU) s = 0.5 * s * (1.0 + erf(s / sqrt(2.0)));
            if (post == MM_POST_SILU) s = s / (1.0 + exp(-s));
            ref[(size_t)m * N + n] = mul ? s * mul[(size_t)m * N + n] : s;
        }
}

/* Largest |out - ref| as a fraction of max|ref|, or of floor where that is
 * larger (a lone output of a long dot product may cancel to near zero). */
static double rel_error_floor(const float *out, const double *ref, size_t n, double floor)
{
    double worst = 0.0, scale = floor;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs(out[i] - ref[i]);
        if (!(d <= worst)) worst = d; /* NaN propagates as a failure */
        if (fabs(ref[i]) > scale) scale = fabs(ref[i]);
    }
    return scale > 0 ? worst / scale : worst;
}

static double rel_error(const float *out, const double *ref, size_t n)
{
    return rel_error_floor(out, ref, n, 0.0);
}

struct linear_case {
    const struct mm_weights *w;
    const float *in;      /* [M, K], already bf16-exact for bf16 weights */
    const float *bias;
    int M, K, N;
    enum mm_post post;
    const float *mul;     /* [M, N] or NULL; bf16-exact for bf16 outputs */
    bool out_bf16;
};

/* Runs one product; returns its relative error against ref and checks the
 * guard past the output. */
static double run_linear(const struct linear_case *c, const double *ref, bool *guard_ok)
{
    const size_t n = (size_t)c->M * c->N;
    const enum mm_type t = mm_weights_type(c->w);
    float *out = malloc(sizeof(float) * (n + GUARD));
    mm_bf16 *out16 = malloc(sizeof(mm_bf16) * (n + GUARD));
    mm_bf16 *in16 = malloc(sizeof(mm_bf16) * (size_t)c->M * c->K);
    for (size_t i = 0; i < n + GUARD; i++) {
        out[i] = SENTINEL;
        out16[i] = SENTINEL16;
    }
    mm_bf16 *mul16 = malloc(sizeof(mm_bf16) * n);
    mm_to_bf16(in16, c->in, (size_t)c->M * c->K);
    if (c->mul) mm_to_bf16(mul16, c->mul, n);
    char err[256] = "";
    void *dst = c->out_bf16 ? (void *)out16 : out;
    const enum mm_type ot = c->out_bf16 ? MM_BF16 : MM_F32;
    const void *src = t == MM_BF16 ? (const void *)in16 : c->in;
    const int rc = c->mul ? mm_linear_mul(c->w, dst, ot, src, c->bias, c->M,
                                          c->out_bf16 ? (const void *)mul16 : c->mul, err,
                                          sizeof err)
                          : mm_linear(c->w, dst, ot, src, c->bias, c->M, c->post, err,
                                      sizeof err);
    CHECK(rc == 0, "mm_linear: %s", err);
    *guard_ok = true;
    for (int i = 0; i < GUARD; i++)
        *guard_ok &= c->out_bf16 ? out16[n + i] == SENTINEL16 : out[n + i] == SENTINEL;
    if (c->out_bf16) mm_from_bf16(out, out16, n);
    /* Inputs are uniform in [-1, 1): a dot product of K terms is about
     * sqrt(K)/3 in size. */
    const double e = rel_error_floor(out, ref, n, sqrt((double)c->K) / 3);
    free(out);
    free(out16);
    free(in16);
    free(mul16);
    return e;
}

/* Every shape in fp32 (and bf16 where the ISA has it), with and without bias. */
static void test_linear(enum mm_type t)
{
    int runs = 0, failures = 0;
    for (int ki = 0; ki < COUNT(Ks); ki++)
        for (int ni = 0; ni < COUNT(Ns); ni++) {
            const int K = Ks[ki], N = Ns[ni];
            float *W = rand_vec((size_t)N * K), *bias = rand_vec(N);
            if (t == MM_BF16) round_bf16(W, (size_t)N * K);
            struct mm_weights *w;
            char err[256] = "";
            CHECK(mm_weights_create(&w, W, K, N, t, err, sizeof err) == 0, "weights: %s", err);
            for (int mi = 0; mi < COUNT(Ms); mi++) {
                const int M = Ms[mi];
                float *in = rand_vec((size_t)M * K), *mul = rand_vec((size_t)M * N);
                if (t == MM_BF16) {
                    round_bf16(in, (size_t)M * K);
                    round_bf16(mul, (size_t)M * N);
                }
                double *ref = malloc(sizeof(double) * M * N);
                for (int variant = 0; variant < 6; variant++) {
                    /* 0 bias; 1 no bias, 2 threads; 2 GELU; 3 bf16 output (bf16 only);
                     * 4 SiLU, bf16 output in bf16; 5 times mul, bf16 output in bf16. */
                    if (variant == 3 && t != MM_BF16) continue;
                    const enum mm_post post = variant == 2   ? MM_POST_GELU
                                              : variant == 4 ? MM_POST_SILU
                                                             : MM_POST_NONE;
                    const struct linear_case c = {w, in, variant == 1 ? NULL : bias, M, K, N,
                                                  post, variant == 5 ? mul : NULL,
                                                  variant >= 3 && t == MM_BF16};
                    reference(ref, in, W, c.bias, M, K, N, post, c.mul);
                    omp_set_num_threads(variant == 1 ? 2 : 1);
                    bool guard_ok;
                    const double e = run_linear(&c, ref, &guard_ok);
                    /* fp32 accumulation of exact products; a bf16 output adds
                     * its own rounding (2^-9 relative). */
                    const double tol = c.out_bf16 ? 4e-3 : 2e-5;
                    runs++;
                    if (!(e <= tol) || !guard_ok) {
                        failures++;
                        CHECK(e <= tol && guard_ok, "M=%d K=%d N=%d variant %d %s: rel error %g, "
                              "guard %s", M, K, N, variant, mm_weights_kernel(w), e,
                              guard_ok ? "ok" : "written");
                    }
                }
                free(in);
                free(mul);
                free(ref);
            }
            mm_weights_free(w);
            free(W);
            free(bias);
        }
    CHECK(failures == 0, "%d of %d runs out of tolerance", failures, runs);
    printf("  %s linear: %d runs, %d failed\n", t == MM_BF16 ? "bf16" : "fp32", runs, failures);
}

/* rows == 0 writes nothing; calls inside a parallel region run on their thread. */
static void test_edges(enum mm_type t)
{
    const int K = 19, N = 45, M = 9;
    float *W = rand_vec((size_t)N * K), *in = rand_vec((size_t)M * K), *bias = rand_vec(N);
    if (t == MM_BF16) {
        round_bf16(W, (size_t)N * K);
        round_bf16(in, (size_t)M * K);
    }
    mm_bf16 in16[M * K];
    mm_to_bf16(in16, in, (size_t)M * K);
    const void *src = t == MM_BF16 ? (const void *)in16 : in;
    struct mm_weights *w;
    char err[256] = "";
    CHECK(mm_weights_create(&w, W, K, N, t, err, sizeof err) == 0, "weights: %s", err);
    float out[1] = {SENTINEL};
    CHECK(mm_linear(w, out, MM_F32, src, bias, 0, MM_POST_NONE, err, sizeof err) == 0 &&
              out[0] == SENTINEL, "rows == 0 writes nothing");

    double *ref = malloc(sizeof(double) * M * N);
    reference(ref, in, W, bias, M, K, N, MM_POST_NONE, NULL);
    float *outs = malloc(sizeof(float) * 2 * M * N);
    int fails = 0;
    omp_set_num_threads(2);
#pragma omp parallel num_threads(2) reduction(+ : fails)
    fails += mm_linear(w, outs + (size_t)omp_get_thread_num() * M * N, MM_F32, src, bias, M,
                       MM_POST_NONE, NULL, 0) != 0;
    CHECK(fails == 0 && rel_error(outs, ref, (size_t)M * N) <= 2e-5 &&
              rel_error(outs + (size_t)M * N, ref, (size_t)M * N) <= 2e-5,
          "calls from inside a parallel region");
    if (t == MM_F32)
        CHECK(mm_linear(w, outs, MM_BF16, src, bias, M, MM_POST_NONE, err, sizeof err) == -1,
              "bf16 output from fp32 weights is refused");
    mm_weights_free(w);
    free(W); free(in); free(bias); free(ref); free(outs);
}

/* C = alpha op(A) op(B) + beta C with leading dimensions wider than the rows,
 * by mm_sgemm (gemm < 0) or by mm_gemm in type gemm (alpha 1, beta 0 or 1). */
static void test_sgemm(int gemm)
{
    const int M = 37, N = 29, K = 53, pad = 3;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int beta = 0; beta < 2; beta++) {
            const int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
            float *A = rand_vec((size_t)(ta ? K : M) * lda);
            float *B = rand_vec((size_t)(tb ? N : K) * ldb);
            float *C = rand_vec((size_t)M * ldc);
            const size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb;
            if (gemm == MM_BF16) {
                round_bf16(A, na);
                round_bf16(B, nb);
            }
            const float alpha = gemm < 0 ? 0.5f : 1.0f, fbeta = gemm < 0 ? 2.0f : (float)beta;
            double worst = 0;
            double *want = malloc(sizeof(double) * M * N);
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    double s = 0;
                    for (int k = 0; k < K; k++)
                        s += (double)(ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]) *
                             (tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j]);
                    want[i * N + j] = alpha * s + fbeta * C[(size_t)i * ldc + j];
                }
            const float pad_before = C[N];
            if (gemm < 0) {
                mm_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, fbeta, C, ldc);
            } else {
                mm_bf16 *A16 = malloc(sizeof(mm_bf16) * na), *B16 = malloc(sizeof(mm_bf16) * nb);
                mm_to_bf16(A16, A, na);
                mm_to_bf16(B16, B, nb);
                char err[256] = "";
                const bool bf = gemm == MM_BF16;
                CHECK(mm_gemm((enum mm_type)gemm, ta, tb, M, N, K, bf ? (void *)A16 : A, lda,
                              bf ? (void *)B16 : B, ldb, fbeta, C, ldc, err, sizeof err) == 0,
                      "mm_gemm: %s", err);
                free(A16);
                free(B16);
            }
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++)
                    worst = fmax(worst, fabs(C[(size_t)i * ldc + j] - want[i * N + j]));
            CHECK(worst < 1e-4, "gemm %d ta=%d tb=%d beta=%d: max error %g", gemm, ta, tb, beta,
                  worst);
            CHECK(C[N] == pad_before, "gemm %d ta=%d tb=%d wrote past N", gemm, ta, tb);
            free(A); free(B); free(C); free(want);
        }
}

/* c[i,j] = a[i,j] . b[i,j] where b is a transposed view inside a wider row. */
static void test_batched(enum mm_type t)
{
    enum { D0 = 2, D1 = 3, M = 5, K = 7, N = 4, LD = 40 };
    float *a = rand_vec(D0 * D1 * M * K), *rows = rand_vec(D0 * N * LD);
    if (t == MM_BF16) {
        round_bf16(a, D0 * D1 * M * K);
        round_bf16(rows, D0 * N * LD);
    }
    mm_bf16 a16[D0 * D1 * M * K], rows16[D0 * N * LD];
    mm_to_bf16(a16, a, D0 * D1 * M * K);
    mm_to_bf16(rows16, rows, D0 * N * LD);
    float c[D0 * D1 * M * N];
    /* b[i, j, k, n] = rows[i, n, j*K + k]: a K x N view with strides (1, LD). */
    const struct mm_view av = {t == MM_BF16 ? (void *)a16 : a, t, {D0, D1, M, K},
                               {D1 * M * K, M * K, K, 1}};
    const struct mm_view bv = {t == MM_BF16 ? (void *)rows16 : rows, t, {D0, D1, K, N},
                               {N * LD, K, 1, LD}};
    const struct mm_view cv = {c, MM_F32, {D0, D1, M, N}, {D1 * M * N, M * N, N, 1}};
    char err[256] = "";
    CHECK(mm_batched(&cv, &av, &bv, err, sizeof err) == 0, "mm_batched: %s", err);
    double worst = 0;
    for (int i = 0; i < D0; i++)
        for (int j = 0; j < D1; j++)
            for (int m = 0; m < M; m++)
                for (int n = 0; n < N; n++) {
                    double s = 0;
                    for (int k = 0; k < K; k++)
                        s += (double)a[((i * D1 + j) * M + m) * K + k] *
                             rows[(i * N + n) * LD + j * K + k];
                    worst = fmax(worst, fabs(s - c[((i * D1 + j) * M + m) * N + n]));
                }
    CHECK(worst < 1e-5, "mm_batched %s: max error %g", t == MM_BF16 ? "bf16" : "fp32", worst);
    free(a);
    free(rows);
}

static void test_bf16_rounding(void)
{
    /* 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to even (1). */
    CHECK(mm_bf16_round(1.0f + 0x1p-8f) == 0x3f80, "tie to even, down");
    CHECK(mm_bf16_round(1.0f + 3 * 0x1p-8f) == 0x3f82, "tie to even, up");
    CHECK(mm_bf16_round(1.0f + 0x1p-8f + 0x1p-20f) == 0x3f81, "above the tie rounds up");
    CHECK(mm_bf16_round(INFINITY) == 0x7f80 && mm_bf16_round(-INFINITY) == 0xff80, "infinities");
    CHECK(isnan(mm_bf16_value(mm_bf16_round(NAN))), "NaN stays NaN");
    CHECK(mm_bf16_round(3.3895314e38f) == 0x7f7f, "largest finite bf16 stays finite");
    float v[3] = {-2.5f, 0.0f, 1e-3f}, back[3];
    mm_bf16 h[3];
    mm_to_bf16(h, v, 3);
    mm_from_bf16(back, h, 3);
    CHECK(back[0] == -2.5f && back[1] == 0.0f && fabsf(back[2] - 1e-3f) < 1e-5f, "round trip");
}

/* Everything at one ISA cap; runs in its own process. */
static int run_at(enum mm_isa cap)
{
    if (mm_set_max_isa(cap)) {
        printf("isa %s: cannot cap oneDNN there\n", mm_isa_name(cap));
        return 1;
    }
    if (mm_isa() != cap) {
        printf("isa %s: not on this CPU (it computes with %s)\n", mm_isa_name(cap),
               mm_isa_name(mm_isa()));
        return 0;
    }
    printf("isa %s\n", mm_isa_name(cap));
    CHECK(mm_bf16_native() == (cap >= MM_ISA_AVX512_BF16), "bf16 native iff AVX512-BF16 or AMX");
    test_sgemm(-1);
    test_sgemm(MM_F32);
    test_linear(MM_F32);
    test_edges(MM_F32);
    test_batched(MM_F32);
    if (mm_bf16_supported()) {
        test_sgemm(MM_BF16);
        test_linear(MM_BF16);
        test_edges(MM_BF16);
        test_batched(MM_BF16);
    } else {
        struct mm_weights *w;
        const float W[4] = {1, 2, 3, 4};
        char err[256] = "";
        CHECK(mm_weights_create(&w, W, 2, 2, MM_BF16, err, sizeof err) == -1 &&
                  strstr(err, "AVX-512"),
              "bf16 weights refused below AVX-512: '%s'", err);
    }
    return check_summary();
}

int main(void)
{
    /* No OpenMP or oneDNN in this process before the forks: a child of a
     * process whose OpenMP threads already ran may hang. */
    test_bf16_rounding();
    const enum mm_isa caps[] = {MM_ISA_AVX2, MM_ISA_AVX512, MM_ISA_AVX512_BF16, MM_ISA_AMX};
    for (int i = 0; i < COUNT(caps); i++) {
        fflush(stdout);
        const pid_t pid = fork();
        if (pid == 0) {
            const int rc = run_at(caps[i]);
            fflush(stdout);
            _exit(rc);
        }
        int status = 0;
        CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
                  WEXITSTATUS(status) == 0,
              "isa %s: child failed (status %d)", mm_isa_name(caps[i]), status);
    }
    return check_summary();
}
