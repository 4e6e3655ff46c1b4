#include "rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void rng_seed(struct rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

void rng_fork(const struct rng *r, uint64_t stream, struct rng *out)
{
    uint64_t x = r->s[0] ^ (r->s[1] << 1) ^ (r->s[2] << 2) ^ (r->s[3] << 3) ^
                 (stream * 0xd1342543de82ef95ull);
    for (int i = 0; i < 4; i++) out->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t rng_u64(struct rng *r)
{
    uint64_t *s = r->s;
    const uint64_t out = rotl(s[1] * 5, 7) * 9;
    const uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

double rng_uniform(struct rng *r) { return (double)(rng_u64(r) >> 11) * 0x1p-53; }

double rng_range(struct rng *r, double lo, double hi) { return lo + (hi - lo) * rng_uniform(r); }

int64_t rng_int(struct rng *r, int64_t lo, int64_t hi)
{
    const uint64_t span = (uint64_t)(hi - lo) + 1;
    if (span == 0) return (int64_t)rng_u64(r); /* the whole 64-bit range */
    /* Rejection: draw below the largest multiple of span. */
    const uint64_t limit = UINT64_MAX - UINT64_MAX % span;
    uint64_t x;
    do x = rng_u64(r); while (x >= limit);
    return lo + (int64_t)(x % span);
}

double rng_normal(struct rng *r)
{
    double u1;
    do u1 = rng_uniform(r); while (u1 <= 0.0);
    const double u2 = rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

void rng_fill_trunc_normal(struct rng *r, float *p, size_t n, double std)
{
    for (size_t i = 0; i < n; i++) {
        double z;
        do z = rng_normal(r);
        while (z < -2.0 || z > 2.0);
        p[i] = (float)(z * std);
    }
}
