#include "grad_sync.h"

#include <stdlib.h>
#include <string.h>

int grad_sync_init(struct grad_sync *s, struct comm *c, struct param_list *pl, size_t cap)
{
    memset(s, 0, sizeof *s);
    s->c = c;
    s->pl = pl;
    s->cap = cap;
    const char *ov = getenv("FRANCA_TRAIN_OVERLAP"), *pr = getenv("FRANCA_TRAIN_MPI_TEST");
    s->overlap = !(ov && !strcmp(ov, "0"));
    s->progress = !(pr && !strcmp(pr, "0"));
    size_t staged = 0;
    for (int i = 0; i < pl->n; i++)
        if (pl->p[i].n <= cap) staged += pl->p[i].n;
    /* every tensor may be its own bucket at worst */
    s->stage = malloc((staged ? staged : 1) * sizeof(float));
    s->b = malloc(sizeof *s->b * (size_t)(pl->n ? pl->n : 1));
    return s->stage && s->b ? 0 : -1;
}

void grad_sync_free(struct grad_sync *s)
{
    free(s->stage);
    free(s->b);
    memset(s, 0, sizeof *s);
}

void grad_sync_begin(struct grad_sync *s, float pre)
{
    s->pre = pre;
    s->next = s->open_hi = s->pl->n;
    s->open_off = s->used = 0;
    s->nb = 0;
}

static void launch_open(struct grad_sync *s)
{
    const size_t n = s->used - s->open_off;
    if (!n) return;
    s->b[s->nb++] = (struct grad_bucket){s->open_hi - 1, s->next, s->open_off, n};
    comm_iallreduce_sum_f32(s->c, s->stage + s->open_off, n);
    s->open_hi = s->next;
    s->open_off = s->used;
}

void grad_sync_ready(void *ctx, int first)
{
    struct grad_sync *s = ctx;
    for (int i = s->next - 1; i >= first; i--) {
        struct param *p = &s->pl->p[i];
        if (s->pre != 1.0f)
            for (size_t k = 0; k < p->n; k++) p->g[k] *= s->pre;
        if (p->n > s->cap) {
            /* alone, in place, after the open bucket (which keeps its params contiguous) */
            launch_open(s);
            s->b[s->nb++] = (struct grad_bucket){i, i, 0, 0};
            comm_iallreduce_sum_f32(s->c, p->g, p->n);
            s->next = s->open_hi = i;
            continue;
        }
        /* an empty open bucket has open_hi == next */
        if (s->used - s->open_off + p->n > s->cap) launch_open(s);
        memcpy(s->stage + s->used, p->g, p->n * sizeof(float));
        s->used += p->n;
        s->next = i;
    }
    if (first == 0) launch_open(s);
    if (s->progress) comm_test(s->c);
}

void grad_sync_finish(struct grad_sync *s)
{
    if (s->next > 0) grad_sync_ready(s, 0); /* a backward pass that left some unreported */
    comm_wait(s->c);
    const float r = 1.0f / (float)comm_size(s->c);
    for (int j = 0; j < s->nb; j++) {
        const struct grad_bucket *b = &s->b[j];
        if (!b->n) {
            struct param *p = &s->pl->p[b->hi];
            for (size_t k = 0; k < p->n; k++) p->g[k] *= r;
            continue;
        }
        const float *src = s->stage + b->off;
        for (int i = b->hi; i >= b->lo; i--) {
            struct param *p = &s->pl->p[i];
            for (size_t k = 0; k < p->n; k++) p->g[k] = src[k] * r;
            src += p->n;
        }
    }
}
