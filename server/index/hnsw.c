/* HNSW over the normalised Matryoshka prefix; see hnsw.h for the contract.
 *
 * Layout: vectors as IEEE halves in one aligned array [cap, stride] (stride =
 * width rounded up to 16, zero-padded, so every kernel runs whole vector
 * lanes; halves take 2 bytes a component where floats took 4, and the graph
 * only routes: the caller re-ranks its shortlist exactly);
 * level-0 links in one array [cap, 1 + 2m] (count, then ids); the links of
 * levels 1..L of a node in one small block of L * (1 + m). A node's link lists
 * are read and written under its spin lock; the arrays only move under the
 * grow lock held exclusively. The entry point and top level are one atomic
 * word. Visited sets are per thread: a tag array with an epoch counter. */
#include "index/hnsw.h"

#include <errno.h>
#include <fcntl.h>
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "errors.h"
#include "index/mirror_codec.h"
#include "index/patch_codec.h"

#define MAX_LEVEL 30

struct hnsw {
    int w, stride, m, m0, efc;
    _Atomic int ef;
    double ml;
    pthread_rwlock_t grow;   /* shared: any access to the arrays; exclusive: realloc */
    pthread_mutex_t mu;      /* node allocation, label table */
    size_t n, cap;           /* nodes allocated (mu), capacity (grow) */
    _Atomic size_t published; /* nodes whose data are written (for save/labels) */
    uint16_t *vec;           /* [cap, stride] halves */
    uint32_t *link0;         /* [cap, 1 + m0] */
    uint32_t **up;           /* [cap]: levels 1..level, each 1 + m */
    int64_t *label;          /* [cap] */
    uint8_t *level;          /* [cap] */
    _Atomic uint8_t *lock;   /* [cap] spin locks */
    _Atomic uint8_t *dead;   /* [cap] tombstones */
    uint32_t *slots;         /* label table: node + 1, 0 = empty; linear probing */
    size_t nslots, live;     /* (mu) */
    _Atomic uint64_t ep;     /* (top + 1) << 32 | entry; 0 = empty graph */
    _Atomic size_t ntomb;
};

/* ---- dot-product kernels: floats . halves, n a multiple of 16 ---- */

typedef float (*dot_fn)(const float *a, const uint16_t *b, int n);

static float dot_generic(const float *a, const uint16_t *b, int n)
{
    float s[8] = {0};
    for (int i = 0; i < n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += a[i + j] * patch_f16_to_f32(b[i + j]);
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx2,fma,f16c"))) static float dot_avx2(const float *a, const uint16_t *b,
                                                              int n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 16) {
        const __m256 b0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i)));
        const __m256 b1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + i + 8)));
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), b0, s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), b1, s1);
    }
    s0 = _mm256_add_ps(s0, s1);
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps(s0, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));
    return _mm_cvtss_f32(x);
}

__attribute__((target("avx512f"))) static float dot_avx512(const float *a, const uint16_t *b,
                                                          int n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512 b0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(b + i)));
        const __m512 b1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(b + i + 16)));
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), b0, s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), b1, s1);
    }
    if (i < n)
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i),
                             _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(b + i))), s0);
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}
#endif

static dot_fn dot_kernel;
static const char *dot_name = "generic";
static pthread_once_t dot_once = PTHREAD_ONCE_INIT;

static void choose_kernel(void)
{
    dot_kernel = dot_generic;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        dot_kernel = dot_avx512;
        dot_name = "avx512";
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        /* Every AVX2 CPU has F16C (clang's builtin cannot name it). */
        dot_kernel = dot_avx2;
        dot_name = "avx2";
    }
#endif
}

const char *hnsw_kernel(void)
{
    pthread_once(&dot_once, choose_kernel);
    return dot_name;
}

/* ---- small helpers ---- */

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static void spin_lock(_Atomic uint8_t *l)
{
    while (atomic_exchange_explicit(l, 1, memory_order_acquire))
        while (atomic_load_explicit(l, memory_order_relaxed)) {
#if defined(__x86_64__) || defined(__i386__)
            _mm_pause();
#endif
        }
}
static void spin_unlock(_Atomic uint8_t *l) { atomic_store_explicit(l, 0, memory_order_release); }

static inline const uint16_t *vec_of(const struct hnsw *h, uint32_t id)
{
    return h->vec + (size_t)id * (size_t)h->stride;
}
/* Node id's vector as floats in out[stride]. */
static void vec_decode(const struct hnsw *h, uint32_t id, float *out)
{
    codec_f16_decode(vec_of(h, id), h->stride, out);
}
static inline float dist(const struct hnsw *h, const float *q, uint32_t id)
{
    return 1.0f - dot_kernel(q, vec_of(h, id), h->stride);
}
/* The link list of node id at level l: [0] = count, then ids. */
static inline uint32_t *links(const struct hnsw *h, uint32_t id, int l)
{
    if (l == 0) return h->link0 + (size_t)id * (size_t)(1 + h->m0);
    return h->up[id] + (size_t)(l - 1) * (size_t)(1 + h->m);
}

/* Copies the first w components of v, renormalised, into out[stride] (padded with zeros). */
static void unit_prefix(const float *v, int w, int stride, float *out)
{
    double s = 0;
    for (int i = 0; i < w; i++) s += (double)v[i] * v[i];
    const float inv = s > 0 ? (float)(1.0 / sqrt(s)) : 0.0f;
    for (int i = 0; i < w; i++) out[i] = v[i] * inv;
    for (int i = w; i < stride; i++) out[i] = 0.0f;
}

/* ---- per-thread scratch: visited tags, heaps, a query buffer ---- */

struct cand {
    float d;
    uint32_t id;
};

struct scratch {
    uint32_t *tag;
    size_t tagcap;
    uint32_t epoch;
    struct cand *c, *r; /* candidate min-heap, result max-heap */
    size_t ccap, rcap;
    float *q, *t; /* [qcap]: the query or new node; a node decoded */
    int qcap;
};

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *p)
{
    struct scratch *s = p;
    if (!s) return;
    free(s->tag);
    free(s->c);
    free(s->r);
    free(s->q);
    free(s->t);
    free(s);
}
static void scratch_init(void) { pthread_key_create(&scratch_key, scratch_free); }

static struct scratch *scratch_get(size_t cap, int stride)
{
    pthread_once(&scratch_once, scratch_init);
    struct scratch *s = pthread_getspecific(scratch_key);
    if (!s) {
        if (!(s = calloc(1, sizeof *s))) return NULL;
        pthread_setspecific(scratch_key, s);
    }
    if (s->tagcap < cap) {
        size_t nc = cap + cap / 2 + 1024;
        uint32_t *t = calloc(nc, sizeof *t);
        if (!t) return NULL;
        free(s->tag);
        s->tag = t;
        s->tagcap = nc;
        s->epoch = 0;
    }
    if (++s->epoch == 0) {
        memset(s->tag, 0, s->tagcap * sizeof *s->tag);
        s->epoch = 1;
    }
    if (s->qcap < stride) {
        float *q = NULL, *t = NULL;
        if (posix_memalign((void **)&q, 64, (size_t)stride * sizeof *q)) return NULL;
        if (posix_memalign((void **)&t, 64, (size_t)stride * sizeof *t)) {
            free(q);
            return NULL;
        }
        free(s->q);
        free(s->t);
        s->q = q;
        s->t = t;
        s->qcap = stride;
    }
    return s;
}

static int reserve_cand(struct cand **p, size_t *cap, size_t need)
{
    if (need <= *cap) return 0;
    size_t nc = need * 2 + 64;
    struct cand *x = realloc(*p, nc * sizeof *x);
    if (!x) return -1;
    *p = x;
    *cap = nc;
    return 0;
}

/* Min-heap (by d) push/pop; max-heap the same with the comparison reversed. */
static void heap_push(struct cand *a, size_t *n, struct cand x, int max)
{
    size_t i = (*n)++;
    while (i) {
        size_t p = (i - 1) / 2;
        if (max ? a[p].d >= x.d : a[p].d <= x.d) break;
        a[i] = a[p];
        i = p;
    }
    a[i] = x;
}
static struct cand heap_pop(struct cand *a, size_t *n, int max)
{
    struct cand top = a[0], x = a[--*n];
    size_t i = 0, len = *n;
    for (;;) {
        size_t l = 2 * i + 1, b = l;
        if (l >= len) break;
        if (l + 1 < len && (max ? a[l + 1].d > a[l].d : a[l + 1].d < a[l].d)) b = l + 1;
        if (max ? a[b].d <= x.d : a[b].d >= x.d) break;
        a[i] = a[b];
        i = b;
    }
    if (len) a[i] = x;
    return top;
}

static int cmp_cand(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    if (x->d != y->d) return x->d < y->d ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Beam search at level l from ep: the ef best into s->r (a max-heap of *nr).
 * filter: results hold only live nodes that accept takes; all nodes route. */
static int search_layer(struct hnsw *h, struct scratch *s, const float *q, uint32_t ep, int l,
                        int ef, int filter, hnsw_accept_fn accept, void *ctx, size_t *nr)
{
    const size_t maxl = (size_t)(l ? h->m : h->m0);
    uint32_t nb[2 * HNSW_M_MAX + 1];
    size_t nc = 0;
    *nr = 0;
    if (reserve_cand(&s->r, &s->rcap, (size_t)ef + 1) || reserve_cand(&s->c, &s->ccap, 64))
        return -1;
    const float d0 = dist(h, q, ep);
    s->tag[ep] = s->epoch;
    heap_push(s->c, &nc, (struct cand){d0, ep}, 0);
    if (!filter || (!atomic_load_explicit(&h->dead[ep], memory_order_relaxed) &&
                    (!accept || accept(h->label[ep], ctx))))
        heap_push(s->r, nr, (struct cand){d0, ep}, 1);
    float bound = *nr ? s->r[0].d : INFINITY;
    while (nc) {
        const struct cand c = heap_pop(s->c, &nc, 0);
        if (c.d > bound && *nr >= (size_t)ef) break;
        spin_lock(&h->lock[c.id]);
        const uint32_t *ls = links(h, c.id, l);
        size_t cnt = ls[0] <= maxl ? ls[0] : maxl;
        memcpy(nb, ls + 1, cnt * sizeof *nb);
        spin_unlock(&h->lock[c.id]);
        size_t keep = 0;
        for (size_t i = 0; i < cnt; i++) {
            const uint32_t id = nb[i];
            if (s->tag[id] == s->epoch) continue;
            s->tag[id] = s->epoch;
            nb[keep++] = id;
            __builtin_prefetch(vec_of(h, id));
            __builtin_prefetch(vec_of(h, id) + 32);
        }
        if (reserve_cand(&s->c, &s->ccap, nc + keep)) return -1;
        for (size_t i = 0; i < keep; i++) {
            const uint32_t id = nb[i];
            if (i + 1 < keep) {
                __builtin_prefetch(vec_of(h, nb[i + 1]) + 64);
                __builtin_prefetch(vec_of(h, nb[i + 1]) + 96);
            }
            const float d = dist(h, q, id);
            if (*nr < (size_t)ef || d < bound) {
                heap_push(s->c, &nc, (struct cand){d, id}, 0);
                if (!filter || (!atomic_load_explicit(&h->dead[id], memory_order_relaxed) &&
                                (!accept || accept(h->label[id], ctx)))) {
                    heap_push(s->r, nr, (struct cand){d, id}, 1);
                    if (*nr > (size_t)ef) heap_pop(s->r, nr, 1);
                    bound = s->r[0].d;
                }
            }
        }
    }
    return 0;
}

/* The heuristic of the HNSW paper: from cands sorted nearest first, keep one
 * when it is nearer to the new node than to every one kept so far. tmp holds
 * stride floats. */
static int select_neighbors(const struct hnsw *h, const struct cand *cands, size_t n, int max,
                            uint32_t *out, float *tmp)
{
    int k = 0;
    for (size_t i = 0; i < n && k < max; i++) {
        if (k) vec_decode(h, cands[i].id, tmp);
        int good = 1;
        for (int j = 0; j < k && good; j++)
            if (dist(h, tmp, out[j]) < cands[i].d) good = 0;
        if (good) out[k++] = cands[i].id;
    }
    return k;
}

/* Adds a link e -> id at level l, pruning e's list with the heuristic when
 * full; tmp holds stride floats. */
static void link_back(struct hnsw *h, uint32_t e, uint32_t id, int l, float *tmp)
{
    const int maxl = l ? h->m : h->m0;
    struct cand buf[2 * HNSW_M_MAX + 1];
    uint32_t sel[2 * HNSW_M_MAX + 1];
    spin_lock(&h->lock[e]);
    uint32_t *ls = links(h, e, l);
    int cnt = (int)ls[0];
    int present = 0;
    for (int i = 0; i < cnt && !present; i++) present = ls[1 + i] == id;
    if (!present) {
        if (cnt < maxl) {
            ls[1 + cnt] = id;
            ls[0] = (uint32_t)(cnt + 1);
        } else {
            vec_decode(h, e, tmp);
            for (int i = 0; i < cnt; i++)
                buf[i] = (struct cand){dist(h, tmp, ls[1 + i]), ls[1 + i]};
            buf[cnt] = (struct cand){dist(h, tmp, id), id};
            qsort(buf, (size_t)cnt + 1, sizeof *buf, cmp_cand);
            int k = select_neighbors(h, buf, (size_t)cnt + 1, maxl, sel, tmp);
            /* Fill the list with the nearest of those the heuristic left out, so
             * that pruning keeps in-links (a node without any is unreachable). */
            for (int i = 0; i <= cnt && k < maxl; i++) {
                int kept = 0;
                for (int j = 0; j < k && !kept; j++) kept = sel[j] == buf[i].id;
                if (!kept) sel[k++] = buf[i].id;
            }
            memcpy(ls + 1, sel, (size_t)k * sizeof *sel);
            ls[0] = (uint32_t)k;
        }
    }
    spin_unlock(&h->lock[e]);
}

/* ---- the label table (under mu) ---- */

static size_t slot_of(const struct hnsw *h, int64_t label)
{
    const size_t mask = h->nslots - 1;
    for (size_t i = mix64((uint64_t)label) & mask;; i = (i + 1) & mask) {
        const uint32_t v = h->slots[i];
        if (!v || h->label[v - 1] == label) return i;
    }
}

static int table_grow(struct hnsw *h)
{
    const size_t ns = h->nslots ? 2 * h->nslots : 1024;
    uint32_t *old = h->slots;
    const size_t on = h->nslots;
    if (!(h->slots = calloc(ns, sizeof *h->slots))) {
        h->slots = old;
        return -1;
    }
    h->nslots = ns;
    for (size_t i = 0; i < on; i++)
        if (old[i]) h->slots[slot_of(h, h->label[old[i] - 1])] = old[i];
    free(old);
    return 0;
}

static void table_remove(struct hnsw *h, size_t i)
{
    const size_t mask = h->nslots - 1;
    h->slots[i] = 0;
    for (size_t j = (i + 1) & mask; h->slots[j]; j = (j + 1) & mask) {
        const uint32_t v = h->slots[j];
        h->slots[j] = 0;
        h->slots[slot_of(h, h->label[v - 1])] = v;
    }
    h->live--;
}

/* ---- creation, growth ---- */

struct hnsw *hnsw_create(int width, int m, int ef_construction, int ef, char *err, size_t errlen)
{
    if (width < 1 || width > HNSW_WIDTH_MAX || m < 2 || m > HNSW_M_MAX ||
        ef_construction < m || ef_construction > HNSW_EF_MAX || ef < 1 || ef > HNSW_EF_MAX) {
        set_err(err, errlen, "hnsw: bad parameters (width %d, m %d, ef_construction %d, ef %d)",
                width, m, ef_construction, ef);
        return NULL;
    }
    pthread_once(&dot_once, choose_kernel);
    struct hnsw *h = calloc(1, sizeof *h);
    if (!h) {
        set_err(err, errlen, "hnsw: out of memory");
        return NULL;
    }
    h->w = width;
    h->stride = (width + 15) / 16 * 16;
    h->m = m;
    h->m0 = 2 * m;
    h->efc = ef_construction;
    atomic_init(&h->ef, ef);
    h->ml = 1.0 / log((double)m);
    pthread_rwlock_init(&h->grow, NULL);
    pthread_mutex_init(&h->mu, NULL);
    return h;
}

void hnsw_free(struct hnsw *h)
{
    if (!h) return;
    for (size_t i = 0; i < h->n; i++) free(h->up[i]);
    free(h->vec);
    free(h->link0);
    free(h->up);
    free(h->label);
    free(h->level);
    free((void *)h->lock);
    free((void *)h->dead);
    free(h->slots);
    pthread_rwlock_destroy(&h->grow);
    pthread_mutex_destroy(&h->mu);
    free(h);
}

/* Under grow held exclusively. */
static int grow_to(struct hnsw *h, size_t cap)
{
    if (cap <= h->cap) return 0;
    if (cap > UINT32_MAX - 1) return -1;
    uint16_t *v = NULL;
    if (posix_memalign((void **)&v, 64, cap * (size_t)h->stride * sizeof *v)) return -1;
    uint32_t *l0 = malloc(cap * (size_t)(1 + h->m0) * sizeof *l0);
    uint32_t **up = malloc(cap * sizeof *up);
    int64_t *lab = malloc(cap * sizeof *lab);
    uint8_t *lev = malloc(cap);
    _Atomic uint8_t *lk = calloc(cap, 1), *dd = calloc(cap, 1);
    if (!l0 || !up || !lab || !lev || !lk || !dd) {
        free(v);
        free(l0);
        free(up);
        free(lab);
        free(lev);
        free((void *)lk);
        free((void *)dd);
        return -1;
    }
    const size_t n = h->cap;
    if (n) {
        memcpy(v, h->vec, n * (size_t)h->stride * sizeof *v);
        memcpy(l0, h->link0, n * (size_t)(1 + h->m0) * sizeof *l0);
        memcpy(up, h->up, n * sizeof *up);
        memcpy(lab, h->label, n * sizeof *lab);
        memcpy(lev, h->level, n);
        for (size_t i = 0; i < n; i++) {
            atomic_init(&lk[i], 0);
            atomic_init(&dd[i], atomic_load(&h->dead[i]));
        }
    }
    free(h->vec);
    free(h->link0);
    free(h->up);
    free(h->label);
    free(h->level);
    free((void *)h->lock);
    free((void *)h->dead);
    h->vec = v;
    h->link0 = l0;
    h->up = up;
    h->label = lab;
    h->level = lev;
    h->lock = lk;
    h->dead = dd;
    h->cap = cap;
    return 0;
}

int hnsw_reserve(struct hnsw *h, size_t n)
{
    pthread_rwlock_wrlock(&h->grow);
    pthread_mutex_lock(&h->mu);
    int rc = grow_to(h, n);
    while (!rc && h->nslots < 2 * n) rc = table_grow(h);
    pthread_mutex_unlock(&h->mu);
    pthread_rwlock_unlock(&h->grow);
    return rc;
}

/* ---- writes ---- */

/* Under mu: tombstones node id (live, in the table at slot i). */
static void tombstone(struct hnsw *h, size_t slot, uint32_t id)
{
    table_remove(h, slot);
    atomic_store(&h->dead[id], 1);
    atomic_fetch_add(&h->ntomb, 1);
}

int hnsw_delete(struct hnsw *h, int64_t label)
{
    pthread_mutex_lock(&h->mu);
    int rc = -1;
    if (h->nslots) {
        const size_t i = slot_of(h, label);
        if (h->slots[i]) {
            tombstone(h, i, h->slots[i] - 1);
            rc = 0;
        }
    }
    pthread_mutex_unlock(&h->mu);
    return rc;
}

static int random_level(const struct hnsw *h, uint32_t id, int64_t label)
{
    const uint64_t r = mix64(((uint64_t)id << 32) ^ (uint64_t)label ^ 0x5eedf00dULL);
    const double u = ((double)(r >> 11) + 1.0) / 9007199254740993.0; /* (0, 1] */
    int l = (int)(-log(u) * h->ml);
    return l > MAX_LEVEL ? MAX_LEVEL : l;
}

/* Allocates node id for label (tombstoning a live node of that label); under
 * no lock on entry, returns with grow held shared. Lock order: grow, then mu. */
static int alloc_node(struct hnsw *h, int64_t label, uint32_t *out)
{
    for (;;) {
        pthread_rwlock_rdlock(&h->grow);
        pthread_mutex_lock(&h->mu);
        if (h->n < h->cap && h->nslots >= 2 * (h->live + 1)) break;
        pthread_mutex_unlock(&h->mu);
        pthread_rwlock_unlock(&h->grow);
        pthread_rwlock_wrlock(&h->grow);
        pthread_mutex_lock(&h->mu);
        const size_t want = h->cap < 1024 ? 1024 : h->cap * 2;
        int rc = h->n >= h->cap ? grow_to(h, want) : 0;
        while (!rc && h->nslots < 2 * (h->live + 1)) rc = table_grow(h);
        pthread_mutex_unlock(&h->mu);
        pthread_rwlock_unlock(&h->grow);
        if (rc) return -1;
    }
    const uint32_t id = (uint32_t)h->n++;
    h->label[id] = label;
    const size_t i = slot_of(h, label);
    if (h->slots[i]) tombstone(h, i, h->slots[i] - 1);
    h->slots[slot_of(h, label)] = id + 1;
    h->live++;
    pthread_mutex_unlock(&h->mu);
    *out = id;
    return 0;
}

/* The greedy walk of one level: the node nearest q reachable from *cur. */
static void greedy(struct hnsw *h, const float *q, int l, uint32_t *cur, float *curd)
{
    uint32_t nb[HNSW_M_MAX + 1];
    for (int changed = 1; changed;) {
        changed = 0;
        spin_lock(&h->lock[*cur]);
        const uint32_t *ls = links(h, *cur, l);
        const size_t cnt = ls[0] <= (uint32_t)h->m ? ls[0] : (uint32_t)h->m;
        memcpy(nb, ls + 1, cnt * sizeof *nb);
        spin_unlock(&h->lock[*cur]);
        for (size_t i = 0; i < cnt; i++) {
            const float d = dist(h, q, nb[i]);
            if (d < *curd) {
                *curd = d;
                *cur = nb[i];
                changed = 1;
            }
        }
    }
}

int hnsw_insert(struct hnsw *h, int64_t label, const float *vec)
{
    uint32_t id;
    if (alloc_node(h, label, &id)) return -1;
    /* grow is held shared from here on. */
    const int lvl = random_level(h, id, label);
    struct scratch *s = scratch_get(h->cap, h->stride);
    float *v = s ? s->q : NULL; /* the node's vector as floats: its searches' query */
    uint16_t *stored = h->vec + (size_t)id * (size_t)h->stride;
    if (v) {
        unit_prefix(vec, h->w, h->stride, v);
        codec_f16_encode(v, h->stride, stored);
    } else {
        memset(stored, 0, (size_t)h->stride * sizeof *stored);
    }
    links(h, id, 0)[0] = 0;
    h->level[id] = (uint8_t)lvl;
    h->up[id] = NULL;
    atomic_store(&h->dead[id], 0);
    if (lvl > 0) {
        h->up[id] = calloc((size_t)lvl * (size_t)(1 + h->m), sizeof(uint32_t));
        if (!h->up[id]) {
            h->level[id] = 0; /* stays a level-0 node without upper links */
        }
    }
    const int mylvl = h->level[id];
    int rc = s ? 0 : -1;
    uint64_t ep = atomic_load(&h->ep);
    if (!rc && !ep) {
        pthread_mutex_lock(&h->mu);
        ep = atomic_load(&h->ep);
        if (!ep) atomic_store(&h->ep, ((uint64_t)(mylvl + 1) << 32) | id);
        pthread_mutex_unlock(&h->mu);
        if (!ep) {
            atomic_fetch_add(&h->published, 1);
            pthread_rwlock_unlock(&h->grow);
            return 0;
        }
    }
    if (!rc) {
        const int top = (int)(ep >> 32) - 1;
        uint32_t cur = (uint32_t)ep;
        float curd = dist(h, v, cur);
        for (int l = top; l > mylvl; l--) greedy(h, v, l, &cur, &curd);
        /* The node's own lists at every level first, the links back to it after:
         * until then nothing leads to it, so no walk meets it half-linked. */
        uint32_t sel[MAX_LEVEL + 1][HNSW_M_MAX];
        int nsel[MAX_LEVEL + 1] = {0};
        const int from = mylvl < top ? mylvl : top;
        for (int l = from; l >= 0 && !rc; l--) {
            if (++s->epoch == 0) {
                memset(s->tag, 0, s->tagcap * sizeof *s->tag);
                s->epoch = 1;
            }
            size_t nr = 0;
            if (search_layer(h, s, v, cur, l, h->efc, 0, NULL, NULL, &nr)) {
                rc = -1;
                break;
            }
            qsort(s->r, nr, sizeof *s->r, cmp_cand);
            const int k = select_neighbors(h, s->r, nr, h->m, sel[l], s->t);
            nsel[l] = k;
            spin_lock(&h->lock[id]);
            uint32_t *ls = links(h, id, l);
            memcpy(ls + 1, sel[l], (size_t)k * sizeof *sel[l]);
            ls[0] = (uint32_t)k;
            spin_unlock(&h->lock[id]);
            cur = s->r[0].id;
        }
        for (int l = from; l >= 0 && !rc; l--)
            for (int i = 0; i < nsel[l]; i++) link_back(h, sel[l][i], id, l, s->t);
    }
    atomic_fetch_add(&h->published, 1);
    pthread_rwlock_unlock(&h->grow);
    if (!rc && mylvl > (int)(atomic_load(&h->ep) >> 32) - 1) {
        pthread_mutex_lock(&h->mu);
        if (mylvl > (int)(atomic_load(&h->ep) >> 32) - 1)
            atomic_store(&h->ep, ((uint64_t)(mylvl + 1) << 32) | id);
        pthread_mutex_unlock(&h->mu);
    }
    return rc;
}

/* ---- reads ---- */

int hnsw_search(struct hnsw *h, const float *query, int k, int ef, hnsw_accept_fn accept,
                void *ctx, int64_t *labels, float *dists)
{
    if (k < 1) return 0;
    if (ef <= 0) ef = atomic_load(&h->ef);
    if (ef < k) ef = k;
    pthread_rwlock_rdlock(&h->grow);
    const uint64_t ep = atomic_load(&h->ep);
    if (!ep) {
        pthread_rwlock_unlock(&h->grow);
        return 0;
    }
    struct scratch *s = scratch_get(h->cap, h->stride);
    if (!s) {
        pthread_rwlock_unlock(&h->grow);
        return -1;
    }
    float *q = s->q;
    unit_prefix(query, h->w, h->stride, q);
    const int top = (int)(ep >> 32) - 1;
    uint32_t cur = (uint32_t)ep;
    float curd = dist(h, q, cur);
    for (int l = top; l > 0; l--) greedy(h, q, l, &cur, &curd);
    size_t nr = 0;
    int rc = search_layer(h, s, q, cur, 0, ef, 1, accept, ctx, &nr);
    int n = 0;
    if (!rc) {
        qsort(s->r, nr, sizeof *s->r, cmp_cand);
        n = nr < (size_t)k ? (int)nr : k;
        for (int i = 0; i < n; i++) {
            labels[i] = h->label[s->r[i].id];
            if (dists) dists[i] = s->r[i].d;
        }
    }
    pthread_rwlock_unlock(&h->grow);
    return rc ? -1 : n;
}

bool hnsw_lookup(struct hnsw *h, int64_t label, float *prefix)
{
    pthread_rwlock_rdlock(&h->grow);
    pthread_mutex_lock(&h->mu);
    uint32_t v = h->nslots ? h->slots[slot_of(h, label)] : 0;
    if (v && prefix) codec_f16_decode(vec_of(h, v - 1), h->w, prefix);
    pthread_mutex_unlock(&h->mu);
    pthread_rwlock_unlock(&h->grow);
    return v != 0;
}

int hnsw_labels(struct hnsw *h, int64_t **out, size_t *n)
{
    pthread_rwlock_rdlock(&h->grow);
    pthread_mutex_lock(&h->mu);
    int64_t *a = malloc((h->live ? h->live : 1) * sizeof *a);
    size_t k = 0;
    for (size_t i = 0; a && i < h->n; i++)
        if (!atomic_load(&h->dead[i])) a[k++] = h->label[i];
    pthread_mutex_unlock(&h->mu);
    pthread_rwlock_unlock(&h->grow);
    *out = a;
    *n = k;
    return a ? 0 : -1;
}

size_t hnsw_nodes(const struct hnsw *h) { return atomic_load(&((struct hnsw *)h)->published); }
size_t hnsw_tombstones(const struct hnsw *h) { return atomic_load(&((struct hnsw *)h)->ntomb); }
int hnsw_width(const struct hnsw *h) { return h->w; }
int hnsw_m(const struct hnsw *h) { return h->m; }
int hnsw_ef_construction(const struct hnsw *h) { return h->efc; }
int hnsw_ef(const struct hnsw *h) { return atomic_load(&((struct hnsw *)h)->ef); }
void hnsw_set_ef(struct hnsw *h, int ef)
{
    if (ef >= 1 && ef <= HNSW_EF_MAX) atomic_store(&h->ef, ef);
}

size_t hnsw_memory(const struct hnsw *h)
{
    size_t b = h->cap * ((size_t)h->stride * sizeof *h->vec + (size_t)(1 + h->m0) * 4 +
                         sizeof(void *) + 8 + 3);
    for (size_t i = 0; i < h->n; i++) b += (size_t)h->level[i] * (size_t)(1 + h->m) * 4;
    return b + h->nslots * 4;
}

/* ---- bulk builds ---- */

struct bulk {
    struct hnsw *h;
    const int64_t *labels;
    const float *vectors;
    size_t n, ld;
    _Atomic size_t next;
    _Atomic int failed;
    _Atomic size_t *progress;
    _Atomic int *cancel;
};

static void *bulk_worker(void *p)
{
    struct bulk *b = p;
    for (;;) {
        const size_t i = atomic_fetch_add(&b->next, 1);
        if (i >= b->n || atomic_load(&b->failed)) break;
        if (b->cancel && atomic_load(b->cancel)) {
            atomic_store(&b->failed, 2);
            break;
        }
        if (hnsw_insert(b->h, b->labels[i], b->vectors + i * b->ld)) atomic_store(&b->failed, 1);
        if (b->progress) atomic_fetch_add(b->progress, 1);
    }
    return NULL;
}

int hnsw_insert_many(struct hnsw *h, const int64_t *labels, const float *vectors, size_t n,
                     size_t ld, int threads, _Atomic size_t *progress, _Atomic int *cancel)
{
    if (hnsw_reserve(h, hnsw_nodes(h) + n)) return -1;
    struct bulk b = {.h = h, .labels = labels, .vectors = vectors, .n = n, .ld = ld,
                     .progress = progress, .cancel = cancel};
    atomic_init(&b.next, 0);
    atomic_init(&b.failed, 0);
    /* The first nodes alone, so that the graph has an entry before threads share it. */
    const size_t head = n < 16 ? n : 16;
    for (size_t i = 0; i < head; i++) {
        if (hnsw_insert(h, labels[i], vectors + i * ld)) return -1;
        if (progress) atomic_fetch_add(progress, 1);
    }
    atomic_store(&b.next, head);
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64;
    pthread_t t[64];
    int started = 0;
    for (int i = 1; i < threads; i++)
        if (!pthread_create(&t[started], NULL, bulk_worker, &b)) started++;
    bulk_worker(&b);
    for (int i = 0; i < started; i++) pthread_join(t[i], NULL);
    const int f = atomic_load(&b.failed);
    return f == 2 ? -2 : f ? -1 : 0;
}

struct hnsw *hnsw_compact(struct hnsw *h, int threads)
{
    char err[ERR_LEN];
    struct hnsw *g = hnsw_create(h->w, h->m, h->efc, hnsw_ef(h), err, sizeof err);
    if (!g) return NULL;
    pthread_rwlock_rdlock(&h->grow);
    pthread_mutex_lock(&h->mu);
    const size_t n = h->n, live = h->live;
    int64_t *lab = malloc((live ? live : 1) * sizeof *lab);
    float *v = malloc((live ? live : 1) * (size_t)h->stride * sizeof *v);
    size_t k = 0;
    for (size_t i = 0; lab && v && i < n; i++)
        if (!atomic_load(&h->dead[i])) {
            lab[k] = h->label[i];
            vec_decode(h, (uint32_t)i, v + k * (size_t)h->stride);
            k++;
        }
    pthread_mutex_unlock(&h->mu);
    pthread_rwlock_unlock(&h->grow);
    int rc = lab && v ? hnsw_insert_many(g, lab, v, k, (size_t)h->stride, threads, NULL, NULL) : -1;
    free(lab);
    free(v);
    if (rc) {
        hnsw_free(g);
        return NULL;
    }
    return g;
}

/* ---- files ---- */

#define FILE_MAGIC "FRHNSW\0\1"
#define FILE_VERSION 2u /* 2: vectors as halves (1 held floats: rebuilt) */

struct file_header {
    char magic[8];
    uint32_t version, width, m, efc, ef, top;
    uint32_t entry, pad;
    uint64_t nodes;
    int64_t generation;
};

struct wsum {
    FILE *f;
    uint64_t h;
    int failed;
};

static void sum_bytes(uint64_t *h, const void *p, size_t len)
{
    const unsigned char *b = p;
    uint64_t x = *h;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, b + i, 8);
        x = (x ^ w) * 0x100000001b3ULL;
        x ^= x >> 29;
    }
    for (; i < len; i++) x = (x ^ b[i]) * 0x100000001b3ULL;
    *h = x;
}

static void wput(struct wsum *w, const void *p, size_t len)
{
    if (w->failed || !len) return;
    sum_bytes(&w->h, p, len);
    if (fwrite(p, 1, len, w->f) != len) w->failed = 1;
}

int hnsw_save(struct hnsw *h, const char *path, int64_t generation, char *err, size_t errlen)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return set_err(err, errlen, "hnsw: path too long");
    FILE *f = fopen(tmp, "wb");
    if (!f) return set_err(err, errlen, "hnsw: cannot write %s: %s", tmp, strerror(errno));
    pthread_rwlock_rdlock(&h->grow);
    pthread_mutex_lock(&h->mu);
    const uint64_t ep = atomic_load(&h->ep);
    struct file_header hd = {.version = FILE_VERSION, .width = (uint32_t)h->w,
                             .m = (uint32_t)h->m, .efc = (uint32_t)h->efc,
                             .ef = (uint32_t)hnsw_ef(h), .top = (uint32_t)(ep >> 32),
                             .entry = (uint32_t)ep, .nodes = h->n, .generation = generation};
    memcpy(hd.magic, FILE_MAGIC, 8);
    struct wsum w = {.f = f, .h = 1469598103934665603ULL};
    const size_t n = h->n;
    wput(&w, &hd, sizeof hd);
    wput(&w, h->label, n * sizeof *h->label);
    wput(&w, h->level, n);
    uint8_t *dead = malloc(n ? n : 1);
    if (!dead) w.failed = 1;
    for (size_t i = 0; dead && i < n; i++) dead[i] = atomic_load(&h->dead[i]);
    if (dead) wput(&w, dead, n);
    free(dead);
    for (size_t i = 0; i < n; i++) wput(&w, vec_of(h, (uint32_t)i), (size_t)h->w * sizeof *h->vec);
    for (size_t i = 0; i < n; i++) {
        spin_lock(&h->lock[i]);
        wput(&w, links(h, (uint32_t)i, 0), (size_t)(1 + h->m0) * sizeof(uint32_t));
        if (h->level[i])
            wput(&w, h->up[i], (size_t)h->level[i] * (size_t)(1 + h->m) * sizeof(uint32_t));
        spin_unlock(&h->lock[i]);
    }
    pthread_mutex_unlock(&h->mu);
    pthread_rwlock_unlock(&h->grow);
    const uint64_t sum = w.h;
    if (!w.failed && fwrite(&sum, sizeof sum, 1, f) != 1) w.failed = 1;
    if (fflush(f) || fsync(fileno(f))) w.failed = 1;
    if (fclose(f)) w.failed = 1;
    if (w.failed || rename(tmp, path)) {
        const int e = errno;
        unlink(tmp);
        return set_err(err, errlen, "hnsw: cannot write %s: %s", path, strerror(e));
    }
    /* The rename itself is durable once the directory is. */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) {
        *slash = '\0';
        if (!dir[0]) strcpy(dir, "/");
    } else {
        strcpy(dir, ".");
    }
    const int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    return 0;
}

struct rsum {
    const unsigned char *p;
    size_t len, off;
    uint64_t h;
};

static int rget(struct rsum *r, void *dst, size_t len)
{
    if (len > r->len - r->off) return -1;
    memcpy(dst, r->p + r->off, len);
    sum_bytes(&r->h, r->p + r->off, len);
    r->off += len;
    return 0;
}

struct hnsw *hnsw_load(const char *path, int64_t *generation, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        set_err(err, errlen, "hnsw: cannot read %s: %s", path, strerror(errno));
        return NULL;
    }
    unsigned char *buf = NULL;
    long len = -1;
    if (!fseek(f, 0, SEEK_END)) len = ftell(f);
    if (len >= 0 && !fseek(f, 0, SEEK_SET) && (buf = malloc(len ? (size_t)len : 1)) &&
        fread(buf, 1, (size_t)len, f) != (size_t)len) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (!buf) {
        set_err(err, errlen, "hnsw: cannot read %s", path);
        return NULL;
    }
    struct rsum r = {.p = buf, .len = (size_t)len, .h = 1469598103934665603ULL};
    struct file_header hd;
    struct hnsw *h = NULL;
    const char *why = NULL;
    if (rget(&r, &hd, sizeof hd) || memcmp(hd.magic, FILE_MAGIC, 8)) why = "not an HNSW file";
    else if (hd.version != FILE_VERSION) why = "another format version";
    else if (hd.width < 1 || hd.width > HNSW_WIDTH_MAX || hd.m < 2 || hd.m > HNSW_M_MAX ||
             hd.efc < hd.m || hd.efc > HNSW_EF_MAX || hd.ef < 1 || hd.ef > HNSW_EF_MAX ||
             hd.nodes > (uint64_t)UINT32_MAX - 1 || hd.top > MAX_LEVEL + 1 ||
             (hd.nodes == 0) != (hd.top == 0) || (hd.nodes && hd.entry >= hd.nodes) ||
             hd.nodes > (uint64_t)len) /* every node takes more than a byte */
        why = "bad header";
    if (!why && !(h = hnsw_create((int)hd.width, (int)hd.m, (int)hd.efc, (int)hd.ef, err, errlen)))
        why = "out of memory";
    const size_t n = why ? 0 : (size_t)hd.nodes;
    if (!why && n && hnsw_reserve(h, n)) why = "out of memory";
    uint8_t *dead = why ? NULL : malloc(n ? n : 1);
    if (!why && !dead) why = "out of memory";
    if (!why && (rget(&r, h->label, n * sizeof *h->label) || rget(&r, h->level, n) ||
                 rget(&r, dead, n)))
        why = "truncated";
    for (size_t i = 0; !why && i < n; i++) {
        if (h->level[i] > MAX_LEVEL || dead[i] > 1 || h->level[i] + 1 > (int)hd.top) {
            why = "bad node";
            break;
        }
        h->up[i] = NULL;
        uint16_t *v = h->vec + i * (size_t)h->stride;
        if (rget(&r, v, (size_t)h->w * sizeof *v)) why = "truncated";
        for (int j = h->w; j < h->stride; j++) v[j] = 0;
        for (int j = 0; !why && j < h->w; j++)
            if ((v[j] & 0x7c00u) == 0x7c00u) why = "bad vector"; /* Inf or NaN */
        h->n = i + 1; /* hnsw_free frees up[0..n) */
    }
    for (size_t i = 0; !why && i < n; i++) {
        uint32_t *l0 = links(h, (uint32_t)i, 0);
        if (rget(&r, l0, (size_t)(1 + h->m0) * sizeof *l0)) why = "truncated";
        if (!why && l0[0] > (uint32_t)h->m0) why = "bad links";
        for (uint32_t j = 0; !why && j < l0[0]; j++)
            if (l0[1 + j] >= n) why = "bad links";
        if (!why && h->level[i]) {
            const size_t cnt = (size_t)h->level[i] * (size_t)(1 + h->m);
            if (!(h->up[i] = malloc(cnt * sizeof(uint32_t)))) why = "out of memory";
            else if (rget(&r, h->up[i], cnt * sizeof(uint32_t))) why = "truncated";
            for (int l = 1; !why && l <= h->level[i]; l++) {
                const uint32_t *ls = links(h, (uint32_t)i, l);
                if (ls[0] > (uint32_t)h->m) why = "bad links";
                for (uint32_t j = 0; !why && j < ls[0]; j++)
                    if (ls[1 + j] >= n || h->level[ls[1 + j]] < l) why = "bad links";
            }
        }
    }
    uint64_t sum = 0;
    const uint64_t want = r.h;
    if (!why && (r.len - r.off != sizeof sum)) why = "truncated or trailing bytes";
    if (!why) {
        memcpy(&sum, r.p + r.off, sizeof sum);
        if (sum != want) why = "checksum mismatch";
    }
    if (!why && n && h->level[hd.entry] + 1 != (int)hd.top) why = "bad entry point";
    /* The label table from the live nodes (a later node of a label wins). */
    for (size_t i = 0; !why && i < n; i++) {
        atomic_store(&h->dead[i], dead[i]);
        if (dead[i]) {
            atomic_fetch_add(&h->ntomb, 1);
            continue;
        }
        const size_t s = slot_of(h, h->label[i]);
        if (h->slots[s]) {
            atomic_store(&h->dead[h->slots[s] - 1], 1);
            atomic_fetch_add(&h->ntomb, 1);
            h->live--;
        }
        h->slots[s] = (uint32_t)i + 1;
        h->live++;
    }
    free(dead);
    free(buf);
    if (why) {
        set_err(err, errlen, "hnsw: %s: %s", path, why);
        hnsw_free(h);
        return NULL;
    }
    atomic_store(&h->published, n);
    atomic_store(&h->ep, n ? ((uint64_t)hd.top << 32) | hd.entry : 0);
    *generation = hd.generation;
    return h;
}
