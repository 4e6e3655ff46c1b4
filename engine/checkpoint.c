/* Checkpoint loading, saving and random initialisation
 * (format: schema/checkpoint-format.md). */
#include "checkpoint.h"

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "rng.h"
#include "sha256.h"

/* ------------------------------------------------------------ arena layout -- */

/* Every tensor starts on a 64-byte boundary inside the (64-byte aligned) arena. */
static size_t pad16(size_t n) { return (n + 15) & ~(size_t)15; }

static size_t ffn1_rows(const struct model_config *cfg)
{
    return cfg->ffn == FFN_SWIGLU ? 2 * (size_t)cfg->ffn_hidden : (size_t)cfg->ffn_hidden;
}

struct cursor { float *base; size_t off; };

static float *take(struct cursor *c, size_t n)
{
    float *p = c->base ? c->base + c->off : NULL;
    c->off += pad16(n);
    return p;
}

/* Lays out the parameters; returns the number of parameter floats. With a
 * non-NULL arena and w, assigns every pointer (the block table must already be
 * in w->blocks). */
static size_t layout(const struct model_config *cfg, float *arena, struct vit_weights *w)
{
    struct vit_weights tmp;
    if (!w) {
        memset(&tmp, 0, sizeof tmp);
        w = &tmp;
    }
    const size_t D = (size_t)cfg->embed_dim, M = (size_t)cfg->pos_grid, P = (size_t)cfg->patch_size;
    const size_t Hs = (size_t)cfg->ffn_hidden, F1 = ffn1_rows(cfg);
    struct cursor c = { arena, 0 };
    w->cls_token = take(&c, D);
    w->pos_embed = take(&c, (1 + M * M) * D);
    w->mask_token = take(&c, D);
    w->register_tokens = cfg->register_tokens > 0 ? take(&c, (size_t)cfg->register_tokens * D) : NULL;
    w->patch_w = take(&c, D * 3 * P * P);
    w->patch_b = take(&c, D);
    for (int i = 0; i < cfg->depth; i++) {
        struct vit_block_weights b;
        b.norm1_w = take(&c, D);
        b.norm1_b = take(&c, D);
        b.qkv_w = take(&c, 3 * D * D);
        b.qkv_b = take(&c, 3 * D);
        b.proj_w = take(&c, D * D);
        b.proj_b = take(&c, D);
        b.ls1 = cfg->layerscale ? take(&c, D) : NULL;
        b.norm2_w = take(&c, D);
        b.norm2_b = take(&c, D);
        b.fc1_w = take(&c, F1 * D);
        b.fc1_b = take(&c, F1);
        b.fc2_w = take(&c, D * Hs);
        b.fc2_b = take(&c, D);
        b.ls2 = cfg->layerscale ? take(&c, D) : NULL;
        if (arena && w->blocks)
            w->blocks[i] = b;
    }
    w->norm_w = take(&c, D);
    w->norm_b = take(&c, D);
    w->rasa_w = cfg->rasa_layers > 0 ? take(&c, ((size_t)cfg->rasa_layers + 1) * 2 * D) : NULL;
    return c.off;
}

static size_t table_floats(const struct model_config *cfg)
{
    size_t bytes = (size_t)cfg->depth * sizeof(struct vit_block_weights);
    return pad16((bytes + sizeof(float) - 1) / sizeof(float));
}

size_t vit_weights_param_floats(const struct model_config *cfg) { return layout(cfg, NULL, NULL); }

size_t vit_weights_floats(const struct model_config *cfg)
{
    return vit_weights_param_floats(cfg) + table_floats(cfg);
}

void vit_weights_carve(const struct model_config *cfg, float *arena, struct vit_weights *w)
{
    memset(w, 0, sizeof *w);
    size_t np = vit_weights_param_floats(cfg);
    w->blocks = (struct vit_block_weights *)(void *)(arena + np);
    layout(cfg, arena, w);
    w->arena = arena;
    w->arena_floats = np;
}

/* The size limits that keep the arena size arithmetic in range (the full
 * validation is model_config_validate). */
static int check_sizes(const struct model_config *cfg, char *err, size_t errlen)
{
    if (cfg->embed_dim < 1 || cfg->embed_dim > 8192 || cfg->depth < 1 || cfg->depth > 256 ||
        cfg->ffn_hidden < 1 || cfg->ffn_hidden > 65536 || cfg->patch_size < 1 || cfg->patch_size > 64 ||
        cfg->pos_grid < 1 || cfg->pos_grid > 256 || cfg->register_tokens < 0 ||
        cfg->register_tokens > MAX_REGISTERS || cfg->rasa_layers < 0 || cfg->rasa_layers > MAX_RASA_LAYERS ||
        (cfg->ffn != FFN_SWIGLU && cfg->ffn != FFN_MLP))
        return set_err(err, errlen, "model config: sizes out of range (embed_dim %d, depth %d, ffn_hidden %d, "
                       "patch %d, pos_grid %d)", cfg->embed_dim, cfg->depth, cfg->ffn_hidden,
                       cfg->patch_size, cfg->pos_grid);
    return 0;
}

int vit_weights_alloc(const struct model_config *cfg, struct vit_weights *w, char *err, size_t errlen)
{
    memset(w, 0, sizeof *w);
    if (check_sizes(cfg, err, errlen))
        return -1;
    size_t n = vit_weights_floats(cfg);
    void *p = NULL;
    if (n > SIZE_MAX / sizeof(float) || posix_memalign(&p, 64, n * sizeof(float)) != 0 || !p)
        return set_err(err, errlen, "cannot allocate %.1f MB for the model weights",
                       (double)n * sizeof(float) / 1e6);
    memset(p, 0, n * sizeof(float));
    vit_weights_carve(cfg, p, w);
    return 0;
}

void vit_weights_free(struct vit_weights *w)
{
    if (!w)
        return;
    free(w->arena);
    memset(w, 0, sizeof *w);
}

/* ------------------------------------------------------- tensor inventory -- */

struct tspec {
    char name[64];
    int ndim;
    int64_t shape[4];
    float *dst;
    bool optional;
};

struct inventory { struct tspec *t; size_t n, cap; };

static void inv_add(struct inventory *inv, float *dst, bool optional, int ndim,
                    int64_t a, int64_t b, int64_t c, int64_t d, const char *fmt, ...)
    __attribute__((format(printf, 9, 10)));

static void inv_add(struct inventory *inv, float *dst, bool optional, int ndim,
                    int64_t a, int64_t b, int64_t c, int64_t d, const char *fmt, ...)
{
    if (inv->n >= inv->cap)
        return; /* capacity is computed exactly; never reached */
    struct tspec *t = &inv->t[inv->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->ndim = ndim;
    t->shape[0] = a;
    t->shape[1] = b;
    t->shape[2] = c;
    t->shape[3] = d;
    t->dst = dst;
    t->optional = optional;
}

static size_t inventory_cap(const struct model_config *cfg)
{
    return 8 + 14 * (size_t)cfg->depth + 2 + (size_t)cfg->rasa_layers + 1;
}

/* Every tensor that cfg implies, with its shape and its place in w. */
static int build_inventory(const struct model_config *cfg, const struct vit_weights *w,
                           struct inventory *inv)
{
    inv->cap = inventory_cap(cfg);
    inv->n = 0;
    inv->t = calloc(inv->cap, sizeof *inv->t);
    if (!inv->t)
        return -1;
    const int64_t D = cfg->embed_dim, M = cfg->pos_grid, P = cfg->patch_size;
    const int64_t Hs = cfg->ffn_hidden, F1 = (int64_t)ffn1_rows(cfg);
    inv_add(inv, w->cls_token, false, 3, 1, 1, D, 0, "cls_token");
    inv_add(inv, w->pos_embed, false, 3, 1, 1 + M * M, D, 0, "pos_embed");
    inv_add(inv, w->mask_token, true, 2, 1, D, 0, 0, "mask_token");
    if (cfg->register_tokens > 0)
        inv_add(inv, w->register_tokens, false, 3, 1, cfg->register_tokens, D, 0, "register_tokens");
    inv_add(inv, w->patch_w, false, 4, D, 3, P, P, "patch_embed.proj.weight");
    inv_add(inv, w->patch_b, false, 1, D, 0, 0, 0, "patch_embed.proj.bias");
    const char *f1 = cfg->ffn == FFN_SWIGLU ? "w12" : "fc1";
    const char *f2 = cfg->ffn == FFN_SWIGLU ? "w3" : "fc2";
    for (int i = 0; i < cfg->depth; i++) {
        const struct vit_block_weights *b = &w->blocks[i];
        inv_add(inv, b->norm1_w, false, 1, D, 0, 0, 0, "blocks.%d.norm1.weight", i);
        inv_add(inv, b->norm1_b, false, 1, D, 0, 0, 0, "blocks.%d.norm1.bias", i);
        inv_add(inv, b->qkv_w, false, 2, 3 * D, D, 0, 0, "blocks.%d.attn.qkv.weight", i);
        inv_add(inv, b->qkv_b, false, 1, 3 * D, 0, 0, 0, "blocks.%d.attn.qkv.bias", i);
        inv_add(inv, b->proj_w, false, 2, D, D, 0, 0, "blocks.%d.attn.proj.weight", i);
        inv_add(inv, b->proj_b, false, 1, D, 0, 0, 0, "blocks.%d.attn.proj.bias", i);
        if (cfg->layerscale)
            inv_add(inv, b->ls1, false, 1, D, 0, 0, 0, "blocks.%d.ls1.gamma", i);
        inv_add(inv, b->norm2_w, false, 1, D, 0, 0, 0, "blocks.%d.norm2.weight", i);
        inv_add(inv, b->norm2_b, false, 1, D, 0, 0, 0, "blocks.%d.norm2.bias", i);
        inv_add(inv, b->fc1_w, false, 2, F1, D, 0, 0, "blocks.%d.mlp.%s.weight", i, f1);
        inv_add(inv, b->fc1_b, false, 1, F1, 0, 0, 0, "blocks.%d.mlp.%s.bias", i, f1);
        inv_add(inv, b->fc2_w, false, 2, D, Hs, 0, 0, "blocks.%d.mlp.%s.weight", i, f2);
        inv_add(inv, b->fc2_b, false, 1, D, 0, 0, 0, "blocks.%d.mlp.%s.bias", i, f2);
        if (cfg->layerscale)
            inv_add(inv, b->ls2, false, 1, D, 0, 0, 0, "blocks.%d.ls2.gamma", i);
    }
    inv_add(inv, w->norm_w, false, 1, D, 0, 0, 0, "norm.weight");
    inv_add(inv, w->norm_b, false, 1, D, 0, 0, 0, "norm.bias");
    for (int t = 0; t < cfg->rasa_layers; t++)
        inv_add(inv, w->rasa_w + (size_t)t * 2 * (size_t)D, false, 2, 2, D, 0, 0,
                "rasa.pre_pos_layers.%d.weight", t);
    if (cfg->rasa_layers > 0)
        inv_add(inv, w->rasa_w + (size_t)cfg->rasa_layers * 2 * (size_t)D, false, 2, 2, D, 0, 0,
                "rasa.pos_pred.weight");
    return 0;
}

static void shape_str(int ndim, const int64_t *shape, char *out, size_t cap)
{
    size_t k = 0;
    out[0] = '\0';
    k += (size_t)snprintf(out + k, cap - k, "[");
    for (int i = 0; i < ndim && k < cap; i++)
        k += (size_t)snprintf(out + k, cap - k, "%s%lld", i ? "," : "", (long long)shape[i]);
    if (k < cap)
        snprintf(out + k, cap - k, "]");
}

static void cfg_summary(const struct model_config *c, char *out, size_t cap)
{
    snprintf(out, cap, "metadata says embed_dim=%d depth=%d ffn=%s ffn_hidden=%d patch_size=%d "
             "pos_grid=%d register_tokens=%d layerscale=%s rasa_layers=%d",
             c->embed_dim, c->depth, c->ffn == FFN_SWIGLU ? "swiglu" : "mlp", c->ffn_hidden,
             c->patch_size, c->pos_grid, c->register_tokens, c->layerscale ? "true" : "false",
             c->rasa_layers);
}

/* ------------------------------------------------------------------ load -- */

int checkpoint_load(const char *path, struct checkpoint *ck, char *err, size_t errlen)
{
    memset(ck, 0, sizeof *ck);
    struct st_file st;
    if (st_open(path, &st, err, errlen))
        return -1;
    int rc = -1;
    struct inventory inv = { 0 };
    bool *used = NULL;
    char e2[ERR_LEN], sum[300], s1[96], s2[96];

    const char *meta = st_metadata_get(&st, "franca");
    if (!meta) {
        set_err(err, errlen, "%s: no \"franca\" entry in the safetensors __metadata__: not a Franca "
                "checkpoint (convert it with train/convert_checkpoint.py)", path);
        goto out;
    }
    if (model_config_from_json(meta, strlen(meta), &ck->cfg, e2, sizeof e2)) {
        set_err(err, errlen, "%s: %s", path, e2);
        goto out;
    }
    cfg_summary(&ck->cfg, sum, sizeof sum);
    if (vit_weights_alloc(&ck->cfg, &ck->w, e2, sizeof e2)) {
        set_err(err, errlen, "%s: %s", path, e2);
        goto out;
    }
    if (build_inventory(&ck->cfg, &ck->w, &inv) || !(used = calloc(st.n_tensors + 1, 1))) {
        set_err(err, errlen, "%s: out of memory", path);
        goto out;
    }
    bool have_mask = false;
    for (size_t i = 0; i < inv.n; i++) {
        const struct tspec *ts = &inv.t[i];
        const struct st_tensor *t = st_find(&st, ts->name);
        if (!t) {
            if (ts->optional)
                continue;
            shape_str(ts->ndim, ts->shape, s1, sizeof s1);
            set_err(err, errlen, "%s: missing tensor '%s' (expected shape %s; %s)", path, ts->name, s1, sum);
            goto out;
        }
        used[t - st.tensors] = true;
        bool same = t->ndim == ts->ndim;
        for (int d = 0; same && d < ts->ndim; d++)
            same = t->shape[d] == ts->shape[d];
        if (!same) {
            shape_str(t->ndim, t->shape, s1, sizeof s1);
            shape_str(ts->ndim, ts->shape, s2, sizeof s2);
            set_err(err, errlen, "%s: tensor '%s' has shape %s, expected %s (%s)", path, ts->name, s1, s2, sum);
            goto out;
        }
        size_t n = st_numel(t);
        st_to_f32(t, 0, n, ts->dst);
        for (size_t k = 0; k < n; k++) {
            if (!isfinite(ts->dst[k])) {
                set_err(err, errlen, "%s: tensor '%s' holds a non-finite value at element %zu", path, ts->name, k);
                goto out;
            }
        }
        if (strcmp(ts->name, "mask_token") == 0)
            have_mask = true;
    }
    for (size_t i = 0; i < st.n_tensors; i++) {
        if (!used[i]) {
            char nb[96];
            size_t k = 0;
            for (const char *p = st.tensors[i].name; *p && k < 80; p++)
                nb[k++] = (unsigned char)*p < 0x20 ? '?' : *p;
            nb[k] = '\0';
            set_err(err, errlen, "%s: unexpected tensor '%s' that the franca metadata does not explain (%s)",
                    path, nb, sum);
            goto out;
        }
    }
    if (!have_mask)
        ck->w.mask_token = NULL;

    uint8_t dg[SHA256_DIGEST_LEN];
    sha256_buffer(st.map, st.map_len, dg);
    sha256_to_hex(dg, ck->fingerprint);
    rc = 0;
out:
    free(used);
    free(inv.t);
    st_close(&st);
    if (rc != 0) {
        vit_weights_free(&ck->w);
        memset(ck, 0, sizeof *ck);
    }
    return rc;
}

void checkpoint_free(struct checkpoint *ck)
{
    if (!ck)
        return;
    vit_weights_free(&ck->w);
    memset(ck, 0, sizeof *ck);
}

/* ------------------------------------------------------------------ save -- */

int checkpoint_save(const char *path, const struct model_config *cfg,
                    const struct vit_weights *w, enum st_dtype dtype,
                    const char *extra_json, char *err, size_t errlen)
{
    char e2[ERR_LEN];
    if (model_config_validate(cfg, e2, sizeof e2))
        return set_err(err, errlen, "%s: %s", path, e2);
    if (st_dtype_size(dtype) == 0)
        return set_err(err, errlen, "%s: unknown dtype %d", path, (int)dtype);
    if (!w || !w->blocks)
        return set_err(err, errlen, "%s: no weights", path);
    char *meta = model_config_to_json(cfg, extra_json);
    if (!meta)
        return set_err(err, errlen, "%s: extra metadata is not a JSON object", path);
    struct inventory inv = { 0 };
    struct st_writer *sw = st_writer_new();
    int rc = -1;
    if (!sw || build_inventory(cfg, w, &inv)) {
        set_err(err, errlen, "%s: out of memory", path);
        goto out;
    }
    if (st_writer_set_metadata(sw, "franca", meta, e2, sizeof e2)) {
        set_err(err, errlen, "%s: %s", path, e2);
        goto out;
    }
    for (size_t i = 0; i < inv.n; i++) {
        const struct tspec *ts = &inv.t[i];
        if (!ts->dst) {
            if (ts->optional)
                continue;
            set_err(err, errlen, "%s: weights have no data for tensor '%s'", path, ts->name);
            goto out;
        }
        if (st_writer_add_f32(sw, ts->name, dtype, ts->dst, ts->ndim, ts->shape, e2, sizeof e2)) {
            set_err(err, errlen, "%s: %s", path, e2);
            goto out;
        }
    }
    if (st_writer_finish(sw, path, err, errlen))
        goto out;
    rc = 0;
out:
    st_writer_free(sw);
    free(inv.t);
    free(meta);
    return rc;
}

/* ------------------------------------------------------------- random init -- */

static void fill_normal(struct rng *r, float *p, size_t n, double std)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(rng_normal(r) * std);
}

static void fill_uniform(struct rng *r, float *p, size_t n, double bound)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (float)((2.0 * rng_uniform(r) - 1.0) * bound);
}

static void fill_const(float *p, size_t n, float v)
{
    for (size_t i = 0; i < n; i++)
        p[i] = v;
}

void vit_weights_init_random(const struct model_config *cfg, struct vit_weights *w, uint64_t seed)
{
    struct rng r;
    rng_seed(&r, seed);
    const size_t D = (size_t)cfg->embed_dim, M = (size_t)cfg->pos_grid, P = (size_t)cfg->patch_size;
    const size_t Hs = (size_t)cfg->ffn_hidden, F1 = ffn1_rows(cfg);
    const double lin_std = 0.02;

    rng_fill_trunc_normal(&r, w->pos_embed, (1 + M * M) * D, lin_std);
    fill_normal(&r, w->cls_token, D, 1e-6);
    if (w->mask_token)
        fill_const(w->mask_token, D, 0.0f);
    if (w->register_tokens)
        fill_normal(&r, w->register_tokens, (size_t)cfg->register_tokens * D, 1e-6);
    /* Conv2d default init: kaiming-uniform(a=sqrt 5) == U(+-1/sqrt(fan_in)), bias likewise. */
    double bound = 1.0 / sqrt((double)(3 * P * P));
    fill_uniform(&r, w->patch_w, D * 3 * P * P, bound);
    fill_uniform(&r, w->patch_b, D, bound);
    for (int i = 0; i < cfg->depth; i++) {
        struct vit_block_weights *b = &w->blocks[i];
        fill_const(b->norm1_w, D, 1.0f);
        fill_const(b->norm1_b, D, 0.0f);
        rng_fill_trunc_normal(&r, b->qkv_w, 3 * D * D, lin_std);
        fill_const(b->qkv_b, 3 * D, 0.0f);
        rng_fill_trunc_normal(&r, b->proj_w, D * D, lin_std);
        fill_const(b->proj_b, D, 0.0f);
        if (b->ls1)
            fill_const(b->ls1, D, 1e-5f);
        fill_const(b->norm2_w, D, 1.0f);
        fill_const(b->norm2_b, D, 0.0f);
        rng_fill_trunc_normal(&r, b->fc1_w, F1 * D, lin_std);
        fill_const(b->fc1_b, F1, 0.0f);
        rng_fill_trunc_normal(&r, b->fc2_w, D * Hs, lin_std);
        fill_const(b->fc2_b, D, 0.0f);
        if (b->ls2)
            fill_const(b->ls2, D, 1e-5f);
    }
    fill_const(w->norm_w, D, 1.0f);
    fill_const(w->norm_b, D, 0.0f);
    /* RASA heads are bias-free Linear(D, 2): default init U(+-1/sqrt(D)). */
    if (w->rasa_w && cfg->rasa_layers > 0)
        fill_uniform(&r, w->rasa_w, ((size_t)cfg->rasa_layers + 1) * 2 * D, 1.0 / sqrt((double)D));
}
