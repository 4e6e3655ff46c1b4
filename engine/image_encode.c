/* PNG encoding into a growing memory buffer (image_encode.h). */
#include "image_encode.h"

#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"

#define PNG_ENCODE_MAX_SIDE 16384

struct png_sink {
    uint8_t *buf;
    size_t len, cap;
    char msg[256];
};

static void sink_fail(png_structp png, png_const_charp msg)
{
    struct png_sink *s = png_get_error_ptr(png);
    if (!s->msg[0]) snprintf(s->msg, sizeof s->msg, "%s", msg ? msg : "?");
    png_longjmp(png, 1);
}

static void sink_warn(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg;
}

static void sink_write(png_structp png, png_bytep data, size_t n)
{
    struct png_sink *s = png_get_io_ptr(png);
    if (n > s->cap - s->len) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap - s->len < n) cap *= 2;
        uint8_t *b = realloc(s->buf, cap);
        if (!b) png_error(png, "out of memory");
        s->buf = b;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, data, n);
    s->len += n;
}

static void sink_flush(png_structp png)
{
    (void)png;
}

int image_png_encode(const uint8_t *pix, int width, int height, int channels, uint8_t **out,
                     size_t *out_len, char *err, size_t errlen)
{
    *out = NULL;
    *out_len = 0;
    if (width < 1 || height < 1 || width > PNG_ENCODE_MAX_SIDE || height > PNG_ENCODE_MAX_SIDE)
        return set_err(err, errlen, "PNG size %dx%d is outside 1..%d", width, height,
                       PNG_ENCODE_MAX_SIDE);
    if (channels != 1 && channels != 3)
        return set_err(err, errlen, "PNG with %d channels: only 1 (gray) or 3 (RGB)", channels);
    struct png_sink s = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &s, sink_fail, sink_warn);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        return set_err(err, errlen, "out of memory creating the PNG encoder");
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(s.buf);
        return set_err(err, errlen, "PNG encoding failed: %s", s.msg);
    }
    png_set_write_fn(png, &s, sink_write, sink_flush);
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8,
                 channels == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    /* Pictures are made per request: fast compression beats small files. */
    png_set_compression_level(png, 3);
    png_write_info(png, info);
    const size_t stride = (size_t)width * (size_t)channels;
    for (int y = 0; y < height; y++) png_write_row(png, (png_const_bytep)(pix + (size_t)y * stride));
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    *out = s.buf;
    *out_len = s.len;
    return 0;
}
