/* franca-checkpoint: create untrained checkpoints and inspect checkpoints.
 *
 *   franca-checkpoint init --arch ARCH --out OUT.safetensors [--family franca|dinov2]
 *                          [--seed N] [--dtype f32|bf16|f16] [--grid M] [--name NAME]
 *                          [--rasa-layers T] [--layerscale G]
 *   franca-checkpoint info CKPT
 *
 * Exit status: 0 success, 2 usage error, 1 any other error (one line on stderr). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "errors.h"
#include "model_config.h"
#include "safetensors.h"
#include "sha256.h"

#define PROG "franca-checkpoint"

static const char usage_text[] =
    "usage: " PROG " init --arch ARCH --out OUT.safetensors [--family franca|dinov2]\n"
    "                         [--seed N] [--dtype f32|bf16|f16] [--grid M] [--name NAME]\n"
    "                         [--rasa-layers T] [--layerscale G]\n"
    "       " PROG " info CKPT\n"
    "\n"
    "init writes an UNTRAINED, randomly initialised checkpoint (\"trained\": false).\n"
    "  ARCH: vit_tiny_test (D=64, depth 2, 2 heads), vit_small (384, 12, 6),\n"
    "        vit_base (768, 12, 12), vit_large (1024, 24, 16), vit_giant2 (1536, 40, 24)\n"
    "  --family franca (default): SwiGLU FFN; dinov2: MLP FFN with hidden 4*D\n"
    "  --grid M: positional-embedding grid (default 16, i.e. 224 px at patch 14)\n"
    "  --rasa-layers T: RASA pre-position layers (default 2 for vit_tiny_test, else 0)\n"
    "  --layerscale G: LayerScale init (default 1e-5, docs/model.md section 2.6; 1 makes an\n"
    "        untrained model's embeddings depend on the image, useful for index and search\n"
    "        tests)\n"
    "  --seed N (default 0), --dtype (default f32), --name (default <family>_vit?14_untrained)\n"
    "info validates CKPT and prints its config JSON, sha256 fingerprint and tensor table.\n";

static int usage(const char *fmt, const char *arg) __attribute__((format(printf, 1, 0)));
static int usage(const char *fmt, const char *arg)
{
    fprintf(stderr, PROG ": ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (see '" PROG " --help')\n");
    return 2;
}

struct arch { const char *name; char letter; int D, depth, heads; };

static const struct arch arches[] = {
    { "vit_tiny_test", 't', 64, 2, 2 },
    { "vit_small", 's', 384, 12, 6 },
    { "vit_base", 'b', 768, 12, 12 },
    { "vit_large", 'l', 1024, 24, 16 },
    { "vit_giant2", 'g', 1536, 40, 24 },
};

static int parse_u64(const char *s, uint64_t *out)
{
    if (!s || !*s || *s == '-' || *s == '+')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

static int parse_int(const char *s, int lo, int hi, int *out)
{
    uint64_t v;
    if (parse_u64(s, &v) || v < (uint64_t)lo || v > (uint64_t)hi)
        return -1;
    *out = (int)v;
    return 0;
}

static int cmd_init(int argc, char **argv)
{
    const char *arch_s = NULL, *out = NULL, *family_s = "franca", *dtype_s = "f32", *name = NULL;
    const char *seed_s = NULL, *grid_s = NULL, *rasa_s = NULL, *ls_s = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char **dst = NULL;
        const char *val = NULL;
        static const struct { const char *opt; int idx; } opts[] = {
            { "--arch", 0 }, { "--out", 1 }, { "--family", 2 }, { "--dtype", 3 },
            { "--name", 4 }, { "--seed", 5 }, { "--grid", 6 }, { "--rasa-layers", 7 },
            { "--layerscale", 8 },
        };
        const char **slots[] = { &arch_s, &out, &family_s, &dtype_s, &name, &seed_s, &grid_s, &rasa_s,
                                 &ls_s };
        for (size_t k = 0; k < sizeof opts / sizeof opts[0]; k++) {
            size_t n = strlen(opts[k].opt);
            if (strncmp(a, opts[k].opt, n) == 0 && (a[n] == '\0' || a[n] == '=')) {
                dst = slots[opts[k].idx];
                if (a[n] == '=')
                    val = a + n + 1;
                else if (i + 1 < argc)
                    val = argv[++i];
                else
                    return usage("option %s needs a value", opts[k].opt);
                break;
            }
        }
        if (!dst)
            return usage("init: unknown argument '%s'", a);
        *dst = val;
    }
    if (!arch_s)
        return usage("init: %s is required", "--arch");
    if (!out || !*out)
        return usage("init: %s is required", "--out");
    const struct arch *ar = NULL;
    for (size_t k = 0; k < sizeof arches / sizeof arches[0]; k++)
        if (strcmp(arch_s, arches[k].name) == 0)
            ar = &arches[k];
    if (!ar)
        return usage("init: unknown --arch '%s' (vit_tiny_test, vit_small, vit_base, vit_large, vit_giant2)",
                     arch_s);
    enum model_family fam;
    if (strcmp(family_s, "franca") == 0)
        fam = FAMILY_FRANCA;
    else if (strcmp(family_s, "dinov2") == 0)
        fam = FAMILY_DINOV2;
    else
        return usage("init: --family must be franca or dinov2, not '%s'", family_s);
    enum st_dtype dt;
    if (st_dtype_parse(dtype_s, &dt))
        return usage("init: --dtype must be f32, bf16 or f16, not '%s'", dtype_s);
    uint64_t seed = 0;
    if (seed_s && parse_u64(seed_s, &seed))
        return usage("init: --seed must be a non-negative integer, not '%s'", seed_s);
    int grid = 16;
    if (grid_s && parse_int(grid_s, 1, 256, &grid))
        return usage("init: --grid must be an integer in 1..256, not '%s'", grid_s);
    int rasa = strcmp(ar->name, "vit_tiny_test") == 0 ? 2 : 0;
    if (rasa_s && parse_int(rasa_s, 0, MAX_RASA_LAYERS, &rasa))
        return usage("init: --rasa-layers must be an integer in 0..64, not '%s'", rasa_s);
    double ls = 0;
    if (ls_s) {
        char *end;
        ls = strtod(ls_s, &end);
        if (!*ls_s || *end || !(ls > 0 && ls <= 10))
            return usage("init: --layerscale must be a number in (0, 10], not '%s'", ls_s);
    }

    struct model_config cfg;
    model_config_defaults(&cfg, ar->D, ar->depth);
    cfg.family = fam;
    cfg.num_heads = ar->heads;
    if (fam == FAMILY_DINOV2) {
        cfg.ffn = FFN_MLP;
        cfg.ffn_hidden = 4 * ar->D;
    }
    cfg.pos_grid = grid;
    cfg.rasa_layers = rasa;
    cfg.trained = false;
    if (name) {
        if (strlen(name) >= sizeof cfg.name)
            return usage("init: --name is too long: '%s'", name);
        snprintf(cfg.name, sizeof cfg.name, "%s", name);
    } else {
        snprintf(cfg.name, sizeof cfg.name, "%s_vit%c14_untrained", family_s, ar->letter);
    }
    snprintf(cfg.version, sizeof cfg.version, "untrained-seed%" PRIu64, seed);

    char err[ERR_LEN];
    if (model_config_validate(&cfg, err, sizeof err)) {
        fprintf(stderr, PROG ": %s\n", err);
        return 1;
    }
    struct vit_weights w;
    if (vit_weights_alloc(&cfg, &w, err, sizeof err)) {
        fprintf(stderr, PROG ": %s\n", err);
        return 1;
    }
    vit_weights_init_random(&cfg, &w, seed);
    for (int b = 0; ls_s && b < cfg.depth; b++)
        for (int k = 0; k < cfg.embed_dim; k++)
            w.blocks[b].ls1[k] = w.blocks[b].ls2[k] = (float)ls;
    char extra[160];
    snprintf(extra, sizeof extra, "{\"source\":\"franca-checkpoint init --arch %s\",\"init_seed\":%" PRIu64 "}",
             ar->name, seed);
    int rc = checkpoint_save(out, &cfg, &w, dt, extra, err, sizeof err);
    vit_weights_free(&w);
    if (rc) {
        fprintf(stderr, PROG ": %s\n", err);
        return 1;
    }
    char hex[65];
    if (sha256_file_hex(out, hex, err, sizeof err)) {
        fprintf(stderr, PROG ": %s\n", err);
        return 1;
    }
    printf("wrote %s: %s (untrained, seed %" PRIu64 ", %s), sha256 %s\n", out, cfg.name, seed,
           st_dtype_name(dt), hex);
    return 0;
}

static int cmd_info(int argc, char **argv)
{
    if (argc != 1)
        return usage("info: expected exactly one checkpoint path%s", "");
    const char *path = argv[0];
    char err[ERR_LEN];
    struct checkpoint ck;
    if (checkpoint_load(path, &ck, err, sizeof err)) {
        fprintf(stderr, PROG ": %s\n", err);
        return 1;
    }
    struct st_file st;
    if (st_open(path, &st, err, sizeof err)) {
        checkpoint_free(&ck);
        fprintf(stderr, PROG ": %s\n", err);
        return 1;
    }
    char *js = model_config_to_json(&ck.cfg, st_metadata_get(&st, "franca"));
    if (!js)
        js = model_config_to_json(&ck.cfg, NULL);
    printf("config: %s\n", js ? js : "{}");
    free(js);
    printf("fingerprint: sha256:%s\n", ck.fingerprint);
    uint64_t params = 0, bytes = 0;
    size_t wname = 4;
    for (size_t i = 0; i < st.n_tensors; i++) {
        params += st_numel(&st.tensors[i]);
        bytes += st.tensors[i].nbytes;
        size_t n = strlen(st.tensors[i].name);
        if (n > wname)
            wname = n;
    }
    printf("tensors: %zu, parameters: %" PRIu64 ", data bytes: %" PRIu64 ", file bytes: %zu\n", st.n_tensors,
           params, bytes, st.map_len);
    printf("  %-*s  %-5s  %s\n", (int)wname, "name", "dtype", "shape");
    for (size_t i = 0; i < st.n_tensors; i++) {
        const struct st_tensor *t = &st.tensors[i];
        char shape[200];
        size_t k = 0;
        shape[k++] = '[';
        for (int d = 0; d < t->ndim && k < sizeof shape - 24; d++)
            k += (size_t)snprintf(shape + k, sizeof shape - k, "%s%" PRId64, d ? "," : "", t->shape[d]);
        snprintf(shape + k, sizeof shape - k, "]");
        printf("  %-*s  %-5s  %s\n", (int)wname, t->name, st_dtype_name(t->dtype), shape);
    }
    st_close(&st);
    checkpoint_free(&ck);
    if (fflush(stdout) != 0) {
        fprintf(stderr, PROG ": cannot write to stdout\n");
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage("missing command%s", "");
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        fputs(usage_text, stdout);
        return 0;
    }
    if (strcmp(argv[1], "init") == 0)
        return cmd_init(argc - 2, argv + 2);
    if (strcmp(argv[1], "info") == 0)
        return cmd_info(argc - 2, argv + 2);
    return usage("unknown command '%s' (init, info)", argv[1]);
}
