/* POST /v1/embeddings, OpenAI-compatible: the CLS embedding of each input image
 * at `dimensions` (prefix, then L2-normalised). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "app.h"
#include "base64.h"
#include "datauri.h"
#include "errors.h"
#include "infer.h"
#include "matryoshka.h"
#include "request_images.h"
#include "route_status.h"
#include "vit.h"

struct embed_ctx {
    struct http_request *req;
    struct app *app;
    int dimensions;
    bool base64;
};

/* One embedding as a JSON value: an array of numbers (a non-finite one, which
 * only a broken checkpoint yields, as null, like /v1/features) or a base64
 * string of little-endian f32. NULL when out of memory. */
static json_t *embedding_json(const float *v, int n, bool base64)
{
    if (base64) {
        size_t len;
        char *b = base64_encode_f32le(v, n, &len);
        json_t *s = b ? json_stringn(b, len) : NULL;
        free(b);
        return s;
    }
    json_t *a = json_array();
    for (int k = 0; a && k < n; k++)
        if (json_array_append_new(a, isfinite(v[k]) ? json_real(v[k]) : json_null())) {
            json_decref(a);
            return NULL;
        }
    return a;
}

/* The "data" array of the answer, or NULL when out of memory: a partial list
 * must never go out as a 200. */
static json_t *embeddings_data(const struct embed_ctx *ctx, const struct infer_request *r)
{
    const int Wd = ctx->dimensions;
    float *cut = malloc(sizeof(float) * Wd);
    json_t *data = cut ? json_array() : NULL;
    for (int i = 0; data && i < r->n; i++) {
        matryoshka_cut(r->cls + (size_t)i * r->D, 1, r->D, Wd, true, cut);
        json_t *emb = embedding_json(cut, Wd, ctx->base64);
        json_t *item = emb ? json_pack("{s:s, s:i, s:o}", "object", "embedding", "index", i,
                                       "embedding", emb)
                           : NULL;
        if (!item || json_array_append_new(data, item)) {
            json_decref(data);
            data = NULL;
        }
    }
    free(cut);
    return data;
}

static void embed_done(struct infer_request *r, int status, const char *err, void *user)
{
    struct embed_ctx *ctx = user;
    struct http_request *req = ctx->req;
    json_t *data = status == BATCH_OK ? embeddings_data(ctx, r) : NULL;
    const json_int_t tokens = (json_int_t)r->n * r->N;
    json_t *body = data ? json_pack("{s:s, s:o, s:s, s:s, s:{s:I, s:I}}", "object", "list",
                                    "data", data, "model", r->entry->name, "fingerprint",
                                    r->entry->fingerprint, "usage", "prompt_tokens", tokens,
                                    "total_tokens", tokens)
                        : NULL;
    if (status != BATCH_OK) {
        route_reply_batch_error(req, status, err);
    } else if (!body) {
        http_reply_error(req, 500, NULL, "out of memory while writing the answer");
    } else {
        http_add_header(req, "X-Model-Fingerprint", r->entry->fingerprint);
        http_add_header(req, "X-Model-Precision", r->entry->precision);
        http_reply_json(req, 200, body);
    }
    free(ctx);
    infer_free(r);
}

/* Validates the request body; on failure replies and returns NULL. */
static json_t *parse_body(struct http_request *req, const struct app *app)
{
    json_t *j = route_json_body(req);
    if (!j) return NULL;
    json_t *input = json_object_get(j, "input");
    const size_t n = json_is_array(input) ? json_array_size(input) : 1;
    const char *why = NULL;
    if (!input) why = "'input' is required: a base64 image or data URI, or an array of them";
    else if (!json_is_string(input) && !json_is_array(input)) why = "'input' must be a string or an array of strings";
    else if (n == 0) why = "'input' is an empty array";
    for (size_t i = 0; !why && json_is_array(input) && i < n; i++)
        if (!json_is_string(json_array_get(input, i))) why = "every element of 'input' must be a string";
    json_t *model = json_object_get(j, "model"), *dims = json_object_get(j, "dimensions");
    json_t *fmt = json_object_get(j, "encoding_format");
    if (!why && model && !json_is_string(model) && !json_is_null(model)) why = "'model' must be a string";
    if (!why && dims && !json_is_integer(dims) && !json_is_null(dims)) why = "'dimensions' must be an integer";
    if (!why && fmt && !json_is_null(fmt) &&
        (!json_is_string(fmt) || (strcmp(json_string_value(fmt), "float") &&
                                  strcmp(json_string_value(fmt), "base64"))))
        why = "'encoding_format' must be \"float\" or \"base64\"";
    if (why) {
        http_reply_error(req, 400, NULL, why);
        json_decref(j);
        return NULL;
    }
    if (n > (size_t)app->limits.max_images) {
        http_reply_errorf(req, 413, NULL, "%zu images in one request; the limit is %d", n,
                          app->limits.max_images);
        json_decref(j);
        return NULL;
    }
    return j;
}

static void embeddings(struct http_request *req, void *user)
{
    struct app *app = user;
    json_t *j = parse_body(req, app);
    if (!j) return;
    json_t *input = json_object_get(j, "input"), *dims = json_object_get(j, "dimensions");
    const char *model = json_string_value(json_object_get(j, "model"));
    const char *fmt = json_string_value(json_object_get(j, "encoding_format"));
    const int n = json_is_array(input) ? (int)json_array_size(input) : 1;

    char err[ERR_LEN];
    int rc;
    struct infer_request *r = NULL;
    struct embed_ctx *ctx = NULL;
    struct model_entry *e = route_acquire_model(req, app, model);
    if (!e) goto done;
    const struct model_config *cfg = vit_model_config(e->model);
    const json_int_t want = dims && json_is_integer(dims) ? json_integer_value(dims) : cfg->embed_dim;
    if (want < 1 || want > cfg->embed_dim) {
        char list[160] = "";
        for (int i = 0; i < cfg->n_widths; i++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%d", i ? ", " : "", cfg->widths[i]);
        http_reply_errorf(req, 422, NULL, "'dimensions' %lld is out of range 1..%d for model '%s' "
                          "(trained Matryoshka widths: %s)", (long long)want, cfg->embed_dim, e->name, list);
        model_entry_release(e);
        goto done;
    }
    const int S = request_image_side(cfg, 0);
    rc = infer_new(&r, app->batcher, e, n, S, S, false, false, err, sizeof err); /* takes e */
    if (rc != BATCH_OK) {
        route_reply_batch_error(req, rc, err);
        goto done;
    }
    for (int i = 0; i < n; i++) {
        json_t *s = json_is_array(input) ? json_array_get(input, i) : input;
        uint8_t *bytes;
        size_t len;
        enum datauri_media media;
        enum datauri_status st = datauri_decode(json_string_value(s), json_string_length(s),
                                                app->limits.max_body_bytes, &bytes, &len, &media,
                                                err, sizeof err);
        if (st != DATAURI_OK) {
            http_reply_errorf(req, route_status_datauri(st), NULL, "input[%d]: %s", i, err);
            goto done;
        }
        rc = request_image_prepare(bytes, len, cfg, 0, app->limits.max_image_pixels,
                                   app->metrics, r->input + (size_t)i * 3 * S * S, err,
                                   sizeof err);
        free(bytes);
        if (rc) {
            http_reply_errorf(req, 422, NULL, "input[%d]: %s", i, err);
            goto done;
        }
    }
    if (!(ctx = malloc(sizeof(*ctx)))) {
        http_reply_error(req, 500, NULL, "out of memory");
        goto done;
    }
    *ctx = (struct embed_ctx){.req = req, .app = app, .dimensions = (int)want,
                              .base64 = fmt && !strcmp(fmt, "base64")};
    infer_set_cancel(r, route_abandoned, req);
    http_defer(req);
    rc = infer_submit(r, embed_done, ctx, err, sizeof err);
    if (rc) {
        route_reply_batch_error(req, rc, err);
        goto done;
    }
    r = NULL; /* embed_done owns the request and ctx now */
    ctx = NULL;
done:
    free(ctx);
    if (r) infer_free(r);
    json_decref(j);
}

int routes_embeddings_register(struct http_router *r, struct app *app, char *err, size_t errlen)
{
    return route_add(r, app, "POST", "/v1/embeddings", embeddings, err, errlen);
}
