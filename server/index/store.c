/* The durable vector store over SQLite; see store.h for the contract. */
#include "index/store.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "errors.h"
#include "index/patch_codec.h"
#include "index/store_private.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "store.c stores float32 vectors as host bytes and assumes a little-endian host"
#endif

#define STORE_BUSY_TIMEOUT_MS 5000

static const char *const metric_names[] = {"cosine", "l2", "dot"};

const char *store_metric_name(enum store_metric m)
{
    return (unsigned)m < 3 ? metric_names[m] : NULL;
}

const char *store_mirror_name(enum store_mirror m)
{
    switch (m) {
    case STORE_MIRROR_F32: return "f32";
    case STORE_MIRROR_F16: return "f16";
    case STORE_MIRROR_INT8: return "int8";
    }
    return NULL;
}

int store_mirror_parse(const char *name, enum store_mirror *m)
{
    static const enum store_mirror all[] = {STORE_MIRROR_F32, STORE_MIRROR_F16, STORE_MIRROR_INT8};
    for (size_t i = 0; name && i < sizeof all / sizeof all[0]; i++)
        if (!strcmp(name, store_mirror_name(all[i]))) {
            *m = all[i];
            return 0;
        }
    return -1;
}

int store_metric_parse(const char *name, enum store_metric *m)
{
    for (unsigned i = 0; i < 3; i++) {
        if (name && strcmp(name, metric_names[i]) == 0) {
            *m = (enum store_metric)i;
            return 0;
        }
    }
    return -1;
}

/* --- helpers --------------------------------------------------------------- */

static int db_fail(struct index_store *s, char *err, size_t errlen, const char *what)
{
    return set_err(err, errlen, "index store: %s: %s", what, sqlite3_errmsg(s->db));
}

int store_db_fail(struct index_store *s, char *err, size_t errlen, const char *what)
{
    return db_fail(s, err, errlen, what);
}

static int fail_code(int code, char *err, size_t errlen, const char *what, const char *id)
{
    char shown[64];
    printable_copy(id, strlen(id), shown, sizeof shown);
    set_err(err, errlen, "%s '%s'", what, shown);
    return code;
}

static int exec_const(struct index_store *s, const char *sql, char *err, size_t errlen)
{
    if (sqlite3_exec(s->db, sql, NULL, NULL, NULL) != SQLITE_OK) return db_fail(s, err, errlen, sql);
    return 0;
}

static void rollback(struct index_store *s)
{
    /* After a failed COMMIT SQLite may already have rolled back; ignore that error. */
    if (sqlite3_get_autocommit(s->db) == 0) sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
}

static int prepare(struct index_store *s, const char *sql, sqlite3_stmt **st, char *err,
                   size_t errlen)
{
    if (sqlite3_prepare_v2(s->db, sql, -1, st, NULL) != SQLITE_OK) {
        *st = NULL;
        return db_fail(s, err, errlen, "prepare");
    }
    return 0;
}

int store_prepare(struct index_store *s, const char *sql, sqlite3_stmt **st, char *err,
                  size_t errlen)
{
    return prepare(s, sql, st, err, errlen);
}

/* Finalizes a write's last statement, increments the collection's generation
 * in the same transaction and commits: 0, or STORE_ERR with a message. */
static int commit(struct index_store *s, int64_t collection_id, sqlite3_stmt **st, char *err,
                  size_t errlen)
{
    sqlite3_finalize(*st);
    *st = NULL;
    if (prepare(s, "UPDATE collections SET generation = generation + 1 WHERE id = ?1", st, err,
                errlen))
        return STORE_ERR;
    sqlite3_bind_int64(*st, 1, collection_id);
    const int rc = sqlite3_step(*st);
    sqlite3_finalize(*st);
    *st = NULL;
    if (rc != SQLITE_DONE) return db_fail(s, err, errlen, "bump generation");
    return exec_const(s, "COMMIT", err, errlen) ? STORE_ERR : 0;
}

/* The common exit of a call holding the store's lock: finalizes st, rolls back
 * the open transaction when asked (a failed write, or a read snapshot), unlocks. */
static void end_locked(struct index_store *s, sqlite3_stmt *st, bool roll_back)
{
    sqlite3_finalize(st);
    if (roll_back) rollback(s);
    pthread_mutex_unlock(&s->mu);
}


static void copy_col(char *dst, size_t cap, sqlite3_stmt *st, int col)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    size_t n = t ? (size_t)sqlite3_column_bytes(st, col) : 0;
    if (n >= cap) n = cap - 1;
    if (n) memcpy(dst, t, n);
    dst[n] = '\0';
}

static int check_text(const char *v, size_t min, size_t cap, const char *what, char *err,
                      size_t errlen)
{
    if (!v) return set_err_code(err, errlen, STORE_INVALID, "%s is missing", what);
    size_t n = strlen(v);
    if (n < min || n >= cap) {
        set_err(err, errlen, "%s must be %zu..%zu bytes, got %zu", what, min, cap - 1, n);
        return STORE_INVALID;
    }
    return 0;
}

/* What an item of a collection must hold (collection_shape). */
struct shape {
    int keep_images;
    bool patches;             /* a patch-level collection */
    enum patch_type type;
};

/* Reads (width, shape) of a collection inside the caller's transaction. */
static int collection_shape(struct index_store *s, int64_t id, int64_t *width, struct shape *sh,
                            char *err, size_t errlen)
{
    sqlite3_stmt *st;
    if (prepare(s, "SELECT width, store_images, level, patch_type FROM collections WHERE id = ?1",
                &st, err, errlen))
        return STORE_ERR;
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st), ret = 0;
    if (rc == SQLITE_ROW) {
        *width = sqlite3_column_int64(st, 0);
        if (sh) {
            const char *lv = (const char *)sqlite3_column_text(st, 2);
            sh->keep_images = sqlite3_column_int(st, 1) != 0;
            sh->patches = lv && !strcmp(lv, "patch");
            sh->type = PATCH_F16;
            patch_type_parse((const char *)sqlite3_column_text(st, 3), &sh->type);
        }
    } else if (rc == SQLITE_DONE) {
        set_err(err, errlen, "no collection with id %lld", (long long)id);
        ret = STORE_NOT_FOUND;
    } else {
        ret = db_fail(s, err, errlen, "read collection");
    }
    sqlite3_finalize(st);
    return ret;
}

/* --- open, schema ------------------------------------------------------------ */

static const char schema_v1[] =
    "CREATE TABLE collections ("
    " id INTEGER PRIMARY KEY,"
    " name TEXT NOT NULL UNIQUE,"
    " model TEXT NOT NULL,"
    " fingerprint TEXT NOT NULL,"
    " width INTEGER NOT NULL CHECK (width > 0),"
    " metric TEXT NOT NULL CHECK (metric IN ('cosine', 'l2', 'dot')),"
    " store_images INTEGER NOT NULL CHECK (store_images IN (0, 1)),"
    " created_at TEXT NOT NULL);"
    "CREATE TABLE items ("
    " id INTEGER PRIMARY KEY,"
    " collection_id INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE,"
    " external_id TEXT NOT NULL,"
    " metadata TEXT,"
    " vector BLOB NOT NULL,"
    " image BLOB,"
    " UNIQUE (collection_id, external_id));";

/* v1 -> v2: patch-level collections. Existing collections become 'cls'. */
static const char schema_v2[] =
    "ALTER TABLE collections ADD COLUMN level TEXT NOT NULL DEFAULT 'cls'"
    " CHECK (level IN ('cls', 'patch'));"
    "ALTER TABLE collections ADD COLUMN patch_type TEXT NOT NULL DEFAULT 'f16'"
    " CHECK (patch_type IN ('f16', 'int8'));"
    "ALTER TABLE items ADD COLUMN grid_h INTEGER;"
    "ALTER TABLE items ADD COLUMN grid_w INTEGER;"
    "ALTER TABLE items ADD COLUMN patches BLOB;";

/* v2 -> v3: per-patch segmentation labels of patch items (NULL: unlabelled). */
static const char schema_v3[] = "ALTER TABLE items ADD COLUMN labels BLOB;";

/* v3 -> v4: the in-memory mirror's form, the ANN description (JSON, NULL:
 * none), a generation that every write transaction of a collection increments
 * (files kept beside the database, such as an ANN graph, record the generation
 * they equal), and background jobs that outlive a restart. */
static const char schema_v4[] =
    "ALTER TABLE collections ADD COLUMN mirror TEXT NOT NULL DEFAULT 'f32'"
    " CHECK (mirror IN ('f32', 'f16', 'int8'));"
    "ALTER TABLE collections ADD COLUMN ann TEXT;"
    "ALTER TABLE collections ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;"
    "CREATE TABLE jobs ("
    " id TEXT PRIMARY KEY,"
    " type TEXT NOT NULL,"
    " collection TEXT NOT NULL,"
    " status TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),"
    " done INTEGER NOT NULL DEFAULT 0,"
    " total INTEGER NOT NULL DEFAULT 0,"
    " params TEXT,"
    " error TEXT,"
    " attempts INTEGER NOT NULL DEFAULT 1,"
    " created_at TEXT NOT NULL,"
    " updated_at TEXT NOT NULL,"
    " finished_at TEXT);";

/* Brings the schema from user_version `from` to STORE_SCHEMA_VERSION, one step
 * per version, inside one transaction. Version 1 is the first; later versions
 * add a case here. */
static int migrate(struct index_store *s, char *err, size_t errlen)
{
    _Static_assert(STORE_SCHEMA_VERSION == 4, "the user_version written below");
    if (exec_const(s, "BEGIN IMMEDIATE", err, errlen)) return STORE_ERR;
    sqlite3_stmt *st;
    if (prepare(s, "PRAGMA user_version", &st, err, errlen)) goto fail;
    int from = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
    sqlite3_finalize(st);
    if (from < 0) {
        db_fail(s, err, errlen, "read user_version");
        goto fail;
    }
    if (from > STORE_SCHEMA_VERSION) {
        set_err(err, errlen, "index store: schema version %d is newer than this server's %d",
                from, STORE_SCHEMA_VERSION);
        goto fail;
    }
    switch (from) {
    case 0:
        if (exec_const(s, schema_v1, err, errlen)) goto fail;
        /* fall through */
    case 1:
        if (exec_const(s, schema_v2, err, errlen)) goto fail;
        /* fall through */
    case 2:
        if (exec_const(s, schema_v3, err, errlen)) goto fail;
        /* fall through */
    case 3:
        if (exec_const(s, schema_v4, err, errlen)) goto fail;
        /* fall through: future versions add "case 4: ... v4 -> v5" here */
    default:
        break;
    }
    if (from != STORE_SCHEMA_VERSION &&
        exec_const(s, "PRAGMA user_version = 4", err, errlen)) /* STORE_SCHEMA_VERSION */
        goto fail;
    if (exec_const(s, "COMMIT", err, errlen)) goto fail;
    return 0;
fail:
    rollback(s);
    return STORE_ERR;
}

/* The index holds users' vectors, metadata and images: owner-only. SQLite
 * creates its -wal and -shm files with the database file's permissions, so
 * creating that file 0600 first (and tightening one left by an older version)
 * keeps all three private whatever the umask. */
static int make_private(const char *path, char *err, size_t errlen)
{
    const int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
        ((st.st_mode & 077) && fchmod(fd, 0600) != 0)) {
        set_err(err, errlen, "index store: %s: %s", path,
                fd >= 0 && !S_ISREG(st.st_mode) ? "not a regular file" : strerror(errno));
        if (fd >= 0) close(fd);
        return STORE_ERR;
    }
    close(fd);
    static const char *const sidecars[] = {"-wal", "-shm"};
    for (size_t i = 0; i < 2; i++) {
        char side[PATH_MAX + 8];
        snprintf(side, sizeof side, "%s%s", path, sidecars[i]);
        if (chmod(side, 0600) != 0 && errno != ENOENT)
            return set_err(err, errlen, "index store: chmod %s: %s", side, strerror(errno));
    }
    return 0;
}

int store_open(struct index_store **out, const char *data_dir, char *err, size_t errlen)
{
    *out = NULL;
    if (!data_dir || !*data_dir) return set_err(err, errlen, "index store: no data directory");
    if (mkdir(data_dir, 0700) != 0 && errno != EEXIST)
        return set_err(err, errlen, "index store: cannot create %s: %s", data_dir, strerror(errno));
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s/index.sqlite3", data_dir) >= sizeof path)
        return set_err(err, errlen, "index store: data directory path too long");
    if (make_private(path, err, errlen)) return STORE_ERR;

    struct index_store *s = calloc(1, sizeof *s);
    if (!s) return set_err(err, errlen, "index store: out of memory");
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        free(s);
        return set_err(err, errlen, "index store: cannot create mutex");
    }
    /* FULLMUTEX is belt and braces: our own mutex already serialises every use. */
    int rc = sqlite3_open_v2(path, &s->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                             NULL);
    if (rc != SQLITE_OK) {
        set_err(err, errlen, "index store: cannot open %s: %s", path,
                s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_extended_result_codes(s->db, 1);
    if (sqlite3_busy_timeout(s->db, STORE_BUSY_TIMEOUT_MS) != SQLITE_OK) {
        db_fail(s, err, errlen, "busy timeout");
        goto fail;
    }
    /* Durability: journal_mode=WAL appends each transaction to the -wal file, and
     * synchronous=FULL makes every COMMIT fsync the WAL before it returns. A commit
     * that returned is therefore on stable storage: it survives kill -9 (which
     * NORMAL would also survive, the data being in the OS page cache) and power
     * loss (which NORMAL would not: in WAL mode it syncs only at checkpoints, so
     * the last commits could roll back). Checkpoints also fsync under FULL. WAL is
     * persistent in the file; synchronous and foreign_keys are per connection. */
    sqlite3_stmt *st;
    if (prepare(s, "PRAGMA journal_mode = WAL", &st, err, errlen)) goto fail;
    const unsigned char *mode = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_text(st, 0) : NULL;
    int wal = mode && strcmp((const char *)mode, "wal") == 0;
    sqlite3_finalize(st);
    if (!wal) {
        set_err(err, errlen, "index store: %s: cannot switch to WAL journal mode", path);
        goto fail;
    }
    if (exec_const(s, "PRAGMA synchronous = FULL", err, errlen) ||
        exec_const(s, "PRAGMA foreign_keys = ON", err, errlen))
        goto fail;
    if (migrate(s, err, errlen)) goto fail;
    *out = s;
    return 0;
fail:
    sqlite3_close(s->db);
    pthread_mutex_destroy(&s->mu);
    free(s);
    return STORE_ERR;
}

void store_close(struct index_store *s)
{
    if (!s) return;
    sqlite3_close(s->db); /* all statements are finalised by each call */
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* --- collections ----------------------------------------------------------- */

int store_collection_create(struct index_store *s, const struct collection_info *in,
                            int64_t *id, char *err, size_t errlen)
{
    int rc;
    if ((rc = check_text(in->name, 1, STORE_NAME_MAX, "collection name", err, errlen)) ||
        (rc = check_text(in->model, 0, STORE_TEXT_MAX, "model name", err, errlen)) ||
        (rc = check_text(in->fingerprint, 0, STORE_TEXT_MAX, "fingerprint", err, errlen)))
        return rc;
    if (in->width < 1 || in->width > STORE_WIDTH_MAX) {
        set_err(err, errlen, "width must be 1..%d, got %lld", STORE_WIDTH_MAX,
                (long long)in->width);
        return STORE_INVALID;
    }
    const char *metric = store_metric_name(in->metric);
    if (!metric) {
        set_err(err, errlen, "unknown metric %d", (int)in->metric);
        return STORE_INVALID;
    }
    const char *ptype = patch_type_name((enum patch_type)in->patch_type);
    if (!ptype || (in->level != STORE_LEVEL_CLS && in->level != STORE_LEVEL_PATCH))
        return set_err_code(err, errlen, STORE_INVALID, "unknown level %d or patch type %d",
                            (int)in->level, in->patch_type);
    if (in->level == STORE_LEVEL_PATCH && in->metric != STORE_METRIC_COSINE)
        return set_err_code(err, errlen, STORE_INVALID, "patch collections use cosine");
    const char *mirror = store_mirror_name(in->mirror);
    if (!mirror) return set_err_code(err, errlen, STORE_INVALID, "unknown mirror %d", (int)in->mirror);
    if ((rc = check_text(in->ann, 0, STORE_ANN_MAX, "ANN description", err, errlen))) return rc;
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st;
    int ret = STORE_ERR;
    if (prepare(s,
                "INSERT INTO collections (name, model, fingerprint, width, metric, store_images,"
                " created_at, level, patch_type, mirror, ann) VALUES (?1, ?2, ?3, ?4, ?5, ?6,"
                " strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), ?7, ?8, ?9, ?10)",
                &st, err, errlen) == 0) {
        sqlite3_bind_text(st, 1, in->name, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, in->model, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, in->fingerprint, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, in->width);
        sqlite3_bind_text(st, 5, metric, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 6, in->store_images ? 1 : 0);
        sqlite3_bind_text(st, 7, in->level == STORE_LEVEL_PATCH ? "patch" : "cls", -1,
                          SQLITE_STATIC);
        sqlite3_bind_text(st, 8, ptype, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 9, mirror, -1, SQLITE_STATIC);
        if (in->ann[0])
            sqlite3_bind_text(st, 10, in->ann, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 10);
        rc = sqlite3_step(st);
        if (rc == SQLITE_DONE) {
            if (id) *id = sqlite3_last_insert_rowid(s->db);
            ret = 0;
        } else if (rc == SQLITE_CONSTRAINT_UNIQUE) {
            ret = fail_code(STORE_EXISTS, err, errlen, "a collection exists named", in->name);
        } else {
            db_fail(s, err, errlen, "create collection");
        }
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->mu);
    return ret;
}

#define COLLECTION_COLS \
    "id, name, model, fingerprint, width, metric, store_images, created_at, level, patch_type," \
    " mirror, ann, generation"

static void read_collection(sqlite3_stmt *st, struct collection_info *out)
{
    memset(out, 0, sizeof *out);
    out->id = sqlite3_column_int64(st, 0);
    copy_col(out->name, sizeof out->name, st, 1);
    copy_col(out->model, sizeof out->model, st, 2);
    copy_col(out->fingerprint, sizeof out->fingerprint, st, 3);
    out->width = sqlite3_column_int64(st, 4);
    enum store_metric m = STORE_METRIC_COSINE;
    store_metric_parse((const char *)sqlite3_column_text(st, 5), &m); /* CHECK keeps it valid */
    out->metric = m;
    out->store_images = sqlite3_column_int(st, 6) != 0;
    copy_col(out->created_at, sizeof out->created_at, st, 7);
    const char *lv = (const char *)sqlite3_column_text(st, 8);
    out->level = lv && !strcmp(lv, "patch") ? STORE_LEVEL_PATCH : STORE_LEVEL_CLS;
    enum patch_type t = PATCH_F16;
    patch_type_parse((const char *)sqlite3_column_text(st, 9), &t);
    out->patch_type = (int)t;
    enum store_mirror mi = STORE_MIRROR_F32;
    store_mirror_parse((const char *)sqlite3_column_text(st, 10), &mi); /* CHECK keeps it valid */
    out->mirror = mi;
    copy_col(out->ann, sizeof out->ann, st, 11);
    out->generation = sqlite3_column_int64(st, 12);
}

int store_collection_set_ann(struct index_store *s, int64_t collection_id, const char *ann,
                             char *err, size_t errlen)
{
    int rc;
    if (ann && (rc = check_text(ann, 0, STORE_ANN_MAX, "ANN description", err, errlen)))
        return rc;
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st;
    int ret = STORE_ERR;
    if (prepare(s, "UPDATE collections SET ann = ?1 WHERE id = ?2", &st, err, errlen) == 0) {
        if (ann && ann[0])
            sqlite3_bind_text(st, 1, ann, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 1);
        sqlite3_bind_int64(st, 2, collection_id);
        if (sqlite3_step(st) != SQLITE_DONE)
            db_fail(s, err, errlen, "set ANN description");
        else if (sqlite3_changes(s->db) == 0)
            ret = set_err_code(err, errlen, STORE_NOT_FOUND, "no collection with id %lld",
                               (long long)collection_id);
        else
            ret = 0;
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->mu);
    return ret;
}

int store_collection_generation(struct index_store *s, int64_t collection_id, int64_t *gen,
                                char *err, size_t errlen)
{
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st;
    int ret = STORE_ERR;
    if (prepare(s, "SELECT generation FROM collections WHERE id = ?1", &st, err, errlen) == 0) {
        sqlite3_bind_int64(st, 1, collection_id);
        const int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            *gen = sqlite3_column_int64(st, 0);
            ret = 0;
        } else if (rc == SQLITE_DONE) {
            ret = set_err_code(err, errlen, STORE_NOT_FOUND, "no collection with id %lld",
                               (long long)collection_id);
        } else {
            db_fail(s, err, errlen, "read generation");
        }
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->mu);
    return ret;
}

int store_collection_get(struct index_store *s, const char *name, struct collection_info *out,
                         char *err, size_t errlen)
{
    if (!name) return set_err_code(err, errlen, STORE_INVALID, "no collection name");
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st;
    int ret = STORE_ERR;
    if (prepare(s, "SELECT " COLLECTION_COLS " FROM collections WHERE name = ?1", &st, err,
                errlen) == 0) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            read_collection(st, out);
            ret = 0;
        } else if (rc == SQLITE_DONE) {
            ret = fail_code(STORE_NOT_FOUND, err, errlen, "no collection named", name);
        } else {
            db_fail(s, err, errlen, "get collection");
        }
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->mu);
    return ret;
}

int store_collection_list(struct index_store *s, struct collection_info **out, size_t *n,
                          char *err, size_t errlen)
{
    *out = NULL;
    *n = 0;
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st;
    int ret = STORE_ERR;
    struct collection_info *arr = NULL;
    size_t len = 0, cap = 0;
    if (prepare(s, "SELECT " COLLECTION_COLS " FROM collections ORDER BY id", &st, err,
                errlen) == 0) {
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            if (len == cap) {
                size_t nc = cap ? cap * 2 : 8;
                struct collection_info *na = realloc(arr, nc * sizeof *na);
                if (!na) {
                    set_err(err, errlen, "index store: out of memory");
                    break;
                }
                arr = na;
                cap = nc;
            }
            read_collection(st, &arr[len++]);
        }
        if (rc == SQLITE_DONE) {
            ret = 0;
        } else if (rc != SQLITE_ROW) {
            db_fail(s, err, errlen, "list collections");
        }
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->mu);
    if (ret) {
        free(arr);
        return ret;
    }
    *out = arr;
    *n = len;
    return 0;
}

int store_collection_delete(struct index_store *s, const char *name, char *err, size_t errlen)
{
    if (!name) return set_err_code(err, errlen, STORE_INVALID, "no collection name");
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st;
    int ret = STORE_ERR;
    /* One statement is one transaction; the cascade deletes the items within it. */
    if (prepare(s, "DELETE FROM collections WHERE name = ?1", &st, err, errlen) == 0) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        if (sqlite3_step(st) != SQLITE_DONE)
            db_fail(s, err, errlen, "delete collection");
        else if (sqlite3_changes(s->db) == 0)
            ret = fail_code(STORE_NOT_FOUND, err, errlen, "no collection named", name);
        else
            ret = 0;
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->mu);
    return ret;
}

int store_collection_count(struct index_store *s, int64_t collection_id, int64_t *n,
                           char *err, size_t errlen)
{
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st;
    int ret = STORE_ERR;
    if (prepare(s,
                "SELECT (SELECT count(*) FROM collections WHERE id = ?1),"
                " (SELECT count(*) FROM items WHERE collection_id = ?1)",
                &st, err, errlen) == 0) {
        sqlite3_bind_int64(st, 1, collection_id);
        if (sqlite3_step(st) != SQLITE_ROW) {
            db_fail(s, err, errlen, "count items");
        } else if (sqlite3_column_int64(st, 0) == 0) {
            set_err(err, errlen, "no collection with id %lld", (long long)collection_id);
            ret = STORE_NOT_FOUND;
        } else {
            *n = sqlite3_column_int64(st, 1);
            ret = 0;
        }
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->mu);
    return ret;
}

/* --- items ----------------------------------------------------------------- */

static int gen_id(char out[STORE_ID_MAX], char *err, size_t errlen)
{
    unsigned char r[STORE_GEN_ID_LEN / 2];
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t k = getrandom(r + got, sizeof r - got, 0);
        if (k < 0) {
            if (errno == EINTR) continue;
            return set_err(err, errlen, "index store: getrandom: %s", strerror(errno));
        }
        got += (size_t)k;
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof r; i++) {
        out[2 * i] = hex[r[i] >> 4];
        out[2 * i + 1] = hex[r[i] & 15];
    }
    out[STORE_GEN_ID_LEN] = '\0';
    return 0;
}

static int validate_item(const struct item_in *it, size_t i, int64_t width,
                         const struct shape *sh, char *err, size_t errlen)
{
    if (!sh->patches && (it->patches || it->labels))
        return set_err_code(err, errlen, STORE_INVALID,
                            "item %zu: patches or labels given for a CLS-level collection", i);
    if (sh->patches) {
        const size_t want = (size_t)it->grid_h * (size_t)it->grid_w *
                            patch_vec_bytes((int)width, sh->type);
        if (!it->patches || it->grid_h < 1 || it->grid_w < 1 || it->grid_h > STORE_GRID_MAX ||
            it->grid_w > STORE_GRID_MAX || it->grid_h * it->grid_w > STORE_PATCHES_MAX ||
            it->patches_len != want)
            return set_err_code(err, errlen, STORE_INVALID,
                                "item %zu: a patch collection needs a %dx%d grid of patches"
                                " (%zu bytes; got %zu)", i, it->grid_h, it->grid_w, want,
                                it->patches_len);
    }
    if (it->external_id && check_text(it->external_id, 1, STORE_ID_MAX, "item id", err, errlen))
        return STORE_INVALID;
    if (!it->vector || it->dim != (size_t)width) {
        set_err(err, errlen, "item %zu: vector has %zu values (%zu bytes), the collection width"
                " is %lld (%lld bytes)", i, it->vector ? it->dim : 0,
                (it->vector ? it->dim : 0) * sizeof(float), (long long)width,
                (long long)width * 4);
        return STORE_INVALID;
    }
    for (size_t k = 0; k < it->dim; k++) {
        if (!isfinite(it->vector[k])) {
            set_err(err, errlen, "item %zu: vector value %zu is NaN or infinite", i, k);
            return STORE_INVALID;
        }
    }
    if (it->image_len && !it->image) {
        set_err(err, errlen, "item %zu: image length without image bytes", i);
        return STORE_INVALID;
    }
    return 0;
}

int store_items_insert(struct index_store *s, int64_t collection_id,
                       const struct item_in *items, size_t n, char (*out_ids)[STORE_ID_MAX],
                       char *err, size_t errlen)
{
    return store_items_insert_rows(s, collection_id, items, n, out_ids, NULL, err, errlen);
}

int store_items_insert_rows(struct index_store *s, int64_t collection_id,
                            const struct item_in *items, size_t n,
                            char (*out_ids)[STORE_ID_MAX], int64_t *out_row_ids, char *err,
                            size_t errlen)
{
    char(*ids)[STORE_ID_MAX] = NULL;
    int64_t *rows = NULL;
    if (n && (!(ids = malloc(n * sizeof *ids)) || !(rows = malloc(n * sizeof *rows)))) {
        free(ids);
        return set_err(err, errlen, "index store: out of memory");
    }
    sqlite3_stmt *st = NULL;
    int ret = STORE_ERR;
    pthread_mutex_lock(&s->mu);
    if (exec_const(s, "BEGIN IMMEDIATE", err, errlen)) goto out;
    int64_t width;
    struct shape sh;
    if ((ret = collection_shape(s, collection_id, &width, &sh, err, errlen))) goto out;
    const int keep_images = sh.keep_images;
    for (size_t i = 0; i < n; i++)
        if ((ret = validate_item(&items[i], i, width, &sh, err, errlen))) goto out;
    ret = STORE_ERR;
    if (prepare(s,
                "INSERT INTO items (collection_id, external_id, metadata, vector, image, grid_h,"
                " grid_w, patches, labels) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                &st, err, errlen))
        goto out;
    for (size_t i = 0; i < n; i++) {
        const struct item_in *it = &items[i];
        sqlite3_bind_int64(st, 1, collection_id);
        if (it->metadata)
            sqlite3_bind_text(st, 3, it->metadata, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 3);
        sqlite3_bind_blob(st, 4, it->vector, (int)(it->dim * sizeof(float)), SQLITE_STATIC);
        if (keep_images && it->image)
            sqlite3_bind_blob64(st, 5, it->image, it->image_len, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 5);
        if (sh.patches) {
            sqlite3_bind_int(st, 6, it->grid_h);
            sqlite3_bind_int(st, 7, it->grid_w);
            sqlite3_bind_blob64(st, 8, it->patches, it->patches_len, SQLITE_STATIC);
            if (it->labels)
                sqlite3_bind_blob64(st, 9, it->labels, (size_t)it->grid_h * (size_t)it->grid_w,
                                    SQLITE_STATIC);
            else
                sqlite3_bind_null(st, 9);
        } /* else unbound: NULL */
        for (int attempt = 0;; attempt++) {
            if (it->external_id) {
                strcpy(ids[i], it->external_id); /* length checked by validate_item */
            } else if (gen_id(ids[i], err, errlen)) {
                goto out;
            }
            sqlite3_bind_text(st, 2, ids[i], -1, SQLITE_STATIC);
            int rc = sqlite3_step(st);
            sqlite3_reset(st);
            if (rc == SQLITE_DONE) {
                rows[i] = sqlite3_last_insert_rowid(s->db);
                break;
            }
            if (rc != SQLITE_CONSTRAINT_UNIQUE) {
                db_fail(s, err, errlen, "insert item");
                goto out;
            }
            if (it->external_id) {
                size_t j = 0;
                while (j < i && strcmp(ids[j], ids[i]) != 0) j++;
                ret = fail_code(STORE_CONFLICT, err, errlen,
                                j < i ? "duplicate item id in the batch:"
                                      : "an item exists in the collection with id",
                                ids[i]);
                goto out;
            }
            if (attempt == 8) { /* 2^-64 per try: only a broken RNG gets here */
                set_err(err, errlen, "index store: could not generate a unique item id");
                goto out;
            }
        }
        sqlite3_clear_bindings(st);
    }
    if ((ret = commit(s, collection_id, &st, err, errlen))) goto out;
    for (size_t i = 0; i < n; i++) memcpy(out_ids[i], ids[i], STORE_ID_MAX);
    if (out_row_ids && n) memcpy(out_row_ids, rows, n * sizeof *rows);
out:
    end_locked(s, st, ret != 0);
    free(ids);
    free(rows);
    return ret;
}

void store_item_free(struct item_out *out)
{
    if (!out) return;
    free(out->metadata);
    free(out->vector);
    free(out->image);
    out->metadata = NULL;
    out->vector = NULL;
    out->image = NULL;
    out->dim = out->image_len = 0;
}

/* Fills out from a row of (id, external_id, metadata, vector[, image]) whose
 * vector has width floats; 0 or -1 (memory). */
static int read_item(sqlite3_stmt *st, size_t width, bool with_image, struct item_out *out)
{
    out->row_id = sqlite3_column_int64(st, 0);
    copy_col(out->external_id, sizeof out->external_id, st, 1);
    const unsigned char *meta = sqlite3_column_text(st, 2);
    if (meta && !(out->metadata = strdup((const char *)meta))) return -1;
    if (!(out->vector = malloc(width * sizeof *out->vector))) return -1;
    memcpy(out->vector, sqlite3_column_blob(st, 3), width * sizeof *out->vector);
    out->dim = width;
    if (with_image && sqlite3_column_type(st, 4) == SQLITE_BLOB) {
        const size_t ilen = (size_t)sqlite3_column_bytes(st, 4);
        if (!(out->image = malloc(ilen ? ilen : 1))) return -1;
        if (ilen) memcpy(out->image, sqlite3_column_blob(st, 4), ilen);
        out->image_len = ilen;
    }
    return 0;
}

/* store_item_get and store_items_get_many: n items by external id in one read
 * transaction with one prepared statement; an absent id leaves out[i] zeroed. */
static int items_get(struct index_store *s, int64_t collection_id, const char *const *external_ids,
                     size_t n, bool with_image, struct item_out *out, char *err, size_t errlen)
{
    memset(out, 0, n * sizeof *out);
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st = NULL;
    int ret = STORE_ERR;
    if (exec_const(s, "BEGIN", err, errlen)) goto out;
    int64_t width;
    if ((ret = collection_shape(s, collection_id, &width, NULL, err, errlen))) goto out;
    ret = STORE_ERR;
    if (prepare(s,
                with_image ? "SELECT id, external_id, metadata, vector, image FROM items"
                             " WHERE collection_id = ?1 AND external_id = ?2"
                           : "SELECT id, external_id, metadata, vector FROM items"
                             " WHERE collection_id = ?1 AND external_id = ?2",
                &st, err, errlen))
        goto out;
    sqlite3_bind_int64(st, 1, collection_id);
    for (size_t i = 0; i < n; i++) {
        sqlite3_reset(st);
        sqlite3_bind_text(st, 2, external_ids[i], -1, SQLITE_STATIC);
        const int rc = sqlite3_step(st);
        if (rc == SQLITE_DONE) continue;
        if (rc != SQLITE_ROW) {
            db_fail(s, err, errlen, "get items");
            goto out;
        }
        const size_t vbytes = (size_t)sqlite3_column_bytes(st, 3);
        if (vbytes != (size_t)width * sizeof(float)) {
            set_err(err, errlen, "index store: item has %zu vector bytes, expected %lld", vbytes,
                    (long long)width * 4);
            goto out;
        }
        if (read_item(st, (size_t)width, with_image, &out[i])) {
            set_err(err, errlen, "index store: out of memory");
            goto out;
        }
    }
    ret = 0;
out:
    end_locked(s, st, true); /* read-only transaction: ending it either way is the same */
    return ret;
}

int store_item_get(struct index_store *s, int64_t collection_id, const char *external_id,
                   struct item_out *out, char *err, size_t errlen)
{
    if (!external_id) {
        memset(out, 0, sizeof *out);
        return set_err_code(err, errlen, STORE_INVALID, "no item id");
    }
    int ret = items_get(s, collection_id, &external_id, 1, true, out, err, errlen);
    if (!ret && !out->vector)
        ret = fail_code(STORE_NOT_FOUND, err, errlen, "no item with id", external_id);
    if (ret) store_item_free(out);
    return ret;
}

int store_items_get_many(struct index_store *s, int64_t collection_id,
                         const char *const *external_ids, size_t n, struct item_out *out,
                         char *err, size_t errlen)
{
    return items_get(s, collection_id, external_ids, n, false, out, err, errlen);
}

int store_items_delete(struct index_store *s, int64_t collection_id,
                       const char *const *external_ids, size_t n, size_t *deleted,
                       char *err, size_t errlen)
{
    *deleted = 0;
    for (size_t i = 0; i < n; i++)
        if (!external_ids[i])
            return set_err_code(err, errlen, STORE_INVALID, "item id %zu is missing", i);
    sqlite3_stmt *st = NULL;
    int ret = STORE_ERR;
    size_t count = 0;
    pthread_mutex_lock(&s->mu);
    if (exec_const(s, "BEGIN IMMEDIATE", err, errlen)) goto out;
    int64_t width;
    if ((ret = collection_shape(s, collection_id, &width, NULL, err, errlen))) goto out;
    ret = STORE_ERR;
    if (prepare(s, "DELETE FROM items WHERE collection_id = ?1 AND external_id = ?2", &st, err,
                errlen))
        goto out;
    for (size_t i = 0; i < n; i++) {
        sqlite3_bind_int64(st, 1, collection_id);
        sqlite3_bind_text(st, 2, external_ids[i], -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE) {
            db_fail(s, err, errlen, "delete item");
            goto out;
        }
        count += (size_t)sqlite3_changes(s->db);
    }
    if ((ret = commit(s, collection_id, &st, err, errlen))) goto out;
    *deleted = count;
out:
    end_locked(s, st, ret != 0);
    return ret;
}

int store_items_scan(struct index_store *s, int64_t collection_id, store_scan_fn fn,
                     void *user, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    float *vec = NULL;
    int ret = STORE_ERR;
    pthread_mutex_lock(&s->mu);
    if (exec_const(s, "BEGIN", err, errlen)) goto out; /* one snapshot for the whole scan */
    int64_t width;
    if ((ret = collection_shape(s, collection_id, &width, NULL, err, errlen))) goto out;
    ret = STORE_ERR;
    size_t vbytes = (size_t)width * sizeof(float);
    if (!(vec = malloc(vbytes))) { /* aligned copy: blob memory has no alignment promise */
        set_err(err, errlen, "index store: out of memory");
        goto out;
    }
    if (prepare(s,
                "SELECT id, external_id, vector, metadata FROM items WHERE collection_id = ?1"
                " ORDER BY id",
                &st, err, errlen))
        goto out;
    sqlite3_bind_int64(st, 1, collection_id);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *ext = (const char *)sqlite3_column_text(st, 1);
        const void *blob = sqlite3_column_blob(st, 2);
        size_t got = (size_t)sqlite3_column_bytes(st, 2);
        const char *meta = (const char *)sqlite3_column_text(st, 3);
        if (!ext || got != vbytes) {
            set_err(err, errlen, "index store: item row %lld is malformed (%zu vector bytes,"
                    " expected %zu)", (long long)sqlite3_column_int64(st, 0), got, vbytes);
            goto out;
        }
        memcpy(vec, blob, vbytes);
        if (fn(sqlite3_column_int64(st, 0), ext, vec, (size_t)width, meta, user) != 0) {
            set_err(err, errlen, "index store: scan stopped by its callback");
            goto out;
        }
    }
    if (rc != SQLITE_DONE) {
        db_fail(s, err, errlen, "scan items");
        goto out;
    }
    ret = 0;
out:
    end_locked(s, st, true); /* the scan's read snapshot */
    free(vec);
    return ret;
}

int store_patches_scan(struct index_store *s, int64_t collection_id, store_patch_scan_fn fn,
                       void *user, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int ret = STORE_ERR;
    pthread_mutex_lock(&s->mu);
    if (exec_const(s, "BEGIN", err, errlen)) goto out; /* one snapshot for the whole scan */
    int64_t width;
    struct shape sh;
    if ((ret = collection_shape(s, collection_id, &width, &sh, err, errlen))) goto out;
    ret = STORE_ERR;
    const size_t vb = patch_vec_bytes((int)width, sh.type);
    if (prepare(s,
                "SELECT id, external_id, grid_h, grid_w, patches, labels FROM items"
                " WHERE collection_id = ?1 ORDER BY id",
                &st, err, errlen))
        goto out;
    sqlite3_bind_int64(st, 1, collection_id);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *ext = (const char *)sqlite3_column_text(st, 1);
        const int gh = sqlite3_column_int(st, 2), gw = sqlite3_column_int(st, 3);
        const void *blob = sqlite3_column_blob(st, 4);
        const size_t got = (size_t)sqlite3_column_bytes(st, 4);
        if (!ext || !blob || gh < 1 || gw < 1 || got != (size_t)gh * (size_t)gw * vb) {
            set_err(err, errlen, "index store: item row %lld has no valid patch matrix",
                    (long long)sqlite3_column_int64(st, 0));
            goto out;
        }
        const void *lab = sqlite3_column_blob(st, 5);
        if (lab && (size_t)sqlite3_column_bytes(st, 5) != (size_t)gh * (size_t)gw) {
            set_err(err, errlen, "index store: item row %lld has labels of the wrong size",
                    (long long)sqlite3_column_int64(st, 0));
            goto out;
        }
        if (fn(sqlite3_column_int64(st, 0), ext, gh, gw, blob, got, lab, user) != 0) {
            set_err(err, errlen, "index store: scan stopped by its callback");
            goto out;
        }
    }
    if (rc != SQLITE_DONE) {
        db_fail(s, err, errlen, "scan patches");
        goto out;
    }
    ret = 0;
out:
    end_locked(s, st, true);
    return ret;
}

int store_integrity_check(struct index_store *s, char *err, size_t errlen)
{
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st;
    int ret = STORE_ERR;
    if (prepare(s, "PRAGMA integrity_check", &st, err, errlen) == 0) {
        int rc = sqlite3_step(st);
        const char *msg = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : NULL;
        if (msg && strcmp(msg, "ok") == 0 && sqlite3_step(st) == SQLITE_DONE)
            ret = 0;
        else if (msg)
            set_err(err, errlen, "index store: integrity check: %.200s", msg);
        else
            db_fail(s, err, errlen, "integrity check");
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->mu);
    return ret;
}

/* --- re-embedding ------------------------------------------------------------ */

int store_collection_image_counts(struct index_store *s, int64_t collection_id,
                                  int64_t *with_image, int64_t *without_image, char *err,
                                  size_t errlen)
{
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *st;
    int ret = STORE_ERR;
    if (prepare(s,
                "SELECT count(image), count(*) - count(image) FROM items"
                " WHERE collection_id = ?1",
                &st, err, errlen) == 0) {
        sqlite3_bind_int64(st, 1, collection_id);
        if (sqlite3_step(st) == SQLITE_ROW) {
            *with_image = sqlite3_column_int64(st, 0);
            *without_image = sqlite3_column_int64(st, 1);
            ret = 0;
        } else {
            db_fail(s, err, errlen, "count images");
        }
        sqlite3_finalize(st);
    }
    pthread_mutex_unlock(&s->mu);
    return ret;
}

void store_image_rows_free(struct store_image_row *rows, size_t n)
{
    for (size_t i = 0; rows && i < n; i++) free(rows[i].image);
    free(rows);
}

int store_images_page(struct index_store *s, int64_t collection_id, int64_t after_row_id,
                      size_t limit, struct store_image_row **out, size_t *n, char *err,
                      size_t errlen)
{
    *out = NULL;
    *n = 0;
    struct store_image_row *rows = calloc(limit ? limit : 1, sizeof *rows);
    if (!rows) return set_err_code(err, errlen, STORE_ERR, "index store: out of memory");
    sqlite3_stmt *st = NULL;
    int ret = STORE_ERR;
    size_t got = 0;
    pthread_mutex_lock(&s->mu);
    if (prepare(s,
                "SELECT id, image FROM items WHERE collection_id = ?1 AND id > ?2"
                " AND image IS NOT NULL ORDER BY id LIMIT ?3",
                &st, err, errlen))
        goto out;
    sqlite3_bind_int64(st, 1, collection_id);
    sqlite3_bind_int64(st, 2, after_row_id);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)limit);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const size_t len = (size_t)sqlite3_column_bytes(st, 1);
        const void *blob = sqlite3_column_blob(st, 1);
        struct store_image_row *r = &rows[got];
        r->row_id = sqlite3_column_int64(st, 0);
        r->image = malloc(len ? len : 1);
        if (!r->image) {
            set_err(err, errlen, "index store: out of memory");
            goto out;
        }
        if (len) memcpy(r->image, blob, len);
        r->image_len = len;
        got++;
    }
    if (rc != SQLITE_DONE) {
        db_fail(s, err, errlen, "read images");
        goto out;
    }
    ret = 0;
out:
    end_locked(s, st, false);
    if (ret) {
        store_image_rows_free(rows, got); /* a row that failed holds no image */
        return ret;
    }
    *out = rows;
    *n = got;
    return 0;
}

int store_collection_revector(struct index_store *s, int64_t collection_id,
                              const char *fingerprint, const int64_t *row_ids,
                              const float *vectors, size_t n, char *err, size_t errlen)
{
    if (check_text(fingerprint, 0, STORE_TEXT_MAX, "fingerprint", err, errlen))
        return STORE_INVALID;
    sqlite3_stmt *st = NULL;
    int ret = STORE_ERR;
    pthread_mutex_lock(&s->mu);
    if (exec_const(s, "BEGIN IMMEDIATE", err, errlen)) goto out;
    int64_t width;
    if ((ret = collection_shape(s, collection_id, &width, NULL, err, errlen))) goto out;
    ret = STORE_ERR;
    const size_t vbytes = (size_t)width * sizeof(float);
    for (size_t i = 0; i < n * (size_t)width; i++)
        if (!isfinite(vectors[i])) {
            ret = set_err_code(err, errlen, STORE_INVALID, "vector %zu has a NaN or Inf",
                               i / (size_t)width);
            goto out;
        }
    if (prepare(s, "UPDATE items SET vector = ?1 WHERE id = ?2 AND collection_id = ?3", &st,
                err, errlen))
        goto out;
    for (size_t i = 0; i < n; i++) {
        sqlite3_bind_blob(st, 1, vectors + i * (size_t)width, (int)vbytes, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, row_ids[i]);
        sqlite3_bind_int64(st, 3, collection_id);
        const int rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE) {
            db_fail(s, err, errlen, "update vector");
            goto out;
        }
    }
    sqlite3_finalize(st);
    st = NULL;
    if (prepare(s, "UPDATE collections SET fingerprint = ?1 WHERE id = ?2", &st, err, errlen))
        goto out;
    sqlite3_bind_text(st, 1, fingerprint, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, collection_id);
    if (sqlite3_step(st) != SQLITE_DONE) {
        db_fail(s, err, errlen, "update fingerprint");
        goto out;
    }
    if ((ret = commit(s, collection_id, &st, err, errlen))) goto out;
out:
    end_locked(s, st, ret != 0);
    return ret;
}
