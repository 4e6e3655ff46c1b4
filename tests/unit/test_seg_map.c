/* The pixel <-> patch mapping of segmentation (server/seg_map.h) against
 * values worked out by hand for the eval preprocessing (resize 256, crop 224,
 * patches of 14), majority and tie rules, the padded crop, nearest-patch
 * upsampling; and label mask decoding (engine/image_labels.h). */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "errors.h"
#include "image_encode.h"
#include "image_labels.h"
#include "seg_map.h"

static char err[ERR_LEN];

/* 300 x 240: resized to 320 x 256, crop offsets left 48, top 16. Pixel x maps
 * to (x + 0.5) * 320 / 300 - 48: x = 44 lands at -0.53 (cut off), 45 at 0.53. */
static void test_axes(void)
{
    struct seg_map m;
    CHECK(seg_map_init(&m, 300, 240, 256, 224, 14, err, sizeof err) == 0, "init: %s", err);
    CHECK(m.grid_h == 16 && m.grid_w == 16, "grid 16x16");
    CHECK(m.col_of[44] < 0 && m.col_of[45] == 0, "left edge of the crop: %d %d", m.col_of[44],
          m.col_of[45]);
    CHECK(m.col_of[254] == 15 && m.col_of[255] >= 16, "right edge: %d %d", m.col_of[254],
          m.col_of[255]);
    /* y: (y + 0.5) * 256 / 240 - 16; y = 14 -> -0.53, y = 15 -> 0.53 */
    CHECK(m.row_of[14] < 0 && m.row_of[15] == 0 && m.row_of[224] == 15 && m.row_of[225] >= 16,
          "top and bottom edges");
    uint8_t *mask = calloc(300 * 240, 1), grid[256], *pix = malloc(300 * 240);
    for (int y = 0; y < 240; y++)
        for (int x = 0; x < 300; x++) mask[y * 300 + x] = x < 157 ? 1 : 2;
    CHECK(seg_map_down(&m, mask, grid) == 0, "down");
    CHECK(grid[0] == 1 && grid[15] == 2, "left part 1, right part 2");
    /* Patch column 8 is crop x 112..125: pixels x with 150 <= x + 0.5 < 163.125,
     * 150..162, of which 150..156 say 1 and 157..162 say 2 -> 1 (7 to 6). */
    CHECK(grid[7] == 1 && grid[8] == 1 && grid[9] == 2, "majority in a split patch: %d %d %d",
          grid[7], grid[8], grid[9]);
    for (int i = 0; i < 256; i++) grid[i] = (uint8_t)i;
    seg_map_up(&m, grid, pix);
    CHECK(pix[0] == 0 && pix[299] == 15 && pix[239 * 300] == 240 && pix[239 * 300 + 299] == 255,
          "cut-off corners take the nearest border patch");
    CHECK(pix[20 * 300 + 100] == (uint8_t)(m.row_of[20] * 16 + m.col_of[100]), "inner pixel");
    seg_map_free(&m);
    free(mask);
    free(pix);
}

/* A 100 x 100 image under a 112 resize and 224 crop: the crop is mostly zero
 * padding, whose patches no pixel reaches (255); ties go to the smaller label. */
static void test_padding_and_ties(void)
{
    struct seg_map m;
    CHECK(seg_map_init(&m, 100, 100, 112, 224, 14, err, sizeof err) == 0, "init: %s", err);
    uint8_t mask[100 * 100], grid[256];
    for (int i = 0; i < 100 * 100; i++) mask[i] = (uint8_t)(i % 2 ? 7 : 3);
    CHECK(seg_map_down(&m, mask, grid) == 0, "down");
    CHECK(grid[0] == 255, "a padding patch is 255");
    const int inner = 8 * 16 + 8; /* the image covers crop pixels 56..167 */
    CHECK(grid[inner] == 3 || grid[inner] == 7, "inner patch labelled %d", grid[inner]);
    seg_map_free(&m);
    uint8_t even[4] = {5, 4, 4, 5};
    CHECK(seg_map_init(&m, 2, 2, 14, 14, 14, err, sizeof err) == 0, "1 patch: %s", err);
    CHECK(seg_map_down(&m, even, grid) == 0 && grid[0] == 4, "a tie goes to the smaller label");
    seg_map_free(&m);
}

static void test_decode(void)
{
    uint8_t px[6 * 4], *png = NULL, *back = NULL;
    for (int i = 0; i < 24; i++) px[i] = (uint8_t)(i * 11);
    size_t len = 0;
    int w = 0, h = 0;
    CHECK(image_png_encode(px, 6, 4, 1, &png, &len, err, sizeof err) == 0, "encode: %s", err);
    CHECK(image_labels_decode(png, len, 1000, &back, &w, &h, err, sizeof err) == 0,
          "grey mask: %s", err);
    CHECK(back && w == 6 && h == 4 && !memcmp(back, px, 24), "grey values are the labels");
    free(back);
    CHECK(image_labels_decode(png, len, 10, &back, &w, &h, err, sizeof err) == -1 && !back,
          "over max_pixels refused");
    free(png);
    uint8_t rgb[6 * 4 * 3] = {0};
    CHECK(image_png_encode(rgb, 6, 4, 3, &png, &len, err, sizeof err) == 0, "rgb: %s", err);
    CHECK(image_labels_decode(png, len, 1000, &back, &w, &h, err, sizeof err) == -1 &&
          strstr(err, "grey or a palette"), "RGB refused: %s", err);
    CHECK(image_labels_decode(png, len / 2, 1000, &back, &w, &h, err, sizeof err) == -1,
          "truncated refused");
    free(png);
    CHECK(image_labels_decode((const uint8_t *)"GIF89a..", 8, 1000, &back, &w, &h, err,
                              sizeof err) == -1, "not a PNG");
}

int main(void)
{
    test_axes();
    test_padding_and_ties();
    test_decode();
    return check_summary();
}
