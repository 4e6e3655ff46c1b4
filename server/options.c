#include "options.h"

#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ascii.h"
#include "errors.h"
#include "vit.h"

enum key_id {
    K_MODEL,
    K_WIDTHS,
    K_CLS,
    K_PATCH,
    K_POOLED,
    K_RASA,
    K_NORMALIZE,
    K_RESOLUTION,
    K_CROP,
    K_DTYPE,
    K_LAYERS,
    K_NORM,
    K_COUNT
};

static const char *const key_names[K_COUNT] = {
    "model", "widths", "cls", "patch", "pooled", "rasa", "normalize", "resolution", "crop", "dtype",
    "layers", "norm",
};

#define KNOWN_KEYS \
    "model, widths, cls, patch, pooled, rasa, normalize, resolution, crop, dtype, layers, norm"

static int key_lookup(const char *k, size_t n)
{
    for (int i = 0; i < K_COUNT; i++)
        if (strlen(key_names[i]) == n && memcmp(key_names[i], k, n) == 0) return i;
    return -1;
}

void options_defaults(struct feature_options *o)
{
    memset(o, 0, sizeof *o);
    o->cls = true;
    o->normalize = true;
    o->crop = CROP_CENTER;
    o->dtype = DTYPE_F32;
    o->norm = true;
}

/* ---- typed setters shared by both parsers ---- */

static int set_model(struct feature_options *o, const char *s, size_t n, char *err, size_t errlen)
{
    if (n == 0) return set_err_code(err, errlen, OPTIONS_INVALID, "option 'model' must not be empty");
    if (n >= sizeof o->model)
        return set_err_code(err, errlen, OPTIONS_INVALID, "option 'model' is %zu bytes, over the %zu allowed", n,
                       sizeof o->model - 1);
    for (size_t i = 0; i < n; i++) {
        const unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return set_err_code(err, errlen, OPTIONS_INVALID, "option 'model' has a control character at byte %zu", i);
    }
    memcpy(o->model, s, n);
    o->model[n] = '\0';
    return OPTIONS_OK;
}

static int add_width(struct feature_options *o, long long w, char *err, size_t errlen)
{
    /* The range 1..D is checked against the model (options_check_model), whose
     * message lists the valid widths; here only what an int cannot hold. */
    if (w < INT_MIN || w > INT_MAX)
        return set_err_code(err, errlen, OPTIONS_INVALID, "invalid width %lld: widths are 1 to the model's dimension",
                       w);
    if (o->n_widths >= OPTIONS_MAX_WIDTHS)
        return set_err_code(err, errlen, OPTIONS_INVALID, "option 'widths' has more than %d widths",
                       OPTIONS_MAX_WIDTHS);
    for (int i = 0; i < o->n_widths; i++)
        if (o->widths[i] == (int)w)
            return set_err_code(err, errlen, OPTIONS_INVALID, "option 'widths' lists %lld twice", w);
    o->widths[o->n_widths++] = (int)w;
    return OPTIONS_OK;
}

static int add_layer(struct feature_options *o, long long l, char *err, size_t errlen)
{
    /* The range is checked against the model's depth (options_check_model). */
    if (l < -VIT_MAX_LAYERS * 1024 || l > VIT_MAX_LAYERS * 1024)
        return set_err_code(err, errlen, OPTIONS_INVALID, "option 'layers' lists block %lld: "
                            "blocks are 0 to the model's depth - 1, or -depth to -1", l);
    if (o->n_layers >= OPTIONS_MAX_LAYERS)
        return set_err_code(err, errlen, OPTIONS_INVALID, "option 'layers' has more than %d "
                            "blocks", OPTIONS_MAX_LAYERS);
    for (int i = 0; i < o->n_layers; i++)
        if (o->layers[i] == (int)l)
            return set_err_code(err, errlen, OPTIONS_INVALID, "option 'layers' lists %lld twice", l);
    o->layers[o->n_layers++] = (int)l;
    return OPTIONS_OK;
}

/* An integer n: the last n blocks, oldest first (-n .. -1), as DINOv2 takes them. */
static int set_last_layers(struct feature_options *o, long long n, char *err, size_t errlen)
{
    if (n < 1 || n > OPTIONS_MAX_LAYERS)
        return set_err_code(err, errlen, OPTIONS_INVALID, "option 'layers' is %lld: an integer "
                            "asks for the last n blocks, 1 to %d", n, OPTIONS_MAX_LAYERS);
    for (int i = (int)n; i >= 1; i--) o->layers[o->n_layers++] = -i;
    return OPTIONS_OK;
}

static int set_resolution(struct feature_options *o, long long r, char *err, size_t errlen)
{
    if (r < 0 || r > VIT_MAX_SIDE)
        return set_err_code(err, errlen, OPTIONS_INVALID, "option 'resolution' is %lld: use 0 for the model's default, "
                       "or a multiple of the patch size up to %d", r, VIT_MAX_SIDE);
    o->resolution = (int)r;
    return OPTIONS_OK;
}

static int set_crop(struct feature_options *o, const char *s, size_t n, char *err, size_t errlen)
{
    if (n == 6 && memcmp(s, "center", 6) == 0) {
        o->crop = CROP_CENTER;
    } else if (n == 6 && memcmp(s, "square", 6) == 0) {
        o->crop = CROP_SQUARE;
    } else {
        char t[64];
        printable_copy(s, n, t, sizeof t);
        return set_err(err, errlen, "option 'crop' must be \"center\" or \"square\", got \"%s\"",
                       t);
    }
    return OPTIONS_OK;
}

static int set_dtype(struct feature_options *o, const char *s, size_t n, char *err, size_t errlen)
{
    if (n == 3 && memcmp(s, "f32", 3) == 0) {
        o->dtype = DTYPE_F32;
    } else if (n == 3 && memcmp(s, "f16", 3) == 0) {
        o->dtype = DTYPE_F16;
    } else {
        char t[64];
        printable_copy(s, n, t, sizeof t);
        return set_err(err, errlen, "option 'dtype' must be \"f32\" or \"f16\", got \"%s\"", t);
    }
    return OPTIONS_OK;
}

static bool *bool_slot(struct feature_options *o, int key)
{
    switch (key) {
    case K_CLS: return &o->cls;
    case K_PATCH: return &o->patch;
    case K_POOLED: return &o->pooled;
    case K_RASA: return &o->rasa;
    case K_NORMALIZE: return &o->normalize;
    case K_NORM: return &o->norm;
    default: return NULL;
    }
}

/* Checks that do not depend on the model, after every key is read. */
static int finish(const struct feature_options *o, char *err, size_t errlen)
{
    if (!o->cls && !o->patch && !o->pooled)
        return set_err_code(err, errlen, OPTIONS_INVALID, "no output requested: set cls, patch or pooled to true");
    if (o->rasa && !o->patch && !o->pooled)
        return set_err_code(err, errlen, OPTIONS_INVALID, "option 'rasa' cleans patch tokens: set patch or pooled to "
                       "true as well");
    if (o->n_layers && !o->cls && !o->patch)
        return set_err_code(err, errlen, OPTIONS_INVALID, "option 'layers' gives each block's "
                            "cls and patch tokens: set cls or patch to true as well");
    return OPTIONS_OK;
}

/* ---- JSON ---- */

static const char *type_name_of(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number with a fraction or exponent";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "a value of unknown type";
}

static int wrong_type(const char *key, const char *want, const json_t *v, char *err, size_t errlen)
{
    return set_err(err, errlen, "option '%s' must be %s, got %s", key, want, type_name_of(v));
}

static int json_layers(struct feature_options *o, const json_t *v, char *err, size_t errlen)
{
    if (json_is_integer(v)) return set_last_layers(o, json_integer_value(v), err, errlen);
    if (!json_is_array(v))
        return wrong_type("layers", "an integer or an array of integers", v, err, errlen);
    if (json_array_size(v) == 0)
        return set_err_code(err, errlen, OPTIONS_INVALID, "option 'layers' is an empty array");
    for (size_t i = 0; i < json_array_size(v); i++) {
        const json_t *e = json_array_get(v, i);
        if (!json_is_integer(e))
            return set_err(err, errlen, "option 'layers' must be an integer or an array of "
                           "integers, got %s at index %zu", type_name_of(e), i);
        const int rc = add_layer(o, json_integer_value(e), err, errlen);
        if (rc != OPTIONS_OK) return rc;
    }
    return OPTIONS_OK;
}

static int apply_json_key(struct feature_options *o, int key, const json_t *v, char *err,
                          size_t errlen)
{
    const char *name = key_names[key];
    switch (key) {
    case K_MODEL:
        if (!json_is_string(v)) return wrong_type(name, "a string", v, err, errlen);
        return set_model(o, json_string_value(v), json_string_length(v), err, errlen);
    case K_WIDTHS:
        if (json_is_integer(v)) return add_width(o, json_integer_value(v), err, errlen);
        if (!json_is_array(v))
            return wrong_type(name, "an integer or an array of integers", v, err, errlen);
        if (json_array_size(v) == 0)
            return set_err_code(err, errlen, OPTIONS_INVALID, "option 'widths' is an empty array");
        for (size_t i = 0; i < json_array_size(v); i++) {
            const json_t *e = json_array_get(v, i);
            if (!json_is_integer(e))
                return set_err(err, errlen, "option 'widths' must be an integer or an array of "
                               "integers, got %s at index %zu", type_name_of(e), i);
            const int rc = add_width(o, json_integer_value(e), err, errlen);
            if (rc != OPTIONS_OK) return rc;
        }
        return OPTIONS_OK;
    case K_LAYERS:
        return json_layers(o, v, err, errlen);
    case K_CLS:
    case K_PATCH:
    case K_POOLED:
    case K_RASA:
    case K_NORMALIZE:
    case K_NORM:
        if (!json_is_boolean(v)) return wrong_type(name, "a boolean", v, err, errlen);
        *bool_slot(o, key) = json_is_true(v);
        return OPTIONS_OK;
    case K_RESOLUTION:
        if (!json_is_integer(v)) return wrong_type(name, "an integer", v, err, errlen);
        return set_resolution(o, json_integer_value(v), err, errlen);
    case K_CROP:
        if (!json_is_string(v))
            return wrong_type(name, "a string (\"center\" or \"square\")", v, err, errlen);
        return set_crop(o, json_string_value(v), json_string_length(v), err, errlen);
    case K_DTYPE:
        if (!json_is_string(v))
            return wrong_type(name, "a string (\"f32\" or \"f16\")", v, err, errlen);
        return set_dtype(o, json_string_value(v), json_string_length(v), err, errlen);
    }
    return set_err(err, errlen, "internal: unhandled option");
}

static bool skipped(const char *k, size_t n, const char *const *skip)
{
    for (; skip && *skip; skip++)
        if (strlen(*skip) == n && memcmp(*skip, k, n) == 0) return true;
    return false;
}

int options_from_json_value(const json_t *obj, const char *const *skip_keys,
                            struct feature_options *o, char *err, size_t errlen)
{
    options_defaults(o);
    if (!obj || !json_is_object(obj))
        return set_err(err, errlen, "options must be a JSON object, got %s",
                       obj ? type_name_of(obj) : "nothing");
    json_t *mobj = (json_t *)obj; /* jansson's iteration API is not const */
    for (void *it = json_object_iter(mobj); it; it = json_object_iter_next(mobj, it)) {
        const char *k = json_object_iter_key(it);
        const size_t kn = json_object_iter_key_len(it);
        const json_t *v = json_object_iter_value(it);
        if (skipped(k, kn, skip_keys)) continue;
        const int key = key_lookup(k, kn);
        if (key < 0) {
            char t[64];
            printable_copy(k, kn, t, sizeof t);
            return set_err(err, errlen, "unknown option '%s' (known: " KNOWN_KEYS ")", t);
        }
        const int rc = apply_json_key(o, key, v, err, errlen);
        if (rc != OPTIONS_OK) return rc;
    }
    return finish(o, err, errlen);
}

int options_from_json(const char *json, size_t len, struct feature_options *o, char *err,
                      size_t errlen)
{
    options_defaults(o);
    if (!json || len == 0) return set_err(err, errlen, "options are empty: expected a JSON object");
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return set_err(err, errlen, "options are not valid JSON: %s (line %d, column %d)", je.text,
                       je.line, je.column);
    const int rc = options_from_json_value(root, NULL, o, err, errlen);
    json_decref(root);
    return rc;
}

/* ---- query strings ---- */

/* A decimal integer (optional sign, digits only, surrounding blanks allowed).
 * 0: ok; 1: not an integer; 2: out of range. */
static int parse_int(const char *s, size_t n, long long *out)
{
    size_t i = 0;
    while (i < n && ascii_blank(s[i])) i++;
    while (n > i && ascii_blank(s[n - 1])) n--;
    bool neg = false;
    if (i < n && (s[i] == '-' || s[i] == '+')) neg = s[i++] == '-';
    if (i >= n) return 1;
    long long v = 0;
    bool big = false;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return 1;
        if (v > 1000000000000LL) big = true;
        else v = v * 10 + (s[i] - '0');
    }
    if (big) return 2;
    *out = neg ? -v : v;
    return 0;
}

static int query_int(const char *key, const char *s, size_t n, long long *v, char *err,
                     size_t errlen)
{
    const int r = parse_int(s, n, v);
    if (r == 0) return OPTIONS_OK;
    char t[64];
    printable_copy(s, n, t, sizeof t);
    if (r == 2)
        return set_err_code(err, errlen, OPTIONS_INVALID, "option '%s' value '%s' is out of range", key, t);
    return set_err(err, errlen, "option '%s' must be an integer, got '%s'", key, t);
}

typedef int (*add_int_fn)(struct feature_options *o, long long v, char *err, size_t errlen);

/* A comma-separated list of integers, each handed to add. */
static int query_ints(struct feature_options *o, const char *name, const char *v, size_t vn,
                      add_int_fn add, char *err, size_t errlen)
{
    size_t b = 0;
    while (b <= vn) {
        size_t e = b;
        while (e < vn && v[e] != ',') e++;
        size_t ib = b, ie = e;
        while (ib < ie && ascii_blank(v[ib])) ib++;
        while (ie > ib && ascii_blank(v[ie - 1])) ie--;
        if (ib == ie) return set_err(err, errlen, "query parameter '%s' has an empty item", name);
        long long iv = 0;
        int rc = query_int(name, v + ib, ie - ib, &iv, err, errlen);
        if (rc == OPTIONS_OK) rc = add(o, iv, err, errlen);
        if (rc != OPTIONS_OK) return rc;
        b = e + 1;
    }
    return OPTIONS_OK;
}

/* "n" (the last n blocks, as a JSON integer), "i,j,..." or "[i,...]" (indices,
 * the brackets letting one index be told from n). */
static int query_layers(struct feature_options *o, const char *v, size_t vn, char *err,
                        size_t errlen)
{
    while (vn > 0 && ascii_blank(*v)) v++, vn--;
    while (vn > 0 && ascii_blank(v[vn - 1])) vn--;
    if (vn >= 2 && v[0] == '[' && v[vn - 1] == ']')
        return query_ints(o, "layers", v + 1, vn - 2, add_layer, err, errlen);
    if (vn > 0 && (v[0] == '[' || v[vn - 1] == ']'))
        return set_err(err, errlen, "query parameter 'layers' has an unmatched bracket");
    if (memchr(v, ',', vn)) return query_ints(o, "layers", v, vn, add_layer, err, errlen);
    long long n = 0;
    const int rc = query_int("layers", v, vn, &n, err, errlen);
    return rc == OPTIONS_OK ? set_last_layers(o, n, err, errlen) : rc;
}

/* One decoded key and value (lengths given: they may hold NUL bytes). */
static int apply_pair(struct feature_options *o, unsigned *seen, const char *k, size_t kn,
                      const char *v, size_t vn, bool has_value, char *err, size_t errlen)
{
    const int key = key_lookup(k, kn);
    if (key < 0) {
        char t[64];
        printable_copy(k, kn, t, sizeof t);
        return set_err(err, errlen, "unknown query parameter '%s' (known: " KNOWN_KEYS ")", t);
    }
    const char *name = key_names[key];
    if (key != K_WIDTHS && (*seen & (1u << key)))
        return set_err(err, errlen, "query parameter '%s' is given twice", name);
    *seen |= 1u << key;
    if (!has_value || vn == 0)
        return set_err(err, errlen, "query parameter '%s' has no value", name);
    long long iv = 0;
    int rc;
    switch (key) {
    case K_MODEL:
        return set_model(o, v, vn, err, errlen);
    case K_WIDTHS:
        return query_ints(o, name, v, vn, add_width, err, errlen);
    case K_LAYERS:
        return query_layers(o, v, vn, err, errlen);
    case K_CLS:
    case K_PATCH:
    case K_POOLED:
    case K_RASA:
    case K_NORMALIZE:
    case K_NORM: {
        bool *slot = bool_slot(o, key);
        if (ascii_ieq(v, vn, "true") || ascii_ieq(v, vn, "1")) {
            *slot = true;
        } else if (ascii_ieq(v, vn, "false") || ascii_ieq(v, vn, "0")) {
            *slot = false;
        } else {
            char t[64];
            printable_copy(v, vn, t, sizeof t);
            return set_err(err, errlen, "option '%s' must be true, false, 1 or 0, got '%s'", name,
                           t);
        }
        return OPTIONS_OK;
    }
    case K_RESOLUTION:
        rc = query_int(name, v, vn, &iv, err, errlen);
        if (rc != OPTIONS_OK) return rc;
        return set_resolution(o, iv, err, errlen);
    case K_CROP:
        return set_crop(o, v, vn, err, errlen);
    case K_DTYPE:
        return set_dtype(o, v, vn, err, errlen);
    }
    return set_err(err, errlen, "internal: unhandled option");
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

long options_url_decode(const char *s, size_t n, char *out, size_t *bad)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '+') {
            out[o++] = ' ';
        } else if (s[i] == '%') {
            const int h = i + 1 < n ? hexval(s[i + 1]) : -1;
            const int l = i + 2 < n ? hexval(s[i + 2]) : -1;
            if (h < 0 || l < 0) {
                *bad = i;
                return -1;
            }
            out[o++] = (char)(h * 16 + l);
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    return (long)o;
}

int options_from_query(const char *qs, struct feature_options *o, char *err, size_t errlen)
{
    options_defaults(o);
    if (!qs) return finish(o, err, errlen);
    const size_t n = strlen(qs);
    size_t i = (n > 0 && qs[0] == '?') ? 1 : 0;
    char *buf = malloc(n + 1);
    if (!buf) {
        set_err(err, errlen, "out of memory");
        return OPTIONS_NOMEM;
    }
    unsigned seen = 0;
    int rc = OPTIONS_OK;
    while (i < n) {
        const char *amp = memchr(qs + i, '&', n - i);
        const size_t se = amp ? (size_t)(amp - qs) : n;
        if (se > i) {
            const char *eq = memchr(qs + i, '=', se - i);
            const size_t ke = eq ? (size_t)(eq - qs) : se;
            size_t bad = 0;
            const long kl = options_url_decode(qs + i, ke - i, buf, &bad);
            long vl = 0;
            if (kl >= 0 && eq) vl = options_url_decode(qs + ke + 1, se - ke - 1, buf + kl, &bad);
            if (kl < 0 || vl < 0) {
                const size_t at = (kl < 0 ? i : ke + 1) + bad;
                rc = set_err(err, errlen, "malformed percent-encoding in the query string at "
                             "byte %zu", at);
                break;
            }
            rc = apply_pair(o, &seen, buf, (size_t)kl, buf + kl, (size_t)vl, eq != NULL, err,
                            errlen);
            if (rc != OPTIONS_OK) break;
        }
        i = se + 1;
    }
    free(buf);
    if (rc != OPTIONS_OK) return rc;
    return finish(o, err, errlen);
}

int options_from_pairs(const char *const *keys, const char *const *values, size_t n,
                       struct feature_options *o, char *err, size_t errlen)
{
    options_defaults(o);
    unsigned seen = 0;
    for (size_t i = 0; i < n; i++) {
        if (!keys[i]) continue;
        const char *v = values ? values[i] : NULL;
        const int rc = apply_pair(o, &seen, keys[i], strlen(keys[i]), v ? v : "",
                                  v ? strlen(v) : 0, v != NULL, err, errlen);
        if (rc != OPTIONS_OK) return rc;
    }
    return finish(o, err, errlen);
}

/* ---- against a model ---- */

static void list_widths(const struct model_config *cfg, char *buf, size_t cap)
{
    size_t o = 0;
    buf[0] = '\0';
    const int nw = cfg->n_widths < 0 ? 0 : cfg->n_widths > MAX_WIDTHS ? MAX_WIDTHS : cfg->n_widths;
    for (int i = 0; i < nw && o < cap; i++) {
        const int w = snprintf(buf + o, cap - o, "%s%d", i ? ", " : "", cfg->widths[i]);
        if (w < 0) break;
        o += (size_t)w;
    }
    if (nw == 0) snprintf(buf, cap, "%d", cfg->embed_dim);
}

static int resolve_layer(int l, int depth)
{
    return l < 0 ? depth + l : l;
}

/* Each layer a block of the model, and no block named twice once resolved. */
static int check_layers(const struct feature_options *o, const struct model_config *cfg,
                        const char *mname, char *err, size_t errlen)
{
    const int depth = cfg->depth;
    for (int i = 0; i < o->n_layers; i++) {
        const int l = resolve_layer(o->layers[i], depth);
        if (l < 0 || l >= depth)
            return set_err_code(err, errlen, OPTIONS_INVALID, "option 'layers': block %d is out "
                                "of range: %s has depth %d (blocks 0 to %d, or -%d to -1)",
                                o->layers[i], mname, depth, depth - 1, depth);
        for (int j = 0; j < i; j++)
            if (resolve_layer(o->layers[j], depth) == l)
                return set_err_code(err, errlen, OPTIONS_INVALID, "option 'layers': %d and %d "
                                    "are the same block of %s (depth %d)", o->layers[j],
                                    o->layers[i], mname, depth);
    }
    return OPTIONS_OK;
}

int options_check_model(const struct feature_options *o, const struct model_config *cfg,
                        char *err, size_t errlen)
{
    const char *mname = cfg->name[0] ? cfg->name : "the model";
    const int D = cfg->embed_dim;
    for (int i = 0; i < o->n_widths; i++) {
        const int w = o->widths[i];
        if (w < 1 || w > D) {
            char list[MAX_WIDTHS * 12 + 16];
            list_widths(cfg, list, sizeof list);
            return set_err_code(err, errlen, OPTIONS_INVALID, "invalid width %d: %s takes widths 1 to %d; its trained "
                           "Matryoshka widths are %s", w, mname, D, list);
        }
    }
    if (o->resolution != 0) {
        const int P = cfg->patch_size;
        const int r = o->resolution;
        if (P <= 0) return set_err_code(err, errlen, OPTIONS_INVALID, "%s has no patch size", mname);
        const int top = VIT_MAX_SIDE / P * P;
        if (r < P || r > VIT_MAX_SIDE)
            return set_err_code(err, errlen, OPTIONS_INVALID, "resolution %d is out of range: %s takes multiples of %d "
                           "from %d to %d", r, mname, P, P, top);
        if (r % P != 0) {
            const int lo = r / P * P, hi = lo + P; /* r >= P, so lo >= P */
            if (hi > top)
                return set_err_code(err, errlen, OPTIONS_INVALID, "resolution %d is not a multiple of the patch size %d "
                               "(nearest: %d)", r, P, lo);
            return set_err_code(err, errlen, OPTIONS_INVALID, "resolution %d is not a multiple of the patch size %d "
                           "(nearest: %d or %d)", r, P, lo, hi);
        }
    }
    if (o->rasa && cfg->rasa_layers <= 0)
        return set_err_code(err, errlen, OPTIONS_INVALID, "option 'rasa' is not available: %s has no RASA layers",
                       mname);
    return check_layers(o, cfg, mname, err, errlen);
}

int options_effective_layers(const struct feature_options *o, const struct model_config *cfg,
                             int out[OPTIONS_MAX_LAYERS])
{
    const int n = o->n_layers > OPTIONS_MAX_LAYERS ? OPTIONS_MAX_LAYERS : o->n_layers;
    for (int i = 0; i < n; i++) out[i] = resolve_layer(o->layers[i], cfg->depth);
    return n;
}

int options_effective_widths(const struct feature_options *o, const struct model_config *cfg,
                             int out[OPTIONS_MAX_WIDTHS])
{
    if (o->n_widths == 0) {
        out[0] = cfg->embed_dim;
        return 1;
    }
    const int n = o->n_widths > OPTIONS_MAX_WIDTHS ? OPTIONS_MAX_WIDTHS : o->n_widths;
    memcpy(out, o->widths, (size_t)n * sizeof out[0]);
    return n;
}
