/* The options of POST /v1/pca that are its own (server/routes_pca.c documents
 * them): rasa, threshold, refit, upsample, format, as image_inputs hands them
 * back; the /v1/features keys that do not apply to the route are refused. */
#ifndef FRANCA_PCA_OPTIONS_H
#define FRANCA_PCA_OPTIONS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

struct pca_options {
    bool rasa, refit, json, bilinear, has_threshold;
    bool has_format;  /* format was given (else Accept decides) */
    double threshold; /* in [0, 1] */
};

/* The keys the route takes from image_inputs (NULL-terminated). */
extern const char *const pca_option_keys[];

/* Parses extra (an object of pca_option_keys; from a query string every value
 * is a string: true/false/1/0 and decimal numbers) into *o. Returns
 * OPTIONS_OK, OPTIONS_MALFORMED (400: wrong type or value, a key that does not
 * apply) or OPTIONS_INVALID (422: threshold out of [0, 1], refit without
 * threshold), with a message naming the key. */
int pca_options_parse(const json_t *extra, bool from_query, struct pca_options *o, char *err,
                      size_t errlen);

#endif
