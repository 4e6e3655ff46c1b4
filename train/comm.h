/* Collective communication between the ranks of a data-parallel franca-train
 * job (docs/training.md, "Data parallel"). Three backends behind one table:
 *   single  one process, no library: every reduction is the identity;
 *   mpi     MPI_COMM_WORLD (comm_mpi.c, built with meson option mpi);
 *   nccl    NCCL between GPUs, bootstrapped over MPI (comm_nccl.c, built when
 *           CUDA, NCCL and MPI are found); host buffers are staged on the device.
 * Every call is collective except rank/size/abort: all ranks make the same calls
 * in the same order. Errors in a collective abort the job (MPI's default handler
 * does; the NCCL backend aborts itself), so these calls do not return errors. */
#ifndef FRANCA_TRAIN_COMM_H
#define FRANCA_TRAIN_COMM_H

#include <stddef.h>

enum comm_kind { COMM_SINGLE, COMM_MPI, COMM_NCCL };

struct comm;

struct comm_ops {
    void (*allreduce_sum_f32)(struct comm *c, float *buf, size_t n);
    void (*allreduce_sum_f64)(struct comm *c, double *buf, size_t n);
    void (*allreduce_max_f64)(struct comm *c, double *buf, size_t n);
    /* non-blocking sum: buf must stay untouched until wait returns */
    void (*iallreduce_sum_f32)(struct comm *c, float *buf, size_t n);
    void (*test)(struct comm *c);   /* lets pending reductions progress */
    void (*wait)(struct comm *c);   /* completes every pending reduction */
    void (*broadcast)(struct comm *c, void *buf, size_t bytes, int root);
    void (*barrier)(struct comm *c);
    void (*abort)(struct comm *c, int code);
    void (*finalize)(struct comm *c);
};

struct comm {
    const struct comm_ops *ops;
    enum comm_kind kind;
    int rank, size;
    void *impl;
    size_t bytes_reduced;   /* payload bytes passed to the allreduces (benchmarks) */
};

/* Picks the backend: FRANCA_TRAIN_COMM=nccl or mpi, else MPI under an MPI launcher
 * (comm_launcher_size() > 0), else single. Under a launcher of more than one rank
 * without MPI built in, fails (-1 with err) instead of running R independent copies. */
int comm_init(struct comm *c, int *argc, char ***argv, char *err, size_t errlen);
/* The job size an MPI launcher announces in the environment (Open MPI, PMI, PMIx,
 * Slurm's PMI), or 0 when not launched by one. */
int comm_launcher_size(void);

int comm_single_init(struct comm *c);
/* Backends built in; -1 with err when not. */
int comm_mpi_init(struct comm *c, int *argc, char ***argv, char *err, size_t errlen);
int comm_nccl_init(struct comm *c, int *argc, char ***argv, char *err, size_t errlen);

static inline int comm_rank(const struct comm *c) { return c ? c->rank : 0; }
static inline int comm_size(const struct comm *c) { return c ? c->size : 1; }
static inline void comm_allreduce_sum_f32(struct comm *c, float *buf, size_t n)
{
    c->bytes_reduced += n * sizeof(float);
    c->ops->allreduce_sum_f32(c, buf, n);
}
static inline void comm_allreduce_sum_f64(struct comm *c, double *buf, size_t n)
{
    c->bytes_reduced += n * sizeof(double);
    c->ops->allreduce_sum_f64(c, buf, n);
}
static inline void comm_allreduce_max_f64(struct comm *c, double *buf, size_t n)
{
    c->bytes_reduced += n * sizeof(double);
    c->ops->allreduce_max_f64(c, buf, n);
}
/* Starts a sum over the ranks of buf in place, which completes by comm_wait:
 * gradient buckets reduced while the backward pass goes on. Every rank starts
 * the same reductions in the same order. */
static inline void comm_iallreduce_sum_f32(struct comm *c, float *buf, size_t n)
{
    c->bytes_reduced += n * sizeof(float);
    c->ops->iallreduce_sum_f32(c, buf, n);
}
/* Open MPI moves non-blocking collectives on mainly inside MPI calls: the
 * trainer calls this between pieces of work while reductions are pending. */
static inline void comm_test(struct comm *c) { c->ops->test(c); }
static inline void comm_wait(struct comm *c) { c->ops->wait(c); }
static inline void comm_broadcast(struct comm *c, void *buf, size_t bytes, int root)
{
    c->ops->broadcast(c, buf, bytes, root);
}
static inline void comm_barrier(struct comm *c) { c->ops->barrier(c); }
/* Prints "franca-train: rank R: msg" on stderr and ends every rank with code. */
void comm_abort(struct comm *c, int code, const char *msg);
void comm_finalize(struct comm *c);

#endif
