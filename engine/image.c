/* Image decoding: JPEG (libjpeg-turbo) and PNG (libpng) to packed 8-bit RGB.
 *
 * Pixel values follow Pillow 9.4's Image.open(path).convert("RGB"):
 *  - JPEG: libjpeg defaults (islow IDCT, fancy upsampling), gray replicated,
 *    4-component files decoded as Adobe-inverted CMYK (Pillow always assumes
 *    the Adobe convention) and converted with Pillow's cmyk2rgb rounding.
 *  - PNG: 16-bit samples keep their high byte (Pillow's "RGB;16B" unpacker),
 *    palette/tRNS/alpha dropped in IMAGE_ALPHA_DROP mode, gamma ignored.
 *    One deliberate difference: Pillow 9.4 opens 16-bit grayscale as mode "I"
 *    and convert("RGB") then clips every value above 255 to white; we keep the
 *    high byte, as for the other 16-bit types.
 * EXIF orientation (JPEG APP1) is applied like PIL's ImageOps.exif_transpose. */
#include "image.h"
#include "image_labels.h"

#include "errors.h"

#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jerror.h>
#include <jpeglib.h>
#include <png.h>

#define PNG_MAX_SIDE 65535u
#define JPEG_MAX_SCANS 1000
#define IMAGE_FILE_MAX_BYTES ((size_t)1 << 30)

void image_decode_opts_default(struct image_decode_opts *o)
{
    if (!o)
        return;
    o->max_pixels = IMAGE_DEFAULT_MAX_PIXELS;
    o->alpha = IMAGE_ALPHA_DROP;
    o->apply_exif_orientation = 1;
}

void image_free(struct image_rgb8 *img)
{
    if (!img)
        return;
    free(img->data);
    img->data = NULL;
    img->width = img->height = 0;
}

/* ------------------------------------------------------------------------ */
/* Shared helpers                                                           */

static int check_pixels(const char *fmt_name, uint64_t w, uint64_t h, size_t max_pixels,
                        char *err, size_t errlen)
{
    if (w == 0 || h == 0)
        return set_err(err, errlen, "%s declares zero width or height (%llux%llu)", fmt_name,
                       (unsigned long long)w, (unsigned long long)h);
    uint64_t n = w * h;
    if (n > (uint64_t)max_pixels)
        return set_err(err, errlen, "%s declares %llux%llu = %.3g pixels, limit is %zu",
                       fmt_name, (unsigned long long)w, (unsigned long long)h, (double)n,
                       max_pixels);
    return 0;
}

static uint8_t composite(unsigned c, unsigned a, unsigned bg)
{
    return (uint8_t)((c * a + bg * (255u - a) + 127u) / 255u);
}

/* Converts one row of 8-bit samples with `ch` channels (1 gray, 2 gray+alpha,
 * 3 RGB, 4 RGBA) to RGB. */
static void row_to_rgb(const uint8_t *in, int ch, int w, enum image_alpha alpha, uint8_t *out)
{
    unsigned bg = alpha == IMAGE_ALPHA_WHITE ? 255u : 0u;
    int blend = alpha == IMAGE_ALPHA_BLACK || alpha == IMAGE_ALPHA_WHITE;
    for (int x = 0; x < w; x++, out += 3) {
        switch (ch) {
        case 1:
            out[0] = out[1] = out[2] = in[x];
            break;
        case 2: {
            uint8_t g = in[2 * x];
            if (blend)
                g = composite(g, in[2 * x + 1], bg);
            out[0] = out[1] = out[2] = g;
            break;
        }
        case 3:
            out[0] = in[3 * x];
            out[1] = in[3 * x + 1];
            out[2] = in[3 * x + 2];
            break;
        default: {
            const uint8_t *p = in + 4 * (size_t)x;
            if (blend) {
                out[0] = composite(p[0], p[3], bg);
                out[1] = composite(p[1], p[3], bg);
                out[2] = composite(p[2], p[3], bg);
            } else {
                out[0] = p[0];
                out[1] = p[1];
                out[2] = p[2];
            }
            break;
        }
        }
    }
}

/* ------------------------------------------------------------------------ */
/* EXIF orientation                                                         */

static unsigned rd16(const uint8_t *p, int le)
{
    return le ? (unsigned)p[0] | ((unsigned)p[1] << 8) : ((unsigned)p[0] << 8) | p[1];
}

static uint32_t rd32(const uint8_t *p, int le)
{
    return le ? (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
                    ((uint32_t)p[3] << 24)
              : ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) |
                    (uint32_t)p[3];
}

/* t: the TIFF structure following "Exif\0\0". Returns 1..8 (1 if absent/bad). */
static int exif_orientation(const uint8_t *t, size_t n)
{
    if (n < 8)
        return 1;
    int le;
    if (t[0] == 'I' && t[1] == 'I')
        le = 1;
    else if (t[0] == 'M' && t[1] == 'M')
        le = 0;
    else
        return 1;
    if (rd16(t + 2, le) != 42)
        return 1;
    uint32_t ifd = rd32(t + 4, le);
    if (ifd > n || n - ifd < 2)
        return 1;
    unsigned count = rd16(t + ifd, le);
    size_t pos = (size_t)ifd + 2;
    for (unsigned i = 0; i < count; i++, pos += 12) {
        if (pos > n || n - pos < 12)
            return 1;
        const uint8_t *e = t + pos;
        if (rd16(e, le) != 0x0112)
            continue;
        unsigned type = rd16(e + 2, le);
        uint32_t cnt = rd32(e + 4, le);
        unsigned v;
        if (type == 3 && cnt >= 1)        /* SHORT, stored in the value field */
            v = rd16(e + 8, le);
        else if (type == 4 && cnt == 1)   /* LONG (non-standard but seen) */
            v = (unsigned)rd32(e + 8, le);
        else
            return 1;
        return v >= 1 && v <= 8 ? (int)v : 1;
    }
    return 1;
}

/* Applies EXIF orientation o (2..8) to img, replacing its buffer. Mapping as in
 * PIL's ImageOps.exif_transpose: 2 mirror, 3 rotate 180, 4 flip, 5 transpose,
 * 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise. */
int image_apply_orientation(struct image_rgb8 *img, int o, char *err, size_t errlen)
{
    if (o <= 1 || o > 8)
        return 0;
    int w = img->width, h = img->height;
    int swap = o >= 5;
    int ow = swap ? h : w, oh = swap ? w : h;
    uint8_t *dst = malloc((size_t)w * (size_t)h * 3);
    if (!dst)
        return set_err(err, errlen, "out of memory rotating a %dx%d image", w, h);
    for (int y = 0; y < oh; y++) {
        uint8_t *d = dst + (size_t)y * ow * 3;
        for (int x = 0; x < ow; x++, d += 3) {
            int sx, sy;
            switch (o) {
            case 2: sx = w - 1 - x; sy = y; break;
            case 3: sx = w - 1 - x; sy = h - 1 - y; break;
            case 4: sx = x; sy = h - 1 - y; break;
            case 5: sx = y; sy = x; break;
            case 6: sx = y; sy = h - 1 - x; break;
            case 7: sx = w - 1 - y; sy = h - 1 - x; break;
            default: sx = w - 1 - y; sy = x; break;   /* 8 */
            }
            const uint8_t *s = img->data + ((size_t)sy * w + sx) * 3;
            d[0] = s[0];
            d[1] = s[1];
            d[2] = s[2];
        }
    }
    free(img->data);
    img->data = dst;
    img->width = ow;
    img->height = oh;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* JPEG                                                                     */

struct jpeg_err_ctx {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
};

static void jpeg_fail(j_common_ptr c)
{
    struct jpeg_err_ctx *e = (struct jpeg_err_ctx *)c->err;
    (*c->err->format_message)(c, e->msg);
    longjmp(e->jb, 1);
}

/* Warnings that mean the pixel data is truncated or corrupt become errors;
 * harmless ones (unknown JFIF revision, extraneous bytes before a marker, ...)
 * are ignored. Nothing is ever printed. */
static void jpeg_emit(j_common_ptr c, int level)
{
    if (level >= 0)
        return;
    switch (c->err->msg_code) {
    case JWRN_JPEG_EOF:
    case JWRN_HIT_MARKER:
    case JWRN_HUFF_BAD_CODE:
    case JWRN_MUST_RESYNC:
    case JWRN_NOT_SEQUENTIAL:
        jpeg_fail(c);
        break;
    default:
        c->err->num_warnings++;
        break;
    }
}

static void jpeg_output_nothing(j_common_ptr c)
{
    (void)c;
}

struct jpeg_progress_ctx {
    struct jpeg_progress_mgr pub;
};

/* Bounds the work a hostile progressive file can cause (thousands of scans). */
static void jpeg_progress(j_common_ptr c)
{
    if (c->is_decompressor && ((j_decompress_ptr)c)->input_scan_number > JPEG_MAX_SCANS) {
        struct jpeg_err_ctx *e = (struct jpeg_err_ctx *)c->err;
        snprintf(e->msg, sizeof e->msg, "JPEG has more than %d scans", JPEG_MAX_SCANS);
        longjmp(e->jb, 1);
    }
}

static uint8_t muldiv255(unsigned a, unsigned b)
{
    unsigned t = a * b + 128u;
    return (uint8_t)(((t >> 8) + t) >> 8);
}

static int decode_jpeg(const uint8_t *buf, size_t len, const struct image_decode_opts *o,
                       struct image_rgb8 *img, char *err, size_t errlen)
{
    struct jpeg_decompress_struct cinfo;
    struct jpeg_err_ctx jerr;
    struct jpeg_progress_ctx prog;
    uint8_t *volatile out = NULL;
    uint8_t *volatile row = NULL;
    volatile int created = 0;

    memset(&cinfo, 0, sizeof cinfo);
    cinfo.err = jpeg_std_error(&jerr.pub);
    jerr.pub.error_exit = jpeg_fail;
    jerr.pub.emit_message = jpeg_emit;
    jerr.pub.output_message = jpeg_output_nothing;
    jerr.msg[0] = 0;
    if (setjmp(jerr.jb)) {
        if (created)
            jpeg_destroy_decompress(&cinfo);
        free(out);
        free(row);
        if (strstr(jerr.msg, "Premature end"))
            return set_err(err, errlen, "truncated JPEG data (%s)", jerr.msg);
        return set_err(err, errlen, "invalid JPEG data: %s", jerr.msg[0] ? jerr.msg : "?");
    }
    jpeg_create_decompress(&cinfo);
    created = 1;
    memset(&prog, 0, sizeof prog);
    prog.pub.progress_monitor = jpeg_progress;
    cinfo.progress = &prog.pub;
    /* Caps libjpeg's own allocations (progressive coefficient buffers); beyond
     * this it fails with "Backing store not supported" instead of allocating. */
    cinfo.mem->max_memory_to_use = (long)(o->max_pixels > ((size_t)LONG_MAX - (64 << 20)) / 24
                                              ? LONG_MAX
                                              : o->max_pixels * 24 + (64 << 20));

    jpeg_mem_src(&cinfo, buf, (unsigned long)len);
    jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
    jpeg_read_header(&cinfo, TRUE);

    if (check_pixels("JPEG", cinfo.image_width, cinfo.image_height, o->max_pixels, err,
                     errlen) < 0) {
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    int nc = cinfo.num_components;
    switch (cinfo.jpeg_color_space) {
    case JCS_GRAYSCALE:
        cinfo.out_color_space = JCS_GRAYSCALE;
        break;
    case JCS_YCbCr:
    case JCS_RGB:
        cinfo.out_color_space = JCS_RGB;
        break;
    case JCS_CMYK:
    case JCS_YCCK:
        cinfo.out_color_space = JCS_CMYK;
        break;
    default:
        jpeg_destroy_decompress(&cinfo);
        return set_err(err, errlen, "unsupported JPEG colour space with %d components", nc);
    }

    int orientation = 1;
    if (o->apply_exif_orientation) {
        for (jpeg_saved_marker_ptr m = cinfo.marker_list; m; m = m->next) {
            if (m->marker == JPEG_APP0 + 1 && m->data_length >= 6 &&
                memcmp(m->data, "Exif\0\0", 6) == 0) {
                orientation = exif_orientation(m->data + 6, m->data_length - 6);
                break;
            }
        }
    }

    jpeg_start_decompress(&cinfo);
    int w = (int)cinfo.output_width, h = (int)cinfo.output_height;
    int oc = cinfo.output_components;
    if (w <= 0 || h <= 0 || (uint64_t)w * (uint64_t)h > o->max_pixels ||
        (oc != 1 && oc != 3 && oc != 4)) {
        jpeg_destroy_decompress(&cinfo);
        return set_err(err, errlen, "unexpected JPEG output geometry %dx%dx%d", w, h, oc);
    }
    out = malloc((size_t)w * (size_t)h * 3);
    row = malloc((size_t)w * (size_t)oc);
    if (!out || !row) {
        jpeg_destroy_decompress(&cinfo);
        free(out);
        free(row);
        return set_err(err, errlen, "out of memory decoding a %dx%d JPEG", w, h);
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW rp = row;
        int y = (int)cinfo.output_scanline;
        if (jpeg_read_scanlines(&cinfo, &rp, 1) != 1) {
            snprintf(jerr.msg, sizeof jerr.msg, "Premature end of JPEG file");
            longjmp(jerr.jb, 1);
        }
        uint8_t *d = out + (size_t)y * w * 3;
        if (oc == 4) {
            /* Pillow reads 4-component JPEGs as "CMYK;I" (Adobe inverted) and
             * converts CMYK to RGB with cmyk2rgb. */
            for (int x = 0; x < w; x++, d += 3) {
                const uint8_t *p = row + 4 * (size_t)x;
                unsigned nk = p[3];               /* = 255 - K after inversion */
                for (int c = 0; c < 3; c++) {
                    unsigned cc = 255u - p[c];
                    int v = (int)nk - (int)muldiv255(cc, nk);
                    d[c] = (uint8_t)(v < 0 ? 0 : v);
                }
            }
        } else {
            row_to_rgb(row, oc, w, IMAGE_ALPHA_DROP, d);
        }
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    created = 0;
    free(row);
    img->width = w;
    img->height = h;
    img->data = out;
    if (orientation != 1 && image_apply_orientation(img, orientation, err, errlen) < 0) {
        image_free(img);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* PNG                                                                      */

struct png_ctx {
    const uint8_t *buf;
    size_t len, pos;
    char msg[256];
};

static void png_fail(png_structp png, png_const_charp msg)
{
    struct png_ctx *c = png_get_error_ptr(png);
    if (c && msg && !c->msg[0])
        snprintf(c->msg, sizeof c->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void png_warn_nothing(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg;
}

static void png_read_mem(png_structp png, png_bytep dst, size_t n)
{
    struct png_ctx *c = png_get_io_ptr(png);
    if (n > c->len - c->pos) {
        snprintf(c->msg, sizeof c->msg, "truncated PNG data");
        png_error(png, "truncated PNG data");
    }
    memcpy(dst, c->buf + c->pos, n);
    c->pos += n;
}

static int decode_png(const uint8_t *buf, size_t len, const struct image_decode_opts *o,
                      struct image_rgb8 *img, char *err, size_t errlen)
{
    /* Check the declared size straight from the IHDR chunk, before libpng
     * allocates anything (decompression bombs fail fast). */
    if (len < 33 || memcmp(buf + 12, "IHDR", 4) != 0)
        return set_err(err, errlen, "truncated PNG data (no complete IHDR chunk)");
    uint32_t dw = rd32(buf + 16, 0), dh = rd32(buf + 20, 0);
    if (check_pixels("PNG", dw, dh, o->max_pixels, err, errlen) < 0)
        return -1;
    if (dw > PNG_MAX_SIDE || dh > PNG_MAX_SIDE)
        return set_err(err, errlen, "PNG declares %ux%u; sides above %u are not supported",
                       (unsigned)dw, (unsigned)dh, PNG_MAX_SIDE);

    struct png_ctx ctx = {.buf = buf, .len = len, .pos = 0, .msg = {0}};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &ctx, png_fail,
                                             png_warn_nothing);
    if (!png)
        return set_err(err, errlen, "out of memory creating the PNG decoder");
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        return set_err(err, errlen, "out of memory creating the PNG decoder");
    }
    uint8_t *volatile out = NULL;
    uint8_t *volatile tmp = NULL;
    png_bytep *volatile rows = NULL;
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        free(out);
        free(tmp);
        free(rows);
        if (strstr(ctx.msg, "truncated"))
            return set_err(err, errlen, "truncated PNG data");
        return set_err(err, errlen, "invalid PNG data: %s", ctx.msg[0] ? ctx.msg : "?");
    }
    png_set_read_fn(png, &ctx, png_read_mem);
    png_set_user_limits(png, PNG_MAX_SIDE, PNG_MAX_SIDE);
    /* Ancillary chunks that only carry metadata are skipped without being
     * decompressed or stored. */
    static const png_byte skip[] = "tEXt\0zTXt\0iTXt\0iCCP\0sPLT\0eXIf\0tIME\0hIST\0";
    png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, skip, (int)(sizeof skip / 5));
    png_read_info(png, info);

    png_uint_32 w = 0, h = 0;
    int bit_depth = 0, color_type = 0, interlace = 0;
    png_get_IHDR(png, info, &w, &h, &bit_depth, &color_type, &interlace, NULL, NULL);
    if (check_pixels("PNG", w, h, o->max_pixels, err, errlen) < 0 || w > PNG_MAX_SIDE ||
        h > PNG_MAX_SIDE) {
        png_destroy_read_struct(&png, &info, NULL);
        if (w > PNG_MAX_SIDE || h > PNG_MAX_SIDE)
            return set_err(err, errlen, "PNG declares %ux%u; sides above %u are not supported",
                           (unsigned)w, (unsigned)h, PNG_MAX_SIDE);
        return -1;
    }

    /* Expand palette, low-bit gray and tRNS to 8-bit gray/GA/RGB/RGBA. The
     * alpha produced from tRNS is ignored in IMAGE_ALPHA_DROP mode, as Pillow's
     * convert("RGB") ignores "transparency". */
    if (color_type == PNG_COLOR_TYPE_PALETTE || bit_depth < 8 ||
        png_get_valid(png, info, PNG_INFO_tRNS))
        png_set_expand(png);
    if (bit_depth == 16)
        png_set_strip_16(png);   /* keeps the high byte, like Pillow's ;16B unpackers */
    int passes = png_set_interlace_handling(png);
    png_read_update_info(png, info);
    int ch = png_get_channels(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    if (ch < 1 || ch > 4 || png_get_bit_depth(png, info) != 8 || rowbytes != (size_t)w * ch) {
        snprintf(ctx.msg, sizeof ctx.msg, "unexpected PNG layout after expansion");
        png_longjmp(png, 1);
    }

    out = malloc((size_t)w * h * 3);
    if (!out) {
        snprintf(ctx.msg, sizeof ctx.msg, "out of memory for a %ux%u image", (unsigned)w,
                 (unsigned)h);
        png_longjmp(png, 1);
    }
    if (passes == 1) {
        tmp = malloc(rowbytes);
        if (!tmp) {
            snprintf(ctx.msg, sizeof ctx.msg, "out of memory");
            png_longjmp(png, 1);
        }
        for (png_uint_32 y = 0; y < h; y++) {
            png_read_row(png, tmp, NULL);
            row_to_rgb(tmp, ch, (int)w, o->alpha, out + (size_t)y * w * 3);
        }
    } else {
        tmp = malloc(rowbytes * h);
        rows = malloc(sizeof(png_bytep) * h);
        if (!tmp || !rows) {
            snprintf(ctx.msg, sizeof ctx.msg, "out of memory for a %ux%u image", (unsigned)w,
                     (unsigned)h);
            png_longjmp(png, 1);
        }
        for (png_uint_32 y = 0; y < h; y++)
            rows[y] = tmp + rowbytes * y;
        png_read_image(png, rows);
        for (png_uint_32 y = 0; y < h; y++)
            row_to_rgb(rows[y], ch, (int)w, o->alpha, out + (size_t)y * w * 3);
    }
    /* Reads up to IEND: a file cut after the image data is still truncated. */
    png_read_end(png, NULL);
    png_destroy_read_struct(&png, &info, NULL);
    free(tmp);
    free(rows);
    img->width = (int)w;
    img->height = (int)h;
    img->data = out;
    return 0;
}

/* Label masks (image_labels.h): the same reader, no colour conversion. */
int image_labels_decode(const uint8_t *buf, size_t len, size_t max_pixels, uint8_t **labels,
                        int *width, int *height, char *err, size_t errlen)
{
    *labels = NULL;
    if (len < 8 || png_sig_cmp(buf, 0, 8))
        return set_err(err, errlen, "label mask is not a PNG");
    struct png_ctx ctx = {.buf = buf, .len = len, .pos = 0, .msg = {0}};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &ctx, png_fail,
                                             png_warn_nothing);
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
    png_set_read_fn(png, &ctx, png_read_mem);
    png_set_user_limits(png, PNG_MAX_SIDE, PNG_MAX_SIDE);
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

/* ------------------------------------------------------------------------ */

int image_decode(const uint8_t *buf, size_t len, const struct image_decode_opts *opts,
                 struct image_rgb8 *img, char *err, size_t errlen)
{
    if (!img)
        return set_err(err, errlen, "image_decode: no output image given");
    img->width = img->height = 0;
    img->data = NULL;
    struct image_decode_opts o;
    if (opts)
        o = *opts;
    else
        image_decode_opts_default(&o);
    if (o.max_pixels == 0)
        o.max_pixels = IMAGE_DEFAULT_MAX_PIXELS;
    if (o.alpha != IMAGE_ALPHA_DROP && o.alpha != IMAGE_ALPHA_BLACK &&
        o.alpha != IMAGE_ALPHA_WHITE)
        return set_err(err, errlen, "image_decode: invalid alpha mode %d", (int)o.alpha);
    if (!buf || len == 0)
        return set_err(err, errlen, "empty image data");

    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (len >= 8 && memcmp(buf, png_sig, 8) == 0)
        return decode_png(buf, len, &o, img, err, errlen);
    if (len >= 3 && buf[0] == 0xFF && buf[1] == 0xD8 && buf[2] == 0xFF)
        return decode_jpeg(buf, len, &o, img, err, errlen);

    if (len < 8 && memcmp(buf, png_sig, len) == 0)
        return set_err(err, errlen, "truncated PNG data (%zu bytes)", len);
    if (len < 3 && buf[0] == 0xFF && (len < 2 || buf[1] == 0xD8))
        return set_err(err, errlen, "truncated JPEG data (%zu bytes)", len);
    const char *what = NULL;
    if (len >= 6 && (memcmp(buf, "GIF87a", 6) == 0 || memcmp(buf, "GIF89a", 6) == 0))
        what = "GIF";
    else if (len >= 12 && memcmp(buf, "RIFF", 4) == 0 && memcmp(buf + 8, "WEBP", 4) == 0)
        what = "WebP";
    else if (len >= 2 && buf[0] == 'B' && buf[1] == 'M')
        what = "BMP";
    else if (len >= 4 && (memcmp(buf, "II*\0", 4) == 0 || memcmp(buf, "MM\0*", 4) == 0))
        what = "TIFF";
    if (what)
        return set_err(err, errlen, "%s images are not supported; convert to PNG or JPEG",
                       what);
    uint8_t b[4] = {0, 0, 0, 0};
    memcpy(b, buf, len < 4 ? len : 4);
    return set_err(err, errlen,
                   "unrecognised image format (first bytes %02x %02x %02x %02x); expected "
                   "JPEG or PNG",
                   b[0], b[1], b[2], b[3]);
}

int image_decode_file(const char *path, const struct image_decode_opts *o,
                      struct image_rgb8 *img, char *err, size_t errlen)
{
    if (img) {
        img->width = img->height = 0;
        img->data = NULL;
    }
    if (!path)
        return set_err(err, errlen, "image_decode_file: no path given");
    FILE *f = fopen(path, "rb");
    if (!f)
        return set_err(err, errlen, "cannot open image '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return set_err(err, errlen, "image '%s' is not a regular file", path);
    }
    if ((uint64_t)st.st_size > IMAGE_FILE_MAX_BYTES) {
        fclose(f);
        return set_err(err, errlen, "image '%s' is %lld bytes, limit is %zu", path,
                       (long long)st.st_size, IMAGE_FILE_MAX_BYTES);
    }
    size_t n = (size_t)st.st_size;
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) {
        fclose(f);
        return set_err(err, errlen, "out of memory reading image '%s'", path);
    }
    size_t got = fread(buf, 1, n, f);
    int rerr = ferror(f);
    fclose(f);
    if (rerr || got != n) {
        free(buf);
        return set_err(err, errlen, "cannot read image '%s'", path);
    }
    char e2[ERR_LEN];
    e2[0] = 0;
    int rc = image_decode(buf, n, o, img, e2, sizeof e2);
    free(buf);
    if (rc < 0)
        return set_err(err, errlen, "%s: %s", path, e2);
    return 0;
}
