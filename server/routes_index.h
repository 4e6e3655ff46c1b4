/* Shared by the index routes (routes_collections.c, routes_search.c,
 * routes_jobs.c): body parsing, collection lookup, error mapping, vectors, and
 * embedding request images with a collection's model. */
#ifndef FRANCA_ROUTES_INDEX_H
#define FRANCA_ROUTES_INDEX_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "app.h"

/* The collection named by the {name} path parameter, acquired; otherwise
 * replies 404 and returns NULL. */
struct coll *route_coll(struct http_request *req, struct app *app);
/* Maps a store code to its status (see index/store.h) and replies. */
void route_reply_store_error(struct http_request *req, int rc, const char *msg);
/* The collection object of the API. */
json_t *route_coll_json(struct coll *c);
/* 1..127 characters of [A-Za-z0-9._-], not starting with '.'. */
bool route_collection_name_valid(const char *name);

/* A JSON array of numbers into out[0..dim): at least dim elements, or exactly
 * dim when exact; every one finite as float32. 0, or -1 with why. */
int route_vector_from_json(const json_t *v, int dim, bool exact, float *out, char *why, size_t len);

/* Images of a request, embedded with a collection's model. */
struct route_images {
    int n;
    uint8_t **bytes;  /* decoded image files (kept for collections that store them) */
    size_t *lens;
    float *vectors;   /* [n, width]: the L2-normalised CLS prefix, once done */
};
/* Decodes n base64 / data-URI strings; on failure replies (400/413/415) naming
 * where[i] and returns -1. */
int route_images_decode(struct http_request *req, struct app *app, json_t *const *strings,
                        const char *const *where, int n, struct route_images *out);
void route_images_free(struct route_images *im);

/* Called once on a work-queue thread: status BATCH_OK with im->vectors filled,
 * or the batcher's code and message. */
typedef void (*route_embed_done_fn)(void *user, int status, const char *err);
/* Embeds im with the collection's model at its width. Replies and returns -1
 * when that cannot start: 409 when the model's checkpoint is not the one that
 * embedded the collection (naming both fingerprints) or the model is gone,
 * 422 for an undecodable image, 429/503 from the batcher. On 0, done runs. The
 * caller has called http_defer before. */
int route_coll_embed(struct http_request *req, struct app *app, struct coll *c,
                     struct route_images *im, route_embed_done_fn done, void *user);

/* Queues fn on the index work queue; replies 429 when it is full (-1). */
int route_index_submit(struct http_request *req, struct app *app, workq_fn fn, void *arg);

#endif
