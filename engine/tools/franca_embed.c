/* franca-embed: run the engine on images or a prepared array and write the
 * features as safetensors; or measure steady-state throughput (--bench).
 * Contract (fixed; scripts depend on it):
 *   franca-embed --model CKPT [--device cpu|cuda|auto] [--precision fp32|bf16]
 *                [--resolution R] [--width W]... [--layer I]... [--no-layer-norm]
 *                [--rasa] (--input-npy X.npy | IMAGE...) --out OUT.safetensors
 *   franca-embed --model CKPT --bench [--device D] [--precision P] [--batch B] [--resolution R]
 *                [--iters N] [--threads T]
 * Exit codes: 0 success, 2 usage error, 1 any other error (one line on stderr). */
#include <getopt.h>
#include <omp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "errors.h"
#include "image.h"
#include "matryoshka.h"
#include "npy.h"
#include "preprocess.h"
#include "safetensors.h"
#include "mm.h"
#include "vit.h"
#include "clock.h"

#define EXIT_USAGE 2

static const char usage_text[] =
    "usage: franca-embed --model CKPT [--device cpu|cuda|auto] [--precision fp32|bf16|auto]\n"
    "                    [--resolution R] [--width W]... [--layer I]... [--no-layer-norm]\n"
    "                    [--rasa] [--batch B] [--threads T] (--input-npy X.npy | IMAGE...)\n"
    "                    --out OUT.safetensors\n"
    "       franca-embed --model CKPT --bench [--device D] [--precision P] [--batch B]\n"
    "                    [--resolution R] [--iters N] [--threads T]\n"
    "\n"
    "  --model CKPT       checkpoint (.safetensors with franca metadata)\n"
    "  --device D         cpu (default), cuda, or auto (cuda when a GPU is usable, else cpu)\n"
    "  --precision P      precision of the matrix products: bf16 (float32 accumulation),\n"
    "                     fp32, or auto (default: bf16 on CUDA and on CPUs with AMX or\n"
    "                     AVX512-BF16, else fp32)\n"
    "  --resolution R     resize images to R x R (R a multiple of the patch size) instead of\n"
    "                     the checkpoint's eval preprocessing (resize + centre crop);\n"
    "                     with --bench: input side (default: the crop size)\n"
    "  --width W          also write cls_w{W}: the first W CLS features, L2-normalised\n"
    "                     (repeatable; 1 <= W <= embed_dim)\n"
    "  --layer I          also write layer{I}_cls [B,D] and layer{I}_patch [B,N,D]: the\n"
    "                     tokens after block I (0-based; negative counts from the last, -1\n"
    "                     is the last block; the name holds the 0-based index), through\n"
    "                     the final LayerNorm as DINOv2's get_intermediate_layers(norm=True)\n"
    "                     (repeatable; registers left out)\n"
    "  --no-layer-norm    write the --layer tokens without the final LayerNorm\n"
    "  --rasa             also write patch_rasa (needs RASA tensors in the checkpoint)\n"
    "  --input-npy X.npy  float32 C-order [B,3,H,W], already normalised\n"
    "  --alpha MODE       PNG alpha: drop (default, as PIL convert('RGB')), black, white\n"
    "  --max-pixels N     refuse images declaring more pixels (default 67108864)\n"
    "  --batch B          images per forward pass (default 8; bench default 1)\n"
    "  --threads T        CPU threads (default: all cores)\n"
    "  --bench            measure forward throughput; last line 'images/s: X'\n"
    "  --iters N          timed iterations for --bench (default 10, after 2 warm-up)\n"
    "\n"
    "Writes float32 tensors: cls [B,D] (final-norm CLS), patch [B,N,D], patch_rasa [B,N,D],\n"
    "cls_w{W} [B,W], layer{I}_cls [B,D], layer{I}_patch [B,N,D].\n";

struct args {
    const char *model, *out, *input_npy, *device, *precision;
    int resolution, batch, iters, threads;
    int widths[MAX_WIDTHS * 4];
    int n_widths;
    int layers[VIT_MAX_LAYERS]; /* as given: negative counts from the last block */
    int n_layers;
    bool rasa, bench, no_layer_norm;
    enum image_alpha alpha;
    size_t max_pixels;
    char **images;
    int n_images;
};

static int usage_error(const char *msg)
{
    fprintf(stderr, "franca-embed: %s (see --help)\n", msg);
    return EXIT_USAGE;
}

static int fail(const char *msg)
{
    fprintf(stderr, "franca-embed: %s\n", msg);
    return 1;
}

static bool parse_int(const char *s, long lo, long hi, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) return false;
    *out = (int)v;
    return true;
}

/* Returns 0 on success, or an exit code. */
static int parse_args(int argc, char **argv, struct args *a)
{
    enum { O_MODEL = 256, O_OUT, O_NPY, O_DEVICE, O_RES, O_WIDTH, O_RASA, O_BENCH, O_BATCH,
           O_ITERS, O_THREADS, O_ALPHA, O_MAXPIX, O_PRECISION, O_HELP, O_LAYER, O_NO_LNORM };
    static const struct option opts[] = {
        {"model", required_argument, 0, O_MODEL},     {"out", required_argument, 0, O_OUT},
        {"input-npy", required_argument, 0, O_NPY},   {"device", required_argument, 0, O_DEVICE},
        {"resolution", required_argument, 0, O_RES},  {"width", required_argument, 0, O_WIDTH},
        {"rasa", no_argument, 0, O_RASA},             {"bench", no_argument, 0, O_BENCH},
        {"batch", required_argument, 0, O_BATCH},     {"iters", required_argument, 0, O_ITERS},
        {"threads", required_argument, 0, O_THREADS}, {"alpha", required_argument, 0, O_ALPHA},
        {"max-pixels", required_argument, 0, O_MAXPIX}, {"help", no_argument, 0, O_HELP},
        {"precision", required_argument, 0, O_PRECISION},
        {"layer", required_argument, 0, O_LAYER}, {"no-layer-norm", no_argument, 0, O_NO_LNORM},
        {0, 0, 0, 0}};
    memset(a, 0, sizeof(*a));
    a->device = "cpu";
    a->iters = 10;
    a->alpha = IMAGE_ALPHA_DROP;
    opterr = 0;
    int c, v;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_MODEL: a->model = optarg; break;
        case O_OUT: a->out = optarg; break;
        case O_NPY: a->input_npy = optarg; break;
        case O_DEVICE: a->device = optarg; break;
        case O_PRECISION: a->precision = optarg; break;
        case O_RASA: a->rasa = true; break;
        case O_BENCH: a->bench = true; break;
        case O_RES:
            if (!parse_int(optarg, 1, VIT_MAX_SIDE, &a->resolution))
                return usage_error("--resolution needs an integer in 1..1792");
            break;
        case O_WIDTH:
            if (!parse_int(optarg, 1, 1 << 20, &v)) return usage_error("--width needs a positive integer");
            if (a->n_widths == (int)(sizeof(a->widths) / sizeof(a->widths[0])))
                return usage_error("too many --width flags");
            bool seen = false; /* a width given twice is written once */
            for (int i = 0; i < a->n_widths; i++) seen |= a->widths[i] == v;
            if (!seen) a->widths[a->n_widths++] = v;
            break;
        case O_LAYER:
            if (!parse_int(optarg, -VIT_MAX_LAYERS * 64, VIT_MAX_LAYERS * 64, &v))
                return usage_error("--layer needs an integer block index");
            if (a->n_layers == VIT_MAX_LAYERS) return usage_error("too many --layer flags");
            a->layers[a->n_layers++] = v;
            break;
        case O_NO_LNORM: a->no_layer_norm = true; break;
        case O_BATCH:
            if (!parse_int(optarg, 1, 4096, &a->batch)) return usage_error("--batch needs an integer in 1..4096");
            break;
        case O_ITERS:
            if (!parse_int(optarg, 1, 1000000, &a->iters)) return usage_error("--iters needs a positive integer");
            break;
        case O_THREADS:
            if (!parse_int(optarg, 1, 1024, &a->threads)) return usage_error("--threads needs a positive integer");
            break;
        case O_ALPHA:
            if (!strcmp(optarg, "drop")) a->alpha = IMAGE_ALPHA_DROP;
            else if (!strcmp(optarg, "black")) a->alpha = IMAGE_ALPHA_BLACK;
            else if (!strcmp(optarg, "white")) a->alpha = IMAGE_ALPHA_WHITE;
            else return usage_error("--alpha must be drop, black or white");
            break;
        case O_MAXPIX: {
            char *end;
            unsigned long long p = strtoull(optarg, &end, 10);
            if (!*optarg || *end || p == 0) return usage_error("--max-pixels needs a positive integer");
            a->max_pixels = (size_t)p;
            break;
        }
        case O_HELP: fputs(usage_text, stdout); exit(0);
        default: return usage_error(optopt ? "unknown or incomplete option" : "unknown option");
        }
    }
    a->images = argv + optind;
    a->n_images = argc - optind;
    if (!a->model) return usage_error("--model is required");
    if (strcmp(a->device, "cpu") && strcmp(a->device, "cuda") && strcmp(a->device, "auto"))
        return usage_error("--device must be cpu, cuda or auto");
    if (a->precision && strcmp(a->precision, "fp32") && strcmp(a->precision, "bf16") &&
        strcmp(a->precision, "auto"))
        return usage_error("--precision must be fp32, bf16 or auto");
    if (a->bench) {
        if (a->n_images || a->input_npy || a->out)
            return usage_error("--bench takes no inputs and no --out");
        return 0;
    }
    if (!a->out) return usage_error("--out is required");
    if (!a->input_npy == !a->n_images)
        return usage_error("give either --input-npy X.npy or image files, not both or neither");
    if (a->input_npy && a->resolution)
        return usage_error("--resolution applies to images; --input-npy is already sized");
    return 0;
}

/* --device: auto picks cuda when a GPU is usable; cuda without one fails here,
 * before the checkpoint is read. */
static int select_device(const char *device, enum vit_device *d, char *err, size_t errlen)
{
    return vit_device_select(device, d, err, errlen);
}

/* Moves the model to the device in the --precision asked for (auto by default). */
static int use_device(const struct args *a, struct vit_model *m, enum vit_device d, char *err,
                      size_t errlen)
{
    enum vit_precision p;
    if (vit_precision_parse(a->precision, d, &p, err, errlen)) return -1;
    return vit_model_use_device(m, d, p, err, errlen);
}

/* Decodes and preprocesses every image into one [B,3,S,S] batch. */
static float *load_images(const struct args *a, const struct model_config *cfg, int *side,
                          char *err, size_t errlen)
{
    const int S = a->resolution ? a->resolution : cfg->preprocess.crop_size;
    const size_t per = (size_t)3 * S * S;
    float *x = malloc(per * a->n_images * sizeof(float));
    if (!x) {
        set_err(err, errlen, "out of memory for %d images", a->n_images);
        return NULL;
    }
    struct image_decode_opts o;
    image_decode_opts_default(&o);
    o.alpha = a->alpha;
    if (a->max_pixels) o.max_pixels = a->max_pixels;
    for (int i = 0; i < a->n_images; i++) {
        struct image_rgb8 img;
        char inner[ERR_LEN];
        int rc = image_decode_file(a->images[i], &o, &img, inner, sizeof inner);
        if (rc == 0) {
            rc = a->resolution
                     ? preprocess_square(&img, S, cfg->preprocess.mean, cfg->preprocess.std,
                                         x + per * i, inner, sizeof inner)
                     : preprocess_eval(&img, &cfg->preprocess, x + per * i, inner, sizeof inner);
            image_free(&img);
        }
        if (rc) {
            /* Decoder messages may or may not name the file; make sure it is named once. */
            if (strstr(inner, a->images[i])) set_err(err, errlen, "%s", inner);
            else set_err(err, errlen, "%s: %s", a->images[i], inner);
            free(x);
            return NULL;
        }
    }
    *side = S;
    return x;
}

/* The --layer outputs: blocks[k] (0-based, distinct) into cls [L, B, D] and patch [L, B, N, D]. */
struct layer_out {
    int blocks[VIT_MAX_LAYERS];
    int n;
    float *cls, *patch;
};

/* Resolves the --layer indices against the model's depth; a block named
 * twice (e.g. 11 and -1 of 12) is written once. */
static int resolve_layers(const struct args *a, const struct model_config *cfg,
                          struct layer_out *lo, char *err, size_t errlen)
{
    lo->n = 0;
    for (int i = 0; i < a->n_layers; i++) {
        const int l = a->layers[i] < 0 ? cfg->depth + a->layers[i] : a->layers[i];
        if (l < 0 || l >= cfg->depth)
            return set_err(err, errlen, "--layer %d is out of range: the model has %d blocks "
                           "(0 to %d, or -%d to -1)", a->layers[i], cfg->depth, cfg->depth - 1,
                           cfg->depth);
        bool seen = false;
        for (int k = 0; k < lo->n; k++) seen |= lo->blocks[k] == l;
        if (!seen) lo->blocks[lo->n++] = l;
    }
    return 0;
}

static int write_layers(struct st_writer *w, const struct layer_out *lo, int B, int N, int D,
                        char *err, size_t errlen)
{
    const int64_t cls_shape[2] = {B, D}, tok_shape[3] = {B, N, D};
    int rc = 0;
    for (int k = 0; !rc && k < lo->n; k++) {
        char name[48];
        snprintf(name, sizeof name, "layer%d_cls", lo->blocks[k]);
        rc = st_writer_add_f32(w, name, ST_F32, lo->cls + (size_t)k * B * D, 2, cls_shape, err,
                               errlen);
        snprintf(name, sizeof name, "layer%d_patch", lo->blocks[k]);
        if (!rc)
            rc = st_writer_add_f32(w, name, ST_F32, lo->patch + (size_t)k * B * N * D, 3,
                                   tok_shape, err, errlen);
    }
    return rc;
}

static int write_outputs(const struct args *a, const struct vit_model *m, int B, int H, int W,
                         const float *cls, const float *patch, const float *patch_rasa,
                         const struct layer_out *lo, char *err, size_t errlen)
{
    const struct model_config *cfg = vit_model_config(m);
    const int D = cfg->embed_dim, N = (H / cfg->patch_size) * (W / cfg->patch_size);
    struct st_writer *w = st_writer_new();
    if (!w) return set_err(err, errlen, "out of memory");
    float **cuts = calloc(a->n_widths ? a->n_widths : 1, sizeof(float *));
    int rc = cuts ? 0 : set_err(err, errlen, "out of memory");
    const int64_t cls_shape[2] = {B, D}, tok_shape[3] = {B, N, D};
    if (!rc) rc = st_writer_add_f32(w, "cls", ST_F32, cls, 2, cls_shape, err, errlen);
    if (!rc) rc = st_writer_add_f32(w, "patch", ST_F32, patch, 3, tok_shape, err, errlen);
    if (!rc && patch_rasa)
        rc = st_writer_add_f32(w, "patch_rasa", ST_F32, patch_rasa, 3, tok_shape, err, errlen);
    for (int i = 0; !rc && i < a->n_widths; i++) {
        const int Wd = a->widths[i];
        char name[32];
        snprintf(name, sizeof name, "cls_w%d", Wd);
        if (!(cuts[i] = malloc(sizeof(float) * B * Wd))) {
            rc = set_err(err, errlen, "out of memory");
            break;
        }
        matryoshka_cut(cls, B, D, Wd, true, cuts[i]);
        const int64_t shape[2] = {B, Wd};
        rc = st_writer_add_f32(w, name, ST_F32, cuts[i], 2, shape, err, errlen);
    }
    if (!rc) rc = write_layers(w, lo, B, N, D, err, errlen);
    char num[32];
    if (!rc) rc = st_writer_set_metadata(w, "model", cfg->name, err, errlen);
    if (!rc) rc = st_writer_set_metadata(w, "fingerprint", vit_model_fingerprint(m), err, errlen);
    snprintf(num, sizeof num, "%d", H / cfg->patch_size);
    if (!rc) rc = st_writer_set_metadata(w, "grid_height", num, err, errlen);
    snprintf(num, sizeof num, "%d", W / cfg->patch_size);
    if (!rc) rc = st_writer_set_metadata(w, "grid_width", num, err, errlen);
    snprintf(num, sizeof num, "%d", cfg->patch_size);
    if (!rc) rc = st_writer_set_metadata(w, "patch_size", num, err, errlen);
    if (!rc) rc = st_writer_finish(w, a->out, err, errlen);
    st_writer_free(w);
    for (int i = 0; cuts && i < a->n_widths; i++) free(cuts[i]);
    free(cuts);
    return rc;
}

static int run_embed(const struct args *a, struct vit_model *m, char *err, size_t errlen)
{
    const struct model_config *cfg = vit_model_config(m);
    const int D = cfg->embed_dim;
    for (int i = 0; i < a->n_widths; i++)
        if (a->widths[i] > D)
            return set_err(err, errlen, "--width %d exceeds the model's embed_dim %d",
                           a->widths[i], D);
    if (a->rasa && cfg->rasa_layers == 0)
        return set_err(err, errlen, "--rasa: checkpoint '%s' has no RASA tensors (convert with "
                       "--rasa FILE_rasa.pth)", a->model);
    if (a->resolution && vit_check_resolution(m, a->resolution, a->resolution, err, errlen))
        return -1;
    struct layer_out lo = {0};
    if (resolve_layers(a, cfg, &lo, err, errlen)) return -1;

    int B, H, W;
    float *x;
    struct npy_array arr = {0};
    if (a->input_npy) {
        if (npy_load(a->input_npy, &arr, err, errlen)) return -1;
        if (arr.ndim != 4 || arr.shape[1] != 3 || arr.shape[0] < 1) {
            npy_free(&arr);
            return set_err(err, errlen, "%s: expected a float32 array [B,3,H,W]", a->input_npy);
        }
        if (arr.shape[2] > VIT_MAX_SIDE || arr.shape[3] > VIT_MAX_SIDE || arr.shape[0] > 1 << 20) {
            npy_free(&arr);
            return set_err(err, errlen, "%s: array too large", a->input_npy);
        }
        B = (int)arr.shape[0];
        H = (int)arr.shape[2];
        W = (int)arr.shape[3];
        if (vit_check_resolution(m, H, W, err, errlen)) {
            npy_free(&arr);
            return -1;
        }
        x = arr.data;
    } else {
        int S;
        if (!(x = load_images(a, cfg, &S, err, errlen))) return -1;
        B = a->n_images;
        H = W = S;
    }

    const int N = (H / cfg->patch_size) * (W / cfg->patch_size);
    const size_t tok = (size_t)N * D;
    float *cls = malloc(sizeof(float) * B * D);
    float *patch = malloc(sizeof(float) * B * tok);
    float *patch_rasa = a->rasa ? malloc(sizeof(float) * B * tok) : NULL;
    const int chunk = a->batch ? a->batch : 8;
    const size_t L = (size_t)lo.n, cb = (size_t)(chunk < B ? chunk : B);
    /* Per chunk the forward writes [L, nb, ...]; the rows are then moved to [L, B, ...]. */
    float *lc = L ? malloc(sizeof(float) * L * cb * D) : NULL;
    float *lp = L ? malloc(sizeof(float) * L * cb * tok) : NULL;
    lo.cls = L ? malloc(sizeof(float) * L * B * D) : NULL;
    lo.patch = L ? malloc(sizeof(float) * L * B * tok) : NULL;
    int rc = 0;
    if (!cls || !patch || (a->rasa && !patch_rasa) || (L && (!lc || !lp || !lo.cls || !lo.patch)))
        rc = set_err(err, errlen, "out of memory for the outputs of %d images", B);
    struct vit_workspace *ws = NULL;
    for (int b0 = 0; !rc && b0 < B; b0 += chunk) {
        const int nb = B - b0 < chunk ? B - b0 : chunk;
        const struct vit_outputs out = {
            .cls = cls + (size_t)b0 * D,
            .patch = patch + (size_t)b0 * tok,
            .patch_rasa = patch_rasa ? patch_rasa + (size_t)b0 * tok : NULL,
            .n_layers = lo.n, .layers = lo.blocks, .layer_norm = !a->no_layer_norm,
            .layer_cls = lc, .layer_patch = lp,
        };
        rc = vit_forward(m, &ws, x + (size_t)b0 * 3 * H * W, nb, H, W, &out, err, errlen);
        for (size_t k = 0; !rc && k < L; k++) {
            memcpy(lo.cls + (k * B + b0) * D, lc + k * nb * D, sizeof(float) * nb * D);
            memcpy(lo.patch + (k * B + b0) * tok, lp + k * nb * tok, sizeof(float) * nb * tok);
        }
    }
    vit_workspace_free(ws);
    if (a->input_npy) npy_free(&arr);
    else free(x);
    if (!rc) rc = write_outputs(a, m, B, H, W, cls, patch, patch_rasa, &lo, err, errlen);
    free(cls);
    free(patch);
    free(patch_rasa);
    free(lc);
    free(lp);
    free(lo.cls);
    free(lo.patch);
    return rc;
}

static int run_bench(const struct args *a, struct vit_model *m, char *err, size_t errlen)
{
    const struct model_config *cfg = vit_model_config(m);
    const int B = a->batch ? a->batch : 1;
    const int S = a->resolution ? a->resolution : cfg->preprocess.crop_size;
    if (vit_check_resolution(m, S, S, err, errlen)) return -1;
    const size_t n = (size_t)B * 3 * S * S;
    float *x = malloc(sizeof(float) * n);
    float *cls = malloc(sizeof(float) * B * cfg->embed_dim);
    if (!x || !cls) {
        free(x);
        free(cls);
        return set_err(err, errlen, "out of memory");
    }
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < n; i++) { /* xorshift noise in [-2, 2): a normalised-image range */
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        x[i] = (float)((s >> 40) * (4.0 / (1ull << 24)) - 2.0);
    }
    struct vit_workspace *ws = NULL;
    const struct vit_outputs out = {.cls = cls};
    int rc = 0;
    for (int i = 0; !rc && i < 2; i++) rc = vit_forward(m, &ws, x, B, S, S, &out, err, errlen);
    double t0 = clock_now_s();
    for (int i = 0; !rc && i < a->iters; i++)
        rc = vit_forward(m, &ws, x, B, S, S, &out, err, errlen);
    const double dt = clock_now_s() - t0;
    if (!rc) {
        const double ips = (double)B * a->iters / dt;
        const double gflops = vit_flops_per_image(cfg, S, S) * ips / 1e9;
        printf("model: %s (D=%d, depth=%d, ffn=%s)\n", cfg->name, cfg->embed_dim, cfg->depth,
               cfg->ffn == FFN_SWIGLU ? "swiglu" : "mlp");
        printf("batch: %d  resolution: %d  threads: %d  iters: %d  device: %s (%s)\n", B, S,
               omp_get_max_threads(), a->iters, vit_device_name(vit_model_device(m)),
               vit_precision_name(vit_model_precision(m)));
        if (vit_model_device(m) == VIT_DEVICE_CPU) printf("cpu isa: %s\n", mm_isa_name(mm_isa()));
        printf("ms/batch: %.3f\n", dt * 1e3 / a->iters);
        printf("GFLOP/s: %.1f\n", gflops);
        printf("images/s: %.3f\n", ips);
    }
    vit_workspace_free(ws);
    free(x);
    free(cls);
    return rc;
}

int main(int argc, char **argv)
{
    struct args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc;
    if (a.threads) omp_set_num_threads(a.threads);
    char err[ERR_LEN];
    enum vit_device device;
    if (select_device(a.device, &device, err, sizeof err)) return fail(err);
    struct vit_model *m;
    if (vit_model_load(a.model, &m, err, sizeof err)) return fail(err);
    if (use_device(&a, m, device, err, sizeof err)) {
        vit_model_free(m);
        return fail(err);
    }
    rc = a.bench ? run_bench(&a, m, err, sizeof err) : run_embed(&a, m, err, sizeof err);
    vit_model_free(m);
    return rc ? fail(err) : 0;
}
