/* Background jobs (re-embedding a collection, "reembed"; building its ANN
 * graph, "ann_build") and their progress, for GET /v1/jobs/{id}. Every job is
 * a row of the index database's jobs table (index/store_jobs.h), and this
 * table keeps an in-memory copy equal to the rows: a job's row is written when
 * it starts, its progress at most once per JOBS_PROGRESS_SECONDS, its end
 * once. The newest JOBS_KEEP finished jobs are kept (in memory and in the
 * table), and every running one.
 *
 * After a restart, jobs_resume_all starts every job still 'running' in the
 * table again, with the same id and one more attempt, through the resume
 * function that its type registered (jobs_register_type); a job whose type
 * has none, or whose resume function refuses it, is marked failed. */
#ifndef FRANCA_JOBS_H
#define FRANCA_JOBS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define JOBS_KEEP 1000
#define JOBS_PROGRESS_SECONDS 1.0
#define JOB_ID_LEN 17 /* 16 hex characters and NUL */

struct index_store;
struct jobs;
struct job;

/* The table over store's jobs (NULL: in memory only, forgotten at exit),
 * loaded from it; NULL with a message in err on failure. */
struct jobs *jobs_create(struct index_store *store, char *err, size_t errlen);
void jobs_free(struct jobs *js);

/* A new running job, its row written; NULL when out of memory or when the
 * row could not be written (logged). params (borrowed; a JSON object or NULL)
 * is what its type's resume function needs to run it again; its members also
 * appear in the job's JSON. The table owns the job; the caller may use it
 * until it calls job_finish or job_suspend. */
struct job *jobs_start(struct jobs *js, const char *type, const char *collection,
                       const json_t *params, int64_t total);
const char *job_id(const struct job *j);
/* Forgets a job that never started (e.g. its collection was busy). */
void jobs_discard(struct jobs *js, struct job *j);
/* Items done so far (memory always, the row now and then). */
void job_progress(struct job *j, int64_t done);
/* A new total, e.g. counted again when a resumed job starts (written at once). */
void job_set_total(struct job *j, int64_t total);
/* Ends the job; error NULL means success. */
void job_finish(struct job *j, const char *error);
/* The server is stopping before the job ended: its row stays 'running' (with
 * its progress), so that the next start resumes it. */
void job_suspend(struct job *j);

/* Starts job j (its id, collection and params as recorded) again on the
 * server's background work: 0 when it runs (and will end with job_finish or
 * job_suspend), or -1 with a message in err, and j is marked failed with it. */
typedef int (*jobs_resume_fn)(void *ctx, struct job *j, const char *collection,
                              const json_t *params, char *err, size_t errlen);
/* How jobs of `type` are resumed; before jobs_resume_all. 0, or -1 when the
 * type is registered already or out of memory. */
int jobs_register_type(struct jobs *js, const char *type, jobs_resume_fn fn, void *ctx);
/* Resumes every job the table loaded as running (attempts + 1, done 0), once
 * at startup; returns how many run again. */
int jobs_resume_all(struct jobs *js);

/* The job as JSON (a new reference), or NULL for an unknown id. */
json_t *jobs_get_json(struct jobs *js, const char *id);
/* {"jobs": [...]}, newest first. */
json_t *jobs_list_json(struct jobs *js);

#endif
