/* The patch mirror; see patch_mirror.h. */
#include "index/patch_mirror.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "index/store.h"

struct pm_item {
    int64_t row_id;
    char *id;
    int grid_h, grid_w;
    unsigned char *data;
    uint8_t *labels; /* NULL: unlabelled */
};

struct patch_mirror {
    int width;
    enum patch_type type;
    struct pm_item *items;
    size_t n, cap, patches;
    pthread_rwlock_t lock;
};

struct patch_mirror *patch_mirror_create(int width, enum patch_type type, char *err,
                                         size_t errlen)
{
    if (width < 1 || width > STORE_WIDTH_MAX || !patch_type_name(type)) {
        set_err(err, errlen, "patch mirror: bad width %d or type %d", width, (int)type);
        return NULL;
    }
    struct patch_mirror *m = calloc(1, sizeof *m);
    if (!m) {
        set_err(err, errlen, "patch mirror: out of memory");
        return NULL;
    }
    m->width = width;
    m->type = type;
    pthread_rwlockattr_t a;
    pthread_rwlockattr_init(&a);
    /* As mirror.c: writers first, so that searches cannot starve inserts. */
    pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&m->lock, &a);
    pthread_rwlockattr_destroy(&a);
    return m;
}

static void item_free(struct pm_item *it)
{
    free(it->id);
    free(it->data);
    free(it->labels);
}

void patch_mirror_free(struct patch_mirror *m)
{
    if (!m) return;
    for (size_t i = 0; i < m->n; i++) item_free(&m->items[i]);
    free(m->items);
    pthread_rwlock_destroy(&m->lock);
    free(m);
}

int patch_mirror_add(struct patch_mirror *m, size_t count, const int64_t *row_ids,
                     const char *const *external_ids, const int *grid_h, const int *grid_w,
                     const void *const *patches, const uint8_t *const *labels, char *err,
                     size_t errlen)
{
    struct pm_item *fresh = calloc(count ? count : 1, sizeof *fresh);
    if (!fresh) return set_err_code(err, errlen, STORE_ERR, "patch mirror: out of memory");
    const size_t vb = patch_vec_bytes(m->width, m->type);
    size_t i;
    for (i = 0; i < count; i++) { /* copies first, outside the lock */
        const size_t len = (size_t)grid_h[i] * (size_t)grid_w[i] * vb;
        fresh[i] = (struct pm_item){.row_id = row_ids[i], .grid_h = grid_h[i],
                                    .grid_w = grid_w[i], .id = strdup(external_ids[i]),
                                    .data = malloc(len ? len : 1)};
        if (!fresh[i].id || !fresh[i].data) break;
        memcpy(fresh[i].data, patches[i], len);
        if (labels && labels[i]) {
            const size_t nl = (size_t)grid_h[i] * (size_t)grid_w[i];
            if (!(fresh[i].labels = malloc(nl ? nl : 1))) break;
            memcpy(fresh[i].labels, labels[i], nl);
        }
    }
    int rc = 0;
    if (i < count) {
        count = i + 1; /* item i is half made: free it too */
        rc = set_err_code(err, errlen, STORE_ERR, "patch mirror: out of memory");
    }
    pthread_rwlock_wrlock(&m->lock);
    for (size_t j = 0; !rc && j < count; j++)
        if (patch_mirror_find(m, fresh[j].id) >= 0)
            rc = set_err_code(err, errlen, STORE_CONFLICT, "patch mirror: id exists");
    if (!rc && m->n + count > m->cap) {
        const size_t cap = m->n + count > 2 * m->cap ? m->n + count : 2 * m->cap;
        struct pm_item *p = realloc(m->items, cap * sizeof *p);
        if (!p) rc = set_err_code(err, errlen, STORE_ERR, "patch mirror: out of memory");
        else m->items = p, m->cap = cap;
    }
    if (!rc) {
        memcpy(m->items + m->n, fresh, count * sizeof *fresh);
        m->n += count;
        for (size_t j = 0; j < count; j++)
            m->patches += (size_t)fresh[j].grid_h * (size_t)fresh[j].grid_w;
    }
    pthread_rwlock_unlock(&m->lock);
    if (rc)
        for (size_t j = 0; j < count; j++) item_free(&fresh[j]);
    free(fresh);
    return rc;
}

int patch_mirror_remove(struct patch_mirror *m, const char *external_id)
{
    pthread_rwlock_wrlock(&m->lock);
    const long i = patch_mirror_find(m, external_id);
    if (i >= 0) {
        m->patches -= (size_t)m->items[i].grid_h * (size_t)m->items[i].grid_w;
        item_free(&m->items[i]);
        m->items[i] = m->items[--m->n];
    }
    pthread_rwlock_unlock(&m->lock);
    return i >= 0;
}

void patch_mirror_read_lock(struct patch_mirror *m) { pthread_rwlock_rdlock(&m->lock); }
void patch_mirror_read_unlock(struct patch_mirror *m) { pthread_rwlock_unlock(&m->lock); }

int patch_mirror_width(const struct patch_mirror *m) { return m->width; }
enum patch_type patch_mirror_type(const struct patch_mirror *m) { return m->type; }
size_t patch_mirror_count(const struct patch_mirror *m) { return m->n; }
size_t patch_mirror_patches(const struct patch_mirror *m) { return m->patches; }

size_t patch_mirror_bytes(const struct patch_mirror *m)
{
    return m->patches * patch_vec_bytes(m->width, m->type);
}

long patch_mirror_find(const struct patch_mirror *m, const char *external_id)
{
    for (size_t i = 0; i < m->n; i++)
        if (!strcmp(m->items[i].id, external_id)) return (long)i;
    return -1;
}

const char *patch_mirror_id(const struct patch_mirror *m, size_t item)
{
    return m->items[item].id;
}

void patch_mirror_grid(const struct patch_mirror *m, size_t item, int *grid_h, int *grid_w)
{
    *grid_h = m->items[item].grid_h;
    *grid_w = m->items[item].grid_w;
}

const void *patch_mirror_data(const struct patch_mirror *m, size_t item)
{
    return m->items[item].data;
}

const uint8_t *patch_mirror_labels(const struct patch_mirror *m, size_t item)
{
    return m->items[item].labels;
}
