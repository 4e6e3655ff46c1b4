/* bench_hnsw: the HNSW index (server/index/hnsw.c) on raw float32 files, with
 * the server's search path: a shortlist from the graph over the normalised
 * prefix of width W, re-ranked exactly by cosine at the full width D.
 *
 *   bench_hnsw --base FILE --queries FILE --gt FILE --n N --dim D --nq Q --k 10
 *              --width W --m M --efc EFC --ef 16,32,64,128 --threads T --shortlist S
 *
 * base: [>= n, D] float32 little-endian row-major; queries [nq, D]; gt: int32
 * [nq, k], the exact top-k row indices at width D by cosine. Builds the graph
 * over the first n rows with T threads (timed), prints
 *   {"build_s":..,"rss_mib":..,"bytes_per_vector":..}
 * then for each ef one line
 *   {"ef":E,"recall":R,"p50_ms":..,"p99_ms":..,"qps_single":..,"qps_batch":..}
 * single: one query at a time on one thread; batch: the queries split over T
 * threads. The shortlist is max(k, S) nodes taken from the graph with
 * max(ef, shortlist); bytes_per_vector is the graph's (the full-width vectors
 * for the re-rank are D * 4 more). --shortlist may also be a list (10,40,100):
 * then every ef runs with every shortlist over the one graph, each line
 * carrying "shortlist" too. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "errors.h"
#include "index/hnsw.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static void *load(const char *path, size_t bytes)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "bench_hnsw: cannot open %s\n", path);
        exit(2);
    }
    void *p = malloc(bytes ? bytes : 1);
    if (!p || fread(p, 1, bytes, f) != bytes) {
        fprintf(stderr, "bench_hnsw: %s is shorter than %zu bytes\n", path, bytes);
        exit(2);
    }
    fclose(f);
    return p;
}

static double rss_mib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = atof(line + 6);
    if (f) fclose(f);
    return kb / 1024.0;
}

struct ctx {
    struct hnsw *h;
    const float *base; /* [n, D] unit rows */
    const float *q;    /* [nq, D] */
    int dim, k, ef, shortlist, nq;
    int *out;          /* [nq, k] */
    _Atomic int next;
};

static int cmp_desc(const void *a, const void *b)
{
    const float x = ((const float *)a)[0], y = ((const float *)b)[0];
    return x > y ? -1 : x < y;
}

/* One query: shortlist from the graph, exact cosine at D, top k into out. */
static void one(const struct ctx *c, int qi, int64_t *lab, float *pairs)
{
    const float *q = c->q + (size_t)qi * c->dim;
    const int s = hnsw_search(c->h, q, c->shortlist, c->ef > c->shortlist ? c->ef : c->shortlist,
                              NULL, NULL, lab, NULL);
    double qq = 0;
    for (int j = 0; j < c->dim; j++) qq += (double)q[j] * q[j];
    const float inv = qq > 0 ? (float)(1 / sqrt(qq)) : 0;
    for (int i = 0; i < s; i++) {
        const float *r = c->base + (size_t)lab[i] * c->dim;
        float d = 0;
        for (int j = 0; j < c->dim; j++) d += r[j] * q[j];
        pairs[2 * i] = d * inv;
        memcpy(&pairs[2 * i + 1], &(int32_t){(int32_t)lab[i]}, 4);
    }
    qsort(pairs, (size_t)(s > 0 ? s : 0), 2 * sizeof *pairs, cmp_desc);
    for (int i = 0; i < c->k; i++) {
        int32_t id = -1;
        if (i < s) memcpy(&id, &pairs[2 * i + 1], 4);
        c->out[(size_t)qi * c->k + i] = id;
    }
}

static void *batch_worker(void *p)
{
    struct ctx *c = p;
    int64_t *lab = malloc((size_t)c->shortlist * sizeof *lab);
    float *pairs = malloc((size_t)c->shortlist * 2 * sizeof *pairs);
    for (int i; (i = atomic_fetch_add(&c->next, 1)) < c->nq;) one(c, i, lab, pairs);
    free(lab);
    free(pairs);
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    const char *base_path = NULL, *q_path = NULL, *gt_path = NULL, *efs = "16,32,64,128";
    const char *shortlists = "0";
    long n = 0, dim = 0, nq = 0, k = 10, width = 64, m = 16, efc = 200, threads = 1, shortlist = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "--base")) base_path = v;
        else if (!strcmp(a, "--queries")) q_path = v;
        else if (!strcmp(a, "--gt")) gt_path = v;
        else if (!strcmp(a, "--n")) n = atol(v);
        else if (!strcmp(a, "--dim")) dim = atol(v);
        else if (!strcmp(a, "--nq")) nq = atol(v);
        else if (!strcmp(a, "--k")) k = atol(v);
        else if (!strcmp(a, "--width")) width = atol(v);
        else if (!strcmp(a, "--m")) m = atol(v);
        else if (!strcmp(a, "--efc")) efc = atol(v);
        else if (!strcmp(a, "--ef")) efs = v;
        else if (!strcmp(a, "--threads")) threads = atol(v);
        else if (!strcmp(a, "--shortlist")) shortlists = v;
        else {
            fprintf(stderr, "bench_hnsw: unknown option %s\n", a);
            return 2;
        }
    }
    if (!base_path || !q_path || !gt_path || n < 1 || dim < 1 || nq < 1 || k < 1 || width < 1 ||
        width > dim || threads < 1) {
        fprintf(stderr, "usage: bench_hnsw --base FILE --queries FILE --gt FILE --n N --dim D "
                        "--nq Q --k 10 --width W --m M --efc EFC --ef 16,32,64,128 --threads T "
                        "--shortlist S\n");
        return 2;
    }
    for (const char *p = shortlists; *p; p++) /* the largest, for the buffers */
        if (p == shortlists || p[-1] == ',')
            if (atol(p) > shortlist) shortlist = atol(p);
    if (shortlist < k) shortlist = k;
    float *base = load(base_path, (size_t)n * (size_t)dim * sizeof(float));
    float *q = load(q_path, (size_t)nq * (size_t)dim * sizeof(float));
    int32_t *gt = load(gt_path, (size_t)nq * (size_t)k * sizeof(int32_t));

    char err[ERR_LEN];
    struct hnsw *h = hnsw_create((int)width, (int)m, (int)efc, HNSW_EF_DEFAULT, err, sizeof err);
    if (!h) {
        fprintf(stderr, "bench_hnsw: %s\n", err);
        return 1;
    }
    int64_t *labels = malloc((size_t)n * sizeof *labels);
    for (long i = 0; i < n; i++) labels[i] = i;
    const double t0 = now();
    if (hnsw_insert_many(h, labels, base, (size_t)n, (size_t)dim, (int)threads, NULL, NULL)) {
        fprintf(stderr, "bench_hnsw: out of memory\n");
        return 1;
    }
    const double build_s = now() - t0;
    free(labels);
    /* The re-rank reads unit rows at full width, as the server's cosine mirror keeps them. */
    for (long i = 0; i < n; i++) {
        float *r = base + (size_t)i * dim;
        double s = 0;
        for (long j = 0; j < dim; j++) s += (double)r[j] * r[j];
        const float inv = s > 0 ? (float)(1 / sqrt(s)) : 0;
        for (long j = 0; j < dim; j++) r[j] *= inv;
    }
    printf("{\"build_s\":%.3f,\"rss_mib\":%.1f,\"bytes_per_vector\":%.1f,\"kernel\":\"%s\"}\n",
           build_s, rss_mib(), (double)hnsw_memory(h) / (double)n, hnsw_kernel());
    fflush(stdout);

    struct ctx c = {.h = h, .base = base, .q = q, .dim = (int)dim, .k = (int)k,
                    .shortlist = (int)shortlist, .nq = (int)nq};
    c.out = malloc((size_t)nq * (size_t)k * sizeof *c.out);
    double *lat = malloc((size_t)nq * sizeof *lat);
    int64_t *lab = malloc((size_t)shortlist * sizeof *lab);
    float *pairs = malloc((size_t)shortlist * 2 * sizeof *pairs);
    for (const char *sp = shortlists; *sp;) {
        c.shortlist = atoi(sp) > k ? atoi(sp) : (int)k;
        for (const char *p = efs; *p;) {
            c.ef = atoi(p);
            /* Warm-up pass (caches, scratch), then the timed single-thread pass. */
            for (int i = 0; i < (nq < 50 ? nq : 50); i++) one(&c, i, lab, pairs);
            const double s0 = now();
            for (int i = 0; i < nq; i++) {
                const double a = now();
                one(&c, i, lab, pairs);
                lat[i] = (now() - a) * 1e3;
            }
            const double single = now() - s0;
            long hit = 0;
            for (long i = 0; i < nq; i++)
                for (long a = 0; a < k; a++)
                    for (long b = 0; b < k; b++)
                        if (gt[i * k + a] == c.out[i * k + b]) {
                            hit++;
                            break;
                        }
            qsort(lat, (size_t)nq, sizeof *lat, cmp_double);
            atomic_store(&c.next, 0);
            pthread_t t[64];
            const int nt = threads > 64 ? 64 : (int)threads;
            const double b0 = now();
            for (int i = 1; i < nt; i++) pthread_create(&t[i], NULL, batch_worker, &c);
            batch_worker(&c);
            for (int i = 1; i < nt; i++) pthread_join(t[i], NULL);
            const double batch = now() - b0;
            printf("{\"ef\":%d,\"recall\":%.4f,\"p50_ms\":%.4f,\"p99_ms\":%.4f,\"qps_single\":%.1f,"
                   "\"qps_batch\":%.1f,\"shortlist\":%d}\n",
                   c.ef, (double)hit / (double)(nq * k), lat[nq / 2],
                   lat[(size_t)((double)nq * 0.99) < (size_t)nq ? (size_t)((double)nq * 0.99) : (size_t)nq - 1],
                   (double)nq / single, (double)nq / batch, c.shortlist);
            fflush(stdout);
            while (*p && *p != ',') p++;
            if (*p == ',') p++;
        }
        while (*sp && *sp != ',') sp++;
        if (*sp == ',') sp++;
    }
    free(pairs);
    free(lab);
    free(lat);
    free(c.out);
    hnsw_free(h);
    free(base);
    free(q);
    free(gt);
    return 0;
}
