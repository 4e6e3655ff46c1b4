/* Model configuration: JSON (de)serialisation and validation.
 * The JSON layout is documented in schema/checkpoint-metadata.schema.json and
 * the limits in schema/checkpoint-format.md. */
#include "model_config.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"

/* Limits (schema/checkpoint-format.md, "Limits"). */
#define LIM_EMBED_DIM 8192
#define LIM_DEPTH 256
#define LIM_PATCH 64
#define LIM_POS_GRID 256
#define LIM_FFN_HIDDEN 65536
#define LIM_IMAGE_SIDE 8192

#define META "franca metadata"

int swiglu_hidden_for(int embed_dim)
{
    if (embed_dim <= 0)
        return 0;
    long h = (long)embed_dim * 4 * 2 / 3;
    return (int)((h + 7) / 8 * 8);
}

void model_config_defaults(struct model_config *cfg, int embed_dim, int depth)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->family = FAMILY_FRANCA;
    cfg->embed_dim = embed_dim;
    cfg->depth = depth;
    cfg->num_heads = (embed_dim >= 64 && embed_dim % 64 == 0) ? embed_dim / 64 : 1;
    cfg->ffn = FFN_SWIGLU;
    cfg->ffn_hidden = swiglu_hidden_for(embed_dim);
    cfg->patch_size = 14;
    cfg->pos_grid = 16;
    cfg->layerscale = true;
    cfg->norm_eps = 1e-6f;
    cfg->register_tokens = 0;
    cfg->n_widths = 0;
    for (int k = 4; k >= 0; k--) {
        int wdt = embed_dim >> k;
        if (wdt >= 1 && (cfg->n_widths == 0 || wdt > cfg->widths[cfg->n_widths - 1]))
            cfg->widths[cfg->n_widths++] = wdt;
    }
    cfg->rasa_layers = 0;
    cfg->preprocess.resize_size = 256;
    cfg->preprocess.crop_size = 224;
    cfg->preprocess.mean[0] = 0.485f;
    cfg->preprocess.mean[1] = 0.456f;
    cfg->preprocess.mean[2] = 0.406f;
    cfg->preprocess.std[0] = 0.229f;
    cfg->preprocess.std[1] = 0.224f;
    cfg->preprocess.std[2] = 0.225f;
    cfg->trained = false;
}

static int check_text(const char *what, const char *s, size_t cap, bool nonempty,
                      char *err, size_t errlen)
{
    size_t n = strnlen(s, cap);
    if (n >= cap)
        return set_err(err, errlen, META ": '%s' is longer than %zu bytes", what, cap - 1);
    if (nonempty && n == 0)
        return set_err(err, errlen, META ": '%s' is empty", what);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch == 0x7f)
            return set_err(err, errlen, META ": '%s' contains a control character", what);
    }
    return 0;
}

int model_config_validate(const struct model_config *cfg, char *err, size_t errlen)
{
    if (cfg->family != FAMILY_FRANCA && cfg->family != FAMILY_DINOV2)
        return set_err(err, errlen, META ": unknown family %d", (int)cfg->family);
    if (cfg->ffn != FFN_SWIGLU && cfg->ffn != FFN_MLP)
        return set_err(err, errlen, META ": unknown ffn kind %d", (int)cfg->ffn);
    if (cfg->embed_dim < 1 || cfg->embed_dim > LIM_EMBED_DIM)
        return set_err(err, errlen, META ": embed_dim %d outside 1..%d", cfg->embed_dim, LIM_EMBED_DIM);
    if (cfg->depth < 1 || cfg->depth > LIM_DEPTH)
        return set_err(err, errlen, META ": depth %d outside 1..%d", cfg->depth, LIM_DEPTH);
    if (cfg->num_heads < 1 || cfg->num_heads > cfg->embed_dim || cfg->embed_dim % cfg->num_heads != 0)
        return set_err(err, errlen, META ": num_heads %d does not divide embed_dim %d",
                       cfg->num_heads, cfg->embed_dim);
    if (cfg->ffn_hidden < 1 || cfg->ffn_hidden > LIM_FFN_HIDDEN)
        return set_err(err, errlen, META ": ffn_hidden %d outside 1..%d", cfg->ffn_hidden, LIM_FFN_HIDDEN);
    if (cfg->patch_size < 1 || cfg->patch_size > LIM_PATCH)
        return set_err(err, errlen, META ": patch_size %d outside 1..%d", cfg->patch_size, LIM_PATCH);
    if (cfg->pos_grid < 1 || cfg->pos_grid > LIM_POS_GRID)
        return set_err(err, errlen, META ": pos_grid %d outside 1..%d", cfg->pos_grid, LIM_POS_GRID);
    if (!(isfinite(cfg->norm_eps) && cfg->norm_eps > 0.0f && cfg->norm_eps < 1.0f))
        return set_err(err, errlen, META ": norm_eps %g is not in (0, 1)", (double)cfg->norm_eps);
    if (cfg->register_tokens < 0 || cfg->register_tokens > MAX_REGISTERS)
        return set_err(err, errlen, META ": register_tokens %d outside 0..%d", cfg->register_tokens, MAX_REGISTERS);
    if (cfg->rasa_layers < 0 || cfg->rasa_layers > MAX_RASA_LAYERS)
        return set_err(err, errlen, META ": rasa_layers %d outside 0..%d", cfg->rasa_layers, MAX_RASA_LAYERS);
    if (cfg->n_widths < 1 || cfg->n_widths > MAX_WIDTHS)
        return set_err(err, errlen, META ": matryoshka_widths must have 1..%d entries (has %d)",
                       MAX_WIDTHS, cfg->n_widths);
    for (int i = 0; i < cfg->n_widths; i++) {
        int wdt = cfg->widths[i];
        if (wdt < 1 || wdt > cfg->embed_dim)
            return set_err(err, errlen, META ": matryoshka width %d outside 1..embed_dim (%d)", wdt, cfg->embed_dim);
        if (i > 0 && wdt <= cfg->widths[i - 1])
            return set_err(err, errlen, META ": matryoshka_widths not strictly ascending (%d after %d)",
                           wdt, cfg->widths[i - 1]);
    }
    if (cfg->widths[cfg->n_widths - 1] != cfg->embed_dim)
        return set_err(err, errlen, META ": last matryoshka width %d must equal embed_dim %d",
                       cfg->widths[cfg->n_widths - 1], cfg->embed_dim);
    const struct preprocess_config *pp = &cfg->preprocess;
    if (pp->crop_size < 1 || pp->crop_size > LIM_IMAGE_SIDE)
        return set_err(err, errlen, META ": preprocess.crop_size %d outside 1..%d", pp->crop_size, LIM_IMAGE_SIDE);
    if (pp->resize_size < pp->crop_size || pp->resize_size > LIM_IMAGE_SIDE)
        return set_err(err, errlen, META ": preprocess.resize_size %d outside crop_size..%d (crop_size %d)",
                       pp->resize_size, LIM_IMAGE_SIDE, pp->crop_size);
    if (pp->crop_size % cfg->patch_size != 0)
        return set_err(err, errlen, META ": preprocess.crop_size %d is not a multiple of patch_size %d",
                       pp->crop_size, cfg->patch_size);
    for (int c = 0; c < 3; c++) {
        if (!(isfinite(pp->mean[c]) && pp->mean[c] >= 0.0f && pp->mean[c] <= 1.0f))
            return set_err(err, errlen, META ": preprocess.mean[%d] = %g is not in [0, 1]", c, (double)pp->mean[c]);
        if (!(isfinite(pp->std[c]) && pp->std[c] >= 1e-6f && pp->std[c] <= 10.0f))
            return set_err(err, errlen, META ": preprocess.std[%d] = %g is not in [1e-6, 10]", c, (double)pp->std[c]);
    }
    if (check_text("name", cfg->name, sizeof cfg->name, true, err, errlen) ||
        check_text("version", cfg->version, sizeof cfg->version, false, err, errlen))
        return -1;
    return 0;
}

/* ---- parsing ---- */

static json_t *need(json_t *obj, const char *key, const char *where, char *err, size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        set_err(err, errlen, META ": missing required key '%s%s'", where, key);
    return v;
}

static int get_int(json_t *obj, const char *key, const char *where, bool required, int dflt,
                   long long lo, long long hi, int *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        if (required)
            return set_err(err, errlen, META ": missing required key '%s%s'", where, key);
        *out = dflt;
        return 0;
    }
    if (!json_is_integer(v))
        return set_err(err, errlen, META ": '%s%s' must be an integer", where, key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return set_err(err, errlen, META ": '%s%s' = %lld outside %lld..%lld", where, key,
                       (long long)x, lo, hi);
    *out = (int)x;
    return 0;
}

static int get_float(json_t *obj, const char *key, const char *where, float *out, char *err, size_t errlen)
{
    json_t *v = need(obj, key, where, err, errlen);
    if (!v)
        return -1;
    if (!json_is_number(v))
        return set_err(err, errlen, META ": '%s%s' must be a number", where, key);
    double d = json_number_value(v);
    if (!isfinite(d) || fabs(d) > 1e30)
        return set_err(err, errlen, META ": '%s%s' is not a finite float", where, key);
    *out = (float)d;
    return 0;
}

static int get_bool(json_t *obj, const char *key, bool *out, char *err, size_t errlen)
{
    json_t *v = need(obj, key, "", err, errlen);
    if (!v)
        return -1;
    if (!json_is_boolean(v))
        return set_err(err, errlen, META ": '%s' must be true or false", key);
    *out = json_is_true(v);
    return 0;
}

static int get_string(json_t *obj, const char *key, char *out, size_t cap, char *err, size_t errlen)
{
    json_t *v = need(obj, key, "", err, errlen);
    if (!v)
        return -1;
    if (!json_is_string(v))
        return set_err(err, errlen, META ": '%s' must be a string", key);
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (n >= cap)
        return set_err(err, errlen, META ": '%s' is longer than %zu bytes", key, cap - 1);
    memcpy(out, s, n);
    out[n] = '\0';
    return 0;
}

static int get_float3(json_t *obj, const char *key, float out[3], char *err, size_t errlen)
{
    json_t *v = need(obj, key, "preprocess.", err, errlen);
    if (!v)
        return -1;
    if (!json_is_array(v) || json_array_size(v) != 3)
        return set_err(err, errlen, META ": 'preprocess.%s' must be an array of 3 numbers", key);
    for (size_t i = 0; i < 3; i++) {
        json_t *e = json_array_get(v, i);
        if (!json_is_number(e) || !isfinite(json_number_value(e)) || fabs(json_number_value(e)) > 1e30)
            return set_err(err, errlen, META ": 'preprocess.%s' must be an array of 3 numbers", key);
        out[i] = (float)json_number_value(e);
    }
    return 0;
}

static int parse_obj(json_t *root, struct model_config *cfg, char *err, size_t errlen)
{
    int fv;
    if (get_int(root, "format_version", "", false, 1, 0, 1000000, &fv, err, errlen))
        return -1;
    if (fv != 1)
        return set_err(err, errlen, META ": unsupported format_version %d (this build reads 1)", fv);

    json_t *v = need(root, "family", "", err, errlen);
    if (!v)
        return -1;
    const char *s = json_string_value(v);
    if (s && strcmp(s, "franca") == 0)
        cfg->family = FAMILY_FRANCA;
    else if (s && strcmp(s, "dinov2") == 0)
        cfg->family = FAMILY_DINOV2;
    else
        return set_err(err, errlen, META ": 'family' must be \"franca\" or \"dinov2\"");

    v = need(root, "ffn", "", err, errlen);
    if (!v)
        return -1;
    s = json_string_value(v);
    if (s && strcmp(s, "swiglu") == 0)
        cfg->ffn = FFN_SWIGLU;
    else if (s && strcmp(s, "mlp") == 0)
        cfg->ffn = FFN_MLP;
    else
        return set_err(err, errlen, META ": 'ffn' must be \"swiglu\" or \"mlp\"");

    if (get_int(root, "embed_dim", "", true, 0, 1, LIM_EMBED_DIM, &cfg->embed_dim, err, errlen) ||
        get_int(root, "depth", "", true, 0, 1, LIM_DEPTH, &cfg->depth, err, errlen) ||
        get_int(root, "num_heads", "", true, 0, 1, LIM_EMBED_DIM, &cfg->num_heads, err, errlen) ||
        get_int(root, "ffn_hidden", "", true, 0, 1, LIM_FFN_HIDDEN, &cfg->ffn_hidden, err, errlen) ||
        get_int(root, "patch_size", "", true, 0, 1, LIM_PATCH, &cfg->patch_size, err, errlen) ||
        get_int(root, "pos_grid", "", true, 0, 1, LIM_POS_GRID, &cfg->pos_grid, err, errlen) ||
        get_int(root, "register_tokens", "", true, 0, 0, MAX_REGISTERS, &cfg->register_tokens, err, errlen) ||
        get_int(root, "rasa_layers", "", false, 0, 0, MAX_RASA_LAYERS, &cfg->rasa_layers, err, errlen) ||
        get_bool(root, "layerscale", &cfg->layerscale, err, errlen) ||
        get_bool(root, "trained", &cfg->trained, err, errlen) ||
        get_float(root, "norm_eps", "", &cfg->norm_eps, err, errlen) ||
        get_string(root, "name", cfg->name, sizeof cfg->name, err, errlen) ||
        get_string(root, "version", cfg->version, sizeof cfg->version, err, errlen))
        return -1;

    v = need(root, "matryoshka_widths", "", err, errlen);
    if (!v)
        return -1;
    if (!json_is_array(v) || json_array_size(v) < 1 || json_array_size(v) > MAX_WIDTHS)
        return set_err(err, errlen, META ": 'matryoshka_widths' must be an array of 1..%d integers", MAX_WIDTHS);
    cfg->n_widths = (int)json_array_size(v);
    for (int i = 0; i < cfg->n_widths; i++) {
        json_t *e = json_array_get(v, (size_t)i);
        if (!json_is_integer(e) || json_integer_value(e) < 1 || json_integer_value(e) > LIM_EMBED_DIM)
            return set_err(err, errlen, META ": 'matryoshka_widths[%d]' must be an integer in 1..embed_dim", i);
        cfg->widths[i] = (int)json_integer_value(e);
    }

    json_t *pp = need(root, "preprocess", "", err, errlen);
    if (!pp)
        return -1;
    if (!json_is_object(pp))
        return set_err(err, errlen, META ": 'preprocess' must be an object");
    if (get_int(pp, "resize_size", "preprocess.", true, 0, 1, LIM_IMAGE_SIDE, &cfg->preprocess.resize_size, err, errlen) ||
        get_int(pp, "crop_size", "preprocess.", true, 0, 1, LIM_IMAGE_SIDE, &cfg->preprocess.crop_size, err, errlen) ||
        get_float3(pp, "mean", cfg->preprocess.mean, err, errlen) ||
        get_float3(pp, "std", cfg->preprocess.std, err, errlen))
        return -1;
    return 0;
}

int model_config_from_json(const char *json, size_t len, struct model_config *cfg,
                           char *err, size_t errlen)
{
    memset(cfg, 0, sizeof *cfg);
    if (!json)
        return set_err(err, errlen, META ": missing");
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return set_err(err, errlen, META ": invalid JSON: %s (line %d, column %d)",
                       jerr.text, jerr.line, jerr.column);
    int rc;
    if (!json_is_object(root))
        rc = set_err(err, errlen, META ": must be a JSON object");
    else
        rc = parse_obj(root, cfg, err, errlen);
    json_decref(root);
    if (rc == 0)
        rc = model_config_validate(cfg, err, errlen);
    if (rc != 0)
        memset(cfg, 0, sizeof *cfg);
    return rc;
}

/* ---- serialisation ---- */

/* The shortest decimal that reads back as the same float, as a double, so that
 * 1e-6f is written "1e-06" rather than "9.99999997e-07". */
static json_t *float_json(float f)
{
    char buf[32];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        if (strtof(buf, NULL) == f)
            return json_real(strtod(buf, NULL));
    }
    return json_real((double)f);
}

static json_t *float3_json(const float v[3])
{
    json_t *a = json_array();
    for (int i = 0; i < 3; i++)
        json_array_append_new(a, float_json(v[i]));
    return a;
}

char *model_config_to_json(const struct model_config *cfg, const char *extra_json)
{
    json_t *extra = NULL;
    if (extra_json) {
        extra = json_loads(extra_json, JSON_REJECT_DUPLICATES, NULL);
        if (!extra || !json_is_object(extra)) {
            json_decref(extra);
            return NULL;
        }
    }
    json_t *o = json_object();
    json_object_set_new(o, "format_version", json_integer(1));
    json_object_set_new(o, "family", json_string(cfg->family == FAMILY_DINOV2 ? "dinov2" : "franca"));
    json_object_set_new(o, "embed_dim", json_integer(cfg->embed_dim));
    json_object_set_new(o, "depth", json_integer(cfg->depth));
    json_object_set_new(o, "num_heads", json_integer(cfg->num_heads));
    json_object_set_new(o, "ffn", json_string(cfg->ffn == FFN_MLP ? "mlp" : "swiglu"));
    json_object_set_new(o, "ffn_hidden", json_integer(cfg->ffn_hidden));
    json_object_set_new(o, "patch_size", json_integer(cfg->patch_size));
    json_object_set_new(o, "pos_grid", json_integer(cfg->pos_grid));
    json_object_set_new(o, "layerscale", json_boolean(cfg->layerscale));
    json_object_set_new(o, "norm_eps", float_json(cfg->norm_eps));
    json_object_set_new(o, "register_tokens", json_integer(cfg->register_tokens));
    json_t *w = json_array();
    int nw = cfg->n_widths < 0 ? 0 : cfg->n_widths > MAX_WIDTHS ? MAX_WIDTHS : cfg->n_widths;
    for (int i = 0; i < nw; i++)
        json_array_append_new(w, json_integer(cfg->widths[i]));
    json_object_set_new(o, "matryoshka_widths", w);
    json_object_set_new(o, "rasa_layers", json_integer(cfg->rasa_layers));
    json_t *pp = json_object();
    json_object_set_new(pp, "resize_size", json_integer(cfg->preprocess.resize_size));
    json_object_set_new(pp, "crop_size", json_integer(cfg->preprocess.crop_size));
    json_object_set_new(pp, "mean", float3_json(cfg->preprocess.mean));
    json_object_set_new(pp, "std", float3_json(cfg->preprocess.std));
    json_object_set_new(o, "preprocess", pp);
    json_object_set_new(o, "name", json_stringn(cfg->name, strnlen(cfg->name, sizeof cfg->name)));
    json_object_set_new(o, "version", json_stringn(cfg->version, strnlen(cfg->version, sizeof cfg->version)));
    json_object_set_new(o, "trained", json_boolean(cfg->trained));
    if (!json_object_get(o, "name") || !json_object_get(o, "version")) {
        /* not valid UTF-8 */
        json_decref(o);
        json_decref(extra);
        return NULL;
    }
    if (extra) {
        json_object_update_missing(o, extra);
        json_decref(extra);
    }
    char *out = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(o);
    return out;
}
