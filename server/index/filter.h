/* Metadata filters of search requests: an object ANDing conditions on top-level
 * metadata keys.
 *
 *   {"color": "red"}                         equality (a string, number, bool or null)
 *   {"year": {"$gte": 2000, "$lt": 2010}}    ranges ($gt $gte $lt $lte: a number or a
 *                                            string; numbers compare numerically,
 *                                            strings bytewise; other types never match)
 *   {"tag": {"$in": ["a", "b"]}}             membership ($in, $nin: an array of scalars)
 *   {"tag": {"$ne": "x"}}                    inequality
 *
 * Several operators on one key are ANDed. An item without the key, or without
 * metadata, never matches (not even $ne / $nin). Numbers compare by value
 * (1 equals 1.0). The empty object matches everything. */
#ifndef FRANCA_INDEX_FILTER_H
#define FRANCA_INDEX_FILTER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#define FILTER_MAX_CLAUSES 64
#define FILTER_MAX_IN 1024

struct filter;

/* Compiles spec (a JSON object). Returns 0 and *out (NULL for an empty filter,
 * which matches everything), or -1 with a message naming the bad part. */
int filter_compile(const json_t *spec, struct filter **out, char *err, size_t errlen);
/* metadata: a JSON object, or NULL for an item without metadata. */
bool filter_match(const struct filter *f, const json_t *metadata);
void filter_free(struct filter *f);

#endif
