/* libFuzzer target: the HNSW graph file loader (index/hnsw.c), which reads
 * what lies beside the SQLite file under --data. A file it accepts must be a
 * graph that searches, inserts, deletes and lists without fault. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "errors.h"
#include "index/hnsw.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/fuzz_hnsw_%d.bin", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    const size_t wrote = fwrite(data, 1, size, f);
    fclose(f);
    if (wrote != size) return 0;
    char err[ERR_LEN] = "";
    int64_t gen = 0;
    struct hnsw *h = hnsw_load(path, &gen, err, sizeof err);
    unlink(path);
    if (!h) {
        if (err[0] == '\0' || memchr(err, '\n', strlen(err)))
            abort(); /* the contract: a non-empty one-line message */
        return 0;
    }
    const int w = hnsw_width(h);
    float *q = calloc((size_t)w, sizeof *q);
    int64_t labels[10], *all = NULL;
    size_t n = 0;
    if (q) {
        q[0] = 1.0f;
        const int got = hnsw_search(h, q, 10, 0, NULL, NULL, labels, NULL);
        if (got > 10) abort();
        if (hnsw_labels(h, &all, &n) == 0 && n) hnsw_delete(h, all[0]);
        hnsw_insert(h, INT64_MAX, q);
        if (hnsw_search(h, q, 10, 0, NULL, NULL, labels, NULL) > 10) abort();
    }
    free(all);
    free(q);
    hnsw_free(h);
    return 0;
}
