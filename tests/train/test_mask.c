/* CyclicMask and block masking (docs/model.md §10): exact counts, the visible region is
 * one wrapped rectangle of exactly c cells (a row-major prefix of it), roughly
 * uniform coverage over positions, reproducibility, and the collate rule. */
#include <stdlib.h>
#include <string.h>

#include "../unit/check.h"
#include "mask.h"
#include "rng.h"

static int count(const uint8_t *m, int n)
{
    int c = 0;
    for (int i = 0; i < n; i++) c += m[i];
    return c;
}

/* Whether the visible cells (0) form, for some cyclic shift, the first c cells
 * in row-major order of an h x w rectangle inside the grid. */
static int visible_is_wrapped_block(const uint8_t *m, int H, int W)
{
    const int N = H * W;
    int c = N - count(m, N);
    if (c == 0 || c == N) return 1;
    uint8_t *u = malloc((size_t)N);
    int ok = 0;
    for (int sy = 0; sy < H && !ok; sy++)
        for (int sx = 0; sx < W && !ok; sx++) {
            /* unroll: u[y][x] = visible at ((y + sy) % H, (x + sx) % W) */
            int y0 = H, y1 = -1, x0 = W, x1 = -1;
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    u[y * W + x] = !m[((y + sy) % H) * W + (x + sx) % W];
                    if (u[y * W + x]) {
                        if (y < y0) y0 = y;
                        if (y > y1) y1 = y;
                        if (x < x0) x0 = x;
                        if (x > x1) x1 = x;
                    }
                }
            if (y0 != 0 || x0 != 0) continue; /* canonical: block at the origin */
            const int w = x1 - x0 + 1;
            int k = 0, good = 1;
            for (int y = y0; y <= y1 && good; y++)
                for (int x = x0; x <= x1 && good; x++, k++)
                    if (u[y * W + x] != (k < c)) good = 0;
            if (good && (y1 - y0) * w < c) ok = 1;
        }
    free(u);
    return ok;
}

int main(void)
{
    struct rng r;
    rng_seed(&r, 1234);
    const int H = 8, W = 8, N = H * W;
    uint8_t m[256];
    int exact = 1, block = 1;
    for (int rep = 0; rep < 40; rep++)
        for (int want = 0; want <= N + 3; want++) {
            int got = cyclic_mask(&r, H, W, want, m);
            int e = want > N ? N : want;
            if (got != e || count(m, N) != e) exact = 0;
            if (!visible_is_wrapped_block(m, H, W)) block = 0;
        }
    CHECK(exact, "cyclic mask: exactly m masked patches for every m");
    CHECK(block, "cyclic mask: the visible cells are one wrapped rectangle (row-major prefix)");

    /* Non-square grid and large grid. */
    int ok = 1;
    for (int rep = 0; rep < 200; rep++) {
        int want = (int)rng_int(&r, 0, 16 * 16);
        if (cyclic_mask(&r, 16, 16, want, m) != want || count(m, 256) != want) ok = 0;
        if (rep < 40 && !visible_is_wrapped_block(m, 16, 16)) ok = 0;
        int w2 = (int)rng_int(&r, 0, 12 * 5);
        if (count((cyclic_mask(&r, 5, 12, w2, m), m), 60) != w2) ok = 0;
    }
    CHECK(ok, "cyclic mask on 16x16 and 5x12 grids");

    /* Roughly uniform over positions: every cell masked with frequency ~ m/N. */
    static int hits[256];
    const int draws = 20000, want = 24;
    for (int i = 0; i < draws; i++) {
        cyclic_mask(&r, H, W, want, m);
        for (int k = 0; k < N; k++) hits[k] += m[k];
    }
    double lo = 1e9, hi = 0;
    for (int k = 0; k < N; k++) {
        double f = (double)hits[k] / draws;
        if (f < lo) lo = f;
        if (f > hi) hi = f;
    }
    const double p = (double)want / N;
    CHECK(lo > p - 0.03 && hi < p + 0.03, "uniform coverage: %g..%g around %g", lo, hi, p);

    /* Reproducible from a seed. */
    struct rng a, b;
    rng_seed(&a, 99);
    rng_seed(&b, 99);
    uint8_t ma[64 * 4], mb[64 * 4];
    struct mask_params mp;
    mask_params_default(&mp);
    int ta = collate_masks(&a, &mp, 4, H, W, ma, NULL), tb = collate_masks(&b, &mp, 4, H, W, mb, NULL);
    CHECK(ta == tb && !memcmp(ma, mb, sizeof ma), "collate is reproducible");

    /* Collate: half the images masked, counts in the stratified ranges. */
    const int n = 16, G = 16, NG = G * G;
    uint8_t *cm = malloc((size_t)n * NG);
    int ub = 0, masked_imgs = 0, all_ok = 1;
    for (int rep = 0; rep < 20; rep++) {
        int total = collate_masks(&r, &mp, n, G, G, cm, &ub);
        int sum = 0, mi = 0;
        for (int i = 0; i < n; i++) {
            int c = count(cm + (size_t)i * NG, NG);
            sum += c;
            if (c) mi++;
            if (c && (c < (int)(NG * 0.1) || c > (int)(NG * 0.65))) all_ok = 0;
        }
        if (sum != total || mi > n / 2 || total > ub) all_ok = 0;
        masked_imgs += mi;
    }
    CHECK(all_ok, "collate: totals, ranges and upperbound");
    CHECK(masked_imgs >= 20 * (n / 2 - 1), "collate: int(n*0.5) images masked (%d)", masked_imgs);
    int ub_expect = 0;
    for (int i = 0; i < n / 2; i++) ub_expect += (int)(NG * (0.1 + 0.55 * (i + 1) / (n / 2)));
    CHECK(ub == ub_expect, "upperbound %d vs %d", ub, ub_expect);
    /* The masked images are shuffled: not always the first half. */
    int first_half_only = 1;
    for (int rep = 0; rep < 10; rep++) {
        collate_masks(&r, &mp, n, G, G, cm, NULL);
        for (int i = n / 2; i < n; i++)
            if (count(cm + (size_t)i * NG, NG)) first_half_only = 0;
    }
    CHECK(!first_half_only, "collate shuffles the masks");

    /* Block masking (ablation): never more than asked, usually close. */
    int bm_ok = 1;
    double frac = 0;
    for (int rep = 0; rep < 200; rep++) {
        int want2 = (int)rng_int(&r, 0, NG * 6 / 10);
        int got = block_mask(&r, G, G, want2, 0, m);
        if (got != count(m, NG) || got > want2) bm_ok = 0;
        frac += want2 ? (double)got / want2 : 1.0;
    }
    CHECK(bm_ok, "block mask: count matches and never exceeds the request");
    CHECK(frac / 200 > 0.8, "block mask: close to the request on average (%g)", frac / 200);
    mp.kind = MASK_BLOCK;
    CHECK(collate_masks(&r, &mp, n, G, G, cm, NULL) >= 0, "collate with block masks");
    mp.ratio_min = 0.9;
    mp.ratio_max = 0.1;
    CHECK(collate_masks(&r, &mp, n, G, G, cm, NULL) == -1, "bad ratios rejected");
    free(cm);
    return check_summary();
}
