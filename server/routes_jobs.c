/* Re-embedding and jobs:
 *   POST /v1/collections/{name}/reembed   202 {"job": {...}}
 *   GET /v1/jobs, GET /v1/jobs/{id}
 * A re-embed (index/reembed.c) reads the collection's source images page by
 * page, embeds them with the current checkpoint of the collection's model
 * (embed_page below, through the batcher), and switches the collection to the
 * new vectors and fingerprint in one transaction at the end; until then the old
 * vectors serve searches and writes are refused (409). It runs on the
 * background work queue. Its job records the collection (name and id), its
 * model and both fingerprints; after a restart reembed_resume runs it again
 * from the first image, since nothing of an unfinished re-embed was committed. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "errors.h"
#include "index/reembed.h"
#include "infer.h"
#include "matryoshka.h"
#include "request_images.h"
#include "routes_index.h"
#include "vit.h"

/* A re-embed job on the background queue: the index's reembed_run, with
 * inference supplied by embed_page. */
struct reembed {
    struct app *app;
    struct coll *c;
    struct model_entry *e;   /* the checkpoint to embed with */
    struct job *job;
    int64_t total;
    double started;          /* clock_now_s() when it began to run, for --reembed-rate */
    /* One page in flight. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool page_done;
    int status;
    char err[ERR_LEN];
};

static void page_done(struct infer_request *r, int status, const char *err, void *user)
{
    (void)r;
    struct reembed *re = user;
    pthread_mutex_lock(&re->mu);
    re->status = status;
    if (status != BATCH_OK) snprintf(re->err, sizeof re->err, "%s", err ? err : "inference failed");
    re->page_done = true;
    pthread_cond_signal(&re->cv);
    pthread_mutex_unlock(&re->mu);
}

/* reembed_embed_fn: one page through the batcher, waited for. */
static int embed_page(void *user, const struct store_image_row *rows, size_t n, int width,
                      float *vecs, char *err, size_t errlen)
{
    struct reembed *re = user;
    const struct model_config *cfg = vit_model_config(re->e->model);
    const int S = request_image_side(cfg, 0);
    /* The token budget and the queue are busy only for a while: wait and retry
     * rather than fail the job (the batcher has no "space free" signal). */
    struct infer_request *r;
    int rc;
    for (;;) {
        model_entry_retain(re->e);   /* infer_new takes it over */
        rc = infer_new(&r, re->app->batcher, re->e, (int)n, S, S, false, false, err, errlen);
        if (rc != BATCH_FULL || atomic_load(&re->app->stopping)) break;
        usleep(20000);
    }
    if (rc != BATCH_OK) return -1;
    for (size_t i = 0; i < n; i++) {
        char why[256];
        if (request_image_prepare(rows[i].image, rows[i].image_len, cfg, 0,
                                  re->app->limits.max_image_pixels, NULL,
                                  r->input + i * 3 * S * S, why, sizeof why)) {
            set_err(err, errlen, "item row %lld: its stored image does not decode: %s",
                    (long long)rows[i].row_id, why);
            infer_free(r);
            return -1;
        }
    }
    re->page_done = false;
    while ((rc = infer_submit(r, page_done, re, err, errlen)) == BATCH_FULL &&
           !atomic_load(&re->app->stopping))
        usleep(20000);
    if (rc) {
        infer_free(r);
        return -1;
    }
    pthread_mutex_lock(&re->mu);
    while (!re->page_done) pthread_cond_wait(&re->cv, &re->mu);
    pthread_mutex_unlock(&re->mu);
    if (re->status != BATCH_OK) {
        set_err(err, errlen, "%s", re->err);
        infer_free(r);
        return -1;
    }
    matryoshka_cut(r->cls, (int)n, r->D, width, true, vecs);
    infer_free(r);
    return 0;
}

/* reembed_progress_fn: records the progress, then with --reembed-rate waits
 * until the pace allows the next page, looking at the shutdown flag often. */
static void progress(void *user, int64_t done)
{
    struct reembed *re = user;
    job_progress(re->job, done);
    const int rate = re->app->limits.reembed_rate;
    if (rate <= 0) return;
    const double due = re->started + (double)done / rate;
    for (double now; (now = clock_now_s()) < due && !atomic_load(&re->app->stopping);) {
        const double wait = due - now < 0.05 ? due - now : 0.05;
        usleep((useconds_t)(wait * 1e6));
    }
}

static void reembed_free(struct reembed *re)
{
    model_entry_release(re->e);
    coll_release(re->c);
    pthread_mutex_destroy(&re->mu);
    pthread_cond_destroy(&re->cv);
    free(re);
}

/* workq_fn on the background queue. */
static void reembed_job(void *arg)
{
    struct reembed *re = arg;
    char err[ERR_LEN] = "";
    re->started = clock_now_s();
    const struct reembed_spec spec = {.c = re->c, .fingerprint = re->e->fingerprint,
                                      .total = re->total, .embed = embed_page,
                                      .progress = progress, .user = re,
                                      .stop = &re->app->stopping};
    const int rc = reembed_run(&spec, err, sizeof err);
    if (rc && atomic_load(&re->app->stopping))
        job_suspend(re->job); /* cut short by the shutdown: the next start resumes it */
    else
        job_finish(re->job, rc ? err : NULL);
    reembed_free(re);
}

/* Begins c's job and queues the re-embed, which takes over c and e; 0, or a
 * store code with a message (c and e are still the caller's). */
static int launch(struct app *app, struct coll *c, struct model_entry *e, struct job *job,
                  int64_t total, char *err, size_t errlen)
{
    struct reembed *re = calloc(1, sizeof *re);
    if (!re) return set_err_code(err, errlen, STORE_ERR, "out of memory");
    int rc = coll_begin_job(c, job_id(job), err, errlen);
    if (rc) {
        free(re);
        return rc;
    }
    *re = (struct reembed){.app = app, .c = c, .e = e, .job = job, .total = total};
    pthread_mutex_init(&re->mu, NULL);
    pthread_cond_init(&re->cv, NULL);
    if (workq_submit(app->background, reembed_job, re)) {
        coll_end_job(c);
        pthread_mutex_destroy(&re->mu);
        pthread_cond_destroy(&re->cv);
        free(re);
        return set_err_code(err, errlen, STORE_ERR,
                            "the background work queue is full or shutting down");
    }
    return 0;
}

int reembed_resume(void *ctx, struct job *job, const char *collection, const json_t *params,
                   char *err, size_t errlen)
{
    struct app *app = ctx;
    const char *model = json_string_value(json_object_get(params, "model"));
    const char *to = json_string_value(json_object_get(params, "to_fingerprint"));
    const json_t *cid = json_object_get(params, "collection_id");
    if (!model || !to || !json_is_integer(cid))
        return set_err(err, errlen, "its parameters name no model, fingerprint or collection id");
    struct coll *c = index_acquire(app->index, collection);
    if (!c) return set_err(err, errlen, "collection '%s' no longer exists", collection);
    struct collection_info info;
    coll_info(c, &info);
    struct model_entry *e = NULL;
    char why[ERR_LEN];
    int64_t with = 0, without = 0;
    int rc = -1;
    if (info.id != json_integer_value(cid))
        set_err(err, errlen, "collection '%s' was dropped (one of that name was made since)",
                collection);
    else if (strcmp(info.model, model))
        set_err(err, errlen, "collection '%s' now belongs to model '%s', not '%s'", collection,
                info.model, model);
    else if (registry_acquire(app->registry, model, &e, why, sizeof why))
        set_err(err, errlen, "model '%s' is not loaded: %s", model, why);
    else if (strcmp(e->fingerprint, to))
        set_err(err, errlen, "model '%s' is now checkpoint %.16s..., not %.16s... that the job "
                "re-embeds with; start a new re-embed", model, e->fingerprint, to);
    else if (store_collection_image_counts(coll_store(c), info.id, &with, &without, why,
                                           sizeof why))
        set_err(err, errlen, "%s", why);
    else if (without > 0)
        set_err(err, errlen, "%lld items of collection '%s' have no source image",
                (long long)without, collection);
    else {
        job_set_total(job, with); /* counted again: writes were open while it was down */
        if (launch(app, c, e, job, with, why, sizeof why) == 0) {
            rc = 0;
            c = NULL; /* the job owns the references now */
            e = NULL;
        } else {
            set_err(err, errlen, "%s", why);
        }
    }
    if (e) model_entry_release(e);
    coll_release(c);
    return rc;
}

static void reembed(struct http_request *req, void *user)
{
    struct app *app = user;
    struct coll *c = route_coll(req, app);
    if (!c) return;
    char err[ERR_LEN];
    struct model_entry *e = NULL;
    int64_t with = 0, without = 0;
    struct collection_info info;
    coll_info(c, &info);
    if (!info.store_images) {
        http_reply_errorf(req, 400, NULL, "collection '%s' does not keep source images "
                          "(store_images is false), so it cannot be re-embedded", info.name);
    } else if (!atomic_load(&app->ready)) {
        http_add_header(req, "Retry-After", "2");
        http_reply_error(req, 503, NULL, "models are still loading");
    } else if (registry_acquire(app->registry, info.model, &e, err, sizeof err)) {
        http_reply_errorf(req, 409, NULL, "the collection's model '%s' is not loaded: %s",
                          info.model, err);
    } else if (store_collection_image_counts(coll_store(c), info.id, &with, &without, err,
                                             sizeof err)) {
        http_reply_error(req, 500, NULL, err);
    } else if (without > 0) {
        http_reply_errorf(req, 409, NULL, "%lld items of collection '%s' were inserted as vectors "
                          "and have no source image; delete them before re-embedding",
                          (long long)without, info.name);
    } else {
        json_t *params = json_pack("{s:s, s:I, s:s, s:s}", "model", info.model, "collection_id",
                                   (json_int_t)info.id, "from_fingerprint", info.fingerprint,
                                   "to_fingerprint", e->fingerprint);
        struct job *job = params ? jobs_start(app->jobs, "reembed", info.name, params, with)
                                 : NULL;
        json_decref(params);
        int rc = job ? launch(app, c, e, job, with, err, sizeof err)
                     : set_err_code(err, sizeof err, STORE_ERR,
                                    "the job could not be recorded (see the server's log)");
        if (rc) {
            if (job) jobs_discard(app->jobs, job);
            route_reply_store_error(req, rc, err);
        } else {
            c = NULL; /* the job owns the references now */
            e = NULL;
            http_reply_json(req, 202, json_pack("{s:o}", "job",
                                                jobs_get_json(app->jobs, job_id(job))));
        }
    }
    if (e) model_entry_release(e);
    coll_release(c);
}

/* ---- ANN builds: POST|DELETE /v1/collections/{name}/ann ---- */

/* A build reports into its job from the build's thread. A shutdown cancels the
 * build: the job is then suspended, since the next start builds the graph
 * again from the description committed first, and ann_resume follows that. */
struct ann_job {
    struct app *app;
    struct job *job;
};

static void ann_progress(void *ctx, int64_t done, int64_t total)
{
    (void)total;
    job_progress(((struct ann_job *)ctx)->job, done);
}

static void ann_done(void *ctx, const char *error)
{
    struct ann_job *a = ctx;
    if (error && atomic_load(&a->app->stopping))
        job_suspend(a->job);
    else
        job_finish(a->job, error);
    free(a);
}

static void ann_add(struct http_request *req, void *user)
{
    struct app *app = user;
    json_t *body = route_json_body(req);
    if (!body) return;
    struct coll *c = route_coll(req, app);
    if (!c) {
        json_decref(body);
        return;
    }
    char why[ERR_LEN], err[ERR_LEN];
    struct coll_ann_desc d;
    int64_t count = 0;
    if (coll_level(c) != STORE_LEVEL_CLS) {
        http_reply_errorf(req, 400, NULL, "collection '%s' is patch-level: 'ann' indexes "
                          "CLS-level collections only", coll_name(c));
    } else if (coll_ann_parse(body, coll_width(c), &d, why, sizeof why)) {
        http_reply_error(req, 400, NULL, why);
    } else if (store_collection_count(coll_store(c), coll_id(c), &count, err, sizeof err)) {
        http_reply_error(req, 500, NULL, err);
    } else {
        json_t *params = json_pack("{s:I}", "collection_id", (json_int_t)coll_id(c));
        struct ann_job *a = calloc(1, sizeof *a);
        struct job *job = params && a ? jobs_start(app->jobs, "ann_build", coll_name(c), params,
                                                   count)
                                      : NULL;
        json_decref(params);
        if (job) *a = (struct ann_job){app, job};
        const int rc = job ? coll_ann_set(c, &d, ann_progress, ann_done, a, err, sizeof err)
                           : set_err_code(err, sizeof err, STORE_ERR,
                                          "the job could not be recorded (see the server's log)");
        if (rc) {
            if (job) jobs_discard(app->jobs, job);
            free(a);
            route_reply_store_error(req, rc, err);
        } else {
            json_t *j = jobs_get_json(app->jobs, job_id(job));
            http_reply_json(req, 202, json_pack("{s:o}", "job", j ? j : json_null()));
        }
    }
    json_decref(body);
    coll_release(c);
}

/* An "ann_build" job cut short: index_open has started the same build again
 * (or loaded its graph); the job follows it on the background queue until it
 * ends, polling the collection's ANN state. */
struct ann_follow {
    struct app *app;
    struct coll *c;
    struct job *job;
};

static void ann_follow_main(void *arg)
{
    struct ann_follow *f = arg;
    struct coll_ann_info info;
    int64_t total = -1;
    for (;;) {
        coll_ann_info(f->c, &info);
        if (!info.building) break;
        if (atomic_load(&f->app->stopping)) {
            job_suspend(f->job);
            goto out;
        }
        if (info.build_total != total) job_set_total(f->job, total = info.build_total);
        job_progress(f->job, info.build_done);
        usleep(200000);
    }
    if (info.present && info.ready && info.build_total > 0) job_progress(f->job, info.build_total);
    job_finish(f->job, !info.present ? "the collection's ANN index was removed"
                       : info.ready   ? NULL
                       : info.error[0] ? info.error
                                       : "the ANN build did not finish");
out:
    coll_release(f->c);
    free(f);
}

int ann_resume(void *ctx, struct job *job, const char *collection, const json_t *params,
               char *err, size_t errlen)
{
    struct app *app = ctx;
    const json_t *cid = json_object_get(params, "collection_id");
    if (!json_is_integer(cid)) return set_err(err, errlen, "its parameters name no collection id");
    struct coll *c = index_acquire(app->index, collection);
    if (!c) return set_err(err, errlen, "collection '%s' no longer exists", collection);
    struct coll_ann_info info;
    coll_ann_info(c, &info);
    struct ann_follow *f = NULL;
    if (coll_id(c) != json_integer_value(cid))
        set_err(err, errlen, "collection '%s' was dropped (one of that name was made since)",
                collection);
    else if (!info.present)
        set_err(err, errlen, "collection '%s' has no ANN index any more", collection);
    else if (!(f = calloc(1, sizeof *f)))
        set_err(err, errlen, "out of memory");
    else {
        *f = (struct ann_follow){app, c, job};
        if (workq_submit(app->background, ann_follow_main, f) == 0) return 0;
        set_err(err, errlen, "the background work queue is full or shutting down");
        free(f);
    }
    coll_release(c);
    return -1;
}

static void ann_delete(struct http_request *req, void *user)
{
    struct coll *c = route_coll(req, user);
    if (!c) return;
    char err[ERR_LEN];
    const int rc = coll_ann_remove(c, err, sizeof err);
    if (rc) route_reply_store_error(req, rc, err);
    else http_reply_json(req, 200, json_pack("{s:s}", "deleted", "ann"));
    coll_release(c);
}

static void get_job(struct http_request *req, void *user)
{
    struct app *app = user;
    const char *id = http_param(req, "id");
    json_t *j = jobs_get_json(app->jobs, id);
    if (!j) {
        char shown[64];
        printable_copy(id, strlen(id), shown, sizeof shown);
        http_reply_errorf(req, 404, NULL, "no job '%s' (the newest %d finished jobs are kept)",
                          shown, JOBS_KEEP);
        return;
    }
    http_reply_json(req, 200, j);
}

static void list_jobs(struct http_request *req, void *user)
{
    struct app *app = user;
    http_reply_json(req, 200, jobs_list_json(app->jobs));
}

int routes_jobs_register(struct http_router *r, struct app *app, char *err, size_t errlen)
{
    if (route_add(r, app, "POST", "/v1/collections/{name}/reembed", reembed, err, errlen))
        return -1;
    if (route_add(r, app, "POST", "/v1/collections/{name}/ann", ann_add, err, errlen) ||
        route_add(r, app, "DELETE", "/v1/collections/{name}/ann", ann_delete, err, errlen))
        return -1;
    if (route_add(r, app, "GET", "/v1/jobs", list_jobs, err, errlen)) return -1;
    return route_add(r, app, "GET", "/v1/jobs/{id}", get_job, err, errlen);
}
