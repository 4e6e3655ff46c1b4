/* packed_linear_forward (engine/cpu/gemm_packed.c) against linear_forward
 * (cblas_sgemm through the OpenBLAS the engine links) on the linear layers of
 * ViT-S/14 and ViT-B/14 at 224 px (257 tokens), batch 1 and 8.
 *
 * The two alternate inside one process for several rounds and the median of
 * each is reported, so that a machine whose speed drifts (other jobs on the
 * cores) still gives a fair ratio.
 * usage: gemm_packed_bench [threads] [rounds]; prints one line per shape. */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "cpu/gemm_packed.h"
#include "cpu/ops.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

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

#define MAX_ROUNDS 64

int main(int argc, char **argv)
{
    const int threads = argc > 1 ? atoi(argv[1]) : omp_get_max_threads();
    int rounds = argc > 2 ? atoi(argv[2]) : 7;
    if (threads < 1 || rounds < 1) {
        fprintf(stderr, "usage: gemm_packed_bench [threads] [rounds]\n");
        return 2;
    }
    if (rounds > MAX_ROUNDS) rounds = MAX_ROUNDS;
    omp_set_num_threads(threads);
    openblas_set_num_threads(threads);
    printf("threads %d, OpenBLAS kernel %s, rounds %d (medians)\n", threads,
           openblas_get_corename(), rounds);
    printf("%-8s %5s %5s %5s  %9s %9s %6s  kernel\n", "layer", "M", "K", "N", "ours GF/s",
           "cblas GF/s", "ratio");
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        for (int batch = 1; batch <= 8; batch += 7) {
            const int K = shapes[s].K, N = shapes[s].N;
            const size_t M = (size_t)batch * 257;
            float *in = malloc(sizeof(float) * M * K), *W = malloc(sizeof(float) * N * K),
                  *bias = malloc(sizeof(float) * N), *out = malloc(sizeof(float) * M * N);
            if (!in || !W || !bias || !out) {
                fprintf(stderr, "out of memory\n");
                return 1;
            }
            for (size_t i = 0; i < M * K; i++) in[i] = frand();
            for (size_t i = 0; i < (size_t)N * K; i++) W[i] = frand();
            for (int i = 0; i < N; i++) bias[i] = frand();
            struct packed_weights pw;
            if (packed_weights_pack(&pw, W, K, N)) {
                fprintf(stderr, "out of memory packing\n");
                return 1;
            }
            const double flop = 2.0 * M * K * N;
            /* About 40 ms per measurement at 200 GFLOP/s. */
            int iters = (int)(8e9 / flop);
            if (iters < 1) iters = 1;
            packed_linear_forward(out, in, &pw, bias, M);
            linear_forward(out, in, W, bias, M, K, N);
            double ours[MAX_ROUNDS], ref[MAX_ROUNDS];
            for (int r = 0; r < rounds; r++) {
                double t0 = now();
                for (int i = 0; i < iters; i++) packed_linear_forward(out, in, &pw, bias, M);
                ours[r] = flop * iters / (now() - t0) / 1e9;
                t0 = now();
                for (int i = 0; i < iters; i++) linear_forward(out, in, W, bias, M, K, N);
                ref[r] = flop * iters / (now() - t0) / 1e9;
            }
            qsort(ours, rounds, sizeof(double), cmp_double);
            qsort(ref, rounds, sizeof(double), cmp_double);
            const double o = ours[rounds / 2], c = ref[rounds / 2];
            printf("%-8s %5zu %5d %5d  %9.1f %9.1f %6.2f  %s\n", shapes[s].name, M, K, N, o, c,
                   o / c, packed_linear_kernel(&pw));
            fflush(stdout);
            packed_weights_free(&pw);
            free(in);
            free(W);
            free(bias);
            free(out);
        }
    }
    return 0;
}
