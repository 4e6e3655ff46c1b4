#include "knn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "mm.h"
#include "preprocess.h"

#define KNN_BATCH 64

int knn_features(struct vit_model *m, const struct idx_images *im, int n, float *out,
                 char *err, size_t errlen)
{
    const struct model_config *cfg = vit_model_config(m);
    const int C = cfg->preprocess.crop_size, D = cfg->embed_dim;
    if (vit_check_resolution(m, C, C, err, errlen) < 0) return -1;
    if (n > im->n) n = im->n;
    const size_t isz = (size_t)3 * C * C;
    float *x = malloc((size_t)KNN_BATCH * isz * sizeof *x);
    if (!x) return set_err(err, errlen, "k-NN: out of memory");
    struct vit_workspace *ws = NULL;
    int rc = 0;
    const int w = im->cols, h = im->rows;
    for (int s = 0; s < n && rc == 0; s += KNN_BATCH) {
        const int nb = n - s < KNN_BATCH ? n - s : KNN_BATCH;
        int bad = 0;
#pragma omp parallel for schedule(dynamic) reduction(| : bad)
        for (int b = 0; b < nb; b++) {
            struct image_rgb8 img = {w, h, malloc((size_t)w * h * 3)};
            char e2[ERR_LEN];
            if (!img.data) {
                bad |= 1;
                continue;
            }
            const uint8_t *src = im->data + (size_t)(s + b) * w * h;
            for (size_t k = 0; k < (size_t)w * h; k++)
                img.data[3 * k] = img.data[3 * k + 1] = img.data[3 * k + 2] = src[k];
            if (preprocess_eval(&img, &cfg->preprocess, x + (size_t)b * isz, e2, sizeof e2) < 0)
                bad |= 1;
            free(img.data);
        }
        if (bad) {
            rc = set_err(err, errlen, "k-NN: preprocessing failed");
            break;
        }
        struct vit_outputs o = {.cls = out + (size_t)s * D};
        rc = vit_forward(m, &ws, x, nb, C, C, &o, err, errlen);
    }
    vit_workspace_free(ws);
    free(x);
    return rc;
}

/* Rows of src [n, D] -> dst [n, W]: the first W dims, L2-normalised. */
static void prefix_normalise(const float *src, int n, int D, int W, float *dst)
{
    for (int i = 0; i < n; i++) {
        const float *s = src + (size_t)i * D;
        float *d = dst + (size_t)i * W;
        double ss = 0.0;
        for (int j = 0; j < W; j++) ss += (double)s[j] * s[j];
        const double nrm = sqrt(ss);
        const float inv = (float)(1.0 / (nrm > 1e-12 ? nrm : 1e-12));
        for (int j = 0; j < W; j++) d[j] = s[j] * inv;
    }
}

double knn_top1(const float *train, const uint8_t *ytr, int ntr, const float *test,
                const uint8_t *yte, int nte, int D, int W, int k, double T)
{
    if (ntr <= 0 || nte <= 0 || W < 1 || W > D) return 0.0;
    if (k > ntr) k = ntr;
    if (k > 256) k = 256;
    const int CH = 256;
    float *a = malloc((size_t)ntr * W * sizeof *a), *b = malloc((size_t)nte * W * sizeof *b);
    float *sim = malloc((size_t)CH * ntr * sizeof *sim);
    if (!a || !b || !sim) {
        free(a);
        free(b);
        free(sim);
        return -1.0;
    }
    prefix_normalise(train, ntr, D, W, a);
    prefix_normalise(test, nte, D, W, b);
    long correct = 0;
    for (int s = 0; s < nte; s += CH) {
        const int nb = nte - s < CH ? nte - s : CH;
        mm_sgemm(false, true, nb, ntr, W, 1.0f,
                    b + (size_t)s * W, W, a, W, 0.0f, sim, ntr);
#pragma omp parallel for schedule(static) reduction(+ : correct)
        for (int i = 0; i < nb; i++) {
            const float *row = sim + (size_t)i * ntr;
            float best[256];
            int idx[256];
            int cnt = 0;
            /* Top-k by insertion (k is small). Ties keep the lower index. */
            for (int j = 0; j < ntr; j++) {
                const float v = row[j];
                if (cnt == k && !(v > best[k - 1])) continue;
                int p = cnt < k ? cnt++ : k - 1;
                while (p > 0 && best[p - 1] < v) {
                    best[p] = best[p - 1];
                    idx[p] = idx[p - 1];
                    p--;
                }
                best[p] = v;
                idx[p] = j;
            }
            double votes[256] = {0};
            for (int q = 0; q < cnt; q++) votes[ytr[idx[q]]] += exp((double)best[q] / T);
            int arg = 0;
            for (int c = 1; c < 256; c++)
                if (votes[c] > votes[arg]) arg = c;
            correct += arg == yte[s + i];
        }
    }
    free(a);
    free(b);
    free(sim);
    return (double)correct / nte;
}

static void cp(float *dst, const float *src, size_t n)
{
    if (dst && src) memcpy(dst, src, n * sizeof(float));
}

void knn_weights_copy(const struct model_config *cfg, struct vit_weights *d,
                      const struct vit_weights *w)
{
    const size_t D = (size_t)cfg->embed_dim, M = (size_t)cfg->pos_grid,
                 P = (size_t)cfg->patch_size, Hs = (size_t)cfg->ffn_hidden;
    const size_t f1 = (cfg->ffn == FFN_SWIGLU ? 2 * Hs : Hs);
    cp(d->cls_token, w->cls_token, D);
    cp(d->pos_embed, w->pos_embed, (1 + M * M) * D);
    cp(d->mask_token, w->mask_token, D);
    cp(d->register_tokens, w->register_tokens, (size_t)cfg->register_tokens * D);
    cp(d->patch_w, w->patch_w, D * 3 * P * P);
    cp(d->patch_b, w->patch_b, D);
    for (int l = 0; l < cfg->depth; l++) {
        struct vit_block_weights *db = &d->blocks[l];
        const struct vit_block_weights *sb = &w->blocks[l];
        cp(db->norm1_w, sb->norm1_w, D);
        cp(db->norm1_b, sb->norm1_b, D);
        cp(db->qkv_w, sb->qkv_w, 3 * D * D);
        cp(db->qkv_b, sb->qkv_b, 3 * D);
        cp(db->proj_w, sb->proj_w, D * D);
        cp(db->proj_b, sb->proj_b, D);
        cp(db->ls1, sb->ls1, D);
        cp(db->norm2_w, sb->norm2_w, D);
        cp(db->norm2_b, sb->norm2_b, D);
        cp(db->fc1_w, sb->fc1_w, f1 * D);
        cp(db->fc1_b, sb->fc1_b, f1);
        cp(db->fc2_w, sb->fc2_w, D * Hs);
        cp(db->fc2_b, sb->fc2_b, D);
        cp(db->ls2, sb->ls2, D);
    }
    cp(d->norm_w, w->norm_w, D);
    cp(d->norm_b, w->norm_b, D);
}

int knn_model_from_weights(const struct model_config *cfg, const struct vit_weights *w,
                           struct vit_model **out, char *err, size_t errlen)
{
    *out = NULL;
    struct checkpoint ck;
    memset(&ck, 0, sizeof ck);
    ck.cfg = *cfg;
    if (vit_weights_alloc(cfg, &ck.w, err, errlen) < 0) return -1;
    knn_weights_copy(cfg, &ck.w, w);
    return vit_model_from_checkpoint(&ck, out, err, errlen);
}

int knn_data_load(struct knn_data *d, const char *train_images, const char *train_labels,
                  const char *test_images, const char *test_labels, int max_train,
                  int max_test, char *err, size_t errlen)
{
    memset(d, 0, sizeof *d);
    int nl;
    if (idx_load_images(train_images, &d->train, err, errlen) < 0) goto fail;
    if (idx_load_labels(train_labels, &d->ytr, &nl, err, errlen) < 0) goto fail;
    if (nl != d->train.n) {
        set_err(err, errlen, "%s has %d labels for %d images in %s", train_labels, nl,
                d->train.n, train_images);
        goto fail;
    }
    if (idx_load_images(test_images, &d->test, err, errlen) < 0) goto fail;
    if (idx_load_labels(test_labels, &d->yte, &nl, err, errlen) < 0) goto fail;
    if (nl != d->test.n) {
        set_err(err, errlen, "%s has %d labels for %d images in %s", test_labels, nl,
                d->test.n, test_images);
        goto fail;
    }
    d->ntr = max_train > 0 && max_train < d->train.n ? max_train : d->train.n;
    d->nte = max_test > 0 && max_test < d->test.n ? max_test : d->test.n;
    return 0;
fail:
    knn_data_free(d);
    return -1;
}

void knn_data_free(struct knn_data *d)
{
    idx_images_free(&d->train);
    idx_images_free(&d->test);
    free(d->ytr);
    free(d->yte);
    memset(d, 0, sizeof *d);
}

int knn_eval(struct vit_model *m, const struct knn_data *d, const int *widths, int n_widths,
             double *acc, char *err, size_t errlen)
{
    const int D = vit_model_config(m)->embed_dim;
    float *ftr = malloc((size_t)d->ntr * D * sizeof *ftr);
    float *fte = malloc((size_t)d->nte * D * sizeof *fte);
    int rc = -1;
    if (!ftr || !fte) {
        set_err(err, errlen, "k-NN: out of memory for features");
        goto out;
    }
    if (knn_features(m, &d->train, d->ntr, ftr, err, errlen) < 0) goto out;
    if (knn_features(m, &d->test, d->nte, fte, err, errlen) < 0) goto out;
    for (int i = 0; i < n_widths; i++) {
        if (widths[i] < 1 || widths[i] > D) {
            set_err(err, errlen, "k-NN: width %d is not in 1..%d", widths[i], D);
            goto out;
        }
        acc[i] = knn_top1(ftr, d->ytr, d->ntr, fte, d->yte, d->nte, D, widths[i], KNN_K, KNN_T);
        if (acc[i] < 0) {
            set_err(err, errlen, "k-NN: out of memory");
            goto out;
        }
    }
    rc = 0;
out:
    free(ftr);
    free(fte);
    return rc;
}
