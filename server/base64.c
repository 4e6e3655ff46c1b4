#include "base64.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"

static const char enc_std[64] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Value of an alphabet character (0..63), or -1. '+' '/' and '-' '_' both map
 * to 62 and 63; which alphabet they belong to is checked separately. */
static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
}

static bool b64_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* "'x'" for a printable character, "0x.." otherwise. */
static void describe_char(unsigned char c, char buf[8])
{
    static const char hex[] = "0123456789abcdef";
    if (c > 0x20 && c < 0x7f) {
        buf[0] = '\'';
        buf[1] = (char)c;
        buf[2] = '\'';
        buf[3] = '\0';
    } else {
        buf[0] = '0';
        buf[1] = 'x';
        buf[2] = hex[c >> 4];
        buf[3] = hex[c & 15];
        buf[4] = '\0';
    }
}

int base64_decoded_size(const char *in, size_t len, size_t *size, char *err, size_t errlen)
{
    *size = 0;
    if (!in && len) {
        set_err(err, errlen, "base64: no input");
        return BASE64_INVALID;
    }
    int alphabet = 0; /* 0: not yet known, 1: standard, 2: URL-safe */
    size_t sig = 0, pad = 0, pad_at = 0;
    for (size_t i = 0; i < len; i++) {
        const unsigned char c = (unsigned char)in[i];
        if (b64_space(c)) continue;
        if (c == '=') {
            if (pad == 0) pad_at = i;
            pad++;
            continue;
        }
        char d[8];
        describe_char(c, d);
        if (b64_value(c) < 0) {
            set_err(err, errlen, "invalid base64 character %s at byte %zu", d, i);
            return BASE64_INVALID;
        }
        if (pad) {
            set_err(err, errlen,
                    "base64 data character %s at byte %zu after padding '=' at byte %zu", d, i,
                    pad_at);
            return BASE64_INVALID;
        }
        if (c == '+' || c == '/' || c == '-' || c == '_') {
            const int a = (c == '+' || c == '/') ? 1 : 2;
            if (alphabet && alphabet != a) {
                set_err(err, errlen,
                        "base64 mixes the standard ('+', '/') and URL-safe ('-', '_') alphabets "
                        "(character %s at byte %zu)", d, i);
                return BASE64_INVALID;
            }
            alphabet = a;
        }
        sig++;
    }
    const size_t rem = sig % 4;
    if (rem == 1) {
        set_err(err, errlen,
                "base64 is truncated: %zu data characters leave a final group of one character",
                sig);
        return BASE64_INVALID;
    }
    if (pad) {
        if (rem == 0 || pad > 2 || (rem + pad) != 4) {
            set_err(err, errlen, "base64 padding at byte %zu does not match the data length "
                    "(%zu data characters, %zu '=')", pad_at, sig, pad);
            return BASE64_INVALID;
        }
    }
    *size = sig / 4 * 3 + (rem == 2 ? 1 : rem == 3 ? 2 : 0);
    return BASE64_OK;
}

int base64_decode(const char *in, size_t len, uint8_t **out, size_t *out_len, size_t max_out,
                  char *err, size_t errlen)
{
    *out = NULL;
    *out_len = 0;
    size_t size;
    const int rc = base64_decoded_size(in, len, &size, err, errlen);
    if (rc != BASE64_OK) return rc;
    if (max_out && size > max_out) {
        set_err(err, errlen, "decoded data is %zu bytes, over the limit of %zu bytes", size,
                max_out);
        return BASE64_TOO_LARGE;
    }
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) {
        set_err(err, errlen, "out of memory decoding %zu bytes of base64", size);
        return BASE64_NOMEM;
    }
    /* The input is known to be valid: only alphabet characters, whitespace and
     * trailing padding remain. */
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        const int v = b64_value((unsigned char)in[i]);
        if (v < 0) continue;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o < size) buf[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1u;
        }
    }
    *out = buf;
    *out_len = o;
    return BASE64_OK;
}

size_t base64_encoded_len(size_t n)
{
    const size_t groups = n / 3 + (n % 3 != 0);
    if (groups > SIZE_MAX / 4) return SIZE_MAX;
    return groups * 4;
}

size_t base64_encode_to(const uint8_t *in, size_t n, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        const uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8) | in[i + 2];
        out[o++] = enc_std[(v >> 18) & 63];
        out[o++] = enc_std[(v >> 12) & 63];
        out[o++] = enc_std[(v >> 6) & 63];
        out[o++] = enc_std[v & 63];
    }
    if (n - i == 1) {
        const uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = enc_std[(v >> 18) & 63];
        out[o++] = enc_std[(v >> 12) & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (n - i == 2) {
        const uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8);
        out[o++] = enc_std[(v >> 18) & 63];
        out[o++] = enc_std[(v >> 12) & 63];
        out[o++] = enc_std[(v >> 6) & 63];
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

char *base64_encode(const uint8_t *in, size_t n, size_t *out_len)
{
    const size_t el = base64_encoded_len(n);
    if (el == SIZE_MAX) return NULL;
    char *s = malloc(el + 1);
    if (!s) return NULL;
    const size_t w = base64_encode_to(in, n, s);
    if (out_len) *out_len = w;
    return s;
}

char *base64_encode_f32le(const float *v, size_t n, size_t *out_len)
{
    if (n > SIZE_MAX / 4) return NULL;
    const size_t bytes = n * 4;
    const size_t el = base64_encoded_len(bytes);
    if (el == SIZE_MAX) return NULL;
    char *s = malloc(el + 1);
    if (!s) return NULL;
    /* Chunks of 3 floats * 256 = 3072 bytes: a multiple of 3, so padding can
     * only appear after the last chunk. */
    enum { CHUNK_FLOATS = 768 };
    uint8_t tmp[CHUNK_FLOATS * 4];
    size_t o = 0;
    for (size_t i = 0; i < n; i += CHUNK_FLOATS) {
        const size_t m = (n - i < CHUNK_FLOATS) ? n - i : CHUNK_FLOATS;
        for (size_t j = 0; j < m; j++) {
            uint32_t u;
            memcpy(&u, &v[i + j], 4);
            tmp[4 * j] = (uint8_t)u;
            tmp[4 * j + 1] = (uint8_t)(u >> 8);
            tmp[4 * j + 2] = (uint8_t)(u >> 16);
            tmp[4 * j + 3] = (uint8_t)(u >> 24);
        }
        o += base64_encode_to(tmp, m * 4, s + o);
    }
    s[o] = '\0';
    if (out_len) *out_len = o;
    return s;
}
