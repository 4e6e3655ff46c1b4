/* AdamW (PyTorch torch.optim.AdamW semantics), the EMA teacher update and
 * per-module gradient clipping over a flat param_list (train/params.h).
 *
 * optimizer_step, for every param p with per-param lr = h->lr * p->lr_mult
 * (0 for last_layer params while h->freeze_last_layer) and wd = h->wd * p->wd_mult:
 *   step += 1 (once per call, shared by all params)
 *   w -= lr * wd * w                       (decoupled decay, before the Adam update)
 *   m = beta1 * m + (1 - beta1) * g
 *   v = beta2 * v + (1 - beta2) * g * g
 *   mhat = m / (1 - beta1^step); denom = sqrt(v) / sqrt(1 - beta2^step) + eps
 *   w -= lr * m / (1 - beta1^step) / denom
 * The moments of frozen params are still updated (as PyTorch does with lr 0). */
#ifndef FRANCA_TRAIN_OPTIM_H
#define FRANCA_TRAIN_OPTIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "params.h"

struct optim_hparams {
    float lr, wd, beta1, beta2, eps;
    bool freeze_last_layer;
};

struct optimizer;

/* Zeroed first and second moments for every param of l (same order). Returns 0,
 * or -1 when out of memory. */
int optimizer_create(const struct param_list *l, struct optimizer **out);
void optimizer_step(struct optimizer *o, struct param_list *l, const struct optim_hparams *h);
void optimizer_free(struct optimizer *o);

/* State access for checkpoints: moments of param i (n floats each) and the
 * step count (number of optimizer_step calls so far). */
float *optimizer_m(struct optimizer *o, int i);
float *optimizer_v(struct optimizer *o, int i);
int optimizer_nparams(const struct optimizer *o);
int64_t optimizer_get_step(const struct optimizer *o);
void optimizer_set_step(struct optimizer *o, int64_t step);

/* Teacher EMA: t = momentum * t + (1 - momentum) * w for every param with t. */
void ema_update(struct param_list *l, float momentum);

/* torch.nn.utils.clip_grad_norm_ over the params of one module (module < 0:
 * every param): total L2 norm of their gradients; when larger than max_norm,
 * gradients are scaled by max_norm / (norm + 1e-6). Returns the norm before
 * clipping. */
double clip_grad_norm(struct param_list *l, int module, float max_norm);

/* Zeroes every gradient (before accumulating a step). */
void param_list_zero_grad(struct param_list *l);

#endif
