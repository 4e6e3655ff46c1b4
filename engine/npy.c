#include "npy.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"

/* Finds the value text after 'key': in the header dict; returns NULL if absent. */
static const char *dict_value(const char *hdr, const char *key)
{
    char pat[32];
    snprintf(pat, sizeof pat, "'%s'", key);
    const char *p = strstr(hdr, pat);
    if (!p) return NULL;
    p += strlen(pat);
    while (*p == ' ') p++;
    if (*p != ':') return NULL;
    p++;
    while (*p == ' ') p++;
    return p;
}

static int parse_shape(const char *p, struct npy_array *a, char *err, size_t errlen)
{
    if (*p != '(') return set_err(err, errlen, "npy: shape is not a tuple");
    p++;
    a->ndim = 0;
    a->count = 1;
    for (;;) {
        while (*p == ' ') p++;
        if (*p == ')') break;
        if (*p < '0' || *p > '9') return set_err(err, errlen, "npy: malformed shape");
        if (a->ndim == NPY_MAX_DIMS)
            return set_err(err, errlen, "npy: more than %d dimensions", NPY_MAX_DIMS);
        errno = 0;
        char *end;
        unsigned long long v = strtoull(p, &end, 10);
        if (errno || v > (1ull << 40)) return set_err(err, errlen, "npy: dimension too large");
        if (v && a->count > SIZE_MAX / 4 / v)
            return set_err(err, errlen, "npy: element count overflows");
        a->shape[a->ndim++] = (int64_t)v;
        a->count *= (size_t)v;
        p = end;
        while (*p == ' ') p++;
        if (*p == ',') p++;
        else if (*p != ')') return set_err(err, errlen, "npy: malformed shape");
    }
    return 0;
}

int npy_parse(const uint8_t *buf, size_t len, struct npy_array *a, char *err, size_t errlen)
{
    memset(a, 0, sizeof(*a));
    if (len < 10 || memcmp(buf, "\x93NUMPY", 6) != 0)
        return set_err(err, errlen, "npy: not a .npy file (bad magic)");
    const int major = buf[6];
    size_t hlen, hoff;
    if (major == 1) {
        hlen = buf[8] | (size_t)buf[9] << 8;
        hoff = 10;
    } else if (major == 2 || major == 3) {
        if (len < 12) return set_err(err, errlen, "npy: truncated header");
        hlen = buf[8] | (size_t)buf[9] << 8 | (size_t)buf[10] << 16 | (size_t)buf[11] << 24;
        hoff = 12;
    } else {
        return set_err(err, errlen, "npy: unsupported format version %d", major);
    }
    if (hlen > len - hoff || hlen > (1u << 20))
        return set_err(err, errlen, "npy: header length %zu exceeds the file", hlen);

    char *hdr = malloc(hlen + 1);
    if (!hdr) return set_err(err, errlen, "out of memory");
    memcpy(hdr, buf + hoff, hlen);
    hdr[hlen] = '\0';
    int rc = -1;
    const char *descr = dict_value(hdr, "descr");
    const char *order = dict_value(hdr, "fortran_order");
    const char *shape = dict_value(hdr, "shape");
    if (!descr || !order || !shape) {
        set_err(err, errlen, "npy: header lacks descr, fortran_order or shape");
    } else if (strncmp(descr, "'<f4'", 5) != 0 && strncmp(descr, "'|f4'", 5) != 0) {
        set_err(err, errlen, "npy: dtype must be little-endian float32 ('<f4'); convert with "
                "arr.astype(np.float32)");
    } else if (strncmp(order, "False", 5) != 0) {
        set_err(err, errlen, "npy: Fortran-order arrays are not supported; use "
                "np.ascontiguousarray");
    } else if (parse_shape(shape, a, err, errlen) == 0) {
        const size_t data_off = hoff + hlen;
        if (len - data_off < a->count * sizeof(float)) {
            set_err(err, errlen, "npy: data truncated: %zu bytes for %zu floats",
                    len - data_off, a->count);
        } else if (!(a->data = malloc(a->count ? a->count * sizeof(float) : 1))) {
            set_err(err, errlen, "out of memory");
        } else {
            memcpy(a->data, buf + data_off, a->count * sizeof(float));
            rc = 0;
        }
    }
    free(hdr);
    if (rc) {
        free(a->data);
        memset(a, 0, sizeof(*a));
    }
    return rc;
}

int npy_load(const char *path, struct npy_array *a, char *err, size_t errlen)
{
    memset(a, 0, sizeof(*a));
    FILE *f = fopen(path, "rb");
    if (!f) return set_err(err, errlen, "%s: %s", path, strerror(errno));
    uint8_t *buf = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0)
        buf = malloc(n ? (size_t)n : 1);
    int rc;
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        rc = set_err(err, errlen, "%s: cannot read file", path);
    } else {
        char inner[ERR_LEN];
        rc = npy_parse(buf, (size_t)n, a, inner, sizeof inner);
        if (rc) set_err(err, errlen, "%s: %s", path, inner);
    }
    free(buf);
    fclose(f);
    return rc;
}

void npy_free(struct npy_array *a)
{
    free(a->data);
    memset(a, 0, sizeof(*a));
}
