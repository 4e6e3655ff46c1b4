/* POST /v1/collections/{name}/search: k-NN by image, vector or stored item,
 * exact or through the Matryoshka funnel, with metadata filters; one query or
 * a batch ("queries"). Searches run on the index work queue. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "index/filter.h"
#include "index/search.h"
#include "routes_index.h"

#define FUNNEL_MAX_CANDIDATES 100000

enum query_kind { Q_VECTOR, Q_ID, Q_IMAGE };

struct query {
    enum query_kind kind;
    const char *id;   /* Q_ID: borrowed from the body */
    int image;        /* Q_IMAGE: index in im */
};

struct search_ctx {
    struct http_request *req;
    struct app *app;
    struct coll *c;
    json_t *body;
    bool batch;
    int nq, k, w;            /* queries, k, search width */
    int funnel_width, candidates; /* candidates 0: exact search */
    bool with_metadata, with_vector;
    struct filter *filter;
    struct query *q;
    float *qv;               /* [nq, w] */
    struct coll_images im;
};

static void search_free(struct search_ctx *x)
{
    filter_free(x->filter);
    free(x->q);
    free(x->qv);
    coll_images_free(&x->im);
    json_decref(x->body);
    coll_release(x->c);
    free(x);
}

static json_t *hit_json(const struct search_ctx *x, const struct index_mirror *m,
                        const struct search_hit *h)
{
    json_t *o = json_pack("{s:s, s:f}", "id", h->external_id, "score", (double)h->score);
    if (x->with_metadata) {
        json_t *meta = mirror_payload(m, h->row);
        json_object_set(o, "metadata", meta ? meta : json_null());
    }
    if (x->with_vector) {
        const float *v = mirror_row_vector(m, h->row);
        json_t *arr = json_array();
        for (int i = 0; i < mirror_width(m); i++) json_array_append_new(arr, json_real(v[i]));
        json_object_set_new(o, "vector", arr);
    }
    return o;
}

/* Replaces each hit's indexed vector (unit length for cosine) by the vector as
 * stored, read from SQLite after the mirror's lock was released; a hit deleted
 * meanwhile keeps the indexed one. */
static void stored_vectors(const struct search_ctx *x, json_t *answer)
{
    json_t *batch = json_object_get(answer, "batch"), *one, *hit;
    size_t i, j;
    json_t *single = json_pack("[O]", answer);
    json_array_foreach(batch ? batch : single, i, one) {
        json_array_foreach(json_object_get(one, "results"), j, hit) {
            struct item_out it;
            char err[ERR_LEN];
            if (store_item_get(index_store(x->c->ix), x->c->info.id,
                               json_string_value(json_object_get(hit, "id")), &it, err,
                               sizeof err))
                continue;
            json_t *vec = json_array();
            for (size_t d = 0; d < it.dim; d++) json_array_append_new(vec, json_real(it.vector[d]));
            json_object_set_new(hit, "vector", vec);
            store_item_free(&it);
        }
    }
    json_decref(single);
}

static void search_run(void *arg)
{
    struct search_ctx *x = arg;
    char err[ERR_LEN] = "";
    int status = 0;
    json_t *answer = NULL;
    struct search_hit *hits = malloc((size_t)x->nq * (size_t)x->k * sizeof *hits);
    uint8_t *mask = NULL;
    struct index_mirror *m = coll_read_begin(x->c);
    const size_t n = mirror_count(m);
    if (!hits) status = 500, snprintf(err, sizeof err, "out of memory");
    for (int i = 0; !status && i < x->nq; i++) { /* stored items and images as queries */
        float *dst = x->qv + (size_t)i * x->w;
        if (x->q[i].kind == Q_IMAGE) {
            memcpy(dst, x->im.vectors + (size_t)x->q[i].image * x->c->info.width,
                   (size_t)x->w * sizeof *dst);
        } else if (x->q[i].kind == Q_ID) {
            const long row = mirror_find(m, x->q[i].id);
            if (row < 0) {
                char shown[64];
                printable_copy(x->q[i].id, strlen(x->q[i].id), shown, sizeof shown);
                status = 404;
                snprintf(err, sizeof err, "no item '%s' in collection '%s'", shown,
                         x->c->info.name);
            } else {
                memcpy(dst, mirror_row_vector(m, (size_t)row), (size_t)x->w * sizeof *dst);
            }
        }
    }
    if (!status && x->filter && n) {
        if (!(mask = malloc(n))) status = 500, snprintf(err, sizeof err, "out of memory");
        for (size_t r = 0; mask && r < n; r++)
            mask[r] = filter_match(x->filter, mirror_payload(m, r));
    }
    int n_out = 0;
    if (!status) {
        const int rc = x->candidates
                           ? search_funnel(m, x->qv, x->nq, x->w, x->k, x->funnel_width,
                                           x->candidates, mask, hits, &n_out, err, sizeof err)
                           : search_exact(m, x->qv, x->nq, x->w, x->k, mask, hits, &n_out, err,
                                          sizeof err);
        if (rc) status = rc == STORE_INVALID ? 400 : 500;
    }
    if (!status) {
        json_t *batch = json_array();
        for (int i = 0; i < x->nq; i++) {
            json_t *results = json_array();
            for (int j = 0; j < n_out; j++)
                json_array_append_new(results, hit_json(x, m, hits + (size_t)i * x->k + j));
            json_array_append_new(batch, json_pack("{s:o}", "results", results));
        }
        if (x->batch) {
            answer = json_pack("{s:o}", "batch", batch);
        } else {
            answer = json_incref(json_array_get(batch, 0));
            json_decref(batch);
        }
    }
    coll_read_end(x->c);
    if (!status && x->with_vector) stored_vectors(x, answer);
    if (status)
        http_reply_error(x->req, status, NULL, err);
    else
        http_reply_json(x->req, 200, answer);
    free(hits);
    free(mask);
    search_free(x);
}

static void search_embedded(void *user, int status, const char *err)
{
    struct search_ctx *x = user;
    if (status != BATCH_OK) {
        reply_batch_error(x->req, status, err);
        search_free(x);
        return;
    }
    search_run(x);
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
    const int width = (int)x->c->info.width;
    if (int_field(x->body, "k", 1, SEARCH_K_MAX, 10, &x->k, why, len) ||
        int_field(x->body, "width", 1, width, width, &x->w, why, len))
        return -1;
    json_t *funnel = json_object_get(x->body, "funnel");
    if (funnel && !json_is_null(funnel)) {
        if (!json_is_object(funnel)) return set_err(why, len, "'funnel' must be an object");
        struct index_mirror *m = coll_read_begin(x->c);
        const int pw = mirror_prefix_width(m);
        const size_t n = mirror_count(m);
        coll_read_end(x->c);
        /* Default shortlist: 10 k, and more for large collections, where the
         * prefix ranks more rows close to the true neighbours. */
        long long cand = 10LL * x->k;
        if ((long long)(n / 2000) > cand) cand = (long long)(n / 2000);
        if (cand > FUNNEL_MAX_CANDIDATES) cand = FUNNEL_MAX_CANDIDATES;
        char fw[ERR_LEN];
        if (int_field(funnel, "width", 1, x->w, pw < x->w ? pw : x->w, &x->funnel_width, fw,
                      sizeof fw) ||
            int_field(funnel, "candidates", 1, FUNNEL_MAX_CANDIDATES, cand,
                      &x->candidates, fw, sizeof fw))
            return set_err(why, len, "funnel: %s", fw);
    }
    json_t *filter = json_object_get(x->body, "filter");
    if (filter && !json_is_null(filter) && filter_compile(filter, &x->filter, why, len)) return -1;
    json_t *include = json_object_get(x->body, "include"), *v;
    size_t i;
    if (include && !json_is_null(include) && !json_is_array(include))
        return set_err(why, len, "'include' must be an array of \"metadata\" and \"vector\"");
    json_array_foreach(include, i, v) {
        const char *s = json_string_value(v);
        if (s && !strcmp(s, "metadata")) x->with_metadata = true;
        else if (s && !strcmp(s, "vector")) x->with_vector = true;
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
    if ((vec != NULL) + (img != NULL) + (id != NULL) != 1)
        return set_err(why, len, "needs exactly one of 'image', 'vector' and 'id'");
    if (vec) {
        x->q[i].kind = Q_VECTOR;
        char vw[256];
        if (json_to_vector(vec, x->w, false, x->qv + (size_t)i * x->w, vw, sizeof vw))
            return set_err(why, len, "'vector' %s", vw);
    } else if (id) {
        if (!json_is_string(id) || !json_string_length(id))
            return set_err(why, len, "'id' must be a non-empty string");
        x->q[i].kind = Q_ID;
        x->q[i].id = json_string_value(id);
    } else {
        if (!json_is_string(img)) return set_err(why, len, "'image' must be a base64 string or a data URI");
        x->q[i].kind = Q_IMAGE;
        *image = img;
    }
    return 0;
}

static void search(struct http_request *req, void *user)
{
    struct app *app = user;
    struct search_ctx *x = calloc(1, sizeof *x);
    if (!x) {
        http_reply_error(req, 500, NULL, "out of memory");
        return;
    }
    x->req = req;
    x->app = app;
    if (!(x->body = json_body(req)) || !(x->c = coll_or_reply(req, app))) {
        search_free(x);
        return;
    }
    char why[ERR_LEN] = "";
    json_t *queries = json_object_get(x->body, "queries");
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
    if (x->batch && (json_object_get(x->body, "vector") || json_object_get(x->body, "image") ||
                     json_object_get(x->body, "id"))) {
        http_reply_error(req, 400, NULL, "give either 'queries' (the batch form) or one of "
                         "'image', 'vector' and 'id', not both");
        search_free(x);
        return;
    }
    x->nq = x->batch ? (int)json_array_size(queries) : 1;
    if (x->batch && json_array_size(queries) > (size_t)app->limits.max_search_queries) {
        http_reply_errorf(req, 413, NULL, "%zu queries in one request; the limit is %d",
                          json_array_size(queries), app->limits.max_search_queries);
        search_free(x);
        return;
    }
    x->q = calloc((size_t)x->nq, sizeof *x->q);
    x->qv = malloc((size_t)x->nq * (size_t)x->w * sizeof *x->qv);
    json_t **images = calloc((size_t)x->nq, sizeof *images);
    char **where = calloc((size_t)x->nq, sizeof *where);
    int n_images = 0, rc = 0;
    if (!x->q || !x->qv || !images || !where) {
        http_reply_error(req, 500, NULL, "out of memory");
        rc = -1;
    }
    for (int i = 0; !rc && i < x->nq; i++) {
        json_t *image = NULL;
        if (parse_query(x, x->batch ? json_array_get(queries, (size_t)i) : x->body, i, &image,
                        why, sizeof why)) {
            if (x->batch) http_reply_errorf(req, 400, NULL, "queries[%d] %s", i, why);
            else http_reply_errorf(req, 400, NULL, "search %s", why);
            rc = -1;
        } else if (image) {
            char label[48];
            snprintf(label, sizeof label, x->batch ? "queries[%d].image" : "image", i);
            where[n_images] = strdup(label);
            images[n_images] = image;
            x->q[i].image = n_images++;
        }
    }
    if (!rc && n_images > 0 && n_images > app->limits.max_images) {
        http_reply_errorf(req, 413, NULL, "%d images in one request; the limit is %d", n_images,
                          app->limits.max_images);
        rc = -1;
    }
    if (!rc && n_images > 0)
        rc = coll_images_decode(req, app, images, (const char *const *)where, n_images, &x->im);
    for (int i = 0; where && i < n_images; i++) free(where[i]);
    free(where);
    free(images);
    if (rc) {
        search_free(x);
        return;
    }
    http_defer(req);
    if (n_images > 0) {
        if (coll_embed(req, app, x->c, &x->im, search_embedded, x)) search_free(x);
    } else if (index_submit(req, app, search_run, x)) {
        search_free(x);
    }
}

int routes_search_register(struct http_router *r, struct app *app, char *err, size_t errlen)
{
    return route_add(r, app, "POST", "/v1/collections/{name}/search", search, err, errlen);
}
