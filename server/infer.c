#include "infer.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "vit.h"

struct infer_request *infer_new(struct model_entry *entry, int n, int H, int W, bool patch,
                                bool patch_rasa, char *err, size_t errlen)
{
    const struct model_config *c = vit_model_config(entry->model);
    struct infer_request *r = calloc(1, sizeof(*r));
    pthread_mutex_t *lock = malloc(sizeof(*lock));
    if (!r || !lock) {
        free(r);
        free(lock);
        model_entry_release(entry);
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(lock, NULL);
    r->lock = lock;
    r->entry = entry;
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
    if (!r->input || !r->cls || !r->jobs || (patch && !r->patch) || (patch_rasa && !r->patch_rasa)) {
        infer_free(r);
        set_err(err, errlen, "out of memory for %d images of %dx%d", n, H, W);
        return NULL;
    }
    return r;
}

void infer_free(struct infer_request *r)
{
    if (!r) return;
    model_entry_release(r->entry);
    free(r->input);
    free(r->cls);
    free(r->patch);
    free(r->patch_rasa);
    free(r->jobs);
    if (r->lock) {
        pthread_mutex_destroy(r->lock);
        free(r->lock);
    }
    free(r);
}

/* Records one image's outcome; the last one calls the request's callback. */
static void finish_one(struct infer_request *r, int status, const char *err)
{
    pthread_mutex_lock(r->lock);
    if (status != BATCH_OK && r->status == BATCH_OK) {
        r->status = status;
        snprintf(r->err, sizeof r->err, "%.500s", err ? err : "inference failed");
    }
    const int last = --r->pending == 0;
    pthread_mutex_unlock(r->lock);
    if (last) r->done(r, r->status, r->status == BATCH_OK ? NULL : r->err, r->user);
}

static void job_done(struct batch_job *job, int status, const char *err, void *user)
{
    (void)job;
    finish_one(user, status, err);
}

int infer_submit(struct infer_request *r, struct batcher *b, infer_done_fn done, void *user,
                 char *err, size_t errlen)
{
    r->done = done;
    r->user = user;
    const size_t in = (size_t)3 * r->H * r->W, tok = (size_t)r->N * r->D;
    /* pending counts the submitter too, so done cannot run before every submit
     * has been attempted. */
    r->pending = 1;
    for (int i = 0; i < r->n; i++) {
        struct batch_job *j = &r->jobs[i];
        j->entry = r->entry;
        j->H = r->H;
        j->W = r->W;
        j->input = r->input + in * i;
        j->cls = r->cls + (size_t)r->D * i;
        j->patch = r->patch ? r->patch + tok * i : NULL;
        j->patch_rasa = r->patch_rasa ? r->patch_rasa + tok * i : NULL;
        j->done = job_done;
        j->user = r;
        pthread_mutex_lock(r->lock);
        r->pending++;
        pthread_mutex_unlock(r->lock);
        char e[ERR_LEN];
        const int rc = batcher_submit(b, j, e, sizeof e);
        if (rc != BATCH_OK) {
            pthread_mutex_lock(r->lock);
            r->pending--;
            pthread_mutex_unlock(r->lock);
            if (i == 0) {
                set_err(err, errlen, "%s", e);
                return rc;
            }
            finish_one(r, rc, e);
            return 0;
        }
    }
    finish_one(r, BATCH_OK, NULL);
    return 0;
}
