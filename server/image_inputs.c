#include "image_inputs.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ascii.h"
#include "datauri.h"
#include "errors.h"
#include "route_status.h"

/* The media type of a Content-Type value (before any ';', blanks trimmed) is
 * the lowercase type want. */
static bool media_is(const char *ct, const char *want)
{
    if (!ct) return false;
    while (ascii_blank(*ct)) ct++;
    size_t n = strcspn(ct, ";");
    while (n > 0 && ascii_blank(ct[n - 1])) n--;
    return ascii_ieq(ct, n, want);
}

/* Replies with an error message formatted into a local buffer; returns -1. */
__attribute__((format(printf, 3, 4)))
static int fail(struct http_request *req, int status, const char *fmt, ...)
{
    char msg[ERR_LEN + 256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    http_reply_error(req, status, NULL, msg);
    return -1;
}

void image_inputs_free(struct image_inputs *in)
{
    for (int i = 0; in->images && i < in->n; i++) free(in->images[i].owned);
    free(in->images);
    multipart_free(in->parts, in->n_parts);
    json_decref(in->json);
    json_decref(in->extra);
    memset(in, 0, sizeof *in);
}

static bool listed(const char *k, size_t n, const char *const *keys)
{
    for (; keys && *keys; keys++)
        if (strlen(*keys) == n && memcmp(*keys, k, n) == 0) return true;
    return false;
}


int image_inputs_split_query(const char *qs, const char *const *extra_keys, json_t *extra,
                             char *rest, char *err, size_t errlen)
{
    const size_t n = strlen(qs);
    char *buf = malloc(n + 1);
    if (!buf) return set_err_code(err, errlen, -2, "out of memory");
    size_t r = 0;
    int rc = 0;
    size_t bad; /* unused: a key that does not decode goes on to options_from_query, which names it */
    for (size_t i = qs[0] == '?' ? 1 : 0; i < n && !rc;) {
        const char *amp = memchr(qs + i, '&', n - i);
        const size_t se = amp ? (size_t)(amp - qs) : n;
        const char *eq = memchr(qs + i, '=', se - i);
        const size_t ke = eq ? (size_t)(eq - qs) : se;
        const long kl = options_url_decode(qs + i, ke - i, buf, &bad);
        if (kl >= 0 && listed(buf, (size_t)kl, extra_keys)) {
            char key[64];
            printable_copy(buf, (size_t)kl, key, sizeof key);
            const long vl = eq ? options_url_decode(qs + ke + 1, se - ke - 1, buf, &bad) : 0;
            if (vl < 0)
                rc = set_err(err, errlen, "malformed percent-encoding in query parameter '%s'", key);
            else if (json_object_get(extra, key))
                rc = set_err(err, errlen, "query parameter '%s' is given twice", key);
            else if (!eq || vl == 0)
                rc = set_err(err, errlen, "query parameter '%s' has no value", key);
            else if (json_object_set_new(extra, key, json_stringn(buf, (size_t)vl)))
                rc = set_err(err, errlen, "query parameter '%s' is not valid UTF-8", key);
        } else if (se > i) {
            if (r) rest[r++] = '&';
            memcpy(rest + r, qs + i, se - i);
            r += se - i;
        }
        i = se + 1;
    }
    rest[r] = '\0';
    free(buf);
    return rc;
}

/* Options from the query string; the caller has checked that the body has none. */
static int query_options(struct http_request *req, const char *const *extra_keys,
                         struct image_inputs *in)
{
    const char *qs = http_query_string(req);
    char err[ERR_LEN];
    char *rest = NULL;
    if (qs && extra_keys) {
        rest = malloc(strlen(qs) + 1);
        if (!rest) return fail(req, 500, "out of memory");
        const int src = image_inputs_split_query(qs, extra_keys, in->extra, rest, err, sizeof err);
        if (src) {
            free(rest);
            return fail(req, src == -2 ? 500 : 400, "%s", err);
        }
        in->extra_from_query = true;
        qs = rest;
    }
    const int rc = options_from_query(qs, &in->opt, err, sizeof err);
    free(rest);
    if (rc != OPTIONS_OK) return fail(req, route_status_options(rc), "%s", err);
    return 0;
}

/* Options from a JSON object: the route's keys copied into in->extra, the rest
 * (but the skipped image keys) through options.c. */
static int object_options(const json_t *obj, const char *const *skip, const char *const *extra_keys,
                          struct image_inputs *in, char *err, size_t errlen)
{
    const char *keys[64];
    size_t nk = 0;
    for (; skip && *skip && nk < 32; skip++) keys[nk++] = *skip;
    for (const char *const *k = extra_keys; k && *k && nk + 1 < sizeof keys / sizeof keys[0]; k++) {
        keys[nk++] = *k;
        json_t *v = json_object_get(obj, *k);
        if (v && json_object_set(in->extra, *k, v))
            return set_err_code(err, errlen, OPTIONS_NOMEM, "out of memory");
    }
    keys[nk] = NULL;
    return options_from_json_value(obj, keys, &in->opt, err, errlen);
}

static bool has_query(struct http_request *req)
{
    const char *qs = http_query_string(req);
    return qs && qs[0] != '\0';
}

static int both_option_sources(struct http_request *req, const char *where)
{
    return fail(req, 400, "options are given both in the query string and in %s: use one place",
                where);
}

static int too_many_images(struct http_request *req, const struct app_limits *limits, size_t n)
{
    return fail(req, 413, "%zu images in one request; the limit is %d", n, limits->max_images);
}

static int alloc_images(struct http_request *req, struct image_inputs *in, size_t n)
{
    in->images = calloc(n, sizeof *in->images);
    if (!in->images) return fail(req, 500, "out of memory");
    return 0;
}

/* The "options" part: options.c's own parse when the route has no keys of its
 * own (its messages unchanged), otherwise the same checks here first. */
static int part_options(struct http_request *req, const struct multipart_part *opts,
                        const char *const *extra_keys, struct image_inputs *in)
{
    char err[ERR_LEN];
    int orc;
    if (!extra_keys) {
        orc = options_from_json((const char *)opts->data, opts->len, &in->opt, err, sizeof err);
    } else if (opts->len == 0) {
        snprintf(err, sizeof err, "options are empty: expected a JSON object");
        orc = OPTIONS_MALFORMED;
    } else {
        json_error_t je;
        json_t *root = json_loadb((const char *)opts->data, opts->len, JSON_REJECT_DUPLICATES, &je);
        if (!root) {
            snprintf(err, sizeof err, "options are not valid JSON: %s (line %d, column %d)",
                     je.text, je.line, je.column);
            orc = OPTIONS_MALFORMED;
        } else if (!json_is_object(root)) {
            orc = options_from_json_value(root, NULL, &in->opt, err, sizeof err);
        } else {
            orc = object_options(root, NULL, extra_keys, in, err, sizeof err);
        }
        json_decref(root);
    }
    if (orc != OPTIONS_OK) return fail(req, route_status_options(orc), "'options' part: %s", err);
    return 0;
}

static int parse_multipart(struct http_request *req, const struct app_limits *limits,
                           const char *ct, const char *const *extra_keys, struct image_inputs *in)
{
    char err[ERR_LEN], boundary[MULTIPART_BOUNDARY_MAX + 1];
    if (multipart_boundary_from_content_type(ct, boundary, sizeof boundary, err, sizeof err))
        return fail(req, 400, "%s", err);
    size_t len;
    const char *body = http_body(req, &len);
    /* One part more than the images allowed leaves room for "options". */
    const size_t max_parts = (size_t)limits->max_images + 1;
    const int rc = multipart_parse((const uint8_t *)body, len, boundary, &in->parts, &in->n_parts,
                                   max_parts, err, sizeof err);
    if (rc == MULTIPART_TOO_MANY)
        return fail(req, 413, "more than %zu multipart parts: at most %d images per request, plus "
                    "an 'options' part", max_parts, limits->max_images);
    if (rc != MULTIPART_OK) return fail(req, route_status_multipart(rc), "%s", err);

    const struct multipart_part *opts = NULL;
    size_t n = 0;
    for (size_t i = 0; i < in->n_parts; i++) {
        const struct multipart_part *part = &in->parts[i];
        if (strcmp(part->name, "options") == 0) {
            if (opts) return fail(req, 400, "more than one 'options' part");
            opts = part;
        } else if (part->len == 0) {
            return fail(req, 400, "multipart part %zu ('%.40s') is empty: expected image bytes", i,
                        part->name);
        } else {
            n++;
        }
    }
    if (n == 0)
        return fail(req, 400, "no images: send one or more image parts (e.g. name=\"image\") "
                    "beside an optional 'options' part");
    if (n > (size_t)limits->max_images) return too_many_images(req, limits, n);

    if (opts) {
        if (has_query(req)) return both_option_sources(req, "the 'options' part");
        if (part_options(req, opts, extra_keys, in)) return -1;
    } else if (query_options(req, extra_keys, in)) {
        return -1;
    }

    if (alloc_images(req, in, n)) return -1;
    for (size_t i = 0; i < in->n_parts; i++) {
        const struct multipart_part *part = &in->parts[i];
        if (part == opts) continue;
        struct image_in *im = &in->images[in->n++];
        im->data = part->data;
        im->len = part->len;
        snprintf(im->label, sizeof im->label, "part %zu ('%.40s')", i, part->name);
    }
    return 0;
}

static int parse_raw(struct http_request *req, const char *const *extra_keys,
                     struct image_inputs *in)
{
    size_t len;
    const char *body = http_body(req, &len);
    if (len == 0) return fail(req, 400, "the body is empty: send the image bytes");
    if (query_options(req, extra_keys, in)) return -1;
    if (alloc_images(req, in, 1)) return -1;
    in->images[0].data = (const uint8_t *)body;
    in->images[0].len = len;
    snprintf(in->images[0].label, sizeof in->images[0].label, "body");
    in->n = 1;
    return 0;
}

static int parse_json(struct http_request *req, const struct app_limits *limits,
                      const char *const *extra_keys, struct image_inputs *in)
{
    size_t len;
    const char *body = http_body(req, &len);
    json_error_t je;
    in->json = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!in->json) return fail(req, 400, "body is not valid JSON: %s", je.text);
    if (!json_is_object(in->json)) return fail(req, 400, "body must be a JSON object");
    json_t *images = json_object_get(in->json, "images"), *image = json_object_get(in->json, "image");
    if (images && image) return fail(req, 400, "give 'images' or 'image', not both");
    json_t *list = images ? images : image;
    if (!list)
        return fail(req, 400, "no images: 'images' must be an array of base64 images or "
                    "data:image/...;base64, URIs");
    const char *key = images ? "images" : "image";
    size_t n;
    if (json_is_string(list)) {
        n = 1;
    } else if (images && json_is_array(list)) {
        n = json_array_size(list);
        if (n == 0) return fail(req, 400, "'images' is an empty array");
        for (size_t i = 0; i < n; i++)
            if (!json_is_string(json_array_get(list, i)))
                return fail(req, 400, "every element of 'images' must be a string (element %zu "
                            "is not)", i);
    } else {
        return fail(req, 400, images ? "'images' must be an array of strings"
                                     : "'image' must be a string");
    }
    if (n > (size_t)limits->max_images) return too_many_images(req, limits, n);

    char err[ERR_LEN];
    if (json_object_size(in->json) > 1) {
        if (has_query(req)) return both_option_sources(req, "the JSON body");
        static const char *const skip[] = {"images", "image", NULL};
        const int orc = object_options(in->json, skip, extra_keys, in, err, sizeof err);
        if (orc != OPTIONS_OK) return fail(req, route_status_options(orc), "%s", err);
    } else if (query_options(req, extra_keys, in)) {
        return -1;
    }

    if (alloc_images(req, in, n)) return -1;
    for (size_t i = 0; i < n; i++) {
        const json_t *s = json_is_array(list) ? json_array_get(list, i) : list;
        struct image_in *im = &in->images[in->n++];
        if (json_is_array(list))
            snprintf(im->label, sizeof im->label, "%s[%zu]", key, i);
        else
            snprintf(im->label, sizeof im->label, "%s", key);
        const enum datauri_status st =
            datauri_decode(json_string_value(s), json_string_length(s), limits->max_body_bytes,
                           &im->owned, &im->len, NULL, err, sizeof err);
        if (st != DATAURI_OK) return fail(req, route_status_datauri(st), "%s: %s", im->label, err);
        im->data = im->owned;
    }
    return 0;
}

int image_inputs_parse(struct http_request *req, const struct app_limits *limits,
                       const char *const *extra_keys, struct image_inputs *in)
{
    memset(in, 0, sizeof *in);
    in->extra = json_object();
    if (!in->extra) return fail(req, 500, "out of memory");
    const char *ct = http_header(req, "Content-Type");
    if (media_is(ct, "multipart/form-data")) return parse_multipart(req, limits, ct, extra_keys, in);
    if (media_is(ct, "image/jpeg") || media_is(ct, "image/jpg") || media_is(ct, "image/png"))
        return parse_raw(req, extra_keys, in);
    if (media_is(ct, "application/json")) return parse_json(req, limits, extra_keys, in);
    return fail(req, 415, "Content-Type must be multipart/form-data, image/jpeg, image/png or "
                "application/json, got '%.80s'", ct ? ct : "(none)");
}

int image_inputs_check_tokens(struct http_request *req, const struct app_limits *limits, int n,
                              int side, int crop, int patch_size)
{
    const uint64_t per_image = (uint64_t)(side / patch_size) * (uint64_t)(side / patch_size);
    uint64_t cap = (uint64_t)limits->max_images * (uint64_t)(crop / patch_size) *
                   (uint64_t)(crop / patch_size);
    if (cap < per_image) cap = per_image;
    if ((uint64_t)n * per_image <= cap) return 0;
    return fail(req, 413, "%d images at %dx%d are %llu patch tokens; a request may hold %llu (the "
                "image limit %d at the default %dx%d): send fewer images per request", n, side,
                side, (unsigned long long)((uint64_t)n * per_image), (unsigned long long)cap,
                limits->max_images, crop, crop);
}
