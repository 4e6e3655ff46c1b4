/* Test driver for the gradient-parity test (tests/train/test_grad_parity.py):
 *
 *   objective_dump IN.safetensors OUT.safetensors
 *
 * IN carries, in __metadata__["config"], a JSON object with the tiny model's
 * shape (D, depth, heads, ffn, ffn_hidden, patch, pos_grid, layerscale, nested,
 * widths, level_weights (optional), prototypes, hidden, bottleneck, B, global, local, n_local,
 * teacher_temp, student_temp, koleo_weight, drop_path, steps, and for steps > 1:
 * lr, wd, momentum, clip; optional precision "fp32" (default) or "bf16"), and the tensors: every parameter by its param-list
 * name (student weights), optionally "teacher." + name (teacher copy; default
 * the student's), "global" [2B,3,G,G], "local" [nl*B,3,L,L], "masks" [2B,N]
 * (0/1 as float) and, when drop_path > 0, "subset.{pass}.{layer}.{branch}" [k]
 * (the kept sample indices, fed to objective_set_drop_path_hook).
 *
 * steps == 1: writes "loss" [5] (total, dino_local, dino_global, ibot, koleo)
 * and "grad." + name for every parameter. steps > 1: runs that many steps of
 * objective_step + per-module clipping + AdamW + EMA on the same batch and
 * writes "losses" [steps, 5] and the final "student." / "teacher." weights. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "objective.h"
#include "optim.h"
#include "safetensors.h"

static int geti(json_t *o, const char *k, int def)
{
    json_t *v = json_object_get(o, k);
    if (v && json_is_boolean(v)) return json_is_true(v);
    return v ? (int)json_integer_value(v) : def;
}

static double getd(json_t *o, const char *k, double def)
{
    json_t *v = json_object_get(o, k);
    return v ? json_number_value(v) : def;
}

static float *load(const struct st_file *st, const char *name, size_t n, int required)
{
    const struct st_tensor *t = st_find(st, name);
    if (!t) {
        if (required) fprintf(stderr, "objective_dump: missing tensor %s\n", name);
        return NULL;
    }
    if (st_numel(t) != n) {
        fprintf(stderr, "objective_dump: tensor %s has %zu elements, expected %zu\n", name,
                st_numel(t), n);
        exit(1);
    }
    float *p = malloc(sizeof(float) * (n ? n : 1));
    if (!p) exit(1);
    st_to_f32(t, 0, n, p);
    return p;
}

struct hook_ctx { const struct st_file *st; };

static void subset_hook(void *ctx, int pass, int layer, int branch, int b, int k, int *idx)
{
    const struct hook_ctx *h = ctx;
    char name[64];
    snprintf(name, sizeof name, "subset.%d.%d.%d", pass, layer, branch);
    float *v = load(h->st, name, (size_t)k, 1);
    if (!v) exit(1);
    for (int i = 0; i < k; i++) {
        idx[i] = (int)v[i];
        if (idx[i] < 0 || idx[i] >= b) exit(1);
    }
    free(v);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: objective_dump IN.safetensors OUT.safetensors\n");
        return 2;
    }
    char err[512] = "";
    struct st_file st;
    if (st_open(argv[1], &st, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    const char *js = st_metadata_get(&st, "config");
    json_error_t jerr;
    json_t *cj = js ? json_loads(js, 0, &jerr) : NULL;
    if (!cj) {
        fprintf(stderr, "objective_dump: no config metadata\n");
        return 1;
    }

    struct objective_config oc;
    memset(&oc, 0, sizeof oc);
    const int D = geti(cj, "D", 32), depth = geti(cj, "depth", 2);
    model_config_defaults(&oc.backbone, D, depth);
    struct model_config *c = &oc.backbone;
    c->num_heads = geti(cj, "heads", 2);
    const char *ffn = json_string_value(json_object_get(cj, "ffn"));
    c->ffn = ffn && !strcmp(ffn, "mlp") ? FFN_MLP : FFN_SWIGLU;
    c->ffn_hidden = geti(cj, "ffn_hidden", 64);
    c->patch_size = geti(cj, "patch", 4);
    c->pos_grid = geti(cj, "pos_grid", 4);
    c->layerscale = geti(cj, "layerscale", 1) != 0;
    c->n_widths = 1;
    c->widths[0] = D;
    snprintf(c->name, sizeof c->name, "objective_dump");
    snprintf(c->version, sizeof c->version, "0");
    struct head_config *hc = &oc.head;
    hc->nested = geti(cj, "nested", 1) != 0;
    json_t *wj = json_object_get(cj, "widths");
    hc->n_levels = wj ? (int)json_array_size(wj) : 0;
    for (int j = 0; j < hc->n_levels && j < HEAD_MAX_LEVELS; j++)
        hc->widths[j] = (int)json_integer_value(json_array_get(wj, j));
    json_t *lw = json_object_get(cj, "level_weights");
    for (size_t j = 0; lw && j < json_array_size(lw) && j < HEAD_MAX_LEVELS; j++)
        hc->level_weights[j] = (float)json_number_value(json_array_get(lw, j));
    hc->prototypes = geti(cj, "prototypes", 64);
    hc->hidden = geti(cj, "hidden", 32);
    hc->bottleneck = geti(cj, "bottleneck", 16);
    oc.student_temp = (float)getd(cj, "student_temp", 0.1);
    oc.koleo_weight = (float)getd(cj, "koleo_weight", 0.1);
    oc.koleo_levels = geti(cj, "koleo_levels", 0) != 0;
    oc.drop_path = (float)getd(cj, "drop_path", 0.0);
    const char *prec = json_string_value(json_object_get(cj, "precision"));
    if (prec && strcmp(prec, "fp32") && strcmp(prec, "bf16")) {
        fprintf(stderr, "objective_dump: precision must be fp32 or bf16, got %s\n", prec);
        return 1;
    }
    oc.precision = prec && !strcmp(prec, "bf16") ? MM_BF16 : MM_F32;

    struct objective *o;
    if (objective_create(&oc, 1, &o, err, sizeof err)) {
        fprintf(stderr, "objective_create: %s\n", err);
        return 1;
    }
    struct param_list *pl = objective_params(o);
    for (int i = 0; i < pl->n; i++) {
        struct param *p = &pl->p[i];
        float *w = load(&st, p->name, p->n, 1);
        if (!w) return 1;
        memcpy(p->w, w, sizeof(float) * p->n);
        free(w);
        char tn[160];
        snprintf(tn, sizeof tn, "teacher.%s", p->name);
        float *t = load(&st, tn, p->n, 0);
        memcpy(p->t, t ? t : p->w, sizeof(float) * p->n);
        free(t);
    }

    const int B = geti(cj, "B", 2), G = geti(cj, "global", 16), L = geti(cj, "local", 8);
    const int nl = geti(cj, "n_local", 2), P = c->patch_size, N = (G / P) * (G / P);
    float *glob = load(&st, "global", (size_t)2 * B * 3 * G * G, 1);
    float *loc = nl ? load(&st, "local", (size_t)nl * B * 3 * L * L, 1) : NULL;
    float *mf = load(&st, "masks", (size_t)2 * B * N, 1);
    if (!glob || (nl && !loc) || !mf) return 1;
    uint8_t *masks = malloc((size_t)2 * B * N);
    for (int i = 0; i < 2 * B * N; i++) masks[i] = mf[i] != 0.0f;
    struct crop_batch batch = { B, G, nl, L, glob, loc, masks };

    struct hook_ctx hctx = { &st };
    if (oc.drop_path > 0.0f) objective_set_drop_path_hook(o, subset_hook, &hctx);

    const int steps = geti(cj, "steps", 1);
    const float ttemp = (float)getd(cj, "teacher_temp", 0.07);
    struct rng rng;
    rng_seed(&rng, 7);
    struct st_writer *w = st_writer_new();
    float *losses = calloc((size_t)steps * 5, sizeof(float));
    struct optimizer *opt = NULL;
    if (steps > 1 && optimizer_create(pl, &opt)) return 1;
    struct optim_hparams hp = { (float)getd(cj, "lr", 1e-3), (float)getd(cj, "wd", 0.04), 0.9f,
                                0.999f, 1e-8f, false };
    const float momentum = (float)getd(cj, "momentum", 0.9), clip = (float)getd(cj, "clip", 3.0);
    for (int s = 0; s < steps; s++) {
        for (int i = 0; i < pl->n; i++) memset(pl->p[i].g, 0, sizeof(float) * pl->p[i].n);
        struct loss_terms lt;
        if (objective_step(o, &batch, ttemp, &rng, &lt, err, sizeof err)) {
            fprintf(stderr, "objective_step: %s\n", err);
            return 1;
        }
        const double v[5] = { lt.total, lt.dino_local, lt.dino_global, lt.ibot, lt.koleo };
        for (int k = 0; k < 5; k++) losses[s * 5 + k] = (float)v[k];
        printf("step %d: total %.9g dino_local %.9g dino_global %.9g ibot %.9g koleo %.9g\n", s,
               v[0], v[1], v[2], v[3], v[4]);
        if (steps > 1) {
            if (clip > 0.0f)
                for (int m = 0; m < MOD_COUNT; m++) clip_grad_norm(pl, m, clip);
            optimizer_step(opt, pl, &hp);
            ema_update(pl, momentum);
        }
    }
    int64_t shape[2] = { steps, 5 };
    int rc = 0;
    if (steps == 1) {
        int64_t s1 = 5;
        rc |= st_writer_add_f32(w, "loss", ST_F32, losses, 1, &s1, err, sizeof err);
    } else {
        rc |= st_writer_add_f32(w, "losses", ST_F32, losses, 2, shape, err, sizeof err);
    }
    char (*names)[176] = calloc((size_t)pl->n * 2, sizeof *names);
    for (int i = 0; i < pl->n && !rc; i++) {
        int64_t n = (int64_t)pl->p[i].n;
        if (steps == 1) {
            snprintf(names[2 * i], sizeof names[0], "grad.%s", pl->p[i].name);
            rc |= st_writer_add_f32(w, names[2 * i], ST_F32, pl->p[i].g, 1, &n, err, sizeof err);
        } else {
            snprintf(names[2 * i], sizeof names[0], "student.%s", pl->p[i].name);
            snprintf(names[2 * i + 1], sizeof names[0], "teacher.%s", pl->p[i].name);
            rc |= st_writer_add_f32(w, names[2 * i], ST_F32, pl->p[i].w, 1, &n, err, sizeof err);
            rc |= st_writer_add_f32(w, names[2 * i + 1], ST_F32, pl->p[i].t, 1, &n, err,
                                    sizeof err);
        }
    }
    if (rc || st_writer_finish(w, argv[2], err, sizeof err)) {
        fprintf(stderr, "objective_dump: %s\n", err);
        return 1;
    }
    st_writer_free(w);
    free(names);
    free(losses);
    optimizer_free(opt);
    free(glob);
    free(loc);
    free(mf);
    free(masks);
    objective_free(o);
    json_decref(cj);
    st_close(&st);
    return 0;
}
