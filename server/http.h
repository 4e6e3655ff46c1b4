/* The HTTP layer: a small server over libmicrohttpd (MHD) with a router,
 * request accessors, JSON replies and asynchronous (deferred) replies.
 * Route code never sees an MHD type.
 *
 * Life of a request
 *   1. The request line and headers arrive, within header_timeout_s of the
 *      connection's start or of the previous request's end, or the
 *      connection is closed. A Content-Length above max_body_bytes is
 *      answered 413 at once, before the body is read (the connection then
 *      closes, and what the client still sends, up to 2 x max_body_bytes, is
 *      read and dropped so that it can read the answer). Heads refused (bad
 *      request line, version, Content-Length, target over 8 KiB, head over
 *      32 KiB, HTTP/1.1 without Host) get a JSON error and the connection
 *      closes; that includes those libmicrohttpd refuses itself.
 *   2. The body is collected as it arrives. A chunked body that passes the
 *      limit is no longer stored; its rest is read and dropped (up to another
 *      max_body_bytes, past that the connection is closed without an answer)
 *      and the answer is 413. A body still incomplete timeout_s + its bytes so
 *      far / 16 KiB/s after the headers (a slow drip) is dropped with its
 *      connection.
 *   3. The router picks the route: unknown path 404, known path with another
 *      method 405 with an Allow header (HEAD falls back to GET routes), a
 *      malformed percent-escape in the path or query 400. All JSON.
 *   4. The handler runs on an HTTP thread with the complete body. It replies
 *      (http_reply*), or calls http_defer() and returns: the connection is
 *      suspended (no HTTP thread waits) until any thread replies, which
 *      resumes it. A handler that returns with neither gets a 500.
 *   5. After the response was sent (or the connection died), the completion
 *      hook reports route, method, status and seconds.
 *
 * Lifetime and threads
 *   Accessors are valid, from any thread, until the request's reply was given
 *   and, for code holding a reference (http_request_ref), until it is dropped.
 *   The request stays alive until both the reply was given and the
 *   connection finished, so a deferred reply after the client went away is
 *   safe (it is dropped). Exactly one reply per request: a further reply is
 *   ignored, returns -1 and is counted (http_get_stats); it is only safe while
 *   the request is alive, which is always the case inside the handler and
 *   while the caller holds a reference. So code that keeps a request past the
 *   handler AND may race with another reply (e.g. a worker while the handler
 *   answers an error) should hold a reference. The reply functions may be
 *   called from any thread; one request must not be replied to concurrently
 *   with accessor calls on it from another thread after that reply.
 *
 * Errors follow engine/errors.h: 0/-1 and a one-line message in err. */
#ifndef FRANCA_HTTP_H
#define FRANCA_HTTP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct http_server;
struct http_request;
struct http_router;

/* ---- Router ------------------------------------------------------------ */

typedef void (*http_handler_fn)(struct http_request *req, void *user);

struct http_router *http_router_new(void);

/* Registers method (e.g. "GET", case-sensitive) on pattern, an absolute path
 * whose segments are literals or whole-segment parameters "{name}", e.g.
 * "/v1/models/{name}". A path matches a pattern with the same number of
 * segments whose literals are equal; a parameter matches any non-empty
 * segment. Where several patterns match, the one with a literal at the first
 * differing segment wins ("/v1/models/default" over "/v1/models/{name}").
 * Fails on a malformed pattern or a duplicate (method, pattern shape). The
 * router keeps its own copies of method and pattern. Not thread-safe: register
 * every route before http_start. */
int http_router_add(struct http_router *r, const char *method, const char *pattern,
                    http_handler_fn fn, void *user, char *err, size_t errlen);

/* Frees the router; only after http_stop of every server that used it. */
void http_router_free(struct http_router *r);

/* ---- Server ------------------------------------------------------------ */

/* What the completion hook learns about each finished request. */
struct http_completion {
    const char *method;  /* as sent by the client */
    const char *route;   /* the matched pattern (also for 405), NULL when no route
                            matched (404, 400, 413 before routing, aborted) */
    int status;          /* the status given, 0 when none was (the client went away
                            mid-request, the connection was cut at its deadline, or
                            libmicrohttpd refused it in a way not answered here) */
    double seconds;      /* request line received to response sent (or abort) */
    bool ok;             /* the response was sent completely */
};

/* Called once per request that got as far as its request line, from an HTTP
 * thread, after the response was sent or the connection died. Must not block. */
typedef void (*http_complete_fn)(const struct http_completion *c, void *user);

/* Zero or NULL fields take the defaults given. */
struct http_config {
    const char *host;            /* IPv4 or IPv6 literal ("[::1]" too) or a name to
                                    resolve; NULL: "127.0.0.1". "::" is dual-stack,
                                    other IPv6 addresses are IPv6-only */
    unsigned port;               /* 0: the kernel picks a free port (see http_port) */
    unsigned threads;            /* HTTP threads; 0: the number of online CPUs */
    size_t max_body_bytes;       /* 0: 64 MiB */
    unsigned timeout_s;          /* inactivity timeout of a connection, and the time
                                    a body may take to arrive beyond its bytes /
                                    16 KiB/s; 0: 30 */
    unsigned max_connections;    /* 0: 1024; at least threads; connections past it wait
                                    in the listen backlog until a slot frees */
    unsigned drain_timeout_s;    /* http_stop waits this long for requests in flight,
                                    then answers deferred ones 503; 0: 30 */
    const struct http_router *router;  /* required; must outlive the server */
    http_complete_fn on_complete;      /* optional metrics hook */
    void *on_complete_user;
    bool quiet;                  /* do not print libmicrohttpd's messages to stderr */
    unsigned header_timeout_s;   /* the whole request head must arrive within this, from
                                    the connection's start or the end of the previous
                                    request on it (so it also ends idle keep-alive
                                    connections); 0: 10 */
    unsigned max_connections_per_ip; /* connections past it from one address are closed
                                    at once; 0: no limit */
    http_handler_fn head_check;  /* optional: runs once the head is in (method, path,
                                    query and headers are readable; no body, no route
                                    yet), before any body is read. A check that replies
                                    refuses the request: that reply goes out at once, the
                                    connection closes and what the client still sends is
                                    drained unread. */
    void *head_check_user;
};

/* Binds and starts serving; the server is ready when it returns. NULL with
 * err on a bad config or when the address cannot be bound. */
struct http_server *http_start(const struct http_config *cfg, char *err, size_t errlen);

/* The port actually bound (useful with port 0). */
unsigned http_port(const struct http_server *srv);

/* Graceful stop: closes the listening socket (new connections are refused),
 * lets requests in flight finish (including deferred ones; responses sent
 * meanwhile carry "Connection: close"), waiting at most drain_timeout_s after
 * which still-deferred requests are answered 503 (their late replies are then
 * accepted silently) and other connections closed; then frees the server.
 * Call it from a normal thread (e.g. main after sigwait, or after a signal
 * handler set a flag), never from a signal handler or an HTTP thread. */
void http_stop(struct http_server *srv);

struct http_stats {
    uint64_t requests;        /* requests started (request line received) */
    uint64_t double_replies;  /* replies ignored because one had been given */
    unsigned active;          /* requests not finished yet */
    unsigned deferred;        /* of those, suspended waiting for a reply */
};
void http_get_stats(const struct http_server *srv, struct http_stats *st);

/* ---- Request accessors ------------------------------------------------- */

const char *http_method(const struct http_request *req);
/* The path, percent-decoded, without the query. */
const char *http_path(const struct http_request *req);
/* The matched route pattern. */
const char *http_route(const struct http_request *req);
/* Path parameter by name (percent-decoded), NULL when the pattern has none. */
const char *http_param(const struct http_request *req, const char *name);
/* Query argument by name, decoded (%XX and '+'); the first if repeated; ""
 * for "?flag" or "?flag="; NULL when absent. */
const char *http_query(const struct http_request *req, const char *name);
/* The raw query string without '?', "" when there is none. */
const char *http_query_string(const struct http_request *req);
/* Request header by name, case-insensitive; the first if repeated; NULL when
 * absent. */
const char *http_header(const struct http_request *req, const char *name);
/* The same with the value's length as libmicrohttpd reports it; code
 * comparing credentials uses this rather than the C string's end (though
 * 0.9.75 itself cuts a value at a NUL byte). *len is 0 when absent. */
const char *http_header_n(const struct http_request *req, const char *name, size_t *len);
/* The complete body (never NULL; followed by a NUL byte not counted in len). */
const char *http_body(const struct http_request *req, size_t *len);

/* Per-request user data; cleanup(data) runs when the request is freed (after
 * both reply and connection end), on whichever thread drops it last.
 * Setting again replaces (the previous cleanup runs at once). */
void http_set_user(struct http_request *req, void *data, void (*cleanup)(void *data));
void *http_user(const struct http_request *req);

/* Extra references for code that keeps req beyond its reply (see top). */
void http_request_ref(struct http_request *req);
void http_request_unref(struct http_request *req);

/* True once nobody waits for req's answer: it was answered already (e.g. 503
 * at the end of a drain), or its connection finished, or, while deferred, the
 * client closed its connection (seen by peeking at the socket: a client that
 * only shuts down its sending side counts as gone too). For workers deciding
 * whether queued work is still worth doing; any thread, while req is alive
 * (before the handler's reply, or with a reference). Never blocks. */
bool http_client_gone(struct http_request *req);

/* ---- Replies ----------------------------------------------------------- */

/* Marks the request as answered later, by any thread. Call from the handler
 * only (before or after handing req to a worker; a worker may even reply
 * before the handler returns). */
void http_defer(struct http_request *req);

/* An extra response header, e.g. {"Retry-After", "1"}. */
struct http_header {
    const char *name;
    const char *value;
};

/* Adds a header to the reply given next on req (any reply function).
 * Names and values with CR, LF or NUL are refused. */
int http_add_header(struct http_request *req, const char *name, const char *value);

/* Replies with status, a Content-Type (NULL: none) and body (copied), plus
 * headers: NULL or an array ended by {NULL, NULL}. Returns 0, or -1 if the
 * request had been answered already (counted) or on allocation failure (the
 * connection is then closed). After it returns, do not touch req unless you
 * hold a reference. */
int http_reply(struct http_request *req, int status, const char *content_type,
               const void *body, size_t len, const struct http_header *headers);

/* Same, taking ownership of body (malloc'd; freed with free() in all cases,
 * also on -1). */
int http_reply_take(struct http_request *req, int status, const char *content_type,
                    void *body, size_t len, const struct http_header *headers);

/* Replies with json serialised (compact) as application/json. Steals the
 * reference to json (like json_object_set_new); NULL replies 500. */
int http_reply_json(struct http_request *req, int status, json_t *json);

/* Replies {"error": {"message": message, "type": type, "code": status}}.
 * type NULL: http_error_type(status). When message is not valid UTF-8, its
 * non-ASCII bytes are replaced by '?'. */
int http_reply_error(struct http_request *req, int status, const char *type,
                     const char *message);
int http_reply_errorf(struct http_request *req, int status, const char *type,
                      const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* The default error type for a status: "invalid_request_error" (400, 422),
 * "authentication_error" (401), "permission_error" (403), "not_found" (404),
 * "method_not_allowed" (405), "conflict" (409), "request_too_large" (413),
 * "unsupported_media_type" (415), "rate_limit_exceeded" (429),
 * "server_error" (500 and other 5xx), "unavailable" (503), else
 * "invalid_request_error" for 4xx. */
const char *http_error_type(int status);

#endif
