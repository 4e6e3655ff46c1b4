#include "rasa_train.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "checkpoint.h"
#include "errors.h"
#include "knn.h"
#include "preprocess.h"
#include "rasa.h"
#include "rng.h"

#define EXIT_USAGE 2
/* Images per forward: at most 64, and about 16k tokens so that a large crop's
 * attention workspace stays small (518 px at patch 14: 11 images). */
#define FEATURE_BATCH 64
#define FEATURE_TOKENS 16384
/* PyTorch AdamW defaults; the reference sets weight decay 0 (docs/model.md §7.3). */
#define ADAM_B1 0.9
#define ADAM_B2 0.999
#define ADAM_EPS 1e-8

int rasa_features(struct vit_model *m, const struct dataset *ds, int n, float *tokens,
                  char *err, size_t errlen)
{
    const struct model_config *cfg = vit_model_config(m);
    const int C = cfg->preprocess.crop_size, D = cfg->embed_dim;
    if (vit_check_resolution(m, C, C, err, errlen) < 0) return -1;
    const size_t N = (size_t)(C / cfg->patch_size) * (size_t)(C / cfg->patch_size);
    const size_t isz = (size_t)3 * C * C;
    int fb = (int)(FEATURE_TOKENS / N);
    fb = fb < 1 ? 1 : fb > FEATURE_BATCH ? FEATURE_BATCH : fb;
    float *x = malloc((size_t)fb * isz * sizeof *x);
    if (!x) return set_err(err, errlen, "RASA: out of memory for the input batch");
    struct vit_workspace *ws = NULL;
    int rc = 0;
    for (int s = 0; s < n && rc == 0; s += fb) {
        const int nb = n - s < fb ? n - s : fb;
        int bad = -1;
#pragma omp parallel for schedule(dynamic)
        for (int b = 0; b < nb; b++) {
            struct image_rgb8 img;
            char e2[ERR_LEN];
            if (dataset_get(ds, s + b, &img, e2, sizeof e2) < 0 ||
                preprocess_eval(&img, &cfg->preprocess, x + (size_t)b * isz, e2, sizeof e2) < 0) {
#pragma omp critical
                if (bad < 0) {
                    bad = s + b;
                    set_err(err, errlen, "RASA: image %d: %s", s + b, e2);
                }
            }
            image_free(&img);
        }
        if (bad >= 0) {
            rc = -1;
            break;
        }
        struct vit_outputs o = {.patch = tokens + (size_t)s * N * D};
        rc = vit_forward(m, &ws, x, nb, C, C, &o, err, errlen);
    }
    vit_workspace_free(ws);
    free(x);
    return rc;
}

static double sigmoid(double s)
{
    return 1.0 / (1.0 + exp(-s));
}

/* Squared error of the predictor w [2, D] on one image's N tokens (targets tg [N, 2]);
 * adds the gradient of the summed squared error w.r.t. w into g [2, D] when g is set. */
static void image_pass(const float *w, const float *tok, const float *tg, int N, int D,
                       double sse[2], double *g)
{
    for (int p = 0; p < N; p++) {
        const float *z = tok + (size_t)p * D;
        for (int k = 0; k < 2; k++) {
            const float *wk = w + (size_t)k * D;
            double s = 0.0;
            for (int i = 0; i < D; i++) s += (double)wk[i] * z[i];
            const double y = sigmoid(s), e = y - tg[2 * p + k];
            sse[k] += e * e;
            if (g) {
                const double ds = 2.0 * e * y * (1.0 - y);
                double *gk = g + (size_t)k * D;
                for (int i = 0; i < D; i++) gk[i] += ds * z[i];
            }
        }
    }
}

/* One round: fits w [2, D] to the tokens by the reference's recipe (sigmoid
 * output, MSE over B*N*2, AdamW without weight decay, per-step cosine to 0). */
static int fit_round(const struct rasa_train_config *c, const float *tokens, int n_img, int N,
                     int D, const float *tg, struct rng *r, float *w, double *last_loss,
                     char *err, size_t errlen)
{
    const int B = c->batch < n_img ? c->batch : n_img;
    const int spe = (n_img + B - 1) / B;
    const int64_t S = (int64_t)spe * c->epochs;
    int *perm = malloc(sizeof *perm * (size_t)n_img);
    double *gimg = calloc((size_t)B * 2 * D, sizeof *gimg);
    double *m = calloc((size_t)2 * D, sizeof *m), *v = calloc((size_t)2 * D, sizeof *v);
    double *sse = calloc((size_t)B * 2, sizeof *sse);
    if (!perm || !gimg || !m || !v || !sse) {
        free(perm);
        free(gimg);
        free(m);
        free(v);
        free(sse);
        return set_err(err, errlen, "RASA: out of memory for the optimiser");
    }
    for (int i = 0; i < n_img; i++) perm[i] = i;
    int64_t step = 0;
    for (int e = 0; e < c->epochs; e++) {
        for (int i = n_img - 1; i > 0; i--) {
            const int j = (int)rng_int(r, 0, i), t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        double esse = 0.0;
        for (int s0 = 0; s0 < n_img; s0 += B, step++) {
            const int nb = n_img - s0 < B ? n_img - s0 : B;
            memset(gimg, 0, sizeof *gimg * (size_t)nb * 2 * D);
            memset(sse, 0, sizeof *sse * (size_t)nb * 2);
#pragma omp parallel for schedule(static)
            for (int b = 0; b < nb; b++)
                image_pass(w, tokens + (size_t)perm[s0 + b] * N * D, tg, N, D, sse + 2 * b,
                           gimg + (size_t)b * 2 * D);
            /* Mean over the batch's B*N*2 outputs, as the reference's MSELoss. */
            const double scale = 1.0 / ((double)nb * N * 2);
            for (int b = 1; b < nb; b++)
                for (int i = 0; i < 2 * D; i++) gimg[i] += gimg[(size_t)b * 2 * D + i];
            for (int b = 0; b < nb; b++) esse += sse[2 * b] + sse[2 * b + 1];
            const double lr = c->lr * 0.5 * (1.0 + cos(M_PI * (double)step / (double)S));
            const double bc1 = 1.0 - pow(ADAM_B1, (double)(step + 1));
            const double bc2 = 1.0 - pow(ADAM_B2, (double)(step + 1));
            for (int i = 0; i < 2 * D; i++) {
                const double g = gimg[i] * scale;
                m[i] = ADAM_B1 * m[i] + (1.0 - ADAM_B1) * g;
                v[i] = ADAM_B2 * v[i] + (1.0 - ADAM_B2) * g * g;
                w[i] -= (float)(lr * (m[i] / bc1) / (sqrt(v[i] / bc2) + ADAM_EPS));
            }
        }
        *last_loss = esse / ((double)n_img * N * 2);
    }
    free(perm);
    free(gimg);
    free(m);
    free(v);
    free(sse);
    for (int i = 0; i < 2 * D; i++)
        if (!isfinite(w[i])) return set_err(err, errlen, "RASA: the predictor diverged (non-finite weight)");
    return 0;
}

int rasa_train(const struct rasa_train_config *c, float *tokens, int n_img, int gh, int gw,
               int D, float *rasa_w, struct rasa_round_stats *stats, FILE *log, char *err,
               size_t errlen)
{
    if (gh < 2 || gw < 2)
        return set_err(err, errlen, "RASA: a %dx%d patch grid has no position to predict (needs 2x2 or more)", gh, gw);
    if (n_img < 1) return set_err(err, errlen, "RASA: no images");
    const int N = gh * gw;
    /* Target of patch (a, b): (a / (gh - 1), b / (gw - 1)), row-major. */
    float *tg = malloc(sizeof *tg * (size_t)N * 2);
    float *units = malloc(sizeof *units * (size_t)c->rounds * 2 * D);
    double *sse = calloc((size_t)n_img * 2, sizeof *sse);
    int rc = -1;
    if (!tg || !units || !sse) {
        set_err(err, errlen, "RASA: out of memory");
        goto out;
    }
    double sst[2] = {0.0, 0.0};
    for (int a = 0; a < gh; a++)
        for (int b = 0; b < gw; b++) {
            tg[2 * (a * gw + b)] = (float)a / (float)(gh - 1);
            tg[2 * (a * gw + b) + 1] = (float)b / (float)(gw - 1);
            sst[0] += (tg[2 * (a * gw + b)] - 0.5) * (tg[2 * (a * gw + b)] - 0.5);
            sst[1] += (tg[2 * (a * gw + b) + 1] - 0.5) * (tg[2 * (a * gw + b) + 1] - 0.5);
        }
    struct rng root;
    rng_seed(&root, c->seed);
    for (int t = 0; t < c->rounds; t++) {
        struct rng r;
        rng_fork(&root, (uint64_t)t, &r);
        float *w = rasa_w + (size_t)t * 2 * D;
        /* PyTorch's default Linear init: U(-1/sqrt(D), 1/sqrt(D)). */
        const double bound = 1.0 / sqrt((double)D);
        for (int i = 0; i < 2 * D; i++) w[i] = (float)rng_range(&r, -bound, bound);
        double loss = 0.0;
        if (fit_round(c, tokens, n_img, N, D, tg, &r, w, &loss, err, errlen) < 0) goto out;
        /* R^2 over every token, before this round's plane is removed. */
        memset(sse, 0, sizeof *sse * (size_t)n_img * 2);
#pragma omp parallel for schedule(static)
        for (int i = 0; i < n_img; i++)
            image_pass(w, tokens + (size_t)i * N * D, tg, N, D, sse + 2 * i, NULL);
        double res[2] = {0.0, 0.0};
        for (int i = 0; i < n_img; i++) {
            res[0] += sse[2 * i];
            res[1] += sse[2 * i + 1];
        }
        stats[t].loss = loss;
        for (int k = 0; k < 2; k++) stats[t].r2[k] = 1.0 - res[k] / (sst[k] * n_img);
        /* The tokens have no component along earlier planes, so that part of w
         * (left from its random init) predicts nothing; removing it changes no
         * prediction, but keeps the planes orthogonal, so that removing them in
         * turn removes their whole span (else a later plane puts back a little
         * along an earlier one). units holds rounds 0..t-1 (orthonormal). */
        for (int k = 0; k < 2; k++) {
            float *wk = w + (size_t)k * D;
            for (int u = 0; u < 2 * t; u++) {
                const float *e = units + (size_t)u * D;
                double p = 0.0;
                for (int i = 0; i < D; i++) p += (double)wk[i] * e[i];
                for (int i = 0; i < D; i++) wk[i] = (float)(wk[i] - p * e[i]);
            }
        }
        /* The engine's unit vectors of rounds 0..t; the new plane leaves the tokens. */
        if (rasa_prepare(rasa_w, t + 1, D, units, err, errlen) < 0) goto out;
        rasa_apply(units + (size_t)t * 2 * D, 1, D, tokens, (size_t)n_img * N);
        if (log) {
            fprintf(log, "rasa round %d/%d: loss %.6f, R^2 before removal row %.4f col %.4f\n",
                    t + 1, c->rounds, loss, stats[t].r2[0], stats[t].r2[1]);
            fflush(log);
        }
    }
    rc = 0;
out:
    free(tg);
    free(units);
    free(sse);
    return rc;
}

/* ------------------------------------------------------------------ CLI -- */

static const char usage_text[] =
    "usage: franca-train rasa --model MODEL.safetensors (--train-idx IMAGES | --train-folder DIR)\n"
    "                         --out OUT.safetensors [--rounds R] [--epochs E] [--batch B]\n"
    "                         [--lr LR] [--max-images N] [--seed S] [--dtype f32|bf16|f16]\n"
    "\n"
    "Learns RASA (docs/model.md §7) for a frozen model: R rounds, each a bias-free [2, D]\n"
    "predictor of every patch's (row, column) trained on the patch tokens left after the\n"
    "earlier rounds' planes are removed. OUT is MODEL with the R tensors added (rasa_layers\n"
    "= R - 1); franca-server (rasa=true) and franca-embed --rasa apply them.\n"
    "  --train-idx IMAGES   images as an IDX file (raw or .gz; labels are not needed)\n"
    "  --train-folder DIR   JPEG/PNG images under DIR (recursive)\n"
    "  --rounds R           planes to learn, 2..65 (default 9: the reference config's rounds)\n"
    "  --epochs E           passes over the images per round (default 5)\n"
    "  --batch B            images per step, all their patches (default 128)\n"
    "  --lr LR              AdamW peak rate, cosine to 0 per round (default 2e-4)\n"
    "  --max-images N       use the first N images (default 0: all)\n"
    "  --seed S             predictor init and batch order (default 0)\n"
    "  --dtype T            tensor dtype of OUT (default f32)\n"
    "Images go through the model's eval preprocessing (crop_size); the frozen tokens are\n"
    "computed once and held in memory (N x D floats per image; no augmentation), so bound\n"
    "large sets with --max-images. Exit status: 0 success, 1 runtime failure, 2 bad\n"
    "command line.\n";

static int bad_usage(const char *fmt, const char *arg) __attribute__((format(printf, 1, 0)));
static int bad_usage(const char *fmt, const char *arg)
{
    fputs("franca-train rasa: ", stderr);
    fprintf(stderr, fmt, arg);
    fputs(" (franca-train rasa --help)\n", stderr);
    return EXIT_USAGE;
}

static int parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    const long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

/* extra_json for the output: the input's training recipe (kept) and this run. */
static char *rasa_metadata(const char *model, const char *data, int n,
                           const struct rasa_train_config *c, const struct rasa_round_stats *st)
{
    json_t *root = json_object(), *r2 = json_array();
    struct st_file sf;
    char e2[ERR_LEN];
    if (st_open(model, &sf, e2, sizeof e2) == 0) {
        const char *meta = st_metadata_get(&sf, "franca");
        json_t *in = meta ? json_loads(meta, 0, NULL) : NULL;
        json_t *recipe = in ? json_object_get(in, "recipe") : NULL;
        if (recipe && root) json_object_set(root, "recipe", recipe);
        json_decref(in);
        st_close(&sf);
    }
    for (int t = 0; r2 && t < c->rounds; t++)
        json_array_append_new(r2, json_pack("[f,f]", st[t].r2[0], st[t].r2[1]));
    json_t *rasa = json_pack("{s:s, s:s, s:i, s:i, s:i, s:i, s:f, s:I, s:o}", "trainer",
                             "franca-train rasa", "data", data, "images", n, "rounds", c->rounds,
                             "epochs", c->epochs, "batch", c->batch, "lr", c->lr, "seed",
                             (json_int_t)c->seed, "r2_before_removal", r2);
    char *out = NULL;
    if (root && rasa && !json_object_set_new(root, "rasa", rasa))
        out = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    else json_decref(rasa);
    json_decref(root);
    return out;
}

int rasa_main(int argc, char **argv)
{
    const char *model = NULL, *idx = NULL, *folder = NULL, *out = NULL;
    struct rasa_train_config c = {.rounds = 9, .epochs = 5, .batch = 128, .lr = 2e-4, .seed = 0};
    long max_images = 0;
    enum st_dtype dtype = ST_F32;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_text, stdout);
            return 0;
        }
        if (a[0] != '-' || !a[1] || i + 1 >= argc)
            return bad_usage("unknown or incomplete argument '%s'", a);
        const char *v = argv[++i];
        long n;
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--train-idx")) idx = v;
        else if (!strcmp(a, "--train-folder")) folder = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--rounds")) {
            if (parse_long(v, 2, MAX_RASA_LAYERS + 1, &n))
                return bad_usage("--rounds must be an integer in 2..65 (the file holds R - 1 "
                                 "pre_pos_layers and pos_pred), not '%s'", v);
            c.rounds = (int)n;
        } else if (!strcmp(a, "--epochs")) {
            if (parse_long(v, 1, 100000, &n)) return bad_usage("--epochs must be an integer in 1..100000, not '%s'", v);
            c.epochs = (int)n;
        } else if (!strcmp(a, "--batch")) {
            if (parse_long(v, 1, 65536, &n)) return bad_usage("--batch must be an integer in 1..65536, not '%s'", v);
            c.batch = (int)n;
        } else if (!strcmp(a, "--max-images")) {
            if (parse_long(v, 0, 1L << 30, &n)) return bad_usage("--max-images must be a non-negative integer, not '%s'", v);
            max_images = n;
        } else if (!strcmp(a, "--seed")) {
            if (parse_long(v, 0, 1L << 62, &n)) return bad_usage("--seed must be a non-negative integer, not '%s'", v);
            c.seed = (uint64_t)n;
        } else if (!strcmp(a, "--lr")) {
            char *end;
            errno = 0;
            c.lr = strtod(v, &end);
            if (!*v || *end || errno || !(c.lr > 0.0) || !(c.lr < 10.0))
                return bad_usage("--lr must be a number in (0, 10), not '%s'", v);
        } else if (!strcmp(a, "--dtype")) {
            if (st_dtype_parse(v, &dtype)) return bad_usage("--dtype must be f32, bf16 or f16, not '%s'", v);
        } else return bad_usage("unknown argument '%s'", a);
    }
    if (!model) return bad_usage("%s is required", "--model");
    if (!out) return bad_usage("%s is required", "--out OUT.safetensors");
    if (!idx == !folder) return bad_usage("give exactly one of --train-idx IMAGES and --train-folder DIR%s", "");

    char err[ERR_LEN];
    struct checkpoint ck;
    if (checkpoint_load(model, &ck, err, sizeof err) < 0) {
        fprintf(stderr, "franca-train rasa: %s\n", err);
        return 1;
    }
    const int D = ck.cfg.embed_dim, P = ck.cfg.patch_size, C = ck.cfg.preprocess.crop_size;
    const int g = C / P;
    if (2 * c.rounds > D) {
        fprintf(stderr, "franca-train rasa: --rounds %d removes %d dimensions, more than the model's width %d\n",
                c.rounds, 2 * c.rounds, D);
        checkpoint_free(&ck);
        return EXIT_USAGE;
    }
    if (g < 2 || C % P) {
        fprintf(stderr, "franca-train rasa: %s: crop %d px at patch %d is not a grid of 2x2 patches or more; "
                "no position to learn\n", model, C, P);
        checkpoint_free(&ck);
        return 1;
    }
    if (ck.cfg.rasa_layers > 0)
        fprintf(stderr, "franca-train rasa: %s already has RASA tensors (%d rounds); they are replaced\n",
                model, ck.cfg.rasa_layers + 1);
    /* The output: the input's backbone, its config with the new round count. */
    struct model_config ocfg = ck.cfg;
    ocfg.rasa_layers = c.rounds - 1;
    struct vit_weights ow;
    if (vit_weights_alloc(&ocfg, &ow, err, sizeof err) < 0) {
        fprintf(stderr, "franca-train rasa: %s\n", err);
        checkpoint_free(&ck);
        return 1;
    }
    knn_weights_copy(&ocfg, &ow, &ck.w);
    struct vit_model *m = NULL;
    struct dataset ds;
    memset(&ds, 0, sizeof ds);
    float *tokens = NULL;
    struct rasa_round_stats *st = NULL;
    char *extra = NULL;
    int rc = 1;
    if (vit_model_from_checkpoint(&ck, &m, err, sizeof err) < 0) goto fail;
    if ((idx ? dataset_open_idx(idx, NULL, &ds, err, sizeof err)
             : dataset_open_folder(folder, &ds, err, sizeof err)) < 0)
        goto fail;
    const int n = max_images > 0 && max_images < ds.n ? (int)max_images : ds.n;
    if (n < 1) {
        set_err(err, sizeof err, "%s holds no images", idx ? idx : folder);
        goto fail;
    }
    const size_t nfl = (size_t)n * g * g * D;
    tokens = malloc(sizeof *tokens * nfl);
    st = calloc((size_t)c.rounds, sizeof *st);
    if (!tokens || !st) {
        set_err(err, sizeof err, "out of memory for %zu token floats", nfl);
        goto fail;
    }
    printf("franca-train rasa: %s (D %d, %dx%d patches at %d px), %d images of %s (tokens %.1f MiB), "
           "%d rounds x %d epochs, batch %d, lr %g -> %s\n",
           model, D, g, g, C, n, idx ? idx : folder, (double)nfl * sizeof(float) / (1 << 20),
           c.rounds, c.epochs, c.batch, c.lr, out);
    fflush(stdout);
    if (rasa_features(m, &ds, n, tokens, err, sizeof err) < 0) goto fail;
    if (rasa_train(&c, tokens, n, g, g, D, ow.rasa_w, st, stdout, err, sizeof err) < 0) goto fail;
    extra = rasa_metadata(model, idx ? idx : folder, n, &c, st);
    if (!extra) {
        set_err(err, sizeof err, "out of memory for the metadata");
        goto fail;
    }
    if (checkpoint_save(out, &ocfg, &ow, dtype, extra, err, sizeof err) < 0) goto fail;
    printf("franca-train rasa: wrote %s (rasa_layers %d)\n", out, ocfg.rasa_layers);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "franca-train rasa: %s\n", err);
done:
    free(extra);
    free(st);
    free(tokens);
    dataset_free(&ds);
    vit_model_free(m);
    checkpoint_free(&ck);
    vit_weights_free(&ow);
    return rc;
}
