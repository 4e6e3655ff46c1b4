/* Dynamic batching: images from concurrent requests are gathered into one
 * vit_forward per (model entry, H, W, intermediate layers).
 *
 * One worker thread per batcher takes the oldest queued job, then gathers the
 * queued jobs with the same key (entry, H, W, and the same intermediate layers
 * with the same norm) in arrival order, up to max_batch,
 * waiting at most max_delay_ms after that oldest job was submitted for more to
 * arrive. Jobs of other keys stay queued for the next batch, and the next batch
 * again starts from the oldest job, so nothing starves. The worker copies the
 * inputs into one contiguous batch, runs the forward (the CPU engine
 * parallelises inside it), scatters the rows into each job's buffers and calls
 * each job's callback.
 *
 * Workspaces: one per (entry, batcher), kept in the entry's workspace slot
 * (registry.h) and so freed with the entry; it is dropped after a batch whose
 * activations exceed max_batch images at the model's default crop size, so a
 * rare huge request does not pin that memory.
 *
 * Admission (why memory stays bounded): a request first admits its tokens
 * (images x (1 + registers + patches)) against a global budget, before it
 * allocates or decodes anything, and keeps them until it is freed; past the
 * budget it is refused (429). Then it submits all its images at once or none
 * (queue full: 429), so a refused request never waits for work of its own.
 * Every batch is made of admitted jobs, so the activations of one forward
 * never exceed the budget's tokens.
 *
 * Cancellation: a job may carry a check that the worker calls just before the
 * job's batch runs; a job whose client has gone is dropped there (counted in
 * the stats) instead of being computed for nobody.
 *
 * Replies: the worker only scatters and calls the jobs' callbacks, which are
 * short. A request made of jobs (infer.h) finishes on the reply pool set with
 * batcher_set_replies, so building its answer (large JSON, safetensors) never
 * holds up the next forward.
 *
 * Submission never blocks: it enqueues or fails at once. */
#ifndef FRANCA_BATCHER_H
#define FRANCA_BATCHER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct model_entry;
struct batcher;

enum batcher_status {
    BATCH_OK = 0,
    BATCH_ERR = -1,       /* invalid job (bad resolution, missing buffers, RASA without RASA
                             tensors): a client mistake, 400/422; or the engine failed, 500 */
    BATCH_FULL = -2,      /* no room now (the queue, or the token budget): 429 with Retry-After */
    BATCH_SHUTDOWN = -3,  /* batcher shut down: 503 */
    BATCH_TOO_LARGE = -4, /* can never be admitted: more images than the whole queue, or more
                             tokens than the whole budget: 413 */
    BATCH_CANCELLED = -5, /* dropped before its forward: nobody waits for the result */
};

struct batch_job;
typedef void (*batch_done_fn)(struct batch_job *job, int status, const char *err, void *user);

struct batch_job {
    /* Set by the submitter; the batcher reads them, never frees them. */
    struct model_entry *entry;  /* acquired by the caller; the batcher takes its own reference
                                   from submit until after the callback */
    int H, W;                   /* input size: multiples of the patch size */
    const float *input;         /* [3, H, W] preprocessed; the job's owner frees it */
    float *cls;                 /* [D] or NULL: final-norm CLS */
    float *patch;               /* [N, D] or NULL: final-norm patch tokens, N = (H/P)(W/P) */
    float *patch_rasa;          /* [N, D] or NULL: RASA-cleaned patch tokens */
    /* Intermediate layers (vit_outputs): only jobs with the same list and norm
     * share a batch, so one forward serves each batch's single list. */
    int n_layers;               /* 0: none; at most VIT_MAX_LAYERS */
    const int *layers;          /* [n_layers] block indices 0..depth-1; read until done */
    bool layer_norm;
    float *layer_cls;           /* [n_layers, D] or NULL: CLS after each listed block */
    float *layer_patch;         /* [n_layers, N, D] or NULL: patch tokens after each block */
    batch_done_fn done;         /* called exactly once, from the worker thread, after a
                                   successful submit; status BATCH_OK, or BATCH_ERR or
                                   BATCH_CANCELLED with a one-line message. The callback
                                   may free the job. */
    void *user;
    bool (*cancelled)(struct batch_job *job, void *user);
                                /* optional: asked (no batcher lock held) just before the
                                   job's batch runs; true drops the job. Must not block. */

    /* Filled by the batcher before done is called (for the metrics histograms). */
    double queue_seconds;       /* submit to start of its batch's forward */
    double infer_seconds;       /* the batch's forward (shared by the batch) */
    int batch_size;             /* images in its batch */

    /* Private to the batcher. */
    struct batch_job *next_;
    double submitted_;
};

struct batcher_stats {
    unsigned long batches;      /* forwards run */
    unsigned long images;       /* images completed (ok or failed) */
    unsigned long failed;       /* images whose forward failed */
    unsigned long rejected_full;       /* submits refused: queue full (429) */
    unsigned long rejected_tokens;     /* admissions refused: token budget in use (429) */
    unsigned long rejected_too_large;  /* refused for good: over the queue or budget (413) */
    unsigned long dropped;             /* queued images dropped: cancelled before their forward */
    int queue_depth;            /* images waiting now */
    int max_batch_seen;
    uint64_t tokens_in_flight;  /* admitted and not released yet */
    uint64_t tokens_peak;       /* the most ever in flight at once */
    uint64_t token_budget;      /* 0: unlimited */
};

/* max_batch >= 1, max_delay_ms >= 0, max_queue >= 1. Starts the worker thread.
 * Returns NULL (with err) on invalid arguments or when the thread cannot start. */
struct batcher *batcher_create(int max_batch, int max_delay_ms, int max_queue, char *err,
                               size_t errlen);

/* The most tokens admitted at once (0: unlimited, the default). Set it before
 * the first admission. */
void batcher_set_token_budget(struct batcher *b, uint64_t max_tokens);

/* Admits tokens against the budget: BATCH_OK (pair with batcher_release),
 * BATCH_FULL when they do not fit beside those in flight, BATCH_TOO_LARGE when
 * they exceed the whole budget, BATCH_SHUTDOWN; err says why. Never blocks. */
int batcher_admit(struct batcher *b, uint64_t tokens, char *err, size_t errlen);
/* Gives back admitted tokens (never below zero). */
void batcher_release(struct batcher *b, uint64_t tokens);

/* Validates and enqueues job (never blocks on inference). BATCH_OK: done will
 * be called exactly once. Otherwise done is never called and err says why:
 * BATCH_ERR for an invalid job, BATCH_FULL, BATCH_SHUTDOWN. */
int batcher_submit(struct batcher *b, struct batch_job *job, char *err, size_t errlen);

/* The same for jobs[0..n-1], all or nothing: either every job is queued
 * (BATCH_OK, each done called once) or none is and no done is called
 * (BATCH_ERR for any invalid job, BATCH_FULL when they do not fit beside the
 * queued ones, BATCH_TOO_LARGE when n exceeds the whole queue, BATCH_SHUTDOWN). */
int batcher_submit_many(struct batcher *b, struct batch_job *jobs, int n, char *err,
                        size_t errlen);

/* Called once per forward pass, from the worker, after the batch ran and before
 * its jobs' callbacks: jobs[0..B-1] with queue_seconds filled, the forward's
 * seconds. For metrics; must not block or touch the jobs afterwards. Set it
 * before the first submit. */
typedef void (*batch_observer_fn)(struct batch_job *const *jobs, int B, double infer_seconds,
                                  void *user);
void batcher_set_observer(struct batcher *b, batch_observer_fn fn, void *user);

/* The pool (workq.h) on which infer requests run their done callbacks, off
 * the worker; the batcher only keeps it for infer.c. NULL (the default): they
 * run on the worker. Set it before the first submit; it must outlive the last
 * request (free it after the batcher). */
struct workq;
void batcher_set_replies(struct batcher *b, struct workq *q);
struct workq *batcher_replies(const struct batcher *b);

/* Images queued and not yet running. */
int batcher_queue_depth(struct batcher *b);

void batcher_get_stats(struct batcher *b, struct batcher_stats *st);

/* Refuses new submissions, runs every queued job to completion (callbacks
 * called, without waiting for the batching delay), then joins the worker.
 * Idempotent; must not be called from a done callback. */
void batcher_shutdown(struct batcher *b);

/* Shuts down if needed, then frees. */
void batcher_free(struct batcher *b);

#endif
