/* Dynamic batching: see batcher.h. */
#include "batcher.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "errors.h"
#include "registry.h"
#include "vit.h"
#include "clock.h"

struct batcher {
    pthread_mutex_t lock;
    pthread_cond_t wake;          /* the worker waits on it (CLOCK_MONOTONIC) */
    pthread_cond_t joined_cond;   /* concurrent batcher_shutdown callers wait on it */
    pthread_t thread;
    bool join_claimed, joined;

    int max_batch, max_delay_ms, max_queue;
    uint64_t token_budget;        /* 0: unlimited */

    /* The queue, oldest first; guarded by lock. */
    struct batch_job *head, *tail;
    int depth;
    bool shutdown;

    /* The key the worker is gathering for while it waits, and how many queued
     * jobs have it; submit counts matching jobs and wakes the worker when the
     * batch is full. wait_key is NULL when the worker is not gathering. */
    const struct batch_job *wait_key;   /* the oldest job: queued while it is the key */
    int wait_count;

    struct batcher_stats st;
    batch_observer_fn observer;
    void *observer_user;
    struct workq *replies;        /* kept for infer.c; the batcher never submits to it */

    /* Worker-only scratch, grown as needed. */
    struct batch_job **jobs;      /* [max_batch] */
    struct batch_job **gone;      /* [max_batch]: the batch's cancelled jobs */
    float *in, *cls, *patch, *rasa, *lcls, *lpatch;
    size_t in_cap, cls_cap, patch_cap, rasa_cap, lcls_cap, lpatch_cap;  /* floats */
};

static struct timespec to_timespec(double t)
{
    struct timespec ts;
    ts.tv_sec = (time_t)t;
    ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    if (ts.tv_nsec < 0) ts.tv_nsec = 0;
    return ts;
}

static bool same_layers(const struct batch_job *a, const struct batch_job *k)
{
    if (a->n_layers != k->n_layers) return false;
    if (!a->n_layers) return true;
    return a->layer_norm == k->layer_norm &&
           !memcmp(a->layers, k->layers, sizeof(int) * (size_t)a->n_layers);
}

static bool same_key(const struct batch_job *j, const struct batch_job *k)
{
    return j->entry == k->entry && j->H == k->H && j->W == k->W && same_layers(j, k);
}

/* Grows a scratch buffer to at least n floats. */
static int ensure(float **buf, size_t *cap, size_t n)
{
    if (*cap >= n) return 0;
    free(*buf);
    *buf = malloc(n * sizeof(float));
    *cap = *buf ? n : 0;
    return *buf ? 0 : -1;
}

static void drop(float **buf, size_t *cap)
{
    free(*buf);
    *buf = NULL;
    *cap = 0;
}

/* ------------------------------------------------------------------ run -- */

/* Job i's rows of the batch's layer outputs ([L, B, ...]) into its own [L, ...]. */
static void scatter_layers(const struct batcher *b, struct batch_job *j, int i, int B, size_t L,
                           size_t tok, size_t D)
{
    for (size_t k = 0; k < L; k++) {
        const size_t slot = k * (size_t)B + (size_t)i;
        if (j->layer_cls) memcpy(j->layer_cls + k * D, b->lcls + slot * D, sizeof(float) * D);
        if (j->layer_patch)
            memcpy(j->layer_patch + k * tok, b->lpatch + slot * tok, sizeof(float) * tok);
    }
}

/* Runs one gathered batch (all jobs share entry, H, W and layers) and completes its jobs.
 * Called without the lock. */
static void run_batch(struct batcher *b, struct batch_job **jobs, int B)
{
    struct model_entry *entry = jobs[0]->entry;
    const int H = jobs[0]->H, W = jobs[0]->W;
    const struct model_config *c = vit_model_config(entry->model);
    const int D = c->embed_dim, P = c->patch_size;
    const size_t N = (size_t)(H / P) * (W / P);
    const size_t T = 1 + (size_t)c->register_tokens + N;
    const size_t S = (size_t)c->preprocess.crop_size;
    const size_t keep_tokens = (size_t)b->max_batch *
                               (1 + (size_t)c->register_tokens + (S / P) * (S / P));
    const size_t img = (size_t)3 * H * W;

    bool want_cls = false, want_patch = false, want_rasa = false, want_lcls = false,
         want_lpatch = false;
    for (int i = 0; i < B; i++) {
        want_cls |= jobs[i]->cls != NULL;
        want_patch |= jobs[i]->patch != NULL;
        want_rasa |= jobs[i]->patch_rasa != NULL;
        want_lcls |= jobs[i]->layer_cls != NULL;
        want_lpatch |= jobs[i]->layer_patch != NULL;
    }
    const size_t L = (size_t)jobs[0]->n_layers; /* the same list for the whole batch */

    char msg[ERR_LEN] = "";
    int rc = 0;
    const double t_start = clock_now_s();
    for (int i = 0; i < B; i++) jobs[i]->queue_seconds = t_start - jobs[i]->submitted_;

    /* A single job runs straight from and into its own buffers. */
    const float *x = jobs[0]->input;
    struct vit_outputs out = {
        .cls = jobs[0]->cls, .patch = jobs[0]->patch, .patch_rasa = jobs[0]->patch_rasa,
        .n_layers = (int)L, .layers = jobs[0]->layers, .layer_norm = jobs[0]->layer_norm,
        .layer_cls = jobs[0]->layer_cls, .layer_patch = jobs[0]->layer_patch,
    };
    if (B > 1) {
        if (ensure(&b->in, &b->in_cap, img * B) ||
            (want_cls && ensure(&b->cls, &b->cls_cap, (size_t)B * D)) ||
            (want_patch && ensure(&b->patch, &b->patch_cap, (size_t)B * N * D)) ||
            (want_rasa && ensure(&b->rasa, &b->rasa_cap, (size_t)B * N * D)) ||
            (want_lcls && ensure(&b->lcls, &b->lcls_cap, L * B * D)) ||
            (want_lpatch && ensure(&b->lpatch, &b->lpatch_cap, L * B * N * D))) {
            rc = set_err(msg, sizeof msg, "out of memory for a batch of %d images at %dx%d",
                         B, H, W);
        } else {
            for (int i = 0; i < B; i++)
                memcpy(b->in + (size_t)i * img, jobs[i]->input, img * sizeof(float));
            x = b->in;
            out.cls = want_cls ? b->cls : NULL;
            out.patch = want_patch ? b->patch : NULL;
            out.patch_rasa = want_rasa ? b->rasa : NULL;
            out.layer_cls = want_lcls ? b->lcls : NULL;
            out.layer_patch = want_lpatch ? b->lpatch : NULL;
        }
    }

    double infer = 0.0;
    if (rc == 0) {
        struct vit_workspace *own = NULL;
        struct vit_workspace **ws = model_entry_workspace(entry, b);
        if (!ws) ws = &own;   /* every slot taken by other batchers: a one-off workspace */
        rc = vit_forward(entry->model, ws, x, B, H, W, &out, msg, sizeof msg);
        infer = clock_now_s() - t_start;
        if (ws == &own || (size_t)B * T > keep_tokens) {
            vit_workspace_free(*ws);
            *ws = NULL;
        }
    }

    if (rc == 0 && B > 1) {
        for (int i = 0; i < B; i++) {
            struct batch_job *j = jobs[i];
            if (j->cls) memcpy(j->cls, b->cls + (size_t)i * D, sizeof(float) * D);
            if (j->patch)
                memcpy(j->patch, b->patch + (size_t)i * N * D, sizeof(float) * N * D);
            if (j->patch_rasa)
                memcpy(j->patch_rasa, b->rasa + (size_t)i * N * D, sizeof(float) * N * D);
            scatter_layers(b, j, i, B, L, N * D, D);
        }
    }
    /* Do not keep scratch grown by an unusually large batch. */
    if ((size_t)B * T > keep_tokens) {
        drop(&b->in, &b->in_cap);
        drop(&b->cls, &b->cls_cap);
        drop(&b->patch, &b->patch_cap);
        drop(&b->rasa, &b->rasa_cap);
        drop(&b->lcls, &b->lcls_cap);
        drop(&b->lpatch, &b->lpatch_cap);
    }

    pthread_mutex_lock(&b->lock);
    b->st.batches++;
    b->st.images += (unsigned long)B;
    if (rc) b->st.failed += (unsigned long)B;
    if (B > b->st.max_batch_seen) b->st.max_batch_seen = B;
    pthread_mutex_unlock(&b->lock);

    if (b->observer) b->observer(jobs, B, infer, b->observer_user);

    /* Callbacks may free their jobs: read nothing from a job after its callback.
     * Every job of the batch holds a reference to entry (taken at submit), so
     * entry stays valid until the releases below. */
    for (int i = 0; i < B; i++) {
        struct batch_job *j = jobs[i];
        j->infer_seconds = infer;
        j->batch_size = B;
        j->done(j, rc ? BATCH_ERR : BATCH_OK, rc ? msg : NULL, j->user);
        jobs[i] = NULL;
    }
    for (int i = 0; i < B; i++) model_entry_release(entry);
}

/* Takes the gathered jobs whose owner no longer wants them out of jobs (the
 * rest keep their order at the front) and completes them with BATCH_CANCELLED;
 * returns how many remain. The checks run without the lock: they may look at
 * a socket. All checks come before any callback, since a callback may free
 * its request's other jobs once none of them is left to run. */
static int drop_cancelled(struct batcher *b, struct batch_job **jobs, int B)
{
    int live = 0, gone = 0;
    for (int i = 0; i < B; i++) {
        struct batch_job *j = jobs[i];
        if (j->cancelled && j->cancelled(j, j->user)) b->gone[gone++] = j;
        else jobs[live++] = j;
    }
    if (!gone) return live;
    pthread_mutex_lock(&b->lock);
    b->st.dropped += (unsigned long)gone;
    pthread_mutex_unlock(&b->lock);
    const double now = clock_now_s();
    for (int i = 0; i < gone; i++) {
        struct batch_job *j = b->gone[i];
        struct model_entry *entry = j->entry;   /* j may be freed by its callback */
        j->queue_seconds = now - j->submitted_;
        j->batch_size = 0;
        j->done(j, BATCH_CANCELLED, "dropped before its forward: the client went away", j->user);
        b->gone[i] = NULL;
        model_entry_release(entry);
    }
    return live;
}

static void *worker_main(void *arg)
{
    struct batcher *b = arg;
    /* Process signals belong to the main thread (and so do not reach the OpenMP
     * threads this thread starts, which inherit the mask). */
    sigset_t set;
    sigemptyset(&set);
    const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGUSR1, SIGUSR2, SIGCHLD};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaddset(&set, sigs[i]);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    pthread_mutex_lock(&b->lock);
    for (;;) {
        while (!b->head && !b->shutdown) pthread_cond_wait(&b->wake, &b->lock);
        if (!b->head) break;   /* shut down and drained */

        /* Gather for the oldest job's key until the batch is full, the delay
         * since that job's submission is over, or shutdown asks to drain. */
        const struct batch_job *first = b->head;
        int count = 0;
        for (const struct batch_job *j = first; j; j = j->next_) count += same_key(j, first);
        b->wait_key = first;
        b->wait_count = count;
        const struct timespec deadline = to_timespec(first->submitted_ + b->max_delay_ms * 1e-3);
        while (!b->shutdown && b->wait_count < b->max_batch) {
            const int w = pthread_cond_timedwait(&b->wake, &b->lock, &deadline);
            if (w == ETIMEDOUT) break;
        }
        b->wait_key = NULL;

        /* Unlink up to max_batch jobs of that key, oldest first (first lives
         * on until its callback, after the batch ran). */
        int B = 0;
        struct batch_job *prev = NULL;
        for (struct batch_job *j = b->head, *next; j && B < b->max_batch; j = next) {
            next = j->next_;
            if (!same_key(j, first)) {
                prev = j;
                continue;
            }
            if (prev) prev->next_ = next;
            else b->head = next;
            if (b->tail == j) b->tail = prev;
            j->next_ = NULL;
            b->jobs[B++] = j;
        }
        b->depth -= B;
        b->st.queue_depth = b->depth;
        pthread_mutex_unlock(&b->lock);

        B = drop_cancelled(b, b->jobs, B);
        if (B > 0) run_batch(b, b->jobs, B);

        pthread_mutex_lock(&b->lock);
    }
    pthread_mutex_unlock(&b->lock);
    return NULL;
}

/* ------------------------------------------------------------- public -- */

void batcher_set_observer(struct batcher *b, batch_observer_fn fn, void *user)
{
    b->observer = fn;
    b->observer_user = user;
}

void batcher_set_replies(struct batcher *b, struct workq *q)
{
    b->replies = q;
}

struct workq *batcher_replies(const struct batcher *b)
{
    return b->replies;
}

struct batcher *batcher_create(int max_batch, int max_delay_ms, int max_queue, char *err,
                               size_t errlen)
{
    if (max_batch < 1 || max_batch > 4096 || max_delay_ms < 0 || max_delay_ms > 60000 ||
        max_queue < 1) {
        set_err(err, errlen, "batcher: invalid limits (max batch %d, max delay %d ms, max "
                "queue %d): need 1..4096, 0..60000, >= 1", max_batch, max_delay_ms, max_queue);
        return NULL;
    }
    struct batcher *b = calloc(1, sizeof(*b));
    if (b) {
        b->jobs = calloc((size_t)max_batch, sizeof(*b->jobs));
        b->gone = calloc((size_t)max_batch, sizeof(*b->gone));
    }
    if (!b || !b->jobs || !b->gone) {
        if (b) {
            free(b->jobs);
            free(b->gone);
            free(b);
        }
        set_err(err, errlen, "batcher: out of memory");
        return NULL;
    }
    b->max_batch = max_batch;
    b->max_delay_ms = max_delay_ms;
    b->max_queue = max_queue;

    pthread_condattr_t ca;
    bool ok = pthread_condattr_init(&ca) == 0;
    if (ok) {
        ok = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
             pthread_cond_init(&b->wake, &ca) == 0;
        pthread_condattr_destroy(&ca);
    }
    if (!ok) {
        free(b->jobs);
        free(b->gone);
        free(b);
        set_err(err, errlen, "batcher: cannot create its condition variable");
        return NULL;
    }
    pthread_mutex_init(&b->lock, NULL);
    pthread_cond_init(&b->joined_cond, NULL);
    const int e = pthread_create(&b->thread, NULL, worker_main, b);
    if (e) {
        pthread_cond_destroy(&b->wake);
        pthread_cond_destroy(&b->joined_cond);
        pthread_mutex_destroy(&b->lock);
        free(b->jobs);
        free(b->gone);
        free(b);
        set_err(err, errlen, "batcher: cannot start the worker thread: %s", strerror(e));
        return NULL;
    }
    return b;
}

/* Layers: a list when any layer output is asked for, each a block of the model. */
static int validate_layers(const struct batch_job *job, int depth, char *err, size_t errlen)
{
    const bool outputs = job->layer_cls || job->layer_patch;
    if (job->n_layers < 0 || job->n_layers > VIT_MAX_LAYERS || outputs != (job->n_layers > 0) ||
        (job->n_layers && !job->layers))
        return set_err(err, errlen, "batch job with %d layers, %s layer outputs", job->n_layers,
                       outputs ? "with" : "without");
    for (int k = 0; k < job->n_layers; k++)
        if (job->layers[k] < 0 || job->layers[k] >= depth)
            return set_err(err, errlen, "layer %d is out of range: model '%s' has depth %d",
                           job->layers[k], job->entry->name, depth);
    return 0;
}

/* A job the batcher can run: a model, an input, a callback, an output, a
 * resolution the model takes. */
static int validate(const struct batch_job *job, char *err, size_t errlen)
{
    if (!job || !job->entry || !job->entry->model || !job->input || !job->done)
        return set_err(err, errlen, "batch job without model, input or callback");
    if (!job->cls && !job->patch && !job->patch_rasa && !job->layer_cls && !job->layer_patch)
        return set_err(err, errlen, "batch job asks for no output");
    const struct vit_model *m = job->entry->model;
    if (vit_check_resolution(m, job->H, job->W, err, errlen)) return BATCH_ERR;
    if (validate_layers(job, vit_model_config(m)->depth, err, errlen)) return BATCH_ERR;
    if (job->patch_rasa && vit_model_config(m)->rasa_layers <= 0)
        return set_err(err, errlen, "model '%s' has no RASA tensors", job->entry->name);
    return BATCH_OK;
}

/* Under b->lock: appends one validated job and says whether the worker must
 * be woken (the queue was empty, or the batch it gathers is now full). */
static bool enqueue_locked(struct batcher *b, struct batch_job *job, double now)
{
    job->next_ = NULL;
    job->queue_seconds = job->infer_seconds = 0.0;
    job->batch_size = 0;
    job->submitted_ = now;
    model_entry_retain(job->entry);
    const bool was_empty = b->head == NULL;
    if (b->tail) b->tail->next_ = job;
    else b->head = job;
    b->tail = job;
    b->depth++;
    bool batch_full = false;
    if (b->wait_key && same_key(job, b->wait_key))
        batch_full = ++b->wait_count >= b->max_batch;
    return was_empty || batch_full;
}

int batcher_submit_many(struct batcher *b, struct batch_job *jobs, int n, char *err,
                        size_t errlen)
{
    if (!jobs || n < 1) return set_err(err, errlen, "no batch jobs to submit");
    for (int i = 0; i < n; i++)
        if (validate(&jobs[i], err, errlen)) return BATCH_ERR;

    pthread_mutex_lock(&b->lock);
    int rc = BATCH_OK;
    if (b->shutdown) {
        rc = BATCH_SHUTDOWN;
        set_err(err, errlen, "the server is shutting down");
    } else if (n > b->max_queue) {
        b->st.rejected_too_large++;
        rc = BATCH_TOO_LARGE;
        set_err(err, errlen, "%d images in one request, but the inference queue holds at most "
                "%d: send fewer images per request", n, b->max_queue);
    } else if (b->depth + n > b->max_queue) {
        b->st.rejected_full++;
        rc = BATCH_FULL;
        set_err(err, errlen, "inference queue full (%d of %d images waiting, %d more asked); "
                "retry later", b->depth, b->max_queue, n);
    }
    if (rc != BATCH_OK) {
        pthread_mutex_unlock(&b->lock);
        return rc;
    }
    const double now = clock_now_s();
    bool wake = false;
    for (int i = 0; i < n; i++) wake |= enqueue_locked(b, &jobs[i], now);
    b->st.queue_depth = b->depth;
    if (wake) pthread_cond_signal(&b->wake);
    pthread_mutex_unlock(&b->lock);
    return BATCH_OK;
}

int batcher_submit(struct batcher *b, struct batch_job *job, char *err, size_t errlen)
{
    if (!job) return set_err(err, errlen, "batch job without model, input or callback");
    return batcher_submit_many(b, job, 1, err, errlen);
}

void batcher_set_token_budget(struct batcher *b, uint64_t max_tokens)
{
    pthread_mutex_lock(&b->lock);
    b->token_budget = max_tokens;
    pthread_mutex_unlock(&b->lock);
}

int batcher_admit(struct batcher *b, uint64_t tokens, char *err, size_t errlen)
{
    pthread_mutex_lock(&b->lock);
    const uint64_t cap = b->token_budget, used = b->st.tokens_in_flight;
    int rc = BATCH_OK;
    if (b->shutdown) {
        rc = BATCH_SHUTDOWN;
        set_err(err, errlen, "the server is shutting down");
    } else if (cap && tokens > cap) {
        b->st.rejected_too_large++;
        rc = BATCH_TOO_LARGE;
        set_err(err, errlen, "the request needs %llu tokens, more than the %llu the server "
                "admits at once (--max-inflight-tokens): send fewer images or a lower "
                "resolution", (unsigned long long)tokens, (unsigned long long)cap);
    } else if (cap && tokens > cap - used) {
        b->st.rejected_tokens++;
        rc = BATCH_FULL;
        set_err(err, errlen, "the server is busy: %llu of %llu tokens in flight, the request "
                "needs %llu; retry later", (unsigned long long)used, (unsigned long long)cap,
                (unsigned long long)tokens);
    } else {
        b->st.tokens_in_flight = used + tokens;
        if (b->st.tokens_in_flight > b->st.tokens_peak) b->st.tokens_peak = b->st.tokens_in_flight;
    }
    pthread_mutex_unlock(&b->lock);
    return rc;
}

void batcher_release(struct batcher *b, uint64_t tokens)
{
    pthread_mutex_lock(&b->lock);
    b->st.tokens_in_flight -= tokens < b->st.tokens_in_flight ? tokens : b->st.tokens_in_flight;
    pthread_mutex_unlock(&b->lock);
}

int batcher_queue_depth(struct batcher *b)
{
    pthread_mutex_lock(&b->lock);
    const int d = b->depth;
    pthread_mutex_unlock(&b->lock);
    return d;
}

void batcher_get_stats(struct batcher *b, struct batcher_stats *st)
{
    pthread_mutex_lock(&b->lock);
    *st = b->st;
    st->queue_depth = b->depth;
    st->token_budget = b->token_budget;
    pthread_mutex_unlock(&b->lock);
}

void batcher_shutdown(struct batcher *b)
{
    pthread_mutex_lock(&b->lock);
    b->shutdown = true;
    pthread_cond_signal(&b->wake);
    const bool mine = !b->join_claimed;
    b->join_claimed = true;
    if (!mine) {
        while (!b->joined) pthread_cond_wait(&b->joined_cond, &b->lock);
        pthread_mutex_unlock(&b->lock);
        return;
    }
    pthread_mutex_unlock(&b->lock);

    pthread_join(b->thread, NULL);

    pthread_mutex_lock(&b->lock);
    b->joined = true;
    pthread_cond_broadcast(&b->joined_cond);
    pthread_mutex_unlock(&b->lock);
}

void batcher_free(struct batcher *b)
{
    if (!b) return;
    batcher_shutdown(b);
    pthread_cond_destroy(&b->wake);
    pthread_cond_destroy(&b->joined_cond);
    pthread_mutex_destroy(&b->lock);
    free(b->in);
    free(b->cls);
    free(b->patch);
    free(b->rasa);
    free(b->lcls);
    free(b->lpatch);
    free(b->jobs);
    free(b->gone);
    free(b);
}
