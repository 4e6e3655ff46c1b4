/* libFuzzer target: image input strings (data URIs and bare base64), and the
 * base64 decoder with a size limit. Decoded bytes must re-encode and decode to
 * themselves. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"
#include "datauri.h"
#include "errors.h"
#include "route_status.h"

static void roundtrip(const uint8_t *bytes, size_t n)
{
    size_t el = 0;
    char *e = base64_encode(bytes, n, &el);
    if (!e) return;
    if (el != base64_encoded_len(n) || strlen(e) != el) abort();
    uint8_t *d = NULL;
    size_t dl = 0;
    char err[ERR_LEN];
    if (base64_decode(e, el, &d, &dl, 0, err, sizeof err) != BASE64_OK) abort();
    if (dl != n || (n && memcmp(d, bytes, n) != 0)) abort();
    free(d);
    free(e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    char err[ERR_LEN];
    uint8_t *out = NULL;
    size_t n = 0;
    enum datauri_media media;
    const size_t limit = size > 0 ? (size_t)data[0] * 16 : 0;

    enum datauri_status st = datauri_decode(s, size, 1 << 20, &out, &n, &media, err, sizeof err);
    if (st == DATAURI_OK) {
        if (!out || n == 0 || n > size) abort();
        roundtrip(out, n);
        free(out);
    } else if (out || n) {
        abort();
    }
    if (route_status_datauri(st) < 200) abort();

    st = datauri_decode(s, size, limit, &out, &n, NULL, err, sizeof err);
    if (st == DATAURI_OK) {
        if (limit && n > limit) abort();
        free(out);
    }

    size_t expect = 0;
    const int src = base64_decoded_size(s, size, &expect, err, sizeof err);
    const int rc = base64_decode(s, size, &out, &n, limit, err, sizeof err);
    if (rc == BASE64_OK) {
        if (src != BASE64_OK || n != expect || (limit && n > limit)) abort();
        roundtrip(out, n);
        free(out);
    } else if (out || n || (rc == BASE64_TOO_LARGE && (src != BASE64_OK || expect <= limit))) {
        abort();
    }
    return 0;
}
