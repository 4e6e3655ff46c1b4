/* POST /v1/features, native: CLS, patch tokens and pooled patch tokens of images
 * at several Matryoshka widths from one forward pass.
 *
 * Request forms: those of server/image_inputs.h (the options are those of
 * server/options.h).
 *
 * Preprocessing: crop "center" is the checkpoint's eval preprocessing (resize +
 * centre crop), so resolution must be 0 or the crop size; crop "square" resizes
 * the whole image to resolution x resolution (0: the crop size).
 *
 * Outputs per width W: cls.w{W} [B, W] (first W features of the final-norm CLS),
 * patch.w{W} [B, N, W] (each patch token's first W features), pooled.w{W} [B, W]
 * (mean of the patch tokens' first W features); each vector is L2-normalised
 * after the cut when normalize is set. With rasa, patch and pooled come from the
 * RASA-cleaned tokens.
 *
 * Intermediate layers (option layers; norm): per block i, 0-based after
 * resolving negative indices, layer{i}_cls.w{W} [B, W] when cls is set and
 * layer{i}_patch.w{W} [B, N, W] when patch is set, in the order the blocks were
 * given, cut and normalised as the others (never RASA-cleaned); in JSON each
 * data item holds them under "layer{i}_cls" and "layer{i}_patch" keyed by
 * width like "cls" and "patch". One forward serves them all. CUDA models do
 * not return them (422).
 *
 * Size: a request holds at most max_images x the default resolution's patch
 * tokens (one image at any resolution always fits); past that 413. Its tokens
 * are then admitted against the server's budget (batcher.h): 429 while the
 * budget is in use, 413 when it exceeds the whole budget.
 *
 * Answer: JSON by default (numbers, dtype ignored; past max_json_floats numbers
 * 413 pointing to the binary form), or with Accept: application/vnd.safetensors
 * a safetensors body in f32 or f16 with metadata model, fingerprint,
 * grid_height, grid_width and patch_size. */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "app.h"
#include "ascii.h"
#include "errors.h"
#include "image_inputs.h"
#include "infer.h"
#include "matryoshka.h"
#include "options.h"
#include "request_images.h"
#include "route_status.h"
#include "safetensors.h"
#include "vit.h"

#define SAFETENSORS_TYPE "application/vnd.safetensors"

/* ---- small helpers ---- */

/* Accept lists application/vnd.safetensors (exactly; not through a wildcard)
 * with a q-value above 0. */
static bool wants_safetensors(const char *accept)
{
    if (!accept) return false;
    const char *p = accept;
    for (;;) {
        const size_t len = strcspn(p, ",");
        const char *end = p + len;
        const char *s = p;
        while (s < end && ascii_blank(*s)) s++;
        const char *m = s;
        while (m < end && *m != ';' && !ascii_blank(*m)) m++;
        if (ascii_ieq(s, (size_t)(m - s), SAFETENSORS_TYPE)) {
            bool refused = false;
            /* Parameters: ";q=0" (or 0.0...) refuses the type. */
            for (const char *q = m; q < end; q++) {
                if (*q != ';') continue;
                const char *k = q + 1;
                while (k < end && ascii_blank(*k)) k++;
                if (k + 1 < end && ascii_lower(k[0]) == 'q' && k[1] == '=') {
                    char num[16];
                    size_t nl = 0;
                    for (const char *d = k + 2; d < end && *d != ';' && nl + 1 < sizeof num; d++)
                        num[nl++] = *d;
                    num[nl] = '\0';
                    refused = strtod(num, NULL) <= 0.0;
                }
            }
            if (!refused) return true;
        }
        if (*end == '\0') return false;
        p = end + 1;
    }
}

/* ---- outputs ---- */

enum out_kind { OUT_CLS, OUT_PATCH, OUT_POOLED, OUT_KINDS };
static const char *const kind_names[OUT_KINDS] = {"cls", "patch", "pooled"};

struct feat_ctx {
    struct http_request *req;
    struct app *app;
    bool want[OUT_KINDS];
    int layers[OPTIONS_MAX_LAYERS];  /* 0-based blocks, as in the request */
    int n_layers;
    bool rasa, normalize, binary;
    enum out_dtype dtype;
    int widths[OPTIONS_MAX_WIDTHS];
    int n_widths;
    int grid_h, grid_w, patch_size;
};

struct out_tensor {
    char name[40];        /* "patch.w768", "layer11_patch.w768" */
    char group[24];       /* the JSON key of its kind: "patch", "layer11_patch" */
    enum out_kind kind;
    int width;
    int ndim;
    int64_t shape[3];
    float *data;
};

#define MAX_OUT ((OUT_KINDS + 2 * OPTIONS_MAX_LAYERS) * OPTIONS_MAX_WIDTHS)
_Static_assert(OPTIONS_MAX_LAYERS <= INFER_MAX_LAYERS, "every allowed layer fits a request");

static void free_tensors(struct out_tensor *t, int n)
{
    for (int i = 0; i < n; i++) free(t[i].data);
}

/* Means over the patch tokens: tok [n, N, D] -> mean [n, D]. */
static float *mean_tokens(const float *tok, int n, int N, int D)
{
    float *mean = malloc(sizeof(float) * (size_t)n * D);
    double *acc = malloc(sizeof(double) * D);
    if (!mean || !acc) {
        free(mean);
        free(acc);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < D; k++) acc[k] = 0.0;
        const float *t = tok + (size_t)i * N * D;
        for (int j = 0; j < N; j++, t += D)
            for (int k = 0; k < D; k++) acc[k] += t[k];
        for (int k = 0; k < D; k++) mean[(size_t)i * D + k] = (float)(acc[k] / N);
    }
    free(acc);
    return mean;
}

/* One kind of output (cut at every width): rows per image read from src,
 * images stride floats apart. */
struct out_group {
    char key[24];
    enum out_kind kind;
    const float *src;
    size_t stride;
};

/* Cuts one group at every width into out; returns how many tensors, -1 when out of memory. */
static int cut_group(const struct feat_ctx *c, const struct infer_request *r,
                     const struct out_group *g, struct out_tensor *out)
{
    const int n = r->n, N = r->N, D = r->D;
    const int per = g->kind == OUT_PATCH ? N : 1;
    for (int w = 0; w < c->n_widths; w++) {
        const int W = c->widths[w];
        struct out_tensor *t = &out[w];
        *t = (struct out_tensor){.kind = g->kind, .width = W, .shape = {n, per, W}};
        snprintf(t->name, sizeof t->name, "%.23s.w%d", g->key, W);
        snprintf(t->group, sizeof t->group, "%.23s", g->key);
        if (!(t->data = malloc(sizeof(float) * n * per * W))) {
            free_tensors(out, w);
            return -1;
        }
        for (int i = 0; i < n; i++)
            matryoshka_cut(g->src + g->stride * i, per, D, W, c->normalize,
                           t->data + (size_t)i * per * W);
        t->ndim = g->kind == OUT_PATCH ? 3 : 2;
        if (t->ndim == 2) t->shape[1] = W;
    }
    return c->n_widths;
}

/* The groups asked for: cls, patch, pooled, then each layer's cls and patch. */
static int list_groups(const struct feat_ctx *c, const struct infer_request *r,
                       const float *mean, struct out_group *g)
{
    const size_t N = (size_t)r->N, D = (size_t)r->D, L = (size_t)r->n_layers;
    const float *tok = c->rasa ? r->patch_rasa : r->patch;
    const float *src[OUT_KINDS] = {r->cls, tok, mean};
    const size_t stride[OUT_KINDS] = {D, N * D, D};
    int ng = 0;
    for (int k = 0; k < OUT_KINDS; k++) {
        if (!c->want[k]) continue;
        g[ng] = (struct out_group){.kind = (enum out_kind)k, .src = src[k], .stride = stride[k]};
        snprintf(g[ng++].key, sizeof g[0].key, "%s", kind_names[k]);
    }
    for (size_t l = 0; l < L; l++)
        for (int k = OUT_CLS; k <= OUT_PATCH; k++) {
            if (!c->want[k]) continue;
            struct out_group *o = &g[ng++];
            *o = k == OUT_CLS
                     ? (struct out_group){.kind = OUT_CLS, .src = r->layer_cls + l * D,
                                          .stride = L * D}
                     : (struct out_group){.kind = OUT_PATCH, .src = r->layer_patch + l * N * D,
                                          .stride = L * N * D};
            snprintf(o->key, sizeof o->key, "layer%d_%s", c->layers[l], kind_names[k]);
        }
    return ng;
}

/* Cuts every requested output; group-major, then in the order of the widths.
 * Returns the number of tensors, or -1 when out of memory. */
static int compute_outputs(const struct feat_ctx *c, const struct infer_request *r,
                           struct out_tensor *out)
{
    const float *tok = c->rasa ? r->patch_rasa : r->patch;
    float *mean = NULL;
    if (c->want[OUT_POOLED] && !(mean = mean_tokens(tok, r->n, r->N, r->D))) return -1;
    struct out_group g[OUT_KINDS + 2 * OPTIONS_MAX_LAYERS];
    const int ng = list_groups(c, r, mean, g);
    int nt = 0;
    for (int i = 0; i < ng; i++) {
        const int m = cut_group(c, r, &g[i], out + nt);
        if (m < 0) {
            free_tensors(out, nt);
            nt = -1;
            break;
        }
        nt += m;
    }
    free(mean);
    return nt;
}

/* A growable text buffer for the JSON answer (large patch outputs are written
 * directly as text, without a jansson tree of millions of reals). */
struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
};

static bool sb_reserve(struct sbuf *b, size_t more)
{
    if (b->oom) return false;
    if (b->len + more + 1 <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more + 1) cap *= 2;
    char *np = realloc(b->p, cap);
    if (!np) {
        b->oom = true;
        return false;
    }
    b->p = np;
    b->cap = cap;
    return true;
}

static void sb_puts(struct sbuf *b, const char *s)
{
    const size_t n = strlen(s);
    if (!sb_reserve(b, n)) return;
    memcpy(b->p + b->len, s, n + 1);
    b->len += n;
}

__attribute__((format(printf, 2, 3)))
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    const int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n >= sizeof tmp) {
        sb_puts(b, "null"); /* not reached: only short fragments are formatted */
        return;
    }
    sb_puts(b, tmp);
}

/* A JSON string literal of s (ASCII control characters escaped). */
static void sb_json_string(struct sbuf *b, const char *s)
{
    sb_puts(b, "\"");
    for (; *s; s++) {
        const unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            char e[3] = {'\\', (char)ch, '\0'};
            sb_puts(b, e);
        } else if (ch < 0x20 || ch == 0x7f) {
            sb_printf(b, "\\u%04x", ch);
        } else {
            char e[2] = {(char)ch, '\0'};
            sb_puts(b, e);
        }
    }
    sb_puts(b, "\"");
}

/* [v0,v1,...]: nine significant digits round-trip a float32 exactly; a
 * non-finite value (never produced by a sane checkpoint) is written as null. */
static void sb_floats(struct sbuf *b, const float *v, int n)
{
    if (!sb_reserve(b, (size_t)n * 18 + 2)) return;
    char *o = b->p + b->len;
    *o++ = '[';
    for (int i = 0; i < n; i++) {
        if (i) *o++ = ',';
        if (isfinite(v[i])) {
            o += snprintf(o, 17, "%.9g", (double)v[i]);
        } else {
            memcpy(o, "null", 4);
            o += 4;
        }
    }
    *o++ = ']';
    *o = '\0';
    b->len = (size_t)(o - b->p);
}

static void reply_json(const struct feat_ctx *c, const struct infer_request *r,
                       const struct out_tensor *t, int nt)
{
    struct sbuf b = {0};
    sb_puts(&b, "{\"object\":\"features\",\"model\":");
    sb_json_string(&b, r->entry->name);
    sb_puts(&b, ",\"fingerprint\":");
    sb_json_string(&b, r->entry->fingerprint);
    sb_printf(&b, ",\"grid\":{\"height\":%d,\"width\":%d},\"patch_size\":%d,\"data\":[", c->grid_h,
              c->grid_w, c->patch_size);
    const int N = r->N;
    for (int i = 0; i < r->n && !b.oom; i++) {
        sb_printf(&b, "%s{\"index\":%d", i ? "," : "", i);
        /* Tensors come group by group: each group is one object keyed by width. */
        for (int j = 0; j < nt; j++) {
            const bool first = j == 0 || strcmp(t[j].group, t[j - 1].group) != 0;
            if (first) sb_printf(&b, "%s,\"%s\":{", j ? "}" : "", t[j].group);
            const int W = t[j].width;
            sb_printf(&b, "%s\"%d\":", first ? "" : ",", W);
            if (t[j].kind == OUT_PATCH) {
                sb_puts(&b, "[");
                for (int p = 0; p < N && !b.oom; p++) {
                    if (p) sb_puts(&b, ",");
                    sb_floats(&b, t[j].data + ((size_t)i * N + p) * W, W);
                }
                sb_puts(&b, "]");
            } else {
                sb_floats(&b, t[j].data + (size_t)i * W, W);
            }
        }
        sb_puts(&b, nt ? "}}" : "}");
    }
    sb_puts(&b, "]}");
    if (b.oom) {
        free(b.p);
        http_reply_error(c->req, 500, NULL, "out of memory while writing the answer");
        return;
    }
    http_add_header(c->req, "X-Model-Fingerprint", r->entry->fingerprint);
    http_add_header(c->req, "X-Model-Precision", r->entry->precision);
    http_reply_take(c->req, 200, "application/json", b.p, b.len, NULL);
}

static void reply_safetensors(const struct feat_ctx *c, const struct infer_request *r,
                              const struct out_tensor *t, int nt)
{
    char err[ERR_LEN];
    struct st_writer *w = st_writer_new();
    if (!w) {
        http_reply_error(c->req, 500, NULL, "out of memory");
        return;
    }
    const enum st_dtype dt = c->dtype == DTYPE_F16 ? ST_F16 : ST_F32;
    int rc = 0;
    for (int j = 0; !rc && j < nt; j++)
        rc = st_writer_add_f32(w, t[j].name, dt, t[j].data, t[j].ndim, t[j].shape, err, sizeof err);
    char num[3][16];
    snprintf(num[0], sizeof num[0], "%d", c->grid_h);
    snprintf(num[1], sizeof num[1], "%d", c->grid_w);
    snprintf(num[2], sizeof num[2], "%d", c->patch_size);
    const char *const meta[][2] = {
        {"model", r->entry->name}, {"fingerprint", r->entry->fingerprint},
        {"grid_height", num[0]},   {"grid_width", num[1]},
        {"patch_size", num[2]},
    };
    for (size_t m = 0; !rc && m < sizeof meta / sizeof meta[0]; m++)
        rc = st_writer_set_metadata(w, meta[m][0], meta[m][1], err, sizeof err);
    uint8_t *buf = NULL;
    size_t len = 0;
    if (!rc) rc = st_writer_to_buffer(w, &buf, &len, err, sizeof err);
    st_writer_free(w);
    if (rc) {
        http_reply_error(c->req, 500, NULL, err);
        return;
    }
    http_add_header(c->req, "X-Model-Fingerprint", r->entry->fingerprint);
    http_add_header(c->req, "X-Model-Precision", r->entry->precision);
    http_reply_take(c->req, 200, SAFETENSORS_TYPE, buf, len, NULL);
}

static void features_done(struct infer_request *r, int status, const char *err, void *user)
{
    struct feat_ctx *c = user;
    if (status != BATCH_OK) {
        route_reply_batch_error(c->req, status, err);
    } else {
        struct out_tensor *t = malloc(sizeof *t * MAX_OUT);
        const int nt = t ? compute_outputs(c, r, t) : -1;
        if (nt < 0) {
            http_reply_error(c->req, 500, NULL, "out of memory while cutting the features");
        } else {
            if (c->binary)
                reply_safetensors(c, r, t, nt);
            else
                reply_json(c, r, t, nt);
            free_tensors(t, nt);
        }
        free(t);
    }
    free(c);
    infer_free(r);
}

/* ---- the route ---- */

static void features(struct http_request *req, void *user)
{
    struct app *app = user;
    struct image_inputs p;
    char err[ERR_LEN];
    if (image_inputs_parse(req, &app->limits, NULL, &p)) {
        image_inputs_free(&p);
        return;
    }
    const struct feature_options *o = &p.opt;
    struct model_entry *e = route_acquire_model(req, app, o->model[0] ? o->model : NULL);
    if (!e) {
        image_inputs_free(&p);
        return;
    }
    const struct model_config *cfg = vit_model_config(e->model);
    int rc = options_check_model(o, cfg, err, sizeof err);
    const int crop = cfg->preprocess.crop_size;
    if (rc == OPTIONS_OK && o->crop == CROP_CENTER && o->resolution && o->resolution != crop) {
        snprintf(err, sizeof err, "resolution %d needs crop \"square\": crop \"center\" is the "
                 "eval preprocessing of model '%s' (resize to %d, centre crop %d), so its "
                 "resolution is 0 or %d", o->resolution, e->name, cfg->preprocess.resize_size,
                 crop, crop);
        rc = OPTIONS_INVALID;
    }
    if (rc == OPTIONS_OK && o->n_layers && vit_model_device(e->model) == VIT_DEVICE_CUDA) {
        snprintf(err, sizeof err, "option 'layers' is not available: model '%s' runs on CUDA, "
                 "whose forward returns only the final tokens", e->name);
        rc = OPTIONS_INVALID;
    }
    if (rc != OPTIONS_OK) {
        http_reply_error(req, route_status_options(rc), NULL, err);
        model_entry_release(e);
        image_inputs_free(&p);
        return;
    }

    struct feat_ctx c = {.req = req, .app = app, .rasa = o->rasa, .normalize = o->normalize,
                         .dtype = o->dtype, .binary = wants_safetensors(http_header(req, "Accept"))};
    c.want[OUT_CLS] = o->cls;
    c.want[OUT_PATCH] = o->patch;
    c.want[OUT_POOLED] = o->pooled;
    c.n_widths = options_effective_widths(o, cfg, c.widths);
    c.n_layers = options_effective_layers(o, cfg, c.layers);
    const int S = o->crop == CROP_SQUARE && o->resolution ? o->resolution : crop;
    const int P = cfg->patch_size;
    c.grid_h = c.grid_w = S / P;
    c.patch_size = P;
    const uint64_t N = (uint64_t)c.grid_h * c.grid_w;
    if (!c.binary) {
        uint64_t sum_w = 0;
        for (int i = 0; i < c.n_widths; i++) sum_w += (uint64_t)c.widths[i];
        /* Each layer adds a cls and a patch output like the final ones. */
        const uint64_t per_image = (uint64_t)(1 + c.n_layers) * ((o->cls ? sum_w : 0) +
                                   (o->patch ? N * sum_w : 0)) + (o->pooled ? sum_w : 0);
        const uint64_t floats = per_image * (uint64_t)p.n;
        if (floats > app->limits.max_json_floats) {
            http_reply_errorf(req, 413, NULL, "the answer would hold %llu numbers, over the %zu "
                              "allowed in JSON: ask for the binary form with 'Accept: "
                              SAFETENSORS_TYPE "' (safetensors, f32 or f16), or request fewer "
                              "images, widths, layers or patch outputs",
                              (unsigned long long)floats, app->limits.max_json_floats);
            model_entry_release(e);
            image_inputs_free(&p);
            return;
        }
    }

    if (image_inputs_check_tokens(req, &app->limits, p.n, S, crop, P)) {
        model_entry_release(e);
        image_inputs_free(&p);
        return;
    }

    const bool tokens = o->patch || o->pooled;
    const struct infer_outputs want = {
        .patch = tokens && !o->rasa, .patch_rasa = tokens && o->rasa,
        .n_layers = c.n_layers, .layers = c.layers, .layer_norm = o->norm,
        .layer_cls = o->cls, .layer_patch = o->patch,
    };
    struct infer_request *r;
    rc = infer_new_outputs(&r, app->batcher, e, p.n, S, S, &want, err, sizeof err);
    if (rc != BATCH_OK) {
        route_reply_batch_error(req, rc, err);
        image_inputs_free(&p);
        return;
    }
    route_submit_images(req, app, &p, r, S, features_done, &c, sizeof c);
}

int routes_features_register(struct http_router *r, struct app *app, char *err, size_t errlen)
{
    return route_add(r, app, "POST", "/v1/features", features, err, errlen);
}
