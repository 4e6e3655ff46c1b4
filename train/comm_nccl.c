/* NCCL backend of comm.h: one GPU per rank (local rank modulo the visible GPUs),
 * bootstrapped over MPI (rank 0's ncclUniqueId is broadcast). The trainer keeps
 * its tensors in host memory, so each reduction is staged through a grow-only
 * device buffer: copy in, ncclAllReduce on the rank's stream, copy out. Any
 * CUDA or NCCL error aborts the job: a partial reduction must not train on. */
#include "comm.h"

#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>

#include "errors.h"

struct nccl_impl {
    ncclComm_t comm;
    cudaStream_t stream;
    void *dbuf;
    size_t cap;
};

static void fail(struct comm *c, const char *what, const char *why)
{
    char msg[256];
    snprintf(msg, sizeof msg, "NCCL backend: %s: %s", what, why);
    comm_abort(c, 1, msg);
}

#define CU(c, x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) fail(c, #x, cudaGetErrorString(e_)); } while (0)
#define NC(c, x) do { ncclResult_t r_ = (x); if (r_ != ncclSuccess) fail(c, #x, ncclGetErrorString(r_)); } while (0)

static void *staging(struct comm *c, size_t bytes)
{
    struct nccl_impl *m = c->impl;
    if (bytes > m->cap) {
        if (m->dbuf) CU(c, cudaFree(m->dbuf));
        m->dbuf = NULL;
        CU(c, cudaMalloc(&m->dbuf, bytes));
        m->cap = bytes;
    }
    return m->dbuf;
}

static void reduce(struct comm *c, void *buf, size_t n, size_t esz, ncclDataType_t t, ncclRedOp_t op)
{
    struct nccl_impl *m = c->impl;
    if (!n) return;
    void *d = staging(c, n * esz);
    CU(c, cudaMemcpyAsync(d, buf, n * esz, cudaMemcpyHostToDevice, m->stream));
    NC(c, ncclAllReduce(d, d, n, t, op, m->comm, m->stream));
    CU(c, cudaMemcpyAsync(buf, d, n * esz, cudaMemcpyDeviceToHost, m->stream));
    CU(c, cudaStreamSynchronize(m->stream));
}

static void n_sum_f32(struct comm *c, float *b, size_t n) { reduce(c, b, n, sizeof *b, ncclFloat32, ncclSum); }
static void n_sum_f64(struct comm *c, double *b, size_t n) { reduce(c, b, n, sizeof *b, ncclFloat64, ncclSum); }
static void n_max_f64(struct comm *c, double *b, size_t n) { reduce(c, b, n, sizeof *b, ncclFloat64, ncclMax); }

/* Host gradients are staged through one device buffer, so a non-blocking sum
 * (n_sum_f32 in the iallreduce slot) completes at the call; overlap on GPUs belongs with gradients that live on the device
 * (ncclAllReduce on a side stream). */
static void n_test(struct comm *c) { (void)c; }
static void n_wait(struct comm *c) { (void)c; }

static void n_bcast(struct comm *c, void *b, size_t bytes, int root)
{
    struct nccl_impl *m = c->impl;
    if (!bytes) return;
    void *d = staging(c, bytes);
    CU(c, cudaMemcpyAsync(d, b, bytes, cudaMemcpyHostToDevice, m->stream));
    NC(c, ncclBroadcast(d, d, bytes, ncclInt8, root, m->comm, m->stream));
    CU(c, cudaMemcpyAsync(b, d, bytes, cudaMemcpyDeviceToHost, m->stream));
    CU(c, cudaStreamSynchronize(m->stream));
}

static void n_barrier(struct comm *c)
{
    (void)c;
    MPI_Barrier(MPI_COMM_WORLD);
}

static void n_abort(struct comm *c, int code)
{
    struct nccl_impl *m = c->impl;
    /* ncclCommAbort frees peers blocked in a collective with this rank. */
    if (m && m->comm) ncclCommAbort(m->comm);
    MPI_Abort(MPI_COMM_WORLD, code);
}

static void n_finalize(struct comm *c)
{
    struct nccl_impl *m = c->impl;
    if (m) {
        ncclCommDestroy(m->comm);
        if (m->dbuf) cudaFree(m->dbuf);
        cudaStreamDestroy(m->stream);
        free(m);
        c->impl = NULL;
    }
    MPI_Finalize();
}

static const struct comm_ops nccl_ops = {
    n_sum_f32, n_sum_f64, n_max_f64, n_sum_f32, n_test, n_wait, n_bcast, n_barrier, n_abort,
    n_finalize,
};

int comm_nccl_init(struct comm *c, int *argc, char ***argv, char *err, size_t errlen)
{
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        return set_err(err, errlen, "MPI_Init_thread failed (the NCCL backend boots over MPI)");
    comm_single_init(c);
    c->kind = COMM_NCCL;
    MPI_Comm_rank(MPI_COMM_WORLD, &c->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &c->size);
    /* The rank on this node picks the GPU. */
    MPI_Comm node;
    int local = 0, ndev = 0;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &local);
    MPI_Comm_free(&node);
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 1) {
        MPI_Finalize();
        return set_err(err, errlen, "FRANCA_TRAIN_COMM=nccl: no CUDA device visible");
    }
    struct nccl_impl *m = calloc(1, sizeof *m);
    if (!m) {
        MPI_Finalize();
        return set_err(err, errlen, "out of memory");
    }
    c->impl = m;
    c->ops = &nccl_ops;
    CU(c, cudaSetDevice(local % ndev));
    CU(c, cudaStreamCreateWithFlags(&m->stream, cudaStreamNonBlocking));
    ncclUniqueId id;
    if (c->rank == 0) NC(c, ncclGetUniqueId(&id));
    MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
    NC(c, ncclCommInitRank(&m->comm, c->size, id, c->rank));
    return 0;
}
