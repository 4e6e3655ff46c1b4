/* The matmul layer's rates on this machine (common/mm.h), against OpenBLAS.
 *
 *   mm_bench [threads] [rounds]          the ViT-S/14 and ViT-B/14 linear layers at
 *                                        224 px (257 tokens), batch 1 and 8
 *   mm_bench --peak [threads] [N]        square N^3 products (default 2048): the
 *                                        "limit" lines that bench_cpu.py reads,
 *                                        "fp32 GFLOP/s: X" and "bf16 GFLOP/s: Y"
 *
 * Per shape: the layer's fp32 and bf16 linear layers (oneDNN matmul on weights
 * laid out once; bf16 where the CPU has AVX-512), oneDNN's sgemm (what
 * training and the index use) and OpenBLAS's cblas_sgemm (the
 * kernel OpenBLAS picks for this CPU, printed). The candidates alternate
 * inside one process for several rounds; medians are printed. */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mm.h"
#include "clock.h"

static unsigned long long rng = 88172645463325252ull;
static float frand(void) /* uniform in [-0.5, 0.5) */
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)((rng >> 40) * (1.0 / (1ull << 24)) - 0.5);
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

enum { C_F32, C_BF16, C_SGEMM, C_BLAS, C_COUNT };
static const char *const names[C_COUNT] = {"fp32", "bf16", "dnnl sgemm", "openblas"};

struct problem {
    size_t M;
    int K, N;
    float *in, *W, *bias, *out;
    mm_bf16 *in16;
    struct mm_weights *w32, *w16;
};

static void run(const struct problem *p, int c)
{
    char err[256];
    switch (c) {
    case C_F32:
        if (mm_linear(p->w32, p->out, MM_F32, p->in, p->bias, p->M, MM_POST_NONE, err, sizeof err))
            fprintf(stderr, "fp32: %s\n", err), exit(1);
        break;
    case C_BF16:
        if (mm_linear(p->w16, p->out, MM_F32, p->in16, p->bias, p->M, MM_POST_NONE, err, sizeof err))
            fprintf(stderr, "bf16: %s\n", err), exit(1);
        break;
    case C_SGEMM:
        mm_sgemm(false, true, p->M, p->N, p->K, 1.0f, p->in, p->K, p->W, p->K, 0.0f, p->out, p->N);
        break;
    default:
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)p->M, p->N, p->K, 1.0f, p->in,
                    p->K, p->W, p->K, 0.0f, p->out, p->N);
    }
}

static int problem_init(struct problem *p, size_t M, int K, int N)
{
    memset(p, 0, sizeof(*p));
    p->M = M, p->K = K, p->N = N;
    p->in = malloc(sizeof(float) * M * K);
    p->W = malloc(sizeof(float) * N * K);
    p->bias = malloc(sizeof(float) * N);
    p->out = malloc(sizeof(float) * M * N);
    p->in16 = malloc(sizeof(mm_bf16) * M * K);
    if (!p->in || !p->W || !p->bias || !p->out || !p->in16) return -1;
    for (size_t i = 0; i < M * K; i++) p->in[i] = frand();
    for (size_t i = 0; i < (size_t)N * K; i++) p->W[i] = frand();
    for (int i = 0; i < N; i++) p->bias[i] = frand();
    mm_to_bf16(p->in16, p->in, M * K);
    char err[256];
    if (mm_weights_create(&p->w32, p->W, K, N, MM_F32, err, sizeof err)) return -1;
    if (mm_bf16_supported() && mm_weights_create(&p->w16, p->W, K, N, MM_BF16, err, sizeof err))
        return -1;
    return 0;
}

static void problem_free(struct problem *p)
{
    mm_weights_free(p->w32);
    mm_weights_free(p->w16);
    free(p->in); free(p->W); free(p->bias); free(p->out); free(p->in16);
}

#define MAX_ROUNDS 64

/* Medians over rounds of each candidate, alternating. */
static void measure(const struct problem *p, int rounds, double *median)
{
    const double flop = 2.0 * p->M * p->K * p->N;
    int iters = (int)(8e9 / flop); /* about 40 ms per measurement at 200 GFLOP/s */
    if (iters < 1) iters = 1;
    double rate[C_COUNT][MAX_ROUNDS];
    for (int c = 0; c < C_COUNT; c++)
        if (c != C_BF16 || p->w16) run(p, c);
    for (int r = 0; r < rounds; r++)
        for (int c = 0; c < C_COUNT; c++) {
            if (c == C_BF16 && !p->w16) {
                rate[c][r] = 0;
                continue;
            }
            const double t0 = clock_now_s();
            for (int i = 0; i < iters; i++) run(p, c);
            rate[c][r] = flop * iters / (clock_now_s() - t0) / 1e9;
        }
    for (int c = 0; c < C_COUNT; c++) {
        qsort(rate[c], rounds, sizeof(double), cmp_double);
        median[c] = rate[c][rounds / 2];
    }
}

struct shape {
    const char *name;
    int K, N;
};

/* ViT-S: D 384, SwiGLU hidden 1024 (fc1 2 x 1024); ViT-B: D 768, hidden 2048. */
static const struct shape shapes[] = {
    {"S patch", 588, 384},  {"S qkv", 384, 1152}, {"S proj", 384, 384},
    {"S fc1", 384, 2048},   {"S fc2", 1024, 384}, {"B patch", 588, 768},
    {"B qkv", 768, 2304},   {"B proj", 768, 768}, {"B fc1", 768, 4096},
    {"B fc2", 2048, 768},
};

int main(int argc, char **argv)
{
    const bool peak = argc > 1 && !strcmp(argv[1], "--peak");
    const int a0 = peak ? 2 : 1;
    const int threads = argc > a0 ? atoi(argv[a0]) : omp_get_max_threads();
    const int arg2 = argc > a0 + 1 ? atoi(argv[a0 + 1]) : 0;
    if (threads < 1 || arg2 < 0) {
        fprintf(stderr, "usage: mm_bench [threads] [rounds] | mm_bench --peak [threads] [N]\n");
        return 2;
    }
    omp_set_num_threads(threads);
    openblas_set_num_threads(threads);
    printf("threads %d, isa %s, OpenBLAS kernel %s\n", threads, mm_isa_name(mm_isa()),
           openblas_get_corename());
    double med[C_COUNT];
    struct problem p;
    if (peak) {
        const int n = arg2 ? arg2 : 2048;
        if (problem_init(&p, (size_t)n, n, n)) return fprintf(stderr, "out of memory\n"), 1;
        measure(&p, 3, med);
        printf("%dx%dx%d: fp32 matmul %.1f, oneDNN sgemm %.1f, OpenBLAS %.1f GFLOP/s\n", n, n,
               n, med[C_F32], med[C_SGEMM], med[C_BLAS]);
        printf("fp32 GFLOP/s: %.1f\n", med[C_F32] > med[C_SGEMM] ? med[C_F32] : med[C_SGEMM]);
        printf("bf16 GFLOP/s: %.1f\n", med[C_BF16]);
        problem_free(&p);
        return 0;
    }
    int rounds = arg2 ? arg2 : 5;
    if (rounds > MAX_ROUNDS) rounds = MAX_ROUNDS;
    printf("GFLOP/s, medians of %d alternating rounds\n", rounds);
    printf("%-8s %5s %5s %5s", "layer", "M", "K", "N");
    for (int c = 0; c < C_COUNT; c++) printf(" %10s", names[c]);
    printf("  kernels\n");
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
        for (int batch = 1; batch <= 8; batch += 7) {
            if (problem_init(&p, (size_t)batch * 257, shapes[s].K, shapes[s].N))
                return fprintf(stderr, "out of memory\n"), 1;
            measure(&p, rounds, med);
            printf("%-8s %5zu %5d %5d", shapes[s].name, p.M, p.K, p.N);
            for (int c = 0; c < C_COUNT; c++) printf(" %10.1f", med[c]);
            printf("  %s | %s\n", mm_weights_kernel(p.w32), p.w16 ? mm_weights_kernel(p.w16) : "-");
            fflush(stdout);
            problem_free(&p);
        }
    return 0;
}
