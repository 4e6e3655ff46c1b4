#include "finetune.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "errors.h"
#include "preprocess.h"
#include "safetensors.h"
#include "state.h"

#define POS_NAME "backbone.pos_embed"

static char *state_file(const char *src)
{
    size_t n = strlen(src) + sizeof STATE_FILE + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", src, STATE_FILE);
    return p;
}

bool finetune_src_is_run(const char *src)
{
    struct stat st;
    return stat(src, &st) == 0 && S_ISDIR(st.st_mode);
}

int finetune_src_config(const char *src, struct train_config *cfg, char *err, size_t errlen)
{
    int64_t step;
    return state_read_header(src, cfg, &step, err, errlen);
}

int pos_embed_resize_aa(float *out, const float *table, int M0, int D, int M)
{
    const int ks = bicubic_aa_ksize(M0, M);
    double *w = malloc(sizeof(double) * (size_t)ks * (size_t)M);
    int *lo = malloc(sizeof(int) * (size_t)M), *cnt = malloc(sizeof(int) * (size_t)M);
    /* rows first into tmp [M, M0, D], then columns, as torch's separable passes */
    float *tmp = malloc(sizeof(float) * (size_t)M * (size_t)M0 * (size_t)D);
    if (!w || !lo || !cnt || !tmp) {
        free(w);
        free(lo);
        free(cnt);
        free(tmp);
        return -1;
    }
    for (int i = 0; i < M; i++) cnt[i] = bicubic_aa_weights(M0, M, i, ks, w + (size_t)i * ks, &lo[i]);
    const float *grid = table + D;
    memcpy(out, table, sizeof(float) * (size_t)D); /* CLS is never resized */
    float *og = out + D;
    for (int oy = 0; oy < M; oy++)
        for (int x = 0; x < M0; x++) {
            float *d = tmp + ((size_t)oy * M0 + x) * D;
            for (int k = 0; k < D; k++) {
                double s = 0.0;
                for (int t = 0; t < cnt[oy]; t++)
                    s += w[(size_t)oy * ks + t] * grid[((size_t)(lo[oy] + t) * M0 + x) * D + k];
                d[k] = (float)s;
            }
        }
    for (int oy = 0; oy < M; oy++)
        for (int ox = 0; ox < M; ox++) {
            float *d = og + ((size_t)oy * M + ox) * D;
            for (int k = 0; k < D; k++) {
                double s = 0.0;
                for (int t = 0; t < cnt[ox]; t++)
                    s += w[(size_t)ox * ks + t] * tmp[((size_t)oy * M0 + lo[ox] + t) * D + k];
                d[k] = (float)s;
            }
        }
    free(w);
    free(lo);
    free(cnt);
    free(tmp);
    return 0;
}

/* Copies tensor name of st into dst (n floats of the run), resizing a
 * positional table of another grid. */
static int take(const struct st_file *st, const char *src, const char *name, bool pos, float *dst,
                size_t n, int D, int M, char *err, size_t errlen)
{
    const struct st_tensor *t = st_find(st, name);
    if (!t) return set_err(err, errlen, "%s: tensor %s is missing (a different architecture?)", src, name);
    const size_t have = st_numel(t);
    if (have == n) {
        st_to_f32(t, 0, n, dst);
        return 0;
    }
    const int M0 = pos && have % (size_t)D == 0 && have >= 2 * (size_t)D
                       ? (int)lround(sqrt((double)(have / (size_t)D - 1))) : 0;
    if (!M0 || (size_t)(1 + M0 * M0) * D != have)
        return set_err(err, errlen, "%s: tensor %s has %zu values, the run wants %zu", src, name, have, n);
    float *old = malloc(sizeof(float) * have);
    if (!old) return set_err(err, errlen, "out of memory");
    st_to_f32(t, 0, have, old);
    int rc = pos_embed_resize_aa(dst, old, M0, D, M);
    free(old);
    return rc < 0 ? set_err(err, errlen, "out of memory") : 0;
}

int finetune_init(struct param_list *pl, int embed_dim, int pos_grid, const char *src,
                  char *err, size_t errlen)
{
    const bool run = finetune_src_is_run(src);
    char *path = run ? state_file(src) : strdup(src);
    if (!path) return set_err(err, errlen, "out of memory");
    struct st_file st;
    if (st_open(path, &st, err, errlen) < 0) {
        free(path);
        return -1;
    }
    int rc = 0;
    for (int i = 0; rc == 0 && i < pl->n; i++) {
        struct param *p = &pl->p[i];
        const bool pos = !strcmp(p->name, POS_NAME);
        char name[160];
        if (run) {
            snprintf(name, sizeof name, "student/%s", p->name);
            rc = take(&st, path, name, pos, p->w, p->n, embed_dim, pos_grid, err, errlen);
            if (rc == 0 && p->t) {
                snprintf(name, sizeof name, "teacher/%s", p->name);
                rc = take(&st, path, name, pos, p->t, p->n, embed_dim, pos_grid, err, errlen);
            }
            continue;
        }
        /* an exported model: the (teacher) backbone only; mask_token is optional there */
        if (strncmp(p->name, "backbone.", 9)) continue;
        if (!strcmp(p->name, "backbone.mask_token") && !st_find(&st, p->name + 9)) continue;
        rc = take(&st, path, p->name + 9, pos, p->w, p->n, embed_dim, pos_grid, err, errlen);
        if (rc == 0 && p->t) memcpy(p->t, p->w, p->n * sizeof(float));
    }
    st_close(&st);
    free(path);
    return rc;
}
