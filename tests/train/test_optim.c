/* AdamW against torch.optim.AdamW (values produced by torch 1.13, foreach=False,
 * three param groups), clip_grad_norm_ against torch.nn.utils.clip_grad_norm_,
 * the EMA update, and the schedules of docs/model.md §13. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/check.h"
#include "optim.h"
#include "params.h"
#include "schedule.h"

static void test_adamw(void)
{
    float A[4] = {0.5f, -1.0f, 2.0f, 0.25f}, B[3] = {1.0f, -0.5f, 0.125f}, C[2] = {0.75f, -2.0f};
    float gA[4], gB[3], gC[2];
    struct param_list l = {0};
    CHECK(param_list_add(&l, "backbone.blocks.0.mlp.fc1.weight", A, gA, NULL, 4, MOD_BACKBONE, 1.0f, 1.0f, false) == 0, "add");
    CHECK(param_list_add(&l, "backbone.patch_embed.proj.bias", B, gB, NULL, 3, MOD_BACKBONE, 0.0f, 0.2f, false) == 0, "add");
    CHECK(param_list_add(&l, "dino_head.last_layers.0.weight_g", C, gC, NULL, 2, MOD_DINO_HEAD, 1.0f, 1.0f, true) == 0, "add");
    struct optimizer *o;
    CHECK(optimizer_create(&l, &o) == 0, "create");
    float *g[3] = {gA, gB, gC};
    for (int s = 0; s < 3; s++) {
        for (int i = 0; i < 3; i++)
            for (size_t k = 0; k < l.p[i].n; k++)
                g[i][k] = (float)((k + 1) * (s + 1) * 0.1 * (((k + i) % 2) ? -1 : 1));
        struct optim_hparams h = {0.01f, 0.04f, 0.9f, 0.999f, 1e-8f, s < 2};
        optimizer_step(o, &l, &h);
    }
    const float eA[4] = {0.470180273f, -0.969580472f, 1.96838093f, 0.278920084f};
    const float eB[3] = {1.00584638f, -0.505846322f, 0.130846381f};
    const float eC[2] = {0.740119994f, -1.98961997f};
    CHECK(max_abs_diff(A, eA, 4) < 2e-7f, "AdamW decayed param: %g", max_abs_diff(A, eA, 4));
    CHECK(max_abs_diff(B, eB, 3) < 2e-7f, "AdamW lr_mult/no-decay param: %g", max_abs_diff(B, eB, 3));
    CHECK(max_abs_diff(C, eC, 2) < 2e-7f, "AdamW frozen-then-free last layer: %g", max_abs_diff(C, eC, 2));
    CHECK(optimizer_get_step(o) == 3, "step count");
    CHECK(optimizer_m(o, 0) && optimizer_v(o, 2) && !optimizer_m(o, 3), "state accessors");
    optimizer_free(o);
    param_list_free(&l);
}

static void test_clip(void)
{
    float w1[2] = {0}, w2[1] = {0}, w3[1] = {0};
    float g1[2] = {3.0f, 4.0f}, g2[1] = {12.0f}, g3[1] = {100.0f};
    struct param_list l = {0};
    param_list_add(&l, "a", w1, g1, NULL, 2, MOD_BACKBONE, 1, 1, false);
    param_list_add(&l, "b", w2, g2, NULL, 1, MOD_BACKBONE, 1, 1, false);
    param_list_add(&l, "c", w3, g3, NULL, 1, MOD_IBOT_HEAD, 1, 1, false);
    double n = clip_grad_norm(&l, MOD_BACKBONE, 3.0f);
    CHECK(fabs(n - 13.0) < 1e-9, "norm %g", n);
    const float e[3] = {0.692307651f, 0.923076868f, 2.7692306f};
    CHECK(fabsf(g1[0] - e[0]) < 1e-6f && fabsf(g1[1] - e[1]) < 1e-6f && fabsf(g2[0] - e[2]) < 1e-6f,
          "clipped grads %g %g %g", g1[0], g1[1], g2[0]);
    CHECK(g3[0] == 100.0f, "other module untouched");
    float before = g1[0];
    n = clip_grad_norm(&l, MOD_BACKBONE, 100.0f);
    CHECK(g1[0] == before && fabs(n - 3.0) < 1e-5, "no clipping below max_norm (norm %g)", n);
    n = clip_grad_norm(&l, MOD_DINO_HEAD, 1.0f);
    CHECK(n == 0.0, "empty module has norm 0");
    param_list_zero_grad(&l);
    CHECK(g1[0] == 0 && g2[0] == 0 && g3[0] == 0, "zero_grad");
    param_list_free(&l);
}

static void test_ema(void)
{
    float w[3] = {1.0f, 2.0f, -4.0f}, t[3] = {0.0f, 2.0f, 4.0f}, g[3] = {0};
    float w2[1] = {5.0f}, g2[1] = {0};
    struct param_list l = {0};
    param_list_add(&l, "a", w, g, t, 3, MOD_BACKBONE, 1, 1, false);
    param_list_add(&l, "b", w2, g2, NULL, 1, MOD_BACKBONE, 1, 1, false);
    ema_update(&l, 0.75f);
    CHECK(fabsf(t[0] - 0.25f) < 1e-7f && fabsf(t[1] - 2.0f) < 1e-7f && fabsf(t[2] - 2.0f) < 1e-7f,
          "ema %g %g %g", t[0], t[1], t[2]);
    ema_update(&l, 1.0f);
    CHECK(fabsf(t[0] - 0.25f) < 1e-7f, "momentum 1 keeps the teacher");
    param_list_free(&l);
}

static void test_schedules(void)
{
    /* numpy: CosineScheduler(base 1e-3, final 1e-6, total 100, warmup 10, start 0) */
    struct cosine_schedule s = {1e-3, 1e-6, 100, 10, 0.0};
    CHECK(cosine_schedule_at(&s, 0) == 0.0, "warmup starts at 0");
    CHECK(fabs(cosine_schedule_at(&s, 9) - 1e-3) < 1e-15, "warmup ends at base (linspace end point)");
    CHECK(fabs(cosine_schedule_at(&s, 3) - 1e-3 * 3 / 9) < 1e-15, "warmup linear");
    CHECK(fabs(cosine_schedule_at(&s, 10) - 1e-3) < 1e-15, "cosine starts at base");
    const double mid = 1e-6 + 0.5 * (1e-3 - 1e-6) * (1 + cos(M_PI * 45 / 90.0));
    CHECK(fabs(cosine_schedule_at(&s, 55) - mid) < 1e-15, "cosine middle");
    CHECK(cosine_schedule_at(&s, 100) == 1e-6 && cosine_schedule_at(&s, 1000) == 1e-6, "final");
    CHECK(cosine_schedule_at(&s, 99) > 1e-6 && cosine_schedule_at(&s, 99) < 1.4e-6, "near final");

    struct train_schedule t;
    train_schedule_init(&t, 1000, 100, 2e-3, 1e-6, 0.04, 0.2, 0.994, 1.0, 0.04, 0.07, 300, 50);
    struct schedule_values v;
    train_schedule_at(&t, 0, &v);
    CHECK(v.lr == 0.0 && fabs(v.wd - 0.04) < 1e-12 && fabs(v.momentum - 0.994) < 1e-12, "step 0");
    CHECK(fabs(v.teacher_temp - 0.04) < 1e-12 && v.freeze_last_layer, "step 0 tt/freeze");
    train_schedule_at(&t, 500, &v);
    CHECK(fabs(v.wd - (0.2 + 0.5 * (0.04 - 0.2) * (1 + cos(M_PI * 0.5)))) < 1e-12, "wd cosine %g", v.wd);
    CHECK(fabs(v.momentum - 0.997) < 1e-9, "momentum halfway %g", v.momentum);
    CHECK(fabs(v.teacher_temp - 0.07) < 1e-12 && !v.freeze_last_layer, "tt after warm-up");
    train_schedule_at(&t, 299, &v);
    CHECK(fabs(v.teacher_temp - 0.07) < 1e-12, "tt warm-up end %g", v.teacher_temp);
    train_schedule_at(&t, 150, &v);
    CHECK(fabs(v.teacher_temp - (0.04 + 0.03 * 150 / 299.0)) < 1e-12, "tt linear %g", v.teacher_temp);
    train_schedule_at(&t, 49, &v);
    CHECK(v.freeze_last_layer, "frozen before 50");
    train_schedule_at(&t, 50, &v);
    CHECK(!v.freeze_last_layer, "free from 50");
    train_schedule_at(&t, 1000, &v);
    CHECK(v.lr == 1e-6 && fabs(v.momentum - 1.0) < 1e-12 && fabs(v.wd - 0.2) < 1e-12, "end");
    CHECK(fabs(lr_scaled(7.01e-4, 2048) - 7.01e-4 * sqrt(2.0)) < 1e-15, "sqrt scaling");
    CHECK(fabs(lr_scaled(1e-3, 256) - 5e-4) < 1e-15, "sqrt scaling down");
}

int main(void)
{
    test_adamw();
    test_clip();
    test_ema();
    test_schedules();
    return check_summary();
}
