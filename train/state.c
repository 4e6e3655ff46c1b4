#include "state.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "errors.h"
#include "safetensors.h"

int fsync_parent_dir(const char *path)
{
    char *copy = strdup(path);
    if (!copy) return -1;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
    free(copy);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int write_file_atomic(const char *path, const void *data, size_t len, char *err, size_t errlen)
{
    size_t n = strlen(path) + 32;
    char *tmp = malloc(n);
    if (!tmp) return set_err(err, errlen, "out of memory");
    snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        set_err(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        return -1;
    }
    const char *p = data;
    size_t left = len;
    while (left) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            set_err(err, errlen, "%s: write failed: %s", tmp, strerror(errno));
            close(fd);
            unlink(tmp);
            free(tmp);
            return -1;
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) < 0 || close(fd) < 0) {
        set_err(err, errlen, "%s: fsync failed: %s", tmp, strerror(errno));
        unlink(tmp);
        free(tmp);
        return -1;
    }
    if (rename(tmp, path) < 0) {
        set_err(err, errlen, "%s: rename failed: %s", path, strerror(errno));
        unlink(tmp);
        free(tmp);
        return -1;
    }
    free(tmp);
    fsync_parent_dir(path);
    return 0;
}

static char *state_path(const char *dir)
{
    size_t n = strlen(dir) + sizeof STATE_FILE + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, STATE_FILE);
    return p;
}

static int add(struct st_writer *w, const char *prefix, const char *name, const float *data,
               size_t n, char *err, size_t errlen)
{
    char full[160];
    snprintf(full, sizeof full, "%s/%s", prefix, name);
    int64_t shape[1] = {(int64_t)n};
    return st_writer_add_f32(w, full, ST_F32, data, 1, shape, err, errlen);
}

int state_save(const char *dir, const struct train_config *cfg, int64_t step,
               const struct param_list *pl, struct optimizer *opt, char *err, size_t errlen)
{
    char *path = state_path(dir);
    struct st_writer *w = st_writer_new();
    char *cj = train_config_to_json(cfg);
    int rc = -1;
    if (!path || !w || !cj) {
        set_err(err, errlen, "out of memory saving the training state");
        goto out;
    }
    for (int i = 0; i < pl->n; i++) {
        const struct param *p = &pl->p[i];
        if (add(w, "student", p->name, p->w, p->n, err, errlen) < 0) goto out;
        if (p->t && add(w, "teacher", p->name, p->t, p->n, err, errlen) < 0) goto out;
        if (add(w, "adam_m", p->name, optimizer_m(opt, i), p->n, err, errlen) < 0) goto out;
        if (add(w, "adam_v", p->name, optimizer_v(opt, i), p->n, err, errlen) < 0) goto out;
    }
    size_t mlen = strlen(cj) + 256;
    char *meta = malloc(mlen);
    if (!meta) {
        set_err(err, errlen, "out of memory");
        goto out;
    }
    snprintf(meta, mlen, "{\"format\":1,\"step\":%lld,\"optimizer_step\":%lld,\"seed\":%lld,\"config\":%s}",
             (long long)step, (long long)optimizer_get_step(opt), (long long)cfg->seed, cj);
    int mr = st_writer_set_metadata(w, STATE_META_KEY, meta, err, errlen);
    free(meta);
    if (mr < 0) goto out;
    if (st_writer_finish(w, path, err, errlen) < 0) goto out;
    fsync_parent_dir(path);
    rc = 0;
out:
    st_writer_free(w);
    free(cj);
    free(path);
    return rc;
}

static int parse_meta(const struct st_file *st, const char *path, struct train_config *cfg,
                      int64_t *step, int64_t *opt_step, char *err, size_t errlen)
{
    const char *m = st_metadata_get(st, STATE_META_KEY);
    if (!m) return set_err(err, errlen, "%s: not a franca-train state (no %s metadata)", path, STATE_META_KEY);
    json_error_t je;
    json_t *root = json_loads(m, 0, &je);
    if (!root) return set_err(err, errlen, "%s: state metadata is not JSON: %s", path, je.text);
    int rc = -1;
    json_t *jstep = json_object_get(root, "step"), *jos = json_object_get(root, "optimizer_step");
    json_t *jcfg = json_object_get(root, "config"), *jfmt = json_object_get(root, "format");
    if (!json_is_integer(jfmt) || json_integer_value(jfmt) != 1 || !json_is_integer(jstep) ||
        !json_is_integer(jos) || !json_is_object(jcfg)) {
        set_err(err, errlen, "%s: state metadata lacks format 1, step, optimizer_step or config", path);
        goto out;
    }
    if (cfg) {
        char *cs = json_dumps(jcfg, JSON_COMPACT);
        train_config_defaults(cfg);
        int r = cs ? train_config_apply_json(cfg, cs, strlen(cs), path, err, errlen) : -1;
        free(cs);
        if (r < 0) goto out;
    }
    if (step) *step = json_integer_value(jstep);
    if (opt_step) *opt_step = json_integer_value(jos);
    rc = 0;
out:
    json_decref(root);
    return rc;
}

int state_read_header(const char *dir, struct train_config *cfg, int64_t *step, char *err,
                      size_t errlen)
{
    char *path = state_path(dir);
    if (!path) return set_err(err, errlen, "out of memory");
    struct st_file st;
    int rc = st_open(path, &st, err, errlen);
    if (rc == 0) {
        rc = parse_meta(&st, path, cfg, step, NULL, err, errlen);
        st_close(&st);
    }
    free(path);
    return rc;
}

static int restore(const struct st_file *st, const char *path, const char *prefix,
                   const struct param *p, float *dst, char *err, size_t errlen)
{
    char full[160];
    snprintf(full, sizeof full, "%s/%s", prefix, p->name);
    const struct st_tensor *t = st_find(st, full);
    if (!t) return set_err(err, errlen, "%s: tensor %s is missing", path, full);
    if (t->dtype != ST_F32 || t->ndim != 1 || st_numel(t) != p->n)
        return set_err(err, errlen, "%s: tensor %s has the wrong shape or dtype (want F32 [%zu])",
                       path, full, p->n);
    memcpy(dst, t->data, p->n * sizeof(float));
    return 0;
}

int state_load(const char *dir, struct param_list *pl, struct optimizer *opt, char *err,
               size_t errlen)
{
    char *path = state_path(dir);
    if (!path) return set_err(err, errlen, "out of memory");
    struct st_file st;
    if (st_open(path, &st, err, errlen) < 0) {
        free(path);
        return -1;
    }
    int64_t opt_step = 0;
    int rc = parse_meta(&st, path, NULL, NULL, &opt_step, err, errlen);
    size_t expected = 0;
    for (int i = 0; rc == 0 && i < pl->n; i++) {
        struct param *p = &pl->p[i];
        rc = restore(&st, path, "student", p, p->w, err, errlen);
        if (rc == 0 && p->t) rc = restore(&st, path, "teacher", p, p->t, err, errlen);
        if (rc == 0) rc = restore(&st, path, "adam_m", p, optimizer_m(opt, i), err, errlen);
        if (rc == 0) rc = restore(&st, path, "adam_v", p, optimizer_v(opt, i), err, errlen);
        expected += p->t ? 4 : 3;
    }
    if (rc == 0 && st.n_tensors != expected)
        rc = set_err(err, errlen, "%s: %zu tensors, but the model has %zu (a different architecture?)",
                     path, st.n_tensors, expected);
    if (rc == 0) optimizer_set_step(opt, opt_step);
    st_close(&st);
    free(path);
    return rc;
}
