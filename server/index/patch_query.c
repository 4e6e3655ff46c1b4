/* Patch-level queries; see patch_query.h. */
#include "index/patch_query.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "index/search.h"
#include "mm.h"

/* One candidate: a patch (PATCH, BOX) or an item and its best patch (IMAGE). */
struct cand {
    float score;
    uint32_t item, patch;
};

/* a ranks after b: lower score, then later item, then later patch. */
static int worse(const struct cand *a, const struct cand *b)
{
    if (a->score != b->score) return a->score < b->score;
    if (a->item != b->item) return a->item > b->item;
    return a->patch > b->patch;
}

/* The k best so far in a heap whose root is the worst of them. */
struct topk {
    struct cand *h;
    int n, k;
};

static void sift_down(struct topk *t, int i)
{
    for (;;) {
        int w = i;
        const int l = 2 * i + 1, r = l + 1;
        if (l < t->n && worse(&t->h[l], &t->h[w])) w = l;
        if (r < t->n && worse(&t->h[r], &t->h[w])) w = r;
        if (w == i) return;
        const struct cand tmp = t->h[i];
        t->h[i] = t->h[w];
        t->h[w] = tmp;
        i = w;
    }
}

static void topk_push(struct topk *t, struct cand c)
{
    if (t->n < t->k) {
        int i = t->n++;
        t->h[i] = c;
        while (i > 0 && worse(&t->h[i], &t->h[(i - 1) / 2])) {
            const struct cand tmp = t->h[i];
            t->h[i] = t->h[(i - 1) / 2];
            t->h[(i - 1) / 2] = tmp;
            i = (i - 1) / 2;
        }
    } else if (worse(&t->h[0], &c)) {
        t->h[0] = c;
        sift_down(t, 0);
    }
}

/* Empties the heap into h[0..n) best first. */
static void topk_sort(struct topk *t)
{
    const int n = t->n;
    while (t->n > 1) {
        const struct cand last = t->h[--t->n];
        t->h[t->n] = t->h[0];
        t->h[0] = last;
        sift_down(t, 0);
    }
    t->n = n;
}

/* The query's patches [*nq, w]: a decoded stored item, or q->patches. *own is
 * what the caller frees. Under the patch mirror's read lock. */
static int query_matrix(const struct patch_mirror *pm, const struct patch_query *q,
                        const float **qm, float **own, int *gh, int *gw, char *err,
                        size_t errlen)
{
    *own = NULL;
    if (!q->id) {
        *qm = q->patches;
        *gh = q->grid_h;
        *gw = q->grid_w;
        return q->patches && *gh > 0 && *gw > 0
                   ? 0
                   : set_err_code(err, errlen, STORE_INVALID, "no query patches");
    }
    const long it = patch_mirror_find(pm, q->id);
    if (it < 0) {
        char shown[64];
        printable_copy(q->id, strlen(q->id), shown, sizeof shown);
        return set_err_code(err, errlen, STORE_NOT_FOUND, "no item with id '%s'", shown);
    }
    patch_mirror_grid(pm, (size_t)it, gh, gw);
    const int w = patch_mirror_width(pm);
    const size_t n = (size_t)*gh * (size_t)*gw;
    if (!(*own = malloc(n * (size_t)w * sizeof **own)))
        return set_err_code(err, errlen, STORE_ERR, "out of memory");
    patch_decode(patch_mirror_data(pm, (size_t)it), n, w, patch_mirror_type(pm), *own);
    *qm = *own;
    return 0;
}

/* The one query vector of PATCH or BOX into v[w], after checking the box
 * against the grid. */
static int query_vector(const struct patch_query *q, const float *qm, int gh, int gw, int w,
                        float *v, char *err, size_t errlen)
{
    int r0 = q->box[0], c0 = q->box[1], r1 = r0 + 1, c1 = c0 + 1;
    if (q->mode == PATCH_QUERY_BOX) r1 = q->box[2], c1 = q->box[3];
    if (r0 < 0 || c0 < 0 || r1 > gh || c1 > gw || r0 >= r1 || c0 >= c1) {
        if (q->mode == PATCH_QUERY_PATCH)
            return set_err_code(err, errlen, STORE_INVALID, "patch [%d, %d] is outside the "
                                "query's %dx%d patch grid (rows 0..%d, columns 0..%d)", r0, c0,
                                gh, gw, gh - 1, gw - 1);
        return set_err_code(err, errlen, STORE_INVALID, "box [%d, %d, %d, %d] is not a "
                            "non-empty [r0, c0, r1, c1) within the query's %dx%d patch grid",
                            r0, c0, r1, c1, gh, gw);
    }
    memset(v, 0, (size_t)w * sizeof *v);
    for (int r = r0; r < r1; r++)
        for (int c = c0; c < c1; c++)
            for (int k = 0; k < w; k++) v[k] += qm[((size_t)r * gw + c) * w + k];
    if (q->mode == PATCH_QUERY_BOX) {
        double ss = 0;
        for (int k = 0; k < w; k++) ss += (double)v[k] * v[k];
        const float inv = ss > 0 ? (float)(1.0 / sqrt(ss)) : 0.0f;
        for (int k = 0; k < w; k++) v[k] *= inv;
    }
    return 0;
}

/* Eight running sums, so that the compiler may keep them in one vector register. */
static float dot(const float *a, const float *b, int w)
{
    float acc[8] = {0};
    int k = 0;
    for (; k + 8 <= w; k += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[k + j] * b[k + j];
    float s = 0;
    for (; k < w; k++) s += a[k] * b[k];
    for (int j = 0; j < 8; j++) s += acc[j];
    return s;
}

/* Scores every item against nq query vectors and keeps the k best candidates. */
static int score_all(const struct patch_mirror *pm, const struct patch_query *q, const float *qv,
                     int nq, struct topk *t, char *err, size_t errlen)
{
    const int w = patch_mirror_width(pm);
    const size_t items = patch_mirror_count(pm);
    size_t max_n = 1;
    for (size_t i = 0; i < items; i++) {
        int gh, gw;
        patch_mirror_grid(pm, i, &gh, &gw);
        if ((size_t)gh * gw > max_n) max_n = (size_t)gh * gw;
    }
    /* Query patches go QB at a time, so that the score block stays small
     * (QB x 4096 floats at most: STORE_PATCHES_MAX). */
    enum { QB = 256 };
    const int qb = nq < QB ? nq : QB;
    float *dec = malloc(max_n * (size_t)w * sizeof *dec);
    float *s = malloc(max_n * (size_t)qb * sizeof *s);
    float *best = malloc(max_n * sizeof *best);
    if (!dec || !s || !best) {
        free(dec);
        free(s);
        free(best);
        return set_err_code(err, errlen, STORE_ERR, "out of memory");
    }
    for (size_t i = 0; i < items; i++) {
        int gh, gw;
        patch_mirror_grid(pm, i, &gh, &gw);
        const size_t n = (size_t)gh * gw;
        patch_decode(patch_mirror_data(pm, i), n, w, patch_mirror_type(pm), dec);
        if (q->mode != PATCH_QUERY_IMAGE) { /* one query patch: plain dots, not a GEMM per item */
            for (size_t p = 0; p < n; p++) s[p] = dot(qv, dec + p * (size_t)w, w);
            for (size_t p = 0; p < n; p++)
                topk_push(t, (struct cand){s[p], (uint32_t)i, (uint32_t)p});
            continue;
        }
        /* Late interaction: sum over query patches of their best match; best[p]
         * is item patch p's best match with any query patch. */
        double sum = 0;
        for (size_t p = 0; p < n; p++) best[p] = -INFINITY;
        for (int a0 = 0; a0 < nq; a0 += qb) {
            const int m_rows = nq - a0 < qb ? nq - a0 : qb;
            mm_sgemm(false, true, (size_t)m_rows, n, (size_t)w, 1.0f, qv + (size_t)a0 * w,
                     (size_t)w, dec, (size_t)w, 0.0f, s, n); /* s [m_rows, n] */
            for (int a = 0; a < m_rows; a++) {
                const float *row = s + (size_t)a * n;
                float m = row[0];
                for (size_t p = 0; p < n; p++) {
                    m = row[p] > m ? row[p] : m;
                    best[p] = row[p] > best[p] ? row[p] : best[p];
                }
                sum += m;
            }
        }
        uint32_t bp = 0;
        for (size_t p = 1; p < n; p++)
            if (best[p] > best[bp]) bp = (uint32_t)p;
        topk_push(t, (struct cand){(float)sum, (uint32_t)i, bp});
    }
    free(dec);
    free(s);
    free(best);
    return 0;
}

int patch_query_run(struct coll *c, const struct patch_query *q, struct patch_result *out,
                    char *err, size_t errlen)
{
    *out = (struct patch_result){0};
    if (q->k < 1 || q->k > SEARCH_K_MAX)
        return set_err_code(err, errlen, STORE_INVALID, "k must be 1..%d", SEARCH_K_MAX);
    struct patch_mirror *pm = coll_patches_begin(c);
    if (!pm)
        return set_err_code(err, errlen, STORE_INVALID, "collection '%s' is CLS-level; patch "
                            "queries need a collection created with level \"patch\"",
                            coll_name(c));
    const int w = patch_mirror_width(pm);
    const float *qm;
    float *own = NULL, *v = NULL;
    int gh, gw;
    struct topk t = {.k = q->k};
    int rc = query_matrix(pm, q, &qm, &own, &gh, &gw, err, errlen);
    const float *qv = qm;
    int nq = gh * gw;
    if (!rc && q->mode != PATCH_QUERY_IMAGE) {
        if (!(v = malloc((size_t)w * sizeof *v)))
            rc = set_err_code(err, errlen, STORE_ERR, "out of memory");
        else
            rc = query_vector(q, qm, gh, gw, w, v, err, errlen);
        qv = v;
        nq = 1;
    }
    if (!rc && !(t.h = malloc((size_t)q->k * sizeof *t.h)))
        rc = set_err_code(err, errlen, STORE_ERR, "out of memory");
    if (!rc) rc = score_all(pm, q, qv, nq, &t, err, errlen);
    if (!rc) {
        topk_sort(&t);
        if (!(out->hits = calloc((size_t)(t.n ? t.n : 1), sizeof *out->hits)))
            rc = set_err_code(err, errlen, STORE_ERR, "out of memory");
    }
    for (int i = 0; !rc && i < t.n; i++) {
        struct patch_hit *h = &out->hits[i];
        int ih, iw;
        patch_mirror_grid(pm, t.h[i].item, &ih, &iw);
        snprintf(h->id, sizeof h->id, "%s", patch_mirror_id(pm, t.h[i].item));
        h->score = t.h[i].score;
        h->row = (int)t.h[i].patch / iw;
        h->col = (int)t.h[i].patch % iw;
    }
    if (!rc) out->n = t.n;
    coll_patches_end(c);
    free(own);
    free(v);
    free(t.h);
    return rc;
}

void patch_result_free(struct patch_result *r)
{
    free(r->hits);
    *r = (struct patch_result){0};
}

int patch_query_heatmap(struct coll *c, const struct patch_query *q, const char *item_id,
                        float **sims, int *grid_h, int *grid_w, char *err, size_t errlen)
{
    *sims = NULL;
    if (q->mode == PATCH_QUERY_IMAGE)
        return set_err_code(err, errlen, STORE_INVALID, "a heat map needs a query patch or box");
    struct patch_mirror *pm = coll_patches_begin(c);
    if (!pm)
        return set_err_code(err, errlen, STORE_INVALID, "collection '%s' is CLS-level; heat "
                            "maps need a collection created with level \"patch\"", coll_name(c));
    const int w = patch_mirror_width(pm);
    const float *qm;
    float *own = NULL, *v = malloc((size_t)w * sizeof *v), *dec = NULL;
    int gh, gw;
    int rc = v ? query_matrix(pm, q, &qm, &own, &gh, &gw, err, errlen)
               : set_err_code(err, errlen, STORE_ERR, "out of memory");
    if (!rc) rc = query_vector(q, qm, gh, gw, w, v, err, errlen);
    const long it = rc ? -1 : patch_mirror_find(pm, item_id);
    if (!rc && it < 0) {
        char shown[64];
        printable_copy(item_id, strlen(item_id), shown, sizeof shown);
        rc = set_err_code(err, errlen, STORE_NOT_FOUND, "no item with id '%s'", shown);
    }
    if (!rc) {
        patch_mirror_grid(pm, (size_t)it, grid_h, grid_w);
        const size_t n = (size_t)*grid_h * (size_t)*grid_w;
        dec = malloc(n * (size_t)w * sizeof *dec);
        *sims = malloc(n * sizeof **sims);
        if (!dec || !*sims) {
            rc = set_err_code(err, errlen, STORE_ERR, "out of memory");
        } else {
            patch_decode(patch_mirror_data(pm, (size_t)it), n, w, patch_mirror_type(pm), dec);
            mm_sgemm(false, true, 1, n, (size_t)w, 1.0f, v, (size_t)w, dec, (size_t)w, 0.0f,
                     *sims, n);
        }
    }
    coll_patches_end(c);
    if (rc) {
        free(*sims);
        *sims = NULL;
    }
    free(own);
    free(v);
    free(dec);
    return rc;
}
