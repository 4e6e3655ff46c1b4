/* Operational routes: /healthz, /readyz, /metrics, /openapi.json. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "openapi_blob.h"

static void healthz(struct http_request *req, void *user)
{
    (void)user;
    http_reply_json(req, 200, json_pack("{s:s}", "status", "ok"));
}

static void readyz(struct http_request *req, void *user)
{
    struct app *app = user;
    if (!atomic_load(&app->ready)) {
        http_reply_error(req, 503, NULL, "models are still loading");
        return;
    }
    http_reply_json(req, 200, json_pack("{s:s}", "status", "ready"));
}

/* Scrape-time gauges: queue depth, admission, loaded models, swaps. */
static void gauges(void *user, void (*emit)(void *, const char *, const char *, const char *, double),
                   void *ctx)
{
    struct app *app = user;
    struct batcher_stats bs;
    batcher_get_stats(app->batcher, &bs);
    emit(ctx, "franca_queue_depth", "Images waiting for a batch.", NULL, bs.queue_depth);
    emit(ctx, "franca_inflight_tokens", "Tokens held by admitted requests.", NULL,
         (double)bs.tokens_in_flight);
    emit(ctx, "franca_inflight_tokens_limit", "The token budget (--max-inflight-tokens).", NULL,
         (double)bs.token_budget);
    emit(ctx, "franca_inflight_tokens_peak", "The most tokens ever in flight at once.", NULL,
         (double)bs.tokens_peak);
    const char *help = "Requests refused at admission, by reason.";
    emit(ctx, "franca_admission_rejected_total", help, "reason=\"queue_full\"",
         (double)bs.rejected_full);
    emit(ctx, "franca_admission_rejected_total", help, "reason=\"tokens\"",
         (double)bs.rejected_tokens);
    emit(ctx, "franca_admission_rejected_total", help, "reason=\"too_large\"",
         (double)bs.rejected_too_large);
    emit(ctx, "franca_batch_items_dropped_total",
         "Queued images dropped before their forward because their client went away.", NULL,
         (double)bs.dropped);
    struct model_entry **e;
    size_t n;
    char err[256];
    if (registry_list(app->registry, &e, &n, NULL, err, sizeof err) == 0) {
        for (size_t i = 0; i < n; i++) {
            char name[2 * REGISTRY_NAME_MAX], labels[512];
            metrics_escape_label(e[i]->name, name, sizeof name);
            snprintf(labels, sizeof labels,
                     "name=\"%s\",fingerprint=\"%s\",dtype=\"f32\",device=\"%s\",precision=\"%s\"",
                     name, e[i]->fingerprint, e[i]->device, e[i]->precision);
            emit(ctx, "franca_model_info", "Loaded models (value 1).", labels, 1);
        }
        registry_list_free(e, n);
    }
    struct registry_stats st;
    registry_get_stats(app->registry, &st);
    emit(ctx, "franca_model_loads_total", "Checkpoint loads and swaps by result.",
         "result=\"ok\"", (double)st.loads_ok);
    emit(ctx, "franca_model_loads_total", "Checkpoint loads and swaps by result.",
         "result=\"failed\"", (double)st.loads_failed);
    emit(ctx, "franca_model_loads_total", "Checkpoint loads and swaps by result.",
         "result=\"busy\"", (double)st.loads_busy);
}

static void metrics_route(struct http_request *req, void *user)
{
    struct app *app = user;
    size_t len;
    char *text = metrics_render(app->metrics, &len);
    if (!text) {
        http_reply_error(req, 500, NULL, "out of memory rendering metrics");
        return;
    }
    http_reply_take(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len, NULL);
}

static void openapi(struct http_request *req, void *user)
{
    (void)user;
    http_reply(req, 200, "application/json", openapi_json, openapi_json_len, NULL);
}

int routes_ops_register(struct http_router *r, struct app *app, char *err, size_t errlen)
{
    metrics_set_gauges(app->metrics, gauges, app);
    if (route_add(r, app, "GET", "/healthz", healthz, err, errlen)) return -1;
    if (route_add(r, app, "GET", "/readyz", readyz, err, errlen)) return -1;
    if (route_add(r, app, "GET", "/metrics", metrics_route, err, errlen)) return -1;
    return route_add(r, app, "GET", "/openapi.json", openapi, err, errlen);
}
