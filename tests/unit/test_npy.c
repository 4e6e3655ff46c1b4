/* The .npy reader: valid files of each version, and every malformed header. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "npy.h"

/* Builds a .npy v1 buffer with the given header dict and `floats` data floats. */
static size_t make_npy(uint8_t *buf, int version, const char *dict, int floats)
{
    const size_t pre = version == 1 ? 10 : 12;
    size_t hlen = strlen(dict) + 1;
    while ((pre + hlen) % 64) hlen++;
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (uint8_t)version;
    buf[7] = 0;
    if (version == 1) {
        buf[8] = hlen & 0xff; buf[9] = hlen >> 8;
    } else {
        for (int i = 0; i < 4; i++) buf[8 + i] = (hlen >> (8 * i)) & 0xff;
    }
    memset(buf + pre, ' ', hlen);
    memcpy(buf + pre, dict, strlen(dict));
    buf[pre + hlen - 1] = '\n';
    for (int i = 0; i < floats; i++) {
        float f = (float)i * 0.5f;
        memcpy(buf + pre + hlen + 4 * i, &f, 4);
    }
    return pre + hlen + 4 * (size_t)floats;
}

int main(void)
{
    uint8_t buf[4096];
    struct npy_array a;
    char err[512];

    size_t n = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4, 5), }", 120);
    CHECK(npy_parse(buf, n, &a, err, sizeof err) == 0, "v1 parse: %s", err);
    CHECK(a.ndim == 4 && a.shape[0] == 2 && a.shape[3] == 5 && a.count == 120, "v1 shape");
    CHECK(a.data && a.data[7] == 3.5f, "v1 data");
    npy_free(&a);

    n = make_npy(buf, 2, "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }", 6);
    CHECK(npy_parse(buf, n, &a, err, sizeof err) == 0 && a.ndim == 1 && a.shape[0] == 6, "v2 1-d: %s", err);
    npy_free(&a);

    n = make_npy(buf, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }", 1);
    CHECK(npy_parse(buf, n, &a, err, sizeof err) == 0 && a.ndim == 0 && a.count == 1, "scalar");
    npy_free(&a);

    struct { const char *dict; int floats; size_t cut; const char *want; } bad[] = {
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", 4, 0, "float32"},
        {"{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", 2, 0, "float32"},
        {"{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", 2, 0, "Fortran"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 5, 0, "truncated"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999, 99999999999999), }", 0, 0, "large"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': 7, }", 0, 0, "tuple"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }", 0, 0, "malformed"},
        {"{'descr': '<f4', 'fortran_order': False, }", 0, 0, "lacks"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1), }", 1, 0, "dimensions"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", 4, 30, "exceeds"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        n = make_npy(buf, 1, bad[i].dict, bad[i].floats);
        if (bad[i].cut) n = bad[i].cut;
        int rc = npy_parse(buf, n, &a, err, sizeof err);
        CHECK(rc == -1 && strstr(err, bad[i].want), "case %zu: rc %d, message '%s'", i, rc, rc ? err : "");
        CHECK(a.data == NULL, "case %zu leaves no data", i);
    }
    CHECK(npy_parse((const uint8_t *)"PK\3\4 not npy", 13, &a, err, sizeof err) == -1 && strstr(err, "magic"), "bad magic");
    CHECK(npy_parse(buf, 0, &a, err, sizeof err) == -1, "empty buffer");
    buf[6] = 9;
    CHECK(npy_parse(buf, 200, &a, err, sizeof err) == -1 && strstr(err, "version"), "unknown version");
    CHECK(npy_load("/nonexistent/x.npy", &a, err, sizeof err) == -1 && strstr(err, "/nonexistent/x.npy"), "missing file named");
    return check_summary();
}
