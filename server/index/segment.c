/* Label transfer; see segment.h. */
#include "index/segment.h"

#include <math.h>
#include <stdlib.h>

#include "errors.h"
#include "index/search.h"
#include "mm.h"

struct nb {
    float score;
    uint8_t label;
};

/* Inserts (s, label) into the sorted (best first) list of *len <= k
 * neighbours; an equal score stays behind the earlier ones. */
static void nb_push(struct nb *list, int *len, int k, float s, uint8_t label)
{
    if (*len == k && !(s > list[k - 1].score)) return;
    int i = *len < k ? (*len)++ : k - 1;
    for (; i > 0 && s > list[i - 1].score; i--) list[i] = list[i - 1];
    list[i] = (struct nb){s, label};
}

/* The softmax-weighted vote of one query patch's neighbours. */
static void vote(const struct nb *list, int len, float temperature, uint8_t *label,
                 float *share)
{
    double w[256] = {0}, total = 0;
    for (int j = 0; j < len; j++) {
        const double e = exp(((double)list[j].score - list[0].score) / temperature);
        w[list[j].label] += e;
        total += e;
    }
    int best = list[0].label;
    for (int l = 0; l < 256; l++)
        if (w[l] > w[best] || (w[l] == w[best] && l < best)) best = l;
    *label = (uint8_t)best;
    if (share) *share = (float)(w[best] / total);
}

/* Scores all query patches against every labelled patch of pm. */
static int transfer(const struct patch_mirror *pm, const float *q, size_t n, int k,
                    struct nb *lists, int *lens, char *err, size_t errlen)
{
    const int w = patch_mirror_width(pm);
    const size_t items = patch_mirror_count(pm);
    size_t max_p = 1;
    for (size_t i = 0; i < items; i++) {
        int gh, gw;
        patch_mirror_grid(pm, i, &gh, &gw);
        if ((size_t)gh * gw > max_p) max_p = (size_t)gh * gw;
    }
    enum { QB = 256 }; /* query patches per GEMM: a QB x 4096 score block at most */
    float *dec = malloc(max_p * (size_t)w * sizeof *dec);
    float *s = malloc(max_p * QB * sizeof *s);
    if (!dec || !s) {
        free(dec);
        free(s);
        return set_err_code(err, errlen, STORE_ERR, "segment: out of memory");
    }
    for (size_t i = 0; i < items; i++) {
        const uint8_t *lab = patch_mirror_labels(pm, i);
        if (!lab) continue;
        int gh, gw;
        patch_mirror_grid(pm, i, &gh, &gw);
        const size_t p_n = (size_t)gh * gw;
        patch_decode(patch_mirror_data(pm, i), p_n, w, patch_mirror_type(pm), dec);
        for (size_t a0 = 0; a0 < n; a0 += QB) {
            const size_t m = n - a0 < QB ? n - a0 : QB;
            mm_sgemm(false, true, m, p_n, (size_t)w, 1.0f, q + a0 * (size_t)w, (size_t)w, dec,
                     (size_t)w, 0.0f, s, p_n); /* s [m, p_n] */
            for (size_t a = 0; a < m; a++)
                for (size_t p = 0; p < p_n; p++)
                    if (lab[p] != SEGMENT_IGNORE)
                        nb_push(lists + (a0 + a) * (size_t)k, &lens[a0 + a], k,
                                s[a * p_n + p], lab[p]);
        }
    }
    free(dec);
    free(s);
    return 0;
}

int segment_run(struct coll *c, const float *q, size_t n, int k, float temperature,
                uint8_t *labels, float *share, char *err, size_t errlen)
{
    if (k < 1 || k > SEARCH_K_MAX)
        return set_err_code(err, errlen, STORE_INVALID, "k must be 1..%d", SEARCH_K_MAX);
    if (!(temperature > 0) || !isfinite(temperature))
        return set_err_code(err, errlen, STORE_INVALID, "temperature must be a finite number"
                            " > 0");
    struct patch_mirror *pm = coll_patches_begin(c);
    if (!pm)
        return set_err_code(err, errlen, STORE_INVALID, "collection '%s' is CLS-level; "
                            "segmentation needs a collection created with level \"patch\"",
                            coll_name(c));
    struct nb *lists = malloc((n ? n : 1) * (size_t)k * sizeof *lists);
    int *lens = calloc(n ? n : 1, sizeof *lens);
    int rc = !lists || !lens ? set_err_code(err, errlen, STORE_ERR, "segment: out of memory")
                             : transfer(pm, q, n, k, lists, lens, err, errlen);
    coll_patches_end(c);
    if (!rc && n && lens[0] == 0) /* every query patch sees the same (empty) set */
        rc = set_err_code(err, errlen, STORE_CONFLICT, "collection '%s' has no labelled "
                          "patches: insert items with 'labels' first", coll_name(c));
    for (size_t i = 0; !rc && i < n; i++)
        vote(lists + i * (size_t)k, lens[i], temperature, &labels[i], share ? &share[i] : NULL);
    free(lists);
    free(lens);
    return rc;
}
