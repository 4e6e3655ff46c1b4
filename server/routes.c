/* The route table, the API key check of the /v1 routes, and the error
 * mappings shared by the route families. */
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "errors.h"
#include "image_inputs.h"
#include "infer.h"
#include "request_images.h"
#include "route_status.h"
#include "vit.h"

static bool is_data_path(const char *path)
{
    return strncmp(path, "/v1", 3) == 0 && (path[3] == '/' || path[3] == '\0');
}

void routes_head_check(struct http_request *req, void *user)
{
    const struct app *app = user;
    /* Keys are set before the server starts and never change: no lock. The
     * decoded path counts, so an escaped "/%761/..." is checked too, and an
     * unknown /v1 path answers 401/403 before 404 (routes stay private). */
    if (app->api_keys.n && is_data_path(http_path(req)))
        auth_check(req, &app->api_keys, AUTH_API);
}

int route_add(struct http_router *r, struct app *app, const char *method, const char *pattern,
              http_handler_fn fn, char *err, size_t errlen)
{
    return http_router_add(r, method, pattern, fn, app, err, errlen);
}

int routes_register(struct http_router *r, struct app *app, char *err, size_t errlen)
{
    if (routes_ops_register(r, app, err, errlen)) return -1;
    if (routes_models_register(r, app, err, errlen)) return -1;
    if (routes_embeddings_register(r, app, err, errlen)) return -1;
    if (routes_features_register(r, app, err, errlen)) return -1;
    if (routes_pca_register(r, app, err, errlen)) return -1;
    if (routes_admin_register(r, app, err, errlen)) return -1;
    if (routes_collections_register(r, app, err, errlen)) return -1;
    if (routes_search_register(r, app, err, errlen)) return -1;
    if (routes_jobs_register(r, app, err, errlen)) return -1;
    if (routes_ui_register(r, app, err, errlen)) return -1;
    if (routes_patch_register(r, app, err, errlen)) return -1;
    if (routes_segment_register(r, app, err, errlen)) return -1;
    return 0;
}

json_t *route_json_body(struct http_request *req)
{
    /* JSON bodies only; curl's default form type is tolerated, since curl -d
     * sends it for any body. */
    const char *ct = http_header(req, "Content-Type");
    if (ct && strncmp(ct, "application/json", 16) &&
        strncmp(ct, "application/x-www-form-urlencoded", 33)) {
        http_reply_errorf(req, 415, NULL, "Content-Type must be application/json, got '%s'", ct);
        return NULL;
    }
    size_t len;
    const char *body = http_body(req, &len);
    json_error_t je;
    json_t *j = json_loadb(body, len, 0, &je);
    if (!json_is_object(j)) {
        http_reply_errorf(req, 400, NULL, "body is not a JSON object: %s",
                          j ? "found another JSON type" : je.text);
        json_decref(j);
        return NULL;
    }
    return j;
}

struct model_entry *route_acquire_model(struct http_request *req, struct app *app,
                                        const char *name)
{
    if (!atomic_load(&app->ready)) {
        http_add_header(req, "Retry-After", "2");
        http_reply_error(req, 503, NULL, "models are still loading");
        return NULL;
    }
    struct model_entry *e;
    char err[256];
    const int rc = registry_acquire(app->registry, name, &e, err, sizeof err);
    if (rc) {
        route_reply_registry_error(req, rc, err);
        return NULL;
    }
    return e;
}

void route_reply_registry_error(struct http_request *req, int rc, const char *msg)
{
    http_reply_error(req, route_status_registry(rc), NULL, msg);
}

void route_reply_batch_error(struct http_request *req, int rc, const char *msg)
{
    if (rc == BATCH_FULL) {
        http_add_header(req, "Retry-After", "1");
        if (!msg) msg = "the inference queue is full; retry later";
    } else if (rc == BATCH_SHUTDOWN) {
        msg = "the server is shutting down";
    }
    http_reply_error(req, route_status_batch(rc), NULL, msg);
}

void route_submit_images(struct http_request *req, struct app *app, struct image_inputs *in,
                         struct infer_request *r, int side, infer_done_fn done,
                         const void *ctx, size_t ctx_size)
{
    char err[ERR_LEN];
    const struct model_config *cfg = vit_model_config(r->entry->model);
    const int prep_res = in->opt.crop == CROP_SQUARE ? side : 0;
    for (int i = 0; i < in->n; i++) {
        if (request_image_prepare(in->images[i].data, in->images[i].len, cfg, prep_res,
                                  app->limits.max_image_pixels, app->metrics,
                                  r->input + (size_t)i * 3 * side * side, err, sizeof err)) {
            http_reply_errorf(req, 422, NULL, "%s: %s", in->images[i].label, err);
            infer_free(r);
            image_inputs_free(in);
            return;
        }
    }
    image_inputs_free(in);
    void *copy = malloc(ctx_size);
    if (!copy) {
        http_reply_error(req, 500, NULL, "out of memory");
        infer_free(r);
        return;
    }
    memcpy(copy, ctx, ctx_size);
    infer_set_cancel(r, route_abandoned, req);
    http_defer(req);
    const int rc = infer_submit(r, done, copy, err, sizeof err);
    if (rc) {
        route_reply_batch_error(req, rc, err);
        free(copy);
        infer_free(r);
    }
}

bool route_abandoned(void *req)
{
    return http_client_gone(req);
}
