/* Label mask decoding; see image_labels.h. */
#include "image_labels.h"

#include <png.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"

#define LABELS_MAX_SIDE 16384

struct lab_ctx {
    const uint8_t *buf;
    size_t len, pos;
    char msg[160];
};

static void lab_fail(png_structp png, png_const_charp msg)
{
    struct lab_ctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void lab_warn(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg;
}

static void lab_read(png_structp png, png_bytep dst, size_t n)
{
    struct lab_ctx *c = png_get_io_ptr(png);
    if (n > c->len - c->pos) png_error(png, "truncated PNG data");
    memcpy(dst, c->buf + c->pos, n);
    c->pos += n;
}

int image_labels_decode(const uint8_t *buf, size_t len, size_t max_pixels, uint8_t **labels,
                        int *width, int *height, char *err, size_t errlen)
{
    *labels = NULL;
    if (len < 8 || png_sig_cmp(buf, 0, 8))
        return set_err(err, errlen, "label mask is not a PNG");
    struct lab_ctx ctx = {.buf = buf, .len = len};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &ctx, lab_fail, lab_warn);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        return set_err(err, errlen, "label mask: out of memory");
    }
    uint8_t *volatile out = NULL;
    png_bytep *volatile rows = NULL;
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        free(out);
        free(rows);
        return set_err(err, errlen, "label mask: %s", ctx.msg[0] ? ctx.msg : "bad PNG");
    }
    png_set_read_fn(png, &ctx, lab_read);
    png_set_user_limits(png, LABELS_MAX_SIDE, LABELS_MAX_SIDE);
    png_read_info(png, info);
    png_uint_32 w = 0, h = 0;
    int depth = 0, type = 0;
    png_get_IHDR(png, info, &w, &h, &depth, &type, NULL, NULL, NULL);
    const bool gray8 = type == PNG_COLOR_TYPE_GRAY && depth == 8;
    if (!gray8 && type != PNG_COLOR_TYPE_PALETTE) {
        snprintf(ctx.msg, sizeof ctx.msg, "must be an 8-bit grey or a palette PNG (one label"
                 " per pixel); got colour type %d, bit depth %d", type, depth);
        png_longjmp(png, 1);
    }
    if ((size_t)w * h > max_pixels) {
        snprintf(ctx.msg, sizeof ctx.msg, "%ux%u pixels exceed the limit of %zu", (unsigned)w,
                 (unsigned)h, max_pixels);
        png_longjmp(png, 1);
    }
    if (depth < 8) png_set_packing(png); /* palette indices, one byte each, unscaled */
    const int passes = png_set_interlace_handling(png);
    png_read_update_info(png, info);
    if (png_get_rowbytes(png, info) != w) {
        snprintf(ctx.msg, sizeof ctx.msg, "unexpected row layout");
        png_longjmp(png, 1);
    }
    out = malloc((size_t)w * h);
    rows = malloc(h * sizeof *rows);
    if (!out || !rows) {
        snprintf(ctx.msg, sizeof ctx.msg, "out of memory");
        png_longjmp(png, 1);
    }
    for (png_uint_32 y = 0; y < h; y++) rows[y] = out + (size_t)y * w;
    for (int p = 0; p < passes; p++)
        for (png_uint_32 y = 0; y < h; y++) png_read_row(png, rows[y], NULL);
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    *labels = out;
    *width = (int)w;
    *height = (int)h;
    return 0;
}
