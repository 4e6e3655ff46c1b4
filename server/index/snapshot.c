/* Online snapshots and restore of the index database (snapshot.h). */
#include "index/snapshot.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "errors.h"

#define INDEX_FILE "index.sqlite3"
#define PATH_BUF 4096

/* Formats a path into out[PATH_BUF]; -1 when it does not fit. */
__attribute__((format(printf, 2, 3)))
static int make_path(char *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    const int n = vsnprintf(out, PATH_BUF, fmt, ap);
    va_end(ap);
    return n < 0 || n >= PATH_BUF ? -1 : 0;
}

/* "YYYYMMDDTHHMMSS.mmmZ", UTC: snapshot names sort by time. */
static void stamp(char out[32])
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char base[24];
    strftime(base, sizeof base, "%Y%m%dT%H%M%S", &tm);
    snprintf(out, 32, "%s.%03dZ", base, (int)(tv.tv_usec / 1000));
}

static int fsync_path(const char *path, bool dir, char *err, size_t errlen)
{
    const int fd = open(path, dir ? O_RDONLY | O_DIRECTORY : O_RDONLY);
    if (fd < 0 || fsync(fd)) {
        const int e = errno;
        if (fd >= 0) close(fd);
        return set_err(err, errlen, "snapshot: sync %s: %s", path, strerror(e));
    }
    close(fd);
    return 0;
}

/* Copies the whole of src_path into dst_path (created) in one backup step. */
static int backup(const char *src_path, const char *dst_path, char *err, size_t errlen)
{
    sqlite3 *src = NULL, *dst = NULL;
    int rc = sqlite3_open_v2(src_path, &src, SQLITE_OPEN_READONLY, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_open_v2(dst_path, &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_busy_timeout(src, 5000);
        sqlite3_backup *b = sqlite3_backup_init(dst, "main", src, "main");
        if (!b) {
            rc = sqlite3_errcode(dst);
        } else {
            rc = sqlite3_backup_step(b, -1); /* all pages, in one read transaction */
            const int fin = sqlite3_backup_finish(b);
            rc = rc == SQLITE_DONE ? fin : rc;
        }
    }
    /* The copy is one self-contained file (the live database's WAL mode came
     * with its pages); store_open turns WAL on again when it serves. */
    if (rc == SQLITE_OK) rc = sqlite3_exec(dst, "PRAGMA journal_mode = DELETE", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        set_err(err, errlen, "snapshot: copying %s to %s: %s", src_path, dst_path,
                sqlite3_errstr(rc));
    sqlite3_close(src);
    if (sqlite3_close(dst) != SQLITE_OK && rc == SQLITE_OK) {
        rc = SQLITE_ERROR;
        set_err(err, errlen, "snapshot: closing %s failed", dst_path);
    }
    return rc == SQLITE_OK ? 0 : -1;
}

/* The file is an SQLite database that passes quick_check and holds the
 * index's tables. */
static int check_database(const char *path, char *err, size_t errlen)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int ret = -1;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        set_err(err, errlen, "%s: cannot open: %s", path, db ? sqlite3_errmsg(db) : "out of memory");
        goto out;
    }
    if (sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        set_err(err, errlen, "%s: not an SQLite database (%s)", path, sqlite3_errmsg(db));
        goto out;
    }
    const char *verdict = (const char *)sqlite3_column_text(st, 0);
    if (!verdict || strcmp(verdict, "ok")) {
        set_err(err, errlen, "%s: damaged: %.200s", path, verdict ? verdict : "?");
        goto out;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                               " AND name IN ('collections', 'items')", -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW || sqlite3_column_int(st, 0) != 2) {
        set_err(err, errlen, "%s: not a franca index (no collections and items tables)", path);
        goto out;
    }
    ret = 0;
out:
    sqlite3_finalize(st);
    sqlite3_close(db);
    return ret;
}

int snapshot_write(const char *data_dir, struct snapshot_info *out, char *err, size_t errlen)
{
    const double t0 = clock_now_s();
    char dir[PATH_BUF], src[PATH_BUF], tmp[PATH_BUF], when[32];
    stamp(when);
    if (make_path(dir, "%s/%s", data_dir, SNAPSHOT_DIR) ||
        make_path(src, "%s/%s", data_dir, INDEX_FILE) ||
        make_path(out->path, "%s/index-%s.sqlite3", dir, when) ||
        make_path(tmp, "%s.partial", out->path))
        return set_err(err, errlen, "snapshot: the data directory path is too long");
    if (mkdir(dir, 0755) && errno != EEXIST)
        return set_err(err, errlen, "snapshot: cannot create %s: %s", dir, strerror(errno));
    unlink(tmp);
    if (backup(src, tmp, err, errlen) || fsync_path(tmp, false, err, errlen) ||
        check_database(tmp, err, errlen)) {
        unlink(tmp);
        return -1;
    }
    if (rename(tmp, out->path)) {
        set_err(err, errlen, "snapshot: rename to %s: %s", out->path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    if (fsync_path(dir, true, err, errlen)) return -1;
    struct stat sb;
    out->bytes = stat(out->path, &sb) == 0 ? (int64_t)sb.st_size : -1;
    out->seconds = clock_now_s() - t0;
    return 0;
}

/* Moves path+suffix to keep+suffix when it exists. */
static int keep_aside(const char *path, const char *keep, const char *suffix, char *err,
                      size_t errlen)
{
    char from[PATH_BUF], to[PATH_BUF];
    if (make_path(from, "%s%s", path, suffix) || make_path(to, "%s%s", keep, suffix))
        return set_err(err, errlen, "restore: the data directory path is too long");
    if (rename(from, to) && errno != ENOENT)
        return set_err(err, errlen, "restore: cannot move %s aside: %s", from, strerror(errno));
    return 0;
}

int snapshot_restore(const char *data_dir, const char *file, char *err, size_t errlen)
{
    char live[PATH_BUF], tmp[PATH_BUF], keep[PATH_BUF], shm[PATH_BUF], when[32];
    stamp(when);
    if (make_path(live, "%s/%s", data_dir, INDEX_FILE) || make_path(tmp, "%s.restoring", live) ||
        make_path(keep, "%s.before-restore-%s", live, when) || make_path(shm, "%s-shm", live))
        return set_err(err, errlen, "restore: the data directory path is too long");
    if (mkdir(data_dir, 0755) && errno != EEXIST)
        return set_err(err, errlen, "restore: cannot create %s: %s", data_dir, strerror(errno));
    if (check_database(file, err, errlen)) return -1;
    unlink(tmp);
    if (backup(file, tmp, err, errlen) || fsync_path(tmp, false, err, errlen)) {
        unlink(tmp);
        return -1;
    }
    /* The live database and its WAL go aside together (the WAL holds commits
     * the main file may not have yet); the shared-memory index is rebuilt. */
    if (keep_aside(live, keep, "", err, errlen) || keep_aside(live, keep, "-wal", err, errlen)) {
        unlink(tmp);
        return -1;
    }
    unlink(shm);
    if (rename(tmp, live))
        return set_err(err, errlen, "restore: rename to %s: %s (the previous database is %s)",
                       live, strerror(errno), keep);
    return fsync_path(data_dir, true, err, errlen);
}
