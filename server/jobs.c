/* The in-memory job table; see jobs.h. */
#include "jobs.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

struct job {
    char id[JOB_ID_LEN];
    char type[16];
    char collection[128];
    char from_fp[72], to_fp[72];
    enum job_status status;
    int64_t done, total;
    char error[512];
    char created[32], finished[32];
    struct jobs *owner;
};

struct jobs {
    pthread_mutex_t mu;
    struct job *ring[JOBS_KEEP]; /* oldest evicted first, but never a running job */
    int n;
};

static void iso_now(char out[32])
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

struct jobs *jobs_create(void)
{
    struct jobs *js = calloc(1, sizeof *js);
    if (js) pthread_mutex_init(&js->mu, NULL);
    return js;
}

void jobs_free(struct jobs *js)
{
    if (!js) return;
    for (int i = 0; i < js->n; i++) free(js->ring[i]);
    pthread_mutex_destroy(&js->mu);
    free(js);
}

struct job *jobs_start(struct jobs *js, const char *type, const char *collection,
                       const char *from_fingerprint, const char *to_fingerprint, int64_t total)
{
    struct job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    unsigned char r[8];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
        free(j);
        return NULL;
    }
    for (int i = 0; i < 8; i++) snprintf(j->id + 2 * i, 3, "%02x", r[i]);
    snprintf(j->type, sizeof j->type, "%s", type);
    snprintf(j->collection, sizeof j->collection, "%s", collection);
    snprintf(j->from_fp, sizeof j->from_fp, "%s", from_fingerprint);
    snprintf(j->to_fp, sizeof j->to_fp, "%s", to_fingerprint);
    j->total = total;
    j->status = JOB_RUNNING;
    j->owner = js;
    iso_now(j->created);
    pthread_mutex_lock(&js->mu);
    if (js->n == JOBS_KEEP) { /* evict the oldest finished job */
        int i = 0;
        while (i < js->n && js->ring[i]->status == JOB_RUNNING) i++;
        if (i == js->n) {
            pthread_mutex_unlock(&js->mu);
            free(j);
            return NULL;
        }
        free(js->ring[i]);
        memmove(js->ring + i, js->ring + i + 1, (size_t)(js->n - i - 1) * sizeof *js->ring);
        js->n--;
    }
    js->ring[js->n++] = j;
    pthread_mutex_unlock(&js->mu);
    return j;
}

const char *job_id(const struct job *j) { return j->id; }

void jobs_discard(struct jobs *js, struct job *j)
{
    pthread_mutex_lock(&js->mu);
    for (int i = 0; i < js->n; i++)
        if (js->ring[i] == j) {
            memmove(js->ring + i, js->ring + i + 1, (size_t)(js->n - i - 1) * sizeof *js->ring);
            js->n--;
            free(j);
            break;
        }
    pthread_mutex_unlock(&js->mu);
}

void job_progress(struct job *j, int64_t done)
{
    pthread_mutex_lock(&j->owner->mu);
    j->done = done;
    pthread_mutex_unlock(&j->owner->mu);
}

void job_finish(struct job *j, const char *error)
{
    pthread_mutex_lock(&j->owner->mu);
    j->status = error ? JOB_FAILED : JOB_SUCCEEDED;
    if (error) snprintf(j->error, sizeof j->error, "%s", error);
    iso_now(j->finished);
    pthread_mutex_unlock(&j->owner->mu);
}

static json_t *to_json(const struct job *j)
{
    static const char *names[] = {"running", "succeeded", "failed"};
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:s, s:s, s:s}", "id", j->id, "type",
                          j->type, "collection", j->collection, "status", names[j->status],
                          "done", (json_int_t)j->done, "total", (json_int_t)j->total,
                          "from_fingerprint", j->from_fp, "to_fingerprint", j->to_fp,
                          "created_at", j->created);
    if (o && j->status != JOB_RUNNING) json_object_set_new(o, "finished_at", json_string(j->finished));
    if (o && j->status == JOB_FAILED) json_object_set_new(o, "error", json_string(j->error));
    return o;
}

json_t *jobs_get_json(struct jobs *js, const char *id)
{
    json_t *o = NULL;
    pthread_mutex_lock(&js->mu);
    for (int i = 0; i < js->n && !o; i++)
        if (!strcmp(js->ring[i]->id, id)) o = to_json(js->ring[i]);
    pthread_mutex_unlock(&js->mu);
    return o;
}

json_t *jobs_list_json(struct jobs *js)
{
    json_t *arr = json_array();
    pthread_mutex_lock(&js->mu);
    for (int i = js->n - 1; i >= 0; i--) json_array_append_new(arr, to_json(js->ring[i]));
    pthread_mutex_unlock(&js->mu);
    return json_pack("{s:o}", "jobs", arr);
}
