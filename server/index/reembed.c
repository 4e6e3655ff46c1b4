/* The re-embed job; see reembed.h. */
#include "index/reembed.h"

#include <stdlib.h>

#include "errors.h"

static int stopped(const struct reembed_spec *s)
{
    return s->stop && atomic_load(s->stop);
}

int reembed_run(const struct reembed_spec *s, char *err, size_t errlen)
{
    const size_t w = (size_t)coll_width(s->c), cap = (size_t)(s->total > 0 ? s->total : 1);
    /* Every new vector is held until the end: the switch is one transaction. */
    int64_t *row_ids = malloc(cap * sizeof *row_ids);
    float *vecs = malloc(cap * w * sizeof *vecs);
    int64_t done = 0, after = 0;
    int rc = row_ids && vecs ? 0
                             : set_err_code(err, errlen, STORE_ERR,
                                            "out of memory for %lld vectors", (long long)s->total);
    while (!rc) {
        if (stopped(s)) {
            rc = set_err_code(err, errlen, STORE_ERR, "the server shut down; nothing was changed");
            break;
        }
        struct store_image_row *rows;
        size_t n;
        if ((rc = store_images_page(coll_store(s->c), coll_id(s->c), after, REEMBED_PAGE, &rows,
                                    &n, err, errlen)))
            break;
        if (n == 0) {
            store_image_rows_free(rows, n);
            break;
        }
        if (done + (int64_t)n > s->total) { /* writes are refused, so only corruption */
            store_image_rows_free(rows, n);
            rc = set_err_code(err, errlen, STORE_ERR,
                              "the collection changed while it was re-embedded");
            break;
        }
        if (s->embed(s->user, rows, n, (int)w, vecs + (size_t)done * w, err, errlen))
            rc = STORE_ERR;
        for (size_t i = 0; !rc && i < n; i++) row_ids[done + (int64_t)i] = rows[i].row_id;
        after = rows[n - 1].row_id;
        store_image_rows_free(rows, n);
        if (!rc) {
            done += (int64_t)n;
            if (s->progress) s->progress(s->user, done);
        }
    }
    if (!rc && done != s->total)
        rc = set_err_code(err, errlen, STORE_ERR, "found %lld of %lld images", (long long)done,
                          (long long)s->total);
    if (!rc)
        rc = coll_replace_vectors(s->c, s->fingerprint, row_ids, vecs, (size_t)done, err, errlen);
    coll_end_job(s->c);
    free(row_ids);
    free(vecs);
    return rc;
}
