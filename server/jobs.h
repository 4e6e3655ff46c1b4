/* Background jobs (re-embedding a collection, "reembed"; building its ANN
 * graph, "ann_build") and their progress, for GET /v1/jobs/{id}. Jobs live in
 * memory: a restart forgets them (an interrupted re-embed commits nothing, so
 * the collection keeps its old vectors and can be re-embedded again; an
 * interrupted ANN build is started again by the next start, from the
 * description it committed first). The newest JOBS_KEEP are kept. */
#ifndef FRANCA_JOBS_H
#define FRANCA_JOBS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define JOBS_KEEP 1000
#define JOB_ID_LEN 17 /* 16 hex characters and NUL */

enum job_status { JOB_RUNNING = 0, JOB_SUCCEEDED = 1, JOB_FAILED = 2 };

struct jobs;
struct job;

struct jobs *jobs_create(void);
void jobs_free(struct jobs *js);

/* A new running job; NULL when out of memory. The table owns it; the caller
 * may use it until it calls job_finish. */
struct job *jobs_start(struct jobs *js, const char *type, const char *collection,
                       const char *from_fingerprint, const char *to_fingerprint, int64_t total);
const char *job_id(const struct job *j);
/* Forgets a job that never started (e.g. its collection was busy). */
void jobs_discard(struct jobs *js, struct job *j);
void job_progress(struct job *j, int64_t done);
/* Ends the job; error NULL means success. */
void job_finish(struct job *j, const char *error);

/* The job as JSON (a new reference), or NULL for an unknown id. */
json_t *jobs_get_json(struct jobs *js, const char *id);
/* {"jobs": [...]}, newest first. */
json_t *jobs_list_json(struct jobs *js);

#endif
