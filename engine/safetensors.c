/* safetensors reader (validating, mmap-based) and writer (atomic). */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "errors.h"

/* ---------------------------------------------------------------- dtypes -- */

size_t st_dtype_size(enum st_dtype dt)
{
    switch (dt) {
    case ST_F32: return 4;
    case ST_BF16: return 2;
    case ST_F16: return 2;
    }
    return 0;
}

const char *st_dtype_name(enum st_dtype dt)
{
    switch (dt) {
    case ST_F32: return "F32";
    case ST_BF16: return "BF16";
    case ST_F16: return "F16";
    }
    return "?";
}

int st_dtype_parse(const char *name, enum st_dtype *out)
{
    static const char *const names[] = {"f32", "bf16", "f16"}; /* indexed by enum st_dtype */
    for (int i = 0; i < 3; i++)
        if (!strcmp(name, names[i])) return *out = (enum st_dtype)i, 0;
    return -1;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float st_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

float st_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu;
    uint32_t m = h & 0x3ffu;
    if (e == 0) {
        float v = (float)m * 0x1p-24f; /* zero or subnormal, exact */
        return bits_f32(f32_bits(v) | sign);
    }
    if (e == 31)
        return bits_f32(sign | 0x7f800000u | (m << 13));
    return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

uint16_t st_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep sign and payload top, force quiet */
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

uint16_t st_f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) /* NaN */
        return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) /* >= 65520 (incl. inf) rounds to inf */
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u) { /* below 2^-14: f16 subnormal or zero */
        if (a <= 0x33000000u) /* <= 2^-25: rounds to (signed) zero */
            return sign;
        uint32_t e = a >> 23;
        uint32_t m = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e; /* 14..24 */
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u)))
            q++;
        return (uint16_t)(sign | q);
    }
    uint32_t h = (a >> 13) - (112u << 10);
    uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
        h++;
    return (uint16_t)(sign | h);
}

/* ---------------------------------------------------------------- reader -- */

/* Copies s for an error message: at most 80 characters, control characters
 * replaced, so a hostile name cannot break the one-line message. */
static const char *clean(const char *s, char out[96])
{
    size_t i = 0;
    for (; s[i] && i < 80; i++) {
        unsigned char c = (unsigned char)s[i];
        out[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (s[i]) {
        memcpy(out + i, "...", 3);
        i += 3;
    }
    out[i] = '\0';
    return out;
}

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void free_contents(struct st_file *st)
{
    if (st->tensors) {
        for (size_t i = 0; i < st->n_tensors; i++)
            free(st->tensors[i].name);
        free(st->tensors);
    }
    if (st->metadata) {
        for (size_t i = 0; i < st->n_metadata; i++) {
            free(st->metadata[i].key);
            free(st->metadata[i].value);
        }
        free(st->metadata);
    }
    st->tensors = NULL;
    st->metadata = NULL;
    st->n_tensors = st->n_metadata = 0;
}

struct range { uint64_t begin, end; size_t idx; };

static int cmp_range(const void *a, const void *b)
{
    const struct range *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

static int parse_metadata(json_t *md, const char *label, struct st_file *st, char *err, size_t errlen)
{
    if (json_is_null(md))
        return 0;
    if (!json_is_object(md))
        return set_err(err, errlen, "%s: __metadata__ is not a JSON object", label);
    size_t n = json_object_size(md);
    if (n == 0)
        return 0;
    st->metadata = calloc(n, sizeof *st->metadata);
    if (!st->metadata)
        return set_err(err, errlen, "%s: out of memory reading __metadata__", label);
    const char *k;
    json_t *v;
    char cb[96];
    json_object_foreach(md, k, v) {
        if (!json_is_string(v))
            return set_err(err, errlen, "%s: __metadata__ value for key '%s' is not a string",
                           label, clean(k, cb));
        struct st_metadata_entry *e = &st->metadata[st->n_metadata];
        e->key = strdup(k);
        e->value = strndup(json_string_value(v), json_string_length(v));
        st->n_metadata++;
        if (!e->key || !e->value)
            return set_err(err, errlen, "%s: out of memory reading __metadata__", label);
    }
    return 0;
}

static int parse_u64(json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int parse_tensor(const char *name, json_t *v, const char *label, uint64_t data_len,
                        struct st_tensor *t, struct range *r, char *err, size_t errlen)
{
    char cb[96];
    if (name[0] == '\0')
        return set_err(err, errlen, "%s: header has a tensor with an empty name", label);
    for (const char *p = name; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return set_err(err, errlen, "%s: tensor name '%s' contains a control character",
                           label, clean(name, cb));
    if (!json_is_object(v))
        return set_err(err, errlen, "%s: header entry for tensor '%s' is not a JSON object",
                       label, clean(name, cb));
    json_t *jd = json_object_get(v, "dtype");
    json_t *js = json_object_get(v, "shape");
    json_t *jo = json_object_get(v, "data_offsets");
    if (!jd)
        return set_err(err, errlen, "%s: tensor '%s' has no 'dtype'", label, clean(name, cb));
    if (!js)
        return set_err(err, errlen, "%s: tensor '%s' has no 'shape'", label, clean(name, cb));
    if (!jo)
        return set_err(err, errlen, "%s: tensor '%s' has no 'data_offsets'", label, clean(name, cb));

    if (!json_is_string(jd))
        return set_err(err, errlen, "%s: tensor '%s': 'dtype' is not a string", label, clean(name, cb));
    const char *ds = json_string_value(jd);
    if (strcmp(ds, "F32") == 0)
        t->dtype = ST_F32;
    else if (strcmp(ds, "BF16") == 0)
        t->dtype = ST_BF16;
    else if (strcmp(ds, "F16") == 0)
        t->dtype = ST_F16;
    else {
        char db[96];
        return set_err(err, errlen, "%s: tensor '%s' has unsupported dtype '%s' (supported: F32, BF16, F16)",
                       label, clean(name, cb), clean(ds, db));
    }

    if (!json_is_array(js))
        return set_err(err, errlen, "%s: tensor '%s': 'shape' is not an array", label, clean(name, cb));
    size_t nd = json_array_size(js);
    if (nd > ST_MAX_DIMS)
        return set_err(err, errlen, "%s: tensor '%s' has %zu dimensions (at most %d supported)",
                       label, clean(name, cb), nd, ST_MAX_DIMS);
    uint64_t numel = 1;
    bool overflow = false;
    for (size_t i = 0; i < nd; i++) {
        uint64_t d;
        if (parse_u64(json_array_get(js, i), &d) || d > (uint64_t)INT64_MAX)
            return set_err(err, errlen, "%s: tensor '%s': shape[%zu] is not a non-negative integer",
                           label, clean(name, cb), i);
        t->shape[i] = (int64_t)d;
        if (__builtin_mul_overflow(numel, d, &numel))
            overflow = true;
    }
    t->ndim = (int)nd;
    uint64_t nbytes;
    if (overflow || __builtin_mul_overflow(numel, (uint64_t)st_dtype_size(t->dtype), &nbytes))
        return set_err(err, errlen, "%s: tensor '%s': shape product overflows", label, clean(name, cb));

    uint64_t b, e;
    if (!json_is_array(jo) || json_array_size(jo) != 2 ||
        parse_u64(json_array_get(jo, 0), &b) || parse_u64(json_array_get(jo, 1), &e))
        return set_err(err, errlen, "%s: tensor '%s': 'data_offsets' must be two non-negative integers",
                       label, clean(name, cb));
    if (b > e)
        return set_err(err, errlen, "%s: tensor '%s': data_offsets begin %llu > end %llu",
                       label, clean(name, cb), (unsigned long long)b, (unsigned long long)e);
    if (e > data_len)
        return set_err(err, errlen, "%s: tensor '%s': data_offsets [%llu, %llu] run past the end of the "
                       "data section (%llu bytes; file truncated?)", label, clean(name, cb),
                       (unsigned long long)b, (unsigned long long)e, (unsigned long long)data_len);
    if (e - b != nbytes)
        return set_err(err, errlen, "%s: tensor '%s': data_offsets span %llu bytes but %s shape needs %llu",
                       label, clean(name, cb), (unsigned long long)(e - b), st_dtype_name(t->dtype),
                       (unsigned long long)nbytes);
    t->nbytes = (size_t)nbytes;
    r->begin = b;
    r->end = e;
    return 0;
}

static int parse_header(const uint8_t *buf, size_t len, const char *label, struct st_file *st,
                        char *err, size_t errlen)
{
    char cb[96];
    if (len == 0)
        return set_err(err, errlen, "%s: empty file, not a safetensors file", label);
    if (len < 8)
        return set_err(err, errlen, "%s: file is %zu bytes, too short for the 8-byte safetensors header length",
                       label, len);
    uint64_t hlen = le64(buf);
    if (hlen > (uint64_t)(len - 8))
        return set_err(err, errlen, "%s: header length %llu exceeds the file size (%zu bytes): "
                       "truncated or not a safetensors file", label, (unsigned long long)hlen, len);
    if (hlen > ST_MAX_HEADER_BYTES)
        return set_err(err, errlen, "%s: header length %llu exceeds the %u-byte limit", label,
                       (unsigned long long)hlen, ST_MAX_HEADER_BYTES);
    if (hlen < 2)
        return set_err(err, errlen, "%s: header length %llu is too small for a JSON header", label,
                       (unsigned long long)hlen);
    const uint8_t *data = buf + 8 + hlen;
    uint64_t data_len = (uint64_t)(len - 8 - hlen);

    json_error_t jerr;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        if (json_error_code(&jerr) == json_error_duplicate_key)
            return set_err(err, errlen, "%s: header has a duplicate name: %s", label, clean(jerr.text, cb));
        return set_err(err, errlen, "%s: header is not valid JSON: %s (line %d, column %d)", label,
                       clean(jerr.text, cb), jerr.line, jerr.column);
    }
    int rc = 0;
    struct range *ranges = NULL;
    if (!json_is_object(root)) {
        rc = set_err(err, errlen, "%s: header is not a JSON object", label);
        goto out;
    }
    json_t *md = json_object_get(root, "__metadata__");
    size_t nt = json_object_size(root) - (md ? 1 : 0);
    if (md && parse_metadata(md, label, st, err, errlen)) {
        rc = -1;
        goto out;
    }
    if (nt > 0) {
        st->tensors = calloc(nt, sizeof *st->tensors);
        ranges = calloc(nt, sizeof *ranges);
        if (!st->tensors || !ranges) {
            rc = set_err(err, errlen, "%s: out of memory for %zu tensor entries", label, nt);
            goto out;
        }
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0)
            continue;
        if (st->n_tensors >= nt) /* cannot happen; keeps the index provably in range */
            break;
        struct st_tensor *t = &st->tensors[st->n_tensors];
        struct range *r = &ranges[st->n_tensors];
        if (parse_tensor(key, val, label, data_len, t, r, err, errlen)) {
            rc = -1;
            goto out;
        }
        t->name = strdup(key);
        st->n_tensors++;
        if (!t->name) {
            rc = set_err(err, errlen, "%s: out of memory", label);
            goto out;
        }
        t->data = data + r->begin;
        r->idx = st->n_tensors - 1;
    }
    /* No two non-empty byte ranges may overlap. */
    if (st->n_tensors > 1) {
        qsort(ranges, st->n_tensors, sizeof *ranges, cmp_range);
        const struct range *prev = NULL;
        for (size_t i = 0; i < st->n_tensors; i++) {
            const struct range *r = &ranges[i];
            if (r->begin == r->end)
                continue;
            if (prev && r->begin < prev->end) {
                char cb2[96];
                rc = set_err(err, errlen, "%s: tensors '%s' and '%s' have overlapping data_offsets", label,
                             clean(st->tensors[prev->idx].name, cb), clean(st->tensors[r->idx].name, cb2));
                goto out;
            }
            prev = r;
        }
    }
out:
    free(ranges);
    json_decref(root);
    return rc;
}

int st_parse_labeled(const uint8_t *buf, size_t len, const char *label, struct st_file *st,
                     char *err, size_t errlen)
{
    memset(st, 0, sizeof *st);
    if (!label)
        label = "safetensors";
    if (!buf && len)
        return set_err(err, errlen, "%s: no buffer", label);
    if (parse_header(buf, len, label, st, err, errlen)) {
        free_contents(st);
        memset(st, 0, sizeof *st);
        return -1;
    }
    st->map = buf;
    st->map_len = len;
    st->mapped = 0;
    return 0;
}

int st_parse(const uint8_t *buf, size_t len, struct st_file *st, char *err, size_t errlen)
{
    return st_parse_labeled(buf, len, "safetensors", st, err, errlen);
}

int st_open(const char *path, struct st_file *st, char *err, size_t errlen)
{
    memset(st, 0, sizeof *st);
    /* O_NONBLOCK: opening a FIFO (or some devices) would otherwise wait for a
     * writer, forever; such files are refused below, before any read. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return set_err(err, errlen, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return set_err(err, errlen, "%s: not a regular file (a checkpoint must be a "
                       "regular file, not a FIFO, device or directory)", path);
    }
    if (sb.st_size == 0) {
        close(fd);
        return set_err(err, errlen, "%s: empty file, not a safetensors file", path);
    }
    if ((uint64_t)sb.st_size > (uint64_t)SIZE_MAX) {
        close(fd);
        return set_err(err, errlen, "%s: file too large to map", path);
    }
    size_t len = (size_t)sb.st_size;
    void *m = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (m == MAP_FAILED)
        return set_err(err, errlen, "%s: cannot map %zu bytes: %s", path, len, strerror(e));
    if (st_parse_labeled(m, len, path, st, err, errlen)) {
        munmap(m, len);
        return -1;
    }
    st->mapped = 1;
    return 0;
}

void st_close(struct st_file *st)
{
    if (!st)
        return;
    free_contents(st);
    if (st->mapped && st->map)
        munmap((void *)st->map, st->map_len);
    memset(st, 0, sizeof *st);
}

const struct st_tensor *st_find(const struct st_file *st, const char *name)
{
    for (size_t i = 0; i < st->n_tensors; i++)
        if (strcmp(st->tensors[i].name, name) == 0)
            return &st->tensors[i];
    return NULL;
}

const char *st_metadata_get(const struct st_file *st, const char *key)
{
    for (size_t i = 0; i < st->n_metadata; i++)
        if (strcmp(st->metadata[i].key, key) == 0)
            return st->metadata[i].value;
    return NULL;
}

size_t st_numel(const struct st_tensor *t)
{
    size_t es = st_dtype_size(t->dtype);
    return es ? t->nbytes / es : 0;
}

void st_to_f32(const struct st_tensor *t, size_t first, size_t n, float *out)
{
    size_t numel = st_numel(t);
    size_t avail = first < numel ? numel - first : 0;
    size_t cnt = n < avail ? n : avail;
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case ST_F32:
        p += first * 4;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        if (cnt)
            memcpy(out, p, cnt * 4);
#else
        for (size_t i = 0; i < cnt; i++, p += 4)
            out[i] = bits_f32((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
#endif
        break;
    case ST_BF16:
        p += first * 2;
        for (size_t i = 0; i < cnt; i++, p += 2)
            out[i] = st_bf16_to_f32((uint16_t)(p[0] | p[1] << 8));
        break;
    case ST_F16:
        p += first * 2;
        for (size_t i = 0; i < cnt; i++, p += 2)
            out[i] = st_f16_to_f32((uint16_t)(p[0] | p[1] << 8));
        break;
    default:
        cnt = 0;
        break;
    }
    for (size_t i = cnt; i < n; i++)
        out[i] = 0.0f;
}

/* ---------------------------------------------------------------- writer -- */

struct wt {
    char *name;
    enum st_dtype dtype;
    const float *data;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t numel;
    size_t nbytes;
};

struct st_writer {
    struct wt *t;
    size_t n, cap;
    struct st_metadata_entry *m;
    size_t nm, mcap;
};

struct st_writer *st_writer_new(void) { return calloc(1, sizeof(struct st_writer)); }

void st_writer_free(struct st_writer *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n; i++)
        free(w->t[i].name);
    for (size_t i = 0; i < w->nm; i++) {
        free(w->m[i].key);
        free(w->m[i].value);
    }
    free(w->t);
    free(w->m);
    free(w);
}

static bool utf8_ok(const char *s)
{
    json_t *j = json_string(s);
    if (!j)
        return false;
    json_decref(j);
    return true;
}

int st_writer_add_f32(struct st_writer *w, const char *name, enum st_dtype dtype,
                      const float *data, int ndim, const int64_t *shape,
                      char *err, size_t errlen)
{
    char cb[96];
    if (!w || !name)
        return set_err(err, errlen, "safetensors writer: no writer or name");
    if (name[0] == '\0' || strcmp(name, "__metadata__") == 0 || !utf8_ok(name))
        return set_err(err, errlen, "safetensors writer: invalid tensor name '%s'", clean(name, cb));
    if (st_dtype_size(dtype) == 0)
        return set_err(err, errlen, "safetensors writer: tensor '%s': unknown dtype %d", clean(name, cb), (int)dtype);
    if (ndim < 0 || ndim > ST_MAX_DIMS || (ndim > 0 && !shape))
        return set_err(err, errlen, "safetensors writer: tensor '%s': %d dimensions (0..%d supported)",
                       clean(name, cb), ndim, ST_MAX_DIMS);
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (uint64_t)shape[i] > SIZE_MAX || __builtin_mul_overflow(numel, (size_t)shape[i], &numel))
            return set_err(err, errlen, "safetensors writer: tensor '%s': invalid shape", clean(name, cb));
    }
    size_t nbytes;
    if (__builtin_mul_overflow(numel, st_dtype_size(dtype), &nbytes))
        return set_err(err, errlen, "safetensors writer: tensor '%s': too large", clean(name, cb));
    if (numel > 0 && !data)
        return set_err(err, errlen, "safetensors writer: tensor '%s': no data", clean(name, cb));
    for (size_t i = 0; i < w->n; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return set_err(err, errlen, "safetensors writer: duplicate tensor name '%s'", clean(name, cb));
    if (w->n == w->cap) {
        size_t nc = w->cap ? w->cap * 2 : 64;
        struct wt *nt = realloc(w->t, nc * sizeof *nt);
        if (!nt)
            return set_err(err, errlen, "safetensors writer: out of memory");
        w->t = nt;
        w->cap = nc;
    }
    struct wt *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name)
        return set_err(err, errlen, "safetensors writer: out of memory");
    t->dtype = dtype;
    t->data = data;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    t->numel = numel;
    t->nbytes = nbytes;
    w->n++;
    return 0;
}

int st_writer_set_metadata(struct st_writer *w, const char *key, const char *value,
                           char *err, size_t errlen)
{
    char cb[96];
    if (!w || !key || !value)
        return set_err(err, errlen, "safetensors writer: no writer, key or value");
    if (!utf8_ok(key) || !utf8_ok(value))
        return set_err(err, errlen, "safetensors writer: metadata '%s' is not valid UTF-8", clean(key, cb));
    for (size_t i = 0; i < w->nm; i++) {
        if (strcmp(w->m[i].key, key) == 0) {
            char *v = strdup(value);
            if (!v)
                return set_err(err, errlen, "safetensors writer: out of memory");
            free(w->m[i].value);
            w->m[i].value = v;
            return 0;
        }
    }
    if (w->nm == w->mcap) {
        size_t nc = w->mcap ? w->mcap * 2 : 8;
        struct st_metadata_entry *nm = realloc(w->m, nc * sizeof *nm);
        if (!nm)
            return set_err(err, errlen, "safetensors writer: out of memory");
        w->m = nm;
        w->mcap = nc;
    }
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) {
        free(k);
        free(v);
        return set_err(err, errlen, "safetensors writer: out of memory");
    }
    w->m[w->nm].key = k;
    w->m[w->nm].value = v;
    w->nm++;
    return 0;
}

/* Builds the header: JSON padded with spaces so the data section starts at a
 * multiple of 8 bytes. Returns malloc'd text and its padded length. */
static char *build_header(const struct st_writer *w, size_t *hlen, size_t *data_len,
                          char *err, size_t errlen)
{
    json_t *root = json_object();
    if (!root) {
        set_err(err, errlen, "safetensors writer: out of memory");
        return NULL;
    }
    if (w->nm) {
        json_t *md = json_object();
        for (size_t i = 0; i < w->nm; i++)
            json_object_set_new(md, w->m[i].key, json_string(w->m[i].value));
        json_object_set_new(root, "__metadata__", md);
    }
    uint64_t off = 0;
    for (size_t i = 0; i < w->n; i++) {
        const struct wt *t = &w->t[i];
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++)
            json_array_append_new(shape, json_integer(t->shape[d]));
        json_t *offs = json_array();
        json_array_append_new(offs, json_integer((json_int_t)off));
        json_array_append_new(offs, json_integer((json_int_t)(off + t->nbytes)));
        json_t *e = json_object();
        json_object_set_new(e, "dtype", json_string(st_dtype_name(t->dtype)));
        json_object_set_new(e, "shape", shape);
        json_object_set_new(e, "data_offsets", offs);
        json_object_set_new(root, t->name, e);
        off += t->nbytes;
    }
    char *text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!text) {
        set_err(err, errlen, "safetensors writer: cannot serialise header");
        return NULL;
    }
    size_t n = strlen(text);
    size_t padded = (n + 7) & ~(size_t)7;
    if (padded > ST_MAX_HEADER_BYTES) {
        free(text);
        set_err(err, errlen, "safetensors writer: header of %zu bytes exceeds the limit", padded);
        return NULL;
    }
    char *h = realloc(text, padded + 1);
    if (!h) {
        free(text);
        set_err(err, errlen, "safetensors writer: out of memory");
        return NULL;
    }
    memset(h + n, ' ', padded - n);
    h[padded] = '\0';
    *hlen = padded;
    *data_len = (size_t)off;
    return h;
}

typedef int (*sink_fn)(void *ctx, const void *p, size_t n);

#define CHUNK 8192

static int emit(const struct st_writer *w, const char *header, size_t hlen, sink_fn sink, void *ctx)
{
    uint8_t lenbuf[8];
    for (int i = 0; i < 8; i++)
        lenbuf[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    if (sink(ctx, lenbuf, 8) || sink(ctx, header, hlen))
        return -1;
    uint8_t buf[CHUNK * 4];
    for (size_t i = 0; i < w->n; i++) {
        const struct wt *t = &w->t[i];
        for (size_t s = 0; s < t->numel; s += CHUNK) {
            size_t cnt = t->numel - s < CHUNK ? t->numel - s : CHUNK;
            const float *src = t->data + s;
            size_t nb = 0;
            for (size_t k = 0; k < cnt; k++) {
                if (t->dtype == ST_F32) {
                    uint32_t u = f32_bits(src[k]);
                    buf[nb++] = (uint8_t)u;
                    buf[nb++] = (uint8_t)(u >> 8);
                    buf[nb++] = (uint8_t)(u >> 16);
                    buf[nb++] = (uint8_t)(u >> 24);
                } else {
                    uint16_t h = t->dtype == ST_BF16 ? st_f32_to_bf16(src[k]) : st_f32_to_f16(src[k]);
                    buf[nb++] = (uint8_t)h;
                    buf[nb++] = (uint8_t)(h >> 8);
                }
            }
            if (sink(ctx, buf, nb))
                return -1;
        }
    }
    return 0;
}

struct mem_sink { uint8_t *p; size_t len, cap; };

static int mem_write(void *ctx, const void *p, size_t n)
{
    struct mem_sink *m = ctx;
    if (n > m->cap - m->len)
        return -1;
    memcpy(m->p + m->len, p, n);
    m->len += n;
    return 0;
}

int st_writer_to_buffer(struct st_writer *w, uint8_t **buf, size_t *len, char *err, size_t errlen)
{
    *buf = NULL;
    *len = 0;
    if (!w)
        return set_err(err, errlen, "safetensors writer: no writer");
    size_t hlen, dlen;
    char *h = build_header(w, &hlen, &dlen, err, errlen);
    if (!h)
        return -1;
    size_t total;
    if (__builtin_add_overflow(8 + hlen, dlen, &total)) {
        free(h);
        return set_err(err, errlen, "safetensors writer: output too large");
    }
    struct mem_sink m = { malloc(total ? total : 1), 0, total };
    if (!m.p) {
        free(h);
        return set_err(err, errlen, "safetensors writer: cannot allocate %zu bytes", total);
    }
    int rc = emit(w, h, hlen, mem_write, &m);
    free(h);
    if (rc || m.len != total) {
        free(m.p);
        return set_err(err, errlen, "safetensors writer: internal size mismatch");
    }
    *buf = m.p;
    *len = total;
    return 0;
}

struct fd_sink { int fd; int err; };

static int fd_write(void *ctx, const void *p, size_t n)
{
    struct fd_sink *s = ctx;
    const uint8_t *q = p;
    while (n) {
        ssize_t k = write(s->fd, q, n);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            s->err = errno;
            return -1;
        }
        q += k;
        n -= (size_t)k;
    }
    return 0;
}

int st_writer_finish(struct st_writer *w, const char *path, char *err, size_t errlen)
{
    if (!w || !path)
        return set_err(err, errlen, "safetensors writer: no writer or path");
    size_t hlen, dlen;
    char *h = build_header(w, &hlen, &dlen, err, errlen);
    if (!h)
        return -1;
    size_t pl = strlen(path);
    char *tmp = malloc(pl + 16);
    if (!tmp) {
        free(h);
        return set_err(err, errlen, "%s: out of memory", path);
    }
    memcpy(tmp, path, pl);
    memcpy(tmp + pl, ".tmp.XXXXXX", 12);
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        free(h);
        free(tmp);
        return set_err(err, errlen, "%s: cannot create temporary file: %s", path, strerror(e));
    }
    struct fd_sink s = { fd, 0 };
    int rc = emit(w, h, hlen, fd_write, &s);
    free(h);
    if (rc) {
        set_err(err, errlen, "%s: write failed: %s", path, strerror(s.err));
        goto fail;
    }
    if (fchmod(fd, 0644) != 0 || fsync(fd) != 0) {
        set_err(err, errlen, "%s: cannot sync: %s", path, strerror(errno));
        goto fail;
    }
    if (close(fd) != 0) {
        fd = -1;
        set_err(err, errlen, "%s: close failed: %s", path, strerror(errno));
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        set_err(err, errlen, "%s: cannot rename temporary file into place: %s", path, strerror(errno));
        goto fail;
    }
    /* Make the rename durable (best effort). */
    char *dcopy = strdup(path);
    if (dcopy) {
        int dfd = open(dirname(dcopy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            (void)fsync(dfd);
            close(dfd);
        }
        free(dcopy);
    }
    free(tmp);
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    free(tmp);
    return -1;
}
