#include "schedule.h"

#include <math.h>

double cosine_schedule_at(const struct cosine_schedule *s, int64_t step)
{
    if (step < 0) step = 0;
    if (step < s->warmup) {
        /* numpy.linspace(warmup_start, base, warmup): the end point included */
        if (s->warmup == 1) return s->warmup_start;
        return s->warmup_start +
               (s->base - s->warmup_start) * (double)step / (double)(s->warmup - 1);
    }
    if (step >= s->total) return s->final;
    const int64_t span = s->total - s->warmup;
    if (span <= 0) return s->final;
    const double i = (double)(step - s->warmup);
    return s->final + 0.5 * (s->base - s->final) * (1.0 + cos(M_PI * i / (double)span));
}

void train_schedule_init(struct train_schedule *s, int64_t total_steps, int64_t warmup_steps,
                         double peak_lr, double min_lr, double wd_start, double wd_end,
                         double momentum_start, double momentum_end, double tt_start,
                         double tt_end, int64_t tt_warmup, int64_t freeze_last_layer_steps)
{
    if (warmup_steps > total_steps) warmup_steps = total_steps;
    s->lr = (struct cosine_schedule){peak_lr, min_lr, total_steps, warmup_steps, 0.0};
    s->wd = (struct cosine_schedule){wd_start, wd_end, total_steps, 0, 0.0};
    s->momentum = (struct cosine_schedule){momentum_start, momentum_end, total_steps, 0, 0.0};
    s->teacher_temp_start = tt_start;
    s->teacher_temp_end = tt_end;
    s->teacher_temp_warmup = tt_warmup;
    s->freeze_last_layer_steps = freeze_last_layer_steps;
}

void train_schedule_at(const struct train_schedule *s, int64_t step, struct schedule_values *v)
{
    v->lr = cosine_schedule_at(&s->lr, step);
    v->wd = cosine_schedule_at(&s->wd, step);
    v->momentum = cosine_schedule_at(&s->momentum, step);
    const struct cosine_schedule tt = {s->teacher_temp_end, s->teacher_temp_end,
                                       s->teacher_temp_warmup, s->teacher_temp_warmup,
                                       s->teacher_temp_start};
    v->teacher_temp = cosine_schedule_at(&tt, step);
    v->freeze_last_layer = step < s->freeze_last_layer_steps;
}

double lr_scaled(double base_lr, int global_batch)
{
    return base_lr * sqrt((double)global_batch / 1024.0);
}
