/* Background jobs kept in the index database (schema v4's jobs table), so that
 * a job outlives a restart: its row is written when it starts, its progress
 * now and then, its end once. The server's job table (server/jobs.c) keeps an
 * in-memory copy equal to these rows; this file is only their SQL. Every call
 * is one statement or transaction under the store's lock, and follows
 * store.h's error convention. */
#ifndef FRANCA_INDEX_STORE_JOBS_H
#define FRANCA_INDEX_STORE_JOBS_H

#include <stddef.h>
#include <stdint.h>

#include "index/store.h"

#define STORE_JOB_ID_MAX 64
#define STORE_JOB_TYPE_MAX 32
#define STORE_JOB_ERROR_MAX 512
#define STORE_JOB_TIME_MAX 32 /* UTC, "YYYY-MM-DDTHH:MM:SS.SSSZ" */

enum store_job_status { STORE_JOB_RUNNING = 0, STORE_JOB_SUCCEEDED = 1, STORE_JOB_FAILED = 2 };

struct store_job {
    char id[STORE_JOB_ID_MAX];
    char type[STORE_JOB_TYPE_MAX];
    char collection[STORE_NAME_MAX];
    enum store_job_status status;
    int64_t done, total;
    char *params;                     /* JSON text, or NULL; malloc'ed in what list gives */
    char error[STORE_JOB_ERROR_MAX];  /* "" unless failed */
    int64_t attempts;                 /* 1 when made; each resume adds 1 */
    char created_at[STORE_JOB_TIME_MAX];
    char updated_at[STORE_JOB_TIME_MAX];
    char finished_at[STORE_JOB_TIME_MAX]; /* "" while running */
};

/* "running", "succeeded", "failed". */
const char *store_job_status_name(enum store_job_status st);

/* Records a new job (status, done, total, params, attempts and created_at of
 * j; updated_at = created_at). STORE_EXISTS for a taken id. */
int store_job_insert(struct index_store *s, const struct store_job *j, char *err, size_t errlen);
/* Progress of a running job. STORE_NOT_FOUND for an unknown id. */
int store_job_progress(struct index_store *s, const char *id, int64_t done, int64_t total,
                       const char *now, char *err, size_t errlen);
/* A running job started again after a restart: attempts + 1, done 0; *attempts
 * receives the new count. */
int store_job_restart(struct index_store *s, const char *id, const char *now,
                      int64_t *attempts, char *err, size_t errlen);
/* Ends a job: status SUCCEEDED or FAILED (error kept for FAILED), done,
 * finished_at = updated_at = now. */
int store_job_finish(struct index_store *s, const char *id, enum store_job_status status,
                     const char *error, int64_t done, const char *now, char *err,
                     size_t errlen);
/* Forgets a job (one that never started). Absent ids are no error. */
int store_job_delete(struct index_store *s, const char *id, char *err, size_t errlen);
/* Deletes finished jobs but the newest `keep` of them (in the order they were
 * made); running jobs are always kept. *deleted (may be NULL) counts them. */
int store_jobs_prune(struct index_store *s, size_t keep, size_t *deleted, char *err,
                     size_t errlen);
/* Every job, oldest first; *out is malloc'ed (NULL when *n == 0): free it with
 * store_jobs_free. */
int store_jobs_list(struct index_store *s, struct store_job **out, size_t *n, char *err,
                    size_t errlen);
void store_jobs_free(struct store_job *jobs, size_t n);

#endif
