/* Unit tests of server/index/store_jobs.c: a job's row from creation through
 * progress, restart and its end; pruning keeps running jobs and the newest
 * finished ones; everything is read back the same after reopening. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "rm_rf.h"
#include "index/store.h"
#include "index/store_jobs.h"

static char err[512];

static struct store_job job(const char *id, const char *coll, const char *params)
{
    struct store_job j;
    memset(&j, 0, sizeof j);
    snprintf(j.id, sizeof j.id, "%s", id);
    snprintf(j.type, sizeof j.type, "reembed");
    snprintf(j.collection, sizeof j.collection, "%s", coll);
    j.status = STORE_JOB_RUNNING;
    j.total = 100;
    j.params = (char *)params;
    j.attempts = 1;
    snprintf(j.created_at, sizeof j.created_at, "2026-12-07T06:00:00.000Z");
    return j;
}

static const struct store_job *find(const struct store_job *all, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(all[i].id, id)) return &all[i];
    return NULL;
}

static void lifecycle(struct index_store *s)
{
    struct store_job a = job("a1", "photos", "{\"to_fingerprint\":\"fp-b\"}");
    CHECK(store_job_insert(s, &a, err, sizeof err) == 0, "%s", err);
    CHECK(store_job_insert(s, &a, err, sizeof err) == STORE_EXISTS, "a taken id: %s", err);
    struct store_job b = job("b2", "other", NULL);
    CHECK(store_job_insert(s, &b, err, sizeof err) == 0, "%s", err);
    CHECK(store_job_progress(s, "a1", 40, 120, "2026-12-07T06:00:01.000Z", err, sizeof err) == 0,
          "%s", err);
    CHECK(store_job_progress(s, "zz", 1, 1, "t", err, sizeof err) == STORE_NOT_FOUND,
          "progress of an unknown job: %s", err);
    int64_t attempts = 0;
    CHECK(store_job_restart(s, "a1", "2026-12-07T06:00:02.000Z", &attempts, err, sizeof err) == 0
              && attempts == 2, "restart: %s (attempts %lld)", err, (long long)attempts);
    CHECK(store_job_finish(s, "b2", STORE_JOB_FAILED, "collection 'other' was dropped", 7,
                           "2026-12-07T06:00:03.000Z", err, sizeof err) == 0, "%s", err);
    CHECK(store_job_restart(s, "b2", "t", &attempts, err, sizeof err) == STORE_NOT_FOUND,
          "a finished job is not restarted: %s", err);
    CHECK(store_job_progress(s, "b2", 9, 9, "t", err, sizeof err) == STORE_NOT_FOUND,
          "a finished job takes no progress: %s", err);
    CHECK(store_job_finish(s, "b2", STORE_JOB_RUNNING, NULL, 0, "t", err, sizeof err)
              == STORE_INVALID, "finishing as running is refused");

    struct store_job *all;
    size_t n;
    CHECK(store_jobs_list(s, &all, &n, err, sizeof err) == 0 && n == 2, "list: %s (%zu)", err, n);
    const struct store_job *ga = find(all, n, "a1"), *gb = find(all, n, "b2");
    CHECK(ga && gb && ga == &all[0], "both listed, oldest first");
    if (ga && gb) {
        CHECK(ga->status == STORE_JOB_RUNNING && ga->done == 0 && ga->total == 120 &&
              ga->attempts == 2 && ga->params && !strcmp(ga->params, a.params) &&
              !strcmp(ga->updated_at, "2026-12-07T06:00:02.000Z") && !ga->finished_at[0] &&
              !ga->error[0] && !strcmp(ga->collection, "photos") && !strcmp(ga->type, "reembed"),
              "a1 running, restarted: done %lld total %lld attempts %lld params %s",
              (long long)ga->done, (long long)ga->total, (long long)ga->attempts,
              ga->params ? ga->params : "(null)");
        CHECK(gb->status == STORE_JOB_FAILED && gb->done == 7 && gb->attempts == 1 &&
              !gb->params && !strcmp(gb->error, "collection 'other' was dropped") &&
              !strcmp(gb->finished_at, "2026-12-07T06:00:03.000Z") &&
              !strcmp(gb->created_at, "2026-12-07T06:00:00.000Z"),
              "b2 failed with its error: '%s' at '%s'", gb->error, gb->finished_at);
    }
    store_jobs_free(all, n);
    CHECK(store_job_finish(s, "a1", STORE_JOB_SUCCEEDED, "ignored", 120, "2026-12-07T06:00:04.000Z",
                           err, sizeof err) == 0, "%s", err);
    CHECK(store_jobs_list(s, &all, &n, err, sizeof err) == 0 && n == 2, "%s", err);
    ga = find(all, n, "a1");
    CHECK(ga && ga->status == STORE_JOB_SUCCEEDED && !ga->error[0] && ga->done == 120,
          "a1 succeeded without an error");
    store_jobs_free(all, n);
}

/* 5 finished and 2 running jobs, keep 2: the 2 newest finished and both running stay. */
static void prune(struct index_store *s)
{
    const char *ids[] = {"p0", "p1", "r0", "p2", "p3", "r1", "p4"};
    for (size_t i = 0; i < 7; i++) {
        struct store_job j = job(ids[i], "c", NULL);
        CHECK(store_job_insert(s, &j, err, sizeof err) == 0, "%s", err);
        if (ids[i][0] == 'p')
            CHECK(store_job_finish(s, ids[i], STORE_JOB_SUCCEEDED, NULL, 1, "t", err, sizeof err)
                      == 0, "%s", err);
    }
    size_t deleted = 0;
    /* lifecycle's a1 and b2 are finished and older than all of these. */
    CHECK(store_jobs_prune(s, 2, &deleted, err, sizeof err) == 0 && deleted == 5,
          "prune: %s (deleted %zu)", err, deleted);
    struct store_job *all;
    size_t n;
    CHECK(store_jobs_list(s, &all, &n, err, sizeof err) == 0 && n == 4, "after prune %zu", n);
    const char *want[] = {"r0", "p3", "r1", "p4"};
    for (size_t i = 0; i < n && i < 4; i++)
        CHECK(!strcmp(all[i].id, want[i]), "kept #%zu: %s, want %s", i, all[i].id, want[i]);
    store_jobs_free(all, n);
    CHECK(store_job_delete(s, "r0", err, sizeof err) == 0, "%s", err);
    CHECK(store_job_delete(s, "r0", err, sizeof err) == 0, "deleting an absent job is no error");
    CHECK(store_jobs_prune(s, 0, &deleted, err, sizeof err) == 0 && deleted == 2,
          "keep 0: every finished job goes (%zu)", deleted);
}

int main(void)
{
    char tmpl[] = "/tmp/franca_store_jobs_XXXXXX";
    char *dir = mkdtemp(tmpl);
    CHECK(dir != NULL, "mkdtemp");
    if (!dir) return check_summary();
    struct index_store *s;
    CHECK(store_open(&s, dir, err, sizeof err) == 0, "%s", err);
    lifecycle(s);
    prune(s);
    struct store_job j = job("kept", "photos", "{\"model\":\"tiny\"}");
    CHECK(store_job_insert(s, &j, err, sizeof err) == 0, "%s", err);
    CHECK(store_job_progress(s, "kept", 33, 100, "t1", err, sizeof err) == 0, "%s", err);
    store_close(s);
    /* Reopened: every row as it was written. */
    CHECK(store_open(&s, dir, err, sizeof err) == 0, "%s", err);
    struct store_job *all;
    size_t n;
    CHECK(store_jobs_list(s, &all, &n, err, sizeof err) == 0 && n == 2, "after reopen %zu", n);
    const struct store_job *k = find(all, n, "kept"), *r1 = find(all, n, "r1");
    CHECK(k && k->status == STORE_JOB_RUNNING && k->done == 33 && k->params &&
          !strcmp(k->params, "{\"model\":\"tiny\"}") && !strcmp(k->updated_at, "t1"),
          "a running job's row survives reopening");
    CHECK(r1 && r1->status == STORE_JOB_RUNNING, "and so does the other running job");
    store_jobs_free(all, n);
    store_close(s);
    rm_rf(dir);
    return check_summary();
}
