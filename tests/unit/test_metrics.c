/* Prometheus text rendering: counters, cumulative histogram buckets, gauges,
 * label escaping, and concurrent updates. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "metrics.h"

static void gauges(void *user, void (*emit)(void *, const char *, const char *, const char *, double),
                   void *ctx)
{
    (void)user;
    emit(ctx, "franca_queue_depth", "Images waiting.", NULL, 3);
    emit(ctx, "franca_model_info", "Loaded models.", "name=\"a\",fingerprint=\"f1\"", 1);
    emit(ctx, "franca_model_info", "Loaded models.", "name=\"b\",fingerprint=\"f2\"", 1);
}

static void *hammer(void *arg)
{
    struct metrics *m = arg;
    for (int i = 0; i < 10000; i++) {
        metrics_request(m, "/v1/embeddings", "POST", 200);
        metrics_observe(m, HIST_BATCH_SIZE, 4);
    }
    return NULL;
}

static int count_of(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)); p++) n++;
    return n;
}

int main(void)
{
    struct metrics *m = metrics_new();
    CHECK(m != NULL, "metrics_new");
    metrics_request(m, "/healthz", "GET", 200);
    metrics_request(m, "/healthz", "GET", 200);
    metrics_request(m, "/v1/models/{name}", "GET", 404);
    metrics_observe(m, HIST_REQUEST_SECONDS, 0.003);
    metrics_observe(m, HIST_REQUEST_SECONDS, 0.2);
    metrics_observe(m, HIST_REQUEST_SECONDS, 100);
    metrics_set_gauges(m, gauges, NULL);

    size_t len;
    char *t = metrics_render(m, &len);
    CHECK(t && strlen(t) == len, "render returns its length");
    CHECK(strstr(t, "franca_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"} 2\n"),
          "request counter");
    CHECK(strstr(t, "status=\"404\"} 1\n"), "404 series");
    CHECK(strstr(t, "franca_request_seconds_bucket{le=\"0.0025\"} 0\n"), "bucket below first sample");
    CHECK(strstr(t, "franca_request_seconds_bucket{le=\"0.005\"} 1\n"), "cumulative bucket");
    CHECK(strstr(t, "franca_request_seconds_bucket{le=\"0.25\"} 2\n"), "cumulative bucket 2");
    CHECK(strstr(t, "franca_request_seconds_bucket{le=\"30\"} 2\n"), "largest finite bucket");
    CHECK(strstr(t, "franca_request_seconds_bucket{le=\"+Inf\"} 3\n"), "+Inf holds every sample");
    CHECK(strstr(t, "franca_request_seconds_count 3\n"), "count");
    CHECK(strstr(t, "franca_queue_depth 3\n"), "unlabelled gauge");
    CHECK(count_of(t, "# TYPE franca_model_info gauge") == 1, "HELP/TYPE once per gauge name");
    CHECK(strstr(t, "franca_model_info{name=\"b\",fingerprint=\"f2\"} 1\n"), "labelled gauge");
    free(t);

    char esc[64];
    metrics_escape_label("a\"b\\c\nd", esc, sizeof esc);
    CHECK(!strcmp(esc, "a\\\"b\\\\c\\nd"), "label escaping: %s", esc);

    pthread_t th[4];
    for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, hammer, m);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    t = metrics_render(m, NULL);
    CHECK(strstr(t, "franca_requests_total{route=\"/v1/embeddings\",method=\"POST\",status=\"200\"} 40000\n"),
          "concurrent counts are exact");
    CHECK(strstr(t, "franca_batch_size_count 40000\n") && strstr(t, "franca_batch_size_bucket{le=\"2\"} 0\n") &&
          strstr(t, "franca_batch_size_bucket{le=\"4\"} 40000\n"), "batch histogram");
    free(t);
    metrics_free(m);
    return check_summary();
}
