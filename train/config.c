#include "config.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"

enum ktype { K_INT, K_I64, K_DBL, K_BOOL, K_STR, K_DVEC };

struct key {
    const char *name;
    enum ktype type;
    size_t off, size;   /* size: string capacity (K_DVEC: always level_weights' shape) */
    double lo, hi;      /* numeric range */
    const char *doc;
};

#define F(field) offsetof(struct train_config, field)
#define S(field) sizeof(((struct train_config *)0)->field)
static const struct key KEYS[] = {
    {"embed_dim", K_INT, F(embed_dim), 0, 8, 4096, "backbone width D"},
    {"depth", K_INT, F(depth), 0, 1, 64, "transformer blocks"},
    {"num_heads", K_INT, F(num_heads), 0, 1, 64, "attention heads (D % heads == 0)"},
    {"ffn", K_STR, F(ffn), S(ffn), 0, 0, "feed-forward: swiglu | mlp"},
    {"ffn_hidden", K_INT, F(ffn_hidden), 0, 0, 65536, "FFN hidden width; 0 = released-model rule (swiglu) or 4D (mlp)"},
    {"patch_size", K_INT, F(patch_size), 0, 1, 64, "patch side P"},
    {"layerscale", K_BOOL, F(layerscale), 0, 0, 0, "LayerScale on the residual branches"},
    {"layerscale_init", K_DBL, F(layerscale_init), 0, 1e-8, 10, "LayerScale gamma init (docs/model.md section 2.6: 1e-5; 0.1 for short small runs, where 1e-5 leaves every CLS identical and the clustering losses flat)"},
    {"global_size", K_INT, F(global_size), 0, 1, 1024, "global crop side (multiple of P)"},
    {"local_size", K_INT, F(local_size), 0, 1, 1024, "local crop side (multiple of P)"},
    {"n_local", K_INT, F(n_local), 0, 0, 32, "local crops per image"},
    {"global_scale_min", K_DBL, F(global_scale_min), 0, 0.001, 1, "RandomResizedCrop scale range of global crops"},
    {"global_scale_max", K_DBL, F(global_scale_max), 0, 0.001, 1, ""},
    {"local_scale_min", K_DBL, F(local_scale_min), 0, 0.001, 1, "RandomResizedCrop scale range of local crops"},
    {"local_scale_max", K_DBL, F(local_scale_max), 0, 0.001, 1, ""},
    {"head_hidden", K_INT, F(head_hidden), 0, 1, 65536, "projector MLP hidden width (2048 in the paper)"},
    {"head_bottleneck", K_INT, F(head_bottleneck), 0, 1, 65536, "projector bottleneck (384 in the paper)"},
    {"head_prototypes", K_INT, F(head_prototypes), 0, 1, 1 << 20, "prototypes K at full width (131072 in the paper)"},
    {"head_init", K_STR, F(head_init), S(head_init), 0, 0, "head Linear init: spec (trunc-normal 0.02, docs/model.md section 11.1) | fan_in (std 1/sqrt(fan_in); for narrow heads, where 0.02 gives ~1e-4 logits and flat losses)"},
    {"head_nested", K_BOOL, F(head_nested), 0, 0, 0, "Matryoshka heads (false: one full-width head, ablation)"},
    {"n_levels", K_INT, F(n_levels), 0, 1, HEAD_MAX_LEVELS, "Matryoshka levels: widths D/2^(n-1) .. D"},
    {"level_weights", K_DVEC, F(level_weights), 0, 0, 1e6, "loss weight per Matryoshka level, smallest first (JSON array or --level-weights 4,2,1,1,1; [] = all 1, as the paper)"},
    {"student_temp", K_DBL, F(student_temp), 0, 1e-4, 10, "student temperature"},
    {"koleo_weight", K_DBL, F(koleo_weight), 0, 0, 100, "KoLeo loss weight"},
    {"koleo_levels", K_BOOL, F(koleo_levels), 0, 0, 0, "KoLeo also on each smaller Matryoshka prefix of the CLS (not in the paper)"},
    {"drop_path", K_DBL, F(drop_path), 0, 0, 0.99, "drop-path rate (uniform over blocks)"},
    {"masking", K_STR, F(masking), S(masking), 0, 0, "iBOT masks: cyclic | block"},
    {"mask_ratio_min", K_DBL, F(mask_ratio_min), 0, 0, 1, "stratified mask ratio range"},
    {"mask_ratio_max", K_DBL, F(mask_ratio_max), 0, 0, 1, ""},
    {"mask_sample_prob", K_DBL, F(mask_sample_prob), 0, 0, 1, "fraction of global crops with a mask"},
    {"train_idx", K_STR, F(train_idx), S(train_idx), 0, 0, "training images as an IDX file (raw or .gz)"},
    {"train_folder", K_STR, F(train_folder), S(train_folder), 0, 0, "training images as a folder of JPEG/PNG (instead of train_idx)"},
    {"init_from", K_STR, F(init_from), S(init_from), 0, 0, "fine-tune: a fresh run starts from this run directory (student, teacher and heads; AdamW reset) or exported model (backbone into student and teacher, heads fresh), pos_embed resized once to global_size / patch_size as the reference's high-resolution script (bicubic, antialiased, by size); the run's own schedule (steps, warmup_steps, lr, ...) starts at step 0. --init-from SRC without --config takes SRC's run config as the base"},
    {"knn_train_images", K_STR, F(knn_train_images), S(knn_train_images), 0, 0, "k-NN evaluation: IDX train images (\"\" disables)"},
    {"knn_train_labels", K_STR, F(knn_train_labels), S(knn_train_labels), 0, 0, "k-NN evaluation: IDX train labels"},
    {"knn_test_images", K_STR, F(knn_test_images), S(knn_test_images), 0, 0, "k-NN evaluation: IDX test images"},
    {"knn_test_labels", K_STR, F(knn_test_labels), S(knn_test_labels), 0, 0, "k-NN evaluation: IDX test labels"},
    {"knn_train_max", K_INT, F(knn_train_max), 0, 0, 1 << 30, "use the first N k-NN train images during training (0: all)"},
    {"knn_test_max", K_INT, F(knn_test_max), 0, 0, 1 << 30, "use the first N k-NN test images during training (0: all)"},
    {"resize_size", K_INT, F(resize_size), 0, 0, 16384, "exported eval preprocessing resize (0: global_size)"},
    {"crop_size", K_INT, F(crop_size), 0, 0, 16384, "exported eval preprocessing crop (0: global_size)"},
    {"batch_size", K_INT, F(batch_size), 0, 2, 1 << 16, "images per micro-batch"},
    {"steps", K_I64, F(steps), 0, 1, 1e12, "optimizer steps"},
    {"warmup_steps", K_I64, F(warmup_steps), 0, 0, 1e12, "linear lr warm-up steps"},
    {"lr", K_DBL, F(lr), 0, 0, 10, "base learning rate (peak, before scaling)"},
    {"min_lr", K_DBL, F(min_lr), 0, 0, 10, "final learning rate of the cosine"},
    {"lr_scale_sqrt", K_BOOL, F(lr_scale_sqrt), 0, 0, 0, "peak lr = lr * sqrt(batch_size * grad_accum / 1024)"},
    {"wd_start", K_DBL, F(wd_start), 0, 0, 10, "weight decay cosine start"},
    {"wd_end", K_DBL, F(wd_end), 0, 0, 10, "weight decay cosine end"},
    {"momentum_start", K_DBL, F(momentum_start), 0, 0, 1, "teacher EMA momentum cosine start"},
    {"momentum_end", K_DBL, F(momentum_end), 0, 0, 1, "teacher EMA momentum cosine end"},
    {"teacher_temp_start", K_DBL, F(teacher_temp_start), 0, 1e-4, 10, "teacher temperature warm-up start"},
    {"teacher_temp_end", K_DBL, F(teacher_temp_end), 0, 1e-4, 10, "teacher temperature after warm-up"},
    {"teacher_temp_warmup_steps", K_I64, F(teacher_temp_warmup_steps), 0, 0, 1e12, "teacher temperature linear warm-up steps"},
    {"freeze_last_layer_steps", K_I64, F(freeze_last_layer_steps), 0, 0, 1e12, "prototype layers get lr 0 for these steps"},
    {"patch_embed_lr_mult", K_DBL, F(patch_embed_lr_mult), 0, 0, 100, "lr multiplier of patch_embed"},
    {"clip_grad", K_DBL, F(clip_grad), 0, 0, 1e6, "gradient clipping max-norm per module (0: off)"},
    {"beta1", K_DBL, F(beta1), 0, 0, 0.999999, "AdamW beta1"},
    {"beta2", K_DBL, F(beta2), 0, 0, 0.999999, "AdamW beta2"},
    {"adam_eps", K_DBL, F(adam_eps), 0, 0, 1, "AdamW eps"},
    {"grad_accum", K_INT, F(grad_accum), 0, 1, 1024, "micro-batches accumulated per step"},
    {"precision", K_STR, F(precision), S(precision), 0, 0, "matrix products: fp32 | bf16 (bf16 operands, float32 accumulation; master weights, optimizer, LayerNorm, softmax, losses stay float32; needs AVX-512)"},
    {"seed", K_I64, F(seed), 0, 0, 9.007199254740992e15, "seed of every random choice"},
    {"threads", K_INT, F(threads), 0, 1, 256, "data loader threads"},
    {"prefetch", K_INT, F(prefetch), 0, 1, 1024, "batches prepared ahead"},
    {"eval_every", K_I64, F(eval_every), 0, 0, 1e12, "k-NN evaluation every N steps (0: only at the end)"},
    {"checkpoint_every", K_I64, F(checkpoint_every), 0, 0, 1e12, "training state every N steps (0: only at the end)"},
    {"log_every", K_I64, F(log_every), 0, 1, 1e12, "progress line every N steps"},
    {"stop_at", K_I64, F(stop_at), 0, 0, 1e12, "stop this invocation after step N, saving the state (0: run to 'steps'); reset by --resume"},
    {"name", K_STR, F(name), S(name), 0, 0, "model name in the exported checkpoint"},
};
#undef F
#undef S
#define NKEYS (sizeof KEYS / sizeof KEYS[0])

#define FMNIST "/usr/share/datasets/fashion-mnist/"

void train_config_defaults(struct train_config *c)
{
    memset(c, 0, sizeof *c);
    c->embed_dim = 192;
    c->depth = 4;
    c->num_heads = 3;
    snprintf(c->ffn, sizeof c->ffn, "swiglu");
    c->ffn_hidden = 0;
    c->patch_size = 4;
    c->layerscale = true;
    c->layerscale_init = 0.1;
    c->global_size = 28;
    c->local_size = 12;
    c->n_local = 4;
    c->global_scale_min = 0.32;
    c->global_scale_max = 1.0;
    c->local_scale_min = 0.05;
    c->local_scale_max = 0.32;
    c->head_hidden = 512;
    c->head_bottleneck = 128;
    c->head_prototypes = 1024;
    c->head_nested = true;
    snprintf(c->head_init, sizeof c->head_init, "fan_in");
    c->n_levels = 5;
    c->student_temp = 0.1;
    c->koleo_weight = 0.1;
    c->drop_path = 0.0;
    snprintf(c->masking, sizeof c->masking, "cyclic");
    c->mask_ratio_min = 0.1;
    c->mask_ratio_max = 0.65;
    c->mask_sample_prob = 0.5;
    snprintf(c->train_idx, sizeof c->train_idx, FMNIST "train-images-idx3-ubyte.gz");
    snprintf(c->knn_train_images, sizeof c->knn_train_images, FMNIST "train-images-idx3-ubyte.gz");
    snprintf(c->knn_train_labels, sizeof c->knn_train_labels, FMNIST "train-labels-idx1-ubyte.gz");
    snprintf(c->knn_test_images, sizeof c->knn_test_images, FMNIST "t10k-images-idx3-ubyte.gz");
    snprintf(c->knn_test_labels, sizeof c->knn_test_labels, FMNIST "t10k-labels-idx1-ubyte.gz");
    c->knn_train_max = 10000;
    c->knn_test_max = 2000;
    c->batch_size = 64;
    c->steps = 1000;
    c->warmup_steps = 100;
    c->lr = 1e-3;
    c->min_lr = 1e-6;
    c->lr_scale_sqrt = false;
    c->wd_start = 0.04;
    c->wd_end = 0.2;
    c->momentum_start = 0.994;
    c->momentum_end = 1.0;
    c->teacher_temp_start = 0.04;
    c->teacher_temp_end = 0.07;
    c->teacher_temp_warmup_steps = 300;
    c->freeze_last_layer_steps = 100;
    c->patch_embed_lr_mult = 0.2;
    c->clip_grad = 3.0;
    c->beta1 = 0.9;
    c->beta2 = 0.999;
    c->adam_eps = 1e-8;
    c->grad_accum = 1;
    snprintf(c->precision, sizeof c->precision, "fp32");
    c->seed = 0;
    c->threads = 1;
    c->prefetch = 4;
    c->eval_every = 250;
    c->checkpoint_every = 250;
    c->log_every = 10;
    snprintf(c->name, sizeof c->name, "franca-train");
}

static const struct key *find_key(const char *name)
{
    char norm[64];
    size_t n = strlen(name);
    if (n >= sizeof norm) return NULL;
    for (size_t i = 0; i <= n; i++) norm[i] = name[i] == '-' ? '_' : name[i];
    for (size_t i = 0; i < NKEYS; i++)
        if (!strcmp(KEYS[i].name, norm)) return &KEYS[i];
    return NULL;
}

bool train_config_has_key(const char *key) { return find_key(key) != NULL; }

static int set_number(struct train_config *c, const struct key *k, double v, const char *label,
                      char *err, size_t errlen)
{
    char *base = (char *)c;
    if (!isfinite(v) || v < k->lo || v > k->hi)
        return set_err(err, errlen, "%s: '%s' = %g is out of range [%g, %g]", label, k->name, v,
                       k->lo, k->hi);
    if ((k->type == K_INT || k->type == K_I64) && v != floor(v))
        return set_err(err, errlen, "%s: '%s' must be an integer, got %g", label, k->name, v);
    if (k->type == K_INT) *(int *)(base + k->off) = (int)v;
    else if (k->type == K_I64) *(int64_t *)(base + k->off) = (int64_t)v;
    else *(double *)(base + k->off) = v;
    return 0;
}

static int set_string(struct train_config *c, const struct key *k, const char *s,
                      const char *label, char *err, size_t errlen)
{
    if (strlen(s) >= k->size)
        return set_err(err, errlen, "%s: '%s' is longer than %zu bytes", label, k->name,
                       k->size - 1);
    memcpy((char *)c + k->off, s, strlen(s) + 1);
    return 0;
}

/* A K_DVEC value: up to HEAD_MAX_LEVELS numbers in [lo, hi]. */
static int set_vector(struct train_config *c, const struct key *k, const double *v, size_t n,
                      const char *label, char *err, size_t errlen)
{
    if (n > HEAD_MAX_LEVELS)
        return set_err(err, errlen, "%s: '%s' has %zu values (at most %d)", label, k->name, n,
                       HEAD_MAX_LEVELS);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]) || v[i] < k->lo || v[i] > k->hi)
            return set_err(err, errlen, "%s: '%s'[%zu] = %g is out of range [%g, %g]", label,
                           k->name, i, v[i], k->lo, k->hi);
    c->level_weights.n = (int)n;
    for (size_t i = 0; i < n; i++) c->level_weights.v[i] = v[i];
    return 0;
}

static int set_vector_json(struct train_config *c, const struct key *k, json_t *a,
                           const char *label, char *err, size_t errlen)
{
    double v[HEAD_MAX_LEVELS];
    if (!json_is_array(a))
        return set_err(err, errlen, "%s: '%s' must be an array of numbers", label, k->name);
    size_t i;
    json_t *e;
    json_array_foreach(a, i, e) {
        if (i >= HEAD_MAX_LEVELS) break;
        if (!json_is_number(e))
            return set_err(err, errlen, "%s: '%s' must be an array of numbers", label, k->name);
        v[i] = json_number_value(e);
    }
    return set_vector(c, k, v, json_array_size(a), label, err, errlen);
}

int train_config_apply_json(struct train_config *c, const char *json, size_t len,
                            const char *label, char *err, size_t errlen)
{
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return set_err(err, errlen, "%s: invalid JSON at line %d: %s", label, je.line, je.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return set_err(err, errlen, "%s: the config must be a JSON object", label);
    }
    const char *name;
    json_t *v;
    int rc = 0;
    json_object_foreach(root, name, v) {
        const struct key *k = NULL;
        for (size_t i = 0; i < NKEYS; i++)
            if (!strcmp(KEYS[i].name, name)) k = &KEYS[i];
        if (!k) {
            char pc[64];
            printable_copy(name, strlen(name), pc, sizeof pc);
            rc = set_err(err, errlen, "%s: unknown key '%s' (franca-train --help lists the keys)",
                         label, pc);
            break;
        }
        if (k->type == K_BOOL) {
            if (!json_is_boolean(v)) {
                rc = set_err(err, errlen, "%s: '%s' must be true or false", label, k->name);
                break;
            }
            *(bool *)((char *)c + k->off) = json_is_true(v);
        } else if (k->type == K_DVEC) {
            if ((rc = set_vector_json(c, k, v, label, err, errlen)) < 0) break;
        } else if (k->type == K_STR) {
            if (!json_is_string(v)) {
                rc = set_err(err, errlen, "%s: '%s' must be a string", label, k->name);
                break;
            }
            if ((rc = set_string(c, k, json_string_value(v), label, err, errlen)) < 0) break;
        } else {
            if (!json_is_number(v)) {
                rc = set_err(err, errlen, "%s: '%s' must be a number", label, k->name);
                break;
            }
            if ((rc = set_number(c, k, json_number_value(v), label, err, errlen)) < 0) break;
        }
    }
    json_decref(root);
    return rc;
}

int train_config_load(struct train_config *c, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) return set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 > cap) {
            cap = cap ? cap * 2 : 8192;
            if (cap > (16u << 20)) {
                free(buf);
                fclose(f);
                return set_err(err, errlen, "%s: config file too large", path);
            }
            char *t = realloc(buf, cap);
            if (!t) {
                free(buf);
                fclose(f);
                return set_err(err, errlen, "out of memory");
            }
            buf = t;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    fclose(f);
    int rc = train_config_apply_json(c, buf, len, path, err, errlen);
    free(buf);
    return rc;
}

int train_config_set(struct train_config *c, const char *key, const char *value, char *err,
                     size_t errlen)
{
    const struct key *k = find_key(key);
    if (!k) return set_err(err, errlen, "unknown option --%s (franca-train --help lists them)", key);
    char label[96];
    snprintf(label, sizeof label, "--%s", k->name);
    if (k->type == K_STR) return set_string(c, k, value, label, err, errlen);
    if (k->type == K_DVEC) {   /* "4,2,1,1,1"; "" = all 1 */
        double v[HEAD_MAX_LEVELS];
        size_t n = 0;
        for (const char *p = value; *p; n++) {
            char *end;
            errno = 0;
            const double x = strtod(p, &end);
            if (end == p || errno || (*end && *end != ','))
                return set_err(err, errlen, "%s: expected numbers separated by commas, got '%s'",
                               label, value);
            if (n < HEAD_MAX_LEVELS) v[n] = x;
            p = *end ? end + 1 : end;
        }
        return set_vector(c, k, v, n, label, err, errlen);
    }
    if (k->type == K_BOOL) {
        if (!strcmp(value, "true") || !strcmp(value, "1")) *(bool *)((char *)c + k->off) = true;
        else if (!strcmp(value, "false") || !strcmp(value, "0"))
            *(bool *)((char *)c + k->off) = false;
        else return set_err(err, errlen, "%s: expected true or false, got '%s'", label, value);
        return 0;
    }
    char *end;
    errno = 0;
    double v = strtod(value, &end);
    if (end == value || *end || errno)
        return set_err(err, errlen, "%s: expected a number, got '%s'", label, value);
    return set_number(c, k, v, label, err, errlen);
}

int train_config_validate(const struct train_config *c, char *err, size_t errlen)
{
    if (strcmp(c->ffn, "swiglu") && strcmp(c->ffn, "mlp"))
        return set_err(err, errlen, "config: 'ffn' must be \"swiglu\" or \"mlp\", got \"%s\"", c->ffn);
    if (strcmp(c->head_init, "spec") && strcmp(c->head_init, "fan_in"))
        return set_err(err, errlen, "config: head_init must be \"spec\" or \"fan_in\", got \"%s\"",
                       c->head_init);
    if (strcmp(c->masking, "cyclic") && strcmp(c->masking, "block"))
        return set_err(err, errlen, "config: 'masking' must be \"cyclic\" or \"block\", got \"%s\"",
                       c->masking);
    if (strcmp(c->precision, "fp32") && strcmp(c->precision, "bf16"))
        return set_err(err, errlen, "config: 'precision' must be \"fp32\" or \"bf16\", got \"%s\"",
                       c->precision);
    if (c->embed_dim % c->num_heads)
        return set_err(err, errlen, "config: embed_dim %d is not a multiple of num_heads %d",
                       c->embed_dim, c->num_heads);
    if (c->global_size % c->patch_size || c->local_size % c->patch_size)
        return set_err(err, errlen,
                       "config: global_size %d and local_size %d must be multiples of patch_size %d",
                       c->global_size, c->local_size, c->patch_size);
    if (c->global_scale_min > c->global_scale_max || c->local_scale_min > c->local_scale_max)
        return set_err(err, errlen, "config: a crop scale range has min > max");
    if (c->mask_ratio_min > c->mask_ratio_max)
        return set_err(err, errlen, "config: mask_ratio_min > mask_ratio_max");
    if (c->embed_dim >> (c->n_levels - 1) < 1 || c->embed_dim % (1 << (c->n_levels - 1)))
        return set_err(err, errlen, "config: embed_dim %d is not divisible by 2^(n_levels-1) = %d",
                       c->embed_dim, 1 << (c->n_levels - 1));
    if (c->head_nested &&
        (long)c->head_prototypes * (c->embed_dim >> (c->n_levels - 1)) / c->embed_dim < 1)
        return set_err(err, errlen, "config: head_prototypes %d leaves no prototype at the smallest level",
                       c->head_prototypes);
    if (c->level_weights.n && c->level_weights.n != (c->head_nested ? c->n_levels : 1))
        return set_err(err, errlen, "config: level_weights has %d values for %d levels",
                       c->level_weights.n, c->head_nested ? c->n_levels : 1);
    double wsum = 0.0;
    for (int j = 0; j < c->level_weights.n; j++) wsum += c->level_weights.v[j];
    if (c->level_weights.n && wsum <= 0.0)
        return set_err(err, errlen, "config: level_weights are all 0 (nothing would train)");
    if (c->min_lr > c->lr) return set_err(err, errlen, "config: min_lr > lr");
    if (!c->train_idx[0] == !c->train_folder[0])
        return set_err(err, errlen, "config: give exactly one of 'train_idx' and 'train_folder'");
    int knn_set = !!c->knn_train_images[0] + !!c->knn_train_labels[0] +
                  !!c->knn_test_images[0] + !!c->knn_test_labels[0];
    if (knn_set != 0 && knn_set != 4)
        return set_err(err, errlen, "config: the k-NN set needs all of knn_train_images, "
                                    "knn_train_labels, knn_test_images, knn_test_labels (or none)");
    if (!c->name[0]) return set_err(err, errlen, "config: 'name' is empty");
    return 0;
}

char *train_config_to_json(const struct train_config *c)
{
    json_t *o = json_object();
    const char *base = (const char *)c;
    for (size_t i = 0; i < NKEYS; i++) {
        const struct key *k = &KEYS[i];
        json_t *v = NULL;
        switch (k->type) {
        case K_INT: v = json_integer(*(const int *)(base + k->off)); break;
        case K_I64: v = json_integer(*(const int64_t *)(base + k->off)); break;
        case K_DBL: v = json_real(*(const double *)(base + k->off)); break;
        case K_BOOL: v = json_boolean(*(const bool *)(base + k->off)); break;
        case K_STR: v = json_string(base + k->off); break;
        case K_DVEC:
            v = json_array();
            for (int j = 0; j < c->level_weights.n; j++)
                json_array_append_new(v, json_real(c->level_weights.v[j]));
            break;
        }
        json_object_set_new(o, k->name, v);
    }
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    json_decref(o);
    return s;
}

void train_config_print_help(FILE *f)
{
    struct train_config d;
    train_config_defaults(&d);
    const char *base = (const char *)&d;
    fprintf(f, "Config keys (JSON object; each also a --key value flag), with defaults:\n");
    for (size_t i = 0; i < NKEYS; i++) {
        const struct key *k = &KEYS[i];
        char val[CFG_PATH + 8];
        switch (k->type) {
        case K_INT: snprintf(val, sizeof val, "%d", *(const int *)(base + k->off)); break;
        case K_I64: snprintf(val, sizeof val, "%lld", (long long)*(const int64_t *)(base + k->off)); break;
        case K_DBL: snprintf(val, sizeof val, "%g", *(const double *)(base + k->off)); break;
        case K_BOOL: snprintf(val, sizeof val, "%s", *(const bool *)(base + k->off) ? "true" : "false"); break;
        case K_STR: snprintf(val, sizeof val, "\"%s\"", base + k->off); break;
        case K_DVEC: snprintf(val, sizeof val, "[]"); break;
        }
        fprintf(f, "  %-26s %-14s %s\n", k->name, val, k->doc);
    }
}

int train_config_objective(const struct train_config *c, struct objective_config *oc, char *err,
                           size_t errlen)
{
    if (train_config_validate(c, err, errlen) < 0) return -1;
    memset(oc, 0, sizeof *oc);
    struct model_config *m = &oc->backbone;
    model_config_defaults(m, c->embed_dim, c->depth);
    m->num_heads = c->num_heads;
    m->ffn = strcmp(c->ffn, "mlp") ? FFN_SWIGLU : FFN_MLP;
    m->ffn_hidden = c->ffn_hidden ? c->ffn_hidden
                                  : (m->ffn == FFN_SWIGLU ? swiglu_hidden_for(c->embed_dim)
                                                          : 4 * c->embed_dim);
    m->patch_size = c->patch_size;
    m->pos_grid = c->global_size / c->patch_size;
    m->layerscale = c->layerscale;
    m->n_widths = c->n_levels;
    for (int j = 0; j < c->n_levels; j++) m->widths[j] = c->embed_dim >> (c->n_levels - 1 - j);
    m->preprocess.resize_size = c->resize_size ? c->resize_size : c->global_size;
    m->preprocess.crop_size = c->crop_size ? c->crop_size : c->global_size;
    snprintf(m->name, sizeof m->name, "%s", c->name);
    snprintf(m->version, sizeof m->version, "trained");
    m->trained = true;
    if (model_config_validate(m, err, errlen) < 0) return -1;

    struct head_config *h = &oc->head;
    h->nested = c->head_nested;
    if (c->head_nested) {
        h->n_levels = c->n_levels;
        for (int j = 0; j < c->n_levels; j++) h->widths[j] = m->widths[j];
    } else {
        h->n_levels = 1;
        h->widths[0] = c->embed_dim;
    }
    h->prototypes = c->head_prototypes;
    h->hidden = c->head_hidden;
    h->init_fan_in = !strcmp(c->head_init, "fan_in");
    h->bottleneck = c->head_bottleneck;
    for (int j = 0; j < c->level_weights.n; j++) h->level_weights[j] = (float)c->level_weights.v[j];
    oc->student_temp = (float)c->student_temp;
    oc->koleo_weight = (float)c->koleo_weight;
    oc->koleo_levels = c->koleo_levels && c->head_nested;
    oc->layerscale_init = (float)c->layerscale_init;
    oc->drop_path = (float)c->drop_path;
    oc->precision = strcmp(c->precision, "bf16") ? MM_F32 : MM_BF16;
    return 0;
}
