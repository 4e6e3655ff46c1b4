/* The worker pool; see workq.h. */
#include "workq.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "errors.h"

struct work {
    workq_fn fn;
    void *arg;
};

struct workq {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct work *ring;
    int cap, head, count;
    bool stopping;
    int nthreads;
    pthread_t *threads;
};

static void *worker(void *p)
{
    struct workq *q = p;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        while (!q->count && !q->stopping) pthread_cond_wait(&q->cv, &q->mu);
        if (!q->count) break; /* stopping and drained */
        const struct work w = q->ring[q->head];
        q->head = (q->head + 1) % q->cap;
        q->count--;
        pthread_mutex_unlock(&q->mu);
        w.fn(w.arg);
        pthread_mutex_lock(&q->mu);
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

struct workq *workq_create(int threads, int max_queue, char *err, size_t errlen)
{
    struct workq *q = calloc(1, sizeof *q);
    if (!q || threads < 1 || max_queue < 1) {
        free(q);
        set_err(err, errlen, "work queue: bad size or out of memory");
        return NULL;
    }
    q->cap = max_queue;
    q->ring = malloc((size_t)max_queue * sizeof *q->ring);
    q->threads = calloc((size_t)threads, sizeof *q->threads);
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    if (!q->ring || !q->threads) {
        workq_free(q);
        set_err(err, errlen, "work queue: out of memory");
        return NULL;
    }
    for (; q->nthreads < threads; q->nthreads++)
        if (pthread_create(&q->threads[q->nthreads], NULL, worker, q)) {
            workq_free(q);
            set_err(err, errlen, "work queue: cannot start a thread");
            return NULL;
        }
    return q;
}

int workq_submit(struct workq *q, workq_fn fn, void *arg)
{
    pthread_mutex_lock(&q->mu);
    const bool ok = !q->stopping && q->count < q->cap;
    if (ok) {
        q->ring[(q->head + q->count) % q->cap] = (struct work){fn, arg};
        q->count++;
        pthread_cond_signal(&q->cv);
    }
    pthread_mutex_unlock(&q->mu);
    return ok ? 0 : -1;
}

void workq_free(struct workq *q)
{
    if (!q) return;
    pthread_mutex_lock(&q->mu);
    q->stopping = true;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    for (int i = 0; i < q->nthreads; i++) pthread_join(q->threads[i], NULL);
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
    free(q->ring);
    free(q->threads);
    free(q);
}
