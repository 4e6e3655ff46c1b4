#include "images.h"

#include "errors.h"
#include "image.h"
#include "preprocess.h"

int image_input_side(const struct model_config *cfg, int resolution)
{
    return resolution ? resolution : cfg->preprocess.crop_size;
}

int image_prepare(const uint8_t *bytes, size_t len, const struct model_config *cfg,
                  int resolution, size_t max_pixels, float *out, char *err, size_t errlen)
{
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
    return rc;
}
