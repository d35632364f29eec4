// moe_cuda.cu — the CUDA side of the harness.
//
// Common to every backend: BF16 hidden states, BF16 weights uploaded once (mpk_gpu_open), fp32
// accumulation, output poisoned with NaN before each run and checked fully written, CUDA-event
// timing of the whole layer. Routing is sorted on the GPU without a host sync: per-chunk expert
// histograms, per-expert offsets (and tile offsets for the grouped kernels), a stable scatter.
//   eager           per expert with tokens: cublasGemmEx twice (expert counts read back: the
//                   one host sync, as in transformers' eager loop)
//   batched         one cublasGemmBatchedEx entry per (token, slot) pair, pointer arrays built
//                   on the GPU (no weight copies, no host sync)
//   grouped         our kernels: one grouped tensor-core GEMM (WMMA, BF16 in, fp32 accumulate)
//                   for gate_up with silu*up fused into its epilogue, one for down, then the
//                   weighted un-permute and fixed-order per-token sum (no atomics)
//   grouped_cublas  the same sort, then cublasGemmGroupedBatchedEx (one group per expert)
//                   (BF16 outputs: the grouped API takes no fp32 C with BF16 A and B)
//   decode          1..16 tokens: gpu/moe_decode.cu (GEMV kernels, each expert's weights read once)
//   grouped_wgmma   the same sort, then gpu/moe_wgmma.cu (persistent wgmma kernels, sm_90)
//   grouped_tma     the same with TMA loads into 128B-swizzled shared memory
//   fp8             the same sort, then gpu/moe_fp8.cu (FP8 weights quantized on the device the
//                   first time, cuBLASLt block-scaled FP8 GEMMs per expert; offsets read back)
// cuBLAS is loaded with dlopen so the binary has no link-time dependency on it.
#include "mpk_decode.h"
#include "mpk_fp8.h"
#include "cuda_check.h"
#include "mpk_gpu.h"
#include "mpk_sched.h"
#include "mpk_ops.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#if __has_include(<cublas_v2.h>)
#include <cublas_v2.h>
#define MPK_CUBLAS_H 1
#endif

using bf16 = __nv_bfloat16;

// grouped-GEMM tiling (see k_grouped_gemm)
constexpr int BM = 128, BN = 128, BK = 64, LDS = BK + 8, STAGES = 3;
static_assert(BM == MPK_SCHED_BM, "k_offsets' tile_off is the wgmma scheduler's too");
constexpr int GEMM_SMEM = STAGES * (BM + BN) * LDS * (int)sizeof(bf16); // dynamic: over the 48 KiB static cap
template <bool FUSED>
__global__ void __launch_bounds__(256) k_grouped_gemm(const bf16 *A, const bf16 *W, const int *off,
                                                      const int *tile_off, int E, int N, int K, float *C, bf16 *Aout);

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

// ------------------------------------------------------------------------------ cuBLAS (dlopen)
#ifdef MPK_CUBLAS_H
struct cublas_api {
    void *lib;
    decltype(&cublasCreate_v2) create;
    decltype(&cublasDestroy_v2) destroy;
    // the C entry points (the header also declares C++ overloads taking cudaDataType compute types)
    cublasStatus_t (*gemm)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void *,
                           const void *, cudaDataType, int, const void *, cudaDataType, int, const void *, void *,
                           cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
    cublasStatus_t (*gemm_batched)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                   const void *, const void *const[], cudaDataType, int, const void *const[],
                                   cudaDataType, int, const void *, void *const[], cudaDataType, int, int,
                                   cublasComputeType_t, cublasGemmAlgo_t);
    decltype(&cublasGemmGroupedBatchedEx) gemm_grouped;
    cublasHandle_t h;
};

static bool cublas_load(cublas_api *a, char *why, size_t cap)
{
    if (!a->lib && !(a->lib = mpk_cuda_dlopen("MOEPACK_CUBLAS", "libcublas.so.13", "libcublas.so", "cuBLAS", why, cap)))
        return false;
    a->create = (decltype(a->create))dlsym(a->lib, "cublasCreate_v2");
    a->destroy = (decltype(a->destroy))dlsym(a->lib, "cublasDestroy_v2");
    a->gemm = (decltype(a->gemm))dlsym(a->lib, "cublasGemmEx");
    a->gemm_batched = (decltype(a->gemm_batched))dlsym(a->lib, "cublasGemmBatchedEx");
    a->gemm_grouped = (decltype(a->gemm_grouped))dlsym(a->lib, "cublasGemmGroupedBatchedEx");
    if (!a->create || !a->destroy || !a->gemm || !a->gemm_batched || !a->gemm_grouped) {
        snprintf(why, cap, "cuBLAS lacks a needed entry point (%s)", dlerror());
        return false;
    }
    cublasStatus_t s = a->create(&a->h);
    if (s != CUBLAS_STATUS_SUCCESS) {
        snprintf(why, cap, "cublasCreate failed (status %d)", (int)s);
        a->h = nullptr;
        return false;
    }
    return true;
}
#endif

struct mpk_gpu {
    int E, H, I;
    bf16 *gu, *dn; // [E, 2I, H], [E, H, I]
#ifdef MPK_CUBLAS_H
    cublas_api blas;
#endif
    bool have_blas;
    char blas_why[256];
    mpk_fp8_dev *fp8; // opened on the fp8 backend's first run
    mpk_status fp8_st;
    char fp8_why[256];
};

// the FP8 weights, quantized on the device once; a refusal (MPK_E_OP) is remembered with its reason
static mpk_status fp8_ready(mpk_gpu *g, mpk_error *err)
{
    if (g->fp8)
        return MPK_OK;
    if (g->fp8_st == MPK_E_OP)
        MPK_FAIL(err, MPK_E_OP, "gpu", "%s", g->fp8_why);
    mpk_status st = mpk_fp8_dev_open(g->gu, g->dn, g->E, g->H, g->I, &g->fp8, err);
    if (st == MPK_E_OP) {
        g->fp8_st = st;
        snprintf(g->fp8_why, sizeof g->fp8_why, "%.*s", (int)sizeof g->fp8_why - 1,
                 err ? err->msg : "fp8 backend not available");
    }
    return st;
}

extern "C" mpk_status mpk_gpu_fp8_weights(mpk_gpu *g, mpk_moe_fp8 *q, mpk_error *err)
{
    memset(q, 0, sizeof *q);
    MPK_TRY(fp8_ready(g, err));
    size_t hb = (size_t)g->H / MPK_FP8_BLK, ib = (size_t)g->I / MPK_FP8_BLK;
    uint8_t *gu = (uint8_t *)malloc((size_t)g->E * 2 * g->I * g->H), *dn = (uint8_t *)malloc((size_t)g->E * g->H * g->I);
    float *gs = (float *)malloc(sizeof(float) * g->E * 2 * ib * hb), *ds = (float *)malloc(sizeof(float) * g->E * hb * ib);
    q->gu = gu, q->gu_scale = gs, q->dn = dn, q->dn_scale = ds;
    if (!gu || !dn || !gs || !ds) {
        mpk_moe_fp8_free(q);
        MPK_FAIL(err, MPK_E_NOMEM, "gpu", "out of memory for the FP8 weights");
    }
    mpk_status st = mpk_fp8_dev_download(g->fp8, gu, gs, dn, ds, err);
    if (st != MPK_OK)
        mpk_moe_fp8_free(q);
    return st;
}

extern "C" mpk_status mpk_gpu_open(const mpk_moe *p, mpk_gpu **out, mpk_error *err)
{
    mpk_status st = MPK_OK;
    mpk_gpu *g = (mpk_gpu *)calloc(1, sizeof *g);
    if (!g)
        MPK_FAIL(err, MPK_E_NOMEM, "gpu", "out of memory");
    g->E = p->E, g->H = p->H, g->I = p->I;
    size_t ngu = (size_t)p->E * 2 * p->I * p->H, nd = (size_t)p->E * p->H * p->I;
    CK(cudaMalloc(&g->gu, sizeof(bf16) * ngu));
    CK(cudaMalloc(&g->dn, sizeof(bf16) * nd));
    CK(cudaMemcpy(g->gu, p->w_gu, sizeof(bf16) * ngu, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(g->dn, p->w_d, sizeof(bf16) * nd, cudaMemcpyHostToDevice));
    CK(cudaFuncSetAttribute(k_grouped_gemm<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, GEMM_SMEM));
    CK(cudaFuncSetAttribute(k_grouped_gemm<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, GEMM_SMEM));
#ifdef MPK_CUBLAS_H
    g->have_blas = cublas_load(&g->blas, g->blas_why, sizeof g->blas_why);
#else
    snprintf(g->blas_why, sizeof g->blas_why, "built without cublas_v2.h");
#endif
    *out = g;
    return MPK_OK;
fail:
    mpk_gpu_close(g);
    return st;
}

extern "C" void mpk_gpu_close(mpk_gpu *g)
{
    if (!g)
        return;
    cudaFree(g->gu);
    cudaFree(g->dn);
    mpk_fp8_dev_close(g->fp8);
#ifdef MPK_CUBLAS_H
    if (g->blas.h)
        g->blas.destroy(g->blas.h);
    // the library stays loaded: unloading cuBLAS while the runtime holds its kernels is unsafe
#endif
    free(g);
}

// ------------------------------------------------------------------------------ routing sort
constexpr int CHUNK = 1024; // pairs per histogram chunk

// counts[c * E + e]: pairs of chunk c routed to expert e
__global__ void k_chunk_count(const int32_t *idx, int P, int E, int *counts)
{
    extern __shared__ int sc[];
    for (int e = threadIdx.x; e < E; e += blockDim.x)
        sc[e] = 0;
    __syncthreads();
    int q = blockIdx.x * CHUNK + threadIdx.x;
    for (int i = 0; i < CHUNK; i += blockDim.x)
        if (q + i < P && q + i < (blockIdx.x + 1) * CHUNK)
            atomicAdd(&sc[idx[q + i]], 1);
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x)
        counts[blockIdx.x * E + e] = sc[e];
}

// off[e] (exclusive, off[E] = P); tile_off[e] (grouped-GEMM tiles of BM rows before expert e);
// base[c * E + e]: first sorted row of chunk c's pairs for expert e
__global__ void k_offsets(const int *counts, int nchunks, int E, int *off, int *tile_off, int *base)
{
    extern __shared__ int tot[];
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int s = 0;
        for (int c = 0; c < nchunks; c++)
            s += counts[c * E + e];
        tot[e] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int s = 0, ts = 0;
        for (int e = 0; e < E; e++) {
            off[e] = s;
            tile_off[e] = ts;
            s += tot[e];
            ts += (tot[e] + BM - 1) / BM;
        }
        off[E] = s;
        tile_off[E] = ts;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int r = off[e];
        for (int c = 0; c < nchunks; c++) {
            base[c * E + e] = r;
            r += counts[c * E + e];
        }
    }
}

// stable scatter: one warp per chunk walks it 32 pairs at a time; lanes routed to the same
// expert rank themselves by lane order (__match_any_sync), the lowest lane advances the counter
__global__ void k_scatter(const int32_t *idx, int P, int E, int *base, int *perm, int *pos)
{
    int c = blockIdx.x, lane = threadIdx.x;
    int *b = base + (size_t)c * E;
    for (int q0 = c * CHUNK; q0 < P && q0 < (c + 1) * CHUNK; q0 += 32) {
        int q = q0 + lane;
        bool live = q < P && q < (c + 1) * CHUNK;
        int e = live ? idx[q] : -1 - lane; // dead lanes match nobody
        unsigned same = __match_any_sync(0xffffffffu, e);
        int leader = __ffs(same) - 1, before = __popc(same & ((1u << lane) - 1));
        int start = 0;
        if (live && lane == leader)
            start = b[e];
        start = __shfl_sync(0xffffffffu, start, leader);
        if (live) {
            perm[start + before] = q;
            pos[q] = start + before;
        }
        __syncwarp();
        if (live && lane == leader)
            b[e] = start + __popc(same);
        __syncwarp();
    }
}

// xs[r, :] = x[perm[r] / k, :]
__global__ void k_gather(const bf16 *x, const int *perm, int P, int k, int H, bf16 *xs)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t n8 = (size_t)H / 8;
    if (H % 8 == 0) {
        if (i >= (size_t)P * n8)
            return;
        size_t r = i / n8, c = i % n8;
        ((uint4 *)xs)[r * n8 + c] = ((const uint4 *)x)[(size_t)(perm[r] / k) * n8 + c];
    } else {
        if (i >= (size_t)P * H)
            return;
        size_t r = i / H, c = i % H;
        xs[i] = x[(size_t)(perm[r] / k) * H + c];
    }
}

__device__ __forceinline__ float silu_mul(float g, float u)
{
    return g / (1.0f + __expf(-g)) * u;
}

__device__ __forceinline__ float to_f(float v)
{
    return v;
}
__device__ __forceinline__ float to_f(bf16 v)
{
    return __bfloat162float(v);
}

// a[r, c] = silu(h[r, c]) * h[r, I + c] as BF16 (for the cuBLAS backends, h [P, 2I])
template <typename TH>
__global__ void k_silu(const TH *h, int P, int I, bf16 *a)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)P * I)
        return;
    size_t r = i / I, c = i % I;
    a[i] = __float2bfloat16(silu_mul(to_f(h[r * 2 * I + c]), to_f(h[r * 2 * I + I + c])));
}

// out[t, c] = sum over slots j in order of w[t, j] * ys[pos[t, j], c] (pos NULL: identity)
template <typename TY>
__global__ void k_unpermute_sum(const TY *ys, const int *pos, const float *w, int T, int k, int H, float *out)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)T * H)
        return;
    size_t t = i / H, c = i % H;
    float acc = 0;
    for (int j = 0; j < k; j++) {
        size_t q = t * k + j;
        acc += w[q] * to_f(ys[(size_t)(pos ? pos[q] : (int)q) * H + c]);
    }
    out[i] = acc;
}

// ------------------------------------------------------------------------------ grouped GEMM
// Rows of A are sorted by expert (segments off[e]..off[e+1]); each block computes a BM x 128
// tile of one expert's segment: C[r, n] = sum_c A[r, c] * W[e][n, c] (W row-major [N, K]).
// 8 warps (2 along M x 4 along N), each 64 x 32 = 4 x 2 WMMA 16x16x16 fragments, BK = 64,
// a 3-stage shared-memory pipeline filled with 16-byte cp.async copies (plain loads when
// K % 8 != 0). FUSED (gate_up): the block's 128 B
// rows are 64 gate rows n0.. and the matching 64 up rows I + n0.., each warp holds a gate and
// an up fragment of the same columns, and the epilogue writes silu(gate) * up as BF16 into
// a [P, I]. Otherwise the epilogue writes fp32 into C [P, N].
// 16-byte global -> shared copy that does not wait (sm_80+); zero-fills when !pred
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool pred)
{
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(pred ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit()
{
    asm volatile("cp.async.commit_group;\n" ::);
}
template <int N>
__device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

namespace wm = nvcuda::wmma;

template <bool FUSED>
__global__ void __launch_bounds__(256) k_grouped_gemm(const bf16 *A, const bf16 *W, const int *off,
                                                      const int *tile_off, int E, int N, int K, float *C, bf16 *Aout)
{
    // STAGES A and B tiles in flight; the epilogue's staging tiles reuse the space
    extern __shared__ __align__(128) unsigned char smem[];
    bf16(*As)[BM * LDS] = (bf16(*)[BM * LDS])smem;
    bf16(*Bs)[BN * LDS] = (bf16(*)[BN * LDS])(smem + STAGES * BM * LDS * sizeof(bf16));
    float(*stage)[2][16 * 16] = (float(*)[2][16 * 16])smem;
    static_assert(8 * 2 * 16 * 16 * sizeof(float) <= GEMM_SMEM, "staging fits the tile space");
    int tile = blockIdx.y;
    if (tile >= tile_off[E])
        return;
    int e = mpk_sched_expert(tile_off, E, tile); // tile_off[e] <= tile < tile_off[e + 1]: e has tokens
    int r0 = off[e] + (tile - tile_off[e]) * BM, r1 = off[e + 1];
    int nb = FUSED ? blockIdx.x * (BN / 2) : blockIdx.x * BN; // first output column
    int Nout = FUSED ? N / 2 : N;
    const bf16 *We = W + (size_t)e * N * K;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, wm_ = warp / 4, wn = warp % 4;
    bool vec = K % 8 == 0;

    auto wrow = [&](int i) -> int { // weight row of shared B row i (-1: out of range)
        if (FUSED) {
            int c = nb + (i % 64);
            return c < Nout ? (i < 64 ? c : Nout + c) : -1;
        }
        int n = nb + i;
        return n < N ? n : -1;
    };
    auto load = [&](int buf, int k0) {
        for (int v = threadIdx.x; v < BM * BK / 8; v += 256) {
            int i = v / (BK / 8), c = (v % (BK / 8)) * 8, r = r0 + i;
            if (vec) { // asynchronous: lands while the previous tile is multiplied
                bool ok = r < r1 && k0 + c < K;
                cp_async16(&As[buf][i * LDS + c], ok ? A + (size_t)r * K + k0 + c : A, ok);
                continue;
            }
            uint4 val = make_uint4(0, 0, 0, 0);
            if (r < r1) {
                bf16 tmp[8];
                for (int j = 0; j < 8; j++)
                    tmp[j] = k0 + c + j < K ? A[(size_t)r * K + k0 + c + j] : __float2bfloat16(0.0f);
                memcpy(&val, tmp, 16);
            }
            *(uint4 *)&As[buf][i * LDS + c] = val;
        }
        for (int v = threadIdx.x; v < BN * BK / 8; v += 256) {
            int i = v / (BK / 8), c = (v % (BK / 8)) * 8, n = wrow(i);
            if (vec) {
                bool ok = n >= 0 && k0 + c < K;
                cp_async16(&Bs[buf][i * LDS + c], ok ? We + (size_t)n * K + k0 + c : We, ok);
                continue;
            }
            uint4 val = make_uint4(0, 0, 0, 0);
            if (n >= 0) {
                bf16 tmp[8];
                for (int j = 0; j < 8; j++)
                    tmp[j] = k0 + c + j < K ? We[(size_t)n * K + k0 + c + j] : __float2bfloat16(0.0f);
                memcpy(&val, tmp, 16);
            }
            *(uint4 *)&Bs[buf][i * LDS + c] = val;
        }
    };

    wm::fragment<wm::accumulator, 16, 16, 16, float> acc[4][2];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 2; j++)
            wm::fill_fragment(acc[i][j], 0.0f);
    // B rows of this warp's two fragments
    int brow[2] = {FUSED ? wn * 16 : wn * 32, FUSED ? 64 + wn * 16 : wn * 32 + 16};
    int nk = (K + BK - 1) / BK;
    // pipeline: tiles kt+1 .. kt+STAGES-1 are on their way while tile kt is multiplied
    for (int st = 0; st < STAGES - 1; st++) {
        if (st < nk)
            load(st, st * BK);
        cp_async_commit();
    }
    for (int kt = 0; kt < nk; kt++) {
        int cur = kt % STAGES;
        cp_async_wait<STAGES - 2>(); // tile kt has landed (this thread's copies)
        __syncthreads();             // ... everyone's; and the stage refilled next is free
        if (kt + STAGES - 1 < nk)
            load((kt + STAGES - 1) % STAGES, (kt + STAGES - 1) * BK);
        cp_async_commit();
        for (int kk = 0; kk < BK; kk += 16) {
            wm::fragment<wm::matrix_a, 16, 16, 16, bf16, wm::row_major> fa[4];
            wm::fragment<wm::matrix_b, 16, 16, 16, bf16, wm::col_major> fb[2];
            for (int i = 0; i < 4; i++)
                wm::load_matrix_sync(fa[i], &As[cur][(wm_ * 64 + i * 16) * LDS + kk], LDS);
            for (int j = 0; j < 2; j++)
                wm::load_matrix_sync(fb[j], &Bs[cur][brow[j] * LDS + kk], LDS);
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 2; j++)
                    wm::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
    }
    cp_async_wait<0>();
    __syncthreads(); // the tiles are done with: the staging area may overwrite them
    // epilogue through a per-warp staging tile
    for (int i = 0; i < 4; i++) {
        for (int j = 0; j < 2; j++)
            wm::store_matrix_sync(stage[warp][j], acc[i][j], 16, wm::mem_row_major);
        __syncwarp();
        for (int v = lane; v < 256; v += 32) {
            int rr = r0 + wm_ * 64 + i * 16 + v / 16, cc = v % 16;
            if (rr >= r1)
                continue;
            if (FUSED) {
                int c = nb + wn * 16 + cc;
                if (c < Nout)
                    Aout[(size_t)rr * Nout + c] = __float2bfloat16(silu_mul(stage[warp][0][v], stage[warp][1][v]));
            } else {
                for (int j = 0; j < 2; j++) {
                    int c = nb + wn * 32 + j * 16 + cc;
                    if (c < N)
                        C[(size_t)rr * N + c] = stage[warp][j][v];
                }
            }
        }
        __syncwarp();
    }
}

// batched pointer arrays: entry q reads its expert's weights and its token's row
__global__ void k_batched_ptrs(const int32_t *idx, int P, int k, const bf16 *gu, const bf16 *dn, const bf16 *x,
                               const bf16 *a, float *h, float *ys, int H, int I, const void **pa, const void **pb,
                               void **pc, const void **pa2, const void **pb2, void **pc2)
{
    int q = blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= P)
        return;
    int e = idx[q];
    pa[q] = gu + (size_t)e * 2 * I * H;
    pb[q] = x + (size_t)(q / k) * H;
    pc[q] = h + (size_t)q * 2 * I;
    pa2[q] = dn + (size_t)e * H * I;
    pb2[q] = a + (size_t)q * I;
    pc2[q] = ys + (size_t)q * H;
}

// ------------------------------------------------------------------------------ one run
struct bufs {
    static constexpr int R = 4; // rotating input copies
    bf16 *x[R];
    float *w[R];
    int32_t *idx[R];
    bf16 *xs, *a;
    float *h, *ys, *o;
    int *counts, *base, *off, *tile_off, *perm, *pos;
    void **ptrs; // batched / grouped pointer arrays (6 * P)
    mpk_decode_ws *dec;
};

#ifdef MPK_CUBLAS_H
#define BK_(call) BLAS_CK(MPK_E_IO, "", "cuBLAS", call)
#endif

// One layer on copy `c` of the inputs; the caller brackets it with events.
static mpk_status run_once(mpk_gpu *g, const mpk_moe *p, mpk_moe_backend b, bufs &B, int c, mpk_error *err)
{
    mpk_status st = MPK_OK;
    int T = p->T, H = p->H, I = p->I, E = p->E, k = p->k, P = T * k;
    int nchunks = (P + CHUNK - 1) / CHUNK;
    const int32_t *idx = B.idx[c];
    bool sort = b != MPK_MOE_BATCHED;
    std::vector<int> hoff;
    if (b == MPK_MOE_DECODE) // its own routing grouping: nothing below
        return mpk_decode_launch(B.dec, g->gu, g->dn, B.x[c], idx, B.w[c], B.o, err);
    if (sort) {
        k_chunk_count<<<nchunks, 256, sizeof(int) * E>>>(idx, P, E, B.counts);
        k_offsets<<<1, 256, sizeof(int) * E>>>(B.counts, nchunks, E, B.off, B.tile_off, B.base);
        k_scatter<<<nchunks, 32>>>(idx, P, E, B.base, B.perm, B.pos);
        size_t nthr = H % 8 == 0 ? (size_t)P * H / 8 : (size_t)P * H;
        k_gather<<<(unsigned)((nthr + 255) / 256), 256>>>(B.x[c], B.perm, P, k, H, B.xs);
    }
    if (b == MPK_MOE_FP8) { // the per-expert cuBLASLt calls need the offsets on the host
        hoff.resize((size_t)E + 1);
        CK(cudaMemcpy(hoff.data(), B.off, sizeof(int) * (E + 1), cudaMemcpyDeviceToHost));
        return mpk_fp8_launch(g->fp8, T, k, B.xs, B.off, hoff.data(), B.pos, idx, B.w[c], B.o, err);
    }
    if (b == MPK_MOE_GROUPED_WGMMA || b == MPK_MOE_GROUPED_TMA) {
        MPK_TRY(mpk_wgmma_launch(B.xs, g->gu, g->dn, B.off, B.tile_off, P, E, H, I, B.a, B.ys,
                                 b == MPK_MOE_GROUPED_TMA, err));
        k_unpermute_sum<<<(unsigned)(((size_t)T * H + 255) / 256), 256>>>(B.ys, B.pos, B.w[c], T, k, H, B.o);
        return MPK_OK;
    }
    if (b == MPK_MOE_GROUPED) {
        int max_tiles = (P + BM - 1) / BM + E; // bound on the tiles: no host sync needed
        k_grouped_gemm<true><<<dim3((I + 63) / 64, max_tiles), 256, GEMM_SMEM>>>(B.xs, g->gu, B.off, B.tile_off, E, 2 * I, H,
                                                                       nullptr, B.a);
        k_grouped_gemm<false><<<dim3((H + BN - 1) / BN, max_tiles), 256, GEMM_SMEM>>>(B.a, g->dn, B.off, B.tile_off, E, H, I,
                                                                           B.ys, nullptr);
        k_unpermute_sum<<<(unsigned)(((size_t)T * H + 255) / 256), 256>>>(B.ys, B.pos, B.w[c], T, k, H, B.o);
        return MPK_OK;
    }
#ifdef MPK_CUBLAS_H
    {
        cublas_api &L = g->blas;
        const float one = 1.0f, zero = 0.0f;
        if (b == MPK_MOE_BATCHED) {
            const void **pa = (const void **)B.ptrs, **pb = pa + P, **pa2 = pa + 3 * P, **pb2 = pa + 4 * P;
            void **pc = B.ptrs + 2 * P, **pc2 = B.ptrs + 5 * P;
            k_batched_ptrs<<<(P + 255) / 256, 256>>>(idx, P, k, g->gu, g->dn, B.x[c], B.a, B.h, B.ys, H, I, pa, pb, pc,
                                                     pa2, pb2, pc2);
            // column-major view: h_q (2I x 1) = W_gu[e]^T-stored (H x 2I)^T * x_t (H x 1)
            BK_(L.gemm_batched(L.h, CUBLAS_OP_T, CUBLAS_OP_N, 2 * I, 1, H, &one, pa, CUDA_R_16BF, H, pb, CUDA_R_16BF,
                               H, &zero, pc, CUDA_R_32F, 2 * I, P, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
            k_silu<<<(unsigned)(((size_t)P * I + 255) / 256), 256>>>(B.h, P, I, B.a);
            BK_(L.gemm_batched(L.h, CUBLAS_OP_T, CUBLAS_OP_N, H, 1, I, &one, pa2, CUDA_R_16BF, I, pb2, CUDA_R_16BF,
                               I, &zero, pc2, CUDA_R_32F, H, P, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
            k_unpermute_sum<<<(unsigned)(((size_t)T * H + 255) / 256), 256>>>(B.ys, nullptr, B.w[c], T, k, H, B.o);
            return MPK_OK;
        }
        // eager and grouped_cublas need the expert offsets on the host
        hoff.resize((size_t)E + 1);
        CK(cudaMemcpy(hoff.data(), B.off, sizeof(int) * (E + 1), cudaMemcpyDeviceToHost));
        if (b == MPK_MOE_EAGER) {
            for (int e = 0; e < E; e++) {
                int n = hoff[e + 1] - hoff[e];
                if (n)
                    BK_(L.gemm(L.h, CUBLAS_OP_T, CUBLAS_OP_N, 2 * I, n, H, &one, g->gu + (size_t)e * 2 * I * H,
                               CUDA_R_16BF, H, B.xs + (size_t)hoff[e] * H, CUDA_R_16BF, H, &zero,
                               B.h + (size_t)hoff[e] * 2 * I, CUDA_R_32F, 2 * I, CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT));
            }
            k_silu<<<(unsigned)(((size_t)P * I + 255) / 256), 256>>>(B.h, P, I, B.a);
            for (int e = 0; e < E; e++) {
                int n = hoff[e + 1] - hoff[e];
                if (n)
                    BK_(L.gemm(L.h, CUBLAS_OP_T, CUBLAS_OP_N, H, n, I, &one, g->dn + (size_t)e * H * I, CUDA_R_16BF,
                               I, B.a + (size_t)hoff[e] * I, CUDA_R_16BF, I, &zero, B.ys + (size_t)hoff[e] * H,
                               CUDA_R_32F, H, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
            }
        } else { // grouped_cublas: one group per expert with tokens
            std::vector<cublasOperation_t> ta, tb;
            std::vector<int> m, n, kk, lda, ldb, ldc, gs;
            std::vector<float> al, be;
            std::vector<const void *> hp(6 * (size_t)E);
            int ng = 0;
            for (int e = 0; e < E; e++) {
                int cnt = hoff[e + 1] - hoff[e];
                if (!cnt)
                    continue;
                hp[ng] = g->gu + (size_t)e * 2 * I * H;
                hp[E + ng] = B.xs + (size_t)hoff[e] * H;
                hp[2 * E + ng] = (bf16 *)B.h + (size_t)hoff[e] * 2 * I;
                hp[3 * E + ng] = g->dn + (size_t)e * H * I;
                hp[4 * E + ng] = B.a + (size_t)hoff[e] * I;
                hp[5 * E + ng] = (bf16 *)B.ys + (size_t)hoff[e] * H;
                n.push_back(cnt);
                ng++;
            }
            ta.assign(ng, CUBLAS_OP_T), tb.assign(ng, CUBLAS_OP_N), gs.assign(ng, 1), al.assign(ng, 1.0f);
            be.assign(ng, 0.0f);
            CK(cudaMemcpy(B.ptrs, hp.data(), sizeof(void *) * 6 * E, cudaMemcpyHostToDevice));
            const void **dp = (const void **)B.ptrs;
            m.assign(ng, 2 * I), kk.assign(ng, H), lda.assign(ng, H), ldb.assign(ng, H), ldc.assign(ng, 2 * I);
            BK_(L.gemm_grouped(L.h, ta.data(), tb.data(), m.data(), n.data(), kk.data(), al.data(), dp, CUDA_R_16BF,
                               lda.data(), dp + E, CUDA_R_16BF, ldb.data(), be.data(), (void *const *)(dp + 2 * E),
                               CUDA_R_16BF, ldc.data(), ng, gs.data(), CUBLAS_COMPUTE_32F));
            k_silu<<<(unsigned)(((size_t)P * I + 255) / 256), 256>>>((const bf16 *)B.h, P, I, B.a);
            m.assign(ng, H), kk.assign(ng, I), lda.assign(ng, I), ldb.assign(ng, I), ldc.assign(ng, H);
            BK_(L.gemm_grouped(L.h, ta.data(), tb.data(), m.data(), n.data(), kk.data(), al.data(), dp + 3 * E,
                               CUDA_R_16BF, lda.data(), dp + 4 * E, CUDA_R_16BF, ldb.data(), be.data(),
                               (void *const *)(dp + 5 * E), CUDA_R_16BF, ldc.data(), ng, gs.data(),
                               CUBLAS_COMPUTE_32F));
            k_unpermute_sum<<<(unsigned)(((size_t)T * H + 255) / 256), 256>>>((const bf16 *)B.ys, B.pos, B.w[c], T, k,
                                                                             H, B.o);
            return MPK_OK;
        }
        k_unpermute_sum<<<(unsigned)(((size_t)T * H + 255) / 256), 256>>>(B.ys, B.pos, B.w[c], T, k, H, B.o);
        return MPK_OK;
    }
#endif
fail:
    return st;
}

extern "C" mpk_status mpk_gpu_run(mpk_gpu *g, const mpk_moe *p, mpk_moe_backend b, int runs, float *out,
                                  mpk_gpu_timing *t, mpk_error *err)
{
    if (b == MPK_MOE_FP8)
        MPK_TRY(fp8_ready(g, err));
    else if (b == MPK_MOE_GROUPED_WGMMA || b == MPK_MOE_GROUPED_TMA)
        MPK_TRY(mpk_wgmma_prepare(err));
    else if (b != MPK_MOE_GROUPED && b != MPK_MOE_DECODE && !g->have_blas)
        MPK_FAIL(err, MPK_E_OP, "gpu", "backend '%s' needs cuBLAS: %s", mpk_moe_backend_names[b], g->blas_why);
    if (p->E != g->E || p->H != g->H || p->I != g->I)
        MPK_FAIL(err, MPK_E_USAGE, "gpu", "problem shape differs from the uploaded weights");
    int T = p->T, H = p->H, I = p->I, E = p->E, k = p->k, P = T * k;
    int nchunks = (P + CHUNK - 1) / CHUNK;
    mpk_status st = MPK_OK;
    bufs B;
    memset(&B, 0, sizeof B);
    cudaEvent_t ev0 = nullptr, ev1 = nullptr;
    std::vector<float> times;
    std::vector<char> used((size_t)E, 0);
    std::vector<uint16_t> xb((size_t)T * H);
    for (size_t i = 0; i < xb.size(); i++)
        xb[i] = mpk_f32_to_bf16(p->x[i]);
    for (int c = 0; c < bufs::R; c++) {
        CK(cudaMalloc(&B.x[c], sizeof(bf16) * (size_t)T * H));
        CK(cudaMalloc(&B.w[c], sizeof(float) * (size_t)P));
        CK(cudaMalloc(&B.idx[c], sizeof(int32_t) * (size_t)P));
        CK(cudaMemcpy(B.x[c], xb.data(), sizeof(bf16) * (size_t)T * H, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(B.w[c], p->w, sizeof(float) * (size_t)P, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(B.idx[c], p->idx, sizeof(int32_t) * (size_t)P, cudaMemcpyHostToDevice));
    }
    CK(cudaMalloc(&B.xs, sizeof(bf16) * (size_t)P * H));
    CK(cudaMalloc(&B.a, sizeof(bf16) * (size_t)P * I));
    CK(cudaMalloc(&B.h, b == MPK_MOE_GROUPED || b == MPK_MOE_DECODE || b == MPK_MOE_FP8 || b == MPK_MOE_GROUPED_WGMMA ||
                                 b == MPK_MOE_GROUPED_TMA ? 4 : sizeof(float) * (size_t)P * 2 * I));
    CK(cudaMalloc(&B.ys, sizeof(float) * (size_t)P * H));
    CK(cudaMalloc(&B.o, sizeof(float) * (size_t)T * H));
    CK(cudaMalloc(&B.counts, sizeof(int) * (size_t)nchunks * E));
    CK(cudaMalloc(&B.base, sizeof(int) * (size_t)nchunks * E));
    CK(cudaMalloc(&B.off, sizeof(int) * (size_t)(E + 1)));
    CK(cudaMalloc(&B.tile_off, sizeof(int) * (size_t)(E + 1)));
    CK(cudaMalloc(&B.perm, sizeof(int) * (size_t)P));
    CK(cudaMalloc(&B.pos, sizeof(int) * (size_t)P));
    CK(cudaMalloc(&B.ptrs, sizeof(void *) * 6 * (size_t)std::max(P, E)));
    CK(cudaEventCreate(&ev0));
    CK(cudaEventCreate(&ev1));
    if (b == MPK_MOE_DECODE && (st = mpk_decode_open(p, &B.dec, err)) != MPK_OK)
        goto fail;
    // correctness: poisoned output, one run, everything written and finite-or-reported
    CK(cudaMemset(B.o, 0xFF, sizeof(float) * (size_t)T * H)); // NaN everywhere
    if ((st = run_once(g, p, b, B, 0, err)) != MPK_OK)
        goto fail;
    CK(cudaDeviceSynchronize());
    CK(cudaGetLastError());
    CK(cudaMemcpy(out, B.o, sizeof(float) * (size_t)T * H, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < (size_t)T * H; i++)
        if (std::isnan(out[i])) {
            st = mpk_error_set(err, MPK_E_OP, 0, "gpu", "%s: output element %zu (token %zu) was never written",
                               mpk_moe_backend_names[b], i, i / H);
            goto fail;
        }
    for (int it = 0; it < 3 + runs; it++) {
        CK(cudaEventRecord(ev0));
        if ((st = run_once(g, p, b, B, it % bufs::R, err)) != MPK_OK)
            goto fail;
        CK(cudaEventRecord(ev1));
        CK(cudaEventSynchronize(ev1));
        CK(cudaGetLastError());
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, ev0, ev1));
        if (it >= 3)
            times.push_back(ms);
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
fail:
    for (int c = 0; c < bufs::R; c++)
        cudaFree(B.x[c]), cudaFree(B.w[c]), cudaFree(B.idx[c]);
    cudaFree(B.xs), cudaFree(B.a), cudaFree(B.h), cudaFree(B.ys), cudaFree(B.o), cudaFree(B.counts);
    cudaFree(B.base), cudaFree(B.off), cudaFree(B.tile_off), cudaFree(B.perm), cudaFree(B.pos), cudaFree(B.ptrs);
    mpk_decode_close(B.dec);
    if (ev0)
        cudaEventDestroy(ev0);
    if (ev1)
        cudaEventDestroy(ev1);
    return st;
}
