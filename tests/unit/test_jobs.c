/* Unit tests of server/jobs.c over a real index store: a job's row follows the
 * in-memory table (start, throttled progress, end, discard), a reopened table
 * shows the same jobs, jobs_resume_all hands each running job to its type's
 * resume function with one more attempt and fails the others, and the newest
 * JOBS_KEEP finished jobs are kept in memory and in the table alike. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "rm_rf.h"
#include "index/store.h"
#include "index/store_jobs.h"
#include "jobs.h"

static char err[512];

/* The row of job id, copied (params left out); 0 when found. */
static int row_of(struct index_store *s, const char *id, struct store_job *out)
{
    struct store_job *all;
    size_t n;
    int found = -1;
    if (store_jobs_list(s, &all, &n, err, sizeof err)) return -1;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(all[i].id, id)) {
            *out = all[i];
            out->params = NULL;
            found = 0;
        }
    store_jobs_free(all, n);
    return found;
}

static json_int_t int_of(json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

static const char *str_of(json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v ? v : "";
}

struct resumed {
    int calls;
    char ids[4][JOB_ID_LEN];
    struct job *jobs[4];
    char model[32];
    int refuse;
};

static int resume_fn(void *ctx, struct job *j, const char *collection, const json_t *params,
                     char *e, size_t elen)
{
    struct resumed *r = ctx;
    if (r->refuse) return snprintf(e, elen, "collection '%s' no longer exists", collection), -1;
    if (r->calls < 4) {
        snprintf(r->ids[r->calls], JOB_ID_LEN, "%s", job_id(j));
        r->jobs[r->calls] = j;
    }
    r->calls++;
    snprintf(r->model, sizeof r->model, "%s", json_string_value(json_object_get(params, "model")));
    return 0;
}

int main(void)
{
    char tmpl[] = "/tmp/franca_jobs_XXXXXX";
    char *dir = mkdtemp(tmpl);
    CHECK(dir != NULL, "mkdtemp");
    if (!dir) return check_summary();
    struct index_store *s;
    CHECK(store_open(&s, dir, err, sizeof err) == 0, "%s", err);
    struct jobs *js = jobs_create(s, err, sizeof err);
    CHECK(js != NULL, "%s", err);
    json_t *params = json_pack("{s:s, s:s}", "model", "tiny", "to_fingerprint", "fp-b");

    /* Start, progress (written at most once a second), end. */
    struct job *a = jobs_start(js, "reembed", "photos", params, 10);
    CHECK(a != NULL, "start");
    const char *aid = job_id(a);
    char a_id[JOB_ID_LEN];
    snprintf(a_id, sizeof a_id, "%s", aid);
    struct store_job row;
    CHECK(row_of(s, a_id, &row) == 0 && row.status == STORE_JOB_RUNNING && row.total == 10 &&
          row.attempts == 1, "the row is written at the start");
    job_progress(a, 3);
    json_t *o = jobs_get_json(js, a_id);
    CHECK(o && int_of(o, "done") == 3 && !strcmp(str_of(o, "to_fingerprint"), "fp-b") &&
          int_of(o, "attempts") == 1, "memory has the progress and the params");
    json_decref(o);
    CHECK(row_of(s, a_id, &row) == 0 && row.done == 0, "but not the row, within a second (%lld)",
          (long long)row.done);
    usleep(1100 * 1000);
    job_progress(a, 5);
    CHECK(row_of(s, a_id, &row) == 0 && row.done == 5, "a second later the row has it (%lld)",
          (long long)row.done);
    job_finish(a, NULL);
    CHECK(row_of(s, a_id, &row) == 0 && row.status == STORE_JOB_SUCCEEDED && row.finished_at[0],
          "the row has its end");

    /* Discarded jobs leave no row; running ones stay for the next start. */
    struct job *d = jobs_start(js, "reembed", "photos", params, 1);
    char d_id[JOB_ID_LEN];
    snprintf(d_id, sizeof d_id, "%s", job_id(d));
    jobs_discard(js, d);
    CHECK(row_of(s, d_id, &row) != 0 && !jobs_get_json(js, d_id), "a discarded job is gone");
    struct job *b = jobs_start(js, "reembed", "photos", params, 7);
    struct job *c = jobs_start(js, "ann_build", "photos", params, 7);
    struct job *e = jobs_start(js, "reembed", "gone", params, 7);
    char b_id[JOB_ID_LEN], c_id[JOB_ID_LEN], e_id[JOB_ID_LEN];
    snprintf(b_id, sizeof b_id, "%s", job_id(b));
    snprintf(c_id, sizeof c_id, "%s", job_id(c));
    snprintf(e_id, sizeof e_id, "%s", job_id(e));
    job_progress(b, 4);
    job_suspend(b); /* as at a shutdown: the row keeps its progress and stays running */
    CHECK(row_of(s, b_id, &row) == 0 && row.status == STORE_JOB_RUNNING && row.done == 4,
          "a suspended job's row: running, done 4");
    jobs_free(js);

    /* The next start: the same jobs; resume hands each running one to its type. */
    js = jobs_create(s, err, sizeof err);
    CHECK(js != NULL, "%s", err);
    json_t *list = jobs_list_json(js);
    json_t *arr = json_object_get(list, "jobs");
    CHECK(json_array_size(arr) == 4 && !strcmp(str_of(json_array_get(arr, 0), "id"), e_id) &&
          !strcmp(str_of(json_array_get(arr, 3), "id"), a_id), "reloaded: 4 jobs, newest first");
    json_decref(list);
    struct resumed ok = {0}, refuse = {.refuse = 1};
    CHECK(jobs_register_type(js, "reembed", resume_fn, &ok) == 0, "register");
    CHECK(jobs_register_type(js, "reembed", resume_fn, &ok) == -1, "a type registers once");
    /* Both reembeds run again; ann_build has no resume function here. */
    CHECK(jobs_resume_all(js) == 2, "two reembeds resume, the ann_build does not");
    CHECK(ok.calls == 2 && !strcmp(ok.ids[0], b_id) && !strcmp(ok.ids[1], e_id) &&
          !strcmp(ok.model, "tiny"), "resume_fn got b and e with their params (%d calls)", ok.calls);
    o = jobs_get_json(js, b_id);
    CHECK(o && !strcmp(str_of(o, "status"), "running") && int_of(o, "attempts") == 2 &&
          int_of(o, "done") == 0, "b runs again: attempts 2, done 0");
    json_decref(o);
    CHECK(row_of(s, b_id, &row) == 0 && row.attempts == 2 && row.done == 0, "and so says its row");
    o = jobs_get_json(js, c_id);
    CHECK(o && !strcmp(str_of(o, "status"), "failed") &&
          strstr(str_of(o, "error"), "cannot run 'ann_build' jobs"),
          "a type without a resume function fails: %s", str_of(o, "error"));
    json_decref(o);
    job_finish(ok.jobs[0], NULL);
    jobs_free(js); /* e stays running; at the next start its resume is refused */

    js = jobs_create(s, err, sizeof err);
    CHECK(js && jobs_register_type(js, "reembed", resume_fn, &refuse) == 0, "register refusing");
    CHECK(jobs_resume_all(js) == 0, "a refused job does not run");
    o = jobs_get_json(js, e_id);
    CHECK(o && !strcmp(str_of(o, "status"), "failed") && int_of(o, "attempts") == 3 &&
          strstr(str_of(o, "error"), "could not be resumed after a restart: collection 'gone'"),
          "refused: failed with the reason, attempts 3: %s", str_of(o, "error"));
    json_decref(o);

    /* Past JOBS_KEEP finished jobs the oldest go, from memory and from the table. */
    for (int i = 0; i < JOBS_KEEP; i++) job_finish(jobs_start(js, "reembed", "x", NULL, 0), "x");
    CHECK(!jobs_get_json(js, a_id) && row_of(s, a_id, &row) != 0 &&
          !jobs_get_json(js, c_id) && row_of(s, c_id, &row) != 0,
          "the oldest finished jobs left memory and the table");
    struct store_job *all;
    size_t n;
    CHECK(store_jobs_list(s, &all, &n, err, sizeof err) == 0 && n == JOBS_KEEP, "%zu rows", n);
    store_jobs_free(all, n);
    list = jobs_list_json(js);
    CHECK(json_array_size(json_object_get(list, "jobs")) == JOBS_KEEP, "as many in memory");
    json_decref(list);
    jobs_free(js);
    json_decref(params);
    store_close(s);
    rm_rf(dir);
    return check_summary();
}
