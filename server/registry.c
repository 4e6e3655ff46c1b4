/* The model registry: see registry.h for the publication scheme. */
#include "registry.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "errors.h"
#include "vit.h"

/* One name in the table. cur is NULL while the first load of a new name runs. */
struct reg_slot {
    char name[REGISTRY_NAME_MAX];
    struct model_entry *cur;  /* the table's reference */
    bool loading;
};

struct registry {
    pthread_mutex_t lock;
    struct reg_slot *slots;   /* in the order names were added */
    size_t n, cap;
    char default_name[REGISTRY_NAME_MAX];
    char device[16];
    enum vit_precision precision;
    struct registry_stats st; /* guarded by lock (loading/models computed on read) */
};

static atomic_ullong next_entry_id = 1;

bool registry_name_valid(const char *name)
{
    if (!name || !name[0] || name[0] == '.') return false;
    size_t n = 0;
    for (const char *p = name; *p; p++, n++) {
        const char c = *p;
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                        (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
        if (!ok || n + 1 >= REGISTRY_NAME_MAX) return false;
    }
    return true;
}

int registry_create(struct registry **out, const char *device, const char *precision, char *err,
                    size_t errlen)
{
    *out = NULL;
    if (!device || !device[0] || strlen(device) >= sizeof(((struct registry *)0)->device))
        return set_err(err, errlen, "registry: invalid device name");
    /* "auto" becomes cuda when a GPU is usable, else cpu; "cuda" without one fails. */
    enum vit_device dev;
    if (vit_device_select(device, &dev, err, errlen)) return REGISTRY_ERR;
    device = vit_device_name(dev);
    enum vit_precision prec;
    if (vit_precision_parse(precision, dev, &prec, err, errlen)) return REGISTRY_ERR;
    struct registry *reg = calloc(1, sizeof(*reg));
    if (!reg) return set_err(err, errlen, "registry: out of memory");
    if (pthread_mutex_init(&reg->lock, NULL)) {
        free(reg);
        return set_err(err, errlen, "registry: cannot create its mutex");
    }
    snprintf(reg->device, sizeof reg->device, "%s", device);
    reg->precision = prec;
    *out = reg;
    return REGISTRY_OK;
}

/* ------------------------------------------------------------- entries -- */

static void entry_free(struct model_entry *e)
{
    for (int i = 0; i < REGISTRY_WS_SLOTS; i++) vit_workspace_free(e->ws_slots[i].ws);
    pthread_mutex_destroy(&e->ws_lock);
    vit_model_free(e->model);
    free(e->path);
    free(e);
}

void model_entry_retain(struct model_entry *e)
{
    /* The caller already holds a reference, so the count is positive. */
    const long prev = atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
    assert(prev > 0);
    (void)prev;
}

void model_entry_release(struct model_entry *e)
{
    if (!e) return;
    const long prev = atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel);
    assert(prev > 0); /* a release without a matching retain */
    if (prev == 1) entry_free(e);
}

struct vit_workspace **model_entry_workspace(struct model_entry *e, const void *owner)
{
    struct vit_workspace **slot = NULL;
    pthread_mutex_lock(&e->ws_lock);
    for (int i = 0; i < REGISTRY_WS_SLOTS && !slot; i++)
        if (e->ws_slots[i].owner == owner) slot = &e->ws_slots[i].ws;
    for (int i = 0; i < REGISTRY_WS_SLOTS && !slot; i++)
        if (!e->ws_slots[i].owner) {
            e->ws_slots[i].owner = owner;
            slot = &e->ws_slots[i].ws;
        }
    pthread_mutex_unlock(&e->ws_lock);
    return slot;
}

/* A deterministic pseudo-random input in the range of normalised pixels. */
static void warmup_input(float *x, size_t n)
{
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        x[i] = (float)((s >> 40) * (1.0 / 16777216.0)) * 4.0f - 2.0f;
    }
}

/* One forward at the default crop size with every output the model has;
 * checks that the outputs are finite. */
static int warm_up(struct vit_model *m, const char *path, char *err, size_t errlen)
{
    const struct model_config *c = vit_model_config(m);
    const int S = c->preprocess.crop_size, D = c->embed_dim;
    if (vit_check_resolution(m, S, S, err, errlen)) {
        char why[ERR_LEN];
        snprintf(why, sizeof why, "%s", err);
        return set_err(err, errlen, "checkpoint %s: default crop size unusable: %s", path, why);
    }
    const size_t N = (size_t)(S / c->patch_size) * (S / c->patch_size);
    const size_t in_n = (size_t)3 * S * S;
    float *x = malloc(sizeof(float) * in_n);
    float *cls = malloc(sizeof(float) * D);
    float *patch = malloc(sizeof(float) * N * D);
    float *rasa = c->rasa_layers > 0 ? malloc(sizeof(float) * N * D) : NULL;
    int rc = 0;
    if (!x || !cls || !patch || (c->rasa_layers > 0 && !rasa)) {
        rc = set_err(err, errlen, "checkpoint %s: out of memory for the warm-up", path);
        goto done;
    }
    warmup_input(x, in_n);
    struct vit_workspace *ws = NULL;
    const struct vit_outputs out = {.cls = cls, .patch = patch, .patch_rasa = rasa};
    char why[ERR_LEN];
    if (vit_forward(m, &ws, x, 1, S, S, &out, why, sizeof why)) {
        rc = set_err(err, errlen, "checkpoint %s: warm-up forward failed: %s", path, why);
    } else {
        size_t bad = 0;
        for (int i = 0; i < D; i++) bad += !isfinite(cls[i]);
        for (size_t i = 0; i < N * D; i++) bad += !isfinite(patch[i]) + (rasa && !isfinite(rasa[i]));
        if (bad)
            rc = set_err(err, errlen, "checkpoint %s: warm-up forward produced %zu non-finite "
                         "values (corrupt weights?)", path, bad);
    }
    vit_workspace_free(ws);
done:
    free(x);
    free(cls);
    free(patch);
    free(rasa);
    return rc;
}

static int entry_create(const char *name, const char *path, const char *device,
                        enum vit_precision precision, struct model_entry **out, char *err,
                        size_t errlen)
{
    *out = NULL;
    struct model_entry *e = calloc(1, sizeof(*e));
    if (!e) return set_err(err, errlen, "out of memory");
    e->path = strdup(path);
    if (!e->path || pthread_mutex_init(&e->ws_lock, NULL)) {
        free(e->path);
        free(e);
        return set_err(err, errlen, "out of memory");
    }
    snprintf(e->name, sizeof e->name, "%s", name);
    snprintf(e->device, sizeof e->device, "%s", device);
    snprintf(e->precision, sizeof e->precision, "%s", vit_precision_name(precision));
    atomic_init(&e->refs, 1);
    e->id = atomic_fetch_add(&next_entry_id, 1);

    const double t0 = clock_now_s();
    if (vit_model_load(path, &e->model, err, errlen)) {
        entry_free(e);
        return REGISTRY_ERR;
    }
    const enum vit_device dev = strcmp(device, "cuda") ? VIT_DEVICE_CPU : VIT_DEVICE_CUDA;
    if (vit_model_use_device(e->model, dev, precision, err, errlen)) {
        entry_free(e);
        return REGISTRY_ERR;
    }
    const double t1 = clock_now_s();
    if (warm_up(e->model, path, err, errlen)) {
        entry_free(e);
        return REGISTRY_ERR;
    }
    e->load_seconds = t1 - t0;
    e->warmup_seconds = clock_now_s() - t1;
    e->warmed_up = true;
    snprintf(e->fingerprint, sizeof e->fingerprint, "%s", vit_model_fingerprint(e->model));
    e->loaded_at = time(NULL);
    struct tm tm;
    if (gmtime_r(&e->loaded_at, &tm))
        strftime(e->loaded_at_iso, sizeof e->loaded_at_iso, "%Y-%m-%dT%H:%M:%SZ", &tm);
    *out = e;
    return REGISTRY_OK;
}

/* --------------------------------------------------------------- table -- */

/* Under reg->lock. */
static struct reg_slot *find_slot(struct registry *reg, const char *name)
{
    for (size_t i = 0; i < reg->n; i++)
        if (strcmp(reg->slots[i].name, name) == 0) return &reg->slots[i];
    return NULL;
}

/* Under reg->lock. */
static void remove_slot(struct registry *reg, struct reg_slot *s)
{
    const size_t i = (size_t)(s - reg->slots);
    memmove(&reg->slots[i], &reg->slots[i + 1], (reg->n - i - 1) * sizeof(*s));
    reg->n--;
}

/* Under reg->lock. */
static int published_count(const struct registry *reg)
{
    int n = 0;
    for (size_t i = 0; i < reg->n; i++) n += reg->slots[i].cur != NULL;
    return n;
}

int registry_load(struct registry *reg, const char *name, const char *path,
                  struct model_entry **out, char *err, size_t errlen)
{
    if (out) *out = NULL;
    if (!registry_name_valid(name)) {
        set_err(err, errlen, "invalid model name: use 1 to %d characters of "
                "A-Z a-z 0-9 . _ - (not starting with '.')", REGISTRY_NAME_MAX - 1);
        return REGISTRY_INVALID;
    }
    if (!path || !path[0]) return set_err(err, errlen, "model '%s': empty checkpoint path", name);

    /* Claim the name: mark it loading (adding a placeholder slot for a new name). */
    pthread_mutex_lock(&reg->lock);
    struct reg_slot *s = find_slot(reg, name);
    if (s && s->loading) {
        reg->st.loads_busy++;
        pthread_mutex_unlock(&reg->lock);
        set_err(err, errlen, "model '%s': a load of this name is already in progress", name);
        return REGISTRY_BUSY;
    }
    if (!s) {
        if (reg->n == reg->cap) {
            const size_t cap = reg->cap ? 2 * reg->cap : 4;
            struct reg_slot *ns = realloc(reg->slots, cap * sizeof(*ns));
            if (!ns) {
                reg->st.loads_failed++;
                pthread_mutex_unlock(&reg->lock);
                return set_err(err, errlen, "model '%s': out of memory", name);
            }
            reg->slots = ns;
            reg->cap = cap;
        }
        s = &reg->slots[reg->n++];
        memset(s, 0, sizeof(*s));
        snprintf(s->name, sizeof s->name, "%s", name);
    }
    s->loading = true;
    pthread_mutex_unlock(&reg->lock);

    /* Load and warm up without the lock: other names stay fully usable. */
    struct model_entry *e = NULL;
    const int rc = entry_create(name, path, reg->device, reg->precision, &e, err, errlen);

    /* Publish, or give the name back. The slot may have moved (other names added
     * or removed), so look it up again; it cannot have gone: unload refuses
     * loading names and nothing else removes slots. */
    struct model_entry *old = NULL;
    pthread_mutex_lock(&reg->lock);
    s = find_slot(reg, name);
    s->loading = false;
    if (rc == REGISTRY_OK) {
        old = s->cur;
        s->cur = e;
        if (!reg->default_name[0]) snprintf(reg->default_name, sizeof reg->default_name, "%s", name);
        if (out) {
            model_entry_retain(e);
            *out = e;
        }
        reg->st.loads_ok++;
    } else {
        if (!s->cur) remove_slot(reg, s);
        reg->st.loads_failed++;
    }
    pthread_mutex_unlock(&reg->lock);
    model_entry_release(old);   /* after unlocking: may free a whole model */
    return rc == REGISTRY_OK ? REGISTRY_OK : REGISTRY_ERR;
}

int registry_unload(struct registry *reg, const char *name, char *err, size_t errlen)
{
    if (!name || !name[0]) {
        set_err(err, errlen, "no model name");
        return REGISTRY_INVALID;
    }
    pthread_mutex_lock(&reg->lock);
    struct reg_slot *s = find_slot(reg, name);
    int rc = REGISTRY_OK;
    struct model_entry *old = NULL;
    if (!s) {
        rc = REGISTRY_NOT_FOUND;
        set_err(err, errlen, "model '%s' not found", name);
    } else if (s->loading) {
        rc = REGISTRY_BUSY;
        set_err(err, errlen, "model '%s': a load of this name is in progress", name);
    } else if (published_count(reg) <= 1) {
        rc = REGISTRY_LAST;
        set_err(err, errlen, "model '%s' is the last model loaded and cannot be unloaded", name);
    } else {
        old = s->cur;
        remove_slot(reg, s);
        reg->st.unloads++;
        if (strcmp(reg->default_name, name) == 0) {
            reg->default_name[0] = '\0';
            for (size_t i = 0; i < reg->n; i++)
                if (reg->slots[i].cur) {
                    snprintf(reg->default_name, sizeof reg->default_name, "%s", reg->slots[i].name);
                    break;
                }
        }
    }
    pthread_mutex_unlock(&reg->lock);
    model_entry_release(old);
    return rc;
}

int registry_acquire(struct registry *reg, const char *name, struct model_entry **out,
                     char *err, size_t errlen)
{
    *out = NULL;
    pthread_mutex_lock(&reg->lock);
    const char *want = (name && name[0]) ? name : reg->default_name;
    struct reg_slot *s = want[0] ? find_slot(reg, want) : NULL;
    struct model_entry *e = s ? s->cur : NULL;
    /* Incremented under the lock, while the table's own reference is held. */
    if (e) model_entry_retain(e);
    pthread_mutex_unlock(&reg->lock);
    if (!e) {
        if (name && name[0])
            set_err(err, errlen, "model '%.*s' not found", REGISTRY_NAME_MAX, name);
        else
            set_err(err, errlen, "no model is loaded");
        return REGISTRY_NOT_FOUND;
    }
    *out = e;
    return REGISTRY_OK;
}

int registry_list(struct registry *reg, struct model_entry ***out, size_t *n,
                  int *default_index, char *err, size_t errlen)
{
    *out = NULL;
    *n = 0;
    if (default_index) *default_index = -1;
    pthread_mutex_lock(&reg->lock);
    const size_t cap = reg->n ? reg->n : 1;
    struct model_entry **v = malloc(cap * sizeof(*v));
    if (!v) {
        pthread_mutex_unlock(&reg->lock);
        return set_err(err, errlen, "out of memory");
    }
    size_t k = 0;
    for (size_t i = 0; i < reg->n; i++) {
        struct model_entry *e = reg->slots[i].cur;
        if (!e) continue;
        model_entry_retain(e);
        if (default_index && strcmp(reg->slots[i].name, reg->default_name) == 0)
            *default_index = (int)k;
        v[k++] = e;
    }
    pthread_mutex_unlock(&reg->lock);
    *out = v;
    *n = k;
    return REGISTRY_OK;
}

void registry_list_free(struct model_entry **entries, size_t n)
{
    if (!entries) return;
    for (size_t i = 0; i < n; i++) model_entry_release(entries[i]);
    free(entries);
}

void registry_default_name(struct registry *reg, char *buf, size_t cap)
{
    if (!cap) return;
    pthread_mutex_lock(&reg->lock);
    snprintf(buf, cap, "%s", reg->default_name);
    pthread_mutex_unlock(&reg->lock);
}

void registry_get_stats(struct registry *reg, struct registry_stats *st)
{
    pthread_mutex_lock(&reg->lock);
    *st = reg->st;
    st->models = published_count(reg);
    st->loading = 0;
    for (size_t i = 0; i < reg->n; i++) st->loading += reg->slots[i].loading;
    pthread_mutex_unlock(&reg->lock);
}

void registry_free(struct registry *reg)
{
    if (!reg) return;
    for (size_t i = 0; i < reg->n; i++) model_entry_release(reg->slots[i].cur);
    free(reg->slots);
    pthread_mutex_destroy(&reg->lock);
    free(reg);
}
