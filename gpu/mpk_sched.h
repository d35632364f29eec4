/* mpk_sched.h — the persistent tile scheduler of the grouped wgmma kernel (gpu/moe_wgmma.cu),
 * shared with tests/test_gpu.c so that the CPU checks the very index maths the GPU runs.
 *
 * A grouped GEMM over experts: rows sorted by expert (expert e owns rows off[e] .. off[e+1]),
 * each expert's rows cut into m-tiles of MPK_SCHED_BM rows (tile_off[e] = m-tiles before e, as
 * moe_cuda.cu's k_offsets computes them), the N output columns into nt n-tiles. The tiles are
 * numbered t = 0 .. tile_off[E] * nt - 1 in grouped raster order: m-tiles in bands of
 * MPK_SCHED_GROUP_M, and within a band all its m-tiles for n-tile 0, then for n-tile 1, ...
 * (consecutive tiles share a weight tile or an input tile while it is in L2). A persistent
 * kernel launches G blocks; block b takes tiles b, b + G, b + 2G, ... (mpk_sched_next).
 * FUSED (gate_up with silu*up in the epilogue): an n-tile covers BN/2 output columns c and
 * reads gate rows c and up rows I + c (mpk_sched_fused_row).
 */
#ifndef MPK_SCHED_H
#define MPK_SCHED_H

#include "mpk_hd.h"

enum {
    MPK_SCHED_BM = 128,      /* rows per m-tile (the grouped kernels' BM: tile_off is shared) */
    MPK_SCHED_BN = 128,      /* weight rows per n-tile */
    MPK_SCHED_GROUP_M = 8,   /* m-tiles per raster band */
};

typedef struct mpk_sched_tile {
    int e;                   /* expert */
    int r0, r1;              /* sorted rows [r0, r1) (r1 - r0 <= BM) */
    int nt;                  /* n-tile */
} mpk_sched_tile;

/* m-tiles of an expert with n rows */
MPK_HD int mpk_sched_mtiles(int n)
{
    return (n + MPK_SCHED_BM - 1) / MPK_SCHED_BM;
}

/* Raster: tile t of mt m-tiles x nt n-tiles -> (m-tile, n-tile). */
MPK_HD void mpk_sched_raster(int t, int mt, int nt, int *m, int *n)
{
    int band = t / (MPK_SCHED_GROUP_M * nt), first = band * MPK_SCHED_GROUP_M;
    int gm = mt - first < MPK_SCHED_GROUP_M ? mt - first : MPK_SCHED_GROUP_M;
    int in = t % (MPK_SCHED_GROUP_M * nt);
    *m = first + in % gm;
    *n = in / gm;
}

/* The expert owning global m-tile m: the largest e with tile_off[e] <= m (experts without rows
 * own no m-tiles). */
MPK_HD int mpk_sched_expert(const int *tile_off, int E, int m)
{
    return mpk_hd_group(tile_off, E, m);
}

/* Tile t in full; nt n-tiles, tile_off[E] m-tiles in all. */
MPK_HD mpk_sched_tile mpk_sched_tile_of(const int *off, const int *tile_off, int E, int nt, int t)
{
    mpk_sched_tile x;
    int m, n;
    mpk_sched_raster(t, tile_off[E], nt, &m, &n);
    x.e = mpk_sched_expert(tile_off, E, m);
    x.r0 = off[x.e] + (m - tile_off[x.e]) * MPK_SCHED_BM;
    x.r1 = off[x.e + 1] < x.r0 + MPK_SCHED_BM ? off[x.e + 1] : x.r0 + MPK_SCHED_BM;
    x.nt = n;
    return x;
}

/* Persistent loop: the tile after t for a grid of G blocks, or -1 past the last of `total`. */
MPK_HD int mpk_sched_next(int t, int G, int total)
{
    return t + G < total ? t + G : -1;
}

/* FUSED: weight row of shared row i (0 .. BN-1) of n-tile n over gate_up [2I, K]: gate rows
 * c = n * BN/2 + i for i < BN/2, up rows I + c for the others; -1 past column I. */
MPK_HD int mpk_sched_fused_row(int n, int i, int I)
{
    int c = n * (MPK_SCHED_BN / 2) + i % (MPK_SCHED_BN / 2);
    if (c >= I)
        return -1;
    return i < MPK_SCHED_BN / 2 ? c : I + c;
}

/* Offset (in elements) of element (r, k) of a [rows, BK] shared tile in the wgmma no-swizzle
 * K-major layout: 8 x 8 core matrices of 128 contiguous bytes, K-adjacent ones 128 bytes
 * apart (the descriptor's leading byte offset), 8-row groups BK * 16 bytes apart (stride byte
 * offset). */
MPK_HD int mpk_sched_smem_off(int r, int k, int BK)
{
    return ((r / 8) * (BK / 8) + k / 8) * 64 + (r % 8) * 8 + k % 8;
}

/* The 16-byte chunk v (0 .. rows * BK/8 - 1) a loader thread copies into a [rows, BK] tile:
 * two chunks of a row side by side (one 32-byte sector of global memory), then the next row;
 * after all rows, the next pair of chunks. Row *r, first column *k. */
MPK_HD void mpk_sched_chunk(int v, int rows, int *r, int *k)
{
    *r = (v / 2) % rows;
    *k = ((v / 2) / rows * 2 + v % 2) * 8;
}

/* A wgmma shared-memory matrix descriptor (sm_90): bits 0-13 the start address / 16 (of its
 * 18-bit shared address), 16-29 the leading byte offset / 16, 32-45 the stride byte offset / 16,
 * 62-63 the layout (0: no swizzle, 1: 128-byte swizzle). No swizzle, K-major: leading = bytes
 * between K-adjacent core matrices, stride = between 8-row groups; 128B swizzle, K-major:
 * leading unused (1), stride = 1024 (an 8-row atom). */
MPK_HD unsigned long long mpk_sched_desc(unsigned addr, unsigned lbo, unsigned sbo, int swizzle128)
{
    return (unsigned long long)((addr & 0x3FFFF) >> 4) | (unsigned long long)((lbo & 0x3FFFF) >> 4) << 16 |
           (unsigned long long)((sbo & 0x3FFFF) >> 4) << 32 | (swizzle128 ? 1ull << 62 : 0ull);
}

#ifdef __CUDACC__
/* gpu/moe_wgmma.cu. Sets the kernels' shared-memory limit; MPK_E_OP off sm_90. */
#include "mpk_gpu.h"
mpk_status mpk_wgmma_prepare(mpk_error *err);
/* Both grouped GEMMs: xs [P, H] BF16 rows sorted by expert (off, tile_off [E + 1] from the
 * routing sort, m-tiles of MPK_SCHED_BM), gu [E, 2I, H], dn [E, H, I]; a [P, I] BF16 gets
 * silu(gate) * up, ys [P, H] fp32 the down projection. tma: tiles loaded by TMA into 128B-swizzled
 * shared memory (else cp.async, no swizzle). MPK_E_OP when H or I % 8. */
mpk_status mpk_wgmma_launch(const void *xs, const void *gu, const void *dn, const int *off, const int *tile_off,
                            int P, int E, int H, int I, void *a, float *ys, bool tma, mpk_error *err);
#endif

#endif
