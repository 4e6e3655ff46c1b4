#include "metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_REQUEST_SERIES 256
#define MAX_BUCKETS 16

struct request_series {
    char route[96];
    char method[12];
    int status;
    unsigned long long count;
};

struct histogram {
    const char *name, *help;
    int n_bounds;
    double bounds[MAX_BUCKETS];
    unsigned long long buckets[MAX_BUCKETS]; /* non-cumulative; +Inf is count */
    unsigned long long count;
    double sum;
};

struct metrics {
    pthread_mutex_t lock;
    struct request_series series[MAX_REQUEST_SERIES];
    int n_series;
    struct histogram hist[HIST_COUNT];
    metrics_gauge_fn gauges;
    void *gauges_user;
};

static const double seconds_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                        0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
static const double batch_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};

static void hist_init(struct histogram *h, const char *name, const char *help,
                      const double *bounds, int n)
{
    h->name = name;
    h->help = help;
    h->n_bounds = n;
    memcpy(h->bounds, bounds, sizeof(double) * n);
}

struct metrics *metrics_new(void)
{
    struct metrics *m = calloc(1, sizeof(*m));
    if (!m) return NULL;
    pthread_mutex_init(&m->lock, NULL);
    const int ns = (int)(sizeof(seconds_bounds) / sizeof(seconds_bounds[0]));
    hist_init(&m->hist[HIST_DECODE_SECONDS], "franca_decode_seconds",
              "Image decode and preprocessing time per image.", seconds_bounds, ns);
    hist_init(&m->hist[HIST_QUEUE_SECONDS], "franca_queue_seconds",
              "Time an image waited in the batching queue.", seconds_bounds, ns);
    hist_init(&m->hist[HIST_INFERENCE_SECONDS], "franca_inference_seconds",
              "Forward pass time per batch.", seconds_bounds, ns);
    hist_init(&m->hist[HIST_REQUEST_SECONDS], "franca_request_seconds",
              "Total request time.", seconds_bounds, ns);
    hist_init(&m->hist[HIST_BATCH_SIZE], "franca_batch_size", "Images per forward pass.",
              batch_bounds, (int)(sizeof(batch_bounds) / sizeof(batch_bounds[0])));
    return m;
}

void metrics_free(struct metrics *m)
{
    if (!m) return;
    pthread_mutex_destroy(&m->lock);
    free(m);
}

void metrics_request(struct metrics *m, const char *route, const char *method, int status)
{
    pthread_mutex_lock(&m->lock);
    struct request_series *s = NULL;
    for (int i = 0; i < m->n_series && !s; i++)
        if (m->series[i].status == status && !strcmp(m->series[i].route, route) &&
            !strcmp(m->series[i].method, method))
            s = &m->series[i];
    if (!s && m->n_series < MAX_REQUEST_SERIES) {
        s = &m->series[m->n_series++];
        snprintf(s->route, sizeof s->route, "%s", route);
        snprintf(s->method, sizeof s->method, "%s", method);
        s->status = status;
    }
    if (s) s->count++;
    pthread_mutex_unlock(&m->lock);
}

void metrics_observe(struct metrics *m, enum metric_hist which, double value)
{
    struct histogram *h = &m->hist[which];
    pthread_mutex_lock(&m->lock);
    int b = 0;
    while (b < h->n_bounds && value > h->bounds[b]) b++;
    if (b < h->n_bounds) h->buckets[b]++;
    h->count++;
    h->sum += value;
    pthread_mutex_unlock(&m->lock);
}

void metrics_set_gauges(struct metrics *m, metrics_gauge_fn fn, void *user)
{
    pthread_mutex_lock(&m->lock);
    m->gauges = fn;
    m->gauges_user = user;
    pthread_mutex_unlock(&m->lock);
}

void metrics_escape_label(const char *in, char *out, size_t cap)
{
    size_t o = 0;
    for (; *in && o + 3 < cap; in++) {
        if (*in == '\\' || *in == '"') {
            out[o++] = '\\';
            out[o++] = *in;
        } else if (*in == '\n') {
            out[o++] = '\\';
            out[o++] = 'n';
        } else {
            out[o++] = *in;
        }
    }
    if (cap) out[o < cap ? o : cap - 1] = '\0';
}

struct text {
    char *buf;
    size_t len, cap;
    int failed;
    char last_gauge[96];
};

static void put(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct text *t, const char *fmt, ...)
{
    if (t->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = 1;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap * 2 + (size_t)n + 1;
        char *nb = realloc(t->buf, cap);
        if (!nb) {
            t->failed = 1;
            return;
        }
        t->buf = nb;
        t->cap = cap;
    }
}

static void emit_gauge(void *ctx, const char *name, const char *help, const char *labels,
                       double value)
{
    struct text *t = ctx;
    if (strcmp(t->last_gauge, name)) { /* HELP and TYPE once per metric name */
        put(t, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name);
        snprintf(t->last_gauge, sizeof t->last_gauge, "%s", name);
    }
    if (labels && *labels) put(t, "%s{%s} %.17g\n", name, labels, value);
    else put(t, "%s %.17g\n", name, value);
}

char *metrics_render(struct metrics *m, size_t *len)
{
    struct text t = {.cap = 4096};
    if (!(t.buf = malloc(t.cap))) return NULL;
    t.buf[0] = '\0';
    pthread_mutex_lock(&m->lock);
    put(&t, "# HELP franca_requests_total HTTP requests by route pattern, method and status.\n"
            "# TYPE franca_requests_total counter\n");
    for (int i = 0; i < m->n_series; i++) {
        char route[200];
        metrics_escape_label(m->series[i].route, route, sizeof route);
        put(&t, "franca_requests_total{route=\"%s\",method=\"%s\",status=\"%d\"} %llu\n", route,
            m->series[i].method, m->series[i].status, m->series[i].count);
    }
    for (int k = 0; k < HIST_COUNT; k++) {
        const struct histogram *h = &m->hist[k];
        put(&t, "# HELP %s %s\n# TYPE %s histogram\n", h->name, h->help, h->name);
        unsigned long long cum = 0;
        for (int b = 0; b < h->n_bounds; b++) {
            cum += h->buckets[b];
            put(&t, "%s_bucket{le=\"%g\"} %llu\n", h->name, h->bounds[b], cum);
        }
        put(&t, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.17g\n%s_count %llu\n", h->name, h->count,
            h->name, h->sum, h->name, h->count);
    }
    metrics_gauge_fn fn = m->gauges;
    void *user = m->gauges_user;
    pthread_mutex_unlock(&m->lock);
    if (fn) fn(user, emit_gauge, &t); /* outside the lock: gauges may take other locks */
    if (t.failed) {
        free(t.buf);
        return NULL;
    }
    if (len) *len = t.len;
    return t.buf;
}
