/* One request's inference: N preprocessed images on one acquired model, run
 * through the batcher (possibly in batches shared with other requests), with one
 * callback when every image is done. Routes fill the inputs, submit, and build
 * their answer from the outputs in the callback. */
#ifndef FRANCA_INFER_H
#define FRANCA_INFER_H

#include <stdbool.h>
#include <stddef.h>

#include "batcher.h"
#include "registry.h"

struct infer_request;

/* Called once, from a batcher worker (or from infer_submit's caller when nothing
 * could be submitted). status: BATCH_OK, or the first failure's code and message. */
typedef void (*infer_done_fn)(struct infer_request *r, int status, const char *err, void *user);

struct infer_request {
    struct model_entry *entry;  /* the request's reference (released by infer_free) */
    int n, H, W, D, N;          /* images, input size, width, patches per image */
    float *input;               /* [n, 3, H, W] */
    float *cls;                 /* [n, D] */
    float *patch;               /* [n, N, D] or NULL */
    float *patch_rasa;          /* [n, N, D] or NULL */
    /* Private. */
    struct batch_job *jobs;
    int pending;
    int status;
    char err[512];
    infer_done_fn done;
    void *user;
    void *lock;
};

/* Takes over the caller's reference to entry (also on failure). */
struct infer_request *infer_new(struct model_entry *entry, int n, int H, int W, bool patch,
                                bool patch_rasa, char *err, size_t errlen);
/* Submits every image. Returns 0 when done will be called (possibly already has
 * been); otherwise the batcher's code for the first image (nothing submitted, done
 * is not called). If a later image is refused, the images already submitted
 * finish and done reports the refusal. */
int infer_submit(struct infer_request *r, struct batcher *b, infer_done_fn done, void *user,
                 char *err, size_t errlen);
void infer_free(struct infer_request *r);

#endif
