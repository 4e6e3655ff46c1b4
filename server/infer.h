/* One request's inference: N preprocessed images on one acquired model, run
 * through the batcher (possibly in batches shared with other requests), with one
 * callback when every image is done. Routes admit and allocate the request
 * (infer_new), fill the inputs, submit, and build their answer from the outputs
 * in the callback, which runs off the batcher's worker (see infer_done_fn). */
#ifndef FRANCA_INFER_H
#define FRANCA_INFER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "batcher.h"
#include "registry.h"

struct infer_request;

#define INFER_MAX_LAYERS 16

/* What a request asks of the forward beside the CLS tokens (always computed). */
struct infer_outputs {
    bool patch, patch_rasa;
    int n_layers;               /* intermediate blocks, 0..INFER_MAX_LAYERS */
    const int *layers;          /* [n_layers] block indices 0..depth-1 (copied) */
    bool layer_norm;            /* the final LayerNorm on their tokens */
    bool layer_cls, layer_patch; /* which of their tokens */
};

/* Called once, on the batcher's reply pool (batcher_set_replies), never on its
 * worker while the pool takes work; without a pool, or when its queue is full
 * or stopping, on the thread that finished the last image (the worker, or the
 * submitter), so that no answer is ever lost. status: BATCH_OK, or the first
 * failure's code (BATCH_ERR, BATCH_CANCELLED) and message. */
typedef void (*infer_done_fn)(struct infer_request *r, int status, const char *err, void *user);

/* True once nobody waits for the request's answer (e.g. its client went away).
 * Called from the batcher's worker; must not block. */
typedef bool (*infer_cancel_fn)(void *arg);

struct infer_request {
    struct model_entry *entry;  /* the request's reference (released by infer_free) */
    int n, H, W, D, N;          /* images, input size, width, patches per image */
    float *input;               /* [n, 3, H, W] */
    float *cls;                 /* [n, D] */
    float *patch;               /* [n, N, D] or NULL */
    float *patch_rasa;          /* [n, N, D] or NULL */
    int n_layers;               /* intermediate blocks (infer_outputs), 0 for none */
    int layers[INFER_MAX_LAYERS];
    bool layer_norm;
    float *layer_cls;           /* [n, n_layers, D] or NULL: image-major, as the jobs fill it */
    float *layer_patch;         /* [n, n_layers, N, D] or NULL */
    /* Private. */
    struct batcher *batcher;
    uint64_t tokens;            /* admitted against the batcher's budget until infer_free */
    struct batch_job *jobs;
    int pending;
    int status;
    char err[512];
    infer_done_fn done;
    void *user;
    infer_cancel_fn cancel;
    void *cancel_arg;
    atomic_bool cancelled;      /* cancel said true once: every later image is dropped */
    void *lock;
};

/* The tokens n images of H x W hold in the budget: n x (1 + registers + patches). */
uint64_t infer_tokens(const struct model_entry *entry, int n, int H, int W);

/* About the memory one admitted token costs for entry's model, in bytes: its
 * input (the request's, the batch copy, the patch im2col), the forward's
 * activations and the patch outputs with their batch copy and one cut (see
 * README, "Memory"). Peak memory is about the model plus the token budget
 * times this. */
size_t infer_bytes_per_token(const struct model_entry *entry);

/* Admits the request's tokens against b's budget, then allocates it (nothing
 * is allocated for a refused request). Takes over the caller's reference to
 * entry (also on failure). Returns BATCH_OK with *out, or with *out NULL:
 * BATCH_FULL (429: the budget is in use), BATCH_TOO_LARGE (413: more than the
 * whole budget), BATCH_SHUTDOWN (503), BATCH_ERR (500: out of memory). */
int infer_new(struct infer_request **out, struct batcher *b, struct model_entry *entry, int n,
              int H, int W, bool patch, bool patch_rasa, char *err, size_t errlen);

/* The same with intermediate layers. Their patch tokens are charged to the
 * budget too: each patch token's L x D outputs (request copy, batch copy, one
 * cut) as the tokens that memory is worth at infer_bytes_per_token. */
int infer_new_outputs(struct infer_request **out, struct batcher *b, struct model_entry *entry,
                      int n, int H, int W, const struct infer_outputs *want, char *err,
                      size_t errlen);

/* Optional, before infer_submit: images not started when fn(arg) turns true
 * are dropped, and done reports BATCH_CANCELLED. */
void infer_set_cancel(struct infer_request *r, infer_cancel_fn fn, void *arg);

/* Submits every image, all or nothing. Returns 0 when done will be called
 * (possibly already has been); otherwise the batcher's code (BATCH_FULL,
 * BATCH_TOO_LARGE, BATCH_SHUTDOWN, BATCH_ERR): nothing was queued and done is
 * not called. */
int infer_submit(struct infer_request *r, infer_done_fn done, void *user, char *err,
                 size_t errlen);

/* Frees the buffers, releases the entry and gives the tokens back. */
void infer_free(struct infer_request *r);

#endif
