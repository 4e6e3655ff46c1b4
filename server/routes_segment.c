/* In-context segmentation (index/segment.h) over HTTP:
 *   items    {"image": ..., "labels": PNG mask} on a patch-level collection
 *   segment  POST /v1/collections/{name}/segment
 *            {"image", "k": 10, "temperature": 0.1, "format": "png" | "json"}
 *            -> image/png (8-bit grey, one label per pixel of the image) or
 *               {"width", "height", "grid": [gh, gw], "labels": [[gh x gw]],
 *                "scores": [[...]] (the winning label's share of the vote)}
 * Pixels and patches correspond as seg_map.h says. 400: a CLS-level
 * collection, bad k / temperature / format, a mask of the wrong size or
 * type; 409: no labelled patches to transfer from. */
#include "routes_segment.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "datauri.h"
#include "errors.h"
#include "image.h"
#include "image_encode.h"
#include "image_labels.h"
#include "index/search.h"
#include "index/segment.h"
#include "route_status.h"
#include "seg_map.h"

/* The decoded size of an image (after its EXIF orientation, as embedded). */
static int image_size(struct app *app, const uint8_t *bytes, size_t len, int *w, int *h,
                      char *err, size_t errlen)
{
    struct image_decode_opts o;
    image_decode_opts_default(&o);
    o.max_pixels = app->limits.max_image_pixels;
    struct image_rgb8 img = {0};
    if (image_decode(bytes, len, &o, &img, err, errlen)) return -1;
    *w = img.width;
    *h = img.height;
    image_free(&img);
    return 0;
}

int route_mask_parse(struct app *app, const json_t *labels, struct route_mask *m, char *why,
                     size_t len)
{
    *m = (struct route_mask){0};
    if (!json_is_string(labels))
        return set_err(why, len, "'labels' must be a PNG as base64 or a data URI"), 400;
    uint8_t *png = NULL;
    size_t n = 0;
    char err[ERR_LEN];
    const enum datauri_status st =
        datauri_decode(json_string_value(labels), json_string_length(labels),
                       app->limits.max_body_bytes, &png, &n, NULL, err, sizeof err);
    if (st != DATAURI_OK) {
        set_err(why, len, "'labels': %s", err);
        return st == DATAURI_TOO_LARGE ? 413 : 400;
    }
    const int rc = image_labels_decode(png, n, app->limits.max_image_pixels, &m->pix,
                                       &m->width, &m->height, err, sizeof err);
    free(png);
    if (rc) return set_err(why, len, "'labels': %s", err), 400;
    return 0;
}

int route_mask_check(struct app *app, const struct route_images *im, int k,
                     const struct route_mask *m, char *why, size_t len)
{
    int w, h;
    char err[ERR_LEN];
    if (image_size(app, im->bytes[k], im->lens[k], &w, &h, err, sizeof err))
        return set_err(why, len, "image: %s", err), 422;
    if (w != m->width || h != m->height)
        return set_err(why, len, "'labels' is %dx%d pixels but the image is %dx%d: a mask "
                       "needs one label per image pixel", m->width, m->height, w, h), 400;
    return 0;
}

uint8_t *route_mask_patches(const struct route_images *im, const struct route_mask *m)
{
    struct seg_map map;
    char err[ERR_LEN];
    if (seg_map_init(&map, m->width, m->height, im->resize_size, im->crop_size,
                     im->patch_size, err, sizeof err))
        return NULL;
    uint8_t *out = malloc((size_t)map.grid_h * map.grid_w);
    if (out && seg_map_down(&map, m->pix, out)) {
        free(out);
        out = NULL;
    }
    seg_map_free(&map);
    return out;
}

void route_mask_free(struct route_mask *m)
{
    free(m->pix);
    m->pix = NULL;
}

/* ---- the segment route ----------------------------------------------------- */

struct seg_ctx {
    struct route_index_req base; /* first */
    int k;
    float temperature;
    bool json;
    int width, height;           /* of the query image */
};

static void seg_free(void *ctx)
{
    struct seg_ctx *x = ctx;
    route_index_end(&x->base);
    free(x);
}

static json_t *grid_json(const uint8_t *labels, const float *scores, int gh, int gw)
{
    json_t *rows = json_array();
    for (int r = 0; r < gh; r++) {
        json_t *row = json_array();
        for (int c = 0; c < gw; c++) {
            const size_t p = (size_t)r * gw + c;
            json_array_append_new(row, labels ? json_integer(labels[p])
                                              : json_real(round(scores[p] * 1e6) / 1e6));
        }
        json_array_append_new(rows, row);
    }
    return rows;
}

/* The answer, once labels [gh, gw] are known. */
static void seg_reply(struct seg_ctx *x, const uint8_t *labels, const float *share)
{
    const struct route_images *im = &x->base.im;
    char err[ERR_LEN], grid[32];
    snprintf(grid, sizeof grid, "%dx%d", im->grid_h, im->grid_w);
    if (x->json) {
        http_reply_json(x->base.req, 200,
                        json_pack("{s:i, s:i, s:[i,i], s:o, s:o}", "width", x->width, "height",
                                  x->height, "grid", im->grid_h, im->grid_w, "labels",
                                  grid_json(labels, NULL, im->grid_h, im->grid_w), "scores",
                                  grid_json(NULL, share, im->grid_h, im->grid_w)));
        return;
    }
    struct seg_map map;
    uint8_t *pix = NULL, *png = NULL;
    size_t len = 0;
    int rc = seg_map_init(&map, x->width, x->height, im->resize_size, im->crop_size,
                          im->patch_size, err, sizeof err);
    if (!rc && !(pix = malloc((size_t)x->width * x->height))) rc = -1;
    if (!rc) {
        seg_map_up(&map, labels, pix);
        rc = image_png_encode(pix, x->width, x->height, 1, &png, &len, err, sizeof err);
    }
    seg_map_free(&map);
    free(pix);
    if (rc) {
        http_reply_error(x->base.req, 500, NULL, "segmentation picture failed");
        return;
    }
    http_add_header(x->base.req, "X-Patch-Grid", grid);
    http_reply_take(x->base.req, 200, "image/png", png, len, NULL);
}

static void seg_run(void *arg)
{
    struct seg_ctx *x = arg;
    const struct route_images *im = &x->base.im;
    const size_t n = (size_t)im->grid_h * im->grid_w;
    uint8_t *labels = malloc(n ? n : 1);
    float *share = malloc((n ? n : 1) * sizeof *share);
    char err[ERR_LEN] = "";
    int rc = !labels || !share ? STORE_ERR
                               : segment_run(x->base.c, im->patches, n, x->k, x->temperature,
                                             labels, share, err, sizeof err);
    if (rc) route_reply_store_error(x->base.req, rc, err[0] ? err : "out of memory");
    else seg_reply(x, labels, share);
    free(labels);
    free(share);
    seg_free(x);
}

/* k, temperature and format of the body; 0, or -1 with why. */
static int parse_options(struct seg_ctx *x, char *why, size_t len)
{
    json_t *b = x->base.body, *k = json_object_get(b, "k");
    json_t *t = json_object_get(b, "temperature"), *f = json_object_get(b, "format");
    x->k = 10;
    x->temperature = 0.1f;
    if (k && !json_is_null(k)) {
        if (!json_is_integer(k) || json_integer_value(k) < 1 ||
            json_integer_value(k) > SEARCH_K_MAX)
            return set_err(why, len, "'k' must be an integer in 1..%d", SEARCH_K_MAX);
        x->k = (int)json_integer_value(k);
    }
    if (t && !json_is_null(t)) {
        const double v = json_number_value(t);
        if (!json_is_number(t) || !(v >= 1e-6) || v > 1e6)
            return set_err(why, len, "'temperature' must be a number in [1e-6, 1e6]");
        x->temperature = (float)v;
    }
    if (f && !json_is_null(f) && (!json_is_string(f) || (strcmp(json_string_value(f), "png") &&
                                                         strcmp(json_string_value(f), "json"))))
        return set_err(why, len, "'format' must be \"png\" or \"json\"");
    x->json = f && json_is_string(f) && !strcmp(json_string_value(f), "json");
    return 0;
}

static void segment(struct http_request *req, void *user)
{
    struct app *app = user;
    struct seg_ctx *x = route_index_begin(req, app, sizeof *x, seg_run, seg_free);
    if (!x) return;
    char why[ERR_LEN];
    json_t *image = json_object_get(x->base.body, "image");
    if (coll_level(x->base.c) != STORE_LEVEL_PATCH) {
        http_reply_errorf(req, 400, NULL, "collection '%s' is CLS-level; segmentation needs "
                          "a collection created with level \"patch\"", coll_name(x->base.c));
    } else if (parse_options(x, why, sizeof why)) {
        http_reply_errorf(req, 400, NULL, "segment %s", why);
    } else if (!json_is_string(image)) {
        http_reply_error(req, 400, NULL, "segment needs 'image': a base64 string or a data URI");
    } else {
        const char *where = "image";
        if (!route_images_decode(req, app, &image, &where, 1, &x->base.im)) {
            char err[ERR_LEN];
            if (!image_size(app, x->base.im.bytes[0], x->base.im.lens[0], &x->width,
                            &x->height, err, sizeof err)) {
                route_index_start(&x->base);
                return;
            }
            http_reply_errorf(req, 422, NULL, "image: %s", err);
        }
    }
    seg_free(x);
}

int routes_segment_register(struct http_router *r, struct app *app, char *err, size_t errlen)
{
    return route_add(r, app, "POST", "/v1/collections/{name}/segment", segment, err, errlen);
}
