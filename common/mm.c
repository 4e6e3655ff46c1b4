/* The CPU matmul layer (mm.h): ISA detection and the oneDNN paths. */
#include "mm.h"

#include <math.h>
#include <oneapi/dnnl/dnnl.h>
#include <omp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int mm_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* ------------------------------------------------------------------ ISA -- */

static dnnl_engine_t engine;
static enum mm_isa isa;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int initialised;
static pthread_key_t ctx_key;

/* Per-thread oneDNN state: a stream and the scratchpad that primitives use
 * (user-managed, so that concurrent calls never share one). */
struct thread_ctx {
    dnnl_stream_t stream;
    void *scratch;
    size_t scratch_bytes;
};

static void thread_ctx_free(void *p)
{
    struct thread_ctx *t = p;
    if (t->stream) dnnl_stream_destroy(t->stream);
    free(t->scratch);
    free(t);
}

static enum mm_isa isa_from_dnnl(dnnl_cpu_isa_t d)
{
    const unsigned v = (unsigned)d;
    if ((v & dnnl_cpu_isa_avx512_core_amx) == dnnl_cpu_isa_avx512_core_amx) return MM_ISA_AMX;
    if ((v & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16)
        return MM_ISA_AVX512_BF16;
    if ((v & dnnl_cpu_isa_avx512_core) == dnnl_cpu_isa_avx512_core) return MM_ISA_AVX512;
    if ((v & dnnl_cpu_isa_avx2) == dnnl_cpu_isa_avx2) return MM_ISA_AVX2;
    return MM_ISA_GENERIC;
}

static void init(void)
{
    if (dnnl_engine_create(&engine, dnnl_cpu, 0) != dnnl_success) {
        fprintf(stderr, "franca: oneDNN could not create its CPU engine\n");
        abort();
    }
    pthread_key_create(&ctx_key, thread_ctx_free);
    isa = isa_from_dnnl(dnnl_get_effective_cpu_isa());
    initialised = 1;
}

static void ensure_init(void)
{
    pthread_once(&init_once, init);
}

enum mm_isa mm_isa(void)
{
    ensure_init();
    return isa;
}

static const char *const isa_names[] = {"generic", "avx2", "avx512", "avx512_bf16", "amx"};
static const dnnl_cpu_isa_t isa_dnnl[] = {dnnl_cpu_isa_all, dnnl_cpu_isa_avx2,
                                          dnnl_cpu_isa_avx512_core,
                                          dnnl_cpu_isa_avx512_core_bf16,
                                          dnnl_cpu_isa_avx512_core_amx};

const char *mm_isa_name(enum mm_isa i)
{
    return (unsigned)i < sizeof(isa_names) / sizeof(isa_names[0]) ? isa_names[i] : "?";
}

int mm_set_max_isa(enum mm_isa cap)
{
    /* Generic would mean no JIT at all in oneDNN, slower than anything a user
     * wants; the lowest cap is the reference's own dispatch, "all". */
    if (initialised || (unsigned)cap >= sizeof(isa_dnnl) / sizeof(isa_dnnl[0])) return -1;
    if (dnnl_set_max_cpu_isa(isa_dnnl[cap]) != dnnl_success) return -1;
    return 0;
}

bool mm_bf16_native(void)
{
    return mm_isa() >= MM_ISA_AVX512_BF16;
}

bool mm_bf16_supported(void)
{
    return mm_isa() >= MM_ISA_AVX512;
}

static struct thread_ctx *thread_ctx(char *err, size_t errlen)
{
    ensure_init();
    struct thread_ctx *t = pthread_getspecific(ctx_key);
    if (t) return t;
    t = calloc(1, sizeof(*t));
    if (!t || dnnl_stream_create(&t->stream, engine, dnnl_stream_default_flags) != dnnl_success) {
        free(t);
        mm_err(err, errlen, "out of memory for a oneDNN stream");
        return NULL;
    }
    pthread_setspecific(ctx_key, t);
    return t;
}

/* ------------------------------------------------------------- bf16 -- */

void mm_to_bf16(mm_bf16 *restrict dst, const float *restrict src, size_t n)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++) dst[i] = mm_bf16_round(src[i]);
}

void mm_from_bf16(float *restrict dst, const mm_bf16 *restrict src, size_t n)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++) dst[i] = mm_bf16_value(src[i]);
}

/* ------------------------------------------------------------ sgemm -- */

void mm_sgemm(bool trans_a, bool trans_b, size_t M, size_t N, size_t K, float alpha,
              const float *A, size_t lda, const float *B, size_t ldb, float beta, float *C,
              size_t ldc)
{
    if (!M || !N) return;
    ensure_init();
    const dnnl_status_t s = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N',
                                       (dnnl_dim_t)M, (dnnl_dim_t)N, (dnnl_dim_t)K, alpha, A,
                                       (dnnl_dim_t)lda, B, (dnnl_dim_t)ldb, beta, C,
                                       (dnnl_dim_t)ldc);
    if (s != dnnl_success) {
        fprintf(stderr, "franca: mm_sgemm(%zu, %zu, %zu, lda %zu, ldb %zu, ldc %zu) refused by "
                "oneDNN (status %d)\n", M, N, K, lda, ldb, ldc, (int)s);
        abort();
    }
}

/* ------------------------------------------------------ primitives -- */

static dnnl_data_type_t dt(enum mm_type t)
{
    return t == MM_BF16 ? dnnl_bf16 : dnnl_f32;
}

/* Epilogue of a product: sum into dst, an activation, a product with another
 * tensor of dst's shape (mul_md), in that order; any may be absent. */
struct epilogue {
    bool accumulate;
    enum mm_post post;
    const dnnl_memory_desc_t *mul_md;
};

static const dnnl_alg_kind_t post_alg[] = {dnnl_alg_kind_undef, dnnl_eltwise_gelu_erf,
                                           dnnl_eltwise_swish};

/* The post-op index of the mul tensor: after the sum and the activation. */
static int mul_index(const struct epilogue *e)
{
    return (e->accumulate ? 1 : 0) + (e->post != MM_POST_NONE ? 1 : 0);
}

/* Creates a matmul primitive (oneDNN's primitive cache makes a repeated
 * shape cost about a microsecond); e may be NULL. */
static int matmul_create(dnnl_primitive_t *prim, const dnnl_memory_desc_t *src,
                         const dnnl_memory_desc_t *wei, const dnnl_memory_desc_t *bias,
                         const dnnl_memory_desc_t *dst, const struct epilogue *e,
                         dnnl_primitive_desc_t *pd_out, char *err, size_t errlen)
{
    dnnl_matmul_desc_t desc;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t ops = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t s = dnnl_matmul_desc_init(&desc, src, wei, bias, dst);
    if (s == dnnl_success) s = dnnl_primitive_attr_create(&attr);
    if (s == dnnl_success)
        s = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    if (s == dnnl_success && e && (e->accumulate || e->post != MM_POST_NONE || e->mul_md)) {
        s = dnnl_post_ops_create(&ops);
        if (s == dnnl_success && e->accumulate) s = dnnl_post_ops_append_sum(ops, 1.0f);
        if (s == dnnl_success && e->post != MM_POST_NONE)
            s = dnnl_post_ops_append_eltwise(ops, 1.0f, post_alg[e->post], 1.0f, 0);
        if (s == dnnl_success && e->mul_md)
            s = dnnl_post_ops_append_binary(ops, dnnl_binary_mul, e->mul_md);
        if (s == dnnl_success) s = dnnl_primitive_attr_set_post_ops(attr, ops);
    }
    if (s == dnnl_success) s = dnnl_primitive_desc_create(&pd, &desc, attr, engine, NULL);
    if (s == dnnl_success) s = dnnl_primitive_create(prim, pd);
    if (ops) dnnl_post_ops_destroy(ops);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (s != dnnl_success) {
        if (pd) dnnl_primitive_desc_destroy(pd);
        return mm_err(err, errlen, "oneDNN matmul unavailable (status %d)", (int)s);
    }
    if (pd_out) *pd_out = pd;
    else dnnl_primitive_desc_destroy(pd);
    return 0;
}

/* Runs prim on args (the scratchpad is added here), then frees prim. */
static int execute(dnnl_primitive_t prim, dnnl_exec_arg_t *args, int nargs, char *err,
                   size_t errlen)
{
    struct thread_ctx *t = thread_ctx(err, errlen);
    const_dnnl_primitive_desc_t pd;
    dnnl_memory_t scratch = NULL;
    int rc = -1;
    if (!t || dnnl_primitive_get_primitive_desc(prim, &pd) != dnnl_success) goto out;
    const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    const size_t bytes = smd ? dnnl_memory_desc_get_size(smd) : 0;
    if (bytes > t->scratch_bytes) {
        free(t->scratch);
        t->scratch_bytes = 0;
        if (!(t->scratch = aligned_alloc(64, (bytes + 63) / 64 * 64))) {
            mm_err(err, errlen, "out of memory for %zu bytes of matmul scratchpad", bytes);
            goto out;
        }
        t->scratch_bytes = bytes;
    }
    if (bytes) {
        if (dnnl_memory_create(&scratch, smd, engine, t->scratch) != dnnl_success) goto fail;
        args[nargs].arg = DNNL_ARG_SCRATCHPAD;
        args[nargs++].memory = scratch;
    }
    if (dnnl_primitive_execute(prim, t->stream, nargs, args) != dnnl_success ||
        dnnl_stream_wait(t->stream) != dnnl_success)
        goto fail;
    rc = 0;
    goto out;
fail:
    mm_err(err, errlen, "oneDNN matmul failed");
out:
    if (scratch) dnnl_memory_destroy(scratch);
    dnnl_primitive_destroy(prim);
    return rc;
}

/* Wraps caller buffers as oneDNN memories; all or nothing. */
static int wrap(dnnl_memory_t *mems, const dnnl_memory_desc_t *const *mds, void *const *ptrs,
                int n, char *err, size_t errlen)
{
    for (int i = 0; i < n; i++) {
        mems[i] = NULL;
        if (mds[i] && dnnl_memory_create(&mems[i], mds[i], engine, ptrs[i]) != dnnl_success) {
            for (int j = 0; j < i; j++)
                if (mems[j]) dnnl_memory_destroy(mems[j]);
            return mm_err(err, errlen, "out of memory for oneDNN memory objects");
        }
    }
    return 0;
}

static void unwrap(dnnl_memory_t *mems, int n)
{
    for (int i = 0; i < n; i++)
        if (mems[i]) dnnl_memory_destroy(mems[i]);
}

/* --------------------------------------------------------- weights -- */

struct mm_weights {
    int K, N;
    enum mm_type type;
    void *blocked;                 /* oneDNN's layout of W^T */
    dnnl_memory_desc_t blocked_md;
    size_t blocked_bytes;
    char kernel[64];
};

/* W [N, K] is W^T [K, N] in oneDNN's "ba" order. */
static void plain_md(dnnl_memory_desc_t *md, int rows, int cols, enum mm_type t, bool transposed)
{
    const dnnl_dims_t dims = {rows, cols};
    dnnl_memory_desc_init_by_tag(md, 2, dims, dt(t), transposed ? dnnl_ba : dnnl_ab);
}

/* Copies between W [N, K] float32 and the blocked layout, either way. */
static int plain_reorder(const struct mm_weights *w, float *W, bool to_blocked, char *err,
                         size_t errlen)
{
    dnnl_memory_desc_t wplain;
    plain_md(&wplain, w->K, w->N, MM_F32, true);
    const dnnl_memory_desc_t *from = to_blocked ? &wplain : &w->blocked_md;
    const dnnl_memory_desc_t *to = to_blocked ? &w->blocked_md : &wplain;
    dnnl_memory_t mems[2];
    const dnnl_memory_desc_t *mds[2] = {from, to};
    void *ptrs[2] = {to_blocked ? (void *)W : w->blocked, to_blocked ? w->blocked : (void *)W};
    if (wrap(mems, mds, ptrs, 2, err, errlen)) return -1;
    dnnl_primitive_desc_t rpd = NULL;
    dnnl_primitive_t reorder;
    int rc = -1;
    if (dnnl_reorder_primitive_desc_create(&rpd, from, engine, to, engine, NULL) == dnnl_success &&
        dnnl_primitive_create(&reorder, rpd) == dnnl_success) {
        /* One more slot for the scratchpad; execute frees the primitive. */
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_FROM, mems[0]}, {DNNL_ARG_TO, mems[1]}};
        rc = execute(reorder, args, 2, err, errlen);
    } else {
        mm_err(err, errlen, "oneDNN cannot lay out the weights");
    }
    if (rpd) dnnl_primitive_desc_destroy(rpd);
    unwrap(mems, 2);
    return rc;
}

/* Lets oneDNN pick its weight layout for a typical row count (the layout does
 * not depend on it), then reorders W into it once. */
static int weights_reorder(struct mm_weights *w, const float *W, char *err, size_t errlen)
{
    dnnl_memory_desc_t src, wany, dst;
    const dnnl_dims_t wdims = {w->K, w->N};
    plain_md(&src, 256, w->K, w->type, false);
    plain_md(&dst, 256, w->N, MM_F32, false);
    dnnl_memory_desc_init_by_tag(&wany, 2, wdims, dt(w->type), dnnl_format_tag_any);
    dnnl_primitive_t prim;
    dnnl_primitive_desc_t pd;
    if (matmul_create(&prim, &src, &wany, NULL, &dst, NULL, &pd, err, errlen)) return -1;
    const char *impl = "?";
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
    snprintf(w->kernel, sizeof w->kernel, "onednn %s", impl);
    w->blocked_md = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    dnnl_primitive_desc_destroy(pd);
    dnnl_primitive_destroy(prim);

    w->blocked_bytes = dnnl_memory_desc_get_size(&w->blocked_md);
    if (!(w->blocked = aligned_alloc(64, (w->blocked_bytes + 63) / 64 * 64)))
        return mm_err(err, errlen, "out of memory for %zu bytes of weights", w->blocked_bytes);
    return plain_reorder(w, (float *)W, true, err, errlen);
}

int mm_weights_create(struct mm_weights **out, const float *W, int K, int N, enum mm_type type,
                      char *err, size_t errlen)
{
    *out = NULL;
    ensure_init();
    if (K <= 0 || N <= 0) return mm_err(err, errlen, "weights %d x %d: empty", N, K);
    if (type == MM_BF16 && !mm_bf16_supported())
        return mm_err(err, errlen, "bf16 needs AVX-512 or better (this CPU computes with %s)",
                      mm_isa_name(mm_isa()));
    struct mm_weights *w = calloc(1, sizeof(*w));
    if (!w) return mm_err(err, errlen, "out of memory");
    w->K = K;
    w->N = N;
    w->type = type;
    if (weights_reorder(w, W, err, errlen)) {
        mm_weights_free(w);
        return -1;
    }
    *out = w;
    return 0;
}

int mm_weights_unpack(const struct mm_weights *w, float *W, char *err, size_t errlen)
{
    return plain_reorder(w, W, false, err, errlen);
}

void mm_weights_free(struct mm_weights *w)
{
    if (!w) return;
    free(w->blocked);
    free(w);
}

enum mm_type mm_weights_type(const struct mm_weights *w)
{
    return w->type;
}

const char *mm_weights_kernel(const struct mm_weights *w)
{
    return w->kernel;
}

static int linear_run(const struct mm_weights *w, void *out, enum mm_type out_type,
                      const void *in, const float *bias, size_t rows, enum mm_post post,
                      const void *mul, char *err, size_t errlen)
{
    if (!rows) return 0;
    if (out_type == MM_BF16 && w->type != MM_BF16)
        return mm_err(err, errlen, "bf16 output needs bf16 weights");
    dnnl_memory_desc_t src, dst, bmd, mmd;
    plain_md(&src, (int)rows, w->K, w->type, false);
    plain_md(&dst, (int)rows, w->N, out_type, false);
    plain_md(&bmd, 1, w->N, MM_F32, false);
    plain_md(&mmd, (int)rows, w->N, out_type, false);
    const struct epilogue e = {false, post, mul ? &mmd : NULL};
    dnnl_primitive_t prim;
    if (matmul_create(&prim, &src, &w->blocked_md, bias ? &bmd : NULL, &dst, &e, NULL, err, errlen))
        return -1;
    dnnl_memory_t mems[5];
    const dnnl_memory_desc_t *mds[5] = {&src, &w->blocked_md, &dst, bias ? &bmd : NULL,
                                        mul ? &mmd : NULL};
    void *ptrs[5] = {(void *)in, w->blocked, out, (void *)bias, (void *)mul};
    if (wrap(mems, mds, ptrs, 5, err, errlen)) {
        dnnl_primitive_destroy(prim);
        return -1;
    }
    dnnl_exec_arg_t args[6] = {{DNNL_ARG_SRC, mems[0]}, {DNNL_ARG_WEIGHTS, mems[1]},
                               {DNNL_ARG_DST, mems[2]}};
    int n = 3;
    if (bias) args[n++] = (dnnl_exec_arg_t){DNNL_ARG_BIAS, mems[3]};
    if (mul)
        args[n++] = (dnnl_exec_arg_t){
            DNNL_ARG_ATTR_MULTIPLE_POST_OP(mul_index(&e)) | DNNL_ARG_SRC_1, mems[4]};
    const int rc = execute(prim, args, n, err, errlen);
    unwrap(mems, 5);
    return rc;
}

int mm_linear(const struct mm_weights *w, void *out, enum mm_type out_type, const void *in,
              const float *bias, size_t rows, enum mm_post post, char *err, size_t errlen)
{
    return linear_run(w, out, out_type, in, bias, rows, post, NULL, err, errlen);
}

int mm_linear_mul(const struct mm_weights *w, void *out, enum mm_type out_type, const void *in,
                  const float *bias, size_t rows, const void *mul, char *err, size_t errlen)
{
    return linear_run(w, out, out_type, in, bias, rows, MM_POST_NONE, mul, err, errlen);
}

/* --------------------------------------------------------- batched -- */

static void view_md(dnnl_memory_desc_t *md, const struct mm_view *v)
{
    dnnl_dims_t dims, strides;
    for (int i = 0; i < 4; i++) {
        dims[i] = v->dims[i];
        strides[i] = v->strides[i];
    }
    dnnl_memory_desc_init_by_strides(md, 4, dims, dt(v->type), strides);
}

/* c = a . b on views (the checks of the public entry points are done). */
static int matmul_views(const struct mm_view *c, const struct mm_view *a, const struct mm_view *b,
                        bool accumulate, char *err, size_t errlen)
{
    dnnl_memory_desc_t amd, bmd, cmd;
    view_md(&amd, a);
    view_md(&bmd, b);
    view_md(&cmd, c);
    dnnl_primitive_t prim;
    const struct epilogue e = {accumulate, MM_POST_NONE, NULL};
    if (matmul_create(&prim, &amd, &bmd, NULL, &cmd, &e, NULL, err, errlen)) return -1;
    dnnl_memory_t mems[3];
    const dnnl_memory_desc_t *mds[3] = {&amd, &bmd, &cmd};
    void *ptrs[3] = {a->data, b->data, c->data};
    if (wrap(mems, mds, ptrs, 3, err, errlen)) {
        dnnl_primitive_destroy(prim);
        return -1;
    }
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, mems[0]}, {DNNL_ARG_WEIGHTS, mems[1]},
                               {DNNL_ARG_DST, mems[2]}};
    const int rc = execute(prim, args, 3, err, errlen);
    unwrap(mems, 3);
    return rc;
}

static int check_types(enum mm_type ab, enum mm_type c, char *err, size_t errlen)
{
    ensure_init();
    if (c == MM_BF16 && ab != MM_BF16)
        return mm_err(err, errlen, "a bf16 output needs bf16 inputs");
    if (ab == MM_BF16 && !mm_bf16_supported())
        return mm_err(err, errlen, "bf16 needs AVX-512 or better (this CPU computes with %s)",
                      mm_isa_name(mm_isa()));
    return 0;
}

int mm_batched(const struct mm_view *c, const struct mm_view *a, const struct mm_view *b,
               char *err, size_t errlen)
{
    if (a->type != b->type) return mm_err(err, errlen, "mm_batched: a and b differ in type");
    if (check_types(a->type, c->type, err, errlen)) return -1;
    return matmul_views(c, a, b, false, err, errlen);
}

int mm_gemm(enum mm_type t, bool trans_a, bool trans_b, size_t M, size_t N, size_t K,
            const void *A, size_t lda, const void *B, size_t ldb, float beta, float *C,
            size_t ldc, char *err, size_t errlen)
{
    if (!M || !N) return 0;
    if (beta != 0.0f && beta != 1.0f) return mm_err(err, errlen, "mm_gemm: beta must be 0 or 1");
    if (check_types(t, MM_F32, err, errlen)) return -1;
    if (!K) {
        if (beta == 0.0f)
            for (size_t i = 0; i < M; i++) memset(C + i * ldc, 0, sizeof(float) * N);
        return 0;
    }
    const int64_t m = (int64_t)M, n = (int64_t)N, k = (int64_t)K;
    const int64_t sa = (int64_t)lda, sb = (int64_t)ldb;
    /* The batch strides of single-entry dimensions only need to be valid. */
    const int64_t ea = trans_a ? k * sa : m * sa, eb = trans_b ? n * sb : k * sb;
    const int64_t ec = m * (int64_t)ldc;
    const struct mm_view a = {(void *)A, t, {1, 1, m, k},
                              {ea, ea, trans_a ? 1 : sa, trans_a ? sa : 1}};
    const struct mm_view b = {(void *)B, t, {1, 1, k, n},
                              {eb, eb, trans_b ? 1 : sb, trans_b ? sb : 1}};
    const struct mm_view c = {C, MM_F32, {1, 1, m, n}, {ec, ec, (int64_t)ldc, 1}};
    return matmul_views(&c, &a, &b, beta == 1.0f, err, errlen);
}
