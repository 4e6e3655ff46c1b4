/* CUDA engine against the CPU engine, in one process.
 *
 *   gpu_parity [--full] [--embed FRANCA_EMBED --ckpt-tool FRANCA_CHECKPOINT]
 *   gpu_parity --probe     exit 0 if a CUDA device is usable, else 3 (one line why)
 *
 * Where no CUDA device is usable (CI), prints a line starting with "SKIP:" and
 * instead asserts that CUDA is refused cleanly: vit_model_use_device fails with
 * a message, --device auto resolves to cpu, and (given --embed/--ckpt-tool)
 * `franca-embed --device cuda` exits 1 with one line on stderr. Exit 0 then.
 *
 * With a device: random models (non-trivial biases, LayerNorm affine and
 * LayerScale, so that no op hides behind an identity) run on both engines over
 * several shapes; fp32 mode must match to max|a-b|/max|ref| <= 1e-4 for every
 * output. bf16 mode: CLS, patch tokens and the Matryoshka cuts at D/4 and D to
 * 2e-2 with every CLS cosine >= 0.999; the renormalised cut at D/16 and the
 * RASA tokens by per-row cosine >= 0.99 instead (a renormalised short prefix
 * magnifies bf16 rounding, and RASA subtracts projections, leaving rows whose
 * small entries make a max-relative bound meaningless). Both attention paths;
 * then again with the
 * pipelined forward forced to many small chunks (FRANCA_CUDA_CHUNK_ROWS), so
 * that both staging slots, slot reuse, uneven chunks and per-chunk downloads
 * are checked. --full adds ViT-S/B/L shaped models (depth 2) at 224, 518 and
 * non-square inputs. Exit 1 on any miss. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checkpoint.h"
#include "errors.h"
#include "matryoshka.h"
#include "vit.h"

static int failures, passes;

#define EXPECT(cond, ...)                                                                         \
    do {                                                                                          \
        if (cond) {                                                                               \
            passes++;                                                                             \
        } else {                                                                                  \
            failures++;                                                                           \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                           \
            printf(__VA_ARGS__);                                                                  \
            printf("\n");                                                                         \
            fflush(stdout);                                                                       \
        }                                                                                         \
    } while (0)

static uint64_t rng_state = 0x243F6A8885A308D3ull;
static float urand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) * (2.0 / (1ull << 24)) - 1.0);
}

static void fill(float *p, size_t n, float center, float spread)
{
    if (!p) return;
    for (size_t i = 0; i < n; i++) p[i] = center + spread * urand();
}

struct spec {
    const char *name;
    int D, depth, heads, grid, registers, rasa;
    enum ffn_kind ffn;
    int Hs; /* 0: the released SwiGLU rule, or 4D for MLP */
    bool layerscale;
};

static struct vit_model *make_model(const struct spec *s, uint64_t seed)
{
    struct checkpoint ck;
    memset(&ck, 0, sizeof ck);
    model_config_defaults(&ck.cfg, s->D, s->depth);
    ck.cfg.num_heads = s->heads;
    ck.cfg.pos_grid = s->grid;
    ck.cfg.ffn = s->ffn;
    ck.cfg.ffn_hidden = s->Hs ? s->Hs : (s->ffn == FFN_SWIGLU ? swiglu_hidden_for(s->D) : 4 * s->D);
    ck.cfg.register_tokens = s->registers;
    ck.cfg.rasa_layers = s->rasa;
    ck.cfg.layerscale = s->layerscale;
    snprintf(ck.cfg.name, sizeof ck.cfg.name, "%s", s->name);
    char err[ERR_LEN];
    if (vit_weights_alloc(&ck.cfg, &ck.w, err, sizeof err)) {
        printf("FAIL: %s: %s\n", s->name, err);
        return NULL;
    }
    vit_weights_init_random(&ck.cfg, &ck.w, seed);
    /* Make every op matter: biases, LayerNorm affine, LayerScale ~0.5, tokens. */
    const size_t D = s->D, Hs = ck.cfg.ffn_hidden, fc1 = s->ffn == FFN_SWIGLU ? 2 * Hs : Hs;
    struct vit_weights *w = &ck.w;
    fill(w->patch_b, D, 0.0f, 0.1f);
    fill(w->cls_token, D, 0.0f, 0.5f);
    fill(w->register_tokens, (size_t)s->registers * D, 0.0f, 0.5f);
    fill(w->norm_w, D, 1.0f, 0.2f);
    fill(w->norm_b, D, 0.0f, 0.1f);
    for (int l = 0; l < s->depth; l++) {
        struct vit_block_weights *b = &w->blocks[l];
        fill(b->qkv_b, 3 * D, 0.0f, 0.1f);
        fill(b->proj_b, D, 0.0f, 0.1f);
        fill(b->fc1_b, fc1, 0.0f, 0.1f);
        fill(b->fc2_b, D, 0.0f, 0.1f);
        fill(b->norm1_w, D, 1.0f, 0.2f);
        fill(b->norm1_b, D, 0.0f, 0.1f);
        fill(b->norm2_w, D, 1.0f, 0.2f);
        fill(b->norm2_b, D, 0.0f, 0.1f);
        if (s->layerscale) {
            fill(b->ls1, D, 0.5f, 0.2f);
            fill(b->ls2, D, 0.5f, 0.2f);
        }
    }
    /* Q and K rows scaled to unit-ish outputs (score std ~1.4 instead of ~0.3
     * with the 0.02-std init), so the softmax is far from uniform. */
    const float qk_gain = 1.2f / (0.02f * sqrtf((float)D));
    for (int l = 0; l < s->depth; l++)
        for (size_t i = 0; i < 2 * D * D; i++) w->blocks[l].qkv_w[i] *= qk_gain;
    struct vit_model *m = NULL;
    if (vit_model_from_checkpoint(&ck, &m, err, sizeof err)) {
        printf("FAIL: %s: %s\n", s->name, err);
        checkpoint_free(&ck);
        return NULL;
    }
    return m;
}

struct result {
    float *cls, *patch, *rasa;
};

static int run(struct vit_model *m, struct vit_workspace **ws, const float *x, int B, int H, int W,
               struct result *r, char *err, size_t errlen)
{
    const struct model_config *c = vit_model_config(m);
    const size_t D = c->embed_dim, N = (size_t)(H / c->patch_size) * (W / c->patch_size);
    r->cls = malloc(sizeof(float) * B * D);
    r->patch = malloc(sizeof(float) * B * N * D);
    r->rasa = c->rasa_layers ? malloc(sizeof(float) * B * N * D) : NULL;
    const struct vit_outputs out = {.cls = r->cls, .patch = r->patch, .patch_rasa = r->rasa};
    return vit_forward(m, ws, x, B, H, W, &out, err, errlen);
}

static void result_free(struct result *r)
{
    free(r->cls);
    free(r->patch);
    free(r->rasa);
}

static double rel_err(const float *a, const float *ref, size_t n)
{
    double md = 0.0, mr = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)a[i] - ref[i]);
        if (!(d <= md)) md = d; /* NaN sticks */
        if (fabs(ref[i]) > mr) mr = fabs(ref[i]);
    }
    return md / (mr > 0 ? mr : 1.0);
}

static double min_cosine(const float *a, const float *b, int rows, int D)
{
    double worst = 1.0;
    for (int r = 0; r < rows; r++) {
        double ab = 0, aa = 0, bb = 0;
        for (int i = 0; i < D; i++) {
            const double x = a[(size_t)r * D + i], y = b[(size_t)r * D + i];
            ab += x * y;
            aa += x * x;
            bb += y * y;
        }
        const double c = ab / (sqrt(aa * bb) + 1e-30);
        if (!(c >= worst)) worst = c;
    }
    return worst;
}

struct mode {
    const char *name;
    enum vit_precision prec;
    enum vit_attention attn;
    double tol;
};

/* bf16 bound (per-row cosine) for the renormalised D/16 cut and RASA tokens. */
#define BF16_COS_CUT_RASA 0.99

static const struct mode modes[] = {
    {"fp32", VIT_PRECISION_FP32, VIT_ATTENTION_UNFUSED, 1e-4},
    {"bf16-unfused", VIT_PRECISION_BF16, VIT_ATTENTION_UNFUSED, 2e-2},
    {"bf16-fused", VIT_PRECISION_BF16, VIT_ATTENTION_FUSED, 2e-2},
};

struct shape { int B, H, W; };

/* Parity of one spec over shapes, every mode, one CUDA workspace reused across
 * the shapes (as a server batcher does). */
static void parity(const struct spec *s, const struct shape *shapes, int n_shapes, uint64_t seed)
{
    char err[ERR_LEN];
    struct vit_model *cpu = make_model(s, seed), *gpu = make_model(s, seed);
    if (!cpu || !gpu) {
        failures++;
        vit_model_free(cpu);
        vit_model_free(gpu);
        return;
    }
    const int D = s->D;
    struct result *ref = calloc(n_shapes, sizeof(*ref));
    float **xs = calloc(n_shapes, sizeof(*xs));
    struct vit_workspace *cws = NULL;
    for (int i = 0; i < n_shapes; i++) {
        const struct shape *sh = &shapes[i];
        const size_t n = (size_t)sh->B * 3 * sh->H * sh->W;
        xs[i] = malloc(sizeof(float) * n);
        fill(xs[i], n, 0.0f, 2.0f);
        EXPECT(run(cpu, &cws, xs[i], sh->B, sh->H, sh->W, &ref[i], err, sizeof err) == 0,
               "%s: CPU forward: %s", s->name, err);
    }
    vit_workspace_free(cws);

    for (size_t mi = 0; mi < sizeof modes / sizeof modes[0]; mi++) {
        const struct mode *md = &modes[mi];
        if (vit_model_use_device(gpu, VIT_DEVICE_CUDA, md->prec, err, sizeof err)) {
            EXPECT(0, "%s %s: use_device: %s", s->name, md->name, err);
            continue;
        }
        if (vit_model_set_attention(gpu, md->attn, err, sizeof err)) {
            printf("  %-22s %-13s skipped: %s\n", s->name, md->name, err);
            continue;
        }
        struct vit_workspace *gws = NULL;
        for (int i = 0; i < n_shapes; i++) {
            const struct shape *sh = &shapes[i];
            const int N = (sh->H / 14) * (sh->W / 14);
            struct result got;
            const int rc = run(gpu, &gws, xs[i], sh->B, sh->H, sh->W, &got, err, sizeof err);
            EXPECT(rc == 0, "%s %s %dx%dx%d: CUDA forward: %s", s->name, md->name, sh->B, sh->H,
                   sh->W, err);
            if (rc == 0) {
                const double ec = rel_err(got.cls, ref[i].cls, (size_t)sh->B * D);
                const double ep = rel_err(got.patch, ref[i].patch, (size_t)sh->B * N * D);
                const bool bf = md->prec != VIT_PRECISION_FP32;
                const double er = got.rasa ? rel_err(got.rasa, ref[i].rasa, (size_t)sh->B * N * D) : 0;
                const double cr = got.rasa ? min_cosine(got.rasa, ref[i].rasa, sh->B * N, D) : 1;
                const double cs = min_cosine(got.cls, ref[i].cls, sh->B, D);
                double ew = 0, e16 = 0, c16 = 1;
                const int widths[3] = {D / 16 > 0 ? D / 16 : 1, D / 4 > 0 ? D / 4 : 1, D};
                for (int k = 0; k < 3; k++) {
                    float *a = malloc(sizeof(float) * sh->B * widths[k]);
                    float *b = malloc(sizeof(float) * sh->B * widths[k]);
                    matryoshka_cut(got.cls, sh->B, D, widths[k], true, a);
                    matryoshka_cut(ref[i].cls, sh->B, D, widths[k], true, b);
                    const double e = rel_err(a, b, (size_t)sh->B * widths[k]);
                    if (k == 0) {
                        e16 = e;
                        c16 = min_cosine(a, b, sh->B, widths[k]);
                    } else if (!(e <= ew)) {
                        ew = e;
                    }
                    free(a);
                    free(b);
                }
                /* fp32: every output by max relative error; bf16: see the header. */
                const bool ok = ec <= md->tol && ep <= md->tol && ew <= md->tol &&
                                (bf ? cs >= 0.999 && cr >= BF16_COS_CUT_RASA &&
                                          c16 >= BF16_COS_CUT_RASA
                                    : er <= md->tol && e16 <= md->tol);
                printf("  %-22s %-13s B=%-3d %4dx%-4d cls %.2e patch %.2e widths %.2e cos %.6f "
                       "| D/16 %.2e cos %.6f | rasa %.2e cos %.6f  %s\n", s->name, md->name,
                       sh->B, sh->H, sh->W, ec, ep, ew, cs, e16, c16, er, cr, ok ? "ok" : "FAIL");
                fflush(stdout);
                EXPECT(ok, "%s %s %dx%dx%d: parity miss (tol %.0e)", s->name, md->name, sh->B,
                       sh->H, sh->W, md->tol);
            }
            result_free(&got);
        }
        vit_workspace_free(gws);
    }
    for (int i = 0; i < n_shapes; i++) {
        result_free(&ref[i]);
        free(xs[i]);
    }
    free(ref);
    free(xs);
    vit_model_free(cpu);
    vit_model_free(gpu);
}

/* Runs cmd (stderr to a file); returns the exit status and the first line of stderr. */
static int run_cmd(const char *cmd, char *line, size_t cap)
{
    char path[] = "/tmp/gpu_parity_XXXXXX";
    const int fd = mkstemp(path);
    if (fd < 0) return -1;
    close(fd);
    char full[4096];
    snprintf(full, sizeof full, "%s >/dev/null 2>%s", cmd, path);
    const int st = system(full);
    FILE *f = fopen(path, "r");
    line[0] = 0;
    int lines = 0;
    char buf[1024];
    while (f && fgets(buf, sizeof buf, f)) {
        if (!lines) snprintf(line, cap, "%s", buf);
        lines++;
    }
    if (f) fclose(f);
    unlink(path);
    if (lines != 1) snprintf(line, cap, "(%d lines on stderr)", lines);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void no_device_checks(const char *why, const char *embed, const char *ckpt_tool)
{
    printf("SKIP: %s: CUDA parity not run; checking that CUDA is refused cleanly\n", why);
    char err[ERR_LEN];
    const struct spec tiny = {"tiny", 64, 1, 2, 4, 0, 0, FFN_SWIGLU, 0, true};
    struct vit_model *m = make_model(&tiny, 1);
    EXPECT(m != NULL, "tiny model built");
    if (m) {
        err[0] = 0;
        EXPECT(vit_model_use_device(m, VIT_DEVICE_CUDA, VIT_PRECISION_BF16, err, sizeof err) == -1 &&
                   err[0], "use_device(cuda) fails with a message: '%s'", err);
        EXPECT(vit_model_device(m) == VIT_DEVICE_CPU, "model stays on the CPU");
        EXPECT(vit_model_set_attention(m, VIT_ATTENTION_FUSED, err, sizeof err) == -1,
               "attention selection refused for a CPU model");
        /* The CPU forward still works after the refusal. */
        float x[3 * 56 * 56], cls[64];
        fill(x, sizeof x / sizeof x[0], 0.0f, 1.0f);
        struct vit_workspace *ws = NULL;
        const struct vit_outputs out = {.cls = cls};
        EXPECT(vit_forward(m, &ws, x, 1, 56, 56, &out, err, sizeof err) == 0, "CPU forward: %s", err);
        vit_workspace_free(ws);
        vit_model_free(m);
    }
    enum vit_device d = VIT_DEVICE_CUDA;
    EXPECT(vit_device_select("auto", &d, err, sizeof err) == 0 && d == VIT_DEVICE_CPU,
           "auto falls back to cpu");
    EXPECT(vit_device_select("cuda", &d, err, sizeof err) == -1 && strstr(err, "cuda"),
           "cuda refused: '%s'", err);
    EXPECT(vit_device_select("tpu", &d, err, sizeof err) == -1, "unknown device refused");
    if (embed && ckpt_tool) {
        char cmd[2048], line[1024];
        snprintf(cmd, sizeof cmd, "'%s' init --arch vit_tiny_test --out /tmp/gpu_parity_tiny_%d.safetensors",
                 ckpt_tool, (int)getpid());
        EXPECT(run_cmd(cmd, line, sizeof line) == 0, "franca-checkpoint init: %s", line);
        snprintf(cmd, sizeof cmd, "'%s' --model /tmp/gpu_parity_tiny_%d.safetensors --device cuda --bench --iters 1",
                 embed, (int)getpid());
        const int rc = run_cmd(cmd, line, sizeof line);
        EXPECT(rc == 1, "franca-embed --device cuda exits 1 without a GPU (got %d)", rc);
        EXPECT(!strncmp(line, "franca-embed: ", 14) && strstr(line, "cuda"),
               "one clear line on stderr: '%s'", line);
        printf("franca-embed --device cuda without a GPU: exit %d: %s", rc, line);
        snprintf(cmd, sizeof cmd, "'%s' --model /tmp/gpu_parity_tiny_%d.safetensors --device auto --bench --iters 1",
                 embed, (int)getpid());
        EXPECT(run_cmd(cmd, line, sizeof line) == 0, "franca-embed --device auto falls back to cpu");
        snprintf(cmd, sizeof cmd, "/tmp/gpu_parity_tiny_%d.safetensors", (int)getpid());
        unlink(cmd);
    }
}

int main(int argc, char **argv)
{
    bool full = false, probe = false;
    const char *embed = NULL, *ckpt_tool = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--full")) full = true;
        else if (!strcmp(argv[i], "--probe")) probe = true;
        else if (!strcmp(argv[i], "--embed") && i + 1 < argc) embed = argv[++i];
        else if (!strcmp(argv[i], "--ckpt-tool") && i + 1 < argc) ckpt_tool = argv[++i];
        else {
            fprintf(stderr, "usage: gpu_parity [--full] [--embed BIN --ckpt-tool BIN] | --probe\n");
            return 2;
        }
    }
    char why[ERR_LEN];
    if (probe) {
        const int ok = vit_cuda_available(why, sizeof why);
        printf("%s\n", ok ? "CUDA: a usable device" : why);
        return ok ? 0 : 3;
    }
    if (!vit_cuda_available(why, sizeof why)) {
        no_device_checks(why, embed, ckpt_tool);
        printf("%d checks passed, %d failed\n", passes, failures);
        return failures ? 1 : 0;
    }

    /* Quick set: head dims 64 and 32, SwiGLU and GELU MLP, registers, no
     * LayerScale, RASA, non-square inputs, batch > 1, a shrinking workspace. */
    const struct spec small = {"swiglu-d128-hd64-rasa", 128, 2, 2, 4, 0, 2, FFN_SWIGLU, 0, true};
    const struct shape small_shapes[] = {{3, 56, 56}, {1, 42, 70}, {2, 84, 56}, {1, 28, 28}};
    parity(&small, small_shapes, 4, 11);
    const struct spec mlp = {"mlp-reg4-hd32-nols", 128, 2, 4, 4, 4, 0, FFN_MLP, 0, false};
    const struct shape mlp_shapes[] = {{2, 56, 56}, {3, 70, 42}};
    parity(&mlp, mlp_shapes, 2, 12);
    const struct spec hd128 = {"swiglu-d256-hd128", 256, 2, 2, 4, 0, 0, FFN_SWIGLU, 0, true};
    const struct shape hd128_shapes[] = {{2, 98, 70}};
    parity(&hd128, hd128_shapes, 1, 13);

    /* Pipelined forwards: one-image chunks (5 and 3 chunks, slots reused), then
     * one chunk again in the same workspace. */
    setenv("FRANCA_CUDA_CHUNK_ROWS", "1", 1);
    printf("  (pipeline forced: FRANCA_CUDA_CHUNK_ROWS=1)\n");
    const struct shape pipe_shapes[] = {{5, 56, 56}, {3, 42, 70}, {1, 28, 28}};
    parity(&small, pipe_shapes, 3, 14);
    parity(&mlp, pipe_shapes, 2, 15);
    if (full) {
        /* Uneven chunks of a wide model: 17 images of 257 tokens in chunks of 3-4. */
        setenv("FRANCA_CUDA_CHUNK_ROWS", "1000", 1);
        const struct spec vitb_p = {"vit-b-d2-pipelined", 768, 2, 12, 16, 0, 0, FFN_SWIGLU, 2048, true};
        const struct shape bp_shapes[] = {{17, 224, 224}};
        parity(&vitb_p, bp_shapes, 1, 25);
    }
    unsetenv("FRANCA_CUDA_CHUNK_ROWS");

    if (full) {
        const struct spec vits = {"vit-s-d2", 384, 2, 6, 16, 0, 0, FFN_SWIGLU, 0, true};
        const struct shape s_shapes[] = {{16, 224, 224}, {1, 224, 224}};
        parity(&vits, s_shapes, 2, 21);
        const struct spec vitb = {"vit-b-d2-grid37-rasa9", 768, 2, 12, 37, 0, 9, FFN_SWIGLU, 2048, true};
        const struct shape b_shapes[] = {{3, 224, 224}, {1, 518, 518}, {2, 224, 336}};
        parity(&vitb, b_shapes, 3, 22);
        const struct spec vitl = {"vit-l-d2-grid37", 1024, 2, 16, 37, 0, 0, FFN_SWIGLU, 2736, true};
        const struct shape l_shapes[] = {{2, 518, 518}, {4, 224, 224}};
        parity(&vitl, l_shapes, 2, 23);
        const struct spec dino = {"dinov2-mlp-b-reg4", 768, 2, 12, 16, 4, 8, FFN_MLP, 0, true};
        const struct shape d_shapes[] = {{2, 224, 224}, {1, 266, 182}};
        parity(&dino, d_shapes, 2, 24);
    }
    printf("%d checks passed, %d failed\n", passes, failures);
    return failures ? 1 : 0;
}
