/* Request image preparation; see request_images.h. */
#include "request_images.h"

#include "clock.h"
#include "errors.h"
#include "image.h"
#include "preprocess.h"

int request_image_side(const struct model_config *cfg, int resolution)
{
    return resolution ? resolution : cfg->preprocess.crop_size;
}

int request_image_prepare(const uint8_t *bytes, size_t len, const struct model_config *cfg,
                          int resolution, size_t max_pixels, struct metrics *m, float *out,
                          char *err, size_t errlen)
{
    const double t0 = clock_now_s();
    struct image_decode_opts o;
    image_decode_opts_default(&o);
    if (max_pixels) o.max_pixels = max_pixels;
    struct image_rgb8 img;
    if (image_decode(bytes, len, &o, &img, err, errlen)) return -1;
    const int rc = resolution
                       ? preprocess_square(&img, resolution, cfg->preprocess.mean,
                                           cfg->preprocess.std, out, err, errlen)
                       : preprocess_eval(&img, &cfg->preprocess, out, err, errlen);
    image_free(&img);
    /* Only prepared images count: a refused one says nothing about decode cost. */
    if (!rc && m) metrics_observe(m, HIST_DECODE_SECONDS, clock_now_s() - t0);
    return rc;
}
