/* Re-embedding a collection (POST /v1/collections/{name}/reembed): reads its
 * stored source images page by page, has the caller embed each page, and
 * switches the collection to the new vectors and fingerprint in one
 * transaction at the end; until then the old vectors serve searches and writes
 * are refused (coll_begin_job). The index knows nothing of models: inference
 * reaches it only through reembed_embed_fn, which the server supplies. */
#ifndef FRANCA_INDEX_REEMBED_H
#define FRANCA_INDEX_REEMBED_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "index/collections.h"

#define REEMBED_PAGE 64 /* images read and embedded at a time */

/* Embeds the n stored images of rows into vecs [n, width], each vector unit
 * length. 0, or -1 with a message in err. */
typedef int (*reembed_embed_fn)(void *user, const struct store_image_row *rows, size_t n,
                                int width, float *vecs, char *err, size_t errlen);
/* After each page: how many items are embedded so far. */
typedef void (*reembed_progress_fn)(void *user, int64_t done);

struct reembed_spec {
    struct coll *c;               /* borrowed; its job was begun with coll_begin_job */
    const char *fingerprint;      /* of the checkpoint that embeds */
    int64_t total;                /* items with an image when the job began */
    reembed_embed_fn embed;
    reembed_progress_fn progress; /* may be NULL */
    void *user;                   /* for embed and progress */
    const atomic_bool *stop;      /* NULL, or once true the job ends early */
};

/* Runs the whole job on the calling thread, then ends the collection's job
 * (coll_end_job) whatever happened. 0, or a store code with a message in err;
 * a failed or stopped job changes nothing. */
int reembed_run(const struct reembed_spec *s, char *err, size_t errlen);

#endif
