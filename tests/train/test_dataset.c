/* IDX reader (raw and gzip'd, hostile headers), image-folder reader. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "../unit/check.h"
#include "chart.h"
#include "dataset.h"

static size_t make_idx(uint8_t *buf, int ndim, const uint32_t *dims, size_t data_bytes)
{
    buf[0] = 0;
    buf[1] = 0;
    buf[2] = 0x08;
    buf[3] = (uint8_t)ndim;
    for (int d = 0; d < ndim; d++) {
        buf[4 + 4 * d] = dims[d] >> 24;
        buf[5 + 4 * d] = dims[d] >> 16 & 0xff;
        buf[6 + 4 * d] = dims[d] >> 8 & 0xff;
        buf[7 + 4 * d] = dims[d] & 0xff;
    }
    size_t h = 4 + 4 * (size_t)ndim;
    for (size_t i = 0; i < data_bytes; i++) buf[h + i] = (uint8_t)(i * 7);
    return h + data_bytes;
}

static void write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    fwrite(p, 1, n, f);
    fclose(f);
}

static void write_gz(const char *path, const void *p, size_t n)
{
    gzFile g = gzopen(path, "wb");
    gzwrite(g, p, (unsigned)n);
    gzclose(g);
}

int main(void)
{
    static uint8_t buf[1 << 16];
    char err[512];
    struct idx_images im;
    uint8_t *labels;
    int n;

    uint32_t d3[3] = {5, 4, 3};
    size_t len = make_idx(buf, 3, d3, 60);
    CHECK(idx_parse_images(buf, len, "x", &im, err, sizeof err) == 0, "valid images: %s", err);
    CHECK(im.n == 5 && im.rows == 4 && im.cols == 3 && im.data[1] == 7, "dims");
    idx_images_free(&im);

    /* Hostile headers: each a clear error, never a crash. */
    struct { const char *what; size_t cut; int patch_at; uint8_t patch; } bad[] = {
        {"empty", 0, -1, 0},        {"short header", 3, -1, 0}, {"truncated dims", 10, -1, 0},
        {"truncated data", 40, -1, 0}, {"bad magic", 0, 0, 1},   {"bad type", 0, 2, 0x0d},
        {"bad ndim", 0, 3, 2},      {"zero dim", 0, 7, 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint8_t b2[256];
        size_t l2 = make_idx(b2, 3, d3, 60);
        if (bad[i].cut || !strcmp(bad[i].what, "empty")) l2 = bad[i].cut;
        if (bad[i].patch_at >= 0) b2[bad[i].patch_at] = bad[i].patch;
        err[0] = 0;
        CHECK(idx_parse_images(b2, l2, "hostile.idx", &im, err, sizeof err) == -1 && im.data == NULL,
              "%s accepted", bad[i].what);
        CHECK(strstr(err, "hostile.idx") != NULL, "%s: message names the file: %s", bad[i].what, err);
    }
    /* Header promising more than the file holds, and trailing bytes. */
    uint32_t big[3] = {60000, 28, 28};
    len = make_idx(buf, 3, big, 100);
    CHECK(idx_parse_images(buf, len, "big", &im, err, sizeof err) == -1 && strstr(err, "promises"),
          "size mismatch: %s", err);
    uint32_t huge[3] = {0x40000000u, 0x40000000u, 2};
    len = make_idx(buf, 3, huge, 0);
    CHECK(idx_parse_images(buf, len, "huge", &im, err, sizeof err) == -1, "overflowing dims");
    len = make_idx(buf, 3, d3, 61);
    CHECK(idx_parse_images(buf, len, "trail", &im, err, sizeof err) == -1, "trailing bytes");

    uint32_t d1[1] = {5};
    len = make_idx(buf, 1, d1, 5);
    CHECK(idx_parse_labels(buf, len, "l", &labels, &n, err, sizeof err) == 0 && n == 5, "labels");
    free(labels);
    CHECK(idx_parse_labels(buf, len - 1, "l", &labels, &n, err, sizeof err) == -1, "short labels");
    CHECK(idx_parse_images(buf, len, "l", &im, err, sizeof err) == -1 && strstr(err, "dimensions"),
          "labels file as images: %s", err);

    /* Files: raw and gzip'd give the same; truncated gzip fails. */
    char dir[] = "/tmp/test_dataset_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char p_raw[256], p_gz[256], p_lab[256], p_bad[256], p_trunc[256];
    snprintf(p_raw, sizeof p_raw, "%s/img.idx", dir);
    snprintf(p_gz, sizeof p_gz, "%s/img.idx.gz", dir);
    snprintf(p_lab, sizeof p_lab, "%s/lab.idx.gz", dir);
    snprintf(p_bad, sizeof p_bad, "%s/lab4.idx", dir);
    snprintf(p_trunc, sizeof p_trunc, "%s/trunc.gz", dir);
    len = make_idx(buf, 3, d3, 60);
    write_file(p_raw, buf, len);
    write_gz(p_gz, buf, len);
    struct idx_images a, b;
    CHECK(idx_load_images(p_raw, &a, err, sizeof err) == 0, "raw file: %s", err);
    CHECK(idx_load_images(p_gz, &b, err, sizeof err) == 0, "gzip file: %s", err);
    CHECK(a.n == b.n && !memcmp(a.data, b.data, 60), "raw == gzip");
    idx_images_free(&a);
    idx_images_free(&b);
    FILE *f = fopen(p_gz, "rb");
    uint8_t gzb[4096];
    size_t gzl = fread(gzb, 1, sizeof gzb, f);
    fclose(f);
    write_file(p_trunc, gzb, gzl / 2);
    CHECK(idx_load_images(p_trunc, &a, err, sizeof err) == -1 && strstr(err, "trunc.gz"),
          "truncated gzip: %s", err);
    gzb[gzl / 2] ^= 0xff;
    gzb[gzl / 2 + 1] ^= 0x55;
    write_file(p_trunc, gzb, gzl);
    CHECK(idx_load_images(p_trunc, &a, err, sizeof err) == -1, "corrupt gzip");
    CHECK(idx_load_images("/nonexistent/x.idx", &a, err, sizeof err) == -1 &&
              strstr(err, "/nonexistent/x.idx"), "missing file: %s", err);

    len = make_idx(buf, 1, d1, 5);
    write_gz(p_lab, buf, len);
    uint32_t d4[1] = {4};
    len = make_idx(buf, 1, d4, 4);
    write_file(p_bad, buf, len);
    struct dataset ds;
    CHECK(dataset_open_idx(p_gz, p_lab, &ds, err, sizeof err) == 0 && ds.n == 5 && ds.labels,
          "dataset with labels: %s", err);
    struct image_rgb8 img;
    CHECK(dataset_get(&ds, 2, &img, err, sizeof err) == 0 && img.width == 3 && img.height == 4,
          "dataset_get");
    const uint8_t *src = ds.idx.data + 2 * 12;
    CHECK(img.data[0] == src[0] && img.data[1] == src[0] && img.data[2] == src[0] &&
              img.data[33] == src[11], "grayscale replicated to RGB");
    image_free(&img);
    CHECK(dataset_get(&ds, 5, &img, err, sizeof err) == -1, "index out of range");
    dataset_free(&ds);
    CHECK(dataset_open_idx(p_gz, p_bad, &ds, err, sizeof err) == -1 && strstr(err, "labels"),
          "label count mismatch: %s", err);

    /* Image folder: recursive, sorted, only JPEG/PNG. */
    char sub[256], p1[300], p2[300], p3[300];
    snprintf(sub, sizeof sub, "%s/folder", dir);
    mkdir(sub, 0755);
    snprintf(p1, sizeof p1, "%s/b", sub);
    mkdir(p1, 0755);
    snprintf(p1, sizeof p1, "%s/b/two.PNG", sub);
    snprintf(p2, sizeof p2, "%s/a.png", sub);
    snprintf(p3, sizeof p3, "%s/notes.txt", sub);
    double xs[2] = {0, 1}, ys[2] = {0, 1};
    struct chart_series s = {2, xs, ys};
    CHECK(chart_write_png(p1, &s, 1, &s, 1, err, sizeof err) == 0, "png: %s", err);
    CHECK(chart_write_png(p2, &s, 1, &s, 1, err, sizeof err) == 0, "png: %s", err);
    write_file(p3, "hello", 5);
    CHECK(dataset_open_folder(sub, &ds, err, sizeof err) == 0 && ds.n == 2, "folder: %s", err);
    if (ds.n == 2) {
        CHECK(!strcmp(ds.paths[0], p2) && !strcmp(ds.paths[1], p1), "sorted paths");
        CHECK(dataset_get(&ds, 1, &img, err, sizeof err) == 0 && img.width == 900, "decode: %s", err);
        image_free(&img);
    }
    dataset_free(&ds);
    snprintf(p1, sizeof p1, "%s/b", sub);
    CHECK(dataset_open_folder(p1, &ds, err, sizeof err) == 0 && ds.n == 1, "subfolder");
    dataset_free(&ds);
    CHECK(dataset_open_folder(dir, &ds, err, sizeof err) == 0 && ds.n == 2, "nested twice");
    dataset_free(&ds);
    snprintf(p1, sizeof p1, "%s/empty", dir);
    mkdir(p1, 0755);
    CHECK(dataset_open_folder(p1, &ds, err, sizeof err) == -1 && strstr(err, "no JPEG"),
          "empty folder: %s", err);

    /* Debian's Fashion-MNIST, when installed. */
    const char *fm = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";
    if (access(fm, R_OK) == 0) {
        CHECK(dataset_open_idx(fm, "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz",
                               &ds, err, sizeof err) == 0, "fashion-mnist: %s", err);
        CHECK(ds.n == 10000 && ds.idx.rows == 28 && ds.idx.cols == 28, "fashion-mnist dims");
        int maxl = 0;
        for (int i = 0; i < ds.n; i++)
            if (ds.labels[i] > maxl) maxl = ds.labels[i];
        CHECK(maxl == 9, "10 classes");
        dataset_free(&ds);
    }
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "cleanup");
    return check_summary();
}
