/* server/auth.c: the bearer scheme, credential comparison with lengths (NUL
 * bytes included), matching against a key set, and key files. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
#include "check.h"
#include "errors.h"

static char err[ERR_LEN];

/* The credential of v[0..len) as a string ("" when refused). */
static const char *cred_of(const char *v, size_t len)
{
    static char out[256];
    const char *c;
    size_t n;
    if (!auth_bearer_credential(v, len, &c, &n)) return "";
    snprintf(out, sizeof out, "%.*s", (int)n, c);
    return out;
}

static void test_scheme(void)
{
    /* RFC 7235: the scheme is case-insensitive; one or more spaces follow. */
    static const char *const good[] = {"Bearer abc", "bearer abc", "BEARER abc", "bEaReR abc",
                                       "Bearer   abc", "Bearer abc  ", "Bearer abc\t"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        CHECK(strcmp(cred_of(good[i], strlen(good[i])), "abc") == 0, "'%s' -> '%s'", good[i],
              cred_of(good[i], strlen(good[i])));
    static const char *const bad[] = {"", "Bearer", "Bearer ", "Bearer    ", "Bearerabc",
                                      "Bearer\tabc", "Basic abc", "Bearer: abc", " Bearer abc",
                                      "Bear abc", "Bearers abc"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(!*cred_of(bad[i], strlen(bad[i])), "'%s' refused", bad[i]);

    /* The length given counts, not the first NUL: the credential keeps the
     * bytes after a NUL, so it cannot equal the key. */
    static const char nul[] = "Bearer key-0123456789\0junk";
    const char *c;
    size_t n;
    CHECK(auth_bearer_credential(nul, sizeof nul - 1, &c, &n) && n == 19, "NUL kept: %zu bytes",
          n);
}

static void test_equal(void)
{
    CHECK(auth_equal("key-0123", 8, "key-0123", 8), "equal");
    CHECK(!auth_equal("key-0124", 8, "key-0123", 8), "last byte differs");
    CHECK(!auth_equal("xey-0123", 8, "key-0123", 8), "first byte differs");
    CHECK(!auth_equal("key-012", 7, "key-0123", 8), "a prefix of the key");
    CHECK(!auth_equal("key-01234", 9, "key-0123", 8), "the key plus a byte");
    CHECK(!auth_equal("", 0, "key-0123", 8), "empty");
    /* The regression of issue 13: a C-string compare stops at the NUL. */
    CHECK(!auth_equal("key-0123\0junk", 13, "key-0123", 8), "the key, NUL, junk");
    CHECK(!auth_equal("key-0123\0", 9, "key-0123", 8), "the key and a NUL");
    CHECK(!auth_equal("key\0-0123", 9, "key", 3), "NUL inside");
}

static void test_match(void)
{
    struct auth_keys k;
    static const char text[] = "# API keys\n\n   first-key-1  \r\n\t# indented comment\nsecond-key-2\n"
                               "second-key-2\nthird-key-333";
    CHECK(auth_keys_parse(text, sizeof text - 1, &k, err, sizeof err) == 0, "parse: %s", err);
    CHECK(k.n == 4, "4 keys (one twice), got %zu", k.n);
    CHECK(auth_keys_match(&k, "first-key-1", 11), "first key");
    CHECK(auth_keys_match(&k, "second-key-2", 12), "second key");
    CHECK(auth_keys_match(&k, "third-key-333", 13), "last key without a newline");
    CHECK(!auth_keys_match(&k, "first-key-", 10), "prefix of a key");
    CHECK(!auth_keys_match(&k, "first-key-1\0", 12), "key with a NUL appended");
    CHECK(!auth_keys_match(&k, "# API keys", 10), "a comment is no key");
    CHECK(!auth_keys_match(&k, "", 0), "empty credential");
    auth_keys_clear(&k);
    CHECK(k.n == 0 && !k.keys, "cleared");
    CHECK(!auth_keys_match(&k, "first-key-1", 11), "no keys match nothing");

    CHECK(auth_keys_single("admin-token-1", &k) == 0 && k.n == 1, "single");
    CHECK(auth_keys_match(&k, "admin-token-1", 13) && !auth_keys_match(&k, "admin-token-", 12),
          "single key matches itself only");
    auth_keys_clear(&k);
}

static void parse_fails(const char *text, const char *want)
{
    struct auth_keys k;
    const int rc = auth_keys_parse(text, strlen(text), &k, err, sizeof err);
    CHECK(rc == -1 && strstr(err, want) && k.n == 0, "'%s': rc %d, '%s' (want '%s')", text, rc,
          err, want);
    auth_keys_clear(&k);
}

static void test_parse_errors(void)
{
    parse_fails("", "no API key");
    parse_fails("\n\n  \n", "no API key");
    parse_fails("# only a comment\n", "no API key");
    parse_fails("good-key-1\nshort\n", "line 2: a key must be at least 8 characters");
    parse_fails("good-key-1\n\nwith space inside\n", "line 3: a key is printable ASCII");
    parse_fails("bad\x01key-123\n", "line 1: a key is printable ASCII");
    parse_fails("caf\xc3\xa9-key-123\n", "line 1: a key is printable ASCII");
    struct auth_keys k;
    static const char nul[] = "good-key-1\nkey-with\0nul-1\n";
    CHECK(auth_keys_parse(nul, sizeof nul - 1, &k, err, sizeof err) == -1 &&
              strstr(err, "line 2"), "a NUL in a key file: %s", err);
}

static void test_load(void)
{
    char path[] = "/tmp/test_auth_XXXXXX";
    const int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    if (fd < 0) return;
    static const char text[] = "# keys\nloaded-key-1\n";
    CHECK(write(fd, text, sizeof text - 1) == (ssize_t)(sizeof text - 1), "write");
    close(fd);
    struct auth_keys k;
    CHECK(auth_keys_load(path, &k, err, sizeof err) == 0 && k.n == 1 &&
              auth_keys_match(&k, "loaded-key-1", 12), "load: %s", err);
    auth_keys_clear(&k);
    unlink(path);
    CHECK(auth_keys_load(path, &k, err, sizeof err) == -1 && strstr(err, path) &&
              strstr(err, "No such file"), "missing file: %s", err);
}

int main(void)
{
    test_scheme();
    test_equal();
    test_match();
    test_parse_errors();
    test_load();
    return check_summary();
}
