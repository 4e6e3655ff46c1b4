#include "datauri.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"
#include "errors.h"

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static char lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

/* s[0..n) equals the lowercase word w, ignoring ASCII case. */
static bool ieq(const char *s, size_t n, const char *w)
{
    const size_t m = strlen(w);
    if (n != m) return false;
    for (size_t i = 0; i < n; i++)
        if (lower(s[i]) != w[i]) return false;
    return true;
}

static void trim(const char *s, size_t *b, size_t *e)
{
    while (*b < *e && is_space(s[*b])) (*b)++;
    while (*e > *b && is_space(s[*e - 1])) (*e)--;
}

static enum datauri_status from_base64_rc(int rc)
{
    switch (rc) {
    case BASE64_OK: return DATAURI_OK;
    case BASE64_TOO_LARGE: return DATAURI_TOO_LARGE;
    case BASE64_NOMEM: return DATAURI_NOMEM;
    default: return DATAURI_MALFORMED;
    }
}

enum datauri_status datauri_decode(const char *s, size_t len, size_t max_bytes, uint8_t **out,
                                   size_t *out_len, enum datauri_media *media, char *err,
                                   size_t errlen)
{
    *out = NULL;
    *out_len = 0;
    if (media) *media = DATAURI_MEDIA_NONE;
    if (!s) len = 0;
    size_t b = 0, e = len;
    trim(s, &b, &e);
    if (b == e) {
        set_err(err, errlen, "empty image input: expected base64 image data or a data: URI");
        return DATAURI_MALFORMED;
    }

    /* A URI scheme: ALPHA *(ALPHA / DIGIT / "+" / "-" / ".") ":". Base64 has no
     * ':', so any scheme means the input is not bare base64. */
    size_t k = b;
    bool scheme = false;
    if (is_alpha(s[k])) {
        k++;
        while (k < e && (is_alpha(s[k]) || is_digit(s[k]) || s[k] == '+' || s[k] == '-' ||
                         s[k] == '.'))
            k++;
        scheme = k < e && s[k] == ':';
    }
    if (scheme && !ieq(s + b, k - b, "data")) {
        char name[64];
        printable_copy(s + b, k - b, name, sizeof name);
        const bool slashes = k + 2 < e && s[k + 1] == '/' && s[k + 2] == '/';
        if (slashes || ieq(s + b, k - b, "file")) {
            set_err(err, errlen,
                    "image input is a %s: URL; the server does not fetch URLs: send the image "
                    "bytes as base64 or as a data:image/...;base64, URI", name);
            return DATAURI_URL;
        }
        set_err(err, errlen,
                "image input starts with '%s:': expected base64 image data or a data: URI", name);
        return DATAURI_MALFORMED;
    }

    enum datauri_media declared = DATAURI_MEDIA_NONE;
    size_t pb = 0; /* payload start (0 for bare base64: message offsets stay absolute) */
    if (scheme) {
        const size_t hb = k + 1;
        const char *comma = memchr(s + hb, ',', e - hb);
        if (!comma) {
            set_err(err, errlen, "data URI has no ',' before its data");
            return DATAURI_MALFORMED;
        }
        const size_t he = (size_t)(comma - s);
        /* Media type: up to the first ';' (or the comma). */
        const char *semi = memchr(s + hb, ';', he - hb);
        size_t mb = hb, me = semi ? (size_t)(semi - s) : he;
        trim(s, &mb, &me);
        if (mb == me) {
            set_err(err, errlen, "data URI has no media type: use data:image/jpeg;base64, or "
                    "data:image/png;base64,");
            return DATAURI_UNSUPPORTED_TYPE;
        }
        if (ieq(s + mb, me - mb, "image/jpeg") || ieq(s + mb, me - mb, "image/jpg")) {
            declared = DATAURI_MEDIA_JPEG;
        } else if (ieq(s + mb, me - mb, "image/png")) {
            declared = DATAURI_MEDIA_PNG;
        } else if (ieq(s + mb, me - mb, "application/octet-stream")) {
            declared = DATAURI_MEDIA_OCTET;
        } else {
            char t[64];
            printable_copy(s + mb, me - mb, t, sizeof t);
            set_err(err, errlen, "unsupported media type '%s' in data URI (accepted: image/jpeg, "
                    "image/png, application/octet-stream)", t);
            return DATAURI_UNSUPPORTED_TYPE;
        }
        /* The last parameter before the comma must be "base64". */
        const char *last = memrchr(s + hb, ';', he - hb);
        size_t lb = last ? (size_t)(last - s) + 1 : he, le = he;
        trim(s, &lb, &le);
        if (!last || !ieq(s + lb, le - lb, "base64")) {
            set_err(err, errlen, "data URI is not base64-encoded: expected ';base64,' before "
                    "the data");
            return DATAURI_MALFORMED;
        }
        pb = he + 1;
        size_t tb = pb, te = e;
        trim(s, &tb, &te);
        if (tb == te) {
            set_err(err, errlen, "data URI has no data after ';base64,'");
            return DATAURI_MALFORMED;
        }
    }

    char b64err[256];
    const int rc = base64_decode(s + pb, e - pb, out, out_len, max_bytes, b64err, sizeof b64err);
    if (rc != BASE64_OK) {
        if (rc == BASE64_TOO_LARGE)
            set_err(err, errlen, "image too large: %s", b64err);
        else if (scheme)
            set_err(err, errlen, "data URI payload (from byte %zu): %s", pb, b64err);
        else
            set_err(err, errlen, "image input is not base64 or a data: URI: %s", b64err);
        return from_base64_rc(rc);
    }
    if (*out_len == 0) {
        free(*out);
        *out = NULL;
        set_err(err, errlen, "image input decodes to no bytes");
        return DATAURI_MALFORMED;
    }
    if (media) *media = declared;
    return DATAURI_OK;
}
