/* Bearer authentication shared by the admin routes (--admin-token-file) and
 * the data routes (--api-key-file).
 *
 * A request is authorised when its Authorization header is the scheme
 * "Bearer" in any case (RFC 7235: schemes are case-insensitive), one or more
 * spaces, and a credential equal to one of the keys. The whole header value
 * counts, with the length the HTTP layer reports (http_header_n), not up to
 * its first NUL. Caveat: libmicrohttpd 0.9.75 (Debian 12) itself measures
 * header values with strlen, so the bytes after a NUL never reach the server
 * and "Bearer KEY\0junk" arrives as "Bearer KEY"; a NUL can therefore only
 * shorten the credential, which never turns a wrong key into a right one.
 * Trailing spaces and tabs are dropped (optional whitespace around a field
 * value is not part of it, RFC 9110 5.5). Credentials are compared in time
 * that depends on the keys' lengths only, never on where they differ. */
#ifndef FRANCA_AUTH_H
#define FRANCA_AUTH_H

#include <stdbool.h>
#include <stddef.h>

struct http_request;

#define AUTH_MIN_KEY_LEN 8

struct auth_key {
    char *text;
    size_t len;
};

/* A set of accepted keys (never empty once made). */
struct auth_keys {
    struct auth_key *keys;
    size_t n;
};

/* The credential of an Authorization value v[0..len): *cred and *cred_len
 * point into v. Returns false when the value is not "Bearer" (any case), at
 * least one space, and a non-empty credential. */
bool auth_bearer_credential(const char *v, size_t len, const char **cred, size_t *cred_len);

/* a[0..la) == b[0..lb), in time that depends on lb (the key's length) only
 * (a is what the client sent; b the secret). */
bool auth_equal(const char *a, size_t la, const char *b, size_t lb);

/* True when cred matches one of the keys; every key is compared, whatever
 * matched, so the time does not tell which one or whether one did. */
bool auth_keys_match(const struct auth_keys *k, const char *cred, size_t cred_len);

/* Parses an API key file's text[0..len): one key per line; blank lines and
 * lines starting with '#' (after leading spaces) are skipped; spaces, tabs
 * and CR around a key are dropped. A key must be at least AUTH_MIN_KEY_LEN
 * printable ASCII characters without spaces (it travels in a header). No key
 * at all is an error too: a file meant to lock the routes must not open
 * them. 0, or -1 with a message naming the line in err. */
int auth_keys_parse(const char *text, size_t len, struct auth_keys *out, char *err,
                    size_t errlen);

/* Reads and parses the file at path (messages start with the path). */
int auth_keys_load(const char *path, struct auth_keys *out, char *err, size_t errlen);

/* A set holding the one key text (copied). 0, or -1 when out of memory. */
int auth_keys_single(const char *text, struct auth_keys *out);

void auth_keys_clear(struct auth_keys *k);

/* Whose keys a check uses: only the error messages differ. */
enum auth_realm { AUTH_ADMIN, AUTH_API };

/* Checks req against keys; on failure replies (401 with WWW-Authenticate:
 * Bearer when the header is missing or malformed, 403 when the credential is
 * wrong, both as the usual JSON error) and returns false. */
bool auth_check(struct http_request *req, const struct auth_keys *keys, enum auth_realm realm);

#endif
