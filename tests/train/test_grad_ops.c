/* Backward ops of the trainer against central finite differences: every test
 * builds a scalar L = sum(r * f(inputs)) with a random r, back-propagates dL/df = r
 * and compares each analytic gradient with (L(x + h) - L(x - h)) / 2h at a
 * sample of coordinates (max error relative to the largest gradient <= 2e-2, the
 * float32 finite-difference noise level). Also: the positional-embedding
 * backward is the exact adjoint of the engine's interpolation, Sinkhorn-Knopp
 * marginals, the training backbone forward equals the engine's inference
 * forward (vit_forward) on the same weights, and the bf16 product variants
 * (linear, attention) match the float32 ones on bf16-exact operands. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/check.h"
#include "backbone.h"
#include "checkpoint.h"
#include "cpu/ops.h"
#include "cpu/pos_embed.h"
#include "grad_ops.h"
#include "head.h"
#include "loss.h"
#include "rng.h"
#include "vit.h"

static struct rng R;

static float *randv(size_t n, double scale)
{
    float *p = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) p[i] = (float)(rng_normal(&R) * scale);
    return p;
}

static float *zerov(size_t n) { return calloc(n, sizeof(float)); }

static double dot(const float *a, const float *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* Compares grad[0..n) with finite differences of f at up to 24 coordinates. */
typedef double (*loss_fn)(void);
static void fd_check(const char *what, float *x, const float *grad, size_t n, loss_fn f, float h)
{
    double maxg = 0.0, maxe = 0.0;
    for (size_t i = 0; i < n; i++) maxg = fabs(grad[i]) > maxg ? fabs(grad[i]) : maxg;
    const size_t stride = n > 24 ? n / 24 : 1;
    for (size_t i = 0; i < n; i += stride) {
        const float v = x[i];
        x[i] = v + h;
        const double lp = f();
        x[i] = v - h;
        const double lm = f();
        x[i] = v;
        const double num = (lp - lm) / (2.0 * h);
        const double e = fabs(num - grad[i]);
        maxe = e > maxe ? e : maxe;
    }
    const double rel = maxg > 0 ? maxe / maxg : maxe;
    CHECK(rel <= 2e-2 && maxg > 0, "%s: max fd error %.3g relative to max grad %.3g", what, rel, maxg);
}

/* ------------------------------------------------------------------ linear */
enum { LR = 5, LK = 7, LN = 6 };
static float *lx, *lW, *lb, *lr, *lout;
static double loss_linear(void)
{
    linear_forward(lout, lx, lW, lb, LR, LK, LN);
    return dot(lout, lr, LR * LN);
}

static void test_linear(void)
{
    lx = randv(LR * LK, 1);
    lW = randv(LN * LK, 1);
    lb = randv(LN, 1);
    lr = randv(LR * LN, 1);
    lout = zerov(LR * LN);
    float *dx = zerov(LR * LK), *dW = zerov(LN * LK), *db = zerov(LN);
    linear_backward(dx, dW, db, lr, lx, lW, LR, LK, LN, 0);
    fd_check("linear dx", lx, dx, LR * LK, loss_linear, 1e-2f);
    fd_check("linear dW", lW, dW, LN * LK, loss_linear, 1e-2f);
    fd_check("linear db", lb, db, LN, loss_linear, 1e-2f);
    /* accumulation: a second call adds */
    linear_backward(dx, dW, db, lr, lx, lW, LR, LK, LN, 1);
    float *dx1 = zerov(LR * LK), *dW1 = zerov(LN * LK), *db1 = zerov(LN);
    linear_backward(dx1, dW1, db1, lr, lx, lW, LR, LK, LN, 0);
    int ok = 1;
    for (int i = 0; i < LN * LK; i++) ok &= fabsf(dW[i] - 2 * dW1[i]) <= 1e-5f * (1 + fabsf(dW[i]));
    for (int i = 0; i < LR * LK; i++) ok &= fabsf(dx[i] - 2 * dx1[i]) <= 1e-5f * (1 + fabsf(dx[i]));
    CHECK(ok, "linear_backward accumulates");
    free(lx), free(lW), free(lb), free(lr), free(lout), free(dx), free(dW), free(db);
    free(dx1), free(dW1), free(db1);
}

/* ------------------------------------------------------------------ layernorm */
enum { NR = 4, ND = 9 };
static float *nx, *nw, *nb, *nr, *nout, nmean[NR], nrstd[NR];
static double loss_ln(void)
{
    layernorm_forward_train(nout, nmean, nrstd, nx, nw, nb, NR, ND, 1e-6f);
    return dot(nout, nr, NR * ND);
}

static void test_layernorm(void)
{
    nx = randv(NR * ND, 2);
    nw = randv(ND, 1);
    nb = randv(ND, 1);
    nr = randv(NR * ND, 1);
    nout = zerov(NR * ND);
    loss_ln();
    float *dx = zerov(NR * ND), *dw = zerov(ND), *db = zerov(ND);
    layernorm_backward(dx, dw, db, nr, nx, nmean, nrstd, nw, NR, ND);
    fd_check("layernorm dx", nx, dx, NR * ND, loss_ln, 1e-2f);
    fd_check("layernorm dw", nw, dw, ND, loss_ln, 1e-2f);
    fd_check("layernorm db", nb, db, ND, loss_ln, 1e-2f);
    free(nx), free(nw), free(nb), free(nr), free(nout), free(dx), free(dw), free(db);
}

/* ------------------------------------------------------------------ gelu / swiglu */
enum { GN = 40, SR = 3, SH = 5 };
static float *gx, *gr, *gout;
static double loss_gelu(void)
{
    gelu_forward_copy(gout, gx, GN);
    return dot(gout, gr, GN);
}
static double loss_swiglu(void)
{
    swiglu_forward_train(gout, gx, SR, SH);
    return dot(gout, gr, SR * SH);
}

static void test_activations(void)
{
    gx = randv(GN, 2);
    gr = randv(GN, 1);
    gout = zerov(GN);
    float *dx = zerov(GN);
    gelu_backward(dx, gr, gx, GN);
    fd_check("gelu", gx, dx, GN, loss_gelu, 1e-2f);
    swiglu_backward(dx, gr, gx, SR, SH);
    fd_check("swiglu", gx, dx, 2 * SR * SH, loss_swiglu, 1e-2f);
    free(gx), free(gr), free(gout), free(dx);
}

/* ------------------------------------------------------------------ attention */
enum { AB = 2, AT = 5, AD = 8, AH = 2 };
static float *aqkv, *ar, *aout, *aP;
static double loss_attn(void)
{
    attention_forward_train(aout, aP, aqkv, AB, AT, AD, AH);
    return dot(aout, ar, AB * AT * AD);
}

static void test_attention(void)
{
    aqkv = randv(AB * AT * 3 * AD, 1);
    ar = randv(AB * AT * AD, 1);
    aout = zerov(AB * AT * AD);
    aP = zerov(AB * AH * AT * AT);
    loss_attn();
    /* the training forward equals the engine's inference attention */
    float *ref = zerov(AB * AT * AD);
    float *scr = zerov(attention_scratch_bytes(AB, AT, AD, AH, MM_F32) / sizeof(float));
    char err[256] = "";
    CHECK(attention_forward(ref, aqkv, scr, AB, AT, AD, AH, MM_F32, err, sizeof err) == 0, "%s", err);
    CHECK(max_abs_diff(ref, aout, AB * AT * AD) < 1e-5f, "attention_forward_train == attention_forward");
    float *dqkv = zerov(AB * AT * 3 * AD), *scratch = zerov(AT * AT * 64);
    attention_backward(dqkv, ar, aqkv, aP, scratch, AB, AT, AD, AH);
    fd_check("attention dqkv", aqkv, dqkv, AB * AT * 3 * AD, loss_attn, 1e-2f);
    free(aqkv), free(ar), free(aout), free(aP), free(dqkv), free(scratch), free(ref), free(scr);
}

/* ------------------------------------------------------------------ bf16 */
/* The bf16 product variants against the float32 ones on operands that bf16
 * holds exactly: the products then differ only in summation order (linear),
 * or by the rounding of the softmax probabilities and dS (attention). */
static float *rand16(size_t n)
{
    float *p = randv(n, 1);
    for (size_t i = 0; i < n; i++) p[i] = mm_bf16_value(mm_bf16_round(p[i]));
    return p;
}

static double rel_diff(const float *a, const float *ref, size_t n)
{
    double e = 0.0, m = 0.0;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, fabs((double)a[i] - ref[i]));
        m = fmax(m, fabs((double)ref[i]));
    }
    return m > 0 ? e / m : e;
}

static void test_bf16_linear(void)
{
    enum { R = 37, K = 29, N = 23 };
    float *x = rand16(R * K), *W = rand16(N * K), *b = randv(N, 1), *dy = rand16(R * N);
    mm_bf16 *W16 = malloc(sizeof(mm_bf16) * N * K), *s1 = malloc(sizeof(mm_bf16) * R * K),
            *s2 = malloc(sizeof(mm_bf16) * R * K);
    round_bf16(W16, W, N * K);
    float *o32 = zerov(R * N), *o16 = zerov(R * N);
    linear_forward(o32, x, W, b, R, K, N);
    linear_forward_bf16(o16, x, W16, b, R, K, N, s1);
    CHECK(rel_diff(o16, o32, R * N) <= 1e-5, "bf16 linear forward == fp32 on bf16 operands");
    for (int acc = 0; acc < 2; acc++) {
        float *dx32 = randv(R * K, 1), *dW32 = randv(N * K, 1), *db32 = randv(N, 1);
        float *dx16 = malloc(sizeof(float) * R * K), *dW16 = malloc(sizeof(float) * N * K),
              *db16 = malloc(sizeof(float) * N);
        memcpy(dx16, dx32, sizeof(float) * R * K);
        memcpy(dW16, dW32, sizeof(float) * N * K);
        memcpy(db16, db32, sizeof(float) * N);
        linear_backward(dx32, dW32, db32, dy, x, W, R, K, N, acc);
        linear_backward_bf16(dx16, dW16, db16, dy, x, W16, R, K, N, acc, s1, s2);
        CHECK(rel_diff(dx16, dx32, R * K) <= 1e-5 && rel_diff(dW16, dW32, N * K) <= 1e-5 &&
                  rel_diff(db16, db32, N) <= 1e-6,
              "bf16 linear backward == fp32 on bf16 operands (dx_accumulate %d)", acc);
        free(dx32), free(dW32), free(db32), free(dx16), free(dW16), free(db16);
    }
    free(x), free(W), free(b), free(dy), free(W16), free(s1), free(s2), free(o32), free(o16);
}

static void test_bf16_attention(void)
{
    enum { B = 3, T = 11, D = 24, H = 3 };
    const size_t nq = (size_t)B * T * 3 * D, no = (size_t)B * T * D, np = (size_t)B * H * T * T;
    float *qkv = rand16(nq), *dout = rand16(no);
    float *o32 = zerov(no), *o16 = zerov(no), *P32 = zerov(np), *P16f = zerov(np);
    float *d32 = zerov(nq), *d16 = zerov(nq), *dP = zerov(np), *scratch = zerov(T * T * 64);
    mm_bf16 *q16 = malloc(sizeof(mm_bf16) * nq), *p16 = malloc(sizeof(mm_bf16) * np),
            *do16 = malloc(sizeof(mm_bf16) * no);
    attention_forward_train(o32, P32, qkv, B, T, D, H);
    attention_forward_train_bf16(o16, P16f, qkv, B, T, D, H, q16, p16);
    CHECK(rel_diff(P16f, P32, np) <= 1e-5, "bf16 attention probabilities == fp32 on bf16 q, k");
    CHECK(rel_diff(o16, o32, no) <= 8e-3, "bf16 attention output ~ fp32 (rel %.2e)",
          rel_diff(o16, o32, no));
    attention_backward(d32, dout, qkv, P32, scratch, B, T, D, H);
    attention_backward_bf16(d16, dout, qkv, P32, B, T, D, H, q16, do16, p16, dP);
    for (int part = 0; part < 3; part++) {
        float a[B * T * D], r[B * T * D];
        for (size_t t = 0; t < (size_t)B * T; t++)
            for (int c = 0; c < D; c++) {
                a[t * D + c] = d16[t * 3 * D + part * D + c];
                r[t * D + c] = d32[t * 3 * D + part * D + c];
            }
        CHECK(rel_diff(a, r, no) <= 1e-2, "bf16 attention backward d%c ~ fp32 (rel %.2e)",
              "QKV"[part], rel_diff(a, r, no));
    }
    free(qkv), free(dout), free(o32), free(o16), free(P32), free(P16f), free(d32), free(d16);
    free(dP), free(scratch), free(q16), free(p16), free(do16);
}

static void test_bf16(void)
{
    if (!mm_bf16_supported()) {
        printf("bf16 ops: skipped (this CPU computes with %s, no AVX-512)\n", mm_isa_name(mm_isa()));
        return;
    }
    test_bf16_linear();
    test_bf16_attention();
}

/* ------------------------------------------------------------------ pos embed */
static void test_pos_embed(void)
{
    const int D = 3;
    const int cases[][3] = { {5, 4, 4}, {4, 2, 3}, {6, 6, 6}, {3, 7, 5} };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int M = cases[c][0], gh = cases[c][1], gw = cases[c][2];
        const size_t nin = (1 + (size_t)M * M) * D, nout = (1 + (size_t)gh * gw) * D;
        float *t = randv(nin, 1), *g = randv(nout, 1), *out = zerov(nout), *dt = zerov(nin);
        pos_embed_interpolate(out, t, M, D, gh, gw);
        pos_embed_backward(dt, g, M, D, gh, gw);
        const double a = dot(out, g, nout), b = dot(t, dt, nin);
        CHECK(fabs(a - b) <= 1e-5 * (1 + fabs(a)), "pos adjoint M %d -> %dx%d: %.9g vs %.9g", M,
              gh, gw, a, b);
        free(t), free(g), free(out), free(dt);
    }
}

/* ------------------------------------------------------------------ losses */
enum { CK = 11, KN = 6, KD = 5 };
static float *cs, *ct1, *ct2, *cds, *kx, *kdx;
static double loss_ce(void)
{
    float tmp[CK];
    return ce_row(tmp, cs, ct1, ct2, CK, 0.7, 0.1);
}
static double loss_koleo(void)
{
    float tmp[KN * KD] = {0};
    return koleo_loss(tmp, KD, kx, KD, KN, KD, 0.1);
}

static void test_losses(void)
{
    cs = randv(CK, 0.3);
    ct1 = zerov(CK);
    ct2 = zerov(CK);
    for (int k = 0; k < CK; k++) {
        ct1[k] = (float)rng_uniform(&R);
        ct2[k] = (float)rng_uniform(&R);
    }
    cds = zerov(CK);
    ce_row(cds, cs, ct1, ct2, CK, 0.7, 0.1);
    fd_check("cross-entropy", cs, cds, CK, loss_ce, 1e-3f);
    kx = randv(KN * KD, 1);
    kdx = zerov(KN * KD);
    koleo_loss(kdx, KD, kx, KD, KN, KD, 0.1);
    fd_check("koleo", kx, kdx, KN * KD, loss_koleo, 1e-3f);

    /* Sinkhorn-Knopp: rows sum to 1 and prototype columns to n / K (after 3
     * iterations, approximately); invariant to a per-prototype shift. */
    enum { SN = 6, SK = 9 };
    float *lg = randv(SN * SK, 2), *T = zerov(SN * SK), *T2 = zerov(SN * SK);
    double work[SN * SK + SK];
    sinkhorn_knopp(T, lg, SN, SK, 0.5f, 3, work);
    int rows_ok = 1;
    for (int i = 0; i < SN; i++) {
        double s = 0.0;
        for (int k = 0; k < SK; k++) s += T[i * SK + k];
        rows_ok &= fabs(s - 1.0) < 1e-5;
    }
    CHECK(rows_ok, "sinkhorn rows sum to 1");
    double colerr = 0.0;
    for (int k = 0; k < SK; k++) {
        double s = 0.0;
        for (int i = 0; i < SN; i++) s += T[i * SK + k];
        colerr = fmax(colerr, fabs(s - (double)SN / SK));
    }
    CHECK(colerr < 0.2, "sinkhorn columns near n/K (max err %.3g)", colerr);
    for (int k = 0; k < SK; k++)
        for (int i = 0; i < SN; i++) lg[i * SK + k] += 3.0f * k;
    sinkhorn_knopp(T2, lg, SN, SK, 0.5f, 3, work);
    CHECK(max_abs_diff(T, T2, SN * SK) < 1e-5f, "sinkhorn invariant to per-prototype shifts");
    free(cs), free(ct1), free(ct2), free(cds), free(kx), free(kdx), free(lg), free(T), free(T2);
}

/* ------------------------------------------------------------------ head */
static struct head_weights hw, hg;
static struct head_act *ha;
static float *hx, *hr[HEAD_MAX_LEVELS];
enum { HNR = 3 };
static double loss_head(void)
{
    head_forward(&hw, NULL, ha, hx, hw.D, HNR);
    double s = 0.0;
    for (int j = 0; j < hw.n_levels; j++)
        s += dot(head_logits(ha, j), hr[j], (size_t)HNR * hw.lv[j].K);
    return s;
}

static void test_head(void)
{
    struct head_config hc = { .nested = true, .n_levels = 3, .widths = {2, 4, 8}, .prototypes = 16,
                              .hidden = 12, .bottleneck = 6 };
    char err[256];
    CHECK(head_alloc(&hc, 8, &hw, err, sizeof err) == 0, "head_alloc: %s", err);
    CHECK(head_alloc(&hc, 8, &hg, err, sizeof err) == 0, "head_alloc: %s", err);
    CHECK(hw.lv[0].K == 4 && hw.lv[1].K == 8 && hw.lv[2].K == 16, "prototypes per level");
    for (size_t i = 0; i < hw.n_floats; i++) hw.arena[i] = (float)(rng_normal(&R) * 0.5);
    for (int j = 0; j < hw.n_levels; j++)
        for (int k = 0; k < hw.lv[j].K; k++) hw.lv[j].wg[k] = 0.5f + (float)rng_uniform(&R);
    hx = randv(HNR * 8, 1);
    for (int j = 0; j < hw.n_levels; j++) hr[j] = randv((size_t)HNR * hw.lv[j].K, 1);
    CHECK(head_act_ensure(&ha, &hw, HNR, MM_F32, err, sizeof err) == 0, "head_act: %s", err);
    loss_head();
    for (int j = 0; j < hw.n_levels; j++)
        memcpy(head_dlogits(ha, j), hr[j], sizeof(float) * HNR * hw.lv[j].K);
    float *dx = zerov(HNR * 8);
    head_backward(&hw, NULL, &hg, ha, dx, 8);
    fd_check("head dx", hx, dx, HNR * 8, loss_head, 1e-2f);
    for (int j = 0; j < hw.n_levels; j++) {
        struct head_level *W = &hw.lv[j], *G = &hg.lv[j];
        const size_t d = W->d, hid = hw.hidden, bn = hw.bottleneck, K = W->K;
        fd_check("head proj_w", W->proj_w, G->proj_w, d * d, loss_head, 1e-2f);
        fd_check("head proj_b", W->proj_b, G->proj_b, d, loss_head, 1e-2f);
        fd_check("head w1", W->w1, G->w1, hid * d, loss_head, 1e-2f);
        fd_check("head b2", W->b2, G->b2, hid, loss_head, 1e-2f);
        fd_check("head w3", W->w3, G->w3, bn * hid, loss_head, 1e-2f);
        fd_check("head weight_g", W->wg, G->wg, K, loss_head, 1e-2f);
        fd_check("head weight_v", W->wv, G->wv, K * bn, loss_head, 1e-2f);
    }
    head_act_free(ha);
    head_free(&hw);
    head_free(&hg);
    free(hx);
    free(dx);
    for (int j = 0; j < 3; j++) free(hr[j]);
}

/* ------------------------------------------------------------------ backbone */
static struct model_config bc;
static struct vit_weights bw, bg;
static struct bb_act *bact;
static float *bimg, *br;
static uint8_t bmask[4 * 9];
static struct bb_drop bdrop;
static int subsets[2][2][4];

static void fixed_subset(void *ctx, int pass, int layer, int branch, int b, int k, int *idx)
{
    (void)ctx, (void)pass, (void)b;
    for (int i = 0; i < k; i++) idx[i] = subsets[layer][branch][i];
}

static double loss_bb(void)
{
    bb_forward(&bc, &bw, NULL, bact, bimg, bmask, &bdrop);
    return dot(bb_out(bact), br, (size_t)4 * bb_tokens(bact) * bc.embed_dim);
}

static void test_backbone(void)
{
    char err[256];
    model_config_defaults(&bc, 8, 2);
    bc.num_heads = 2;
    bc.ffn_hidden = 8;
    bc.patch_size = 2;
    bc.pos_grid = 4;
    CHECK(vit_weights_alloc(&bc, &bw, err, sizeof err) == 0, "alloc: %s", err);
    CHECK(vit_weights_alloc(&bc, &bg, err, sizeof err) == 0, "alloc: %s", err);
    for (size_t i = 0; i < bw.arena_floats; i++) bw.arena[i] = (float)(rng_normal(&R) * 0.4);
    for (int l = 0; l < bc.depth; l++)
        for (int d = 0; d < 8; d++) {
            bw.blocks[l].norm1_w[d] += 1.0f;
            bw.blocks[l].norm2_w[d] += 1.0f;
        }
    /* 4 images of 6x6 (3x3 patches, interpolated from the 4x4 grid) */
    CHECK(bb_act_ensure(&bact, &bc, 4, 6, 1, MM_F32, err, sizeof err) == 0, "act: %s", err);
    bimg = randv(4 * 3 * 36, 1);
    br = randv((size_t)4 * 10 * 8, 1);
    for (int i = 0; i < 36; i++) bmask[i] = (i % 4) == 1;
    int sub[2][2][2] = { { {2, 0}, {1, 3} }, { {3, 2}, {0, 1} } };
    for (int l = 0; l < 2; l++)
        for (int b = 0; b < 2; b++)
            for (int i = 0; i < 2; i++) subsets[l][b][i] = sub[l][b][i];
    bdrop = (struct bb_drop){ 0.5f, &R, fixed_subset, NULL, 0 };
    loss_bb();
    memcpy(bb_dout(bact), br, sizeof(float) * 4 * 10 * 8);
    bb_backward(&bc, &bw, NULL, &bg, bact);
    fd_check("backbone cls_token", bw.cls_token, bg.cls_token, 8, loss_bb, 1e-2f);
    fd_check("backbone pos_embed", bw.pos_embed, bg.pos_embed, 17 * 8, loss_bb, 1e-2f);
    fd_check("backbone mask_token", bw.mask_token, bg.mask_token, 8, loss_bb, 1e-2f);
    fd_check("backbone patch_w", bw.patch_w, bg.patch_w, 8 * 12, loss_bb, 1e-2f);
    fd_check("backbone qkv_w 0", bw.blocks[0].qkv_w, bg.blocks[0].qkv_w, 24 * 8, loss_bb, 1e-2f);
    fd_check("backbone ls1 0", bw.blocks[0].ls1, bg.blocks[0].ls1, 8, loss_bb, 1e-2f);
    fd_check("backbone w12 1", bw.blocks[1].fc1_w, bg.blocks[1].fc1_w, 16 * 8, loss_bb, 1e-2f);
    fd_check("backbone ls2 1", bw.blocks[1].ls2, bg.blocks[1].ls2, 8, loss_bb, 1e-2f);
    fd_check("backbone norm", bw.norm_w, bg.norm_w, 8, loss_bb, 1e-2f);

    /* The teacher path (train == 0, no mask) equals the engine's inference forward. */
    struct bb_act *tact = NULL;
    CHECK(bb_act_ensure(&tact, &bc, 4, 6, 0, MM_F32, err, sizeof err) == 0, "act: %s", err);
    bb_forward(&bc, &bw, NULL, tact, bimg, NULL, NULL);
    struct checkpoint ck;
    memset(&ck, 0, sizeof ck);
    ck.cfg = bc;
    CHECK(vit_weights_alloc(&bc, &ck.w, err, sizeof err) == 0, "alloc: %s", err);
    memcpy(ck.w.arena, bw.arena, sizeof(float) * bw.arena_floats);
    struct vit_model *m = NULL;
    CHECK(vit_model_from_checkpoint(&ck, &m, err, sizeof err) == 0, "model: %s", err);
    float cls[4 * 8], patch[4 * 9 * 8];
    struct vit_workspace *ws = NULL;
    struct vit_outputs out = {.cls = cls, .patch = patch};
    CHECK(vit_forward(m, &ws, bimg, 4, 6, 6, &out, err, sizeof err) == 0, "forward: %s", err);
    float worst = 0.0f;
    for (int b = 0; b < 4; b++) {
        const float *t = bb_out(tact) + (size_t)b * 10 * 8;
        worst = fmaxf(worst, max_abs_diff(t, cls + b * 8, 8));
        worst = fmaxf(worst, max_abs_diff(t + 8, patch + b * 72, 72));
    }
    CHECK(worst < 1e-4f, "teacher forward vs vit_forward: max diff %g", worst);
    vit_workspace_free(ws);
    vit_model_free(m);
    bb_act_free(tact);
    bb_act_free(bact);
    vit_weights_free(&bw);
    vit_weights_free(&bg);
    free(bimg);
    free(br);
}

int main(void)
{
    rng_seed(&R, 12345);
    test_linear();
    test_layernorm();
    test_activations();
    test_attention();
    test_bf16();
    test_pos_embed();
    test_losses();
    test_head();
    test_backbone();
    return check_summary();
}
