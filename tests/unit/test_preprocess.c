/* Unit tests for engine/preprocess.c: the Pillow-compatible bicubic resize,
 * torchvision's resize/crop geometry and the normalisation. */
#include "check.h"
#include "preprocess.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>


static const float MEAN[3] = {0.485f, 0.456f, 0.406f};
static const float STD[3] = {0.229f, 0.224f, 0.225f};

static struct image_rgb8 make_image(int w, int h)
{
    struct image_rgb8 im = {w, h, malloc((size_t)w * h * 3)};
    return im;
}

static uint32_t rng_state = 2463534242u;
static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

static float norm_value(int v, int c)
{
    float x = (float)v / 255.0f;
    return (x - MEAN[c]) / STD[c];
}

/* Golden values from Pillow 9.4: Image.fromarray(src).resize((w, h), Image.BICUBIC)
 * for a 7x5 RGB image (numpy RandomState(3).randint(0, 256, (5, 7, 3))). */
static const uint8_t GOLD_SRC[5 * 7 * 3] = {
    106, 152, 249, 131, 184, 200, 0,   21,  253, 147, 202, 107, 249, 169, 138, 149, 119, 166,
    224, 148, 172, 93,  167, 142, 248, 26,  81,  218, 150, 66,  2,   191, 60,  129, 179, 90,
    69,  104, 110, 97,  157, 106, 152, 251, 62,  7,   248, 171, 33,  123, 79,  176, 37,  20,
    94,  49,  149, 127, 206, 244, 28,  119, 54,  0,   192, 233, 18,  116, 191, 165, 184, 184,
    199, 165, 253, 174, 33,  113, 1,   85,  117, 119, 202, 235, 124, 228, 99,  219, 144, 255,
    80,  160, 144, 242, 18,  75,  183, 96,  223, 141, 165, 158, 48,  189, 33};
static const uint8_t GOLD_3x2[2 * 3 * 3] = {121, 144, 149, 115, 137, 104, 126, 140, 138,
                                            87,  184, 169, 162, 97,  147, 89,  137, 145};
static const uint8_t GOLD_7x2[2 * 7 * 3] = {
    108, 181, 164, 144, 133, 142, 101, 99,  135, 92,  163, 72,  162, 143,
    117, 106, 131, 160, 127, 145, 123, 79,  219, 142, 88,  153, 205, 111,
    165, 139, 204, 83,  134, 154, 59,  158, 77,  141, 160, 69,  178, 120};
static const uint8_t GOLD_2x5[5 * 2 * 3] = {96,  136, 207, 186, 147, 152, 161, 125, 87,  87,
                                            154, 92,  80,  170, 96,  99,  108, 132, 92,  154,
                                            205, 118, 114, 167, 166, 142, 162, 145, 125, 133};
static const uint8_t GOLD_11x9_FIRST_ROW[11 * 3] = {
    106, 148, 255, 120, 180, 235, 113, 187, 212, 2,   40,  255, 27,  62,  219, 159, 203,
    111, 241, 191, 123, 241, 154, 150, 159, 122, 168, 197, 133, 176, 240, 149, 177};
static const uint8_t GOLD_11x9_LAST_ROW[11 * 3] = {
    127, 237, 76,  185, 195, 166, 229, 144, 255, 101, 164, 178, 121, 105, 98,  246, 6,
    61,  214, 58,  177, 175, 124, 232, 158, 167, 171, 86,  185, 72,  34,  189, 6};

static void test_pil_golden(void)
{
    struct image_rgb8 src = {7, 5, (uint8_t *)GOLD_SRC};
    struct {
        int w, h;
        const uint8_t *gold;
        size_t n;
    } cases[] = {{3, 2, GOLD_3x2, sizeof GOLD_3x2},
                 {7, 2, GOLD_7x2, sizeof GOLD_7x2},
                 {2, 5, GOLD_2x5, sizeof GOLD_2x5}};
    char err[512];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct image_rgb8 d;
        int rc = resize_bicubic_rgb8(&src, cases[i].w, cases[i].h, &d, err, sizeof err);
        CHECK(rc == 0 && d.width == cases[i].w && d.height == cases[i].h, "resize: %s", err);
        if (rc == 0) {
            int bad = 0;
            for (size_t k = 0; k < cases[i].n; k++)
                bad += d.data[k] != cases[i].gold[k];
            CHECK(bad == 0, "7x5 -> %dx%d: %d bytes differ from Pillow", cases[i].w, cases[i].h,
                  bad);
        }
        image_free(&d);
    }
    struct image_rgb8 d;
    int rc = resize_bicubic_rgb8(&src, 11, 9, &d, err, sizeof err);
    CHECK(rc == 0, "upscale: %s", err);
    if (rc == 0) {
        CHECK(memcmp(d.data, GOLD_11x9_FIRST_ROW, 33) == 0, "11x9 first row differs from Pillow");
        CHECK(memcmp(d.data + 8 * 33, GOLD_11x9_LAST_ROW, 33) == 0,
              "11x9 last row differs from Pillow");
    }
    image_free(&d);
}

static void test_identity_and_constant(void)
{
    char err[512];
    struct image_rgb8 im = make_image(37, 23);
    for (int i = 0; i < 37 * 23 * 3; i++)
        im.data[i] = (uint8_t)rnd();
    struct image_rgb8 d;
    int rc = resize_bicubic_rgb8(&im, 37, 23, &d, err, sizeof err);
    CHECK(rc == 0 && memcmp(d.data, im.data, 37 * 23 * 3) == 0, "identity resize: %s", err);
    image_free(&d);
    /* Only one axis resized: the other is untouched. */
    rc = resize_bicubic_rgb8(&im, 37, 50, &d, err, sizeof err);
    CHECK(rc == 0, "one-axis resize: %s", err);
    image_free(&d);
    image_free(&im);

    static const int sizes[][4] = {{1, 1, 5, 300}, {300, 200, 224, 224}, {1000, 30, 17, 900},
                                   {640, 480, 256, 192}, {3, 3, 2, 2}, {512, 512, 1, 1}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        for (int v = 0; v <= 255; v += 51) {
            im = make_image(sizes[s][0], sizes[s][1]);
            for (int i = 0; i < im.width * im.height; i++) {
                im.data[3 * i] = (uint8_t)v;
                im.data[3 * i + 1] = (uint8_t)(255 - v);
                im.data[3 * i + 2] = 77;
            }
            rc = resize_bicubic_rgb8(&im, sizes[s][2], sizes[s][3], &d, err, sizeof err);
            int bad = 0;
            for (int i = 0; rc == 0 && i < d.width * d.height; i++)
                bad += d.data[3 * i] != v || d.data[3 * i + 1] != 255 - v || d.data[3 * i + 2] != 77;
            CHECK(rc == 0 && bad == 0, "constant %d %dx%d -> %dx%d: %d changed", v, sizes[s][0],
                  sizes[s][1], sizes[s][2], sizes[s][3], bad);
            image_free(&d);

            /* Eval preprocessing of a constant image is the normalised constant. */
            struct preprocess_config pc = {256, 224, {MEAN[0], MEAN[1], MEAN[2]},
                                           {STD[0], STD[1], STD[2]}};
            float *out = malloc(sizeof(float) * 3 * 224 * 224);
            rc = preprocess_eval(&im, &pc, out, err, sizeof err);
            CHECK(rc == 0, "eval: %s", err);
            bad = 0;
            for (int c = 0; rc == 0 && c < 3; c++) {
                float e = norm_value(c == 0 ? v : c == 1 ? 255 - v : 77, c);
                for (int i = 0; i < 224 * 224; i++)
                    bad += out[c * 224 * 224 + i] != e;
            }
            CHECK(bad == 0, "eval of constant %d (%dx%d): %d values differ", v, sizes[s][0],
                  sizes[s][1], bad);
            rc = preprocess_square(&im, 37, MEAN, STD, out, err, sizeof err);
            bad = 0;
            for (int c = 0; rc == 0 && c < 3; c++) {
                float e = norm_value(c == 0 ? v : c == 1 ? 255 - v : 77, c);
                for (int i = 0; i < 37 * 37; i++)
                    bad += out[c * 37 * 37 + i] != e;
            }
            CHECK(rc == 0 && bad == 0, "square of constant: %d differ (%s)", bad, err);
            free(out);
            image_free(&im);
        }
    }
}

static void test_geometry(void)
{
    int w, h;
    CHECK(preprocess_resized_size(512, 512, 256, &w, &h) == 0 && w == 256 && h == 256, "512^2");
    CHECK(preprocess_resized_size(451, 300, 256, &w, &h) == 0 && w == 384 && h == 256,
          "451x300 -> %dx%d", w, h);
    CHECK(preprocess_resized_size(300, 451, 256, &w, &h) == 0 && w == 256 && h == 384,
          "300x451 -> %dx%d", w, h);
    /* int(256 * 1000 / 600) = int(426.67) = 426 */
    CHECK(preprocess_resized_size(1000, 600, 256, &w, &h) == 0 && w == 426 && h == 256,
          "1000x600 -> %dx%d", w, h);
    CHECK(preprocess_resized_size(1, 1000, 256, &w, &h) == 0 && w == 256 && h == 256000,
          "1x1000 -> %dx%d", w, h);
    CHECK(preprocess_resized_size(0, 10, 256, &w, &h) < 0, "zero width accepted");

    CHECK(preprocess_crop_offset(256, 224) == 16, "256");
    CHECK(preprocess_crop_offset(257, 224) == 16, "16.5 rounds to even 16");
    CHECK(preprocess_crop_offset(259, 224) == 18, "17.5 rounds to even 18");
    CHECK(preprocess_crop_offset(258, 224) == 17, "17");
    CHECK(preprocess_crop_offset(224, 224) == 0, "0");
    CHECK(preprocess_crop_offset(100, 150) == -25, "pad 25");
    CHECK(preprocess_crop_offset(101, 150) == -24, "pad 49 -> 24 before");
}

/* An image whose R/G encode the column/row: crops can be checked exactly when
 * no resize happens (the shorter side is already resize_size). */
static struct image_rgb8 coord_image(int w, int h)
{
    struct image_rgb8 im = make_image(w, h);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *p = im.data + ((size_t)y * w + x) * 3;
            p[0] = (uint8_t)x;
            p[1] = (uint8_t)y;
            p[2] = (uint8_t)(x + y);
        }
    return im;
}

static int pix_at(const float *out, int C, int x, int y, int c)
{
    float v = out[(size_t)c * C * C + (size_t)y * C + x];
    float x255 = (v * STD[c] + MEAN[c]) * 255.0f;
    return (int)lrintf(x255);
}

static void test_crop(void)
{
    char err[512];
    struct preprocess_config pc = {256, 224, {MEAN[0], MEAN[1], MEAN[2]}, {STD[0], STD[1], STD[2]}};
    float *out = malloc(sizeof(float) * 3 * 256 * 256);
    static const int cases[][4] = {
        /* w, h, expected left, expected top */
        {256, 300, 16, 38},
        {256, 301, 16, 38},   /* 38.5 -> 38 */
        {256, 303, 16, 40},   /* 39.5 -> 40 */
        {256, 256, 16, 16},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        struct image_rgb8 im = coord_image(cases[k][0], cases[k][1]);
        int rc = preprocess_eval(&im, &pc, out, err, sizeof err);
        CHECK(rc == 0, "eval: %s", err);
        int bad = 0;
        for (int y = 0; rc == 0 && y < 224; y += 7)
            for (int x = 0; x < 224; x += 5) {
                int sx = x + cases[k][2], sy = y + cases[k][3];
                bad += pix_at(out, 224, x, y, 0) != (sx & 255) ||
                       pix_at(out, 224, x, y, 1) != (sy & 255) ||
                       pix_at(out, 224, x, y, 2) != ((sx + sy) & 255);
            }
        CHECK(bad == 0, "crop of %dx%d: %d wrong pixels", cases[k][0], cases[k][1], bad);
        image_free(&im);
    }
    /* Landscape with the short side already 256: crop along x. */
    struct image_rgb8 im = coord_image(301, 256);
    int rc = preprocess_eval(&im, &pc, out, err, sizeof err);
    CHECK(rc == 0 && pix_at(out, 224, 0, 0, 0) == 38 && pix_at(out, 224, 0, 0, 1) == 16 &&
              pix_at(out, 224, 223, 223, 0) == ((38 + 223) & 255) && pix_at(out, 224, 223, 223, 1) == 239,
          "landscape crop: %s", err);
    image_free(&im);

    /* Crop larger than the resized image: torchvision pads with zeros. */
    struct preprocess_config pad = {100, 150, {MEAN[0], MEAN[1], MEAN[2]},
                                    {STD[0], STD[1], STD[2]}};
    im = coord_image(100, 100);
    rc = preprocess_eval(&im, &pad, out, err, sizeof err);
    CHECK(rc == 0, "pad: %s", err);
    if (rc == 0) {
        CHECK(pix_at(out, 150, 0, 0, 0) == 0 && pix_at(out, 150, 0, 0, 1) == 0 &&
                  pix_at(out, 150, 24, 24, 2) == 0,
              "padding is not zero");
        CHECK(pix_at(out, 150, 25, 25, 0) == 0 && pix_at(out, 150, 26, 27, 0) == 1 &&
                  pix_at(out, 150, 26, 27, 1) == 2,
              "padded origin wrong");
        CHECK(pix_at(out, 150, 124, 124, 0) == 99 && pix_at(out, 150, 124, 124, 1) == 99 &&
                  pix_at(out, 150, 125, 125, 2) == 0 && pix_at(out, 150, 149, 149, 1) == 0,
              "padded far corner wrong");
        CHECK(out[0] == norm_value(0, 0), "padding normalised as pixel 0");
    }
    image_free(&im);
    /* 101 x 100: 49 columns of padding, 24 before and 25 after. */
    im = coord_image(101, 100);
    rc = preprocess_eval(&im, &pad, out, err, sizeof err);
    CHECK(rc == 0 && pix_at(out, 150, 24, 25, 2) == 0 && pix_at(out, 150, 25, 26, 0) == 1 &&
              pix_at(out, 150, 25, 26, 1) == 1 && pix_at(out, 150, 124, 124, 0) == 100 &&
              pix_at(out, 150, 125, 124, 2) == 0,
          "101x100 pad: %s", err);
    image_free(&im);

    /* Square mode at the image's own size is the identity. */
    im = coord_image(64, 64);
    rc = preprocess_square(&im, 64, MEAN, STD, out, err, sizeof err);
    int bad = 0;
    for (int y = 0; rc == 0 && y < 64; y++)
        for (int x = 0; x < 64; x++)
            bad += pix_at(out, 64, x, y, 0) != x || pix_at(out, 64, x, y, 1) != y;
    CHECK(rc == 0 && bad == 0, "square identity: %d wrong (%s)", bad, err);
    image_free(&im);
    free(out);
}

/* Independent double-precision reference of the antialiased a=-0.5 bicubic
 * resize (no fixed point, no intermediate rounding): ours must stay within a
 * couple of levels of it. */
static double cubic(double x)
{
    x = fabs(x);
    if (x < 1)
        return 1.5 * x * x * x - 2.5 * x * x + 1;
    if (x < 2)
        return -0.5 * x * x * x + 2.5 * x * x - 4 * x + 2;
    return 0;
}

static void ref_weights(int in, int out, int o, int *lo, int *n, double *w)
{
    double scale = (double)in / out, fs = scale > 1 ? scale : 1, sup = 2 * fs;
    double c = (o + 0.5) * scale;
    int a = (int)floor(c - sup + 0.5), b = (int)floor(c + sup + 0.5);
    if (a < 0)
        a = 0;
    if (b > in)
        b = in;
    double sum = 0;
    for (int i = a; i < b; i++)
        sum += (w[i - a] = cubic((i + 0.5 - c) / fs));
    for (int i = a; i < b; i++)
        w[i - a] /= sum;
    *lo = a;
    *n = b - a;
}

static void test_against_float_reference(void)
{
    static const int cases[][4] = {{173, 97, 47, 26}, {40, 30, 97, 71}, {300, 20, 64, 55}};
    char err[512];
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int sw = cases[k][0], sh = cases[k][1], ow = cases[k][2], oh = cases[k][3];
        struct image_rgb8 im = make_image(sw, sh);
        for (int y = 0; y < sh; y++)
            for (int x = 0; x < sw; x++)
                for (int c = 0; c < 3; c++)
                    im.data[((size_t)y * sw + x) * 3 + c] =
                        (uint8_t)(127.5 + 120 * sin(0.07 * x * (c + 1) + 0.11 * y));
        struct image_rgb8 d;
        int rc = resize_bicubic_rgb8(&im, ow, oh, &d, err, sizeof err);
        CHECK(rc == 0, "resize: %s", err);
        double *tmp = malloc(sizeof(double) * (size_t)sh * ow * 3);
        double *w = malloc(sizeof(double) * 4096);
        int maxd = 0;
        for (int y = 0; y < sh; y++)
            for (int x = 0; x < ow; x++) {
                int lo, n;
                ref_weights(sw, ow, x, &lo, &n, w);
                for (int c = 0; c < 3; c++) {
                    double s = 0;
                    for (int t = 0; t < n; t++)
                        s += w[t] * im.data[((size_t)y * sw + lo + t) * 3 + c];
                    tmp[((size_t)y * ow + x) * 3 + c] = s;
                }
            }
        for (int y = 0; rc == 0 && y < oh; y++) {
            int lo, n;
            ref_weights(sh, oh, y, &lo, &n, w);
            for (int x = 0; x < ow; x++)
                for (int c = 0; c < 3; c++) {
                    double s = 0;
                    for (int t = 0; t < n; t++)
                        s += w[t] * tmp[((size_t)(lo + t) * ow + x) * 3 + c];
                    int e = (int)lrint(s < 0 ? 0 : s > 255 ? 255 : s);
                    int dd = abs(d.data[((size_t)y * ow + x) * 3 + c] - e);
                    if (dd > maxd)
                        maxd = dd;
                }
        }
        CHECK(maxd <= 2, "%dx%d -> %dx%d: max diff %d from the float reference", sw, sh, ow, oh,
              maxd);
        free(tmp);
        free(w);
        image_free(&d);
        image_free(&im);
    }
}

static void test_elongated_and_errors(void)
{
    char err[512];
    struct preprocess_config pc = {256, 224, {MEAN[0], MEAN[1], MEAN[2]}, {STD[0], STD[1], STD[2]}};
    float *out = malloc(sizeof(float) * 3 * 224 * 224);
    /* 20000 x 1: resized to 5120000 x 256, of which only the crop is computed. */
    struct image_rgb8 im = make_image(20000, 1);
    memset(im.data, 90, 20000 * 3);
    clock_t t0 = clock();
    int rc = preprocess_eval(&im, &pc, out, err, sizeof err);
    double dt = (double)(clock() - t0) / CLOCKS_PER_SEC;
    CHECK(rc == 0 && out[0] == norm_value(90, 0) && out[3 * 224 * 224 - 1] == norm_value(90, 2),
          "elongated: %s", err);
    CHECK(dt < 2.0, "elongated image took %.2f s", dt);
    image_free(&im);

    im = make_image(8, 8);
    memset(im.data, 1, 8 * 8 * 3);
    struct image_rgb8 d;
    CHECK(preprocess_eval(NULL, &pc, out, err, sizeof err) < 0, "NULL image");
    CHECK(preprocess_eval(&im, NULL, out, err, sizeof err) < 0, "NULL config");
    struct preprocess_config bad = pc;
    bad.std[1] = 0;
    CHECK(preprocess_eval(&im, &bad, out, err, sizeof err) < 0 && strstr(err, "std"),
          "zero std: %s", err);
    bad = pc;
    bad.crop_size = 0;
    CHECK(preprocess_eval(&im, &bad, out, err, sizeof err) < 0, "zero crop");
    bad = pc;
    bad.resize_size = -3;
    CHECK(preprocess_eval(&im, &bad, out, err, sizeof err) < 0, "negative resize");
    CHECK(preprocess_square(&im, 0, MEAN, STD, out, err, sizeof err) < 0, "square 0");
    CHECK(resize_bicubic_rgb8(&im, 0, 5, &d, err, sizeof err) < 0 && d.data == NULL, "resize 0");
    struct image_rgb8 empty = {0, 5, im.data};
    CHECK(resize_bicubic_rgb8(&empty, 5, 5, &d, err, sizeof err) < 0, "zero-width source");
    struct image_rgb8 nodata = {8, 8, NULL};
    CHECK(preprocess_square(&nodata, 8, MEAN, STD, out, err, sizeof err) < 0, "no data");
    image_free(&im);
    free(out);
}

int main(void)
{
    test_pil_golden();
    test_identity_and_constant();
    test_geometry();
    test_crop();
    test_against_float_reference();
    test_elongated_and_errors();
    printf("test_preprocess: ");
    return check_summary();
}
