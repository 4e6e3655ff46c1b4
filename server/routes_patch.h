/* Patch-level collections in the routes (routes_patch.c): the items of an
 * insert, the search, the heat map. */
#ifndef FRANCA_ROUTES_PATCH_H
#define FRANCA_ROUTES_PATCH_H

#include <jansson.h>

#include "routes_index.h"

/* One insert item given as {"patches": [[w numbers] x N], "grid": [h, w]}:
 * fills item's patches (a new *blob, encoded for c), grid and vector (vec
 * [width]: the L2-normalised mean of the patches). 0, or -1 with why. */
int route_patch_item_json(struct coll *c, const json_t *it, struct item_in *item, float *vec,
                          void **blob, char *why, size_t len);
/* The same from embedded image k of im (im->patches). 0, or -1 (memory). */
int route_patch_item_image(struct coll *c, const struct route_images *im, int k,
                           struct item_in *item, float *vec, void **blob);

/* POST /v1/collections/{name}/search on a patch-level collection (the search
 * route hands it over). */
void route_patch_search(struct http_request *req, struct app *app);
/* True when the {name} collection exists and is patch-level. */
bool route_is_patch_collection(struct http_request *req, struct app *app);

#endif
