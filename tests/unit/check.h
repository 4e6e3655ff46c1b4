/* A minimal test harness: CHECK records a failure with file and line and keeps
 * going; check_summary prints "N passed, M failed" and gives the exit code. */
#ifndef FRANCA_TEST_CHECK_H
#define FRANCA_TEST_CHECK_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static int check_passed, check_failed;

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (cond) {                                                             \
            check_passed++;                                                     \
        } else {                                                                \
            check_failed++;                                                     \
            fprintf(stderr, "%s:%d: FAIL: %s: ", __FILE__, __LINE__, #cond);    \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
        }                                                                       \
    } while (0)

static inline int check_summary(void)
{
    printf("%d passed, %d failed\n", check_passed, check_failed);
    return check_failed ? 1 : 0;
}

static inline float max_abs_diff(const float *a, const float *b, size_t n)
{
    float m = 0.0f;
    for (size_t i = 0; i < n; i++) {
        const float d = fabsf(a[i] - b[i]);
        if (!(d <= m)) m = d; /* NaN propagates as a failure */
    }
    return m;
}

/* Reproducible test data: xorshift floats uniform in [-1, 1). */
static uint64_t check_rng = 88172645463325252ull;

static inline float frand(void)
{
    check_rng ^= check_rng << 13;
    check_rng ^= check_rng >> 7;
    check_rng ^= check_rng << 17;
    return (float)((check_rng >> 40) * (2.0 / (1ull << 24)) - 1.0);
}

/* n such floats, malloc'd (NULL when out of memory). */
static inline float *rand_vec(size_t n)
{
    float *v = malloc(n * sizeof(float));
    for (size_t i = 0; v && i < n; i++) v[i] = frand();
    return v;
}

/* SplitMix64: one step of the generator whose state the caller keeps. */
static inline uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

#endif
