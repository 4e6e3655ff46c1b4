/* Re-embedding and jobs:
 *   POST /v1/collections/{name}/reembed   202 {"job": {...}}
 *   GET /v1/jobs, GET /v1/jobs/{id}
 * A re-embed reads the collection's source images page by page, embeds them
 * with the current checkpoint of the collection's model, and switches the
 * collection to the new vectors and fingerprint in one transaction at the end;
 * until then the old vectors serve searches and writes are refused (409). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "errors.h"
#include "infer.h"
#include "matryoshka.h"
#include "request_images.h"
#include "routes_index.h"
#include "vit.h"

#define REEMBED_PAGE 64

struct reembed {
    struct app *app;
    struct coll *c;
    struct model_entry *e;   /* the checkpoint to embed with */
    struct job *job;
    int64_t total;
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

/* Embeds one page into vecs [n, width]; 0 or -1 with err. */
static int embed_page(struct reembed *re, const struct store_image_row *rows, size_t n,
                      float *vecs, char *err, size_t errlen)
{
    const struct model_config *cfg = vit_model_config(re->e->model);
    const int S = request_image_side(cfg, 0);
    /* The token budget and the queue are busy only for a while: wait and retry
     * rather than fail the job. */
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
    matryoshka_cut(r->cls, (int)n, r->D, (int)re->c->info.width, true, vecs);
    infer_free(r);
    return 0;
}

static void *reembed_thread(void *arg)
{
    struct reembed *re = arg;
    struct index_store *st = index_store(re->c->ix);
    const size_t w = (size_t)re->c->info.width;
    char err[ERR_LEN] = "";
    int64_t *row_ids = malloc((size_t)(re->total ? re->total : 1) * sizeof *row_ids);
    float *vecs = malloc((size_t)(re->total ? re->total : 1) * w * sizeof *vecs);
    int64_t done = 0, after = 0;
    int rc = row_ids && vecs ? 0 : set_err(err, sizeof err, "out of memory for %lld vectors",
                                           (long long)re->total);
    while (!rc) {
        if (atomic_load(&re->app->stopping)) {
            rc = set_err(err, sizeof err, "the server shut down; nothing was changed");
            break;
        }
        struct store_image_row *rows;
        size_t n;
        if ((rc = store_images_page(st, re->c->info.id, after, REEMBED_PAGE, &rows, &n, err,
                                    sizeof err)))
            break;
        if (n == 0) {
            store_image_rows_free(rows, n);
            break;
        }
        if (done + (int64_t)n > re->total) { /* writes are refused, so only corruption */
            store_image_rows_free(rows, n);
            rc = set_err(err, sizeof err, "the collection changed while it was re-embedded");
            break;
        }
        rc = embed_page(re, rows, n, vecs + (size_t)done * w, err, sizeof err);
        for (size_t i = 0; !rc && i < n; i++) row_ids[done + (int64_t)i] = rows[i].row_id;
        after = rows[n - 1].row_id;
        store_image_rows_free(rows, n);
        if (!rc) job_progress(re->job, done += (int64_t)n);
    }
    if (!rc && done != re->total)
        rc = set_err(err, sizeof err, "found %lld of %lld images", (long long)done,
                     (long long)re->total);
    if (!rc)
        rc = coll_replace_vectors(re->c, re->e->fingerprint, row_ids, vecs, (size_t)done, err,
                                  sizeof err);
    coll_end_job(re->c);
    job_finish(re->job, rc ? err : NULL);
    free(row_ids);
    free(vecs);
    model_entry_release(re->e);
    coll_release(re->c);
    pthread_mutex_destroy(&re->mu);
    pthread_cond_destroy(&re->cv);
    atomic_fetch_sub(&re->app->loaders, 1);
    free(re);
    return NULL;
}

static void reembed(struct http_request *req, void *user)
{
    struct app *app = user;
    struct coll *c = coll_or_reply(req, app);
    if (!c) return;
    char err[ERR_LEN];
    struct model_entry *e = NULL;
    int64_t with = 0, without = 0;
    if (!c->info.store_images) {
        http_reply_errorf(req, 400, NULL, "collection '%s' does not keep source images "
                          "(store_images is false), so it cannot be re-embedded", c->info.name);
    } else if (!atomic_load(&app->ready)) {
        http_add_header(req, "Retry-After", "2");
        http_reply_error(req, 503, NULL, "models are still loading");
    } else if (registry_acquire(app->registry, c->info.model, &e, err, sizeof err)) {
        http_reply_errorf(req, 409, NULL, "the collection's model '%s' is not loaded: %s",
                          c->info.model, err);
    } else if (store_collection_image_counts(index_store(c->ix), c->info.id, &with, &without,
                                             err, sizeof err)) {
        http_reply_error(req, 500, NULL, err);
    } else if (without > 0) {
        http_reply_errorf(req, 409, NULL, "%lld items of collection '%s' were inserted as vectors "
                          "and have no source image; delete them before re-embedding",
                          (long long)without, c->info.name);
    } else {
        char fp[STORE_TEXT_MAX];
        coll_fingerprint(c, fp);
        struct reembed *re = calloc(1, sizeof *re);
        struct job *job = re ? jobs_start(app->jobs, "reembed", c->info.name, fp, e->fingerprint,
                                          with)
                             : NULL;
        int rc = job ? coll_begin_job(c, job_id(job), err, sizeof err)
                     : set_err_code(err, sizeof err, STORE_ERR, "out of memory");
        if (rc) {
            if (job) jobs_discard(app->jobs, job);
            reply_store_error(req, rc, err);
            free(re);
        } else {
            *re = (struct reembed){.app = app, .c = c, .e = e, .job = job, .total = with};
            pthread_mutex_init(&re->mu, NULL);
            pthread_cond_init(&re->cv, NULL);
            atomic_fetch_add(&app->loaders, 1);
            pthread_t t;
            pthread_attr_t attr;
            pthread_attr_init(&attr);
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            if (pthread_create(&t, &attr, reembed_thread, re)) {
                atomic_fetch_sub(&app->loaders, 1);
                coll_end_job(c);
                job_finish(job, "could not start a thread");
                http_reply_error(req, 500, NULL, "could not start a thread");
                pthread_mutex_destroy(&re->mu);
                pthread_cond_destroy(&re->cv);
                free(re);
            } else {
                http_reply_json(req, 202, json_pack("{s:o}", "job",
                                                    jobs_get_json(app->jobs, job_id(job))));
                c = NULL; /* the thread owns the references now */
                e = NULL;
            }
            pthread_attr_destroy(&attr);
        }
    }
    if (e) model_entry_release(e);
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
        http_reply_errorf(req, 404, NULL, "no job '%s' (jobs are kept in memory until a restart)",
                          shown);
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
    if (route_add(r, app, "GET", "/v1/jobs", list_jobs, err, errlen)) return -1;
    return route_add(r, app, "GET", "/v1/jobs/{id}", get_job, err, errlen);
}
