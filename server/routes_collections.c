/* Collections and their items:
 *   POST /v1/collections, GET /v1/collections, GET|DELETE /v1/collections/{name},
 *   POST /v1/collections/{name}/items, GET|DELETE /v1/collections/{name}/items/{id}.
 * Inserts are acknowledged only after their SQLite transaction committed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "routes_index.h"
#include "routes_patch.h"
#include "routes_segment.h"
#include "vit.h"

/* ---- collections ---------------------------------------------------------- */

static void create_collection(struct http_request *req, void *user)
{
    struct app *app = user;
    json_t *j = route_json_body(req);
    if (!j) return;
    json_t *name = json_object_get(j, "name"), *model = json_object_get(j, "model");
    json_t *width = json_object_get(j, "width"), *metric = json_object_get(j, "metric");
    json_t *keep = json_object_get(j, "store_images");
    json_t *level = json_object_get(j, "level"), *storage = json_object_get(j, "storage");
    json_t *mirror = json_object_get(j, "mirror");
    json_t *ann = json_object_get(j, "ann");
    struct collection_info in = {0};
    enum patch_type ptype = PATCH_F16;
    const char *why = NULL;
    if (!json_is_string(name) || !route_collection_name_valid(json_string_value(name)))
        why = "'name' is required: 1 to 127 characters of A-Z a-z 0-9 . _ -, not starting with '.'";
    else if (model && !json_is_null(model) && !json_is_string(model))
        why = "'model' must be a string";
    else if (width && !json_is_null(width) && !json_is_integer(width))
        why = "'width' must be an integer";
    else if (metric && !json_is_null(metric) &&
             (!json_is_string(metric) || store_metric_parse(json_string_value(metric), &in.metric)))
        why = "'metric' must be \"cosine\", \"l2\" or \"dot\"";
    else if (mirror && !json_is_null(mirror) &&
             (!json_is_string(mirror) || store_mirror_parse(json_string_value(mirror), &in.mirror)))
        why = "'mirror' must be \"f32\", \"f16\" or \"int8\"";
    else if (keep && !json_is_null(keep) && !json_is_boolean(keep))
        why = "'store_images' must be a boolean";
    else if (level && !json_is_null(level) &&
             (!json_is_string(level) || (strcmp(json_string_value(level), "cls") &&
                                         strcmp(json_string_value(level), "patch"))))
        why = "'level' must be \"cls\" or \"patch\"";
    else if (storage && !json_is_null(storage) &&
             (!json_is_string(storage) || patch_type_parse(json_string_value(storage), &ptype)))
        why = "'storage' must be \"f16\" or \"int8\"";
    else if ((in.level = json_is_string(level) && !strcmp(json_string_value(level), "patch")
                             ? STORE_LEVEL_PATCH : STORE_LEVEL_CLS) == STORE_LEVEL_CLS &&
             json_is_string(storage))
        why = "'storage' applies to collections of level \"patch\" only";
    else if (in.level == STORE_LEVEL_PATCH && in.metric != STORE_METRIC_COSINE)
        why = "patch-level collections score by cosine: leave out 'metric' or give \"cosine\"";
    in.patch_type = (int)ptype;
    if (why) {
        http_reply_error(req, 400, NULL, why);
        goto done;
    }
    snprintf(in.name, sizeof in.name, "%s", json_string_value(name));
    in.store_images = json_is_true(keep);
    const char *model_name = json_string_value(model);
    const bool has_width = json_is_integer(width);
    json_int_t w = has_width ? json_integer_value(width) : 0;

    /* The model: the one named, else the default; only when no model is loaded
     * at all does a collection take vectors only (and then needs a width). */
    if (!atomic_load(&app->ready)) {
        http_add_header(req, "Retry-After", "2");
        http_reply_error(req, 503, NULL, "models are still loading");
        goto done;
    }
    struct model_entry *e = NULL;
    char err[ERR_LEN];
    const int arc = registry_acquire(app->registry, model_name, &e, err, sizeof err);
    if (arc && (model_name || arc != REGISTRY_NOT_FOUND)) {
        route_reply_registry_error(req, arc, err);
        goto done;
    }
    int D = STORE_WIDTH_MAX;
    if (e) {
        D = vit_model_config(e->model)->embed_dim;
        snprintf(in.model, sizeof in.model, "%s", e->name);
        snprintf(in.fingerprint, sizeof in.fingerprint, "%s", e->fingerprint);
        model_entry_release(e);
        if (!has_width) w = D;
    }
    if (w < 1 || w > D) {
        if (!in.model[0] && !has_width)
            http_reply_error(req, 400, NULL, "no model is loaded: give 'width' for a collection of vectors");
        else if (!in.model[0])
            http_reply_errorf(req, 400, NULL, "'width' %lld is outside 1..%d", (long long)w, D);
        else /* a width the model cannot give: 422, as features' widths and embeddings' dimensions */
            http_reply_errorf(req, w < 1 ? 400 : 422, NULL,
                              "'width' %lld is outside 1..%d (the width of model '%s')", (long long)w,
                              D, in.model);
        goto done;
    }
    in.width = w;
    if (ann && !json_is_null(ann)) {
        struct coll_ann_desc d;
        char why2[ERR_LEN];
        if (in.level != STORE_LEVEL_CLS) {
            http_reply_error(req, 400, NULL, "'ann' indexes CLS-level collections only");
            goto done;
        }
        if (coll_ann_parse(ann, in.width, &d, why2, sizeof why2)) {
            http_reply_error(req, 400, NULL, why2);
            goto done;
        }
        coll_ann_format(&d, in.ann);
    }
    struct coll *c;
    const int rc = index_create(app->index, &in, &c, err, sizeof err);
    if (rc) {
        route_reply_store_error(req, rc,
                                rc == STORE_EXISTS ? "a collection with this name exists" : err);
        goto done;
    }
    http_reply_json(req, 201, route_coll_json(c));
    coll_release(c);
done:
    json_decref(j);
}

static void list_collections(struct http_request *req, void *user)
{
    struct app *app = user;
    struct coll **cs;
    size_t n;
    char err[ERR_LEN];
    if (index_list(app->index, &cs, &n, err, sizeof err)) {
        http_reply_error(req, 500, NULL, err);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(arr, route_coll_json(cs[i]));
        coll_release(cs[i]);
    }
    free(cs);
    http_reply_json(req, 200, json_pack("{s:o}", "collections", arr));
}

static void get_collection(struct http_request *req, void *user)
{
    struct coll *c = route_coll(req, user);
    if (!c) return;
    http_reply_json(req, 200, route_coll_json(c));
    coll_release(c);
}

static void delete_collection(struct http_request *req, void *user)
{
    struct app *app = user;
    const char *name = http_param(req, "name");
    char err[ERR_LEN];
    const int rc = index_drop(app->index, name, err, sizeof err);
    if (rc) {
        route_reply_store_error(req, rc, err);
        return;
    }
    http_reply_json(req, 200, json_pack("{s:s}", "deleted", name));
}

/* ---- items ---------------------------------------------------------------- */

struct insert_ctx {
    struct route_index_req base; /* first; its body keeps the id strings alive */
    size_t n;
    struct item_in *items;
    json_t **meta;              /* parsed metadata per item, or NULL */
    char **meta_text;           /* the same as compact JSON text, for SQLite */
    float *vecs;                /* [n, width] */
    int *image_of;              /* item -> index in base.im, or -1 */
    void **blobs;               /* patch collections: each item's encoded patches */
    struct route_mask *masks;   /* each item's label mask (pix NULL: none) */
    uint8_t **plabels;          /* and its per-patch labels, once embedded */
    char (*ids)[STORE_ID_MAX];
};

static void insert_free(void *ctx)
{
    struct insert_ctx *x = ctx;
    for (size_t i = 0; x->meta && i < x->n; i++) json_decref(x->meta[i]);
    for (size_t i = 0; x->meta_text && i < x->n; i++) free(x->meta_text[i]);
    free(x->meta);
    free(x->meta_text);
    free(x->items);
    free(x->vecs);
    free(x->image_of);
    for (size_t i = 0; x->blobs && i < x->n; i++) free(x->blobs[i]);
    free(x->blobs);
    for (size_t i = 0; x->masks && i < x->n; i++) route_mask_free(&x->masks[i]);
    for (size_t i = 0; x->plabels && i < x->n; i++) free(x->plabels[i]);
    free(x->masks);
    free(x->plabels);
    free(x->ids);
    route_index_end(&x->base);
    free(x);
}

static void insert_commit(void *arg)
{
    struct insert_ctx *x = arg;
    const size_t w = (size_t)coll_width(x->base.c);
    for (size_t i = 0; i < x->n; i++) {
        const int k = x->image_of[i];
        if (k < 0) continue;
        memcpy(x->vecs + i * w, x->base.im.vectors + (size_t)k * w, w * sizeof *x->vecs);
        x->items[i].image = x->base.im.bytes[k];
        x->items[i].image_len = x->base.im.lens[k];
        if (x->base.im.patches && route_patch_item_image(x->base.c, &x->base.im, k, &x->items[i],
                                                         x->vecs + i * w, &x->blobs[i])) {
            http_reply_error(x->base.req, 500, NULL, "out of memory");
            insert_free(x);
            return;
        }
        if (x->masks[i].pix &&
            !(x->items[i].labels = x->plabels[i] = route_mask_patches(&x->base.im,
                                                                      &x->masks[i]))) {
            http_reply_error(x->base.req, 500, NULL, "out of memory");
            insert_free(x);
            return;
        }
    }
    char err[ERR_LEN];
    const int rc = coll_insert(x->base.c, x->items, x->meta, x->n, x->ids, err, sizeof err);
    if (rc) {
        route_reply_store_error(x->base.req, rc, err);
    } else {
        for (size_t i = 0; i < x->n; i++) x->meta[i] = NULL; /* the index owns them now */
        json_t *ids = json_array();
        for (size_t i = 0; i < x->n; i++) json_array_append_new(ids, json_string(x->ids[i]));
        http_reply_json(x->base.req, 200, json_pack("{s:o}", "ids", ids));
    }
    insert_free(x);
}

/* Checks the items of an insert and fills x; replies 400/413 and returns -1. */
static int parse_items(struct http_request *req, struct insert_ctx *x, json_t ***image_strings,
                       char ***where)
{
    json_t *items = json_object_get(x->base.body, "items");
    if (!json_is_array(items) || json_array_size(items) == 0) {
        http_reply_error(req, 400, NULL, "'items' must be a non-empty array of items");
        return -1;
    }
    const size_t n = json_array_size(items);
    if (n > (size_t)x->base.app->limits.max_insert_items) {
        http_reply_errorf(req, 413, NULL, "%zu items in one request; the limit is %d", n,
                          x->base.app->limits.max_insert_items);
        return -1;
    }
    const size_t w = (size_t)coll_width(x->base.c);
    const bool patch_level = coll_level(x->base.c) == STORE_LEVEL_PATCH;
    x->n = n;
    x->items = calloc(n, sizeof *x->items);
    x->meta = calloc(n, sizeof *x->meta);
    x->meta_text = calloc(n, sizeof *x->meta_text);
    x->vecs = calloc(n * w, sizeof *x->vecs);
    x->image_of = malloc(n * sizeof *x->image_of);
    x->ids = malloc(n * sizeof *x->ids);
    x->blobs = calloc(n, sizeof *x->blobs);
    x->masks = calloc(n, sizeof *x->masks);
    x->plabels = calloc(n, sizeof *x->plabels);
    *image_strings = calloc(n, sizeof **image_strings);
    *where = calloc(n, sizeof **where);
    if (!x->items || !x->meta || !x->meta_text || !x->vecs || !x->image_of || !x->ids || !x->blobs || !x->masks || !x->plabels || !*image_strings || !*where) {
        http_reply_error(req, 500, NULL, "out of memory");
        return -1;
    }
    int n_images = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *it = json_array_get(items, i);
        char why[ERR_LEN] = "";
        json_t *id = json_object_get(it, "id"), *image = json_object_get(it, "image");
        json_t *vector = json_object_get(it, "vector"), *meta = json_object_get(it, "metadata");
        json_t *patches = json_object_get(it, "patches"), *labels = json_object_get(it, "labels");
        int status = 400;
        x->image_of[i] = -1;
        x->items[i].vector = x->vecs + i * w;
        x->items[i].dim = w;
        if (!json_is_object(it)) {
            snprintf(why, sizeof why, "is not an object");
        } else if (id && !json_is_null(id) &&
                   (!json_is_string(id) || json_string_length(id) == 0 ||
                    json_string_length(id) >= STORE_ID_MAX ||
                    strlen(json_string_value(id)) != json_string_length(id))) {
            snprintf(why, sizeof why, "'id' must be a string of 1 to %d bytes without NUL",
                     STORE_ID_MAX - 1);
        } else if (patch_level && vector) {
            snprintf(why, sizeof why, "has a 'vector', but collection '%s' is patch-level: give "
                     "'image', or 'patches' with 'grid'", coll_name(x->base.c));
        } else if (!patch_level && (patches || json_object_get(it, "grid"))) {
            snprintf(why, sizeof why, "has 'patches'/'grid', which need a collection created "
                     "with level \"patch\"");
        } else if (!image == !(patch_level ? patches : vector)) {
            snprintf(why, sizeof why, patch_level
                     ? "needs exactly one of 'image' and 'patches' (with 'grid')"
                     : "needs exactly one of 'image' and 'vector'");
        } else if (meta && !json_is_null(meta) && !json_is_object(meta)) {
            snprintf(why, sizeof why, "'metadata' must be an object");
        } else if (image && !json_is_string(image)) {
            snprintf(why, sizeof why, "'image' must be a base64 string or a data URI");
        } else if (labels && !json_is_null(labels) && (!patch_level || !image)) {
            snprintf(why, sizeof why, patch_level ? "has 'labels' without 'image': a mask labels "
                     "the pixels of the item's image" : "has 'labels', which need a collection "
                     "created with level \"patch\"");
        } else if (labels && !json_is_null(labels) &&
                   (status = route_mask_parse(x->base.app, labels, &x->masks[i], why,
                                              sizeof why))) {
            /* why says it */
        } else if (vector) {
            char vw[256];
            if (route_vector_from_json(vector, (int)w, true, x->vecs + i * w, vw, sizeof vw))
                snprintf(why, sizeof why, "'vector' %s", vw);
        } else if (patches) {
            char pw[256];
            if (route_patch_item_json(x->base.c, it, &x->items[i], x->vecs + i * w,
                                      &x->blobs[i], pw, sizeof pw))
                snprintf(why, sizeof why, "%s", pw);
        }
        if (why[0]) {
            http_reply_errorf(req, status ? status : 400, NULL, "items[%zu] %s", i, why);
            return -1;
        }
        x->items[i].external_id = json_string_value(id);
        if (json_is_object(meta)) {
            x->meta[i] = json_incref(meta);
            x->meta_text[i] = json_dumps(meta, JSON_COMPACT);
            if (!x->meta_text[i]) {
                http_reply_error(req, 500, NULL, "out of memory");
                return -1;
            }
            x->items[i].metadata = x->meta_text[i];
        }
        if (image) {
            char label[48];
            snprintf(label, sizeof label, "items[%zu].image", i);
            (*where)[n_images] = strdup(label);
            (*image_strings)[n_images] = image;
            x->image_of[i] = n_images++;
        }
    }
    return n_images;
}

static void insert_items(struct http_request *req, void *user)
{
    struct app *app = user;
    struct insert_ctx *x = route_index_begin(req, app, sizeof *x, insert_commit, insert_free);
    if (!x) return;
    json_t **image_strings = NULL;
    char **where = NULL;
    const int n_images = parse_items(req, x, &image_strings, &where);
    int rc = n_images < 0 ? -1 : 0;
    if (n_images > 0)
        rc = route_images_decode(req, app, image_strings, (const char *const *)where, n_images,
                                 &x->base.im);
    for (size_t i = 0; where && i < x->n; i++) free(where[i]);
    free(where);
    free(image_strings);
    for (size_t i = 0; !rc && i < x->n; i++) { /* a mask has its image's size */
        char why[ERR_LEN];
        const int st = x->masks[i].pix ? route_mask_check(app, &x->base.im, x->image_of[i],
                                                          &x->masks[i], why, sizeof why) : 0;
        if (st) {
            http_reply_errorf(req, st, NULL, "items[%zu] %s", i, why);
            rc = -1;
        }
    }
    if (rc) {
        insert_free(x);
        return;
    }
    route_index_start(&x->base);
}

/* The {id} item of the {name} collection (free it with store_item_free);
 * otherwise replies 404 (or the store's error) and returns -1. */
static int item_or_reply(struct http_request *req, struct app *app, struct item_out *it)
{
    struct coll *c = route_coll(req, app);
    if (!c) return -1;
    char err[ERR_LEN];
    const int rc = store_item_get(coll_store(c), coll_id(c), http_param(req, "id"), it, err,
                                  sizeof err);
    coll_release(c);
    if (rc) route_reply_store_error(req, rc, err);
    return rc ? -1 : 0;
}

static void get_item(struct http_request *req, void *user)
{
    struct item_out it;
    if (item_or_reply(req, user, &it)) return;
    json_t *vec = json_array();
    for (size_t i = 0; i < it.dim; i++) json_array_append_new(vec, json_real(it.vector[i]));
    json_t *meta = it.metadata ? json_loads(it.metadata, 0, NULL) : NULL;
    http_reply_json(req, 200, json_pack("{s:s, s:o, s:o, s:b}", "id", it.external_id, "metadata",
                                        meta ? meta : json_null(), "vector", vec, "has_image",
                                        it.image != NULL));
    store_item_free(&it);
}

static void delete_item(struct http_request *req, void *user)
{
    struct coll *c = route_coll(req, user);
    if (!c) return;
    const char *id = http_param(req, "id");
    char err[ERR_LEN];
    const int rc = coll_delete(c, id, err, sizeof err);
    if (rc)
        route_reply_store_error(req, rc, err);
    else
        http_reply_json(req, 200, json_pack("{s:s}", "deleted", id));
    coll_release(c);
}

/* The stored source image of an item (collections with store_images), as it
 * was sent: JPEG or PNG, told apart by their magic bytes. */
static void get_item_image(struct http_request *req, void *user)
{
    struct item_out it;
    if (item_or_reply(req, user, &it)) return;
    if (!it.image) {
        http_reply_errorf(req, 404, NULL, "item '%s' has no stored image (the collection keeps "
                          "images only when created with \"store_images\": true)", it.external_id);
    } else {
        const bool png = it.image_len >= 8 && !memcmp(it.image, "\x89PNG", 4);
        http_add_header(req, "Cache-Control", "private, max-age=60");
        http_reply_take(req, 200, png ? "image/png" : "image/jpeg", it.image, it.image_len, NULL);
        it.image = NULL; /* the reply owns it */
    }
    store_item_free(&it);
}

int routes_collections_register(struct http_router *r, struct app *app, char *err, size_t errlen)
{
    static const struct {
        const char *method, *path;
        http_handler_fn fn;
    } routes[] = {
        {"POST", "/v1/collections", create_collection},
        {"GET", "/v1/collections", list_collections},
        {"GET", "/v1/collections/{name}", get_collection},
        {"DELETE", "/v1/collections/{name}", delete_collection},
        {"POST", "/v1/collections/{name}/items", insert_items},
        {"GET", "/v1/collections/{name}/items/{id}", get_item},
        {"GET", "/v1/collections/{name}/items/{id}/image", get_item_image},
        {"DELETE", "/v1/collections/{name}/items/{id}", delete_item},
    };
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (route_add(r, app, routes[i].method, routes[i].path, routes[i].fn, err, errlen))
            return -1;
    return 0;
}
