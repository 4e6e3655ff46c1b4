/* libFuzzer target: image_decode (4M-pixel limit) and, on success, the eval
 * preprocessing and a small square resize of the decoded image; the label
 * mask decoder on the same bytes. */
#include "image.h"
#include "image_labels.h"
#include "preprocess.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static float g_out[3 * 224 * 224];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct image_decode_opts o;
    image_decode_opts_default(&o);
    o.max_pixels = 4u * 1024u * 1024u;
    /* Exercise the alpha modes too, chosen by the input length. */
    o.alpha = (enum image_alpha)(size % 3);
    struct image_rgb8 img;
    char err[512];
    uint8_t *labels;
    int lw, lh;
    if (image_labels_decode(data, size, o.max_pixels, &labels, &lw, &lh, err, sizeof err) == 0) {
        if (!labels || lw <= 0 || lh <= 0 || (size_t)lw * (size_t)lh > o.max_pixels)
            __builtin_trap();
        free(labels);
    } else if (labels != NULL || strlen(err) >= sizeof err) {
        __builtin_trap();
    }
    if (image_decode(data, size, &o, &img, err, sizeof err) != 0) {
        if (strlen(err) >= sizeof err)
            __builtin_trap();
        if (img.data != NULL)
            __builtin_trap();
        return 0;
    }
    if (img.width <= 0 || img.height <= 0 ||
        (size_t)img.width * (size_t)img.height > o.max_pixels)
        __builtin_trap();
    struct preprocess_config pc = {256, 224, {0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f}};
    if (preprocess_eval(&img, &pc, g_out, err, sizeof err) != 0)
        __builtin_trap();
    if (preprocess_square(&img, 32, pc.mean, pc.std, g_out, err, sizeof err) != 0)
        __builtin_trap();
    image_free(&img);
    return 0;
}
