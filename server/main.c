/* franca-server: the REST embedding service.
 * Flags (fixed contract, see README): --model NAME=CKPT (repeatable, the first is
 * the default) --models-dir DIR --host H --port P --data DIR --device D
 * --admin-token-file F --max-batch N --max-delay-ms N --max-body-mb N
 * --max-image-pixels N --threads N; plus --http-threads N --max-queue N
 * --max-images N --api-key-file F --header-timeout S --max-connections N
 * --max-connections-per-ip N --max-inflight-tokens N --drain-seconds N --reembed-rate N
 * --precision P. Prints
 * "listening on http://HOST:PORT" once ready; SIGTERM or SIGINT stops
 * accepting, finishes requests in flight and exits 0; work still running
 * DRAIN_GRACE_S after the drain's deadline is abandoned (logged, exit 1). */
#include <errno.h>
#include <getopt.h>
#include <omp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "app.h"
#include "errors.h"
#include "index/search.h"
#include "index/snapshot.h"
#include "infer.h"
#include "vit.h"

#define MAX_MODELS 16
#define BACKGROUND_THREADS 4
#define BACKGROUND_QUEUE 64
#define DRAIN_GRACE_S 5 /* after --drain-seconds: forced 503s go out, then the process ends */

static const char usage_text[] =
    "usage: franca-server --model NAME=CKPT [--model NAME=CKPT]... [options]\n"
    "\n"
    "  --model NAME=CKPT       serve checkpoint CKPT as NAME (repeatable; the first is the default)\n"
    "  --models-dir DIR        the only directory admin swaps may load checkpoints from\n"
    "  --host HOST             address to bind (default 127.0.0.1)\n"
    "  --port PORT             port (default 8080; 0 picks a free one)\n"
    "  --data DIR              index and state directory (default ./data)\n"
    "  --restore FILE          start from a snapshot (POST /admin/snapshot wrote it under\n"
    "                          DIR/snapshots/): it replaces DIR/index.sqlite3, which is kept\n"
    "                          beside it as index.sqlite3.before-restore-TIME\n"
    "  --device D              cpu, cuda or auto (default auto: cuda when a GPU is usable)\n"
    "  --precision P           fp32, bf16 or auto (default auto: bf16 on CUDA and on CPUs\n"
    "                          with AMX or AVX512-BF16, else fp32); bf16 multiplies in bf16\n"
    "                          with float32 accumulation\n"
    "  --admin-token-file F    enables the admin routes with the bearer token in F\n"
    "  --api-key-file F        every /v1 route needs 'Authorization: Bearer KEY', a key of F\n"
    "                          (one per line, '#' comments); without it the /v1 routes are open\n"
    "  --max-batch N           images per forward pass (default 16)\n"
    "  --max-delay-ms N        how long a batch waits to fill (default 5)\n"
    "  --max-body-mb N         request body limit in MiB (default 64)\n"
    "  --max-image-pixels N    declared width x height limit per image (default 40000000)\n"
    "  --max-images N          images per request (default 256)\n"
    "  --max-queue N           images waiting for a batch before 429 (default 1024)\n"
    "  --max-inflight-tokens N tokens (images x (1 + registers + patches)) admitted at once\n"
    "                          across requests before 429; bounds peak memory (default 131072)\n"
    "  --threads N             inference threads (default: all cores)\n"
    "  --http-threads N        HTTP threads (default 4)\n"
    "  --index-threads N       threads for index commits and searches (default 2)\n"
    "  --max-insert-items N    items per insert request (default 4096)\n"
    "  --header-timeout S      a request head (line and headers) must arrive within S seconds\n"
    "                          of the connection's start or the previous answer (default 10)\n"
    "  --max-connections N     open connections at most; more wait to be accepted (default 1024)\n"
    "  --max-connections-per-ip N  connections from one address at most, more are closed at\n"
    "                          once (default 0: no limit; for servers exposed without a proxy)\n"
    "  --drain-seconds N       on SIGTERM, how long requests in flight may finish (default 30);\n"
    "                          whatever still runs 5 s later is abandoned (exit status 1)\n"
    "  --reembed-rate N        images per second a re-embed job may embed, so that it leaves\n"
    "                          the cores to requests (default 0: as fast as the batcher goes)\n";

struct options {
    const char *names[MAX_MODELS], *paths[MAX_MODELS];
    int n_models;
    const char *models_dir, *host, *data, *device, *precision, *token_file, *api_key_file;
    const char *restore;
    int port, max_batch, max_delay_ms, max_body_mb, max_images, max_queue, threads, http_threads;
    int index_threads, max_insert_items, header_timeout, max_connections, max_conn_per_ip;
    int drain_seconds, reembed_rate;
    long long max_pixels, max_inflight_tokens;
};

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "franca-server: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (see --help)\n");
    return 2;
}

static int parse_num(const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static int parse_options(int argc, char **argv, struct options *o)
{
    enum { O_MODEL = 256, O_MODELS_DIR, O_HOST, O_PORT, O_DATA, O_DEVICE, O_TOKEN, O_BATCH,
           O_DELAY, O_BODY, O_PIXELS, O_IMAGES, O_QUEUE, O_THREADS, O_HTTP, O_INDEX_THREADS, O_INSERT_ITEMS, O_API_KEYS, O_HELP,
           O_HEADER_TIMEOUT, O_MAX_CONN, O_MAX_CONN_IP, O_INFLIGHT, O_DRAIN, O_PRECISION,
           O_RESTORE, O_REEMBED_RATE };
    static const struct option lo[] = {
        {"model", required_argument, 0, O_MODEL}, {"models-dir", required_argument, 0, O_MODELS_DIR},
        {"host", required_argument, 0, O_HOST}, {"port", required_argument, 0, O_PORT},
        {"data", required_argument, 0, O_DATA}, {"device", required_argument, 0, O_DEVICE},
        {"restore", required_argument, 0, O_RESTORE},
        {"precision", required_argument, 0, O_PRECISION},
        {"admin-token-file", required_argument, 0, O_TOKEN},
        {"api-key-file", required_argument, 0, O_API_KEYS},
        {"max-batch", required_argument, 0, O_BATCH}, {"max-delay-ms", required_argument, 0, O_DELAY},
        {"max-body-mb", required_argument, 0, O_BODY},
        {"max-image-pixels", required_argument, 0, O_PIXELS},
        {"max-images", required_argument, 0, O_IMAGES}, {"max-queue", required_argument, 0, O_QUEUE},
        {"threads", required_argument, 0, O_THREADS}, {"http-threads", required_argument, 0, O_HTTP},
        {"index-threads", required_argument, 0, O_INDEX_THREADS},
        {"max-insert-items", required_argument, 0, O_INSERT_ITEMS},
        {"header-timeout", required_argument, 0, O_HEADER_TIMEOUT},
        {"max-connections", required_argument, 0, O_MAX_CONN},
        {"max-connections-per-ip", required_argument, 0, O_MAX_CONN_IP},
        {"max-inflight-tokens", required_argument, 0, O_INFLIGHT},
        {"drain-seconds", required_argument, 0, O_DRAIN},
        {"reembed-rate", required_argument, 0, O_REEMBED_RATE},
        {"help", no_argument, 0, O_HELP}, {0, 0, 0, 0}};
    *o = (struct options){.host = "127.0.0.1", .port = 8080, .data = "./data", .device = "auto",
                          .max_batch = 16, .max_delay_ms = 5, .max_body_mb = 64,
                          .max_pixels = 40000000, .max_images = 256, .max_queue = 1024,
                          .http_threads = 4, .index_threads = 2, .max_insert_items = 4096,
                          .header_timeout = 10, .max_connections = 1024,
                          .drain_seconds = 30, .max_inflight_tokens = 131072};
    opterr = 0;
    int c;
    long long v;
    struct { int opt; int *dst; long long lo, hi; const char *msg; } nums[] = {
        {O_PORT, &o->port, 0, 65535, "--port needs 0..65535, got '%s'"},
        {O_BATCH, &o->max_batch, 1, 1024, "--max-batch needs 1..1024, got '%s'"},
        {O_DELAY, &o->max_delay_ms, 0, 10000, "--max-delay-ms needs 0..10000, got '%s'"},
        {O_BODY, &o->max_body_mb, 1, 4096, "--max-body-mb needs 1..4096, got '%s'"},
        {O_IMAGES, &o->max_images, 1, 65536, "--max-images needs 1..65536, got '%s'"},
        {O_QUEUE, &o->max_queue, 1, 1 << 20, "--max-queue needs 1..1048576, got '%s'"},
        {O_THREADS, &o->threads, 1, 1024, "--threads needs 1..1024, got '%s'"},
        {O_HTTP, &o->http_threads, 1, 256, "--http-threads needs 1..256, got '%s'"},
        {O_INDEX_THREADS, &o->index_threads, 1, 256, "--index-threads needs 1..256, got '%s'"},
        {O_INSERT_ITEMS, &o->max_insert_items, 1, 1 << 20,
         "--max-insert-items needs 1..1048576, got '%s'"},
        {O_HEADER_TIMEOUT, &o->header_timeout, 1, 3600, "--header-timeout needs 1..3600, got '%s'"},
        {O_MAX_CONN, &o->max_connections, 1, 1 << 20, "--max-connections needs 1..1048576, got '%s'"},
        {O_MAX_CONN_IP, &o->max_conn_per_ip, 0, 1 << 20,
         "--max-connections-per-ip needs 0..1048576, got '%s'"},
        {O_DRAIN, &o->drain_seconds, 1, 3600, "--drain-seconds needs 1..3600, got '%s'"},
        {O_REEMBED_RATE, &o->reembed_rate, 0, 1 << 20, "--reembed-rate needs 0..1048576, got '%s'"},
    };
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        bool handled = false;
        for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++)
            if (nums[i].opt == c) {
                if (parse_num(optarg, nums[i].lo, nums[i].hi, &v)) return usage_error(nums[i].msg, optarg);
                *nums[i].dst = (int)v;
                handled = true;
            }
        if (handled) continue;
        switch (c) {
        case O_MODEL: {
            char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg || !eq[1]) return usage_error("--model needs NAME=CKPT, got '%s'", optarg);
            if (o->n_models == MAX_MODELS) return usage_error("at most 16 --model flags%s", "");
            *eq = '\0';
            o->names[o->n_models] = optarg;
            o->paths[o->n_models++] = eq + 1;
            break;
        }
        case O_MODELS_DIR: o->models_dir = optarg; break;
        case O_HOST: o->host = optarg; break;
        case O_DATA: o->data = optarg; break;
        case O_RESTORE: o->restore = optarg; break;
        case O_TOKEN: o->token_file = optarg; break;
        case O_API_KEYS: o->api_key_file = optarg; break;
        case O_DEVICE:
            if (strcmp(optarg, "cpu") && strcmp(optarg, "cuda") && strcmp(optarg, "auto"))
                return usage_error("--device must be cpu, cuda or auto, got '%s'", optarg);
            o->device = optarg;
            break;
        case O_PRECISION:
            if (strcmp(optarg, "fp32") && strcmp(optarg, "bf16") && strcmp(optarg, "auto"))
                return usage_error("--precision must be fp32, bf16 or auto, got '%s'", optarg);
            o->precision = optarg;
            break;
        case O_PIXELS:
            if (parse_num(optarg, 1, 1LL << 40, &o->max_pixels))
                return usage_error("--max-image-pixels needs a positive integer, got '%s'", optarg);
            break;
        case O_INFLIGHT:
            if (parse_num(optarg, 1, 1LL << 40, &o->max_inflight_tokens))
                return usage_error("--max-inflight-tokens needs a positive integer, got '%s'", optarg);
            break;
        case O_HELP: fputs(usage_text, stdout); exit(0);
        default: return usage_error("unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) return usage_error("unexpected argument '%s'", argv[optind]);
    if (!o->n_models) return usage_error("at least one --model NAME=CKPT is required%s", "");
    return 0;
}

/* The token is the file's first line; an empty token is refused. */
static char *read_token(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char buf[1024] = "";
    if (!fgets(buf, sizeof buf, f)) buf[0] = '\0';
    fclose(f);
    size_t n = strlen(buf);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ')) buf[--n] = '\0';
    if (n < 8) {
        set_err(err, errlen, "%s: the admin token must be at least 8 characters", path);
        return NULL;
    }
    return strdup(buf);
}

static void on_complete(const struct http_completion *c, void *user)
{
    struct app *app = user;
    metrics_request(app->metrics, c->route ? c->route : "(none)", c->method, c->status);
    metrics_observe(app->metrics, HIST_REQUEST_SECONDS, c->seconds);
}

/* Per forward pass: its size and time, and each image's wait in the queue. */
static void on_batch(struct batch_job *const *jobs, int B, double infer_seconds, void *user)
{
    struct metrics *m = user;
    metrics_observe(m, HIST_BATCH_SIZE, B);
    metrics_observe(m, HIST_INFERENCE_SECONDS, infer_seconds);
    for (int i = 0; i < B; i++) metrics_observe(m, HIST_QUEUE_SECONDS, jobs[i]->queue_seconds);
}

/* What the shutdown is waiting for, for the watchdog's last line. */
static const char *_Atomic drain_step = "waiting for requests in flight";

/* Ends the process at the drain's deadline, whatever still runs: a model load
 * stuck in slow storage or a long forward must not keep a stopped server
 * alive. _exit, not exit: other threads still use what exit would tear down. */
static void *drain_watchdog(void *arg)
{
    const unsigned seconds = *(const unsigned *)arg;
    struct timespec left = {(time_t)seconds, 0};
    while (nanosleep(&left, &left) && errno == EINTR) {}
    fprintf(stderr, "franca-server: drain deadline passed (%u s after the signal) while %s; "
            "exiting without it\n", seconds, atomic_load(&drain_step));
    _exit(1);
}

static int fail(const char *msg)
{
    fprintf(stderr, "franca-server: %s\n", msg);
    return 1;
}

/* Frees what main set up, in dependency order; every part may be missing (a
 * startup that failed half-way). Work still queued is finished first. */
static void app_free(struct app *app, struct http_router *router)
{
    /* Loads and reembeds wait for inference, so they end before the batcher. */
    atomic_store(&drain_step, "waiting for model loads and reembed jobs");
    workq_free(app->background);
    atomic_store(&drain_step, "finishing queued inference");
    batcher_free(app->batcher);
    atomic_store(&drain_step, "finishing replies");
    workq_free(app->replies); /* after the batcher: its last requests finish here */
    /* Last: an index request's embedding, answered on a reply thread, queues
     * its commit or search here. */
    atomic_store(&drain_step, "finishing index work");
    workq_free(app->index_work);
    atomic_store(&drain_step, "closing the index");
    index_close(app->index);
    jobs_free(app->jobs);
    registry_free(app->registry);
    http_router_free(router);
    metrics_free(app->metrics);
    auth_keys_clear(&app->admin_keys);
    auth_keys_clear(&app->api_keys);
}

/* A startup failure after main began to set the app up. */
static int fail_free(struct app *app, struct http_router *router, const char *msg)
{
    app_free(app, router);
    return fail(msg);
}

int main(int argc, char **argv)
{
    struct options o;
    int rc = parse_options(argc, argv, &o);
    if (rc) return rc;
    char err[ERR_LEN];
    /* --device: registry_create resolves auto (cuda when a GPU is usable) and refuses cuda without one. */
    if (o.threads) omp_set_num_threads(o.threads);
    if (mkdir(o.data, 0700) && errno != EEXIST) { /* holds the index: owner-only */
        snprintf(err, sizeof err, "--data %s: %s", o.data, strerror(errno));
        return fail(err);
    }

    /* Signals are taken by sigwait in main; every thread started below inherits
     * the mask, so none of them is interrupted. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    static struct app app;
    app.device = o.device;
    app.models_dir = o.models_dir;
    app.data_dir = o.data;
    app.started_at = time(NULL);
    app.limits = (struct app_limits){
        .max_body_bytes = (size_t)o.max_body_mb << 20, .max_image_pixels = (size_t)o.max_pixels,
        .max_images = o.max_images, .max_batch = o.max_batch, .max_delay_ms = o.max_delay_ms,
        .max_queue = o.max_queue, .max_json_floats = 4u << 20,
        .max_inflight_tokens = (unsigned long long)o.max_inflight_tokens,
        .max_insert_items = o.max_insert_items, .max_search_queries = 1024,
        .reembed_rate = o.reembed_rate};
    struct http_router *router = NULL;
    if (o.token_file) {
        char *token = read_token(o.token_file, err, sizeof err);
        if (!token) return fail_free(&app, router, err);
        rc = auth_keys_single(token, &app.admin_keys);
        free(token);
        if (rc) return fail_free(&app, router, "out of memory");
    }
    if (o.api_key_file && auth_keys_load(o.api_key_file, &app.api_keys, err, sizeof err))
        return fail_free(&app, router, err);
    if (!(app.metrics = metrics_new())) return fail_free(&app, router, "out of memory");
    if (registry_create(&app.registry, app.device, o.precision, err, sizeof err)) return fail_free(&app, router, err);
    /* The index searches with cuBLAS where the models run on CUDA. */
    enum vit_device search_device;
    if (!vit_device_select(app.device, &search_device, err, sizeof err) &&
        search_device == VIT_DEVICE_CUDA)
        search_use_backend(&search_backend_cuda);
    if (!(app.batcher = batcher_create(o.max_batch, o.max_delay_ms, o.max_queue, err, sizeof err)))
        return fail_free(&app, router, err);
    batcher_set_observer(app.batcher, on_batch, app.metrics);
    batcher_set_token_budget(app.batcher, (uint64_t)o.max_inflight_tokens);
    if (o.restore) {
        if (snapshot_restore(o.data, o.restore, err, sizeof err)) return fail_free(&app, router, err);
        fprintf(stderr, "restored the index from %s (the database it replaced is kept beside it)\n",
                o.restore);
    }
    if (index_open(&app.index, o.data, err, sizeof err)) return fail_free(&app, router, err);
    if (!(app.index_work = workq_create(o.index_threads, 4096, err, sizeof err))) return fail_free(&app, router, err);
    /* Background jobs get their own few threads: a long reembed or a model load
     * never holds a thread that searches and commits need. Several run at once
     * (e.g. two loads of one name, one answered 409); more wait in the queue. */
    if (!(app.background = workq_create(BACKGROUND_THREADS, BACKGROUND_QUEUE, err, sizeof err)))
        return fail_free(&app, router, err);
    /* As many reply builders as HTTP threads; a full queue builds on the batcher (infer.c). */
    if (!(app.replies = workq_create(o.http_threads, 4096, err, sizeof err))) return fail_free(&app, router, err);
    batcher_set_replies(app.batcher, app.replies);
    if (!(app.jobs = jobs_create(index_store(app.index), err, sizeof err)))
        return fail_free(&app, router, err);

    if (!(router = http_router_new()) || routes_register(router, &app, err, sizeof err))
        return fail_free(&app, router, router ? err : "out of memory");
    const struct http_config hc = {.host = o.host, .port = (unsigned)o.port,
                                   .threads = (unsigned)o.http_threads,
                                   .max_body_bytes = app.limits.max_body_bytes,
                                   .header_timeout_s = (unsigned)o.header_timeout,
                                   .max_connections = (unsigned)o.max_connections,
                                   .max_connections_per_ip = (unsigned)o.max_conn_per_ip,
                                   .drain_timeout_s = (unsigned)o.drain_seconds,
                                   .router = router, .on_complete = on_complete,
                                   .on_complete_user = &app, .head_check = routes_head_check,
                                   .head_check_user = &app};
    struct http_server *srv = http_start(&hc, err, sizeof err);
    if (!srv) return fail_free(&app, router, err);

    /* /healthz answers while the models load; /readyz turns 200 after. */
    for (int i = 0; i < o.n_models; i++) {
        struct model_entry *e;
        if (registry_load(app.registry, o.names[i], o.paths[i], &e, err, sizeof err)) {
            http_stop(srv);
            return fail_free(&app, router, err);
        }
        fprintf(stderr, "loaded %s from %s (sha256 %.16s..., %.2f s + warm-up %.2f s); "
                "%lld tokens in flight take about %.0f MiB at %zu bytes per token\n", e->name,
                o.paths[i], e->fingerprint, e->load_seconds, e->warmup_seconds,
                o.max_inflight_tokens,
                (double)o.max_inflight_tokens * (double)infer_bytes_per_token(e) / 1048576.0,
                infer_bytes_per_token(e));
        model_entry_release(e);
    }
    /* Jobs that a restart cut short run again now that their models are here,
     * before /readyz turns 200 and new jobs may start. Each job type with
     * work to resume registers here. */
    if (jobs_register_type(app.jobs, "reembed", reembed_resume, &app) ||
        jobs_register_type(app.jobs, "ann_build", ann_resume, &app)) {
        http_stop(srv);
        return fail_free(&app, router, "out of memory");
    }
    jobs_resume_all(app.jobs);
    atomic_store(&app.ready, true);
    printf("listening on http://%s:%u\n", o.host, http_port(srv));
    fflush(stdout);

    int sig;
    sigwait(&sigs, &sig);
    fprintf(stderr, "franca-server: %s received, draining\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    static unsigned deadline_s;
    deadline_s = (unsigned)o.drain_seconds + DRAIN_GRACE_S;
    pthread_t watchdog;
    if (pthread_create(&watchdog, NULL, drain_watchdog, &deadline_s) == 0) pthread_detach(watchdog);
    http_stop(srv);
    atomic_store(&app.stopping, true); /* reembeds end early; app_free joins them */
    app_free(&app, router);
    return 0;
}
