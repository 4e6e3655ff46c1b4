/* Test helper: decodes an image and writes the preprocessed tensor as .npy.
 *
 *   preprocess_dump IMAGE OUT.npy [--square R] [--resize N] [--crop C]
 *                   [--decoded] [--alpha drop|black|white] [--no-exif]
 *
 * Default: eval preprocessing (Resize 256, CenterCrop 224, ImageNet mean/std),
 * float32 [3, H, W]. --square R: whole image to R x R. --decoded: write the
 * decoded pixels instead, uint8 [H, W, 3]. Exit status 1 on a decode error,
 * with the message on stderr. */
#include "image.h"
#include "preprocess.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int write_npy(const char *path, const char *descr, const int *shape, int ndim,
                     const void *data, size_t nbytes)
{
    char hdr[256];
    char dims[96] = "";
    size_t o = 0;
    for (int i = 0; i < ndim; i++)
        o += (size_t)snprintf(dims + o, sizeof dims - o, "%d%s", shape[i],
                              ndim == 1 ? "," : (i + 1 < ndim ? ", " : ""));
    int n = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }",
                     descr, dims);
    int total = 10 + n + 1;
    int pad = (64 - total % 64) % 64;
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    unsigned hl = (unsigned)(n + pad + 1);
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                             (unsigned char)(hl & 0xff), (unsigned char)(hl >> 8)};
    int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(hdr, 1, (size_t)n, f) == (size_t)n;
    for (int i = 0; ok && i < pad; i++)
        ok = fputc(' ', f) != EOF;
    ok = ok && fputc('\n', f) != EOF;
    ok = ok && fwrite(data, 1, nbytes, f) == nbytes;
    ok = (fclose(f) == 0) && ok;
    return ok ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s IMAGE OUT.npy [--square R] [--resize N] [--crop C] "
                        "[--decoded] [--alpha drop|black|white] [--no-exif]\n", argv[0]);
        return 2;
    }
    int square = 0, decoded = 0;
    struct preprocess_config pc = {256, 224, {0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f}};
    struct image_decode_opts o;
    image_decode_opts_default(&o);
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--square") && i + 1 < argc)
            square = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--resize") && i + 1 < argc)
            pc.resize_size = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--crop") && i + 1 < argc)
            pc.crop_size = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--decoded"))
            decoded = 1;
        else if (!strcmp(argv[i], "--no-exif"))
            o.apply_exif_orientation = 0;
        else if (!strcmp(argv[i], "--alpha") && i + 1 < argc) {
            const char *a = argv[++i];
            o.alpha = !strcmp(a, "black") ? IMAGE_ALPHA_BLACK
                      : !strcmp(a, "white") ? IMAGE_ALPHA_WHITE : IMAGE_ALPHA_DROP;
        } else {
            fprintf(stderr, "unknown argument '%s'\n", argv[i]);
            return 2;
        }
    }
    char err[512];
    struct image_rgb8 img;
    if (image_decode_file(argv[1], &o, &img, err, sizeof err) < 0) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    int rc = 0;
    if (decoded) {
        int shape[3] = {img.height, img.width, 3};
        rc = write_npy(argv[2], "|u1", shape, 3, img.data, (size_t)img.width * img.height * 3);
    } else {
        int side = square > 0 ? square : pc.crop_size;
        float *out = malloc(sizeof(float) * 3 * (size_t)side * side);
        if (!out) {
            image_free(&img);
            return 1;
        }
        int r = square > 0 ? preprocess_square(&img, square, pc.mean, pc.std, out, err, sizeof err)
                           : preprocess_eval(&img, &pc, out, err, sizeof err);
        if (r < 0) {
            fprintf(stderr, "error: %s\n", err);
            rc = 1;
        } else {
            int shape[3] = {3, side, side};
            rc = write_npy(argv[2], "<f4", shape, 3, out, sizeof(float) * 3 * (size_t)side * side);
        }
        free(out);
    }
    image_free(&img);
    if (rc < 0) {
        fprintf(stderr, "error: cannot write '%s'\n", argv[2]);
        return 1;
    }
    return rc;
}
