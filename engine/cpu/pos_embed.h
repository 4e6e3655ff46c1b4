/* Positional-embedding interpolation exactly as the reference (docs/model.md §3):
 * torch F.interpolate(mode="bicubic", align_corners=False, antialias=False,
 * scale_factor=((gh + 0.1) / M, (gw + 0.1) / M)) on the M x M grid, in float32. */
#ifndef FRANCA_CPU_POS_EMBED_H
#define FRANCA_CPU_POS_EMBED_H

/* Per-axis taps and weights of one output coordinate. */
struct cubic_taps {
    int idx[4];
    float w[4];
};

/* Taps for output index dst when resizing in_size -> out_size with the
 * reference's scale factor (out_size + 0.1) / in_size. */
struct cubic_taps pos_embed_taps(int dst, int in_size, int out_size);

/* table: [1 + M*M, D] (CLS row first); out: [1 + gh*gw, D]. When gh == gw == M the
 * table is copied unchanged, as the reference does. */
void pos_embed_interpolate(float *out, const float *table, int M, int D, int gh, int gw);

#endif
