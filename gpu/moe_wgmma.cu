// moe_wgmma.cu — our grouped BF16 GEMM on Hopper's wgmma (issue 52, item 3, first part): a
// persistent kernel over the expert tiles (gpu/mpk_sched.h: raster, expert lookup, persistent
// stride; CPU-tested), two consumer warpgroups of wgmma.m64n128k16 (BF16 in, fp32 accumulate)
// reading shared memory through no-swizzle K-major descriptors, a 3-stage cp.async pipeline
// (16-byte copies, zero-filled past the rows, columns and K), and the epilogue fused: gate_up
// writes silu(gate) * up as BF16 (a tile's 128 weight rows are 64 gate and the matching 64 up
// rows, so a thread holds both halves of its columns), down writes fp32.
// grouped_tma (k_wgmma_tma): the same scheduler, warpgroups and epilogue, the tiles loaded by TMA
// (cp.async.bulk.tensor, one thread issues, an mbarrier per stage counts the bytes in) into
// 128B-swizzled shared memory read by swizzled wgmma descriptors. Not yet: producer / consumer
// warp specialization (every thread waits for the wgmma of each K step), clusters/multicast.
// K % 8 == 0 (16-byte rows; TMA's global strides are multiples of 16 bytes).
#include "mpk_sched.h"
#include "mpk_gpu.h"

#include <cuda.h> // CUtensorMap (types only: cuTensorMapEncodeTiled comes through the runtime)
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

using bf16 = __nv_bfloat16;

namespace {
constexpr int BM = MPK_SCHED_BM, BN = MPK_SCHED_BN, BK = 64, STAGES = 3, THREADS = 256;
constexpr int TILE_A = BM * BK, TILE_B = BN * BK; // elements per stage
constexpr int SMEM = STAGES * (TILE_A + TILE_B) * (int)sizeof(bf16);
static_assert(BM == 128 && BN == 128, "two warpgroups of m64n128");

__device__ __forceinline__ void cp16(void *smem, const void *gmem, bool pred)
{
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(pred ? 16 : 0));
}

// wgmma shared-memory descriptor: no swizzle, K-major (mpk_sched_smem_off's layout)
__device__ __forceinline__ unsigned long long desc(const bf16 *p)
{
    return mpk_sched_desc((unsigned)__cvta_generic_to_shared(p), 128, BK * 16, 0);
}

__device__ __forceinline__ void mma(float (&d)[64], unsigned long long da, unsigned long long db, int accumulate)
{
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "l"(da), "l"(db), "r"(accumulate));
#else
    (void)d, (void)da, (void)db, (void)accumulate;
    __trap(); // wgmma needs sm_90a
#endif
}

__device__ __forceinline__ float silu_mul(float g, float u)
{
    return g / (1.0f + __expf(-g)) * u;
}

// accumulator fragment of m64nN: d[4j + h] is row 16 warp + lane/4 + 8 (h/2) of the warpgroup's
// 64, column 8 j + 2 (lane % 4) + h % 2. FUSED: gate columns 0..63 of the tile at j < 8, the
// matching up columns at j + 8: silu(gate) * up as BF16 into Aout [P, N/2]; else fp32 into C.
template <bool FUSED>
__device__ __forceinline__ void epilogue(const float (&d)[64], const mpk_sched_tile &x, int N, float *C, bf16 *Aout)
{
    int wg = threadIdx.x / 128, warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32, Nout = FUSED ? N / 2 : N;
    int rbase = x.r0 + wg * 64 + warp * 16 + lane / 4;
    for (int h = 0; h < 4; h++) {
        int r = rbase + 8 * (h / 2);
        if (r >= x.r1)
            continue;
        if (FUSED) {
            for (int j = 0; j < 8; j++) {
                int c = x.nt * (BN / 2) + 8 * j + 2 * (lane % 4) + h % 2;
                if (c < Nout)
                    Aout[(size_t)r * Nout + c] = __float2bfloat16(silu_mul(d[4 * j + h], d[4 * (j + 8) + h]));
            }
        } else {
            for (int j = 0; j < 16; j++) {
                int c = x.nt * BN + 8 * j + 2 * (lane % 4) + h % 2;
                if (c < N)
                    C[(size_t)r * N + c] = d[4 * j + h];
            }
        }
    }
}

// C = A W^T per expert segment; FUSED: Aout [P, N/2] = silu(gate) * up; else C [P, N] fp32
template <bool FUSED>
__global__ void __launch_bounds__(THREADS, 1) k_wgmma_grouped(const bf16 *A, const bf16 *W, const int *off,
                                                             const int *tile_off, int E, int N, int K, float *C,
                                                             bf16 *Aout)
{
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 *As = (bf16 *)smem, *Bs = As + STAGES * TILE_A;
    int nt = FUSED ? (N / 2 + BN / 2 - 1) / (BN / 2) : (N + BN - 1) / BN;
    int total = tile_off[E] * nt;
    int tid = threadIdx.x, wg = tid / 128;
    int nk = (K + BK - 1) / BK;
    for (int t = blockIdx.x; t >= 0 && t < total; t = mpk_sched_next(t, gridDim.x, total)) {
        mpk_sched_tile x = mpk_sched_tile_of(off, tile_off, E, nt, t);
        const bf16 *We = W + (size_t)x.e * N * K;
        auto load = [&](int stage, int k0) {
            bf16 *as = As + stage * TILE_A, *bs = Bs + stage * TILE_B;
            // 16-byte chunks, two per row side by side (a full 32-byte sector of global memory),
            // then the next row: a quarter-warp writes 4 rows x 2 chunks, 2-way bank conflicts in
            // the core-matrix layout (8-way when a thread's neighbours take the same row)
            for (int v = tid; v < BM * BK / 8; v += THREADS) {
                int r, kc;
                mpk_sched_chunk(v, BM, &r, &kc);
                int row = x.r0 + r;
                bool ok = row < x.r1 && k0 + kc < K;
                cp16(as + mpk_sched_smem_off(r, kc, BK), A + (ok ? (size_t)row * K + k0 + kc : 0), ok);
            }
            for (int v = tid; v < BN * BK / 8; v += THREADS) {
                int i, kc;
                mpk_sched_chunk(v, BN, &i, &kc);
                int wr = FUSED ? mpk_sched_fused_row(x.nt, i, N / 2) : (x.nt * BN + i < N ? x.nt * BN + i : -1);
                bool ok = wr >= 0 && k0 + kc < K;
                cp16(bs + mpk_sched_smem_off(i, kc, BK), We + (ok ? (size_t)wr * K + k0 + kc : 0), ok);
            }
        };
        float d[64];
        for (int i = 0; i < 64; i++)
            d[i] = 0;
        __syncthreads(); // the previous tile's readers are done with every stage
        for (int s = 0; s < STAGES - 1; s++) {
            if (s < nk)
                load(s, s * BK);
            asm volatile("cp.async.commit_group;\n" ::);
        }
        for (int kt = 0; kt < nk; kt++) {
            asm volatile("cp.async.wait_group %0;\n" ::"n"(STAGES - 2));
            asm volatile("fence.proxy.async.shared::cta;\n" ::); // generic-proxy writes -> wgmma reads
            __syncthreads();
            if (kt + STAGES - 1 < nk)
                load((kt + STAGES - 1) % STAGES, (kt + STAGES - 1) * BK);
            asm volatile("cp.async.commit_group;\n" ::);
            const bf16 *as = As + (kt % STAGES) * TILE_A + wg * 64 * BK, *bs = Bs + (kt % STAGES) * TILE_B;
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
            asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
            for (int kk = 0; kk < BK; kk += 16) // two core matrices along K a step
                mma(d, desc(as + kk * 8), desc(bs + kk * 8), kt > 0 || kk > 0);
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
            asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
            asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#endif
        }
        asm volatile("cp.async.wait_group 0;\n" ::);
        epilogue<FUSED>(d, x, N, C, Aout);
    }
}
// ---------------------------------------------------------------- TMA variant
constexpr int SMEM_TMA = SMEM + 1024; // + alignment of the tiles to the 1024-byte swizzle atom

__device__ __forceinline__ unsigned saddr(const void *p)
{
    return (unsigned)__cvta_generic_to_shared(p);
}

// wgmma descriptor for a 128B-swizzled K-major tile (rows of 64 BF16 = 128 bytes, 8-row atoms of
// 1024 bytes: stride byte offset 1024, leading offset unused for swizzled K-major, layout type 1).
// A K step of 16 elements inside the atom advances the start address by 32 bytes.
__device__ __forceinline__ unsigned long long desc_sw128(const bf16 *p)
{
    return mpk_sched_desc(saddr(p), 16, 1024, 1);
}

__device__ __forceinline__ void mbar_init(uint64_t *b, unsigned count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(saddr(b)), "r"(count) : "memory");
}

__device__ __forceinline__ void mbar_expect(uint64_t *b, unsigned bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(saddr(b)), "r"(bytes) : "memory");
}

__device__ __forceinline__ void mbar_wait(uint64_t *b, unsigned phase)
{
    unsigned done = 0;
    while (!done)
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(saddr(b)), "r"(phase)
                     : "memory");
}

// box of the 2D tensor map at (column c0, row c1) -> shared dst, bytes counted on bar
__device__ __forceinline__ void tma2d(void *dst, const CUtensorMap *map, uint64_t *bar, int c0, int c1)
{
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
                 "[%4];\n" ::"r"(saddr(dst)),
                 "l"(map), "r"(c0), "r"(c1), "r"(saddr(bar))
                 : "memory");
}

// tA: the sorted inputs [P, K], box 64 x 128 rows; tW: the weights as [E * N, K], box 64 x 64
// rows (two boxes a stage: gate and up rows for FUSED, rows n0.. and n0 + 64.. otherwise).
// Rows past a tile's expert are loaded and their outputs dropped; rows past the tensor and K
// past its end arrive as zeros.
template <bool FUSED>
__global__ void __launch_bounds__(THREADS, 1) k_wgmma_tma(const __grid_constant__ CUtensorMap tA,
                                                         const __grid_constant__ CUtensorMap tW, const int *off,
                                                         const int *tile_off, int E, int N, int K, float *C,
                                                         bf16 *Aout)
{
    extern __shared__ unsigned char smem_raw[];
    __shared__ __align__(8) uint64_t full[STAGES];
    bf16 *As = (bf16 *)(((uintptr_t)smem_raw + 1023) & ~(uintptr_t)1023), *Bs = As + STAGES * TILE_A;
    int nt = FUSED ? (N / 2 + BN / 2 - 1) / (BN / 2) : (N + BN - 1) / BN;
    int total = tile_off[E] * nt, tid = threadIdx.x, wg = tid / 128, nk = (K + BK - 1) / BK;
    if (tid == 0)
        for (int s = 0; s < STAGES; s++)
            mbar_init(&full[s], 1);
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); // the inits, seen by the TMA unit
    __syncthreads();
    unsigned loaded = 0, used = 0; // K steps issued (thread 0) and consumed (all), over all tiles
    for (int t = blockIdx.x; t >= 0 && t < total; t = mpk_sched_next(t, gridDim.x, total)) {
        mpk_sched_tile x = mpk_sched_tile_of(off, tile_off, E, nt, t);
        int w0 = FUSED ? x.e * N + x.nt * (BN / 2) : x.e * N + x.nt * BN; // first gate / first row
        int w1 = FUSED ? w0 + N / 2 : w0 + BN / 2;                          // first up / second half
        auto issue = [&](int kt) {
            int s = loaded++ % STAGES;
            mbar_expect(&full[s], (TILE_A + TILE_B) * (unsigned)sizeof(bf16));
            tma2d(As + s * TILE_A, &tA, &full[s], kt * BK, x.r0);
            tma2d(Bs + s * TILE_B, &tW, &full[s], kt * BK, w0);
            tma2d(Bs + s * TILE_B + (BN / 2) * BK, &tW, &full[s], kt * BK, w1);
        };
        float d[64];
        for (int i = 0; i < 64; i++)
            d[i] = 0;
        __syncthreads(); // the previous tile's wgmma are done with every stage
        if (tid == 0)
            for (int kt = 0; kt < STAGES - 1 && kt < nk; kt++)
                issue(kt);
        for (int kt = 0; kt < nk; kt++, used++) {
            int s = used % STAGES;
            mbar_wait(&full[s], (used / STAGES) & 1);
            __syncthreads(); // everyone is past step kt - 1: its stage may be refilled
            if (tid == 0 && kt + STAGES - 1 < nk)
                issue(kt + STAGES - 1);
            const bf16 *as = As + s * TILE_A + wg * 64 * BK, *bs = Bs + s * TILE_B;
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
            asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
            for (int kk = 0; kk < BK; kk += 16)
                mma(d, desc_sw128(as + kk), desc_sw128(bs + kk), kt > 0 || kk > 0);
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
            asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
            asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#endif
        }
        epilogue<FUSED>(d, x, N, C, Aout);
    }
}
} // namespace

// cuTensorMapEncodeTiled through the runtime (no link-time libcuda): a 2D BF16 map of rows x K,
// box 64 columns x box_rows, 128B swizzle, zeros out of bounds
static PFN_cuTensorMapEncodeTiled_v12000 encode_fn(void)
{
    static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
    if (!fn) {
        void *p = nullptr;
        cudaDriverEntryPointQueryResult q;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) ==
                cudaSuccess &&
            q == cudaDriverEntryPointSuccess)
            fn = (PFN_cuTensorMapEncodeTiled_v12000)p;
    }
    return fn;
}

static mpk_status tmap(CUtensorMap *m, const void *base, long long rows, int K, int box_rows, mpk_error *err)
{
    PFN_cuTensorMapEncodeTiled_v12000 fn = encode_fn();
    if (!fn)
        MPK_FAIL(err, MPK_E_OP, "gpu", "grouped_tma: cuTensorMapEncodeTiled not available from the driver");
    cuuint64_t dims[2] = {(cuuint64_t)K, (cuuint64_t)rows}, strides[1] = {(cuuint64_t)K * sizeof(bf16)};
    cuuint32_t box[2] = {(cuuint32_t)BK, (cuuint32_t)box_rows}, el[2] = {1, 1};
    CUresult r = fn(m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void *>(base), dims, strides, box, el,
                    CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                    CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS)
        MPK_FAIL(err, MPK_E_IO, "gpu", "grouped_tma: cuTensorMapEncodeTiled (%lld x %d, box %d) failed: %d", rows, K,
                 box_rows, (int)r);
    return MPK_OK;
}

mpk_status mpk_wgmma_prepare(mpk_error *err)
{
    int dev = 0, major = 0, minor = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    if (major != 9 || minor != 0)
        MPK_FAIL(err, MPK_E_OP, "gpu", "grouped_wgmma and grouped_tma need an sm_90 device (this one is sm_%d%d)", major,
                 minor);
    cudaError_t e = cudaFuncSetAttribute(k_wgmma_grouped<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(k_wgmma_grouped<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(k_wgmma_tma<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_TMA);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(k_wgmma_tma<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_TMA);
    if (e != cudaSuccess)
        MPK_FAIL(err, MPK_E_IO, "gpu", "grouped_wgmma: %s", cudaGetErrorString(e));
    return MPK_OK;
}

mpk_status mpk_wgmma_launch(const void *xs, const void *gu, const void *dn, const int *off, const int *tile_off,
                            int P, int E, int H, int I, void *a, float *ys, bool tma, mpk_error *err)
{
    if (H % 8 || I % 8)
        MPK_FAIL(err, MPK_E_OP, "gpu", "grouped_wgmma and grouped_tma take H and I multiples of 8 (H=%d I=%d)", H, I);
    int dev = 0, sms = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    // a bound on the tiles without reading tile_off: every expert with rows adds at most one
    // partial m-tile; the kernel reads the real count
    int mt = (P + BM - 1) / BM + (P < E ? P : E);
    int nt1 = (I + BN / 2 - 1) / (BN / 2), nt2 = (H + BN - 1) / BN;
    int per_sm = tma ? 2 : 1; // TMA: 95 registers, 2 blocks an SM (one's epilogue under the other's loop)
    int g1 = mt * nt1 < per_sm * sms ? mt * nt1 : per_sm * sms, g2 = mt * nt2 < per_sm * sms ? mt * nt2 : per_sm * sms;
    if (tma) {
        CUtensorMap mx, mgu, ma, mdn;
        MPK_TRY(tmap(&mx, xs, P, H, BM, err));
        MPK_TRY(tmap(&mgu, gu, (long long)E * 2 * I, H, BN / 2, err));
        MPK_TRY(tmap(&ma, a, P, I, BM, err));
        MPK_TRY(tmap(&mdn, dn, (long long)E * H, I, BN / 2, err));
        k_wgmma_tma<true><<<g1, THREADS, SMEM_TMA>>>(mx, mgu, off, tile_off, E, 2 * I, H, nullptr, (bf16 *)a);
        k_wgmma_tma<false><<<g2, THREADS, SMEM_TMA>>>(ma, mdn, off, tile_off, E, H, I, ys, nullptr);
    } else {
        k_wgmma_grouped<true><<<g1, THREADS, SMEM>>>((const bf16 *)xs, (const bf16 *)gu, off, tile_off, E, 2 * I, H,
                                                     nullptr, (bf16 *)a);
        k_wgmma_grouped<false><<<g2, THREADS, SMEM>>>((const bf16 *)a, (const bf16 *)dn, off, tile_off, E, H, I, ys,
                                                      nullptr);
    }
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        MPK_FAIL(err, MPK_E_IO, "gpu", "grouped_wgmma launch: %s", cudaGetErrorString(e));
    return MPK_OK;
}
