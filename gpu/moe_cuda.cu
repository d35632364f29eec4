// moe_cuda.cu — the CUDA side of the harness: device check, the grouped backend with our own
// kernels (routing sort on the GPU: histogram, prefix sum, scatter; grouped GEMMs with fp32
// accumulation; fused silu*up; weighted un-permute with a fixed-order per-token sum), output
// poisoning and full-write check, CUDA-event timing. Eager and batched (cuBLAS) are not written
// yet: mpk_gpu_run answers MPK_E_OP for them (see the issue note).
#include "mpk_gpu.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#define CK(call)                                                                                  \
    do {                                                                                          \
        cudaError_t e_ = (call);                                                                  \
        if (e_ != cudaSuccess) {                                                                  \
            mpk_error_set(err, MPK_E_IO, 0, "gpu", "%s: %s", #call, cudaGetErrorString(e_));       \
            goto fail;                                                                            \
        }                                                                                         \
    } while (0)

extern "C" int mpk_gpu_available(char *why, size_t cap)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        snprintf(why, cap, "no usable CUDA device (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        return 0;
    }
    return 1;
}

__global__ void k_hist(const int32_t *idx, int P, int *count)
{
    int q = blockIdx.x * blockDim.x + threadIdx.x;
    if (q < P)
        atomicAdd(&count[idx[q]], 1);
}

// exclusive prefix sum of E counts in one block (E is at most a few hundred)
__global__ void k_scan(const int *count, int E, int *off)
{
    if (threadIdx.x == 0) {
        int s = 0;
        for (int e = 0; e < E; e++) {
            off[e] = s;
            s += count[e];
        }
        off[E] = s;
    }
}

// stable scatter: pair q goes after every earlier pair of the same expert
__global__ void k_scatter(const int32_t *idx, int P, const int *off, int *perm, int *pos)
{
    int q = blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= P)
        return;
    int e = idx[q], r = 0;
    for (int p = 0; p < q; p++) // O(P) per pair: simple and deterministic
        r += idx[p] == e;
    perm[off[e] + r] = q;
    pos[q] = off[e] + r;
}

// Y[r, n] = sum_c X[src(r), c] * W[e(r)][n, c]; rows r sorted by expert; tiles of 16x16
template <bool GATHER>
__global__ void k_grouped_gemm(const float *X, const int *perm, int k, const __nv_bfloat16 *W, const int *off, int E,
                               int P, int N, int C, float *Y)
{
    __shared__ float xs[16][17];
    int r = blockIdx.y * 16 + threadIdx.y, n = blockIdx.x * 16 + threadIdx.x;
    int rr = blockIdx.y * 16 + threadIdx.x; // row this thread loads
    int e = -1;
    if (r < P) {
        int lo = 0, hi = E; // expert of row r: off[e] <= r < off[e+1]
        while (hi - lo > 1) {
            int mid = (lo + hi) / 2;
            if (off[mid] <= r)
                lo = mid;
            else
                hi = mid;
        }
        e = lo;
    }
    float acc = 0;
    for (int c0 = 0; c0 < C; c0 += 16) {
        int c = c0 + threadIdx.y;
        // X tile: row rr, column c0 + threadIdx.y
        float xv = 0;
        if (rr < P && c < C) {
            int src = GATHER ? perm[rr] / k : rr;
            xv = X[(size_t)src * C + c];
        }
        xs[threadIdx.x][threadIdx.y] = xv;
        __syncthreads();
        if (r < P && n < N) {
            const __nv_bfloat16 *wr = W + ((size_t)e * N + n) * C;
            for (int j = 0; j < 16 && c0 + j < C; j++)
                acc += xs[threadIdx.y][j] * __bfloat162float(wr[c0 + j]);
        }
        __syncthreads();
    }
    if (r < P && n < N)
        Y[(size_t)r * N + n] = acc;
}

__global__ void k_silu(const float *h, int P, int I, float *a)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)P * I)
        return;
    size_t r = i / I, c = i % I;
    float g = h[r * 2 * I + c];
    a[i] = g / (1.0f + expf(-g)) * h[r * 2 * I + I + c];
}

__global__ void k_unpermute_sum(const float *ys, const int *pos, const float *w, int T, int k, int H, float *out)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)T * H)
        return;
    size_t t = i / H, c = i % H;
    float acc = 0;
    for (int j = 0; j < k; j++) // fixed slot order, no atomics
        acc += w[t * k + j] * ys[(size_t)pos[t * k + j] * H + c];
    out[i] = acc;
}

extern "C" mpk_status mpk_gpu_run(const mpk_moe *p, mpk_moe_backend b, int runs, float *out, mpk_gpu_timing *t,
                                  mpk_error *err)
{
    if (b != MPK_MOE_GROUPED)
        MPK_FAIL(err, MPK_E_OP, "gpu", "backend '%s' has no CUDA implementation yet", mpk_moe_backend_names[b]);
    int T = p->T, H = p->H, I = p->I, E = p->E, k = p->k, P = T * k;
    size_t ngu = (size_t)E * 2 * I * H, nd = (size_t)E * H * I;
    float *x = nullptr, *w = nullptr, *h = nullptr, *a = nullptr, *ys = nullptr, *o = nullptr;
    int32_t *idx = nullptr;
    int *count = nullptr, *off = nullptr, *perm = nullptr, *pos = nullptr;
    __nv_bfloat16 *gu = nullptr, *dn = nullptr;
    cudaEvent_t ev0 = nullptr, ev1 = nullptr;
    std::vector<float> times;
    std::vector<char> used((size_t)E, 0);
    mpk_status st = MPK_OK;
    dim3 tb(16, 16);
    CK(cudaMalloc(&x, sizeof(float) * (size_t)T * H));
    CK(cudaMalloc(&w, sizeof(float) * (size_t)P));
    CK(cudaMalloc(&idx, sizeof(int32_t) * (size_t)P));
    CK(cudaMalloc(&h, sizeof(float) * (size_t)P * 2 * I));
    CK(cudaMalloc(&a, sizeof(float) * (size_t)P * I));
    CK(cudaMalloc(&ys, sizeof(float) * (size_t)P * H));
    CK(cudaMalloc(&o, sizeof(float) * (size_t)T * H));
    CK(cudaMalloc(&count, sizeof(int) * (size_t)(E + 1)));
    CK(cudaMalloc(&off, sizeof(int) * (size_t)(E + 1)));
    CK(cudaMalloc(&perm, sizeof(int) * (size_t)P));
    CK(cudaMalloc(&pos, sizeof(int) * (size_t)P));
    CK(cudaMalloc(&gu, sizeof(uint16_t) * ngu));
    CK(cudaMalloc(&dn, sizeof(uint16_t) * nd));
    CK(cudaMemcpy(x, p->x, sizeof(float) * (size_t)T * H, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(w, p->w, sizeof(float) * (size_t)P, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(idx, p->idx, sizeof(int32_t) * (size_t)P, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(gu, p->w_gu, sizeof(uint16_t) * ngu, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dn, p->w_d, sizeof(uint16_t) * nd, cudaMemcpyHostToDevice));
    CK(cudaMemset(o, 0xFF, sizeof(float) * (size_t)T * H)); // poison: NaN everywhere
    CK(cudaEventCreate(&ev0));
    CK(cudaEventCreate(&ev1));
    for (int it = 0; it < 3 + runs; it++) {
        CK(cudaEventRecord(ev0));
        cudaMemsetAsync(count, 0, sizeof(int) * (size_t)(E + 1));
        k_hist<<<(P + 255) / 256, 256>>>(idx, P, count);
        k_scan<<<1, 32>>>(count, E, off);
        k_scatter<<<(P + 255) / 256, 256>>>(idx, P, off, perm, pos);
        k_grouped_gemm<true><<<dim3((2 * I + 15) / 16, (P + 15) / 16), tb>>>(x, perm, k, gu, off, E, P, 2 * I, H, h);
        k_silu<<<(unsigned)(((size_t)P * I + 255) / 256), 256>>>(h, P, I, a);
        k_grouped_gemm<false><<<dim3((H + 15) / 16, (P + 15) / 16), tb>>>(a, perm, k, dn, off, E, P, H, I, ys);
        k_unpermute_sum<<<(unsigned)(((size_t)T * H + 255) / 256), 256>>>(ys, pos, w, T, k, H, o);
        CK(cudaEventRecord(ev1));
        CK(cudaEventSynchronize(ev1));
        CK(cudaGetLastError());
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, ev0, ev1));
        if (it >= 3)
            times.push_back(ms);
    }
    CK(cudaMemcpy(out, o, sizeof(float) * (size_t)T * H, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < (size_t)T * H; i++)
        if (std::isnan(out[i])) {
            st = mpk_error_set(err, MPK_E_OP, 0, "gpu", "output element %zu was never written", i);
            break;
        }
    std::sort(times.begin(), times.end());
    for (int q = 0; q < P; q++)
        used[(size_t)p->idx[q]] = 1;
    if (t && !times.empty()) {
        size_t ne = (size_t)std::count(used.begin(), used.end(), 1);
        t->median_ms = times[times.size() / 2];
        t->tflops = 2.0 * P * 3.0 * H * I / (t->median_ms * 1e-3) / 1e12;
        t->weight_gbs = (double)ne * 3.0 * H * I * 2 / (t->median_ms * 1e-3) / 1e9;
    }
    goto done;
fail:
    st = err->code;
done:
    cudaFree(x), cudaFree(w), cudaFree(idx), cudaFree(h), cudaFree(a), cudaFree(ys), cudaFree(o);
    cudaFree(count), cudaFree(off), cudaFree(perm), cudaFree(pos), cudaFree(gu), cudaFree(dn);
    if (ev0)
        cudaEventDestroy(ev0);
    if (ev1)
        cudaEventDestroy(ev1);

    return st;
}
