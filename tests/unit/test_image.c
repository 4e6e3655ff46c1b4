/* Unit tests for engine/image.c: PNG and JPEG decoding, alpha modes, EXIF
 * orientation and hostile inputs. Test images are encoded at run time with
 * libpng / libjpeg. */
#include "check.h"
#include "image.h"
#include "image_encode.h"

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jpeglib.h>
#include <png.h>
#include "clock.h"


/* ------------------------------------------------------------------------ */
/* Growable byte buffer                                                     */

struct buf {
    uint8_t *p;
    size_t n, cap;
};

static void buf_put(struct buf *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->n + n)
            c *= 2;
        uint8_t *q = realloc(b->p, c);
        if (!q) {
            fprintf(stderr, "out of memory in test\n");
            exit(2);
        }
        b->p = q;
        b->cap = c;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void put_be32(struct buf *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    buf_put(b, x, 4);
}

static uint32_t crc32_bytes(uint32_t crc, const uint8_t *d, size_t n)
{
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= d[i];
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static void put_chunk(struct buf *b, const char *type, const uint8_t *d, uint32_t n)
{
    put_be32(b, n);
    buf_put(b, type, 4);
    if (n)
        buf_put(b, d, n);
    uint32_t crc = crc32_bytes(0, (const uint8_t *)type, 4);
    crc = crc32_bytes(crc, d, n);
    put_be32(b, crc);
}

/* ------------------------------------------------------------------------ */
/* Encoders                                                                 */

struct png_wctx {
    struct buf out;
    jmp_buf jb;
};

static void png_w_write(png_structp png, png_bytep d, size_t n)
{
    struct png_wctx *c = png_get_io_ptr(png);
    buf_put(&c->out, d, n);
}

static void png_w_flush(png_structp png)
{
    (void)png;
}

static void png_w_error(png_structp png, png_const_charp msg)
{
    fprintf(stderr, "test PNG encoder error: %s\n", msg);
    png_longjmp(png, 1);
}

static void png_w_warn(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg;
}

/* raw: h rows in PNG layout (rowbytes = ceil(w * channels * bd / 8)). */
static uint8_t *png_encode(int w, int h, int ct, int bd, int interlace, const uint8_t *raw,
                           const png_color *pal, int npal, const png_byte *trns, int ntrns,
                           const png_color_16 *trns_col, size_t *len)
{
    struct png_wctx *c = calloc(1, sizeof *c);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, c, png_w_error, png_w_warn);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(c->out.p);
        free(c);
        return NULL;
    }
    png_set_write_fn(png, c, png_w_write, png_w_flush);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, bd, ct,
                 interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (pal)
        png_set_PLTE(png, info, pal, npal);
    if (trns || trns_col)
        png_set_tRNS(png, info, trns, ntrns, trns_col);
    png_write_info(png, info);
    int ch = ct == PNG_COLOR_TYPE_GRAY || ct == PNG_COLOR_TYPE_PALETTE ? 1
             : ct == PNG_COLOR_TYPE_GRAY_ALPHA                         ? 2
             : ct == PNG_COLOR_TYPE_RGB                                ? 3
                                                                       : 4;
    size_t rowbytes = ((size_t)w * ch * bd + 7) / 8;
    png_bytep *rows = malloc(sizeof(png_bytep) * (size_t)h);
    for (int y = 0; y < h; y++)
        rows[y] = (png_bytep)(raw + rowbytes * y);
    png_write_image(png, rows);
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    free(rows);
    uint8_t *p = c->out.p;
    *len = c->out.n;
    free(c);
    return p;
}

struct jpeg_wctx {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
};

static void jpeg_w_error(j_common_ptr c)
{
    char msg[JMSG_LENGTH_MAX];
    (*c->err->format_message)(c, msg);
    fprintf(stderr, "test JPEG encoder error: %s\n", msg);
    longjmp(((struct jpeg_wctx *)c->err)->jb, 1);
}

/* pix: h * w * comps samples. */
static uint8_t *jpeg_encode(int w, int h, int comps, J_COLOR_SPACE cs, const uint8_t *pix,
                            int quality, int progressive, int sub420, size_t *len)
{
    struct jpeg_compress_struct ci;
    struct jpeg_wctx je;
    unsigned char *volatile m = NULL;
    unsigned long size = 0;
    ci.err = jpeg_std_error(&je.pub);
    je.pub.error_exit = jpeg_w_error;
    if (setjmp(je.jb)) {
        jpeg_destroy_compress(&ci);
        free(m);
        return NULL;
    }
    jpeg_create_compress(&ci);
    jpeg_mem_dest(&ci, (unsigned char **)&m, &size);
    ci.image_width = (JDIMENSION)w;
    ci.image_height = (JDIMENSION)h;
    ci.input_components = comps;
    ci.in_color_space = cs;
    jpeg_set_defaults(&ci);
    jpeg_set_quality(&ci, quality, TRUE);
    if (!sub420)
        for (int i = 0; i < ci.num_components; i++)
            ci.comp_info[i].h_samp_factor = ci.comp_info[i].v_samp_factor = 1;
    if (progressive)
        jpeg_simple_progression(&ci);
    jpeg_start_compress(&ci, TRUE);
    while (ci.next_scanline < ci.image_height) {
        JSAMPROW r = (JSAMPROW)(pix + (size_t)ci.next_scanline * w * comps);
        jpeg_write_scanlines(&ci, &r, 1);
    }
    jpeg_finish_compress(&ci);
    jpeg_destroy_compress(&ci);
    uint8_t *out = malloc(size);
    memcpy(out, m, size);
    free(m);
    *len = size;
    return out;
}

/* Inserts an APP1 "Exif" segment right after SOI. */
static uint8_t *jpeg_with_app1(const uint8_t *j, size_t n, const uint8_t *payload, size_t pn,
                               size_t *len)
{
    struct buf b = {0};
    buf_put(&b, j, 2);
    uint8_t hdr[4] = {0xFF, 0xE1, (uint8_t)((pn + 2) >> 8), (uint8_t)(pn + 2)};
    buf_put(&b, hdr, 4);
    buf_put(&b, payload, pn);
    buf_put(&b, j + 2, n - 2);
    *len = b.n;
    return b.p;
}

/* "Exif\0\0" + a TIFF header with one IFD0 entry: Orientation = o. */
static size_t exif_payload(uint8_t *p, int o, int big_endian)
{
    memcpy(p, "Exif\0\0", 6);
    uint8_t *t = p + 6;
    memset(t, 0, 26);
    if (big_endian) {
        memcpy(t, "MM\0*\0\0\0\x08", 8);
        t[8] = 0, t[9] = 1;                  /* 1 entry */
        t[10] = 0x01, t[11] = 0x12;          /* tag 0x0112 */
        t[12] = 0, t[13] = 3;                /* SHORT */
        t[14] = 0, t[15] = 0, t[16] = 0, t[17] = 1;
        t[18] = 0, t[19] = (uint8_t)o;
    } else {
        memcpy(t, "II*\0\x08\0\0\0", 8);
        t[8] = 1, t[9] = 0;
        t[10] = 0x12, t[11] = 0x01;
        t[12] = 3, t[13] = 0;
        t[14] = 1, t[15] = 0, t[16] = 0, t[17] = 0;
        t[18] = (uint8_t)o, t[19] = 0;
    }
    /* next IFD offset 0 (t[22..25]) */
    return 6 + 26;
}

/* ------------------------------------------------------------------------ */

static int decode(const uint8_t *d, size_t n, enum image_alpha alpha, struct image_rgb8 *img,
                  char *err)
{
    struct image_decode_opts o;
    image_decode_opts_default(&o);
    o.alpha = alpha;
    err[0] = 0;
    return image_decode(d, n, &o, img, err, 512);
}

static int px_eq(const struct image_rgb8 *img, int x, int y, int r, int g, int b)
{
    const uint8_t *p = img->data + ((size_t)y * img->width + x) * 3;
    return p[0] == r && p[1] == g && p[2] == b;
}

static int px_near(const struct image_rgb8 *img, int x, int y, int r, int g, int b, int tol)
{
    const uint8_t *p = img->data + ((size_t)y * img->width + x) * 3;
    return abs(p[0] - r) <= tol && abs(p[1] - g) <= tol && abs(p[2] - b) <= tol;
}

static void test_png_rgb(void)
{
    const int w = 13, h = 7;
    uint8_t raw[13 * 7 * 3];
    for (int i = 0; i < w * h * 3; i++)
        raw[i] = (uint8_t)(i * 37 + 11);
    for (int il = 0; il < 2; il++) {
        size_t n;
        uint8_t *png = png_encode(w, h, PNG_COLOR_TYPE_RGB, 8, il, raw, NULL, 0, NULL, 0, NULL, &n);
        struct image_rgb8 img;
        char err[512];
        int rc = decode(png, n, IMAGE_ALPHA_DROP, &img, err);
        CHECK(rc == 0, "rgb png (interlace %d): %s", il, err);
        if (rc == 0) {
            CHECK(img.width == w && img.height == h, "size %dx%d", img.width, img.height);
            CHECK(memcmp(img.data, raw, sizeof raw) == 0, "rgb png pixels differ (interlace %d)", il);
        }
        image_free(&img);
        /* Same pixels from a file on disk. */
        if (il == 0) {
            char path[] = "/tmp/test_image_XXXXXX";
            int fd = mkstemp(path);
            CHECK(fd >= 0, "mkstemp");
            if (fd >= 0) {
                CHECK(write(fd, png, n) == (ssize_t)n, "write");
                close(fd);
                rc = image_decode_file(path, NULL, &img, err, sizeof err);
                CHECK(rc == 0 && img.width == w && memcmp(img.data, raw, sizeof raw) == 0,
                      "decode_file: %s", err);
                image_free(&img);
                unlink(path);
            }
            rc = image_decode_file("/nonexistent/x.png", NULL, &img, err, sizeof err);
            CHECK(rc < 0 && strstr(err, "/nonexistent/x.png") && img.data == NULL,
                  "missing file: %s", err);
        }
        free(png);
    }
}

static void test_png_gray(void)
{
    const int w = 9, h = 4;
    for (int bd = 1; bd <= 16; bd *= 2) {
        int maxv = (1 << bd) - 1;
        size_t rowbytes = ((size_t)w * bd + 7) / 8;
        uint8_t raw[9 * 4 * 2];
        memset(raw, 0, sizeof raw);
        int vals[9 * 4];
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                int v = (x * 7 + y * 5 + bd) % (maxv + 1);
                if (bd == 16)
                    v = (x * 7919 + y * 104729) & 0xFFFF;
                vals[y * w + x] = v;
                uint8_t *r = raw + rowbytes * y;
                if (bd == 16) {
                    r[2 * x] = (uint8_t)(v >> 8);
                    r[2 * x + 1] = (uint8_t)v;
                } else if (bd == 8) {
                    r[x] = (uint8_t)v;
                } else {
                    int per = 8 / bd;
                    int shift = 8 - bd * (x % per + 1);
                    r[x / per] |= (uint8_t)(v << shift);
                }
            }
        for (int il = 0; il < 2; il++) {
            size_t n;
            uint8_t *png = png_encode(w, h, PNG_COLOR_TYPE_GRAY, bd, il, raw, NULL, 0, NULL, 0,
                                      NULL, &n);
            struct image_rgb8 img;
            char err[512];
            int rc = decode(png, n, IMAGE_ALPHA_DROP, &img, err);
            CHECK(rc == 0, "gray%d png: %s", bd, err);
            int bad = 0;
            for (int i = 0; rc == 0 && i < w * h; i++) {
                /* Low bit depths scale by bit replication (v * 255 / max);
                 * 16-bit keeps the high byte. */
                int e = bd == 16 ? vals[i] >> 8 : vals[i] * 255 / maxv;
                const uint8_t *p = img.data + 3 * i;
                bad += p[0] != e || p[1] != e || p[2] != e;
            }
            CHECK(bad == 0, "gray%d png (interlace %d): %d wrong pixels", bd, il, bad);
            image_free(&img);
            free(png);
        }
    }
}

static void test_png_gray_alpha(void)
{
    const int w = 4, h = 2;
    uint8_t raw[4 * 2 * 2] = {0, 0, 255, 255, 200, 100, 50, 0, 10, 128, 255, 128, 128, 1, 77, 254};
    size_t n;
    uint8_t *png = png_encode(w, h, PNG_COLOR_TYPE_GRAY_ALPHA, 8, 0, raw, NULL, 0, NULL, 0, NULL, &n);
    for (int m = 0; m < 3; m++) {
        struct image_rgb8 img;
        char err[512];
        int rc = decode(png, n, (enum image_alpha)m, &img, err);
        CHECK(rc == 0, "gray+alpha: %s", err);
        int bad = 0;
        for (int i = 0; rc == 0 && i < w * h; i++) {
            int g = raw[2 * i], a = raw[2 * i + 1];
            int e = m == IMAGE_ALPHA_DROP    ? g
                    : m == IMAGE_ALPHA_BLACK ? (g * a + 127) / 255
                                             : (g * a + 255 * (255 - a) + 127) / 255;
            bad += !px_eq(&img, i % w, i / w, e, e, e);
        }
        CHECK(bad == 0, "gray+alpha mode %d: %d wrong pixels", m, bad);
        image_free(&img);
    }
    free(png);
}

static void test_png_rgba(void)
{
    const int w = 5, h = 3;
    uint8_t raw[5 * 3 * 4];
    for (int i = 0; i < w * h; i++) {
        raw[4 * i] = (uint8_t)(i * 17);
        raw[4 * i + 1] = (uint8_t)(255 - i * 13);
        raw[4 * i + 2] = (uint8_t)(i * 91);
        raw[4 * i + 3] = (uint8_t)(i * 18);   /* includes 0 */
    }
    raw[3] = 255;
    for (int il = 0; il < 2; il++) {
        size_t n;
        uint8_t *png = png_encode(w, h, PNG_COLOR_TYPE_RGBA, 8, il, raw, NULL, 0, NULL, 0, NULL, &n);
        for (int m = 0; m < 3; m++) {
            struct image_rgb8 img;
            char err[512];
            int rc = decode(png, n, (enum image_alpha)m, &img, err);
            CHECK(rc == 0, "rgba: %s", err);
            int bad = 0;
            for (int i = 0; rc == 0 && i < w * h; i++) {
                int a = raw[4 * i + 3], e[3];
                for (int c = 0; c < 3; c++) {
                    int v = raw[4 * i + c];
                    e[c] = m == IMAGE_ALPHA_DROP    ? v
                           : m == IMAGE_ALPHA_BLACK ? (v * a + 127) / 255
                                                    : (v * a + 255 * (255 - a) + 127) / 255;
                }
                bad += !px_eq(&img, i % w, i / w, e[0], e[1], e[2]);
            }
            CHECK(bad == 0, "rgba mode %d interlace %d: %d wrong pixels", m, il, bad);
            image_free(&img);
        }
        free(png);
    }
}

static void test_png_rgb16_and_trns(void)
{
    /* 16-bit RGBA: high byte of each sample. */
    const int w = 3, h = 2;
    uint8_t raw[3 * 2 * 8];
    for (int i = 0; i < (int)sizeof raw; i++)
        raw[i] = (uint8_t)(i * 29 + 3);
    size_t n;
    uint8_t *png = png_encode(w, h, PNG_COLOR_TYPE_RGBA, 16, 1, raw, NULL, 0, NULL, 0, NULL, &n);
    struct image_rgb8 img;
    char err[512];
    int rc = decode(png, n, IMAGE_ALPHA_DROP, &img, err);
    CHECK(rc == 0, "rgba16: %s", err);
    int bad = 0;
    for (int i = 0; rc == 0 && i < w * h; i++)
        bad += !px_eq(&img, i % w, i / w, raw[8 * i], raw[8 * i + 2], raw[8 * i + 4]);
    CHECK(bad == 0, "rgba16: %d wrong pixels", bad);
    image_free(&img);
    free(png);

    /* 16-bit RGB + 16-bit gray with a tRNS colour: ignored in DROP mode. */
    uint8_t raw3[3 * 2 * 6];
    for (int i = 0; i < (int)sizeof raw3; i++)
        raw3[i] = (uint8_t)(i * 53 + 1);
    png_color_16 tc = {0, (png_uint_16)((raw3[0] << 8) | raw3[1]),
                       (png_uint_16)((raw3[2] << 8) | raw3[3]),
                       (png_uint_16)((raw3[4] << 8) | raw3[5]), 0};
    png = png_encode(w, h, PNG_COLOR_TYPE_RGB, 16, 0, raw3, NULL, 0, NULL, 0, &tc, &n);
    rc = decode(png, n, IMAGE_ALPHA_DROP, &img, err);
    CHECK(rc == 0, "rgb16+tRNS: %s", err);
    bad = 0;
    for (int i = 0; rc == 0 && i < w * h; i++)
        bad += !px_eq(&img, i % w, i / w, raw3[6 * i], raw3[6 * i + 2], raw3[6 * i + 4]);
    CHECK(bad == 0, "rgb16+tRNS drop: %d wrong pixels", bad);
    image_free(&img);
    /* composited on white: the transparent pixel (0) becomes white. */
    rc = decode(png, n, IMAGE_ALPHA_WHITE, &img, err);
    CHECK(rc == 0 && px_eq(&img, 0, 0, 255, 255, 255) &&
              px_eq(&img, 1, 0, raw3[6], raw3[8], raw3[10]),
          "rgb16+tRNS white: %s", err);
    image_free(&img);
    free(png);
}

static void test_png_palette(void)
{
    png_color pal[5] = {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {10, 20, 30}, {200, 150, 100}};
    png_byte trns[3] = {0, 128, 255};   /* entries 3, 4 opaque */
    const int w = 7, h = 3;
    int idx[7 * 3];
    for (int i = 0; i < w * h; i++)
        idx[i] = (i * 3 + i / 7) % 5;
    for (int bd = 4; bd <= 8; bd += 4) {
        size_t rowbytes = ((size_t)w * bd + 7) / 8;
        uint8_t raw[7 * 3];
        memset(raw, 0, sizeof raw);
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                if (bd == 8)
                    raw[rowbytes * y + x] = (uint8_t)idx[y * w + x];
                else
                    raw[rowbytes * y + x / 2] |= (uint8_t)(idx[y * w + x] << (x % 2 ? 0 : 4));
            }
        for (int il = 0; il < 2; il++) {
            size_t n;
            uint8_t *png = png_encode(w, h, PNG_COLOR_TYPE_PALETTE, bd, il, raw, pal, 5, trns, 3,
                                      NULL, &n);
            for (int m = 0; m < 3; m++) {
                struct image_rgb8 img;
                char err[512];
                int rc = decode(png, n, (enum image_alpha)m, &img, err);
                CHECK(rc == 0, "palette: %s", err);
                int bad = 0;
                for (int i = 0; rc == 0 && i < w * h; i++) {
                    const png_color *c = &pal[idx[i]];
                    int a = idx[i] < 3 ? trns[idx[i]] : 255;
                    int v[3] = {c->red, c->green, c->blue}, e[3];
                    for (int k = 0; k < 3; k++)
                        e[k] = m == IMAGE_ALPHA_DROP    ? v[k]
                               : m == IMAGE_ALPHA_BLACK ? (v[k] * a + 127) / 255
                                                        : (v[k] * a + 255 * (255 - a) + 127) / 255;
                    bad += !px_eq(&img, i % w, i / w, e[0], e[1], e[2]);
                }
                CHECK(bad == 0, "palette bd %d interlace %d mode %d: %d wrong", bd, il, m, bad);
                image_free(&img);
            }
            free(png);
        }
    }
}

/* A hand-built PNG: signature, IHDR with the given fields, one IDAT, IEND. */
static uint8_t *png_handmade(uint32_t w, uint32_t h, int bd, int ct, size_t *len)
{
    struct buf b = {0};
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    buf_put(&b, sig, 8);
    uint8_t ihdr[13] = {(uint8_t)(w >> 24), (uint8_t)(w >> 16), (uint8_t)(w >> 8), (uint8_t)w,
                        (uint8_t)(h >> 24), (uint8_t)(h >> 16), (uint8_t)(h >> 8), (uint8_t)h,
                        (uint8_t)bd, (uint8_t)ct, 0, 0, 0};
    put_chunk(&b, "IHDR", ihdr, 13);
    /* zlib stream of a few zero bytes (stored block). */
    static const uint8_t idat[] = {0x78, 0x01, 0x01, 0x04, 0x00, 0xfb, 0xff,
                                   0, 0, 0, 0, 0x00, 0x00, 0x00, 0x01};
    put_chunk(&b, "IDAT", idat, sizeof idat);
    put_chunk(&b, "IEND", NULL, 0);
    *len = b.n;
    return b.p;
}

static void test_png_bad(void)
{
    struct image_rgb8 img;
    char err[512];
    size_t n;

    /* Declared 100000 x 100000: rejected from the header alone, fast. */
    uint8_t *p = png_handmade(100000, 100000, 8, 2, &n);
    double t0 = clock_now_s();
    int rc = decode(p, n, IMAGE_ALPHA_DROP, &img, err);
    double dt = clock_now_s() - t0;
    CHECK(rc < 0 && strstr(err, "100000x100000") && strstr(err, "limit"), "bomb: %s", err);
    CHECK(dt < 0.05, "bomb rejection took %.3f s", dt);
    CHECK(img.data == NULL && img.width == 0, "bomb left an image");
    free(p);

    /* Within the pixel limit but a side above 65535. */
    p = png_handmade(70000, 2, 8, 2, &n);
    rc = decode(p, n, IMAGE_ALPHA_DROP, &img, err);
    CHECK(rc < 0 && strstr(err, "65535"), "wide png: %s", err);
    free(p);

    /* Zero dimensions. */
    p = png_handmade(0, 10, 8, 2, &n);
    rc = decode(p, n, IMAGE_ALPHA_DROP, &img, err);
    CHECK(rc < 0 && strstr(err, "zero"), "zero width: %s", err);
    free(p);
    p = png_handmade(10, 0, 8, 2, &n);
    rc = decode(p, n, IMAGE_ALPHA_DROP, &img, err);
    CHECK(rc < 0 && strstr(err, "zero"), "zero height: %s", err);
    free(p);

    /* Invalid bit depth for RGB: libpng's IHDR validation. */
    p = png_handmade(4, 4, 3, 2, &n);
    rc = decode(p, n, IMAGE_ALPHA_DROP, &img, err);
    CHECK(rc < 0 && img.data == NULL, "bit depth 3: %s", err);
    free(p);

    /* Handmade IDAT too short for 4x4: an error, not garbage. */
    p = png_handmade(4, 4, 8, 2, &n);
    rc = decode(p, n, IMAGE_ALPHA_DROP, &img, err);
    CHECK(rc < 0, "short IDAT decoded");
    image_free(&img);
    free(p);

    /* max_pixels from the options. */
    const int w = 64, h = 64;
    uint8_t *raw = calloc((size_t)w * h * 3, 1);
    for (int i = 0; i < w * h * 3; i++)
        raw[i] = (uint8_t)(i ^ (i >> 7));
    uint8_t *png = png_encode(w, h, PNG_COLOR_TYPE_RGB, 8, 0, raw, NULL, 0, NULL, 0, NULL, &n);
    struct image_decode_opts o;
    image_decode_opts_default(&o);
    o.max_pixels = 4095;
    rc = image_decode(png, n, &o, &img, err, sizeof err);
    CHECK(rc < 0 && strstr(err, "limit is 4095"), "max_pixels: %s", err);
    o.max_pixels = 4096;
    rc = image_decode(png, n, &o, &img, err, sizeof err);
    CHECK(rc == 0, "max_pixels exact: %s", err);
    image_free(&img);

    /* Truncation at many cut points, including just the IEND chunk. */
    int fails = 0, total = 0;
    size_t cuts[] = {1, 7, 8, 12, 16, 20, 29, 32, 33, 34, 40, 50, n / 4, n / 2, n - 40,
                     n - 13, n - 12, n - 5, n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        if (cuts[i] >= n)
            continue;
        total++;
        rc = decode(png, cuts[i], IMAGE_ALPHA_DROP, &img, err);
        if (rc == 0) {
            fails++;
            fprintf(stderr, "  truncated PNG at %zu/%zu decoded\n", cuts[i], n);
            image_free(&img);
        } else if (!strstr(err, "truncated") && !strstr(err, "PNG")) {
            fprintf(stderr, "  odd message at cut %zu: %s\n", cuts[i], err);
        }
    }
    CHECK(fails == 0, "%d of %d truncated PNGs decoded", fails, total);
    rc = decode(png, n / 2, IMAGE_ALPHA_DROP, &img, err);
    CHECK(rc < 0 && strstr(err, "truncated"), "truncation message: %s", err);

    /* Every byte cut: never crashes (run under ASan), never succeeds. */
    fails = 0;
    for (size_t cut = 0; cut < n; cut++) {
        rc = decode(png, cut, IMAGE_ALPHA_DROP, &img, err);
        if (rc == 0) {
            fails++;
            image_free(&img);
        }
    }
    CHECK(fails == 0, "%d prefix cuts of the PNG decoded", fails);

    /* Corrupt bytes in the middle (IDAT data, so the CRC no longer matches). */
    uint8_t *q = malloc(n);
    memcpy(q, png, n);
    for (size_t i = n / 2; i < n / 2 + 8; i++)
        q[i] ^= 0x5A;
    rc = decode(q, n, IMAGE_ALPHA_DROP, &img, err);
    CHECK(rc < 0 && img.data == NULL, "corrupt PNG decoded");
    /* Corrupt IHDR CRC. */
    memcpy(q, png, n);
    q[30] ^= 1;
    rc = decode(q, n, IMAGE_ALPHA_DROP, &img, err);
    CHECK(rc < 0, "bad IHDR CRC accepted");
    /* Random single-byte flips: whatever happens, no crash; success keeps size. */
    unsigned s = 12345;
    for (int k = 0; k < 300; k++) {
        memcpy(q, png, n);
        s = s * 1103515245u + 12345u;
        size_t at = 8 + (s >> 8) % (n - 8);
        q[at] ^= (uint8_t)(1u << ((s >> 4) & 7));
        rc = decode(q, n, IMAGE_ALPHA_DROP, &img, err);
        if (rc == 0) {
            CHECK(img.width * img.height <= 4096 * 4 && img.data, "flip gave %dx%d", img.width,
                  img.height);
            image_free(&img);
        }
    }
    free(q);
    free(png);
    free(raw);
}

static void test_bad_magic(void)
{
    struct image_rgb8 img;
    char err[512];
    int rc = decode(NULL, 0, IMAGE_ALPHA_DROP, &img, err);
    CHECK(rc < 0 && strstr(err, "empty"), "NULL: %s", err);
    rc = decode((const uint8_t *)"", 0, IMAGE_ALPHA_DROP, &img, err);
    CHECK(rc < 0 && strstr(err, "empty"), "empty: %s", err);
    rc = decode((const uint8_t *)"GIF89a\x01\x00\x01\x00", 10, IMAGE_ALPHA_DROP, &img, err);
    CHECK(rc < 0 && strstr(err, "GIF"), "gif: %s", err);
    rc = decode((const uint8_t *)"hello world", 11, IMAGE_ALPHA_DROP, &img, err);
    CHECK(rc < 0 && strstr(err, "unrecognised"), "text: %s", err);
    rc = decode((const uint8_t *)"\x89PN", 3, IMAGE_ALPHA_DROP, &img, err);
    CHECK(rc < 0 && strstr(err, "truncated PNG"), "3-byte png: %s", err);
    rc = decode((const uint8_t *)"\xff", 1, IMAGE_ALPHA_DROP, &img, err);
    CHECK(rc < 0, "1-byte: %s", err);
    rc = decode((const uint8_t *)"\xff\xd8\xff", 3, IMAGE_ALPHA_DROP, &img, err);
    CHECK(rc < 0 && img.data == NULL, "SOI only: %s", err);
    struct image_decode_opts o;
    image_decode_opts_default(&o);
    o.alpha = (enum image_alpha)7;
    rc = image_decode((const uint8_t *)"x", 1, &o, &img, err, sizeof err);
    CHECK(rc < 0, "bad alpha mode accepted");
    /* A tiny error buffer is respected (no overflow under ASan). */
    char small[8];
    rc = image_decode(NULL, 0, NULL, &img, small, sizeof small);
    CHECK(rc < 0 && strlen(small) == 7, "small err buffer");
    rc = image_decode(NULL, 0, NULL, &img, NULL, 0);
    CHECK(rc < 0, "NULL err buffer");
}

/* A smooth test picture. */
static uint8_t *smooth_rgb(int w, int h)
{
    uint8_t *p = malloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *q = p + ((size_t)y * w + x) * 3;
            q[0] = (uint8_t)(40 + 160 * x / (w - 1));
            q[1] = (uint8_t)(40 + 160 * y / (h - 1));
            q[2] = (uint8_t)(120 + 60 * (x + y) / (w + h - 2));
        }
    return p;
}

static int max_abs_diff_u8(const uint8_t *a, const uint8_t *b, size_t n)
{
    int m = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs(a[i] - b[i]);
        if (d > m)
            m = d;
    }
    return m;
}

static void test_jpeg_basic(void)
{
    const int w = 48, h = 32;
    uint8_t *rgb = smooth_rgb(w, h);
    struct image_rgb8 img;
    char err[512];
    for (int prog = 0; prog < 2; prog++)
        for (int sub = 0; sub < 2; sub++) {
            size_t n;
            uint8_t *j = jpeg_encode(w, h, 3, JCS_RGB, rgb, 100, prog, sub, &n);
            int rc = decode(j, n, IMAGE_ALPHA_DROP, &img, err);
            CHECK(rc == 0 && img.width == w && img.height == h, "jpeg prog %d sub %d: %s", prog,
                  sub, err);
            if (rc == 0) {
                int d = max_abs_diff_u8(img.data, rgb, (size_t)w * h * 3);
                CHECK(d <= (sub ? 6 : 3), "jpeg prog %d sub %d: max diff %d", prog, sub, d);
            }
            image_free(&img);
            free(j);
        }

    /* Gray JPEG: replicated channels. */
    uint8_t *g = malloc((size_t)w * h);
    for (int i = 0; i < w * h; i++)
        g[i] = rgb[3 * i + 1];
    size_t n;
    uint8_t *j = jpeg_encode(w, h, 1, JCS_GRAYSCALE, g, 100, 0, 0, &n);
    int rc = decode(j, n, IMAGE_ALPHA_DROP, &img, err);
    CHECK(rc == 0, "gray jpeg: %s", err);
    int bad = 0, md = 0;
    for (int i = 0; rc == 0 && i < w * h; i++) {
        const uint8_t *p = img.data + 3 * i;
        bad += p[0] != p[1] || p[1] != p[2];
        if (abs(p[0] - g[i]) > md)
            md = abs(p[0] - g[i]);
    }
    CHECK(bad == 0 && md <= 3, "gray jpeg: %d non-gray, max diff %d", bad, md);
    image_free(&img);
    free(j);
    free(g);

    /* CMYK JPEG (libjpeg writes an Adobe marker): decoded as Pillow does,
     * i.e. samples are inverted CMYK, RGB = K' * S / 255 per channel. */
    uint8_t cmyk[16 * 16 * 4];
    const uint8_t cv[4] = {30, 60, 200, 100};
    for (int i = 0; i < 16 * 16; i++)
        memcpy(cmyk + 4 * i, cv, 4);
    j = jpeg_encode(16, 16, 4, JCS_CMYK, cmyk, 100, 0, 0, &n);
    rc = decode(j, n, IMAGE_ALPHA_DROP, &img, err);
    CHECK(rc == 0, "cmyk jpeg: %s", err);
    if (rc == 0) {
        int e[3];
        for (int c = 0; c < 3; c++)
            e[c] = (int)(cv[3] * cv[c] / 255.0 + 0.5);
        CHECK(px_near(&img, 8, 8, e[0], e[1], e[2], 2), "cmyk pixel %d %d %d vs %d %d %d",
              img.data[0], img.data[1], img.data[2], e[0], e[1], e[2]);
    }
    image_free(&img);
    free(j);
    free(rgb);
}

/* Quadrants: TL red, TR green, BL blue, BR white (8x8-block aligned). */
static void test_jpeg_exif(void)
{
    const int w = 32, h = 16;
    uint8_t pix[32 * 16 * 3];
    static const uint8_t col[4][3] = {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {255, 255, 255}};
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            memcpy(pix + ((size_t)y * w + x) * 3, col[(y >= h / 2) * 2 + (x >= w / 2)], 3);
    size_t n;
    uint8_t *j = jpeg_encode(w, h, 3, JCS_RGB, pix, 100, 0, 0, &n);
    /* Expected quadrant colours (TL, TR, BL, BR) after applying orientation o,
     * as indexes into col: R=0 G=1 B=2 W=3. */
    static const int expect[9][4] = {
        {0, 1, 2, 3}, {0, 1, 2, 3}, {1, 0, 3, 2}, {3, 2, 1, 0}, {2, 3, 0, 1},
        {0, 2, 1, 3}, {2, 0, 3, 1}, {3, 1, 2, 0}, {1, 3, 0, 2},
    };
    for (int be = 0; be < 2; be++)
        for (int o = 1; o <= 8; o++) {
            uint8_t pl[64];
            size_t pn = exif_payload(pl, o, be);
            size_t n2;
            uint8_t *j2 = jpeg_with_app1(j, n, pl, pn, &n2);
            struct image_rgb8 img;
            char err[512];
            int rc = decode(j2, n2, IMAGE_ALPHA_DROP, &img, err);
            CHECK(rc == 0, "exif %d: %s", o, err);
            if (rc == 0) {
                int ow = o >= 5 ? h : w, oh = o >= 5 ? w : h;
                CHECK(img.width == ow && img.height == oh, "exif %d: size %dx%d", o, img.width,
                      img.height);
                int qx[4] = {ow / 4, 3 * ow / 4, ow / 4, 3 * ow / 4};
                int qy[4] = {oh / 4, oh / 4, 3 * oh / 4, 3 * oh / 4};
                for (int q = 0; q < 4; q++) {
                    const uint8_t *c = col[expect[o][q]];
                    CHECK(px_near(&img, qx[q], qy[q], c[0], c[1], c[2], 8),
                          "exif %d (%s) quadrant %d wrong", o, be ? "MM" : "II", q);
                }
            }
            image_free(&img);
            /* With orientation handling off, the stored layout comes back. */
            struct image_decode_opts opt;
            image_decode_opts_default(&opt);
            opt.apply_exif_orientation = 0;
            rc = image_decode(j2, n2, &opt, &img, err, sizeof err);
            CHECK(rc == 0 && img.width == w && px_near(&img, 2, 2, 255, 0, 0, 8),
                  "exif %d ignored: %s", o, err);
            image_free(&img);
            free(j2);
        }

    /* Malformed EXIF never crashes and leaves the image as stored. */
    uint8_t pl[64];
    size_t pn = exif_payload(pl, 6, 0);
    struct {
        int at;
        uint8_t v;
        int at2;
        uint8_t v2;
        size_t len;
    } bad[] = {
        {6 + 4, 0xF0, 0, 0, 0},        /* IFD offset far out of range */
        {6 + 8, 0xFF, 6 + 10, 0x13, 0}, /* 255 entries claimed, one (other tag) present */
        {6 + 2, 0x00, 0, 0, 0},        /* bad TIFF magic */
        {6 + 0, 'X', 0, 0, 0},         /* bad byte order */
        {6 + 12, 7, 0, 0, 0},          /* orientation with type 7 (UNDEFINED) */
        {0, 0, 0, 0, 6 + 12},          /* truncated TIFF */
        {0, 0, 0, 0, 6 + 4},           /* truncated TIFF header */
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        uint8_t q[64];
        memcpy(q, pl, pn);
        size_t qn = pn;
        if (bad[k].len)
            qn = bad[k].len;
        else
            q[bad[k].at] = bad[k].v;
        if (bad[k].at2)
            q[bad[k].at2] = bad[k].v2;
        size_t n2;
        uint8_t *j2 = jpeg_with_app1(j, n, q, qn, &n2);
        struct image_rgb8 img;
        char err[512];
        int rc = decode(j2, n2, IMAGE_ALPHA_DROP, &img, err);
        CHECK(rc == 0 && img.width == w && img.height == h, "bad exif %zu: rc %d %dx%d %s", k,
              rc, img.width, img.height, err);
        image_free(&img);
        free(j2);
    }
    /* An orientation value out of 1..8 is ignored. */
    pn = exif_payload(pl, 9, 1);
    size_t n2;
    uint8_t *j2 = jpeg_with_app1(j, n, pl, pn, &n2);
    struct image_rgb8 img;
    char err[512];
    int rc = decode(j2, n2, IMAGE_ALPHA_DROP, &img, err);
    CHECK(rc == 0 && img.width == w, "orientation 9: %s", err);
    image_free(&img);
    free(j2);
    free(j);
}

static long find_marker(const uint8_t *d, size_t n, uint8_t m)
{
    for (size_t i = 2; i + 1 < n; i++)
        if (d[i] == 0xFF && d[i + 1] == m)
            return (long)i;
    return -1;
}

static void test_jpeg_bad(void)
{
    const int w = 64, h = 48;
    uint8_t *rgb = smooth_rgb(w, h);
    struct image_rgb8 img;
    char err[512];
    for (int prog = 0; prog < 2; prog++) {
        size_t n;
        uint8_t *j = jpeg_encode(w, h, 3, JCS_RGB, rgb, 90, prog, 1, &n);
        /* Truncations at several cut points. */
        size_t cuts[] = {2, 3, 4, 10, 20, 100, 200, n / 3, n / 2, 2 * n / 3, n - 10, n - 3, n - 2};
        int fails = 0;
        for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
            if (cuts[i] >= n)
                continue;
            int rc = decode(j, cuts[i], IMAGE_ALPHA_DROP, &img, err);
            if (rc == 0) {
                fails++;
                fprintf(stderr, "  truncated JPEG (prog %d) at %zu/%zu decoded\n", prog, cuts[i], n);
                image_free(&img);
            }
            CHECK(img.data == NULL, "image left after failure");
        }
        CHECK(fails == 0, "%d truncated JPEGs decoded (prog %d)", fails, prog);
        int rc = decode(j, n / 2, IMAGE_ALPHA_DROP, &img, err);
        CHECK(rc < 0 && strstr(err, "truncated"), "truncation message: %s", err);
        /* Every prefix: no crash, no success. */
        fails = 0;
        for (size_t cut = 0; cut + 2 < n; cut += 3) {
            rc = decode(j, cut, IMAGE_ALPHA_DROP, &img, err);
            if (rc == 0) {
                fails++;
                image_free(&img);
            }
        }
        CHECK(fails == 0, "%d prefix cuts decoded (prog %d)", fails, prog);

        /* Corrupt entropy-coded bytes in the middle: an error or a picture of
         * the declared size, never a crash. */
        uint8_t *q = malloc(n);
        unsigned s = 777;
        int errors = 0;
        for (int k = 0; k < 200; k++) {
            memcpy(q, j, n);
            for (int t = 0; t < 4; t++) {
                s = s * 1103515245u + 12345u;
                q[n / 3 + (s >> 8) % (n / 3)] ^= (uint8_t)(s >> 3);
            }
            rc = decode(q, n, IMAGE_ALPHA_DROP, &img, err);
            if (rc == 0)
                CHECK(img.width == w && img.height == h, "corrupt gave %dx%d", img.width,
                      img.height);
            else
                errors++;
            image_free(&img);
        }
        fprintf(stderr, "  corrupt JPEGs (prog %d): %d of 200 rejected\n", prog, errors);
        /* Header-area flips. */
        for (int k = 0; k < 300; k++) {
            memcpy(q, j, n);
            s = s * 1103515245u + 12345u;
            q[2 + (s >> 8) % 600] ^= (uint8_t)(1u << ((s >> 3) & 7));
            rc = decode(q, n, IMAGE_ALPHA_DROP, &img, err);
            if (rc == 0)
                CHECK(img.width > 0 && img.data, "flip");
            image_free(&img);
        }

        /* Declared huge: 60000 x 60000 in the SOF, rejected before decoding. */
        long sof = find_marker(j, n, prog ? 0xC2 : 0xC0);
        CHECK(sof > 0, "no SOF found");
        if (sof > 0) {
            memcpy(q, j, n);
            q[sof + 5] = 0xEA, q[sof + 6] = 0x60;   /* height 60000 */
            q[sof + 7] = 0xEA, q[sof + 8] = 0x60;   /* width 60000 */
            double t0 = clock_now_s();
            rc = decode(q, n, IMAGE_ALPHA_DROP, &img, err);
            double dt = clock_now_s() - t0;
            CHECK(rc < 0 && strstr(err, "limit"), "jpeg bomb: %s", err);
            CHECK(dt < 0.05, "jpeg bomb rejection took %.3f s", dt);
            /* Large but allowed (8000 x 8000), with a few KB of data: fails
             * quickly on the missing data. */
            q[sof + 5] = 0x1F, q[sof + 6] = 0x40;
            q[sof + 7] = 0x1F, q[sof + 8] = 0x40;
            t0 = clock_now_s();
            rc = decode(q, n, IMAGE_ALPHA_DROP, &img, err);
            dt = clock_now_s() - t0;
            CHECK(rc < 0, "8000x8000 from %zu bytes decoded", n);
            CHECK(dt < 2.0, "8000x8000 failure took %.3f s", dt);
            image_free(&img);
            /* Zero height. */
            q[sof + 5] = 0, q[sof + 6] = 0;
            q[sof + 7] = 0, q[sof + 8] = 64;
            rc = decode(q, n, IMAGE_ALPHA_DROP, &img, err);
            CHECK(rc < 0, "zero-height JPEG decoded");
            image_free(&img);
            q[sof + 5] = 0, q[sof + 6] = 48;
            q[sof + 7] = 0, q[sof + 8] = 0;
            rc = decode(q, n, IMAGE_ALPHA_DROP, &img, err);
            CHECK(rc < 0, "zero-width JPEG decoded");
            image_free(&img);
        }
        free(q);
        free(j);
    }
    free(rgb);
}

/* The encoder's PNGs decode back to the same pixels; bad sizes are refused. */
static void test_png_encode(void)
{
    char err[512];
    enum { W = 37, H = 11 };
    uint8_t rgb[H][W][3], gray[H][W];
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            for (int c = 0; c < 3; c++) rgb[y][x][c] = (uint8_t)(x * 7 + y * 13 + c * 91);
            gray[y][x] = (uint8_t)(x * y);
        }
    for (int channels = 1; channels <= 3; channels += 2) {
        uint8_t *png;
        size_t len;
        const uint8_t *src = channels == 3 ? &rgb[0][0][0] : &gray[0][0];
        CHECK(image_png_encode(src, W, H, channels, &png, &len, err, sizeof err) == 0 && len > 8,
              "encode %d channels: %s", channels, err);
        struct image_decode_opts o;
        image_decode_opts_default(&o);
        struct image_rgb8 img = {0};
        CHECK(image_decode(png, len, &o, &img, err, sizeof err) == 0 && img.width == W &&
                  img.height == H,
              "decode what was encoded: %s", err);
        int diff = 0;
        for (int y = 0; img.data && y < H; y++)
            for (int x = 0; x < W; x++)
                for (int c = 0; c < 3; c++)
                    diff += img.data[(y * W + x) * 3 + c] !=
                            (channels == 3 ? rgb[y][x][c] : gray[y][x]);
        CHECK(img.data && diff == 0, "%d channels round trip: %d bytes differ", channels, diff);
        image_free(&img);
        free(png);
    }
    uint8_t *png = (uint8_t *)1;
    size_t len = 1;
    CHECK(image_png_encode(&gray[0][0], 0, H, 1, &png, &len, err, sizeof err) == -1 && !png &&
              !len && strstr(err, "size"),
          "zero width refused: %s", err);
    CHECK(image_png_encode(&gray[0][0], W, H, 4, &png, &len, err, sizeof err) == -1 &&
              strstr(err, "channels"),
          "4 channels refused: %s", err);
}

int main(void)
{
    test_png_encode();
    test_png_rgb();
    test_png_gray();
    test_png_gray_alpha();
    test_png_rgba();
    test_png_rgb16_and_trns();
    test_png_palette();
    test_png_bad();
    test_bad_magic();
    test_jpeg_basic();
    test_jpeg_exif();
    test_jpeg_bad();
    printf("test_image: ");
    return check_summary();
}
