/* One image input string of the JSON routes (POST /v1/embeddings "input",
 * POST /v1/features JSON images): either a data URI
 *   data:image/jpeg;base64,<data>   (also image/jpg, image/png,
 *                                    application/octet-stream; parameters
 *                                    before ";base64" are tolerated)
 * or bare base64 (standard or URL-safe alphabet, padding optional, whitespace
 * ignored; see base64.h). Surrounding whitespace is ignored.
 *
 * URLs (http://, https://, ftp://, file:, any "scheme://") are recognised and
 * refused with their own status: the server fetches nothing. */
#ifndef FRANCA_SERVER_DATAURI_H
#define FRANCA_SERVER_DATAURI_H

#include <stddef.h>
#include <stdint.h>

enum datauri_status {
    DATAURI_OK = 0,
    DATAURI_MALFORMED,        /* not base64, a data URI without ";base64,", empty data: 400 */
    DATAURI_URL,              /* a URL: 422 "the server does not fetch URLs" */
    DATAURI_UNSUPPORTED_TYPE, /* data URI media type not an accepted image type: 415 */
    DATAURI_TOO_LARGE,        /* decoded bytes over the limit: 413 */
    DATAURI_NOMEM,            /* allocation failed: 500 */
};

/* What the input declared. The image decoder sniffs the bytes anyway; this is
 * for messages and logs. */
enum datauri_media {
    DATAURI_MEDIA_NONE = 0, /* bare base64 */
    DATAURI_MEDIA_JPEG,
    DATAURI_MEDIA_PNG,
    DATAURI_MEDIA_OCTET,    /* application/octet-stream */
};

/* Decodes s[0..len) (need not be NUL-terminated). On DATAURI_OK, *out is a
 * malloc'd buffer of *out_len (>= 1) bytes the caller frees, and *media (if not
 * NULL) says what the input declared. max_bytes bounds the decoded size, checked
 * before allocating (0: no bound). On any other status *out is NULL and err says
 * why in one line. */
enum datauri_status datauri_decode(const char *s, size_t len, size_t max_bytes, uint8_t **out,
                                   size_t *out_len, enum datauri_media *media, char *err,
                                   size_t errlen);

#endif
