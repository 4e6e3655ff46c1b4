/* Helpers of the index routes; see routes_index.h. */
#include "routes_index.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "datauri.h"
#include "errors.h"
#include "infer.h"
#include "matryoshka.h"
#include "request_images.h"
#include "route_status.h"
#include "vit.h"

struct coll *route_coll(struct http_request *req, struct app *app)
{
    const char *name = http_param(req, "name");
    struct coll *c = name ? index_acquire(app->index, name) : NULL;
    if (!c) {
        char shown[64];
        printable_copy(name ? name : "", name ? strlen(name) : 0, shown, sizeof shown);
        http_reply_errorf(req, 404, NULL, "no collection named '%s'", shown);
    }
    return c;
}

void route_reply_store_error(struct http_request *req, int rc, const char *msg)
{
    http_reply_error(req, route_status_store(rc), NULL, msg);
}

json_t *route_coll_json(struct coll *c)
{
    char err[ERR_LEN], job[COLL_JOB_ID_MAX];
    struct collection_info info;
    coll_info(c, &info);
    int64_t count = -1;
    store_collection_count(coll_store(c), info.id, &count, err, sizeof err);
    struct index_mirror *m = coll_read_begin(c);
    const json_int_t indexed = (json_int_t)mirror_count(m);
    const int pw = mirror_prefix_width(m);
    json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:s, s:b, s:s, s:I, s:I, s:i}", "name",
                          info.name, "model", info.model, "fingerprint", info.fingerprint,
                          "width", (json_int_t)info.width, "metric",
                          store_metric_name(info.metric), "store_images", info.store_images,
                          "created_at", info.created_at, "count", (json_int_t)count, "indexed",
                          indexed, "prefix_width", pw);
    /* The search mirror's form and what it holds in memory (SQLite keeps f32). */
    json_object_set_new(o, "mirror", json_string(store_mirror_name(mirror_form(m))));
    json_object_set_new(o, "vector_bytes", json_integer((json_int_t)mirror_vector_bytes(m)));
    json_object_set_new(o, "mirror_bytes", json_integer((json_int_t)mirror_bytes(m)));
    coll_read_end(c);
    if (o && coll_job_id(c, job)) json_object_set_new(o, "job", json_string(job));
    json_object_set_new(o, "level", json_string(info.level == STORE_LEVEL_PATCH ? "patch" : "cls"));
    struct patch_mirror *pm = coll_patches_begin(c);
    if (o && pm) { /* what the patch matrices hold in memory (as on disk) */
        json_object_set_new(o, "storage", json_string(patch_type_name(patch_mirror_type(pm))));
        json_object_set_new(o, "patches", json_integer((json_int_t)patch_mirror_patches(pm)));
        json_object_set_new(o, "patch_bytes", json_integer((json_int_t)patch_mirror_bytes(pm)));
    }
    if (pm) coll_patches_end(c);
    struct coll_ann_info ai;
    coll_ann_info(c, &ai);
    if (o && ai.present) {
        json_t *a = json_pack("{s:s, s:i, s:i, s:i, s:i, s:b, s:b, s:I, s:I}", "kind", "hnsw",
                              "width", ai.d.width, "m", ai.d.m, "ef_construction",
                              ai.d.ef_construction, "ef", ai.d.ef, "ready", ai.ready,
                              "building", ai.building, "nodes", (json_int_t)ai.nodes,
                              "tombstones", (json_int_t)ai.tombstones);
        if (a && ai.saved_generation >= 0)
            json_object_set_new(a, "saved_generation", json_integer(ai.saved_generation));
        if (a && ai.building)
            json_object_set_new(a, "progress", json_pack("{s:I, s:I}", "done",
                                                         (json_int_t)ai.build_done, "total",
                                                         (json_int_t)ai.build_total));
        if (a && ai.error[0]) json_object_set_new(a, "error", json_string(ai.error));
        json_object_set_new(o, "ann", a);
    } else if (o) {
        json_object_set_new(o, "ann", json_null());
    }
    return o;
}

bool route_collection_name_valid(const char *name)
{
    if (!name || !name[0] || name[0] == '.' || strlen(name) >= STORE_NAME_MAX) return false;
    for (const char *p = name; *p; p++) {
        const char ch = *p;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

int route_vector_from_json(const json_t *v, int dim, bool exact, float *out, char *why, size_t len)
{
    if (!json_is_array(v)) return set_err(why, len, "must be an array of numbers");
    const size_t n = json_array_size(v);
    if (exact ? n != (size_t)dim : n < (size_t)dim)
        return set_err(why, len, "has %zu numbers; the collection width is %d%s", n, dim,
                       exact ? "" : " (at least that many are needed)");
    for (int i = 0; i < dim; i++) {
        const json_t *x = json_array_get(v, (size_t)i);
        if (!json_is_number(x)) return set_err(why, len, "element %d is not a number", i);
        const double d = json_number_value(x);
        if (!isfinite(d) || fabs(d) > 3.4028234663852886e38)
            return set_err(why, len, "element %d is not a finite float32 (NaN, Inf or too large)",
                           i);
        out[i] = (float)d;
    }
    return 0;
}

int route_images_decode(struct http_request *req, struct app *app, json_t *const *strings,
                        const char *const *where, int n, struct route_images *out)
{
    *out = (struct route_images){.n = n};
    out->bytes = calloc((size_t)n, sizeof *out->bytes);
    out->lens = calloc((size_t)n, sizeof *out->lens);
    if (!out->bytes || !out->lens) {
        http_reply_error(req, 500, NULL, "out of memory");
        return -1;
    }
    for (int i = 0; i < n; i++) {
        char err[ERR_LEN];
        enum datauri_status st =
            datauri_decode(json_string_value(strings[i]), json_string_length(strings[i]),
                           app->limits.max_body_bytes, &out->bytes[i], &out->lens[i], NULL, err,
                           sizeof err);
        if (st != DATAURI_OK) {
            http_reply_errorf(req, route_status_datauri(st), NULL, "%s: %s", where[i], err);
            return -1;
        }
    }
    return 0;
}

void route_images_free(struct route_images *im)
{
    for (int i = 0; im->bytes && i < im->n; i++) free(im->bytes[i]);
    free(im->bytes);
    free(im->lens);
    free(im->vectors);
    free(im->patches);
    *im = (struct route_images){0};
}

/* Called once on the index work queue: status BATCH_OK with im->vectors
 * filled, or the batcher's code and message. */
typedef void (*embed_done_fn)(void *user, int status, const char *err);

struct embed_ctx {
    struct app *app;
    struct route_images *im;
    int width;
    bool patches;     /* a patch-level collection: keep the patch tokens too */
    embed_done_fn done;
    void *user;
    int status;
    char err[ERR_LEN];
};

static void embed_finish(void *arg)
{
    struct embed_ctx *x = arg;
    x->done(x->user, x->status, x->status == BATCH_OK ? NULL : x->err);
    free(x);
}

static void embed_done(struct infer_request *r, int status, const char *err, void *user)
{
    struct embed_ctx *x = user;
    x->status = status;
    if (status == BATCH_OK) {
        x->im->vectors = malloc((size_t)r->n * (size_t)x->width * sizeof(float));
        if (x->im->vectors)
            matryoshka_cut(r->cls, r->n, r->D, x->width, true, x->im->vectors);
        else
            x->status = BATCH_ERR, snprintf(x->err, sizeof x->err, "out of memory");
        const float *tok = r->patch_rasa ? r->patch_rasa : r->patch;
        if (x->patches && x->status == BATCH_OK) {
            const size_t rows = (size_t)r->n * (size_t)r->N;
            x->im->patches = malloc(rows * (size_t)x->width * sizeof(float));
            if (x->im->patches)
                matryoshka_cut(tok, (int)rows, r->D, x->width, true, x->im->patches);
            else
                x->status = BATCH_ERR, snprintf(x->err, sizeof x->err, "out of memory");
        }
    } else {
        snprintf(x->err, sizeof x->err, "%s", err ? err : "inference failed");
    }
    infer_free(r);
    /* On a reply thread (infer.h): the caller commits or searches next. */
    if (workq_submit(x->app->index_work, embed_finish, x)) {
        x->status = BATCH_FULL;
        snprintf(x->err, sizeof x->err, "the index work queue is full");
        embed_finish(x);
    }
}

/* Embeds im with the collection's model at its width; done runs once, on the
 * index work queue. Replies and returns -1 when that cannot start: 409 when
 * the model's checkpoint is not the one that embedded the collection (naming
 * both fingerprints) or the model is gone, 422 for an undecodable image,
 * 429/503 from the batcher. */
static int coll_embed(struct http_request *req, struct app *app, struct coll *c,
                      struct route_images *im, embed_done_fn done, void *user)
{
    char err[ERR_LEN];
    struct collection_info info;
    coll_info(c, &info);
    if (!info.model[0]) {
        http_reply_errorf(req, 400, NULL, "collection '%s' has no model; it takes vectors only",
                          info.name);
        return -1;
    }
    if (!atomic_load(&app->ready)) {
        http_add_header(req, "Retry-After", "2");
        http_reply_error(req, 503, NULL, "models are still loading");
        return -1;
    }
    struct model_entry *e;
    if (registry_acquire(app->registry, info.model, &e, err, sizeof err)) {
        http_reply_errorf(req, 409, NULL, "collection '%s' was embedded with model '%s', which is "
                          "not loaded: %s", info.name, info.model, err);
        return -1;
    }
    const char *fp = info.fingerprint;
    const struct model_config *cfg = vit_model_config(e->model);
    if (strcmp(fp, e->fingerprint)) {
        http_reply_errorf(req, 409, NULL, "collection '%s' was embedded with checkpoint %s, but "
                          "model '%s' now serves checkpoint %s; search it by vector, or "
                          "re-embed it (POST /v1/collections/%s/reembed)", info.name, fp,
                          e->name, e->fingerprint, info.name);
        model_entry_release(e);
        return -1;
    }
    if (info.width > cfg->embed_dim) { /* only a broken store gets here */
        http_reply_errorf(req, 500, NULL, "collection width %lld exceeds the model's %d",
                          (long long)info.width, cfg->embed_dim);
        model_entry_release(e);
        return -1;
    }
    const int S = request_image_side(cfg, 0);
    const bool patches = info.level == STORE_LEVEL_PATCH, rasa = cfg->rasa_layers > 0;
    im->grid_h = im->grid_w = S / cfg->patch_size;
    im->resize_size = cfg->preprocess.resize_size;
    im->crop_size = S;
    im->patch_size = cfg->patch_size;
    struct infer_request *r;
    int rc = infer_new(&r, app->batcher, e, im->n, S, S, patches && !rasa, patches && rasa, err,
                       sizeof err);
    if (rc != BATCH_OK) {
        route_reply_batch_error(req, rc, err);
        return -1;
    }
    for (int i = 0; i < im->n; i++)
        if (request_image_prepare(im->bytes[i], im->lens[i], cfg, 0,
                                  app->limits.max_image_pixels, app->metrics,
                                  r->input + (size_t)i * 3 * S * S, err, sizeof err)) {
            http_reply_errorf(req, 422, NULL, "image %d: %s", i, err);
            infer_free(r);
            return -1;
        }
    struct embed_ctx *x = calloc(1, sizeof *x);
    if (!x) {
        http_reply_error(req, 500, NULL, "out of memory");
        infer_free(r);
        return -1;
    }
    *x = (struct embed_ctx){.app = app, .im = im, .width = (int)info.width,
                            .patches = patches, .done = done, .user = user};
    infer_set_cancel(r, route_abandoned, req);
    rc = infer_submit(r, embed_done, x, err, sizeof err);
    if (rc) {
        route_reply_batch_error(req, rc, err);
        free(x);
        infer_free(r);
        return -1;
    }
    return 0;
}

/* Queues fn on the index work queue; replies 429 when it is full (-1). */
static int index_submit(struct http_request *req, struct app *app, workq_fn fn, void *arg)
{
    if (workq_submit(app->index_work, fn, arg)) {
        http_add_header(req, "Retry-After", "1");
        http_reply_error(req, 429, NULL, "the index work queue is full; retry later");
        return -1;
    }
    return 0;
}

void *route_index_begin(struct http_request *req, struct app *app, size_t size, workq_fn run,
                        void (*release)(void *ctx))
{
    struct route_index_req *r = calloc(1, size);
    if (!r) {
        http_reply_error(req, 500, NULL, "out of memory");
        return NULL;
    }
    *r = (struct route_index_req){.req = req, .app = app, .run = run, .release = release};
    if (!(r->body = route_json_body(req)) || !(r->c = route_coll(req, app))) {
        release(r);
        return NULL;
    }
    return r;
}

void route_index_end(struct route_index_req *r)
{
    route_images_free(&r->im);
    json_decref(r->body);
    coll_release(r->c);
}

static void embedded(void *user, int status, const char *err)
{
    struct route_index_req *r = user;
    if (status != BATCH_OK) {
        route_reply_batch_error(r->req, status, err);
        r->release(r);
        return;
    }
    r->run(r);
}

void route_index_start(struct route_index_req *r)
{
    http_defer(r->req);
    if (r->im.n > 0) {
        if (coll_embed(r->req, r->app, r->c, &r->im, embedded, r)) r->release(r);
    } else if (index_submit(r->req, r->app, r->run, r)) {
        r->release(r);
    }
}
