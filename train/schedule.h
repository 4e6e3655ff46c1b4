/* Training schedules (docs/model.md §13, franca/utils/utils.py::CosineScheduler).
 *
 * A cosine schedule over total steps: for step < warmup, linear from
 * warmup_start to base (numpy.linspace(warmup_start, base, warmup), end point
 * included: step warmup-1 has the base value); afterwards
 * final + 0.5 * (base - final) * (1 + cos(pi * i / (total - warmup))) with
 * i = step - warmup; at or past total, final.
 * The teacher temperature is the same schedule with base == final == end,
 * warmup == total == the warm-up steps, warmup_start == start. */
#ifndef FRANCA_TRAIN_SCHEDULE_H
#define FRANCA_TRAIN_SCHEDULE_H

#include <stdbool.h>
#include <stdint.h>

struct cosine_schedule {
    double base, final;
    int64_t total, warmup;
    double warmup_start;
};

double cosine_schedule_at(const struct cosine_schedule *s, int64_t step);

/* Every per-step value of a run. */
struct train_schedule {
    struct cosine_schedule lr;        /* warmup from 0, cosine to min_lr */
    struct cosine_schedule wd;        /* 0.04 -> 0.2, no warmup */
    struct cosine_schedule momentum;  /* 0.994 -> 1.0, no warmup */
    double teacher_temp_start, teacher_temp_end;  /* 0.04 -> 0.07 */
    int64_t teacher_temp_warmup;      /* linear warm-up steps, then constant */
    int64_t freeze_last_layer_steps;  /* last layer lr 0 while step < this */
};

struct schedule_values {
    double lr, wd, momentum, teacher_temp;
    bool freeze_last_layer;
};

/* peak_lr: already scaled (see lr_scaled). */
void train_schedule_init(struct train_schedule *s, int64_t total_steps, int64_t warmup_steps,
                         double peak_lr, double min_lr, double wd_start, double wd_end,
                         double momentum_start, double momentum_end, double tt_start,
                         double tt_end, int64_t tt_warmup, int64_t freeze_last_layer_steps);
void train_schedule_at(const struct train_schedule *s, int64_t step, struct schedule_values *v);

/* The sqrt_wrt_1024 scaling rule: base_lr * sqrt(global_batch / 1024). */
double lr_scaled(double base_lr, int global_batch);

#endif
