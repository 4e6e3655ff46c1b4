/* libFuzzer target: the options of POST /v1/pca. The first byte chooses the
 * source (even: a JSON object, odd: a query string split by
 * image_inputs_split_query, its own keys then parsed as query values and the
 * rest by options.c); invariants of each answer are checked. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "image_inputs.h"
#include "options.h"
#include "pca_options.h"

static void check_pca(const json_t *extra, bool query)
{
    struct pca_options o;
    char err[ERR_LEN];
    const int rc = pca_options_parse(extra, query, &o, err, sizeof err);
    if (rc == OPTIONS_OK) {
        if (o.has_threshold && !(o.threshold >= 0 && o.threshold <= 1)) abort();
        if (o.refit && !o.has_threshold) abort();
        if (o.has_format != (json_object_get(extra, "format") != NULL)) abort();
    } else if (rc != OPTIONS_MALFORMED && rc != OPTIONS_INVALID) {
        abort();
    } else if (memchr(err, '\0', sizeof err) == NULL) {
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const uint8_t mode = data[0];
    data++;
    size--;
    if ((mode & 1) == 0) {
        json_t *root = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
        if (json_is_object(root)) check_pca(root, false);
        json_decref(root);
        return 0;
    }
    char *qs = malloc(size + 1), *rest = malloc(size + 1);
    json_t *extra = json_object();
    if (qs && rest && extra) {
        memcpy(qs, data, size);
        qs[size] = '\0';
        char err[ERR_LEN];
        const int rc = image_inputs_split_query(qs, pca_option_keys, extra, rest, err, sizeof err);
        if (rc == 0) {
            if (strlen(rest) > strlen(qs)) abort();
            const char *key;
            json_t *v;
            json_object_foreach(extra, key, v) if (!json_is_string(v)) abort();
            check_pca(extra, true);
            struct feature_options f;
            const int orc = options_from_query(rest, &f, err, sizeof err);
            if (orc != OPTIONS_OK && orc != OPTIONS_MALFORMED && orc != OPTIONS_INVALID &&
                orc != OPTIONS_NOMEM)
                abort();
        } else if (rc != -1 && rc != -2) {
            abort();
        }
    }
    free(qs);
    free(rest);
    json_decref(extra);
    return 0;
}
