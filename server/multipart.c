#include "multipart.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "ascii.h"
#include "errors.h"

/* RFC 2046 bchars: DIGIT / ALPHA / "'()+_,-./:=?" / SPACE (not last). */
static bool bchar(char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
    return c != '\0' && strchr("'()+_,-./:=? ", c) != NULL;
}

static int check_boundary(const char *b, size_t n, char *err, size_t errlen)
{
    if (n == 0) return set_err(err, errlen, "multipart boundary is empty");
    if (n > MULTIPART_BOUNDARY_MAX)
        return set_err(err, errlen, "multipart boundary is %zu characters, over the %d allowed",
                       n, MULTIPART_BOUNDARY_MAX);
    for (size_t i = 0; i < n; i++) {
        if (!bchar(b[i])) {
            const unsigned char c = (unsigned char)b[i];
            return set_err(err, errlen, "multipart boundary has an invalid character 0x%02x at %zu",
                           c, i);
        }
    }
    if (b[n - 1] == ' ') return set_err(err, errlen, "multipart boundary ends with a space");
    return 0;
}

/* Reads a parameter value at s[*i] (quoted string or token) into a malloc'd,
 * NUL-terminated string; *i moves past it. Token values end at ';' and have
 * surrounding blanks trimmed. Returns NULL with *rc set on failure. */
static char *read_value(const char *s, size_t n, size_t *i, int *rc, char *err, size_t errlen)
{
    size_t p = *i;
    if (p < n && s[p] == '"') {
        p++;
        size_t q = p, m = 0;
        bool closed = false;
        for (; q < n; q++) {
            if (s[q] == '\\' && q + 1 < n && (s[q + 1] == '"' || s[q + 1] == '\\')) {
                q++;
            } else if (s[q] == '"') {
                closed = true;
                break;
            }
            m++;
        }
        if (!closed) {
            *rc = set_err(err, errlen, "unterminated quoted string in header parameter");
            return NULL;
        }
        char *v = malloc(m + 1);
        if (!v) {
            *rc = MULTIPART_NOMEM;
            set_err(err, errlen, "out of memory");
            return NULL;
        }
        size_t o = 0;
        for (size_t r = p; r < q; r++) {
            if (s[r] == '\\' && r + 1 < q && (s[r + 1] == '"' || s[r + 1] == '\\')) r++;
            v[o++] = s[r];
        }
        v[o] = '\0';
        *i = q + 1;
        return v;
    }
    size_t q = p;
    while (q < n && s[q] != ';') q++;
    size_t e = q;
    while (e > p && ascii_blank(s[e - 1])) e--;
    char *v = malloc(e - p + 1);
    if (!v) {
        *rc = MULTIPART_NOMEM;
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    memcpy(v, s + p, e - p);
    v[e - p] = '\0';
    *i = q;
    return v;
}

int multipart_boundary_from_content_type(const char *ct, char *boundary, size_t cap, char *err,
                                         size_t errlen)
{
    if (boundary && cap) boundary[0] = '\0';
    if (!ct) return set_err(err, errlen, "no Content-Type: expected multipart/form-data");
    const size_t n = strlen(ct);
    size_t i = 0;
    while (i < n && ascii_blank(ct[i])) i++;
    size_t te = i;
    while (te < n && ct[te] != ';') te++;
    size_t tb = i, tt = te;
    while (tt > tb && ascii_blank(ct[tt - 1])) tt--;
    if (!ascii_ieq(ct + tb, tt - tb, "multipart/form-data")) {
        char t[64];
        printable_copy(ct + tb, tt - tb, t, sizeof t);
        return set_err(err, errlen, "Content-Type '%s' is not multipart/form-data", t);
    }
    i = te;
    bool found = false;
    while (i < n) {
        /* at ';' */
        i++;
        while (i < n && ascii_blank(ct[i])) i++;
        size_t nb = i;
        while (i < n && ct[i] != '=' && ct[i] != ';') i++;
        size_t ne = i;
        while (ne > nb && ascii_blank(ct[ne - 1])) ne--;
        if (i >= n || ct[i] == ';') continue; /* a parameter without a value: ignored */
        i++; /* '=' */
        while (i < n && ascii_blank(ct[i])) i++;
        int rc = MULTIPART_MALFORMED;
        char *v = read_value(ct, n, &i, &rc, err, errlen);
        if (!v) return rc;
        while (i < n && ct[i] != ';') {
            if (!ascii_blank(ct[i])) {
                free(v);
                return set_err(err, errlen, "Content-Type has characters after a quoted value");
            }
            i++;
        }
        if (ascii_ieq(ct + nb, ne - nb, "boundary")) {
            if (found) {
                free(v);
                return set_err(err, errlen, "Content-Type has two boundary parameters");
            }
            found = true;
            const size_t bl = strlen(v);
            if (check_boundary(v, bl, err, errlen) != 0) {
                free(v);
                return MULTIPART_MALFORMED;
            }
            if (!boundary || bl + 1 > cap) {
                free(v);
                return set_err(err, errlen, "multipart boundary does not fit the buffer");
            }
            memcpy(boundary, v, bl + 1);
        }
        free(v);
    }
    if (!found) return set_err(err, errlen, "multipart/form-data Content-Type has no boundary");
    return 0;
}

void multipart_free(struct multipart_part *parts, size_t n)
{
    if (!parts) return;
    for (size_t i = 0; i < n; i++) {
        free(parts[i].name);
        free(parts[i].filename);
        free(parts[i].content_type);
    }
    free(parts);
}

const struct multipart_part *multipart_find(const struct multipart_part *parts, size_t n,
                                            const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(parts[i].name, name) == 0) return &parts[i];
    return NULL;
}

enum delim_kind { DELIM_NONE, DELIM_OPEN, DELIM_CLOSE, DELIM_TRUNCATED };

/* Classifies what follows a delimiter match that ends at body[p]: padding and a
 * line break (open), "--" then padding and a line break or the end (close),
 * the end of the body before either is complete (truncated), anything else (not
 * a delimiter). *after gets the offset after the line break of an open one. */
static enum delim_kind delim_suffix(const uint8_t *body, size_t len, size_t p, size_t *after)
{
    bool close = false;
    if (p < len && body[p] == '-') {
        if (p + 1 >= len) return DELIM_TRUNCATED;
        if (body[p + 1] != '-') return DELIM_NONE;
        close = true;
        p += 2;
    }
    while (p < len && (body[p] == ' ' || body[p] == '\t')) p++;
    if (p >= len) return close ? DELIM_CLOSE : DELIM_TRUNCATED;
    if (body[p] == '\n') {
        *after = p + 1;
        return close ? DELIM_CLOSE : DELIM_OPEN;
    }
    if (body[p] == '\r') {
        if (p + 1 >= len) return close ? DELIM_CLOSE : DELIM_TRUNCATED;
        if (body[p + 1] == '\n') {
            *after = p + 2;
            return close ? DELIM_CLOSE : DELIM_OPEN;
        }
    }
    return DELIM_NONE;
}

/* Finds the next delimiter line at or after from: "--boundary" at the start of
 * a line (or at offset 0 when at_start is allowed), followed by a valid suffix.
 * *at gets the offset of the "--". */
static enum delim_kind find_delim(const uint8_t *body, size_t len, size_t from, const char *delim,
                                  size_t dlen, bool at_start, size_t *at, size_t *after)
{
    while (from < len) {
        const uint8_t *q = memmem(body + from, len - from, delim, dlen);
        if (!q) return DELIM_NONE;
        const size_t p = (size_t)(q - body);
        if ((p == 0 && at_start) || (p > 0 && body[p - 1] == '\n')) {
            const enum delim_kind k = delim_suffix(body, len, p + dlen, after);
            if (k != DELIM_NONE) {
                *at = p;
                return k;
            }
        }
        from = p + 1;
    }
    return DELIM_NONE;
}

struct part_builder {
    struct multipart_part *parts;
    size_t n, cap;
};

/* Parses the Content-Disposition value v[0..n) into p->name and p->filename. */
static int parse_disposition(const char *v, size_t n, struct multipart_part *p, size_t idx,
                             char *err, size_t errlen)
{
    size_t i = 0;
    while (i < n && v[i] != ';') i++;
    size_t te = i;
    while (te > 0 && ascii_blank(v[te - 1])) te--;
    if (!ascii_ieq(v, te, "form-data")) {
        char t[64];
        printable_copy(v, te, t, sizeof t);
        return set_err(err, errlen, "part %zu: Content-Disposition '%s' is not form-data", idx, t);
    }
    while (i < n) {
        i++; /* ';' */
        while (i < n && ascii_blank(v[i])) i++;
        if (i >= n) break;
        size_t nb = i;
        while (i < n && v[i] != '=' && v[i] != ';') i++;
        size_t ne = i;
        while (ne > nb && ascii_blank(v[ne - 1])) ne--;
        if (ne == nb && (i >= n || v[i] == ';')) continue; /* empty parameter (";;") */
        if (i >= n || v[i] == ';') {
            char t[64];
            printable_copy(v + nb, ne - nb, t, sizeof t);
            return set_err(err, errlen, "part %zu: Content-Disposition parameter '%s' has no value",
                           idx, t);
        }
        i++; /* '=' */
        while (i < n && ascii_blank(v[i])) i++;
        int rc = MULTIPART_MALFORMED;
        char sub[256];
        char *val = read_value(v, n, &i, &rc, sub, sizeof sub);
        if (!val) {
            set_err(err, errlen, "part %zu: %s", idx, sub);
            return rc;
        }
        while (i < n && v[i] != ';') {
            if (!ascii_blank(v[i])) {
                free(val);
                return set_err(err, errlen,
                               "part %zu: Content-Disposition has characters after a quoted value",
                               idx);
            }
            i++;
        }
        char **slot = NULL;
        if (ascii_ieq(v + nb, ne - nb, "name")) slot = &p->name;
        else if (ascii_ieq(v + nb, ne - nb, "filename")) slot = &p->filename;
        if (!slot) {
            free(val);
            continue;
        }
        if (*slot) {
            free(val);
            char t[64];
            printable_copy(v + nb, ne - nb, t, sizeof t);
            return set_err(err, errlen, "part %zu: Content-Disposition has two '%s' parameters",
                           idx, t);
        }
        *slot = val;
    }
    if (!p->name)
        return set_err(err, errlen, "part %zu: Content-Disposition has no name parameter", idx);
    return 0;
}

/* Parses the header block of part idx starting at body[hs]; *ds gets the
 * offset of its data. */
static int parse_headers(const uint8_t *body, size_t len, size_t hs, struct multipart_part *p,
                         size_t idx, size_t *ds, char *err, size_t errlen)
{
    const size_t limit = (len - hs > MULTIPART_MAX_HEADER_BYTES) ? hs + MULTIPART_MAX_HEADER_BYTES
                                                                  : len;
    bool have_cd = false, have_ct = false;
    size_t cur = hs;
    for (;;) {
        const uint8_t *nl = memchr(body + cur, '\n', limit - cur);
        if (!nl) {
            if (limit == len)
                return set_err(err, errlen, "truncated multipart body (in the headers of part %zu)",
                               idx);
            return set_err(err, errlen, "part %zu: header block is over %d bytes", idx,
                           MULTIPART_MAX_HEADER_BYTES);
        }
        const size_t le_nl = (size_t)(nl - body);
        size_t le = le_nl;
        if (le > cur && body[le - 1] == '\r') le--;
        const char *line = (const char *)body + cur;
        const size_t ll = le - cur;
        if (ll == 0) {
            *ds = le_nl + 1;
            break;
        }
        if (memchr(line, '\0', ll))
            return set_err(err, errlen, "part %zu: header line contains a NUL byte", idx);
        /* A continuation line belongs to this header: refuse before using it. */
        if (ascii_blank(line[0]) || (le_nl + 1 < limit && ascii_blank((char)body[le_nl + 1])))
            return set_err(err, errlen, "part %zu: folded (continued) header lines are not "
                           "supported", idx);
        const char *colon = memchr(line, ':', ll);
        if (!colon) {
            char t[64];
            printable_copy(line, ll, t, sizeof t);
            return set_err(err, errlen, "part %zu: header line without ':': '%s'", idx, t);
        }
        const size_t nlen = (size_t)(colon - line);
        size_t vb = nlen + 1, ve = ll;
        while (vb < ve && ascii_blank(line[vb])) vb++;
        while (ve > vb && ascii_blank(line[ve - 1])) ve--;
        const char *val = line + vb;
        const size_t vl = ve - vb;
        if (nlen == 0 || ascii_blank(line[nlen - 1]))
            return set_err(err, errlen, "part %zu: malformed header name", idx);
        if (ascii_ieq(line, nlen, "content-disposition")) {
            if (have_cd)
                return set_err(err, errlen, "part %zu: two Content-Disposition headers", idx);
            have_cd = true;
            const int rc = parse_disposition(val, vl, p, idx, err, errlen);
            if (rc != 0) return rc;
        } else if (ascii_ieq(line, nlen, "content-type")) {
            if (have_ct) return set_err(err, errlen, "part %zu: two Content-Type headers", idx);
            have_ct = true;
            if (vl) {
                p->content_type = malloc(vl + 1);
                if (!p->content_type) {
                    set_err(err, errlen, "out of memory");
                    return MULTIPART_NOMEM;
                }
                memcpy(p->content_type, val, vl);
                p->content_type[vl] = '\0';
            }
        } else if (ascii_ieq(line, nlen, "content-transfer-encoding")) {
            if (!ascii_ieq(val, vl, "7bit") && !ascii_ieq(val, vl, "8bit") && !ascii_ieq(val, vl, "binary")) {
                char t[64];
                printable_copy(val, vl, t, sizeof t);
                return set_err(err, errlen, "part %zu: Content-Transfer-Encoding '%s' is not "
                               "supported (send binary data)", idx, t);
            }
        }
        cur = le_nl + 1;
    }
    if (!have_cd)
        return set_err(err, errlen, "part %zu has no Content-Disposition header", idx);
    return 0;
}

int multipart_parse(const uint8_t *body, size_t len, const char *boundary,
                    struct multipart_part **parts, size_t *n, size_t max_parts, char *err,
                    size_t errlen)
{
    *parts = NULL;
    *n = 0;
    if (!boundary) return set_err(err, errlen, "no multipart boundary");
    const size_t blen = strnlen(boundary, MULTIPART_BOUNDARY_MAX + 1);
    if (check_boundary(boundary, blen, err, errlen) != 0) return MULTIPART_MALFORMED;
    if (!body || len == 0) return set_err(err, errlen, "empty multipart body");

    char delim[MULTIPART_BOUNDARY_MAX + 3];
    delim[0] = '-';
    delim[1] = '-';
    memcpy(delim + 2, boundary, blen);
    const size_t dlen = blen + 2;

    struct part_builder pb = {0};
    int rc = MULTIPART_MALFORMED;
    size_t at = 0, after = 0;
    enum delim_kind k = find_delim(body, len, 0, delim, dlen, true, &at, &after);
    if (k == DELIM_NONE) {
        set_err(err, errlen, "multipart body does not contain the boundary '--%s'", boundary);
        goto fail;
    }
    while (k == DELIM_OPEN) {
        if (max_parts && pb.n >= max_parts) {
            set_err(err, errlen, "multipart body has more than %zu parts", max_parts);
            rc = MULTIPART_TOO_MANY;
            goto fail;
        }
        if (pb.n == pb.cap) {
            const size_t nc = pb.cap ? pb.cap * 2 : 4;
            struct multipart_part *np = realloc(pb.parts, nc * sizeof *np);
            if (!np) {
                set_err(err, errlen, "out of memory");
                rc = MULTIPART_NOMEM;
                goto fail;
            }
            pb.parts = np;
            pb.cap = nc;
        }
        struct multipart_part *p = &pb.parts[pb.n++];
        memset(p, 0, sizeof *p);
        size_t ds = 0;
        const int hr = parse_headers(body, len, after, p, pb.n, &ds, err, errlen);
        if (hr != 0) {
            rc = hr;
            goto fail;
        }
        size_t next_after = 0;
        k = find_delim(body, len, ds, delim, dlen, false, &at, &next_after);
        if (k == DELIM_NONE || k == DELIM_TRUNCATED) {
            set_err(err, errlen, "truncated multipart body (part %zu has no closing boundary)",
                    pb.n);
            goto fail;
        }
        /* The line break before the delimiter belongs to it. */
        size_t de = at;
        if (de > ds) {
            de--; /* '\n' */
            if (de > ds && body[de - 1] == '\r') de--;
        }
        p->data = body + ds;
        p->len = de - ds;
        after = next_after;
    }
    if (k == DELIM_TRUNCATED) {
        set_err(err, errlen, "truncated multipart body (it ends after a boundary)");
        goto fail;
    }
    *parts = pb.parts;
    *n = pb.n;
    if (pb.n == 0) {
        free(pb.parts);
        *parts = NULL;
    }
    return MULTIPART_OK;
fail:
    multipart_free(pb.parts, pb.n);
    return rc;
}
