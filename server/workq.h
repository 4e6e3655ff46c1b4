/* A fixed pool of worker threads with a bounded queue, so that neither HTTP
 * threads nor the batcher's worker wait for slow work. The server keeps three:
 * index work (SQLite commits, searches over large mirrors), background jobs
 * (checkpoint loads, reembeds: apart, so that long jobs never starve
 * searches) and replies (infer requests' callbacks, batcher.h); shutdown
 * joins them all. */
#ifndef FRANCA_WORKQ_H
#define FRANCA_WORKQ_H

#include <stddef.h>

struct workq;
typedef void (*workq_fn)(void *arg);

struct workq *workq_create(int threads, int max_queue, char *err, size_t errlen);
/* Queues fn(arg). Returns 0, or -1 when the queue is full or shutting down
 * (fn is then not called). */
int workq_submit(struct workq *q, workq_fn fn, void *arg);
/* Runs what is queued, then joins the threads and frees the pool. */
void workq_free(struct workq *q);

#endif
