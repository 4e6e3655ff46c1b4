/* The image inputs of a request, shared by the routes that run images through
 * a model (POST /v1/features, POST /v1/pca):
 *   multipart/form-data     image parts (any name but "options"; several allowed)
 *                           and an optional "options" part holding a JSON object
 *   image/jpeg, image/png   the raw image as the body; options in the query string
 *   application/json        {"images": [base64 or data URI, ...]} or {"image": "..."},
 *                           options as further keys of the same object
 * With multipart and JSON bodies the options may instead come from the query
 * string, but not from both places at once (400).
 *
 * The options are those of server/options.h, plus the route's own keys
 * (extra_keys): those are not given to options.c but handed back in
 * image_inputs.extra for the route to parse, so each route owns its keys. */
#ifndef FRANCA_IMAGE_INPUTS_H
#define FRANCA_IMAGE_INPUTS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "multipart.h"
#include "options.h"

struct image_in {
    const uint8_t *data;
    size_t len;
    uint8_t *owned;       /* decoded base64 (freed with the inputs), or NULL */
    char label[96];       /* for messages: "images[2]", "part 1 ('image')", "body" */
};

struct image_inputs {
    struct feature_options opt;
    /* The route's own keys that were given: a JSON object (never NULL after a
     * successful parse). From a query string every value is a JSON string
     * (extra_from_query), otherwise the JSON value as sent. */
    json_t *extra;
    bool extra_from_query;
    struct image_in *images;
    int n;
    /* Private: what the images point into. */
    struct multipart_part *parts;
    size_t n_parts;
    json_t *json;
};

/* Fills *in from the request; extra_keys is a NULL-terminated list or NULL.
 * On failure replies (400, 413, 415, 422, 500 as the cause) and returns -1.
 * Either way image_inputs_free must be called. */
int image_inputs_parse(struct http_request *req, const struct app_limits *limits,
                       const char *const *extra_keys, struct image_inputs *in);

void image_inputs_free(struct image_inputs *in);

/* The memory bound of a request: its n images at side x side hold at most as
 * many patch tokens as limits->max_images images at the model's default crop
 * (one image always fits, at any side). Otherwise replies 413 and returns -1. */
int image_inputs_check_tokens(struct http_request *req, const struct app_limits *limits, int n,
                              int side, int crop, int patch_size);

/* Moves the keys of extra_keys out of the query string qs (a leading '?'
 * skipped) into the object extra, percent-decoded, values as JSON strings, and
 * copies the other pairs, undecoded, to rest (room for strlen(qs) + 1 bytes;
 * options.c reports their faults). Returns 0; -1 (400: a bad escape, a key
 * twice or without a value, invalid UTF-8) or -2 (out of memory) with err. */
int image_inputs_split_query(const char *qs, const char *const *extra_keys, json_t *extra,
                             char *rest, char *err, size_t errlen);

#endif
