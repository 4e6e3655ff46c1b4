#include "infer.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "vit.h"
#include "workq.h"

uint64_t infer_tokens(const struct model_entry *entry, int n, int H, int W)
{
    const struct model_config *c = vit_model_config(entry->model);
    const uint64_t P = (uint64_t)c->patch_size;
    const uint64_t per_image = 1 + (uint64_t)c->register_tokens +
                               ((uint64_t)H / P) * ((uint64_t)W / P);
    return (uint64_t)n * per_image;
}

size_t infer_bytes_per_token(const struct model_entry *entry)
{
    const struct model_config *c = vit_model_config(entry->model);
    const size_t P = (size_t)c->patch_size, D = (size_t)c->embed_dim, Hs = (size_t)c->ffn_hidden;
    const size_t input = 3 * (3 * P * P);     /* request, batch copy, im2col */
    const size_t acts = 7 * D;                /* x, xn, qkv (3D), attn, branch */
    const size_t ffn = c->ffn == FFN_SWIGLU ? 3 * Hs : Hs;
    const size_t outputs = 3 * D;             /* patch tokens, batch copy, one cut */
    return sizeof(float) * (input + acts + ffn + outputs);
}

/* The budget tokens the layers' patch outputs are worth in memory; their CLS
 * rows (one per image) are left out as the final CLS is. */
static uint64_t layer_tokens(const struct model_entry *entry, int n, int H, int W,
                             const struct infer_outputs *want)
{
    if (!want->layer_patch || want->n_layers <= 0) return 0;
    const struct model_config *c = vit_model_config(entry->model);
    const uint64_t P = (uint64_t)c->patch_size;
    const uint64_t patches = (uint64_t)n * ((uint64_t)H / P) * ((uint64_t)W / P);
    const uint64_t bytes = patches * (uint64_t)want->n_layers * 3 * (uint64_t)c->embed_dim *
                           sizeof(float);
    const uint64_t per = infer_bytes_per_token(entry);
    return (bytes + per - 1) / per;
}

static int alloc_layers(struct infer_request *r, const struct infer_outputs *want)
{
    r->n_layers = want->n_layers;
    r->layer_norm = want->layer_norm;
    if (want->n_layers > 0) memcpy(r->layers, want->layers, sizeof(int) * want->n_layers);
    const size_t L = (size_t)want->n_layers, n = (size_t)r->n;
    if (L && want->layer_cls && !(r->layer_cls = malloc(sizeof(float) * n * L * r->D))) return -1;
    if (L && want->layer_patch &&
        !(r->layer_patch = malloc(sizeof(float) * n * L * r->N * r->D)))
        return -1;
    return 0;
}

int infer_new(struct infer_request **out, struct batcher *b, struct model_entry *entry, int n,
              int H, int W, bool patch, bool patch_rasa, char *err, size_t errlen)
{
    const struct infer_outputs want = {.patch = patch, .patch_rasa = patch_rasa};
    return infer_new_outputs(out, b, entry, n, H, W, &want, err, errlen);
}

int infer_new_outputs(struct infer_request **out, struct batcher *b, struct model_entry *entry,
                      int n, int H, int W, const struct infer_outputs *want, char *err,
                      size_t errlen)
{
    *out = NULL;
    const bool patch = want->patch, patch_rasa = want->patch_rasa;
    if (want->n_layers < 0 || want->n_layers > INFER_MAX_LAYERS) {
        model_entry_release(entry);
        return set_err(err, errlen, "%d layers asked for: at most %d", want->n_layers,
                       INFER_MAX_LAYERS);
    }
    /* Admission first: a refused request costs no allocation and no decode. */
    const uint64_t tokens = infer_tokens(entry, n, H, W) + layer_tokens(entry, n, H, W, want);
    const int admitted = batcher_admit(b, tokens, err, errlen);
    if (admitted != BATCH_OK) {
        model_entry_release(entry);
        return admitted;
    }
    const struct model_config *c = vit_model_config(entry->model);
    struct infer_request *r = calloc(1, sizeof(*r));
    pthread_mutex_t *lock = malloc(sizeof(*lock));
    if (!r || !lock) {
        free(r);
        free(lock);
        batcher_release(b, tokens);
        model_entry_release(entry);
        return set_err(err, errlen, "out of memory");
    }
    pthread_mutex_init(lock, NULL);
    r->lock = lock;
    r->entry = entry;
    r->batcher = b;
    r->tokens = tokens;
    atomic_init(&r->cancelled, false);
    r->n = n;
    r->H = H;
    r->W = W;
    r->D = c->embed_dim;
    r->N = (H / c->patch_size) * (W / c->patch_size);
    const size_t tok = (size_t)n * r->N * r->D;
    r->input = malloc(sizeof(float) * n * 3 * H * W);
    r->cls = malloc(sizeof(float) * n * r->D);
    r->jobs = calloc(n, sizeof(*r->jobs));
    if (patch) r->patch = malloc(sizeof(float) * tok);
    if (patch_rasa) r->patch_rasa = malloc(sizeof(float) * tok);
    if (!r->input || !r->cls || !r->jobs || (patch && !r->patch) ||
        (patch_rasa && !r->patch_rasa) || alloc_layers(r, want)) {
        infer_free(r);
        return set_err(err, errlen, "out of memory for %d images of %dx%d", n, H, W);
    }
    *out = r;
    return BATCH_OK;
}

void infer_free(struct infer_request *r)
{
    if (!r) return;
    model_entry_release(r->entry);
    free(r->input);
    free(r->cls);
    free(r->patch);
    free(r->patch_rasa);
    free(r->layer_cls);
    free(r->layer_patch);
    free(r->jobs);
    if (r->lock) {
        pthread_mutex_destroy(r->lock);
        free(r->lock);
    }
    /* Last: the budget is given back only once the memory it stood for is. */
    batcher_release(r->batcher, r->tokens);
    free(r);
}

void infer_set_cancel(struct infer_request *r, infer_cancel_fn fn, void *arg)
{
    r->cancel = fn;
    r->cancel_arg = arg;
}

static void run_done(void *arg)
{
    struct infer_request *r = arg;
    r->done(r, r->status, r->status == BATCH_OK ? NULL : r->err, r->user);
}

/* Hands the finished request to the reply pool. Its queue is bounded (memory),
 * so when it is full the reply is built right here instead: a slower batcher
 * is the back-pressure, and no answer is lost. */
static void deliver(struct infer_request *r)
{
    struct workq *q = batcher_replies(r->batcher);
    if (!q || workq_submit(q, run_done, r)) run_done(r);
}

/* Records one image's outcome; the last one delivers the request's callback. */
static void finish_one(struct infer_request *r, int status, const char *err)
{
    pthread_mutex_lock(r->lock);
    if (status != BATCH_OK && r->status == BATCH_OK) {
        r->status = status;
        snprintf(r->err, sizeof r->err, "%.500s", err ? err : "inference failed");
    }
    const int last = --r->pending == 0;
    pthread_mutex_unlock(r->lock);
    if (last) deliver(r);
}

static void job_done(struct batch_job *job, int status, const char *err, void *user)
{
    (void)job;
    finish_one(user, status, err);
}

/* The batcher asks once per image; the answer sticks, so the request's other
 * images are dropped without asking again. */
static bool job_cancelled(struct batch_job *job, void *user)
{
    (void)job;
    struct infer_request *r = user;
    if (atomic_load(&r->cancelled)) return true;
    if (!r->cancel || !r->cancel(r->cancel_arg)) return false;
    atomic_store(&r->cancelled, true);
    return true;
}

int infer_submit(struct infer_request *r, infer_done_fn done, void *user, char *err,
                 size_t errlen)
{
    r->done = done;
    r->user = user;
    const size_t in = (size_t)3 * r->H * r->W, tok = (size_t)r->N * r->D;
    for (int i = 0; i < r->n; i++) {
        struct batch_job *j = &r->jobs[i];
        j->entry = r->entry;
        j->H = r->H;
        j->W = r->W;
        j->input = r->input + in * i;
        j->cls = r->cls + (size_t)r->D * i;
        j->patch = r->patch ? r->patch + tok * i : NULL;
        j->patch_rasa = r->patch_rasa ? r->patch_rasa + tok * i : NULL;
        const size_t L = (size_t)r->n_layers;
        j->n_layers = r->n_layers;
        j->layers = r->layers;
        j->layer_norm = r->layer_norm;
        j->layer_cls = r->layer_cls ? r->layer_cls + L * r->D * i : NULL;
        j->layer_patch = r->layer_patch ? r->layer_patch + L * tok * i : NULL;
        j->done = job_done;
        j->user = r;
        j->cancelled = job_cancelled;
    }
    /* pending counts the submitter too, so done cannot run before the submit
     * returned. */
    r->pending = r->n + 1;
    const int rc = batcher_submit_many(r->batcher, r->jobs, r->n, err, errlen);
    if (rc != BATCH_OK) {
        r->pending = 0;
        return rc;
    }
    finish_one(r, BATCH_OK, NULL);
    return 0;
}
