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
    /* Patch-level collections: every patch token (RASA-cleaned when the
     * checkpoint has RASA tensors) cut to the width and L2-normalised. */
    float *patches;   /* [n, grid_h * grid_w, width], once done */
    int grid_h, grid_w;
    /* The model's eval preprocessing (resize, centre crop, patch side), set
     * with the grid: how image pixels map onto patches (seg_map.h). */
    int resize_size, crop_size, patch_size;
};
/* Decodes n base64 / data-URI strings; on failure replies (400/413/415) naming
 * where[i] and returns -1. */
int route_images_decode(struct http_request *req, struct app *app, json_t *const *strings,
                        const char *const *where, int n, struct route_images *out);
void route_images_free(struct route_images *im);

/* What every index request (an insert, a search) shares. A route's context
 * begins with it: the request, its body and collection, its images, and the
 * work that answers once those are embedded. */
struct route_index_req {
    struct http_request *req;
    struct app *app;
    json_t *body;                 /* the JSON object (keeps borrowed strings alive) */
    struct coll *c;               /* the {name} collection, acquired */
    struct route_images im;       /* images to embed before run, possibly none */
    workq_fn run;                 /* answers, on the index work queue; gets the context */
    void (*release)(void *ctx);   /* frees the whole context (route_index_end for this part) */
};

/* A zeroed context of size bytes that begins with a struct route_index_req,
 * holding the request's JSON body and {name} collection; otherwise replies
 * and returns NULL. */
void *route_index_begin(struct http_request *req, struct app *app, size_t size, workq_fn run,
                        void (*release)(void *ctx));
/* Frees the shared part: body, collection, images. */
void route_index_end(struct route_index_req *r);
/* Defers the request, embeds r->im with the collection's model when it holds
 * images (and their patch tokens for a patch-level collection), then runs r->run on the index work queue. When that cannot start or
 * the embedding fails, answers (409, 422, 429, 503...) and releases. */
void route_index_start(struct route_index_req *r);

#endif
