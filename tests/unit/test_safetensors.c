/* Unit tests of the safetensors reader/writer: round trips for F32/BF16/F16,
 * exact rounding, and every hostile header the reader must reject cleanly. */
#include "check.h"
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "errors.h"
#include "safetensors.h"


static char tmpdir[256];

static uint32_t fbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bitsf(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* A safetensors byte string from a header text and a data section. */
static uint8_t *make_file(const char *header, const void *data, size_t dlen, size_t *len)
{
    size_t hl = strlen(header);
    *len = 8 + hl + dlen;
    uint8_t *b = malloc(*len + 1);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(b + 8, header, hl);
    if (dlen)
        memcpy(b + 8 + hl, data, dlen);
    return b;
}

static int st_is_empty(const struct st_file *st)
{
    return st->map == NULL && st->tensors == NULL && st->n_tensors == 0 && st->metadata == NULL &&
           st->n_metadata == 0;
}

static int one_line(const char *s) { return s[0] != '\0' && strchr(s, '\n') == NULL; }

/* Asserts that buf is rejected with a one-line message containing needle. */
static void expect_reject(const char *what, const uint8_t *buf, size_t len, const char *needle)
{
    struct st_file st;
    char err[ERR_LEN] = "";
    int rc = st_parse(buf, len, &st, err, sizeof err);
    CHECK(rc == -1, "%s: accepted", what);
    CHECK(st_is_empty(&st), "%s: st not left empty", what);
    CHECK(one_line(err), "%s: message not one non-empty line: '%s'", what, err);
    CHECK(strstr(err, needle) != NULL, "%s: message '%s' lacks '%s'", what, err, needle);
    if (rc == 0)
        st_close(&st);
}

static void expect_reject_header(const char *what, const char *header, size_t dlen, const char *needle)
{
    uint8_t *data = calloc(dlen + 1, 1);
    size_t len;
    uint8_t *b = make_file(header, data, dlen, &len);
    expect_reject(what, b, len, needle);
    free(b);
    free(data);
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(2);
    }
    if (n)
        fwrite(p, 1, n, f);
    fclose(f);
}

/* ------------------------------------------------------------------------- */

static void test_conversions(void)
{
    /* bf16: round to nearest, ties to even */
    CHECK(st_f32_to_bf16(1.0f) == 0x3f80, "1.0");
    CHECK(st_f32_to_bf16(bitsf(0x3f808000u)) == 0x3f80, "tie to even (down)");
    CHECK(st_f32_to_bf16(bitsf(0x3f818000u)) == 0x3f82, "tie to even (up)");
    CHECK(st_f32_to_bf16(bitsf(0x3f808001u)) == 0x3f81, "above half");
    CHECK(st_f32_to_bf16(bitsf(0x3f807fffu)) == 0x3f80, "below half");
    CHECK(st_f32_to_bf16(bitsf(0x7f7fffffu)) == 0x7f80, "FLT_MAX rounds to inf");
    CHECK(st_f32_to_bf16(INFINITY) == 0x7f80, "inf");
    CHECK(st_f32_to_bf16(-INFINITY) == 0xff80, "-inf");
    CHECK(st_f32_to_bf16(-0.0f) == 0x8000, "-0");
    CHECK(isnan(st_bf16_to_f32(st_f32_to_bf16(NAN))), "nan stays nan");
    CHECK(isnan(st_bf16_to_f32(st_f32_to_bf16(bitsf(0x7f800001u)))), "signalling nan stays nan");
    CHECK(st_bf16_to_f32(0x3f82) == 1.015625f, "bf16 decode");
    CHECK(st_f32_to_bf16(bitsf(0x00010000u)) == 0x0001, "bf16 subnormal");
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = st_bf16_to_f32((uint16_t)h);
        if (isnan(f))
            continue;
        if (st_f32_to_bf16(f) != h)
            bad++;
    }
    CHECK(bad == 0, "%d bf16 values do not round-trip", bad);

    /* f16 */
    CHECK(st_f32_to_f16(1.0f) == 0x3c00, "1.0");
    CHECK(st_f32_to_f16(-2.0f) == 0xc000, "-2");
    CHECK(st_f32_to_f16(65504.0f) == 0x7bff, "max");
    CHECK(st_f32_to_f16(65519.0f) == 0x7bff, "below overflow tie");
    CHECK(st_f32_to_f16(65520.0f) == 0x7c00, "overflow tie goes to inf");
    CHECK(st_f32_to_f16(1e9f) == 0x7c00, "overflow");
    CHECK(st_f32_to_f16(INFINITY) == 0x7c00, "inf");
    CHECK(st_f32_to_f16(-INFINITY) == 0xfc00, "-inf");
    CHECK(st_f32_to_f16(-0.0f) == 0x8000, "-0");
    uint16_t hn = st_f32_to_f16(NAN);
    CHECK((hn & 0x7c00) == 0x7c00 && (hn & 0x3ff) != 0, "nan -> %04x", hn);
    CHECK(st_f32_to_f16(0x1p-24f) == 0x0001, "smallest subnormal");
    CHECK(st_f32_to_f16(0x1p-25f) == 0x0000, "half of smallest subnormal ties to 0");
    CHECK(st_f32_to_f16(nextafterf(0x1p-25f, 1.0f)) == 0x0001, "just above half rounds up");
    CHECK(st_f32_to_f16(-0x1p-26f) == 0x8000, "tiny negative -> -0");
    CHECK(st_f32_to_f16(3 * 0x1p-25f) == 0x0002, "1.5 ulp subnormal ties to even 2");
    CHECK(st_f32_to_f16(5 * 0x1p-25f) == 0x0002, "2.5 ulp subnormal ties to even 2");
    CHECK(st_f32_to_f16(1023 * 0x1p-24f) == 0x03ff, "largest subnormal");
    CHECK(st_f32_to_f16(0x1p-14f) == 0x0400, "smallest normal");
    CHECK(st_f32_to_f16(0x1p-14f - 0x1p-26f) == 0x0400, "rounds up into the normals");
    CHECK(st_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00, "normal tie to even (down)");
    CHECK(st_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02, "normal tie to even (up)");
    CHECK(st_f32_to_f16(0.1f) == 0x2e66, "0.1");
    CHECK(st_f16_to_f32(0x0001) == 0x1p-24f, "decode subnormal");
    CHECK(st_f16_to_f32(0x03ff) == 1023 * 0x1p-24f, "decode largest subnormal");
    CHECK(st_f16_to_f32(0x8001) == -0x1p-24f, "decode negative subnormal");
    CHECK(st_f16_to_f32(0x7c00) == INFINITY, "decode inf");
    CHECK(st_f16_to_f32(0xfc00) == -INFINITY, "decode -inf");
    CHECK(isnan(st_f16_to_f32(0x7e00)), "decode nan");
    CHECK(st_f16_to_f32(0x7bff) == 65504.0f, "decode max");
    bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = st_f16_to_f32((uint16_t)h);
        if (isnan(f))
            continue;
        if (st_f32_to_f16(f) != h)
            bad++;
    }
    CHECK(bad == 0, "%d f16 values do not round-trip", bad);
    /* Rounding of every f32 midway between adjacent f16 values (normals). */
    bad = 0;
    for (uint32_t h = 0x0400; h < 0x7bff; h++) {
        float lo = st_f16_to_f32((uint16_t)h), hi = st_f16_to_f32((uint16_t)(h + 1));
        float mid = lo + (hi - lo) / 2; /* exact in f32 */
        uint16_t want = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        if (st_f32_to_f16(mid) != want)
            bad++;
    }
    CHECK(bad == 0, "%d f16 midpoints not rounded to even", bad);
}

static const float sample[] = {
    0.0f, -0.0f, 1.0f, -1.5f, 3.14159265f, 1e-8f, -7e-6f, 65504.0f, 70000.0f, 0x1p-24f,
    1.0f + 0x1p-8f, 1.0f + 0x1p-11f, 0.1f, -123456.789f, 0x1p-130f, 2.5e-5f,
};
#define NS (sizeof sample / sizeof sample[0])

static void test_roundtrip(void)
{
    for (int dt = ST_F32; dt <= ST_F16; dt++) {
        struct st_writer *w = st_writer_new();
        char err[ERR_LEN] = "";
        int64_t shape_a[2] = { 4, 4 };
        int64_t shape_b[1] = { 3 };
        int64_t shape_c[3] = { 2, 0, 5 };
        float b3[3] = { 1, 2, 3 };
        CHECK(st_writer_add_f32(w, "a.weight", (enum st_dtype)dt, sample, 2, shape_a, err, sizeof err) == 0, "%s", err);
        CHECK(st_writer_add_f32(w, "b", (enum st_dtype)dt, b3, 1, shape_b, err, sizeof err) == 0, "%s", err);
        CHECK(st_writer_add_f32(w, "empty", (enum st_dtype)dt, NULL, 3, shape_c, err, sizeof err) == 0, "%s", err);
        CHECK(st_writer_add_f32(w, "scalar", (enum st_dtype)dt, b3 + 1, 0, NULL, err, sizeof err) == 0, "%s", err);
        CHECK(st_writer_set_metadata(w, "franca", "{\"x\":1}", err, sizeof err) == 0, "%s", err);
        CHECK(st_writer_set_metadata(w, "note", "first", err, sizeof err) == 0, "%s", err);
        CHECK(st_writer_set_metadata(w, "note", "second", err, sizeof err) == 0, "%s", err);
        uint8_t *buf = NULL;
        size_t len = 0;
        CHECK(st_writer_to_buffer(w, &buf, &len, err, sizeof err) == 0, "%s", err);
        char path[300];
        snprintf(path, sizeof path, "%s/rt_%d.safetensors", tmpdir, dt);
        CHECK(st_writer_finish(w, path, err, sizeof err) == 0, "%s", err);
        st_writer_free(w);

        uint64_t hl = 0;
        for (int i = 7; i >= 0; i--)
            hl = (hl << 8) | buf[i];
        CHECK(hl % 8 == 0, "header length %llu not padded to 8", (unsigned long long)hl);

        struct st_file st;
        CHECK(st_open(path, &st, err, sizeof err) == 0, "%s", err);
        CHECK(st.map_len == len && memcmp(st.map, buf, len) == 0, "file and buffer differ");
        CHECK(st.n_tensors == 4, "n_tensors %zu", st.n_tensors);
        CHECK(st.n_metadata == 2, "n_metadata %zu", st.n_metadata);
        const char *note = st_metadata_get(&st, "note");
        CHECK(note && strcmp(note, "second") == 0, "metadata overwrite");
        CHECK(st_metadata_get(&st, "franca") && strcmp(st_metadata_get(&st, "franca"), "{\"x\":1}") == 0, "meta");
        CHECK(st_metadata_get(&st, "absent") == NULL, "absent meta");
        CHECK(st_find(&st, "nope") == NULL, "absent tensor");
        const struct st_tensor *a = st_find(&st, "a.weight");
        CHECK(a && a->dtype == (enum st_dtype)dt && a->ndim == 2 && a->shape[0] == 4 && a->shape[1] == 4,
              "tensor a");
        CHECK(st.n_tensors == 4 && strcmp(st.tensors[0].name, "a.weight") == 0 &&
              strcmp(st.tensors[3].name, "scalar") == 0, "header order kept");
        if (a) {
            float out[NS + 4];
            st_to_f32(a, 0, NS, out);
            int bad = 0;
            for (size_t i = 0; i < NS; i++) {
                float want = dt == ST_F32 ? sample[i]
                             : dt == ST_BF16 ? st_bf16_to_f32(st_f32_to_bf16(sample[i]))
                                             : st_f16_to_f32(st_f32_to_f16(sample[i]));
                if (fbits(out[i]) != fbits(want))
                    bad++;
            }
            CHECK(bad == 0, "dtype %s: %d values differ", st_dtype_name((enum st_dtype)dt), bad);
            /* reading past the end yields zeros, never out of bounds */
            for (size_t i = 0; i < NS + 4; i++)
                out[i] = 42.0f;
            st_to_f32(a, NS - 2, 6, out);
            CHECK(out[2] == 0.0f && out[5] == 0.0f && out[6] == 42.0f, "tail zero-filled");
            st_to_f32(a, 1000, 2, out);
            CHECK(out[0] == 0.0f && out[1] == 0.0f, "start beyond end zero-filled");
        }
        if (dt == ST_F16 && a) {
            float v;
            st_to_f32(a, 8, 1, &v); /* 70000 overflows f16 */
            CHECK(isinf(v), "70000 -> inf in f16");
            st_to_f32(a, 9, 1, &v);
            CHECK(v == 0x1p-24f, "subnormal kept");
        }
        if (dt == ST_BF16 && a) {
            float v;
            st_to_f32(a, 10, 1, &v); /* 1 + 2^-8: tie, rounds to even 1.0 */
            CHECK(v == 1.0f, "bf16 RNE tie gave %g", (double)v);
        }
        const struct st_tensor *e = st_find(&st, "empty");
        CHECK(e && e->nbytes == 0 && e->ndim == 3 && st_numel(e) == 0, "empty tensor");
        const struct st_tensor *s = st_find(&st, "scalar");
        if (s) {
            float v = 0;
            st_to_f32(s, 0, 1, &v);
            CHECK(s->ndim == 0 && st_numel(s) == 1 && v == 2.0f, "scalar");
        }
        st_close(&st);
        CHECK(st_is_empty(&st), "st_close clears");
        free(buf);
        unlink(path);
    }
}

static void test_writer_errors(void)
{
    struct st_writer *w = st_writer_new();
    char err[ERR_LEN];
    float x[2] = { 1, 2 };
    int64_t s2[1] = { 2 }, neg[1] = { -1 };
    int64_t huge[3] = { INT64_MAX, INT64_MAX, 4 };
    CHECK(st_writer_add_f32(w, "x", ST_F32, x, 1, s2, err, sizeof err) == 0, "%s", err);
    CHECK(st_writer_add_f32(w, "x", ST_F32, x, 1, s2, err, sizeof err) == -1 && strstr(err, "duplicate"), "dup");
    CHECK(st_writer_add_f32(w, "__metadata__", ST_F32, x, 1, s2, err, sizeof err) == -1, "reserved name");
    CHECK(st_writer_add_f32(w, "", ST_F32, x, 1, s2, err, sizeof err) == -1, "empty name");
    CHECK(st_writer_add_f32(w, "n", ST_F32, x, 1, neg, err, sizeof err) == -1, "negative dim");
    CHECK(st_writer_add_f32(w, "h", ST_F32, x, 3, huge, err, sizeof err) == -1, "overflow");
    CHECK(st_writer_add_f32(w, "d", (enum st_dtype)7, x, 1, s2, err, sizeof err) == -1, "bad dtype");
    CHECK(st_writer_add_f32(w, "k", ST_F32, x, 9, s2, err, sizeof err) == -1, "too many dims");
    CHECK(st_writer_add_f32(w, "\xff\xfe", ST_F32, x, 1, s2, err, sizeof err) == -1, "bad utf8 name");
    CHECK(st_writer_set_metadata(w, "k", "\xc3", err, sizeof err) == -1, "bad utf8 value");
    char path[300];
    snprintf(path, sizeof path, "%s/no/such/dir/out.safetensors", tmpdir);
    CHECK(st_writer_finish(w, path, err, sizeof err) == -1 && one_line(err), "unwritable path");
    st_writer_free(w);

    /* atomic write leaves no temporary file behind */
    w = st_writer_new();
    st_writer_add_f32(w, "x", ST_F32, x, 1, s2, err, sizeof err);
    snprintf(path, sizeof path, "%s/atomic.safetensors", tmpdir);
    CHECK(st_writer_finish(w, path, err, sizeof err) == 0, "%s", err);
    CHECK(st_writer_finish(w, path, err, sizeof err) == 0, "overwrite: %s", err);
    st_writer_free(w);
    struct stat sb;
    CHECK(stat(path, &sb) == 0 && (sb.st_mode & 0777) == 0644, "mode");
    char cmd[400];
    snprintf(cmd, sizeof cmd, "ls %s | grep -c tmp > /dev/null", tmpdir);
    CHECK(system(cmd) != 0, "temporary file left behind");
    unlink(path);
}

static void test_hostile(void)
{
    static const uint8_t seven[7] = { 1, 2, 3, 4, 5, 6, 7 };
    expect_reject("empty buffer", seven, 0, "empty");
    expect_reject("7 bytes", seven, 7, "too short");

    /* header length beyond the file */
    uint8_t b[64] = { 0 };
    b[0] = 100;
    expect_reject("header length > file", b, sizeof b, "exceeds the file size");
    memset(b, 0, 8);
    b[7] = 0x80; /* 2^63 */
    expect_reject("header length 2^63", b, sizeof b, "exceeds the file size");
    memset(b, 0xff, 8);
    expect_reject("header length 2^64-1", b, sizeof b, "exceeds the file size");
    memset(b, 0, 8);
    expect_reject("header length 0", b, sizeof b, "too small");
    /* header length over the limit while inside the buffer */
    size_t big = 8 + (size_t)ST_MAX_HEADER_BYTES + 16;
    uint8_t *hb = calloc(big, 1);
    uint64_t hl = (uint64_t)ST_MAX_HEADER_BYTES + 1;
    for (int i = 0; i < 8; i++)
        hb[i] = (uint8_t)(hl >> (8 * i));
    expect_reject("header length over limit", hb, big, "limit");
    free(hb);

    /* truncated valid file */
    float vals[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
    size_t len;
    uint8_t *f = make_file("{\"t\":{\"dtype\":\"F32\",\"shape\":[8],\"data_offsets\":[0,32]}}", vals, 32, &len);
    struct st_file st;
    char err[ERR_LEN];
    CHECK(st_parse(f, len, &st, err, sizeof err) == 0, "valid base file: %s", err);
    st_close(&st);
    expect_reject("truncated data", f, len - 5, "past the end");
    expect_reject("truncated header", f, 20, "exceeds the file size");
    free(f);

    expect_reject_header("non-JSON header", "this is not json", 0, "not valid JSON");
    expect_reject_header("trailing garbage", "{} x", 0, "not valid JSON");
    expect_reject_header("array header", "[1,2,3]", 0, "not a JSON object");
    expect_reject_header("string header", "\"abc\"", 0, "header is not");
    expect_reject_header("null header", "null", 0, "not");
    expect_reject_header("entry not object", "{\"a\":5}", 0, "not a JSON object");
    expect_reject_header("missing dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "no 'dtype'");
    expect_reject_header("missing shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "no 'shape'");
    expect_reject_header("missing offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "no 'data_offsets'");
    expect_reject_header("dtype F64", "{\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8,
                         "unsupported dtype 'F64'");
    expect_reject_header("dtype I8", "{\"a\":{\"dtype\":\"I8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 8,
                         "unsupported dtype 'I8'");
    expect_reject_header("dtype lowercase", "{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8,
                         "unsupported dtype");
    expect_reject_header("dtype number", "{\"a\":{\"dtype\":3,\"shape\":[1],\"data_offsets\":[0,4]}}", 8,
                         "not a string");
    expect_reject_header("negative shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 8,
                         "shape[0]");
    expect_reject_header("real shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 8,
                         "shape[0]");
    expect_reject_header("string shape entry", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,\"3\"],\"data_offsets\":[0,4]}}",
                         8, "shape[1]");
    expect_reject_header("shape not array", "{\"a\":{\"dtype\":\"F32\",\"shape\":4,\"data_offsets\":[0,16]}}", 16,
                         "not an array");
    expect_reject_header("too many dims",
                         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 8,
                         "dimensions");
    expect_reject_header("shape product overflow",
                         "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,0]}}", 8,
                         "overflow");
    expect_reject_header("shape * size overflow",
                         "{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,0]}}", 8,
                         "overflow");
    expect_reject_header("shape entry beyond int64",
                         "{\"a\":{\"dtype\":\"F32\",\"shape\":[18446744073709551615],\"data_offsets\":[0,4]}}", 8,
                         "not valid JSON");
    expect_reject_header("offsets out of range", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
                         "past the end");
    expect_reject_header("offsets far out of range",
                         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[9223372036854775800,9223372036854775804]}}",
                         8, "past the end");
    expect_reject_header("begin > end", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8,
                         "begin 8 > end 4");
    expect_reject_header("negative offset", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 8,
                         "data_offsets");
    expect_reject_header("offsets not pair", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8,
                         "data_offsets");
    expect_reject_header("offsets strings", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[\"0\",\"4\"]}}",
                         8, "data_offsets");
    expect_reject_header("size mismatch", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 16,
                         "needs 12");
    expect_reject_header("bf16 size mismatch", "{\"a\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,12]}}", 16,
                         "needs 6");
    expect_reject_header("overlap",
                         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 16, "overlapping");
    expect_reject_header("identical ranges",
                         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 16, "overlapping");
    expect_reject_header("contained range",
                         "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 16, "overlapping");
    expect_reject_header("duplicate names",
                         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "duplicate");
    expect_reject_header("metadata number", "{\"__metadata__\":{\"franca\":1}}", 0, "not a string");
    expect_reject_header("metadata object value", "{\"__metadata__\":{\"franca\":{\"a\":1}}}", 0, "not a string");
    expect_reject_header("metadata null value", "{\"__metadata__\":{\"k\":null}}", 0, "not a string");
    expect_reject_header("metadata array", "{\"__metadata__\":[1,2]}", 0, "__metadata__");
    expect_reject_header("metadata string", "{\"__metadata__\":\"x\"}", 0, "__metadata__");
    expect_reject_header("duplicate metadata", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, "duplicate");
    expect_reject_header("empty name", "{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                         "empty name");
    expect_reject_header("newline in name", "{\"a\\nb\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                         "control character");
    expect_reject_header("NUL escape in name", "{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                         4, "not valid JSON");
    expect_reject_header("bad UTF-8", "{\"\xff\":1}", 0, "not valid JSON");

    /* raw NUL byte inside the header */
    static const char nul_header[] = "{\"a\"\0:1}";
    size_t nl;
    uint8_t *nb = make_file("xxxxxxxx", NULL, 0, &nl);
    memcpy(nb + 8, nul_header, 8);
    expect_reject("NUL byte in header", nb, nl, "not valid JSON");
    free(nb);

    /* very deep nesting: must fail cleanly, not overflow the stack */
    size_t depth = 200000;
    char *deep = malloc(2 * depth + 16);
    size_t k = 0;
    deep[k++] = '{';
    deep[k++] = '"';
    deep[k++] = 'a';
    deep[k++] = '"';
    deep[k++] = ':';
    for (size_t i = 0; i < depth; i++)
        deep[k++] = '[';
    for (size_t i = 0; i < depth; i++)
        deep[k++] = ']';
    deep[k++] = '}';
    deep[k] = '\0';
    expect_reject_header("deep nesting", deep, 0, "not valid JSON");
    free(deep);

    /* Things that are valid: empty header object, null metadata, zero-size
     * tensors at any offset, gaps, unknown entry keys. */
    const char *ok[] = {
        "{}",
        "{\"__metadata__\":null}",
        "{\"__metadata__\":{}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
        "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
        "{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[8,12],\"extra\":[1]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
        "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}        ",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        uint8_t data[16] = { 0 };
        uint8_t *fb = make_file(ok[i], data, 16, &len);
        int rc = st_parse(fb, len, &st, err, sizeof err);
        CHECK(rc == 0, "valid header %zu rejected: %s", i, err);
        if (rc == 0)
            st_close(&st);
        free(fb);
    }
}

static void test_files(void)
{
    char path[300], err[ERR_LEN];
    struct st_file st;
    snprintf(path, sizeof path, "%s/empty.safetensors", tmpdir);
    write_bytes(path, "", 0);
    CHECK(st_open(path, &st, err, sizeof err) == -1 && strstr(err, path) && strstr(err, "empty") && one_line(err),
          "empty file: %s", err);
    CHECK(st_is_empty(&st), "st empty");
    unlink(path);
    snprintf(path, sizeof path, "%s/seven.safetensors", tmpdir);
    write_bytes(path, "1234567", 7);
    CHECK(st_open(path, &st, err, sizeof err) == -1 && strstr(err, path) && strstr(err, "too short"),
          "7-byte file: %s", err);
    unlink(path);
    snprintf(path, sizeof path, "%s/missing.safetensors", tmpdir);
    CHECK(st_open(path, &st, err, sizeof err) == -1 && strstr(err, "cannot open"), "missing file: %s", err);
    CHECK(st_open(tmpdir, &st, err, sizeof err) == -1 && strstr(err, "not a regular file"), "directory: %s", err);
    snprintf(path, sizeof path, "%s/text.safetensors", tmpdir);
    write_bytes(path, "hello world, this is a text file\n", 33);
    CHECK(st_open(path, &st, err, sizeof err) == -1 && strstr(err, "exceeds the file size"), "text: %s", err);
    unlink(path);
}

/* Command-line dtype names: the three the writer takes, nothing else. */
static void test_dtype_names(void)
{
    enum st_dtype dt = ST_F16;
    CHECK(st_dtype_parse("f32", &dt) == 0 && dt == ST_F32, "f32");
    CHECK(st_dtype_parse("bf16", &dt) == 0 && dt == ST_BF16, "bf16");
    CHECK(st_dtype_parse("f16", &dt) == 0 && dt == ST_F16, "f16");
    CHECK(st_dtype_parse("F32", &dt) == -1 && st_dtype_parse("f8", &dt) == -1 &&
          st_dtype_parse("", &dt) == -1 && dt == ST_F16, "other names refused, dtype untouched");
}

int main(void)
{
    const char *t = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/franca-st-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 2;
    }
    test_dtype_names();
    test_conversions();
    test_roundtrip();
    test_writer_errors();
    test_hostile();
    test_files();
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "warning: could not remove %s\n", tmpdir);
    printf("test_safetensors: ");
    return check_summary();
}
