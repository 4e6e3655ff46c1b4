/* Unit tests of the model registry (refcounts, hot swap, busy/last/unknown
 * codes, failed swaps, a FIFO refused without blocking) and the dynamic
 * batcher (gathering, per-key batches, queue limit, all-or-nothing submits,
 * the token budget, dropping cancelled jobs, drain on shutdown, requests
 * finishing on the reply pool off the batcher's worker), including a
 * hot swap under concurrent load whose every result is checked against a
 * direct forward of the model that the result's entry names. CHECK is only
 * called from the main thread. */
#include "check.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "batcher.h"
#include "checkpoint.h"
#include "errors.h"
#include "infer.h"
#include "model_config.h"
#include "registry.h"
#include "sha256.h"
#include "vit.h"
#include "workq.h"
#include "clock.h"

enum { D = 32, S = 56, NIN = 8, H2 = 28, W2 = 42 };
#define IMG (3 * S * S)
#define IMG2 (3 * H2 * W2)
#define NP ((S / 14) * (S / 14))        /* patches at S x S */
#define NP2 ((H2 / 14) * (W2 / 14))     /* patches at H2 x W2 */

static char tmpdir[256];
static char path_a[300], path_b[300], path_norasa[300], path_big[300], path_trunc[300],
    path_garbage[300], path_fifo[300];
static char fp_a[65], fp_b[65];

static float inputs[NIN][IMG];          /* at S x S */
static float inputs2[NIN][IMG2];        /* at H2 x W2 */
/* Direct single-image forwards: [model a/b][input] */
static float ref_cls[2][NIN][D], ref_patch[2][NIN][NP * D], ref_rasa[2][NIN][NP * D];
static float ref_cls2[NIN][D];          /* model a at H2 x W2 */

static int one_line(const char *s) { return s[0] != '\0' && strchr(s, '\n') == NULL; }

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------- fixtures -- */

static void tiny_cfg(struct model_config *c, int rasa)
{
    model_config_defaults(c, D, 2);
    c->num_heads = 2;
    c->patch_size = 14;
    c->pos_grid = 4;
    c->rasa_layers = rasa;
    c->preprocess.resize_size = 64;
    c->preprocess.crop_size = S;
    snprintf(c->name, sizeof c->name, "tiny_registry_test");
    snprintf(c->version, sizeof c->version, "0");
}

static int save_ckpt(const char *path, const struct model_config *c, uint64_t seed)
{
    struct vit_weights w;
    char err[ERR_LEN];
    if (vit_weights_alloc(c, &w, err, sizeof err)) {
        fprintf(stderr, "alloc: %s\n", err);
        return -1;
    }
    vit_weights_init_random(c, &w, seed);
    const int rc = checkpoint_save(path, c, &w, ST_F32, NULL, err, sizeof err);
    if (rc) fprintf(stderr, "save %s: %s\n", path, err);
    vit_weights_free(&w);
    return rc;
}

static void fill_random(float *x, size_t n, uint64_t seed)
{
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (float)((s >> 40) * (1.0 / 16777216.0)) * 4.0f - 2.0f;
    }
}

static int make_fixtures(void)
{
    struct model_config c;
    tiny_cfg(&c, 2);
    snprintf(path_a, sizeof path_a, "%s/a.safetensors", tmpdir);
    snprintf(path_b, sizeof path_b, "%s/b.safetensors", tmpdir);
    snprintf(path_norasa, sizeof path_norasa, "%s/norasa.safetensors", tmpdir);
    snprintf(path_big, sizeof path_big, "%s/big.safetensors", tmpdir);
    snprintf(path_trunc, sizeof path_trunc, "%s/trunc.safetensors", tmpdir);
    snprintf(path_garbage, sizeof path_garbage, "%s/garbage.safetensors", tmpdir);
    snprintf(path_fifo, sizeof path_fifo, "%s/fifo.safetensors", tmpdir);
    if (save_ckpt(path_a, &c, 1) || save_ckpt(path_b, &c, 2)) return -1;
    struct model_config c0;
    tiny_cfg(&c0, 0);
    if (save_ckpt(path_norasa, &c0, 3)) return -1;
    /* A bigger model whose load and warm-up take long enough to overlap. */
    struct model_config cb;
    model_config_defaults(&cb, 192, 8);
    cb.num_heads = 3;
    cb.pos_grid = 16;
    snprintf(cb.name, sizeof cb.name, "big_registry_test");
    snprintf(cb.version, sizeof cb.version, "0");
    if (save_ckpt(path_big, &cb, 4)) return -1;

    /* The first half of a, and a file of junk. */
    FILE *f = fopen(path_a, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    const long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)len);
    const size_t got = buf ? fread(buf, 1, (size_t)len, f) : 0;
    fclose(f);
    FILE *g = fopen(path_trunc, "wb");
    if (!g || got != (size_t)len) {
        if (g) fclose(g);
        free(buf);
        return -1;
    }
    fwrite(buf, 1, (size_t)len / 2, g);
    fclose(g);
    free(buf);
    g = fopen(path_garbage, "wb");
    if (!g) return -1;
    for (int i = 0; i < 4096; i++) fputc((i * 7919) & 0xff, g);
    fclose(g);

    /* Inputs and direct references. */
    for (int i = 0; i < NIN; i++) {
        fill_random(inputs[i], IMG, 100 + (uint64_t)i);
        fill_random(inputs2[i], IMG2, 200 + (uint64_t)i);
    }
    char err[ERR_LEN];
    const char *paths[2] = {path_a, path_b};
    char *fps[2] = {fp_a, fp_b};
    for (int k = 0; k < 2; k++) {
        struct vit_model *m;
        if (vit_model_load(paths[k], &m, err, sizeof err)) {
            fprintf(stderr, "load: %s\n", err);
            return -1;
        }
        snprintf(fps[k], 65, "%s", vit_model_fingerprint(m));
        struct vit_workspace *ws = NULL;
        for (int i = 0; i < NIN; i++) {
            struct vit_outputs o = {.cls = ref_cls[k][i], .patch = ref_patch[k][i],
                                    .patch_rasa = ref_rasa[k][i]};
            if (vit_forward(m, &ws, inputs[i], 1, S, S, &o, err, sizeof err)) {
                fprintf(stderr, "forward: %s\n", err);
                return -1;
            }
            if (k == 0) {
                struct vit_outputs o2 = {.cls = ref_cls2[i]};
                if (vit_forward(m, &ws, inputs2[i], 1, H2, W2, &o2, err, sizeof err)) {
                    fprintf(stderr, "forward: %s\n", err);
                    return -1;
                }
            }
        }
        vit_workspace_free(ws);
        vit_model_free(m);
    }
    return 0;
}

/* ----------------------------------------------------------- test jobs -- */

struct waiter {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int finished;
};

static void waiter_init(struct waiter *w)
{
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    w->finished = 0;
}

static void waiter_destroy(struct waiter *w)
{
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
}

/* Waits until n jobs finished or timeout; returns the count. */
static int waiter_wait(struct waiter *w, int n, double timeout_s)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += (time_t)timeout_s;
    pthread_mutex_lock(&w->lock);
    while (w->finished < n)
        if (pthread_cond_timedwait(&w->cond, &w->lock, &dl)) break;
    const int f = w->finished;
    pthread_mutex_unlock(&w->lock);
    return f;
}

static int waiter_count(struct waiter *w)
{
    pthread_mutex_lock(&w->lock);
    const int f = w->finished;
    pthread_mutex_unlock(&w->lock);
    return f;
}

struct tjob {
    struct batch_job job;          /* first: the callback casts back */
    float cls[D];
    float patch[NP * D];
    float rasa[NP * D];
    int status;
    int calls;
    char err[ERR_LEN];
    atomic_bool cancel;            /* read by tjob_cancelled */
};

static bool tjob_cancelled(struct batch_job *j, void *user)
{
    (void)user;
    return atomic_load(&((struct tjob *)j)->cancel);
}

static void tjob_done(struct batch_job *j, int status, const char *err, void *user)
{
    struct tjob *t = (struct tjob *)j;
    struct waiter *w = user;
    pthread_mutex_lock(&w->lock);
    t->status = status;
    t->calls++;
    snprintf(t->err, sizeof t->err, "%s", err ? err : "");
    w->finished++;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

static void tjob_setup(struct tjob *t, struct model_entry *e, int H, int W, const float *in,
                       bool cls, bool patch, bool rasa, struct waiter *w)
{
    memset(t, 0, sizeof(*t));
    t->job.entry = e;
    t->job.H = H;
    t->job.W = W;
    t->job.input = in;
    t->job.cls = cls ? t->cls : NULL;
    t->job.patch = patch ? t->patch : NULL;
    t->job.patch_rasa = rasa ? t->rasa : NULL;
    t->job.done = tjob_done;
    t->job.user = w;
    t->job.cancelled = tjob_cancelled;
    atomic_init(&t->cancel, false);
    t->status = -100;
}

/* Compares out with ref: bit-identical at batch size 1, else within 1e-5. */
static bool matches(const float *out, const float *ref, size_t n, int batch_size)
{
    if (batch_size == 1) return memcmp(out, ref, n * sizeof(float)) == 0;
    return max_abs_diff(out, ref, n) <= 1e-5f;
}

/* ------------------------------------------------------------ registry -- */

static void test_registry_basic(void)
{
    char err[ERR_LEN] = "";
    struct registry *reg;
    CHECK(registry_create(&reg, "cpu", "fp32", err, sizeof err) == REGISTRY_OK, "%s", err);
    struct model_entry *e = NULL, *e2 = NULL;

    CHECK(registry_acquire(reg, NULL, &e, err, sizeof err) == REGISTRY_NOT_FOUND && !e && one_line(err),
          "empty registry: %s", err);
    CHECK(registry_load(reg, "../x", path_a, NULL, err, sizeof err) == REGISTRY_INVALID && one_line(err),
          "bad name: %s", err);
    CHECK(registry_load(reg, "", path_a, NULL, err, sizeof err) == REGISTRY_INVALID, "empty name");
    char longname[100];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    CHECK(registry_load(reg, longname, path_a, NULL, err, sizeof err) == REGISTRY_INVALID, "long name");

    /* A failed first load of a name leaves no trace of it. */
    err[0] = 0;
    CHECK(registry_load(reg, "b", path_garbage, NULL, err, sizeof err) == REGISTRY_ERR && one_line(err),
          "garbage: %s", err);
    CHECK(registry_acquire(reg, "b", &e, err, sizeof err) == REGISTRY_NOT_FOUND, "failed new name gone");

    CHECK(registry_load(reg, "a", path_a, &e, err, sizeof err) == REGISTRY_OK && e, "%s", err);
    CHECK(e && strcmp(e->name, "a") == 0 && strcmp(e->fingerprint, fp_a) == 0 && e->warmed_up &&
          strcmp(e->device, "cpu") == 0 && strcmp(e->path, path_a) == 0 && e->loaded_at > 0 &&
          strlen(e->loaded_at_iso) == 20, "entry fields");
    model_entry_release(e);
    e = NULL;

    CHECK(registry_acquire(reg, NULL, &e, err, sizeof err) == REGISTRY_OK && e &&
          strcmp(e->fingerprint, fp_a) == 0, "default is a: %s", err);
    CHECK(registry_acquire(reg, "", &e2, err, sizeof err) == REGISTRY_OK && e2 == e, "'' is default");
    model_entry_release(e2);
    CHECK(registry_acquire(reg, "nope", &e2, err, sizeof err) == REGISTRY_NOT_FOUND && !e2 &&
          strstr(err, "nope"), "unknown: %s", err);
    CHECK(registry_unload(reg, "a", err, sizeof err) == REGISTRY_LAST && one_line(err), "last: %s", err);
    CHECK(registry_unload(reg, "zzz", err, sizeof err) == REGISTRY_NOT_FOUND, "unload unknown");

    CHECK(registry_load(reg, "b", path_b, NULL, err, sizeof err) == REGISTRY_OK, "%s", err);
    char def[REGISTRY_NAME_MAX];
    registry_default_name(reg, def, sizeof def);
    CHECK(strcmp(def, "a") == 0, "first added stays default: %s", def);

    struct model_entry **list;
    size_t n;
    int di;
    CHECK(registry_list(reg, &list, &n, &di, err, sizeof err) == REGISTRY_OK && n == 2 && di == 0 &&
          strcmp(list[0]->name, "a") == 0 && strcmp(list[1]->name, "b") == 0 &&
          strcmp(list[1]->fingerprint, fp_b) == 0, "list");
    registry_list_free(list, n);

    /* Unload a while we hold it: it keeps working, default moves to b. */
    CHECK(registry_unload(reg, "a", err, sizeof err) == REGISTRY_OK, "%s", err);
    registry_default_name(reg, def, sizeof def);
    CHECK(strcmp(def, "b") == 0, "default moved: %s", def);
    CHECK(registry_acquire(reg, "a", &e2, err, sizeof err) == REGISTRY_NOT_FOUND, "a gone");
    float cls[D];
    struct vit_workspace *ws = NULL;
    struct vit_outputs o = {.cls = cls};
    CHECK(vit_forward(e->model, &ws, inputs[0], 1, S, S, &o, err, sizeof err) == 0 &&
          memcmp(cls, ref_cls[0][0], sizeof cls) == 0, "held entry after unload");
    vit_workspace_free(ws);
    model_entry_release(e);   /* frees a (ASan checks) */

    struct registry_stats st;
    registry_get_stats(reg, &st);
    CHECK(st.loads_ok == 2 && st.loads_failed == 1 && st.unloads == 1 && st.models == 1 &&
          st.loading == 0, "stats ok %lu failed %lu unloads %lu models %d", st.loads_ok,
          st.loads_failed, st.unloads, st.models);

    /* An entry outlives the registry while held. */
    CHECK(registry_acquire(reg, NULL, &e, err, sizeof err) == REGISTRY_OK, "%s", err);
    registry_free(reg);
    ws = NULL;
    CHECK(vit_forward(e->model, &ws, inputs[1], 1, S, S, &o, err, sizeof err) == 0 &&
          memcmp(cls, ref_cls[1][1], sizeof cls) == 0, "entry outlives registry");
    vit_workspace_free(ws);
    model_entry_release(e);
}

static void test_failed_swap(void)
{
    char err[ERR_LEN];
    struct registry *reg;
    registry_create(&reg, "cpu", "fp32", err, sizeof err);
    CHECK(registry_load(reg, "m", path_a, NULL, err, sizeof err) == REGISTRY_OK, "%s", err);
    const char *bad[] = {path_trunc, path_garbage, "/nonexistent/x.safetensors"};
    for (int i = 0; i < 3; i++) {
        err[0] = 0;
        CHECK(registry_load(reg, "m", bad[i], NULL, err, sizeof err) == REGISTRY_ERR && one_line(err),
              "bad %d: %s", i, err);
        struct model_entry *e = NULL;
        CHECK(registry_acquire(reg, "m", &e, err, sizeof err) == REGISTRY_OK && e &&
              strcmp(e->fingerprint, fp_a) == 0, "old model still serves after bad %d", i);
        model_entry_release(e);
    }
    struct registry_stats st;
    registry_get_stats(reg, &st);
    CHECK(st.loads_failed == 3 && st.loads_ok == 1 && st.models == 1, "failed swaps counted");
    registry_free(reg);
}

struct load_arg {
    struct registry *reg;
    const char *name, *path;
    int rc;
    char err[ERR_LEN];
    atomic_bool finished;
};

static void *load_thread(void *p)
{
    struct load_arg *a = p;
    a->rc = registry_load(a->reg, a->name, a->path, NULL, a->err, sizeof a->err);
    atomic_store(&a->finished, true);
    return NULL;
}

static void test_busy(void)
{
    char err[ERR_LEN];
    struct registry *reg;
    registry_create(&reg, "cpu", "fp32", err, sizeof err);
    CHECK(registry_load(reg, "m", path_a, NULL, err, sizeof err) == REGISTRY_OK, "%s", err);
    int busy = 0, other_ok = 0, unload_busy = 0, tries = 0;
    for (; tries < 5 && !busy; tries++) {
        struct load_arg a = {reg, "m", path_big, -100, "", false};
        pthread_t t;
        pthread_create(&t, NULL, load_thread, &a);
        struct registry_stats st;
        const double end = clock_now_s() + 20;
        do registry_get_stats(reg, &st);
        while (st.loading == 0 && clock_now_s() < end && !atomic_load(&a.finished));
        const int rc = registry_load(reg, "m", path_b, NULL, err, sizeof err);
        if (rc == REGISTRY_BUSY) {
            busy++;
            CHECK(one_line(err) && strstr(err, "m"), "busy message: %s", err);
            /* Unloading a loading name is refused too; another name loads meanwhile. */
            unload_busy = registry_unload(reg, "m", err, sizeof err) == REGISTRY_BUSY;
            other_ok = registry_load(reg, "other", path_b, NULL, err, sizeof err) == REGISTRY_OK;
        }
        pthread_join(t, NULL);
        CHECK(a.rc == REGISTRY_OK, "big load: %s", a.err);
    }
    CHECK(busy == 1, "concurrent swap of the same name refused as busy (%d tries)", tries);
    CHECK(unload_busy, "unload during load is busy");
    CHECK(other_ok, "a different name loads while m is loading");
    struct registry_stats st;
    registry_get_stats(reg, &st);
    CHECK(st.loads_busy == 1, "busy counted: %lu", st.loads_busy);
    registry_free(reg);
}

/* ------------------------------------------------------------- batcher -- */

static void test_batching(void)
{
    char err[ERR_LEN];
    struct registry *reg;
    registry_create(&reg, "cpu", "fp32", err, sizeof err);
    CHECK(registry_load(reg, "a", path_a, NULL, err, sizeof err) == REGISTRY_OK, "%s", err);
    struct model_entry *e;
    registry_acquire(reg, "a", &e, err, sizeof err);

    /* 8 jobs submitted at once with a 50 ms delay: gathered. */
    struct batcher *b = batcher_create(8, 50, 64, err, sizeof err);
    CHECK(b != NULL, "%s", err);
    static struct tjob jobs[16];
    struct waiter w;
    waiter_init(&w);
    for (int i = 0; i < 8; i++) {
        tjob_setup(&jobs[i], e, S, S, inputs[i], true, i % 2 == 0, i % 3 == 0, &w);
        CHECK(batcher_submit(b, &jobs[i].job, err, sizeof err) == BATCH_OK, "%s", err);
    }
    CHECK(waiter_wait(&w, 8, 30) == 8, "all 8 done");
    int maxb = 0, bad = 0;
    for (int i = 0; i < 8; i++) {
        struct tjob *t = &jobs[i];
        if (t->job.batch_size > maxb) maxb = t->job.batch_size;
        bad += t->status != BATCH_OK || t->calls != 1;
        bad += !matches(t->cls, ref_cls[0][i], D, t->job.batch_size);
        if (i % 2 == 0) bad += !matches(t->patch, ref_patch[0][i], NP * D, t->job.batch_size);
        if (i % 3 == 0) bad += !matches(t->rasa, ref_rasa[0][i], NP * D, t->job.batch_size);
        bad += !(t->job.queue_seconds >= 0 && t->job.infer_seconds > 0);
    }
    struct batcher_stats bs;
    batcher_get_stats(b, &bs);
    printf("gathering: 8 jobs in %lu batches, largest %d\n", bs.batches, maxb);
    CHECK(maxb > 1 && bs.batches < 8, "batches gathered: largest %d, %lu batches", maxb, bs.batches);
    CHECK(bad == 0, "%d mismatches in batched results", bad);
    batcher_free(b);

    /* Mixed resolutions interleaved: one batch per key, all correct. */
    b = batcher_create(8, 50, 64, err, sizeof err);
    waiter_destroy(&w);
    waiter_init(&w);
    for (int i = 0; i < 8; i++) {
        if (i % 2) tjob_setup(&jobs[i], e, H2, W2, inputs2[i], true, false, false, &w);
        else tjob_setup(&jobs[i], e, S, S, inputs[i], true, false, false, &w);
        CHECK(batcher_submit(b, &jobs[i].job, err, sizeof err) == BATCH_OK, "%s", err);
    }
    CHECK(waiter_wait(&w, 8, 30) == 8, "mixed done");
    bad = 0;
    maxb = 0;
    for (int i = 0; i < 8; i++) {
        struct tjob *t = &jobs[i];
        bad += t->status != BATCH_OK || t->job.batch_size > 4;
        bad += !matches(t->cls, i % 2 ? ref_cls2[i] : ref_cls[0][i], D, t->job.batch_size);
        if (t->job.batch_size > maxb) maxb = t->job.batch_size;
    }
    batcher_get_stats(b, &bs);
    printf("mixed keys: 8 jobs (2 resolutions) in %lu batches, largest %d\n", bs.batches, maxb);
    CHECK(bad == 0 && bs.batches >= 2, "mixed keys: %d bad, %lu batches", bad, bs.batches);
    batcher_free(b);

    /* max_batch caps a batch. */
    b = batcher_create(3, 50, 64, err, sizeof err);
    waiter_destroy(&w);
    waiter_init(&w);
    for (int i = 0; i < 10; i++) {
        tjob_setup(&jobs[i], e, S, S, inputs[i % NIN], true, false, false, &w);
        batcher_submit(b, &jobs[i].job, err, sizeof err);
    }
    CHECK(waiter_wait(&w, 10, 30) == 10, "capped done");
    bad = 0;
    for (int i = 0; i < 10; i++)
        bad += jobs[i].status != BATCH_OK || jobs[i].job.batch_size > 3 ||
               !matches(jobs[i].cls, ref_cls[0][i % NIN], D, jobs[i].job.batch_size);
    batcher_get_stats(b, &bs);
    CHECK(bad == 0 && bs.batches >= 4 && bs.max_batch_seen <= 3 && bs.images == 10,
          "max batch respected: %lu batches, max %d", bs.batches, bs.max_batch_seen);
    batcher_free(b);

    /* Invalid jobs are refused at submit, without a callback. */
    b = batcher_create(4, 0, 64, err, sizeof err);
    waiter_destroy(&w);
    waiter_init(&w);
    struct tjob *t = &jobs[0];
    tjob_setup(t, e, 50, S, inputs[0], true, false, false, &w);
    CHECK(batcher_submit(b, &t->job, err, sizeof err) == BATCH_ERR && one_line(err), "bad H: %s", err);
    tjob_setup(t, e, S, S, inputs[0], false, false, false, &w);
    CHECK(batcher_submit(b, &t->job, err, sizeof err) == BATCH_ERR, "no outputs");
    tjob_setup(t, e, S, S, NULL, true, false, false, &w);
    CHECK(batcher_submit(b, &t->job, err, sizeof err) == BATCH_ERR, "no input");
    tjob_setup(t, e, S, S, inputs[5], true, true, true, &w);
    CHECK(batcher_submit(b, &t->job, err, sizeof err) == BATCH_OK, "%s", err);
    CHECK(waiter_wait(&w, 1, 30) == 1 && t->status == BATCH_OK && t->job.batch_size == 1 &&
          memcmp(t->cls, ref_cls[0][5], sizeof t->cls) == 0 &&
          memcmp(t->patch, ref_patch[0][5], sizeof t->patch) == 0 &&
          memcmp(t->rasa, ref_rasa[0][5], sizeof t->rasa) == 0,
          "a single job is bit-identical to a direct forward");
    waiter_destroy(&w);
    waiter_init(&w);
    struct model_entry *e0;
    CHECK(registry_load(reg, "norasa", path_norasa, &e0, err, sizeof err) == REGISTRY_OK, "%s", err);
    tjob_setup(t, e0, S, S, inputs[0], true, false, true, &w);
    CHECK(batcher_submit(b, &t->job, err, sizeof err) == BATCH_ERR && strstr(err, "RASA"),
          "rasa without tensors: %s", err);
    tjob_setup(t, e0, S, S, inputs[0], true, true, false, &w);
    CHECK(batcher_submit(b, &t->job, err, sizeof err) == BATCH_OK, "%s", err);
    CHECK(waiter_wait(&w, 1, 30) == 1 && t->status == BATCH_OK && t->calls == 1, "norasa job");
    model_entry_release(e0);
    batcher_free(b);
    CHECK(t->calls == 1, "exactly one callback");

    /* Queue full: refused at once; shutdown drains without waiting the delay. */
    b = batcher_create(64, 20000, 4, err, sizeof err);
    waiter_destroy(&w);
    waiter_init(&w);
    for (int i = 0; i < 4; i++) {
        tjob_setup(&jobs[i], e, S, S, inputs[i], true, false, false, &w);
        CHECK(batcher_submit(b, &jobs[i].job, err, sizeof err) == BATCH_OK, "%s", err);
    }
    CHECK(batcher_queue_depth(b) == 4, "depth %d", batcher_queue_depth(b));
    tjob_setup(&jobs[4], e, S, S, inputs[4], true, false, false, &w);
    double t0 = clock_now_s();
    const int full = batcher_submit(b, &jobs[4].job, err, sizeof err);
    const double dt = clock_now_s() - t0;
    CHECK(full == BATCH_FULL && dt < 0.05 && one_line(err), "queue full in %.3f s: %s", dt, err);
    batcher_get_stats(b, &bs);
    CHECK(bs.rejected_full == 1 && bs.queue_depth == 4, "full counted");
    t0 = clock_now_s();
    batcher_shutdown(b);
    const double drain = clock_now_s() - t0;
    int ok = 0;
    for (int i = 0; i < 4; i++)
        ok += jobs[i].status == BATCH_OK && jobs[i].calls == 1 && jobs[i].job.batch_size == 4 &&
              matches(jobs[i].cls, ref_cls[0][i], D, 4);
    CHECK(ok == 4 && waiter_count(&w) == 4 && jobs[4].calls == 0, "drained %d of 4", ok);
    CHECK(drain < 10.0, "shutdown did not wait for the batching delay: %.3f s", drain);
    CHECK(batcher_submit(b, &jobs[4].job, err, sizeof err) == BATCH_SHUTDOWN && one_line(err),
          "after shutdown: %s", err);
    batcher_shutdown(b);   /* idempotent */
    batcher_free(b);
    waiter_destroy(&w);

    model_entry_release(e);
    registry_free(reg);
}

/* ---------------------------------------------------------------- fifo -- */

struct fifo_arg {
    const char *path;
    int rc_load, rc_sha;
    char err_load[ERR_LEN], err_sha[ERR_LEN];
    atomic_bool finished;
};

static void *fifo_thread(void *p)
{
    struct fifo_arg *a = p;
    struct registry *reg;
    char err[ERR_LEN];
    if (registry_create(&reg, "cpu", "fp32", err, sizeof err) == REGISTRY_OK) {
        a->rc_load = registry_load(reg, "pipe", a->path, NULL, a->err_load, sizeof a->err_load);
        registry_free(reg);
    }
    char hex[65];
    a->rc_sha = sha256_file_hex(a->path, hex, a->err_sha, sizeof a->err_sha);
    atomic_store(&a->finished, true);
    return NULL;
}

/* A checkpoint path naming a FIFO is refused at once; opening one for reading
 * used to wait for a writer forever. Should the thread block anyway, the test
 * opens the FIFO for writing now and then to let it go. */
static void test_fifo_checkpoint(void)
{
    CHECK(mkfifo(path_fifo, 0600) == 0, "mkfifo %s", path_fifo);
    struct fifo_arg a = {.path = path_fifo, .rc_load = -100, .rc_sha = -100};
    atomic_init(&a.finished, false);
    pthread_t t;
    pthread_create(&t, NULL, fifo_thread, &a);
    const double t0 = clock_now_s();
    while (!atomic_load(&a.finished) && clock_now_s() - t0 < 5.0) sleep_ms(10);
    const double waited = clock_now_s() - t0;
    while (!atomic_load(&a.finished)) {
        const int fd = open(path_fifo, O_WRONLY | O_NONBLOCK);
        if (fd >= 0) close(fd);
        sleep_ms(10);
    }
    pthread_join(t, NULL);
    CHECK(waited < 5.0, "a FIFO checkpoint blocked the loader for %.1f s", waited);
    CHECK(a.rc_load == REGISTRY_ERR && strstr(a.err_load, "not a regular file") &&
          one_line(a.err_load), "FIFO load: %s", a.err_load);
    CHECK(a.rc_sha != 0 && strstr(a.err_sha, "not a regular file"), "FIFO sha256: %s", a.err_sha);
    unlink(path_fifo);
}

/* ------------------------------------------------------------ admission -- */

static uint64_t in_flight(struct batcher *b)
{
    struct batcher_stats bs;
    batcher_get_stats(b, &bs);
    return bs.tokens_in_flight;
}

static void test_token_budget(void)
{
    char err[ERR_LEN];
    struct batcher *b = batcher_create(4, 0, 64, err, sizeof err);
    struct batcher_stats bs;
    batcher_get_stats(b, &bs);
    CHECK(bs.token_budget == 0 && batcher_admit(b, 1ull << 40, err, sizeof err) == BATCH_OK,
          "no budget set: unlimited");
    batcher_release(b, 1ull << 40);
    batcher_free(b);

    b = batcher_create(4, 0, 64, err, sizeof err);
    batcher_set_token_budget(b, 100);
    CHECK(batcher_admit(b, 60, err, sizeof err) == BATCH_OK, "%s", err);
    err[0] = '\0';
    CHECK(batcher_admit(b, 50, err, sizeof err) == BATCH_FULL && one_line(err) &&
          strstr(err, "60 of 100"), "beyond what is left: %s", err);
    err[0] = '\0';
    CHECK(batcher_admit(b, 101, err, sizeof err) == BATCH_TOO_LARGE && one_line(err) &&
          strstr(err, "--max-inflight-tokens"), "beyond the whole budget: %s", err);
    CHECK(batcher_admit(b, 40, err, sizeof err) == BATCH_OK, "up to the budget: %s", err);
    batcher_get_stats(b, &bs);
    CHECK(bs.tokens_in_flight == 100 && bs.tokens_peak == 100 && bs.token_budget == 100 &&
          bs.rejected_tokens == 1 && bs.rejected_too_large == 1,
          "in flight %llu, peak %llu, refused %lu + %lu", (unsigned long long)bs.tokens_in_flight,
          (unsigned long long)bs.tokens_peak, bs.rejected_tokens, bs.rejected_too_large);
    batcher_release(b, 40);
    CHECK(in_flight(b) == 60, "release gives back: %llu", (unsigned long long)in_flight(b));
    batcher_release(b, 60);
    batcher_release(b, 5);  /* more than held: stays at zero, never wraps */
    CHECK(in_flight(b) == 0, "never below zero: %llu", (unsigned long long)in_flight(b));
    CHECK(batcher_admit(b, 100, err, sizeof err) == BATCH_OK, "whole budget again: %s", err);
    batcher_release(b, 100);
    batcher_shutdown(b);
    CHECK(batcher_admit(b, 1, err, sizeof err) == BATCH_SHUTDOWN, "no admission after shutdown");
    batcher_free(b);
}

/* A request as the routes run it: the callback records, then frees it. */
struct ireq {
    struct waiter w;
    int status, calls;
    char err[ERR_LEN];
    float cls[NIN][D];
    int n;
    pthread_t thread;   /* where the callback ran */
};

static void ireq_done(struct infer_request *r, int status, const char *err, void *user)
{
    struct ireq *q = user;
    pthread_mutex_lock(&q->w.lock);
    memcpy(q->cls, r->cls, sizeof(float) * D * (size_t)r->n);
    q->status = status;
    q->calls++;
    q->thread = pthread_self();
    snprintf(q->err, sizeof q->err, "%s", err ? err : "");  /* err lives in r */
    infer_free(r);
    q->w.finished++;
    pthread_cond_broadcast(&q->w.cond);
    pthread_mutex_unlock(&q->w.lock);
}

/* New request of n images (inputs[0..n-1]) on e, with its own reference. */
static int ireq_new(struct infer_request **r, struct batcher *b, struct model_entry *e, int n,
                    char *err, size_t errlen)
{
    model_entry_retain(e);
    const int rc = infer_new(r, b, e, n, S, S, false, false, err, errlen);
    for (int i = 0; rc == BATCH_OK && i < n; i++)
        memcpy((*r)->input + (size_t)i * IMG, inputs[i], sizeof(float) * IMG);
    return rc;
}

/* The entry's reference count once the worker, which drops its references
 * after the callbacks, has settled at want (or after 5 s). */
static long refs_settled(struct model_entry *e, long want)
{
    const double t0 = clock_now_s();
    while (atomic_load(&e->refs) != want && clock_now_s() - t0 < 5.0) sleep_ms(1);
    return atomic_load(&e->refs);
}

static bool flag_set(void *arg)
{
    return atomic_load((atomic_bool *)arg);
}

/* Tokens are held from infer_new to infer_free on every path: refused at
 * admission (nothing held), freed before submitting (a decode error), refused
 * at submit, run to completion, cancelled. */
static void test_infer_admission(struct model_entry *e)
{
    char err[ERR_LEN];
    const uint64_t per = infer_tokens(e, 1, S, S);
    CHECK(per == NP + 1, "tokens per image %llu (want %d)", (unsigned long long)per, NP + 1);
    struct batcher *b = batcher_create(8, 200, 4, err, sizeof err);
    batcher_set_token_budget(b, 4 * per);
    const long refs0 = atomic_load(&e->refs);

    struct infer_request *r1 = NULL, *r2 = NULL;
    CHECK(ireq_new(&r1, b, e, 3, err, sizeof err) == BATCH_OK && r1, "%s", err);
    CHECK(in_flight(b) == 3 * per, "admitted 3 images: %llu", (unsigned long long)in_flight(b));
    CHECK(ireq_new(&r2, b, e, 2, err, sizeof err) == BATCH_FULL && !r2, "budget in use: %s", err);
    CHECK(ireq_new(&r2, b, e, 5, err, sizeof err) == BATCH_TOO_LARGE && !r2, "over budget: %s", err);
    CHECK(atomic_load(&e->refs) == refs0 + 1 && in_flight(b) == 3 * per,
          "refused requests hold nothing (refs %ld, want %ld)", atomic_load(&e->refs), refs0 + 1);
    infer_free(r1);  /* e.g. an image failed to decode */
    CHECK(in_flight(b) == 0 && atomic_load(&e->refs) == refs0, "released by a request never run");

    /* Refused at submit (4 images fill the queue; then 1 more does not fit). */
    struct ireq q = {0};
    waiter_init(&q.w);
    CHECK(ireq_new(&r1, b, e, 4, err, sizeof err) == BATCH_OK, "%s", err);
    CHECK(ireq_new(&r2, b, e, 1, err, sizeof err) == BATCH_FULL, "over budget with 4 in flight");
    batcher_set_token_budget(b, 5 * per);
    CHECK(ireq_new(&r2, b, e, 1, err, sizeof err) == BATCH_OK, "%s", err);
    CHECK(infer_submit(r1, ireq_done, &q, err, sizeof err) == BATCH_OK, "%s", err);
    CHECK(infer_submit(r2, ireq_done, &q, err, sizeof err) == BATCH_FULL && q.calls == 0,
          "queue full: %s", err);
    infer_free(r2);
    CHECK(waiter_wait(&q.w, 1, 30) == 1 && q.status == BATCH_OK, "ran: %s", q.err);
    int bad = 0;
    for (int i = 0; i < 4; i++) bad += !matches(q.cls[i], ref_cls[0][i], D, 4);
    CHECK(bad == 0, "%d wrong results", bad);
    CHECK(in_flight(b) == 0 && refs_settled(e, refs0) == refs0,
          "released after a run and a refused submit: %llu", (unsigned long long)in_flight(b));

    /* Cancelled after submit, while the batch gathers: dropped, released. */
    atomic_bool gone;
    atomic_init(&gone, false);
    waiter_destroy(&q.w);
    q = (struct ireq){0};
    waiter_init(&q.w);
    CHECK(ireq_new(&r1, b, e, 2, err, sizeof err) == BATCH_OK, "%s", err);
    infer_set_cancel(r1, flag_set, &gone);
    struct batcher_stats bs0, bs;
    batcher_get_stats(b, &bs0);
    CHECK(infer_submit(r1, ireq_done, &q, err, sizeof err) == BATCH_OK, "%s", err);
    atomic_store(&gone, true);
    CHECK(waiter_wait(&q.w, 1, 30) == 1 && q.calls == 1 && q.status == BATCH_CANCELLED &&
          one_line(q.err), "cancelled: %d %s", q.status, q.err);
    batcher_get_stats(b, &bs);
    CHECK(bs.dropped == bs0.dropped + 2 && bs.batches == bs0.batches,
          "2 images dropped without a forward: dropped %lu, batches %lu -> %lu", bs.dropped,
          bs0.batches, bs.batches);
    CHECK(in_flight(b) == 0 && refs_settled(e, refs0) == refs0, "released after a cancel");
    waiter_destroy(&q.w);
    batcher_free(b);
}

/* Queues three single-image jobs of inputs[0..2] on b (CLS, and patch tokens
 * when patch); each calls back through w. */
static void queue_three(struct batcher *b, struct model_entry *e, struct tjob *j, bool patch,
                        struct waiter *w)
{
    char err[ERR_LEN];
    for (int i = 0; i < 3; i++) {
        tjob_setup(&j[i], e, S, S, inputs[i], true, patch, false, w);
        CHECK(batcher_submit(b, &j[i].job, err, sizeof err) == BATCH_OK, "%s", err);
    }
}

/* A request that does not fit beside the queued images is refused whole and at
 * once: before, its first images were queued and it answered 429 only after
 * they had run. */
static void test_all_or_nothing(struct model_entry *e)
{
    char err[ERR_LEN];
    struct batcher *b = batcher_create(64, 20000, 4, err, sizeof err);
    static struct tjob q[3];
    struct waiter w;
    waiter_init(&w);
    queue_three(b, e, q, false, &w);
    struct ireq r = {0};
    waiter_init(&r.w);
    struct infer_request *req;
    CHECK(ireq_new(&req, b, e, 2, err, sizeof err) == BATCH_OK, "%s", err);
    err[0] = '\0';
    const double t0 = clock_now_s();
    const int rc = infer_submit(req, ireq_done, &r, err, sizeof err);
    const double dt = clock_now_s() - t0;
    CHECK(rc == BATCH_FULL && dt < 0.05 && one_line(err), "2 images beside 3 of 4: %d in %.3f s: %s",
          rc, dt, err);
    CHECK(batcher_queue_depth(b) == 3, "nothing of it queued: depth %d", batcher_queue_depth(b));
    if (rc == BATCH_FULL) infer_free(req);

    CHECK(ireq_new(&req, b, e, 5, err, sizeof err) == BATCH_OK, "%s", err);
    CHECK(infer_submit(req, ireq_done, &r, err, sizeof err) == BATCH_TOO_LARGE && one_line(err),
          "5 images, queue of 4: %s", err);
    infer_free(req);

    /* One invalid job refuses the whole submit. */
    float cls[2][D];
    struct batch_job two[2];
    memset(two, 0, sizeof two);
    for (int i = 0; i < 2; i++) {
        two[i] = q[0].job;
        two[i].cls = cls[i];
    }
    two[1].H = 50;
    CHECK(batcher_submit_many(b, two, 2, err, sizeof err) == BATCH_ERR &&
          batcher_queue_depth(b) == 3, "invalid job: nothing queued: %s", err);

    struct batcher_stats bs;
    batcher_get_stats(b, &bs);
    CHECK(bs.rejected_full == 1 && bs.rejected_too_large == 1, "refusals counted: %lu %lu",
          bs.rejected_full, bs.rejected_too_large);
    batcher_shutdown(b);
    int ok = 0;
    for (int i = 0; i < 3; i++) ok += q[i].status == BATCH_OK && q[i].calls == 1;
    CHECK(ok == 3 && r.calls == 0, "queued jobs ran (%d of 3); refused request never called back "
          "(%d)", ok, r.calls);
    batcher_free(b);
    waiter_destroy(&w);
    waiter_destroy(&r.w);
}

/* Jobs cancelled while queued are dropped before the forward; the rest of
 * their batch runs as usual. */
static void test_cancel(struct model_entry *e)
{
    char err[ERR_LEN];
    struct batcher *b = batcher_create(8, 300, 64, err, sizeof err);
    static struct tjob c[3];
    struct waiter w;
    waiter_init(&w);
    queue_three(b, e, c, true, &w);
    atomic_store(&c[1].cancel, true);  /* while the batch waits the 300 ms for more */
    CHECK(waiter_wait(&w, 3, 30) == 3, "all called back");
    CHECK(c[1].status == BATCH_CANCELLED && c[1].calls == 1 && one_line(c[1].err),
          "cancelled job: %d %s", c[1].status, c[1].err);
    int ok = 0;
    for (int i = 0; i < 3; i += 2)
        ok += c[i].status == BATCH_OK && c[i].calls == 1 && c[i].job.batch_size == 2 &&
              matches(c[i].cls, ref_cls[0][i], D, 2) && matches(c[i].patch, ref_patch[0][i], NP * D, 2);
    CHECK(ok == 2, "the others ran together, correctly (%d of 2)", ok);
    struct batcher_stats bs;
    batcher_get_stats(b, &bs);
    CHECK(bs.dropped == 1 && bs.images == 2 && bs.batches == 1, "dropped %lu, images %lu, batches %lu",
          bs.dropped, bs.images, bs.batches);
    batcher_free(b);
    waiter_destroy(&w);
}

/* The observer runs on the batcher's worker: it notes which thread that is. */
static void note_worker(struct batch_job *const *jobs, int B, double infer_seconds, void *user)
{
    (void)jobs, (void)B, (void)infer_seconds;
    *(pthread_t *)user = pthread_self();
}

/* A reply-pool task that holds its thread until the gate opens. */
struct gate {
    struct waiter w;    /* finished: tasks that entered */
    bool open;
};

static void gate_task(void *arg)
{
    struct gate *g = arg;
    pthread_mutex_lock(&g->w.lock);
    g->w.finished++;
    pthread_cond_broadcast(&g->w.cond);
    while (!g->open) pthread_cond_wait(&g->w.cond, &g->w.lock);
    pthread_mutex_unlock(&g->w.lock);
}

/* A request's callback (where routes build their answers) runs on the reply
 * pool, not on the batcher's worker; with the pool's queue full it runs on the
 * worker rather than being lost. */
static void test_reply_pool(struct model_entry *e)
{
    char err[ERR_LEN];
    struct batcher *b = batcher_create(8, 0, 16, err, sizeof err);
    struct workq *replies = workq_create(1, 1, err, sizeof err);
    CHECK(b && replies, "%s", err);
    pthread_t worker = pthread_self();
    batcher_set_observer(b, note_worker, &worker);
    batcher_set_replies(b, replies);

    struct ireq q = {0};
    waiter_init(&q.w);
    struct infer_request *r;
    CHECK(ireq_new(&r, b, e, 2, err, sizeof err) == BATCH_OK, "%s", err);
    CHECK(infer_submit(r, ireq_done, &q, err, sizeof err) == BATCH_OK, "%s", err);
    CHECK(waiter_wait(&q.w, 1, 30) == 1 && q.status == BATCH_OK, "ran: %s", q.err);
    CHECK(!pthread_equal(worker, pthread_self()), "the observer saw the worker");
    CHECK(!pthread_equal(q.thread, worker) && !pthread_equal(q.thread, pthread_self()),
          "the callback ran on the reply pool");
    CHECK(matches(q.cls[0], ref_cls[0][0], D, 2) && matches(q.cls[1], ref_cls[0][1], D, 2),
          "results through the pool");

    /* Its one thread held, its one slot taken: the queue is full. */
    struct gate g = {0};
    waiter_init(&g.w);
    CHECK(workq_submit(replies, gate_task, &g) == 0 && waiter_wait(&g.w, 1, 30) == 1,
          "the reply thread is held");
    CHECK(workq_submit(replies, gate_task, &g) == 0 && workq_submit(replies, gate_task, &g) == -1,
          "the reply queue is full");
    CHECK(ireq_new(&r, b, e, 1, err, sizeof err) == BATCH_OK, "%s", err);
    CHECK(infer_submit(r, ireq_done, &q, err, sizeof err) == BATCH_OK, "%s", err);
    CHECK(waiter_wait(&q.w, 2, 30) == 2 && q.status == BATCH_OK && q.calls == 2,
          "answered with the queue full: %s", q.err);
    CHECK(pthread_equal(q.thread, worker), "on the worker, since the pool could take nothing");
    pthread_mutex_lock(&g.w.lock);
    g.open = true;
    pthread_cond_broadcast(&g.w.cond);
    pthread_mutex_unlock(&g.w.lock);
    batcher_free(b);
    workq_free(replies);  /* after the batcher, as the server does */
    CHECK(g.w.finished == 2, "the held tasks ran too");
    waiter_destroy(&g.w);
    waiter_destroy(&q.w);
}

static void test_admission(void)
{
    char err[ERR_LEN];
    struct registry *reg;
    registry_create(&reg, "cpu", "fp32", err, sizeof err);
    CHECK(registry_load(reg, "a", path_a, NULL, err, sizeof err) == REGISTRY_OK, "%s", err);
    struct model_entry *e;
    registry_acquire(reg, "a", &e, err, sizeof err);
    test_token_budget();
    test_infer_admission(e);
    test_all_or_nothing(e);
    test_cancel(e);
    test_reply_pool(e);
    model_entry_release(e);
    registry_free(reg);
}

/* ------------------------------------------------- hot swap under load -- */

struct client {
    struct registry *reg;
    struct batcher *b;
    atomic_bool *stop;
    int id;
    long requests, failures, mismatches, unknown_fp, seen_a, seen_b, batched;
    long hist[9];
    int max_batch;
    char first_err[ERR_LEN];
};

static void *client_main(void *p)
{
    struct client *c = p;
    struct waiter w;
    waiter_init(&w);
    struct tjob *t = malloc(sizeof(*t));
    char err[ERR_LEN];
    for (long k = 0; !atomic_load(c->stop); k++) {
        const int i = (int)((k + c->id) % NIN);
        struct model_entry *e;
        c->requests++;
        if (registry_acquire(c->reg, (k & 1) ? "m" : NULL, &e, err, sizeof err)) {
            if (!c->failures++) snprintf(c->first_err, sizeof c->first_err, "%s", err);
            continue;
        }
        const int which = strcmp(e->fingerprint, fp_a) == 0 ? 0
                          : strcmp(e->fingerprint, fp_b) == 0 ? 1 : -1;
        tjob_setup(t, e, S, S, inputs[i], true, false, false, &w);
        const int before = waiter_count(&w);
        if (batcher_submit(c->b, &t->job, err, sizeof err)) {
            if (!c->failures++) snprintf(c->first_err, sizeof c->first_err, "%s", err);
            model_entry_release(e);
            continue;
        }
        waiter_wait(&w, before + 1, 60);
        if (t->status != BATCH_OK) {
            if (!c->failures++) snprintf(c->first_err, sizeof c->first_err, "%s", t->err);
        } else if (which < 0) {
            c->unknown_fp++;
        } else {
            c->mismatches += !matches(t->cls, ref_cls[which][i], D, t->job.batch_size);
            c->seen_a += which == 0;
            c->seen_b += which == 1;
            c->batched += t->job.batch_size > 1;
            c->hist[t->job.batch_size < 8 ? t->job.batch_size : 8]++;
            if (t->job.batch_size > c->max_batch) c->max_batch = t->job.batch_size;
        }
        model_entry_release(e);
    }
    free(t);
    waiter_destroy(&w);
    return NULL;
}

static void test_hot_swap_under_load(void)
{
    char err[ERR_LEN];
    struct registry *reg;
    registry_create(&reg, "cpu", "fp32", err, sizeof err);
    CHECK(registry_load(reg, "m", path_a, NULL, err, sizeof err) == REGISTRY_OK, "%s", err);
    struct batcher *b = batcher_create(8, 2, 256, err, sizeof err);
    atomic_bool stop = false;
    enum { NC = 4 };
    struct client cl[NC];
    pthread_t th[NC];
    for (int i = 0; i < NC; i++) {
        memset(&cl[i], 0, sizeof cl[i]);
        cl[i].reg = reg;
        cl[i].b = b;
        cl[i].stop = &stop;
        cl[i].id = i;
        pthread_create(&th[i], NULL, client_main, &cl[i]);
    }
    int swaps = 0, swap_fail = 0, bad_ok = 0;
    const double t0 = clock_now_s();
    while (clock_now_s() - t0 < 2.5) {
        sleep_ms(15);
        const char *p = swaps % 2 ? path_a : path_b;
        if (registry_load(reg, "m", p, NULL, err, sizeof err) == REGISTRY_OK) swaps++;
        else swap_fail++;
        if (swaps % 7 == 3) /* a failing swap now and then leaves the model serving */
            bad_ok += registry_load(reg, "m", path_trunc, NULL, err, sizeof err) == REGISTRY_ERR;
    }
    atomic_store(&stop, true);
    long req = 0, fail = 0, mism = 0, unk = 0, sa = 0, sb = 0, batched = 0;
    int maxb = 0;
    long hist[9] = {0};
    for (int i = 0; i < NC; i++) {
        pthread_join(th[i], NULL);
        for (int k = 0; k < 9; k++) hist[k] += cl[i].hist[k];
        req += cl[i].requests;
        fail += cl[i].failures;
        mism += cl[i].mismatches;
        unk += cl[i].unknown_fp;
        sa += cl[i].seen_a;
        sb += cl[i].seen_b;
        batched += cl[i].batched;
        if (cl[i].max_batch > maxb) maxb = cl[i].max_batch;
        if (cl[i].failures) fprintf(stderr, "client %d: %s\n", i, cl[i].first_err);
    }
    batcher_free(b);
    printf("hot swap: %.1f s, %d swaps (+%d failing swaps), %ld requests (%ld on a, %ld on b), "
           "%ld batched, largest batch %d\n", clock_now_s() - t0, swaps, bad_ok, req, sa, sb, batched,
           maxb);
    printf("hot swap: jobs by batch size 1..4: %ld %ld %ld %ld\n", hist[1], hist[2], hist[3], hist[4]);
    CHECK(swaps >= 6 && swap_fail == 0, "swaps %d, failed %d", swaps, swap_fail);
    CHECK(bad_ok > 0, "failing swaps refused");
    CHECK(fail == 0 && mism == 0 && unk == 0, "failures %ld, mismatches %ld, unknown %ld", fail,
          mism, unk);
    CHECK(req > 100 && sa > 0 && sb > 0, "requests %ld on both models (%ld/%ld)", req, sa, sb);
    struct registry_stats st;
    registry_get_stats(reg, &st);
    CHECK(st.models == 1 && st.loads_ok == (unsigned long)swaps + 1, "stats after swaps");
    registry_free(reg);
}

struct ljob {
    struct tjob t;                 /* first: the callback casts back */
    float lcls[2 * D], lpatch[2 * NP * D];
};

/* Jobs with other layer lists or norms are not batched together; each gets
 * the rows a forward of its image alone gives. */
static void test_batching_layers(void)
{
    char err[ERR_LEN];
    struct registry *reg;
    registry_create(&reg, "cpu", "fp32", err, sizeof err);
    CHECK(registry_load(reg, "a", path_a, NULL, err, sizeof err) == REGISTRY_OK, "%s", err);
    struct model_entry *e;
    registry_acquire(reg, "a", &e, err, sizeof err);
    struct batcher *b = batcher_create(8, 50, 64, err, sizeof err);
    static const int lists[3][2] = {{1, 0}, {0, 1}, {0, 1}};
    static struct ljob jobs[NIN];
    struct waiter w;
    waiter_init(&w);
    for (int i = 0; i < NIN; i++) {
        struct ljob *j = &jobs[i];
        const int kind = i % 4; /* 0: [1, 0]; 1: [0, 1]; 2: [0, 1] without norm; 3: none */
        tjob_setup(&j->t, e, S, S, inputs[i], true, false, false, &w);
        if (kind < 3) {
            j->t.job.n_layers = 2;
            j->t.job.layers = lists[kind];
            j->t.job.layer_norm = kind != 2;
            j->t.job.layer_cls = j->lcls;
            j->t.job.layer_patch = i < 4 ? j->lpatch : NULL; /* a batch asks for the union */
        }
        CHECK(batcher_submit(b, &j->t.job, err, sizeof err) == BATCH_OK, "%s", err);
    }
    CHECK(waiter_wait(&w, NIN, 30) == NIN, "all layer jobs done");
    int bad = 0, maxb = 0;
    struct vit_workspace *ws = NULL;
    for (int i = 0; i < NIN; i++) {
        const struct batch_job *j = &jobs[i].t.job;
        float lcls[2 * D], lpatch[2 * NP * D];
        const struct vit_outputs ref = {.n_layers = j->n_layers, .layers = j->layers,
                                        .layer_norm = j->layer_norm, .layer_cls = lcls,
                                        .layer_patch = lpatch};
        if (j->batch_size > maxb) maxb = j->batch_size;
        bad += jobs[i].t.status != BATCH_OK || j->batch_size > 2;
        if (!j->n_layers) continue;
        bad += vit_forward(e->model, &ws, inputs[i], 1, S, S, &ref, err, sizeof err) != 0;
        bad += !matches(jobs[i].lcls, lcls, 2 * D, j->batch_size);
        if (j->layer_patch) bad += !matches(jobs[i].lpatch, lpatch, 2 * NP * D, j->batch_size);
    }
    vit_workspace_free(ws);
    CHECK(bad == 0 && maxb == 2, "layer jobs: one batch per list and norm, rows match (%d bad, "
          "largest batch %d)", bad, maxb);
    jobs[0].t.job.layers = (const int[]){2, 0};
    CHECK(batcher_submit(b, &jobs[0].t.job, err, sizeof err) == BATCH_ERR &&
              strstr(err, "depth 2"), "a block past the depth is refused at submit: %s", err);
    batcher_free(b);
    waiter_destroy(&w);
    model_entry_release(e);
    registry_free(reg);
}

int main(void)
{
    const char *t = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/franca-reg-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 2;
    }
    if (make_fixtures()) {
        fprintf(stderr, "fixtures failed\n");
        return 2;
    }
    CHECK(strcmp(fp_a, fp_b) != 0, "two seeds, two fingerprints");
    test_registry_basic();
    test_failed_swap();
    test_busy();
    test_fifo_checkpoint();
    test_batching();
    test_batching_layers();
    test_admission();
    test_hot_swap_under_load();
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", tmpdir);
    printf("test_registry_batcher: ");
    return check_summary();
}
