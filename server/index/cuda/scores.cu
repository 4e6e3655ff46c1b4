/* Dot-product scores for the index's cuBLAS search backend; see cuda_scores.h.
 *
 * Layout: the row-major host matrices (x [n, ld], Q [q, w]) are, to cuBLAS,
 * column-major x^T [ld, n] and Q^T [w, q]. The row-major score block
 * S [q, b] = Q . x[r0 : r0+b, :w]^T is column-major S^T [b, q], so
 *   S^T = (x^T[:w, r0 : r0+b])^T . Q^T
 * is one cublasSgemm(OP_T, OP_N, m = b, n = q, k = w, A = x + r0*ld, lda = ld,
 * B = Q, ldb = w, C = S, ldc = b).
 *
 * Every operation of a pass runs on the workspace's stream in order: one
 * device score buffer suffices (the GEMM of the next block starts after the
 * copy-out of the previous one), and two pinned host buffers let the host rank
 * one block while the next is computed and copied. */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdlib.h>

#include "index/cuda_scores.h"

extern "C" {
#include "errors.h"
}

struct cuda_scores_matrix {
    float *dev;
    size_t cap; /* floats allocated */
    size_t n;   /* rows held */
    int ld;
};

struct cuda_scores_ws {
    cudaStream_t stream;
    cublasHandle_t blas;
    cudaEvent_t done[2];
    float *q_dev;
    size_t q_cap;
    float *s_dev;
    size_t s_cap;
    float *sq_dev;
    size_t sq_cap;
    float *s_host[2]; /* pinned */
    size_t s_host_cap;
    float *sq_host[2]; /* pinned */
    size_t sq_host_cap;
    /* The pass in progress. */
    const struct cuda_scores_matrix *x;
    int q, w, want_sq;
    size_t max_rows;
    bool queued[2];
};

/* Clears a non-sticky error from the runtime's per-thread "last error". */
static void clear_last_error(void)
{
    (void)cudaGetLastError();
}

static int cuda_fail(const char *what, cudaError_t e, char *err, size_t errlen)
{
    clear_last_error();
    return set_err(err, errlen, "CUDA search: %s: %s", what, cudaGetErrorString(e));
}

static int blas_fail(const char *what, cublasStatus_t s, char *err, size_t errlen)
{
    clear_last_error();
    return set_err(err, errlen, "CUDA search: %s: %s", what, cublasGetStatusString(s));
}

/* Squared L2 norm of the first w components of b rows (leading dimension ld),
 * accumulated in double like the CPU backend: one warp per row. */
__global__ void scores_row_sq(const float *__restrict__ x, size_t ld, int w, int b,
                              float *__restrict__ out)
{
    const long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = (int)(threadIdx.x & 31u);
    if (row >= b) return; /* the same for every lane of a warp */
    const float *r = x + (size_t)row * ld;
    double s = 0.0;
    for (int j = lane; j < w; j += 32) {
        const double v = (double)r[j];
        s += v * v;
    }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
    if (lane == 0) out[row] = (float)s;
}

extern "C" void cuda_scores_ws_free(struct cuda_scores_ws *ws)
{
    if (!ws) return;
    if (ws->stream) cudaStreamSynchronize(ws->stream);
    for (int i = 0; i < 2; i++) {
        if (ws->done[i]) cudaEventDestroy(ws->done[i]);
        cudaFreeHost(ws->s_host[i]);
        cudaFreeHost(ws->sq_host[i]);
    }
    cudaFree(ws->q_dev);
    cudaFree(ws->s_dev);
    cudaFree(ws->sq_dev);
    if (ws->blas) cublasDestroy(ws->blas);
    if (ws->stream) cudaStreamDestroy(ws->stream);
    clear_last_error();
    free(ws);
}

extern "C" int cuda_scores_ws_create(struct cuda_scores_ws **out, char *err, size_t errlen)
{
    *out = NULL;
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        clear_last_error();
        return set_err(err, errlen, "CUDA search: no usable CUDA device (%s)",
                       cudaGetErrorString(e));
    }
    if (count <= 0) return set_err(err, errlen, "CUDA search: no CUDA device found");
    struct cuda_scores_ws *ws = (struct cuda_scores_ws *)calloc(1, sizeof(*ws));
    if (!ws) return set_err(err, errlen, "CUDA search: out of memory");
    e = cudaStreamCreateWithFlags(&ws->stream, cudaStreamNonBlocking);
    for (int i = 0; i < 2 && e == cudaSuccess; i++)
        e = cudaEventCreateWithFlags(&ws->done[i], cudaEventDisableTiming);
    if (e != cudaSuccess) {
        cuda_scores_ws_free(ws);
        return cuda_fail("creating a stream", e, err, errlen);
    }
    cublasStatus_t s = cublasCreate(&ws->blas);
    if (s != CUBLAS_STATUS_SUCCESS) {
        ws->blas = NULL;
        cuda_scores_ws_free(ws);
        return blas_fail("cublasCreate", s, err, errlen);
    }
    s = cublasSetStream(ws->blas, ws->stream);
    /* Plain fp32: no TF32 tensor cores, so scores match the CPU's to float rounding. */
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasSetMathMode(ws->blas, CUBLAS_DEFAULT_MATH);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasSetPointerMode(ws->blas, CUBLAS_POINTER_MODE_HOST);
    if (s != CUBLAS_STATUS_SUCCESS) {
        cuda_scores_ws_free(ws);
        return blas_fail("configuring cuBLAS", s, err, errlen);
    }
    *out = ws;
    return 0;
}

extern "C" void cuda_scores_matrix_free(struct cuda_scores_matrix *mat)
{
    if (!mat) return;
    cudaFree(mat->dev);
    clear_last_error();
    free(mat);
}

extern "C" int cuda_scores_upload(struct cuda_scores_ws *ws, struct cuda_scores_matrix **mat,
                                  const float *x, size_t n, int ld, int keep_rows, char *err,
                                  size_t errlen)
{
    if (!ws || !mat || ld < 1 || (n && !x))
        return set_err(err, errlen, "CUDA search: bad upload arguments");
    if (!*mat) {
        *mat = (struct cuda_scores_matrix *)calloc(1, sizeof(**mat));
        if (!*mat) return set_err(err, errlen, "CUDA search: out of memory");
    }
    struct cuda_scores_matrix *m = *mat;
    const size_t need = n * (size_t)ld;
    const size_t keep = keep_rows && m->n <= n && ld == m->ld && need <= m->cap ? m->n : 0;
    m->n = 0;
    m->ld = ld;
    if (need == 0) return 0;
    if (need > m->cap) {
        cudaFree(m->dev); /* first, so that two copies never need to fit at once */
        m->dev = NULL;
        m->cap = 0;
        /* A quarter of headroom, so that a growing collection is not reallocated on every insert. */
        size_t cap = need + need / 4;
        cudaError_t e = cudaMalloc((void **)&m->dev, cap * sizeof(float));
        if (e != cudaSuccess) {
            clear_last_error();
            cap = need;
            e = cudaMalloc((void **)&m->dev, cap * sizeof(float));
        }
        if (e != cudaSuccess) {
            m->dev = NULL;
            clear_last_error();
            return set_err(err, errlen,
                           "CUDA search: no room on the device for a %zu x %d matrix "
                           "(%.1f MiB): %s",
                           n, ld, (double)need * sizeof(float) / 1048576.0,
                           cudaGetErrorString(e));
        }
        m->cap = cap;
    }
    const size_t skip = keep * (size_t)ld;
    cudaError_t e = cudaMemcpyAsync(m->dev + skip, x + skip, (need - skip) * sizeof(float),
                                    cudaMemcpyHostToDevice, ws->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(ws->stream);
    if (e != cudaSuccess) return cuda_fail("uploading the search matrix", e, err, errlen);
    m->n = n;
    return 0;
}

/* Grows a device buffer to hold need floats (contents not kept). */
static cudaError_t grow_dev(float **p, size_t *cap, size_t need)
{
    if (need <= *cap) return cudaSuccess;
    cudaFree(*p);
    *p = NULL;
    *cap = 0;
    const cudaError_t e = cudaMalloc((void **)p, need * sizeof(float));
    if (e != cudaSuccess) {
        *p = NULL;
        return e;
    }
    *cap = need;
    return cudaSuccess;
}

/* Grows both pinned host buffers of a pair to need floats. */
static cudaError_t grow_host(float **p, size_t *cap, size_t need)
{
    if (need <= *cap) return cudaSuccess;
    *cap = 0;
    for (int i = 0; i < 2; i++) {
        cudaFreeHost(p[i]);
        p[i] = NULL;
    }
    for (int i = 0; i < 2; i++) {
        const cudaError_t e = cudaMallocHost((void **)&p[i], need * sizeof(float));
        if (e != cudaSuccess) {
            p[i] = NULL;
            return e;
        }
    }
    *cap = need;
    return cudaSuccess;
}

extern "C" int cuda_scores_begin(struct cuda_scores_ws *ws, const struct cuda_scores_matrix *x,
                                 const float *Q, int q, int w, size_t max_rows, int want_sq,
                                 char *err, size_t errlen)
{
    ws->x = NULL;
    ws->queued[0] = ws->queued[1] = false;
    if (!x || !x->dev || !x->n || !Q || q < 1 || w < 1 || w > x->ld || max_rows < 1)
        return set_err(err, errlen, "CUDA search: bad pass arguments (matrix %zu x %d, "
                       "%d queries of width %d)", x ? x->n : 0, x ? x->ld : 0, q, w);
    /* Anything left on the stream by an abandoned pass is finished first. */
    cudaError_t e = cudaStreamSynchronize(ws->stream);
    if (e != cudaSuccess) return cuda_fail("a previous search", e, err, errlen);
    const size_t scores = (size_t)q * max_rows;
    e = grow_dev(&ws->q_dev, &ws->q_cap, (size_t)q * (size_t)w);
    if (e == cudaSuccess) e = grow_dev(&ws->s_dev, &ws->s_cap, scores);
    if (e == cudaSuccess) e = grow_host(ws->s_host, &ws->s_host_cap, scores);
    if (want_sq && e == cudaSuccess) e = grow_dev(&ws->sq_dev, &ws->sq_cap, max_rows);
    if (want_sq && e == cudaSuccess) e = grow_host(ws->sq_host, &ws->sq_host_cap, max_rows);
    if (e != cudaSuccess) return cuda_fail("allocating score buffers", e, err, errlen);
    e = cudaMemcpyAsync(ws->q_dev, Q, (size_t)q * (size_t)w * sizeof(float),
                        cudaMemcpyHostToDevice, ws->stream);
    if (e != cudaSuccess) return cuda_fail("uploading the queries", e, err, errlen);
    ws->x = x;
    ws->q = q;
    ws->w = w;
    ws->want_sq = want_sq;
    ws->max_rows = max_rows;
    return 0;
}

extern "C" int cuda_scores_launch(struct cuda_scores_ws *ws, int slot, size_t r0, size_t b,
                                  char *err, size_t errlen)
{
    const struct cuda_scores_matrix *x = ws->x;
    if (!x || slot < 0 || slot > 1 || ws->queued[slot] || b < 1 || b > ws->max_rows ||
        r0 > x->n || b > x->n - r0)
        return set_err(err, errlen, "CUDA search: bad block (rows %zu + %zu of %zu, slot %d)",
                       r0, b, x ? x->n : 0, slot);
    const float one = 1.0f, zero = 0.0f;
    const cublasStatus_t s = cublasSgemm(ws->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)b, ws->q,
                                         ws->w, &one, x->dev + r0 * (size_t)x->ld, x->ld,
                                         ws->q_dev, ws->w, &zero, ws->s_dev, (int)b);
    if (s != CUBLAS_STATUS_SUCCESS) return blas_fail("cublasSgemm", s, err, errlen);
    cudaError_t e = cudaMemcpyAsync(ws->s_host[slot], ws->s_dev,
                                    (size_t)ws->q * b * sizeof(float), cudaMemcpyDeviceToHost,
                                    ws->stream);
    if (e == cudaSuccess && ws->want_sq) {
        const unsigned threads = 256, rows_per_block = threads / 32;
        const unsigned blocks = (unsigned)((b + rows_per_block - 1) / rows_per_block);
        scores_row_sq<<<blocks, threads, 0, ws->stream>>>(x->dev + r0 * (size_t)x->ld,
                                                          (size_t)x->ld, ws->w, (int)b,
                                                          ws->sq_dev);
        e = cudaGetLastError();
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(ws->sq_host[slot], ws->sq_dev, b * sizeof(float),
                                cudaMemcpyDeviceToHost, ws->stream);
    }
    if (e == cudaSuccess) e = cudaEventRecord(ws->done[slot], ws->stream);
    if (e != cudaSuccess) return cuda_fail("queueing a score block", e, err, errlen);
    ws->queued[slot] = true;
    return 0;
}

extern "C" int cuda_scores_wait(struct cuda_scores_ws *ws, int slot, const float **S,
                                const float **sq, char *err, size_t errlen)
{
    if (slot < 0 || slot > 1 || !ws->queued[slot])
        return set_err(err, errlen, "CUDA search: slot %d holds no block", slot);
    ws->queued[slot] = false;
    const cudaError_t e = cudaEventSynchronize(ws->done[slot]);
    if (e != cudaSuccess) return cuda_fail("computing scores", e, err, errlen);
    *S = ws->s_host[slot];
    *sq = ws->want_sq ? ws->sq_host[slot] : NULL;
    return 0;
}

extern "C" void cuda_scores_end(struct cuda_scores_ws *ws)
{
    if (!ws) return;
    if (cudaStreamSynchronize(ws->stream) != cudaSuccess) clear_last_error();
    ws->x = NULL;
    ws->queued[0] = ws->queued[1] = false;
}
