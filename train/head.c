/* Matryoshka multi-head clustering projector: forward and backward (head.h). */
#include "head.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/ops.h"
#include "errors.h"
#include "grad_ops.h"
#include "mm.h"

struct head_level_act {
    float *xs, *z, *a1, *h1, *a2, *h2, *a3, *h3, *logits, *dlogits, *weff, *dweff;
    double *vnorm;
};

struct head_act {
    int cap, n, n_levels, D, hidden, bottleneck;
    enum mm_type prod;           /* type of the products' operands */
    /* bf16 heads: two operand buffers and each level's rounded effective
     * prototype weights */
    mm_bf16 *op16a, *op16b, *weff16[HEAD_MAX_LEVELS], *arena16;
    int K[HEAD_MAX_LEVELS], d[HEAD_MAX_LEVELS];
    struct head_level_act lv[HEAD_MAX_LEVELS];
    float *dh3, *bufA, *bufB, *dz, *dxs;
    float *arena;
    double *darena;
};

static size_t pad16(size_t n) { return (n + 15) & ~(size_t)15; }

int head_config_check(const struct head_config *hc, int D, char *err, size_t errlen)
{
    if (hc->hidden < 1 || hc->bottleneck < 1 || hc->prototypes < 1 || hc->hidden > 65536 ||
        hc->bottleneck > 65536)
        return set_err(err, errlen, "head: hidden %d, bottleneck %d, prototypes %d must be "
                       "positive", hc->hidden, hc->bottleneck, hc->prototypes);
    for (int j = 0; j < HEAD_MAX_LEVELS; j++)
        if (!(hc->level_weights[j] >= 0.0f && hc->level_weights[j] <= 1e6f))
            return set_err(err, errlen, "head: level weight %d is %g (0..1e6)", j,
                           (double)hc->level_weights[j]);
    if (!hc->nested) return 0;
    if (hc->n_levels < 1 || hc->n_levels > HEAD_MAX_LEVELS)
        return set_err(err, errlen, "head: %d levels (1..%d)", hc->n_levels, HEAD_MAX_LEVELS);
    for (int j = 0; j < hc->n_levels; j++) {
        if (hc->widths[j] < 1 || hc->widths[j] > D || (j && hc->widths[j] <= hc->widths[j - 1]))
            return set_err(err, errlen, "head: widths must ascend in 1..%d", D);
        if ((long long)hc->prototypes * hc->widths[j] / D < 1)
            return set_err(err, errlen, "head: level %d (width %d) gets no prototypes", j,
                           hc->widths[j]);
    }
    if (hc->widths[hc->n_levels - 1] != D)
        return set_err(err, errlen, "head: the last width must be the embed dim %d", D);
    return 0;
}

/* Lays out the levels; returns the float count. */
static size_t layout(const struct head_config *hc, int D, float *arena, struct head_weights *h)
{
    size_t off = 0;
#define TAKE(n) (arena ? arena + off : NULL); off += pad16(n)
    h->n_levels = hc->nested ? hc->n_levels : 1;
    h->D = D;
    h->hidden = hc->hidden;
    h->bottleneck = hc->bottleneck;
    const size_t hid = hc->hidden, bn = hc->bottleneck;
    for (int j = 0; j < h->n_levels; j++) {
        struct head_level *L = &h->lv[j];
        L->d = hc->nested ? hc->widths[j] : D;
        L->K = (int)((long long)hc->prototypes * L->d / D);
        const size_t d = L->d, K = L->K;
        L->proj_w = TAKE(d * d);
        L->proj_b = TAKE(d);
        L->w1 = TAKE(hid * d);
        L->b1 = TAKE(hid);
        L->w2 = TAKE(hid * hid);
        L->b2 = TAKE(hid);
        L->w3 = TAKE(bn * hid);
        L->b3 = TAKE(bn);
        L->wg = TAKE(K);
        L->wv = TAKE(K * bn);
    }
#undef TAKE
    h->arena = arena;
    h->n_floats = off;
    return off;
}

int head_alloc(const struct head_config *hc, int D, struct head_weights *h, char *err,
               size_t errlen)
{
    memset(h, 0, sizeof *h);
    if (head_config_check(hc, D, err, errlen)) return -1;
    const size_t n = layout(hc, D, NULL, h);
    float *arena = calloc(n, sizeof(float));
    if (!arena) return set_err(err, errlen, "out of memory for a head (%zu floats)", n);
    layout(hc, D, arena, h);
    return 0;
}

void head_free(struct head_weights *h)
{
    free(h->arena);
    memset(h, 0, sizeof *h);
}

void head_init_random(struct head_weights *h, struct rng *r, bool fan_in)
{
    const size_t hid = h->hidden, bn = h->bottleneck;
    const double bound = 1.0 / sqrt((double)bn);
    memset(h->arena, 0, sizeof(float) * h->n_floats);
    for (int j = 0; j < h->n_levels; j++) {
        struct head_level *L = &h->lv[j];
        const size_t d = L->d, K = L->K;
        rng_fill_trunc_normal(r, L->proj_w, d * d, fan_in ? 1.0 / sqrt((double)d) : 0.02);
        rng_fill_trunc_normal(r, L->w1, hid * d, fan_in ? 1.0 / sqrt((double)d) : 0.02);
        rng_fill_trunc_normal(r, L->w2, hid * hid, fan_in ? 1.0 / sqrt((double)hid) : 0.02);
        rng_fill_trunc_normal(r, L->w3, bn * hid, fan_in ? 1.0 / sqrt((double)hid) : 0.02);
        for (size_t k = 0; k < K; k++) L->wg[k] = 1.0f;
        for (size_t i = 0; i < K * bn; i++) L->wv[i] = (float)rng_range(r, -bound, bound);
    }
}

int head_add_params(struct param_list *l, const char *prefix, int module, struct head_weights *w,
                    struct head_weights *g, struct head_weights *t)
{
    const size_t hid = w->hidden, bn = w->bottleneck;
    int rc = 0;
    char nm[160];
    for (int j = 0; j < w->n_levels; j++) {
        struct head_level *W = &w->lv[j], *G = &g->lv[j], *Tt = &t->lv[j];
        const size_t d = W->d, K = W->K;
#define ADD(fmt, field, n)                                                                   \
    do {                                                                                     \
        snprintf(nm, sizeof nm, "%s." fmt, prefix, j);                                       \
        rc |= param_list_add(l, nm, W->field, G->field, Tt->field, n, module,               \
                             param_default_wd_mult(nm), 1.0f, param_is_last_layer(nm));      \
    } while (0)
        ADD("matryoshka_projections.%d.weight", proj_w, d * d);
        ADD("matryoshka_projections.%d.bias", proj_b, d);
        ADD("mlps.%d.0.weight", w1, hid * d);
        ADD("mlps.%d.0.bias", b1, hid);
        ADD("mlps.%d.2.weight", w2, hid * hid);
        ADD("mlps.%d.2.bias", b2, hid);
        ADD("mlps.%d.4.weight", w3, bn * hid);
        ADD("mlps.%d.4.bias", b3, bn);
        ADD("last_layers.%d.weight_g", wg, K);
        ADD("last_layers.%d.weight_v", wv, K * bn);
#undef ADD
    }
    return rc ? -1 : 0;
}

void head_act_free(struct head_act *a)
{
    if (!a) return;
    free(a->arena);
    free(a->darena);
    free(a->arena16);
    free(a);
}

/* Carves the bf16 buffers of a bf16 head (a->arena16 NULL: counts only). */
static size_t layout16(struct head_act *a, const struct head_weights *h)
{
    size_t off = 0, width = (size_t)h->D;
    if (width < (size_t)h->hidden) width = h->hidden;
    if (width < (size_t)h->bottleneck) width = h->bottleneck;
    for (int j = 0; j < h->n_levels; j++)
        if (width < (size_t)h->lv[j].K) width = h->lv[j].K;
#define TAKE16(x) (a->arena16 ? a->arena16 + off : NULL); off += pad16(x)
    a->op16a = TAKE16((size_t)a->cap * width);
    a->op16b = TAKE16((size_t)a->cap * width);
    for (int j = 0; j < h->n_levels; j++) {
        a->weff16[j] = TAKE16((size_t)h->lv[j].K * h->bottleneck);
    }
#undef TAKE16
    return off;
}

int head_act_ensure(struct head_act **ap, const struct head_weights *h, int rows,
                    enum mm_type prod, char *err, size_t errlen)
{
    struct head_act *a = *ap;
    if (rows < 1) rows = 1;
    if (a && a->cap >= rows && a->prod == prod && a->n_levels == h->n_levels && a->D == h->D &&
        a->hidden == h->hidden && a->bottleneck == h->bottleneck) {
        int same = 1;
        for (int j = 0; j < h->n_levels; j++)
            same &= a->K[j] == h->lv[j].K && a->d[j] == h->lv[j].d;
        if (same) return 0;
    }
    if (a && a->cap > rows) rows = a->cap;
    head_act_free(a);
    *ap = NULL;
    a = calloc(1, sizeof *a);
    if (!a) return set_err(err, errlen, "out of memory");
    a->cap = rows;
    a->prod = prod;
    a->n_levels = h->n_levels;
    a->D = h->D;
    a->hidden = h->hidden;
    a->bottleneck = h->bottleneck;
    const size_t n = rows, hid = h->hidden, bn = h->bottleneck, D = h->D;
    size_t total = 0, dtotal = 0;
    for (int pass = 0; pass < 2; pass++) {
        size_t off = 0, doff = 0;
#define TAKE(x) (a->arena ? a->arena + off : NULL); off += pad16(x)
        for (int j = 0; j < h->n_levels; j++) {
            struct head_level_act *L = &a->lv[j];
            const size_t d = h->lv[j].d, K = h->lv[j].K;
            a->K[j] = (int)K;
            a->d[j] = (int)d;
            L->xs = TAKE(n * d);
            L->z = TAKE(n * d);
            L->a1 = TAKE(n * hid);
            L->h1 = TAKE(n * hid);
            L->a2 = TAKE(n * hid);
            L->h2 = TAKE(n * hid);
            L->a3 = TAKE(n * bn);
            L->h3 = TAKE(n * bn);
            L->logits = TAKE(n * K);
            L->dlogits = TAKE(n * K);
            L->weff = TAKE(K * bn);
            L->dweff = TAKE(K * bn);
            L->vnorm = a->darena ? a->darena + doff : NULL;
            doff += K;
        }
        a->dh3 = TAKE(n * bn);
        a->bufA = TAKE(n * hid);
        a->bufB = TAKE(n * hid);
        a->dz = TAKE(n * D);
        a->dxs = TAKE(n * D);
#undef TAKE
        if (pass == 0) {
            total = off;
            dtotal = doff;
            a->arena = calloc(total, sizeof(float));
            a->darena = calloc(dtotal, sizeof(double));
            if (!a->arena || !a->darena) {
                head_act_free(a);
                return set_err(err, errlen, "out of memory for head activations (%d rows)", rows);
            }
        }
    }
    if (prod == MM_BF16) {
        a->arena16 = malloc(sizeof(mm_bf16) * layout16(a, h));
        if (!a->arena16) {
            head_act_free(a);
            return set_err(err, errlen, "out of memory for bf16 head operands (%d rows)", rows);
        }
        layout16(a, h);
    }
    *ap = a;
    return 0;
}

float *head_logits(struct head_act *a, int j) { return a->lv[j].logits; }
float *head_dlogits(struct head_act *a, int j) { return a->lv[j].dlogits; }

void head_forward(const struct head_weights *h, const mm_bf16 *h16, struct head_act *a,
                  const float *x, int ldx, int n)
{
    const int hid = h->hidden, bn = h->bottleneck;
    a->n = n;
    for (int j = 0; j < h->n_levels; j++) {
        const struct head_level *W = &h->lv[j];
        struct head_level_act *L = &a->lv[j];
        const int d = W->d, K = W->K;
        for (int i = 0; i < n; i++) memcpy(L->xs + (size_t)i * d, x + (size_t)i * ldx, sizeof(float) * d);
        linear_forward_prod(a->prod, L->z, L->xs, W->proj_w, arena_copy16(h16, h->arena, W->proj_w),
                            W->proj_b, n, d, d, a->op16a);
        linear_forward_prod(a->prod, L->a1, L->z, W->w1, arena_copy16(h16, h->arena, W->w1), W->b1,
                            n, d, hid, a->op16a);
        gelu_forward_copy(L->h1, L->a1, (size_t)n * hid);
        linear_forward_prod(a->prod, L->a2, L->h1, W->w2, arena_copy16(h16, h->arena, W->w2), W->b2,
                            n, hid, hid, a->op16a);
        gelu_forward_copy(L->h2, L->a2, (size_t)n * hid);
        linear_forward_prod(a->prod, L->a3, L->h2, W->w3, arena_copy16(h16, h->arena, W->w3), W->b3,
                            n, hid, bn, a->op16a);
        gelu_forward_copy(L->h3, L->a3, (size_t)n * bn);
        /* weight norm: W[k] = g_k v_k / |v_k| */
#pragma omp parallel for schedule(static)
        for (int k = 0; k < K; k++) {
            const float *v = W->wv + (size_t)k * bn;
            double s = 0.0;
            for (int i = 0; i < bn; i++) s += (double)v[i] * v[i];
            const double nv = sqrt(s);
            L->vnorm[k] = nv;
            const float f = (float)(W->wg[k] / nv);
            float *we = L->weff + (size_t)k * bn;
            for (int i = 0; i < bn; i++) we[i] = f * v[i];
        }
        /* weff is derived from the weights each pass: rounded here, once */
        if (a->prod == MM_BF16) round_bf16(a->weff16[j], L->weff, (size_t)K * bn);
        linear_forward_prod(a->prod, L->logits, L->h3, L->weff, a->weff16[j], NULL, n, bn, K,
                            a->op16a);
    }
}

void head_backward(const struct head_weights *h, const mm_bf16 *h16, struct head_weights *g,
                   struct head_act *a, float *dx, int lddx)
{
    const int hid = h->hidden, bn = h->bottleneck, n = a->n;
    if (n <= 0) return;
    for (int j = 0; j < h->n_levels; j++) {
        const struct head_level *W = &h->lv[j];
        struct head_level *G = &g->lv[j];
        struct head_level_act *L = &a->lv[j];
        const int d = W->d, K = W->K;
        /* logits = h3 Weff^T */
        if (a->prod == MM_BF16) {
            memset(L->dweff, 0, sizeof(float) * (size_t)K * bn);
            linear_backward_bf16(a->dh3, L->dweff, NULL, L->dlogits, L->h3, a->weff16[j], n, bn,
                                 K, 0, a->op16a, a->op16b);
        } else {
            mm_sgemm(true, false, K, bn, n, 1.0f, L->dlogits, K, L->h3,
                        bn, 0.0f, L->dweff, bn);
            mm_sgemm(false, false, n, bn, K, 1.0f, L->dlogits, K,
                        L->weff, bn, 0.0f, a->dh3, bn);
        }
        /* weight norm backward */
#pragma omp parallel for schedule(static)
        for (int k = 0; k < K; k++) {
            const float *v = W->wv + (size_t)k * bn, *dw = L->dweff + (size_t)k * bn;
            const double nv = L->vnorm[k];
            double s = 0.0;
            for (int i = 0; i < bn; i++) s += (double)dw[i] * v[i];
            s /= nv;  /* dW . vhat */
            G->wg[k] += (float)s;
            const double f = W->wg[k] / nv;
            float *gv = G->wv + (size_t)k * bn;
            for (int i = 0; i < bn; i++) gv[i] += (float)(f * (dw[i] - s * v[i] / nv));
        }
        gelu_backward(a->dh3, a->dh3, L->a3, (size_t)n * bn);
        linear_backward_prod(a->prod, a->bufA, G->w3, G->b3, a->dh3, L->h2, W->w3,
                             arena_copy16(h16, h->arena, W->w3), n, hid, bn, a->op16a, a->op16b);
        gelu_backward(a->bufA, a->bufA, L->a2, (size_t)n * hid);
        linear_backward_prod(a->prod, a->bufB, G->w2, G->b2, a->bufA, L->h1, W->w2,
                             arena_copy16(h16, h->arena, W->w2), n, hid, hid, a->op16a, a->op16b);
        gelu_backward(a->bufB, a->bufB, L->a1, (size_t)n * hid);
        linear_backward_prod(a->prod, a->dz, G->w1, G->b1, a->bufB, L->z, W->w1,
                             arena_copy16(h16, h->arena, W->w1), n, d, hid, a->op16a, a->op16b);
        linear_backward_prod(a->prod, a->dxs, G->proj_w, G->proj_b, a->dz, L->xs, W->proj_w,
                             arena_copy16(h16, h->arena, W->proj_w), n, d, d, a->op16a, a->op16b);
        for (int i = 0; i < n; i++) {
            float *o = dx + (size_t)i * lddx;
            const float *s = a->dxs + (size_t)i * d;
            for (int c = 0; c < d; c++) o[c] += s[c];
        }
    }
}
