/* POST /v1/pca: the first three principal components of the images' patch
 * tokens at each Matryoshka width, as a picture (PNG) or as numbers (JSON).
 *
 * Inputs: those of server/image_inputs.h. Options: model, widths, resolution
 * and crop as /v1/features (options.h), where widths must be trained widths
 * of the model (default: all of them); and this route's own:
 *   rasa       boolean, default false: RASA-cleaned tokens (422 on a model
 *              without RASA layers)
 *   threshold  number in [0, 1], default none: background removal. The first
 *              component (signed so its largest loading is positive) is
 *              min-max scaled to 0..1 over all patches of all images; patches
 *              below the threshold are background, drawn black.
 *   refit      boolean, default false (needs threshold): refit the PCA on the
 *              foreground patches alone, as the DINOv2 PCA script does, and
 *              colour the foreground from that fit (with fewer than 2
 *              foreground patches the first fit is kept); the background's
 *              projections are then 0
 *   upsample   "nearest" (default: each patch a P x P block) or "bilinear"
 *   format     "png" (default; also without the option unless Accept asks for
 *              application/json and not image/png) or "json"
 * cls, patch, pooled, normalize and dtype do not apply here (400).
 * Several images share one basis, fitted on all their patches together; the
 * tokens are not normalised. Colours: each component min-max scaled to 0..255
 * over the coloured (foreground) patches of all images.
 *
 * PNG: one column per width (the model input's side each, captioned "d=W"),
 * one row per image. JSON: per width the components [3, W], their explained
 * variances (divisor M - 1) and ratios, the mean [W], and per image the
 * projections [grid, grid, 3] (and the foreground mask with threshold). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "errors.h"
#include "image_inputs.h"
#include "infer.h"
#include "matryoshka.h"
#include "pca.h"
#include "pca_options.h"
#include "pca_picture.h"
#include "request_images.h"
#include "route_status.h"
#include "vit.h"

struct pca_ctx {
    struct http_request *req;
    struct pca_options o;
    int widths[OPTIONS_MAX_WIDTHS];
    int n_widths;
    int grid, side, patch_size;
};

/* The widths against the model: trained widths only; none given: all of them
 * (but those under 3 features, which cannot give 3 components). */
static int pca_widths(const struct feature_options *f, const struct model_config *cfg, int *out,
                      char *err, size_t errlen)
{
    if (f->n_widths == 0) {
        int n = 0;
        for (int j = 0; j < cfg->n_widths; j++)
            if (cfg->widths[j] >= 3) out[n++] = cfg->widths[j];
        if (n == 0) out[n++] = cfg->embed_dim;
        return n;
    }
    for (int i = 0; i < f->n_widths; i++) {
        bool trained = cfg->n_widths == 0 && f->widths[i] == cfg->embed_dim;
        for (int j = 0; j < cfg->n_widths; j++) trained |= cfg->widths[j] == f->widths[i];
        if (trained && f->widths[i] < 3)
            return set_err_code(err, errlen, OPTIONS_INVALID, "width %d has fewer features than "
                                "the 3 components drawn", f->widths[i]);
        if (!trained) {
            char list[MAX_WIDTHS * 12] = "";
            for (int j = 0; j < cfg->n_widths; j++)
                snprintf(list + strlen(list), sizeof list - strlen(list), "%s%d", j ? ", " : "",
                         cfg->widths[j]);
            return set_err_code(err, errlen, OPTIONS_INVALID, "width %d is not a trained "
                                "Matryoshka width of the model (trained: %s)", f->widths[i],
                                cfg->n_widths ? list : "its full width only");
        }
        out[i] = f->widths[i];
    }
    return f->n_widths;
}

/* Accept asks for JSON and not for PNG. */
static bool accept_json(const char *accept)
{
    return accept && strstr(accept, "application/json") && !strstr(accept, "image/png");
}

/* One width's result. */
struct width_out {
    struct pca_fit fit;
    float *proj;     /* [M, 3] */
    uint8_t *fg;     /* [M] with a threshold, else NULL */
    uint8_t *rgb;    /* [M, 3] */
};

static void width_out_free(struct width_out *w)
{
    pca_fit_free(&w->fit);
    free(w->proj);
    free(w->fg);
    free(w->rgb);
}

/* Fit, threshold, refit and colours for one width of tokens X [M, W]. */
static int compute_width(const struct pca_options *o, float *X, size_t M, int W,
                         struct width_out *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->proj = malloc(sizeof(float) * M * 3);
    out->rgb = malloc(M * 3);
    if (o->has_threshold) out->fg = malloc(M);
    if (!out->proj || !out->rgb || (o->has_threshold && !out->fg))
        return set_err(err, errlen, "out of memory");
    if (pca_fit(X, M, W, 3, &out->fit, err, errlen)) return -1;
    pca_project(&out->fit, X, M, out->proj);
    if (o->has_threshold) {
        float lo = out->proj[0], hi = out->proj[0];
        for (size_t i = 0; i < M; i++) {
            lo = fminf(lo, out->proj[i * 3]);
            hi = fmaxf(hi, out->proj[i * 3]);
        }
        size_t n_fg = 0;
        for (size_t i = 0; i < M; i++) {
            const double t = hi > lo ? (out->proj[i * 3] - lo) / (double)(hi - lo) : 0;
            out->fg[i] = t >= o->threshold;
            /* For a refit, X is compacted to the foreground rows, in order. */
            if (out->fg[i] && o->refit) memmove(X + n_fg * W, X + i * W, sizeof(float) * W);
            n_fg += out->fg[i];
        }
        /* Without refit every patch keeps its projection on the first fit. */
        if (o->refit && n_fg >= 2) {
            struct pca_fit second;
            if (pca_fit(X, n_fg, W, 3, &second, err, errlen)) return -1;
            pca_fit_free(&out->fit);
            out->fit = second;
            /* Background rows were overwritten: project the foreground only. */
            float *fp = malloc(sizeof(float) * n_fg * 3);
            if (!fp) return set_err(err, errlen, "out of memory");
            pca_project(&out->fit, X, n_fg, fp);
            for (size_t i = 0, j = 0; i < M; i++) {
                if (out->fg[i]) memcpy(out->proj + i * 3, fp + j++ * 3, sizeof(float) * 3);
                else out->proj[i * 3] = out->proj[i * 3 + 1] = out->proj[i * 3 + 2] = 0;
            }
            free(fp);
        }
    }
    pca_picture_colours(out->proj, out->fg, M, out->rgb);
    return 0;
}

static json_t *reals(const float *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++) json_array_append_new(a, json_real(v[i]));
    return a;
}

static json_t *width_json(const struct pca_ctx *c, const struct width_out *w, int n_images)
{
    const struct pca_fit *f = &w->fit;
    const int G = c->grid;
    json_t *o = json_object(), *comps = json_array(), *ev = json_array(), *evr = json_array();
    json_t *proj = json_array(), *fg = w->fg ? json_array() : NULL;
    json_object_set_new(o, "width", json_integer(f->W));
    for (int k = 0; k < 3; k++) {
        json_array_append_new(comps, reals(f->components + (size_t)k * f->W, (size_t)f->W));
        json_array_append_new(ev, json_real(f->variance[k]));
        json_array_append_new(evr, json_real(f->total_variance > 0 ? f->variance[k] /
                                             f->total_variance : 0));
    }
    for (int i = 0; i < n_images; i++) {
        json_t *img = json_array(), *mask = fg ? json_array() : NULL;
        for (int y = 0; y < G; y++) {
            json_t *row = json_array(), *mrow = mask ? json_array() : NULL;
            for (int x = 0; x < G; x++) {
                const size_t p = ((size_t)i * G + y) * G + x;
                json_array_append_new(row, reals(w->proj + p * 3, 3));
                if (mrow) json_array_append_new(mrow, json_boolean(w->fg[p]));
            }
            json_array_append_new(img, row);
            if (mask) json_array_append_new(mask, mrow);
        }
        json_array_append_new(proj, img);
        if (fg) json_array_append_new(fg, mask);
    }
    json_object_set_new(o, "components", comps);
    json_object_set_new(o, "explained_variance", ev);
    json_object_set_new(o, "explained_variance_ratio", evr);
    json_object_set_new(o, "mean", reals(f->mean, (size_t)f->W));
    json_object_set_new(o, "projections", proj);
    if (fg) json_object_set_new(o, "foreground", fg);
    return o;
}

static void reply(const struct pca_ctx *c, const struct infer_request *r, struct width_out *w)
{
    char err[ERR_LEN];
    http_add_header(c->req, "X-Model-Fingerprint", r->entry->fingerprint);
    http_add_header(c->req, "X-Model-Precision", r->entry->precision);
    if (c->o.json) {
        json_t *root = json_object(), *widths = json_array();
        json_object_set_new(root, "object", json_string("pca"));
        json_object_set_new(root, "model", json_string(r->entry->name));
        json_object_set_new(root, "fingerprint", json_string(r->entry->fingerprint));
        json_object_set_new(root, "grid", json_pack("{s:i,s:i}", "height", c->grid, "width",
                                                    c->grid));
        json_object_set_new(root, "patch_size", json_integer(c->patch_size));
        json_object_set_new(root, "images", json_integer(r->n));
        json_object_set_new(root, "threshold", c->o.has_threshold ? json_real(c->o.threshold)
                                                                  : json_null());
        json_object_set_new(root, "refit", json_boolean(c->o.refit));
        json_object_set_new(root, "rasa", json_boolean(c->o.rasa));
        for (int k = 0; k < c->n_widths; k++)
            json_array_append_new(widths, width_json(c, &w[k], r->n));
        json_object_set_new(root, "widths", widths);
        char *s = json_dumps(root, JSON_COMPACT | JSON_REAL_PRECISION(9));
        json_decref(root);
        if (!s) {
            http_reply_error(c->req, 500, NULL, "out of memory while writing the answer");
            return;
        }
        http_reply_take(c->req, 200, "application/json", s, strlen(s), NULL);
        return;
    }
    const uint8_t *tiles[OPTIONS_MAX_WIDTHS];
    for (int k = 0; k < c->n_widths; k++) tiles[k] = w[k].rgb;
    uint8_t *png;
    size_t len;
    if (pca_picture_png(tiles, c->widths, c->n_widths, r->n, c->grid, c->side, c->o.bilinear, &png,
                        &len, err, sizeof err)) {
        http_reply_error(c->req, 500, NULL, err);
        return;
    }
    http_reply_take(c->req, 200, "image/png", png, len, NULL);
}

static void pca_done(struct infer_request *r, int status, const char *err_in, void *user)
{
    struct pca_ctx *c = user;
    struct width_out w[OPTIONS_MAX_WIDTHS];
    int done = 0;
    char err[ERR_LEN];
    if (status != BATCH_OK) {
        route_reply_batch_error(c->req, status, err_in);
        goto out;
    }
    const size_t M = (size_t)r->n * r->N;
    const float *tok = c->o.rasa ? r->patch_rasa : r->patch;
    float *X = malloc(sizeof(float) * M * r->D);
    if (!X) {
        http_reply_error(c->req, 500, NULL, "out of memory");
        goto out;
    }
    for (; done < c->n_widths; done++) {
        matryoshka_cut(tok, (int)M, r->D, c->widths[done], false, X);
        if (compute_width(&c->o, X, M, c->widths[done], &w[done], err, sizeof err)) {
            width_out_free(&w[done]);
            break;
        }
    }
    free(X);
    if (done < c->n_widths) http_reply_error(c->req, 500, NULL, err);
    else reply(c, r, w);
out:
    for (int k = 0; k < done; k++) width_out_free(&w[k]);
    free(c);
    infer_free(r);
}

/* Checks the request against the model and sizes; fills c. Replies and
 * returns -1 on failure. */
static int plan(struct http_request *req, const struct app *app, const struct image_inputs *in,
                const struct model_config *cfg, const char *model, struct pca_ctx *c)
{
    char err[ERR_LEN];
    const struct feature_options *f = &in->opt;
    int rc = pca_options_parse(in->extra, in->extra_from_query, &c->o, err, sizeof err);
    if (rc == OPTIONS_OK) rc = options_check_model(f, cfg, err, sizeof err);
    if (rc == OPTIONS_OK && c->o.rasa && cfg->rasa_layers <= 0)
        rc = set_err_code(err, sizeof err, OPTIONS_INVALID, "option 'rasa' is not available: "
                          "model '%s' has no RASA layers", model);
    const int crop = cfg->preprocess.crop_size;
    if (rc == OPTIONS_OK && f->crop == CROP_CENTER && f->resolution && f->resolution != crop)
        rc = set_err_code(err, sizeof err, OPTIONS_INVALID, "resolution %d needs crop \"square\": "
                          "crop \"center\" is the eval preprocessing of model '%s' (crop %d)",
                          f->resolution, model, crop);
    if (rc == OPTIONS_OK) {
        c->n_widths = pca_widths(f, cfg, c->widths, err, sizeof err);
        if (c->n_widths < 0) rc = c->n_widths;
    }
    if (rc != OPTIONS_OK) {
        http_reply_error(req, route_status_options(rc), NULL, err);
        return -1;
    }
    if (!c->o.has_format)
        c->o.json = accept_json(http_header(req, "Accept"));
    c->req = req;
    c->side = f->crop == CROP_SQUARE && f->resolution ? f->resolution : crop;
    c->patch_size = cfg->patch_size;
    c->grid = c->side / c->patch_size;
    if (image_inputs_check_tokens(req, &app->limits, in->n, c->side, crop, c->patch_size))
        return -1;
    const uint64_t N = (uint64_t)c->grid * c->grid;
    if (c->o.json) {
        uint64_t floats = 0;
        for (int k = 0; k < c->n_widths; k++) floats += 4 * (uint64_t)c->widths[k] + 3 * N * in->n;
        if (floats > app->limits.max_json_floats) {
            http_reply_errorf(req, 413, NULL, "the answer would hold %llu numbers, over the %zu "
                              "allowed in JSON: ask for the PNG or fewer images or widths",
                              (unsigned long long)floats, app->limits.max_json_floats);
            return -1;
        }
    }
    return 0;
}

static void pca_route(struct http_request *req, void *user)
{
    struct app *app = user;
    struct image_inputs in;
    char err[ERR_LEN];
    if (image_inputs_parse(req, &app->limits, pca_option_keys, &in)) {
        image_inputs_free(&in);
        return;
    }
    struct model_entry *e = route_acquire_model(req, app, in.opt.model[0] ? in.opt.model : NULL);
    if (!e) {
        image_inputs_free(&in);
        return;
    }
    const struct model_config *cfg = vit_model_config(e->model);
    struct pca_ctx c = {0};
    if (plan(req, app, &in, cfg, e->name, &c)) {
        model_entry_release(e);
        image_inputs_free(&in);
        return;
    }
    struct infer_request *r;
    const int S = c.side;
    int rc = infer_new(&r, app->batcher, e, in.n, S, S, !c.o.rasa, c.o.rasa, err, sizeof err);
    if (rc != BATCH_OK) {
        route_reply_batch_error(req, rc, err);
        image_inputs_free(&in);
        return;
    }
    route_submit_images(req, app, &in, r, S, pca_done, &c, sizeof c);
}

int routes_pca_register(struct http_router *r, struct app *app, char *err, size_t errlen)
{
    return route_add(r, app, "POST", "/v1/pca", pca_route, err, errlen);
}
