#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct optimizer {
    int n;
    float **m, **v;   /* per param, n floats each */
    int64_t step;
};

int optimizer_create(const struct param_list *l, struct optimizer **out)
{
    *out = NULL;
    struct optimizer *o = calloc(1, sizeof *o);
    if (!o) return -1;
    o->n = l->n;
    o->m = calloc(l->n ? (size_t)l->n : 1, sizeof *o->m);
    o->v = calloc(l->n ? (size_t)l->n : 1, sizeof *o->v);
    if (!o->m || !o->v) goto fail;
    for (int i = 0; i < l->n; i++) {
        o->m[i] = calloc(l->p[i].n ? l->p[i].n : 1, sizeof(float));
        o->v[i] = calloc(l->p[i].n ? l->p[i].n : 1, sizeof(float));
        if (!o->m[i] || !o->v[i]) goto fail;
    }
    *out = o;
    return 0;
fail:
    optimizer_free(o);
    return -1;
}

void optimizer_free(struct optimizer *o)
{
    if (!o) return;
    for (int i = 0; i < o->n; i++) {
        if (o->m) free(o->m[i]);
        if (o->v) free(o->v[i]);
    }
    free(o->m);
    free(o->v);
    free(o);
}

float *optimizer_m(struct optimizer *o, int i) { return i >= 0 && i < o->n ? o->m[i] : NULL; }
float *optimizer_v(struct optimizer *o, int i) { return i >= 0 && i < o->n ? o->v[i] : NULL; }
int optimizer_nparams(const struct optimizer *o) { return o->n; }
int64_t optimizer_get_step(const struct optimizer *o) { return o->step; }
void optimizer_set_step(struct optimizer *o, int64_t step) { o->step = step; }

/* The arithmetic follows torch.optim.AdamW's single-tensor path: scalars are
 * computed in double (Python floats) and applied to float32 tensors. */
void optimizer_step(struct optimizer *o, struct param_list *l, const struct optim_hparams *h)
{
    o->step++;
    const double b1 = h->beta1, b2 = h->beta2;
    const double bc1 = 1.0 - pow(b1, (double)o->step);
    const double bc2 = 1.0 - pow(b2, (double)o->step);
    const float bc2_sqrt = (float)sqrt(bc2);
    const float one_minus_b1 = (float)(1.0 - b1);
    const float b2f = (float)b2, one_minus_b2 = (float)(1.0 - b2);
    const float eps = h->eps;
    const int n = l->n < o->n ? l->n : o->n;
    for (int i = 0; i < n; i++) {
        struct param *p = &l->p[i];
        double lr = (double)h->lr * (double)p->lr_mult;
        if (p->last_layer && h->freeze_last_layer) lr = 0.0;
        const double wd = (double)h->wd * (double)p->wd_mult;
        const float decay = (float)(1.0 - lr * wd);
        const float step_size = (float)(lr / bc1);
        float *restrict w = p->w, *restrict m = o->m[i], *restrict v = o->v[i];
        const float *restrict g = p->g;
        const size_t cnt = p->n;
#pragma omp parallel for schedule(static) if (cnt > 65536)
        for (size_t k = 0; k < cnt; k++) {
            float wk = w[k] * decay;
            const float gk = g[k];
            float mk = m[k];
            mk = mk + one_minus_b1 * (gk - mk);                 /* exp_avg.lerp_(grad, 1-b1) */
            const float vk = v[k] * b2f + one_minus_b2 * gk * gk;
            const float denom = sqrtf(vk) / bc2_sqrt + eps;
            wk = wk - step_size * (mk / denom);
            m[k] = mk;
            v[k] = vk;
            w[k] = wk;
        }
    }
}

void ema_update(struct param_list *l, float momentum)
{
    const float a = momentum, b = (float)(1.0 - (double)momentum);
    for (int i = 0; i < l->n; i++) {
        struct param *p = &l->p[i];
        if (!p->t) continue;
        float *restrict t = p->t;
        const float *restrict w = p->w;
        const size_t cnt = p->n;
#pragma omp parallel for schedule(static) if (cnt > 65536)
        for (size_t k = 0; k < cnt; k++) {
            const float tk = t[k] * a;
            t[k] = tk + b * w[k];
        }
    }
}

double clip_grad_norm(struct param_list *l, int module, float max_norm)
{
    double sumsq = 0.0;
    for (int i = 0; i < l->n; i++) {
        const struct param *p = &l->p[i];
        if (module >= 0 && p->module != module) continue;
        double s = 0.0;
        for (size_t k = 0; k < p->n; k++) s += (double)p->g[k] * (double)p->g[k];
        sumsq += s;
    }
    const double norm = sqrt(sumsq);
    const double coef = (double)max_norm / (norm + 1e-6);
    if (coef < 1.0) {
        const float c = (float)coef;
        for (int i = 0; i < l->n; i++) {
            struct param *p = &l->p[i];
            if (module >= 0 && p->module != module) continue;
            for (size_t k = 0; k < p->n; k++) p->g[k] *= c;
        }
    }
    return norm;
}

void param_list_zero_grad(struct param_list *l)
{
    for (int i = 0; i < l->n; i++)
        if (l->p[i].g) memset(l->p[i].g, 0, l->p[i].n * sizeof(float));
}
