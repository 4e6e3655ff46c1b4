/* Training and evaluation images: IDX files (MNIST / Fashion-MNIST, raw or
 * gzip'd) and image folders (JPEG and PNG, recursive).
 *
 * IDX: magic 0x00 0x00, type 0x08 (unsigned byte), ndim, then ndim big-endian
 * uint32 dimensions, then the bytes. Images are 3-D [n, rows, cols], labels 1-D
 * [n]. The header must match the (decompressed) size exactly; anything else is
 * rejected with a message naming the file. */
#ifndef FRANCA_TRAIN_DATASET_H
#define FRANCA_TRAIN_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "image.h"

/* Largest decompressed IDX file accepted (decompression bombs). */
#define IDX_MAX_BYTES ((size_t)1 << 31)

struct idx_images {
    int n, rows, cols;
    uint8_t *data;   /* n * rows * cols, row-major, malloc'd */
};

/* Reads the whole file (gunzipping when it starts with the gzip magic). */
int idx_read_file(const char *path, uint8_t **buf, size_t *len, char *err, size_t errlen);
/* Parses an in-memory IDX buffer (already decompressed); copies the data. */
int idx_parse_images(const uint8_t *buf, size_t len, const char *label,
                     struct idx_images *out, char *err, size_t errlen);
int idx_parse_labels(const uint8_t *buf, size_t len, const char *label, uint8_t **labels,
                     int *n, char *err, size_t errlen);
int idx_load_images(const char *path, struct idx_images *out, char *err, size_t errlen);
int idx_load_labels(const char *path, uint8_t **labels, int *n, char *err, size_t errlen);
void idx_images_free(struct idx_images *im);

enum dataset_kind { DATASET_IDX = 0, DATASET_FOLDER = 1 };

struct dataset {
    enum dataset_kind kind;
    int n;
    struct idx_images idx;   /* DATASET_IDX */
    uint8_t *labels;         /* [n] or NULL */
    char **paths;            /* DATASET_FOLDER: n sorted paths */
};

/* labels_path may be NULL. The label count must equal the image count. */
int dataset_open_idx(const char *images_path, const char *labels_path, struct dataset *ds,
                     char *err, size_t errlen);
/* Every *.jpg, *.jpeg, *.png (any case) under dir, recursively, sorted by path;
 * symbolic links to directories are not followed. */
int dataset_open_folder(const char *dir, struct dataset *ds, char *err, size_t errlen);
/* Image i as RGB (IDX grayscale replicated to three channels). Thread-safe. */
int dataset_get(const struct dataset *ds, int i, struct image_rgb8 *img, char *err,
                size_t errlen);
void dataset_free(struct dataset *ds);

#endif
