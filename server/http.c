/* libmicrohttpd glue: see http.h for the contract.
 *
 * How a request moves through libmicrohttpd (MHD) here
 *   on_uri        MHD has the request line: the request object is created (it
 *                 becomes MHD's per-request pointer) with two references, one
 *                 for the connection and one for the reply that is owed.
 *   on_access #1  headers are in: the declared body size is checked.
 *   on_access #n  body data: appended under the limit and the deadline.
 *   on_access end the body is complete: dispatch (route, handler) once; then
 *                 queue the reply, or suspend the connection when deferred.
 *   on_access     after a resume: queue the reply the other thread stored.
 *   on_completed  the connection is done with the request: the completion
 *                 hook runs and the connection's reference is dropped.
 * A reply never touches MHD's connection except through
 * MHD_resume_connection of a connection it found suspended; responses are
 * always queued by the access handler on the connection's own thread.
 *
 * Locks: req->lock guards the reply state of one request; srv->lock guards
 * the server's counters and the list of suspended requests. Order: req->lock
 * before srv->lock. No MHD function is called with srv->lock held, and
 * MHD_resume_connection is called with no lock held. */
#include "http.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <linux/tcp.h> /* struct tcp_info with tcpi_bytes_received */
#include <poll.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "errors.h"
#include "clock.h"

#define HTTP_MAX_SEGMENTS 32
#define DEFAULT_MAX_BODY ((size_t)64 << 20)
#define DEFAULT_TIMEOUT_S 30u
#define DEFAULT_MAX_CONNECTIONS 1024u
#define DEFAULT_DRAIN_S 30u
#define FORCED_SETTLE_S 2.0 /* after forced 503s, how long stop waits for them to go out */
#define DEFAULT_HEADER_TIMEOUT_S 10u
#define MIN_BODY_RATE 16384.0 /* bytes/s a body (or a drained one) must average */
#define WATCH_TICK_MS 100
#define MAX_URI_BYTES 8192        /* longer request targets: 414 */
#define MAX_HEAD_BYTES 32768      /* larger request heads: 431 */
/* libmicrohttpd's memory per connection (its default is 32 KiB, and it is
 * all resident): heads up to about 60 KiB reach our own 414/431 checks;
 * larger ones libmicrohttpd refuses itself (see answer_mhd_error). */
#define CONN_MEMORY ((size_t)64 << 10)

/* ---- A per-request arena for the parsed request ----------------------- */

struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    alignas(16) unsigned char data[];
};

static void *arena_alloc(struct arena_block **a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    struct arena_block *b = *a;
    if (!b || b->cap - b->used < n) {
        const size_t cap = n > 4000 ? n : 4000;
        b = malloc(sizeof *b + cap);
        if (!b) return NULL;
        b->next = *a;
        b->used = 0;
        b->cap = cap;
        *a = b;
    }
    void *p = b->data + b->used;
    b->used += n;
    return p;
}

static char *arena_strndup(struct arena_block **a, const char *s, size_t n)
{
    char *d = arena_alloc(a, n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

static void arena_free(struct arena_block *a)
{
    while (a) {
        struct arena_block *next = a->next;
        free(a);
        a = next;
    }
}

/* ---- Router ----------------------------------------------------------- */

struct route_seg {
    char *lit;   /* literal text, or NULL for a parameter */
    char *param; /* parameter name */
};

struct route {
    char *method;
    char *pattern;
    struct route_seg *segs;
    size_t nseg;
    http_handler_fn fn;
    void *user;
};

struct http_router {
    struct route *routes;
    size_t n, cap;
};

struct http_router *http_router_new(void)
{
    return calloc(1, sizeof(struct http_router));
}

static void route_clear(struct route *rt)
{
    for (size_t i = 0; i < rt->nseg; i++) {
        free(rt->segs[i].lit);
        free(rt->segs[i].param);
    }
    free(rt->segs);
    free(rt->method);
    free(rt->pattern);
}

void http_router_free(struct http_router *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->n; i++) route_clear(&r->routes[i]);
    free(r->routes);
    free(r);
}

static bool is_token_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool is_param_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '_';
}

static bool same_shape(const struct route *a, const struct route *b)
{
    if (a->nseg != b->nseg) return false;
    for (size_t i = 0; i < a->nseg; i++) {
        const char *la = a->segs[i].lit, *lb = b->segs[i].lit;
        if ((la == NULL) != (lb == NULL)) return false;
        if (la && strcmp(la, lb) != 0) return false;
    }
    return true;
}

int http_router_add(struct http_router *r, const char *method, const char *pattern,
                    http_handler_fn fn, void *user, char *err, size_t errlen)
{
    if (!r || !method || !pattern || !fn)
        return set_err(err, errlen, "http_router_add: router, method, pattern and handler "
                                    "are required");
    if (!method[0]) return set_err(err, errlen, "route %s: empty method", pattern);
    for (const char *m = method; *m; m++)
        if (!is_token_char((unsigned char)*m))
            return set_err(err, errlen, "route %s: method '%s' is not an HTTP token", pattern,
                           method);
    if (pattern[0] != '/')
        return set_err(err, errlen, "route '%s': a pattern starts with '/'", pattern);

    size_t nseg = 1;
    for (const char *p = pattern + 1; *p; p++) nseg += *p == '/';
    if (nseg > HTTP_MAX_SEGMENTS)
        return set_err(err, errlen, "route '%s': more than %d segments", pattern,
                       HTTP_MAX_SEGMENTS);

    struct route rt = {0};
    rt.fn = fn;
    rt.user = user;
    rt.method = strdup(method);
    rt.pattern = strdup(pattern);
    rt.segs = calloc(nseg, sizeof *rt.segs);
    if (!rt.method || !rt.pattern || !rt.segs) {
        route_clear(&rt);
        return set_err(err, errlen, "route '%s': out of memory", pattern);
    }
    const char *s = pattern + 1;
    for (size_t i = 0; i < nseg; i++) {
        const char *e = strchr(s, '/');
        const size_t len = e ? (size_t)(e - s) : strlen(s);
        rt.nseg = i + 1;
        if (len >= 2 && s[0] == '{' && s[len - 1] == '}') {
            if (len == 2) {
                route_clear(&rt);
                return set_err(err, errlen, "route '%s': empty parameter name", pattern);
            }
            for (size_t k = 1; k + 1 < len; k++)
                if (!is_param_char((unsigned char)s[k])) {
                    route_clear(&rt);
                    return set_err(err, errlen,
                                   "route '%s': parameter names use letters, digits and '_'",
                                   pattern);
                }
            rt.segs[i].param = strndup(s + 1, len - 2);
            if (!rt.segs[i].param) {
                route_clear(&rt);
                return set_err(err, errlen, "route '%s': out of memory", pattern);
            }
            for (size_t k = 0; k < i; k++)
                if (rt.segs[k].param && strcmp(rt.segs[k].param, rt.segs[i].param) == 0) {
                    set_err(err, errlen, "route '%s': parameter '%s' appears twice", pattern,
                            rt.segs[i].param);
                    route_clear(&rt);
                    return -1;
                }
        } else {
            if (memchr(s, '{', len) || memchr(s, '}', len) || memchr(s, '%', len) ||
                memchr(s, '?', len)) {
                route_clear(&rt);
                return set_err(err, errlen,
                               "route '%s': a parameter is a whole segment '{name}'; literals "
                               "hold no '{', '}', '%%' or '?'",
                               pattern);
            }
            rt.segs[i].lit = strndup(s, len);
            if (!rt.segs[i].lit) {
                route_clear(&rt);
                return set_err(err, errlen, "route '%s': out of memory", pattern);
            }
        }
        s = e ? e + 1 : s + len;
    }

    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->routes[i].method, method) == 0 && same_shape(&r->routes[i], &rt)) {
            set_err(err, errlen, "route %s %s: clashes with %s %s", method, pattern,
                    r->routes[i].method, r->routes[i].pattern);
            route_clear(&rt);
            return -1;
        }
    if (r->n == r->cap) {
        const size_t cap = r->cap ? 2 * r->cap : 16;
        struct route *nr = realloc(r->routes, cap * sizeof *nr);
        if (!nr) {
            route_clear(&rt);
            return set_err(err, errlen, "route '%s': out of memory", pattern);
        }
        r->routes = nr;
        r->cap = cap;
    }
    r->routes[r->n++] = rt;
    return 0;
}

static bool route_matches(const struct route *rt, char *const *segs, size_t n)
{
    if (rt->nseg != n) return false;
    for (size_t i = 0; i < n; i++) {
        if (rt->segs[i].lit) {
            if (strcmp(rt->segs[i].lit, segs[i]) != 0) return false;
        } else if (!segs[i][0]) {
            return false;
        }
    }
    return true;
}

/* Whether a beats b: a literal at the first segment where they differ in kind. */
static bool more_specific(const struct route *a, const struct route *b)
{
    for (size_t i = 0; i < a->nseg && i < b->nseg; i++) {
        const bool la = a->segs[i].lit != NULL, lb = b->segs[i].lit != NULL;
        if (la != lb) return la;
    }
    return false;
}

static const struct route *route_pick(const struct http_router *r, const char *method,
                                      char *const *segs, size_t n)
{
    const struct route *best = NULL;
    for (size_t i = 0; i < r->n; i++) {
        const struct route *rt = &r->routes[i];
        if (strcmp(rt->method, method) == 0 && route_matches(rt, segs, n) &&
            (!best || more_specific(rt, best)))
            best = rt;
    }
    return best;
}

/* ---- Server and request state ----------------------------------------- */

struct kv {
    const char *k, *v;
    size_t vlen; /* headers: v's length as MHD reports it */
};

struct hdr_node {
    struct hdr_node *next;
    char *name, *value;
};

struct http_server {
    struct MHD_Daemon *daemon;
    atomic_int refs; /* the owner's (until http_stop ends) + one per live request */
    unsigned port;
    size_t max_body;
    unsigned timeout_s, drain_timeout_s;
    const struct http_router *router;
    http_handler_fn head_check;
    void *head_check_user;
    http_complete_fn on_complete;
    void *on_complete_user;
    bool quiet;

    atomic_bool starting;    /* MHD messages are kept in start_log while true */
    char start_log[256];
    atomic_bool stopping;    /* responses carry Connection: close */
    atomic_ullong requests, double_replies;

    pthread_mutex_t lock;
    pthread_cond_t idle;     /* signalled when active drops */
    unsigned active;         /* requests created and not completed */
    unsigned deferred;       /* suspended requests */
    bool hard_stop;          /* drain timed out: deferrals are answered 503 at once */
    struct http_request *susp_head; /* the suspended requests */

    /* The watchdog (see "Connection watchdog"): watch_lock guards the list of
     * connections, their phases and deadlines, and the drains. */
    unsigned header_timeout_s;
    size_t max_drains;
    pthread_mutex_t watch_lock;
    struct conn_watch *watch_head;
    struct drain *drains;
    size_t ndrains;
    pthread_t watchdog;
    bool watchdog_running;
    atomic_bool watchdog_stop;
    int wake[2];             /* a pipe that interrupts the watchdog's poll */
    atomic_uint unwatched;   /* connections without an entry (out of memory) */
    bool owner_unsure;       /* a STARTED ran on another thread than its requests */
};

struct http_request {
    struct http_server *srv;
    atomic_int refs;
    pthread_mutex_t lock;

    /* Parsed state: written on the connection's thread before the handler
     * runs, read-only afterwards. */
    struct arena_block *arena;
    char *raw_uri;      /* malloc'd */
    char *method;       /* malloc'd; NULL until the headers arrived */
    const char *path;   /* decoded */
    const char *query_raw;
    const struct route *route;       /* chosen route (or the first of the path, for 405) */
    struct kv *params, *query, *headers;
    size_t nparams, nquery, nheaders;
    char *body;         /* malloc'd, NUL-terminated; NULL until data or dispatch */
    size_t body_len, body_cap;
    double t_start;

    /* Upload state: the connection's thread only. */
    struct conn_watch *watch; /* the connection's entry; valid until on_completed */
    bool started, dispatched, too_large;
    bool drain;         /* answered early with Connection: close: drain what the
                           client still sends after the connection finished */
    double body_start;
    size_t declared;    /* Content-Length, 0 when none or chunked */
    size_t discarded;
    size_t received;    /* body bytes so far */
    size_t head_bytes;  /* request line and headers, 0 when unknown */
    char **segs;        /* the path's decoded segments (parse_request, at the head) */
    size_t nseg;
    bool chunked;
    int sent_status;

    /* Reply state: guarded by lock. */
    struct MHD_Connection *conn;     /* NULL once the connection finished */
    int fd;                          /* its socket, -1 when unknown (http_client_gone) */
    bool deferred, suspended, replied, forced, forced_settled;
    struct MHD_Response *response;   /* given, not queued yet */
    int status;
    struct hdr_node *extra;          /* headers for the next reply */
    struct http_request *susp_prev, *susp_next;

    void *user;
    void (*user_cleanup)(void *);
};

static void server_unref(struct http_server *srv)
{
    const int prev = atomic_fetch_sub(&srv->refs, 1);
    assert(prev > 0);
    if (prev != 1) return;
    pthread_mutex_destroy(&srv->watch_lock);
    if (srv->wake[0] >= 0) close(srv->wake[0]);
    if (srv->wake[1] >= 0) close(srv->wake[1]);
    pthread_mutex_destroy(&srv->lock);
    pthread_cond_destroy(&srv->idle);
    free(srv);
}

static void free_extra(struct hdr_node *h)
{
    while (h) {
        struct hdr_node *next = h->next;
        free(h->name);
        free(h->value);
        free(h);
        h = next;
    }
}

static void request_free(struct http_request *req)
{
    if (req->user_cleanup) req->user_cleanup(req->user);
    if (req->response) MHD_destroy_response(req->response);
    free_extra(req->extra);
    free(req->body);
    arena_free(req->arena);
    free(req->raw_uri);
    free(req->method);
    pthread_mutex_destroy(&req->lock);
    struct http_server *srv = req->srv;
    free(req);
    server_unref(srv);
}

void http_request_ref(struct http_request *req)
{
    const int prev = atomic_fetch_add(&req->refs, 1);
    assert(prev > 0); /* only a holder may take another reference */
    (void)prev;
}

void http_request_unref(struct http_request *req)
{
    if (!req) return;
    const int prev = atomic_fetch_sub(&req->refs, 1);
    assert(prev > 0);
    if (prev == 1) request_free(req);
}

/* srv->lock held. */
static void susp_remove(struct http_server *srv, struct http_request *req)
{
    if (req->susp_prev) req->susp_prev->susp_next = req->susp_next;
    else srv->susp_head = req->susp_next;
    if (req->susp_next) req->susp_next->susp_prev = req->susp_prev;
    req->susp_prev = req->susp_next = NULL;
    srv->deferred--;
}

/* ---- Responses ---------------------------------------------------------- */

static bool header_text_ok(const char *s, bool name)
{
    if (!s || (name && !s[0])) return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '\r' || *p == '\n') return false;
        if (name && (*p == ':' || !is_token_char(*p))) return false;
    }
    return true;
}

/* Builds a response over body (taken when take: freed by MHD, or here on
 * failure), with a Content-Type, headers and the request's extra headers
 * (detached from req). NULL on allocation failure. */
static struct MHD_Response *make_response(struct http_request *req, const void *body,
                                          size_t len, bool take, const char *content_type,
                                          const struct http_header *headers)
{
    struct MHD_Response *resp;
    if (take && body) {
        resp = MHD_create_response_from_buffer_with_free_callback(len, (void *)body, free);
        if (!resp) free((void *)body);
    } else if (len == 0) {
        resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    } else {
        resp = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    }

    pthread_mutex_lock(&req->lock);
    struct hdr_node *extra = req->extra;
    req->extra = NULL;
    pthread_mutex_unlock(&req->lock);

    if (resp) {
        if (content_type && header_text_ok(content_type, false))
            MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
        for (const struct http_header *h = headers; h && h->name; h++)
            if (header_text_ok(h->name, true) && header_text_ok(h->value, false))
                MHD_add_response_header(resp, h->name, h->value);
        for (const struct hdr_node *h = extra; h; h = h->next)
            MHD_add_response_header(resp, h->name, h->value);
    }
    free_extra(extra);
    return resp;
}

static void log_msg(const struct http_server *srv, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void log_msg(const struct http_server *srv, const char *fmt, ...)
{
    if (srv->quiet) return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "http: %s\n", buf);
}

/* With req->lock held and the reply not given yet: records status, attaches
 * *resp to a live connection (taking it; *resp becomes NULL) and, if the
 * connection was suspended, returns it for the caller to resume after
 * unlocking. */
static struct MHD_Connection *attach_reply_locked(struct http_request *req, int status,
                                                  struct MHD_Response **resp)
{
    struct http_server *srv = req->srv;
    struct MHD_Connection *resume = NULL;
    req->replied = true;
    req->status = status;
    if (req->conn) {
        req->response = *resp;
        *resp = NULL;
        if (req->suspended) {
            req->suspended = false;
            resume = req->conn;
            pthread_mutex_lock(&srv->lock);
            susp_remove(srv, req);
            pthread_mutex_unlock(&srv->lock);
        }
    }
    return resume;
}

/* Gives the reply (resp may be NULL after an allocation failure: the
 * connection then closes). Exactly once; see http.h. */
static int give_reply(struct http_request *req, int status, struct MHD_Response *resp)
{
    struct http_server *srv = req->srv;
    pthread_mutex_lock(&req->lock);
    if (req->replied) {
        const bool settle = req->forced && !req->forced_settled;
        if (settle) req->forced_settled = true;
        else atomic_fetch_add(&srv->double_replies, 1);
        pthread_mutex_unlock(&req->lock);
        if (resp) MHD_destroy_response(resp);
        if (settle) {
            http_request_unref(req); /* the owed reply's reference, kept by the forced 503 */
            return 0;
        }
        log_msg(srv, "a second reply (%d) to %s %s was ignored", status,
                req->method ? req->method : "?", req->path ? req->path : req->raw_uri);
        return -1;
    }
    const bool had_response = resp != NULL;
    struct MHD_Connection *resume = attach_reply_locked(req, status, &resp);
    const bool ok = had_response;
    pthread_mutex_unlock(&req->lock);
    if (resp) MHD_destroy_response(resp); /* the connection is gone */
    if (resume) MHD_resume_connection(resume);
    http_request_unref(req);
    return ok ? 0 : -1;
}

static int check_status(const struct http_request *req, int status)
{
    if (status >= 100 && status <= 599) return status;
    log_msg(req->srv, "reply with invalid status %d turned into 500", status);
    return 500;
}

int http_reply(struct http_request *req, int status, const char *content_type, const void *body,
               size_t len, const struct http_header *headers)
{
    if (!req) return -1;
    status = check_status(req, status);
    return give_reply(req, status, make_response(req, body, len, false, content_type, headers));
}

int http_reply_take(struct http_request *req, int status, const char *content_type, void *body,
                    size_t len, const struct http_header *headers)
{
    if (!req) {
        free(body);
        return -1;
    }
    status = check_status(req, status);
    return give_reply(req, status, make_response(req, body, len, true, content_type, headers));
}

const char *http_error_type(int status)
{
    switch (status) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found";
    case 405: return "method_not_allowed";
    case 409: return "conflict";
    case 413: return "request_too_large";
    case 415: return "unsupported_media_type";
    case 422: return "invalid_request_error";
    case 429: return "rate_limit_exceeded";
    case 503: return "unavailable";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

/* A JSON string of s; bytes >= 0x80 become '?' when s is not valid UTF-8. */
static json_t *lossy_string(const char *s)
{
    json_t *j = json_string(s);
    if (j) return j;
    char *copy = strdup(s);
    if (!copy) return NULL;
    for (char *p = copy; *p; p++)
        if ((unsigned char)*p >= 0x80) *p = '?';
    j = json_string(copy);
    free(copy);
    return j;
}

/* The serialised error body (malloc'd), or NULL. */
static char *error_body(int status, const char *type, const char *message)
{
    json_t *inner = json_object();
    json_t *root = json_object();
    if (inner && root && json_object_set_new(inner, "message", lossy_string(message)) == 0 &&
        json_object_set_new(inner, "type", lossy_string(type)) == 0 &&
        json_object_set_new(inner, "code", json_integer(status)) == 0 &&
        json_object_set(root, "error", inner) == 0) {
        char *s = json_dumps(root, JSON_COMPACT);
        json_decref(inner);
        json_decref(root);
        return s;
    }
    json_decref(inner);
    json_decref(root);
    return NULL;
}

int http_reply_error(struct http_request *req, int status, const char *type,
                     const char *message)
{
    if (!req) return -1;
    status = check_status(req, status);
    if (!type) type = http_error_type(status);
    if (!message) message = "";
    char *body = error_body(status, type, message);
    if (!body) return give_reply(req, status, make_response(req, NULL, 0, true, NULL, NULL));
    return http_reply_take(req, status, "application/json", body, strlen(body), NULL);
}

int http_reply_errorf(struct http_request *req, int status, const char *type, const char *fmt,
                      ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return http_reply_error(req, status, type, msg);
}

int http_reply_json(struct http_request *req, int status, json_t *json)
{
    if (!req) {
        json_decref(json);
        return -1;
    }
    char *s = json ? json_dumps(json, JSON_COMPACT) : NULL;
    json_decref(json);
    if (!s) return http_reply_error(req, 500, NULL, "the response could not be serialised");
    return http_reply_take(req, status, "application/json", s, strlen(s), NULL);
}

int http_add_header(struct http_request *req, const char *name, const char *value)
{
    if (!header_text_ok(name, true) || !header_text_ok(value, false)) return -1;
    struct hdr_node *h = calloc(1, sizeof *h);
    if (!h) return -1;
    h->name = strdup(name);
    h->value = strdup(value);
    if (!h->name || !h->value) {
        free_extra(h);
        return -1;
    }
    pthread_mutex_lock(&req->lock);
    if (req->replied) {
        pthread_mutex_unlock(&req->lock);
        free_extra(h);
        return -1;
    }
    struct hdr_node **tail = &req->extra;
    while (*tail) tail = &(*tail)->next;
    *tail = h;
    pthread_mutex_unlock(&req->lock);
    return 0;
}

void http_defer(struct http_request *req)
{
    pthread_mutex_lock(&req->lock);
    req->deferred = true;
    pthread_mutex_unlock(&req->lock);
}

/* Answers a request 503 on behalf of its handler during a hard stop. The
 * owed reply's reference stays for the handler's late reply to settle. */
static void force_503(struct http_request *req)
{
    char *body = error_body(503, http_error_type(503), "the server is shutting down");
    struct MHD_Response *resp =
        make_response(req, body, body ? strlen(body) : 0, true, "application/json", NULL);
    pthread_mutex_lock(&req->lock);
    struct MHD_Connection *resume = NULL;
    if (!req->replied) {
        req->forced = true;
        resume = attach_reply_locked(req, 503, &resp);
    }
    pthread_mutex_unlock(&req->lock);
    if (resp) MHD_destroy_response(resp);
    if (resume) MHD_resume_connection(resume);
}

bool http_client_gone(struct http_request *req)
{
    pthread_mutex_lock(&req->lock);
    bool gone = req->replied || !req->conn;
    /* Only a suspended connection's socket may be looked at from here: MHD
     * neither reads nor closes it until it is resumed, which takes this lock. */
    if (!gone && req->suspended && req->fd >= 0) {
        char c;
        const ssize_t n = recv(req->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
        gone = n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
    }
    pthread_mutex_unlock(&req->lock);
    return gone;
}

/* ---- Accessors ---------------------------------------------------------- */

const char *http_method(const struct http_request *req)
{
    return req->method ? req->method : "";
}

const char *http_path(const struct http_request *req)
{
    return req->path ? req->path : "";
}

const char *http_route(const struct http_request *req)
{
    return req->route ? req->route->pattern : NULL;
}

static const struct kv *kv_get(const struct kv *a, size_t n, const char *k, bool nocase)
{
    if (!k) return NULL;
    for (size_t i = 0; i < n; i++)
        if ((nocase ? strcasecmp(a[i].k, k) : strcmp(a[i].k, k)) == 0) return &a[i];
    return NULL;
}

static const char *kv_find(const struct kv *a, size_t n, const char *k, bool nocase)
{
    const struct kv *e = kv_get(a, n, k, nocase);
    return e ? e->v : NULL;
}

const char *http_param(const struct http_request *req, const char *name)
{
    return kv_find(req->params, req->nparams, name, false);
}

const char *http_query(const struct http_request *req, const char *name)
{
    return kv_find(req->query, req->nquery, name, false);
}

const char *http_query_string(const struct http_request *req)
{
    return req->query_raw ? req->query_raw : "";
}

const char *http_header(const struct http_request *req, const char *name)
{
    return kv_find(req->headers, req->nheaders, name, true);
}

const char *http_header_n(const struct http_request *req, const char *name, size_t *len)
{
    const struct kv *e = kv_get(req->headers, req->nheaders, name, true);
    if (len) *len = e ? e->vlen : 0;
    return e ? e->v : NULL;
}

const char *http_body(const struct http_request *req, size_t *len)
{
    if (len) *len = req->body ? req->body_len : 0;
    return req->body ? req->body : "";
}

void http_set_user(struct http_request *req, void *data, void (*cleanup)(void *data))
{
    pthread_mutex_lock(&req->lock);
    void *old = req->user;
    void (*old_cleanup)(void *) = req->user_cleanup;
    req->user = data;
    req->user_cleanup = cleanup;
    pthread_mutex_unlock(&req->lock);
    if (old_cleanup && (old != data || old_cleanup != cleanup)) old_cleanup(old);
}

void *http_user(const struct http_request *req)
{
    return req->user;
}

/* ---- Parsing the request target ----------------------------------------- */

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes s[0..n) into the arena; plus: '+' is a space. NULL (with *bad set)
 * on a malformed escape or %00, NULL with *bad clear on allocation failure. */
static char *pct_decode(struct arena_block **a, const char *s, size_t n, bool plus, bool *bad)
{
    *bad = false;
    char *out = arena_alloc(a, n + 1);
    if (!out) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        const unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            const int hi = i + 2 < n ? hexval((unsigned char)s[i + 1]) : -1;
            const int lo = i + 2 < n ? hexval((unsigned char)s[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                *bad = true;
                return NULL;
            }
            out[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            out[o++] = plus && c == '+' ? ' ' : (char)c;
        }
    }
    out[o] = '\0';
    return out;
}

struct header_copy {
    struct http_request *req;
    size_t n, cap;
    bool oom;
};

/* Copies a header with the lengths MHD reports, so that code comparing
 * secrets (http_header_n) never relies on a C string's end. (MHD 0.9.75
 * measures values with strlen, so there a value already ends at a NUL.) */
static enum MHD_Result copy_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                   size_t key_size, const char *value, size_t value_size)
{
    (void)kind;
    struct header_copy *hc = cls;
    if (hc->n == hc->cap || !key) return MHD_YES;
    struct http_request *req = hc->req;
    if (!value) value_size = 0;
    char *k = arena_strndup(&req->arena, key, key_size);
    char *v = arena_strndup(&req->arena, value ? value : "", value_size);
    if (!k || !v) {
        hc->oom = true;
        return MHD_NO;
    }
    req->headers[hc->n] = (struct kv){k, v, value_size};
    hc->n++;
    return MHD_YES;
}

/* Splits and decodes the raw target into path, segments and query, and copies
 * the headers. 0, or the status of the error already replied. */
static int parse_request(struct http_request *req, struct MHD_Connection *conn, char ***segs_out,
                         size_t *nseg_out)
{
    const char *raw = req->raw_uri;
    const char *q = strchr(raw, '?');
    const size_t plen = q ? (size_t)(q - raw) : strlen(raw);
    req->query_raw = q ? q + 1 : "";
    bool bad;

    if (plen == 0 || raw[0] != '/') {
        http_reply_error(req, 400, NULL, "the request target must be a path starting with '/'");
        return 400;
    }
    req->path = pct_decode(&req->arena, raw, plen, false, &bad);
    if (!req->path) goto fail;

    size_t nseg = 1;
    for (size_t i = 1; i < plen; i++) nseg += raw[i] == '/';
    char **segs = NULL;
    if (nseg <= HTTP_MAX_SEGMENTS) {
        segs = arena_alloc(&req->arena, nseg * sizeof *segs);
        if (!segs) goto oom;
        const char *s = raw + 1;
        const char *end = raw + plen;
        for (size_t i = 0; i < nseg; i++) {
            const char *e = memchr(s, '/', (size_t)(end - s));
            if (!e) e = end;
            segs[i] = pct_decode(&req->arena, s, (size_t)(e - s), false, &bad);
            if (!segs[i]) goto fail;
            s = e + 1;
        }
    } else {
        nseg = 0; /* matches no route: 404 */
    }

    /* Query arguments: pieces between '&', "k=v" or "k". */
    size_t nq = 0;
    for (const char *p = req->query_raw; *p; p++) nq += *p == '&';
    nq++;
    req->query = arena_alloc(&req->arena, nq * sizeof *req->query);
    if (!req->query) goto oom;
    for (const char *s = req->query_raw; *s;) {
        const char *e = strchr(s, '&');
        if (!e) e = s + strlen(s);
        if (e > s) {
            const char *eq = memchr(s, '=', (size_t)(e - s));
            const char *kend = eq ? eq : e;
            const char *k = pct_decode(&req->arena, s, (size_t)(kend - s), true, &bad);
            if (!k) goto fail;
            const char *v = eq ? pct_decode(&req->arena, eq + 1, (size_t)(e - eq - 1), true, &bad)
                               : arena_strndup(&req->arena, "", 0);
            if (!v) {
                if (eq) goto fail;
                goto oom;
            }
            req->query[req->nquery].k = k;
            req->query[req->nquery].v = v;
            req->nquery++;
        }
        s = *e ? e + 1 : e;
    }

    const int nh = MHD_get_connection_values(conn, MHD_HEADER_KIND, NULL, NULL);
    if (nh > 0) {
        req->headers = arena_alloc(&req->arena, (size_t)nh * sizeof *req->headers);
        if (!req->headers) goto oom;
        struct header_copy hc = {req, 0, (size_t)nh, false};
        MHD_get_connection_values_n(conn, MHD_HEADER_KIND, copy_header, &hc);
        if (hc.oom) goto oom;
        req->nheaders = hc.n;
    }
    *segs_out = segs;
    *nseg_out = nseg;
    return 0;

fail:
    if (bad) {
        http_reply_error(req, 400, NULL,
                         "malformed percent-escape (or %00) in the request path or query");
        return 400;
    }
oom:
    http_reply_error(req, 503, NULL, "out of memory");
    return 503;
}

/* Replies 405 with an Allow header listing the methods of every route of
 * this path (GET implies HEAD). */
static void reply_405(struct http_request *req, char *const *segs, size_t nseg)
{
    const struct http_router *r = req->srv->router;
    char allow[512];
    size_t len = 0;
    bool has_get = false, has_head = false;
    allow[0] = '\0';
    for (size_t i = 0; i < r->n; i++) {
        const struct route *rt = &r->routes[i];
        if (!route_matches(rt, segs, nseg)) continue;
        bool dup = false;
        for (size_t j = 0; j < i; j++)
            if (strcmp(r->routes[j].method, rt->method) == 0 &&
                route_matches(&r->routes[j], segs, nseg))
                dup = true;
        if (dup) continue;
        has_get |= strcmp(rt->method, "GET") == 0;
        has_head |= strcmp(rt->method, "HEAD") == 0;
        const int w = snprintf(allow + len, sizeof allow - len, "%s%s", len ? ", " : "",
                               rt->method);
        if (w < 0 || (size_t)w >= sizeof allow - len) break;
        len += (size_t)w;
    }
    if (has_get && !has_head && len + 6 < sizeof allow) {
        memcpy(allow + len, ", HEAD", 7);
        len += 6;
    }
    http_add_header(req, "Allow", allow);
    http_reply_errorf(req, 405, NULL, "method %s is not allowed on %s; allowed: %s", req->method,
                      req->path, allow);
}

/* ---- Connection watchdog ------------------------------------------------
 *
 * libmicrohttpd's connection timeout restarts with every byte, so a client
 * that drips its head or body one byte at a time holds a connection slot for
 * as long as it likes, and enough of them lock every other client out. So
 * each connection is in a phase with a deadline of its own:
 *   HEAD  from the connection's start, or from the end of its previous
 *         request, until the headers are in: header_timeout_s;
 *   BODY  from the headers until the body is in: timeout_s + bytes so far /
 *         MIN_BODY_RATE, so a body that keeps arriving at that rate is never
 *         cut whatever its size (a large declared size buys no time);
 *   BUSY  handler, deferred reply and response: no deadline here;
 *   CUT   cut, or answered by on_log's hook: left alone.
 * A watchdog thread shuts down the socket of every connection past its
 * deadline; libmicrohttpd then sees it fail and closes it. Entries come and
 * go with libmicrohttpd's STARTED and CLOSED notifications, under
 * watch_lock, and CLOSED is notified before libmicrohttpd closes the
 * descriptor, so the watchdog never touches a closed (or reused) descriptor.
 *
 * The same thread drains connections answered early with "Connection:
 * close" (413 by Content-Length, 414, 431, ...): before libmicrohttpd closes
 * its descriptor a duplicate is taken, and what the client still sends is
 * read and dropped (until EOF, at most 2 x max_body, at MIN_BODY_RATE).
 * Without that, closing with unread data resets the connection and a client
 * still sending its body gets a broken pipe instead of the answer. */

enum conn_phase { PHASE_HEAD, PHASE_BODY, PHASE_BUSY, PHASE_CUT };

struct conn_watch {
    struct conn_watch *prev, *next;
    struct MHD_Connection *conn;
    int fd;
    enum conn_phase phase;
    double deadline;
    /* For on_log's hook: the thread that runs the connection; the request
     * whose request line arrived (on_uri) until it completes; the bytes the
     * earlier requests on the connection took, when known exactly. */
    pthread_t owner;
    struct http_request *req;
    uint64_t rx_base;
    bool rx_exact;
};

struct drain {
    struct drain *next;
    int fd;
    double start;
    size_t bytes;
};

static void watchdog_wake(struct http_server *srv)
{
    const char b = 0;
    if (write(srv->wake[1], &b, 1) < 0) { /* full: it is awake already */
    }
}

static struct conn_watch *watch_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

/* Moves w to phase with deadline (seconds from now; ignored for BUSY). */
static void watch_set(struct http_server *srv, struct conn_watch *w, enum conn_phase phase,
                      double seconds)
{
    if (!w) return;
    pthread_mutex_lock(&srv->watch_lock);
    if (w->phase != PHASE_CUT) {
        w->phase = phase;
        w->deadline = clock_now_s() + seconds;
    }
    pthread_mutex_unlock(&srv->watch_lock);
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct http_server *srv = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        struct conn_watch *w = ci ? calloc(1, sizeof *w) : NULL;
        *socket_context = w;
        if (!w) { /* out of memory: only libmicrohttpd's timeout applies */
            atomic_fetch_add(&srv->unwatched, 1);
            return;
        }
        w->conn = conn;
        w->fd = ci->connect_fd;
        w->phase = PHASE_HEAD;
        w->deadline = clock_now_s() + srv->header_timeout_s;
        w->owner = pthread_self(); /* STARTED runs on the connection's own thread */
        w->rx_exact = true;
        pthread_mutex_lock(&srv->watch_lock);
        w->next = srv->watch_head;
        if (w->next) w->next->prev = w;
        srv->watch_head = w;
        pthread_mutex_unlock(&srv->watch_lock);
        return;
    }
    struct conn_watch *w = *socket_context;
    if (!w) {
        atomic_fetch_sub(&srv->unwatched, 1);
        return;
    }
    *socket_context = NULL;
    pthread_mutex_lock(&srv->watch_lock);
    if (w->prev) w->prev->next = w->next;
    else srv->watch_head = w->next;
    if (w->next) w->next->prev = w->prev;
    pthread_mutex_unlock(&srv->watch_lock);
    free(w);
}

/* Hands a duplicate of fd (still open: called before libmicrohttpd closes
 * it) to the watchdog to drain. */
static void drain_start(struct http_server *srv, int fd)
{
    struct drain *d = malloc(sizeof *d);
    if (!d) return;
    pthread_mutex_lock(&srv->watch_lock);
    const int dup = srv->ndrains < srv->max_drains ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
    if (dup >= 0) {
        *d = (struct drain){.fd = dup, .start = clock_now_s(), .bytes = 0, .next = srv->drains};
        srv->drains = d;
        srv->ndrains++;
    }
    pthread_mutex_unlock(&srv->watch_lock);
    /* Once listed, d is the watchdog's: it may already have drained and freed
     * it, so decide from the local copy (reading d->fd here freed it twice). */
    if (dup < 0) free(d);
    else watchdog_wake(srv);
}

/* Reads and drops what d has; true when it is done (EOF, error, or over the
 * allowance). */
static bool drain_read(struct http_server *srv, struct drain *d, char *sink, size_t len)
{
    for (;;) {
        const ssize_t r = recv(d->fd, sink, len, MSG_DONTWAIT);
        if (r > 0) {
            d->bytes += (size_t)r;
            if (d->bytes > 2 * srv->max_body) return true;
            continue;
        }
        if (r < 0 && errno == EINTR) continue;
        return r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
    }
}

/* watch_lock held. */
static void drain_remove(struct http_server *srv, struct drain *d)
{
    struct drain **pp = &srv->drains;
    while (*pp != d) pp = &(*pp)->next;
    *pp = d->next;
    srv->ndrains--;
    close(d->fd);
    free(d);
}

/* Cuts connections past their deadline and ends drains past theirs. */
static void watch_tick(struct http_server *srv)
{
    const double now = clock_now_s();
    unsigned cut = 0;
    pthread_mutex_lock(&srv->watch_lock);
    for (struct conn_watch *w = srv->watch_head; w; w = w->next)
        if ((w->phase == PHASE_HEAD || w->phase == PHASE_BODY) && now > w->deadline) {
            /* An idle keep-alive connection (no request line yet) ends quietly;
             * a head or body that arrives too slowly is worth a line. */
            cut += w->phase == PHASE_BODY || w->req;
            shutdown(w->fd, SHUT_RDWR);
            w->phase = PHASE_CUT;
        }
    for (struct drain *d = srv->drains, *next; d; d = next) {
        next = d->next;
        if (now > d->start + srv->timeout_s + (double)d->bytes / MIN_BODY_RATE)
            drain_remove(srv, d);
    }
    pthread_mutex_unlock(&srv->watch_lock);
    if (cut) log_msg(srv, "closed %u connection(s) whose head or body arrived too slowly", cut);
}

/* Polls the drains (and the wake pipe) between ticks. */
static void *watchdog_main(void *arg)
{
    struct http_server *srv = arg;
    enum { SINK = 1 << 16 };
    char *sink = malloc(SINK);
    struct pollfd *pfd = NULL;
    struct drain **pd = NULL;
    size_t cap = 0;
    double next_tick = clock_now_s();
    while (sink && !atomic_load(&srv->watchdog_stop)) {
        pthread_mutex_lock(&srv->watch_lock);
        if (srv->ndrains + 1 > cap) {
            const size_t ncap = 2 * (srv->ndrains + 1);
            struct pollfd *np = realloc(pfd, ncap * sizeof *np);
            if (np) pfd = np;
            struct drain **nd = np ? realloc(pd, ncap * sizeof *nd) : NULL;
            if (nd) pd = nd;
            if (np && nd) cap = ncap;
        }
        size_t n = 0;
        if (cap) {
            pfd[n++] = (struct pollfd){.fd = srv->wake[0], .events = POLLIN};
            for (struct drain *d = srv->drains; d && n < cap; d = d->next) {
                pd[n] = d;
                pfd[n++] = (struct pollfd){.fd = d->fd, .events = POLLIN};
            }
        }
        pthread_mutex_unlock(&srv->watch_lock);

        double wait = next_tick - clock_now_s();
        if (wait < 0) wait = 0;
        if (n) poll(pfd, n, (int)(wait * 1000) + 1);
        else usleep((useconds_t)(wait * 1e6) + 1000);
        if (n && pfd[0].revents) /* only wakes us: empty it */
            while (read(srv->wake[0], sink, SINK) > 0) {
            }
        /* Only this thread removes drains, so pd[] is still valid. */
        for (size_t i = 1; i < n; i++)
            if (pfd[i].revents && drain_read(srv, pd[i], sink, SINK)) {
                pthread_mutex_lock(&srv->watch_lock);
                drain_remove(srv, pd[i]);
                pthread_mutex_unlock(&srv->watch_lock);
            }
        if (clock_now_s() >= next_tick) {
            watch_tick(srv);
            next_tick = clock_now_s() + WATCH_TICK_MS / 1000.0;
        }
    }
    free(sink);
    free(pfd);
    free(pd);
    return NULL;
}

/* Writes a complete JSON error response on fd, past libmicrohttpd. */
static void send_error_raw(int fd, int status, const char *message)
{
    char *body = error_body(status, http_error_type(status), message);
    if (!body) return;
    const size_t blen = strlen(body);
    const char *reason = MHD_get_reason_phrase_for((unsigned)status);
    char head[256];
    const int hl = snprintf(head, sizeof head,
                            "HTTP/1.1 %d %s\r\nConnection: close\r\n"
                            "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                            status, reason && reason[0] ? reason : "Error", blen);
    if (hl > 0 && (size_t)hl < sizeof head && send(fd, head, (size_t)hl, MSG_NOSIGNAL | MSG_DONTWAIT | MSG_MORE) == hl)
        if (send(fd, body, blen, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) { /* the client is gone */
        }
    free(body);
}

/* Whether w may be a connection libmicrohttpd is refusing while it reads a
 * head: still open on our side (one it closed has sent its FIN), and
 * libmicrohttpd read bytes from it that no earlier request took (or might
 * have): bytes received minus those still unread, an over-estimate as the
 * unread count is taken first. */
static bool has_unparsed_bytes(const struct conn_watch *w)
{
    enum { ESTABLISHED = 1, CLOSE_WAIT = 8 }; /* Linux's TCP states */
    int unread = 0;
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    memset(&ti, 0, sizeof ti);
    if (ioctl(w->fd, FIONREAD, &unread) != 0 || unread < 0 ||
        getsockopt(w->fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0 ||
        len < offsetof(struct tcp_info, tcpi_bytes_received) + sizeof ti.tcpi_bytes_received)
        return true;
    if (ti.tcpi_state != ESTABLISHED && ti.tcpi_state != CLOSE_WAIT) return false;
    return !w->rx_exact || ti.tcpi_bytes_received - (uint64_t)unread > w->rx_base;
}

/* watch_lock held; the connection of this thread that libmicrohttpd is
 * refusing, or NULL when that is not certain. It refuses a connection while
 * parsing its request line, its headers or its chunked body, so the
 * connection is in HEAD phase with a request line and parsed headers, in
 * HEAD phase with bytes no earlier request took, or in BODY phase.
 * libmicrohttpd hands parsed headers to the access handler in the same pass,
 * so a connection of the first kind can only be the refused one; otherwise it
 * must be the only connection of this thread of the other two kinds. */
static struct conn_watch *refused_connection(struct http_server *srv)
{
    const pthread_t self = pthread_self();
    struct conn_watch *parsed = NULL, *other = NULL;
    unsigned nparsed = 0, nother = 0;
    if (atomic_load(&srv->unwatched)) return NULL; /* it may be one of those */
    for (struct conn_watch *w = srv->watch_head; w; w = w->next) {
        if (!pthread_equal(w->owner, self)) continue;
        if (w->phase == PHASE_HEAD && w->req &&
            MHD_get_connection_info(w->conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE)) {
            parsed = w;
            nparsed++;
        } else if (w->phase == PHASE_BODY || (w->phase == PHASE_HEAD && has_unparsed_bytes(w))) {
            other = w;
            nother++;
        }
    }
    if (nparsed) return nparsed == 1 ? parsed : NULL;
    /* The refused connection's owner comes from STARTED; checked by on_uri. */
    return nother == 1 && !srv->owner_unsure ? other : NULL;
}

static const char *refusal_message(int status, bool in_body, const char *content_length,
                                   char *buf, size_t len)
{
    if (in_body) return "the chunked request body is malformed";
    switch (status) {
    case 505: return "the HTTP version is not supported (use HTTP/1.1)";
    case 414: return "the request target is too long";
    case 431: return "the request head is too large";
    case 400:
    case 413:
        if (content_length) {
            snprintf(buf, len, "Content-Length '%.64s' is %s", content_length,
                     status == 413 ? "too large" : "not a valid length");
            return buf;
        }
        return status == 413 ? "the request is too large"
                             : "the request line or a header is malformed";
    default: return "the request head could not be processed";
    }
}

/* libmicrohttpd refuses some requests itself before any callback: bad
 * request lines, unsupported versions, heads too big for its buffer, a bad
 * Content-Length. It answers with an HTML page (and, for a bad
 * Content-Length, writes its status line and headers twice), and it logs
 * "Error processing request" just before. This answers that connection with
 * our JSON error instead and shuts its sending side, so libmicrohttpd's page
 * fails to go out and the connection closes; what the client still sends is
 * drained. When the connection is not certain, libmicrohttpd's page goes
 * out unchanged. */
static void answer_mhd_error(struct http_server *srv, int status)
{
    pthread_mutex_lock(&srv->watch_lock);
    struct conn_watch *w = refused_connection(srv);
    const bool in_body = w && w->phase == PHASE_BODY;
    if (w) w->phase = PHASE_CUT;
    pthread_mutex_unlock(&srv->watch_lock);
    if (!w) return;
    /* This thread runs w's connection, so w and its request stay valid here. */
    const char *cl = w->req ? MHD_lookup_connection_value(w->conn, MHD_HEADER_KIND,
                                                          MHD_HTTP_HEADER_CONTENT_LENGTH)
                            : NULL;
    char buf[160];
    send_error_raw(w->fd, status, refusal_message(status, in_body, cl, buf, sizeof buf));
    if (w->req) w->req->sent_status = status;
    drain_start(srv, w->fd);
    shutdown(w->fd, SHUT_WR);
}

/* ---- MHD callbacks ------------------------------------------------------ */

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    struct http_server *srv = cls;
    struct http_request *req = calloc(1, sizeof *req);
    if (!req) return NULL;
    req->raw_uri = strdup(uri ? uri : "");
    if (!req->raw_uri || pthread_mutex_init(&req->lock, NULL) != 0) {
        free(req->raw_uri);
        free(req);
        return NULL;
    }
    atomic_init(&req->refs, 2); /* the connection's, and the owed reply's */
    req->fd = -1;
    req->srv = srv;
    req->t_start = clock_now_s();
    atomic_fetch_add(&srv->refs, 1);
    atomic_fetch_add(&srv->requests, 1);
    pthread_mutex_lock(&srv->lock);
    srv->active++;
    pthread_mutex_unlock(&srv->lock);
    req->watch = watch_of(conn);
    if (req->watch) {
        pthread_mutex_lock(&srv->watch_lock);
        req->watch->req = req;
        if (!pthread_equal(req->watch->owner, pthread_self())) {
            req->watch->owner = pthread_self();
            srv->owner_unsure = true;
        }
        pthread_mutex_unlock(&srv->watch_lock);
    }
    return req;
}

/* Queues the reply stored on req. */
static enum MHD_Result queue_pending(struct http_request *req, struct MHD_Connection *conn)
{
    pthread_mutex_lock(&req->lock);
    struct MHD_Response *resp = req->response;
    const int status = req->status;
    const bool suspended = req->suspended;
    req->response = NULL;
    pthread_mutex_unlock(&req->lock);
    if (!resp) return suspended ? MHD_YES : MHD_NO;
    if (atomic_load(&req->srv->stopping) || req->too_large || req->drain)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    const enum MHD_Result r = MHD_queue_response(conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    if (r == MHD_YES) req->sent_status = status;
    return r;
}

/* Answers an error before the body (if any) is read; the connection closes
 * after it and what the client still sends is drained (on_completed). */
static enum MHD_Result reply_early(struct http_request *req, struct MHD_Connection *conn,
                                   int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static enum MHD_Result answer_early(struct http_request *req, struct MHD_Connection *conn)
{
    req->dispatched = true;
    req->drain = true;
    watch_set(req->srv, req->watch, PHASE_BUSY, 0);
    return queue_pending(req, conn);
}

static enum MHD_Result reply_early(struct http_request *req, struct MHD_Connection *conn,
                                   int status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    http_reply_error(req, status, NULL, msg);
    return answer_early(req, conn);
}

static bool has_reply(struct http_request *req)
{
    pthread_mutex_lock(&req->lock);
    const bool replied = req->replied;
    pthread_mutex_unlock(&req->lock);
    return replied;
}

/* What libmicrohttpd lets through but the contract refuses: 0, or the
 * status of the early answer given. */
static int check_head(struct http_request *req, struct MHD_Connection *conn,
                      const char *version, enum MHD_Result *r)
{
    const bool v11 = version && strcmp(version, MHD_HTTP_VERSION_1_1) == 0;
    if (!v11 && !(version && strcmp(version, MHD_HTTP_VERSION_1_0) == 0)) {
        *r = reply_early(req, conn, 505, "HTTP version '%.32s' is not supported (use HTTP/1.1)",
                         version ? version : "");
        return 505;
    }
    const size_t ulen = strlen(req->raw_uri);
    if (ulen > MAX_URI_BYTES) {
        *r = reply_early(req, conn, 414, "the request target of %zu bytes exceeds the limit "
                         "of %d bytes", ulen, MAX_URI_BYTES);
        return 414;
    }
    if (req->head_bytes > MAX_HEAD_BYTES) {
        *r = reply_early(req, conn, 431, "the request head of %zu bytes exceeds the limit "
                         "of %d bytes", req->head_bytes, MAX_HEAD_BYTES);
        return 431;
    }
    if (v11 && !MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST)) {
        *r = reply_early(req, conn, 400, "an HTTP/1.1 request needs a Host header");
        return 400;
    }
    return 0;
}

static enum MHD_Result on_first_call(struct http_server *srv, struct http_request *req,
                                     struct MHD_Connection *conn, const char *method,
                                     const char *version)
{
    req->started = true;
    req->method = strdup(method ? method : "");
    if (!req->method) return MHD_NO;
    pthread_mutex_lock(&req->lock);
    req->conn = conn;
    pthread_mutex_unlock(&req->lock);
    req->body_start = clock_now_s();
    watch_set(srv, req->watch, PHASE_BODY, srv->timeout_s);
    const union MHD_ConnectionInfo *hs =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    req->head_bytes = hs ? hs->header_size : 0;
    enum MHD_Result r;
    if (check_head(req, conn, version, &r) != 0) return r;
    /* Path, query and headers are all in the head: parsed now, so that the
     * head check (API keys) refuses a request before its body is read. */
    if (parse_request(req, conn, &req->segs, &req->nseg) != 0) return answer_early(req, conn);
    if (srv->head_check) {
        srv->head_check(req, srv->head_check_user);
        if (has_reply(req)) return answer_early(req, conn);
    }

    const char *te = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_TRANSFER_ENCODING);
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
    req->chunked = te != NULL;
    if (te || !cl) return MHD_YES; /* chunked (or no body): checked as data arrives */
    unsigned long long declared = 0;
    for (const char *p = cl; *p >= '0' && *p <= '9'; p++) {
        if (declared > (~0ULL - 9) / 10) {
            declared = ~0ULL;
            break;
        }
        declared = declared * 10 + (unsigned long long)(*p - '0');
    }
    if (declared > srv->max_body) {
        req->too_large = true;
        return reply_early(req, conn, 413,
                           "the request body of %llu bytes exceeds the limit of %zu bytes",
                           declared, srv->max_body);
    }
    if (declared > 0) {
        req->declared = (size_t)declared;
        const size_t cap = (size_t)(declared < 65536 ? declared : 65536) + 1;
        req->body = malloc(cap);
        if (!req->body) return MHD_NO;
        req->body_cap = cap;
    }
    return MHD_YES;
}

static enum MHD_Result on_body_data(struct http_server *srv, struct http_request *req,
                                    const char *data, size_t *size)
{
    const size_t n = *size;
    *size = 0;
    req->received += n;
    const double allowed = srv->timeout_s + (double)req->received / MIN_BODY_RATE;
    if (clock_now_s() - req->body_start > allowed) {
        log_msg(srv, "%s %s: the body arrived slower than %.0f bytes/s; connection dropped",
                req->method, req->raw_uri, MIN_BODY_RATE);
        return MHD_NO;
    }
    watch_set(srv, req->watch, PHASE_BODY, req->body_start + allowed - clock_now_s());
    if (req->too_large) { /* read on, up to twice the limit in all, to answer 413 */
        req->discarded += n;
        return req->discarded > 2 * srv->max_body ? MHD_NO : MHD_YES;
    }
    if (n > srv->max_body - req->body_len) {
        req->too_large = true;
        req->discarded = req->body_len + n;
        free(req->body);
        req->body = NULL;
        req->body_len = req->body_cap = 0;
        return MHD_YES;
    }
    if (req->body_len + n + 1 > req->body_cap) {
        size_t cap = req->body_cap ? req->body_cap : 16384;
        while (cap < req->body_len + n + 1) cap *= 2;
        if (cap > srv->max_body + 1) cap = srv->max_body + 1;
        if (req->declared && cap > req->declared + 1) cap = req->declared + 1;
        char *b = realloc(req->body, cap);
        if (!b) return MHD_NO;
        req->body = b;
        req->body_cap = cap;
    }
    memcpy(req->body + req->body_len, data, n);
    req->body_len += n;
    req->body[req->body_len] = '\0';
    return MHD_YES;
}

/* Routes and runs the handler. Returns true when the connection was
 * suspended (the reply comes later), false when a reply is stored. */
static bool dispatch(struct http_server *srv, struct http_request *req,
                     struct MHD_Connection *conn)
{
    watch_set(srv, req->watch, PHASE_BUSY, 0);
    if (req->too_large) {
        http_reply_errorf(req, 413, NULL,
                          "the request body exceeds the limit of %zu bytes", srv->max_body);
        return false;
    }
    if (!req->body) {
        req->body = malloc(1);
        if (!req->body) {
            http_reply_error(req, 503, NULL, "out of memory");
            return false;
        }
        req->body[0] = '\0';
        req->body_cap = 1;
    }
    char **segs = req->segs;
    const size_t nseg = req->nseg;

    const struct http_router *r = srv->router;
    const struct route *rt = route_pick(r, req->method, segs, nseg);
    if (!rt && strcmp(req->method, "HEAD") == 0) rt = route_pick(r, "GET", segs, nseg);
    if (!rt) {
        for (size_t i = 0; i < r->n && !req->route; i++)
            if (route_matches(&r->routes[i], segs, nseg)) req->route = &r->routes[i];
        if (req->route) reply_405(req, segs, nseg);
        else http_reply_errorf(req, 404, NULL, "no route for %s", req->path);
        return false;
    }
    req->route = rt;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    req->fd = ci ? (int)ci->connect_fd : -1;
    size_t np = 0;
    for (size_t i = 0; i < rt->nseg; i++) np += rt->segs[i].param != NULL;
    if (np) {
        req->params = arena_alloc(&req->arena, np * sizeof *req->params);
        if (!req->params) {
            http_reply_error(req, 503, NULL, "out of memory");
            return false;
        }
        for (size_t i = 0; i < rt->nseg; i++)
            if (rt->segs[i].param) {
                req->params[req->nparams].k = rt->segs[i].param;
                req->params[req->nparams].v = segs[i];
                req->nparams++;
            }
    }

    rt->fn(req, rt->user);

    pthread_mutex_lock(&req->lock);
    if (!req->replied && req->deferred) {
        pthread_mutex_lock(&srv->lock);
        const bool hard = srv->hard_stop;
        if (!hard) {
            req->suspended = true;
            req->susp_next = srv->susp_head;
            if (srv->susp_head) srv->susp_head->susp_prev = req;
            srv->susp_head = req;
            srv->deferred++;
        }
        pthread_mutex_unlock(&srv->lock);
        if (!hard) {
            MHD_suspend_connection(conn);
            pthread_mutex_unlock(&req->lock);
            return true;
        }
        pthread_mutex_unlock(&req->lock);
        force_503(req);
        return false;
    }
    const bool no_reply = !req->replied;
    pthread_mutex_unlock(&req->lock);
    if (no_reply) {
        log_msg(srv, "handler of %s %s returned without a reply or http_defer", req->method,
                rt->pattern);
        http_reply_error(req, 500, NULL, "the handler gave no reply");
    }
    return false;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version,
                                 const char *upload_data, size_t *upload_data_size,
                                 void **con_cls)
{
    (void)url;
    struct http_server *srv = cls;
    struct http_request *req = *con_cls;
    if (!req) return MHD_NO; /* out of memory in on_uri */
    if (!req->started) return on_first_call(srv, req, conn, method, version);
    if (*upload_data_size) return on_body_data(srv, req, upload_data, upload_data_size);
    if (!req->dispatched) {
        req->dispatched = true;
        if (dispatch(srv, req, conn)) return MHD_YES;
    }
    return queue_pending(req, conn);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)conn;
    struct http_server *srv = cls;
    struct http_request *req = *con_cls;
    if (!req) return;
    *con_cls = NULL;
    struct conn_watch *w = req->watch;
    if (w) { /* the next request's head starts now (keep-alive) */
        pthread_mutex_lock(&srv->watch_lock);
        w->req = NULL;
        if (w->rx_exact && req->head_bytes && !req->chunked && !req->drain)
            w->rx_base += req->head_bytes + req->declared;
        else
            w->rx_exact = false;
        pthread_mutex_unlock(&srv->watch_lock);
        watch_set(srv, w, PHASE_HEAD, srv->header_timeout_s);
        if (req->drain) drain_start(srv, w->fd);
    }

    if (srv->on_complete) {
        const struct http_completion c = {
            .method = req->method ? req->method : "",
            .route = req->route ? req->route->pattern : NULL,
            .status = req->sent_status,
            .seconds = clock_now_s() - req->t_start,
            .ok = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK && req->sent_status != 0,
        };
        srv->on_complete(&c, srv->on_complete_user);
    }

    bool drop_owed = false;
    pthread_mutex_lock(&req->lock);
    req->conn = NULL;
    if (req->suspended) { /* not expected: MHD keeps suspended connections */
        req->suspended = false;
        pthread_mutex_lock(&srv->lock);
        susp_remove(srv, req);
        pthread_mutex_unlock(&srv->lock);
    }
    if (!req->replied && !req->dispatched) { /* no handler ever saw it */
        req->replied = true;
        drop_owed = true;
    }
    pthread_mutex_unlock(&req->lock);

    pthread_mutex_lock(&srv->lock);
    srv->active--;
    pthread_cond_broadcast(&srv->idle);
    pthread_mutex_unlock(&srv->lock);

    if (drop_owed) http_request_unref(req);
    http_request_unref(req);
}

static void on_log(void *cls, const char *fmt, va_list ap)
{
    struct http_server *srv = cls;
    char buf[512];
    vsnprintf(buf, sizeof buf, fmt, ap);
    size_t n = strlen(buf);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) buf[--n] = '\0';
    int status;
    if (sscanf(buf, "Error processing request (HTTP response code is %d", &status) == 1 &&
        status >= 400 && status <= 599 && status != 500)
        answer_mhd_error(srv, status);
    if (atomic_load(&srv->starting)) /* cut to fit */
        snprintf(srv->start_log, sizeof srv->start_log, "%.*s", (int)sizeof srv->start_log - 1, buf);
    if (!srv->quiet) fprintf(stderr, "http: libmicrohttpd: %s\n", buf);
}

/* ---- Start and stop ----------------------------------------------------- */

static int resolve(const char *host, unsigned port, struct sockaddr_storage *ss, bool *v6,
                   bool *any6, char *err, size_t errlen)
{
    char name[256];
    const size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        if (hl - 2 >= sizeof name) return set_err(err, errlen, "host '%s' is too long", host);
        memcpy(name, host + 1, hl - 2);
        name[hl - 2] = '\0';
    } else {
        if (hl >= sizeof name) return set_err(err, errlen, "host '%s' is too long", host);
        memcpy(name, host, hl + 1);
    }
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%u", port);
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    const int rc = getaddrinfo(name, portstr, &hints, &res);
    if (rc != 0)
        return set_err(err, errlen, "host '%s': %s (give an IPv4 or IPv6 address)", host,
                       gai_strerror(rc));
    const struct addrinfo *pick = NULL;
    for (const struct addrinfo *ai = res; ai && !pick; ai = ai->ai_next)
        if (ai->ai_family == AF_INET || ai->ai_family == AF_INET6) pick = ai;
    if (!pick || pick->ai_addrlen > sizeof *ss) {
        freeaddrinfo(res);
        return set_err(err, errlen, "host '%s': no IPv4 or IPv6 address", host);
    }
    memset(ss, 0, sizeof *ss);
    memcpy(ss, pick->ai_addr, pick->ai_addrlen);
    *v6 = pick->ai_family == AF_INET6;
    if (*v6) {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)pick->ai_addr;
        *any6 = IN6_IS_ADDR_UNSPECIFIED(&a6->sin6_addr);
    }
    freeaddrinfo(res);
    return 0;
}

struct http_server *http_start(const struct http_config *cfg, char *err, size_t errlen)
{
    if (!cfg || !cfg->router) {
        set_err(err, errlen, "http_start: a config with a router is required");
        return NULL;
    }
    const char *host = cfg->host && cfg->host[0] ? cfg->host : "127.0.0.1";
    if (cfg->port > 65535) {
        set_err(err, errlen, "port %u is out of range (0..65535)", cfg->port);
        return NULL;
    }
    unsigned threads = cfg->threads;
    if (threads == 0) {
        const long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (unsigned)(n < 64 ? n : 64) : 2;
    }
    if (threads > 1024) {
        set_err(err, errlen, "%u HTTP threads is too many (at most 1024)", threads);
        return NULL;
    }
    const unsigned max_conn = cfg->max_connections ? cfg->max_connections
                                                   : DEFAULT_MAX_CONNECTIONS;
    if (max_conn < threads) { /* MHD splits the limit between its threads */
        set_err(err, errlen, "max connections (%u) must be at least the HTTP threads (%u)",
                max_conn, threads);
        return NULL;
    }
    struct sockaddr_storage ss;
    bool v6 = false, any6 = false;
    if (resolve(host, cfg->port, &ss, &v6, &any6, err, errlen) != 0) return NULL;

    struct http_server *srv = calloc(1, sizeof *srv);
    if (!srv) {
        set_err(err, errlen, "http_start: out of memory");
        return NULL;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    const int cond_rc = pthread_cond_init(&srv->idle, &ca);
    pthread_condattr_destroy(&ca);
    if (cond_rc != 0 || pthread_mutex_init(&srv->lock, NULL) != 0) {
        if (cond_rc == 0) pthread_cond_destroy(&srv->idle);
        free(srv);
        set_err(err, errlen, "http_start: cannot create locks");
        return NULL;
    }
    if (pthread_mutex_init(&srv->watch_lock, NULL) != 0) {
        pthread_mutex_destroy(&srv->lock);
        pthread_cond_destroy(&srv->idle);
        free(srv);
        set_err(err, errlen, "http_start: cannot create locks");
        return NULL;
    }
    srv->wake[0] = srv->wake[1] = -1;
    atomic_init(&srv->refs, 1);
    srv->max_body = cfg->max_body_bytes ? cfg->max_body_bytes : DEFAULT_MAX_BODY;
    if (srv->max_body > SIZE_MAX / 4) srv->max_body = SIZE_MAX / 4;
    srv->timeout_s = cfg->timeout_s ? cfg->timeout_s : DEFAULT_TIMEOUT_S;
    srv->drain_timeout_s = cfg->drain_timeout_s ? cfg->drain_timeout_s : DEFAULT_DRAIN_S;
    srv->header_timeout_s = cfg->header_timeout_s ? cfg->header_timeout_s
                                                  : DEFAULT_HEADER_TIMEOUT_S;
    srv->max_drains = max_conn;
    if (pipe2(srv->wake, O_NONBLOCK | O_CLOEXEC) != 0) {
        srv->wake[0] = srv->wake[1] = -1;
        set_err(err, errlen, "http_start: cannot create a pipe: %s", strerror(errno));
        server_unref(srv);
        return NULL;
    }
    srv->router = cfg->router;
    srv->head_check = cfg->head_check;
    srv->head_check_user = cfg->head_check_user;
    srv->on_complete = cfg->on_complete;
    srv->on_complete_user = cfg->on_complete_user;
    srv->quiet = cfg->quiet;
    atomic_store(&srv->starting, true);

    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (v6) flags |= any6 ? MHD_USE_DUAL_STACK : MHD_USE_IPv6;
    /* A pool of one is not a pool: MHD warns; repeat a harmless option then. */
    const enum MHD_OPTION pool_opt =
        threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_CONNECTION_TIMEOUT;
    const unsigned pool_val = threads > 1 ? threads : srv->timeout_s;
    srv->daemon = MHD_start_daemon(
        flags, (uint16_t)cfg->port, NULL, NULL, on_access, srv,
        MHD_OPTION_EXTERNAL_LOGGER, on_log, srv, /* first, so that it sees every message */
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
        MHD_OPTION_CONNECTION_TIMEOUT, srv->timeout_s,
        MHD_OPTION_CONNECTION_LIMIT, max_conn,
        MHD_OPTION_URI_LOG_CALLBACK, on_uri, srv,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, srv,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, CONN_MEMORY,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, cfg->max_connections_per_ip,
        pool_opt, pool_val,
        MHD_OPTION_END);
    atomic_store(&srv->starting, false);
    if (!srv->daemon) {
        set_err(err, errlen, "cannot listen on %s port %u: %s", host, cfg->port,
                srv->start_log[0] ? srv->start_log : "libmicrohttpd did not start");
        server_unref(srv);
        return NULL;
    }
    if (pthread_create(&srv->watchdog, NULL, watchdog_main, srv) != 0) {
        MHD_stop_daemon(srv->daemon);
        set_err(err, errlen, "http_start: cannot start the watchdog thread");
        server_unref(srv);
        return NULL;
    }
    srv->watchdog_running = true;
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(srv->daemon,
                                                           MHD_DAEMON_INFO_BIND_PORT);
    srv->port = info && info->port ? info->port : cfg->port;
    return srv;
}

unsigned http_port(const struct http_server *srv)
{
    return srv ? srv->port : 0;
}

void http_get_stats(const struct http_server *srv, struct http_stats *st)
{
    memset(st, 0, sizeof *st);
    if (!srv) return;
    st->requests = atomic_load(&srv->requests);
    st->double_replies = atomic_load(&srv->double_replies);
    pthread_mutex_lock((pthread_mutex_t *)&srv->lock);
    st->active = srv->active;
    st->deferred = srv->deferred;
    pthread_mutex_unlock((pthread_mutex_t *)&srv->lock);
}

static void deadline_ts(double t, struct timespec *ts)
{
    ts->tv_sec = (time_t)t;
    ts->tv_nsec = (long)((t - (double)ts->tv_sec) * 1e9);
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* srv->lock held: waits until no request is active or the deadline passes. */
static void wait_idle(struct http_server *srv, double deadline)
{
    struct timespec ts;
    deadline_ts(deadline, &ts);
    while (srv->active > 0 && clock_now_s() < deadline)
        if (pthread_cond_timedwait(&srv->idle, &srv->lock, &ts) == ETIMEDOUT) break;
}

/* After MHD_stop_daemon: no connection is left to watch. */
static void watchdog_stop(struct http_server *srv)
{
    if (srv->watchdog_running) {
        atomic_store(&srv->watchdog_stop, true);
        watchdog_wake(srv);
        pthread_join(srv->watchdog, NULL);
        srv->watchdog_running = false;
    }
    pthread_mutex_lock(&srv->watch_lock);
    while (srv->drains) drain_remove(srv, srv->drains);
    pthread_mutex_unlock(&srv->watch_lock);
}

void http_stop(struct http_server *srv)
{
    if (!srv || atomic_exchange(&srv->stopping, true)) return;
    const MHD_socket lfd = MHD_quiesce_daemon(srv->daemon);
    /* MHD's threads may still hold the descriptor: stop listening now, close
     * after MHD_stop_daemon. */
    if (lfd != MHD_INVALID_SOCKET) shutdown(lfd, SHUT_RDWR);

    pthread_mutex_lock(&srv->lock);
    wait_idle(srv, clock_now_s() + (double)srv->drain_timeout_s);
    if (srv->active > 0) {
        /* From now on a handler that defers is answered 503 at once; those
         * already suspended are answered here (each leaves the list). MHD
         * must not be stopped with a connection still suspended. */
        srv->hard_stop = true;
        size_t forced = 0;
        while (srv->susp_head) {
            struct http_request *r = srv->susp_head;
            http_request_ref(r);
            pthread_mutex_unlock(&srv->lock);
            force_503(r);
            http_request_unref(r);
            forced++;
            pthread_mutex_lock(&srv->lock);
        }
        log_msg(srv, "drain timed out after %u s: %zu deferred request(s) answered 503, "
                     "%u request(s) still active",
                srv->drain_timeout_s, forced, srv->active);
        wait_idle(srv, clock_now_s() + FORCED_SETTLE_S);
    }
    pthread_mutex_unlock(&srv->lock);

    MHD_stop_daemon(srv->daemon);
    srv->daemon = NULL;
    if (lfd != MHD_INVALID_SOCKET) close(lfd);
    watchdog_stop(srv);
    server_unref(srv);
}
