/* The job table: SQLite rows (index/store_jobs.c) and an in-memory copy kept
 * equal to them; see jobs.h. The copy answers GETs without touching SQLite;
 * writes go to the row first under the table's lock (so the copy never shows
 * what the row does not hold), except progress, whose row is written after
 * the lock is let go so that an fsync never holds up a GET. */
#include "jobs.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "index/store_jobs.h"

#define JOBS_TYPES_MAX 16

struct job {
    struct store_job row;   /* as in the table; row.params unused (see params) */
    json_t *params;         /* the parsed params, never changed after the start */
    double last_write;      /* monotonic seconds of the last progress write */
    struct jobs *owner;
};

struct jobs {
    pthread_mutex_t mu;
    struct index_store *store; /* NULL: memory only */
    struct job **v;            /* oldest first: the table's rowid order */
    size_t n, cap, finished;
    struct { char type[STORE_JOB_TYPE_MAX]; jobs_resume_fn fn; void *ctx; } types[JOBS_TYPES_MAX];
    int n_types;
};

static void iso_now(char out[STORE_JOB_TIME_MAX])
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    const size_t n = strftime(out, STORE_JOB_TIME_MAX, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, STORE_JOB_TIME_MAX - n, ".%03uZ", (unsigned)(ts.tv_nsec / 1000000) % 1000u);
}

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A row that could not be written leaves the job running in memory: the job
 * itself is not lost, only its record after a restart. */
static void log_store_error(const char *what, const char *id, const char *err)
{
    fprintf(stderr, "franca-server: job %s: could not %s in the index: %s\n", id, what, err);
}

static void job_free(struct job *j)
{
    if (!j) return;
    json_decref(j->params);
    free(j);
}

static int append(struct jobs *js, struct job *j)
{
    if (js->n == js->cap) {
        const size_t cap = js->cap ? 2 * js->cap : 64;
        struct job **v = realloc(js->v, cap * sizeof *v);
        if (!v) return -1;
        js->v = v;
        js->cap = cap;
    }
    js->v[js->n++] = j;
    if (j->row.status != STORE_JOB_RUNNING) js->finished++;
    return 0;
}

static void remove_at(struct jobs *js, size_t i)
{
    if (js->v[i]->row.status != STORE_JOB_RUNNING) js->finished--;
    job_free(js->v[i]);
    memmove(js->v + i, js->v + i + 1, (js->n - i - 1) * sizeof *js->v);
    js->n--;
}

/* Past JOBS_KEEP finished jobs: the oldest go, from memory and from the table
 * (store_jobs_prune deletes by the same rule). Under js->mu. */
static void evict(struct jobs *js)
{
    if (js->finished <= JOBS_KEEP) return;
    for (size_t i = 0; i < js->n && js->finished > JOBS_KEEP;)
        if (js->v[i]->row.status != STORE_JOB_RUNNING)
            remove_at(js, i);
        else
            i++;
    char err[256];
    if (js->store && store_jobs_prune(js->store, JOBS_KEEP, NULL, err, sizeof err))
        log_store_error("delete old jobs", "(prune)", err);
}

struct jobs *jobs_create(struct index_store *store, char *err, size_t errlen)
{
    struct jobs *js = calloc(1, sizeof *js);
    if (!js) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&js->mu, NULL);
    js->store = store;
    struct store_job *rows = NULL;
    size_t n = 0;
    if (store && store_jobs_list(store, &rows, &n, err, errlen)) {
        jobs_free(js);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        struct job *j = calloc(1, sizeof *j);
        if (j) {
            j->row = rows[i];
            j->row.params = NULL;
            j->owner = js;
            /* Unreadable params (never written so) leave the job unresumable. */
            if (rows[i].params) j->params = json_loads(rows[i].params, 0, NULL);
        }
        if (!j || append(js, j)) {
            job_free(j);
            snprintf(err, errlen, "out of memory loading %zu jobs", n);
            store_jobs_free(rows, n);
            jobs_free(js);
            return NULL;
        }
    }
    store_jobs_free(rows, n);
    pthread_mutex_lock(&js->mu);
    evict(js);
    pthread_mutex_unlock(&js->mu);
    return js;
}

void jobs_free(struct jobs *js)
{
    if (!js) return;
    for (size_t i = 0; i < js->n; i++) job_free(js->v[i]);
    free(js->v);
    pthread_mutex_destroy(&js->mu);
    free(js);
}

struct job *jobs_start(struct jobs *js, const char *type, const char *collection,
                       const json_t *params, int64_t total)
{
    struct job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    unsigned char r[8];
    char *text = params ? json_dumps(params, JSON_COMPACT) : NULL;
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r || (params && !text) ||
        (params && !(j->params = json_deep_copy(params)))) {
        free(text);
        job_free(j);
        return NULL;
    }
    for (int i = 0; i < 8; i++) snprintf(j->row.id + 2 * i, 3, "%02x", r[i]);
    snprintf(j->row.type, sizeof j->row.type, "%s", type);
    snprintf(j->row.collection, sizeof j->row.collection, "%s", collection);
    j->row.status = STORE_JOB_RUNNING;
    j->row.total = total;
    j->row.attempts = 1;
    iso_now(j->row.created_at);
    memcpy(j->row.updated_at, j->row.created_at, sizeof j->row.updated_at);
    j->last_write = mono_now();
    j->owner = js;
    char err[256];
    pthread_mutex_lock(&js->mu);
    j->row.params = text; /* only for the insert */
    int rc = js->store ? store_job_insert(js->store, &j->row, err, sizeof err) : 0;
    j->row.params = NULL;
    if (rc) log_store_error("record the new job", j->row.id, err);
    if (!rc && append(js, j)) {
        rc = -1;
        if (js->store) store_job_delete(js->store, j->row.id, err, sizeof err);
    }
    pthread_mutex_unlock(&js->mu);
    free(text);
    if (rc) {
        job_free(j);
        return NULL;
    }
    return j;
}

const char *job_id(const struct job *j) { return j->row.id; }

void jobs_discard(struct jobs *js, struct job *j)
{
    char err[256];
    pthread_mutex_lock(&js->mu);
    for (size_t i = 0; i < js->n; i++)
        if (js->v[i] == j) {
            if (js->store && store_job_delete(js->store, j->row.id, err, sizeof err))
                log_store_error("delete the job", j->row.id, err);
            remove_at(js, i);
            break;
        }
    pthread_mutex_unlock(&js->mu);
}

/* Writes done and total to the row when force or when the last write is
 * JOBS_PROGRESS_SECONDS old: a row per page would be an fsync per page. */
static void progress(struct job *j, int64_t done, int64_t total, bool force)
{
    struct jobs *js = j->owner;
    char now[STORE_JOB_TIME_MAX], id[STORE_JOB_ID_MAX], err[256];
    const double t = mono_now();
    pthread_mutex_lock(&js->mu);
    j->row.done = done;
    j->row.total = total;
    const bool write = js->store && (force || t - j->last_write >= JOBS_PROGRESS_SECONDS);
    if (write) {
        j->last_write = t;
        iso_now(now);
        memcpy(j->row.updated_at, now, sizeof now);
        memcpy(id, j->row.id, sizeof id);
    }
    pthread_mutex_unlock(&js->mu);
    /* Only the job's own thread writes its progress, so rows stay in order. */
    if (write && store_job_progress(js->store, id, done, total, now, err, sizeof err))
        log_store_error("record its progress", id, err);
}

void job_progress(struct job *j, int64_t done)
{
    pthread_mutex_lock(&j->owner->mu);
    const int64_t total = j->row.total;
    pthread_mutex_unlock(&j->owner->mu);
    progress(j, done, total, false);
}

void job_set_total(struct job *j, int64_t total)
{
    pthread_mutex_lock(&j->owner->mu);
    const int64_t done = j->row.done;
    pthread_mutex_unlock(&j->owner->mu);
    progress(j, done, total, true);
}

void job_suspend(struct job *j)
{
    pthread_mutex_lock(&j->owner->mu);
    const int64_t done = j->row.done, total = j->row.total;
    pthread_mutex_unlock(&j->owner->mu);
    progress(j, done, total, true);
}

void job_finish(struct job *j, const char *error)
{
    struct jobs *js = j->owner;
    char err[256];
    pthread_mutex_lock(&js->mu);
    if (j->row.status == STORE_JOB_RUNNING) js->finished++;
    j->row.status = error ? STORE_JOB_FAILED : STORE_JOB_SUCCEEDED;
    snprintf(j->row.error, sizeof j->row.error, "%s", error ? error : "");
    iso_now(j->row.finished_at);
    memcpy(j->row.updated_at, j->row.finished_at, sizeof j->row.updated_at);
    if (js->store && store_job_finish(js->store, j->row.id, j->row.status, j->row.error,
                                      j->row.done, j->row.finished_at, err, sizeof err))
        log_store_error("record its end", j->row.id, err);
    evict(js); /* may free j */
    pthread_mutex_unlock(&js->mu);
}

int jobs_register_type(struct jobs *js, const char *type, jobs_resume_fn fn, void *ctx)
{
    int rc = -1;
    pthread_mutex_lock(&js->mu);
    bool taken = false;
    for (int i = 0; i < js->n_types; i++) taken |= !strcmp(js->types[i].type, type);
    if (!taken && js->n_types < JOBS_TYPES_MAX && strlen(type) < STORE_JOB_TYPE_MAX) {
        snprintf(js->types[js->n_types].type, STORE_JOB_TYPE_MAX, "%s", type);
        js->types[js->n_types].fn = fn;
        js->types[js->n_types].ctx = ctx;
        js->n_types++;
        rc = 0;
    }
    pthread_mutex_unlock(&js->mu);
    return rc;
}

/* One job loaded as running: attempts + 1 and done 0 in its row and here, then
 * its type's resume function. 0 when it runs again. */
static int resume_one(struct jobs *js, struct job *j)
{
    char err[STORE_JOB_ERROR_MAX - 64] = "", now[STORE_JOB_TIME_MAX]; /* fits in msg below */
    iso_now(now);
    int64_t attempts = j->row.attempts + 1;
    jobs_resume_fn fn = NULL;
    void *ctx = NULL;
    pthread_mutex_lock(&js->mu);
    int rc = js->store ? store_job_restart(js->store, j->row.id, now, &attempts, err, sizeof err)
                       : 0;
    if (!rc) {
        j->row.attempts = attempts;
        j->row.done = 0;
        memcpy(j->row.updated_at, now, sizeof now);
        j->last_write = mono_now();
    }
    for (int i = 0; i < js->n_types; i++)
        if (!strcmp(js->types[i].type, j->row.type)) {
            fn = js->types[i].fn;
            ctx = js->types[i].ctx;
        }
    pthread_mutex_unlock(&js->mu);
    if (rc) {
        log_store_error("restart", j->row.id, err);
        return -1; /* its row stays running: the next start tries again */
    }
    if (!fn)
        snprintf(err, sizeof err, "this server cannot run '%s' jobs", j->row.type);
    else if (!j->params) /* every type records what it needs */
        snprintf(err, sizeof err, "its recorded parameters are missing or unreadable");
    else if (!fn(ctx, j, j->row.collection, j->params, err, sizeof err))
        return 0;
    char msg[STORE_JOB_ERROR_MAX];
    snprintf(msg, sizeof msg, "could not be resumed after a restart: %s", err);
    job_finish(j, msg);
    return -1;
}

int jobs_resume_all(struct jobs *js)
{
    /* The running jobs now; none of them ends (and so none is evicted) before
     * resume_one reaches it. */
    pthread_mutex_lock(&js->mu);
    size_t n = 0;
    struct job **todo = malloc((js->n ? js->n : 1) * sizeof *todo);
    for (size_t i = 0; todo && i < js->n; i++)
        if (js->v[i]->row.status == STORE_JOB_RUNNING) todo[n++] = js->v[i];
    pthread_mutex_unlock(&js->mu);
    if (!todo) return 0;
    int resumed = 0;
    for (size_t i = 0; i < n; i++) {
        char id[STORE_JOB_ID_MAX];
        memcpy(id, todo[i]->row.id, sizeof id);
        const int rc = resume_one(js, todo[i]);
        fprintf(stderr, "franca-server: job %s %s\n", id,
                rc ? "could not be resumed (see its error)" : "resumed");
        resumed += rc == 0;
    }
    free(todo);
    return resumed;
}

static json_t *to_json(const struct job *j)
{
    const struct store_job *r = &j->row;
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:s, s:s}", "id", r->id, "type",
                          r->type, "collection", r->collection, "status",
                          store_job_status_name(r->status), "done", (json_int_t)r->done,
                          "total", (json_int_t)r->total, "attempts", (json_int_t)r->attempts,
                          "created_at", r->created_at, "updated_at", r->updated_at);
    if (o && r->status != STORE_JOB_RUNNING)
        json_object_set_new(o, "finished_at", json_string(r->finished_at));
    if (o && r->status == STORE_JOB_FAILED) json_object_set_new(o, "error", json_string(r->error));
    /* The type's parameters (e.g. a re-embed's fingerprints), never over the
     * fields above; a deep copy, since replies are built on other threads. */
    if (o && j->params) json_object_update_missing_new(o, json_deep_copy(j->params));
    return o;
}

json_t *jobs_get_json(struct jobs *js, const char *id)
{
    json_t *o = NULL;
    pthread_mutex_lock(&js->mu);
    for (size_t i = 0; i < js->n && !o; i++)
        if (!strcmp(js->v[i]->row.id, id)) o = to_json(js->v[i]);
    pthread_mutex_unlock(&js->mu);
    return o;
}

json_t *jobs_list_json(struct jobs *js)
{
    json_t *arr = json_array();
    pthread_mutex_lock(&js->mu);
    for (size_t i = js->n; i-- > 0;) json_array_append_new(arr, to_json(js->v[i]));
    pthread_mutex_unlock(&js->mu);
    return json_pack("{s:o}", "jobs", arr);
}
