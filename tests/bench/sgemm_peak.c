/* Measures the machine's GEMM rate, as the ceiling for the engine's GFLOP/s:
 * the best of several square GEMMs through the same OpenBLAS the engine links,
 * and through the engine's packed-weight kernel (cpu/gemm_packed.c).
 * usage: sgemm_peak [N] [threads]; prints "packed GFLOP/s: Y" (kernel
 * "avx512", or "cblas" where the CPU lacks it) and, last, "sgemm GFLOP/s: X". */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "cpu/gemm_packed.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    const int n = argc > 1 ? atoi(argv[1]) : 2048;
    if (argc > 2) {
        omp_set_num_threads(atoi(argv[2]));
        openblas_set_num_threads(atoi(argv[2]));
    }
    if (n < 64 || n > 16384) {
        fprintf(stderr, "sgemm_peak: N must be in 64..16384\n");
        return 2;
    }
    float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n),
          *c = malloc(sizeof(float) * n * n);
    if (!a || !b || !c) {
        fprintf(stderr, "sgemm_peak: out of memory\n");
        return 1;
    }
    for (long i = 0; i < (long)n * n; i++) a[i] = b[i] = (float)(i % 7) * 0.1f;
    double best = 0;
    for (int rep = 0; rep < 6; rep++) {
        const double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        const double g = 2.0 * n * n * n / (now() - t0) / 1e9;
        if (rep && g > best) best = g; /* the first run warms caches and threads */
    }
    struct packed_weights pw;
    double packed = 0;
    if (packed_weights_pack(&pw, b, n, n) == 0) {
        for (int rep = 0; rep < 6; rep++) {
            const double t0 = now();
            packed_linear_forward(c, a, &pw, NULL, (size_t)n);
            const double g = 2.0 * n * n * n / (now() - t0) / 1e9;
            if (rep && g > packed) packed = g;
        }
        printf("packed kernel %s\n", packed_linear_kernel(&pw));
        packed_weights_free(&pw);
    }
    printf("sgemm %dx%dx%d, %d threads, OpenBLAS kernel %s\n", n, n, n, omp_get_max_threads(),
           openblas_get_corename());
    printf("packed GFLOP/s: %.1f\n", packed);
    printf("sgemm GFLOP/s: %.1f\n", best);
    free(a);
    free(b);
    free(c);
    return 0;
}
