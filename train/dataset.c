#include "dataset.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <zlib.h>

#include "errors.h"

static int read_raw(const char *path, uint8_t **buf, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) return set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return set_err(err, errlen, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > IDX_MAX_BYTES) {
        fclose(f);
        return set_err(err, errlen, "%s: file too large (%lld bytes)", path,
                       (long long)st.st_size);
    }
    size_t n = (size_t)st.st_size;
    uint8_t *b = malloc(n ? n : 1);
    if (!b) {
        fclose(f);
        return set_err(err, errlen, "%s: out of memory", path);
    }
    if (fread(b, 1, n, f) != n) {
        free(b);
        fclose(f);
        return set_err(err, errlen, "%s: read error", path);
    }
    fclose(f);
    *buf = b;
    *len = n;
    return 0;
}

static int gunzip(const char *path, const uint8_t *in, size_t inlen, uint8_t **buf, size_t *len,
                  char *err, size_t errlen)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, 15 + 16) != Z_OK)
        return set_err(err, errlen, "%s: zlib initialisation failed", path);
    size_t cap = inlen * 4 + 1024, used = 0;
    uint8_t *out = malloc(cap);
    if (!out) {
        inflateEnd(&zs);
        return set_err(err, errlen, "%s: out of memory", path);
    }
    size_t fed = 0;
    int zr = Z_OK;
    for (;;) {
        if (used == cap) {
            if (cap >= IDX_MAX_BYTES) {
                free(out);
                inflateEnd(&zs);
                return set_err(err, errlen, "%s: decompressed data exceeds %zu bytes", path,
                               (size_t)IDX_MAX_BYTES);
            }
            size_t ncap = cap * 2 > IDX_MAX_BYTES ? IDX_MAX_BYTES : cap * 2;
            uint8_t *t = realloc(out, ncap);
            if (!t) {
                free(out);
                inflateEnd(&zs);
                return set_err(err, errlen, "%s: out of memory", path);
            }
            out = t;
            cap = ncap;
        }
        if (zs.avail_in == 0 && fed < inlen) {
            size_t chunk = inlen - fed > (1u << 30) ? (1u << 30) : inlen - fed;
            zs.next_in = (Bytef *)(in + fed);
            zs.avail_in = (uInt)chunk;
            fed += chunk;
        }
        size_t room = cap - used > (1u << 30) ? (1u << 30) : cap - used;
        zs.next_out = out + used;
        zs.avail_out = (uInt)room;
        zr = inflate(&zs, Z_NO_FLUSH);
        used += room - zs.avail_out;
        if (zr == Z_STREAM_END) break;
        if (zr != Z_OK && zr != Z_BUF_ERROR) {
            free(out);
            inflateEnd(&zs);
            return set_err(err, errlen, "%s: corrupt gzip data (%s)", path,
                           zs.msg ? zs.msg : "inflate error");
        }
        if (zr == Z_BUF_ERROR && zs.avail_in == 0 && fed == inlen && used < cap) {
            free(out);
            inflateEnd(&zs);
            return set_err(err, errlen, "%s: truncated gzip data", path);
        }
    }
    inflateEnd(&zs);
    *buf = out;
    *len = used;
    return 0;
}

int idx_read_file(const char *path, uint8_t **buf, size_t *len, char *err, size_t errlen)
{
    uint8_t *raw = NULL;
    size_t rawlen = 0;
    *buf = NULL;
    *len = 0;
    if (read_raw(path, &raw, &rawlen, err, errlen) < 0) return -1;
    if (rawlen >= 2 && raw[0] == 0x1f && raw[1] == 0x8b) {
        int rc = gunzip(path, raw, rawlen, buf, len, err, errlen);
        free(raw);
        return rc;
    }
    *buf = raw;
    *len = rawlen;
    return 0;
}

/* Validates the header; returns the dims and the data offset. */
static int idx_header(const uint8_t *buf, size_t len, const char *label, int want_ndim,
                      uint32_t *dims, size_t *offset, char *err, size_t errlen)
{
    if (len < 4)
        return set_err(err, errlen, "%s: not an IDX file (%zu bytes, shorter than the header)",
                       label, len);
    if (buf[0] != 0 || buf[1] != 0)
        return set_err(err, errlen, "%s: not an IDX file (bad magic %02x %02x)", label, buf[0],
                       buf[1]);
    if (buf[2] != 0x08)
        return set_err(err, errlen, "%s: IDX data type 0x%02x is not unsigned byte (0x08)",
                       label, buf[2]);
    if (buf[3] != want_ndim)
        return set_err(err, errlen, "%s: IDX file has %d dimensions, expected %d", label,
                       buf[3], want_ndim);
    const size_t hdr = 4 + 4 * (size_t)want_ndim;
    if (len < hdr)
        return set_err(err, errlen, "%s: IDX header truncated", label);
    uint64_t total = 1;
    for (int d = 0; d < want_ndim; d++) {
        const uint8_t *p = buf + 4 + 4 * d;
        dims[d] = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
        if (dims[d] == 0 || dims[d] > (1u << 30))
            return set_err(err, errlen, "%s: IDX dimension %d is %u", label, d, dims[d]);
        total *= dims[d];
        if (total > IDX_MAX_BYTES)
            return set_err(err, errlen, "%s: IDX dimensions are too large", label);
    }
    if (len - hdr != total)
        return set_err(err, errlen,
                       "%s: IDX header promises %llu data bytes but the file holds %zu", label,
                       (unsigned long long)total, len - hdr);
    *offset = hdr;
    return 0;
}

int idx_parse_images(const uint8_t *buf, size_t len, const char *label, struct idx_images *out,
                     char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    uint32_t d[3] = {0, 0, 0};
    size_t off;
    if (idx_header(buf, len, label, 3, d, &off, err, errlen) < 0) return -1;
    if (d[0] > 0x7fffffffu || d[1] > 65536 || d[2] > 65536)
        return set_err(err, errlen, "%s: IDX image dimensions %ux%ux%u are out of range", label,
                       d[0], d[1], d[2]);
    const size_t n = len - off;
    out->data = malloc(n);
    if (!out->data) return set_err(err, errlen, "%s: out of memory", label);
    memcpy(out->data, buf + off, n);
    out->n = (int)d[0];
    out->rows = (int)d[1];
    out->cols = (int)d[2];
    return 0;
}

int idx_parse_labels(const uint8_t *buf, size_t len, const char *label, uint8_t **labels, int *n,
                     char *err, size_t errlen)
{
    *labels = NULL;
    *n = 0;
    uint32_t d[1] = {0};
    size_t off;
    if (idx_header(buf, len, label, 1, d, &off, err, errlen) < 0) return -1;
    if (d[0] > 0x7fffffffu) return set_err(err, errlen, "%s: too many labels", label);
    uint8_t *l = malloc(d[0]);
    if (!l) return set_err(err, errlen, "%s: out of memory", label);
    memcpy(l, buf + off, d[0]);
    *labels = l;
    *n = (int)d[0];
    return 0;
}

int idx_load_images(const char *path, struct idx_images *out, char *err, size_t errlen)
{
    uint8_t *buf;
    size_t len;
    memset(out, 0, sizeof *out);
    if (idx_read_file(path, &buf, &len, err, errlen) < 0) return -1;
    int rc = idx_parse_images(buf, len, path, out, err, errlen);
    free(buf);
    return rc;
}

int idx_load_labels(const char *path, uint8_t **labels, int *n, char *err, size_t errlen)
{
    uint8_t *buf;
    size_t len;
    *labels = NULL;
    *n = 0;
    if (idx_read_file(path, &buf, &len, err, errlen) < 0) return -1;
    int rc = idx_parse_labels(buf, len, path, labels, n, err, errlen);
    free(buf);
    return rc;
}

void idx_images_free(struct idx_images *im)
{
    free(im->data);
    memset(im, 0, sizeof *im);
}

int dataset_open_idx(const char *images_path, const char *labels_path, struct dataset *ds,
                     char *err, size_t errlen)
{
    memset(ds, 0, sizeof *ds);
    ds->kind = DATASET_IDX;
    if (idx_load_images(images_path, &ds->idx, err, errlen) < 0) return -1;
    ds->n = ds->idx.n;
    if (labels_path) {
        int nl;
        if (idx_load_labels(labels_path, &ds->labels, &nl, err, errlen) < 0) {
            dataset_free(ds);
            return -1;
        }
        if (nl != ds->n) {
            set_err(err, errlen, "%s has %d labels but %s has %d images", labels_path, nl,
                    images_path, ds->n);
            dataset_free(ds);
            return -1;
        }
    }
    return 0;
}

struct pathvec {
    char **p;
    int n, cap;
};

static int push_path(struct pathvec *v, const char *s)
{
    if (v->n == v->cap) {
        int cap = v->cap ? v->cap * 2 : 256;
        char **t = realloc(v->p, (size_t)cap * sizeof *t);
        if (!t) return -1;
        v->p = t;
        v->cap = cap;
    }
    if (!(v->p[v->n] = strdup(s))) return -1;
    v->n++;
    return 0;
}

static int has_image_ext(const char *name)
{
    const char *dot = strrchr(name, '.');
    if (!dot) return 0;
    return !strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg") || !strcasecmp(dot, ".png");
}

static int walk(const char *dir, struct pathvec *v, int depth, char *err, size_t errlen)
{
    if (depth > 64) return set_err(err, errlen, "%s: directories nested too deeply", dir);
    DIR *d = opendir(dir);
    if (!d) return set_err(err, errlen, "%s: cannot open directory: %s", dir, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue; /* ., .., hidden files */
        size_t need = strlen(dir) + strlen(e->d_name) + 2;
        char *p = malloc(need);
        if (!p) {
            rc = set_err(err, errlen, "out of memory listing %s", dir);
            break;
        }
        snprintf(p, need, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0) {
            if (S_ISDIR(st.st_mode)) {
                rc = walk(p, v, depth + 1, err, errlen);
            } else if (has_image_ext(e->d_name)) {
                struct stat st2;
                if (S_ISREG(st.st_mode) || (S_ISLNK(st.st_mode) && stat(p, &st2) == 0 &&
                                            S_ISREG(st2.st_mode)))
                    if (push_path(v, p) < 0) rc = set_err(err, errlen, "out of memory");
            }
        }
        free(p);
        if (rc < 0) break;
    }
    closedir(d);
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int dataset_open_folder(const char *dir, struct dataset *ds, char *err, size_t errlen)
{
    memset(ds, 0, sizeof *ds);
    ds->kind = DATASET_FOLDER;
    struct pathvec v = {0};
    if (walk(dir, &v, 0, err, errlen) < 0) {
        for (int i = 0; i < v.n; i++) free(v.p[i]);
        free(v.p);
        return -1;
    }
    if (v.n == 0) {
        free(v.p);
        return set_err(err, errlen, "%s: no JPEG or PNG images found", dir);
    }
    qsort(v.p, (size_t)v.n, sizeof *v.p, cmp_str);
    ds->paths = v.p;
    ds->n = v.n;
    return 0;
}

int dataset_get(const struct dataset *ds, int i, struct image_rgb8 *img, char *err,
                size_t errlen)
{
    img->data = NULL;
    img->width = img->height = 0;
    if (i < 0 || i >= ds->n) return set_err(err, errlen, "dataset: index %d out of range", i);
    if (ds->kind == DATASET_FOLDER) {
        struct image_decode_opts o;
        image_decode_opts_default(&o);
        return image_decode_file(ds->paths[i], &o, img, err, errlen);
    }
    const int w = ds->idx.cols, h = ds->idx.rows;
    uint8_t *d = malloc((size_t)w * h * 3);
    if (!d) return set_err(err, errlen, "out of memory");
    const uint8_t *src = ds->idx.data + (size_t)i * w * h;
    for (size_t k = 0; k < (size_t)w * h; k++) d[3 * k] = d[3 * k + 1] = d[3 * k + 2] = src[k];
    img->data = d;
    img->width = w;
    img->height = h;
    return 0;
}

void dataset_free(struct dataset *ds)
{
    idx_images_free(&ds->idx);
    free(ds->labels);
    if (ds->paths)
        for (int i = 0; i < ds->n; i++) free(ds->paths[i]);
    free(ds->paths);
    memset(ds, 0, sizeof *ds);
}
