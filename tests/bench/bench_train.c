/* Training-step benchmark driver (run by tests/bench/bench_train.py):
 *
 *   bench_train D DEPTH HEADS FFN_HIDDEN PATCH POS_GRID GLOBAL LOCAL N_LOCAL B
 *               HIDDEN BOTTLENECK PROTOTYPES STEPS [mlp] [fp32|bf16]
 *
 * One training step = objective_step (teacher forward, student forward on the
 * masked global and the local crops, losses, backward) + per-module clipping +
 * AdamW + EMA, on random crops with half of the global crops masked (30 % of
 * their patches). Runs one warm-up step, then STEPS timed steps, and prints
 * "images/s X" (samples per second; a sample is its 2 global + N_LOCAL crops).
 * fp32 (default) or bf16: the training precision (objective_config.precision). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "objective.h"
#include "optim.h"
#include "clock.h"

int main(int argc, char **argv)
{
    if (argc < 15) {
        fprintf(stderr, "usage: bench_train D DEPTH HEADS FFN_HIDDEN PATCH POS_GRID GLOBAL LOCAL "
                        "N_LOCAL B HIDDEN BOTTLENECK PROTOTYPES STEPS [mlp] [fp32|bf16]\n");
        return 2;
    }
    bool mlp = false, bf16 = false;
    for (int i = 15; i < argc; i++) {
        if (!strcmp(argv[i], "mlp")) mlp = true;
        else if (!strcmp(argv[i], "bf16")) bf16 = true;
        else if (strcmp(argv[i], "fp32")) {
            fprintf(stderr, "bench_train: unknown option %s (mlp, fp32 or bf16)\n", argv[i]);
            return 2;
        }
    }
    int a[14];
    for (int i = 0; i < 14; i++) a[i] = atoi(argv[i + 1]);
    const int D = a[0], G = a[6], L = a[7], nl = a[8], B = a[9], steps = a[13];
    struct objective_config oc;
    memset(&oc, 0, sizeof oc);
    model_config_defaults(&oc.backbone, D, a[1]);
    struct model_config *c = &oc.backbone;
    c->num_heads = a[2];
    c->ffn_hidden = a[3];
    c->ffn = mlp ? FFN_MLP : FFN_SWIGLU;
    c->patch_size = a[4];
    c->pos_grid = a[5];
    snprintf(c->name, sizeof c->name, "bench");
    snprintf(c->version, sizeof c->version, "0");
    oc.head.nested = true;
    oc.head.n_levels = 5;
    for (int j = 0; j < 5; j++) oc.head.widths[j] = D >> (4 - j);
    oc.head.hidden = a[10];
    oc.head.bottleneck = a[11];
    oc.head.prototypes = a[12];
    oc.student_temp = 0.1f;
    oc.koleo_weight = 0.1f;
    oc.drop_path = 0.0f;
    oc.precision = bf16 ? MM_BF16 : MM_F32;
    char err[512];
    struct objective *o;
    if (objective_create(&oc, 1, &o, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    struct param_list *pl = objective_params(o);
    struct optimizer *opt;
    if (optimizer_create(pl, &opt)) return 1;
    struct rng r;
    rng_seed(&r, 3);
    const int P = c->patch_size, N = (G / P) * (G / P);
    float *glob = malloc(sizeof(float) * 2 * B * 3 * G * G);
    float *loc = malloc(sizeof(float) * (nl ? nl : 1) * B * 3 * L * L);
    uint8_t *masks = calloc((size_t)2 * B * N, 1);
    for (size_t i = 0; i < (size_t)2 * B * 3 * G * G; i++) glob[i] = (float)rng_normal(&r);
    for (size_t i = 0; i < (size_t)nl * B * 3 * L * L; i++) loc[i] = (float)rng_normal(&r);
    for (int i = 0; i < 2 * B; i += 2)
        for (int n = 0; n < N; n++) masks[(size_t)i * N + n] = rng_uniform(&r) < 0.3;
    struct crop_batch bt = { B, G, nl, L, glob, loc, masks };
    struct optim_hparams hp = { 1e-4f, 0.04f, 0.9f, 0.999f, 1e-8f, false };
    double t0 = 0.0;
    for (int s = 0; s <= steps; s++) {
        if (s == 1) t0 = clock_now_s();
        param_list_zero_grad(pl);
        struct loss_terms lt;
        if (objective_step(o, &bt, 0.04f, &r, &lt, err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        for (int m = 0; m < MOD_COUNT; m++) clip_grad_norm(pl, m, 3.0f);
        optimizer_step(opt, pl, &hp);
        ema_update(pl, 0.994f);
        if (s == 0) printf("loss %.6f\n", lt.total);
    }
    const double dt = clock_now_s() - t0;
    printf("images/s %.3f\n", steps * B / dt);
    optimizer_free(opt);
    objective_free(o);
    free(glob);
    free(loc);
    free(masks);
    return 0;
}
