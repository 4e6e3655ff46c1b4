/* Admin routes (bearer token, checked by auth.c):
 *   POST   /admin/models/{name}  {"checkpoint": "relative/path.safetensors"}
 *          loads from --models-dir only, warms up, swaps atomically;
 *   DELETE /admin/models/{name}  unloads any model but the last;
 *   POST   /admin/snapshot       a consistent copy of the index under
 *          DATA/snapshots/ (index/snapshot.h), taken while serving.
 * Without --admin-token-file the routes answer 404, as if absent. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "app.h"
#include "errors.h"
#include "index/snapshot.h"

/* Replies 404/401/403 and returns false unless the request carries the token. */
static bool authorised(struct http_request *req, const struct app *app)
{
    if (!app->admin_keys.n) {
        http_reply_error(req, 404, NULL, "admin routes are disabled (start with --admin-token-file)");
        return false;
    }
    return auth_check(req, &app->admin_keys, AUTH_ADMIN);
}

/* Resolves rel inside dir; refuses (-1) absolute paths, '..' and anything
 * (symlinks included) whose real path leaves dir; -2 when it does not exist.
 * out: PATH_MAX bytes. */
static int resolve_in_dir(const char *dir, const char *rel, char *out, char *err, size_t errlen)
{
    if (!*rel || rel[0] == '/')
        return set_err(err, errlen, "checkpoint must be a relative path inside the models directory");
    for (const char *p = rel; *p; p++)
        if (p[0] == '.' && p[1] == '.' && (p == rel || p[-1] == '/') && (p[2] == '/' || !p[2]))
            return set_err(err, errlen, "checkpoint path may not contain '..'");
    char base[PATH_MAX], joined[PATH_MAX * 2];
    if (!realpath(dir, base)) return set_err(err, errlen, "models directory is not accessible");
    snprintf(joined, sizeof joined, "%s/%s", base, rel);
    if (!realpath(joined, out)) {
        set_err(err, errlen, "checkpoint '%s' not found in the models directory", rel);
        return -2;
    }
    const size_t bl = strlen(base);
    if (strncmp(out, base, bl) || out[bl] != '/')
        return set_err(err, errlen, "checkpoint '%s' resolves outside the models directory", rel);
    return 0;
}

/* A FIFO or device would block or misbehave in the loader: refuse it here,
 * with stat (which opens nothing). The loader checks again on the open file. */
static bool regular_file(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

struct swap_job {
    struct http_request *req;
    struct app *app;
    char name[REGISTRY_NAME_MAX];
    char path[PATH_MAX];
};

/* Loading and warm-up take seconds: they run on the background queue, never
 * on an HTTP thread. */
static void swap_run(void *arg)
{
    struct swap_job *job = arg;
    char err[ERR_LEN];
    struct model_entry *e;
    const int rc = registry_load(job->app->registry, job->name, job->path, &e, err, sizeof err);
    if (rc) {
        route_reply_registry_error(job->req, rc, err);
    } else {
        http_reply_json(job->req, 200, json_pack("{s:s, s:s, s:s, s:f, s:f}", "id", e->name,
                                                 "fingerprint", e->fingerprint, "loaded_at",
                                                 e->loaded_at_iso, "load_seconds", e->load_seconds,
                                                 "warmup_seconds", e->warmup_seconds));
        model_entry_release(e);
    }
    http_request_unref(job->req);
    free(job);
}

static void load_model(struct http_request *req, void *user)
{
    struct app *app = user;
    if (!authorised(req, app)) return;
    const char *name = http_param(req, "name");
    if (!registry_name_valid(name)) {
        http_reply_error(req, 400, NULL, "model names are 1-63 characters of [A-Za-z0-9._-]");
        return;
    }
    if (!app->models_dir) {
        http_reply_error(req, 409, NULL, "no --models-dir was given: checkpoints cannot be loaded at run time");
        return;
    }
    size_t len;
    const char *body = http_body(req, &len);
    json_error_t je;
    json_t *j = json_loadb(body, len, 0, &je);
    const char *ckpt = json_string_value(json_object_get(j, "checkpoint"));
    if (!ckpt) {
        http_reply_error(req, 400, NULL, "body must be {\"checkpoint\": \"relative/path.safetensors\"}");
        json_decref(j);
        return;
    }
    struct swap_job *job = calloc(1, sizeof(*job));
    char err[ERR_LEN];
    int rc;
    if (!job) {
        http_reply_error(req, 500, NULL, "out of memory");
    } else if ((rc = resolve_in_dir(app->models_dir, ckpt, job->path, err, sizeof err))) {
        http_reply_error(req, rc == -2 ? 404 : 403, NULL, err);
        free(job);
    } else if (!regular_file(job->path)) {
        http_reply_errorf(req, 422, NULL, "checkpoint '%s' is not a regular file", ckpt);
        free(job);
    } else {
        job->req = req;
        job->app = app;
        snprintf(job->name, sizeof job->name, "%s", name);
        http_request_ref(req);
        http_defer(req);
        if (workq_submit(app->background, swap_run, job)) {
            http_reply_error(req, 503, NULL, "the background work queue is full or shutting down");
            http_request_unref(req);
            free(job);
        }
    }
    json_decref(j);
}

static void unload_model(struct http_request *req, void *user)
{
    struct app *app = user;
    if (!authorised(req, app)) return;
    char err[ERR_LEN];
    const int rc = registry_unload(app->registry, http_param(req, "name"), err, sizeof err);
    if (rc) route_reply_registry_error(req, rc, err);
    else http_reply_json(req, 200, json_pack("{s:s, s:b}", "id", http_param(req, "name"), "unloaded", 1));
}

/* On the background queue: a large index takes a while to copy. */
struct snapshot_job {
    struct http_request *req; /* referenced until answered */
    const char *data_dir;
};

static void snapshot_run(void *arg)
{
    struct snapshot_job *job = arg;
    struct http_request *req = job->req;
    struct snapshot_info s;
    char err[ERR_LEN];
    if (snapshot_write(job->data_dir, &s, err, sizeof err))
        http_reply_error(req, 500, NULL, err);
    else
        http_reply_json(req, 201, json_pack("{s:s, s:I, s:f}", "path", s.path, "bytes",
                                            (json_int_t)s.bytes, "seconds", s.seconds));
    http_request_unref(req);
    free(job);
}

static void snapshot(struct http_request *req, void *user)
{
    struct app *app = user;
    if (!authorised(req, app)) return;
    struct snapshot_job *job = malloc(sizeof *job);
    if (!job) {
        http_reply_error(req, 500, NULL, "out of memory");
        return;
    }
    *job = (struct snapshot_job){.req = req, .data_dir = app->data_dir};
    http_request_ref(req);
    http_defer(req);
    if (workq_submit(app->background, snapshot_run, job)) {
        http_reply_error(req, 503, NULL, "the background work queue is full or shutting down");
        http_request_unref(req);
        free(job);
    }
}

int routes_admin_register(struct http_router *r, struct app *app, char *err, size_t errlen)
{
    if (route_add(r, app, "POST", "/admin/models/{name}", load_model, err, errlen) ||
        route_add(r, app, "POST", "/admin/snapshot", snapshot, err, errlen))
        return -1;
    return route_add(r, app, "DELETE", "/admin/models/{name}", unload_model, err, errlen);
}
