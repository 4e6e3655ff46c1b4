/* Options of POST /v1/features, from a JSON object (the multipart "options"
 * part, or the JSON body) or from a query string (raw image bodies).
 *
 * Keys (every one optional):
 *   model       string, 1..127 bytes, no control characters ("" is refused);
 *               absent: the server's default model
 *   widths      integer or array of 1..16 distinct integers (Matryoshka prefix
 *               widths, each 1..D of the model); query: "96,384" and/or repeated
 *               widths=...; absent: the model's full width D
 *   cls         boolean, default true: the final-norm CLS at each width
 *   patch       boolean, default false: patch tokens at each width
 *   pooled      boolean, default false: mean of the patch tokens at each width
 *   rasa        boolean, default false: patch/pooled from RASA-cleaned tokens
 *               (needs patch or pooled, and a model with RASA layers)
 *   normalize   boolean, default true: L2-normalise each cut vector
 *   resolution  integer, 0 (model default) or a multiple of the patch size up
 *               to VIT_MAX_SIDE
 *   crop        "center" (default: eval preprocessing, resize + centre crop)
 *               or "square" (resize the whole image to R x R)
 *   dtype       "f32" (default) or "f16": the element type of binary outputs
 *   layers      intermediate blocks, as DINOv2's get_intermediate_layers(n): an
 *               integer n (1..16) for the last n blocks, or an array of 1..16
 *               distinct block indices (0-based; negative counts from the last,
 *               -1 is the last block); query: "4" (last 4), "-1,-4" or "[3]"
 *               (indices). Per block i (0-based after resolving negatives):
 *               layer{i}_cls when cls is set, layer{i}_patch when patch is set,
 *               at each width, normalize applied as to the others; no RASA
 *   norm        boolean, default true: the final LayerNorm on the layers' tokens
 * Query-string booleans are true/false/1/0 (any case); JSON booleans are JSON
 * true/false only. null is a wrong type like any other.
 *
 * Return codes: OPTIONS_MALFORMED (400) for bad syntax, unknown or duplicate
 * keys and wrong types (including enum strings that are none of the allowed
 * values); OPTIONS_INVALID (422) for well-typed values out of range (widths,
 * resolution, no output requested, rasa without patch/pooled, layers without
 * cls/patch or out of range, or against the model in options_check_model).
 * Messages name the key. */
#ifndef FRANCA_SERVER_OPTIONS_H
#define FRANCA_SERVER_OPTIONS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "model_config.h"

#define OPTIONS_OK 0
#define OPTIONS_MALFORMED (-1) /* 400 */
#define OPTIONS_INVALID (-2)   /* 422 */
#define OPTIONS_NOMEM (-3)     /* 500 */

#define OPTIONS_MAX_WIDTHS 16
#define OPTIONS_MAX_LAYERS 16

enum crop_mode { CROP_CENTER = 0, CROP_SQUARE = 1 };
enum out_dtype { DTYPE_F32 = 0, DTYPE_F16 = 1 };

struct feature_options {
    char model[128];            /* "" = the default model */
    int widths[OPTIONS_MAX_WIDTHS];
    int n_widths;               /* 0 = the model's full width */
    bool cls, patch, pooled, rasa, normalize;
    int resolution;             /* 0 = the model's default */
    enum crop_mode crop;
    enum out_dtype dtype;
    int layers[OPTIONS_MAX_LAYERS]; /* block indices as given: negative counts from the last */
    int n_layers;               /* 0 = no intermediate layers */
    bool norm;                  /* the final LayerNorm on the layers' tokens */
};

/* The defaults: default model, full width, cls, normalize, model resolution,
 * centre crop, f32, no layers, norm. */
void options_defaults(struct feature_options *o);

/* Parses json[0..len) (a JSON object) into *o, starting from the defaults. */
int options_from_json(const char *json, size_t len, struct feature_options *o, char *err,
                      size_t errlen);

/* The same from an already parsed object. Keys listed in skip_keys (a
 * NULL-terminated list, or NULL) are left to the caller and not treated as
 * unknown, e.g. "images" in a JSON body that carries options beside its images. */
int options_from_json_value(const json_t *obj, const char *const *skip_keys,
                            struct feature_options *o, char *err, size_t errlen);

/* Parses a raw query string ("widths=96,384&patch=true", an optional leading
 * '?', '+' as space, %XX decoding, empty segments skipped) into *o, starting
 * from the defaults. qs may be NULL (defaults only). */
int options_from_query(const char *qs, struct feature_options *o, char *err, size_t errlen);

/* Decodes one query-string component s[0..n) ('+' is a space, %XX a byte) into
 * out (room for n bytes). Returns the decoded length, or -1 with *bad the
 * offset of a bad escape. */
long options_url_decode(const char *s, size_t n, char *out, size_t *bad);

/* The same from already decoded pairs (e.g. libmicrohttpd's GET arguments);
 * values[i] may be NULL for a key given without '='. */
int options_from_pairs(const char *const *keys, const char *const *values, size_t n,
                       struct feature_options *o, char *err, size_t errlen);

/* Checks *o against a model: each width in 1..D (the message lists the model's
 * trained widths), resolution a multiple of the patch size and at most
 * VIT_MAX_SIDE, rasa only when the model has RASA layers, each layer a block of
 * the model (the message names its depth) and no block twice (e.g. 11 and -1
 * of 12). Returns OPTIONS_OK or OPTIONS_INVALID. */
int options_check_model(const struct feature_options *o, const struct model_config *cfg,
                        char *err, size_t errlen);

/* The widths to compute for cfg: o->widths, or {D} when none were given.
 * Returns how many were written (at most OPTIONS_MAX_WIDTHS). */
int options_effective_widths(const struct feature_options *o, const struct model_config *cfg,
                             int out[OPTIONS_MAX_WIDTHS]);

/* The layers as 0-based block indices of cfg, in the order given; call after
 * options_check_model. Returns how many were written. */
int options_effective_layers(const struct feature_options *o, const struct model_config *cfg,
                             int out[OPTIONS_MAX_LAYERS]);

#endif
