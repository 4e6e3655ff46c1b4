/* The request parsing of POST /v1/pca: the query-string split of
 * image_inputs (the route's keys out, the rest left for options.c), the
 * route's own options from JSON and from query values, and the colours and
 * layout of pca_picture. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "errors.h"
#include "image.h"
#include "image_inputs.h"
#include "options.h"
#include "pca_options.h"
#include "pca_picture.h"

static char err[ERR_LEN];

/* Splits qs; returns the code, with the rest in rest and the keys in *extra. */
static int split(const char *qs, char *rest, json_t **extra)
{
    *extra = json_object();
    return image_inputs_split_query(qs, pca_option_keys, *extra, rest, err, sizeof err);
}

static void test_split(void)
{
    char rest[256];
    json_t *x;
    CHECK(split("?widths=64&threshold=0.5&refit=true&crop=square", rest, &x) == 0, "%s", err);
    CHECK(strcmp(rest, "widths=64&crop=square") == 0, "rest '%s'", rest);
    CHECK(json_object_size(x) == 2 && !strcmp(json_string_value(json_object_get(x, "threshold")),
                                              "0.5"), "threshold moved as a string");
    json_decref(x);
    CHECK(split("thr%65shold=%30.25&format=json", rest, &x) == 0 && rest[0] == '\0', "%s", err);
    CHECK(!strcmp(json_string_value(json_object_get(x, "threshold")), "0.25"),
          "keys and values percent-decoded");
    json_decref(x);
    CHECK(split("widths=%zz&format=png", rest, &x) == 0 && !strcmp(rest, "widths=%zz"),
          "other keys' bad escapes are left for options.c ('%s')", rest);
    json_decref(x);
    CHECK(split("threshold=0.1&threshold=0.2", rest, &x) == -1 && strstr(err, "twice"), "%s", err);
    json_decref(x);
    CHECK(split("format", rest, &x) == -1 && strstr(err, "no value"), "%s", err);
    json_decref(x);
    CHECK(split("format=%4", rest, &x) == -1 && strstr(err, "percent"), "%s", err);
    json_decref(x);
    CHECK(split("format=%ff", rest, &x) == -1 && strstr(err, "UTF-8"), "%s", err);
    json_decref(x);
    CHECK(split("&&patch=true&&", rest, &x) == 0 && json_object_size(x) == 1 &&
          !strcmp(rest, ""), "a features key goes to the route too ('%s')", rest);
    json_decref(x);
}

static int parse(const char *json, bool query, struct pca_options *o)
{
    json_t *j = json_loads(json, 0, NULL);
    const int rc = pca_options_parse(j, query, o, err, sizeof err);
    json_decref(j);
    return rc;
}

static void test_options(void)
{
    struct pca_options o;
    CHECK(parse("{}", false, &o) == OPTIONS_OK && !o.has_threshold && !o.json && !o.has_format &&
          !o.bilinear && !o.rasa, "defaults");
    CHECK(parse("{\"threshold\": 0.3, \"refit\": true, \"format\": \"json\", \"upsample\": "
                "\"bilinear\", \"rasa\": true}", false, &o) == OPTIONS_OK && o.has_threshold &&
          o.threshold == 0.3 && o.refit && o.json && o.has_format && o.bilinear && o.rasa, "%s",
          err);
    CHECK(parse("{\"threshold\": 1}", false, &o) == OPTIONS_OK && o.threshold == 1, "integer 1");
    CHECK(parse("{\"threshold\": \"0.3\"}", false, &o) == OPTIONS_MALFORMED, "JSON string");
    CHECK(parse("{\"threshold\": 1.5}", false, &o) == OPTIONS_INVALID, "above 1");
    CHECK(parse("{\"threshold\": -0.1}", false, &o) == OPTIONS_INVALID, "below 0");
    CHECK(parse("{\"refit\": true}", false, &o) == OPTIONS_INVALID && strstr(err, "threshold"),
          "refit alone: %s", err);
    CHECK(parse("{\"refit\": 1}", false, &o) == OPTIONS_MALFORMED, "JSON refit 1");
    CHECK(parse("{\"format\": \"gif\"}", false, &o) == OPTIONS_MALFORMED, "format gif");
    CHECK(parse("{\"upsample\": null}", false, &o) == OPTIONS_MALFORMED, "upsample null");
    CHECK(parse("{\"cls\": true}", false, &o) == OPTIONS_MALFORMED && strstr(err, "does not apply"),
          "a features key: %s", err);
    CHECK(parse("{\"threshold\": \"0.5\", \"refit\": \"1\", \"format\": \"json\"}", true, &o) ==
          OPTIONS_OK && o.threshold == 0.5 && o.refit && o.json, "query values: %s", err);
    CHECK(parse("{\"threshold\": \"0.5x\"}", true, &o) == OPTIONS_MALFORMED, "query 0.5x");
    CHECK(parse("{\"threshold\": \"\"}", true, &o) == OPTIONS_MALFORMED, "query empty");
    CHECK(parse("{\"threshold\": \"nan\"}", true, &o) == OPTIONS_INVALID, "query nan");
    CHECK(parse("{\"threshold\": 0.5}", true, &o) == OPTIONS_MALFORMED, "query non-string");
    CHECK(parse("{\"rasa\": \"TRUE\"}", true, &o) == OPTIONS_OK && o.rasa, "query TRUE");
    CHECK(parse("{\"rasa\": \"yes\"}", true, &o) == OPTIONS_MALFORMED, "query yes");
}

static void test_picture(void)
{
    /* Four patches: colours min-max per component; background black. */
    const float proj[12] = {0, 1, 5, 2, 1, 5, 4, 3, 5, -1, 0, 0};
    const uint8_t fg[4] = {1, 1, 1, 0};
    uint8_t rgb[12];
    pca_picture_colours(proj, NULL, 4, rgb);
    CHECK(rgb[0] == 51 && rgb[3] == 153 && rgb[6] == 255 && rgb[9] == 0, "component 0 scaled");
    CHECK(rgb[1] == 85 && rgb[7] == 255 && rgb[10] == 0, "component 1 scaled");
    pca_picture_colours(proj, fg, 4, rgb);
    CHECK(rgb[0] == 0 && rgb[3] == 128 && rgb[6] == 255, "over the foreground only");
    CHECK(rgb[2] == 0 && rgb[5] == 0, "a flat component is 0");
    CHECK(rgb[9] == 0 && rgb[10] == 0 && rgb[11] == 0, "background black");

    /* Two widths, one image of a 2x2 grid at side 28: 56 wide, caption + 28 high. */
    const uint8_t tile[12] = {255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9};
    const uint8_t *tiles[2] = {tile, tile};
    const int widths[2] = {16, 64};
    uint8_t *png;
    size_t len;
    CHECK(pca_picture_png(tiles, widths, 2, 1, 2, 28, false, &png, &len, err, sizeof err) == 0,
          "%s", err);
    struct image_rgb8 img;
    struct image_decode_opts dopt;
    image_decode_opts_default(&dopt);
    if (image_decode(png, len, &dopt, &img, err, sizeof err) == 0) {
        const int cap = img.height - 28;
        CHECK(img.width == 56 && cap > 0 && cap < 28, "size %dx%d", img.width, img.height);
        const uint8_t *p = img.data + ((size_t)(cap + 20) * img.width + 48) * 3;
        CHECK(p[0] == 9 && p[1] == 9 && p[2] == 9, "nearest: the patch's block");
        bool text = false;
        for (int i = 0; i < cap * img.width * 3; i++) text |= img.data[i] == 255;
        CHECK(text, "a caption is drawn");
        image_free(&img);
    } else {
        CHECK(0, "decode: %s", err);
    }
    free(png);
    CHECK(pca_picture_png(tiles, widths, 2, 1, 2, 1, false, &png, &len, err, sizeof err) == -1,
          "a side under the grid is refused");
}

int main(void)
{
    test_split();
    test_options();
    test_picture();
    return check_summary();
}
