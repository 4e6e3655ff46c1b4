/* Module error codes to HTTP statuses (route_status.h). */
#include "route_status.h"

#include "batcher.h"
#include "index/store.h"
#include "multipart.h"
#include "options.h"
#include "registry.h"

int route_status_datauri(enum datauri_status st)
{
    switch (st) {
    case DATAURI_OK: return 200;
    case DATAURI_MALFORMED: return 400;
    case DATAURI_URL: return 422;
    case DATAURI_UNSUPPORTED_TYPE: return 415;
    case DATAURI_TOO_LARGE: return 413;
    case DATAURI_NOMEM: return 500;
    }
    return 500;
}

int route_status_multipart(int rc)
{
    switch (rc) {
    case MULTIPART_OK: return 200;
    case MULTIPART_MALFORMED: return 400;
    case MULTIPART_TOO_MANY: return 413;
    default: return 500;
    }
}

int route_status_options(int rc)
{
    switch (rc) {
    case OPTIONS_OK: return 200;
    case OPTIONS_MALFORMED: return 400;
    case OPTIONS_INVALID: return 422;
    default: return 500;
    }
}

int route_status_registry(int rc)
{
    switch (rc) {
    case REGISTRY_NOT_FOUND: return 404;
    case REGISTRY_BUSY:
    case REGISTRY_LAST: return 409;
    case REGISTRY_INVALID: return 400;
    /* A checkpoint that does not load or validate: the request named it. */
    case REGISTRY_ERR: return 422;
    default: return 500;
    }
}

int route_status_batch(int rc)
{
    switch (rc) {
    case BATCH_FULL: return 429;
    case BATCH_TOO_LARGE: return 413;
    case BATCH_SHUTDOWN: return 503;
    /* Nobody reads it: the client has gone (or was answered 503 at shutdown). */
    case BATCH_CANCELLED: return 503;
    default: return 500;
    }
}

int route_status_store(int rc)
{
    switch (rc) {
    case STORE_NOT_FOUND: return 404;
    case STORE_EXISTS:
    case STORE_CONFLICT: return 409;
    case STORE_INVALID: return 400;
    default: return 500;
    }
}
