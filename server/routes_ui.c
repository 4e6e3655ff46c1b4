/* The web page under /ui: three static files embedded into the binary at build
 * time (server/ui/), so the server needs no files at run time and the page
 * loads nothing from anywhere else (its Content-Security-Policy says so). The
 * page only calls the public API, with the API key the user types in. */
#include <string.h>

#include "app.h"
#include "ui_app_js.h"
#include "ui_index_html.h"
#include "ui_style_css.h"

/* Everything from this server only; pictures also from blob: and data: URLs
 * that the page makes itself. */
#define UI_CSP "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; " \
               "base-uri 'none'; frame-ancestors 'none'"

static void serve(struct http_request *req, const char *type, const char *body, size_t len)
{
    http_add_header(req, "Content-Security-Policy", UI_CSP);
    http_add_header(req, "X-Content-Type-Options", "nosniff");
    http_add_header(req, "Cache-Control", "no-cache");
    http_reply(req, 200, type, body, len, NULL);
}

static void ui_redirect(struct http_request *req, void *user)
{
    (void)user;
    http_add_header(req, "Location", "/ui/");
    http_reply(req, 308, "text/plain; charset=utf-8", "/ui/\n", 5, NULL);
}

static void ui_index(struct http_request *req, void *user)
{
    (void)user;
    serve(req, "text/html; charset=utf-8", ui_index_html, ui_index_html_len);
}

static void ui_script(struct http_request *req, void *user)
{
    (void)user;
    serve(req, "text/javascript; charset=utf-8", ui_app_js, ui_app_js_len);
}

static void ui_style(struct http_request *req, void *user)
{
    (void)user;
    serve(req, "text/css; charset=utf-8", ui_style_css, ui_style_css_len);
}

int routes_ui_register(struct http_router *r, struct app *app, char *err, size_t errlen)
{
    return route_add(r, app, "GET", "/ui", ui_redirect, err, errlen) ||
                   route_add(r, app, "GET", "/ui/", ui_index, err, errlen) ||
                   route_add(r, app, "GET", "/ui/app.js", ui_script, err, errlen) ||
                   route_add(r, app, "GET", "/ui/style.css", ui_style, err, errlen)
               ? -1
               : 0;
}
