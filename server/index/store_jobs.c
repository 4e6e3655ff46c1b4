/* The jobs table's SQL; see store_jobs.h. */
#include "index/store_jobs.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "index/store_private.h"

static const char *const status_names[] = {"running", "succeeded", "failed"};

const char *store_job_status_name(enum store_job_status st)
{
    return (unsigned)st < 3 ? status_names[st] : "failed";
}

static enum store_job_status status_parse(const char *name)
{
    for (unsigned i = 0; i < 3; i++)
        if (name && !strcmp(name, status_names[i])) return (enum store_job_status)i;
    return STORE_JOB_FAILED; /* the CHECK constraint allows no other value */
}

static void text_col(char *dst, size_t cap, sqlite3_stmt *st, int col)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    size_t n = t ? (size_t)sqlite3_column_bytes(st, col) : 0;
    if (n >= cap) n = cap - 1;
    if (n) memcpy(dst, t, n);
    dst[n] = '\0';
}

/* Runs one prepared write under the lock; 0, STORE_NOT_FOUND when it changed
 * no row and must_change, or STORE_ERR. Finalizes st. */
static int step_write(struct index_store *s, sqlite3_stmt *st, bool must_change, const char *id,
                      const char *what, char *err, size_t errlen)
{
    int ret = 0;
    const int rc = sqlite3_step(st);
    if ((rc & 0xff) == SQLITE_CONSTRAINT) /* extended codes may be on */
        ret = set_err_code(err, errlen, STORE_EXISTS, "a job with id '%s' exists", id);
    else if (rc != SQLITE_DONE)
        ret = store_db_fail(s, err, errlen, what);
    else if (must_change && sqlite3_changes(s->db) == 0)
        ret = set_err_code(err, errlen, STORE_NOT_FOUND, "no job '%s'", id);
    sqlite3_finalize(st);
    return ret;
}

int store_job_insert(struct index_store *s, const struct store_job *j, char *err, size_t errlen)
{
    if (!j->id[0] || !j->type[0])
        return set_err_code(err, errlen, STORE_INVALID, "a job needs an id and a type");
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st;
    int ret = store_prepare(s,
                            "INSERT INTO jobs (id, type, collection, status, done, total, params,"
                            " error, attempts, created_at, updated_at, finished_at)"
                            " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULLIF(?8, ''), ?9, ?10, ?10,"
                            " NULLIF(?11, ''))",
                            &st, err, errlen);
    if (!ret) {
        sqlite3_bind_text(st, 1, j->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, j->type, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, j->collection, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, store_job_status_name(j->status), -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 5, j->done);
        sqlite3_bind_int64(st, 6, j->total);
        if (j->params) sqlite3_bind_text(st, 7, j->params, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 8, j->error, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 9, j->attempts > 0 ? j->attempts : 1);
        sqlite3_bind_text(st, 10, j->created_at, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 11, j->finished_at, -1, SQLITE_STATIC);
        ret = step_write(s, st, false, j->id, "insert job", err, errlen);
    }
    pthread_mutex_unlock(&s->mu);
    return ret;
}

int store_job_progress(struct index_store *s, const char *id, int64_t done, int64_t total,
                       const char *now, char *err, size_t errlen)
{
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st;
    int ret = store_prepare(s,
                            "UPDATE jobs SET done = ?2, total = ?3, updated_at = ?4"
                            " WHERE id = ?1 AND status = 'running'",
                            &st, err, errlen);
    if (!ret) {
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, done);
        sqlite3_bind_int64(st, 3, total);
        sqlite3_bind_text(st, 4, now, -1, SQLITE_STATIC);
        ret = step_write(s, st, true, id, "job progress", err, errlen);
    }
    pthread_mutex_unlock(&s->mu);
    return ret;
}

int store_job_restart(struct index_store *s, const char *id, const char *now,
                      int64_t *attempts, char *err, size_t errlen)
{
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st;
    /* RETURNING (SQLite 3.35) gives the new count in the same statement. */
    int ret = store_prepare(s,
                            "UPDATE jobs SET attempts = attempts + 1, done = 0, updated_at = ?2"
                            " WHERE id = ?1 AND status = 'running' RETURNING attempts",
                            &st, err, errlen);
    if (!ret) {
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, now, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            *attempts = sqlite3_column_int64(st, 0);
            rc = sqlite3_step(st);
            if (rc != SQLITE_DONE) ret = store_db_fail(s, err, errlen, "restart job");
        } else if (rc == SQLITE_DONE) {
            ret = set_err_code(err, errlen, STORE_NOT_FOUND, "no running job '%s'", id);
        } else {
            ret = store_db_fail(s, err, errlen, "restart job");
        }
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->mu);
    return ret;
}

int store_job_finish(struct index_store *s, const char *id, enum store_job_status status,
                     const char *error, int64_t done, const char *now, char *err,
                     size_t errlen)
{
    if (status == STORE_JOB_RUNNING)
        return set_err_code(err, errlen, STORE_INVALID, "a finished job cannot be running");
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st;
    int ret = store_prepare(s,
                            "UPDATE jobs SET status = ?2, error = ?3, done = ?4, updated_at = ?5,"
                            " finished_at = ?5 WHERE id = ?1",
                            &st, err, errlen);
    if (!ret) {
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, store_job_status_name(status), -1, SQLITE_STATIC);
        if (status == STORE_JOB_FAILED)
            sqlite3_bind_text(st, 3, error ? error : "failed", -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, done);
        sqlite3_bind_text(st, 5, now, -1, SQLITE_STATIC);
        ret = step_write(s, st, true, id, "finish job", err, errlen);
    }
    pthread_mutex_unlock(&s->mu);
    return ret;
}

int store_job_delete(struct index_store *s, const char *id, char *err, size_t errlen)
{
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st;
    int ret = store_prepare(s, "DELETE FROM jobs WHERE id = ?1", &st, err, errlen);
    if (!ret) {
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        ret = step_write(s, st, false, id, "delete job", err, errlen);
    }
    pthread_mutex_unlock(&s->mu);
    return ret;
}

int store_jobs_prune(struct index_store *s, size_t keep, size_t *deleted, char *err,
                     size_t errlen)
{
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st;
    /* rowid is the order rows were made in: the order jobs.c keeps them. */
    int ret = store_prepare(s,
                            "DELETE FROM jobs WHERE status != 'running' AND rowid NOT IN"
                            " (SELECT rowid FROM jobs WHERE status != 'running'"
                            " ORDER BY rowid DESC LIMIT ?1)",
                            &st, err, errlen);
    if (!ret) {
        sqlite3_bind_int64(st, 1, keep > INT64_MAX ? INT64_MAX : (int64_t)keep);
        ret = step_write(s, st, false, "", "prune jobs", err, errlen);
        if (!ret && deleted) *deleted = (size_t)sqlite3_changes(s->db);
    }
    pthread_mutex_unlock(&s->mu);
    return ret;
}

void store_jobs_free(struct store_job *jobs, size_t n)
{
    for (size_t i = 0; jobs && i < n; i++) free(jobs[i].params);
    free(jobs);
}

int store_jobs_list(struct index_store *s, struct store_job **out, size_t *n, char *err,
                    size_t errlen)
{
    *out = NULL;
    *n = 0;
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st;
    int ret = store_prepare(s,
                            "SELECT id, type, collection, status, done, total, params, error,"
                            " attempts, created_at, updated_at, finished_at FROM jobs"
                            " ORDER BY rowid",
                            &st, err, errlen);
    struct store_job *arr = NULL;
    size_t len = 0, cap = 0;
    int rc = SQLITE_DONE;
    while (!ret && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (len == cap) {
            cap = cap ? 2 * cap : 16;
            struct store_job *grown = realloc(arr, cap * sizeof *arr);
            if (!grown) {
                ret = set_err_code(err, errlen, STORE_ERR, "out of memory listing jobs");
                break;
            }
            arr = grown;
        }
        struct store_job *j = &arr[len];
        memset(j, 0, sizeof *j);
        text_col(j->id, sizeof j->id, st, 0);
        text_col(j->type, sizeof j->type, st, 1);
        text_col(j->collection, sizeof j->collection, st, 2);
        j->status = status_parse((const char *)sqlite3_column_text(st, 3));
        j->done = sqlite3_column_int64(st, 4);
        j->total = sqlite3_column_int64(st, 5);
        if (sqlite3_column_type(st, 6) != SQLITE_NULL) {
            const size_t pn = (size_t)sqlite3_column_bytes(st, 6);
            const unsigned char *p = sqlite3_column_text(st, 6);
            if (!(j->params = malloc(pn + 1))) {
                ret = set_err_code(err, errlen, STORE_ERR, "out of memory listing jobs");
                break;
            }
            memcpy(j->params, p, pn);
            j->params[pn] = '\0';
        }
        text_col(j->error, sizeof j->error, st, 7);
        j->attempts = sqlite3_column_int64(st, 8);
        text_col(j->created_at, sizeof j->created_at, st, 9);
        text_col(j->updated_at, sizeof j->updated_at, st, 10);
        text_col(j->finished_at, sizeof j->finished_at, st, 11);
        len++;
    }
    if (!ret && rc != SQLITE_DONE) ret = store_db_fail(s, err, errlen, "list jobs");
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->mu);
    if (ret) {
        store_jobs_free(arr, len);
        return ret;
    }
    *out = arr;
    *n = len;
    return 0;
}
