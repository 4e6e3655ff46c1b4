/* franca-train: pretrain or fine-tune a Franca model, export the served
 * checkpoint, and evaluate one with k-NN.
 *
 *   franca-train --config FILE.json --out DIR [--key value]...
 *   franca-train --resume DIR [--key value]...
 *   franca-train --init-from RUN_DIR|MODEL --out DIR [--config F] [--key value]...
 *   franca-train export DIR --out MODEL.safetensors [--dtype f32|bf16|f16]
 *   franca-train knn --model MODEL.safetensors --train-idx IMAGES LABELS
 *                    --test-idx IMAGES LABELS [--width W]... [--max-train N] [--max-test N]
 *
 * Exit status: 0 success, 1 runtime failure (I/O, data, numerics), 2 bad
 * command line or configuration (precision bf16 on a CPU without AVX-512
 * included).
 *
 * Data parallel: `mpirun -n R franca-train --config F --out DIR` (or --resume)
 * trains one global batch split in R shards (docs/training.md); rank 0 writes
 * the run directory. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <jansson.h>

#include "chart.h"
#include "checkpoint.h"
#include "comm.h"
#include "config.h"
#include "dataset.h"
#include "errors.h"
#include "finetune.h"
#include "grad_sync.h"
#include "knn.h"
#include "loader.h"
#include "mask.h"
#include "objective.h"
#include "optim.h"
#include "rasa_train.h"
#include "schedule.h"
#include "state.h"
#include "vit.h"
#include "clock.h"

#define EXIT_USAGE 2
/* rng stream of the objective's random choices (drop path) for micro-batch s */
#define OBJECTIVE_STREAM (UINT64_C(3) << 61)
/* Gradients are all-reduced in buckets of this many floats (4 MiB): few enough
 * calls for the many small tensors, and bounded staging memory.
 * FRANCA_TRAIN_BUCKET_FLOATS overrides it (tests: many buckets on a tiny model). */
#define GRAD_BUCKET_FLOATS ((size_t)1 << 20)

static void usage(FILE *f)
{
    fprintf(f,
            "usage: franca-train --config FILE.json --out DIR [--key value]...\n"
            "       franca-train --resume DIR [--key value]...\n"
            "       franca-train --init-from RUN_DIR|MODEL --out DIR [--config FILE.json] [--key value]...\n"
            "       franca-train export DIR --out MODEL.safetensors [--dtype f32|bf16|f16]\n"
            "       franca-train knn --model MODEL.safetensors --train-idx IMAGES LABELS\n"
            "                        --test-idx IMAGES LABELS [--width W]... [--max-train N] [--max-test N]\n"
            "       franca-train rasa --model MODEL.safetensors --train-idx IMAGES --out OUT.safetensors ... (rasa --help)\n"
            "       franca-train --help\n\n");
}

static char *join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* ------------------------------------------------------------------ knn -- */

static int cmd_knn(int argc, char **argv)
{
    const char *model = NULL, *tri = NULL, *trl = NULL, *tei = NULL, *tel = NULL;
    int widths[MAX_WIDTHS], nw = 0, max_train = 0, max_test = 0;
    char err[ERR_LEN];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(a, "--train-idx") && i + 2 < argc) {
            tri = argv[++i];
            trl = argv[++i];
        } else if (!strcmp(a, "--test-idx") && i + 2 < argc) {
            tei = argv[++i];
            tel = argv[++i];
        } else if ((!strcmp(a, "--width") || !strcmp(a, "--max-train") || !strcmp(a, "--max-test")) &&
                   i + 1 < argc) {
            char *end;
            errno = 0;
            long v = strtol(argv[++i], &end, 10);
            if (*end || end == argv[i] || errno || v < 0 || v > (1L << 30)) {
                fprintf(stderr, "franca-train knn: %s wants a non-negative integer, got '%s'\n", a, argv[i]);
                return EXIT_USAGE;
            }
            if (!strcmp(a, "--width")) {
                if (nw == MAX_WIDTHS) {
                    fprintf(stderr, "franca-train knn: at most %d --width flags\n", MAX_WIDTHS);
                    return EXIT_USAGE;
                }
                widths[nw++] = (int)v;
            } else if (!strcmp(a, "--max-train")) max_train = (int)v;
            else max_test = (int)v;
        } else {
            fprintf(stderr, "franca-train knn: unknown or incomplete argument '%s'\n", a);
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (!model || !tri || !tei) {
        fprintf(stderr, "franca-train knn: --model, --train-idx IMAGES LABELS and --test-idx IMAGES LABELS are required\n");
        return EXIT_USAGE;
    }
    struct vit_model *m;
    if (vit_model_load(model, &m, err, sizeof err) < 0) {
        fprintf(stderr, "franca-train knn: %s\n", err);
        return 1;
    }
    const struct model_config *cfg = vit_model_config(m);
    if (nw == 0) {
        nw = cfg->n_widths;
        memcpy(widths, cfg->widths, sizeof(int) * (size_t)nw);
    }
    for (int i = 0; i < nw; i++)
        if (widths[i] < 1 || widths[i] > cfg->embed_dim) {
            fprintf(stderr, "franca-train knn: --width %d is not in 1..%d (the model's width)\n",
                    widths[i], cfg->embed_dim);
            vit_model_free(m);
            return EXIT_USAGE;
        }
    struct knn_data d;
    if (knn_data_load(&d, tri, trl, tei, tel, max_train, max_test, err, sizeof err) < 0) {
        fprintf(stderr, "franca-train knn: %s\n", err);
        vit_model_free(m);
        return 1;
    }
    double acc[MAX_WIDTHS];
    int rc = knn_eval(m, &d, widths, nw, acc, err, sizeof err);
    if (rc < 0) fprintf(stderr, "franca-train knn: %s\n", err);
    else
        for (int i = 0; i < nw; i++) printf("knn width=%d top1=%.4f\n", widths[i], acc[i]);
    knn_data_free(&d);
    vit_model_free(m);
    return rc < 0 ? 1 : 0;
}

/* --------------------------------------------------------------- export -- */

/* Builds the objective of cfg and restores DIR's state into it. */
static int restore_run(const char *dir, struct train_config *cfg, int64_t *step,
                       struct objective_config *oc, struct objective **obj,
                       struct optimizer **opt, char *err, size_t errlen)
{
    *obj = NULL;
    *opt = NULL;
    if (state_read_header(dir, cfg, step, err, errlen) < 0) return -1;
    if (train_config_objective(cfg, oc, err, errlen) < 0) return -1;
    if (objective_create(oc, (uint64_t)cfg->seed, obj, err, errlen) < 0) return -1;
    if (optimizer_create(objective_params(*obj), opt) < 0) {
        objective_free(*obj);
        *obj = NULL;
        return set_err(err, errlen, "out of memory for the optimizer state");
    }
    if (state_load(dir, objective_params(*obj), *opt, err, errlen) < 0) {
        optimizer_free(*opt);
        objective_free(*obj);
        *obj = NULL;
        *opt = NULL;
        return -1;
    }
    return 0;
}

static char *recipe_json(const struct train_config *cfg, int64_t step)
{
    char *cj = train_config_to_json(cfg);
    if (!cj) return NULL;
    json_t *jc = json_loads(cj, 0, NULL);
    free(cj);
    if (!jc) return NULL;
    json_t *recipe = json_pack("{s:s, s:I, s:s, s:o}", "trainer", "franca-train", "step",
                               (json_int_t)step, "data",
                               cfg->train_idx[0] ? cfg->train_idx : cfg->train_folder, "config", jc);
    json_t *root = recipe ? json_pack("{s:o}", "recipe", recipe) : NULL;
    char *out = root ? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(root);
    return out;
}

static int cmd_export(int argc, char **argv)
{
    const char *dir = NULL, *out = NULL;
    enum st_dtype dtype = ST_F32;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
        else if (!strcmp(argv[i], "--dtype") && i + 1 < argc) {
            const char *d = argv[++i];
            if (st_dtype_parse(d, &dtype)) {
                fprintf(stderr, "franca-train export: --dtype must be f32, bf16 or f16, got '%s'\n", d);
                return EXIT_USAGE;
            }
        } else if (argv[i][0] != '-' && !dir) dir = argv[i];
        else {
            fprintf(stderr, "franca-train export: unknown or incomplete argument '%s'\n", argv[i]);
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (!dir || !out) {
        fprintf(stderr, "franca-train export: usage: franca-train export DIR --out MODEL.safetensors [--dtype f32|bf16|f16]\n");
        return EXIT_USAGE;
    }
    char err[ERR_LEN];
    struct train_config cfg;
    struct objective_config oc;
    struct objective *obj;
    struct optimizer *opt;
    int64_t step = 0;
    if (restore_run(dir, &cfg, &step, &oc, &obj, &opt, err, sizeof err) < 0) {
        fprintf(stderr, "franca-train export: %s\n", err);
        return 1;
    }
    snprintf(oc.backbone.version, sizeof oc.backbone.version, "step-%lld", (long long)step);
    char *extra = recipe_json(&cfg, step);
    int rc = extra ? checkpoint_save(out, &oc.backbone, objective_teacher_backbone(obj), dtype,
                                     extra, err, sizeof err)
                   : set_err(err, sizeof err, "out of memory");
    free(extra);
    if (rc < 0) fprintf(stderr, "franca-train export: %s\n", err);
    else fprintf(stderr, "franca-train: exported the teacher backbone of %s (step %lld) to %s\n",
                 dir, (long long)step, out);
    optimizer_free(opt);
    objective_free(obj);
    return rc < 0 ? 1 : 0;
}

/* ---------------------------------------------------------------- train -- */

struct run {
    struct train_config cfg;
    struct objective_config oc;
    struct objective *obj;
    struct optimizer *opt;
    struct dataset ds;
    struct knn_data knn;
    int have_knn;
    struct loader *loader;
    char *dir, *log_path, *chart_path;
    FILE *log;
    struct comm *comm;
    struct grad_sync sync;  /* gradient all-reduce under the backward pass (data parallel) */
};

static int mkdir_p1(const char *dir, char *err, size_t errlen)
{
    struct stat st;
    if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) return set_err(err, errlen, "%s exists and is not a directory", dir);
        return 0;
    }
    if (mkdir(dir, 0755) < 0)
        return set_err(err, errlen, "%s: cannot create: %s", dir, strerror(errno));
    return 0;
}

static int run_knn(struct run *r, int64_t step, char *err, size_t errlen)
{
    struct vit_model *m;
    if (knn_model_from_weights(&r->oc.backbone, objective_teacher_backbone(r->obj), &m, err,
                               errlen) < 0)
        return -1;
    const struct model_config *mc = &r->oc.backbone;
    double acc[MAX_WIDTHS];
    int rc = knn_eval(m, &r->knn, mc->widths, mc->n_widths, acc, err, errlen);
    vit_model_free(m);
    if (rc < 0) return -1;
    printf("eval step %lld k-NN top1:", (long long)step);
    fprintf(r->log, "{\"step\":%lld,\"knn\":{", (long long)step);
    for (int i = 0; i < mc->n_widths; i++) {
        printf(" width=%d %.4f", mc->widths[i], acc[i]);
        fprintf(r->log, "%s\"%d\":%.6f", i ? "," : "", mc->widths[i], acc[i]);
    }
    printf("\n");
    fprintf(r->log, "}}\n");
    fflush(stdout);
    fflush(r->log);
    return 0;
}

/* FRANCA_TRAIN_TEST_EXIT_AT=RANK:STEP (tests): rank RANK dies, without a word to
 * MPI, when it starts step STEP (1-based), as a crashed process would. */
static int64_t test_exit_step(const struct comm *c)
{
    const char *e = getenv("FRANCA_TRAIN_TEST_EXIT_AT");
    int rank;
    long long st;
    if (e && sscanf(e, "%d:%lld", &rank, &st) == 2 && rank == comm_rank(c)) return st;
    return -1;
}

static void fmt_eta(double s, char *buf, size_t n)
{
    if (!isfinite(s) || s < 0) s = 0;
    long t = (long)s;
    snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
}

static int train(struct run *r, int64_t step0, char *err, size_t errlen)
{
    struct train_config *c = &r->cfg;
    struct param_list *pl = objective_params(r->obj);
    const int accum = c->grad_accum, B = c->batch_size;
    struct train_schedule sch;
    const double peak = c->lr_scale_sqrt ? lr_scaled(c->lr, B * accum) : c->lr;
    train_schedule_init(&sch, c->steps, c->warmup_steps, peak, c->min_lr, c->wd_start, c->wd_end,
                        c->momentum_start, c->momentum_end, c->teacher_temp_start,
                        c->teacher_temp_end, c->teacher_temp_warmup_steps,
                        c->freeze_last_layer_steps);

    struct loader_config lc = {0};
    lc.ds = &r->ds;
    augment_config_default(&lc.aug, c->global_size, c->local_size, c->n_local);
    lc.aug.global_scale[0] = c->global_scale_min;
    lc.aug.global_scale[1] = c->global_scale_max;
    lc.aug.local_scale[0] = c->local_scale_min;
    lc.aug.local_scale[1] = c->local_scale_max;
    memcpy(lc.aug.mean, r->oc.backbone.preprocess.mean, sizeof lc.aug.mean);
    memcpy(lc.aug.std, r->oc.backbone.preprocess.std, sizeof lc.aug.std);
    mask_params_default(&lc.mask);
    lc.mask.kind = strcmp(c->masking, "block") ? MASK_CYCLIC : MASK_BLOCK;
    lc.mask.ratio_min = c->mask_ratio_min;
    lc.mask.ratio_max = c->mask_ratio_max;
    lc.mask.sample_prob = c->mask_sample_prob;
    lc.patch_size = c->patch_size;
    lc.B = B;
    const int R = comm_size(r->comm), rank = comm_rank(r->comm);
    if (R > 1) {
        /* cmd_train checked B % R == 0 */
        lc.shard_n = B / R;
        lc.shard_begin = rank * lc.shard_n;
        const char *bf = getenv("FRANCA_TRAIN_BUCKET_FLOATS");
        if (grad_sync_init(&r->sync, r->comm, pl,
                           bf && atol(bf) > 0 ? (size_t)atol(bf) : GRAD_BUCKET_FLOATS) < 0)
            return set_err(err, errlen, "out of memory for the gradient buckets");
    }
    const int64_t die_at = test_exit_step(r->comm);
    const size_t bytes0 = r->comm ? r->comm->bytes_reduced : 0;
    lc.seed = (uint64_t)c->seed;
    lc.threads = c->threads;
    lc.prefetch = c->prefetch;
    if (loader_start(&lc, step0 * accum, &r->loader, err, errlen) < 0) return -1;

    struct rng base;
    rng_seed(&base, (uint64_t)c->seed);
    const double t0 = clock_now_s();
    int64_t last_saved = step0, last_eval = -1;
    const int64_t end = c->stop_at > 0 && c->stop_at < c->steps ? c->stop_at : c->steps;
    for (int64_t step = step0; step < end; step++) {
        if (step + 1 == die_at) {
            fprintf(stderr, "franca-train: rank %d: FRANCA_TRAIN_TEST_EXIT_AT: exiting at step %lld\n",
                    rank, (long long)die_at);
            fflush(stderr);
            _Exit(3);
        }
        struct schedule_values sv;
        train_schedule_at(&sch, step, &sv);
        param_list_zero_grad(pl);
        struct loss_terms sum = {0};
        for (int a = 0; a < accum; a++) {
            const struct loader_batch *b;
            if (loader_next(r->loader, &b, err, errlen) < 0) return -1;
            struct rng orng;
            rng_fork(&base, OBJECTIVE_STREAM + (uint64_t)(step * accum + a), &orng);
            if (rank > 0) {
                /* drop path is drawn per rank over its shard, as in the reference */
                struct rng shard = orng;
                rng_fork(&shard, (uint64_t)rank, &orng);
            }
            struct loss_terms lt;
            /* every micro-batch adds into the same gradients: only the last
             * one's backward pass makes them final, and reduces them as it goes */
            if (R > 1 && a == accum - 1 && r->sync.overlap) {
                grad_sync_begin(&r->sync, accum > 1 ? 1.0f / (float)accum : 1.0f);
                objective_set_grad_ready(r->obj, grad_sync_ready, &r->sync);
            }
            const int orc = objective_step(r->obj, &b->cb, (float)sv.teacher_temp, &orng, &lt,
                                           err, errlen);
            objective_set_grad_ready(r->obj, NULL, NULL);
            if (orc < 0) return -1;
            sum.total += lt.total / accum;
            sum.dino_local += lt.dino_local / accum;
            sum.dino_global += lt.dino_global / accum;
            sum.ibot += lt.ibot / accum;
            sum.koleo += lt.koleo / accum;
        }
        const double t_bwd = clock_now_s();
        if (R > 1) {
            /* each term is a mean over the shard: the mean of the ranks' means is the
             * global batch's (KoLeo, per rank as in the reference, excepted) */
            double t[5] = {sum.total, sum.dino_local, sum.dino_global, sum.ibot, sum.koleo};
            comm_allreduce_sum_f64(r->comm, t, 5);
            sum.total = t[0] / R;
            sum.dino_local = t[1] / R;
            sum.dino_global = t[2] / R;
            sum.ibot = t[3] / R;
            sum.koleo = t[4] / R;
        }
        if (!isfinite(sum.total))
            return set_err(err, errlen, "step %lld: the loss is not finite (%g); lower lr?",
                           (long long)step, sum.total);
        if (accum > 1 && R == 1) {
            const float s = 1.0f / (float)accum;
            for (int i = 0; i < pl->n; i++)
                for (size_t k = 0; k < pl->p[i].n; k++) pl->p[i].g[k] *= s;
        }
        if (R > 1) {
            if (!r->sync.overlap) {
                grad_sync_begin(&r->sync, accum > 1 ? 1.0f / (float)accum : 1.0f);
                grad_sync_ready(&r->sync, 0);
            }
            grad_sync_finish(&r->sync);
            r->sync.wait_s += clock_now_s() - t_bwd;
        }
        if (c->clip_grad > 0 || getenv("FRANCA_TRAIN_DIAG")) {
            double gn[MOD_COUNT];
            for (int m = 0; m < MOD_COUNT; m++)
                gn[m] = clip_grad_norm(pl, m, c->clip_grad > 0 ? (float)c->clip_grad : INFINITY);
            if (getenv("FRANCA_TRAIN_DIAG"))
                fprintf(stderr, "diag step %lld grad-norm backbone %.4g dino_head %.4g ibot_head %.4g\n",
                        (long long)step + 1, gn[MOD_BACKBONE], gn[MOD_DINO_HEAD], gn[MOD_IBOT_HEAD]);
        }
        const struct optim_hparams h = {(float)sv.lr, (float)sv.wd, (float)c->beta1,
                                        (float)c->beta2, (float)c->adam_eps,
                                        sv.freeze_last_layer};
        optimizer_step(r->opt, pl, &h);
        ema_update(pl, (float)sv.momentum);

        const int64_t done = step + 1;
        if (done % c->log_every == 0 || done == c->steps || done == step0 + 1) {
            const double el = clock_now_s() - t0;
            const double ips = (double)(done - step0) * B * accum / (el > 0 ? el : 1e-9);
            char eta[32];
            fmt_eta((double)(c->steps - done) * B * accum / (ips > 0 ? ips : 1e-9), eta, sizeof eta);
            printf("step %lld/%lld loss %.4f (dino_local %.4f dino_global %.4f ibot %.4f koleo %.4f) "
                   "lr %.3g wd %.3g mom %.5f tt %.4f %.1f img/s eta %s\n",
                   (long long)done, (long long)c->steps, sum.total, sum.dino_local,
                   sum.dino_global, sum.ibot, sum.koleo, sv.lr, sv.wd, sv.momentum,
                   sv.teacher_temp, ips, eta);
            fflush(stdout);
            fprintf(r->log,
                    "{\"step\":%lld,\"loss\":%.8g,\"dino_local\":%.8g,\"dino_global\":%.8g,"
                    "\"ibot\":%.8g,\"koleo\":%.8g,\"lr\":%.8g,\"wd\":%.8g,\"momentum\":%.8g,"
                    "\"teacher_temp\":%.8g,\"images_per_s\":%.4g}\n",
                    (long long)done, sum.total, sum.dino_local, sum.dino_global, sum.ibot,
                    sum.koleo, sv.lr, sv.wd, sv.momentum, sv.teacher_temp, ips);
            fflush(r->log);
        }
        if (done == step0 + 1 && R > 1)
            printf("franca-train: %d ranks x %d samples, %zu bytes all-reduced per step and rank\n",
                   R, B / R, r->comm->bytes_reduced - bytes0);
        if (rank == 0 && c->checkpoint_every && done % c->checkpoint_every == 0 && done != end) {
            if (state_save(r->dir, c, done, pl, r->opt, err, errlen) < 0) return -1;
            last_saved = done;
        }
        if (r->have_knn && c->eval_every && done % c->eval_every == 0) {
            if (run_knn(r, done, err, errlen) < 0) return -1;
            last_eval = done;
            if (chart_from_log(r->log_path, r->chart_path, err, errlen) < 0) return -1;
        }
    }
    loader_stop(r->loader);
    r->loader = NULL;
    if (R > 1 && end > step0) {
        /* the rank that waited least waited for the traffic left after its backward
         * pass; the others also for the slower ranks */
        double w[2] = {r->sync.wait_s, -r->sync.wait_s};
        comm_allreduce_max_f64(r->comm, w, 2);
        printf("franca-train: gradient all-reduce %s the backward pass: %.2f ms per step waited "
               "after it (loss terms' all-reduce included; ranks %.2f to %.2f)\n",
               r->sync.overlap ? "overlapped with" : "after",
               1e3 * r->sync.wait_s / (double)(end - step0), -1e3 * w[1] / (double)(end - step0),
               1e3 * w[0] / (double)(end - step0));
    }
    if (rank != 0) return 0;
    if (last_saved != end || step0 == end)
        if (state_save(r->dir, c, end > step0 ? end : step0, pl, r->opt, err, errlen) < 0)
            return -1;
    if (r->have_knn && last_eval != end && step0 < end && end == c->steps)
        if (run_knn(r, end, err, errlen) < 0) return -1;
    return chart_from_log(r->log_path, r->chart_path, err, errlen);
}

static void run_free(struct run *r)
{
    loader_stop(r->loader);
    optimizer_free(r->opt);
    objective_free(r->obj);
    dataset_free(&r->ds);
    knn_data_free(&r->knn);
    if (r->log) fclose(r->log);
    free(r->log_path);
    free(r->chart_path);
    grad_sync_free(&r->sync);
}

static int cmd_train(int argc, char **argv, struct comm *comm)
{
    const char *config = NULL, *out = NULL, *resume = NULL, *init = NULL;
    char err[ERR_LEN];
    static struct run r;
    memset(&r, 0, sizeof r);
    r.comm = comm;
    const int R = comm_size(comm), rank = comm_rank(comm);
    train_config_defaults(&r.cfg);
    /* First pass: the mode flags; second: overrides (after the config file). */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) || i + 1 >= argc) {
            fprintf(stderr, "franca-train: unexpected argument '%s' (flags take a value: --key value)\n", a);
            usage(stderr);
            return EXIT_USAGE;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--config")) config = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--resume")) resume = v;
        else if (!strcmp(a, "--init-from") || !strcmp(a, "--init_from")) init = v;
        else if (!train_config_has_key(a + 2)) {
            fprintf(stderr, "franca-train: unknown option %s (franca-train --help lists them)\n", a);
            return EXIT_USAGE;
        }
    }
    if (resume ? (config || out) : (!out || (!config && !init))) {
        fprintf(stderr, "franca-train: give --config FILE.json --out DIR, --init-from SRC --out DIR, "
                "or --resume DIR\n");
        usage(stderr);
        return EXIT_USAGE;
    }
    int64_t step0 = 0;
    if (resume) {
        if (state_read_header(resume, &r.cfg, &step0, err, sizeof err) < 0) {
            fprintf(stderr, "franca-train: %s\n", err);
            return 1;
        }
        r.dir = (char *)resume;
        r.cfg.stop_at = 0;
    } else if (!config) {
        /* fine-tuning a run: its config is the base, the preprocessing follows
         * the new global_size unless given, and the schedule is the flags' */
        struct stat st;
        if (stat(init, &st) < 0) {
            fprintf(stderr, "franca-train: --init-from %s: %s\n", init, strerror(errno));
            return 1;
        }
        if (!finetune_src_is_run(init)) {
            fprintf(stderr, "franca-train: --init-from %s is not a run directory: give --config "
                    "with the model's architecture\n", init);
            return EXIT_USAGE;
        }
        if (finetune_src_config(init, &r.cfg, err, sizeof err) < 0) {
            fprintf(stderr, "franca-train: %s\n", err);
            return 1;
        }
        r.cfg.stop_at = 0;
        r.cfg.resize_size = r.cfg.crop_size = 0;
        r.dir = (char *)out;
    } else {
        if (train_config_load(&r.cfg, config, err, sizeof err) < 0) {
            fprintf(stderr, "franca-train: %s\n", err);
            return EXIT_USAGE;
        }
        r.dir = (char *)out;
    }
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i] + 2;
        if (!strcmp(a, "config") || !strcmp(a, "out") || !strcmp(a, "resume")) continue;
        if (train_config_set(&r.cfg, a, argv[i + 1], err, sizeof err) < 0) {
            fprintf(stderr, "franca-train: %s\n", err);
            return EXIT_USAGE;
        }
    }
    if (train_config_objective(&r.cfg, &r.oc, err, sizeof err) < 0 ||
        objective_precision_check(&r.oc, err, sizeof err) < 0) {
        fprintf(stderr, "franca-train: %s\n", err);
        return EXIT_USAGE;
    }
    struct train_config *c = &r.cfg;
    if (c->batch_size % R) {
        fprintf(stderr, "franca-train: batch_size %d does not split over %d ranks (it must be a "
                "multiple of the rank count)\n", c->batch_size, R);
        return EXIT_USAGE;
    }
    int rc = 1;
    /* rank 0 owns the run directory; the others wait for it to exist */
    if (rank == 0 && mkdir_p1(r.dir, err, sizeof err) < 0) goto fail;
    if (R > 1) comm_barrier(comm);
    r.log_path = join(r.dir, "log.jsonl");
    r.chart_path = join(r.dir, "chart.png");
    if (!r.log_path || !r.chart_path) {
        set_err(err, sizeof err, "out of memory");
        goto fail;
    }
    if (c->train_idx[0]) {
        if (dataset_open_idx(c->train_idx, NULL, &r.ds, err, sizeof err) < 0) goto fail;
    } else if (dataset_open_folder(c->train_folder, &r.ds, err, sizeof err) < 0) {
        goto fail;
    }
    if (c->knn_train_images[0] && rank == 0) {
        if (knn_data_load(&r.knn, c->knn_train_images, c->knn_train_labels, c->knn_test_images,
                          c->knn_test_labels, c->knn_train_max, c->knn_test_max, err,
                          sizeof err) < 0)
            goto fail;
        r.have_knn = 1;
    }
    if (objective_create(&r.oc, (uint64_t)c->seed, &r.obj, err, sizeof err) < 0) goto fail;
    if (optimizer_create(objective_params(r.obj), &r.opt) < 0) {
        set_err(err, sizeof err, "out of memory for the optimizer state");
        goto fail;
    }
    if (resume && state_load(resume, objective_params(r.obj), r.opt, err, sizeof err) < 0)
        goto fail;
    if (!resume && c->init_from[0]) {
        if (finetune_init(objective_params(r.obj), c->embed_dim, r.oc.backbone.pos_grid,
                          c->init_from, err, sizeof err) < 0)
            goto fail;
        printf("franca-train: fine-tuning from %s at %d px (grid %d)\n", c->init_from,
               c->global_size, r.oc.backbone.pos_grid);
    }
    if (R > 1) {
        objective_set_comm(r.obj, comm);
        /* Replicas start from rank 0's weights (student and teacher), as DDP does:
         * every rank builds or loads the same ones; one broadcast at start makes
         * sure of it. */
        struct param_list *pl = objective_params(r.obj);
        for (int i = 0; i < pl->n; i++) {
            comm_broadcast(comm, pl->p[i].w, pl->p[i].n * sizeof(float), 0);
            if (pl->p[i].t) comm_broadcast(comm, pl->p[i].t, pl->p[i].n * sizeof(float), 0);
        }
    }
    if (rank != 0) {
        /* the log is rank 0's */
        r.log = fopen("/dev/null", "w");
    } else if (!resume) {
        /* A fresh run starts a fresh log. */
        r.log = fopen(r.log_path, "w");
    } else {
        r.log = fopen(r.log_path, "a");
    }
    if (!r.log) {
        set_err(err, sizeof err, "%s: cannot open: %s", r.log_path, strerror(errno));
        goto fail;
    }
    if (!resume && rank == 0) {
        char *cj = train_config_to_json(c);
        if (cj) {
            char *cp = join(r.dir, "config.json");
            if (cp) write_file_atomic(cp, cj, strlen(cj), err, sizeof err);
            free(cp);
            free(cj);
        }
    }
    printf("franca-train: %s, %zu parameters, %d images, batch %d x %d%s, steps %lld..%lld, "
           "precision %s (%s) -> %s\n",
           resume ? "resuming" : "training", param_list_count(objective_params(r.obj)), r.ds.n,
           c->batch_size, c->grad_accum, R > 1 ? " over MPI ranks" : "", (long long)step0, (long long)c->steps, c->precision,
           mm_isa_name(mm_isa()), r.dir);
    fflush(stdout);
    if (train(&r, step0, err, sizeof err) < 0) goto fail;
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "franca-train: %s\n", err);
done:
    run_free(&r);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        train_config_print_help(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "knn")) return cmd_knn(argc, argv);
    if (!strcmp(argv[1], "export")) return cmd_export(argc, argv);
    if (!strcmp(argv[1], "rasa")) return rasa_main(argc, argv);
    struct comm comm;
    char err[ERR_LEN];
    if (comm_init(&comm, NULL, NULL, err, sizeof err) < 0) {
        fprintf(stderr, "franca-train: %s\n", err);
        return 1;
    }
    /* rank 0 speaks for the job on stdout; errors stay on every rank's stderr */
    if (comm.rank != 0 && !freopen("/dev/null", "w", stdout)) return 1;
    int rc = cmd_train(argc, argv, &comm);
    /* A runtime failure may be one rank's alone (its data, its disk) while the
     * others wait in a collective: end them all. Usage errors (2) are the same on
     * every rank, which all return. */
    if (rc == 1 && comm.size > 1) comm_abort(&comm, 1, "training failed (message above)");
    comm_finalize(&comm);
    return rc;
}
