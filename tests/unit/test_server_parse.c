/* Request parsers of the server: base64, data URIs, multipart/form-data and the
 * options of POST /v1/features, on valid and hostile inputs. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"
#include "batcher.h"
#include "check.h"
#include "datauri.h"
#include "errors.h"
#include "index/store.h"
#include "model_config.h"
#include "multipart.h"
#include "options.h"
#include "registry.h"
#include "route_status.h"
#include "vit.h"

static char err[ERR_LEN];

static int has(const char *hay, const char *needle)
{
    return strstr(hay, needle) != NULL;
}

/* ------------------------------------------------------------------ base64 */

static void test_base64_rfc4648(void)
{
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const coded[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=",
                                        "Zm9vYmFy"};
    for (int i = 0; i < 7; i++) {
        const size_t pn = strlen(plain[i]);
        size_t el = 0;
        char *e = base64_encode((const uint8_t *)plain[i], pn, &el);
        CHECK(e && strcmp(e, coded[i]) == 0 && el == strlen(coded[i]), "encode '%s': %s",
              plain[i], e ? e : "(null)");
        CHECK(base64_encoded_len(pn) == strlen(coded[i]), "encoded_len %zu", pn);
        free(e);

        uint8_t *d = NULL;
        size_t dl = 99;
        int rc = base64_decode(coded[i], strlen(coded[i]), &d, &dl, 0, err, sizeof err);
        CHECK(rc == BASE64_OK && d && dl == pn && memcmp(d, plain[i], pn) == 0,
              "decode '%s': rc %d %s", coded[i], rc, err);
        free(d);

        /* Without padding. */
        char nopad[16];
        snprintf(nopad, sizeof nopad, "%s", coded[i]);
        char *eq = strchr(nopad, '=');
        if (eq) *eq = '\0';
        rc = base64_decode(nopad, strlen(nopad), &d, &dl, 0, err, sizeof err);
        CHECK(rc == BASE64_OK && dl == pn && memcmp(d, plain[i], pn) == 0,
              "decode unpadded '%s': rc %d %s", nopad, rc, err);
        free(d);

        size_t sz = 0;
        rc = base64_decoded_size(coded[i], strlen(coded[i]), &sz, err, sizeof err);
        CHECK(rc == BASE64_OK && sz == pn, "decoded_size '%s' = %zu", coded[i], sz);
    }
}

static void test_base64_alphabets_and_space(void)
{
    uint8_t *d = NULL;
    size_t dl = 0;
    const uint8_t want[] = {0xfb, 0xff, 0xbf, 0xfe};
    int rc = base64_decode("+/+/-g==", 8, &d, &dl, 0, err, sizeof err);
    CHECK(rc == BASE64_INVALID && has(err, "mixes"), "mixed alphabets rc %d: %s", rc, err);
    CHECK(d == NULL && dl == 0, "no output on failure");

    rc = base64_decode("+/+//g==", 8, &d, &dl, 0, err, sizeof err);
    CHECK(rc == BASE64_OK && dl == 4 && memcmp(d, want, 4) == 0, "standard alphabet: %s", err);
    free(d);
    rc = base64_decode("-_-__g", 6, &d, &dl, 0, err, sizeof err);
    CHECK(rc == BASE64_OK && dl == 4 && memcmp(d, want, 4) == 0, "URL-safe alphabet: %s", err);
    free(d);

    const char *spaced = " Zm9v\r\nYm\tFy \n";
    rc = base64_decode(spaced, strlen(spaced), &d, &dl, 0, err, sizeof err);
    CHECK(rc == BASE64_OK && dl == 6 && memcmp(d, "foobar", 6) == 0, "whitespace ignored: %s", err);
    free(d);
    rc = base64_decode("Zg =\n=", 6, &d, &dl, 0, err, sizeof err);
    CHECK(rc == BASE64_OK && dl == 1 && d[0] == 'f', "whitespace inside padding: %s", err);
    free(d);

    /* Non-zero trailing bits are accepted (as Python does). */
    rc = base64_decode("Zh==", 4, &d, &dl, 0, err, sizeof err);
    CHECK(rc == BASE64_OK && dl == 1 && d[0] == 'f', "non-canonical trailing bits: %s", err);
    free(d);

    /* Empty input: a non-NULL empty buffer. */
    rc = base64_decode("", 0, &d, &dl, 0, err, sizeof err);
    CHECK(rc == BASE64_OK && d != NULL && dl == 0, "empty decodes to nothing");
    free(d);
    rc = base64_decode(" \r\n", 3, &d, &dl, 0, err, sizeof err);
    CHECK(rc == BASE64_OK && dl == 0, "whitespace only decodes to nothing");
    free(d);
}

static void test_base64_hostile(void)
{
    struct {
        const char *in;
        size_t len;
        const char *msg;
    } bad[] = {
        {"Zm9v!mFy", 8, "'!' at byte 4"},
        {"Zm9v.", 5, "'.' at byte 4"},
        {"Zm9v\0Zm9v", 9, "0x00 at byte 4"},
        {"Zm\x80v", 4, "0x80 at byte 2"},
        {"Zm9vY", 5, "truncated"},
        {"Z", 1, "truncated"},
        {"Zg=", 3, "padding"},
        {"Zg===", 5, "padding"},
        {"Zm9v=", 5, "padding"},
        {"Zm8==", 5, "padding"},
        {"=", 1, "padding"},
        {"====", 4, "padding"},
        {"Zg==Zg==", 8, "after padding"},
        {"Zg=a", 4, "after padding"},
        {"Zm9v\x0bYmFy", 9, "0x0b at byte 4"},
        {"Zm9v%2B", 7, "'%' at byte 4"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint8_t *d = (uint8_t *)1;
        size_t dl = 7;
        err[0] = '\0';
        const int rc = base64_decode(bad[i].in, bad[i].len, &d, &dl, 0, err, sizeof err);
        CHECK(rc == BASE64_INVALID && d == NULL && dl == 0 && has(err, bad[i].msg),
              "bad input %zu: rc %d, err '%s' (want '%s')", i, rc, err, bad[i].msg);
    }
    /* The size limit is checked before allocation; exactly max_out is fine. */
    uint8_t *d = NULL;
    size_t dl = 0;
    int rc = base64_decode("Zm9vYmFy", 8, &d, &dl, 6, err, sizeof err);
    CHECK(rc == BASE64_OK && dl == 6, "exactly at the limit");
    free(d);
    rc = base64_decode("Zm9vYmFy", 8, &d, &dl, 5, err, sizeof err);
    CHECK(rc == BASE64_TOO_LARGE && d == NULL && has(err, "6 bytes") && has(err, "5 bytes"),
          "over the limit: rc %d %s", rc, err);
    /* Invalid beats too large: the input is not base64 at all. */
    rc = base64_decode("Zm9vYmFy!", 9, &d, &dl, 1, err, sizeof err);
    CHECK(rc == BASE64_INVALID, "invalid and large: rc %d", rc);
    /* A NULL error buffer is allowed. */
    rc = base64_decode("!", 1, &d, &dl, 0, NULL, 0);
    CHECK(rc == BASE64_INVALID, "NULL err buffer");
}

static void test_base64_roundtrip_and_f32(void)
{
    uint8_t buf[300];
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)(i * 131u + 7u);
    int ok = 1;
    for (size_t n = 0; n <= sizeof buf; n++) {
        size_t el;
        char *e = base64_encode(buf, n, &el);
        uint8_t *d = NULL;
        size_t dl = 0;
        if (!e || el != base64_encoded_len(n) ||
            base64_decode(e, el, &d, &dl, 0, err, sizeof err) != BASE64_OK || dl != n ||
            memcmp(d, buf, n) != 0)
            ok = 0;
        free(e);
        free(d);
    }
    CHECK(ok, "encode/decode round trip for 0..300 bytes");

    const float one = 1.0f;
    size_t el = 0;
    char *e = base64_encode_f32le(&one, 1, &el);
    CHECK(e && strcmp(e, "AACAPw==") == 0 && el == 8, "1.0f as LE f32: %s", e ? e : "(null)");
    free(e);
    const float v[3] = {1.0f, -2.0f, 0.5f}; /* 0000803f 000000c0 0000003f */
    e = base64_encode_f32le(v, 3, &el);
    CHECK(e && strcmp(e, "AACAPwAAAMAAAAA/") == 0, "three floats: %s", e ? e : "(null)");
    free(e);
    e = base64_encode_f32le(v, 0, &el);
    CHECK(e && e[0] == '\0' && el == 0, "no floats");
    free(e);

    /* Larger than one internal chunk, length not a multiple of 3 floats. */
    enum { NF = 2000 };
    float *big = malloc(NF * sizeof *big);
    for (int i = 0; i < NF; i++) big[i] = (float)i * 0.25f - 100.0f;
    e = base64_encode_f32le(big, NF, &el);
    uint8_t *d = NULL;
    size_t dl = 0;
    int rc = e ? base64_decode(e, el, &d, &dl, 0, err, sizeof err) : -9;
    int same = rc == BASE64_OK && dl == NF * 4;
    for (int i = 0; same && i < NF; i++) {
        const uint32_t u = (uint32_t)d[4 * i] | (uint32_t)d[4 * i + 1] << 8 |
                           (uint32_t)d[4 * i + 2] << 16 | (uint32_t)d[4 * i + 3] << 24;
        float f;
        memcpy(&f, &u, 4);
        if (f != big[i]) same = 0;
    }
    CHECK(same, "2000 floats round trip through base64 LE");
    free(d);
    free(e);
    free(big);
}

/* ----------------------------------------------------------------- datauri */

static enum datauri_status du(const char *s, size_t max, uint8_t **out, size_t *n,
                              enum datauri_media *m)
{
    err[0] = '\0';
    return datauri_decode(s, strlen(s), max, out, n, m, err, sizeof err);
}

static void test_datauri(void)
{
    struct {
        const char *in;
        enum datauri_media media;
    } ok[] = {
        {"data:image/jpeg;base64,Zm9vYmFy", DATAURI_MEDIA_JPEG},
        {"data:image/jpg;base64,Zm9vYmFy", DATAURI_MEDIA_JPEG},
        {"data:image/png;base64,Zm9vYmFy", DATAURI_MEDIA_PNG},
        {"data:application/octet-stream;base64,Zm9vYmFy", DATAURI_MEDIA_OCTET},
        {"DATA:IMAGE/PNG;BASE64,Zm9vYmFy", DATAURI_MEDIA_PNG},
        {"data:image/png;name=cat.png;charset=x;base64,Zm9vYmFy", DATAURI_MEDIA_PNG},
        {"data: image/png ; base64 ,Zm9vYmFy", DATAURI_MEDIA_PNG},
        {"data:image/png;base64,Zm9v\nYmFy\n", DATAURI_MEDIA_PNG},
        {"data:image/png;base64,Zm9vYmFy", DATAURI_MEDIA_PNG},
        {"  \r\ndata:image/png;base64,Zm9vYmFy  \n", DATAURI_MEDIA_PNG},
        {"Zm9vYmFy", DATAURI_MEDIA_NONE},
        {"Zm9vYmE", DATAURI_MEDIA_NONE},
        {"  Zm9v YmFy\n", DATAURI_MEDIA_NONE},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        uint8_t *o = NULL;
        size_t n = 0;
        enum datauri_media m = (enum datauri_media)99;
        const enum datauri_status st = du(ok[i].in, 0, &o, &n, &m);
        const size_t want = i == 11 ? 5 : 6;
        CHECK(st == DATAURI_OK && o && n == want && memcmp(o, "foobar", want) == 0 &&
                  m == ok[i].media,
              "ok %zu '%s': st %d m %d %s", i, ok[i].in, st, m, err);
        free(o);
    }

    struct {
        const char *in;
        enum datauri_status st;
        const char *msg;
    } bad[] = {
        {"http://example.com/cat.jpg", DATAURI_URL, "does not fetch"},
        {"https://example.com/cat.jpg", DATAURI_URL, "does not fetch"},
        {"HTTPS://EXAMPLE.COM/x", DATAURI_URL, "does not fetch"},
        {"ftp://host/x.png", DATAURI_URL, "ftp"},
        {"file:/etc/passwd", DATAURI_URL, "file"},
        {"file:///etc/passwd", DATAURI_URL, "file"},
        {"s3://bucket/key", DATAURI_URL, "does not fetch"},
        {"  http://x ", DATAURI_URL, "does not fetch"},
        {"mailto:a@b", DATAURI_MALFORMED, "mailto"},
        {"data:image/gif;base64,R0lGOD", DATAURI_UNSUPPORTED_TYPE, "image/gif"},
        {"data:text/plain;base64,Zm9v", DATAURI_UNSUPPORTED_TYPE, "text/plain"},
        {"data:;base64,Zm9v", DATAURI_UNSUPPORTED_TYPE, "no media type"},
        {"data:,Zm9v", DATAURI_UNSUPPORTED_TYPE, "no media type"},
        {"data:image/svg+xml,<svg/>", DATAURI_UNSUPPORTED_TYPE, "image/svg+xml"},
        {"data:image/png,Zm9v", DATAURI_MALFORMED, "base64"},
        {"data:image/png;base64x,Zm9v", DATAURI_MALFORMED, "base64"},
        {"data:image/png;base64", DATAURI_MALFORMED, "no ','"},
        {"data:image/png;base64,", DATAURI_MALFORMED, "no data"},
        {"data:image/png;base64, \n ", DATAURI_MALFORMED, "no data"},
        {"data:image/png;base64,Zm9v!", DATAURI_MALFORMED, "'!' at byte 4"},
        {"data:image/png;base64,Zm9v,Zm9v", DATAURI_MALFORMED, "','"},
        {"data:image/png;base64,====", DATAURI_MALFORMED, "padding"},
        {"", DATAURI_MALFORMED, "empty"},
        {" \r\n\t", DATAURI_MALFORMED, "empty"},
        {"Zm9v!", DATAURI_MALFORMED, "'!' at byte 4"},
        {"/tmp/cat.jpg", DATAURI_MALFORMED, "'.' at byte 8"},
        {"C:\\cat.jpg", DATAURI_MALFORMED, "'C:'"},
        {"Z", DATAURI_MALFORMED, "truncated"},
        {"data:image/png;base64,Z", DATAURI_MALFORMED, "truncated"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint8_t *o = (uint8_t *)1;
        size_t n = 5;
        enum datauri_media m = DATAURI_MEDIA_PNG;
        const enum datauri_status st = du(bad[i].in, 0, &o, &n, &m);
        CHECK(st == bad[i].st && o == NULL && n == 0 && m == DATAURI_MEDIA_NONE &&
                  has(err, bad[i].msg),
              "bad %zu '%s': st %d (want %d), err '%s' (want '%s')", i, bad[i].in, st, bad[i].st,
              err, bad[i].msg);
    }

    /* Size limit, for both forms, checked before decoding. */
    uint8_t *o = NULL;
    size_t n = 0;
    enum datauri_status st = du("data:image/png;base64,Zm9vYmFy", 5, &o, &n, NULL);
    CHECK(st == DATAURI_TOO_LARGE && o == NULL && has(err, "too large"), "data URI too large: %s",
          err);
    st = du("Zm9vYmFy", 5, &o, &n, NULL);
    CHECK(st == DATAURI_TOO_LARGE && o == NULL, "bare base64 too large");
    st = du("Zm9vYmFy", 6, &o, &n, NULL);
    CHECK(st == DATAURI_OK && n == 6, "bare base64 at the limit");
    free(o);

    /* Not NUL-terminated: only len bytes are read. */
    const char raw[] = {'Z', 'm', '9', 'v', '!'};
    st = datauri_decode(raw, 4, 0, &o, &n, NULL, err, sizeof err);
    CHECK(st == DATAURI_OK && n == 3, "length-bounded input");
    free(o);
    st = datauri_decode(NULL, 0, 0, &o, &n, NULL, err, sizeof err);
    CHECK(st == DATAURI_MALFORMED, "NULL input");

    CHECK(route_status_datauri(DATAURI_OK) == 200 && route_status_datauri(DATAURI_MALFORMED) == 400 &&
              route_status_datauri(DATAURI_URL) == 422 &&
              route_status_datauri(DATAURI_UNSUPPORTED_TYPE) == 415 &&
              route_status_datauri(DATAURI_TOO_LARGE) == 413 &&
              route_status_datauri(DATAURI_NOMEM) == 500,
          "datauri HTTP statuses");
}

/* --------------------------------------------------------------- multipart */

static struct multipart_part *mp_parts;
static size_t mp_n;

static int mp(const void *body, size_t len, const char *boundary, size_t max_parts)
{
    err[0] = '\0';
    multipart_free(mp_parts, mp_n);
    mp_parts = NULL;
    mp_n = 0;
    return multipart_parse(body, len, boundary, &mp_parts, &mp_n, max_parts, err, sizeof err);
}

static int mps(const char *body, const char *boundary)
{
    return mp(body, strlen(body), boundary, 0);
}

static int part_is(size_t i, const char *name, const char *filename, const char *ct,
                   const void *data, size_t len)
{
    if (i >= mp_n) return 0;
    const struct multipart_part *p = &mp_parts[i];
    if (strcmp(p->name, name) != 0) return 0;
    if ((filename == NULL) != (p->filename == NULL)) return 0;
    if (filename && strcmp(filename, p->filename) != 0) return 0;
    if ((ct == NULL) != (p->content_type == NULL)) return 0;
    if (ct && strcmp(ct, p->content_type) != 0) return 0;
    return p->len == len && (len == 0 || memcmp(p->data, data, len) == 0);
}

static void test_multipart_boundary(void)
{
    char b[MULTIPART_BOUNDARY_MAX + 1];
    int rc = multipart_boundary_from_content_type("multipart/form-data; boundary=----WebKitForm7x",
                                                  b, sizeof b, err, sizeof err);
    CHECK(rc == 0 && strcmp(b, "----WebKitForm7x") == 0, "unquoted boundary: %s", err);
    rc = multipart_boundary_from_content_type(
        "Multipart/Form-Data;charset=utf-8;BOUNDARY=\"a b:c?\"", b, sizeof b, err, sizeof err);
    CHECK(rc == 0 && strcmp(b, "a b:c?") == 0, "quoted boundary with space and colon: %s", err);
    rc = multipart_boundary_from_content_type("multipart/form-data ; boundary = xyz ; foo=bar", b,
                                              sizeof b, err, sizeof err);
    CHECK(rc == 0 && strcmp(b, "xyz") == 0, "spaces around '=': %s", err);
    char b70[71];
    memset(b70, 'q', 70);
    b70[70] = '\0';
    char ct[128];
    snprintf(ct, sizeof ct, "multipart/form-data; boundary=%s", b70);
    rc = multipart_boundary_from_content_type(ct, b, sizeof b, err, sizeof err);
    CHECK(rc == 0 && strcmp(b, b70) == 0, "70-character boundary: %s", err);

    struct {
        const char *ct;
        const char *msg;
    } bad[] = {
        {"application/json", "not multipart/form-data"},
        {"multipart/mixed; boundary=x", "not multipart/form-data"},
        {"multipart/form-data", "no boundary"},
        {"multipart/form-data; charset=utf-8", "no boundary"},
        {"multipart/form-data; boundary=", "empty"},
        {"multipart/form-data; boundary=\"\"", "empty"},
        {"multipart/form-data; boundary=\"abc", "unterminated"},
        {"multipart/form-data; boundary=\"ab\"cd", "after a quoted"},
        {"multipart/form-data; boundary=\"ab \"", "ends with a space"},
        {"multipart/form-data; boundary=a<b", "invalid character"},
        {"multipart/form-data; boundary=a\"b", "invalid character"},
        {"multipart/form-data; boundary=x; boundary=y", "two boundary"},
        {"", "not multipart/form-data"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        rc = multipart_boundary_from_content_type(bad[i].ct, b, sizeof b, err, sizeof err);
        CHECK(rc == MULTIPART_MALFORMED && has(err, bad[i].msg), "bad ct %zu '%s': rc %d '%s'", i,
              bad[i].ct, rc, err);
    }
    snprintf(ct, sizeof ct, "multipart/form-data; boundary=%sq", b70);
    rc = multipart_boundary_from_content_type(ct, b, sizeof b, err, sizeof err);
    CHECK(rc == MULTIPART_MALFORMED && has(err, "71 characters"), "71-character boundary: %s", err);
    rc = multipart_boundary_from_content_type("multipart/form-data; boundary=abcdef", b, 4, err,
                                              sizeof err);
    CHECK(rc == MULTIPART_MALFORMED, "boundary over the caller's buffer");
    rc = multipart_boundary_from_content_type(NULL, b, sizeof b, err, sizeof err);
    CHECK(rc == MULTIPART_MALFORMED, "NULL content type");
}

static void test_multipart_valid(void)
{
    /* Binary data with CR, LF, NUL, partial and look-alike boundaries. */
    static const uint8_t img[] = "\x89PNG\r\n\x1a\n\0\r\n--XyZb\r\n--XyZ-x\r\n--Xy\r\n"
                                 "x--XyZ\r\n--XyZ \tz\r\n-- XyZ\r\n\r--XyZ\r\n-";
    const size_t img_len = sizeof img - 1;
    const char *head =
        "preamble to ignore\r\n"
        "--XyZ\r\n"
        "Content-Disposition: form-data; name=\"options\"\r\n"
        "Content-Type: application/json\r\n"
        "\r\n"
        "{\"widths\": [96, 384]}\r\n"
        "--XyZ\r\n"
        "content-disposition: FORM-DATA; name=image; filename=\"c\\\"a\\\\t;.png\"\r\n"
        "CONTENT-TYPE:   image/png  \r\n"
        "X-Other: ignored\r\n"
        "Content-Transfer-Encoding: binary\r\n"
        "\r\n";
    const char *tail = "\r\n--XyZ\r\n"
                       "Content-Disposition: form-data; name=\"empty\"; filename=\"\"\r\n"
                       "\r\n"
                       "\r\n--XyZ--\r\nepilogue --XyZ\r\n";
    const size_t hl = strlen(head), tl = strlen(tail);
    uint8_t *body = malloc(hl + img_len + tl);
    memcpy(body, head, hl);
    memcpy(body + hl, img, img_len);
    memcpy(body + hl + img_len, tail, tl);
    int rc = mp(body, hl + img_len + tl, "XyZ", 0);
    CHECK(rc == MULTIPART_OK && mp_n == 3, "three parts: rc %d n %zu %s", rc, mp_n, err);
    CHECK(part_is(0, "options", NULL, "application/json", "{\"widths\": [96, 384]}", 21),
          "options part");
    CHECK(part_is(1, "image", "c\"a\\t;.png", "image/png", img, img_len),
          "binary image part with look-alike boundaries");
    CHECK(mp_n == 3 && mp_parts[1].data == body + hl, "zero copy: data points into the body");
    CHECK(part_is(2, "empty", "", NULL, "", 0), "empty part with empty filename");
    const struct multipart_part *f = multipart_find(mp_parts, mp_n, "image");
    CHECK(f == &mp_parts[1], "multipart_find");
    CHECK(multipart_find(mp_parts, mp_n, "nope") == NULL, "multipart_find missing");
    free(body);

    /* Bare LF everywhere, transport padding, no preamble, no epilogue. */
    rc = mps("--b  \t\n"
             "Content-Disposition: form-data; name=a\n"
             "\n"
             "one\n"
             "--b\n"
             "Content-Disposition: form-data;name=\"b\";filename=x.jpg\n"
             "\n"
             "two\r\n"
             "--b--",
             "b");
    CHECK(rc == MULTIPART_OK && mp_n == 2 && part_is(0, "a", NULL, NULL, "one", 3) &&
              part_is(1, "b", "x.jpg", NULL, "two", 3),
          "bare LF and padding: rc %d n %zu %s", rc, mp_n, err);

    /* No parts at all. */
    rc = mps("--b--\r\n", "b");
    CHECK(rc == MULTIPART_OK && mp_n == 0 && mp_parts == NULL, "zero parts: %s", err);

    /* The blank line directly followed by the delimiter: empty data. */
    rc = mps("--b\r\nContent-Disposition: form-data; name=a\r\n\r\n--b--", "b");
    CHECK(rc == MULTIPART_OK && mp_n == 1 && part_is(0, "a", NULL, NULL, "", 0),
          "empty data without a line break: %s", err);

    /* A boundary with RFC 2046 specials and a space inside. */
    rc = mps("--a b'()+_,-./:=?\r\nContent-Disposition: form-data; name=x\r\n\r\nv\r\n"
             "--a b'()+_,-./:=?--\r\n",
             "a b'()+_,-./:=?");
    CHECK(rc == MULTIPART_OK && mp_n == 1 && part_is(0, "x", NULL, NULL, "v", 1),
          "boundary with specials: %s", err);

    /* Unknown and empty Content-Disposition parameters are ignored. */
    rc = mps("--b\r\nContent-Disposition: form-data; ; size=3; name=x; filename*=UTF-8''a\r\n\r\n"
             "v\r\n--b--",
             "b");
    CHECK(rc == MULTIPART_OK && mp_n == 1 && part_is(0, "x", NULL, NULL, "v", 1),
          "unknown parameters ignored: %s", err);

    /* Exactly max_parts parts. */
    rc = mp("--b\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n"
            "--b\r\nContent-Disposition: form-data; name=b\r\n\r\n2\r\n--b--",
            strlen("--b\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n"
                   "--b\r\nContent-Disposition: form-data; name=b\r\n\r\n2\r\n--b--"),
            "b", 2);
    CHECK(rc == MULTIPART_OK && mp_n == 2, "exactly max_parts");
}

static void test_multipart_hostile(void)
{
    struct {
        const char *body;
        const char *boundary;
        int rc;
        const char *msg;
    } bad[] = {
        {"--b\r\nContent-Disposition: form-data; name=a\r\n\r\ndata", "b", MULTIPART_MALFORMED,
         "truncated multipart body"},
        {"--b\r\nContent-Disposition: form-data; name=a\r\n\r\ndata\r\n--b", "b",
         MULTIPART_MALFORMED, "truncated multipart body"},
        {"--b\r\nContent-Disposition: form-data; name=a\r\n\r\ndata\r\n--b-", "b",
         MULTIPART_MALFORMED, "truncated multipart body"},
        {"--b\r\nContent-Disposition: form-data; name=a\r\n\r\ndata\r\n--b\r", "b",
         MULTIPART_MALFORMED, "truncated multipart body"},
        {"--b\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--bx\r\n", "b",
         MULTIPART_MALFORMED, "truncated multipart body"},
        {"--b\r\nContent-Disposition: form-data; name=a\r\n", "b", MULTIPART_MALFORMED,
         "truncated multipart body"},
        {"--b\r\nContent-Disposition: form-data; na", "b", MULTIPART_MALFORMED,
         "truncated multipart body"},
        {"--b", "b", MULTIPART_MALFORMED, "truncated multipart body"},
        {"--b\r\n", "b", MULTIPART_MALFORMED, "truncated multipart body"},
        {"no boundary here", "b", MULTIPART_MALFORMED, "does not contain the boundary"},
        {"x--b\r\n", "b", MULTIPART_MALFORMED, "does not contain the boundary"},
        {"--c\r\n\r\n--c--", "b", MULTIPART_MALFORMED, "does not contain the boundary"},
        {"--b\r\nContent-Disposition form-data\r\n\r\nx\r\n--b--", "b", MULTIPART_MALFORMED,
         "without ':'"},
        {"--b\r\nContent-Type: image/png\r\n\r\nx\r\n--b--", "b", MULTIPART_MALFORMED,
         "no Content-Disposition"},
        {"--b\r\n\r\nx\r\n--b--", "b", MULTIPART_MALFORMED, "no Content-Disposition"},
        {"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--", "b", MULTIPART_MALFORMED,
         "no name"},
        {"--b\r\nContent-Disposition: form-data; filename=a.png\r\n\r\nx\r\n--b--", "b",
         MULTIPART_MALFORMED, "no name"},
        {"--b\r\nContent-Disposition: attachment; name=a\r\n\r\nx\r\n--b--", "b",
         MULTIPART_MALFORMED, "not form-data"},
        {"--b\r\nContent-Disposition: form-data; name=\"a\r\n\r\nx\r\n--b--", "b",
         MULTIPART_MALFORMED, "unterminated"},
        {"--b\r\nContent-Disposition: form-data; name=\"a\"x\r\n\r\nx\r\n--b--", "b",
         MULTIPART_MALFORMED, "after a quoted"},
        {"--b\r\nContent-Disposition: form-data; name\r\n\r\nx\r\n--b--", "b",
         MULTIPART_MALFORMED, "has no value"},
        {"--b\r\nContent-Disposition: form-data; name=a; name=b\r\n\r\nx\r\n--b--", "b",
         MULTIPART_MALFORMED, "two 'name'"},
        {"--b\r\nContent-Disposition: form-data; name=a\r\nContent-Disposition: form-data; "
         "name=b\r\n\r\nx\r\n--b--",
         "b", MULTIPART_MALFORMED, "two Content-Disposition"},
        {"--b\r\nContent-Disposition: form-data; name=a\r\nContent-Type: a\r\nContent-Type: b"
         "\r\n\r\nx\r\n--b--",
         "b", MULTIPART_MALFORMED, "two Content-Type"},
        {"--b\r\nContent-Disposition: form-data;\r\n name=a\r\n\r\nx\r\n--b--", "b",
         MULTIPART_MALFORMED, "folded"},
        {"--b\r\n: value\r\n\r\nx\r\n--b--", "b", MULTIPART_MALFORMED, "header name"},
        {"--b\r\nContent-Disposition : form-data; name=a\r\n\r\nx\r\n--b--", "b",
         MULTIPART_MALFORMED, "header name"},
        {"--b\r\nContent-Disposition: form-data; name=a\r\nContent-Transfer-Encoding: base64"
         "\r\n\r\neA==\r\n--b--",
         "b", MULTIPART_MALFORMED, "base64"},
        {"--b\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--b--", "",
         MULTIPART_MALFORMED, "empty"},
        {"--b\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--b--", "b ",
         MULTIPART_MALFORMED, "space"},
        {"--b\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--b--", "b\r",
         MULTIPART_MALFORMED, "invalid character"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const int rc = mps(bad[i].body, bad[i].boundary);
        CHECK(rc == bad[i].rc && mp_parts == NULL && mp_n == 0 && has(err, bad[i].msg),
              "bad multipart %zu: rc %d (want %d), err '%s' (want '%s')", i, rc, bad[i].rc, err,
              bad[i].msg);
    }

    /* NUL byte inside a header line. */
    const char nul_hdr[] = "--b\r\nContent-Disposition: form-data; name=a\0b\r\n\r\nx\r\n--b--";
    int rc = mp(nul_hdr, sizeof nul_hdr - 1, "b", 0);
    CHECK(rc == MULTIPART_MALFORMED && has(err, "NUL"), "NUL in a header: %s", err);

    /* Empty body and NULL body. */
    rc = mp("", 0, "b", 0);
    CHECK(rc == MULTIPART_MALFORMED && has(err, "empty multipart body"), "empty body: %s", err);
    rc = mp(NULL, 0, "b", 0);
    CHECK(rc == MULTIPART_MALFORMED, "NULL body");
    rc = mp("x", 1, NULL, 0);
    CHECK(rc == MULTIPART_MALFORMED, "NULL boundary");

    /* Boundary longer than 70 characters. */
    char b71[72];
    memset(b71, 'a', 71);
    b71[71] = '\0';
    rc = mps("--aaaa\r\n", b71);
    CHECK(rc == MULTIPART_MALFORMED && has(err, "over the 70"), "boundary of 71: %s", err);

    /* Too many parts: 413, not 400. */
    const char *three = "--b\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n"
                        "--b\r\nContent-Disposition: form-data; name=b\r\n\r\n2\r\n"
                        "--b\r\nContent-Disposition: form-data; name=c\r\n\r\n3\r\n--b--";
    rc = mp(three, strlen(three), "b", 2);
    CHECK(rc == MULTIPART_TOO_MANY && mp_parts == NULL && has(err, "more than 2 parts"),
          "too many parts: rc %d %s", rc, err);
    CHECK(route_status_multipart(rc) == 413, "too many parts is 413");
    CHECK(route_status_multipart(MULTIPART_MALFORMED) == 400 &&
              route_status_multipart(MULTIPART_OK) == 200 &&
              route_status_multipart(MULTIPART_NOMEM) == 500,
          "multipart statuses");

    /* A header block over the limit, and one just under it. */
    const size_t big = MULTIPART_MAX_HEADER_BYTES + 100;
    char *body = malloc(big + 64);
    size_t o = (size_t)sprintf(body, "--b\r\nX-Pad: ");
    while (o < big) body[o++] = 'p';
    o += (size_t)sprintf(body + o, "\r\n\r\nx\r\n--b--");
    rc = mp(body, o, "b", 0);
    CHECK(rc == MULTIPART_MALFORMED && has(err, "header block is over"), "big headers: %s", err);
    const char *cd = "Content-Disposition: form-data; name=a\r\n";
    o = (size_t)sprintf(body, "--b\r\n%sX-Pad: ", cd);
    const size_t header_room = MULTIPART_MAX_HEADER_BYTES - strlen(cd) - strlen("X-Pad: ") - 4;
    for (size_t i = 0; i < header_room; i++) body[o++] = 'p';
    o += (size_t)sprintf(body + o, "\r\n\r\nx\r\n--b--");
    rc = mp(body, o, "b", 0);
    CHECK(rc == MULTIPART_OK && mp_n == 1, "headers exactly at the limit: %s", err);
    free(body);

    /* A body made only of near-boundaries stays linear and is refused. */
    const size_t nb = 200000;
    char *spam = malloc(nb);
    for (size_t i = 0; i < nb; i++) spam[i] = "\n--bx"[i % 5];
    rc = mp(spam, nb, "b", 0);
    CHECK(rc == MULTIPART_MALFORMED, "near-boundary spam");
    free(spam);

    multipart_free(mp_parts, mp_n);
    mp_parts = NULL;
    mp_n = 0;
}

/* ----------------------------------------------------------------- options */

static int oj(const char *json, struct feature_options *o)
{
    err[0] = '\0';
    return options_from_json(json, strlen(json), o, err, sizeof err);
}

static int oq(const char *qs, struct feature_options *o)
{
    err[0] = '\0';
    return options_from_query(qs, o, err, sizeof err);
}

static void test_options_json(void)
{
    struct feature_options o;
    int rc = oj("{}", &o);
    CHECK(rc == OPTIONS_OK && o.model[0] == '\0' && o.n_widths == 0 && o.cls && !o.patch &&
              !o.pooled && !o.rasa && o.normalize && o.resolution == 0 && o.crop == CROP_CENTER &&
              o.dtype == DTYPE_F32,
          "defaults from {}: %s", err);

    rc = oj("{\"model\": \"franca-vits14\", \"widths\": [96, 384, 24], \"cls\": false, "
            "\"patch\": true, \"pooled\": true, \"rasa\": true, \"normalize\": false, "
            "\"resolution\": 448, \"crop\": \"square\", \"dtype\": \"f16\"}",
            &o);
    CHECK(rc == OPTIONS_OK && strcmp(o.model, "franca-vits14") == 0 && o.n_widths == 3 &&
              o.widths[0] == 96 && o.widths[1] == 384 && o.widths[2] == 24 && !o.cls && o.patch &&
              o.pooled && o.rasa && !o.normalize && o.resolution == 448 &&
              o.crop == CROP_SQUARE && o.dtype == DTYPE_F16,
          "every key: %s", err);

    rc = oj("{\"widths\": 192, \"crop\": \"center\", \"dtype\": \"f32\"}", &o);
    CHECK(rc == OPTIONS_OK && o.n_widths == 1 && o.widths[0] == 192 && o.crop == CROP_CENTER,
          "single integer width: %s", err);

    rc = oj("  {\"widths\": [0, -3]}\n", &o);
    CHECK(rc == OPTIONS_OK && o.n_widths == 2 && o.widths[1] == -3,
          "widths are range-checked against the model, not here: %s", err);

    struct {
        const char *json;
        int rc;
        const char *msg;
    } bad[] = {
        {"{\"bogus\": 1}", OPTIONS_MALFORMED, "unknown option 'bogus'"},
        {"{\"Widths\": 1}", OPTIONS_MALFORMED, "unknown option 'Widths'"},
        {"{\"cls\": true, \"cls\": false}", OPTIONS_MALFORMED, "not valid JSON"},
        {"{\"model\": 3}", OPTIONS_MALFORMED, "'model' must be a string, got an integer"},
        {"{\"model\": null}", OPTIONS_MALFORMED, "'model' must be a string, got null"},
        {"{\"model\": \"\"}", OPTIONS_INVALID, "must not be empty"},
        {"{\"model\": \"a\\nb\"}", OPTIONS_INVALID, "control character"},
        {"{\"widths\": \"96\"}", OPTIONS_MALFORMED, "'widths' must be an integer or an array"},
        {"{\"widths\": 96.0}", OPTIONS_MALFORMED, "'widths' must be an integer or an array"},
        {"{\"widths\": [96, \"384\"]}", OPTIONS_MALFORMED, "a string at index 1"},
        {"{\"widths\": [[96]]}", OPTIONS_MALFORMED, "an array at index 0"},
        {"{\"widths\": []}", OPTIONS_INVALID, "empty array"},
        {"{\"widths\": [96, 96]}", OPTIONS_INVALID, "lists 96 twice"},
        {"{\"widths\": [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]}", OPTIONS_INVALID,
         "more than 16"},
        {"{\"widths\": 99999999999}", OPTIONS_INVALID, "invalid width 99999999999"},
        {"{\"cls\": 1}", OPTIONS_MALFORMED, "'cls' must be a boolean, got an integer"},
        {"{\"patch\": \"true\"}", OPTIONS_MALFORMED, "'patch' must be a boolean, got a string"},
        {"{\"pooled\": null}", OPTIONS_MALFORMED, "'pooled' must be a boolean"},
        {"{\"rasa\": {}}", OPTIONS_MALFORMED, "'rasa' must be a boolean, got an object"},
        {"{\"normalize\": []}", OPTIONS_MALFORMED, "'normalize' must be a boolean"},
        {"{\"resolution\": \"448\"}", OPTIONS_MALFORMED, "'resolution' must be an integer"},
        {"{\"resolution\": 448.5}", OPTIONS_MALFORMED, "'resolution' must be an integer"},
        {"{\"resolution\": -14}", OPTIONS_INVALID, "'resolution' is -14"},
        {"{\"resolution\": 100000}", OPTIONS_INVALID, "'resolution' is 100000"},
        {"{\"crop\": \"centre\"}", OPTIONS_MALFORMED, "'crop' must be \"center\" or \"square\""},
        {"{\"crop\": 1}", OPTIONS_MALFORMED, "'crop' must be a string"},
        {"{\"dtype\": \"bf16\"}", OPTIONS_MALFORMED, "'dtype' must be \"f32\" or \"f16\""},
        {"{\"dtype\": true}", OPTIONS_MALFORMED, "'dtype' must be a string"},
        {"{\"cls\": false}", OPTIONS_INVALID, "no output requested"},
        {"{\"rasa\": true}", OPTIONS_INVALID, "'rasa' cleans patch tokens"},
        {"[1, 2]", OPTIONS_MALFORMED, "must be a JSON object, got an array"},
        {"\"str\"", OPTIONS_MALFORMED, "not valid JSON"},
        {"{", OPTIONS_MALFORMED, "not valid JSON"},
        {"{} {}", OPTIONS_MALFORMED, "not valid JSON"},
        {"{\"model\": \"a\\u0000b\"}", OPTIONS_MALFORMED, "not valid JSON"},
        {"", OPTIONS_MALFORMED, "empty"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rc = oj(bad[i].json, &o);
        CHECK(rc == bad[i].rc && has(err, bad[i].msg),
              "bad json %zu '%s': rc %d (want %d), err '%s' (want '%s')", i, bad[i].json, rc,
              bad[i].rc, err, bad[i].msg);
    }

    char longname[300];
    snprintf(longname, sizeof longname, "{\"model\": \"%0200d\"}", 7);
    rc = oj(longname, &o);
    CHECK(rc == OPTIONS_INVALID && has(err, "over the 127"), "model name too long: %s", err);

    /* Hostile key text is bounded and printable in the message. */
    rc = oj("{\"\\u0001xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
            "xxxxxx\": 1}",
            &o);
    CHECK(rc == OPTIONS_MALFORMED && has(err, "unknown option '?xxx") && has(err, "...'") &&
              strlen(err) < 200,
          "hostile key: %s", err);

    /* A JSON body carrying options beside its images. */
    json_error_t je;
    json_t *body = json_loads("{\"images\": [\"Zm9v\"], \"widths\": [48], \"patch\": true}", 0,
                              &je);
    static const char *const skip[] = {"images", NULL};
    rc = options_from_json_value(body, skip, &o, err, sizeof err);
    CHECK(rc == OPTIONS_OK && o.n_widths == 1 && o.widths[0] == 48 && o.patch,
          "skip_keys: %s", err);
    rc = options_from_json_value(body, NULL, &o, err, sizeof err);
    CHECK(rc == OPTIONS_MALFORMED && has(err, "unknown option 'images'"), "no skip_keys: %s", err);
    json_decref(body);
    rc = options_from_json_value(NULL, NULL, &o, err, sizeof err);
    CHECK(rc == OPTIONS_MALFORMED, "NULL object");
}

static void test_options_query(void)
{
    struct feature_options o;
    int rc = oq("widths=96,384&patch=true&resolution=448&crop=square&dtype=f16", &o);
    CHECK(rc == OPTIONS_OK && o.n_widths == 2 && o.widths[0] == 96 && o.widths[1] == 384 &&
              o.patch && o.cls && o.resolution == 448 && o.crop == CROP_SQUARE &&
              o.dtype == DTYPE_F16,
          "issue example: %s", err);

    rc = oq("?model=my%2Dmodel+v2&widths=96%2C 384&widths=24&cls=0&pooled=TRUE&rasa=1"
            "&normalize=False&&",
            &o);
    CHECK(rc == OPTIONS_OK && strcmp(o.model, "my-model v2") == 0 && o.n_widths == 3 &&
              o.widths[0] == 96 && o.widths[1] == 384 && o.widths[2] == 24 && !o.cls &&
              o.pooled && o.rasa && !o.normalize,
          "percent-encoding, '+', repeated widths, boolean spellings: %s", err);

    rc = oq("%77idths=%31%39%32", &o);
    CHECK(rc == OPTIONS_OK && o.n_widths == 1 && o.widths[0] == 192, "encoded key: %s", err);

    rc = oq("", &o);
    CHECK(rc == OPTIONS_OK && o.cls && o.n_widths == 0, "empty query: defaults");
    rc = oq(NULL, &o);
    CHECK(rc == OPTIONS_OK && o.cls, "NULL query: defaults");
    rc = oq("resolution=+224", &o);
    CHECK(rc == OPTIONS_OK && o.resolution == 224, "explicit sign: %s", err);

    struct {
        const char *qs;
        int rc;
        const char *msg;
    } bad[] = {
        {"foo=1", OPTIONS_MALFORMED, "unknown query parameter 'foo'"},
        {"patch", OPTIONS_MALFORMED, "'patch' has no value"},
        {"patch=", OPTIONS_MALFORMED, "'patch' has no value"},
        {"patch=yes", OPTIONS_MALFORMED, "'patch' must be true, false, 1 or 0"},
        {"patch=true&patch=false", OPTIONS_MALFORMED, "'patch' is given twice"},
        {"model=a&model=b", OPTIONS_MALFORMED, "'model' is given twice"},
        {"widths=96,,384", OPTIONS_MALFORMED, "empty item"},
        {"widths=96,", OPTIONS_MALFORMED, "empty item"},
        {"widths=ninety", OPTIONS_MALFORMED, "'widths' must be an integer, got 'ninety'"},
        {"widths=9.5", OPTIONS_MALFORMED, "must be an integer"},
        {"widths=96,96", OPTIONS_INVALID, "lists 96 twice"},
        {"widths=96&widths=96", OPTIONS_INVALID, "lists 96 twice"},
        {"widths=99999999999999999999", OPTIONS_INVALID, "out of range"},
        {"widths=1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17", OPTIONS_INVALID, "more than 16"},
        {"resolution=abc", OPTIONS_MALFORMED, "'resolution' must be an integer"},
        {"resolution=-", OPTIONS_MALFORMED, "'resolution' must be an integer"},
        {"resolution=-14", OPTIONS_INVALID, "'resolution' is -14"},
        {"resolution=5000", OPTIONS_INVALID, "'resolution' is 5000"},
        {"crop=wide", OPTIONS_MALFORMED, "'crop' must be"},
        {"dtype=F16", OPTIONS_MALFORMED, "'dtype' must be"},
        {"model=a%0Ab", OPTIONS_INVALID, "control character"},
        {"model=a%00", OPTIONS_INVALID, "control character"},
        {"model=%zz", OPTIONS_MALFORMED, "percent-encoding in the query string at byte 6"},
        {"model=ab%4", OPTIONS_MALFORMED, "percent-encoding in the query string at byte 8"},
        {"a%=1", OPTIONS_MALFORMED, "percent-encoding in the query string at byte 1"},
        {"cls=false", OPTIONS_INVALID, "no output requested"},
        {"rasa=true", OPTIONS_INVALID, "'rasa' cleans patch tokens"},
        {"=1", OPTIONS_MALFORMED, "unknown query parameter ''"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rc = oq(bad[i].qs, &o);
        CHECK(rc == bad[i].rc && has(err, bad[i].msg),
              "bad query %zu '%s': rc %d (want %d), err '%s' (want '%s')", i, bad[i].qs, rc,
              bad[i].rc, err, bad[i].msg);
    }

    /* Decoded pairs (as libmicrohttpd hands them). */
    const char *keys[] = {"widths", "patch", "crop"};
    const char *vals[] = {"48,96", "1", "square"};
    rc = options_from_pairs(keys, vals, 3, &o, err, sizeof err);
    CHECK(rc == OPTIONS_OK && o.n_widths == 2 && o.patch && o.crop == CROP_SQUARE, "pairs: %s",
          err);
    const char *vals2[] = {"48", NULL, "square"};
    rc = options_from_pairs(keys, vals2, 3, &o, err, sizeof err);
    CHECK(rc == OPTIONS_MALFORMED && has(err, "'patch' has no value"), "pair without value: %s",
          err);
}

static void test_options_model(void)
{
    struct model_config cfg;
    model_config_defaults(&cfg, 384, 12);
    snprintf(cfg.name, sizeof cfg.name, "franca-vits14");
    struct feature_options o;
    int widths[OPTIONS_MAX_WIDTHS];

    options_defaults(&o);
    CHECK(options_check_model(&o, &cfg, err, sizeof err) == OPTIONS_OK, "defaults are valid");
    CHECK(options_effective_widths(&o, &cfg, widths) == 1 && widths[0] == 384,
          "default width is D");

    CHECK(oj("{\"widths\": [1, 100, 384], \"resolution\": 448}", &o) == OPTIONS_OK, "parse");
    CHECK(options_check_model(&o, &cfg, err, sizeof err) == OPTIONS_OK,
          "any width in 1..D and a multiple of the patch: %s", err);
    CHECK(options_effective_widths(&o, &cfg, widths) == 3 && widths[1] == 100, "given widths");

    struct {
        const char *json;
        const char *msg;
    } bad[] = {
        {"{\"widths\": 385}", "invalid width 385"},
        {"{\"widths\": [96, 0]}", "invalid width 0"},
        {"{\"widths\": -1}", "invalid width -1"},
        {"{\"resolution\": 450}", "not a multiple of the patch size 14 (nearest: 448 or 462)"},
        {"{\"resolution\": 10}", "out of range"},
        {"{\"resolution\": 1791}", "nearest: 1778 or 1792)"},
        {"{\"patch\": true, \"rasa\": true}", "no RASA layers"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = oj(bad[i].json, &o);
        CHECK(rc == OPTIONS_OK, "parse %zu: %s", i, err);
        err[0] = '\0';
        rc = options_check_model(&o, &cfg, err, sizeof err);
        CHECK(rc == OPTIONS_INVALID && has(err, bad[i].msg),
              "model check %zu '%s': rc %d, err '%s' (want '%s')", i, bad[i].json, rc, err,
              bad[i].msg);
    }
    oj("{\"widths\": 385}", &o);
    options_check_model(&o, &cfg, err, sizeof err);
    CHECK(has(err, "24, 48, 96, 192, 384") && has(err, "1 to 384") && has(err, "franca-vits14"),
          "the message lists the trained widths: %s", err);
    CHECK(route_status_options(OPTIONS_INVALID) == 422 &&
              route_status_options(OPTIONS_MALFORMED) == 400 &&
              route_status_options(OPTIONS_OK) == 200 && route_status_options(OPTIONS_NOMEM) == 500,
          "options statuses");

    /* The largest resolution and RASA on a model that has it. */
    cfg.rasa_layers = 2;
    oj("{\"patch\": true, \"rasa\": true, \"resolution\": 1792}", &o);
    CHECK(options_check_model(&o, &cfg, err, sizeof err) == OPTIONS_OK, "rasa model, 1792: %s",
          err);
    /* Another patch size that divides VIT_MAX_SIDE ... */
    cfg.patch_size = 16;
    oj("{\"resolution\": 1792}", &o);
    CHECK(options_check_model(&o, &cfg, err, sizeof err) == OPTIONS_OK, "1792 at patch 16");
    oj("{\"resolution\": 1790}", &o);
    CHECK(options_check_model(&o, &cfg, err, sizeof err) == OPTIONS_INVALID &&
              has(err, "nearest: 1776 or 1792"),
          "patch 16: %s", err);
    /* ... and one that does not divide it: the nearest multiple above is too big. */
    cfg.patch_size = 10;
    oj("{\"resolution\": 1791}", &o);
    CHECK(options_check_model(&o, &cfg, err, sizeof err) == OPTIONS_INVALID &&
              has(err, "(nearest: 1790)"),
          "patch 10: %s", err);
    oj("{\"resolution\": 5}", &o);
    CHECK(options_check_model(&o, &cfg, err, sizeof err) == OPTIONS_INVALID &&
              has(err, "from 10 to 1790"),
          "below one patch: %s", err);
}

/* layers and norm: both forms, both parsers, and the check against the depth. */
static void test_options_layers(void)
{
    struct model_config cfg;
    model_config_defaults(&cfg, 384, 12);
    snprintf(cfg.name, sizeof cfg.name, "franca-vits14");
    struct feature_options o;
    int l[OPTIONS_MAX_LAYERS];
    CHECK(oj("{}", &o) == OPTIONS_OK && o.n_layers == 0 && o.norm, "defaults: no layers, norm");
    CHECK(oj("{\"layers\": 4, \"norm\": false}", &o) == OPTIONS_OK && !o.norm &&
              options_check_model(&o, &cfg, err, sizeof err) == OPTIONS_OK &&
              options_effective_layers(&o, &cfg, l) == 4 && l[0] == 8 && l[3] == 11,
          "an integer n: the last n blocks, oldest first: %s", err);
    CHECK(oj("{\"layers\": [0, -1, 5], \"patch\": true}", &o) == OPTIONS_OK &&
              options_check_model(&o, &cfg, err, sizeof err) == OPTIONS_OK &&
              options_effective_layers(&o, &cfg, l) == 3 && l[0] == 0 && l[1] == 11 && l[2] == 5,
          "indices in the order given, negative from the last: %s", err);
    CHECK(oq("layers=-1,-4&norm=0", &o) == OPTIONS_OK && o.n_layers == 2 && !o.norm &&
              options_effective_layers(&o, &cfg, l) == 2 && l[0] == 11 && l[1] == 8,
          "query list: %s", err);
    CHECK(oq("layers=2", &o) == OPTIONS_OK && options_effective_layers(&o, &cfg, l) == 2 &&
              l[0] == 10 && l[1] == 11, "query integer: the last n: %s", err);
    CHECK(oq("layers=%5B3%5D", &o) == OPTIONS_OK && options_effective_layers(&o, &cfg, l) == 1 &&
              l[0] == 3, "query [i]: one index: %s", err);
    struct {
        const char *in;
        bool query;
        int rc;
        const char *msg;
    } bad[] = {
        {"{\"layers\": \"4\"}", false, OPTIONS_MALFORMED, "'layers' must be an integer or an array"},
        {"{\"layers\": [1.5]}", false, OPTIONS_MALFORMED, "a number with a fraction"},
        {"{\"layers\": 2.0}", false, OPTIONS_MALFORMED, "'layers' must be an integer"},
        {"{\"layers\": []}", false, OPTIONS_INVALID, "empty array"},
        {"{\"layers\": 0}", false, OPTIONS_INVALID, "last n blocks, 1 to 16"},
        {"{\"layers\": 17}", false, OPTIONS_INVALID, "last n blocks, 1 to 16"},
        {"{\"layers\": [1, 1]}", false, OPTIONS_INVALID, "lists 1 twice"},
        {"{\"layers\": [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}", false, OPTIONS_INVALID,
         "more than 16"},
        {"{\"norm\": 1}", false, OPTIONS_MALFORMED, "'norm' must be a boolean"},
        {"{\"layers\": 2, \"cls\": false, \"pooled\": true}", false, OPTIONS_INVALID,
         "set cls or patch"},
        {"layers=x", true, OPTIONS_MALFORMED, "'layers' must be an integer, got 'x'"},
        {"layers=1,a", true, OPTIONS_MALFORMED, "must be an integer"},
        {"layers=1,,2", true, OPTIONS_MALFORMED, "empty item"},
        {"layers=[1", true, OPTIONS_MALFORMED, "unmatched bracket"},
        {"layers=[]", true, OPTIONS_MALFORMED, "empty item"},
        {"layers=1&layers=2", true, OPTIONS_MALFORMED, "given twice"},
        {"layers=0", true, OPTIONS_INVALID, "last n blocks"},
        {"norm=maybe", true, OPTIONS_MALFORMED, "'norm' must be true, false"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        const int rc = bad[i].query ? oq(bad[i].in, &o) : oj(bad[i].in, &o);
        CHECK(rc == bad[i].rc && has(err, bad[i].msg), "bad layers %zu '%s': rc %d, err '%s'", i,
              bad[i].in, rc, err);
    }
    const char *range[][2] = {
        {"{\"layers\": [12]}", "block 12 is out of range: franca-vits14 has depth 12"},
        {"{\"layers\": [-13]}", "block -13 is out of range"},
        {"{\"layers\": 13}", "has depth 12 (blocks 0 to 11, or -12 to -1)"},
        {"{\"layers\": [11, -1]}", "11 and -1 are the same block"},
    };
    for (size_t i = 0; i < sizeof range / sizeof range[0]; i++) {
        const int parsed = oj(range[i][0], &o);
        err[0] = '\0';
        const int rc = parsed == OPTIONS_OK ? options_check_model(&o, &cfg, err, sizeof err) : parsed;
        CHECK(rc == OPTIONS_INVALID && has(err, range[i][1]), "layers vs depth %zu: rc %d, err '%s'",
              i, rc, err);
    }
}

/* The statuses of the registry's, the batcher's and the store's codes (the
 * parsers' are checked with their tests above). */
static void test_route_statuses(void)
{
    CHECK(route_status_registry(REGISTRY_NOT_FOUND) == 404 &&
              route_status_registry(REGISTRY_BUSY) == 409 &&
              route_status_registry(REGISTRY_LAST) == 409 &&
              route_status_registry(REGISTRY_INVALID) == 400 &&
              route_status_registry(REGISTRY_ERR) == 422,
          "registry statuses");
    CHECK(route_status_batch(BATCH_FULL) == 429 && route_status_batch(BATCH_TOO_LARGE) == 413 &&
              route_status_batch(BATCH_SHUTDOWN) == 503 &&
              route_status_batch(BATCH_CANCELLED) == 503 && route_status_batch(BATCH_ERR) == 500,
          "batcher statuses");
    CHECK(route_status_store(STORE_NOT_FOUND) == 404 && route_status_store(STORE_EXISTS) == 409 &&
              route_status_store(STORE_CONFLICT) == 409 &&
              route_status_store(STORE_INVALID) == 400 && route_status_store(STORE_ERR) == 500,
          "store statuses");
}

int main(void)
{
    test_base64_rfc4648();
    test_base64_alphabets_and_space();
    test_base64_hostile();
    test_base64_roundtrip_and_f32();
    test_datauri();
    test_multipart_boundary();
    test_multipart_valid();
    test_multipart_hostile();
    test_options_json();
    test_options_query();
    test_options_model();
    test_options_layers();
    test_route_statuses();
    return check_summary();
}
