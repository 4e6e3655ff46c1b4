#include "mask.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int cyclic_mask(struct rng *r, int gh, int gw, int m, uint8_t *mask)
{
    const int N = gh * gw;
    if (m <= 0) {
        memset(mask, 0, (size_t)N);
        return 0;
    }
    if (m >= N) {
        memset(mask, 1, (size_t)N);
        return N;
    }
    const int c = N - m; /* visible cells, >= 1 */
    double lo = fmax(log(MASK_MIN_ASPECT), log((double)c / ((double)gw * gw)));
    double hi = fmin(log(1.0 / MASK_MIN_ASPECT), log((double)gh * gh / ((double)c + 1e-5)));
    if (lo > hi) lo = hi;
    const double ar = exp(rng_range(r, lo, hi));
    int h = (int)ceil(sqrt(c * ar)), w = (int)ceil(sqrt(c / ar));
    if (h > gh) h = gh;
    if (w > gw) w = gw;
    if (h < 1) h = 1;
    if (w < 1) w = 1;
    /* Guard against rounding leaving the block smaller than c cells. */
    while (h * w < c) {
        if (w < gw) w++;
        else h++;
    }
    const int top = (int)rng_int(r, 0, gh - h), left = (int)rng_int(r, 0, gw - w);
    const int sy = (int)rng_int(r, 0, gh - 1), sx = (int)rng_int(r, 0, gw - 1);
    memset(mask, 1, (size_t)N);
    int kept = 0;
    for (int y = top; y < top + h && kept < c; y++)
        for (int x = left; x < left + w && kept < c; x++, kept++)
            mask[((y + sy) % gh) * gw + (x + sx) % gw] = 0;
    return m;
}

int block_mask(struct rng *r, int gh, int gw, int m, int max_patches, uint8_t *mask)
{
    const int N = gh * gw;
    memset(mask, 0, (size_t)N);
    if (max_patches <= 0) max_patches = N / 2;
    const double min_patches = 4.0;
    const double la = log(MASK_MIN_ASPECT), lb = log(1.0 / MASK_MIN_ASPECT);
    int count = 0;
    while (count < m) {
        int maxp = m - count;
        if (maxp > max_patches) maxp = max_patches;
        int delta = 0;
        for (int attempt = 0; attempt < 10; attempt++) {
            const double area = rng_range(r, min_patches, (double)maxp);
            const double ar = exp(rng_range(r, la, lb));
            const int h = (int)rint(sqrt(area * ar)), w = (int)rint(sqrt(area / ar));
            if (w < gw && h < gh) {
                const int top = (int)rng_int(r, 0, gh - h), left = (int)rng_int(r, 0, gw - w);
                int already = 0;
                for (int y = top; y < top + h; y++)
                    for (int x = left; x < left + w; x++) already += mask[y * gw + x];
                const int fresh = h * w - already;
                if (fresh > 0 && fresh <= maxp) {
                    for (int y = top; y < top + h; y++)
                        for (int x = left; x < left + w; x++)
                            if (!mask[y * gw + x]) {
                                mask[y * gw + x] = 1;
                                delta++;
                            }
                }
            }
            if (delta > 0) break;
        }
        if (delta == 0) break;
        count += delta;
    }
    return count;
}

void mask_params_default(struct mask_params *p)
{
    p->kind = MASK_CYCLIC;
    p->ratio_min = 0.1;
    p->ratio_max = 0.65;
    p->sample_prob = 0.5;
}

int collate_masks(struct rng *r, const struct mask_params *p, int n, int gh, int gw,
                  uint8_t *masks, int *upperbound)
{
    if (n <= 0 || gh <= 0 || gw <= 0 || !(p->ratio_min >= 0.0) || !(p->ratio_max <= 1.0) ||
        p->ratio_min > p->ratio_max || !(p->sample_prob >= 0.0 && p->sample_prob <= 1.0))
        return -1;
    const int N = gh * gw;
    const int n_masked = (int)((double)n * p->sample_prob);
    int *order = malloc((size_t)n * sizeof *order);
    uint8_t *tmp = malloc((size_t)n * N);
    if (!order || !tmp) {
        free(order);
        free(tmp);
        return -1;
    }
    int total = 0, ub = 0;
    for (int i = 0; i < n; i++) {
        uint8_t *dst = tmp + (size_t)i * N;
        if (i < n_masked) {
            const double p0 = p->ratio_min + (p->ratio_max - p->ratio_min) * i / n_masked;
            const double p1 = p->ratio_min + (p->ratio_max - p->ratio_min) * (i + 1) / n_masked;
            const int mi = (int)((double)N * rng_range(r, p0, p1));
            ub += (int)((double)N * p1);
            total += p->kind == MASK_BLOCK ? block_mask(r, gh, gw, mi, 0, dst)
                                           : cyclic_mask(r, gh, gw, mi, dst);
        } else {
            memset(dst, 0, (size_t)N);
        }
    }
    /* random.shuffle: Fisher-Yates from the end. */
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = n - 1; i > 0; i--) {
        const int j = (int)rng_int(r, 0, i);
        const int t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (int i = 0; i < n; i++) memcpy(masks + (size_t)i * N, tmp + (size_t)order[i] * N, (size_t)N);
    free(order);
    free(tmp);
    if (upperbound) *upperbound = ub;
    return total;
}
