/* Metadata filters: the language of index/filter.h, case by case. */
#include <string.h>

#include "check.h"
#include "errors.h"
#include "index/filter.h"

/* Compiles filter text and matches it against metadata text ("" = no metadata). */
static int run(const char *filter, const char *meta)
{
    json_t *spec = json_loads(filter, 0, NULL), *m = meta[0] ? json_loads(meta, 0, NULL) : NULL;
    struct filter *f;
    char err[ERR_LEN];
    int r = -1;
    if (spec && filter_compile(spec, &f, err, sizeof err) == 0) {
        r = filter_match(f, m);
        filter_free(f);
    }
    json_decref(spec);
    json_decref(m);
    return r;
}

static void refused(const char *filter, const char *needle)
{
    json_t *spec = json_loads(filter, JSON_DECODE_ANY, NULL);
    struct filter *f = NULL;
    char err[ERR_LEN] = "";
    const int rc = filter_compile(spec, &f, err, sizeof err);
    CHECK(rc == -1 && f == NULL && strstr(err, needle), "%s refused naming '%s': %s", filter,
          needle, err);
    json_decref(spec);
}

int main(void)
{
    const char *m = "{\"color\": \"red\", \"year\": 2004, \"score\": 0.5, \"ok\": true,"
                    " \"none\": null, \"name\": \"beta\"}";
    CHECK(run("{}", m) == 1, "empty filter matches");
    CHECK(run("{}", "") == 1, "empty filter matches an item without metadata");
    CHECK(run("{\"color\": \"red\"}", m) == 1, "equality");
    CHECK(run("{\"color\": \"blue\"}", m) == 0, "equality miss");
    CHECK(run("{\"color\": \"red\"}", "") == 0, "no metadata never matches");
    CHECK(run("{\"missing\": {\"$ne\": 1}}", m) == 0, "a missing key never matches, even $ne");
    CHECK(run("{\"year\": 2004.0}", m) == 1, "numbers compare by value (2004 == 2004.0)");
    CHECK(run("{\"year\": \"2004\"}", m) == 0, "a string is not a number");
    CHECK(run("{\"ok\": true, \"none\": null}", m) == 1, "bool and null equality");
    CHECK(run("{\"year\": {\"$gte\": 2000, \"$lt\": 2010}}", m) == 1, "range inside");
    CHECK(run("{\"year\": {\"$gt\": 2004}}", m) == 0, "$gt is strict");
    CHECK(run("{\"year\": {\"$gte\": 2004}}", m) == 1, "$gte is inclusive");
    CHECK(run("{\"year\": {\"$lte\": 2004, \"$gt\": 2003.5}}", m) == 1, "two bounds");
    CHECK(run("{\"score\": {\"$lt\": 0.5}}", m) == 0, "$lt is strict");
    CHECK(run("{\"name\": {\"$gt\": \"alpha\", \"$lt\": \"gamma\"}}", m) == 1, "string range");
    CHECK(run("{\"name\": {\"$gt\": 3}}", m) == 0, "a string and a number do not order");
    CHECK(run("{\"color\": {\"$in\": [\"blue\", \"red\"]}}", m) == 1, "$in");
    CHECK(run("{\"color\": {\"$nin\": [\"blue\", \"red\"]}}", m) == 0, "$nin");
    CHECK(run("{\"year\": {\"$in\": [1, 2004.0]}}", m) == 1, "$in numbers by value");
    CHECK(run("{\"color\": {\"$ne\": \"blue\"}}", m) == 1, "$ne");
    CHECK(run("{\"color\": \"red\", \"year\": 1999}", m) == 0, "keys are ANDed");
    CHECK(run("{\"color\": {\"$eq\": \"red\"}}", "[1,2]") == 0, "metadata that is not an object");

    refused("[1]", "must be an object");
    refused("\"x\"", "must be an object");
    refused("{\"a\": {\"$regex\": \"x\"}}", "unknown operator");
    refused("{\"a\": {\"$gt\": true}}", "number or a string");
    refused("{\"a\": {\"$in\": 3}}", "array");
    refused("{\"a\": {\"$in\": [[1]]}}", "not a scalar");
    refused("{\"a\": [1, 2]}", "scalar or an operator object");
    refused("{\"a\": {}}", "empty operator object");
    refused("{\"a\": {\"$eq\": {\"b\": 1}}}", "string, number, bool or null");
    char big[4096] = "{";
    for (int i = 0; i < 70; i++)
        snprintf(big + strlen(big), sizeof big - strlen(big), "%s\"k%d\": 1", i ? "," : "", i);
    strcat(big, "}");
    refused(big, "more than 64 conditions");
    return check_summary();
}
