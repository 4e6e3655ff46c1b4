/* libFuzzer target: POST /v1/features options. The first byte chooses the
 * parser (even: JSON, odd: query string); a successful parse is then checked
 * against a model config. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "model_config.h"
#include "options.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const uint8_t mode = data[0];
    data++;
    size--;
    struct feature_options o;
    char err[ERR_LEN];
    int rc;
    if ((mode & 1) == 0) {
        rc = options_from_json((const char *)data, size, &o, err, sizeof err);
    } else {
        char *qs = malloc(size + 1);
        if (!qs) return 0;
        memcpy(qs, data, size);
        qs[size] = '\0';
        rc = options_from_query(qs, &o, err, sizeof err);
        free(qs);
    }
    if (rc != OPTIONS_OK) {
        if (rc != OPTIONS_MALFORMED && rc != OPTIONS_INVALID && rc != OPTIONS_NOMEM) abort();
        return 0;
    }
    if (o.n_widths < 0 || o.n_widths > OPTIONS_MAX_WIDTHS) abort();
    if (memchr(o.model, '\0', sizeof o.model) == NULL) abort();
    if (!o.cls && !o.patch && !o.pooled) abort();

    struct model_config cfg;
    model_config_defaults(&cfg, (mode & 2) ? 768 : 384, 12);
    cfg.rasa_layers = (mode & 4) ? 2 : 0;
    if (mode & 8) cfg.patch_size = 16;
    rc = options_check_model(&o, &cfg, err, sizeof err);
    if (rc == OPTIONS_OK) {
        int widths[OPTIONS_MAX_WIDTHS];
        const int nw = options_effective_widths(&o, &cfg, widths);
        if (nw < 1 || nw > OPTIONS_MAX_WIDTHS) abort();
        for (int i = 0; i < nw; i++)
            if (widths[i] < 1 || widths[i] > cfg.embed_dim) abort();
        if (o.resolution % cfg.patch_size != 0) abort();
    } else if (rc != OPTIONS_INVALID) {
        abort();
    }
    return 0;
}
