/* The CUDA forward (docs/model.md §5), same contract as the CPU engine in vit.c.
 *
 * Per block, with T the activation type (bf16 or float):
 *   xn  = LN1(x)                        [fused into the previous residual add]
 *   qkv = xn . Wqkv^T + b               cuBLASLt, bias epilogue
 *   attn = softmax(Q K^T / sqrt(hd)) V  fused kernel, or GEMM + softmax + GEMM
 *   br  = attn . Wproj^T + b            cuBLASLt, bias epilogue
 *   x  += ls1 * br; xn = LN2(x)         one kernel
 *   FFN: SwiGLU (w12 GEMM + bias, swiglu kernel, w3 GEMM + bias) or GELU MLP
 *   x  += ls2 * br; xn = LN1'(x)        one kernel (the final LayerNorm, in float, after the last block)
 * The residual stream x stays float in both modes. */
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_engine.h"
#include "kernels.cuh"

extern "C" {
#include "errors.h"
#include "plan.h"
}

typedef __nv_bfloat16 bf16;

#define CU(call)                                                                                  \
    do {                                                                                          \
        const cudaError_t e_ = (call);                                                            \
        if (e_ != cudaSuccess)                                                                    \
            return set_err(err, errlen, "CUDA error in %s (%s:%d): %s", #call, __FILE__,          \
                           __LINE__, cudaGetErrorString(e_));                                     \
    } while (0)

#define LT(call)                                                                                  \
    do {                                                                                          \
        const cublasStatus_t s_ = (call);                                                         \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                          \
            return set_err(err, errlen, "cuBLASLt error in %s (%s:%d): %s", #call, __FILE__,      \
                           __LINE__, cublasLtGetStatusString(s_));                                \
    } while (0)

/* Propagates a failure of a helper that already wrote err. */
#define TRY(call)                                                                                 \
    do {                                                                                          \
        if ((call) != 0) return -1;                                                               \
    } while (0)

/* ------------------------------------------------------------- device -- */

/* Clears a non-sticky error (a failed cudaMalloc, an invalid launch) from the
 * runtime's per-thread "last error", which cudaGetLastError after the next good
 * launch would otherwise report again. A sticky error (a faulted context)
 * comes back from every later call anyway. */
static void clear_last_error(void)
{
    (void)cudaGetLastError();
}


extern "C" int cuda_device_available(char *err, size_t errlen)
{
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        set_err(err, errlen, "no usable CUDA device (%s)", cudaGetErrorString(e));
        cudaGetLastError(); /* clear the error so later calls do not see it */
        return 0;
    }
    if (n <= 0) {
        set_err(err, errlen, "no CUDA device found");
        return 0;
    }
    return 1;
}

/* -------------------------------------------------------------- model -- */

struct dev_block {
    const void *qkv_w, *qkv_b, *proj_w, *proj_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b; /* T */
    const float *norm1_w, *norm1_b, *norm2_w, *norm2_b, *ls1, *ls2;             /* float */
};

struct pos_entry {
    int gh, gw;
    float *table; /* device [1 + gh*gw, D] */
    struct pos_entry *next;
};

struct cuda_model {
    struct model_config cfg;
    bool bf16;
    int attention; /* enum cuda_attention; atomic: set by any thread, read once per forward */
    unsigned char *arena; /* device: every weight */
    const void *patch_w, *patch_b;
    const float *cls, *reg, *norm_w, *norm_b;
    struct dev_block *blocks;
    pthread_mutex_t pos_lock;
    struct pos_entry *pos;
};

/* Two passes over the weights: the first (host == NULL) only sizes the arena,
 * the second converts into host staging and hands out device pointers. */
struct uploader {
    unsigned char *host;
    unsigned char *dev;
    size_t off;
    bool bf16;
};

/* rows x cols floats, stored as rows of ld elements (zero beyond cols); GEMM
 * operands in the activation type, everything else float. */
static const void *put_rows(struct uploader *u, const float *src, size_t rows, size_t cols,
                            size_t ld, bool gemm)
{
    if (!src) return NULL;
    const int elem = gemm && u->bf16 ? 2 : 4;
    const size_t off = (u->off + CUDA_PLAN_ALIGN - 1) / CUDA_PLAN_ALIGN * CUDA_PLAN_ALIGN;
    u->off = off + rows * ld * elem;
    if (!u->host) return NULL;
    cuda_plan_stage_rows(u->host + off, src, rows, cols, ld, elem);
    return u->dev + off;
}

static const void *put(struct uploader *u, const float *src, size_t n, bool gemm)
{
    return put_rows(u, src, 1, n, n, gemm);
}

static void place_weights(struct uploader *u, struct cuda_model *cm, const struct vit_weights *w)
{
    const struct model_config *c = &cm->cfg;
    const size_t D = c->embed_dim, Hs = c->ffn_hidden, P = c->patch_size;
    const size_t fc1_rows = c->ffn == FFN_SWIGLU ? 2 * Hs : Hs;
    cm->patch_w = put_rows(u, w->patch_w, D, 3 * P * P, (size_t)cuda_plan_patch_k((int)P), true);
    cm->patch_b = put(u, w->patch_b, D, true);
    cm->cls = (const float *)put(u, w->cls_token, D, false);
    cm->reg = c->register_tokens ? (const float *)put(u, w->register_tokens,
                                                      (size_t)c->register_tokens * D, false)
                                 : NULL;
    cm->norm_w = (const float *)put(u, w->norm_w, D, false);
    cm->norm_b = (const float *)put(u, w->norm_b, D, false);
    for (int l = 0; l < c->depth; l++) {
        const struct vit_block_weights *s = &w->blocks[l];
        struct dev_block *d = &cm->blocks[l];
        d->qkv_w = put(u, s->qkv_w, 3 * D * D, true);
        d->qkv_b = put(u, s->qkv_b, 3 * D, true);
        d->proj_w = put(u, s->proj_w, D * D, true);
        d->proj_b = put(u, s->proj_b, D, true);
        d->fc1_w = put(u, s->fc1_w, fc1_rows * D, true);
        d->fc1_b = put(u, s->fc1_b, fc1_rows, true);
        d->fc2_w = put(u, s->fc2_w, D * Hs, true);
        d->fc2_b = put(u, s->fc2_b, D, true);
        d->norm1_w = (const float *)put(u, s->norm1_w, D, false);
        d->norm1_b = (const float *)put(u, s->norm1_b, D, false);
        d->norm2_w = (const float *)put(u, s->norm2_w, D, false);
        d->norm2_b = (const float *)put(u, s->norm2_b, D, false);
        d->ls1 = c->layerscale ? (const float *)put(u, s->ls1, D, false) : NULL;
        d->ls2 = c->layerscale ? (const float *)put(u, s->ls2, D, false) : NULL;
    }
}

/* Host -> device copy that waits for itself only, on a stream of its own: a
 * pageable copy may return before its DMA lands, and cudaDeviceSynchronize
 * would also wait for every other thread's forwards (the workspaces' streams
 * are non-blocking, so the copy does not wait for them either). */
static cudaError_t upload_sync(void *dst, const void *src, size_t bytes)
{
    cudaStream_t s;
    cudaError_t e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    if (e != cudaSuccess) return e;
    e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s);
    const cudaError_t es = cudaStreamSynchronize(s);
    cudaStreamDestroy(s);
    return e != cudaSuccess ? e : es;
}

extern "C" void cuda_model_free(struct cuda_model *cm)
{
    if (!cm) return;
    for (struct pos_entry *e = cm->pos, *n; e; e = n) {
        n = e->next;
        cudaFree(e->table);
        free(e);
    }
    cudaFree(cm->arena);
    pthread_mutex_destroy(&cm->pos_lock);
    free(cm->blocks);
    free(cm);
}

extern "C" int cuda_model_create(const struct model_config *cfg, const struct vit_weights *w,
                                 bool bf16, struct cuda_model **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!cuda_device_available(err, errlen)) return -1;
    struct cuda_model *cm = (struct cuda_model *)calloc(1, sizeof(*cm));
    if (!cm) return set_err(err, errlen, "out of memory");
    cm->cfg = *cfg;
    cm->bf16 = bf16;
    cm->attention = (int)CUDA_ATTN_AUTO;
    pthread_mutex_init(&cm->pos_lock, NULL);
    cm->blocks = (struct dev_block *)calloc(cfg->depth > 0 ? cfg->depth : 1, sizeof(struct dev_block));
    if (!cm->blocks) {
        cuda_model_free(cm);
        return set_err(err, errlen, "out of memory");
    }
    struct uploader u = {NULL, NULL, 0, bf16};
    place_weights(&u, cm, w);
    const size_t bytes = u.off;
    unsigned char *host = (unsigned char *)malloc(bytes);
    if (!host) {
        cuda_model_free(cm);
        return set_err(err, errlen, "out of memory staging %.1f MiB of weights", bytes / 1048576.0);
    }
    cudaError_t e = cudaMalloc((void **)&cm->arena, bytes);
    if (e == cudaSuccess) {
        u = (struct uploader){host, cm->arena, 0, bf16};
        place_weights(&u, cm, w);
        e = upload_sync(cm->arena, host, bytes);
    }
    free(host);
    if (e != cudaSuccess) {
        clear_last_error();
        cuda_model_free(cm);
        return set_err(err, errlen, "CUDA: uploading %.1f MiB of weights failed: %s",
                       bytes / 1048576.0, cudaGetErrorString(e));
    }
    *out = cm;
    return 0;
}

extern "C" int cuda_model_set_attention(struct cuda_model *cm, enum cuda_attention a, char *err,
                                        size_t errlen)
{
    const int hd = cm->cfg.embed_dim / cm->cfg.num_heads;
    if (a == CUDA_ATTN_FUSED && !cuda_plan_fused_supported(hd, cm->bf16 ? 2 : 4))
        return set_err(err, errlen, "fused attention needs bf16 and head dim 32, 64 or 128 "
                       "(this model: %s, head dim %d)", cm->bf16 ? "bf16" : "fp32", hd);
    __atomic_store_n(&cm->attention, (int)a, __ATOMIC_RELAXED);
    return 0;
}

/* The device copy of the host table for grid (gh, gw), uploaded on first use. */
static const float *device_pos(struct cuda_model *cm, const float *host, int gh, int gw,
                               char *err, size_t errlen)
{
    pthread_mutex_lock(&cm->pos_lock);
    struct pos_entry *e = cm->pos;
    while (e && (e->gh != gh || e->gw != gw)) e = e->next;
    if (!e) {
        const size_t bytes = sizeof(float) * (1 + (size_t)gh * gw) * cm->cfg.embed_dim;
        float *t = NULL;
        cudaError_t ce = cudaMalloc((void **)&t, bytes);
        if (ce == cudaSuccess) ce = upload_sync(t, host, bytes);
        e = ce == cudaSuccess ? (struct pos_entry *)calloc(1, sizeof(*e)) : NULL;
        if (!e) {
            cudaFree(t);
            clear_last_error();
            pthread_mutex_unlock(&cm->pos_lock);
            set_err(err, errlen, "CUDA: positional table for a %dx%d grid: %s", gh, gw,
                    ce == cudaSuccess ? "out of memory" : cudaGetErrorString(ce));
            return NULL;
        }
        e->gh = gh;
        e->gw = gw;
        e->table = t;
        e->next = cm->pos;
        cm->pos = e;
    }
    pthread_mutex_unlock(&cm->pos_lock);
    return e->table;
}

/* ---------------------------------------------------------- workspace -- */

struct gemm_key {
    int opa, opb, m, n, k, lda, ldb, ldc, atype, btype, ctype, epi, batch;
    long long sa, sb, sc;
    uint32_t al_a, al_b, al_c;
};

struct gemm_entry {
    struct gemm_key key;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
};

#define GEMM_CACHE 128

/* Events per staging slot; see "Overlap of copies and compute" above compute_chunk. */
enum { EV_UPLOADED, EV_CONSUMED, EV_COMPUTED, EV_DOWNLOADED, EV_KINDS };

struct cuda_ws {
    cudaStream_t stream;      /* compute: kernels and GEMMs */
    cudaStream_t up;          /* host -> device copies of the input */
    cudaStream_t down;        /* device -> host copies of the outputs */
    cudaEvent_t ev[EV_KINDS][CUDA_PLAN_SLOTS];
    cublasLtHandle_t lt;
    struct gemm_entry gemms[GEMM_CACHE];
    int n_gemms;
    struct cuda_shape shape;  /* what the arena was planned for (B == 0: none) */
    struct cuda_plan plan;
    unsigned char *arena;     /* device */
    unsigned char *h_in;      /* pinned, plan.slots * plan.input_bytes */
    float *h_cls;             /* pinned [h_cls_images, D] */
    int h_cls_images;
};

/* Waits for everything queued on the workspace's streams, ignoring errors:
 * before buffers are freed or replaced, and after a failed forward so that no
 * copy into ws-owned memory is still in flight when the call returns. */
static void ws_drain(struct cuda_ws *ws)
{
    if (ws->down) cudaStreamSynchronize(ws->down);
    if (ws->stream) cudaStreamSynchronize(ws->stream);
    if (ws->up) cudaStreamSynchronize(ws->up);
    clear_last_error();
}

static void gemm_cache_clear(struct cuda_ws *ws)
{
    for (int i = 0; i < ws->n_gemms; i++) {
        cublasLtMatrixLayoutDestroy(ws->gemms[i].la);
        cublasLtMatrixLayoutDestroy(ws->gemms[i].lb);
        cublasLtMatrixLayoutDestroy(ws->gemms[i].lc);
        cublasLtMatmulDescDestroy(ws->gemms[i].op);
    }
    ws->n_gemms = 0;
}

static void ws_release_buffers(struct cuda_ws *ws)
{
    cudaFree(ws->arena);
    cudaFreeHost(ws->h_in);
    ws->arena = NULL;
    ws->h_in = NULL;
    memset(&ws->shape, 0, sizeof ws->shape);
    memset(&ws->plan, 0, sizeof ws->plan);
}

extern "C" void cuda_ws_free(struct cuda_ws *ws)
{
    if (!ws) return;
    ws_drain(ws);
    gemm_cache_clear(ws);
    ws_release_buffers(ws);
    cudaFreeHost(ws->h_cls);
    for (int k = 0; k < EV_KINDS; k++)
        for (int i = 0; i < CUDA_PLAN_SLOTS; i++)
            if (ws->ev[k][i]) cudaEventDestroy(ws->ev[k][i]);
    if (ws->lt) cublasLtDestroy(ws->lt);
    if (ws->down) cudaStreamDestroy(ws->down);
    if (ws->up) cudaStreamDestroy(ws->up);
    if (ws->stream) cudaStreamDestroy(ws->stream);
    clear_last_error();
    free(ws);
}

static bool shape_fits(const struct cuda_shape *have, const struct cuda_shape *want)
{
    return have->B >= want->B && have->T >= want->T && have->N >= want->N &&
           have->D == want->D && have->Hs == want->Hs && have->heads == want->heads &&
           have->P == want->P && have->swiglu == want->swiglu &&
           have->act_bytes == want->act_bytes && (have->unfused || !want->unfused) &&
           have->slots >= want->slots;
}

/* Streams, events and the cuBLASLt handle of a new workspace. */
static int ws_create(struct cuda_ws **wsp, char *err, size_t errlen)
{
    struct cuda_ws *ws = (struct cuda_ws *)calloc(1, sizeof(*ws));
    if (!ws) return set_err(err, errlen, "out of memory");
    cudaError_t e = cudaStreamCreateWithFlags(&ws->stream, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&ws->up, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&ws->down, cudaStreamNonBlocking);
    for (int k = 0; k < EV_KINDS && e == cudaSuccess; k++)
        for (int i = 0; i < CUDA_PLAN_SLOTS && e == cudaSuccess; i++)
            e = cudaEventCreateWithFlags(&ws->ev[k][i], cudaEventDisableTiming);
    if (e != cudaSuccess) {
        cuda_ws_free(ws);
        return set_err(err, errlen, "CUDA: cannot create streams and events: %s",
                       cudaGetErrorString(e));
    }
    const cublasStatus_t s = cublasLtCreate(&ws->lt);
    if (s != CUBLAS_STATUS_SUCCESS) {
        ws->lt = NULL;
        cuda_ws_free(ws);
        return set_err(err, errlen, "cuBLASLt: cannot create a handle: %s",
                       cublasLtGetStatusString(s));
    }
    *wsp = ws;
    return 0;
}

/* The arena and pinned input staging for want (one chunk), and pinned CLS
 * staging for `images` images (the whole batch). */
static int ws_ensure(struct cuda_ws **wsp, const struct cuda_shape *want, int images, char *err,
                     size_t errlen)
{
    if (!*wsp) TRY(ws_create(wsp, err, errlen));
    struct cuda_ws *ws = *wsp;
    if (!ws->h_cls || ws->h_cls_images < images) {
        ws_drain(ws);
        cudaFreeHost(ws->h_cls);
        ws->h_cls = NULL;
        ws->h_cls_images = 0;
        const cudaError_t e = cudaMallocHost((void **)&ws->h_cls,
                                             sizeof(float) * (size_t)images * want->D);
        if (e != cudaSuccess) {
            ws->h_cls = NULL;
            clear_last_error();
            return set_err(err, errlen, "CUDA: pinned CLS staging for %d images: %s", images,
                           cudaGetErrorString(e));
        }
        ws->h_cls_images = images;
    }
    if (ws->arena && shape_fits(&ws->shape, want)) return 0;
    ws_drain(ws);
    ws_release_buffers(ws);
    struct cuda_plan p;
    if (cuda_plan_activations(want, &p))
        return set_err(err, errlen, "batch %d at %d tokens: activation sizes overflow", want->B,
                       want->T);
    cudaError_t e = cudaMalloc((void **)&ws->arena, p.total);
    if (e != cudaSuccess) {
        ws->arena = NULL;
        clear_last_error();
        return set_err(err, errlen, "CUDA: %.1f MiB of activations for %d images at %d tokens: %s",
                       p.total / 1048576.0, want->B, want->T, cudaGetErrorString(e));
    }
    e = cudaMallocHost((void **)&ws->h_in, p.input_bytes * (size_t)p.slots);
    if (e != cudaSuccess) {
        ws->h_in = NULL;
        ws_release_buffers(ws);
        clear_last_error();
        return set_err(err, errlen, "CUDA: pinned input staging for %d images: %s", want->B,
                       cudaGetErrorString(e));
    }
    ws->plan = p;
    ws->shape = *want;
    return 0;
}

/* ------------------------------------------------------------- GEMMs -- */

/* Column-major cuBLASLt call: C[m,n] = alpha * op(A) op(B) (+ bias[m] per column),
 * batched with element strides sa/sb/sc when batch > 1. fp32 accumulation. */
static int gemm(struct cuda_ws *ws, cublasOperation_t opa, cublasOperation_t opb, int m, int n,
                int k, float alpha, const void *A, cudaDataType_t at, int lda, long long sa,
                const void *Bm, cudaDataType_t bt, int ldb, long long sb, void *C,
                cudaDataType_t ct, int ldc, long long sc, int batch, const void *bias,
                char *err, size_t errlen)
{
    const size_t ea = at == CUDA_R_32F ? 4 : 2, eb = bt == CUDA_R_32F ? 4 : 2,
                 ec = ct == CUDA_R_32F ? 4 : 2;
    /* Leading dimension and batch stride in bytes: the alignment promised below
     * holds for every row and every matrix of the batch, not only the first. */
    const size_t stra[2] = {(size_t)lda * ea, (size_t)sa * ea};
    const size_t strb[2] = {(size_t)ldb * eb, (size_t)sb * eb};
    const size_t strc[2] = {(size_t)ldc * ec, (size_t)sc * ec};
    struct gemm_key key;
    memset(&key, 0, sizeof key);
    key.opa = opa;
    key.opb = opb;
    key.m = m;
    key.n = n;
    key.k = k;
    key.lda = lda;
    key.ldb = ldb;
    key.ldc = ldc;
    key.atype = at;
    key.btype = bt;
    key.ctype = ct;
    key.epi = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    key.batch = batch;
    key.sa = batch > 1 ? sa : 0;
    key.sb = batch > 1 ? sb : 0;
    key.sc = batch > 1 ? sc : 0;
    key.al_a = cuda_plan_alignment(A, stra, batch > 1 ? 2 : 1);
    key.al_b = cuda_plan_alignment(Bm, strb, batch > 1 ? 2 : 1);
    key.al_c = cuda_plan_alignment(C, strc, batch > 1 ? 2 : 1);

    struct gemm_entry *g = NULL;
    for (int i = 0; i < ws->n_gemms && !g; i++)
        if (!memcmp(&ws->gemms[i].key, &key, sizeof key)) g = &ws->gemms[i];
    if (!g) {
        if (ws->n_gemms == GEMM_CACHE) gemm_cache_clear(ws);
        g = &ws->gemms[ws->n_gemms];
        memset(g, 0, sizeof(*g));
        g->key = key;
        LT(cublasLtMatmulDescCreate(&g->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        /* From here on, failures must destroy what was created: build into
         * locals and only count the entry once complete. */
        cublasStatus_t s = CUBLAS_STATUS_SUCCESS;
        const int32_t ta = opa, tb = opb;
        const uint32_t epi = (uint32_t)key.epi;
        if (!s) s = cublasLtMatmulDescSetAttribute(g->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
        if (!s) s = cublasLtMatmulDescSetAttribute(g->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
        if (!s) s = cublasLtMatmulDescSetAttribute(g->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
        if (!s && bias)
            s = cublasLtMatmulDescSetAttribute(g->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                               sizeof bias);
        const bool na = opa == CUBLAS_OP_N, nb = opb == CUBLAS_OP_N;
        if (!s) s = cublasLtMatrixLayoutCreate(&g->la, at, na ? m : k, na ? k : m, lda);
        if (!s) s = cublasLtMatrixLayoutCreate(&g->lb, bt, nb ? k : n, nb ? n : k, ldb);
        if (!s) s = cublasLtMatrixLayoutCreate(&g->lc, ct, m, n, ldc);
        if (!s && batch > 1) {
            const int32_t bc = batch;
            const int64_t offs[3] = {sa, sb, sc};
            cublasLtMatrixLayout_t ls[3] = {g->la, g->lb, g->lc};
            for (int i = 0; i < 3 && !s; i++) {
                s = cublasLtMatrixLayoutSetAttribute(ls[i], CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc);
                if (!s)
                    s = cublasLtMatrixLayoutSetAttribute(ls[i], CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                         &offs[i], sizeof offs[i]);
            }
        }
        cublasLtMatmulPreference_t pref = NULL;
        if (!s) s = cublasLtMatmulPreferenceCreate(&pref);
        const uint64_t wsb = CUDA_PLAN_GEMM_WORKSPACE;
        if (!s) s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb);
        if (!s) s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &key.al_a, sizeof key.al_a);
        if (!s) s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &key.al_b, sizeof key.al_b);
        if (!s) s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &key.al_c, sizeof key.al_c);
        if (!s) s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &key.al_c, sizeof key.al_c);
        cublasLtMatmulHeuristicResult_t res;
        int found = 0;
        memset(&res, 0, sizeof res);
        if (!s) s = cublasLtMatmulAlgoGetHeuristic(ws->lt, g->op, g->la, g->lb, g->lc, g->lc, pref, 1, &res, &found);
        if (pref) cublasLtMatmulPreferenceDestroy(pref);
        if (s || found < 1) {
            if (g->la) cublasLtMatrixLayoutDestroy(g->la);
            if (g->lb) cublasLtMatrixLayoutDestroy(g->lb);
            if (g->lc) cublasLtMatrixLayoutDestroy(g->lc);
            cublasLtMatmulDescDestroy(g->op);
            return set_err(err, errlen, "cuBLASLt: no algorithm for a %dx%dx%d GEMM (batch %d, "
                           "types %d/%d/%d): %s", m, n, k, batch, (int)at, (int)bt, (int)ct,
                           s ? cublasLtGetStatusString(s) : "heuristic returned none");
        }
        g->algo = res.algo;
        ws->n_gemms++;
    }
    if (bias)
        LT(cublasLtMatmulDescSetAttribute(g->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                          sizeof bias));
    const float beta = 0.0f;
    LT(cublasLtMatmul(ws->lt, g->op, &alpha, A, g->la, Bm, g->lb, &beta, C, g->lc, C, g->lc,
                      &g->algo, ws->arena + ws->plan.gemm_ws, CUDA_PLAN_GEMM_WORKSPACE,
                      ws->stream));
    return 0;
}

template <typename T> struct dtype;
template <> struct dtype<float> { static const cudaDataType_t v = CUDA_R_32F; };
template <> struct dtype<bf16> { static const cudaDataType_t v = CUDA_R_16BF; };

/* out[rows, N] = in[rows, K] . W[N, K]^T + bias[N] (row-major), i.e. in column
 * major: out^T (N x rows) = W^T' . in^T with W stored K x N (ld K), transposed. */
template <typename T>
static int linear(struct cuda_ws *ws, T *out, const T *in, const void *Wt, const void *bias,
                  size_t rows, int K, int N, char *err, size_t errlen)
{
    if (rows > 0x7fffffffu) return set_err(err, errlen, "GEMM with %zu rows is too large", rows);
    return gemm(ws, CUBLAS_OP_T, CUBLAS_OP_N, N, (int)rows, K, 1.0f, Wt, dtype<T>::v, K, 0, in,
                dtype<T>::v, K, 0, out, dtype<T>::v, N, 0, 1, bias, err, errlen);
}

/* ------------------------------------------------------------ forward -- */

#define KL(call)                                                                                  \
    do {                                                                                          \
        const cudaError_t e_ = (call);                                                            \
        if (e_ != cudaSuccess)                                                                    \
            return set_err(err, errlen, "CUDA kernel launch %s (%s:%d): %s", #call, __FILE__,     \
                           __LINE__, cudaGetErrorString(e_));                                     \
    } while (0)

/* Scores and probabilities are [pairs][Tk][ld] with ld = Tk rounded up to 8,
 * so that rows and batch strides keep 16-byte alignment for cuBLASLt. */
template <typename T>
static int attention_unfused(struct cuda_ws *ws, T *attn, const T *qkv, int B, int Tk, int D,
                             int heads, char *err, size_t errlen)
{
    const struct cuda_plan *p = &ws->plan;
    const int hd = D / heads, pairs = B * heads, ld = cuda_plan_scores_ld(Tk);
    const size_t plane = (size_t)B * Tk * D;
    T *qh = (T *)(ws->arena + p->heads), *kh = qh + plane, *vh = kh + plane;
    T *oh = (T *)(ws->arena + p->oh);
    float *scores = (float *)(ws->arena + p->scores);
    T *probs = (T *)(ws->arena + p->probs);
    const long long shd = (long long)Tk * hd, stt = (long long)Tk * ld;
    const float scale = 1.0f / sqrtf((float)hd);
    if (p->attn_chunk < 1) return set_err(err, errlen, "CUDA: unfused attention was not planned");
    KL(launch_split_heads<T>(qh, qkv, B, Tk, D, heads, ws->stream));
    for (int c0 = 0; c0 < pairs; c0 += p->attn_chunk) {
        const int n = pairs - c0 < p->attn_chunk ? pairs - c0 : p->attn_chunk;
        /* scores (row q, col k) = scale * Q_q . K_k: column-major C = K^T' Q, m = n = Tk. */
        TRY(gemm(ws, CUBLAS_OP_T, CUBLAS_OP_N, Tk, Tk, hd, scale, kh + c0 * shd, dtype<T>::v, hd,
                 shd, qh + c0 * shd, dtype<T>::v, hd, shd, scores, CUDA_R_32F, ld, stt, n, NULL,
                 err, errlen));
        KL(launch_softmax<T>(probs, scores, (size_t)n * Tk, Tk, ld, ws->stream));
        /* O (row q) = sum_k P[q][k] V_k: column-major O^T (hd x Tk) = V^T P^T. */
        TRY(gemm(ws, CUBLAS_OP_N, CUBLAS_OP_N, hd, Tk, Tk, 1.0f, vh + c0 * shd, dtype<T>::v, hd,
                 shd, probs, dtype<T>::v, ld, stt, oh + c0 * shd, dtype<T>::v, hd, shd, n, NULL,
                 err, errlen));
    }
    KL(launch_merge_heads<T>(attn, oh, B, Tk, D, heads, ws->stream));
    return 0;
}

static int attention(struct cuda_model *cm, struct cuda_ws *ws, float *attn, const float *qkv,
                     int B, int Tk, bool, char *err, size_t errlen)
{
    /* fp32 mode: always the unfused path (the fused kernel is bf16 only). */
    return attention_unfused<float>(ws, attn, qkv, B, Tk, cm->cfg.embed_dim, cm->cfg.num_heads,
                                    err, errlen);
}

/* The attention path of one forward, decided once from the model's setting
 * (which another thread may change meanwhile) and passed down, so that the
 * plan (unfused buffers or not) and every layer's launch agree. */
static bool use_fused(const struct cuda_model *cm)
{
    const int hd = cm->cfg.embed_dim / cm->cfg.num_heads;
    const int a = __atomic_load_n(&cm->attention, __ATOMIC_RELAXED);
    return a != (int)CUDA_ATTN_UNFUSED && cuda_plan_fused_supported(hd, cm->bf16 ? 2 : 4);
}

static int attention(struct cuda_model *cm, struct cuda_ws *ws, bf16 *attn, const bf16 *qkv,
                     int B, int Tk, bool fused, char *err, size_t errlen)
{
    const int D = cm->cfg.embed_dim, heads = cm->cfg.num_heads;
    if (fused) {
        KL(launch_flash_attention(attn, qkv, B, Tk, D, heads, ws->stream));
        return 0;
    }
    return attention_unfused<bf16>(ws, attn, qkv, B, Tk, D, heads, err, errlen);
}

/* Overlap of copies and compute (issue 5: "streams so that host-to-device
 * copies overlap compute").
 *
 * cuda_forward is synchronous for its caller (vit_forward's contract: the
 * outputs are in the caller's buffers when it returns), so the overlap lives
 * inside one call: the batch is split into n balanced chunks
 * (cuda_plan_chunk_count / cuda_plan_chunk_range: a chunk keeps about
 * CUDA_PLAN_CHUNK_ROWS token rows or more so that its GEMMs stay efficient; at
 * most CUDA_PLAN_MAX_CHUNKS chunks; small batches stay one chunk) and
 * software-pipelined over three streams of the
 * workspace, with double-buffered (CUDA_PLAN_SLOTS = 2) pinned input staging,
 * device input buffers and device output buffers; chunk j uses slot j % 2:
 *
 *   host     memcpy x[j] -> pinned h_in[s]       (after EV_UPLOADED[s] of chunk j-2)
 *   up       H2D h_in[s] -> in[s]                (after EV_CONSUMED[s]: im2col of j-2 read in[s])
 *            record EV_UPLOADED[s]
 *   compute  wait EV_UPLOADED[s]; im2col; record EV_CONSUMED[s]; patch embed, blocks;
 *            wait EV_DOWNLOADED[s] (chunk j-2 left out[s]); final LayerNorm -> out[s];
 *            record EV_COMPUTED[s]
 *   down     wait EV_COMPUTED[s]; D2H out[s] -> pinned CLS staging / caller's patch buffer;
 *            record EV_DOWNLOADED[s]
 *
 * The host issues, for j = 0..n-1: compute(j), then stage + upload(j+1), then
 * download(j-1). So the host copy and the H2D copy of chunk j+1 run while chunk
 * j computes, and chunk j-1's download runs while chunk j computes. Patch
 * tokens go straight into the caller's (pageable) buffer; such a copy returns
 * only once done, which is why download(j-1) is issued after compute(j): the
 * host waits then while the device is busy with chunk j, and compute(j+1) is
 * queued before chunk j ends. Every wait names the latest record of its event
 * at the time it is issued, which the issue order above makes the intended
 * chunk's. The activations themselves are sized for one chunk and reused in
 * order on the compute stream. A single chunk (n = 1) degenerates to upload,
 * compute, download. After a failure cuda_forward drains all three streams, so
 * nothing is in flight when it returns. */

/* Compute stream, chunk of B images whose input is (being) uploaded to slot. */
template <typename T>
static int compute_chunk(struct cuda_model *cm, struct cuda_ws *ws, const float *pos, int slot,
                         int B, int H, int W, bool fused, char *err, size_t errlen)
{
    const struct model_config *c = &cm->cfg;
    const int P = c->patch_size, D = c->embed_dim, R = c->register_tokens, Hs = c->ffn_hidden;
    const int gh = H / P, gw = W / P, N = gh * gw, Tk = 1 + R + N;
    const size_t rows = (size_t)B * Tk;
    const float eps = c->norm_eps;
    const struct cuda_plan *p = &ws->plan;
    cudaStream_t st = ws->stream;
    unsigned char *A = ws->arena;
    const float *d_in = (const float *)(A + p->input[slot]);
    T *patches = (T *)(A + p->patches);
    float *xr = (float *)(A + p->x);
    T *xn = (T *)(A + p->xn), *qkv = (T *)(A + p->qkv), *attn = (T *)(A + p->attn);
    T *branch = (T *)(A + p->branch), *hidden = (T *)(A + p->hidden);
    T *gated = (T *)(A + p->gated);
    float *outf = (float *)(A + p->out[slot]);

    CU(cudaStreamWaitEvent(st, ws->ev[EV_UPLOADED][slot], 0));
    KL(launch_im2col<T>(patches, d_in, B, H, W, P, st));
    CU(cudaEventRecord(ws->ev[EV_CONSUMED][slot], st));
    TRY(linear<T>(ws, branch, patches, cm->patch_w, cm->patch_b, (size_t)B * N,
                  cuda_plan_patch_k(P), D, err, errlen));
    KL(launch_embed<T>(xr, branch, cm->cls, cm->reg, pos, B, Tk, N, R, D, st));
    const struct dev_block *bw = cm->blocks;
    if (c->depth == 0) {
        CU(cudaStreamWaitEvent(st, ws->ev[EV_DOWNLOADED][slot], 0));
        KL((launch_residual_ln<T, float>(xr, (const T *)NULL, NULL, cm->norm_w, cm->norm_b, outf,
                                         rows, D, eps, st)));
    } else {
        KL((launch_residual_ln<T, T>(xr, (const T *)NULL, NULL, bw[0].norm1_w, bw[0].norm1_b, xn,
                                     rows, D, eps, st)));
    }
    for (int l = 0; l < c->depth; l++) {
        const struct dev_block *b = &bw[l];
        TRY(linear<T>(ws, qkv, xn, b->qkv_w, b->qkv_b, rows, D, 3 * D, err, errlen));
        TRY(attention(cm, ws, attn, qkv, B, Tk, fused, err, errlen));
        TRY(linear<T>(ws, branch, attn, b->proj_w, b->proj_b, rows, D, D, err, errlen));
        KL((launch_residual_ln<T, T>(xr, branch, b->ls1, b->norm2_w, b->norm2_b, xn, rows, D, eps, st)));
        if (c->ffn == FFN_SWIGLU) {
            TRY(linear<T>(ws, hidden, xn, b->fc1_w, b->fc1_b, rows, D, 2 * Hs, err, errlen));
            KL(launch_swiglu<T>(gated, hidden, rows, Hs, st));
            TRY(linear<T>(ws, branch, gated, b->fc2_w, b->fc2_b, rows, Hs, D, err, errlen));
        } else {
            TRY(linear<T>(ws, hidden, xn, b->fc1_w, b->fc1_b, rows, D, Hs, err, errlen));
            KL(launch_gelu<T>(hidden, rows * Hs, st));
            TRY(linear<T>(ws, branch, hidden, b->fc2_w, b->fc2_b, rows, Hs, D, err, errlen));
        }
        if (l + 1 < c->depth) {
            KL((launch_residual_ln<T, T>(xr, branch, b->ls2, bw[l + 1].norm1_w, bw[l + 1].norm1_b,
                                         xn, rows, D, eps, st)));
        } else {
            CU(cudaStreamWaitEvent(st, ws->ev[EV_DOWNLOADED][slot], 0));
            KL((launch_residual_ln<T, float>(xr, branch, b->ls2, cm->norm_w, cm->norm_b, outf,
                                             rows, D, eps, st)));
        }
    }
    CU(cudaEventRecord(ws->ev[EV_COMPUTED][slot], st));
    return 0;
}

/* Host staging and up stream: bytes of images from x into slot. */
static int upload_chunk(struct cuda_ws *ws, const float *x, int slot, size_t bytes, char *err,
                        size_t errlen)
{
    unsigned char *h = ws->h_in + (size_t)slot * ws->plan.input_bytes;
    CU(cudaEventSynchronize(ws->ev[EV_UPLOADED][slot])); /* the slot's last upload has left */
    memcpy(h, x, bytes);
    CU(cudaStreamWaitEvent(ws->up, ws->ev[EV_CONSUMED][slot], 0));
    CU(cudaMemcpyAsync(ws->arena + ws->plan.input[slot], h, bytes, cudaMemcpyHostToDevice,
                       ws->up));
    CU(cudaEventRecord(ws->ev[EV_UPLOADED][slot], ws->up));
    return 0;
}

/* Down stream: CLS rows (to pinned staging at image j0) and patch tokens (to
 * the caller's buffer at image j0) of a chunk of B images from slot. */
static int download_chunk(struct cuda_ws *ws, int slot, int j0, int B, int Tk, int N, int R,
                          int D, bool cls, float *patch, char *err, size_t errlen)
{
    const float *outf = (const float *)(ws->arena + ws->plan.out[slot]);
    const size_t img_pitch = sizeof(float) * (size_t)Tk * D;
    CU(cudaStreamWaitEvent(ws->down, ws->ev[EV_COMPUTED][slot], 0));
    /* CLS is row 0 of each image, patches follow the registers. */
    if (cls)
        CU(cudaMemcpy2DAsync(ws->h_cls + (size_t)j0 * D, sizeof(float) * D, outf, img_pitch,
                             sizeof(float) * D, B, cudaMemcpyDeviceToHost, ws->down));
    if (patch)
        CU(cudaMemcpy2DAsync(patch + (size_t)j0 * N * D, sizeof(float) * (size_t)N * D,
                             outf + (size_t)(1 + R) * D, img_pitch, sizeof(float) * (size_t)N * D,
                             B, cudaMemcpyDeviceToHost, ws->down));
    CU(cudaEventRecord(ws->ev[EV_DOWNLOADED][slot], ws->down));
    return 0;
}

template <typename T>
static int forward_t(struct cuda_model *cm, struct cuda_ws *ws, const float *pos, const float *x,
                     int B, int nc, int H, int W, bool fused, float *cls, float *patch, char *err,
                     size_t errlen)
{
    const struct model_config *c = &cm->cfg;
    const int P = c->patch_size, D = c->embed_dim, R = c->register_tokens;
    const int N = (H / P) * (W / P), Tk = 1 + R + N;
    const size_t img_bytes = sizeof(float) * 3 * (size_t)H * W;
    if (nc < 1 || (nc > 1 && ws->plan.slots < CUDA_PLAN_SLOTS) ||
        img_bytes * (size_t)cuda_plan_chunk_max(B, nc) > ws->plan.input_bytes)
        return set_err(err, errlen, "CUDA: workspace not planned for %d images in %d chunks", B,
                       nc);
    int f0, n0;
    cuda_plan_chunk_range(B, nc, 0, &f0, &n0);
    TRY(upload_chunk(ws, x, 0, img_bytes * n0, err, errlen));
    for (int j = 0; j < nc; j++) {
        int f, n;
        cuda_plan_chunk_range(B, nc, j, &f, &n);
        TRY(compute_chunk<T>(cm, ws, pos, j % CUDA_PLAN_SLOTS, n, H, W, fused, err, errlen));
        if (j + 1 < nc) {
            cuda_plan_chunk_range(B, nc, j + 1, &f, &n);
            TRY(upload_chunk(ws, x + img_bytes / sizeof(float) * f, (j + 1) % CUDA_PLAN_SLOTS,
                             img_bytes * n, err, errlen));
        }
        if (j > 0) {
            cuda_plan_chunk_range(B, nc, j - 1, &f, &n);
            TRY(download_chunk(ws, (j - 1) % CUDA_PLAN_SLOTS, f, n, Tk, N, R, D, cls != NULL,
                               patch, err, errlen));
        }
    }
    int fl, nl;
    cuda_plan_chunk_range(B, nc, nc - 1, &fl, &nl);
    TRY(download_chunk(ws, (nc - 1) % CUDA_PLAN_SLOTS, fl, nl, Tk, N, R, D, cls != NULL, patch,
                       err, errlen));
    CU(cudaStreamSynchronize(ws->down));
    CU(cudaStreamSynchronize(ws->stream));
    CU(cudaStreamSynchronize(ws->up));
    /* A kernel fault surfaces at a synchronisation; report it as this forward's. */
    CU(cudaGetLastError());
    if (cls) memcpy(cls, ws->h_cls, sizeof(float) * (size_t)B * D);
    return 0;
}

/* Token rows per pipelined chunk: FRANCA_CUDA_CHUNK_ROWS when set to a number
 * (0: one chunk, no pipeline; for benchmarks and experiments), else
 * CUDA_PLAN_CHUNK_ROWS. */
static long long chunk_rows(void)
{
    const char *v = getenv("FRANCA_CUDA_CHUNK_ROWS");
    if (!v || !*v) return CUDA_PLAN_CHUNK_ROWS;
    char *end = NULL;
    const long long r = strtoll(v, &end, 10);
    return *end || r < 0 ? CUDA_PLAN_CHUNK_ROWS : r;
}

extern "C" int cuda_forward(struct cuda_model *cm, struct cuda_ws **wsp, const float *pos,
                            const float *x, int B, int H, int W, float *cls, float *patch,
                            char *err, size_t errlen)
{
    clear_last_error(); /* nothing stale from an earlier failure is reported as ours */
    const struct model_config *c = &cm->cfg;
    const int P = c->patch_size, gh = H / P, gw = W / P, N = gh * gw;
    if (B <= 0 || gh <= 0 || gw <= 0 || H % P || W % P)
        return set_err(err, errlen, "CUDA: invalid input %d x %dx%d", B, H, W);
    struct cuda_shape want;
    memset(&want, 0, sizeof want);
    want.T = 1 + c->register_tokens + N;
    const int nc = cuda_plan_chunk_count(B, want.T, chunk_rows());
    want.B = cuda_plan_chunk_max(B, nc);
    want.N = N;
    want.D = c->embed_dim;
    want.Hs = c->ffn_hidden;
    want.heads = c->num_heads;
    want.P = P;
    want.swiglu = c->ffn == FFN_SWIGLU;
    want.act_bytes = cm->bf16 ? 2 : 4;
    const bool fused = use_fused(cm);
    want.unfused = !fused;
    want.slots = nc > 1 ? CUDA_PLAN_SLOTS : 1;
    const float *dpos = device_pos(cm, pos, gh, gw, err, errlen);
    if (!dpos) return -1;
    TRY(ws_ensure(wsp, &want, B, err, errlen));
    struct cuda_ws *ws = *wsp;
    const int rc =
        cm->bf16 ? forward_t<bf16>(cm, ws, dpos, x, B, nc, H, W, fused, cls, patch, err, errlen)
                 : forward_t<float>(cm, ws, dpos, x, B, nc, H, W, fused, cls, patch, err, errlen);
    if (rc) ws_drain(ws);
    return rc;
}
