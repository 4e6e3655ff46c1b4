/* Snapshots of the index database while the server keeps serving, and
 * restoring one at startup.
 *
 * A snapshot is SQLite's online backup of DATA_DIR/index.sqlite3 taken from a
 * second, read-only connection in one step: in WAL mode that is one read
 * transaction, so the copy holds exactly the commits made before it began,
 * while writers go on committing. It is written under a temporary name,
 * fsync'ed, checked (PRAGMA quick_check) and renamed into place, so a snapshot
 * file that exists is complete. */
#ifndef FRANCA_INDEX_SNAPSHOT_H
#define FRANCA_INDEX_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

#define SNAPSHOT_DIR "snapshots"   /* under the data directory */

struct snapshot_info {
    char path[4096];               /* DATA_DIR/snapshots/index-YYYYMMDDTHHMMSS.mmmZ.sqlite3 */
    int64_t bytes;
    double seconds;
};

/* Writes a snapshot of DATA_DIR/index.sqlite3 under DATA_DIR/snapshots/
 * (created when missing). 0, or -1 with a message. */
int snapshot_write(const char *data_dir, struct snapshot_info *out, char *err, size_t errlen);

/* Replaces DATA_DIR/index.sqlite3 by a copy of file, before the index is
 * opened: file must be a readable SQLite database with the index's tables that
 * passes PRAGMA quick_check. The database it replaces is kept beside it as
 * index.sqlite3.before-restore-STAMP (with its WAL), so nothing is lost.
 * 0, or -1 with a message (the data directory is then unchanged). */
int snapshot_restore(const char *data_dir, const char *file, char *err, size_t errlen);

#endif
