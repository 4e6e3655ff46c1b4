/* Prometheus metrics of the server (text exposition format 0.0.4).
 *
 * A small fixed set, named in serving.md: request counts by route, method and
 * status; histograms of decode, queue, inference and total request seconds and of
 * batch sizes; gauges filled at scrape time (queue depth, model info, swaps).
 * All functions are thread-safe. */
#ifndef FRANCA_METRICS_H
#define FRANCA_METRICS_H

#include <stddef.h>

enum metric_hist {
    HIST_DECODE_SECONDS,      /* image decode + preprocess, per image */
    HIST_QUEUE_SECONDS,       /* time a job waited for its batch */
    HIST_INFERENCE_SECONDS,   /* one forward pass of a batch */
    HIST_REQUEST_SECONDS,     /* whole request, first byte to reply */
    HIST_BATCH_SIZE,          /* images per forward pass */
    HIST_COUNT
};

struct metrics;

struct metrics *metrics_new(void);
void metrics_free(struct metrics *m);

/* Counts one finished request. route is the pattern (e.g. "/v1/models/{name}"),
 * so that path parameters do not explode the label set. */
void metrics_request(struct metrics *m, const char *route, const char *method, int status);
void metrics_observe(struct metrics *m, enum metric_hist h, double value);

/* Appends one scrape-time sample line: name{labels} value. labels may be NULL
 * or a preformatted label list without braces, e.g. name="vits",device="cpu". */
typedef void (*metrics_gauge_fn)(void *user, void (*emit)(void *ctx, const char *name,
                                                          const char *help, const char *labels,
                                                          double value),
                                 void *ctx);
void metrics_set_gauges(struct metrics *m, metrics_gauge_fn fn, void *user);

/* Renders everything (malloc'd text; caller frees). */
char *metrics_render(struct metrics *m, size_t *len);

/* Escapes a label value (backslash, quote, newline) into out (cap bytes). */
void metrics_escape_label(const char *in, char *out, size_t cap);

#endif
