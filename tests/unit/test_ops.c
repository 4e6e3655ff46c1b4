/* CPU forward ops against naive double-precision references. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cpu/attention_fused.h"
#include "cpu/ops.h"
#include "cpu/pos_embed.h"
#include "matryoshka.h"
#include "rasa.h"

static void test_layernorm(void)
{
    const int rows = 5, D = 48;
    float *x = rand_vec(rows * D), *w = rand_vec(D), *b = rand_vec(D), *y = malloc(sizeof(float) * rows * D);
    for (int i = 0; i < D; i++) x[i] += 1000.0f; /* large offset: precision of the variance */
    layernorm_forward(y, x, w, b, rows, D, 1e-6f);
    float worst = 0;
    for (int r = 0; r < rows; r++) {
        double mu = 0, var = 0;
        for (int i = 0; i < D; i++) mu += x[r * D + i];
        mu /= D;
        for (int i = 0; i < D; i++) var += (x[r * D + i] - mu) * (x[r * D + i] - mu);
        var /= D;
        for (int i = 0; i < D; i++) {
            double ref = (x[r * D + i] - mu) / sqrt(var + 1e-6) * w[i] + b[i];
            worst = fmaxf(worst, fabsf((float)ref - y[r * D + i]));
        }
    }
    CHECK(worst < 2e-4f, "layernorm max error %g", worst);

    /* eps matters when the variance is as small as eps: var 1e-6 + eps 1e-6. */
    const float tiny[2] = {-1e-3f, 1e-3f}, one[2] = {1, 1}, zero[2] = {0, 0};
    float t[2];
    layernorm_forward(t, tiny, one, zero, 1, 2, 1e-6f);
    CHECK(fabsf(t[1] - 0.70710678f) < 1e-5f, "layernorm honours eps 1e-6 (%g)", t[1]);
    layernorm_forward(t, tiny, one, zero, 1, 2, 1e-5f);
    CHECK(fabsf(t[1] - 0.30151134f) < 1e-5f, "layernorm honours eps 1e-5 (%g)", t[1]);
    free(x); free(w); free(b); free(y);
}

/* residual_layernorm equals the add followed by layernorm_forward (float), and
 * that rounded to bf16 (bf16 output); with and without a LayerScale gamma. */
static void test_residual_layernorm(void)
{
    const int rows = 7, D = 40;
    float *x0 = rand_vec(rows * D), *y = rand_vec(rows * D), *g = rand_vec(D), *w = rand_vec(D),
          *b = rand_vec(D);
    float *x = malloc(sizeof(float) * rows * D), *want = malloc(sizeof(float) * rows * D),
          *xs = malloc(sizeof(float) * rows * D), *got = malloc(sizeof(float) * rows * D);
    mm_bf16 *got16 = malloc(sizeof(mm_bf16) * rows * D);
    for (int with_gamma = 0; with_gamma < 2; with_gamma++) {
        for (int i = 0; i < rows * D; i++) xs[i] = x0[i] + (with_gamma ? g[i % D] : 1.0f) * y[i];
        layernorm_forward(want, xs, w, b, rows, D, 1e-6f);
        memcpy(x, x0, sizeof(float) * rows * D);
        residual_layernorm(x, y, with_gamma ? g : NULL, got, MM_F32, w, b, rows, D, 1e-6f);
        CHECK(max_abs_diff(x, xs, rows * D) < 1e-6f && max_abs_diff(got, want, rows * D) < 1e-5f,
              "residual_layernorm (gamma %d) = add + layernorm_forward", with_gamma);
        memcpy(x, x0, sizeof(float) * rows * D);
        residual_layernorm(x, y, with_gamma ? g : NULL, got16, MM_BF16, w, b, rows, D, 1e-6f);
        int bad = 0; /* bf16 keeps 8 significant bits: within half a unit, 2^-9 relative */
        for (int i = 0; i < rows * D; i++)
            bad += !(fabsf(mm_bf16_value(got16[i]) - want[i]) <= fabsf(want[i]) * 0x1p-8f + 1e-6f);
        CHECK(bad == 0, "residual_layernorm bf16 (gamma %d): %d values off the float ones by more "
              "than bf16 rounding", with_gamma, bad);
    }
    free(x0); free(y); free(g); free(w); free(b); free(x); free(want); free(xs); free(got);
    free(got16);
}

static void test_linear(void)
{
    const int rows = 7, K = 33, N = 19;
    float *x = rand_vec(rows * K), *W = rand_vec(N * K), *bias = rand_vec(N), *y = malloc(sizeof(float) * rows * N);
    linear_forward(y, x, W, bias, rows, K, N);
    float worst = 0;
    for (int r = 0; r < rows; r++)
        for (int n = 0; n < N; n++) {
            double s = bias[n];
            for (int k = 0; k < K; k++) s += (double)x[r * K + k] * W[n * K + k];
            worst = fmaxf(worst, fabsf((float)s - y[r * N + n]));
        }
    CHECK(worst < 1e-5f, "linear max error %g", worst);
    linear_forward(y, x, W, NULL, rows, K, N);
    double s = 0;
    for (int k = 0; k < K; k++) s += (double)x[k] * W[k];
    CHECK(fabsf((float)s - y[0]) < 1e-5f, "linear without bias");
    free(x); free(W); free(bias); free(y);
}

static void test_activations(void)
{
    const int rows = 3, Hs = 10;
    float *h = rand_vec(rows * 2 * Hs), *o = malloc(sizeof(float) * rows * Hs);
    for (int i = 0; i < rows * 2 * Hs; i++) h[i] *= 6.0f;
    swiglu_forward(o, h, rows, Hs);
    float worst = 0;
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < Hs; j++) {
            double a = h[r * 2 * Hs + j], g = h[r * 2 * Hs + Hs + j];
            worst = fmaxf(worst, fabsf((float)(a / (1 + exp(-a)) * g) - o[r * Hs + j]));
        }
    CHECK(worst < 1e-5f, "swiglu max error %g", worst);

    float v[5] = {-3.0f, -0.5f, 0.0f, 0.7f, 4.0f};
    float ref[5];
    for (int i = 0; i < 5; i++) ref[i] = (float)(0.5 * v[i] * (1 + erf(v[i] / sqrt(2.0))));
    gelu_forward(v, 5);
    CHECK(max_abs_diff(v, ref, 5) < 1e-6f, "gelu (exact erf)");
    free(h); free(o);
}

static void test_patchify(void)
{
    const int B = 2, C = 3, H = 8, W = 12, P = 4, gw = W / P, K = C * P * P;
    float *x = malloc(sizeof(float) * B * C * H * W), *o = malloc(sizeof(float) * B * (H / P) * gw * K);
    for (int i = 0; i < B * C * H * W; i++) x[i] = (float)i;
    patchify(o, x, B, C, H, W, P);
    /* image 1, patch (gy=1, gx=2), channel 2, pixel (py=3, px=1) */
    const int b = 1, gy = 1, gx = 2, c = 2, py = 3, px = 1;
    const float got = o[((b * (H / P) + gy) * gw + gx) * K + (c * P + py) * P + px];
    const float want = x[((b * C + c) * H + gy * P + py) * W + gx * P + px];
    CHECK(got == want, "patchify element %g != %g", got, want);
    free(x); free(o);
}

/* attention_forward in type t against a double reference on every 7th query
 * (inputs rounded to bf16 first when t is bf16, so that what remains is the
 * rounding of the probabilities). */
static void check_attention(int B, int T, int D, int heads, enum mm_type t, float tol)
{
    const int hd = D / heads;
    const size_t n = (size_t)B * T * 3 * D;
    float *qkv = rand_vec(n), *out = malloc(sizeof(float) * B * T * D);
    mm_bf16 *qkv16 = malloc(sizeof(mm_bf16) * n), *out16 = malloc(sizeof(mm_bf16) * B * T * D);
    mm_to_bf16(qkv16, qkv, n);
    if (t == MM_BF16) mm_from_bf16(qkv, qkv16, n);
    void *scratch = malloc(attention_scratch_bytes(B, T, D, heads, t));
    char err[256] = "";
    const bool bf = t == MM_BF16;
    int rc = attention_forward(bf ? (void *)out16 : out, bf ? (void *)qkv16 : qkv, scratch, B, T,
                               D, heads, t, err, sizeof err);
    CHECK(rc == 0, "attention_forward: %s", err);
    if (t == MM_BF16) mm_from_bf16(out, out16, (size_t)B * T * D);
    float worst = 0;
    double *s = malloc(sizeof(double) * T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < T; i += 7) {
                const float *q = qkv + ((size_t)b * T + i) * 3 * D + h * hd;
                double mx = -1e300, sum = 0;
                for (int j = 0; j < T; j++) {
                    const float *k = qkv + ((size_t)b * T + j) * 3 * D + D + h * hd;
                    double d = 0;
                    for (int e = 0; e < hd; e++) d += (double)q[e] * k[e];
                    s[j] = d / sqrt((double)hd);
                    mx = fmax(mx, s[j]);
                }
                for (int j = 0; j < T; j++) sum += (s[j] = exp(s[j] - mx));
                for (int e = 0; e < hd; e++) {
                    double acc = 0;
                    for (int j = 0; j < T; j++)
                        acc += s[j] / sum * qkv[((size_t)b * T + j) * 3 * D + 2 * D + h * hd + e];
                    worst = fmaxf(worst, fabsf((float)acc - out[((size_t)b * T + i) * D + h * hd + e]));
                }
            }
    CHECK(worst < tol, "attention B%d T%d D%d heads %d %s: max error %g (tolerance %g)", B, T, D,
          heads, t == MM_BF16 ? "bf16" : "fp32", worst, tol);
    free(qkv); free(out); free(qkv16); free(out16); free(scratch); free(s);
}

static void test_attention(void)
{
    /* Long sequences go in query blocks: the scores of 1 x 2 heads x 1500
     * tokens would take 18 MB, more than the scratch target. */
    CHECK(attention_scratch_bytes(1, 1500, 64, 2, MM_F32) < (size_t)2 * 1500 * 1500 * sizeof(float),
          "1500 tokens are split into query blocks");
    /* Head dims 8 (unfused in bf16), 64, 32 and 16 (the fused kernel's three
     * output tile widths where the CPU has AVX512-BF16); odd and short T. */
    CHECK(attention_fused_applies(128, 2) == mm_bf16_native() && !attention_fused_applies(32, 4),
          "the fused kernel serves head dims that are multiples of 16, on AVX512-BF16");
    const int shapes[][4] = {{2, 150, 32, 4}, {3, 257, 128, 2}, {1, 1500, 64, 2}, {2, 37, 96, 6},
                             {1, 45, 96, 3}};
    for (int i = 0; i < 5; i++) {
        check_attention(shapes[i][0], shapes[i][1], shapes[i][2], shapes[i][3], MM_F32, 1e-5f);
        if (mm_bf16_supported())
            check_attention(shapes[i][0], shapes[i][1], shapes[i][2], shapes[i][3], MM_BF16, 4e-3f);
    }
}

static void test_pos_embed(void)
{
    /* docs/model.md §3: 37 -> 16 uses ratio 37/16.1. Output 0 maps to
     * src = ratio * 0.5 - 0.5. */
    struct cubic_taps t = pos_embed_taps(0, 37, 16);
    const double src = 37.0 / 16.1 * 0.5 - 0.5;
    const double frac = src - floor(src);
    CHECK(t.idx[1] == (int)floor(src), "37->16 tap index %d", t.idx[1]);
    /* Keys A=-0.75 weight of the near tap at frac. */
    const double A = -0.75, w1 = ((A + 2) * frac - (A + 3)) * frac * frac + 1;
    CHECK(fabs(t.w[1] - w1) < 1e-6, "37->16 near weight %g vs %g", t.w[1], w1);
    CHECK(fabsf(t.w[0] + t.w[1] + t.w[2] + t.w[3] - 1.0f) < 1e-6f, "cubic weights sum to 1");
    /* 16 -> 37 (ratio 16/37.1): output 0 has a negative source, taps clamp to 0. */
    t = pos_embed_taps(0, 16, 37);
    CHECK(t.idx[0] == 0 && t.idx[1] == 0, "16->37 clamped taps %d %d", t.idx[0], t.idx[1]);

    /* A constant grid stays constant; identity at gh == gw == M copies. */
    const int M = 5, D = 3;
    float *table = malloc(sizeof(float) * (1 + M * M) * D), *out = malloc(sizeof(float) * (1 + 9 * 7) * D);
    for (int i = 0; i < (1 + M * M) * D; i++) table[i] = i < D ? -1.0f : 2.5f;
    pos_embed_interpolate(out, table, M, D, 9, 7);
    float worst = 0;
    for (int i = D; i < (1 + 63) * D; i++) worst = fmaxf(worst, fabsf(out[i] - 2.5f));
    CHECK(worst < 1e-5f && out[0] == -1.0f, "constant grid stays constant (%g)", worst);
    for (int i = 0; i < (1 + M * M) * D; i++) table[i] = frand();
    pos_embed_interpolate(out, table, M, D, M, M);
    CHECK(max_abs_diff(out, table, (1 + M * M) * D) == 0.0f, "identity grid is copied");
    /* Same grid but non-square request interpolates (M x M+1 is not the identity). */
    pos_embed_interpolate(out, table, M, D, M, M + 1);
    CHECK(max_abs_diff(out, table + 0, D) == 0.0f, "CLS row never interpolated");
    free(table); free(out);
}

static void test_rasa(void)
{
    const int D = 16, rounds = 3;
    float *w = rand_vec(rounds * 2 * D), *u = malloc(sizeof(float) * rounds * 2 * D);
    char err[256];
    CHECK(rasa_prepare(w, rounds, D, u, err, sizeof err) == 0, "rasa_prepare: %s", err);
    double n1 = 0, n2 = 0, d = 0;
    for (int i = 0; i < D; i++) n1 += u[i] * u[i], n2 += u[D + i] * u[D + i], d += u[i] * u[D + i];
    CHECK(fabs(n1 - 1) < 1e-5 && fabs(n2 - 1) < 1e-5 && fabs(d) < 1e-5, "orthonormal pair");

    /* After the last round, tokens have no component along that round's plane;
     * applying the operator twice equals applying it once for a single round. */
    float *z = rand_vec(4 * D);
    rasa_apply(u, rounds, D, z, 4);
    const float *last = u + (rounds - 1) * 2 * D;
    double p = 0, q = 0;
    for (int i = 0; i < D; i++) p += z[i] * last[i], q += z[i] * last[D + i];
    CHECK(fabs(p) < 1e-5 && fabs(q) < 1e-5, "last plane removed (%g %g)", p, q);
    float *z1 = rand_vec(D), *z2 = malloc(sizeof(float) * D);
    rasa_apply(u, 1, D, z1, 1);
    memcpy(z2, z1, sizeof(float) * D);
    rasa_apply(u, 1, D, z2, 1);
    CHECK(max_abs_diff(z1, z2, D) < 1e-6f, "one round is a projection");

    memset(w, 0, sizeof(float) * D);
    CHECK(rasa_prepare(w, 1, D, u, err, sizeof err) == -1 && strstr(err, "zero"), "zero row refused");
    free(w); free(u); free(z); free(z1); free(z2);
}

static void test_matryoshka(void)
{
    const int rows = 3, D = 10, W = 4;
    float *x = rand_vec(rows * D), out[3 * 4];
    matryoshka_cut(x, rows, D, W, false, out);
    CHECK(out[4] == x[10] && out[7] == x[13], "prefix cut");
    matryoshka_cut(x, rows, D, W, true, out);
    for (int r = 0; r < rows; r++) {
        double n = 0, dir = 0, nx = 0;
        for (int i = 0; i < W; i++) n += out[r * W + i] * out[r * W + i], dir += out[r * W + i] * x[r * D + i],
                                    nx += x[r * D + i] * x[r * D + i];
        CHECK(fabs(n - 1) < 1e-5 && fabs(dir - sqrt(nx)) < 1e-5, "row %d unit norm, same direction", r);
    }
    float zero[10] = {0}, zout[4];
    matryoshka_cut(zero, 1, D, W, true, zout);
    CHECK(zout[0] == 0.0f && !isnan(zout[3]), "zero row stays zero");
    free(x);
}

int main(void)
{
    test_layernorm();
    test_residual_layernorm();
    test_linear();
    test_activations();
    test_patchify();
    test_attention();
    test_pos_embed();
    test_rasa();
    test_matryoshka();
    return check_summary();
}
