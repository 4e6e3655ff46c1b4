/* Bearer authentication: see auth.h. */
#include "auth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ascii.h"
#include "errors.h"
#include "http.h"

bool auth_bearer_credential(const char *v, size_t len, const char **cred, size_t *cred_len)
{
    static const size_t scheme = 6; /* "bearer" */
    if (len <= scheme || !ascii_ieq(v, scheme, "bearer") || v[scheme] != ' ') return false;
    size_t start = scheme;
    while (start < len && v[start] == ' ') start++;
    size_t end = len;
    while (end > start && ascii_blank(v[end - 1])) end--;
    if (end == start) return false;
    *cred = v + start;
    *cred_len = end - start;
    return true;
}

bool auth_equal(const char *a, size_t la, const char *b, size_t lb)
{
    /* Walks the key's whole length whatever a holds: no early exit on the
     * first difference. Only the (public) length of a steers a branch. */
    unsigned char diff = la != lb;
    for (size_t i = 0; i < lb; i++)
        diff |= (unsigned char)((i < la ? (unsigned char)a[i] : 0) ^ (unsigned char)b[i]);
    return diff == 0;
}

bool auth_keys_match(const struct auth_keys *k, const char *cred, size_t cred_len)
{
    bool any = false;
    for (size_t i = 0; k && i < k->n; i++)
        any |= auth_equal(cred, cred_len, k->keys[i].text, k->keys[i].len);
    return any;
}

void auth_keys_clear(struct auth_keys *k)
{
    if (!k) return;
    for (size_t i = 0; i < k->n; i++) {
        /* The keys are secrets: wipe them before the memory is reused. */
        volatile char *p = k->keys[i].text;
        for (size_t j = 0; j < k->keys[i].len; j++) p[j] = 0;
        free(k->keys[i].text);
    }
    free(k->keys);
    k->keys = NULL;
    k->n = 0;
}

static int keys_add(struct auth_keys *k, const char *s, size_t n)
{
    struct auth_key *grown = realloc(k->keys, (k->n + 1) * sizeof *grown);
    if (!grown) return -1;
    k->keys = grown;
    char *copy = malloc(n + 1);
    if (!copy) return -1;
    memcpy(copy, s, n);
    copy[n] = '\0';
    k->keys[k->n++] = (struct auth_key){copy, n};
    return 0;
}

int auth_keys_single(const char *text, struct auth_keys *out)
{
    *out = (struct auth_keys){0};
    if (keys_add(out, text, strlen(text))) {
        auth_keys_clear(out);
        return -1;
    }
    return 0;
}

/* Why the key s[0..n) cannot be used, or NULL. */
static const char *key_problem(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= ' ' || (unsigned char)s[i] >= 0x7f)
            return "a key is printable ASCII without spaces";
    if (n < AUTH_MIN_KEY_LEN) return "a key must be at least 8 characters";
    return NULL;
}

int auth_keys_parse(const char *text, size_t len, struct auth_keys *out, char *err, size_t errlen)
{
    *out = (struct auth_keys){0};
    size_t line = 0;
    for (size_t pos = 0; pos < len;) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        const size_t end = nl ? (size_t)(nl - text) : len;
        size_t a = pos, b = end;
        line++;
        pos = end + 1;
        while (a < b && (ascii_blank(text[a]) || text[a] == '\r')) a++;
        while (b > a && (ascii_blank(text[b - 1]) || text[b - 1] == '\r')) b--;
        if (a == b || text[a] == '#') continue;
        const char *why = key_problem(text + a, b - a);
        if (why) {
            auth_keys_clear(out);
            return set_err(err, errlen, "line %zu: %s", line, why);
        }
        if (keys_add(out, text + a, b - a)) {
            auth_keys_clear(out);
            return set_err(err, errlen, "out of memory");
        }
    }
    if (!out->n)
        return set_err(err, errlen, "no API key in the file (one per line; blank lines and "
                                    "'#' comments are skipped)");
    return 0;
}

#define KEY_FILE_MAX ((size_t)1 << 20)

/* The whole file (at most KEY_FILE_MAX bytes) in a malloc'd buffer; NULL
 * with errno set. */
static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = malloc(KEY_FILE_MAX + 1);
    const size_t n = buf ? fread(buf, 1, KEY_FILE_MAX + 1, f) : 0;
    const int e = !buf ? ENOMEM : ferror(f) ? EIO : n > KEY_FILE_MAX ? EFBIG : 0;
    fclose(f);
    if (e) {
        free(buf);
        errno = e;
        return NULL;
    }
    *len = n;
    return buf;
}

int auth_keys_load(const char *path, struct auth_keys *out, char *err, size_t errlen)
{
    *out = (struct auth_keys){0};
    size_t len = 0;
    char *text = read_all(path, &len);
    if (!text) return set_err(err, errlen, "%s: %s", path, strerror(errno));
    char why[ERR_LEN];
    const int rc = auth_keys_parse(text, len, out, why, sizeof why);
    memset(text, 0, len);
    free(text);
    if (rc) return set_err(err, errlen, "%s: %s", path, why);
    return 0;
}

bool auth_check(struct http_request *req, const struct auth_keys *keys, enum auth_realm realm)
{
    const bool admin = realm == AUTH_ADMIN;
    size_t len;
    const char *v = http_header_n(req, "Authorization", &len);
    const char *cred;
    size_t cred_len;
    if (!v || !auth_bearer_credential(v, len, &cred, &cred_len)) {
        http_add_header(req, "WWW-Authenticate", "Bearer");
        http_reply_error(req, 401, NULL, admin ? "admin routes need 'Authorization: Bearer TOKEN'"
                                               : "the /v1 routes need 'Authorization: Bearer KEY'");
        return false;
    }
    if (!auth_keys_match(keys, cred, cred_len)) {
        http_reply_error(req, 403, NULL, admin ? "wrong admin token" : "wrong API key");
        return false;
    }
    return true;
}
