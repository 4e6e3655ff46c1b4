/* Patch vectors as stored: each patch token of a patch-level collection is kept
 * L2-normalised at the collection's width W in one of two encodings:
 *   f16:  W IEEE half floats, little-endian           (W x 2 bytes)
 *   int8: a float32 scale s, then W int8 q, x = s * q  (W + 4 bytes)
 * An item's patch matrix is its N = grid_h x grid_w patches row-major, one
 * encoded vector after the other. The same bytes live in SQLite and in the
 * patch mirror, so a search scores exactly what a restart reloads. */
#ifndef FRANCA_INDEX_PATCH_CODEC_H
#define FRANCA_INDEX_PATCH_CODEC_H

#include <stddef.h>
#include <stdint.h>

enum patch_type { PATCH_F16 = 0, PATCH_INT8 = 1 };

/* "f16", "int8"; NULL for an unknown value. */
const char *patch_type_name(enum patch_type t);
/* 0 and *t set, or -1 for an unknown name. */
int patch_type_parse(const char *name, enum patch_type *t);

/* Bytes of one encoded vector of width w. */
size_t patch_vec_bytes(int w, enum patch_type t);

/* Encodes n vectors [n, w] (finite floats) into dst (n * patch_vec_bytes). */
void patch_encode(const float *src, size_t n, int w, enum patch_type t, void *dst);
/* Decodes n encoded vectors into dst [n, w]. */
void patch_decode(const void *src, size_t n, int w, enum patch_type t, float *dst);

/* Half-float conversions (round to nearest even; used by the encoder). */
uint16_t patch_f32_to_f16(float x);
float patch_f16_to_f32(uint16_t h);

#endif
