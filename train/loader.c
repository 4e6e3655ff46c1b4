#include "loader.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"

static int shard_size(const struct loader_config *cfg)
{
    return cfg->shard_n > 0 ? cfg->shard_n : cfg->B;
}

int loader_batch_alloc(const struct loader_config *cfg, struct loader_batch *b)
{
    memset(b, 0, sizeof *b);
    const int B = shard_size(cfg), G = cfg->aug.global_size, L = cfg->aug.local_size;
    const int gp = G / cfg->patch_size;
    b->global = malloc((size_t)2 * B * 3 * G * G * sizeof(float));
    b->local = malloc(((size_t)cfg->aug.n_local * B * 3 * L * L + 1) * sizeof(float));
    b->masks = malloc((size_t)2 * B * gp * gp);
    if (B != cfg->B) b->masks_all = malloc((size_t)2 * cfg->B * gp * gp);
    if (!b->global || !b->local || !b->masks || (B != cfg->B && !b->masks_all)) {
        loader_batch_free(b);
        return -1;
    }
    b->cb.B = B;
    b->cb.global_size = G;
    b->cb.n_local = cfg->aug.n_local;
    b->cb.local_size = L;
    b->cb.global = b->global;
    b->cb.local = b->local;
    b->cb.masks = b->masks;
    return 0;
}

void loader_batch_free(struct loader_batch *b)
{
    free(b->global);
    free(b->local);
    free(b->masks);
    free(b->masks_all);
    memset(b, 0, sizeof *b);
}

int loader_make_batch(const struct loader_config *cfg, int64_t step, struct loader_batch *b,
                      char *err, size_t errlen)
{
    struct rng base;
    rng_seed(&base, cfg->seed);
    const int B = cfg->B, Bl = shard_size(cfg), b0 = cfg->shard_begin;
    for (int i = 0; i < Bl; i++) {
        struct rng r;
        rng_fork(&base, (uint64_t)step * (uint64_t)B + (uint64_t)(b0 + i), &r);
        const int idx = (int)rng_int(&r, 0, cfg->ds->n - 1);
        struct image_rgb8 img;
        if (dataset_get(cfg->ds, idx, &img, err, errlen) < 0) return -1;
        int rc = augment_sample(&cfg->aug, &img, &r, i, Bl, b->global, b->local, err, errlen);
        image_free(&img);
        if (rc < 0) return -1;
    }
    struct rng mr;
    rng_fork(&base, LOADER_MASK_STREAM + (uint64_t)step, &mr);
    const int gp = cfg->aug.global_size / cfg->patch_size;
    uint8_t *dst = Bl == B ? b->masks : b->masks_all;
    b->n_masked = collate_masks(&mr, &cfg->mask, 2 * B, gp, gp, dst, &b->upperbound);
    if (b->n_masked < 0) return set_err(err, errlen, "loader: bad masking parameters");
    if (Bl != B) {
        /* keep the shard's rows of both global crops (crop-major: c*B + b) */
        const size_t np = (size_t)gp * gp;
        b->n_masked = 0;
        for (int c = 0; c < 2; c++)
            for (int i = 0; i < Bl; i++) {
                const uint8_t *src = b->masks_all + ((size_t)c * B + b0 + i) * np;
                memcpy(b->masks + ((size_t)c * Bl + i) * np, src, np);
                for (size_t k = 0; k < np; k++) b->n_masked += src[k] != 0;
            }
    }
    b->step = step;
    return 0;
}

struct slot {
    struct loader_batch b;
    int ready;
};

struct loader {
    struct loader_config cfg;
    pthread_mutex_t mu;
    pthread_cond_t cv_ready, cv_space;
    pthread_t *th;
    int nth;
    struct slot *slots;
    int Q;
    int64_t next_produce, next_consume, released;
    int held;       /* the consumer holds slot of next_consume - 1 */
    int stop, failed;
    char err[ERR_LEN];
};

static void *worker(void *arg)
{
    struct loader *l = arg;
    char err[ERR_LEN - 32]; /* room for the "step N: " prefix in l->err */
    for (;;) {
        pthread_mutex_lock(&l->mu);
        while (!l->stop && !l->failed && l->next_produce >= l->released + l->Q)
            pthread_cond_wait(&l->cv_space, &l->mu);
        if (l->stop || l->failed) {
            pthread_mutex_unlock(&l->mu);
            break;
        }
        const int64_t s = l->next_produce++;
        struct slot *sl = &l->slots[s % l->Q];
        pthread_mutex_unlock(&l->mu);
        err[0] = 0;
        int rc = loader_make_batch(&l->cfg, s, &sl->b, err, sizeof err);
        pthread_mutex_lock(&l->mu);
        if (rc < 0) {
            if (!l->failed) snprintf(l->err, sizeof l->err, "step %lld: %s", (long long)s, err);
            l->failed = 1;
        } else {
            sl->ready = 1;
        }
        pthread_cond_broadcast(&l->cv_ready);
        pthread_mutex_unlock(&l->mu);
        if (rc < 0) break;
    }
    return NULL;
}

int loader_start(const struct loader_config *cfg, int64_t first_step, struct loader **out,
                 char *err, size_t errlen)
{
    *out = NULL;
    if (!cfg->ds || cfg->ds->n <= 0) return set_err(err, errlen, "loader: empty dataset");
    if (cfg->B <= 0 || cfg->patch_size <= 0 || cfg->aug.global_size % cfg->patch_size ||
        cfg->shard_begin < 0 || cfg->shard_n < 0 || cfg->shard_begin + shard_size(cfg) > cfg->B)
        return set_err(err, errlen, "loader: bad batch size or crop size");
    struct loader *l = calloc(1, sizeof *l);
    if (!l) return set_err(err, errlen, "out of memory");
    l->cfg = *cfg;
    l->nth = cfg->threads < 1 ? 1 : cfg->threads;
    l->Q = cfg->prefetch < l->nth ? l->nth : cfg->prefetch;
    if (l->Q < 2) l->Q = 2;
    l->next_produce = l->next_consume = l->released = first_step;
    l->slots = calloc((size_t)l->Q, sizeof *l->slots);
    l->th = calloc((size_t)l->nth, sizeof *l->th);
    if (!l->slots || !l->th) goto oom;
    for (int i = 0; i < l->Q; i++)
        if (loader_batch_alloc(cfg, &l->slots[i].b) < 0) goto oom;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv_ready, NULL);
    pthread_cond_init(&l->cv_space, NULL);
    for (int i = 0; i < l->nth; i++) {
        if (pthread_create(&l->th[i], NULL, worker, l) != 0) {
            l->nth = i;
            loader_stop(l);
            return set_err(err, errlen, "loader: cannot start threads");
        }
    }
    *out = l;
    return 0;
oom:
    if (l->slots)
        for (int i = 0; i < l->Q; i++) loader_batch_free(&l->slots[i].b);
    free(l->slots);
    free(l->th);
    free(l);
    return set_err(err, errlen, "loader: out of memory for %d batches", cfg->prefetch);
}

int loader_next(struct loader *l, const struct loader_batch **batch, char *err, size_t errlen)
{
    pthread_mutex_lock(&l->mu);
    if (l->held) {
        l->slots[(l->next_consume - 1) % l->Q].ready = 0;
        l->released = l->next_consume;
        l->held = 0;
        pthread_cond_broadcast(&l->cv_space);
    }
    struct slot *sl = &l->slots[l->next_consume % l->Q];
    while (!sl->ready && !l->failed) pthread_cond_wait(&l->cv_ready, &l->mu);
    if (!sl->ready) {
        set_err(err, errlen, "%s", l->err);
        pthread_mutex_unlock(&l->mu);
        return -1;
    }
    l->next_consume++;
    l->held = 1;
    *batch = &sl->b;
    pthread_mutex_unlock(&l->mu);
    return 0;
}

void loader_stop(struct loader *l)
{
    if (!l) return;
    pthread_mutex_lock(&l->mu);
    l->stop = 1;
    pthread_cond_broadcast(&l->cv_space);
    pthread_cond_broadcast(&l->cv_ready);
    pthread_mutex_unlock(&l->mu);
    for (int i = 0; i < l->nth; i++) pthread_join(l->th[i], NULL);
    for (int i = 0; i < l->Q; i++) loader_batch_free(&l->slots[i].b);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv_ready);
    pthread_cond_destroy(&l->cv_space);
    free(l->slots);
    free(l->th);
    free(l);
}
