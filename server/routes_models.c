/* GET /v1/models and GET /v1/models/{name}: what each loaded model is and the
 * limits requests must respect. */
#include <string.h>

#include "app.h"
#include "vit.h"

static json_t *limits_json(const struct app *app)
{
    const struct app_limits *l = &app->limits;
    return json_pack("{s:I, s:I, s:i, s:i, s:i, s:i, s:I, s:i, s:I}",
                     "max_body_bytes", (json_int_t)l->max_body_bytes,
                     "max_image_pixels", (json_int_t)l->max_image_pixels,
                     "max_images_per_request", l->max_images,
                     "max_batch", l->max_batch,
                     "max_delay_ms", l->max_delay_ms,
                     "max_queue", l->max_queue,
                     "max_inflight_tokens", (json_int_t)l->max_inflight_tokens,
                     "max_side", VIT_MAX_SIDE,
                     "max_json_floats", (json_int_t)l->max_json_floats);
}

static json_t *model_json(const struct app *app, const struct model_entry *e, bool is_default)
{
    const struct model_config *c = vit_model_config(e->model);
    json_t *widths = json_array();
    for (int i = 0; i < c->n_widths; i++) json_array_append_new(widths, json_integer(c->widths[i]));
    const struct preprocess_config *p = &c->preprocess;
    json_t *pre = json_pack("{s:i, s:i, s:[f,f,f], s:[f,f,f]}", "resize_size", p->resize_size,
                            "crop_size", p->crop_size, "mean", p->mean[0], p->mean[1], p->mean[2],
                            "std", p->std[0], p->std[1], p->std[2]);
    return json_pack("{s:s, s:s, s:b, s:s, s:s, s:b, s:i, s:i, s:i, s:s, s:i, s:i, s:o, s:i, "
                     "s:b, s:i, s:o, s:s, s:s, s:s, s:s, s:o}",
                     "id", e->name, "object", "model", "default", is_default,
                     "family", c->family == FAMILY_FRANCA ? "franca" : "dinov2",
                     "version", c->version, "trained", c->trained,
                     "embed_dim", c->embed_dim, "depth", c->depth, "num_heads", c->num_heads,
                     "ffn", c->ffn == FFN_SWIGLU ? "swiglu" : "mlp",
                     "patch_size", c->patch_size, "register_tokens", c->register_tokens,
                     "matryoshka_widths", widths, "default_resolution", c->preprocess.crop_size,
                     "rasa", c->rasa_layers > 0, "rasa_layers", c->rasa_layers,
                     "preprocess", pre, "fingerprint", e->fingerprint,
                     "loaded_at", e->loaded_at_iso, "device", e->device,
                     "precision", e->precision, "limits", limits_json(app));
}

static void list_models(struct http_request *req, void *user)
{
    struct app *app = user;
    struct model_entry **e;
    size_t n;
    int def;
    char err[256];
    if (registry_list(app->registry, &e, &n, &def, err, sizeof err)) {
        http_reply_error(req, 500, NULL, err);
        return;
    }
    json_t *data = json_array();
    for (size_t i = 0; i < n; i++) json_array_append_new(data, model_json(app, e[i], (int)i == def));
    registry_list_free(e, n);
    http_reply_json(req, 200, json_pack("{s:s, s:o, s:o}", "object", "list", "data", data,
                                        "limits", limits_json(app)));
}

static void get_model(struct http_request *req, void *user)
{
    struct app *app = user;
    const char *name = http_param(req, "name");
    char def[REGISTRY_NAME_MAX];
    struct model_entry *e = route_acquire_model(req, app, name);
    if (!e) return;
    registry_default_name(app->registry, def, sizeof def);
    json_t *j = model_json(app, e, !strcmp(def, e->name));
    model_entry_release(e);
    http_reply_json(req, 200, j);
}

int routes_models_register(struct http_router *r, struct app *app, char *err, size_t errlen)
{
    if (route_add(r, app, "GET", "/v1/models", list_models, err, errlen)) return -1;
    return route_add(r, app, "GET", "/v1/models/{name}", get_model, err, errlen);
}
