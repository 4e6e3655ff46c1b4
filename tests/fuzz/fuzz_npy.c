/* libFuzzer target: the .npy parser must reject or accept any bytes safely. */
#include <stddef.h>
#include <stdint.h>

#include "errors.h"
#include "npy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct npy_array a;
    char err[ERR_LEN];
    if (npy_parse(data, size, &a, err, sizeof err) == 0) {
        volatile float sink = 0.0f;
        for (size_t i = 0; i < a.count; i++) sink += a.data[i];
        (void)sink;
        npy_free(&a);
    }
    return 0;
}
