// moe_decode.cu — the decode backend (1..16 tokens) on the GPU; the algorithm and its index
// maths are in mpk_decode.h (shared with the CPU version in moe_cpu.c, tested there).
//
// Launches, all on the default stream, no host sync:
//   k_decode_group   one block: counts per expert, active experts and offsets (block scans),
//                    each pair's sorted row from its stable rank (mpk_decode_rank)
//   k_decode_gemv    <NT, GU> one block per (row tile, active slot, K split): 8 warps x 4 weight
//                    rows, each lane 16-byte loads of 8 BF16 weights per row, multiplied with up
//                    to NT tokens staged in shared memory as fp32; warp-shuffle reduction.
//                    GU: gate_up with paired gate/up rows, silu*up fused (one K split) or fp32
//                    partials; else down, fp32 partials per split
//   k_decode_act     (gate_up split over K only) partials summed in split order, silu*up
//   k_decode_combine out[t] = sum over slots in order of w * (sum over down splits in order)
#include "mpk_decode.h"
#include "cuda_check.h"
#include "mpk_gpu.h"

#include <cub/block/block_scan.cuh>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdlib>

using bf16 = __nv_bfloat16;

constexpr int GROUP_THREADS = 256, GROUP_ITEMS = 4; // experts per group-kernel thread: E <= 1024
constexpr int STAGE_FLOATS = 8192;                  // shared fp32 token staging: 32 KiB

struct mpk_decode_ws {
    int T, k, E, H, I, P;
    mpk_decode_dims d;
    int *ints;    // n_active, count [E], act_e [slots], act_off [slots + 1], sorted [P], pos [P]
    bf16 *a;      // [P, I] silu(gate) * up, sorted rows
    float *part1; // [splits1, P, 2I] when splits1 > 1
    float *part2; // [splits2, P, H]
};

struct plan_ptrs {
    int *n_active, *count, *act_e, *act_off, *sorted, *pos;
};

static plan_ptrs plan_of(int *ints, int E, int slots, int P)
{
    plan_ptrs q;
    q.n_active = ints;
    q.count = ints + 1;
    q.act_e = q.count + E;
    q.act_off = q.act_e + slots;
    q.sorted = q.act_off + slots + 1;
    q.pos = q.sorted + P;
    return q;
}

__global__ void __launch_bounds__(GROUP_THREADS) k_decode_group(const int32_t *idx, int P, int E, plan_ptrs q)
{
    using scan = cub::BlockScan<int, GROUP_THREADS>;
    __shared__ typename scan::TempStorage tmp;
    __shared__ int s_off[GROUP_THREADS * GROUP_ITEMS]; // sorted row of each expert's first pair
    int cnt[GROUP_ITEMS], act[GROUP_ITEMS], off[GROUP_ITEMS];
    for (int i = 0; i < GROUP_ITEMS; i++) {
        int e = threadIdx.x * GROUP_ITEMS + i, c = 0;
        for (int p = 0; e < E && p < P; p++)
            c += idx[p] == e;
        cnt[i] = c;
        act[i] = c > 0;
        if (e < E)
            q.count[e] = c;
    }
    int n_active;
    scan(tmp).ExclusiveSum(act, act, n_active);
    __syncthreads();
    scan(tmp).ExclusiveSum(cnt, off);
    for (int i = 0; i < GROUP_ITEMS; i++) {
        int e = threadIdx.x * GROUP_ITEMS + i;
        s_off[e] = off[i];
        if (e < E && cnt[i]) {
            q.act_e[act[i]] = e;
            q.act_off[act[i]] = off[i];
        }
    }
    if (threadIdx.x == 0) {
        *q.n_active = n_active;
        q.act_off[n_active] = P;
    }
    __syncthreads();
    for (int p = threadIdx.x; p < P; p += GROUP_THREADS) {
        int r = s_off[idx[p]] + mpk_decode_rank(idx, p);
        q.pos[p] = r;
        q.sorted[r] = p;
    }
}

__device__ __forceinline__ float silu_mul_f(float g, float u)
{
    return g / (1.0f + __expf(-g)) * u;
}

// acc[j] += dot(8 BF16 weights, 8 fp32 token values at xs)
__device__ __forceinline__ float dot8(const uint4 &wv, const float *xs)
{
    const __nv_bfloat162 *w2 = (const __nv_bfloat162 *)&wv;
    float4 x0 = *(const float4 *)xs, x1 = *(const float4 *)(xs + 4);
    float2 a = __bfloat1622float2(w2[0]), b = __bfloat1622float2(w2[1]);
    float2 c = __bfloat1622float2(w2[2]), d = __bfloat1622float2(w2[3]);
    return a.x * x0.x + a.y * x0.y + b.x * x0.z + b.y * x0.w + c.x * x1.x + c.y * x1.y + d.x * x1.z + d.y * x1.w;
}

// One GEMV block (see the file's head). W [E][N, K]; X rows of K BF16: gate_up reads x[token]
// (token = sorted pair / k), down reads a[sorted row].
template <int NT, bool GU>
__global__ void __launch_bounds__(MPK_DECODE_WARPS * 32) k_decode_gemv(const bf16 *W, const bf16 *X, plan_ptrs q,
                                                                       int k, int P, int N, int K, int I, int chunk,
                                                                       int splits, bf16 *a_out, float *part)
{
    constexpr int KS = STAGE_FLOATS / NT; // reduction elements staged per pass
    static_assert(KS % MPK_DECODE_WARP_K == 0, "whole warp steps per stage");
    extern __shared__ __align__(16) float xs[]; // [NT][KS]
    int slot = blockIdx.y;
    if (slot >= *q.n_active)
        return;
    int e = q.act_e[slot], r0 = q.act_off[slot], n = q.act_off[slot + 1] - r0;
    int k0 = blockIdx.z * chunk, k1 = min(K, k0 + chunk);
    int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    int row[MPK_DECODE_ROWS];
    for (int r = 0; r < MPK_DECODE_ROWS; r++) {
        int plain = blockIdx.x * MPK_DECODE_TILE + w * MPK_DECODE_ROWS + r;
        row[r] = GU ? mpk_decode_gu_row(blockIdx.x, w, r, I) : (plain < N ? plain : -1);
    }
    const bf16 *We = W + (size_t)e * N * K;
    for (int j0 = 0; j0 < n; j0 += NT) { // more than NT tokens only with repeated experts
        int nt = min(NT, n - j0);
        float acc[MPK_DECODE_ROWS][NT];
#pragma unroll
        for (int r = 0; r < MPK_DECODE_ROWS; r++)
#pragma unroll
            for (int j = 0; j < NT; j++)
                acc[r][j] = 0;
        for (int kc = k0; kc < k1; kc += KS) {
            int len = min(KS, k1 - kc);
            __syncthreads(); // the previous stage is consumed
            for (int v = threadIdx.x; v < nt * (KS / 8); v += blockDim.x) { // only what is read below
                int j = v / (KS / 8), c = (v % (KS / 8)) * 8;
                if (c >= len)
                    continue;
                int rr = r0 + j0 + j, src = GU ? q.sorted[rr] / k : rr;
                uint4 u = *(const uint4 *)(X + (size_t)src * K + kc + c);
                const __nv_bfloat162 *h2 = (const __nv_bfloat162 *)&u;
                float *dst = xs + j * KS + c;
                for (int i = 0; i < 4; i++) {
                    float2 f = __bfloat1622float2(h2[i]);
                    dst[2 * i] = f.x, dst[2 * i + 1] = f.y;
                }
            }
            __syncthreads();
#pragma unroll 2
            for (int c = lane * 8; c < len; c += MPK_DECODE_WARP_K) {
                uint4 wv[MPK_DECODE_ROWS];
#pragma unroll
                for (int r = 0; r < MPK_DECODE_ROWS; r++)
                    wv[r] = row[r] >= 0 ? __ldg((const uint4 *)(We + (size_t)row[r] * K + kc + c)) : make_uint4(0, 0, 0, 0);
#pragma unroll
                for (int j = 0; j < NT; j++)
                    if (j < nt)
#pragma unroll
                        for (int r = 0; r < MPK_DECODE_ROWS; r++)
                            acc[r][j] += dot8(wv[r], xs + j * KS + c);
            }
        }
#pragma unroll
        for (int r = 0; r < MPK_DECODE_ROWS; r++)
#pragma unroll
            for (int j = 0; j < NT; j++)
                for (int o = 16; o > 0; o /= 2)
                    acc[r][j] += __shfl_xor_sync(0xffffffffu, acc[r][j], o);
        if (lane != 0)
            continue;
#pragma unroll
        for (int j = 0; j < NT; j++) { // unrolled: acc stays in registers
            int rr = r0 + j0 + j;
#pragma unroll
            for (int r = 0; r < MPK_DECODE_ROWS; r++) {
                if (j >= nt || row[r] < 0)
                    continue;
                if (GU && splits == 1 && r < 2) // row r is gate column row[r], row r + 2 its up row
                    a_out[(size_t)rr * I + row[r]] = __float2bfloat16(silu_mul_f(acc[r][j], acc[r + 2][j]));
                else if (!GU || splits > 1)
                    part[((size_t)blockIdx.z * P + rr) * N + row[r]] = acc[r][j];
            }
        }
    }
}

// gate_up split over H: a[r, c] = silu(sum_s g) * (sum_s u), splits added in order
__global__ void k_decode_act(const float *part, int splits, int P, int I, bf16 *a)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)P * I)
        return;
    size_t r = i / I, c = i % I;
    float g = 0, u = 0;
    for (int s = 0; s < splits; s++) {
        g += part[((size_t)s * P + r) * 2 * I + c];
        u += part[((size_t)s * P + r) * 2 * I + I + c];
    }
    a[i] = __float2bfloat16(silu_mul_f(g, u));
}

// out[t, c] = sum over slots j in order of w[t, j] * (sum over splits in order of part[s, pos[t, j], c])
__global__ void k_decode_combine(const float *part, int splits, const int *pos, const float *w, int T, int k, int H,
                                 float *out)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)T * H)
        return;
    size_t t = i / H, c = i % H;
    int P = T * k;
    float acc = 0;
    for (int j = 0; j < k; j++) {
        size_t r = (size_t)pos[t * k + j];
        float y = 0;
        for (int s = 0; s < splits; s++)
            y += part[((size_t)s * P + r) * H + c];
        acc += w[t * k + j] * y;
    }
    out[i] = acc;
}

template <int NT>
static void launch_gemvs(const mpk_decode_ws *ws, const bf16 *gu, const bf16 *dn, const bf16 *x, plan_ptrs q)
{
    const mpk_decode_dims &d = ws->d;
    size_t smem = sizeof(float) * STAGE_FLOATS;
    dim3 g1((unsigned)d.tiles1, (unsigned)d.slots, (unsigned)d.splits1), g2((unsigned)d.tiles2, (unsigned)d.slots,
                                                                           (unsigned)d.splits2);
    k_decode_gemv<NT, true><<<g1, MPK_DECODE_WARPS * 32, smem>>>(gu, x, q, ws->k, ws->P, 2 * ws->I, ws->H, ws->I,
                                                                d.chunk1, d.splits1, ws->a, ws->part1);
    if (d.splits1 > 1)
        k_decode_act<<<(unsigned)(((size_t)ws->P * ws->I + 255) / 256), 256>>>(ws->part1, d.splits1, ws->P, ws->I,
                                                                              ws->a);
    k_decode_gemv<NT, false><<<g2, MPK_DECODE_WARPS * 32, smem>>>(dn, ws->a, q, ws->k, ws->P, ws->H, ws->I, ws->I,
                                                                 d.chunk2, d.splits2, nullptr, ws->part2);
}

// blocks of the gate_up GEMV the device holds at once (the split target)
template <int NT>
static int device_target(int sms)
{
    int per = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per, k_decode_gemv<NT, true>, MPK_DECODE_WARPS * 32,
                                                      sizeof(float) * STAGE_FLOATS) != cudaSuccess || per < 1)
        per = 1;
    return sms * per;
}

mpk_status mpk_decode_open(const mpk_moe *p, mpk_decode_ws **out, mpk_error *err)
{
    *out = nullptr;
    if (p->T > MPK_DECODE_MAX_T || p->H % 8 || p->I % 8 || p->E > GROUP_THREADS * GROUP_ITEMS)
        MPK_FAIL(err, MPK_E_OP, "gpu", "decode backend takes 1..%d tokens, H and I multiples of 8, E <= %d "
                 "(T=%d H=%d I=%d E=%d)", MPK_DECODE_MAX_T, GROUP_THREADS * GROUP_ITEMS, p->T, p->H, p->I, p->E);
    mpk_status st = MPK_OK;
    mpk_decode_ws *ws = (mpk_decode_ws *)calloc(1, sizeof *ws);
    if (!ws)
        MPK_FAIL(err, MPK_E_NOMEM, "gpu", "out of memory");
    int sms = 0, dev = 0, target = 0;
    ws->T = p->T, ws->k = p->k, ws->E = p->E, ws->H = p->H, ws->I = p->I, ws->P = p->T * p->k;
    CK(cudaGetDevice(&dev));
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    mpk_decode_plan_dims(p->T, p->k, p->E, p->H, p->I, 1, &ws->d); // for nt
    switch (ws->d.nt) {
    case 1: target = device_target<1>(sms); break;
    case 2: target = device_target<2>(sms); break;
    case 4: target = device_target<4>(sms); break;
    case 8: target = device_target<8>(sms); break;
    default: target = device_target<16>(sms); break;
    }
    mpk_decode_plan_dims(p->T, p->k, p->E, p->H, p->I, target, &ws->d);
    CK(cudaMalloc(&ws->ints, sizeof(int) * (1 + (size_t)p->E + 2 * (size_t)ws->d.slots + 1 + 2 * (size_t)ws->P)));
    CK(cudaMalloc(&ws->a, sizeof(bf16) * (size_t)ws->P * p->I));
    if (ws->d.splits1 > 1)
        CK(cudaMalloc(&ws->part1, sizeof(float) * (size_t)ws->d.splits1 * ws->P * 2 * p->I));
    CK(cudaMalloc(&ws->part2, sizeof(float) * (size_t)ws->d.splits2 * ws->P * p->H));
    *out = ws;
    return MPK_OK;
fail:
    mpk_decode_close(ws);
    return st;
}

void mpk_decode_close(mpk_decode_ws *ws)
{
    if (!ws)
        return;
    cudaFree(ws->ints);
    cudaFree(ws->a);
    cudaFree(ws->part1);
    cudaFree(ws->part2);
    free(ws);
}

mpk_status mpk_decode_launch(const mpk_decode_ws *ws, const void *gu, const void *dn, const void *x,
                             const int32_t *idx, const float *w, float *out, mpk_error *err)
{
    plan_ptrs q = plan_of(ws->ints, ws->E, ws->d.slots, ws->P);
    k_decode_group<<<1, GROUP_THREADS>>>(idx, ws->P, ws->E, q);
    const bf16 *g = (const bf16 *)gu, *dw = (const bf16 *)dn, *xb = (const bf16 *)x;
    switch (ws->d.nt) {
    case 1: launch_gemvs<1>(ws, g, dw, xb, q); break;
    case 2: launch_gemvs<2>(ws, g, dw, xb, q); break;
    case 4: launch_gemvs<4>(ws, g, dw, xb, q); break;
    case 8: launch_gemvs<8>(ws, g, dw, xb, q); break;
    default: launch_gemvs<16>(ws, g, dw, xb, q); break;
    }
    k_decode_combine<<<(unsigned)(((size_t)ws->T * ws->H + 255) / 256), 256>>>(ws->part2, ws->d.splits2, q.pos, w,
                                                                             ws->T, ws->k, ws->H, out);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        MPK_FAIL(err, MPK_E_IO, "gpu", "decode launch: %s", cudaGetErrorString(e));
    return MPK_OK;
}
