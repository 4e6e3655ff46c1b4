/* Backend choice and the single-process backend (comm.h). */
#include "comm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"

static void s_sum_f32(struct comm *c, float *b, size_t n) { (void)c, (void)b, (void)n; }
static void s_sum_f64(struct comm *c, double *b, size_t n) { (void)c, (void)b, (void)n; }
static void s_nop(struct comm *c) { (void)c; }
static void s_bcast(struct comm *c, void *b, size_t n, int root) { (void)c, (void)b, (void)n, (void)root; }
static void s_barrier(struct comm *c) { (void)c; }
static void s_abort(struct comm *c, int code) { (void)c, exit(code); }
static void s_finalize(struct comm *c) { (void)c; }

static const struct comm_ops single_ops = {
    s_sum_f32, s_sum_f64, s_sum_f64, s_sum_f32, s_nop, s_nop, s_bcast, s_barrier, s_abort,
    s_finalize,
};

int comm_single_init(struct comm *c)
{
    memset(c, 0, sizeof *c);
    c->ops = &single_ops;
    c->kind = COMM_SINGLE;
    c->size = 1;
    return 0;
}

int comm_launcher_size(void)
{
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE",
                                 "MPI_LOCALNRANKS", "SLURM_NTASKS"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        /* Slurm sets SLURM_NTASKS in plain sbatch scripts too: it counts only
         * beside a PMI rank, which srun sets. */
        if (i == 4 && !getenv("PMI_RANK") && !getenv("PMIX_RANK")) continue;
        if (v && atoi(v) > 0) return atoi(v);
    }
    return getenv("PMIX_RANK") ? 1 : 0;
}

int comm_init(struct comm *c, int *argc, char ***argv, char *err, size_t errlen)
{
    const char *want = getenv("FRANCA_TRAIN_COMM");
    const int launched = comm_launcher_size();
    if (want && want[0] && strcmp(want, "mpi") && strcmp(want, "nccl"))
        return set_err(err, errlen, "FRANCA_TRAIN_COMM must be mpi or nccl, got '%s'", want);
    if (want && !strcmp(want, "nccl")) return comm_nccl_init(c, argc, argv, err, errlen);
    if (!launched && !(want && want[0])) return comm_single_init(c);
    if (comm_mpi_init(c, argc, argv, err, errlen) == 0) return 0;
    /* Without MPI, R copies would each train on the whole batch and race on the
     * run directory: refuse. One rank under a launcher is a plain run. */
    return launched == 1 && !(want && want[0]) ? comm_single_init(c) : -1;
}

void comm_abort(struct comm *c, int code, const char *msg)
{
    fprintf(stderr, "franca-train: rank %d of %d: %s\n", comm_rank(c), comm_size(c), msg);
    fflush(stderr);
    if (c && c->ops) c->ops->abort(c, code);
    exit(code);
}

void comm_finalize(struct comm *c)
{
    if (c && c->ops) c->ops->finalize(c);
}

/* Stubs for the backends left out of this build. */
#ifndef FRANCA_HAVE_MPI
int comm_mpi_init(struct comm *c, int *argc, char ***argv, char *err, size_t errlen)
{
    (void)c, (void)argc, (void)argv;
    return set_err(err, errlen, "launched by mpirun (%d ranks) but franca-train was built "
                   "without MPI: install libopenmpi-dev and rebuild (meson option mpi)",
                   comm_launcher_size());
}
#endif
#ifndef FRANCA_HAVE_NCCL
int comm_nccl_init(struct comm *c, int *argc, char ***argv, char *err, size_t errlen)
{
    (void)c, (void)argc, (void)argv;
    return set_err(err, errlen, "FRANCA_TRAIN_COMM=nccl but franca-train was built without "
                   "NCCL (it needs CUDA, NCCL and MPI)");
}
#endif
