/* Training forward and backward of the ViT backbone (see backbone.h). */
#include "backbone.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/ops.h"
#include "cpu/pos_embed.h"
#include "errors.h"
#include "grad_ops.h"

struct bb_layer {
    float *x_in;                 /* [rows, D] block input (residual stream) */
    float *xs1;                  /* attention branch input: x_in, or its kept subset */
    float *mean1, *rstd1, *xn1;  /* LN1 */
    float *qkv;                  /* [rows, 3D] */
    float *P;                    /* [B, H, T, T] softmax probabilities */
    float *att;                  /* [rows, D] attention output (proj input) */
    float *y1;                   /* [rows, D] proj output */
    float *x_mid;                /* [rows, D] after the attention residual */
    float *xs2;                  /* FFN branch input */
    float *mean2, *rstd2, *xn2;  /* LN2 */
    float *h;                    /* [rows, F1] fc1 / w12 output */
    float *act;                  /* [rows, Hs] SwiGLU or GELU output (fc2 input) */
    float *y2;                   /* [rows, D] fc2 output */
    int *sub1, *sub2;            /* kept samples of each branch [B] */
    int k1, k2;                  /* kept counts; B when no drop path */
    int gathered1, gathered2;    /* the branch ran on a gathered copy (xs1 / xs2) */
    float scale1, scale2;        /* b / k */
};

struct bb_act {
    bb_backward_hook hook;       /* NULL, or told as parameter gradients become final */
    void *hook_ctx;
    /* shape */
    int B, side, train, D, depth, heads, Hs, F1, P, M, ffn, layerscale, threads;
    enum mm_type prod;           /* type of the products' operands */
    int gh, gw, N, T;
    size_t rows;
    float *arena;
    int *iarena;
    uint8_t *mask;               /* [B*N] copy of the mask of the last forward */
    int has_mask;
    float *patches;              /* [B*N, 3P^2] */
    float *pos;                  /* [1+N, D] interpolated table */
    float *tok;                  /* [B*N, D] patch-embed output; backward: its gradient */
    struct bb_layer *layers;     /* depth slots (train) or 1 */
    float *x_fin, *meanf, *rstdf, *out, *dout;
    /* backward scratch */
    float *dx, *dxs, *dy, *dxn, *dqkv, *datt, *dh, *dact, *dpos, *scratch;
    /* bf16 passes: rounded operands (each holds any one of them) and, for
     * backward, the float dP of attention */
    mm_bf16 *op16a, *op16b, *op16c;
    float *dP;
};

int bb_tokens(const struct bb_act *a) { return a->T; }
const float *bb_out(const struct bb_act *a) { return a->out; }
float *bb_dout(struct bb_act *a) { return a->dout; }

void bb_act_free(struct bb_act *a)
{
    if (!a) return;
    free(a->arena);
    free(a->iarena);
    free(a->mask);
    free(a->layers);
    free(a);
}

struct bump { float *base; size_t off; };

static float *bump(struct bump *b, size_t n)
{
    float *p = b->base ? b->base + b->off : NULL;
    b->off += (n + 15) & ~(size_t)15;
    return p;
}

static mm_bf16 *bump16(struct bump *b, size_t n)
{
    return (mm_bf16 *)bump(b, (n + 1) / 2);
}

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

/* Elements of one bf16 operand buffer: the widest product input or output
 * of a linear layer, or a pass's attention scores. */
static size_t operand16_elems(const struct bb_act *a, size_t Pk)
{
    size_t w = max_sz(Pk, 3 * (size_t)a->D);
    w = max_sz(w, max_sz((size_t)a->F1, (size_t)a->Hs));
    return max_sz(a->rows * w, (size_t)a->B * a->heads * a->T * a->T);
}

/* Lays out every buffer of a (pointers stay NULL while b->base is NULL). */
static size_t layout(struct bb_act *a, struct bump *b)
{
    const size_t D = a->D, rows = a->rows, B = a->B, N = a->N, T = a->T;
    const size_t Pk = 3 * (size_t)a->P * a->P;
    a->patches = bump(b, B * N * Pk);
    a->pos = bump(b, (1 + N) * D);
    a->tok = bump(b, B * N * D);
    const int slots = a->train ? a->depth : 1;
    for (int l = 0; l < slots; l++) {
        struct bb_layer *L = &a->layers[l];
        L->x_in = bump(b, rows * D);
        if (a->train) {
            L->xs1 = bump(b, rows * D);
            L->x_mid = bump(b, rows * D);
            L->xs2 = bump(b, rows * D);
        } else {
            L->xs1 = L->x_mid = L->xs2 = L->x_in;
        }
        L->mean1 = bump(b, rows);
        L->rstd1 = bump(b, rows);
        L->xn1 = bump(b, rows * D);
        L->qkv = bump(b, rows * 3 * D);
        L->P = bump(b, B * a->heads * T * T);
        L->att = bump(b, rows * D);
        L->y1 = bump(b, rows * D);
        L->mean2 = bump(b, rows);
        L->rstd2 = bump(b, rows);
        L->xn2 = bump(b, rows * D);
        L->h = bump(b, rows * a->F1);
        L->act = bump(b, rows * a->Hs);
        L->y2 = bump(b, rows * D);
    }
    a->x_fin = a->train ? bump(b, rows * D) : a->layers[0].x_in;
    a->meanf = bump(b, rows);
    a->rstdf = bump(b, rows);
    a->out = bump(b, rows * D);
    if (a->train) {
        a->dout = bump(b, rows * D);
        a->dx = bump(b, rows * D);
        a->dxs = bump(b, rows * D);
        a->dy = bump(b, rows * D);
        a->dxn = bump(b, rows * D);
        a->dqkv = bump(b, rows * 3 * D);
        a->datt = bump(b, rows * D);
        a->dh = bump(b, rows * a->F1);
        a->dact = bump(b, rows * a->Hs);
        a->dpos = bump(b, (1 + N) * D);
        a->scratch = bump(b, (size_t)a->threads * attention_backward_scratch_floats(a->T));
    }
    if (a->prod == MM_BF16) {
        const size_t n16 = operand16_elems(a, Pk);
        a->op16a = bump16(b, n16);
        a->op16b = bump16(b, n16);
        if (a->train) {
            a->op16c = bump16(b, n16);
            a->dP = bump(b, B * a->heads * T * T);
        }
    }
    return b->off;
}

int bb_act_ensure(struct bb_act **ap, const struct model_config *c, int B, int side, int train,
                  enum mm_type prod, char *err, size_t errlen)
{
    const int threads = omp_get_max_threads();
    struct bb_act *a = *ap;
    const int F1 = c->ffn == FFN_SWIGLU ? 2 * c->ffn_hidden : c->ffn_hidden;
    if (a && a->B == B && a->side == side && a->train == train && a->prod == prod &&
        a->D == c->embed_dim &&
        a->depth == c->depth && a->heads == c->num_heads && a->Hs == c->ffn_hidden &&
        a->F1 == F1 && a->P == c->patch_size && a->M == c->pos_grid && a->ffn == (int)c->ffn &&
        a->threads >= threads)
        return 0;
    bb_act_free(a);
    *ap = NULL;
    if (B <= 0 || side <= 0 || side % c->patch_size)
        return set_err(err, errlen, "backbone pass: %d images of side %d (patch %d)", B, side,
                       c->patch_size);
    a = calloc(1, sizeof *a);
    if (!a) return set_err(err, errlen, "out of memory");
    a->B = B;
    a->side = side;
    a->train = train;
    a->prod = prod;
    a->D = c->embed_dim;
    a->depth = c->depth;
    a->heads = c->num_heads;
    a->Hs = c->ffn_hidden;
    a->F1 = F1;
    a->P = c->patch_size;
    a->M = c->pos_grid;
    a->ffn = (int)c->ffn;
    a->layerscale = c->layerscale;
    a->threads = threads;
    a->gh = a->gw = side / c->patch_size;
    a->N = a->gh * a->gw;
    a->T = 1 + a->N;
    a->rows = (size_t)B * a->T;
    a->layers = calloc((size_t)(train ? c->depth : 1), sizeof *a->layers);
    a->iarena = malloc(sizeof(int) * 2 * (size_t)B * c->depth);
    a->mask = calloc((size_t)B * a->N, 1);
    struct bump b = { NULL, 0 };
    if (a->layers) {
        const size_t total = layout(a, &b);
        a->arena = calloc(total, sizeof(float));
        b.base = a->arena;
        b.off = 0;
        if (a->arena) layout(a, &b);
    }
    if (!a->layers || !a->iarena || !a->mask || !a->arena) {
        const double gib = b.off * 4.0 / (1 << 30);
        bb_act_free(a);
        return set_err(err, errlen, "out of memory: %d images of side %d need %.2f GiB of "
                       "activations", B, side, gib);
    }
    for (int l = 0; l < (train ? c->depth : 1); l++) {
        a->layers[l].sub1 = a->iarena + (size_t)2 * l * B;
        a->layers[l].sub2 = a->iarena + (size_t)(2 * l + 1) * B;
    }
    *ap = a;
    return 0;
}

/* Chooses the kept samples of one branch; returns k. */
static int choose_subset(const struct bb_drop *drop, int layer, int branch, int b, int *idx)
{
    if (!drop || drop->rate <= 0.0f) {
        for (int i = 0; i < b; i++) idx[i] = i;
        return b;
    }
    int k = (int)((double)b * (1.0 - (double)drop->rate) + 1e-9);
    if (k < 1) k = 1;
    if (k > b) k = b;
    if (drop->fn) {
        drop->fn(drop->ctx, drop->pass, layer, branch, b, k, idx);
        return k;
    }
    for (int i = 0; i < b; i++) idx[i] = i;
    for (int i = 0; i < k; i++) {
        const int j = (int)rng_int(drop->rng, i, b - 1);
        const int t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
    }
    return k;
}

/* dst[i-th kept image] = src[sub[i]] for whole images of T rows. */
static void gather_images(float *dst, const float *src, const int *sub, int k, size_t img_floats)
{
#pragma omp parallel for schedule(static)
    for (int i = 0; i < k; i++)
        memcpy(dst + (size_t)i * img_floats, src + (size_t)sub[i] * img_floats,
               sizeof(float) * img_floats);
}

/* x_out = x_in (copied unless the same buffer), then for each kept image i:
 * x_out[sub[i]] += scale * gamma * y[i]. */
static void residual_subset(float *x_out, const float *x_in, const float *y, const float *gamma,
                            const int *sub, int k, float scale, int T, int D, int B)
{
    const size_t img = (size_t)T * D;
    if (x_out != x_in) memcpy(x_out, x_in, sizeof(float) * img * B);
#pragma omp parallel for schedule(static)
    for (int i = 0; i < k; i++) {
        float *xo = x_out + (size_t)sub[i] * img;
        const float *yi = y + (size_t)i * img;
        for (int t = 0; t < T; t++)
            for (int d = 0; d < D; d++) {
                const float g = gamma ? gamma[d] : 1.0f;
                xo[(size_t)t * D + d] += scale * g * yi[(size_t)t * D + d];
            }
    }
}

void bb_forward(const struct model_config *c, const struct vit_weights *w, const mm_bf16 *w16,
                struct bb_act *a, const float *img, const uint8_t *mask,
                const struct bb_drop *drop)
{
    const int D = a->D, T = a->T, N = a->N, B = a->B, P = a->P, Hs = a->Hs, F1 = a->F1;
    const float eps = c->norm_eps;
    if (!a->train) drop = NULL;

    /* Token assembly: patch embed, mask token, CLS, positional table. */
    pos_embed_interpolate(a->pos, w->pos_embed, a->M, D, a->gh, a->gw);
    patchify(a->patches, img, B, 3, a->side, a->side, P);
    linear_forward_prod(a->prod, a->tok, a->patches, w->patch_w,
                        arena_copy16(w16, w->arena, w->patch_w), w->patch_b, (size_t)B * N,
                        3 * P * P, D, a->op16a);
    a->has_mask = mask != NULL;
    if (mask) memcpy(a->mask, mask, (size_t)B * N);
    float *x0 = a->layers[0].x_in;
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        float *xb = x0 + (size_t)b * T * D;
        for (int i = 0; i < D; i++) xb[i] = w->cls_token[i] + a->pos[i];
        for (int n = 0; n < N; n++) {
            const float *src = mask && mask[(size_t)b * N + n] ? w->mask_token
                                                                : a->tok + ((size_t)b * N + n) * D;
            const float *pe = a->pos + (size_t)(1 + n) * D;
            float *dst = xb + (size_t)(1 + n) * D;
            for (int i = 0; i < D; i++) dst[i] = src[i] + pe[i];
        }
    }

    const size_t img_floats = (size_t)T * D;
    for (int l = 0; l < a->depth; l++) {
        struct bb_layer *L = &a->layers[a->train ? l : 0];
        const struct vit_block_weights *bw = &w->blocks[l];
        float *x_out = !a->train ? L->x_in : (l + 1 < a->depth ? a->layers[l + 1].x_in : a->x_fin);

        /* attention branch */
        L->k1 = choose_subset(drop, l, 0, B, L->sub1);
        L->scale1 = (float)B / (float)L->k1;
        const float *xs = L->x_in;
        L->gathered1 = drop && drop->rate > 0.0f;
        if (L->gathered1) {
            gather_images(L->xs1, L->x_in, L->sub1, L->k1, img_floats);
            xs = L->xs1;
        }
        size_t rk = (size_t)L->k1 * T;
        layernorm_forward_train(L->xn1, L->mean1, L->rstd1, xs, bw->norm1_w, bw->norm1_b, rk, D, eps);
        linear_forward_prod(a->prod, L->qkv, L->xn1, bw->qkv_w,
                            arena_copy16(w16, w->arena, bw->qkv_w), bw->qkv_b, rk, D, 3 * D,
                            a->op16a);
        if (a->prod == MM_BF16)
            attention_forward_train_bf16(L->att, L->P, L->qkv, L->k1, T, D, a->heads, a->op16a,
                                         a->op16b);
        else
            attention_forward_train(L->att, L->P, L->qkv, L->k1, T, D, a->heads);
        linear_forward_prod(a->prod, L->y1, L->att, bw->proj_w,
                            arena_copy16(w16, w->arena, bw->proj_w), bw->proj_b, rk, D, D,
                            a->op16a);
        residual_subset(L->x_mid, L->x_in, L->y1, bw->ls1, L->sub1, L->k1, L->scale1, T, D, B);

        /* FFN branch */
        L->k2 = choose_subset(drop, l, 1, B, L->sub2);
        L->scale2 = (float)B / (float)L->k2;
        xs = L->x_mid;
        L->gathered2 = drop && drop->rate > 0.0f;
        if (L->gathered2) {
            gather_images(L->xs2, L->x_mid, L->sub2, L->k2, img_floats);
            xs = L->xs2;
        }
        rk = (size_t)L->k2 * T;
        layernorm_forward_train(L->xn2, L->mean2, L->rstd2, xs, bw->norm2_w, bw->norm2_b, rk, D, eps);
        linear_forward_prod(a->prod, L->h, L->xn2, bw->fc1_w,
                            arena_copy16(w16, w->arena, bw->fc1_w), bw->fc1_b, rk, D, F1, a->op16a);
        if (a->ffn == FFN_SWIGLU)
            swiglu_forward_train(L->act, L->h, rk, Hs);
        else
            gelu_forward_copy(L->act, L->h, rk * Hs);
        linear_forward_prod(a->prod, L->y2, L->act, bw->fc2_w,
                            arena_copy16(w16, w->arena, bw->fc2_w), bw->fc2_b, rk, Hs, D, a->op16a);
        residual_subset(x_out, L->x_mid, L->y2, bw->ls2, L->sub2, L->k2, L->scale2, T, D, B);
    }
    layernorm_forward_train(a->out, a->meanf, a->rstdf, a->x_fin, w->norm_w, w->norm_b, a->rows,
                            D, eps);
    if (a->train) memset(a->dout, 0, sizeof(float) * a->rows * D);
}

/* Backward of one residual branch x_out = x_in + scale * gamma * y[sub]:
 * dy (gathered, for the branch) = scale * gamma * dx[sub]; dgamma += scale * sum dx[sub] * y. */
static void residual_backward(float *dy, float *dgamma, const float *dx, const float *y,
                              const float *gamma, const int *sub, int k, float scale, int T,
                              int D)
{
    const size_t img = (size_t)T * D;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < k; i++) {
        const float *src = dx + (size_t)sub[i] * img;
        float *dst = dy + (size_t)i * img;
        for (size_t r = 0; r < (size_t)T; r++)
            for (int d = 0; d < D; d++)
                dst[r * D + d] = scale * (gamma ? gamma[d] : 1.0f) * src[r * D + d];
    }
    if (gamma && dgamma) {
        for (int i = 0; i < k; i++) {
            const float *src = dx + (size_t)sub[i] * img, *yi = y + (size_t)i * img;
            for (size_t r = 0; r < (size_t)T; r++)
                for (int d = 0; d < D; d++) dgamma[d] += scale * src[r * D + d] * yi[r * D + d];
        }
    }
}

/* dx[sub[i]] += dxs[i] for whole images. */
static void scatter_add_images(float *dx, const float *dxs, const int *sub, int k, size_t img)
{
#pragma omp parallel for schedule(static)
    for (int i = 0; i < k; i++) {
        float *d = dx + (size_t)sub[i] * img;
        const float *s = dxs + (size_t)i * img;
        for (size_t j = 0; j < img; j++) d[j] += s[j];
    }
}

/* Backward of LN(xs) where xs is x itself (not gathered) or the kept images
 * gathered from x: the input gradient lands in dx either way. */
static void ln_branch_backward(struct bb_act *a, const float *dxn, const float *xs,
                               const float *mean, const float *rstd, const float *lw,
                               float *gw, float *gbias, int gathered, const int *sub, int k)
{
    const size_t rk = (size_t)k * a->T, img = (size_t)a->T * a->D;
    if (gathered) {
        memset(a->dxs, 0, sizeof(float) * rk * a->D);
        layernorm_backward(a->dxs, gw, gbias, dxn, xs, mean, rstd, lw, rk, a->D);
        scatter_add_images(a->dx, a->dxs, sub, k, img);
    } else {
        layernorm_backward(a->dx, gw, gbias, dxn, xs, mean, rstd, lw, rk, a->D);
    }
}

void bb_backward(const struct model_config *c, const struct vit_weights *w, const mm_bf16 *w16,
                 struct vit_weights *g, struct bb_act *a)
{
    (void)c;
    const int D = a->D, T = a->T, N = a->N, B = a->B, P = a->P, Hs = a->Hs, F1 = a->F1;
    const size_t rows = a->rows;

    /* final LayerNorm */
    memset(a->dx, 0, sizeof(float) * rows * D);
    layernorm_backward(a->dx, g->norm_w, g->norm_b, a->dout, a->x_fin, a->meanf, a->rstdf,
                       w->norm_w, rows, D);
    if (a->hook) a->hook(a->hook_ctx, 2 * a->depth);

    for (int l = a->depth - 1; l >= 0; l--) {
        struct bb_layer *L = &a->layers[l];
        const struct vit_block_weights *bw = &w->blocks[l];
        struct vit_block_weights *gb = &g->blocks[l];

        /* FFN branch; dx holds the gradient w.r.t. the block output. */
        size_t rk = (size_t)L->k2 * T;
        residual_backward(a->dy, gb->ls2, a->dx, L->y2, bw->ls2, L->sub2, L->k2, L->scale2, T, D);
        linear_backward_prod(a->prod, a->dact, gb->fc2_w, gb->fc2_b, a->dy, L->act, bw->fc2_w,
                             arena_copy16(w16, w->arena, bw->fc2_w), rk, Hs, D, a->op16a, a->op16b);
        if (a->ffn == FFN_SWIGLU)
            swiglu_backward(a->dh, a->dact, L->h, rk, Hs);
        else
            gelu_backward(a->dh, a->dact, L->h, rk * Hs);
        linear_backward_prod(a->prod, a->dxn, gb->fc1_w, gb->fc1_b, a->dh, L->xn2, bw->fc1_w,
                             arena_copy16(w16, w->arena, bw->fc1_w), rk, D, F1, a->op16a, a->op16b);
        ln_branch_backward(a, a->dxn, L->gathered2 ? L->xs2 : L->x_mid, L->mean2, L->rstd2,
                           bw->norm2_w, gb->norm2_w, gb->norm2_b, L->gathered2, L->sub2, L->k2);

        if (a->hook) a->hook(a->hook_ctx, 2 * l + 1);

        /* attention branch; dx now holds the gradient w.r.t. x_mid. */
        rk = (size_t)L->k1 * T;
        residual_backward(a->dy, gb->ls1, a->dx, L->y1, bw->ls1, L->sub1, L->k1, L->scale1, T, D);
        linear_backward_prod(a->prod, a->datt, gb->proj_w, gb->proj_b, a->dy, L->att, bw->proj_w,
                             arena_copy16(w16, w->arena, bw->proj_w), rk, D, D, a->op16a, a->op16b);
        if (a->prod == MM_BF16)
            attention_backward_bf16(a->dqkv, a->datt, L->qkv, L->P, L->k1, T, D, a->heads,
                                    a->op16a, a->op16c, a->op16b, a->dP);
        else
            attention_backward(a->dqkv, a->datt, L->qkv, L->P, a->scratch, L->k1, T, D, a->heads);
        linear_backward_prod(a->prod, a->dxn, gb->qkv_w, gb->qkv_b, a->dqkv, L->xn1, bw->qkv_w,
                             arena_copy16(w16, w->arena, bw->qkv_w), rk, D, 3 * D, a->op16a,
                             a->op16b);
        ln_branch_backward(a, a->dxn, L->gathered1 ? L->xs1 : L->x_in, L->mean1, L->rstd1,
                           bw->norm1_w, gb->norm1_w, gb->norm1_b, L->gathered1, L->sub1, L->k1);
        if (a->hook) a->hook(a->hook_ctx, 2 * l);
    }

    /* Token assembly: dx is the gradient w.r.t. the first block's input. */
    memset(a->dpos, 0, sizeof(float) * (1 + (size_t)N) * D);
    for (int b = 0; b < B; b++) {
        const float *db = a->dx + (size_t)b * T * D;
        for (size_t i = 0; i < (size_t)T * D; i++) a->dpos[i] += db[i];
    }
    for (int i = 0; i < D; i++) g->cls_token[i] += a->dpos[i];
    pos_embed_backward(g->pos_embed, a->dpos, a->M, D, a->gh, a->gw);
    for (int b = 0; b < B; b++)
        for (int n = 0; n < N; n++) {
            const float *src = a->dx + ((size_t)b * T + 1 + n) * D;
            float *dt = a->tok + ((size_t)b * N + n) * D;
            if (a->has_mask && a->mask[(size_t)b * N + n]) {
                for (int i = 0; i < D; i++) g->mask_token[i] += src[i];
                memset(dt, 0, sizeof(float) * D);
            } else {
                memcpy(dt, src, sizeof(float) * D);
            }
        }
    linear_backward_prod(a->prod, NULL, g->patch_w, g->patch_b, a->tok, a->patches, w->patch_w,
                         arena_copy16(w16, w->arena, w->patch_w), (size_t)B * N, 3 * P * P, D,
                         a->op16a, a->op16b);
    if (a->hook) a->hook(a->hook_ctx, -1);
}

void bb_set_backward_hook(struct bb_act *a, bb_backward_hook fn, void *ctx)
{
    a->hook = fn;
    a->hook_ctx = ctx;
}

static int add1(struct param_list *l, const char *name, float *w, float *g, float *t, size_t n,
                float pe_lr)
{
    char full[160];
    snprintf(full, sizeof full, "backbone.%s", name);
    return param_list_add(l, full, w, g, t, n, MOD_BACKBONE, param_default_wd_mult(full),
                          param_default_lr_mult(full, pe_lr), param_is_last_layer(full));
}

int bb_add_params(struct param_list *l, const struct model_config *c, struct vit_weights *w,
                  struct vit_weights *g, struct vit_weights *t, float pe_lr)
{
    const size_t D = c->embed_dim, M = c->pos_grid, P = c->patch_size, Hs = c->ffn_hidden;
    const size_t F1 = c->ffn == FFN_SWIGLU ? 2 * Hs : Hs;
    const char *f1 = c->ffn == FFN_SWIGLU ? "w12" : "fc1";
    const char *f2 = c->ffn == FFN_SWIGLU ? "w3" : "fc2";
    int rc = 0;
#define ADD(nm, field, n) rc |= add1(l, nm, w->field, g->field, t->field, n, pe_lr)
    ADD("cls_token", cls_token, D);
    ADD("pos_embed", pos_embed, (1 + M * M) * D);
    ADD("mask_token", mask_token, D);
    ADD("patch_embed.proj.weight", patch_w, D * 3 * P * P);
    ADD("patch_embed.proj.bias", patch_b, D);
#undef ADD
    for (int i = 0; i < c->depth; i++) {
        struct vit_block_weights *bw = &w->blocks[i], *bg = &g->blocks[i], *bt = &t->blocks[i];
        char nm[128];
#define ADDB(fmt, field, n)                                                              \
    do {                                                                                 \
        snprintf(nm, sizeof nm, fmt, i);                                                 \
        rc |= add1(l, nm, bw->field, bg->field, bt->field, n, pe_lr);                    \
    } while (0)
#define ADDF(fmt, kind, field, n)                                                        \
    do {                                                                                 \
        snprintf(nm, sizeof nm, fmt, i, kind);                                           \
        rc |= add1(l, nm, bw->field, bg->field, bt->field, n, pe_lr);                    \
    } while (0)
        ADDB("blocks.%d.norm1.weight", norm1_w, D);
        ADDB("blocks.%d.norm1.bias", norm1_b, D);
        ADDB("blocks.%d.attn.qkv.weight", qkv_w, 3 * D * D);
        ADDB("blocks.%d.attn.qkv.bias", qkv_b, 3 * D);
        ADDB("blocks.%d.attn.proj.weight", proj_w, D * D);
        ADDB("blocks.%d.attn.proj.bias", proj_b, D);
        if (c->layerscale) ADDB("blocks.%d.ls1.gamma", ls1, D);
        ADDB("blocks.%d.norm2.weight", norm2_w, D);
        ADDB("blocks.%d.norm2.bias", norm2_b, D);
        ADDF("blocks.%d.mlp.%s.weight", f1, fc1_w, F1 * D);
        ADDF("blocks.%d.mlp.%s.bias", f1, fc1_b, F1);
        ADDF("blocks.%d.mlp.%s.weight", f2, fc2_w, D * Hs);
        ADDF("blocks.%d.mlp.%s.bias", f2, fc2_b, D);
        if (c->layerscale) ADDB("blocks.%d.ls2.gamma", ls2, D);
#undef ADDB
#undef ADDF
    }
    rc |= add1(l, "norm.weight", w->norm_w, g->norm_w, t->norm_w, D, pe_lr);
    rc |= add1(l, "norm.bias", w->norm_b, g->norm_b, t->norm_b, D, pe_lr);
    return rc ? -1 : 0;
}
