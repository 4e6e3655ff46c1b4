/* Throughput of the CUDA engine (bf16), one process for many points.
 *
 *   bench_gpu [--peak TFLOPS] [--seconds S] [--compare-pipeline] CASE...
 *   CASE = ARCH:RES:B1,B2,...:ATTN   ARCH s|b|l (ViT-S/B/L-14, SwiGLU, random weights),
 *                                    ATTN auto|fused|unfused
 *
 * Every time is end to end, as a caller of vit_forward sees it: from float32
 * images in host memory to CLS embeddings in host memory, so it includes the
 * copy into pinned staging, the host-to-device upload and the download (the
 * engine overlaps them with compute by pipelining chunks of the batch). Prints
 * one markdown table row per point: model, resolution, batch, attention,
 * pipeline chunks, ms/batch, images/s, the input upload rate that implies
 * (GB/s of float32 images), achieved TFLOP/s and % of the given bf16 GEMM
 * peak. With --compare-pipeline each point is also run with the pipeline off
 * (FRANCA_CUDA_CHUNK_ROWS=0: one chunk, upload then compute then download) and
 * the row gains that images/s and the speedup of the pipeline. Each point: one
 * warm-up forward, then forwards until S seconds (default 1) and at least 3;
 * the median batch time is reported. CLS only is downloaded, as a server's
 * embeddings route does. Exit 1 on any engine error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "checkpoint.h"
#include "cuda/plan.h"
#include "errors.h"
#include "vit.h"
#include "clock.h"

#define CHUNK_ENV "FRANCA_CUDA_CHUNK_ROWS"

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static struct vit_model *make(char arch, char *err, size_t errlen)
{
    int D, depth, heads;
    const char *name;
    switch (arch) {
    case 's': D = 384; depth = 12; heads = 6; name = "ViT-S/14"; break;
    case 'b': D = 768; depth = 12; heads = 12; name = "ViT-B/14"; break;
    case 'l': D = 1024; depth = 24; heads = 16; name = "ViT-L/14"; break;
    default: set_err(err, errlen, "unknown arch '%c' (s, b or l)", arch); return NULL;
    }
    struct checkpoint ck;
    memset(&ck, 0, sizeof ck);
    model_config_defaults(&ck.cfg, D, depth);
    ck.cfg.num_heads = heads;
    ck.cfg.pos_grid = 37;
    snprintf(ck.cfg.name, sizeof ck.cfg.name, "%s", name);
    if (vit_weights_alloc(&ck.cfg, &ck.w, err, errlen)) return NULL;
    vit_weights_init_random(&ck.cfg, &ck.w, 7);
    struct vit_model *m = NULL;
    if (vit_model_from_checkpoint(&ck, &m, err, errlen)) {
        checkpoint_free(&ck);
        return NULL;
    }
    if (vit_model_use_device(m, VIT_DEVICE_CUDA, VIT_PRECISION_BF16, err, errlen)) {
        vit_model_free(m);
        return NULL;
    }
    return m;
}

/* Median end-to-end seconds per forward of B images at res (one warm-up first). */
static int time_forward(struct vit_model *m, const float *x, float *cls, int res, int B,
                        double seconds, double *median, char *err, size_t errlen)
{
    struct vit_workspace *ws = NULL;
    const struct vit_outputs out = {.cls = cls};
    int rc = vit_forward(m, &ws, x, B, res, res, &out, err, errlen);
    double times[1000];
    int it = 0;
    const double t_end = clock_now_s() + seconds;
    while (!rc && it < 1000 && (it < 3 || clock_now_s() < t_end)) {
        const double t0 = clock_now_s();
        rc = vit_forward(m, &ws, x, B, res, res, &out, err, errlen);
        times[it++] = clock_now_s() - t0;
    }
    vit_workspace_free(ws);
    if (rc) return rc;
    qsort(times, it, sizeof(double), cmp_double);
    *median = times[it / 2];
    return 0;
}

/* Token rows per pipeline chunk the engine will use (as engine/cuda/engine.cu reads it). */
static long long chunk_rows(void)
{
    const char *v = getenv(CHUNK_ENV);
    if (!v || !*v) return CUDA_PLAN_CHUNK_ROWS;
    char *end = NULL;
    const long long r = strtoll(v, &end, 10);
    return *end || r < 0 ? CUDA_PLAN_CHUNK_ROWS : r;
}

static int point(struct vit_model *m, int res, int B, double seconds, double peak, const char *attn,
                 int compare, char *err, size_t errlen)
{
    const struct model_config *c = vit_model_config(m);
    const size_t n = (size_t)B * 3 * res * res;
    float *x = malloc(sizeof(float) * n), *cls = malloc(sizeof(float) * B * c->embed_dim);
    if (!x || !cls) {
        free(x);
        free(cls);
        return set_err(err, errlen, "out of memory");
    }
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        x[i] = (float)((s >> 40) * (4.0 / (1ull << 24)) - 2.0);
    }
    const int T = 1 + c->register_tokens + (res / c->patch_size) * (res / c->patch_size);
    const int chunks = cuda_plan_chunk_count(B, T, chunk_rows());
    double t = 0, t1 = 0;
    int rc = time_forward(m, x, cls, res, B, seconds, &t, err, errlen);
    if (!rc && compare) {
        /* The same point with the pipeline off; the caller's setting comes back after. */
        const char *was = getenv(CHUNK_ENV);
        char saved[64] = "";
        if (was) snprintf(saved, sizeof saved, "%s", was);
        setenv(CHUNK_ENV, "0", 1);
        rc = time_forward(m, x, cls, res, B, seconds, &t1, err, errlen);
        if (was) setenv(CHUNK_ENV, saved, 1);
        else unsetenv(CHUNK_ENV);
    }
    if (!rc) {
        const double ips = B / t, tflops = vit_flops_per_image(c, res, res) * ips / 1e12;
        const double in_gbs = ips * 3.0 * res * res * sizeof(float) / 1e9;
        char pct[32] = "-";
        if (peak > 0) snprintf(pct, sizeof pct, "%.0f %%", 100.0 * tflops / peak);
        printf("| %s | %d | %d | %s | %d | %.2f | %.1f | %.1f | %.1f | %s |", c->name, res, B, attn,
               chunks, t * 1e3, ips, in_gbs, tflops, pct);
        if (compare) printf(" %.1f | %.2fx |", B / t1, t1 / t);
        printf("\n");
        fflush(stdout);
    }
    free(x);
    free(cls);
    return rc;
}

int main(int argc, char **argv)
{
    double peak = 0, seconds = 1.0;
    char err[ERR_LEN];
    int first = 1, compare = 0;
    for (; first < argc && argv[first][0] == '-'; first += 2) {
        if (!strcmp(argv[first], "--compare-pipeline")) {
            compare = 1;
            first--;
            continue;
        }
        if (first + 1 >= argc) break;
        if (!strcmp(argv[first], "--peak")) peak = atof(argv[first + 1]);
        else if (!strcmp(argv[first], "--seconds")) seconds = atof(argv[first + 1]);
        else break;
    }
    if (first >= argc) {
        fprintf(stderr, "usage: bench_gpu [--peak TFLOPS] [--seconds S] [--compare-pipeline] "
                        "ARCH:RES:B1,B2,..:ATTN...\n");
        return 2;
    }
    if (!vit_cuda_available(err, sizeof err)) {
        printf("SKIP: %s\n", err);
        return 0;
    }
    printf("End to end (host float32 images in, host CLS out; uploads and downloads included).\n\n");
    printf("| model | res | batch | attention | chunks | ms/batch | images/s | input GB/s | TFLOP/s "
           "| %% of bf16 GEMM |%s\n", compare ? " images/s, 1 chunk | pipeline speedup |" : "");
    printf("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|%s\n", compare ? "---:|---:|" : "");
    struct vit_model *m = NULL;
    char have = 0;
    int rc = 0;
    for (int a = first; a < argc && !rc; a++) {
        char arch, attn[16], batches[256];
        int res;
        if (sscanf(argv[a], "%c:%d:%255[0-9,]:%15s", &arch, &res, batches, attn) != 4) {
            fprintf(stderr, "bench_gpu: bad case '%s'\n", argv[a]);
            rc = 2;
            break;
        }
        if (arch != have) {
            vit_model_free(m);
            if (!(m = make(arch, err, sizeof err))) {
                rc = 1;
                break;
            }
            have = arch;
        }
        const enum vit_attention at = !strcmp(attn, "fused") ? VIT_ATTENTION_FUSED
                                      : !strcmp(attn, "unfused") ? VIT_ATTENTION_UNFUSED
                                                                 : VIT_ATTENTION_AUTO;
        if (vit_model_set_attention(m, at, err, sizeof err)) {
            rc = 1;
            break;
        }
        for (char *tok = strtok(batches, ","); tok && !rc; tok = strtok(NULL, ",")) {
            const int B = atoi(tok);
            if (B < 1) {
                fprintf(stderr, "bench_gpu: bad batch '%s'\n", tok);
                rc = 2;
                break;
            }
            rc = point(m, res, B, seconds, peak, attn, compare, err, sizeof err);
        }
    }
    vit_model_free(m);
    if (rc == 1) fprintf(stderr, "bench_gpu: %s\n", err);
    return rc;
}
