/* Multi-crop augmentation and the loader: determinism from the seed (also
 * across thread counts), shapes and value ranges, RandomResizedCrop bounds and
 * fallback, colour helpers. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/check.h"
#include "augment.h"
#include "dataset.h"
#include "loader.h"

static struct image_rgb8 make_image(int w, int h)
{
    struct image_rgb8 im = {w, h, malloc((size_t)w * h * 3)};
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *p = im.data + ((size_t)y * w + x) * 3;
            p[0] = (uint8_t)(x * 255 / (w - 1));
            p[1] = (uint8_t)(y * 255 / (h - 1));
            p[2] = (uint8_t)((x * y) & 0xff);
        }
    return im;
}

int main(void)
{
    char err[512];
    struct augment_config c;
    augment_config_default(&c, 32, 16, 3);
    CHECK(c.blur_p_global1 == 0.0 && c.blur_p_global2 == 0.9 && c.blur_p_local == 0.5 &&
              c.solarize_p == 0.2, "effective blur/solarize probabilities of docs/model.md section 9");
    struct image_rgb8 im = make_image(50, 40);
    const int B = 2;
    const size_t gsz = 3 * 32 * 32, lsz = 3 * 16 * 16;
    float *g1 = calloc(2 * B * gsz, 4), *l1 = calloc(3 * B * lsz, 4);
    float *g2 = calloc(2 * B * gsz, 4), *l2 = calloc(3 * B * lsz, 4);
    struct rng r1, r2;
    rng_seed(&r1, 7);
    rng_seed(&r2, 7);
    CHECK(augment_sample(&c, &im, &r1, 1, B, g1, l1, err, sizeof err) == 0, "augment: %s", err);
    CHECK(augment_sample(&c, &im, &r2, 1, B, g2, l2, err, sizeof err) == 0, "augment");
    CHECK(!memcmp(g1, g2, 2 * B * gsz * 4) && !memcmp(l1, l2, 3 * B * lsz * 4), "same seed, same crops");
    /* Crop-major placement: sample 1 fills slots 1 and 3 (globals), 1, 3, 5 (locals). */
    int placed = 1;
    for (int k = 0; k < 2 * B; k++) {
        int nz = 0;
        for (size_t i = 0; i < gsz; i++) nz |= g1[k * gsz + i] != 0.0f;
        if (nz != (k % B == 1)) placed = 0;
    }
    for (int k = 0; k < 3 * B; k++) {
        int nz = 0;
        for (size_t i = 0; i < lsz; i++) nz |= l1[k * lsz + i] != 0.0f;
        if (nz != (k % B == 1)) placed = 0;
    }
    CHECK(placed, "crop-major layout");
    /* Values within the normalised range of [0, 1] pixels. */
    int inrange = 1;
    for (int k = 0; k < 2 * B; k++)
        for (int ch = 0; ch < 3; ch++)
            for (size_t i = 0; i < 32 * 32; i++) {
                float v = g1[k * gsz + ch * 32 * 32 + i];
                float lo = (0 - c.mean[ch]) / c.std[ch] - 1e-5f, hi = (1 - c.mean[ch]) / c.std[ch] + 1e-5f;
                if (!(v >= lo && v <= hi)) inrange = 0;
            }
    CHECK(inrange, "normalised values in range");
    rng_seed(&r2, 8);
    augment_sample(&c, &im, &r2, 1, B, g2, l2, err, sizeof err);
    CHECK(memcmp(g1, g2, 2 * B * gsz * 4) != 0, "another seed, other crops");

    /* RandomResizedCrop: inside the image, area in range (up to rounding), fallback. */
    struct rng r;
    rng_seed(&r, 3);
    int inside = 1, area_ok = 1;
    for (int i = 0; i < 2000; i++) {
        int t, l, h, w;
        rrc_params(&r, 50, 40, c.global_scale, c.ratio, &t, &l, &h, &w);
        if (t < 0 || l < 0 || h < 1 || w < 1 || t + h > 40 || l + w > 50) inside = 0;
        double a = (double)h * w / 2000.0;
        if (a < 0.32 * 0.8 || a > 1.0) area_ok = 0;
    }
    CHECK(inside && area_ok, "rrc params inside the image with the scale range");
    int t, l, h, w;
    rrc_params(&r, 1000, 10, c.global_scale, c.ratio, &t, &l, &h, &w);
    CHECK(h == 10 && w == 13 && t == 0 && l == (1000 - 13) / 2, "fallback centre crop %d %d %d %d", t, l, h, w);

    /* Colour helpers. */
    float px[12] = {0.2f, 0.4f, 0.6f, 1, 0, 0, 0, 1, 0, 0.5f, 0.5f, 0.5f}, q[12];
    memcpy(q, px, sizeof px);
    const double ident[4] = {1, 1, 1, 0};
    const int order[4] = {3, 2, 1, 0};
    color_jitter(q, 4, ident, order);
    CHECK(max_abs_diff(q, px, 12) < 1e-6f, "identity jitter");
    const double hue_half[4] = {1, 1, 1, 0.5};
    const int hue_only[4] = {3, 3, 3, 3};
    memcpy(q, px, sizeof px);
    double hq[4] = {1, 1, 1, 1.0 / 3.0};
    const int h1[4] = {3, 0, 0, 0};
    (void)hue_half;
    (void)hue_only;
    color_jitter(q, 4, hq, h1); /* brightness 1 three times after a 1/3 hue turn: red -> green */
    CHECK(fabsf(q[3]) < 1e-5f && fabsf(q[4] - 1) < 1e-5f && fabsf(q[5]) < 1e-5f, "hue turn %g %g %g", q[3], q[4], q[5]);
    memcpy(q, px, sizeof px);
    to_grayscale(q, 4);
    CHECK(q[0] == q[1] && q[1] == q[2] && fabsf(q[0] - (0.2989f * 0.2f + 0.587f * 0.4f + 0.114f * 0.6f)) < 1e-6f, "grayscale");
    float flat[3 * 20 * 20], tmp[3 * 20 * 20];
    for (int i = 0; i < 3 * 400; i++) flat[i] = 0.3f;
    gaussian_blur(flat, 20, 20, 9, 1.5, tmp);
    int flat_ok = 1;
    for (int i = 0; i < 1200; i++) flat_ok &= fabsf(flat[i] - 0.3f) < 1e-6f;
    CHECK(flat_ok, "blur keeps a flat image");

    /* Loader: the batch of a step does not depend on the thread count. */
    struct dataset ds = {0};
    ds.kind = DATASET_IDX;
    ds.n = 7;
    ds.idx.n = 7;
    ds.idx.rows = ds.idx.cols = 28;
    ds.idx.data = malloc(7 * 28 * 28);
    for (int i = 0; i < 7 * 28 * 28; i++) ds.idx.data[i] = (uint8_t)(i * 31 + i / 100);
    struct loader_config lc = {0};
    lc.ds = &ds;
    augment_config_default(&lc.aug, 28, 14, 2);
    mask_params_default(&lc.mask);
    lc.patch_size = 7;
    lc.B = 4;
    lc.seed = 42;
    lc.prefetch = 3;
    struct loader_batch ref[6];
    for (int s = 0; s < 6; s++) {
        CHECK(loader_batch_alloc(&lc, &ref[s]) == 0, "alloc");
        CHECK(loader_make_batch(&lc, s + 2, &ref[s], err, sizeof err) == 0, "make batch: %s", err);
    }
    const size_t gbytes = (size_t)2 * 4 * 3 * 28 * 28 * 4, lbytes = (size_t)2 * 4 * 3 * 14 * 14 * 4;
    for (int th = 1; th <= 3; th += 2) {
        lc.threads = th;
        struct loader *L;
        CHECK(loader_start(&lc, 2, &L, err, sizeof err) == 0, "loader start: %s", err);
        int same = 1;
        for (int s = 0; s < 6; s++) {
            const struct loader_batch *b;
            if (loader_next(L, &b, err, sizeof err) < 0) {
                same = 0;
                break;
            }
            same &= b->step == s + 2 && !memcmp(b->global, ref[s].global, gbytes) &&
                    !memcmp(b->local, ref[s].local, lbytes) &&
                    !memcmp(b->masks, ref[s].masks, 2 * 4 * 16) &&
                    b->cb.B == 4 && b->cb.n_local == 2 && b->cb.global_size == 28 && b->cb.local_size == 14;
        }
        CHECK(same, "loader with %d threads reproduces the batches", th);
        loader_stop(L);
    }
    CHECK(memcmp(ref[0].global, ref[1].global, gbytes) != 0, "steps differ");
    int masked = 0;
    for (int i = 0; i < 2 * 4 * 16; i++) masked += ref[0].masks[i];
    CHECK(masked == ref[0].n_masked && masked > 0, "masks collated (%d)", masked);

    /* Data parallel: the shards of 2 ranks (samples 0-1 and 2-3) hold exactly the
     * rows of the whole batch's crops and masks (crop-major, c*B + b). */
    {
        const size_t gimg = (size_t)3 * 28 * 28, limg = (size_t)3 * 14 * 14, np = 16;
        int shard_ok = 1, nm = 0;
        for (int r = 0; r < 2; r++) {
            struct loader_config sc = lc;
            sc.shard_begin = 2 * r;
            sc.shard_n = 2;
            struct loader_batch sb;
            CHECK(loader_batch_alloc(&sc, &sb) == 0, "alloc shard");
            CHECK(loader_make_batch(&sc, 3, &sb, err, sizeof err) == 0, "make shard: %s", err);
            shard_ok &= sb.cb.B == 2;
            for (int c = 0; c < 2; c++)
                for (int i = 0; i < 2; i++) {
                    const size_t row = (size_t)c * 4 + 2 * r + i, srow = (size_t)c * 2 + i;
                    shard_ok &= !memcmp(sb.global + srow * gimg, ref[1].global + row * gimg,
                                        gimg * sizeof(float)) &&
                                !memcmp(sb.local + srow * limg, ref[1].local + row * limg,
                                        limg * sizeof(float)) &&
                                !memcmp(sb.masks + srow * np, ref[1].masks + row * np, np);
                }
            nm += sb.n_masked;
            loader_batch_free(&sb);
        }
        CHECK(shard_ok && nm == ref[1].n_masked, "2 shards == the whole batch (crops, masks, %d masked)", nm);
        struct loader_config bad = lc;
        bad.shard_begin = 3;
        bad.shard_n = 2;
        struct loader *L;
        CHECK(loader_start(&bad, 0, &L, err, sizeof err) < 0, "a shard past the batch is refused");
    }
    for (int s = 0; s < 6; s++) loader_batch_free(&ref[s]);
    dataset_free(&ds);
    image_free(&im);
    free(g1);
    free(g2);
    free(l1);
    free(l2);
    return check_summary();
}
