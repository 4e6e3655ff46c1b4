/* The device's bf16 matmul rate through cuBLASLt (bf16 in/out, fp32
 * accumulation, the engine's GEMM setting): the best of several large square
 * GEMMs, the ceiling for the engine's TFLOP/s.
 * usage: gemm_peak [N] ; last line "bf16 GEMM TFLOP/s: X" (exit 1 without a GPU). */
#include <cublasLt.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { fprintf(stderr, "gemm_peak: %s: %s\n", #x, cudaGetErrorString(e_)); return 1; } } while (0)
#define LK(x) do { cublasStatus_t s_ = (x); if (s_ != CUBLAS_STATUS_SUCCESS) { fprintf(stderr, "gemm_peak: %s: %s\n", #x, cublasLtGetStatusString(s_)); return 1; } } while (0)

int main(int argc, char **argv)
{
    const int n = argc > 1 ? atoi(argv[1]) : 8192;
    if (n < 256 || n > 32768) {
        fprintf(stderr, "usage: gemm_peak [N in 256..32768]\n");
        return 2;
    }
    const size_t elems = (size_t)n * n, wsb = (size_t)32 << 20;
    void *a, *b, *c, *ws;
    CK(cudaMalloc(&a, elems * 2));
    CK(cudaMalloc(&b, elems * 2));
    CK(cudaMalloc(&c, elems * 2));
    CK(cudaMalloc(&ws, wsb));
    CK(cudaMemset(a, 0x3c, elems * 2)); /* bf16 0x3c3c ~ 0.0115: finite, no overflow */
    CK(cudaMemset(b, 0x3c, elems * 2));
    cublasLtHandle_t lt;
    LK(cublasLtCreate(&lt));
    cublasLtMatmulDesc_t op;
    LK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const int32_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    LK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    cublasLtMatrixLayout_t la, lb, lc;
    LK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, n, n, n));
    LK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, n, n, n));
    LK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, n, n, n));
    cublasLtMatmulPreference_t pref;
    LK(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t wsb64 = wsb;
    LK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb64, sizeof wsb64));
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    LK(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 1, &res, &found));
    if (found < 1) {
        fprintf(stderr, "gemm_peak: no cuBLASLt algorithm\n");
        return 1;
    }
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    const float alpha = 1.0f, beta = 0.0f;
    double best = 0;
    for (int rep = 0; rep < 6; rep++) {
        const int iters = 10;
        CK(cudaEventRecord(e0, st));
        for (int i = 0; i < iters; i++)
            LK(cublasLtMatmul(lt, op, &alpha, a, la, b, lb, &beta, c, lc, c, lc, &res.algo, ws, wsb, st));
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        const double tflops = 2.0 * n * (double)n * n * iters / (ms * 1e-3) / 1e12;
        if (rep > 0 && tflops > best) best = tflops; /* rep 0 warms up clocks */
    }
    printf("N: %d\n", n);
    printf("bf16 GEMM TFLOP/s: %.1f\n", best);
    return 0;
}
