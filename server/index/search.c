/* Exact and funnel k-NN search on the CPU, the driver shared with scorer
 * backends, and the dispatch to the active backend; see search.h. */
#include "index/search.h"

#include <math.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "mm.h"

#define BLOCK_ROWS_MAX 4096
#define BLOCK_ROWS_MIN 16
#define BLOCK_SCORES (1 << 22) /* floats in one block of scores: 16 MiB */
/* Scorer backends: larger blocks (fewer round trips), same 16 MiB of scores. */
#define SCORED_BLOCK_ROWS_MAX 65536
/* Compressed mirrors: rows decoded into a scratch block that stays in cache;
 * up to DOT_Q_MAX queries score it with plain dot products on the calling
 * thread, which beats an sgemm call per small block (and its thread team). */
#define DECODE_BLOCK_ROWS_MAX 1024
#define DOT_BLOCK_ROWS 64
#define DOT_Q_MAX 8
/* ... and over this many rows split them across the threads (each with its own
 * heaps, merged after): the dot products would otherwise use one core. */
#define DOT_PARALLEL_ROWS 32768
#define DOT_THREADS_MAX 16

/* Per-query top-k: a binary heap whose root is the worst kept entry. Keys are
 * "larger is better" (l2 uses minus the squared distance); ties go to the lower
 * row. */
struct topk {
    float *key;
    uint32_t *row;
    int size, cap;
};

static int worse(float ka, uint32_t ra, float kb, uint32_t rb)
{
    return ka < kb || (ka == kb && ra > rb);
}

static void topk_sift_down(struct topk *h, int i)
{
    for (;;) {
        int c = 2 * i + 1;
        if (c >= h->size) return;
        if (c + 1 < h->size && worse(h->key[c + 1], h->row[c + 1], h->key[c], h->row[c])) c++;
        if (!worse(h->key[c], h->row[c], h->key[i], h->row[i])) return;
        float tk = h->key[c];
        uint32_t tr = h->row[c];
        h->key[c] = h->key[i], h->row[c] = h->row[i];
        h->key[i] = tk, h->row[i] = tr;
        i = c;
    }
}

static inline void topk_push(struct topk *h, float key, uint32_t row)
{
    if (h->size < h->cap) {
        int i = h->size++;
        while (i > 0) {
            const int p = (i - 1) / 2;
            if (!worse(key, row, h->key[p], h->row[p])) break;
            h->key[i] = h->key[p], h->row[i] = h->row[p];
            i = p;
        }
        h->key[i] = key, h->row[i] = row;
    } else if (worse(h->key[0], h->row[0], key, row)) {
        h->key[0] = key, h->row[0] = row;
        topk_sift_down(h, 0);
    }
}

/* Sorts the heap best first, in place (heap sort popping the worst to the end). */
static void topk_sort(struct topk *h)
{
    const int n = h->size;
    while (h->size > 1) {
        const int last = h->size - 1;
        float tk = h->key[0];
        uint32_t tr = h->row[0];
        h->key[0] = h->key[last], h->row[0] = h->row[last];
        h->key[last] = tk, h->row[last] = tr;
        h->size--;
        topk_sift_down(h, 0);
    }
    h->size = n;
}

/* Heaps for q queries of capacity cap each, in two allocations. */
struct heaps {
    struct topk *h;
    float *keys;
    uint32_t *rows;
};

static int heaps_init(struct heaps *hs, int q, int cap)
{
    hs->h = calloc((size_t)q, sizeof *hs->h);
    hs->keys = malloc((size_t)q * (size_t)cap * sizeof *hs->keys);
    hs->rows = malloc((size_t)q * (size_t)cap * sizeof *hs->rows);
    if (!hs->h || !hs->keys || !hs->rows) return -1;
    for (int i = 0; i < q; i++) {
        hs->h[i].key = hs->keys + (size_t)i * cap;
        hs->h[i].row = hs->rows + (size_t)i * cap;
        hs->h[i].cap = cap;
    }
    return 0;
}

static void heaps_free(struct heaps *hs)
{
    free(hs->h);
    free(hs->keys);
    free(hs->rows);
}

/* Copies the first w components of each query (stride qstride) and prepares
 * them: normalised for cosine; squared norms into qsq for l2. */
static void prepare_queries(enum store_metric metric, const float *queries, int q, int qstride,
                            int w, float *Q, float *qsq)
{
    for (int i = 0; i < q; i++) {
        const float *src = queries + (size_t)i * qstride;
        float *dst = Q + (size_t)i * w;
        double s = 0;
        for (int j = 0; j < w; j++) s += (double)src[j] * src[j];
        const double scale = metric == STORE_METRIC_COSINE ? (s > 0 ? 1.0 / sqrt(s) : 0.0) : 1.0;
        for (int j = 0; j < w; j++) dst[j] = (float)(src[j] * scale);
        qsq[i] = (float)s;
    }
}

/* Squared norm of the first w components of a row. */
static float row_sq(const float *x, int w)
{
    double s = 0;
    for (int j = 0; j < w; j++) s += (double)x[j] * x[j];
    return (float)s;
}

/* The key of one (query, row) pair from its dot product s. rinv: cosine row
 * scale (1 for unit rows); rsq: l2 row squared norm. */
static inline float make_key(enum store_metric metric, float s, float rinv, float rsq, float qsq)
{
    switch (metric) {
    case STORE_METRIC_COSINE: return s * rinv;
    case STORE_METRIC_L2: return -(rsq - 2.0f * s + qsq);
    default: return s;
    }
}

/* Pushes a block of dot products S [q, b] (rows r0..r0+b-1, per-row factors
 * rf) into the heaps. Each query has its own heap: batches split across the
 * cores. */
static void push_block(enum store_metric metric, const float *S, size_t b, size_t r0,
                       const float *rf, const float *qsq, int q, const uint8_t *mask,
                       struct topk *heaps)
{
#pragma omp parallel for schedule(static) if (q > 1)
    for (int qi = 0; qi < q; qi++) {
        const float *Sq = S + (size_t)qi * b;
        struct topk *h = heaps + qi;
        for (size_t i = 0; i < b; i++) {
            if (mask && !mask[r0 + i]) continue;
            topk_push(h, make_key(metric, Sq[i], rf[i], rf[i], qsq[qi]), (uint32_t)(r0 + i));
        }
    }
}

/* One pass over n rows of X (leading dimension ldx, first w columns), scoring
 * the prepared queries Q [q, w] with sgemm in blocks and pushing into heaps.
 * rows_unit: cosine rows are unit at width w (no scaling). rowsq: squared
 * row norms at width w (l2, and cosine rows that are not unit), or NULL to
 * compute them. dec: NULL, or a compressed
 * mirror whose full matrix (prefix matrix when dec_prefix) is read instead of
 * X, block by block decoded. */
static int scan_range(enum store_metric metric, const float *X, size_t ldx, size_t r_begin,
                      size_t n, int w, const float *Q, const float *qsq, int q, int rows_unit,
                      const float *rowsq, const uint8_t *mask, struct topk *heaps,
                      const struct index_mirror *dec, int dec_prefix)
{
    size_t B = BLOCK_SCORES / (size_t)q;
    if (B > BLOCK_ROWS_MAX) B = BLOCK_ROWS_MAX;
    const int dots = dec && q <= DOT_Q_MAX;
    if (dec && B > (dots ? DOT_BLOCK_ROWS : DECODE_BLOCK_ROWS_MAX))
        B = dots ? DOT_BLOCK_ROWS : DECODE_BLOCK_ROWS_MAX;
    if (B < BLOCK_ROWS_MIN) B = BLOCK_ROWS_MIN;
    if (B > n - r_begin) B = n - r_begin;
    if (B == 0) return 0;
    float *S = malloc((size_t)q * B * sizeof *S);
    float *rf = malloc(B * sizeof *rf); /* per-row factor: cosine scale or l2 norm */
    float *D = dec ? malloc(B * (size_t)w * sizeof *D) : NULL;
    if (!S || !rf || (dec && !D)) {
        free(S);
        free(rf);
        free(D);
        return -1;
    }
    if (dec) ldx = (size_t)w;
    for (size_t r0 = r_begin; r0 < n; r0 += B) {
        const size_t b = n - r0 < B ? n - r0 : B;
        if (mask) { /* skip blocks with nothing eligible */
            size_t e = 0;
            while (e < b && !mask[r0 + e]) e++;
            if (e == b) continue;
        }
        const float *Xb = D;
        if (!dec) Xb = X + r0 * ldx;
        else if (dec_prefix) mirror_decode_prefix_rows(dec, r0, b, D); /* w is its width */
        else mirror_decode_rows(dec, r0, b, w, D);
        for (size_t i = 0; i < b; i++) {
            if (metric == STORE_METRIC_COSINE) {
                if (rows_unit) {
                    rf[i] = 1.0f;
                } else { /* kept norms when given (decoded rows at full width) */
                    const float s = rowsq ? rowsq[r0 + i] : row_sq(Xb + i * ldx, w);
                    rf[i] = s > 0 ? (float)(1.0 / sqrt((double)s)) : 0.0f;
                }
            } else if (metric == STORE_METRIC_L2) {
                rf[i] = rowsq ? rowsq[r0 + i] : row_sq(Xb + i * ldx, w);
            } else {
                rf[i] = 1.0f;
            }
        }
        if (dots) {
            for (int qi = 0; qi < q; qi++)
                for (size_t i = 0; i < b; i++) {
                    const float *x = Xb + i * ldx, *y = Q + (size_t)qi * w;
                    float d = 0.0f;
#pragma omp simd reduction(+ : d)
                    for (int j = 0; j < w; j++) d += x[j] * y[j];
                    S[(size_t)qi * b + i] = d;
                }
        } else {
            mm_sgemm(false, true, q, (int)b, w, 1.0f, Q, w, Xb, (int)ldx, 0.0f, S, (int)b);
        }
        push_block(metric, S, b, r0, rf, qsq, q, mask, heaps);
    }
    free(S);
    free(rf);
    free(D);
    return 0;
}

/* scan_range over all n rows; compressed mirrors scored with dot products
 * split their rows across the threads. */
static int scan(enum store_metric metric, const float *X, size_t ldx, size_t n, int w,
                const float *Q, const float *qsq, int q, int rows_unit, const float *rowsq,
                const uint8_t *mask, struct topk *heaps, const struct index_mirror *dec,
                int dec_prefix)
{
    int T = omp_get_max_threads();
    if (T > DOT_THREADS_MAX) T = DOT_THREADS_MAX;
    if (!dec || q > DOT_Q_MAX || n < DOT_PARALLEL_ROWS || T < 2 || omp_in_parallel())
        return scan_range(metric, X, ldx, 0, n, w, Q, qsq, q, rows_unit, rowsq, mask, heaps, dec,
                          dec_prefix);
    struct heaps th[DOT_THREADS_MAX] = {{0}};
    int failed = 0;
    for (int t = 0; t < T; t++) failed |= heaps_init(&th[t], q, heaps[0].cap);
    if (!failed) {
#pragma omp parallel num_threads(T) reduction(| : failed)
        {
            const int t = omp_get_thread_num(), nt = omp_get_num_threads();
            const size_t lo = n * (size_t)t / (size_t)nt, hi = n * (size_t)(t + 1) / (size_t)nt;
            failed |= scan_range(metric, X, ldx, lo, hi, w, Q, qsq, q, rows_unit, rowsq, mask,
                                 th[t].h, dec, dec_prefix);
        }
    }
    /* Keys order (key, row) totally, so the merged heaps hold what one pass would. */
    for (int t = 0; !failed && t < T; t++)
        for (int qi = 0; qi < q; qi++)
            for (int i = 0; i < th[t].h[qi].size; i++)
                topk_push(heaps + qi, th[t].h[qi].key[i], th[t].h[qi].row[i]);
    for (int t = 0; t < T; t++) heaps_free(&th[t]);
    return failed ? -1 : 0;
}

/* The first block start at or after r0 (a multiple of B) whose block holds an
 * eligible row; n when none does. */
static size_t next_block(size_t r0, size_t n, size_t B, const uint8_t *mask)
{
    for (; r0 < n; r0 += B) {
        if (!mask) return r0;
        const size_t end = n - r0 < B ? n : r0 + B;
        for (size_t i = r0; i < end; i++)
            if (mask[i]) return r0;
    }
    return n;
}

/* scan with the dot products from a scorer: the same keys and heaps, blocks
 * pipelined through the scorer's two slots. Returns 0, -1 (out of memory) or
 * -2 (the scorer failed; its message is in err). */
static int scan_scored(const struct search_scorer *sc, enum search_matrix which,
                       enum store_metric metric, size_t n, int w, const float *Q,
                       const float *qsq, int q, int rows_unit, const float *rowsq,
                       const uint8_t *mask, struct topk *heaps, char *err, size_t errlen)
{
    size_t B = BLOCK_SCORES / (size_t)q;
    if (B > SCORED_BLOCK_ROWS_MAX) B = SCORED_BLOCK_ROWS_MAX;
    if (B < BLOCK_ROWS_MIN) B = BLOCK_ROWS_MIN;
    if (B > n) B = n;
    const int want_sq = (metric == STORE_METRIC_COSINE && !rows_unit) ||
                        (metric == STORE_METRIC_L2 && !rowsq);
    float *rf = malloc(B * sizeof *rf);
    if (!rf) return -1;
    int rc = sc->begin(sc->ctx, which, Q, q, w, B, want_sq, err, errlen);
    size_t next = rc ? n : next_block(0, n, B, mask);
    int slot = 0;
    if (next < n) rc = sc->launch(sc->ctx, slot, next, n - next < B ? n - next : B, err, errlen);
    while (!rc && next < n) {
        const size_t r0 = next, b = n - r0 < B ? n - r0 : B;
        next = next_block(r0 + B, n, B, mask);
        if (next < n) {
            rc = sc->launch(sc->ctx, slot ^ 1, next, n - next < B ? n - next : B, err, errlen);
            if (rc) break;
        }
        const float *S = NULL, *sq = NULL;
        rc = sc->wait(sc->ctx, slot, &S, &sq, err, errlen);
        if (rc) break;
        for (size_t i = 0; i < b; i++) {
            if (metric == STORE_METRIC_COSINE)
                rf[i] = rows_unit ? 1.0f
                                  : (sq[i] > 0 ? (float)(1.0 / sqrt((double)sq[i])) : 0.0f);
            else if (metric == STORE_METRIC_L2)
                rf[i] = rowsq ? rowsq[r0 + i] : sq[i];
            else
                rf[i] = 1.0f;
        }
        push_block(metric, S, b, r0, rf, qsq, q, mask, heaps);
        slot ^= 1;
    }
    sc->end(sc->ctx);
    free(rf);
    return rc ? -2 : 0;
}

static void emit(const struct index_mirror *m, enum store_metric metric, struct topk *heaps,
                 int q, int k, struct search_hit *out, int *n_out)
{
    for (int qi = 0; qi < q; qi++) {
        struct topk *h = heaps + qi;
        topk_sort(h);
        for (int i = 0; i < h->size; i++) {
            struct search_hit *o = out + (size_t)qi * k + i;
            const uint32_t r = h->row[i];
            o->row = r;
            o->row_id = mirror_row_id(m, r);
            o->external_id = mirror_external_id(m, r);
            const float key = h->key[i];
            o->score = metric == STORE_METRIC_L2 ? sqrtf(key < 0 ? -key : 0.0f) : key;
        }
    }
    *n_out = heaps[0].size;
}

static size_t eligible_rows(size_t n, const uint8_t *mask)
{
    if (!mask) return n;
    size_t e = 0;
    for (size_t i = 0; i < n; i++) e += mask[i] != 0;
    return e;
}

/* Exact search with the dot products from sc, or from mm_sgemm when sc is NULL. */
static int exact_impl(const struct search_scorer *sc, const struct index_mirror *m,
                      const float *queries, int q, int w, int k, const uint8_t *row_mask,
                      struct search_hit *out, int *n_out, char *err, size_t errlen)
{
    const enum store_metric metric = mirror_metric(m);
    const int width = mirror_width(m);
    const size_t n = mirror_count(m);
    const size_t e = eligible_rows(n, row_mask);
    const int cap = (size_t)k < e ? k : (int)e;
    *n_out = 0;
    if (cap == 0) return 0;
    float *Q = malloc((size_t)q * w * sizeof *Q);
    float *qsq = malloc((size_t)q * sizeof *qsq);
    struct heaps hs = {0};
    int rc = 0, failed = 0;
    if (!Q || !qsq || heaps_init(&hs, q, cap)) {
        rc = STORE_ERR;
        goto out;
    }
    prepare_queries(metric, queries, q, w, w, Q, qsq);
    /* Decoded rows of a compressed mirror are close to unit, not unit: their
     * cosine takes their own norm. */
    const struct index_mirror *dec = mirror_form(m) != STORE_MIRROR_F32 ? m : NULL;
    failed = sc ? scan_scored(sc, SEARCH_MATRIX_FULL, metric, n, w, Q, qsq, q, w == width,
                              w == width ? mirror_sqnorms(m) : NULL, row_mask, hs.h, err,
                              errlen)
                : scan(metric, mirror_matrix(m), (size_t)width, n, w, Q, qsq, q,
                       w == width && !dec, w == width ? mirror_sqnorms(m) : NULL, row_mask,
                       hs.h, dec, 0);
    if (failed) {
        rc = STORE_ERR;
        goto out;
    }
    emit(m, metric, hs.h, q, k, out, n_out);
out:
    if (rc && failed != -2) set_err(err, errlen, "search: out of memory for %d queries", q);
    free(Q);
    free(qsq);
    heaps_free(&hs);
    return rc;
}

static int funnel_impl(const struct search_scorer *sc, const struct index_mirror *m,
                       const float *queries, int q, int w, int k, int fw, int shortlist,
                       const uint8_t *row_mask, struct search_hit *out, int *n_out, char *err,
                       size_t errlen)
{
    const int pw = fw;
    if (w <= pw) return exact_impl(sc, m, queries, q, w, k, row_mask, out, n_out, err, errlen);
    /* The kept prefix matrix when the funnel width is its width; otherwise the
     * first fw columns of the full matrix (rows renormalised on the fly). */
    const int kept = fw == mirror_prefix_width(m) && mirror_has_prefix(m);
    const enum store_metric metric = mirror_metric(m);
    const int width = mirror_width(m);
    const size_t n = mirror_count(m);
    const size_t e = eligible_rows(n, row_mask);
    size_t L = (size_t)(shortlist > k ? shortlist : k);
    if (L > e) L = e;
    *n_out = 0;
    if (L == 0) return 0;
    const int cap = (size_t)k < L ? k : (int)L;
    float *Q = malloc((size_t)q * w * sizeof *Q);
    float *qsq = malloc((size_t)q * sizeof *qsq);
    float *Qp = malloc((size_t)q * pw * sizeof *Qp);
    float *qsqp = malloc((size_t)q * sizeof *qsqp);
    const struct index_mirror *dec = mirror_form(m) != STORE_MIRROR_F32 ? m : NULL;
    float *xbuf = malloc((size_t)w * sizeof *xbuf); /* a decoded row (compressed mirrors) */
    struct heaps cand = {0}, best = {0};
    int rc = 0, failed = 0;
    if (!Q || !qsq || !Qp || !qsqp || !xbuf || heaps_init(&cand, q, (int)L) ||
        heaps_init(&best, q, cap)) {
        rc = STORE_ERR;
        goto out;
    }
    /* Stage 1: the shortlist at the funnel width. */
    prepare_queries(metric, queries, q, w, pw, Qp, qsqp);
    if (sc)
        failed = kept ? scan_scored(sc, SEARCH_MATRIX_PREFIX, metric, n, pw, Qp, qsqp, q, 1,
                                    mirror_prefix_sqnorms(m), row_mask, cand.h, err, errlen)
                      : scan_scored(sc, SEARCH_MATRIX_FULL, metric, n, pw, Qp, qsqp, q, 0, NULL,
                                    row_mask, cand.h, err, errlen);
    else
        failed = kept ? scan(metric, mirror_prefix_matrix(m), (size_t)pw, n, pw, Qp, qsqp, q,
                             !dec, mirror_prefix_sqnorms(m), row_mask, cand.h, dec, 1)
                      : scan(metric, mirror_matrix(m), (size_t)width, n, pw, Qp, qsqp, q, 0,
                             NULL, row_mask, cand.h, dec, 0);
    if (failed) {
        rc = STORE_ERR;
        goto out;
    }
    /* Stage 2: exact re-rank of the candidates at width w. */
    prepare_queries(metric, queries, q, w, w, Q, qsq);
    const float *X = mirror_matrix(m);
    const float *sq = mirror_sqnorms(m);
    for (int qi = 0; qi < q; qi++) {
        const struct topk *c = cand.h + qi;
        const float *Qq = Q + (size_t)qi * w;
        for (int i = 0; i < c->size; i++) {
            const uint32_t r = c->row[i];
            const float *x = X ? X + (size_t)r * width : xbuf;
            if (dec) mirror_row_copy(m, r, w, xbuf);
            float s = 0.0f;
#pragma omp simd reduction(+ : s)
            for (int k = 0; k < w; k++) s += Qq[k] * x[k];
            float f = 1.0f;
            if (metric == STORE_METRIC_COSINE && (w < width || dec)) {
                const float rs = row_sq(x, w);
                f = rs > 0 ? (float)(1.0 / sqrt((double)rs)) : 0.0f;
            } else if (metric == STORE_METRIC_L2) {
                f = w == width ? sq[r] : row_sq(x, w);
            }
            topk_push(best.h + qi, make_key(metric, s, f, f, qsq[qi]), r);
        }
    }
    emit(m, metric, best.h, q, k, out, n_out);
out:
    if (rc && failed != -2)
        set_err(err, errlen, "search: out of memory for %d queries, shortlist %zu", q, L);
    free(Q);
    free(qsq);
    free(Qp);
    free(qsqp);
    free(xbuf);
    heaps_free(&cand);
    heaps_free(&best);
    return rc;
}

static int cpu_exact(const struct index_mirror *m, const float *queries, int q, int w, int k,
                     const uint8_t *row_mask, struct search_hit *out, int *n_out, char *err,
                     size_t errlen)
{
    return exact_impl(NULL, m, queries, q, w, k, row_mask, out, n_out, err, errlen);
}

static int cpu_funnel(const struct index_mirror *m, const float *queries, int q, int w, int k,
                      int fw, int shortlist, const uint8_t *row_mask, struct search_hit *out,
                      int *n_out, char *err, size_t errlen)
{
    return funnel_impl(NULL, m, queries, q, w, k, fw, shortlist, row_mask, out, n_out, err,
                       errlen);
}

const struct search_backend search_backend_cpu = {"cpu", cpu_exact, cpu_funnel};

int search_exact_scored(const struct search_scorer *sc, const struct index_mirror *m,
                        const float *queries, int q, int w, int k, const uint8_t *row_mask,
                        struct search_hit *out, int *n_out, char *err, size_t errlen)
{
    return exact_impl(sc, m, queries, q, w, k, row_mask, out, n_out, err, errlen);
}

int search_funnel_scored(const struct search_scorer *sc, const struct index_mirror *m,
                         const float *queries, int q, int w, int k, int fw, int shortlist,
                         const uint8_t *row_mask, struct search_hit *out, int *n_out,
                         char *err, size_t errlen)
{
    return funnel_impl(sc, m, queries, q, w, k, fw, shortlist, row_mask, out, n_out, err,
                       errlen);
}

static const struct search_backend *_Atomic active_backend = &search_backend_cpu;
static atomic_flag fallback_logged = ATOMIC_FLAG_INIT;

void search_use_backend(const struct search_backend *b)
{
    atomic_store(&active_backend, b ? b : &search_backend_cpu);
}

const struct search_backend *search_current_backend(void) { return atomic_load(&active_backend); }

/* A backend other than the CPU one failed: said once on stderr; the caller
 * then runs the CPU backend. */
static void log_fallback(const struct search_backend *b, const char *err)
{
    if (!atomic_flag_test_and_set(&fallback_logged))
        fprintf(stderr, "franca: search backend %s failed (%s); answering with the cpu backend "
                "(logged once)\n", b->name, err && err[0] ? err : "no message");
}

/* The active backend, or the CPU one for a compressed mirror: the other
 * backends read the float32 matrix, which such a mirror does not keep. */
static const struct search_backend *backend_for(const struct index_mirror *m)
{
    if (mirror_form(m) != STORE_MIRROR_F32) return &search_backend_cpu;
    return atomic_load(&active_backend);
}

static int check_args(const struct index_mirror *m, const float *queries, int q, int w, int k,
                      const struct search_hit *out, const int *n_out, char *err, size_t errlen)
{
    if (!m || !queries || !out || !n_out)
        return set_err(err, errlen, "search: missing arguments"), STORE_INVALID;
    if (q < 1) return set_err(err, errlen, "search: %d queries; need at least 1", q), STORE_INVALID;
    if (k < 1 || k > SEARCH_K_MAX)
        return set_err(err, errlen, "search: k = %d is outside 1..%d", k, SEARCH_K_MAX),
               STORE_INVALID;
    const int width = mirror_width(m);
    if (w < 1 || w > width)
        return set_err(err, errlen, "search: width %d is outside 1..%d (the collection width)",
                       w, width),
               STORE_INVALID;
    const size_t total = (size_t)q * (size_t)w;
    for (size_t i = 0; i < total; i++)
        if (!isfinite(queries[i]))
            return set_err(err, errlen, "search: query %zu has a NaN or Inf at %zu", i / w, i % w),
                   STORE_INVALID;
    return 0;
}

int search_exact(const struct index_mirror *m, const float *queries, int q, int w, int k,
                 const uint8_t *row_mask, struct search_hit *out, int *n_out, char *err,
                 size_t errlen)
{
    const int rc = check_args(m, queries, q, w, k, out, n_out, err, errlen);
    if (rc) return rc;
    const struct search_backend *b = backend_for(m);
    const int brc = b->exact(m, queries, q, w, k, row_mask, out, n_out, err, errlen);
    if (brc != STORE_ERR || b == &search_backend_cpu) return brc;
    log_fallback(b, err);
    return search_backend_cpu.exact(m, queries, q, w, k, row_mask, out, n_out, err, errlen);
}

int search_funnel(const struct index_mirror *m, const float *queries, int q, int w, int k,
                  int funnel_width, int shortlist, const uint8_t *row_mask,
                  struct search_hit *out, int *n_out, char *err, size_t errlen)
{
    const int rc = check_args(m, queries, q, w, k, out, n_out, err, errlen);
    if (rc) return rc;
    if (shortlist < 1)
        return set_err(err, errlen, "search: shortlist %d; need at least 1", shortlist),
               STORE_INVALID;
    if (funnel_width == 0) funnel_width = mirror_prefix_width(m);
    if (funnel_width < 1 || funnel_width > w)
        return set_err(err, errlen, "search: funnel width %d is outside 1..%d (the search width)",
                       funnel_width, w),
               STORE_INVALID;
    const struct search_backend *b = backend_for(m);
    const int brc = b->funnel(m, queries, q, w, k, funnel_width, shortlist, row_mask, out, n_out,
                              err, errlen);
    if (brc != STORE_ERR || b == &search_backend_cpu) return brc;
    log_fallback(b, err);
    return search_backend_cpu.funnel(m, queries, q, w, k, funnel_width, shortlist, row_mask, out,
                                     n_out, err, errlen);
}
