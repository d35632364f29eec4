/* mpk_fp8.h — the index maths of the FP8 block-scaled grouped backend, shared by the CUDA side
 * (gpu/moe_fp8.cu, compiled as __host__ __device__) and tests/test_gpu.c, so that the CPU checks
 * exactly the offsets and indices the GPU uses.
 *
 * The algorithm is mpk_moe_fp8_grouped_cpu's (gpu/moe_fp8.c): pairs grouped by expert, inputs
 * quantized per 1 x 128, per 128-wide K block fp32 code products times the input block's scale
 * and the weight block's scale, blocks added in order. On the GPU each expert's two GEMMs are
 * cuBLASLt FP8 matmuls with block scaling (CUDA 12.9+ on sm_90: weights
 * CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F, inputs CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F);
 * the layouts below are what those modes read (the layout PyTorch's DeepSeek-recipe
 * torch._scaled_mm hands cuBLASLt; first checked on a GPU by test_gpu --device):
 *  1. Rows (sorted (token, slot) pairs) are grouped by expert; each group is padded to a
 *     multiple of MPK_FP8_ROW_ALIGN rows (poff: padded offsets), so that every group's scale
 *     tensor starts 16-byte aligned and its leading dimension is a multiple of 4 floats.
 *     Padding rows hold zero codes and scale 1; their outputs are never read.
 *  2. Input scales, 1 x 128 (VEC128): group e's tensor is [KB, n4] with the rows contiguous
 *     (outer-dimension major): index poff[e] * KB + kb * n4 + j for row j of the group,
 *     n4 = poff[e+1] - poff[e], KB = ceil(K / 128).
 *  3. Weight scales, 128 x 128 (BLK128x128): expert e's grid [RB, ld] row-major with the K blocks
 *     contiguous and ld = KB rounded up to a multiple of 4 (the padding entries are 1):
 *     index (e * RB + rb) * ld + kb. pack's _scale_inv [E, RB, KB] is the same when KB % 4 == 0
 *     (DeepSeek-V3: H = 7168 -> 56 blocks, I = 2048 -> 16).
 *  4. K block kb covers columns [kb * 128, min(K, kb * 128 + 128)).
 * The backend takes H and I multiples of 128 (cuBLASLt's 128 x 128 mode needs whole blocks).
 */
#ifndef MPK_FP8_H
#define MPK_FP8_H

#include <stddef.h>
#include <stdint.h>

#include "mpk_hd.h"

enum {
    MPK_FP8_BLK = 128,       /* scale block edge */
    MPK_FP8_ROW_ALIGN = 4,   /* group rows padded to this (16 bytes of fp32 scales) */
};

MPK_HD int mpk_fp8_kblocks(int K)
{
    return (K + MPK_FP8_BLK - 1) / MPK_FP8_BLK;
}

/* One past the last column of K block kb. */
MPK_HD int mpk_fp8_kblock_end(int kb, int K)
{
    int e = (kb + 1) * MPK_FP8_BLK;
    return e < K ? e : K;
}

MPK_HD int mpk_fp8_pad_rows(int n)
{
    return (n + MPK_FP8_ROW_ALIGN - 1) / MPK_FP8_ROW_ALIGN * MPK_FP8_ROW_ALIGN;
}

/* Leading dimension of a weight scale grid over K columns (layout 3). */
MPK_HD int mpk_fp8_wscale_ld(int K)
{
    return mpk_fp8_pad_rows(mpk_fp8_kblocks(K));
}

/* Padded group offsets from the sorted ones: off [E + 1] -> poff [E + 1]; returns poff[E]. */
MPK_HD int mpk_fp8_pad_offsets(const int *off, int E, int *poff)
{
    int s = 0;
    for (int e = 0; e < E; e++) {
        poff[e] = s;
        s += mpk_fp8_pad_rows(off[e + 1] - off[e]);
    }
    poff[E] = s;
    return s;
}

/* A bound on poff[E] that needs no offsets: P pairs, at most min(P, E) groups, each padded by
 * at most ROW_ALIGN - 1 rows. */
MPK_HD int mpk_fp8_max_rows(int P, int E)
{
    return P + (MPK_FP8_ROW_ALIGN - 1) * (P < E ? P : E);
}

/* The group of padded row pr (0 <= pr < poff[E]): the e with poff[e] <= pr < poff[e + 1]
 * (empty groups have none). */
MPK_HD int mpk_fp8_group_of(const int *poff, int E, int pr)
{
    return mpk_hd_group(poff, E, pr);
}

/* Padded row of sorted row r, which belongs to group e. */
MPK_HD int mpk_fp8_padded_row(const int *off, const int *poff, int e, int r)
{
    return poff[e] + (r - off[e]);
}

/* Layout 2: the input scale of row j of group e, K block kb. */
MPK_HD size_t mpk_fp8_xscale_index(const int *poff, int e, int KB, int j, int kb)
{
    return (size_t)poff[e] * KB + (size_t)kb * (size_t)(poff[e + 1] - poff[e]) + (size_t)j;
}

/* Layout 3: the scale of weight row r, column c of expert e's [R, K] matrix. */
MPK_HD size_t mpk_fp8_wscale_index(int R, int K, int e, int r, int c)
{
    int rb = (R + MPK_FP8_BLK - 1) / MPK_FP8_BLK;
    return ((size_t)e * rb + (size_t)(r / MPK_FP8_BLK)) * (size_t)mpk_fp8_wscale_ld(K) + (size_t)(c / MPK_FP8_BLK);
}

#ifdef __CUDACC__
/* gpu/moe_fp8.cu. The device side: FP8 weights quantized on the device from the uploaded BF16
 * ones (per 128 x 128 block, scale = amax / 448, codes = RNE(w / scale) saturated: what
 * mpk_moe_fp8_from_bf16 computes), cuBLASLt loaded with dlopen. MPK_E_OP with the reason when
 * the shape or the library does not allow it. */
#include "mpk_gpu.h"
struct mpk_fp8_dev;
mpk_status mpk_fp8_dev_open(const void *gu_bf16, const void *dn_bf16, int E, int H, int I, mpk_fp8_dev **d,
                            mpk_error *err);
void mpk_fp8_dev_close(mpk_fp8_dev *d); /* NULL-safe */
/* One layer: xs [P, H] BF16 rows sorted by expert (off [E + 1] on the device, hoff its host copy,
 * pos [P] each pair's sorted row), idx/w [T, k]; out [T, H] fp32. Host-synchronous only in
 * the sense that it reads hoff; queues everything on the default stream. */
mpk_status mpk_fp8_launch(mpk_fp8_dev *d, int T, int k, const void *xs, const int *off, const int *hoff,
                          const int *pos, const int32_t *idx, const float *w, float *out, mpk_error *err);
/* The device's FP8 weights in pack's layout (gu [E, 2I, H], gu_scale [E, 2I/128, H/128], dn,
 * dn_scale likewise), copied into caller buffers: tests compare them with mpk_moe_fp8_from_bf16. */
mpk_status mpk_fp8_dev_download(const mpk_fp8_dev *d, uint8_t *gu, float *gu_scale, uint8_t *dn, float *dn_scale,
                                mpk_error *err);
#endif
#endif
