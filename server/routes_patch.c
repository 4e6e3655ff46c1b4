/* Patch-level collections (index/patch_query.h):
 *   items   {"image": ...} or {"patches": [[w numbers] x N], "grid": [h, w]}
 *   search  POST /v1/collections/{name}/search
 *           {"id"|"image", "patch": [row, col]}        best-matching patches
 *           {"id"|"image", "box": [r0, c0, r1, c1]}    the same for a box's mean
 *           {"id"|"image"}                             late-interaction ranking
 *           -> {"results": [{"id", "score", "patch": [row, col]}]}
 *   heatmap POST /v1/collections/{name}/heatmap
 *           {"id"|"image", "patch" or "box", "item": id} -> image/png
 * Coordinates outside the query's grid, and the CLS-only options, are 400. */
#include "routes_patch.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "heatmap.h"
#include "image.h"
#include "index/patch_query.h"
#include "index/search.h"

#define HEATMAP_CELL_PX 14 /* pixels per patch when the item's image is not kept */

/* Encodes n normalised patches [n, w] for c into a new blob; vec gets their
 * normalised mean. */
static int encode_item(struct coll *c, const float *p, int gh, int gw, struct item_in *item,
                       float *vec, void **blob)
{
    struct collection_info info;
    coll_info(c, &info);
    const int w = (int)info.width;
    const size_t n = (size_t)gh * (size_t)gw;
    const enum patch_type t = (enum patch_type)info.patch_type;
    if (!(*blob = malloc(n * patch_vec_bytes(w, t)))) return -1;
    patch_encode(p, n, w, t, *blob);
    double ss = 0;
    for (int k = 0; k < w; k++) {
        double s = 0;
        for (size_t i = 0; i < n; i++) s += p[i * (size_t)w + k];
        vec[k] = (float)(s / (double)n);
        ss += (double)vec[k] * vec[k];
    }
    for (int k = 0; k < w && ss > 0; k++) vec[k] = (float)(vec[k] / sqrt(ss));
    item->patches = *blob;
    item->patches_len = n * patch_vec_bytes(w, t);
    item->grid_h = gh;
    item->grid_w = gw;
    return 0;
}

int route_patch_item_image(struct coll *c, const struct route_images *im, int k,
                           struct item_in *item, float *vec, void **blob)
{
    const size_t per = (size_t)im->grid_h * im->grid_w * (size_t)coll_width(c);
    return encode_item(c, im->patches + (size_t)k * per, im->grid_h, im->grid_w, item, vec, blob);
}

int route_patch_item_json(struct coll *c, const json_t *it, struct item_in *item, float *vec,
                          void **blob, char *why, size_t len)
{
    const json_t *grid = json_object_get(it, "grid"), *ps = json_object_get(it, "patches");
    const int w = (int)coll_width(c);
    if (!json_is_array(grid) || json_array_size(grid) != 2 ||
        !json_is_integer(json_array_get(grid, 0)) || !json_is_integer(json_array_get(grid, 1)))
        return set_err(why, len, "'grid' must be [rows, columns]");
    const json_int_t gh = json_integer_value(json_array_get(grid, 0));
    const json_int_t gw = json_integer_value(json_array_get(grid, 1));
    if (gh < 1 || gw < 1 || gh > STORE_GRID_MAX || gw > STORE_GRID_MAX ||
        gh * gw > STORE_PATCHES_MAX)
        return set_err(why, len, "'grid' rows and columns must be 1..%d, with at most %d "
                       "patches", STORE_GRID_MAX, STORE_PATCHES_MAX);
    const size_t n = (size_t)gh * (size_t)gw;
    if (!json_is_array(ps) || json_array_size(ps) != n)
        return set_err(why, len, "'patches' must be an array of %zu (grid %lldx%lld) vectors", n,
                       (long long)gh, (long long)gw);
    float *p = malloc(n * (size_t)w * sizeof *p);
    if (!p) return set_err(why, len, "out of memory");
    for (size_t i = 0; i < n; i++) {
        char vw[256];
        float *v = p + i * (size_t)w;
        if (route_vector_from_json(json_array_get(ps, i), w, true, v, vw, sizeof vw)) {
            free(p);
            return set_err(why, len, "'patches'[%zu] %s", i, vw);
        }
        double ss = 0; /* stored normalised, as embedded patches are */
        for (int k = 0; k < w; k++) ss += (double)v[k] * v[k];
        for (int k = 0; k < w && ss > 0; k++) v[k] = (float)(v[k] / sqrt(ss));
    }
    const int rc = encode_item(c, p, (int)gh, (int)gw, item, vec, blob);
    free(p);
    return rc ? set_err(why, len, "out of memory") : 0;
}

bool route_is_patch_collection(struct http_request *req, struct app *app)
{
    const char *name = http_param(req, "name");
    struct coll *c = name ? index_acquire(app->index, name) : NULL;
    const bool patch = c && coll_level(c) == STORE_LEVEL_PATCH;
    coll_release(c);
    return patch;
}

/* ---- search and heat map -------------------------------------------------- */

struct patch_ctx {
    struct route_index_req base; /* first: the request, body, collection, images */
    struct patch_query q;
    const char *item;            /* heat map: the item whose grid is coloured */
};

static void patch_free(void *ctx)
{
    struct patch_ctx *x = ctx;
    route_index_end(&x->base);
    free(x);
}

/* n integers of a JSON array into out; 0, or -1. */
static int ints(const json_t *a, size_t n, int *out)
{
    if (!json_is_array(a) || json_array_size(a) != n) return -1;
    for (size_t i = 0; i < n; i++) {
        const json_t *v = json_array_get(a, i);
        if (!json_is_integer(v) || llabs(json_integer_value(v)) > 1000000) return -1;
        out[i] = (int)json_integer_value(v);
    }
    return 0;
}

/* The query of a search (heatmap false) or a heat map; *image is the query
 * image's string when one is given. 0, or -1 with why (400). */
static int parse_patch_query(struct patch_ctx *x, bool heatmap, json_t **image, char *why,
                             size_t len)
{
    json_t *b = x->base.body;
    static const char *const cls_only[] = {"vector", "queries", "filter", "funnel", "width",
                                           "include"};
    for (size_t i = 0; i < sizeof cls_only / sizeof *cls_only; i++)
        if (json_object_get(b, cls_only[i]))
            return set_err(why, len, "collection '%s' is patch-level: '%s' is for CLS-level "
                           "collections; query by 'id' or 'image', with 'patch' or 'box' for "
                           "patch search", coll_name(x->base.c), cls_only[i]);
    json_t *id = json_object_get(b, "id"), *img = json_object_get(b, "image");
    json_t *patch = json_object_get(b, "patch"), *box = json_object_get(b, "box");
    if (!id == !img) return set_err(why, len, "needs exactly one of 'id' and 'image'");
    if (id && (!json_is_string(id) || !json_string_length(id)))
        return set_err(why, len, "'id' must be a non-empty string");
    if (img && !json_is_string(img))
        return set_err(why, len, "'image' must be a base64 string or a data URI");
    if (patch && box) return set_err(why, len, "give 'patch' or 'box', not both");
    if (patch && ints(patch, 2, x->q.box))
        return set_err(why, len, "'patch' must be [row, column]");
    if (box && ints(box, 4, x->q.box))
        return set_err(why, len, "'box' must be [r0, c0, r1, c1] (rows r0..r1-1, columns "
                       "c0..c1-1)");
    x->q.mode = patch ? PATCH_QUERY_PATCH : box ? PATCH_QUERY_BOX : PATCH_QUERY_IMAGE;
    x->q.id = json_string_value(id);
    *image = img;
    json_t *k = json_object_get(b, "k"), *item = json_object_get(b, "item");
    x->q.k = 10;
    if (k && !json_is_null(k)) {
        if (!json_is_integer(k) || json_integer_value(k) < 1 ||
            json_integer_value(k) > SEARCH_K_MAX)
            return set_err(why, len, "'k' must be an integer in 1..%d", SEARCH_K_MAX);
        x->q.k = (int)json_integer_value(k);
    }
    if (heatmap) {
        if (!patch && !box) return set_err(why, len, "a heat map needs 'patch' or 'box'");
        if (!json_is_string(item) || !json_string_length(item))
            return set_err(why, len, "'item' (the id of the item to colour) is required");
        x->item = json_string_value(item);
    }
    return 0;
}

/* The given query patches, once the query image is embedded. */
static void take_image(struct patch_ctx *x)
{
    if (!x->base.im.patches) return;
    x->q.patches = x->base.im.patches;
    x->q.grid_h = x->base.im.grid_h;
    x->q.grid_w = x->base.im.grid_w;
}

static void search_run(void *arg)
{
    struct patch_ctx *x = arg;
    take_image(x);
    char err[ERR_LEN] = "";
    struct patch_result res;
    const int rc = patch_query_run(x->base.c, &x->q, &res, err, sizeof err);
    if (rc) {
        route_reply_store_error(x->base.req, rc, err);
        patch_free(x);
        return;
    }
    json_t *results = json_array();
    for (int i = 0; i < res.n; i++) {
        const struct patch_hit *h = &res.hits[i];
        json_array_append_new(results, json_pack("{s:s, s:f, s:[i,i]}", "id", h->id, "score",
                                                 (double)h->score, "patch", h->row, h->col));
    }
    patch_result_free(&res);
    http_reply_json(x->base.req, 200, json_pack("{s:o}", "results", results));
    patch_free(x);
}

/* The picture's size: the item's kept image's, else HEATMAP_CELL_PX per patch. */
static void heatmap_size(struct patch_ctx *x, int gh, int gw, int *w, int *h)
{
    *w = gw * HEATMAP_CELL_PX;
    *h = gh * HEATMAP_CELL_PX;
    struct collection_info info;
    coll_info(x->base.c, &info);
    struct item_out it;
    char err[ERR_LEN];
    if (!info.store_images || store_item_get(coll_store(x->base.c), info.id, x->item, &it, err,
                                             sizeof err))
        return;
    struct image_decode_opts o;
    image_decode_opts_default(&o);
    o.max_pixels = x->base.app->limits.max_image_pixels;
    struct image_rgb8 img = {0};
    if (it.image && !image_decode(it.image, it.image_len, &o, &img, err, sizeof err)) {
        *w = img.width;
        *h = img.height;
    }
    image_free(&img);
    store_item_free(&it);
}

static void heatmap_run(void *arg)
{
    struct patch_ctx *x = arg;
    take_image(x);
    char err[ERR_LEN] = "";
    float *sims = NULL;
    int gh = 0, gw = 0;
    int rc = patch_query_heatmap(x->base.c, &x->q, x->item, &sims, &gh, &gw, err, sizeof err);
    if (rc) {
        route_reply_store_error(x->base.req, rc, err);
        patch_free(x);
        return;
    }
    int w, h;
    heatmap_size(x, gh, gw, &w, &h);
    uint8_t *png = NULL;
    size_t len = 0;
    float lo, hi;
    if (heatmap_png(sims, gh, gw, w, h, &lo, &hi, &png, &len, err, sizeof err)) {
        http_reply_error(x->base.req, 500, NULL, err);
    } else {
        char smin[32], smax[32], grid[32];
        snprintf(smin, sizeof smin, "%.6f", (double)lo);
        snprintf(smax, sizeof smax, "%.6f", (double)hi);
        snprintf(grid, sizeof grid, "%dx%d", gh, gw);
        http_add_header(x->base.req, "X-Score-Min", smin);
        http_add_header(x->base.req, "X-Score-Max", smax);
        http_add_header(x->base.req, "X-Patch-Grid", grid);
        http_reply_take(x->base.req, 200, "image/png", png, len, NULL);
    }
    free(sims);
    patch_free(x);
}

static void start(struct http_request *req, struct app *app, bool heatmap)
{
    struct patch_ctx *x = route_index_begin(req, app, sizeof *x,
                                            heatmap ? heatmap_run : search_run, patch_free);
    if (!x) return;
    char why[ERR_LEN];
    json_t *image = NULL;
    if (coll_level(x->base.c) != STORE_LEVEL_PATCH) {
        http_reply_errorf(req, 400, NULL, "collection '%s' is CLS-level; heat maps need "
                          "a collection created with level \"patch\"", coll_name(x->base.c));
        patch_free(x);
        return;
    }
    if (parse_patch_query(x, heatmap, &image, why, sizeof why)) {
        http_reply_errorf(req, 400, NULL, "%s %s", heatmap ? "heatmap" : "search", why);
        patch_free(x);
        return;
    }
    if (image) {
        const char *where = "image";
        if (route_images_decode(req, app, &image, &where, 1, &x->base.im)) {
            patch_free(x);
            return;
        }
    }
    route_index_start(&x->base);
}

void route_patch_search(struct http_request *req, struct app *app) { start(req, app, false); }

static void heatmap(struct http_request *req, void *user) { start(req, user, true); }

int routes_patch_register(struct http_router *r, struct app *app, char *err, size_t errlen)
{
    return route_add(r, app, "POST", "/v1/collections/{name}/heatmap", heatmap, err, errlen);
}
