/* libFuzzer target: multipart/form-data parsing and Content-Type boundaries.
 *
 * The first byte chooses the mode: below 0x80, one of four fixed boundaries and
 * the rest is the body; 0x80..0xfe, a boundary of (byte & 0x7f) % 72 bytes
 * taken from the input (valid or not), then the body; 0xff, the rest is a
 * Content-Type header value. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "multipart.h"

static const char *const fixed[] = {"b", "XyZ", "----WebKitFormBoundary7MA4YWxkTrZu0gW",
                                    "a b'()+_,-./:=?"};

static void parse_body(const uint8_t *body, size_t n, const char *boundary)
{
    struct multipart_part *parts = NULL;
    size_t np = 0;
    char err[ERR_LEN];
    const int rc = multipart_parse(body, n, boundary, &parts, &np, 64, err, sizeof err);
    if (rc != MULTIPART_OK) {
        if (parts || np) abort();
        if (strlen(err) >= sizeof err) abort();
        return;
    }
    volatile unsigned sink = 0;
    for (size_t i = 0; i < np; i++) {
        const struct multipart_part *p = &parts[i];
        if (!p->name) abort();
        if (p->len && (p->data < body || p->data + p->len > body + n)) abort();
        for (size_t j = 0; j < p->len; j++) sink += p->data[j];
        sink += (unsigned)strlen(p->name);
        if (p->filename) sink += (unsigned)strlen(p->filename);
        if (p->content_type) sink += (unsigned)strlen(p->content_type);
    }
    if (np && multipart_find(parts, np, parts[0].name) != &parts[0]) abort();
    (void)sink;
    multipart_free(parts, np);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const uint8_t mode = data[0];
    data++;
    size--;
    if (mode == 0xff) {
        char *ct = malloc(size + 1);
        if (!ct) return 0;
        memcpy(ct, data, size);
        ct[size] = '\0';
        char boundary[MULTIPART_BOUNDARY_MAX + 1];
        char err[ERR_LEN];
        if (multipart_boundary_from_content_type(ct, boundary, sizeof boundary, err,
                                                 sizeof err) == 0) {
            const size_t bl = strlen(boundary);
            if (bl < 1 || bl > MULTIPART_BOUNDARY_MAX) abort();
        }
        free(ct);
        return 0;
    }
    if (mode < 0x80) {
        parse_body(data, size, fixed[mode % 4]);
        return 0;
    }
    size_t bl = (size_t)(mode & 0x7f) % 72;
    if (bl > size) bl = size;
    char boundary[72];
    memcpy(boundary, data, bl);
    boundary[bl] = '\0';
    parse_body(data + bl, size - bl, boundary);
    return 0;
}
