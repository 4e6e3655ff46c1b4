/* The cuBLAS search backend (search.h): the CPU backend's driver, with each
 * block of dot products computed on the GPU (engine/cuda_scores.h).
 *
 * Device copies. Per mirror, a cache entry holds device copies of the full and
 * the prefix matrix, each uploaded on first use and again when mirror_version
 * differs from the version it was copied at. Every search runs under the
 * mirror's read lock, and the version only changes under its write lock, so
 * all searches in flight on a mirror see one version: the first of them to
 * need a matrix uploads it under the entry's mutex, the others wait for it
 * there and then read the copy without the mutex (nothing can replace it
 * before they release the read lock). The mutex is only ever taken inside a
 * read lock and never held across a write lock. mirror_free drops the entry
 * through the mirror's free hook.
 *
 * Ranking. Scores come back to pinned host memory block by block (two slots:
 * the host ranks one block while the GPU computes the next) and go through the
 * CPU backend's heaps, so ordering and tie rules are the CPU backend's own;
 * the funnel's re-rank of its shortlist also runs on the host.
 *
 * Threads. Each thread has its own workspace (stream, cuBLAS handle,
 * buffers), created on its first search and freed when it exits; searches on
 * different threads run concurrently. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "index/cuda_scores.h"
#include "errors.h"
#include "index/search.h"

struct cache {
    const struct index_mirror *m;
    pthread_mutex_t lock;             /* guards version and mat during uploads */
    uint64_t version[2];              /* mirror_version at the upload; 0 = none */
    uint64_t rewrite[2];              /* mirror_rewrite_version at the upload */
    struct cuda_scores_matrix *mat[2]; /* SEARCH_MATRIX_FULL, SEARCH_MATRIX_PREFIX */
    struct cache *next;
};

static pthread_mutex_t caches_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cache *caches;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static pthread_key_t ws_key;
static int ws_key_ok;

static void cache_free(struct cache *c)
{
    cuda_scores_matrix_free(c->mat[0]);
    cuda_scores_matrix_free(c->mat[1]);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* The mirror free hook: drops m's device copies (no search runs on m now). */
static void forget_mirror(const struct index_mirror *m)
{
    pthread_mutex_lock(&caches_lock);
    struct cache **p = &caches;
    while (*p && (*p)->m != m) p = &(*p)->next;
    struct cache *c = *p;
    if (c) *p = c->next;
    pthread_mutex_unlock(&caches_lock);
    if (c) cache_free(c);
}

static void ws_destroy(void *ws) { cuda_scores_ws_free(ws); }

static void init(void)
{
    ws_key_ok = pthread_key_create(&ws_key, ws_destroy) == 0;
    mirror_set_free_hook(forget_mirror);
}

/* This thread's workspace, created on first use. */
static struct cuda_scores_ws *thread_ws(char *err, size_t errlen)
{
    pthread_once(&init_once, init);
    if (!ws_key_ok) {
        set_err(err, errlen, "CUDA search: cannot create a thread key");
        return NULL;
    }
    struct cuda_scores_ws *ws = pthread_getspecific(ws_key);
    if (ws) return ws;
    if (cuda_scores_ws_create(&ws, err, errlen)) return NULL;
    if (pthread_setspecific(ws_key, ws)) {
        cuda_scores_ws_free(ws);
        set_err(err, errlen, "CUDA search: cannot keep a workspace for this thread");
        return NULL;
    }
    return ws;
}

/* m's cache entry, created empty on first use; NULL when out of memory. */
static struct cache *cache_of(const struct index_mirror *m)
{
    pthread_mutex_lock(&caches_lock);
    struct cache *c = caches;
    while (c && c->m != m) c = c->next;
    if (!c && (c = calloc(1, sizeof *c))) {
        if (pthread_mutex_init(&c->lock, NULL)) {
            free(c);
            c = NULL;
        } else {
            c->m = m;
            c->next = caches;
            caches = c;
        }
    }
    pthread_mutex_unlock(&caches_lock);
    return c;
}

/* One search on one thread. */
struct pass {
    const struct index_mirror *m;
    struct cache *c;
    struct cuda_scores_ws *ws;
};

/* Makes the device copy of matrix `which` current (the caller holds m's read lock). */
static int ensure_matrix(struct pass *p, enum search_matrix which, char *err, size_t errlen)
{
    const struct index_mirror *m = p->m;
    const uint64_t v = mirror_version(m);
    struct cache *c = p->c;
    int rc = 0;
    pthread_mutex_lock(&c->lock);
    if (c->version[which] != v) {
        /* Only appends since the last upload: copy just the new rows. */
        const uint64_t rw = mirror_rewrite_version(m);
        const int keep_rows = c->version[which] && c->rewrite[which] == rw;
        c->version[which] = 0;
        const int prefix = which == SEARCH_MATRIX_PREFIX;
        rc = cuda_scores_upload(p->ws, &c->mat[which],
                                prefix ? mirror_prefix_matrix(m) : mirror_matrix(m),
                                mirror_count(m), prefix ? mirror_prefix_width(m) : mirror_width(m),
                                keep_rows, err, errlen);
        if (!rc) {
            c->version[which] = v;
            c->rewrite[which] = rw;
        }
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

static int sc_begin(void *ctx, enum search_matrix which, const float *Q, int q, int w,
                    size_t max_rows, int want_sq, char *err, size_t errlen)
{
    struct pass *p = ctx;
    if (ensure_matrix(p, which, err, errlen)) return -1;
    return cuda_scores_begin(p->ws, p->c->mat[which], Q, q, w, max_rows, want_sq, err, errlen);
}

static int sc_launch(void *ctx, int slot, size_t r0, size_t b, char *err, size_t errlen)
{
    return cuda_scores_launch(((struct pass *)ctx)->ws, slot, r0, b, err, errlen);
}

static int sc_wait(void *ctx, int slot, const float **S, const float **sq, char *err,
                   size_t errlen)
{
    return cuda_scores_wait(((struct pass *)ctx)->ws, slot, S, sq, err, errlen);
}

static void sc_end(void *ctx) { cuda_scores_end(((struct pass *)ctx)->ws); }

static int pass_init(struct pass *p, const struct index_mirror *m, char *err, size_t errlen)
{
    p->m = m;
    /* search.c sends compressed mirrors to the CPU; a direct caller learns why. */
    if (mirror_form(m) != STORE_MIRROR_F32)
        return set_err(err, errlen, "CUDA search: the mirror is %s; it scores float32 mirrors "
                       "only", store_mirror_name(mirror_form(m))), STORE_ERR;
    if (!(p->ws = thread_ws(err, errlen))) return STORE_ERR;
    if (!(p->c = cache_of(m))) return set_err(err, errlen, "CUDA search: out of memory"), STORE_ERR;
    return 0;
}

static int cuda_exact(const struct index_mirror *m, const float *queries, int q, int w, int k,
                      const uint8_t *row_mask, struct search_hit *out, int *n_out, char *err,
                      size_t errlen)
{
    struct pass p;
    *n_out = 0;
    const int rc = pass_init(&p, m, err, errlen);
    if (rc) return rc;
    const struct search_scorer sc = {&p, sc_begin, sc_launch, sc_wait, sc_end};
    return search_exact_scored(&sc, m, queries, q, w, k, row_mask, out, n_out, err, errlen);
}

static int cuda_funnel(const struct index_mirror *m, const float *queries, int q, int w, int k,
                       int fw, int shortlist, const uint8_t *row_mask, struct search_hit *out,
                       int *n_out, char *err, size_t errlen)
{
    struct pass p;
    *n_out = 0;
    const int rc = pass_init(&p, m, err, errlen);
    if (rc) return rc;
    const struct search_scorer sc = {&p, sc_begin, sc_launch, sc_wait, sc_end};
    return search_funnel_scored(&sc, m, queries, q, w, k, fw, shortlist, row_mask, out, n_out,
                                err, errlen);
}

const struct search_backend search_backend_cuda = {"cuda", cuda_exact, cuda_funnel};
