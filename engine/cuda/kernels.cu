#include "kernels.cuh"

#include <math.h>
#include <mma.h>
#include <stdint.h>

extern "C" {
#include "plan.h"
}

typedef __nv_bfloat16 bf16;

/* ------------------------------------------------------------ helpers -- */

static __device__ __forceinline__ float to_f(float v) { return v; }
static __device__ __forceinline__ float to_f(bf16 v) { return __bfloat162float(v); }

template <typename T> static __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float v) { return __float2bfloat16(v); }

static __device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum (or max) over the block, returned to every thread. blockDim.x must be a
 * multiple of 32 (at most 1024). Safe to call repeatedly: the leading barrier
 * keeps a new call from overwriting red[] before the previous result was read. */
template <bool MAX>
static __device__ float block_reduce(float v)
{
    __shared__ float red[32];
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    const int nw = blockDim.x >> 5;
    v = MAX ? warp_max(v) : warp_sum(v);
    __syncthreads();
    if (lane == 0) red[wid] = v;
    __syncthreads();
    if (wid == 0) {
        float w = lane < nw ? red[lane] : (MAX ? -INFINITY : 0.0f);
        w = MAX ? warp_max(w) : warp_sum(w);
        if (lane == 0) red[0] = w;
    }
    __syncthreads();
    return red[0];
}

static unsigned grid_for(size_t n, unsigned threads)
{
    size_t g = (n + threads - 1) / threads;
    if (g > (1u << 30)) g = 1u << 30; /* grid-stride loops cover the rest */
    return g ? (unsigned)g : 1u;
}

/* ------------------------------------------------- patch embed, tokens -- */

template <typename T>
static __global__ void im2col_kernel(T *out, const float *x, size_t total, int H, int W, int P,
                                     int Kp)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const long long src = cuda_plan_im2col_src(i / Kp, (int)(i % Kp), H, W, P);
        out[i] = from_f<T>(src < 0 ? 0.0f : x[src]);
    }
}

template <typename T>
cudaError_t launch_im2col(T *out, const float *x, int B, int H, int W, int P, cudaStream_t s)
{
    const int Kp = cuda_plan_patch_k(P);
    const size_t total = (size_t)B * (H / P) * (W / P) * Kp;
    im2col_kernel<T><<<grid_for(total, 256), 256, 0, s>>>(out, x, total, H, W, P, Kp);
    return cudaGetLastError();
}

template <typename T>
static __global__ void embed_kernel(float *x, const T *tok, const float *cls, const float *reg,
                                    const float *pos, size_t total, int Tk, int N, int R, int D)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const int d = (int)(i % D);
        const size_t bt = i / D;
        const int t = (int)(bt % Tk);
        const size_t b = bt / Tk;
        float v;
        if (t == 0) {
            v = cls[d] + pos[d];
        } else if (t <= R) {
            v = reg[(size_t)(t - 1) * D + d];
        } else {
            const int n = t - 1 - R;
            v = to_f(tok[(b * N + n) * D + d]) + pos[(size_t)(1 + n) * D + d];
        }
        x[i] = v;
    }
}

template <typename T>
cudaError_t launch_embed(float *x, const T *tok, const float *cls, const float *reg,
                         const float *pos, int B, int Tk, int N, int R, int D, cudaStream_t s)
{
    const size_t total = (size_t)B * Tk * D;
    embed_kernel<T><<<grid_for(total, 256), 256, 0, s>>>(x, tok, cls, reg, pos, total, Tk, N, R, D);
    return cudaGetLastError();
}

/* ------------------------------------------------ residual + LayerNorm -- */

/* One block per row. Each thread only re-reads the x elements it wrote itself,
 * so no barrier is needed between the residual update and the statistics. */
template <typename T, typename O>
static __global__ void residual_ln_kernel(float *x, const T *branch, const float *gamma,
                                          const float *w, const float *b, O *out, int D,
                                          float eps)
{
    const size_t row = blockIdx.x;
    float *xr = x + row * D;
    float sum = 0.0f;
    if (branch) {
        const T *br = branch + row * D;
        for (int i = threadIdx.x; i < D; i += blockDim.x) {
            const float y = to_f(br[i]);
            const float v = xr[i] + (gamma ? gamma[i] * y : y);
            xr[i] = v;
            sum += v;
        }
    } else {
        for (int i = threadIdx.x; i < D; i += blockDim.x) sum += xr[i];
    }
    const float mean = block_reduce<false>(sum) / D;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        const float d = xr[i] - mean;
        ss += d * d;
    }
    const float var = block_reduce<false>(ss) / D;
    const float rstd = rsqrtf(var + eps);
    O *o = out + row * D;
    for (int i = threadIdx.x; i < D; i += blockDim.x)
        o[i] = from_f<O>((xr[i] - mean) * rstd * w[i] + b[i]);
}

template <typename T, typename O>
cudaError_t launch_residual_ln(float *x, const T *branch, const float *gamma, const float *w,
                               const float *b, O *out, size_t rows, int D, float eps,
                               cudaStream_t s)
{
    if (rows > 0x7fffffffu) return cudaErrorInvalidValue;
    const int threads = D >= 1024 ? 256 : 128;
    residual_ln_kernel<T, O><<<(unsigned)rows, threads, 0, s>>>(x, branch, gamma, w, b, out, D, eps);
    return cudaGetLastError();
}

/* ------------------------------------------------------- FFN activations -- */

template <typename T>
static __global__ void swiglu_kernel(T *out, const T *h, size_t total, int Hs)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / Hs;
        const int j = (int)(i % Hs);
        const float a = to_f(h[r * 2 * Hs + j]);
        const float g = to_f(h[r * 2 * Hs + Hs + j]);
        out[i] = from_f<T>(a / (1.0f + expf(-a)) * g);
    }
}

template <typename T>
cudaError_t launch_swiglu(T *out, const T *h, size_t rows, int Hs, cudaStream_t s)
{
    const size_t total = rows * Hs;
    swiglu_kernel<T><<<grid_for(total, 256), 256, 0, s>>>(out, h, total, Hs);
    return cudaGetLastError();
}

template <typename T>
static __global__ void gelu_kernel(T *x, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float v = to_f(x[i]);
        x[i] = from_f<T>(0.5f * v * (1.0f + erff(v * 0.70710678118654752f)));
    }
}

template <typename T>
cudaError_t launch_gelu(T *x, size_t n, cudaStream_t s)
{
    gelu_kernel<T><<<grid_for(n, 256), 256, 0, s>>>(x, n);
    return cudaGetLastError();
}

/* ------------------------------------------------- unfused attention -- */

template <typename T>
static __global__ void split_heads_kernel(T *dst, const T *qkv, size_t total, int Tk, int D,
                                          int heads)
{
    const int hd = D / heads;
    const size_t plane = total / 3; /* rows * D */
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / (3 * (size_t)D);
        const int c = (int)(i % (3 * (size_t)D));
        const int which = c / D, cc = c % D;
        const int h = cc / hd, e = cc % hd;
        const size_t b = r / Tk;
        const int t = (int)(r % Tk);
        dst[which * plane + ((b * heads + h) * Tk + t) * hd + e] = qkv[i];
    }
}

template <typename T>
cudaError_t launch_split_heads(T *dst, const T *qkv, int B, int Tk, int D, int heads,
                               cudaStream_t s)
{
    const size_t total = (size_t)B * Tk * 3 * D;
    split_heads_kernel<T><<<grid_for(total, 256), 256, 0, s>>>(dst, qkv, total, Tk, D, heads);
    return cudaGetLastError();
}

template <typename T>
static __global__ void merge_heads_kernel(T *attn, const T *oh, size_t total, int Tk, int D,
                                          int heads)
{
    const int hd = D / heads;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / D;
        const int cc = (int)(i % D);
        const int h = cc / hd, e = cc % hd;
        const size_t b = r / Tk;
        const int t = (int)(r % Tk);
        attn[i] = oh[((b * heads + h) * Tk + t) * hd + e];
    }
}

template <typename T>
cudaError_t launch_merge_heads(T *attn, const T *oh, int B, int Tk, int D, int heads,
                               cudaStream_t s)
{
    const size_t total = (size_t)B * Tk * D;
    merge_heads_kernel<T><<<grid_for(total, 256), 256, 0, s>>>(attn, oh, total, Tk, D, heads);
    return cudaGetLastError();
}

/* One block per row: max, sum of exponentials, normalised write. */
template <typename T>
static __global__ void softmax_kernel(T *probs, const float *scores, int n, int ld)
{
    const size_t row = blockIdx.x;
    const float *s = scores + row * ld;
    T *p = probs + row * ld;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < n; j += blockDim.x) mx = fmaxf(mx, s[j]);
    mx = block_reduce<true>(mx);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) sum += expf(s[j] - mx);
    sum = block_reduce<false>(sum);
    const float inv = 1.0f / sum;
    for (int j = threadIdx.x; j < n; j += blockDim.x) p[j] = from_f<T>(expf(s[j] - mx) * inv);
}

template <typename T>
cudaError_t launch_softmax(T *probs, const float *scores, size_t rows, int n, int ld,
                           cudaStream_t s)
{
    if (rows > 0x7fffffffu || ld < n) return cudaErrorInvalidValue;
    if (!rows) return cudaSuccess;
    softmax_kernel<T><<<(unsigned)rows, 256, 0, s>>>(probs, scores, n, ld);
    return cudaGetLastError();
}

/* --------------------------------------------------- fused attention -- */

/* One block = 4 warps = 64 queries of one (image, head); each warp owns 16
 * query rows. Key/value tiles of 64 rows stream through shared memory. Per
 * tile, each warp computes its 16 x 64 scores with WMMA (bf16 in, fp32 out),
 * updates the running max m and sum l of its rows (online softmax; two lanes
 * per row, 32 keys each), rescales its fp32 output accumulator (kept in shared
 * memory, since WMMA fragments do not expose their element-to-row mapping),
 * and adds P . V with WMMA. */
namespace flash {
constexpr int BQ = 64, BK = 64, WARPS = 4, THREADS = WARPS * 32;
template <int HD> struct dims {
    static constexpr int LDH = HD + 8;  /* bf16 Q/K/V tiles (multiple of 8 for WMMA) */
    static constexpr int LDS = BK + 4;  /* fp32 scores (multiple of 4) */
    static constexpr int LDP = BK + 8;  /* bf16 probabilities */
    static constexpr int LDO = HD + 4;  /* fp32 output accumulator */
    static constexpr size_t q_bytes = (size_t)BQ * LDH * 2;
    static constexpr size_t kv_bytes = (size_t)BK * LDH * 2;
    static constexpr size_t s_bytes = (size_t)WARPS * 16 * LDS * 4;
    static constexpr size_t p_bytes = (size_t)WARPS * 16 * LDP * 2;
    static constexpr size_t o_bytes = (size_t)WARPS * 16 * LDO * 4;
    /* + 128 so that the carve below can align its base. */
    static constexpr size_t smem = 128 + q_bytes + 2 * kv_bytes + s_bytes + p_bytes + o_bytes;
};
}  // namespace flash

template <int HD>
static __global__ void __launch_bounds__(flash::THREADS)
flash_attention_kernel(bf16 *out, const bf16 *qkv, int Tk, int D, int heads, float scale_log2)
{
    using namespace nvcuda;
    using namespace flash;
    typedef dims<HD> G;
    static_assert(G::q_bytes % 128 == 0 && G::kv_bytes % 128 == 0 && G::s_bytes % 128 == 0 &&
                  G::p_bytes % 128 == 0, "shared regions keep 128-byte alignment");
    extern __shared__ unsigned char smem_raw[];
    unsigned char *base = smem_raw + ((128 - ((uintptr_t)smem_raw & 127)) & 127);
    bf16 *sQ = (bf16 *)base;
    bf16 *sK = (bf16 *)(base + G::q_bytes);
    bf16 *sV = (bf16 *)(base + G::q_bytes + G::kv_bytes);
    float *sS = (float *)(base + G::q_bytes + 2 * G::kv_bytes);
    bf16 *sP = (bf16 *)(base + G::q_bytes + 2 * G::kv_bytes + G::s_bytes);
    float *sO = (float *)(base + G::q_bytes + 2 * G::kv_bytes + G::s_bytes + G::p_bytes);

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int bh = blockIdx.x, b = bh / heads, h = bh % heads;
    const int q0 = blockIdx.y * BQ;
    const size_t ld3 = 3 * (size_t)D;
    const bf16 *gQ = qkv + (size_t)b * Tk * ld3 + (size_t)h * HD;
    const bf16 *gK = gQ + D;
    const bf16 *gV = gQ + 2 * D;
    constexpr int CH = HD / 8; /* 16-byte chunks per row */

    for (int i = threadIdx.x; i < BQ * CH; i += THREADS) {
        const int r = i / CH, c = i % CH, q = q0 + r;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (q < Tk) v = *(const uint4 *)(gQ + (size_t)q * ld3 + c * 8);
        *(uint4 *)(sQ + r * G::LDH + c * 8) = v;
    }
    float *sSw = sS + warp * 16 * G::LDS;
    bf16 *sPw = sP + warp * 16 * G::LDP;
    float *sOw = sO + warp * 16 * G::LDO;
    for (int i = lane; i < 16 * G::LDO; i += 32) sOw[i] = 0.0f;

    const int row = lane >> 1, half = lane & 1;
    float m = -INFINITY, l = 0.0f;
    for (int k0 = 0; k0 < Tk; k0 += BK) {
        __syncthreads(); /* Q is loaded; no warp still reads the previous K/V tile */
        for (int i = threadIdx.x; i < BK * CH; i += THREADS) {
            const int r = i / CH, c = i % CH, k = k0 + r;
            uint4 kv = make_uint4(0u, 0u, 0u, 0u), vv = kv;
            if (k < Tk) {
                kv = *(const uint4 *)(gK + (size_t)k * ld3 + c * 8);
                vv = *(const uint4 *)(gV + (size_t)k * ld3 + c * 8);
            }
            *(uint4 *)(sK + r * G::LDH + c * 8) = kv;
            *(uint4 *)(sV + r * G::LDH + c * 8) = vv;
        }
        __syncthreads();

        /* S (16 x 64) = Q_w (16 x HD) . K^T */
#pragma unroll
        for (int c = 0; c < BK / 16; c++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
#pragma unroll
            for (int kk = 0; kk < HD / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> fa;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> fb;
                wmma::load_matrix_sync(fa, sQ + warp * 16 * G::LDH + kk * 16, G::LDH);
                wmma::load_matrix_sync(fb, sK + c * 16 * G::LDH + kk * 16, G::LDH);
                wmma::mma_sync(acc, fa, fb, acc);
            }
            wmma::store_matrix_sync(sSw + c * 16, acc, G::LDS, wmma::mem_row_major);
        }
        __syncwarp();

        /* Online softmax on row `row`, keys half*32 .. half*32+31 of the tile. */
        const float *srow = sSw + row * G::LDS + half * 32;
        float s[32];
        float tmax = -INFINITY;
#pragma unroll
        for (int i = 0; i < 32; i++) {
            const int key = k0 + half * 32 + i;
            s[i] = key < Tk ? srow[i] * scale_log2 : -INFINITY;
            tmax = fmaxf(tmax, s[i]);
        }
        tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
        const float mnew = fmaxf(m, tmax); /* finite: key k0 < Tk is in every tile */
        const float alpha = exp2f(m - mnew);
        float psum = 0.0f;
        bf16 *prow = sPw + row * G::LDP + half * 32;
#pragma unroll
        for (int i = 0; i < 32; i++) {
            const float pv = exp2f(s[i] - mnew);
            psum += pv;
            prow[i] = __float2bfloat16(pv);
        }
        psum += __shfl_xor_sync(0xffffffffu, psum, 1);
        l = l * alpha + psum;
        m = mnew;
        float *orow = sOw + row * G::LDO + half * (HD / 2);
#pragma unroll
        for (int e = 0; e < HD / 2; e++) orow[e] *= alpha;
        __syncwarp();

        /* O_w (16 x HD) += P_w (16 x 64) . V (64 x HD) */
#pragma unroll
        for (int c = 0; c < HD / 16; c++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::load_matrix_sync(acc, sOw + c * 16, G::LDO, wmma::mem_row_major);
#pragma unroll
            for (int kk = 0; kk < BK / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> fa;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> fb;
                wmma::load_matrix_sync(fa, sPw + kk * 16, G::LDP);
                wmma::load_matrix_sync(fb, sV + kk * 16 * G::LDH + c * 16, G::LDH);
                wmma::mma_sync(acc, fa, fb, acc);
            }
            wmma::store_matrix_sync(sOw + c * 16, acc, G::LDO, wmma::mem_row_major);
        }
        __syncwarp();
    }

    const int q = q0 + warp * 16 + row;
    if (q < Tk) {
        const float inv = 1.0f / l;
        bf16 *o = out + ((size_t)b * Tk + q) * D + (size_t)h * HD + half * (HD / 2);
        const float *orow = sOw + row * G::LDO + half * (HD / 2);
        for (int e = 0; e < HD / 2; e++) o[e] = __float2bfloat16(orow[e] * inv);
    }
}

/* Raises the kernel's dynamic shared-memory limit once per device (the
 * attribute is per function and device; setting it at every launch costs a
 * driver call per layer). Devices past 63 set it every time. */
template <int HD>
static cudaError_t flash_smem_limit(size_t smem)
{
    static unsigned long long done; /* bit d: device d has the limit */
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return e;
    const unsigned long long bit = dev >= 0 && dev < 64 ? 1ull << dev : 0;
    if (bit && (__atomic_load_n(&done, __ATOMIC_ACQUIRE) & bit)) return cudaSuccess;
    e = cudaFuncSetAttribute(flash_attention_kernel<HD>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e == cudaSuccess && bit) __atomic_fetch_or(&done, bit, __ATOMIC_RELEASE);
    return e;
}

template <int HD>
static cudaError_t flash_launch(bf16 *out, const bf16 *qkv, int B, int Tk, int D, int heads,
                                cudaStream_t s)
{
    const size_t smem = flash::dims<HD>::smem;
    const cudaError_t e = flash_smem_limit<HD>(smem);
    if (e != cudaSuccess) return e;
    const float scale_log2 = 1.4426950408889634f / sqrtf((float)HD);
    const dim3 grid((unsigned)(B * heads), (unsigned)((Tk + flash::BQ - 1) / flash::BQ));
    flash_attention_kernel<HD><<<grid, flash::THREADS, smem, s>>>(out, qkv, Tk, D, heads, scale_log2);
    return cudaGetLastError();
}

cudaError_t launch_flash_attention(bf16 *out, const bf16 *qkv, int B, int Tk, int D, int heads,
                                   cudaStream_t s)
{
    /* Rows of Q/K/V are read as 16-byte vectors: the base and the row pitch
     * (3D bf16) must keep that alignment; query tiles index blockIdx.y. */
    if (B <= 0 || Tk <= 0 || heads <= 0 || D % heads || D % 8 || ((uintptr_t)qkv & 15) ||
        (long long)B * heads > 0x7fffffffLL || (Tk + flash::BQ - 1) / flash::BQ > 65535)
        return cudaErrorInvalidValue;
    switch (D / heads) {
    case 32: return flash_launch<32>(out, qkv, B, Tk, D, heads, s);
    case 64: return flash_launch<64>(out, qkv, B, Tk, D, heads, s);
    case 128: return flash_launch<128>(out, qkv, B, Tk, D, heads, s);
    default: return cudaErrorInvalidValue;
    }
}

/* ------------------------------------------------- instantiations -- */

#define FRANCA_INSTANTIATE(T)                                                                      \
    template cudaError_t launch_im2col<T>(T *, const float *, int, int, int, int, cudaStream_t);   \
    template cudaError_t launch_embed<T>(float *, const T *, const float *, const float *,         \
                                         const float *, int, int, int, int, int, cudaStream_t);    \
    template cudaError_t launch_residual_ln<T, T>(float *, const T *, const float *,               \
                                                  const float *, const float *, T *, size_t, int,  \
                                                  float, cudaStream_t);                            \
    template cudaError_t launch_swiglu<T>(T *, const T *, size_t, int, cudaStream_t);              \
    template cudaError_t launch_gelu<T>(T *, size_t, cudaStream_t);                                \
    template cudaError_t launch_split_heads<T>(T *, const T *, int, int, int, int, cudaStream_t);  \
    template cudaError_t launch_merge_heads<T>(T *, const T *, int, int, int, int, cudaStream_t);  \
    template cudaError_t launch_softmax<T>(T *, const float *, size_t, int, int, cudaStream_t);

FRANCA_INSTANTIATE(float)
FRANCA_INSTANTIATE(bf16)
/* bf16 mode's final LayerNorm writes float. */
template cudaError_t launch_residual_ln<bf16, float>(float *, const bf16 *, const float *,
                                                     const float *, const float *, float *, size_t,
                                                     int, float, cudaStream_t);
