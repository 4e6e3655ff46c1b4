/* The CPU ViT forward (docs/model.md §5), the model object around it, and the
 * dispatch to the CUDA backend (cuda/cuda_engine.h) for models moved there. */
#include "vit.h"

#include <omp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cpu/ops.h"
#include "cpu/pos_embed.h"
#include "cuda/cuda_engine.h"
#include "errors.h"
#include "mm.h"
#include "rasa.h"

/* One interpolated positional table per (gh, gw), computed on first use. */
struct pos_cache_entry {
    int gh, gw;
    float *table;                /* [1 + gh*gw, D] */
    struct pos_cache_entry *next;
};

/* A block's linear weights, laid out for the CPU's kernels (common/mm.h). In
 * bf16 a SwiGLU fc1 is split in two: fc1 (the SiLU half) and fc1_gate, so
 * that SwiGLU runs in the products' epilogues. */
struct packed_block {
    struct mm_weights *qkv, *proj, *fc1, *fc1_gate, *fc2;
};

/* Memory: the CPU forward reads its linear weights (patch embedding, and qkv,
 * proj, fc1, fc2 of every block) from a copy laid out for the CPU's kernels:
 * in fp32 one extra copy of nearly all parameters
 * (about +86 MB for ViT-S/14, +342 MB for ViT-B/14, +1.2 GB for ViT-L/14),
 * in bf16 half of that (the patch embedding stays fp32: its input is pixels).
 * The copy is made once, in the precision the model runs in: by
 * vit_model_use_device, or by the first CPU forward; it is dropped while the
 * model runs on CUDA. The plain weights in ck stay, except the blocks' four
 * matrices in bf16 when their values are all bf16 numbers (a bf16
 * checkpoint): nothing reads them while the bf16 copy serves, so their pages
 * go back to the system (-342 MB for ViT-B/14) and are written again, exactly,
 * from the copy before a change of precision or device needs them. */
struct vit_model {
    struct checkpoint ck;
    struct mm_weights *patch_packed;
    struct packed_block *packed; /* [depth]; NULL while on CUDA */
    float *rasa_units;           /* [T+1, 2, D] or NULL */
    pthread_mutex_t pos_lock;
    pthread_mutex_t pack_lock;   /* the first forward's layout of the weights */
    struct pos_cache_entry *pos_cache;
    struct cuda_model *cuda;     /* non-NULL: forwards run on CUDA */
    enum vit_precision precision; /* of the products, on either device */
    bool matrices_released;      /* the blocks' plain matrices are zero pages (above) */
};

/* Activations for one (B, T) shape, carved from one allocation. In bf16 the
 * inputs of the products (xn, qkv, attn, act) are bf16; the residual stream,
 * LayerNorm statistics and softmax stay float32. */
struct vit_workspace {
    int B, T;                    /* capacity: images and tokens per image */
    int threads;                 /* OpenMP threads the attention scratch serves */
    int D, Hs, P, ffn, heads;    /* the model shape the buffers were sized for */
    enum mm_type type;           /* of the products' inputs */
    void *arena;
    float *patches;              /* [B*N, 3*P*P] im2col */
    float *x;                    /* [B*T, D] residual stream */
    float *xn;                   /* [B*T, D] normalised, final LayerNorm output */
    void *xn_in;                 /* [B*T, D] normalised, as the products read it */
    void *qkv;                   /* [B*T, 3D] */
    void *attn;                  /* [B*T, D] */
    float *branch;               /* [B*T, D] block branch output */
    float *hidden;               /* [B*T, 2Hs] (SwiGLU fc1) or [B*T, Hs] (MLP, fp32) */
    void *act;                   /* [B*T, Hs] fc2's input (SwiGLU, or MLP in bf16) */
    void *scores;                /* attention_scratch_bytes */
    struct cuda_ws *cuda;        /* device activations of CUDA models, or NULL */
};

static void model_unpack(struct vit_model *m)
{
    if (m->packed)
        for (int l = 0; l < m->ck.cfg.depth; l++) {
            mm_weights_free(m->packed[l].qkv);
            mm_weights_free(m->packed[l].proj);
            mm_weights_free(m->packed[l].fc1);
            mm_weights_free(m->packed[l].fc1_gate);
            mm_weights_free(m->packed[l].fc2);
        }
    free(m->packed);
    m->packed = NULL;
    mm_weights_free(m->patch_packed);
    m->patch_packed = NULL;
}

/* A block's matrices in ck as the bf16 layout splits them (a SwiGLU fc1 is
 * two: see packed_block), with their sizes (0: unused) and the packed weights
 * made from each. */
#define BLOCK_MATRICES 5
static void block_matrices(const struct model_config *c, const struct vit_block_weights *bw,
                           const struct packed_block *pb, float *plain[BLOCK_MATRICES],
                           size_t floats[BLOCK_MATRICES],
                           struct mm_weights *packed[BLOCK_MATRICES])
{
    const size_t D = (size_t)c->embed_dim, Hs = (size_t)c->ffn_hidden;
    const bool split = c->ffn == FFN_SWIGLU; /* only bf16 layouts are released */
    float *p[BLOCK_MATRICES] = {bw->qkv_w, bw->proj_w, bw->fc1_w, bw->fc1_w + Hs * D, bw->fc2_w};
    const size_t n[BLOCK_MATRICES] = {3 * D * D, D * D, Hs * D, split ? Hs * D : 0, D * Hs};
    for (int i = 0; i < BLOCK_MATRICES; i++) {
        plain[i] = p[i];
        floats[i] = n[i];
    }
    packed[0] = pb->qkv;
    packed[1] = pb->proj;
    packed[2] = pb->fc1;
    packed[3] = pb->fc1_gate;
    packed[4] = pb->fc2;
}

static bool bf16_numbers(const float *x, size_t n)
{
    uint32_t low = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, sizeof u); /* the bits, without breaking aliasing rules */
        low |= u & 0xffffu;
    }
    return low == 0;
}

/* Gives back the whole pages inside x[0, n): they read as zeros until written. */
static void pages_release(float *x, size_t n)
{
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    const uintptr_t lo = ((uintptr_t)x + page - 1) / page * page;
    const uintptr_t hi = ((uintptr_t)(x + n)) / page * page;
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

/* After a bf16 layout: releases the blocks' plain matrices when the layout
 * holds them exactly. */
static void model_release_matrices(struct vit_model *m)
{
    const struct model_config *c = &m->ck.cfg;
    float *plain[BLOCK_MATRICES];
    size_t n[BLOCK_MATRICES];
    struct mm_weights *packed[BLOCK_MATRICES];
    for (int l = 0; l < c->depth; l++) {
        block_matrices(c, &m->ck.w.blocks[l], &m->packed[l], plain, n, packed);
        for (int i = 0; i < BLOCK_MATRICES; i++)
            if (n[i] && !bf16_numbers(plain[i], n[i])) return;
    }
    for (int l = 0; l < c->depth; l++) {
        block_matrices(c, &m->ck.w.blocks[l], &m->packed[l], plain, n, packed);
        for (int i = 0; i < BLOCK_MATRICES; i++)
            if (n[i]) pages_release(plain[i], n[i]);
    }
    m->matrices_released = true;
}

/* Writes the released matrices back from the bf16 layout; 0, or -1 with the
 * matrices still released and the layout kept. */
static int model_restore_matrices(struct vit_model *m, char *err, size_t errlen)
{
    if (!m->matrices_released) return 0;
    const struct model_config *c = &m->ck.cfg;
    float *plain[BLOCK_MATRICES];
    size_t n[BLOCK_MATRICES];
    struct mm_weights *packed[BLOCK_MATRICES];
    char why[ERR_LEN];
    for (int l = 0; l < c->depth; l++) {
        block_matrices(c, &m->ck.w.blocks[l], &m->packed[l], plain, n, packed);
        for (int i = 0; i < BLOCK_MATRICES; i++)
            if (n[i] && mm_weights_unpack(packed[i], plain[i], why, sizeof why))
                return set_err(err, errlen, "writing back block %d's weights: %s", l, why);
    }
    m->matrices_released = false;
    return 0;
}

/* Lays out the linear weights for the CPU forward in precision p; all or
 * nothing. */
static int model_pack(struct vit_model *m, enum vit_precision p, char *err, size_t errlen)
{
    const struct model_config *c = &m->ck.cfg;
    const struct vit_weights *w = &m->ck.w;
    const int D = c->embed_dim, Hs = c->ffn_hidden, P = c->patch_size;
    const int f1 = c->ffn == FFN_SWIGLU ? 2 * Hs : Hs;
    const enum mm_type t = p == VIT_PRECISION_BF16 ? MM_BF16 : MM_F32;
    const bool split = c->ffn == FFN_SWIGLU && t == MM_BF16;
    char why[ERR_LEN] = "out of memory";
    m->packed = calloc((size_t)c->depth, sizeof(*m->packed));
    int fail = !m->packed ||
               mm_weights_create(&m->patch_packed, w->patch_w, 3 * P * P, D, MM_F32, why,
                                 sizeof why);
    for (int l = 0; l < c->depth && !fail; l++) {
        const struct vit_block_weights *bw = &w->blocks[l];
        struct packed_block *pb = &m->packed[l];
        fail = mm_weights_create(&pb->qkv, bw->qkv_w, D, 3 * D, t, why, sizeof why) ||
               mm_weights_create(&pb->proj, bw->proj_w, D, D, t, why, sizeof why) ||
               mm_weights_create(&pb->fc1, bw->fc1_w, D, split ? Hs : f1, t, why, sizeof why) ||
               (split && mm_weights_create(&pb->fc1_gate, bw->fc1_w + (size_t)Hs * D, D, Hs, t,
                                           why, sizeof why)) ||
               mm_weights_create(&pb->fc2, bw->fc2_w, Hs, D, t, why, sizeof why);
    }
    if (fail) {
        model_unpack(m);
        return set_err(err, errlen, "the CPU forward's %s weights: %s",
                       p == VIT_PRECISION_BF16 ? "bf16" : "fp32", why);
    }
    m->precision = p;
    if (p == VIT_PRECISION_BF16) model_release_matrices(m);
    return 0;
}

int vit_model_from_checkpoint(struct checkpoint *ck, struct vit_model **out, char *err,
                              size_t errlen)
{
    struct vit_model *m = calloc(1, sizeof(*m));
    if (!m) return set_err(err, errlen, "out of memory");
    m->ck = *ck;
    memset(ck, 0, sizeof(*ck));
    pthread_mutex_init(&m->pos_lock, NULL);
    pthread_mutex_init(&m->pack_lock, NULL);
    const struct model_config *c = &m->ck.cfg;
    if (c->rasa_layers > 0) {
        const int rounds = c->rasa_layers + 1;
        m->rasa_units = malloc(sizeof(float) * rounds * 2 * c->embed_dim);
        if (!m->rasa_units) {
            vit_model_free(m);
            return set_err(err, errlen, "out of memory");
        }
        if (rasa_prepare(m->ck.w.rasa_w, rounds, c->embed_dim, m->rasa_units, err, errlen)) {
            vit_model_free(m);
            return -1;
        }
    }
    *out = m;
    return 0;
}

int vit_model_load(const char *path, struct vit_model **out, char *err, size_t errlen)
{
    struct checkpoint ck;
    if (checkpoint_load(path, &ck, err, errlen)) return -1;
    if (vit_model_from_checkpoint(&ck, out, err, errlen)) {
        checkpoint_free(&ck);
        return -1;
    }
    return 0;
}

void vit_model_free(struct vit_model *m)
{
    if (!m) return;
    for (struct pos_cache_entry *e = m->pos_cache, *n; e; e = n) {
        n = e->next;
        free(e->table);
        free(e);
    }
    pthread_mutex_destroy(&m->pos_lock);
    pthread_mutex_destroy(&m->pack_lock);
    cuda_model_free(m->cuda);
    model_unpack(m);
    free(m->rasa_units);
    checkpoint_free(&m->ck);
    free(m);
}

const struct model_config *vit_model_config(const struct vit_model *m)
{
    return &m->ck.cfg;
}

const char *vit_model_fingerprint(const struct vit_model *m)
{
    return m->ck.fingerprint;
}

int vit_check_resolution(const struct vit_model *m, int H, int W, char *err, size_t errlen)
{
    const int P = m->ck.cfg.patch_size;
    if (H <= 0 || W <= 0 || H % P || W % P)
        return set_err(err, errlen, "input %dx%d: height and width must be positive multiples "
                       "of the patch size %d", H, W, P);
    if (H > VIT_MAX_SIDE || W > VIT_MAX_SIDE)
        return set_err(err, errlen, "input %dx%d: sides are limited to %d pixels", H, W,
                       VIT_MAX_SIDE);
    if ((H / P) * (W / P) + 1 > VIT_MAX_TOKENS)
        return set_err(err, errlen, "input %dx%d: %d patches exceed the limit of %d tokens",
                       H, W, (H / P) * (W / P), VIT_MAX_TOKENS - 1);
    return 0;
}

static const float *pos_table(struct vit_model *m, int gh, int gw, char *err, size_t errlen)
{
    const struct model_config *c = &m->ck.cfg;
    pthread_mutex_lock(&m->pos_lock);
    struct pos_cache_entry *e = m->pos_cache;
    while (e && (e->gh != gh || e->gw != gw)) e = e->next;
    if (!e) {
        e = calloc(1, sizeof(*e));
        float *t = e ? malloc(sizeof(float) * (1 + (size_t)gh * gw) * c->embed_dim) : NULL;
        if (!t) {
            free(e);
            pthread_mutex_unlock(&m->pos_lock);
            set_err(err, errlen, "out of memory for the positional table");
            return NULL;
        }
        pos_embed_interpolate(t, m->ck.w.pos_embed, c->pos_grid, c->embed_dim, gh, gw);
        e->gh = gh;
        e->gw = gw;
        e->table = t;
        e->next = m->pos_cache;
        m->pos_cache = e;
    }
    pthread_mutex_unlock(&m->pos_lock);
    return e->table;
}

void vit_workspace_free(struct vit_workspace *ws)
{
    if (!ws) return;
    cuda_ws_free(ws->cuda);
    free(ws->arena);
    free(ws);
}

static int workspace_ensure(struct vit_workspace **wsp, const struct model_config *c, int B,
                            int T, int N, enum mm_type type, char *err, size_t errlen)
{
    struct vit_workspace *ws = *wsp;
    const int threads = omp_get_max_threads();
    /* A workspace may move between models: reuse it only for the same shape. */
    if (ws && ws->B >= B && ws->T >= T && ws->threads >= threads && ws->D == c->embed_dim &&
        ws->Hs == c->ffn_hidden && ws->P == c->patch_size && ws->ffn == (int)c->ffn &&
        ws->heads == c->num_heads && ws->type == type)
        return 0;
    vit_workspace_free(ws);
    *wsp = NULL;

    const size_t D = c->embed_dim, Hs = c->ffn_hidden, rows = (size_t)B * T;
    const size_t f = sizeof(float), e = type == MM_BF16 ? sizeof(mm_bf16) : sizeof(float);
    const bool swiglu = c->ffn == FFN_SWIGLU, bf16 = type == MM_BF16;
    /* fp32 reads xn as the products' input; an fp32 GELU MLP applies GELU
     * in place in hidden. */
    const size_t sizes[] = {
        (size_t)B * N * 3 * c->patch_size * c->patch_size * f, /* patches */
        rows * D * f, rows * D * f,                            /* x xn */
        bf16 ? rows * D * e : 0,                               /* xn_in */
        rows * 3 * D * e, rows * D * e, rows * D * f,          /* qkv attn branch */
        swiglu || !bf16 ? rows * (swiglu ? 2 * Hs : Hs) * f : 0, /* hidden */
        swiglu || bf16 ? rows * Hs * e : 0,                   /* act */
        attention_scratch_bytes(B, T, c->embed_dim, c->num_heads, type), /* scores */
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
        total += (sizes[i] + 63) / 64 * 64;

    ws = calloc(1, sizeof(*ws));
    if (ws) ws->arena = aligned_alloc(64, total);
    if (!ws || !ws->arena) {
        free(ws);
        return set_err(err, errlen, "out of memory: batch %d at %d tokens needs %.1f GiB of "
                       "activations", B, T, total / (double)(1 << 30));
    }
    void **slots[] = {(void **)&ws->patches, (void **)&ws->x, (void **)&ws->xn, &ws->xn_in,
                      &ws->qkv, &ws->attn, (void **)&ws->branch, (void **)&ws->hidden,
                      &ws->act, &ws->scores};
    char *p = ws->arena;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        *slots[i] = sizes[i] ? p : NULL;
        p += (sizes[i] + 63) / 64 * 64;
    }
    if (!bf16) ws->xn_in = ws->xn;
    ws->B = B;
    ws->T = T;
    ws->threads = threads;
    ws->D = c->embed_dim;
    ws->Hs = c->ffn_hidden;
    ws->P = c->patch_size;
    ws->ffn = (int)c->ffn;
    ws->heads = c->num_heads;
    ws->type = type;
    *wsp = ws;
    return 0;
}

/* Patch embedding, CLS, registers and positional table into ws->x. */
static int embed_tokens(const struct model_config *c, const struct vit_weights *w,
                        const struct mm_weights *patch_w, struct vit_workspace *ws,
                        const float *x, const float *pos, int B, int H, int W, int T, int N,
                        char *err, size_t errlen)
{
    const int D = c->embed_dim, P = c->patch_size, R = c->register_tokens;
    patchify(ws->patches, x, B, 3, H, W, P);
    /* Patch projections land in branch[B*N, D], then move into their token rows. */
    if (mm_linear(patch_w, ws->branch, MM_F32, ws->patches, w->patch_b, (size_t)B * N,
                  MM_POST_NONE, err, errlen))
        return -1;
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        float *xb = ws->x + (size_t)b * T * D;
        for (int i = 0; i < D; i++) xb[i] = w->cls_token[i] + pos[i];
        /* Registers come after CLS and take no positional embedding. */
        if (R) memcpy(xb + D, w->register_tokens, sizeof(float) * R * D);
        for (int n = 0; n < N; n++) {
            float *dst = xb + (size_t)(1 + R + n) * D;
            const float *src = ws->branch + ((size_t)b * N + n) * D;
            const float *pe = pos + (size_t)(1 + n) * D;
            for (int i = 0; i < D; i++) dst[i] = src[i] + pe[i];
        }
    }
    return 0;
}

static void layernorm_in(struct vit_workspace *ws, const float *w, const float *b, size_t rows,
                         int D, float eps)
{
    if (ws->type == MM_BF16) layernorm_forward_bf16(ws->xn_in, ws->x, w, b, rows, D, eps);
    else layernorm_forward(ws->xn, ws->x, w, b, rows, D, eps);
}

/* The LayerNorm after a block: the next block's norm1 (into the products'
 * input), or the final norm (into the float xn). */
struct next_norm {
    const float *w, *b;
    bool final;
};

/* One block, from xn_in = norm1(x) to the next norm of the updated x. */
static int block_forward(const struct model_config *c, const struct vit_block_weights *bw,
                         const struct packed_block *pb, struct vit_workspace *ws, int B, int T,
                         const struct next_norm *next, char *err, size_t errlen)
{
    const int D = c->embed_dim, Hs = c->ffn_hidden;
    const size_t rows = (size_t)B * T;
    const enum mm_type t = ws->type;

    if (mm_linear(pb->qkv, ws->qkv, t, ws->xn_in, bw->qkv_b, rows, MM_POST_NONE, err, errlen) ||
        attention_forward(ws->attn, ws->qkv, ws->scores, B, T, D, c->num_heads, t, err, errlen) ||
        mm_linear(pb->proj, ws->branch, MM_F32, ws->attn, bw->proj_b, rows, MM_POST_NONE, err,
                  errlen))
        return -1;
    residual_layernorm(ws->x, ws->branch, bw->ls1, ws->xn_in, t, bw->norm2_w, bw->norm2_b, rows, D,
                       c->norm_eps);
    const void *fc2_in;
    if (pb->fc1_gate) {
        /* act = SiLU(x Wa^T + ba) * (x Wg^T + bg), both halves in the epilogues; the
         * SiLU half goes through hidden as bf16. */
        mm_bf16 *silu = (mm_bf16 *)ws->hidden;
        if (mm_linear(pb->fc1, silu, t, ws->xn_in, bw->fc1_b, rows, MM_POST_SILU, err, errlen) ||
            mm_linear_mul(pb->fc1_gate, ws->act, t, ws->xn_in, bw->fc1_b + Hs, rows, silu, err,
                          errlen))
            return -1;
        fc2_in = ws->act;
    } else if (c->ffn == FFN_SWIGLU) {
        if (mm_linear(pb->fc1, ws->hidden, MM_F32, ws->xn_in, bw->fc1_b, rows, MM_POST_NONE, err,
                      errlen))
            return -1;
        swiglu_forward(ws->act, ws->hidden, rows, Hs); /* fp32: bf16 splits fc1 above */
        fc2_in = ws->act;
    } else {
        /* GELU as the product's post-op: bf16 lands in act, fp32 in hidden. */
        void *h = t == MM_BF16 ? ws->act : (void *)ws->hidden;
        if (mm_linear(pb->fc1, h, t, ws->xn_in, bw->fc1_b, rows, MM_POST_GELU, err, errlen))
            return -1;
        fc2_in = h;
    }
    if (mm_linear(pb->fc2, ws->branch, MM_F32, fc2_in, bw->fc2_b, rows, MM_POST_NONE, err, errlen))
        return -1;
    residual_layernorm(ws->x, ws->branch, bw->ls2, next->final ? (void *)ws->xn : ws->xn_in,
                       next->final ? MM_F32 : t, next->w, next->b, rows, D, c->norm_eps);
    return 0;
}

/* The requested intermediate layers exist in the model. */
static int check_layers(const struct model_config *c, const struct vit_outputs *out, char *err,
                        size_t errlen)
{
    if (out->n_layers < 0 || out->n_layers > VIT_MAX_LAYERS || (out->n_layers && !out->layers))
        return set_err(err, errlen, "%d intermediate layers asked for: 0 to %d are allowed",
                       out->n_layers, VIT_MAX_LAYERS);
    for (int k = 0; k < out->n_layers; k++)
        if (out->layers[k] < 0 || out->layers[k] >= c->depth)
            return set_err(err, errlen, "layer %d is out of range: model '%s' has %d blocks "
                           "(0 to %d)", out->layers[k], c->name, c->depth, c->depth - 1);
    return 0;
}

/* rows tokens of the residual stream into dst, through the final LayerNorm or as they are. */
static void layer_rows(const struct model_config *c, const struct vit_weights *w, bool norm,
                       float *dst, const float *src, size_t rows)
{
    if (norm) layernorm_forward(dst, src, w->norm_w, w->norm_b, rows, c->embed_dim, c->norm_eps);
    else memcpy(dst, src, sizeof(float) * rows * c->embed_dim);
}

/* Copies the residual stream after block l into each output slot that lists
 * it (a block listed twice fills both). */
static void capture_layer(const struct model_config *c, const struct vit_weights *w,
                          const struct vit_workspace *ws, const struct vit_outputs *out, int l,
                          int B, int T, int N)
{
    const size_t D = c->embed_dim, R = c->register_tokens;
    for (int k = 0; k < out->n_layers; k++) {
        if (out->layers[k] != l) continue;
        for (int b = 0; b < B; b++) {
            const float *xb = ws->x + (size_t)b * T * D;
            const size_t slot = (size_t)k * B + b;
            if (out->layer_cls) layer_rows(c, w, out->layer_norm, out->layer_cls + slot * D, xb, 1);
            if (out->layer_patch)
                layer_rows(c, w, out->layer_norm, out->layer_patch + slot * N * D,
                           xb + (1 + R) * D, (size_t)N);
        }
    }
}

/* The CUDA path: patches land in patch (or patch_rasa); RASA runs here on the host. */
static int forward_cuda(struct vit_model *m, struct vit_workspace **wsp, const float *pos,
                        const float *x, int B, int H, int W, const struct vit_outputs *out,
                        char *err, size_t errlen)
{
    const struct model_config *c = &m->ck.cfg;
    if (!*wsp && !(*wsp = calloc(1, sizeof(**wsp))))
        return set_err(err, errlen, "out of memory");
    const size_t tok = (size_t)B * (H / c->patch_size) * (W / c->patch_size) * c->embed_dim;
    float *patch = out->patch ? out->patch : out->patch_rasa;
    /* The CUDA forward keeps its residual stream on the device and returns
     * only the final tokens. */
    if (out->n_layers)
        return set_err(err, errlen, "intermediate layers are not implemented on CUDA: run the "
                       "model on the CPU for them");
    if (cuda_forward(m->cuda, &(*wsp)->cuda, pos, x, B, H, W, out->cls, patch, err, errlen))
        return -1;
    if (out->patch_rasa) {
        if (out->patch_rasa != patch) memcpy(out->patch_rasa, patch, sizeof(float) * tok);
        rasa_apply(m->rasa_units, c->rasa_layers + 1, c->embed_dim, out->patch_rasa,
                   tok / c->embed_dim);
    }
    return 0;
}

int vit_forward(struct vit_model *m, struct vit_workspace **wsp, const float *x, int B, int H,
                int W, const struct vit_outputs *out, char *err, size_t errlen)
{
    const struct model_config *c = &m->ck.cfg;
    const struct vit_weights *w = &m->ck.w;
    if (B <= 0) return set_err(err, errlen, "batch size must be positive, got %d", B);
    if (vit_check_resolution(m, H, W, err, errlen)) return -1;
    if (out->patch_rasa && !m->rasa_units)
        return set_err(err, errlen, "model '%s' has no RASA tensors", c->name);
    if (check_layers(c, out, err, errlen)) return -1;

    const int P = c->patch_size, D = c->embed_dim, R = c->register_tokens;
    const int gh = H / P, gw = W / P, N = gh * gw, T = 1 + R + N;
    const float *pos = pos_table(m, gh, gw, err, errlen);
    if (!pos) return -1;
    if (m->cuda) return forward_cuda(m, wsp, pos, x, B, H, W, out, err, errlen);
    pthread_mutex_lock(&m->pack_lock);
    const int packed = m->packed || !model_pack(m, m->precision, err, errlen);
    pthread_mutex_unlock(&m->pack_lock);
    if (!packed) return -1;
    const enum mm_type type = m->precision == VIT_PRECISION_BF16 ? MM_BF16 : MM_F32;
    if (workspace_ensure(wsp, c, B, T, N, type, err, errlen)) return -1;
    struct vit_workspace *ws = *wsp;

    if (embed_tokens(c, w, m->patch_packed, ws, x, pos, B, H, W, T, N, err, errlen)) return -1;
    /* Each LayerNorm runs with the residual add before it, the first alone;
     * the last block's is the final one. CLS is row 0 of the final output,
     * patches follow the registers. */
    const size_t rows = (size_t)B * T;
    if (c->depth == 0) layernorm_forward(ws->xn, ws->x, w->norm_w, w->norm_b, rows, D, c->norm_eps);
    else layernorm_in(ws, w->blocks[0].norm1_w, w->blocks[0].norm1_b, rows, D, c->norm_eps);
    for (int l = 0; l < c->depth; l++) {
        const bool last = l + 1 == c->depth;
        const struct next_norm next = {last ? w->norm_w : w->blocks[l + 1].norm1_w,
                                       last ? w->norm_b : w->blocks[l + 1].norm1_b, last};
        if (block_forward(c, &w->blocks[l], &m->packed[l], ws, B, T, &next, err, errlen))
            return -1;
        capture_layer(c, w, ws, out, l, B, T, N);
    }
    for (int b = 0; b < B; b++) {
        const float *xb = ws->xn + (size_t)b * T * D;
        const size_t patch_bytes = sizeof(float) * N * D;
        if (out->cls) memcpy(out->cls + (size_t)b * D, xb, sizeof(float) * D);
        if (out->patch) memcpy(out->patch + (size_t)b * N * D, xb + (size_t)(1 + R) * D,
                               patch_bytes);
        if (out->patch_rasa) memcpy(out->patch_rasa + (size_t)b * N * D,
                                    xb + (size_t)(1 + R) * D, patch_bytes);
    }
    if (out->patch_rasa)
        rasa_apply(m->rasa_units, c->rasa_layers + 1, D, out->patch_rasa, (size_t)B * N);
    return 0;
}

double vit_flops_per_image(const struct model_config *c, int H, int W)
{
    const double P = c->patch_size, D = c->embed_dim, Hs = c->ffn_hidden;
    const double N = (double)(H / c->patch_size) * (W / c->patch_size);
    const double T = 1 + c->register_tokens + N;
    const double ffn = c->ffn == FFN_SWIGLU ? 3 * D * Hs : 2 * D * Hs;
    const double per_block = 2 * T * (4 * D * D + ffn) + 4 * T * T * D;
    return 2 * N * 3 * P * P * D + c->depth * per_block;
}

/* ------------------------------------------------------------ devices -- */

int vit_cuda_available(char *err, size_t errlen)
{
    return cuda_device_available(err, errlen);
}

const char *vit_device_name(enum vit_device d)
{
    return d == VIT_DEVICE_CUDA ? "cuda" : "cpu";
}

int vit_device_select(const char *name, enum vit_device *out, char *err, size_t errlen)
{
    char why[ERR_LEN];
    if (!name || !strcmp(name, "cpu")) {
        *out = VIT_DEVICE_CPU;
        return 0;
    }
    if (!strcmp(name, "auto")) {
        *out = vit_cuda_available(why, sizeof why) ? VIT_DEVICE_CUDA : VIT_DEVICE_CPU;
        return 0;
    }
    if (!strcmp(name, "cuda")) {
        if (!vit_cuda_available(why, sizeof why))
            return set_err(err, errlen, "--device cuda: %s", why);
        *out = VIT_DEVICE_CUDA;
        return 0;
    }
    return set_err(err, errlen, "unknown device '%s' (expected cpu, cuda or auto)", name);
}

int vit_model_use_device(struct vit_model *m, enum vit_device d, enum vit_precision p,
                         char *err, size_t errlen)
{
    if (d == VIT_DEVICE_CPU) {
        if (!m->packed || m->precision != p) {
            if (model_restore_matrices(m, err, errlen)) return -1;
            /* The old copy goes first, so that peak memory holds only one; on
             * failure the precision stays and a CPU forward lays it out again. */
            model_unpack(m);
            if (model_pack(m, p, err, errlen)) return -1;
        }
        cuda_model_free(m->cuda);
        m->cuda = NULL;
        return 0;
    }
    struct cuda_model *cm;
    if (model_restore_matrices(m, err, errlen)) return -1;
    if (cuda_model_create(&m->ck.cfg, &m->ck.w, p == VIT_PRECISION_BF16, &cm, err, errlen))
        return -1;
    cuda_model_free(m->cuda);
    m->cuda = cm;
    m->precision = p;
    model_unpack(m); /* the CPU forward is not used while on CUDA */
    return 0;
}

enum vit_device vit_model_device(const struct vit_model *m)
{
    return m->cuda ? VIT_DEVICE_CUDA : VIT_DEVICE_CPU;
}

enum vit_precision vit_model_precision(const struct vit_model *m)
{
    return m->precision;
}

enum vit_precision vit_precision_auto(enum vit_device d)
{
    return d == VIT_DEVICE_CUDA || mm_bf16_native() ? VIT_PRECISION_BF16 : VIT_PRECISION_FP32;
}

int vit_precision_parse(const char *name, enum vit_device d, enum vit_precision *out, char *err,
                        size_t errlen)
{
    if (!name || !strcmp(name, "auto")) *out = vit_precision_auto(d);
    else if (!strcmp(name, "fp32")) *out = VIT_PRECISION_FP32;
    else if (!strcmp(name, "bf16")) *out = VIT_PRECISION_BF16;
    else return set_err(err, errlen, "unknown precision '%s' (expected fp32, bf16 or auto)", name);
    if (*out == VIT_PRECISION_BF16 && d == VIT_DEVICE_CPU && !mm_bf16_supported())
        return set_err(err, errlen, "precision bf16 on the CPU needs AVX-512 (this CPU offers %s)",
                       mm_isa_name(mm_isa()));
    return 0;
}

const char *vit_precision_name(enum vit_precision p)
{
    return p == VIT_PRECISION_BF16 ? "bf16" : "fp32";
}

int vit_model_set_attention(struct vit_model *m, enum vit_attention a, char *err, size_t errlen)
{
    if (!m->cuda) return set_err(err, errlen, "attention paths apply to CUDA models only");
    return cuda_model_set_attention(m->cuda, (enum cuda_attention)a, err, errlen);
}
