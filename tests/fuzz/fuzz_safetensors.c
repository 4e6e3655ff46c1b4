/* libFuzzer target: the safetensors parser, the "franca" metadata parser and
 * the dtype conversions on whatever parses. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "model_config.h"
#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct st_file st;
    char err[ERR_LEN];
    if (st_parse(data, size, &st, err, sizeof err) != 0) {
        if (err[0] == '\0' || memchr(err, '\n', strlen(err)))
            abort(); /* the contract: a non-empty one-line message */
        return 0;
    }
    const char *meta = st_metadata_get(&st, "franca");
    if (meta) {
        struct model_config cfg;
        if (model_config_from_json(meta, strlen(meta), &cfg, err, sizeof err) == 0) {
            char *js = model_config_to_json(&cfg, meta);
            if (!js)
                js = model_config_to_json(&cfg, NULL);
            if (!js)
                abort(); /* a validated config must serialise */
            struct model_config back;
            if (model_config_from_json(js, strlen(js), &back, err, sizeof err) != 0)
                abort(); /* and read back */
            free(js);
        }
    }
    for (size_t i = 0; i < st.n_tensors; i++) {
        const struct st_tensor *t = &st.tensors[i];
        if (st_find(&st, t->name) != t)
            abort(); /* names are unique */
        size_t n = st_numel(t);
        if (n * st_dtype_size(t->dtype) != t->nbytes)
            abort();
        if ((const uint8_t *)t->data < data || t->nbytes > size ||
            (const uint8_t *)t->data + t->nbytes > data + size)
            abort(); /* inside the buffer */
        float *out = malloc((n + 3) * sizeof(float));
        if (!out)
            continue;
        st_to_f32(t, 0, n, out);
        st_to_f32(t, n ? n - 1 : 0, 3, out); /* runs past the end: zero-filled */
        free(out);
    }
    st_close(&st);
    return 0;
}
