#include "pca_options.h"

#include <stdlib.h>
#include <string.h>

#include "ascii.h"
#include "errors.h"
#include "options.h"

/* The route's own keys, then those of /v1/features that do not apply here. */
const char *const pca_option_keys[] = {"rasa", "threshold", "refit", "upsample", "format",
                                       "cls", "patch", "pooled", "normalize", "dtype",
                                       "layers", "norm", NULL};

/* A boolean from JSON, or from a query string's true/false/1/0. */
static int opt_bool(const json_t *v, bool query, const char *key, bool *out, char *err,
                    size_t errlen)
{
    if (query) {
        if (!json_is_string(v))
            return set_err_code(err, errlen, OPTIONS_MALFORMED, "option '%s' must be a string", key);
        const char *s = json_string_value(v);
        const size_t n = json_string_length(v);
        if (ascii_ieq(s, n, "true") || ascii_ieq(s, n, "1")) *out = true;
        else if (ascii_ieq(s, n, "false") || ascii_ieq(s, n, "0")) *out = false;
        else return set_err_code(err, errlen, OPTIONS_MALFORMED, "option '%s' must be true, false, "
                                 "1 or 0", key);
        return OPTIONS_OK;
    }
    if (!json_is_boolean(v))
        return set_err_code(err, errlen, OPTIONS_MALFORMED, "option '%s' must be a boolean", key);
    *out = json_is_true(v);
    return OPTIONS_OK;
}

/* One of two strings: *second is set when v is b. */
static int opt_choice(const json_t *v, const char *key, const char *a, const char *b, bool *second,
                      char *err, size_t errlen)
{
    const char *s = json_string_value(v);
    const size_t n = json_string_length(v);
    if (s && n == strlen(a) && strcmp(s, a) == 0) *second = false;
    else if (s && n == strlen(b) && strcmp(s, b) == 0) *second = true;
    else return set_err_code(err, errlen, OPTIONS_MALFORMED, "option '%s' must be \"%s\" or \"%s\"",
                             key, a, b);
    return OPTIONS_OK;
}

int pca_options_parse(const json_t *extra, bool query, struct pca_options *o, char *err,
                      size_t errlen)
{
    memset(o, 0, sizeof *o);
    const char *key;
    json_t *v;
    int rc = OPTIONS_OK;
    json_object_foreach((json_t *)extra, key, v) {
        if (!strcmp(key, "rasa")) {
            rc = opt_bool(v, query, key, &o->rasa, err, errlen);
        } else if (!strcmp(key, "refit")) {
            rc = opt_bool(v, query, key, &o->refit, err, errlen);
        } else if (!strcmp(key, "upsample")) {
            rc = opt_choice(v, key, "nearest", "bilinear", &o->bilinear, err, errlen);
        } else if (!strcmp(key, "format")) {
            rc = opt_choice(v, key, "png", "json", &o->json, err, errlen);
            o->has_format = true;
        } else if (!strcmp(key, "threshold")) {
            /* A query value must be a whole decimal number; JSON a number. */
            bool ok = json_is_number(v) && !query;
            if (!query) {
                o->threshold = ok ? json_number_value(v) : 0;
            } else if (json_is_string(v)) {
                const char *t = json_string_value(v);
                char *end;
                o->threshold = strtod(t, &end);
                ok = end != t && end == t + json_string_length(v);
            }
            if (!ok)
                return set_err_code(err, errlen, OPTIONS_MALFORMED, "option 'threshold' must be "
                                    "a number");
            if (!(o->threshold >= 0 && o->threshold <= 1))
                return set_err_code(err, errlen, OPTIONS_INVALID, "option 'threshold' must be in "
                                    "[0, 1] (the first component scaled to 0..1)");
            o->has_threshold = true;
        } else {
            return set_err_code(err, errlen, OPTIONS_MALFORMED, "option '%s' does not apply to "
                                "/v1/pca (its options: model, widths, resolution, crop, rasa, "
                                "threshold, refit, upsample, format)", key);
        }
        if (rc != OPTIONS_OK) return rc;
    }
    if (o->refit && !o->has_threshold)
        return set_err_code(err, errlen, OPTIONS_INVALID, "option 'refit' needs a 'threshold' "
                            "(it refits on the foreground)");
    return OPTIONS_OK;
}
