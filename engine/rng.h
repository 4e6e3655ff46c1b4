/* Deterministic random numbers for random init and training (xoshiro256**, seeded by splitmix64).
 * Every random decision of a run (crops, masks, drop path, init) draws from an
 * explicit struct rng, so a run is reproducible from its seed and a saved state
 * resumes bit-identically. */
#ifndef FRANCA_ENGINE_RNG_H
#define FRANCA_ENGINE_RNG_H

#include <stddef.h>
#include <stdint.h>

struct rng { uint64_t s[4]; };

void rng_seed(struct rng *r, uint64_t seed);
/* An independent stream derived from r's seed material and a stream id
 * (e.g. one per loader thread or per sample), without advancing r. */
void rng_fork(const struct rng *r, uint64_t stream, struct rng *out);
uint64_t rng_u64(struct rng *r);
/* Uniform in [0, 1) with 53 random bits. */
double rng_uniform(struct rng *r);
/* Uniform in [lo, hi). */
double rng_range(struct rng *r, double lo, double hi);
/* Uniform integer in [lo, hi] inclusive (hi >= lo), without modulo bias. */
int64_t rng_int(struct rng *r, int64_t lo, int64_t hi);
/* Standard normal (Box-Muller). */
double rng_normal(struct rng *r);
/* p[0..n) ~ Normal(0, std) truncated to +-2 std by rejection (PyTorch's trunc_normal_ bounds). */
void rng_fill_trunc_normal(struct rng *r, float *p, size_t n, double std);

#endif
