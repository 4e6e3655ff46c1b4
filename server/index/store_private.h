/* For the store layer's own files only (store.c, store_jobs.c): the store's
 * connection and the helpers that report SQLite errors in one form. Callers
 * outside server/index/store*.c use store.h. */
#ifndef FRANCA_INDEX_STORE_PRIVATE_H
#define FRANCA_INDEX_STORE_PRIVATE_H

#include <pthread.h>
#include <sqlite3.h>
#include <stddef.h>

#include "index/store.h"

struct index_store {
    sqlite3 *db;
    pthread_mutex_t mu; /* held for the whole of every public call */
};

/* "index store: WHAT: sqlite's message" in err; returns STORE_ERR. */
int store_db_fail(struct index_store *s, char *err, size_t errlen, const char *what);
/* Prepares constant SQL; 0, or STORE_ERR (and *st NULL) with a message. */
int store_prepare(struct index_store *s, const char *sql, sqlite3_stmt **st, char *err,
                  size_t errlen);

#endif
