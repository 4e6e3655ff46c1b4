/* The in-memory search mirror; see mirror.h for the contract. */
#include "index/mirror.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "index/mirror_codec.h"

struct rowid_index;
static void rowid_index_free(struct rowid_index *r);

struct index_mirror {
    pthread_rwlock_t lock;
    int width, pw;    /* pw: the funnel's default width, whether or not its copy is kept */
    bool keep_prefix; /* the prefix matrix exists (mirror_drop_prefix) */
    enum store_metric metric;
    enum store_mirror form;
    size_t n, cap;
    float *data;      /* [cap, width]: f32 mirrors only */
    uint16_t *h16;    /* [cap, width]: f16 mirrors only */
    int8_t *i8;       /* [cap, width]: int8 mirrors only */
    struct codec_int8 q; /* int8: the per-dimension ranges */
    int fit_pending;  /* int8: mirror_fit set exact ranges; headroom comes at the first add */
    float *tmp;       /* [width] (compressed): one row in stored form, under the write lock */
    float *ptmp;      /* [pw] (compressed): its prefix row */
    uint16_t *p16;    /* [cap, pw] (compressed): the prefix matrix in f16, instead of prefix */
    float *old_off, *old_step; /* [width] (int8): parameters before a widening */
    uint8_t *changed; /* [width] (int8): dimensions a widening changed */
    size_t ext_bytes; /* bytes of the external id strings */
    float *prefix;    /* [cap, pw] */
    float *sq;        /* [cap]: squared norm of the stored row at width */
    float *psq;       /* [cap]: squared norm of the prefix row */
    int64_t *row_ids; /* [cap] */
    char **ext;       /* [cap], owned */
    void **payload;   /* [cap], owned through payload_free; may hold NULLs */
    void (*payload_free)(void *);
    uint64_t *hash;   /* [cap]: hash of ext */
    uint32_t *slots;  /* [nslots]: row + 1, 0 = empty; linear probing */
    size_t nslots;    /* power of two, at least 2 * cap */
    uint64_t version; /* see mirror_version; written under the write lock */
    uint64_t rewrite; /* see mirror_rewrite_version; written under the write lock */
    struct rowid_index *rid; /* see mirror_rowid_sync (created lazily under rid_mu) */
    pthread_mutex_t rid_mu;
};

/* Versions come from one counter, so that no two mirrors (nor two states of
 * one) share a version, even when a freed mirror's address is reused. */
static _Atomic uint64_t version_counter;
static void (*_Atomic free_hook)(const struct index_mirror *m);

static uint64_t next_version(void) { return atomic_fetch_add(&version_counter, 1) + 1; }

void mirror_set_free_hook(void (*hook)(const struct index_mirror *m)) { atomic_store(&free_hook, hook); }
uint64_t mirror_version(const struct index_mirror *m) { return m->version; }
uint64_t mirror_rewrite_version(const struct index_mirror *m) { return m->rewrite; }

static uint64_t hash_id(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a, then a final mix */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

/* The slot of external id (hash h), or SIZE_MAX if absent. */
static size_t slot_of_id(const struct index_mirror *m, const char *id, uint64_t h)
{
    if (!m->nslots) return SIZE_MAX;
    const size_t mask = m->nslots - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        const uint32_t v = m->slots[i];
        if (!v) return SIZE_MAX;
        if (m->hash[v - 1] == h && strcmp(m->ext[v - 1], id) == 0) return i;
    }
}

/* The slot holding a row that is in the table (found through its hash). */
static size_t slot_of_row(const struct index_mirror *m, size_t row)
{
    const size_t mask = m->nslots - 1;
    size_t i = m->hash[row] & mask;
    while (m->slots[i] != row + 1) i = (i + 1) & mask;
    return i;
}

static void slot_insert(struct index_mirror *m, size_t row)
{
    const size_t mask = m->nslots - 1;
    size_t i = m->hash[row] & mask;
    while (m->slots[i]) i = (i + 1) & mask;
    m->slots[i] = (uint32_t)(row + 1);
}

/* Backward-shift deletion: no tombstones. */
static void slot_delete(struct index_mirror *m, size_t i)
{
    const size_t mask = m->nslots - 1;
    size_t j = i;
    m->slots[i] = 0;
    for (;;) {
        j = (j + 1) & mask;
        const uint32_t v = m->slots[j];
        if (!v) return;
        const size_t home = m->hash[v - 1] & mask;
        if (((j - home) & mask) >= ((j - i) & mask)) {
            m->slots[i] = v;
            m->slots[j] = 0;
            i = j;
        }
    }
}

static int rehash(struct index_mirror *m, size_t nslots)
{
    uint32_t *s = calloc(nslots, sizeof *s);
    if (!s) return -1;
    free(m->slots);
    m->slots = s;
    m->nslots = nslots;
    for (size_t r = 0; r < m->n; r++) slot_insert(m, r);
    return 0;
}

#define GROW(ptr, count)                                                        \
    do {                                                                        \
        void *p_ = realloc((ptr), (count) * sizeof *(ptr));                     \
        if (!p_) return -1;                                                     \
        (ptr) = p_;                                                             \
    } while (0)

/* Room for need rows (arrays and table); on failure nothing observable changes
 * (arrays that did grow just have spare room). */
static int reserve(struct index_mirror *m, size_t need)
{
    if (need > m->cap) {
        size_t cap = m->cap ? m->cap : 64;
        while (cap < need) cap *= 2;
        if (cap > MIRROR_MAX_ROWS) cap = MIRROR_MAX_ROWS;
        if (m->form == STORE_MIRROR_F16) GROW(m->h16, cap * (size_t)m->width);
        else if (m->form == STORE_MIRROR_INT8) GROW(m->i8, cap * (size_t)m->width);
        else GROW(m->data, cap * (size_t)m->width);
        if (m->keep_prefix) {
            if (m->form == STORE_MIRROR_F32) GROW(m->prefix, cap * (size_t)m->pw);
            else GROW(m->p16, cap * (size_t)m->pw);
        }
        GROW(m->sq, cap);
        GROW(m->psq, cap);
        GROW(m->row_ids, cap);
        GROW(m->ext, cap);
        GROW(m->payload, cap);
        GROW(m->hash, cap);
        m->cap = cap;
    }
    size_t ns = m->nslots ? m->nslots : 128;
    while (ns < 2 * need) ns *= 2;
    if (ns != m->nslots && rehash(m, ns)) return -1;
    return 0;
}

struct index_mirror *mirror_create(int width, enum store_metric metric, int prefix_width,
                                   char *err, size_t errlen)
{
    return mirror_create_form(width, metric, prefix_width, STORE_MIRROR_F32, err, errlen);
}

struct index_mirror *mirror_create_form(int width, enum store_metric metric, int prefix_width,
                                        enum store_mirror form, char *err, size_t errlen)
{
    if (width < 1 || width > STORE_WIDTH_MAX) {
        set_err(err, errlen, "mirror: width %d is outside 1..%d", width, STORE_WIDTH_MAX);
        return NULL;
    }
    if (metric != STORE_METRIC_COSINE && metric != STORE_METRIC_L2 && metric != STORE_METRIC_DOT) {
        set_err(err, errlen, "mirror: unknown metric %d", (int)metric);
        return NULL;
    }
    if (!store_mirror_name(form)) {
        set_err(err, errlen, "mirror: unknown form %d", (int)form);
        return NULL;
    }
    if (prefix_width == 0) prefix_width = width / 16 > 1 ? width / 16 : 1;
    if (prefix_width < 1 || prefix_width > width) {
        set_err(err, errlen, "mirror: prefix width %d is outside 1..%d", prefix_width, width);
        return NULL;
    }
    struct index_mirror *m = calloc(1, sizeof *m);
    if (!m) {
        set_err(err, errlen, "mirror: out of memory");
        return NULL;
    }
    /* Writers first: a stream of searches must not starve inserts and deletes. */
    pthread_rwlockattr_t attr;
    int bad = pthread_rwlockattr_init(&attr);
    if (!bad) {
        pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
        bad = pthread_rwlock_init(&m->lock, &attr);
        pthread_rwlockattr_destroy(&attr);
    }
    if (bad) {
        free(m);
        set_err(err, errlen, "mirror: cannot create its lock");
        return NULL;
    }
    m->width = width;
    m->pw = prefix_width;
    m->keep_prefix = true;
    m->metric = metric;
    m->form = form;
    int oom = 0;
    if (form != STORE_MIRROR_F32) {
        oom |= !(m->tmp = malloc((size_t)width * sizeof *m->tmp));
        oom |= !(m->ptmp = malloc((size_t)prefix_width * sizeof *m->ptmp));
    }
    if (form == STORE_MIRROR_INT8) {
        oom |= codec_int8_init(&m->q, width) != 0;
        oom |= !(m->old_off = malloc((size_t)width * sizeof *m->old_off));
        oom |= !(m->old_step = malloc((size_t)width * sizeof *m->old_step));
        oom |= !(m->changed = malloc((size_t)width));
    }
    if (oom) {
        mirror_free(m);
        set_err(err, errlen, "mirror: out of memory");
        return NULL;
    }
    m->version = m->rewrite = next_version();
    pthread_mutex_init(&m->rid_mu, NULL);
    return m;
}

static void drop_payload(struct index_mirror *m, size_t r)
{
    if (m->payload[r] && m->payload_free) m->payload_free(m->payload[r]);
    m->payload[r] = NULL;
}

static void free_rows(struct index_mirror *m)
{
    for (size_t r = 0; r < m->n; r++) {
        free(m->ext[r]);
        drop_payload(m, r);
    }
    m->n = 0;
    m->ext_bytes = 0;
}

void mirror_free(struct index_mirror *m)
{
    if (!m) return;
    void (*hook)(const struct index_mirror *) = atomic_load(&free_hook);
    if (hook) hook(m);
    free_rows(m);
    pthread_rwlock_destroy(&m->lock);
    free(m->data);
    free(m->h16);
    free(m->i8);
    codec_int8_free(&m->q);
    free(m->tmp);
    free(m->old_off);
    free(m->old_step);
    free(m->changed);
    free(m->prefix);
    free(m->p16);
    free(m->ptmp);
    free(m->sq);
    free(m->psq);
    free(m->row_ids);
    free(m->ext);
    free(m->payload);
    free(m->hash);
    free(m->slots);
    rowid_index_free(m->rid);
    pthread_mutex_destroy(&m->rid_mu);
    free(m);
}

static double sqnorm(const float *x, int w)
{
    double s = 0;
    for (int i = 0; i < w; i++) s += (double)x[i] * x[i];
    return s;
}

/* The stored form (see mirror.h) of v at width: normalised for cosine. */
static void stored_form(const struct index_mirror *m, const float *v, float *out)
{
    const double full = sqnorm(v, m->width);
    const double sf = m->metric == STORE_METRIC_COSINE ? (full > 0 ? 1.0 / sqrt(full) : 0.0) : 1.0;
    for (int i = 0; i < m->width; i++) out[i] = (float)(v[i] * sf);
}

/* int8, after a widening: the rows held re-encoded in the changed dimensions,
 * and their norms, which must be those of the rows as decoded now. */
static void requantise(struct index_mirror *m)
{
    const size_t w = (size_t)m->width;
    codec_int8_recode(&m->q, m->i8, m->n, w, m->changed, m->old_off, m->old_step);
    for (size_t r = 0; r < m->n; r++) {
        codec_int8_decode(&m->q, m->i8 + r * w, m->width, m->tmp);
        m->sq[r] = (float)sqnorm(m->tmp, m->width);
    }
    m->rewrite = next_version(); /* stored rows changed: copies of them are stale */
}

/* int8: grows the ranges so that the stored forms of count rows fit, in one
 * step for the whole batch (each widening re-rounds the rows held, so one per
 * batch keeps that error to one rounding), re-encoding the rows held in the
 * dimensions that changed. Rows never get clamped: a value outside its range
 * widens it, with headroom so that this stays rare. */
static void fit_rows(struct index_mirror *m, size_t count, const float *vectors)
{
    const size_t w = (size_t)m->width;
    float *mm = malloc(2 * w * sizeof *mm); /* [min; max] */
    if (!mm) { /* no room for the summary: row by row, as correct, just slower */
        for (size_t i = 0; i < count; i++) {
            stored_form(m, vectors + i * w, m->tmp);
            if (codec_int8_widen(&m->q, m->tmp, 1, m->n ? 1.25f : 1.1f, m->changed, m->old_off,
                                 m->old_step) && m->n)
                requantise(m);
        }
        return;
    }
    for (size_t j = 0; j < w; j++) mm[j] = INFINITY, mm[w + j] = -INFINITY;
    for (size_t i = 0; i < count; i++) {
        stored_form(m, vectors + i * w, m->tmp);
        for (size_t j = 0; j < w; j++) {
            mm[j] = fminf(mm[j], m->tmp[j]);
            mm[w + j] = fmaxf(mm[w + j], m->tmp[j]);
        }
    }
    if (codec_int8_widen(&m->q, mm, 2, m->n ? 1.25f : 1.1f, m->changed, m->old_off,
                         m->old_step) && m->n)
        requantise(m);
    free(mm);
}

/* Writes prefix row r from v and its squared norm psq[r], when the prefix
 * copy is kept. */
static void store_prefix_row(struct index_mirror *m, size_t r, const float *v)
{
    if (!m->keep_prefix) {
        m->psq[r] = 0.0f;
        return;
    }
    const size_t pw = (size_t)m->pw;
    float *p = m->form == STORE_MIRROR_F32 ? m->prefix + r * pw : m->ptmp;
    if (m->metric == STORE_METRIC_COSINE) {
        const double pre = sqnorm(v, m->pw);
        const double sp = pre > 0 ? 1.0 / sqrt(pre) : 0.0;
        for (size_t i = 0; i < pw; i++) p[i] = (float)(v[i] * sp);
    } else {
        memcpy(p, v, pw * sizeof *p);
    }
    if (m->form != STORE_MIRROR_F32) { /* f16: half the bytes, ample for a shortlist */
        codec_f16_encode(p, m->pw, m->p16 + r * pw);
        codec_f16_decode(m->p16 + r * pw, m->pw, p);
    }
    m->psq[r] = (float)sqnorm(p, m->pw);
}

/* Writes row r from v in the stored form (see mirror.h). sq[r] is the squared
 * norm of the row as the mirror holds it (decoded, for compressed forms), so
 * that l2 keys are exact for the rows searched. */
static void store_row(struct index_mirror *m, size_t r, const float *v)
{
    const size_t w = (size_t)m->width;
    float *d = m->form == STORE_MIRROR_F32 ? m->data + r * w : m->tmp;
    stored_form(m, v, d);
    store_prefix_row(m, r, v);
    if (m->form == STORE_MIRROR_F16) {
        codec_f16_encode(d, m->width, m->h16 + r * w);
        codec_f16_decode(m->h16 + r * w, m->width, d);
    } else if (m->form == STORE_MIRROR_INT8) {
        codec_int8_encode(&m->q, d, m->i8 + r * w);
        codec_int8_decode(&m->q, m->i8 + r * w, m->width, d);
    }
    m->sq[r] = (float)sqnorm(d, m->width);
}

void mirror_set_payload_free(struct index_mirror *m, void (*fn)(void *)) { m->payload_free = fn; }

int mirror_add(struct index_mirror *m, size_t count, const int64_t *row_ids,
               const char *const *external_ids, const float *vectors, char *err,
               size_t errlen)
{
    return mirror_add_payloads(m, count, row_ids, external_ids, vectors, NULL, err, errlen);
}

int mirror_add_payloads(struct index_mirror *m, size_t count, const int64_t *row_ids,
                        const char *const *external_ids, const float *vectors,
                        void *const *payloads, char *err, size_t errlen)
{
    if (!count) return 0;
    if (!row_ids || !external_ids || !vectors)
        return set_err(err, errlen, "mirror: missing arguments"), STORE_INVALID;
    const size_t w = (size_t)m->width;
    for (size_t i = 0; i < count; i++) {
        const char *id = external_ids[i];
        const size_t len = id ? strnlen(id, STORE_ID_MAX) : 0;
        if (len == 0 || len >= STORE_ID_MAX)
            return set_err(err, errlen, "mirror: item %zu has an empty or over-long id", i),
                   STORE_INVALID;
        for (size_t j = 0; j < w; j++)
            if (!isfinite(vectors[i * w + j]))
                return set_err(err, errlen, "mirror: item %zu has a NaN or Inf at %zu", i, j),
                       STORE_INVALID;
    }
    pthread_rwlock_wrlock(&m->lock);
    int rc = 0;
    if (count > MIRROR_MAX_ROWS - m->n) {
        rc = STORE_INVALID;
        set_err(err, errlen, "mirror: more than %d rows", MIRROR_MAX_ROWS);
        goto out;
    }
    if (reserve(m, m->n + count)) {
        rc = STORE_ERR;
        set_err(err, errlen, "mirror: out of memory for %zu rows", m->n + count);
        goto out;
    }
    const size_t base = m->n;
    size_t i;
    for (i = 0; i < count; i++) { /* provisional: rows base.. */
        const size_t r = base + i;
        const uint64_t h = hash_id(external_ids[i]);
        if (slot_of_id(m, external_ids[i], h) != SIZE_MAX) {
            char shown[64];
            printable_copy(external_ids[i], strlen(external_ids[i]), shown, sizeof shown);
            rc = STORE_CONFLICT;
            set_err(err, errlen, "mirror: duplicate external id \"%s\"", shown);
            break;
        }
        m->ext[r] = strdup(external_ids[i]);
        if (!m->ext[r]) {
            rc = STORE_ERR;
            set_err(err, errlen, "mirror: out of memory");
            break;
        }
        m->hash[r] = h;
        slot_insert(m, r);
    }
    if (rc) { /* roll back the provisional rows */
        while (i-- > 0) {
            const size_t r = base + i;
            slot_delete(m, slot_of_row(m, r));
            free(m->ext[r]);
        }
        goto out;
    }
    if (m->fit_pending) { /* the ranges mirror_fit found, with headroom for later inserts */
        codec_int8_scale_ranges(&m->q, 1.1f);
        m->fit_pending = 0;
    }
    if (m->form == STORE_MIRROR_INT8) fit_rows(m, count, vectors);
    for (i = 0; i < count; i++) {
        m->ext_bytes += strlen(m->ext[base + i]) + 1;
        m->row_ids[base + i] = row_ids[i];
        m->payload[base + i] = payloads ? payloads[i] : NULL;
        store_row(m, base + i, vectors + i * w);
    }
    m->n = base + count;
    m->version = next_version();
out:
    pthread_rwlock_unlock(&m->lock);
    return rc;
}

static void remove_row(struct index_mirror *m, size_t r, size_t slot)
{
    slot_delete(m, slot);
    m->ext_bytes -= strlen(m->ext[r]) + 1;
    free(m->ext[r]);
    drop_payload(m, r);
    const size_t last = m->n - 1;
    if (r != last) {
        const size_t w = (size_t)m->width;
        if (m->form == STORE_MIRROR_F16)
            memcpy(m->h16 + r * w, m->h16 + last * w, w * sizeof *m->h16);
        else if (m->form == STORE_MIRROR_INT8)
            memcpy(m->i8 + r * w, m->i8 + last * w, w);
        else
            memcpy(m->data + r * w, m->data + last * w, w * sizeof *m->data);
        if (m->keep_prefix) {
            const size_t pw = (size_t)m->pw;
            if (m->form == STORE_MIRROR_F32)
                memcpy(m->prefix + r * pw, m->prefix + last * pw, pw * sizeof *m->prefix);
            else
                memcpy(m->p16 + r * pw, m->p16 + last * pw, pw * sizeof *m->p16);
        }
        m->sq[r] = m->sq[last];
        m->psq[r] = m->psq[last];
        m->row_ids[r] = m->row_ids[last];
        m->ext[r] = m->ext[last];
        m->payload[r] = m->payload[last];
        m->payload[last] = NULL;
        m->hash[r] = m->hash[last];
        m->slots[slot_of_row(m, last)] = (uint32_t)(r + 1);
    }
    m->n = last;
}

int mirror_remove(struct index_mirror *m, size_t count, const char *const *external_ids,
                  size_t *n_removed)
{
    size_t removed = 0;
    pthread_rwlock_wrlock(&m->lock);
    for (size_t i = 0; i < count; i++) {
        if (!external_ids || !external_ids[i]) continue;
        const size_t s = slot_of_id(m, external_ids[i], hash_id(external_ids[i]));
        if (s == SIZE_MAX) continue;
        remove_row(m, m->slots[s] - 1, s);
        removed++;
    }
    if (removed) m->version = m->rewrite = next_version();
    pthread_rwlock_unlock(&m->lock);
    if (n_removed) *n_removed = removed;
    return 0;
}

void mirror_clear(struct index_mirror *m)
{
    pthread_rwlock_wrlock(&m->lock);
    free_rows(m);
    if (m->slots) memset(m->slots, 0, m->nslots * sizeof *m->slots);
    m->version = m->rewrite = next_version();
    pthread_rwlock_unlock(&m->lock);
}

void mirror_read_lock(struct index_mirror *m) { pthread_rwlock_rdlock(&m->lock); }
void mirror_read_unlock(struct index_mirror *m) { pthread_rwlock_unlock(&m->lock); }

int mirror_width(const struct index_mirror *m) { return m->width; }
int mirror_prefix_width(const struct index_mirror *m) { return m->pw; }
bool mirror_has_prefix(const struct index_mirror *m) { return m->keep_prefix; }

int mirror_drop_prefix(struct index_mirror *m, char *err, size_t errlen)
{
    pthread_rwlock_wrlock(&m->lock);
    const int rc = m->n ? set_err_code(err, errlen, STORE_INVALID,
                                       "mirror: the prefix copy goes before the first add only")
                        : 0;
    if (!rc) {
        free(m->prefix);
        free(m->p16);
        m->prefix = NULL;
        m->p16 = NULL;
        m->keep_prefix = false;
    }
    pthread_rwlock_unlock(&m->lock);
    return rc;
}
enum store_metric mirror_metric(const struct index_mirror *m) { return m->metric; }
size_t mirror_count(const struct index_mirror *m) { return m->n; }

long mirror_find(const struct index_mirror *m, const char *external_id)
{
    if (!external_id) return -1;
    const size_t s = slot_of_id(m, external_id, hash_id(external_id));
    return s == SIZE_MAX ? -1 : (long)m->slots[s] - 1;
}

int64_t mirror_row_id(const struct index_mirror *m, size_t row) { return m->row_ids[row]; }
const char *mirror_external_id(const struct index_mirror *m, size_t row) { return m->ext[row]; }
void *mirror_payload(const struct index_mirror *m, size_t row) { return m->payload[row]; }
const float *mirror_row_vector(const struct index_mirror *m, size_t row)
{
    return m->form == STORE_MIRROR_F32 ? m->data + row * (size_t)m->width : NULL;
}
void mirror_row_copy(const struct index_mirror *m, size_t row, int w, float *out)
{
    mirror_decode_rows(m, row, 1, w, out);
}
void mirror_decode_rows(const struct index_mirror *m, size_t r0, size_t b, int w, float *out)
{
    const size_t width = (size_t)m->width;
    for (size_t i = 0; i < b; i++) {
        const size_t r = r0 + i;
        float *o = out + i * (size_t)w;
        if (m->form == STORE_MIRROR_F16) codec_f16_decode(m->h16 + r * width, w, o);
        else if (m->form == STORE_MIRROR_INT8) codec_int8_decode(&m->q, m->i8 + r * width, w, o);
        else memcpy(o, m->data + r * width, (size_t)w * sizeof *o);
    }
}
void mirror_decode_prefix_rows(const struct index_mirror *m, size_t r0, size_t b, float *out)
{
    const size_t pw = (size_t)m->pw;
    if (m->form == STORE_MIRROR_F32) {
        memcpy(out, m->prefix + r0 * pw, b * pw * sizeof *out);
        return;
    }
    for (size_t i = 0; i < b; i++) codec_f16_decode(m->p16 + (r0 + i) * pw, m->pw, out + i * pw);
}
enum store_mirror mirror_form(const struct index_mirror *m) { return m->form; }
size_t mirror_vector_bytes(const struct index_mirror *m)
{
    const size_t w = (size_t)m->width;
    return m->form == STORE_MIRROR_F16 ? 2 * w : m->form == STORE_MIRROR_INT8 ? w : 4 * w;
}
size_t mirror_bytes(const struct index_mirror *m)
{
    /* Per row of capacity: the full row, the prefix row, two norms, the row
     * id, the id and payload pointers and the id hash. A malloc'ed string
     * costs its bytes plus about 16 of allocator overhead. */
    const size_t pre = m->form == STORE_MIRROR_F32 ? sizeof(float) : sizeof(uint16_t);
    const size_t per_row = mirror_vector_bytes(m) + (m->keep_prefix ? (size_t)m->pw * pre : 0) +
                           2 * sizeof(float) + sizeof(int64_t) + 2 * sizeof(void *) +
                           sizeof(uint64_t);
    size_t b = m->cap * per_row + m->nslots * sizeof(uint32_t) + m->ext_bytes + 16 * m->n;
    if (m->form == STORE_MIRROR_INT8) b += (size_t)m->width * (5 * sizeof(float) + 2 * sizeof(float) + 1);
    return b;
}
int mirror_fit(struct index_mirror *m, size_t count, const float *vectors, char *err,
               size_t errlen)
{
    if (m->form != STORE_MIRROR_INT8 || !count) return 0;
    pthread_rwlock_wrlock(&m->lock);
    int rc = 0;
    if (m->n) {
        rc = STORE_INVALID;
        set_err(err, errlen, "mirror: fit before the first add only");
    } else {
        for (size_t i = 0; i < count; i++) {
            const float *v = vectors + i * (size_t)m->width;
            int finite = 1;
            for (int j = 0; j < m->width; j++) finite &= isfinite(v[j]) != 0;
            if (!finite) continue; /* mirror_add refuses it later */
            stored_form(m, v, m->tmp);
            codec_int8_widen(&m->q, m->tmp, 1, 1.0f, NULL, NULL, NULL);
        }
        m->fit_pending = 1;
    }
    pthread_rwlock_unlock(&m->lock);
    return rc;
}
const float *mirror_matrix(const struct index_mirror *m) { return m->data; }
const float *mirror_prefix_matrix(const struct index_mirror *m) { return m->prefix; }
const float *mirror_sqnorms(const struct index_mirror *m) { return m->sq; }
const float *mirror_prefix_sqnorms(const struct index_mirror *m) { return m->psq; }

/* ---- store row id -> mirror row (for ANN re-ranking) ----
 * Kept beside the rows rather than in them: built on first use under the read
 * lock, brought up to date by the first reader after a change (only the
 * appended rows while mirror_rewrite_version stays, everything otherwise),
 * and read through the public accessors only. */
struct rowid_index {
    uint64_t version, rewrite; /* the mirror's when last synced */
    size_t n;                  /* rows indexed */
    uint32_t *slots;           /* row + 1, 0 = empty; linear probing on the row id */
    size_t nslots;             /* power of two >= 2 n */
};

static void rowid_index_free(struct rowid_index *r)
{
    if (!r) return;
    free(r->slots);
    free(r);
}

static size_t rowid_hash(int64_t id)
{
    uint64_t x = (uint64_t)id * 0x9e3779b97f4a7c15ULL;
    return (size_t)(x ^ (x >> 29));
}

static void rowid_put(const struct index_mirror *m, struct rowid_index *r, size_t row)
{
    const size_t mask = r->nslots - 1;
    size_t i = rowid_hash(mirror_row_id(m, row)) & mask;
    while (r->slots[i]) i = (i + 1) & mask;
    r->slots[i] = (uint32_t)(row + 1);
}

int mirror_rowid_sync(const struct index_mirror *cm)
{
    struct index_mirror *m = (struct index_mirror *)cm;
    pthread_mutex_lock(&m->rid_mu);
    int rc = 0;
    struct rowid_index *r = m->rid;
    if (!r && !(r = m->rid = calloc(1, sizeof *r))) rc = -1;
    const size_t n = mirror_count(m);
    if (!rc && (r->version != mirror_version(m) || r->n != n)) {
        const bool rebuild = r->rewrite != mirror_rewrite_version(m) || r->n > n ||
                             r->nslots < 2 * n || !r->slots;
        if (rebuild) {
            size_t ns = 1024;
            while (ns < 2 * n) ns *= 2;
            if (ns < 2 * n + n / 2) ns *= 2; /* room for appends before the next rebuild */
            uint32_t *s = calloc(ns, sizeof *s);
            if (!s) {
                rc = -1;
            } else {
                free(r->slots);
                r->slots = s;
                r->nslots = ns;
                r->n = 0;
            }
        }
        for (size_t row = r->n; !rc && row < n; row++) rowid_put(m, r, row);
        if (!rc) {
            r->n = n;
            r->version = mirror_version(m);
            r->rewrite = mirror_rewrite_version(m);
        }
    }
    pthread_mutex_unlock(&m->rid_mu);
    return rc;
}

long mirror_find_row_id(const struct index_mirror *m, int64_t row_id)
{
    const struct rowid_index *r = m->rid;
    if (!r || !r->slots) return -1;
    const size_t mask = r->nslots - 1;
    for (size_t i = rowid_hash(row_id) & mask;; i = (i + 1) & mask) {
        const uint32_t v = r->slots[i];
        if (!v) return -1;
        if (mirror_row_id(m, v - 1) == row_id) return (long)(v - 1);
    }
}
