/* Row codecs of compressed search mirrors (mirror.h): f16 and int8.
 *
 * f16:  each component as an IEEE half (round to nearest even), 2 bytes.
 * int8: per dimension j an affine range [lo_j, hi_j] split into 254 steps:
 *       x ~ off_j + step_j * c, c in -127..127, off_j = (lo_j + hi_j) / 2,
 *       step_j = (hi_j - lo_j) / 254; 1 byte per component. The error of a
 *       component inside its range is at most step_j / 2.
 *
 * The int8 ranges come from the data: codec_int8_widen grows them so that
 * given rows fit (never shrinks them), so a value is never clamped; the
 * caller re-encodes the rows it already holds in the dimensions that changed
 * (codec_int8_recode), from the values they decode to under the old range. */
#ifndef FRANCA_INDEX_MIRROR_CODEC_H
#define FRANCA_INDEX_MIRROR_CODEC_H

#include <stddef.h>
#include <stdint.h>

void codec_f16_encode(const float *x, int w, uint16_t *out);
/* The first w components of an encoded row. */
void codec_f16_decode(const uint16_t *c, int w, float *out);

struct codec_int8 {
    int w;
    float *lo, *hi;        /* [w]; lo > hi: nothing seen yet in that dimension */
    float *off, *step, *inv; /* [w]: derived from lo, hi (inv = 1 / step) */
};

/* 0, or -1 when out of memory. */
int codec_int8_init(struct codec_int8 *q, int w);
void codec_int8_free(struct codec_int8 *q);

/* Grows the ranges to cover the n rows x [n, w]. headroom >= 1 widens a range
 * that has to grow by that factor about its centre, so that the next rows
 * rarely need another change. changed[w] (may be NULL) gets 1 for each
 * dimension whose range changed, and old_off / old_step (may be NULL) the
 * parameters before the change. Returns the number of dimensions changed. */
int codec_int8_widen(struct codec_int8 *q, const float *x, size_t n, float headroom,
                     uint8_t *changed, float *old_off, float *old_step);
/* Multiplies every range that holds data by factor about its centre. */
void codec_int8_scale_ranges(struct codec_int8 *q, float factor);

void codec_int8_encode(const struct codec_int8 *q, const float *x, int8_t *out);
void codec_int8_decode(const struct codec_int8 *q, const int8_t *c, int w, float *out);
/* Re-encodes n rows of codes (leading dimension ld) in the changed dimensions
 * from the old parameters to the current ones. */
void codec_int8_recode(const struct codec_int8 *q, int8_t *codes, size_t n, size_t ld,
                       const uint8_t *changed, const float *old_off, const float *old_step);

#endif
