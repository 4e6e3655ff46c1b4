/* Unit tests of the model config, checkpoint load/save, random init and
 * SHA-256 fingerprint. */
#include "check.h"
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint.h"
#include "errors.h"
#include "model_config.h"
#include "safetensors.h"
#include "sha256.h"


static char tmpdir[256];

static int one_line(const char *s) { return s[0] != '\0' && strchr(s, '\n') == NULL; }

static void tmp_path(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", tmpdir, name);
}

/* A small valid config: D=32, L=2, H=2, SwiGLU, grid 4, RASA 2. */
static void tiny_cfg(struct model_config *c)
{
    model_config_defaults(c, 32, 2);
    c->num_heads = 2;
    c->pos_grid = 4;
    c->rasa_layers = 2;
    snprintf(c->name, sizeof c->name, "tiny_test");
    snprintf(c->version, sizeof c->version, "0");
}

/* ----------------------------------------------------------------- sha256 -- */

static void test_sha256(void)
{
    struct { const char *msg; const char *hex; } v[] = {
        { "", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" },
        { "abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" },
        { "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
          "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1" },
        { "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
          "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1" },
    };
    char hex[65];
    uint8_t d[32];
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        sha256_buffer(v[i].msg, strlen(v[i].msg), d);
        sha256_to_hex(d, hex);
        CHECK(strcmp(hex, v[i].hex) == 0, "vector %zu: %s", i, hex);
    }
    /* one million 'a', fed in awkward pieces */
    char *a = malloc(1000000);
    memset(a, 'a', 1000000);
    struct sha256_ctx c;
    sha256_init(&c);
    size_t off = 0, step = 1;
    while (off < 1000000) {
        size_t n = step < 1000000 - off ? step : 1000000 - off;
        sha256_update(&c, a + off, n);
        off += n;
        step = step * 3 + 1;
        if (step > 70000)
            step = 7;
    }
    sha256_final(&c, d);
    sha256_to_hex(d, hex);
    CHECK(strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0, "1M a: %s", hex);
    /* every length 0..200 streamed byte by byte equals one-shot */
    int bad = 0;
    for (size_t n = 0; n <= 200; n++) {
        uint8_t d1[32], d2[32];
        sha256_buffer(a, n, d1);
        sha256_init(&c);
        for (size_t i = 0; i < n; i++)
            sha256_update(&c, a + i, 1);
        sha256_final(&c, d2);
        bad += memcmp(d1, d2, 32) != 0;
    }
    CHECK(bad == 0, "%d lengths differ streamed vs one-shot", bad);
    char path[300], err[ERR_LEN];
    tmp_path(path, sizeof path, "million_a");
    FILE *f = fopen(path, "wb");
    fwrite(a, 1, 1000000, f);
    fclose(f);
    CHECK(sha256_file_hex(path, hex, err, sizeof err) == 0 &&
          strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0, "file: %s", hex);
    unlink(path);
    CHECK(sha256_file_hex(path, hex, err, sizeof err) == -1 && strstr(err, path), "missing file");
    free(a);
}

/* ------------------------------------------------------------ model config -- */

static const char *contract_json =
    "{\"format_version\":1, \"family\":\"franca\", \"embed_dim\":768, \"depth\":12, \"num_heads\":12,"
    " \"ffn\":\"swiglu\", \"ffn_hidden\":2048, \"patch_size\":14, \"pos_grid\":37, \"layerscale\":true,"
    " \"norm_eps\":1e-6, \"register_tokens\":0, \"matryoshka_widths\":[48,96,192,384,768], \"rasa_layers\":8,"
    " \"preprocess\":{\"resize_size\":256,\"crop_size\":224,\"mean\":[0.485,0.456,0.406],\"std\":[0.229,0.224,0.225]},"
    " \"name\":\"franca_vitb14_in21k\", \"version\":\"1.0.0\", \"trained\":true,"
    " \"source\":{\"url\":\"x\"}, \"training\":[1,2]}";

/* Parses contract_json with key replaced by value (or removed if value is NULL). */
static int parse_modified(const char *key, const char *value, struct model_config *cfg, char *err, size_t errlen)
{
    json_t *root = json_loads(contract_json, 0, NULL);
    if (value) {
        json_t *v = json_loads(value, JSON_DECODE_ANY, NULL);
        if (!v) {
            fprintf(stderr, "bad test value %s\n", value);
            exit(2);
        }
        json_object_set_new(root, key, v);
    } else {
        json_object_del(root, key);
    }
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    int rc = model_config_from_json(s, strlen(s), cfg, err, errlen);
    free(s);
    return rc;
}

static void expect_cfg_reject(const char *key, const char *value, const char *needle)
{
    struct model_config cfg;
    char err[ERR_LEN] = "";
    int rc = parse_modified(key, value, &cfg, err, sizeof err);
    CHECK(rc == -1, "%s=%s accepted", key, value ? value : "(removed)");
    CHECK(one_line(err) && strstr(err, needle), "%s=%s: message '%s' lacks '%s'", key,
          value ? value : "(removed)", err, needle);
    CHECK(cfg.embed_dim == 0 && cfg.depth == 0, "cfg not cleared on failure");
}

static void test_config(void)
{
    CHECK(swiglu_hidden_for(768) == 2048, "B");
    CHECK(swiglu_hidden_for(1024) == 2736, "L");
    CHECK(swiglu_hidden_for(1536) == 4096, "g");
    CHECK(swiglu_hidden_for(384) == 1024, "S");
    CHECK(swiglu_hidden_for(64) == 176, "tiny: %d", swiglu_hidden_for(64));

    struct model_config c;
    char err[ERR_LEN] = "";
    CHECK(model_config_from_json(contract_json, strlen(contract_json), &c, err, sizeof err) == 0, "%s", err);
    CHECK(c.family == FAMILY_FRANCA && c.embed_dim == 768 && c.depth == 12 && c.num_heads == 12 &&
          c.ffn == FFN_SWIGLU && c.ffn_hidden == 2048 && c.patch_size == 14 && c.pos_grid == 37 &&
          c.layerscale && c.norm_eps == 1e-6f && c.register_tokens == 0 && c.n_widths == 5 &&
          c.widths[0] == 48 && c.widths[4] == 768 && c.rasa_layers == 8 && c.preprocess.resize_size == 256 &&
          c.preprocess.crop_size == 224 && c.preprocess.mean[0] == 0.485f && c.preprocess.std[2] == 0.225f &&
          strcmp(c.name, "franca_vitb14_in21k") == 0 && strcmp(c.version, "1.0.0") == 0 && c.trained,
          "contract example parsed wrongly");

    /* round trip through to_json */
    char *js = model_config_to_json(&c, NULL);
    struct model_config c2;
    CHECK(js && model_config_from_json(js, strlen(js), &c2, err, sizeof err) == 0, "%s", err);
    CHECK(js && memcmp(&c, &c2, sizeof c) == 0, "to_json/from_json round trip differs");
    CHECK(js && strstr(js, "\"norm_eps\":1e-6") && strstr(js, "0.485") && !strstr(js, "0.48500"), "floats: %s", js ? js : "(null)");
    CHECK(js && strstr(js, "\"format_version\":1") && strstr(js, "\"rasa_layers\":8") &&
          strstr(js, "\"trained\":true"), "keys: %s", js ? js : "(null)");
    free(js);
    js = model_config_to_json(&c, "{\"source\":{\"repo\":\"valeoai/Franca\"},\"embed_dim\":5}");
    CHECK(js && strstr(js, "\"source\":{\"repo\":\"valeoai/Franca\"}") && strstr(js, "\"embed_dim\":768") &&
          !strstr(js, "\"embed_dim\":5"), "extra merge: %s", js ? js : "(null)");
    free(js);
    CHECK(model_config_to_json(&c, "[1]") == NULL, "extra not an object");
    CHECK(model_config_to_json(&c, "{bad") == NULL, "extra invalid");

    /* optional keys */
    CHECK(parse_modified("rasa_layers", NULL, &c, err, sizeof err) == 0 && c.rasa_layers == 0, "rasa default");
    CHECK(parse_modified("format_version", NULL, &c, err, sizeof err) == 0, "format_version default");
    CHECK(parse_modified("norm_eps", "1", &c, err, sizeof err) == -1, "eps 1 rejected");
    CHECK(parse_modified("family", "\"dinov2\"", &c, err, sizeof err) == 0 && c.family == FAMILY_DINOV2, "dinov2");

    /* every required key */
    const char *required[] = { "family", "embed_dim", "depth", "num_heads", "ffn", "ffn_hidden", "patch_size",
                               "pos_grid", "layerscale", "norm_eps", "register_tokens", "matryoshka_widths",
                               "preprocess", "name", "version", "trained" };
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        char needle[64];
        snprintf(needle, sizeof needle, "missing required key '%s'", required[i]);
        expect_cfg_reject(required[i], NULL, needle);
    }
    expect_cfg_reject("format_version", "2", "unsupported format_version 2");
    expect_cfg_reject("family", "\"vit\"", "family");
    expect_cfg_reject("ffn", "\"gelu\"", "ffn");
    expect_cfg_reject("ffn", "1", "ffn");
    expect_cfg_reject("embed_dim", "\"768\"", "must be an integer");
    expect_cfg_reject("embed_dim", "768.5", "must be an integer");
    expect_cfg_reject("embed_dim", "0", "embed_dim");
    expect_cfg_reject("embed_dim", "8200", "embed_dim");
    expect_cfg_reject("embed_dim", "-768", "embed_dim");
    expect_cfg_reject("embed_dim", "9223372036854775807", "embed_dim");
    expect_cfg_reject("depth", "257", "depth");
    expect_cfg_reject("num_heads", "7", "does not divide");
    expect_cfg_reject("num_heads", "0", "num_heads");
    expect_cfg_reject("ffn_hidden", "65537", "ffn_hidden");
    expect_cfg_reject("patch_size", "65", "patch_size");
    expect_cfg_reject("patch_size", "0", "patch_size");
    expect_cfg_reject("pos_grid", "257", "pos_grid");
    expect_cfg_reject("register_tokens", "17", "register_tokens");
    expect_cfg_reject("register_tokens", "-1", "register_tokens");
    expect_cfg_reject("rasa_layers", "65", "rasa_layers");
    expect_cfg_reject("rasa_layers", "true", "rasa_layers");
    expect_cfg_reject("layerscale", "1", "layerscale");
    expect_cfg_reject("trained", "\"yes\"", "trained");
    expect_cfg_reject("norm_eps", "0", "norm_eps");
    expect_cfg_reject("norm_eps", "-1e-6", "norm_eps");
    expect_cfg_reject("norm_eps", "\"1e-6\"", "norm_eps");
    expect_cfg_reject("norm_eps", "1e300", "norm_eps");
    expect_cfg_reject("matryoshka_widths", "[96,48,768]", "ascending");
    expect_cfg_reject("matryoshka_widths", "[48,48,768]", "ascending");
    expect_cfg_reject("matryoshka_widths", "[48,96,1024]", "matryoshka width");
    expect_cfg_reject("matryoshka_widths", "[48,96]", "last matryoshka width");
    expect_cfg_reject("matryoshka_widths", "[]", "matryoshka_widths");
    expect_cfg_reject("matryoshka_widths", "[0,768]", "matryoshka_widths[0]");
    expect_cfg_reject("matryoshka_widths", "[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,768]", "matryoshka_widths");
    expect_cfg_reject("matryoshka_widths", "\"48,768\"", "matryoshka_widths");
    expect_cfg_reject("preprocess", "[]", "preprocess");
    expect_cfg_reject("preprocess", "{\"resize_size\":256,\"crop_size\":224,\"mean\":[0.5,0.5],\"std\":[1,1,1]}",
                      "preprocess.mean");
    expect_cfg_reject("preprocess", "{\"resize_size\":256,\"crop_size\":224,\"std\":[1,1,1]}",
                      "missing required key 'preprocess.mean'");
    expect_cfg_reject("preprocess", "{\"resize_size\":256,\"crop_size\":224,\"mean\":[0.5,0.5,0.5],\"std\":[1,0,1]}",
                      "preprocess.std");
    expect_cfg_reject("preprocess", "{\"resize_size\":200,\"crop_size\":224,\"mean\":[0.5,0.5,0.5],\"std\":[1,1,1]}",
                      "resize_size");
    expect_cfg_reject("preprocess", "{\"resize_size\":256,\"crop_size\":225,\"mean\":[0.5,0.5,0.5],\"std\":[1,1,1]}",
                      "multiple of patch_size");
    expect_cfg_reject("name", "1", "name");
    expect_cfg_reject("name", "\"\"", "name");
    expect_cfg_reject("name", "\"a\\nb\"", "control character");
    char longname[300] = "\"";
    memset(longname + 1, 'x', 200);
    strcpy(longname + 201, "\"");
    expect_cfg_reject("name", longname, "longer than");
    expect_cfg_reject("version", "null", "version");

    const char *bad_json[] = { "", "{", "[1,2]", "null", "{\"a\":1,\"a\":2}", "{\"name\":\"x\"} trailing" };
    for (size_t i = 0; i < sizeof bad_json / sizeof bad_json[0]; i++) {
        err[0] = '\0';
        CHECK(model_config_from_json(bad_json[i], strlen(bad_json[i]), &c, err, sizeof err) == -1 &&
                  one_line(err) && strstr(err, "franca metadata"),
              "bad JSON %zu: '%s'", i, err);
    }
    /* length is honoured: the text after len is not read */
    size_t cl = strlen(contract_json);
    CHECK(model_config_from_json(contract_json, cl - 1, &c, err, sizeof err) == -1, "truncated by len");

    /* defaults */
    model_config_defaults(&c, 1024, 24);
    CHECK(c.num_heads == 16 && c.ffn_hidden == 2736 && c.n_widths == 5 && c.widths[0] == 64 &&
          c.widths[4] == 1024 && c.patch_size == 14 && c.layerscale && c.preprocess.crop_size == 224,
          "defaults");
    CHECK(model_config_validate(&c, err, sizeof err) == -1 && strstr(err, "name"), "defaults lack a name");
    snprintf(c.name, sizeof c.name, "x");
    CHECK(model_config_validate(&c, err, sizeof err) == 0, "%s", err);
    model_config_defaults(&c, 8, 1);
    snprintf(c.name, sizeof c.name, "x");
    CHECK(c.n_widths == 4 && c.widths[0] == 1 && c.widths[3] == 8, "small D widths");
    CHECK(model_config_validate(&c, err, sizeof err) == 0, "%s", err);
}

/* ---------------------------------------------------------- weights arena -- */

static int aligned64(const void *p) { return ((uintptr_t)p & 63u) == 0; }

static void test_arena(void)
{
    struct model_config c;
    tiny_cfg(&c);
    c.register_tokens = 3;
    struct vit_weights w;
    char err[ERR_LEN];
    CHECK(vit_weights_alloc(&c, &w, err, sizeof err) == 0, "%s", err);
    size_t D = 32, M = 4, Hs = (size_t)c.ffn_hidden;
    size_t per_block = 2 * D + 3 * D * D + 3 * D + D * D + D + D + 2 * D + 2 * Hs * D + 2 * Hs + D * Hs + D + D;
    size_t min = D + (1 + M * M) * D + D + 3 * D + D * 3 * 14 * 14 + D + (size_t)c.depth * per_block + 2 * D +
                 3 * 2 * D;
    CHECK(w.arena_floats >= min && w.arena_floats == vit_weights_param_floats(&c), "param floats %zu < %zu",
          w.arena_floats, min);
    CHECK(vit_weights_floats(&c) > w.arena_floats, "table region");
    CHECK(aligned64(w.arena) && aligned64(w.pos_embed) && aligned64(w.blocks[1].qkv_w) && aligned64(w.rasa_w),
          "alignment");
    CHECK((float *)(void *)w.blocks >= w.arena + w.arena_floats, "block table after the parameters");
    CHECK(w.register_tokens != NULL && w.mask_token != NULL && w.blocks[0].ls1 != NULL, "pointers");
    CHECK(w.rasa_w + 3 * 2 * D <= w.arena + w.arena_floats, "rasa inside");
    vit_weights_free(&w);
    CHECK(w.arena == NULL, "freed");
    c.layerscale = false;
    c.rasa_layers = 0;
    CHECK(vit_weights_alloc(&c, &w, err, sizeof err) == 0, "%s", err);
    CHECK(w.blocks[0].ls1 == NULL && w.blocks[1].ls2 == NULL && w.rasa_w == NULL, "absent tensors are NULL");
    vit_weights_free(&w);
    c.embed_dim = 0;
    CHECK(vit_weights_alloc(&c, &w, err, sizeof err) == -1 && one_line(err), "invalid sizes");
}

/* ------------------------------------------------------------ save / load -- */

static int save_tiny(const char *path, struct model_config *c, enum st_dtype dt, uint64_t seed)
{
    struct vit_weights w;
    char err[ERR_LEN];
    if (vit_weights_alloc(c, &w, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    vit_weights_init_random(c, &w, seed);
    int rc = checkpoint_save(path, c, &w, dt, "{\"source\":\"unit test\"}", err, sizeof err);
    if (rc)
        fprintf(stderr, "save: %s\n", err);
    vit_weights_free(&w);
    return rc;
}

static void test_save_load(void)
{
    char path[300], err[ERR_LEN] = "";
    struct model_config variants[5];
    tiny_cfg(&variants[0]);
    tiny_cfg(&variants[1]);
    variants[1].family = FAMILY_DINOV2;
    variants[1].ffn = FFN_MLP;
    variants[1].ffn_hidden = 128;
    variants[1].rasa_layers = 0;
    tiny_cfg(&variants[2]);
    variants[2].layerscale = false;
    variants[2].register_tokens = 4;
    tiny_cfg(&variants[3]);
    variants[3].patch_size = 16;
    variants[3].pos_grid = 14;
    tiny_cfg(&variants[4]);
    variants[4].depth = 1;
    variants[4].rasa_layers = 9;
    for (int v = 0; v < 5; v++) {
        struct model_config *c = &variants[v];
        tmp_path(path, sizeof path, "ck.safetensors");
        struct vit_weights w;
        CHECK(vit_weights_alloc(c, &w, err, sizeof err) == 0, "%s", err);
        vit_weights_init_random(c, &w, 1234 + (uint64_t)v);
        CHECK(checkpoint_save(path, c, &w, ST_F32, NULL, err, sizeof err) == 0, "variant %d: %s", v, err);
        struct checkpoint ck;
        int rc = checkpoint_load(path, &ck, err, sizeof err);
        CHECK(rc == 0, "variant %d: %s", v, err);
        if (rc == 0) {
            CHECK(memcmp(&ck.cfg, c, sizeof *c) == 0, "variant %d: config differs", v);
            CHECK(ck.w.arena_floats == w.arena_floats &&
                      memcmp(ck.w.arena, w.arena, w.arena_floats * sizeof(float)) == 0,
                  "variant %d: f32 weights not bit-exact", v);
            CHECK(ck.w.mask_token != NULL, "mask token kept");
            char hex[65];
            CHECK(sha256_file_hex(path, hex, err, sizeof err) == 0 && strcmp(hex, ck.fingerprint) == 0,
                  "fingerprint %s vs %s", ck.fingerprint, hex);
            if (v == 0) {
                /* compare with the system's sha256sum where available */
                char cmd[400], line[200] = "";
                snprintf(cmd, sizeof cmd, "sha256sum '%s' 2>/dev/null", path);
                FILE *p = popen(cmd, "r");
                if (p) {
                    if (!fgets(line, sizeof line, p))
                        line[0] = '\0';
                    pclose(p);
                }
                if (line[0])
                    CHECK(strncmp(line, ck.fingerprint, 64) == 0, "sha256sum says %.64s, we say %s", line,
                          ck.fingerprint);
                else
                    fprintf(stderr, "note: sha256sum not available, skipped\n");
            }
            checkpoint_free(&ck);
            CHECK(ck.w.arena == NULL, "checkpoint_free clears");
        }
        vit_weights_free(&w);
    }

    /* bf16 and f16: values equal the rounded f32 */
    for (int dt = ST_BF16; dt <= ST_F16; dt++) {
        struct model_config c;
        tiny_cfg(&c);
        struct vit_weights w;
        vit_weights_alloc(&c, &w, err, sizeof err);
        vit_weights_init_random(&c, &w, 7);
        tmp_path(path, sizeof path, "ck16.safetensors");
        CHECK(checkpoint_save(path, &c, &w, (enum st_dtype)dt, NULL, err, sizeof err) == 0, "%s", err);
        struct checkpoint ck;
        CHECK(checkpoint_load(path, &ck, err, sizeof err) == 0, "%s", err);
        int bad = 0;
        for (size_t i = 0; i < w.arena_floats; i++) {
            float want = dt == ST_BF16 ? st_bf16_to_f32(st_f32_to_bf16(w.arena[i]))
                                       : st_f16_to_f32(st_f32_to_f16(w.arena[i]));
            bad += ck.w.arena && memcmp(&want, &ck.w.arena[i], 4) != 0;
        }
        CHECK(bad == 0, "dtype %d: %d values differ", dt, bad);
        checkpoint_free(&ck);
        vit_weights_free(&w);
    }

    /* a checkpoint without mask_token loads with mask_token == NULL */
    {
        struct model_config c;
        tiny_cfg(&c);
        struct vit_weights w;
        vit_weights_alloc(&c, &w, err, sizeof err);
        vit_weights_init_random(&c, &w, 9);
        w.mask_token = NULL;
        tmp_path(path, sizeof path, "nomask.safetensors");
        CHECK(checkpoint_save(path, &c, &w, ST_F32, NULL, err, sizeof err) == 0, "%s", err);
        struct checkpoint ck;
        CHECK(checkpoint_load(path, &ck, err, sizeof err) == 0 && ck.w.mask_token == NULL, "no mask: %s", err);
        checkpoint_free(&ck);
        vit_weights_free(&w);
    }

    /* save refuses invalid configs and bad extra json */
    {
        struct model_config c;
        tiny_cfg(&c);
        struct vit_weights w;
        vit_weights_alloc(&c, &w, err, sizeof err);
        tmp_path(path, sizeof path, "refused.safetensors");
        c.num_heads = 3;
        CHECK(checkpoint_save(path, &c, &w, ST_F32, NULL, err, sizeof err) == -1 && strstr(err, "num_heads"),
              "%s", err);
        c.num_heads = 2;
        CHECK(checkpoint_save(path, &c, &w, ST_F32, "[]", err, sizeof err) == -1 && strstr(err, "extra"), "%s", err);
        CHECK(access(path, F_OK) != 0, "nothing written");
        vit_weights_free(&w);
    }
}

static void test_init(void)
{
    struct model_config c;
    tiny_cfg(&c);
    struct vit_weights a, b;
    char err[ERR_LEN];
    vit_weights_alloc(&c, &a, err, sizeof err);
    vit_weights_alloc(&c, &b, err, sizeof err);
    vit_weights_init_random(&c, &a, 42);
    vit_weights_init_random(&c, &b, 42);
    CHECK(memcmp(a.arena, b.arena, a.arena_floats * sizeof(float)) == 0, "same seed, same weights");
    vit_weights_init_random(&c, &b, 43);
    CHECK(memcmp(a.arena, b.arena, a.arena_floats * sizeof(float)) != 0, "different seed, different weights");
    /* statistics per docs/model.md §2.6 */
    size_t n = 3 * 32 * 32;
    double s = 0, s2 = 0, mx = 0;
    for (size_t i = 0; i < n; i++) {
        double x = a.blocks[0].qkv_w[i];
        s += x;
        s2 += x * x;
        if (fabs(x) > mx)
            mx = fabs(x);
    }
    double mean = s / (double)n, sd = sqrt(s2 / (double)n - mean * mean);
    CHECK(fabs(mean) < 0.002 && sd > 0.015 && sd < 0.02 && mx <= 0.04 + 1e-6, "qkv mean %g sd %g max %g", mean, sd, mx);
    int ok = 1;
    for (int i = 0; i < 32; i++) {
        ok &= a.blocks[1].norm1_w[i] == 1.0f && a.blocks[1].norm2_b[i] == 0.0f && a.blocks[0].ls1[i] == 1e-5f &&
              a.blocks[1].ls2[i] == 1e-5f && a.norm_w[i] == 1.0f && a.norm_b[i] == 0.0f &&
              a.blocks[0].qkv_b[i] == 0.0f && a.mask_token[i] == 0.0f && fabsf(a.cls_token[i]) < 1e-5f;
    }
    CHECK(ok, "constant inits");
    double bound = 1.0 / sqrt(3.0 * 14 * 14);
    ok = 1;
    for (size_t i = 0; i < 32 * 3 * 14 * 14; i++)
        ok &= fabs(a.patch_w[i]) <= bound;
    CHECK(ok, "patch init bound");
    /* RASA rows are not degenerate (rasa_prepare needs independent rows) */
    double dot = 0, n0 = 0, n1 = 0;
    for (int i = 0; i < 32; i++) {
        dot += a.rasa_w[i] * a.rasa_w[32 + i];
        n0 += a.rasa_w[i] * a.rasa_w[i];
        n1 += a.rasa_w[32 + i] * a.rasa_w[32 + i];
    }
    CHECK(n0 > 0 && n1 > 0 && fabs(dot) / sqrt(n0 * n1) < 0.99, "rasa rows independent");
    vit_weights_free(&a);
    vit_weights_free(&b);
}

/* ----------------------------------------------------- hostile checkpoints -- */

enum mut { M_NONE, M_DROP, M_ADD, M_RESHAPE, M_NAN };

/* Copies src to dst, applying one tensor mutation and/or replacing the franca
 * metadata: meta_key/meta_value change one key of the JSON object (value NULL
 * removes it); raw_meta replaces the whole string; no_meta drops it. */
static void rewrite(const char *src, const char *dst, enum mut m, const char *tname,
                    const char *meta_key, const char *meta_value, const char *raw_meta, int no_meta)
{
    struct st_file st;
    char err[ERR_LEN];
    if (st_open(src, &st, err, sizeof err)) {
        fprintf(stderr, "rewrite: %s\n", err);
        exit(2);
    }
    struct st_writer *w = st_writer_new();
    float **bufs = calloc(st.n_tensors + 1, sizeof *bufs);
    for (size_t i = 0; i < st.n_tensors; i++) {
        const struct st_tensor *t = &st.tensors[i];
        if (m == M_DROP && strcmp(t->name, tname) == 0)
            continue;
        size_t n = st_numel(t);
        bufs[i] = calloc(n + 8, sizeof(float));
        st_to_f32(t, 0, n, bufs[i]);
        int64_t shape[ST_MAX_DIMS];
        memcpy(shape, t->shape, sizeof shape);
        if (m == M_RESHAPE && strcmp(t->name, tname) == 0) {
            /* same element count, different shape: [a,b] -> [b,a] or [n] -> [1,n] */
            if (t->ndim == 2 && shape[0] != shape[1]) {
                int64_t s = shape[0];
                shape[0] = shape[1];
                shape[1] = s;
            } else {
                shape[0] += 1;
                free(bufs[i]);
                bufs[i] = calloc(n * 2 + 8, sizeof(float));
            }
        }
        if (m == M_NAN && strcmp(t->name, tname) == 0)
            bufs[i][n / 2] = NAN;
        st_writer_add_f32(w, t->name, t->dtype, bufs[i], t->ndim, shape, err, sizeof err);
    }
    static float extra[4096];
    int64_t es[1] = { 32 };
    if (m == M_ADD)
        st_writer_add_f32(w, tname, ST_F32, extra, 1, es, err, sizeof err);
    const char *meta = st_metadata_get(&st, "franca");
    char *newmeta = NULL;
    if (raw_meta) {
        newmeta = strdup(raw_meta);
    } else if (meta_key) {
        json_t *root = json_loads(meta, 0, NULL);
        if (meta_value)
            json_object_set_new(root, meta_key, json_loads(meta_value, JSON_DECODE_ANY, NULL));
        else
            json_object_del(root, meta_key);
        newmeta = json_dumps(root, JSON_COMPACT);
        json_decref(root);
    } else if (meta) {
        newmeta = strdup(meta);
    }
    if (!no_meta && newmeta)
        st_writer_set_metadata(w, "franca", newmeta, err, sizeof err);
    st_writer_set_metadata(w, "other", "kept", err, sizeof err);
    if (st_writer_finish(w, dst, err, sizeof err)) {
        fprintf(stderr, "rewrite: %s\n", err);
        exit(2);
    }
    st_writer_free(w);
    free(newmeta);
    for (size_t i = 0; i < st.n_tensors; i++)
        free(bufs[i]);
    free(bufs);
    st_close(&st);
}

static void expect_load_fail(const char *what, const char *path, const char *needle1, const char *needle2)
{
    struct checkpoint ck;
    char err[ERR_LEN] = "";
    int rc = checkpoint_load(path, &ck, err, sizeof err);
    CHECK(rc == -1, "%s: loaded", what);
    CHECK(one_line(err) && strstr(err, path), "%s: message '%s' not one line naming the file", what, err);
    CHECK(strstr(err, needle1) && (!needle2 || strstr(err, needle2)), "%s: message '%s' lacks '%s'/'%s'", what,
          err, needle1, needle2 ? needle2 : "");
    CHECK(ck.w.arena == NULL && ck.cfg.embed_dim == 0, "%s: ck not zeroed", what);
    if (rc == 0)
        checkpoint_free(&ck);
}

static void test_hostile_checkpoints(void)
{
    char base[300], p[300], err[ERR_LEN];
    struct model_config c;
    tiny_cfg(&c);
    tmp_path(base, sizeof base, "base.safetensors");
    CHECK(save_tiny(base, &c, ST_F32, 5) == 0, "base");
    tmp_path(p, sizeof p, "mut.safetensors");

    /* the identity rewrite loads (and extra metadata keys are fine) */
    rewrite(base, p, M_NONE, NULL, NULL, NULL, NULL, 0);
    struct checkpoint ck;
    CHECK(checkpoint_load(p, &ck, err, sizeof err) == 0, "identity rewrite: %s", err);
    checkpoint_free(&ck);
    rewrite(base, p, M_NONE, NULL, "unknown_key", "{\"a\":[1,2,3]}", NULL, 0);
    CHECK(checkpoint_load(p, &ck, err, sizeof err) == 0, "unknown metadata key: %s", err);
    checkpoint_free(&ck);

    rewrite(base, p, M_DROP, "blocks.1.attn.proj.bias", NULL, NULL, NULL, 0);
    expect_load_fail("missing tensor", p, "missing tensor 'blocks.1.attn.proj.bias'", "expected shape [32]");
    rewrite(base, p, M_DROP, "pos_embed", NULL, NULL, NULL, 0);
    expect_load_fail("missing pos_embed", p, "missing tensor 'pos_embed'", NULL);
    rewrite(base, p, M_DROP, "rasa.pos_pred.weight", NULL, NULL, NULL, 0);
    expect_load_fail("missing rasa", p, "missing tensor 'rasa.pos_pred.weight'", NULL);
    rewrite(base, p, M_ADD, "blocks.2.norm1.weight", NULL, NULL, NULL, 0);
    expect_load_fail("extra tensor", p, "unexpected tensor 'blocks.2.norm1.weight'", "depth=2");
    rewrite(base, p, M_ADD, "head.weight", NULL, NULL, NULL, 0);
    expect_load_fail("extra head", p, "unexpected tensor 'head.weight'", NULL);
    rewrite(base, p, M_RESHAPE, "blocks.0.attn.qkv.weight", NULL, NULL, NULL, 0);
    expect_load_fail("wrong shape", p, "tensor 'blocks.0.attn.qkv.weight' has shape [32,96], expected [96,32]", NULL);
    rewrite(base, p, M_RESHAPE, "norm.bias", NULL, NULL, NULL, 0);
    expect_load_fail("wrong vector shape", p, "'norm.bias' has shape [33], expected [32]", NULL);
    rewrite(base, p, M_NAN, "blocks.1.mlp.w3.weight", NULL, NULL, NULL, 0);
    expect_load_fail("NaN weight", p, "non-finite", "blocks.1.mlp.w3.weight");

    /* metadata that lies about the tensors */
    rewrite(base, p, M_NONE, NULL, "embed_dim", "64", NULL, 0);
    expect_load_fail("embed_dim lie (widths inconsistent)", p, "last matryoshka width 32 must equal embed_dim 64",
                     NULL);
    char p2[300];
    tmp_path(p2, sizeof p2, "mut2.safetensors");
    rewrite(base, p2, M_NONE, NULL, "matryoshka_widths", "[4,8,16,32,64]", NULL, 0);
    rewrite(p2, p, M_NONE, NULL, "embed_dim", "64", NULL, 0);
    unlink(p2);
    expect_load_fail("embed_dim lie", p, "cls_token' has shape [1,1,32], expected [1,1,64]", "embed_dim=64");
    rewrite(base, p, M_NONE, NULL, "depth", "3", NULL, 0);
    expect_load_fail("depth lie (more)", p, "missing tensor 'blocks.2.", "depth=3");
    rewrite(base, p, M_NONE, NULL, "depth", "1", NULL, 0);
    expect_load_fail("depth lie (fewer)", p, "unexpected tensor 'blocks.1.", "depth=1");
    rewrite(base, p, M_NONE, NULL, "ffn_hidden", "64", NULL, 0);
    expect_load_fail("ffn_hidden lie", p, "blocks.0.mlp.w12.weight' has shape", "ffn_hidden=64");
    rewrite(base, p, M_NONE, NULL, "ffn", "\"mlp\"", NULL, 0);
    expect_load_fail("ffn kind lie", p, "missing tensor 'blocks.0.mlp.fc1.weight'", NULL);
    rewrite(base, p, M_NONE, NULL, "pos_grid", "5", NULL, 0);
    expect_load_fail("pos_grid lie", p, "'pos_embed' has shape [1,17,32], expected [1,26,32]", "pos_grid=5");
    rewrite(base, p, M_NONE, NULL, "patch_size", "16", NULL, 0);
    expect_load_fail("patch_size lie", p, "patch_embed.proj.weight' has shape [32,3,14,14], expected [32,3,16,16]",
                     NULL);
    rewrite(base, p, M_NONE, NULL, "rasa_layers", "1", NULL, 0);
    expect_load_fail("rasa_layers lie (fewer)", p, "unexpected tensor 'rasa.pre_pos_layers.1.weight'", "rasa_layers=1");
    rewrite(base, p, M_NONE, NULL, "rasa_layers", "3", NULL, 0);
    expect_load_fail("rasa_layers lie (more)", p, "missing tensor 'rasa.pre_pos_layers.2.weight'", NULL);
    rewrite(base, p, M_NONE, NULL, "rasa_layers", NULL, NULL, 0);
    expect_load_fail("rasa_layers omitted", p, "unexpected tensor 'rasa.", NULL);
    rewrite(base, p, M_NONE, NULL, "layerscale", "false", NULL, 0);
    expect_load_fail("layerscale lie", p, "unexpected tensor 'blocks.0.ls1.gamma'", NULL);
    rewrite(base, p, M_NONE, NULL, "register_tokens", "2", NULL, 0);
    expect_load_fail("register lie", p, "missing tensor 'register_tokens'", NULL);
    rewrite(base, p, M_NONE, NULL, "num_heads", "5", NULL, 0);
    expect_load_fail("heads do not divide", p, "num_heads 5 does not divide embed_dim 32", NULL);

    /* missing or malformed franca metadata */
    rewrite(base, p, M_NONE, NULL, NULL, NULL, NULL, 1);
    expect_load_fail("no franca metadata", p, "no \"franca\" entry", NULL);
    rewrite(base, p, M_NONE, NULL, NULL, NULL, "{\"embed_dim\": 32,", 0);
    expect_load_fail("invalid JSON metadata", p, "franca metadata: invalid JSON", NULL);
    rewrite(base, p, M_NONE, NULL, NULL, NULL, "[32]", 0);
    expect_load_fail("non-object metadata", p, "franca metadata", "object");
    rewrite(base, p, M_NONE, NULL, NULL, NULL, "", 0);
    expect_load_fail("empty metadata", p, "franca metadata: invalid JSON", NULL);
    rewrite(base, p, M_NONE, NULL, "depth", NULL, NULL, 0);
    expect_load_fail("metadata missing depth", p, "missing required key 'depth'", NULL);
    rewrite(base, p, M_NONE, NULL, "embed_dim", "\"32\"", NULL, 0);
    expect_load_fail("metadata string embed_dim", p, "'embed_dim' must be an integer", NULL);

    /* not safetensors at all */
    FILE *f = fopen(p, "wb");
    fputs("not a checkpoint", f);
    fclose(f);
    expect_load_fail("text file", p, "exceeds the file size", NULL);
    f = fopen(p, "wb");
    fclose(f);
    expect_load_fail("empty file", p, "empty", NULL);
    unlink(p);
    expect_load_fail("missing file", p, "cannot open", NULL);
    unlink(base);
}

int main(void)
{
    const char *t = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/franca-ck-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 2;
    }
    test_sha256();
    test_config();
    test_arena();
    test_init();
    test_save_load();
    test_hostile_checkpoints();
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "warning: could not remove %s\n", tmpdir);
    printf("test_checkpoint: ");
    return check_summary();
}
