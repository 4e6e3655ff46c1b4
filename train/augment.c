#include "augment.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "preprocess.h"

void augment_config_default(struct augment_config *c, int global_size, int local_size,
                            int n_local)
{
    memset(c, 0, sizeof *c);
    c->global_size = global_size;
    c->local_size = local_size;
    c->n_local = n_local;
    c->global_scale[0] = 0.32;
    c->global_scale[1] = 1.0;
    c->local_scale[0] = 0.05;
    c->local_scale[1] = 0.32;
    c->ratio[0] = 3.0 / 4.0;
    c->ratio[1] = 4.0 / 3.0;
    c->flip_p = 0.5;
    c->jitter_p = 0.8;
    c->brightness = 0.4;
    c->contrast = 0.4;
    c->saturation = 0.2;
    c->hue = 0.1;
    c->gray_p = 0.2;
    c->blur_p_global1 = 0.0;
    c->blur_p_global2 = 0.9;
    c->blur_p_local = 0.5;
    c->blur_sigma[0] = 0.1;
    c->blur_sigma[1] = 2.0;
    c->blur_kernel = 9;
    c->solarize_p = 0.2;
    const float mean[3] = {0.485f, 0.456f, 0.406f}, std[3] = {0.229f, 0.224f, 0.225f};
    memcpy(c->mean, mean, sizeof mean);
    memcpy(c->std, std, sizeof std);
}

void rrc_params(struct rng *r, int width, int height, const double scale[2],
                const double ratio[2], int *top, int *left, int *h, int *w)
{
    const double area = (double)width * height;
    const double lr0 = log(ratio[0]), lr1 = log(ratio[1]);
    for (int attempt = 0; attempt < 10; attempt++) {
        const double target = area * rng_range(r, scale[0], scale[1]);
        const double ar = exp(rng_range(r, lr0, lr1));
        const int cw = (int)rint(sqrt(target * ar)), ch = (int)rint(sqrt(target / ar));
        if (cw > 0 && cw <= width && ch > 0 && ch <= height) {
            *top = (int)rng_int(r, 0, height - ch);
            *left = (int)rng_int(r, 0, width - cw);
            *h = ch;
            *w = cw;
            return;
        }
    }
    /* Fallback: the central crop at the nearest allowed ratio. */
    const double in_ratio = (double)width / height;
    const double rmin = fmin(ratio[0], ratio[1]), rmax = fmax(ratio[0], ratio[1]);
    int cw, ch;
    if (in_ratio < rmin) {
        cw = width;
        ch = (int)rint(cw / rmin);
    } else if (in_ratio > rmax) {
        ch = height;
        cw = (int)rint(ch * rmax);
    } else {
        cw = width;
        ch = height;
    }
    if (cw < 1) cw = 1;
    if (ch < 1) ch = 1;
    if (cw > width) cw = width;
    if (ch > height) ch = height;
    *top = (height - ch) / 2;
    *left = (width - cw) / 2;
    *h = ch;
    *w = cw;
}

static inline float clamp01(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
static inline float gray_of(const float *p)
{
    return 0.2989f * p[0] + 0.587f * p[1] + 0.114f * p[2];
}

static void rgb2hsv(const float *p, float *h, float *s, float *v)
{
    const float r = p[0], g = p[1], b = p[2];
    const float maxc = fmaxf(r, fmaxf(g, b)), minc = fminf(r, fminf(g, b));
    const int eqc = maxc == minc;
    const float cr = maxc - minc;
    *s = cr / (eqc ? 1.0f : maxc);
    const float div = eqc ? 1.0f : cr;
    const float rc = (maxc - r) / div, gc = (maxc - g) / div, bc = (maxc - b) / div;
    float hh;
    if (maxc == r) hh = bc - gc;
    else if (maxc == g) hh = 2.0f + rc - bc;
    else hh = 4.0f + gc - rc;
    hh = fmodf(hh / 6.0f + 1.0f, 1.0f);
    *h = hh;
    *v = maxc;
}

static void hsv2rgb(float h, float s, float v, float *p)
{
    float i = floorf(h * 6.0f);
    const float f = h * 6.0f - i;
    int ii = ((int)i % 6 + 6) % 6;
    const float pp = clamp01(v * (1.0f - s)), q = clamp01(v * (1.0f - s * f)),
                t = clamp01(v * (1.0f - s * (1.0f - f)));
    switch (ii) {
    case 0: p[0] = v; p[1] = t; p[2] = pp; break;
    case 1: p[0] = q; p[1] = v; p[2] = pp; break;
    case 2: p[0] = pp; p[1] = v; p[2] = t; break;
    case 3: p[0] = pp; p[1] = q; p[2] = v; break;
    case 4: p[0] = t; p[1] = pp; p[2] = v; break;
    default: p[0] = v; p[1] = pp; p[2] = q; break;
    }
}

void color_jitter(float *px, size_t npix, const double factors[4], const int order[4])
{
    for (int k = 0; k < 4; k++) {
        const int op = order[k];
        const float f = (float)factors[op];
        if (op == 0) { /* brightness: blend with black */
            for (size_t i = 0; i < 3 * npix; i++) px[i] = clamp01(f * px[i]);
        } else if (op == 1) { /* contrast: blend with the mean grey level */
            double sum = 0.0;
            for (size_t i = 0; i < npix; i++) sum += gray_of(px + 3 * i);
            const float mean = (float)(sum / (double)npix);
            for (size_t i = 0; i < 3 * npix; i++) px[i] = clamp01(f * px[i] + (1.0f - f) * mean);
        } else if (op == 2) { /* saturation: blend with the grey image */
            for (size_t i = 0; i < npix; i++) {
                float *p = px + 3 * i;
                const float g = gray_of(p);
                for (int c = 0; c < 3; c++) p[c] = clamp01(f * p[c] + (1.0f - f) * g);
            }
        } else { /* hue shift */
            for (size_t i = 0; i < npix; i++) {
                float h, s, v;
                rgb2hsv(px + 3 * i, &h, &s, &v);
                h = h + f;
                h = h - floorf(h);
                hsv2rgb(h, s, v, px + 3 * i);
            }
        }
    }
}

void to_grayscale(float *px, size_t npix)
{
    for (size_t i = 0; i < npix; i++) {
        float *p = px + 3 * i;
        const float g = clamp01(gray_of(p));
        p[0] = p[1] = p[2] = g;
    }
}

static inline int reflect(int i, int n)
{
    if (n == 1) return 0;
    while (i < 0 || i >= n) {
        if (i < 0) i = -i;
        if (i >= n) i = 2 * n - 2 - i;
    }
    return i;
}

void gaussian_blur(float *px, int w, int h, int ksize, double sigma, float *tmp)
{
    float kern[64];
    if (ksize > 63) ksize = 63;
    const int half = ksize / 2;
    double sum = 0.0, kd[64];
    for (int k = 0; k < ksize; k++) {
        const double x = -(ksize - 1) * 0.5 + k;
        kd[k] = exp(-0.5 * (x / sigma) * (x / sigma));
        sum += kd[k];
    }
    for (int k = 0; k < ksize; k++) kern[k] = (float)(kd[k] / sum);
    /* horizontal pass into tmp, vertical pass back into px */
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) {
                float acc = 0.0f;
                for (int k = 0; k < ksize; k++)
                    acc += kern[k] * px[((size_t)y * w + reflect(x + k - half, w)) * 3 + c];
                tmp[((size_t)y * w + x) * 3 + c] = acc;
            }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) {
                float acc = 0.0f;
                for (int k = 0; k < ksize; k++)
                    acc += kern[k] * tmp[((size_t)reflect(y + k - half, h) * w + x) * 3 + c];
                px[((size_t)y * w + x) * 3 + c] = acc;
            }
}

int augment_crop(const struct augment_config *c, const struct image_rgb8 *img, int kind,
                 struct rng *r, float *out, char *err, size_t errlen)
{
    const int size = kind == 2 ? c->local_size : c->global_size;
    const double *scale = kind == 2 ? c->local_scale : c->global_scale;
    if (!img || !img->data || img->width <= 0 || img->height <= 0)
        return set_err(err, errlen, "augment: empty image");
    if (size <= 0 || size > 4096) return set_err(err, errlen, "augment: bad crop size %d", size);
    int top, left, ch, cw;
    rrc_params(r, img->width, img->height, scale, c->ratio, &top, &left, &ch, &cw);

    struct image_rgb8 sub = {cw, ch, malloc((size_t)cw * ch * 3)}, res = {0};
    if (!sub.data) return set_err(err, errlen, "augment: out of memory");
    for (int y = 0; y < ch; y++)
        memcpy(sub.data + (size_t)y * cw * 3,
               img->data + ((size_t)(top + y) * img->width + left) * 3, (size_t)cw * 3);
    int rc = resize_bicubic_rgb8(&sub, size, size, &res, err, errlen);
    free(sub.data);
    if (rc < 0) return -1;

    const size_t npix = (size_t)size * size;
    float *px = malloc(npix * 3 * sizeof *px), *tmp = malloc(npix * 3 * sizeof *tmp);
    if (!px || !tmp) {
        free(px);
        free(tmp);
        image_free(&res);
        return set_err(err, errlen, "augment: out of memory");
    }
    for (size_t i = 0; i < npix * 3; i++) px[i] = res.data[i] * (1.0f / 255.0f);
    image_free(&res);

    if (rng_uniform(r) < c->flip_p) {
        for (int y = 0; y < size; y++)
            for (int x = 0; x < size / 2; x++)
                for (int k = 0; k < 3; k++) {
                    float *a = px + ((size_t)y * size + x) * 3 + k;
                    float *b = px + ((size_t)y * size + (size - 1 - x)) * 3 + k;
                    const float t = *a;
                    *a = *b;
                    *b = t;
                }
    }
    if (rng_uniform(r) < c->jitter_p) {
        int order[4] = {0, 1, 2, 3};
        for (int i = 3; i > 0; i--) { /* random permutation */
            const int j = (int)rng_int(r, 0, i);
            const int t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        double f[4];
        f[0] = rng_range(r, fmax(0.0, 1.0 - c->brightness), 1.0 + c->brightness);
        f[1] = rng_range(r, fmax(0.0, 1.0 - c->contrast), 1.0 + c->contrast);
        f[2] = rng_range(r, fmax(0.0, 1.0 - c->saturation), 1.0 + c->saturation);
        f[3] = rng_range(r, -c->hue, c->hue);
        color_jitter(px, npix, f, order);
    }
    if (rng_uniform(r) < c->gray_p) to_grayscale(px, npix);
    const double blur_p = kind == 0 ? c->blur_p_global1 : kind == 1 ? c->blur_p_global2
                                                                     : c->blur_p_local;
    if (rng_uniform(r) < blur_p) {
        const double sigma = rng_range(r, c->blur_sigma[0], c->blur_sigma[1]);
        gaussian_blur(px, size, size, c->blur_kernel, sigma, tmp);
    }
    if (kind == 1 && rng_uniform(r) < c->solarize_p) {
        const float thr = 128.0f / 255.0f;
        for (size_t i = 0; i < npix * 3; i++)
            if (px[i] >= thr) px[i] = 1.0f - px[i];
    }
    for (int k = 0; k < 3; k++) {
        const float m = c->mean[k], sd = c->std[k];
        float *o = out + (size_t)k * npix;
        for (size_t i = 0; i < npix; i++) o[i] = (px[3 * i + k] - m) / sd;
    }
    free(px);
    free(tmp);
    return 0;
}

int augment_sample(const struct augment_config *c, const struct image_rgb8 *img, struct rng *r,
                   int b, int B, float *global, float *local, char *err, size_t errlen)
{
    const size_t gsz = (size_t)3 * c->global_size * c->global_size;
    const size_t lsz = (size_t)3 * c->local_size * c->local_size;
    for (int k = 0; k < 2; k++)
        if (augment_crop(c, img, k, r, global + ((size_t)k * B + b) * gsz, err, errlen) < 0)
            return -1;
    for (int l = 0; l < c->n_local; l++)
        if (augment_crop(c, img, 2, r, local + ((size_t)l * B + b) * lsz, err, errlen) < 0)
            return -1;
    return 0;
}
