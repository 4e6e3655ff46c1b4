/* libFuzzer target: search filters (index/filter.h). The input is JSON text;
 * when it compiles as a filter it is matched against fixed metadata objects,
 * and a refusal must carry a message. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "errors.h"
#include "index/filter.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static json_t *metas[4];
    if (!metas[0]) {
        metas[0] = json_loads("{\"a\": 1, \"b\": \"x\", \"c\": true, \"d\": null, \"e\": 2.5}", 0, NULL);
        metas[1] = json_loads("{\"a\": \"1\", \"tag\": [1, 2], \"o\": {\"p\": 1}}", 0, NULL);
        metas[2] = json_object();
        metas[3] = json_loads("{\"\": 0, \"$in\": -1e308}", 0, NULL);
    }
    json_t *spec = json_loadb((const char *)data, size, JSON_DECODE_ANY, NULL);
    if (!spec) return 0;
    struct filter *f = NULL;
    char err[ERR_LEN] = "";
    if (filter_compile(spec, &f, err, sizeof err) == 0) {
        for (int i = 0; i < 4; i++) (void)filter_match(f, metas[i]);
        (void)filter_match(f, NULL);
        filter_free(f);
    } else if (!err[0]) {
        abort(); /* every refusal says why */
    }
    json_decref(spec);
    return 0;
}
