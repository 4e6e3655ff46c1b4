/* Every module error code's HTTP status, in one place: the parsers, the
 * registry, the batcher and the index return their own codes and know
 * nothing of HTTP; routes answer with these. */
#ifndef FRANCA_ROUTE_STATUS_H
#define FRANCA_ROUTE_STATUS_H

#include "datauri.h"

int route_status_datauri(enum datauri_status st); /* datauri.h; 200 for DATAURI_OK */
int route_status_multipart(int rc);               /* multipart.h; 200 for MULTIPART_OK */
int route_status_options(int rc);                 /* options.h; 200 for OPTIONS_OK */
int route_status_registry(int rc);                /* registry.h */
int route_status_batch(int rc);                   /* batcher.h (429 for BATCH_FULL) */
int route_status_store(int rc);                   /* index/store.h */

#endif
