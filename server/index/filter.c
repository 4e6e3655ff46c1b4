/* Metadata filters; see filter.h for the language. */
#include "index/filter.h"

#include <stdlib.h>
#include <string.h>

#include "errors.h"

enum filter_op { OP_EQ, OP_NE, OP_GT, OP_GTE, OP_LT, OP_LTE, OP_IN, OP_NIN };

static const struct {
    const char *name;
    enum filter_op op;
} op_names[] = {
    {"$eq", OP_EQ}, {"$ne", OP_NE}, {"$gt", OP_GT},  {"$gte", OP_GTE},
    {"$lt", OP_LT}, {"$lte", OP_LTE}, {"$in", OP_IN}, {"$nin", OP_NIN},
};

struct clause {
    char *key;
    enum filter_op op;
    json_t *value; /* a scalar, or for $in / $nin an array of scalars (a reference) */
};

struct filter {
    int n;
    struct clause c[FILTER_MAX_CLAUSES];
};

static bool is_scalar(const json_t *v)
{
    return json_is_string(v) || json_is_number(v) || json_is_boolean(v) || json_is_null(v);
}

static int add_clause(struct filter *f, const char *key, enum filter_op op, json_t *value,
                      char *err, size_t errlen)
{
    if (f->n == FILTER_MAX_CLAUSES)
        return set_err(err, errlen, "filter: more than %d conditions", FILTER_MAX_CLAUSES);
    struct clause *c = &f->c[f->n];
    c->key = strdup(key);
    if (!c->key) return set_err(err, errlen, "filter: out of memory");
    c->op = op;
    c->value = json_incref(value);
    f->n++;
    return 0;
}

static int compile_op(struct filter *f, const char *key, const char *opname, json_t *v,
                      char *err, size_t errlen)
{
    char shown[64];
    for (size_t i = 0; i < sizeof op_names / sizeof op_names[0]; i++) {
        if (strcmp(op_names[i].name, opname)) continue;
        const enum filter_op op = op_names[i].op;
        printable_copy(key, strlen(key), shown, sizeof shown);
        switch (op) {
        case OP_EQ:
        case OP_NE:
            if (!is_scalar(v))
                return set_err(err, errlen, "filter: '%s' %s needs a string, number, bool or null",
                               shown, opname);
            break;
        case OP_GT:
        case OP_GTE:
        case OP_LT:
        case OP_LTE:
            if (!json_is_number(v) && !json_is_string(v))
                return set_err(err, errlen, "filter: '%s' %s needs a number or a string", shown,
                               opname);
            break;
        case OP_IN:
        case OP_NIN:
            if (!json_is_array(v) || json_array_size(v) > FILTER_MAX_IN)
                return set_err(err, errlen, "filter: '%s' %s needs an array of at most %d values",
                               shown, opname, FILTER_MAX_IN);
            for (size_t k = 0; k < json_array_size(v); k++)
                if (!is_scalar(json_array_get(v, k)))
                    return set_err(err, errlen, "filter: '%s' %s: element %zu is not a scalar",
                                   shown, opname, k);
            break;
        }
        return add_clause(f, key, op, v, err, errlen);
    }
    printable_copy(opname, strlen(opname), shown, sizeof shown);
    return set_err(err, errlen,
                   "filter: unknown operator '%s' (use $eq $ne $gt $gte $lt $lte $in $nin)", shown);
}

int filter_compile(const json_t *spec, struct filter **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!json_is_object(spec))
        return set_err(err, errlen, "filter: must be an object of metadata keys");
    if (json_object_size(spec) == 0) return 0;
    struct filter *f = calloc(1, sizeof *f);
    if (!f) return set_err(err, errlen, "filter: out of memory");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)spec, key, v) {
        int rc = 0;
        if (json_is_object(v)) {
            if (json_object_size(v) == 0) {
                char shown[64];
                printable_copy(key, strlen(key), shown, sizeof shown);
                rc = set_err(err, errlen, "filter: '%s' has an empty operator object", shown);
            }
            const char *opname;
            json_t *ov;
            json_object_foreach(v, opname, ov) {
                if (rc) break;
                rc = compile_op(f, key, opname, ov, err, errlen);
            }
        } else if (is_scalar(v)) {
            rc = add_clause(f, key, OP_EQ, v, err, errlen);
        } else {
            char shown[64];
            printable_copy(key, strlen(key), shown, sizeof shown);
            rc = set_err(err, errlen, "filter: '%s' must be a scalar or an operator object", shown);
        }
        if (rc) {
            filter_free(f);
            return -1;
        }
    }
    *out = f;
    return 0;
}

static double num(const json_t *v) { return json_number_value(v); }

/* Equality of two scalars; numbers by value. */
static bool scalar_equal(const json_t *a, const json_t *b)
{
    if (json_is_number(a) && json_is_number(b)) return num(a) == num(b);
    return json_equal((json_t *)a, (json_t *)b);
}

/* Ordering of two values of one comparable type: -1, 0, 1, or 2 when they
 * cannot be ordered (different types, NaN). */
static int order(const json_t *a, const json_t *b)
{
    if (json_is_number(a) && json_is_number(b)) {
        const double x = num(a), y = num(b);
        return x < y ? -1 : x > y ? 1 : x == y ? 0 : 2;
    }
    if (json_is_string(a) && json_is_string(b)) {
        const size_t la = json_string_length(a), lb = json_string_length(b);
        const int c = memcmp(json_string_value(a), json_string_value(b), la < lb ? la : lb);
        if (c) return c < 0 ? -1 : 1;
        return la < lb ? -1 : la > lb ? 1 : 0;
    }
    return 2;
}

static bool in_array(const json_t *arr, const json_t *v)
{
    for (size_t i = 0; i < json_array_size(arr); i++)
        if (scalar_equal(json_array_get(arr, i), v)) return true;
    return false;
}

bool filter_match(const struct filter *f, const json_t *metadata)
{
    if (!f) return true;
    if (!json_is_object(metadata)) return false;
    for (int i = 0; i < f->n; i++) {
        const struct clause *c = &f->c[i];
        const json_t *v = json_object_get(metadata, c->key);
        if (!v) return false;
        int o;
        switch (c->op) {
        case OP_EQ: if (!scalar_equal(v, c->value)) return false; break;
        case OP_NE: if (scalar_equal(v, c->value)) return false; break;
        case OP_IN: if (!in_array(c->value, v)) return false; break;
        case OP_NIN: if (in_array(c->value, v)) return false; break;
        case OP_GT: if ((o = order(v, c->value)) == 2 || o <= 0) return false; break;
        case OP_GTE: if ((o = order(v, c->value)) == 2 || o < 0) return false; break;
        case OP_LT: if ((o = order(v, c->value)) == 2 || o >= 0) return false; break;
        case OP_LTE: if ((o = order(v, c->value)) == 2 || o > 0) return false; break;
        }
    }
    return true;
}

void filter_free(struct filter *f)
{
    if (!f) return;
    for (int i = 0; i < f->n; i++) {
        free(f->c[i].key);
        json_decref(f->c[i].value);
    }
    free(f);
}
