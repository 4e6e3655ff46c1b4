/* MPI backend of comm.h over MPI_COMM_WORLD. Errors keep MPI's default handler,
 * MPI_ERRORS_ARE_FATAL: a failed collective (a dead peer) aborts the whole job. */
#include "comm.h"

#include <limits.h>
#include <mpi.h>
#include <stdlib.h>

#include "errors.h"

/* MPI counts are int: large buffers go in slices. */
#define SLICE ((size_t)INT_MAX / 8)

static void reduce(void *buf, size_t n, size_t esz, MPI_Datatype t, MPI_Op op)
{
    char *p = buf;
    for (size_t off = 0; off < n; off += SLICE) {
        const size_t k = n - off < SLICE ? n - off : SLICE;
        MPI_Allreduce(MPI_IN_PLACE, p + off * esz, (int)k, t, op, MPI_COMM_WORLD);
    }
}

static void m_sum_f32(struct comm *c, float *b, size_t n)
{
    (void)c;
    reduce(b, n, sizeof *b, MPI_FLOAT, MPI_SUM);
}
static void m_sum_f64(struct comm *c, double *b, size_t n)
{
    (void)c;
    reduce(b, n, sizeof *b, MPI_DOUBLE, MPI_SUM);
}
static void m_max_f64(struct comm *c, double *b, size_t n)
{
    (void)c;
    reduce(b, n, sizeof *b, MPI_DOUBLE, MPI_MAX);
}
/* The pending non-blocking reductions (one per slice), until m_wait. */
struct pending {
    MPI_Request *r;
    int n, cap;
};

static void m_isum_f32(struct comm *c, float *b, size_t n)
{
    struct pending *q = c->impl;
    for (size_t off = 0; off < n; off += SLICE) {
        const size_t k = n - off < SLICE ? n - off : SLICE;
        if (q->n == q->cap) {
            int cap = q->cap ? 2 * q->cap : 64;
            MPI_Request *r = realloc(q->r, sizeof *r * (size_t)cap);
            if (!r) {
                /* a blocking sum here would not match the other ranks' non-blocking one */
                comm_abort(c, 1, "out of memory for MPI requests");
            }
            q->r = r;
            q->cap = cap;
        }
        MPI_Iallreduce(MPI_IN_PLACE, b + off, (int)k, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                       &q->r[q->n++]);
    }
}
static void m_test(struct comm *c)
{
    struct pending *q = c->impl;
    int done;
    if (q->n) MPI_Testall(q->n, q->r, &done, MPI_STATUSES_IGNORE);
}
static void m_wait(struct comm *c)
{
    struct pending *q = c->impl;
    if (q->n) MPI_Waitall(q->n, q->r, MPI_STATUSES_IGNORE);
    q->n = 0;
}
static void m_bcast(struct comm *c, void *b, size_t bytes, int root)
{
    (void)c;
    char *p = b;
    for (size_t off = 0; off < bytes; off += SLICE) {
        const size_t k = bytes - off < SLICE ? bytes - off : SLICE;
        MPI_Bcast(p + off, (int)k, MPI_BYTE, root, MPI_COMM_WORLD);
    }
}
static void m_barrier(struct comm *c)
{
    (void)c;
    MPI_Barrier(MPI_COMM_WORLD);
}
static void m_abort(struct comm *c, int code)
{
    (void)c;
    MPI_Abort(MPI_COMM_WORLD, code);
}
static void m_finalize(struct comm *c)
{
    struct pending *q = c->impl;
    if (q) free(q->r);
    free(q);
    c->impl = NULL;
    MPI_Finalize();
}

static const struct comm_ops mpi_ops = {
    m_sum_f32, m_sum_f64, m_max_f64, m_isum_f32, m_test, m_wait, m_bcast, m_barrier, m_abort, m_finalize,
};

int comm_mpi_init(struct comm *c, int *argc, char ***argv, char *err, size_t errlen)
{
    int provided = 0;
    /* FUNNELED: only the training thread calls MPI (loader threads never do). */
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        return set_err(err, errlen, "MPI_Init_thread failed");
    comm_single_init(c);
    c->impl = calloc(1, sizeof(struct pending));
    if (!c->impl) return set_err(err, errlen, "out of memory");
    c->ops = &mpi_ops;
    c->kind = COMM_MPI;
    MPI_Comm_rank(MPI_COMM_WORLD, &c->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &c->size);
    return 0;
}
