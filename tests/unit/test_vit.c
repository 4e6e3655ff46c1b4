/* The forward's workspace handling: a workspace reused across batch sizes,
 * resolutions and models of different shapes gives the same results as a fresh
 * one (a workspace sized for a narrower model must never be reused as is).
 * Intermediate layers. The plain matrices a bf16 layout releases: memory goes
 * back, and a later fp32 forward computes exactly what a fresh model does. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "errors.h"
#include "mm.h"
#include "vit.h"

/* How a test model's weights are drawn: the trainer's initialisation, or
 * uniform in +-0.05 (quicker for wide models), as float32 or rounded to bf16
 * numbers (as a bf16 checkpoint loads). */
enum values { VALUES_INIT, VALUES_UNIFORM, VALUES_UNIFORM_BF16 };

static struct vit_model *make_model_values(int D, int depth, enum ffn_kind ffn, uint64_t seed,
                                           enum values values)
{
    struct checkpoint ck;
    memset(&ck, 0, sizeof ck);
    model_config_defaults(&ck.cfg, D, depth);
    ck.cfg.num_heads = 2;
    ck.cfg.pos_grid = 4;
    ck.cfg.ffn = ffn;
    ck.cfg.ffn_hidden = ffn == FFN_SWIGLU ? swiglu_hidden_for(D) : 4 * D;
    char err[ERR_LEN];
    if (vit_weights_alloc(&ck.cfg, &ck.w, err, sizeof err)) return NULL;
    if (values == VALUES_INIT) vit_weights_init_random(&ck.cfg, &ck.w, seed);
    for (size_t i = 0; values != VALUES_INIT && i < ck.w.arena_floats; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        const float v = ((float)(seed >> 40) / (float)(1 << 24) - 0.5f) * 0.1f;
        ck.w.arena[i] = values == VALUES_UNIFORM_BF16 ? mm_bf16_value(mm_bf16_round(v)) : v;
    }
    struct vit_model *m = NULL;
    if (vit_model_from_checkpoint(&ck, &m, err, sizeof err)) return NULL;
    return m;
}

static struct vit_model *make_model(int D, int depth, enum ffn_kind ffn, uint64_t seed)
{
    return make_model_values(D, depth, ffn, seed, VALUES_INIT);
}

static float *input(int B, int H, int W)
{
    float *x = malloc(sizeof(float) * B * 3 * H * W);
    for (int i = 0; i < B * 3 * H * W; i++) x[i] = (float)((i * 7919) % 201) / 50.0f - 2.0f;
    return x;
}

/* CLS of m on x with a fresh workspace. */
static float *fresh_cls(struct vit_model *m, const float *x, int B, int H, int W)
{
    const int D = vit_model_config(m)->embed_dim;
    float *cls = malloc(sizeof(float) * B * D);
    struct vit_workspace *ws = NULL;
    struct vit_outputs out = {.cls = cls};
    char err[ERR_LEN];
    CHECK(vit_forward(m, &ws, x, B, H, W, &out, err, sizeof err) == 0, "forward: %s", err);
    vit_workspace_free(ws);
    return cls;
}

/* Layer outputs of m on x ([L, B, ...]) for the blocks in layers. */
static void run_layers(struct vit_model *m, const float *x, int B, const int *layers, int L,
                       bool norm, float *cls, float *patch, float *lcls, float *lpatch)
{
    struct vit_outputs out = {.cls = cls, .patch = patch, .n_layers = L, .layers = layers,
                              .layer_norm = norm, .layer_cls = lcls, .layer_patch = lpatch};
    struct vit_workspace *ws = NULL;
    char err[ERR_LEN];
    CHECK(vit_forward(m, &ws, x, B, 56, 56, &out, err, sizeof err) == 0, "layers: %s", err);
    vit_workspace_free(ws);
}

/* Intermediate layers: the last one through the norm is the final output; a
 * batch gives each image what it gets alone; bad lists are refused. */
static void test_layers(struct vit_model *m)
{
    const int D = vit_model_config(m)->embed_dim, N = 16, B = 2, L = 3;
    const int layers[3] = {1, 0, 1};
    const size_t tok = (size_t)N * D;
    float *x = input(B, 56, 56), *cls = malloc(sizeof(float) * B * D);
    float *patch = malloc(sizeof(float) * B * tok), *lcls = malloc(sizeof(float) * L * B * D);
    float *lpatch = malloc(sizeof(float) * L * B * tok), *one = malloc(sizeof(float) * L * tok);
    float *onec = malloc(sizeof(float) * L * D);
    for (int norm = 1; norm >= 0; norm--) {
        run_layers(m, x, B, layers, L, norm, cls, patch, lcls, lpatch);
        if (norm)
            CHECK(max_abs_diff(lcls, cls, (size_t)B * D) == 0.0f &&
                      max_abs_diff(lpatch, patch, B * tok) == 0.0f,
                  "the last block through the norm is the final output");
        else
            CHECK(max_abs_diff(lcls, cls, (size_t)B * D) > 1e-3f, "norm false: the raw stream");
        CHECK(max_abs_diff(lcls + 2 * B * D, lcls, (size_t)B * D) == 0.0f &&
                  max_abs_diff(lpatch + 2 * B * tok, lpatch, B * tok) == 0.0f,
              "a block listed twice fills both slots");
        run_layers(m, x + 3 * 56 * 56, 1, layers, L, norm, cls, patch, onec, one);
        for (int k = 0; k < L; k++)
            CHECK(max_abs_diff(onec + k * D, lcls + ((size_t)k * B + 1) * D, D) < 1e-5f &&
                      max_abs_diff(one + k * tok, lpatch + ((size_t)k * B + 1) * tok, tok) < 1e-5f,
                  "norm %d slot %d: image 1 of the batch matches it alone", norm, k);
    }
    char err[ERR_LEN];
    struct vit_workspace *ws = NULL;
    const int beyond[1] = {2};
    struct vit_outputs bad = {.cls = cls, .n_layers = 1, .layers = beyond, .layer_cls = lcls};
    CHECK(vit_forward(m, &ws, x, 1, 56, 56, &bad, err, sizeof err) == -1 &&
              strstr(err, "has 2 blocks"), "block past the depth refused: %s", err);
    bad.layers = NULL;
    CHECK(vit_forward(m, &ws, x, 1, 56, 56, &bad, err, sizeof err) == -1, "no list refused");
    vit_workspace_free(ws);
    free(x); free(cls); free(patch); free(lcls); free(lpatch); free(one); free(onec);
}

/* The process's resident anonymous memory in MiB. */
static double rss_anon_mib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "RssAnon:", 8)) kb = atof(line + 8);
    if (f) fclose(f);
    return kb / 1024;
}

/* A bf16 layout of a model whose matrices are bf16 numbers gives their pages
 * back (RSS falls by about half their float32 size where a copy alone would
 * add half); one whose values are not keeps them. Either way, moving to fp32
 * afterwards computes exactly what a fresh fp32 model computes. */
static void test_release(enum ffn_kind ffn)
{
    const int D = 768, depth = 2;
    const double matrices_mib = 12.0 * D * D * depth * sizeof(float) / (1 << 20);
    float *x = input(2, 28, 28);
    char err[ERR_LEN];
    for (int bf16 = 1; bf16 >= 0; bf16--) {
        const enum values values = bf16 ? VALUES_UNIFORM_BF16 : VALUES_UNIFORM;
        struct vit_model *m = make_model_values(D, depth, ffn, 7, values);
        struct vit_model *fresh = make_model_values(D, depth, ffn, 7, values);
        CHECK(m && fresh, "models built");
        const double before = rss_anon_mib();
        CHECK(vit_model_use_device(m, VIT_DEVICE_CPU, VIT_PRECISION_BF16, err, sizeof err) == 0,
              "bf16 layout: %s", err);
        const double change = rss_anon_mib() - before;
        float *bf = fresh_cls(m, x, 2, 28, 28);
        /* Released wrongly, float32 values would come back rounded: the fp32
         * comparison below fails. */
        if (bf16)
            CHECK(change < -0.25 * matrices_mib, "%s, bf16 values: the plain matrices (%.0f MiB) "
                  "went back, RSS %+.0f MiB", ffn == FFN_SWIGLU ? "SwiGLU" : "MLP",
                  matrices_mib, change);
        CHECK(vit_model_use_device(m, VIT_DEVICE_CPU, VIT_PRECISION_FP32, err, sizeof err) == 0 &&
                  vit_model_use_device(fresh, VIT_DEVICE_CPU, VIT_PRECISION_FP32, err,
                                       sizeof err) == 0,
              "fp32 layout: %s", err);
        float *got = fresh_cls(m, x, 2, 28, 28), *want = fresh_cls(fresh, x, 2, 28, 28);
        CHECK(max_abs_diff(got, want, 2 * (size_t)D) == 0.0f,
              "after bf16, fp32 computes what a fresh model does (values %s)",
              bf16 ? "bf16" : "float32");
        CHECK(vit_model_use_device(m, VIT_DEVICE_CPU, VIT_PRECISION_BF16, err, sizeof err) == 0,
              "bf16 again: %s", err);
        float *again = fresh_cls(m, x, 2, 28, 28);
        CHECK(max_abs_diff(again, bf, 2 * (size_t)D) == 0.0f, "bf16 again: the same outputs");
        free(bf); free(got); free(want); free(again);
        vit_model_free(m);
        vit_model_free(fresh);
    }
    free(x);
}

int main(void)
{
    struct vit_model *narrow = make_model(32, 2, FFN_SWIGLU, 1);
    struct vit_model *wide = make_model(64, 2, FFN_SWIGLU, 2);
    struct vit_model *mlp = make_model(64, 2, FFN_MLP, 3);
    CHECK(narrow && wide && mlp, "models built");
    char err[ERR_LEN];

    /* One workspace through several shapes and models, compared with fresh ones. */
    struct { struct vit_model *m; int B, H, W; } runs[] = {
        {narrow, 3, 56, 56}, {wide, 2, 56, 56}, {narrow, 1, 28, 42}, {mlp, 2, 56, 56},
        {wide, 3, 56, 56}, {narrow, 4, 56, 56},
    };
    struct vit_workspace *ws = NULL;
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        const int B = runs[i].B, H = runs[i].H, W = runs[i].W;
        const int D = vit_model_config(runs[i].m)->embed_dim;
        float *x = input(B, H, W), *cls = malloc(sizeof(float) * B * D);
        struct vit_outputs out = {.cls = cls};
        CHECK(vit_forward(runs[i].m, &ws, x, B, H, W, &out, err, sizeof err) == 0, "run %zu: %s", i, err);
        float *ref = fresh_cls(runs[i].m, x, B, H, W);
        CHECK(max_abs_diff(cls, ref, (size_t)B * D) == 0.0f, "run %zu: reused workspace matches a fresh one", i);
        free(x); free(cls); free(ref);
    }
    vit_workspace_free(ws);

    /* Bad shapes are refused with a message, not computed. */
    float *x = input(1, 56, 56), cls[64];
    struct vit_outputs out = {.cls = cls};
    ws = NULL;
    CHECK(vit_forward(wide, &ws, x, 1, 56, 50, &out, err, sizeof err) == -1 && strstr(err, "multiples"),
          "non-multiple width refused: %s", err);
    CHECK(vit_forward(wide, &ws, x, 0, 56, 56, &out, err, sizeof err) == -1, "batch 0 refused");
    struct vit_outputs rasa = {.patch_rasa = cls};
    CHECK(vit_forward(wide, &ws, x, 1, 56, 56, &rasa, err, sizeof err) == -1 && strstr(err, "RASA"),
          "RASA output without RASA tensors refused");
    CHECK(vit_check_resolution(wide, 1806, 14, err, sizeof err) == -1, "side above the limit refused");
    vit_workspace_free(ws);
    free(x);
    test_layers(mlp);
    test_layers(narrow);
    if (mm_bf16_supported()) {
        test_release(FFN_SWIGLU);
        test_release(FFN_MLP);
    } else {
        printf("note: this CPU has no bf16 products; the bf16 layout's release is not run\n");
    }
    vit_model_free(narrow);
    vit_model_free(wide);
    vit_model_free(mlp);
    return check_summary();
}
