/* POST /v1/collections/{name}/search: k-NN by image, vector or stored item,
 * exact or through the Matryoshka funnel, with metadata filters; one query or
 * a batch ("queries"). This file parses the request and builds the reply; the
 * query itself runs in the index (index/query.h) on the index work queue. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "index/hnsw.h"
#include "index/query.h"
#include "routes_index.h"
#include "routes_patch.h"

/* Hits in one answer at most (queries x k): 100,000 hits of JSON are ~10 MB. */
#define SEARCH_HITS_MAX 100000

struct search_ctx {
    struct route_index_req base; /* first: the request, body, collection, images */
    bool batch;
    struct index_query q;    /* ids and vectors point into the fields below */
    struct filter *filter;
    const char **ids;        /* [nq]: borrowed from the body; NULL for other queries */
    int *image;              /* [nq]: index in base.im, or -1 */
    float *qv;               /* [nq, w] */
};

static void search_free(void *ctx)
{
    struct search_ctx *x = ctx;
    filter_free(x->filter);
    free(x->ids);
    free(x->image);
    free(x->qv);
    route_index_end(&x->base);
    free(x);
}

static json_t *hit_json(const struct query_hit *h, bool with_metadata)
{
    json_t *o = json_pack("{s:s, s:f}", "id", h->id, "score", (double)h->score);
    if (with_metadata) json_object_set(o, "metadata", h->metadata ? h->metadata : json_null());
    if (h->vector) {
        json_t *arr = json_array();
        for (size_t i = 0; i < h->dim; i++) json_array_append_new(arr, json_real(h->vector[i]));
        json_object_set_new(o, "vector", arr);
    }
    return o;
}

/* Runs on the index work queue: the query, then the reply. */
static void search_run(void *arg)
{
    struct search_ctx *x = arg;
    const int width = (int)coll_width(x->base.c);
    for (int i = 0; i < x->q.nq; i++) /* embedded images as queries */
        if (x->image[i] >= 0)
            memcpy(x->qv + (size_t)i * x->q.w, x->base.im.vectors + (size_t)x->image[i] * width,
                   (size_t)x->q.w * sizeof *x->qv);
    char err[ERR_LEN] = "";
    struct query_result res;
    const int rc = query_run(x->base.c, &x->q, &res, err, sizeof err);
    if (rc) {
        route_reply_store_error(x->base.req, rc, err);
        search_free(x);
        return;
    }
    json_t *batch = json_array();
    for (int i = 0; i < res.nq; i++) {
        json_t *results = json_array();
        for (int j = 0; j < res.n; j++)
            json_array_append_new(results, hit_json(res.hits + (size_t)i * res.n + j,
                                                    x->q.with_metadata));
        json_array_append_new(batch, json_pack("{s:o}", "results", results));
    }
    json_t *answer;
    if (x->batch) {
        answer = json_pack("{s:o}", "batch", batch);
    } else {
        answer = json_incref(json_array_get(batch, 0));
        json_decref(batch);
    }
    if (answer) json_object_set_new(answer, "search", json_string(res.search));
    query_result_free(&res);
    http_reply_json(x->base.req, 200, answer);
    search_free(x);
}

/* Reads an optional integer field within lo..hi (def when absent). */
static int int_field(json_t *o, const char *key, long long lo, long long hi, long long def,
                     int *out, char *why, size_t len)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = (int)def;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return set_err(why, len, "'%s' must be an integer in %lld..%lld", key, lo, hi);
    *out = (int)json_integer_value(v);
    return 0;
}

/* The options shared by the single and the batch form. */
static int parse_options(struct search_ctx *x, char *why, size_t len)
{
    const int width = (int)coll_width(x->base.c);
    if (int_field(x->base.body, "k", 1, SEARCH_K_MAX, 10, &x->q.k, why, len) ||
        int_field(x->base.body, "width", 1, width, width, &x->q.w, why, len))
        return -1;
    json_t *funnel = json_object_get(x->base.body, "funnel");
    if (funnel && !json_is_null(funnel)) {
        if (!json_is_object(funnel)) return set_err(why, len, "'funnel' must be an object");
        int fw, cand;
        query_funnel_defaults(x->base.c, x->q.k, x->q.w, &fw, &cand);
        char fwhy[ERR_LEN];
        if (int_field(funnel, "width", 1, x->q.w, fw, &x->q.funnel_width, fwhy, sizeof fwhy) ||
            int_field(funnel, "candidates", 1, QUERY_FUNNEL_MAX_CANDIDATES, cand,
                      &x->q.candidates, fwhy, sizeof fwhy))
            return set_err(why, len, "funnel: %s", fwhy);
    }
    json_t *rerank = json_object_get(x->base.body, "rerank");
    if (rerank && !json_is_null(rerank) && !json_is_boolean(rerank))
        return set_err(why, len, "'rerank' must be a boolean");
    x->q.no_rerank = json_is_false(rerank);
    json_t *exact = json_object_get(x->base.body, "exact");
    if (exact && !json_is_null(exact) && !json_is_boolean(exact))
        return set_err(why, len, "'exact' must be a boolean");
    x->q.exact = json_is_true(exact);
    if (int_field(x->base.body, "ef", 1, HNSW_EF_MAX, 0, &x->q.ef, why, len) ||
        int_field(x->base.body, "shortlist", 1, HNSW_EF_MAX, 0, &x->q.shortlist, why, len))
        return -1;
    json_t *filter = json_object_get(x->base.body, "filter");
    if (filter && !json_is_null(filter) && filter_compile(filter, &x->filter, why, len)) return -1;
    x->q.filter = x->filter;
    json_t *include = json_object_get(x->base.body, "include"), *v;
    size_t i;
    if (include && !json_is_null(include) && !json_is_array(include))
        return set_err(why, len, "'include' must be an array of \"metadata\" and \"vector\"");
    json_array_foreach(include, i, v) {
        const char *s = json_string_value(v);
        if (s && !strcmp(s, "metadata")) x->q.with_metadata = true;
        else if (s && !strcmp(s, "vector")) x->q.with_vector = true;
        else return set_err(why, len, "'include' may only list \"metadata\" and \"vector\"");
    }
    return 0;
}

/* One query object (the body itself in the single form). */
static int parse_query(struct search_ctx *x, json_t *o, int i, json_t **image, char *why,
                       size_t len)
{
    json_t *vec = json_object_get(o, "vector"), *img = json_object_get(o, "image");
    json_t *id = json_object_get(o, "id");
    if (!json_is_object(o)) return set_err(why, len, "is not an object");
    if (json_object_get(o, "patch") || json_object_get(o, "box"))
        return set_err(why, len, "uses 'patch'/'box', but collection '%s' is CLS-level; patch "
                       "queries need a collection created with level \"patch\"",
                       coll_name(x->base.c));
    if ((vec != NULL) + (img != NULL) + (id != NULL) != 1)
        return set_err(why, len, "needs exactly one of 'image', 'vector' and 'id'");
    if (vec) {
        char vw[256];
        if (route_vector_from_json(vec, x->q.w, false, x->qv + (size_t)i * x->q.w, vw, sizeof vw))
            return set_err(why, len, "'vector' %s", vw);
    } else if (id) {
        if (!json_is_string(id) || !json_string_length(id))
            return set_err(why, len, "'id' must be a non-empty string");
        x->ids[i] = json_string_value(id);
    } else {
        if (!json_is_string(img)) return set_err(why, len, "'image' must be a base64 string or a data URI");
        *image = img;
    }
    return 0;
}

static void search(struct http_request *req, void *user)
{
    struct app *app = user;
    if (route_is_patch_collection(req, app)) { /* patch search: routes_patch.c */
        route_patch_search(req, app);
        return;
    }
    struct search_ctx *x = route_index_begin(req, app, sizeof *x, search_run, search_free);
    if (!x) return;
    char why[ERR_LEN] = "";
    json_t *queries = json_object_get(x->base.body, "queries");
    x->batch = queries != NULL;
    if (parse_options(x, why, sizeof why)) {
        http_reply_error(req, 400, NULL, why);
        search_free(x);
        return;
    }
    if (x->batch && (!json_is_array(queries) || !json_array_size(queries))) {
        http_reply_error(req, 400, NULL, "'queries' must be a non-empty array of queries");
        search_free(x);
        return;
    }
    if (x->batch && (json_object_get(x->base.body, "vector") || json_object_get(x->base.body, "image") ||
                     json_object_get(x->base.body, "id"))) {
        http_reply_error(req, 400, NULL, "give either 'queries' (the batch form) or one of "
                         "'image', 'vector' and 'id', not both");
        search_free(x);
        return;
    }
    const int nq = x->batch ? (int)json_array_size(queries) : 1;
    if (x->batch && json_array_size(queries) > (size_t)app->limits.max_search_queries) {
        http_reply_errorf(req, 413, NULL, "%zu queries in one request; the limit is %d",
                          json_array_size(queries), app->limits.max_search_queries);
        search_free(x);
        return;
    }
    if ((long long)nq * x->q.k > SEARCH_HITS_MAX) {
        http_reply_errorf(req, 413, NULL, "%d queries x k %d = %lld hits in one answer; the limit "
                          "is %d: ask for fewer queries per request", nq, x->q.k,
                          (long long)nq * x->q.k, SEARCH_HITS_MAX);
        search_free(x);
        return;
    }
    x->ids = calloc((size_t)nq, sizeof *x->ids);
    x->image = malloc((size_t)nq * sizeof *x->image);
    x->qv = calloc((size_t)nq * (size_t)x->q.w, sizeof *x->qv);
    x->q.nq = nq;
    x->q.ids = x->ids;
    x->q.vectors = x->qv;
    json_t **images = calloc((size_t)nq, sizeof *images);
    char **where = calloc((size_t)nq, sizeof *where);
    int n_images = 0, rc = 0;
    if (!x->ids || !x->image || !x->qv || !images || !where) {
        http_reply_error(req, 500, NULL, "out of memory");
        rc = -1;
    }
    for (int i = 0; !rc && i < nq; i++) {
        json_t *image = NULL;
        x->image[i] = -1;
        if (parse_query(x, x->batch ? json_array_get(queries, (size_t)i) : x->base.body, i, &image,
                        why, sizeof why)) {
            if (x->batch) http_reply_errorf(req, 400, NULL, "queries[%d] %s", i, why);
            else http_reply_errorf(req, 400, NULL, "search %s", why);
            rc = -1;
        } else if (image) {
            char label[48];
            snprintf(label, sizeof label, x->batch ? "queries[%d].image" : "image", i);
            where[n_images] = strdup(label);
            images[n_images] = image;
            x->image[i] = n_images++;
        }
    }
    if (!rc && n_images > 0 && n_images > app->limits.max_images) {
        http_reply_errorf(req, 413, NULL, "%d images in one request; the limit is %d", n_images,
                          app->limits.max_images);
        rc = -1;
    }
    if (!rc && n_images > 0)
        rc = route_images_decode(req, app, images, (const char *const *)where, n_images,
                                 &x->base.im);
    for (int i = 0; where && i < n_images; i++) free(where[i]);
    free(where);
    free(images);
    if (rc) {
        search_free(x);
        return;
    }
    route_index_start(&x->base);
}

int routes_search_register(struct http_router *r, struct app *app, char *err, size_t errlen)
{
    return route_add(r, app, "POST", "/v1/collections/{name}/search", search, err, errlen);
}
