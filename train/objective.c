/* Franca's training objective (objective.h): teacher forward and Sinkhorn-Knopp
 * targets, student forward on masked global and local crops, DINO + iBOT + KoLeo
 * losses summed over the Matryoshka levels, and the backward pass. */
#include "objective.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backbone.h"
#include "comm.h"
#include "errors.h"
#include "grad_ops.h"
#include "head.h"
#include "loss.h"

#define SK_ITERS 3

struct objective {
    struct objective_config cfg;
    struct vit_weights sw, tw, gw;           /* backbone: student, teacher, gradient */
    struct head_weights sd, td, gd;          /* DINO head */
    struct head_weights si, ti, gi;          /* iBOT head */
    struct param_list params;
    /* bf16 precision: the weight arenas above rounded to bf16 (same layouts) */
    mm_bf16 *sw16, *tw16, *sd16, *td16, *si16, *ti16;
    struct bb_act *t_act, *g_act, *l_act;    /* teacher globals, student globals, locals */
    struct head_act *hd_s, *hd_t, *hi_s, *hi_t;
    objective_subset_fn hook;
    void *hook_ctx;
    struct comm *comm;                       /* data parallel, or NULL */
    objective_ready_fn ready;                /* gradient readiness, or NULL */
    void *ready_ctx;
    int ready_heads;                         /* first head param */
    int ready_last;                          /* in the step's last backbone pass */
    int *ready_at;                           /* first param final at bb hook stage s (2l: block l,
                                                2l + 1: its FFN half, 2 depth: final norm) */
    /* grow-only scratch */
    float *fbuf;
    size_t fbuf_cap;
    double *dbuf;
    size_t dbuf_cap;
    int *ibuf;
    size_t ibuf_cap;
};

const struct objective_config *objective_get_config(const struct objective *o) { return &o->cfg; }
struct param_list *objective_params(struct objective *o) { return &o->params; }
const struct vit_weights *objective_teacher_backbone(const struct objective *o) { return &o->tw; }

void objective_set_drop_path_hook(struct objective *o, objective_subset_fn fn, void *ctx)
{
    o->hook = fn;
    o->hook_ctx = ctx;
}

void objective_set_comm(struct objective *o, struct comm *comm) { o->comm = comm; }

void objective_free(struct objective *o)
{
    if (!o) return;
    vit_weights_free(&o->sw);
    vit_weights_free(&o->tw);
    vit_weights_free(&o->gw);
    head_free(&o->sd);
    head_free(&o->td);
    head_free(&o->gd);
    head_free(&o->si);
    head_free(&o->ti);
    head_free(&o->gi);
    param_list_free(&o->params);
    free(o->ready_at);
    bb_act_free(o->t_act);
    bb_act_free(o->g_act);
    bb_act_free(o->l_act);
    head_act_free(o->hd_s);
    head_act_free(o->hd_t);
    head_act_free(o->hi_s);
    head_act_free(o->hi_t);
    free(o->sw16);
    free(o->tw16);
    free(o->sd16);
    free(o->td16);
    free(o->si16);
    free(o->ti16);
    free(o->fbuf);
    free(o->dbuf);
    free(o->ibuf);
    free(o);
}

int objective_precision_check(const struct objective_config *cfg, char *err, size_t errlen)
{
    if (cfg->precision == MM_F32) return 0;
    if (cfg->precision != MM_BF16)
        return set_err(err, errlen, "objective: unknown precision %d", (int)cfg->precision);
    if (!mm_bf16_supported())
        return set_err(err, errlen, "precision bf16 needs a CPU with AVX-512 or better; this one "
                       "computes with %s (use precision fp32)", mm_isa_name(mm_isa()));
    return 0;
}

/* The bf16 copies of the weight arenas (bf16 precision only). */
static int alloc_copies16(struct objective *o)
{
    if (o->cfg.precision != MM_BF16) return 0;
    o->sw16 = malloc(sizeof(mm_bf16) * o->sw.arena_floats);
    o->tw16 = malloc(sizeof(mm_bf16) * o->tw.arena_floats);
    o->sd16 = malloc(sizeof(mm_bf16) * o->sd.n_floats);
    o->td16 = malloc(sizeof(mm_bf16) * o->td.n_floats);
    o->si16 = malloc(sizeof(mm_bf16) * o->si.n_floats);
    o->ti16 = malloc(sizeof(mm_bf16) * o->ti.n_floats);
    return o->sw16 && o->tw16 && o->sd16 && o->td16 && o->si16 && o->ti16 ? 0 : -1;
}

/* Rounds every weight arena into its bf16 copy (the weights of this step). */
static void round_copies16(struct objective *o)
{
    round_bf16(o->sw16, o->sw.arena, o->sw.arena_floats);
    round_bf16(o->tw16, o->tw.arena, o->tw.arena_floats);
    round_bf16(o->sd16, o->sd.arena, o->sd.n_floats);
    round_bf16(o->td16, o->td.arena, o->td.n_floats);
    round_bf16(o->si16, o->si.arena, o->si.n_floats);
    round_bf16(o->ti16, o->ti.arena, o->ti.n_floats);
}

int objective_create(const struct objective_config *cfg, uint64_t seed, struct objective **out,
                     char *err, size_t errlen)
{
    *out = NULL;
    if (objective_precision_check(cfg, err, errlen)) return -1;
    const struct model_config *c = &cfg->backbone;
    if (model_config_validate(c, err, errlen)) return -1;
    if (c->register_tokens != 0 || c->rasa_layers != 0)
        return set_err(err, errlen, "training supports neither register tokens nor RASA tensors");
    if (!(cfg->student_temp > 0.0f) || !(cfg->drop_path >= 0.0f && cfg->drop_path < 1.0f))
        return set_err(err, errlen, "objective: student_temp %g must be > 0 and drop_path %g in "
                       "[0, 1)", (double)cfg->student_temp, (double)cfg->drop_path);
    if (head_config_check(&cfg->head, c->embed_dim, err, errlen)) return -1;

    struct objective *o = calloc(1, sizeof *o);
    if (!o) return set_err(err, errlen, "out of memory");
    o->cfg = *cfg;
    float wsum = 0.0f;
    for (int j = 0; j < HEAD_MAX_LEVELS; j++) wsum += cfg->head.level_weights[j];
    if (wsum == 0.0f)
        for (int j = 0; j < HEAD_MAX_LEVELS; j++) o->cfg.head.level_weights[j] = 1.0f;
    const int D = c->embed_dim;
    if (vit_weights_alloc(c, &o->sw, err, errlen) || vit_weights_alloc(c, &o->tw, err, errlen) ||
        vit_weights_alloc(c, &o->gw, err, errlen) ||
        head_alloc(&cfg->head, D, &o->sd, err, errlen) ||
        head_alloc(&cfg->head, D, &o->td, err, errlen) ||
        head_alloc(&cfg->head, D, &o->gd, err, errlen) ||
        head_alloc(&cfg->head, D, &o->si, err, errlen) ||
        head_alloc(&cfg->head, D, &o->ti, err, errlen) ||
        head_alloc(&cfg->head, D, &o->gi, err, errlen)) {
        objective_free(o);
        return -1;
    }
    if (alloc_copies16(o)) {
        objective_free(o);
        return set_err(err, errlen, "out of memory for the bf16 weight copies");
    }
    vit_weights_init_random(c, &o->sw, seed);
    if (c->layerscale && cfg->layerscale_init > 0.0f)
        for (int b = 0; b < c->depth; b++)
            for (int k = 0; k < D; k++) {
                if (o->sw.blocks[b].ls1) o->sw.blocks[b].ls1[k] = cfg->layerscale_init;
                if (o->sw.blocks[b].ls2) o->sw.blocks[b].ls2[k] = cfg->layerscale_init;
            }
    struct rng root, r;
    rng_seed(&root, seed);
    rng_fork(&root, 0x6865616431ull, &r); /* DINO head stream */
    head_init_random(&o->sd, &r, cfg->head.init_fan_in);
    rng_fork(&root, 0x6865616432ull, &r); /* iBOT head stream */
    head_init_random(&o->si, &r, cfg->head.init_fan_in);
    memcpy(o->tw.arena, o->sw.arena, sizeof(float) * o->sw.arena_floats);
    memcpy(o->td.arena, o->sd.arena, sizeof(float) * o->sd.n_floats);
    memcpy(o->ti.arena, o->si.arena, sizeof(float) * o->si.n_floats);

    if (bb_add_params(&o->params, c, &o->sw, &o->gw, &o->tw, 0.2f) ||
        head_add_params(&o->params, "dino_head", MOD_DINO_HEAD, &o->sd, &o->gd, &o->td) ||
        head_add_params(&o->params, "ibot_head", MOD_IBOT_HEAD, &o->si, &o->gi, &o->ti)) {
        objective_free(o);
        return set_err(err, errlen, "out of memory for the parameter list");
    }
    o->ready_at = malloc(sizeof(int) * (size_t)(2 * c->depth + 1));
    if (!o->ready_at) {
        objective_free(o);
        return set_err(err, errlen, "out of memory");
    }
    for (int st = 0; st <= 2 * c->depth; st++) {
        char nm[64];
        if (st == 2 * c->depth) snprintf(nm, sizeof nm, "backbone.norm.weight");
        else snprintf(nm, sizeof nm, "backbone.blocks.%d.norm%d.weight", st / 2, 1 + st % 2);
        o->ready_at[st] = (int)(param_list_find(&o->params, nm) - o->params.p);
    }
    o->ready_heads = (int)(param_list_find(&o->params, "backbone.norm.bias") - o->params.p) + 1;
    *out = o;
    return 0;
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 0;
    void *q = realloc(*p, need * elem);
    if (!q) return -1;
    *p = q;
    *cap = need;
    return 0;
}


/* FRANCA_TRAIN_DIAG=1: per-level statistics on stderr, for diagnosing runs whose
 * clustering losses do not move. For each level j: spread of the teacher logits
 * across samples (std over samples, averaged over prototypes) and overall std;
 * mean entropy of the Sinkhorn targets and of the student softmax, both / ln K;
 * spread of the teacher CLS across samples. Costs one pass over the logits. */
static int diag_on(void)
{
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("FRANCA_TRAIN_DIAG");
        on = e && e[0] && strcmp(e, "0");
    }
    return on;
}

static void diag_level(const char *tag, int j, const float *tl, const float *tg, const float *sl,
                       int nt, int ns, int K, double tau)
{
    double spread = 0.0, all = 0.0, mean_all = 0.0, ht = 0.0, hs = 0.0;
    for (size_t i = 0; i < (size_t)nt * K; i++) mean_all += tl[i];
    mean_all /= (double)nt * K;
    for (int k = 0; k < K; k++) {
        double m = 0.0, v = 0.0;
        for (int i = 0; i < nt; i++) m += tl[(size_t)i * K + k];
        m /= nt;
        for (int i = 0; i < nt; i++) {
            const double d = tl[(size_t)i * K + k] - m;
            v += d * d;
            all += (tl[(size_t)i * K + k] - mean_all) * (tl[(size_t)i * K + k] - mean_all);
        }
        spread += sqrt(v / nt);
    }
    for (int i = 0; i < nt; i++)
        for (int k = 0; k < K; k++) {
            const double t = tg[(size_t)i * K + k];
            if (t > 0) ht -= t * log(t);
        }
    for (int i = 0; i < ns; i++) {
        const float *s = sl + (size_t)i * K;
        double mx = s[0], z = 0.0, e = 0.0;
        for (int k = 1; k < K; k++) mx = s[k] > mx ? s[k] : mx;
        for (int k = 0; k < K; k++) z += exp((s[k] - mx) / tau);
        for (int k = 0; k < K; k++) {
            const double p = exp((s[k] - mx) / tau) / z;
            if (p > 0) e -= p * log(p);
        }
        hs += e;
    }
    fprintf(stderr, "diag %s L%d K=%d teacher_logit_spread %.3g logit_std %.3g "
            "H(target)/lnK %.4f H(student)/lnK %.4f\n", tag, j, K, spread / K,
            sqrt(all / ((double)nt * K)), ht / nt / log(K), hs / ns / log(K));
}

static void diag_cls(const float *x, int n, int D)
{
    double spread = 0.0, mag = 0.0;
    for (int c = 0; c < D; c++) {
        double m = 0.0, v = 0.0;
        for (int i = 0; i < n; i++) m += x[(size_t)i * D + c];
        m /= n;
        for (int i = 0; i < n; i++) v += (x[(size_t)i * D + c] - m) * (x[(size_t)i * D + c] - m);
        spread += sqrt(v / n);
        mag += fabs(m);
    }
    fprintf(stderr, "diag teacher CLS: spread over samples %.4g, |mean| %.4g (per feature)\n",
            spread / D, mag / D);
}

/* bb_backward's stages as parameter indices: the params from there on are final. */
static void bb_ready(void *ctx, int stage)
{
    struct objective *o = ctx;
    o->ready(o->ready_ctx, !o->ready_last ? o->ready_heads : stage < 0 ? 0 : o->ready_at[stage]);
}

int objective_step(struct objective *o, const struct crop_batch *bt, float teacher_temp,
                   struct rng *rng, struct loss_terms *loss, char *err, size_t errlen)
{
    const struct model_config *c = &o->cfg.backbone;
    const int D = c->embed_dim, P = c->patch_size, B = bt->B;
    const int nl = bt->local && bt->n_local > 0 ? bt->n_local : 0;
    memset(loss, 0, sizeof *loss);
    if (B < 1 || bt->global_size < P || bt->global_size % P || !bt->global ||
        (nl && (bt->local_size < P || bt->local_size % P)))
        return set_err(err, errlen, "objective: bad batch (B %d, global %d, %d locals of %d, "
                       "patch %d)", B, bt->global_size, nl, bt->local_size, P);
    if (!(teacher_temp > 0.0f)) return set_err(err, errlen, "objective: teacher_temp must be > 0");
    const int nG = 2 * B, nL = nl * B, nD = nG + nL;
    const int gside = bt->global_size / P, Ng = gside * gside;

    const enum mm_type prod = o->cfg.precision;
    if (bb_act_ensure(&o->t_act, c, nG, bt->global_size, 0, prod, err, errlen) ||
        bb_act_ensure(&o->g_act, c, nG, bt->global_size, 1, prod, err, errlen) ||
        (nl && bb_act_ensure(&o->l_act, c, nL, bt->local_size, 1, prod, err, errlen)))
        return -1;

    /* Masked patches, image-major: index img * Ng + n. */
    int nm = 0;
    if (bt->masks)
        for (size_t i = 0; i < (size_t)nG * Ng; i++) nm += bt->masks[i] != 0;
    int Kmax = 0, Ksum = 0;
    for (int j = 0; j < o->sd.n_levels; j++) {
        Kmax = o->sd.lv[j].K > Kmax ? o->sd.lv[j].K : Kmax;
        Ksum += o->sd.lv[j].K;
    }
    const size_t nrows_max = (size_t)(nD > nm ? nD : nm);
    const size_t fneed = (size_t)nD * D * 2 + (size_t)nG * D + (size_t)nm * D * 3 +
                         (size_t)nG * Ksum + (size_t)nm * Ksum;
    const size_t dneed = nrows_max * Kmax + Kmax + nrows_max + 1;
    if (grow((void **)&o->fbuf, &o->fbuf_cap, fneed, sizeof(float)) ||
        grow((void **)&o->dbuf, &o->dbuf_cap, dneed, sizeof(double)) ||
        grow((void **)&o->ibuf, &o->ibuf_cap, (size_t)nm + nG + 1, sizeof(int)) ||
        head_act_ensure(&o->hd_t, &o->td, nG, prod, err, errlen) ||
        head_act_ensure(&o->hd_s, &o->sd, nD, prod, err, errlen) ||
        (nm && (head_act_ensure(&o->hi_t, &o->ti, nm, prod, err, errlen) ||
                head_act_ensure(&o->hi_s, &o->si, nm, prod, err, errlen))))
        return err && err[0] ? -1 : set_err(err, errlen, "out of memory for loss buffers");
    float *cls_s = o->fbuf, *dcls = cls_s + (size_t)nD * D, *cls_t = dcls + (size_t)nD * D;
    float *pt = cls_t + (size_t)nG * D, *ps = pt + (size_t)nm * D, *dps = ps + (size_t)nm * D;
    float *tgt_d = dps + (size_t)nm * D, *tgt_i = tgt_d + (size_t)nG * Ksum;
    double *work = o->dbuf, *rowloss = work + nrows_max * Kmax + Kmax;
    int *midx = o->ibuf, *mcount = midx + nm;
    for (int i = 0; i < nG; i++) mcount[i] = 0;
    if (nm) {
        int m = 0;
        for (int i = 0; i < nG; i++)
            for (int n = 0; n < Ng; n++)
                if (bt->masks[(size_t)i * Ng + n]) {
                    midx[m++] = i * Ng + n;
                    mcount[i]++;
                }
    }

    if (prod == MM_BF16) round_copies16(o);
    /* Whether any rank has masked patches (the iBOT Sinkhorn-Knopp is collective). */
    int ibot_any = nm > 0;
    if (comm_size(o->comm) > 1) {
        double g = nm;
        comm_allreduce_sum_f64(o->comm, &g, 1);
        ibot_any = g > 0;
    }

    /* 1. Teacher: unmasked globals, no drop path; SK targets per level. */
    bb_forward(c, &o->tw, o->tw16, o->t_act, bt->global, NULL, NULL);
    const int Tg = bb_tokens(o->t_act);
    const float *tout = bb_out(o->t_act);
    for (int i = 0; i < nG; i++)
        memcpy(cls_t + (size_t)i * D, tout + (size_t)i * Tg * D, sizeof(float) * D);
    for (int m = 0; m < nm; m++) {
        const int img = midx[m] / Ng, n = midx[m] % Ng;
        memcpy(pt + (size_t)m * D, tout + ((size_t)img * Tg + 1 + n) * D, sizeof(float) * D);
    }
    head_forward(&o->td, o->td16, o->hd_t, cls_t, D, nG);
    {
        size_t off = 0;
        for (int j = 0; j < o->td.n_levels; j++) {
            const int K = o->td.lv[j].K;
            sinkhorn_knopp_comm(tgt_d + off, head_logits(o->hd_t, j), nG, K, teacher_temp,
                                SK_ITERS, work, o->comm);
            off += (size_t)nG * K;
        }
    }
    if (nm) {
        head_forward(&o->ti, o->ti16, o->hi_t, pt, D, nm);
        size_t off = 0;
        for (int j = 0; j < o->ti.n_levels; j++) {
            const int K = o->ti.lv[j].K;
            sinkhorn_knopp_comm(tgt_i + off, head_logits(o->hi_t, j), nm, K, teacher_temp,
                                SK_ITERS, work, o->comm);
            off += (size_t)nm * K;
        }
    } else if (ibot_any) {
        /* no masked patch in this rank's shard: still take part in the reductions */
        for (int j = 0; j < o->ti.n_levels; j++)
            sinkhorn_knopp_comm(NULL, NULL, 0, o->ti.lv[j].K, teacher_temp, SK_ITERS, work,
                                o->comm);
    }

    /* 2. Student: masked globals, then locals (shared weights, own drop-path subsets). */
    struct bb_drop drop = { o->cfg.drop_path, rng, o->hook, o->hook_ctx, 0 };
    bb_forward(c, &o->sw, o->sw16, o->g_act, bt->global, nm ? bt->masks : NULL, &drop);
    const float *gout = bb_out(o->g_act);
    for (int i = 0; i < nG; i++)
        memcpy(cls_s + (size_t)i * D, gout + (size_t)i * Tg * D, sizeof(float) * D);
    int Tl = 0;
    if (nl) {
        drop.pass = 1;
        bb_forward(c, &o->sw, o->sw16, o->l_act, bt->local, NULL, &drop);
        Tl = bb_tokens(o->l_act);
        const float *lout = bb_out(o->l_act);
        for (int i = 0; i < nL; i++)
            memcpy(cls_s + (size_t)(nG + i) * D, lout + (size_t)i * Tl * D, sizeof(float) * D);
    }

    /* 3. DINO loss (docs/model.md §12.2): student crop c against teacher crop 1 - c; locals
     * against both teacher crops; every term / n_terms, the global term x2 over 2B. */
    const double tau = o->cfg.student_temp;
    const double n_terms = 2.0 * nl + 2.0;
    head_forward(&o->sd, o->sd16, o->hd_s, cls_s, D, nD);
    {
        size_t off = 0;
        for (int j = 0; j < o->sd.n_levels; j++) {
            const int K = o->sd.lv[j].K;
            const double wrow = o->cfg.head.level_weights[j] / ((double)B * n_terms);
            const float *S = head_logits(o->hd_s, j), *Tt = tgt_d + off;
            float *dS = head_dlogits(o->hd_s, j);
#pragma omp parallel for schedule(static)
            for (int r = 0; r < nD; r++) {
                const float *t1, *t2 = NULL;
                if (r < nG) {
                    const int cr = r / B, b = r % B;
                    t1 = Tt + (size_t)((1 - cr) * B + b) * K;
                } else {
                    const int b = (r - nG) % B;
                    t1 = Tt + (size_t)b * K;
                    t2 = Tt + (size_t)(B + b) * K;
                }
                rowloss[r] = ce_row(dS + (size_t)r * K, S + (size_t)r * K, t1, t2, K, wrow, tau);
            }
            for (int r = 0; r < nD; r++) {
                if (r < nG) loss->dino_global += rowloss[r];
                else loss->dino_local += rowloss[r];
            }
            if (diag_on()) {
                if (j == 0) diag_cls(cls_t, nG, D);
                diag_level("dino", j, head_logits(o->hd_t, j), Tt, S, nG, nD, K, tau);
            }
            off += (size_t)nG * K;
        }
    }
    memset(dcls, 0, sizeof(float) * (size_t)nD * D);
    head_backward(&o->sd, o->sd16, &o->gd, o->hd_s, dcls, D);

    /* 4. iBOT loss (docs/model.md §12.3) on the masked patches, weight 1 / (m_i * 2B). */
    if (nm) {
        for (int m = 0; m < nm; m++) {
            const int img = midx[m] / Ng, n = midx[m] % Ng;
            memcpy(ps + (size_t)m * D, gout + ((size_t)img * Tg + 1 + n) * D, sizeof(float) * D);
        }
        head_forward(&o->si, o->si16, o->hi_s, ps, D, nm);
        size_t off = 0;
        for (int j = 0; j < o->si.n_levels; j++) {
            const int K = o->si.lv[j].K;
            const double lw = o->cfg.head.level_weights[j];
            const float *S = head_logits(o->hi_s, j), *Tt = tgt_i + off;
            float *dS = head_dlogits(o->hi_s, j);
#pragma omp parallel for schedule(static)
            for (int m = 0; m < nm; m++) {
                const double w = lw / ((double)mcount[midx[m] / Ng] * nG);
                rowloss[m] = ce_row(dS + (size_t)m * K, S + (size_t)m * K, Tt + (size_t)m * K,
                                    NULL, K, w, tau);
            }
            for (int m = 0; m < nm; m++) loss->ibot += rowloss[m];
            if (diag_on()) diag_level("ibot", j, head_logits(o->hi_t, j), Tt, S, nm, nm, K, tau);
            off += (size_t)nm * K;
        }
        memset(dps, 0, sizeof(float) * (size_t)nm * D);
        head_backward(&o->si, o->si16, &o->gi, o->hi_s, dps, D);
    }

    /* 5. KoLeo on the student CLS of global crop 0 and crop 1 separately. */
    if (o->cfg.koleo_weight != 0.0f) {
        const int nk = o->cfg.koleo_levels ? o->sd.n_levels : 1;
        for (int j = 0; j < nk; j++) {
            const int d = j + 1 == nk ? D : o->sd.lv[j].d;   /* the full width last */
            for (int cr = 0; cr < 2; cr++)
                loss->koleo += koleo_loss(dcls + (size_t)cr * B * D, D,
                                          cls_s + (size_t)cr * B * D, D, B, d,
                                          o->cfg.koleo_weight);
        }
    }
    loss->total = loss->dino_local + loss->dino_global + loss->ibot + loss->koleo;

    /* 6. Backward into the backbone. */
    float *gd_out = bb_dout(o->g_act);
    for (int i = 0; i < nG; i++) {
        float *dst = gd_out + (size_t)i * Tg * D;
        const float *src = dcls + (size_t)i * D;
        for (int k = 0; k < D; k++) dst[k] += src[k];
    }
    for (int m = 0; m < nm; m++) {
        const int img = midx[m] / Ng, n = midx[m] % Ng;
        float *dst = gd_out + ((size_t)img * Tg + 1 + n) * D;
        const float *src = dps + (size_t)m * D;
        for (int k = 0; k < D; k++) dst[k] += src[k];
    }
    /* the heads' gradients are final; the last backbone pass tells block by block */
    if (o->ready) {
        o->ready(o->ready_ctx, o->ready_heads);
        /* the globals' pass (when locals follow) only gives the reductions a chance
         * to progress */
        bb_set_backward_hook(o->g_act, bb_ready, o);
        if (nl) bb_set_backward_hook(o->l_act, bb_ready, o);
    }
    o->ready_last = !nl;
    bb_backward(c, &o->sw, o->sw16, &o->gw, o->g_act);
    if (nl) {
        float *ld_out = bb_dout(o->l_act);
        for (int i = 0; i < nL; i++) {
            float *dst = ld_out + (size_t)i * Tl * D;
            const float *src = dcls + (size_t)(nG + i) * D;
            for (int k = 0; k < D; k++) dst[k] += src[k];
        }
        o->ready_last = 1;
        bb_backward(c, &o->sw, o->sw16, &o->gw, o->l_act);
        bb_set_backward_hook(o->l_act, NULL, NULL);
    }
    bb_set_backward_hook(o->g_act, NULL, NULL);
    return 0;
}

void objective_set_grad_ready(struct objective *o, objective_ready_fn fn, void *ctx)
{
    o->ready = fn;
    o->ready_ctx = ctx;
}
