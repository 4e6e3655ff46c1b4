/* server/http: a real server on port 0 driven by raw sockets. */
#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "http.h"
#include "clock.h"

#define MAX_BODY 1024
#define TIMEOUT_S 1

static struct http_server *g_srv;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---- A raw HTTP client --------------------------------------------------- */

struct client {
    int fd;
    size_t len;
    char buf[1 << 16];
};

struct resp {
    int status;        /* -1: connection closed (or timed out) before a full response */
    char head[8192];
    char *body;
    size_t body_len;
};

static int client_open_addr(struct client *c, int family, const char *addr, unsigned port)
{
    c->len = 0;
    c->fd = socket(family, SOCK_STREAM, 0);
    if (c->fd < 0) return -1;
    struct timeval tv = {5, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    const int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int rc;
    if (family == AF_INET6) {
        struct sockaddr_in6 sa = {0};
        sa.sin6_family = AF_INET6;
        sa.sin6_port = htons((uint16_t)port);
        inet_pton(AF_INET6, addr, &sa.sin6_addr);
        rc = connect(c->fd, (struct sockaddr *)&sa, sizeof sa);
    } else {
        struct sockaddr_in sa = {0};
        sa.sin_family = AF_INET;
        sa.sin_port = htons((uint16_t)port);
        inet_pton(AF_INET, addr, &sa.sin_addr);
        rc = connect(c->fd, (struct sockaddr *)&sa, sizeof sa);
    }
    if (rc != 0) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    return 0;
}

static int client_open(struct client *c, unsigned port)
{
    return client_open_addr(c, AF_INET, "127.0.0.1", port);
}

static void client_close(struct client *c)
{
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
}

static int client_send(struct client *c, const void *data, size_t n)
{
    const char *p = data;
    while (n) {
        const ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) {
            if (w < 0 && errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int client_sends(struct client *c, const char *s)
{
    return client_send(c, s, strlen(s));
}

/* Reads more bytes into the buffer; 0 on EOF, timeout or error. */
static size_t client_fill(struct client *c)
{
    if (c->len == sizeof c->buf) return 0;
    for (;;) {
        const ssize_t r = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return 0;
        c->len += (size_t)r;
        return (size_t)r;
    }
}

static const char *head_value(const char *head, const char *name, char *out, size_t outlen)
{
    const size_t nl = strlen(name);
    for (const char *line = strstr(head, "\r\n"); line; line = strstr(line, "\r\n")) {
        line += 2;
        if (strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            const char *v = line + nl + 1;
            while (*v == ' ') v++;
            const char *e = strstr(v, "\r\n");
            size_t n = e ? (size_t)(e - v) : strlen(v);
            if (n >= outlen) n = outlen - 1;
            memcpy(out, v, n);
            out[n] = '\0';
            return out;
        }
    }
    return NULL;
}

static const char *resp_header(const struct resp *r, const char *name)
{
    static _Thread_local char v[1024];
    return head_value(r->head, name, v, sizeof v);
}

static void resp_free(struct resp *r)
{
    free(r->body);
    r->body = NULL;
}

/* Reads one response (head_only: a reply to HEAD, no body). */
static int client_read(struct client *c, struct resp *r, bool head_only)
{
    memset(r, 0, sizeof *r);
    r->status = -1;
    char *end;
    for (;;) {
        end = c->len ? memmem(c->buf, c->len, "\r\n\r\n", 4) : NULL;
        if (end) break;
        if (!client_fill(c)) return -1;
    }
    const size_t hlen = (size_t)(end - c->buf) + 4;
    const size_t copy = hlen < sizeof r->head ? hlen : sizeof r->head - 1;
    memcpy(r->head, c->buf, copy);
    r->head[copy] = '\0';
    int status = -1;
    if (sscanf(r->head, "HTTP/1.%*d %d", &status) != 1) return -1;
    char v[64];
    const char *cl = head_value(r->head, "Content-Length", v, sizeof v);
    size_t blen = 0;
    bool until_close = false;
    if (head_only || status == 204 || status == 304 || status < 200) blen = 0;
    else if (cl) blen = strtoul(cl, NULL, 10);
    else until_close = true;
    for (;;) {
        if (!until_close && c->len - hlen >= blen) break;
        if (!client_fill(c)) {
            if (until_close) {
                blen = c->len - hlen;
                break;
            }
            return -1;
        }
    }
    r->body = malloc(blen + 1);
    memcpy(r->body, c->buf + hlen, blen);
    r->body[blen] = '\0';
    r->body_len = blen;
    memmove(c->buf, c->buf + hlen + blen, c->len - hlen - blen);
    c->len -= hlen + blen;
    r->status = status;
    return 0;
}

/* One request on a fresh connection. */
static int roundtrip(unsigned port, const char *raw, size_t rawlen, struct resp *r)
{
    struct client *c = malloc(sizeof *c);
    memset(r, 0, sizeof *r);
    r->status = -1;
    if (client_open(c, port) != 0) {
        free(c);
        return -1;
    }
    int rc = client_send(c, raw, rawlen);
    const bool head = strncmp(raw, "HEAD ", 5) == 0;
    rc = client_read(c, r, head);
    client_close(c);
    free(c);
    return rc;
}

static int get(unsigned port, const char *target, struct resp *r)
{
    char raw[2048];
    snprintf(raw, sizeof raw, "GET %s HTTP/1.1\r\nHost: t\r\n\r\n", target);
    return roundtrip(port, raw, strlen(raw), r);
}

/* Waits until the peer closes the connection (EOF or reset); seconds waited,
 * or -1 if it stayed open for max_s. */
static double wait_closed(struct client *c, double max_s)
{
    const double t0 = clock_now_s();
    while (clock_now_s() - t0 < max_s) {
        struct pollfd p = {c->fd, POLLIN, 0};
        if (poll(&p, 1, 50) > 0) {
            char b[4096];
            const ssize_t r = recv(c->fd, b, sizeof b, MSG_DONTWAIT);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) return clock_now_s() - t0;
        }
    }
    return -1;
}

static json_t *body_json(const struct resp *r)
{
    return r->body ? json_loadb(r->body, r->body_len, 0, NULL) : NULL;
}

/* Checks an error body: {"error": {"message", "type", "code": status}}. */
static bool is_error_json(const struct resp *r, int status, const char *type)
{
    json_t *j = body_json(r);
    json_t *e = json_object_get(j, "error");
    const bool ok = json_is_object(e) && json_is_string(json_object_get(e, "message")) &&
                    json_is_string(json_object_get(e, "type")) &&
                    json_integer_value(json_object_get(e, "code")) == status &&
                    (!type || strcmp(json_string_value(json_object_get(e, "type")), type) == 0);
    json_decref(j);
    return ok;
}

/* Reads until the server closes (or max_s); whether it closed. */
static bool read_rest(struct client *c, double max_s)
{
    const double t0 = clock_now_s();
    while (clock_now_s() - t0 < max_s && c->len < sizeof c->buf) {
        struct pollfd p = {c->fd, POLLIN, 0};
        if (poll(&p, 1, 50) <= 0) continue;
        const ssize_t r = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, MSG_DONTWAIT);
        if (r > 0) c->len += (size_t)r;
        else if (r == 0 || (errno != EAGAIN && errno != EINTR)) return true;
    }
    return false;
}

/* Sends raw on a fresh connection; the answer must be exactly one JSON error
 * with status (its body exactly Content-Length bytes), then the server
 * closes. */
static void check_refusal(unsigned port, const char *what, const char *raw, size_t len,
                          int status)
{
    struct client *c = malloc(sizeof *c);
    struct resp r = {.status = -1};
    CHECK(client_open(c, port) == 0, "connect");
    client_send(c, raw, len); /* may fail: the server can answer before a huge head is sent */
    const bool got = client_read(c, &r, false) == 0;
    const char *ct = got ? resp_header(&r, "Content-Type") : NULL;
    CHECK(got && r.status == status && ct && strcmp(ct, "application/json") == 0 &&
              is_error_json(&r, status, NULL),
          "%s: a JSON %d, got %d %.80s", what, status, r.status, r.body ? r.body : "");
    const bool closed = read_rest(c, 3);
    CHECK(closed && c->len == 0, "%s: closed right after the answer (%zu more bytes: %.60s)", what,
          c->len, c->buf);
    resp_free(&r);
    client_close(c);
    free(c);
}

static const char *json_str(json_t *j, const char *key)
{
    const char *s = json_string_value(json_object_get(j, key));
    return s ? s : "(null)";
}

/* ---- Completion records ---------------------------------------------------- */

#define MAX_RECORDS 4096
struct record {
    char method[16];
    const char *route;
    int status;
    bool ok;
    double seconds;
};
static struct {
    pthread_mutex_t lock;
    size_t n;
    struct record rec[MAX_RECORDS];
} records = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void on_complete(const struct http_completion *c, void *user)
{
    (void)user;
    pthread_mutex_lock(&records.lock);
    if (records.n < MAX_RECORDS) {
        snprintf(records.rec[records.n].method, sizeof records.rec[0].method, "%s", c->method);
        records.rec[records.n].route = c->route;
        records.rec[records.n].status = c->status;
        records.rec[records.n].ok = c->ok;
        records.rec[records.n].seconds = c->seconds;
        records.n++;
    }
    pthread_mutex_unlock(&records.lock);
}

static size_t count_records(const char *route, int status)
{
    size_t k = 0;
    pthread_mutex_lock(&records.lock);
    for (size_t i = 0; i < records.n; i++) {
        const bool rmatch = route ? records.rec[i].route && strcmp(records.rec[i].route, route) == 0
                                  : records.rec[i].route == NULL;
        if (rmatch && (status < 0 || records.rec[i].status == status)) k++;
    }
    pthread_mutex_unlock(&records.lock);
    return k;
}

/* ---- Test routes -------------------------------------------------------------- */

static void h_sync(struct http_request *req, void *user)
{
    (void)user;
    http_reply_json(req, 200, json_pack("{s:s, s:s}", "hello", "world", "method",
                                        http_method(req)));
}

static void h_echo(struct http_request *req, void *user)
{
    (void)user;
    size_t len;
    const char *body = http_body(req, &len);
    char n[32];
    snprintf(n, sizeof n, "%zu", len);
    const struct http_header hs[] = {{"X-Body-Len", n}, {NULL, NULL}};
    const char *ct = http_header(req, "content-type");
    http_reply(req, 200, ct ? ct : "application/octet-stream", body, len, hs);
}

static unsigned long fnv1a(const char *p, size_t n)
{
    unsigned long h = 1469598103934665603UL;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211UL;
    return h;
}

static void h_digest(struct http_request *req, void *user)
{
    (void)user;
    size_t len;
    const char *body = http_body(req, &len);
    char out[64];
    const int n = snprintf(out, sizeof out, "%zu %lx", len, fnv1a(body, len));
    http_reply(req, 200, "text/plain", out, (size_t)n, NULL);
}

static void h_items(struct http_request *req, void *user)
{
    (void)user;
    http_reply_json(req, 200, json_pack("{s:s, s:s, s:s, s:s}", "id", http_param(req, "id"),
                                        "name", http_param(req, "name"), "route",
                                        http_route(req), "path", http_path(req)));
}

static void h_special(struct http_request *req, void *user)
{
    (void)user;
    http_reply_json(req, 200, json_pack("{s:b, s:s}", "special", 1, "name",
                                        http_param(req, "name")));
}

static json_t *json_str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

static void h_query(struct http_request *req, void *user)
{
    (void)user;
    http_reply_json(req, 200,
                    json_pack("{s:o, s:o, s:o, s:o, s:s}", "a", json_str_or_null(http_query(req, "a")),
                              "b", json_str_or_null(http_query(req, "b")), "flag",
                              json_str_or_null(http_query(req, "flag")), "missing",
                              json_str_or_null(http_query(req, "missing")), "raw",
                              http_query_string(req)));
}

static void h_headers(struct http_request *req, void *user)
{
    (void)user;
    http_reply_json(req, 200,
                    json_pack("{s:o, s:o, s:o, s:o}", "content_type",
                              json_str_or_null(http_header(req, "Content-Type")), "accept",
                              json_str_or_null(http_header(req, "ACCEPT")), "authorization",
                              json_str_or_null(http_header(req, "authorization")), "absent",
                              json_str_or_null(http_header(req, "X-Absent"))));
}

/* Deferred replies from other threads. */
static struct {
    pthread_mutex_t lock;
    pthread_t th[256];
    size_t n;
} workers = {.lock = PTHREAD_MUTEX_INITIALIZER};

struct job {
    struct http_request *req;
    int delay_ms;
    long id;
    bool expect_double; /* the handler also replied; the job holds a reference */
};

static atomic_int late_reply_rc = 99;

static void *job_run(void *arg)
{
    struct job *j = arg;
    sleep_ms(j->delay_ms);
    if (j->expect_double) {
        atomic_store(&late_reply_rc, http_reply_json(j->req, 200, json_pack("{s:b}", "late", 1)));
        http_request_unref(j->req);
    } else {
        http_reply_json(j->req, 200, json_pack("{s:b, s:i}", "deferred", 1, "id", j->id));
    }
    free(j);
    return NULL;
}

static void spawn_job(struct http_request *req, int delay_ms, long id, bool expect_double)
{
    struct job *j = malloc(sizeof *j);
    j->req = req;
    j->delay_ms = delay_ms;
    j->id = id;
    j->expect_double = expect_double;
    pthread_mutex_lock(&workers.lock);
    if (workers.n < 256 && pthread_create(&workers.th[workers.n], NULL, job_run, j) == 0) {
        workers.n++;
        pthread_mutex_unlock(&workers.lock);
        return;
    }
    pthread_mutex_unlock(&workers.lock);
    free(j);
    http_reply_error(req, 503, NULL, "no worker thread");
}

static void join_workers(void)
{
    pthread_mutex_lock(&workers.lock);
    for (size_t i = 0; i < workers.n; i++) pthread_join(workers.th[i], NULL);
    workers.n = 0;
    pthread_mutex_unlock(&workers.lock);
}

static void h_deferred(struct http_request *req, void *user)
{
    (void)user;
    const char *ms = http_query(req, "ms");
    const char *id = http_query(req, "id");
    http_defer(req);
    spawn_job(req, ms ? atoi(ms) : 50, id ? atol(id) : -1, false);
}

/* Replies from the worker before the handler returns (immediate job), then defers. */
static void h_defer_after(struct http_request *req, void *user)
{
    (void)user;
    spawn_job(req, 0, 7, false);
    sleep_ms(30);
    http_defer(req);
}

static atomic_int cleanups;
static void count_cleanup(void *data)
{
    free(data);
    atomic_fetch_add(&cleanups, 1);
}

/* Deferred; the test replies itself (held). */
static struct {
    pthread_mutex_t lock;
    struct http_request *req;
} held = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void h_hold(struct http_request *req, void *user)
{
    (void)user;
    http_set_user(req, malloc(16), count_cleanup);
    http_defer(req);
    pthread_mutex_lock(&held.lock);
    held.req = req;
    pthread_mutex_unlock(&held.lock);
}

static struct http_request *take_held(double max_s)
{
    const double t0 = clock_now_s();
    pthread_mutex_lock(&held.lock);
    while (!held.req && clock_now_s() - t0 < max_s) {
        pthread_mutex_unlock(&held.lock);
        sleep_ms(5);
        pthread_mutex_lock(&held.lock);
    }
    struct http_request *r = held.req;
    held.req = NULL;
    pthread_mutex_unlock(&held.lock);
    return r;
}

static void h_defer_then_error(struct http_request *req, void *user)
{
    (void)user;
    http_request_ref(req);
    http_defer(req);
    spawn_job(req, 30, 0, true);
    http_reply_error(req, 400, NULL, "refused after all");
}

static atomic_int twice_rc = 99;
static void h_twice(struct http_request *req, void *user)
{
    (void)user;
    http_reply(req, 200, "text/plain", "first", 5, NULL);
    atomic_store(&twice_rc, http_reply(req, 500, "text/plain", "second", 6, NULL));
}

static void h_limited(struct http_request *req, void *user)
{
    (void)user;
    CHECK(http_add_header(req, "Bad\r\nHeader", "x") == -1, "CR/LF in a header name refused");
    CHECK(http_add_header(req, "X-Ok", "a\r\nb") == -1, "CR/LF in a header value refused");
    http_add_header(req, "Retry-After", "2");
    http_reply_error(req, 429, NULL, "queue full");
}

static void h_noreply(struct http_request *req, void *user)
{
    (void)req;
    (void)user;
}

static void h_json_null(struct http_request *req, void *user)
{
    (void)user;
    http_reply_json(req, 200, NULL);
}

static void h_bad_utf8(struct http_request *req, void *user)
{
    (void)user;
    http_reply_errorf(req, 422, NULL, "bad \xff\xfe byte and %s", "caf\xc3\xa9");
}

static void h_user_data(struct http_request *req, void *user)
{
    (void)user;
    http_set_user(req, malloc(8), count_cleanup);
    http_set_user(req, malloc(8), count_cleanup); /* the first one is cleaned at once */
    CHECK(http_user(req) != NULL, "user data readable");
    http_reply(req, 204, NULL, NULL, 0, NULL);
}

static struct http_router *make_router(void)
{
    char err[256];
    struct http_router *r = http_router_new();
    struct {
        const char *m, *p;
        http_handler_fn fn;
    } routes[] = {
        {"GET", "/sync", h_sync},
        {"POST", "/echo", h_echo},
        {"POST", "/digest", h_digest},
        {"GET", "/items/{id}/sub/{name}", h_items},
        {"GET", "/items/special/sub/{name}", h_special},
        {"GET", "/query", h_query},
        {"GET", "/headers", h_headers},
        {"GET", "/deferred", h_deferred},
        {"POST", "/deferred", h_deferred},
        {"GET", "/defer_after", h_defer_after},
        {"GET", "/hold", h_hold},
        {"GET", "/defer_then_error", h_defer_then_error},
        {"GET", "/twice", h_twice},
        {"GET", "/limited", h_limited},
        {"GET", "/noreply", h_noreply},
        {"GET", "/json_null", h_json_null},
        {"GET", "/bad_utf8", h_bad_utf8},
        {"GET", "/user_data", h_user_data},
        {"PUT", "/", h_sync},
    };
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        const int rc = http_router_add(r, routes[i].m, routes[i].p, routes[i].fn, NULL, err,
                                       sizeof err);
        CHECK(rc == 0, "add %s %s: %s", routes[i].m, routes[i].p, err);
    }
    return r;
}

/* ---- Tests --------------------------------------------------------------------- */

static void test_router_errors(void)
{
    char err[256];
    struct http_router *r = http_router_new();
    CHECK(http_router_add(r, "GET", "/a/{x}", h_sync, NULL, err, sizeof err) == 0, "%s", err);
    const char *bad[] = {"a", "/a/{}", "/a/{x}/{x}", "/a/b{x}", "/a/{x-y}", "/a/%20", "/a/{x}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        CHECK(http_router_add(r, "GET", bad[i], h_sync, NULL, err, sizeof err) == -1 && err[0],
              "pattern '%s' refused", bad[i]);
    }
    CHECK(http_router_add(r, "GET", "/a/{y}", h_sync, NULL, err, sizeof err) == -1,
          "same shape, other parameter name, refused");
    CHECK(http_router_add(r, "G ET", "/b", h_sync, NULL, err, sizeof err) == -1,
          "method with a space refused");
    CHECK(http_router_add(r, "", "/b", h_sync, NULL, err, sizeof err) == -1,
          "empty method refused");
    CHECK(http_router_add(r, "POST", "/a/{x}", h_sync, NULL, err, sizeof err) == 0,
          "same pattern, other method: %s", err);
    http_router_free(r);

    CHECK(strcmp(http_error_type(404), "not_found") == 0, "404 type");
    CHECK(strcmp(http_error_type(503), "unavailable") == 0, "503 type");
    CHECK(strcmp(http_error_type(502), "server_error") == 0, "5xx type");
    CHECK(strcmp(http_error_type(418), "invalid_request_error") == 0, "4xx type");
}

static void test_start_errors(unsigned busy_port, const struct http_router *router)
{
    char err[256];
    struct http_config cfg = {0};
    err[0] = '\0';
    CHECK(http_start(&cfg, err, sizeof err) == NULL && err[0], "no router refused");
    cfg.router = router;
    cfg.quiet = true;
    cfg.host = "not a host name!";
    err[0] = '\0';
    CHECK(http_start(&cfg, err, sizeof err) == NULL && err[0], "bad host refused: %s", err);
    cfg.host = NULL;
    cfg.threads = 8;
    cfg.max_connections = 4;
    CHECK(http_start(&cfg, err, sizeof err) == NULL, "fewer connections than threads refused");
    cfg.threads = 0;
    cfg.max_connections = 0;
    cfg.port = 70000;
    CHECK(http_start(&cfg, err, sizeof err) == NULL, "port out of range refused");
    cfg.port = busy_port;
    err[0] = '\0';
    struct http_server *s = http_start(&cfg, err, sizeof err);
    CHECK(s == NULL && strstr(err, "cannot listen"), "busy port refused: %s", err);
    if (s) http_stop(s);
}

static void test_basic(unsigned port)
{
    struct resp r;
    CHECK(get(port, "/sync", &r) == 0 && r.status == 200, "GET /sync: %d", r.status);
    const char *ct = resp_header(&r, "Content-Type");
    CHECK(ct && strcmp(ct, "application/json") == 0, "content type %s", ct ? ct : "-");
    json_t *j = body_json(&r);
    CHECK(j && strcmp(json_str(j, "hello"), "world") == 0, "body %s", r.body);
    json_decref(j);
    resp_free(&r);

    /* POST with a binary body (NUL bytes included) is echoed. */
    char raw[512];
    char body[100];
    for (int i = 0; i < 100; i++) body[i] = (char)(i * 7);
    int n = snprintf(raw, sizeof raw,
                     "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-test\r\n"
                     "Content-Length: 100\r\n\r\n");
    memcpy(raw + n, body, 100);
    CHECK(roundtrip(port, raw, (size_t)n + 100, &r) == 0 && r.status == 200, "POST /echo: %d",
          r.status);
    CHECK(r.body_len == 100 && memcmp(r.body, body, 100) == 0, "echo body (%zu bytes)",
          r.body_len);
    ct = resp_header(&r, "content-type");
    CHECK(ct && strcmp(ct, "application/x-test") == 0, "echo content type");
    const char *bl = resp_header(&r, "X-Body-Len");
    CHECK(bl && strcmp(bl, "100") == 0, "extra header from the headers array");
    resp_free(&r);

    /* Empty POST body. */
    const char *empty = "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n";
    CHECK(roundtrip(port, empty, strlen(empty), &r) == 0 && r.status == 200 && r.body_len == 0,
          "empty POST: %d", r.status);
    resp_free(&r);

    /* Expect: 100-continue within the limit. */
    struct client *c = malloc(sizeof *c);
    CHECK(client_open(c, port) == 0, "connect");
    client_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                    "Expect: 100-continue\r\n\r\n");
    CHECK(client_read(c, &r, true) == 0 && r.status == 100, "100 Continue: %d", r.status);
    resp_free(&r);
    client_sends(c, "hello");
    CHECK(client_read(c, &r, false) == 0 && r.status == 200 && r.body_len == 5 &&
              memcmp(r.body, "hello", 5) == 0,
          "body after 100 Continue");
    resp_free(&r);
    client_close(c);

    /* HEAD falls back to GET and carries no body. */
    const char *head = "HEAD /sync HTTP/1.1\r\nHost: t\r\n\r\n";
    CHECK(roundtrip(port, head, strlen(head), &r) == 0 && r.status == 200, "HEAD: %d", r.status);
    resp_free(&r);

    /* Root route with PUT. */
    const char *put = "PUT / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}";
    CHECK(roundtrip(port, put, strlen(put), &r) == 0 && r.status == 200, "PUT /: %d", r.status);
    resp_free(&r);

    /* Keep-alive: two requests on one connection. */
    CHECK(client_open(c, port) == 0, "connect");
    client_sends(c, "GET /sync HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(client_read(c, &r, false) == 0 && r.status == 200, "keep-alive 1: %d", r.status);
    resp_free(&r);
    client_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc");
    CHECK(client_read(c, &r, false) == 0 && r.status == 200 && r.body_len == 3,
          "keep-alive 2: %d", r.status);
    resp_free(&r);
    /* Pipelined: two requests in one write. */
    client_sends(c, "GET /sync HTTP/1.1\r\nHost: t\r\n\r\nGET /query?a=p HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(client_read(c, &r, false) == 0 && r.status == 200, "pipelined 1");
    resp_free(&r);
    CHECK(client_read(c, &r, false) == 0 && r.status == 200 && strstr(r.body, "\"p\""),
          "pipelined 2");
    resp_free(&r);
    client_close(c);
    free(c);
}

static void test_params_query_headers(unsigned port)
{
    struct resp r;
    CHECK(get(port, "/items/42/sub/a%20b%2Fc", &r) == 0 && r.status == 200, "params: %d",
          r.status);
    json_t *j = body_json(&r);
    CHECK(strcmp(json_str(j, "id"), "42") == 0, "id %s", json_str(j, "id"));
    CHECK(strcmp(json_str(j, "name"), "a b/c") == 0, "decoded name %s", json_str(j, "name"));
    CHECK(strcmp(json_str(j, "route"), "/items/{id}/sub/{name}") == 0, "route");
    CHECK(strcmp(json_str(j, "path"), "/items/42/sub/a b/c") == 0, "path %s",
          json_str(j, "path"));
    json_decref(j);
    resp_free(&r);

    CHECK(get(port, "/items/special/sub/x", &r) == 0 && r.status == 200, "specific: %d",
          r.status);
    j = body_json(&r);
    CHECK(json_is_true(json_object_get(j, "special")), "literal beats parameter");
    json_decref(j);
    resp_free(&r);

    CHECK(get(port, "/items//sub/x", &r) == 0 && r.status == 404, "empty parameter: %d",
          r.status);
    resp_free(&r);
    CHECK(get(port, "/items/%zz/sub/x", &r) == 0 && r.status == 400 &&
              is_error_json(&r, 400, "invalid_request_error"),
          "bad escape: %d %s", r.status, r.body ? r.body : "");
    resp_free(&r);
    CHECK(get(port, "/items/a%00/sub/x", &r) == 0 && r.status == 400, "%%00: %d", r.status);
    resp_free(&r);

    CHECK(get(port, "/query?a=1&b=x+y%21&flag&a=2&&", &r) == 0 && r.status == 200, "query: %d",
          r.status);
    j = body_json(&r);
    CHECK(strcmp(json_str(j, "a"), "1") == 0, "first a wins");
    CHECK(strcmp(json_str(j, "b"), "x y!") == 0, "b decoded: %s", json_str(j, "b"));
    CHECK(strcmp(json_str(j, "flag"), "") == 0, "flag empty");
    CHECK(json_is_null(json_object_get(j, "missing")), "missing is NULL");
    CHECK(strcmp(json_str(j, "raw"), "a=1&b=x+y%21&flag&a=2&&") == 0, "raw %s",
          json_str(j, "raw"));
    json_decref(j);
    resp_free(&r);
    CHECK(get(port, "/query", &r) == 0 && r.status == 200, "no query");
    j = body_json(&r);
    CHECK(strcmp(json_str(j, "raw"), "") == 0 && json_is_null(json_object_get(j, "a")),
          "empty raw query");
    json_decref(j);
    resp_free(&r);
    CHECK(get(port, "/query?a=%G1", &r) == 0 && r.status == 400, "bad query escape: %d",
          r.status);
    resp_free(&r);

    const char *raw = "GET /headers HTTP/1.1\r\nHost: t\r\ncontent-TYPE: image/png\r\n"
                      "Accept: application/vnd.safetensors\r\nAUTHORIZATION: Bearer s3cret\r\n\r\n";
    CHECK(roundtrip(port, raw, strlen(raw), &r) == 0 && r.status == 200, "headers: %d",
          r.status);
    j = body_json(&r);
    CHECK(strcmp(json_str(j, "content_type"), "image/png") == 0, "content type %s",
          json_str(j, "content_type"));
    CHECK(strcmp(json_str(j, "accept"), "application/vnd.safetensors") == 0, "accept");
    CHECK(strcmp(json_str(j, "authorization"), "Bearer s3cret") == 0, "authorization");
    CHECK(json_is_null(json_object_get(j, "absent")), "absent header");
    json_decref(j);
    resp_free(&r);
}

static void test_errors(unsigned port)
{
    struct resp r;
    CHECK(get(port, "/nope", &r) == 0 && r.status == 404 && is_error_json(&r, 404, "not_found"),
          "404: %d %s", r.status, r.body ? r.body : "");
    resp_free(&r);
    CHECK(get(port, "/sync/", &r) == 0 && r.status == 404, "trailing slash 404");
    resp_free(&r);

    const char *post = "POST /sync HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n";
    CHECK(roundtrip(port, post, strlen(post), &r) == 0 && r.status == 405 &&
              is_error_json(&r, 405, "method_not_allowed"),
          "405: %d", r.status);
    const char *allow = resp_header(&r, "Allow");
    CHECK(allow && strcmp(allow, "GET, HEAD") == 0, "Allow: %s", allow ? allow : "-");
    resp_free(&r);
    const char *del = "DELETE /deferred HTTP/1.1\r\nHost: t\r\n\r\n";
    CHECK(roundtrip(port, del, strlen(del), &r) == 0 && r.status == 405, "405 b");
    allow = resp_header(&r, "Allow");
    CHECK(allow && strcmp(allow, "GET, POST, HEAD") == 0, "Allow: %s", allow ? allow : "-");
    resp_free(&r);

    const char *foo = "FOO /sync HTTP/1.1\r\nHost: t\r\n\r\n";
    CHECK(roundtrip(port, foo, strlen(foo), &r) == 0 && r.status == 405, "unknown method: %d",
          r.status);
    resp_free(&r);

    CHECK(get(port, "/limited", &r) == 0 && r.status == 429 && is_error_json(&r, 429, NULL),
          "429: %d", r.status);
    const char *ra = resp_header(&r, "Retry-After");
    CHECK(ra && strcmp(ra, "2") == 0, "Retry-After: %s", ra ? ra : "-");
    resp_free(&r);

    CHECK(get(port, "/noreply", &r) == 0 && r.status == 500 && is_error_json(&r, 500, NULL),
          "handler without reply: %d", r.status);
    resp_free(&r);
    CHECK(get(port, "/json_null", &r) == 0 && r.status == 500, "NULL json: %d", r.status);
    resp_free(&r);
    CHECK(get(port, "/bad_utf8", &r) == 0 && r.status == 422 && is_error_json(&r, 422, NULL),
          "invalid UTF-8 message still JSON: %d %s", r.status, r.body ? r.body : "");
    resp_free(&r);

    struct http_stats before, after;
    http_get_stats(g_srv, &before);
    CHECK(get(port, "/twice", &r) == 0 && r.status == 200 && r.body_len == 5 &&
              memcmp(r.body, "first", 5) == 0,
          "first reply wins: %d", r.status);
    resp_free(&r);
    http_get_stats(g_srv, &after);
    CHECK(atomic_load(&twice_rc) == -1, "second reply returns -1");
    CHECK(after.double_replies == before.double_replies + 1, "double reply counted");

    /* The handler answers 400 while a worker holding a reference replies later. */
    CHECK(get(port, "/defer_then_error", &r) == 0 && r.status == 400, "defer then error: %d",
          r.status);
    resp_free(&r);
    for (int i = 0; i < 200 && atomic_load(&late_reply_rc) == 99; i++) sleep_ms(5);
    CHECK(atomic_load(&late_reply_rc) == -1, "late second reply ignored: %d",
          atomic_load(&late_reply_rc));
    http_get_stats(g_srv, &after);
    CHECK(after.double_replies == before.double_replies + 2, "counted again");

    const int c0 = atomic_load(&cleanups);
    CHECK(get(port, "/user_data", &r) == 0 && r.status == 204, "204: %d", r.status);
    resp_free(&r);
    for (int i = 0; i < 200 && atomic_load(&cleanups) < c0 + 2; i++) sleep_ms(5);
    CHECK(atomic_load(&cleanups) == c0 + 2, "user data cleanups: %d", atomic_load(&cleanups) - c0);
}

static void test_limits(unsigned port)
{
    struct resp r;
    struct client *c = malloc(sizeof *c);

    /* Content-Length over the limit: 413 before any body byte is sent. */
    CHECK(client_open(c, port) == 0, "connect");
    client_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n");
    CHECK(client_read(c, &r, false) == 0 && r.status == 413 &&
              is_error_json(&r, 413, "request_too_large"),
          "413 by Content-Length: %d %s", r.status, r.body ? r.body : "");
    CHECK(wait_closed(c, 3) >= 0, "connection closed after the early 413");
    resp_free(&r);
    client_close(c);

    /* The same with Expect: 100-continue: no 100, straight 413. */
    CHECK(client_open(c, port) == 0, "connect");
    client_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1025\r\n"
                    "Expect: 100-continue\r\n\r\n");
    CHECK(client_read(c, &r, false) == 0 && r.status == 413, "413 with Expect: %d", r.status);
    resp_free(&r);
    client_close(c);

    /* Exactly the limit is fine. */
    char *big = malloc(MAX_BODY + 256);
    int n = snprintf(big, 256, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n",
                     MAX_BODY);
    memset(big + n, 'x', MAX_BODY);
    CHECK(roundtrip(port, big, (size_t)n + MAX_BODY, &r) == 0 && r.status == 200 &&
              r.body_len == MAX_BODY,
          "body at the limit: %d", r.status);
    resp_free(&r);

    /* Chunked within the limit. */
    CHECK(client_open(c, port) == 0, "connect");
    client_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    char chunk[700];
    memset(chunk, 'y', sizeof chunk);
    for (int i = 0; i < 3; i++) {
        client_sends(c, "c8\r\n");
        client_send(c, chunk, 200);
        client_sends(c, "\r\n");
    }
    client_sends(c, "0\r\n\r\n");
    CHECK(client_read(c, &r, false) == 0 && r.status == 200 && r.body_len == 600,
          "chunked within the limit: %d %zu", r.status, r.body_len);
    resp_free(&r);
    client_close(c);

    /* Chunked over the limit: 413, connection closed. */
    CHECK(client_open(c, port) == 0, "connect");
    client_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 3; i++) {
        client_sends(c, "258\r\n"); /* 600 */
        client_send(c, chunk, 600);
        client_sends(c, "\r\n");
    }
    client_sends(c, "0\r\n\r\n");
    CHECK(client_read(c, &r, false) == 0 && r.status == 413 && is_error_json(&r, 413, NULL),
          "413 by chunked body: %d", r.status);
    const char *conn = resp_header(&r, "Connection");
    CHECK(conn && strcasecmp(conn, "close") == 0, "Connection: close after 413");
    resp_free(&r);
    client_close(c);

    /* Chunked far over the limit (past the discard allowance): dropped. */
    CHECK(client_open(c, port) == 0, "connect");
    client_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    bool send_failed = false;
    for (int i = 0; i < 20 && !send_failed; i++) {
        send_failed |= client_sends(c, "2bc\r\n") != 0; /* 700 */
        send_failed |= client_send(c, chunk, 700) != 0;
        send_failed |= client_sends(c, "\r\n") != 0;
    }
    CHECK(send_failed || wait_closed(c, 3) >= 0, "huge chunked body: connection dropped");
    client_close(c);

    /* Slow drip: one byte every 200 ms never ends within the timeout. */
    CHECK(client_open(c, port) == 0, "connect");
    client_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n");
    const double t0 = clock_now_s();
    double closed_at = -1;
    bool other_ok = false;
    for (int i = 0; i < 40 && closed_at < 0; i++) {
        if (client_sends(c, "z") != 0) {
            closed_at = clock_now_s() - t0;
            break;
        }
        const double w = wait_closed(c, 0.2);
        if (w >= 0) closed_at = clock_now_s() - t0;
        if (i == 2) { /* meanwhile another client is served */
            CHECK(get(port, "/sync", &r) == 0 && r.status == 200, "served during slow drip");
            other_ok = r.status == 200;
            resp_free(&r);
        }
    }
    CHECK(other_ok, "other client served");
    CHECK(closed_at >= TIMEOUT_S * 0.9 && closed_at < TIMEOUT_S + 2.5,
          "slow drip dropped after the timeout: %.2f s", closed_at);
    client_close(c);

    /* Silent after the headers: MHD's inactivity timeout closes it. */
    CHECK(client_open(c, port) == 0, "connect");
    client_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
    const double w = wait_closed(c, TIMEOUT_S + 3);
    CHECK(w >= TIMEOUT_S * 0.9, "idle body dropped after the timeout: %.2f s", w);
    client_close(c);
    CHECK(get(port, "/sync", &r) == 0 && r.status == 200, "still serving");
    resp_free(&r);
    free(big);
    free(c);
}

/* Clients that send a body the server answers early (413 by Content-Length)
 * and hang up at once: every such connection's rest is handed to the
 * watchdog to drain, which may finish and free the drain before the handing
 * thread returns. Many of them at once (a use-after-free there once corrupted
 * the heap under load; the sanitizer build runs this too). */
struct storm_arg {
    unsigned port;
    int answered;
};

static void *storm_client(void *arg)
{
    struct storm_arg *a = arg;
    struct client *c = malloc(sizeof *c);
    char body[3000];
    memset(body, 'x', sizeof body);
    for (int i = 0; c && i < 150; i++) {
        if (client_open(c, a->port)) continue;
        client_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n");
        client_send(c, body, (size_t)(i % 3) * 1000);
        if (i % 2) { /* half of them read the answer first */
            struct resp r;
            a->answered += client_read(c, &r, true) == 0 && r.status == 413;
            resp_free(&r);
        }
        client_close(c);
    }
    free(c);
    return NULL;
}

static void test_early_answer_storm(unsigned port)
{
    enum { THREADS = 8 };
    pthread_t t[THREADS];
    struct storm_arg a[THREADS];
    for (int i = 0; i < THREADS; i++) {
        a[i] = (struct storm_arg){.port = port};
        pthread_create(&t[i], NULL, storm_client, &a[i]);
    }
    int answered = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        answered += a[i].answered;
    }
    CHECK(answered >= THREADS * 75 * 9 / 10, "early 413s answered: %d of %d", answered,
          THREADS * 75);
    struct resp r;
    CHECK(get(port, "/sync", &r) == 0 && r.status == 200, "the server serves on: %d", r.status);
    resp_free(&r);
}

static void test_malformed(unsigned port)
{
    struct resp r;
    struct {
        const char *name;
        const char *raw;
    } cases[] = {
        {"garbage request line", "GARBAGE\r\n\r\n"},
        {"no version", "GET /sync\r\n\r\n"},

        {"header without colon", "GET /sync HTTP/1.1\r\nHost: t\r\nNoColonHere\r\n\r\n"},

        {"bad Content-Length", "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n"},
        {"huge Content-Length",
         "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n"},
        {"bad chunk size",
         "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n"},
        {"absolute target", "GET http://t/sync HTTP/1.1\r\nHost: t\r\n\r\n"},
        {"asterisk target", "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n"},
        {"control bytes", "GET /s\x01\x02ync HTTP/1.1\r\nHost: t\r\n\r\n"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        roundtrip(port, cases[i].raw, strlen(cases[i].raw), &r);
        CHECK(r.status == -1 || (r.status >= 400 && r.status < 500),
              "%s: a 4xx or a closed connection, got %d", cases[i].name, r.status);
        if (r.status >= 400 && r.body && r.body_len && r.body[0] == '{')
            CHECK(is_error_json(&r, r.status, NULL), "%s: JSON error", cases[i].name);
        resp_free(&r);
    }

    /* Refusals, including those libmicrohttpd makes itself: one JSON error
     * each (not its HTML page, nor its headers twice), then closed. */
    const struct {
        const char *name, *raw;
        int status;
    } refusals[] = {
        {"HTTP/9.9", "GET /sync HTTP/9.9\r\nHost: t\r\n\r\n", 505},
        {"HTTP/2.0", "GET /sync HTTP/2.0\r\nHost: t\r\n\r\n", 505},
        {"HTTP/1.1 without Host", "GET /sync HTTP/1.1\r\n\r\n", 400},
        {"Content-Length -1", "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400},
        {"Content-Length 1x", "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1x\r\n\r\nx", 400},
        {"Content-Length over 2^64",
         "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n", 413},
        {"no version", "GET /sync\r\n\r\n", 400},
        {"bad chunk size",
         "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n", 400},
    };
    for (size_t i = 0; i < sizeof refusals / sizeof refusals[0]; i++)
        check_refusal(port, refusals[i].name, refusals[i].raw, strlen(refusals[i].raw),
                      refusals[i].status);
    const char *nohost10 = "GET /sync HTTP/1.0\r\n\r\n";
    roundtrip(port, nohost10, strlen(nohost10), &r);
    CHECK(r.status == 200, "HTTP/1.0 without Host: %d", r.status);
    resp_free(&r);
    for (int k = 0; k < 2; k++) { /* within libmicrohttpd's buffer, and past it */
        const size_t un = k ? 400000 : 10000;
        char *u = malloc(un + 64);
        CHECK(u != NULL, "out of memory");
        if (!u) continue;
        memcpy(u, "GET /", 5);
        memset(u + 5, 'u', un);
        const int m = snprintf(u + 5 + un, 59, " HTTP/1.1\r\nHost: t\r\n\r\n");
        check_refusal(port, k ? "huge target" : "long target", u, 5 + un + (size_t)m, 414);
        free(u);
    }

    /* Oversized heads: 431 within libmicrohttpd's buffer and past it. */
    const size_t hn = 400000;
    char *huge = malloc(hn + 100);
    for (int k = 0; k < 2; k++) {
        const size_t len = k ? hn : 40000;
        int n = snprintf(huge, 100, "GET /sync HTTP/1.1\r\nHost: t\r\nX-Big: ");
        memset(huge + n, 'h', len);
        memcpy(huge + n + len, "\r\n\r\n", 4);
        check_refusal(port, k ? "huge head" : "large head", huge, (size_t)n + len + 4, 431);
    }

    /* Random bytes. */
    unsigned seed = 12345;
    for (int k = 0; k < 20; k++) {
        for (size_t i = 0; i < 2048; i++) {
            seed = seed * 1103515245u + 12345u;
            huge[i] = (char)(seed >> 16);
        }
        if (k % 2) memcpy(huge, "POST /echo HTTP/1.1\r\n", 21);
        roundtrip(port, huge, 2048, &r);
        CHECK(r.status == -1 || (r.status >= 400 && r.status < 500), "random bytes %d: %d", k,
              r.status);
        resp_free(&r);
    }
    free(huge);

    /* Aborted mid-headers. */
    struct client *c = malloc(sizeof *c);
    CHECK(client_open(c, port) == 0, "connect");
    client_sends(c, "GET /sync HTTP/1.1\r\nHost: t\r\n");
    client_close(c);
    CHECK(client_open(c, port) == 0, "connect");
    client_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 50\r\n\r\nabc");
    client_close(c);
    free(c);

    CHECK(get(port, "/sync", &r) == 0 && r.status == 200, "still serving after bad input");
    resp_free(&r);
}

static void test_deferred(unsigned port)
{
    struct resp r;
    double t0 = clock_now_s();
    CHECK(get(port, "/deferred?ms=50&id=5", &r) == 0 && r.status == 200, "deferred: %d",
          r.status);
    const double dt = clock_now_s() - t0;
    json_t *j = body_json(&r);
    CHECK(json_integer_value(json_object_get(j, "id")) == 5, "deferred body %s", r.body);
    CHECK(dt >= 0.045, "answered after the delay: %.3f s", dt);
    json_decref(j);
    resp_free(&r);

    /* POST deferred with a body, keep-alive afterwards. */
    struct client *c = malloc(sizeof *c);
    CHECK(client_open(c, port) == 0, "connect");
    client_sends(c, "POST /deferred?ms=20&id=6 HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nbody");
    CHECK(client_read(c, &r, false) == 0 && r.status == 200, "POST deferred");
    resp_free(&r);
    client_sends(c, "GET /sync HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(client_read(c, &r, false) == 0 && r.status == 200, "keep-alive after deferred");
    resp_free(&r);
    client_close(c);

    /* The worker replies before the handler has returned. */
    CHECK(get(port, "/defer_after", &r) == 0 && r.status == 200, "reply before return: %d",
          r.status);
    resp_free(&r);

    /* 50 concurrent deferred requests. */
    enum { N = 50 };
    struct client *cs = malloc(N * sizeof *cs);
    int opened = 0;
    for (int i = 0; i < N; i++) {
        if (client_open(&cs[i], port) != 0) break;
        opened++;
        char raw[128];
        snprintf(raw, sizeof raw, "GET /deferred?ms=50&id=%d HTTP/1.1\r\nHost: t\r\n\r\n", i);
        client_sends(&cs[i], raw);
    }
    CHECK(opened == N, "opened %d", opened);
    int good = 0;
    t0 = clock_now_s();
    for (int i = 0; i < opened; i++) {
        if (client_read(&cs[i], &r, false) == 0 && r.status == 200) {
            j = body_json(&r);
            good += json_integer_value(json_object_get(j, "id")) == i;
            json_decref(j);
        }
        resp_free(&r);
        client_close(&cs[i]);
    }
    CHECK(good == N, "%d of %d concurrent deferred answered correctly", good, N);
    CHECK(clock_now_s() - t0 < 2.0, "concurrently, not one after another: %.2f s", clock_now_s() - t0);
    free(cs);

    /* Deferred, answered after the client went away. */
    const int c0 = atomic_load(&cleanups);
    const size_t rec0 = count_records("/hold", -1);
    CHECK(client_open(c, port) == 0, "connect");
    client_sends(c, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
    struct http_request *req = take_held(3);
    CHECK(req != NULL, "held request arrived");
    client_close(c);
    sleep_ms(100);
    if (req) {
        CHECK(strcmp(http_path(req), "/hold") == 0, "accessors valid while deferred");
        CHECK(http_reply_json(req, 200, json_pack("{s:b}", "late", 1)) == 0,
              "reply after disconnect accepted");
    }
    for (int i = 0; i < 400 && (atomic_load(&cleanups) == c0 || count_records("/hold", -1) == rec0);
         i++)
        sleep_ms(5);
    CHECK(atomic_load(&cleanups) == c0 + 1, "request freed after a late reply");
    CHECK(count_records("/hold", -1) == rec0 + 1, "completion reported");
    free(c);
    join_workers();
}

static void test_completion_records(void)
{
    CHECK(count_records("/items/{id}/sub/{name}", 200) >= 1, "route pattern reported");
    CHECK(count_records("/deferred", 200) >= 52, "deferred completions: %zu",
          count_records("/deferred", 200));
    CHECK(count_records(NULL, 404) >= 2, "404 reported without a route");
    CHECK(count_records("/sync", 405) >= 1, "405 reported with the pattern");
    CHECK(count_records(NULL, 413) >= 2, "413 reported");
    bool secs_ok = true, method_ok = false;
    pthread_mutex_lock(&records.lock);
    for (size_t i = 0; i < records.n; i++) {
        secs_ok &= records.rec[i].seconds >= 0 && records.rec[i].seconds < 30;
        method_ok |= strcmp(records.rec[i].method, "POST") == 0 && records.rec[i].ok;
    }
    pthread_mutex_unlock(&records.lock);
    CHECK(secs_ok, "seconds in range");
    CHECK(method_ok, "methods reported");
}

struct stop_arg {
    struct http_server *srv;
    double took;
};

static void *stop_thread(void *arg)
{
    struct stop_arg *a = arg;
    const double t0 = clock_now_s();
    http_stop(a->srv);
    a->took = clock_now_s() - t0;
    return NULL;
}

static bool wait_deferred(struct http_server *s, unsigned n)
{
    struct http_stats st;
    for (int i = 0; i < 600; i++) {
        http_get_stats(s, &st);
        if (st.deferred >= n) return true;
        sleep_ms(5);
    }
    return false;
}

static void test_graceful_stop(const struct http_router *router)
{
    char err[256];
    struct http_config cfg = {.router = router, .threads = 2, .timeout_s = 5, .quiet = true};
    struct http_server *s = http_start(&cfg, err, sizeof err);
    CHECK(s != NULL, "start: %s", err);
    if (!s) return;
    const unsigned port = http_port(s);
    struct client *c = malloc(sizeof *c), *c2 = malloc(sizeof *c2);

    /* Large bodies (default 64 MiB limit), by Content-Length and chunked. */
    const size_t big_n = 3u << 20;
    char *big = malloc(big_n);
    for (size_t i = 0; i < big_n; i++) big[i] = (char)(i * 131 + (i >> 9));
    char want[64], hdr[128];
    snprintf(want, sizeof want, "%zu %lx", big_n, fnv1a(big, big_n));
    struct resp r;
    CHECK(client_open(c, port) == 0, "connect");
    snprintf(hdr, sizeof hdr, "POST /digest HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n\r\n",
             big_n);
    client_sends(c, hdr);
    client_send(c, big, big_n);
    CHECK(client_read(c, &r, false) == 0 && r.status == 200 && strcmp(r.body, want) == 0,
          "3 MiB body: %d %s", r.status, r.body ? r.body : "");
    resp_free(&r);
    client_sends(c, "POST /digest HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (size_t off = 0; off < big_n; off += 100000) {
        const size_t k = big_n - off < 100000 ? big_n - off : 100000;
        snprintf(hdr, sizeof hdr, "%zx\r\n", k);
        client_sends(c, hdr);
        client_send(c, big + off, k);
        client_sends(c, "\r\n");
    }
    client_sends(c, "0\r\n\r\n");
    CHECK(client_read(c, &r, false) == 0 && r.status == 200 && strcmp(r.body, want) == 0,
          "3 MiB chunked body: %d %s", r.status, r.body ? r.body : "");
    resp_free(&r);
    client_close(c);
    free(big);

    CHECK(client_open(c, port) == 0, "connect");
    client_sends(c, "GET /deferred?ms=400&id=9 HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(client_open(c2, port) == 0, "connect an idle keep-alive client");
    CHECK(wait_deferred(s, 1), "request deferred");

    struct stop_arg a = {s, 0};
    pthread_t th;
    pthread_create(&th, NULL, stop_thread, &a);
    sleep_ms(100);
    struct client *c3 = malloc(sizeof *c3);
    const int rc = client_open(c3, port);
    CHECK(rc != 0, "new connections refused while draining");
    if (rc == 0) client_close(c3);
    free(c3);
    pthread_join(th, NULL);
    CHECK(a.took >= 0.2 && a.took < 5, "stop waited for the deferred request: %.2f s", a.took);

    CHECK(client_read(c, &r, false) == 0 && r.status == 200, "deferred request completed: %d",
          r.status);
    const char *conn = resp_header(&r, "Connection");
    CHECK(conn && strcasecmp(conn, "close") == 0, "Connection: close while stopping");
    resp_free(&r);
    CHECK(wait_closed(c2, 2) >= 0, "idle connection closed by stop");
    client_close(c);
    client_close(c2);
    CHECK(client_open(c, port) != 0, "refused after stop");
    free(c);
    free(c2);
    join_workers();
}

static void test_drain_timeout(const struct http_router *router)
{
    char err[256];
    struct http_config cfg = {.router = router, .threads = 1, .drain_timeout_s = 1,
                              .quiet = true};
    struct http_server *s = http_start(&cfg, err, sizeof err);
    CHECK(s != NULL, "start: %s", err);
    if (!s) return;
    const int c0 = atomic_load(&cleanups);
    struct client *c = malloc(sizeof *c);
    CHECK(client_open(c, http_port(s)) == 0, "connect");
    client_sends(c, "GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
    struct http_request *req = take_held(3);
    CHECK(req != NULL, "held");
    const double t0 = clock_now_s();
    http_stop(s);
    const double took = clock_now_s() - t0;
    CHECK(took >= 0.9 && took < 4, "stop gave up after the drain timeout: %.2f s", took);
    struct resp r;
    CHECK(client_read(c, &r, false) == 0 && r.status == 503 && is_error_json(&r, 503, NULL),
          "stuck deferred request answered 503: %d", r.status);
    resp_free(&r);
    client_close(c);
    free(c);
    if (req) {
        CHECK(atomic_load(&cleanups) == c0, "request still alive for its late reply");
        CHECK(http_reply(req, 200, "text/plain", "late", 4, NULL) == 0,
              "late reply after the forced 503 settles quietly");
    }
    CHECK(atomic_load(&cleanups) == c0 + 1, "request freed after the late reply");
}

/* Connections dripping their heads hold every slot; with a head deadline
 * they are cut at it and a waiting client is served. */
static void test_head_deadline(const struct http_router *router)
{
    enum { SLOTS = 8 };
    char err[256];
    struct http_config cfg = {.router = router, .threads = 2, .max_connections = SLOTS,
                              .header_timeout_s = 1, .quiet = true};
    struct http_server *s = http_start(&cfg, err, sizeof err);
    CHECK(s != NULL, "start: %s", err);
    if (!s) return;
    const unsigned port = http_port(s);
    struct client *drip = calloc(SLOTS, sizeof *drip);
    double closed_at[SLOTS];
    const double t0 = clock_now_s();
    for (int i = 0; i < SLOTS; i++) {
        closed_at[i] = -1;
        CHECK(client_open(&drip[i], port) == 0, "connect drip %d", i);
        client_sends(&drip[i], "GET /sync HTTP/1.1\r\nHost: t\r\nX-Drip: ");
    }
    sleep_ms(200);
    struct client *c = malloc(sizeof *c);
    CHECK(client_open(c, port) == 0, "connect the normal client");
    client_sends(c, "GET /sync HTTP/1.1\r\nHost: t\r\n\r\n");
    const double t1 = clock_now_s();
    int open = SLOTS;
    for (int round = 0; round < 40 && open > 0; round++) { /* 4 s at most */
        for (int i = 0; i < SLOTS; i++) {
            if (closed_at[i] >= 0) continue;
            if (client_sends(&drip[i], "a") != 0 || wait_closed(&drip[i], 0.1 / SLOTS) >= 0) {
                closed_at[i] = clock_now_s() - t0;
                open--;
            }
        }
    }
    struct resp r;
    CHECK(client_read(c, &r, false) == 0 && r.status == 200, "normal client served: %d",
          r.status);
    const double waited = clock_now_s() - t1;
    CHECK(waited < 2.5, "served within the head deadline of the drips: %.2f s", waited);
    resp_free(&r);
    for (int i = 0; i < SLOTS; i++) {
        CHECK(closed_at[i] >= 0.8 && closed_at[i] < 2.0, "drip %d cut at the deadline: %.2f s", i,
              closed_at[i]);
        client_close(&drip[i]);
    }
    client_close(c);
    free(c);
    free(drip);
    http_stop(s);
}

/* A body that keeps arriving at 25 KB/s is not cut after timeout_s (only
 * one slower than 16 KiB/s past it is: see test_limits' slow drip). */
static void test_body_rate(const struct http_router *router)
{
    char err[256];
    struct http_config cfg = {.router = router, .threads = 2, .timeout_s = 1, .quiet = true};
    struct http_server *s = http_start(&cfg, err, sizeof err);
    CHECK(s != NULL, "start: %s", err);
    if (!s) return;
    enum { PIECE = 4096, PIECES = 12 };
    char *body = malloc(PIECE * PIECES);
    CHECK(body != NULL, "out of memory");
    struct client *c = malloc(sizeof *c);
    if (body && client_open(c, http_port(s)) == 0) {
        memset(body, 'b', PIECE * PIECES);
        char hdr[128], want[64];
        snprintf(hdr, sizeof hdr, "POST /digest HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n",
                 PIECE * PIECES);
        snprintf(want, sizeof want, "%d %lx", PIECE * PIECES, fnv1a(body, PIECE * PIECES));
        client_sends(c, hdr);
        const double t0 = clock_now_s();
        for (int i = 0; i < PIECES; i++) {
            sleep_ms(160);
            client_send(c, body + i * PIECE, PIECE);
        }
        const double took = clock_now_s() - t0;
        struct resp r;
        CHECK(client_read(c, &r, false) == 0 && r.status == 200 && strcmp(r.body, want) == 0,
              "steady body over %.1f s (timeout 1 s) accepted: %d", took, r.status);
        resp_free(&r);
        client_close(c);
    }
    free(c);
    free(body);
    http_stop(s);
}

static void test_ipv6(const struct http_router *router)
{
    int probe = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 sa = {0};
    sa.sin6_family = AF_INET6;
    sa.sin6_addr = in6addr_loopback;
    const bool have = probe >= 0 && bind(probe, (struct sockaddr *)&sa, sizeof sa) == 0;
    if (probe >= 0) close(probe);
    if (!have) {
        printf("no IPv6 loopback: IPv6 test skipped\n");
        return;
    }
    const char *hosts[] = {"::1", "[::1]"};
    for (int i = 0; i < 2; i++) {
        char err[256];
        struct http_config cfg = {.host = hosts[i], .router = router, .threads = 2,
                                  .quiet = true};
        struct http_server *s = http_start(&cfg, err, sizeof err);
        CHECK(s != NULL, "start on %s: %s", hosts[i], err);
        if (!s) continue;
        struct client *c = malloc(sizeof *c);
        CHECK(client_open_addr(c, AF_INET6, "::1", http_port(s)) == 0, "connect over IPv6");
        client_sends(c, "GET /sync HTTP/1.1\r\nHost: [::1]\r\n\r\n");
        struct resp r;
        CHECK(client_read(c, &r, false) == 0 && r.status == 200, "GET over IPv6: %d", r.status);
        resp_free(&r);
        client_close(c);
        CHECK(client_open(c, http_port(s)) != 0, "IPv6-only: no IPv4");
        free(c);
        http_stop(s);
    }
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    test_router_errors();
    struct http_router *router = make_router();

    char err[256];
    struct http_config cfg = {
        .router = router,
        .threads = 4,
        .max_body_bytes = MAX_BODY,
        .timeout_s = TIMEOUT_S,
        .max_connections = 200,
        .on_complete = on_complete,
        .quiet = getenv("HTTP_TEST_VERBOSE") == NULL,
    };
    g_srv = http_start(&cfg, err, sizeof err);
    CHECK(g_srv != NULL, "http_start: %s", err);
    if (!g_srv) return check_summary();
    const unsigned port = http_port(g_srv);
    CHECK(port > 0, "bound port %u", port);

    test_start_errors(port, router);
    test_basic(port);
    test_params_query_headers(port);
    test_errors(port);
    test_limits(port);
    test_early_answer_storm(port);
    test_malformed(port);
    test_deferred(port);
    test_completion_records();

    struct http_stats st;
    for (int i = 0; i < 200; i++) {
        http_get_stats(g_srv, &st);
        if (st.active == 0) break;
        sleep_ms(10);
    }
    CHECK(st.active == 0 && st.deferred == 0, "no request left active: %u %u", st.active,
          st.deferred);
    CHECK(st.requests > 100, "requests counted: %llu", (unsigned long long)st.requests);
    http_stop(g_srv);
    join_workers();

    test_graceful_stop(router);
    test_drain_timeout(router);
    test_head_deadline(router);
    test_body_rate(router);
    test_ipv6(router);
    join_workers();
    http_router_free(router);
    return check_summary();
}
