/* The server's shared state, handed to every route as its user pointer. */
#ifndef FRANCA_APP_H
#define FRANCA_APP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include "auth.h"
#include "batcher.h"
#include "http.h"
#include "index/collections.h"
#include "jobs.h"
#include "workq.h"
#include "metrics.h"
#include "registry.h"

struct app_limits {
    size_t max_body_bytes;     /* --max-body-mb */
    size_t max_image_pixels;   /* --max-image-pixels: declared width x height */
    int max_images;            /* images per request */
    int max_batch;             /* --max-batch */
    int max_delay_ms;          /* --max-delay-ms */
    int max_queue;             /* images waiting for a batch; past it 429 */
    unsigned long long max_inflight_tokens; /* --max-inflight-tokens: admitted at once; past it 429 */
    size_t max_json_floats;    /* patch outputs above this as JSON get 413 */
    int max_insert_items;      /* --max-insert-items: items per insert request */
    int max_search_queries;    /* queries per batch search request */
    int reembed_rate;          /* --reembed-rate: images/s a re-embed may take; 0: no cap */
};

struct app {
    struct registry *registry;
    struct batcher *batcher;
    struct metrics *metrics;
    struct app_limits limits;
    const char *models_dir;    /* --models-dir (admin loads only from here), or NULL */
    const char *data_dir;      /* --data: the index and its snapshots */
    struct auth_keys admin_keys; /* --admin-token-file; none: admin routes answer 404 */
    struct auth_keys api_keys;   /* --api-key-file; none: the /v1 routes are open */
    const char *device;        /* --device as given: "cpu", "cuda" or "auto" */
    atomic_bool ready;         /* every model loaded and warmed up */
    atomic_bool stopping;      /* set at shutdown: background jobs stop early */
    struct index *index;       /* collections (SQLite under --data + search mirrors) */
    struct workq *index_work;  /* index commits and searches run here */
    struct workq *background;  /* checkpoint loads and reembed jobs; shutdown joins it */
    struct workq *replies;     /* infer requests' callbacks (answers) run here */
    struct jobs *jobs;         /* background jobs, kept in the index (jobs.h) */
    time_t started_at;
};

/* Registers every route of the server on r. */
int routes_register(struct http_router *r, struct app *app, char *err, size_t errlen);
/* Registers one route: http_router_add with app as its user. */
int route_add(struct http_router *r, struct app *app, const char *method, const char *pattern,
              http_handler_fn fn, char *err, size_t errlen);

/* The HTTP layer's head check (http_config.head_check, user: the app): with
 * --api-key-file, every path under /v1 needs one of the keys (auth.h), and a
 * request without one is refused before its body is read. */
void routes_head_check(struct http_request *req, void *user);

/* Route families (server/routes_*.c). */
int routes_ops_register(struct http_router *r, struct app *app, char *err, size_t errlen);
int routes_models_register(struct http_router *r, struct app *app, char *err, size_t errlen);
int routes_embeddings_register(struct http_router *r, struct app *app, char *err, size_t errlen);
int routes_features_register(struct http_router *r, struct app *app, char *err, size_t errlen);
int routes_pca_register(struct http_router *r, struct app *app, char *err, size_t errlen);
int routes_admin_register(struct http_router *r, struct app *app, char *err, size_t errlen);
int routes_collections_register(struct http_router *r, struct app *app, char *err, size_t errlen);
int routes_search_register(struct http_router *r, struct app *app, char *err, size_t errlen);
int routes_jobs_register(struct http_router *r, struct app *app, char *err, size_t errlen);
/* jobs_resume_fn of "reembed" jobs (routes_jobs.c), ctx the app: runs the job
 * again from its first image when its collection, model and checkpoint are
 * still those it recorded. */
int reembed_resume(void *ctx, struct job *job, const char *collection, const json_t *params,
                   char *err, size_t errlen);
/* jobs_resume_fn of "ann_build" jobs: follows the build that index_open started
 * again for the collection it recorded, until the graph is ready. */
int ann_resume(void *ctx, struct job *job, const char *collection, const json_t *params,
               char *err, size_t errlen);
int routes_ui_register(struct http_router *r, struct app *app, char *err, size_t errlen);
int routes_patch_register(struct http_router *r, struct app *app, char *err, size_t errlen);
int routes_segment_register(struct http_router *r, struct app *app, char *err, size_t errlen);

/* The JSON object body of a request (a new reference); otherwise replies 415
 * or 400 and returns NULL. */
json_t *route_json_body(struct http_request *req);
/* Acquires the named model (NULL: the default) for a request; otherwise replies
 * 503 while models load, 404 for an unknown name, and returns NULL. */
struct model_entry *route_acquire_model(struct http_request *req, struct app *app,
                                        const char *name);
/* Replies with the registry's error for name (404 unknown, 400 malformed...). */
void route_reply_registry_error(struct http_request *req, int rc, const char *msg);
/* Replies with the batcher's refusal (429 with Retry-After, 413, 503, 500). */
void route_reply_batch_error(struct http_request *req, int rc, const char *msg);
struct image_inputs;
struct infer_request;
/* Prepares every image of in (freed here) into r's input at side x side (the
 * checkpoint's crop, or a square resize with crop "square"), then submits r,
 * done getting a malloc'd copy of ctx[0..ctx_size) as its user pointer (the
 * callback frees it). On a failure replies (422 for an image that does not
 * decode, the batcher's status otherwise) and frees r. */
void route_submit_images(struct http_request *req, struct app *app, struct image_inputs *in,
                         struct infer_request *r, int side,
                         void (*done)(struct infer_request *, int, const char *, void *),
                         const void *ctx, size_t ctx_size);
/* For infer_set_cancel(r, route_abandoned, req): true once nobody waits for
 * req's answer (http_client_gone). */
bool route_abandoned(void *req);

#endif
