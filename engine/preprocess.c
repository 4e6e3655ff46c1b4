/* Image preprocessing, bit-compatible with Pillow 9.4 + torchvision 0.14:
 *
 *   Resize(resize_size, BICUBIC) -> CenterCrop(crop_size) -> ToTensor -> Normalize
 *
 * The resize reproduces Pillow's Resample.c for 8-bit images: a separable
 * convolution (horizontal pass first, then vertical) with the a = -0.5 cubic
 * kernel, its support widened by the downscale factor (antialiasing), weights
 * normalised to sum 1 in double precision and then rounded to fixed point with
 * 22 fractional bits, a rounding bias of 2^21, and the result of each pass
 * shifted and clipped to uint8.
 *
 * Every output pixel of that resize depends only on its own row/column
 * weights, so we compute only the window that survives the centre crop: the
 * values are identical to resizing the whole image and cropping afterwards,
 * and very elongated images cannot blow up the intermediate size. */
#include "preprocess.h"

#include "errors.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The weights are computed in double exactly as Pillow does; keep the
 * compiler from fusing multiply-adds, which could change the last bit. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif
/* (GCC does not contract in ISO C mode, -std=c11, which the build uses.) */

#define PRECISION_BITS 22
#define MAX_SIDE (1 << 20)            /* input/output sides; keeps float sizes exact */
#define MAX_OUT_PIXELS ((int64_t)1 << 28)

#ifdef _OPENMP
#define PRAGMA_(x) _Pragma(#x)
#define OMP_FOR_IF(cond) PRAGMA_(omp parallel for schedule(static) if (cond))
#else
#define OMP_FOR_IF(cond)
#endif

/* Pillow's bicubic kernel with a = -0.5, same expression order. */
static double bicubic_filter(double x)
{
    const double a = -0.5;
    if (x < 0.0)
        x = -x;
    if (x < 1.0)
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0)
        return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

int bicubic_aa_ksize(int in_size, int out_size)
{
    double scale = (double)((float)in_size - 0.0f) / out_size;
    return (int)ceil(2.0 * (scale < 1.0 ? 1.0 : scale)) * 2 + 1;
}

int bicubic_aa_weights(int in_size, int out_size, int xx, int ksize, double *w, int *lo)
{
    /* Pillow: scale = (double)(in1 - in0) / outSize with float box coordinates. */
    double scale = (double)((float)in_size - 0.0f) / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * filterscale;
    double ss = 1.0 / filterscale;
    double center = 0.0 + (xx + 0.5) * scale;
    double ww = 0.0;
    int xmin = (int)(center - support + 0.5);
    if (xmin < 0)
        xmin = 0;
    int xmax = (int)(center + support + 0.5);
    if (xmax > in_size)
        xmax = in_size;
    xmax -= xmin;
    if (xmax > ksize)
        xmax = ksize;
    if (xmax < 0)
        xmax = 0;
    for (int x = 0; x < xmax; x++) {
        double v = bicubic_filter((x + xmin - center + 0.5) * ss);
        w[x] = v;
        ww += v;
    }
    for (int x = 0; x < xmax; x++)
        if (ww != 0.0)
            w[x] /= ww;
    *lo = xmin;
    return xmax;
}

/* Fixed-point weights for outputs first .. first+n-1 of a 1-D resize from
 * in_size to out_size samples. */
struct coeffs {
    int ksize;
    int *lo;          /* first input sample used by each output */
    int *cnt;         /* number of input samples used */
    int32_t *k;       /* n * ksize weights */
};

static void coeffs_free(struct coeffs *c)
{
    free(c->lo);
    free(c->cnt);
    free(c->k);
    memset(c, 0, sizeof *c);
}

static int coeffs_build(int in_size, int out_size, int first, int n, struct coeffs *c,
                        char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    int ksize = bicubic_aa_ksize(in_size, out_size);
    double *w = malloc(sizeof(double) * (size_t)ksize);
    c->ksize = ksize;
    c->lo = malloc(sizeof(int) * (size_t)n);
    c->cnt = malloc(sizeof(int) * (size_t)n);
    c->k = calloc((size_t)n * (size_t)ksize, sizeof(int32_t));
    if (!w || !c->lo || !c->cnt || !c->k) {
        free(w);
        coeffs_free(c);
        return set_err(err, errlen, "out of memory for resize weights (%d x %d)", n, ksize);
    }
    for (int i = 0; i < n; i++) {
        int xmin, xmax = bicubic_aa_weights(in_size, out_size, first + i, ksize, w, &xmin);
        int32_t *k = c->k + (size_t)i * ksize;
        for (int x = 0; x < xmax; x++) {
            double v = w[x];
            k[x] = v < 0 ? (int32_t)(-0.5 + v * (1 << PRECISION_BITS))
                         : (int32_t)(0.5 + v * (1 << PRECISION_BITS));
        }
        c->lo[i] = xmin;
        c->cnt[i] = xmax;
    }
    free(w);
    return 0;
}

static inline uint8_t clip8(int32_t v)
{
    v >>= PRECISION_BITS;   /* arithmetic shift, as in Pillow */
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* Computes the window [x0, x0+cw) x [y0, y0+ch) of the bicubic resize of the
 * sw x sh RGB image src to ow x oh, into dst (ch rows of cw*3 bytes, packed).
 * The window must lie inside the ow x oh output. */
static int resize_window(const uint8_t *src, int sw, int sh, int ow, int oh, int x0, int y0,
                         int cw, int ch, uint8_t *dst, char *err, size_t errlen)
{
    int need_h = ow != sw, need_v = oh != sh;
    struct coeffs hc = {0}, vc = {0};
    uint8_t *tmp = NULL;
    int rc = -1;
    int r0, r1;   /* source rows that the vertical pass reads */

    if (need_v) {
        if (coeffs_build(sh, oh, y0, ch, &vc, err, errlen) < 0)
            return -1;
        r0 = vc.lo[0];
        r1 = vc.lo[0] + vc.cnt[0];
        for (int j = 1; j < ch; j++) {
            if (vc.lo[j] < r0)
                r0 = vc.lo[j];
            if (vc.lo[j] + vc.cnt[j] > r1)
                r1 = vc.lo[j] + vc.cnt[j];
        }
    } else {
        r0 = y0;
        r1 = y0 + ch;
    }

    /* Horizontal pass (Pillow runs it first), on the needed rows only. */
    const uint8_t *mid;
    size_t mid_stride;
    int mid_row0;
    if (need_h) {
        if (coeffs_build(sw, ow, x0, cw, &hc, err, errlen) < 0)
            goto done;
        int nrows = r1 - r0;
        tmp = malloc((size_t)(nrows > 0 ? nrows : 1) * (size_t)cw * 3);
        if (!tmp) {
            set_err(err, errlen, "out of memory resizing to %dx%d", ow, oh);
            goto done;
        }
        const int ks = hc.ksize;
        int64_t work = (int64_t)nrows * cw * ks;
        (void)work;
        OMP_FOR_IF(work > (1 << 18))
        for (int r = 0; r < nrows; r++) {
            const uint8_t *srow = src + (size_t)(r0 + r) * sw * 3;
            uint8_t *trow = tmp + (size_t)r * cw * 3;
            for (int i = 0; i < cw; i++) {
                const int32_t *k = hc.k + (size_t)i * ks;
                const uint8_t *s = srow + (size_t)hc.lo[i] * 3;
                int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
                for (int t = 0; t < hc.cnt[i]; t++) {
                    s0 += s[3 * t + 0] * k[t];
                    s1 += s[3 * t + 1] * k[t];
                    s2 += s[3 * t + 2] * k[t];
                }
                trow[3 * i + 0] = clip8(s0);
                trow[3 * i + 1] = clip8(s1);
                trow[3 * i + 2] = clip8(s2);
            }
        }
        mid = tmp;
        mid_stride = (size_t)cw * 3;
        mid_row0 = r0;
    } else {
        mid = src + (size_t)x0 * 3;
        mid_stride = (size_t)sw * 3;
        mid_row0 = 0;
    }

    /* Vertical pass. */
    if (need_v) {
        const int ks = vc.ksize;
        const int rowbytes = cw * 3;
        int64_t work = (int64_t)ch * rowbytes * ks;
        (void)work;
        OMP_FOR_IF(work > (1 << 18))
        for (int j = 0; j < ch; j++) {
            const int32_t *k = vc.k + (size_t)j * ks;
            const uint8_t *base = mid + (size_t)(vc.lo[j] - mid_row0) * mid_stride;
            const int n = vc.cnt[j];
            uint8_t *drow = dst + (size_t)j * rowbytes;
            for (int b = 0; b < rowbytes; b++) {
                int32_t s = 1 << (PRECISION_BITS - 1);
                const uint8_t *p = base + b;
                for (int t = 0; t < n; t++)
                    s += p[(size_t)t * mid_stride] * k[t];
                drow[b] = clip8(s);
            }
        }
    } else {
        for (int j = 0; j < ch; j++)
            memcpy(dst + (size_t)j * cw * 3, mid + (size_t)(y0 + j - mid_row0) * mid_stride,
                   (size_t)cw * 3);
    }
    rc = 0;
done:
    free(tmp);
    coeffs_free(&hc);
    coeffs_free(&vc);
    return rc;
}

static int check_image(const struct image_rgb8 *img, char *err, size_t errlen)
{
    if (!img || !img->data)
        return set_err(err, errlen, "preprocess: no image data");
    if (img->width <= 0 || img->height <= 0 || img->width > MAX_SIDE || img->height > MAX_SIDE)
        return set_err(err, errlen, "preprocess: invalid image size %dx%d", img->width,
                       img->height);
    return 0;
}

static int check_norm(const float mean[3], const float std[3], char *err, size_t errlen)
{
    for (int c = 0; c < 3; c++) {
        if (!isfinite(mean[c]) || !isfinite(std[c]) || std[c] == 0.0f)
            return set_err(err, errlen,
                           "preprocess: invalid normalisation for channel %d (mean %g, std %g)",
                           c, (double)mean[c], (double)std[c]);
    }
    return 0;
}

/* ToTensor (x / 255 in float32) then Normalize ((x - mean) / std in float32),
 * from packed RGB8 rows into [3, h, w] planes. */
static void to_planes(const uint8_t *rgb, int w, int h, const float mean[3], const float std[3],
                      float *out)
{
    float lut[3][256];
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++) {
            float x = (float)v / 255.0f;
            lut[c][v] = (x - mean[c]) / std[c];
        }
    size_t plane = (size_t)w * h;
    for (size_t i = 0; i < plane; i++) {
        out[i] = lut[0][rgb[3 * i + 0]];
        out[plane + i] = lut[1][rgb[3 * i + 1]];
        out[2 * plane + i] = lut[2][rgb[3 * i + 2]];
    }
}

int resize_bicubic_rgb8(const struct image_rgb8 *src, int out_w, int out_h,
                        struct image_rgb8 *dst, char *err, size_t errlen)
{
    if (!dst)
        return set_err(err, errlen, "resize: no output image given");
    dst->data = NULL;
    dst->width = dst->height = 0;
    if (check_image(src, err, errlen) < 0)
        return -1;
    if (out_w <= 0 || out_h <= 0 || out_w > MAX_SIDE || out_h > MAX_SIDE ||
        (int64_t)out_w * out_h > MAX_OUT_PIXELS)
        return set_err(err, errlen, "resize: invalid output size %dx%d", out_w, out_h);
    uint8_t *d = malloc((size_t)out_w * out_h * 3);
    if (!d)
        return set_err(err, errlen, "out of memory resizing to %dx%d", out_w, out_h);
    if (resize_window(src->data, src->width, src->height, out_w, out_h, 0, 0, out_w, out_h, d,
                      err, errlen) < 0) {
        free(d);
        return -1;
    }
    dst->data = d;
    dst->width = out_w;
    dst->height = out_h;
    return 0;
}

/* torchvision's _compute_resized_output_size for an int size: the shorter side
 * becomes `size`, the longer int(size * long / short) (float division,
 * truncated). */
int preprocess_resized_size(int w, int h, int size, int *out_w, int *out_h)
{
    if (w <= 0 || h <= 0 || size <= 0)
        return -1;
    int64_t s = size;
    if (w <= h) {
        *out_w = size;
        double v = (double)(s * h) / (double)w;
        if (v >= (double)MAX_SIDE * 64)
            return -1;
        *out_h = (int)v;
    } else {
        *out_h = size;
        double v = (double)(s * w) / (double)h;
        if (v >= (double)MAX_SIDE * 64)
            return -1;
        *out_w = (int)v;
    }
    return 0;
}

/* torchvision CenterCrop offset along one axis: round-half-even of
 * (size - crop) / 2, or minus the left/top zero padding when crop > size. */
int preprocess_crop_offset(int size, int crop)
{
    if (crop > size)
        return -((crop - size) / 2);
    return (int)rint((size - crop) / 2.0);
}

int preprocess_eval(const struct image_rgb8 *img, const struct preprocess_config *pc,
                    float *out, char *err, size_t errlen)
{
    if (check_image(img, err, errlen) < 0)
        return -1;
    if (!pc || !out)
        return set_err(err, errlen, "preprocess: missing config or output buffer");
    const int R = pc->resize_size, C = pc->crop_size;
    if (R <= 0 || C <= 0 || R > 16384 || C > 16384)
        return set_err(err, errlen, "preprocess: invalid resize/crop sizes %d/%d", R, C);
    if (check_norm(pc->mean, pc->std, err, errlen) < 0)
        return -1;

    int nw, nh;
    if (preprocess_resized_size(img->width, img->height, R, &nw, &nh) < 0)
        return set_err(err, errlen, "preprocess: a %dx%d image is too elongated to resize",
                       img->width, img->height);
    int left = preprocess_crop_offset(nw, C), top = preprocess_crop_offset(nh, C);
    /* The part of the crop that lies inside the resized image; the rest is
     * torchvision's zero padding (only when crop > resized side). */
    int vx0 = left < 0 ? 0 : left, vy0 = top < 0 ? 0 : top;
    int vx1 = left + C > nw ? nw : left + C, vy1 = top + C > nh ? nh : top + C;
    int vw = vx1 - vx0, vh = vy1 - vy0;

    uint8_t *crop = calloc((size_t)C * C, 3);
    uint8_t *win = malloc((size_t)vw * vh * 3);
    if (!crop || !win) {
        free(crop);
        free(win);
        return set_err(err, errlen, "out of memory preprocessing a %dx%d image", img->width,
                       img->height);
    }
    if (resize_window(img->data, img->width, img->height, nw, nh, vx0, vy0, vw, vh, win, err,
                      errlen) < 0) {
        free(crop);
        free(win);
        return -1;
    }
    for (int y = 0; y < vh; y++)
        memcpy(crop + ((size_t)(vy0 - top + y) * C + (size_t)(vx0 - left)) * 3,
               win + (size_t)y * vw * 3, (size_t)vw * 3);
    free(win);
    to_planes(crop, C, C, pc->mean, pc->std, out);
    free(crop);
    return 0;
}

int preprocess_square(const struct image_rgb8 *img, int R, const float mean[3],
                      const float std[3], float *out, char *err, size_t errlen)
{
    if (check_image(img, err, errlen) < 0)
        return -1;
    if (!mean || !std || !out)
        return set_err(err, errlen, "preprocess: missing normalisation or output buffer");
    if (R <= 0 || R > 16384)
        return set_err(err, errlen, "preprocess: invalid square resolution %d", R);
    if (check_norm(mean, std, err, errlen) < 0)
        return -1;
    uint8_t *buf = malloc((size_t)R * R * 3);
    if (!buf)
        return set_err(err, errlen, "out of memory preprocessing to %dx%d", R, R);
    if (resize_window(img->data, img->width, img->height, R, R, 0, 0, R, R, buf, err,
                      errlen) < 0) {
        free(buf);
        return -1;
    }
    to_planes(buf, R, R, mean, std, out);
    free(buf);
    return 0;
}
