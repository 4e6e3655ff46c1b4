/* Base64 (RFC 4648) for request bodies and responses.
 *
 * Decoding accepts the standard alphabet ("+/") and the URL-safe one ("-_"),
 * but not both in one input; padding is optional, and when present it must be
 * complete and only at the end. ASCII whitespace (space, \t, \r, \n) is ignored
 * anywhere. Every other character is rejected, with its byte offset in the
 * message. Trailing bits of the last quantum need not be zero (as Python's
 * decoder). The decoded size is checked against a limit before anything is
 * allocated, so a route can answer 413 without holding the decoded bytes.
 *
 * Encoding writes the standard alphabet with padding (what JSON clients such as
 * the OpenAI SDK's encoding_format "base64" expect). */
#ifndef FRANCA_SERVER_BASE64_H
#define FRANCA_SERVER_BASE64_H

#include <stddef.h>
#include <stdint.h>

/* Return codes of base64_decode. */
#define BASE64_OK 0
#define BASE64_INVALID (-1)   /* not base64: a client mistake (400) */
#define BASE64_TOO_LARGE (-2) /* decoded size over max_out (413) */
#define BASE64_NOMEM (-3)     /* allocation failed (a server error, 500) */

/* Decodes len bytes of in (need not be NUL-terminated). On success *out is a
 * malloc'd buffer of *out_len bytes (never NULL, even for empty input; the
 * caller frees it). max_out bounds the decoded size; 0 means no bound. On
 * failure *out is NULL, *out_len 0, and err says why. */
int base64_decode(const char *in, size_t len, uint8_t **out, size_t *out_len, size_t max_out,
                  char *err, size_t errlen);

/* Exact decoded size of a valid input, or BASE64_* < 0 after the same checks
 * as base64_decode (nothing is allocated). */
int base64_decoded_size(const char *in, size_t len, size_t *size, char *err, size_t errlen);

/* Length of the encoding of n bytes, without the terminating NUL (4 * ceil(n/3)).
 * SIZE_MAX when that does not fit in a size_t. */
size_t base64_encoded_len(size_t n);

/* Writes the padded standard encoding of in[0..n) and a NUL into out, which
 * holds at least base64_encoded_len(n) + 1 bytes. Returns the length written
 * (without the NUL). */
size_t base64_encode_to(const uint8_t *in, size_t n, char *out);

/* malloc'd, NUL-terminated encoding of in[0..n); *out_len (if not NULL) gets its
 * length. NULL when out of memory. */
char *base64_encode(const uint8_t *in, size_t n, size_t *out_len);

/* The bytes of v[0..n) as little-endian float32, base64-encoded (malloc'd,
 * NUL-terminated; NULL when out of memory): the OpenAI encoding_format "base64". */
char *base64_encode_f32le(const float *v, size_t n, size_t *out_len);

#endif
