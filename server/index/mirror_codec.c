/* f16 and int8 row codecs of compressed mirrors; see mirror_codec.h. */
#include "index/mirror_codec.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "index/patch_codec.h"

void codec_f16_encode(const float *x, int w, uint16_t *out)
{
    for (int j = 0; j < w; j++) out[j] = patch_f32_to_f16(x[j]);
}

#ifdef __F16C__
#include <immintrin.h>
/* Eight halves per instruction: search decodes every row it scans. */
void codec_f16_decode(const uint16_t *c, int w, float *out)
{
    int j = 0;
    for (; j + 8 <= w; j += 8)
        _mm256_storeu_ps(out + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(c + j))));
    for (; j < w; j++) out[j] = patch_f16_to_f32(c[j]);
}
#else
/* patch_decode's f16 path is a table lookup; the first w halves of a row are
 * a row of width w in that encoding. */
void codec_f16_decode(const uint16_t *c, int w, float *out) { patch_decode(c, 1, w, PATCH_F16, out); }
#endif

/* A dimension whose data is one value still needs a step above 0. */
#define MIN_HALF_RANGE 1e-20f

static void derive(struct codec_int8 *q, int j)
{
    float half = (q->hi[j] - q->lo[j]) * 0.5f;
    if (!(half > MIN_HALF_RANGE)) half = MIN_HALF_RANGE;
    q->off[j] = (q->lo[j] + q->hi[j]) * 0.5f;
    q->step[j] = half / 127.0f;
    q->inv[j] = 127.0f / half;
}

int codec_int8_init(struct codec_int8 *q, int w)
{
    memset(q, 0, sizeof *q);
    q->w = w;
    float *a = malloc((size_t)w * 5 * sizeof *a);
    if (!a) return -1;
    q->lo = a, q->hi = a + w, q->off = a + 2 * w, q->step = a + 3 * w, q->inv = a + 4 * w;
    for (int j = 0; j < w; j++) {
        q->lo[j] = INFINITY;
        q->hi[j] = -INFINITY;
        q->off[j] = 0.0f;
        q->step[j] = MIN_HALF_RANGE / 127.0f;
        q->inv[j] = 127.0f / MIN_HALF_RANGE;
    }
    return 0;
}

void codec_int8_free(struct codec_int8 *q)
{
    free(q->lo); /* one allocation */
    memset(q, 0, sizeof *q);
}

int codec_int8_widen(struct codec_int8 *q, const float *x, size_t n, float headroom,
                     uint8_t *changed, float *old_off, float *old_step)
{
    int count = 0;
    for (int j = 0; j < q->w; j++) {
        float lo = q->lo[j], hi = q->hi[j];
        for (size_t i = 0; i < n; i++) {
            const float v = x[i * (size_t)q->w + j];
            if (v < lo) lo = v;
            if (v > hi) hi = v;
        }
        const int grow = lo < q->lo[j] || hi > q->hi[j];
        if (changed) changed[j] = (uint8_t)grow;
        if (!grow) continue;
        if (old_off) old_off[j] = q->off[j];
        if (old_step) old_step[j] = q->step[j];
        const float mid = (lo + hi) * 0.5f, half = (hi - lo) * 0.5f * headroom;
        q->lo[j] = fminf(lo, mid - half);
        q->hi[j] = fmaxf(hi, mid + half);
        derive(q, j);
        count++;
    }
    return count;
}

void codec_int8_scale_ranges(struct codec_int8 *q, float factor)
{
    for (int j = 0; j < q->w; j++) {
        if (q->lo[j] > q->hi[j]) continue;
        const float mid = (q->lo[j] + q->hi[j]) * 0.5f, half = (q->hi[j] - q->lo[j]) * 0.5f;
        q->lo[j] = fminf(q->lo[j], mid - half * factor);
        q->hi[j] = fmaxf(q->hi[j], mid + half * factor);
        derive(q, j);
    }
}

static inline int8_t quantise(float v)
{
    /* Clamped all the same: float rounding at the range's ends. */
    const long c = lrintf(v);
    return (int8_t)(c > 127 ? 127 : c < -127 ? -127 : c);
}

void codec_int8_encode(const struct codec_int8 *q, const float *x, int8_t *out)
{
    for (int j = 0; j < q->w; j++) out[j] = quantise((x[j] - q->off[j]) * q->inv[j]);
}

void codec_int8_decode(const struct codec_int8 *q, const int8_t *c, int w, float *out)
{
    const float *off = q->off, *step = q->step;
#pragma omp simd
    for (int j = 0; j < w; j++) out[j] = off[j] + step[j] * (float)c[j];
}

void codec_int8_recode(const struct codec_int8 *q, int8_t *codes, size_t n, size_t ld,
                       const uint8_t *changed, const float *old_off, const float *old_step)
{
    /* Column by column: usually few dimensions change. */
    for (int j = 0; j < q->w; j++) {
        if (!changed[j]) continue;
        for (size_t r = 0; r < n; r++) {
            int8_t *c = codes + r * ld + j;
            const float v = old_off[j] + old_step[j] * (float)*c;
            *c = quantise((v - q->off[j]) * q->inv[j]);
        }
    }
}
