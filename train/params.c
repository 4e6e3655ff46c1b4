#include "params.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int param_list_add(struct param_list *l, const char *name, float *w, float *g, float *t,
                   size_t n, int module, float wd_mult, float lr_mult, bool last_layer)
{
    if (strlen(name) >= sizeof l->p[0].name) return -1;
    if (l->n == l->cap) {
        const int cap = l->cap ? 2 * l->cap : 64;
        struct param *p = realloc(l->p, (size_t)cap * sizeof *p);
        if (!p) return -1;
        l->p = p;
        l->cap = cap;
    }
    struct param *e = &l->p[l->n++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->w = w;
    e->g = g;
    e->t = t;
    e->n = n;
    e->module = module;
    e->wd_mult = wd_mult;
    e->lr_mult = lr_mult;
    e->last_layer = last_layer;
    return 0;
}

const struct param *param_list_find(const struct param_list *l, const char *name)
{
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->p[i].name, name)) return &l->p[i];
    return NULL;
}

size_t param_list_count(const struct param_list *l)
{
    size_t total = 0;
    for (int i = 0; i < l->n; i++) total += l->p[i].n;
    return total;
}

void param_list_free(struct param_list *l)
{
    free(l->p);
    *l = (struct param_list){0};
}

static bool ends_with(const char *s, const char *suffix)
{
    const size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

float param_default_wd_mult(const char *name)
{
    if (ends_with(name, ".bias") || strstr(name, "norm") || strstr(name, ".ls1.") ||
        strstr(name, ".ls2."))
        return 0.0f;
    return 1.0f;
}

float param_default_lr_mult(const char *name, float patch_embed_lr_mult)
{
    return strstr(name, "patch_embed") ? patch_embed_lr_mult : 1.0f;
}

bool param_is_last_layer(const char *name) { return strstr(name, "last_layer") != NULL; }
