/* Minimal .npy reader for float32 C-order arrays (franca-embed --input-npy). */
#ifndef FRANCA_NPY_H
#define FRANCA_NPY_H

#include <stddef.h>
#include <stdint.h>

#define NPY_MAX_DIMS 8

struct npy_array {
    int ndim;
    int64_t shape[NPY_MAX_DIMS];
    float *data;          /* malloc'd, native float32 */
    size_t count;
};

/* Parses an in-memory .npy (v1/v2/v3); accepts '<f4' (and '|f4'), C order only. */
int npy_parse(const uint8_t *buf, size_t len, struct npy_array *a, char *err, size_t errlen);
int npy_load(const char *path, struct npy_array *a, char *err, size_t errlen);
void npy_free(struct npy_array *a);

#endif
