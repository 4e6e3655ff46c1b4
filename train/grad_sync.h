/* Gradient averaging over the data-parallel ranks, overlapped with the backward
 * pass (docs/training.md, "Data parallel"): as objective_step reports the
 * gradients of a suffix of the parameters final (objective_set_grad_ready), they
 * are packed, in reverse parameter order, into buckets of cap floats, and each
 * full bucket starts its non-blocking all-reduce at once; a tensor larger than
 * a bucket is reduced alone, in place. grad_sync_finish waits for all and
 * writes sum / R into the gradients. */
#ifndef FRANCA_TRAIN_GRAD_SYNC_H
#define FRANCA_TRAIN_GRAD_SYNC_H

#include <stddef.h>

#include "comm.h"
#include "params.h"

struct grad_bucket {
    int hi, lo;          /* params hi down to lo, packed in that order */
    size_t off, n;       /* its floats in the staging buffer; n 0: one tensor in place */
};

struct grad_sync {
    struct comm *c;
    struct param_list *pl;
    size_t cap;          /* bucket floats */
    float *stage;        /* every bucketed tensor of a step, buckets back to back */
    float pre;           /* scale applied as the gradients are packed (1 / grad_accum) */
    int next;            /* params next .. n-1 are handed to buckets */
    int open_hi;         /* the bucket being filled: params open_hi down to next, */
    size_t open_off;     /* from stage + open_off */
    size_t used;         /* staging floats taken */
    struct grad_bucket *b;
    int nb;
    int overlap;         /* 0 (FRANCA_TRAIN_OVERLAP=0, measurements): start all after backward */
    int progress;        /* 0 (FRANCA_TRAIN_MPI_TEST=0, measurements): no comm_test at hooks */
    double wait_s;       /* trainer's: from the end of the backward passes to reduced gradients */
};

int grad_sync_init(struct grad_sync *s, struct comm *c, struct param_list *pl, size_t cap);
void grad_sync_free(struct grad_sync *s);
/* Before the step's last backward pass: pre scales the gradients first. */
void grad_sync_begin(struct grad_sync *s, float pre);
/* objective_ready_fn: params first .. n-1 are final. With overlap off, the
 * trainer calls it once with 0 after the backward pass. */
void grad_sync_ready(void *ctx, int first);
/* After the backward pass: waits for every reduction, g = sum / R. */
void grad_sync_finish(struct grad_sync *s);

#endif
