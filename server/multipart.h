/* multipart/form-data (RFC 7578 over RFC 2046) over a complete in-memory body.
 *
 * Parts point into the body (zero copy): the body must outlive them. Names,
 * filenames and content types are small NUL-terminated copies.
 *
 * Accepted: CRLF line breaks, and bare LF as a tolerance; a preamble before the
 * first delimiter and an epilogue after the close delimiter (both ignored);
 * transport padding (spaces, tabs) after a delimiter; header names in any case;
 * Content-Disposition parameters quoted (with \" and \\ escapes) or not.
 * A line that starts with the delimiter but goes on with other characters is
 * data, not a delimiter, so binary data may contain partial boundary strings.
 *
 * Refused: a body without the close delimiter ("truncated multipart body"), a
 * header line without ':', folded (continued) header lines, a header block over
 * MULTIPART_MAX_HEADER_BYTES, a part without a Content-Disposition of type
 * form-data with a name, a Content-Transfer-Encoding other than 7bit, 8bit or
 * binary, more parts than allowed. */
#ifndef FRANCA_SERVER_MULTIPART_H
#define FRANCA_SERVER_MULTIPART_H

#include <stddef.h>
#include <stdint.h>

#define MULTIPART_BOUNDARY_MAX 70        /* RFC 2046 */
#define MULTIPART_MAX_HEADER_BYTES 8192  /* per part, the blank line included */

/* Return codes. */
#define MULTIPART_OK 0
#define MULTIPART_MALFORMED (-1) /* 400 */
#define MULTIPART_TOO_MANY (-2)  /* more than max_parts parts: 413 */
#define MULTIPART_NOMEM (-3)     /* 500 */

struct multipart_part {
    char *name;               /* the Content-Disposition name (never NULL) */
    char *filename;           /* the filename parameter, or NULL */
    char *content_type;       /* the Content-Type value, trimmed, or NULL */
    const uint8_t *data;      /* into the body */
    size_t len;
};

/* Extracts the boundary of a "multipart/form-data; boundary=..." Content-Type
 * (type and parameter names in any case, the value quoted or not, other
 * parameters ignored). boundary gets a NUL-terminated copy (cap >= 71 always
 * suffices). Returns 0, or MULTIPART_MALFORMED when ct is not multipart/form-data,
 * has no boundary, or the boundary is not 1..70 RFC 2046 characters. */
int multipart_boundary_from_content_type(const char *ct, char *boundary, size_t cap, char *err,
                                         size_t errlen);

/* Parses body[0..len) with the given boundary (without the leading "--").
 * On MULTIPART_OK, *parts is a malloc'd array of *n parts (NULL when *n == 0)
 * to release with multipart_free. max_parts bounds the number of parts (0: no
 * bound). On failure *parts is NULL, *n is 0 and err says why. */
int multipart_parse(const uint8_t *body, size_t len, const char *boundary,
                    struct multipart_part **parts, size_t *n, size_t max_parts, char *err,
                    size_t errlen);

void multipart_free(struct multipart_part *parts, size_t n);

/* The first part named name, or NULL. */
const struct multipart_part *multipart_find(const struct multipart_part *parts, size_t n,
                                            const char *name);

#endif
